"""Bad-input matrix for transferkit.data.decode: every case either decodes to
the right pixels/orientation or raises DataError with the expected reason."""

from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from transferkit.data.decode import (
    IMAGE_EXTENSIONS,
    MIN_SIDE,
    ImageDecodeError,
    check_image,
    load_rgb,
)
from transferkit.errors import DataError

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


def close_to(actual: object, expected: tuple[int, ...], tol: int = 12) -> bool:
    """Pixel equality up to JPEG-style tolerance."""
    assert isinstance(actual, tuple), actual
    return all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True))


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth but detailed RGB image (gradients + blocks + mild noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 127 + 100 * np.sin(xx / 37.0)
    g = 127 + 100 * np.cos(yy / 23.0)
    b = 255 * ((xx // 64 + yy // 64) % 2)
    arr = np.stack([r, g, b], axis=-1) + rng.normal(0, 4, (height, width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def corner_image(width: int = 60, height: int = 40) -> Image.Image:
    """Red canvas with a green 20x20 block in the top-left corner."""
    img = Image.new("RGB", (width, height), RED)
    img.paste(GREEN, (0, 0, 20, 20))
    return img


def png16_rgb_bytes(rgb16: np.ndarray) -> bytes:
    """Hand-written 16-bit-per-channel RGB PNG (Pillow cannot write one)."""
    height, width, _ = rgb16.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16)

    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def expect_reason(path: Path, fragment: str) -> None:
    """Assert load_rgb raises a DataError naming the file and the reason."""
    with pytest.raises(DataError) as info:
        load_rgb(path)
    message = str(info.value)
    assert fragment in message
    assert str(path) in message
    assert isinstance(info.value, ImageDecodeError)
    assert fragment in info.value.reason
    assert check_image(path) == info.value.reason


# --- files that are not images at all ------------------------------------


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    expect_reason(path, "empty file (0 bytes)")


def test_text_file_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n" * 10)
    expect_reason(path, "not an image (cannot identify image file)")


def test_missing_file_and_folder(tmp_path: Path) -> None:
    expect_reason(tmp_path / "nope.jpg", "file not found")
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    expect_reason(folder, "is a folder, not a file")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "pipe.jpg"
    os.mkfifo(path)
    expect_reason(path, "not a regular file")


def test_unsupported_format_is_not_parsed(tmp_path: Path) -> None:
    # ICO is a format Pillow knows but we do not let parse untrusted data.
    path = tmp_path / "icon.png"
    Image.new("RGB", (16, 16), RED).save(path, format="ICO")
    expect_reason(path, "not an image")


# --- damaged images ---------------------------------------------------------


def test_truncated_jpeg(tmp_path: Path) -> None:
    buf = io.BytesIO()
    photo_like(320, 240).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    path = tmp_path / "half.jpg"
    path.write_bytes(data[: len(data) // 2])
    expect_reason(path, "truncated or corrupt image data")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_jpeg_detected_in_draft_mode(tmp_path: Path) -> None:
    buf = io.BytesIO()
    photo_like(1200, 900).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    path = tmp_path / "half.jpg"
    path.write_bytes(data[: len(data) // 2])
    reason = check_image(path, draft_size=64)
    assert reason is not None and "truncated or corrupt" in reason


def test_truncated_png(tmp_path: Path) -> None:
    buf = io.BytesIO()
    photo_like(64, 64).save(buf, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buf.getvalue()[:-200])
    expect_reason(path, "truncated or corrupt image data")


# --- size policies ----------------------------------------------------------


def test_one_by_one_image_is_too_small(tmp_path: Path) -> None:
    path = tmp_path / "pixel.png"
    Image.new("RGB", (1, 1), RED).save(path)
    expect_reason(path, "image too small: 1x1 (need at least 2 px on each side)")


def test_thin_image_is_too_small_but_minimum_is_fine(tmp_path: Path) -> None:
    thin = tmp_path / "thin.png"
    Image.new("RGB", (50, 1), RED).save(thin)
    expect_reason(thin, "image too small: 50x1")
    ok = tmp_path / "ok.png"
    Image.new("RGB", (MIN_SIDE, MIN_SIDE), RED).save(ok)
    assert load_rgb(ok).size == (MIN_SIDE, MIN_SIDE)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [40, 100])  # 1.6x (Pillow warns) and 10x (Pillow errors)
def test_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, side: int) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (side, side), RED).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    expect_reason(
        path, f"image too large: {side * side} pixels exceeds the decompression-bomb limit of 1000"
    )


# --- colour modes -----------------------------------------------------------


def test_rgb_png_exact_and_detached_from_file(tmp_path: Path) -> None:
    path = tmp_path / "rgb.png"
    corner_image().save(path)
    img = load_rgb(path)
    path.unlink()  # the result must not depend on the file any more
    assert img.mode == "RGB" and img.size == (60, 40)
    assert img.getpixel((5, 5)) == GREEN and img.getpixel((50, 30)) == RED


def test_grayscale_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "gray.jpg"
    Image.new("L", (32, 32), 100).save(path)
    img = load_rgb(path)
    assert img.mode == "RGB"
    assert close_to(img.getpixel((16, 16)), (100, 100, 100), tol=2)


def test_one_bit_png(tmp_path: Path) -> None:
    path = tmp_path / "bits.png"
    bits = Image.new("1", (16, 8), 0)
    bits.paste(1, (8, 0, 16, 8))
    bits.save(path)
    img = load_rgb(path)
    assert img.mode == "RGB"
    assert img.getpixel((2, 2)) == (0, 0, 0) and img.getpixel((12, 2)) == WHITE


def test_palette_png(tmp_path: Path) -> None:
    path = tmp_path / "palette.png"
    pal = Image.new("P", (10, 10), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * (254 * 3))
    pal.paste(0, (0, 0, 5, 10))
    pal.save(path)
    img = load_rgb(path)
    assert img.mode == "RGB"
    assert img.getpixel((1, 1)) == (0, 0, 0) and img.getpixel((8, 8)) == (10, 200, 30)


def test_palette_png_with_transparency_composites_on_white(tmp_path: Path) -> None:
    path = tmp_path / "palette_t.png"
    pal = Image.new("P", (10, 10), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * (254 * 3))
    pal.paste(0, (0, 0, 5, 10))
    pal.save(path, transparency=0)  # index 0 (black) is fully transparent
    img = load_rgb(path)
    assert img.getpixel((1, 1)) == WHITE  # not black
    assert img.getpixel((8, 8)) == (10, 200, 30)


def test_rgba_png_alpha_composited_onto_white(tmp_path: Path) -> None:
    path = tmp_path / "rgba.png"
    rgba = Image.new("RGBA", (30, 10), (255, 0, 0, 0))  # transparent "red"
    rgba.paste((0, 0, 255, 255), (10, 0, 20, 10))  # opaque blue
    rgba.paste((0, 0, 0, 128), (20, 0, 30, 10))  # half-transparent black
    rgba.save(path)
    img = load_rgb(path)
    assert img.getpixel((5, 5)) == WHITE
    assert img.getpixel((15, 5)) == BLUE
    assert close_to(img.getpixel((25, 5)), (127, 127, 127), tol=1)


def test_la_png_alpha_composited_onto_white(tmp_path: Path) -> None:
    path = tmp_path / "la.png"
    la = Image.new("LA", (10, 10), (0, 0))
    la.paste((50, 255), (5, 0, 10, 10))
    la.save(path)
    img = load_rgb(path)
    assert img.getpixel((1, 1)) == WHITE and img.getpixel((8, 8)) == (50, 50, 50)


def test_sixteen_bit_grayscale_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "gray16.png"
    values = np.array([[65535, 32768, 0, 1000, 257]] * 2, dtype=np.uint16)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")  # the case PIL's convert() clips
    img = load_rgb(path)
    row = [img.getpixel((x, 0)) for x in range(5)]
    assert row == [(255,) * 3, (128,) * 3, (0,) * 3, (4,) * 3, (1,) * 3]


def test_sixteen_bit_rgb_png(tmp_path: Path) -> None:
    path = tmp_path / "rgb16.png"
    rgb16 = np.zeros((2, 3, 3), dtype=np.uint16)
    rgb16[:, 0] = (65535, 0, 0)
    rgb16[:, 1] = (32768, 32768, 32768)
    rgb16[:, 2] = (0, 0, 65535)
    path.write_bytes(png16_rgb_bytes(rgb16))
    img = load_rgb(path)
    assert img.getpixel((0, 0)) == RED and img.getpixel((2, 1)) == BLUE
    assert close_to(img.getpixel((1, 0)), (128, 128, 128), tol=1)


def test_sixteen_bit_pgm(tmp_path: Path) -> None:
    path = tmp_path / "gray16.pgm"
    values = np.array([[65535, 32768], [0, 0]], dtype=">u2")
    path.write_bytes(b"P5 2 2 65535\n" + values.tobytes())
    img = load_rgb(path)
    assert img.getpixel((0, 0)) == WHITE and close_to(img.getpixel((1, 0)), (128,) * 3, tol=1)


def test_float_tiff(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.5], [1.0, 1.0]], dtype=np.float32)).save(path)
    img = load_rgb(path)
    assert img.getpixel((0, 0)) == (0, 0, 0) and close_to(img.getpixel((1, 0)), (128,) * 3, tol=1)


def test_cmyk_jpeg_adobe_inverted(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    cmyk = Image.new("CMYK", (32, 16), (0, 255, 255, 0))  # red
    cmyk.paste((255, 0, 0, 0), (16, 0, 32, 16))  # cyan
    cmyk.save(path, quality=95)
    assert "adobe" in Image.open(path).info  # libjpeg writes inverted Adobe CMYK
    img = load_rgb(path)
    assert img.mode == "RGB"
    assert close_to(img.getpixel((4, 8)), RED)
    assert close_to(img.getpixel((28, 8)), (0, 255, 255))


def test_animated_gif_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (20, 20), c) for c in (RED, GREEN, BLUE)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert getattr(Image.open(path), "n_frames", 1) == 3
    img = load_rgb(path)
    assert img.mode == "RGB" and img.getpixel((10, 10)) == RED


def test_multi_page_rgb_tiff_first_page_usable_after_file_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "pages.tif"
    pages = [Image.new("RGB", (20, 10), c) for c in (BLUE, RED)]
    pages[0].save(path, save_all=True, append_images=pages[1:])
    img = load_rgb(path)
    path.unlink()
    assert img.getpixel((3, 3)) == BLUE and img.resize((4, 2)).getpixel((0, 0)) == BLUE


# --- orientation, names, draft ---------------------------------------------


@pytest.mark.parametrize(
    ("orientation", "green_at"),
    [
        (1, (5, 5)),  # no change: top-left
        (6, (35, 5)),  # rotate 90 deg clockwise: top-left -> top-right
        (8, (5, 55)),  # rotate 90 deg counter-clockwise: top-left -> bottom-left
        (3, (55, 35)),  # rotate 180: top-left -> bottom-right
    ],
)
def test_exif_orientation(tmp_path: Path, orientation: int, green_at: tuple[int, int]) -> None:
    path = tmp_path / f"exif{orientation}.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    corner_image(60, 40).save(path, quality=95, exif=exif)
    img = load_rgb(path)
    assert img.size == ((40, 60) if orientation in (6, 8) else (60, 40))
    assert close_to(img.getpixel(green_at), GREEN)
    w, h = img.size
    corners = [(2, 2), (w - 3, 2), (2, h - 3), (w - 3, h - 3)]
    greens = [c for c in corners if close_to(img.getpixel(c), GREEN)]
    assert len(greens) == 1


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_corrupt_exif_does_not_reject_good_pixels(tmp_path: Path) -> None:
    path = tmp_path / "badexif.jpg"
    corner_image().save(path, quality=95, exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f garbage")
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (60, 40)


@pytest.mark.parametrize(
    "name", ["with space.jpg", "café ünïcödé 图像 1.JPG", "  leading and trailing  .png"]
)
def test_unicode_and_space_names(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "dossier été"
    folder.mkdir()
    path = folder / name
    corner_image().save(path, format="PNG" if name.endswith(".png") else "JPEG", quality=95)
    img = load_rgb(path)
    assert img.size == (60, 40) and close_to(img.getpixel((5, 5)), GREEN)
    assert check_image(str(path)) is None


def test_unicode_name_appears_in_error(tmp_path: Path) -> None:
    path = tmp_path / "ça ne va pas 图.jpg"
    path.write_bytes(b"")
    expect_reason(path, "empty file")


def test_draft_mode_reduces_but_keeps_short_side(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    photo_like(2000, 1500).save(path, quality=92)
    full = load_rgb(path)
    drafted = load_rgb(path, draft_size=224)
    assert full.size == (2000, 1500)
    assert 224 <= min(drafted.size) < 1500
    assert drafted.size == (500, 375)  # 1/4 DCT scale; 1/8 would give 188 < 224
    reference = np.asarray(full.resize(drafted.size, Image.Resampling.BOX), dtype=np.float64)
    diff = np.abs(np.asarray(drafted, dtype=np.float64) - reference)
    assert diff.mean() < 4.0


@pytest.fixture(scope="module")
def jpeg_1500x1000(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("draft") / "big.jpg"
    photo_like(1500, 1000).save(path, quality=80)
    return path


@pytest.mark.parametrize("draft_size", [1, 100, 187, 188, 224, 375, 376, 5000])
def test_draft_short_side_never_below_request(jpeg_1500x1000: Path, draft_size: int) -> None:
    size = load_rgb(jpeg_1500x1000, draft_size=draft_size).size
    assert min(size) >= min(draft_size, 1000)


def test_draft_with_exif_rotation(tmp_path: Path) -> None:
    path = tmp_path / "rot.jpg"
    big = Image.new("RGB", (1600, 1200), RED)
    big.paste(GREEN, (0, 0, 400, 400))
    exif = Image.Exif()
    exif[0x0112] = 6
    big.save(path, quality=92, exif=exif)
    img = load_rgb(path, draft_size=224)
    assert img.size == (300, 400)  # 1/4 scale of 1600x1200, then rotated
    assert close_to(img.getpixel((280, 20)), GREEN) and close_to(img.getpixel((20, 20)), RED)


def test_draft_ignored_for_png(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    photo_like(400, 300).save(path)
    assert load_rgb(path, draft_size=16).size == (400, 300)


def test_bad_draft_size_is_data_error(tmp_path: Path) -> None:
    path = tmp_path / "ok.png"
    corner_image().save(path)
    with pytest.raises(DataError, match="draft_size"):
        load_rgb(path, draft_size=0)


def test_image_extensions() -> None:
    assert {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"} <= IMAGE_EXTENSIONS
    assert {".ppm", ".pgm"} <= IMAGE_EXTENSIONS
    assert all(ext == ext.lower() and ext.startswith(".") for ext in IMAGE_EXTENSIONS)
    assert isinstance(IMAGE_EXTENSIONS, frozenset)


@pytest.mark.parametrize("fmt", ["BMP", "WEBP", "TIFF", "PPM"])
def test_other_formats_read(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"img.{fmt.lower()}"
    corner_image().save(path, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    img = load_rgb(path)
    assert img.size == (60, 40) and img.getpixel((5, 5)) == GREEN


def test_png_named_jpg_is_read_by_content(tmp_path: Path) -> None:
    path = tmp_path / "actually_png.jpg"
    corner_image().save(path, format="PNG")
    assert load_rgb(path).getpixel((5, 5)) == GREEN


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root ignores modes")
def test_permission_denied(tmp_path: Path) -> None:
    path = tmp_path / "secret.png"
    corner_image().save(path)
    path.chmod(0)
    try:
        reason = check_image(path)
    finally:
        path.chmod(0o644)
    assert reason is not None and "permission denied" in reason
