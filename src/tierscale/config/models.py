"""The configuration schema (SPEC §1) as pydantic v2 models.

Field names are exactly the YAML keys, so `group.health.startup_grace` reads like the file. Every model
forbids unknown keys: a misspelt key silently falling back to a default is the worst config bug there is,
and it also keeps credentials out of group configs (OpenStack auth belongs in clouds.yaml).

Durations are stored as float seconds and sizes as int bytes, whatever spelling the file used.

Cross-field rules raise `PydanticCustomError("tierscale", ...)` with a `loc` in the context naming the
offending field relative to the model that raised it; the loader appends it to pydantic's location, so
the user sees `groups[0].max: must be >= min (1)` and not an error on the whole group.
"""

from __future__ import annotations

import math
import re
import shlex
import urllib.parse
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainSerializer,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from tierscale.addresses import AddressError, split_address
from tierscale.config.durations import parse_duration
from tierscale.config.fields import (
    ERROR_TYPE,
    CleanStr,
    Duration,
    NonEmptyStr,
    NonNegativeInt,
    PathStr,
    Port,
    PositiveDuration,
    PositiveFloat,
    PositiveInt,
    Size,
    StrictModel,
    env_name,
    no_control,
    no_nul,
    problem,
    to_duration,
)
from tierscale.config.ha import HaConfig
from tierscale.config.hosts import DockerUrl, PlacementConfig, SwarmTemplate, check_host_list, docker_url
from tierscale.config.rollout import Amount, parse_amount
from tierscale.policy.schedule import parse_cron

__all__ = [
    "ERROR_TYPE",
    "EXTERNAL_METRICS",
    "METRIC_TYPES",
    "TIERS",
    "ApiConfig",
    "BalancerConfig",
    "BehaviorConfig",
    "Config",
    "DockerGroup",
    "DockerTemplate",
    "ExternalMetric",
    "ForecastConfig",
    "Group",
    "GroupBase",
    "HealthConfig",
    "LibvirtGroup",
    "LibvirtTemplate",
    "MetricConfig",
    "OpenstackGroup",
    "OpenstackTemplate",
    "PlacementConfig",
    "ProcessGroup",
    "ProcessTemplate",
    "PrometheusMetric",
    "RabbitmqMetric",
    "RatePolicyConfig",
    "RedisMetric",
    "RolloutConfig",
    "ScaleDownRules",
    "ScaleUpRules",
    "ScalingRulesConfig",
    "ScheduleConfig",
    "SwarmGroup",
    "SwarmTemplate",
    "TargetMetric",
    "ThresholdConfig",
    "parse_listen",
]

TIERS: tuple[str, ...] = ("process", "docker", "libvirt", "openstack", "swarm")
METRIC_TYPES: tuple[str, ...] = (
    "cpu",
    "requests_per_replica",
    "latency_p95_ms",
    "prometheus",
    "redis",
    "rabbitmq",
)


_LISTEN_HOST = re.compile(r"[A-Za-z0-9.-]+|\*")


