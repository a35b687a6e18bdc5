"""The command line: thin wrappers over the library. Exit codes: 0 ok, 1 runtime failure, 2 bad input."""

from __future__ import annotations

import json
import logging
import os
import sys
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
    from tierscale.views import parse_since as parse

    try:
        return parse(value)
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
    from tierscale.balancer.base import BalancerError
    from tierscale.controller.locks import ControllerError
    from tierscale.providers import MissingExtra, ProviderError
    from tierscale.service import run_controller

    try:
        sys.exit(run_controller(cfg, dry_run=dry_run, once=once, path=file))
    except MissingExtra as exc:  # this install cannot run the file: as bad an input as a typo in it
        fail(str(exc), 2)
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
@click.option("--since", help="Only the last DURATION (e.g. 10m) or since a unix timestamp.")
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


def _api_options(fn: Any) -> Any:
    fn = click.option(
        "-c",
        "--config",
        "config",
        type=click.Path(dir_okay=False),
        help="Take the API address (api.listen) and the token variable (api.token_env) from this config.",
    )(fn)
    return click.option(
        "--api",
        "api",
        metavar="URL",
        help="The controller's API. Default: $TIERSCALE_API, else api.listen of --config, else http://127.0.0.1:9900.",
    )(fn)


def _api_call(
    api: str | None,
    config: str | Any | None,
    path: str,
    body: dict[str, Any] | None = None,
    method: str = "POST",
    text: str | None = None,
) -> Any:
    """Call the running controller; token from $TIERSCALE_API_TOKEN (or the config's token_env)."""
    from tierscale.api.client import ApiClientError, call, resolve

    cfg = load_or_exit(config) if isinstance(config, str) else config
    base, token_env, token = resolve(api, cfg)
    try:
        return call(base, method, path, body, token=token, token_env=token_env, text=text)
    except ApiClientError as exc:
        fail(str(exc), exc.exit_code)


def _group_path(group: str, verb: str) -> str:
    from urllib.parse import quote

    return f"/api/groups/{quote(group, safe='')}/{verb}"


@main.command()
@click.argument("group")
@click.argument("replicas", type=click.IntRange(0))
@_api_options
def scale(group: str, replicas: int, api: str | None, config: str | None) -> None:
    """Set a group's count by hand (pauses its policy until resume)."""
    st = _api_call(api, config, _group_path(group, "scale"), {"replicas": replicas})
    name = st["group"]
    click.echo(
        f"{name}: scaling to {replicas} (was {st['desired']}); policy paused until `tierscale resume {name}`"
    )


@main.command()
@click.argument("group")
@_api_options
def pause(group: str, api: str | None, config: str | None) -> None:
    """Stop a group's policy from changing its count."""
    st = _api_call(api, config, _group_path(group, "pause"))
    click.echo(f"{st['group']}: policy paused, holding {st.get('manual_replicas', st['desired'])} replica(s)")


@main.command()
@click.argument("group")
@_api_options
def resume(group: str, api: str | None, config: str | None) -> None:
    """Hand a paused group back to its policy."""
    st = _api_call(api, config, _group_path(group, "resume"))
    click.echo(f"{st['group']}: policy resumed (desired {st['desired']})")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@_api_options
def hosts(as_json: bool, api: str | None, config: str | None) -> None:
    """Every host the groups place on: reachable, capacity, replicas per group, cordoned or draining."""
    from tierscale.views import format_hosts

    rows = _api_call(api, config, "/api/hosts", method="GET")["hosts"]
    click.echo(json.dumps(rows) if as_json else format_hosts(rows))


def _host_action(action: str, doc: str) -> None:
    @main.command(action, help=doc)
    @click.argument("host")
    @_api_options
    def command(host: str, api: str | None, config: str | None) -> None:
        from urllib.parse import quote

        from tierscale.views import format_hosts

        row = _api_call(api, config, f"/api/hosts/{quote(host, safe='')}/{action}")
        click.echo(format_hosts([row]))


