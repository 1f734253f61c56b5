"""What the API does: build a config from keywords, train (recommender, trainer, report), resume,
evaluate and predict. ``transferkit.api`` is the facade over these; ``compare`` and ``demo`` build on them.

Layer: above report and the engine (it wires them: the report is an after-fit hook, so the engine never
imports the report stack), below compare/demo, api and the CLI.

>>> import transferkit as tk
>>> result = tk.train("data/hymenoptera", strategy="feature-extraction", epochs=5, out="runs/ants")
>>> tk.evaluate("runs/ants", "data/hymenoptera/val")["metrics"]["accuracy"]
>>> tk.predict("runs/ants", ["photo.jpg"], top_k=2)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torchvision.transforms import v2 as T

from transferkit.config import FLAT_KEYS, RunCfg, apply_overrides, config_from_dict, flat_overrides, load_config
from transferkit.data.datasets import ImageDataset, make_loader
from transferkit.data.layout import evaluation_folder
from transferkit.data.scan import Sample, ScanResult, list_image_files, scan_class_folder, validate
from transferkit.data.transforms import TTA_MODES, TTA_VIEWS, eval_transform, resize_size, tta_views
from transferkit.models.runtime import pick_device, predict_loader, prediction_rows, top_k_row
from transferkit.engine.oom import oom_guard
from transferkit.engine.seen import check_seen
from transferkit.engine.trainer import RunResult, Trainer
from transferkit.errors import ConfigError, DataError
from transferkit.export.deploy import onnx_cpu_plan, onnx_predict, resolve_engine, run_engine
from transferkit.export.runfiles import LoadedRun, load_run
from transferkit.fileio import write_json
from transferkit.metrics.classification import detailed_metrics

__all__ = ["train", "resume", "evaluate", "predict", "load_run", "build_config", "explicit_keys", "write_run_report", "FLAT_KEYS"]

def build_config(
    data: str | os.PathLike | None = None,
    config: str | os.PathLike | Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> RunCfg:
    """Config file (or dict) < dotted ``overrides`` < keyword arguments (FLAT_KEYS names)."""
    raw, dotted = _config_sources(data, config, overrides, kwargs)
    return config_from_dict(apply_overrides(raw, dotted))


def _config_sources(
    data: str | os.PathLike | None,
    config: str | os.PathLike | Mapping[str, Any] | None,
    overrides: Mapping[str, Any] | None,
    kwargs: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(nested values of the config file or dict, dotted values of overrides and keywords).

    Keywords are checked first, before any file is read: a misspelt name fails with "did you mean".
    """
    keywords = flat_overrides(kwargs)
    raw: dict[str, Any] = {}
    if config is not None:
        raw = dict(config) if isinstance(config, Mapping) else load_config(config)
    dotted: dict[str, Any] = {**(overrides or {}), **keywords}
    if data is not None:
        dotted["data.path"] = str(data)
    return raw, dotted


def explicit_keys(raw: Mapping[str, Any], dotted: Mapping[str, Any]) -> frozenset[str]:
    """Dotted keys the user set: every key of the config file, every override or keyword that is not None.

    A value equal to the default still counts: ``--epochs 10`` is a decision, not an omission.
    """
    keys = {key for key, value in dotted.items() if value is not None}
    for section, values in raw.items():
        if isinstance(values, Mapping):
            keys.update(f"{section}.{key}" for key in values)
        elif values is not None:
            keys.add(section)  # top-level keys such as "out"
    return frozenset(keys)


def train(
    data: str | os.PathLike | None = None,
    *,
    config: str | os.PathLike | Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    quiet: bool = False,
    **kwargs: Any,
) -> RunResult:
    """Train a classifier on an image folder; returns the run folder and its summary.

    Args:
        data: a folder of class sub-folders, or split folders: train/ with val/ (valid, validation, dev) and/or test/ (see transferkit.data.layout).
        config: a YAML/JSON file or a dict with sections data/model/strategy/optim/engine.
        overrides: dotted keys, e.g. {"engine.epochs": 3}.
        quiet: no console output.
        **kwargs: friendly names (see FLAT_KEYS): backbone, strategy, epochs, lr, batch_size, seed, out ...

    With ``strategy="auto"`` the recommender chooses the strategy and fills the settings the user left
    unset; keywords, ``overrides`` and config-file values always win over the recommendation.
    """
    raw, dotted = _config_sources(data, config, overrides, kwargs)
    cfg = config_from_dict(apply_overrides(raw, dotted))
    if cfg.strategy.name == "auto":  # the recommendation fills only what the user left unset
        from transferkit.recommender import resolve_auto

        cfg = resolve_auto(cfg, quiet=quiet, explicit=explicit_keys(raw, dotted))
    return Trainer(cfg, quiet=quiet, after_fit=(write_run_report,)).fit()


def resume(run_dir: str | os.PathLike, quiet: bool = False) -> RunResult:
    """Continue an interrupted run from its last completed epoch."""
    return Trainer.resume(run_dir, quiet=quiet, after_fit=(write_run_report,)).fit()


