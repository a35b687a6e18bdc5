"""Domain XML for tierscale VMs, and reading back what a domain's XML says about it.

Rendering is pure (a `DomainSpec` in, a string out) so it is tested without libvirt. Parsing reads only
what tierscale wrote: the ownership element (SPEC §5) and the host port of the user-network forward.

Networking, `network: user`: QEMU user networking with a loopback host forward, passed through libvirt's
QEMU namespace because Debian 12's libvirt drops `<portForward>` (no passt). The NIC sits at PCI slot
0x10 so it never takes slot 2 from a virtio disk; `restrict=on` stops the guest from opening outbound
connections (the forward still works).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

OWNER_NS = "urn:tierscale:replica:1"
OWNER_PREFIX = "tierscale"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
NAME_PREFIX = "tierscale-"

# Fast, quiet boot of a Linux guest under TCG (see shared/notes/vm-tier.md); `tsc_early_khz` is added
# when the host's TSC frequency is known, or guests booting together can see their clock run ~7x fast.
# cryptomgr.notests skips the crypto self-tests: ~0.4 s of the cloud kernel's ~2.3 s boot under TCG.
DEFAULT_CMDLINE = (
    "console=ttyS0 quiet panic=-1 mitigations=off 8250.nr_uarts=1 no_timer_check tsc=reliable "
    "cryptomgr.notests"
)

_HOSTFWD = re.compile(r"hostfwd=tcp:([0-9.]+):(\d+)-:(\d+)")


def domain_name(group: str, replica_id: str) -> str:
    return f"{NAME_PREFIX}{group}-{replica_id}"


ROLES = ("replica", "pool", "probe")


@dataclass(frozen=True)
class Owner:
    """The ownership element: which group and replica a domain is, and tierscale's bookkeeping.

    SPEC §5 names `group` and `id`; `created` (wall-clock seconds it became a replica), `role`,
    `revision` (the template revision it was booted from) and `host` (the libvirt URI it was made
    through) are tierscale's own additions; the last two are "" on domains made before revisions. Only
    role "replica" is a replica; "pool" is a paused warm-pool VM and "probe" the short-lived guest that
    tells whether KVM works, both outside the balancer.
    """

    group: str
    id: str
    created: float
    role: str = "replica"
    revision: str = ""
    host: str = ""

    def element(self, prefixed: bool = True) -> str:
        """`<tierscale:replica .../>` for the domain XML; unprefixed for `virDomainSetMetadata`."""
        created = f"{self.created:.3f}"
        attrs = f"group={quoteattr(self.group)} id={quoteattr(self.id)} created={quoteattr(created)}"
        if self.role != "replica":
            attrs += f" role={quoteattr(self.role)}"
        if self.revision:
            attrs += f" revision={quoteattr(self.revision)}"
        if self.host:
            attrs += f" host={quoteattr(self.host)}"
        if not prefixed:
            return f"<replica {attrs}/>"
        return f'<{OWNER_PREFIX}:replica xmlns:{OWNER_PREFIX}="{OWNER_NS}" {attrs}/>'


def parse_owner(xml: str) -> Owner | None:
    """The ownership element from a domain's XML or from `virDomainGetMetadata`; None if not ours."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    tag = f"{{{OWNER_NS}}}replica"
    # virDomainGetMetadata hands back the element without its namespace; the domain XML has it.
    el = root if root.tag in (tag, "replica") else root.find(f"./metadata/{tag}")
    if el is None:
        return None
    group, rid = el.get("group"), el.get("id")
    if not group or not rid:
        return None
    try:
        created = float(el.get("created") or 0.0)
    except ValueError:
        created = 0.0
    role = el.get("role") or "replica"
    return Owner(
        group=group,
        id=rid,
        created=created,
        role=role if role in ROLES else "replica",
        revision=el.get("revision") or "",
        host=el.get("host") or "",
    )


