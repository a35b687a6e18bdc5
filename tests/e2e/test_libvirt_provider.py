"""The libvirt provider against the real libvirtd and real QEMU (TCG) guests booted from the demo image."""

# The shared fixtures are imported from test_libvirt_image; test parameters named like them are the point.
# ruff: noqa: F811

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import libvirt
import pytest

from e2e_helpers import wait_for
from test_libvirt_image import (  # noqa: F401  (fixtures)
    OVERLAY_ROOT,
    group_domains,
    libvirtd,
    overlay_files,
    storage_pool_exists,
    vm_group,
    vm_group_config,
    vm_image,
    vm_template,
)
from tierscale.eventstore import EventStore
from tierscale.providers import ProviderError, Replica, make_provider
from tierscale.providers.libvirt import LibvirtProvider
from tierscale.providers.libvirt_xml import OWNER_NS, Owner

pytestmark = pytest.mark.e2e


def provider_for(tmp_path: Path, group: str, template: str, extra: str = "") -> LibvirtProvider:
    cfg, _ = vm_group_config(tmp_path / "state", group, template, extra=extra)
    p = make_provider(cfg.groups[0], tmp_path / "state")
    assert isinstance(p, LibvirtProvider)
    return p


def get_json(address: str, path: str, timeout: float = 10.0) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=timeout) as resp:
        return json.loads(resp.read())


def test_create_list_stats_delete(
    tmp_path: Path, vm_group: str, vm_image: dict[str, Path], libvirtd: Any
) -> None:
    p = provider_for(tmp_path, vm_group, vm_template(vm_image))
    r = p.create("r-0000aaaa")
    assert r.id == "r-0000aaaa" and r.address and r.address.startswith("127.0.0.1:")
    dom = libvirtd.lookupByName(r.detail["domain"])
    # Booting, it yields the CPU to VMs that already serve; once it answers, it gets the default weight.
    assert dom.schedulerParameters()["cpu_shares"] == 256
    assert p.wait_serving(r.address, 40), "guest never answered /healthz"
    wait_for(lambda: dom.schedulerParameters()["cpu_shares"] == 1024, 10, what="the serving CPU weight")
    assert "<shares>1024</shares>" in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    # The guest knows which replica it is (kernel command line and SMBIOS serial).
    assert get_json(r.address, "/work?ms=1")["instance"] == "r-0000aaaa"

    listed = p.list()
    assert [(x.id, x.address, x.state) for x in listed] == [("r-0000aaaa", r.address, "running")]
    # A restarted controller adopts it: a new provider finds it from the domain's metadata alone.
    again = provider_for(tmp_path, vm_group, vm_template(vm_image))
    assert [(x.id, x.address) for x in again.list()] == [("r-0000aaaa", r.address)]

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
    p.delete(listed[0], grace=1.0)  # idempotent
    p.close()
    again.close()


def test_overlay_on_the_golden_image_is_made_and_removed(
    tmp_path: Path, vm_group: str, vm_image: dict[str, Path], libvirtd: Any
) -> None:
    p = provider_for(tmp_path, vm_group, vm_template(vm_image, disk=True))
    r = p.create("r-0000bbbb")
    overlay = r.detail["overlay"]
    assert overlay == str(OVERLAY_ROOT / vm_group / f"tierscale-{vm_group}-r-0000bbbb.qcow2")
    assert overlay_files(vm_group) == [Path(overlay).name]
    xml = libvirtd.lookupByName(r.detail["domain"]).XMLDesc(0)
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
    try:
        assert p.list() == []
        for rid in ("r-nometa", "r-other"):
            with pytest.raises(ProviderError, match="does not carry this group's mark"):
                p.delete(Replica(rid, vm_group, None, "running", 0.0), grace=0.0)
        assert set(group_domains(libvirtd, vm_group)) == {foreign.name(), other.name()}
        p.close()
        assert set(group_domains(libvirtd, vm_group)) == {foreign.name(), other.name()}
    finally:
        foreign.undefine()
        other.undefine()


def assert_nothing_left(conn: Any, group: str) -> None:
    assert group_domains(conn, group) == []
    assert overlay_files(group) == []


def test_missing_base_image_fails_clearly_and_leaves_nothing(
    tmp_path: Path, vm_group: str, vm_image: dict[str, Path], libvirtd: Any
) -> None:
    template = vm_template(vm_image, disk=True).replace(str(vm_image["base"]), str(tmp_path / "nope.qcow2"))
    p = provider_for(tmp_path, vm_group, template)
    with pytest.raises(ProviderError, match=r"template\.base_image .*nope\.qcow2 does not exist"):
        p.create("r-0000cccc")
    assert_nothing_left(libvirtd, vm_group)
    p.close()


def test_missing_kernel_fails_clearly(
    tmp_path: Path, vm_group: str, vm_image: dict[str, Path], libvirtd: Any
) -> None:
    template = vm_template(vm_image).replace(str(vm_image["kernel"]), str(tmp_path / "vmlinux-gone"))
    p = provider_for(tmp_path, vm_group, template)
    with pytest.raises(ProviderError, match=r"template\.kernel .*vmlinux-gone does not exist"):
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
    with pytest.raises(ProviderError, match="did not start"):
        p.create("r-0000eeee")
    assert_nothing_left(libvirtd, vm_group)
    p.close()
    assert not storage_pool_exists(libvirtd, vm_group)


def test_domain_type_auto_probes_once_and_says_which(
    tmp_path: Path, vm_group: str, vm_image: dict[str, Path], libvirtd: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    state = tmp_path / "state"
    store = EventStore(state / "events.db")
    cfg, _ = vm_group_config(state, vm_group, vm_template(vm_image, domain_type="auto"), startup_grace="12s")
    p = make_provider(cfg.groups[0], state)
    assert isinstance(p, LibvirtProvider)
    r = p.create("r-0000ffff")
    chosen = r.detail["domain_type"]
    assert chosen in ("kvm", "qemu")
    assert libvirtd.lookupByName(r.detail["domain"]).XMLDesc(0).startswith(f"<domain type='{chosen}'")
    said = [e for e in store.events(vm_group) if e.kind == "provider_info"]
    assert len(said) == 1 and f"using {chosen}" in said[0].message and said[0].data["domain_type"] == chosen
    cache = json.loads((tmp_path / "cache/tierscale/libvirt-domain-type.json").read_text())
    assert [v["domain_type"] for v in cache.values()] == [chosen]
    # The probe guest is gone; only the replica is left.
    assert group_domains(libvirtd, vm_group) == [r.detail["domain"]]
    assert r.address and p.wait_serving(r.address, 40)
    # A second provider on this host reads the answer from the cache instead of probing again.
    p2 = make_provider(cfg.groups[0], state)
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
    assert 'role="pool"' in meta

    r = p.create("r-asked4me")
    assert f"tierscale-{vm_group}-{r.id}" == member  # the paused VM, not a new boot
    assert r.address and p.wait_serving(r.address, 10)
    assert get_json(r.address, "/work?ms=1")["instance"] == r.id
    assert [x.id for x in p.list()] == [r.id]
    meta = libvirtd.lookupByName(member).metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, OWNER_NS, 0)
    assert "role=" not in meta

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
    p.remove_many([r.detail["domain"] for r in made], grace=0.0)
    assert group_domains(libvirtd, vm_group) == []
    p.close()
