"""Audit benchmark: does `transferkit audit` find planted label errors and cross-split copies on real photos?

Command (benchmarks/results/audit_noise.json and .md came from exactly this):

    .venv/bin/python benchmarks/audit_noise.py

Data: $TRANSFERKIT_DATASETS/flowers (5 classes x 600 photos) copied into a temporary folder as train/ val/,
a stratified 85/15 split (seed 0). Then, seeded (seed 0) and disjoint:
- label noise: 5% of all images (150) are moved to a wrong class folder of their split (class drawn
  uniformly among the other four);
- exact leakage: 10 train images are copied byte for byte into the same class of val/;
- near leakage: 10 more train images are re-encoded into val/ (resized to 90%, JPEG quality 70), to measure
  what similarity a re-encoded copy keeps (the near-duplicate threshold is chosen on that, below).
The audit runs with its defaults (EfficientNet-Lite0, 224 px; cached embeddings: copies hit the cache).

Scoring. Label issues: a flagged image counts as right only if it was planted (moved). The original flowers
folder has its own mislabelled and ambiguous photos, so strict precision undercounts; to size that, the same
split *without* the planted changes is audited too, and flagged unplanted images that the clean copy's audit
also flags are reported separately ("already in flowers"). Precision/recall are given for cleanlab's own
flagged list and for the top 50/100/150/200 of the label-quality ranking. Leakage: every planted pair must
appear as a leakage pair; other leakage pairs (duplicates flowers already holds that the split put on both
sides) are listed. Near-duplicate threshold: the similarity of each re-encoded copy to its original against
the number of pairs of distinct photos (all pairs but planted copies) at or above each candidate threshold.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from transferkit.audit.duplicates import NEAR_THRESHOLD, near_duplicate_pairs
from transferkit.audit.run import audit_folder
from transferkit.fileio import portable_paths, write_json

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("TRANSFERKIT_DATASETS") or HERE.parents[1] / "shared" / "datasets")
SEED = 0
VAL_SHARE = 0.15
NOISE_SHARE = 0.05
EXACT_COPIES = 10
NEAR_COPIES = 10
TOP_N = (50, 100, 150, 200)
THRESHOLDS = (0.90, 0.91, 0.92, 0.93, 0.95, 0.97, 0.99)


def split_copy(source: Path, target: Path) -> dict[str, list[tuple[str, str]]]:
    """Copy ``source``'s class folders into target/train and target/val (stratified); {split: [(class, name)]}."""
    rng = random.Random(SEED)
    placed: dict[str, list[tuple[str, str]]] = {"train": [], "val": []}
    for cls in sorted(p.name for p in source.iterdir() if p.is_dir()):
        names = sorted(p.name for p in (source / cls).iterdir() if p.is_file())
        rng.shuffle(names)
        n_val = round(len(names) * VAL_SHARE)
        for split, chosen in (("val", names[:n_val]), ("train", names[n_val:])):
            (target / split / cls).mkdir(parents=True, exist_ok=True)
            for name in chosen:
                shutil.copyfile(source / cls / name, target / split / cls / name)
                placed[split].append((cls, name))
    return placed


def plant(target: Path, placed: dict[str, list[tuple[str, str]]]) -> dict[str, Any]:
    """Move 5% to a wrong class, copy 10 train images into val/ and re-encode 10 more there (disjoint sets)."""
    rng = random.Random(SEED + 1)
    classes = sorted({cls for items in placed.values() for cls, _ in items})
    every = [(split, cls, name) for split, items in placed.items() for cls, name in items]
    chosen = rng.sample(every, round(len(every) * NOISE_SHARE))
    moved = []
    for split, cls, name in chosen:
        wrong = rng.choice([c for c in classes if c != cls])
        os.replace(target / split / cls / name, target / split / wrong / name)
        moved.append({"path": f"{split}/{wrong}/{name}", "true": cls, "given": wrong})
    taken = {(s, c, n) for s, c, n in chosen}
    train = [(c, n) for c, n in placed["train"] if ("train", c, n) not in taken]
    sources = rng.sample(train, EXACT_COPIES + NEAR_COPIES)
    exact, near = [], []
    for k, (cls, name) in enumerate(sources):
        original = f"train/{cls}/{name}"
        if k < EXACT_COPIES:
            copy = f"val/{cls}/copy_{name}"
            shutil.copyfile(target / original, target / copy)
            exact.append((original, copy))
        else:
            copy = f"val/{cls}/reencoded_{name}"
            with Image.open(target / original) as img:
                img = img.convert("RGB")
                img = img.resize((round(img.width * 0.9), round(img.height * 0.9)), Image.Resampling.BICUBIC)
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=70)
            (target / copy).write_bytes(buf.getvalue())
            near.append((original, copy))
    return {"moved": moved, "exact_copies": exact, "near_copies": near}


