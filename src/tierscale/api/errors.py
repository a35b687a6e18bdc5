"""Every error the API returns is JSON: `{"error": "<one line>", "field": "<what was wrong>"}`."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

log = logging.getLogger("tierscale.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers or {}


def error_response(
    status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps({"error": message, "field": field}),
        content_type="application/json",
        headers=headers,
    )


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message, exc.field, exc.headers)
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        return error_response(
            405,
            f"method {request.method} not allowed here (allowed: {allowed})",
            "method",
            {"Allow": allowed},
        )
    except web.HTTPNotFound:
        return error_response(404, f"no such route: {request.path}", "path")
    except web.HTTPException as exc:
        if exc.status == 413:
            return error_response(413, f"body: {exc.text or exc.reason}", "body")
        if exc.status >= 400:
            return error_response(exc.status, exc.reason, None)
        raise
    except Exception:  # the controller must keep running whatever a request does
        log.exception("API request %s %s failed", request.method, request.path)
        return error_response(500, "internal error (see the controller log)", None)
