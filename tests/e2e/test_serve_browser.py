"""The served page as a person uses it: the real server (`transferkit serve` in a subprocess on a free loopback
port), headless Chromium picking a real image through the page's file input, the predicted label read back
from the page, and no console errors.

Chromium is driven over the DevTools protocol on ``--remote-debugging-pipe`` (NUL-separated JSON on fds 3
and 4: no websocket library, no download). ``DOM.setFileInputFiles`` is what a user's file pick does: it
fills the input and fires its change event, and the page's own script uploads the file. Needs Debian's
``chromium``: skips without it, except under ``CI=true`` (conftest.require_chromium).
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

import transferkit as tk
import transferkit.report as report
from conftest import TINY, datasets_root, make_image_folder, require_chromium

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1280,900"]


@pytest.fixture(autouse=True)
def _need_chromium() -> None:
    """Skip (or, under CI, fail) before any training when there is no browser."""
    require_chromium()


class DevTools:
    """A minimal DevTools-protocol client over Chromium's ``--remote-debugging-pipe``."""

    def __init__(self, chromium: str, profile: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # the child's ends, moved above 9 first so that placing them on 3 and 4 cannot overwrite one another
        # (bash, not sh: dash refuses fd numbers above 9)
        child_r, child_w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w))
        os.close(to_browser_r)
        os.close(from_browser_w)
        script = f'exec "$0" "$@" 3<&{child_r} 4>&{child_w} {child_r}<&- {child_w}>&-'
        self.log = profile.parent / "chromium.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                ["/bin/bash", "-c", script, chromium, *CHROMIUM_FLAGS, "--remote-debugging-pipe",
                 f"--user-data-dir={profile}", "about:blank"],
                pass_fds=(child_r, child_w), stdout=log, stderr=subprocess.STDOUT)
        os.close(child_r)
        os.close(child_w)
        self.events: list[dict[str, Any]] = []
        self._messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self._next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._from_browser, 1 << 16):
            buffer += chunk
            *complete, buffer = buffer.split(b"\0")
            for raw in complete:
                self._messages.put(json.loads(raw))

    def call(self, method: str, session: str | None = None, timeout: float = 30, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        try:
            os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise AssertionError(f"chromium exited ({self.process.poll()}): {self.log.read_text()[-3000:]}") from None
        deadline = time.monotonic() + timeout
        while True:
            answer = self._messages.get(timeout=max(0.01, deadline - time.monotonic()))
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]
            self.events.append(answer)

    def evaluate(self, session: str, expression: str) -> Any:
        result = self.call("Runtime.evaluate", session, expression=expression, returnByValue=True)
        return result["result"].get("value")

    def wait_for(self, session: str, expression: str, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(session, expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"the page never satisfied {expression!r} within {timeout} s")

    def console_problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions and error log entries (failed loads) so far."""
        problems = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
                problems.append(" ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                problems.append(params["exceptionDetails"].get("exception", {}).get("description", "exception"))
            elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                problems.append(f"{params['entry']['source']}: {params['entry']['text']}")
        return problems

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self._to_browser)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`transferkit serve` on a tiny real run, in a subprocess on a free loopback port; its base URL."""
    root = tmp_path_factory.mktemp("serve-browser")
    make_image_folder(root / "data", {"red": 8, "green": 8, "blue": 8})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRANSFERKIT_CACHE_DIR", str(root / "cache"))
        mp.setattr(report, "build_run_report", lambda *a, **k: None)
        run = tk.train(root / "data", strategy="feature-extraction", epochs=1, out=str(root / "run"), **TINY).run_dir
    port = free_port()
    log = (root / "server.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "transferkit.cli", "serve", str(run), "--port", str(port)],
                               stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TRANSFERKIT_CACHE_DIR": str(root / "cache")})
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (root / "server.log").read_text()
            try:
                if httpx.get(url + "v1/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not answer within 120 s\n" + (root / "server.log").read_text()
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
    assert f"at {url}" in (root / "server.log").read_text()  # the URL was printed on start


def test_the_server_prints_its_url_and_answers_health(server: str):
    assert httpx.get(server + "v1/health").json()["status"] == "ok"


def _pick_files(tools: DevTools, session: str, paths: list[Path]) -> None:
    root = tools.call("DOM.getDocument", session)["root"]["nodeId"]
    node = tools.call("DOM.querySelector", session, nodeId=root, selector="#files")["nodeId"]
    tools.call("DOM.setFileInputFiles", session, nodeId=node, files=[str(p) for p in paths])


def test_an_image_picked_on_the_page_is_predicted(server: str, tmp_path: Path):
    from PIL import Image

    real = datasets_root() / "hymenoptera" / "val" / "bees"
    photo = sorted(real.glob("*.jpg"))[0] if real.is_dir() else None  # a real photo when the data is there
    if photo is None:
        make_image_folder(tmp_path / "imgs", {"blue": 1}, size=120)
        photo = tmp_path / "imgs" / "blue" / "blue_000.jpg"
    expected = httpx.post(server + "v1/predict", files={"file": (photo.name, photo.read_bytes())}).json()
    expected_label = expected["results"][0]["predictions"][0]["label"]

    tools = DevTools(require_chromium(), tmp_path / "profile")
    try:
        target = tools.call("Target.createTarget", url="about:blank")["targetId"]
        session = tools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Page", "DOM"):
            tools.call(f"{domain}.enable", session)
        tools.call("Page.navigate", session, url=server)
        tools.wait_for(session, "document.readyState === 'complete' && document.getElementById('topk').options.length > 0")
        assert "3 classes" in tools.evaluate(session, "document.getElementById('model').textContent")

        _pick_files(tools, session, [photo])
        state = tools.wait_for(session, "(function(){var c=document.querySelector('.card');"
                                        "return c && c.dataset.state !== 'pending' && c.dataset.state;})()")
        assert state == "done", tools.evaluate(session, "document.querySelector('.card').textContent")
        shown = tools.evaluate(session, "JSON.stringify({label: document.querySelector('.card .row.top .label').textContent,"
                                        " rows: document.querySelectorAll('.card .row').length,"
                                        " name: document.querySelector('.card .name').textContent,"
                                        " width: document.querySelector('.card img').naturalWidth})")
        shown = json.loads(shown)
        assert shown["label"] == expected_label and shown["name"] == photo.name
        assert shown["rows"] == 3 and shown["width"] > 0  # top-3 bars, and the thumbnail loaded
        assert tools.console_problems() == []

        # a file that is not an image: an error on its card, in words, and the page goes on
        notes = tmp_path / "notes.jpg"
        notes.write_text("not a picture")
        _pick_files(tools, session, [notes])
        tools.wait_for(session, "document.querySelectorAll('.card[data-state=\"error\"]').length === 1")
        error = tools.evaluate(session, "document.querySelector('.card[data-state=\"error\"] .error').textContent")
        assert "not an image" in error and "JPEG" in error
        problems = tools.console_problems()
        # the browser notes the 422 answer as a failed load (which also shows the log is really watched), and nothing else
        assert problems and all("422" in p for p in problems), problems
        assert Image.open(photo).size  # the photo itself was a real image
    finally:
        tools.close()
