"""The templates of the revisions a group has run, so it can go back to one (rollback, `rollout undo`).

A replica's marks carry only its revision's hash; what that revision runs (image, env, command, …) is
kept here, in the event store (0600, beside the rest of the group's history), written when a revision is
first declared. A provider for an old revision is the group's current config with that old template.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from tierscale.config.models import GroupBase
from tierscale.config.revision import template_revision
from tierscale.eventstore import EventStore
from tierscale.providers.base import Provider
from tierscale.providers.fake import FakeProvider


class Templates(Protocol):
    def known(self, revision: str) -> bool: ...

    def provider(self, revision: str) -> Provider:
        """A provider whose new replicas are of `revision`; KeyError when its template is unknown."""
        ...


class StoredTemplates:
    def __init__(self, group: GroupBase, store: EventStore, build: Callable[[GroupBase], Provider]) -> None:
        self.store = store
        self.build = build
        self.group = group
        self.declare(group)

    def declare(self, group: GroupBase) -> str:
        """The config the group now runs under; its template is remembered under its revision."""
        self.group = group
        template = group.template  # type: ignore[attr-defined]
        revision = template_revision(template)
        key = _key(revision)
        if self.store.get_state(group.name, key) is None:
            self.store.put_state(group.name, key, template.model_dump(mode="json"))
        return revision

    def known(self, revision: str) -> bool:
        return bool(revision) and self.store.get_state(self.group.name, _key(revision)) is not None

    def group_for(self, revision: str) -> GroupBase:
        body = self.store.get_state(self.group.name, _key(revision))
        if body is None:
            raise KeyError(revision)
        current = self.group.template  # type: ignore[attr-defined]
        # The rest of the config (bounds, health, balancer) stays what it is now: only what runs goes back.
        return self.group.model_copy(update={"template": type(current).model_validate(body)})

    def provider(self, revision: str) -> Provider:
        return self.build(self.group_for(revision))


class FakeTemplates:
    """Every revision is known; the fake tier makes replicas of whichever is asked for."""

    def __init__(self, provider: FakeProvider, unknown: frozenset[str] = frozenset()) -> None:
        self.base = provider
        self.unknown = set(unknown)

    def known(self, revision: str) -> bool:
        return bool(revision) and revision not in self.unknown

    def provider(self, revision: str) -> Provider:
        if not self.known(revision):
            raise KeyError(revision)
        return self.base.for_revision(revision)


def _key(revision: str) -> str:
    return f"template:{revision}"