def write_run_report(run_dir: Path, model: Any) -> None:
    """The after-fit hook that writes report.html (matplotlib and Grad-CAM load only when a run finishes)."""
    from transferkit import report

    report.build_run_report(run_dir, model=model)


def _evaluation_scan(data: str | os.PathLike, classes: list[str]) -> ScanResult:
    """The scan of an evaluation folder (a folder of classes, else its test/, else its val/, else a lone train/;
    :func:`transferkit.data.layout.evaluation_folder`) with the model's classes as its label space.

    So a folder holding only some of the model's classes (even one) can be evaluated; a folder that
    is not one of the model's classes is refused by the scan, naming it.
    """
    return scan_class_folder(evaluation_folder(data), classes=list(classes))


def _labelled_samples(run: LoadedRun, data: str | os.PathLike) -> tuple[list[Sample], list[tuple[str, str]]]:
    """Samples of an evaluation folder, labelled with the run's class indices (by class name)."""
    scan = _evaluation_scan(data, run.classes)
    unknown = sorted(set(scan.classes) - set(run.classes))
    if unknown:
        raise DataError(
            f"{data}: class folder(s) {', '.join(unknown)} are not classes of the model ({', '.join(run.classes)}); "
            "evaluate on a folder whose sub-folders are the model's classes"
        )
    scan = validate(scan, workers=max(1, os.cpu_count() or 1), draft_size=resize_size(run.spec))
    remap = {i: run.classes.index(c) for i, c in enumerate(scan.classes)}
    samples = [Sample(s.path, remap[s.label]) for s in scan.samples]
    return samples, list(scan.skipped)


def _leave_out_seen(loaded: LoadedRun, data: str | os.PathLike, samples: list[Sample], include_seen: bool
                    ) -> tuple[list[Sample], dict[str, Any], list[dict[str, str]]]:
    """(samples to score, ``seen_check``, ``seen_files``): the images the run trained or selected on are left
    out, unless ``include_seen``; refused when nothing else is left."""
    check = check_seen(loaded.path, [s.path for s in samples])
    seen_files = [{"path": s.path, "role": role} for s, role in zip(samples, check.roles) if role]
    n_seen, n_given = len(seen_files), len(samples)
    if n_seen and n_seen == n_given and not include_seen:
        raise DataError(
            f"{data}: all {n_given} images were used to train or select run {loaded.path} ({check.detail}); their "
            "figures would measure memory, not generalisation. Pass held-out images (the run's test split is "
            "listed in its split.json), or --include-seen (include_seen=True) to score them anyway"
        )
    if check.method == "none":
        summary = (f"WARNING: could not check whether these {n_given} images were used for training or selection "
                   f"({check.detail}); if they were, these figures are not an unbiased estimate")
    elif include_seen and n_seen:
        summary = f"includes {n_seen} images seen in training or selection: not an unbiased estimate ({check.detail})"
    elif n_seen:
        summary = (f"{n_seen} of {n_given} images were used for training or selection and are not scored "
                   f"({check.detail}; listed in evaluation.json under seen_files; --include-seen scores them)")
    else:
        summary = f"none of the {n_given} images was used for training or selection ({check.detail})"
    seen_check = {"method": check.method, "detail": check.detail, "images_given": n_given,
                  "left_out": 0 if include_seen else n_seen, "included": n_seen if include_seen else 0,
                  "summary": summary}
    if not include_seen:
        samples = [s for s, role in zip(samples, check.roles) if not role]
    return samples, seen_check, seen_files


