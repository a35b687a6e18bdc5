"""OpenStack tier: each replica is a Nova server, driven through openstacksdk (no CLI).

Ownership lives in Nova: every server we create carries the metadata `tierscale_group` and
`tierscale_replica` (SPEC §5), and `tierscale_revision` (the template revision), and is named
`<group>-<replica>`. `list` returns exactly the project's servers with this group's marks, so a restarted
controller adopts them and a hand-made server is never touched. A replica's host is the server's compute
host where the API shows it (admins), else the cloud's name.

`create` blocks (the controller runs it in a thread) until the server is ACTIVE or `boot_timeout` passes.
A server that ends in ERROR or does not boot in time is deleted at once and the call raises
`CreateRejected` with Nova's fault message; the controller records it and retries with exponential
backoff, so a cloud that cannot place the server ("No valid host") or has no quota left is never hit in a
tight create/delete loop. Errors are typed from the SDK's exception classes and HTTP statuses:
`TierUnavailable` (cloud unreachable, credentials refused), `TemplateError` (image, flavor or network not
found), `CreateRejected` (quota, no valid host), `ReplicaGone`.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import openstack.exceptions as os_exc

from tierscale.providers.base import (
    Capability,
    CreateRejected,
    EventSink,
    Listing,
    ProviderError,
    Replica,
    ReplicaStats,
    TemplateError,
    no_events,
)
from tierscale.providers.cpu_rate import CpuRate
from tierscale.providers.openstack_cloud import (
    SDK_ERRORS,
    Cloud,
    describe,
    error_class,
    http_status,
    open_cloud,
)
from tierscale.providers.openstack_servers import (
    CREATED_KEY,
    GROUP_KEY,
    REPLICA_KEY,
    REVISION_KEY,
    cpu_seconds,
    created_at,
    fault_message,
    flavor_vcpus,
    owned_by,
    pick_address,
    replica_state,
)

if TYPE_CHECKING:
    from tierscale.config.models import OpenstackTemplate

log = logging.getLogger("tierscale.openstack")

# Status polls while a server boots or goes away: quick at first (a fake or warm cloud answers in about a
# second), then spaced out to one call per 3 s: a booted server waits at most that long to be noticed,
# and ten booting servers cost about three calls a second.
POLL_FIRST = 0.5
POLL_MAX = 3.0
# Once diagnostics are refused (admin-only by default policy), ask again only this much later.
DIAGNOSTICS_RETRY = 600.0


@dataclass(frozen=True)
class Resolved:
    """The template's names turned into ids, looked up once per provider."""

    image_id: str
    flavor_id: str
    vcpus: int
    network_id: str | None
    network_name: str | None


@dataclass(frozen=True)
class OpenstackData:
    """What the OpenStack tier keeps on a `Replica` for itself (`Replica.ref` is the server id)."""

    name: str
    status: str
    vcpus: int | None  # from the flavor embedded in the server, when the API shows it
    fault: str | None  # Nova's fault of a server in ERROR


