"""Load test of `transferkit serve` (issues 17 and 25): good and bad uploads at once, then a hostile mix, over real
HTTP on loopback.

Command (the recorded numbers came from exactly this)::

    .venv/bin/python benchmarks/serve_load.py                       # 2,000 requests at 16, then 1,500 hostile at 256
    .venv/bin/python benchmarks/serve_load.py --requests 200 --hostile-requests 300 --out /tmp/serve_quick.json

What it does, by itself, and then stops:

1. the run: ``--run`` (default ``benchmarks/runs/serve_hymenoptera``, trained first if missing: feature
   extraction on ``../shared/datasets/hymenoptera``, efficientnet_lite0 at 224 px);
2. starts ``transferkit serve RUN`` in a subprocess on a free 127.0.0.1 port and waits for ``/v1/health``;
3. the memory bar's terms: the idle server's RSS (before any prediction), then "one full batch": the growth to
   the peak RSS (sampled every 20 ms) while the fresh server answers one request of ``--max-batch`` photos (the
   body, the decoded images, ONNX Runtime's arena for a batch that size, and what the first call loads);
4. good traffic: ``--requests`` requests from a bounded httpx asyncio client (``--concurrency`` at a time; a warm-up
   first, not counted: 16 x concurrency requests of the mix, enough for ONNX Runtime's arena to settle; at 4 x it
   still grew ~70 MB over the first half of the run and not in the second): good ones are real photos of
   hymenoptera/val (one image per request; every fifth good request carries 4), and ``--bad-fraction`` of them are bad, in turn: not an
   image, a truncated JPEG, a decompression bomb (a 1 KB PNG declaring 400 megapixels), an upload over the limit,
   a body with the wrong content type, and JSON with bad base64; the server's RSS is sampled every 0.5 s;
5. the hostile mix (issue 25): ``--hostile-requests`` requests at ``--hostile-concurrency`` (256), one connection
   each, from a raw HTTP/1.1 client that sends the body while it waits for the answer (so an early 503 or 413 is
   read): real photos (multipart, base64 JSON, sent slowly in 10 pieces 0.25 s apart, padded with zeros to sizes
   from the photo's to the upload limit), random bodies of 1 KB to the upload limit, bodies over the limit, the
   all-zero 9400 x 9400 16-bit grey PNG (~170 KB) and RGBA PNG (~340 KB), 64 of the 16-bit ones in one request,
   truncated JPEGs and PNGs, 65 file parts, bad JSON (malformed, ``top_k`` 1e400, ``Infinity``, nested 100,000
   deep, a 5000-digit number, not an object, bad base64), the wrong content type, and 8 senders that stop half
   way (the server's 408 comes after 30 s). A client told 503 comes back after its Retry-After (jittered, at
   most 5 s, 20 tries in all). Meanwhile another process probes ``/v1/health`` on a new connection every 100 ms
   and the server's RSS is sampled every 100 ms. The bar: no 500, no dropped connection (a reset or a close
   before a complete answer), every good request answered 200 or finally told 503, every bad one its 4xx (or
   503) with a JSON error, every health probe 200 within 1 s with no gap over 1.1 s, and the peak RSS under
   2 x (idle + one full batch);
6. records every answer: server errors (5xx) must be 0, every bad request must get its 4xx (413 over the
   limit, 415 for the content type, 422 for undecodable images), connection failures must be 0;
   latency p50/p90/p99 of the good requests, throughput in images/s, and the server's batching counters;
7. stops the server, then measures the offline engine on the same photos in this process (no HTTP):
   decoding (``load_rgb_bytes`` + ``preprocess_image``, one thread) and ``OnnxModel.run`` in batches of 32
   with the server's thread count and with every core, as images/s of decode + compute;
8. writes ``benchmarks/results/serve_load.json`` and ``.md`` (``--out``), and exits non-zero when a check fails.

The machine is shared with other work: the 1-minute load average before and after is recorded with the figures
(for the whole run and for the hostile phase), and the CPU seconds the server and the client used in that phase.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import random
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("TRANSFERKIT_DATASETS") or REPO.parent / "shared" / "datasets")
BAD_KINDS = {"not_an_image": 422, "truncated_jpeg": 422, "decompression_bomb": 422, "oversized": 413,
             "wrong_content_type": 415, "bad_base64": 422}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--run", type=Path, default=REPO / "benchmarks" / "runs" / "serve_hymenoptera")
    parser.add_argument("--images", type=Path, default=DATASETS / "hymenoptera" / "val")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--bad-fraction", type=float, default=0.1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--max-upload-mb", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hostile-requests", type=int, default=1500, help="requests of the hostile mix (0: none)")
    parser.add_argument("--hostile-concurrency", type=int, default=256)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serve_load.json")
    return parser.parse_args()


def ensure_run(run: Path) -> Path:
    if (run / "model.safetensors").is_file():
        return run
    data = DATASETS / "hymenoptera"
    if not data.is_dir():
        sys.exit(f"no run at {run} and no {data} to train one on; pass --run RUN (a `transferkit train` output)")
    import transferkit as tk

    print(f"training {run} (feature extraction on {data}) ...", flush=True)
    return tk.train(data, strategy="feature-extraction", out=str(run), quiet=True).run_dir


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * (width * 3 + 1) * 4, 9)) + chunk(b"IEND", b""))


def bad_request(kind: str, photo: bytes, limit: int) -> dict[str, Any]:
    """httpx keyword arguments of one bad request of ``kind``."""
    if kind == "not_an_image":
        return {"files": {"file": ("notes.jpg", b"this is a text file, not a photo\n" * 20, "image/jpeg")}}
    if kind == "truncated_jpeg":
        return {"files": {"file": ("cut.jpg", photo[: len(photo) * 2 // 5], "image/jpeg")}}
    if kind == "decompression_bomb":
        return {"files": {"file": ("bomb.png", BOMB, "image/png")}}
    if kind == "oversized":
        return {"files": {"file": ("huge.jpg", OVERSIZED, "image/jpeg")}}
    if kind == "wrong_content_type":
        return {"content": photo, "headers": {"content-type": "image/jpeg"}}
    if kind == "bad_base64":
        return {"json": {"images": [{"name": "x.jpg", "data": "this is not base64!"}]}}
    raise ValueError(kind)


BOMB = bomb_png()
OVERSIZED = b""


def server_pids(pid: int) -> list[int]:
    """The server and its worker processes (children, recursively)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                text = Path(f"/proc/{current}/task/{task}/children").read_text().split()
                todo.extend(int(x) for x in text)
        except OSError:
            pass
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the server process and its children so far (/proc/PID/stat)."""
    total = 0
    for p in server_pids(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    total = 0
    for p in server_pids(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        total += int(status.split("VmRSS:")[1].split()[0])
    return total / 1024


class MemorySampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.samples, self.stop = pid, every, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.monotonic(), rss_mb(self.pid)))
            self.stop.wait(self.every)


def start_server(args: argparse.Namespace, run: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "transferkit.cli", "serve", str(run), "--port", str(port), "--workers",
               str(args.workers), "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
               "--max-upload-mb", str(args.max_upload_mb)]
    log = log_path.open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if process.poll() is not None:
            sys.exit(f"the server exited ({process.returncode}):\n{log_path.read_text()}")
        try:
            if httpx.get(url + "/v1/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.terminate()
            sys.exit(f"the server did not answer within 300 s:\n{log_path.read_text()}")
        time.sleep(0.5)


def plan(args: argparse.Namespace, photos: list[tuple[str, bytes]]) -> list[tuple[str, Any]]:
    """The requests, in order: ("good", [(name, bytes), ...]) or (bad kind, None)."""
    rng = random.Random(args.seed)
    kinds, good_count, requests = list(BAD_KINDS), 0, []
    for _ in range(args.requests):
        if rng.random() < args.bad_fraction:
            requests.append((kinds[(len(requests) - good_count) % len(kinds)], None))
            continue
        good_count += 1
        n = 4 if good_count % 5 == 0 else 1
        requests.append(("good", [photos[rng.randrange(len(photos))] for _ in range(n)]))
    return requests


async def send_all(url: str, requests: list[tuple[str, Any]], concurrency: int, photo: bytes, limit: int,
                   on_half: Any) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = [None] * len(requests)  # type: ignore[list-item]
    position = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def worker() -> None:
            nonlocal position
            while position < len(requests):
                index = position
                position += 1
                if index == len(requests) // 2:
                    on_half()
                kind, images = requests[index]
                kwargs = ({"files": [("files", (name, data, "image/jpeg")) for name, data in images]}
                          if kind == "good" else bad_request(kind, photo, limit))
                started = time.perf_counter()
                record: dict[str, Any] = {"kind": kind, "images": len(images) if images else 0}
                try:
                    answer = await client.post("/v1/predict", **kwargs)
                    record["status"] = answer.status_code
                    body = answer.json()
                    record["json_error"] = isinstance(body, dict) and isinstance(body.get("error"), str)
                    if kind == "good" and answer.status_code == 200:
                        record["predicted"] = sum("predictions" in row for row in body["results"])
                except (httpx.HTTPError, json.JSONDecodeError) as exc:
                    record["status"] = None
                    record["failure"] = f"{type(exc).__name__}: {exc}"
                record["latency_s"] = time.perf_counter() - started
                records[index] = record

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def offline(run: Path, photos: list[tuple[str, bytes]], threads_list: list[int], batch: int = 32) -> dict[str, Any]:
    """The engine without HTTP on the same photos: decode (one thread) + OnnxModel.run in batches."""
    import numpy as np

    from transferkit.data.decode import load_rgb_bytes
    from transferkit.data.transforms import resize_size
    from transferkit.export.deploy import run_engine
    from transferkit.export.onnx import OnnxModel, preprocess_image
    from transferkit.export.runfiles import load_run

    loaded = load_run(run)
    path = run_engine(loaded).path
    spec, draft = loaded.spec, resize_size(loaded.spec)
    decode = lambda: np.stack([preprocess_image(load_rgb_bytes(d, n, draft), spec) for n, d in photos])  # noqa: E731
    decode()  # warm-up
    started = time.perf_counter()
    images = decode()
    decode_s = time.perf_counter() - started
    out: dict[str, Any] = {"images": len(photos), "batch": batch, "decode_s": round(decode_s, 3),
                           "decode_images_per_s": round(len(photos) / decode_s, 1), "by_threads": {}}
    for threads in threads_list:
        model = OnnxModel(path, threads=threads)
        model.run(images[:batch])
        best = float("inf")
        for _ in range(2):
            started = time.perf_counter()
            for i in range(0, len(images), batch):
                model.run(images[i:i + batch])
            best = min(best, time.perf_counter() - started)
        out["by_threads"][str(threads)] = {
            "compute_s": round(best, 3), "compute_images_per_s": round(len(images) / best, 1),
            "decode_plus_compute_images_per_s": round(len(images) / (decode_s + best), 1)}
    return out


def summarise(args: argparse.Namespace, records: list[dict[str, Any]], wall_s: float, memory: dict[str, Any],
              health: dict[str, Any], settings_line: str) -> dict[str, Any]:
    good = [r for r in records if r["kind"] == "good"]
    bad = [r for r in records if r["kind"] != "good"]
    latencies = [r["latency_s"] * 1000 for r in good if r.get("status") == 200]
    images_done = sum(r.get("predicted", 0) for r in good)
    by_kind = {}
    for kind, expected in BAD_KINDS.items():
        rows = [r for r in bad if r["kind"] == kind]
        statuses: dict[str, int] = {}
        for r in rows:
            statuses[str(r.get("status"))] = statuses.get(str(r.get("status")), 0) + 1
        by_kind[kind] = {"sent": len(rows), "expected_status": expected, "statuses": statuses,
                         "json_errors": sum(bool(r.get("json_error")) for r in rows)}
    checks = {
        "no_server_errors": sum(1 for r in records if (r.get("status") or 0) >= 500) == 0,
        "no_connection_failures": all(r.get("status") is not None for r in records),
        "every_good_request_200": all(r.get("status") == 200 for r in good),
        "every_bad_request_its_4xx": all(r.get("status") == BAD_KINDS[r["kind"]] for r in bad),
        "every_refusal_has_a_json_error": all(r.get("json_error") for r in bad),
        "memory_flat": memory["growth_mb_start_to_end"] <= 64 and memory["growth_mb_middle_to_end"] <= 32,
    }
    return {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "server": settings_line,
        "requests": len(records), "good_requests": len(good), "bad_requests": len(bad),
        "images_predicted": images_done,
        "wall_s": round(wall_s, 2),
        "throughput_images_per_s": round(images_done / wall_s, 1),
        "throughput_requests_per_s": round(len(records) / wall_s, 1),
        "latency_ms_good": {"p50": round(percentile(latencies, 50), 1), "p90": round(percentile(latencies, 90), 1),
                            "p99": round(percentile(latencies, 99), 1), "max": round(max(latencies), 1),
                            "mean": round(statistics.mean(latencies), 1)},
        "server_errors_5xx": sum(1 for r in records if (r.get("status") or 0) >= 500),
        "connection_failures": [r.get("failure") for r in records if r.get("status") is None][:10],
        "bad_by_kind": by_kind,
        "memory_mb": memory,
        "batching": health.get("batching", {}),
        "checks": checks,
        "passed": all(checks.values()),
    }


# ---------------------------------------------------------------------------------------------------------------
# The hostile mix (issue 25): concurrency 256, bodies from 1 KB to the upload limit, header bombs, truncated files,
# slow and stalled senders, bad JSON; a raw HTTP/1.1 client (one connection per request, so a reset or a missing
# answer is seen as such), a /v1/health probe every 100 ms on its own connections, RSS sampled every 100 ms.

GOOD_KINDS = ("good", "good_json", "good_slow", "good_padded")  # each must be answered 200 or told 503
# bad kind -> the statuses that answer it correctly (503: refused at admission, before its body was read)
HOSTILE_BAD = {"garbage_body": {422}, "oversized": {413}, "png16_bomb": {422}, "rgba_bomb": {422},
               "png16_bombs_64": {422, 413}, "truncated_jpeg": {422}, "truncated_png": {422},
               "json_malformed": {400}, "json_top_k_1e400": {422}, "json_infinity": {400}, "json_deep": {400},
               "json_5000_digits": {400}, "json_not_object": {422}, "bad_base64": {422}, "wrong_content_type": {415},
               "too_many_files": {413}, "stalled_sender": {408}}
HOSTILE_WEIGHTS = {"good": 40, "good_json": 4, "good_slow": 4, "good_padded": 8, "garbage_body": 8, "oversized": 2,
                   "png16_bomb": 4, "rgba_bomb": 4, "png16_bombs_64": 1, "truncated_jpeg": 3, "truncated_png": 2,
                   "json_malformed": 2, "json_top_k_1e400": 2, "json_infinity": 2, "json_deep": 1,
                   "json_5000_digits": 1, "json_not_object": 1, "bad_base64": 2, "wrong_content_type": 2,
                   "too_many_files": 1}
STALLED_SENDERS = 8  # bodies that stop half way and wait for the server's 408 (BODY_IDLE_SECONDS, 30 s)
HEALTH_EVERY_S = 0.1
MAX_ATTEMPTS = 20  # a client told 503 retries after Retry-After (jittered, capped at RETRY_CAP_S), 20 tries in all
RETRY_CAP_S = 5.0


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def zero_png(side: int, bit_depth: int, colour_type: int) -> bytes:
    """An all-zero PNG of side x side (0: grey, 6: RGBA), built in ~0.1 s: one block of rows compressed with a full
    flush is repeated, the Adler-32 computed over the whole (as tests/unit/serve/test_serve_hostile.py does)."""
    channels = {0: 1, 2: 3, 6: 4}[colour_type]
    row = b"\x00" * (1 + side * channels * bit_depth // 8)
    per_block = max(1, min(side, (1 << 20) // len(row)))
    blocks, tail = divmod(side, per_block)
    block = row * per_block
    compressor = zlib.compressobj(9)
    head = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    body = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH) if blocks > 1 else b""
    end = compressor.compress(row * tail) + compressor.flush()
    checksum = 1
    for _ in range(blocks):
        checksum = zlib.adler32(block, checksum)
    checksum = zlib.adler32(row * tail, checksum)
    stream = head + body * max(0, blocks - 1) + end[:-4] + struct.pack(">I", checksum)
    header = struct.pack(">IIBBBBB", side, side, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", stream) + _png_chunk(b"IEND", b"")


def multipart(files: list[tuple[str, bytes]], field: str = "files") -> tuple[bytes, str]:
    boundary = "transferkit-hostile-" + os.urandom(8).hex()
    out = bytearray()
    for name, data in files:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


class Payloads:
    """The hostile bodies, built once (the client must not spend the cores the server needs on building them)."""

    def __init__(self, photos: list[tuple[str, bytes]], limit: int, seed: int) -> None:
        from PIL import Image
        import io

        rng = random.Random(seed)
        self.photos, self.limit = photos, limit
        self.png16 = zero_png(9400, 16, 0)
        self.rgba = zero_png(9400, 8, 6)
        name, photo = photos[0]
        buffer = io.BytesIO()
        Image.open(io.BytesIO(photo)).convert("RGB").save(buffer, "PNG")
        self.photo_png = buffer.getvalue()
        self.photo = photo
        # body sizes log-uniform from 1 KB to the upload limit (less the multipart envelope): 12 sizes, reused
        room = limit - 4096
        self.sizes = [int(1024 * (room / 1024) ** (i / 11)) for i in range(12)]
        self.garbage = {size: rng.randbytes(size) for size in self.sizes}
        self.padded = {size: photo + b"\0" * (size - len(photo)) for size in self.sizes if size > len(photo)}
        self.oversized = rng.randbytes(limit + 2 ** 20)
        self._cache: dict[Any, tuple[bytes, str, Any]] = {}

    def request(self, kind: str, index: int, rng: random.Random) -> tuple[bytes, str, Any]:
        """(body, content type, the number of images a good kind carries) of one request; bodies are built once."""
        photo, size = rng.randrange(len(self.photos)), rng.randrange(len(self.sizes))
        key = ((kind, index % 5 == 0, photo) if kind == "good" else (kind, photo) if kind in ("good_slow", "good_json")
               else (kind, size) if kind in ("good_padded", "garbage_body") else (kind,))
        if key not in self._cache:
            self._cache[key] = self._build(kind, index, random.Random(repr(key)))
        return self._cache[key]

    def _build(self, kind: str, index: int, rng: random.Random) -> tuple[bytes, str, Any]:
        photos = self.photos
        pick = lambda: photos[rng.randrange(len(photos))]  # noqa: E731
        if kind == "good":
            files = [pick() for _ in range(4 if index % 5 == 0 else 1)]
            return (*multipart(files), len(files))
        if kind in ("good_slow", "stalled_sender"):
            return (*multipart([pick()]), 1)
        if kind == "good_json":
            name, data = pick()
            return json.dumps({"images": [{"name": name, "data": base64.b64encode(data).decode()}]}).encode(), "application/json", 1
        if kind == "good_padded":
            size = rng.choice(list(self.padded))
            return (*multipart([("padded.jpg", self.padded[size])]), 1)
        if kind == "garbage_body":
            return (*multipart([("noise.jpg", self.garbage[rng.choice(self.sizes)])]), 0)
        if kind == "oversized":
            return (*multipart([("huge.jpg", self.oversized)]), 0)
        if kind == "png16_bomb":
            return (*multipart([("zero16.png", self.png16)]), 0)
        if kind == "rgba_bomb":
            return (*multipart([("rgba.png", self.rgba)]), 0)
        if kind == "png16_bombs_64":
            return (*multipart([(f"zero16-{i}.png", self.png16) for i in range(64)]), 0)
        if kind == "truncated_jpeg":
            return (*multipart([("cut.jpg", self.photo[: len(self.photo) // 2])]), 0)
        if kind == "truncated_png":
            return (*multipart([("cut.png", self.photo_png[: len(self.photo_png) // 2])]), 0)
        if kind == "too_many_files":
            return (*multipart([(f"{i}.jpg", b"x" * 100) for i in range(65)]), 0)
        b64 = base64.b64encode(self.photo).decode()
        bodies = {"json_malformed": b'{"images": [{"name": "a.jpg", "data": "',
                  "json_top_k_1e400": ('{"images": [{"name": "a.jpg", "data": "%s"}], "top_k": 1e400}' % b64).encode(),
                  "json_infinity": ('{"images": [{"name": "a.jpg", "data": "%s"}], "top_k": Infinity}' % b64).encode(),
                  "json_deep": b"[" * 100000 + b"]" * 100000,
                  "json_5000_digits": ('{"images": [{"name": "a.jpg", "data": "%s"}], "top_k": %s}' % (b64, "9" * 5000)).encode(),
                  "json_not_object": b"[1, 2, 3]",
                  "bad_base64": b'{"images": [{"name": "x.jpg", "data": "this is not base64!"}]}'}
        if kind in bodies:
            return bodies[kind], "application/json", 0
        if kind == "wrong_content_type":
            return self.photo, "image/jpeg", 0
        raise ValueError(kind)


def hostile_plan(n: int, seed: int) -> list[str]:
    """The kinds of ``n`` requests in a fixed random order, the stalled senders among the first tenth."""
    rng = random.Random(seed + 1)
    kinds = rng.choices(list(HOSTILE_WEIGHTS), weights=list(HOSTILE_WEIGHTS.values()), k=n)
    for i in range(STALLED_SENDERS):
        kinds.insert(rng.randrange(max(1, n // 10)), "stalled_sender")
    return kinds


def parse_response(data: bytes) -> dict[str, Any] | None:
    """The status, Retry-After and JSON of a complete HTTP/1.1 response at the start of ``data``, or None."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    if len(rest) < length:
        return None
    record: dict[str, Any] = {"status": int(lines[0].split()[1]), "retry_after": headers.get("retry-after")}
    try:
        parsed = json.loads(rest[:length])
        record["json_error"] = isinstance(parsed, dict) and isinstance(parsed.get("error"), str)
        if record["status"] == 200 and isinstance(parsed, dict):
            record["predicted"] = sum("predictions" in row for row in parsed.get("results", []))
            record["health"] = parsed
    except ValueError:
        record["json_error"] = False
    return record


