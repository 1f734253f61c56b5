"""Minimal HTML building blocks for self-contained reports (no scripts, no external files).

Written by hand rather than with a template engine: the pages are a handful of sections, tables and
images, and every piece of user text goes through :func:`esc` (file names and class names can hold
anything, including ``<``).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

__all__ = ["Raw", "Section", "esc", "table", "img", "kv_table", "cards", "note", "page", "fmt_num", "footer_text"]


class Raw(str):
    """Already-safe HTML: inserted as is by :func:`table` and friends."""


def esc(value: Any) -> str:
    return value if isinstance(value, Raw) else html.escape("" if value is None else str(value), quote=True)


def fmt_num(value: Any, digits: int = 3) -> str:
    """Numbers for people: floats rounded, None as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


@dataclass
class Section:
    anchor: str
    title: str
    body: str


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[int] = (), caption: str = "") -> str:
    head = "".join(f"<th{' class=num' if i in numeric else ''}>{esc(h)}</th>" for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f"<td{' class=num' if i in numeric else ''}>{esc(c)}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def kv_table(pairs: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in pairs)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def img(uri: str | None, alt: str, caption: str = "", cls: str = "plot") -> str:
    if not uri:
        return note(f"{alt}: not available")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure class="{cls}"><img src="{uri}" alt="{esc(alt)}">{cap}</figure>'


def cards(items: Iterable[tuple[str, Any]]) -> str:
    inner = "".join(f'<div class="card"><div class="value">{esc(v)}</div><div class="label">{esc(k)}</div></div>' for k, v in items)
    return f'<div class="cards">{inner}</div>'


def note(text: str, kind: str = "muted") -> str:
    return f'<p class="{kind}">{esc(text)}</p>'


CSS = """
:root { --fg:#1d232b; --muted:#5b6572; --line:#dde2e8; --bg:#f6f8fa; --accent:#0072B2; --warn:#a15c00; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif; color:var(--fg); background:#fff; }
header { background:var(--bg); border-bottom:1px solid var(--line); padding:20px 32px 12px; }
header h1 { margin:0 0 4px; font-size:24px; }
header .sub { color:var(--muted); margin:0; }
nav { margin-top:10px; font-size:13px; }
nav a { color:var(--accent); text-decoration:none; margin-right:14px; white-space:nowrap; }
main { max-width:1400px; padding:8px 32px 40px; }
section { border-bottom:1px solid var(--line); padding:10px 0 18px; }
h2 { font-size:19px; margin:14px 0 8px; }
h3 { font-size:15px; margin:12px 0 6px; }
p { max-width:900px; }
.muted { color:var(--muted); }
.warn { color:var(--warn); font-weight:600; }
ul.obs { max-width:900px; padding-left:20px; }
table { border-collapse:collapse; margin:8px 0 12px; font-size:14px; }
th, td { border-bottom:1px solid var(--line); padding:4px 12px 4px 0; text-align:left; vertical-align:top; }
thead th { border-bottom:2px solid var(--fg); }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; padding-left:12px; }
table.kv th { color:var(--muted); font-weight:500; padding-right:18px; white-space:nowrap; }
caption { text-align:left; color:var(--muted); padding-bottom:4px; }
figure { margin:8px 0 12px; }
figure.plot img { max-width:100%; height:auto; border:1px solid var(--line); }
figcaption { color:var(--muted); font-size:13px; max-width:900px; }
.cards { display:flex; flex-wrap:wrap; gap:12px; margin:10px 0 14px; }
.card { background:var(--bg); border:1px solid var(--line); border-radius:6px; padding:8px 16px; min-width:130px; }
.card .value { font-size:22px; font-weight:600; font-variant-numeric:tabular-nums; }
.card .label { color:var(--muted); font-size:13px; }
.gallery { display:grid; grid-template-columns:repeat(auto-fill, minmax(300px, 1fr)); gap:14px; margin:8px 0 16px; }
.item { border:1px solid var(--line); border-radius:6px; padding:8px; background:#fff; }
.item .pair { display:flex; gap:4px; }
.item .pair img { width:50%; height:auto; image-rendering:auto; display:block; }
.item .cap { font-size:13px; margin-top:6px; word-break:break-all; }
.item .cap b { word-break:normal; }
pre { background:var(--bg); border:1px solid var(--line); padding:10px 14px; overflow-x:auto; font-size:13px; max-width:900px; }
footer { color:var(--muted); font-size:12px; padding:0 32px 24px; }
"""


def footer_text() -> str:
    from datetime import datetime

    from transferkit._version import __version__

    return f"transferkit {__version__} · written {datetime.now().strftime('%Y-%m-%d %H:%M')}"


def page(title: str, subtitle: str, sections: Sequence[Section], footer: str = "") -> str:
    """A complete HTML document: header with a table of contents, then the sections in order."""
    nav = " ".join(f'<a href="#{esc(s.anchor)}">{esc(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{esc(s.anchor)}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p class=\"sub\">{esc(subtitle)}</p><nav>{nav}</nav></header>"
        f"<main>{body}</main><footer>{esc(footer)}</footer></body></html>\n"
    )
