"""The HTTP service: ``POST /v1/predict``, ``GET /v1/health``, ``GET /v1/metadata`` and the page at ``/``.

Images are weighed from their headers, decoded in a small thread pool with the trained model's own evaluation
geometry (:func:`transferkit.data.decode.load_rgb_bytes` with the JPEG draft size, then
:func:`transferkit.export.onnx.preprocess_image`), then queued to the :class:`~transferkit.serve.batching.MicroBatcher`,
which runs the images of concurrent requests together in one ONNX Runtime call.

Limits (per worker process), each refusal naming the flag that sets it:

* bodies: ``--max-upload-mb`` (413 on the declared length before reading, else as soon as it is passed);
  multipart parts are streamed into memory, and one file part more than ``--max-images`` is 413 at once;
* decoding: every image is weighed from its header before anything is decoded
  (:func:`transferkit.data.decode.image_cost`); one over ``--max-pixels`` gets its own error row, and a request
  whose images together are over ``--max-request-pixels`` is 413;
* saturation: at most ``--max-concurrency`` predictions in flight and ``--max-pending`` images waiting; beyond
  them a request is answered 503 with ``Retry-After`` before its body is read (:mod:`transferkit.serve.guards`).

Errors: every refusal is a 4xx (or that 503) with ``{"error": "..."}`` naming the problem and the fix. In a
request with several images, an image that cannot be used gets its own row ``{"name", "error"}`` and the others
are still predicted (200); when no image of the request can be used the answer is 422 with the same rows under
``results``. Nothing a client sends stops the server: anything unexpected is a 500 whose message names an error
id (the details go to the server's log, not to the client), and the next request is served as usual.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from transferkit._version import __version__
from transferkit.data.decode import DecodeCost, ImageDecodeError, image_cost, load_rgb_bytes
from transferkit.data.transforms import resize_size
from transferkit.export.onnx import OnnxModel, preprocess_image
from transferkit.models.runtime import prediction_rows, top_k_row
from transferkit.serve.batching import MicroBatcher
from transferkit.serve.guards import Admission, AdmissionGate, HostCheck, is_loopback
from transferkit.serve.inputs import (DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_IMAGES, DEFAULT_MAX_PENDING, DEFAULT_MAX_PIXELS,
                                     DEFAULT_MAX_REQUEST_PIXELS, DEFAULT_MAX_UPLOAD_BYTES, BodyLimit, RequestError,
                                     Upload, image_error, parse_top_k, read_uploads)
from transferkit.serve.page import PAGE
from transferkit.spec import BackboneSpec

__all__ = ["create_app", "DEFAULT_MAX_UPLOAD_BYTES", "DEFAULT_MAX_REQUEST_PIXELS", "DEFAULT_MAX_CONCURRENCY",
           "DEFAULT_MAX_PENDING", "ROUTES"]

logger = logging.getLogger(__name__)

# Why the defaults (DEFAULT_* in transferkit.serve.inputs): --max-pixels 4096 x 4096, the decoder's own budget
# (transferkit.data.decode.DEFAULT_MAX_PIXELS); --max-request-pixels 64 MP, 64 images of a megapixel (a phone photo
# decodes to ~0.2 MP at its JPEG draft scale) or four at the per-image limit, 1-3 s of decoding (PNG decodes at
# 20-70 MP/s on one core); --max-concurrency 16 per worker: each may hold a body of up to --max-upload-mb, and on
# 2 cores 16 clients already wait ~0.5 s each (benchmarks/serve_load.py), so more in flight adds latency and
# memory, not throughput; --max-pending 256 images waiting, ~5 s of work at the measured ~50 images/s on 2 cores.
ROUTES = "GET / (the page), POST /v1/predict, GET /v1/health, GET /v1/metadata"
_PRIVATE_METADATA = ("run",)  # the server's own file paths are not the client's business


class _Predictions:
    """What POST /v1/predict does with a request's uploads: weigh, decode, batch, answer."""

    def __init__(self, engine: OnnxModel, spec: BackboneSpec, admission: Admission, batcher: MicroBatcher,
                 pool: ThreadPoolExecutor, max_pixels: int, max_request_pixels: int) -> None:
        self.engine, self.spec, self.admission, self.batcher, self.pool = engine, spec, admission, batcher, pool
        self.max_pixels, self.max_request_pixels = max_pixels, max_request_pixels
        self.draft_size = resize_size(spec)

    def weigh(self, uploads: list[Upload]) -> list[DecodeCost | str]:
        """Each upload's decoding cost from its header, or the reason it cannot be used (nothing decoded)."""
        costs: list[DecodeCost | str] = []
        for upload in uploads:
            if upload.error is not None:
                costs.append(upload.error)
                continue
            try:  # over --max-pixels: the decoder's refusal, naming the image, its cost, the limit and the fixes
                costs.append(image_cost(upload.data or b"", upload.name, self.draft_size, self.max_pixels))
            except ImageDecodeError as exc:
                costs.append(image_error(exc.reason))
        return costs

    def check_request(self, costs: list[DecodeCost | str]) -> None:
        """413 when the usable images of one request together cost more than the request's budget."""
        usable = [cost for cost in costs if isinstance(cost, DecodeCost)]
        total = sum(cost.pixels for cost in usable)
        if total > self.max_request_pixels:
            raise RequestError(413, f"the request's {len(usable)} images would decode to {total:,} pixels (about "
                                    f"{sum(c.nbytes for c in usable) / 2 ** 20:,.0f} MB), over the limit of "
                                    f"{self.max_request_pixels:,} per request (--max-request-pixels); split them "
                                    "into several requests (they are batched together on the server anyway), "
                                    "downscale them, or start the server with a larger --max-request-pixels")

    def decode(self, upload: Upload) -> np.ndarray | str:
        """uint8 [H, W, 3] at the input size, or the reason the upload cannot be used."""
        try:
            image = load_rgb_bytes(upload.data or b"", upload.name, self.draft_size, self.max_pixels)
            return preprocess_image(image, self.spec)
        except ImageDecodeError as exc:
            return image_error(exc.reason)

    async def answer(self, uploads: list[Upload], k: int) -> JSONResponse:
        loop = asyncio.get_running_loop()
        self.admission.images += len(uploads)
        try:
            costs = await loop.run_in_executor(self.pool, self.weigh, uploads)
            self.check_request(costs)
            decoded = await asyncio.gather(*(
                loop.run_in_executor(self.pool, self.decode, upload) if isinstance(cost, DecodeCost)
                else _done(cost) for upload, cost in zip(uploads, costs)))
            return await self._predict(uploads, decoded, k)
        finally:
            self.admission.images -= len(uploads)

    async def _predict(self, uploads: list[Upload], decoded: list[np.ndarray | str], k: int) -> JSONResponse:
        ready = [i for i, item in enumerate(decoded) if not isinstance(item, str)]
        results: list[dict[str, Any]] = [{"name": upload.name, "error": item} for upload, item in zip(uploads, decoded)]
        if not ready:
            failed = "; ".join(f"{row['name']}: {row['error']}" for row in results[:3])
            more = f" (and {len(results) - 3} more)" if len(results) > 3 else ""
            what = "the image could not be used" if len(results) == 1 else f"none of the {len(results)} images could be used"
            return JSONResponse({"error": f"{what}: {failed}{more}", "results": results}, status_code=422)
        probs = await self.batcher.submit([decoded[i] for i in ready])
        stats = self.batcher.stats
        self.admission.images_per_s = stats.images / stats.busy_s if stats.busy_s > 0 else 0.0
        classes = self.engine.classes
        for i, row in zip(ready, probs):
            # the one row builder of predict/evaluate (probabilities rounded the same way), then predict's top-k
            row_of_predict = top_k_row(prediction_rows([uploads[i].name], [0], [-1], [row])[0], classes, k)
            results[i] = {"name": uploads[i].name, "predictions": row_of_predict["predictions"]}
        return JSONResponse({"results": results, "top_k": k})


