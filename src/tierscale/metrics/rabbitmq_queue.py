"""A RabbitMQ queue's depth from the management API (`GET /api/queues/{vhost}/{queue}`).

`messages` is ready + unacknowledged (KEDA's QueueLength), `messages_ready` only what waits. The API's
counters refresh every `collect_statistics_interval` (5 s by default): depth is seen with that lag.
"""

from __future__ import annotations

import base64
import json
import urllib.parse

import aiohttp


async def rabbitmq_depth(
    session: aiohttp.ClientSession, url: str, vhost: str, queue: str, count: str, timeout: float
) -> tuple[float | None, str | None]:
    """(depth, None), or (None, why)."""
    parts = urllib.parse.urlsplit(url)
    where = parts.netloc.rpartition("@")[2]  # never the credentials
    headers = {}
    if parts.username is not None:
        login = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(login.encode()).decode()
    base = urllib.parse.urlunsplit(parts._replace(netloc=where)).rstrip("/")
    full = f"{base}/api/queues/{urllib.parse.quote(vhost, safe='')}/{urllib.parse.quote(queue, safe='')}"
    try:
        async with session.get(full, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status == 404:
                return None, f"rabbitmq {where}: queue {queue} not found in vhost {vhost}"
            if resp.status == 401:
                return None, f"rabbitmq {where}: authentication failed"
            if resp.status != 200:
                return None, f"rabbitmq {where}: HTTP {resp.status}"
            body = json.loads(await resp.text())
    except TimeoutError:
        return None, f"rabbitmq {where}: no answer within {timeout:g}s"
    except (aiohttp.ClientError, OSError) as exc:
        return None, f"rabbitmq {where}: {exc or type(exc).__name__}"
    except ValueError:
        return None, f"rabbitmq {where}: the answer is not JSON"
    value = body.get(count) if isinstance(body, dict) else None
    if not isinstance(value, int | float) or value < 0:
        # A queue just declared has no counters until the first statistics round.
        return None, f"rabbitmq {where}: queue {queue} reports no {count} yet"
    return float(value), None
