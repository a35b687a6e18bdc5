"""A replica's revision: a stable hash of the template fields that define what it runs.

Fields that only say where or how to reach the tier (a Docker host, a libvirt URI, a port range, a cloud
name, a boot timeout) are left out, so moving a group to another engine is not a new version of it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

# Per template model: the keys that are placement or access, not content.
NOT_CONTENT: dict[str, frozenset[str]] = {
    "ProcessTemplate": frozenset({"port_range"}),
    "DockerTemplate": frozenset({"host"}),
    "LibvirtTemplate": frozenset({"uri", "overlay_dir"}),
    "OpenstackTemplate": frozenset({"cloud", "boot_timeout"}),
}

REVISION_LENGTH = 12


def template_revision(template: BaseModel | dict[str, Any]) -> str:
    """12 hex digits of sha256 over the template's content fields in canonical JSON."""
    if isinstance(template, BaseModel):
        skip = NOT_CONTENT.get(type(template).__name__, frozenset())
        body = template.model_dump(mode="json", exclude=set(skip))
    else:
        body = dict(template)
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:REVISION_LENGTH]
