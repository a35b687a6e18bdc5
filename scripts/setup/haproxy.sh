#!/usr/bin/env bash
# HAProxy for `balancer: {type: haproxy}`: the controller (and the tests) start their own haproxy with
# its own config and runtime socket, so the package's service must not be left running on port 80.
set -euo pipefail
apt_install haproxy
if [ -x /etc/init.d/haproxy ]; then
    /etc/init.d/haproxy stop >/dev/null 2>&1 || true
    update-rc.d haproxy disable >/dev/null 2>&1 || true
fi
# Only the package's daemon (its config file); a controller's own run with their own -f.
pids="$(pgrep -f '^/usr/sbin/haproxy -Ws -f /etc/haproxy/haproxy.cfg' 2>/dev/null || true)"
[ -z "$pids" ] || kill $pids 2>/dev/null || true
haproxy -v | sed -n 1p
