"""AccessLogReader on synthetic log files, for the edge cases.

The format a real nginx really writes is tested in tests/e2e/test_accesslog_nginx.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tierscale.balancer import AccessLogReader

NOW = 1_800_000_000.0


def line(
    ts: float,
    upstream: str = "127.0.0.1:9001",
    status: int = 200,
    upstream_status: str = "200",
    upstream_time: str = "0.010",
    request_time: str = "0.011",
) -> str:
    return (
        json.dumps(
            {
                "msec": f"{ts:.3f}",
                "status": str(status),
                "request_time": request_time,
                "upstream_addr": upstream,
                "upstream_status": upstream_status,
                "upstream_response_time": upstream_time,
                "request_uri": "/",
            }
        )
        + "\n"
    )


def append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def test_per_upstream_rps_p95_errors(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    # 100 requests to 9001 with 1..100 ms, 10 to 9002 of which 2 failed, 1 answered by nginx itself.
    text = "".join(line(NOW - 5 + i / 100, upstream_time=f"{(i + 1) / 1000:.3f}") for i in range(100))
    text += "".join(
        line(NOW - 1, "127.0.0.1:9002", 502 if i < 2 else 200, "502" if i < 2 else "200") for i in range(10)
    )
    text += line(NOW - 1, "", 503, "", "", "0.000")
    append(log, text)
    with AccessLogReader(log) as reader:
        assert reader.poll(now=NOW) == 111
        stats = reader.stats(window=10, now=NOW)
        assert set(stats) == {"127.0.0.1:9001", "127.0.0.1:9002"}
        s1 = stats["127.0.0.1:9001"]
        assert (s1.requests, s1.rps, s1.p95_ms, s1.errors, s1.retries) == (100, 10.0, 95.0, 0, 0)
        s2 = stats["127.0.0.1:9002"]
        assert (s2.requests, s2.errors) == (10, 2)
        totals = reader.totals(window=10, now=NOW)
        assert (totals.requests, totals.errors) == (111, 3)
        assert totals.rps == pytest.approx(11.1)
        # A narrower window only sees the last second.
        assert reader.totals(window=2, now=NOW).requests == 11


def test_retry_is_attributed_to_last_upstream(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    append(
        log,
        line(
            NOW,
            "127.0.0.1:9001, 127.0.0.1:9002",
            200,
            "502, 200",
            "0.001, 0.020",
        ),
    )
    # All servers down: nginx names the upstream group; no replica gets the request.
    append(log, line(NOW, "127.0.0.1:9001, tierscale_backends", 502, "502, 502", "0.001, 0.000"))
    with AccessLogReader(log) as reader:
        reader.poll(now=NOW)
        stats = reader.stats(window=10, now=NOW)
    assert stats["127.0.0.1:9002"].requests == 1
    assert stats["127.0.0.1:9002"].retries == 1
    assert stats["127.0.0.1:9002"].p95_ms == pytest.approx(20.0)
    assert stats["127.0.0.1:9001"].requests == 1  # the second request's last real attempt
    assert stats["127.0.0.1:9001"].errors == 2  # failed attempts count against the replica that failed
    assert "tierscale_backends" not in stats


def test_partial_and_garbage_lines(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    full = line(NOW)
    append(log, "not json\n" + "\x00\xff{\n" + '{"msec": "x"}\n' + full + full[:20])
    with AccessLogReader(log) as reader:
        assert reader.poll(now=NOW) == 1
        assert reader.skipped == 3
        append(log, full[20:])  # nginx finishes the line
        assert reader.poll(now=NOW) == 1
        assert reader.poll(now=NOW) == 0
        assert reader.totals(60, now=NOW).requests == 2


def test_truncation_and_rotation(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    append(log, line(NOW) * 5)
    with AccessLogReader(log) as reader:
        assert reader.poll(now=NOW) == 5
        # Truncated in place, then new lines: read from the start.
        with open(log, "w") as f:
            f.write(line(NOW) * 2)
        assert reader.poll(now=NOW) == 2
        # Rotation: lines written to the old file before the rename are still read, then the new file.
        append(log, line(NOW) * 3)
        os.rename(log, tmp_path / "access.log.1")
        assert reader.poll(now=NOW) == 3  # path missing: drain the old file, keep it open
        append(tmp_path / "access.log.1", line(NOW))  # writer not reopened yet
        append(log, line(NOW) * 4)
        assert reader.poll(now=NOW) == 5
        assert reader.totals(60, now=NOW).requests == 5 + 2 + 3 + 1 + 4


def test_memory_is_bounded_by_window(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    append(log, "".join(line(NOW - 299 + i) for i in range(300)))  # one request a second
    with AccessLogReader(log, retention=120) as reader:
        reader.poll(now=NOW)
        assert reader.sample_count == 121  # NOW-120 .. NOW
        assert reader.totals(60, now=NOW).requests == 60
        # Asking for a larger window raises retention; older samples still go.
        reader.stats(200, now=NOW)
        append(log, "".join(line(NOW + 1 + i) for i in range(100)))
        reader.poll(now=NOW + 100)
        assert reader.sample_count == 201  # NOW-100 .. NOW+100
    with AccessLogReader(log, max_samples=50) as capped:
        capped.poll(now=NOW + 100)
        assert capped.sample_count == 50
