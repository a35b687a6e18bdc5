"""Docker tier: each replica is a container, managed through the Docker Engine API (Docker SDK for Python).

Ownership lives on the engine: every container carries the labels `io.tierscale.group` and
`io.tierscale.replica` (SPEC §5), so `list` after a controller restart finds the same containers, and
containers of other groups or without the labels are never touched; `io.tierscale.revision` and
`io.tierscale.host` say which template revision it runs and on which engine. The service port is
published on 127.0.0.1 with a host port the engine picks; `create` reads it back as the replica's address.

Restart policy is `no`: tierscale is the one that replaces replicas. A container that exits (crash,
`docker kill`, or a dockerd restart without live-restore) is listed as `failed`; the controller removes
it and creates a new one.

Every engine failure becomes a typed `ProviderError` with a one-line message, told apart by the SDK's
exception class and HTTP status (never by its text): `TierUnavailable` for an engine that does not answer
(which also drops the client, so the next call connects afresh and the controller resumes when the
engine returns), `TemplateError` for an image that is missing or a command that cannot start,
`CreateRejected` for other refused creates, `ReplicaGone` for a container that no longer exists.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import docker
import docker.errors
import requests.exceptions

from tierscale.addresses import format_address
from tierscale.providers.base import (
    Capability,
    CreateRejected,
    EventSink,
    HostInfo,
    Listing,
    NoConsole,
    ProviderError,
    ProviderTimeout,
    Replica,
    ReplicaGone,
    ReplicaStats,
    TemplateError,
    TierState,
    TierUnavailable,
    no_events,
)
from tierscale.providers.cpu_rate import CpuRate
from tierscale.providers.docker_image import DEMO_IMAGE, WORKLOAD_BUILD_SH, ImageBuildError, build_demo_image
from tierscale.providers.docker_stats import (
    CgroupFiles,
    CgroupLocator,
    Sample,
    StatsStreams,
    container_stats,
    read_cgroup,
    sample_from_api_stats,
)

LABEL_GROUP = "io.tierscale.group"
LABEL_REPLICA = "io.tierscale.replica"
LABEL_PORT = "io.tierscale.port"  # the container port the address was published from
LABEL_CREATED = "io.tierscale.created"  # time.time() at create, with sub-second precision
LABEL_CPUS = "io.tierscale.cpus"  # the CPU allotment, so an adopted container's percent means the same
LABEL_REVISION = "io.tierscale.revision"  # the template revision it was created from
LABEL_HOST = "io.tierscale.host"  # the engine URL it was created through
DEFAULT_ENGINE = "unix:///var/run/docker.sock"

STUCK_CREATED_AFTER = 60.0  # a container still in "created" after this was abandoned mid-create
API_TIMEOUT = 30.0  # seconds for one Engine API call (a stop adds its grace period on top)
STATS_WORKERS = 8  # inspects of new containers (cgroup lookup) run this many at a time
STATS_SOURCES = ("auto", "cgroup", "stream", "oneshot")

T = TypeVar("T")

try:  # paramiko carries ssh:// engines (docker[ssh]); its errors mean "unreachable" too
    from paramiko.ssh_exception import SSHException

    _SSH_ERRORS: tuple[type[BaseException], ...] = (SSHException,)
except ImportError:  # pragma: no cover - paramiko is a dependency, but only ssh:// needs it
    _SSH_ERRORS = ()
_DEMO_BUILD_LOCK = threading.Lock()


def _is_local(base_url: str | None) -> bool:
    if not base_url or base_url.startswith(("unix://", "npipe://", "http+unix://")):
        return True
    host = urlsplit(base_url).hostname or ""
    if host in ("localhost", ""):
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False


def _publish_ip(base_url: str | None) -> str:
    """Where to publish the service port: loopback for a local engine, else the engine host's address
    (the controller must reach it, and loopback on a remote host is unreachable from here)."""
    if _is_local(base_url):
        return "127.0.0.1"
    host = urlsplit(base_url or "").hostname or "127.0.0.1"
    try:
        return socket.gethostbyname(host)
    except OSError as exc:
        raise TierUnavailable(f"cannot resolve the Docker host {host!r}: {exc}") from None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it wraps: requests → urllib3 (`reason`, args) → the socket error, breadth first."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        inner = [e.__cause__, e.__context__, getattr(e, "reason", None), *e.args]
        todo.extend(x for x in inner if isinstance(x, BaseException))


def _reason(exc: BaseException) -> str:
    """The innermost useful words of a requests/urllib3/paramiko connection error: the socket's errno
    when there is one ("connection refused", "no such file or directory"), else the innermost text."""
    chain = list(_causes(exc))
    for e in chain:
        if isinstance(e, OSError) and e.errno:
            return os.strerror(e.errno).lower()
    if any(isinstance(e, TimeoutError | socket.timeout) for e in chain):
        return "timed out"
    for e in reversed(chain):
        text = str(e).strip()
        if text:
            return text.splitlines()[0][:200]
    return type(exc).__name__


def _api_message(exc: docker.errors.APIError) -> str:
    return exc.explanation if isinstance(exc.explanation, str) and exc.explanation else str(exc)


@dataclass(frozen=True)
class DockerData:
    """What the Docker tier keeps on a `Replica` for itself (`Replica.ref` is the container id)."""

    name: str
    image: str
    engine_state: str
    cpus: float | None  # the allotment it was created with; None: unlimited or not recorded


@dataclass
class _Known:
    """What stats needs per container, learned once (inspect) and reused while the container lives."""

    pid: int
    cgroup: CgroupFiles | None


def _published(ip: str | None, port: int | str) -> str:
    """The address of a published port; a wildcard binding is reached on loopback."""
    host = ip or "127.0.0.1"
    return format_address("127.0.0.1" if host in ("0.0.0.0", "::", "") else host, port)


class DockerProvider(NoConsole):
    tier = "docker"
    capabilities: frozenset[Capability] = frozenset({Capability.EXEC})

    def __init__(
        self,
        group: str,
        image: str,
        port: int = 8080,
        env: Mapping[str, str] | None = None,
        cpus: float | None = None,
        memory: int | None = None,
        command: Sequence[str] | None = None,
        host: str | None = None,
        stats_source: str = "auto",  # auto (cgroup, else stream) | cgroup | stream | oneshot
        *,
        revision: str,
        events: EventSink = no_events,
    ) -> None:
        if stats_source not in STATS_SOURCES:
            raise ValueError(
                f"stats_source: expected one of {', '.join(STATS_SOURCES)} (got {stats_source!r})"
            )
        self.group = group
        self.image = image
        self.port = port
        self.env = dict(env or {})
        self.cpus = cpus
        self.memory = memory
        self.command = list(command) if command is not None else None
        self.host = host
        self.stats_source = stats_source
        self.revision = revision
        self.events = events
        self._client: docker.DockerClient | None = None
        self._client_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._cpu = CpuRate()  # per container id
        self._known: dict[str, _Known] = {}
        self._locator: CgroupLocator | None = None
        self._streams: StatsStreams | None = None
        self._stats_lock = threading.Lock()
        self._stream_client: docker.DockerClient | None = None

    # ---- engine connection -------------------------------------------------------------------------
    @property
    def engine(self) -> str:
        return self.host or os.environ.get("DOCKER_HOST") or DEFAULT_ENGINE

    def client(self) -> docker.DockerClient:
        """The SDK client, connected on first use (and again after the engine was lost)."""
        with self._client_lock:
            if self._client is None:
                try:
                    self._client = self._make_client(max_pool_size=STATS_WORKERS + 8)
                except (docker.errors.DockerException, OSError, *_SSH_ERRORS) as exc:
                    raise self._unreachable(exc) from None
            return self._client

    def _make_client(self, max_pool_size: int) -> docker.DockerClient:
        # version "auto" asks the engine which API version to speak: old and new engines both work.
        kwargs: dict[str, Any] = {"version": "auto", "timeout": API_TIMEOUT, "max_pool_size": max_pool_size}
        if self.host:
            return docker.DockerClient(base_url=self.host, **kwargs)
        return docker.from_env(**kwargs)

    def _unreachable(self, exc: BaseException) -> TierUnavailable:
        return TierUnavailable(
            f"Docker engine unreachable at {self.engine} ({_reason(exc)}); is dockerd running?"
        )

    def _drop_client(self) -> None:
        with self._client_lock:
            if self._client is not None:
                with contextlib.suppress(Exception):
                    self._client.close()
                self._client = None

    @contextlib.contextmanager
    def _engine(self, what: str, refused: type[ProviderError] = ProviderError) -> Iterator[None]:
        """SDK/transport failures → one-line typed ProviderErrors; forget the client if the engine went
        away. `refused`: the class for an error answer that is not "not found" (creates: CreateRejected)."""
        try:
            yield
        except ProviderError:
            raise
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            self._drop_client()
            if isinstance(exc, requests.exceptions.ReadTimeout):
                raise ProviderTimeout(
                    f"Docker engine at {self.engine} did not answer {what} in time"
                ) from None
            raise self._unreachable(exc) from None
        except docker.errors.ImageNotFound as exc:
            raise TemplateError(f"{what}: {_api_message(exc)}") from None
        except docker.errors.NotFound as exc:
            raise ReplicaGone(f"{what}: {_api_message(exc)}") from None
        except docker.errors.APIError as exc:
            status = exc.status_code
            # 400 on a create or start: the engine refuses what the template asks (e.g. a command that
            # does not exist in the image); retrying the same template cannot work.
            kind = TemplateError if refused is CreateRejected and status == 400 else refused
            raise kind(f"{what}: {_api_message(exc)}") from None
        except docker.errors.DockerException as exc:
            self._drop_client()
            raise self._unreachable(exc) from None
        except (OSError, *_SSH_ERRORS) as exc:  # ssh:// engines fail with socket/paramiko errors
            self._drop_client()
            raise self._unreachable(exc) from None

    def _retry_once(self, what: str, fn: Callable[[], T]) -> T:
        """Read-only calls: a pooled connection that died with a restarted dockerd fails once; retry it."""
        try:
            with self._engine(what):
                return fn()
        except TierUnavailable as first:
            if isinstance(first, ProviderTimeout):  # a hung engine: asking again would hang again
                raise
            try:
                with self._engine(what):
                    return fn()
            except ProviderError:
                raise first from None

    # ---- list ----------------------------------------------------------------------------------------
    def _containers(self, *labels: str) -> list[dict[str, Any]]:
        filters = {"label": [f"{LABEL_GROUP}={self.group}", *labels]}
        return self._retry_once(
            "listing containers", lambda: self.client().api.containers(all=True, filters=filters)
        )

    def list(self) -> Listing:
        out = [r for row in self._containers() if (r := self._replica(row)) is not None]
        return Listing(sorted(out, key=lambda r: r.created_at))

    def _replica(self, row: Mapping[str, Any]) -> Replica | None:
        labels = row.get("Labels") or {}
        rid = labels.get(LABEL_REPLICA)
        if labels.get(LABEL_GROUP) != self.group or not rid:
            return None  # only what carries both marks is ours
        try:
            created = float(labels.get(LABEL_CREATED) or row.get("Created") or 0)
        except ValueError:
            created = float(row.get("Created") or 0)
        try:
            cport = int(labels.get(LABEL_PORT) or self.port)
        except ValueError:
            cport = self.port
        address = None
        for p in row.get("Ports") or []:
            if p.get("PrivatePort") == cport and p.get("Type") == "tcp" and p.get("PublicPort"):
                address = _published(p.get("IP"), p["PublicPort"])
                break
        engine_state = str(row.get("State") or "")
        state: TierState
        if engine_state in ("running", "paused"):  # paused answers no probe: health checks replace it
            state = "running"
        elif engine_state in ("created", "restarting"):
            state = "provisioning" if time.time() - created < STUCK_CREATED_AFTER else "failed"
        else:  # exited, dead, removing
            state = "failed"
        names = row.get("Names") or []
        cpus: float | None = None
        with contextlib.suppress(ValueError):
            cpus = float(labels.get(LABEL_CPUS) or 0) or None
        return Replica(
            id=rid,
            group=self.group,
            address=address,
            state=state,
            created_at=created,
            revision=str(labels.get(LABEL_REVISION) or ""),  # "" on containers made before revisions
            host=str(labels.get(LABEL_HOST) or ""),
            ref=str(row.get("Id", "")),
            tier_data=DockerData(
                name=names[0].lstrip("/") if names else "",
                image=str(row.get("Image", "")),
                engine_state=engine_state,
                cpus=cpus,
            ),
        )

    # ---- create --------------------------------------------------------------------------------------
    def _check_image(self) -> None:
        """The image must be on the engine (tierscale never pulls) and expose the service port."""
        api = self.client().api
        with self._engine(f"inspecting image {self.image}"):
            try:
                info = api.inspect_image(self.image)
            except docker.errors.ImageNotFound:
                if self.image != DEMO_IMAGE or not WORKLOAD_BUILD_SH.is_file():
                    raise TemplateError(
                        f"template.image: {self.image!r} is not on the Docker engine at {self.engine}; "
                        "build, load or pull it first (tierscale never pulls; demo image: make docker-image)"
                    ) from None
                info = self._build_demo_image()
        self._check_exposed(info)

    def _build_demo_image(self) -> dict[str, Any]:
        """The demo image is built from the source checkout on first use (what `make docker-image` does)."""
        with _DEMO_BUILD_LOCK:  # concurrent creates build it once
            try:
                build_demo_image(self.client())
            except ImageBuildError as exc:
                raise TemplateError(f"template.image: cannot build {DEMO_IMAGE}: {exc}") from None
            info = self.client().api.inspect_image(self.image)
        self.events(
            "provider_info",
            f"built the demo image {DEMO_IMAGE} on the Docker engine at {self.engine}",
            {"image": DEMO_IMAGE, "engine": self.engine},
        )
        return info

    def _check_exposed(self, info: Mapping[str, Any]) -> None:
        exposed = set((info.get("Config") or {}).get("ExposedPorts") or {})
        # An image that declares no ports may still listen anywhere; one that declares ports documents them.
        if exposed and f"{self.port}/tcp" not in exposed:
            raise TemplateError(
                f"template.port: image {self.image!r} does not expose port {self.port}/tcp "
                f"(it exposes {', '.join(sorted(exposed))})"
            )

    def create(self, replica_id: str) -> Replica:
        self._check_image()
        api = self.client().api
        created = time.time()
        name = f"tierscale-{self.group}-{replica_id}"
        labels = {
            LABEL_GROUP: self.group,
            LABEL_REPLICA: replica_id,
            LABEL_PORT: str(self.port),
            LABEL_CREATED: f"{created:.6f}",
            LABEL_CPUS: f"{self.cpus:g}" if self.cpus else "",
            LABEL_REVISION: self.revision,
            LABEL_HOST: self.engine,
        }
        env = {**self.env, "TIERSCALE_REPLICA": replica_id, "TIERSCALE_GROUP": self.group}
        command = (
            [c.replace("{replica}", replica_id).replace("{port}", str(self.port)) for c in self.command]
            if self.command is not None
            else None
        )
        with self._engine(f"creating container {name}", refused=CreateRejected):
            host_config = api.create_host_config(
                port_bindings={self.port: (_publish_ip(self.engine), None)},  # None: the engine picks
                nano_cpus=int(self.cpus * 1e9) if self.cpus else None,
                mem_limit=self.memory,
                restart_policy={"Name": "no"},
            )
            cid = api.create_container(
                self.image,
                command=command,
                name=name,
                labels=labels,
                environment=env,
                ports=[self.port],
                host_config=host_config,
                detach=True,
            )["Id"]
        try:
            with self._engine(f"starting container {name}", refused=CreateRejected):
                api.start(cid)
                info = api.inspect_container(cid)
            bindings = ((info.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{self.port}/tcp") or []
            if not bindings or not bindings[0].get("HostPort"):
                raise CreateRejected(
                    f"container {name}: the engine published no host port for {self.port}/tcp"
                )
            address = _published(bindings[0].get("HostIp"), bindings[0]["HostPort"])
        except BaseException:
            # Nothing half-created: a container that did not start is removed again.
            with contextlib.suppress(Exception):
                api.remove_container(cid, force=True, v=True)
            raise
        return Replica(
            replica_id,
            self.group,
            address,
            "running",
            created,
            revision=self.revision,
            host=self.engine,
            ref=cid,
            tier_data=DockerData(name=name, image=self.image, engine_state="running", cpus=self.cpus),
        )

    # ---- delete --------------------------------------------------------------------------------------
    def delete(self, replica: Replica, grace: float = 5.0) -> None:
        """Stop (SIGTERM, SIGKILL after `grace`), then remove the container and its anonymous volumes."""
        api = self.client().api
        for row in self._containers(f"{LABEL_REPLICA}={replica.id}"):
            cid = row["Id"]
            with contextlib.suppress(ReplicaGone), self._engine(f"stopping container {cid[:12]}"):
                try:
                    if row.get("State") in ("running", "paused", "restarting"):
                        api.stop(cid, timeout=max(0, math.ceil(grace)))
                    api.remove_container(cid, force=True, v=True)
                except docker.errors.APIError as exc:
                    # 409 Conflict on a forced remove: another remove of it is already under way (the
                    # engine finishes it); 404 is mapped to ReplicaGone by `_engine`.
                    if exc.status_code != 409:
                        raise
            self._known.pop(cid, None)
            self._cpu.forget(cid)

    # ---- exec (health type exec) ---------------------------------------------------------------------
    def exec_check(self, replica: Replica, argv: Sequence[str], timeout: float) -> tuple[int, str]:
        """`docker exec` of `argv` in the replica's container: exit code and the end of its output.
        The engine has no exec timeout; the prober stops waiting after the health timeout."""
        api = self.client().api
        with self._engine(f"exec in container {replica.ref[:12]}"):
            try:
                ex = api.exec_create(replica.ref, list(argv), stdout=True, stderr=True)
                out = api.exec_start(ex["Id"])
                code = api.exec_inspect(ex["Id"]).get("ExitCode")
            except docker.errors.APIError as exc:
                if exc.status_code == 404:
                    raise
                # 409 (not running) or 500 (executable not found): the check failed, the engine is fine.
                return 126, str(exc.explanation or exc)[-300:]
        text = out.decode(errors="replace") if isinstance(out, bytes) else str(out)
        return (code if isinstance(code, int) else 126), text[-300:]

    # ---- stats ---------------------------------------------------------------------------------------
    # See docker_stats.py for the sources and bench/docker_metrics.py for what each costs.
    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=STATS_WORKERS, thread_name_prefix="docker-stats")
        return self._pool

    def _learn(self, cid: str) -> _Known | None:
        """Inspect a container once: its main pid, hence its cgroup files when the engine is local."""
        try:
            info = self.client().api.inspect_container(cid)
        except Exception:
            return None
        pid = int((info.get("State") or {}).get("Pid") or 0)
        if self._locator is None:
            self._locator = CgroupLocator()
        return _Known(pid, self._locator.locate(cid, pid))

    def _stream_api(self) -> Any:
        """A second client for the long-lived streams: each holds a pooled connection for its lifetime."""
        with self._client_lock:
            if self._stream_client is None:
                kwargs: dict[str, Any] = {"version": "auto", "timeout": API_TIMEOUT, "max_pool_size": 1024}
                self._stream_client = (
                    docker.DockerClient(base_url=self.host, **kwargs)
                    if self.host
                    else docker.from_env(**kwargs)
                )
            return self._stream_client.api

    def _oneshot(self, cid: str) -> Sample | None:
        try:
            body = self.client().api.stats(cid, stream=False, one_shot=True)
        except Exception:
            return None
        return sample_from_api_stats(body, time.monotonic())

    def _samples(self, cids: list[str]) -> dict[str, Sample | None]:
        samples: dict[str, Sample | None] = {}
        rest = cids
        if self.stats_source in ("auto", "cgroup"):
            new = [cid for cid in cids if cid not in self._known]
            for cid, known in zip(new, self._executor().map(self._learn, new), strict=True):
                if known is not None:
                    self._known[cid] = known
            rest = []
            for cid in cids:
                k = self._known.get(cid)
                sample = read_cgroup(k.cgroup) if k is not None and k.cgroup is not None else None
                if sample is not None:
                    samples[cid] = sample
                else:
                    rest.append(cid)
            if self.stats_source == "cgroup":
                return samples
        if self.stats_source == "oneshot":
            # Each call waits for the engine's next collection cycle: all of them at once, or N seconds.
            with ThreadPoolExecutor(max_workers=max(1, min(64, len(rest)))) as pool:
                samples.update(zip(rest, pool.map(self._oneshot, rest), strict=True))
            return samples
        if self._streams is None:
            if not rest:
                return samples
            self._streams = StatsStreams(self._stream_api)
        self._streams.watch(set(rest))
        for cid in rest:
            samples[cid] = self._streams.latest(cid)  # None until a new stream's first reading arrives
        return samples

    def stats(self, replicas: list[Replica]) -> dict[str, ReplicaStats]:
        # One pass at a time: a pass the controller gave up on (timeout) may still be running in its thread.
        with self._stats_lock:
            return self._stats(replicas)

    def _stats(self, replicas: list[Replica]) -> dict[str, ReplicaStats]:
        targets = {r.ref: r for r in replicas if r.ref and r.state == "running"}
        if not targets:
            if self._streams is not None:
                self._streams.watch(set())
            return {}
        self.client()  # unreachable engine: one clear ProviderError instead of silence per container
        samples = self._samples(list(targets))
        out: dict[str, ReplicaStats] = {}
        for cid, r in targets.items():
            sample = samples.get(cid)
            if sample is None:
                continue
            allot_milli = round(self._allotment(r) * 1000)
            out[r.id] = container_stats(self._cpu, cid, sample, allot_milli, r.created_at)
        # Readings of containers that are gone are dropped; the others are kept for the next pass.
        for cid in set(self._known) - set(targets):
            self._known.pop(cid, None)
        self._cpu.retain(set(targets))
        return out

    def _allotment(self, r: Replica) -> float:
        """Cores the percent refers to: the container's NanoCpus, or one core when unlimited."""
        data = r.tier_data
        if isinstance(data, DockerData) and data.cpus:
            return data.cpus
        return self.cpus or 1.0

    def host_info(self) -> HostInfo:
        """The engine's CPUs and memory, as `docker info` reports them (NCPU, MemTotal)."""
        info = self._retry_once("reading the engine's info", lambda: self.client().info())
        return HostInfo(
            self.engine,
            True,
            cpus=float(info.get("NCPU") or 0) or None,
            memory_bytes=int(info.get("MemTotal") or 0) or None,
        )

    def close(self) -> None:
        if self._streams is not None:
            self._streams.close()
            self._streams = None
        if self._stream_client is not None:
            with contextlib.suppress(Exception):
                self._stream_client.close()
            self._stream_client = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._drop_client()
        self._known.clear()
