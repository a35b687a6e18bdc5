"""The client side of the API for `tierscale scale|pause|resume|apply|rollout`: stdlib HTTP, no event
loop needed."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from tierscale.addresses import format_address
from tierscale.config.models import parse_listen

DEFAULT_URL = "http://127.0.0.1:9900"
DEFAULT_TOKEN_ENV = "TIERSCALE_API_TOKEN"
# Sent by an ha standby with its 409 to a change: the leader's API address (host:port).
LEADER_HEADER = "X-Tierscale-Leader"


class ApiClientError(Exception):
    """A one-line failure; `exit_code` is 2 when the request was refused as bad input, 1 otherwise."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def resolve(api: str | None, config: Any | None) -> tuple[str, str, str | None]:
    """(base URL, token env var name, token): flag, then environment, then the config, then defaults."""
    token_env = config.api.token_env if config is not None else DEFAULT_TOKEN_ENV
    url = api or os.environ.get("TIERSCALE_API")
    if not url and config is not None:
        host, port = parse_listen(config.api.listen)
        # listen-all: reach it on loopback
        host = {"*": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        url = f"http://{format_address(host, port)}"
    return (url or DEFAULT_URL).rstrip("/"), token_env, os.environ.get(token_env) or None


def call(
    base: str,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    token: str | None = None,
    token_env: str = DEFAULT_TOKEN_ENV,
    timeout: float = 10.0,
    text: str | None = None,
    _forwarded: bool = False,
) -> dict[str, Any]:
    """`body` goes as JSON; `text` (a config file for POST /api/config) as it is."""
    parsed = urllib.parse.urlsplit(base)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ApiClientError(f"--api: expected a URL like {DEFAULT_URL} (got {base!r})", 2)
    headers = {"Accept": "application/json"}
    data = None
    if text is not None:
        data = text.encode()
        headers["Content-Type"] = "application/yaml"
    elif method != "GET":
        data = json.dumps(body or {}).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    # The controller is local (or named explicitly): a proxy from the environment has no business here.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        leader = exc.headers.get(LEADER_HEADER) if exc.code == 409 else None
        if leader and not _forwarded:
            # An ha standby refused a change: it goes to the leader it named, once.
            leader_base = f"{parsed.scheme}://{leader}"
            return call(leader_base, method, path, body, token, token_env, timeout, text, _forwarded=True)
        try:
            message = json.loads(exc.read()).get("error") or exc.reason
        except (ValueError, AttributeError):
            message = exc.reason
        if exc.code == 401 and not token:
            message = f"{message} (set ${token_env} to the controller's token)"
        raise ApiClientError(str(message), 2 if 400 <= exc.code < 500 else 1) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ApiClientError(
            f"cannot reach the API at {base}: {reason} (is `tierscale run` running? see --api)", 1
        ) from None
