"""The GPU data path, exercised on the CPU (same code, device="cpu"): it must match the PIL path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transferkit.data.gpu import EncodedDataset, GpuPreprocessor, collate_encoded
from transferkit.data.scan import Sample
from transferkit.data.decode import load_rgb
from transferkit.data.transforms import eval_transform, resize_size
from transferkit.models.backbones import resolve_spec


def _photo(path: Path, size: tuple[int, int], seed: int, fmt: str = "JPEG", **kwargs) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    base = np.stack([xx * 255 / size[0], yy * 255 / size[1], np.full_like(xx, 128.0)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, fmt, **kwargs)
    return path


@pytest.fixture
def spec():
    return resolve_spec("efficientnet_lite0").with_input_size(64)


def _batch(samples, spec):
    ds = EncodedDataset(samples, resize_size(spec))
    return collate_encoded([ds[i] for i in range(len(ds))])


def test_eval_view_matches_the_pil_path(tmp_path: Path, spec):
    paths = [_photo(tmp_path / f"{i}.jpg", size, i, quality=95) for i, size in enumerate([(120, 90), (90, 120), (200, 200)])]
    samples = [Sample(str(p), 0) for p in paths]
    out = GpuPreprocessor(spec, torch.device("cpu"), train=False, samples=samples)(_batch(samples, spec))
    reference = torch.stack([eval_transform(spec)(load_rgb(p)) for p in paths])
    assert out["images"].shape == reference.shape == (3, 3, 64, 64)
    diff = (out["images"] - reference).abs().mean().item()
    assert diff < 0.03, f"GPU-path pixels differ from the PIL path by {diff:.4f} (normalised units)"


def test_non_jpeg_and_bad_files_fall_back_or_are_reported(tmp_path: Path, spec):
    png = _photo(tmp_path / "a.png", (80, 60), 1, fmt="PNG")
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"\xff\xd8\xff" + b"not really a jpeg" * 10)
    good = _photo(tmp_path / "c.jpg", (80, 60), 2)
    samples = [Sample(str(png), 0), Sample(str(bad), 1), Sample(str(good), 1)]
    batch = _batch(samples, spec)
    assert batch["kinds"] == ["raw", "jpeg", "jpeg"]
    out = GpuPreprocessor(spec, torch.device("cpu"), train=True, samples=samples, seed=3)(batch)
    assert out["images"].shape == (2, 3, 64, 64)
    assert out["indices"].tolist() == [0, 2]
    assert [i for i, _ in out["failed"]] == [1] and "b.jpg" in out["failed"][0][1]


def test_exif_orientation_is_applied(tmp_path: Path, spec):
    image = Image.new("RGB", (80, 40), (0, 0, 255))
    image.paste((0, 255, 0), (0, 0, 20, 10))  # green top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rot.jpg"
    image.save(path, exif=exif.tobytes(), quality=95)
    samples = [Sample(str(path), 0)]
    batch = _batch(samples, spec)
    pre = GpuPreprocessor(spec, torch.device("cpu"), train=False, samples=samples)
    decoded, _, _ = pre._decode(batch)
    assert tuple(decoded[0].shape[-2:]) == (80, 40)  # height and width swapped, like load_rgb
    reference = torch.from_numpy(np.array(load_rgb(path))).permute(2, 0, 1)
    assert (decoded[0].float() - reference.float()).abs().mean() < 3
