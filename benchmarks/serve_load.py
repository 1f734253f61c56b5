"""Load test of `transferkit serve` (issue 17): good and bad uploads at once, over real HTTP on loopback.

Command (the recorded numbers came from exactly this)::

    .venv/bin/python benchmarks/serve_load.py                       # 2,000 requests at concurrency 16
    .venv/bin/python benchmarks/serve_load.py --requests 200 --out /tmp/serve_quick.json   # a quick look

What it does, by itself, and then stops:

1. the run: ``--run`` (default ``benchmarks/runs/serve_hymenoptera``, trained first if missing: feature
   extraction on ``../shared/datasets/hymenoptera``, efficientnet_lite0 at 224 px);
2. starts ``transferkit serve RUN`` in a subprocess on a free 127.0.0.1 port and waits for ``/v1/health``;
3. sends ``--requests`` requests from a bounded httpx asyncio client (``--concurrency`` at a time; a warm-up
   first, not counted: one request of ``--max-batch`` images, then 4 x concurrency requests of the mix): good
   ones are real photos of hymenoptera/val (one image per request; every fifth good request carries 4), and
   ``--bad-fraction`` of them are bad, in turn: not an image, a truncated JPEG, a decompression bomb (a 1 KB
   PNG declaring 400 megapixels), an upload over the limit, a body with the wrong content type, and JSON
   with bad base64;
4. samples the server's resident memory (``/proc/PID/status`` VmRSS, the server and its worker processes)
   every 0.5 s, and records it at the start (after the warm-up), the middle and the end;
5. records every answer: server errors (5xx) must be 0, every bad request must get its 4xx (413 over the
   limit, 415 for the content type, 422 for undecodable images), connection failures must be 0;
   latency p50/p90/p99 of the good requests, throughput in images/s, and the server's batching counters;
6. stops the server, then measures the offline engine on the same photos in this process (no HTTP):
   decoding (``load_rgb_bytes`` + ``preprocess_image``, one thread) and ``OnnxModel.run`` in batches of 32
   with the server's thread count and with every core, as images/s of decode + compute;
7. writes ``benchmarks/results/serve_load.json`` and ``.md`` (``--out``), and exits non-zero when a check fails.

The machine is shared with other work: the 1-minute load average before and after is recorded with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
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
    path.write_text("\n".join(lines), encoding="utf-8")


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
        # warm-up (not counted): one request of max-batch images (ONNX Runtime's arena grows to the largest batch
        # once and keeps it), then the mix at full concurrency
        warm = [("good", photos[:args.max_batch])] + plan(argparse.Namespace(**{**vars(args), "requests": 4 * args.concurrency}), photos)
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
