"""Exporting a trained run (ONNX, TorchScript, int8) with a parity check, and the run's ONNX inference engine.

``export_run`` writes the file, then proves it: on the run's test images (the split recorded in split.json)
the exported model's logits must be within ``PARITY_TOL`` of PyTorch's and its top-1 identical on every image.
The proof is printed and written beside the file (``<name>.parity.json``); a file that fails it is not kept.
``--int8`` is accepted or refused on the selection split (:mod:`transferkit.export.int8`); its test figures
are measured and recorded as the int8 model's own, and decide nothing.

``run_engine`` gives ``predict``/``evaluate`` an ONNX Runtime session for a run: the graph is exported once
into ``<run>/onnx/`` (named by the weights' hash, so retrained weights never reuse a stale graph), its SHA-256
recorded beside it and checked before every later use (a graph that changed is exported again, with a warning).
A read-only run's graph goes to a folder only this user can write (:func:`transferkit.export.onnx.private_graph_dir`).
Graph metadata names the run by its folder name only, never its absolute path.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2 as T

from transferkit._version import __version__
from transferkit.data.datasets import CpuPlan, ImageDataset, available_cores, collate_skipping, cpu_plan, torch_threads
from transferkit.data.scan import Sample
from transferkit.data.transforms import resize_size
from transferkit.errors import CheckpointError, ConfigError, DataError, TransferKitError
from transferkit.export.onnx import (
    OnnxModel,
    Preprocessed,
    export_onnx,
    _quiet_export,
    export_torchscript,
    open_recorded_graph,
    private_graph_dir,
    record_graph,
    require_onnx,
    resize_policy,
    uint8_pipeline,
)
from transferkit.export.int8 import decide, int8_metadata, quantise_static, write_metadata
from transferkit.export.runfiles import MODEL_FILE, LoadedRun, load_run
from transferkit.models.pretrained import file_sha256
from transferkit.fileio import write_json

__all__ = ["FORMATS", "ENGINES", "PARITY_TOL", "INT8_MAX_DROP", "export_run", "run_metadata", "run_engine", "resolve_engine",
           "onnx_predict", "onnx_cpu_plan", "backbone_engine", "split_samples", "uint8_batches", "torch_logits", "classifier_wrapper"]

FORMATS = ("onnx", "torchscript")
PARITY_TOL = 1e-4  # max |logit difference| of an fp32 export to PyTorch
INT8_MAX_DROP = 0.01  # --int8 refuses (without --force) when selection-split accuracy drops by more than this
ENGINE_DIR = "onnx"


def split_samples(run_dir: str | os.PathLike[str], split: str) -> tuple[list[Sample], list[str]]:
    """The images of one split of a run (split.json), and the files of it that are gone."""
    path = Path(run_dir) / "split.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} cannot be read ({exc}); export needs a run folder written by `transferkit train`") from None
    root = Path(record["root"])
    samples, gone = [], []
    for rel, label in record.get(split, []):
        file = root / rel
        (samples.append(Sample(str(file), int(label))) if file.is_file() else gone.append(str(file)))
    return samples, gone


def run_metadata(run: LoadedRun) -> dict[str, Any]:
    """What a client of the exported model needs: classes, input, preprocessing and the run's figures."""
    summary: dict[str, Any] = {}
    try:
        summary = json.loads((run.path / "summary.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        pass
    return {
        "format": "transferkit-classifier",
        "format_version": 1,
        "classes": list(run.classes),
        "input_size": run.spec.input_size,
        "input": {"name": "images", "dtype": "uint8", "layout": "NHWC", "channels": "RGB"},
        "outputs": {"logits": "raw class scores", "probs": "softmax of logits / temperature"},
        "temperature": run.temperature,
        "resize": resize_policy(run.spec),
        "mean": list(run.spec.mean),
        "std": list(run.spec.std),
        "backbone": run.spec.name,
        "arch": run.spec.arch,
        "transferkit_version": __version__,
        "weights_sha256": file_sha256(run.path / run.meta.get("weights", MODEL_FILE)),
        "run": run.path.name,  # the folder's name: an absolute path would tell every client the server's layout
        "test_metrics": summary.get("metrics", {}),
        "test_ci95": summary.get("ci95", {}),
        "test_n": (summary.get("protocol", {}).get("test") or {}).get("n"),
    }


def classifier_wrapper(run: LoadedRun) -> Preprocessed:
    """A CPU fp32 copy of the run's model behind its preprocessing (the run's own model is left as it is).

    Its ``probs`` are at the run's calibration temperature, as ``predict`` answers; ``logits`` stay raw.
    """
    net = copy.deepcopy(run.model).to("cpu").float().eval()
    return Preprocessed(net, run.spec.mean, run.spec.std, ("logits", "probs"), temperature=run.temperature).eval()


@dataclass
class Uint8Batch:
    indices: np.ndarray  # positions in the given samples
    images: np.ndarray  # uint8 [n, H, W, 3]
    labels: np.ndarray
    failed: list[tuple[int, str]]


def uint8_batches(samples: Sequence[Sample], spec: Any, batch_size: int = 64, workers: int = -1,
                  pipeline: Callable[[Any], torch.Tensor] | None = None) -> Iterator[Uint8Batch]:
    """Decode ``samples`` into the graph's input (the evaluation geometry, uint8 NHWC) in loader workers.

    ``pipeline``: PIL -> uint8 CHW (default :func:`uint8_pipeline`), or ``[V, 3, H, W]`` views per image
    (:func:`transferkit.data.transforms.tta_views`), which come out as ``images[n, V, H, W, 3]``.
    """
    dataset = ImageDataset(list(samples), pipeline or uint8_pipeline(spec), resize_size(spec))
    n_workers = cpu_plan(workers).workers
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=n_workers, collate_fn=collate_skipping,
                        prefetch_factor=4 if n_workers else None)
    for batch in loader:
        if batch["images"] is None:
            yield Uint8Batch(np.zeros(0, np.int64), np.zeros((0, spec.input_size, spec.input_size, 3), np.uint8),
                             np.zeros(0, np.int64), batch["failed"])
            continue
        images = batch["images"].movedim(-3, -1).contiguous().numpy()  # [.., 3, H, W] -> [.., H, W, 3]
        yield Uint8Batch(batch["indices"].numpy(), images, batch["labels"].numpy(), batch["failed"])


@torch.inference_mode()
def torch_logits(model: torch.nn.Module, spec: Any, images: np.ndarray) -> np.ndarray:
    """PyTorch's logits for uint8 NHWC images, normalised by torchvision's own ops (the training eval transform)."""
    normalise = T.Compose([T.ToDtype(torch.float32, scale=True), T.Normalize(spec.mean, spec.std)])
    x = normalise(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    return model(x).float().numpy()


def _decode_all(samples: Sequence[Sample], spec: Any, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for batch in uint8_batches(list(samples)[:limit] if limit else samples, spec):
        images.append(batch.images)
        labels.append(batch.labels)
    if not images or not sum(len(x) for x in images):
        raise DataError("none of the run's images could be read for the parity check; is the data folder still there?")
    return np.concatenate(images), np.concatenate(labels)


def _logits(run_exported: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    return np.concatenate([run_exported(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def _parity(run_exported: Callable[[np.ndarray], np.ndarray], reference: np.ndarray, images: np.ndarray,
            labels: np.ndarray, batch_size: int = 64, logits: np.ndarray | None = None) -> dict[str, Any]:
    logits = _logits(run_exported, images, batch_size) if logits is None else logits
    diff = np.abs(logits - reference)
    same = logits.argmax(1) == reference.argmax(1)
    return {
        "n": int(len(images)),
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "top1_agreement": float(same.mean()),
        "top1_disagreements": int((~same).sum()),
        "accuracy_torch": float((reference.argmax(1) == labels).mean()),
        "accuracy_exported": float((logits.argmax(1) == labels).mean()),
    }


def _timed(fn: Callable[[np.ndarray], Any], images: np.ndarray, batch_size: int = 32, repeats: int = 2) -> float:
    """Images per second of ``fn`` over ``images`` in batches (best of ``repeats``; compute only)."""
    fn(images[:batch_size])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(0, len(images), batch_size):
            fn(images[i:i + batch_size])
        best = min(best, time.perf_counter() - started)
    return len(images) / best


def _onnx_runner(path: Path, threads: int | None) -> Callable[[np.ndarray], np.ndarray]:
    model = OnnxModel(path, threads=threads)
    return lambda x: model.run(x)["logits"]


def export_run(
    run_dir: str | os.PathLike[str],
    fmt: str,
    out: str | os.PathLike[str],
    *,
    int8: bool = False,
    force: bool = False,
    calibration_images: int = 256,
    say: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Export a run as ``fmt`` to ``out``, check parity on its test split, and return the record written beside it.

    ``int8``: ONNX Runtime static quantisation (QDQ, per-channel weights) calibrated on up to
    ``calibration_images`` training images. It is refused when it costs more than ``INT8_MAX_DROP`` of the
    selection split's accuracy, or when the run has no selection split, unless ``force``; the test-accuracy
    change and the speed ratio to fp32 are then measured and recorded (the test split decides nothing).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not supported; choose one of {', '.join(FORMATS)}")
    if int8 and fmt != "onnx":
        raise ConfigError("--int8 quantises with ONNX Runtime; use it with --format onnx")
    if int8 and calibration_images < 1:
        raise ConfigError(f"--calibration-images {calibration_images} must be at least 1 (default 256)")
    if fmt == "onnx":
        require_onnx("--format onnx")
    target = Path(out)
    if target.is_dir():
        raise ConfigError(f"--out {target} is a folder; give the file to write, e.g. {target / ('model.' + ('onnx' if fmt == 'onnx' else 'pt'))}")
    run = load_run(run_dir)
    samples, gone = split_samples(run_dir, "test")
    if not samples:
        raise DataError(f"{run_dir}: none of the test images in split.json exist ({len(gone)} missing); "
                        "the parity check needs them: restore the data folder the run was trained on")
    meta = run_metadata(run)
    wrapper = classifier_wrapper(run)
    say(f"decoding {len(samples)} test image(s) for the parity check ...")
    images, labels = _decode_all(samples, run.spec)
    reference = torch_logits(wrapper.net, run.spec, images)
    threads = cpu_plan(0).threads
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:  # same file system: the final move is atomic
        staged = Path(tmp) / target.name
        if fmt == "onnx":
            export_onnx(wrapper, run.spec.input_size, staged, meta)
            runner = _onnx_runner(staged, threads)
        else:
            export_torchscript(wrapper, run.spec.input_size, staged, meta)
            with _quiet_export():
                scripted = torch.jit.load(str(staged))

            def runner(x: np.ndarray) -> np.ndarray:
                with torch.inference_mode():
                    return scripted(torch.from_numpy(x))[0].numpy()
        with torch_threads(threads):
            parity = _parity(runner, reference, images, labels)
        parity.update(tolerance=PARITY_TOL, images=f"the run's test split ({len(samples)} listed, {len(gone)} missing)")
        parity["passed"] = parity["max_abs_logit_diff"] <= PARITY_TOL and parity["top1_disagreements"] == 0
        record: dict[str, Any] = {"file": str(target), "format": fmt, "metadata": meta, "parity": parity}
        if not parity["passed"]:
            raise TransferKitError(
                f"the exported {fmt} model disagrees with PyTorch on the test split (max |logit diff| "
                f"{parity['max_abs_logit_diff']:.2e} > {PARITY_TOL:g} or {parity['top1_disagreements']} top-1 "
                "changes); nothing was written. Run with --debug and report it: it is a bug")
        say(f"parity on {parity['n']} test images: max |logit diff| {parity['max_abs_logit_diff']:.2e} "
            f"(tolerance {PARITY_TOL:g}), top-1 identical on all")
        if int8:  # refused (raises) on the selection split before the test split is scored
            record["int8"] = _quantise(run, wrapper, staged, Path(tmp) / "int8.onnx", meta, (images, labels, reference),
                                       calibration_images, threads, force, say)
            os.replace(Path(tmp) / "int8.onnx", staged)
        os.replace(staged, target)
    record["bytes"] = target.stat().st_size
    write_json(parity_file(target), record)
    return record


def parity_file(target: Path) -> Path:
    """``model.onnx`` -> ``model.parity.json`` (the proof beside the file)."""
    return target.with_name(target.stem + ".parity.json")


def _quantise(run: LoadedRun, wrapper: Preprocessed, fp32: Path, out: Path, meta: dict[str, Any],
              test: tuple[np.ndarray, np.ndarray, np.ndarray], calibration_images: int, threads: int, force: bool,
              say: Callable[[str], None]) -> dict[str, Any]:
    """Quantise, accept or refuse on the selection split (:func:`transferkit.export.int8.decide`), then measure
    the accepted model on the test split (``test``: images, labels, fp32 logits) and write those figures into
    its metadata as its own."""
    train, _ = split_samples(run.path, "train")
    rng = np.random.default_rng(0)
    pick = sorted(rng.choice(len(train), size=min(calibration_images, len(train)), replace=False).tolist()) if train else []
    if not pick:
        raise DataError(f"{run.path}: no training images are left to calibrate int8 quantisation on")
    say(f"calibrating int8 on {len(pick)} training image(s) ...")
    quantise_static(fp32, out, _decode_all([train[i] for i in pick], run.spec)[0])
    int8_run = _onnx_runner(out, threads)
    selection, _ = split_samples(run.path, "selection")
    check = None
    if selection:
        say(f"checking int8 against fp32 on {len(selection)} selection image(s) ...")
        sel_images, sel_labels = _decode_all(selection, run.spec)
        check = _parity(int8_run, torch_logits(wrapper.net, run.spec, sel_images), sel_images, sel_labels)
    decision = decide(check, INT8_MAX_DROP, force)
    images, labels, reference = test
    logits = _logits(int8_run, images)
    quality = _parity(int8_run, reference, images, labels, logits=logits)  # reported; decides nothing
    write_metadata(out, int8_metadata(meta, logits, labels, run.classes, run.temperature, decision))
    fp32_speed, int8_speed = _timed(_onnx_runner(fp32, threads), images), _timed(_onnx_runner(out, threads), images)
    result = {
        "calibration_images": len(pick),
        "decision": decision,
        "measured_on": "the run's test split (reported; decides nothing)",
        "accuracy_fp32": quality["accuracy_torch"],
        "accuracy_int8": quality["accuracy_exported"],
        "accuracy_drop": quality["accuracy_torch"] - quality["accuracy_exported"],
        "top1_agreement_with_fp32": quality["top1_agreement"],
        "n": quality["n"],
        "images_per_s_fp32": fp32_speed,
        "images_per_s_int8": int8_speed,
        "speed_ratio": int8_speed / fp32_speed,
        "threads": threads,
        "timing": "compute only, ONNX Runtime CPU, batch 32, best of 2 passes over the test images",
    }
    verdict = "accepted" if decision["accepted"] else "over the limit, written with --force,"
    checked = (f"{verdict} on the selection split: accuracy {decision['accuracy_int8']:.3f} vs fp32 "
               f"{decision['accuracy_fp32']:.3f} (n={decision['n']})" if check else "not checked (no selection split; --force)")
    say(f"int8 {checked}; test accuracy {result['accuracy_int8']:.3f} vs fp32 {result['accuracy_fp32']:.3f} "
        f"(n={result['n']}), {result['speed_ratio']:.2f}x the fp32 speed ({int8_speed:.1f} vs {fp32_speed:.1f} images/s)")
    return result


def run_engine(run: LoadedRun, threads: int | None = None) -> OnnxModel:
    """An ONNX Runtime session for a run, exported on first use into ``<run>/onnx/`` and parity-checked then.

    Named by the weights' SHA-256 and the torch version (the exporter), so a changed model never reuses an
    old graph; the graph's own SHA-256 is recorded when it is written and checked before each use. A read-only
    run folder gets the graph in a private folder (mode 0700, this user's) instead, checked against PyTorch
    again on every use.
    """
    require_onnx("--engine onnx")
    meta = run_metadata(run)
    name = f"model-{meta['weights_sha256'][:16]}-t{run.temperature:.6g}-torch{torch.__version__.split('+')[0]}.onnx"
    own = run.path / ENGINE_DIR / name
    engine = open_recorded_graph(own, threads)
    if engine is not None:
        return engine
    try:
        return _export_engine(run, meta, own, threads)
    except (OSError, CheckpointError):  # a read-only run folder: a private folder instead
        pass
    private = private_graph_dir() / name
    engine = open_recorded_graph(private, threads)
    if engine is not None:
        _smoke_parity(engine, classifier_wrapper(run), run.spec)  # every use of a graph outside the run is checked
        return engine
    try:
        return _export_engine(run, meta, private, threads)
    except (OSError, CheckpointError) as exc:
        raise TransferKitError(f"could not write the ONNX engine's graph for {run.path} ({exc}); "
                               "use --engine torch") from None


def _export_engine(run: LoadedRun, meta: dict[str, Any], path: Path, threads: int | None) -> OnnxModel:
    """Export the run's graph to ``path``, check it against PyTorch, and record its SHA-256."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    wrapper = classifier_wrapper(run)
    export_onnx(wrapper, run.spec.input_size, path, meta)
    engine = OnnxModel(path, threads=threads)
    _smoke_parity(engine, wrapper, run.spec)
    record_graph(engine)
    return engine


def _smoke_parity(engine: OnnxModel, wrapper: Preprocessed, spec: Any) -> None:
    """A freshly exported engine graph must match PyTorch on random images before it is used."""
    images = np.random.default_rng(0).integers(0, 256, (2, spec.input_size, spec.input_size, 3), dtype=np.uint8)
    reference = torch_logits(wrapper.net, spec, images)
    diff = float(np.abs(engine.run(images)[wrapper.outputs[0]] - reference).max())
    if diff > PARITY_TOL * max(1.0, float(np.abs(reference).max())):
        engine.path.unlink(missing_ok=True)
        raise TransferKitError(f"the ONNX graph of {spec.name} differs from PyTorch by {diff:.2e}; "
                               "use --engine torch and report it")


def backbone_engine(backbone: Callable[[], torch.nn.Module], spec: Any, path: Path, threads: int | None = None) -> OnnxModel:
    """ONNX Runtime on a backbone's pooled features (uint8 NHWC in), exported to ``path`` on first use.

    The caller names ``path`` by everything the features depend on (the embedding cache's identity), so an
    existing graph whose bytes match its recorded SHA-256 is used as it is, and ``backbone()`` (building the
    network) is called only to export one.
    """
    require_onnx("--engine onnx")
    engine = open_recorded_graph(path, threads)
    if engine is not None:
        return engine
    wrapper = Preprocessed(copy.deepcopy(backbone()).to("cpu").float().eval(), spec.mean, spec.std, ("features",)).eval()
    wrapper.net.to(memory_format=torch.contiguous_format)
    meta = {"format": "transferkit-backbone", "format_version": 1, "backbone": spec.name, "arch": spec.arch,
            "input_size": spec.input_size, "feature_dim": spec.feature_dim, "resize": resize_policy(spec),
            "mean": list(spec.mean), "std": list(spec.std), "transferkit_version": __version__}
    export_onnx(wrapper, spec.input_size, path, meta)
    engine = OnnxModel(path, threads=threads)
    _smoke_parity(engine, wrapper, spec)
    record_graph(engine)
    return engine


ENGINES = ("auto", "torch", "onnx")


def resolve_engine(engine: str, device: Any) -> str:
    """``auto``: ONNX Runtime on the CPU when it is installed (2.4x PyTorch's speed for Lite0 on 2 cores,
    benchmarks/cpu_inference.py), PyTorch on a GPU. ``onnx`` on a GPU device is refused rather than silently
    run on the CPU."""
    if engine not in ENGINES:
        raise ConfigError(f"--engine {engine!r} is not one of {', '.join(ENGINES)}")
    on_cpu = getattr(device, "type", str(device)) == "cpu"
    if engine == "auto":
        from transferkit.export.onnx import onnx_available

        return "onnx" if on_cpu and onnx_available() else "torch"
    if engine == "onnx":
        require_onnx("--engine onnx")
        if not on_cpu:
            raise ConfigError(f"--engine onnx runs on the CPU, but the device is {device}; "
                              "use --engine torch (or auto) on a GPU")
    return engine


def onnx_cpu_plan(workers: int = -1) -> CpuPlan:
    """The CPU plan for ONNX Runtime: on 2 cores or fewer, decode between batches in this process and give
    ONNX Runtime every core; with more cores, :func:`~transferkit.data.datasets.cpu_plan`'s decoding workers.

    Measured on 2 idle cores, 384 flower photos (benchmarks/cpu_inference.py): 1 decoding worker + 1 ONNX
    Runtime thread embedded slower end to end than no worker + 2 threads, since ONNX Runtime computes about
    1.5x faster on 2 threads than on 1 and decoding (draft-mode JPEG) is a small share of the time. Threads
    plus workers still never exceed the cores. An explicit ``workers`` wins.
    """
    if workers < 0 and available_cores() <= 2:
        workers = 0
    return cpu_plan(workers)


def onnx_predict(engine: OnnxModel, samples: Sequence[Sample], spec: Any, batch_size: int = 64, workers: int = -1,
                 on_failed: Callable[[list[tuple[int, str]]], None] | None = None, output: str = "probs",
                 tta: str = "none") -> dict[str, np.ndarray]:
    """``predict_loader``'s result (``outputs``, ``labels``, ``indices``) computed by ONNX Runtime.

    Decoding runs in the CPU plan's loader workers while the session computes the previous batch. ``tta``:
    the outputs are averaged over the test-time views of :func:`transferkit.data.transforms.tta_views`.
    """
    from transferkit.data.transforms import TTA_VIEWS, tta_views

    views = TTA_VIEWS[tta]
    pipeline = tta_views(spec, tta) if tta != "none" else None
    outputs, labels, indices = [], [], []
    for batch in uint8_batches(samples, spec, max(1, batch_size // views), workers, pipeline):
        if batch.failed and on_failed is not None:
            on_failed(batch.failed)
        if not len(batch.indices):
            continue
        if pipeline is None:
            outputs.append(engine.run(batch.images)[output])
        else:  # [n, V, H, W, 3] -> one call on n x V images -> mean over each image's views
            n = len(batch.images)
            rows = engine.run(batch.images.reshape(n * views, *batch.images.shape[2:]))[output]
            outputs.append(rows.reshape(n, views, -1).mean(axis=1))
        labels.append(batch.labels)
        indices.append(batch.indices)
    if not outputs:
        return {"outputs": np.zeros((0, 0), np.float32), "labels": np.zeros(0, np.int64), "indices": np.zeros(0, np.int64)}
    return {"outputs": np.concatenate(outputs), "labels": np.concatenate(labels), "indices": np.concatenate(indices)}
