"""make_private_dir: every directory it creates is 0700, whatever the umask; existing ones are left alone."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tierscale.private_dirs import make_private_dir


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_every_created_level_is_private(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    old = os.umask(0o022)
    try:
        make_private_dir(tmp_path / "state" / "groups" / "web" / "nginx")
    finally:
        os.umask(old)
    created = [tmp_path / "state", tmp_path / "state/groups", tmp_path / "state/groups/web"]
    created.append(tmp_path / "state/groups/web/nginx")
    assert [mode(p) for p in created] == [0o700] * 4
    assert mode(tmp_path) == 0o755  # it existed: not ours to change
    make_private_dir(tmp_path / "state" / "groups")  # already there: no error, no change
    assert mode(tmp_path / "state/groups") == 0o700