async def http_call(host: str, port: int, method: str, path: str, body: bytes = b"", content_type: str | None = None,
                    *, chunks: int = 1, pause_s: float = 0.0, stall_after: int | None = None,
                    timeout: float = 120.0) -> dict[str, Any]:
    """One request on its own keep-alive connection (as curl sends one), closed after the answer: the status, the
    JSON error, seconds. The body is sent while the answer is awaited, so an early answer (503, 413) is read even
    when the server stops reading; ``status`` None when no complete answer reached the client (a reset before it,
    the connection closed without one, or no answer in ``timeout``): a dropped connection."""
    started = time.perf_counter()
    received = bytearray()
    record: dict[str, Any] | None = None
    failure = ""
    writer = reader = None
    sending = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
        if method == "POST":
            head += [f"Content-Length: {len(body)}"] + ([f"Content-Type: {content_type}"] if content_type else [])
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())

        async def upload() -> None:
            end = len(body) if stall_after is None else stall_after
            step = max(1, -(-end // chunks)) if chunks > 1 else 256 * 1024
            for at in range(0, end, step):
                writer.write(body[at:min(at + step, end)])
                await writer.drain()
                if pause_s:
                    await asyncio.sleep(pause_s)
            if stall_after is not None:
                await asyncio.sleep(3600)  # a stalled sender: the rest never comes

        sending = asyncio.ensure_future(upload())

        async def answer() -> dict[str, Any]:
            while True:
                chunk = await reader.read(65536)
                received.extend(chunk)
                parsed = parse_response(bytes(received))
                if parsed is not None:
                    return parsed
                if not chunk:
                    raise ConnectionError(f"closed after {len(received)} bytes, before a complete answer")

        record = await asyncio.wait_for(answer(), timeout)
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, ValueError, IndexError) as exc:
        failure = f"{type(exc).__name__}: {exc}"
        if reader is not None:  # a failed write poisons the reader: read what had already arrived
            record = parse_response(bytes(received) + bytes(getattr(reader, "_buffer", b"")))
    finally:
        if sending is not None:
            sending.cancel()
            try:
                await sending
            except (asyncio.CancelledError, OSError):
                pass  # the server answered (and may have stopped reading) before the whole body was sent
        if writer is not None:
            writer.close()
    if record is None:
        record = {"status": None, "failure": failure or "no answer"}
    record["latency_s"] = time.perf_counter() - started
    return record


async def hostile_load(host: str, port: int, kinds: list[str], payloads: Payloads, concurrency: int,
                       seed: int) -> tuple[list[dict[str, Any]], float]:
    """Send the plan at ``concurrency`` (one connection per request). (records, wall seconds)"""
    rng = random.Random(seed + 2)
    records: list[dict[str, Any]] = [None] * len(kinds)  # type: ignore[list-item]
    position = 0

    async def worker() -> None:
        nonlocal position
        while position < len(kinds):
            index = position
            position += 1
            kind = kinds[index]
            body, content_type, images = payloads.request(kind, index, rng)
            options: dict[str, Any] = {}
            if kind == "good_slow":  # ten pieces a quarter of a second apart: ~2.5 s for one photo
                options = {"chunks": 10, "pause_s": 0.25}
            elif kind == "stalled_sender":
                options = {"stall_after": len(body) // 2}
            first, refused = time.perf_counter(), 0
            while True:  # a client told 503 comes back after Retry-After (at most MAX_ATTEMPTS times in all)
                record = await http_call(host, port, "POST", "/v1/predict", body, content_type, **options)
                if record.get("status") != 503 or refused + 1 >= MAX_ATTEMPTS:
                    break
                refused += 1
                wait = min(RETRY_CAP_S, float(record.get("retry_after") or 1))
                await asyncio.sleep(wait * (0.5 + rng.random()))  # jittered, as a well-behaved client would
            record.update(kind=kind, images=images, bytes=len(body), refused_503=refused,
                          total_s=time.perf_counter() - first)
            records[index] = record

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records, time.perf_counter() - started


def probe_health(host: str, port: int, stop: Any, results: Any) -> None:
    """In its own process (the load's client must not delay the probe): GET /v1/health on a new connection every
    100 ms until ``stop`` is set; each probe's start, status and seconds go to ``results`` at the end."""
    import http.client

    probes = []
    while not stop.is_set():
        started = time.perf_counter()
        try:
            connection = http.client.HTTPConnection(host, port, timeout=10)
            connection.request("GET", "/v1/health")
            answer = connection.getresponse()
            body = answer.read()
            status = answer.status
            connection.close()
        except (OSError, http.client.HTTPException):
            status, body = None, b""
        took = time.perf_counter() - started
        try:
            admission = json.loads(body).get("admission", {}) if status == 200 else {}
        except ValueError:
            admission = {}
        probes.append({"at": started, "status": status, "latency_s": took, "in_flight": admission.get("in_flight"),
                       "waiting_images": admission.get("waiting_images")})
        stop.wait(max(0.0, HEALTH_EVERY_S - took))
    results.send(probes)


def hostile_summary(records: list[dict[str, Any]], probes: list[dict[str, Any]], wall_s: float,
                    memory: dict[str, Any]) -> dict[str, Any]:
    """The hostile phase's figures and the bar's checks (pure: tests/unit/test_serve_load_bar.py)."""
    by_kind: dict[str, dict[str, Any]] = {}
    for r in records:
        row = by_kind.setdefault(r["kind"], {"sent": 0, "statuses": {}, "expected": sorted(
            HOSTILE_BAD.get(r["kind"], {200}) | {503})})
        row["sent"] += 1
        key = str(r.get("status"))
        row["statuses"][key] = row["statuses"].get(key, 0) + 1
    order = list(HOSTILE_WEIGHTS) + ["stalled_sender"]
    by_kind = dict(sorted(by_kind.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)))
    good = [r for r in records if r["kind"] in GOOD_KINDS]
    plain = [r["latency_s"] * 1000 for r in good if r["kind"] == "good" and r.get("status") == 200]
    all_good = [r["latency_s"] * 1000 for r in good if r.get("status") == 200]
    status_counts: dict[str, int] = {}
    for r in records:
        status_counts[str(r.get("status"))] = status_counts.get(str(r.get("status")), 0) + 1
    health_latencies = [p["latency_s"] for p in probes]
    gaps = [b["at"] - a["at"] for a, b in zip(probes, probes[1:])]
    images = sum(r.get("predicted", 0) for r in good)
    lat = lambda values: ({"p50": round(percentile(values, 50), 1), "p99": round(percentile(values, 99), 1),  # noqa: E731
                           "max": round(max(values), 1), "n": len(values)} if values else None)
    checks = {
        "no_500": not any((r.get("status") or 0) >= 500 and r.get("status") != 503 for r in records),
        "no_dropped_connections": all(r.get("status") is not None for r in records),
        "every_good_request_200_or_503": all(r.get("status") in (200, 503) for r in good),
        "every_bad_request_its_4xx_or_503": all(r.get("status") in HOSTILE_BAD[r["kind"]] | {503}
                                                for r in records if r["kind"] not in GOOD_KINDS),
        "every_refusal_has_a_json_error": all(r.get("json_error") for r in records
                                              if r.get("status") is not None and r["status"] != 200),
        "health_within_1s_throughout": bool(probes) and all(p["status"] == 200 for p in probes)
                                       and max(health_latencies) < 1.0 and max(gaps, default=0.0) < 1.0 + HEALTH_EVERY_S,
        "peak_rss_under_bar": memory["peak"] < memory["bar"],
        "some_good_request_answered": images > 0,
    }
    return {
        "requests": len(records), "good_requests": len(good), "bad_requests": len(records) - len(good),
        "wall_s": round(wall_s, 2), "images_predicted": images,
        "throughput_images_per_s": round(images / wall_s, 1), "throughput_requests_per_s": round(len(records) / wall_s, 1),
        "latency_ms_good": lat(plain), "latency_ms_all_good_kinds": lat(all_good),
        "time_to_200_ms_good": lat([r["total_s"] * 1000 for r in good if r["kind"] == "good" and r.get("status") == 200
                                    and "total_s" in r]),
        "status_counts": dict(sorted(status_counts.items())),
        "count_4xx": sum(n for s, n in status_counts.items() if s.isdigit() and 400 <= int(s) < 500),
        "count_503": status_counts.get("503", 0) + sum(r.get("refused_503", 0) for r in records),
        "final_503": status_counts.get("503", 0),
        "retried_after_503": sum(r.get("refused_503", 0) for r in records),
        "attempts": len(records) + sum(r.get("refused_503", 0) for r in records),
        "count_500": sum(n for s, n in status_counts.items() if s.isdigit() and int(s) >= 500 and s != "503"),
        "dropped_connections": sum(r.get("status") is None for r in records),
        "failures": [f"{r['kind']}: {r['failure']}" for r in records if r.get("status") is None][:10],
        "good_answered_200": sum(r.get("status") == 200 for r in good),
        "good_told_503": sum(r.get("status") == 503 for r in good),
        "by_kind": by_kind,
        "health": {"slowest": sorted(({"at_s": round(p["at"] - probes[0]["at"], 2), "latency_s": round(p["latency_s"], 3),
                                       "status": p["status"]} for p in probes), key=lambda p: -p["latency_s"])[:5],
                   "probes": len(probes), "every_s": HEALTH_EVERY_S, "max_latency_s": round(max(health_latencies), 3)
                   if probes else None, "p99_latency_s": round(percentile(health_latencies, 99), 3) if probes else None,
                   "max_gap_s": round(max(gaps, default=0.0), 3),
                   "not_200": sum(p["status"] != 200 for p in probes)},
        "memory_mb": memory,
        "checks": checks,
        "passed": all(checks.values()),
    }


def write_markdown(result: dict[str, Any], path: Path) -> None:
    lat, mem, off = result["latency_ms_good"], result["memory_mb"], result["offline"]
    server_threads = str(result["server_threads"])
    lines = [
        "# `transferkit serve` under load", "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']['cores']} CPU cores, shared with other work (1-min load average "
        f"{result['machine']['load_before']:.2f} before, {result['machine']['load_after']:.2f} after); "
        f"run: {result['run']['backbone']} at {result['run']['input_size']} px, classes {', '.join(result['run']['classes'])}.", "",
        f"Server: {result['server']}", "",
        "| figure | value |", "|---|---|",
        f"| requests (good / bad) | {result['requests']} ({result['good_requests']} / {result['bad_requests']}), "
        f"concurrency {result['settings']['concurrency']} |",
        f"| images predicted | {result['images_predicted']} in {result['wall_s']} s |",
        f"| throughput | **{result['throughput_images_per_s']} images/s** ({result['throughput_requests_per_s']} requests/s) |",
        f"| latency of good requests (ms) | p50 {lat['p50']}, p90 {lat['p90']}, p99 {lat['p99']}, max {lat['max']} |",
        f"| server errors (5xx) | {result['server_errors_5xx']} |",
        f"| connection failures | {len(result['connection_failures'])} |",
        f"| server memory (RSS, MB) | start {mem['start']:.0f}, middle {mem['middle']:.0f}, end {mem['end']:.0f}, "
        f"peak {mem['peak']:.0f} (start to end {mem['growth_mb_start_to_end']:+.0f}, middle to end {mem['growth_mb_middle_to_end']:+.0f}) |",
        f"| batching | {result['batching'].get('batches')} ONNX Runtime calls for {result['batching'].get('images')} images "
        f"(mean batch {result['batching'].get('mean_batch')}, largest {result['batching'].get('largest_batch')}) |",
        f"| offline engine, same photos, {server_threads} thread(s) like the server | "
        f"{off['by_threads'][server_threads]['decode_plus_compute_images_per_s']} images/s decode + compute "
        f"(decode alone {off['decode_images_per_s']}, compute alone {off['by_threads'][server_threads]['compute_images_per_s']}) |",
    ]
    for threads, row in off["by_threads"].items():
        if threads != server_threads:
            lines.append(f"| offline engine, {threads} threads (every core) | {row['decode_plus_compute_images_per_s']} "
                         f"images/s decode + compute (compute alone {row['compute_images_per_s']}) |")
    lines += ["", "Bad requests (each must get its 4xx with a JSON error):", "",
              "| kind | sent | expected | answered |", "|---|---|---|---|"]
    for kind, row in result["bad_by_kind"].items():
        answered = ", ".join(f"{status}: {n}" for status, n in row["statuses"].items())
        lines.append(f"| {kind.replace('_', ' ')} | {row['sent']} | {row['expected_status']} | {answered} |")
    lines += ["", "Checks: " + ", ".join(f"{k.replace('_', ' ')} {'yes' if v else 'NO'}" for k, v in result["checks"].items()),
              "", "Notes: the client ran on the same cores as the server, and other engineers' jobs shared them "
              "(see the load averages), so the absolute figures are lower bounds for an idle machine. The offline "
              "engine decodes and then computes, one after the other, in one process, right after the load test; "
              "the server overlaps the two (its decoding thread feeds its ONNX Runtime thread), so it can pass that "
              "sequential rate, and its ceiling here is about the slower of decode alone and compute alone. The "
              "batching counters include the warm-up requests. Latency is the client's, from sending the request "
              f"to the parsed answer, at {result['settings']['concurrency']} requests in flight (mostly waiting in "
              "the queue).", ""]
    if "hostile" in result:
        lines += hostile_markdown(result["hostile"], result["memory_baseline_mb"])
    path.write_text("\n".join(lines), encoding="utf-8")


def hostile_markdown(h: dict[str, Any], base: dict[str, Any]) -> list[str]:
    lat, t200, mem, health = h["latency_ms_good"] or {}, h["time_to_200_ms_good"] or {}, h["memory_mb"], h["health"]
    s = h["settings"]
    lines = [
        "", f"## Hostile mix: {s['requests']} requests at concurrency {s['concurrency']}", "",
        f"Load average (1 min) {h['load_average_1min']['before']:.2f} before, {h['load_average_1min']['after']:.2f} after "
        f"the phase; CPU seconds in it: server {h['cpu_s']['server']}, client {h['cpu_s']['client']}, over "
        f"{h['cpu_s']['wall']} s of wall time on the shared cores.", "",
        "| figure | value |", "|---|---|",
        f"| requests (good / bad), attempts | {h['requests']} ({h['good_requests']} / {h['bad_requests']}), "
        f"{h['attempts']} attempts (a client told 503 retries after Retry-After, up to {MAX_ATTEMPTS} tries) |",
        f"| throughput | **{h['throughput_images_per_s']} images/s** ({h['images_predicted']} images in {h['wall_s']} s) |",
        f"| latency of good requests (answered attempt, ms) | p50 {lat.get('p50')}, p99 {lat.get('p99')}, max {lat.get('max')} |",
        f"| time to a 200, retries included (ms) | p50 {t200.get('p50')}, p99 {t200.get('p99')} |",
        f"| good requests answered 200 / finally told 503 | {h['good_answered_200']} / {h['good_told_503']} |",
        f"| 4xx answers / 503 answers (every attempt) | {h['count_4xx']} / {h['count_503']} |",
        f"| 500s / dropped connections | {h['count_500']} / {h['dropped_connections']} |",
        f"| health probes (GET on v1/health) every {health['every_s']} s | {health['probes']} probes, max {health['max_latency_s']:.3f} s, "
        f"p99 {health['p99_latency_s']:.3f} s, not 200: {health['not_200']} |",
        f"| peak RSS vs bar (MB) | **{mem['peak']:.0f}** vs {mem['bar']:.0f} = 2 x (idle {mem['idle']:.0f} + one full batch "
        f"{mem['full_batch']:.0f}) |", "",
        f"How the bar's terms were measured: {base['how']} ({base['full_batch_images']} photos, {base['full_batch_body_mb']} MB of body).", "",
        "| kind | sent | correct answers | answered (final status: count) |", "|---|---|---|---|"]
    for kind, row in h["by_kind"].items():
        answered = ", ".join(f"{status}: {n}" for status, n in sorted(row["statuses"].items()))
        lines.append(f"| {kind.replace('_', ' ')} | {row['sent']} | {', '.join(map(str, row['expected']))} | {answered} |")
    lines += ["", "Bar (issue 25): " + ", ".join(f"{k.replace('_', ' ')} {'yes' if v else 'NO'}" for k, v in h["checks"].items()), ""]
    return lines


def full_batch_memory(pid: int, url: str, batch: list[tuple[str, bytes]]) -> dict[str, Any]:
    """The idle server's RSS (after it answers /v1/health, before any prediction: the max of 10 samples over 1 s)
    and one full batch's memory: the growth to the peak RSS (sampled every 20 ms) while the fresh server answers one
    request of --max-batch photos, and the bar of issue 25: 2 x (idle + one full batch)."""
    time.sleep(1.0)
    idle = 0.0
    for _ in range(10):
        idle = max(idle, rss_mb(pid))
        time.sleep(0.1)
    sampler = MemorySampler(pid, every=0.02)
    sampler.start()
    answer = httpx.post(url + "/v1/predict", files=[("files", (n, d, "image/jpeg")) for n, d in batch], timeout=300)
    time.sleep(0.3)
    sampler.stop.set()
    sampler.join()
    if answer.status_code != 200:
        sys.exit(f"the full-batch request was answered {answer.status_code}: {answer.text[:500]}")
    peak = max(v for _, v in sampler.samples)
    return {"idle": round(idle, 1), "full_batch_images": len(batch), "full_batch_body_mb": round(
        sum(len(d) for _, d in batch) / 2 ** 20, 2), "peak_during_full_batch": round(peak, 1),
        "full_batch": round(peak - idle, 1), "after_full_batch": round(rss_mb(pid), 1),
        "bar": round(2 * peak, 1), "how": (
            "idle: the server's RSS before its first prediction; one full batch: the RSS growth from idle to the peak "
            "(sampled every 20 ms) while it answers its first request, of --max-batch photos (the body, the decoded "
            "images, ONNX Runtime's arena for that batch and what the first call loads); bar = 2 x (idle + one full batch)")}


def run_hostile(args: argparse.Namespace, pid: int, url: str, photos: list[tuple[str, bytes]], limit: int,
                baseline: dict[str, Any]) -> dict[str, Any]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    payloads = Payloads(photos, limit, args.seed)
    kinds = hostile_plan(args.hostile_requests, args.seed)
    print(f"hostile mix: {len(kinds)} requests at concurrency {args.hostile_concurrency} ...", flush=True)
    sampler = MemorySampler(pid, every=0.1)
    start = rss_mb(pid)
    sampler.start()
    import multiprocessing

    context = multiprocessing.get_context("fork")
    stop, (receiver, sender) = context.Event(), context.Pipe(duplex=False)
    prober = context.Process(target=probe_health, args=(host, int(port), stop, sender), daemon=True)
    load_before = os.getloadavg()[0]
    server_cpu, client_cpu = cpu_seconds(pid), time.process_time()
    prober.start()
    records, wall_s = asyncio.run(hostile_load(host, int(port), kinds, payloads, args.hostile_concurrency, args.seed))
    server_cpu, client_cpu = cpu_seconds(pid) - server_cpu, time.process_time() - client_cpu
    stop.set()
    probes = receiver.recv()
    prober.join(10)
    load_after = os.getloadavg()[0]
    sampler.stop.set()
    sampler.join()
    memory = {"start": round(start, 1), "end": round(rss_mb(pid), 1),
              "peak": round(max(v for _, v in sampler.samples), 1), "samples": len(sampler.samples),
              "idle": baseline["idle"], "full_batch": baseline["full_batch"], "bar": baseline["bar"],
              "source": "VmRSS of the server process and its children from /proc, sampled every 0.1 s"}
    out = hostile_summary(records, probes, wall_s, memory)
    out["settings"] = {"requests": len(kinds), "concurrency": args.hostile_concurrency, "weights": HOSTILE_WEIGHTS,
                       "stalled_senders": STALLED_SENDERS, "body_sizes": payloads.sizes,
                       "png16_bomb_bytes": len(payloads.png16), "rgba_bomb_bytes": len(payloads.rgba)}
    out["load_average_1min"] = {"before": round(load_before, 2), "after": round(load_after, 2)}
    out["cpu_s"] = {"server": round(server_cpu, 1), "client": round(client_cpu, 1), "wall": round(wall_s, 1)}
    in_flight = [p["in_flight"] for p in probes if p.get("in_flight") is not None]
    out["in_flight_seen_by_health"] = {"mean": round(statistics.mean(in_flight), 1), "max": max(in_flight)} if in_flight else None
    return out


def main() -> int:
    global OVERSIZED
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped benchmark still stops its server
    args = parse_args()
    if not args.images.is_dir():
        sys.exit(f"no images at {args.images}; pass --images FOLDER (photos, searched recursively)")
    run = ensure_run(args.run)
    photos = [(p.name, p.read_bytes()) for p in sorted(args.images.rglob("*")) if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    limit = int(args.max_upload_mb * 2 ** 20)
    OVERSIZED = os.urandom(limit + 2 ** 20)
    requests = plan(args, photos)
    load_before = os.getloadavg()[0]
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.with_suffix(".server.log")
    process, url = start_server(args, run, log_path)
    try:
        # the memory bar's terms: the idle server, then one full batch (the first request, of --max-batch photos:
        # its body, the decoded images, ONNX Runtime's arena growing to the largest batch, which it keeps)
        baseline = full_batch_memory(process.pid, url, photos[:args.max_batch])
        # warm-up (not counted): the mix at full concurrency
        warm = plan(argparse.Namespace(**{**vars(args), "requests": 16 * args.concurrency}), photos)
        asyncio.run(send_all(url, warm, args.concurrency, photos[0][1], limit, lambda: None))
        sampler = MemorySampler(process.pid)
        sampler.start()
        time.sleep(0.6)
        marks: dict[str, float] = {"start": rss_mb(process.pid)}
        started = time.perf_counter()
        records = asyncio.run(send_all(url, requests, args.concurrency, photos[0][1], limit,
                                       lambda: marks.__setitem__("middle", rss_mb(process.pid))))
        wall_s = time.perf_counter() - started
        marks["end"] = rss_mb(process.pid)
        sampler.stop.set()
        sampler.join()
        hostile = None
        if args.hostile_requests > 0:
            hostile = run_hostile(args, process.pid, url, photos, limit, baseline)
        health = httpx.get(url + "/v1/health", timeout=10).json()
        metadata = httpx.get(url + "/v1/metadata", timeout=10).json()
        settings_line = " ".join(log_path.read_text().splitlines()[-1].split()) if log_path.read_text() else ""
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    server_log = log_path.read_text()
    memory = {**{k: round(v, 1) for k, v in marks.items()}, "peak": round(max(v for _, v in sampler.samples), 1),
              "samples": len(sampler.samples), "growth_mb_start_to_end": round(marks["end"] - marks["start"], 1),
              "growth_mb_middle_to_end": round(marks["end"] - marks["middle"], 1),
              "source": "VmRSS of the server process and its children from /proc, sampled every 0.5 s"}
    result = summarise(args, records, wall_s, memory, health, settings_line)
    threads_used = int(server_log.split(" ONNX Runtime thread")[0].rsplit("(", 1)[1]) if " ONNX Runtime thread" in server_log else 1
    cores = len(os.sched_getaffinity(0))
    print("measuring the offline engine on the same photos ...", flush=True)
    result["offline"] = offline(run, photos, sorted({threads_used, cores}))
    result["server_threads"] = threads_used
    result["memory_baseline_mb"] = baseline
    if hostile is not None:
        result["hostile"] = hostile
        result["checks"].update({f"hostile_{k}": v for k, v in hostile["checks"].items()})
        result["passed"] = all(result["checks"].values())
    result["command"] = "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])
    from provenance import provenance  # benchmarks/provenance.py (the script's folder is on sys.path)

    result["provenance"] = provenance(__file__)
    result["run"] = {"path": str(run), "backbone": metadata.get("backbone"), "input_size": metadata.get("input_size"),
                     "classes": metadata.get("classes"), "test_accuracy": metadata.get("test_metrics", {}).get("accuracy")}
    result["machine"] = {"cores": cores, "python": platform.python_version(), "load_before": load_before,
                         "load_after": os.getloadavg()[0],
                         "note": "a shared machine: other engineers' jobs ran on the same 2 cores during the run"}
    result["server_log_tail"] = server_log.splitlines()[-8:]
    from transferkit.fileio import portable_paths

    result = portable_paths(result, {"$TRANSFERKIT_DATASETS": DATASETS, "": REPO})  # no path of this machine
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    write_markdown(result, out.with_suffix(".md"))
    log_path.unlink(missing_ok=True)
    print(out.with_suffix(".md").read_text())
    if not result["passed"]:
        print("FAILED checks: " + ", ".join(k for k, v in result["checks"].items() if not v), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
