"""Where several controllers agree on one leader: a lease store (etcd, or the in-package fake)."""

from tierscale.coordination.base import LeaseStore, StoreUnavailable

__all__ = ["LeaseStore", "StoreUnavailable"]
