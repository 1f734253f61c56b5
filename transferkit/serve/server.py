"""Starting the service: the run's ONNX graph prepared once, the cores split between workers, uvicorn.

``prepare`` loads the run and exports its graph (once, into ``<run>/onnx/``; parity-checked then), and
returns :class:`ServeSettings`, plain JSON-able data. One worker builds its app from them in-process; with
``--workers N`` uvicorn starts N processes that each call :func:`app_from_env` (a factory, since worker
processes cannot receive an app object), reading the settings from :data:`SETTINGS_ENV`. Workers open the
prepared graph only: no PyTorch model is loaded in them.

Cores: each worker gets ``cores // workers`` of them (at least one), split by the project's CPU policy
(:func:`transferkit.data.datasets.cpu_plan`) into ONNX Runtime intra-op threads and decoding threads
(at least one of each). So workers x ONNX Runtime threads never exceeds the cores (unless there are more
workers than cores); on one core per worker the decoding thread shares it with the session, which it does
without a fight: decoding and inference of a worker alternate, and ONNX Runtime does not spin-wait
(:func:`transferkit.export.onnx.session_options`).
"""

from __future__ import annotations

import errno
import json
import os
import socket
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from transferkit.errors import ConfigError
from transferkit.serve.inputs import (DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_IMAGES, DEFAULT_MAX_PENDING, DEFAULT_MAX_PIXELS,
                                     DEFAULT_MAX_REQUEST_PIXELS, DEFAULT_MAX_UPLOAD_BYTES)

__all__ = ["ServeSettings", "SETTINGS_ENV", "prepare", "thread_plan", "app_from_settings", "app_from_env", "serve",
           "check_port", "connection_backstop", "freeze_startup_objects"]

SETTINGS_ENV = "TRANSFERKIT_SERVE_SETTINGS"


@dataclass(frozen=True)
class ServeSettings:
    """Everything a worker needs to build the app: the graph, the preprocessing spec, threads and limits."""

    run: str
    onnx_path: str
    spec: dict[str, Any]
    threads: int
    decode_threads: int
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_images: int = DEFAULT_MAX_IMAGES
    top_k: int = 3
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_pending: int = DEFAULT_MAX_PENDING
    host: str | None = None  # where the server listens (a loopback address turns on the Host check)
    port: int | None = None
    onnx_sha256: str | None = None  # the graph's SHA-256, checked by every worker before it opens the graph

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServeSettings":
        return cls(**json.loads(text))


