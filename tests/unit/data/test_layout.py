"""Dataset layouts: which top-level folders are splits, which are classes, and what each role reads.

A split name (train, val/valid/validation/dev, test) is never used as a class name silently: a folder of
only split names is a split layout, a mix of split names and other names is refused, naming the fix.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_image_folder
from transferkit.config import DataCfg
from transferkit.data.datasets import prepare_data
from transferkit.data.layout import detect_layout, evaluation_folder, scan_dataset
from transferkit.errors import DataError


def _prepare(root: Path, select: str = "best", **cfg: object) -> object:
    return prepare_data(DataCfg(path=str(root), validate=False, **cfg), select=select)  # type: ignore[arg-type]


def _names(samples: list, classes: list[str]) -> set[tuple[str, str]]:
    """(top folder, class) of every sample: where each role's images came from."""
    return {(Path(s.path).parent.parent.name, classes[s.label]) for s in samples}


def test_train_and_test_without_val_is_a_split_not_two_classes(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    make_image_folder(root / "train", {"cat": 20, "dog": 20}, size=24)
    make_image_folder(root / "test", {"cat": 5, "dog": 5}, size=24, seed=1)
    assert detect_layout(root) == "split"
    assert sorted(scan_dataset(root)) == ["test", "train"]
    data = _prepare(root, split_seed=3)
    assert data.classes == ["cat", "dog"] and data.layout == "split"
    assert {p for p, _ in _names(data.test, data.classes)} == {"test"} and len(data.test) == 10
    assert {p for p, _ in _names(data.train + data.selection, data.classes)} == {"train"}
    assert len(data.selection) == 6 and len(data.train) == 34  # 15% of each class of train/, stratified
    assert {s.path for s in data.train}.isdisjoint(s.path for s in data.selection)
    assert data.sources == {"test": "test/", "selection": "15% of train/ (stratified, split seed 3)",
                            "train": "the rest of train/"}
    assert _prepare(root, split_seed=4).selection != data.selection  # --split-seed carves another selection


def test_train_and_test_under_select_last_trains_on_all_of_train(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    make_image_folder(root / "train", {"cat": 6, "dog": 6}, size=24)
    make_image_folder(root / "test", {"cat": 2, "dog": 2}, size=24, seed=1)
    data = _prepare(root, select="last")
    assert data.selection == [] and len(data.train) == 12 and len(data.test) == 4
    assert data.sources == {"train": "train/", "test": "test/"}


@pytest.mark.parametrize("alias", ["val", "valid", "validation", "dev"])
def test_every_validation_alias_selects_beside_test(tmp_path: Path, alias: str) -> None:
    root = tmp_path / "ds"
    make_image_folder(root / "train", {"cat": 4, "dog": 4}, size=24)
    make_image_folder(root / alias, {"cat": 2, "dog": 2}, size=24, seed=1)
    make_image_folder(root / "test", {"cat": 3, "dog": 3}, size=24, seed=2)
    data = _prepare(root)
    assert data.sources == {"train": "train/", "selection": f"{alias}/", "test": "test/"}
    assert (len(data.train), len(data.selection), len(data.test)) == (8, 4, 6)


def test_train_and_dev_reports_dev_as_the_test_split(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    make_image_folder(root / "train", {"cat": 10, "dog": 10}, size=24)
    make_image_folder(root / "dev", {"cat": 2, "dog": 2}, size=24, seed=1)
    data = _prepare(root)
    assert data.sources["test"] == "dev/ (reported as the test split)" and len(data.test) == 4


def test_split_folder_names_are_matched_whatever_their_case(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    make_image_folder(root / "Train", {"cat": 10, "dog": 10}, size=24)
    make_image_folder(root / "Test", {"cat": 2, "dog": 2}, size=24, seed=1)
    data = _prepare(root)
    assert data.classes == ["cat", "dog"] and data.sources["test"] == "Test/"


@pytest.mark.parametrize(("folders", "named"), [
    (["train", "cat", "dog"], ["'train'", "'cat', 'dog'"]),
    (["test", "a", "b"], ["'test'", "'a', 'b'"]),
    (["train", "val", "bus"], ["'train', 'val'", "'bus'"]),  # a vehicles dataset with a class called train
])
def test_split_names_mixed_with_other_folders_are_refused(tmp_path: Path, folders: list[str],
                                                          named: list[str]) -> None:
    root = make_image_folder(tmp_path / "ds", {name: 3 for name in folders}, size=24)
    for call in (detect_layout, scan_dataset, lambda r: _prepare(r)):
        with pytest.raises(DataError) as caught:
            call(root)
        message = str(caught.value)
        assert str(root) in message and all(n in message for n in named), message
        assert "rename" in message and "split" in message, message


def test_train_alone_is_carved_like_one_folder_of_classes(tmp_path: Path) -> None:
    # A careful user who gives only train/ expects its classes to be the classes (not one class "train"),
    # and a model scored on images it did not train on: selection and test are carved from train/.
    root = tmp_path / "ds"
    make_image_folder(root / "train", {"cat": 20, "dog": 20}, size=24)
    assert detect_layout(root) == "flat"
    assert evaluation_folder(root) == str(root / "train")
    data = _prepare(root)
    assert data.classes == ["cat", "dog"] and data.layout == "flat"
    assert (len(data.train), len(data.selection), len(data.test)) == (28, 6, 6)
    assert data.sources == {"test": "15% of train/ (stratified, split seed 0)",
                            "selection": "15% of train/ (stratified, split seed 0; disjoint from test)",
                            "train": "the rest of train/"}


@pytest.mark.parametrize("held", [["val", "test"], ["test"], ["validation"]])
def test_held_out_folders_without_train_are_refused_for_training(tmp_path: Path, held: list[str]) -> None:
    root = tmp_path / "ds"
    for i, name in enumerate(held):
        make_image_folder(root / name, {"cat": 3, "dog": 3}, size=24, seed=i)
    with pytest.raises(DataError, match=r"no train/ folder.*train/<class>"):
        _prepare(root)
    # ... but they can be evaluated: the test/ split, else the validation one
    expected = "test" if "test" in held else held[0]
    assert evaluation_folder(root) == str(root / expected)


def test_a_split_folder_without_class_folders_is_refused_naming_it(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    make_image_folder(root / "train", {"cat": 4, "dog": 4}, size=24)
    loose = make_image_folder(tmp_path / "loose", {"x": 3}, size=24) / "x"
    loose.rename(root / "test")  # test/ holds images directly, no class folders
    with pytest.raises(DataError, match=r"test.*no class sub-folders.*test/<class>/"):
        scan_dataset(root)


def test_several_validation_aliases_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for split in ("train", "val", "dev"):
        make_image_folder(root / split, {"cat": 1, "dog": 1}, size=24)
    with pytest.raises(DataError, match="several validation folders"):
        detect_layout(root)


def test_flat_folders_and_junk_beside_splits(tmp_path: Path) -> None:
    flat = make_image_folder(tmp_path / "flat", {"cat": 3, "dog": 3}, size=24)
    assert detect_layout(flat) == "flat" and list(scan_dataset(flat)) == ["all"]
    assert evaluation_folder(flat) == str(flat)
    root = tmp_path / "ds"
    make_image_folder(root / "train", {"cat": 3, "dog": 3}, size=24)
    make_image_folder(root / "test", {"cat": 1, "dog": 1}, size=24)
    (root / "__MACOSX").mkdir()
    (root / ".cache").mkdir()
    (root / "README.md").write_text("about")
    assert sorted(scan_dataset(root)) == ["test", "train"]
