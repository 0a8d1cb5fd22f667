#!/usr/bin/env bash
# Installs Debian's chromium, the system browser the widget browser test drives (tests/widgets/test_browser.py).
# Idempotent: does nothing when /usr/bin/chromium exists. Never lets a tool download a browser of its own.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    echo "chromium already installed: /usr/bin/chromium"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y chromium
/usr/bin/chromium --version || true
