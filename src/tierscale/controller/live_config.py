"""What a new config changes on a running controller, and what it may not change.

Pure: the running config and the new one in, the groups to add, stop and reconfigure out, or one
`ApplyError` naming the field that cannot change live. The runner builds and commits the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tierscale.config.models import Config, GroupBase
from tierscale.config.revision import template_revision


class ApplyError(Exception):
    """A config the running controller cannot take; nothing was changed (exit 2 at the CLI)."""


@dataclass(frozen=True)
class ConfigDiff:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: dict[str, tuple[str, ...]] = field(default_factory=dict)  # group → top-level keys changed
    new_revision: tuple[str, ...] = ()  # groups whose template revision changed: a rollout starts

    def summary(self) -> dict[str, Any]:
        return {
            "added": list(self.added),
            "removed": list(self.removed),
            "changed": {k: list(v) for k, v in self.changed.items()},
            "rollouts": list(self.new_revision),
        }

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


def diff(old: Config, new: Config) -> ConfigDiff:
    if old.state_dir != new.state_dir:
        raise ApplyError("state_dir: cannot change on a running controller; restart it with the new file")
    if old.api != new.api:
        raise ApplyError("api: cannot change on a running controller; restart it with the new file")
    if old.ha != new.ha:
        raise ApplyError("ha: cannot change on a running controller; restart it with the new file")
    before = {g.name: g for g in old.groups}
    after = {g.name: g for g in new.groups}
    changed: dict[str, tuple[str, ...]] = {}
    revisions: list[str] = []
    for i, g in enumerate(new.groups):
        was = before.get(g.name)
        if was is None:
            continue
        if was.tier != g.tier:
            raise ApplyError(
                f"groups[{i}].tier: group {g.name} cannot change tier while it runs; give the new one "
                "another name (and `tierscale down` the old one)"
            )
        keys = _changed_keys(was, g)
        if keys:
            changed[g.name] = keys
        if template_revision(was.template) != template_revision(g.template):  # type: ignore[attr-defined]
            revisions.append(g.name)
    return ConfigDiff(
        added=tuple(n for n in after if n not in before),
        removed=tuple(n for n in before if n not in after),
        changed=changed,
        new_revision=tuple(revisions),
    )


def _changed_keys(a: GroupBase, b: GroupBase) -> tuple[str, ...]:
    da, db = a.model_dump(mode="json"), b.model_dump(mode="json")
    return tuple(sorted(k for k in da.keys() | db.keys() if da.get(k) != db.get(k)))
