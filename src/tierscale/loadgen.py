"""Open-loop HTTP load generator (``tierscale load``).

Open loop means arrivals follow a fixed schedule on an absolute clock, whatever the server does: a slow
or failing server gets exactly the offered rate, and its slowness shows up as latency and errors rather
than as a quietly lower request rate (the "coordinated omission" of closed-loop tools). That is what an
autoscaler is judged against: users keep arriving while replicas are being added.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

RateSpec = float | Callable[[float], float]

MAX_RATE = 50_000.0  # arrivals/s; a runaway rate function must not spin the event loop forever
_IDLE_STEP = 0.05  # while the rate is 0, how often to look at the rate function again
_DRAIN_GRACE = 1.0  # beyond the per-request timeout, when waiting for the last responses

OVERLOAD = "overload"  # error name for arrivals dropped because max_in_flight was reached
CANCELLED = "cancelled"  # error name for requests still unanswered when the run had to end


class FailedCount(int):
    """An int that can also be called.

    Callers use both spellings (`result.failed == 0` in the e2e tests and demo, `result.failed()` in the
    API brief); a plain method would make the first silently compare a bound method with 0.
    """

    def __call__(self) -> int:
        return int(self)


@dataclass
class LoadResult:
    url: str
    sent: int  # arrivals offered, including those that failed or were refused as overload
    ok: int  # 2xx responses
    status: dict[int, int]  # HTTP status -> count (responses only)
    errors: dict[str, int]  # exception class name (or "overload"/"cancelled") -> count
    latencies: dict[str, float]  # ms over requests that got a response: p50, p95, p99, max, mean
    duration: float  # seconds from the first arrival to the last completion
    send_duration: float  # seconds over which arrivals were offered
    achieved_rps: float  # sent / send_duration: the rate actually offered
    throughput_rps: float  # ok / duration
    instances: dict[str, int] = field(default_factory=dict)  # `instance` of JSON 2xx bodies -> count
    # (send time offset s, status or 0 for a connection error/overload, latency ms), by send time
    timeline: list[tuple[float, int, float]] = field(default_factory=list)

    @property
    def failed(self) -> FailedCount:
        """Non-2xx responses plus requests that got no response at all (`r.failed` or `r.failed()`)."""
        return FailedCount(
            sum(n for code, n in self.status.items() if not 200 <= code < 300) + sum(self.errors.values())
        )

    def to_json(self, *, timeline: bool = True, indent: int | None = None) -> str:
        data = asdict(self)
        data["failed"] = int(self.failed)  # derived, but what most JSON consumers look at first
        if not timeline:
            del data["timeline"]
        return json.dumps(data, indent=indent)

    @classmethod
    def from_json(cls, text: str) -> LoadResult:
        data: dict[str, Any] = json.loads(text)
        data.pop("failed", None)
        # JSON turns int keys into strings and tuples into lists; undo both.
        data["status"] = {int(k): v for k, v in data["status"].items()}
        data["timeline"] = [(float(t), int(s), float(lat)) for t, s, lat in data.get("timeline", [])]
        return cls(**data)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _rate_fn(rate: RateSpec) -> Callable[[float], float]:
    if callable(rate):
        return rate
    fixed = float(rate)
    return lambda _t: fixed


def _clamp_rate(r: float) -> float:
    if math.isnan(r) or r <= 0:
        return 0.0
    return min(r, MAX_RATE)


class _Collector:
    """Accumulates outcomes; only touched from the event loop thread, so no locking."""

    def __init__(self) -> None:
        self.sent = 0
        self.ok = 0
        self.status: dict[int, int] = {}
        self.errors: dict[str, int] = {}
        self.instances: dict[str, int] = {}
        self.latencies: list[float] = []
        self.timeline: list[tuple[float, int, float]] = []
        self.last_done = 0.0

    def error(self, name: str, sent_at: float, done_at: float) -> None:
        self.errors[name] = self.errors.get(name, 0) + 1
        self.timeline.append((sent_at, 0, 0.0))
        self.last_done = max(self.last_done, done_at)

    def response(self, code: int, body: bytes, sent_at: float, done_at: float) -> None:
        latency_ms = (done_at - sent_at) * 1000.0
        self.status[code] = self.status.get(code, 0) + 1
        self.latencies.append(latency_ms)
        self.timeline.append((sent_at, code, latency_ms))
        self.last_done = max(self.last_done, done_at)
        if 200 <= code < 300:
            self.ok += 1
            instance = _instance_of(body)
            if instance is not None:
                self.instances[instance] = self.instances.get(instance, 0) + 1


def _instance_of(body: bytes) -> str | None:
    if not body.startswith(b"{"):  # cheap reject before parsing non-JSON bodies
        return None
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    inst = obj.get("instance") if isinstance(obj, dict) else None
    return inst if isinstance(inst, str) else None


async def run_load(
    url: str,
    rate: RateSpec,
    duration: float,
    *,
    timeout: float = 10.0,
    max_in_flight: int = 2000,
    stop: asyncio.Event | None = None,
) -> LoadResult:
    """Offer `rate` requests/s (a number, or a function of elapsed seconds) to `url` for `duration` s.

    Ends by itself: arrivals stop at `duration` (or when `stop` is set), then outstanding requests get
    at most `timeout` + a grace second before they are cancelled and counted as errors.
    """
    if duration < 0 or math.isnan(duration):
        raise ValueError(f"duration must be >= 0, got {duration}")
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    rate_at = _rate_fn(rate)
    loop = asyncio.get_running_loop()
    col = _Collector()
    tasks: set[asyncio.Task[None]] = set()
    # The connector limit equals max_in_flight, so a request we start never waits in aiohttp's
    # internal queue: the only queueing is the server's, which is what we want to measure.
    # One connection per request: open-loop arrivals are independent clients. A reused idle keep-alive
    # connection races nginx's reload (the old worker closes it as the next request is written):
    # measured with reloads every 0.1 s under 150 req/s, 2 of 18 000 requests reset with keep-alive,
    # 0 of 18 000 without. Real clients meet that race too (browsers and Go's net/http retry it); a
    # test of the service must not count it as the service failing.
    connector = aiohttp.TCPConnector(limit=max_in_flight, force_close=True)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    start = loop.time()

    async def one(session: aiohttp.ClientSession, sent_at: float) -> None:
        try:
            async with session.get(url) as resp:
                body = await resp.read()  # read fully: latency includes the body, and frees the conn
            col.response(resp.status, body, sent_at, loop.time() - start)
        except asyncio.CancelledError:
            col.error(CANCELLED, sent_at, loop.time() - start)
            raise
        except Exception as exc:  # every failure is a data point, never a crash of the run
            col.error(type(exc).__name__, sent_at, loop.time() - start)

    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        next_at = 0.0  # scheduled offset of the next arrival, on the absolute clock
        stopped = False
        # The epsilon absorbs float drift of the summed intervals (600 x 0.005 is just under 3.0).
        while next_at < duration - 1e-9:
            if stop is not None and stop.is_set():
                stopped = True
                break
            r = _clamp_rate(rate_at(next_at))
            if r == 0.0:
                next_at += _IDLE_STEP
                await _sleep_until(loop, start + next_at, stop)
                continue
            await _sleep_until(loop, start + next_at, stop)
            if stop is not None and stop.is_set():
                stopped = True
                break
            # Latency counts from the actual send, so our own lag (if any) is not blamed on the server.
            sent_at = loop.time() - start
            col.sent += 1
            if len(tasks) >= max_in_flight:
                col.error(OVERLOAD, sent_at, sent_at)
            else:
                task = loop.create_task(one(session, sent_at))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            # Advance from the schedule, not from "now": when we fall behind (a busy loop), the
            # next arrivals fire immediately to catch up, so the offered rate is kept.
            next_at += 1.0 / r
        elapsed = loop.time() - start
        # The arrival window: the whole schedule unless stopped early, longer if we lagged behind it.
        send_duration = elapsed if stopped else max(duration, elapsed)
        if tasks:
            _done, pending = await asyncio.wait(set(tasks), timeout=timeout + _DRAIN_GRACE)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    lat = sorted(col.latencies)
    total = max(col.last_done, send_duration)
    return LoadResult(
        url=url,
        sent=col.sent,
        ok=col.ok,
        status=dict(sorted(col.status.items())),
        errors=dict(sorted(col.errors.items())),
        latencies={
            "p50": percentile(lat, 50),
            "p95": percentile(lat, 95),
            "p99": percentile(lat, 99),
            "max": lat[-1] if lat else 0.0,
            "mean": sum(lat) / len(lat) if lat else 0.0,
        },
        duration=total,
        send_duration=send_duration,
        achieved_rps=col.sent / send_duration if send_duration > 0 else float(col.sent),
        throughput_rps=col.ok / total if total > 0 else float(col.ok),
        instances=dict(sorted(col.instances.items(), key=lambda kv: (-kv[1], kv[0]))),
        timeline=sorted(col.timeline),
    )


async def _sleep_until(loop: asyncio.AbstractEventLoop, deadline: float, stop: asyncio.Event | None) -> None:
    delay = deadline - loop.time()
    if stop is None or delay <= 0:
        # sleep(0) when behind still yields, so responses get processed during catch-up bursts.
        await asyncio.sleep(max(delay, 0.0))
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)


def run_load_sync(
    url: str,
    rate: RateSpec,
    duration: float,
    *,
    timeout: float = 10.0,
    max_in_flight: int = 2000,
) -> LoadResult:
    """`run_load` in a fresh event loop, for callers without one."""
    return asyncio.run(run_load(url, rate, duration, timeout=timeout, max_in_flight=max_in_flight))


class LoadRunner:
    """Runs a load in a background thread (its own event loop) while the caller does other things.

    ``with LoadRunner(url, 50, 60) as runner: ...`` stops the load on leaving the block; then
    ``runner.result()`` has the numbers.
    """

    def __init__(
        self,
        url: str,
        rate: RateSpec,
        duration: float,
        *,
        timeout: float = 10.0,
        max_in_flight: int = 2000,
    ) -> None:
        self._args = (url, rate, duration)
        self._kwargs: dict[str, Any] = {"timeout": timeout, "max_in_flight": max_in_flight}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._stop_requested = False
        self._result: LoadResult | None = None
        self._exc: BaseException | None = None

    def start(self) -> LoadRunner:
        if self._thread is not None:
            raise RuntimeError("LoadRunner already started")
        self._thread = threading.Thread(target=self._run, name="tierscale-loadgen", daemon=True)
        self._thread.start()
        self._ready.wait()
        return self

    def _run(self) -> None:
        async def main() -> LoadResult:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            if self._stop_requested:
                self._stop.set()
            self._ready.set()
            return await run_load(*self._args, stop=self._stop, **self._kwargs)

        try:
            self._result = asyncio.run(main())
        except BaseException as exc:  # handed to the caller of result()
            self._exc = exc
        finally:
            self._ready.set()

    def stop(self) -> None:
        """Stop offering new requests (outstanding ones still complete); returns immediately."""
        self._stop_requested = True
        loop, ev = self._loop, self._stop
        if loop is not None and ev is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed: the run is over anyway
                loop.call_soon_threadsafe(ev.set)

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def result(self, timeout: float | None = None) -> LoadResult:
        """Wait for the run to end and return its result (re-raises what the run raised)."""
        if self._thread is None:
            raise RuntimeError("LoadRunner not started")
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("load still running")
        if self._exc is not None:
            raise self._exc
        assert self._result is not None
        return self._result

    def __enter__(self) -> LoadRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        # Stop and wait, but leave raising the run's own error to result(): raising here could mask
        # the exception that is leaving the with-block.
        self.stop()
        if self._thread is not None:
            self._thread.join()


def format_result(result: LoadResult) -> str:
    r = result
    lat = r.latencies
    lines = [
        f"url         {r.url}",
        f"sent        {r.sent} in {r.send_duration:.2f}s ({r.achieved_rps:.1f} req/s offered)",
        f"ok          {r.ok} ({r.throughput_rps:.1f} req/s over {r.duration:.2f}s)",
        f"failed      {r.failed}",
        f"latency ms  p50 {lat['p50']:.1f}  p95 {lat['p95']:.1f}  p99 {lat['p99']:.1f}  max {lat['max']:.1f}",
        "status      " + (", ".join(f"{code}: {n}" for code, n in r.status.items()) or "-"),
        "errors      " + (", ".join(f"{name}: {n}" for name, n in r.errors.items()) or "-"),
    ]
    if r.instances:
        lines.append("instances   " + ", ".join(f"{name}: {n}" for name, n in r.instances.items()))
    return "\n".join(lines)


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str | float) -> float:
    """Seconds from `30`, `1.5`, `500ms`, `30s`, `2m`, `1h`, `1m30s`; ValueError otherwise."""
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION_PART.findall(text)
            if not text or "".join(n + u for n, u in parts) != text:
                raise ValueError(f"not a duration: {value!r}") from None
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a duration: {value!r}")
    return seconds


class _BadInput(Exception):
    pass


def _target_url(url: str, path: str | None) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _BadInput(f"URL must be http://HOST[:PORT][/PATH] or https://…, got {url!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port like :99999 or :abc
    except ValueError:
        raise _BadInput(f"URL has a bad port: {url!r}") from None
    if path is None or path == "":
        return url
    if not path.startswith("/"):
        raise _BadInput(f"--path must start with '/', got {path!r}")
    # Appended, so a URL with a prefix (nginx location /app/) keeps it: /app + /work?ms=20.
    p = urlsplit(path)
    query = "&".join(q for q in (parts.query, p.query) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + p.path, query, ""))


def _positive(name: str, value: str | float, parse: Callable[[Any], float]) -> float:
    try:
        v = parse(value)
    except (TypeError, ValueError):
        raise _BadInput(f"{name} must be a positive number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise _BadInput(f"{name} must be > 0, got {value!r}")
    return v


def main_load(
    url: str,
    rps: str | float,
    duration: str | float,
    path: str | None = None,
    as_json: bool = False,
    timeout: str | float = 10.0,
) -> int:
    """`tierscale load`: 0 when every request succeeded, 1 when some failed, 2 for bad input.

    `path` (e.g. ``/work?ms=20``) is appended to the URL's path when given.
    """
    try:
        target = _target_url(url, path)
        rate = _positive("--rps", rps, float)
        seconds = _positive("--duration", duration, parse_duration)
        per_request = _positive("--timeout", timeout, parse_duration)
    except _BadInput as exc:
        print(f"tierscale load: error: {exc}", file=sys.stderr)
        return 2

    async def run() -> LoadResult:
        # Ctrl-C ends the run early but still reports what was measured so far.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, stop.set)
        return await run_load(target, rate, seconds, timeout=per_request, stop=stop)

    result = asyncio.run(run())
    print(result.to_json(timeline=False, indent=2) if as_json else format_result(result))
    return 0 if result.failed == 0 else 1
