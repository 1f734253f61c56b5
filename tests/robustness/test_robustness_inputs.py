"""End-to-end bad-input matrix: messy folders through train, predict, evaluate and the CLI.

Decode-level behaviour (exact pixels, orientation, reasons of each file type) is tested in
test_decode.py / test_scan.py / test_fuzz_decode.py; here every case goes through a real run and we
check the run's promise: good files are used, every other file is listed with a reason, a folder that
cannot be trained on is refused before training with one line naming it, and nothing crashes mid-epoch.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import transferkit as tk
import transferkit.workflow as workflow
import transferkit.engine.trainer as trainer_module
from conftest import TINY, make_image_folder
from transferkit.cli import app
from transferkit.errors import DataError

RUN = dict(epochs=1, cache=False, **TINY)

# file name -> None (must be read and used) or a fragment of the reason it is skipped with
MESSY: dict[str, str | None] = {
    "animated.gif": None,
    "palette.png": None,
    "rgba.png": None,
    "sixteen_bit.png": None,
    "cmyk.jpg": None,
    "gray.jpg": None,
    "exif_rotated.jpg": None,
    "ünïcödé ñame.jpg": None,
    "with space.png": None,
    "漢字.jpg": None,
    "zero.jpg": "empty file",
    "truncated.jpg": "truncated",
    "text.jpg": "not an image",
    "one_pixel.png": "too small",
    "bomb.png": "too large",
    ".hidden.jpg": "hidden file",
    "Thumbs.db": "system file",
    ".DS_Store": "system file",
    "notes.txt": "not an image extension",
    "loop": "symlink loop",
}

BOMB_LIMIT = 64 * 64  # set as PIL's limit during the run; the good images are 40x40, the bomb 100x100


def _jpeg_bytes(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kwargs)
    return buf.getvalue()


def _colour(rng: np.random.Generator, size: tuple[int, int] = (40, 40)) -> Image.Image:
    pixels = rng.integers(150, 255, (size[1], size[0], 3), dtype=np.uint8) // np.array([1, 4, 4], np.uint8)
    return Image.fromarray(pixels)  # reddish noise


def add_messy_files(folder: Path, seed: int = 0) -> None:
    """Write every MESSY case into ``folder`` (an existing class folder)."""
    rng = np.random.default_rng(seed)
    frames = [_colour(rng) for _ in range(3)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    _colour(rng).convert("P").save(folder / "palette.png")
    rgba = _colour(rng).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 65535, (40, 40), dtype=np.uint16)).save(folder / "sixteen_bit.png")
    _colour(rng).convert("CMYK").save(folder / "cmyk.jpg", quality=90)
    _colour(rng).convert("L").save(folder / "gray.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    (folder / "exif_rotated.jpg").write_bytes(_jpeg_bytes(_colour(rng, (60, 40)), exif=exif.tobytes()))
    for name in ("ünïcödé ñame.jpg", "漢字.jpg"):
        _colour(rng).save(folder / name, quality=90)
    _colour(rng).save(folder / "with space.png")
    (folder / "zero.jpg").write_bytes(b"")
    whole = _jpeg_bytes(_colour(rng))
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "text.jpg").write_text("this is not a picture\n")
    Image.new("RGB", (1, 1), (200, 0, 0)).save(folder / "one_pixel.png")
    Image.new("RGB", (100, 100), (200, 0, 0)).save(folder / "bomb.png")
    (folder / ".hidden.jpg").write_bytes(whole)
    (folder / "Thumbs.db").write_bytes(b"\x00" * 64)
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "notes.txt").write_text("shot on a phone\n")
    os.symlink(folder, folder / "loop", target_is_directory=True)


@pytest.fixture
def messy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A flat 3-class folder; class 'red' also holds every case of MESSY."""
    root = make_image_folder(tmp_path / "messy", {"red": 8, "green": 8, "blue": 8})
    add_messy_files(root / "red")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", BOMB_LIMIT)
    return root


def _used(run_dir: Path) -> set[str]:
    split = json.loads((run_dir / "split.json").read_text(encoding="utf-8"))
    return {os.path.join(split["root"], rel) for part in ("train", "selection", "test") for rel, _ in split[part]}


