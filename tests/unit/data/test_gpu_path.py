"""The GPU data path, exercised on the CPU (same code, device="cpu"): it must match the PIL path.

Both paths decode JPEGs at the same reduced resolution, apply the same torchvision ops and draw the
random parameters of image ``index`` in epoch ``epoch`` from the same seed, so the tests compare
the sampled parameters exactly and the pixels within a small tolerance. On a machine with CUDA the
same tests also run on the GPU (nvJPEG).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2 as T

from transferkit.data.datasets import ImageDataset
from transferkit.data.decode import load_rgb
from transferkit.data.gpu import (EncodedDataset, GpuPreprocessor, _exif_orientation, collate_encoded, colour_jitter,
                                  draft_scale, exif_orient)
from transferkit.data.scan import Sample
from transferkit.data.transforms import augment_seed, eval_transform, resize_size, train_transform
from transferkit.models.backbones import resolve_spec

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _photo(path: Path, size: tuple[int, int], seed: int, fmt: str = "JPEG", **kwargs) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    base = np.stack([xx * 255 / size[0], yy * 255 / size[1], np.full_like(xx, 128.0)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, fmt, **kwargs)
    return path


@pytest.fixture
def spec():
    return resolve_spec("efficientnet_lite0").with_input_size(64)  # resize_size 73


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


def _batch(samples, spec, order=None):
    ds = EncodedDataset(samples, resize_size(spec))
    return collate_encoded([ds[i] for i in (order if order is not None else range(len(ds)))])


# sizes that leave PIL's draft at 1 (small) and that make it decode at 1/2, 1/4 and 1/8, odd sides included
_SIZES = [(120, 90), (90, 120), (200, 150), (301, 229), (700, 333), (640, 1201)]


def _cpu_path(samples, spec, transform, seed=None):
    dataset = ImageDataset(samples, transform, resize_size(spec), seed)
    return torch.stack([dataset[i][0] for i in range(len(samples))])


def test_eval_view_matches_the_pil_path(tmp_path: Path, spec, device):
    paths = [_photo(tmp_path / f"{i}.jpg", size, i, quality=95) for i, size in enumerate(_SIZES)]
    samples = [Sample(str(p), 0) for p in paths]
    out = GpuPreprocessor(spec, device, train=False, samples=samples)(_batch(samples, spec))
    reference = _cpu_path(samples, spec, eval_transform(spec))
    assert out["images"].shape == reference.shape == (len(paths), 3, 64, 64)
    diff = (out["images"].cpu() - reference).abs() * 127.5  # grey levels (the spec's std is 0.5)
    # measured on the CPU: mean 0.27, max 4 grey levels, no bias (libjpeg's scaled IDCT vs a box filter,
    # then PIL's vs torchvision's antialiased bicubic resize)
    assert diff.mean() < 1.0 and diff.max() < 12, f"mean {diff.mean():.2f}, max {diff.max():.1f} grey levels"


def test_jpegs_are_decoded_at_the_pil_draft_size(tmp_path: Path, spec, device):
    """nvJPEG has no draft mode: the full decode is reduced to exactly PIL's draft size and look."""
    draft = resize_size(spec)
    paths = [_photo(tmp_path / f"{i}.jpg", size, i, quality=90) for i, size in enumerate(_SIZES)]
    samples = [Sample(str(p), 0) for p in paths]
    decoded, keep, _ = GpuPreprocessor(spec, device, train=True, samples=samples)._decode(_batch(samples, spec))
    assert keep == list(range(len(paths)))
    scales = []
    for path, image in zip(paths, decoded):
        reference = torch.from_numpy(np.array(load_rgb(path, draft_size=draft))).permute(2, 0, 1)
        assert tuple(image.shape) == tuple(reference.shape), path.name
        with Image.open(path) as full:
            scales.append(draft_scale(full.height, full.width, draft))
        diff = (image.cpu().float() - reference.float()).abs()
        # measured on the CPU: mean 0.32 (worst image 0.8), max 7 grey levels
        assert diff.mean() < 1.5, f"{path.name}: {diff.mean():.2f} grey levels from PIL's draft decode"
    assert scales == [1, 1, 2, 2, 4, 8]  # every draft scale PIL can pick is covered


