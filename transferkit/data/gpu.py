"""GPU data path: loaders read bytes, JPEGs are decoded in batches on the GPU (nvJPEG through
``torchvision.io.decode_jpeg(device="cuda")``), then augmented (or resized and centre-cropped) and
normalised there.

On a fast GPU, PIL decoding (~270 images/s per core) starves the model; moving the decode and the
geometry to the GPU removes the CPU from the hot path. Anything nvJPEG cannot decode (PNG, GIF,
CMYK JPEG, corrupt data) falls back to the CPU decoder in the worker or here.

What matches the CPU path (``ImageDataset`` + ``train_transform``/``eval_transform``):

* Decode resolution: the CPU path decodes JPEGs with PIL's draft mode (libjpeg's DCT scaling by 1/2,
  1/4 or 1/8, the largest keeping the shorter side >= ``resize_size(spec)``). nvJPEG has no such mode,
  so a full-size decode is reduced right away by the same factor to the same size (:func:`draft_scale`).
* Operations: the same torchvision v2 ops (:func:`~transferkit.data.transforms.train_ops` /
  ``eval_ops``) on uint8 tensors: the geometry per image, the colour jitter batched with per-image
  factors (:func:`colour_jitter`, torchvision's formulas), then ToDtype + Normalize on the batch.
* Random parameters: both paths seed the CPU RNG per image with (seed, epoch, index) (see
  ``transforms.image_rng``), so an image gets the identical crop box, flip and jitter factors on both.

What differs is pixel arithmetic only: libjpeg's scaled IDCT vs a box filter, PIL's resize and colour
enhancement vs torchvision's tensor kernels (under half a grey level on average, no bias; measured in
tests/unit/data/test_gpu_path.py). EXIF orientation is applied on both paths (by hand after nvJPEG, which
ignores it).
The same code runs with ``device="cpu"`` (torchvision's libjpeg decoder), which is how the tests check
it against the PIL path on machines without a GPU.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.functional import pil_to_tensor
from torchvision.transforms.v2 import functional as TF

from transferkit.data.decode import load_rgb
from transferkit.data.scan import Sample
from transferkit.data.transforms import eval_ops, image_rng, resize_size, train_ops
from transferkit.errors import DataError
from transferkit.spec import BackboneSpec

__all__ = ["EncodedDataset", "collate_encoded", "GpuPreprocessor", "colour_jitter", "draft_scale", "draft_downscale",
           "exif_orient"]

_JPEG_MAGIC = b"\xff\xd8\xff"


class EncodedDataset(Dataset):
    """Yields JPEG bytes untouched, or a CPU-decoded uint8 CHW tensor for anything else."""

    def __init__(self, samples: Sequence[Sample], draft_size: int | None = None) -> None:
        self.samples = list(samples)
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int) -> tuple[str, Any, int, int, str | None, int]:
        index = key % len(self.samples)  # a repeated draw (BalancedSampler): the key seeds its augmentation
        sample = self.samples[index]
        try:
            data = Path(sample.path).read_bytes()
        except OSError as exc:
            return "failed", None, sample.label, index, f"cannot read file ({exc.strerror or exc})", key
        if data[:3] == _JPEG_MAGIC:
            return "jpeg", torch.frombuffer(bytearray(data), dtype=torch.uint8), sample.label, index, None, key
        return (*_cpu_decode(sample.path, self.draft_size, sample.label, index), key)


def _cpu_decode(path: str, draft_size: int | None, label: int, index: int) -> tuple[str, Any, int, int, str | None]:
    try:
        return "raw", pil_to_tensor(load_rgb(path, draft_size=draft_size)), label, index, None
    except DataError as exc:
        return "failed", None, label, index, str(exc)


def collate_encoded(batch: list[tuple[str, Any, int, int, str | None]]) -> dict[str, Any]:
    """Keep bytes and tensors as lists (sizes differ); the preprocessor makes the batch tensor."""
    good = [item for item in batch if item[0] != "failed"]
    return {
        "kinds": [item[0] for item in good],
        "payloads": [item[1] for item in good],
        "labels": torch.tensor([item[2] for item in good], dtype=torch.long),
        "indices": torch.tensor([item[3] for item in good], dtype=torch.long),
        "keys": torch.tensor([item[5] for item in good], dtype=torch.long),  # augmentation seeds (repeats differ)
        "failed": [(item[3], item[4]) for item in batch if item[0] == "failed"],
    }


def _exif_orientation(data: torch.Tensor) -> int:
    """The EXIF orientation tag (1-8) of JPEG bytes; 1 when absent or unreadable, as load_rgb does.

    Walks the APPn segments at the start of the file (a few bytes read, no copy of the file) and
    hands only the Exif segment to PIL: opening every file with PIL would cost a copy per image.
    """
    buf = memoryview(data.numpy())
    pos = 2
    while pos + 4 <= len(buf) and buf[pos] == 0xFF:
        marker, length = buf[pos + 1], int.from_bytes(buf[pos + 2:pos + 4], "big")
        if marker == 0xE1 and bytes(buf[pos + 4:pos + 10]) == b"Exif\x00\x00":
            try:
                exif = Image.Exif()
                exif.load(bytes(buf[pos + 4:pos + 2 + length]))
                orientation = int(exif.get(0x0112, 1))
            except Exception:  # noqa: BLE001 - a bad EXIF block keeps the pixels unrotated, like load_rgb
                return 1
            return orientation if 1 <= orientation <= 8 else 1
        if not (0xE0 <= marker <= 0xEF or marker == 0xFE):  # past the APPn/COM segments: no EXIF
            return 1
        pos += 2 + length
    return 1


def exif_orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Rotate/flip a CHW image for display as its EXIF orientation says (what PIL's exif_transpose does).

    torchvision's CUDA decoder ignores ``apply_exif_orientation``, so the GPU path applies it here;
    the eight cases are flips and a transpose, which torchvision has no tensor op for.
    """
    transposed = image.transpose(-1, -2)
    return {
        2: lambda: image.flip(-1),
        3: lambda: image.flip(-1, -2),
        4: lambda: image.flip(-2),
        5: lambda: transposed,
        6: lambda: transposed.flip(-1),
        7: lambda: transposed.flip(-1, -2),
        8: lambda: transposed.flip(-2),
    }.get(orientation, lambda: image)().contiguous()