def _skipped(run_dir: Path) -> dict[str, str]:
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    listed = json.loads((run_dir / "skipped.json").read_text(encoding="utf-8"))
    assert listed == summary["skipped_files"]
    return {row["path"]: row["reason"] for row in listed}


def test_messy_folder_trains_and_accounts_for_every_file(messy: Path, tmp_path: Path) -> None:
    result = tk.train(messy, out=str(tmp_path / "run"), **RUN)
    used, skipped = _used(result.run_dir), _skipped(result.run_dir)
    red = messy / "red"
    for name, reason in MESSY.items():
        path = str(red / name)
        if reason is None:
            assert path in used and path not in skipped, name
        else:
            assert path not in used and reason in skipped.get(path, ""), (name, skipped.get(path))
    # Nothing vanishes: every entry on disk is a class folder, a used file or a listed skip.
    for folder, dirs, files in os.walk(messy):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            path = os.path.join(folder, name)
            assert path in used or path in skipped, path
    data = result.summary["data"]
    assert data["n_train"] + data["n_selection"] + data["n_test"] == len(used) == 24 + 10


def test_predict_and_evaluate_on_messy_folder(messy: Path, tmp_path: Path) -> None:
    run = tk.train(messy, out=str(tmp_path / "run"), **RUN).run_dir
    red = messy / "red"
    files = [red / name for name in MESSY if name != "loop"] + [red / "missing.jpg"]
    rows = tk.predict(run, files, top_k=2)
    assert [row["path"] for row in rows] == [str(f) for f in files]  # one row per input, in order
    by_name = {Path(row["path"]).name: row for row in rows}
    assert "file not found" in by_name["missing.jpg"]["error"]
    # (bomb.png is left out: PIL's limit is patched in this process only, and loader workers may be spawned)
    for name in ("zero.jpg", "truncated.jpg", "text.jpg", "one_pixel.png", "Thumbs.db", ".DS_Store", "notes.txt"):
        assert "error" in by_name[name] and "predictions" not in by_name[name], name
    assert MESSY["zero.jpg"] in by_name["zero.jpg"]["error"]
    for name in [n for n, r in MESSY.items() if r is None] + [".hidden.jpg"]:  # a hidden file given by name is read
        preds = by_name[name]["predictions"]
        assert len(preds) == 2 and sum(p["probability"] for p in preds) <= 1.0 + 1e-6, name

    report = tk.evaluate(run, messy, out=tmp_path / "eval", include_seen=True)  # every usable file, trained or not
    skipped = {row["path"]: row["reason"] for row in report["skipped_files"]}
    for name, reason in MESSY.items():
        if reason is not None:
            assert reason in skipped[str(red / name)], name
    assert report["n"] == 24 + 10
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text(encoding="utf-8"))["n"] == report["n"]


def test_evaluate_reports_files_that_break_after_the_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_image_folder(tmp_path / "data", {"a": 6, "b": 6})
    run = tk.train(data, out=str(tmp_path / "run"), **RUN).run_dir
    monkeypatch.setattr(workflow, "validate", lambda scan, **_: scan)  # as if the files broke after the check
    (data / "a" / "a_000.jpg").write_bytes(b"")
    report = tk.evaluate(run, data, include_seen=True)  # the training images too
    assert report["n"] == 11
    assert report["skipped_files"] == [{"path": str(data / "a" / "a_000.jpg"), "reason": "empty file (0 bytes)"}]


