"""The lease store on etcd v3, through its gRPC gateway (JSON over HTTP) with etcd3gw.

Why etcd3gw: it is maintained (OpenStack's, used by tooz and Neutron), pure Python over `requests`, and
talks to the /v3 JSON gateway every etcd ≥ 3.3 serves (Debian 12 ships 3.4) — no gRPC/protobuf pins
(python-etcd3 breaks on protobuf ≥ 4, aetcd brings grpcio for an API we use six calls of). tooz's
coordination layer would add its own heartbeat thread on top of ours. The client is blocking: every call
has a timeout shorter than the renew interval and runs in a thread.

Several endpoints: a call goes to the one that answered last and moves to the next on a connection
failure or timeout, so one etcd member down costs one timeout, not the lease.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import ConnectionFailedError, ConnectionTimeoutError, Etcd3Exception

from tierscale.coordination.base import StoreUnavailable

T = TypeVar("T")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class EtcdLeaseStore:
    def __init__(self, endpoints: list[str], timeout: float = 2.0) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoints")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._clients = [self._client(url) for url in self.endpoints]
        self._current = 0
        self._lock = threading.Lock()

    def _client(self, url: str) -> Etcd3Client:
        parts = urlsplit(url)
        # api_path fixed: discovery costs a round trip per client and etcd 3.4 serves /v3/.
        return Etcd3Client(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 2379,
            protocol=parts.scheme or "http",
            timeout=self.timeout,
            api_path="/v3/",
        )

    def _call(self, fn: Callable[[Etcd3Client], T]) -> T:
        with self._lock:
            start = self._current
        errors = []
        for i in range(len(self._clients)):
            idx = (start + i) % len(self._clients)
            try:
                out = fn(self._clients[idx])
            except (ConnectionFailedError, ConnectionTimeoutError) as exc:
                errors.append(f"{self.endpoints[idx]}: {type(exc).__name__}")
                continue
            except Etcd3Exception as exc:
                raise StoreUnavailable(f"{self.endpoints[idx]}: {exc}") from None
            with self._lock:
                self._current = idx
            return out
        raise StoreUnavailable("no etcd endpoint answered (" + "; ".join(errors) + ")")

    def grant(self, ttl: int) -> int:
        return self._call(lambda c: c.lease(ttl).id)

    def keepalive(self, lease: int) -> float:
        def renew(c: Etcd3Client) -> float:
            result: dict[str, Any] = c.post(c.get_url("/lease/keepalive"), json={"ID": lease})
            return float(result.get("result", {}).get("TTL", -1))

        return self._call(renew)

    def revoke(self, lease: int) -> None:
        def revoke(c: Etcd3Client) -> None:
            try:
                c.post(c.get_url("/kv/lease/revoke"), json={"ID": lease})
            except Etcd3Exception as exc:
                # Expired already (etcd answers 404 "requested lease not found"): what a revoke wants.
                if "not found" not in str(exc).lower():
                    raise

        self._call(revoke)

    def create(self, key: str, value: str, lease: int) -> bool:
        txn = {
            "compare": [{"key": _b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": 0}],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(value), "lease": lease}}],
            "failure": [],
        }
        return bool(self._call(lambda c: c.transaction(txn)).get("succeeded", False))

    def put(self, key: str, value: str, lease: int | None = None) -> None:
        payload: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease is not None:
            payload["lease"] = lease
        self._call(lambda c: c.post(c.get_url("/kv/put"), json=payload))

    def get(self, key: str) -> str | None:
        values = self._call(lambda c: c.get(key))
        return values[0].decode() if values else None

    def get_prefix(self, prefix: str) -> dict[str, str]:
        items = self._call(lambda c: c.get_prefix(prefix, sort_target="key", sort_order="ascend"))
        return {meta["key"].decode(): value.decode() for value, meta in items}

    def delete_if(self, key: str, value: str) -> bool:
        txn = {
            "compare": [{"key": _b64(key), "result": "EQUAL", "target": "VALUE", "value": _b64(value)}],
            "success": [{"request_delete_range": {"key": _b64(key)}}],
            "failure": [],
        }
        return bool(self._call(lambda c: c.transaction(txn)).get("succeeded", False))

    def close(self) -> None:
        for c in self._clients:
            c.session.close()
