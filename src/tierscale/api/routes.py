"""The route handlers. They run on the controller's event loop, so they may read and change the group
state directly; anything that touches SQLite runs in a thread so a big history query never delays a tick.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tierscale import __version__
from tierscale.api.auth import TokenAuth
from tierscale.api.client import LEADER_HEADER
from tierscale.api.errors import ApiError
from tierscale.api.openapi import openapi_document
from tierscale.api.series import WINDOW, GroupSeries
from tierscale.api.static import Asset, load_assets
from tierscale.balancer.base import BalancerError
from tierscale.config.loader import ConfigError, load_config_text
from tierscale.controller.host_book import HostError
from tierscale.controller.host_view import HOST_ACTIONS
from tierscale.controller.live_config import ApplyError
from tierscale.controller.locks import ControllerError
from tierscale.controller.rollout import RolloutError
from tierscale.providers.base import ProviderError
from tierscale.views import parse_since

if TYPE_CHECKING:
    from tierscale.controller.handle import ControllerHandle, GroupHandle

log = logging.getLogger("tierscale.api")

EVENTS_DEFAULT_LIMIT = 200
EVENTS_MAX_LIMIT = 5000
ROLLOUT_ACTIONS = ("pause", "resume", "promote", "undo")


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


def _shown(key: str) -> str:
    """A client's key as it can appear in a one-line message: quoted if it has odd characters, short."""
    text = key if key.isprintable() and key.strip() == key and key else repr(key)
    return text if len(text) <= 60 else text[:57] + "..."


def _apply(gc: GroupHandle, what: str, change: Callable[..., None], *args: Any) -> None:
    """Make a change whose history row may fail to be written (disk full, database locked).

    The group state changes first and the row is written after it, so by the time the store fails the
    change is in effect: answering 500 then would tell the client that a change it got did not happen.
    """
    try:
        change(*args)
    except (sqlite3.Error, OSError) as exc:
        log.warning("%s: %s applied, but the event store could not record it: %s", gc.name, what, exc)


