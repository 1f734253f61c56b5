"""GPU throughput: does our data path keep the GPU fed?

Command (on a machine with a CUDA GPU; it writes its own JPEG files, so it needs no dataset):

    .venv/bin/python benchmarks/gpu_throughput.py                  # full run, ~5 min on an H100
    .venv/bin/python benchmarks/gpu_throughput.py --smoke          # tiny CPU run that checks the script works

For efficientnet_lite0 and timm:resnet50 (random init: speed does not depend on the weights), in one run:
  (a) synthetic-tensor training throughput: the ceiling (no data loading at all)
  (b) our training throughput from JPEG files: loader reads bytes, nvJPEG decodes in batches on the GPU,
      geometry + normalisation on the GPU (transferkit.data.gpu), bf16 autocast, channels_last
  (c) our embedding throughput from files (inference_mode, same data path)
  (d) a plain PIL + torchvision transforms + DataLoader training pipeline, for comparison
Targets (issue 7): (b) >= 90% of (a); (c) >= 15,000 images/s for Lite0 on an H100; (b)/(d) reported.
Prints a table and writes benchmarks/results/gpu_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

from transferkit.data.gpu import EncodedDataset, GpuPreprocessor, collate_encoded
from transferkit.data.scan import Sample
from transferkit.data.transforms import resize_size
from transferkit.engine.loop import autocast_for
from transferkit.models.backbones import resolve_spec
from transferkit.models.transfer import build_model

HERE = Path(__file__).resolve().parent


def make_jpegs(folder: Path, count: int, seed: int = 0) -> list[Sample]:
    """500x375 photos-like JPEGs (the size of the issue's PIL measurement)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)
    samples = []
    for i in range(count):
        path = folder / f"img_{i:05d}.jpg"
        if not path.exists():
            shifted = np.roll(base, shift=int(rng.integers(0, 500)), axis=1)
            Image.fromarray(shifted).save(path, quality=90)
        samples.append(Sample(str(path), i % 10))
    return samples


def _model(name: str, input_size: int, device: torch.device, compile_model: bool) -> torch.nn.Module:
    spec = resolve_spec(name).with_input_size(input_size)
    model = build_model(spec, 10, pretrained=False).to(device).to(memory_format=torch.channels_last)
    return torch.compile(model) if compile_model else model


def _train_step(model, opt, images, labels, device, amp) -> None:
    with autocast_for(device, amp):
        loss = torch.nn.functional.cross_entropy(model(images).float(), labels)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _timed(batches, step, warmup: int, device) -> float:
    """Images per second over the batches after ``warmup`` batches."""
    seen, start = 0, None
    for i, (images, labels) in enumerate(batches):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, seen = time.perf_counter(), 0
        step(images, labels)
        seen += labels.numel()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start) if start else float("nan")


def bench(name: str, samples: list[Sample], args, device: torch.device) -> dict:
    spec = resolve_spec(name).with_input_size(args.input_size)
    model = _model(name, args.input_size, device, args.compile)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp = device.type == "cuda"
    step = lambda x, y: _train_step(model, opt, x, y, device, amp)  # noqa: E731
    bs, steps = args.batch_size, args.steps
    synth = torch.randn(bs, 3, args.input_size, args.input_size, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (bs,), device=device)
    ceiling = _timed(((synth, labels) for _ in range(steps + 3)), step, 3, device)

    def ours(train: bool):
        loader = DataLoader(EncodedDataset(samples, resize_size(spec)), batch_size=bs, shuffle=train, num_workers=args.workers,
                            collate_fn=collate_encoded, pin_memory=device.type == "cuda", persistent_workers=args.workers > 0,
                            prefetch_factor=4 if args.workers else None, drop_last=True)
        prep = GpuPreprocessor(spec, device, train=train, samples=samples)
        for batch in loader:
            out = prep(batch)
            yield out["images"], out["labels"]

    model.train()
    from_files = _timed(ours(True), step, 3, device)
    model.eval()
    with torch.inference_mode():
        def embed(x, y):
            with autocast_for(device, amp):
                model(x)
        embedding = _timed(ours(False), embed, 3, device)
    model.train()
    tf = T.Compose([T.RandomResizedCrop(args.input_size, scale=(0.5, 1.0)), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(spec.mean, spec.std)])

    class PilSet(torch.utils.data.Dataset):
        def __len__(self):
            return len(samples)

        def __getitem__(self, i):
            return tf(Image.open(samples[i].path).convert("RGB")), samples[i].label

    plain_loader = DataLoader(PilSet(), batch_size=bs, shuffle=True, num_workers=args.workers, pin_memory=device.type == "cuda",
                              persistent_workers=args.workers > 0, drop_last=True)
    plain = _timed(((x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last), y.to(device))
                    for x, y in plain_loader), step, 3, device)
    return {"synthetic_train": ceiling, "ours_train_from_files": from_files, "ours_embed_from_files": embedding,
            "plain_pil_train": plain, "ours_vs_ceiling": from_files / ceiling, "ours_vs_plain": from_files / plain}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run to check the script")
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--models", default="efficientnet_lite0,timm:resnet50")
    args = parser.parse_args()
    if args.smoke:
        args.images, args.batch_size, args.input_size, args.workers, args.steps = 48, 8, 64, 1, 3
    else:
        args.steps = 30
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    folder = Path(tempfile.gettempdir()) / f"tk_gpu_bench_{args.images}"
    samples = make_jpegs(folder, args.images)
    rows = {name: bench(name, samples, args, device) for name in args.models.split(",")}
    meta = {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "batch_size": args.batch_size, "input_size": args.input_size,
            "workers": args.workers, "compile": args.compile, "images": args.images}
    print(f"device {meta['device']}, torch {meta['torch']}, batch {args.batch_size}, {args.input_size}px, "
          f"{args.workers} workers, compile={args.compile}")
    print(f"{'model':<22}{'(a) synthetic':>15}{'(b) ours train':>16}{'(c) ours embed':>16}{'(d) PIL train':>15}"
          f"{'b/a':>7}{'b/d':>7}")
    for name, r in rows.items():
        print(f"{name:<22}{r['synthetic_train']:>15.0f}{r['ours_train_from_files']:>16.0f}{r['ours_embed_from_files']:>16.0f}"
              f"{r['plain_pil_train']:>15.0f}{r['ours_vs_ceiling']:>7.2f}{r['ours_vs_plain']:>7.2f}")
    if not args.smoke:
        (HERE / "results" / "gpu_throughput.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