for _action, _doc in (
    ("cordon", "Place no new replica on HOST (its URL, or host[:port]); its replicas stay."),
    ("uncordon", "Let HOST take replicas again (ends a cordon or a drain)."),
    ("drain", "Cordon HOST and move its replicas to the other hosts, one at a time, with no failed request."),
):
    _host_action(_action, _doc)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--api", "api", metavar="URL", help="The controller's API. Default: api.listen of FILE.")
def apply(file: str, api: str | None) -> None:
    """Validate FILE and hand it to the running controller (a template change starts a rollout)."""
    cfg = load_or_exit(file)  # exit 2, nothing sent, on any problem
    text = Path(file).read_text(encoding="utf-8")
    out = _api_call(api, cfg, "/api/config", text=text)
    lines = [f"{name}: new group, started" for name in out["added"]]
    for name, keys in out["changed"].items():
        what = ", ".join(keys)
        tail = "; rolling out the new template (`tierscale rollout status " + name + "`)"
        lines.append(f"{name}: {what} changed" + (tail if name in out["rollouts"] else ""))
    lines += [
        f"{name}: no longer managed; its replicas keep running (`down` removes them)"
        for name in out["removed"]
    ]
    click.echo("\n".join(lines) or "no change")


@main.group()
def rollout() -> None:
    """Follow and steer a group's rollout to a new template revision."""


def _rollout_line(r: dict[str, Any]) -> str:
    counts = ", ".join(f"{rev}: {n}" for rev, n in sorted(r["replicas"].items())) or "no replicas"
    head = f"{r['group']}: {r['state']}, target {r['target']}"
    if r.get("previous"):
        head += f" (from {r['previous']})"
    head += f"; {r['updated']} updated, {r['healthy']} healthy; replicas by revision: {counts}"
    if r.get("reason"):
        head += f"; {r['reason']}"
    return head


@rollout.command("status")
@click.argument("group")
@click.option("--json", "as_json", is_flag=True)
@_api_options
def rollout_status(group: str, as_json: bool, api: str | None, config: str | None) -> None:
    """Target and previous revision, state, and replicas per revision."""
    r = _api_call(api, config, _group_path(group, "rollout"), method="GET")
    click.echo(json.dumps(r) if as_json else _rollout_line(r))


def _rollout_action(action: str, doc: str) -> None:
    @rollout.command(action, help=doc)
    @click.argument("group")
    @_api_options
    def command(group: str, api: str | None, config: str | None) -> None:
        click.echo(_rollout_line(_api_call(api, config, _group_path(group, f"rollout/{action}"))))


for _action, _doc in (
    ("pause", "Stop replacing replicas (scaling goes on)."),
    ("resume", "Go on after a pause or a failure, or retry a rolled-back revision."),
    ("promote", "Go on past the canaries."),
    ("undo", "Roll back to the revision before the current one."),
):
    _rollout_action(_action, _doc)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
def down(file: str) -> None:
    """Delete every replica the file's groups own and stop their balancers."""
    cfg = load_or_exit(file)
    from tierscale.controller.down import down as do_down
    from tierscale.controller.locks import ControllerError
    from tierscale.providers import MissingExtra, ProviderError

    try:
        for line in do_down(cfg):
            click.echo(line)
    except MissingExtra as exc:
        fail(str(exc), 2)
    except (ControllerError, ProviderError) as exc:
        fail(str(exc))