def test_draft_size_survives_exif_rotation(tmp_path: Path, spec, device):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (170, 333, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rot.jpg"
    image.save(path, exif=exif.tobytes(), quality=95)
    samples = [Sample(str(path), 0)]
    decoded, _, _ = GpuPreprocessor(spec, device, train=False, samples=samples)._decode(_batch(samples, spec))
    assert tuple(decoded[0].shape[-2:]) == tuple(reversed(load_rgb(path, draft_size=resize_size(spec)).size)) == (167, 85)


class _Recorder:
    """Spies on the v2 ops to log the parameters each image gets: crop box, flip, jitter."""

    def __init__(self, monkeypatch) -> None:
        self.events: list[tuple] = []
        crop, jitter, flip = T.RandomResizedCrop.make_params, T.ColorJitter.make_params, T.RandomHorizontalFlip.transform

        def crop_params(op, flat_inputs):
            params = crop(op, flat_inputs)
            self.events.append(("crop", params["top"], params["left"], params["height"], params["width"]))
            return params

        def jitter_params(op, flat_inputs):
            params = jitter(op, flat_inputs)
            self.events.append(("jitter", tuple(params["fn_idx"].tolist()), params["brightness_factor"],
                                params["contrast_factor"], params["saturation_factor"], params["hue_factor"]))
            return params

        def flipped(op, inpt, params):
            self.events.append(("flip",))
            return flip(op, inpt, params)

        monkeypatch.setattr(T.RandomResizedCrop, "make_params", crop_params)
        monkeypatch.setattr(T.ColorJitter, "make_params", jitter_params)
        monkeypatch.setattr(T.RandomHorizontalFlip, "transform", flipped)

    def per_image(self) -> list[list[tuple]]:
        """Each image's (crop, [flip], jitter) events; the GPU path applies the batch's jitter last."""
        groups: list[list[tuple]] = []
        for event in self.events:
            if event[0] == "crop":
                groups.append([])
            groups[-1].append(event)
        self.events = []
        kinds = ["crop", "flip", "jitter"]
        return [sorted(group, key=lambda event: kinds.index(event[0])) for group in groups]


def test_train_augmentation_draws_identical_parameters_on_both_paths(tmp_path: Path, spec, device, monkeypatch):
    paths = [_photo(tmp_path / f"{i}.jpg", size, i, quality=92) for i, size in enumerate(_SIZES)]
    samples = [Sample(str(p), 0) for p in paths]
    recorder = _Recorder(monkeypatch)
    for epoch in (0, 1):
        seed = augment_seed(7, epoch)
        cpu = _cpu_path(samples, spec, train_transform(spec), seed)
        cpu_params = recorder.per_image()
        order = [3, 0, 5, 1, 4, 2]  # another batch order: parameters follow the image, not its position
        gpu = GpuPreprocessor(spec, device, train=True, samples=samples, seed=seed)(_batch(samples, spec, order))
        gpu_params = recorder.per_image()
        assert len(gpu_params) == len(paths), f"the GPU path drew {len(gpu_params)} crop boxes for {len(paths)} images"
        assert [gpu_params[order.index(i)] for i in range(len(paths))] == cpu_params
        assert all(len(p) in (2, 3) and p[-1][0] == "jitter" for p in cpu_params)  # crop, [flip], jitter
        for *_, b, c, s, h in (p[-1] for p in cpu_params):
            assert all(0.9 <= f <= 1.1 for f in (b, c, s)) and h is None
        diff = (gpu["images"].cpu()[np.argsort(order)] - cpu).abs() * 127.5
        # measured on the CPU: mean 0.34, max 5 grey levels, no bias (same parameters, other pixel kernels)
        assert diff.mean() < 1.0 and diff.max() < 16, f"epoch {epoch}: mean {diff.mean():.2f}, max {diff.max():.1f}"
        if epoch == 0:
            first = cpu
    assert (first - cpu).abs().mean() * 127.5 > 10  # another epoch, another augmentation


def test_batched_colour_jitter_is_torchvisions(device):
    """colour_jitter applies each image's own ColorJitter parameters exactly as torchvision would."""
    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 24, 24), dtype=torch.uint8, device=device)
    images[:4] = images[:4, :1]  # a few grey images, where the blend lands on integers
    for op in (T.ColorJitter(0.1, 0.1, 0.1), T.ColorJitter(0.5, 0.5, 0.5, 0.2)):
        params = [op.make_params([image]) for image in images]
        expected = torch.stack([op.transform(image, p) for image, p in zip(images, params)])
        diff = (colour_jitter(images, params).int() - expected.int()).abs()
        assert diff.max() <= 1 and diff.float().mean() < 0.01, (diff.max(), diff.float().mean())