def test_evaluate_folder_with_only_some_of_the_models_classes(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", {"a": 6, "b": 6, "c": 6})
    run = tk.train(data, out=str(tmp_path / "run"), **RUN).run_dir
    only_b = make_image_folder(tmp_path / "new_b", {"b": 4}, seed=3)
    (only_b / "b" / "broken.jpg").write_bytes(b"")
    report = tk.evaluate(run, only_b)
    assert report["n"] == 4 and report["per_class"]["b"]["support"] == 4
    assert report["skipped_files"][0]["reason"] == "empty file (0 bytes)"
    with pytest.raises(DataError, match="'d'"):
        tk.evaluate(run, make_image_folder(tmp_path / "new_d", {"b": 2, "d": 2}))


# --- files that break between the scan and the epoch ------------------------------------------


def test_unvalidated_bad_files_are_skipped_mid_epoch(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", {"a": 10, "b": 10})
    whole = (data / "a" / "a_000.jpg").read_bytes()
    (data / "a" / "trunc.jpg").write_bytes(whole[: len(whole) // 2])
    (data / "b" / "zero.jpg").write_bytes(b"")
    (data / "b" / "text.jpg").write_text("not an image")
    result = tk.train(data, out=str(tmp_path / "run"), overrides={"data.validate": False}, **{**RUN, "epochs": 2})
    skipped = _skipped(result.run_dir)
    assert "truncated" in skipped[str(data / "a" / "trunc.jpg")]
    assert skipped[str(data / "b" / "zero.jpg")] == "empty file (0 bytes)"
    assert "not an image" in skipped[str(data / "b" / "text.jpg")]
    assert result.summary["epochs_run"] == 2 and result.summary["metrics"]["accuracy"] is not None


def test_files_broken_after_validation_are_skipped_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_image_folder(tmp_path / "split" / "train", {"a": 10, "b": 10}, seed=1).parent
    make_image_folder(data / "val", {"a": 4, "b": 4}, seed=2)
    broken = {data / "train" / "a" / "a_001.jpg": "truncated", data / "val" / "b" / "b_000.jpg": "empty file",
              data / "train" / "b" / "b_002.jpg": "file not found"}
    real_prepare = trainer_module.prepare_data

    def prepare_then_break(*args, **kwargs):
        splits = real_prepare(*args, **kwargs)  # validated: every file decoded fine
        for path, how in broken.items():
            if how == "file not found":
                path.unlink()
            else:
                path.write_bytes(path.read_bytes()[:200] if how == "truncated" else b"")
        return splits

    monkeypatch.setattr(trainer_module, "prepare_data", prepare_then_break)
    result = tk.train(data, out=str(tmp_path / "run"), **{**RUN, "epochs": 2})
    skipped = _skipped(result.run_dir)
    for path, reason in broken.items():
        assert reason in skipped[str(path)], (path, skipped.get(str(path)))
    assert result.summary["epochs_run"] == 2
    val_rows = json.loads((result.run_dir / "test_predictions.json").read_text(encoding="utf-8"))
    assert len(val_rows) == 7  # the broken val file has no prediction, the others all do


# --- folders that cannot be trained on: refused before training -------------------------------


def _refusal_cases(tmp: Path) -> dict[str, tuple[Path, str]]:
    """case -> (data folder, a path fragment the one-line message must name)."""
    empty_class = make_image_folder(tmp / "empty_class", {"a": 4, "b": 4})
    (empty_class / "c").mkdir()
    single = make_image_folder(tmp / "single", {"only": 6})
    no_images = tmp / "no_images"
    for name in ("a", "b"):
        (no_images / name).mkdir(parents=True)
        (no_images / name / "readme.txt").write_text("x")
    mismatched = tmp / "mismatched"
    make_image_folder(mismatched / "train", {"a": 4, "b": 4})
    make_image_folder(mismatched / "val", {"a": 2, "c": 2})
    all_broken = make_image_folder(tmp / "all_broken", {"a": 4, "b": 1})
    (all_broken / "b" / "b_000.jpg").write_bytes(b"")
    return {
        "empty class folder": (empty_class, str(empty_class / "c")),
        "single class": (single, str(single)),
        "no images": (no_images, str(no_images)),
        "mismatched train/val classes": (mismatched, str(mismatched / "val")),
        "class with only broken files": (all_broken, str(all_broken)),
    }


CASES = ["empty class folder", "single class", "no images", "mismatched train/val classes",
         "class with only broken files"]


@pytest.mark.parametrize("case", CASES)
def test_unusable_folder_is_refused_before_training(case: str, tmp_path: Path) -> None:
    data, names = _refusal_cases(tmp_path)[case]
    out = tmp_path / "run"
    with pytest.raises(DataError) as info:
        tk.train(data, out=str(out), **RUN)
    message = str(info.value)
    assert names in message and "\n" not in message
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize("case", CASES)
def test_cli_prints_one_line_and_exits_2(case: str, tmp_path: Path) -> None:
    data, names = _refusal_cases(tmp_path)[case]
    args = ["train", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--input-size", "32",
            "--batch-size", "8", "--no-cache", "--set", "data.workers=0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], result.stderr
