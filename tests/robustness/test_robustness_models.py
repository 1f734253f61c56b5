"""Safe model files: a malicious pickle is refused with a CheckpointError and its payload never runs.

Every payload here creates a marker file when unpickled; ``test_payload_is_live`` proves that it does
(with an unsafe load, on a separate marker), so "the marker does not exist" means "the code did not run".
"""

from __future__ import annotations

import builtins
import pickle
import shutil
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import transferkit as tk
import transferkit.report as report
from conftest import TINY, make_image_folder
from transferkit.cli import app
from transferkit.errors import CheckpointError
from transferkit.export.runfiles import MODEL_FILE, load_run
from transferkit.models.backbones import load_weights_file

RUN = dict(epochs=1, cache=False, **TINY)
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")


class Payload:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').close()",)


def write_malicious(path: Path, marker: Path, legacy: bool = False) -> Path:
    """A checkpoint-looking file (real tensors next to the payload), zip (torch.save) or legacy pickle."""
    state = {"conv1.weight": torch.zeros(2, 2), "evil": Payload(marker)}
    if legacy:
        path.write_bytes(pickle.dumps(state))
    else:
        torch.save(state, path)
    return path


@pytest.fixture(autouse=True)
def _skip_html_report(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "build_run_report", lambda *a, **k: None)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data", {"a": 6, "b": 6})


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    data = make_image_folder(root / "data", {"a": 6, "b": 6})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "build_run_report", lambda *a, **k: None)
        return tk.train(data, out=str(root / "run"), **RUN).run_dir


def test_payload_is_live(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    torch.load(write_malicious(tmp_path / "evil.pth", marker), weights_only=False)  # the unsafe way
    assert marker.exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin", ".safetensors"])
def test_load_weights_file_refuses_malicious_pickles(tmp_path: Path, suffix: str, legacy: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # must not weaken an explicit weights_only=True
    marker = tmp_path / "ran"
    path = write_malicious(tmp_path / f"evil{suffix}", marker, legacy)
    with pytest.raises(CheckpointError) as info:
        load_weights_file(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("backbone", ["timm:resnet18", "efficientnet_lite0"])
def test_malicious_weights_refused_by_train(backbone: str, data: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = write_malicious(tmp_path / "weights.pth", marker)
    with pytest.raises(CheckpointError, match="refused to load .*could run code"):
        tk.train(data, out=str(tmp_path / "run"), **{**RUN, "backbone": backbone, "weights": str(evil)})
    assert not marker.exists()


def test_malicious_weights_through_the_cli(data: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = write_malicious(tmp_path / "weights.pth", marker, legacy=True)
    result = CliRunner().invoke(app, ["train", str(data), "--backbone", "timm:resnet18", "--weights", str(evil),
                                      "--out", str(tmp_path / "run"), "--epochs", "1", "--input-size", "32",
                                      "--no-cache", "--set", "data.workers=0"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(evil) in errors[0]
    assert not marker.exists()


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def test_malicious_model_file_in_a_run_is_refused(run_copy: Path, data: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    write_malicious(run_copy / MODEL_FILE, marker)  # a pickle under the safetensors name
    for use in (lambda: load_run(run_copy), lambda: tk.predict(run_copy, [data]), lambda: tk.evaluate(run_copy, data)):
        with pytest.raises(CheckpointError, match="not a valid safetensors file"):
            use()
    assert not marker.exists()


def test_pickled_model_next_to_model_json_is_never_loaded(run_copy: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (run_copy / MODEL_FILE).unlink()
    for name in ("model.pt", "model.pth", "model.bin"):
        write_malicious(run_copy / name, marker)
    with pytest.raises(CheckpointError, match="pickled .pt/.pth models are not loaded"):
        load_run(run_copy)
    result = CliRunner().invoke(app, ["predict", str(run_copy), str(tmp_path)])
    assert result.exit_code == 2 and result.stderr.startswith("error: ")
    assert not marker.exists()


def test_malicious_resume_state_is_refused(run_copy: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    write_malicious(run_copy / "last_state.safetensors", marker)
    (run_copy / "summary.json").unlink()
    with pytest.raises(CheckpointError, match="damaged"):
        tk.resume(run_copy, quiet=True)
    assert not marker.exists()


def test_resume_state_of_another_model_is_a_clear_error(run_copy: Path) -> None:
    cfg_path = run_copy / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    cfg["model"]["head"] = "mlp"  # config edited after the run: the saved state no longer fits
    cfg_path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    with pytest.raises(CheckpointError, match="does not fit"):
        tk.resume(run_copy, quiet=True)


@pytest.mark.parametrize("edit", ["unknown arch", "unknown head", "classes not a list", "not json"])
def test_damaged_model_json_is_a_checkpoint_error(run_copy: Path, edit: str) -> None:
    meta_path = run_copy / "model.json"
    meta = yaml.safe_load(meta_path.read_text(encoding="utf-8"))
    if edit == "unknown arch":
        meta["backbone"]["arch"] = "no_such_net"
    elif edit == "unknown head":
        meta["head"]["kind"] = "transformer"
    elif edit == "classes not a list":
        meta["classes"] = "ab"
    meta_path.write_text("{not json" if edit == "not json" else yaml.safe_dump(meta), encoding="utf-8")
    with pytest.raises(CheckpointError, match="model.json"):
        load_run(run_copy)


# --- valid local weights --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["safetensors", "safetensors-named-pth", "torch-state-dict"])
def test_local_resnet18_weights_load_and_train(fmt: str, data: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in timm.create_model("resnet18").state_dict().items()}
    path = tmp_path / ("resnet18.safetensors" if fmt == "safetensors" else "resnet18.pth")
    if fmt == "torch-state-dict":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    run = tk.train(data, out=str(tmp_path / "run"), **{**RUN, "backbone": "timm:resnet18", "weights": str(path),
                                                       "strategy": "feature-extraction"}).run_dir
    saved = load_file(run / MODEL_FILE)
    backbone = {k[len("backbone."):]: v for k, v in saved.items() if k.startswith("backbone.")}
    assert backbone and set(backbone) == {k for k in state if not k.startswith("fc.")}
    # feature extraction leaves the backbone untouched: the file's weights are exactly what was used
    assert all(torch.equal(backbone[k], state[k]) for k in backbone)
    loaded = load_run(run)
    assert loaded.spec.weight_source == f"file:{path}" and loaded.spec.arch == "resnet18"
