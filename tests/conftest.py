"""Shared fixtures: tiny generated image folders and isolation of user paths."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

REPO = Path(__file__).resolve().parents[1]


def datasets_root() -> Path:
    """Real datasets: $TRANSFERKIT_DATASETS, else ../shared/datasets beside the repo."""
    return Path(os.environ.get("TRANSFERKIT_DATASETS") or REPO.parent / "shared" / "datasets")


def require_dataset(name: str) -> Path:
    path = datasets_root() / name
    if not path.is_dir():
        pytest.skip(f"real dataset {name!r} not found at {path} (set TRANSFERKIT_DATASETS to its parent folder)")
    return path


def in_ci(env: dict[str, str] | None = None) -> bool:
    """True under CI (``CI=true``, as CI services set it; ``1`` and ``yes`` count too)."""
    env = os.environ if env is None else env
    return env.get("CI", "").strip().lower() in ("true", "1", "yes")


def find_chromium(env: dict[str, str] | None = None) -> str | None:
    """$TRANSFERKIT_CHROMIUM (a path or a name), else ``chromium`` / ``chromium-browser`` on $PATH; None if absent."""
    env = os.environ if env is None else env
    path = env.get("PATH", os.defpath)
    wanted = env.get("TRANSFERKIT_CHROMIUM")
    if wanted:
        return shutil.which(wanted, path=path)
    return shutil.which("chromium", path=path) or shutil.which("chromium-browser", path=path)


def require_chromium(env: dict[str, str] | None = None) -> str:
    """The browser for the report render tests. Without one they skip, except under CI, where they fail:
    CI must not pass with no browser test run (``scripts/install-chromium.sh`` installs it)."""
    env = os.environ if env is None else env
    found = find_chromium(env)
    if found:
        return found
    wanted = env.get("TRANSFERKIT_CHROMIUM")
    reason = (f"TRANSFERKIT_CHROMIUM={wanted!r} is not an executable" if wanted else "chromium is not installed")
    if in_ci(env):
        pytest.fail(f"{reason}, and CI=true requires the browser tests to run "
                    "(scripts/install-chromium.sh installs it; `make test` runs it)", pytrace=False)
    pytest.skip(f"{reason} (run scripts/install-chromium.sh, or `make test`, which does)")


@pytest.fixture(autouse=True)
def _isolate_user_paths(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Caches and default run folders never touch the user's home during tests."""
    monkeypatch.setenv("TRANSFERKIT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def make_image_folder(root: Path, classes: dict[str, int], size: int = 40, seed: int = 0) -> Path:
    """Class i gets a distinct dominant colour plus noise, so a tiny model can learn it."""
    rng = np.random.default_rng(seed)
    palette = [(220, 40, 40), (40, 200, 60), (50, 70, 220), (230, 200, 40), (150, 60, 200), (40, 200, 200)]
    for i, (name, count) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(count):
            base = np.array(palette[i % len(palette)], dtype=np.float32)
            pixels = np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}_{j:03d}.jpg", quality=90)
    return root


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    """A flat folder: 3 classes x 12 images."""
    return make_image_folder(tmp_path / "data", {"red": 12, "green": 12, "blue": 12})


@pytest.fixture
def tiny_split_folder(tmp_path: Path) -> Path:
    """train/ and val/ with 2 classes."""
    make_image_folder(tmp_path / "split" / "train", {"a": 10, "b": 10}, seed=1)
    make_image_folder(tmp_path / "split" / "val", {"a": 4, "b": 4}, seed=2)
    return tmp_path / "split"


TINY = dict(backbone="efficientnet_lite0", input_size=32, batch_size=8, workers=0, quiet=True)


def probs_with_argmax(pred, k, rng):
    """Random probabilities whose argmax is ``pred`` (scores vary, so ROC-AUC is not degenerate)."""
    p = rng.random((len(pred), k))
    p[np.arange(len(pred)), pred] += 1.0
    return p / p.sum(axis=1, keepdims=True)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (torchrun's rendezvous, test servers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_one_thread(cmd: list[str], cwd: Path) -> str:
    """Run ``cmd`` as each torchrun rank runs (OMP_NUM_THREADS=1); fail with its output unless it succeeds."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout + result.stderr


def torchrun(nproc: int = 2) -> list[str]:
    """The torchrun launcher of this interpreter on a free port."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(free_port())]


@pytest.fixture
def decoded_sizes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The size of every image Pillow decodes in this process, its threads included (a loader worker process is
    not seen: use workers=0, as TINY does)."""
    sizes: list[tuple[int, int]] = []
    original = ImageFile.ImageFile.load

    def load(self: ImageFile.ImageFile):  # noqa: ANN202 - Pillow's signature
        sizes.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return sizes