def parse_listen(value: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); ValueError with a user-facing message otherwise."""
    try:
        return split_address(value, host_ok=lambda host: _LISTEN_HOST.fullmatch(host) is not None)
    except AddressError as exc:
        if exc.part == "port":
            raise ValueError(f"port must be 1..65535 (got {value!r})") from None
        raise ValueError(f"expected host:port like 127.0.0.1:8080 (got {value!r})") from None


def _listen(value: Any) -> str:
    if not isinstance(value, str):
        raise problem(f"expected host:port like 127.0.0.1:8080 (got {value!r})")
    try:
        parse_listen(value)
    except ValueError as exc:
        raise problem(str(exc)) from None
    return value


Listen = Annotated[str, BeforeValidator(_listen)]


def _num_to_str(value: Any) -> Any:
    # bool is an int subclass, but `true` as an argument is a YAML surprise, not a number: leave it to fail.
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _string_list(value: Any) -> Any:
    """Lists of command arguments: numbers become strings (`--port, 8080` is what people write)."""
    if not isinstance(value, list):
        return value  # let pydantic say "expected a list"
    return [_num_to_str(v) for v in value]


def _string_map(value: Any) -> Any:
    """Environment values: numbers become strings, as docker compose does (`WORK_MS: 20`)."""
    if not isinstance(value, dict):
        return value
    return {k: _num_to_str(v) for k, v in value.items()}


Arg = Annotated[StrictStr, AfterValidator(no_nul)]
Command = Annotated[list[Arg], BeforeValidator(_string_list)]
Env = Annotated[dict[Annotated[StrictStr, AfterValidator(env_name)], Arg], BeforeValidator(_string_map)]

# Docker's reference grammar (distribution/reference): [domain[:port]/]path[:tag][@digest], or an image id.
_DOCKER_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOCKER_DOMAIN = rf"{_DOCKER_LABEL}(?:\.{_DOCKER_LABEL})*(?::[0-9]+)?"
_DOCKER_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOCKER_IMAGE = re.compile(
    rf"(?:{_DOCKER_DOMAIN}/)?{_DOCKER_PATH}(?:/{_DOCKER_PATH})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
    r"|sha256:[0-9a-f]{64}"
)


def _docker_image(value: str) -> str:
    if not _DOCKER_IMAGE.fullmatch(value):
        raise problem(f"not a Docker image reference like tierscale/demo:latest (got {value!r})")
    return value


_Model = StrictModel


# ---- api -------------------------------------------------------------------------------------------------


class ApiConfig(_Model):
    listen: Listen = "127.0.0.1:9900"
    token_env: Annotated[StrictStr, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = "TIERSCALE_API_TOKEN"


# ---- templates -----------------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ProcessTemplate(_Model):
    command: Annotated[Command, Field(min_length=1)]
    port_range: tuple[StrictInt, StrictInt] = (20000, 20999)
    cpus: PositiveFloat = 1.0  # the CPU allotment utilization is measured against
    env: Env = Field(default_factory=dict)
    cwd: PathStr | None = None

    @field_validator("port_range", mode="before")
    @classmethod
    def _pair(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise problem(f"expected [low, high] like [20000, 20999] (got {value!r})")
        return value

    @field_validator("port_range")
    @classmethod
    def _range(cls, value: tuple[int, int]) -> tuple[int, int]:
        lo, hi = value
        if not 1024 <= lo <= hi <= 65535:
            raise problem(f"must satisfy 1024 <= low <= high <= 65535 (got [{lo}, {hi}])")
        return value

    @field_validator("command")
    @classmethod
    def _placeholders(cls, value: list[str]) -> list[str]:
        # A typo like {prot} would reach the process verbatim and fail at runtime; catch it here.
        for i, arg in enumerate(value):
            for name in _PLACEHOLDER.findall(arg):
                if name not in ("port", "replica"):
                    raise problem(f"unknown placeholder {{{name}}}: use {{port}} or {{replica}}", i)
        return value


class DockerTemplate(_Model):
    image: Annotated[NonEmptyStr, AfterValidator(_docker_image)]
    port: Port = 8080
    env: Env = Field(default_factory=dict)
    cpus: PositiveFloat | None = None
    memory: Size | None = None
    command: Command | None = None  # a string is shell-split into a list
    host: StrictStr | None = None  # DOCKER_HOST-style; None: from the environment
    hosts: list[DockerUrl] | None = None  # several engines: the group is placed over all of them

    @field_validator("command", mode="before")
    @classmethod
    def _command(cls, value: Any) -> Any:
        # A string is split like a shell would, which is what the Docker SDK does with it anyway; storing
        # one shape (a list) saves every consumer an isinstance check.
        if isinstance(value, str):
            try:
                return shlex.split(value)
            except ValueError as exc:
                raise problem(f"cannot split command: {exc}") from None
        if value is None or isinstance(value, list):
            return value
        raise problem(f"expected a list of strings or a string (got {value!r})")

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        return None if value is None else docker_url(value)

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else check_host_list(value, "engine URL")

    @model_validator(mode="after")
    def _one_way(self) -> DockerTemplate:
        if self.hosts is not None and self.host is not None:
            raise problem("use host (one engine) or hosts (several), not both", "hosts")
        return self

    def engines(self) -> list[str | None]:
        """The engines the group is placed on; [None]: the one from the environment (DOCKER_HOST)."""
        return list(self.hosts) if self.hosts is not None else [self.host]

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: int | None) -> int | None:
        if value is not None and value < 6 * 1024**2:
            raise problem("must be at least 6m (Docker's minimum)")
        return value


def _no_uri_password(value: str) -> str:
    if re.match(r"^[A-Za-z0-9+.-]+://[^@/?]*:[^@/?]*@", value):
        raise problem(
            "must not carry a password: libvirt reads credentials from its auth.conf, SASL or SSH keys "
            "(write qemu+ssh://user@host/system)"
        )
    return value


MIN_VM_MEMORY = 128 * 1024**2  # smaller guests do not boot (measured; see shared/notes/vm-tier.md)


class LibvirtTemplate(_Model):
    uri: Annotated[CleanStr, AfterValidator(_no_uri_password)] = "qemu:///system"
    # Several hypervisors: the group is placed over all of them (`uri` is then not used).
    uris: list[Annotated[CleanStr, AfterValidator(_no_uri_password)]] | None = None
    base_image: PathStr | None = None
    kernel: PathStr | None = None
    initrd: PathStr | None = None
    cmdline: Annotated[StrictStr, AfterValidator(no_control)] | None = None
    memory: Size = 256 * 1024**2
    vcpus: PositiveInt = 1
    # The CPU allotment (cores) utilization is measured against, as in the process tier; None: vcpus.
    # Not a cap: capping a TCG guest slows its boot as much as its work.
    cpus: PositiveFloat | None = None
    port: Port = 80
    network: CleanStr = "user"
    domain_type: Literal["auto", "kvm", "qemu"] = "auto"
    base_format: Literal["qcow2", "raw"] = "qcow2"  # the golden image's format (the overlay is qcow2)
    # Per-VM overlays, on the libvirt host; None: /var/lib/libvirt/images/tierscale (qemu:///system),
    # ~/.local/share/libvirt/images/tierscale (qemu:///session).
    overlay_dir: PathStr | None = None

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: int) -> int:
        if value < MIN_VM_MEMORY:
            raise problem("must be at least 128MiB")
        return value

    @model_validator(mode="after")
    def _boot_source(self) -> LibvirtTemplate:
        if self.base_image is None and self.kernel is None:
            raise problem("needs base_image or kernel (with initrd) to boot from")
        for key in ("initrd", "cmdline"):
            if getattr(self, key) is not None and self.kernel is None:
                raise problem(f"{key} needs kernel", key)
        if self.uris is not None:
            check_host_list(self.uris, "libvirt URI")
            if "uri" in self.model_fields_set:
                raise problem("use uri (one hypervisor) or uris (several), not both", "uris")
        return self

    def hypervisors(self) -> list[str]:
        return list(self.uris) if self.uris is not None else [self.uri]


class OpenstackTemplate(_Model):
    cloud: NonEmptyStr | None = None  # None: OS_CLOUD from the environment
    image: NonEmptyStr
    flavor: NonEmptyStr
    network: NonEmptyStr | None = None
    networks: Literal["none"] | None = None  # "none": boot without a network (microversion 2.37)
    key_name: NonEmptyStr | None = None
    security_groups: list[NonEmptyStr] = Field(default_factory=lambda: ["default"])
    user_data: StrictStr | None = None
    port: Port = 5000
    boot_timeout: PositiveDuration = 300.0

    @model_validator(mode="after")
    def _one_network_choice(self) -> OpenstackTemplate:
        if self.network is not None and self.networks is not None:
            raise problem("give either network or networks: none, not both", "networks")
        return self


# ---- group parts ---------------------------------------------------------------------------------------


def _url_path(value: str) -> str:
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise problem(f"must not contain spaces or control characters; percent-encode them (got {value!r})")
    return value


# The tiers that can run a command in (or beside) a replica: a VM or a cloud server has no channel the
# controller could run one through without an agent in the guest.
EXEC_TIERS = ("process", "docker")


class HealthConfig(_Model):
    # Pasted into the probe's request line: a space or CR/LF there would split it.
    path: Annotated[StrictStr, Field(pattern=r"^/"), AfterValidator(_url_path)] = "/healthz"
    interval: PositiveDuration = 2.0
    timeout: PositiveDuration = 1.0
    healthy_after: PositiveInt = 1  # consecutive successes before a replica gets traffic
    unhealthy_after: PositiveInt = 3  # consecutive failures before it is taken out and replaced
    startup_grace: Duration = 60.0  # failures while starting do not count until this passes
    # http: GET `path` on the replica's address. console: ready once `console_marker` shows up in the
    # server's console log (for clouds whose instances the controller cannot reach, e.g. cloud-init's
    # "finished" line); after that it stays healthy while the tier reports it running. running: healthy
    # while the tier reports the process, container or domain running (workers with nothing to probe).
    # tcp: a connection to the replica's address is accepted. exec: `command` exits 0 — run inside the
    # container (docker exec), or beside the process with {port} and {replica} filled in (the
    # Kubernetes exec probe, Docker's HEALTHCHECK CMD); argv, never a shell string.
    type: Literal["http", "console", "running", "tcp", "exec"] = "http"
    console_marker: NonEmptyStr | None = None
    command: Annotated[list[NonEmptyStr], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _console(self) -> HealthConfig:
        if self.type == "console" and self.console_marker is None:
            raise problem("required when type is console (the line that means booted)", "console_marker")
        if self.type == "exec" and self.command is None:
            raise problem("required when type is exec (the argv that exits 0 when healthy)", "command")
        if self.type != "exec" and self.command is not None:
            raise problem(f"only used with type: exec (type is {self.type})", "command")
        return self


class TargetMetric(_Model):
    """A metric tierscale measures itself; `target` is what the HPA holds each replica's average at."""

    type: Literal["cpu", "requests_per_replica", "latency_p95_ms"]
    target: PositiveFloat


