#!/usr/bin/env bash
# VM tier: libvirt + QEMU, the build tools for libvirt-python and for the guest image; start the daemons.
# Run as root by scripts/setup-host.sh (which exports apt_install). Idempotent; quick when already done.
# There is no systemd here, so virtlogd and libvirtd are started directly as daemons when not running.
set -euo pipefail

if ! declare -F apt_install >/dev/null; then
    echo "libvirt.sh: run through scripts/setup-host.sh (it provides apt_install)" >&2
    exit 1
fi

pkgs=(
    libvirt-daemon-system qemu-system-x86 qemu-utils  # daemon, emulator, qemu-img (libvirt's volume builder)
    libvirt-dev pkg-config gcc python3-dev            # build libvirt-python from PyPI into the venv
    e2fsprogs lz4                                     # guest image build: mke2fs -d (ext4 base), vmlinux
)
apt_install "${pkgs[@]}"

# Debian's default for /dev/kvm is root:kvm 0660. On these machines it starts as root:root 0600, and then
# libvirt re-probes QEMU's capabilities on every domain start (~44 s instead of ~0.3 s).
if [ -c /dev/kvm ]; then
    getent group kvm >/dev/null || groupadd --system kvm
    [ "$(stat -c %G /dev/kvm)" = kvm ] || chgrp kvm /dev/kvm
    [ "$(stat -c %a /dev/kvm)" = 660 ] || chmod 0660 /dev/kvm
fi

running() {
    # running PIDFILE: the daemon whose pid the file names is alive.
    local pid
    [ -s "$1" ] || return 1
    pid="$(cat "$1")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

mkdir -p /run/libvirt
running /run/virtlogd.pid || virtlogd -d
if ! running /run/libvirtd.pid; then
    libvirtd -d
fi

# libvirtd daemonizes before its socket exists; wait until a client can really connect.
sock=/run/libvirt/libvirt-sock
for _ in $(seq 1 100); do
    if [ -S "$sock" ] && virsh -c qemu:///system version >/dev/null 2>&1; then
        echo "libvirt.sh: libvirtd ready"
        exit 0
    fi
    sleep 0.1
done
echo "libvirt.sh: libvirtd did not come up (socket $sock)" >&2
exit 1
