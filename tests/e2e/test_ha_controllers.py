"""Two controllers on two test hosts, one leader on an etcd lease in a third, one Docker engine in a fourth.

Every host is a network namespace on a test bridge (tests/helpers/dockerd.py); each controller runs
`tierscale run` inside its own, with its own state dir, API and nginx on its host's address, and the
same group config. Under steady load through both controllers' balancers:
  c1 leads and makes the replicas; c2 stands by and balances them; a change sent to c2 is refused with
  c1's address, and the CLI re-sends it there;
  c1 SIGKILLed: c2 takes over within lease_ttl + a try, at c1's count, making nothing twice;
  c1 back: a standby; c2's host cut off (a partition): c2 stops acting, c1 takes over; c2 back: standby.
Then the event timelines of both controllers are checked: their acting intervals never overlap, and every
create/delete lies inside its controller's interval.
"""

from __future__ import annotations

import secrets
import statistics
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers.e2e import events, failed_message, run_tierscale, wait_for
from helpers.ha_hosts import HaFleet, acting_terms, acts_outside, ha_fleet, http_open, overlaps
from tierscale.loadgen import LoadRunner

pytestmark = pytest.mark.e2e

TTL = 10.0  # the default: the failover goal is median <= lease_ttl + 2 s


def test_two_controllers_one_leader_survive_a_kill_and_a_partition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = "ha-" + secrets.token_hex(3)
    with ha_fleet(tmp_path, group, controllers=2, ttl=TTL) as fleet:
        run_story(fleet, group, monkeypatch)


def run_story(fleet: HaFleet, group: str, monkeypatch: pytest.MonkeyPatch) -> None:
    c1, c2 = fleet.ctls
    ours = fleet.ours
    token = secrets.token_hex(16)
    monkeypatch.setenv("TIERSCALE_API_TOKEN", token)
    takeovers: list[float] = []
    killed_at = killed_wall = 0.0
    c1.start()
    wait_for(
        lambda: c1.role(group) == "leader" and c1.status(group).get("ready") == 2,
        90,
        what="c1 leads, 2 ready",
    )
    c2.start()
    wait_for(
        lambda: c2.role(group) == "standby" and c2.status(group).get("ready") == 2,
        60,
        what="c2 stands by with both replicas in its balancer",
    )
    assert (c2.status(group)["ha"] or {})["leader"] == "c1"
    with LoadRunner(c2.url, 15, 900, timeout=10) as load2:
        with LoadRunner(c1.url, 15, 900, timeout=10) as load1:
            # ---- the leader's request metric counts both balancers' traffic (15 + 15 req/s), not its own 15
            def total_rps() -> float:
                d = c1.status(group).get("last_decision") or {}
                values = [p["value"] for p in d.get("proposals", []) if p["metric"] == "requests_per_replica"]
                return values[0] if values and values[0] is not None else 0.0

            wait_for(lambda: total_rps() >= 20, 30, what="the leader sees more than its own 15 req/s")
            seen_rps = total_rps()
            # ---- a change sent to the standby: refused naming the leader, which the CLI re-sends to
            req = urllib.request.Request(
                f"http://{c2.api}/api/groups/{group}/scale",
                data=b'{"replicas": 3}',
                method="POST",
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                http_open(req)
            assert refused.value.code == 409
            assert refused.value.headers.get("X-Tierscale-Leader") == c1.api
            out = run_tierscale("scale", group, "3", "--api", f"http://{c2.api}")
            assert out.returncode == 0, out.stdout + out.stderr
            wait_for(lambda: c1.status(group).get("ready") == 3, 60, what="3 ready on c1")
            wait_for(lambda: c2.status(group).get("ready") == 3, 30, what="c2 balances the third")
            time.sleep(2)  # both balancers send to all three before the kill
            # ---- the leader SIGKILLed: its balancer stops changing, so its load stops too
            load1.stop()
            # Every request already sent is answered before the kill: one sent as stop() was called
            # would otherwise be cut by the kill (CI 2026-12-04: 1 of 400, at the very end).
            result1 = load1.result(timeout=30)
            c1.kill()
            killed_at, killed_wall = time.monotonic(), time.time()
        wait_for(lambda: c2.role(group) == "leader", TTL + 20, interval=0.1, what="c2 takes over")
        takeovers.append(time.monotonic() - killed_at)
        st = c2.status(group)
        assert st["desired"] == 3 and st["paused"] is True  # c1's count and pause, not c2's memory
        time.sleep(3)
        assert len(ours()) == 3  # nothing made twice
        assert events(c2.state, group, "leader_takeover")
        # the new leader acts: back to 2 (its drain needs no ack from a dead controller)
        out = run_tierscale("scale", group, "2", "--api", f"http://{c2.api}")
        assert out.returncode == 0, out.stdout + out.stderr
        wait_for(lambda: len(ours()) == 2, 60, what="2 containers")
        # ---- c1 back: adopts, stands by
        c1.start()
        wait_for(
            lambda: c1.role(group) == "standby" and c1.status(group).get("ready") == 2,
            60,
            what="c1 back as a standby",
        )
        with LoadRunner(c1.url, 15, 900, timeout=10) as load1b:
            time.sleep(2)
            # ---- the leader's host cut off: it stops acting, c1 takes over
            load2.stop()
            # As before the kill: every request sent to c2's balancer is answered before its link is cut.
            result2 = load2.result(timeout=30)
            cut = time.monotonic()
            c2.link(up=False)
            wait_for(lambda: c1.role(group) == "leader", TTL + 20, interval=0.1, what="c1 takes over")
            takeovers.append(time.monotonic() - cut)
            c2.link(up=True)
            wait_for(
                lambda: (c2.status(group).get("ha") or {}).get("leader") == "c1",
                30,
                what="c2 back, seeing c1 lead",
            )
            assert c2.role(group) == "standby"
            assert len(ours()) == 2
            load1b.stop()
        result1b = load1b.result(timeout=30)
    for r in (result1, result2, result1b):
        assert r.sent > 0 and r.failed == 0, failed_message(r)
    # ---- the timelines: never two acting, every act inside its actor's term
    terms = {c.name: acting_terms(c, group, [killed_wall] if c is c1 else []) for c in (c1, c2)}
    assert not overlaps(terms), overlaps(terms)
    for c in (c1, c2):
        assert not acts_outside(c, group, terms[c.name]), acts_outside(c, group, terms[c.name])
    print(
        f"\nha takeover (lease_ttl {TTL:g}s): after SIGKILL {takeovers[0]:.1f}s, after a partition "
        f"{takeovers[1]:.1f}s (median {statistics.median(takeovers):.1f}s); failed requests "
        + ", ".join(f"{r.failed}/{r.sent}" for r in (result1, result2, result1b))
        + f"; the leader's request metric {seen_rps:.1f} req/s for 2 x 15 offered"
    )
