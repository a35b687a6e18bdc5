"""End to end on the docker tier: real dockerd, real containers, real nginx, real HTTP, the real controller.

The scenarios of tests/e2e/test_e2e_process.py, plus what only a container engine can do to you: `docker
kill`, containers made by hand next to ours, and dockerd itself restarting under a serving group.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from helpers.ci import require
from helpers.daemons import dockerd_pid, start_dockerd, stop_dockerd
from helpers.e2e import (
    CliControllers,
    Step,
    balancer_processes,
    decisions,
    events,
    free_port,
    group_config,
    nginx_processes,
    replace_under_load,
    replica_ids,
    run_tierscale,
    scale_out_and_back,
    wait_for,
    wait_passes,
    work_url,
)
from tierscale.controller.down import down
from tierscale.loadgen import LoadRunner, run_load_sync
from tierscale.providers import make_provider
from tierscale.providers.docker import LABEL_GROUP
from tierscale.providers.docker_image import DEMO_IMAGE, build_demo_image
from tierscale.service import BackgroundController
from tierscale.views import read_statuses

pytestmark = pytest.mark.e2e


def _client() -> Any:
    try:
        c = docker.from_env(version="auto", timeout=30)
        c.ping()
        return c
    except Exception:
        return None


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    c = _client()
    require(c is not None, "Docker engine (scripts/setup/docker.sh)")
    build_demo_image(c)
    yield c
    c.close()


def containers(group: str, status: str | None = None) -> list[Any]:
    c = _client()  # a fresh client: the module one may predate a dockerd restart
    assert c is not None, "Docker engine not answering"
    try:
        filters: dict[str, Any] = {"label": f"{LABEL_GROUP}={group}"}
        if status:
            filters["status"] = status
        return c.containers.list(all=True, ignore_removed=True, filters=filters)
    finally:
        c.close()


def docker_config(
    state_dir: Path,
    min_: int = 1,
    max_: int = 4,
    cpus: float = 0.25,
    target: int = 50,
    down_window: str = "4s",
    host: str | None = None,
    balancer_type: str = "nginx",
) -> tuple[Any, str]:
    name = "dk-" + secrets.token_hex(3)  # labels are engine-wide: never collide with another run
    host_key = f", host: {host}" if host else ""
    template = f"{{image: {DEMO_IMAGE}, port: 8080, cpus: {cpus}, memory: 64m{host_key}}}"
    return group_config(
        state_dir,
        "docker",
        template,
        name=name,
        min_=min_,
        max_=max_,
        target=target,
        down_window=down_window,
        balancer_type=balancer_type,
    )


def cleanup(cfg: Any) -> None:
    group = cfg.groups[0].name
    with contextlib.suppress(Exception):
        down(cfg)
    leaked = containers(group)
    for c in leaked:  # a failed test must not leak containers
        c.remove(force=True)
    assert not balancer_processes(Path(cfg.state_dir))
    assert not leaked, f"down left containers: {[c.name for c in leaked]}"


@pytest.fixture
def state_dir(tmp_path: Path, client: Any) -> Path:
    return tmp_path / "state"


def group_of(cfg: Any) -> str:
    return str(cfg.groups[0].name)


def test_scale_out_under_load_and_back_in_with_zero_failures(state_dir: Path, balancer_type: str) -> None:
    # Docker enforces the CPU allotment (CFS quota), unlike the process tier: a replica offered more than
    # its allotment queues requests until the new ones serve. The step is sized so the first replica is
    # busy (≈40 % of 0.5 core) but never overloaded, and the low target still asks for 3 replicas.
    cfg, _ = docker_config(state_dir, min_=1, max_=4, cpus=0.5, target=15, balancer_type=balancer_type)
    g = group_of(cfg)
    try:
        with BackgroundController(cfg) as bg:
            rate = Step(4.0, 20.0, 2.0)

            def at_peak() -> None:
                assert len(containers(g, "running")) >= 3

            scale_out_and_back(bg, g, work_url(cfg, 10), rate, 70, first_ready=30, dwell=3, at_peak=at_peak)
            assert len(containers(g)) == 1  # removed, not merely stopped
    finally:
        cleanup(cfg)


def test_docker_killed_container_is_replaced_without_failed_requests(state_dir: Path, client: Any) -> None:
    cfg, _ = docker_config(state_dir, min_=2, max_=2)
    g = group_of(cfg)
    try:
        with BackgroundController(cfg) as bg:
            # `docker kill`, behind the controller's back
            victim, _, _, result = replace_under_load(
                bg, lambda r: client.api.kill(r.ref), 20, 10, timeout=30
            )
        assert result.failed == 0, f"{result.status} {result.errors}"
        ids = {c.labels["io.tierscale.replica"] for c in containers(g)}
        assert len(ids) == 2 and victim.id not in ids  # the killed container was removed, not left exited
        replaced = [e for e in events(state_dir, g, "replica_replaced") if e.replica == victim.id]
        assert replaced and replaced[0].data["reason"] == "exited"
    finally:
        cleanup(cfg)


def test_controller_sigkill_then_restart_adopts_every_container(state_dir: Path) -> None:
    cfg, path = docker_config(state_dir, min_=3, max_=3)
    g = group_of(cfg)
    try:
        with CliControllers(path, stop_timeout=30) as runs:
            first = runs.start()
            wait_for(lambda: len(containers(g, "running")) == 3, 30, what="three containers")
            wait_for(
                lambda: any(st["ready"] == 3 for st in read_statuses(state_dir)), 30, what="three in nginx"
            )
            before = {c.id for c in containers(g)}
            runs.restart_after_sigkill(first, work_url(cfg, 1), 20)
            # Several passes of the new controller: long enough for duplicates to appear if adoption failed.
            wait_passes(state_dir, g, 5, at_least=6)
            after = {c.id for c in containers(g)}
            assert after == before, f"before {before}, after {after}"
            assert len(nginx_processes(state_dir)) == 1
            res = run_load_sync(work_url(cfg, 1), 30, 2)
            provider_ids = {r.id for r in make_provider(cfg.groups[0], state_dir).list()}
            assert res.failed == 0 and set(res.instances) == provider_ids
    finally:
        cleanup(cfg)


def test_down_leaves_no_container_and_never_touches_a_hand_made_one(state_dir: Path, client: Any) -> None:
    cfg, path = docker_config(state_dir, min_=2, max_=2)
    g = group_of(cfg)
    hand = client.containers.run(DEMO_IMAGE, detach=True, name=f"by-hand-{g}")  # no labels
    try:
        once = run_tierscale("run", path, "--once", timeout=90)
        assert once.returncode == 0, once.stderr
        assert len(containers(g, "running")) == 2
        assert nginx_processes(state_dir)
        out = run_tierscale("down", path, timeout=90)
        assert out.returncode == 0, out.stderr
        assert "deleted 2 replica(s)" in out.stdout
        assert containers(g) == []
        assert nginx_processes(state_dir) == []
        hand.reload()
        assert hand.status == "running"
    finally:
        hand.remove(force=True)
        cleanup(cfg)


def test_unreachable_engine_is_reported_and_creates_nothing(state_dir: Path, client: Any) -> None:
    cfg, path = docker_config(state_dir, min_=1, max_=1, host=f"tcp://127.0.0.1:{free_port()}")
    g = group_of(cfg)
    try:
        out = run_tierscale("run", path, "--once", timeout=90)
        assert "Traceback" not in out.stderr, out.stderr
        assert "Docker engine unreachable at tcp://127.0.0.1:" in out.stderr, out.stderr
        assert containers(g) == []
        gone = run_tierscale("down", path, timeout=90)
        assert gone.returncode == 1
        assert "Docker engine unreachable" in gone.stderr and "Traceback" not in gone.stderr, gone.stderr
    finally:
        cleanup(cfg)


class EngineLink:
    """A unix-socket relay in front of the real engine: cutting it makes the engine unreachable for the
    controller while the containers (and docker-proxy) keep running, like a remote engine behind a network
    failure or a live-restore dockerd restart."""

    def __init__(self, path: Path, target: str = "/var/run/docker.sock") -> None:
        self.path = path
        self.target = target
        self.listener: socket.socket | None = None
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()

    def up(self) -> None:
        self.path.unlink(missing_ok=True)
        ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ls.bind(str(self.path))
        ls.listen(64)
        self.listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def down(self) -> None:
        if self.listener is not None:
            with contextlib.suppress(OSError):
                self.listener.shutdown(socket.SHUT_RDWR)
            self.listener.close()
            self.listener = None
        self.path.unlink(missing_ok=True)
        with self.lock:
            for c in self.conns:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
                c.close()
            self.conns.clear()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                a, _ = ls.accept()
            except OSError:
                return
            b = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                b.connect(self.target)
            except OSError:
                a.close()
                continue
            with self.lock:
                self.conns += [a, b]
            for src, dst in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


def test_engine_unreachable_keeps_serving_then_resumes_without_replacing(tmp_path: Path, client: Any) -> None:
    link = EngineLink(Path(tempfile.mkdtemp(prefix="tsdk-")) / "docker.sock")
    link.up()
    state_dir = tmp_path / "state"
    cfg, _ = docker_config(state_dir, min_=2, max_=2, host=f"unix://{link.path}")
    g = group_of(cfg)
    url = work_url(cfg, 2)
    try:
        with BackgroundController(cfg) as bg:
            wait_for(lambda: bg.status(g)["ready"] == 2, 30, what="two ready containers")
            before = replica_ids(bg, g)
            backends = bg.status(g)["balancer"]["backends"]
            with LoadRunner(url, 20, 8) as runner:
                time.sleep(1)
                link.down()
                wait_for(lambda: not bg.status(g)["provider_ok"], 20, what="engine loss noticed")
                assert "Docker engine unreachable" in (bg.status(g)["last_error"] or "")
                ticks = len(decisions(state_dir, g))
                wait_passes(state_dir, g, 2, at_least=3)
                # The loop ticks on, nginx stays on the last known-good replicas, and they keep serving.
                assert len(decisions(state_dir, g)) > ticks
                assert bg.status(g)["balancer"]["backends"] == backends
                link.up()
                wait_for(lambda: bg.status(g)["provider_ok"], 30, what="engine back")
            result = runner.result(timeout=30)
            assert result.failed == 0, f"{result.status} {result.errors}"
            wait_passes(state_dir, g, 2, at_least=2)  # time for a wrong replacement to show
            assert replica_ids(bg, g) == before  # resumed, nothing replaced
            assert bg.status(g)["ready"] == 2
        messages = [e.message for e in events(state_dir, g, "provider_error")]
        created = events(state_dir, g, "replica_created")
        assert any("Docker engine unreachable" in m for m in messages), messages
        assert any("reachable again" in m for m in messages), messages
        assert len(created) == 2
    finally:
        link.up()  # down() must reach the engine through the configured host
        cleanup(cfg)
        link.down()
        shutil.rmtree(link.path.parent, ignore_errors=True)


# ---- dockerd restarting under a serving group ------------------------------------------------------
def test_dockerd_restart_the_loop_survives_and_the_group_is_whole_again(state_dir: Path) -> None:
    require(os.geteuid() == 0 and dockerd_pid() is not None, "a local dockerd this test may restart (root)")
    cfg, _ = docker_config(state_dir, min_=2, max_=2)
    g = group_of(cfg)
    url = work_url(cfg, 1)
    restarted = False
    try:
        with BackgroundController(cfg) as bg:
            wait_for(lambda: bg.status(g)["ready"] == 2, 30, what="two ready containers")
            before = replica_ids(bg, g)
            client = _client()
            live_restore = bool(client.info().get("LiveRestoreEnabled"))
            client.close()
            stop_dockerd()
            try:
                # Engine gone (and, without live-restore, its containers with it): the loop records it and
                # keeps ticking; health checks take the dead containers out of nginx.
                wait_for(lambda: not bg.status(g)["provider_ok"], 20, what="engine loss noticed")
                assert "Docker engine unreachable" in (bg.status(g)["last_error"] or "")
                ticks = len(decisions(state_dir, g))
                during = run_load_sync(url, 20, 2.5)
                # A pass may take longer than the load on a busy machine without its engine.
                wait_for(lambda: len(decisions(state_dir, g)) > ticks, 30, what="a pass without the engine")
                assert len(decisions(state_dir, g)) > ticks  # still deciding
                assert bg._thread is not None and bg._thread.is_alive()
                assert len(nginx_processes(state_dir)) == 1
                if live_restore:  # the containers outlive the daemon and keep serving (setup/docker.sh)
                    assert during.failed == 0, f"{during.status} {during.errors}"
            finally:
                start_dockerd()
                restarted = True
            # With live-restore the same containers are there again and kept; without it dockerd stopped
            # them, restart policy "no" keeps them down, so the controller removes them and makes new ones.
            wait_for(
                lambda: (
                    bg.status(g)["provider_ok"]
                    and bg.status(g)["ready"] == 2
                    and (replica_ids(bg, g) == before if live_restore else not before & replica_ids(bg, g))
                ),
                60,
                what="group whole again after the engine came back",
            )
            wait_for(lambda: len(containers(g)) == 2, 20, what="stopped containers removed")
            assert len(containers(g, "running")) == 2
            res = run_load_sync(url, 20, 2)
            assert res.failed == 0, f"{res.status} {res.errors}"
            assert set(res.instances) == replica_ids(bg, g)
        messages = [e.message for e in events(state_dir, g, "provider_error")]
        assert any("Docker engine unreachable" in m for m in messages), messages
        assert any("reachable again" in m for m in messages), messages
    finally:
        if not restarted:
            start_dockerd()
        cleanup(cfg)


def test_demo_on_the_docker_tier_scales_out_and_back_and_cleans_up(client: Any) -> None:
    out = run_tierscale("demo", "--tier", "docker", "--quick", timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "failed requests:                  0" in out.stdout
    peak = int(out.stdout.split("peak replicas:")[1].split()[0])
    assert peak >= 2, out.stdout[-2000:]
    assert containers("demo") == []  # the demo's `down` removed every container it made
