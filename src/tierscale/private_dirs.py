"""State directories readable by their owner only, every level of them.

`Path.mkdir(mode=0o700, parents=True)` applies the mode to the last component only; the parents it creates
get the process umask (usually 0755), which left `groups/` and the balancer's prefix listable by anyone.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["make_private_dir"]


def make_private_dir(path: Path) -> None:
    """Create `path` and any missing parents with mode 0700; existing directories are left as they are."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700, exist_ok=True)
