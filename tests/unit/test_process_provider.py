"""The process tier provider on real processes: create, list, adopt, stats, delete."""

from __future__ import annotations

import os
import signal
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from e2e_helpers import port_block, wait_for
from tierscale.providers.base import ProviderError
from tierscale.providers.process import ProcessProvider

CMD = [sys.executable, "-m", "tierscale.workload", "--port", "{port}"]


def _get(address: str, path: str) -> bytes:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as resp:
        return resp.read()


@pytest.fixture
def provider(tmp_path: Path):
    p = ProcessProvider("web", tmp_path, CMD, port_range=port_block(), cpus=0.5)
    yield p
    for r in p.list():
        p.delete(r, 2.0)


def test_create_list_adopt_delete(provider: ProcessProvider, tmp_path: Path) -> None:
    r = provider.create("r-aaaa")
    assert r.address and r.state == "running"
    wait_for(lambda: _ok(r.address), 10, what="workload answering")
    assert b'"instance": "r-aaaa"' in _get(r.address, "/work?ms=1")
    # A new provider object (a restarted controller) finds the same replica from the pid file.
    again = ProcessProvider("web", tmp_path, CMD, port_range=provider.port_range)
    assert [x.id for x in again.list()] == ["r-aaaa"]
    # Another group in the same state dir sees nothing of ours.
    assert ProcessProvider("other", tmp_path, CMD).list() == []
    provider.delete(r, 2.0)
    assert provider.list() == []
    with pytest.raises(ProcessLookupError):
        os.kill(int(r.detail["pid"]), 0)


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
    os.kill(int(r.detail["pid"]), signal.SIGKILL)
    wait_for(lambda: provider.list()[0].state == "failed", 5, what="failed state")


def test_cpu_utilization_tracks_real_burn(provider: ProcessProvider) -> None:
    r = provider.create("r-cpu")
    wait_for(lambda: _ok(r.address), 10, what="workload answering")
    provider.stats([r])  # first reading
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.0:
        _get(r.address or "", "/work?ms=50")
    s = provider.stats([r])["r-cpu"]
    # Burning nearly one core against a 0.5-core allotment reads as well over 100 %.
    assert s.cpu_allotment_milli == 500
    assert s.cpu_percent is not None and s.cpu_percent > 100
    idle = provider.stats([r])
    time.sleep(0.5)
    idle = provider.stats([r])["r-cpu"]
    assert idle.cpu_percent is not None and idle.cpu_percent < 30


def test_bad_command_is_a_provider_error(tmp_path: Path) -> None:
    p = ProcessProvider("web", tmp_path, ["/nonexistent/binary"], port_range=port_block())
    with pytest.raises(ProviderError, match="cannot start"):
        p.create("r-x")
    assert p.list() == []
