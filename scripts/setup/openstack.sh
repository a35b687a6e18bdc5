#!/usr/bin/env bash
# OpenStack tier: bring up openstack-lite, a real minimal OpenStack (Keystone, Glance, Placement, Nova,
# Neutron API) on loopback, for the tests. Idempotent; a no-op when it is already up.
#
# The tests find it without any exported variable: with CI=true and TIERSCALE_TEST_CLOUD unset they use
# cloud `lite` from $OPENSTACK_LITE_BASE/clouds.yaml (tests/helpers/openstack_testcloud.py).
#
# nova-compute starts with the fake driver (fast tests). The one real-guest test switches it to libvirt
# itself: the first time through the lite script's `up` (which installs QEMU, the libvirt binding and the
# busybox guest image), later by restarting only nova-compute. (Starting with libvirt instead fails on a
# host whose libvirtd already runs other domains: a new nova-compute refuses to start next to them.)
#
#   OPENSTACK_LITE         the lite script (default ../shared/tools/openstack-lite/openstack-lite.sh beside the repo)
#   OPENSTACK_LITE_BASE    its state directory, the script's BASE (default /var/tmp/openstack-lite)
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
lite="${OPENSTACK_LITE:-$repo/../shared/tools/openstack-lite/openstack-lite.sh}"
export BASE="${OPENSTACK_LITE_BASE:-/var/tmp/openstack-lite}"
if [ ! -f "$lite" ]; then
    echo "setup/openstack: $lite not found (set OPENSTACK_LITE to openstack-lite.sh)" >&2
    exit 1
fi

# Already up: every service has a live PID and Keystone answers. Then `up` (which re-runs every db sync,
# ~35 s) has nothing to do.
# grep without -q reads to the end: an early exit would SIGPIPE status and pipefail would hide the match.
if bash "$lite" status 2>/dev/null | grep ': down$' >/dev/null; then
    up=0
elif [ -f "$BASE/clouds.yaml" ] && curl -fsS -m 5 -o /dev/null http://127.0.0.1:5000/v3; then
    up=1
else
    up=0
fi
if [ "$up" = 1 ]; then
    echo "setup/openstack: openstack-lite already up ($BASE/clouds.yaml, cloud lite)"
    exit 0
fi
# The script's progress goes to a log; on failure show its tail.
mkdir -p "$BASE/logs"
if ! COMPUTE_DRIVER=fake.FakeDriverWithoutFakeNodes bash "$lite" up >"$BASE/logs/tierscale-setup.log" 2>&1; then
    tail -40 "$BASE/logs/tierscale-setup.log" >&2
    echo "setup/openstack: openstack-lite up failed (full log: $BASE/logs/tierscale-setup.log)" >&2
    exit 1
fi
tail -1 "$BASE/logs/tierscale-setup.log"
