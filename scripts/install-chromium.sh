#!/bin/sh
# Installs Debian's `chromium` for the browser test of the HTML reports (tests/test_report_browser.py).
# Idempotent: does nothing when a chromium is already installed. Never fails the caller: without
# chromium (no apt-get, no root, no network) the browser test skips with a clear reason instead.
set -u

for name in chromium chromium-browser; do
    if command -v "$name" >/dev/null 2>&1; then
        exit 0
    fi
done
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-chromium: no apt-get here; the browser test will be skipped" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "install-chromium: not root and no password-less sudo; the browser test will be skipped" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
echo "install-chromium: installing Debian's chromium (for the report browser test)" >&2
# try the current package lists first; refresh them only if that fails (a fresh image has none)
$SUDO apt-get install -y -q chromium >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q chromium >/dev/null 2>&1; } \
    || echo "install-chromium: apt-get could not install chromium; the browser test will be skipped" >&2
exit 0
