"""`transferkit audit` on real photos (hymenoptera, 398 images at 128 px: about 10 s on 2 cores): the one
non-photo in the set, the archive's `imageNotFound.gif` placeholder, is the first outlier; the folder has no
copies; and the shared dataset is read, never written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from transferkit.audit.run import audit_folder

from conftest import require_dataset


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_hymenoptera_placeholder_gif_is_the_first_outlier_and_nothing_is_written(tmp_path: Path):
    data = require_dataset("hymenoptera")
    before = _digests(data)
    result = audit_folder(data, tmp_path / "audit", input_size=128)
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert report == json.loads(json.dumps(result.report))
    assert report["layout"] == "split" and report["images"] == 398
    assert report["outliers"]["outliers"][0]["path"] == "train/ants/imageNotFound.gif"
    assert report["duplicates"]["exact_pairs"] == 0 and report["duplicates"]["leakage_pairs"] == 0
    assert report["balance"]["counts"]["train"] == {"ants": 124, "bees": 121} and not report["balance"]["imbalanced"]
    assert report["label_issues"]["out_of_fold_accuracy"] > 0.85
    assert _digests(data) == before
