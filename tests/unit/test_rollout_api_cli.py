"""Live config and rollout control from the outside: POST /api/config and the rollout routes (against
the OpenAPI schemas), the validation of `rollout:` blocks, and `tierscale apply | validate | rollout` run
in-process with click's CliRunner against a controller on the fake tier.

No processes and no real waiting on the controller: time is a `ManualClock` everywhere.
"""

from __future__ import annotations

import asyncio
import copy
import json
import socket
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from click.testing import CliRunner, Result

from tierscale.api.openapi import openapi_document
from tierscale.api.server import ApiServer
from tierscale.balancer.fake import FakeBalancer
from tierscale.cli import main as cli_main
from tierscale.config import Config, ConfigError, load_config_text
from tierscale.config.revision import template_revision
from tierscale.controller.clock import ManualClock
from tierscale.controller.locks import group_lock
from tierscale.controller.runner import Controller
from tierscale.providers.base import TemplateError
from tierscale.providers.fake import FakeProber, FakeProvider
from tierscale.service import BackgroundController

TOKEN = "rollout-token"
DOC = openapi_document()
Doc = dict[str, Any]


def validator(schema_name: str) -> jsonschema.protocols.Validator:
    """A validator for one component schema, its `$ref`s resolved inside the OpenAPI document."""
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": DOC["components"]}
    cls = jsonschema.validators.validator_for({"$schema": "https://json-schema.org/draft/2020-12/schema"})
    cls.check_schema(schema)
    return cls(schema)


ROLLOUT_VIEW = validator("RolloutView")
CONFIG_APPLIED = validator("ConfigApplied")
GROUP_STATUS = validator("GroupStatus")
ERROR = validator("Error")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------------------ configs
def group(name: str, port: int, **kw: Any) -> Doc:
    return {
        "name": name,
        "tier": "process",
        "min": 1,
        "max": 6,
        "sync_period": "1s",
        "health": {"interval": "1s"},
        "metrics": [{"type": "cpu", "target": 50}],
        "balancer": {"listen": f"127.0.0.1:{port}"},
        "template": {"command": ["true"]},
        **kw,
    }


def base_doc(state_dir: Path, api_port: int, token_env: str) -> Doc:
    return {
        "api": {"listen": f"127.0.0.1:{api_port}", "token_env": token_env},
        "state_dir": str(state_dir),
        "groups": [group("web", free_port()), group("api", free_port())],
    }


def edited(doc: Doc, edit: Callable[[Doc], object]) -> Doc:
    new = copy.deepcopy(doc)
    edit(new)
    return new


def new_template(d: Doc) -> None:
    d["groups"][0]["template"]["command"] = ["sleep", "60"]


def to_docker(d: Doc) -> None:
    d["groups"][0].update(tier="docker", template={"image": "tierscale/demo:latest"})


@dataclass
class FakeTier:
    """Provider factory for the fake tier: one fake per group, a new revision shares its replicas."""

    clock: ManualClock
    tiers: dict[str, FakeProvider] = field(default_factory=dict)
    unreachable: set[str] = field(default_factory=set)  # groups whose provider cannot be built

    def provider(self, g: Any, state_dir: Path, sink: Any) -> FakeProvider:
        if g.name in self.unreachable:
            raise TemplateError(f"groups[{g.name}].template.cloud: cloud 'nope' is not in clouds.yaml")
        revision = template_revision(g.template)
        base = self.tiers.get(g.name)
        if base is not None:
            return base.for_revision(revision)
        p = self.tiers[g.name] = FakeProvider(
            g.name, revision=revision, clock=self.clock.now, cpu_percent=50.0
        )
        return p

    def controller_kw(self) -> dict[str, Any]:
        return {
            "clock": self.clock,
            "provider_factory": self.provider,
            "balancer_factory": lambda g, sd: FakeBalancer(),
            "prober_factory": lambda g, p: FakeProber(p),
        }


# ------------------------------------------------------------------------------------------------ API
@dataclass
class Reply:
    status: int
    body: Any
    text: str


