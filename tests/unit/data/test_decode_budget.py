"""The decoding budget of transferkit.data.decode: what an image costs is decided from its header (decoded size
after JPEG draft reduction x the bytes a pixel takes while decoding and converting), and an image over the budget
is refused before a pixel is decoded, whichever path reads it (bytes, files, the scan's check).

The hostile images are all-zero PNGs built in memory: a 9400 x 9400 16-bit one is 171 KB (zlib's best ratio on
zeros), passes Pillow's decompression-bomb limit (88 MP < 89.5 MP) and took 3 GB and 7-13 s to decode before."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from pngbomb import zero_png  # noqa: F401 - also imported from here by the fresh-interpreter probe below
from transferkit.data import decode
from transferkit.data.decode import ImageDecodeError, check_image, load_rgb, load_rgb_bytes
from transferkit.errors import ConfigError

MAX_PIXELS_ENV = "TRANSFERKIT_MAX_PIXELS"


def image_cost(*args: object, **kwargs: object) -> "decode.DecodeCost":
    return decode.image_cost(*args, **kwargs)

REPO = Path(__file__).resolve().parents[3]




HOSTILE = {"16-bit grey": (16, 0), "RGBA": (8, 6)}


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every call of Pillow's pixel decoding (ImageFile.load) instead of running it."""
    calls: list[str] = []

    def load(self: ImageFile.ImageFile):  # noqa: ANN202 - Pillow's signature
        calls.append(f"{self.format} {self.mode} {self.size}")
        raise AssertionError("decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return calls


def test_the_hostile_pngs_are_small_and_valid():
    small = zero_png(300, 7, 16, 0)
    assert np.asarray(Image.open(io.BytesIO(small))).shape == (7, 300)
    for bits, colour in HOSTILE.values():
        data = zero_png(9400, 9400, bits, colour)
        assert len(data) < 400_000 and Image.open(io.BytesIO(data)).size == (9400, 9400)
        assert 9400 * 9400 < Image.MAX_IMAGE_PIXELS  # Pillow's own bomb check lets them through


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_hostile_png_is_refused_from_its_header_without_decoding(kind: str, tmp_path: Path, no_decoding: list[str]):
    data = zero_png(9400, 9400, *HOSTILE[kind])
    path = tmp_path / "hostile.png"
    path.write_bytes(data)
    with pytest.raises(ImageDecodeError) as refused:
        load_rgb_bytes(data, "upload.png", draft_size=256)
    assert refused.value.reason.startswith("image too large to decode"), refused.value.reason
    with pytest.raises(ImageDecodeError, match="too large to decode"):
        load_rgb(path, draft_size=256)
    assert "too large to decode" in (check_image(path, draft_size=256) or "")
    assert no_decoding == []  # refused from the header: Pillow never decoded a pixel


def test_the_refusal_names_the_image_the_cost_the_limit_and_the_fix():
    with pytest.raises(ImageDecodeError) as refused:
        load_rgb_bytes(zero_png(9400, 9400, 16, 0), "scan.png")
    message = str(refused.value)
    assert "'scan.png'" in message and "9400x9400" in message and "I;16" in message
    assert f"{decode.DEFAULT_MAX_PIXELS:,}" in message  # the limit
    assert "downscale" in message and "--max-pixels" in message and MAX_PIXELS_ENV in message  # the fixes


def test_image_cost_reads_the_header_only(no_decoding: list[str]):
    cost = image_cost(zero_png(9400, 9400, 16, 0), "a.png")
    assert (cost.width, cost.height, cost.mode, cost.format) == (9400, 9400, "I;16", "PNG")
    assert cost.pixels >= 9400 * 9400 and cost.nbytes >= 9400 * 9400 * decode.BYTES_PER_PIXEL
    assert no_decoding == []
    with pytest.raises(ImageDecodeError, match="not an image"):
        image_cost(b"hello", "notes.txt")


def _jpeg(width: int, height: int, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(buffer, "JPEG", quality=80, **save)
    return buffer.getvalue()


def test_a_large_jpeg_is_weighed_at_its_draft_size():
    data = _jpeg(2048, 1536)  # decoded at 1/8 with draft_size 192: 256 x 192
    assert image_cost(data, "a.jpg", draft_size=192).pixels == 256 * 192
    assert load_rgb_bytes(data, "a.jpg", draft_size=192, max_pixels=60_000).size == (256, 192)
    with pytest.raises(ImageDecodeError, match="too large to decode"):  # a full decode is 3.1 MP
        load_rgb_bytes(data, "a.jpg", max_pixels=60_000)


def test_a_progressive_jpeg_counts_its_coefficients_at_full_size():
    """libjpeg keeps a progressive JPEG's DCT coefficients for the whole image, whatever the draft scale."""
    baseline = image_cost(_jpeg(2048, 1536), "a.jpg", draft_size=192)
    progressive = image_cost(_jpeg(2048, 1536, progressive=True), "p.jpg", draft_size=192)
    assert progressive.width == baseline.width and progressive.nbytes > baseline.nbytes + 2048 * 1536 * 2


def test_the_limit_comes_from_the_argument_the_environment_or_the_default(monkeypatch: pytest.MonkeyPatch):
    data = zero_png(300, 200)  # 60,000 pixels
    assert load_rgb_bytes(data).size == (300, 200)
    with pytest.raises(ImageDecodeError, match="limit of 50,000 pixels"):
        load_rgb_bytes(data, max_pixels=50_000)
    monkeypatch.setenv(MAX_PIXELS_ENV, "50000")
    with pytest.raises(ImageDecodeError, match="limit of 50,000 pixels"):
        load_rgb_bytes(data)
    assert load_rgb_bytes(data, max_pixels=70_000).size == (300, 200)  # the argument wins
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ConfigError, match=MAX_PIXELS_ENV):
        load_rgb_bytes(data)


# --- the conversions stay lean and give the same pixels as before ------------------------------------------------


def _reference_rgb(img: Image.Image) -> np.ndarray:
    """The conversions as they were written before (whole-image float64 and alpha compositing)."""
    if img.mode in ("I;16", "I;16B", "I"):
        arr = np.clip(np.rint(np.asarray(img).astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
        return np.asarray(Image.fromarray(arr).convert("RGB"))
    if img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if arr.min() >= 0.0 and arr.max() <= 1.0:
            arr = arr * 255.0
        return np.asarray(Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8)).convert("RGB"))
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def _modes(rng: np.random.Generator) -> dict[str, Image.Image]:
    size = (301, 1030)  # taller than one conversion strip, odd sizes
    rgba = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    palette = Image.fromarray(rgba[..., :3]).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette.info["transparency"] = 3
    floats = rng.normal(0.5, 0.3, (size[1], size[0])).astype(np.float32)
    floats[0, :3] = [np.nan, np.inf, -np.inf]
    return {
        "RGBA": Image.fromarray(rgba, "RGBA"),
        "LA": Image.fromarray(rgba[..., :2].copy(), "LA"),
        "P+transparency": palette,
        "I;16": Image.fromarray(rng.integers(0, 65536, (size[1], size[0]), dtype=np.uint16)),
        "I": Image.fromarray(rng.integers(-1000, 70000, (size[1], size[0]), dtype=np.int32)),
        "F in [0, 1]": Image.fromarray(np.clip(floats, 0, 1)),
        "F": Image.fromarray(floats * 300),
        "CMYK": Image.fromarray(rgba, "RGBA").convert("CMYK"),
    }


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P+transparency", "I;16", "I", "F in [0, 1]", "F", "CMYK"])
def test_the_strip_conversions_give_the_same_pixels_as_whole_image_ones(mode: str):
    img = _modes(np.random.default_rng(0))[mode]
    np.testing.assert_array_equal(np.asarray(decode._to_rgb(img)), _reference_rgb(img))


def test_orientation_and_a_strip_conversion_give_the_same_pixels_as_before(tmp_path: Path):
    rgba = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 60, 4), dtype=np.uint8), "RGBA")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    rgba.save(tmp_path / "r.png", exif=exif)
    expected = np.asarray(Image.fromarray(_reference_rgb(rgba)).transpose(Image.Transpose.ROTATE_270))
    np.testing.assert_array_equal(np.asarray(load_rgb(tmp_path / "r.png")), expected)


