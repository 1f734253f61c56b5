"""Dataset layouts: one folder of class sub-folders, or split folders of them.

::

    flat:   ROOT/<class>/**/<image>
    split:  ROOT/train/<class>/**/<image>
            ROOT/val/<class>/...     (or valid/, validation/, dev/: at most one of them)
            ROOT/test/<class>/...

A top-level folder whose name is a split name (``train``, ``val``/``valid``/``validation``/``dev``, ``test``,
in any case) is a split folder, never a class: a dataset whose top-level folders are all split names is a
split layout, one with none is flat, and one that mixes the two (``train/ cat/ dog/``) is refused, naming
the folders and the fix. Hidden and system folders (``.git``, ``__MACOSX``) and loose files are ignored.

Which split folders a dataset has decides the data roles (:func:`transferkit.data.datasets.prepare_data`):

- ``train/ val/ test/``: used as named; ``train/ val/`` and ``train/ test/``: the held-out folder is the test
  split and the selection split is carved from train/.
- ``train/`` alone: one folder of classes, carved into train / selection / test like a flat folder (layout
  ``flat``): its classes are train/'s sub-folders, not a class named "train", and the model is still
  scored on images it did not train on.
- ``val/`` and/or ``test/`` without ``train/``: evaluation and embedding read them; training refuses.
"""

from __future__ import annotations

import logging
import os
from typing import Final, Literal

from transferkit.data.decode import IMAGE_EXTENSIONS
from transferkit.data.scan import ScanResult, check_root, junk_reason, scan_class_folder
from transferkit.errors import DataError

__all__ = ["SPLIT_NAMES", "VAL_NAMES", "split_folders", "detect_layout", "scan_dataset", "evaluation_folder"]

logger = logging.getLogger(__name__)

VAL_NAMES: Final[tuple[str, ...]] = ("val", "valid", "validation", "dev")
SPLIT_NAMES: Final[dict[str, tuple[str, ...]]] = {"train": ("train",), "val": VAL_NAMES, "test": ("test",)}
ROLE_OF_NAME: Final[dict[str, str]] = {name: role for role, names in SPLIT_NAMES.items() for name in names}
_SPLIT_HINT: Final = "train/, one of val/ valid/ validation/ dev/, test/"


def _top_folders(root: str) -> list[str]:
    """Sorted names of root's sub-folders that are neither hidden nor system folders."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"cannot list dataset folder {root!r}: {exc.strerror or exc}") from None
    return [e.name for e in entries if e.is_dir(follow_symlinks=True) and junk_reason(e.name, True) is None]


def _refuse_mixed(root: str, splits: list[str], others: list[str]) -> None:
    quoted = lambda names: ", ".join(repr(n) for n in names)  # noqa: E731
    raise DataError(
        f"{root!r} mixes split folders ({quoted(splits)}) with other folders ({quoted(others)}); a split name is "
        f"never used as a class name. Expected either only split folders ({_SPLIT_HINT}), each with one "
        f"sub-folder per class, or only class folders. Move {quoted(others)} into the split folders (e.g. "
        f"{os.path.join(root, splits[0], others[0])!r}), or, if {splits[0]!r} is a class, rename that folder "
        f"(e.g. {splits[0] + '_class'!r})"
    )


def _require_class_folders(root: str, role: str, folder: str) -> None:
    """Refuse a split folder that holds no class sub-folders (images directly, or nothing)."""
    path = os.path.join(root, folder)
    try:
        entries = list(os.scandir(path))
    except OSError as exc:
        raise DataError(f"cannot list split folder {path!r}: {exc.strerror or exc}") from None
    if any(e.is_dir(follow_symlinks=True) and junk_reason(e.name, True) is None for e in entries):
        return
    images = sum(os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS for e in entries if e.is_file())
    what = f"it holds {images} image files directly" if images else "it is empty"
    raise DataError(
        f"{path!r} is read as the {role} split of {root!r} but has no class sub-folders ({what}); expected "
        f"{os.path.join(path, '<class>', 'img.jpg')!r}, with the same class folder names in every split, or "
        f"remove the folder. If {folder!r} is a class name, rename it (a split name is never used as a class name)"
    )


def split_folders(root: str | os.PathLike[str]) -> dict[str, str]:
    """The split folders of a dataset: role (``train``, ``val``, ``test``) -> folder name; ``{}`` if flat.

    Raises:
        DataError: split folders mixed with other folders, several validation folders, or a split folder
            without class sub-folders.
    """
    root_str = os.fspath(root)
    check_root(root_str)
    top = _top_folders(root_str)
    splits = [name for name in top if name.lower() in ROLE_OF_NAME]
    if not splits:
        return {}
    others = [name for name in top if name.lower() not in ROLE_OF_NAME]
    if others:
        _refuse_mixed(root_str, splits, others)
    found: dict[str, list[str]] = {}
    for name in splits:
        found.setdefault(ROLE_OF_NAME[name.lower()], []).append(name)
    several = next((names for names in found.values() if len(names) > 1), None)
    if several is not None:
        kind = "validation folders" if several[0].lower() in VAL_NAMES else "folders of one split"
        raise DataError(
            f"{root_str!r} has several {kind} {several}; keep exactly one of them (validation: one of "
            f"{list(VAL_NAMES)}) and merge or remove the others"
        )
    folders = {role: names[0] for role, names in found.items()}
    for role, folder in folders.items():
        _require_class_folders(root_str, role, folder)
    return folders


def detect_layout(root: str | os.PathLike[str]) -> Literal["split", "flat"]:
    """``"split"`` if the dataset gives a held-out split folder (val/ or test/), else ``"flat"``.

    ``train/`` alone is ``"flat"``: one folder of classes (``train/``'s sub-folders) that every role is carved
    from; :func:`evaluation_folder` names the folder that holds the classes.

    Raises:
        DataError: see :func:`split_folders`.
    """
    return "split" if set(split_folders(root)) - {"train"} else "flat"


def evaluation_folder(root: str | os.PathLike[str]) -> str:
    """The folder of class sub-folders that evaluating a dataset reads: its test/ split, else its validation
    split, else (train/ alone) train/, else the folder itself."""
    root_str = os.fspath(root)
    folders = split_folders(root_str)
    for role in ("test", "val", "train"):
        if role in folders:
            return os.path.join(root_str, folders[role])
    return root_str


def scan_dataset(root: str | os.PathLike[str]) -> dict[str, ScanResult]:
    """Scan a dataset in any layout.

    Returns:
        ``{"all": ...}`` for a flat folder and for ``train/`` alone (then the scan's root is train/), else
        the split folders present among ``"train"``, ``"val"``, ``"test"``; val/ and test/ use train/'s
        classes (a class missing from them is allowed, a class train/ lacks is refused).

    Raises:
        DataError: see :func:`split_folders` and :func:`transferkit.data.scan.scan_class_folder`.
    """
    root_str = os.fspath(root)
    folders = split_folders(root_str)
    if set(folders) <= {"train"}:
        if not folders:
            return {"all": scan_class_folder(root_str)}
        logger.info("%s has only a %s/ split: selection and test splits are carved from it", root_str,
                    folders["train"])
        return {"all": scan_class_folder(os.path.join(root_str, folders["train"]))}
    result: dict[str, ScanResult] = {}
    classes: list[str] | None = None
    for role in ("train", "val", "test"):
        if role in folders:
            result[role] = scan_class_folder(os.path.join(root_str, folders[role]), classes=classes)
            classes = classes or result[role].classes
    return result
