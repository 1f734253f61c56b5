"""The one place transferkit reads image files.

Every image the toolkit touches goes through :func:`load_rgb`, which returns a fully decoded 8-bit RGB
:class:`PIL.Image.Image` or raises :class:`ImageDecodeError` (a :class:`~transferkit.errors.DataError`) whose
message names the file and the reason in plain words. No other exception type escapes, whatever the bytes on disk
are (a malformed ``$TRANSFERKIT_MAX_PIXELS`` is a ConfigError).

Policies:
    * Minimum size: both sides must be at least :data:`MIN_SIDE` (2) pixels. A 1-pixel-wide image carries no
      spatial information; in practice such files are tracking pixels, placeholders or damaged headers, and one
      of them resized to 224x224 only teaches the model a flat colour.
    * Size limit: ``PIL.Image.MAX_IMAGE_PIXELS`` (read at call time) is a hard limit on the stored size, checked
      before any pixel is decoded. Pillow only warns between 1x and 2x the limit; we refuse the whole range.
    * Decoding budget: what decoding will cost is read from the header (:func:`image_cost`: the decoded size,
      after JPEG draft reduction, times the bytes a pixel takes while decoding and converting, plus a progressive
      JPEG's full-size DCT coefficients), and an image over the budget (:func:`max_pixels_limit`) is refused
      before a pixel is decoded. A 9400x9400 all-zero 16-bit PNG is 170 KB and passes Pillow's limit; it took
      3 GB and seconds to decode before. Only a file's first frame is decoded, so frames add nothing.
    * Conversions run in strips: no mode needs more than :data:`BYTES_PER_PIXEL` bytes a pixel.
    * Truncated files are errors: ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never touched, so a half-written JPEG is
      reported instead of being padded with grey.
    * Multi-frame files (animated GIF, multi-page TIFF) yield their first frame.
    * A broken EXIF block does not reject otherwise good pixels: the image is returned without orientation
      correction and a warning is logged.
"""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import struct
from dataclasses import dataclass
from typing import Any, Callable, Final, Iterator

import numpy as np
from PIL import Image, ImageOps

from transferkit.errors import ConfigError, DataError

__all__ = ["BYTES_PER_PIXEL", "DEFAULT_MAX_PIXELS", "IMAGE_EXTENSIONS", "MAX_PIXELS_ENV", "MIN_SIDE", "DecodeCost",
           "ImageDecodeError", "check_image", "image_cost", "load_rgb", "load_rgb_bytes", "max_pixels_limit"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: Final[frozenset[str]] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                                                     ".ppm", ".pgm"})
"""Lowercase file suffixes (with the dot) that are treated as images."""

MIN_SIDE: Final[int] = 2
"""Smallest accepted width and height, in pixels."""

DEFAULT_MAX_PIXELS: Final[int] = 4096 * 4096
"""The decoding budget of one image, in pixels of an ordinary image (:data:`BYTES_PER_PIXEL` bytes each).

The models see a few hundred pixels a side (224 for most backbones, resized from 256): 4096 a side is 16x
that, more than a 5K screenshot or a 16-MP photo saved as PNG, and camera JPEGs are weighed at their draft
scale (1/8 a side: a 100-MP JPEG decodes to 1.6 MP). One image then takes at most 128 MB to decode."""

MAX_PIXELS_ENV: Final[str] = "TRANSFERKIT_MAX_PIXELS"
"""Sets the budget where no ``max_pixels`` is passed (train, predict, evaluate, audit; loader workers inherit it)."""

BYTES_PER_PIXEL: Final[int] = 8
"""What an ordinary pixel costs while decoding: the decoded image (Pillow keeps at most 4 bytes a pixel) and one
copy of at most 4 (the RGB conversion or the EXIF rotation). A budget of N pixels is N x 8 bytes."""

