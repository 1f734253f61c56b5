"""An imbalanced folder trained with defaults selects on balanced accuracy, balances its loss, and reports
per-class evidence; the other balancing methods run on both the cached-embedding and the image path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import transferkit as tk
import transferkit.engine.loop as loop_mod
from conftest import make_image_folder
from transferkit.data.balance import class_weights
from transferkit.data.scan import Sample
from transferkit.features.headfit import CachedHead
from transferkit.models.backbones import resolve_spec
from transferkit.export.runfiles import load_run
from transferkit.models.runtime import predict_loader
from transferkit.data.datasets import ImageDataset, make_loader
from transferkit.data.transforms import eval_transform, resize_size

FAST = dict(backbone="efficientnet_lite0", input_size=32, batch_size=8, workers=0, epochs=2, quiet=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("imbalanced") / "data", {"ok": 48, "dent": 10, "scratch": 7},
                             size=36, seed=4)


def test_defaults_on_an_imbalanced_folder_balance_the_loss_and_select_on_balanced_accuracy(folder, tmp_path, monkeypatch):
    seen = []
    real = loop_mod.classification_loss
    monkeypatch.setattr(loop_mod, "classification_loss",
                        lambda logits, labels, ctx: seen.append(ctx.class_weights) or real(logits, labels, ctx))
    s = tk.train(folder, strategy="finetune", out=str(tmp_path / "run"), cache=False, **FAST).summary
    assert s["monitor"] == "balanced_accuracy" and s["balance"]["imbalanced"]
    assert s["balance"]["counts"]["train"]["ok"] > 3 * s["balance"]["counts"]["train"]["scratch"]
    assert s["balancing"]["class_weights"] == "balanced" and s["balancing"]["logit_adjust"] == "none"
    weights = np.array(s["balancing"]["weights"])
    counts = np.array([s["balance"]["counts"]["train"][c] for c in s["data"]["classes"]])
    assert np.allclose(weights, counts.sum() / (len(counts) * counts), atol=1e-5)
    assert seen and all(w is not None and np.allclose(w.numpy(), weights, atol=1e-5) for w in seen)
    for c in s["data"]["classes"]:  # per-class evidence with intervals in summary.json
        row = s["per_class"][c]
        assert {"precision", "recall", "f1", "support", "ci95"} <= set(row) and row["support"] >= 2
    test_counts = s["balance"]["counts"]["test"]
    assert min(test_counts.values()) >= 2  # the rare classes keep the minimum in the test split
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    best = max(range(len(rows)), key=lambda i: (rows[i]["selection_balanced_accuracy"], -rows[i]["selection_nll"]))
    assert s["selected_epoch"] == best + 1  # the epoch balanced accuracy picks


def test_logit_adjustment_is_chosen_on_selection_and_saved_in_the_model(folder, tmp_path):
    out = tmp_path / "la"
    s = tk.train(folder, strategy="finetune", class_weights="none", out=str(out), cache=False, **FAST).summary
    record = s["logit_adjustment"]
    assert s["balancing"]["logit_adjust"] == "tuned" and record["chosen_on"] == "selection"
    assert record["tau"] in [row["tau"] for row in record["grid"]]
    # the saved model applies it: predicting the test split from model.safetensors gives the reported outputs
    loaded = load_run(out)
    rows = json.loads((out / "test_predictions.json").read_text())
    samples = [Sample(r["path"], r["label"]) for r in rows]
    dataset = ImageDataset(samples, eval_transform(loaded.spec), resize_size(loaded.spec))
    got = predict_loader(loaded.model, make_loader(dataset, 16, False, 0, workers=0), torch.device("cpu"))
    assert np.allclose(got["outputs"], np.array([r["probs"] for r in rows]), atol=1e-4)
    assert json.loads((out / "model.json").read_text())["head"]["logit_adjustment"]["tau"] == record["tau"]
    # finishing again (resuming the finished run) starts from the chosen model: the shift is not stacked
    from safetensors.torch import load_file

    before = load_file(out / "model.safetensors")
    again = tk.resume(out, quiet=True).summary
    after = load_file(out / "model.safetensors")
    assert again["logit_adjustment"]["tau"] == record["tau"]
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)


def _assert_classes_drawn_equally(labels: np.ndarray, n_classes: int, what: str) -> None:
    """Each class's share of the draws is 1/C within 4 binomial standard deviations, sqrt(p (1 - p) / n):
    a fair draw misses that with probability below 1e-4 per class; draws in proportion to the folder miss it
    by far (in the folders here the common class is >= 74% of the images, the rarest <= 17%)."""
    n, p = len(labels), 1.0 / n_classes
    tolerance = 4 * math.sqrt(p * (1 - p) / n)
    shares = np.bincount(labels, minlength=n_classes) / n
    assert np.all(np.abs(shares - p) <= tolerance), f"{what}: class shares {shares.round(3)} over {n} draws, " \
                                                    f"expected {p:.3f} +- {tolerance:.3f}"


def test_the_balanced_loader_draws_a_rare_class_as_often_as_a_common_one(tmp_path):
    """The real loader of a 20:4 folder: over 50 epochs of 24 draws the rare class is about half of them."""
    root = make_image_folder(tmp_path / "d", {"common": 20, "rare": 4}, size=36, seed=2)
    samples = [Sample(str(path), label) for label, name in enumerate(["common", "rare"])
               for path in sorted((root / name).iterdir())]
    spec = resolve_spec("efficientnet_lite0").with_input_size(32)
    dataset = ImageDataset(samples, eval_transform(spec), resize_size(spec))
    drawn = []
    for epoch in range(50):
        loader = make_loader(dataset, 8, True, seed=0, epoch=epoch, workers=0, balanced=True)
        epoch_labels = np.concatenate([batch["labels"].numpy() for batch in loader])
        assert len(epoch_labels) == len(samples)  # an epoch is as long as a plain one
        drawn.append(epoch_labels)
    _assert_classes_drawn_equally(np.concatenate(drawn), 2, "balanced loader, 20:4 folder")
    # the weights that are the alternative to the sampler: inverse frequency normalised to keep the loss's
    # scale, w_c = N / (C n_c) (README: "--class-weights auto: inverse frequency, normalised ...")
    assert np.allclose(class_weights([20, 4], "balanced"), [24 / (2 * 20), 24 / (2 * 4)])  # [0.6, 3.0]
    assert class_weights([20, 4], "none") is None


@pytest.mark.parametrize(("strategy", "cache", "head_fit"),
                         [("feature-extraction", True, "sgd"), ("feature-extraction", True, "probe"),
                          ("finetune", False, "auto")])
def test_the_balanced_sampler_trains_on_the_cached_and_the_image_path(folder, tmp_path, monkeypatch, strategy, cache,
                                                                      head_fit):
    """What the training loop (or the probe) is fed under --sampler balanced: classes about equally often, and
    no class weights on top (one balancing method at a time); the full-batch probe draws no batches and gets
    the inverse-frequency weights the sampler equals in expectation."""
    batches, probe_weights = [], []
    real_loss, real_probe = loop_mod.classification_loss, CachedHead.fit_probe

    def spy_loss(logits, labels, ctx):
        batches.append((labels.cpu().numpy(), ctx.class_weights))
        return real_loss(logits, labels, ctx)

    def spy_probe(self, selection, score, class_weight=None, **kwargs):
        probe_weights.append(class_weight)
        return real_probe(self, selection, score, class_weight, **kwargs)

    monkeypatch.setattr(loop_mod, "classification_loss", spy_loss)
    monkeypatch.setattr(CachedHead, "fit_probe", spy_probe)
    s = tk.train(folder, strategy=strategy, sampler="balanced", out=str(tmp_path / "s"), cache=cache, head_fit=head_fit,
                 cache_dir=str(tmp_path / "cache"), **FAST).summary
    assert s["balancing"]["sampler"] == "balanced" and s["balancing"]["class_weights"] == "none"
    assert s["metrics"]["balanced_accuracy"] is not None
    classes = s["data"]["classes"]
    counts = np.array([s["balance"]["counts"]["train"][c] for c in classes])
    if head_fit == "probe":
        assert not batches and probe_weights == [{i: pytest.approx(counts.sum() / (len(counts) * n))
                                                  for i, n in enumerate(counts)}]
        return
    labels = np.concatenate([labels for labels, _ in batches])
    assert len(labels) == FAST["epochs"] * counts.sum()  # every epoch as long as a plain one
    assert all(weights is None for _, weights in batches)
    _assert_classes_drawn_equally(labels, len(classes), f"{strategy} training batches, train counts {counts}")


def test_a_balanced_folder_trains_as_before(tmp_path):
    root = make_image_folder(tmp_path / "even", {"a": 12, "b": 10}, size=36, seed=1)
    s = tk.train(root, strategy="feature-extraction", out=str(tmp_path / "even_run"), cache=False, **FAST).summary
    assert s["monitor"] == "accuracy" and not s["balance"]["imbalanced"]
    assert s["balancing"] == {"monitor": "accuracy", "class_weights": "none", "sampler": "none", "logit_adjust": "none",
                              "weights": None} and s["logit_adjustment"] is None
