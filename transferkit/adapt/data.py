"""Source and target data for adaptation; the target's labels never reach training.

The target folder is read as a plain bag of images: every image file under it, whatever sub-folders it
has, each with the label ``-1`` ("unknown"). Files are ordered by file name (then relative path), so
even the class folders of a labelled target folder cannot influence the training order. Labels for the
target are read only from ``--target-labels-for-eval``, only by :func:`labelled_eval_samples`, and only
the evaluation code calls that.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from transferkit.data.datasets import ImageDataset, make_loader
from transferkit.data.decode import IMAGE_EXTENSIONS
from transferkit.data.layout import evaluation_folder
from transferkit.data.scan import (
    Sample,
    ScanResult,
    list_image_files,
    scan_class_folder,
    validate,
)
from transferkit.errors import DataError

__all__ = ["UNLABELLED", "unlabelled_samples", "labelled_eval_samples", "cycle_batches"]

UNLABELLED = -1


def unlabelled_samples(target: str | os.PathLike, draft_size: int | None = None, check: bool = True) -> tuple[list[Sample], list[tuple[str, str]]]:
    """Every readable image under ``target`` as ``Sample(path, -1)``, plus the skipped files.

    Args:
        target: a folder of images (sub-folders, including class folders, are walked and ignored).
        draft_size: decode hint for the validation pass.
        check: decode every file once and drop unreadable ones (as the source scan does).

    Raises:
        DataError: the folder is missing or holds no readable image.
    """
    root = Path(target)
    if not root.is_dir():
        raise DataError(f"target folder {root} does not exist; pass --target FOLDER with the unlabelled target images")
    # the scan's own walker (data.scan): the same rules for what counts as an image as train and predict
    files = sorted((Path(f) for f in list_image_files([root])), key=lambda p: (p.name, str(p.relative_to(root))))
    if not files:
        raise DataError(
            f"target folder {root} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
            "pass the folder of target-domain images"
        )
    samples = [Sample(str(p), UNLABELLED) for p in files]
    if not check:
        return samples, []
    scan = validate(ScanResult(str(root), ["unlabelled"], samples, []), workers=max(1, os.cpu_count() or 1), draft_size=draft_size)
    return list(scan.samples), list(scan.skipped)


def labelled_eval_samples(
    folder: str | os.PathLike, classes: Sequence[str], draft_size: int | None = None
) -> tuple[list[Sample], list[tuple[str, str]]]:
    """Labelled target images for evaluation only, labelled by the source's class indices (by name).

    ``folder`` holds class sub-folders named like the source's classes (some may be missing), or a
    train/val(/test) split, whose test/ (else val/) part is used.
    """
    path = Path(folder)
    if not path.is_dir():
        raise DataError(f"--target-labels-for-eval {path} does not exist; pass a folder of class sub-folders")
    scan = scan_class_folder(evaluation_folder(path), classes=list(classes))  # the folder, its test/ or val/
    unknown = sorted(set(scan.classes) - set(classes))
    if unknown:
        raise DataError(
            f"{path}: class folder(s) {', '.join(unknown)} are not source classes ({', '.join(classes)}); "
            "the evaluation folder's sub-folders must be named like the source's"
        )
    scan = validate(scan, workers=max(1, os.cpu_count() or 1), draft_size=draft_size)
    remap = {i: list(classes).index(c) for i, c in enumerate(scan.classes)}
    return [Sample(s.path, remap[s.label]) for s in scan.samples], list(scan.skipped)


def cycle_batches(
    dataset: ImageDataset, batch_size: int, seed: int, first_epoch: int, workers: int, pin_memory: bool = False
) -> Iterator[dict[str, Any]]:
    """Endless shuffled batches of ``dataset``: each pass is a new epoch of :func:`make_loader`.

    The source loader decides the epoch length; the (usually differently sized) target set is cycled,
    each pass reshuffled by (seed, pass), so every source batch gets a target batch of the same size.
    Batches smaller than 2 are dropped (no batch statistics can be computed from one image).
    """
    epoch = first_epoch
    while True:
        produced = False
        for batch in make_loader(dataset, batch_size, True, seed, epoch, workers, pin_memory=pin_memory):
            if batch["images"] is not None and batch["images"].shape[0] >= 2:
                produced = True
                yield batch
        if not produced:
            raise DataError(f"{dataset.samples[0].path if dataset.samples else 'the target folder'}: no readable target batch")
        epoch += 1