def thread_plan(workers: int, cores: int | None = None) -> tuple[int, int]:
    """(ONNX Runtime threads, decoding threads) per worker: the worker's share of the cores, split by cpu_plan."""
    from transferkit.data.datasets import available_cores, cpu_plan

    share = max(1, (cores or available_cores()) // max(1, workers))
    plan = cpu_plan(-1, cores=share)
    return plan.threads, max(1, plan.workers)


def prepare(run_dir: str | os.PathLike[str], *, workers: int = 1, max_batch: int = 32, max_wait_ms: float = 5.0,
            max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_images: int = DEFAULT_MAX_IMAGES, top_k: int = 3,
            max_pixels: int = DEFAULT_MAX_PIXELS, max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS,
            max_concurrency: int = DEFAULT_MAX_CONCURRENCY, max_pending: int = DEFAULT_MAX_PENDING,
            say: Callable[[str], None] = lambda line: None) -> ServeSettings:
    """Check the options, load the run, export (or reuse) its ONNX graph, and return the workers' settings."""
    checks = [(workers >= 1, f"--workers {workers}: give at least 1"),
              (max_batch >= 1, f"--max-batch {max_batch}: give at least 1"),
              (max_wait_ms >= 0, f"--max-wait-ms {max_wait_ms}: give 0 or more milliseconds"),
              (max_upload_bytes >= 1024, f"--max-upload-mb {max_upload_bytes / 2 ** 20:g}: give at least 0.001 (1 KB)"),
              (max_images >= 1, f"--max-images {max_images}: give at least 1"),
              (top_k >= 1, f"--top-k {top_k}: give at least 1"),
              (max_pixels >= 64, f"--max-pixels {max_pixels}: give at least 64 (the default is {DEFAULT_MAX_PIXELS})"),
              (max_request_pixels >= max_pixels, f"--max-request-pixels {max_request_pixels}: give at least "
                                                 f"--max-pixels ({max_pixels}), or one image could never be sent"),
              (max_concurrency >= 1, f"--max-concurrency {max_concurrency}: give at least 1"),
              (max_pending >= 1, f"--max-pending {max_pending}: give at least 1")]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    from transferkit.export.deploy import run_engine
    from transferkit.export.runfiles import load_run

    threads, decode_threads = thread_plan(workers)
    say(f"loading {run_dir} and preparing its ONNX graph ...")
    run = load_run(run_dir)
    engine = run_engine(run, threads=threads)
    return ServeSettings(run=str(run.path), onnx_path=str(engine.path), spec=run.spec.to_dict(), threads=threads,
                         decode_threads=decode_threads, max_batch=max_batch, max_wait_ms=max_wait_ms,
                         max_upload_bytes=max_upload_bytes, max_images=max_images, top_k=top_k, max_pixels=max_pixels,
                         max_request_pixels=max_request_pixels, max_concurrency=max_concurrency,
                         max_pending=max_pending, onnx_sha256=engine.sha256)


def app_from_settings(settings: ServeSettings) -> Any:
    """The FastAPI app of one worker."""
    from transferkit.export.onnx import OnnxModel
    from transferkit.serve.app import create_app
    from transferkit.spec import BackboneSpec

    engine = OnnxModel(settings.onnx_path, threads=settings.threads, sha256=settings.onnx_sha256)
    return create_app(engine, BackboneSpec.from_dict(settings.spec), max_batch=settings.max_batch,
                      max_wait_ms=settings.max_wait_ms, max_upload_bytes=settings.max_upload_bytes,
                      max_images=settings.max_images, top_k=settings.top_k, decode_threads=settings.decode_threads,
                      max_pixels=settings.max_pixels, max_request_pixels=settings.max_request_pixels,
                      max_concurrency=settings.max_concurrency, max_pending=settings.max_pending,
                      bound_host=settings.host, port=settings.port)


def app_from_env() -> Any:
    """uvicorn's factory for worker processes: the app from the settings in ``$TRANSFERKIT_SERVE_SETTINGS``."""
    text = os.environ.get(SETTINGS_ENV)
    if not text:
        raise ConfigError(f"${SETTINGS_ENV} is not set; start the service with `transferkit serve RUN`, which sets it")
    app = app_from_settings(ServeSettings.from_json(text))
    freeze_startup_objects()
    return app


def freeze_startup_objects() -> None:
    """Move every object alive now (the imported libraries, the loaded run, the app) out of the garbage collector's
    reach (:func:`gc.freeze`), so that its full collections walk only what requests create.

    A server process holds ~500,000 tracked objects once PyTorch is imported (``prepare`` loads the run); a full
    collection walks them all on the event loop's thread: 0.26 s on an idle core, 0.3-0.9 s on the 2 shared
    cores of the hostile load test, during which nothing is answered, /v1/health included (it took 1.2 s). After
    the freeze a full collection takes microseconds at start, and the objects frozen are ones that live as long
    as the server anyway.
    """
    import gc

    gc.collect()
    gc.freeze()


def check_port(host: str, port: int) -> None:
    """Refuse a port that cannot be bound, with the fix, before the run is loaded (uvicorn would only log it)."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a TCP port; give 1-65535 (e.g. --port 8000)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host!r} cannot be resolved ({exc}); give an address such as 127.0.0.1 or 0.0.0.0") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} is already in use; stop the other server or choose "
                                  "another with --port") from None
            raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --host/--port") from None


def url_of(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def connection_backstop(max_concurrency: int) -> int:
    """uvicorn's ``limit_concurrency``: open connections (idle keep-alive ones and clients told 503 included) and
    requests beyond which uvicorn itself answers a plain 503 and closes the connection without reading the body.

    It must sit far above the clients the app's own gate answers: uvicorn counts every open connection, so at the
    old 4 x --max-concurrency + 64 (128) a burst of 256 clients got uvicorn's 503 for every request, /v1/health
    included, and a client still uploading often lost even that answer to the reset (benchmarks/serve_load.py,
    hostile mix). Each connection costs uvicorn at most its 64 KB read buffer, so 1024 of them stay under ~100 MB.
    """
    return max(1024, 4 * max_concurrency + 64)


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          log_level: str = "warning") -> None:
    """Run the service until interrupted (one process, or ``workers`` uvicorn worker processes).

    The app checks the Host header when ``host`` is a loopback address; uvicorn's own ``limit_concurrency`` (a
    plain 503 for connections and requests far beyond the app's --max-concurrency) is a backstop.
    """
    import uvicorn

    settings = replace(settings, host=host, port=port)
    backstop = connection_backstop(settings.max_concurrency)
    options = dict(host=host, port=port, log_level=log_level, access_log=False, limit_concurrency=backstop)
    if workers == 1:
        app = app_from_settings(settings)
        freeze_startup_objects()
        uvicorn.run(app, **options)
        return
    os.environ[SETTINGS_ENV] = settings.to_json()  # inherited by the worker processes
    uvicorn.run(f"{__name__}:app_from_env", factory=True, workers=workers, **options)


def describe(settings: ServeSettings, host: str, port: int, workers: int) -> list[str]:
    """The lines printed on start: where to go, and how the cores are used."""
    url = url_of(host, port)
    return [f"serving {Path(settings.run).name} ({settings.run}) at {url}",
            f"  page: {url}   predict: POST {url}v1/predict   health: {url}v1/health   metadata: {url}v1/metadata",
            f"  {workers} worker(s) x ({settings.threads} ONNX Runtime thread(s) + {settings.decode_threads} decoding "
            f"thread(s)); batches of up to {settings.max_batch} images, waiting up to {settings.max_wait_ms:g} ms; "
            f"uploads up to {settings.max_upload_bytes / 2 ** 20:g} MB and {settings.max_images} images per request, "
            f"{settings.max_pixels:,} pixels per image and {settings.max_request_pixels:,} per request; "
            f"{settings.max_concurrency} requests in flight and {settings.max_pending} images waiting per worker "
            "(503 beyond). Ctrl-C stops it."]
