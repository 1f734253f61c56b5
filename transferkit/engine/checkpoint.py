"""Resumable training state: tensors in safetensors, the rest in JSON, both written atomically.

The optimizer state is flattened to named tensors so nothing is pickled. The data order and the
augmentation/dropout randomness are pure functions of (seed, epoch), so a run resumed at an epoch
boundary replays exactly what an uninterrupted run would have done.

The checkpoint is the commit point of an epoch. Anything written after the last committed epoch
(a metrics line appended just before a kill or a full disk stopped the checkpoint) is dropped on
load, so the resumed run's metrics.jsonl holds each epoch exactly once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from transferkit.errors import CheckpointError, ConfigError, DataError
from transferkit.export.runfiles import state_dict_cpu
from transferkit.fileio import atomic_write, write_json, write_text

__all__ = [
    "RunState",
    "save_training_state",
    "load_training_state",
    "trim_metrics_log",
    "prepare_fresh_run",
    "verify_split",
    "flatten_optimizer",
    "unflatten_optimizer",
    "STATE_TENSORS",
    "STATE_META",
    "METRICS_LOG",
]

STATE_TENSORS = "last_state.safetensors"
STATE_META = "last_state.json"
METRICS_LOG = "metrics.jsonl"


def flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
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


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_training_state(run_dir: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, info: dict[str, Any],
                        hook_tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Write model + optimizer tensors and the info describing them with one atomic rename (the commit point).

    ``hook_tensors``: a trainer hook's own state (e.g. a second network), committed in the same file.
    ``last_state.json`` is a readable copy of ``info`` for people; it is never read back.
    """
    from safetensors.torch import save_file

    run = Path(run_dir)
    opt_tensors, opt_meta = flatten_optimizer(optimizer)
    tensors = {f"model.{k}": v for k, v in state_dict_cpu(model).items()}
    tensors.update(opt_tensors)
    tensors.update({f"hook.{k}": v.detach().to("cpu").contiguous() for k, v in (hook_tensors or {}).items()})
    tensors["rng.torch"] = torch.get_rng_state()
    record = json.dumps({"optimizer": opt_meta, **info}, default=str)
    # One file, one atomic rename: the tensors and the JSON that describes them can never disagree.
    with atomic_write(run / STATE_TENSORS) as tmp:
        save_file(tensors, str(tmp), metadata={"info": record})
    write_json(run / STATE_META, info)  # a readable copy for people; never read back


