"""``transferkit serve RUN``: an HTTP service and a web page for a trained run, on ONNX Runtime.

``POST /v1/predict`` (multipart files or JSON base64) answers the top-k classes per image; the images of
concurrent requests run together in one ONNX Runtime call. FastAPI, uvicorn and ONNX Runtime are imported
inside the command (``pip install 'transferkit[serve]'``), so ``--help`` stays light.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import typer

from transferkit.cli.common import guarded
from transferkit.serve.inputs import (DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_IMAGES, DEFAULT_MAX_PENDING, DEFAULT_MAX_PIXELS,
                                     DEFAULT_MAX_REQUEST_PIXELS, DEFAULT_MAX_UPLOAD_BYTES)

__all__ = ["register"]


def _require_serve_packages() -> None:
    from transferkit.errors import ConfigError

    missing = [name for name in ("fastapi", "uvicorn", "python_multipart", "onnxruntime", "onnx")
               if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"`transferkit serve` needs {', '.join(missing)}, which are not installed; "
                          "install them with `pip install 'transferkit[serve]'`")


def serve(
    run: Path = typer.Argument(..., help="A run folder (the --out of `transferkit train`)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface; "
                                                          "only on a network you trust, there is no authentication)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    workers: int = typer.Option(1, "--workers", help="Server processes; the cores are split between them."),
    max_batch: int = typer.Option(32, "--max-batch", help="The most images per ONNX Runtime call."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="How long an image waits for others to share its call."),
    max_upload_mb: float = typer.Option(DEFAULT_MAX_UPLOAD_BYTES / 2 ** 20, "--max-upload-mb",
                                        help="The largest request body, in MB (413 beyond)."),
    max_images: int = typer.Option(DEFAULT_MAX_IMAGES, "--max-images", help="The most images in one request (413 beyond)."),
    top_k: int = typer.Option(3, "--top-k", help="Classes per image when a request does not say (top_k=)."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels",
                                   help="Decoding budget of one image, in pixels (8 bytes each; a JPEG counts at its "
                                        "reduced draft size, WebP and TIFF count more), read from its header "
                                        "before decoding (an error row beyond)."),
    max_request_pixels: int = typer.Option(DEFAULT_MAX_REQUEST_PIXELS, "--max-request-pixels",
                                           help="Decoding budget of one request's images together (413 beyond)."),
    max_concurrency: int = typer.Option(DEFAULT_MAX_CONCURRENCY, "--max-concurrency",
                                        help="Predictions in flight per worker (503 with Retry-After beyond, "
                                             "before the body is read)."),
    max_pending: int = typer.Option(DEFAULT_MAX_PENDING, "--max-pending",
                                    help="Images waiting for decoding or the model per worker (503 beyond)."),
) -> None:
    """Serve a trained run over HTTP: POST /v1/predict, GET /v1/health, GET /v1/metadata and a web page at /."""

    def go():
        from transferkit.serve import server

        _require_serve_packages()
        server.check_port(host, port)
        settings = server.prepare(run, workers=workers, max_batch=max_batch, max_wait_ms=max_wait_ms,
                                  max_upload_bytes=int(max_upload_mb * 2 ** 20), max_images=max_images, top_k=top_k,
                                  max_pixels=max_pixels, max_request_pixels=max_request_pixels,
                                  max_concurrency=max_concurrency, max_pending=max_pending,
                                  say=lambda line: typer.echo(line, err=True))
        for line in server.describe(settings, host, port, workers):
            typer.echo(line)
        return server, settings

    server, settings = guarded(go)
    try:
        guarded(lambda: server.serve(settings, host=host, port=port, workers=workers))
    except KeyboardInterrupt:  # uvicorn handles Ctrl-C itself; this covers one between the two calls
        raise typer.Exit(130) from None


def register(app: typer.Typer) -> None:
    app.command()(serve)
