"""What the network learned: the first convolution's filters, pretrained vs after fine-tuning."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from transferkit.errors import TransferKitError
from transferkit.models.backbones import BackboneSpec, build_backbone
from transferkit.report.style import fig_to_uri, figure
from transferkit.strategy.plan import uses_pretrained

__all__ = ["FirstLayer", "first_conv", "first_layer_filters", "filters_figure"]

log = logging.getLogger(__name__)
MAX_FILTERS = 64


@dataclass
class FirstLayer:
    name: str
    tuned: np.ndarray  # (out, 3, k, k)
    pretrained: np.ndarray | None
    note: str = ""

    @property
    def relative_change(self) -> float | None:
        """||W - W0|| / ||W0|| over the whole layer (0 when the layer was frozen)."""
        if self.pretrained is None:
            return None
        return float(np.linalg.norm(self.tuned - self.pretrained) / max(np.linalg.norm(self.pretrained), 1e-12))


def first_conv(module: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """The first Conv2d that reads the RGB image (3 input channels, not grouped)."""
    for name, layer in module.named_modules():
        if isinstance(layer, nn.Conv2d) and layer.in_channels == 3 and layer.groups == 1:
            return name, layer
    return None


def _pretrained_backbone(spec: BackboneSpec) -> nn.Module:
    weights = spec.weight_source[len("file:"):] if spec.weight_source.startswith("file:") else None
    return build_backbone(spec, pretrained=True, weights=weights)


def first_layer_filters(model: Any, spec: BackboneSpec, config: dict[str, Any] | None = None) -> FirstLayer | None:
    """First-layer weights of the trained model, and of the pretrained backbone it started from.

    The pretrained side is skipped (with a note) for scratch runs, which did not start from it, and when
    the weights cannot be had here (e.g. a timm hub backbone offline).
    """
    found = first_conv(model.backbone)
    if found is None:
        return None
    name, layer = found
    tuned = layer.weight.detach().float().cpu().numpy()
    strategy = ((config or {}).get("strategy") or {}).get("name")
    started_pretrained = ((config or {}).get("model") or {}).get("pretrained", True) and uses_pretrained(strategy)
    if not started_pretrained:
        return FirstLayer(name, tuned, None, "trained from random initialisation (no pretrained filters to compare)")
    try:
        base = dict(_pretrained_backbone(spec).named_modules())[name].weight.detach().float().numpy()
    except (TransferKitError, KeyError, OSError) as exc:
        log.info("pretrained first layer unavailable: %s", exc)
        return FirstLayer(name, tuned, None, f"pretrained weights unavailable here ({str(exc).splitlines()[0]})")
    return FirstLayer(name, tuned, base if base.shape == tuned.shape else None)


def _tiles(weights: np.ndarray, scale: float) -> np.ndarray:
    """(n, 3, k, k) filters -> (n, k, k, 3) RGB tiles in [0, 1], all with one shared scale.

    One scale for both panels (not per-filter min/max) so that a change in a filter shows as a change
    in the picture, and an unchanged layer looks identical.
    """
    return np.clip(0.5 + 0.5 * np.transpose(weights, (0, 2, 3, 1)) / scale, 0.0, 1.0)


def _grid(ax, tiles: np.ndarray, title: str) -> None:
    n, k = len(tiles), tiles.shape[1]
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    canvas = np.ones((rows * (k + 1) - 1, cols * (k + 1) - 1, 3))
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        canvas[r * (k + 1) : r * (k + 1) + k, c * (k + 1) : c * (k + 1) + k] = tile
    ax.imshow(canvas, interpolation="nearest")
    ax.set_title(title)
    ax.axis("off")


def filters_figure(first: FirstLayer) -> str:
    """Filter grid(s): pretrained, fine-tuned, and their difference (amplified) when both exist."""
    tuned = first.tuned[:MAX_FILTERS]
    scale = float(np.abs(first.pretrained[:MAX_FILTERS] if first.pretrained is not None else tuned).max()) or 1.0
    panels = [("after training", _tiles(tuned, scale))]
    if first.pretrained is not None:
        pre = first.pretrained[:MAX_FILTERS]
        diff = tuned - pre
        amp = float(np.abs(diff).max())
        diff_title = "difference (x%.0f)" % (scale / amp) if amp > 0 else "difference (none)"
        panels = [("pretrained", _tiles(pre, scale)), panels[0], (diff_title, _tiles(diff, amp or 1.0))]
    with figure(ncols=len(panels), width=3.4, height=3.6) as (fig, axes):
        for ax, (title, tiles) in zip(axes[0], panels):
            _grid(ax, tiles, title)
        k = tuned.shape[-1]
        fig.suptitle(f"{first.name}: {len(tuned)} of {len(first.tuned)} filters, {k}x{k}, RGB (grey = 0)", fontsize=10)
        return fig_to_uri(fig)

