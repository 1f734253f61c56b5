"""torchrun with 2 CPU processes (gloo) gives the same run as 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_image_folder

ARGS = ["--strategy", "finetune", "--bn", "frozen", "--epochs", "2", "--batch-size", "8", "--input-size", "32",
        "--lr", "3e-3", "--set", "data.augment=none", "--set", "model.dropout=0", "--set", "data.workers=0",
        "--no-cache", "--seed", "0"]


def _run(cmd: list[str], cwd: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_two_gloo_processes_match_one_process(tmp_path: Path):
    # 24 train images per class x 2 classes (split 20/4 each): 40 train images, divisible by 2 ranks x 4
    data = make_image_folder(tmp_path / "data", {"a": 24, "b": 24})
    one, two = tmp_path / "one", tmp_path / "two"
    cli = [sys.executable, "-m", "transferkit.cli", "train", str(data)]
    _run(cli + ARGS + ["--out", str(one)], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
          "-m", "transferkit.cli", "train", str(data)] + ARGS + ["--out", str(two)], tmp_path)
    m1 = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert len(m1) == len(m2) == 2  # rank 1 wrote nothing: one line per epoch
    for a, b in zip(m1, m2):
        # same samples per global step; only the float reduction order differs (gradient all-reduce)
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-4, (a["train_loss"], b["train_loss"])
        assert a["val_accuracy"] == b["val_accuracy"]
    w1, w2 = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    worst = max(float((w1[k].float() - w2[k].float()).abs().max()) for k in w1)
    assert worst < 1e-4, f"weights differ by up to {worst}"
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert (s1["world_size"], s2["world_size"]) == (1, 2)
    assert s1["metrics"]["accuracy"] == s2["metrics"]["accuracy"]
