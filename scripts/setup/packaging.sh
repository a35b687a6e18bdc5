#!/usr/bin/env bash
# What tests/e2e/test_install.py needs beyond the base: systemd-analyze (package systemd) to verify
# packaging/tierscale.service, systemd-nspawn (systemd-container) to boot it under a real systemd in a
# throwaway container, and a distribution python3 with venv under /usr for the installed copy (the
# container sees the host's /usr only). Nothing is started here.
set -euo pipefail
need=(systemd systemd-container python3)
/usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
apt_install "${need[@]}"
systemd-analyze --version | sed -n 1p
