#!/usr/bin/env bash
# Redis for the `redis` metric type's tests: they start their own redis-server on loopback ports they
# choose (tests/helpers/redis_server.py), so the package's own service must not be left running on 6379.
# (RabbitMQ is not touched here: the test cloud's openstack-lite runs its own broker from that package.)
set -euo pipefail
apt_install redis-server
if [ -x /etc/init.d/redis-server ]; then
    /etc/init.d/redis-server stop >/dev/null 2>&1 || true
    update-rc.d redis-server disable >/dev/null 2>&1 || true
fi
# Only the package's daemon (user redis, its config file); a test's own servers run as root.
pids="$(pgrep -u redis -x redis-server 2>/dev/null || true)"
[ -z "$pids" ] || kill $pids 2>/dev/null || true
# sed reads all of it: an early-exiting reader would SIGPIPE redis-server and pipefail would fail us.
redis-server --version | sed -n 1p
