"""Shared test policy: with CI=true a missing component fails the test instead of skipping it."""

from __future__ import annotations

import os
import shutil

import pytest

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
