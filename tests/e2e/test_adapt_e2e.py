"""End-to-end `adapt` runs on tiny generated source/target folders (colour-shifted), via API and CLI."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

import transferkit.adapt.runner as runner_mod
from conftest import make_image_folder
from transferkit.adapt import BN_BY_METHOD, METHODS, adapt
from transferkit.adapt.results import SOURCE_ONLY_PREDICTIONS_FILE, score_run
from transferkit.api import evaluate, predict
from transferkit.cli import app
from transferkit.errors import ConfigError, StrategyError

FAST = dict(backbone="efficientnet_lite0", input_size=32, batch_size=8, workers=0, epochs=1, adapt_epochs=1)
CLASSES = {"a": 8, "b": 8}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors on a shared 2-core machine: two intra-op threads spin against other processes and run
    about 10x slower than one (measured), so these tests use one thread and restore the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _shifted_folder(root: Path, seed: int) -> Path:
    """The source's classes with inverted, darker colours: a domain shift a tiny model can notice."""
    make_image_folder(root, CLASSES, size=36, seed=seed)
    for path in root.rglob("*.jpg"):
        pixels = np.asarray(Image.open(path)).astype(np.float32)
        Image.fromarray((255 - 0.7 * pixels).clip(0, 255).astype(np.uint8)).save(path, quality=90)
    return root


