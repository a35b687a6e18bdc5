#!/usr/bin/env bash
# Docker tier: install docker.io and make sure a Docker engine answers on the default socket.
# Run by scripts/setup-host.sh (which exports apt_install); also runnable on its own as root.
# Idempotent and quick when the engine already answers. This machine may have no systemd, so when
# `docker info` fails the daemon is started in the background, logging to $DOCKERD_LOG.
set -euo pipefail

DOCKERD_LOG="${DOCKERD_LOG:-/var/log/tierscale/dockerd.log}"
WAIT_SECONDS="${DOCKERD_WAIT:-60}"

if ! declare -F apt_install >/dev/null; then
    apt_install() {
        local missing=()
        for p in "$@"; do
            dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
        done
        [ ${#missing[@]} -eq 0 ] && return 0
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
            || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
    }
fi

engine_up() {
    # The CLI is only used here, by the setup script, to ask "is an engine there?"; tierscale itself
    # talks to the engine through the Docker SDK.
    docker info >/dev/null 2>&1
}

# busybox-static is optional in the demo image (a shell for `docker exec`); gcc builds the workload.
apt_install docker.io busybox-static gcc libc6-dev

if engine_up; then
    echo "setup/docker: engine up"
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    echo "setup/docker: the Docker engine is not answering; start dockerd (as root) or set DOCKER_HOST" >&2
    exit 1
fi

pidfile=/var/run/docker.pid
dockerd_running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null; }
# A stale pid file from a killed daemon makes a new dockerd refuse to start.
dockerd_running || rm -f "$pidfile"

if ! dockerd_running && [ -d /run/systemd/system ]; then
    systemctl start docker >/dev/null 2>&1 || true
fi
if ! dockerd_running; then
    mkdir -p "$(dirname "$DOCKERD_LOG")"
    echo "setup/docker: starting dockerd in the background (log: $DOCKERD_LOG)"
    # setsid + nohup: the daemon must outlive this script, make and the shell that ran them.
    # live-restore + no userland proxy: containers and their 127.0.0.1 ports keep serving while dockerd
    # itself restarts (upgrades, crashes), which is what the chaos suite checks.
    setsid nohup dockerd --live-restore --userland-proxy=false >>"$DOCKERD_LOG" 2>&1 </dev/null &
fi

for _ in $(seq "$WAIT_SECONDS"); do
    if engine_up; then
        echo "setup/docker: engine up"
        exit 0
    fi
    sleep 1
done
echo "setup/docker: dockerd did not answer within ${WAIT_SECONDS}s; last lines of $DOCKERD_LOG:" >&2
tail -n 20 "$DOCKERD_LOG" >&2 || true
exit 1
