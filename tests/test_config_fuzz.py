"""Hostile config input: whatever the file holds, the loader answers with a Config or a ConfigError whose
every problem names a line — never another exception (a traceback for the user)."""

from __future__ import annotations

import string

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(string.printable, max_size=12),
    st.sampled_from(
        ["5s", "-1s", "1h30m", "128m", "docker", "process", "../../etc", "$(rm -rf /)", "a\nb", "{port}"]
    ),
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
