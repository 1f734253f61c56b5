"""Speed benchmark of the frozen-backbone path (issue 4). Prints a table, writes benchmarks/results/speed.json.

Command (the recorded numbers came from exactly this)::

    .venv/bin/python benchmarks/speed.py                    # (a) 600-image flowers subset, (b) 256 images, (c) 1M rows
    .venv/bin/python benchmarks/speed.py --quick            # smoke run: 150 images, 2 epochs, 100k rows
    .venv/bin/python benchmarks/speed.py --limit 0          # (a) on all 3,000 flowers images (uncached: ~15 min idle)
    .venv/bin/python benchmarks/speed.py --only training --dataset hymenoptera --out benchmarks/results/speed_hymenoptera.json

(a) Feature extraction, 10 epochs, efficientnet_lite0, batch 32, lr 1e-3, on a stratified 70/15/15
    train/selection/test split (split seed 0) of a flowers subset (``--limit`` images, equal per class; 0 = all), or on hymenoptera's
    own split. Runs of ``transferkit.train`` on the same data in this one process: the uncached loop that
    pushes every image through the frozen backbone in every epoch (``cache=False``: what the seed recipes
    do, with the same head, optimizer, schedule and epochs), the cached path with an empty cache (the
    first pass fills it), the cached path again with the cache warm, and (``--views K``) a cold cached
    run with K augmented views. Times are the runs' own ``summary.time_s`` (scan + validation + model +
    epochs + final evaluation; the HTML report written afterwards is excluded, identical for all).
(b) Embedding throughput on the same files: a plain ``PIL.Image.open -> torchvision transforms -> model``
    loop (default memory layout, ``torch.no_grad``, one process) vs ``transferkit.features.extract``,
    plus an ablation of its settings (threads, workers, BatchNorm folding, memory layout). Best of
    ``--repeats`` interleaved passes, after one warm-up pass each (oneDNN builds kernels on first use).
(c) Scale: a synthetic cache of ``--rows`` x 1280 float16 embeddings written with the store's own
    ShardWriter, then one epoch of head training from it (streamed, since it exceeds the in-memory budget)
    in a fresh process; peak resident memory is /proc's VmHWM (``resource.getrusage`` elsewhere), of
    which about 1 GB is importing torch (CUDA build) itself.

The machine is shared: ``load_avg`` is recorded next to each section; ratios are measured within one run.
"""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing as mp
import os
import platform
import random
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("TRANSFERKIT_DATASETS") or HERE.parents[1] / "shared" / "datasets")
FLOWERS = ROOT / "flowers"


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def subset_folder(n: int, seed: int = 0) -> Path:
    """A temporary copy of ``n`` flowers images (n/5 per class; 0 = all) outside the repository."""
    classes = sorted(p.name for p in FLOWERS.iterdir() if p.is_dir())
    target = Path(tempfile.mkdtemp(prefix="tk-speed-data-"))
    rng = random.Random(seed)
    for c in classes:
        files = sorted(glob.glob(str(FLOWERS / c / "*.jpg")))
        picked = files if n <= 0 else rng.sample(files, n // len(classes))
        (target / c).mkdir()
        for f in picked:
            shutil.copyfile(f, target / c / Path(f).name)
    return target


# --- (a) ------------------------------------------------------------------------------------------


def bench_training(data: Path, epochs: int, views: int, baseline: bool = True) -> dict:
    import transferkit as tk

    cache_dir, out = Path(tempfile.mkdtemp(prefix="tk-speed-cache-")), Path(tempfile.mkdtemp(prefix="tk-speed-runs-"))
    # head_fit sgd everywhere: the cache is the one thing that differs between uncached / cached_cold / cached_warm
    # (the default head_fit auto would also swap the epochs for the converged probe on the cached path);
    # "cached_warm_probe" then shows the default path's time with the same warm cache
    common = dict(strategy="feature-extraction", epochs=epochs, batch_size=32, seed=0, split_seed=0, head_fit="sgd",
                  quiet=True, cache_dir=str(cache_dir))
    runs = {}
    plan = ([("uncached", dict(cache=False))] if baseline else []) + [("cached_cold", {}), ("cached_warm", {}),
                                                                      ("cached_warm_probe", dict(head_fit="auto"))]
    if views:
        plan.append((f"cached_{views}views_cold", dict(cache_views=views)))
    for name, extra in plan:
        load = load_avg()
        wall = time.perf_counter()
        result = tk.train(data, out=str(out / name), **{**common, **extra})
        runs[name] = {"time_s": result.summary["time_s"], "wall_s": round(time.perf_counter() - wall, 2),
                      "accuracy": result.summary["metrics"]["accuracy"], "ci95": result.summary["ci95"]["accuracy"],
                      "selected_epoch": result.summary["selected_epoch"], "n_train": result.summary["data"]["n_train"],
                      "n_selection": result.summary["data"]["n_selection"], "n_test": result.summary["data"]["n_test"],
                      "load_avg": load}
        print(f"  {name:<22} {runs[name]['time_s']:8.1f} s  accuracy {runs[name]['accuracy']:.4f}", flush=True)
    shutil.rmtree(cache_dir, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    if not baseline:
        return {"epochs": epochs, "runs": runs}
    unc = runs["uncached"]["time_s"]
    return {"epochs": epochs, "runs": runs,
            "speedup_cold": round(unc / runs["cached_cold"]["time_s"], 2),
            "speedup_warm": round(unc / runs["cached_warm"]["time_s"], 2),
            "accuracy_delta_points": round(100 * (runs["cached_cold"]["accuracy"] - runs["uncached"]["accuracy"]), 2)}


# --- (b) ------------------------------------------------------------------------------------------


def plain_loop(paths: list[str], spec, batch: int = 32) -> np.ndarray:
    """The tutorial loop: PIL open -> torchvision transforms -> model, one process, default layout."""
    from PIL import Image
    from torchvision import transforms as TV

    from transferkit.data.transforms import resize_size
    from transferkit.models.backbones import build_backbone

    tf = TV.Compose([TV.Resize(resize_size(spec), interpolation=TV.InterpolationMode.BICUBIC), TV.CenterCrop(spec.input_size),
                     TV.ToTensor(), TV.Normalize(spec.mean, spec.std)])
    model = build_backbone(spec).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(paths), batch):
            out.append(model(torch.stack([tf(Image.open(p).convert("RGB")) for p in paths[i:i + batch]])))
    return torch.cat(out).numpy()


def ours(paths: list[str], spec, model, **kwargs) -> np.ndarray:
    from transferkit.data.transforms import eval_transform, resize_size
    from transferkit.features.extract import embed_images

    return np.concatenate([b.features for b in embed_images(model, paths, eval_transform(spec), draft_size=resize_size(spec), **kwargs)])


DEFAULT = "ours (default: 1 worker + cores-1 threads, channels_last, BN folded)"


def bench_throughput(paths: list[str], repeats: int) -> dict:
    from transferkit.models.backbones import build_backbone, resolve_spec

    spec = resolve_spec("efficientnet_lite0")
    cores = torch.get_num_threads()
    configs = {
        "plain PIL+torchvision loop": lambda: plain_loop(paths, spec),
        DEFAULT: lambda: ours(paths, spec, build_backbone(spec)),
        f"ours, {cores} torch threads + 1 worker": lambda: ours(paths, spec, build_backbone(spec), threads=cores),
        "ours, no BatchNorm folding": lambda: ours(paths, spec, build_backbone(spec), fold_bn=False),
        "ours, contiguous layout": lambda: ours(paths, spec, build_backbone(spec), channels_last=False),
        f"ours, 0 workers ({cores} threads, decode in the main process)": lambda: ours(paths, spec, build_backbone(spec), workers=0),
        "ours, 2 workers": lambda: ours(paths, spec, build_backbone(spec), workers=2),
    }
    ours(paths[:32], spec, build_backbone(spec))  # oneDNN builds its kernels on the first call: not part of the rate
    plain_loop(paths[:32], spec)
    rates: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(repeats):  # interleaved, so a burst of load on the shared machine hits every config
        for name, fn in configs.items():
            t = time.perf_counter()
            fn()
            rates[name].append(len(paths) / (time.perf_counter() - t))
    a, b = plain_loop(paths[:16], spec), ours(paths[:16], spec, build_backbone(spec))
    best = {k: round(max(v), 1) for k, v in rates.items()}
    plain, default = best["plain PIL+torchvision loop"], best[DEFAULT]
    return {"images": len(paths), "repeats": repeats, "images_per_s": best, "all_runs": {k: [round(x, 1) for x in v] for k, v in rates.items()},
            "ratio_default_vs_plain": round(default / plain, 2), "max_abs_feature_diff": float(np.abs(a - b).max()), "load_avg": load_avg()}


# --- (c) ------------------------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM where /proc exists: ru_maxrss survives exec, so in a
    spawned child it would report the parent's peak when that was higher."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _write_synthetic(cache_dir: str, rows: int, dim: int, chunk: int, queue) -> None:
    from transferkit.features.store import Namespace

    rng = np.random.default_rng(0)
    ns = Namespace(cache_dir, "synthetic")
    t = time.perf_counter()
    with ns.writer(dim) as w:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            keys = np.zeros((n, 32), np.uint8)
            keys[:, :8] = np.arange(start, start + n, dtype=">u8").view(np.uint8).reshape(n, 8)
            w.append(keys, rng.standard_normal((n, dim), dtype=np.float32).astype(np.float16))
    queue.put({"write_s": round(time.perf_counter() - t, 1), "writer_peak_rss_mb": round(_peak_rss_mb(), 1)})


def _train_synthetic(cache_dir: str, rows: int, batch: int, classes: int, queue) -> None:
    from transferkit.config import OptimCfg, StrategyCfg
    from transferkit.engine.loop import StepContext, train_one_epoch
    from transferkit.features.cache import ViewRows
    from transferkit.features.headfit import FeatureSet
    from transferkit.features.store import Namespace
    from transferkit.models.backbones import resolve_spec
    from transferkit.models.transfer import build_model
    from transferkit.strategy.optim import apply_plan, build_optimizer, index_groups, lr_factor, set_learning_rates
    from transferkit.strategy.plan import make_plan

    t = time.perf_counter()
    index = Namespace(cache_dir, "synthetic").index()
    keys = np.zeros((rows, 32), np.uint8)
    keys[:, :8] = np.arange(rows, dtype=">u8").view(np.uint8).reshape(rows, 8)
    shard, row = index.find(keys)
    assert (shard >= 0).all()
    labels = np.arange(rows) % classes
    features = FeatureSet([ViewRows(np.arange(rows), {}, 1280, index=index, shard=shard, row=row)], labels)
    setup_s = time.perf_counter() - t
    model = build_model(resolve_spec("efficientnet_lite0"), classes, pretrained=False)
    gi = index_groups(model)
    plan = make_plan(StrategyCfg(name="feature-extraction"), gi.names[:-1], 1)
    opt = build_optimizer(gi, OptimCfg())
    apply_plan(model, gi, opt, plan, 0)
    batches = features.batches(batch, shuffle=True, seed=0, epoch=0)
    total = len(batches)
    ctx = StepContext(optimizer=opt, set_lr=lambda s: set_learning_rates(opt, 1e-3, lr_factor(s, total, total // 10, 0.01)),
                      device=torch.device("cpu"), grad_clip=5.0, label_smoothing=0.1)
    t = time.perf_counter()
    stats = train_one_epoch(model.head, batches, ctx, 0, lambda f: None)
    queue.put({"rows": rows, "streamed": features.streamed, "batch_size": batch, "steps": stats["steps"],
               "index_and_setup_s": round(setup_s, 1), "epoch_s": round(time.perf_counter() - t, 1),
               "rows_per_s": round(rows / (time.perf_counter() - t)), "train_loss": round(stats["loss"], 4),
               "peak_rss_mb": round(_peak_rss_mb(), 1)})


def bench_scale(rows: int, batch: int) -> dict:
    cache_dir = tempfile.mkdtemp(prefix="tk-speed-scale-")
    ctx = mp.get_context("spawn")  # fresh processes: ru_maxrss is then this step's peak alone
    out = {"load_avg": load_avg(), "bytes": rows * 1280 * 2}
    try:
        for target, args in ((_write_synthetic, (cache_dir, rows, 1280, 20_000)), (_train_synthetic, (cache_dir, rows, batch, 5))):
            queue = ctx.Queue()
            proc = ctx.Process(target=target, args=args + (queue,))
            proc.start()
            out.update(queue.get())
            proc.join()
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return out


# --- main ---------------------------------------------------------------------------------------


def print_table(result: dict) -> None:
    lines = ["", "| measurement | value |", "|---|---|"]
    if "training" in result:
        a = result["training"]
        r = a["runs"]
        lines.append(f"| (a) {a['dataset']}, {a['epochs']} epochs | {r['cached_cold']['n_train']} train / {r['cached_cold']['n_selection']} selection / {r['cached_cold']['n_test']} test |")
        lines += [f"| (a) {k} | {v['time_s']:.1f} s, accuracy {v['accuracy']:.4f} |" for k, v in r.items()]
        if "speedup_cold" in a:
            lines.append(f"| (a) speed-up cold / warm | {a['speedup_cold']}x / {a['speedup_warm']}x |")
    if "throughput" in result:
        b = result["throughput"]
        lines += [f"| (b) {k} | {v} images/s |" for k, v in b["images_per_s"].items()]
        lines.append(f"| (b) ours / plain | {b['ratio_default_vs_plain']}x |")
    if "scale" in result:
        c = result["scale"]
        lines += [f"| (c) {c['rows']:,} x 1280 float16 ({c['bytes'] / 1e9:.2f} GB): write | {c['write_s']} s, peak RSS {c['writer_peak_rss_mb']} MB |",
                  f"| (c) one epoch of head training, batch {c['batch_size']} | {c['epoch_s']} s ({c['rows_per_s']:,} rows/s), "
                  f"peak RSS {c['peak_rss_mb']} MB |"]
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=600, help="(a) images of flowers to use (0 = all 3,000)")
    parser.add_argument("--dataset", choices=["flowers", "hymenoptera"], default="flowers",
                        help="(a) on flowers (split 70/15/15 train/selection/test) or hymenoptera (selection carved from "
                             "train/, val/ is the test split; --limit ignored)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--views", type=int, default=2, help="(a) also a cold cached run with K augmented views (0 = skip)")
    parser.add_argument("--no-baseline", action="store_true", help="(a) skip the uncached run (cached accuracy only)")
    parser.add_argument("--throughput-images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--scale-batch", type=int, default=256)
    parser.add_argument("--only", choices=["training", "throughput", "scale"], action="append")
    parser.add_argument("--quick", action="store_true", help="150 images, 2 epochs, 64 images, 100k rows")
    parser.add_argument("--out", default=None, help="JSON file (default results/speed.json; --quick: results/speed_quick.json)")
    args = parser.parse_args()
    if args.quick:
        args.limit, args.epochs, args.throughput_images, args.repeats, args.rows, args.views = 150, 2, 64, 1, 100_000, 0
    args.out = args.out or str(HERE / "results" / ("speed_quick.json" if args.quick else "speed.json"))
    only = set(args.only or ["training", "throughput", "scale"])
    if only & {"training", "throughput"} and not FLOWERS.is_dir():
        raise SystemExit(f"flowers not found at {FLOWERS}; set TRANSFERKIT_DATASETS")
    from provenance import provenance  # benchmarks/provenance.py (the script's folder is on sys.path)

    result = {"command": "benchmarks/speed.py " + " ".join(os.sys.argv[1:]), "provenance": provenance(__file__),
              "platform": platform.platform(),
              "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    data = subset_folder(args.limit) if only & {"training", "throughput"} else None
    try:
        if "training" in only:
            train_data = data if args.dataset == "flowers" else ROOT / "hymenoptera"
            what = f"{args.limit or 'all'} flowers images" if args.dataset == "flowers" else "hymenoptera train/val"
            print(f"(a) feature extraction, {args.epochs} epochs on {train_data} ({what})", flush=True)
            result["training"] = {"dataset": args.dataset, "images": args.limit or "all" if args.dataset == "flowers" else "all",
                                  **bench_training(train_data, args.epochs, args.views, not args.no_baseline)}
        if "throughput" in only:
            paths = sorted(glob.glob(str(data / "*" / "*.jpg")))
            paths = random.Random(1).sample(paths, min(args.throughput_images, len(paths)))
            print(f"(b) embedding throughput on {len(paths)} images", flush=True)
            result["throughput"] = bench_throughput(paths, args.repeats)
        if "scale" in only:
            print(f"(c) head training from {args.rows:,} cached rows", flush=True)
            result["scale"] = bench_scale(args.rows, args.scale_batch)
    finally:
        if data is not None:
            shutil.rmtree(data, ignore_errors=True)
    print_table(result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if args.only and Path(args.out).is_file():  # --only: re-measure those sections, keep the others as recorded
        kept = json.loads(Path(args.out).read_text())
        result = {**kept, **result, "sections_commands": {**kept.get("sections_commands", {}),
                                                          **{k: result["command"] for k in only}}}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
