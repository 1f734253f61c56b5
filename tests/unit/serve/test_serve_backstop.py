"""What `transferkit serve` hands uvicorn, found by the hostile load test (benchmarks/serve_load.py, issue 25):

* uvicorn's own ``limit_concurrency`` counts every open connection; at the old 4 x --max-concurrency + 64 (128) a
  burst of 256 clients got uvicorn's plain 503 for every request, /v1/health included, and clients still
  uploading lost even that answer to the reset. The backstop now sits far above the clients the app's gate answers.
* a full garbage collection walked the ~500,000 objects of the loaded libraries on the event loop's thread
  (0.3-0.9 s on the shared cores: /v1/health took 1.2 s); the objects alive at start are frozen first.
"""

from __future__ import annotations

import gc
import socket
import threading
import time
from typing import Any

import httpx
import pytest

from conftest import free_port
from transferkit.serve import server
from transferkit.serve.server import ServeSettings, connection_backstop


def _settings() -> ServeSettings:
    return ServeSettings(run="run", onnx_path="model.onnx", spec={}, threads=1, decode_threads=1)


def test_serve_gives_uvicorn_a_backstop_above_256_clients_and_freezes_the_startup_objects(monkeypatch: pytest.MonkeyPatch):
    import uvicorn

    seen: dict[str, Any] = {}
    monkeypatch.setattr(server, "app_from_settings", lambda settings: "the app")
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: seen.update(options, app=app, frozen=gc.get_freeze_count()))
    before = gc.get_freeze_count()
    try:
        server.serve(_settings(), host="127.0.0.1", port=free_port())
    finally:
        gc.unfreeze()
    assert seen["app"] == "the app"
    assert seen["limit_concurrency"] >= 1024 and seen["limit_concurrency"] == connection_backstop(16)
    assert seen["frozen"] > before, "the objects alive at start must be frozen before uvicorn serves"


def test_256_open_connections_leave_health_answered_by_the_app():
    """A real uvicorn with serve's backstop: 256 idle connections open, /v1/health on one more is still 200
    (uvicorn answered 503 to every request once 128 connections were open)."""
    import uvicorn

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"status": "ok"}'})

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off",
                            limit_concurrency=connection_backstop(16))
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    idle: list[socket.socket] = []
    try:
        for _ in range(100):
            if running.started:
                break
            time.sleep(0.05)
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(256)]
        time.sleep(0.3)  # every connection accepted by the server
        answer = httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=5)
        assert answer.status_code == 200 and answer.json() == {"status": "ok"}
    finally:
        for connection in idle:
            connection.close()
        running.should_exit = True
        thread.join(10)