class FallbackReplicas(_Model):
    replicas: NonNegativeInt


def _metric_name(value: Any) -> Any:
    if isinstance(value, str) and not re.fullmatch(r"[a-z0-9_-]{1,40}", value):
        raise problem(f"must be 1-40 lowercase letters, digits, '_' or '-' (got {value!r})")
    return value


def _fallback(value: Any) -> Any:
    if value is None or value == "hold":
        return None
    if not isinstance(value, dict):
        raise problem(f"must be hold or {{replicas: N}} (got {value!r})")
    return value


def _no_password(value: Any) -> Any:
    if isinstance(value, str) and urllib.parse.urlsplit(value).password is not None:
        raise problem(
            "has a password in it: credentials never go in the config; put user:password in the "
            "environment variable that login_env names"
        )
    return value


LOGIN_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ExternalMetric(_Model):
    """A group-wide total read from outside (a query, a queue): the HPA holds total / replicas at
    `target_per_replica` (Kubernetes' External metric with an AverageValue target; KEDA's scalers)."""

    target_per_replica: PositiveFloat
    # The metric's label in status, events and tierscale_metric_up; default its type.
    name: Annotated[StrictStr, AfterValidator(_metric_name)] | None = None
    # With scale_to_zero: above this the group wakes from 0 (KEDA's activation); at or below it for
    # idle_after, it goes back to 0. Above zero replicas the HPA maths alone decide.
    activation: Annotated[StrictFloat | StrictInt, Field(ge=0)] | None = None
    # A failed read is never a 0: the last good value stands in while younger than this (default two
    # sync periods), then `fallback` applies: hold (keep the count, the HPA rule) or a fixed count.
    max_staleness: PositiveDuration | None = None
    fallback: Annotated[FallbackReplicas | None, BeforeValidator(_fallback)] = None  # None: hold
    # The environment variable holding `user:password` (or just a password, for Redis) for the url.
    login_env: Annotated[StrictStr, Field(pattern=LOGIN_ENV.pattern)] | None = None


