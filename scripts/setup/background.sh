#!/usr/bin/env bash
# Start one setup part (scripts/setup/PART.sh) in the background, for `make test`: openstack-lite takes
# minutes to come up and only the cloud tests need it, so it comes up while the unit tier and the other
# end-to-end groups run. tests/run_e2e.py waits for it before it starts the cloud group.
#   scripts/setup/background.sh PART      -> /run/tierscale-setup/PART.log, PART.rc when it has ended
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
part="${1:?usage: background.sh PART}"
[ -f "$here/$part.sh" ] || { echo "background: no such part: $part" >&2; exit 2; }
dir=/run/tierscale-setup
mkdir -p "$dir"
if [ -f "$dir/$part.pid" ] && kill -0 "$(cat "$dir/$part.pid")" 2>/dev/null; then
    echo "setup/$part: already running in the background (log: $dir/$part.log)"
    exit 0
fi
rm -f "$dir/$part.rc"
# setsid: not in make's process group, so nothing waits on it; the rc file says it ended and how.
setsid bash -c 'bash "$1" >"$2.log" 2>&1; echo $? >"$2.rc.tmp"; mv "$2.rc.tmp" "$2.rc"' _ \
    "$here/$part.sh" "$dir/$part" </dev/null >/dev/null 2>&1 &
echo $! >"$dir/$part.pid"
echo "setup/$part: started in the background (log: $dir/$part.log)"
