"""Source vs target features in 2-D, before and after adaptation, and how separable the domains are.

The projection is scikit-learn's t-SNE (PCA to 50 dimensions first, as its documentation advises for
speed) or plain PCA; the figure is drawn with matplotlib's Agg backend into a PNG in the run folder.
Next to it, a number the picture cannot give: the cross-validated accuracy of a logistic regression
telling source from target features (0.5 = the domains are indistinguishable; a proxy A-distance).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["project", "domain_separability", "projection_figure"]


def project(features: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """``features`` (n, d) -> (n, 2) by t-SNE or PCA."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    n = len(x)
    if method == "pca" or n < 8:
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    reduced = PCA(n_components=min(50, n - 1, x.shape[1]), random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)


def domain_separability(source: np.ndarray, target: np.ndarray, seed: int = 0) -> float | None:
    """5-fold (or fewer) cross-validated accuracy of a linear source-vs-target classifier."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(5, len(source), len(target))
    if folds < 2:
        return None
    x = np.concatenate([source, target]).astype(np.float32)
    y = np.concatenate([np.zeros(len(source)), np.ones(len(target))])
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=500))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(probe, x, y, cv=cv).mean())


def projection_figure(
    panels: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str | Path, method: str, seed: int = 0
) -> Path:
    """Draw one panel per (title, source features, target features) and save a PNG.

    Source and target of a panel are projected together (t-SNE/PCA coordinates are only comparable
    within one fit), so each panel shows how the two domains lie relative to each other.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.8), squeeze=False)
    for ax, (title, src, tgt) in zip(axes[0], panels):
        xy = project(np.concatenate([src, tgt]), method, seed)
        ax.scatter(xy[: len(src), 0], xy[: len(src), 1], s=7, alpha=0.6, c="#1f77b4", label=f"source ({len(src)})")
        ax.scatter(xy[len(src):, 0], xy[len(src):, 1], s=7, alpha=0.6, c="#ff7f0e", label=f"target ({len(tgt)})")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(loc="best", fontsize=8, markerscale=2)
    fig.suptitle(f"Pooled backbone features, {'t-SNE' if method == 'tsne' else 'PCA'} projection", fontsize=11)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
