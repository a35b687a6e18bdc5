"""The command line: thin wrappers over the library. Exit codes: 0 ok, 1 runtime failure, 2 bad input."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from tierscale import __version__

DEFAULT_STATE_DIR = "~/.local/state/tierscale"


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"tierscale: {message}", err=True)
    sys.exit(code)


def load_or_exit(path: str) -> Any:
    from tierscale.config import ConfigError, load_config

    try:
        return load_config(Path(path))
    except ConfigError as exc:
        for p in exc.problems:
            click.echo(str(p), err=True)
        sys.exit(2)


def setup_logging(fmt: str, verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    if fmt == "json":
        from tierscale.logs import JsonFormatter

        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=level, handlers=[handler], force=True)
    else:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", force=True)
    # aiohttp and asyncio chatter is not what a user of tierscale needs to read.
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    logging.getLogger("aiohttp").setLevel(logging.WARNING)


def resolve_state_dir(config: str | None, state_dir: str | None) -> Path:
    if state_dir:
        return Path(state_dir).expanduser()
    if config:
        return Path(load_or_exit(config).state_dir)
    return Path(os.environ.get("TIERSCALE_STATE_DIR", DEFAULT_STATE_DIR)).expanduser()


def parse_since(value: str | None) -> float | None:
    if value is None:
        return None
    from tierscale.config.durations import parse_duration

    try:
        return time.time() - parse_duration(value)
    except ValueError as exc:
        fail(f"--since: {exc}", 2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tierscale")
def main() -> None:
    """tierscale: one autoscaler for processes, Docker containers, libvirt VMs and OpenStack instances."""


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Decide and record, never create, delete or reload.")
@click.option("--once", is_flag=True, help="Run one reconcile pass and exit.")
@click.option("--log-format", type=click.Choice(["human", "json"]), default="human", show_default=True)
@click.option("-v", "--verbose", is_flag=True)
def run(file: str, dry_run: bool, once: bool, log_format: str, verbose: bool) -> None:
    """Run the controller in the foreground."""
    cfg = load_or_exit(file)
    setup_logging(log_format, verbose)
    from tierscale.balancer.nginx import BalancerError
    from tierscale.controller.runner import ControllerError, run_controller
    from tierscale.providers import ProviderError

    try:
        sys.exit(run_controller(cfg, dry_run=dry_run, once=once))
    except (ControllerError, ProviderError, BalancerError) as exc:
        fail(str(exc))


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
def validate(file: str) -> None:
    """Check a config: prints ok, or one line per problem (exit 2)."""
    from tierscale.config import validate_file

    problems = validate_file(Path(file))
    if problems:
        for line in problems:
            click.echo(line, err=True)
        sys.exit(2)
    click.echo("ok")


@main.command()
@click.option(
    "-c", "--config", "config", type=click.Path(dir_okay=False), help="Read state_dir from this config."
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    help=f"Default: $TIERSCALE_STATE_DIR or {DEFAULT_STATE_DIR}",
)
@click.option("--json", "as_json", is_flag=True)
@click.option("--watch", is_flag=True, help="Refresh every second until Ctrl-C.")
def status(config: str | None, state_dir: str | None, as_json: bool, watch: bool) -> None:
    """Groups, desired vs current, replicas, and the last decision with its reason."""
    from tierscale.views import read_statuses, render_status_table

    sd = resolve_state_dir(config, state_dir)
    if watch:
        from tierscale.views import watch_status

        watch_status(sd)
        return
    statuses = read_statuses(sd)
    if as_json:
        click.echo(json.dumps(statuses, indent=2))
        return
    if not statuses:
        click.echo(f"no groups recorded under {sd}")
        return
    from rich.console import Console

    Console().print(render_status_table(statuses))


@main.command()
@click.option("-c", "--config", "config", type=click.Path(dir_okay=False))
@click.option("--state-dir", type=click.Path(file_okay=False))
@click.option("--group", "-g", help="Only this group.")
@click.option("--since", help="Only the last DURATION, e.g. 10m.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--limit", default=200, show_default=True, type=click.IntRange(1, 100000))
def events(
    config: str | None, state_dir: str | None, group: str | None, since: str | None, as_json: bool, limit: int
) -> None:
    """The decision and event history."""
    from tierscale.views import format_history, read_history

    sd = resolve_state_dir(config, state_dir)
    rows = read_history(sd, group, parse_since(since), limit)
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
    else:
        click.echo(format_history(rows))


def _needs_api(verb: str) -> NoReturn:
    fail(f"'{verb}' talks to the controller's HTTP API, which is not implemented yet (issue E)", 1)


@main.command()
@click.argument("group")
@click.argument("replicas", type=click.IntRange(0))
def scale(group: str, replicas: int) -> None:
    """Set a group's count by hand (pauses its policy until resume)."""
    _needs_api("scale")