@dataclass
class Api:
    controller: Controller
    clock: ManualClock
    base: str
    session: aiohttp.ClientSession
    doc: Doc
    tier: FakeTier

    async def call(self, method: str, path: str, data: bytes = b"", **hdrs: str) -> Reply:
        async with self.session.request(method, self.base + path, data=data, headers=hdrs) as resp:
            text = await resp.text()
            return Reply(resp.status, json.loads(text), text)

    async def post(self, path: str, data: bytes = b"", token: str | None = TOKEN, **hdrs: str) -> Reply:
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        return await self.call("POST", path, data, **hdrs)

    async def apply(self, text: str, token: str | None = TOKEN) -> Reply:
        return await self.post(
            "/api/config", text.encode(), token=token, **{"Content-Type": "application/yaml"}
        )

    async def apply_doc(self, edit: Callable[[Doc], object]) -> Reply:
        return await self.apply(json.dumps(edited(self.doc, edit)))

    async def tick(self) -> None:
        for gc in list(self.controller.groups.values()):
            await gc.reconcile()
            await gc.settle()
            await gc.health_rounds.probe_all()
        self.clock.advance(1)


def with_api(tmp_path: Path, scenario: Callable[[Api], Awaitable[None]], token: str | None = TOKEN) -> None:
    doc = base_doc(tmp_path / "state", 19900, "TIERSCALE_ROLLOUT_TEST_NEVER_SET")
    tier = FakeTier(ManualClock())
    controller = Controller(load_config_text(json.dumps(doc)), **tier.controller_kw())

    async def main() -> None:
        server = ApiServer(
            controller.handle(), controller.config.api, listen=f"127.0.0.1:{free_port()}", token=token
        )
        await server.start()
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
                for gc in controller.groups.values():
                    await gc.start()
                api = Api(controller, tier.clock, server.url, session, doc, tier)
                await api.tick()
                await asyncio.wait_for(scenario(api), 8)
        finally:
            await server.stop()
            for gc in controller.groups.values():
                await gc.shutdown()

    try:
        asyncio.run(main())
    finally:
        controller.close()


@pytest.mark.parametrize(
    ("token", "auth", "status"),
    [
        (TOKEN, None, 401),
        (TOKEN, "Bearer wrong", 401),
        (None, f"Bearer {TOKEN}", 403),  # no token on the controller: changes are disabled
    ],
    ids=["no-header", "wrong-token", "no-token-configured"],
)
def test_apply_config_needs_the_token(
    tmp_path: Path, token: str | None, auth: str | None, status: int
) -> None:
    async def scenario(api: Api) -> None:
        before = api.controller.config
        hdrs = {"Authorization": auth} if auth else {}
        text = json.dumps(edited(api.doc, lambda d: d["groups"][0].update(max=3)))
        reply = await api.call("POST", "/api/config", text.encode(), **hdrs)
        assert reply.status == status
        ERROR.validate(reply.body)
        assert reply.body["field"] == "Authorization"
        assert api.controller.config is before
        assert api.controller.groups["web"].s.max == 6

    with_api(tmp_path, scenario, token=token)


BAD_YAML = [
    # (the body, its first problem, the field)
    ("groups: [\n  {name: web\n", "<applied config>:2: invalid YAML", "body"),
    ("", "<applied config>:1: the file is empty", "body"),
    ("- 1\n- 2\n", "<applied config>:1: the top level must be a mapping", "body"),
    (
        "STATE_DIR\ngroups:\n  - name: web\n    tier: process\n    max: 0\n"
        "    template: {command: ['true']}\n",
        "<applied config>:5: groups[0].max: must be >= 1",
        "groups[0].max",
    ),
    (
        "STATE_DIR\ngroups:\n  - name: web\n    tier: process\n    max: 2\n"
        "    template: {command: ['true']}\n    rollout:\n      max_surge: 150%\n      max_unavailable: x\n",
        "<applied config>:8: groups[0].rollout.max_surge: must be at most 100% (got '150%') (and 1 more)",
        "groups[0].rollout.max_surge",
    ),
]


