"""A RabbitMQ queue's depth from the management API (`GET /api/queues/{vhost}/{queue}`).

`messages` is ready + unacknowledged (KEDA's QueueLength), `messages_ready` only what waits. The API's
counters refresh every `collect_statistics_interval` (5 s by default): depth is seen with that lag.
"""

from __future__ import annotations

import urllib.parse

import aiohttp

from tierscale.metrics.http_json import get_json, split_login


async def rabbitmq_depth(
    session: aiohttp.ClientSession, url: str, vhost: str, queue: str, count: str, timeout: float
) -> tuple[float | None, str | None]:
    """(depth, None), or (None, why)."""
    path = f"/api/queues/{urllib.parse.quote(vhost, safe='')}/{urllib.parse.quote(queue, safe='')}"
    statuses = {404: f"queue {queue} not found in vhost {vhost}", 401: "authentication failed"}
    body, error = await get_json(session, url, path, timeout, "rabbitmq", statuses)
    if error is not None:
        return None, error
    value = body.get(count) if isinstance(body, dict) else None
    if not isinstance(value, int | float) or value < 0:
        # A queue just declared has no counters until the first statistics round.
        return None, f"rabbitmq {split_login(url)[1]}: queue {queue} reports no {count} yet"
    return float(value), None