def test_train_path_has_colour_jitter(tmp_path: Path, spec, device):
    """A flat grey image is unchanged by crops and flips: only the jitter can change its brightness."""
    path = tmp_path / "grey.jpg"
    Image.new("RGB", (96, 80), (128, 128, 128)).save(path, quality=95)
    samples = [Sample(str(path), 0)]
    means = []
    for epoch in range(12):
        out = GpuPreprocessor(spec, device, train=True, samples=samples, seed=augment_seed(0, epoch))(_batch(samples, spec))
        means.append(out["images"].mean().item() * 127.5 + 127.5)
    cpu = [_cpu_path(samples, spec, train_transform(spec), augment_seed(0, e)).mean().item() * 127.5 + 127.5 for e in range(12)]
    assert np.std(means) > 2.0, f"brightness never changes across epochs on the GPU path: {means}"
    assert min(means) >= 128 * 0.9 - 3 and max(means) <= 128 * 1.1 + 3  # brightness factor in [0.9, 1.1]
    # same factors on both paths; torchvision's blend can land a hair under an integer and truncate
    # where PIL's is exact, so flat images differ by up to 2 grey levels (measured)
    assert np.allclose(means, cpu, atol=2.5), (means, cpu)


def test_train_view_depends_on_seed_epoch_and_index_only(tmp_path: Path, spec, device):
    paths = [_photo(tmp_path / f"{i}.jpg", (150, 120), i) for i in range(3)]
    samples = [Sample(str(p), 0) for p in paths]
    seed = augment_seed(3, 2)
    together = GpuPreprocessor(spec, device, train=True, samples=samples, seed=seed)(_batch(samples, spec))["images"]
    alone = GpuPreprocessor(spec, device, train=True, samples=samples, seed=seed)(_batch(samples, spec, [1]))["images"]
    torch.manual_seed(123)  # the caller's RNG state does not matter and is left alone
    state = torch.get_rng_state()
    again = GpuPreprocessor(spec, device, train=True, samples=samples, seed=seed)(_batch(samples, spec))["images"]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(together[1], alone[0]) and torch.equal(together, again)
    other = GpuPreprocessor(spec, device, train=True, samples=samples, seed=augment_seed(3, 3))(_batch(samples, spec))["images"]
    assert not torch.equal(together, other)


def test_non_jpeg_and_bad_files_fall_back_or_are_reported(tmp_path: Path, spec, device):
    png = _photo(tmp_path / "a.png", (80, 60), 1, fmt="PNG")
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"\xff\xd8\xff" + b"not really a jpeg" * 10)
    good = _photo(tmp_path / "c.jpg", (80, 60), 2)
    samples = [Sample(str(png), 0), Sample(str(bad), 1), Sample(str(good), 1)]
    batch = _batch(samples, spec)
    assert batch["kinds"] == ["raw", "jpeg", "jpeg"]
    out = GpuPreprocessor(spec, device, train=True, samples=samples, seed=3)(batch)
    assert out["images"].shape == (2, 3, 64, 64)
    assert out["indices"].tolist() == [0, 2]
    assert [i for i, _ in out["failed"]] == [1] and "b.jpg" in out["failed"][0][1]


def test_exif_orientation_is_applied(tmp_path: Path, spec, device):
    image = Image.new("RGB", (80, 40), (0, 0, 255))
    image.paste((0, 255, 0), (0, 0, 20, 10))  # green top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rot.jpg"
    image.save(path, exif=exif.tobytes(), quality=95)
    samples = [Sample(str(path), 0)]
    batch = _batch(samples, spec)
    pre = GpuPreprocessor(spec, device, train=False, samples=samples)
    decoded, _, _ = pre._decode(batch)
    assert tuple(decoded[0].shape[-2:]) == (80, 40)  # height and width swapped, like load_rgb
    reference = torch.from_numpy(np.array(load_rgb(path))).permute(2, 0, 1)
    assert (decoded[0].cpu().float() - reference.float()).abs().mean() < 3


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orient_matches_pil(tmp_path: Path, orientation: int):
    """nvJPEG ignores EXIF orientation: the GPU path reads the tag and applies it like PIL."""
    image = Image.fromarray(np.random.default_rng(orientation).integers(0, 255, (30, 50, 3), dtype=np.uint8))
    image.paste((0, 255, 0), (0, 0, 12, 6))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.jpg"
    image.save(path, exif=exif.tobytes(), quality=95)
    data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    assert _exif_orientation(data) == orientation
    oriented = exif_orient(decode_jpeg(data, mode=ImageReadMode.RGB, apply_exif_orientation=False), orientation)
    reference = torch.from_numpy(np.array(load_rgb(path))).permute(2, 0, 1)
    assert oriented.shape == reference.shape
    assert (oriented.float() - reference.float()).abs().mean() < 2
