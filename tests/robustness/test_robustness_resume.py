"""Interrupted runs, crashes while writing, full disks and determinism, through real (tiny) runs.

The promise: a run stopped at any moment (SIGKILL, Ctrl-C, an exception, a full disk) keeps its last
good checkpoint and best model, and ``transferkit train --resume RUN`` ends with the same metrics and
bit-identical weights as a run that was never interrupted (CPU, same machine, same thread count).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

import transferkit as tk
import transferkit.engine.loop as loop
import transferkit.report as report
from conftest import TINY, make_image_folder
from transferkit.cli import app
from transferkit.errors import CheckpointError
from transferkit.export.runfiles import MODEL_FILE, load_run, save_model

# lp-ft: epoch 1 trains the head only, epoch 2 everything, so a resume also has to restore the plan
# position and the optimizer state of groups that only start training after the checkpoint.
PARAMS = dict(strategy="lp-ft", warmup_epochs=1, epochs=2, seed=7, lr=3e-3, cache=False, **TINY)
STEPS_PER_EPOCH = 2  # 12 training images (20 minus 2 + 2 selection and 2 + 2 test images) at batch size 8


class Crash(BaseException):
    """Stands for anything that kills the process without Python cleaning up (not a KeyboardInterrupt)."""


def _no_report(*_args, **_kwargs) -> None:
    return None


@pytest.fixture(autouse=True)
def _skip_html_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """The HTML report is not under test here and costs seconds per run."""
    monkeypatch.setattr(report, "build_run_report", _no_report)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("resume") / "data", {"a": 10, "b": 10}, seed=5)


@pytest.fixture(scope="module")
def reference(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run with PARAMS: what every interrupted-and-resumed run must reproduce."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "build_run_report", _no_report)
        return tk.train(data_dir, out=str(tmp_path_factory.mktemp("reference") / "run"), **PARAMS).run_dir


def metric_rows(run: Path) -> list[dict]:
    """metrics.jsonl without wall-clock times (the only field allowed to differ)."""
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in lines]


def assert_same_run(run: Path, expected: Path) -> None:
    """Identical metrics and summary metrics, bit-identical best model."""
    assert metric_rows(run) == metric_rows(expected)
    assert [row["epoch"] for row in metric_rows(run)] == [1, 2]  # each epoch exactly once
    got, want = (json.loads((r / "summary.json").read_text(encoding="utf-8")) for r in (run, expected))
    for key in ("metrics", "selected_epoch", "epochs_run"):
        assert got[key] == want[key], key
    a, b = load_file(run / MODEL_FILE), load_file(expected / MODEL_FILE)
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"


def state_epoch(run: Path) -> int:
    with safe_open(str(run / "last_state.safetensors"), framework="pt") as handle:
        return json.loads(handle.metadata()["info"])["epoch"]


def leftovers(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp"))


# --- determinism --------------------------------------------------------------------------------


def test_same_seed_same_run_different_seed_different_run(data_dir: Path, reference: Path, tmp_path: Path) -> None:
    again = tk.train(data_dir, out=str(tmp_path / "again"), **PARAMS).run_dir
    assert_same_run(again, reference)
    other = tk.train(data_dir, out=str(tmp_path / "other"), **{**PARAMS, "seed": 8}).run_dir
    assert metric_rows(other) != metric_rows(reference)
    a, b = load_file(other / MODEL_FILE), load_file(reference / MODEL_FILE)
    assert not torch.equal(a["head.1.weight"], b["head.1.weight"])
    # the split is seeded separately (data.split_seed): a new training seed keeps the same images
    split = lambda r: json.loads((r / "split.json").read_text(encoding="utf-8"))  # noqa: E731
    assert split(other) == split(reference)


# --- interrupted runs ---------------------------------------------------------------------------


def _crash_at(mp: pytest.MonkeyPatch, step: int, exc: BaseException) -> None:
    """Raise ``exc`` just before optimizer step ``step`` (0-based, counted over the whole run)."""
    real = loop.optimizer_step

    def step_or_crash(ctx, loss, global_step):
        if global_step == step:
            raise exc
        return real(ctx, loss, global_step)

    mp.setattr(loop, "optimizer_step", step_or_crash)


def test_crash_mid_epoch_then_resume_is_bit_identical(data_dir: Path, reference: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp, pytest.raises(Crash):
        _crash_at(mp, STEPS_PER_EPOCH + 1, Crash())  # the 2nd step of epoch 2: one update is lost
        tk.train(data_dir, out=str(run), **PARAMS)
    assert state_epoch(run) == 1 and not (run / "summary.json").exists()
    load_run(run)  # the best model so far is complete and loadable
    tk.resume(run, quiet=True)
    assert_same_run(run, reference)


def test_ctrl_c_keeps_best_model_then_resume_is_bit_identical(data_dir: Path, reference: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:
        _crash_at(mp, STEPS_PER_EPOCH + 1, KeyboardInterrupt())
        summary = tk.train(data_dir, out=str(run), **PARAMS).summary
    assert summary["interrupted"] is True and summary["epochs_run"] == 1
    tk.resume(run, quiet=True)
    assert_same_run(run, reference)


# The real command line in a child process, minus the HTML report (seconds per run, not under test).
CLI = [sys.executable, "-c", "import sys, transferkit.report as r; r.build_run_report = lambda *a, **k: None; "
       "from transferkit.cli import app; sys.argv[0] = 'transferkit'; app()"]
CLI_ARGS = ["--backbone", "efficientnet_lite0", "--input-size", "32", "--batch-size", "8", "--epochs", "3",
            "--strategy", "lp-ft", "--warmup-epochs", "1", "--seed", "7", "--lr", "0.003", "--no-cache",
            "--set", "data.workers=0"]


# One thread per child: the two children run side by side, and all three must use the same thread
# count (CPU reductions are only bit-reproducible for a fixed number of threads).
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _wait_for_first_epoch(proc: subprocess.Popen, run: Path, timeout: float = 240.0) -> float:
    """Block until epoch 1 is committed (metrics line + checkpoint); returns that epoch's duration."""
    deadline = time.monotonic() + timeout
    metrics = run / "metrics.jsonl"
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        if metrics.exists() and (run / "last_state.safetensors").exists():
            lines = metrics.read_text(encoding="utf-8").splitlines()
            if lines:
                return float(json.loads(lines[0])["time_s"])
        time.sleep(0.02)
    raise AssertionError("epoch 1 did not finish in time")


