"""The HTTP service: ``POST /v1/predict``, ``GET /v1/health``, ``GET /v1/metadata`` and the page at ``/``.

Images are decoded in a small thread pool with the trained model's own evaluation geometry
(:func:`transferkit.data.decode.load_rgb_bytes` with the JPEG draft size, then
:func:`transferkit.export.onnx.preprocess_image`), then queued to the :class:`~transferkit.serve.batching.MicroBatcher`,
which runs the images of concurrent requests together in one ONNX Runtime call.

Errors: every refusal is a 4xx with ``{"error": "..."}`` naming the problem and the fix. In a request with
several images, an image that cannot be used gets its own row ``{"name", "error"}`` and the others are still
predicted (200); when no image of the request can be used the answer is 422 with the same rows under
``results``. Nothing a client sends stops the server: anything unexpected is a 500 with a JSON error, and
the next request is served as usual.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from transferkit._version import __version__
from transferkit.data.decode import ImageDecodeError, load_rgb_bytes
from transferkit.data.transforms import resize_size
from transferkit.export.onnx import OnnxModel, preprocess_image
from transferkit.models.runtime import prediction_rows, top_k_row
from transferkit.serve.batching import MicroBatcher, QueueFull
from transferkit.serve.inputs import BodyLimit, RequestError, Upload, image_error, parse_top_k, read_uploads
from transferkit.serve.page import PAGE
from transferkit.spec import BackboneSpec

__all__ = ["create_app", "DEFAULT_MAX_UPLOAD_BYTES", "ROUTES"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 20 * 2 ** 20
ROUTES = "GET / (the page), POST /v1/predict, GET /v1/health, GET /v1/metadata"
_PRIVATE_METADATA = ("run",)  # the server's own file paths are not the client's business


def create_app(
    engine: OnnxModel,
    spec: BackboneSpec,
    *,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_images: int = 64,
    top_k: int = 3,
    decode_threads: int = 1,
    max_pending: int = 1024,
) -> FastAPI:
    """A FastAPI app that serves ``engine`` (an exported run) with ``spec``'s evaluation preprocessing.

    Args:
        engine: the run's ONNX Runtime model (:func:`transferkit.export.deploy.run_engine`).
        spec: the run's backbone spec (resize, crop, interpolation of the trained model's evaluation).
        max_batch: the most images per ONNX Runtime call.
        max_wait_ms: how long a lone image waits for others to share its call.
        max_upload_bytes: the most bytes one request body may hold (413 beyond).
        max_images: the most images one request may hold (413 beyond).
        top_k: classes per image when the request does not say.
        decode_threads: threads decoding and resizing uploads.
        max_pending: the most images waiting for the model; beyond it requests get 503 (retry later).
    """
    classes = engine.classes
    draft_size = resize_size(spec)
    batcher = MicroBatcher(lambda images: engine.run(images)["probs"], max_batch=max_batch, max_wait_ms=max_wait_ms,
                           max_pending=max_pending)
    decode_pool = ThreadPoolExecutor(max_workers=max(1, int(decode_threads)), thread_name_prefix="transferkit-decode")
    started_at = time.time()
    serving = {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_upload_bytes": max_upload_bytes,
               "max_images": max_images, "top_k": min(top_k, len(classes)), "decode_threads": decode_threads}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await batcher.close()
        decode_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="transferkit serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batcher, app.state.engine, app.state.serving = batcher, engine, serving
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes)
    _add_error_handlers(app)

    def decode(upload: Upload) -> np.ndarray | str:
        """uint8 [H, W, 3] at the input size, or the reason the upload cannot be used."""
        if upload.error is not None:
            return upload.error
        try:
            return preprocess_image(load_rgb_bytes(upload.data or b"", upload.name, draft_size), spec)
        except ImageDecodeError as exc:
            return image_error(exc.reason)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "backbone": engine.metadata.get("backbone"),
                "classes": len(classes), "uptime_s": round(time.time() - started_at, 1), "pid": os.getpid(),
                "pending_images": batcher.pending, "batching": batcher.stats.as_dict()}

    @app.get("/v1/metadata")
    async def metadata() -> dict[str, Any]:
        meta = {k: v for k, v in engine.metadata.items() if k not in _PRIVATE_METADATA}
        return {**meta, "serving": serving}

    @app.post("/v1/predict")
    async def predict(request: Request) -> JSONResponse:
        uploads, top_k_value = await read_uploads(request, max_images)
        k = parse_top_k(top_k_value, top_k, len(classes))
        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(*(loop.run_in_executor(decode_pool, decode, upload) for upload in uploads))
        ready = [i for i, item in enumerate(decoded) if not isinstance(item, str)]
        results: list[dict[str, Any]] = [{"name": upload.name, "error": item} for upload, item in zip(uploads, decoded)]
        if not ready:
            failed = "; ".join(f"{row['name']}: {row['error']}" for row in results[:3])
            more = f" (and {len(results) - 3} more)" if len(results) > 3 else ""
            what = "the image" if len(results) == 1 else f"none of the {len(results)} images"
            return JSONResponse({"error": f"{what} could not be used: {failed}{more}", "results": results}, status_code=422)
        try:
            probs = await batcher.submit([decoded[i] for i in ready])
        except QueueFull as exc:
            raise RequestError(503, f"the server is busy ({exc}); retry in a moment, or start it with more --workers") from None
        for i, row in zip(ready, probs):
            # the one row builder of predict/evaluate (probabilities rounded the same way), then predict's top-k
            row_of_predict = top_k_row(prediction_rows([uploads[i].name], [0], [-1], [row])[0], classes, k)
            results[i] = {"name": uploads[i].name, "predictions": row_of_predict["predictions"]}
        return JSONResponse({"results": results, "top_k": k})

    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is JSON ``{"error": ...}``; unknown routes name the ones that exist."""

    @app.exception_handler(RequestError)
    async def refused(_: Request, exc: RequestError) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            message = f"there is no {request.url.path}; this service answers {ROUTES}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; this service answers {ROUTES}"
        else:
            message = str(exc.detail)
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": f"the request to {request.url.path} is not valid: {exc.errors()}"}, status_code=422)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": f"internal error while answering {request.method} {request.url.path} "
                                      f"({type(exc).__name__}: {exc}); the server keeps running. Report it with the "
                                      "request that caused it"}, status_code=500)
