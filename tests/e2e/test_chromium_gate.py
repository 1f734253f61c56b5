"""CI cannot pass without running the browser tests: a missing chromium skips them locally, fails them under CI.

Both halves are tested without uninstalling anything: the decision (``conftest.require_chromium``) with a
monkeypatched environment and a PATH of fake programs, and ``scripts/install-chromium.sh`` run by ``/bin/sh``
with such a PATH (fake ``id``, ``apt-get`` and ``chromium``), so no package is ever installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, in_ci, require_chromium

SCRIPT = REPO / "scripts" / "install-chromium.sh"


def _program(folder: Path, name: str, body: str = "exit 0") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def no_browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH holding nothing (so no chromium), and no TRANSFERKIT_CHROMIUM."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("TRANSFERKIT_CHROMIUM", raising=False)
    return empty


# --- the skip / fail decision --------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [("true", True), ("TRUE", True), ("1", True), ("yes", True),
                                             ("false", False), ("0", False), ("", False), (None, False)])
def test_in_ci_reads_the_ci_variable(monkeypatch: pytest.MonkeyPatch, value: str | None, expected: bool):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert in_ci() is expected


def test_missing_chromium_fails_under_ci(no_browser: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true requires the browser tests"):
        require_chromium()


@pytest.mark.parametrize("ci", [None, "false"])
def test_missing_chromium_skips_outside_ci(no_browser: Path, monkeypatch: pytest.MonkeyPatch, ci: str | None):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="chromium is not installed"):
        require_chromium()


def test_a_chromium_on_path_is_used_in_and_out_of_ci(no_browser: Path, monkeypatch: pytest.MonkeyPatch):
    fake = _program(no_browser, "chromium")
    for ci in ("true", ""):
        monkeypatch.setenv("CI", ci)
        assert require_chromium() == str(fake)
    fake.unlink()
    browser = _program(no_browser, "chromium-browser")  # Ubuntu's name
    assert require_chromium() == str(browser)


def test_transferkit_chromium_overrides_the_path(no_browser: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _program(no_browser, "chromium")
    mine = _program(tmp_path / "elsewhere", "my-chrome")
    monkeypatch.setenv("TRANSFERKIT_CHROMIUM", str(mine))
    assert require_chromium() == str(mine)
    monkeypatch.setenv("TRANSFERKIT_CHROMIUM", str(tmp_path / "missing-chrome"))  # named but absent: not "found"
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="missing-chrome"):
        require_chromium()


def test_the_browser_tests_use_the_decision(no_browser: Path, monkeypatch: pytest.MonkeyPatch):
    """The browser test modules ask conftest.require_chromium, so CI=true without a browser fails them."""
    import test_e2e_real
    import test_report_browser

    monkeypatch.setenv("CI", "true")
    for lookup in (test_report_browser.chromium, test_e2e_real.chromium):
        with pytest.raises(pytest.fail.Exception):
            lookup()
    monkeypatch.delenv("CI")
    for lookup in (test_report_browser.chromium, test_e2e_real.chromium):
        with pytest.raises(pytest.skip.Exception):
            lookup()


def test_a_test_run_without_chromium_under_ci_is_not_a_pass(no_browser: Path, tmp_path: Path):
    """Through pytest itself: a test (and an autouse fixture, as in test_report_browser.py) that asks for the
    browser makes the run exit non-zero under CI=true, and is a plain skip outside CI. A two-test file that
    imports only conftest keeps this to a second or two (no torch)."""
    probe = tmp_path / "probe" / "test_probe.py"
    probe.parent.mkdir()
    probe.write_text("import pytest\nfrom conftest import require_chromium\n\n"
                     "@pytest.fixture(autouse=True)\ndef _need():\n    require_chromium()\n\n"
                     "def test_in_fixture():\n    pass\n\n"
                     "def test_in_body():\n    require_chromium()\n")
    env = {**os.environ, "CI": "true", "PATH": str(no_browser), "PYTHONPATH": str(REPO / "tests")}
    env.pop("TRANSFERKIT_CHROMIUM", None)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(probe)]
    done = subprocess.run(command, cwd=probe.parent, env=env, capture_output=True, text=True, timeout=120)
    last = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 1 and "2 errors" in last and "skipped" not in last, done.stdout[-3000:]
    assert "CI=true requires the browser tests" in done.stdout
    env.pop("CI")
    done = subprocess.run(command, cwd=probe.parent, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "2 skipped" in done.stdout.strip().splitlines()[-1], done.stdout[-3000:]


# --- scripts/install-chromium.sh -----------------------------------------------------------------------------


def _install(bin_dir: Path, ci: str | None) -> subprocess.CompletedProcess:
    """Run the script by /bin/sh with PATH = ``bin_dir`` only: the fake programs there are all it can find."""
    env = {"PATH": str(bin_dir), "HOME": str(bin_dir.parent)}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(["/bin/sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


def test_script_fails_under_ci_without_chromium_or_apt_get(tmp_path: Path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    done = _install(bin_dir, "true")
    assert done.returncode != 0 and "CI=true requires the browser tests" in done.stderr, done.stderr
    for ci in (None, "false", ""):
        done = _install(bin_dir, ci)
        assert done.returncode == 0 and "will be skipped" in done.stderr, (ci, done.stderr)


def test_script_succeeds_when_chromium_is_there(tmp_path: Path):
    bin_dir = tmp_path / "bin"
    apt_log = tmp_path / "apt.log"
    _program(bin_dir, "chromium")
    _program(bin_dir, "apt-get", f'echo "$*" >> {apt_log}; exit 0')
    for ci in ("true", None):
        assert _install(bin_dir, ci).returncode == 0
    assert not apt_log.exists()  # nothing to install


@pytest.mark.parametrize("uid", ["0", "1000"])
def test_script_fails_under_ci_when_apt_get_cannot_install(tmp_path: Path, uid: str):
    """As root apt-get is tried (install, then update + install) and fails; as a user without sudo it is not."""
    bin_dir = tmp_path / "bin"
    apt_log = tmp_path / "apt.log"
    _program(bin_dir, "id", f"echo {uid}")
    _program(bin_dir, "apt-get", f'echo "$*" >> {apt_log}; exit 100')
    done = _install(bin_dir, "true")
    assert done.returncode != 0 and "CI=true requires the browser tests" in done.stderr, done.stderr
    done = _install(bin_dir, None)
    assert done.returncode == 0 and "will be skipped" in done.stderr, done.stderr
    if uid == "0":
        assert apt_log.read_text().splitlines()[:3] == ["install -y -q chromium", "update -q", "install -y -q chromium"]
    else:
        assert not apt_log.exists()


def test_script_checks_that_apt_get_left_a_chromium(tmp_path: Path):
    bin_dir = tmp_path / "bin"
    _program(bin_dir, "id", "echo 0")
    _program(bin_dir, "apt-get", "exit 0")  # "succeeds" but installs nothing
    assert _install(bin_dir, "true").returncode != 0
    assert _install(bin_dir, None).returncode == 0
    # ... and one that does install it passes under CI
    chmod = shutil.which("chmod")  # the fake PATH has no chmod: the fake apt-get calls it by its full path
    _program(bin_dir, "apt-get", f'printf "#!/bin/sh\\nexit 0\\n" > {bin_dir}/chromium; {chmod} 755 {bin_dir}/chromium')
    done = _install(bin_dir, "true")
    assert done.returncode == 0, done.stderr
    assert (bin_dir / "chromium").is_file()


@pytest.mark.parametrize("ci", ["true", "True", "1", "yes", "false", "no", "0", ""])
def test_conftest_and_script_agree_on_what_ci_means(tmp_path: Path, ci: str):
    """The script's exit and the browser tests' fate follow the same reading of CI."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    assert (_install(bin_dir, ci).returncode != 0) == in_ci({"CI": ci})
