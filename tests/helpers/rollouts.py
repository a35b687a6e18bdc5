"""Rollout scenarios every tier runs end to end: `tierscale run` processes, `tierscale apply`, real load.

Each scenario starts from a config file already written by the tier's test (one group, `replicas`
replicas), rewrites the file with a new template, hands it to the running controller, and
checks what a user would: no request failed, and the replicas all end on the right revision.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers.e2e import CliControllers, events, failed_message, run_tierscale, wait_for
from tierscale.api.client import call, resolve
from tierscale.config import load_config_text
from tierscale.config.revision import template_revision
from tierscale.loadgen import LoadResult, LoadRunner

TOKEN_ENV = "TIERSCALE_API_TOKEN"


@contextmanager
def api_token() -> Iterator[None]:
    """`apply` needs the controller's token: the same one in the environment of both."""
    old = os.environ.get(TOKEN_ENV)
    os.environ[TOKEN_ENV] = "rollout-" + os.urandom(6).hex()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(TOKEN_ENV, None)
        else:
            os.environ[TOKEN_ENV] = old


@dataclass
class Case:
    path: str  # the file `run` was started with (and `apply` is given)
    new_text: str  # the same config with another template
    url: str  # what the load requests, through the group's balancer
    replicas: int = 4
    cfg: Any = field(init=False)

    def __post_init__(self) -> None:
        self.cfg = load_config_text(Path(self.path).read_text(), self.path)

    @property
    def group(self) -> str:
        return str(self.cfg.groups[0].name)

    def get(self, route: str) -> dict[str, Any]:
        base, _, _ = resolve(None, self.cfg)
        try:
            return call(base, "GET", route, timeout=5)
        except Exception:  # a controller being restarted: no answer yet
            return {}

    def status(self) -> dict[str, Any]:
        return self.get(f"/api/groups/{self.group}")

    @property
    def new_revision(self) -> str:
        return template_revision(load_config_text(self.new_text, self.path).groups[0].template)

    def apply_new(self) -> str:
        Path(self.path).write_text(self.new_text)
        done = run_tierscale("apply", self.path)
        assert done.returncode == 0, done.stderr
        assert "rolling out" in done.stdout, done.stdout
        return done.stdout


