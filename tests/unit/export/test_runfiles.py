"""model.safetensors is a function of the weights: the same state dict gives the same bytes in any process
(its SHA-256 names the run's exported ONNX graph, so a byte that moves with hash order re-exports for nothing)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file

SAVE_FOUR_TIMES = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch
    from transferkit.export.runfiles import save_model
    from transferkit.models.backbones import resolve_spec

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    model.spec = resolve_spec("efficientnet_lite0")
    out = Path(sys.argv[1])
    for i in range(4):  # within a process too: every hash map gets new keys
        save_model(out, model, ["a", "b"], {"kind": "linear"}, name=f"model{i}.safetensors")
""")


def _save_in_a_new_process(folder: Path) -> list[Path]:
    folder.mkdir()
    subprocess.run([sys.executable, "-c", SAVE_FOUR_TIMES, str(folder)], check=True, timeout=300)
    return sorted(folder.glob("*.safetensors"))


def test_the_same_weights_give_the_same_file_bytes_in_every_process(tmp_path: Path):
    files = _save_in_a_new_process(tmp_path / "first") + _save_in_a_new_process(tmp_path / "second")
    assert len(files) == 8
    digests = {hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    assert len(digests) == 1, f"{len(digests)} different files from one state dict"
    tensors = load_file(str(files[0]))  # still a valid safetensors file, every tensor intact
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    assert set(tensors) == set(reference.state_dict())
    assert all(torch.equal(tensors[k], v) for k, v in reference.state_dict().items())
    from safetensors import safe_open

    with safe_open(str(files[0]), "pt") as handle:
        assert handle.metadata() == {"format": "transferkit", "version": "1"}
