"""A second libvirt hypervisor on this machine: a system-mode libvirtd in a network namespace of its own,
reached over TCP on its own address like a remote host (`qemu+tcp://ADDRESS/system`).

    with shared_bridge() as br, namespaced_libvirtd(br, host=12) as hv:
        hv.uri                     # qemu+tcp://10.231.N.12/system
        hv.cut(); hv.reconnect()   # its link to the bridge down / up

How (measured on these machines, libvirt 9.0, no systemd, cgroup v1):
  - a second system libvirtd cannot share the first one's state: everything under /run/libvirt,
    /var/lib/libvirt, /etc/libvirt, /var/log/libvirt and /var/cache/libvirt is per daemon. So it runs in
    a private mount namespace (`unshare --mount --propagation private`) with its own directories bound
    over those paths (tests/helpers/libvirtd_in_namespace.sh), and `nsenter --net=` into the host's
    network namespace (not `ip netns exec`, which remounts /sys);
  - its libvirtd.conf listens on TCP at the host address only, without auth (a test-owned address);
    qemu.conf logs QEMU's output to files (no virtlogd in that namespace);
  - its QEMU processes inherit both namespaces: a guest's user-network forward listens on the host's
    address, which the controller in the root namespace reaches over the bridge. The images are read
    from the same paths as on the main hypervisor (only libvirt's own directories are private);
  - the first connection takes ~7 s (QEMU's capabilities probed into an empty cache).

Teardown: every domain destroyed and undefined through the daemon, the daemon stopped (SIGKILL after
`stop_timeout`), any QEMU left in the namespace killed, the namespace and its veth deleted, the
directories removed; anything left is raised (unless the block itself raised).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from helpers.dockerd import Bridge, DockerdError, _run, attach_namespace, detach_namespace, shared_bridge

LAUNCHER = Path(__file__).with_name("libvirtd_in_namespace.sh")
QEMU_USER = "libvirt-qemu"  # Debian's; owns /var/lib/libvirt/qemu


@dataclass
class NamespacedLibvirtd:
    name: str
    netns: str
    address: str
    root: Path
    veth: str
    pid: int = 0

    @property
    def uri(self) -> str:
        return f"qemu+tcp://{self.address}/system"

    def cut(self) -> None:
        """Its cable out: the bridge side of its veth down."""
        _run(["ip", "link", "set", self.veth, "down"], timeout=10)

    def reconnect(self) -> None:
        _run(["ip", "link", "set", self.veth, "up"], timeout=10)


def _private_dirs(root: Path, address: str) -> None:
    for d in ("run/libvirt", "lib/qemu", "etc", "log/qemu", "cache/qemu"):
        (root / d).mkdir(parents=True)
    with contextlib.suppress(KeyError):
        os.chown(root / "lib" / "qemu", pwd.getpwnam(QEMU_USER).pw_uid, grp.getgrnam(QEMU_USER).gr_gid)
    (root / "lib" / "qemu").chmod(0o750)
    (root / "etc" / "libvirtd.conf").write_text(
        f'listen_tls = 0\nlisten_tcp = 1\nlisten_addr = "{address}"\nauth_tcp = "none"\n'
        'auth_unix_rw = "none"\n'
    )
    (root / "etc" / "qemu.conf").write_text('stdio_handler = "file"\n')


def _wait_answering(hv: NamespacedLibvirtd, proc: subprocess.Popen[bytes], timeout: float) -> None:
    import libvirt

    libvirt.registerErrorHandler(lambda *_: None, None)  # "connection refused" while it starts: expected
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = (hv.root / "libvirtd.out").read_text(errors="replace")[-2000:]
            raise DockerdError(f"libvirtd in {hv.netns} exited with {proc.returncode}:\n{log}")
        try:
            conn = libvirt.open(hv.uri)
        except libvirt.libvirtError as exc:
            last = str(exc)
            time.sleep(0.25)
            continue
        try:
            conn.getCapabilities()  # the slow first probe of QEMU, done here rather than in the test
            return
        finally:
            conn.close()
    raise DockerdError(f"libvirtd on {hv.uri} did not answer within {timeout:g}s: {last}")


def _in_namespace(netns: str) -> list[psutil.Process]:
    try:
        inode = os.stat(f"/var/run/netns/{netns}").st_ino
    except OSError:
        return []
    found = []
    for p in psutil.process_iter(["pid"]):
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{p.pid}/ns/net").st_ino == inode and p.pid != os.getpid():
                found.append(p)
    return found


def _teardown(hv: NamespacedLibvirtd, proc: subprocess.Popen[bytes] | None, stop_timeout: float) -> list[str]:
    problems: list[str] = []
    if proc is not None and proc.poll() is None:
        import libvirt

        with contextlib.suppress(libvirt.libvirtError):
            conn = libvirt.open(hv.uri)
            try:
                for dom in conn.listAllDomains(0):
                    with contextlib.suppress(libvirt.libvirtError):
                        if dom.isActive():
                            dom.destroy()
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.undefine()
            finally:
                conn.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(stop_timeout)
        except subprocess.TimeoutExpired:
            problems.append(f"libvirtd {proc.pid} ignored SIGTERM for {stop_timeout:g}s: killed")
            proc.kill()
            proc.wait(30)
    left = _in_namespace(hv.netns)
    for p in left:
        with contextlib.suppress(psutil.Error):
            problems.append(f"left running in {hv.netns}: {p.pid} {p.name()}: killed")
            p.kill()
    psutil.wait_procs(left, timeout=10)
    problems += detach_namespace(hv.netns, hv.veth)
    shutil.rmtree(hv.root, ignore_errors=True)
    if hv.root.exists():
        problems.append(f"{hv.root} could not be removed")
    return problems


@contextlib.contextmanager
def namespaced_libvirtd(
    bridge: Bridge | None = None,
    host: int = 12,
    name: str | None = None,
    start_timeout: float = 90.0,
    stop_timeout: float = 30.0,
) -> Iterator[NamespacedLibvirtd]:
    """Start libvirtd as host number `host` on `bridge` (or a bridge of its own); remove it all after."""
    for tool in ("libvirtd", "unshare", "nsenter", "ip", "mount"):
        if shutil.which(tool) is None:
            raise DockerdError(f"{tool} not found")
    if os.geteuid() != 0:
        raise DockerdError("a namespaced libvirtd needs root")
    with contextlib.ExitStack() as stack:
        br = bridge if bridge is not None else stack.enter_context(shared_bridge())
        tag = name or secrets.token_hex(3)
        root = Path(tempfile.mkdtemp(prefix=f"tshv-{tag}-", dir="/run"))
        hv = NamespacedLibvirtd(tag, f"tshv-{tag}", br.host(host), root, f"tsv-{tag}")
        proc: subprocess.Popen[bytes] | None = None
        body_failed = False
        try:
            attach_namespace(hv.netns, tag, br, hv.address)
            _private_dirs(root, hv.address)
            cmd = [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "bash",
                str(LAUNCHER),
                str(root),
                hv.netns,
            ]
            with (root / "libvirtd.out").open("wb") as out:
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            hv.pid = proc.pid
            _wait_answering(hv, proc, start_timeout)
            yield hv
        except BaseException:
            body_failed = True
            raise
        finally:
            problems = _teardown(hv, proc, stop_timeout)
            if problems and not body_failed:
                raise DockerdError("teardown left something behind: " + "; ".join(problems))