class PrometheusMetric(ExternalMetric):
    type: Literal["prometheus"]
    url: Annotated[StrictStr, Field(pattern=r"^https?://.+"), AfterValidator(_no_password)]
    query: NonEmptyStr


class RedisMetric(ExternalMetric):
    """list: LLEN of `key`; stream: the consumer group's pending entries plus its lag."""

    type: Literal["redis"]
    url: Annotated[StrictStr, Field(pattern=r"^rediss?://.+"), AfterValidator(_no_password)]
    kind: Literal["list", "stream"] = "list"
    key: NonEmptyStr
    consumer_group: NonEmptyStr | None = None

    @model_validator(mode="after")
    def _group(self) -> RedisMetric:
        if self.kind == "stream" and self.consumer_group is None:
            raise problem("required when kind is stream (whose pending entries count)", "consumer_group")
        if self.kind == "list" and self.consumer_group is not None:
            raise problem("only used with kind: stream", "consumer_group")
        return self


class RabbitmqMetric(ExternalMetric):
    """A queue's depth from the management API: `messages` (ready + unacked) or `messages_ready`."""

    type: Literal["rabbitmq"]
    url: Annotated[StrictStr, Field(pattern=r"^https?://.+"), AfterValidator(_no_password)]  # management API
    vhost: NonEmptyStr = "/"
    queue: NonEmptyStr
    count: Literal["messages", "messages_ready"] = "messages"


EXTERNAL_METRICS: tuple[str, ...] = ("prometheus", "redis", "rabbitmq")

MetricConfig: TypeAlias = Annotated[
    TargetMetric | PrometheusMetric | RedisMetric | RabbitmqMetric, Field(discriminator="type")
]


