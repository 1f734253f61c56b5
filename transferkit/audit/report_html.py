"""``audit.html``: one self-contained page (inline CSS, thumbnails as base64 data URIs, no external URL).

A person reviews an audit by looking at the images, so every row shows them: the suspected label issue
with its given and suggested label, both images of a duplicate pair side by side, the outliers. The page
is a single file so it can be mailed or attached to an issue and still show everything.
"""

from __future__ import annotations

import base64
import html
import io
import os
from typing import Any, Callable, Sequence

from PIL import Image, ImageOps

from transferkit.audit.evidence import label_precision_sentence

__all__ = ["THUMB_PX", "SHOWN_ROWS", "thumbnail_uri", "render_html"]

THUMB_PX = 96  # longest side of a thumbnail: enough to recognise a photo, ~3 KB as JPEG
SHOWN_ROWS = 100  # rows per section on the page (audit.json has them all)

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1100px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;
vertical-align:middle;font-size:.9em}th{background:#f4f4f4}img{display:block;max-width:96px;max-height:96px}
.leak{background:#fde8e8}.muted{color:#777}.path{font-family:monospace;font-size:.8em;word-break:break-all}
.grid{display:flex;flex-wrap:wrap;gap:8px}.cell{width:120px;font-size:.8em}
"""


def thumbnail_uri(path: str, size: int = THUMB_PX) -> str | None:
    """A ``data:image/jpeg;base64,...`` thumbnail (EXIF orientation applied), or None if unreadable."""
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img.thumbnail((size, size))
            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="JPEG", quality=80)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class _Thumbs:
    """Each image encoded once per page (an image can be in several sections)."""

    def __init__(self, root: str) -> None:
        self.root, self.done = root, {}

    def img(self, rel: str) -> str:
        if rel not in self.done:
            uri = thumbnail_uri(os.path.join(self.root, rel))
            self.done[rel] = (f'<img src="{uri}" alt="{html.escape(rel)}">' if uri
                              else '<span class="muted">(unreadable)</span>')
        return self.done[rel]


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], classes: Sequence[str] = ()) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join(f'<tr class="{classes[i] if i < len(classes) else ""}">' + "".join(f"<td>{c}</td>" for c in row)
                   + "</tr>" for i, row in enumerate(rows))
    return f"<table><tr>{th}</tr>{body}</table>"


def _more(total: int) -> str:
    return f'<p class="muted">Showing {SHOWN_ROWS} of {total}; audit.json lists them all.</p>' if total > SHOWN_ROWS else ""


def _balance(report: dict[str, Any]) -> str:
    b = report["balance"]
    splits = list(b["counts"])
    classes = list(next(iter(b["counts"].values())))
    rows = [[_e(c)] + [str(b["counts"][s][c]) for s in splits] for c in classes]
    ratio = "n/a (a class has no image)" if b["ratio"] is None else f"{b['ratio']:.2f}:1"
    trains = "the folder" if b["split_that_trains"] == "all" else f"{_e(b['split_that_trains'])}/"
    text = (f"<p>Largest / smallest class of {trains}: {ratio} "
            f"({'imbalanced' if b['imbalanced'] else 'balanced'} against the {b['threshold']:g}:1 threshold).</p>")
    if b["too_small"]:
        small = ", ".join(f"{_e(s['class'])} ({s['images']})" for s in b["too_small"])
        text += (f"<p><b>Too small to train:</b> {small}; each needs {b['images_needed']} "
                 f"({_e(b['why_needed'])}).</p>")
    return "<h2>Balance</h2>" + text + _table(["class"] + splits, rows)


def _split(split: str) -> str:
    """A split's name for the page; a flat folder's single "all" says nothing the layout line has not."""
    return "" if split == "all" else _e(split)


def _image_cell(image: dict[str, Any], thumbs: _Thumbs) -> str:
    """Thumbnail, path, split and label of one image of a pair."""
    where = " / ".join(part for part in (_split(image["split"]), _e(image["label"])) if part)
    return f'{thumbs.img(image["path"])}<div class="path">{_e(image["path"])}</div>{where}'



def _duplicates(report: dict[str, Any], thumbs: _Thumbs) -> str:
    d = report["duplicates"]
    rows, marks = [], []
    for p in d["pairs"][:SHOWN_ROWS]:
        what = ("<b>leakage</b> " if p["leakage"] else "") + p["kind"] + ("" if p["same_label"] else ", labels differ")
        pixels = "same bytes" if p["kind"] == "exact" else f"{p['pixel']:.3f} / {p['detail']:.3f}"
        rows.append([_image_cell(p["a"], thumbs), _image_cell(p["b"], thumbs), what, f"{p['similarity']:.4f}", pixels])
        marks.append("leak" if p["leakage"] else "")
    if report["layout"] == "flat":
        leakage = ("no predefined split, so no leakage yet: training carves its splits at random and may put the "
                   "two copies of a pair on both sides; keep one copy of each")
    else:
        leakage = f"<b>{d['leakage_pairs']} pair(s) span two splits (leakage)</b>, listed first"
    head = (f"<h2>Duplicates and leakage</h2><p>{d['exact_pairs']} exact pair(s) (same bytes), {d['near_pairs']} "
            f"near pair(s) confirmed on the pixels; {leakage}. Candidates: {_e(d['candidate_rule'])}. Confirmed: "
            f"{_e(d['confirmation'])}; {d['rejected_at_pixel_level']} of {d['candidates']} candidate(s) looked alike "
            "but failed that check and are not listed.</p>")
    return head + (_table(["image", "copy", "kind", "embedding similarity", "pixel / detail correlation"], rows, marks)
                   + _more(len(d["pairs"])) if rows else "")


def _label_issues(report: dict[str, Any], thumbs: _Thumbs) -> str:
    li = report["label_issues"]
    if li.get("skipped"):
        return f"<h2>Label issues</h2><p>Not checked: {_e(li['skipped'])}</p>"
    rows = [[str(r["rank"]), thumbs.img(r["path"]), f'<div class="path">{_e(r["path"])}</div>{_split(r["split"])}',
             _e(r["given"]), f"<b>{_e(r['suggested'])}</b> ({r['suggested_prob']:.2f})", f"{r['score']:.3f}",
             f"{r['rank_among_all']} of {r['images']}"]
            for r in li["issues"][:SHOWN_ROWS]]
    head = (f"<h2>Label issues</h2><p>{len(li['issues'])} image(s) flagged by confident learning on out-of-fold "
            f"probabilities ({li['folds']} folds, out-of-fold accuracy {li['out_of_fold_accuracy']:.3f}); most "
            "suspect first. Score: the label-quality score of the given label; rank: its place among all images, "
            f"lowest score first. Unconfirmed: {_e(label_precision_sentence(li.get('expected_precision')))}.</p>")
    return head + (_table(["#", "image", "file", "given", "suggested", "score", "rank among all"], rows)
                   + _more(len(li["issues"])) if rows else "")


def _outliers(report: dict[str, Any], thumbs: _Thumbs) -> str:
    o = report["outliers"]
    cells = "".join(f'<div class="cell">{thumbs.img(r["path"])}<div class="path">{_e(r["path"])}</div>'
                    f'{_e(r["label"])}, score {r["score"]:.3f}, rank {r["rank_among_all"]} of {r["images"]}</div>'
                    for r in o["outliers"][:SHOWN_ROWS])
    head = (f"<h2>Outliers</h2><p>{len(o['outliers'])} image(s) far from every other image (distance to their "
            f"{o['neighbours']} nearest neighbours beyond Tukey's fence); most unusual first. Unconfirmed: how many "
            "are errors is not measured; rank: place among all images, most unusual first.</p>")
    return head + (f'<div class="grid">{cells}</div>' + _more(len(o["outliers"])) if cells else "")


def _skipped(report: dict[str, Any]) -> str:
    skipped = report["skipped"]
    if not skipped:
        return ""
    rows = [[f'<span class="path">{_e(s["path"])}</span>', _e(s["reason"])] for s in skipped[:SHOWN_ROWS]]
    return f"<h2>Skipped files</h2><p>{len(skipped)} file(s) were not audited.</p>" + _table(["file", "reason"], rows)


def render_html(report: dict[str, Any], root: str, say: Callable[[str], None] | None = None) -> str:
    """The page for ``report`` (audit.json's content, paths relative to ``root``)."""
    thumbs = _Thumbs(root)
    summary = "".join(f"<li>{_e(line)}</li>" for line in report["summary"])
    body = [f"<h1>Data audit: {_e(report['data'])}</h1>",
            f"<p class=\"muted\">{report['images']} images, layout {_e(report['layout'])}, backbone "
            f"{_e(report['backbone'].get('backbone', '?'))}. The files were only read.</p><ul>{summary}</ul>",
            _duplicates(report, thumbs), _label_issues(report, thumbs), _outliers(report, thumbs),
            _balance(report), _skipped(report)]
    if say:
        say(f"audit: {len(thumbs.done)} thumbnails in the page")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>transferkit audit</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")
