"""Run configuration: frozen dataclasses, loaded from YAML/JSON, overridden from the command line.

Unknown keys are refused (a typo in a config file must not silently fall back to a default), and the
resolved configuration is written into every run folder so a run can be repeated exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from transferkit.errors import ConfigError

__all__ = [
    "DataCfg",
    "ModelCfg",
    "StrategyCfg",
    "OptimCfg",
    "EngineCfg",
    "RunCfg",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "STRATEGY_NAMES",
    "FLAT_KEYS",
]

STRATEGY_NAMES = ("feature-extraction", "finetune", "scratch", "partial", "lp-ft", "gradual", "auto")

# Friendly keyword / flag names -> dotted config keys (transferkit.train keywords, `transferkit train` flags).
FLAT_KEYS = {
    "backbone": "model.backbone",
    "weights": "model.weights",
    "head": "model.head",
    "head_fit": "model.head_fit",
    "input_size": "model.input_size",
    "dropout": "model.dropout",
    "mean": "model.mean",
    "std": "model.std",
    "strategy": "strategy.name",
    "unfreeze": "strategy.unfreeze",
    "warmup_epochs": "strategy.warmup_epochs",
    "unfreeze_every": "strategy.unfreeze_every",
    "layer_decay": "strategy.layer_decay",
    "group_lr_scales": "strategy.group_lr_scales",
    "backbone_lr_scale": "strategy.backbone_lr_scale",
    "bn": "strategy.bn",
    "l2sp": "strategy.l2sp",
    "lr": "optim.lr",
    "weight_decay": "optim.weight_decay",
    "label_smoothing": "optim.label_smoothing",
    "epochs": "engine.epochs",
    "batch_size": "engine.batch_size",
    "seed": "engine.seed",
    "patience": "engine.patience",
    "device": "engine.device",
    "cache": "engine.cache",
    "cache_dir": "engine.cache_dir",
    "cache_views": "engine.cache_views",
    "val_fraction": "data.val_fraction",
    "split_seed": "data.split_seed",
    "augment": "data.augment",
    "workers": "data.workers",
    "out": "out",
}


@dataclass(frozen=True)
class DataCfg:
    """Where the images are and how they are split and augmented."""

    path: str = ""
    val_fraction: float = 0.2  # used only when the folder has no train/val split of its own
    split_seed: int = 0
    augment: str = "light"  # none | light
    workers: int = -1  # -1: choose from the number of cores
    validate: bool = True  # decode every file once up front so bad files are skipped before training


@dataclass(frozen=True)
class ModelCfg:
    """The backbone and the new head."""

    backbone: str = "efficientnet_lite0"
    weights: str | None = None  # local safetensors / state-dict file (offline weights for timm: names)
    pretrained: bool = True
    input_size: int | None = None  # override the spec's input resolution (e.g. 96 for tiny images)
    head: str = "linear"  # linear | mlp
    head_hidden: int = 512
    dropout: float = 0.2
    # how the linear head is fitted while the backbone is frozen: auto (converged probe on cached embeddings,
    # else mini-batch SGD) | probe (also without the on-disk cache) | sgd (epochs of the optimizer, as before)
    head_fit: str = "auto"
    # normalisation the weights expect; None = the backbone's pretrained config (a --weights file of another
    # training recipe may need other values)
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class StrategyCfg:
    """Which parameters adapt, when, and how fast relative to the base learning rate."""

    name: str = "feature-extraction"
    backbone_lr_scale: float = 0.1  # finetune: backbone at 0.1 x the head's rate (1e-4 vs 1e-3)
    unfreeze: int = 2  # partial: number of last layer groups that train
    warmup_epochs: int = 2  # lp-ft: head-only epochs before everything unfreezes
    unfreeze_every: int = 1  # gradual: one more layer group every M epochs
    layer_decay: float | None = None  # group rate = decay ** (distance from the head)
    group_lr_scales: tuple[float, ...] | None = None  # explicit multipliers, first group .. head
    bn: str = "auto"  # auto | frozen | train
    l2sp: float = 0.0  # strength of the L2-SP pull toward the pretrained weights


@dataclass(frozen=True)
class OptimCfg:
    """AdamW with linear warm-up and cosine decay."""

    lr: float = 1e-3  # the head's learning rate; other groups get lr * lr_scale
    weight_decay: float = 1e-4
    lr_warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.1
    grad_clip: float | None = 5.0


@dataclass(frozen=True)
class EngineCfg:
    """Loop settings."""

    epochs: int = 10
    batch_size: int = 32
    patience: int = 0  # early stopping after this many epochs without improvement; 0 = off
    monitor: str = "accuracy"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on CUDA (ignored on the CPU)
    channels_last: bool = True
    compile: bool = False  # torch.compile the training forward (worth it on GPUs for long runs)
    sync_bn: str = "auto"  # auto | true | false: under torchrun, SyncBatchNorm (auto: on CUDA whenever BatchNorm trains)
    gpu_decode: bool = True  # on CUDA: decode JPEGs in batches on the GPU (transferkit.data.gpu)
    cache: bool = True  # frozen backbone: embed each image once and train the head on cached features
    cache_dir: str | None = None
    cache_views: int = 0  # augmented views per image to cache in addition to the eval view

    def __post_init__(self) -> None:
        # sync_bn was a bool before it became auto|true|false: config.yaml of older runs still reads
        word = {"true": "true", "yes": "true", "1": "true", "false": "false", "no": "false", "0": "false"}
        object.__setattr__(self, "sync_bn", word.get(str(self.sync_bn).lower(), str(self.sync_bn)))


@dataclass(frozen=True)
class RunCfg:
    """Everything one training run needs."""

    data: DataCfg = field(default_factory=DataCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    strategy: StrategyCfg = field(default_factory=StrategyCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    engine: EngineCfg = field(default_factory=EngineCfg)
    out: str | None = None

    def __post_init__(self) -> None:
        _validate(self)


def _validate(cfg: RunCfg) -> None:
    s, o, e, m = cfg.strategy, cfg.optim, cfg.engine, cfg.model
    checks = [
        (s.name in STRATEGY_NAMES, f"strategy.name {s.name!r} is not one of {', '.join(STRATEGY_NAMES)}"),
        (s.bn in ("auto", "frozen", "train"), f"strategy.bn {s.bn!r} must be auto, frozen or train"),
        (m.head in ("linear", "mlp"), f"model.head {m.head!r} must be linear or mlp"),
        (0.0 <= m.dropout < 1.0, f"model.dropout {m.dropout} must be in [0, 1)"),
        (m.head_fit in ("auto", "probe", "sgd"), f"model.head_fit {m.head_fit!r} must be auto, probe or sgd"),
        (m.head_fit != "probe" or m.head == "linear",
         f"model.head_fit probe fits a linear head, but model.head is {m.head!r}; use --head linear or head_fit sgd"),
        (e.epochs >= 1, f"engine.epochs {e.epochs} must be at least 1"),
        (e.batch_size >= 1, f"engine.batch_size {e.batch_size} must be at least 1"),
        (o.lr > 0, f"optim.lr {o.lr} must be positive"),
        (0.0 < cfg.data.val_fraction < 1.0, f"data.val_fraction {cfg.data.val_fraction} must be in (0, 1)"),
        (cfg.data.augment in ("none", "light"), f"data.augment {cfg.data.augment!r} must be none or light"),
        (s.unfreeze >= 0, f"strategy.unfreeze {s.unfreeze} must be >= 0"),
        (s.warmup_epochs >= 0, f"strategy.warmup_epochs {s.warmup_epochs} must be >= 0"),
        (s.unfreeze_every >= 1, f"strategy.unfreeze_every {s.unfreeze_every} must be >= 1"),
        (s.layer_decay is None or 0 < s.layer_decay <= 1, f"strategy.layer_decay {s.layer_decay} must be in (0, 1]"),
        (s.l2sp >= 0, f"strategy.l2sp {s.l2sp} must be >= 0"),
        (e.cache_views >= 0, f"engine.cache_views {e.cache_views} must be >= 0"),
        *_normalisation_checks(m),
        (e.sync_bn in ("auto", "true", "false"), f"engine.sync_bn {e.sync_bn!r} must be auto, true or false"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _normalisation_checks(m: ModelCfg) -> list[tuple[bool, str]]:
    """model.mean / model.std: three finite numbers each, the stds positive (they divide the pixels)."""
    checks = []
    examples = {"mean": "0.485,0.456,0.406", "std": "0.229,0.224,0.225"}
    for key, values in (("mean", m.mean), ("std", m.std)):
        if values is None:
            continue
        shown = ",".join(f"{v:g}" for v in values)
        checks.append((len(values) == 3, f"model.{key} {shown} must have 3 values (red, green, blue), "
                                         f"e.g. --{key} {examples[key]}; omit it to use the backbone's own"))
        checks.append((all(math.isfinite(v) for v in values), f"model.{key} {shown} must be finite numbers"))
        if key == "std":
            checks.append((all(v > 0 for v in values), f"model.std {shown} must be positive (pixels are divided by "
                                                       "it), e.g. --std 0.229,0.224,0.225"))
    return checks


_SECTIONS = {"data": DataCfg, "model": ModelCfg, "strategy": StrategyCfg, "optim": OptimCfg, "engine": EngineCfg}


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise ConfigError naming the key."""
    text = str(annotation)
    if value is None:
        if "None" in text:
            return None
        raise ConfigError(f"{key} may not be empty; give a value of type {text}")
    try:
        if "tuple" in text:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(float(v) for v in items)
        if text.startswith("bool"):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if text.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if text.startswith("float"):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: cannot read {value!r} as {text}; fix the value in the config or flag") from None