@dataclass(frozen=True)
class DomainFacts:
    """What tierscale needs from a domain's XML besides ownership."""

    vcpus: int
    host_port: int | None  # the host port forwarded to the guest (network: user)
    guest_port: int | None
    overlay: str | None  # the disk file tierscale created for it
    network: str | None  # the libvirt network it is attached to (network: <name>)
    domain_type: str = "qemu"  # kvm | qemu
    cpu_shares: int | None = None  # <cputune><shares>: the boot-time weight until the guest serves
    host_addr: str = "127.0.0.1"  # where the forward listens: loopback, or a remote host's own address


def parse_facts(xml: str) -> DomainFacts:
    root = ET.fromstring(xml)
    vcpu_el = root.find("vcpu")
    vcpus = int(vcpu_el.text or "1") if vcpu_el is not None and (vcpu_el.text or "").isdigit() else 1
    host_port = guest_port = None
    host_addr = "127.0.0.1"
    for arg in root.iter(f"{{{QEMU_NS}}}arg"):
        m = _HOSTFWD.search(arg.get("value") or "")
        if m:
            host_addr, host_port, guest_port = m.group(1), int(m.group(2)), int(m.group(3))
    overlay = None
    for disk in root.findall("./devices/disk"):
        src = disk.find("source")
        if disk.get("device") == "disk" and src is not None and src.get("file"):
            overlay = src.get("file")
            break
    network = None
    iface = root.find("./devices/interface[@type='network']/source")
    if iface is not None:
        network = iface.get("network")
    shares_text = root.findtext("./cputune/shares") or ""
    shares = int(shares_text) if shares_text.isdigit() else None
    return DomainFacts(
        vcpus, host_port, guest_port, overlay, network, root.get("type") or "qemu", shares, host_addr
    )


@dataclass(frozen=True)
class DomainSpec:
    name: str
    owner: Owner
    domain_type: str  # kvm | qemu
    memory_bytes: int
    vcpus: int
    guest_port: int
    network: str  # "user" or a libvirt network name
    host_port: int | None = None  # network: user
    host_addr: str = "127.0.0.1"  # network: user: the address the forward listens on
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None  # the full kernel command line (kernel boots only)
    overlay: str | None = None  # the per-VM qcow2 on top of `base_image`
    base_image: str | None = None
    base_format: str = "qcow2"
    serial: str = ""  # SMBIOS system serial: the replica id, for guests that read it from there
    cpu_shares: int | None = None  # CPU weight against the host's other VMs (None: libvirt's default)
    extra_devices: list[str] = field(default_factory=list)


def _disk_xml(spec: DomainSpec) -> str:
    if spec.overlay is None:
        return ""
    backing = ""
    if spec.base_image is not None:
        backing = (
            f"<backingStore type='file'><format type={quoteattr(spec.base_format)}/>"
            f"<source file={quoteattr(spec.base_image)}/></backingStore>"
        )
    return (
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2' discard='unmap'/>"
        f"<source file={quoteattr(spec.overlay)}/>{backing}<target dev='vda' bus='virtio'/></disk>"
    )


