"""Config loading: valid files for every tier with defaults applied, and bad files reported as
`FILE:LINE: field.path: message` with the right line and path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tierscale.config import (
    Config,
    ConfigError,
    DockerGroup,
    LibvirtGroup,
    OpenstackGroup,
    Problem,
    ProcessGroup,
    PrometheusMetric,
    TargetMetric,
    hpa_params,
    load_config,
    load_config_text,
    parse_listen,
    threshold_params,
    validate_file,
)
from tierscale.policy.types import (
    Behavior,
    HpaParams,
    RatePolicy,
    ScalingRules,
    ThresholdParams,
    default_scale_down,
    default_scale_up,
)

FILE = "cfg.yaml"
MiB = 1024**2


def y(text: str) -> str:
    """Dedent and drop the first newline so the YAML's line 1 is the line after the opening quotes."""
    return textwrap.dedent(text).lstrip("\n")


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, FILE)
    return [str(p) for p in info.value.problems]


# ---- good configs --------------------------------------------------------------------------------------

FULL_DOCKER = y(
    """
    api:
      listen: 127.0.0.1:9900
      token_env: TIERSCALE_API_TOKEN
    state_dir: ~/.local/state/tierscale
    groups:
      - name: web
        tier: docker
        min: 1
        max: 10
        sync_period: 5s
        template: {image: tierscale/demo:latest, port: 8080, env: {WORK_MS: "20"}, cpus: 0.5, memory: 128m,
                   command: null, host: null}
        health:
          path: /healthz
          interval: 2s
          timeout: 1s
          healthy_after: 1
          unhealthy_after: 3
          startup_grace: 60s
        policy: hpa
        metrics:
          - {type: cpu, target: 60}
          - {type: requests_per_replica, target: 50}
          - {type: latency_p95_ms, target: 250}
          - {type: prometheus, url: http://127.0.0.1:9090, query: 'sum(rate(x[1m]))', target_per_replica: 100}
        tolerance: 0.1
        behavior:
          scale_up:
            stabilization_window: 0s
            select_policy: Max
            policies: [{type: Pods, value: 4, period: 15s}, {type: Percent, value: 100, period: 15s}]
          scale_down:
            stabilization_window: 300s
            select_policy: Max
            policies: [{type: Percent, value: 100, period: 15s}]
        threshold:
          metric: cpu
          upper: 70
          lower: 20
          step: 1
          cooldown: 15s
        scale_in_order: newest
        drain_timeout: 10s
        balancer:
          type: nginx
          listen: 127.0.0.1:8080
          algorithm: round_robin
    """
)


def test_spec_example_docker_full() -> None:
    cfg = load_config_text(FULL_DOCKER, FILE)
    assert cfg.api.listen == "127.0.0.1:9900"
    assert cfg.api.token_env == "TIERSCALE_API_TOKEN"
    assert cfg.state_dir == Path.home() / ".local/state/tierscale"
    (g,) = cfg.groups
    assert isinstance(g, DockerGroup)
    assert (g.name, g.tier, g.min, g.max, g.sync_period) == ("web", "docker", 1, 10, 5.0)
    t = g.template
    assert (t.image, t.port, t.env, t.cpus, t.memory, t.command, t.host) == (
        "tierscale/demo:latest",
        8080,
        {"WORK_MS": "20"},
        0.5,
        128 * MiB,
        None,
        None,
    )
    assert [m.type for m in g.metrics] == ["cpu", "requests_per_replica", "latency_p95_ms", "prometheus"]
    prom = g.metrics[3]
    assert isinstance(prom, PrometheusMetric)
    assert (prom.url, prom.query, prom.target_per_replica) == (
        "http://127.0.0.1:9090",
        "sum(rate(x[1m]))",
        100,
    )
    assert g.behavior.scale_down.stabilization_window == 300.0
    assert g.threshold.cooldown == 15.0
    assert g.drain_timeout == 10.0
    assert (g.balancer.type, g.balancer.listen, g.balancer.algorithm) == (
        "nginx",
        "127.0.0.1:8080",
        "round_robin",
    )
    # Writing the K8s defaults out gives the same policy parameters as leaving them unset.
    assert hpa_params(g) == HpaParams()
    assert threshold_params(g) == ThresholdParams()
    assert cfg.group("web") is g


