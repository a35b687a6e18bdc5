#!/usr/bin/env bash
# libvirtd_in_namespace.sh ROOT NETNS: run by tests/helpers/hypervisor.py under
# `unshare --mount --propagation private`. Puts ROOT's private directories over libvirt's system paths
# (visible only in this mount namespace), then becomes libvirtd inside the network namespace NETNS.
set -euo pipefail
root=$1
netns=$2
for pair in run/libvirt:/run/libvirt lib:/var/lib/libvirt etc:/etc/libvirt log:/var/log/libvirt cache:/var/cache/libvirt; do
    mount --bind "$root/${pair%%:*}" "${pair#*:}"
done
exec nsenter --net="/var/run/netns/$netns" libvirtd --listen --pid-file "$root/libvirtd.pid"
