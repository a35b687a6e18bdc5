"""Scale-to-zero scenarios every tier runs: a burst at zero replicas, the way back to zero, the limits.

The burst mixes GET and POST with a body (the demo workload answers POST /work with the body's length
and FNV-1a hash, on every tier), so a held request that lost its method, headers or body shows.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDict

from helpers.e2e import decisions, events, wait_for

SCALE_TO_ZERO = "    scale_to_zero: {{idle_after: {idle}, hold_timeout: {hold}, max_pending: {pending}}}\n"


def stz_extra(idle: str = "6s", hold: str = "60s", pending: int = 1000) -> str:
    return SCALE_TO_ZERO.format(idle=idle, hold=hold, pending=pending)


def fnv1a(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


@dataclass
class Answer:
    status: int | str  # the HTTP status, or the exception's name when the request failed outright
    seconds: float
    # Case-insensitive, as HTTP header names are (HAProxy sends them in lower case).
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    body: bytes = b""
    sent: bytes | None = None  # POST: the body we sent

    def json(self) -> Any:
        return json.loads(self.body)


async def _one(s: aiohttp.ClientSession, url: str, i: int, post: bool, timeout: float) -> Answer:
    t0 = time.monotonic()
    # Bodies differ per request (and hold the bytes that end an HTTP head), so a mix-up shows.
    body = (f"request {i}\r\n\r\n".encode() + bytes(range(256))) * (1 + i % 7) if post else None
    try:
        async with s.request(
            "POST" if post else "GET",
            url,
            data=body,
            headers={"X-Test-Request": str(i)},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as r:
            data = await r.read()
            return Answer(r.status, time.monotonic() - t0, CIMultiDict(r.headers), data, body)
    except Exception as exc:  # the status of a request that got no answer at all
        return Answer(type(exc).__name__, time.monotonic() - t0, sent=body)


async def _burst(url: str, n: int, timeout: float) -> list[Answer]:
    conn = aiohttp.TCPConnector(limit=n + 10, force_close=True)
    async with aiohttp.ClientSession(connector=conn) as s:
        return list(await asyncio.gather(*(_one(s, url, i, i % 2 == 1, timeout) for i in range(n))))


def burst(url: str, n: int = 50, timeout: float = 120) -> list[Answer]:
    """`n` concurrent requests to `url`, every other one a POST with a body of its own."""
    return asyncio.run(_burst(url, n, timeout))


def assert_served_by_replicas(answers: list[Answer]) -> None:
    """Every request answered 200 by a replica, and every POST reached it whole."""
    bad = [(a.status, a.body[:120]) for a in answers if a.status != 200]
    assert not bad, f"{len(bad)} of {len(answers)} failed: {bad[:5]}"
    for a in answers:
        got = a.json()
        assert got.get("instance"), got
        if a.sent is not None:
            assert got.get("method") == "POST", got
            assert got.get("bytes") == len(a.sent), got
            assert got.get("fnv1a") == fnv1a(a.sent), got


def at_zero(state_dir: Path, group: str, replicas: list[str]) -> bool:
    """The last pass decided 0 and the tier holds no replica (`replicas`: what the tier lists)."""
    last = decisions(state_dir, group)
    return bool(last) and last[-1].desired == 0 and not replicas


def wait_back_to_zero(
    state_dir: Path, group: str, list_replicas: Any, idle_after: float, last_request: float, timeout: float
) -> float:
    """Wait for the group to go back to zero; returns when it decided so (wall time). It must not go
    before `idle_after` has passed since the last request."""
    wait_for(
        lambda: at_zero(state_dir, group, list_replicas()),
        timeout,
        interval=0.5,
        what="the group back at zero replicas",
    )
    went = [e for e in events(state_dir, group, "scaled_to_zero") if e.ts >= last_request]
    assert went, "no scaled_to_zero event after the burst"
    assert went[0].ts - last_request >= idle_after - 0.5, (went[0].ts, last_request)
    return went[0].ts


def burst_at_zero_and_back(
    state_dir: Path, group: str, url: str, list_replicas: Any, idle_after: float, *, boot: float
) -> list[Answer]:
    """The scenario of SPEC §7 J on one tier: at zero, 50 concurrent requests (GET and POST) all answer
    200 from a replica; the group woke (events woke, cold_start); it returns to zero after idle_after."""
    wait_for(lambda: at_zero(state_dir, group, list_replicas()), boot, what="the group at zero replicas")
    answers = burst(url, 50, timeout=boot + 60)
    last_request = time.time()
    assert_served_by_replicas(answers)
    held = [a for a in answers if "X-Tierscale-Held" in a.headers]
    assert held, "no request was held: the group was not at zero"
    kinds = {e.kind for e in events(state_dir, group)}
    assert {"woke", "cold_start"} <= kinds, kinds
    wait_back_to_zero(
        state_dir, group, list_replicas, idle_after, last_request, timeout=idle_after + boot + 60
    )
    return answers


def metric_samples(api: str, name: str) -> dict[str, float]:
    """`name`'s samples from the controller's /metrics, keyed by the sample line's labels part."""
    import urllib.request

    with urllib.request.urlopen(f"http://{api}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(name):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out