def render_domain(spec: DomainSpec) -> str:
    """The complete domain XML for one tierscale VM."""
    kib = spec.memory_bytes // 1024
    os_parts = ["<type arch='x86_64'>hvm</type>"]
    if spec.kernel:
        os_parts.append(f"<kernel>{escape(spec.kernel)}</kernel>")
        if spec.initrd:
            os_parts.append(f"<initrd>{escape(spec.initrd)}</initrd>")
        if spec.cmdline:
            os_parts.append(f"<cmdline>{escape(spec.cmdline)}</cmdline>")
    else:
        os_parts.append("<boot dev='hd'/>")
    os_parts.append("<smbios mode='sysinfo'/>")
    features = ["<acpi/>"]  # the ACPI power button is how libvirt asks a guest to shut down
    if spec.domain_type == "qemu":
        # TCG's translation cache defaults to a quarter of guest RAM per VM; 32 MiB keeps RSS down at
        # no measurable cost (8 MiB made requests ~5x slower).
        features.append("<tcg><tb-cache unit='MiB'>32</tb-cache></tcg>")
    cpu = "<cpu mode='host-passthrough'/>" if spec.domain_type == "kvm" else ""
    devices = [
        _disk_xml(spec),
        # A console for `virsh console` when debugging a guest; nothing reads it otherwise.
        "<serial type='pty'><target port='0'/></serial><console type='pty'><target type='serial'/></console>",
        "<controller type='usb' model='none'/>",
        "<memballoon model='none'/>",
    ]
    qemu_args: list[str] = []
    if spec.network == "user":
        if spec.host_port is None:
            raise ValueError("network user needs a host port")
        # restrict=on (the guest can open no connection out) drops the guest's replies to any source but
        # the host's loopback, which slirp maps into the guest's 10.0.2.0/24; a forward on a remote
        # hypervisor's own address serves clients elsewhere, so there it must be off (measured).
        restrict = "on" if spec.host_addr == "127.0.0.1" else "off"
        fwd = f"hostfwd=tcp:{spec.host_addr}:{spec.host_port}-:{spec.guest_port}"
        qemu_args = [
            "-netdev",
            f"user,id=n0,restrict={restrict},{fwd}",
            "-device",
            "virtio-net-pci,netdev=n0,romfile=,addr=0x10",
        ]
    else:
        devices.append(
            f"<interface type='network'><source network={quoteattr(spec.network)}/>"
            "<model type='virtio'/></interface>"
            # The guest agent, when the image runs one, reports the address if DHCP leases do not.
            "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
        )
    devices.extend(spec.extra_devices)
    cputune = f"<cputune><shares>{spec.cpu_shares}</shares></cputune>" if spec.cpu_shares else ""
    qemu_cmd = ""
    if qemu_args:
        qemu_cmd = (
            "<qemu:commandline>"
            + "".join(f"<qemu:arg value={quoteattr(a)}/>" for a in qemu_args)
            + "</qemu:commandline>"
        )
    return (
        f"<domain type={quoteattr(spec.domain_type)} xmlns:qemu='{QEMU_NS}'>"
        f"<name>{escape(spec.name)}</name>"
        f"<metadata>{spec.owner.element()}</metadata>"
        f"<memory unit='KiB'>{kib}</memory><currentMemory unit='KiB'>{kib}</currentMemory>"
        f"<vcpu placement='static'>{spec.vcpus}</vcpu>{cputune}"
        "<sysinfo type='smbios'><system>"
        "<entry name='manufacturer'>tierscale</entry><entry name='product'>tierscale replica</entry>"
        f"<entry name='serial'>{escape(spec.serial)}</entry>"
        "</system></sysinfo>"
        f"<os>{''.join(os_parts)}</os>"
        f"<features>{''.join(features)}</features>{cpu}"
        "<clock offset='utc'/>"
        # A guest that powers off, reboots or crashes is finished: it shows as shut off, the controller
        # replaces it (a reboot loop would otherwise look alive while serving nothing).
        "<on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>"
        f"<devices>{''.join(d for d in devices if d)}</devices>"
        f"{qemu_cmd}"
        "</domain>"
    )


def volume_xml(name: str, base_image: str | None, base_format: str) -> str:
    """A qcow2 overlay volume on top of the golden image (capacity: the base's)."""
    backing = ""
    if base_image is not None:
        backing = (
            f"<backingStore><path>{escape(base_image)}</path><format type={quoteattr(base_format)}/>"
            "</backingStore>"
        )
    return (
        f"<volume><name>{escape(name)}</name><target><format type='qcow2'/>"
        "<permissions><mode>0600</mode></permissions></target>"
        f"{backing}</volume>"
    )


def pool_xml(name: str, path: str) -> str:
    return (
        f"<pool type='dir'><name>{escape(name)}</name>"
        f"<target><path>{escape(path)}</path><permissions><mode>0711</mode></permissions></target></pool>"
    )
