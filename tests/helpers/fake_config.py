"""The one-group config the fake-tier unit tests run (tests/unit/test_reconciler.py, test_rollout.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tierscale.config import load_config_text

GROUP = "web"


def fake_group_config(
    state_dir: Path,
    *,
    command: str = "true",
    min_: int = 1,
    max_: int = 10,
    order: str = "newest",
    unhealthy_after: int = 3,
    startup_grace: float = 60.0,
    extra: str = "",
    drain_timeout: float = 1.0,
) -> Any:
    """A process-tier group (the tests swap in the fake tier): 1 s passes and probes, cpu at 50 %.
    `extra` adds group keys (indented four spaces)."""
    return load_config_text(
        f"""
state_dir: {state_dir}
groups:
  - name: {GROUP}
    tier: process
    min: {min_}
    max: {max_}
    sync_period: 1s
    scale_in_order: {order}
    drain_timeout: {drain_timeout}s
    health:
      interval: 1s
      healthy_after: 1
      unhealthy_after: {unhealthy_after}
      startup_grace: {startup_grace}s
    metrics: [{{type: cpu, target: 50}}]
{extra}    template: {{command: ["{command}"]}}
"""
    )
