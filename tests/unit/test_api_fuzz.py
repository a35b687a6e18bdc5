"""Schemathesis against the OpenAPI document of a real running controller: every operation, with the
right token, without one and with a wrong one. Whatever it sends, the answer is a status the document
declares, with the declared content type and shape, never a 5xx, and a refused change changes nothing.

The document is fuzzed twice: as served (random group names, so mostly 404s on the group routes) and
with the group name pinned to the running group, so bodies and queries reach the real handlers. The
controller runs one cheap group (process tier, min 0, max 1, no balancer).

Budget: MAX_EXAMPLES per operation and no example database, so a run is bounded and repeatable; the
whole module takes well under the 2 minutes `make test` allows it.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from helpers.api import cleanup, http, idle_config, wait_api
from helpers.e2e import free_port, wait_for
from tierscale.api.openapi import openapi_document
from tierscale.service import BackgroundController

pytestmark = pytest.mark.e2e

TOKEN = "fuzz-token-" + os.urandom(8).hex()
TOKEN_ENV = f"TIERSCALE_FUZZ_TOKEN_{os.getpid()}"
GROUP = "solo"  # the group idle_config() defines
MAX_EXAMPLES = 50

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]


def _pinned(doc: dict[str, Any]) -> dict[str, Any]:
    """The document with every group-name parameter narrowed to the running group."""
    doc = copy.deepcopy(doc)
    for ops in doc["paths"].values():
        for op in ops.values():
            for param in op.get("parameters", []):
                if param["name"] == "name":
                    param["schema"] = {"type": "string", "enum": [GROUP]}
                elif param["name"] == "group":  # an empty ?group= means every group
                    param["schema"] = {"type": "string", "enum": [GROUP, ""]}
    return doc


def _load(doc: dict[str, Any]) -> Any:
    loaded = schemathesis.openapi.from_dict(doc)
    loaded.config.generation.update(max_examples=MAX_EXAMPLES, database="none")
    return loaded


served = _load(openapi_document())
pinned = _load(_pinned(openapi_document()))


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BackgroundController, str]]:
    os.environ[TOKEN_ENV] = TOKEN
    state_dir: Path = tmp_path_factory.mktemp("fuzz") / "state"
    port = free_port()
    cfg = idle_config(state_dir, f"{{listen: '127.0.0.1:{port}', token_env: {TOKEN_ENV}}}")
    base = f"http://127.0.0.1:{port}"
    try:
        with BackgroundController(cfg) as bg:
            wait_api(base)
            yield bg, base
    finally:
        os.environ.pop(TOKEN_ENV, None)
        cleanup(cfg)


def _held(bg: BackgroundController) -> tuple[Any, ...]:
    """What only a change through the API sets: the pause flag and the count a pause holds."""

    def read() -> tuple[Any, ...]:
        assert bg.controller is not None
        st = bg.controller.groups[GROUP].status()
        return st.paused, st.manual_replicas

    return tuple(bg.call(read))


def _is_mutation(case: Any) -> bool:
    # The coverage phase also sends methods a path does not serve (POST /healthz): those are 405s.
    return bool(case.method.upper() == "POST" == case.operation.method.upper())


def _fuzz_with_token(case: Any, controller: tuple[BackgroundController, str]) -> None:
    bg, base = controller
    before = _held(bg)
    response = case.call_and_validate(
        base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS
    )
    if _is_mutation(case) and response.status_code >= 400:
        assert _held(bg) == before, (case.formatted_path, case.body, response.text)


@served.parametrize()
def test_served_document_with_the_token(case: Any, controller: tuple[BackgroundController, str]) -> None:
    _fuzz_with_token(case, controller)


@pinned.parametrize()
def test_running_group_with_the_token(case: Any, controller: tuple[BackgroundController, str]) -> None:
    _fuzz_with_token(case, controller)


@pinned.parametrize()
def test_running_group_without_or_with_a_wrong_token(
    case: Any, controller: tuple[BackgroundController, str]
) -> None:
    bg, base = controller
    before = _held(bg)
    for auth in ({}, {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Basic {TOKEN}"}):
        case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        response = case.call_and_validate(base_url=base, headers=auth, checks=CHECKS)
        if _is_mutation(case):
            assert response.status_code == 401, (case.formatted_path, auth, response.text)
    assert _held(bg) == before


# ---------------------------------------------------------------------------------------------- fixed cases
def test_the_fuzzed_document_is_the_served_one(controller: tuple[BackgroundController, str]) -> None:
    _, base = controller
    r = http(base, "GET", "/api/openapi.json")
    assert r.status == 200 and r.json == json.loads(json.dumps(openapi_document()))


# Bodies schemathesis is unlikely to build: each must be a 400 naming the field and change nothing.
BAD_BODIES = [
    (b"[" * 5000, "body", "nested too deeply"),
    (b'{"replicas": ' + b"[" * 3000, "body", "nested too deeply"),
    (b'{"replicas": 1' + b"0" * 5000 + b"}", "body", "not valid JSON"),
    (b'{"replicas": NaN}', "replicas", "integer"),
    (b'{"replicas": 1e999}', "replicas", "integer"),
    (b'{"replicas": -1}', "replicas", "between"),
    (b'{"replicas": 1, "x\\ny": 2}', "x\ny", "unknown field"),
    (b'{"replicas": 1, "' + b"k" * 500 + b'": 2}', "k" * 500, "unknown field"),
    (b"\x00", "body", "not valid JSON"),
]


@pytest.mark.parametrize("paused", [False, True], ids=["running", "paused"])
def test_a_refused_change_leaves_the_group_as_it_was(
    controller: tuple[BackgroundController, str], paused: bool
) -> None:
    bg, base = controller
    auth = {"token": TOKEN}
    assert http(base, "POST", "/api/groups/solo/resume", **auth).status == 200
    if paused:
        r = http(base, "POST", "/api/groups/solo/scale", {"replicas": 1}, **auth)
        assert r.status == 200 and r.json["manual_replicas"] == 1
        wait_for(lambda: bg.status(GROUP)["desired"] == 1, 10, what="the held count applied")
    before = _held(bg), bg.status(GROUP)["desired"]
    try:
        for raw, field, words in BAD_BODIES:
            for verb in ("scale", "pause", "resume"):
                r = http(base, "POST", f"/api/groups/solo/{verb}", raw=raw, **auth)
                assert r.status == 400, (verb, raw[:40], r.body)
                err = r.json
                assert "\n" not in err["error"] and len(err["error"]) < 300, err
                if verb == "scale":
                    assert err["field"] == field and words in err["error"], (raw[:40], err)
        too_big = b'{"replicas": 1, "pad": "' + b"x" * 70_000 + b'"}'
        r = http(base, "POST", "/api/groups/solo/scale", raw=too_big, **auth)
        assert r.status == 413 and r.json["field"] == "body"
        assert (_held(bg), bg.status(GROUP)["desired"]) == before
    finally:
        http(base, "POST", "/api/groups/solo/resume", **auth)


def test_a_change_the_event_store_cannot_record_is_still_answered_truthfully(
    controller: tuple[BackgroundController, str],
) -> None:
    """With the history store refusing writes, pause still pauses, and the answer says so (not a 500)."""
    bg, base = controller
    assert bg.controller is not None
    store = bg.controller.store

    def writable(on: bool) -> None:
        # The controller's own connection, under its own lock: every write through it now fails.
        with store._lock:
            store._db.execute(f"PRAGMA query_only = {'OFF' if on else 'ON'}")

    assert http(base, "POST", "/api/groups/solo/resume", token=TOKEN).status == 200
    bg.call(writable, False)
    try:
        r = http(base, "POST", "/api/groups/solo/pause", token=TOKEN)
        assert r.status == 200 and r.json["paused"] is True
        assert _held(bg)[0] is True
    finally:
        bg.call(writable, True)
        http(base, "POST", "/api/groups/solo/resume", token=TOKEN)
    assert _held(bg) == (False, None)
