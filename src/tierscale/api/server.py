"""The HTTP server that `tierscale run` starts on `api.listen`, on the controller's own event loop."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from tierscale.addresses import host_of
from tierscale.api.auth import TokenAuth
from tierscale.api.errors import Handler, error_response, json_errors
from tierscale.api.routes import Routes
from tierscale.config.models import parse_listen

if TYPE_CHECKING:
    from tierscale.config.models import ApiConfig
    from tierscale.controller.handle import ControllerHandle

log = logging.getLogger("tierscale.api")

# The dashboard loads nothing from elsewhere; the policy makes the browser enforce that, too.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


ROUTES_KEY = web.AppKey("routes", Routes)


class _BadRequestsAreOneLine(logging.Filter):
    """aiohttp answers a request it cannot parse (a control byte in a header, a line too long) with a 400
    and logs it with a traceback; it is the client's mistake, so one warning line says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            # A filter that raised would turn aiohttp's 400 into a 500: keep the record as it was then.
            with contextlib.suppress(Exception):
                reason = (str(exc.message) or type(exc).__name__).strip().splitlines()[0].rstrip(":")
                record.args = (record.getMessage(), exc.code or 400, reason)
                record.msg = "%s: refused with %d (%s)"
                record.exc_info = record.exc_text = None
                record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


# The protocol-level logger aiohttp's request handler writes to (instead of aiohttp.server).
http_log = logging.getLogger("tierscale.api.http")
http_log.addFilter(_BadRequestsAreOneLine())


class ApiStartError(Exception):
    """The server could not listen (address in use, permission): one line for the user."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_guard(listen_host: str) -> web.Middleware:
    """On a loopback listener, answer only requests addressed to a loopback name.

    A web page elsewhere can point its own DNS name at 127.0.0.1 ("DNS rebinding") and read the API
    from the user's browser; such requests carry that foreign name in Host, so they are refused.
    """

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = host_of(request.host)
        if not (is_loopback(host) or host == listen_host):
            return error_response(421, f"this API answers only on loopback names (got Host {host!r})", "Host")
        return await handler(request)

    return guard


def build_app(
    controller: ControllerHandle, auth: TokenAuth, listen_host: str = "127.0.0.1"
) -> web.Application:
    middlewares: list[web.Middleware] = [json_errors]
    if is_loopback(listen_host):
        middlewares.insert(0, _host_guard(listen_host))
    # Bodies are tiny JSON objects; a small cap keeps a bad client from buffering megabytes in the loop.
    app = web.Application(middlewares=middlewares, client_max_size=64 * 1024)
    routes = Routes(controller, auth)
    routes.add_to(app)
    app[ROUTES_KEY] = routes

    async def headers(request: web.Request, response: web.StreamResponse) -> None:
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)

    async def detach(app: web.Application) -> None:
        routes.detach()

    app.on_response_prepare.append(headers)
    app.on_cleanup.append(detach)
    return app


class ApiServer:
    def __init__(
        self,
        controller: ControllerHandle,
        api: ApiConfig,
        listen: str | None = None,
        token: str | None = None,
    ) -> None:
        self.listen = listen or api.listen
        host, port = parse_listen(self.listen)
        self.host = None if host == "*" else host
        self.port = port
        self.auth = TokenAuth(api.token_env, token)
        self.controller = controller
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = self.host or "127.0.0.1"
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    async def start(self) -> None:
        app = build_app(self.controller, self.auth, self.host or "*")
        # Request lines are not worth a log line each (the dashboard polls); errors still are logged.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, logger=http_log)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ApiStartError(f"api.listen {self.listen}: {exc.strerror or exc}") from None
        self._runner = runner
        mode = "token set" if self.auth.enabled else f"read-only: ${self.auth.token_env} is not set"
        log.info("API and dashboard on %s/ (%s)", self.url, mode)
        if self.host is None or not is_loopback(self.host):
            log.warning(
                "API listens on %s, beyond loopback: anyone who can reach it can read the status", self.listen
            )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
