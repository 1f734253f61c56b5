"""Out of GPU memory becomes one clear error suggesting a smaller batch (simulated: no GPU needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import transferkit as tk
import transferkit.workflow as workflow
import transferkit.engine.trainer as trainer_module
import transferkit.report as report
from conftest import TINY, make_image_folder
from transferkit.cli import app
from transferkit.engine.oom import OutOfMemory, is_out_of_memory, oom_guard
from transferkit.errors import TransferKitError

CUDA_OOM = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB"


def _raise(exc: BaseException):
    def fail(*_args, **_kwargs):
        raise exc
    return fail


@pytest.mark.parametrize("exc", [
    torch.cuda.OutOfMemoryError(CUDA_OOM),
    torch.OutOfMemoryError(CUDA_OOM),
    RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"),
    RuntimeError("MPS backend out of memory (MPS allocated: 1.00 GB)"),
])
def test_oom_becomes_one_line_suggesting_half_the_batch(exc: BaseException) -> None:
    assert is_out_of_memory(exc)
    with pytest.raises(OutOfMemory) as info:
        with oom_guard(batch_size=32, what="training"):
            raise exc
    message = str(info.value)
    assert isinstance(info.value, TransferKitError) and "\n" not in message
    assert "batch size 32" in message and "--batch-size 16" in message and "training" in message


def test_batch_size_one_suggests_something_else() -> None:
    with pytest.raises(OutOfMemory, match="--input-size"):
        with oom_guard(batch_size=1, what="prediction"):
            raise torch.cuda.OutOfMemoryError(CUDA_OOM)


@pytest.mark.parametrize("exc", [RuntimeError("mat1 and mat2 shapes cannot be multiplied"), ValueError("x"),
                                 KeyboardInterrupt()])
def test_other_errors_pass_through_unchanged(exc: BaseException) -> None:
    assert not is_out_of_memory(exc)
    with pytest.raises(type(exc)) as info:
        with oom_guard(batch_size=8):
            raise exc
    assert info.value is exc


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("oom")
    data = make_image_folder(root / "data", {"a": 5, "b": 5})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "build_run_report", lambda *a, **k: None)
        run = tk.train(data, out=str(root / "run"), epochs=1, cache=False, **TINY).run_dir
    return run, data


def test_predict_and_evaluate_oom_through_api_and_cli(tiny_run: tuple[Path, Path], monkeypatch) -> None:
    run, data = tiny_run
    # the PyTorch engine (what --engine auto picks on a GPU, where memory runs out)
    monkeypatch.setattr(workflow, "predict_loader", _raise(torch.cuda.OutOfMemoryError(CUDA_OOM)))
    with pytest.raises(OutOfMemory, match="prediction with batch size 64; try --batch-size 32"):
        tk.predict(run, [data], engine="torch")
    with pytest.raises(OutOfMemory, match="evaluation with batch size 16; try --batch-size 8"):
        tk.evaluate(run, data, batch_size=16, engine="torch")
    result = CliRunner().invoke(app, ["predict", str(run), str(data), "--engine", "torch"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip().startswith("error: out of GPU memory") and len(result.stderr.strip().splitlines()) == 1


def test_training_oom_suggests_a_smaller_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_image_folder(tmp_path / "data", {"a": 5, "b": 5})
    monkeypatch.setattr(trainer_module, "train_one_epoch", _raise(torch.cuda.OutOfMemoryError(CUDA_OOM)))
    with pytest.raises(OutOfMemory, match="training with batch size 8; try --batch-size 4"):
        tk.train(data, out=str(tmp_path / "run"), epochs=1, cache=False, **TINY)