class Routes:
    def __init__(self, controller: ControllerHandle, auth: TokenAuth) -> None:
        self.controller = controller
        self.auth = auth
        self.series: dict[str, GroupSeries] = {}
        for gc in controller.groups.values():
            self._series(gc)
        self.assets: dict[str, Asset] = load_assets()
        self._openapi = json.dumps(openapi_document())

    def _series(self, gc: GroupHandle) -> GroupSeries:
        """A group's chart series (a group added by `apply` gets its own from its first request on)."""
        series = self.series.get(gc.name)
        if series is None:
            series = self.series[gc.name] = GroupSeries(gc.sync_period)
            gc.add_status_listener(series.add)
        return series

    def detach(self) -> None:
        for name, gc in self.controller.groups.items():
            series = self.series.get(name)
            if series is not None:
                gc.remove_status_listener(series.add)

    def add_to(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/", self.index)
        r.add_get("/static/{file}", self.static)
        r.add_get("/healthz", self.healthz)
        r.add_get("/metrics", self.metrics)
        r.add_get("/api/openapi.json", self.openapi)
        r.add_get("/api/groups", self.groups)
        r.add_get("/api/groups/{name}", self.group)
        r.add_get("/api/groups/{name}/series", self.group_series)
        r.add_get("/api/events", self.events)
        r.add_post("/api/groups/{name}/scale", self.scale)
        r.add_post("/api/groups/{name}/pause", self.pause)
        r.add_post("/api/groups/{name}/resume", self.resume)
        r.add_get("/api/groups/{name}/rollout", self.rollout)
        for action in ROLLOUT_ACTIONS:  # one route each, as the OpenAPI document lists them
            r.add_post(f"/api/groups/{{name}}/rollout/{action}", self.rollout_action)
        r.add_post("/api/config", self.apply_config)
        r.add_get("/api/hosts", self.hosts)
        for action in HOST_ACTIONS:
            r.add_post(f"/api/hosts/{{host}}/{action}", self.host_action)

    # ------------------------------------------------------------------ helpers
    def _leader_only(self) -> None:
        """A change sent to an ha standby: refused with the leader's address (the CLI re-sends it there)."""
        standby = self.controller.standby_of()
        if standby is None:
            return
        name, api = standby
        where = f" at {api}" if api else ""
        raise ApiError(
            409,
            f"this controller is a standby; the leader is {name}{where}",
            "leader",
            {LEADER_HEADER: api} if api else None,
        )

    def _group(self, request: web.Request) -> GroupHandle:
        name = request.match_info["name"]
        gc = self.controller.groups.get(name)
        if gc is None:
            raise ApiError(
                404, f"no group named {name!r} (groups: {', '.join(self.controller.groups)})", "name"
            )
        return gc

    def _body(self, gc: GroupHandle) -> dict[str, Any]:
        return gc.status().model_dump(mode="json")

    async def _json_object(self, request: web.Request, allowed: tuple[str, ...]) -> dict[str, Any]:
        """The request body as a JSON object with only `allowed` keys; an empty body is `{}`."""
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except RecursionError:
            # `[[[[...` a few thousand deep fits in the size cap but not in the parser's stack.
            raise ApiError(400, "body: JSON nested too deeply", "body") from None
        except (ValueError, UnicodeDecodeError) as exc:
            # Python's advice on a too-long integer ("; use sys.set_int_max_str_digits()") is not for users.
            reason = str(exc).split(";")[0]
            raise ApiError(400, f"body: not valid JSON ({reason})", "body") from None
        if not isinstance(body, dict):
            raise ApiError(400, f"body: expected a JSON object, got {type(body).__name__}", "body")
        for key in body:
            if key not in allowed:
                hint = f" (allowed: {', '.join(allowed)})" if allowed else " (this route takes no fields)"
                raise ApiError(400, f"{_shown(key)}: unknown field{hint}", key)
        return body

    # ------------------------------------------------------------------ pages and plain routes
    async def index(self, request: web.Request) -> web.StreamResponse:
        return await self.static(request, "index.html")

    async def static(self, request: web.Request, name: str | None = None) -> web.StreamResponse:
        asset = self.assets.get(name or request.match_info["file"])
        if asset is None:
            raise ApiError(404, f"no such file: {request.path}", "path")
        return web.Response(body=asset.data, content_type=asset.content_type, charset=asset.charset)

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok", "version": __version__, "groups": len(self.controller.groups)})

    async def metrics(self, request: web.Request) -> web.Response:
        data = generate_latest(self.controller.registry)
        resp = web.Response(body=data)
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(text=self._openapi, content_type="application/json")

    # ------------------------------------------------------------------ reading
    async def groups(self, request: web.Request) -> web.Response:
        return _json({"groups": [self._body(gc) for gc in self.controller.groups.values()]})

    async def group(self, request: web.Request) -> web.Response:
        return _json(self._body(self._group(request)))

    async def group_series(self, request: web.Request) -> web.Response:
        gc = self._group(request)
        now = gc.now()
        since = self._since(request, now)
        body = self._series(gc).columns(now, since)
        start = max(now - WINDOW, since if since is not None else 0.0)
        ready = await asyncio.to_thread(self.controller.events, gc.name, start, 2000, ("replica_ready",))
        body["provision"] = [
            {"t": e.ts, "seconds": round(float(e.data["seconds"]), 3), "replica": e.replica}
            for e in ready
            if isinstance(e.data.get("seconds"), int | float)
        ]
        body.update(group=gc.name, now=now, window=WINDOW, min=gc.min, max=gc.max)
        return _json(body)

    def _since(self, request: web.Request, now: float) -> float | None:
        text = request.query.get("since")
        if text is None or text == "":
            return None
        try:
            return parse_since(text, now)
        except ValueError as exc:
            raise ApiError(400, f"since: {exc}", "since") from None

    async def events(self, request: web.Request) -> web.Response:
        group = request.query.get("group") or None
        if group is not None and group not in self.controller.groups:
            raise ApiError(404, f"no group named {group!r}", "group")
        since = self._since(request, time.time())
        limit_text = request.query.get("limit", str(EVENTS_DEFAULT_LIMIT))
        try:
            limit = int(limit_text)
        except ValueError:
            limit = 0
        if not 1 <= limit <= EVENTS_MAX_LIMIT:
            raise ApiError(
                400, f"limit: expected an integer 1..{EVENTS_MAX_LIMIT} (got {limit_text!r})", "limit"
            )
        rows = await asyncio.to_thread(self.controller.history, group, since, limit)
        return _json({"events": rows})

    # ------------------------------------------------------------------ changing
    async def scale(self, request: web.Request) -> web.Response:
        self.auth.check(request)
        self._leader_only()
        gc = self._group(request)
        body = await self._json_object(request, ("replicas",))
        if "replicas" not in body:
            raise ApiError(400, 'replicas: required, e.g. {"replicas": 3}', "replicas")
        n = body["replicas"]
        # bool is an int in Python, and 3.0 is not a count: both are mistakes worth naming.
        if not isinstance(n, int) or isinstance(n, bool):
            raise ApiError(400, f"replicas: expected an integer (got {json.dumps(n)})", "replicas")
        if not gc.min <= n <= gc.max:
            raise ApiError(
                400,
                f"replicas: must be between min {gc.min} and max {gc.max} of group {gc.name} (got {n})",
                "replicas",
            )
        _apply(gc, "manual scale", gc.scale, n)
        return _json(self._body(gc))

    async def pause(self, request: web.Request) -> web.Response:
        self.auth.check(request)
        self._leader_only()
        gc = self._group(request)
        await self._json_object(request, ())
        if not gc.paused:
            _apply(gc, "pause", gc.pause)
        return _json(self._body(gc))

    async def resume(self, request: web.Request) -> web.Response:
        self.auth.check(request)
        self._leader_only()
        gc = self._group(request)
        await self._json_object(request, ())
        if gc.paused:
            _apply(gc, "resume", gc.resume)
        return _json(self._body(gc))

    # ------------------------------------------------------------------ rollouts and live config
    async def rollout(self, request: web.Request) -> web.Response:
        return _json(self._group(request).rollout().model_dump(mode="json"))

    async def rollout_action(self, request: web.Request) -> web.Response:
        self.auth.check(request)
        self._leader_only()
        gc = self._group(request)
        action = request.path.rsplit("/", 1)[-1]  # one of ROLLOUT_ACTIONS: only those routes exist
        await self._json_object(request, ())
        try:
            view = gc.rollout_action(action)
        except RolloutError as exc:
            raise ApiError(409, f"{gc.name}: {exc}", "action") from None
        return _json(view.model_dump(mode="json"))

    async def apply_config(self, request: web.Request) -> web.Response:
        """The body is the config file itself (YAML, or JSON, which is YAML too)."""
        self.auth.check(request)
        raw = await request.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "body: the config must be UTF-8 text", "body") from None
        try:
            config = await asyncio.to_thread(load_config_text, text, "<applied config>")
        except ConfigError as exc:
            raise ApiError(400, exc.first_line(), exc.problems[0].field or "body") from None
        try:
            change = await self.controller.apply(config)
        except (ApplyError, ControllerError, ProviderError, BalancerError) as exc:
            # ProviderError: a new group's tier cannot be built (a cloud not in clouds.yaml, ...).
            raise ApiError(409, str(exc), "config") from None
        return _json({"applied": True, **change.summary()})

    # ------------------------------------------------------------------ hosts
    async def hosts(self, request: web.Request) -> web.Response:
        return _json({"hosts": [row.model_dump(mode="json") for row in self.controller.hosts()]})

    async def host_action(self, request: web.Request) -> web.Response:
        """`{host}` is the host's URL percent-encoded, or its host[:port] when that names one host."""
        self.auth.check(request)
        self._leader_only()
        host = request.match_info["host"]
        action = request.path.rsplit("/", 1)[-1]  # one of HOST_ACTIONS: only those routes exist
        await self._json_object(request, ())
        try:
            row = self.controller.host_action(host, action)
        except HostError as exc:
            raise ApiError(404, str(exc), "host") from None
        return _json(row.model_dump(mode="json"))
