"""Shared test policy: with CI=true a missing component fails the test instead of skipping it.

The policy itself (`IN_CI`, `require`) is defined in helpers/ci.py so that test modules and helpers can
import it as `from helpers.ci import require`: a module named `conftest` is ambiguous once a level has a
conftest.py of its own (tests/e2e does). It is re-exported here.

Levels: tests/unit (no Docker engine, libvirt, nginx, OpenStack cloud or browser), tests/e2e (those),
tests/chaos (the chaos suite); shared code in tests/helpers, files the tests read in tests/data.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers.ci import IN_CI, NGINX, require
from helpers.groups import libvirtd_lock, uses_libvirtd

__all__ = ["IN_CI", "NGINX", "require"]

UNIT = Path(__file__).parent / "unit"


@pytest.fixture(autouse=True)
def _nginx_present(request: pytest.FixtureRequest) -> None:
    # Nearly every end-to-end and chaos test needs nginx; say so clearly rather than in 30 tracebacks.
    # The unit tier needs none: `CI=true make unit` runs without it.
    if NGINX is None and IN_CI and UNIT not in request.path.parents:
        pytest.fail("nginx is required in CI: run scripts/setup-host.sh", pytrace=False)


@pytest.fixture(autouse=True)
def _libvirtd_shared(request: pytest.FixtureRequest) -> Iterator[None]:
    # A vm test's domains and libvirtd restarts must not meet the cloud's switch to real guests
    # (tests/helpers/groups.py); the unit tier and the other groups never wait on it.
    if UNIT in request.path.parents or not uses_libvirtd(request.node.nodeid):
        yield
        return
    with libvirtd_lock(exclusive=request.node.get_closest_marker("libvirtd_exclusive") is not None):
        yield


@pytest.fixture
def marker_dir(tmp_path: Path) -> Iterator[Path]:
    """Anything that ran a hostile string through a shell would create a file here."""
    d = tmp_path / "markers"
    d.mkdir()
    yield d
    assert list(d.iterdir()) == [], "a hostile string was evaluated by a shell"
