"""CPU and memory of many containers in one pass, without `docker stats`' blocking read per container.

`docker stats --no-stream` (and the API's `stats?stream=false`) waits for the engine to take two
samples about a second apart, per container. Here each pass takes ONE cumulative reading per container
and the utilization is the difference to the reading kept from the previous pass, which is exactly the
computation `docker stats` does, minus the wait. Two sources of readings:

- cgroup files (`cgroup`): when the engine runs on this host, the container's CPU counter is a file
  (cgroup v1 `cpuacct.usage`, v2 `cpu.stat`); reading 50 of them takes about a millisecond. The
  container's cgroup is found from its main pid (`/proc/<pid>/cgroup`) and accepted only if the path
  names the container id, so a remote engine or another pid namespace falls back cleanly.
- Engine API streams (`stream`), for engines elsewhere: one long-lived `stats?stream=true` connection
  per container, read by a thread that keeps the latest reading; a pass takes those, so it costs no
  round trip at all. (The engine samples every container once a second for as long as it is watched.)
- Engine API one-shot (`oneshot`, measured, not chosen): `stats?stream=false&one-shot=true` still waits
  for the engine's next 1-second collection cycle, so even all containers at once cost ~1 s per pass.

The utilization itself is computed by `cpu_rate.CpuRate`, as for every tier.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tierscale.providers.base import ReplicaStats
from tierscale.providers.cpu_rate import CpuRate, CpuReading


@dataclass(frozen=True)
class Sample:
    cpu_ns: int  # cumulative CPU time used by the container
    memory_bytes: int | None  # working set as `docker stats` shows it: usage minus inactive file cache
    at: float  # time.monotonic() of the reading
    pre: Sample | None = None  # the engine's previous reading, when the API body carries one


@dataclass(frozen=True)
class CgroupFiles:
    cpu: Path  # v1: cpuacct.usage (ns); v2: cpu.stat (usage_usec line)
    v2: bool
    memory_usage: Path | None  # v1 memory.usage_in_bytes, v2 memory.current
    memory_stat: Path | None


def _mounts(mountinfo: str) -> tuple[dict[str, tuple[str, str]], tuple[str, str] | None]:
    """cgroup v1 controller → (root, mountpoint), and the cgroup2 (root, mountpoint) if mounted."""
    v1: dict[str, tuple[str, str]] = {}
    v2: tuple[str, str] | None = None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        rfields = right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        root, mountpoint, fstype = fields[3], fields[4], rfields[0]
        if fstype == "cgroup2" and v2 is None:
            v2 = (root, mountpoint)
        elif fstype == "cgroup":
            for opt in rfields[2].split(","):
                v1.setdefault(opt, (root, mountpoint))
    return v1, v2


def _join(mount: tuple[str, str], path: str) -> Path:
    root, mountpoint = mount
    rel = os.path.relpath(path, root) if root != "/" else path.lstrip("/")
    return Path(mountpoint) / ("" if rel == "." else rel)


class CgroupLocator:
    """Finds a local container's cgroup files from its main pid."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self.proc = proc
        try:
            self.v1, self.v2 = _mounts((proc / "self" / "mountinfo").read_text())
        except OSError:
            self.v1, self.v2 = {}, None

    def locate(self, container_id: str, pid: int) -> CgroupFiles | None:
        if pid <= 0:
            return None
        try:
            lines = (self.proc / str(pid) / "cgroup").read_text().splitlines()
        except OSError:
            return None
        paths: dict[str, str] = {}
        for line in lines:
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            for ctrl in parts[1].split(",") if parts[1] else [""]:
                paths[ctrl] = parts[2]
        files: CgroupFiles | None = None
        if "cpuacct" in paths and "cpuacct" in self.v1:
            mem_dir = None
            if "memory" in paths and "memory" in self.v1:
                mem_dir = _join(self.v1["memory"], paths["memory"])
            files = CgroupFiles(
                cpu=_join(self.v1["cpuacct"], paths["cpuacct"]) / "cpuacct.usage",
                v2=False,
                memory_usage=mem_dir / "memory.usage_in_bytes" if mem_dir else None,
                memory_stat=mem_dir / "memory.stat" if mem_dir else None,
            )
        elif "" in paths and self.v2 is not None:
            d = _join(self.v2, paths[""])
            files = CgroupFiles(
                cpu=d / "cpu.stat",
                v2=True,
                memory_usage=d / "memory.current" if (d / "memory.current").exists() else None,
                memory_stat=d / "memory.stat" if (d / "memory.stat").exists() else None,
            )
        # The pid must really be this container's: its cgroup path names the container id. A pid from
        # a remote engine's namespace that happens to exist here fails this test.
        if files is None or container_id not in str(files.cpu) or not files.cpu.exists():
            return None
        return files


def _stat_value(text: str, key: str) -> int | None:
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if k == key:
            with contextlib.suppress(ValueError):
                return int(v)
    return None


