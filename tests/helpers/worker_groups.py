"""A queue-driven worker group for the e2e tests: `python -m tierscale.worker` processes (the process
tier), no balancer, health `running`, min 0 with scale_to_zero, a quick scale-in, and one external metric."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from helpers.e2e import free_port, port_block
from tierscale.config import load_config_text


def worker_group_config(
    state_dir: Path, name: str, worker_args: list[str], metric: str, max_: int = 4
) -> Any:
    """`worker_args` follow `python -m tierscale.worker`; `metric` is one YAML flow mapping."""
    lo, hi = port_block()
    command = json.dumps([sys.executable, "-m", "tierscale.worker", *worker_args, "--port", "{port}"])
    text = f"""\
state_dir: {state_dir}
api: {{listen: "127.0.0.1:{free_port()}"}}
groups:
  - name: {name}
    tier: process
    min: 0
    max: {max_}
    sync_period: 1s
    template:
      command: {command}
      port_range: [{lo}, {hi}]
    balancer: {{type: none}}
    health: {{type: running, interval: 300ms}}
    metrics:
      - {metric}
    behavior:
      scale_down:
        stabilization_window: 0s
        policies: [{{type: Percent, value: 100, period: 1s}}]
    drain_timeout: 2s
    scale_to_zero: {{idle_after: 4s}}
"""
    return load_config_text(text, str(state_dir.parent / f"{name}.yaml"))
