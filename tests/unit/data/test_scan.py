"""Folder scanning: junk files, symlink loops, refusals, layouts, validate()."""

from __future__ import annotations

import io
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from transferkit.data.layout import detect_layout, scan_dataset
from transferkit.data.scan import (
    Sample,
    ScanResult,
    scan_class_folder,
    validate,
)
from transferkit.errors import DataError


def write_image(path: Path, color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    """Write a small JPEG or PNG (by suffix) creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    Image.new("RGB", (16, 12), color).save(path, format=fmt)
    return path


def make_dataset(root: Path, classes: dict[str, int]) -> Path:
    """root/<class>/img<i>.jpg with the given number of images per class."""
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            write_image(root / name / f"img{i}.jpg")
    return root


def reasons(result: ScanResult) -> dict[str, str]:
    """Skipped entries keyed by path relative to the scan root."""
    return {os.path.relpath(p, result.root): r for p, r in result.skipped}


def test_basic_scan_labels_sorted_like_imagefolder(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data", {"zebra": 2, "ant": 1, "Moose": 1})
    write_image(root / "ant" / "nested" / "deep" / "x.png")
    result = scan_class_folder(root)
    assert result.classes == ["Moose", "ant", "zebra"]
    rel = [(os.path.relpath(s.path, root), s.label) for s in result.samples]
    assert rel == [
        ("Moose/img0.jpg", 0),
        ("ant/img0.jpg", 1),
        ("ant/nested/deep/x.png", 1),
        ("zebra/img0.jpg", 2),
        ("zebra/img1.jpg", 2),
    ]
    assert result.skipped == []
    assert scan_class_folder(str(root)) == result  # deterministic, str or Path


def test_hidden_and_system_files_are_listed_as_skipped(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data", {"cat": 1, "dog": 1})
    for junk in (
        "cat/Thumbs.db",
        "cat/.DS_Store",
        "dog/desktop.ini",
        "dog/._img0.jpg",
        ".DS_Store",
    ):
        (root / junk).write_bytes(b"junk")
    (root / "cat" / ".hidden.jpg").write_bytes(b"x")
    write_image(root / "cat" / ".cache" / "thumb.jpg")
    write_image(root / "__MACOSX" / "cat" / "img0.jpg")
    write_image(root / "dog" / "__MACOSX" / "y.jpg")
    result = scan_class_folder(root)
    assert result.classes == ["cat", "dog"]
    assert len(result.samples) == 2
    assert reasons(result) == {
        ".DS_Store": "ignored: system file",
        "__MACOSX": "ignored: system folder",
        "cat/.DS_Store": "ignored: system file",
        "cat/Thumbs.db": "ignored: system file",
        "cat/.hidden.jpg": "ignored: hidden file",
        "cat/.cache": "ignored: hidden folder",
        "dog/__MACOSX": "ignored: system folder",
        "dog/._img0.jpg": "ignored: system file",
        "dog/desktop.ini": "ignored: system file",
    }


def test_non_image_extension_listed_and_extension_case_insensitive(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data", {"cat": 1, "dog": 1})
    (root / "cat" / "notes.txt").write_text("hello")
    (root / "cat" / "README").write_text("hello")
    write_image(root / "dog" / "UPPER.JPEG")
    (root / "loose.jpg").write_bytes(b"x")
    result = scan_class_folder(root)
    assert reasons(result) == {
        "cat/README": "not an image extension (no extension)",
        "cat/notes.txt": "not an image extension (.txt)",
        "loose.jpg": "ignored: file outside any class folder",
    }
    assert any(s.path.endswith("UPPER.JPEG") for s in result.samples)


def test_unicode_and_spaces_in_names(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "my data", {"chat noir": 1, "café": 1, "狗": 1})
    write_image(root / "café" / "photo été 1.jpg")
    result = scan_class_folder(root)
    assert result.classes == sorted(["chat noir", "café", "狗"])
    assert any("photo été 1.jpg" in s.path for s in result.samples)
    assert len(validate(result, workers=1).samples) == 4


@pytest.fixture
def hang_guard() -> Iterator[None]:
    """Fail (instead of hanging the suite) if the test runs over 20 s."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def _fail(signum: int, frame: object) -> None:
        raise TimeoutError("scan did not finish in 20 s (symlink loop followed?)")

    previous = signal.signal(signal.SIGALRM, _fail)
    signal.alarm(20)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.usefixtures("hang_guard")
def test_symlink_loop_is_reported_not_followed(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data", {"cat": 1, "dog": 1})
    (root / "cat" / "sub").mkdir()
    write_image(root / "cat" / "sub" / "a.jpg")
    os.symlink(root / "cat", root / "cat" / "sub" / "back_to_cat")  # loop
    os.symlink(root, root / "dog" / "to_root")  # loop through the dataset root
    os.symlink(root / "cat" / "sub", root / "dog" / "alias")  # not a loop: duplicate
    result = scan_class_folder(root)
    got = reasons(result)
    assert got["cat/sub/back_to_cat"].startswith("symlink loop")
    assert got["dog/to_root"].startswith("symlink loop")
    assert got["dog/alias"].startswith("duplicate folder")
    assert sorted(os.path.relpath(s.path, root) for s in result.samples) == [
        "cat/img0.jpg",
        "cat/sub/a.jpg",
        "dog/img0.jpg",
    ]


def test_symlinked_class_folder_is_followed(tmp_path: Path) -> None:
    elsewhere = make_dataset(tmp_path / "elsewhere", {"cat": 2})
    root = make_dataset(tmp_path / "data", {"dog": 1})
    os.symlink(elsewhere / "cat", root / "cat")
    result = scan_class_folder(root)
    assert result.classes == ["cat", "dog"] and len(result.samples) == 3


def test_missing_root_and_file_root_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        scan_class_folder(tmp_path / "nope")
    file_root = write_image(tmp_path / "x.jpg")
    with pytest.raises(DataError, match="is a file, not a folder"):
        scan_class_folder(file_root)


def test_no_class_subfolders_refused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_image(root / "a.jpg")
    write_image(root / "b.jpg")
    with pytest.raises(DataError, match="no class sub-folders") as info:
        scan_class_folder(root)
    assert "2 image files directly" in str(info.value) and str(root) in str(info.value)


def test_no_images_refused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        (root / name / "notes.txt").write_text("no pictures here")
    with pytest.raises(DataError, match="no images found in") as info:
        scan_class_folder(root)
    assert "notes.txt" in str(info.value)


def test_empty_class_folder_refused_and_named(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data", {"cat": 2, "dog": 0, "emu": 1})
    (root / "dog" / "Thumbs.db").write_bytes(b"junk")
    with pytest.raises(DataError, match="has no usable images") as info:
        scan_class_folder(root)
    message = str(info.value)
    assert repr(str(root / "dog")) in message and "ignored: system file" in message
    assert "\n" not in message


def test_single_class_refused(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data", {"only": 3})
    with pytest.raises(DataError) as info:
        scan_class_folder(root)
    assert str(info.value).startswith(
        f"need at least 2 classes to train a classifier; found only 'only' in {str(root)!r}"
    )


def test_mismatched_class_sets_refused(tmp_path: Path) -> None:
    train = scan_class_folder(make_dataset(tmp_path / "train", {"cat": 1, "dog": 1}))
    val_root = make_dataset(tmp_path / "val", {"cat": 1, "dgo": 1})
    with pytest.raises(DataError, match="mismatched class sets") as info:
        scan_class_folder(val_root, classes=train.classes)
    message = str(info.value)
    assert "'dgo'" in message and "['cat', 'dog']" in message and "rename or remove" in message


def test_val_missing_a_class_is_allowed_and_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_dataset(tmp_path / "val", {"cat": 1, "emu": 1})
    with caplog.at_level(logging.WARNING, logger="transferkit.data.scan"):
        result = scan_class_folder(tmp_path / "val", classes=["cat", "dog", "emu"])
    assert result.classes == ["cat", "dog", "emu"]
    assert [s.label for s in result.samples] == [0, 2]  # train's labels, not re-numbered
    assert "dog" in caplog.text


def test_given_classes_match_across_unicode_normalisation(tmp_path: Path) -> None:
    nfd = "cafe\u0301"  # "café" as macOS writes it
    make_dataset(tmp_path / "val", {nfd: 1, "tea": 1})
    result = scan_class_folder(tmp_path / "val", classes=["caf\u00e9", "tea"])
    assert [s.label for s in result.samples] == [0, 1]


def test_detect_layout_and_scan_dataset_split(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    make_dataset(root / "train", {"cat": 2, "dog": 2})
    make_dataset(root / "valid", {"cat": 1, "dog": 1})
    make_dataset(root / "test", {"dog": 1, "cat": 1})
    (root / "README.md").write_text("about")
    assert detect_layout(root) == "split"
    splits = scan_dataset(root)
    assert sorted(splits) == ["test", "train", "val"]
    assert splits["val"].classes == splits["train"].classes == ["cat", "dog"]
    assert len(splits["train"].samples) == 4 and len(splits["test"].samples) == 2


def test_split_with_mismatched_val_refused(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    make_dataset(root / "train", {"cat": 1, "dog": 1})
    make_dataset(root / "val", {"cat": 1, "dog": 1, "cow": 1})
    with pytest.raises(DataError, match="'cow'"):
        scan_dataset(root)


def test_detect_layout_flat(tmp_path: Path) -> None:
    flat = make_dataset(tmp_path / "flat", {"cat": 1, "dog": 1})
    assert detect_layout(flat) == "flat"
    assert list(scan_dataset(flat)) == ["all"]
    # A vehicles dataset with a class literally called "train" is refused, not read as classes or splits
    # silently (tests/unit/data/test_layout.py): the message says to rename the folder.
    vehicles = make_dataset(tmp_path / "vehicles", {"train": 1, "bus": 1, "val": 1})
    with pytest.raises(DataError, match="rename"):
        detect_layout(vehicles)


def test_several_val_folders_refused(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for split in ("train", "val", "validation"):
        make_dataset(root / split, {"cat": 1, "dog": 1})
    with pytest.raises(DataError, match="several validation folders"):
        detect_layout(root)


def _truncated_jpeg(path: Path) -> None:
    buf = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").save(buf, "JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


@pytest.mark.parametrize(("workers", "pool"), [(1, "thread"), (2, "thread"), (2, "process")])
def test_validate_moves_unreadable_to_skipped(tmp_path: Path, workers: int, pool: str) -> None:
    root = make_dataset(tmp_path / "data", {"cat": 2, "dog": 2})
    _truncated_jpeg(root / "cat" / "img1.jpg")
    (root / "dog" / "zero.png").write_bytes(b"")
    scanned = scan_class_folder(root)
    assert len(scanned.samples) == 5
    checked = validate(scanned, workers=workers, pool=pool)  # type: ignore[arg-type]
    assert [os.path.relpath(s.path, root) for s in checked.samples] == [
        "cat/img0.jpg",
        "dog/img0.jpg",
        "dog/img1.jpg",
    ]
    got = reasons(checked)
    assert got["cat/img1.jpg"].startswith("truncated or corrupt image data")
    assert got["dog/zero.png"] == "empty file (0 bytes)"
    assert len(scanned.samples) == 5  # input not modified


def test_validate_refuses_class_with_no_readable_images(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data", {"cat": 1, "dog": 0})
    (root / "dog" / "bad.jpg").write_text("not a jpeg")
    with pytest.raises(DataError, match=r"'dog'.*no readable images"):
        validate(scan_class_folder(root), workers=1)


def test_sample_is_frozen() -> None:
    sample = Sample("a.jpg", 0)
    with pytest.raises(AttributeError):
        sample.label = 1  # type: ignore[misc]