@pytest.mark.parametrize(
    ("text", "first", "field"), BAD_YAML, ids=["yaml-syntax", "empty", "list", "max", "rollout"]
)
def test_invalid_config_is_400_naming_the_line_and_field(
    tmp_path: Path, text: str, first: str, field: str
) -> None:
    async def scenario(api: Api) -> None:
        before = api.controller.config
        body = text.replace("STATE_DIR", f"state_dir: {json.dumps(api.doc['state_dir'])}")
        reply = await api.apply(body)
        assert reply.status == 400, reply.text
        ERROR.validate(reply.body)
        assert reply.body["error"].startswith(first), reply.body
        assert reply.body["field"] == field
        assert "\n" not in reply.body["error"]
        assert api.controller.config is before

    with_api(tmp_path, scenario)


def test_config_body_must_be_utf8(tmp_path: Path) -> None:
    async def scenario(api: Api) -> None:
        reply = await api.post("/api/config", b"groups: \xff\xfe")
        assert reply.status == 400 and reply.body["field"] == "body"
        assert "UTF-8" in reply.body["error"]

    with_api(tmp_path, scenario)


def test_valid_config_is_200_with_the_summary_and_visible(tmp_path: Path) -> None:
    async def scenario(api: Api) -> None:
        def edit(d: Doc) -> None:
            d["groups"][0].update(max=4)
            d["groups"].pop(1)
            d["groups"].append(group("extra", free_port(), min=2))

        reply = await api.apply_doc(edit)
        assert reply.status == 200, reply.text
        CONFIG_APPLIED.validate(reply.body)
        assert reply.body == {
            "applied": True,
            "added": ["extra"],
            "removed": ["api"],
            "changed": {"web": ["max"]},
            "rollouts": [],
        }
        web = await api.call("GET", "/api/groups/web")
        GROUP_STATUS.validate(web.body)
        assert web.body["max"] == 4
        names = [g["group"] for g in (await api.call("GET", "/api/groups")).body["groups"]]
        assert names == ["web", "extra"]
        assert (await api.call("GET", "/api/groups/api")).status == 404
        await api.controller.groups["extra"].start()
        await api.tick()
        await api.tick()
        extra = await api.call("GET", "/api/groups/extra")
        GROUP_STATUS.validate(extra.body)
        assert extra.body["min"] == 2 and extra.body["current"] == 2
        series = await api.call("GET", "/api/groups/extra/series")
        assert series.status == 200 and series.body["group"] == "extra"

    with_api(tmp_path, scenario)


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (to_docker, "groups[0].tier:"),
        (lambda d: d.update(state_dir=d["state_dir"] + "-other"), "state_dir:"),
        (lambda d: d["api"].update(token_env="SOME_OTHER_TOKEN"), "api:"),
    ],
    ids=["tier", "state_dir", "api"],
)
def test_config_the_controller_cannot_take_is_409(
    tmp_path: Path, edit: Callable[[Doc], object], says: str
) -> None:
    async def scenario(api: Api) -> None:
        before = api.controller.config

        def change(d: Doc) -> None:
            edit(d)
            d["groups"][1].update(max=2)

        reply = await api.apply_doc(change)
        assert reply.status == 409, reply.text
        ERROR.validate(reply.body)
        assert reply.body["error"].startswith(says) and "\n" not in reply.body["error"]
        assert api.controller.config is before
        assert (await api.call("GET", "/api/groups/api")).body["max"] == 6

    with_api(tmp_path, scenario)


def test_group_owned_elsewhere_is_409(tmp_path: Path) -> None:
    async def scenario(api: Api) -> None:
        def change(d: Doc) -> None:
            d["groups"][0].update(max=2)
            d["groups"].append(group("owned", free_port()))

        with group_lock(api.controller.state_dir, "owned"):
            reply = await api.apply_doc(change)
        assert reply.status == 409, reply.text
        assert "owned" in reply.body["error"] and "another tierscale process" in reply.body["error"]
        assert set(api.controller.groups) == {"web", "api"}
        assert (await api.call("GET", "/api/groups/web")).body["max"] == 6

    with_api(tmp_path, scenario)


