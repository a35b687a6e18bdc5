"""The dashboard's files, shipped inside the package (no CDN: the page works offline and air-gapped)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

_TYPES = {
    ".html": ("text/html", "utf-8"),
    ".js": ("text/javascript", "utf-8"),
    ".css": ("text/css", "utf-8"),
    ".svg": ("image/svg+xml", "utf-8"),
}


@dataclass(frozen=True)
class Asset:
    data: bytes
    content_type: str
    charset: str | None


def load_assets() -> dict[str, Asset]:
    """Every file of `static/` by name, read once: they are small and never change while running."""
    out: dict[str, Asset] = {}
    for entry in resources.files("tierscale.api").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        if entry.is_file() and suffix in _TYPES:
            ctype, charset = _TYPES[suffix]
            out[entry.name] = Asset(entry.read_bytes(), ctype, charset)
    return out
