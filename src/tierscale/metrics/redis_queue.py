"""A Redis backlog: a list's length (LLEN) or a stream consumer group's pending entries plus its lag.

One client per URL, kept between passes (a connection per read would cost a handshake every sync
period); a failed read drops it so the next one reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

# By event loop too: a client's connections belong to the loop that opened them (tests and the demo run
# several controllers, each on its own loop, in one process).
_CLIENTS: dict[tuple[int, str], aioredis.Redis] = {}


def _where(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc.rpartition("@")[2]  # never the password


async def _depth(client: aioredis.Redis, kind: str, key: str, consumer_group: str | None) -> float:
    if kind == "list":
        kind_of = await client.type(key)
        kind_of = kind_of.decode() if isinstance(kind_of, bytes) else kind_of
        # Redis deletes an empty list: a key that does not exist is an empty queue, not an error.
        if kind_of == "none":
            return 0.0
        if kind_of != "list":
            raise LookupError(f"key {key} is a {kind_of}, not a list")
        return float(await client.llen(key))
    try:
        groups = await client.xinfo_groups(key)
    except ResponseError as exc:
        raise LookupError(f"stream {key} does not exist ({exc})") from None
    for g in groups:
        name = g.get("name")
        name = name.decode() if isinstance(name, bytes) else name
        if name == consumer_group:
            # pending: delivered, not acknowledged; lag (Redis >= 7): entries not delivered yet.
            return float(g.get("pending") or 0) + float(g.get("lag") or 0)
    raise LookupError(f"stream {key} has no consumer group {consumer_group}")


async def redis_depth(
    url: str, kind: str, key: str, consumer_group: str | None, timeout: float
) -> tuple[float | None, str | None]:
    """(depth, None), or (None, why)."""
    slot = (id(asyncio.get_running_loop()), url)
    client = _CLIENTS.get(slot)
    if client is None:
        client = aioredis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        _CLIENTS[slot] = client
    try:
        return await asyncio.wait_for(_depth(client, kind, key, consumer_group), timeout), None
    except LookupError as exc:
        return None, f"redis {_where(url)}: {exc}"
    except (RedisError, OSError, TimeoutError) as exc:
        _CLIENTS.pop(slot, None)
        await _close(client)
        return None, f"redis {_where(url)}: {exc or type(exc).__name__}"


async def _close(client: aioredis.Redis) -> None:
    with contextlib.suppress(RedisError, OSError, RuntimeError):
        await client.aclose()