def test_group_whose_tier_cannot_be_reached_is_409(tmp_path: Path) -> None:
    """Building a new group's provider fails (an OpenStack cloud not in clouds.yaml): one line, nothing
    changed, like any other config the controller cannot take."""

    async def scenario(api: Api) -> None:
        api.tier.unreachable.add("cloudy")
        before = api.controller.config

        def change(d: Doc) -> None:
            d["groups"][0].update(max=2)
            d["groups"].append(group("ok", free_port()))
            d["groups"].append(group("cloudy", free_port()))

        reply = await api.apply_doc(change)
        assert reply.status == 409, reply.text
        ERROR.validate(reply.body)
        assert "clouds.yaml" in reply.body["error"] and "\n" not in reply.body["error"]
        assert api.controller.config is before
        assert set(api.controller.groups) == {"web", "api"}
        assert api.tier.tiers["ok"].closed  # built before the failure, undone
        assert (await api.call("GET", "/api/groups/web")).body["max"] == 6

    with_api(tmp_path, scenario)


def test_rollout_view_matches_the_openapi_schema(tmp_path: Path) -> None:
    async def scenario(api: Api) -> None:
        reply = await api.call("GET", "/api/groups/web/rollout")
        assert reply.status == 200
        ROLLOUT_VIEW.validate(reply.body)
        old = api.controller.groups["web"].s.revision
        assert reply.body["state"] == "complete" and reply.body["target"] == old
        assert reply.body["replicas"] == {old: 1}
        for broken in ({**reply.body, "updated": "1"}, {**reply.body, "extra": 1}, {"group": "web"}):
            with pytest.raises(jsonschema.ValidationError):
                ROLLOUT_VIEW.validate(broken)

        applied = await api.apply_doc(new_template)
        assert applied.status == 200 and applied.body["rollouts"] == ["web"]
        await api.tick()
        view = (await api.call("GET", "/api/groups/web/rollout")).body
        ROLLOUT_VIEW.validate(view)
        new = api.controller.groups["web"].s.revision
        assert (view["state"], view["target"], view["previous"], view["declared"]) == (
            "progressing",
            new,
            old,
            new,
        )
        assert view["replicas"].get(new, 0) >= 1
        # The group's status carries the same view.
        status = (await api.call("GET", "/api/groups/web")).body
        GROUP_STATUS.validate(status)
        assert status["rollout"]["target"] == new

    with_api(tmp_path, scenario)


def test_rollout_actions(tmp_path: Path) -> None:
    async def scenario(api: Api) -> None:
        promote = await api.post("/api/groups/web/rollout/promote")
        assert promote.status == 409, promote.text
        ERROR.validate(promote.body)
        assert promote.body["error"].startswith("web: no canaries to promote")
        assert "\n" not in promote.body["error"]
        for action in ("pause", "resume", "undo"):  # nothing is rolling out, nothing to go back to
            reply = await api.post(f"/api/groups/web/rollout/{action}")
            assert reply.status == 409, (action, reply.text)
            assert reply.body["error"].startswith("web: ")

        unknown = await api.post("/api/groups/web/rollout/restart")
        # Only the four actions are routes (as the OpenAPI document lists them): anything else is none.
        assert unknown.status == 404 and unknown.body["field"] == "path"
        assert unknown.body["error"] == "no such route: /api/groups/web/rollout/restart"
        assert (await api.post("/api/groups/nope/rollout/pause")).status == 404
        assert (await api.post("/api/groups/web/rollout/pause", token=None)).status == 401
        assert (await api.post("/api/groups/web/rollout/pause", b'{"now": 1}')).status == 400

        assert (await api.apply_doc(new_template)).status == 200
        paused = await api.post("/api/groups/web/rollout/pause")
        assert paused.status == 200, paused.text
        ROLLOUT_VIEW.validate(paused.body)
        assert paused.body["state"] == "paused"
        ids = set(api.controller.groups["web"].ctx.rt.replicas)
        await api.tick()
        await api.tick()
        assert set(api.controller.groups["web"].ctx.rt.replicas) == ids  # paused: nothing replaced
        resumed = await api.post("/api/groups/web/rollout/resume")
        assert resumed.status == 200 and resumed.body["state"] == "progressing"
        undone = await api.post("/api/groups/web/rollout/undo")
        assert undone.status == 200, undone.text
        ROLLOUT_VIEW.validate(undone.body)
        assert undone.body["state"] == "rolling_back"
        assert undone.body["target"] == resumed.body["previous"]
        assert undone.body["rejected"] == resumed.body["target"]

    with_api(tmp_path, scenario)


