#!/bin/sh
# busybox udhcpc hook: apply the lease (address, prefix length, default route).
case "$1" in
bound | renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    if [ -n "$router" ]; then
        ip route add default via "${router%% *}" dev "$interface"
    fi
    ;;
deconfig)
    ip addr flush dev "$interface"
    ;;
esac
exit 0
