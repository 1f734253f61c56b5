"""`transferkit serve` as a command: its options, the checks made before anything is loaded, the worker
settings and the split of the cores (no run is trained here; the served app is in test_serve_app.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from transferkit.cli import app
from transferkit.errors import ConfigError
from transferkit.serve.server import ServeSettings, check_port, describe, thread_plan, url_of


def test_help_lists_every_option():
    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    for flag in ("--host", "--port", "--workers", "--max-batch", "--max-wait-ms", "--max-upload-mb", "--max-images",
                 "--top-k", "--max-pixels", "--max-request-pixels", "--max-concurrency", "--max-pending"):
        assert flag in result.output, flag


def test_a_port_in_use_is_refused_before_the_run_is_loaded(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", str(tmp_path / "no-run"), "--port", str(port)])
    assert result.exit_code == 2
    assert f"port {port} on 127.0.0.1 is already in use" in result.output and "--port" in result.output


@pytest.mark.parametrize("args, phrase", [(["--workers", "0"], "--workers 0"), (["--max-batch", "0"], "--max-batch 0"),
                                          (["--max-wait-ms", "-1"], "--max-wait-ms"),
                                          (["--max-upload-mb", "0"], "--max-upload-mb"), (["--top-k", "0"], "--top-k 0"),
                                          (["--port", "70000"], "not a TCP port"),
                                          (["--max-pixels", "0"], "--max-pixels 0"),
                                          (["--max-pixels", "1000", "--max-request-pixels", "999"],
                                           "--max-request-pixels 999"),
                                          (["--max-concurrency", "0"], "--max-concurrency 0"),
                                          (["--max-pending", "0"], "--max-pending 0")])
def test_bad_options_are_one_line_errors(tmp_path: Path, args: list[str], phrase: str):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    result = CliRunner().invoke(app, ["serve", str(tmp_path), "--port", str(port), *args])
    assert result.exit_code == 2 and phrase in result.output, result.output


def test_a_missing_run_names_the_folder(tmp_path: Path):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "missing"), "--port", str(port)])
    assert result.exit_code == 2 and "missing" in result.output and "does not exist" in result.output


@pytest.mark.parametrize("workers, cores, expected", [(1, 2, (1, 1)), (1, 8, (6, 2)), (2, 8, (3, 1)), (4, 2, (1, 1)),
                                                      (1, 1, (1, 1))])
def test_threads_per_worker_fit_the_cores(monkeypatch: pytest.MonkeyPatch, workers: int, cores: int,
                                          expected: tuple[int, int]):
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 64)
    threads, decoders = thread_plan(workers, cores=cores)
    assert (threads, decoders) == expected
    assert workers * threads <= max(cores, workers)


def test_settings_survive_the_trip_through_the_environment():
    settings = ServeSettings(run="/r", onnx_path="/r/onnx/m.onnx", spec={"name": "x"}, threads=2, decode_threads=1,
                             max_batch=8, max_wait_ms=2.5, max_upload_bytes=1234567, max_images=4, top_k=2)
    assert ServeSettings.from_json(settings.to_json()) == settings
    lines = describe(settings, "0.0.0.0", 9000, 2)
    assert "http://127.0.0.1:9000/" in lines[0] and "2 worker(s) x (2 ONNX Runtime" in lines[2]


def test_the_cli_defaults_are_the_decoders():
    from transferkit.data.decode import DEFAULT_MAX_PIXELS
    from transferkit.serve import inputs

    assert inputs.DEFAULT_MAX_PIXELS == DEFAULT_MAX_PIXELS  # written out in inputs to keep --help free of numpy
    assert inputs.DEFAULT_MAX_REQUEST_PIXELS >= inputs.DEFAULT_MAX_PIXELS


def test_urls_for_hosts():
    assert url_of("127.0.0.1", 8000) == "http://127.0.0.1:8000/"
    assert url_of("0.0.0.0", 80) == "http://127.0.0.1:80/"
    assert url_of("::1", 8000) == "http://[::1]:8000/"


def test_an_unresolvable_host_is_refused():
    with pytest.raises(ConfigError, match="--host"):
        check_port("no-such-host.invalid", 8000)