@pytest.fixture(scope="module")
def domains(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("domains")
    source = make_image_folder(root / "source", CLASSES, size=36, seed=0)
    target = _shifted_folder(root / "target", seed=1)
    # the same target images with every class folder's files moved into the wrong class folder
    poisoned = root / "poisoned"
    shutil.copytree(target, poisoned)
    names = sorted(CLASSES)
    for path in sorted((target).rglob("*.jpg")):
        wrong = names[(names.index(path.parent.name) + 1) % len(names)]
        shutil.move(str(poisoned / path.parent.name / path.name), poisoned / wrong / path.name)
    return {"source": source, "target": target, "poisoned": poisoned}


def _weights(run: Path, name: str = "model.safetensors") -> dict:
    return load_file(str(run / name))


@pytest.mark.parametrize("method", METHODS)
def test_each_method_writes_a_usable_run_folder(domains: dict[str, Path], tmp_path: Path, method: str) -> None:
    out = tmp_path / method
    result = adapt(domains["source"], domains["target"], method=method, target_labels_for_eval=domains["target"],
                   out=str(out), quiet=True, adapt_options={"projection": "tsne" if method == "dann" else "pca"}, **FAST)
    s = result.summary
    # A 1 + 1 epoch run at 32 px on 10 source training images cannot be held to an accuracy, only to its bookkeeping.
    # Measured at training seeds 0-4: every method's source-only baseline scores 0.50-0.5625 on the 16 target
    # images (chance 0.5: it calls nearly all of them one class; source accuracy is 0.5 too), the adapted model
    # 0.25-0.69 (AdaBN) or 0.50-0.5625 (DANN, CORAL); at 3 + 3 epochs still 0.31-0.50. And the inverted colours
    # flip the classes: a baseline that does learn the source (lr 1e-2, 3 epochs, seed 1) scores 0.0 on the
    # target, so no threshold above chance would hold on these domains. So the numbers are checked for
    # consistency: per-class counts, accuracy = mean per-class accuracy, the summary = target_metrics.json.
    target_metrics = json.loads((out / "target_metrics.json").read_text())
    for side in ("source_only", "adapted"):
        target, per_class = s[side]["target"], s[side]["target_per_class_accuracy"]
        assert set(per_class) == set(CLASSES)
        assert all((value * CLASSES[name]).is_integer() for name, value in per_class.items())  # k of 8 right
        # 8 + 8 target images: accuracy is the mean of the per-class accuracies, and equals balanced accuracy
        assert target["accuracy"] == pytest.approx(np.mean(list(per_class.values())))
        assert target["balanced_accuracy"] == pytest.approx(target["accuracy"])
        assert 0.0 <= target["roc_auc"] <= 1.0 and target["nll"] > 0
        assert target_metrics[side]["metrics"] == pytest.approx(target)  # the summary and the file agree
        assert {name: row["recall"] for name, row in target_metrics[side]["per_class"].items()} == pytest.approx(per_class)
    assert s["target_accuracy_gain"] == pytest.approx(s["adapted"]["target"]["accuracy"] - s["source_only"]["target"]["accuracy"])
    if method == "source-only":  # no adaptation: the "adapted" model is the baseline
        assert s["adapted"]["target"] == s["source_only"]["target"] and s["target_accuracy_gain"] == 0
    assert s["method"] == method and s["figures"]["projection"] == "projection.png"
    assert s["bn"] == BN_BY_METHOD[method] and (s["adabn_images"] > 0) == (method == "adabn")
    assert (out / "projection.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("config.yaml", "adapt.yaml", "metrics.jsonl", "model.json", "baseline.json", "target_metrics.json"):
        assert (out / name).is_file(), name
    phases = [json.loads(line)["phase"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert phases == ["source-only"] + ([method] if method in ("dann", "coral") else [])
    base, final = _weights(out, "baseline.safetensors"), _weights(out)
    same = all(np.array_equal(base[k].numpy(), final[k].numpy()) for k in base)
    assert same == (method == "source-only")  # every other method changes something
    if method == "adabn":  # ... and AdaBN only BatchNorm statistics
        assert all(np.array_equal(base[k].numpy(), final[k].numpy()) for k in base if "running_" not in k and "num_batches" not in k)
    # the run folder is an ordinary model for predict / evaluate
    rows = predict(out, [domains["target"] / "a"])
    assert len(rows) == CLASSES["a"] and all("predictions" in r for r in rows)
    report = evaluate(out, domains["target"], out=tmp_path / "eval")
    assert report["metrics"]["accuracy"] == pytest.approx(s["adapted"]["target"]["accuracy"])
    # scoring the finished run later (how a benchmark reads a held-out target test set once) gives the run's
    # own numbers, for both models, image by image
    later = score_run(out, domains["target"])
    for side, file in (("adapted", "target_predictions.json"), ("source_only", SOURCE_ONLY_PREDICTIONS_FILE)):
        assert later[side]["metrics"]["accuracy"] == pytest.approx(s[side]["target"]["accuracy"])
        recorded = {row["path"]: row["probs"] for row in json.loads((out / file).read_text())}
        assert set(recorded) == set(later["paths"])
        for path, probs in zip(later["paths"], later[side]["probs"]):
            # the same weights and images; the batch differs (128 here, the run's own evaluation batch there), and
            # oneDNN picks its convolution kernels by batch shape, so the float sums differ in their last digits
            # (1.2e-5 seen on AdaBN's near-0.5 probabilities): 1e-4, the export parity tolerance, and the same class
            assert probs == pytest.approx(recorded[path], abs=1e-4)
            assert int(np.argmax(probs)) == int(np.argmax(recorded[path]))


def test_target_labels_never_reach_training(domains: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Poisoning: mislabelled target class folders and mislabelled evaluation labels give bit-identical weights."""
    seen_labels: set[int] = set()
    real_cycle = runner_mod.cycle_batches

    def spy(*args, **kwargs):
        for batch in real_cycle(*args, **kwargs):
            seen_labels.update(batch["labels"].tolist())
            yield batch

    monkeypatch.setattr(runner_mod, "cycle_batches", spy)
    runs = {}
    for name, target, evaluation in (("clean", "target", "target"), ("poisoned", "poisoned", "poisoned")):
        out = tmp_path / name
        runs[name] = adapt(domains["source"], domains[target], method="dann", target_labels_for_eval=domains[evaluation],
                           out=str(out), quiet=True, adapt_options={"projection": "none", "adabn": False}, **FAST).summary
    assert seen_labels == {-1}  # the training loop only ever got "unknown" target labels
    for name in ("model.safetensors", "baseline.safetensors"):
        clean, poisoned = _weights(tmp_path / "clean", name), _weights(tmp_path / "poisoned", name)
        assert clean.keys() == poisoned.keys()
        assert all(np.array_equal(clean[k].numpy(), poisoned[k].numpy()) for k in clean), name
    # ... while the evaluation did read the (different) labels: every prediction flips from right to wrong
    clean_acc = runs["clean"]["adapted"]["target"]["accuracy"]
    assert runs["poisoned"]["adapted"]["target"]["accuracy"] == pytest.approx(1.0 - clean_acc)


def test_baseline_is_reused_from_an_earlier_run(domains: dict[str, Path], tmp_path: Path) -> None:
    first = tmp_path / "first"
    adapt(domains["source"], domains["target"], method="source-only", out=str(first), quiet=True,
          adapt_options={"projection": "none"}, **FAST)
    second = adapt(domains["source"], domains["target"], method="adabn", out=str(tmp_path / "second"), quiet=True,
                   baseline_from=first, adapt_options={"projection": "none"}, **FAST)
    a, b = _weights(first, "baseline.safetensors"), _weights(tmp_path / "second", "baseline.safetensors")
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert second.summary["baseline_from"] == str(first) and "target" not in second.summary["adapted"]
    with pytest.raises(ConfigError, match="does not match"):
        adapt(domains["source"], domains["target"], method="adabn", out=str(tmp_path / "third"), quiet=True,
              baseline_from=first, **{**FAST, "input_size": 40})


@pytest.mark.parametrize("select", ["best", "last"])
def test_source_data_roles_follow_the_protocol(domains: dict[str, Path], tmp_path: Path, select: str) -> None:
    """The source folder gets the three data roles: train fits, the selection split is only logged per epoch
    (adapt keeps the last epoch), the source test split is reported; ``select last`` has no selection split."""
    out = tmp_path / select
    s = adapt(domains["source"], domains["target"], method="adabn", out=str(out), quiet=True, select=select,
              adapt_options={"projection": "none"}, **FAST).summary
    split = json.loads((out / "split.json").read_text())
    train, selection, test = ({p for p, _ in split[k]} for k in ("train", "selection", "test"))
    assert not (train & selection) and not (train & test) and not (selection & test)
    assert len(train) + len(selection) + len(test) == sum(CLASSES.values())
    assert s["data"]["n_train"] == len(train) and s["data"]["n_selection"] == len(selection) and s["data"]["n_test"] == len(test)
    assert {k: s["protocol"][k]["n"] for k in ("train", "selection", "test")} == {
        "train": len(train), "selection": len(selection), "test": len(test)}
    assert s["protocol"]["target"]["n"] == s["data"]["n_target"] and s["protocol"]["target_eval"]["n"] == 0
    assert test and s["metrics"] == s["adapted"]["source_test"] and s["metrics_split"] == "test" and s["select"] == "last"
    for side in ("source_only", "adapted"):
        assert s[side]["source_test"]["accuracy"] * len(test) == pytest.approx(round(s[side]["source_test"]["accuracy"] * len(test)))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    if select == "best":
        assert selection and s["source_only"]["source_selection"] is not None
        assert all("selection_accuracy" in row for row in rows)
    else:
        assert not selection and s["source_only"]["source_selection"] is None and s["adapted"]["source_selection"] is None
        assert not any(k.startswith(("selection_", "val_")) for row in rows for k in row)


def test_adapting_a_frozen_backbone_is_refused(domains: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(StrategyError, match="feature-extraction"):
        adapt(domains["source"], domains["target"], method="dann", strategy="feature-extraction", out=str(tmp_path / "x"),
              quiet=True, **FAST)


@pytest.mark.parametrize("method", METHODS)
def test_cli_adapt_runs_each_method(domains: dict[str, Path], tmp_path: Path, method: str) -> None:
    out = tmp_path / "cli"
    args = ["adapt", "--source", str(domains["source"]), "--target", str(domains["target"]),
            "--target-labels-for-eval", str(domains["target"]), "--method", method, "--out", str(out),
            "--backbone", "efficientnet_lite0", "--input-size", "32", "--batch-size", "8", "--epochs", "1",
            "--adapt-epochs", "1", "--workers", "0", "--projection", "none", "--set", "adapt.coral_weight=2", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "target accuracy" in result.output and method in result.output  # the side-by-side table
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method and "target" in summary["adapted"]
    assert "coral_weight: 2.0" in (out / "adapt.yaml").read_text()  # --set adapt.KEY reaches the adaptation options
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("selection_accuracy" in row and not any(k.startswith("val_") for k in row) for row in rows)
    assert "source test accuracy" in result.output


def test_cli_adapt_errors_are_one_line(domains: dict[str, Path], tmp_path: Path) -> None:
    cli = CliRunner()
    bad = cli.invoke(app, ["adapt", "--source", str(domains["source"]), "--target", str(tmp_path / "missing"),
                           "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2
    assert "error:" in bad.output and "missing" in bad.output and "Traceback" not in bad.output
    typo = cli.invoke(app, ["adapt", "--source", str(domains["source"]), "--target", str(domains["target"]),
                            "--set", "adapt.lamda_max=1", "--out", str(tmp_path / "typo")])
    assert typo.exit_code == 2 and "lamda_max" in typo.output


def test_adapt_select_best_chooses_an_adaptation_epoch_and_stops_early(domains: dict[str, Path], tmp_path: Path) -> None:
    """adapt.select best: the trainer's selection and early stopping, over the adaptation epochs only."""
    out = tmp_path / "best"
    s = adapt(domains["source"], domains["target"], method="coral", out=str(out), quiet=True, patience=1,
              adapt_options={"projection": "none", "select": "best"}, **{**FAST, "adapt_epochs": 4}).summary
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["phase"] == "source-only" and all(row["phase"] == "coral" for row in rows[1:])
    assert s["select"] == "best" and 2 <= s["selected_epoch"] <= len(rows) == s["epochs_run"]
    assert len(rows) == 5 or len(rows) == s["selected_epoch"] + 1  # all epochs, or stopped one after the best
    with pytest.raises(ConfigError, match="selection split"):
        adapt(domains["source"], domains["target"], method="coral", out=str(tmp_path / "none"), quiet=True, select="last",
              adapt_options={"projection": "none", "select": "best"}, **FAST)
