"""The HTTP API of a real running controller: every route, auth, bad bodies, manual control, /metrics.

One controller (a process-tier group behind nginx) serves the whole module; each test leaves the group
resumed. (The replica-less controller without a token, and the API address clashes, are in
tests/unit/test_api_idle.py: they need no nginx.)
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers.api import TOKEN, TOKEN_ENV, api_config, cleanup, http
from helpers.e2e import free_port, wait_for, wait_passes
from tierscale.loadgen import LoadRunner
from tierscale.logs import JsonFormatter
from tierscale.service import BackgroundController

pytestmark = pytest.mark.e2e


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BackgroundController, str]]:
    """A controller whose group scales on request rate: a few req/s make the policy want more replicas."""
    os.environ[TOKEN_ENV] = TOKEN
    state_dir = tmp_path_factory.mktemp("api") / "state"
    port = free_port()
    cfg = api_config(
        state_dir,
        port,
        min_=1,
        max_=3,
        down_window="2s",
        metrics="[{type: requests_per_replica, target: 2}]",
    )
    try:
        with BackgroundController(cfg) as bg:
            wait_for(lambda: bg.status("web")["ready"] >= 1, 30, what="first replica ready")
            yield bg, f"http://127.0.0.1:{port}"
    finally:
        os.environ.pop(TOKEN_ENV, None)
        cleanup(cfg)


def status(bg: BackgroundController) -> dict[str, Any]:
    return bg.status("web")


# ---------------------------------------------------------------------------------------------- reading
def test_healthz_groups_and_group(running: tuple[BackgroundController, str]) -> None:
    _, base = running
    r = http(base, "GET", "/healthz")
    assert r.status == 200 and r.json["status"] == "ok" and r.json["groups"] == 1
    groups = http(base, "GET", "/api/groups").json["groups"]
    assert [g["group"] for g in groups] == ["web"]
    g = http(base, "GET", "/api/groups/web").json
    assert g["min"] == 1 and g["max"] == 3 and g["tier"] == "process" and g["paused"] is False
    assert g["desired"] >= 1 and g["replicas"], g
    rep = g["replicas"][0]
    assert {"id", "address", "state", "health", "cpu", "rps", "p95_ms", "age"} <= set(rep)
    d = g["last_decision"]
    assert (
        d["reason"]
        and isinstance(d["limits"], list)
        and d["proposals"][0]["metric"] == "requests_per_replica"
    )


def test_unknown_group_is_404_on_every_group_route(running: tuple[BackgroundController, str]) -> None:
    _, base = running
    for method, path in [
        ("GET", "/api/groups/nope"),
        ("GET", "/api/groups/nope/series"),
        ("GET", "/api/events?group=nope"),
        ("POST", "/api/groups/nope/scale"),
        ("POST", "/api/groups/nope/pause"),
        ("POST", "/api/groups/nope/resume"),
    ]:
        r = http(base, method, path, {"replicas": 1} if path.endswith("scale") else None, token=TOKEN)
        assert r.status == 404, (method, path, r.status)
        assert "nope" in r.json["error"] and r.json["field"] in ("name", "group")
    r = http(base, "GET", "/api/nothing-here")
    assert r.status == 404 and r.json["field"] == "path"
    r = http(base, "DELETE", "/api/groups/web")
    assert r.status == 405 and "GET" in r.json["error"]


def test_events_since_accepts_durations_and_timestamps(running: tuple[BackgroundController, str]) -> None:
    _, base = running
    all_rows = http(base, "GET", "/api/events?group=web").json["events"]
    assert any(e["kind"] == "controller_started" for e in all_rows)
    assert all(e["group"] == "web" for e in all_rows)
    assert [e["ts"] for e in all_rows] == sorted(e["ts"] for e in all_rows)
    recent = http(base, "GET", "/api/events?since=10m").json["events"]
    assert len(recent) == len(all_rows)
    cut = all_rows[len(all_rows) // 2]["ts"]
    later = http(base, "GET", f"/api/events?since={cut}").json["events"]
    assert later and all(e["ts"] >= cut for e in later) and len(later) < len(all_rows)
    assert http(base, "GET", f"/api/events?since={time.time() + 60:.3f}").json["events"] == []
    assert len(http(base, "GET", "/api/events?limit=2").json["events"]) == 2
    for query, field in [("since=yesterday", "since"), ("since=-5m", "since"), ("limit=0", "limit")]:
        r = http(base, "GET", f"/api/events?{query}")
        assert r.status == 400 and r.json["field"] == field, (query, r.body)
    assert http(base, "GET", "/api/groups/web/series?since=soon").json["field"] == "since"


def test_series_has_one_point_per_pass(running: tuple[BackgroundController, str]) -> None:
    _, base = running
    first = http(base, "GET", "/api/groups/web/series").json
    wait_for(
        lambda: len(http(base, "GET", "/api/groups/web/series").json["t"]) > len(first["t"]),
        10,
        what="a new sample",
    )
    s = http(base, "GET", "/api/groups/web/series").json
    n = len(s["t"])
    assert n >= 2 and all(len(s[k]) == n for k in ("desired", "current", "ready", "rps", "p95_ms"))
    m = s["metrics"]["requests_per_replica"]
    assert len(m["value"]) == n and 2.0 in m["target"]
    assert s["provision"] and s["provision"][0]["seconds"] > 0


def test_dashboard_page_loads_only_its_own_files(running: tuple[BackgroundController, str]) -> None:
    _, base = running
    page = http(base, "GET", "/")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    html = page.body.decode()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs and all(ref.startswith(("/", "data:")) for ref in refs), refs
    for ref in refs:
        if ref.startswith("/static/"):
            asset = http(base, "GET", ref)
            assert asset.status == 200 and asset.body
            # The only absolute URL in the script is the SVG namespace, which is a name, not a fetch.
            urls = set(re.findall(rb"https?://[^\s\"'`]+", asset.body))
            assert urls <= {b"http://www.w3.org/2000/svg"}, urls
    assert http(base, "GET", "/static/../../etc/passwd").status == 404
    assert http(base, "GET", "/static/nope.js").status == 404


def test_foreign_host_header_is_refused(running: tuple[BackgroundController, str]) -> None:
    _, base = running
    r = http(base, "GET", "/api/groups", headers={"Host": "evil.example:80"})
    assert r.status == 421 and r.json["field"] == "Host"
    assert http(base, "GET", "/api/groups", headers={"Host": "localhost"}).status == 200


# ---------------------------------------------------------------------------------------------- auth
def test_mutations_need_the_right_token(running: tuple[BackgroundController, str]) -> None:
    bg, base = running
    for path in ("/api/groups/web/scale", "/api/groups/web/pause", "/api/groups/web/resume"):
        body = {"replicas": 2} if path.endswith("scale") else None
        missing = http(base, "POST", path, body)
        assert missing.status == 401 and missing.json["field"] == "Authorization"
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = http(base, "POST", path, body, token=TOKEN + "x")
        assert wrong.status == 401 and wrong.json["error"] == "invalid token"
        basic = http(base, "POST", path, body, headers={"Authorization": f"Basic {TOKEN}"})
        assert basic.status == 401
    assert status(bg)["paused"] is False and status(bg)["desired"] == 1  # nothing was applied
    r = http(base, "POST", "/api/groups/web/pause", token=TOKEN)
    assert r.status == 200 and r.json["paused"] is True
    r = http(base, "POST", "/api/groups/web/resume", token=TOKEN)
    assert r.status == 200 and r.json["paused"] is False


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        (b"{not json", "body", "not valid JSON"),
        (b"[1, 2]", "body", "JSON object"),
        (b"", "replicas", "required"),
        (b"{}", "replicas", "required"),
        (b'{"replicas": "2"}', "replicas", "integer"),
        (b'{"replicas": 2.5}', "replicas", "integer"),
        (b'{"replicas": true}', "replicas", "integer"),
        (b'{"replicas": null}', "replicas", "integer"),
        (b'{"replicas": 4}', "replicas", "between min 1 and max 3"),
        (b'{"replicas": 0}', "replicas", "between min 1 and max 3"),
        (b'{"replicas": 2, "force": true}', "force", "unknown field"),
        (b"\xff\xfe", "body", "not valid JSON"),
    ],
)
def test_bad_scale_bodies_are_400_naming_the_field(
    running: tuple[BackgroundController, str], raw: bytes, field: str, words: str
) -> None:
    bg, base = running
    r = http(base, "POST", "/api/groups/web/scale", raw=raw, token=TOKEN)
    assert r.status == 400, r.body
    assert r.json["field"] == field and words in r.json["error"], r.json
    assert status(bg)["paused"] is False  # nothing half-applied


def test_bad_pause_and_resume_bodies(running: tuple[BackgroundController, str]) -> None:
    bg, base = running
    for verb in ("pause", "resume"):
        r = http(base, "POST", f"/api/groups/web/{verb}", raw=b'{"replicas": 2}', token=TOKEN)
        assert r.status == 400 and r.json["field"] == "replicas" and "no fields" in r.json["error"]
        r = http(base, "POST", f"/api/groups/web/{verb}", raw=b"nope", token=TOKEN)
        assert r.status == 400 and r.json["field"] == "body"
    assert status(bg)["paused"] is False
    too_big = b'{"replicas": 1, "pad": "' + b"x" * 100_000 + b'"}'
    assert http(base, "POST", "/api/groups/web/scale", raw=too_big, token=TOKEN).status == 413


# ---------------------------------------------------------------------------------------------- control
def test_manual_scale_holds_the_count_until_resume(running: tuple[BackgroundController, str]) -> None:
    bg, base = running
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tierscale.controller")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        r = http(base, "POST", "/api/groups/web/scale", {"replicas": 3}, token=TOKEN)
        assert r.status == 200 and r.json["paused"] is True and r.json["manual_replicas"] == 3
        wait_for(lambda: status(bg)["ready"] == 3, 30, what="three ready replicas")
        # No load at all: an unpaused policy would scale back down within that (window 2s).
        wait_passes(bg.config.state_dir, "web", 3, at_least=2.5)
        st = status(bg)
        assert st["desired"] == 3 and st["paused"] is True
        assert st["last_decision"]["policy"] == "manual" and "paused" in st["last_decision"]["limits"]
        r = http(base, "POST", "/api/groups/web/resume", token=TOKEN)
        assert r.status == 200 and r.json["paused"] is False and r.json["manual_replicas"] is None
        wait_for(lambda: status(bg)["desired"] == 1, 30, what="policy scales back to min after resume")
        wait_for(lambda: len(status(bg)["replicas"]) == 1, 30, what="extra replicas removed")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    scaled = [x for x in lines if x.get("event") == "scaled"]
    # One log line per count change, each with its reason: up to 3 by hand, down to 1 by the policy.
    assert [(x["data"]["current"], x["data"]["desired"]) for x in scaled] == [(1, 3), (3, 1)], scaled
    assert all(x["group"] == "web" and x["data"]["reason"] in x["msg"] for x in scaled)
    assert "manual" in scaled[0]["data"]["reason"] or "paused" in scaled[0]["data"]["reason"]
    events = http(base, "GET", "/api/events?group=web&since=2m").json["events"]
    kinds = [e["kind"] for e in events]
    assert "manual" in kinds and kinds.count("decision") >= 2
    assert TOKEN not in buf.getvalue()


def test_pause_stops_the_policy_and_resume_hands_it_back(running: tuple[BackgroundController, str]) -> None:
    bg, base = running
    url = f"http://{bg.config.groups[0].balancer.listen}/work?ms=1"
    assert http(base, "POST", "/api/groups/web/pause", token=TOKEN).json["manual_replicas"] == 1
    # 10 req/s against a target of 2 per replica: the policy would go to max (3) within a pass or two.
    with LoadRunner(url, 10, 40) as runner:
        paused_at = time.time()
        wait_for(lambda: status(bg)["rps"] and status(bg)["rps"] >= 5, 15, what="load seen at the balancer")
        wait_passes(bg.config.state_dir, "web", 3, at_least=4)  # passes that see the load, paused
        st = status(bg)
        assert st["desired"] == 1 and st["paused"] is True, st
        decisions = [
            e
            for e in http(base, "GET", f"/api/events?group=web&since={paused_at}").json["events"]
            if e["type"] == "decision"
        ]
        assert decisions == []  # no count change while paused
        assert http(base, "POST", "/api/groups/web/resume", token=TOKEN).status == 200
        wait_for(lambda: status(bg)["desired"] >= 2, 20, what="policy scales out after resume")
        runner.stop()
    assert runner.result(timeout=30).failed == 0
    wait_for(lambda: len(status(bg)["replicas"]) == 1, 40, what="back to one replica")


# ---------------------------------------------------------------------------------------------- metrics
SPEC_METRICS = {
    "tierscale_replicas": ("gauge", {"group", "state"}),
    "tierscale_desired_replicas": ("gauge", {"group"}),
    "tierscale_metric_value": ("gauge", {"group", "metric"}),
    "tierscale_metric_target": ("gauge", {"group", "metric"}),
    "tierscale_scale_events": ("counter", {"group", "direction"}),
    "tierscale_provision_seconds": ("histogram", {"group", "tier"}),
    "tierscale_reconcile_seconds": ("histogram", {"group"}),
    "tierscale_balancer_reloads": ("counter", {"group", "result"}),
    "tierscale_replacements": ("counter", {"group", "reason"}),
}


def test_metrics_parse_and_carry_every_spec_metric(running: tuple[BackgroundController, str]) -> None:
    bg, base = running
    r = http(base, "GET", "/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.body.decode())}
    for name, (kind, labels) in SPEC_METRICS.items():
        fam = families.get(name)
        assert fam is not None, f"{name} missing"
        assert fam.type == kind, (name, fam.type)
        assert fam.samples, f"{name} has no samples"
        for s in fam.samples:
            got = set(s.labels) - {"le"}
            assert got == labels, (name, s.labels)
            assert s.labels["group"] == "web"

    def value(name: str, sample: str, **labels: str) -> float:
        return sum(
            s.value
            for s in families[name].samples
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
        )

    st = status(bg)
    assert value("tierscale_desired_replicas", "tierscale_desired_replicas") == st["desired"]
    assert value("tierscale_replicas", "tierscale_replicas", state="ready") >= 1
    assert value("tierscale_reconcile_seconds", "tierscale_reconcile_seconds_count") > 0
    assert value("tierscale_provision_seconds", "tierscale_provision_seconds_count", tier="process") >= 1
    assert value("tierscale_provision_seconds", "tierscale_provision_seconds_sum") > 0
    assert value("tierscale_balancer_reloads", "tierscale_balancer_reloads_total", result="ok") >= 1
    assert value("tierscale_metric_target", "tierscale_metric_target", metric="requests_per_replica") == 2
    assert {s.labels["metric"] for s in families["tierscale_metric_value"].samples} == {
        "requests_per_replica"
    }
    # Each count change is counted once, in its direction (zero-valued series exist from the start).
    changes = [
        e
        for e in http(base, "GET", "/api/events?group=web&limit=5000").json["events"]
        if e["kind"] == "scaled"
    ]
    ups = sum(1 for e in changes if e["data"]["desired"] > e["data"]["current"])
    assert value("tierscale_scale_events", "tierscale_scale_events_total", direction="up") == ups
    assert (
        value("tierscale_scale_events", "tierscale_scale_events_total", direction="down")
        == len(changes) - ups
    )
    reasons = {s.labels["reason"] for s in families["tierscale_replacements"].samples}
    assert {"exited", "unhealthy", "vanished"} <= reasons


# ---------------------------------------------------------------------------------------------- openapi
def _validator(doc: dict[str, Any], schema_name: str) -> Any:
    from jsonschema import Draft202012Validator

    # The component schemas resolve against the document itself, as they do inside the OpenAPI file.
    return Draft202012Validator(
        {"$ref": f"#/components/schemas/{schema_name}", "components": doc["components"]}
    )


def test_openapi_document_is_valid_and_describes_every_route(
    running: tuple[BackgroundController, str],
) -> None:
    from openapi_spec_validator import validate

    bg, base = running
    doc = http(base, "GET", "/api/openapi.json").json
    validate(doc)
    assert doc["openapi"].startswith("3.")
    documented = {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops}
    assert bg.controller is not None and bg.api is not None
    served = set()
    for route in bg.api._runner.app.router.routes():  # type: ignore[union-attr]
        if route.method == "HEAD":
            continue
        info = route.resource.get_info() if route.resource else {}
        served.add((route.method, info.get("path") or info.get("formatter")))
    assert served == documented, served ^ documented
    for path, ops in doc["paths"].items():
        for op in ops.values():
            if "security" in op:
                # Every change can be refused as bad, unauthenticated or disabled; a group's can name
                # a group that does not exist.
                wanted = {"400", "401", "403"} | ({"404"} if "{name}" in path else set())
                assert wanted <= set(op["responses"]), path


def test_responses_match_the_openapi_schemas(running: tuple[BackgroundController, str]) -> None:
    _, base = running
    doc = http(base, "GET", "/api/openapi.json").json
    for path, schema in [
        ("/healthz", "Health"),
        ("/api/groups", "GroupList"),
        ("/api/groups/web", "GroupStatus"),
        ("/api/groups/web/series", "Series"),
        ("/api/events?group=web", "Events"),
    ]:
        r = http(base, "GET", path)
        assert r.status == 200
        errors = list(_validator(doc, schema).iter_errors(r.json))
        assert not errors, (path, [e.message for e in errors[:3]])
    for method, path, body in [
        ("GET", "/api/groups/nope", None),
        ("GET", "/api/events?since=x", None),
        ("POST", "/api/groups/web/scale", {"replicas": 99}),
    ]:
        r = http(base, method, path, body, token=TOKEN)
        assert r.status in (400, 404)
        assert not list(_validator(doc, "Error").iter_errors(r.json)), r.json
