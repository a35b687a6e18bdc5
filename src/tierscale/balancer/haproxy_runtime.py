"""HAProxy's Runtime API over its admin socket: one command per connection, answers as text.

Only what the balancer needs: change a server slot's address and state, read every server's live
state and counters (`show stat`, parsed by its header so a column added by a later version moves
nothing), save the server state for a reload. Errors come back as one line naming the command.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

# HAProxy answers these on success; anything else from a `set` command is its complaint.
_QUIET_OK = ("", "no need to change")


class HAProxyRuntimeError(Exception):
    """The socket could not be reached, or HAProxy refused a command (its words)."""


@dataclass(frozen=True)
class ServerRow:
    backend: str
    name: str
    status: str  # UP, "no check" (up, unchecked), MAINT, DRAIN, DOWN, ...
    address: str  # "ip:port" as HAProxy shows it
    sessions: int  # scur: sessions on it now (active requests, not idle pooled connections)
    total: int  # stot: sessions since start
    rate: int  # sessions per second over the last second

    @property
    def in_service(self) -> bool:
        return self.status in ("UP", "no check") or self.status.startswith("UP ")


class RuntimeAPI:
    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout

    def command(self, line: str) -> str:
        if "\n" in line or ";" in line:
            raise ValueError(f"one command per call: {line!r}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(self.timeout)
                s.connect(str(self.path))
                s.sendall(line.encode() + b"\n")
                chunks = []
                while data := s.recv(65536):
                    chunks.append(data)
        except OSError as exc:
            raise HAProxyRuntimeError(f"haproxy runtime socket {self.path}: {exc.strerror or exc}") from exc
        return b"".join(chunks).decode(errors="replace")

    def answers(self) -> bool:
        try:
            return "Name: HAProxy" in self.command("show info")
        except HAProxyRuntimeError:
            return False

    def set_command(self, line: str) -> None:
        """A `set …` command; HAProxy's own words if it refused."""
        out = self.command(line).strip()
        if out and not any(out.startswith(ok) for ok in _QUIET_OK if ok):
            raise HAProxyRuntimeError(f"haproxy refused {line!r}: {out.splitlines()[0]}")

    def set_server(
        self, backend: str, server: str, *, address: tuple[str, int] | None = None, state: str
    ) -> None:
        if address is not None:
            host, port = address
            self.set_command(f"set server {backend}/{server} addr {host} port {port}")
        self.set_command(f"set server {backend}/{server} state {state}")

    def servers(self, backend: str) -> list[ServerRow]:
        text = self.command("show stat")
        lines = text.splitlines()
        if not lines or not lines[0].startswith("# "):
            raise HAProxyRuntimeError(f"haproxy show stat: unexpected answer {text[:80]!r}")
        header = lines[0][2:].split(",")
        col = {name: i for i, name in enumerate(header)}
        for needed in ("pxname", "svname", "status", "scur", "stot", "rate", "addr"):
            if needed not in col:
                raise HAProxyRuntimeError(f"haproxy show stat has no {needed} column")
        rows = []
        for line in lines[1:]:
            f = line.split(",")
            if len(f) < len(header) or f[col["pxname"]] != backend or f[col["svname"]] == "BACKEND":
                continue
            rows.append(
                ServerRow(
                    backend=backend,
                    name=f[col["svname"]],
                    status=f[col["status"]],
                    address=f[col["addr"]],
                    sessions=_int(f[col["scur"]]),
                    total=_int(f[col["stot"]]),
                    rate=_int(f[col["rate"]]),
                )
            )
        return rows

    def save_server_state(self, path: Path) -> None:
        """`show servers state` to the file `load-server-state-from-file` reads on the next start."""
        text = self.command("show servers state")
        if not text.lstrip().startswith("1"):  # the format version line
            raise HAProxyRuntimeError(f"haproxy show servers state: unexpected answer {text[:80]!r}")
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        return 0
