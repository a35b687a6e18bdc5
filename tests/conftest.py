"""Shared test policy: with CI=true a missing component fails the test instead of skipping it."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(available: bool, component: str) -> None:
    """Skip on a developer machine without `component`; fail in CI, where a skip would hide breakage."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{component} is required in CI but is not available", pytrace=False)
    pytest.skip(f"{component} not available")


NGINX = shutil.which(
    "nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
)


@pytest.fixture(scope="session", autouse=True)
def _nginx_present() -> None:
    # Nearly every end-to-end test needs nginx; say so once and clearly rather than in 30 tracebacks.
    if NGINX is None and IN_CI:
        pytest.fail("nginx is required in CI: run scripts/setup-host.sh", pytrace=False)


@pytest.fixture(scope="session")
def nginx_bin() -> str:
    """The nginx binary, for tests that drive a balancer directly."""
    require(NGINX is not None, "nginx")
    assert NGINX is not None
    return NGINX
