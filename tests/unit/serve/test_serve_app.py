"""The HTTP service in-process (FastAPI's TestClient) on a real tiny run: the routes, the answers equal
`transferkit.predict`, every bad input is a 4xx with a JSON error after which the server still answers, and
concurrent requests share ONNX Runtime calls."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import tracemalloc
import zlib
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import transferkit as tk
import transferkit.report as report
from conftest import TINY, make_image_folder
from transferkit.serve.inputs import DRAIN_BYTES
from transferkit.serve.server import SETTINGS_ENV, ServeSettings, app_from_env, app_from_settings, prepare

LIMIT = 2 * 2 ** 20  # a small upload limit, so "too large" is cheap to send


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tiny run (3 colour classes, feature extraction at 32 px) and its ONNX graph."""
    root = tmp_path_factory.mktemp("serve")
    make_image_folder(root / "data", {"red": 8, "green": 8, "blue": 8})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRANSFERKIT_CACHE_DIR", str(root / "cache"))
        mp.setattr(report, "build_run_report", lambda *a, **k: None)  # not under test, costs seconds
        return tk.train(root / "data", strategy="feature-extraction", epochs=1, out=str(root / "run"), **TINY).run_dir


@pytest.fixture(scope="module")
def settings(run_dir: Path) -> ServeSettings:
    return prepare(run_dir, max_upload_bytes=LIMIT, max_images=8, max_wait_ms=2)


@pytest.fixture(scope="module")
def client(settings: ServeSettings) -> Iterator[TestClient]:
    with TestClient(app_from_settings(settings)) as test_client:
        yield test_client


def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A 1 KB PNG whose header declares 400 megapixels (a decompression bomb: refused before decoding)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = zlib.compress(b"\x00" * (width * 3 + 1) * 4, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


RED, GREEN, BLUE = jpeg((220, 40, 40)), jpeg((40, 200, 60), seed=1), jpeg((50, 70, 220), seed=2)


def assert_still_serving(client: TestClient) -> None:
    assert client.get("/v1/health").json()["status"] == "ok"
    answer = client.post("/v1/predict", files={"file": ("red.jpg", RED, "image/jpeg")})
    assert answer.status_code == 200 and answer.json()["results"][0]["predictions"][0]["label"] == "red"


# --- routes ------------------------------------------------------------------------------------------------


def test_health(client: TestClient):
    body = client.get("/v1/health").json()
    assert body["status"] == "ok" and body["classes"] == 3 and body["backbone"] == "efficientnet_lite0"
    assert {"batches", "images", "requests"} <= set(body["batching"])


def test_metadata_describes_the_model_and_its_test_figures(client: TestClient, run_dir: Path):
    body = client.get("/v1/metadata").json()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert body["classes"] == ["blue", "green", "red"] and body["input_size"] == 32
    assert body["resize"]["center_crop"] == 32 and body["resize"]["resize_shorter_side"] == 36
    assert body["test_metrics"]["accuracy"] == pytest.approx(summary["metrics"]["accuracy"])
    assert body["test_n"] == summary["protocol"]["test"]["n"]
    assert body["serving"]["max_upload_bytes"] == LIMIT and body["serving"]["top_k"] == 3
    assert "run" not in body  # the server's paths stay private


def test_the_page_is_self_contained(client: TestClient):
    answer = client.get("/")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    page = answer.text
    assert 'type="file"' in page and "v1/predict" in page and "v1/metadata" in page
    assert "http://" not in page and "https://" not in page  # nothing from the network
    assert "innerHTML" not in page  # names and labels are inserted as text


# --- predictions -------------------------------------------------------------------------------------------


def test_one_file(client: TestClient):
    answer = client.post("/v1/predict", files={"file": ("red.jpg", RED, "image/jpeg")})
    assert answer.status_code == 200
    (row,) = answer.json()["results"]
    assert row["name"] == "red.jpg" and len(row["predictions"]) == 3  # default top_k 3, 3 classes
    assert row["predictions"][0]["label"] == "red"
    probs = [p["probability"] for p in row["predictions"]]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-5)


