"""Where a group's files live under the state dir, and the lock that makes one controller per group."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from tierscale.private_dirs import make_private_dir


class ControllerError(Exception):
    """A condition that stops `run` or `down` with a one-line message (exit 1)."""


def group_dir(state_dir: Path, group: str) -> Path:
    return Path(state_dir) / "groups" / group


@contextlib.contextmanager
def group_lock(state_dir: Path, group: str) -> Iterator[None]:
    """One controller per group: a second `run` (or a `down` during a run) refuses with a clear message."""
    d = group_dir(state_dir, group)
    make_private_dir(d)
    path = d / "controller.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise ControllerError(
                f"group {group} is already managed by another tierscale process (pid {holder}); stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
