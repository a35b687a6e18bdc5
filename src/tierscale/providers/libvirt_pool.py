"""The warm pool: VMs booted ahead of need and paused, outside the balancer.

A pool member is an ordinary tierscale domain whose ownership element says `role="pool"`, so it is
never listed as a replica, survives a controller crash like any VM (and is found again by the next
controller), and is removed by `close()` when the controller stops (a paused VM serves nobody).

`take()` (called by `create`) re-marks the oldest paused member as a replica and resumes it: its guest is
already serving, so the replica answers health checks within milliseconds instead of after a boot. A
background thread keeps `size` members: it boots one (cold, as `create` would), waits until its health
path answers, pauses it, and repeats; a failure backs off exponentially and is reported through the
provider's event sink. Members booted from another template revision are never handed out: they are
removed, and the refill boots current ones.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import Protocol

from tierscale.providers.base import EventSink, ProviderError, Replica
from tierscale.providers.libvirt_entry import Entry
from tierscale.providers.libvirt_xml import domain_name

log = logging.getLogger("tierscale.libvirt")

IDLE_CHECK = 5.0  # how often a full pool re-checks its members (one may have been destroyed)


class PoolHost(Protocol):
    """What the pool needs of the libvirt provider (which it never imports)."""

    group: str
    revision: str
    events: EventSink
    boot_timeout: float
    health_path: str

    def scan(self) -> list[Entry]: ...

    def promote(self, e: Entry) -> Replica: ...

    def boot(self, replica_id: str, role: str, domain_type: str, transient: bool = False) -> Replica: ...

    def domain_type(self) -> str: ...

    def remove(self, name: str, grace: float) -> None: ...

    def remove_many(self, names: list[str], grace: float) -> None: ...

    def collect_garbage(self) -> None: ...

    def suspend(self, name: str) -> None: ...

    def raise_priority(self, name: str) -> None: ...

    def wait_serving(self, address: str, timeout: float, stop: threading.Event | None = None) -> bool: ...

    def wait_for_address(self, replica_id: str, timeout: float) -> bool: ...

    def address_of(self, replica_id: str) -> str | None: ...


class WarmPool:
    def __init__(self, provider: PoolHost, size: int) -> None:
        self.p = provider
        self.size = size
        self._take_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._failures = 0
        self.last_error: str | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        with self._start_lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name=f"warm-pool-{self.p.group}", daemon=True
                )
                self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ members
    def members(self) -> list[Entry]:
        return [e for e in self.p.scan() if e.owner.role == "pool"]

    def ready(self) -> list[Entry]:
        """Paused members of the current revision, oldest first. Pausing is the last thing the refill
        does to a member, so a paused one is finished (a member being booted is still running)."""
        current = (e for e in self.members() if e.paused_by_us and e.owner.revision == self.p.revision)
        return sorted(current, key=lambda e: e.owner.created)

    def take(self) -> Replica | None:
        """Resume a paused member as a replica; None when the pool is empty (the caller boots cold)."""
        with self._take_lock:
            try:
                candidates = self.ready()
            except ProviderError as exc:
                log.warning("%s: warm pool unavailable: %s", self.p.group, exc)
                return None
            for e in candidates:
                try:
                    replica = self.p.promote(e)
                except ProviderError as exc:
                    log.warning("%s: warm VM %s unusable (%s); removing it", self.p.group, e.name, exc)
                    self._remove_quietly(e.name)
                    continue
                log.info("%s: took warm VM %s from the pool", self.p.group, e.name)
                self._wake.set()  # refill in the background
                return replica
        return None

    def _remove_quietly(self, name: str) -> None:
        try:
            self.p.remove(name, grace=0.0)
        except ProviderError as exc:
            log.warning("%s: could not remove %s: %s", self.p.group, name, exc)

    # ------------------------------------------------------------------ refill loop
    def _run(self) -> None:
        self._startup_cleanup()
        while not self._stop.is_set():
            delay = IDLE_CHECK
            try:
                members = self.members()
                stale = [e.name for e in members if e.owner.revision != self.p.revision]
                if stale:  # booted from an older template: never handed out, replaced by current ones
                    self.p.remove_many(stale, grace=0.0)
                    members = [e for e in members if e.name not in stale]
                if len(members) < self.size:
                    self._fill_one()
                    self._failures = 0
                    self.last_error = None
                    delay = 0.0
            except ProviderError as exc:
                self._failures += 1
                delay = min(60.0, 2.0**self._failures)
                text = f"warm pool: {exc}; retrying in {delay:.0f}s"
                log.warning("%s: %s", self.p.group, text)
                if self.last_error != str(exc):  # one event per distinct failure, not one per retry
                    self._event("provider_error", text, {"error": str(exc), "error_type": type(exc).__name__})
                self.last_error = str(exc)
            except Exception:  # the pool is an optimisation: it must never take the provider down
                log.exception("%s: warm pool refill crashed", self.p.group)
                delay = 30.0
            if delay > 0:
                self._wake.wait(delay)
                self._wake.clear()

    def _event(self, kind: str, text: str, data: dict[str, str]) -> None:
        try:
            self.p.events(kind, text, data)
        except Exception as exc:  # the history is a convenience; never stop the pool over it
            log.debug("%s: event sink failed: %s", self.p.group, exc)

    def _startup_cleanup(self) -> None:
        """A running (not paused) member was being prepared by a controller that died, and a member of
        another revision will never be handed out: start over."""
        try:
            stale = [
                e.name for e in self.members() if not e.paused_by_us or e.owner.revision != self.p.revision
            ]
            self.p.remove_many(stale, grace=0.0)
            self.p.collect_garbage()
        except ProviderError as exc:
            log.warning("%s: warm pool cleanup: %s", self.p.group, exc)

    def _fill_one(self) -> None:
        rid = "r-" + secrets.token_hex(4)
        name = domain_name(self.p.group, rid)
        dtype = self.p.domain_type()
        started = time.monotonic()
        try:
            replica = self.p.boot(rid, "pool", dtype)
            address = replica.address
            if address is None and self.p.wait_for_address(rid, self.p.boot_timeout):
                address = self.p.address_of(rid)
            if address is None or not self.p.wait_serving(address, self.p.boot_timeout, self._stop):
                self._remove_quietly(name)
                if self._stop.is_set():
                    return
                raise ProviderError(
                    f"warm VM {name} did not answer {self.p.health_path} within {self.p.boot_timeout:.0f}s"
                )
            self.p.raise_priority(name)  # when resumed it serves at once, with the default weight
            self.p.suspend(name)
            log.info("%s: warm VM %s ready (booted in %.1fs)", self.p.group, name, time.monotonic() - started)
        except ProviderError:
            self._remove_quietly(name)
            raise
