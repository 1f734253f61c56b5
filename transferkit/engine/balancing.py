"""Post-hoc logit adjustment of the chosen model (Menon et al. 2021, "Long-tail learning via logit adjustment").

After the epoch is chosen, ``logits - tau * log prior`` moves the decision boundaries toward the rare
classes. ``tau`` is chosen on the selection split (the split that chooses; the test split never does) by
the run's monitor (balanced accuracy on imbalanced data), ties broken by the selection log loss and then
the smaller ``tau``; ``tau = 0`` (no adjustment) is on the grid, so the adjustment never makes the selection
score worse. Without a selection split (``--select last``) ``tau`` is Menon et al.'s 1, fixed before any
data is seen.

The shift is folded into the bias of the head's last Linear layer, so the saved model, ``predict``,
``evaluate`` and an exported graph all apply it with no extra code.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from scipy.special import softmax
from torch import nn

from transferkit.data.balance import adjust_logits

__all__ = ["TAU_GRID", "choose_tau", "fold_into_head"]

TAU_GRID = tuple(round(0.25 * i, 2) for i in range(0, 9))  # 0 .. 2; Menon et al. find tau near 1 best


def choose_tau(labels: np.ndarray, probs: np.ndarray, prior: np.ndarray,
               metrics: Callable[[np.ndarray, np.ndarray], dict[str, Any]], monitor: str,
               grid: tuple[float, ...] = TAU_GRID) -> dict[str, Any]:
    """The selection split's best ``tau``: {"tau", "grid": [{"tau", monitor, "nll"}], "monitor"}.

    ``probs`` are the selection split's softmax outputs of the chosen model (unadjusted) and
    ``metrics(labels, probs)`` returns ``summary_metrics``' dict.
    """
    log_probs = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0))
    rows = []
    for tau in grid:
        m = metrics(labels, softmax(adjust_logits(log_probs, prior, tau), axis=1))
        rows.append({"tau": tau, monitor: m.get(monitor), "nll": m.get("nll")})
    best = max(rows, key=lambda r: (r[monitor] or 0.0, -(r["nll"] or 0.0), -r["tau"]))
    return {"tau": best["tau"], "monitor": monitor, "grid": rows}


def fold_into_head(head: nn.Module, prior: np.ndarray, tau: float) -> None:
    """Subtract ``tau * log prior`` from the bias of the head's last Linear (classes with prior 0 keep theirs)."""
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears or linears[-1].bias is None:
        raise ValueError("logit adjustment needs a head ending in a Linear layer with a bias")
    shift = adjust_logits(np.zeros((1, len(prior))), np.asarray(prior, dtype=np.float64), tau)[0]  # -tau log prior
    bias = linears[-1].bias
    with torch.no_grad():
        bias.add_(torch.as_tensor(shift, dtype=bias.dtype, device=bias.device))
