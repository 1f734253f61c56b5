"""Run configuration: frozen dataclasses, loaded from YAML/JSON, overridden from the command line.

Unknown keys are refused (a typo in a config file must not silently fall back to a default), and the
resolved configuration is written into every run folder so a run can be repeated exactly.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

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
    "FlatSetting",
    "FLAT_SETTINGS",
    "flat_settings",
    "coerce_value",
    "setting",
    "did_you_mean",
    "FLAT_KEYS",
    "flat_overrides",
    "parse_overrides",
]


def setting(default: Any, help: str, *, flag: str | None = "") -> Any:
    """A config field that carries its own help text: the one place a setting is described.

    ``flag`` is its flat name, a keyword of ``transferkit.train`` and a ``transferkit train`` option
    ("" = the field's name); None keeps it out of both (set it in a config file or with ``--set``).
    """
    return field(default=default, metadata={"help": help, "flag": flag})


_setting = setting  # the sections below read better with the short private name


@dataclass(frozen=True)
class DataCfg:
    """Where the images are and how they are split and augmented.

    The three data roles (transferkit.data.datasets.prepare_data): train fits, selection chooses the epoch,
    test is only reported.
    """

    path: str = _setting("", "Image folder: class sub-folders, or split folders: train/ with val/ (valid, validation, dev) and/or test/.", flag=None)  # train's DATA
    selection_fraction: float = _setting(
        0.15, "Share carved for the selection split (chooses the epoch): of train/ when DATA has train/ val/ "
              "(val/ is then the test split), of the folder when it has none.")
    test_fraction: float = _setting(
        0.15, "Test share when DATA is one folder of classes (reported, chooses nothing).")
    split_seed: int = _setting(0, "Seed of the stratified train/selection/test split.")
    min_per_class: int = _setting(
        2, "Fewest images of each class in a carved selection or test split (a class too small to give them, and "
           "keep one to train, is refused).")
    sampler: str = _setting(
        "none", "Training batches: none | balanced (every class drawn equally often, with replacement; an "
                "alternative to --class-weights, not an addition).")
    augment: str = _setting("light", "Training augmentation: none | light.")
    workers: int = _setting(-1, "Data loader workers (-1: from the number of cores).")
    validate: bool = _setting(
        True, "Decode every file once up front so bad files are skipped before training.", flag=None)


@dataclass(frozen=True)
class ModelCfg:
    """The backbone and the new head."""

    backbone: str = _setting("efficientnet_lite0", "Backbone name (see `transferkit backbones`) or timm:NAME.")
    weights: str | None = _setting(
        None, "Local weights (.safetensors or state dict) for the backbone (offline weights for timm: names).")
    pretrained: bool = _setting(True, "Start from the backbone's pretrained weights.", flag=None)
    input_size: int | None = _setting(
        None, "Override the backbone's input resolution (e.g. 96 for tiny images).")
    head: str = _setting("linear", "Classifier head: linear | mlp.")
    head_hidden: int = _setting(512, "Hidden units of the mlp head.", flag=None)
    dropout: float = _setting(0.2, "Dropout before the head, in [0, 1).")
    head_fit: str = _setting(
        "auto", "Frozen-backbone linear head: auto (converged probe on cached embeddings, else mini-batch SGD) | "
                "probe (also without the on-disk cache) | sgd (epochs of the optimizer).")
    mean: tuple[float, float, float] | None = _setting(
        None, "Normalisation mean, 3 comma-separated values (default: the backbone's pretrained config; a "
              "--weights file of another training recipe may need other values).")
    std: tuple[float, float, float] | None = _setting(
        None, "Normalisation std, 3 comma-separated positive values (default: the backbone's).")


@dataclass(frozen=True)
class StrategyCfg:
    """Which parameters adapt, when, and how fast relative to the base learning rate."""

    # the valid names live in the strategy registry (a layer above config): the CLI lists them from
    # transferkit.strategy.plan.strategy_names()
    name: str = _setting("feature-extraction", "How the pretrained backbone adapts (auto: the recommender chooses).",
                         flag="strategy")
    backbone_lr_scale: float = _setting(
        0.1, "Backbone rate as a multiple of --lr when no --layer-decay/--group-lr-scales (finetune: 1e-4 vs 1e-3).")
    unfreeze: int = _setting(2, "partial: number of last layer groups to train.")
    warmup_epochs: int = _setting(2, "lp-ft: head-only epochs before everything unfreezes.")
    unfreeze_every: int = _setting(1, "gradual: unfreeze one more layer group every M epochs.")
    layer_decay: float | None = _setting(None, "Layer-wise lr decay: group lr = decay ** distance from the head.")
    group_lr_scales: tuple[float, ...] | None = _setting(
        None, "Explicit per-group lr multipliers, comma separated, stem first .. head last.")
    bn: str = _setting("auto", "BatchNorm policy: auto | frozen | train.")
    l2sp: float = _setting(0.0, "L2-SP strength: pull toward the pretrained weights.")


@dataclass(frozen=True)
class OptimCfg:
    """AdamW with linear warm-up and cosine decay."""

    lr: float = _setting(1e-3, "Head learning rate; other groups get lr x their scale.")
    weight_decay: float = _setting(1e-4, "AdamW weight decay.")
    lr_warmup_epochs: float = _setting(1.0, "Linear learning-rate warm-up, in epochs.", flag=None)
    min_lr_ratio: float = _setting(0.01, "The cosine decay ends at lr x this ratio.", flag=None)
    label_smoothing: float = _setting(0.1, "Label smoothing of the cross-entropy loss.")
    class_weights: str = _setting(
        "auto", "Per-class loss weights: none | balanced (inverse frequency) | effective (Cui et al. 2019, "
                "beta 0.999) | auto (balanced when the training split is imbalanced and --sampler is none).")
    grad_clip: float | None = _setting(5.0, "Clip the gradient norm to this value (null: no clipping).", flag=None)


@dataclass(frozen=True)
class EngineCfg:
    """Loop settings."""

    epochs: int = _setting(10, "Training epochs.")
    batch_size: int = _setting(32, "Images per training step.")
    patience: int = _setting(0, "Early stopping patience in epochs without improvement (0 = off).")
    select: str = _setting(
        "best", "best: keep the epoch the selection split scores highest | last: fixed budget, no selection split.")
    monitor: str = _setting(
        "auto", "Metric that chooses the epoch: accuracy | balanced_accuracy | macro_f1 | roc_auc | auto "
                "(balanced_accuracy when the training split is imbalanced, else accuracy).", flag=None)
    logit_adjust: str = _setting(
        "auto", "Post-hoc logit adjustment (Menon et al. 2021): none | tuned (subtract tau x log prior, tau chosen "
                "on the selection split) | auto (tuned when imbalanced and neither class weights nor the "
                "sampler balance).")
    calibrate: str = _setting(
        "temperature", "Post-hoc calibration of the probabilities: temperature (one temperature fitted by "
                       "log-likelihood on the selection split, Guo et al. 2017; none under --select last) | none.")
    seed: int = _setting(0, "Random seed of the run (initialisation, augmentation, batch order).")
    device: str = _setting("auto", "auto | cpu | cuda | cuda:N")
    amp: bool = _setting(True, "bf16 autocast on CUDA (ignored on the CPU).", flag=None)
    channels_last: bool = _setting(True, "channels-last memory format for the model and batches.", flag=None)
    compile: bool = _setting(
        False, "torch.compile the training forward (worth it on GPUs for long runs).", flag=None)
    sync_bn: str = _setting(
        "auto", "auto | true | false: SyncBatchNorm under torchrun (auto: on CUDA whenever BatchNorm trains).",
        flag=None)
    gpu_decode: bool = _setting(
        True, "On CUDA: decode JPEGs in batches on the GPU (transferkit.data.gpu).", flag=None)
    cache: bool = _setting(
        True, "Cache frozen-backbone embeddings: embed each image once and train the head on cached features.")
    cache_dir: str | None = _setting(
        None, "Embedding cache folder (default: $TRANSFERKIT_CACHE_DIR, else the user cache dir).")
    cache_views: int = _setting(0, "Augmented views per image to cache in addition to the eval view.")

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
    out: str | None = _setting(None, "Run folder (default runs/<timestamp>-<strategy>).")

    def __post_init__(self) -> None:
        _validate(self)


MONITORS = ("auto", "accuracy", "balanced_accuracy", "macro_f1", "roc_auc")


def _validate(cfg: RunCfg) -> None:
    s, o, e, m = cfg.strategy, cfg.optim, cfg.engine, cfg.model
    checks = [
        # strategy.name is not checked here: the names live in the strategy registry, a layer above config
        # (transferkit.strategy.plan.check_strategy_name, called by the Trainer and make_plan)
        (s.bn in ("auto", "frozen", "train"), f"strategy.bn {s.bn!r} must be auto, frozen or train"),
        (m.head in ("linear", "mlp"), f"model.head {m.head!r} must be linear or mlp"),
        (0.0 <= m.dropout < 1.0, f"model.dropout {m.dropout} must be in [0, 1)"),
        (m.head_fit in ("auto", "probe", "sgd"), f"model.head_fit {m.head_fit!r} must be auto, probe or sgd"),
        (m.head_fit != "probe" or m.head == "linear",
         f"model.head_fit probe fits a linear head, but model.head is {m.head!r}; use --head linear or head_fit sgd"),
        (e.epochs >= 1, f"engine.epochs {e.epochs} must be at least 1"),
        (e.monitor in MONITORS, f"engine.monitor {e.monitor!r} must be one of {', '.join(MONITORS)}"),
        (e.logit_adjust in ("auto", "none", "tuned"), f"engine.logit_adjust {e.logit_adjust!r} must be auto, none or tuned"),
        (e.calibrate in ("temperature", "none"), f"engine.calibrate {e.calibrate!r} must be temperature or none"),
        (o.class_weights in ("auto", "none", "balanced", "effective"),
         f"optim.class_weights {o.class_weights!r} must be auto, none, balanced or effective"),
        (cfg.data.sampler in ("none", "balanced"), f"data.sampler {cfg.data.sampler!r} must be none or balanced"),
        (cfg.data.min_per_class >= 1, f"data.min_per_class {cfg.data.min_per_class} must be at least 1"),
        (e.batch_size >= 1, f"engine.batch_size {e.batch_size} must be at least 1"),
        (o.lr > 0, f"optim.lr {o.lr} must be positive"),
        (0.0 < cfg.data.selection_fraction < 1.0,
         f"data.selection_fraction {cfg.data.selection_fraction} must be in (0, 1)"),
        (0.0 < cfg.data.test_fraction < 1.0, f"data.test_fraction {cfg.data.test_fraction} must be in (0, 1)"),
        (cfg.data.selection_fraction + cfg.data.test_fraction < 1.0,
         f"data.selection_fraction + data.test_fraction = {cfg.data.selection_fraction + cfg.data.test_fraction:g} "
         "leaves nothing to train on; keep their sum below 1 (default 0.15 + 0.15)"),
        (e.select in ("best", "last"), f"engine.select {e.select!r} must be best (the epoch the selection split "
         "scores highest) or last (a fixed budget; no selection split)"),
        (e.select == "best" or e.patience == 0,
         f"engine.patience {e.patience} stops early on the selection split, but --select last has none; "
         "drop --patience or use --select best"),
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


def coerce_value(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise ConfigError naming the key."""
    text = str(annotation)
    if isinstance(value, str) and "None" in text and value.strip().lower() in ("", "none", "null"):
        value = None  # "--set optim.grad_clip=null": text for "no value" from a flag
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
            raise ConfigError(f"unknown config section {section!r}{did_you_mean(section, [*_SECTIONS, 'out'])}; "
                              f"known: {', '.join(_SECTIONS)}, out")
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise ConfigError(f"config section {section!r} must be a mapping of keys to values")
        cls = _SECTIONS[section]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        parsed = {}
        for key, value in values.items():
            if key not in fields:
                raise ConfigError(f"unknown config key {section}.{key}{did_you_mean(key, fields)}; "
                                  f"known keys in {section}: {', '.join(fields)}")
            parsed[key] = coerce_value(value, fields[key].type, f"{section}.{key}")
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



def did_you_mean(name: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest known names, or ''."""
    close = difflib.get_close_matches(name, list(known), n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


@dataclass(frozen=True)
class FlatSetting:
    """One config field under its flat name: a keyword of ``transferkit.train`` and a ``transferkit train`` option."""

    name: str  # flat name; the option is --name-with-dashes
    key: str  # dotted config key, e.g. "engine.epochs"
    value_type: type  # int | float | bool | str: the type of one flag value (tuples are given as "a,b,c" text)
    default: Any  # the dataclass default (keyword and option default to None: "not given")
    help: str


def flat_settings(owners: Iterable[tuple[str, type]]) -> dict[str, FlatSetting]:
    """Every field of the ``(key prefix, dataclass)`` owners whose metadata gives it a flat name, in order.

    Used for the run settings here (FLAT_SETTINGS) and for any other settings dataclass (the adaptation's).
    """
    settings: dict[str, FlatSetting] = {}
    for prefix, cls in owners:
        for f in dataclasses.fields(cls):
            flag = f.metadata.get("flag")
            if flag is None:
                continue  # a section of RunCfg, or a setting kept to config files and --set
            base = str(f.type).replace(" | None", "")
            value_type = {"int": int, "float": float, "bool": bool}.get(base, str)
            name = flag or f.name
            if name in settings:
                raise AssertionError(f"two config fields share the flat name {name!r}")
            settings[name] = FlatSetting(name, prefix + f.name, value_type, f.default, f.metadata["help"])
    return settings


FLAT_SETTINGS = flat_settings([(f"{name}.", cls) for name, cls in _SECTIONS.items()] + [("", RunCfg)])
# Flat names -> dotted config keys (derived from the dataclass fields; kept for the modules that import it).
FLAT_KEYS = {name: setting.key for name, setting in FLAT_SETTINGS.items()}


def flat_overrides(keywords: Mapping[str, Any], caller: str = "transferkit.train") -> dict[str, Any]:
    """Flat keyword arguments as dotted overrides ({"epochs": 3} -> {"engine.epochs": 3}).

    Raises:
        ConfigError: a name that is no flat setting, with the closest names and the way to set any config key.
    """
    for name in keywords:
        if name in FLAT_KEYS:
            continue
        dotted = [f"{section}.{f.name}" for section, cls in _SECTIONS.items() for f in dataclasses.fields(cls)
                  if f.name == name]
        if dotted:  # a field without a flat name: reachable through overrides only
            fix = f"pass overrides={{{dotted[0]!r}: ...}}"
        else:
            fix = f"use one of: {', '.join(sorted(FLAT_KEYS))} (or overrides={{'section.key': value}})"
        raise ConfigError(f"{caller}() got an unknown keyword argument {name!r}{did_you_mean(name, FLAT_KEYS)}; "
                          f"{fix}")
    return {FLAT_KEYS[name]: value for name, value in keywords.items()}


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """``--set`` values ("section.key=value") as a dict of dotted key -> text (coerced by config_from_dict)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} must look like section.key=value (e.g. --set optim.weight_decay=0.05)")
        out[key.strip()] = value.strip()
    return out