_JPEG_FORMATS: Final[frozenset[str]] = frozenset({"JPEG", "MPO"})
# Pillow plugins we let parse files: the raster formats behind IMAGE_EXTENSIONS (content decides, so a PNG named
# .jpg still works). This keeps rarely used parsers (and EPS, which shells out to Ghostscript) away from untrusted data.
_ALLOWED_FORMATS: Final[tuple[str, ...]] = ("JPEG", "PNG", "BMP", "DIB", "GIF", "WEBP", "TIFF", "PPM")
_BOMB_PIXELS_RE: Final = re.compile(r"\((\d+) pixels\)")
_SIXTEEN_BIT_MODES: Final[frozenset[str]] = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES: Final[frozenset[str]] = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WHITE: Final[tuple[int, int, int, int]] = (255, 255, 255, 255)
# bytes a pixel in Pillow's memory by mode; every other mode takes 4 (RGB, RGBA, LA, CMYK, I, F, ...)
_STORED_BYTES: Final[dict[str, int]] = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
# decoders holding full-size buffers of their own beside Pillow's image, in bytes a pixel (measured: libwebp's
# canvas and the frame handed to Pillow; libtiff's RGBA buffer for some encodings)
_DECODER_COPY: Final[dict[str, int]] = {"WEBP": 12, "TIFF": 4}
_STRIP_PIXELS: Final[int] = 1 << 16  # pixels a conversion strip
_STRIP_BYTES: Final[int] = 48  # bytes a strip pixel takes in all (crop, RGBA, background, composite, float64s ...)

# Exceptions Pillow's plugins are known to raise on hostile or damaged input. OSError covers UnidentifiedImageError
# and "image file is truncated"; some plugins raise SyntaxError for bad headers; struct.error, EOFError, IndexError
# and friends come out of hand-written header parsers.
_CORRUPT_ERRORS: Final = (OSError, SyntaxError, ValueError, TypeError, struct.error, EOFError, IndexError, KeyError,
                           ZeroDivisionError, OverflowError, AssertionError)


