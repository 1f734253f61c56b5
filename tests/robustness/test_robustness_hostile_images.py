"""Hostile images in folders: `train`, `predict` and `audit` skip an image whose decoding would take gigabytes,
with the reason, and never decode it (the budget is read from the header; transferkit.data.decode).

The hostile file is a 9400 x 9400 all-zero 16-bit PNG: 171 KB on disk, under Pillow's decompression-bomb limit,
3 GB and seconds to decode without the budget."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

import transferkit as tk
import transferkit.report as report
from conftest import TINY, make_image_folder
from transferkit.cli import app

HOSTILE_SIDE = 9400


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def hostile_png(side: int = HOSTILE_SIDE) -> bytes:
    """An all-zero 16-bit grey PNG of side x side, built in ~0.1 s: one block of rows compressed with a full flush
    (which resets the compressor) is repeated; the Adler-32 is computed over the whole."""
    row = b"\x00" * (1 + side * 2)
    per_block = max(1, (1 << 20) // len(row))
    blocks, tail = divmod(side, per_block)
    block = row * per_block
    compressor = zlib.compressobj(9)
    head = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    body = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    end = compressor.compress(row * tail) + compressor.flush()
    checksum = 1
    for _ in range(blocks):
        checksum = zlib.adler32(block, checksum)
    checksum = zlib.adler32(row * tail, checksum)
    stream = head + body * (blocks - 1) + end[:-4] + struct.pack(">I", checksum)
    header = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")




@pytest.fixture
def folder(tmp_path: Path) -> Path:
    data = make_image_folder(tmp_path / "data", {"red": 8, "green": 8, "blue": 8})
    (data / "red" / "scan.png").write_bytes(hostile_png())
    return data


def test_train_skips_the_hostile_image_with_the_reason(folder: Path, tmp_path: Path, decoded_sizes: list,
                                                        monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(report, "build_run_report", lambda *a, **k: None)  # not under test, costs seconds
    run = tk.train(folder, strategy="feature-extraction", epochs=1, out=str(tmp_path / "run"), cache=False, **TINY)
    skipped = {Path(row["path"]).name: row["reason"] for row in json.loads((run.run_dir / "skipped.json").read_text())}
    assert skipped["scan.png"].startswith("image too large to decode"), skipped
    assert (HOSTILE_SIDE, HOSTILE_SIDE) not in decoded_sizes

    hostile = tmp_path / "photos" / "scan.png"
    hostile.parent.mkdir()
    hostile.write_bytes(hostile_png())
    good = folder / "green" / "green_000.jpg"
    rows = tk.predict(run.run_dir, [hostile, good], top_k=1)
    assert "too large to decode" in rows[0]["error"] and "downscale" in rows[0]["error"], rows[0]
    assert rows[1]["predictions"]  # the good image is still predicted
    assert (HOSTILE_SIDE, HOSTILE_SIDE) not in decoded_sizes


def test_audit_skips_the_hostile_image_with_the_reason(folder: Path, tmp_path: Path, decoded_sizes: list):
    out = tmp_path / "audit"
    result = CliRunner().invoke(app, ["audit", str(folder), "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                                      "--input-size", "32", "--workers", "0", "--batch-size", "16"])
    assert result.exit_code == 0, result.output
    skipped = {Path(row["path"]).name: row["reason"] for row in json.loads((out / "audit.json").read_text())["skipped"]}
    assert skipped["scan.png"].startswith("image too large to decode"), skipped
    assert (HOSTILE_SIDE, HOSTILE_SIDE) not in decoded_sizes
