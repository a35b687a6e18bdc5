#!/usr/bin/env bash
# Install and start what tierscale and its tests need on a Debian/Ubuntu machine (run as root).
# Idempotent and quick when everything is already there.
#   scripts/setup-host.sh            base + every tier
#   scripts/setup-host.sh base       only what the process tier needs (python venv, nginx)
#   scripts/setup-host.sh docker ... base plus the named tiers (each is scripts/setup/<name>.sh)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

apt_install() {
    # apt_install PKG...: install the packages that are not installed yet.
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "setup-host: missing ${missing[*]}; run as root or install them" >&2
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if [ ! -f /var/lib/apt/periodic/tierscale-updated ] || [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ]; then
        apt-get update -qq
        mkdir -p /var/lib/apt/periodic && touch /var/lib/apt/periodic/tierscale-updated
    fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
export -f apt_install

base() {
    local need=(nginx-light make)
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
    apt_install "${need[@]}"
}

parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(all)
base
for part in "${parts[@]}"; do
    case "$part" in
        base) ;;
        all)
            # background.sh is the helper that runs a part detached, not a part itself.
            for f in "$here"/setup/*.sh; do
                [ "$(basename "$f")" = background.sh ] || bash "$f"
            done ;;
        *)
            [ -f "$here/setup/$part.sh" ] || { echo "setup-host: no such part: $part" >&2; exit 2; }
            bash "$here/setup/$part.sh" ;;
    esac
done
echo "setup-host: ok (${parts[*]})"
