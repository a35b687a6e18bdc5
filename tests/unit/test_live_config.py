"""Live config: what `diff` finds between two configs, `Controller.apply` on the fake tier (all of a new
config or none of it), and SIGHUP's `service.reload`.

No processes: the groups share the test's event loop and time is a `ManualClock`. Passes are driven by
hand (reconcile → settle → health round → advance), or, where the group loops themselves matter (a new
group starts, a removed one stops), by `Controller.run` while the test advances the clock until what it
waits for holds.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tierscale.balancer.fake import FakeBalancer
from tierscale.config import Config, load_config_text
from tierscale.config.revision import template_revision
from tierscale.controller.clock import ManualClock
from tierscale.controller.group import GroupController
from tierscale.controller.live_config import ApplyError, ConfigDiff, diff
from tierscale.controller.locks import ControllerError, group_lock
from tierscale.controller.runner import Controller
from tierscale.providers.base import TemplateError
from tierscale.providers.fake import FakeProber, FakeProvider
from tierscale.service import reload

Doc = dict[str, Any]


# ------------------------------------------------------------------------------------------------ configs
def base_doc(state_dir: Path) -> Doc:
    """Two process groups; tests change a deep copy and load it (JSON is YAML)."""

    def group(name: str, port: int, min_: int) -> Doc:
        return {
            "name": name,
            "tier": "process",
            "min": min_,
            "max": 6,
            "sync_period": "1s",
            "health": {"interval": "1s", "healthy_after": 1, "unhealthy_after": 3, "startup_grace": "60s"},
            "metrics": [{"type": "cpu", "target": 50}],
            "balancer": {"listen": f"127.0.0.1:{port}"},
            "template": {"command": ["true"]},
        }

    return {
        "api": {"listen": "127.0.0.1:19900", "token_env": "TIERSCALE_LIVE_TEST_TOKEN"},
        "state_dir": str(state_dir),
        "groups": [group("web", 18181, 1), group("api", 18182, 1)],
    }


def load(doc: Doc) -> Config:
    return load_config_text(json.dumps(doc), "<test>")


def changed(doc: Doc, edit: Callable[[Doc], object]) -> Doc:
    new = copy.deepcopy(doc)
    edit(new)
    return new


def extra_group(name: str = "extra", port: int = 18183, min_: int = 2) -> Doc:
    return {
        "name": name,
        "tier": "process",
        "min": min_,
        "max": 4,
        "sync_period": "1s",
        "health": {"interval": "1s"},
        "metrics": [{"type": "cpu", "target": 50}],
        "balancer": {"listen": f"127.0.0.1:{port}"},
        "template": {"command": ["sleep", "1000"]},
    }


def docker_group(host: str) -> Doc:
    return {
        "name": "box",
        "tier": "docker",
        "max": 3,
        "balancer": {"type": "none"},
        "template": {"image": "tierscale/demo:latest", "host": host},
    }


# ------------------------------------------------------------------------------------------------ diff
def _web(d: Doc) -> Doc:
    return d["groups"][0]


DIFF_CASES: list[tuple[str, Callable[[Doc], object], ConfigDiff]] = [
    ("no-change", lambda d: None, ConfigDiff()),
    (
        "bounds",
        lambda d: _web(d).update(min=2, max=8),
        ConfigDiff(changed={"web": ("max", "min")}),
    ),
    (
        "metrics",
        lambda d: _web(d).update(metrics=[{"type": "cpu", "target": 30}]),
        ConfigDiff(changed={"web": ("metrics",)}),
    ),
    (
        "health",
        lambda d: _web(d)["health"].update(unhealthy_after=5, path="/ready"),
        ConfigDiff(changed={"web": ("health",)}),
    ),
    (
        "balancer",
        lambda d: _web(d)["balancer"].update(algorithm="least_conn"),
        ConfigDiff(changed={"web": ("balancer",)}),
    ),
    (
        "rollout-rules",
        lambda d: _web(d).update(rollout={"max_surge": 1, "canary": 1}),
        ConfigDiff(changed={"web": ("rollout",)}),
    ),
    (
        "template",
        lambda d: _web(d)["template"].update(command=["sleep", "60"]),
        ConfigDiff(changed={"web": ("template",)}, new_revision=("web",)),
    ),
    (
        "template-env",
        lambda d: _web(d)["template"].update(env={"WORK_MS": 20}),
        ConfigDiff(changed={"web": ("template",)}, new_revision=("web",)),
    ),
    (
        "template-and-bounds",
        lambda d: (_web(d)["template"].update(command=["false"]), _web(d).update(max=3)),
        ConfigDiff(changed={"web": ("max", "template")}, new_revision=("web",)),
    ),
    (
        # Where the process tier picks ports is placement, not what runs: no new revision.
        "template-port-range-only",
        lambda d: _web(d)["template"].update(port_range=[21000, 21999]),
        ConfigDiff(changed={"web": ("template",)}),
    ),
    (
        "group-added",
        lambda d: d["groups"].append(extra_group()),
        ConfigDiff(added=("extra",)),
    ),
    ("group-removed", lambda d: d["groups"].pop(1), ConfigDiff(removed=("api",))),
    (
        "added-removed-changed",
        lambda d: (d["groups"].pop(1), d["groups"].append(extra_group()), _web(d).update(max=5)),
        ConfigDiff(added=("extra",), removed=("api",), changed={"web": ("max",)}),
    ),
    # Groups are matched by name, not position.
    ("reordered", lambda d: d["groups"].reverse(), ConfigDiff()),
    # Spelling out a default is not a change.
    (
        "defaults-spelled-out",
        lambda d: (
            _web(d).update(policy="hpa", tolerance=0.1, scale_in_order="newest"),
            _web(d)["template"].update(cpus=1.0, env={}),
        ),
        ConfigDiff(),
    ),
]


@pytest.mark.parametrize(("edit", "expected"), [c[1:] for c in DIFF_CASES], ids=[c[0] for c in DIFF_CASES])
def test_diff_finds_what_changed(tmp_path: Path, edit: Callable[[Doc], object], expected: ConfigDiff) -> None:
    doc = base_doc(tmp_path / "state")
    got = diff(load(doc), load(changed(doc, edit)))
    assert got == expected
    assert got.empty is (not expected.added and not expected.removed and not expected.changed)
    summary = got.summary()
    assert summary == {
        "added": list(expected.added),
        "removed": list(expected.removed),
        "changed": {k: list(v) for k, v in expected.changed.items()},
        "rollouts": list(expected.new_revision),
    }
    json.dumps(summary)  # the API's body


def test_diff_docker_host_is_a_change_but_not_a_new_revision(tmp_path: Path) -> None:
    doc = changed(base_doc(tmp_path / "state"), lambda d: d["groups"].append(docker_group("unix:///a.sock")))
    moved = changed(doc, lambda d: d["groups"][2]["template"].update(host="tcp://10.0.0.2:2375"))
    got = diff(load(doc), load(moved))
    assert got.changed == {"box": ("template",)}
    assert got.new_revision == ()
    # ... while the image is content.
    other = changed(doc, lambda d: d["groups"][2]["template"].update(image="tierscale/demo:v2"))
    assert diff(load(doc), load(other)).new_revision == ("box",)


@pytest.mark.parametrize("index", [0, 1])
def test_diff_refuses_a_tier_change_naming_the_group_index(tmp_path: Path, index: int) -> None:
    doc = base_doc(tmp_path / "state")

    def to_docker(d: Doc) -> None:
        g = d["groups"][1]
        g.update(tier="docker", template={"image": "tierscale/demo:latest"})
        if index == 0:  # the index is the group's place in the new file
            d["groups"].reverse()

    with pytest.raises(ApplyError) as info:
        diff(load(doc), load(changed(doc, to_docker)))
    message = str(info.value)
    assert message.startswith(f"groups[{index}].tier:")
    assert "api" in message and "\n" not in message


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d, tmp: d.update(state_dir=str(tmp / "elsewhere")), "state_dir"),
        (lambda d, tmp: d["api"].update(listen="127.0.0.1:19901"), "api"),
        (lambda d, tmp: d["api"].update(token_env="OTHER_TOKEN"), "api"),
        (lambda d, tmp: d.pop("api"), "api"),
    ],
    ids=["state_dir", "api-listen", "api-token-env", "api-dropped"],
)
def test_diff_refuses_state_dir_and_api_changes(
    tmp_path: Path, edit: Callable[[Doc, Path], object], field: str
) -> None:
    doc = base_doc(tmp_path / "state")
    new = copy.deepcopy(doc)
    edit(new, tmp_path)
    new["groups"][0]["max"] = 3  # other changes in the same file do not make it acceptable
    with pytest.raises(ApplyError) as info:
        diff(load(doc), load(new))
    assert str(info.value).startswith(f"{field}:")


# ------------------------------------------------------------------------------------------------ fleet
@dataclass
class Fleet:
    """A controller on the fake tier: one fake per group (a new revision's provider shares its replicas)."""

    clock: ManualClock
    controller: Controller
    doc: Doc
    tiers: dict[str, FakeProvider] = field(default_factory=dict)
    providers: list[FakeProvider] = field(default_factory=list)  # every provider built, in order
    unreachable: set[str] = field(default_factory=set)  # groups whose provider cannot be built
    balancers: dict[str, list[FakeBalancer]] = field(default_factory=dict)  # per group, every one built
    balancer_fails: set[str] = field(default_factory=set)  # groups whose next balancer will not start

    @property
    def state_dir(self) -> Path:
        return self.controller.state_dir

    def gc(self, name: str) -> GroupController:
        return self.controller.groups[name]

    def ids(self, name: str) -> set[str]:
        return set(self.tiers[name].replicas)

    def events(self, name: str, kind: str) -> list[Any]:
        return self.controller.store.events(name, kinds=(kind,))

    async def apply(self, edit: Callable[[Doc], object]) -> ConfigDiff:
        new = changed(self.doc, edit)
        got = await self.controller.apply(load(new))
        self.doc = new
        return got

    async def tick(self, dt: float = 1.0) -> None:
        for gc in list(self.controller.groups.values()):
            await gc.reconcile()
            await gc.settle()
            await gc.health_rounds.probe_all()
        self.clock.advance(dt)

    async def until(self, cond: Callable[[], bool], what: str, steps: int = 400) -> None:
        """With `Controller.run` going: move time on until `cond` holds (provider calls run in threads)."""
        for _ in range(steps):
            if cond():
                return
            self.clock.advance(0.5)
            await asyncio.sleep(0.005)
        raise AssertionError(f"timed out waiting for {what}")


def make_fleet(tmp_path: Path, edit: Callable[[Doc], object] | None = None) -> Fleet:
    clock = ManualClock()
    doc = base_doc(tmp_path / "state")
    if edit is not None:
        edit(doc)
    fleet: Fleet

    def provider_factory(g: Any, state_dir: Path, sink: Any) -> FakeProvider:
        if g.name in fleet.unreachable:
            raise TemplateError(f"groups[{g.name}].template.cloud: cloud 'nope' is not in clouds.yaml")
        revision = template_revision(g.template)
        base = fleet.tiers.get(g.name)
        if base is None:
            p = fleet.tiers[g.name] = FakeProvider(
                g.name, revision=revision, clock=clock.now, cpu_percent=50.0
            )
        else:
            p = base.for_revision(revision)
        fleet.providers.append(p)
        return p

    def balancer_factory(g: Any, state_dir: Path) -> FakeBalancer | None:
        if g.balancer.type == "none":
            return None
        b = FakeBalancer(f"http://{g.balancer.listen}")
        b.fail_start = g.name in fleet.balancer_fails
        fleet.balancers.setdefault(g.name, []).append(b)
        return b

    fleet = Fleet(clock, None, doc)  # type: ignore[arg-type]
    fleet.controller = Controller(
        load(doc),
        clock=clock,
        provider_factory=provider_factory,
        balancer_factory=balancer_factory,
        prober_factory=lambda g, p: FakeProber(p),  # type: ignore[arg-type]
    )
    return fleet


def by_hand(fleet: Fleet, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Passes driven by the test (no `run`: no group locks are taken)."""

    async def main() -> None:
        for gc in fleet.controller.groups.values():
            await gc.start()
        await fleet.tick()
        try:
            await asyncio.wait_for(scenario(), 8)
        finally:
            for gc in fleet.controller.groups.values():
                await gc.shutdown()

    try:
        asyncio.run(main())
    finally:
        fleet.controller.close()


def running(fleet: Fleet, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """`Controller.run` in the background (locks held, one loop per group) while the scenario runs."""

    async def main() -> None:
        stop = asyncio.Event()
        started = asyncio.Event()
        task = asyncio.create_task(fleet.controller.run(stop, started=started.set))
        try:
            await asyncio.wait_for(started.wait(), 5)
            await fleet.until(
                lambda: all(len(fleet.tiers[n].replicas) >= 1 for n in ("web", "api")),
                "the first replicas",
            )
            await asyncio.wait_for(scenario(), 8)
        finally:
            stop.set()
            await asyncio.wait_for(task, 8)

    try:
        asyncio.run(main())
    finally:
        fleet.controller.close()


def lock_is_free(state_dir: Path, name: str) -> bool:
    try:
        with group_lock(state_dir, name):
            return True
    except ControllerError:
        return False


# ------------------------------------------------------------------------------------------------ apply
def test_bounds_change_applies_at_the_next_pass_and_keeps_the_replicas(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path, lambda d: _web(d).update(min=3))

    async def scenario() -> None:
        web = fleet.gc("web")
        await fleet.tick()
        before = fleet.ids("web")
        assert len(before) == 3 and web.desired == 3
        revision = web.s.revision

        got = await fleet.apply(lambda d: _web(d).update(min=2, max=5))
        assert got.changed == {"web": ("max", "min")} and got.new_revision == ()
        await fleet.tick()
        assert (web.s.min, web.s.max) == (2, 5)
        st = web.status()
        assert (st.min, st.max) == (2, 5)
        assert fleet.ids("web") == before  # nothing made or removed for a bounds change
        assert web.desired == 3
        assert web.s.revision == revision and web.rollout_view().state == "complete"

        # A raised min takes effect at the next pass; the replicas already there stay.
        await fleet.apply(lambda d: _web(d).update(min=4))
        assert web.desired == 3  # not before the pass
        await fleet.tick()
        await fleet.tick()
        assert web.desired == 4
        assert before < fleet.ids("web") and len(fleet.ids("web")) == 4
        assert fleet.tiers["web"].calls["delete"] == 0
        assert len(fleet.providers) == 2  # no provider rebuilt for bounds: web and api only
        applied = fleet.events("web", "config_applied")
        assert [e.data["changed"] for e in applied] == [["max", "min"], ["min"]]
        # The other group was not touched.
        assert fleet.gc("api").s.max == 6 and fleet.events("api", "config_applied") == []

    by_hand(fleet, scenario)


def test_metric_target_change_takes_effect(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path)

    async def scenario() -> None:
        web = fleet.gc("web")
        await fleet.tick()
        assert web.desired == 1  # cpu 50 % against a target of 50 %
        await fleet.apply(lambda d: _web(d).update(metrics=[{"type": "cpu", "target": 20}]))
        await fleet.tick()
        decision = web.status().last_decision
        assert decision is not None and "target 20" in decision.reason
        assert web.desired == 3  # ceil(1 × 50 / 20)
        assert fleet.gc("api").desired == 1

    by_hand(fleet, scenario)


def test_health_change_takes_effect(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path)

    async def scenario() -> None:
        web = fleet.gc("web")
        (rid,) = fleet.ids("web")
        fleet.tiers["web"].healthy[rid] = False
        await web.health_rounds.probe_all()
        assert not web.ctx.health.is_unhealthy(rid)  # 1 failure of unhealthy_after 3
        await fleet.apply(lambda d: _web(d)["health"].update(unhealthy_after=2))
        await web.health_rounds.probe_all()
        assert web.ctx.health.is_unhealthy(rid)  # the second failure is enough now

    by_hand(fleet, scenario)


def test_health_path_change_keeps_the_probers_seam(tmp_path: Path) -> None:
    """A Controller given a prober factory (tests, benchmarks) keeps probing through it after a health
    change: the replicas of the fake tier stay ready."""
    fleet = make_fleet(tmp_path)

    async def scenario() -> None:
        web = fleet.gc("web")
        await fleet.apply(lambda d: _web(d)["health"].update(path="/ready", timeout="2s"))
        assert web.s.health_path == "/ready"
        assert isinstance(web.health_rounds.prober, FakeProber)
        for _ in range(4):
            await fleet.tick()
        st = web.status()
        assert st.ready == 1 and {r.state for r in st.replicas} == {"ready"}

    by_hand(fleet, scenario)


def test_balancer_change_moves_the_backends(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path, lambda d: _web(d).update(min=2))

    async def scenario() -> None:
        web = fleet.gc("web")
        await fleet.tick()
        ready = web.ctx.ready_backends()
        assert len(ready) == 2
        (old,) = fleet.balancers["web"]
        assert old.backends == ready
        await fleet.apply(lambda d: _web(d)["balancer"].update(listen="127.0.0.1:18190"))
        (_, new) = fleet.balancers["web"]
        assert web.ctx.balancer is new and new.url == "http://127.0.0.1:18190"
        assert new.backends == ready  # started on the ready replicas at once
        ids = fleet.ids("web")
        await fleet.tick()
        assert fleet.ids("web") == ids and new.backends == ready

        # No balancer any more: the old one is stopped.
        await fleet.apply(lambda d: _web(d)["balancer"].update(type="none"))
        assert web.ctx.balancer is None and new.backends is None
        await fleet.tick()
        assert fleet.ids("web") == ids

    by_hand(fleet, scenario)


def test_balancer_that_cannot_start_does_not_half_apply(tmp_path: Path) -> None:
    """The new balancer is only started while the config is committed: its failure is recorded and
    retried by the next pass, and the rest of the config is applied all the same."""
    fleet = make_fleet(tmp_path)

    async def scenario() -> None:
        web, api = fleet.gc("web"), fleet.gc("api")
        fleet.balancer_fails.add("web")
        got = await fleet.apply(
            lambda d: (_web(d)["balancer"].update(listen="127.0.0.1:18190"), d["groups"][1].update(max=3))
        )
        assert set(got.changed) == {"web", "api"}
        assert fleet.controller.config.group("web").balancer.listen == "127.0.0.1:18190"
        assert api.s.max == 3
        assert len(fleet.events("web", "balancer_failed")) == 1
        new = fleet.balancers["web"][-1]
        assert web.ctx.balancer is new
        await fleet.tick()
        assert new.backends == web.ctx.ready_backends() and len(new.backends) == 1

    by_hand(fleet, scenario)


def test_template_change_starts_a_rollout(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path)

    async def scenario() -> None:
        web = fleet.gc("web")
        old = web.s.revision
        (first,) = fleet.ids("web")
        got = await fleet.apply(lambda d: _web(d)["template"].update(command=["sleep", "60"]))
        assert got.new_revision == ("web",)
        new = web.s.revision
        assert new != old
        view = web.rollout_view()
        assert (view.state, view.target, view.previous) == ("progressing", new, old)
        for _ in range(30):
            await fleet.tick()
            if web.rollout_view().state == "complete":
                break
        assert web.rollout_view().state == "complete"
        assert first not in fleet.ids("web")
        assert {r.revision for r in fleet.tiers["web"].replicas.values()} == {new}

    by_hand(fleet, scenario)


def test_new_group_starts_and_removed_group_stops(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path)

    async def scenario() -> None:
        sd = fleet.state_dir
        api_ids = fleet.ids("api")
        api_task = next(t for t in asyncio.all_tasks() if t.get_name() == "group-api")
        assert not lock_is_free(sd, "api") and not lock_is_free(sd, "web")

        got = await fleet.apply(lambda d: (d["groups"].pop(1), d["groups"].append(extra_group())))
        assert got.added == ("extra",) and got.removed == ("api",)
        assert set(fleet.controller.groups) == {"web", "extra"}

        # The new group runs: its loop makes its replicas, and its lock is held.
        await fleet.until(lambda: len(fleet.ids("extra")) == 2, "extra's replicas")
        await fleet.until(lambda: fleet.gc("extra").status().ready == 2, "extra's replicas ready")
        assert not lock_is_free(sd, "extra")
        assert [e.message for e in fleet.events("extra", "config_applied")] == [
            "new group from the applied config"
        ]

        # The removed group: loop stopped, replicas kept, lock released, said so.
        assert api_task.done()
        assert fleet.ids("api") == api_ids
        assert len(fleet.events("api", "group_unmanaged")) == 1
        assert lock_is_free(sd, "api")
        assert not lock_is_free(sd, "web")  # the others' stay held
        calls = sum(fleet.tiers["api"].calls.values())
        for _ in range(10):
            fleet.clock.advance(1)
            await asyncio.sleep(0.005)
        assert sum(fleet.tiers["api"].calls.values()) == calls  # nothing asks its tier anything
        # `tierscale status` no longer lists it; the others are still there.
        assert set(fleet.controller.store.statuses()) == {"web", "extra"}

    running(fleet, scenario)
    # Once `run` returns, every lock it held is released, the added group's too.
    for name in ("web", "extra"):
        assert lock_is_free(fleet.state_dir, name), name


def test_removed_group_added_again_adopts_its_replicas(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path)

    async def scenario() -> None:
        ids = fleet.ids("api")
        await fleet.apply(lambda d: d["groups"].pop(1))
        assert "api" not in fleet.controller.groups and fleet.ids("api") == ids
        await fleet.apply(lambda d: d["groups"].append(base_doc(fleet.state_dir)["groups"][1]))
        await fleet.until(lambda: len(fleet.events("api", "replica_adopted")) == 1, "api adopts")
        await fleet.until(lambda: fleet.gc("api").status().ready == 1, "api ready")
        assert fleet.ids("api") == ids  # the replica it left, not a new one
        assert not lock_is_free(fleet.state_dir, "api")

    running(fleet, scenario)


def test_group_owned_by_another_controller_changes_nothing(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path)

    async def scenario() -> None:
        web, api = fleet.gc("web"), fleet.gc("api")
        old_config, old_settings = fleet.controller.config, web.s
        groups_before = dict(fleet.controller.groups)

        def edit(d: Doc) -> None:
            _web(d).update(max=3, metrics=[{"type": "cpu", "target": 20}])
            d["groups"].pop(1)  # api would be released
            d["groups"] += [extra_group("free", 18184), extra_group("taken", 18185)]

        with group_lock(fleet.state_dir, "taken"), pytest.raises(ControllerError) as info:
            await fleet.apply(edit)
        assert "taken" in str(info.value)
        assert fleet.controller.config is old_config
        assert fleet.controller.groups == groups_before
        assert web.s is old_settings and web.s.max == 6
        assert fleet.events("web", "config_applied") == []
        assert fleet.events("api", "group_unmanaged") == []
        # The group built before the refusal is undone: provider closed, lock released.
        free = [p for p in fleet.providers if p.group == "free"]
        assert free and all(p.closed for p in free)
        assert lock_is_free(fleet.state_dir, "free")
        assert lock_is_free(fleet.state_dir, "taken")
        # The loops go on under the old config.
        await fleet.until(lambda: web.ctx.rt.last_decision is not None, "a pass")
        await fleet.until(lambda: api.status().ready == 1, "api still managed")
        n = len(fleet.controller.store.events("web", kinds=("scaled",)))
        for _ in range(6):
            fleet.clock.advance(1)
            await asyncio.sleep(0.005)
        assert web.desired == 1 and len(fleet.controller.store.events("web", kinds=("scaled",))) == n
        assert not lock_is_free(fleet.state_dir, "api")

        # Once the other controller lets go, the same file applies.
        got = await fleet.apply(edit)
        assert set(got.added) == {"free", "taken"} and got.removed == ("api",)
        assert fleet.gc("web").s.max == 3

    running(fleet, scenario)


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: (
            _web(d).update(max=3),
            d["groups"][1].update(tier="docker", template={"image": "tierscale/demo:latest"}),
        ),
        lambda d: (_web(d).update(max=3), d.update(state_dir=d["state_dir"] + "-2")),
        lambda d: (
            _web(d).update(max=3),
            d["groups"].append(extra_group()),
            d["api"].update(listen="[::1]:1"),
        ),
    ],
    ids=["tier", "state_dir", "api"],
)
def test_apply_error_changes_nothing(tmp_path: Path, edit: Callable[[Doc], object]) -> None:
    fleet = make_fleet(tmp_path)

    async def scenario() -> None:
        web = fleet.gc("web")
        old_config, old_settings, groups = fleet.controller.config, web.s, dict(fleet.controller.groups)
        built = len(fleet.providers)
        with pytest.raises(ApplyError):
            await fleet.apply(edit)
        assert fleet.controller.config is old_config
        assert fleet.controller.groups == groups
        assert web.s is old_settings
        assert len(fleet.providers) == built
        await fleet.tick()
        assert web.s.max == 6 and fleet.events("web", "config_applied") == []

    by_hand(fleet, scenario)


def test_apply_before_run_then_run_starts_the_new_group(tmp_path: Path) -> None:
    """`apply` on a controller that is not running yet: `run` starts the added group with the others."""
    fleet = make_fleet(tmp_path)

    async def main() -> None:
        await fleet.apply(lambda d: d["groups"].append(extra_group()))
        stop = asyncio.Event()
        task = asyncio.create_task(fleet.controller.run(stop))
        try:
            await fleet.until(lambda: task.done() or len(fleet.tiers["extra"].replicas) == 2, "extra runs")
            assert not task.done(), task.exception()
        finally:
            stop.set()
            await asyncio.wait_for(task, 8)

    try:
        asyncio.run(main())
    finally:
        fleet.controller.close()
    assert lock_is_free(fleet.state_dir, "extra")


# ------------------------------------------------------------------------------------------------ reload
def test_reload_with_a_bad_file_changes_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fleet = make_fleet(tmp_path)
    path = tmp_path / "tierscale.yaml"
    bad = changed(fleet.doc, lambda d: _web(d).update(max=0, tolerance=5))  # two problems
    path.write_text(json.dumps(bad, indent=2))
    before = fleet.controller.config

    async def main() -> bool:
        return await reload(fleet.controller, str(path))

    try:
        with caplog.at_level(logging.ERROR, "tierscale.controller"):
            assert asyncio.run(main()) is False
    finally:
        fleet.controller.close()
    assert fleet.controller.config is before
    assert fleet.gc("web").s.max == 6
    (record,) = [r for r in caplog.records if r.name == "tierscale.controller"]
    message = record.getMessage()
    assert "\n" not in message
    assert str(path) in message and "groups[0].max" in message and "(and 1 more)" in message


def test_reload_with_a_file_the_controller_cannot_take_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = make_fleet(tmp_path)
    path = tmp_path / "tierscale.yaml"
    path.write_text(json.dumps(changed(fleet.doc, lambda d: d.update(state_dir=str(tmp_path / "x")))))
    before = fleet.controller.config
    try:
        with caplog.at_level(logging.ERROR, "tierscale.controller"):
            assert asyncio.run(reload(fleet.controller, str(path))) is False
    finally:
        fleet.controller.close()
    assert fleet.controller.config is before
    assert any("state_dir" in r.getMessage() for r in caplog.records)


def test_reload_with_a_good_file_applies_it(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path)
    path = tmp_path / "tierscale.yaml"
    new = changed(fleet.doc, lambda d: (_web(d).update(max=4), d["groups"].append(extra_group())))
    path.write_text(json.dumps(new, indent=2))

    async def scenario() -> None:
        assert await reload(fleet.controller, str(path)) is True
        assert fleet.gc("web").s.max == 4
        assert "extra" in fleet.controller.groups
        assert fleet.controller.config.group("web").max == 4
        # The same file again is no change, and still fine.
        assert await reload(fleet.controller, str(path)) is True

    by_hand(fleet, scenario)


def test_reload_when_a_new_groups_tier_cannot_be_reached_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = make_fleet(tmp_path)
    fleet.unreachable.add("extra")
    path = tmp_path / "tierscale.yaml"
    path.write_text(
        json.dumps(changed(fleet.doc, lambda d: (_web(d).update(max=3), d["groups"].append(extra_group()))))
    )
    before = fleet.controller.config

    async def scenario() -> None:
        with caplog.at_level(logging.ERROR, "tierscale.controller"):
            assert await reload(fleet.controller, str(path)) is False
        assert fleet.controller.config is before
        assert set(fleet.controller.groups) == {"web", "api"} and fleet.gc("web").s.max == 6
        (record,) = [r for r in caplog.records if r.name == "tierscale.controller"]
        assert "clouds.yaml" in record.getMessage() and record.exc_info is None

    by_hand(fleet, scenario)
