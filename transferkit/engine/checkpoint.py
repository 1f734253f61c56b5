"""Resumable training state: tensors in safetensors, the rest in JSON, both written atomically.

The optimizer state is flattened to named tensors so nothing is pickled. The data order and the
augmentation/dropout randomness are pure functions of (seed, epoch), so a run resumed at an epoch
boundary replays exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from transferkit.errors import CheckpointError
from transferkit.export.runfiles import state_dict_cpu
from transferkit.fileio import atomic_write, write_json

__all__ = ["save_training_state", "load_training_state", "STATE_TENSORS", "STATE_META"]

STATE_TENSORS = "last_state.safetensors"
STATE_META = "last_state.json"


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars[f"{pid}.{key}"] = value
    groups = [{k: v for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_training_state(run_dir: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, info: dict[str, Any]) -> None:
    """Write model + optimizer tensors, then the JSON that makes them valid (the JSON is the commit point)."""
    from safetensors.torch import save_file

    run = Path(run_dir)
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    tensors = {f"model.{k}": v for k, v in state_dict_cpu(model).items()}
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    record = json.dumps({"optimizer": opt_meta, **info}, default=str)
    # One file, one atomic rename: the tensors and the JSON that describes them can never disagree.
    with atomic_write(run / STATE_TENSORS) as tmp:
        save_file(tensors, str(tmp), metadata={"info": record})
    write_json(run / STATE_META, info)  # a readable copy for people; never read back


def load_training_state(run_dir: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model + optimizer from the last complete state; returns the JSON info."""
    from safetensors import SafetensorError
    from safetensors import safe_open

    run = Path(run_dir)
    tensor_path = run / STATE_TENSORS
    if not tensor_path.is_file():
        raise CheckpointError(f"{run} has no resumable state ({STATE_META}); it finished no epoch yet — start it again")
    try:
        with safe_open(str(tensor_path), framework="pt") as handle:
            info = json.loads((handle.metadata() or {})["info"])
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except (json.JSONDecodeError, SafetensorError, OSError, KeyError) as exc:
        raise CheckpointError(f"resumable state in {run} is damaged ({exc}); start the run again") from None
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(model_state, strict=True)
    optimizer.load_state_dict(_unflatten_optimizer(tensors, info.pop("optimizer")))
    torch.set_rng_state(tensors["rng.torch"])
    return info