def _complete_tier(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    from tierscale.init_config import TIERS

    return [t for t in TIERS if t.startswith(incomplete)]


@main.command()
@click.option(
    "--tier",
    metavar="process|docker|libvirt|openstack",
    shell_complete=_complete_tier,
    help="The tier of the starter group.",
)
@click.option(
    "--out",
    default="tierscale.yaml",
    show_default=True,
    metavar="FILE",
    help="Where to write it ('-': stdout; what was found goes to stderr then).",
)
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
@click.option(
    "--state-dir",
    metavar="DIR",
    help="The config's state_dir (e.g. /var/lib/tierscale under systemd). Default: ~/.local/state/tierscale",
)
def init(tier: str | None, out: str, force: bool, state_dir: str | None) -> None:
    """Write a commented starter config for one tier, after probing what this host has for it."""
    from tierscale.config import ConfigError
    from tierscale.init_config import TIERS, InitError, init_config

    if tier is None:
        fail(f"--tier is required: one of {', '.join(TIERS)}", 2)
    try:
        text, found = init_config(tier, out, force=force, state_dir=state_dir)
    except InitError as exc:
        fail(str(exc), 2)
    except OSError as exc:
        fail(f"--out {out}: cannot write: {exc.strerror or exc}", 1)
    except ConfigError as exc:  # the starter must be valid whatever the probes found: this is a bug
        fail(f"the starter config is not valid (please report this bug): {exc.first_line()}", 1)
    report = "\n".join(found)
    if out == "-":
        click.echo(report, err=True)
        click.echo(text, nl=False)
    else:
        click.echo(report)
        click.echo(
            f"wrote {out}: check it with `tierscale validate {out}`, start it with `tierscale run {out}`"
        )


_SHELLS = ("bash", "zsh", "fish")


@main.command()
@click.argument(
    "shell", metavar="bash|zsh|fish", shell_complete=lambda c, p, i: [s for s in _SHELLS if s.startswith(i)]
)
def completion(shell: str) -> None:
    """Print the shell completion script: eval "$(tierscale completion bash)" in ~/.bashrc."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell) if shell in _SHELLS else None
    if cls is None:
        fail(f"completion {shell}: the shells are {', '.join(_SHELLS)}", 2)
    # The script `_TIERSCALE_COMPLETE=bash_source tierscale` prints, so either way of installing it works.
    click.echo(cls(main, {}, "tierscale", "_TIERSCALE_COMPLETE").source(), nl=False)


@main.command()
@click.option(
    "--tier", type=click.Choice(["process", "docker", "libvirt"]), default="process", show_default=True
)
@click.option("--state-dir", type=click.Path(file_okay=False), help="Default: a fresh temporary directory.")
@click.option("--quick", is_flag=True, help="A shorter load profile (used by tests).")
def demo(tier: str, state_dir: str | None, quick: bool) -> None:
    """A self-contained group under generated load, scaling out then back in, with a live view."""
    from tierscale.demo import TIER_TEMPLATES, run_demo
    from tierscale.providers import MissingExtra

    if tier not in TIER_TEMPLATES:
        fail(f"--tier {tier}: this tier's demo is not implemented yet", 1)
    try:
        sys.exit(run_demo(state_dir=Path(state_dir) if state_dir else None, quick=quick, tier=tier))
    except MissingExtra as exc:  # --tier docker on an install without the Docker SDK
        fail(str(exc), 2)


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
@click.option(
    "--trace",
    metavar="FILE",
    help="Request-rate trace: CSV (t_seconds,requests_per_second, or any time and value column) or the "
    "JSON of Prometheus' query_range; each rate held until the next row.",
)
@click.option("--time-col", metavar="NAME", help="CSV column with the times (default: t_seconds, time, ...).")
@click.option(
    "--value-col",
    metavar="NAME",
    help="CSV column with the values (default: requests_per_second, value, ...).",
)
@click.option(
    "--counts", is_flag=True, help="Values are requests per row, not per second: divide by the step."
)
@click.option(
    "--max-gap",
    default="1h",
    metavar="DURATION",
    show_default=True,
    help="Fill missing rows by linear interpolation over gaps up to this long ('none': any).",
)
@click.option(
    "--config",
    "config",
    metavar="FILE",
    help="The tierscale config to replay (with --compare: the baseline).",
)
@click.option("--group", "-g", metavar="G", help="The group to simulate when a file has several.")
@click.option(
    "--out", metavar="DIR", help="Directory for summary.json, table.txt, timeline.png and report.html."
)
@click.option(
    "--speed", default="1", metavar="X", show_default=True, help="Compress time: each bin lasts bin/SPEED s."
)
@click.option(
    "--window", metavar="START:END", help="START:END of the trace to replay, in trace time, e.g. 14h:22h."
)
@click.option(
    "--compare",
    multiple=True,
    metavar="FILE...",
    help="More configs on the same trace: --compare a.yaml b.yaml",
)
@click.option(
    "--delay",
    metavar="SPEC",
    help="Provisioning delay: 3s, container|vm|cloud (1s/3s/60s), 2s..5s (uniform), lognormal:60s:0.3. "
    "Default: the config's tier.",
)
@click.option(
    "--capacity",
    default="auto",
    metavar="RPS",
    show_default=True,
    help="req/s one replica serves at 100% CPU.",
)
@click.option(
    "--utilization", default="70", metavar="PCT", show_default=True, help="Demand is counted at this CPU %."
)
@click.option(
    "--seed", default="0", metavar="N", show_default=True, help="Seed for random provisioning delays."
)
@click.option(
    "--start",
    metavar="ISO",
    help="Wall-clock time of trace t=0, for schedules (ISO 8601; default: the trace's first time if it has "
    "real times, else 1970-01-01Z).",
)
@click.option("--no-plots", is_flag=True, help="Skip the PNG and the plot in the HTML page.")
@click.option(
    "--jobs",
    "-j",
    metavar="N",
    help="Configs simulated at once, each in its own process (default: one per core; 1: in this process).",
)
@click.option(
    "--max-replica-hours",
    default="1",
    metavar="RATIO",
    show_default=True,
    help="Budget: a config above RATIO × the first config's replica-hours is marked over budget.",
)
@click.option("--no-progress", is_flag=True, help="No progress bars (shown only when stderr is a terminal).")
@click.argument("more", nargs=-1, metavar="[FILE...]")
def simulate(
    trace: str | None,
    time_col: str | None,
    value_col: str | None,
    counts: bool,
    max_gap: str,
    config: str | None,
    group: str | None,
    out: str | None,
    speed: str,
    window: str | None,
    compare: tuple[str, ...],
    delay: str | None,
    capacity: str,
    utilization: str,
    seed: str,
    start: str | None,
    no_plots: bool,
    jobs: str | None,
    max_replica_hours: str,
    no_progress: bool,
    more: tuple[str, ...],
) -> None:
    """Replay a request-rate trace through the policy engine; elasticity metrics, plots, comparisons."""
    if more and not compare:
        fail(f"unexpected argument {more[0]!r} (more configs go after --compare)", 2)
    for flag, value in (("--trace", trace), ("--config", config), ("--out", out)):
        if not value:
            fail(f"{flag} is required", 2)
    if not seed.isdigit():
        fail(f"--seed: expected a whole number >= 0 (got {seed!r})", 2)
    if jobs is not None and not (jobs.isdigit() and int(jobs) >= 1):
        fail(f"--jobs: expected a whole number >= 1 (got {jobs!r})", 2)
    try:
        from tierscale.simulate import SimInputError, SimOptions, run_simulation
        from tierscale.simulate.command import info_lines, summary_lines
        from tierscale.simulate.progress import SimProgress
    except ImportError as exc:
        fail(f"simulate needs numpy and matplotlib ({exc}): pip install 'tierscale[sim]'", 1)
    opts = SimOptions(
        trace=str(trace),
        configs=[str(config), *compare, *more],
        out=out,
        group=group,
        speed=speed,  # type: ignore[arg-type]  # validated (with a one-line error) by run_simulation
        window=window,
        delay=delay,
        capacity=capacity,
        utilization=utilization,  # type: ignore[arg-type]
        seed=int(seed),
        start=start,
        plots=not no_plots,
        time_col=time_col,
        value_col=value_col,
        counts=counts,
        max_gap=max_gap,
        jobs=int(jobs) if jobs is not None else None,
        max_replica_hours=max_replica_hours,  # type: ignore[arg-type]  # validated by run_simulation
    )
    try:
        with SimProgress(enabled=False if no_progress else None) as bars:
            report = run_simulation(opts, progress=bars)
    except SimInputError as exc:
        fail(str(exc), 2)
    except ImportError as exc:
        fail(f"plots need matplotlib ({exc}): pip install 'tierscale[sim]', or pass --no-plots", 1)
    except OSError as exc:  # e.g. the disk filled up while writing the report
        fail(f"--out {out}: cannot write: {exc.strerror or exc}", 1)
    click.echo("\n".join(info_lines(report.info)) + "\n\n" + report.table + "\n")
    click.echo("\n".join(summary_lines(report.info)))
    click.echo("wrote " + ", ".join(str(f) for f in report.files))


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