def test_several_files_keep_their_order(client: TestClient):
    files = [("files", ("g.jpg", GREEN, "image/jpeg")), ("files", ("b.jpg", BLUE, "image/jpeg")),
             ("files", ("r.jpg", RED, "image/jpeg"))]
    rows = client.post("/v1/predict", files=files).json()["results"]
    assert [r["name"] for r in rows] == ["g.jpg", "b.jpg", "r.jpg"]
    assert [r["predictions"][0]["label"] for r in rows] == ["green", "blue", "red"]


def test_json_base64_and_data_urls(client: TestClient):
    payload = {"images": [{"name": "b", "data": base64.b64encode(BLUE).decode()},
                          {"data": "data:image/jpeg;base64," + base64.encodebytes(GREEN).decode()}], "top_k": 1}
    rows = client.post("/v1/predict", json=payload).json()["results"]
    assert [r["name"] for r in rows] == ["b", "image-2"]
    assert [[p["label"] for p in r["predictions"]] for r in rows] == [["blue"], ["green"]]


@pytest.mark.parametrize("how, expected", [("query", 2), ("form", 1), ("clipped", 3), ("default", 3)])
def test_top_k(client: TestClient, how: str, expected: int):
    files = {"file": ("r.jpg", RED, "image/jpeg")}
    url, data = {"query": ("/v1/predict?top_k=2", None), "form": ("/v1/predict", {"top_k": "1"}),
                 "clipped": ("/v1/predict?top_k=50", None), "default": ("/v1/predict", None)}[how]
    answer = client.post(url, files=files, data=data).json()
    assert answer["top_k"] == expected and len(answer["results"][0]["predictions"]) == expected


def test_served_predictions_equal_the_python_api(client: TestClient, run_dir: Path, tmp_path: Path):
    """Same decoding (JPEG draft), resize and crop as `transferkit.predict`: top-1 equal, probabilities within 1e-4."""
    images = {"large.jpg": jpeg((40, 200, 60), size=(640, 480), seed=5),  # decoded at a reduced DCT scale
              "red.jpg": RED, "blue.jpg": BLUE}
    rgba = Image.new("RGBA", (50, 70), (200, 30, 30, 128))  # alpha is composited onto white
    buffer = io.BytesIO()
    rgba.save(buffer, "PNG")
    images["alpha.png"] = buffer.getvalue()
    for name, data in images.items():
        (tmp_path / name).write_bytes(data)
    expected = tk.predict(run_dir, [tmp_path / name for name in images], top_k=3)
    rows = client.post("/v1/predict", files=[("files", (name, data, "application/octet-stream"))
                                             for name, data in images.items()]).json()["results"]
    for want, got in zip(expected, rows):
        assert [p["label"] for p in got["predictions"]] == [p["label"] for p in want["predictions"]], got["name"]
        for p, q in zip(got["predictions"], want["predictions"]):
            assert p["probability"] == pytest.approx(q["probability"], abs=1e-4), got["name"]


# --- bad input ---------------------------------------------------------------------------------------------


def _truncated() -> bytes:
    return jpeg((220, 40, 40), size=(200, 150))[:1500]


