"""HTTP health probes and the readiness rules of SPEC §1 `health`.

`HealthTracker` is pure bookkeeping (time is an argument) so its rules are tested without sockets;
`probe` does the one HTTP request.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

import aiohttp

Transition = Literal["ready", "unhealthy"]


@dataclass
class HealthState:
    created_at: float
    successes: int = 0
    failures: int = 0
    ready: bool = False
    ready_changed_at: float | None = None
    unhealthy: bool = False
    last_error: str | None = None
    last_checked: float | None = None
    first_ready_at: float | None = None


class HealthTracker:
    """Consecutive-success / consecutive-failure counting per replica.

    A replica becomes ready after `healthy_after` successes in a row. It becomes unhealthy (taken out and
    replaced, never readmitted) after `unhealthy_after` failures in a row, but while it has never been
    ready, failures inside `startup_grace` of its creation do not count: booting is not failing.
    """

    def __init__(self, healthy_after: int, unhealthy_after: int, startup_grace: float) -> None:
        self.healthy_after = healthy_after
        self.unhealthy_after = unhealthy_after
        self.readmit = False  # an ha standby's view: unhealthy is not final (the leader replaces)
        self.startup_grace = startup_grace
        self.states: dict[str, HealthState] = {}

    def track(self, replica_id: str, created_at: float) -> HealthState:
        st = self.states.get(replica_id)
        if st is None:
            st = self.states[replica_id] = HealthState(created_at=created_at)
        return st

    def forget(self, replica_id: str) -> None:
        self.states.pop(replica_id, None)

    def is_ready(self, replica_id: str) -> bool:
        st = self.states.get(replica_id)
        return bool(st and st.ready and not st.unhealthy)

    def is_unhealthy(self, replica_id: str) -> bool:
        st = self.states.get(replica_id)
        return bool(st and st.unhealthy)

    def observe(
        self, replica_id: str, created_at: float, ok: bool, now: float, error: str | None = None
    ) -> Transition | None:
        st = self.track(replica_id, created_at)
        st.last_checked = now
        if st.unhealthy:
            if not (self.readmit and ok):
                return None
            # An ha standby replaces nothing: a replica it lost sight of (its own host cut off) comes back
            # into its balancer once it answers again, like a new one.
            st.unhealthy, st.failures, st.successes = False, 0, 0
        if ok:
            st.successes += 1
            st.failures = 0
            st.last_error = None
            if not st.ready and st.successes >= self.healthy_after:
                st.ready = True
                st.ready_changed_at = now
                if st.first_ready_at is None:
                    st.first_ready_at = now
                return "ready"
            return None
        st.successes = 0
        st.last_error = error
        if st.first_ready_at is None and now - st.created_at < self.startup_grace:
            return None
        st.failures += 1
        if st.failures >= self.unhealthy_after:
            st.unhealthy = True
            if st.ready:
                st.ready = False
                st.ready_changed_at = now
            return "unhealthy"
        return None


async def probe(
    session: aiohttp.ClientSession, address: str, path: str, timeout: float
) -> tuple[bool, str | None]:
    """One GET; healthy means a 2xx/3xx answer within `timeout`."""
    url = f"http://{address}{path}"
    try:
        async with session.get(
            url, timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False
        ) as resp:
            await resp.read()
            if 200 <= resp.status < 400:
                return True, None
            return False, f"HTTP {resp.status}"
    except TimeoutError:
        return False, f"timeout after {timeout:g}s"
    except (aiohttp.ClientError, OSError) as exc:
        return False, type(exc).__name__
    except asyncio.CancelledError:
        raise