def config_from_dict(raw: Mapping[str, Any]) -> RunCfg:
    """Build a RunCfg from a nested mapping; unknown sections or keys raise ConfigError."""
    kwargs: dict[str, Any] = {}
    for section, values in raw.items():
        if section == "out":
            kwargs["out"] = None if values is None else str(values)
            continue
        if section not in _SECTIONS:
            raise ConfigError(f"unknown config section {section!r}; known: {', '.join(_SECTIONS)}, out")
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise ConfigError(f"config section {section!r} must be a mapping of keys to values")
        cls = _SECTIONS[section]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        parsed = {}
        for key, value in values.items():
            if key not in fields:
                raise ConfigError(
                    f"unknown config key {section}.{key}; known keys in {section}: {', '.join(fields)}"
                )
            parsed[key] = _coerce(value, fields[key].type, f"{section}.{key}")
        kwargs[section] = cls(**parsed)
    return RunCfg(**kwargs)


def config_to_dict(cfg: RunCfg) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) for YAML/JSON."""
    raw = dataclasses.asdict(cfg)
    for section in raw.values():
        if isinstance(section, dict):
            for key, value in section.items():
                if isinstance(value, tuple):
                    section[key] = list(value)
    return raw


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a nested dict (validated later by config_from_dict)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist; pass the path of a YAML or JSON file")
    try:
        text = p.read_text(encoding="utf-8")
        raw = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {p} is not valid YAML/JSON: {exc}".splitlines()[0]) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {p} must hold a mapping of sections (data:, model:, ...)")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Merge dotted overrides ("engine.epochs": 3) into a nested dict; None values are ignored."""
    merged = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    for dotted, value in overrides.items():
        if value is None:
            continue
        if dotted == "out":
            merged["out"] = value
            continue
        section, _, key = dotted.partition(".")
        if not key:
            raise ConfigError(f"override {dotted!r} must look like section.key=value (e.g. engine.epochs=5)")
        merged.setdefault(section, {})
        if not isinstance(merged[section], dict):
            raise ConfigError(f"config section {section!r} must be a mapping")
        merged[section][key] = value
    return merged

