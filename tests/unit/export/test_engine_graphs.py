"""The ONNX engine's cached graphs (item 4 of "a service that cannot be knocked over"): no absolute path in their
metadata, a recorded SHA-256 checked before every use (a changed graph is exported again, with a warning), and a
read-only run's graph kept in a folder only this user can write (never a predictable shared /tmp path that
another user could create first)."""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
from pathlib import Path

import onnx
import pytest

import transferkit as tk
import transferkit.export.deploy as deploy
import transferkit.export.onnx as onnx_module
from conftest import TINY, make_image_folder
from transferkit.export.runfiles import load_run

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install 'transferkit[onnx]')")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = make_image_folder(tmp_path_factory.mktemp("data"), {"red": 8, "green": 8, "blue": 8})
    return tk.train(data, out=str(tmp_path_factory.mktemp("run") / "run"), strategy="feature-extraction", epochs=1,
                    cache=False, **TINY).run_dir


def _metadata(path: Path) -> dict:
    model = onnx.load(str(path), load_external_data=False)
    return json.loads(next(p.value for p in model.metadata_props if p.key == "transferkit"))


def _graphs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.onnx"))


def test_graph_metadata_holds_no_absolute_path(run_dir: Path, tmp_path: Path):
    engine = deploy.run_engine(load_run(run_dir))
    exported = tmp_path / "model.onnx"
    deploy.export_run(run_dir, "onnx", exported)
    for path in (engine.path, exported):
        text = json.dumps(_metadata(path))
        assert str(run_dir) not in text and str(run_dir.parent) not in text, text
        assert _metadata(path)["run"] == run_dir.name


def test_a_cached_graph_is_verified_by_its_recorded_hash_and_exported_again_when_changed(
        run_dir: Path, caplog: pytest.LogCaptureFixture):
    run = load_run(run_dir)
    first = deploy.run_engine(run)
    recorded = first.path.with_name(first.path.name + ".sha256")
    assert recorded.read_text().strip() == first.sha256
    assert deploy.run_engine(run).sha256 == first.sha256  # reused as it is

    tampered = bytearray(first.path.read_bytes())
    tampered[-1] ^= 0xFF  # a change ONNX Runtime may well load: only the hash tells
    first.path.write_bytes(bytes(tampered))
    with caplog.at_level(logging.WARNING):
        again = deploy.run_engine(run)
    assert again.sha256 == recorded.read_text().strip() and again.path == first.path
    assert again.path.read_bytes() != bytes(tampered)
    assert any("SHA-256" in r.getMessage() and "exporting it again" in r.getMessage() for r in caplog.records)


def test_a_graph_without_a_recorded_hash_is_exported_again(run_dir: Path, caplog: pytest.LogCaptureFixture):
    run = load_run(run_dir)
    engine = deploy.run_engine(run)
    engine.path.with_name(engine.path.name + ".sha256").unlink()
    with caplog.at_level(logging.WARNING):
        again = deploy.run_engine(run)
    assert again.path.with_name(again.path.name + ".sha256").is_file()
    assert any("no recorded SHA-256" in r.getMessage() for r in caplog.records)


def _read_only_run(run_dir: Path, tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "ro-run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("onnx"))
    for folder, _, files in os.walk(copy):
        for name in files:
            os.chmod(Path(folder) / name, 0o444)
        os.chmod(folder, 0o555)
    return copy


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tempfile's folder moved to a test folder (so the shared /tmp is not touched)."""
    base = tmp_path / "tmp"
    base.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    return base


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root writes read-only folders")
def test_a_read_only_run_uses_a_private_folder(run_dir: Path, tmp_path: Path, private_tmp: Path):
    engine = deploy.run_engine(load_run(_read_only_run(run_dir, tmp_path)))
    folder = engine.path.parent
    assert folder.parent == private_tmp
    mode = os.lstat(folder)
    assert stat.S_ISDIR(mode.st_mode) and mode.st_uid == os.getuid() and mode.st_mode & 0o077 == 0


def test_a_squatted_shared_folder_is_not_trusted(run_dir: Path, tmp_path: Path, private_tmp: Path,
                                                  monkeypatch: pytest.MonkeyPatch):
    """Someone created the predictable folder first (here: open to everyone) and planted a graph in it: the engine
    must neither load that graph nor write there."""
    run = load_run(run_dir)
    name = deploy.run_engine(run).path.name
    squatted = private_tmp / f"transferkit-onnx-{os.getuid()}"
    squatted.mkdir()
    os.chmod(squatted, 0o777)
    planted = squatted / name
    planted.write_bytes(b"not the graph")
    monkeypatch.setattr(deploy, "ENGINE_DIR", "onnx-unwritable")
    monkeypatch.setattr(deploy, "export_onnx", _refuse_in(run.path / "onnx-unwritable", deploy.export_onnx))
    engine = deploy.run_engine(run)
    assert engine.path.parent != squatted and planted.read_bytes() == b"not the graph"
    assert os.lstat(engine.path.parent).st_mode & 0o077 == 0


def test_a_symlinked_shared_folder_is_not_followed(run_dir: Path, tmp_path: Path, private_tmp: Path,
                                                    monkeypatch: pytest.MonkeyPatch):
    run = load_run(run_dir)
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    (private_tmp / f"transferkit-onnx-{os.getuid()}").symlink_to(target)
    monkeypatch.setattr(deploy, "ENGINE_DIR", "onnx-unwritable")
    monkeypatch.setattr(deploy, "export_onnx", _refuse_in(run.path / "onnx-unwritable", deploy.export_onnx))
    engine = deploy.run_engine(run)
    assert not list(target.iterdir()) and engine.path.parent.resolve() != target.resolve()


def _refuse_in(folder: Path, export):  # noqa: ANN001, ANN202
    """export_onnx, except that writing into ``folder`` fails like a read-only run folder."""
    def guarded(wrapper, size, out, meta):  # noqa: ANN001, ANN202
        if Path(out).parent == folder:
            raise PermissionError(13, "Permission denied", str(out))
        return export(wrapper, size, out, meta)

    return guarded


def test_onnx_model_refuses_bytes_other_than_the_recorded_ones(run_dir: Path, tmp_path: Path):
    engine = deploy.run_engine(load_run(run_dir))
    assert onnx_module.OnnxModel(engine.path, sha256=engine.sha256).classes == engine.classes
    with pytest.raises(onnx_module.GraphChanged, match="SHA-256"):
        onnx_module.OnnxModel(engine.path, sha256="0" * 64)
