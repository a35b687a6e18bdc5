"""Health type exec: the config's rules, the process tier running the command beside a replica (real
subprocesses), and the prober's verdicts on the fake tier."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tierscale.config import ConfigError, load_config_text
from tierscale.config.settings import settings_for
from tierscale.controller.prober import ExecProber
from tierscale.providers.base import Capability, ProviderTimeout, Replica, TemplateError
from tierscale.providers.fake import FakeProvider
from tierscale.providers.process import ProcessData, ProcessProvider

HEAD = """\
groups:
  - name: w
    tier: {tier}
    min: 1
    max: 3
    template: {template}
    health: {health}
"""
PROCESS = '{command: ["x", "{port}"], port_range: [20000, 20010]}'


def _load(health: str, tier: str = "process", template: str = PROCESS) -> Any:
    return load_config_text(HEAD.format(tier=tier, template=template, health=health), "h.yaml").groups[0]


def test_exec_health_reaches_the_settings_as_an_argv() -> None:
    s = settings_for(_load('{type: exec, command: [pg_isready, -p, "{port}"], timeout: 3s}'))
    assert (s.health_type, s.health_command, s.health_timeout) == (
        "exec",
        ("pg_isready", "-p", "{port}"),
        3.0,
    )


BAD = [
    (
        "no command",
        "{type: exec}",
        "process",
        PROCESS,
        "groups[0].health.command",
        "required when type is exec",
    ),
    ("empty command", "{type: exec, command: []}", "process", PROCESS, "groups[0].health.command", ""),
    (
        "command without exec",
        "{type: tcp, command: ['true']}",
        "process",
        PROCESS,
        "groups[0].health.command",
        "only used with type: exec (type is tcp)",
    ),
    (
        "a VM has no exec channel",
        "{type: exec, command: ['true']}",
        "libvirt",
        "{kernel: /boot/vmlinuz, initrd: /boot/initrd, port: 8080}",
        "groups[0].health.type",
        "tiers process, docker only (tier is libvirt",
    ),
]


@pytest.mark.parametrize(
    ("health", "tier", "template", "field", "words"), [c[1:] for c in BAD], ids=[c[0] for c in BAD]
)
def test_bad_exec_health_is_one_line_naming_the_field(
    health: str, tier: str, template: str, field: str, words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _load(health, tier, template)
    assert "\n" not in info.value.first_line()
    p = info.value.problems[0]
    assert p.field == field and words in p.message, (p.field, p.message)


# ---- the process tier runs it beside the replica -------------------------------------------------------
def _process_replica(tmp_path: Path) -> tuple[ProcessProvider, Replica]:
    provider = ProcessProvider("w", tmp_path, ["x", "{port}"], env={"HEALTH_FLAG": "on"}, revision="r1")
    replica = Replica(
        "r-1", "w", "127.0.0.1:20005", "running", time.time(), tier_data=ProcessData(None, 20005)
    )
    return provider, replica


def test_the_process_tier_fills_in_port_and_replica_and_passes_the_replica_env(tmp_path: Path) -> None:
    provider, replica = _process_replica(tmp_path)
    assert Capability.EXEC in provider.capabilities
    script = "import os,sys; print(sys.argv[1:], os.environ['HEALTH_FLAG'], os.environ['TIERSCALE_REPLICA'])"
    code, out = provider.exec_check(replica, [sys.executable, "-c", script, "{port}", "{replica}"], 10)
    assert code == 0 and out.strip() == "['20005', 'r-1'] on r-1", out
    code, out = provider.exec_check(
        replica, [sys.executable, "-c", "import sys; print('sick'); sys.exit(3)"], 10
    )
    assert (code, out.strip()) == (3, "sick")


def test_a_missing_or_hung_command_is_a_failed_check_not_a_crash(tmp_path: Path) -> None:
    provider, replica = _process_replica(tmp_path)
    code, out = provider.exec_check(replica, ["/nonexistent/check"], 5)
    assert code == 127 and "No such file" in out
    started = time.monotonic()
    code, out = provider.exec_check(replica, [sys.executable, "-c", "import time; time.sleep(60)"], 0.3)
    assert code == 124 and "timed out after 0.3s" in out
    assert time.monotonic() - started < 30  # killed, not waited out


# ---- the prober ----------------------------------------------------------------------------------------
def _ctx(provider: Any, command: tuple[str, ...] = ("check",)) -> Any:
    s = SimpleNamespace(name="w", tier="fake", health_timeout=1.0, health_command=command)

    async def call(fn: Any, *args: Any, timeout: float | None = None) -> Any:
        return await asyncio.wait_for(asyncio.to_thread(fn, *args), timeout)

    return SimpleNamespace(s=s, provider=provider, call=call)


def test_the_prober_is_healthy_on_exit_0_and_says_why_otherwise() -> None:
    fake = FakeProvider(group="w", capabilities=[Capability.EXEC])
    a, b = fake.create("r-a"), fake.create("r-b")
    fake.exec_codes["r-b"] = 2
    prober = ExecProber(_ctx(fake, ("check", "--deep")))
    assert asyncio.run(prober(a)) == (True, None)
    assert asyncio.run(prober(b)) == (False, "health command exited 2: exit 2")
    assert fake.exec_calls == [("r-a", ("check", "--deep")), ("r-b", ("check", "--deep"))]


def test_a_tier_that_cannot_exec_is_refused_when_the_prober_is_made() -> None:
    with pytest.raises(TemplateError, match="tier fake cannot run a command"):
        ExecProber(_ctx(FakeProvider(group="w")))


def test_a_tier_that_hangs_is_an_unhealthy_answer() -> None:
    fake = FakeProvider(group="w", capabilities=[Capability.EXEC])
    r = fake.create("r-a")
    fake.fail_next("exec_check", error=ProviderTimeout)
    ok, why = asyncio.run(ExecProber(_ctx(fake))(r))
    assert not ok and "exec_check" in (why or ""), why
