"""Scale to zero and back on the docker tier: a burst of 50 at zero replicas, all served, then back to 0."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from helpers.ci import require
from helpers.cold import burst_at_zero_and_back, stz_extra
from helpers.e2e import group_config, nginx_processes
from tierscale.controller.down import down
from tierscale.providers.docker import LABEL_GROUP
from tierscale.providers.docker_image import DEMO_IMAGE, build_demo_image
from tierscale.service import BackgroundController

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    try:
        c = docker.from_env(version="auto", timeout=30)
        c.ping()
    except Exception:
        c = None
    require(c is not None, "Docker engine (scripts/setup/docker.sh)")
    build_demo_image(c)  # the image with the workload that answers POST /work
    yield c
    c.close()


def _containers(client: Any, group: str) -> list[Any]:
    return client.containers.list(all=True, ignore_removed=True, filters={"label": f"{LABEL_GROUP}={group}"})


def test_docker_burst_at_zero_is_served_whole_and_the_group_returns_to_zero(
    tmp_path: Path, client: Any
) -> None:
    name = "dz-" + secrets.token_hex(3)  # labels are engine-wide: never collide with another run
    template = f"{{image: {DEMO_IMAGE}, port: 8080, cpus: 0.5, memory: 64m}}"
    cfg, _ = group_config(
        tmp_path / "state",
        "docker",
        template,
        name=name,
        min_=0,
        max_=4,
        metrics="[{type: requests_per_replica, target: 5}]",
        extra=stz_extra(idle="5s"),
    )
    try:
        with BackgroundController(cfg):
            burst_at_zero_and_back(
                Path(cfg.state_dir),
                name,
                f"http://{cfg.groups[0].balancer.listen}/work?ms=5",
                lambda: [c for c in _containers(client, name) if c.status == "running"],
                5.0,
                boot=60,
            )
    finally:
        with contextlib.suppress(Exception):
            down(cfg)
        leaked = _containers(client, name)
        for c in leaked:
            c.remove(force=True)
        assert not leaked, [c.name for c in leaked]
        assert not nginx_processes(Path(cfg.state_dir))
