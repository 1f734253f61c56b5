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
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", help="The largest request body, in MB (413 beyond)."),
    max_images: int = typer.Option(64, "--max-images", help="The most images in one request (413 beyond)."),
    top_k: int = typer.Option(3, "--top-k", help="Classes per image when a request does not say (top_k=)."),
) -> None:
    """Serve a trained run over HTTP: POST /v1/predict, GET /v1/health, GET /v1/metadata and a web page at /."""

    def go():
        from transferkit.serve import server

        _require_serve_packages()
        server.check_port(host, port)
        settings = server.prepare(run, workers=workers, max_batch=max_batch, max_wait_ms=max_wait_ms,
                                  max_upload_bytes=int(max_upload_mb * 2 ** 20), max_images=max_images, top_k=top_k,
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
