"""An adapt run is a Trainer run: interrupted, it resumes to the weights of a run never interrupted.

The crash lands in the adaptation phase (DANN: the model, its optimizer, the discriminator and its
optimizer, the phase's first step and the target batches must all come back), once at the phase's first
step (the resume starts the phase: fresh optimizer) and once in its second epoch (the resume restores it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import transferkit.adapt.objective as objective_mod
import transferkit.engine.trainer as trainer_mod
from conftest import make_image_folder
from transferkit.adapt import adapt
from transferkit.cli import app
from transferkit.engine.trainer import Trainer

PARAMS = dict(backbone="efficientnet_lite0", input_size=32, batch_size=8, workers=0, epochs=1, adapt_epochs=2,
              seed=3, quiet=True, adapt_options={"projection": "none"})


class Crash(BaseException):
    """Stands for a killed process (not a KeyboardInterrupt): nothing after it runs."""


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def domains(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapt_resume")
    return {"source": make_image_folder(root / "source", {"a": 8, "b": 8}, size=36, seed=0),
            "target": make_image_folder(root / "target", {"a": 6, "b": 6}, size=36, seed=9)}


@pytest.fixture(scope="module")
def reference(domains: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[int, bool]]]:
    """One uninterrupted DANN run, and (epoch, joint objective?) of every epoch the Trainer's loop ran."""
    epochs: list[tuple[int, bool]] = []
    real = trainer_mod.train_one_epoch

    def spy(model, loader, ctx, start_step, on_failed, on_batch=None, objective=None):
        epochs.append((len(epochs), objective is not None))
        return real(model, loader, ctx, start_step, on_failed, on_batch, objective)

    threads = torch.get_num_threads()  # module scope: set up before the per-test one-thread fixture
    torch.set_num_threads(1)  # the same thread count as the interrupted runs, or float sums may differ in the last bit
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(trainer_mod, "train_one_epoch", spy)
            out = tmp_path_factory.mktemp("reference") / "run"
            adapt(domains["source"], domains["target"], method="dann", out=str(out), **PARAMS)
    finally:
        torch.set_num_threads(threads)
    return out, epochs


def _rows(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in lines]


def test_the_trainer_loop_runs_both_phases(reference: tuple[Path, list[tuple[int, bool]]]) -> None:
    """One epoch loop: the baseline epoch with plain cross-entropy, the adaptation epochs with the joint step."""
    run, epochs = reference
    assert epochs == [(0, False), (1, True), (2, True)]
    assert [row["phase"] for row in _rows(run)] == ["source-only", "dann", "dann"]
    assert [row["epoch"] for row in _rows(run)] == [1, 2, 3]


@pytest.mark.parametrize("crash_in_joint_epoch", [1, 2])
def test_interrupted_adapt_run_resumes_to_the_same_weights(domains: dict[str, Path], tmp_path: Path,
                                                           reference: tuple[Path, list], crash_in_joint_epoch: int,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    expected = reference[0]
    made = []
    real_init, real_after_step = objective_mod.JointObjective.__init__, objective_mod.JointObjective.after_step

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        made.append(self)

    def after_step(self) -> None:  # the optimizers have stepped; the epoch is not committed yet
        real_after_step(self)
        if len(made) == crash_in_joint_epoch:
            raise Crash()

    run = tmp_path / "run"
    with monkeypatch.context() as mp:
        mp.setattr(objective_mod.JointObjective, "__init__", init)
        mp.setattr(objective_mod.JointObjective, "after_step", after_step)
        with pytest.raises(Crash):
            adapt(domains["source"], domains["target"], method="dann", out=str(run), **PARAMS)
    assert not (run / "summary.json").exists() and (run / "last_state.safetensors").is_file()
    if crash_in_joint_epoch == 1:
        summary = Trainer.resume(run, quiet=True).fit().summary  # the engine's resume: hooks.json brings the adaptation back
    else:  # the command line: `transferkit adapt --resume RUN` (transferkit.adapt.resume)
        cli = CliRunner().invoke(app, ["adapt", "--resume", str(run), "--quiet"])
        assert cli.exit_code == 0, cli.output
        assert "target" in cli.output  # the side-by-side table
        summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["method"] == "dann" and summary["epochs_run"] == 3
    assert _rows(run) == _rows(expected)
    for name in ("model.safetensors", "baseline.safetensors"):
        a, b = load_file(run / name), load_file(expected / name)
        assert a.keys() == b.keys()
        differing = [k for k in a if not torch.equal(a[k], b[k])]
        assert not differing, f"{name}: {len(differing)} tensors differ, e.g. {differing[:3]}"
    got, want = (json.loads((r / "summary.json").read_text(encoding="utf-8")) for r in (run, expected))
    assert got["adapted"] == want["adapted"] and got["source_only"] == want["source_only"]
