"""Run a Controller on its own event loop in a thread: for the demo, the benchmarks and the tests."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from types import TracebackType
from typing import Any, TypeVar

from tierscale.controller.runner import Controller

T = TypeVar("T")


class BackgroundController:
    def __init__(self, config: Any, dry_run: bool = False) -> None:
        self.config = config
        self.dry_run = dry_run
        self.controller: Controller | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self.error: BaseException | None = None

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
            self.controller = Controller(self.config, dry_run=self.dry_run)
            self._stop = asyncio.Event()
        except BaseException as exc:
            self.error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_until_complete(self.controller.run(self._stop))
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
        return self.call(self.controller.groups[group].status)

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