def revisions(st: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in st.get("replicas", []):
        if r["state"] != "draining":
            out[r["revision"]] = out.get(r["revision"], 0) + 1
    return out


def settled_on(st: dict[str, Any], revision: str, n: int) -> bool:
    """`n` ready replicas, all of `revision`, nothing else left, rollout complete."""
    reps = st.get("replicas", [])
    return (
        len(reps) == n
        and all(r["revision"] == revision and r["state"] == "ready" for r in reps)
        and (st.get("rollout") or {}).get("state") == "complete"
    )


class Sampler:
    """The most replicas the group had at once (not leaving), sampled while a rollout runs."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.peak = 0

    def __call__(self) -> dict[str, Any]:
        st = self.case.status()
        self.peak = max(self.peak, sum(revisions(st).values()))
        return st


def good_rollout_killed_midway(case: Case, rate: float, timeout: float) -> LoadResult:
    """Roll to the new template under load; SIGKILL the controller once both revisions serve; a new
    controller resumes and finishes it. Returns the load's result (the caller asserts on it too)."""
    with api_token(), CliControllers(case.path, stop_timeout=90) as ctl:
        first = ctl.start()
        wait_for(lambda: case.status().get("ready") == case.replicas, timeout, what=f"{case.replicas} ready")
        old = case.status()["revision"]
        sample = Sampler(case)
        with LoadRunner(case.url, rate, timeout * 4) as runner:
            time.sleep(1)
            case.apply_new()
            new = case.new_revision

            def mixed() -> bool:
                revs = revisions(sample())
                return revs.get(new, 0) >= 1 and revs.get(old, 0) >= 1

            _wait(case, mixed, timeout, "old and new replicas side by side")
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            ctl.start()
            wait_for(
                lambda: settled_on(sample(), new, case.replicas),
                timeout * 2,
                interval=0.5,
                what="rollout done",
            )
            time.sleep(1)
        result = runner.result(timeout=30)
    assert result.failed == 0, failed_message(result)
    state = Path(case.cfg.state_dir)
    kinds = [e.kind for e in events(state, case.group)]
    assert "rollout_started" in kinds and "rollout_complete" in kinds, kinds
    resumed = events(state, case.group, "rollout_resumed")
    assert any("after a restart" in e.message for e in resumed), [e.message for e in resumed]
    # At most desired + surge at once; one more may be a create the killed controller had in flight.
    surge = case.cfg.groups[0].rollout.max_surge.of(case.replicas, True)
    assert sample.peak <= case.replicas + surge + 1, sample.peak
    return result


def bad_rollout_rolls_back(case: Case, rate: float, timeout: float) -> LoadResult:
    """The new template never turns healthy: the rollout fails, returns to the old revision by itself,
    and no request fails on the way."""
    with api_token(), CliControllers(case.path, stop_timeout=90) as ctl:
        ctl.start()
        wait_for(lambda: case.status().get("ready") == case.replicas, timeout, what=f"{case.replicas} ready")
        old = case.status()["revision"]
        with LoadRunner(case.url, rate, timeout * 4) as runner:
            time.sleep(1)
            case.apply_new()
            bad = case.new_revision  # it may fail and be rolled back before the first look

            def back() -> bool:
                st = case.status()
                ro = st.get("rollout") or {}
                return ro.get("rejected") == bad and settled_on(st, old, case.replicas)

            _wait(case, back, timeout * 2, "rolled back to the old revision")
            time.sleep(1)
        result = runner.result(timeout=30)
        ro = case.status()["rollout"]
        assert ro["target"] == old and ro["declared"] == bad, ro
    assert result.failed == 0, failed_message(result)
    kinds = [e.kind for e in events(Path(case.cfg.state_dir), case.group)]
    assert {"rollout_failed", "rollout_rollback", "rollout_complete"} <= set(kinds), kinds
    return result


def load_doubles_midway(case: Case, base: float, timeout: float) -> list[int]:
    """The offered load doubles while the rollout runs: the group scales out on the new revision, the
    surge is not counted into its desired count, and it ends with every replica new. Returns the
    desired counts seen."""
    rate = {"now": base}
    desired: list[int] = []
    with api_token(), CliControllers(case.path, stop_timeout=90) as ctl:
        ctl.start()
        wait_for(lambda: case.status().get("ready") == case.replicas, timeout, what=f"{case.replicas} ready")
        sample = Sampler(case)
        fn: Callable[[float], float] = lambda t: rate["now"]  # noqa: E731
        with LoadRunner(case.url, fn, timeout * 6) as runner:
            time.sleep(2)
            case.apply_new()
            new = case.new_revision
            wait_for(lambda: revisions(sample()).get(new, 0) >= 1, timeout, what="first new replica")
            rate["now"] = base * 2

            def done() -> bool:
                st = sample()
                if st.get("desired") is not None:
                    desired.append(st["desired"])
                return st.get("desired", 0) > case.replicas and settled_on(st, new, st["desired"])

            _wait(case, done, timeout * 3, "scaled out, every replica new")
        result = runner.result(timeout=30)
    assert result.failed == 0, failed_message(result)
    # The policy's count, never inflated by surge: with max_surge 1 the group never held more than
    # desired + 1 replicas (and the desired count never jumped by the replicas that surge brought).
    top = max(desired)
    assert sample.peak <= top + 1, (sample.peak, desired)
    return desired


def _wait(case: Case, pred: Callable[[], Any], timeout: float, what: str) -> None:
    """wait_for, and on a timeout the group's status and its last events: what it was doing instead."""
    try:
        wait_for(pred, timeout, interval=0.5, what=what)
    except AssertionError as exc:
        story = [f"{e.kind}: {e.message}" for e in events(Path(case.cfg.state_dir), case.group)]
        raise AssertionError(f"{exc}; status {case.status()}; events {story[-30:]}") from None
