"""The one place transferkit reads image files.

Every image the toolkit touches goes through :func:`load_rgb`, which returns a
fully decoded 8-bit RGB :class:`PIL.Image.Image` or raises
:class:`ImageDecodeError` (a :class:`~transferkit.errors.DataError`) whose
message names the file and the reason in plain words. No other exception type
escapes, whatever the bytes on disk are.

Policies:
    * Minimum size: both sides must be at least :data:`MIN_SIDE` (2) pixels.
      A 1-pixel-wide image carries no spatial information; in practice such
      files are tracking pixels, placeholders or damaged headers, and one of
      them resized to 224x224 only teaches the model a flat colour.
    * Size limit: ``PIL.Image.MAX_IMAGE_PIXELS`` (read at call time) is a hard
      limit on the stored size, checked before any pixel is decoded. Pillow
      only warns between 1x and 2x the limit; we refuse the whole range.
    * Truncated files are errors: ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never
      touched, so a half-written JPEG is reported instead of being padded with
      grey.
    * Multi-frame files (animated GIF, multi-page TIFF) yield their first frame.
    * A broken EXIF block does not reject otherwise good pixels: the image is
      returned without orientation correction and a warning is logged.
"""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import struct
from typing import Final

import numpy as np
from PIL import Image, ImageOps

from transferkit.errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MIN_SIDE",
    "ImageDecodeError",
    "check_image",
    "load_rgb",
    "load_rgb_bytes",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: Final[frozenset[str]] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
"""Lowercase file suffixes (with the dot) that are treated as images."""

MIN_SIDE: Final[int] = 2
"""Smallest accepted width and height, in pixels."""

_JPEG_FORMATS: Final[frozenset[str]] = frozenset({"JPEG", "MPO"})
# Pillow plugins we let parse files: the raster formats behind
# IMAGE_EXTENSIONS (content decides, so a PNG named .jpg still works). This
# keeps rarely used parsers (and EPS, which shells out to Ghostscript) away
# from untrusted data.
_ALLOWED_FORMATS: Final[tuple[str, ...]] = (
    "JPEG",
    "PNG",
    "BMP",
    "DIB",
    "GIF",
    "WEBP",
    "TIFF",
    "PPM",
)
_BOMB_PIXELS_RE: Final = re.compile(r"\((\d+) pixels\)")
_SIXTEEN_BIT_MODES: Final[frozenset[str]] = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES: Final[frozenset[str]] = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WHITE: Final[tuple[int, int, int, int]] = (255, 255, 255, 255)

# Exceptions Pillow's plugins are known to raise on hostile or damaged input.
# OSError covers UnidentifiedImageError and "image file is truncated"; some
# plugins raise SyntaxError for bad headers; struct.error, EOFError, IndexError
# and friends come out of hand-written header parsers.
_CORRUPT_ERRORS: Final = (
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    struct.error,
    EOFError,
    IndexError,
    KeyError,
    ZeroDivisionError,
    OverflowError,
    AssertionError,
)


