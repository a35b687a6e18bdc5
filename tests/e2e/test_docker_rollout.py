"""Rolling out a new version on the docker tier: under load, killed midway, a bad version, load rising."""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path
from typing import Any

import docker
import pytest

from helpers.ci import require
from helpers.e2e import group_config, nginx_processes, work_url
from helpers.rollouts import Case, bad_rollout_rolls_back, good_rollout_killed_midway, load_doubles_midway
from tierscale.config import load_config_text
from tierscale.config.revision import template_revision
from tierscale.controller.down import down
from tierscale.providers.docker import LABEL_GROUP
from tierscale.providers.docker_image import DEMO_IMAGE, build_demo_image

pytestmark = pytest.mark.e2e

ROLLOUT = "    rollout: {max_surge: 1, max_unavailable: 0, min_healthy_time: 1s}\n"
METRIC = "[{type: requests_per_replica, target: 5}]"
TEMPLATE = f"{{image: {DEMO_IMAGE}, port: 8080, cpus: 0.25, memory: 64m}}"


@pytest.fixture(scope="module", autouse=True)
def engine() -> Any:
    try:
        c = docker.from_env(version="auto", timeout=30)
        c.ping()
    except Exception:
        c = None
    require(c is not None, "Docker engine (scripts/setup/docker.sh)")
    build_demo_image(c)
    yield c
    c.close()


def _case(tmp_path: Path, new_template: str, n: int = 4, max_: int = 4, **knobs: Any) -> Case:
    name = "dk-" + secrets.token_hex(3)  # labels are engine-wide: never collide with another run
    cfg, path = group_config(
        tmp_path / "state",
        "docker",
        TEMPLATE,
        name=name,
        min_=n,
        max_=max_,
        metrics=METRIC,
        extra=ROLLOUT,
        **knobs,
    )
    new = Path(path).read_text().replace(f"template: {TEMPLATE}", f"template: {new_template}")
    return Case(path, new, work_url(cfg, 2), replicas=n)


def _cleanup(case: Case, engine: Any) -> None:
    with contextlib.suppress(Exception):
        down(case.cfg)
    leaked = engine.containers.list(
        all=True, ignore_removed=True, filters={"label": f"{LABEL_GROUP}={case.group}"}
    )
    for c in leaked:
        c.remove(force=True)
    assert not nginx_processes(Path(case.cfg.state_dir))
    assert not leaked, f"down left containers: {[c.name for c in leaked]}"


def test_docker_good_rollout_under_load_survives_a_sigkill_and_fails_nothing(
    tmp_path: Path, engine: Any
) -> None:
    case = _case(tmp_path, TEMPLATE[:-1] + ", env: {RELEASE: '2'}}")
    try:
        good_rollout_killed_midway(case, rate=20, timeout=90)
        labels = {
            c.labels["io.tierscale.revision"]
            for c in engine.containers.list(
                ignore_removed=True, filters={"label": f"{LABEL_GROUP}={case.group}"}
            )
        }
        new = load_config_text(case.new_text, case.path).groups[0].template
        assert labels == {template_revision(new)}, labels
    finally:
        _cleanup(case, engine)


@pytest.mark.parametrize(
    "change",
    [
        # It starts, but listens on another port than the template's: it never answers a health check.
        ', command: ["/usr/local/bin/tierscale-workload", "--port", "8090"]',
        # The engine cannot make it at all: the image does not expose the port the template names.
        ", port: 8081",
    ],
    ids=["never-healthy", "rejected-by-the-engine"],
)
def test_docker_a_bad_version_is_rolled_back_without_a_failed_request(
    tmp_path: Path, engine: Any, change: str
) -> None:
    new = TEMPLATE[:-1] + change + "}"
    if "8081" in change:
        new = TEMPLATE.replace("port: 8080", "port: 8081")
    case = _case(tmp_path, new, startup_grace="5s")
    try:
        bad_rollout_rolls_back(case, rate=20, timeout=90)
    finally:
        _cleanup(case, engine)


def test_docker_load_doubling_mid_rollout_scales_out_on_the_new_revision(tmp_path: Path, engine: Any) -> None:
    case = _case(tmp_path, TEMPLATE[:-1] + ", env: {RELEASE: '2'}}", n=2, max_=6)
    try:
        desired = load_doubles_midway(case, base=10, timeout=90)
        assert max(desired) >= 3, desired
    finally:
        _cleanup(case, engine)
