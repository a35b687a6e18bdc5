"""An example alert firing on a real Prometheus: a group whose replicas keep exiting is replaced again and
again, and examples/prometheus/rules.yml's TierscaleReplicasReplacedRepeatedly fires on the controller's
own scraped `tierscale_replacements_total`; the controller-down alert stays quiet meanwhile."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from helpers.e2e import events, free_port, port_block, wait_for
from helpers.prometheus import EXAMPLES, example_config, running_prometheus
from tierscale.config import load_config_text
from tierscale.controller.down import down
from tierscale.service import BackgroundController

pytestmark = pytest.mark.e2e

ALERT = "TierscaleReplicasReplacedRepeatedly"


def _crashing_group(state_dir: Path, api: str) -> Any:
    lo, hi = port_block()
    text = f"""\
state_dir: {state_dir}
api: {{listen: "{api}"}}
groups:
  - name: crashy
    tier: process
    min: 2
    max: 2
    sync_period: 1s
    template:
      # A worker that dies a second after it starts: a crash loop, as a bad release would be.
      command: ["{sys.executable}", "-c", "import time; time.sleep(1)", "{{port}}"]
      port_range: [{lo}, {hi}]
    balancer: {{type: none}}
    health: {{type: running, interval: 300ms}}
"""
    return load_config_text(text, str(state_dir.parent / "crashy.yaml"))


def test_replicas_replaced_again_and_again_fire_the_example_alert(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    api = f"127.0.0.1:{free_port()}"
    with running_prometheus(
        config_text=example_config(api, state_dir),
        files={"rules.yml": (EXAMPLES / "rules.yml").read_text()},
    ) as prom:
        cfg = _crashing_group(state_dir, api)
        try:
            with BackgroundController(cfg):
                wait_for(lambda: prom.value('up{job="tierscale"}') == 1, 30, what="the controller scraped")

                def firing() -> list[dict[str, Any]]:
                    alerts = prom.get("/api/v1/alerts")["data"]["alerts"]
                    return [a for a in alerts if a["labels"]["alertname"] == ALERT and a["state"] == "firing"]

                (alert,) = wait_for(firing, 90, interval=0.5, what=f"{ALERT} firing")
                assert alert["labels"]["group"] == "crashy" and alert["labels"]["severity"] == "warning"
                assert "replicas replaced" in alert["annotations"]["summary"]
                assert float(alert["value"]) > 2
                print(f"firing: {alert}")
                series = prom.query(f'ALERTS{{alertname="{ALERT}",alertstate="firing"}}')
                assert [s["metric"]["group"] for s in series] == ["crashy"], series
                alerts = prom.get("/api/v1/alerts")["data"]["alerts"]
                down_alerts = [a for a in alerts if a["labels"]["alertname"] == "TierscaleControllerDown"]
                assert down_alerts == [], down_alerts  # the controller is up: not even pending
        finally:
            down(cfg)
    exited = [e for e in events(state_dir, "crashy") if "exited" in e.message]
    assert len(exited) >= 3, [(e.kind, e.message) for e in events(state_dir, "crashy")]