class RatePolicyConfig(_Model):
    type: Literal["Pods", "Percent"]
    value: PositiveInt
    period: PositiveDuration


class ScalingRulesConfig(_Model):
    # Kubernetes caps the window at one hour; a longer one is almost certainly a unit mistake.
    stabilization_window: Annotated[Duration, Field(le=3600)]
    select_policy: Literal["Max", "Min", "Disabled"] = "Max"
    policies: Annotated[list[RatePolicyConfig], Field(min_length=1)]


# Each field defaults separately (as in Kubernetes), hence one class per direction.
class ScaleUpRules(ScalingRulesConfig):
    stabilization_window: Annotated[Duration, Field(le=3600)] = 0.0
    policies: Annotated[list[RatePolicyConfig], Field(min_length=1)] = Field(
        default_factory=lambda: [
            RatePolicyConfig(type="Pods", value=4, period=15.0),
            RatePolicyConfig(type="Percent", value=100, period=15.0),
        ]
    )


class ScaleDownRules(ScalingRulesConfig):
    stabilization_window: Annotated[Duration, Field(le=3600)] = 300.0
    policies: Annotated[list[RatePolicyConfig], Field(min_length=1)] = Field(
        default_factory=lambda: [RatePolicyConfig(type="Percent", value=100, period=15.0)]
    )


class BehaviorConfig(_Model):
    scale_up: ScaleUpRules = Field(default_factory=ScaleUpRules)
    scale_down: ScaleDownRules = Field(default_factory=ScaleDownRules)


class ThresholdConfig(_Model):
    metric: Literal["cpu", "requests_per_replica", "latency_p95_ms", "prometheus", "redis", "rabbitmq"] = (
        "cpu"
    )
    upper: StrictFloat = 70.0
    lower: Annotated[StrictFloat, Field(ge=0)] = 20.0
    step: PositiveInt = 1
    cooldown: Duration = 15.0

    @model_validator(mode="after")
    def _bounds(self) -> ThresholdConfig:
        if self.upper <= self.lower:
            raise problem(f"must be > lower ({self.lower:g})", "upper")
        return self


def _horizon(value: Any) -> Any:
    # `auto` (or leaving it out): the tier's typical provisioning delay plus one sync period.
    return None if value in (None, "auto") else to_duration(value)


def _damping(value: Any) -> Any:
    # `none`: an undamped linear trend, as far ahead as the horizon reaches.
    if value == "none":
        return math.inf
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise problem(f"{exc} or none") from None


class ForecastConfig(_Model):
    """How `policy: predictive` forecasts the load (see policy/predictive.py)."""

    method: Literal["holt", "seasonal_naive"] = "holt"
    horizon: Annotated[float | None, BeforeValidator(_horizon)] = None
    metric: Literal["cpu", "requests_per_replica", "prometheus", "redis", "rabbitmq"] | None = None
    alpha: Annotated[StrictFloat, Field(gt=0, le=1)] = 0.5
    beta: Annotated[StrictFloat, Field(ge=0, le=1)] = 0.2
    season: PositiveDuration = 86400.0
    bucket: PositiveDuration = 60.0
    damping: Annotated[float, BeforeValidator(_damping), Field(gt=0)] = 15.0
    confirm: Annotated[StrictInt, Field(ge=0, le=100)] = 6

    @field_validator("horizon")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise problem("must be > 0 (or auto)")
        return value

    @model_validator(mode="after")
    def _bucket(self) -> ForecastConfig:
        if self.bucket * 2 > self.season:
            raise problem(f"must be at most half the season ({self.season:g}s)", "bucket")
        return self


class ScheduleConfig(_Model):
    """From each time `cron` fires until `duration` later, the group's min and/or max are overridden."""

    name: NonEmptyStr | None = None
    cron: StrictStr
    duration: PositiveDuration
    min: NonNegativeInt | None = None
    max: PositiveInt | None = None
    timezone: NonEmptyStr = "UTC"

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        try:
            parse_cron(value)
        except ValueError as exc:
            raise problem(str(exc)) from None
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise problem(f"unknown time zone {value!r}: use an IANA name like UTC or Europe/Paris") from None
        return value

    @model_validator(mode="after")
    def _override(self) -> ScheduleConfig:
        if self.min is None and self.max is None:
            raise problem("needs min, max or both: the bounds to apply while it is active")
        if self.min is not None and self.max is not None and self.max < self.min:
            raise problem(f"must be >= min ({self.min})", "max")
        return self


