"""libvirt tier: each replica is a QEMU/KVM virtual machine, driven through libvirt-python.

Create: a persistent domain is defined first (its ownership element marks it ours, with the template
revision and the libvirt URI, before anything else exists), then its qcow2 overlay on the golden image is
made through libvirt's storage API, then it is started. Any failure on the way removes what was made and
raises a typed `ProviderError` (`TemplateError` for sources that are missing or out of QEMU's reach,
`CreateRejected` otherwise, `TierUnavailable` when libvirtd is gone), so the controller records it and
retries with backoff. The replica's identity reaches the guest twice: kernel command line
`tierscale.replica=ID` (kernel boots) and the SMBIOS system serial (any image).

List: domains named `tierscale-<group>-*` whose metadata says group=<group> (SPEC §5); a restarted
controller adopts them, and no other domain is ever looked at twice or touched.

Delete: ACPI shutdown with `grace` seconds to finish, then destroy, undefine, remove the overlay.

Stats: one `virConnectDomainListGetStats` call for all replicas; CPU % from `cpu.time` deltas over wall
time and vCPUs (`cpu_rate`).

Networking `user`: QEMU user networking forwards a free port to the guest's service port, on 127.0.0.1
for a local hypervisor and on the hypervisor's own address (its URI's host) for a remote one, which is
where a balancer elsewhere can reach it; the address is read back from the domain XML, so it survives a
controller restart. Networking `<name>`: the
domain joins that libvirt network and its address comes from DHCP leases, ARP or the guest agent.

`domain_type: auto`: `kvm` if libvirt offers KVM there and a probe guest actually boots under it, else
`qemu` (TCG); see `libvirt_probe`. Warm pool: see `libvirt_pool`. Both depend on this module only
through a small Protocol; what only the provider sees (the domain type chosen, warm-pool failures) goes
to the `events` sink it was built with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import http.client
import logging
import os
import secrets
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import libvirt

from tierscale.addresses import AddressError, format_address, split_address
from tierscale.providers.base import (
    Capability,
    CreateRejected,
    EventSink,
    HostInfo,
    Listing,
    NoConsole,
    ProviderError,
    Replica,
    ReplicaGone,
    ReplicaStats,
    TemplateError,
    TierState,
    TierUnavailable,
    no_events,
)
from tierscale.providers.cpu_rate import CpuRate
from tierscale.providers.libvirt_conn import Connection, error_code, system_errno
from tierscale.providers.libvirt_entry import Entry, first_ipv4, is_local_uri
from tierscale.providers.libvirt_pool import WarmPool
from tierscale.providers.libvirt_probe import choose_domain_type
from tierscale.providers.libvirt_storage import OverlayStore
from tierscale.providers.libvirt_xml import (
    DEFAULT_CMDLINE,
    NAME_PREFIX,
    OWNER_NS,
    OWNER_PREFIX,
    DomainFacts,
    DomainSpec,
    Owner,
    domain_name,
    parse_facts,
    parse_owner,
    render_domain,
)

if TYPE_CHECKING:
    from tierscale.config.models import LibvirtGroup, LibvirtTemplate

log = logging.getLogger("tierscale.libvirt")

SYSTEM_OVERLAY_DIR = "/var/lib/libvirt/images/tierscale"
SESSION_OVERLAY_DIR = "~/.local/share/libvirt/images/tierscale"
MIN_SAMPLE_INTERVAL = 0.5  # s: a CPU delta over less than this is mostly noise
# A booting VM's CPU weight against the host's other VMs (cgroup cpu.shares; 1024 is the default): under
# TCG a boot burns ~1.5 core-seconds, and a VM that already serves must not be starved meanwhile, or its
# QEMU accepts connections late (its forwarded port has a listen backlog of 1) and requests time out.
# The weight goes back to the default as soon as the guest answers its health path.
BOOT_SHARES = 256
SERVING_SHARES = 1024
PORT_ATTEMPTS = 3  # a forwarded port taken between choosing it and QEMU binding it: choose again
LOOPBACK = "127.0.0.1"
# Forwarded ports on a remote hypervisor, which tierscale cannot bind-test from here: chosen in this range
# (clear of Linux's ephemeral ports, 32768-60999) and chosen again when QEMU finds one taken.
REMOTE_PORTS = (20000, 32767)
# libvirt errors that say the domain definition itself is wrong: the template must change.
_TEMPLATE_CODES = frozenset(
    {
        libvirt.VIR_ERR_XML_ERROR,
        libvirt.VIR_ERR_XML_DETAIL,
        libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
        libvirt.VIR_ERR_NO_SUPPORT,
        libvirt.VIR_ERR_INVALID_ARG,
    }
)
_TEMPLATE_ERRNOS = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOTDIR})

__all__ = ["Entry", "LibvirtData", "LibvirtProvider", "first_ipv4", "is_local_uri", "make_libvirt_provider"]


def default_overlay_dir(uri: str) -> str:
    if urlsplit(uri).path.rstrip("/").endswith("session"):
        return str(Path(SESSION_OVERLAY_DIR).expanduser())
    return SYSTEM_OVERLAY_DIR


@dataclass(frozen=True)
class LibvirtData:
    """What the libvirt tier keeps on a `Replica` for itself (`Replica.ref` is the domain name)."""

    domain_type: str  # kvm | qemu
    overlay: str | None  # the qcow2 overlay tierscale made for it


def _unsearchable(paths: list[str]) -> str | None:
    """The first directory above one of `paths` that other users cannot enter: QEMU runs as its own
    user (libvirt-qemu on Debian) and cannot open what lies below it."""
    for path in paths:
        for parent in Path(path).parents:
            try:
                if not parent.stat().st_mode & 0o001:
                    return str(parent)
            except OSError:
                continue
    return None


class LibvirtProvider(NoConsole):
    tier = "libvirt"
    # No CONSOLE: the serial console is a pty for `virsh console`; nothing logs it to read back.
    capabilities: frozenset[Capability] = frozenset()

    def __init__(
        self,
        group: str,
        template: LibvirtTemplate,
        warm_pool: int = 0,
        health_path: str = "/healthz",
        boot_timeout: float = 60.0,
        *,
        revision: str,
        events: EventSink = no_events,
    ) -> None:
        self.group = group
        self.revision = revision
        self.events = events
        self.host = template.uri  # what replicas are stamped with: the hypervisor, as libvirt names it
        self.local = is_local_uri(template.uri)
        if self.local:
            # libvirtd resolves paths against its own working directory: make relative ones (as in
            # examples/libvirt.yaml) relative to where tierscale runs, which is what the user meant.
            paths = {
                k: os.path.abspath(v)
                for k in ("kernel", "initrd", "base_image")
                if (v := getattr(template, k))
            }
            template = template.model_copy(update=paths)
        self.t = template
        self.health_path = health_path
        self.boot_timeout = boot_timeout
        self.conn = Connection(template.uri)
        self._forward_addr: str | None = LOOPBACK if self.local else None
        self.prefix = f"{NAME_PREFIX}{group}-"
        overlay_dir = template.overlay_dir or default_overlay_dir(template.uri)
        self.store = OverlayStore(self.conn, group, overlay_dir) if template.base_image else None
        self._lock = threading.Lock()
        self._busy: set[str] = set()  # domain names this provider is creating or deleting right now
        self._ports: dict[str, int] = {}  # forwarded ports chosen by this provider, by domain name
        self._facts: dict[str, DomainFacts] = {}  # by domain UUID: the XML parts that never change
        self._addresses: dict[str, str] = {}  # by domain UUID: addresses found on libvirt networks
        self._doms: dict[str, tuple[int, libvirt.virDomain]] = {}  # by name: (connection generation, dom)
        self._cpu = CpuRate(min_interval=MIN_SAMPLE_INTERVAL)  # per replica id
        self._domain_type: str | None = None if template.domain_type == "auto" else template.domain_type
        self._type_lock = threading.Lock()
        self._watching: set[str] = set()  # booting VMs whose CPU weight goes up once they serve
        self._closing = threading.Event()
        self.pool: WarmPool | None = WarmPool(self, warm_pool) if warm_pool > 0 else None

    # ------------------------------------------------------------------ scanning
    def scan(self) -> list[Entry]:
        """Every domain of this group, any role, with its state: one listing, one stats call for the
        domains named like ours, one metadata read each. Other domains are not looked at further."""

        def states(c: libvirt.virConnect) -> list[tuple[libvirt.virDomain, dict[str, Any]]]:
            for attempt in range(3):
                named = [d for d in c.listAllDomains(0) if d.name().startswith(self.prefix)]
                if not named:
                    return []
                try:
                    return c.domainListGetStats(named, libvirt.VIR_DOMAIN_STATS_STATE, 0)
                except libvirt.libvirtError as exc:
                    # One was undefined between the two calls: list again.
                    if error_code(exc) != libvirt.VIR_ERR_NO_DOMAIN or attempt == 2:
                        raise
            return []

        def scan(c: libvirt.virConnect) -> list[Entry]:
            out: list[Entry] = []
            for dom, rec in states(c):
                name = dom.name()
                try:
                    owner = parse_owner(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, OWNER_NS, 0))
                except libvirt.libvirtError as exc:
                    if error_code(exc) in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_DOMAIN_METADATA):
                        continue  # gone meanwhile, or named like ours but not ours: never touched
                    raise
                if owner is None or owner.group != self.group:
                    continue
                uuid = dom.UUIDString()
                facts = self._facts.get(uuid)
                if facts is None:
                    try:
                        facts = parse_facts(dom.XMLDesc(0))
                    except libvirt.libvirtError as exc:
                        if error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                            continue
                        raise
                    self._facts[uuid] = facts
                state = int(rec.get("state.state", libvirt.VIR_DOMAIN_NOSTATE))
                out.append(Entry(dom, name, owner, facts, state, int(rec.get("state.reason", 0))))
            return out

        entries = self.conn.call("list domains", scan)
        gen = self.conn.generation
        with self._lock:
            self._doms = {e.name: (gen, e.dom) for e in entries}
        for e in entries:
            # Adopted mid-boot (the previous controller died before the guest served): watch it too.
            if (
                e.owner.role == "replica"
                and e.facts.cpu_shares == BOOT_SHARES
                and e.facts.host_port is not None
                and e.state == libvirt.VIR_DOMAIN_RUNNING
            ):
                self._watch_boot(e.name, format_address(e.facts.host_addr, e.facts.host_port))
        return entries

    def _state(self, e: Entry) -> TierState:
        if e.name in self._busy:
            return "provisioning"
        if e.state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED, libvirt.VIR_DOMAIN_PAUSED):
            # A paused replica serves nothing; health checks find that out and have it replaced.
            return "running"
        if e.state == libvirt.VIR_DOMAIN_SHUTDOWN:
            return "stopped"
        return "failed"  # shut off or crashed: the controller deletes and replaces it

    def _address(self, e: Entry) -> str | None:
        if e.facts.host_port is not None:
            return format_address(e.facts.host_addr, e.facts.host_port)
        uuid = e.dom.UUIDString()
        if uuid in self._addresses:
            return self._addresses[uuid]
        if e.state != libvirt.VIR_DOMAIN_RUNNING:
            return None
        addr = self._network_address(e.dom)
        if addr is not None:
            self._addresses[uuid] = addr
        return addr

    def _network_address(self, dom: libvirt.virDomain) -> str | None:
        """The guest's IPv4 address on its libvirt network: DHCP lease, then ARP, then the guest agent."""
        for source in (
            libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
            libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP,
            libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT,
        ):
            try:
                ifaces = dom.interfaceAddresses(source, 0) or {}
            except libvirt.libvirtError:
                continue
            addr = first_ipv4(ifaces)
            if addr:
                return format_address(addr, self.t.port)
        return None

    def replica_of(self, e: Entry) -> Replica:
        return Replica(
            id=e.owner.id,
            group=self.group,
            address=self._address(e),
            state=self._state(e),
            created_at=e.owner.created,
            revision=e.owner.revision,  # "" on domains made before revisions
            host=e.owner.host,
            ref=e.name,
            tier_data=LibvirtData(e.facts.domain_type, e.facts.overlay or None),
        )

    # ------------------------------------------------------------------ Provider
    def list(self) -> Listing:
        return Listing(self.replica_of(e) for e in self.scan() if e.owner.role == "replica")

    def create(self, replica_id: str) -> Replica:
        self._start_background()
        if self.pool is not None:
            taken = self.pool.take()
            if taken is not None:
                return taken
        replica = self.boot(replica_id, "replica", self.domain_type())
        if replica.address is not None:
            self._watch_boot(replica.ref, replica.address)
        return replica

    def delete(self, replica: Replica, grace: float = 5.0) -> None:
        self.remove(replica.ref or domain_name(self.group, replica.id), grace)
        self._cpu.forget(replica.id)

    def stats(self, replicas: list[Replica]) -> dict[str, ReplicaStats]:
        self._start_background()
        if not replicas:
            return {}
        by_name = {domain_name(self.group, r.id): r.id for r in replicas}
        gen = self.conn.generation
        with self._lock:
            doms = [d for name, (g, d) in self._doms.items() if name in by_name and g == gen]
        if not doms:
            return {}
        flags = (
            libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
            | libvirt.VIR_DOMAIN_STATS_VCPU
            | libvirt.VIR_DOMAIN_STATS_BALLOON
        )

        def get(c: libvirt.virConnect) -> list[tuple[libvirt.virDomain, dict[str, Any]]]:
            try:
                return c.domainListGetStats(doms, flags, 0)
            except libvirt.libvirtError as exc:
                if error_code(exc) != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
                # One of them went away since the last listing: the rest still get their sample.
                alive = [d for d in doms if _exists(d)]
                return c.domainListGetStats(alive, flags, 0) if alive else []

        records = self.conn.call("read domain stats", get)
        now = time.monotonic()
        out: dict[str, ReplicaStats] = {}
        for dom, rec in records:
            rid = by_name.get(dom.name())
            if rid is None or "cpu.time" not in rec:
                continue
            vcpus = int(rec.get("vcpu.current") or self.t.vcpus or 1)
            allot_milli = round(self.t.cpus * 1000) if self.t.cpus else vcpus * 1000
            # First sight (or a restarted QEMU): no delta yet, None. Asked again right away (the loop
            # woke early): the last value stands, the baseline stays.
            pct = self._cpu.percent(rid, int(rec["cpu.time"]) / 1e9, allot_milli, at=now)
            rss_kib = rec.get("balloon.rss") or rec.get("balloon.current")
            out[rid] = ReplicaStats(
                cpu_percent=pct,
                cpu_allotment_milli=allot_milli,
                memory_bytes=int(rss_kib) * 1024 if rss_kib else None,
            )
        return out

    def host_info(self) -> HostInfo:
        """The hypervisor's CPUs and memory (virNodeGetInfo) and its free memory (virNodeGetFreeMemory)."""

        def read(conn: libvirt.virConnect) -> HostInfo:
            info = conn.getInfo()  # [model, memory MiB, cpus, mhz, nodes, sockets, cores, threads]
            return HostInfo(
                self.host,
                True,
                cpus=float(info[2]),
                memory_bytes=int(info[1]) * 1024**2,
                free_memory_bytes=int(conn.getFreeMemory()),
            )

        return self.conn.call("reading the hypervisor's capacity", read)

    def retire(self) -> None:
        """Replaced by a provider of the same group (a rollout to another revision): stop the warm pool
        and let go of the connection, nothing more. The new provider's pool removes the paused VMs of
        this revision itself; removing "leftovers" here would take its fresh members (and overlays it
        is creating) as well."""
        self._closing.set()
        try:
            if self.pool is not None:
                self.pool.stop()
        finally:
            self.conn.close()
            self._cpu.clear()

    def close(self) -> None:
        """Stop the warm pool and remove its paused VMs (they serve nobody without a controller), remove
        overlays nothing uses, and the storage pool if it is empty. Replicas keep running."""
        self._closing.set()
        try:
            if self.pool is not None:
                self.pool.stop()
            leftovers = [e.name for e in self.scan() if e.owner.role != "replica"]
            self.remove_many(leftovers, grace=0.0)
            self.collect_garbage()
            if self.store is not None:
                self.store.remove_if_empty()
        except ProviderError as exc:
            log.warning("%s: cleanup on close incomplete: %s", self.group, exc)
        finally:
            self.conn.close()
            self._cpu.clear()

    # ------------------------------------------------------------------ boot
    def domain_type(self) -> str:
        if self._domain_type is not None:
            return self._domain_type
        with self._type_lock:
            if self._domain_type is None:
                dtype, reason = choose_domain_type(self)
                self._domain_type = dtype
                text = f"domain_type auto: using {dtype} ({'KVM' if dtype == 'kvm' else 'TCG'}): {reason}"
                (log.info if dtype == "kvm" else log.warning)("%s: %s", self.group, text)
                self._event("provider_info", text, {"domain_type": dtype, "reason": reason})
            return self._domain_type

    def _check_sources(self) -> None:
        """Missing files on a local host get a message naming the template key, before anything is made."""
        if not self.local:
            return  # the paths are on the remote host; libvirt's own error names them
        for key in ("base_image", "kernel", "initrd"):
            path = getattr(self.t, key)
            if path is not None and not os.path.isfile(path):
                raise TemplateError(f"template.{key} {path} does not exist")

    def forward_addr(self) -> str:
        """The IPv4 address forwards listen on: loopback here, the URI's host (resolved) for a remote one."""
        if self._forward_addr is None:
            host = urlsplit(self.t.uri).hostname or ""
            try:
                infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
            except OSError as exc:
                raise CreateRejected(f"cannot resolve the hypervisor's address {host!r}: {exc}") from None
            self._forward_addr = str(infos[0][4][0])
        return self._forward_addr

    def _choose_port(self) -> int:
        """A port that none of this group's VMs forwards, free on loopback when the hypervisor is local
        (callers hold `_lock`)."""
        used = set(self._ports.values()) | {f.host_port for f in self._facts.values() if f.host_port}
        if not self.local:
            rng = secrets.SystemRandom()
            for _ in range(50):
                port = rng.randint(*REMOTE_PORTS)
                if port not in used:
                    return port
        for _ in range(50):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in used:
                return port
        raise CreateRejected("no free loopback port for the VM's forward")

    def _cmdline(self, replica_id: str, overlay: bool) -> str | None:
        if not self.t.kernel:
            return None
        parts = [self.t.cmdline if self.t.cmdline is not None else DEFAULT_CMDLINE]
        if self.t.cmdline is None:
            tsc = self.conn.tsc_khz()
            if tsc:
                parts.append(f"tsc_early_khz={tsc}")
        if overlay and "root=" not in parts[0]:
            parts.append("root=/dev/vda rw")
        parts.append(
            f"tierscale.replica={replica_id} tierscale.group={self.group} tierscale.port={self.t.port}"
        )
        return " ".join(parts)

    def _network_for(self, role: str) -> str:
        # A local KVM probe guest is reached through a forwarded port whatever the group's network is.
        return "user" if role == "probe" and self.local else self.t.network

    def spec(
        self,
        name: str,
        owner: Owner,
        domain_type: str,
        port: int | None,
        overlay: str | None,
        host_addr: str = LOOPBACK,
    ) -> DomainSpec:
        return DomainSpec(
            name=name,
            owner=owner,
            domain_type=domain_type,
            memory_bytes=self.t.memory,
            vcpus=self.t.vcpus,
            guest_port=self.t.port,
            network=self._network_for(owner.role),
            host_port=port,
            host_addr=host_addr,
            kernel=self.t.kernel,
            initrd=self.t.initrd,
            cmdline=self._cmdline(owner.id, overlay is not None),
            overlay=overlay,
            base_image=self.t.base_image,
            base_format=self.t.base_format,
            serial=owner.id,
            # Only where tierscale can tell when the guest serves (a forwarded port); not for probes.
            cpu_shares=BOOT_SHARES if port is not None and owner.role != "probe" else None,
        )

    def boot(self, replica_id: str, role: str, domain_type: str, transient: bool = False) -> Replica:
        """Define (or, transient, create) and start one VM; on failure nothing of it is left."""
        name = domain_name(self.group, replica_id)
        created = time.time()
        owner = Owner(self.group, replica_id, created, role, revision=self.revision, host=self.host)
        volume = f"{name}.qcow2"
        overlay = self.store.volume_path(volume) if self.store is not None else None
        with self._lock:
            self._busy.add(name)
        dom: libvirt.virDomain | None = None
        made_volume = False
        try:
            self._check_sources()
            user_net = self._network_for(role) == "user"
            host_addr = self.forward_addr() if user_net else LOOPBACK
            for attempt in range(PORT_ATTEMPTS):
                port = None
                if user_net:
                    with self._lock:
                        port = self._choose_port()
                        self._ports[name] = port
                xml = render_domain(self.spec(name, owner, domain_type, port, overlay, host_addr))
                c = self.conn.get()
                try:
                    if not transient:
                        # Defined before its disk exists: from here on a crash leaves a shut-off domain
                        # that carries our mark, which the next controller lists as failed and removes.
                        dom = c.defineXML(xml)
                    if self.store is not None and not made_volume:
                        self.store.create(volume, self.t.base_image, self.t.base_format)
                        made_volume = True
                    if transient:
                        # AUTODESTROY: if this process dies mid-probe, libvirtd destroys the guest.
                        dom = c.createXML(xml, libvirt.VIR_DOMAIN_START_AUTODESTROY)
                    else:
                        assert dom is not None
                        dom.create()
                    break
                except libvirt.libvirtError as exc:
                    # QEMU could not bind the forward: the port was taken between choosing and binding
                    # it (told from the port's state, not from QEMU's words).
                    if (
                        port is not None
                        and attempt + 1 < PORT_ATTEMPTS
                        and not _port_is_free(host_addr, port, self.local)
                    ):
                        log.info("%s: port %s taken meanwhile; choosing another", name, port)
                        self._undefine(dom)
                        dom = None
                        continue
                    raise self.conn.translate(exc, "start", refused=self._refusal(exc)) from None
            uuid = dom.UUIDString() if dom is not None else ""
            facts = parse_facts(xml)
            with self._lock:
                if uuid:
                    self._facts[uuid] = facts
                    self._doms[name] = (self.conn.generation, dom)
        except ProviderError as exc:
            self._discard(name, dom, volume if made_volume else None)
            kind: type[ProviderError] = type(exc)
            hint = ""
            # Told from the file system, not from QEMU's words: a source QEMU's user cannot reach.
            blocked = None
            if self.local and not isinstance(exc, TemplateError | TierUnavailable):
                blocked = _unsearchable(self._sources())
            if blocked is not None:
                kind = TemplateError
                hint = (
                    f" ({blocked} is not searchable by other users: QEMU runs as its own user, libvirt-qemu"
                    " on Debian, and every directory above the image and kernel files must be searchable"
                    " by it)"
                )
            raise kind(f"VM {name} did not start: {exc}{hint}") from None
        finally:
            with self._lock:
                self._busy.discard(name)
        address = format_address(facts.host_addr, facts.host_port) if facts.host_port is not None else None
        return Replica(
            replica_id,
            self.group,
            address,
            "running",
            created,
            revision=self.revision,
            host=self.host,
            ref=name,
            tier_data=LibvirtData(domain_type, overlay),
        )

    def _sources(self) -> list[str]:
        return [p for k in ("base_image", "kernel", "initrd") if (p := getattr(self.t, k))]

    @staticmethod
    def _refusal(exc: libvirt.libvirtError) -> type[ProviderError]:
        """What a failed define/start means: a definition or source problem (TemplateError), or the host
        refusing this VM now (CreateRejected: memory, a busy device, QEMU exiting)."""
        if error_code(exc) in _TEMPLATE_CODES or system_errno(exc) in _TEMPLATE_ERRNOS:
            return TemplateError
        return CreateRejected

    def _undefine(self, dom: libvirt.virDomain | None) -> None:
        if dom is None:
            return
        with contextlib.suppress(libvirt.libvirtError):
            if dom.isActive():
                dom.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            if dom.isPersistent():
                dom.undefine()

    def _discard(self, name: str, dom: libvirt.virDomain | None, volume: str | None) -> None:
        """Best-effort removal of a half-made VM (the error that got us here is what gets reported)."""
        try:
            self._undefine(dom)
            if volume is not None and self.store is not None:
                self.store.delete(volume)
        except ProviderError as exc:
            log.warning("%s: could not remove half-made VM: %s", name, exc)
        with self._lock:
            self._ports.pop(name, None)

    # ------------------------------------------------------------------ remove
    def remove(self, name: str, grace: float) -> None:
        """Graceful shutdown (ACPI power button) for up to `grace` s, destroy, undefine, remove overlay."""
        with self._lock:
            self._busy.add(name)
        try:
            dom = self._lookup(name)
            if dom is not None:
                owner = self._owner_of(dom)
                if owner is None or owner.group != self.group:
                    raise ProviderError(f"domain {name} does not carry this group's mark; not touching it")
                self._stop(dom, grace)
                try:
                    if dom.isPersistent():
                        dom.undefine()
                except libvirt.libvirtError as exc:
                    if error_code(exc) != libvirt.VIR_ERR_NO_DOMAIN:
                        raise self.conn.translate(exc, f"undefine {name}") from None
                with contextlib.suppress(libvirt.libvirtError):
                    self._facts.pop(dom.UUIDString(), None)
                    self._addresses.pop(dom.UUIDString(), None)
            if self.store is not None:
                self.store.delete(f"{name}.qcow2")
        finally:
            with self._lock:
                self._busy.discard(name)
                self._ports.pop(name, None)
                self._doms.pop(name, None)

    def remove_many(self, names: list[str], grace: float) -> None:
        """Remove several VMs in parallel (destroying one takes 1.5-2 s of QEMU teardown)."""
        if not names:
            return
        with ThreadPoolExecutor(max_workers=min(8, len(names))) as ex:
            futures = [ex.submit(self.remove, n, grace) for n in names]
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise ProviderError(f"{len(errors)} VM(s) not removed: {errors[0]}")

    def _lookup(self, name: str) -> libvirt.virDomain | None:
        def lookup(c: libvirt.virConnect) -> libvirt.virDomain | None:
            try:
                return c.lookupByName(name)
            except libvirt.libvirtError as exc:
                if error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise

        return self.conn.call(f"look up {name}", lookup)

    def _owner_of(self, dom: libvirt.virDomain) -> Owner | None:
        try:
            return parse_owner(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, OWNER_NS, 0))
        except libvirt.libvirtError as exc:
            if error_code(exc) in (libvirt.VIR_ERR_NO_DOMAIN_METADATA, libvirt.VIR_ERR_NO_DOMAIN):
                return None
            raise self.conn.translate(exc, "read domain metadata") from None

    def _stop(self, dom: libvirt.virDomain, grace: float) -> None:
        name = dom.name()
        try:
            state = dom.state()[0]
        except libvirt.libvirtError as exc:
            if error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                return
            raise self.conn.translate(exc, f"read state of {name}") from None
        if state == libvirt.VIR_DOMAIN_RUNNING and grace > 0:
            with contextlib.suppress(libvirt.libvirtError):
                dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                try:
                    if not dom.isActive():
                        return
                except libvirt.libvirtError:
                    return
                time.sleep(0.1)
        for attempt in range(2):
            try:
                if not dom.isActive():
                    return
                dom.destroy()
                return
            except libvirt.libvirtError as exc:
                if error_code(exc) in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
                    return
                # QEMU can take longer to exit than libvirt waits under load ("Device or resource busy").
                if attempt == 1:
                    raise self.conn.translate(exc, f"destroy {name}") from None
                time.sleep(1.0)

    def collect_garbage(self) -> None:
        """Overlays whose domain no longer exists (a crash between undefine and removing the file)."""
        if self.store is None:
            return
        names = {e.name for e in self.scan()}
        with self._lock:
            busy = set(self._busy)
        for vol in self.store.names():
            dom_name = vol.removesuffix(".qcow2")
            ours = vol.endswith(".qcow2") and dom_name.startswith(self.prefix)
            if ours and dom_name not in names and dom_name not in busy:
                log.info("%s: removing orphaned overlay %s", self.group, vol)
                self.store.delete(vol)

    # ------------------------------------------------------------------ pool support
    def promote(self, e: Entry) -> Replica:
        """A warm-pool VM becomes a replica: re-mark it, then resume it."""
        # Its revision and host stay those it was booted with (the pool hands out current ones only).
        owner = dataclasses.replace(e.owner, created=time.time(), role="replica")
        with self._lock:
            self._busy.add(e.name)
        try:
            flags = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG
            e.dom.setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                owner.element(prefixed=False),
                OWNER_PREFIX,
                OWNER_NS,
                flags,
            )
            e.dom.resume()
        except libvirt.libvirtError as exc:
            raise self.conn.translate(exc, f"resume warm VM {e.name}") from None
        finally:
            with self._lock:
                self._busy.discard(e.name)
        e = Entry(e.dom, e.name, owner, e.facts, libvirt.VIR_DOMAIN_RUNNING)
        return self.replica_of(e)

    def suspend(self, name: str) -> None:
        dom = self._lookup(name)
        if dom is None:
            raise ReplicaGone(f"{name} vanished before it could be paused")
        try:
            dom.suspend()
        except libvirt.libvirtError as exc:
            raise self.conn.translate(exc, f"pause {name}") from None

    def wait_serving(self, address: str, timeout: float, stop: threading.Event | None = None) -> bool:
        """Poll GET `health_path` on `address` until it answers 2xx; False after `timeout` (or `stop`)."""
        try:
            host, port = split_address(address)
        except AddressError:
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (stop and stop.is_set()):
            conn = http.client.HTTPConnection(host, port, timeout=0.5)
            try:
                conn.request("GET", self.health_path)
                if 200 <= conn.getresponse().status < 300:
                    return True
            except (OSError, http.client.HTTPException):
                pass
            finally:
                conn.close()
            time.sleep(0.1)
        return False

    def address_of(self, replica_id: str) -> str | None:
        """The VM's address on its libvirt network, if it has one yet."""
        dom = self._lookup(domain_name(self.group, replica_id))
        return self._network_address(dom) if dom is not None else None

    def wait_for_address(self, replica_id: str, timeout: float) -> bool:
        """Poll the libvirt network's leases (and ARP, agent) until the VM has an address."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.address_of(replica_id) is not None:
                return True
            time.sleep(0.5)
        return False

    def _watch_boot(self, name: str, address: str) -> None:
        """In the background: once the guest answers, give it the default CPU weight."""
        with self._lock:
            if name in self._watching or self._closing.is_set():
                return
            self._watching.add(name)

        def watch() -> None:
            try:
                if self.wait_serving(address, self.boot_timeout, self._closing):
                    self.raise_priority(name)
            except ProviderError as exc:
                log.debug("%s: %s", name, exc)
            finally:
                with self._lock:
                    self._watching.discard(name)

        threading.Thread(target=watch, name=f"boot-{name}", daemon=True).start()

    def raise_priority(self, name: str) -> None:
        """The booting VM serves now: back to the default CPU weight (live and in its definition)."""
        dom = self._lookup(name)
        if dom is None:
            return
        params = {"cpu_shares": SERVING_SHARES}
        try:
            # Definition first: whoever sees the live weight change can rely on the definition having it too.
            if dom.isPersistent():
                dom.setSchedulerParametersFlags(params, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
            if dom.isActive():
                dom.setSchedulerParametersFlags(params, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            uuid = dom.UUIDString()
        except libvirt.libvirtError as exc:
            if error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                return
            raise self.conn.translate(exc, f"set the CPU weight of {name}") from None
        with self._lock:
            facts = self._facts.get(uuid)
            if facts is not None:
                self._facts[uuid] = dataclasses.replace(facts, cpu_shares=SERVING_SHARES)

    def _start_background(self) -> None:
        # Only the controller calls create/stats: `down` and one-off listings never boot pool VMs.
        if self.pool is not None:
            self.pool.start()

    def _event(self, kind: str, text: str, data: dict[str, Any]) -> None:
        """What only the provider sees, to the sink it was built with (the controller records it)."""
        try:
            self.events(kind, text, data)
        except Exception as exc:  # the history is a convenience; never fail a VM operation over it
            log.debug("%s: event sink failed: %s", self.group, exc)


def _port_is_free(addr: str, port: int, local: bool) -> bool:
    """Here: nothing has it bound. On a remote host: nothing answers on it (what can be told from here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        if local:
            try:
                s.bind((addr, port))
            except OSError:
                return False
            return True
        s.settimeout(2.0)
        return s.connect_ex((addr, port)) != 0


def _exists(dom: libvirt.virDomain) -> bool:
    try:
        dom.info()
        return True
    except libvirt.libvirtError:
        return False


def make_libvirt_provider(
    group: LibvirtGroup, *, revision: str, events: EventSink = no_events
) -> LibvirtProvider:
    """The provider for a validated `tier: libvirt` group."""
    return LibvirtProvider(
        group.name,
        group.template,
        warm_pool=group.warm_pool.size,
        health_path=group.health.path,
        boot_timeout=max(10.0, group.health.startup_grace),
        revision=revision,
        events=events,
    )
