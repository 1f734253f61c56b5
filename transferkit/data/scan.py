"""Scanning one image folder laid out one sub-folder per class: ``ROOT/<class>/**/<image>``.

Which folders of a dataset are scanned (a folder of classes, or its train/ val/ test/ split folders) is
decided in :mod:`transferkit.data.layout`.

Class names are the sorted sub-folder names and labels are their indices,
exactly like ``torchvision.datasets.ImageFolder``. Nothing vanishes without a
trace: every file that is not used is listed in ``ScanResult.skipped`` with a
reason (hidden file, OS junk, non-image extension, symlink loop, ...). Scanning
only looks at names; :func:`validate` decodes every image and moves unreadable
ones to ``skipped``.

Class sets of a validation/test split (``classes`` given): a class folder that
is not one of ``classes`` is an error (labels would be meaningless); a class in
``classes`` that has no folder is allowed (small val/test sets often miss a
rare class) and logged as a warning.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final, Literal

from transferkit.data.decode import IMAGE_EXTENSIONS, check_image
from transferkit.errors import DataError

__all__ = [
    "Sample",
    "ScanResult",
    "check_root",
    "junk_reason",
    "list_image_files",
    "scan_class_folder",
    "validate",
]

logger = logging.getLogger(__name__)

SYSTEM_FILES: Final[frozenset[str]] = frozenset(
    {"thumbs.db", "ehthumbs.db", "desktop.ini", ".ds_store", "icon\r", ".directory"}
)
SYSTEM_DIRS: Final[frozenset[str]] = frozenset(
    {
        "__macosx",
        "$recycle.bin",
        "system volume information",
        ".trashes",
        ".spotlight-v100",
        ".fseventsd",
        "@eadir",
    }
)

REASON_SYSTEM_FILE: Final = "ignored: system file"
REASON_SYSTEM_DIR: Final = "ignored: system folder"
REASON_HIDDEN_FILE: Final = "ignored: hidden file"
REASON_HIDDEN_DIR: Final = "ignored: hidden folder"
REASON_TOP_LEVEL: Final = "ignored: file outside any class folder"


@dataclass(frozen=True)
class Sample:
    """One labelled image file."""

    path: str
    label: int


@dataclass
class ScanResult:
    """Outcome of scanning one folder of class sub-folders.

    Attributes:
        root: The scanned folder.
        classes: Class names; ``classes[label]`` names a sample's class.
        samples: Usable files in deterministic (sorted) order.
        skipped: ``(path, reason)`` for every file or folder not used.
    """

    root: str
    classes: list[str]
    samples: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _nfc(name: str) -> str:
    """Normalise a name so macOS (NFD) and Linux (NFC) spellings compare equal."""
    return unicodedata.normalize("NFC", name)


def junk_reason(name: str, is_dir: bool) -> str | None:
    """Reason a file/folder name is ignored, or None if it is a normal name."""
    lower = name.lower()
    if is_dir:
        if lower in SYSTEM_DIRS:
            return REASON_SYSTEM_DIR
        return REASON_HIDDEN_DIR if name.startswith(".") else None
    if lower in SYSTEM_FILES or name.startswith("._"):  # ._x = macOS AppleDouble
        return REASON_SYSTEM_FILE
    return REASON_HIDDEN_FILE if name.startswith(".") else None


def _file_reason(name: str) -> str | None:
    """Why a file is skipped by name (junk or non-image extension), else None."""
    junk = junk_reason(name, is_dir=False)
    if junk is not None:
        return junk
    ext = os.path.splitext(name)[1].lower()
    if ext not in IMAGE_EXTENSIONS:
        return f"not an image extension ({ext or 'no extension'})"
    return None


class _Walker:
    """Recursive, sorted, symlink-loop-safe file listing shared by one scan."""

    def __init__(self, skipped: list[tuple[str, str]], root: str, tops: list[str]) -> None:
        """Claim root and every class folder up front, so a symlink inside one
        class folder can never pull another class's images under its label."""
        self.skipped = skipped
        self.visited: dict[str, str] = {os.path.realpath(root): root}  # real -> first seen
        self.usable = {top for top in tops if self._claim(top)}

    def _on_error(self, exc: OSError) -> None:
        reason = f"cannot list folder: {exc.strerror or exc}"
        self.skipped.append((str(exc.filename), reason))

    def _prune(self, dirpath: str, dirnames: list[str]) -> None:
        """Drop junk and already-visited folders from ``dirnames`` in place."""
        keep: list[str] = []
        for name in sorted(dirnames):
            path = os.path.join(dirpath, name)
            junk = junk_reason(name, is_dir=True)
            if junk is not None:
                self.skipped.append((path, junk))
            elif self._claim(path):
                keep.append(name)
        dirnames[:] = keep

    def _claim(self, path: str) -> bool:
        """Mark a folder visited; report and refuse it if seen before."""
        real = os.path.realpath(path)
        first = self.visited.get(real)
        if first is None:
            self.visited[real] = path
            return True
        parent = os.path.realpath(os.path.dirname(path))
        if parent == real or parent.startswith(real.rstrip(os.sep) + os.sep):
            reason = f"symlink loop: points back to {first!r}; not followed"
        else:
            reason = f"duplicate folder: symlink to {first!r}, already scanned; not followed"
        self.skipped.append((path, reason))
        return False

    def files(self, top: str) -> Iterator[str]:
        """Yield paths of candidate files under ``top`` (sorted, recursive)."""
        if top not in self.usable:
            return
        for dirpath, dirnames, filenames in os.walk(top, onerror=self._on_error, followlinks=True):
            self._prune(dirpath, dirnames)
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                reason = _file_reason(name)
                if reason is None:
                    yield path
                else:
                    self.skipped.append((path, reason))


