"""Hostile config input: whatever the file holds, the loader answers with a Config or a ConfigError whose
every problem names a line — never another exception (a traceback for the user)."""

from __future__ import annotations

import copy
import shlex
import string
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.hostile import BASES, get_field, put_field
from tierscale.config import ConfigError, load_config_text

KEYS = [
    "state_dir",
    "api",
    "groups",
    "name",
    "tier",
    "min",
    "max",
    "sync_period",
    "template",
    "health",
    "metrics",
    "type",
    "target",
    "behavior",
    "scale_up",
    "scale_down",
    "policies",
    "threshold",
    "balancer",
    "listen",
    "command",
    "port_range",
    "image",
    "uri",
    "value",
    "period",
    "select_policy",
    "x-anchor",
    "env",
    "cwd",
    "kernel",
    "cmdline",
    "network",
    "path",
]
# Strings that would do harm if some tier pasted them into a shell, a file path, XML, an HTTP request
# line or nginx.conf unquoted.
DANGEROUS = [
    "../../etc/passwd",
    "a'b\"c",
    "$(touch /tmp/tierscale-pwned)",
    "`id`",
    "x; rm -rf /",
    "a & b | c",
    "a\nb",
    "a\r\nX-Evil: 1",
    "<evil/>&amp;]]>",
    "a\x00b",
    "A=B",
    "-rf",
    "\u202etxt.exe",
    "}; include /etc/passwd; {",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(string.printable, max_size=12),
    st.sampled_from(["5s", "-1s", "1h30m", "128m", "docker", "process", "{port}", *DANGEROUS]),
)
TREES = st.recursive(
    SCALARS,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4), st.dictionaries(st.sampled_from(KEYS), kids, max_size=5)
    ),
    max_leaves=30,
)


def _check(text: str) -> None:
    try:
        cfg = load_config_text(text, "fuzz.yaml")
    except ConfigError as exc:
        assert exc.problems
        for p in exc.problems:
            line = str(p)
            assert line.startswith("fuzz.yaml:") and p.line is not None and "\n" not in line
        return
    assert cfg.groups  # a config that loads has at least one valid group


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TREES)
def test_structured_garbage(tree: object) -> None:
    _check(yaml.safe_dump(tree, allow_unicode=True))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_raw_text(text: str) -> None:
    _check(text)


GOOD = {
    "state_dir": "/tmp/x",
    "groups": [
        {
            "name": "web",
            "tier": "process",
            "min": 1,
            "max": 3,
            "template": {"command": ["python3", "-m", "tierscale.workload"]},
        }
    ],
}


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(
        [
            "name",
            "tier",
            "min",
            "max",
            "sync_period",
            "template",
            "metrics",
            "behavior",
            "health",
            "balancer",
            "scale_in_order",
            "drain_timeout",
            "tolerance",
        ]
    ),
    SCALARS,
)
def test_one_field_mutated(field: str, value: object) -> None:
    doc = {**GOOD, "groups": [{**GOOD["groups"][0], field: value}]}
    _check(yaml.safe_dump(doc))


def test_validate_on_binary_garbage_is_exit_2(tmp_path) -> None:
    import subprocess
    import sys

    f = tmp_path / "garbage.yaml"
    f.write_bytes(bytes(range(256)) * 4)
    r = subprocess.run(
        [sys.executable, "-m", "tierscale", "validate", str(f)], capture_output=True, text=True
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and str(f) in r.stderr


# ---------------------------------------------------------------------------------------------- dangerous
DANGER_TEXT = st.one_of(
    st.sampled_from(DANGEROUS),
    st.text(alphabet="'\"`$();&|<>\\/.\n\r\t\x00 =-{}aZ0", min_size=1, max_size=16),
)
# (tier, where the string goes inside the group, what a loaded config must hold there)
FIELDS: list[tuple[str, tuple[str | int, ...], str]] = [
    ("process", ("name",), "verbatim"),
    ("process", ("template", "command", 1), "verbatim"),
    ("process", ("template", "env", "V"), "verbatim"),
    ("process", ("template", "cwd"), "path"),
    ("process", ("health", "path"), "verbatim"),
    ("docker", ("template", "image"), "verbatim"),
    ("docker", ("template", "env", "V"), "verbatim"),
    ("docker", ("template", "command"), "shell-split"),
    ("libvirt", ("template", "kernel"), "path"),
    ("libvirt", ("template", "cmdline"), "verbatim"),
    ("libvirt", ("template", "network"), "verbatim"),
    ("openstack", ("template", "image"), "verbatim"),
    ("openstack", ("template", "user_data"), "verbatim"),
    ("openstack", ("template", "security_groups", 0), "verbatim"),
]


def field_name(where: tuple[str | int, ...]) -> str:
    out = "groups[0]"
    for part in where:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(FIELDS), DANGER_TEXT)
def test_dangerous_strings_are_refused_naming_the_field_or_kept_verbatim(
    field: tuple[str, tuple[str | int, ...], str], value: str
) -> None:
    """Every string field either refuses a hostile value with an error naming that field, or holds it
    exactly as written (paths: as `pathlib` spells them; a docker command string: shell-split)."""
    tier, where, kind = field
    group: dict[str, Any] = {"name": "web", "tier": tier, "max": 2, **copy.deepcopy(BASES[tier])}
    put_field(group, where, value)
    text = yaml.safe_dump({"state_dir": "/tmp/x", "groups": [group]}, allow_unicode=True)
    try:
        cfg = load_config_text(text, "fuzz.yaml")
    except ConfigError as exc:
        # A docker command string is split first, so its error names the word: command[0].
        named = [p for p in exc.problems if (p.field or "").startswith(field_name(where))]
        assert named, (value, [str(p) for p in exc.problems])
        assert all("\n" not in str(p) for p in exc.problems)
        return
    got = get_field(cfg.groups[0], where)
    if kind == "verbatim":
        assert got == value
    elif kind == "path":
        assert got == str(Path(value).expanduser())
    else:
        assert got == shlex.split(value)