def label_scores(result: Any, moved: set[str], clean_flagged: set[str]) -> dict[str, Any]:
    """Precision/recall of cleanlab's flagged list and of the top-N of the ranking; unplanted hits split out."""
    rel = [os.path.relpath(p, result.report["data"]) for p in result.paths]
    flagged = [r["path"] for r in result.report["label_issues"]["issues"]]
    ranking = [rel[i] for i in result.label_issues.ranking()]
    rows = []
    for name, listed in [(f"top {n}", ranking[:n]) for n in TOP_N] + [("cleanlab flagged", flagged)]:
        hits = sum(p in moved for p in listed)
        extra = [p for p in listed if p not in moved]
        rows.append({"list": name, "length": len(listed), "moved_found": hits,
                     "precision": round(hits / len(listed), 3), "recall": round(hits / len(moved), 3),
                     "unplanted": len(extra), "unplanted_flagged_on_clean_copy": sum(p in clean_flagged for p in extra),
                     "precision_with_clean_copy_flags": round((hits + sum(p in clean_flagged for p in extra))
                                                              / len(listed), 3)})
    return {"rows": rows, "l2": result.report["label_issues"]["l2"],
            "out_of_fold_accuracy_vs_given": result.report["label_issues"]["out_of_fold_accuracy"]}


def leakage_scores(report: dict[str, Any], planted: dict[str, Any]) -> dict[str, Any]:
    pairs = {frozenset((p["a"]["path"], p["b"]["path"])): p for p in report["duplicates"]["pairs"]}
    found = {kind: [bool(pairs.get(frozenset(pair), {}).get("leakage")) for pair in planted[key]]
             for kind, key in (("exact", "exact_copies"), ("near", "near_copies"))}
    planted_pairs = {frozenset(p) for key in ("exact_copies", "near_copies") for p in planted[key]}
    other = [{"a": p["a"]["path"], "b": p["b"]["path"], "kind": p["kind"], "similarity": p["similarity"]}
             for key, p in pairs.items() if p["leakage"] and key not in planted_pairs]
    return {"exact_planted": len(found["exact"]), "exact_reported_as_leakage": sum(found["exact"]),
            "near_planted": len(found["near"]), "near_reported_as_leakage": sum(found["near"]),
            "other_leakage_pairs": other, "exact_pairs": report["duplicates"]["exact_pairs"],
            "near_pairs": report["duplicates"]["near_pairs"]}