def test_sigkill_mid_epoch_then_cli_resume_is_bit_identical(data_dir: Path, tmp_path: Path) -> None:
    killed, full = tmp_path / "killed", tmp_path / "full"
    with open(tmp_path / "full.log", "wb") as log_full, open(tmp_path / "killed.log", "wb") as log_killed:
        uninterrupted = subprocess.Popen([*CLI, "train", str(data_dir), "--out", str(full), *CLI_ARGS],
                                         stdout=log_full, stderr=subprocess.STDOUT, env=CHILD_ENV)
        victim = subprocess.Popen([*CLI, "train", str(data_dir), "--out", str(killed), *CLI_ARGS],
                                  stdout=log_killed, stderr=subprocess.STDOUT, env=CHILD_ENV)
        try:
            epoch_seconds = _wait_for_first_epoch(victim, killed)
            time.sleep(0.5 * epoch_seconds)  # well inside epoch 2 (which trains the whole network: slower)
            victim.send_signal(signal.SIGKILL)
            assert victim.wait(timeout=30) == -signal.SIGKILL
        finally:
            if victim.poll() is None:
                victim.kill()
        assert uninterrupted.wait(timeout=400) == 0, (tmp_path / "full.log").read_text(errors="replace")[-2000:]
    assert not (killed / "summary.json").exists()
    committed = len((killed / "metrics.jsonl").read_text(encoding="utf-8").splitlines())
    assert 1 <= committed < 3
    resumed = subprocess.run([*CLI, "train", "--resume", str(killed)], capture_output=True, timeout=400,
                             env=CHILD_ENV)
    assert resumed.returncode == 0, resumed.stdout.decode(errors="replace")[-2000:]
    assert metric_rows(killed) == metric_rows(full)
    assert [row["epoch"] for row in metric_rows(killed)] == [1, 2, 3]
    a, b = load_file(killed / MODEL_FILE), load_file(full / MODEL_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    got, want = (json.loads((r / "summary.json").read_text(encoding="utf-8")) for r in (killed, full))
    assert got["metrics"] == want["metrics"] and got["selected_epoch"] == want["selected_epoch"]


# --- a crash while the best model is being written ----------------------------------------------


def test_crash_while_writing_model_keeps_the_previous_one(data_dir: Path, tmp_path: Path, monkeypatch) -> None:

    run = tk.train(data_dir, out=str(tmp_path / "run"), **{**PARAMS, "epochs": 1, "strategy": "finetune"}).run_dir
    before_bytes = (run / MODEL_FILE).read_bytes()
    before = load_run(run)
    changed = load_run(run).model
    with torch.no_grad():
        for p in changed.parameters():
            p.add_(1.0)
    real_write = Path.write_bytes

    def half_then(exc: BaseException):
        def write_bytes(path, data):  # how save_model writes the weights (its bytes are made in memory first)
            real_write(path, data[: len(data) // 2])  # a torn write: only the first half made it to disk
            raise exc
        return write_bytes

    def failing_replace(src, dst):
        raise OSError(errno.EIO, "Input/output error")

    for exc in (RuntimeError("power cut"), KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Path, "write_bytes", half_then(exc))
            with pytest.raises((type(exc), CheckpointError)):
                save_model(run, changed, before.classes, before.meta["head"])
    with pytest.MonkeyPatch.context() as mp, pytest.raises(CheckpointError, match="could not write"):
        mp.setattr(os, "replace", failing_replace)
        save_model(run, changed, before.classes, before.meta["head"])

    assert (run / MODEL_FILE).read_bytes() == before_bytes and not leftovers(run)
    after = load_run(run).model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.model.state_dict().items())
    # SIGKILL mid-write leaves a temp file behind; it is never mistaken for the model
    (run / f".{MODEL_FILE}.abc123.tmp").write_bytes(before_bytes[:100])
    assert torch.equal(load_run(run).model.state_dict()["head.1.weight"], before.model.state_dict()["head.1.weight"])


# --- a full disk in the middle of a real run ----------------------------------------------------


def _fail_nth_write(mp: pytest.MonkeyPatch, name: str, nth: int, run: Path) -> dict:
    """Make the ``nth`` atomic write of ``name`` hit ENOSPC at fsync, after half of it was written.

    fsync is where a full disk (delayed allocation, quotas, network file systems) is reported, so the
    fault lands where it would in real life. Records what the final file held at that moment.
    """
    seen = {"count": 0, "before": None}
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.basename(target).startswith(f".{name}."):
            seen["count"] += 1
            if seen["count"] == nth:
                final = run / name
                seen["before"] = final.read_bytes() if final.exists() else None
                os.truncate(target, os.path.getsize(target) // 2)
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    mp.setattr(os, "fsync", fsync)
    return seen


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name the file being synced")
@pytest.mark.parametrize("name", [MODEL_FILE, "last_state.safetensors"])
def test_full_disk_keeps_last_good_files_and_resumes(name: str, data_dir: Path, reference: Path,
                                                     tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:
        seen = _fail_nth_write(mp, name, 2, run)
        with pytest.raises(CheckpointError, match="no space left") as info:
            tk.train(data_dir, out=str(run), **PARAMS)
    assert str(run / name) in str(info.value) and "\n" not in str(info.value)
    assert seen["count"] == 2, f"{name} was written only {seen['count']} time(s): the fault never fired"
    assert (run / name).read_bytes() == seen["before"]  # the last good version, untouched
    assert not leftovers(run)
    load_run(run)  # the best model is complete
    assert state_epoch(run) == 1
    tk.resume(run, quiet=True)  # "free some space, then resume"
    assert_same_run(run, reference)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name the file being synced")
def test_full_disk_through_the_cli_is_one_line(data_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", str(data_dir), "--out", str(run), "--epochs", "2", "--input-size", "32", "--batch-size", "8",
            "--no-cache", "--set", "data.workers=0"]
    with pytest.MonkeyPatch.context() as mp:
        seen = _fail_nth_write(mp, "metrics.jsonl", 2, run)
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0]  # progress lines come first
    assert errors[0].startswith("error: no space left") and str(run / "metrics.jsonl") in errors[0]
    assert (run / "metrics.jsonl").read_bytes() == seen["before"] and not leftovers(run)
    assert state_epoch(run) == 1
    load_run(run)


# --- restarting and resuming on changed folders ---------------------------------------------------
# The run-folder helpers are tested directly, and through the trainer, which calls them.


def test_trim_metrics_log_keeps_committed_epochs_only(tmp_path: Path) -> None:
    from transferkit.engine.checkpoint import trim_metrics_log

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"epoch": 1, "x": 1}\n{"epoch": 2, "x": 2}\nnot json\n{"epoch": 3}\n', encoding="utf-8")
    assert trim_metrics_log(tmp_path, 2) == 2
    assert log.read_text(encoding="utf-8") == '{"epoch": 1, "x": 1}\n{"epoch": 2, "x": 2}\n'
    assert trim_metrics_log(tmp_path, 2) == 0 and trim_metrics_log(tmp_path / "nothing", 1) == 0


def test_prepare_fresh_run(reference: Path, tmp_path: Path) -> None:
    from transferkit.engine.checkpoint import prepare_fresh_run
    from transferkit.errors import ConfigError

    with pytest.raises(ConfigError, match="--resume"):
        prepare_fresh_run(reference)
    leftover = tmp_path / "killed_in_epoch_1"
    leftover.mkdir()
    (leftover / "metrics.jsonl").write_text('{"epoch": 1}\n', encoding="utf-8")
    prepare_fresh_run(leftover)
    assert not (leftover / "metrics.jsonl").exists()
    prepare_fresh_run(tmp_path / "new")  # a folder that does not exist yet is fine


def test_verify_split(reference: Path) -> None:
    from transferkit.engine.checkpoint import verify_split
    from transferkit.errors import DataError

    record = json.loads((reference / "split.json").read_text(encoding="utf-8"))
    verify_split(reference, record)
    with pytest.raises(DataError, match="classes"):
        verify_split(reference, {**record, "classes": ["a", "b", "c"]})
    with pytest.raises(DataError, match="1 image file"):
        verify_split(reference, {**record, "train": record["train"][1:]})


def _unfinished_copy(reference: Path, tmp_path: Path) -> Path:
    run = Path(shutil.copytree(reference, tmp_path / "run"))
    (run / "summary.json").unlink()
    return run


def test_new_run_into_an_unfinished_run_folder_is_refused(data_dir: Path, reference: Path, tmp_path: Path) -> None:
    from transferkit.errors import ConfigError

    run = _unfinished_copy(reference, tmp_path)
    with pytest.raises(ConfigError, match="--resume"):
        tk.train(data_dir, out=str(run), **PARAMS)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name the file being synced")
def test_restart_after_a_failure_in_the_first_epoch_starts_clean(data_dir: Path, reference: Path,
                                                                 tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:
        _fail_nth_write(mp, "last_state.safetensors", 1, run)
        with pytest.raises(CheckpointError):
            tk.train(data_dir, out=str(run), **PARAMS)
    assert len(metric_rows(run)) == 1  # epoch 1's line was written, its checkpoint was not
    with pytest.raises(CheckpointError, match="finished no epoch yet"):
        tk.resume(run, quiet=True)
    tk.train(data_dir, out=str(run), **PARAMS)  # "start it again with the same train command"
    assert_same_run(run, reference)


def test_resume_refuses_a_changed_data_folder(data_dir: Path, reference: Path, tmp_path: Path) -> None:
    from transferkit.errors import DataError

    run = _unfinished_copy(reference, tmp_path)
    data = Path(shutil.copytree(data_dir, tmp_path / "data"))
    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    cfg["data"]["path"] = str(data)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    shutil.copy(data / "a" / "a_000.jpg", data / "a" / "a_new.jpg")
    with pytest.raises(DataError, match="added, removed"):
        tk.resume(run, quiet=True)