# --- real memory and time, in a fresh interpreter ---------------------------------------------------------------

_PROBE = textwrap.dedent("""
    import json, resource, sys, time
    sys.path[:0] = [sys.argv[1], str(__import__("pathlib").Path(sys.argv[1]).parents[1])]  # this folder and tests/
    from test_decode_budget import zero_png
    from transferkit.data import decode
    from transferkit.data.decode import ImageDecodeError, load_rgb_bytes
    width, bits, colour, cap_mb = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    data = zero_png(width, width, bits, colour)
    if sys.argv[6] == "webp":
        import io
        from PIL import Image
        buffer = io.BytesIO()
        Image.open(io.BytesIO(data)).save(buffer, "WEBP", lossless=True)
        data = buffer.getvalue()
    def rss():  # VmHWM (the peak, reset by exec unlike ru_maxrss) is compared with this
        return [int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
    def vm():
        return int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (vm() + cap_mb * 2 ** 20, resource.RLIM_INFINITY))
    before, started = rss(), time.perf_counter()
    try:
        shape, reason = load_rgb_bytes(data, "probe.png", draft_size=256).size, None
    except ImageDecodeError as exc:
        shape, reason = None, exc.reason
    seconds = time.perf_counter() - started
    peak = [int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
    print(json.dumps({"grew_mb": (peak - before) / 2 ** 20, "seconds": seconds, "shape": shape, "reason": reason,
                      "estimate_mb": decode.image_cost(data, "probe.png", draft_size=256).nbytes / 2 ** 20
                      if hasattr(decode, "image_cost") else None}))
""")


def _probe(width: int, bits: int, colour: int, cap_mb: int, fmt: str = "png") -> dict:
    """Decode an all-zero PNG in a fresh interpreter whose address space may grow by ``cap_mb`` at most (so a
    decoder that would take gigabytes fails there instead of taking them from the machine)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    env.pop(MAX_PIXELS_ENV, None)
    out = subprocess.run([sys.executable, "-c", _PROBE, str(Path(__file__).parent), str(width), str(bits), str(colour),
                          str(cap_mb), fmt], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_hostile_png_costs_neither_memory_nor_time():
    result = _probe(9400, 16, 0, cap_mb=400)
    assert result["reason"] and result["reason"].startswith("image too large to decode"), result
    assert result["grew_mb"] < 32 and result["seconds"] < 1.0, result


@pytest.mark.parametrize("kind, bits, colour, fmt", [("16-bit grey", 16, 0, "png"), ("RGBA", 8, 6, "png"),
                                                     ("grey", 8, 0, "png"), ("RGB", 8, 2, "png"),
                                                     ("grey+alpha", 8, 4, "png"), ("RGBA", 8, 6, "webp")])
def test_an_image_within_the_budget_takes_no_more_memory_than_its_estimate(kind: str, bits: int, colour: int, fmt: str):
    """9 MP (4 MP of WebP, which costs 2.5x), under the default budget: the peak growth stays within the estimate."""
    side = 2000 if fmt == "webp" else 3000
    result = _probe(side, bits, colour, cap_mb=1024, fmt=fmt)
    assert result["shape"] == [side, side], result
    assert result["grew_mb"] <= result["estimate_mb"], result
