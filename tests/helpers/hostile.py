"""Hostile values and where they go in a config: shared by the config fuzzer (tests/unit/test_config_fuzz.py)
and the dangerous-name tests (tests/unit/test_dangerous_names.py, tests/e2e/test_dangerous_names_tiers.py)."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import yaml

from helpers.ci import require
from tierscale.config import load_config_text

# A minimal valid group body per tier, for a hostile value to be put into.
BASES: dict[str, dict[str, object]] = {
    "process": {"template": {"command": ["python3", "-m", "tierscale.workload"]}},
    "docker": {"template": {"image": "tierscale/demo:latest"}},
    "libvirt": {"template": {"kernel": "/boot/vmlinuz", "initrd": "/boot/initrd"}},
    "openstack": {"template": {"image": "img", "flavor": "small"}},
}


def put_field(group: dict[str, Any], where: tuple[str | int, ...], value: str) -> None:
    node: Any = group
    for part, nxt in itertools.pairwise(where):
        if isinstance(node, dict) and part not in node:
            node[part] = [] if isinstance(nxt, int) else {}
        node = node[part]
    last = where[-1]
    if isinstance(last, int) and len(node) <= last:
        node.append(value)
    else:
        node[last] = value


def get_field(obj: Any, where: tuple[str | int, ...]) -> Any:
    for part in where:
        obj = obj[part] if isinstance(part, int) or isinstance(obj, dict) else getattr(obj, part)
    return obj


# ------------------------------------------------------------------------------------------ dangerous names
# Quotes, shell metacharacters, markup, a path escape and a newline; `{m}` is a directory that must stay
# empty (anything evaluating a `$(...)`, a backtick or a `;` would create a file there: the `marker_dir`
# fixture of tests/conftest.py).
HOSTILE = "a'b\"c <evil/>&amp; $(touch {m}/p1) `touch {m}/p2`; touch {m}/p3 | x && y ../../etc\nline2"
# The same without control characters: what a kernel command line or a path may hold.
HOSTILE_LINE = "a'b\"c <evil/>&amp; $(touch {m}/p1) `touch {m}/p2`; touch {m}/p3 ../../etc"

G = ("groups", 0)  # where a value goes: the group
T = (*G, "template")  # its template


def hostile_config(
    tier: str, where: tuple[str | int, ...], value: Any, state_dir: str = "/tmp/ts-danger"
) -> str:
    """YAML for one group of `tier` with `value` put at `where` (a path from the top of the file)."""
    group: dict[str, Any] = {"name": "web", "tier": tier, "max": 2, **copy.deepcopy(BASES[tier])}
    doc: dict[str, Any] = {"state_dir": state_dir, "groups": [group]}
    put_field(doc, where, value)
    return yaml.safe_dump(doc, allow_unicode=True)


def libvirt_module() -> Any:
    """libvirt-python, or the project's skip-outside-CI / fail-in-CI verdict when it is missing."""
    try:
        import libvirt
    except ImportError:
        libvirt = None
    require(libvirt is not None, "libvirt-python")
    return libvirt


def hostile_libvirt_provider(tmp_path: Path, marker_dir: Path, network: str) -> Any:
    """A libvirt group's config and provider whose kernel command line, file paths and network hold
    hostile values (nothing is defined or started)."""
    doc = yaml.safe_load(hostile_config("libvirt", (*T, "cmdline"), HOSTILE_LINE.format(m=marker_dir)))
    doc["groups"][0]["template"].update(
        kernel=str(tmp_path / "k'\"<evil/>&amp;"),
        base_image=str(tmp_path / "base'\"&<>.qcow2"),
        overlay_dir=str(tmp_path / "over'lay\"<&>"),
        network=network,
    )
    cfg = load_config_text(yaml.safe_dump(doc), "danger.yaml")
    from tierscale.providers import make_provider

    return cfg, make_provider(cfg.groups[0], tmp_path / "state")
