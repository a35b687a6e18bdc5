"""tier: swarm — a replicated service someone created, scaled by tierscale under load; Swarm places.

A single-node swarm on a dockerd in a network namespace (tests/helpers/dockerd.py), reached over its
tcp:// address as a remote manager would be. The service publishes the workload's port in host mode
with a port Swarm picks per task, so nginx (in the root namespace) targets each task on the node's
address. The routing mesh is not used (it did not answer inside a namespace, and it hides the tasks).
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from helpers.dockerd import NamespacedDockerd, demo_image_built, namespaced_dockerd, shared_bridge
from helpers.e2e import events, failed_message, group_config, wait_for
from tierscale.config import load_config_text
from tierscale.controller.down import down
from tierscale.loadgen import LoadRunner
from tierscale.providers import make_provider
from tierscale.providers.base import TemplateError
from tierscale.providers.docker_image import DEMO_IMAGE
from tierscale.service import BackgroundController

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def manager() -> Iterator[NamespacedDockerd]:
    demo_image_built()
    with contextlib.ExitStack() as stack:
        br = stack.enter_context(shared_bridge())
        address = br.host(31)
        e = stack.enter_context(
            namespaced_dockerd(br, host=31, swarm=True, extra_args=["-H", f"tcp://{address}:2375"])
        )
        e.load_images(DEMO_IMAGE)
        yield e


def url(e: NamespacedDockerd) -> str:
    return f"tcp://{e.address}:2375"


def create_service(e: NamespacedDockerd, name: str, *args: str) -> None:
    # What a user does once, with the docker CLI; tierscale only changes the count afterwards.
    e.docker(
        "service", "create", "--detach", "--no-resolve-image", "--name", name, "--endpoint-mode", "dnsrr",
        "--publish", "mode=host,target=8080", "--stop-grace-period", "10s", *args, DEMO_IMAGE,
    )  # fmt: skip


def service(e: NamespacedDockerd, name: str) -> Any:
    client = docker.DockerClient(base_url=url(e), version="auto", timeout=30)
    try:
        return client.services.get(name).attrs
    finally:
        client.close()


def running_tasks(e: NamespacedDockerd, name: str) -> int:
    out = e.docker("service", "ps", "-q", "--filter", "desired-state=running", name, check=False).stdout
    return len(out.split())


def swarm_config(tmp_path: Path, e: NamespacedDockerd, service_name: str) -> tuple[Any, str]:
    return group_config(
        tmp_path / "state",
        "swarm",
        f"{{service: {service_name}, manager: '{url(e)}', port: 8080}}",
        name="sw-" + secrets.token_hex(3),
        min_=1,
        max_=4,
        metrics="[{type: requests_per_replica, target: 4}]",
    )


def test_a_swarm_service_is_scaled_1_4_1_by_load_with_no_failed_request(
    tmp_path: Path, manager: NamespacedDockerd
) -> None:
    svc = "web-" + secrets.token_hex(3)
    create_service(manager, svc, "--replicas", "1")
    cfg, _ = swarm_config(tmp_path, manager, svc)
    name = cfg.groups[0].name
    rate = {"rps": 15.0}
    try:
        with BackgroundController(cfg) as bg:
            wait_for(lambda: bg.status(name)["ready"] == 1, 90, what="the service's task ready")
            address = bg.status(name)["replicas"][0]["address"]
            assert address.startswith(manager.address + ":"), address  # the node's address, not loopback
            target = f"http://{cfg.groups[0].balancer.listen}/work?ms=5"
            with LoadRunner(target, lambda t: rate["rps"], 400, timeout=15) as runner:
                wait_for(lambda: bg.status(name)["ready"] == 4, 120, what="4 ready tasks")
                assert service(manager, svc)["Spec"]["Mode"]["Replicated"]["Replicas"] == 4
                assert running_tasks(manager, svc) == 4
                rate["rps"] = 0.5
                wait_for(lambda: bg.status(name)["ready"] == 1, 120, interval=0.5, what="back to 1 task")
                wait_for(lambda: running_tasks(manager, svc) == 1, 60, what="Swarm down to 1 task")
            result = runner.result(timeout=30)
            assert result.failed == 0, failed_message(result)
            counts = [e.data["count"] for e in events(Path(cfg.state_dir), name, "service_scaled")]
            assert max(counts) == 4 and counts[-1] == 1, counts
            print(f"\nswarm: {result.sent} requests, 0 failed; counts set: {counts}")
    finally:
        down(cfg)
        # `down` lets go of the service, it does not remove it: the user's service is the user's.
        kept = manager.docker("service", "inspect", svc, check=False).returncode == 0
        manager.docker("service", "rm", svc, check=False)
    assert kept


def test_an_update_someone_else_started_is_left_alone(tmp_path: Path, manager: NamespacedDockerd) -> None:
    svc = "upd-" + secrets.token_hex(3)
    # An update that fails (the new command exits at once) and pauses: Swarm's state "paused" until the
    # user acts. tierscale must not change the count meanwhile.
    create_service(
        manager, svc, "--replicas", "2", "--update-failure-action", "pause", "--update-monitor", "2s"
    )
    cfg, _ = swarm_config(tmp_path, manager, svc)
    name = cfg.groups[0].name
    try:
        manager.docker(
            "service", "update", "--detach", "--no-resolve-image", "--entrypoint", "/bin/false", svc
        )  # fmt: skip
        wait_for(
            lambda: (service(manager, svc).get("UpdateStatus") or {}).get("State") == "paused",
            120,
            what="the user's update paused",
        )
        with BackgroundController(cfg):
            # min 1, no load: the policy wants fewer than 2, and says it waits for the update instead.
            wait_for(lambda: events(Path(cfg.state_dir), name, "scale_deferred"), 60, what="scale_deferred")
            assert service(manager, svc)["Spec"]["Mode"]["Replicated"]["Replicas"] == 2
            assert not events(Path(cfg.state_dir), name, "service_scaled")
    finally:
        down(cfg)
        manager.docker("service", "rm", svc, check=False)


def test_missing_and_global_services_are_one_line_errors(tmp_path: Path, manager: NamespacedDockerd) -> None:
    glob = "glob-" + secrets.token_hex(3)
    manager.docker(
        "service", "create", "--detach", "--no-resolve-image", "--name", glob, "--mode", "global", DEMO_IMAGE
    )  # fmt: skip
    try:
        for svc, message in ((glob, "is global, not replicated"), ("no-such-svc", "not found on")):
            cfg, path = swarm_config(tmp_path, manager, svc)
            with pytest.raises(TemplateError, match=message):
                make_provider(cfg.groups[0], cfg.state_dir)
            run = subprocess.run(
                [sys.executable, "-m", "tierscale", "run", "--once", path],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert run.returncode != 0 and message in run.stderr, run.stderr
            assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
        # A manager that does not answer is not a config error: the provider is made, listing says why.
        text = Path(path).read_text().replace(url(manager), "tcp://127.0.0.1:9")
        cfg = load_config_text(text, path)
        provider = make_provider(cfg.groups[0], cfg.state_dir)
        with pytest.raises(Exception, match="unreachable"):
            provider.list()
        provider.close()
    finally:
        manager.docker("service", "rm", glob, check=False)