@main.command()
@click.argument("group")
def pause(group: str) -> None:
    """Stop a group's policy from changing its count."""
    _needs_api("pause")


@main.command()
@click.argument("group")
def resume(group: str) -> None:
    """Hand a paused group back to its policy."""
    _needs_api("resume")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
def down(file: str) -> None:
    """Delete every replica the file's groups own and stop their balancers."""
    cfg = load_or_exit(file)
    from tierscale.controller.runner import ControllerError
    from tierscale.controller.runner import down as do_down
    from tierscale.providers import ProviderError

    try:
        for line in do_down(cfg):
            click.echo(line)
    except (ControllerError, ProviderError) as exc:
        fail(str(exc))


@main.command()
@click.option(
    "--tier", type=click.Choice(["process", "docker", "libvirt"]), default="process", show_default=True
)
@click.option("--state-dir", type=click.Path(file_okay=False), help="Default: a fresh temporary directory.")
@click.option("--quick", is_flag=True, help="A shorter load profile (used by tests).")
def demo(tier: str, state_dir: str | None, quick: bool) -> None:
    """A self-contained group under generated load, scaling out then back in, with a live view."""
    from tierscale.demo import TIER_TEMPLATES, run_demo

    if tier not in TIER_TEMPLATES:
        fail(f"--tier {tier}: this tier's demo is not implemented yet", 1)
    sys.exit(run_demo(state_dir=Path(state_dir) if state_dir else None, quick=quick, tier=tier))


@main.command()
@click.argument("url")
@click.option("--rps", type=float, required=True, help="Requests per second (open loop).")
@click.option("--duration", required=True, help="e.g. 30s, 2m")
@click.option("--path", default=None, help="Appended to URL, e.g. '/work?ms=20'.")
@click.option("--timeout", type=float, default=10.0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def load(url: str, rps: float, duration: str, path: str | None, timeout: float, as_json: bool) -> None:
    """Open-loop load generator: latency percentiles, status counts, errors."""
    from tierscale.loadgen import main_load

    sys.exit(main_load(url, rps, duration, path, as_json, timeout))


@main.command()
@click.option("--trace", required=True)
@click.option("--config", required=True)
@click.option("--out", required=True)
def simulate(trace: str, config: str, out: str) -> None:
    """Replay a request-rate trace through the policy engine (issue F)."""
    fail("simulate is not implemented yet (issue F)", 1)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def decide(file: str) -> None:
    """Evaluate the policy on a recorded snapshot (conformance format) and explain the decision."""
    from tierscale.policy.conformance import RUNNERS, explain_case, load_cases

    try:
        cases = load_cases(Path(file))
    except (ValueError, OSError) as exc:
        fail(f"{file}: {exc}", 2)
    out = []
    for i, case in enumerate(cases):
        kind = case.get("kind")
        if kind not in RUNNERS:
            fail(f"{file}: case [{i}].kind: must be one of: {', '.join(sorted(RUNNERS))} (got {kind!r})", 2)
        try:
            out.append(explain_case(case))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            fail(f"{file}: case [{i}] ({case.get('name', '?')}): missing or malformed input {exc}", 2)
    click.echo("\n".join(out))