MINIMAL = {
    "process": 'template: {command: ["python3", "-m", "tierscale.workload", "--port", "{port}"]}',
    "docker": "template: {image: tierscale/demo:latest}",
    "libvirt": "template: {kernel: /srv/vm/vmlinux, initrd: /srv/vm/initrd.img, cmdline: console=ttyS0}",
    "openstack": "template: {image: service-golden, flavor: m1.small}",
}


@pytest.mark.parametrize("tier", list(MINIMAL))
def test_minimal_group_gets_every_default(tier: str) -> None:
    cfg = load_config_text(
        f"groups:\n  - name: g1\n    tier: {tier}\n    max: 5\n    {MINIMAL[tier]}\n", FILE
    )
    assert cfg.api.listen == "127.0.0.1:9900"
    assert cfg.api.token_env == "TIERSCALE_API_TOKEN"
    assert cfg.state_dir == Path("~/.local/state/tierscale").expanduser()
    (g,) = cfg.groups
    assert g.tier == tier
    assert (g.min, g.max, g.sync_period, g.policy, g.tolerance) == (1, 5, 5.0, "hpa", 0.1)
    h = g.health
    assert (h.path, h.interval, h.timeout, h.healthy_after, h.unhealthy_after, h.startup_grace) == (
        "/healthz",
        2.0,
        1.0,
        1,
        3,
        60.0,
    )
    assert g.metrics == [TargetMetric(type="cpu", target=60)]
    assert (g.cpu_initialization_period, g.initial_readiness_delay) == (300.0, 30.0)
    assert (g.scale_in_order, g.drain_timeout) == ("newest", 10.0)
    assert (g.balancer.type, g.balancer.listen, g.balancer.algorithm) == (
        "nginx",
        "127.0.0.1:8080",
        "round_robin",
    )
    assert hpa_params(g) == HpaParams(
        tolerance=0.1,
        cpu_initialization_period=300.0,
        initial_readiness_delay=30.0,
        behavior=Behavior(scale_up=default_scale_up(), scale_down=default_scale_down()),
    )
    assert threshold_params(g) == ThresholdParams("cpu", 70.0, 20.0, 1, 15.0)


def test_template_defaults_per_tier() -> None:
    text = y(
        """
        groups:
          - {name: p, tier: process, max: 2, balancer: {listen: "127.0.0.1:8081"}, template: {command: [run]}}
          - {name: d, tier: docker, max: 2, balancer: {listen: "127.0.0.1:8082"}, template: {image: x}}
          - {name: l, tier: libvirt, max: 2, balancer: {listen: "127.0.0.1:8083"},
             template: {base_image: ~/vm/base.qcow2}}
          - {name: o, tier: openstack, max: 2, balancer: {type: none}, template: {image: i, flavor: f}}
        """
    )
    p, d, lv, o = load_config_text(text, FILE).groups
    assert isinstance(p, ProcessGroup)
    assert (p.template.command, p.template.port_range, p.template.cpus) == (["run"], (20000, 20999), 1.0)
    assert (p.template.env, p.template.cwd) == ({}, None)
    assert isinstance(d, DockerGroup)
    assert (d.template.port, d.template.env, d.template.cpus, d.template.memory) == (8080, {}, None, None)
    assert (d.template.command, d.template.host) == (None, None)
    assert isinstance(lv, LibvirtGroup)
    t = lv.template
    assert t.base_image == str(Path.home() / "vm/base.qcow2")
    assert (t.uri, t.memory, t.vcpus, t.port, t.network, t.domain_type) == (
        "qemu:///system",
        256 * MiB,
        1,
        80,
        "user",
        "auto",
    )
    assert isinstance(o, OpenstackGroup)
    ot = o.template
    assert (ot.cloud, ot.network, ot.networks, ot.key_name, ot.user_data) == (None, None, None, None, None)
    assert (ot.security_groups, ot.port, ot.boot_timeout) == (["default"], 5000, 300.0)