def threshold_table(result: Any, planted: dict[str, Any]) -> dict[str, Any]:
    """Similarity of each re-encoded copy to its original, and pairs of distinct photos above each threshold."""
    index = {os.path.relpath(p, result.report["data"]): i for i, p in enumerate(result.paths)}
    x = result.embeddings / np.linalg.norm(result.embeddings, axis=1, keepdims=True)
    near_sims = sorted(float(x[index[a]] @ x[index[b]]) for a, b in planted["near_copies"])
    planted_pairs = {frozenset((index[a], index[b])) for key in ("exact_copies", "near_copies") for a, b in planted[key]}
    distinct = [s for i, j, s in near_duplicate_pairs(x, min(THRESHOLDS)) if frozenset((i, j)) not in planted_pairs]
    return {"reencoded_copy_similarity": {"min": round(near_sims[0], 4), "median": round(float(np.median(near_sims)), 4),
                                          "all": [round(s, 4) for s in near_sims]},
            "rows": [{"threshold": t, "reencoded_copies_found": sum(s >= t for s in near_sims),
                      "other_pairs": sum(s >= t for s in distinct)} for t in THRESHOLDS],
            "total_pairs": len(x) * (len(x) - 1) // 2}


def markdown(r: dict[str, Any]) -> str:
    lines = ["# Audit on flowers with planted label noise and leakage\n", f"Command: `{r['command']}`\n",
             f"Data: {r['data']}; {r['images']} images ({r['layout']}); {r['moved']} moved to a wrong class, "
             f"{r['leakage']['exact_planted']} exact and {r['leakage']['near_planted']} re-encoded train images "
             f"copied into val/. Audit wall time {r['audit_seconds']} s (embeddings cached), clean-copy audit "
             f"{r['clean_audit_seconds']} s.\n",
             "## Label issues (planted = moved images)\n",
             f"Out-of-fold accuracy against the given labels {r['labels']['out_of_fold_accuracy_vs_given']}; "
             f"L2 strength chosen {r['labels']['l2']:.3g} per row.\n",
             f"The clean copy's audit (no planted change) flags {r['clean_copy_flagged']} images: flowers' own "
             "mislabelled or ambiguous photos. Precision counts only moved images as right; the last column also "
             "counts unplanted images that the clean copy's audit flags too.\n",
             "| list | length | moved found | precision | recall | unplanted | of which flagged on the clean copy "
             "| precision counting those |",
             "|---|---|---|---|---|---|---|---|"]
    for row in r["labels"]["rows"]:
        lines.append(f"| {row['list']} | {row['length']} | {row['moved_found']} | {row['precision']:.3f} | "
                     f"{row['recall']:.3f} | {row['unplanted']} | {row['unplanted_flagged_on_clean_copy']} | "
                     f"{row['precision_with_clean_copy_flags']:.3f} |")
    lk = r["leakage"]
    lines += ["", "## Leakage\n",
              f"Planted exact copies reported as leakage: {lk['exact_reported_as_leakage']}/{lk['exact_planted']}; "
              f"re-encoded copies: {lk['near_reported_as_leakage']}/{lk['near_planted']}. Other leakage pairs "
              f"(copies flowers already holds, split across train/val): {len(lk['other_leakage_pairs'])}. "
              f"All duplicate pairs: {lk['exact_pairs']} exact, {lk['near_pairs']} near.\n"]
    for p in lk["other_leakage_pairs"]:
        lines.append(f"- {p['kind']} {p['similarity']}: `{p['a']}` / `{p['b']}`")
    th = r["threshold"]
    lines += ["", f"## Near-duplicate threshold (default {r['near_threshold']})\n",
              f"Re-encoded copy vs its original: similarity min {th['reencoded_copy_similarity']['min']}, median "
              f"{th['reencoded_copy_similarity']['median']}. Other pairs: pairs of different files among "
              f"{th['total_pairs']:,} (the copies flowers already holds included).\n",
              "| threshold | re-encoded copies found | other pairs at or above |", "|---|---|---|"]
    lines += [f"| {row['threshold']} | {row['reencoded_copies_found']}/{len(r['planted']['near_copies'])} | "
              f"{row['other_pairs']} |" for row in th["rows"]]
    lines += ["", "## Outliers\n", f"{r['outliers']['count']} flagged; the first ten:"]
    lines += [f"- `{p}`" for p in r["outliers"]["first"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(HERE / "results" / "audit_noise.json"))
    args = parser.parse_args()
    source = ROOT / "flowers"
    if not source.is_dir():
        raise SystemExit(f"flowers not found at {source}; set TRANSFERKIT_DATASETS to the datasets folder")
    work = Path(tempfile.mkdtemp(prefix="tk-audit-noise-"))
    try:
        placed = split_copy(source, work / "clean")
        clean_started = time.perf_counter()
        clean = audit_folder(work / "clean", work / "clean-audit")
        clean_seconds = time.perf_counter() - clean_started
        split_copy(source, work / "noisy")
        planted = plant(work / "noisy", placed)
        started = time.perf_counter()
        noisy = audit_folder(work / "noisy", work / "noisy-audit", relabel_csv=work / "relabel.csv")
        seconds = time.perf_counter() - started
        moved = {m["path"] for m in planted["moved"]}
        # an unplanted image has the same relative path in both copies
        clean_flagged = {r["path"] for r in clean.report["label_issues"]["issues"]}
        result = {
            "command": ".venv/bin/python benchmarks/audit_noise.py", "data": str(source),
            "images": noisy.report["images"], "layout": noisy.report["layout"], "moved": len(moved),
            "near_threshold": NEAR_THRESHOLD, "audit_seconds": round(seconds, 1),
            "clean_audit_seconds": round(clean_seconds, 1),
            "labels": label_scores(noisy, moved, clean_flagged),
            "clean_copy_flagged": len(clean_flagged),
            "leakage": leakage_scores(noisy.report, planted),
            "threshold": threshold_table(noisy, planted),
            "outliers": {"count": len(noisy.report["outliers"]["outliers"]),
                         "first": [o["path"] for o in noisy.report["outliers"]["outliers"][:10]]},
            "planted": planted,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from provenance import provenance  # benchmarks/provenance.py (the script's folder is on sys.path)

    result["provenance"] = provenance(__file__)
    result = portable_paths(result, {"$TRANSFERKIT_DATASETS": ROOT, "": HERE.parent, "$WORK": work})
    write_json(Path(args.out), result)
    Path(args.out).with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


if __name__ == "__main__":
    main()
