"""Audit benchmark: does `transferkit audit` find planted label errors and planted copies, and only those?

Command (benchmarks/results/audit_noise.json and .md came from exactly this):

    .venv/bin/python benchmarks/audit_noise.py

Label noise. $TRANSFERKIT_DATASETS/flowers (5 classes x 600 photos) is copied into a temporary folder as
train/ val/, a stratified 85/15 split (seed 0), and 5% of all images (150) are moved to a wrong class folder of
their split (class drawn uniformly among the other four). A flagged image counts as right only if it was
moved. The original flowers folder has its own mislabelled and ambiguous photos, so strict precision
undercounts; to size that, the same split *without* the planted changes is audited too, and flagged
unplanted images that the clean copy's audit also flags are reported separately. Precision/recall are given
for cleanlab's own flagged list and for the top 50/100/150/200 of the label-quality ranking.

Copies. In flowers (the split above) and in $TRANSFERKIT_DATASETS/neu_surface_defects (its own train/ val/;
steel textures that sit close together in embedding space), 20 train images per kind, disjoint from each other
and from the moved images, are copied into val/ (same class): exact (same bytes), re-encoded at JPEG quality
70, resized to 80%, centre-cropped to 90%, brightness +10% (the last three saved at JPEG quality 90).
A reported pair (exact or near, within or across splits) is right when both images are copies of one image:
a planted copy and its original, or a pair of copies the data set already holds, listed in KNOWN_COPIES (each
looked at by eye: the same photo re-encoded, recoloured or cropped). Recall: planted pairs reported; precision:
right pairs among all reported; both with 95% Wilson intervals and n. The previous rule (byte-identical, or
embedding cosine >= 0.92) is scored on the same images for comparison.
The audit runs with its defaults (EfficientNet-Lite0, 224 px; cached embeddings: copies of known bytes hit it).
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

from PIL import Image, ImageEnhance

from transferkit.audit.duplicates import NEAR_THRESHOLD, exact_duplicate_pairs, is_leakage, near_duplicate_pairs
from transferkit.audit.run import audit_folder
from transferkit.fileio import portable_paths, write_json

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("TRANSFERKIT_DATASETS") or HERE.parents[1] / "shared" / "datasets")
SEED = 0
VAL_SHARE = 0.15
NOISE_SHARE = 0.05
TOP_N = (50, 100, 150, 200)
COPY_KINDS = ("exact", "jpeg_q70", "resized_80", "crop_90", "brightness_110")
PER_KIND = 20
SETS = ("flowers", "neu_surface_defects")
# Copies the data sets already hold (file names), each pair looked at by eye: the same photo re-encoded,
# recoloured (a grey or purple version) or cropped. A reported pair of them is right, not a false alarm.
KNOWN_COPIES = {
    "flowers": [("14889392928_9742aed45b_m.jpg", "15066430311_fb57fa92b0_m.jpg"),
                ("15069459615_7e0fd61914_n.jpg", "15072973261_73e2912ef2_n.jpg"),
                ("10466290366_cc72e33532.jpg", "10994032453_ac7f8d9e2e.jpg"),
                ("1775233884_12ff5a124f.jpg", "2093263381_afd51358a3.jpg"),
                ("10993710036_2033222c91.jpg", "10993818044_4c19b86c82.jpg"),
                ("2588234269_c4bfd0d8b9_n.jpg", "2588453601_66f2a03cca_n.jpg"),
                ("12916135413_dafcf3089e_n.jpg", "12916441224_2ed63596f8_n.jpg"),
                ("4278757393_bca8415ed4_n.jpg", "4654848357_9549351e0b_n.jpg"),
                ("2333321040_3960b9d67e_n.jpg", "2344751399_71620039f2_n.jpg"),
                ("506659320_6fac46551e.jpg", "506660896_c903cca1f0.jpg"),
                ("8689302100_be76a16ccc_n.jpg", "8689302980_9bd2f7b9fe_n.jpg"),
                ("5635347336_bc1400e939_n.jpg", "5700394524_dc6f8fa9cd_n.jpg"),
                ("13279526615_a3b0059bec.jpg", "13342823005_16d3df58df_n.jpg")],
    "neu_surface_defects": [("patches_101.jpg", "patches_105.jpg")],
}


def wilson(k: int, n: int) -> list[float] | None:
    """95% Wilson score interval of k/n (by hand, the formula of scripts/render_readme.py's _wilson: statsmodels
    is not a dependency)."""
    if not n:
        return None
    z, p = 1.959964, k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


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


def move_labels(target: Path, placed: dict[str, list[tuple[str, str]]]) -> list[dict[str, str]]:
    """Move 5% of the images to a wrong class folder of their split."""
    rng = random.Random(SEED + 1)
    classes = sorted({cls for items in placed.values() for cls, _ in items})
    every = [(split, cls, name) for split, items in placed.items() for cls, name in items]
    moved = []
    for split, cls, name in rng.sample(every, round(len(every) * NOISE_SHARE)):
        wrong = rng.choice([c for c in classes if c != cls])
        os.replace(target / split / cls / name, target / split / wrong / name)
        moved.append({"path": f"{split}/{wrong}/{name}", "true": cls, "given": wrong})
    return moved


def edited(path: Path, kind: str) -> bytes:
    """The bytes of a copy of ``path`` of the given kind."""
    if kind == "exact":
        return path.read_bytes()
    with Image.open(path) as img:
        img = img.convert("RGB")
    w, h = img.size
    if kind == "resized_80":
        img = img.resize((round(w * 0.8), round(h * 0.8)), Image.Resampling.BICUBIC)
    elif kind == "crop_90":
        img = img.crop((round(w * 0.05), round(h * 0.05), round(w * 0.95), round(h * 0.95)))
    elif kind == "brightness_110":
        img = ImageEnhance.Brightness(img).enhance(1.1)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=70 if kind == "jpeg_q70" else 90)
    return buf.getvalue()


def plant_copies(target: Path, avoid: set[str]) -> list[dict[str, str]]:
    """PER_KIND train images per kind (distinct, none in ``avoid``) copied into val/ of their class."""
    rng = random.Random(SEED + 2)
    train = sorted(str(p.relative_to(target)) for p in (target / "train").rglob("*") if p.is_file())
    sources = rng.sample([t for t in train if t not in avoid], PER_KIND * len(COPY_KINDS))
    planted = []
    for k, original in enumerate(sources):
        kind = COPY_KINDS[k // PER_KIND]
        _, cls, name = original.split("/")
        copy = f"val/{cls}/{kind}_{Path(name).stem}.jpg"
        (target / copy).write_bytes(edited(target / original, kind))
        planted.append({"kind": kind, "original": original, "copy": copy})
    return planted


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
                     "precision": round(hits / len(listed), 3), "precision_ci95": wilson(hits, len(listed)),
                     "recall": round(hits / len(moved), 3),
                     "unplanted": len(extra), "unplanted_flagged_on_clean_copy": sum(p in clean_flagged for p in extra),
                     "precision_with_clean_copy_flags": round((hits + sum(p in clean_flagged for p in extra))
                                                              / len(listed), 3)})
    return {"rows": rows, "l2": result.report["label_issues"]["l2"],
            "noise_share": NOISE_SHARE,
            "out_of_fold_accuracy_vs_given": result.report["label_issues"]["out_of_fold_accuracy"]}


class _Groups:
    """Union-find over relative paths: two paths in one group are copies of one image."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, a: str) -> str:
        while self.parent.setdefault(a, a) != a:
            a = self.parent[a]
        return a

    def union(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


def _score_pairs(pairs: set[frozenset[str]], planted: list[dict[str, str]], groups: _Groups,
                 splits: dict[str, str]) -> dict[str, Any]:
    right = sum(groups.find(a) == groups.find(b) for a, b in map(sorted, pairs))
    found = {kind: sum(frozenset((p["original"], p["copy"])) in pairs for p in planted if p["kind"] == kind)
             for kind in COPY_KINDS}
    k, n = sum(found.values()), len(planted)
    return {"reported": len(pairs), "right": right, "precision": round(right / len(pairs), 4) if pairs else None,
            "precision_ci95": wilson(right, len(pairs)), "planted": n, "found": k, "recall": round(k / n, 4),
            "recall_ci95": wilson(k, n), "found_by_kind": found,
            "cross_split": sum(is_leakage(*(splits[p] for p in pair)) for pair in pairs),
            "wrong_pairs": sorted(sorted(pair) for pair in pairs if len({groups.find(p) for p in pair}) > 1)[:20]}


def copy_scores(result: Any, planted: list[dict[str, str]], known: list[tuple[str, str]]) -> dict[str, Any]:
    """Recall and precision of the reported pairs, and of the previous fixed rule on the same images."""
    report = result.report
    rel = [os.path.relpath(p, report["data"]) for p in result.paths]
    splits = dict(zip(rel, (str(s) for s in result.splits)))
    groups = _Groups()
    by_name = {}
    for path in rel:
        by_name.setdefault(os.path.basename(path), path)
    for a, b in known:
        if a in by_name and b in by_name:
            groups.union(by_name[a], by_name[b])
    for p in planted:
        groups.union(p["original"], p["copy"])
    d = report["duplicates"]
    now = {frozenset((p["a"]["path"], p["b"]["path"])) for p in d["pairs"]}
    exact, _ = exact_duplicate_pairs(result.paths.tolist())
    before = {frozenset((rel[i], rel[j])) for i, j in exact}
    before |= {frozenset((rel[i], rel[j])) for i, j, _ in near_duplicate_pairs(result.embeddings, NEAR_THRESHOLD)}
    return {"images": report["images"], "audit_seconds": report["seconds"],
            "candidate_rule": d["candidate_rule"], "median_nn_distance": d["median_nn_distance"],
            "candidate_cosine": d["candidate_cosine"], "candidates": d["candidates"],
            "rejected_at_pixel_level": d["rejected_at_pixel_level"], "confirmation": d["confirmation"],
            "exact_pairs": d["exact_pairs"], "near_pairs": d["near_pairs"],
            "now": _score_pairs(now, planted, groups, splits),
            "previous_rule": {"rule": f"byte-identical or embedding cosine >= {NEAR_THRESHOLD}",
                              **_score_pairs(before, planted, groups, splits)}}


def _ci(c: list[float] | None) -> str:
    return f"[{c[0]:.3f}, {c[1]:.3f}]" if c else ""


def markdown(r: dict[str, Any]) -> str:
    lines = ["# Audit: planted label noise (flowers) and planted copies (flowers, neu_surface_defects)\n",
             f"Command: `{r['command']}`\n",
             f"Data: {r['data']}; {r['images']} images ({r['layout']}); {r['moved']} moved to a wrong class. Audit "
             f"wall time {r['audit_seconds']} s (embeddings cached), clean-copy audit {r['clean_audit_seconds']} s.\n",
             "## Label issues (planted = moved images)\n",
             f"Out-of-fold accuracy against the given labels {r['labels']['out_of_fold_accuracy_vs_given']}; "
             f"L2 strength chosen {r['labels']['l2']:.3g} per row.\n",
             f"The clean copy's audit (no planted change) flags {r['clean_copy_flagged']} images: flowers' own "
             "mislabelled or ambiguous photos. Precision counts only moved images as right; the last column also "
             "counts unplanted images that the clean copy's audit flags too.\n",
             "| list | length | moved found | precision [95% CI] | recall | unplanted | of which flagged on the clean "
             "copy | precision counting those |",
             "|---|---|---|---|---|---|---|---|"]
    for row in r["labels"]["rows"]:
        lines.append(f"| {row['list']} | {row['length']} | {row['moved_found']} | {row['precision']:.3f} "
                     f"{_ci(row['precision_ci95'])} | {row['recall']:.3f} | {row['unplanted']} | "
                     f"{row['unplanted_flagged_on_clean_copy']} | {row['precision_with_clean_copy_flags']:.3f} |")
    lines += ["", f"## Copies ({PER_KIND} per kind: {', '.join(COPY_KINDS)}; train -> val)\n",
              "| data set | rule | pairs reported (across splits) | precision [95% CI] (right/n) | "
              "recall [95% CI] (found/n) | found per kind |", "|---|---|---|---|---|---|"]
    for name, c in r["copies"].items():
        for label, s in (("now", c["now"]), ("previous", c["previous_rule"])):
            prec = f"{s['precision']:.3f} {_ci(s['precision_ci95'])} ({s['right']}/{s['reported']})" if s["reported"] else "n/a"
            lines.append(f"| {name} | {label} | {s['reported']} ({s['cross_split']}) | {prec} | {s['recall']:.3f} "
                         f"{_ci(s['recall_ci95'])} ({s['found']}/{s['planted']}) | "
                         f"{', '.join(f'{k} {v}' for k, v in s['found_by_kind'].items())} |")
    for name, c in r["copies"].items():
        lines += ["", f"**{name}** ({c['images']} images, audit {c['audit_seconds']} s): candidates {c['candidate_rule']}: "
                  f"{c['candidates']}, of which {c['rejected_at_pixel_level']} rejected at pixel level ({c['confirmation']}). "
                  f"Pairs now reported that are not copies of one image: {len(c['now']['wrong_pairs'])}"]
        lines += [f"- `{a}` / `{b}`" for a, b in c["now"]["wrong_pairs"]]
    lines += ["", "## Outliers\n", f"{r['outliers']['count']} flagged; the first ten:"]
    lines += [f"- `{p}`" for p in r["outliers"]["first"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(HERE / "results" / "audit_noise.json"))
    args = parser.parse_args()
    for name in SETS:
        if not (ROOT / name).is_dir():
            raise SystemExit(f"{name} not found at {ROOT / name}; set TRANSFERKIT_DATASETS to the datasets folder")
    source = ROOT / "flowers"
    work = Path(tempfile.mkdtemp(prefix="tk-audit-noise-"))
    try:
        placed = split_copy(source, work / "clean")
        clean_started = time.perf_counter()
        clean = audit_folder(work / "clean", work / "clean-audit")
        clean_seconds = time.perf_counter() - clean_started
        split_copy(source, work / "flowers")
        moved_rows = move_labels(work / "flowers", placed)
        moved = {m["path"] for m in moved_rows}
        planted = {"flowers": plant_copies(work / "flowers", moved)}
        shutil.copytree(ROOT / "neu_surface_defects", work / "neu_surface_defects")
        planted["neu_surface_defects"] = plant_copies(work / "neu_surface_defects", set())
        started = time.perf_counter()
        noisy = audit_folder(work / "flowers", work / "flowers-audit", relabel_csv=work / "relabel.csv")
        seconds = time.perf_counter() - started
        neu = audit_folder(work / "neu_surface_defects", work / "neu-audit")
        # an unplanted image has the same relative path in both copies
        clean_flagged = {r["path"] for r in clean.report["label_issues"]["issues"]}
        result = {
            "command": ".venv/bin/python benchmarks/audit_noise.py", "data": str(source),
            "images": noisy.report["images"], "layout": noisy.report["layout"], "moved": len(moved),
            "audit_seconds": round(seconds, 1), "clean_audit_seconds": round(clean_seconds, 1),
            "labels": label_scores(noisy, moved, clean_flagged),
            "clean_copy_flagged": len(clean_flagged),
            "copies": {name: copy_scores(res, planted[name], KNOWN_COPIES[name])
                       for name, res in (("flowers", noisy), ("neu_surface_defects", neu))},
            "outliers": {"count": len(noisy.report["outliers"]["outliers"]),
                         "first": [o["path"] for o in noisy.report["outliers"]["outliers"][:10]]},
            "planted": {"moved": moved_rows, "copies": planted},
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