class OpenstackProvider:
    tier = "openstack"
    capabilities: frozenset[Capability] = frozenset({Capability.CONSOLE})

    def __init__(
        self,
        group: str,
        template: OpenstackTemplate,
        collect_cpu: bool = True,
        delete_timeout: float = 120.0,
        cloud: Cloud | None = None,
        *,
        revision: str,
        events: EventSink = no_events,
    ) -> None:
        self.group = group
        self.revision = revision
        self.events = events
        self.t = template
        self.collect_cpu = collect_cpu
        self.delete_timeout = delete_timeout
        self.cloud = cloud or open_cloud(template.cloud, field=f"groups[{group}].template.cloud")
        self._lock = threading.Lock()
        self._resolved: Resolved | None = None
        self._network_name: str | None = None
        # Servers whose create call is still waiting for ACTIVE: that call owns them (and deletes them if
        # they fail), so `list` does not report them as replicas of their own yet.
        self._inflight: set[str] = set()
        # per replica id: the previous diagnostics sample (guest CPU seconds)
        self._cpu = CpuRate(min_interval=0.05)
        self._diagnostics_denied_until = 0.0

    @property
    def conn(self) -> Any:
        return self.cloud.conn

    @property
    def api_calls(self) -> int:
        return self.cloud.api_calls

    @contextlib.contextmanager
    def _api(self, what: str, refused: type[ProviderError] = ProviderError) -> Iterator[None]:
        """SDK failures → typed one-line errors (`openstack_cloud.error_class`); `refused`: the class of
        an error answer to this call (creates: CreateRejected)."""
        try:
            yield
        except ProviderError:
            raise
        except SDK_ERRORS as exc:
            raise error_class(exc, refused)(f"{what}: {describe(exc, self.cloud)}") from exc

    # ---- name resolution -------------------------------------------------------------------------
    def _find(self, key: str, service: str, name_or_id: str) -> Any:
        """One image/flavor/network by name or id; a clear error naming the template key otherwise."""
        where = f"in cloud {self.cloud.name!r}"
        kind = key
        try:
            with self._api(f"template.{key}: looking up {kind} {name_or_id!r}"):
                # Inside the guard: the first touch of a service proxy authenticates and discovers versions.
                finder = getattr(getattr(self.conn, service), f"find_{kind}")
                return finder(name_or_id, ignore_missing=False)
        except ProviderError as exc:
            cause = exc.__cause__
            if isinstance(cause, os_exc.DuplicateResource):
                raise TemplateError(
                    f"template.{key}: several {kind}s are named {name_or_id!r} {where}: give its id"
                ) from None
            if isinstance(cause, os_exc.NotFoundException):
                raise TemplateError(f"template.{key}: {kind} {name_or_id!r} not found {where}") from None
            raise

    def _resolve(self) -> Resolved:
        with self._lock:
            if self._resolved is not None:
                return self._resolved
        t = self.t
        image = self._find("image", "image", t.image)
        flavor = self._find("flavor", "compute", t.flavor)
        network_id = network_name = None
        if t.network:
            net = self._find("network", "network", t.network)
            network_id, network_name = net.id, net.name
        resolved = Resolved(image.id, flavor.id, int(flavor.vcpus or 1), network_id, network_name)
        with self._lock:
            self._resolved = resolved
            self._network_name = network_name
        return resolved

    def _address_network(self) -> str | None:
        """The name under which Nova lists the configured network's addresses (it keys them by name)."""
        if not self.t.network:
            return None
        if self._network_name is None:
            try:
                net = self._find("network", "network", self.t.network)
                self._network_name = net.name
            except ProviderError as exc:
                log.warning("%s: %s; assuming %r is the network's name", self.group, exc, self.t.network)
                return self.t.network
        return self._network_name

    # ---- Provider --------------------------------------------------------------------------------
    def _replica(self, server: Any, rid: str, now: float) -> Replica | None:
        md = server.metadata or {}
        born = created_at(md, server.created_at, now)
        state = replica_state(server.status, server.task_state, now - born, self.t.boot_timeout)
        if state is None:
            return None
        address = pick_address(server.addresses, self._address_network(), self.t.port)
        data = OpenstackData(
            name=server.name or "",
            status=server.status or "",
            vcpus=flavor_vcpus(server.flavor),
            fault=fault_message(server.fault) if server.status == "ERROR" else None,
        )
        return Replica(
            rid,
            self.group,
            address if state == "running" else None,
            state,
            born,
            revision=str(md.get(REVISION_KEY) or ""),  # "" on servers made before revisions
            host=str(getattr(server, "compute_host", None) or self.cloud.name),
            ref=str(server.id),
            tier_data=data,
        )

    def list(self) -> Listing:
        with self._api("list servers"):
            servers = list(self.conn.compute.servers(details=True))
        now = time.time()
        with self._lock:
            inflight = set(self._inflight)
        out: dict[str, Replica] = {}
        for server in sorted(servers, key=lambda s: s.created_at or ""):
            rid = owned_by(server.metadata, self.group)
            if rid is None or server.id in inflight:
                continue
            replica = self._replica(server, rid, now)
            if replica is None:
                continue
            if rid in out:
                # Two servers with one replica id should never happen; if it does, show the second under
                # its own id so the controller sees (and scales away) both instead of orphaning one.
                replica = dataclasses.replace(replica, id=f"{rid}-{server.id[:8]}")
            out[replica.id] = replica
        return Listing(out.values())

    def create(self, replica_id: str) -> Replica:
        r = self._resolve()
        t = self.t
        name = f"{self.group}-{replica_id}"
        born = time.time()
        attrs: dict[str, Any] = {
            "name": name,
            "image_id": r.image_id,
            "flavor_id": r.flavor_id,
            "metadata": {
                GROUP_KEY: self.group,
                REPLICA_KEY: replica_id,
                CREATED_KEY: f"{born:.3f}",
                REVISION_KEY: self.revision,
            },
            # `networks` is mandatory from microversion 2.37 on (the SDK negotiates the newest): with neither
            # key in the template, "auto" is Nova's old default (the project's only network, or one made
            # for it).
            "networks": [{"uuid": r.network_id}] if r.network_id else (t.networks or "auto"),
        }
        if t.key_name:
            attrs["key_name"] = t.key_name
        if t.security_groups:
            attrs["security_groups"] = [{"name": sg} for sg in t.security_groups]
        if t.user_data:
            attrs["user_data"] = base64.b64encode(t.user_data.encode()).decode()
        with self._api(f"create server {name}", refused=CreateRejected):
            server = self.conn.compute.create_server(**attrs)
        with self._lock:
            self._inflight.add(server.id)
        try:
            server = self._wait_active(server.id, name, born)
        finally:
            with self._lock:
                self._inflight.discard(server.id)
        replica = self._replica(server, replica_id, time.time())
        if replica is None:  # deleted behind our back the moment it came up
            raise CreateRejected(f"server {name} disappeared right after it became ACTIVE")
        return replica

    def _wait_active(self, server_id: str, name: str, born: float) -> Any:
        deadline = born + self.t.boot_timeout
        interval = POLL_FIRST
        status = "BUILD"
        while True:
            time.sleep(min(interval, max(0.0, deadline - time.time())))
            interval = min(POLL_MAX, interval * 1.5)
            try:
                server = self.conn.compute.get_server(server_id)
            except os_exc.NotFoundException:
                raise CreateRejected(f"server {name} disappeared while booting") from None
            except SDK_ERRORS as exc:
                # A flaky API while the server boots is not the server's failure; keep asking until the
                # deadline.
                log.warning("%s: status of %s: %s", self.group, name, describe(exc, self.cloud))
                server = None
            if server is not None:
                status = server.status or "?"
                if status == "ACTIVE":
                    return server
                if status == "ERROR":
                    reason = fault_message(server.fault)
                    cleanup = self._destroy(server_id, name)
                    raise CreateRejected(f"server {name} went to ERROR: {reason}; {cleanup}")
            if time.time() >= deadline:
                cleanup = self._destroy(server_id, name)
                raise CreateRejected(
                    f"server {name} not ACTIVE after boot_timeout {self.t.boot_timeout:g}s "
                    f"(status {status}); {cleanup}"
                )

    def _destroy(self, server_id: str, name: str) -> str:
        """Delete a server that failed to boot; says what happened, for the error message."""
        try:
            self._delete_and_wait(server_id, name)
        except ProviderError as exc:
            return f"deleting it failed too ({exc}); it will be removed on a later pass"
        return "deleted it"

    def _delete_and_wait(self, server_id: str, name: str) -> None:
        with self._api(f"delete server {name}"):
            self.conn.compute.delete_server(server_id, ignore_missing=True)
        deadline = time.time() + self.delete_timeout
        interval = POLL_FIRST
        while True:
            try:
                server = self.conn.compute.get_server(server_id)
            except os_exc.NotFoundException:
                return
            except SDK_ERRORS as exc:
                log.warning("%s: status of %s: %s", self.group, name, describe(exc, self.cloud))
                server = None
            if server is not None and (server.status or "").upper() in ("DELETED", "SOFT_DELETED"):
                return
            if time.time() >= deadline:
                status = server.status if server is not None else "unknown"
                raise ProviderError(
                    f"server {name} still there {self.delete_timeout:g}s after delete ({status})"
                )
            time.sleep(interval)
            interval = min(POLL_MAX, interval * 1.5)

    def delete(self, replica: Replica, grace: float = 5.0) -> None:
        """Delete the server and wait until Nova no longer has it.

        The controller has already taken the replica out of the balancer and waited for its requests to
        finish; Nova's delete then powers the guest off, so `grace` has nothing left to do here.
        """
        self._cpu.forget(replica.id)
        # A replica known only by its id (not from a listing) is found by its marks; none: already gone.
        server_ids = [replica.ref] if replica.ref else self._servers_of(replica.id)
        for server_id in server_ids:
            self._delete_and_wait(server_id, _name(replica))

    def _servers_of(self, replica_id: str) -> list[str]:
        with self._api("list servers"):
            servers = list(self.conn.compute.servers(details=True))
        return [str(s.id) for s in servers if owned_by(s.metadata, self.group) == replica_id]

    def console_output(self, replica: Replica) -> str:
        """The server's console log (what `health.type: console` searches for its marker)."""
        if not replica.ref:
            return ""
        with self._api(f"console of {_name(replica)}"):
            body = self.conn.compute.get_server_console_output(replica.ref)
        return str((body or {}).get("output") or "")

    def stats(self, replicas: list[Replica]) -> dict[str, ReplicaStats]:
        """CPU from Nova's server diagnostics: the guest's CPU time, differenced between two calls.

        Diagnostics are admin-only under Nova's default policy. When the cloud refuses them this raises
        once (the controller records the event) and then returns nothing for a while: the cpu metric has
        no data on such clouds, and the balancer's requests_per_replica / latency_p95_ms are the metrics
        to scale on.
        """
        if not self.collect_cpu or time.monotonic() < self._diagnostics_denied_until:
            return {}
        out: dict[str, ReplicaStats] = {}
        seen: set[str] = set()
        for r in replicas:
            server_id = r.ref
            if r.state != "running" or not server_id:
                continue
            seen.add(r.id)
            try:
                diag = self.conn.compute.get_server_diagnostics(server_id)
            except os_exc.NotFoundException:
                continue  # gone since the listing
            except SDK_ERRORS as exc:
                status = http_status(exc)
                if status in (403, 501):
                    self._diagnostics_denied_until = time.monotonic() + DIAGNOSTICS_RETRY
                    why = "admin-only on this cloud" if status == 403 else "not supported by this hypervisor"
                    raise ProviderError(
                        f"server diagnostics are {why} ({describe(exc, self.cloud)}): the cpu metric has no "
                        "data; scale on requests_per_replica or latency_p95_ms instead"
                    ) from None
                if status == 409:
                    continue  # not running right now (e.g. rebooting)
                raise error_class(exc)(f"diagnostics of {r.id}: {describe(exc, self.cloud)}") from exc
            data = r.tier_data if isinstance(r.tier_data, OpenstackData) else None
            vcpus = (data.vcpus if data else None) or (self._resolved.vcpus if self._resolved else 1)
            allot = vcpus * 1000
            memory = None
            md = diag.memory_details or {}
            if isinstance(md.get("used"), int | float):
                memory = int(md["used"] * 1024 * 1024)  # Nova reports MiB
            cpu = cpu_seconds(diag.cpu_details)
            pct: float | None = None
            if cpu is not None:  # a rate needs two samples: None on the first
                pct = self._cpu.percent(r.id, cpu, allot)
            if pct is None and cpu is None:
                # Some drivers give only a utilisation percentage per vCPU.
                utils = [c.get("utilisation") for c in diag.cpu_details or ()]
                if utils and all(isinstance(u, int | float) for u in utils):
                    pct = float(sum(utils)) / len(utils)  # type: ignore[arg-type]
            if pct is None and memory is None:
                continue  # first sample: a rate needs two
            out[r.id] = ReplicaStats(cpu_percent=pct, cpu_allotment_milli=allot, memory_bytes=memory)
        self._cpu.retain(seen)
        return out

    def close(self) -> None:
        self._cpu.clear()
        with contextlib.suppress(Exception):
            self.cloud.close()


def _name(replica: Replica) -> str:
    data = replica.tier_data
    return data.name if isinstance(data, OpenstackData) and data.name else replica.id