BAD_REQUESTS: dict[str, tuple[dict[str, Any], int, str]] = {
    "not an image": ({"files": {"file": ("notes.jpg", b"hello, I am text", "image/jpeg")}}, 422, "not an image"),
    "truncated JPEG": ({"files": {"file": ("cut.jpg", _truncated(), "image/jpeg")}}, 422, "truncated"),
    "decompression bomb": ({"files": {"file": ("bomb.png", bomb_png(), "image/png")}}, 422, "decompression-bomb"),
    "empty file": ({"files": {"file": ("empty.jpg", b"", "image/jpeg")}}, 422, "empty file"),
    "too small": ({"files": {"file": ("pixel.png", None, "image/png")}}, 422, "too small"),
    "oversized upload": ({"files": {"file": ("big.jpg", b"\xff" * (LIMIT + 10), "image/jpeg")}}, 413, "limit is 2.0 MB"),
    "wrong content type": ({"content": b"\xff\xd8\xff", "headers": {"content-type": "image/jpeg"}}, 415, "multipart/form-data"),
    "text body": ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "curl -F file=@"),
    "bad base64": ({"json": {"images": [{"name": "x.jpg", "data": "not base64!"}]}}, 422, "not valid base64"),
    "malformed JSON": ({"content": b"{images:", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    "JSON without images": ({"json": {"pictures": []}}, 422, "\"images\""),
    "empty request": ({}, 400, "the request is empty"),
    "no images in the form": ({"data": {"top_k": "2"}, "files": {"photo": ("a.jpg", b"x", "image/jpeg")}}, 400, "'photo'"),
    "text instead of a file": ({"data": {"file": "photo.jpg"}, "files": {"x": ("x.jpg", b"x", "image/jpeg")}}, 422,
                               "holds text"),
    "url-encoded form": ({"data": {"file": "photo.jpg"}}, 415, "enctype"),
    "too many images": ({"files": [("files", (f"{i}.jpg", b"x", "image/jpeg")) for i in range(9)]}, 413, "limit is 8"),
    "bad top_k": ({"files": {"file": ("r.jpg", RED, "image/jpeg")}, "params": {"top_k": "three"}}, 422, "top_k"),
    "zero top_k": ({"files": {"file": ("r.jpg", RED, "image/jpeg")}, "params": {"top_k": "0"}}, 422, "at least 1"),
    "broken multipart": ({"content": b"--xyz\r\nnonsense", "headers": {"content-type": "multipart/form-data; boundary=xyz"}},
                         400, "multipart"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_is_a_4xx_with_a_json_error_and_the_server_goes_on(client: TestClient, case: str):
    kwargs, status, phrase = BAD_REQUESTS[case]
    kwargs = dict(kwargs)
    if case == "too small":
        buffer = io.BytesIO()
        Image.new("RGB", (1, 1)).save(buffer, "PNG")
        kwargs["files"] = {"file": ("pixel.png", buffer.getvalue(), "image/png")}
    answer = client.post("/v1/predict", **kwargs)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert phrase in error, error
    assert_still_serving(client)


def test_a_bad_image_among_good_ones_gets_its_own_row(client: TestClient):
    files = [("files", ("r.jpg", RED, "image/jpeg")), ("files", ("notes.txt", b"text", "text/plain")),
             ("files", ("b.jpg", BLUE, "image/jpeg"))]
    answer = client.post("/v1/predict", files=files)
    assert answer.status_code == 200
    rows = answer.json()["results"]
    assert rows[0]["predictions"][0]["label"] == "red" and rows[2]["predictions"][0]["label"] == "blue"
    assert rows[1]["name"] == "notes.txt" and "not an image" in rows[1]["error"] and "predictions" not in rows[1]


def test_when_every_image_fails_the_request_is_422_naming_each(client: TestClient):
    files = [("files", ("a.txt", b"text", "text/plain")), ("files", ("b.jpg", _truncated(), "image/jpeg"))]
    answer = client.post("/v1/predict", files=files)
    assert answer.status_code == 422
    body = answer.json()
    assert "none of the 2 images" in body["error"] and "a.txt" in body["error"] and "b.jpg" in body["error"]
    assert [r["name"] for r in body["results"]] == ["a.txt", "b.jpg"]


def test_unknown_routes_and_methods_answer_json(client: TestClient):
    missing = client.get("/v1/predictions")
    assert missing.status_code == 404 and "POST /v1/predict" in missing.json()["error"]
    wrong = client.get("/v1/predict")
    assert wrong.status_code == 405 and "GET is not allowed" in wrong.json()["error"]


def test_an_oversized_body_without_content_length_is_cut_off_while_reading(settings: ServeSettings):
    """A chunked upload is refused once the limit is passed: the rest is never read (nor held in memory)."""
    app = app_from_settings(settings)
    chunk, sent = b"\0" * (256 * 1024), []
    messages: list[dict] = []

    head = (b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="huge.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n")

    async def receive() -> dict:  # one well-formed file part of 400 MB, in 256 KB chunks
        body = head if not sent else chunk
        sent.append(len(body))
        return {"type": "http.request", "body": body, "more_body": len(sent) < 1600}

    async def send(message: dict) -> None:
        messages.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/predict", "raw_path": b"/v1/predict", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"multipart/form-data; boundary=xyz"), (b"transfer-encoding", b"chunked")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    tracemalloc.start()
    try:
        asyncio.run(app(scope, receive, send))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    assert start["status"] == 413 and "limit is 2.0 MB" in json.loads(body)["error"]
    # past the limit the rest is only drained (so the client can read the 413), up to DRAIN_BYTES, never kept
    assert sum(sent) <= DRAIN_BYTES + 2 * len(chunk) < 400 * 2 ** 20
    assert peak < 3 * LIMIT, f"{peak / 2 ** 20:.1f} MB held while refusing"


def test_a_declared_oversized_body_is_refused_without_being_kept(settings: ServeSettings):
    """Content-Length over the limit: refused on the header; the body is drained, never reaches the endpoint."""
    app = app_from_settings(settings)
    chunks = [b"\0" * (512 * 1024)] * 6  # 3 MB against a 2 MB limit
    messages: list[dict] = []

    async def receive() -> dict:
        body = chunks.pop()
        return {"type": "http.request", "body": body, "more_body": bool(chunks)}

    async def send(message: dict) -> None:
        messages.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/predict", "raw_path": b"/v1/predict", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(3 * 2 ** 20).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    assert messages[0]["status"] == 413 and "declares 3.0 MB" in json.loads(messages[1]["body"])["error"]
    assert app.state.batcher.stats.requests == 0 and chunks == []


def test_a_declared_oversized_body_is_refused_before_reading(settings: ServeSettings):
    app = app_from_settings(settings)
    messages: list[dict] = []

    async def receive() -> dict:
        raise AssertionError("the body was read")

    async def send(message: dict) -> None:
        messages.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/predict", "raw_path": b"/v1/predict", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"multipart/form-data; boundary=xyz"), (b"content-length", b"1000000000")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    assert messages[0]["status"] == 413 and (b"connection", b"close") in messages[0]["headers"]
    assert "declares 953.7 MB" in json.loads(messages[1]["body"])["error"]


# --- batching ----------------------------------------------------------------------------------------------


def test_concurrent_requests_share_onnx_runtime_calls(settings: ServeSettings):
    app = app_from_settings(ServeSettings(**{**settings.__dict__, "max_wait_ms": 150.0, "max_batch": 16}))
    batcher = app.state.batcher
    n = 12

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as http:
            answers = await asyncio.gather(*(http.post("/v1/predict", files={"file": (f"{i}.jpg", RED, "image/jpeg")})
                                             for i in range(n)))
        await batcher.close()
        return answers

    answers = asyncio.run(main())
    assert all(a.status_code == 200 for a in answers)
    assert all(a.json()["results"][0]["predictions"][0]["label"] == "red" for a in answers)
    stats = batcher.stats
    assert stats.requests == n and stats.images == n
    assert stats.batches < n and stats.largest_batch > 1, stats  # fewer session calls than requests


# --- worker processes --------------------------------------------------------------------------------------


def test_workers_build_the_app_from_the_environment(settings: ServeSettings, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(SETTINGS_ENV, settings.to_json())
    with TestClient(app_from_env()) as worker:
        answer = worker.post("/v1/predict", files={"file": ("g.jpg", GREEN, "image/jpeg")})
        assert answer.json()["results"][0]["predictions"][0]["label"] == "green"
    monkeypatch.delenv(SETTINGS_ENV)
    with pytest.raises(tk.errors.ConfigError, match="transferkit serve RUN"):
        app_from_env()
