"""HTML reports: self-contained pages with every promised part, Grad-CAM that points at the evidence, robust to gaps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import transferkit as tk
from transferkit.cli import app
from transferkit.errors import ConfigError
from transferkit.models.backbones import BACKBONES, BackboneSpec, resolve_spec
from transferkit.models.transfer import build_model
from transferkit.report import build_comparison_report, build_evaluation_report, build_run_report
from transferkit.report import plots
from transferkit.report.filters import first_layer_filters
from transferkit.report.gradcam import gradcam_maps, target_layer

from conftest import TINY, make_image_folder
from report_pages import RUN_SECTIONS, assert_self_contained, decode_uri, parse


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real (tiny) training run: 3 colour classes, fine-tuned 2 epochs at 32 px. The trainer writes report.html."""
    root = tmp_path_factory.mktemp("report")
    make_image_folder(root / "data", {"red": 8, "green": 8, "blue": 8})
    return tk.train(root / "data", strategy="finetune", epochs=2, out=str(root / "run"), **TINY).run_dir


def copy_run(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("last_state*", "report.html"))
    return target


# --- the run report -----------------------------------------------------------------------------------


def test_training_writes_a_self_contained_report_with_every_part(tiny_run: Path):
    report = tiny_run / "report.html"
    page = assert_self_contained(report)
    assert page.ids == RUN_SECTIONS
    text = report.read_text(encoding="utf-8")
    for needle in ("trainable parameters", "Most frequent confusions", "ECE", "strategy:", "red", "green", "blue"):
        assert needle in text
    # learning curves, plan, confusion, ROC, reliability, filters + two images per gallery item
    predictions = json.loads((tiny_run / "test_predictions.json").read_text())
    wrong = sum(int(np.argmax(r["probs"])) != r["label"] for r in predictions)
    expected_items = min(8, wrong) + min(8, len(predictions) - wrong)
    assert page.gallery_items == expected_items
    assert len(page.images) == 6 + 2 * expected_items


def test_gallery_shows_the_model_view_and_the_overlay(tiny_run: Path):
    page = parse(tiny_run / "report.html")
    photos = [decode_uri(u) for u in page.images if u.startswith("data:image/jpeg")]
    assert photos and len(photos) % 2 == 0
    size = resolve_spec("efficientnet_lite0").with_input_size(32).input_size
    assert all(p.size == (size, size) for p in photos)
    crop, overlay = np.asarray(photos[0], dtype=float), np.asarray(photos[1], dtype=float)
    assert np.abs(crop - overlay).mean() > 5  # the heat map really is drawn over the picture


def test_report_cli_rebuilds_and_survives_missing_pieces(tiny_run: Path, tmp_path: Path):
    run = copy_run(tiny_run, tmp_path)
    (run / "model.safetensors").unlink()  # no model: no Grad-CAM, no filters, but still a page
    (run / "test_predictions.json").unlink()
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    text = (run / "report.html").read_text(encoding="utf-8")
    assert "per-image predictions are missing" in text and "model could not be loaded" in text
    assert parse(run / "report.html").ids == RUN_SECTIONS


def test_a_failing_section_is_reported_in_place(tiny_run: Path, tmp_path: Path):
    run = copy_run(tiny_run, tmp_path)
    details = json.loads((run / "test_metrics.json").read_text())
    details["confusion_matrix"] = "garbage"
    (run / "test_metrics.json").write_text(json.dumps(details))
    text = build_run_report(run).read_text(encoding="utf-8")
    assert "could not be drawn" in text  # the confusion section says what went wrong ...
    assert parse(run / "report.html").ids == RUN_SECTIONS  # ... and the other sections are still there


def test_missing_images_are_named_in_the_gallery(tiny_run: Path, tmp_path: Path):
    run = copy_run(tiny_run, tmp_path)
    rows = json.loads((run / "test_predictions.json").read_text())
    for r in rows:
        r["path"] = str(tmp_path / "moved" / Path(r["path"]).name)
    (run / "test_predictions.json").write_text(json.dumps(rows))
    text = build_run_report(run).read_text(encoding="utf-8")
    assert "image not found" in text


