"""Safe model files: weights in safetensors, everything else in JSON. Loading never unpickles."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from transferkit.errors import CheckpointError, TransferKitError
from transferkit.fileio import atomic_write, write_json
from transferkit.models.backbones import BackboneSpec
from transferkit.models.transfer import TransferModel, build_model

__all__ = ["save_model", "safetensors_bytes", "record_in_head", "load_run", "LoadedRun", "MODEL_FILE", "MODEL_META"]

MODEL_FILE = "model.safetensors"
MODEL_META = "model.json"
FORMAT_VERSION = 1


@dataclass
class LoadedRun:
    """A trained model with what is needed to use it: classes and the backbone spec (preprocessing)."""

    path: Path
    model: TransferModel
    classes: list[str]
    spec: BackboneSpec
    meta: dict[str, Any]

    @property
    def temperature(self) -> float:
        """The calibration temperature fitted on the selection split (1.0: none); probabilities are softmax(logits / T)."""
        return float(self.meta.get("head", {}).get("temperature", 1.0))


def state_dict_cpu(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies (safetensors needs them; shared storage is not allowed)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file's bytes that depend only on ``tensors`` and ``metadata``.

    safetensors writes its JSON header (the ``__metadata__`` map) in the order of a Rust hash map whose keys
    are random per process and per map, so the same weights saved twice gave different bytes and a different
    SHA-256 (which names the run's exported graph). The header is re-serialised with sorted keys (tensor
    entries and their offsets unchanged, padded with spaces to 8 bytes as safetensors pads it); the tensor
    data, laid out by safetensors in a fixed order (dtype alignment, then name), follows as written. The
    file is built in memory (one more copy of the weights while saving).
    """
    from safetensors.torch import save

    raw = save(tensors, metadata=metadata)
    size = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8:8 + size]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + raw[8 + size:]


def save_model(run_dir: str | Path, model: TransferModel, classes: list[str], head: dict[str, Any], name: str = MODEL_FILE) -> Path:
    """Write ``name`` (safetensors, bit-identical for the same weights: :func:`safetensors_bytes`) and its JSON
    description atomically."""
    run = Path(run_dir)
    target = run / name
    with atomic_write(target) as tmp:
        tmp.write_bytes(safetensors_bytes(state_dict_cpu(model), {"format": "transferkit", "version": str(FORMAT_VERSION)}))
    meta = {
        "format_version": FORMAT_VERSION,
        "weights": name,
        "classes": list(classes),
        "head": head,
        "backbone": model.spec.to_dict(),
    }
    write_json(run / (Path(name).stem + ".json"), meta)
    return target


def record_in_head(run_dir: str | Path, name: str = MODEL_FILE, **values: Any) -> None:
    """Add ``values`` to the head description in the model's JSON, keeping what is there; the weights are not rewritten."""
    path = Path(run_dir) / (Path(name).stem + ".json")
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta["head"] = {**meta["head"], **values}
    write_json(path, meta)


def load_run(run_dir: str | Path, weights_name: str = MODEL_FILE, device: str = "cpu") -> LoadedRun:
    """Rebuild the model of a run folder from model.json + model.safetensors (no pickle anywhere)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    run = Path(run_dir)
    meta_path, weights_path = run / (Path(weights_name).stem + ".json"), run / weights_name
    if not run.is_dir():
        raise CheckpointError(f"run folder {run} does not exist; pass the --out folder of a finished train run")
    if not meta_path.is_file() or not weights_path.is_file():
        raise CheckpointError(
            f"{run} has no {meta_path.name} + {weights_path.name}; was the run finished? "
            "(transferkit saves models only as safetensors + JSON; pickled .pt/.pth models are not loaded)"
        )
    meta, spec, classes, head = _read_meta(meta_path)
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{weights_path} is not a valid safetensors file ({exc}); it may be damaged or not a transferkit model"
        ) from None
    try:
        model = build_model(
            spec,
            len(classes),
            head=head.get("kind", "linear"),
            hidden=int(head.get("hidden", 512)),
            dropout=float(head.get("dropout", 0.0)),
            pretrained=False,
        )
    except (TransferKitError, RuntimeError, ValueError, TypeError, KeyError) as exc:
        # model.json travels with the weights: an unknown architecture or head is a bad file, not a bug
        raise CheckpointError(f"{meta_path} describes a model that cannot be built ({exc})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights_path} does not match {meta_path.name}: {str(exc).splitlines()[0]}") from None
    model.eval().to(device)
    return LoadedRun(run, model, classes, spec, meta)


def _read_meta(meta_path: Path) -> tuple[dict[str, Any], BackboneSpec, list[str], dict[str, Any]]:
    """model.json -> (meta, spec, classes, head), checked enough that later code cannot trip on it."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        spec = BackboneSpec.from_dict(meta["backbone"])
        classes, head = meta["classes"], dict(meta["head"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{meta_path} is not a valid transferkit model description ({exc})") from None
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise CheckpointError(f"{meta_path}: 'classes' must be a list of at least 2 class names")
    return meta, spec, list(classes), head
