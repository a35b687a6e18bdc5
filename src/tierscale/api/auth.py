"""Bearer-token check for the routes that change something.

The token comes from the environment variable named by `api.token_env`, read once when the server
starts. No token configured means mutations are refused (403) rather than open: an unconfigured
controller must not be scalable by anyone who can reach the port. The token is never logged.
"""

from __future__ import annotations

import hmac
import os

from aiohttp import web

from tierscale.api.errors import ApiError

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tierscale"'}


class TokenAuth:
    def __init__(self, token_env: str, token: str | None = None) -> None:
        self.token_env = token_env
        raw = token if token is not None else os.environ.get(token_env, "")
        self._token = raw.strip().encode() or None

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def check(self, request: web.Request) -> None:
        if self._token is None:
            raise ApiError(
                403,
                f"changes through the API are disabled: start the controller with ${self.token_env} set",
                "Authorization",
            )
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if not header:
            raise ApiError(401, "missing header Authorization: Bearer <token>", "Authorization", CHALLENGE)
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(401, "expected Authorization: Bearer <token>", "Authorization", CHALLENGE)
        # Constant-time comparison: response timing must not reveal how much of a guess was right.
        if not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), self._token):
            raise ApiError(401, "invalid token", "Authorization", CHALLENGE)
