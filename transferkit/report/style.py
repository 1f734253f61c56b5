"""One plotting style for every report figure, and figures/images turned into embeddable data URIs.

matplotlib runs on the Agg backend (no display needed); every figure goes through :func:`figure`
so fonts, grid and colours are the same across run, evaluation and comparison reports.
"""

from __future__ import annotations

import base64
import io
from contextlib import contextmanager
from typing import Iterator

import matplotlib

matplotlib.use("Agg", force=False)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

__all__ = ["figure", "fig_to_uri", "image_to_uri", "COLORS", "STYLE", "DPI"]

DPI = 110
# Colour-blind safe (Okabe-Ito); the first two are the train/val pair everywhere.
COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]
STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "axes.prop_cycle": matplotlib.cycler(color=COLORS),
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "image.cmap": "viridis",
}


@contextmanager
def figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.6, **kwargs) -> Iterator[tuple]:
    """A (fig, axes) pair in the report style; the figure is closed on exit (no pyplot state leaks)."""
    with plt.style.context(STYLE):
        fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kwargs)
        try:
            yield fig, axes
        finally:
            plt.close(fig)


def fig_to_uri(fig) -> str:
    """PNG data URI of a figure (laid out tightly)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", facecolor="white")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_to_uri(image: np.ndarray | Image.Image, fmt: str = "PNG") -> str:
    """Data URI of an RGB image (uint8 HxWx3 array or PIL). Photos may use fmt="JPEG" to stay small."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    buffer = io.BytesIO()
    if fmt.upper() == "JPEG":
        pil.convert("RGB").save(buffer, format="JPEG", quality=88)
        mime = "jpeg"
    else:
        pil.save(buffer, format="PNG", optimize=True)
        mime = "png"
    return f"data:image/{mime};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
