"""Dangerous names and values at the tiers that need a daemon: a Docker container's environment as the
engine holds it, and libvirt's own parse of a hostile domain XML into the QEMU command line.

The rules, and everything that needs no daemon, are in tests/unit/test_dangerous_names.py.
"""

from __future__ import annotations

import json
import secrets
import shlex
import subprocess
from pathlib import Path
from typing import Any

import yaml

from helpers.ci import require
from helpers.hostile import (
    HOSTILE,
    G,
    hostile_config,
    hostile_libvirt_provider,
    libvirt_module,
)
from tierscale.config import load_config_text
from tierscale.providers import make_provider
from tierscale.providers.libvirt_xml import Owner, render_domain


def _docker() -> Any:
    import docker

    try:
        client = docker.from_env(version="auto", timeout=30)
        client.ping()
        return client
    except Exception:
        return None


def test_docker_tier_environment_arrives_verbatim(tmp_path: Path, marker_dir: Path) -> None:
    client = _docker()
    require(client is not None, "Docker engine (scripts/setup/docker.sh)")
    from tierscale.providers.docker import LABEL_GROUP
    from tierscale.providers.docker_image import DEMO_IMAGE, build_demo_image

    build_demo_image(client)
    hostile = HOSTILE.format(m=marker_dir)
    group = "danger-" + secrets.token_hex(3)
    text = hostile_config("docker", (*G, "name"), group)
    doc = yaml.safe_load(text)
    doc["groups"][0]["template"] = {"image": DEMO_IMAGE, "env": {"EVIL": hostile, "Q": "'\"`\\"}}
    cfg = load_config_text(yaml.safe_dump(doc), "danger.yaml")
    provider = make_provider(cfg.groups[0], tmp_path / "state")
    try:
        replica = provider.create("r-danger")
        out = subprocess.run(["docker", "inspect", replica.ref], capture_output=True, text=True, timeout=30)
        info = json.loads(out.stdout)[0]
        assert f"EVIL={hostile}" in info["Config"]["Env"] and "Q='\"`\\" in info["Config"]["Env"]
        assert info["Config"]["Labels"][LABEL_GROUP] == group
        provider.delete(replica, grace=1)
        assert (
            client.containers.list(all=True, ignore_removed=True, filters={"label": f"{LABEL_GROUP}={group}"})
            == []
        )
    finally:
        for c in client.containers.list(
            all=True, ignore_removed=True, filters={"label": f"{LABEL_GROUP}={group}"}
        ):
            c.remove(force=True)
        client.close()


def test_libvirt_parses_the_hostile_values_into_qemu_argv_unchanged(tmp_path: Path, marker_dir: Path) -> None:
    """libvirt's own parser (domain XML to the QEMU command line; nothing is defined or started)."""
    libvirt = libvirt_module()
    try:
        conn = libvirt.open("qemu:///system")
    except libvirt.libvirtError:
        conn = None
    require(conn is not None, "libvirtd (scripts/setup-host.sh)")
    cfg, provider = hostile_libvirt_provider(tmp_path, marker_dir, "user")
    t = cfg.groups[0].template
    overlay = provider.store.volume_path("tierscale-web-r-1.qcow2")
    xml = render_domain(provider.spec("tierscale-web-r-1", Owner("web", "r-1", 1.0), "qemu", 23456, overlay))
    try:
        argv = shlex.split(conn.domainXMLToNative("qemu-argv", xml, 0))
    finally:
        conn.close()
    assert argv[argv.index("-kernel") + 1] == t.kernel
    assert argv[argv.index("-append") + 1].startswith(t.cmdline + " ")
    files = [json.loads(a).get("filename") for a in argv if a.startswith("{") and '"filename"' in a]
    assert overlay in files and t.base_image in files, files
