"""The lease store a leader election needs, and nothing more: leases, create-if-absent, compare-delete.

Small on purpose (the nomad-autoscaler way): etcd implements it over its gRPC gateway, and
`MemoryLeaseStore` implements it in memory on a manual clock for tests, the way httpx ships a
MockTransport. Every call is blocking and bounded by the store's own timeout; callers run it in a thread.
"""

from __future__ import annotations

from typing import Protocol


class StoreUnavailable(Exception):
    """No endpoint answered within the timeout (or the answer was not one we understand)."""


class LeaseStore(Protocol):
    def grant(self, ttl: int) -> int:
        """A new lease of `ttl` seconds; its id."""
        ...

    def keepalive(self, lease: int) -> float:
        """Renew `lease`; its remaining TTL in seconds, or <= 0 when it had already expired."""
        ...

    def revoke(self, lease: int) -> None:
        """End `lease` now: every key attached to it goes."""
        ...

    def create(self, key: str, value: str, lease: int) -> bool:
        """Put `key` = `value` attached to `lease`, only if `key` does not exist; whether it was put."""
        ...

    def put(self, key: str, value: str, lease: int | None = None) -> None:
        """Put `key` = `value` (attached to `lease` when given: it goes when the lease does)."""
        ...

    def get(self, key: str) -> str | None:
        """The value of `key`, or None when there is none."""
        ...

    def get_prefix(self, prefix: str) -> dict[str, str]:
        """Every key under `prefix` and its value."""
        ...

    def delete_if(self, key: str, value: str) -> bool:
        """Delete `key` only while it still holds `value` (resigning never removes a successor's key)."""
        ...

    def close(self) -> None: ...
