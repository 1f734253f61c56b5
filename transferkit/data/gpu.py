"""GPU data path: loaders read bytes, JPEGs are decoded in batches on the GPU (nvJPEG through
``torchvision.io.decode_jpeg(device="cuda")``), then resized, cropped, flipped and normalised there.

On a fast GPU, PIL decoding (~270 images/s per core) starves the model; moving the decode and the
geometry to the GPU removes the CPU from the hot path. Anything nvJPEG cannot decode (PNG, GIF,
CMYK JPEG, corrupt data) falls back to the CPU decoder in the worker or here, so the results stay the
same as the CPU path. The same code runs with ``device="cpu"`` (torchvision's libjpeg decoder), which
is how the tests check it against the PIL path on machines without a GPU.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.functional import pil_to_tensor

from transferkit.data.decode import load_rgb
from transferkit.data.scan import Sample
from transferkit.data.transforms import resize_size
from transferkit.errors import DataError
from transferkit.models.backbones import BackboneSpec

__all__ = ["EncodedDataset", "collate_encoded", "GpuPreprocessor"]

_JPEG_MAGIC = b"\xff\xd8\xff"
_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest"}


class EncodedDataset(Dataset):
    """Yields JPEG bytes untouched, or a CPU-decoded uint8 CHW tensor for anything else."""

    def __init__(self, samples: Sequence[Sample], draft_size: int | None = None) -> None:
        self.samples = list(samples)
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[str, Any, int, int, str | None]:
        sample = self.samples[index]
        try:
            data = Path(sample.path).read_bytes()
        except OSError as exc:
            return "failed", None, sample.label, index, f"cannot read file ({exc.strerror or exc})"
        if data[:3] == _JPEG_MAGIC:
            return "jpeg", torch.frombuffer(bytearray(data), dtype=torch.uint8), sample.label, index, None
        return _cpu_decode(sample.path, self.draft_size, sample.label, index)


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
        "failed": [(item[3], item[4]) for item in batch if item[0] == "failed"],
    }


class GpuPreprocessor:
    """Turns an encoded batch into the normalised image batch the model expects, on ``device``."""

    def __init__(self, spec: BackboneSpec, device: torch.device, train: bool, augment: str = "light",
                 samples: Sequence[Sample] | None = None, seed: int = 0) -> None:
        self.spec, self.device, self.train = spec, torch.device(device), train and augment != "none"
        self.samples = samples
        self.rng = random.Random(seed)
        self.mean = torch.tensor(spec.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(spec.std, device=self.device).view(1, 3, 1, 1) * 255.0
        self.mode = _MODES.get(spec.interpolation, "bilinear")

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        images, keep, failed = self._decode(batch)
        out = {"images": None, "labels": None, "indices": None, "failed": batch["failed"] + failed}
        if not images:
            return out
        crops = [self._train_view(im) if self.train else self._eval_view(im) for im in images]
        x = (torch.stack(crops).float() - self.mean) / self.std
        out.update(images=x.contiguous(memory_format=torch.channels_last),
                   labels=batch["labels"][keep].to(self.device, non_blocking=True),
                   indices=batch["indices"][keep])
        return out

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
            image = decoded.get(i) if kind == "jpeg" else batch["payloads"][i].to(self.device, non_blocking=True)
            if image is None:
                index = int(batch["indices"][i])
                fallback = _cpu_decode(self._path(index), resize_size(self.spec), -1, index)
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

    def _resize(self, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        antialias = self.mode in ("bilinear", "bicubic")
        out = F.interpolate(image.unsqueeze(0).float(), size=size, mode=self.mode, antialias=antialias,
                            align_corners=False if self.mode != "nearest" else None)
        return out.squeeze(0).clamp_(0, 255)

    def _eval_view(self, image: torch.Tensor) -> torch.Tensor:
        """Shorter side to input/crop_pct, then the centre crop (same geometry as eval_transform)."""
        short = resize_size(self.spec)
        h, w = image.shape[-2:]
        if h <= w:
            size = (short, max(1, int(short * w / h)))
        else:
            size = (max(1, int(short * h / w)), short)
        resized = self._resize(image, size)
        crop = self.spec.input_size
        top, left = int(round((size[0] - crop) / 2.0)), int(round((size[1] - crop) / 2.0))
        return resized[:, top:top + crop, left:left + crop]

    def _train_view(self, image: torch.Tensor) -> torch.Tensor:
        """Random resized crop (scale 0.5-1) + horizontal flip, like train_transform."""
        state = torch.random.get_rng_state()
        torch.manual_seed(self.rng.getrandbits(63))
        top, left, h, w = RandomResizedCrop.get_params(image, scale=[0.5, 1.0], ratio=[3 / 4, 4 / 3])
        torch.random.set_rng_state(state)
        size = self.spec.input_size
        view = self._resize(image[:, top:top + h, left:left + w], (size, size))
        return view.flip(-1) if self.rng.random() < 0.5 else view
