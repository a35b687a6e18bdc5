"""A controller with its API beside it: `tierscale run`, and `BackgroundController` for the demo,
benchmarks and tests (the same pair on its own event loop in a thread).

The API is built on the controller's handle; neither package imports the other's internals.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, Literal

from tierscale.api import ApiServer, ApiStartError
from tierscale.config.models import Config
from tierscale.controller.locks import ControllerError
from tierscale.controller.runner import Controller

log = logging.getLogger("tierscale.controller")

# "required" (`run`: a clash on an explicit api.listen stops it), "optional" (logged, the loops run on:
# tests, demo), or "off" (no HTTP server at all: benchmarks of what it costs).
ApiMode = Literal["required", "optional", "off"]


async def start_api(controller: Controller, mode: ApiMode, token: str | None) -> ApiServer | None:
    if mode == "off":
        return None
    config = controller.config
    server = ApiServer(controller.handle(), config.api, token=token)
    try:
        await server.start()
    except ApiStartError as exc:
        # A listen address the user wrote down must work; the default one is best effort, so that a
        # second controller on the same host (another config) still scales, saying why it has no API.
        explicit = "api" in config.model_fields_set and "listen" in config.api.model_fields_set
        if mode == "required" and explicit:
            raise ControllerError(f"{exc} (another tierscale run?)") from None
        log.error("%s: running without the API and dashboard (set api.listen to a free port)", exc)
        return None
    return server


async def serve(
    controller: Controller,
    stop: asyncio.Event,
    api: ApiMode = "optional",
    token: str | None = None,
    servers: list[ApiServer] | None = None,
) -> None:
    """Run the controller until `stop`, with its API started once the group locks are held.

    The running API server is appended to `servers` (for callers that want its address) and stopped
    before this returns."""
    running: list[ApiServer] = servers if servers is not None else []

    async def started() -> None:
        server = await start_api(controller, api, token)
        if server is not None:
            running.append(server)

    try:
        await controller.run(stop, started=started)
    finally:
        for server in running:
            await server.stop()
        running.clear()


async def reload(controller: Controller, path: str) -> bool:
    """SIGHUP: re-read the file `run` was started with and apply it; a bad file changes nothing."""
    from tierscale.balancer.base import BalancerError
    from tierscale.config.loader import ConfigError, load_config
    from tierscale.controller.live_config import ApplyError
    from tierscale.providers.base import ProviderError

    try:
        config = await asyncio.to_thread(load_config, path)
        change = await controller.apply(config)
    except ConfigError as exc:
        log.error("SIGHUP: %s not applied, the running config stays: %s", path, exc.first_line())
        return False
    except (ApplyError, ControllerError, ProviderError, BalancerError) as exc:
        log.error("SIGHUP: %s not applied, the running config stays: %s", path, exc)
        return False
    log.info("SIGHUP: %s applied: %s", path, change.summary() if not change.empty else "no change")
    return True


def run_controller(config: Config, dry_run: bool = False, once: bool = False, path: str | None = None) -> int:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    # Provider calls (docker, libvirt, openstack SDKs) block; a roomy pool keeps groups independent.
    loop.set_default_executor(ThreadPoolExecutor(max_workers=32, thread_name_prefix="tierscale"))
    # Taken out of the environment before anything is started: replicas of the process tier and nginx
    # inherit the controller's environment, and a workload that prints its own must not show the token.
    token = os.environ.pop(config.api.token_env, None)
    controller = Controller(config, dry_run=dry_run)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[bool]] = set()
    if path is not None and not once:

        def on_hup() -> None:
            task = loop.create_task(reload(controller, path))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        if once:
            loop.run_until_complete(controller.run_once())
        else:
            loop.run_until_complete(serve(controller, stop, api="required", token=token))
    finally:
        controller.close()
        loop.close()
    return 0


class BackgroundController:
    """A controller and its API on their own event loop in a thread."""

    def __init__(self, config: Config, dry_run: bool = False, api: ApiMode = "optional", **kw: Any) -> None:
        self.config = config
        self.dry_run = dry_run
        self.api_mode: ApiMode = api
        self.kw = kw  # passed to Controller: clock, telemetry, provider/balancer/prober factories
        self.controller: Controller | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self.error: BaseException | None = None
        self._servers: list[ApiServer] = []

    @property
    def api(self) -> ApiServer | None:
        """The API server while it runs (None with api="off", or when its address was taken)."""
        return self._servers[0] if self._servers else None

    def start(self, timeout: float = 30.0) -> BackgroundController:
        self._thread = threading.Thread(target=self._main, name="tierscale-controller", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError("controller did not start")
        if self.error is not None:
            raise self.error
        return self

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            self.controller = Controller(self.config, dry_run=self.dry_run, **self.kw)
            self._stop = asyncio.Event()
        except BaseException as exc:
            self.error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_until_complete(
                serve(self.controller, self._stop, api=self.api_mode, servers=self._servers)
            )
        except BaseException as exc:
            self.error = exc
        finally:
            self.controller.close()
            loop.close()

    def call(self, fn: Any, *args: Any, timeout: float = 10.0) -> Any:
        """Run a plain function on the controller's loop thread (the group state is not thread-safe)."""
        assert self.loop is not None
        fut: Future[Any] = Future()

        def run() -> None:
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return fut.result(timeout)

    def status(self, group: str) -> dict[str, Any]:
        assert self.controller is not None
        gc = self.controller.groups[group]
        return self.call(lambda: gc.status().model_dump(mode="json"))

    def stop(self, timeout: float = 60.0) -> None:
        if self.loop is not None and self._stop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> BackgroundController:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
