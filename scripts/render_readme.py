"""Render the README's measured figures from benchmarks/results/*.json, so no figure is typed by hand.

    .venv/bin/python scripts/render_readme.py           # rewrite the marked blocks of README.md
    .venv/bin/python scripts/render_readme.py --check   # exit 1 when README.md differs (tests/e2e/test_readme_results.py)

Each block sits between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` and is produced by the
function of that name below from the result files alone; a block whose file is missing says so.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
README = REPO / "README.md"
BLOCK = re.compile(r"(<!-- results:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)


def _load(name: str) -> Any:
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


# block -> (its result files, the script that writes them); tests/e2e/test_readme_results.py checks that every
# figure shown comes from a file that records that script, with the digest of the script as it is now
# (benchmarks/provenance.py)
SOURCES: dict[str, tuple[tuple[str, ...], str]] = {}


def provenance_records(data: Any, where: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every ``provenance`` record in ``data`` (a result file or one data set's section), with where it sits."""
    found = []
    if isinstance(data, dict):
        for key, value in data.items():
            if key == "provenance" and isinstance(value, dict):
                found.append((where or "top level", value))
            else:
                found += provenance_records(value, f"{where}.{key}" if where else str(key))
    return found


def stale(data: Any, script: str) -> list[str]:
    """Why ``data`` cannot be shown as a current measurement: it records no provenance, another script, or
    ``script`` as it was before an edit (so its figures may come from code or statistics since replaced)."""
    records = provenance_records(data)
    if not records:
        return ["records no provenance (measured before result files named their script, and before the current "
                "intervals and verdicts)"]
    digest = hashlib.sha256((REPO / script).read_bytes()).hexdigest()
    problems = []
    for where, record in records:
        if record.get("script") != script:
            problems.append(f"[{where}] was written by {record.get('script')!r}, not {script}")
        elif record.get("script_sha256") != digest:
            problems.append(f"[{where}] was written by an earlier version of {script}")
        elif script not in record.get("command", "") or not record.get("versions", {}).get("torch"):
            problems.append(f"[{where}] records no command or library versions")
    return problems


def withdrawn(reasons: list[str], script: str) -> str:
    return (f"(Withdrawn until re-measured: {'; '.join(reasons)}. Its figures are not shown here; "
            f"`python {script}` measures them again.)\n")


def _from(name: str | tuple[str, ...], script: str, by_section: bool = False) -> Callable[[Callable[..., str]], Callable[[], str]]:
    """A renderer of the result file(s) ``name``; while one is missing the block says which script measures it,
    and while one is :func:`stale` the block is withdrawn instead of showing its figures (``by_section``: the
    renderer withdraws the stale files or data sets itself, row by row, and shows the current ones)."""
    names = (name,) if isinstance(name, str) else tuple(name)

    def wrap(render: Callable[..., str]) -> Callable[[], str]:
        SOURCES[render.__name__.replace("_", "-")] = (names, script)

        @functools.wraps(render)
        def block() -> str:
            missing = [n for n in names if not (RESULTS / n).exists()]
            if missing:
                return f"(not yet measured: run `python {script}`)\n"
            files = [_load(n) for n in names]
            if not by_section:
                reasons = [f"benchmarks/results/{n} {r}" for n, d in zip(names, files) for r in stale(d, script)]
                if reasons:
                    return withdrawn(reasons, script)
            return render(*files)
        return block
    return wrap


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.3f} ± {std:.3f}" if std else f"{mean:.3f} ± 0"


