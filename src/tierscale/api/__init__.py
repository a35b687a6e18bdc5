"""The controller's HTTP side: JSON API, Prometheus `/metrics`, the live dashboard (SPEC §3)."""

from tierscale.api.server import ApiServer, ApiStartError, build_app

__all__ = ["ApiServer", "ApiStartError", "build_app"]