def test_report_cli_refuses_a_folder_that_is_not_a_run(tmp_path: Path):
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "summary.json" in result.output


# --- evaluation and comparison reports -----------------------------------------------------------------


def test_evaluation_report_with_gradcam_and_escaped_names(tiny_run: Path, tmp_path: Path):
    loaded = tk.load_run(tiny_run)
    details = json.loads((tiny_run / "test_metrics.json").read_text())
    details.update(data="some/folder", skipped_files=[{"path": "<img src=x onerror=alert(1)>.jpg", "reason": "broken"}])
    rows = json.loads((tiny_run / "test_predictions.json").read_text())
    target = build_evaluation_report(tmp_path, details, rows, run=loaded)
    assert target == tmp_path / "evaluation.html"
    page = assert_self_contained(target)
    assert page.ids == ["summary", "confusion", "per-class", "roc", "calibration", "gallery", "skipped"]
    assert page.gallery_items > 0
    text = target.read_text(encoding="utf-8")
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in text and "<img src=x" not in text


def test_evaluation_report_without_a_model(tmp_path: Path):
    report = {"metrics": {"accuracy": 0.5}, "per_class": {"<b>a</b>": {"precision": 1.0, "recall": 0.5, "f1": 0.67, "support": 2},
              "b": {"precision": 0.5, "recall": 1.0, "f1": 0.67, "support": 1}}, "confusion_matrix": [[1, 1], [0, 1]],
              "classes": ["<b>a</b>", "b"], "calibration": {"ece": 0.1, "bins": []}, "n": 3, "skipped_files": []}
    rows = [{"path": "x.jpg", "label": 0, "probs": [0.9, 0.1]}, {"path": "y.jpg", "label": 0, "probs": [0.2, 0.8]},
            {"path": "z.jpg", "label": 1, "probs": [0.3, 0.7]}]
    text = build_evaluation_report(tmp_path, report, rows).read_text(encoding="utf-8")
    assert "<b>a</b>" not in text and "&lt;b&gt;a&lt;/b&gt;" in text
    assert "No Grad-CAM" in text and "could not be drawn" not in text


