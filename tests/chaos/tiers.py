"""What the chaos run needs from each tier: a template, the infrastructure's own view of our replicas,
ways to kill and hang one, the tier's daemon restart, and foreign objects that must come out untouched.

"Ours in the infrastructure" is read here independently of the provider under test (process environment,
container labels, domain names and overlay files), so a provider that forgets something is caught.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil

from helpers.daemons import start_dockerd, start_libvirtd, stop_dockerd, stop_libvirtd
from helpers.libvirt import IMAGE_DIR, overlay_files, scrub_group, vm_template

VM_IMAGE = {"kernel": "vmlinux", "initrd": "initrd.img", "base": "base.qcow2"}


class Tier:
    """Base: the process-independent parts every tier shares."""

    name = "base"
    config_tier = ""  # the config's `tier:` when it is not `name` (a variant of another tier)
    group_extra = ""  # more group keys for the config, as YAML lines
    converge_timeout = 60.0  # seconds an injection may take to be repaired before it counts as failed
    rate = 15.0  # requests/s of the steady load
    work_ms = 2  # busy time per request on the replica
    startup_grace = "15s"

    def __init__(self, group: str) -> None:
        self.group = group

    # ---- to implement ------------------------------------------------------------------------------
    def start(self) -> None:
        """Bring up what the tier's hosts need (test hosts); `stop` removes it, whatever happened."""

    def stop(self) -> None:
        pass

    def template(self, port_lo: int, port_hi: int) -> str:
        raise NotImplementedError

    def available(self) -> tuple[bool, str]:
        return True, ""

    def infra(self) -> dict[str, str]:
        """replica id -> state, of every object of our group the infrastructure holds."""
        raise NotImplementedError

    def kill(self, replica: str) -> None:
        raise NotImplementedError

    def hang(self, replica: str) -> None:
        raise NotImplementedError

    def make_foreign(self) -> None:
        """Objects next to ours that look like ours but are not: they must survive the run unchanged."""

    def foreign_problems(self) -> list[str]:
        return []

    def remove_foreign(self) -> None:
        pass

    def scrub(self) -> None:
        """Remove whatever of the group is left (after `tierscale down`, which should have removed it all)."""

    def daemon_injections(self) -> dict[str, Callable[[], None]]:
        return {}

    def leaked_disks(self, live: set[str]) -> list[str]:
        return []


