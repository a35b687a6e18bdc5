#!/usr/bin/env bash
# etcd for `ha:` (several controllers, one leader): the tests start their own members on addresses they
# own (tests/helpers/etcd.py), so the package's own service is not needed and not started here.
set -euo pipefail
apt_install etcd-server etcd-client
# sed reads all of it: `head -1` exits early and pipefail turns etcd's SIGPIPE into exit 141
etcd --version | sed -n 1p