def test_comparison_report_has_table_bars_and_curves(tmp_path: Path):
    strategies = {}
    for k, name in enumerate(["scratch", "finetune"]):
        runs, dirs = [], []
        for seed in range(2):
            run = tmp_path / name / f"seed{seed}"
            run.mkdir(parents=True)
            lines = [{"epoch": e, "selection_accuracy": 0.5 + 0.1 * e * (k + 1) / 3, "selection_nll": 1.0 / e} for e in (1, 2, 3)]
            (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
            runs.append({"metrics": {"accuracy": 0.6 + 0.3 * k + 0.01 * seed, "balanced_accuracy": 0.6, "macro_f1": 0.6,
                                     "roc_auc": None}, "epochs_run": 3, "time_s": 10.0, "params": {"trainable": 10, "total": 10}})
            dirs.append(str(run))
        (tmp_path / name / "seed0" / "report.html").write_text("<html></html>")
        strategies[name] = {"runs": runs, "run_dirs": dirs, "mean": {"accuracy": 0.6 + 0.3 * k + 0.005, "epochs": 3.0, "time_s": 10.0},
                            "std": {"accuracy": 0.007, "epochs": 0.0, "time_s": 0.0}, "trainable": 10, "total": 10}
    target = build_comparison_report(tmp_path, {"data": "x/data", "seeds": 2, "settings": {"epochs": 3}, "strategies": strategies})
    page = assert_self_contained(target)
    assert page.ids == ["summary", "metrics", "curves", "cost"] and len(page.images) == 3
    text = target.read_text(encoding="utf-8")
    assert "0.905 ± 0.007" in text and "<b>finetune</b>" in text
    assert "finetune/seed0/report.html" in page.links
    # `transferkit report` on a comparison folder rebuilds comparison.html
    (tmp_path / "comparison.json").write_text(json.dumps({"data": "x", "strategies": strategies}))
    target.unlink()
    assert CliRunner().invoke(app, ["report", str(tmp_path)]).exit_code == 0 and target.is_file()


def test_comparison_report_on_imbalanced_data_leads_with_the_metric_its_verdicts_use(tmp_path: Path):
    """On imbalanced data the verdicts compare balanced accuracy: the headline must name that leader, not the
    accuracy leader, and the chart must not claim that overlapping whiskers mean "within noise"."""
    strategies = {}
    for name, accuracy in (("feature-extraction", 0.93), ("lp-ft", 0.90)):  # fe leads on accuracy only
        strategies[name] = {"runs": [{"metrics": {"accuracy": accuracy, "balanced_accuracy": 0.6 if name == "feature-extraction" else 0.8,
                                                  "macro_f1": 0.6, "roc_auc": 0.9}, "epochs_run": 3, "time_s": 1.0,
                                      "params": {"trainable": 10, "total": 10}}] * 2,
                            "run_dirs": [], "mean": {"accuracy": accuracy, "epochs": 3.0, "time_s": 1.0},
                            "std": {"accuracy": 0.0, "epochs": 0.0, "time_s": 0.0}, "trainable": 10, "total": 10}
    verdicts = {"metric": "balanced_accuracy", "split": "test", "n_images": 120, "n_seeds": 2, "best": "lp-ft",
                "test": "exact sign-flip permutation test", "family": "all 1 pairs of 2 rows",
                "strategies": {"lp-ft": {"mean": 0.8, "ci95": [0.7, 0.88], "distinct_models": 2, "n_seeds": 2},
                               "feature-extraction": {"mean": 0.6, "ci95": [0.5, 0.7], "distinct_models": 1, "n_seeds": 2,
                                                      "vs_best": -0.2, "p_value": 0.001, "p_holm": 0.001, "verdict": "worse"}}}
    target = build_comparison_report(tmp_path, {"data": "x/data", "seeds": 2, "strategies": strategies, "verdicts": verdicts})
    text = target.read_text(encoding="utf-8")
    assert "Highest mean test balanced acc.: <b>lp-ft</b>" in text and "Worse than it: feature-extraction" in text
    assert "Highest mean test accuracy" not in text
    assert "1 of 2" in text  # feature extraction: one distinct model for two seeds
    assert "whiskers overlap, the difference is within" not in text and "not whether whiskers overlap" in text


# --- Grad-CAM ---------------------------------------------------------------------------------------------


class _RedDetector(nn.Module):
    """Backbone + head whose class-1 logit is the mean 'redness' of the image, measured by a 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential()
        self.backbone.add_module("conv", nn.Conv2d(3, 1, 1, bias=False))
        self.backbone.add_module("relu", nn.ReLU())
        self.backbone.add_module("pool", nn.AdaptiveAvgPool2d(1))
        self.backbone.add_module("flat", nn.Flatten())
        self.head = nn.Linear(1, 2)
        with torch.no_grad():
            self.backbone.conv.weight.copy_(torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1))
            self.head.weight.copy_(torch.tensor([[-1.0], [1.0]]))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


TOY_SPEC = BackboneSpec(name="toy", arch="toy", weight_source="none", input_size=32, mean=(0.0, 0.0, 0.0),
                        std=(1.0, 1.0, 1.0), interpolation="bilinear", crop_pct=1.0, feature_dim=1, gradcam_layer="conv")


def test_gradcam_points_at_the_evidence_and_leaves_the_model_as_it_was():
    model = _RedDetector().train()
    for p in model.parameters():
        p.requires_grad_(False)  # as a frozen backbone after feature extraction
    images = torch.zeros(2, 3, 32, 32)
    images[0, 0, 2:12, 2:12] = 1.0  # red square top-left
    images[1, 0, 20:30, 18:28] = 1.0  # red square bottom-right
    maps, probs = gradcam_maps(model, TOY_SPEC, images, [1, None])
    assert maps.shape == (2, 32, 32) and probs.shape == (2, 2)
    assert (probs.argmax(1) == 1).all()
    for cam, (rows, cols) in zip(maps, [(slice(2, 12), slice(2, 12)), (slice(20, 30), slice(18, 28))]):
        inside = cam[rows, cols].mean()
        outside = (cam.sum() - cam[rows, cols].sum()) / (cam.size - cam[rows, cols].size)
        assert inside > 0.8 and outside < 0.2
    assert model.training and not any(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_registry_backbone_has_a_gradcam_layer(name: str):
    spec = resolve_spec(name).with_input_size(64)
    model = build_model(spec, 2, pretrained=False)
    assert isinstance(target_layer(model, spec), nn.Conv2d)
    maps, _ = gradcam_maps(model, spec, torch.randn(1, 3, 64, 64), [0])
    assert maps.shape == (1, 64, 64) and np.isfinite(maps).all()


def test_unknown_gradcam_layer_is_a_clear_error():
    import dataclasses

    spec = dataclasses.replace(TOY_SPEC, gradcam_layer="nope")
    with pytest.raises(ConfigError, match="'nope'.*last convolution"):
        target_layer(_RedDetector(), spec)


def test_explain_cli_writes_overlays_and_skips_bad_files(tiny_run: Path, tmp_path: Path):
    data = tiny_run.parent / "data"
    good = sorted((data / "red").iterdir())[:2]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    out = tmp_path / "overlays"
    result = CliRunner().invoke(app, ["explain", str(tiny_run), *map(str, good), str(bad), "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = sorted(out.glob("*_gradcam.png"))
    assert [p.name for p in written] == sorted(f"{p.stem}_gradcam.png" for p in good)
    assert Image.open(written[0]).size[0] > 100
    wrong = CliRunner().invoke(app, ["explain", str(tiny_run), str(good[0]), "--out", str(out), "--target", "purple"])
    assert wrong.exit_code == 2 and "purple" in wrong.output


# --- what the network learned, and plot edge cases ----------------------------------------------------------


def test_first_layer_filters_compare_against_the_pretrained_weights(tiny_run: Path):
    spec = resolve_spec("efficientnet_lite0")
    untouched = build_model(spec, 2, pretrained=True)
    first = first_layer_filters(untouched, spec, {"strategy": {"name": "finetune"}})
    assert first is not None and first.name == "conv_stem" and first.relative_change == 0.0
    tuned = tk.load_run(tiny_run)
    changed = first_layer_filters(tuned.model, tuned.spec, {"strategy": {"name": "finetune"}})
    assert changed.relative_change > 0  # fine-tuning moved the stem
    scratch = first_layer_filters(tuned.model, tuned.spec, {"strategy": {"name": "scratch"}})
    assert scratch.pretrained is None and "random" in scratch.note


def test_plots_handle_degenerate_inputs():
    assert plots.reliability_diagram({"ece": 0.0, "bins": []}) is None
    assert plots.roc_curves(np.zeros(4, int), np.full((4, 2), 0.5), ["a", "b"]) == (None, {})
    many = [f"class{i}" for i in range(20)]
    assert plots.confusion_matrices(np.eye(20, dtype=int), many).startswith("data:image/png;base64,")
    assert plots.plan_chart({}) is None
    uri = plots.learning_curves([{"epoch": 1, "train_loss": 1.0, "selection_nll": None, "lr": {"head": 0.0}}])
    assert decode_uri(uri).size[0] > 300


# The real-data report check (hymenoptera) runs in the default suite: tests/e2e/test_e2e_real.py.
