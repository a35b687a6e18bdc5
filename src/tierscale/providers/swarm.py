"""Swarm tier: a replicated service the user created; tierscale sets its count, Swarm places the tasks.

The service is the user's (image, networks, constraints, update policy): tierscale only changes
`Spec.Mode.Replicated.Replicas`, through the Docker SDK's service API on a manager, and never while an
update someone else started is running or paused (`busy`), so it does not cancel a deployment the way a
count change mid-update would. Each task whose desired state is `running` is a replica; the balancer
targets the port the task publishes in host mode on its node's address (the ingress routing mesh is not
used: it hides which task answers, and the balancer's health gating needs to know).

Replica ids are the tasks' (a task is never re-created under the same id), and the tasks' own state says
provisioning / running / failed; a failed task is Swarm's to replace, so `delete` has nothing to do.
CPU per task comes from the nodes' own engines (`nodes:`), which run the containers: each engine's stats
stream of the containers labelled with the service, against the service's NanoCPUs limit.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import docker
import docker.errors
import requests.exceptions

from tierscale.addresses import format_address
from tierscale.config.hosts import SwarmTemplate
from tierscale.providers.base import (
    Capability,
    EventSink,
    Listing,
    NoConsole,
    ProviderError,
    Replica,
    ReplicaStats,
    TemplateError,
    TierState,
    TierUnavailable,
    no_events,
)
from tierscale.providers.cpu_rate import CpuRate
from tierscale.providers.docker_stats import StatsStreams, container_stats

API_TIMEOUT = 30
TASK_LABEL = "com.docker.swarm.task.id"
SERVICE_LABEL = "com.docker.swarm.service.name"
# An update someone else started (or that stopped half-way): the count is left alone until it ends.
BUSY_STATES = frozenset({"updating", "paused", "rollback_started", "rollback_paused"})
_STATES: dict[str, TierState] = {
    "running": "running",
    "failed": "failed",
    "rejected": "failed",
    "orphaned": "failed",
    "complete": "stopped",
    "shutdown": "stopped",
}
_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException, OSError)


def _created(stamp: str) -> float:
    """Docker's RFC 3339 time with nanoseconds, as wall-clock seconds (0 when it cannot be read)."""
    try:
        head, _, frac = stamp.rstrip("Z").partition(".")
        return datetime.fromisoformat(head + "+00:00").timestamp() + float("0." + (frac or "0")[:6])
    except ValueError:
        return 0.0