# What each balancer can do; ip_hash is HAProxy's `balance source`.
BALANCER_ALGORITHMS: dict[str, tuple[str, ...]] = {
    "nginx": ("round_robin", "least_conn"),
    "haproxy": ("round_robin", "least_conn", "ip_hash", "random", "first"),
    "none": ("round_robin",),
}


class BalancerConfig(_Model):
    # nginx applies a new set by reloading; haproxy through its Runtime API, without one.
    type: Literal["nginx", "haproxy", "none"] = "nginx"
    listen: Listen = "127.0.0.1:8080"
    algorithm: StrictStr = "round_robin"

    @model_validator(mode="after")
    def _algorithm(self) -> BalancerConfig:
        known = BALANCER_ALGORITHMS[self.type]
        if self.algorithm not in known:
            others = [t for t, names in BALANCER_ALGORITHMS.items() if self.algorithm in names]
            hint = f"; {self.algorithm} is {others[0]}'s" if others else ""
            names = ", ".join(known)
            raise problem(f"{self.type} supports {names} (got {self.algorithm}{hint})", "algorithm")
        return self


def _amount(value: Any) -> Amount:
    if isinstance(value, Amount):
        return value
    try:
        return parse_amount(value)
    except ValueError as exc:
        raise problem(str(exc)) from None


AmountField = Annotated[Amount, BeforeValidator(_amount), PlainSerializer(str, when_used="json")]


class RolloutConfig(_Model):
    """How a template change replaces the replicas (SPEC §7); the defaults are a Deployment's and Nomad's."""

    max_surge: AmountField = Amount(25, percent=True)
    max_unavailable: AmountField = Amount(0)
    min_healthy_time: Duration = Field(default=10.0, ge=0)
    healthy_deadline: PositiveDuration = 300.0
    canary: NonNegativeInt = 0
    auto_rollback: StrictBool = True

    @model_validator(mode="after")
    def _progress(self) -> RolloutConfig:
        if self.max_surge.value == 0 and self.max_unavailable.value == 0:
            raise problem(
                "max_surge and max_unavailable cannot both be 0: no replica could ever be replaced",
                "max_surge",
            )
        if self.healthy_deadline <= self.min_healthy_time:
            raise problem(
                f"must be longer than min_healthy_time ({self.min_healthy_time:g}s)", "healthy_deadline"
            )
        return self


class ScaleToZeroConfig(_Model):
    """With `min: 0`: to zero after `idle_after` without a request; requests that arrive then are held."""

    idle_after: PositiveDuration = 300.0
    hold_timeout: PositiveDuration = 30.0
    max_pending: PositiveInt = 1000
    # Held requests one ready replica is given at a time while the group wakes (Knative's
    # containerConcurrency): a burst is spread over the replicas as they turn ready, not all on the first.
    replica_concurrency: PositiveInt = 10


# ---- groups --------------------------------------------------------------------------------------------


def _group_name(value: Any) -> Any:
    if isinstance(value, str) and not re.fullmatch(r"[a-z0-9-]{1,40}", value):
        raise problem(f"must be 1-40 lowercase letters, digits or dashes (got {value!r})")
    return value


