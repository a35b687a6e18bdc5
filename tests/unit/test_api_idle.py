"""The HTTP API of controllers that need no nginx: one started without its token variable (mutations are
then refused), and API addresses that are taken. Each runs one replica-less group (min 0, no balancer).

The API of a controller with a real group behind nginx is tested in tests/e2e/test_api.py.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.api import http, idle_config, wait_api
from helpers.e2e import free_port, wait_for
from tierscale.controller.down import down
from tierscale.service import BackgroundController


@pytest.fixture(scope="module")
def tokenless(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A controller started without its token variable set: no replicas, no balancer, cheap."""
    state_dir = tmp_path_factory.mktemp("tokenless") / "state"
    port = free_port()
    env = f"TIERSCALE_UNSET_{os.getpid()}"
    assert env not in os.environ
    cfg = idle_config(state_dir, f"{{listen: '127.0.0.1:{port}', token_env: {env}}}")
    base = f"http://127.0.0.1:{port}"
    with BackgroundController(cfg):
        wait_api(base)
        yield base
    down(cfg)


def test_without_a_configured_token_mutations_are_forbidden(tokenless: str) -> None:
    for token in (None, "anything", ""):
        r = http(tokenless, "POST", "/api/groups/solo/scale", {"replicas": 1}, token=token)
        assert r.status == 403, (token, r.status)
        assert "disabled" in r.json["error"] and "TIERSCALE_UNSET_" in r.json["error"]
    assert http(tokenless, "POST", "/api/groups/solo/pause", token="x").status == 403
    # Reading stays open.
    assert http(tokenless, "GET", "/api/groups/solo").json["desired"] == 0


# ---------------------------------------------------------------------------------------------- server
def test_port_in_use_stops_run_only_when_the_address_was_configured(tmp_path: Path) -> None:
    import asyncio

    from tierscale.controller.locks import ControllerError
    from tierscale.controller.runner import Controller
    from tierscale.service import serve

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    cfg = idle_config(tmp_path / "state", f"{{listen: '127.0.0.1:{port}'}}")
    try:
        controller = Controller(cfg)
        with pytest.raises(ControllerError, match=rf"api.listen 127.0.0.1:{port}: .*in use"):
            asyncio.run(serve(controller, asyncio.Event(), api="required"))  # as `tierscale run` does
        controller.close()
        with BackgroundController(cfg) as bg:  # demo, tests, benches: logged, the loop runs on
            wait_for(lambda: bg.status("solo")["desired"] == 0, 10, what="a pass")
            assert bg.controller is not None and bg.api is None
    finally:
        blocker.close()
        down(cfg)


def test_default_address_taken_is_logged_and_run_goes_on(tmp_path: Path) -> None:
    """A second controller (another config) on a host where 127.0.0.1:9900 is taken still scales."""
    import asyncio

    from tierscale.controller.runner import Controller
    from tierscale.service import serve

    blocker = socket.socket()
    try:
        blocker.bind(("127.0.0.1", 9900))
        blocker.listen(1)
    except OSError:
        pass  # someone else holds the default port: the clash this test is about exists already
    cfg = idle_config(tmp_path / "state", None)
    assert cfg.api.listen == "127.0.0.1:9900"
    controller = Controller(cfg)

    async def one_pass() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(serve(controller, stop, api="required"))
        for _ in range(100):
            await asyncio.sleep(0.1)
            if controller.groups["solo"].status().last_decision is not None:
                break
        stop.set()
        await task

    try:
        asyncio.run(one_pass())
        assert controller.groups["solo"].status().last_decision is not None
    finally:
        controller.close()
        blocker.close()
        down(cfg)