def _infer(loaded: LoadedRun, samples: list[Sample], batch_size: int, engine: str, what: str,
           on_failed: Any, tta: str = "none") -> tuple[dict[str, Any], str]:
    """Softmax probabilities of ``samples`` (``predict_loader``'s result) with the chosen engine, and its name.

    ``tta``: average the probabilities over test-time views (:func:`transferkit.data.transforms.tta_views`).
    """
    if tta not in TTA_MODES:
        raise ConfigError(f"--tta {tta!r} is not one of {', '.join(TTA_MODES)}")
    device = pick_device()
    chosen = resolve_engine(engine, device)
    if chosen == "onnx":
        plan = onnx_cpu_plan()
        return onnx_predict(run_engine(loaded, threads=plan.threads), samples, loaded.spec, batch_size, plan.workers,
                            on_failed, tta=tta), "onnxruntime"
    loaded.model.to(device)
    temperature = loaded.temperature  # calibration: the ONNX graph applies it inside, PyTorch here
    if tta == "none":
        dataset = ImageDataset(samples, eval_transform(loaded.spec), resize_size(loaded.spec))

        def forward(images: Any) -> Any:
            return (loaded.model(images).float() / temperature).softmax(dim=1)
    else:  # uint8 views [B, V, 3, H, W], normalised here by the eval transform's own ops
        dataset = ImageDataset(samples, tta_views(loaded.spec, tta), resize_size(loaded.spec))
        batch_size = max(1, batch_size // TTA_VIEWS[tta])
        normalise = T.Compose([T.ToDtype(torch.float32, scale=True), T.Normalize(loaded.spec.mean, loaded.spec.std)])

        def forward(images: Any) -> Any:
            b, v = images.shape[:2]
            probs = (loaded.model(normalise(images.flatten(0, 1))).float() / temperature).softmax(dim=1)
            return probs.view(b, v, -1).mean(dim=1)

    with oom_guard(batch_size, what):
        return predict_loader(loaded.model, make_loader(dataset, batch_size, False, 0), device, on_failed=on_failed,
                              forward=forward), "torch"


def evaluate(
    run: str | os.PathLike | LoadedRun, data: str | os.PathLike, out: str | os.PathLike | None = None, batch_size: int = 64,
    engine: str = "auto", tta: str = "none", include_seen: bool = False,
) -> dict[str, Any]:
    """Metrics of a trained run on a labelled folder (whole folder, or its test/ else val/ split).

    Images the run trained or selected on (matched by content with the run's ``seen.json``) are left out
    and listed, unless ``include_seen``: scoring them measures memory, not generalisation.

    Writes ``evaluation.json`` into ``out`` (default: the run folder) and returns the same dict:
    summary metrics, per-class precision/recall/F1, confusion matrix, calibration, every file
    that was not used with its reason (``skipped_files``), the seen-image check (``seen_check``: method,
    counts and a ``summary`` sentence) and the images it found (``seen_files``: path and role).

    Raises:
        DataError: the folder cannot be used (no images, classes the model does not know, only images
            the run trained or selected on without ``include_seen`` ...).
        CheckpointError: the run folder holds no loadable model.
    """
    loaded = run if isinstance(run, LoadedRun) else load_run(run)
    samples, skipped = _labelled_samples(loaded, data)
    samples, seen_check, seen_files = _leave_out_seen(loaded, data, samples, include_seen)
    failed: list[tuple[str, str]] = []
    result, used = _infer(loaded, samples, batch_size, engine, "evaluation",
                          lambda items: failed.extend((samples[i].path, r) for i, r in items), tta)
    if len(result["labels"]) == 0:  # every file became unreadable after the scan checked it
        example = f" (e.g. {failed[0][0]!r}: {failed[0][1]})" if failed else ""
        raise DataError(f"{data}: none of the images could be read{example}; check the files")
    report = detailed_metrics(result["labels"], result["outputs"], loaded.classes)
    report["data"] = str(data)
    report["engine"] = used
    report["tta"] = tta
    report["skipped_files"] = [{"path": p, "reason": r} for p, r in skipped + failed]
    report["seen_check"], report["seen_files"] = seen_check, seen_files
    target = Path(out) if out else loaded.path
    write_json(target / "evaluation.json", report)
    rows = prediction_rows([s.path for s in samples], result["indices"], result["labels"], result["outputs"])
    from transferkit.report import build_evaluation_report

    build_evaluation_report(target, report, rows, run=loaded)  # evaluation.html beside evaluation.json
    return report


def predict(
    run: str | os.PathLike | LoadedRun, paths: Sequence[str | os.PathLike], top_k: int = 1, batch_size: int = 64,
    engine: str = "auto", tta: str = "none",
) -> list[dict[str, Any]]:
    """Top-k predictions for files and folders. A bad file gets a row with ``error``; the rest still predict.

    ``engine``: ``auto`` (ONNX Runtime on the CPU when installed, PyTorch on a GPU), ``torch`` or ``onnx``.
    ``tta``: ``none``, ``flip`` (2 views) or ``flip-crops`` (10 views); the views' probabilities are averaged.
    """
    loaded = run if isinstance(run, LoadedRun) else load_run(run)
    files = list_image_files(paths)
    if not files:
        raise DataError(f"no image files found in {', '.join(map(str, paths))}; pass image files or folders of images")
    k = max(1, min(top_k, len(loaded.classes)))
    rows: dict[int, dict[str, Any]] = {}
    missing = [i for i, f in enumerate(files) if not os.path.isfile(f)]
    for i in missing:
        rows[i] = {"path": files[i], "error": "file not found"}
    keep = [i for i in range(len(files)) if i not in rows]
    subset = [Sample(files[i], -1) for i in keep]

    def on_failed(items: list[tuple[int, str]]) -> None:
        for j, reason in items:
            rows[keep[j]] = {"path": files[keep[j]], "error": reason}

    result, _ = _infer(loaded, subset, batch_size, engine, "prediction", on_failed, tta)
    for j, row in zip(result["indices"], prediction_rows([s.path for s in subset], result["indices"],
                                                          result["labels"], result["outputs"])):
        rows[keep[int(j)]] = top_k_row(row, loaded.classes, k)
    return [rows[i] for i in range(len(files))]