def read_cgroup(files: CgroupFiles) -> Sample | None:
    """One reading from the cgroup files; None if the cgroup is gone (container stopped)."""
    try:
        text = files.cpu.read_text()
        at = time.monotonic()
        if files.v2:
            usec = _stat_value(text, "usage_usec")
            if usec is None:
                return None
            cpu_ns = usec * 1000
        else:
            cpu_ns = int(text.strip())
    except (OSError, ValueError):
        return None
    memory: int | None = None
    if files.memory_usage is not None:
        try:
            usage = int(files.memory_usage.read_text().strip())
            inactive = 0
            if files.memory_stat is not None:
                stat = files.memory_stat.read_text()
                inactive = _stat_value(stat, "inactive_file" if files.v2 else "total_inactive_file") or 0
            memory = max(0, usage - inactive)
        except (OSError, ValueError):
            memory = None
    return Sample(cpu_ns, memory, at)


def _engine_time(stamp: str) -> float | None:
    """Seconds since the epoch of an engine timestamp (RFC 3339 with nanoseconds); None for zero time."""
    if not stamp or stamp.startswith("0001-01-01"):
        return None
    main, _, frac = stamp.rstrip("Z").partition(".")
    try:
        base = datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None
    digits = "".join(ch for ch in frac if ch.isdigit())
    return base + (int(digits) / 10 ** len(digits) if digits else 0.0)


def sample_from_api_stats(stats: dict[str, Any], at: float) -> Sample | None:
    """One reading from an Engine API stats body (one-shot or streamed); None for a stopped container."""
    read = _engine_time(str(stats.get("read") or ""))
    if read is None:  # the engine's zero time: nothing was read
        return None
    cpu = (stats.get("cpu_stats") or {}).get("cpu_usage") or {}
    total = cpu.get("total_usage")
    if not isinstance(total, int):
        return None
    mem = stats.get("memory_stats") or {}
    usage = mem.get("usage")
    memory: int | None = None
    if isinstance(usage, int):
        st = mem.get("stats") or {}
        inactive = st.get("total_inactive_file", st.get("inactive_file", 0)) or 0
        memory = max(0, usage - int(inactive))
    pre = None
    preread = _engine_time(str(stats.get("preread") or ""))
    pre_total = ((stats.get("precpu_stats") or {}).get("cpu_usage") or {}).get("total_usage")
    if preread is not None and isinstance(pre_total, int) and 0 < read - preread < 10 and pre_total <= total:
        pre = Sample(pre_total, None, at - (read - preread))
    return Sample(total, memory, at, pre)


def container_stats(
    rate: CpuRate, cid: str, sample: Sample, allot_milli: int, created_at: float
) -> ReplicaStats:
    """One container's sample as replica stats: CPU % of `allot_milli` over the interval since the kept
    reading, or since the engine's own previous reading (a real interval even on first sight)."""
    pre = CpuReading(sample.pre.cpu_ns / 1e9, sample.pre.at) if sample.pre is not None else None
    pct = rate.percent(
        cid,
        sample.cpu_ns / 1e9,
        allot_milli,
        at=sample.at,
        lifetime=time.time() - created_at,
        previous=pre,
    )
    return ReplicaStats(cpu_percent=pct, cpu_allotment_milli=allot_milli, memory_bytes=sample.memory_bytes)


class StatsStreams:
    """One long-lived stats stream per container, each read by a thread that keeps the latest reading."""

    STALE_AFTER = 5.0  # a reading older than this (stream broken, engine gone) is not used

    def __init__(self, api_factory: Callable[[], Any]) -> None:
        self._api_factory = api_factory
        self._latest: dict[str, Sample] = {}
        self._streams: dict[str, tuple[threading.Thread, threading.Event, list[Any]]] = {}
        self._lock = threading.Lock()

    def watch(self, container_ids: set[str]) -> None:
        """Stream exactly these containers: start missing or broken streams, stop the others."""
        with self._lock:
            for cid in set(self._streams) - container_ids:
                self._stop(cid)
            for cid in container_ids:
                st = self._streams.get(cid)
                if st is None or not st[0].is_alive():
                    stop = threading.Event()
                    holder: list[Any] = []
                    t = threading.Thread(
                        target=self._run, args=(cid, stop, holder), name=f"stats-{cid[:12]}", daemon=True
                    )
                    self._streams[cid] = (t, stop, holder)
                    t.start()

    def latest(self, cid: str) -> Sample | None:
        s = self._latest.get(cid)
        if s is None or time.monotonic() - s.at > self.STALE_AFTER:
            return None
        return s

    def _stop(self, cid: str) -> None:
        _, stop, holder = self._streams.pop(cid)
        stop.set()
        for resp in holder:  # unblocks the reader thread at once
            with contextlib.suppress(Exception):
                resp.close()
        self._latest.pop(cid, None)

    def _run(self, cid: str, stop: threading.Event, holder: list[Any]) -> None:
        try:
            api = self._api_factory()
            url = f"{api.base_url}/v{api.api_version}/containers/{cid}/stats"
            # APIClient is a requests.Session: a streamed GET whose response we can close to stop it.
            resp = api.get(url, params={"stream": "1"}, stream=True, timeout=(10, 30))
            holder.append(resp)
            if stop.is_set() or resp.status_code != 200:
                resp.close()
                return
            for line in resp.iter_lines():
                if stop.is_set():
                    break
                if not line:
                    continue
                try:
                    body = json.loads(line)
                except ValueError:
                    continue
                sample = sample_from_api_stats(body, time.monotonic())
                if sample is not None:
                    self._latest[cid] = sample
            resp.close()
        except Exception:  # engine gone or container removed: `watch` restarts broken streams
            return

    def close(self) -> None:
        with self._lock:
            for cid in list(self._streams):
                self._stop(cid)
