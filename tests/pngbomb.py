"""Hostile PNGs for tests: valid all-zero images of any size, built in ~0.1 s and a few MB (decoding them
is what costs gigabytes)."""

from __future__ import annotations

import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def zero_png(width: int, height: int, bit_depth: int = 8, colour_type: int = 2, extra: bytes = b"") -> bytes:
    """A valid all-zero PNG (colour type 0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA) in ~0.1 s and a few MB at
    most: one block of rows is compressed with a full flush (which resets the compressor), so every later block
    compresses to the same bytes and is repeated; the Adler-32 is computed over the whole."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour_type]
    row = b"\x00" * (1 + (width * channels * bit_depth + 7) // 8)
    per_block = max(1, min(height, (1 << 20) // len(row)))
    blocks, tail = divmod(height, per_block)
    block = row * per_block
    compressor = zlib.compressobj(9)
    head = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    body = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH) if blocks > 1 else b""
    end = compressor.compress(row * tail) + compressor.flush()
    checksum = 1
    for _ in range(blocks):
        checksum = zlib.adler32(block, checksum)
    checksum = zlib.adler32(row * tail, checksum)
    stream = head + body * max(0, blocks - 1) + end[:-4] + struct.pack(">I", checksum)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + extra + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")
