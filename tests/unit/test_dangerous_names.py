"""Names and values that would be dangerous in a shell, a file path, XML or nginx.conf, at every tier.

Each field either refuses such a value when the config is loaded (exit 2, an error naming the field) or
carries it verbatim to where it is used, never through a shell and always escaped:

- refused: group names (they become file names, container and domain names, nginx.conf text), Docker
  image references, environment variable names with `=`, NUL in arguments and environment values,
  control characters in paths, URIs, libvirt network names and kernel command lines, spaces and control
  characters in the health-check path, listen addresses that are not host:port;
- passed through: environment values and command arguments (argv and the Docker API, no shell), the
  kernel command line, file paths and network names (XML-escaped), OpenStack names and user data (JSON).

What needs a Docker engine or libvirtd (the Docker API's view of a container, libvirt's own parse of the
domain XML) is in tests/e2e/test_dangerous_names_tiers.py.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from helpers.hostile import (
    HOSTILE,
    HOSTILE_LINE,
    G,
    T,
    get_field,
    hostile_config,
    hostile_libvirt_provider,
    libvirt_module,
)
from tierscale.balancer.nginx import NginxBalancer
from tierscale.config import ConfigError, load_config_text
from tierscale.providers import make_provider
from tierscale.providers.libvirt_xml import (
    Owner,
    parse_facts,
    parse_owner,
    pool_xml,
    render_domain,
    volume_xml,
)

# For the config-only checks, where nothing runs.
H = HOSTILE.format(m="/nonexistent")


# ---------------------------------------------------------------------------------------------- refused
# (tier, where, value, the field the error must name)
REFUSED: list[tuple[str, tuple[str | int, ...], Any, str]] = [
    *(
        ("process", (*G, "name"), v, "groups[0].name")
        for v in ["../evil", "a/b", "web;id", "web\nx", "$(id)", "we'b", 'we"b', "w<b>", "a&b", "a\0b", "Web"]
    ),
    *(
        ("docker", (*T, "image"), v, "groups[0].template.image")
        for v in ["demo;rm -rf /", "demo\nx", "$(id)", "../demo", "a\0b", "-demo", "demo && id", "d'e\"mo"]
    ),
    ("docker", (*T, "env", "A=B"), "1", "groups[0].template.env['A=B']"),
    ("process", (*T, "env", "EVIL"), "a\0b", "groups[0].template.env.EVIL"),
    ("process", (*T, "command", 1), "a\0b", "groups[0].template.command[1]"),
    ("docker", (*T, "command"), "sh -c 'a\0b'", "groups[0].template.command[2]"),
    ("process", (*T, "cwd"), "/tmp/a\nb", "groups[0].template.cwd"),
    ("libvirt", (*T, "kernel"), "/boot/vmlinuz\n<evil/>", "groups[0].template.kernel"),
    ("libvirt", (*T, "cmdline"), "console=ttyS0\n<evil/>", "groups[0].template.cmdline"),
    ("libvirt", (*T, "network"), "default\0", "groups[0].template.network"),
    ("libvirt", (*T, "uri"), "qemu:///system\nx", "groups[0].template.uri"),
    ("process", (*G, "health", "path"), "/healthz HTTP/1.1\r\nX-Evil: 1", "groups[0].health.path"),
    ("process", (*G, "health", "path"), "/a b", "groups[0].health.path"),
    ("process", (*G, "balancer", "listen"), "127.0.0.1:80; include /etc/passwd", "groups[0].balancer.listen"),
    ("process", ("api", "listen"), "127.0.0.1:9900\nx", "api.listen"),
    ("process", ("api", "token_env"), "X; id", "api.token_env"),
    ("process", ("state_dir",), "/tmp/x\ny", "state_dir"),
]


@pytest.mark.parametrize(("tier", "where", "value", "field"), REFUSED, ids=[repr(c[2])[:30] for c in REFUSED])
def test_refused_when_the_config_is_loaded_naming_the_field(
    tier: str, where: tuple[str | int, ...], value: Any, field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(hostile_config(tier, where, value), "danger.yaml")
    problems = info.value.problems
    assert field in [p.field for p in problems], [str(p) for p in problems]
    assert all("\n" not in str(p) and "\0" not in str(p) for p in problems)


@pytest.mark.parametrize(
    ("tier", "where", "value", "field"),
    [c for c in REFUSED if c[2] in ("../evil", "demo;rm -rf /") or c[3] == "groups[0].template.env.EVIL"],
    ids=["group name", "docker image", "env value NUL"],
)
def test_validate_exits_2_with_one_line_per_problem(
    tmp_path: Path, tier: str, where: tuple[str | int, ...], value: Any, field: str
) -> None:
    path = tmp_path / "danger.yaml"
    path.write_text(hostile_config(tier, where, value))
    r = subprocess.run(
        [sys.executable, "-m", "tierscale", "validate", str(path)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2, r
    assert "Traceback" not in r.stderr and f"{path}:" in r.stderr and field in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------- config keeps
KEPT: list[tuple[str, tuple[str | int, ...], str, Any]] = [
    ("process", (*T, "env", "EVIL"), H, H),
    ("process", (*T, "command", 1), H, H),
    ("docker", (*T, "env", "EVIL"), H, H),
    (
        "docker",
        (*T, "command"),
        "sh -c 'echo $(id); touch x' \"<a>&\"",
        ["sh", "-c", "echo $(id); touch x", "<a>&"],
    ),
    ("libvirt", (*T, "cmdline"), HOSTILE_LINE.format(m="/x"), HOSTILE_LINE.format(m="/x")),
    ("libvirt", (*T, "network"), "net'\"<&>", "net'\"<&>"),
    ("openstack", (*T, "image"), 'Ubuntu 22.04 "LTS" <x> & $(id)', 'Ubuntu 22.04 "LTS" <x> & $(id)'),
    ("openstack", (*T, "user_data"), H, H),
    ("process", (*G, "health", "path"), "/h?q=$(id)&x='<y>'", "/h?q=$(id)&x='<y>'"),
]


@pytest.mark.parametrize(
    ("tier", "where", "value", "expected"), KEPT, ids=[f"{c[0]}-{c[1][-1]}" for c in KEPT]
)
def test_kept_verbatim_by_the_config(
    tier: str, where: tuple[str | int, ...], value: str, expected: Any
) -> None:
    cfg = load_config_text(hostile_config(tier, where, value), "danger.yaml")
    assert get_field(cfg, where) == expected


# ---------------------------------------------------------------------------------------------- tiers
def test_process_tier_argv_and_environment_arrive_verbatim(tmp_path: Path, marker_dir: Path) -> None:
    hostile = HOSTILE.format(m=marker_dir)
    args = [hostile, "; touch " + str(marker_dir / "p4"), "$(touch " + str(marker_dir / "p5") + ")"]
    state_dir = tmp_path / "state"
    text = hostile_config("process", (*T, "command"), ["python3", "-c", "import time; time.sleep(60)", *args])
    doc = yaml.safe_load(text)
    doc["state_dir"] = str(state_dir)
    doc["groups"][0]["template"]["env"] = {"EVIL": hostile}
    cfg = load_config_text(yaml.safe_dump(doc), "danger.yaml")
    provider = make_provider(cfg.groups[0], cfg.state_dir)
    replica = provider.create("r-danger")
    try:
        proc = psutil.Process(int(replica.ref))
        assert proc.cmdline() == [sys.executable, "-c", "import time; time.sleep(60)", *args]
        assert proc.environ()["EVIL"] == hostile
        # Everything the provider wrote lives in the group's directory under the state dir.
        written = {p.parent for p in tmp_path.rglob("*") if p.is_file()}
        assert written == {state_dir / "groups" / "web" / "replicas"}, written
    finally:
        provider.delete(replica, grace=2)
    assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    assert list((state_dir / "groups" / "web" / "replicas").iterdir()) == []


def test_libvirt_domain_xml_carries_every_value_escaped(tmp_path: Path, marker_dir: Path) -> None:
    libvirt_module()  # the libvirt provider imports it
    for network, port in (("user", 23456), ("net'\"<evil/>&amp;", None)):
        cfg, provider = hostile_libvirt_provider(tmp_path, marker_dir, network)
        t = cfg.groups[0].template
        overlay = provider.store.volume_path("tierscale-web-r-1.qcow2")
        owner = Owner(group="web", id="r-1", created=1.5)
        xml = render_domain(provider.spec("tierscale-web-r-1", owner, "qemu", port, overlay))
        root = ET.fromstring(xml)
        assert [el.tag for el in root.iter() if "evil" in el.tag] == []  # nothing injected
        assert root.findtext("name") == "tierscale-web-r-1"
        assert root.findtext("os/kernel") == t.kernel
        assert root.findtext("os/cmdline").startswith(t.cmdline + " ")
        assert root.find("devices/disk/source").get("file") == overlay and "over'lay\"<&>" in overlay
        assert root.find("devices/disk/backingStore/source").get("file") == t.base_image
        facts = parse_facts(xml)
        assert facts.overlay == overlay and facts.network == (None if network == "user" else network)
        assert parse_owner(xml) == owner


def test_libvirt_owner_and_storage_xml_escape_quotes() -> None:
    owner = Owner(group="g'\"<evil/>&", id="r'\"&<>", created=2.0)
    assert parse_owner(owner.element(prefixed=False)) == owner
    assert parse_owner(f"<domain><metadata>{owner.element()}</metadata></domain>") == owner
    vol = ET.fromstring(volume_xml("v'\"<evil/>&", "/b'\"<&>.qcow2", "qcow2"))
    assert vol.findtext("name") == "v'\"<evil/>&" and vol.findtext("backingStore/path") == "/b'\"<&>.qcow2"
    pool = ET.fromstring(pool_xml("p'\"<evil/>&", "/d'\"<&>"))
    assert pool.findtext("name") == "p'\"<evil/>&" and pool.findtext("target/path") == "/d'\"<&>"
    assert [el.tag for x in (vol, pool) for el in x.iter() if "evil" in el.tag] == []


@pytest.mark.parametrize("name", ["a;b", "a b", "a\nb", "web\n", "a}b", "../x", "a'b", "$(id)", "a{b", ""])
def test_nginx_refuses_a_group_name_that_could_inject_directives(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="invalid group name"):
        NginxBalancer(name, "127.0.0.1:8080", "round_robin", tmp_path / "nginx")


@pytest.mark.parametrize(
    "backend",
    [
        "127.0.0.1:80; include /etc/passwd",
        "127.0.0.1:80 backup",
        "evil}:80",
        "a'b:80",
        "x\n:80",
        "127.0.0.1\n:80",
        "[::1]:80;",
    ],
)
def test_nginx_refuses_a_backend_address_that_could_inject_directives(tmp_path: Path, backend: str) -> None:
    lb = NginxBalancer("web", "127.0.0.1:8080", "round_robin", tmp_path / "nginx")
    with pytest.raises(ValueError, match="invalid address"):
        lb.render(["127.0.0.1:9000", backend])


def test_nginx_renders_the_longest_valid_group_name_in_place(tmp_path: Path) -> None:
    name = "a-" * 19 + "z9"  # 40 characters: the most a config allows
    cfg = load_config_text(hostile_config("process", (*G, "name"), name), "danger.yaml")
    lb = NginxBalancer(cfg.groups[0].name, "127.0.0.1:8080", "round_robin", tmp_path / "nginx")
    conf = lb.render(["127.0.0.1:9000"])
    assert f'"group":"{name}"' in conf
    for line in conf.splitlines():
        if name in line:  # only inside a comment or a quoted return body, never as a directive's argument
            assert line.lstrip().startswith(("#", "return 200 '")), line
