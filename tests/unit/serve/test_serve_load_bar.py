"""The hostile load test's own bar logic and payloads (benchmarks/serve_load.py, issue 25), without a server:
a 500, a dropped connection, a good request refused with a 4xx, a slow or failed /v1/health probe, or a peak RSS
at the bar must each fail the run."""

from __future__ import annotations

import importlib.util
import struct
import sys
from typing import Any

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def bench() -> Any:
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("serve_load_under_test", REPO / "benchmarks" / "serve_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _passing() -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    records = [{"kind": "good", "status": 200, "latency_s": 0.5, "predicted": 1, "total_s": 0.5},
               {"kind": "good_json", "status": 503, "latency_s": 0.01, "json_error": True, "refused_503": 19},
               {"kind": "png16_bomb", "status": 422, "latency_s": 0.05, "json_error": True},
               {"kind": "png16_bombs_64", "status": 413, "latency_s": 0.05, "json_error": True},
               {"kind": "stalled_sender", "status": 408, "latency_s": 30.0, "json_error": True},
               {"kind": "json_deep", "status": 503, "latency_s": 0.01, "json_error": True}]
    probes = [{"at": i * 0.1, "status": 200, "latency_s": 0.05} for i in range(20)]
    memory = {"peak": 1500.0, "bar": 2800.0}
    return records, probes, memory


def test_a_clean_run_passes_and_counts_every_503(bench: Any):
    records, probes, memory = _passing()
    out = bench.hostile_summary(records, probes, 10.0, memory)
    assert out["passed"], out["checks"]
    assert out["count_500"] == 0 and out["dropped_connections"] == 0
    assert out["count_503"] == 2 + 19 and out["final_503"] == 2 and out["attempts"] == 6 + 19
    assert out["count_4xx"] == 3 and out["good_answered_200"] == 1 and out["good_told_503"] == 1
    assert out["health"]["max_latency_s"] == 0.05


@pytest.mark.parametrize("spoil, check", [
    (lambda r, p, m: r.append({"kind": "good", "status": 500, "latency_s": 1.0, "json_error": True}), "no_500"),
    (lambda r, p, m: r.append({"kind": "garbage_body", "status": 502, "latency_s": 1.0}), "no_500"),
    (lambda r, p, m: r.append({"kind": "good", "status": None, "latency_s": 1.0, "failure": "reset"}),
     "no_dropped_connections"),
    (lambda r, p, m: r.append({"kind": "good_padded", "status": 413, "latency_s": 1.0, "json_error": True}),
     "every_good_request_200_or_503"),
    (lambda r, p, m: r.append({"kind": "png16_bomb", "status": 200, "latency_s": 1.0}), "every_bad_request_its_4xx_or_503"),
    (lambda r, p, m: r.append({"kind": "oversized", "status": 413, "latency_s": 1.0, "json_error": False}),
     "every_refusal_has_a_json_error"),
    (lambda r, p, m: p.append({"at": 2.1, "status": 200, "latency_s": 1.2}), "health_within_1s_throughout"),
    (lambda r, p, m: p.append({"at": 2.1, "status": 503, "latency_s": 0.01}), "health_within_1s_throughout"),
    (lambda r, p, m: p.append({"at": 9.0, "status": 200, "latency_s": 0.01}), "health_within_1s_throughout"),  # a gap
    (lambda r, p, m: p.clear(), "health_within_1s_throughout"),
    (lambda r, p, m: m.update(peak=2800.0), "peak_rss_under_bar"),
])
def test_each_failure_fails_its_check(bench: Any, spoil: Any, check: str):
    records, probes, memory = _passing()
    spoil(records, probes, memory)
    out = bench.hostile_summary(records, probes, 10.0, memory)
    assert not out["checks"][check] and not out["passed"]
    assert check in [k for k, v in out["checks"].items() if not v]


def test_the_hostile_payloads_are_what_the_issue_names(bench: Any):
    photo = b"\xff\xd8" + bytes(range(256)) * 200 + b"\xff\xd9"  # stands in for a JPEG: never decoded here
    png16, rgba = bench.zero_png(9400, 16, 0), bench.zero_png(9400, 8, 6)
    for png, depth, colour in ((png16, 16, 0), (rgba, 8, 6)):
        width, height, bit_depth, colour_type = struct.unpack(">IIBB", png[16:26])
        assert (width, height, bit_depth, colour_type) == (9400, 9400, depth, colour)
    assert 150_000 < len(png16) < 200_000  # the ~170 KB all-zero 16-bit PNG
    limit = 20 * 2 ** 20
    sizes = [int(1024 * ((limit - 4096) / 1024) ** (i / 11)) for i in range(12)]
    assert sizes[0] == 1024 and sizes[-1] <= limit - 4096
    body, content_type = bench.multipart([("a.jpg", photo)])
    assert content_type.startswith("multipart/form-data; boundary=") and photo in body
    kinds = bench.hostile_plan(200, seed=0)
    assert len(kinds) == 200 + bench.STALLED_SENDERS and kinds.count("stalled_sender") == bench.STALLED_SENDERS
    assert set(kinds) <= set(bench.HOSTILE_WEIGHTS) | {"stalled_sender"}
    assert set(bench.HOSTILE_WEIGHTS) | {"stalled_sender"} == set(bench.GOOD_KINDS) | set(bench.HOSTILE_BAD)


def test_an_early_answer_is_read_and_a_missing_one_is_a_dropped_connection(bench: Any):
    complete = b'HTTP/1.1 503 Service Unavailable\r\ncontent-length: 17\r\nretry-after: 2\r\n\r\n{"error": "busy"}'
    record = bench.parse_response(complete)
    assert record["status"] == 503 and record["retry_after"] == "2" and record["json_error"]
    assert bench.parse_response(complete[:-3]) is None and bench.parse_response(b"HTTP/1.1 200 OK\r\n") is None
