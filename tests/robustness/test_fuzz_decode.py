"""Fuzzing load_rgb: whatever the bytes, the result is an RGB image or a
DataError, never any other exception."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from transferkit.data.decode import load_rgb
from transferkit.errors import DataError

FUZZ = settings(
    deadline=2000,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,  # reproducible in CI; failures still shrink
)


def _seed_image(fmt: str, **options: object) -> bytes:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    if fmt == "GIF":
        img = img.convert("P")
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


SEEDS: dict[str, bytes] = {
    "jpeg": _seed_image("JPEG", quality=80),
    "jpeg_progressive": _seed_image("JPEG", quality=80, progressive=True),
    "png": _seed_image("PNG"),
    "gif": _seed_image("GIF"),
    "bmp": _seed_image("BMP"),
    "tiff": _seed_image("TIFF"),
    "webp": _seed_image("WEBP", quality=80),
}


def _decode_bytes(data: bytes, suffix: str = ".jpg", draft_size: int | None = None) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"fuzz{suffix}"
        path.write_bytes(data)
        try:
            img = load_rgb(path, draft_size=draft_size)
        except DataError as exc:
            assert str(path) in str(exc)
            return
        assert img.mode == "RGB"
        assert min(img.size) >= 2
        img.getpixel((0, 0))  # pixels really are there


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    """A seed image with a few byte flips, inserts, deletions or a cut."""
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[name])
    # Most format parsing happens in the header: bias edits towards it.
    for _ in range(draw(st.integers(1, 6))):
        limit = len(data) - 1 if draw(st.booleans()) else min(len(data) - 1, 256)
        pos = draw(st.integers(0, max(0, limit)))
        op = draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0xD8, 0xD9]))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif data:
            del data[pos : pos + draw(st.integers(1, 16))]
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return name, bytes(data)


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    _decode_bytes(data)


@FUZZ
@given(mutated(), st.sampled_from([None, 8]))
def test_mutated_real_images(case: tuple[str, bytes], draft_size: int | None) -> None:
    _name, data = case
    _decode_bytes(data, suffix=".png", draft_size=draft_size)


@FUZZ
@given(st.sampled_from(sorted(SEEDS)), st.binary(min_size=1, max_size=64))
def test_valid_header_followed_by_garbage(name: str, tail: bytes) -> None:
    seed = SEEDS[name]
    _decode_bytes(seed[: max(8, len(seed) // 8)] + tail)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_seeds_decode(name: str) -> None:
    _decode_bytes(SEEDS[name])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "seed"
        path.write_bytes(SEEDS[name])
        assert load_rgb(path).size == (32, 24)
