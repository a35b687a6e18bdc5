#!/usr/bin/env bash
# Build the static demo workload binary: build/images/tierscale-workload (repo-relative).
# Idempotent: does nothing when the binary is newer than its source. Installs gcc/libc6-dev if missing.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
src="$repo/images/workload/workload.c"
out="$repo/build/images/tierscale-workload"

if [ -x "$out" ] && [ "$out" -nt "$src" ] && [ "$out" -nt "$0" ]; then
    exit 0
fi

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
if ! command -v gcc >/dev/null 2>&1 || ! installed libc6-dev; then
    if declare -F apt_install >/dev/null; then
        apt_install gcc libc6-dev  # from scripts/setup-host.sh
    elif [ "$(id -u)" = 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null 2>&1 \
            || { apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null; }
    else
        echo "build.sh: gcc and libc6-dev are needed; run as root or install them" >&2
        exit 1
    fi
fi

mkdir -p "$(dirname "$out")"
# Build to a temporary name and rename, so a concurrent reader never sees a half-written binary.
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
gcc -O2 -static -pthread -Wall -Wextra -o "$tmp" "$src"
strip "$tmp" 2>/dev/null || true
mv -f "$tmp" "$out"
echo "build.sh: built $out"
