#!/bin/sh
# Installs Debian's `chromium` for the browser tests of the HTML reports (tests/e2e/test_report_browser.py,
# tests/e2e/test_e2e_real.py). Idempotent: does nothing when a chromium is already installed.
# Outside CI it never fails the caller: without chromium (no apt-get, no root, no network) the browser
# tests skip with a clear reason. Under CI (CI=true, as CI services set it) a missing browser is an error:
# the script exits 1 and the browser tests fail instead of skipping, so CI cannot pass without running them.
set -u

case "${CI:-}" in
    [Tt][Rr][Uu][Ee]|1|[Yy][Ee][Ss]) IN_CI=1 ;;
    *) IN_CI=0 ;;
esac

have_chromium() {
    if [ -n "${TRANSFERKIT_CHROMIUM:-}" ] && command -v "$TRANSFERKIT_CHROMIUM" >/dev/null 2>&1; then
        return 0
    fi
    for name in chromium chromium-browser; do
        if command -v "$name" >/dev/null 2>&1; then
            return 0
        fi
    done
    return 1
}

# Without chromium: a warning (exit 0) outside CI, an error (exit 1) under CI.
give_up() {
    if [ "$IN_CI" = 1 ]; then
        echo "install-chromium: error: $1; CI=true requires the browser tests to run" >&2
        exit 1
    fi
    echo "install-chromium: $1; the browser tests will be skipped" >&2
    exit 0
}

if have_chromium; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    give_up "no chromium and no apt-get here"
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        give_up "no chromium, not root and no password-less sudo"
    fi
fi
export DEBIAN_FRONTEND=noninteractive
echo "install-chromium: installing Debian's chromium (for the report browser tests)" >&2
# try the current package lists first; refresh them only if that fails (a fresh image has none)
$SUDO apt-get install -y -q chromium >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q chromium >/dev/null 2>&1; } \
    || give_up "apt-get could not install chromium"
# apt-get can succeed without leaving a `chromium` on PATH (e.g. a transitional package): check
have_chromium || give_up "apt-get ran but no chromium is on PATH"
exit 0
