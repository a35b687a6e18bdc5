"""One GET of a JSON document for the HTTP metric sources (Prometheus, RabbitMQ's management API).

Each failure becomes a one-line reason naming the server but never its credentials: a URL's userinfo
is sent as a Basic Authorization header and left out of every message.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import Mapping
from typing import Any

import aiohttp


def split_login(url: str) -> tuple[str, str, dict[str, str]]:
    """(the url without userinfo, host:port for messages, the headers carrying the login)."""
    parts = urllib.parse.urlsplit(url)
    where = parts.netloc.rpartition("@")[2]
    headers: dict[str, str] = {}
    if parts.username is not None:
        login = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(login.encode()).decode()
    return urllib.parse.urlunsplit(parts._replace(netloc=where)), where, headers


async def get_json(
    session: aiohttp.ClientSession,
    url: str,
    path: str,
    timeout: float,
    what: str,
    statuses: Mapping[int, str] | None = None,
) -> tuple[Any, str | None]:
    """(the parsed body, None), or (None, "WHAT host:port: why"); `statuses` words known error codes."""
    base, where, headers = split_login(url)
    try:
        async with session.get(
            base.rstrip("/") + path, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            if resp.status != 200:
                return None, f"{what} {where}: {(statuses or {}).get(resp.status, f'HTTP {resp.status}')}"
            return json.loads(await resp.text()), None
    except TimeoutError:
        return None, f"{what} {where}: no answer within {timeout:g}s"
    except (aiohttp.ClientError, OSError) as exc:
        return None, f"{what} {where}: {exc or type(exc).__name__}"
    except ValueError:
        return None, f"{what} {where}: the answer is not JSON"
