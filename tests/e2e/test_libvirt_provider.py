"""The libvirt provider against the real libvirtd and real QEMU (TCG) guests booted from the demo image."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import libvirt
import pytest

from helpers.e2e import wait_for
from helpers.libvirt import (
    OVERLAY_ROOT,
    group_domains,
    overlay_files,
    storage_pool_exists,
    vm_group_config,
    vm_template,
)
from tierscale.config.models import LibvirtTemplate
from tierscale.config.revision import template_revision
from tierscale.eventstore import EventStore
from tierscale.providers import (
    Capability,
    CreateRejected,
    Listing,
    ProviderError,
    Replica,
    TemplateError,
    TierUnavailable,
    make_provider,
)
from tierscale.providers.libvirt import LibvirtData, LibvirtProvider
from tierscale.providers.libvirt_xml import OWNER_NS, Owner

pytestmark = pytest.mark.e2e


class Events(list[tuple[str, str, dict[str, Any]]]):
    """An EventSink that keeps what the provider said."""

    def __call__(self, kind: str, message: str, data: Mapping[str, Any]) -> None:
        self.append((kind, message, dict(data)))


def provider_for(
    tmp_path: Path, group: str, template: str, extra: str = "", events: Events | None = None
) -> LibvirtProvider:
    cfg, _ = vm_group_config(tmp_path / "state", group, template, extra=extra)
    p = make_provider(cfg.groups[0], tmp_path / "state", events if events is not None else Events())
    assert isinstance(p, LibvirtProvider)
    assert p.revision == template_revision(cfg.groups[0].template)
    return p


def get_json(address: str, path: str, timeout: float = 10.0) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=timeout) as resp:
        return json.loads(resp.read())


def test_create_list_stats_delete(
    tmp_path: Path, vm_group: str, vm_image: dict[str, Path], libvirtd: Any
) -> None:
    p = provider_for(tmp_path, vm_group, vm_template(vm_image))
    assert Capability.CONSOLE not in p.capabilities  # the serial console is a pty nothing logs
    r = p.create("r-0000aaaa")
    assert r.id == "r-0000aaaa" and r.address and r.address.startswith("127.0.0.1:")
    assert (r.revision, r.host, r.ref) == (p.revision, "qemu:///system", f"tierscale-{vm_group}-r-0000aaaa")
    assert r.tier_data == LibvirtData("qemu", None)
    dom = libvirtd.lookupByName(r.ref)
    meta = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, OWNER_NS, 0)
    assert f'revision="{p.revision}"' in meta and 'host="qemu:///system"' in meta
    # Booting, it yields the CPU to VMs that already serve; once it answers, it gets the default weight.
    assert dom.schedulerParameters()["cpu_shares"] == 256
    assert p.wait_serving(r.address, 40), "guest never answered /healthz"
    wait_for(lambda: dom.schedulerParameters()["cpu_shares"] == 1024, 10, what="the serving CPU weight")
    assert "<shares>1024</shares>" in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    # The guest knows which replica it is (kernel command line and SMBIOS serial).
    assert get_json(r.address, "/work?ms=1")["instance"] == "r-0000aaaa"

    listed = p.list()
    assert isinstance(listed, Listing) and not listed.unreachable
    assert [(x.id, x.address, x.state) for x in listed] == [("r-0000aaaa", r.address, "running")]
    # A restarted controller adopts it: a new provider (here of a changed template, so another revision)
    # finds it from the domain's metadata alone, with the revision and host it was made with.
    again = provider_for(tmp_path, vm_group, vm_template(vm_image, memory="192MiB"))
    assert again.revision != p.revision
    assert [(x.id, x.address, x.revision, x.host, x.ref) for x in again.list()] == [
        ("r-0000aaaa", r.address, p.revision, "qemu:///system", r.ref)
    ]

    first = p.stats(listed)  # the first sample has no delta yet
    assert first["r-0000aaaa"].cpu_percent is None and first["r-0000aaaa"].cpu_allotment_milli == 1000
    stop = time.monotonic() + 3
    while time.monotonic() < stop:  # keep the one vCPU busy: 50 ms of CPU per request, back to back
        get_json(r.address, "/work?ms=50")
    busy = p.stats(p.list())["r-0000aaaa"]
    assert busy.cpu_percent is not None and busy.cpu_percent > 20, busy
    assert busy.memory_bytes and busy.memory_bytes > 32 * 1024**2
    time.sleep(2)
    idle = p.stats(p.list())["r-0000aaaa"]
    assert idle.cpu_percent is not None and idle.cpu_percent < busy.cpu_percent

    p.delete(listed[0], grace=10.0)
    assert p.list() == [] and group_domains(libvirtd, vm_group) == []
    p.delete(listed[0], grace=1.0)  # already gone: not an error
    again.delete(Replica("r-0000aaaa", vm_group, None, "running", 0.0), grace=1.0)  # known by id only
    p.close()
    again.close()


def test_overlay_on_the_golden_image_is_made_and_removed(
    tmp_path: Path, vm_group: str, vm_image: dict[str, Path], libvirtd: Any
) -> None:
    p = provider_for(tmp_path, vm_group, vm_template(vm_image, disk=True))
    r = p.create("r-0000bbbb")
    assert isinstance(r.tier_data, LibvirtData) and r.tier_data.overlay is not None
    overlay = r.tier_data.overlay
    assert overlay == str(OVERLAY_ROOT / vm_group / f"tierscale-{vm_group}-r-0000bbbb.qcow2")
    assert overlay_files(vm_group) == [Path(overlay).name]
    assert p.list()[0].tier_data == r.tier_data  # read back from the domain XML
    xml = libvirtd.lookupByName(r.ref).XMLDesc(0)
    assert str(vm_image["base"]) in xml  # the linked clone's backing file is the golden image
    assert r.address and p.wait_serving(r.address, 40)
    assert get_json(r.address, "/work?ms=1")["instance"] == "r-0000bbbb"
    p.delete(r, grace=10.0)
    assert overlay_files(vm_group) == []
    p.close()
    # The group's storage pool and its directory go with the last overlay.
    assert not storage_pool_exists(libvirtd, vm_group)
    assert not (OVERLAY_ROOT / vm_group).exists()


def test_domains_without_our_mark_are_never_touched(
    tmp_path: Path, vm_group: str, vm_image: dict[str, Path], libvirtd: Any
) -> None:
    p = provider_for(tmp_path, vm_group, vm_template(vm_image))
    shape = (
        "<domain type='qemu'><name>{name}</name>{meta}<memory unit='MiB'>128</memory>"
        "<os><type arch='x86_64'>hvm</type></os></domain>"
    )
    foreign = libvirtd.defineXML(shape.format(name=f"tierscale-{vm_group}-r-nometa", meta=""))
    other_meta = Owner("someone-else", "r-other", 1.0).element()
    other = libvirtd.defineXML(
        shape.format(name=f"tierscale-{vm_group}-r-other", meta=f"<metadata>{other_meta}</metadata>")
    )
    # Ours, from before revisions: its mark has no revision or host.
    legacy_meta = Owner(vm_group, "r-legacy", 1.0).element()
    assert "revision=" not in legacy_meta
    legacy = libvirtd.defineXML(
        shape.format(name=f"tierscale-{vm_group}-r-legacy", meta=f"<metadata>{legacy_meta}</metadata>")
    )
    try:
        (old,) = p.list()
        assert (old.id, old.state, old.revision, old.host) == ("r-legacy", "failed", "", "")
        p.delete(old, grace=0.0)
        for rid in ("r-nometa", "r-other"):
            with pytest.raises(ProviderError, match="does not carry this group's mark"):
                p.delete(Replica(rid, vm_group, None, "running", 0.0), grace=0.0)
        assert set(group_domains(libvirtd, vm_group)) == {foreign.name(), other.name()}
        p.close()
        assert set(group_domains(libvirtd, vm_group)) == {foreign.name(), other.name()}
    finally:
        foreign.undefine()
        other.undefine()
        if legacy.name() in group_domains(libvirtd, vm_group):
            legacy.undefine()


def test_unreachable_libvirtd_is_tier_unavailable(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"")
    uri = f"qemu+unix:///system?socket={tmp_path}/no-libvirt-sock"
    template = LibvirtTemplate(uri=uri, kernel=str(kernel), domain_type="qemu")
    p = LibvirtProvider("g", template, revision="r1")
    gone = Replica("r-1", "g", None, "running", 0.0)
    for call in (p.list, lambda: p.create("r-1"), lambda: p.delete(gone, 0.0)):
        with pytest.raises(TierUnavailable, match="cannot connect to libvirt at qemu\\+unix"):
            call()
    p.close()


def assert_nothing_left(conn: Any, group: str) -> None:
    assert group_domains(conn, group) == []
    assert overlay_files(group) == []


def test_missing_base_image_fails_clearly_and_leaves_nothing(
    tmp_path: Path, vm_group: str, vm_image: dict[str, Path], libvirtd: Any
) -> None:
    template = vm_template(vm_image, disk=True).replace(str(vm_image["base"]), str(tmp_path / "nope.qcow2"))
    p = provider_for(tmp_path, vm_group, template)
    with pytest.raises(TemplateError, match=r"template\.base_image .*nope\.qcow2 does not exist"):
        p.create("r-0000cccc")
    assert_nothing_left(libvirtd, vm_group)
    p.close()


def test_missing_kernel_fails_clearly(
    tmp_path: Path, vm_group: str, vm_image: dict[str, Path], libvirtd: Any
) -> None:
    template = vm_template(vm_image).replace(str(vm_image["kernel"]), str(tmp_path / "vmlinux-gone"))
    p = provider_for(tmp_path, vm_group, template)
    with pytest.raises(TemplateError, match=r"template\.kernel .*vmlinux-gone does not exist"):
        p.create("r-0000dddd")
    assert_nothing_left(libvirtd, vm_group)
    p.close()


def test_qemu_refusing_the_kernel_removes_the_half_made_domain_and_overlay(
    tmp_path: Path, vm_group: str, vm_image: dict[str, Path], libvirtd: Any
) -> None:
    # A file that exists but is no kernel: libvirt defines the domain, the overlay is made, and then QEMU
    # refuses to start. Both must be gone afterwards.
    bogus = tmp_path / "not-a-kernel"
    bogus.write_bytes(b"\0" * 4096)
    template = vm_template(vm_image, disk=True).replace(str(vm_image["kernel"]), str(bogus))
    p = provider_for(tmp_path, vm_group, template)
    with pytest.raises((TemplateError, CreateRejected), match="did not start") as err:
        p.create("r-0000eeee")
    # pytest's tmp_path is private (0700): the hint names the directory QEMU's user cannot enter.
    if not (tmp_path.stat().st_mode & 0o001):
        assert isinstance(err.value, TemplateError) and "is not searchable by other users" in str(err.value)
    assert_nothing_left(libvirtd, vm_group)
    p.close()
    assert not storage_pool_exists(libvirtd, vm_group)


def test_domain_type_auto_probes_once_and_says_which(
    tmp_path: Path, vm_group: str, vm_image: dict[str, Path], libvirtd: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    state = tmp_path / "state"
    store = EventStore(state / "events.db")
    events = Events()
    cfg, _ = vm_group_config(state, vm_group, vm_template(vm_image, domain_type="auto"), startup_grace="12s")
    p = make_provider(cfg.groups[0], state, events)
    assert isinstance(p, LibvirtProvider)
    r = p.create("r-0000ffff")
    assert isinstance(r.tier_data, LibvirtData)
    chosen = r.tier_data.domain_type
    assert chosen in ("kvm", "qemu")
    assert libvirtd.lookupByName(r.ref).XMLDesc(0).startswith(f"<domain type='{chosen}'")
    # What the provider has to say goes to its sink; the event store is the controller's alone.
    said = [(m, d) for k, m, d in events if k == "provider_info"]
    assert len(said) == 1 and f"using {chosen}" in said[0][0] and said[0][1]["domain_type"] == chosen
    assert store.events(vm_group) == []
    cache = json.loads((tmp_path / "cache/tierscale/libvirt-domain-type.json").read_text())
    assert [v["domain_type"] for v in cache.values()] == [chosen]
    # The probe guest is gone; only the replica is left.
    assert group_domains(libvirtd, vm_group) == [r.ref]
    assert r.address and p.wait_serving(r.address, 40)
    # A second provider on this host reads the answer from the cache instead of probing again.
    p2 = make_provider(cfg.groups[0], state, events)
    started = time.monotonic()
    assert p2.domain_type() == chosen  # type: ignore[attr-defined]
    assert time.monotonic() - started < 5, "the cached answer should not boot a probe guest"
    p.delete(r, grace=5.0)
    p.close()
    p2.close()
    store.close()


def test_warm_pool_resumes_a_paused_vm_and_refills(
    tmp_path: Path, vm_group: str, vm_image: dict[str, Path], libvirtd: Any
) -> None:
    p = provider_for(tmp_path, vm_group, vm_template(vm_image), extra="    warm_pool: {size: 1}")

    def paused() -> list[str]:
        out = []
        for name in group_domains(libvirtd, vm_group):
            dom = libvirtd.lookupByName(name)
            if dom.state() == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER]:
                out.append(name)
        return out

    assert p.list() == [] and group_domains(libvirtd, vm_group) == []  # listing alone boots nothing
    p.stats([])  # what the controller's first pass does: the pool starts filling
    member = wait_for(lambda: paused(), 60, interval=0.5, what="a paused warm-pool VM")[0]
    assert p.list() == []  # pool members are not replicas
    meta = libvirtd.lookupByName(member).metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, OWNER_NS, 0)
    assert 'role="pool"' in meta and f'revision="{p.revision}"' in meta

    r = p.create("r-asked4me")
    assert f"tierscale-{vm_group}-{r.id}" == member  # the paused VM, not a new boot
    assert r.address and p.wait_serving(r.address, 10)
    assert get_json(r.address, "/work?ms=1")["instance"] == r.id
    assert [(x.id, x.revision, x.host) for x in p.list()] == [(r.id, p.revision, "qemu:///system")]
    meta = libvirtd.lookupByName(member).metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, OWNER_NS, 0)
    assert "role=" not in meta and f'revision="{p.revision}"' in meta

    refill = wait_for(lambda: paused(), 60, interval=0.5, what="the pool refilled")[0]
    assert refill != member
    p.close()  # the controller stops: the paused VM goes, the replica stays
    assert group_domains(libvirtd, vm_group) == [member]
    again = provider_for(tmp_path, vm_group, vm_template(vm_image))
    again.delete(again.list()[0], grace=5.0)
    assert group_domains(libvirtd, vm_group) == []
    again.close()


def test_deletes_run_in_parallel_threads(
    tmp_path: Path, vm_group: str, vm_image: dict[str, Path], libvirtd: Any
) -> None:
    p = provider_for(tmp_path, vm_group, vm_template(vm_image))
    made: list[Replica] = []
    errors: list[BaseException] = []

    def create(rid: str) -> None:
        try:
            made.append(p.create(rid))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(f"r-0000000{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    ports = {r.address for r in made}
    assert len(ports) == 2  # concurrent creates never pick the same forwarded port
    assert all(p.wait_serving(a, 60) for a in ports if a)
    p.remove_many([r.ref for r in made], grace=0.0)
    assert group_domains(libvirtd, vm_group) == []
    p.close()