def test_promote_with_canaries(tmp_path: Path) -> None:
    async def scenario(api: Api) -> None:
        def canary(d: Doc) -> None:
            new_template(d)
            d["groups"][0].update(min=2, rollout={"canary": 1, "min_healthy_time": "0s"})

        assert (await api.apply_doc(canary)).status == 200
        for _ in range(10):
            await api.tick()
            if api.controller.groups["web"].rollout_view().state == "awaiting_promotion":
                break
        assert api.controller.groups["web"].rollout_view().state == "awaiting_promotion"
        reply = await api.post("/api/groups/web/rollout/promote")
        assert reply.status == 200, reply.text
        ROLLOUT_VIEW.validate(reply.body)
        assert reply.body["promoted"] is True and reply.body["state"] == "progressing"
        again = await api.post("/api/groups/web/rollout/promote")
        assert again.status == 409

    with_api(tmp_path, scenario)


# ------------------------------------------------------------------------------------------------ config
FILE = "cfg.yaml"
ROLLOUT_HEAD = """\
state_dir: /tmp/tierscale-rollout-test
groups:
  - name: web
    tier: process
    max: 4
    template: {command: ["true"]}
    rollout:
"""  # the rollout block's first key is on line 8


BAD_ROLLOUTS = [
    # (id, the block, line, field, words)
    ("both-0", "max_surge: 0\nmax_unavailable: 0", 8, "max_surge", "cannot both be 0"),
    ("both-0-percent", "max_surge: 0%\nmax_unavailable: '0'", 8, "max_surge", "cannot both be 0"),
    ("surge-negative", "max_surge: -1", 8, "max_surge", "must not be negative"),
    ("unavailable-negative", "max_unavailable: -1", 8, "max_unavailable", "must not be negative"),
    ("surge-150-percent", "max_surge: 150%", 8, "max_surge", "at most 100%"),
    ("unavailable-101-percent", "max_unavailable: 101%", 8, "max_unavailable", "at most 100%"),
    ("surge-abc", "max_surge: abc", 8, "max_surge", "a count or a percent"),
    ("unavailable-abc", "max_surge: 1\nmax_unavailable: abc", 9, "max_unavailable", "a count or a percent"),
    ("surge-true", "max_surge: true", 8, "max_surge", "a count or a percent"),
    ("surge-float", "max_surge: 1.5", 8, "max_surge", "a count or a percent"),
    ("surge-negative-percent", "max_surge: -5%", 8, "max_surge", "a count or a percent"),
    ("surge-list", "max_surge: [1]", 8, "max_surge", "a count or a percent"),
    ("canary-above-max", "canary: 5", 8, "canary", "<= the group's max (4)"),
    ("canary-negative", "canary: -1", 8, "canary", ">= 0"),
    ("canary-bool", "canary: true", 8, "canary", "expected an integer"),
    (
        "deadline-equal",
        "min_healthy_time: 30s\nhealthy_deadline: 30s",
        9,
        "healthy_deadline",
        "longer than min_healthy_time (30s)",
    ),
    (
        "deadline-shorter",
        "healthy_deadline: 5s",  # min_healthy_time defaults to 10s
        8,
        "healthy_deadline",
        "longer than min_healthy_time (10s)",
    ),
    ("deadline-zero", "healthy_deadline: 0s", 8, "healthy_deadline", "must be > 0"),
    ("min-healthy-negative", "min_healthy_time: -1", 8, "min_healthy_time", ""),
    ("auto-rollback-string", "auto_rollback: 'yes'", 8, "auto_rollback", "expected true or false"),
    ("unknown-key", "surge: 1", 8, "surge", "unknown key"),
]


def rollout_text(block: str) -> str:
    return ROLLOUT_HEAD + textwrap.indent(block, " " * 6) + "\n"


