"""The probe's and the calibration's defaults are the values their evidence chose, and the evidence is the
committed script's (benchmarks/defaults_cv.py: train + selection images only, never a test split)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import transferkit.engine.calibration as calibration
import transferkit.features.probe as probe

ROOT = Path(__file__).resolve().parents[3]
RESULT = ROOT / "benchmarks" / "results" / "defaults_cv.json"
SCRIPT = ROOT / "benchmarks" / "defaults_cv.py"


def test_the_defaults_are_the_values_their_evidence_chose():
    result = json.loads(RESULT.read_text(encoding="utf-8"))
    provenance = result["provenance"]
    assert provenance["script_sha256"] == hashlib.sha256(SCRIPT.read_bytes()).hexdigest(), (
        "benchmarks/defaults_cv.py changed since its result was written: re-run its command")
    assert set(provenance["versions"]) == {"python", "torch", "timm", "sklearn", "numpy", "transferkit"}
    assert provenance["command"].startswith("TRANSFERKIT_DATASETS=") and "benchmarks/defaults_cv.py" in provenance["command"]
    decisions = result["decisions"]
    assert probe.CV_BELOW == decisions["CV_BELOW"]
    assert calibration.MIN_SELECTION == decisions["MIN_SELECTION"]
    assert probe.SELECT_RULE == decisions["SELECT_RULE"]["keep"]
    assert list(probe.SCALINGS) == list(decisions["SCALINGS"])
    assert decisions["refit"]["change"]  # the trainer refits on train + selection when nothing after the probe chooses
    assert all(p["test_images_not_read"] > 0 for p in result["pools"].values())