class ImageDecodeError(DataError):
    """An image file cannot be decoded: ``path`` (the file read) and ``reason`` (why, in plain words, no path)."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot use image {self.path!r}: {reason}")


@dataclass(frozen=True)
class DecodeCost:
    """What decoding one image will take, read from its header (nothing decoded).

    ``width`` x ``height`` is the decoded size (after a JPEG's draft reduction by ``scale`` a side), ``nbytes``
    the estimated peak memory of decoding and converting it to RGB.
    """

    width: int
    height: int
    mode: str
    format: str
    nbytes: int
    scale: int = 1

    @property
    def pixels(self) -> int:
        """The cost in budget pixels, ``nbytes / BYTES_PER_PIXEL`` rounded up (an ordinary image: its pixels)."""
        return -(-self.nbytes // BYTES_PER_PIXEL)


def max_pixels_limit(max_pixels: int | None = None) -> int:
    """The budget of one image: ``max_pixels``, else ``$TRANSFERKIT_MAX_PIXELS``, else :data:`DEFAULT_MAX_PIXELS`.

    Raises:
        ConfigError: when the environment variable is not a positive whole number.
    """
    if max_pixels is not None:
        return int(max_pixels)
    raw = os.environ.get(MAX_PIXELS_ENV, "")
    text = raw.strip().replace("_", "").replace(",", "")
    if not text:
        return DEFAULT_MAX_PIXELS
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"${MAX_PIXELS_ENV}={raw!r} is not a number of pixels; set it to a positive whole number "
                          f"(e.g. {MAX_PIXELS_ENV}={DEFAULT_MAX_PIXELS}, the default) or unset it")
    return int(text)


def load_rgb(path: str | os.PathLike[str], draft_size: int | None = None, max_pixels: int | None = None) -> Image.Image:
    """Read an image file and return it fully loaded as 8-bit RGB.

    EXIF orientation is applied; grayscale, palette, 1-bit, CMYK, 16-bit and alpha images are converted (alpha is
    composited onto white).

    Args:
        path: Image file to read.
        draft_size: If given and the file is a JPEG, let libjpeg decode at a reduced DCT scale (1/2, 1/4 or 1/8)
            chosen so that the shorter side stays ``>= draft_size``. Much faster for large photos that are going
            to be resized anyway. Ignored for other formats.
        max_pixels: The decoding budget (:func:`max_pixels_limit`): an image whose :func:`image_cost` is over it
            is refused before decoding.

    Returns:
        A loaded ``RGB`` image not tied to any open file.

    Raises:
        ImageDecodeError: (a ``DataError``) for any file that cannot be used; its message names the file and the
            reason.
    """
    limit = max_pixels_limit(max_pixels)
    return _guarded(path, draft_size, lambda: _load_rgb(path, draft_size, limit))


def load_rgb_bytes(data: bytes, name: str = "<upload>", draft_size: int | None = None,
                   max_pixels: int | None = None) -> Image.Image:
    """:func:`load_rgb` for an image held in memory (an HTTP upload): the same policies and errors.

    ``name`` stands for the path in error messages (e.g. the upload's file name).
    """
    if not data:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    limit = max_pixels_limit(max_pixels)
    return _guarded(name, draft_size, lambda: _load_rgb(name, draft_size, limit, io.BytesIO(data)))


def image_cost(data: bytes, name: str = "<upload>", draft_size: int | None = None,
               max_pixels: int | None = None) -> DecodeCost:
    """What decoding ``data`` with ``draft_size`` would take (:class:`DecodeCost`), from its header alone.

    Raises:
        ImageDecodeError: for bytes that are no usable image (not one, over Pillow's limit, too small, ...), and,
            when ``max_pixels`` is given, for one over that budget (the refusal :func:`load_rgb_bytes` gives).
    """
    if not data:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    limit = None if max_pixels is None else max_pixels_limit(max_pixels)

    def read() -> DecodeCost:
        with _open(name, io.BytesIO(data)) as img:
            stored_size = img.size
            cost = _prepare(name, img, draft_size)
        if limit is not None:
            _check_budget(name, cost, stored_size, limit)
        return cost

    return _guarded(name, draft_size, read)


def check_image(path: str | os.PathLike[str], draft_size: int | None = None,
                max_pixels: int | None = None) -> str | None:
    """Validate an image file by decoding it completely.

    ``draft_size`` and ``max_pixels`` as for :func:`load_rgb` (the draft makes checking JPEGs faster; truncation
    is still detected because libjpeg reads all data). Returns ``None`` if :func:`load_rgb` would succeed, else
    the reason string (e.g. ``"empty file (0 bytes)"``).
    """
    try:
        load_rgb(path, draft_size, max_pixels)
    except ImageDecodeError as exc:
        return exc.reason
    return None


def _guarded(path: str | os.PathLike[str], draft_size: int | None, action: Callable[[], Any]) -> Any:
    """Run ``action`` (which reads ``path``), turning every failure into an ImageDecodeError."""
    if draft_size is not None and draft_size < 1:
        raise ImageDecodeError(path, f"draft_size must be a positive integer, got {draft_size}")
    try:
        return action()
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(path, _bomb_reason(exc)) from None
    except MemoryError:
        raise ImageDecodeError(path, "out of memory while decoding (image too large?)") from None
    except _CORRUPT_ERRORS as exc:
        raise ImageDecodeError(path, _corrupt_reason(exc)) from None
    except Exception as exc:  # noqa: BLE001 - contract: an image or DataError
        raise ImageDecodeError(path, _corrupt_reason(exc)) from None


def _load_rgb(path: str | os.PathLike[str], draft_size: int | None, limit: int,
              data: io.BytesIO | None = None) -> Image.Image:
    """Open, check, weigh, decode and convert; may raise anything (see load_rgb).

    Leaving the ``with`` block closes only the file object (multi-frame formats keep it open after load()); the
    decoded pixels stay usable.
    """
    if data is None:
        _check_file(path)
    with _open(path, data) as img:
        stored_size = img.size
        _check_budget(path, _prepare(path, img, draft_size), stored_size, limit)
        img.load()
        _apply_exif_orientation(path, img)
        return _to_rgb(img)


def _open(path: str | os.PathLike[str], data: io.BytesIO | None) -> Image.Image:
    try:
        return Image.open(path if data is None else data, formats=_ALLOWED_FORMATS)
    except Image.UnidentifiedImageError:
        raise ImageDecodeError(path, "not an image (cannot identify image file)") from None


def _prepare(path: str | os.PathLike[str], img: Image.Image, draft_size: int | None) -> DecodeCost:
    """Check the stored size, set the JPEG draft scale, and weigh the decoding (header only)."""
    _check_dimensions(path, img.size)
    stored_width = img.size[0]
    coefficients = _coefficient_bytes(img) if img.info.get("progressive") else 0
    if draft_size is not None and img.format in _JPEG_FORMATS:
        img.draft("RGB", (draft_size, draft_size))
    width, height = img.size
    per_pixel = max(_STORED_BYTES.get(img.mode, 4) + 4, BYTES_PER_PIXEL) + _DECODER_COPY.get(img.format or "", 0)
    strips = min(width * height, _STRIP_PIXELS) * _STRIP_BYTES if _in_strips(img) else 0
    nbytes = width * height * per_pixel + coefficients + strips
    return DecodeCost(width, height, img.mode, img.format or "image", nbytes, max(1, stored_width // max(1, width)))


def _coefficient_bytes(img: Image.Image) -> int:
    """A progressive JPEG's DCT coefficients (2 bytes each), which libjpeg holds for the whole stored image."""
    layers = [(max(1, int(h)), max(1, int(v))) for _, h, v, _ in getattr(img, "layer", None) or []]
    layers = layers or [(1, 1)] * len(img.getbands())
    h_max, v_max = max(h for h, _ in layers), max(v for _, v in layers)
    width, height = img.size
    blocks = sum(_ceil_div(_ceil_div(width * h, h_max), 8) * _ceil_div(_ceil_div(height * v, v_max), 8)
                 for h, v in layers)
    return blocks * 64 * 2


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _check_budget(path: str | os.PathLike[str], cost: DecodeCost, stored: tuple[int, int], limit: int) -> None:
    """Refuse an image whose decoding would cost more than ``limit`` budget pixels."""
    if cost.pixels <= limit:
        return
    what = f"{stored[0]}x{stored[1]} {cost.format} ({cost.mode})"
    if cost.scale > 1:
        what += f" decoded at 1/{cost.scale} scale ({cost.width}x{cost.height})"
    shrink = (limit / cost.pixels) ** 0.5 * 0.95  # what would fit, with a margin for the fixed costs
    fits = f"{max(MIN_SIDE, int(stored[0] * shrink))}x{max(MIN_SIDE, int(stored[1] * shrink))}"
    raise ImageDecodeError(
        path,
        f"image too large to decode: {what} would take about {cost.nbytes / 2 ** 20:,.0f} MB, over the limit of "
        f"{limit:,} pixels ({limit * BYTES_PER_PIXEL / 2 ** 20:,.0f} MB) per image; downscale it to {fits} or less "
        f"(the model sees a few hundred pixels a side) or save it as an 8-bit JPEG, or raise the limit "
        f"(transferkit serve --max-pixels; ${MAX_PIXELS_ENV} for train, predict, evaluate and audit)",
    )


def _check_file(path: str | os.PathLike[str]) -> None:
    """Refuse missing, non-regular and empty files with a plain reason."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageDecodeError(path, "file not found (or a broken symlink)") from None
    except PermissionError:
        raise ImageDecodeError(path, "permission denied") from None
    except (OSError, ValueError) as exc:
        raise ImageDecodeError(path, f"cannot access file ({exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageDecodeError(path, "is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
        raise ImageDecodeError(path, "not a regular file")
    if st.st_size == 0:
        raise ImageDecodeError(path, "empty file (0 bytes)")


def _check_dimensions(path: str | os.PathLike[str], size: tuple[int, int]) -> None:
    """Apply the size limit and the minimum-size policy before decoding."""
    width, height = size
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise ImageDecodeError(path, f"image too large: {width * height} pixels exceeds the decompression-bomb "
                                     f"limit of {limit}")
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageDecodeError(path, f"image too small: {width}x{height} (need at least {MIN_SIDE} px on each side)")


def _apply_exif_orientation(path: str | os.PathLike[str], img: Image.Image) -> None:
    """Rotate/flip ``img`` in place per its EXIF orientation tag (the old pixels are freed once rotated)."""
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - bad EXIF must not reject good pixels
        logger.warning("ignoring unreadable EXIF orientation in %r: %s", os.fspath(path), exc)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (may return ``img`` itself).

    Conversions that need intermediate images (16-bit and float scaling, alpha compositing) run strip by strip
    into the RGB result, so they hold the decoded image, the result and one strip, never whole-image copies.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _SIXTEEN_BIT_MODES:
        return _by_strips(img, _sixteen_bit_to_rgb)
    if mode == "F":
        return _float_to_rgb(img)
    if mode in _ALPHA_MODES or "transparency" in img.info:
        # Composite onto white instead of dropping alpha: fully transparent pixels usually store RGB = 0, so a plain
        # convert("RGB") paints the background black. Transparent backgrounds (logos, product shots, icons) are
        # meant to be seen on a light page; a black fill would add hard edges and a colour shift the model learns.
        return _by_strips(img, _composite_on_white)
    # L, 1, P (opaque), CMYK (Pillow already undoes Adobe inversion when reading JPEG CMYK), YCbCr, HSV ...
    # Unsupported modes (e.g. LAB) raise ValueError, which load_rgb reports as corrupt/unsupported data.
    return img.convert("RGB")


def _in_strips(img: Image.Image) -> bool:
    """Whether :func:`_to_rgb` converts ``img`` strip by strip."""
    return img.mode in _SIXTEEN_BIT_MODES or img.mode in ("F", *_ALPHA_MODES) or (
        img.mode != "RGB" and "transparency" in img.info)


def _strips(img: Image.Image) -> Iterator[tuple[tuple[int, int], Image.Image]]:
    """``img`` in horizontal strips of about ``_STRIP_PIXELS`` pixels: (top-left corner, strip)."""
    width, height = img.size
    rows = max(1, _STRIP_PIXELS // max(1, width))
    for top in range(0, height, rows):
        yield (0, top), img.crop((0, top, width, min(height, top + rows)))


def _by_strips(img: Image.Image, convert: Callable[[Image.Image], Image.Image]) -> Image.Image:
    """The RGB image made of ``convert`` applied to each strip of ``img`` (a per-pixel conversion)."""
    out = Image.new("RGB", img.size)
    for corner, strip in _strips(img):
        out.paste(convert(strip), corner)
    return out


def _composite_on_white(strip: Image.Image) -> Image.Image:
    rgba = strip.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")


def _sixteen_bit_to_rgb(strip: Image.Image) -> Image.Image:
    """Scale 16-bit grayscale (``I;16*`` / ``I``) to 8 bits: Pillow's ``convert("RGB")`` clips at 255, turning
    almost every pixel white. 0..65535 maps linearly onto 0..255 (divide by 257, round), anything outside that
    range (``I`` is signed 32-bit) is clipped."""
    return _grey_to_rgb(np.asarray(strip).astype(np.float64) / 257.0)


def _float_to_rgb(img: Image.Image) -> Image.Image:
    """Map a float image to 8 bits: values in [0, 1] are scaled by 255,
    anything else is assumed to be in 0..255 already and clipped."""
    def finite(strip: Image.Image) -> np.ndarray:
        return np.nan_to_num(np.asarray(strip, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)

    ranges = [(float(a.min()), float(a.max())) for a in (finite(strip) for _, strip in _strips(img))]
    scale = 255.0 if min(lo for lo, _ in ranges) >= 0.0 and max(hi for _, hi in ranges) <= 1.0 else 1.0
    return _by_strips(img, lambda strip: _grey_to_rgb(finite(strip) * scale))


def _grey_to_rgb(values: np.ndarray) -> Image.Image:
    """Grey levels (float, nominally 0..255) rounded, clipped to 8 bits, as RGB."""
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8)).convert("RGB")


def _bomb_reason(exc: Image.DecompressionBombError) -> str:
    """Reason for Pillow's own (2x limit) decompression-bomb refusal."""
    match = _BOMB_PIXELS_RE.search(str(exc))
    pixels = match.group(1) if match else "too many"
    limit = Image.MAX_IMAGE_PIXELS
    return f"image too large: {pixels} pixels exceeds the decompression-bomb limit of {limit}"


def _corrupt_reason(exc: BaseException) -> str:
    """Describe a decoder failure in plain words, keeping Pillow's detail."""
    detail = str(exc).strip() or type(exc).__name__
    if len(detail) > 200:
        detail = detail[:197] + "..."
    if isinstance(exc, ValueError) and "conversion" in detail:
        return f"unsupported colour mode ({detail})"
    return f"truncated or corrupt image data ({type(exc).__name__}: {detail})"
