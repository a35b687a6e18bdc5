"""The process tier provider on real processes: create, list, adopt, stats, delete."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from helpers.e2e import port_block, wait_for
from tierscale.providers.base import Capability, Listing, ProviderError, Replica, TemplateError
from tierscale.providers.process import ProcessData, ProcessProvider

CMD = [sys.executable, "-m", "tierscale.workload", "--port", "{port}"]
REV = "rev000000001"


def _get(address: str, path: str) -> bytes:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as resp:
        return resp.read()


@pytest.fixture
def provider(tmp_path: Path):
    p = ProcessProvider("web", tmp_path, CMD, port_range=port_block(), cpus=0.5, revision=REV)
    yield p
    for r in p.list():
        p.delete(r, 2.0)


def test_create_list_adopt_delete(provider: ProcessProvider, tmp_path: Path) -> None:
    assert provider.capabilities == {Capability.EXEC} and Capability.CONSOLE not in provider.capabilities
    r = provider.create("r-aaaa")
    assert r.address and r.state == "running"
    assert (r.revision, r.host) == (REV, socket.gethostname())
    assert isinstance(r.tier_data, ProcessData) and r.ref == str(r.tier_data.pid)
    wait_for(lambda: _ok(r.address), 10, what="workload answering")
    assert b'"instance": "r-aaaa"' in _get(r.address, "/work?ms=1")
    # A new provider object (a restarted controller, here built for another revision) finds the same
    # replica from the pid file, with the revision and host it was made with.
    again = ProcessProvider("web", tmp_path, CMD, port_range=provider.port_range, revision="rev-next")
    listed = again.list()
    assert isinstance(listed, Listing) and not listed.unreachable
    assert [(x.id, x.revision, x.host, x.ref, x.address) for x in listed] == [
        ("r-aaaa", REV, socket.gethostname(), r.ref, r.address)
    ]
    # Another group in the same state dir sees nothing of ours.
    assert ProcessProvider("other", tmp_path, CMD, revision=REV).list() == []
    provider.delete(r, 2.0)
    assert provider.list() == []
    with pytest.raises(ProcessLookupError):
        os.kill(int(r.ref), 0)
    # Deleting what is already gone (a second delete, a replica known only by its id) is not an error.
    provider.delete(r, 2.0)
    provider.delete(Replica("r-never", "web", None, "running", 0.0), 0.0)
    with pytest.raises(TemplateError, match="no console log"):
        provider.console_output(r)


def test_record_from_before_revisions_lists_with_empty_revision_and_host(provider: ProcessProvider) -> None:
    r = provider.create("r-old")
    path = provider.dir / "r-old.json"
    rec = json.loads(path.read_text())
    for key in ("revision", "host"):
        rec.pop(key)
    path.write_text(json.dumps(rec))
    (listed,) = provider.list()
    assert (listed.id, listed.revision, listed.host, listed.ref) == ("r-old", "", "", r.ref)


def _ok(address: str | None) -> bool:
    try:
        return _get(address or "", "/healthz") == b"ok"
    except OSError:
        return False


def test_two_replicas_get_distinct_ports(provider: ProcessProvider) -> None:
    a = provider.create("r-1")
    b = provider.create("r-2")
    assert a.address != b.address


def test_dead_process_is_listed_as_failed(provider: ProcessProvider) -> None:
    r = provider.create("r-dead")
    os.kill(int(r.ref), signal.SIGKILL)
    wait_for(lambda: provider.list()[0].state == "failed", 5, what="failed state")


def test_cpu_utilization_tracks_real_burn(provider: ProcessProvider) -> None:
    r = provider.create("r-cpu")
    wait_for(lambda: _ok(r.address), 10, what="workload answering")
    proc = psutil.Process(int(r.ref))

    def cpu_seconds() -> float:
        t = proc.cpu_times()
        return t.user + t.system

    provider.stats([r])  # first reading
    cpu0, t0 = cpu_seconds(), time.monotonic()
    # Work until it has burnt 0.6 s of CPU, however long a busy machine makes that take.
    while cpu_seconds() - cpu0 < 0.6 and time.monotonic() - t0 < 60:
        _get(r.address or "", "/work?ms=50")
    s = provider.stats([r])["r-cpu"]
    expected = (cpu_seconds() - cpu0) / (time.monotonic() - t0) / 0.5 * 100
    # The provider's reading is the process's own CPU time over the interval, against the 0.5-core
    # allotment: what psutil says over (nearly) the same interval.
    assert s.cpu_allotment_milli == 500
    assert s.cpu_percent is not None and abs(s.cpu_percent - expected) <= 0.25 * expected + 5, (s, expected)
    assert expected > 30  # it did burn: the comparison above is not between two idle readings
    idle = provider.stats([r])
    time.sleep(0.5)
    idle = provider.stats([r])["r-cpu"]
    assert idle.cpu_percent is not None and idle.cpu_percent < 30


def test_bad_command_is_a_template_error(tmp_path: Path) -> None:
    p = ProcessProvider("web", tmp_path, ["/nonexistent/binary"], port_range=port_block(), revision=REV)
    with pytest.raises(TemplateError, match="cannot start") as err:
        p.create("r-x")
    assert isinstance(err.value, ProviderError)  # the base class still catches every tier error
    assert p.list() == []
