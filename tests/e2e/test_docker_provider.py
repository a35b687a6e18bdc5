"""The Docker provider against the real engine: labels, published ports, delete, stats, clean failures.

(What needs no engine is in tests/unit/test_docker_provider_offline.py.)
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from helpers.ci import require
from tierscale.providers.base import (
    Capability,
    Listing,
    Replica,
    TemplateError,
    TierUnavailable,
)
from tierscale.providers.docker import (
    DEFAULT_ENGINE,
    LABEL_GROUP,
    LABEL_HOST,
    LABEL_REPLICA,
    LABEL_REVISION,
    DockerData,
    DockerProvider,
)
from tierscale.providers.docker_image import DEMO_IMAGE, build_demo_image

REV = "rev0000000d0"


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
    for c in client.containers.list(
        all=True, ignore_removed=True, filters={"label": f"{LABEL_GROUP}={name}"}
    ):
        c.remove(force=True)


def group_containers(client: Any, group: str) -> list[Any]:
    return client.containers.list(all=True, ignore_removed=True, filters={"label": f"{LABEL_GROUP}={group}"})


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
    p = DockerProvider(group, DEMO_IMAGE, cpus=0.5, memory=64 * 1024**2, env={"WORK_MS": "20"}, revision=REV)
    try:
        assert Capability.CONSOLE not in p.capabilities
        with pytest.raises(TemplateError, match="no console log"):
            p.console_output(Replica("r-one", group, None, "running", 0.0))
        r = p.create("r-one")
        assert r.address and r.address.startswith("127.0.0.1:")
        assert (r.revision, r.host) == (REV, p.engine) and p.engine == DEFAULT_ENGINE
        assert isinstance(r.tier_data, DockerData) and r.tier_data.cpus == 0.5
        wait_http(r.address)
        assert http_get(r.address, "/work?ms=5") == {"instance": "r-one", "ms": 5}

        c = client.containers.get(r.ref)
        assert c.labels[LABEL_GROUP] == group and c.labels[LABEL_REPLICA] == "r-one"
        assert c.labels[LABEL_REVISION] == REV and c.labels[LABEL_HOST] == DEFAULT_ENGINE
        hc = c.attrs["HostConfig"]
        assert hc["NanoCpus"] == 500_000_000
        assert hc["Memory"] == 64 * 1024**2
        assert hc["RestartPolicy"]["Name"] == "no"
        binding = c.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]
        assert binding["HostIp"] == "127.0.0.1" and r.address.endswith(":" + binding["HostPort"])
        env = dict(e.split("=", 1) for e in c.attrs["Config"]["Env"])
        assert env["WORK_MS"] == "20" and env["TIERSCALE_GROUP"] == group

        # A second provider (a restarted controller, built for a newer revision) finds the same replica
        # from the labels alone, with the revision and engine it was made with.
        listed = DockerProvider(group, DEMO_IMAGE, revision="rev-next").list()
        assert isinstance(listed, Listing) and not listed.unreachable
        assert [(x.id, x.address, x.state, x.revision, x.host, x.ref) for x in listed] == [
            ("r-one", r.address, "running", REV, DEFAULT_ENGINE, r.ref)
        ]
        assert abs(listed[0].created_at - r.created_at) < 0.01
        assert isinstance(listed[0].tier_data, DockerData) and listed[0].tier_data.cpus == 0.5

        p.delete(listed[0], grace=5)
        assert group_containers(client, group) == []  # removed, not just stopped
        assert p.list() == []
        p.delete(listed[0], grace=5)  # already gone: not an error
        # Removed behind the provider's back between its listing and its delete: not an error either.
        again = p.create("r-two")
        client.api.remove_container(again.ref, force=True)
        p.delete(again, grace=1)
    finally:
        p.close()


def test_containers_without_our_labels_are_never_listed_or_touched(client: Any, group: str) -> None:
    hand = client.containers.run(DEMO_IMAGE, detach=True, name=f"hand-{group}")
    other = client.containers.run(
        DEMO_IMAGE, detach=True, labels={LABEL_GROUP: group + "-x", LABEL_REPLICA: "r-x"}
    )
    half = client.containers.run(DEMO_IMAGE, detach=True, labels={LABEL_GROUP: group})  # no replica label
    p = DockerProvider(group, DEMO_IMAGE, revision=REV)
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
    p = DockerProvider(group, DEMO_IMAGE, revision=REV)
    try:
        r = p.create("r-kill")
        client.api.kill(r.ref)  # what `docker kill` does
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
    p = DockerProvider(group, DEMO_IMAGE, command=["/bin/sh", "-c", "trap '' TERM; sleep 300"], revision=REV)
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
    p = DockerProvider(group, DEMO_IMAGE, cpus=0.5, stats_source=source, revision=REV)
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
        (
            DockerProvider(group, "tierscale/no-such-image:1", revision=REV),
            "template.image: 'tierscale/no-such-image:1'",
        ),
        (DockerProvider(group, DEMO_IMAGE, port=9999, revision=REV), "does not expose port 9999/tcp"),
        # Created, then the start fails: the container must be removed again.
        (
            DockerProvider(group, DEMO_IMAGE, command=["/no/such/binary"], revision=REV),
            "no such file or directory",
        ),
    ]
    for provider, needle in cases:
        # The template must change before a retry can work (the engine answers 400 to the failed start).
        with pytest.raises(TemplateError) as err:
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
    p = DockerProvider(group, DEMO_IMAGE, host=host.format(port=_closed_port()), revision=REV)
    try:
        calls = (
            p.list,
            lambda: p.create("r-x"),
            lambda: p.stats([]),
            lambda: p.delete(Replica("r-x", group, None, "running", 0.0), 0.0),
        )
        for call in calls:
            try:
                call()
            except TierUnavailable as exc:
                assert "Docker engine unreachable at" in str(exc) and "\n" not in str(exc)
            else:
                assert call is not p.list, "list must fail on an unreachable engine"
        # The reason comes from the socket's errno, not from matching the SDK's words.
        reasons = {"tcp": "connection refused", "unix": "no such file or directory"}
        reason = reasons.get(host.partition(":")[0])
        if reason is not None:
            with pytest.raises(TierUnavailable, match=rf"unreachable at .* \({reason}\); is dockerd running"):
                p.list()
    finally:
        p.close()
    assert group_containers(client, group) == []
