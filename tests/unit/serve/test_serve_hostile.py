"""The service against hostile input and overload (issue: "a service that cannot be knocked over").

* memory per request is bounded before decoding: images are weighed from their headers (a 171 KB 16-bit PNG of
  9400 x 9400 took 3 GB), per image (--max-pixels) and per request (--max-request-pixels);
* saturation is answered early: in-flight requests and waiting images are bounded, and a request beyond them gets
  a 503 with Retry-After before its body is read; multipart parts are streamed to their limits;
* every client error is a 4xx, the 500 handler does not echo exception text, and a server bound to loopback
  answers only requests addressed to it (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from typing import Any, Iterator

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import transferkit as tk
import transferkit.report as report
from conftest import TINY, free_port, make_image_folder
from pngbomb import zero_png
from transferkit.export.onnx import OnnxModel
from transferkit.serve.app import create_app
from transferkit.serve.server import ServeSettings, prepare
from transferkit.spec import BackboneSpec




@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> ServeSettings:
    root = tmp_path_factory.mktemp("hostile")
    make_image_folder(root / "data", {"red": 8, "green": 8, "blue": 8})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRANSFERKIT_CACHE_DIR", str(root / "cache"))
        mp.setattr(report, "build_run_report", lambda *a, **k: None)
        run = tk.train(root / "data", strategy="feature-extraction", epochs=1, out=str(root / "run"), **TINY).run_dir
    return prepare(run, max_images=8, max_wait_ms=2)


class HeldEngine:
    """The run's engine behind a gate: batches wait until ``release`` is set (requests stay in flight)."""

    def __init__(self, path: str) -> None:
        self.model = OnnxModel(path, threads=1)
        self.classes, self.metadata = self.model.classes, self.model.metadata
        self.release = threading.Event()
        self.release.set()
        self.fail: Exception | None = None

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        self.release.wait(30)
        if self.fail is not None:
            raise self.fail
        return self.model.run(images)


def make_app(settings: ServeSettings, **limits: Any) -> tuple[Any, HeldEngine]:
    engine = HeldEngine(settings.onnx_path)
    options = {"max_images": settings.max_images, "max_wait_ms": 2, **limits}
    return create_app(engine, BackboneSpec.from_dict(settings.spec), **options), engine  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def client(settings: ServeSettings) -> Iterator[TestClient]:
    app, _ = make_app(settings)
    with TestClient(app) as test_client:
        yield test_client


