"""A real Prometheus (Debian's `prometheus`) for the tests, on a free loopback port.

Its config and TSDB live in a temporary directory; it listens on 127.0.0.1 only and is killed, with its
directory, when the block ends. `promtool` (same package) checks configs and runs rule unit tests.
scripts/setup/prometheus.sh installs both and keeps the package's own daemon from running.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers import REPO
from helpers.ci import require
from helpers.e2e import free_port

_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/usr/local/bin"])
PROMETHEUS = shutil.which("prometheus", path=_PATH)
PROMTOOL = shutil.which("promtool", path=_PATH)
EXAMPLES = REPO / "examples" / "prometheus"

# Loopback only, and never through a proxy the environment may name.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class PrometheusError(RuntimeError):
    pass


def require_prometheus() -> str:
    """The prometheus binary; skip without it (fail with CI=true)."""
    require(PROMETHEUS is not None, "prometheus (scripts/setup/prometheus.sh)")
    assert PROMETHEUS is not None
    return PROMETHEUS


def require_promtool() -> str:
    require(PROMTOOL is not None, "promtool (scripts/setup/prometheus.sh)")
    assert PROMTOOL is not None
    return PROMTOOL


def scrape_job(name: str, targets: list[str], **extra: Any) -> dict[str, Any]:
    """A static scrape config: `scrape_job("workload", ["127.0.0.1:20001"])`."""
    return {"job_name": name, "static_configs": [{"targets": targets}], **extra}


def file_sd_job(name: str, files: list[str], refresh: str = "1s", **extra: Any) -> dict[str, Any]:
    """A scrape config fed by file-based service discovery (tierscale's <state_dir>/prometheus/*.json)."""
    return {"job_name": name, "file_sd_configs": [{"files": files, "refresh_interval": refresh}], **extra}


@dataclass
class Prometheus:
    port: int
    dir: Path
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, timeout: float = 5.0) -> Any:
        with _OPENER.open(self.url + path, timeout=timeout) as resp:
            return json.loads(resp.read())

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (`[{"metric": {...}, "value": [ts, "1.5"]}, ...]`)."""
        body = self.get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        if body.get("status") != "success":
            raise PrometheusError(f"query {expr!r}: {body}")
        data = body["data"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def value(self, expr: str) -> float | None:
        """The value of a query that yields one sample; None when it yields none (yet)."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) != 1:
            raise PrometheusError(f"query {expr!r} returned {len(result)} series: {result}")
        return float(result[0]["value"][1])

    def targets(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/targets?state=active")["data"]["activeTargets"])

    def ready(self) -> bool:
        try:
            with _OPENER.open(self.url + "/-/ready", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError as exc:
            return str(exc)

    def restart(self, timeout: float = 30.0) -> None:
        """Start it again on the same port and data (a source back after an outage), and wait for it."""
        self.stop()
        self.proc = _start(
            require_prometheus(), self.dir / "prometheus.yml", self.dir / "data", self.log, self.port
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None and not self.ready():
            time.sleep(0.1)
        if not self.ready():
            raise PrometheusError(f"prometheus not ready again after {timeout:g}s: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _start(binary: str, config: Path, data: Path, log: Path, port: int) -> subprocess.Popen[bytes]:
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={data}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1h",  # a test's samples are worth nothing afterwards
        "--log.level=warn",
    ]
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=config.parent)


@contextlib.contextmanager
def running_prometheus(
    scrape_configs: list[dict[str, Any]] | None = None,
    *,
    config_text: str | None = None,
    scrape_interval: str = "1s",
    files: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Iterator[Prometheus]:
    """A Prometheus scraping `scrape_configs` every `scrape_interval`, or running `config_text` as is
    (then `files` are written beside it, e.g. the rule files it names, relative to the config).

    The config is written as JSON, which is YAML too: no YAML library needed to build it.
    """
    binary = require_prometheus()
    workdir = Path(tempfile.mkdtemp(prefix="tsprom-"))
    prom: Prometheus | None = None
    try:
        config = workdir / "prometheus.yml"
        if config_text is None:
            body = {
                "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
                "scrape_configs": scrape_configs or [],
            }
            config_text = json.dumps(body, indent=1)
        config.write_text(config_text)
        for name, text in (files or {}).items():
            (workdir / name).write_text(text)
        deadline = time.monotonic() + timeout
        for attempt in range(3):
            log = workdir / f"prometheus-{attempt}.log"
            # free_port() only says the port was free a moment ago; another process can take it before
            # Prometheus binds, so a bind failure tries another one.
            port = free_port()
            prom = Prometheus(port, workdir, log, _start(binary, config, workdir / "data", log, port))
            while time.monotonic() < deadline and prom.proc.poll() is None and not prom.ready():
                time.sleep(0.1)
            if prom.ready():
                break
            prom.stop()
            if "address already in use" not in prom.log_tail(4000):
                raise PrometheusError(f"prometheus not ready after {timeout:g}s: {prom.log_tail()}")
        else:
            raise PrometheusError(f"prometheus found no free port in 3 tries: {prom.log_tail()}")
        yield prom
    finally:
        if prom is not None:
            prom.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def example_config(api_listen: str, state_dir: Path, interval: str = "1s") -> str:
    """examples/prometheus/prometheus.yml with its two placeholders filled in (what its README tells a
    user to edit) and every interval shortened for a test."""
    text = (EXAMPLES / "prometheus.yml").read_text()
    edits = {
        '"127.0.0.1:9900"': f'"{api_listen}"',
        "/var/lib/tierscale/prometheus/*.json": f"{state_dir}/prometheus/*.json",
        "scrape_interval: 15s": f"scrape_interval: {interval}",
        "evaluation_interval: 15s": f"evaluation_interval: {interval}",
        "scrape_interval: 5s": f"scrape_interval: {interval}",
        "scrape_timeout: 4s": f"scrape_timeout: {interval}",
        "refresh_interval: 1m": "refresh_interval: 1s",
    }
    for old, new in edits.items():
        # An example edited so that a placeholder moved must fail loudly here, not test something else.
        assert text.count(old) == 1, f"{old!r} is not in examples/prometheus/prometheus.yml exactly once"
        text = text.replace(old, new)
    return text
