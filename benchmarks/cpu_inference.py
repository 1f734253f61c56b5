"""CPU inference benchmark (issue 17): PyTorch vs ONNX Runtime, fp32 and int8, on the same images in one run.

Command (the recorded numbers came from exactly this)::

    .venv/bin/python benchmarks/cpu_inference.py                 # 384 flowers photos, 3 interleaved repeats
    .venv/bin/python benchmarks/cpu_inference.py --quick         # smoke run: 64 photos, 1 repeat

(a) End to end, whole processes (startup, imports, model building and decoding included), the same
    ``--images`` flower photos (a seeded, class-balanced sample copied into a temporary class folder):
    * ``plain loop``: what a user writes first -- ``PIL.Image.open``, timm's own eval transform for the model
      (``resolve_data_config`` + ``create_transform``), EfficientNet-Lite0 with the packaged weights, batches of
      32 under ``torch.inference_mode``, default threads, one process;
    * ``transferkit embed --engine torch`` and ``--engine onnx``, each with an empty cache folder (cold: the
      ONNX engine's graph export is included); ``--engine onnx`` with no embeddings cached but the backbone's
      graph already exported (once per machine and cache folder), with the default CPU plan (on 2 cores: no
      decoding worker, decoding between batches, 2 ONNX Runtime threads) and with ``--workers 1`` (1 decoding
      worker + 1 thread); then ``--engine onnx`` again on the filled cache (warm: answered without importing
      torch);
    * on hymenoptera (398 photos): ``embed`` and ``train --strategy feature-extraction`` (5 epochs, report
      written), cold (empty cache) then warm;
    * once, on all of flowers: the plain loop against ``embed --engine onnx`` with cold embeddings (the fixed
      startup cost weighs less on a whole folder).
    Images/s = images / wall seconds of the process; the median over ``--repeats`` interleaved repeats.
(b) Compute only, in this process, on the same decoded uint8 images (batch 32, best of 3 passes after a
    warm-up): PyTorch eager (channels_last, ``inference_mode``), ONNX Runtime fp32 and ONNX Runtime int8 (static
    QDQ quantisation of the hymenoptera run's model by ``transferkit export --int8``, whose test-split accuracy
    change is recorded too), each with 1 and 2 threads.

Writes benchmarks/results/cpu_inference.json and .md. The machine's load average is recorded beside the
figures; ratios are measured within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATASETS = Path(os.environ.get("TRANSFERKIT_DATASETS", ROOT.parent / "shared" / "datasets"))
PY = sys.executable
CLI = [PY, "-m", "transferkit.cli"]

PLAIN_LOOP = r'''
import sys, glob, time, torch, timm
from PIL import Image
from timm.data import resolve_data_config, create_transform
from transferkit.models.pretrained import load_efficientnet_lite_state_dict
files = sorted(glob.glob(sys.argv[1] + "/*/*"))
model = timm.create_model("tf_efficientnet_lite0", num_classes=0)
model.load_state_dict(load_efficientnet_lite_state_dict(0), strict=False)
model.eval().to(memory_format=torch.channels_last)
transform = create_transform(**resolve_data_config({}, model=model))
out = []
with torch.inference_mode():
    for i in range(0, len(files), 32):
        batch = torch.stack([transform(Image.open(f).convert("RGB")) for f in files[i:i + 32]])
        out.append(model(batch.contiguous(memory_format=torch.channels_last)))
print(torch.cat(out).shape)
'''


def load() -> float:
    return os.getloadavg()[0]


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return seconds


def sample_flowers(n: int, target: Path) -> Path:
    rng = random.Random(0)
    classes = sorted(p for p in (DATASETS / "flowers").iterdir() if p.is_dir())
    for k, folder in enumerate(classes):
        files = sorted(folder.glob("*.jpg"))
        take = n // len(classes) + (1 if k < n % len(classes) else 0)
        (target / folder.name).mkdir(parents=True, exist_ok=True)
        for f in rng.sample(files, take):
            shutil.copy2(f, target / folder.name / f.name)
    return target


def end_to_end(flowers: Path, n: int, repeats: int, work: Path) -> dict:
    hym = DATASETS / "hymenoptera"
    rows: dict[str, list[float]] = {}

    def add(name: str, seconds: float) -> None:
        rows.setdefault(name, []).append(seconds)

    for r in range(repeats):
        cache = {e: work / f"cache_{e}_{r}" for e in ("torch", "onnx", "hym", "train")}
        add("plain loop (PIL + timm transform + PyTorch)", timed([PY, "-c", PLAIN_LOOP, str(flowers)]))
        add("embed --engine torch (cold cache)", timed([*CLI, "embed", str(flowers), "--out", str(work / "t.npz"),
                                                        "--engine", "torch", "--cache-dir", str(cache["torch"])]))
        add("embed --engine onnx (cold cache)", timed([*CLI, "embed", str(flowers), "--out", str(work / "o.npz"),
                                                       "--engine", "onnx", "--cache-dir", str(cache["onnx"])]))
        # the backbone's ONNX graph is exported once per machine and cache folder: embeddings cold, graph kept
        for name, extra in (("embed --engine onnx (cold embeddings, graph exported earlier)", []),
                            ("embed --engine onnx --workers 1 (cold embeddings, graph exported earlier)", ["--workers", "1"])):
            fresh = work / f"cache_graph_{len(rows.get(name, []))}_{len(extra)}"
            shutil.copytree(cache["onnx"] / "onnx", fresh / "onnx")
            add(name, timed([*CLI, "embed", str(flowers), "--out", str(work / "g.npz"), "--engine", "onnx",
                             "--cache-dir", str(fresh), *extra]))
        add("embed --engine onnx (warm cache)", timed([*CLI, "embed", str(flowers), "--out", str(work / "o.npz"),
                                                       "--engine", "onnx", "--cache-dir", str(cache["onnx"])]))
        add("hymenoptera embed (cold cache)", timed([*CLI, "embed", str(hym), "--out", str(work / "h.npz"),
                                                     "--cache-dir", str(cache["hym"])]))
        add("hymenoptera embed (warm cache)", timed([*CLI, "embed", str(hym), "--out", str(work / "h.npz"),
                                                     "--cache-dir", str(cache["hym"])]))
        train = [*CLI, "train", str(hym), "--strategy", "feature-extraction", "--epochs", "5", "--cache-dir", str(cache["train"])]
        add("hymenoptera train feature-extraction (cold cache)", timed([*train, "--out", str(work / f"run_cold_{r}")]))
        add("hymenoptera train feature-extraction (warm cache)", timed([*train, "--out", str(work / f"run_warm_{r}")]))
        print(f"repeat {r + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in rows.items()), flush=True)
    images = {k: (398 if k.startswith("hymenoptera") else n) for k in rows}
    table = {k: {"seconds": statistics.median(v), "all_seconds": [round(x, 2) for x in v], "images": images[k],
                 "images_per_s": images[k] / statistics.median(v)} for k, v in rows.items()}
    plain = table["plain loop (PIL + timm transform + PyTorch)"]["seconds"]
    for row in table.values():
        row["speed_vs_plain_loop"] = plain / row["seconds"] if row["images"] == n else None
    ratios = {
        "embed onnx cold vs plain loop": plain / table["embed --engine onnx (cold cache)"]["seconds"],
        "embed onnx cold embeddings (graph kept) vs plain loop":
            plain / table["embed --engine onnx (cold embeddings, graph exported earlier)"]["seconds"],
        "embed onnx --workers 1 cold embeddings (graph kept) vs plain loop":
            plain / table["embed --engine onnx --workers 1 (cold embeddings, graph exported earlier)"]["seconds"],
        "embed torch cold vs plain loop": plain / table["embed --engine torch (cold cache)"]["seconds"],
        "hymenoptera embed warm vs cold": table["hymenoptera embed (cold cache)"]["seconds"] / table["hymenoptera embed (warm cache)"]["seconds"],
        "hymenoptera train fe warm vs cold": (table["hymenoptera train feature-extraction (cold cache)"]["seconds"]
                                              / table["hymenoptera train feature-extraction (warm cache)"]["seconds"]),
    }
    return {"rows": table, "ratios": ratios}


def large_folder(work: Path) -> dict:
    """All of flowers once: the plain loop against ``embed --engine onnx`` with cold embeddings (graph kept).

    Startup (imports, building or loading the model) is a fixed cost of a few seconds in both; on a whole
    folder it weighs less, and the end-to-end ratio approaches the engines' compute ratio.
    """
    flowers = DATASETS / "flowers"
    n = sum(1 for p in flowers.glob("*/*") if p.is_file())
    graph = next((work / "cache_onnx_0").glob("onnx"))
    fresh = work / "cache_large"
    shutil.copytree(graph, fresh / "onnx")
    plain = timed([PY, "-c", PLAIN_LOOP, str(flowers)])
    ours = timed([*CLI, "embed", str(flowers), "--out", str(work / "large.npz"), "--engine", "onnx", "--cache-dir", str(fresh)])
    return {"images": n, "plain_loop_s": plain, "embed_onnx_s": ours, "plain_images_per_s": n / plain,
            "embed_images_per_s": n / ours, "ratio": plain / ours,
            "note": "one pass each; embeddings cold, the backbone's ONNX graph exported earlier"}


def compute_only(flowers: Path, work: Path) -> dict:
    import numpy as np
    import torch

    from transferkit.data.datasets import torch_threads
    from transferkit.data.scan import Sample
    from transferkit.export.deploy import torch_logits, uint8_batches
    from transferkit.export.onnx import OnnxModel
    from transferkit.export.runfiles import load_run

    run_dir = work / "run_cold_0"
    int8 = json.loads(subprocess.run([*CLI, "export", str(run_dir), "--out", str(work / "int8.onnx"), "--int8", "--force"],
                                     cwd=ROOT, capture_output=True, text=True, check=True).stdout and
                      (work / "int8.parity.json").read_text())
    subprocess.run([*CLI, "export", str(run_dir), "--out", str(work / "fp32.onnx")], cwd=ROOT, capture_output=True, check=True)
    run = load_run(run_dir)
    samples = [Sample(str(p), -1) for p in sorted(flowers.glob("*/*"))]
    images = np.concatenate([b.images for b in uint8_batches(samples, run.spec, 32, 0)])
    model = run.model.eval().to(memory_format=torch.channels_last)

    def eager(x: np.ndarray) -> None:
        torch_logits(model, run.spec, x)

    def best(fn, threads: int) -> float:
        with torch_threads(threads):
            fn(images[:32])
            times = []
            for _ in range(3):
                started = time.perf_counter()
                for i in range(0, len(images), 32):
                    fn(images[i:i + 32])
                times.append(time.perf_counter() - started)
        return len(images) / min(times)

    table = {}
    for threads in (1, 2):
        fp32, q8 = OnnxModel(work / "fp32.onnx", threads=threads), OnnxModel(work / "int8.onnx", threads=threads)
        table[f"PyTorch eager fp32, {threads} thread(s)"] = best(eager, threads)
        table[f"ONNX Runtime fp32, {threads} thread(s)"] = best(lambda x: fp32.run(x), threads)
        table[f"ONNX Runtime int8, {threads} thread(s)"] = best(lambda x: q8.run(x), threads)
    q = int8["int8"]
    return {"images_per_s": table, "n": int(len(images)),
            "int8_quality": {k: q[k] for k in ("n", "accuracy_fp32", "accuracy_int8", "accuracy_drop", "calibration_images")},
            "model": "the hymenoptera feature-extraction run (EfficientNet-Lite0 + linear head, 224 px)"}


def write_markdown(result: dict, path: Path) -> None:
    e2e, comp = result["end_to_end"], result["compute_only"]
    lines = [f"# CPU inference ({result['cores']} cores, load average {result['load_before']:.2f} before / "
             f"{result['load_after']:.2f} after)", "", f"Command: `{result['command']}`", "",
             "## End to end (whole processes, median of "
             f"{result['repeats']} repeats)", "", "| path | images | seconds | images/s | vs plain loop |", "|---|---|---|---|---|"]
    for name, row in e2e["rows"].items():
        ratio = f"{row['speed_vs_plain_loop']:.2f}x" if row["speed_vs_plain_loop"] else "–"
        lines.append(f"| {name} | {row['images']} | {row['seconds']:.1f} | {row['images_per_s']:.1f} | {ratio} |")
    lines += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v:.2f}x |" for k, v in e2e["ratios"].items()]
    if "large_folder" in result:
        big = result["large_folder"]
        lines += ["", f"All of flowers ({big['images']} images, one pass each): plain loop {big['plain_loop_s']:.1f} s "
                  f"({big['plain_images_per_s']:.1f}/s), `embed --engine onnx` {big['embed_onnx_s']:.1f} s "
                  f"({big['embed_images_per_s']:.1f}/s): {big['ratio']:.2f}x ({big['note']})."]
    lines += ["", f"## Compute only ({comp['n']} decoded images, batch 32, best of 3)", "", "| engine | images/s |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in comp["images_per_s"].items()]
    q = comp["int8_quality"]
    lines += ["", f"int8 on the hymenoptera test split (n={q['n']}): accuracy {q['accuracy_int8']:.3f} vs fp32 "
              f"{q['accuracy_fp32']:.3f} (calibrated on {q['calibration_images']} training images)."]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "cpu_inference.json")
    args = parser.parse_args()
    if args.quick:
        args.images, args.repeats = 64, 1
        args.out = Path(tempfile.gettempdir()) / "cpu_inference_quick.json"
    if not (DATASETS / "flowers").is_dir() or not (DATASETS / "hymenoptera").is_dir():
        raise SystemExit(f"needs flowers and hymenoptera under {DATASETS} (set TRANSFERKIT_DATASETS)")
    result: dict = {"command": " ".join(["benchmarks/cpu_inference.py", *sys.argv[1:]]), "cores": os.cpu_count(),
                    "load_before": load(), "repeats": args.repeats, "images": args.images}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        flowers = sample_flowers(args.images, work / "flowers")
        result["end_to_end"] = end_to_end(flowers, args.images, args.repeats, work)
        if not args.quick:
            result["large_folder"] = large_folder(work)
        result["compute_only"] = compute_only(flowers, work)
    result["load_after"] = load()
    from provenance import provenance  # benchmarks/provenance.py (the script's folder is on sys.path)

    result["provenance"] = provenance(__file__)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    write_markdown(result, args.out.with_suffix(".md"))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