def draft_scale(height: int, width: int, draft_size: int) -> int:
    """The DCT scale PIL's ``draft("RGB", (d, d))`` makes libjpeg use for a JPEG of this size.

    Pillow takes ``min(width // d, height // d)`` and rounds it down to 8, 4, 2 or 1; the decoded
    size is then ``ceil(side / scale)``. The rule is symmetric in width and height, so it gives the
    same answer before and after an EXIF rotation.
    """
    ratio = min(height // draft_size, width // draft_size)
    return next((s for s in (8, 4, 2) if ratio >= s), 1)


def draft_downscale(image: torch.Tensor, draft_size: int) -> torch.Tensor:
    """Reduce a full-size uint8 CHW decode to the size and look of a PIL draft-mode decode.

    libjpeg's scaled IDCT turns each s x s pixel block into one pixel (exactly its mean at 1/8), and
    partial blocks at the right and bottom edges are completed by repeating the edge, as the encoder
    pads them. A block-aligned box filter (edge-replicating pad + ``avg_pool2d``) reproduces that to
    about half a grey level on average. It is written by hand rather than with torchvision's
    antialiased resize because that triangle filter is blurrier and, for sides not divisible by s,
    misaligned with the blocks (1.5-5 grey levels off on average).
    """
    height, width = image.shape[-2:]
    scale = draft_scale(height, width, draft_size)
    if scale == 1:
        return image
    out_h, out_w = math.ceil(height / scale), math.ceil(width / scale)
    x = image.unsqueeze(0).float()
    if out_h * scale != height or out_w * scale != width:
        x = F.pad(x, (0, out_w * scale - width, 0, out_h * scale - height), mode="replicate")
    return F.avg_pool2d(x, scale).round_().to(torch.uint8).squeeze(0)  # a mean of 0-255 values needs no clamp


def _blend(image: torch.Tensor, other: torch.Tensor, factors: list[float]) -> torch.Tensor:
    """torchvision's uint8 blend (float mix, clamp, truncate) with one factor per image."""
    ratio = torch.tensor(factors, dtype=torch.float32, device=image.device).view(-1, 1, 1, 1)
    rest = torch.tensor([1.0 - f for f in factors], dtype=torch.float32, device=image.device).view(-1, 1, 1, 1)
    return image.mul(ratio).add_(other * rest).clamp_(0, 255).to(image.dtype)


def _grey(images: torch.Tensor) -> torch.Tensor:
    return TF.rgb_to_grayscale(images).float()  # uint8 in, so floored like torchvision's colour kernels


def colour_jitter(images: torch.Tensor, params: Sequence[dict[str, Any]]) -> torch.Tensor:
    """Apply ``ColorJitter`` with each image's own parameters (from its ``make_params``) to a uint8 batch.

    torchvision's colour functions take one factor per call, so the ops are applied here with one
    factor per image: called per image they cost ~15 kernel launches each, and on an H200 the train
    batch of 256 JPEGs took 210 ms that way against 119 ms batched. Each op follows torchvision's uint8 kernel (grey = floored luma,
    contrast blends with its mean, saturation with the grey image, brightness with black); each
    image keeps its own random op order. Hue, unused by ``train_ops``, goes through torchvision
    one image at a time.
    """
    out = images.clone()
    for position in range(4):
        for op, key in enumerate(("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")):
            rows = [i for i, p in enumerate(params) if int(p["fn_idx"][position]) == op and p[key] is not None]
            if not rows:
                continue
            x, factors = out[rows], [float(params[i][key]) for i in rows]
            if op == 0:
                x = _blend(x, torch.zeros_like(x, dtype=torch.float32), factors)
            elif op == 1:
                x = _blend(x, _grey(x).mean(dim=(-3, -2, -1), keepdim=True), factors)
            elif op == 2:
                x = _blend(x, _grey(x), factors)
            else:
                x = torch.stack([TF.adjust_hue(image, f) for image, f in zip(x, factors)])
            out[rows] = x
    return out


class GpuPreprocessor:
    """Turns an encoded batch into the normalised image batch the model expects, on ``device``.

    Args:
        spec: The backbone's spec (sizes, interpolation, mean/std).
        device: Where to decode and transform.
        train: Training batches (augmented unless ``augment == "none"``) or evaluation batches.
        augment: As for :func:`~transferkit.data.transforms.train_transform`.
        samples: The split's samples, for the CPU fallback decoder.
        seed: The epoch's augmentation base seed, ``transforms.augment_seed(run_seed, epoch)``;
            the CPU path's ``ImageDataset`` gets the same value, which makes both paths draw the same
            parameters for the same image.
    """

    def __init__(self, spec: BackboneSpec, device: torch.device, train: bool, augment: str = "light",
                 samples: Sequence[Sample] | None = None, seed: int = 0) -> None:
        self.spec, self.device, self.train = spec, torch.device(device), train and augment != "none"
        self.samples, self.seed = samples, seed
        self.draft_size = resize_size(spec)
        # uint8 all the way, like PIL: torchvision's colour ops then truncate after each blend as PIL's
        # ImageEnhance does (on floats the jittered images came out 1.5 grey levels brighter on average)
        if self.train:
            self.crop, self.flip, self.jitter = train_ops(spec, augment)
        else:
            self.ops = eval_ops(spec)
        self.mean, self.std = list(spec.mean), list(spec.std)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        images, keep, failed = self._decode(batch)
        out = {"images": None, "labels": None, "indices": None, "failed": batch["failed"] + failed}
        if not images:
            return out
        indices = batch["indices"][keep]
        if self.train:
            keys = batch["keys"][keep] if "keys" in batch else indices
            views, jitter = zip(*(self._train_view(image, int(key)) for image, key in zip(images, keys)))
            views = colour_jitter(torch.stack(views), jitter)
        else:
            views = torch.stack([self._eval_view(image) for image in images])
        x = TF.normalize(TF.to_dtype(views, torch.float32, scale=True), self.mean, self.std)
        out.update(images=x.contiguous(memory_format=torch.channels_last),
                   labels=batch["labels"][keep].to(self.device, non_blocking=True),
                   indices=indices)
        return out

    def _eval_view(self, image: torch.Tensor) -> torch.Tensor:
        # op.transform skips Compose's per-call input flattening and checks, which add up over a batch
        for op in self.ops:
            image = op.transform(image, op.make_params([image]))
        return image

    def _train_view(self, image: torch.Tensor, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """Crop and flip one uint8 CHW image; returns the view and its colour-jitter parameters.

        The parameters are drawn under the image's seed in the order ``Compose`` draws them on the CPU
        path (crop box, flip coin, jitter), so they are the CPU path's exactly; the jitter itself is
        applied to the whole batch afterwards by :func:`colour_jitter`.
        """
        with image_rng(self.seed, index):
            crop = self.crop.make_params([image])
            flip = bool(torch.rand(1) < self.flip.p)  # RandomHorizontalFlip flips when rand(1) < p
            jitter = self.jitter.make_params([image])
        view = self.crop.transform(image, crop)
        return (self.flip.transform(view, {}) if flip else view), jitter

    def _decode(self, batch: dict[str, Any]) -> tuple[list[torch.Tensor], list[int], list[tuple[int, str]]]:
        """Batched nvJPEG decode; per-image retry, then the CPU decoder for what nvJPEG refuses."""
        jpeg_pos = [i for i, k in enumerate(batch["kinds"]) if k == "jpeg"]
        decoded: dict[int, torch.Tensor] = {}
        if jpeg_pos:
            payloads = [batch["payloads"][i] for i in jpeg_pos]
            try:
                results = decode_jpeg(payloads, mode=ImageReadMode.RGB, device=self.device, apply_exif_orientation=True)
                decoded.update(zip(jpeg_pos, results))
            except RuntimeError:
                for i, data in zip(jpeg_pos, payloads):
                    try:
                        decoded[i] = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device, apply_exif_orientation=True)
                    except RuntimeError:
                        pass  # e.g. CMYK or corrupt: the CPU decoder below decides
        images, keep, failed = [], [], []
        for i, kind in enumerate(batch["kinds"]):
            if kind == "jpeg" and i in decoded:
                image = decoded[i]
                if self.device.type == "cuda":  # the CPU decoder applies it itself
                    image = exif_orient(image, _exif_orientation(batch["payloads"][i]))
                image = draft_downscale(image, self.draft_size)
            elif kind != "jpeg":  # decoded in the worker by load_rgb, already at draft size
                image = batch["payloads"][i].to(self.device, non_blocking=True)
            else:
                index = int(batch["indices"][i])
                fallback = _cpu_decode(self._path(index), self.draft_size, -1, index)
                if fallback[0] == "failed":
                    failed.append((index, fallback[4]))
                    continue
                image = fallback[1].to(self.device)
            images.append(image)
            keep.append(i)
        return images, keep, failed

    def _path(self, index: int) -> str:
        if self.samples is None:
            raise DataError("GPU decode failed and no sample list was given for the CPU fallback")
        return self.samples[index].path
