"""The Docker provider against the real engine: labels, published ports, delete, stats, clean failures."""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from conftest import require
from tierscale.config import load_config_text
from tierscale.providers import make_provider
from tierscale.providers.base import ProviderError
from tierscale.providers.docker import LABEL_GROUP, LABEL_REPLICA, DockerProvider
from tierscale.providers.docker_image import DEMO_IMAGE, build_demo_image


def _engine() -> Any:
    try:
        client = docker.from_env(version="auto", timeout=30)
        client.ping()
        return client
    except Exception:
        return None


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    c = _engine()
    require(c is not None, "Docker engine (scripts/setup/docker.sh)")
    build_demo_image(c)  # idempotent: a no-op when `make images` already built it
    yield c
    c.close()


@pytest.fixture
def group(client: Any) -> Iterator[str]:
    name = "t-" + secrets.token_hex(4)
    yield name
    # Belt and braces: whatever a failed test left with this group's label goes.
    for c in client.containers.list(all=True, filters={"label": f"{LABEL_GROUP}={name}"}):
        c.remove(force=True)


def group_containers(client: Any, group: str) -> list[Any]:
    return client.containers.list(all=True, filters={"label": f"{LABEL_GROUP}={group}"})


def http_get(address: str, path: str, timeout: float = 30) -> Any:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=timeout) as resp:
        return json.loads(resp.read()) if path.startswith("/work") else resp.read()


def wait_http(address: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            http_get(address, "/healthz", timeout=2)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_create_list_delete_with_labels_limits_and_loopback_port(client: Any, group: str) -> None:
    p = DockerProvider(group, DEMO_IMAGE, cpus=0.5, memory=64 * 1024**2, env={"WORK_MS": "20"})
    try:
        r = p.create("r-one")
        assert r.address and r.address.startswith("127.0.0.1:")
        wait_http(r.address)
        assert http_get(r.address, "/work?ms=5") == {"instance": "r-one", "ms": 5}

        c = client.containers.get(r.detail["container"])
        assert c.labels[LABEL_GROUP] == group and c.labels[LABEL_REPLICA] == "r-one"
        hc = c.attrs["HostConfig"]
        assert hc["NanoCpus"] == 500_000_000
        assert hc["Memory"] == 64 * 1024**2
        assert hc["RestartPolicy"]["Name"] == "no"
        binding = c.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]
        assert binding["HostIp"] == "127.0.0.1" and r.address.endswith(":" + binding["HostPort"])
        env = dict(e.split("=", 1) for e in c.attrs["Config"]["Env"])
        assert env["WORK_MS"] == "20" and env["TIERSCALE_GROUP"] == group

        # A second provider (a restarted controller) finds the same replica from the labels alone.
        listed = DockerProvider(group, DEMO_IMAGE).list()
        assert [(x.id, x.address, x.state) for x in listed] == [("r-one", r.address, "running")]
        assert abs(listed[0].created_at - r.created_at) < 0.01

        p.delete(listed[0], grace=5)
        assert group_containers(client, group) == []  # removed, not just stopped
        assert p.list() == []
        p.delete(listed[0], grace=5)  # idempotent
    finally:
        p.close()


def test_containers_without_our_labels_are_never_listed_or_touched(client: Any, group: str) -> None:
    hand = client.containers.run(DEMO_IMAGE, detach=True, name=f"hand-{group}")
    other = client.containers.run(
        DEMO_IMAGE, detach=True, labels={LABEL_GROUP: group + "-x", LABEL_REPLICA: "r-x"}
    )
    half = client.containers.run(DEMO_IMAGE, detach=True, labels={LABEL_GROUP: group})  # no replica label
    p = DockerProvider(group, DEMO_IMAGE)
    try:
        p.create("r-mine")
        assert [r.id for r in p.list()] == ["r-mine"]
        for r in p.list():
            p.delete(r, grace=2)
        for c in (hand, other, half):
            c.reload()
            assert c.status == "running", c.name
    finally:
        p.close()
        for c in (hand, other, half):
            c.remove(force=True)


def test_exited_container_is_listed_as_failed(client: Any, group: str) -> None:
    p = DockerProvider(group, DEMO_IMAGE)
    try:
        r = p.create("r-kill")
        client.api.kill(r.detail["container"])  # what `docker kill` does
        deadline = time.monotonic() + 20
        while p.list()[0].state != "failed" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert p.list()[0].state == "failed"
        assert p.stats(p.list()) == {}  # no reading from a stopped container
        p.delete(p.list()[0], grace=1)
        assert group_containers(client, group) == []
    finally:
        p.close()


def test_delete_kills_after_grace_when_sigterm_is_ignored(client: Any, group: str) -> None:
    # busybox sh as PID 1 ignores SIGTERM: only the kill after the grace period stops it.
    p = DockerProvider(group, DEMO_IMAGE, command=["/bin/sh", "-c", "trap '' TERM; sleep 300"])
    try:
        r = p.create("r-stubborn")
        p.delete(r, grace=1)
        assert group_containers(client, group) == []
    finally:
        p.close()