def test_values_are_converted() -> None:
    text = y(
        """
        state_dir: /tmp/ts-state
        groups:
          - name: api-2
            tier: process
            min: 0
            max: 3
            sync_period: 500ms
            template:
              command: [python3, -m, app, --port, "{port}", --id, "{replica}", --workers, 4]
              port_range: [30000, 30010]
              cpus: 0.5
              env: {WORK_MS: 20, NAME: x}
              cwd: /srv/app
            health: {startup_grace: 1m30s, interval: 1h}
            cpu_initialization_period: 2m
            initial_readiness_delay: 0
            drain_timeout: 1.5
            policy: threshold
            metrics: [{type: requests_per_replica, target: 20}]
            threshold: {metric: requests_per_replica, upper: 30, lower: 5, step: 2, cooldown: 1m}
            behavior:
              scale_up: {select_policy: Disabled}
              scale_down:
                stabilization_window: 1m
                policies: [{type: Pods, value: 1, period: 1m}]
        """
    )
    (g,) = load_config_text(text, FILE).groups
    assert isinstance(g, ProcessGroup)
    assert g.sync_period == 0.5
    assert g.template.command[-1] == "4"  # numbers in a command become strings
    assert g.template.env == {"WORK_MS": "20", "NAME": "x"}
    assert g.template.port_range == (30000, 30010)
    assert (g.health.startup_grace, g.health.interval, g.health.timeout) == (90.0, 3600.0, 1.0)
    assert (g.cpu_initialization_period, g.initial_readiness_delay, g.drain_timeout) == (120.0, 0.0, 1.5)
    hp = hpa_params(g)
    # Each behavior field defaults separately; `policies` replaces the default list as a whole.
    assert hp.behavior.scale_up == ScalingRules(0.0, "Disabled", default_scale_up().policies)
    assert hp.behavior.scale_down == ScalingRules(60.0, "Max", (RatePolicy("Pods", 1, 60.0),))
    assert threshold_params(g) == ThresholdParams("requests_per_replica", 30.0, 5.0, 2, 60.0)


def test_docker_command_string_is_split_and_host_accepted() -> None:
    text = (
        "groups:\n  - {name: d, tier: docker, max: 2, template: {image: x, command: \"sh -c 'echo hi'\", "
        "host: 'ssh://me@box', memory: 1g}}\n"
    )
    (g,) = load_config_text(text, FILE).groups
    assert isinstance(g, DockerGroup)
    assert g.template.command == ["sh", "-c", "echo hi"]
    assert g.template.memory == 1024**3


def test_openstack_template_values() -> None:
    text = y(
        """
        groups:
          - name: svc
            tier: openstack
            max: 4
            template: {cloud: mycloud, image: service-golden, flavor: m1.small, network: test,
                       key_name: k, security_groups: [default, web], user_data: "#!/bin/sh\\n",
                       port: 5000, boot_timeout: 5m}
        """
    )
    (g,) = load_config_text(text, FILE).groups
    assert isinstance(g, OpenstackGroup)
    assert (g.template.cloud, g.template.network, g.template.boot_timeout) == ("mycloud", "test", 300.0)
    assert g.template.security_groups == ["default", "web"]


def test_yaml_anchors_and_x_keys_share_settings() -> None:
    text = y(
        """
        x-common: &common
          tier: docker
          max: 4
          template: {image: x}
        groups:
          - <<: *common
            name: a
          - <<: *common
            name: b
            balancer: {listen: "127.0.0.1:8081"}
        """
    )
    a, b = load_config_text(text, FILE).groups
    assert (a.name, a.max, b.name, b.balancer.listen) == ("a", 4, "b", "127.0.0.1:8081")


def test_groups_may_share_a_listen_when_balancer_is_none() -> None:
    text = y(
        """
        groups:
          - {name: a, tier: docker, max: 2, template: {image: x}}
          - {name: b, tier: docker, max: 2, template: {image: x}, balancer: {type: none}}
        """
    )
    assert len(load_config_text(text, FILE).groups) == 2


def test_model_validate_from_python() -> None:
    cfg = Config.model_validate(
        {"groups": [{"name": "a", "tier": "process", "max": 1, "template": {"command": ["x"]}}]}
    )
    assert isinstance(cfg.groups[0], ProcessGroup)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:9900", ("::1", 9900)),
        ("localhost:1", ("localhost", 1)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ],
)
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