class ImageDecodeError(DataError):
    """An image file cannot be decoded.

    Attributes:
        path: The file that was read.
        reason: Why it cannot be used, in plain words (no path in it).
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot use image {self.path!r}: {reason}")


def load_rgb(path: str | os.PathLike[str], draft_size: int | None = None) -> Image.Image:
    """Read an image file and return it fully loaded as 8-bit RGB.

    EXIF orientation is applied; grayscale, palette, 1-bit, CMYK, 16-bit and
    alpha images are converted (alpha is composited onto white).

    Args:
        path: Image file to read.
        draft_size: If given and the file is a JPEG, let libjpeg decode at a
            reduced DCT scale (1/2, 1/4 or 1/8) chosen so that the shorter
            side stays ``>= draft_size``. Much faster for large photos that
            are going to be resized anyway. Ignored for other formats.

    Returns:
        A loaded ``RGB`` image not tied to any open file.

    Raises:
        ImageDecodeError: (a ``DataError``) for any file that cannot be used;
            its message names the file and the reason.
    """
    return _decode_or_raise(path, draft_size)


def load_rgb_bytes(data: bytes, name: str = "<upload>", draft_size: int | None = None) -> Image.Image:
    """:func:`load_rgb` for an image held in memory (an HTTP upload): the same policies and errors.

    ``name`` stands for the path in error messages (e.g. the upload's file name).
    """
    if not data:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    return _decode_or_raise(name, draft_size, io.BytesIO(data))


def check_image(path: str | os.PathLike[str], draft_size: int | None = None) -> str | None:
    """Validate an image file by decoding it completely.

    Args:
        path: Image file to check.
        draft_size: As for :func:`load_rgb` (makes checking JPEGs faster;
            truncation is still detected because libjpeg reads all data).

    Returns:
        ``None`` if :func:`load_rgb` would succeed, else the reason string
        (e.g. ``"empty file (0 bytes)"``).
    """
    try:
        _decode_or_raise(path, draft_size)
    except ImageDecodeError as exc:
        return exc.reason
    return None


def _decode_or_raise(path: str | os.PathLike[str], draft_size: int | None, data: io.BytesIO | None = None) -> Image.Image:
    """load_rgb's body: turn every failure into an ImageDecodeError (``data``: the bytes, instead of reading ``path``)."""
    if draft_size is not None and draft_size < 1:
        raise ImageDecodeError(path, f"draft_size must be a positive integer, got {draft_size}")
    try:
        return _load_rgb(path, draft_size, data)
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


def _load_rgb(path: str | os.PathLike[str], draft_size: int | None, data: io.BytesIO | None = None) -> Image.Image:
    """Open, check, decode and convert; may raise anything (see load_rgb).

    Leaving the ``with`` block closes only the file object (multi-frame
    formats keep it open after load()); the decoded pixels stay usable.
    """
    if data is None:
        _check_file(path)
    try:
        img = Image.open(path if data is None else data, formats=_ALLOWED_FORMATS)
    except Image.UnidentifiedImageError:
        raise ImageDecodeError(path, "not an image (cannot identify image file)") from None
    with img:
        _check_dimensions(path, img.size)
        if draft_size is not None and img.format in _JPEG_FORMATS:
            img.draft("RGB", (draft_size, draft_size))
        img.load()
        _apply_exif_orientation(path, img)
        return _to_rgb(img)


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
        raise ImageDecodeError(
            path,
            f"image too large: {width * height} pixels exceeds the "
            f"decompression-bomb limit of {limit}",
        )
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageDecodeError(
            path,
            f"image too small: {width}x{height} (need at least {MIN_SIDE} px on each side)",
        )


def _apply_exif_orientation(path: str | os.PathLike[str], img: Image.Image) -> None:
    """Rotate/flip ``img`` in place per its EXIF orientation tag."""
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - bad EXIF must not reject good pixels
        logger.warning("ignoring unreadable EXIF orientation in %r: %s", os.fspath(path), exc)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (may return ``img`` itself)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_rgb(img)
    if mode == "F":
        return _float_to_rgb(img)
    if mode in _ALPHA_MODES or "transparency" in img.info:
        # Composite onto white instead of dropping alpha: fully transparent
        # pixels usually store RGB = 0, so a plain convert("RGB") paints the
        # background black. Transparent backgrounds (logos, product shots,
        # icons) are meant to be seen on a light page, and a black fill would
        # add hard artificial edges and a colour shift the model would learn.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE)
        return Image.alpha_composite(background, rgba).convert("RGB")
    # L, 1, P (opaque), CMYK (Pillow already undoes Adobe inversion when
    # reading JPEG CMYK), YCbCr, HSV ... Unsupported modes (e.g. LAB) raise
    # ValueError, which load_rgb reports as corrupt/unsupported data.
    return img.convert("RGB")


def _sixteen_bit_to_rgb(img: Image.Image) -> Image.Image:
    """Scale 16-bit grayscale (``I;16*`` / ``I``) to 8 bits.

    Pillow's ``convert("RGB")`` clips these values at 255, turning almost every
    pixel white. We map 0..65535 linearly onto 0..255 (divide by 257, round),
    clipping anything outside that range (``I`` is signed 32-bit).
    """
    arr = np.asarray(img).astype(np.float64)
    arr = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(arr).convert("RGB")


def _float_to_rgb(img: Image.Image) -> Image.Image:
    """Map a float image to 8 bits: values in [0, 1] are scaled by 255,
    anything else is assumed to be in 0..255 already and clipped."""
    arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
        arr = arr * 255.0
    arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(arr).convert("RGB")


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
