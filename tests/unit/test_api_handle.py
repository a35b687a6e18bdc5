"""The HTTP API on a controller built on the fake tier: status bodies against the OpenAPI schema, auth,
bad bodies, unknown groups, scale / pause / resume. No processes: the server and the group share the
test's event loop, and time is a `ManualClock`.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest

from tierscale.api.openapi import openapi_document
from tierscale.api.server import ApiServer
from tierscale.balancer.fake import FakeBalancer
from tierscale.config import load_config_text
from tierscale.config.revision import template_revision
from tierscale.controller.clock import ManualClock
from tierscale.controller.group import GroupController
from tierscale.controller.runner import Controller
from tierscale.providers.fake import FakeProber, FakeProvider

TOKEN = "t"
DOC = openapi_document()


def validator(schema_name: str) -> jsonschema.protocols.Validator:
    """A validator for one component schema, its `$ref`s resolved inside the OpenAPI document."""
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": DOC["components"]}
    cls = jsonschema.validators.validator_for({"$schema": "https://json-schema.org/draft/2020-12/schema"})
    cls.check_schema(schema)
    return cls(schema)


GROUP_STATUS = validator("GroupStatus")
ERROR = validator("Error")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Reply:
    status: int
    body: Any
    text: str
    headers: Any


@dataclass
class Api:
    gc: GroupController
    clock: ManualClock
    base: str
    session: aiohttp.ClientSession

    async def call(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None, **hdrs: str
    ) -> Reply:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        async with self.session.request(method, self.base + path, data=data, headers=hdrs) as resp:
            text = await resp.text()
            return Reply(resp.status, json.loads(text), text, resp.headers)

    async def post(
        self, path: str, body: Any = None, *, raw: bytes | None = None, token: str | None = TOKEN
    ) -> Reply:
        hdrs = {"Authorization": f"Bearer {token}"} if token is not None else {}
        hdrs["Content-Type"] = "application/json"
        return await self.call("POST", path, body, raw=raw, **hdrs)

    async def tick(self) -> None:
        await self.gc.reconcile()
        await self.gc.settle()
        await self.gc.health_rounds.probe_all()
        self.clock.advance(1)


def with_api(tmp_path: Path, scenario: Callable[[Api], Awaitable[None]]) -> None:
    config = load_config_text(
        f"""
state_dir: {tmp_path / "state"}
groups:
  - name: web
    tier: process
    min: 1
    max: 6
    sync_period: 1s
    metrics: [{{type: cpu, target: 50}}]
    template: {{command: ["true"]}}
  - name: api
    tier: process
    min: 1
    max: 2
    sync_period: 1s
    balancer: {{listen: "127.0.0.1:8081"}}
    metrics: [{{type: cpu, target: 50}}]
    template: {{command: ["true"]}}
