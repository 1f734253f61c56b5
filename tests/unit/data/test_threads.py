"""CPU thread policy: torch threads + loader workers never exceed the cores (issue 12, item 13)."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console

from transferkit.config import config_from_dict
from transferkit.data import datasets
from transferkit.data.datasets import cpu_plan, default_workers
from transferkit.engine.progress import Reporter
from transferkit.engine.trainer import Trainer
from transferkit.features.extract import default_embed_workers, forward_threads


@pytest.fixture
def fresh_torch(monkeypatch: pytest.MonkeyPatch):
    """torch as just started on a big machine (its default: one thread per core), no OMP_NUM_THREADS."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 256)


@pytest.mark.parametrize("cores", [1, 2, 3, 4, 5, 8, 16, 64, 128])
@pytest.mark.parametrize("accelerator", [False, True])
def test_default_threads_and_workers_never_exceed_the_cores(cores, accelerator, fresh_torch, monkeypatch) -> None:
    monkeypatch.setattr(datasets, "available_cores", lambda: cores)
    plan = cpu_plan(-1, accelerator=accelerator)
    assert plan.cores == cores
    assert plan.threads >= 1 and plan.workers >= 0
    assert plan.threads + plan.workers <= cores, plan
    if cores >= 2:
        assert plan.workers >= 1  # decoding overlaps the forward
    assert plan.threads + plan.workers == max(cores, 1)  # and no core is left idle
    # one policy: the training loader, the embedding loader and the embedding forward agree with it
    assert default_workers(-1, accelerator=accelerator) == plan.workers
    if not accelerator:
        assert default_embed_workers(-1) == plan.workers
        assert forward_threads(plan.workers) == plan.threads


def test_two_cores_measured_case(fresh_torch, monkeypatch) -> None:
    # measured: 2 torch threads beside a decoding worker on 2 cores took 7.4 s a step, 1 thread 0.6 s
    monkeypatch.setattr(datasets, "available_cores", lambda: 2)
    plan = cpu_plan(-1)
    assert (plan.threads, plan.workers) == (1, 1)


def test_torchrun_processes_share_the_machine(fresh_torch, monkeypatch) -> None:
    monkeypatch.setattr(datasets.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    plan = cpu_plan(-1)
    assert plan.cores == 4 and plan.threads + plan.workers <= 4


def test_explicit_choices_are_respected(fresh_torch, monkeypatch) -> None:
    monkeypatch.setattr(datasets, "available_cores", lambda: 8)
    chosen = cpu_plan(3)
    assert chosen.workers == 3 and chosen.threads == 5 and "data.workers=3" in chosen.chosen_by
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # a lower torch.set_num_threads is kept
    assert cpu_plan(-1).threads == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 6)
    omp = cpu_plan(4)  # the user asked for both, even if they oversubscribe: kept and said
    assert (omp.threads, omp.workers) == (6, 4)
    assert "OMP_NUM_THREADS=6" in omp.chosen_by and "data.workers=4" in omp.chosen_by


def test_trainer_uses_the_policy_and_its_header_shows_it(fresh_torch, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(datasets, "available_cores", lambda: 2)
    cfg = config_from_dict({"data": {"path": str(tmp_path)}, "engine": {"device": "cpu"}})
    trainer = Trainer(cfg, run_dir=tmp_path / "run", quiet=True)  # set-up only: nothing is read or trained
    assert (trainer.cpu.threads, trainer.cpu.workers) == (1, 1)
    out = io.StringIO()
    data = SimpleNamespace(classes=["a", "b"], train=[1] * 8, selection=[1] * 2, test=[1] * 2, skipped=[],
                           sources={"train": "train/", "selection": "val/", "test": "test/"})
    view = SimpleNamespace(data=data, spec=SimpleNamespace(name="efficientnet_lite0", input_size=32),
                           device=trainer.device, plan=SimpleNamespace(describe=lambda: "plan"),
                           run_dir=trainer.run_dir, cpu=trainer.cpu, sync_bn=False)
    Reporter(console=Console(file=out, width=200)).header(view, 10, 100)
    assert "cpu: 1 torch thread + 1 loader worker on 2 cores (default: threads + workers <= cores)" in out.getvalue()