def _burn(address: str, stop: threading.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(OSError):
            http_get(address, "/work?ms=200")


@pytest.mark.parametrize("source", ["auto", "stream", "oneshot"])
def test_stats_for_all_replicas_in_one_pass(client: Any, group: str, source: str) -> None:
    p = DockerProvider(group, DEMO_IMAGE, cpus=0.5, stats_source=source)
    stop = threading.Event()
    try:
        busy, idle = p.create("r-busy"), p.create("r-idle")
        for r in (busy, idle):
            wait_http(r.address or "")
        burners = [threading.Thread(target=_burn, args=(busy.address, stop)) for _ in range(2)]
        for t in burners:
            t.start()
        time.sleep(1.0)
        replicas = p.list()
        p.stats(replicas)  # first pass: keeps the readings (a stream's first reading may not be in yet)
        time.sleep(1.5)
        st = p.stats(replicas)  # second pass: the difference over 1.5 s, no blocking read
        stop.set()
        for t in burners:
            t.join(30)
        assert set(st) == {"r-busy", "r-idle"}
        assert st["r-busy"].cpu_allotment_milli == 500
        # Two concurrent burners saturate the 0.5-core allotment; the idle one does ~nothing. Generous
        # bounds: the machine is shared, so the busy container may get less than its full allotment.
        busy_pct, idle_pct = st["r-busy"].cpu_percent, st["r-idle"].cpu_percent
        assert busy_pct is not None and idle_pct is not None
        assert busy_pct > 40, busy_pct
        assert busy_pct <= 130, busy_pct  # the quota holds it to its allotment
        assert idle_pct < 15, idle_pct
        assert st["r-busy"].memory_bytes and st["r-busy"].memory_bytes > 0
        if source == "auto":
            # The engine is local: the readings come from the cgroup files, not from API calls.
            assert len(p._known) == 2 and all(k.cgroup is not None for k in p._known.values())
            assert p._streams is None
    finally:
        stop.set()
        for r in p.list():
            p.delete(r, grace=1)
        p.close()


def test_bad_image_unexposed_port_and_failed_start_leave_nothing(client: Any, group: str) -> None:
    cases = [
        (DockerProvider(group, "tierscale/no-such-image:1"), "template.image: 'tierscale/no-such-image:1'"),
        (DockerProvider(group, DEMO_IMAGE, port=9999), "does not expose port 9999/tcp"),
        # Created, then the start fails: the container must be removed again.
        (DockerProvider(group, DEMO_IMAGE, command=["/no/such/binary"]), "no such file or directory"),
    ]
    for provider, needle in cases:
        with pytest.raises(ProviderError) as err:
            provider.create("r-bad")
        msg = str(err.value)
        assert needle in msg.lower() or needle in msg, msg
        assert "\n" not in msg and "Traceback" not in msg
        assert group_containers(client, group) == [], needle
        provider.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    "host", ["tcp://127.0.0.1:{port}", "unix:///nonexistent/docker.sock", "ssh://nobody@127.0.0.1:{port}"]
)
def test_unreachable_engine_is_one_clear_error(client: Any, group: str, host: str) -> None:
    p = DockerProvider(group, DEMO_IMAGE, host=host.format(port=_closed_port()))
    try:
        for call in (p.list, lambda: p.create("r-x"), lambda: p.stats([])):
            try:
                call()
            except ProviderError as exc:
                assert "Docker engine unreachable at" in str(exc) and "\n" not in str(exc)
            else:
                assert call is not p.list, "list must fail on an unreachable engine"
    finally:
        p.close()
    assert group_containers(client, group) == []


def test_stuck_created_container_becomes_failed() -> None:
    p = DockerProvider("g", DEMO_IMAGE)
    row = {
        "Id": "abc",
        "Labels": {LABEL_GROUP: "g", LABEL_REPLICA: "r-1", "io.tierscale.created": str(time.time() - 3600)},
        "State": "created",
        "Ports": [],
    }
    r = p._replica(row)
    assert r is not None and r.state == "failed" and r.address is None
    row["Labels"]["io.tierscale.created"] = str(time.time())  # type: ignore[index]
    assert p._replica(row).state == "provisioning"  # type: ignore[union-attr]
    row["Labels"] = {LABEL_GROUP: "g"}
    assert p._replica(row) is None


def test_example_config_builds_a_docker_provider() -> None:
    path = Path(__file__).resolve().parent.parent / "examples" / "docker.yaml"
    cfg = load_config_text(path.read_text(), str(path))
    p = make_provider(cfg.groups[0], Path("/nonexistent"))
    assert isinstance(p, DockerProvider)
    assert (p.image, p.port, p.cpus, p.memory) == (DEMO_IMAGE, 8080, 0.5, 128 * 1024**2)
    p.close()
