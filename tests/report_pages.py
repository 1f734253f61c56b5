"""HTML report pages as a browser would fetch them: shared by the report unit tests and the real-data e2e run."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image

RUN_SECTIONS = ["summary", "curves", "confusion", "per-class", "roc", "calibration", "gallery", "filters", "skipped", "config"]


class _Page(HTMLParser):
    """Collects what a browser would fetch (img src, link href, script src) and the section ids."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.ids: list[str] = []
        self.scripts = 0
        self.gallery_items = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src") or "")
        if tag in ("link", "a") and a.get("href"):
            self.links.append(a["href"])
        if tag == "script":
            self.scripts += 1
        if tag == "section" and a.get("id"):
            self.ids.append(a["id"])
        if tag == "div" and a.get("class") == "item":
            self.gallery_items += 1


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def decode_uri(uri: str) -> Image.Image:
    header, data = uri.split(",", 1)
    assert header in ("data:image/png;base64", "data:image/jpeg;base64"), header
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def assert_self_contained(path: Path) -> _Page:
    page = parse(path)
    assert page.images, "the page has no images"
    for uri in page.images:
        assert uri.startswith("data:image/"), f"not embedded: {uri[:60]}"
        assert min(decode_uri(uri).size) > 1
    assert not any(link.startswith(("http:", "https:", "//")) for link in page.links)
    assert page.scripts == 0
    text = path.read_text(encoding="utf-8")
    assert "could not be drawn" not in text, "a section failed"
    return page