def _read_state(run: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(info, tensors) of the last committed epoch, or CheckpointError naming the file and the fix."""
    from safetensors import SafetensorError, safe_open

    tensor_path = run / STATE_TENSORS
    if not tensor_path.is_file():
        raise CheckpointError(f"{run} has no resumable state ({STATE_TENSORS}); it finished no epoch yet — "
            "start it again with the same train command (without --resume)")
    try:
        with safe_open(str(tensor_path), framework="pt") as handle:
            info = json.loads((handle.metadata() or {})["info"])
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except (json.JSONDecodeError, SafetensorError, OSError, KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"resumable state {tensor_path} is damaged ({exc}); start the run again") from None
    if not isinstance(info, dict) or "rng.torch" not in tensors or not isinstance(info.get("optimizer"), dict):
        raise CheckpointError(f"resumable state {tensor_path} is incomplete; start the run again")
    return info, tensors


def trim_metrics_log(run_dir: str | Path, epochs_done: int) -> int:
    """Drop metrics.jsonl lines of epochs after ``epochs_done`` (never committed); returns how many."""
    path = Path(run_dir) / METRICS_LOG
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines()
    keep = []
    for line in lines:
        try:
            epoch = int(json.loads(line).get("epoch", 0))
        except (ValueError, TypeError, AttributeError):
            continue  # not a record we wrote: drop rather than crash the resume
        if epoch <= epochs_done:
            keep.append(line)
    if len(keep) != len(lines):
        write_text(path, "".join(line + "\n" for line in keep))
    return len(lines) - len(keep)


def load_training_state(run_dir: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        hook_tensors: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Restore model + optimizer from the last complete state; returns the JSON info.

    ``hook_tensors``: filled with the hook tensors saved by :func:`save_training_state`.

    Also trims metrics.jsonl back to the restored epoch (see the module docstring).
    """
    run = Path(run_dir)
    info, tensors = _read_state(run)
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    if hook_tensors is not None:
        hook_tensors.update({k[len("hook."):]: v for k, v in tensors.items() if k.startswith("hook.")})
    try:
        model.load_state_dict(model_state, strict=True)
        optimizer.load_state_dict(unflatten_optimizer(tensors, info.pop("optimizer")))
        torch.set_rng_state(tensors["rng.torch"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"resumable state in {run} does not fit the model of its config.yaml ({first}); "
            "was config.yaml edited? Restore it or start the run again"
        ) from None
    trim_metrics_log(run, int(info.get("epoch", 0)))
    return info


def prepare_fresh_run(run_dir: str | Path) -> None:
    """Before a new run writes into ``run_dir``: refuse to overwrite an unfinished run, clear leftovers.

    A folder with a committed checkpoint holds epochs worth keeping, so the user must resume it or
    delete it. A folder without one (killed during its first epoch) only holds leftovers, which are
    removed so the new run's metrics.jsonl does not start with the old run's lines.
    """
    run = Path(run_dir)
    if (run / STATE_TENSORS).is_file():
        raise ConfigError(
            f"{run} holds an unfinished run; continue it with `transferkit train --resume {run}`, "
            "or delete the folder / choose another --out to start over"
        )
    for name in (METRICS_LOG, STATE_META):
        (run / name).unlink(missing_ok=True)


def verify_split(run_dir: str | Path, record: dict[str, Any]) -> None:
    """Refuse to resume when the data folder no longer yields the split the run started with.

    Args:
        run_dir: the run folder (its split.json was written when the run started).
        record: ``DataSplits.split_record()`` of the data as scanned now.

    Raises:
        DataError: classes or files differ; resuming would silently train on other data
            (or with shifted labels).
    """
    path = Path(run_dir) / "split.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return  # nothing to compare with (older run folder): the weights check still guards the labels
    now = json.loads(json.dumps(record))  # tuples -> lists, as in the file
    if saved.get("classes") != now.get("classes"):
        raise DataError(
            f"the classes of {now.get('root')} changed since the run started ({saved.get('classes')} -> "
            f"{now.get('classes')}); restore the folder to resume {run_dir}, or start a new run"
        )
    changed = sum(
        len({tuple(x) for x in saved.get(part, [])} ^ {tuple(x) for x in now.get(part, [])})
        for part in ("train", "selection", "test")
    )
    if changed:
        raise DataError(
            f"{changed} image file(s) of {now.get('root')} were added, removed or became unreadable since the run "
            f"started (see {path}); restore them to resume {run_dir} exactly, or start a new run"
        )


@dataclass
class RunState:
    """Where a run stands: what a checkpoint records besides the tensors, and what resume restores."""

    epoch: int = 0  # epochs completed
    step: int = 0
    best_key: tuple[float, float] | None = None
    best_epoch: int = -1
    stale: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    head_fit: dict[str, Any] | None = None  # the converged probe's record, when it replaced the head-only epochs

    def to_info(self, hook_infos: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The JSON part of a checkpoint (``hook_infos``: each hook's own, when the run has hooks)."""
        hooks = {"hooks": hook_infos} if hook_infos else {}
        return {**hooks, "epoch": self.epoch, "step": self.step,
                "best_key": list(self.best_key) if self.best_key else None, "best_epoch": self.best_epoch,
                "stale": self.stale, "skipped": self.skipped, "head_fit": self.head_fit}

    def restore(self, info: dict[str, Any]) -> None:
        """Take back what :meth:`to_info` wrote (files skipped since are kept)."""
        self.epoch, self.step, self.best_epoch, self.stale = info["epoch"], info["step"], info["best_epoch"], info["stale"]
        self.best_key = tuple(info["best_key"]) if info["best_key"] else None
        self.skipped.update(info.get("skipped", {}))
        self.head_fit = info.get("head_fit")
