"""`tierscale status` rendering: each replica's host and revision, the group's target revision."""

from __future__ import annotations

from rich.console import Console

from tierscale.views import render_status_table


def status(revisions: list[str]) -> dict[str, object]:
    return {
        "group": "web",
        "tier": "docker",
        "policy": "hpa",
        "desired": len(revisions),
        "current": len(revisions),
        "ready": len(revisions),
        "min": 1,
        "max": 5,
        "revision": "abc123def456",
        "replicas": [
            {
                "id": f"r-{i}",
                "address": f"127.0.0.1:{20000 + i}",
                "host": "unix:///var/run/docker.sock",
                "revision": rev,
                "state": "ready",
                "health": "ok",
                "cpu": 10.0,
                "rps": 1.0,
                "p95_ms": None,
                "age": 5.0,
            }
            for i, rev in enumerate(revisions)
        ],
        "last_decision": None,
    }


def render(st: dict[str, object]) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(render_status_table([st]))
    return console.export_text()


def test_status_shows_the_target_revision_and_each_replicas_host_and_revision() -> None:
    text = render(status(["abc123def456", "0ld0ld0ld0ld"]))
    assert "revision=abc123def456" in text
    assert "0ld0ld0ld0ld" in text and "unix:///var/run/docker.sock" in text
    lines = [ln for ln in text.splitlines() if ln.startswith("r-")]
    assert len(lines) == 2 and "0ld0ld0ld0ld" in lines[1]


def test_a_status_written_before_revisions_still_renders() -> None:
    st = status(["x"])
    del st["revision"]
    for r in st["replicas"]:  # type: ignore[attr-defined]
        del r["revision"], r["host"]
    text = render(st)
    assert "r-0" in text and "revision=" not in text


def test_a_rollout_in_progress_has_its_own_line_and_a_finished_one_none() -> None:
    st = status(["abc123def456", "0ld0ld0ld0ld"])
    st["rollout"] = {
        "state": "progressing",
        "target": "abc123def456",
        "previous": "0ld0ld0ld0ld",
        "updated": 1,
        "healthy": 1,
        "reason": "the template changed",
    }
    text = render(st)
    assert "rollout progressing  0ld0ld0ld0ld → abc123def456  updated 1, healthy 1" in text
    st["rollout"] = {**st["rollout"], "state": "complete"}  # type: ignore[dict-item]
    assert "rollout " not in render(st)
    st["rollout"] = {"state": "complete", "target": "0ld0ld0ld0ld", "declared": "bad", "rejected": "bad"}
    assert "rolled back from bad" in render(st)