class SwarmProvider(NoConsole):
    tier = "swarm"
    capabilities = frozenset({Capability.COUNT})

    def __init__(
        self,
        group: str,
        template: SwarmTemplate,
        revision: str = "",
        events: EventSink = no_events,
        client_factory: Callable[[str | None], docker.DockerClient] | None = None,
    ) -> None:
        self.group = group
        self.template = template
        self.revision = revision
        self.events = events
        self._factory = client_factory or _client
        self._client: docker.DockerClient | None = None
        self._lock = threading.RLock()  # client() drops a failed client under the same lock
        self._streams = {url: StatsStreams(self._node_api(url)) for url in template.nodes}
        self._nodes: dict[str, docker.DockerClient] = {}
        self._cpu = CpuRate()
        self._no_port_told = False
        # A service that is missing or global is a config error, told at start in one line; a manager
        # that does not answer yet is not: the group starts and reports it every pass until it does.
        with contextlib.suppress(TierUnavailable):
            self.check()

    @property
    def manager(self) -> str:
        return self.template.manager or "the local engine"

    def client(self) -> docker.DockerClient:
        with self._lock:
            if self._client is None:
                try:
                    self._client = self._factory(self.template.manager)
                except _ERRORS as exc:
                    raise self._unreachable(exc) from None
            return self._client

    def _unreachable(self, exc: BaseException) -> TierUnavailable:
        with self._lock:
            if self._client is not None:
                with contextlib.suppress(Exception):
                    self._client.close()
                self._client = None
        return TierUnavailable(f"Swarm manager unreachable at {self.manager} ({type(exc).__name__}: {exc})")

    def _service(self) -> Any:
        name = self.template.service
        try:
            service = self.client().services.get(name)
        except docker.errors.NotFound:
            raise TemplateError(
                f"template.service: swarm service {name!r} not found on {self.manager}"
            ) from None
        except docker.errors.APIError as exc:
            if exc.status_code == 503:  # "This node is not a swarm manager"
                raise TemplateError(f"template.manager: {self.manager} is not a swarm manager") from None
            raise ProviderError(f"swarm service {name!r}: {exc.explanation or exc}") from None
        except _ERRORS as exc:
            raise self._unreachable(exc) from None
        if "Replicated" not in service.attrs.get("Spec", {}).get("Mode", {}):
            mode = next(iter(service.attrs.get("Spec", {}).get("Mode", {})), "unknown")
            raise TemplateError(
                f"template.service: swarm service {name!r} is {mode.lower()}, not replicated: "
                "only a replicated service has a count to set"
            )
        return service

    def check(self) -> None:
        """The service exists on that manager and is replicated (`validate`, and the first pass)."""
        self._service()

    def spec_count(self) -> int:
        return int(self._service().attrs["Spec"]["Mode"]["Replicated"].get("Replicas", 0))

    def busy(self) -> str | None:
        """Why the count must not change now (an update of the service is under way), or None."""
        status = self._service().attrs.get("UpdateStatus") or {}
        state = status.get("State", "")
        if state in BUSY_STATES:
            return f"swarm service {self.template.service!r} is in update state {state!r}"
        return None

    def scale_to(self, count: int) -> None:
        service = self._service()
        # The service's own spec sent back with only the count changed. (The SDK's `scale` re-sends a
        # spec with its defaults filled in — restart policy, stop grace, update config — which Swarm
        # takes for a new task template and rolls every task over: a scale-out that restarts the service.)
        spec = copy.deepcopy(service.attrs["Spec"])
        spec["Mode"]["Replicated"]["Replicas"] = count
        try:
            api = self.client().api
            resp = api.post(
                f"{api.base_url}/v{api.api_version}/services/{service.id}/update",
                params={"version": service.attrs["Version"]["Index"]},
                json=spec,
                timeout=API_TIMEOUT,
            )
        except _ERRORS as exc:
            raise self._unreachable(exc) from None
        if resp.status_code != 200:  # e.g. "update out of sequence": someone else changed it meanwhile
            try:
                why = str(resp.json().get("message", resp.text))
            except ValueError:
                why = resp.text
            raise ProviderError(f"cannot scale swarm service {self.template.service!r}: {why.strip()}")

    def list(self) -> Listing:
        service = self._service()
        try:
            tasks = service.tasks(filters={"desired-state": "running"})
            nodes = {n.id: n.attrs for n in self.client().nodes.list()}
        except _ERRORS as exc:
            raise self._unreachable(exc) from None
        return Listing(self._replica(t, nodes) for t in tasks)

    def _replica(self, task: dict[str, Any], nodes: dict[str, dict[str, Any]]) -> Replica:
        status = task.get("Status") or {}
        node = nodes.get(task.get("NodeID", ""), {})
        addr = (node.get("Status") or {}).get("Addr", "")
        port = next(
            (
                p.get("PublishedPort")
                for p in (status.get("PortStatus") or {}).get("Ports") or []
                if p.get("TargetPort") == self.template.port and p.get("PublishMode") == "host"
            ),
            None,
        )
        if port is None and status.get("State") == "running" and not self._no_port_told:
            self._no_port_told = True
            self.events(
                "template_warning",
                f"swarm service {self.template.service!r} publishes no host-mode port for target port "
                f"{self.template.port}: its tasks cannot be balanced (--publish mode=host,target=PORT)",
                {"service": self.template.service},
            )
        return Replica(
            id=task["ID"][:12],
            group=self.group,
            address=format_address(addr, port) if addr and port else None,
            state=_STATES.get(status.get("State", ""), "provisioning"),
            created_at=_created(task.get("CreatedAt", "")),
            revision=self.revision,
            host=(node.get("Description") or {}).get("Hostname", "") or addr,
            ref=task["ID"],
        )

    def create(self, replica_id: str) -> Replica:
        raise TemplateError("Swarm places the tasks: tierscale sets the service's count (scale_to)")

    def delete(self, replica: Replica, grace: float) -> None:
        """A task is Swarm's: a failed one it replaces itself, and fewer come from a lower count."""

    def stats(self, replicas: list[Replica]) -> dict[str, ReplicaStats]:
        if not self._streams:
            return {}
        by_task = {r.ref: r for r in replicas if r.state == "running"}
        allot_milli = self._allotment_milli()
        out: dict[str, ReplicaStats] = {}
        for url, streams in self._streams.items():
            try:
                containers = self._node_containers(url)
            except _ERRORS:
                continue  # one node's engine not answering: its tasks have no sample this pass
            cids = {cid: tid for cid, tid in containers.items() if tid in by_task}
            streams.watch(set(cids))
            for cid, tid in cids.items():
                sample = streams.latest(cid)
                if sample is None:
                    continue
                out[by_task[tid].id] = container_stats(
                    self._cpu, cid, sample, allot_milli, by_task[tid].created_at
                )
        return out

    def _allotment_milli(self) -> int:
        """The service's CPU limit per task, or one core when it sets none."""
        spec = self._service().attrs["Spec"]
        nano = ((spec.get("TaskTemplate") or {}).get("Resources") or {}).get("Limits", {}).get("NanoCPUs")
        return round(nano / 1e6) if nano else 1000

    def _node_containers(self, url: str) -> dict[str, str]:
        """Container id → task id of this service's containers on one node's engine."""
        found = self._node(url).api.containers(filters={"label": f"{SERVICE_LABEL}={self.template.service}"})
        return {c["Id"]: (c.get("Labels") or {}).get(TASK_LABEL, "") for c in found}

    def _node(self, url: str) -> docker.DockerClient:
        with self._lock:
            if url not in self._nodes:
                self._nodes[url] = self._factory(url)
            return self._nodes[url]

    def _node_api(self, url: str) -> Callable[[], Any]:
        return lambda: self._node(url).api

    def close(self) -> None:
        for streams in self._streams.values():
            streams.close()
        with self._lock:
            for c in [self._client, *self._nodes.values()]:
                if c is not None:
                    with contextlib.suppress(Exception):
                        c.close()
            self._client = None
            self._nodes.clear()


def _client(url: str | None) -> docker.DockerClient:
    kwargs: dict[str, Any] = {"version": "auto", "timeout": API_TIMEOUT}
    return docker.DockerClient(base_url=url, **kwargs) if url else docker.from_env(**kwargs)
