"""The rabbitmq metric's reader against a real RabbitMQ node: depth with and without unacked messages,
a missing queue, a wrong password, the broker stopped — an error each, never a 0."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from helpers.e2e import wait_for
from helpers.rabbitmq_server import running_rabbitmq
from tierscale.metrics.rabbitmq_queue import rabbitmq_depth

pytestmark = pytest.mark.e2e


def _read(url: str, queue: str, count: str = "messages") -> tuple[float | None, str | None]:
    async def go() -> tuple[float | None, str | None]:
        async with aiohttp.ClientSession() as s:
            return await rabbitmq_depth(s, url, "/", queue, count, 3.0)

    return asyncio.run(go())


def test_the_depth_reader_on_a_real_rabbitmq() -> None:
    started = time.monotonic()
    with running_rabbitmq() as mq:
        print(f"rabbitmq ready in {time.monotonic() - started:.1f}s")
        url = mq.management_url.replace("http://", "http://guest:guest@")
        mq.api("PUT", "/api/queues/%2F/jobs", {"durable": False})
        message = {"properties": {}, "routing_key": "jobs", "payload": "x", "payload_encoding": "string"}
        for _ in range(5):
            mq.api("POST", "/api/exchanges/%2F/amq.default/publish", message)
        wait_for(lambda: _read(url, "jobs") == (5.0, None), 20, what="5 messages seen (stats every 500 ms)")
        # Two taken without an ack: still in `messages`, not in `messages_ready`.
        mq.api(
            "POST",
            "/api/queues/%2F/jobs/get",
            {"count": 2, "ackmode": "reject_requeue_true", "encoding": "auto"},
        )
        assert _read(url, "jobs", "messages_ready")[0] in (3.0, 5.0)  # requeued at once: either is honest
        value, error = _read(url, "nothing")
        assert value is None and "queue nothing not found in vhost /" in (error or "")
        value, error = _read(url.replace("guest:guest", "guest:wrong"), "jobs")
        assert value is None and "authentication failed" in (error or "")
        mq.stop()
        value, error = _read(url, "jobs")
        assert value is None and error is not None and f"127.0.0.1:{mq.management_port}" in error
        assert "guest" not in error  # the credentials never show in an error
    assert not Path(mq.dir).exists()