async def _done(value: Any) -> Any:
    return value


def create_app(
    engine: OnnxModel,
    spec: BackboneSpec,
    *,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_images: int = DEFAULT_MAX_IMAGES,
    top_k: int = 3,
    decode_threads: int = 1,
    max_pending: int = DEFAULT_MAX_PENDING,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    bound_host: str | None = None,
    port: int | None = None,
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
        decode_threads: threads weighing, decoding and resizing uploads.
        max_pending: the most images waiting for decoding or the model; beyond it new requests get 503.
        max_pixels: the decoding budget of one image (:data:`transferkit.data.decode.DEFAULT_MAX_PIXELS`).
        max_request_pixels: the decoding budget of one request's images together (413 beyond).
        max_concurrency: the most predictions in flight; beyond it new requests get 503.
        bound_host: the address the server listens on; a loopback one turns on the Host check (421).
        port: the port it listens on (named in the Host check's message).
    """
    batcher = MicroBatcher(lambda images: engine.run(images)["probs"], max_batch=max_batch, max_wait_ms=max_wait_ms,
                           max_pending=max(max_pending, max_concurrency * max_images))  # admitted requests always fit
    pool = ThreadPoolExecutor(max_workers=max(1, int(decode_threads)), thread_name_prefix="transferkit-decode")
    admission = Admission(max_concurrency=max_concurrency, max_pending=max_pending)
    predictions = _Predictions(engine, spec, admission, batcher, pool, max_pixels, max_request_pixels)
    serving = {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_upload_bytes": max_upload_bytes,
               "max_images": max_images, "top_k": min(top_k, len(engine.classes)), "decode_threads": decode_threads,
               "max_pixels": max_pixels, "max_request_pixels": max_request_pixels,
               "max_concurrency": max_concurrency, "max_pending": max_pending}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await batcher.close()
        pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="transferkit serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batcher, app.state.engine, app.state.serving, app.state.admission = batcher, engine, serving, admission
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes)
    app.add_middleware(AdmissionGate, admission=admission)  # outside BodyLimit: refused before any body is read
    if bound_host is not None and is_loopback(bound_host):
        app.add_middleware(HostCheck, bound_host=bound_host, port=port)
    _add_routes(app, predictions, serving, max_images, top_k)
    _add_error_handlers(app)
    return app


def _add_routes(app: FastAPI, predictions: _Predictions, serving: dict[str, Any], max_images: int,
                default_top_k: int) -> None:
    engine, batcher, admission, started_at = predictions.engine, predictions.batcher, predictions.admission, time.time()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "backbone": engine.metadata.get("backbone"),
                "classes": len(engine.classes), "uptime_s": round(time.time() - started_at, 1),
                "pending_images": batcher.pending, "admission": admission.as_dict(), "batching": batcher.stats.as_dict()}

    @app.get("/v1/metadata")
    async def metadata() -> dict[str, Any]:
        meta = {k: v for k, v in engine.metadata.items() if k not in _PRIVATE_METADATA}
        return {**meta, "serving": serving}

    @app.post("/v1/predict")
    async def predict(request: Request) -> JSONResponse:
        uploads, top_k_value = await read_uploads(request, max_images)
        k = parse_top_k(top_k_value, default_top_k, len(engine.classes))
        return await predictions.answer(uploads, k)


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
        error_id = uuid.uuid4().hex[:12]
        logger.exception("unexpected error %s on %s %s", error_id, request.method, request.url.path)
        return JSONResponse({"error": f"internal error {error_id} while answering {request.method} "
                                      f"{request.url.path}; the server keeps running. Retry, and if it happens again "
                                      f"report it with the error id {error_id} (the server's log has the details)"},
                            status_code=500)