@_from("accuracy.json", "benchmarks/accuracy.py", by_section=True)
def accuracy(d: Any) -> str:
    """Test accuracy (95% interval over images) and the paired verdict, feature extraction vs fine-tuning."""
    lines = ["| data (n test, seeds, epochs) | feature extraction | fine-tuning |", "|---|---|---|"]
    for name, row in d.items():
        if name == "provenance":
            continue
        if stale(row, "benchmarks/accuracy.py"):
            lines.append(f"| {name}: withdrawn until `python benchmarks/accuracy.py --datasets {name}` re-measures it "
                         "(" + "; ".join(stale(row, "benchmarks/accuracy.py")) + ") | – | – |")
            continue
        v = row["verdicts"]
        cells = [_verdict_cell(v, s) for s in ("feature-extraction", "finetune")]
        lines.append(f"| {name} ({v['n_images']}, {v['n_seeds']}, {row['settings']['epochs']}) | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


COMPARE = [("hymenoptera", "compare_hymenoptera.json"), ("flowers", "compare_flowers.json"),
           ("NEU steel defects, train/ split 70/15/15", "compare_neu_surface_defects_resplit.json")]
STRATEGIES = ("scratch", "feature-extraction", "finetune", "lp-ft", "gradual")
VERDICT_MARK = {"best": "**best**", "no clear difference": "≈ best", "worse": "worse", "better": "better"}


def _verdict_cell(verdicts: dict[str, Any], name: str) -> str:
    row = verdicts["strategies"].get(name)
    if row is None:
        return "—"
    lo, hi = row["ci95"]
    mark = "best" if name == verdicts["best"] else row.get("verdict", "n/a")
    seeds, distinct = row.get("n_seeds", verdicts.get("n_seeds", 1)), row.get("distinct_models")
    models = " (1 distinct model)" if distinct == 1 and seeds > 1 else ""
    return f"{row['mean']:.3f} [{lo:.3f}, {hi:.3f}] {VERDICT_MARK.get(mark, mark)}{models}"


@_from(tuple(file for _, file in COMPARE), "benchmarks/compare_strategies.py", by_section=True)
def compare(*files: Any) -> str:
    """Test accuracy, mean over seeds with its 95% interval, and the paired verdict to the best row."""
    lines = ["| data (n test, seeds) | " + " | ".join(STRATEGIES) + " |", "|---" * (len(STRATEGIES) + 1) + "|"]
    for (label, name), d in zip(COMPARE, files):
        reasons = stale(d, "benchmarks/compare_strategies.py")
        if reasons:
            lines.append(f"| {label}: withdrawn until re-measured (benchmarks/results/{name} {'; '.join(reasons)}; "
                         f"its command is in benchmarks/results/{name.replace('.json', '.md')}) |" + " – |" * len(STRATEGIES))
            continue
        verdicts = d.get("verdicts")
        if not verdicts or verdicts.get("split") != "test":
            lines.append(f"| {label}: not yet re-measured under the train/selection/test protocol |" + " |" * len(STRATEGIES))
            continue
        cells = [_verdict_cell(verdicts, s) for s in STRATEGIES]
        lines.append(f"| {label} ({verdicts['n_images']}, {verdicts['n_seeds']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@_from("adapt_mnistm.json", "benchmarks/adapt_mnistm.py")
def adapt(d: Any) -> str:
    parts = []
    for name, row in d["rows"].items():
        t, v = row["target_test"], row["vs_baseline"]
        text = f"{name} {t['mean']:.3f} [{t['ci95'][0]:.3f}, {t['ci95'][1]:.3f}]"
        if v:
            text += f" ({v['difference']:+.3f} [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}] vs {v['baseline']}: {v['verdict']})"
        parts.append(text)
    t = next(iter(d["rows"].values()))["target_test"]
    return ("Domain adaptation MNIST -> MNIST-M (`benchmarks/results/adapt_mnistm.md`; MNIST-M test accuracy, "
            f"n={t['n_images']} images x {t['n_seeds']} seeds, mean with its 95% interval over images (Clopper-Pearson on "
            "per-image scores averaged over seeds); each verdict an exact paired test against the method's own "
            "baseline, Holm-adjusted over the comparisons; "
            f"settings fixed beforehand or tuned on a {d['data']['target_dev']['n']}-image MNIST-M dev split; "
            f"test scored once): {'; '.join(parts)}.\n")


@_from("speed.json", "benchmarks/speed.py")
def speed(d: Any) -> str:
    runs = d["training"]["runs"]
    base, cold, warm = runs["uncached"], runs["cached_cold"], runs["cached_warm"]

    def acc(run: dict[str, Any]) -> str:
        lo, hi = run["ci95"]
        return f"{run['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]"

    text = (f"Feature extraction with the embedding cache (`benchmarks/results/speed.json`, flowers, "
            f"{base['n_train']} train / {base['n_selection']} selection / {base['n_test']} test images, 10 epochs of the "
            f"same SGD head, machine shared: load average {base['load_avg']}-{warm['load_avg']}): training time "
            f"{base['time_s'] / cold['time_s']:.1f}x shorter than recomputing the frozen backbone every epoch including "
            f"the cache-filling pass, {base['time_s'] / warm['time_s']:.1f}x with a warm cache ({base['time_s']:.0f} s vs "
            f"{cold['time_s']:.1f} s and {warm['time_s']:.1f} s); test accuracy {acc(cold)} vs {acc(base)} (n={base['n_test']})")
    probe = runs.get("cached_warm_probe")
    if probe:
        text += (f"; the default head (the converged probe, warm cache) {probe['time_s']:.1f} s, test accuracy {acc(probe)}")
    return text + ".\n"


@_from("linear_probe.json", "benchmarks/linear_probe.py")
def linear_probe(result: Any) -> str:
    """Report-split accuracy of the three heads per data set, and the probe's paired differences (head_statistics in
    benchmarks/linear_probe.py: {"new-old" | "new-sklearn": {metric: {"difference", "ci95": [lo, hi], "p_holm",
    "verdict", ...}}})."""

    def iv(pair: Any, sign: str = "") -> str:
        return "[no interval]" if pair is None else f"[{pair[0]:{sign}.3f}, {pair[1]:{sign}.3f}]"

    lines = ["| data (n reported) | converged probe | old head (10 AdamW epochs) | scikit-learn C=1 | "
             "probe - old, verdict (Holm p) | probe - scikit-learn, verdict (Holm p) |", "|---|---|---|---|---|---|"]
    for name, row in result["datasets"].items():
        heads = row["heads"]
        n = sum(row["report_class_counts"])

        def cell(head: str) -> str:
            h = heads[head]
            return f"{h['accuracy']:.3f} {iv(h['ci95']['accuracy'])}"

        def diff(key: str) -> str:
            t = row["differences"][key]["accuracy"]
            return f"{t['difference']:+.3f} {iv(t['ci95'], '+')} {t['verdict']} (p {t['p_holm']:.2g})"

        fit = heads["new"]["head_fit"]
        probe = (f"{cell('new')} (l2 {fit['l2']:.0e}, {'cross-validated' if fit.get('folds') else 'on the selection split'}; "
                 f"fitted on {'the fit split' if fit['refit_on'] == 'train' else fit['refit_on'].replace('train', 'fit')})")
        lines.append(f"| {name} ({n}) | {probe} | {cell('old')} | {cell('sklearn')} | {diff('new-old')} | {diff('new-sklearn')} |")
    text = "\n".join(lines) + "\n"
    text += ("\nAccuracy on the report split (nothing was chosen on it) with Clopper-Pearson 95% intervals; differences "
             "paired over the same images with a bootstrap interval for display, the verdict from McNemar's exact test, "
             "Holm-adjusted over the two comparisons of each data set. The old head and scikit-learn are fitted on the fit "
             "split; the probe chooses its L2 strength by held-out log loss (5-fold cross-validation over fit + selection "
             "when the selection split has under 300 images) and, where nothing chooses on the selection split after it, "
             "is refitted on fit + selection (it then trained on more images than the other two heads). "
             f"Command: `{result['command']}`.\n")
    if "lpft" in result:
        lp = result["lpft"]
        parts = [f"{label} {s['accuracy']['mean']:.3f} {iv(s['accuracy']['ci95'])}" for label, s in lp["summary"].items()]
        v = lp["after_vs_before"]["accuracy"]
        text += (f"\nLP-FT on hymenoptera ({lp['n_test']} report images, {lp['seeds']} seeds, mean accuracy over seeds): "
                 f"{'; '.join(parts)}; after - before {v['difference']:+.3f} {iv(v['ci95'], '+')}, {v['verdict']}.\n")
    return text


@_from("recommend.json", "benchmarks/recommend_probe.py")
def recommend(d: Any) -> str:
    labels = {"hymenoptera": "hymenoptera", "flowers": "flowers", "neu_surface_defects": "NEU steel defects",
              "mnist_to_mnistm/mnist/train": "MNIST", "mnist_to_mnistm/mnistm/train": "MNIST-M"}
    from transferkit.metrics.intervals import proportion_interval

    lines = ["| data | BatchNorm shift | probe accuracy, k-fold [95% CI] (n) | recommended |", "|---|---|---|---|"]
    for name, rec in d.items():
        if name == "provenance":
            continue
        m = rec["measurements"]
        n = m["probe_images"]
        lo, hi = proportion_interval(round(m["probe_accuracy"] * n), n)  # out-of-fold: each image scored once
        lines.append(f"| {labels.get(name, name)} | {m['bn_shift']:.3f} | {m['probe_accuracy']:.2f} [{float(lo):.2f}, "
                     f"{float(hi):.2f}] ({n}) | {rec['strategy']} |")
    return "\n".join(lines) + ("\n\nThe probe accuracy is out of fold on the recommender's few probe images "
                                "(Clopper-Pearson interval over them): a rough separability reading, not a test figure.\n")


@_from("demo.json", "benchmarks/demo_record.py")
def demo(d: Any) -> str:
    """The quick-start sentence: what `make demo` measured (benchmarks/demo_record.py -> demo.json)."""
    rows = d["rows"]
    wall = round(d["process_wall_time_s"])
    parts = []
    for r in rows:
        lo, hi = r["ci95"]["accuracy"]
        parts.append(f"{r['strategy']} {r['metrics']['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]")
    verdicts = d["verdicts"]
    judged = [f"{name} {row['verdict']}" for name, row in verdicts["strategies"].items() if "verdict" in row]
    differs = ", ".join(d["differing_settings"]) or "nothing"
    return (f"`make demo` writes scikit-learn's 1,797 real handwritten-digit scans as an image folder, splits it "
            f"70/15/15 (train / selection / test), trains EfficientNet-Lite0 with feature extraction, plain fine-tuning "
            f"and LP-FT on the same budget ({rows[0]['settings']['epochs']} epochs each), and prints the comparison with "
            f"intervals and paired verdicts ({wall // 60} min {wall % 60} s on 2 CPU cores once `.venv` exists, cold "
            f"cache, 1-min load average {d['load_avg_1min_before']} before the start; test accuracy on "
            f"{rows[0]['n_test']} scans: {'; '.join(parts)}; against the best ({verdicts['best']}): "
            f"{', '.join(judged)}; besides the strategy the rows differ in: {differs}; "
            f"`benchmarks/results/demo.md`, from `python benchmarks/demo_record.py`).\n")


IMBALANCE_MARK = {"better": "better", "worse": "worse", "no clear difference": "≈"}


@_from("imbalance.json", "benchmarks/imbalance.py")
def imbalance(d: Any) -> str:
    """Balanced accuracy per balancing method on the imbalanced subsets, with the paired verdict to no balancing."""
    rows = list(next(iter(next(iter(d["datasets"].values())).values()))["rows"])
    lines = ["| data, strategy (n test, seeds) | " + " | ".join(rows) + " |", "|---|" + "---|" * len(rows)]
    for name, per_strategy in d["datasets"].items():
        for strategy, res in per_strategy.items():
            cells = []
            for row in rows:
                e = res["rows"].get(row)
                if e is None:
                    cells.append("—")
                    continue
                iv = e["balanced_accuracy"]
                text = f"{iv['mean']:.3f} [{iv['ci95'][0]:.3f}, {iv['ci95'][1]:.3f}]"
                vs = e.get("balanced_accuracy_vs_none")
                cells.append(text + ("" if vs is None else f" {IMBALANCE_MARK[vs['verdict']]}"))
            lines.append(f"| {name}, {strategy} ({res['n_test']}, {res['seeds']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nBalanced accuracy on the test split, mean over seeds [95% CI]; the word after each figure is " \
        f"its paired verdict against \"none\" (same seeds, same test images; exact sign-flip test, Holm over the row's " \
        f"comparisons with none, every seed agreeing; ≈: no clear difference). Command: `{d['command']}` " \
        "(`benchmarks/results/imbalance.md` has macro-F1, rare-class recall and the chosen tau).\n"


@_from("cpu_inference.json", "benchmarks/cpu_inference.py")
def cpu_inference(d: Any) -> str:
    """End-to-end and compute-only images/s of PyTorch and ONNX Runtime on the same images, with the ratios."""
    e2e, comp = d["end_to_end"], d["compute_only"]
    lines = ["| end to end, whole process | images | seconds (median) | images/s |", "|---|---|---|---|"]
    lines += [f"| {name} | {row['images']} | {row['seconds']:.1f} | {row['images_per_s']:.1f} |" for name, row in e2e["rows"].items()]
    lines += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v:.2f}x |" for k, v in e2e["ratios"].items()]
    if "large_folder" in d:
        big = d["large_folder"]
        lines += ["", f"All of flowers ({big['images']} images, one pass each, embeddings cold): plain loop "
                  f"{big['plain_images_per_s']:.1f} images/s, `embed --engine onnx` {big['embed_images_per_s']:.1f} images/s: "
                  f"**{big['ratio']:.2f}x**."]
    lines += ["", f"| compute only ({comp['n']} decoded images, batch 32) | images/s |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in comp["images_per_s"].items()]
    q = comp["int8_quality"]
    return "\n".join(lines) + (
        f"\n\nint8 on the hymenoptera test split (n={q['n']}): accuracy {q['accuracy_int8']:.3f} vs fp32 "
        f"{q['accuracy_fp32']:.3f}. {d['repeats']} interleaved repeats, {d['cores']} cores, load average "
        f"{d['load_before']:.2f} before / {d['load_after']:.2f} after. Command: `{d['command']}`.\n")


@_from("serve_load.json", "benchmarks/serve_load.py")
def serve_load(d: Any) -> str:
    """The loopback load test of `transferkit serve`: good traffic (throughput, latency, errors, memory), then the
    hostile mix of issue 25 at concurrency 256 and its bar."""
    lat, mem, bat = d["latency_ms_good"], d["memory_mb"], d["batching"]
    bad = sum(v["sent"] for v in d["bad_by_kind"].values()) if isinstance(d["bad_by_kind"], dict) else d["bad_requests"]
    lines = ["| figure | value |", "|---|---|",
             f"| requests (good / bad), concurrency | {d['requests']} ({d['good_requests']} / {d['bad_requests']}), "
             f"{d['settings'].get('concurrency', '?')} |",
             f"| throughput | {d['throughput_images_per_s']:.1f} images/s |",
             f"| latency of good requests | p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms |",
             f"| server errors (5xx) / connection failures | {d['server_errors_5xx']} / {_count(d['connection_failures'])} |",
             f"| bad requests answered with their 4xx | {'all' if d['checks'].get('every_bad_request_its_4xx') else 'NOT all'} of {bad} |",
             f"| server memory (RSS) start -> end | {mem['start']:.0f} -> {mem['end']:.0f} MB |",
             f"| ONNX Runtime calls / images | {bat['batches']} / {bat['images']} (mean batch {bat['mean_batch']:.1f}) |"]
    m = d["machine"]
    text = "\n".join(lines) + (f"\n\n{m['cores']} cores, load average {m['load_before']:.2f} before / {m['load_after']:.2f} after "
                               f"(the client ran on the same cores). Command: `{d['command']}`.\n")
    h = d.get("hostile")
    if not h:
        return text + "\nHostile mix: not measured in this file.\n"
    hl, hm, health, base = h["latency_ms_good"] or {}, h["memory_mb"], h["health"], d["memory_baseline_mb"]
    yes = lambda ok: "yes" if ok else "**NO**"  # noqa: E731
    checks = h["checks"]
    rows = ["| hostile mix | value |", "|---|---|",
            f"| requests (good / bad), concurrency, attempts | {h['requests']} ({h['good_requests']} / {h['bad_requests']}), "
            f"{h['settings']['concurrency']}, {h['attempts']} (503 answers retried after Retry-After) |",
            f"| throughput | {h['throughput_images_per_s']:.1f} images/s ({h['images_predicted']} images in {h['wall_s']:.0f} s) |",
            f"| latency of good requests (answered attempt) | p50 {hl.get('p50', 0):.0f} ms, p99 {hl.get('p99', 0):.0f} ms |",
            f"| good requests answered 200 / finally told 503 | {h['good_answered_200']} / {h['good_told_503']} |",
            f"| 4xx answers / 503 answers | {h['count_4xx']} / {h['count_503']} |",
            f"| 500s / dropped connections | {h['count_500']} / {h['dropped_connections']} |",
            f"| /v1/health every {health['every_s']:g} s: max latency, probes not 200 | {health['max_latency_s']:.3f} s "
            f"of {health['probes']} probes, {health['not_200']} |",
            f"| peak RSS vs bar | {hm['peak']:.0f} MB vs {hm['bar']:.0f} MB = 2 x (idle {hm['idle']:.0f} + one full batch "
            f"{hm['full_batch']:.0f}) |",
            "", "| bar (issue 25) | met |", "|---|---|",
            f"| 0 responses 500 | {yes(checks['no_500'])} |",
            f"| 0 dropped connections | {yes(checks['no_dropped_connections'])} |",
            f"| peak RSS under 2 x (idle + one full batch) | {yes(checks['peak_rss_under_bar'])} |",
            f"| /v1/health answered within 1 s throughout | {yes(checks['health_within_1s_throughout'])} |",
            f"| every good request answered 200 or told 503 | {yes(checks['every_good_request_200_or_503'])} |",
            f"| every bad request its 4xx (or 503), with a JSON error | "
            f"{yes(checks['every_bad_request_its_4xx_or_503'] and checks['every_refusal_has_a_json_error'])} |"]
    load = h["load_average_1min"]
    return text + "\n" + "\n".join(rows) + (
        f"\n\nThe hostile mix: {', '.join(k.replace('_', ' ') for k in h['by_kind'])}; bodies from 1 KB to the upload "
        f"limit; the bombs are all-zero 9400 x 9400 PNGs ({h['settings']['png16_bomb_bytes'] // 1024} KB 16-bit grey, "
        f"{h['settings']['rgba_bomb_bytes'] // 1024} KB RGBA). One full batch is the RSS growth from the idle server to "
        f"its peak while it answers its first request of {base['full_batch_images']} photos (the batch's images and "
        f"ONNX Runtime's arena for it). A shared, loaded machine: load average {load['before']:.2f} before / "
        f"{load['after']:.2f} after the hostile phase; in its {h['cpu_s']['wall']:.0f} s the server used "
        f"{h['cpu_s']['server']:.0f} CPU seconds, the client {h['cpu_s']['client']:.0f} "
        "(`benchmarks/results/serve_load.md` has every kind's answers).\n")

def _count(value: Any) -> int:
    return len(value) if isinstance(value, (list, dict)) else int(value)


def _wilson(k: int, n: int) -> str:
    """k/n with its 95% Wilson score interval."""
    if not n:
        return "n/a"
    z, p = 1.959964, k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / (1 + z * z / n)
    return f"{p:.3f} [{max(0.0, centre - half):.3f}, {min(1.0, centre + half):.3f}]"


@_from("audit_noise.json", "benchmarks/audit_noise.py")
def audit(d: Any) -> str:
    """Precision and recall of the audit's label-issue list on flowers with planted noise, and of the copies it
    reports in flowers and neu_surface_defects (planted copies of five kinds), against the previous fixed rule."""
    moved = d["moved"]
    lines = [f"| list | length | moved found | precision [95% CI] | recall of the {moved} moved [95% CI] |", "|---|---|---|---|---|"]
    for row in d["labels"]["rows"]:
        lines.append(f"| {row['list']} | {row['length']} | {row['moved_found']} | {_wilson(row['moved_found'], row['length'])} | "
                     f"{_wilson(row['moved_found'], moved)} |")
    lines += ["", "| data set | rule | pairs reported (across splits) | precision [95% CI] (right / n) | "
              "recall of planted copies [95% CI] (found / n) | candidates rejected at pixel level |", "|---|---|---|---|---|---|"]
    for name, c in d["copies"].items():
        for label, s, rejected in (("pixel-confirmed", c["now"], f"{c['rejected_at_pixel_level']} of {c['candidates']}"),
                                   ("previous: " + c["previous_rule"]["rule"], c["previous_rule"], "-")):
            lines.append(f"| {name} | {label} | {s['reported']} ({s['cross_split']}) | {_wilson(s['right'], s['reported'])} "
                         f"({s['right']} / {s['reported']}) | {_wilson(s['found'], s['planted'])} ({s['found']} / {s['planted']}) "
                         f"| {rejected} |")
    kinds = ", ".join(next(iter(d["copies"].values()))["now"]["found_by_kind"])
    return "\n".join(lines) + (
        f"\n\nCopies planted train -> val, {kinds} (equal numbers of each). A reported pair is right when both images "
        "are copies of one image (planted, or a copy the data set already holds, each looked at by eye and listed in "
        "the script). Intervals: Wilson score. "
        f"Command: `{d['command']}` (`benchmarks/results/audit_noise.md` counts flowers' own mislabelled photos too, "
        "and lists found per kind).\n")


@_from("calibration_tta.json", "benchmarks/calibration_tta.py")
def calibration_tta(d: Any) -> str:
    """Temperature scaling (test ECE/NLL before and after) and test-time augmentation (paired accuracy difference)."""
    lines = ["| run (n selection / n test) | temperature | test ECE before -> after | test NLL before -> after |", "|---|---|---|---|"]
    for name, c in d["calibration"].items():
        t = c["test"]
        if c["method"] != "temperature":
            why = (c.get("reason") or "").split(";")[0] or f"{c['n_selection']} < 100 selection images"
            lines.append(f"| {name} ({c['n_selection']} / {c['n_test']}) | not fitted ({why}) | "
                         f"{t['ece_before']:.3f} | {t['nll_before']:.3f} |")
            continue
        lines.append(f"| {name} ({c['n_selection']} / {c['n_test']}) | {c['temperature']:.3f} | {t['ece_before']:.3f} -> "
                     f"{t['ece_after']:.3f} | {t['nll_before']:.3f} -> {t['nll_after']:.3f} |")
    lines += ["", "| run (n test) | accuracy, no TTA [95% CI] | flip - none [95% CI] | flip-crops - none [95% CI] | time, flip-crops / none |",
              "|---|---|---|---|---|"]
    for name, r in d["tta"].items():
        none = r["modes"]["none"]
        cells = []
        for pair in ("flip - none", "flip-crops - none"):
            a = r["paired"][pair]["accuracy"]
            cells.append(f"{a['difference']:+.3f} [{a['ci95'][0]:+.3f}, {a['ci95'][1]:+.3f}] {IMBALANCE_MARK.get(a['verdict'], a['verdict'])}")
        ratio = r["modes"]["flip-crops"]["wall_s"] / none["wall_s"]
        lines.append(f"| {name} ({r['n_test']}) | {none['accuracy']:.3f} [{none['accuracy_ci95'][0]:.3f}, {none['accuracy_ci95'][1]:.3f}] | "
                     f"{cells[0]} | {cells[1]} | {ratio:.1f}x |")
    return "\n".join(lines) + (
        "\n\nOne run each (seed 0), on each run's own test split; ECE with 15 bins; accuracy differences are paired over the "
        "same test images, judged by McNemar's exact test Holm-adjusted over the table's comparisons (≈: no clear "
        "difference). Load average "
        f"{d['load_avg_1min_before']:.2f} before / {d['load_avg_1min_after']:.2f} after. Command: `{d['command']}` "
        "(`benchmarks/results/calibration_tta.md` has balanced accuracy, NLL and ECE per TTA mode).\n")


RENDERERS: dict[str, Callable[[], str]] = {f.__name__.replace("_", "-"): f for f in
                                           (accuracy, compare, adapt, speed, linear_probe, recommend, demo,
                                            imbalance, cpu_inference, serve_load, audit, calibration_tta)}


def render(text: str) -> str:
    """``text`` with every marked block re-rendered; an unknown block name is an error."""
    def replace(match: re.Match) -> str:
        name = match["name"]
        if name not in RENDERERS:
            raise KeyError(f"README block results:{name} has no renderer; known: {', '.join(RENDERERS)}")
        return match.group(1) + RENDERERS[name]() + match.group(4)

    return BLOCK.sub(replace, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when README.md is not up to date")
    args = parser.parse_args()
    current = README.read_text(encoding="utf-8")
    rendered = render(current)
    if args.check:
        if rendered != current:
            print("README.md figures differ from benchmarks/results; run: python scripts/render_readme.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(rendered, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
