#!/usr/bin/env bash
# Headless Chromium from Debian for the dashboard's browser test (driven by Playwright from PyPI,
# pointed at /usr/bin/chromium: no browser download). Fonts so that screenshots show real text.
set -euo pipefail
apt_install chromium fonts-dejavu-core
