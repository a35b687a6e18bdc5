"""Domain XML rendering and parsing, and the libvirt config keys: pure, no libvirtd needed."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from tierscale.config import ConfigError, load_config_text
from tierscale.providers.libvirt_xml import (
    OWNER_NS,
    QEMU_NS,
    DomainSpec,
    Owner,
    domain_name,
    parse_facts,
    parse_owner,
    render_domain,
    volume_xml,
)


def spec(**kw: object) -> DomainSpec:
    base: dict[str, object] = {
        "name": domain_name("web", "r-1"),
        "owner": Owner("web", "r-1", 1700000000.5),
        "domain_type": "qemu",
        "memory_bytes": 256 * 1024**2,
        "vcpus": 2,
        "guest_port": 80,
        "network": "user",
        "host_port": 40123,
        "kernel": "/img/vmlinux",
        "initrd": "/img/initrd.img",
        "cmdline": "console=ttyS0 tierscale.replica=r-1",
        "serial": "r-1",
    }
    base.update(kw)
    return DomainSpec(**base)  # type: ignore[arg-type]


def test_ownership_element_is_the_spec_one_and_round_trips() -> None:
    xml = render_domain(spec())
    root = ET.fromstring(xml)
    el = root.find(f"./metadata/{{{OWNER_NS}}}replica")
    assert el is not None and el.get("group") == "web" and el.get("id") == "r-1"
    assert 'xmlns:tierscale="urn:tierscale:replica:1"' in xml
    assert parse_owner(xml) == Owner("web", "r-1", 1700000000.5)
    # virDomainGetMetadata returns the element without its namespace prefix.
    assert parse_owner(Owner("web", "r-1", 5.0, "pool").element(prefixed=False)) == Owner(
        "web", "r-1", 5.0, "pool"
    )


def test_ownership_element_carries_revision_and_host_when_known() -> None:
    owner = Owner("web", "r-1", 5.0, revision="0123456789ab", host="qemu+ssh://kvm1/system")
    el = owner.element()
    assert 'revision="0123456789ab"' in el and 'host="qemu+ssh://kvm1/system"' in el
    assert parse_owner(el) == owner
    assert parse_owner(render_domain(spec(owner=owner))) == owner
    # An element written before revisions reads back with both empty.
    legacy = '<replica group="web" id="r-1" created="5.000"/>'
    assert parse_owner(legacy) == Owner("web", "r-1", 5.0, revision="", host="")


def test_foreign_or_broken_metadata_is_not_ours() -> None:
    assert parse_owner("<domain><name>x</name></domain>") is None
    assert parse_owner("<domain><metadata><other xmlns='urn:x'/></metadata></domain>") is None
    assert (
        parse_owner(f"<domain><metadata><t:replica xmlns:t='{OWNER_NS}' id='r'/></metadata></domain>") is None
    )
    assert parse_owner("not xml") is None


def test_user_network_forwards_a_loopback_port_through_the_qemu_namespace() -> None:
    root = ET.fromstring(render_domain(spec()))
    args = [a.get("value") for a in root.iter(f"{{{QEMU_NS}}}arg")]
    assert "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:40123-:80" in args
    assert "virtio-net-pci,netdev=n0,romfile=,addr=0x10" in args
    assert root.find("./devices/interface") is None
    facts = parse_facts(render_domain(spec()))
    assert (facts.host_port, facts.guest_port, facts.vcpus, facts.overlay) == (40123, 80, 2, None)


def test_a_remote_hypervisor_forwards_on_its_own_address_unrestricted() -> None:
    # restrict=on would drop the guest's replies to clients that are not the hypervisor's loopback.
    xml = render_domain(spec(host_addr="10.231.0.12"))
    args = [a.get("value") for a in ET.fromstring(xml).iter(f"{{{QEMU_NS}}}arg")]
    assert "user,id=n0,restrict=off,hostfwd=tcp:10.231.0.12:40123-:80" in args
    facts = parse_facts(xml)
    assert (facts.host_addr, facts.host_port, facts.guest_port) == ("10.231.0.12", 40123, 80)
    assert parse_facts(render_domain(spec())).host_addr == "127.0.0.1"


def test_libvirt_network_attaches_an_interface_and_no_forward() -> None:
    xml = render_domain(spec(network="backend", host_port=None))
    root = ET.fromstring(xml)
    assert root.find("./devices/interface[@type='network']/source").get("network") == "backend"
    assert not list(root.iter(f"{{{QEMU_NS}}}arg"))
    assert parse_facts(xml).network == "backend" and parse_facts(xml).host_port is None
    with pytest.raises(ValueError):
        render_domain(spec(host_port=None))


def test_identity_kernel_and_tcg_settings() -> None:
    root = ET.fromstring(render_domain(spec()))
    assert root.get("type") == "qemu"
    assert root.findtext("./os/kernel") == "/img/vmlinux"
    assert "tierscale.replica=r-1" in (root.findtext("./os/cmdline") or "")
    assert root.findtext("./sysinfo/system/entry[@name='serial']") == "r-1"
    assert root.find("./os/smbios").get("mode") == "sysinfo"
    assert root.find("./features/tcg/tb-cache").text == "32"
    assert root.find("./devices/memballoon").get("model") == "none"
    assert root.findtext("on_reboot") == "destroy"
    assert root.findtext("memory") == str(256 * 1024)
    assert root.find("cputune") is None
    booting = render_domain(spec(cpu_shares=64))
    assert ET.fromstring(booting).findtext("./cputune/shares") == "64"
    assert parse_facts(booting).cpu_shares == 64 and parse_facts(booting).domain_type == "qemu"
    kvm = ET.fromstring(render_domain(spec(domain_type="kvm")))
    assert kvm.get("type") == "kvm" and kvm.find("./features/tcg") is None
    assert kvm.find("cpu").get("mode") == "host-passthrough"


def test_disk_overlay_names_its_backing_image() -> None:
    xml = render_domain(spec(overlay="/pool/web/vm.qcow2", base_image="/img/base.qcow2"))
    root = ET.fromstring(xml)
    disk = root.find("./devices/disk")
    assert disk.find("source").get("file") == "/pool/web/vm.qcow2"
    assert disk.find("target").get("dev") == "vda"
    assert disk.find("./backingStore/source").get("file") == "/img/base.qcow2"
    assert disk.find("./backingStore/format").get("type") == "qcow2"
    assert parse_facts(xml).overlay == "/pool/web/vm.qcow2"
    no_kernel = ET.fromstring(
        render_domain(spec(kernel=None, initrd=None, cmdline=None, overlay="/p/v.qcow2"))
    )
    assert no_kernel.find("./os/boot").get("dev") == "hd" and no_kernel.find("./os/kernel") is None


def test_names_with_markup_are_escaped() -> None:
    xml = render_domain(spec(cmdline="a=<b> & 'c'", serial="x&y"))
    root = ET.fromstring(xml)  # well-formed
    assert root.findtext("./os/cmdline") == "a=<b> & 'c'"
    vol = ET.fromstring(volume_xml("v&1.qcow2", "/img/a&b.qcow2", "raw"))
    assert vol.findtext("name") == "v&1.qcow2" and vol.findtext("./backingStore/path") == "/img/a&b.qcow2"
    assert vol.find("./backingStore/format").get("type") == "raw"


LIBVIRT_GROUP = """\
groups:
  - name: vms
    tier: libvirt
    max: 3
    template: {template}
{extra}"""


def load(template: str, extra: str = "") -> object:
    return load_config_text(LIBVIRT_GROUP.format(template=template, extra=extra), "vm.yaml")


def test_libvirt_config_keys_and_defaults() -> None:
    cfg = load("{kernel: /k, initrd: /i}", "    warm_pool: {size: 2}")
    g = cfg.groups[0]  # type: ignore[attr-defined]
    assert g.warm_pool.size == 2
    t = g.template
    assert (t.uri, t.memory, t.vcpus, t.port, t.network, t.domain_type) == (
        "qemu:///system",
        256 * 1024**2,
        1,
        80,
        "user",
        "auto",
    )
    assert t.base_format == "qcow2" and t.overlay_dir is None
    assert load("{base_image: /b.qcow2}").groups[0].warm_pool.size == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("template", "extra", "needle"),
    [
        ("{kernel: /k}", "    warm_pool: {size: -1}", "warm_pool.size"),
        ("{kernel: /k}", "    warm_pool: {count: 1}", "warm_pool.count"),
        ("{kernel: /k, memory: 64MiB}", "", "template.memory: must be at least 128MiB"),
        ("{kernel: /k, domain_type: xen}", "", "template.domain_type"),
        ("{kernel: /k, base_format: vmdk}", "", "template.base_format"),
        ("{initrd: /i}", "", "needs base_image or kernel"),
    ],
)
def test_bad_libvirt_config_names_the_field(template: str, extra: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(template, extra)
    assert needle in str(err.value), str(err.value)


def test_remote_uri_with_user_networking_is_fine() -> None:
    # Its forwards listen on the hypervisor's own address (the URI's host), not on its loopback.
    cfg = load("{kernel: /k, uri: 'qemu+ssh://far.example/system'}")
    assert cfg.groups[0].template.network == "user"  # type: ignore[attr-defined]


def test_remote_uri_with_a_libvirt_network_is_fine() -> None:
    cfg = load("{kernel: /k, uri: 'qemu+ssh://far.example/system', network: default}")
    assert cfg.groups[0].template.network == "default"  # type: ignore[attr-defined]
