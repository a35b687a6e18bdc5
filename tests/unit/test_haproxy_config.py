"""HAProxy balancer pieces that need no HAProxy: its log lines in the AccessLogReader, the config it
renders, the slot arithmetic, and the per-balancer algorithm rules of the config."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from tierscale.balancer import AccessLogReader
from tierscale.balancer.haproxy import HAProxyBalancer, _slots_for
from tierscale.config import ConfigError, load_config_text

NOW = 1_800_000_000.0


def _line(ts: float, ip: str = "127.0.0.1", port: str = "9001", status: int = 200, tr: int = 10, ta: int = 12,
          rc: str = "0") -> str:  # fmt: skip
    rec = {"msec": f"{ts:.3f}", "status": status, "server_ip": ip, "server_port": port,
           "upstream_response_ms": tr, "request_ms": ta, "retries": rc}  # fmt: skip
    return json.dumps(rec) + "\n"


def test_haproxy_log_lines_give_per_replica_rates_latency_errors_and_retries(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text(
        "".join(_line(NOW - 1 - i * 0.1, tr=10 + i) for i in range(20))
        + _line(NOW - 1, port="9002", status=502, tr=-1, ta=3000, rc="+2")  # redispatched, then failed
        + _line(NOW - 1, ip="-", port="-", status=503, tr=-1, ta=0)  # no server at all
        + _line(NOW - 1, ip="::1", port="9003")
        + "Proxy tierscale_web stopped (cumulated conns: FE: 4, BE: 0).\n"  # HAProxy's own words
    )
    with AccessLogReader(log) as r:
        assert r.poll(now=NOW) == 23 and r.skipped == 1
        stats = r.stats(10.0, now=NOW)
        assert set(stats) == {"127.0.0.1:9001", "127.0.0.1:9002", "[::1]:9003"}
        one = stats["127.0.0.1:9001"]
        assert one.requests == 20 and one.rps == 2.0 and one.p95_ms == 28.0 and one.errors == 0
        bad = stats["127.0.0.1:9002"]
        assert (bad.errors, bad.retries, bad.p95_ms) == (1, 2, None)
        totals = r.totals(10.0, now=NOW)
        assert totals.requests == 23 and totals.errors == 2 and totals.p95_ms == 12.0


def test_the_rendered_config_has_the_slots_the_hold_backend_and_the_algorithm(tmp_path: Path) -> None:
    b = HAProxyBalancer("web", "127.0.0.1:8080", "ip_hash", tmp_path)
    text = b.render(16)
    assert "server-template s 1-16 127.0.0.1:1 disabled" in text
    assert "balance source" in text and "bind 127.0.0.1:8080" in text
    assert "use_backend holding if { nbsrv(replicas) eq 0 } { nbsrv(holding) gt 0 }" in text
    assert f"stats socket {tmp_path}/admin.sock mode 600 level admin" in text
    assert '\\"group\\":\\"web\\"' in text  # the 503 body, escaped inside HAProxy's string


@pytest.mark.parametrize(("n", "slots"), [(0, 16), (1, 16), (8, 16), (9, 32), (20, 64), (100, 256)])
def test_slots_leave_room_to_double(n: int, slots: int) -> None:
    assert _slots_for(n) == slots


HEAD = """\
groups:
  - name: w
    tier: process
    min: 1
    max: 3
    template: {command: ["x", "{port}"], port_range: [20000, 20010]}
"""


@pytest.mark.parametrize(
    ("balancer", "words"),
    [
        (
            "{type: nginx, algorithm: first}",
            "nginx supports round_robin, least_conn (got first; first is haproxy's)",
        ),
        (
            "{type: haproxy, algorithm: uri}",
            "haproxy supports round_robin, least_conn, ip_hash, random, first (got uri)",
        ),
        ("{type: traefik}", "nginx, haproxy, none"),
    ],
)
def test_an_algorithm_the_balancer_lacks_is_one_line(balancer: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(HEAD + f"    balancer: {balancer}\n", "b.yaml")
    assert "\n" not in info.value.first_line()
    p = info.value.problems[0]
    assert p.field.startswith("groups[0].balancer") and words in p.message, (p.field, p.message)


def test_haproxy_takes_every_algorithm_it_has() -> None:
    for algo in ("round_robin", "least_conn", "ip_hash", "random", "first"):
        cfg = load_config_text(HEAD + f"    balancer: {{type: haproxy, algorithm: {algo}}}\n", "b.yaml")
        assert cfg.groups[0].balancer.algorithm == algo


def test_a_long_state_dir_moves_the_admin_socket_to_a_short_private_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AF_UNIX paths hold 107 bytes (HAProxy binds `<path>.<pid>.tmp` first): CI's docker and VM groups
    have state dirs long enough that HAProxy could not create its socket."""
    run = Path(tempfile.mkdtemp(prefix="tsrun", dir="/tmp"))  # short, as /run or $XDG_RUNTIME_DIR are
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    short = HAProxyBalancer("web", "127.0.0.1:8080", "round_robin", Path("/tmp/s/h"))
    assert short.runtime.path == Path("/tmp/s/h/admin.sock")
    deep = tmp_path / ("x" * 60) / "groups" / "dk-7b4e98" / "haproxy"
    long_one = HAProxyBalancer("dk-7b4e98", "127.0.0.1:8080", "round_robin", deep)
    path = long_one.runtime.path
    assert path.parent.parent == run and len(str(path)) < 108
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    again = HAProxyBalancer("dk-7b4e98", "127.0.0.1:8080", "round_robin", deep)
    assert again.runtime.path == path  # a restarted controller finds the same socket
    other = HAProxyBalancer("dk-7b4e98", "127.0.0.1:8080", "round_robin", deep.with_name("other"))
    assert other.runtime.path != path
    shutil.rmtree(run)