# ---------------------------------------------------------------------------------------------- process
class ProcessTier(Tier):
    name = "process"

    def __init__(self, group: str) -> None:
        super().__init__(group)
        self._foreign: subprocess.Popen[bytes] | None = None
        self._ports = (0, 0)

    def template(self, port_lo: int, port_hi: int) -> str:
        self._ports = (port_lo, port_hi)
        return (
            f'{{command: ["{sys.executable}", "-m", "tierscale.workload", "--port", "{{port}}"], '
            f"port_range: [{port_lo}, {port_hi}], cpus: 0.25}}"
        )

    def _ours(self) -> dict[str, psutil.Process]:
        out: dict[str, psutil.Process] = {}
        for p in psutil.process_iter():
            try:
                env = p.environ()
                if env.get("TIERSCALE_GROUP") != self.group or p.status() == psutil.STATUS_ZOMBIE:
                    continue
                rid = env.get("TIERSCALE_REPLICA", "?")
                leader = os.getsid(p.pid) == p.pid
            except (psutil.Error, OSError):
                continue
            # A replica's children (if any) carry the same environment: keep the session leader.
            if rid not in out or leader:
                out[rid] = p
        return out

    def infra(self) -> dict[str, str]:
        states: dict[str, str] = {}
        for rid, p in self._ours().items():
            with contextlib.suppress(psutil.Error):
                states[rid] = "paused" if p.status() == psutil.STATUS_STOPPED else "running"
        return states

    def _signal(self, replica: str, sig: int) -> None:
        proc = self._ours().get(replica)
        assert proc is not None, f"replica {replica} has no process"
        proc.send_signal(sig)

    def kill(self, replica: str) -> None:
        self._signal(replica, signal.SIGKILL)

    def hang(self, replica: str) -> None:
        self._signal(replica, signal.SIGSTOP)

    def make_foreign(self) -> None:
        # A workload on the first port of our range, started by someone else: never adopted, never signalled.
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIERSCALE_")}
        self._foreign = subprocess.Popen(
            [sys.executable, "-m", "tierscale.workload", "--port", str(self._ports[0])],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def foreign_problems(self) -> list[str]:
        p = self._foreign
        if p is None:
            return ["foreign process was never started"]
        if p.poll() is not None:
            return [f"foreign process {p.pid} exited with {p.returncode}"]
        if psutil.Process(p.pid).status() == psutil.STATUS_STOPPED:
            return [f"foreign process {p.pid} was stopped"]
        return []

    def remove_foreign(self) -> None:
        if self._foreign is not None and self._foreign.poll() is None:
            self._foreign.kill()
            self._foreign.wait(10)

    def scrub(self) -> None:
        for p in self._ours().values():
            with contextlib.suppress(psutil.Error):
                p.kill()


# ---------------------------------------------------------------------------------------------- docker
class DockerTier(Tier):
    name = "docker"
    converge_timeout = 90.0  # a dockerd restart (without live-restore) takes every container down

    def __init__(self, group: str) -> None:
        super().__init__(group)
        self._foreign: list[tuple[str, str]] = []  # (container id, status at start)
        self._live_restore = False
        self.engines: list[str | None] = [None]  # the engines' base URLs; None: the default engine

    def _client(self, base_url: str | None = None) -> Any:
        import docker

        if base_url is None:
            return docker.from_env(version="auto", timeout=30)
        return docker.DockerClient(base_url=base_url, version="auto", timeout=30)

    @property
    def foreign_engine(self) -> str | None:
        return self.engines[-1]

    def available(self) -> tuple[bool, str]:
        try:
            c = self._client()
            c.ping()
            from tierscale.providers.docker_image import build_demo_image

            build_demo_image(c)
            c.close()
            return True, ""
        except Exception as exc:  # any failure means "no usable engine here"
            return False, f"Docker engine ({exc})"

    def template(self, port_lo: int, port_hi: int) -> str:
        from tierscale.providers.docker_image import DEMO_IMAGE

        return f"{{image: {DEMO_IMAGE}, port: 8080, cpus: 0.25, memory: 64m}}"

    def _containers(self) -> list[dict[str, Any]]:
        """One listing call (no per-container inspect, which races with removals): Id, Labels, State."""
        from tierscale.providers.docker import LABEL_GROUP

        rows: list[dict[str, Any]] = []
        for engine in self.engines:
            c = self._client(engine)
            try:
                for row in c.api.containers(all=True, filters={"label": f"{LABEL_GROUP}={self.group}"}):
                    rows.append({**row, "engine": engine})
            finally:
                c.close()
        return rows

    def infra(self) -> dict[str, str]:
        from tierscale.providers.docker import LABEL_REPLICA

        out: dict[str, str] = {}
        for row in self._containers():
            rid = (row.get("Labels") or {}).get(LABEL_REPLICA, "?")
            # Two containers claiming one replica id would be a duplicate: keep both visible.
            key = rid if rid not in out else f"{rid}#dup-{row['Id'][:12]}"
            out[key] = row.get("State", "?")
        return out

    def _container(self, replica: str) -> Any:
        from tierscale.providers.docker import LABEL_REPLICA

        for row in self._containers():
            if (row.get("Labels") or {}).get(LABEL_REPLICA) == replica:
                c = self._client(row["engine"])
                return c.containers.get(row["Id"])
        raise AssertionError(f"replica {replica} has no container")

    def kill(self, replica: str) -> None:
        self._container(replica).kill()

    def hang(self, replica: str) -> None:
        self._container(replica).pause()

    def make_foreign(self) -> None:
        from tierscale.providers.docker import LABEL_GROUP
        from tierscale.providers.docker_image import DEMO_IMAGE

        c = self._client(self.foreign_engine)
        try:
            self._live_restore = bool(c.info().get("LiveRestoreEnabled"))
            plain = c.containers.run(DEMO_IMAGE, detach=True, name=f"chaos-foreign-{secrets.token_hex(3)}")
            other = c.containers.run(
                DEMO_IMAGE,
                detach=True,
                labels={LABEL_GROUP: f"{self.group}-other"},  # another group's: never ours
            )
            for ct in (plain, other):
                ct.reload()
                self._foreign.append((ct.id, ct.status))
        finally:
            c.close()

    def foreign_problems(self) -> list[str]:
        import docker

        problems = []
        c = self._client(self.foreign_engine)
        try:
            for cid, status in self._foreign:
                try:
                    ct = c.containers.get(cid)
                except docker.errors.NotFound:
                    problems.append(f"foreign container {cid[:12]} was removed")
                    continue
                # A dockerd restart without live-restore stops every container, ours or not: that is the
                # engine's doing, so there a foreign container may also have been exited by the daemon.
                if ct.status != status and not (ct.status == "exited" and not self._live_restore):
                    problems.append(f"foreign container {cid[:12]} is {ct.status} (was {status})")
        finally:
            c.close()
        return problems

    def remove_foreign(self) -> None:
        c = self._client(self.foreign_engine)
        try:
            for cid, _ in self._foreign:
                with contextlib.suppress(Exception):
                    c.containers.get(cid).remove(force=True)
        finally:
            c.close()

    def scrub(self) -> None:
        for row in self._containers():
            c = self._client(row["engine"])
            try:
                with contextlib.suppress(Exception):
                    c.api.remove_container(row["Id"], force=True)
            finally:
                c.close()

    def daemon_injections(self) -> dict[str, Callable[[], None]]:
        return {"dockerd_restart": restart_dockerd}


class DockerHostsTier(DockerTier):
    """One docker group over two engine hosts (network namespaces on a test bridge, helpers/dockerd.py),
    with host loss and return: a host's link cut, its engine hung (SIGSTOP) or killed (with its
    containerd and containers), for longer than `host_timeout`, then back. The foreign containers live
    on the host that is lost first."""

    name = "docker-hosts"
    config_tier = "docker"
    host_timeout = 5.0
    group_extra = f"    host_timeout: {host_timeout:g}s\n    placement: {{strategy: spread}}\n"
    converge_timeout = 120.0

    def __init__(self, group: str) -> None:
        super().__init__(group)
        self._stack = contextlib.ExitStack()
        self._hosts: list[Any] = []  # NamespacedDockerd
        self._turn = 0

    def start(self) -> None:
        from helpers.dockerd import namespaced_dockerd, shared_bridge
        from tierscale.providers.docker_image import DEMO_IMAGE

        br = self._stack.enter_context(shared_bridge())
        for i in range(2):
            address = br.host(11 + i)
            e = self._stack.enter_context(
                namespaced_dockerd(br, host=11 + i, extra_args=["-H", f"tcp://{address}:2375"])
            )
            e.load_images(DEMO_IMAGE)
            self._hosts.append(e)
        self.engines = [e.base_url for e in self._hosts]

    def stop(self) -> None:
        for e in self._hosts:
            with contextlib.suppress(Exception):
                e_link(e, up=True)
        self._stack.close()

    def template(self, port_lo: int, port_hi: int) -> str:
        from tierscale.providers.docker_image import DEMO_IMAGE

        hosts = ", ".join(f"tcp://{e.address}:2375" for e in self._hosts)
        return f"{{image: {DEMO_IMAGE}, port: 8080, cpus: 0.25, memory: 64m, hosts: [{hosts}]}}"

    def _victim(self) -> Any:
        # Both hosts in turn; the foreign containers' host (the last) first.
        e = self._hosts[(len(self._hosts) - 1 - self._turn) % len(self._hosts)]
        self._turn += 1
        return e

    def _away_and_back(self, leave: Callable[[Any], None], come_back: Callable[[Any], None]) -> None:
        """One host leaves for `host_timeout` + 4 s (long enough to be replaced elsewhere), then returns."""
        e = self._victim()
        leave(e)
        try:
            time.sleep(self.host_timeout + 4.0)
        finally:
            come_back(e)

    def link_cut(self) -> None:
        self._away_and_back(lambda e: e_link(e, up=False), lambda e: e_link(e, up=True))

    def engine_hung(self) -> None:
        self._away_and_back(
            lambda e: os.kill(e.pid, signal.SIGSTOP), lambda e: os.kill(e.pid, signal.SIGCONT)
        )

    def engine_killed(self) -> None:
        self._away_and_back(lambda e: e.crash(), lambda e: e.start(90.0))

    def daemon_injections(self) -> dict[str, Callable[[], None]]:
        return {
            "host_link_cut": self.link_cut,
            "host_engine_hung": self.engine_hung,
            "host_engine_killed": self.engine_killed,
        }


def e_link(e: Any, up: bool) -> None:
    """The engine host's cable: its veth on the bridge side."""
    subprocess.run(["ip", "link", "set", e._veth, "up" if up else "down"], check=True, timeout=10)


def restart_dockerd() -> None:
    stop_dockerd()
    start_dockerd()


def restart_libvirtd() -> None:
    stop_libvirtd()
    start_libvirtd()


# ---------------------------------------------------------------------------------------------- libvirt
class LibvirtTier(Tier):
    name = "libvirt"
    converge_timeout = 120.0
    rate = 8.0  # one TCG vCPU per guest on a 2-core host: keep the guests far from saturation
    startup_grace = "40s"

    def __init__(self, group: str) -> None:
        super().__init__(group)
        self._foreign: str | None = None

    def _conn(self) -> Any:
        import libvirt

        # Lookups of what may be gone are expected to fail here; keep libvirt from printing each one.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        return libvirt.open("qemu:///system")

    def available(self) -> tuple[bool, str]:
        try:
            self._conn().close()
        except Exception as exc:
            return False, f"libvirtd ({exc})"
        missing = [n for n in VM_IMAGE.values() if not (IMAGE_DIR / n).exists()]
        if missing:
            return False, f"VM image ({', '.join(missing)} missing: run make vm-image)"
        return True, ""

    def template(self, port_lo: int, port_hi: int) -> str:
        return vm_template({k: IMAGE_DIR / n for k, n in VM_IMAGE.items()}, disk=True)

    @property
    def _prefix(self) -> str:
        return f"tierscale-{self.group}-"

    def _domains(self) -> list[Any]:
        conn = self._conn()
        return [d for d in conn.listAllDomains(0) if d.name().startswith(self._prefix)]

    def infra(self) -> dict[str, str]:
        import libvirt

        names = {
            libvirt.VIR_DOMAIN_RUNNING: "running",
            libvirt.VIR_DOMAIN_PAUSED: "paused",
            libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
        }
        return {d.name()[len(self._prefix) :]: names.get(d.state()[0], "other") for d in self._domains()}

    def leaked_disks(self, live: set[str]) -> list[str]:
        files = overlay_files(self.group)
        return [f for f in files if f.removesuffix(".qcow2").removeprefix(self._prefix) not in live]

    def _domain(self, replica: str) -> Any:
        return self._conn().lookupByName(self._prefix + replica)

    def kill(self, replica: str) -> None:
        self._domain(replica).destroy()

    def hang(self, replica: str) -> None:
        self._domain(replica).suspend()

    def make_foreign(self) -> None:
        # Defined, never started: costs nothing, and a provider that matched by prefix would take it.
        name = f"tierscale-{self.group}x-foreign"
        xml = (
            f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
            "<os><type arch='x86_64'>hvm</type></os></domain>"
        )
        self._conn().defineXML(xml)
        self._foreign = name

    def foreign_problems(self) -> list[str]:
        import libvirt

        if self._foreign is None:
            return ["foreign domain was never defined"]
        try:
            dom = self._conn().lookupByName(self._foreign)
        except libvirt.libvirtError:
            return [f"foreign domain {self._foreign} was removed"]
        return [] if not dom.isActive() else [f"foreign domain {self._foreign} was started"]

    def remove_foreign(self) -> None:
        if self._foreign:
            with contextlib.suppress(Exception):
                self._conn().lookupByName(self._foreign).undefine()

    def scrub(self) -> None:
        scrub_group(self.group)

    def daemon_injections(self) -> dict[str, Callable[[], None]]:
        return {"libvirtd_restart": restart_libvirtd}


TIERS: dict[str, type[Tier]] = {
    "process": ProcessTier,
    "docker": DockerTier,
    "docker-hosts": DockerHostsTier,
    "libvirt": LibvirtTier,
}