def test_load_config_and_validate_file(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(FULL_DOCKER)
    assert load_config(good).groups[0].name == "web"
    assert validate_file(good) == []
    bad = tmp_path / "bad.yaml"
    bad.write_text(FULL_DOCKER.replace("max: 10", "max: 0"))
    assert validate_file(bad) == [f"{bad}:9: groups[0].max: must be >= 1"]
    missing = tmp_path / "nope.yaml"
    (line,) = validate_file(missing)
    assert line.startswith(f"{missing}: cannot read")


def test_problem_rendering() -> None:
    assert (
        str(Problem("f.yaml", 7, "groups[0].max", "must be >= min (1)"))
        == "f.yaml:7: groups[0].max: must be >= min (1)"
    )
    assert str(Problem("f.yaml", 1, None, "the file is empty")) == "f.yaml:1: the file is empty"


def test_all_problems_are_reported_in_line_order() -> None:
    text = y(
        """
        api: {listen: nowhere}
        groups:
          - name: a
            tier: docker
            max: x
            bogus: 1
            template: {image: x}
        """
    )
    assert problems(text) == [
        f"{FILE}:1: api.listen: expected host:port like 127.0.0.1:8080 (got 'nowhere')",
        f"{FILE}:5: groups[0].max: expected an integer (got 'x')",
        f"{FILE}:6: groups[0].bogus: unknown key",
    ]


# ---- bad configs ---------------------------------------------------------------------------------------

GROUP = "groups:\n  - name: web\n    tier: docker\n    max: 3\n    template: {image: x}\n"
"""A valid group on lines 2-5; cases append keys to it (their lines start at 6)."""
# Group heads whose `template:` mapping is on line 5, so template keys start at line 6.
PROC = "groups:\n  - name: p\n    tier: process\n    max: 2\n    template:\n"
VM = "groups:\n  - name: vm\n    tier: libvirt\n    max: 2\n    template:\n"
OS = "groups:\n  - name: os\n    tier: openstack\n    max: 2\n    template:\n"
FLOW_PROC = "groups:\n  - {name: p, tier: process, max: 2, template: {command: [x], "

# (id, yaml, line, field or None, start of the message)
BAD: list[tuple[str, str, int, str | None, str]] = [
    ("empty file", "", 1, None, "the file is empty"),
    ("only comments", "# nothing here\n\n", 1, None, "the file is empty"),
    (
        "yaml syntax error",
        "groups:\n  - name: web\n    tier: [docker\n",
        3,
        None,
        "invalid YAML: expected ','",
    ),
    ("yaml bad indentation", "groups:\n  - name: web\n   tier: docker\n", 3, None, "invalid YAML:"),
    ("yaml tab", "groups:\n\t- name: web\n", 2, None, "invalid YAML: found character '\\t'"),
    ("two documents", GROUP + "---\nmore: 1\n", 6, None, "invalid YAML: only one document is allowed"),
    ("non-mapping root", "- name: web\n", 1, None, "the top level must be a mapping"),
    ("scalar root", "groups\n", 1, None, "the top level must be a mapping"),
    ("duplicate mapping key", GROUP + "    max: 4\n", 6, "groups[0].max", "duplicate key (first on line 4)"),
    (
        "duplicate top-level key",
        "state_dir: /a\n" + GROUP + "state_dir: /b\n",
        7,
        "state_dir",
        "duplicate key (first on line 1)",
    ),
    ("missing groups", "api: {listen: '127.0.0.1:9900'}\n", 1, "groups", "required"),
    ("empty groups", "state_dir: /tmp/x\ngroups: []\n", 2, "groups", "must not be empty"),
    ("groups not a list", "groups: {name: web}\n", 1, "groups", "expected a list"),
    ("group not a mapping", "groups:\n  - web\n", 2, "groups[0]", "expected a mapping (got 'web')"),
    ("unknown top-level key", "listen: 1.2.3.4:5\n" + GROUP, 1, "listen", "unknown key"),
    ("unknown group key", GROUP + "    replicas: 3\n", 6, "groups[0].replicas", "unknown key"),
    (
        "unknown template key",
        GROUP.replace("{image: x}", "\n      image: x\n      ports: [80]"),
        7,
        "groups[0].template.ports",
        "unknown key",
    ),
    (
        "credentials in template",
        OS + "      image: i\n      flavor: f\n      password: hunter2\n",
        8,
        "groups[0].template.password",
        "unknown key; credentials never go in the config",
    ),
    (
        "unknown tier",
        GROUP.replace("tier: docker", "tier: podman"),
        3,
        "groups[0].tier",
        "must be one of: process, docker, libvirt, openstack",
    ),
    (
        "missing tier",
        "groups:\n  - name: web\n    max: 3\n",
        2,
        "groups[0].tier",
        "required, one of: process, docker, libvirt, openstack",
    ),
    (
        "missing max",
        "groups:\n  - name: web\n    tier: docker\n    template: {image: x}\n",
        2,
        "groups[0].max",
        "required",
    ),
    (
        "missing template",
        "groups:\n  - name: web\n    tier: docker\n    max: 3\n",
        2,
        "groups[0].template",
        "required",
    ),
    (
        "docker template without image",
        GROUP.replace("{image: x}", "\n      port: 8080"),
        5,
        "groups[0].template.image",
        "required",
    ),
    (
        "template for another tier",
        GROUP.replace("{image: x}", "{image: x, kernel: /boot/vmlinux}"),
        5,
        "groups[0].template.kernel",
        "unknown key",
    ),
    (
        "min > max",
        GROUP.replace("    max: 3\n", "    min: 5\n    max: 3\n"),
        5,
        "groups[0].max",
        "must be >= min (5)",
    ),
    ("max zero", GROUP.replace("max: 3", "max: 0"), 4, "groups[0].max", "must be >= 1"),
    ("negative min", GROUP + "    min: -1\n", 6, "groups[0].min", "must be >= 0"),
    (
        "max wrong type",
        GROUP.replace("max: 3", "max: three"),
        4,
        "groups[0].max",
        "expected an integer (got 'three')",
    ),
    ("min bool", GROUP + "    min: yes\n", 6, "groups[0].min", "expected an integer (got true)"),
    (
        "bad name",
        GROUP.replace("name: web", "name: Web_1"),
        2,
        "groups[0].name",
        "must be 1-40 lowercase letters, digits or dashes",
    ),
    (
        "name too long",
        GROUP.replace("name: web", "name: " + "a" * 41),
        2,
        "groups[0].name",
        "must be 1-40 lowercase letters",
    ),
    (
        "duplicate group names",
        GROUP + "    balancer: {type: none}\n" + GROUP.replace("groups:\n", ""),
        7,
        "groups[1].name",
        "duplicate group name 'web' (also groups[0])",
    ),
    (
        "two groups on one balancer listen",
        GROUP + GROUP.replace("groups:\n", "").replace("web", "api"),
        6,
        "groups[1].balancer.listen",
        "127.0.0.1:8080 is already used by groups[0] (web)",
    ),
    (
        "balancer on the api address",
        GROUP + "    balancer: {listen: '127.0.0.1:9900'}\n",
        6,
        "groups[0].balancer.listen",
        "127.0.0.1:9900 is also the api listen address",
    ),
    (
        "negative duration",
        GROUP + "    sync_period: -5s\n",
        6,
        "groups[0].sync_period",
        "duration must not be negative",
    ),
    ("zero sync_period", GROUP + "    sync_period: 0s\n", 6, "groups[0].sync_period", "must be > 0"),
    (
        "duration garbage",
        GROUP + "    health:\n      interval: soon\n",
        7,
        "groups[0].health.interval",
        "expected a duration like 500ms, 15s, 2m (got 'soon')",
    ),
    (
        "size garbage",
        GROUP.replace("{image: x}", "{image: x, memory: lots}"),
        5,
        "groups[0].template.memory",
        "expected a size like 512k, 128m, 1g, 256MiB (got 'lots')",
    ),
    (
        "unknown metric type",
        GROUP + "    metrics:\n      - {type: memory, target: 50}\n",
        7,
        "groups[0].metrics[0].type",
        "must be one of: cpu, requests_per_replica, latency_p95_ms, prometheus, redis, rabbitmq",
    ),
    (
        "metric target zero",
        GROUP + "    metrics:\n      - type: cpu\n        target: 0\n",
        8,
        "groups[0].metrics[0].target",
        "must be > 0",
    ),
    (
        "prometheus metric without query",
        GROUP + "    metrics:\n      - type: prometheus\n"
        "        url: http://127.0.0.1:9090\n        target_per_replica: 10\n",
        7,
        "groups[0].metrics[0].query",
        "required",
    ),
    (
        "target on a prometheus metric",
        GROUP + "    metrics:\n      - type: prometheus\n        url: http://p:9090\n"
        "        query: up\n        target: 10\n",
        10,
        "groups[0].metrics[0].target",
        "unknown key",
    ),
    (
        "duplicate metric",
        GROUP + "    metrics: [{type: cpu, target: 1}, {type: cpu, target: 2}]\n",
        6,
        "groups[0].metrics[1].type",
        "duplicate metric cpu (also metrics[0])",
    ),
    (
        "select_policy bogus",
        GROUP + "    behavior:\n      scale_down:\n        select_policy: Sometimes\n",
        8,
        "groups[0].behavior.scale_down.select_policy",
        "must be one of: Max, Min, Disabled",
    ),
    (
        "rate policy value zero",
        GROUP + "    behavior:\n      scale_up:\n        policies:\n"
        "          - {type: Pods, value: 0, period: 15s}\n",
        9,
        "groups[0].behavior.scale_up.policies[0].value",
        "must be >= 1",
    ),
    (
        "rate policy bad type",
        GROUP + "    behavior:\n      scale_up:\n        policies:\n"
        "          - type: Replicas\n            value: 1\n            period: 15s\n",
        9,
        "groups[0].behavior.scale_up.policies[0].type",
        "must be one of: Pods, Percent",
    ),
    (
        "threshold upper < lower",
        GROUP + "    threshold:\n      upper: 10\n      lower: 20\n",
        7,
        "groups[0].threshold.upper",
        "must be > lower (20)",
    ),
    (
        "threshold step zero",
        GROUP + "    threshold: {step: 0}\n",
        6,
        "groups[0].threshold.step",
        "must be >= 1",
    ),
    (
        "threshold metric unknown",
        GROUP + "    threshold:\n      metric: memory\n",
        7,
        "groups[0].threshold.metric",
        "must be one of: cpu, requests_per_replica, latency_p95_ms, prometheus, redis, rabbitmq",
    ),
    (
        "threshold metric not measured",
        GROUP + "    policy: threshold\n    threshold:\n      metric: latency_p95_ms\n",
        8,
        "groups[0].threshold.metric",
        "must be one of the group's metrics (cpu)",
    ),
    ("tolerance above 1", GROUP + "    tolerance: 1.5\n", 6, "groups[0].tolerance", "must be <= 1"),
    (
        "bad policy",
        GROUP + "    policy: magic\n",
        6,
        "groups[0].policy",
        "must be one of: hpa, threshold, predictive",
    ),
    (
        "bad scale_in_order",
        GROUP + "    scale_in_order: random\n",
        6,
        "groups[0].scale_in_order",
        "must be one of: newest, oldest, least_loaded",
    ),
    (
        "bad api listen",
        "api:\n  listen: localhost\n" + GROUP,
        2,
        "api.listen",
        "expected host:port like 127.0.0.1:8080",
    ),
    (
        "listen port out of range",
        GROUP + "    balancer:\n      listen: 127.0.0.1:70000\n",
        7,
        "groups[0].balancer.listen",
        "port must be 1..65535",
    ),
    (
        "listen not a string",
        GROUP + "    balancer: {listen: 8080}\n",
        6,
        "groups[0].balancer.listen",
        "expected host:port",
    ),
    (
        "bad balancer algorithm",
        GROUP + "    balancer: {algorithm: random}\n",
        6,
        "groups[0].balancer.algorithm",
        "nginx supports round_robin, least_conn (got random; random is haproxy's)",
    ),
    (
        "bad token_env",
        "api: {token_env: my-token}\n" + GROUP,
        1,
        "api.token_env",
        "must be an environment variable name",
    ),
    (
        "health path without slash",
        GROUP + "    health: {path: healthz}\n",
        6,
        "groups[0].health.path",
        "must start with /",
    ),
    (
        "port_range reversed",
        PROC + "      command: [x]\n      port_range: [21000, 20000]\n",
        7,
        "groups[0].template.port_range",
        "must satisfy 1024 <= low <= high <= 65535",
    ),
    (
        "port_range privileged",
        FLOW_PROC + "port_range: [80, 90]}}\n",
        2,
        "groups[0].template.port_range",
        "must satisfy 1024 <= low",
    ),
    (
        "port_range not a pair",
        FLOW_PROC + "port_range: 20000}}\n",
        2,
        "groups[0].template.port_range",
        "expected [low, high]",
    ),
    (
        "process empty command",
        PROC + "      command: []\n",
        6,
        "groups[0].template.command",
        "must not be empty",
    ),
    (
        "process command placeholder typo",
        PROC + "      command:\n        - app\n        - --port={prot}\n",
        8,
        "groups[0].template.command[1]",
        "unknown placeholder {prot}",
    ),
    ("process cpus zero", FLOW_PROC + "cpus: 0}}\n", 2, "groups[0].template.cpus", "must be > 0"),
    (
        "docker env value a list",
        GROUP.replace("{image: x}", "\n      image: x\n      env:\n        A: [1]"),
        8,
        "groups[0].template.env.A",
        "expected a string (got a list)",
    ),
    (
        "docker bad host",
        GROUP.replace("{image: x}", "{image: x, host: 'http://h:2375'}"),
        5,
        "groups[0].template.host",
        "expected a DOCKER_HOST URL",
    ),
    (
        "docker port out of range",
        GROUP.replace("{image: x}", "{image: x, port: 0}"),
        5,
        "groups[0].template.port",
        "must be >= 1",
    ),
    (
        "libvirt without boot source",
        VM + "      vcpus: 2\n",
        5,
        "groups[0].template",
        "needs base_image or kernel",
    ),
    (
        "libvirt memory too small",
        VM + "      kernel: /k\n      memory: 64MiB\n",
        7,
        "groups[0].template.memory",
        "must be at least 128MiB",
    ),
    (
        "libvirt initrd without kernel",
        VM + "      base_image: /b.qcow2\n      initrd: /i\n",
        7,
        "groups[0].template.initrd",
        "initrd needs kernel",
    ),
    (
        "libvirt bad domain_type",
        VM + "      kernel: /k\n      domain_type: xen\n",
        7,
        "groups[0].template.domain_type",
        "must be one of: auto, kvm, qemu",
    ),
    ("openstack without flavor", OS + "      image: i\n", 5, "groups[0].template.flavor", "required"),
    (
        "openstack networks bogus",
        OS + "      image: i\n      flavor: f\n      networks: auto\n",
        8,
        "groups[0].template.networks",
        "must be one of: none",
    ),
    ("state_dir wrong type", "state_dir: [a]\n" + GROUP, 1, "state_dir", "expected a path"),
    ("unknown YAML tag", "groups: !groups []\n", 1, None, "invalid YAML: could not determine a constructor"),
    ("ha without endpoints", GROUP + "ha: {lease_ttl: 10s}\n", 6, "ha.endpoints", "required"),
    ("ha empty endpoints", GROUP + "ha: {endpoints: []}\n", 6, "ha.endpoints", "must not be empty"),
    (
        "ha endpoint bare",
        GROUP + "ha: {endpoints: [127.0.0.1:2379]}\n",
        6,
        "ha.endpoints[0]",
        "expected an etcd",
    ),
    (
        "ha ttl too short",
        GROUP + "ha: {endpoints: ['http://e:2379'], lease_ttl: 1.5s}\n",
        6,
        "ha.lease_ttl",
        "must be at least 2s",
    ),
    (
        "ha name with slash",
        GROUP + "ha: {endpoints: ['http://e:2379'], name: a/b}\n",
        6,
        "ha.name",
        "a controller name",
    ),
    (
        "ha prefix relative",
        GROUP + "ha: {endpoints: ['http://e:2379'], prefix: x}\n",
        6,
        "ha.prefix",
        "an etcd key prefix",
    ),
    (
        "ha backend",
        GROUP + "ha: {endpoints: ['http://e:2379'], backend: consul}\n",
        6,
        "ha.backend",
        "must be one of",
    ),
]


def test_ha_defaults() -> None:
    import socket

    cfg = load_config_text(GROUP + "ha: {endpoints: ['https://[::1]:2379/']}\n", FILE)
    assert cfg.ha is not None
    assert (cfg.ha.endpoints, cfg.ha.lease_ttl, cfg.ha.name, cfg.ha.prefix, cfg.ha.advertise) == (
        ["https://[::1]:2379"],
        10.0,
        socket.gethostname(),
        "/tierscale/",
        None,
    )
    assert load_config_text(GROUP, FILE).ha is None


@pytest.mark.parametrize(("text", "line", "field", "message"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_config(text: str, line: int, field: str | None, message: str) -> None:
    rendered = problems(text)
    prefix = f"{FILE}:{line}: {field}: {message}" if field else f"{FILE}:{line}: {message}"
    assert any(r.startswith(prefix) for r in rendered), f"wanted {prefix!r}, got {rendered!r}"


def test_problem_fields() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(GROUP.replace("    max: 3\n", "    min: 2\n    max: 1\n"), "x.yaml")
    assert info.value.problems == [Problem("x.yaml", 5, "groups[0].max", "must be >= min (2)")]
    assert str(info.value) == "x.yaml:5: groups[0].max: must be >= min (2)"