"""
    )
    clock = ManualClock()
    controller = Controller(
        config,
        clock=clock,
        provider_factory=lambda g, sd, sink: FakeProvider(
            g.name, revision=template_revision(g.template), clock=clock.now, cpu_percent=50.0
        ),
        balancer_factory=lambda g, s: FakeBalancer(),
        prober_factory=lambda g, p: FakeProber(p),  # type: ignore[arg-type]
    )

    async def main() -> None:
        server = ApiServer(controller.handle(), config.api, listen=f"127.0.0.1:{free_port()}", token=TOKEN)
        await server.start()
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
                for gc in controller.groups.values():
                    await gc.start()
                api = Api(controller.groups["web"], clock, server.url, session)
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


# ---------------------------------------------------------------------------------------------- reading
def test_group_status_matches_the_openapi_schema(tmp_path: Path) -> None:
    async def scenario(api: Api) -> None:
        api.gc.set_manual(2)
        await api.tick()
        reply = await api.call("GET", "/api/groups/web")
        assert reply.status == 200
        GROUP_STATUS.validate(reply.body)
        assert reply.body["group"] == "web"
        assert reply.body["desired"] == 2 and reply.body["ready"] == 2
        assert len(reply.body["replicas"]) == 2
        assert {r["state"] for r in reply.body["replicas"]} == {"ready"}
        assert reply.body["last_decision"]["policy"] == "manual"
        assert sorted(reply.body["balancer"]["backends"]) == sorted(
            r["address"] for r in reply.body["replicas"]
        )
        # The schema is not vacuous: a wrong body fails it.
        for broken in ({**reply.body, "desired": "2"}, {**reply.body, "extra": 1}, {"group": "web"}):
            with pytest.raises(jsonschema.ValidationError):
                GROUP_STATUS.validate(broken)
        everyone = await api.call("GET", "/api/groups")
        assert [g["group"] for g in everyone.body["groups"]] == ["web", "api"]
        for body in everyone.body["groups"]:
            GROUP_STATUS.validate(body)

    with_api(tmp_path, scenario)


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("GET", "/api/groups/nope", "name"),
        ("POST", "/api/groups/nope/scale", "name"),
        ("POST", "/api/groups/nope/pause", "name"),
        ("POST", "/api/groups/nope/resume", "name"),
        ("GET", "/api/nothing-here", "path"),
    ],
    ids=["get", "scale", "pause", "resume", "no-route"],
)
def test_unknown_group_is_404(tmp_path: Path, method: str, path: str, field: str) -> None:
    async def scenario(api: Api) -> None:
        if method == "POST":
            reply = await api.post(path, {"replicas": 2} if path.endswith("scale") else None)
        else:
            reply = await api.call(method, path)
        assert reply.status == 404
        ERROR.validate(reply.body)
        assert reply.body["field"] == field
        if field == "name":
            assert "'nope'" in reply.body["error"] and "web" in reply.body["error"]
        assert api.gc.paused is False

    with_api(tmp_path, scenario)


# ---------------------------------------------------------------------------------------------- changing
@pytest.mark.parametrize(
    "auth",
    [None, "Bearer wrong", "Bearer ", "Basic t", "t"],
    ids=["none", "wrong-token", "empty-token", "basic", "no-scheme"],
)
@pytest.mark.parametrize("route", ["scale", "pause", "resume"])
def test_mutation_without_the_token_is_401(tmp_path: Path, auth: str | None, route: str) -> None:
    async def scenario(api: Api) -> None:
        hdrs = {"Authorization": auth} if auth is not None else {}
        body = {"replicas": 4} if route == "scale" else None
        desired = api.gc.desired
        reply = await api.call("POST", f"/api/groups/web/{route}", body, **hdrs)
        assert reply.status == 401
        ERROR.validate(reply.body)
        assert reply.body["field"] == "Authorization"
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
        assert api.gc.paused is False
        await api.tick()
        assert api.gc.desired == desired

    with_api(tmp_path, scenario)


@pytest.mark.parametrize("replicas", [1, 3, 6], ids=["min", "three", "max"])
def test_scale_with_the_token(tmp_path: Path, replicas: int) -> None:
    async def scenario(api: Api) -> None:
        reply = await api.post("/api/groups/web/scale", {"replicas": replicas})
        assert reply.status == 200
        GROUP_STATUS.validate(reply.body)
        assert reply.body["paused"] is True
        assert reply.body["manual_replicas"] == replicas
        await api.tick()
        assert api.gc.desired == replicas
        await api.tick()
        after = (await api.call("GET", "/api/groups/web")).body
        assert after["desired"] == replicas
        assert after["current"] == after["ready"] == replicas
        assert after["last_decision"]["policy"] == "manual"
        other = (await api.call("GET", "/api/groups/api")).body
        assert other["paused"] is False and other["desired"] == 1  # only the named group changed

    with_api(tmp_path, scenario)


@pytest.mark.parametrize(
    ("raw", "field", "says"),
    [
        (b'{"replicas": "3"}', "replicas", "expected an integer"),
        (b'{"replicas": 3.0}', "replicas", "expected an integer"),
        (b'{"replicas": true}', "replicas", "expected an integer"),
        (b'{"replicas": null}', "replicas", "expected an integer"),
        (b'{"replicas": 7}', "replicas", "between min 1 and max 6"),
        (b'{"replicas": 0}', "replicas", "between min 1 and max 6"),
        (b'{"replicas": -1}', "replicas", "between min 1 and max 6"),
        (b"{}", "replicas", "required"),
        (b"", "replicas", "required"),
        (b'{"replicas": 3, "count": 3}', "count", "unknown field"),
        (b"[3]", "body", "expected a JSON object"),
        (b"3", "body", "expected a JSON object"),
        (b"{replicas: 3}", "body", "not valid JSON"),
        (b'{"replicas": 3', "body", "not valid JSON"),
        (b"\xff\xfe", "body", "not valid JSON"),
    ],
    ids=[
        "string",
        "float",
        "bool",
        "null",
        "above-max",
        "below-min",
        "negative",
        "empty-object",
        "empty-body",
        "unknown-field",
        "array",
        "number",
        "unquoted-key",
        "truncated",
        "not-utf8",
    ],
)
def test_bad_scale_body_is_400(tmp_path: Path, raw: bytes, field: str, says: str) -> None:
    async def scenario(api: Api) -> None:
        reply = await api.post("/api/groups/web/scale", raw=raw)
        assert reply.status == 400
        ERROR.validate(reply.body)
        assert reply.body["field"] == field
        assert says in reply.body["error"]
        assert reply.body["error"].startswith(f"{field}:")
        assert "\n" not in reply.body["error"] and "\n" not in reply.text.strip()
        assert api.gc.paused is False  # nothing changed
        assert api.gc.ctx.rt.manual_desired is None

    with_api(tmp_path, scenario)


@pytest.mark.parametrize("route", ["pause", "resume"])
def test_pause_and_resume_take_no_fields(tmp_path: Path, route: str) -> None:
    async def scenario(api: Api) -> None:
        reply = await api.post(f"/api/groups/web/{route}", {"replicas": 2})
        assert reply.status == 400
        assert reply.body["field"] == "replicas"
        assert "takes no fields" in reply.body["error"]
        assert api.gc.paused is False

    with_api(tmp_path, scenario)


def test_pause_and_resume_flip_paused(tmp_path: Path) -> None:
    async def scenario(api: Api) -> None:
        steps = [("pause", True), ("pause", True), ("resume", False), ("resume", False), ("pause", True)]
        for route, paused in steps:
            reply = await api.post(f"/api/groups/web/{route}")
            assert reply.status == 200, reply.text
            GROUP_STATUS.validate(reply.body)
            assert reply.body["paused"] is paused
            assert api.gc.paused is paused
            got = await api.call("GET", "/api/groups/web")
            assert got.body["paused"] is paused
            assert (got.body["manual_replicas"] is not None) is paused
        # Paused, the count is held; resumed after a manual scale, the manual count is dropped.
        await api.tick()
        assert api.gc.status().last_decision is not None
        assert api.gc.status().last_decision.policy == "manual"
        await api.post("/api/groups/web/scale", {"replicas": 3})
        resumed = await api.post("/api/groups/web/resume")
        assert resumed.body["paused"] is False and resumed.body["manual_replicas"] is None
        await api.tick()
        assert api.gc.status().last_decision is not None
        assert api.gc.status().last_decision.policy != "manual"

    with_api(tmp_path, scenario)