class GroupBase(_Model):
    """Fields every tier shares. Concrete groups are `ProcessGroup`, `DockerGroup`, ... (see `Group`)."""

    name: Annotated[StrictStr, AfterValidator(_group_name)]
    tier: Literal["process", "docker", "libvirt", "openstack", "swarm"]
    # Kubernetes' minReplicas defaults to 1; max has no sensible default.
    min: NonNegativeInt = 1
    max: PositiveInt
    sync_period: PositiveDuration = 5.0
    health: HealthConfig = Field(default_factory=HealthConfig)
    policy: Literal["hpa", "threshold", "predictive"] = "hpa"
    metrics: Annotated[list[MetricConfig], Field(min_length=1)] = Field(
        default_factory=lambda: [TargetMetric(type="cpu", target=60.0)]
    )
    tolerance: Annotated[StrictFloat, Field(ge=0, le=1)] = 0.1
    cpu_initialization_period: Duration = 300.0
    initial_readiness_delay: Duration = 30.0
    behavior: BehaviorConfig = Field(default_factory=BehaviorConfig)
    threshold: ThresholdConfig = Field(default_factory=ThresholdConfig)
    forecast: ForecastConfig | None = None  # policy: predictive; None: the defaults
    schedule: list[ScheduleConfig] = Field(default_factory=list)
    scale_in_order: Literal["newest", "oldest", "least_loaded"] = "newest"
    drain_timeout: Duration = 10.0
    balancer: BalancerConfig = Field(default_factory=BalancerConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    scale_to_zero: ScaleToZeroConfig | None = None
    placement: PlacementConfig = Field(default_factory=PlacementConfig)
    # A host that cannot be listed for this long has its replicas replaced on the other hosts.
    host_timeout: PositiveDuration = 30.0

    def host_count(self) -> int:
        """How many hosts the group is placed over (tiers with several hosts say so)."""
        return 1

    @model_validator(mode="after")
    def _cross_fields(self) -> GroupBase:
        if self.max < self.min:
            raise problem(f"must be >= min ({self.min})", "max")
        per_host, hosts = self.placement.max_per_host, self.host_count()
        if per_host is not None and per_host * hosts < self.min:
            raise problem(
                f"{per_host} per host x {hosts} host(s) cannot hold min ({self.min})",
                "placement",
                "max_per_host",
            )
        if self.health.type == "exec" and self.tier not in EXEC_TIERS:
            raise problem(
                f"exec runs a command in the replica: tiers {', '.join(EXEC_TIERS)} only (tier is "
                f"{self.tier}; use http, tcp, running or console)",
                "health",
                "type",
            )
        if self.scale_to_zero is not None and self.min != 0:
            raise problem(f"needs min: 0 (min is {self.min})", "scale_to_zero")
        external = [m for m in self.metrics if isinstance(m, ExternalMetric)]
        if self.scale_to_zero is not None and self.balancer.type == "none" and not external:
            # At zero, either the balancer holds requests or a queue or query says there is work: with
            # neither, nothing could ever wake the group.
            raise problem(
                "needs a balancer or a prometheus, redis or rabbitmq metric to wake on "
                "(balancer.type is none)",
                "scale_to_zero",
            )
        if self.rollout.canary > self.max:
            raise problem(f"must be <= the group's max ({self.max})", "rollout", "canary")
        seen: dict[str, int] = {}
        names: dict[str, int] = {}
        for i, metric in enumerate(self.metrics):
            if isinstance(metric, ExternalMetric):
                self._check_external(metric, i, names)
            # Several queries or queues are fine; the same built-in metric twice is a copy-paste slip.
            if not isinstance(metric, ExternalMetric) and metric.type in seen:
                raise problem(
                    f"duplicate metric {metric.type} (also metrics[{seen[metric.type]}])",
                    "metrics",
                    i,
                    "type",
                )
            seen.setdefault(metric.type, i)
        if self.policy == "threshold" and self.threshold.metric not in seen:
            # The controller measures the group's metrics; the threshold rule acts on one of them (a
            # prometheus one needs its url and query from there anyway).
            listed = ", ".join(sorted(seen))
            raise problem(
                f"must be one of the group's metrics ({listed}) when policy is threshold",
                "threshold",
                "metric",
            )
        self._check_predictive(seen)
        self._check_schedule()
        return self

    def _check_external(self, metric: ExternalMetric, i: int, names: dict[str, int]) -> None:
        if metric.name is not None:
            if metric.name in names:
                raise problem(
                    f"duplicate metric name {metric.name!r} (also metrics[{names[metric.name]}])",
                    "metrics",
                    i,
                    "name",
                )
            names[metric.name] = i
        fb = metric.fallback
        if isinstance(fb, FallbackReplicas) and not self.min <= fb.replicas <= self.max:
            raise problem(
                f"must be within the group's [min, max] = [{self.min}, {self.max}] (got {fb.replicas})",
                "metrics",
                i,
                "fallback",
                "replicas",
            )

    def _check_predictive(self, seen: dict[str, int]) -> None:
        if self.forecast is not None and self.policy != "predictive":
            raise problem("only used with policy: predictive", "forecast")
        if self.policy != "predictive":
            return
        wanted = self.forecast.metric if self.forecast else None
        if wanted is not None and wanted not in seen:
            listed = ", ".join(sorted(seen))
            raise problem(f"must be one of the group's metrics ({listed})", "forecast", "metric")
        if not {"cpu", "requests_per_replica", *EXTERNAL_METRICS} & set(seen):
            # A latency is not a load: it does not add up over replicas, so it cannot be forecast.
            raise problem(
                "predictive needs a cpu, requests_per_replica, prometheus, redis or rabbitmq metric "
                "to forecast",
                "policy",
            )

    def _check_schedule(self) -> None:
        for i, entry in enumerate(self.schedule):
            if entry.min is not None and entry.max is None and entry.min > self.max:
                raise problem(
                    f"must be <= the group's max ({self.max}) unless this entry also sets max",
                    "schedule",
                    i,
                    "min",
                )
            if entry.max is not None and entry.min is None and entry.max < self.min:
                raise problem(
                    f"must be >= the group's min ({self.min}) unless this entry also sets min",
                    "schedule",
                    i,
                    "max",
                )


class ProcessGroup(GroupBase):
    tier: Literal["process"]
    template: ProcessTemplate


class DockerGroup(GroupBase):
    tier: Literal["docker"]
    template: DockerTemplate

    def host_count(self) -> int:
        return len(self.template.engines())


class WarmPoolConfig(_Model):
    """libvirt: VMs kept booted and paused outside the balancer; a scale-out resumes one."""

    size: Annotated[StrictInt, Field(ge=0, le=50)] = 0


class LibvirtGroup(GroupBase):
    tier: Literal["libvirt"]
    template: LibvirtTemplate
    warm_pool: WarmPoolConfig = Field(default_factory=WarmPoolConfig)

    def host_count(self) -> int:
        return len(self.template.hypervisors())

    @model_validator(mode="after")
    def _pool_on_one_host(self) -> LibvirtGroup:
        if self.warm_pool.size and self.host_count() > 1:
            # A pool is paused VMs on one hypervisor; which host's pool to resume is a placement
            # decision the pool does not make yet.
            raise problem("a warm pool needs a single uri (this group has several)", "warm_pool", "size")
        return self


class OpenstackGroup(GroupBase):
    tier: Literal["openstack"]
    template: OpenstackTemplate


class SwarmGroup(GroupBase):
    tier: Literal["swarm"]
    template: SwarmTemplate

    @model_validator(mode="after")
    def _swarm_metrics(self) -> SwarmGroup:
        for i, metric in enumerate(self.metrics):
            if metric.type == "cpu" and not self.template.nodes:
                raise problem(
                    "cpu on a swarm needs template.nodes (each node's engine, for its tasks' CPU); "
                    "or scale on requests_per_replica",
                    "metrics",
                    i,
                    "type",
                )
        if self.placement.max_per_host is not None:
            raise problem(
                "Swarm places the tasks: set the service's --replicas-max-per-node instead",
                "placement",
                "max_per_host",
            )
        return self


# The group's `tier` picks the template model, so template errors name the right keys for that tier.
Group: TypeAlias = Annotated[
    ProcessGroup | DockerGroup | LibvirtGroup | OpenstackGroup | SwarmGroup, Field(discriminator="tier")
]


def _expand_state_dir(value: Path) -> Path:
    no_control(str(value))
    return value.expanduser()


def _listens_clash(a: str, b: str) -> bool:
    """Same port and overlapping addresses (a wildcard address overlaps every address)."""
    (ha, pa), (hb, pb) = parse_listen(a), parse_listen(b)
    wildcard = {"0.0.0.0", "::", "*", ""}
    return pa == pb and (ha == hb or ha in wildcard or hb in wildcard)


class Config(_Model):
    api: ApiConfig = Field(default_factory=ApiConfig)
    state_dir: Annotated[Path, AfterValidator(_expand_state_dir)] = Path("~/.local/state/tierscale")
    groups: Annotated[list[Group], Field(min_length=1)]
    ha: HaConfig | None = None

    @model_validator(mode="after")
    def _unique(self) -> Config:
        names: dict[str, int] = {}
        for i, group in enumerate(self.groups):
            if group.name in names:
                raise problem(
                    f"duplicate group name {group.name!r} (also groups[{names[group.name]}])",
                    "groups",
                    i,
                    "name",
                )
            names[group.name] = i
        listens: list[tuple[int, str]] = []
        for i, group in enumerate(self.groups):
            if group.balancer.type == "none":
                continue
            listen = group.balancer.listen
            if _listens_clash(listen, self.api.listen):
                raise problem(f"{listen} is also the api listen address", "groups", i, "balancer", "listen")
            for j, other in listens:
                if _listens_clash(listen, other):
                    raise problem(
                        f"{listen} is already used by groups[{j}] ({self.groups[j].name})",
                        "groups",
                        i,
                        "balancer",
                        "listen",
                    )
            listens.append((i, listen))
        return self

    def group(self, name: str) -> ProcessGroup | DockerGroup | LibvirtGroup | OpenstackGroup | SwarmGroup:
        """The group called `name`; KeyError if there is none."""
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)
