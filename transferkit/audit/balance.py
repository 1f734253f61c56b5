"""Balance: images per class in every split, the imbalance ratio, and classes too small to split.

The ratio and its threshold are training's own (``transferkit.data.balance``: largest / smallest class of
the training split, imbalanced above ``IMBALANCE_RATIO``), and "too small" is what ``transferkit train``
would refuse (``transferkit.data.datasets.prepare_data``): the audit says up front what training would say
later, with the same numbers.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from transferkit.data.balance import IMBALANCE_RATIO

__all__ = ["images_needed", "balance_report"]


def images_needed(layout: str, splits: Sequence[str], min_per_class: int) -> tuple[int, str]:
    """Fewest images per class the folder that trains must hold, and why (as ``prepare_data`` counts).

    One folder of classes (or train/ alone): a selection and a test split are carved, ``min_per_class`` images
    each, and one image must be left to train. ``train/ val/`` or ``train/ test/``: only the selection split is
    carved from train/. With ``train/ val/ test/`` nothing is carved, so one training image is enough.
    """
    if layout == "flat":
        return 2 * min_per_class + 1, (f"selection and test splits are carved from the folder, {min_per_class} "
                                       "image(s) of each class each (data.min_per_class), and 1 is left to train")
    if "val" in splits and "test" in splits:
        return 1, "train/ val/ test/ are used as given; training needs 1 image of each class"
    return min_per_class + 1, (f"the selection split is carved from train/, {min_per_class} image(s) of each "
                               "class (data.min_per_class), and 1 is left to train")


def balance_report(classes: Sequence[str], labels: np.ndarray, splits: Sequence[str], layout: str,
                   min_per_class: int) -> dict[str, Any]:
    """Per-class counts of each split, the ratio of the split that trains, and the classes too small to train.

    In a flat folder the ratio is the folder's (the stratified splits keep it); in a split folder it is
    train/'s, as training measures it.
    """
    y = np.asarray(labels, dtype=np.int64)
    names = list(dict.fromkeys(splits))  # split names in order of appearance
    split_arr = np.asarray(splits)
    counts = {name: np.bincount(y[split_arr == name], minlength=len(classes))[:len(classes)] for name in names}
    trains = "all" if layout == "flat" else "train"
    train = counts.get(trains, np.zeros(len(classes), dtype=np.int64))
    ratio = float("inf") if train.min() == 0 else float(train.max() / train.min())
    need, why = images_needed(layout, names, min_per_class)
    small = [{"class": classes[i], "images": int(n), "needed": need} for i, n in enumerate(train.tolist()) if n < need]
    missing = {name: [classes[i] for i, n in enumerate(c.tolist()) if n == 0] for name, c in counts.items()
               if name != trains}
    return {
        "counts": {name: dict(zip(classes, map(int, c))) for name, c in counts.items()},
        "split_that_trains": trains,
        "ratio": None if math.isinf(ratio) else round(ratio, 3),
        "threshold": IMBALANCE_RATIO,
        "imbalanced": ratio > IMBALANCE_RATIO,
        "min_per_class": min_per_class,
        "images_needed": need,
        "why_needed": why,
        "too_small": small,
        "missing_in_held_out": {name: c for name, c in missing.items() if c},
    }