def jpeg(colour: tuple[int, int, int] = (220, 40, 40), size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


RED = jpeg()
HOSTILE = {"16-bit grey": zero_png(9400, 9400, 16, 0), "RGBA": zero_png(9400, 9400, 8, 6)}




def assert_still_serving(client: TestClient) -> None:
    answer = client.post("/v1/predict", files={"file": ("red.jpg", RED, "image/jpeg")})
    assert answer.status_code == 200, answer.text


# --- 1. memory per request is bounded before decoding -------------------------------------------------------------


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_hostile_png_is_refused_from_its_header(client: TestClient, kind: str, decoded_sizes: list):
    started = time.perf_counter()
    answer = client.post("/v1/predict", files={"file": ("scan.png", HOSTILE[kind], "image/png")})
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert "scan.png" in error and "too large to decode" in error and "--max-pixels" in error
    assert (9400, 9400) not in decoded_sizes and time.perf_counter() - started < 2.0
    assert_still_serving(client)


def test_a_request_of_hostile_pngs_decodes_none_of_them(settings: ServeSettings, decoded_sizes: list):
    app, _ = make_app(settings, max_images=64)
    with TestClient(app) as test_client:
        files = [("files", (f"{i}.png", HOSTILE["16-bit grey"], "image/png")) for i in range(63)]  # 10.8 MB
        files.append(("files", ("red.jpg", RED, "image/jpeg")))
        answer = test_client.post("/v1/predict", files=files)  # 64 images: 63 hostile, one good
    assert answer.status_code == 200, answer.text
    rows = answer.json()["results"]
    assert sum("too large to decode" in row.get("error", "") for row in rows) == 63 and "predictions" in rows[-1]
    assert (9400, 9400) not in decoded_sizes


def test_a_request_over_its_pixel_budget_is_413_before_any_decoding(settings: ServeSettings, decoded_sizes: list):
    """Each image is within --max-pixels, together they are over --max-request-pixels: nothing is decoded."""
    app, _ = make_app(settings, max_pixels=3_000_000, max_request_pixels=4_000_000)
    png = zero_png(1000, 1000)  # 1 MP each, 8 MB to decode
    with TestClient(app) as test_client:
        within = test_client.post("/v1/predict", files=[("files", (f"{i}.png", png, "image/png")) for i in range(3)])
        assert within.status_code == 200, within.text
        decoded_sizes.clear()
        over = test_client.post("/v1/predict", files=[("files", (f"{i}.png", png, "image/png")) for i in range(5)])
    assert over.status_code == 413, over.text
    error = over.json()["error"]
    assert "--max-request-pixels" in error and "5 images" in error and "split" in error
    assert decoded_sizes == []


# --- 2. concurrency is bounded and saturation is answered early ---------------------------------------------------


def _scope(path: str = "/v1/predict", headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": headers or [(b"content-type", b"multipart/form-data; boundary=xyz")],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}


def _multipart(*parts: tuple[str, bytes]) -> bytes:
    body = b""
    for name, data in parts:
        body += (b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="' + name.encode() + b'"\r\n'
                 b"Content-Type: image/jpeg\r\n\r\n" + data + b"\r\n")
    return body + b"--xyz--\r\n"


async def _call(app: Any, body: bytes | None, scope: dict[str, Any] | None = None) -> tuple[int, dict, dict]:
    """One raw ASGI request; ``body=None``: reading the body fails the test (it must be answered unread)."""
    messages: list[dict] = []

    async def receive() -> dict:
        if body is None:
            raise AssertionError("the body was read")
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        messages.append(message)

    await app(scope or _scope(), receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, json.loads(payload)


def test_a_request_beyond_the_in_flight_limit_gets_503_with_retry_after_unread(settings: ServeSettings):
    app, engine = make_app(settings, max_concurrency=2)

    async def main() -> tuple[list, tuple]:
        engine.release.clear()  # the first two requests stay in flight
        held = [asyncio.ensure_future(_call(app, _multipart(("r.jpg", RED)))) for _ in range(2)]
        await asyncio.sleep(0.5)
        refused = await _call(app, None)  # answered without reading its body
        engine.release.set()
        done = await asyncio.gather(*held)
        await app.state.batcher.close()
        return done, refused

    done, (status, headers, body) = asyncio.run(main())
    assert [d[0] for d in done] == [200, 200]
    assert status == 503 and int(headers["retry-after"]) >= 1
    assert "2 requests" in body["error"] and "--max-concurrency" in body["error"] and "retry" in body["error"]


def test_a_full_queue_of_waiting_images_gets_503_before_the_body_is_read(settings: ServeSettings):
    app, engine = make_app(settings, max_pending=4, max_concurrency=8)

    async def main() -> tuple[list, tuple]:
        engine.release.clear()
        held = [asyncio.ensure_future(_call(app, _multipart(*[(f"{i}.jpg", RED) for i in range(4)])))]  # 4 images wait
        await asyncio.sleep(0.5)
        refused = await _call(app, None)
        engine.release.set()
        done = await asyncio.gather(*held)
        await app.state.batcher.close()
        return done, refused

    done, (status, headers, body) = asyncio.run(main())
    assert done[0][0] == 200
    assert status == 503 and "retry-after" in headers and "--max-pending" in body["error"]


def test_an_admitted_request_is_never_refused_after_decoding(settings: ServeSettings):
    """The model queue holds whatever admitted requests can bring: no 503 once the images are decoded."""
    app, engine = make_app(settings, max_pending=2, max_concurrency=4)

    async def main() -> list:
        engine.release.clear()
        calls = [asyncio.ensure_future(_call(app, _multipart(*[(f"{i}.jpg", RED) for i in range(8)]))) for _ in range(3)]
        await asyncio.sleep(0.05)
        engine.release.set()
        answers = await asyncio.gather(*calls)
        await app.state.batcher.close()
        return answers

    statuses = [status for status, _, _ in asyncio.run(main())]
    assert 200 in statuses and set(statuses) <= {200, 503}
    assert app.state.batcher.stats.requests == statuses.count(200)  # every decoded request reached the model


def test_more_files_than_allowed_are_413_while_streaming(settings: ServeSettings):
    """--max-images + 2 files: the documented 413 (starlette's own parser said 400 'cannot be parsed'), and the
    parts after the limit are never read."""
    app, _ = make_app(settings)  # max_images 8
    head = _multipart(*[(f"{i}.jpg", RED) for i in range(settings.max_images + 1)])[:-len(b"--xyz--\r\n")]
    chunks = [head] + [_multipart(("late.jpg", RED))] * 200
    sent: list[int] = []

    async def main() -> tuple[int, dict]:
        messages: list[dict] = []

        async def receive() -> dict:
            sent.append(1)
            return {"type": "http.request", "body": chunks[len(sent) - 1], "more_body": len(sent) < len(chunks)}

        async def send(message: dict) -> None:
            messages.append(message)

        await app(_scope(), receive, send)
        start = next(m for m in messages if m["type"] == "http.response.start")
        return start["status"], json.loads(b"".join(m.get("body", b"") for m in messages[1:]))

    status, body = asyncio.run(main())
    assert status == 413 and f"limit is {settings.max_images}" in body["error"], body
    assert len(sent) < len(chunks)


def test_a_stalled_body_is_408_and_frees_its_place(settings: ServeSettings, monkeypatch: pytest.MonkeyPatch):
    """A client that stops sending its body would hold one of the --max-concurrency places for ever."""
    import transferkit.serve.inputs as inputs

    monkeypatch.setattr(inputs, "BODY_IDLE_SECONDS", 0.3)
    app, _ = make_app(settings, max_concurrency=1)
    calls: list[int] = []

    async def main() -> tuple[int, dict, float]:
        messages: list[dict] = []

        async def receive() -> dict:
            calls.append(1)
            if len(calls) > 1:
                await asyncio.sleep(30)  # the client went quiet
            return {"type": "http.request", "body": b"--xyz\r\n", "more_body": True}

        async def send(message: dict) -> None:
            messages.append(message)

        started = time.perf_counter()
        await app(_scope(), receive, send)
        status = next(m for m in messages if m["type"] == "http.response.start")["status"]
        body = json.loads(b"".join(m.get("body", b"") for m in messages[1:]))
        return status, body, time.perf_counter() - started

    status, body, seconds = asyncio.run(main())
    assert status == 408 and "stopped arriving" in body["error"] and seconds < 5
    assert app.state.admission.in_flight == 0


def test_a_real_server_answers_503_early_and_421_to_a_foreign_host(settings: ServeSettings):
    """uvicorn on a free loopback port: the admission gate and the Host check over real HTTP."""
    import uvicorn

    from transferkit.serve.server import app_from_settings

    port = free_port()
    limited = ServeSettings(**{**settings.__dict__, "max_concurrency": 1, "host": "127.0.0.1"})
    app = app_from_settings(limited)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(url + "/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        foreign = httpx.get(url + "/v1/health", headers={"host": "evil.example"})
        assert foreign.status_code in (400, 421) and "evil.example" in foreign.json()["error"]
        assert httpx.get(f"http://localhost:{port}/v1/health").status_code == 200

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                return await asyncio.gather(*(http.post("/v1/predict", files={"file": (f"{i}.jpg", RED)})
                                              for i in range(6)))

        answers = asyncio.run(burst())
        statuses = sorted(a.status_code for a in answers)
        assert statuses[0] == 200 and set(statuses) <= {200, 503}, statuses
        for answer in answers:
            if answer.status_code == 503:
                assert int(answer.headers["retry-after"]) >= 1 and "--max-concurrency" in answer.json()["error"]
    finally:
        server.should_exit = True
        thread.join(10)


# --- 3. every client error is a 4xx ------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    b'{"images": [{"data": "AAAA"}], "top_k": 1e400}',
    b'{"images": [{"data": "AAAA"}], "top_k": Infinity}',
    b'{"images": [{"data": "AAAA"}], "top_k": -Infinity}',
    b'{"images": [{"data": "AAAA"}], "top_k": NaN}',
    b'{"images": [{"data": "AAAA"}], "top_k": ' + b"9" * 5000 + b"}",
    b'{"images": [{"data": "AAAA"}], "top_k": [1]}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"images": [{"name": ' + b"[" * 900 + b"]" * 900 + b', "data": "AAAA"}]}',
    b'{"images": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}",
])
def test_hostile_json_is_a_4xx(client: TestClient, body: bytes):
    answer = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert 400 <= answer.status_code < 500, answer.text
    assert isinstance(answer.json()["error"], str)
    assert_still_serving(client)


@pytest.mark.parametrize("where", ["query", "form"])
@pytest.mark.parametrize("value", ["1e400", "inf", "nan", "9" * 5000, "-0", "2.5"])
def test_hostile_top_k_in_the_query_or_form_is_422(client: TestClient, where: str, value: str):
    files = {"file": ("r.jpg", RED, "image/jpeg")}
    answer = (client.post("/v1/predict", files=files, params={"top_k": value}) if where == "query"
              else client.post("/v1/predict", files=files, data={"top_k": value}))
    assert answer.status_code == 422, answer.text


def test_more_than_max_images_plus_one_files_is_413(client: TestClient, settings: ServeSettings):
    files = [("files", (f"{i}.jpg", RED, "image/jpeg")) for i in range(settings.max_images + 2)]
    answer = client.post("/v1/predict", files=files)
    assert answer.status_code == 413 and f"limit is {settings.max_images}" in answer.json()["error"], answer.text


def test_an_internal_error_is_a_500_that_does_not_echo_the_exception(settings: ServeSettings):
    app, engine = make_app(settings)
    engine.fail = RuntimeError("secret detail /srv/models/private.onnx")
    with TestClient(app, raise_server_exceptions=False) as test_client:
        answer = test_client.post("/v1/predict", files={"file": ("r.jpg", RED, "image/jpeg")})
        assert answer.status_code == 500
        error = answer.json()["error"]
        assert "secret" not in error and "RuntimeError" not in error and "private.onnx" not in error
        assert "keeps running" in error
        engine.fail = None
        assert test_client.post("/v1/predict", files={"file": ("r.jpg", RED, "image/jpeg")}).status_code == 200


def test_health_does_not_expose_the_pid(client: TestClient):
    body = client.get("/v1/health").json()
    assert body["status"] == "ok" and "pid" not in body


@pytest.mark.parametrize("host, status", [("evil.example", 421), ("evil.example:8000", 421), ("127.0.0.1:8000", 200),
                                          ("localhost:8000", 200), ("[::1]:8000", 200), ("localhost", 200)])
def test_a_loopback_server_answers_only_requests_addressed_to_it(settings: ServeSettings, host: str, status: int):
    app, _ = make_app(settings, bound_host="127.0.0.1")
    with TestClient(app, base_url="http://127.0.0.1:8000") as test_client:
        answer = test_client.get("/v1/health", headers={"host": host})
        assert answer.status_code == status, answer.text
        if status != 200:
            error = answer.json()["error"]
            assert host in error and "127.0.0.1" in error and "--host" in error
            assert test_client.post("/v1/predict", headers={"host": host},
                                    files={"file": ("r.jpg", RED, "image/jpeg")}).status_code == status


def test_a_server_bound_to_every_interface_does_not_check_the_host(settings: ServeSettings):
    app, _ = make_app(settings, bound_host="0.0.0.0")
    with TestClient(app) as test_client:
        assert test_client.get("/v1/health", headers={"host": "my-server.lan:8000"}).status_code == 200