@pytest.mark.parametrize(
    ("block", "line", "key", "words"), [c[1:] for c in BAD_ROLLOUTS], ids=[c[0] for c in BAD_ROLLOUTS]
)
def test_bad_rollout_block_names_the_field(block: str, line: int, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(rollout_text(block), FILE)
    first = info.value.problems[0]
    assert first.field == f"groups[0].rollout.{key}"
    assert first.line == line
    assert words in first.message
    assert str(first).startswith(f"{FILE}:{line}: groups[0].rollout.{key}: ")
    assert "\n" not in str(first)


@pytest.mark.parametrize(
    ("block", "surge", "unavailable"),
    [
        ("max_surge: 50%\nmax_unavailable: 1\ncanary: 4", "50%", "1"),
        ("max_surge: 0\nmax_unavailable: 100%", "0", "100%"),
        ("max_surge: '2'\nmin_healthy_time: 0s\nhealthy_deadline: 1s", "2", "0"),
    ],
)
def test_good_rollout_blocks_load(block: str, surge: str, unavailable: str) -> None:
    cfg = load_config_text(rollout_text(block), FILE)
    dumped = cfg.groups[0].model_dump(mode="json")["rollout"]
    assert (dumped["max_surge"], dumped["max_unavailable"]) == (surge, unavailable)


def cli(*args: str) -> Result:
    return CliRunner().invoke(cli_main, list(args), catch_exceptions=False)


@pytest.mark.parametrize(
    ("block", "line", "key"),
    [c[1:4] for c in BAD_ROLLOUTS if c[0] != "unknown-key"],
    ids=[c[0] for c in BAD_ROLLOUTS if c[0] != "unknown-key"],
)
def test_validate_and_apply_of_a_bad_rollout_block_exit_2(
    tmp_path: Path, block: str, line: int, key: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(rollout_text(block))
    expected = f"{path}:{line}: groups[0].rollout.{key}: "

    out = cli("validate", str(path))
    assert out.exit_code == 2
    assert out.stdout == ""
    (only,) = out.stderr.splitlines()
    assert only.startswith(expected)

    # Nothing listens on --api: exit 2 (validation), not 1 (connection refused).
    out = cli("apply", str(path), "--api", f"http://127.0.0.1:{free_port()}")
    assert out.exit_code == 2, out.stderr
    assert out.stderr.splitlines() == [only]
    assert "cannot reach" not in out.stderr


def test_apply_of_a_bad_file_sends_nothing(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(rollout_text("max_surge: 0\nmax_unavailable: 0"))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        out = cli("apply", str(path), "--api", f"http://127.0.0.1:{port}")
        assert out.exit_code == 2
        with pytest.raises(BlockingIOError):
            listener.accept()  # no connection was ever made


# ------------------------------------------------------------------------------------------------ CLI
@dataclass
class Running:
    bg: BackgroundController
    base: str
    doc: Doc
    tmp: Path
    token_env: str
    path: Path  # the file the controller runs

    @property
    def controller(self) -> Controller:
        assert self.bg.controller is not None
        return self.bg.controller

    def write(self, edit: Callable[[Doc], object], name: str = "new.yaml") -> Path:
        path = self.tmp / name
        path.write_text(json.dumps(edited(self.doc, edit), indent=2))
        return path

    def config(self) -> Config:
        return self.bg.call(lambda: self.controller.config)

    def wait(self, cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.bg.call(cond):
                return
            time.sleep(0.01)
        raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Running]:
    """A controller on the fake tier with its API on a free port, in a thread; its token in the env."""
    token_env = f"TIERSCALE_ROLLOUT_CLI_TOKEN_{id(tmp_path)}"
    monkeypatch.setenv(token_env, TOKEN)
    monkeypatch.delenv("TIERSCALE_API", raising=False)
    port = free_port()
    doc = base_doc(tmp_path / "state", port, token_env)
    tier = FakeTier(ManualClock())
    bg = BackgroundController(load_config_text(json.dumps(doc)), **tier.controller_kw())
    with bg:
        path = tmp_path / "run.yaml"
        path.write_text(json.dumps(doc, indent=2))
        r = Running(bg, f"http://127.0.0.1:{port}", doc, tmp_path, token_env, path)
        r.wait(lambda: bg.api is not None or bg.error is not None, "the API")
        assert bg.error is None, bg.error
        yield r
    assert bg.error is None, bg.error


def test_cli_apply_prints_one_line_per_group(running: Running) -> None:
    port = free_port()

    def edit(d: Doc) -> None:
        new_template(d)
        d["groups"][0].update(max=4)
        d["groups"].pop(1)
        d["groups"].append(group("extra", port))

    path = running.write(edit)
    out = cli("apply", str(path))  # the address and the token variable come from the file
    assert out.exit_code == 0, out.stderr
    assert out.stdout.splitlines() == [
        "extra: new group, started",
        "web: max, template changed; rolling out the new template (`tierscale rollout status web`)",
        "api: no longer managed; its replicas keep running (`down` removes them)",
    ]
    cfg = running.config()
    assert cfg.group("web").max == 4 and [g.name for g in cfg.groups] == ["web", "extra"]
    running.wait(lambda: "extra" in running.controller.groups, "extra managed")

    again = cli("apply", str(path), "--api", running.base)
    assert again.exit_code == 0 and again.stdout.strip() == "no change"

    bounds = running.write(lambda d: (edit(d), d["groups"][0].update(min=2)), "bounds.yaml")
    out = cli("apply", str(bounds))
    assert out.exit_code == 0 and out.stdout.splitlines() == ["web: min changed"]


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (to_docker, "groups[0].tier: group web cannot change tier"),
        (lambda d: d["api"].update(token_env="X"), "api:"),
    ],
    ids=["tier", "api"],
)
def test_cli_apply_refused_is_exit_2_with_one_line(
    running: Running, monkeypatch: pytest.MonkeyPatch, edit: Callable[[Doc], object], says: str
) -> None:
    monkeypatch.setenv("X", TOKEN)
    before = running.config()
    out = cli(
        "apply", str(running.write(lambda d: (edit(d), d["groups"][1].update(max=2)))), "--api", running.base
    )
    assert out.exit_code == 2
    (line,) = out.stderr.splitlines()
    assert line.startswith(f"tierscale: {says}")
    assert out.stdout == ""
    assert running.config() is before


def test_cli_apply_without_the_token_is_exit_2(running: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(running.token_env)
    out = cli("apply", str(running.write(lambda d: d["groups"][0].update(max=3))))
    assert out.exit_code == 2
    (line,) = out.stderr.splitlines()
    assert f"${running.token_env}" in line
    assert running.config().group("web").max == 6


def test_cli_rollout_status_and_actions(running: Running) -> None:
    gc = running.controller.groups["web"]
    # Replicas to roll (a group without any completes a rollout at once); the clock stands still, so
    # a new replica never finishes its min_healthy_time and the rollout stays in progress.
    running.wait(lambda: len(gc.ctx.rt.replicas) >= 1, "a replica")
    assert running.bg.loop is not None
    asyncio.run_coroutine_threadsafe(gc.health_rounds.probe_all(), running.bg.loop).result(10)
    running.wait(lambda: gc.status().ready >= 1, "a ready replica")
    out = cli("rollout", "status", "web", "--json", "--api", running.base)
    assert out.exit_code == 0, out.stderr
    view = json.loads(out.stdout)
    ROLLOUT_VIEW.validate(view)
    assert view["group"] == "web" and view["state"] == "complete"
    old = view["target"]

    # -c: the token variable is the config's api.token_env.
    out = cli("rollout", "promote", "web", "-c", str(running.path))
    assert out.exit_code == 2
    assert out.stderr.splitlines() == ["tierscale: web: no canaries to promote (state: complete)"]

    assert cli("apply", str(running.write(new_template))).exit_code == 0
    out = cli("rollout", "status", "web", "--api", running.base)
    assert out.exit_code == 0
    (line,) = out.stdout.splitlines()
    assert line.startswith("web: progressing, target ") and f"(from {old})" in line

    out = cli("rollout", "pause", "web", "-c", str(running.path), "--api", running.base)
    assert out.exit_code == 0, out.stderr
    assert out.stdout.startswith("web: paused, target ")
    view = json.loads(cli("rollout", "status", "web", "--json", "--api", running.base).stdout)
    ROLLOUT_VIEW.validate(view)
    assert view["state"] == "paused" and view["previous"] == old

    out = cli("rollout", "status", "nope", "--api", running.base)
    assert out.exit_code == 2 and "no group named 'nope'" in out.stderr
