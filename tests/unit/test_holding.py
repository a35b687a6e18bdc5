"""The holder on real loopback sockets: order, per-replica concurrency, bodies intact, its own answers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tierscale.balancer.holder import Holder, HoldHooks


@dataclass
class Backend:
    """A replica stand-in: records each request, answers once `gate` is set, HTTP/1.0 then close."""

    name: str
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    seen: list[tuple[bytes, bytes]] = field(default_factory=list)  # (head, body) in arrival order
    in_flight: int = 0
    peak: int = 0
    server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length)
        self.seen.append((head, body))
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await self.gate.wait()
        self.in_flight -= 1
        answer = f"served by {self.name}".encode()
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
        await writer.drain()
        writer.close()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def send(address: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request as nginx sends it upstream (HTTP/1.0, Connection: close, Content-Length body)."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    method = "POST" if body is not None else "GET"
    head = f"{method} {path} HTTP/1.0\r\nHost: example\r\nX-Mark: {path}\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Length: {len(body)}\r\n"
    writer.write(head.encode() + b"\r\n" + (body or b""))
    await writer.drain()
    data = await reader.read()
    writer.close()
    top, _, payload = data.partition(b"\r\n\r\n")
    lines = top.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, payload


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), 30))


def test_held_requests_reach_the_first_ready_replica_in_arrival_order_whole() -> None:
    async def main() -> None:
        wakes: list[int] = []
        colds: list[float] = []
        holder = Holder(
            "g",
            hold_timeout=10,
            max_pending=100,
            replica_concurrency=10,
            hooks=HoldHooks(wake=lambda: wakes.append(1), cold_start=colds.append),
        )
        await holder.start()
        backend = Backend("a")
        addr = await backend.start()
        backend.gate.set()
        body = b"head-like\r\n\r\n" + bytes(range(256)) * 40
        try:
            tasks = []
            for i in range(5):
                tasks.append(asyncio.ensure_future(send(holder.address, f"/r{i}", body if i % 2 else None)))
                await until(lambda n=i + 1: holder.held == n)  # arrivals in a known order
            assert wakes, "a held request must wake the group"
            holder.set_backends([addr])
            answers = await asyncio.gather(*tasks)
        finally:
            await holder.stop()
            backend.close()
        assert [status for status, _, _ in answers] == [200] * 5
        assert all(payload == b"served by a" for _, _, payload in answers)
        assert all(float(h["X-Tierscale-Held"]) > 0 for _, h, _ in answers)
        paths = [head.split(b" ")[1] for head, _ in backend.seen]
        assert paths == [f"/r{i}".encode() for i in range(5)]
        for i, (head, got) in enumerate(backend.seen):
            assert head.startswith(b"POST" if i % 2 else b"GET")
            assert f"X-Mark: /r{i}".encode() in head
            assert got == (body if i % 2 else b"")
        assert len(colds) == 1 and colds[0] > 0
        assert holder.held == 0 and holder.counts.released == 5

    run(main)


def test_each_ready_replica_gets_at_most_replica_concurrency_held_requests() -> None:
    async def main() -> None:
        holder = Holder("g", hold_timeout=10, max_pending=100, replica_concurrency=2)
        await holder.start()
        a, b = Backend("a"), Backend("b")
        addrs = [await a.start(), await b.start()]
        try:
            tasks = [asyncio.ensure_future(send(holder.address, f"/{i}")) for i in range(6)]
            await until(lambda: holder.held == 6)
            holder.set_backends(addrs)
            await until(lambda: len(a.seen) == 2 and len(b.seen) == 2)
            assert holder.held == 2  # the other two wait for a free slot, not on a busy replica
            a.gate.set()
            b.gate.set()
            answers = await asyncio.gather(*tasks)
        finally:
            await holder.stop()
            a.close()
            b.close()
        assert [s for s, _, _ in answers] == [200] * 6
        assert a.peak <= 2 and b.peak <= 2
        assert len(a.seen) + len(b.seen) == 6

    run(main)


def test_hold_timeout_answers_504_and_max_pending_503_with_retry_after() -> None:
    async def main() -> None:
        colds: list[float] = []
        holder = Holder(
            "g",
            hold_timeout=0.5,
            max_pending=2,
            replica_concurrency=1,
            hooks=HoldHooks(cold_start=colds.append),
        )
        await holder.start()
        try:
            waiting = [asyncio.ensure_future(send(holder.address, f"/{i}")) for i in range(2)]
            await until(lambda: holder.held == 2)
            status, headers, payload = await send(holder.address, "/over")
            assert status == 503 and headers["Retry-After"] == "1"
            assert b"max_pending 2" in payload
            for status, _, payload in await asyncio.gather(*waiting):
                assert status == 504
                assert b"no replica became ready within 0.5s" in payload
        finally:
            await holder.stop()
        assert holder.held == 0
        assert holder.counts.timed_out == 2 and holder.counts.overflowed == 1
        assert colds == []  # a timeout is not a cold start

    run(main)


def test_stop_answers_waiting_requests_503_and_a_refused_replica_is_skipped() -> None:
    async def main() -> None:
        holder = Holder("g", hold_timeout=10, max_pending=10, replica_concurrency=5)
        await holder.start()
        waiting = asyncio.ensure_future(send(holder.address, "/w"))
        await until(lambda: holder.held == 1)
        await holder.stop()
        status, headers, _ = await waiting
        assert status == 503 and headers["Retry-After"] == "1"

        # A replica that refuses (gone since it turned ready) before a good one: the request ends at the
        # good one, since nothing was sent to the first.
        holder = Holder("g", hold_timeout=10, max_pending=10, replica_concurrency=5)
        await holder.start()
        dead = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        dead_addr = f"127.0.0.1:{dead.sockets[0].getsockname()[1]}"
        dead.close()
        await dead.wait_closed()
        good = Backend("good")
        good.gate.set()
        good_addr = await good.start()
        try:
            task = asyncio.ensure_future(send(holder.address, "/x"))
            await until(lambda: holder.held == 1)
            holder.set_backends([dead_addr, good_addr])
            status, _, payload = await task
        finally:
            await holder.stop()
            good.close()
        assert status == 200 and payload == b"served by good"

    run(main)


def test_a_restarted_holder_listens_on_the_port_it_is_given() -> None:
    async def main() -> None:
        first = Holder("g", hold_timeout=1, max_pending=1, replica_concurrency=1)
        await first.start()
        port = int(first.address.rsplit(":", 1)[1])
        await first.stop()
        again = Holder("g", hold_timeout=1, max_pending=1, replica_concurrency=1, port=port)
        await again.start()
        try:
            assert again.address == f"127.0.0.1:{port}"
        finally:
            await again.stop()

    run(main)
