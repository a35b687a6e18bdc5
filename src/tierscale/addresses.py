"""`host:port` addresses, IPv6 literals in brackets (`[2001:db8::1]:80`), parsed and written in one place.

Bottom layer: imports nothing from tierscale, so config, balancer, controller, api and the providers can
all use it. Callers that need stricter hosts (a config listen address, a name pasted into nginx's config)
pass `host_ok`; the error says which part was wrong (`AddressError.part`) so each caller keeps its own
words.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Literal

AddressPart = Literal["form", "host", "port"]


class AddressError(ValueError):
    """Not a usable `host:port`. `part`: "form" (no port, bad brackets), "host" (refused by `host_ok`),
    or "port" (not 1..65535)."""

    def __init__(self, value: object, part: AddressPart, message: str) -> None:
        super().__init__(message)
        self.value = value
        self.part: AddressPart = part


def split_address(value: str, host_ok: Callable[[str], bool] | None = None) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port), the host without brackets.

    An IPv6 literal must be in brackets (without them the port is ambiguous); the host is checked (by
    `host_ok`, on the unbracketed form of a name or IPv4 literal) before the port is."""
    if not isinstance(value, str) or ":" not in value:
        raise AddressError(value, "form", f"expected host:port (got {value!r})")
    host, _, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise AddressError(value, "form", f"expected [ipv6]:port (got {value!r})") from None
        host = host[1:-1]
    elif not host or ":" in host or "[" in host or "]" in host:
        raise AddressError(value, "form", f"expected host:port or [ipv6]:port (got {value!r})")
    elif host_ok is not None and not host_ok(host):
        raise AddressError(value, "host", f"bad host in {value!r}")
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise AddressError(value, "port", f"port must be 1..65535 (got {value!r})")
    return host, int(port_text)


def format_address(host: str, port: int | str) -> str:
    """(host, port) -> `host:port`, an IPv6 literal in brackets."""
    host = host.strip("[]") if host.startswith("[") else host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def host_of(value: str) -> str:
    """The host of `host`, `host:port`, `[v6]` or `[v6]:port` (an HTTP Host header), without brackets;
    a bare IPv6 literal is its own host."""
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:
        return value.partition(":")[0]
    return value


__all__ = ["AddressError", "format_address", "host_of", "split_address"]