def list_image_files(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """The image files named by ``paths`` (files and folders), for predict and explain.

    Folders are walked with the scan's own rules (sorted, recursive, symlink loops not followed, hidden and
    system names and non-image extensions are not candidates), so every command agrees on what counts as an
    image in a folder. A file named explicitly is always kept: if it is not a readable image, the decoder
    says why in that file's row.
    """
    files: list[str] = []
    for item in paths:
        path = os.fspath(item)
        if not os.path.isdir(path):
            files.append(path)
            continue
        walker = _Walker([], path, [])
        walker.usable = {path}  # the folder itself is the one top to walk
        files.extend(walker.files(path))
    return files


def check_root(root: str) -> None:
    """Refuse a missing root or one that is not a folder."""
    if not os.path.exists(root):
        raise DataError(f"dataset folder {root!r} does not exist; check the path")
    if not os.path.isdir(root):
        raise DataError(
            f"dataset path {root!r} is a file, not a folder; pass the folder "
            "that contains one sub-folder per class"
        )


def _list_class_dirs(root: str, skipped: list[tuple[str, str]]) -> list[str]:
    """Sorted class folder names under root; other entries go to ``skipped``."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"cannot list dataset folder {root!r}: {exc.strerror or exc}") from None
    class_dirs: list[str] = []
    loose_images = 0
    for entry in entries:
        is_dir = entry.is_dir(follow_symlinks=True)
        junk = junk_reason(entry.name, is_dir)
        if junk is not None:
            skipped.append((entry.path, junk))
        elif is_dir:
            class_dirs.append(entry.name)
        else:
            loose_images += _file_reason(entry.name) is None
            skipped.append((entry.path, REASON_TOP_LEVEL))
    if not class_dirs:
        hint = f" (it holds {loose_images} image files directly)" if loose_images else ""
        raise DataError(
            f"no class sub-folders in {root!r}{hint}; expected one sub-folder per class "
            f"with the images inside, e.g. {os.path.join(root, '<class name>', 'img.jpg')!r}"
        )
    return class_dirs


def _resolve_classes(root: str, found: list[str], classes: list[str] | None) -> list[str]:
    """The label space: sorted ``found`` or the given ``classes`` (checked)."""
    if classes is None:
        result = found
    else:
        result = list(classes)
        if len({_nfc(c) for c in result}) != len(result):
            raise DataError(f"duplicate names in the given classes {result!r}; pass unique names")
        wanted = {_nfc(c) for c in result}
        extra = [name for name in found if _nfc(name) not in wanted]
        if extra:
            raise DataError(
                f"class folder {extra[0]!r} in {root!r} is not one of the expected classes "
                f"{result!r} (mismatched class sets); rename or remove it so this split uses "
                "the same class folder names as train"
            )
        present = {_nfc(name) for name in found}
        missing = [c for c in result if _nfc(c) not in present]
        if missing:
            logger.warning("%s has no folder for classes %s (allowed for val/test)", root, missing)
    if len(result) < 2:
        only = result[0] if result else ""
        raise DataError(
            f"need at least 2 classes to train a classifier; found only {only!r} in {root!r}; "
            "add a sub-folder per class"
        )
    return result


def _refuse_empty(root: str, counts: dict[str, int], skipped: list[tuple[str, str]]) -> None:
    """Refuse a dataset with no images, or with a class folder that has none."""
    if not any(counts.values()):
        raise DataError(
            f"no images found in {root!r} ({len(skipped)} files or folders skipped"
            f"{_example(skipped)}); add images with one of the extensions "
            f"{' '.join(sorted(IMAGE_EXTENSIONS))}"
        )
    empty = [name for name, count in counts.items() if count == 0]
    if empty:
        folder = os.path.join(root, empty[0])
        inside = [(p, r) for p, r in skipped if p == folder or p.startswith(folder + os.sep)]
        raise DataError(
            f"class folder {folder!r} has no usable images ({len(inside)} skipped"
            f"{_example(inside)}); add images or remove the folder"
        )


def _example(skipped: list[tuple[str, str]]) -> str:
    """``", e.g. 'path': reason"`` for the first skipped entry, or ``""``."""
    return f", e.g. {skipped[0][0]!r}: {skipped[0][1]}" if skipped else ""


def scan_class_folder(root: str | os.PathLike[str], classes: list[str] | None = None) -> ScanResult:
    """Scan ``root/<class>/**/<image>`` into labelled samples.

    Args:
        root: Folder with one sub-folder per class.
        classes: The label space to use (e.g. train's classes when scanning
            val/test). Folders not in it are an error; classes without a
            folder are allowed and logged. Default: sorted folder names.

    Returns:
        A ScanResult; image files are selected by extension only (use
        :func:`validate` to decode them).

    Raises:
        DataError: root missing or not a folder, no class sub-folders, no
            images, an empty class folder, fewer than 2 classes, or a class
            folder not in ``classes``.
    """
    root_str = os.fspath(root)
    check_root(root_str)
    skipped: list[tuple[str, str]] = []
    found = _list_class_dirs(root_str, skipped)
    names = _resolve_classes(root_str, found, classes)
    label_of = {_nfc(name): i for i, name in enumerate(names)}
    tops = [os.path.join(root_str, folder) for folder in found]
    walker = _Walker(skipped, root_str, tops)
    samples: list[Sample] = []
    counts: dict[str, int] = {}
    for folder, top in zip(found, tops, strict=True):
        label = label_of[_nfc(folder)]
        before = len(samples)
        samples.extend(Sample(path, label) for path in walker.files(top))
        counts[folder] = len(samples) - before
    _refuse_empty(root_str, counts, skipped)
    return ScanResult(root=root_str, classes=names, samples=samples, skipped=skipped)


def _check_paths(
    paths: list[str], workers: int, draft_size: int | None, kind: str
) -> list[str | None]:
    """check_image over paths, serially or in a thread/process pool."""
    if workers <= 1 or len(paths) < 2:
        return [check_image(p, draft_size) for p in paths]
    pool: Callable[..., Executor] = ThreadPoolExecutor if kind == "thread" else ProcessPoolExecutor
    drafts: Iterable[int | None] = [draft_size] * len(paths)
    chunk = 1 if kind == "thread" else max(1, len(paths) // (workers * 8))
    with pool(max_workers=workers) as executor:
        return list(executor.map(check_image, paths, drafts, chunksize=chunk))


def validate(
    result: ScanResult,
    workers: int = 2,
    draft_size: int | None = None,
    *,
    pool: Literal["thread", "process"] = "thread",
) -> ScanResult:
    """Decode every sample and move unreadable ones into ``skipped``.

    Threads are the default: Pillow releases the GIL while decoding, so they
    scale like processes without the start-up and pickling cost.

    Args:
        result: A scan to check (not modified).
        workers: Parallel workers; ``<= 1`` checks serially.
        draft_size: Passed to :func:`check_image` (faster for big JPEGs).
        pool: ``"thread"`` or ``"process"`` pool.

    Returns:
        A new ScanResult with only readable samples (order kept) and the
        unreadable ones appended to ``skipped`` with their reasons.

    Raises:
        DataError: if no sample is readable, or a class loses all its samples.
    """
    if pool not in ("thread", "process"):
        raise DataError(f"pool must be 'thread' or 'process', got {pool!r}")
    paths = [s.path for s in result.samples]
    reasons = _check_paths(paths, workers, draft_size, pool)
    good = [s for s, r in zip(result.samples, reasons, strict=True) if r is None]
    bad = [(s.path, r) for s, r in zip(result.samples, reasons, strict=True) if r is not None]
    before = {s.label for s in result.samples}
    after = {s.label for s in good}
    if not good and paths:
        raise DataError(
            f"none of the {len(paths)} images in {result.root!r} can be decoded "
            f"(e.g. {bad[0][0]!r}: {bad[0][1]}); check the files"
        )
    lost = sorted(before - after)
    if lost:
        name = result.classes[lost[0]]
        raise DataError(
            f"class {name!r} in {result.root!r} has no readable images after validation; "
            "replace the broken files or remove the folder"
        )
    skipped = list(result.skipped) + bad
    return ScanResult(root=result.root, classes=list(result.classes), samples=good, skipped=skipped)
