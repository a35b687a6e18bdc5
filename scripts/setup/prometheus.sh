#!/usr/bin/env bash
# Prometheus and promtool for the examples/prometheus checks and the real-Prometheus e2e tests. The
# tests start their own server on a loopback port they choose (tests/helpers/prometheus.py), so the
# package's own service (and the node exporter, should it ever come along) must not be left running:
# it would hold 9090/9100 and scrape this machine forever.
set -euo pipefail

# No recommends (apt_install's default): prometheus-node-exporter is only a Recommends.
apt_install prometheus

units=(prometheus prometheus-node-exporter)
if [ -d /run/systemd/system ]; then
    # `disable --now` stops it and keeps it from coming back at boot; a unit that is absent is fine.
    for u in "${units[@]}"; do systemctl disable --now "$u.service" >/dev/null 2>&1 || true; done
else
    for u in "${units[@]}"; do
        if [ -x "/etc/init.d/$u" ]; then
            "/etc/init.d/$u" stop >/dev/null 2>&1 || true
            update-rc.d "$u" disable >/dev/null 2>&1 || true
        fi
    done
fi

# Whatever init did or did not do (a policy-rc.d may have kept it from starting, a postinst may have
# started it without init): the package's daemons run as the `prometheus` user from /usr/bin, the tests'
# servers as whoever runs pytest, so only the former are stopped.
pkg_daemons() { pgrep -u prometheus -f '^/usr/bin/prometheus(-node-exporter)?( |$)' 2>/dev/null || true; }
pids="$(pkg_daemons)"
[ -z "$pids" ] || kill $pids 2>/dev/null || true
for _ in $(seq 100); do
    [ -z "$(pkg_daemons)" ] && break
    sleep 0.1
done
if [ -n "$(pkg_daemons)" ]; then
    echo "setup/prometheus: the package's own prometheus is still running: $(pkg_daemons | xargs)" >&2
    exit 1
fi

# sed reads all of it: `head -1` would exit early and pipefail would turn the SIGPIPE into exit 141.
prometheus --version 2>&1 | sed -n 1p
promtool --version 2>&1 | sed -n 1p
