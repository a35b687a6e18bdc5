"""The holding endpoint: where a group's balancer sends requests while no replica is ready (scale_to_zero).

nginx proxies to it on loopback instead of answering 503. Each request waits here, in arrival order,
until a replica is ready; it is then relayed to that replica byte for byte (method, headers and body as
nginx sent them) and the replica's answer goes back the same way. A replica gets at most
`replica_concurrency` held requests at a time, so a burst is spread over the replicas as they turn ready
rather than dumped on the first one (kedacore/http-add-on#1038). A request still waiting after
`hold_timeout` gets 504; beyond `max_pending` waiting, 503 with Retry-After.

It runs in the controller's event loop: the controller is what wakes the group, so a holder without it
could only wait for nothing. When the controller is gone, nginx's connection here is refused and nginx
answers 503 + Retry-After itself; a restarted controller listens again on the same port (the caller
keeps it), or on a new one that the balancer is then pointed at.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tierscale.addresses import format_address, split_address

_HEAD_LIMIT = 1 << 20  # nginx's own request headers are far smaller (large_client_header_buffers 4 8k)
_READ_TIMEOUT = 60.0  # nginx sends what it buffered at once; a stalled sender is not a request
_CONNECT_TIMEOUT = 3.0
_CONNECT_TRIES = 3  # a replica that died between turning ready and the release: try another
_REFUSED_FOR = 1.0


class _Refused(Exception):
    """The replica did not accept the connection; nothing was sent, so another one may take it."""


@dataclass
class _Ticket:
    arrived: float  # monotonic
    future: asyncio.Future[str]  # the replica address it is released to
    first: bool  # the request that started this cold start (what tierscale_cold_start_seconds times)


@dataclass
class HoldHooks:
    """What the holder tells the controller; each is called in the event loop and must not block."""

    wake: Callable[[], None] = lambda: None  # a request is waiting and no replica can take it
    cold_start: Callable[[float], None] = lambda seconds: None  # first held request → its response
    held: Callable[[int], None] = lambda count: None  # the number of waiting requests changed


@dataclass
class HoldCounts:
    released: int = 0
    timed_out: int = 0
    overflowed: int = 0
    failed: int = 0  # released, but the replica's answer could not be relayed


class Holder:
    def __init__(
        self,
        group: str,
        *,
        hold_timeout: float,
        max_pending: int,
        replica_concurrency: int,
        hooks: HoldHooks | None = None,
        port: int = 0,
        host: str = "127.0.0.1",
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.group = group
        self.hold_timeout = hold_timeout
        self.max_pending = max_pending
        self.replica_concurrency = replica_concurrency
        self.hooks = hooks or HoldHooks()
        self.wanted_port = port  # the last run's port: the balancer may still point there
        self.host = host
        self._wall = wall
        self.counts = HoldCounts()
        self.last_request_at: float | None = None  # wall clock, like the access log's $msec
        self._queue: deque[_Ticket] = deque()
        self._backends: tuple[str, ...] = ()
        self._in_flight: dict[str, int] = {}
        self._refused: dict[str, float] = {}  # replica → when it refused a connection (monotonic)
        self._cold = False  # a cold start is being timed
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._port: int | None = None

    # ---- what the controller reads
    @property
    def address(self) -> str:
        if self._port is None:
            raise RuntimeError("holder not started")
        return format_address(self.host, self._port)

    @property
    def held(self) -> int:
        """Requests waiting for a replica (released ones are the replicas' now)."""
        return len(self._queue)

    @property
    def in_flight(self) -> dict[str, int]:
        return {b: n for b, n in self._in_flight.items() if n}

    # ---- lifecycle
    async def start(self) -> None:
        port = self.wanted_port if 0 < self.wanted_port < 65536 else 0
        try:
            self._server = await self._listen(port)
        except OSError:
            if port == 0:
                raise
            self._server = await self._listen(0)  # taken meanwhile: any port; the balancer follows
        self._port = self._server.sockets[0].getsockname()[1]

    async def _listen(self, port: int) -> asyncio.Server:
        return await asyncio.start_server(
            self._handle, self.host, port, limit=_HEAD_LIMIT, reuse_address=True
        )

    async def stop(self) -> None:
        """Stop listening; requests still waiting get 503 + Retry-After (a controller that comes back, or
        a replica, will take the retry)."""
        if self._server is not None:
            self._server.close()
        while self._queue:
            t = self._queue.popleft()
            if not t.future.done():
                t.future.set_exception(_Stopping())
        self.hooks.held(0)
        # Those just answered 503 and relays in flight get a moment to finish before their sockets close.
        deadline = time.monotonic() + 2.0
        while self._writers and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                w.close()
        self._server = None

    # ---- releasing
    def set_backends(self, backends: Sequence[str]) -> None:
        """The replicas that are ready now: waiting requests go to them at once."""
        self._backends = tuple(backends)
        self._dispatch()

    def _dispatch(self) -> None:
        before = len(self._queue)
        while self._queue:
            now = time.monotonic()
            # One that just refused is skipped for a moment: health checks will take it out soon.
            free = [
                b
                for b in self._backends
                if self._in_flight.get(b, 0) < self.replica_concurrency
                and now - self._refused.get(b, -_REFUSED_FOR) >= _REFUSED_FOR
            ]
            if not free:
                break
            backend = min(free, key=lambda b: self._in_flight.get(b, 0))
            t = self._queue.popleft()
            if t.future.done():
                continue
            self._in_flight[backend] = self._in_flight.get(backend, 0) + 1
            t.future.set_result(backend)
        if len(self._queue) != before:
            self.hooks.held(len(self._queue))

    def _finished(self, backend: str) -> None:
        self._in_flight[backend] = max(0, self._in_flight.get(backend, 0) - 1)
        if not self._in_flight[backend] and backend not in self._backends:
            del self._in_flight[backend]
        self._dispatch()

    # ---- one connection from the balancer
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the balancer gave up on this request (its client left): nothing to answer
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(_read_request(reader), _READ_TIMEOUT)
        except ValueError as exc:
            await _answer(writer, 400, {"error": str(exc), "group": self.group})
            return
        arrived = time.monotonic()
        self.last_request_at = self._wall()
        if len(self._queue) >= self.max_pending:
            self.counts.overflowed += 1
            error = f"too many requests waiting while the group wakes (max_pending {self.max_pending})"
            await _answer(writer, 503, {"error": error, "group": self.group}, retry_after=1)
            return
        first = not self._cold and not self._backends
        self._cold = self._cold or first
        served = False
        try:
            served = await self._hold_and_relay(request, writer, arrived, first)
        finally:
            if first:
                self._cold = False
                if served:
                    self.hooks.cold_start(time.monotonic() - arrived)

    async def _hold_and_relay(
        self, request: bytes, writer: asyncio.StreamWriter, arrived: float, first: bool
    ) -> bool:
        """True once a replica's answer was relayed; False when the holder answered itself."""
        deadline = arrived + self.hold_timeout
        for attempt in range(_CONNECT_TRIES):
            try:
                backend = await self._wait_for_replica(arrived, deadline, first, retry=attempt > 0)
            except TimeoutError:
                self.counts.timed_out += 1
                error = f"no replica became ready within {self.hold_timeout:g}s"
                await _answer(writer, 504, {"error": error, "group": self.group})
                return False
            except _Stopping:
                error = "the controller is stopping and no replica is ready; retry"
                await _answer(writer, 503, {"error": error, "group": self.group}, retry_after=1)
                return False
            try:
                await self._relay(backend, request, writer, time.monotonic() - arrived)
                self.counts.released += 1
                return True
            except _Refused:
                self._refused[backend] = time.monotonic()
                asyncio.get_running_loop().call_later(_REFUSED_FOR, self._dispatch)
                continue  # nothing was sent: the next ready replica takes it, still in its place
            finally:
                self._finished(backend)
        self.counts.failed += 1
        await _answer(writer, 502, {"error": "the replicas refused the request", "group": self.group})
        return False

    async def _wait_for_replica(self, arrived: float, deadline: float, first: bool, retry: bool) -> str:
        ticket = _Ticket(arrived, asyncio.get_running_loop().create_future(), first)
        if retry:
            self._queue.appendleft(ticket)  # it keeps its place in the arrival order
        else:
            self._queue.append(ticket)
        self.hooks.held(len(self._queue))
        self._dispatch()
        if not ticket.future.done():
            self.hooks.wake()
        try:
            return await asyncio.wait_for(ticket.future, max(0.0, deadline - time.monotonic()))
        finally:
            if not ticket.future.done() or ticket.future.cancelled():
                with contextlib.suppress(ValueError):
                    self._queue.remove(ticket)
                self.hooks.held(len(self._queue))

    async def _relay(self, backend: str, request: bytes, writer: asyncio.StreamWriter, waited: float) -> None:
        host, port = split_address(backend)
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), _CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            raise _Refused(str(exc)) from None
        try:
            up_writer.write(request)
            await up_writer.drain()
            status_line = await asyncio.wait_for(
                up_reader.readuntil(b"\r\n"), _READ_TIMEOUT + self.hold_timeout
            )
            # Says the request was held, and for how long: what a client (or a test) can see of a cold start.
            writer.write(status_line + f"X-Tierscale-Held: {waited:.3f}\r\n".encode())
            while chunk := await up_reader.read(1 << 16):
                writer.write(chunk)
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                up_writer.close()


class _Stopping(Exception):
    pass


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    """One request as nginx sends it upstream: the head, then exactly Content-Length bytes of body (nginx
    buffers the client's body and sends its length; it never sends chunked to an HTTP/1.0 upstream)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise ValueError("request head too large") from None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                raise ValueError("bad Content-Length") from None
        elif name.strip().lower() == b"transfer-encoding":
            raise ValueError("chunked request bodies are not held")
    body = await reader.readexactly(length) if length else b""
    return head + body


_REASONS = {400: "Bad Request", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


async def _answer(
    writer: asyncio.StreamWriter, status: int, body: dict[str, object], retry_after: int | None = None
) -> None:
    data = (json.dumps(body) + "\n").encode()
    head = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        "Content-Type: application/json",
        f"Content-Length: {len(data)}",
        "Connection: close",
    ]
    if retry_after is not None:
        head.append(f"Retry-After: {retry_after}")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
