"""Connecting to an OpenStack cloud named in clouds.yaml, and turning SDK failures into typed one-line
errors (by exception class and HTTP status, never by the message).

Credentials come only from clouds.yaml (and its secure.yaml): the group config names a cloud, never a
password. `OS_CLOUD` picks the cloud when the template does not, and `OS_CLIENT_CONFIG_FILE` points at the
file as it does for every OpenStack tool; other `OS_*` variables (OS_PASSWORD, OS_AUTH_URL, ...) are
ignored on purpose, so the controller's environment cannot silently change which cloud it manages.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import keystoneauth1.exceptions as ks_exc
import openstack
import openstack.exceptions as os_exc
import requests
from openstack.config import loader

from tierscale.providers.base import (
    CreateRejected,
    ProviderError,
    ReplicaGone,
    TemplateError,
    TierUnavailable,
)

# Every SDK call runs in a controller thread; a hung endpoint must not hold that thread forever.
API_TIMEOUT = 30.0

SDK_ERRORS: tuple[type[BaseException], ...] = (
    os_exc.SDKException,
    ks_exc.ClientException,
    requests.RequestException,
)


class Cloud:
    """One authenticated-on-demand connection plus a count of the HTTP calls it made."""

    def __init__(self, name: str, conn: openstack.connection.Connection, config_file: str | None) -> None:
        self.name = name
        self.conn = conn
        self.config_file = config_file
        self._calls = 0
        self._calls_lock = threading.Lock()
        # keystoneauth sends everything (token requests included) through this requests session, so a
        # response hook sees every HTTP call the provider causes: that is what the benchmark reports.
        conn.session.session.hooks["response"].append(self._count)

    def _count(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        with self._calls_lock:
            self._calls += 1

    @property
    def api_calls(self) -> int:
        with self._calls_lock:
            return self._calls

    def close(self) -> None:
        self.conn.close()


def _config_files() -> tuple[list[str], list[str]]:
    files = list(loader.CONFIG_FILES)
    secure = list(loader.SECURE_FILES)
    if os.environ.get("OS_CLIENT_CONFIG_FILE"):
        files.insert(0, os.environ["OS_CLIENT_CONFIG_FILE"])
    if os.environ.get("OS_CLIENT_SECURE_FILE"):
        secure.insert(0, os.environ["OS_CLIENT_SECURE_FILE"])
    return files, secure


def open_cloud(cloud: str | None, field: str = "template.cloud") -> Cloud:
    """Read the named cloud from clouds.yaml. No network traffic: authentication happens on first use."""
    name = cloud or os.environ.get("OS_CLOUD")
    if not name:
        raise TemplateError(f"{field}: not set and OS_CLOUD is empty: name a cloud from clouds.yaml")
    files, secure = _config_files()
    try:
        config = loader.OpenStackConfig(config_files=files, secure_files=secure, load_envvars=False)
    except os_exc.ConfigException as exc:
        raise TemplateError(f"cannot read clouds.yaml: {exc}") from None
    if name not in config.cloud_config.get("clouds", {}):
        where = config.config_filename or (
            "no clouds.yaml found: looked at $OS_CLIENT_CONFIG_FILE, ./clouds.yaml, "
            "~/.config/openstack/clouds.yaml, /etc/openstack/clouds.yaml"
        )
        raise TemplateError(f"{field}: cloud {name!r} is not in clouds.yaml ({where})")
    try:
        region = config.get_one(cloud=name, api_timeout=API_TIMEOUT)
        conn = openstack.connection.Connection(config=region)
    except SDK_ERRORS as exc:
        raise error_class(exc, TemplateError)(
            f"{field}: cloud {name!r} in {config.config_filename}: {first_line(exc)}"
        ) from None
    return Cloud(name, conn, config.config_filename)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def http_status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if status is None:
        status = getattr(exc, "http_status", None)
    return status if isinstance(status, int) else None


# Statuses that refuse a create for want of room: quota (Nova answers 403 "Quota exceeded", older
# releases 413), a conflict with the project's state (409).
_REFUSED_STATUSES = frozenset({403, 409, 413})
_UNAVAILABLE_STATUSES = frozenset({502, 503, 504})


def _unreachable(exc: BaseException) -> bool:
    return isinstance(
        exc,
        ks_exc.ConnectFailure
        | ks_exc.ConnectTimeout
        | ks_exc.DiscoveryFailure
        | ks_exc.Unauthorized
        | requests.ConnectionError
        | requests.Timeout,
    )


def error_class(exc: BaseException, refused: type[ProviderError] = ProviderError) -> type[ProviderError]:
    """The ProviderError subclass for an SDK failure. `refused`: what an error answer means to the
    caller (CreateRejected for a create; TemplateError for a lookup of the template's names)."""
    if _unreachable(exc):
        return TierUnavailable  # no answer, or the cloud refuses these credentials: nothing works
    status = http_status(exc)
    if status in _UNAVAILABLE_STATUSES:
        return TierUnavailable
    if isinstance(exc, os_exc.NotFoundException) and refused is ProviderError:
        return ReplicaGone
    if refused is CreateRejected and status is not None and status not in _REFUSED_STATUSES and status < 500:
        return TemplateError  # 400: the request the template makes is invalid (a bad key_name, ...)
    return refused


def describe(exc: BaseException, cloud: Cloud) -> str:
    """What went wrong, in the cloud's own words where it gave some, on one line."""
    if isinstance(exc, ks_exc.Unauthorized):
        return f"authentication failed for cloud {cloud.name!r}: check its credentials in {cloud.config_file}"
    if isinstance(exc, ks_exc.ConnectFailure | ks_exc.ConnectTimeout | requests.ConnectionError):
        return f"cannot reach cloud {cloud.name!r}: {first_line(exc)}"
    if isinstance(exc, ks_exc.EndpointNotFound | os_exc.EndpointNotFound):
        return f"cloud {cloud.name!r} has no such service endpoint: {first_line(exc)}"
    if isinstance(exc, os_exc.HttpException):
        # `details` is the service's message ("Quota exceeded for instances: ..."); the exception's own
        # text repeats the URL around it.
        details = (exc.details or "").strip()
        text = details.splitlines()[0] if details else first_line(exc)
        status = http_status(exc)
        return f"{text} (HTTP {status})" if status else text
    return first_line(exc)
