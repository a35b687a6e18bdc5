"""The OpenStack cloud the tests run against, and the housekeeping around it.

`TIERSCALE_TEST_CLOUD` names a cloud in clouds.yaml. Unset in CI (CI=true), the tests default to the
openstack-lite cloud `lite` (clouds.yaml at `$OPENSTACK_LITE_BASE/clouds.yaml`, which
`scripts/setup/openstack.sh` brings up); unset on a developer machine, they skip. A cloud that is named
but unreachable fails in CI and skips elsewhere (`helpers.ci.require`).

openstack-lite runs one nova-compute whose driver is either the fake one (servers ACTIVE in about a
second, nothing boots) or libvirt (real QEMU guests). `ensure_compute_driver` restarts nova-compute with
the driver a test needs; test files are ordered (test_openstack_api, _group, then _real_guest) so a run
switches once, to libvirt, at the end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import openstack.exceptions as os_exc
import yaml

from helpers import REPO
from helpers.ci import IN_CI, require
from tierscale.providers.openstack_cloud import open_cloud
from tierscale.providers.openstack_servers import GROUP_KEY

_SHARED_LITE = REPO.parent / "shared" / "tools" / "openstack-lite"
LITE_SCRIPT = Path(os.environ.get("OPENSTACK_LITE", str(_SHARED_LITE / "openstack-lite.sh")))
LITE_BASE = Path(os.environ.get("OPENSTACK_LITE_BASE", "/var/tmp/openstack-lite"))
FAKE_DRIVER = "fake.FakeDriverWithoutFakeNodes"
LIBVIRT_DRIVER = "libvirt.LibvirtDriver"
# A prefix for every group name of this test session, so the final sweep deletes only what we made.
SESSION = f"ts{os.getpid() % 100000}"


@dataclass
class CloudUnderTest:
    name: str
    lite: bool  # openstack-lite on this machine: its compute driver may be switched
    conn: Any  # admin-or-whatever connection of the named cloud, for checks and cleanup
    # What the fast tests boot: on openstack-lite's fake driver the console always holds this line.
    image: str = field(default_factory=lambda: os.environ.get("TIERSCALE_TEST_IMAGE", "tiny-raw"))
    flavor: str = field(default_factory=lambda: os.environ.get("TIERSCALE_TEST_FLAVOR", "m1.tiny"))
    marker: str = field(
        default_factory=lambda: os.environ.get("TIERSCALE_TEST_CONSOLE_MARKER", "FAKE CONSOLE OUTPUT")
    )
    # The real-guest test: openstack-lite's busybox guest prints this when its init runs.
    guest_image: str = field(default_factory=lambda: os.environ.get("TIERSCALE_TEST_GUEST_IMAGE", "busybox"))
    guest_flavor: str = field(
        default_factory=lambda: os.environ.get("TIERSCALE_TEST_GUEST_FLAVOR", "m1.nano")
    )
    guest_marker: str = field(
        default_factory=lambda: os.environ.get("TIERSCALE_TEST_GUEST_MARKER", "LITE-GUEST-BOOTED")
    )
    _counter: int = 0

    def group_name(self, what: str) -> str:
        self._counter += 1
        return f"{SESSION}-{self._counter}-{what}"[:40].rstrip("-")

    # ---- looking at and cleaning up servers --------------------------------------------------------
    def servers(
        self, group: str | None = None, prefix: str | None = None, all_projects: bool = False
    ) -> list[Any]:
        out = []
        # all_projects (admin only): also the servers of member_project's throwaway project.
        for s in self.conn.compute.servers(details=True, all_projects=all_projects):
            g = (s.metadata or {}).get(GROUP_KEY)
            if (group is not None and g == group) or (prefix is not None and str(g or "").startswith(prefix)):
                out.append(s)
        return out

    def delete_servers(self, servers: list[Any], timeout: float = 120) -> None:
        for s in servers:
            self.conn.compute.delete_server(s.id, ignore_missing=True)
        deadline = time.monotonic() + timeout
        for s in servers:
            self.conn.compute.wait_for_delete(s, interval=0.5, wait=max(1, deadline - time.monotonic()))

    def cleanup_group(self, group: str) -> None:
        self.delete_servers(self.servers(group=group))


def _lite_clouds_file() -> Path:
    return LITE_BASE / "clouds.yaml"


@cache
def cloud_under_test() -> CloudUnderTest:
    """The session's cloud (fails in CI, skips elsewhere, when there is none)."""
    name = os.environ.get("TIERSCALE_TEST_CLOUD")
    lite_file = _lite_clouds_file()
    if not name and IN_CI and lite_file.exists():
        name = "lite"
    if name == "lite" and not os.environ.get("OS_CLIENT_CONFIG_FILE") and lite_file.exists():
        os.environ["OS_CLIENT_CONFIG_FILE"] = str(lite_file)
    require(name is not None, "an OpenStack test cloud (set TIERSCALE_TEST_CLOUD or run openstack-lite)")
    assert name is not None
    try:
        cloud = open_cloud(name, field="TIERSCALE_TEST_CLOUD")
        cloud.conn.authorize()
    except Exception as exc:  # any failure here means "no usable cloud": say which and why
        require(False, f"OpenStack cloud {name!r} ({exc})")
        raise
    lite = (
        name == "lite" and os.environ.get("OS_CLIENT_CONFIG_FILE") == str(lite_file) and LITE_SCRIPT.exists()
    )
    tc = CloudUnderTest(name=name, lite=lite, conn=cloud.conn)
    if lite:
        warm_up(tc)  # the setup script may just have run `up` (see warm_up)
    return tc


def sweep_session_servers() -> None:
    """Delete whatever this session's groups left behind (a failed test must not leak servers)."""
    if cloud_under_test.cache_info().currsize:
        tc = cloud_under_test()
        tc.delete_servers(tc.servers(prefix=SESSION + "-"))


# ---- openstack-lite's compute driver ---------------------------------------------------------------


def hypervisor_types(conn: Any) -> set[str]:
    return {h.hypervisor_type for h in conn.compute.hypervisors(details=True) if h.state == "up"}


def _want_type(driver: str) -> str:
    return "fake" if driver.startswith("fake.") else "QEMU"


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def _stop_compute() -> None:
    pidfile = LITE_BASE / "run" / "nova-compute.pid"
    if not pidfile.exists():
        return
    # The lite script starts each service in its own session: stop nova-compute's whole group. With the
    # libvirt driver it takes minutes to exit on SIGTERM; by now no test server is left on it, so after a
    # short grace it is killed (the fake driver's state is in memory anyway).
    pid = int(pidfile.read_text().strip())
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        if _gone(pid, grace):
            return


def _start_compute_directly(tc: CloudUnderTest, driver: str) -> bool:
    """Start nova-compute the way the lite script's `start` does, with only the driver overridden.

    `up` re-runs every service's db sync and resets the service users' passwords (~1 min); a driver switch
    needs none of that. Only possible once a full `up` has prepared that driver (for libvirt: the
    libvirt-python binding, a running libvirtd, the guest image): False otherwise.
    """
    bin_dir = LITE_BASE / "venv" / "bin"
    conf = LITE_BASE / "etc" / "nova" / "nova-cpu.conf"
    if not conf.exists() or not (bin_dir / "nova-compute").exists():
        return False
    if driver == LIBVIRT_DRIVER:
        has_binding = subprocess.run([str(bin_dir / "python"), "-c", "import libvirt"], capture_output=True)
        if has_binding.returncode != 0 or not Path("/run/libvirt/libvirt-sock").exists():
            return False
        if tc.conn.image.find_image(tc.guest_image) is None:
            return False
    override = Path(tempfile.gettempdir()) / "tierscale-openstack-lite" / "compute-driver.conf"
    override.parent.mkdir(exist_ok=True)
    override.write_text(f"[DEFAULT]\ncompute_driver = {driver}\n")  # later --config-file wins
    # Detached like the script's own services (its own session, log appended), its pid where `down`
    # and `status` look for it.
    started = subprocess.run(
        [
            *("bash", "-c", 'setsid "$@" >>"$LOG" 2>&1 </dev/null & echo $!', "start-nova-compute"),
            *(str(bin_dir / "nova-compute"), "--config-file", str(conf), "--config-file", str(override)),
        ],
        env={
            **os.environ,
            "LOG": str(LITE_BASE / "logs" / "nova-compute.log"),
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
        },
        capture_output=True,
        text=True,
        check=True,
    )
    (LITE_BASE / "run" / "nova-compute.pid").write_text(started.stdout.strip() + "\n")
    return True


def _wait_for_hypervisor(tc: CloudUnderTest, want: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if hypervisor_types(tc.conn) == {want}:
            return True
        time.sleep(1)
    return False


def ensure_compute_driver(tc: CloudUnderTest, driver: str) -> None:
    """Make openstack-lite's nova-compute run `driver`: restart just nova-compute when that driver was set
    up before, else through the lite script's `up` (which installs and builds what the driver needs)."""
    if not tc.lite:
        # Somebody else's cloud: use it as it is (TIERSCALE_TEST_* name its images, flavors and markers).
        return
    want = _want_type(driver)
    if hypervisor_types(tc.conn) == {want}:
        return
    _stop_compute()
    if _start_compute_directly(tc, driver) and _wait_for_hypervisor(tc, want, 90):
        warm_up(tc)
        return
    _stop_compute()
    proc = subprocess.run(
        ["bash", str(LITE_SCRIPT), "up"],
        env={**os.environ, "COMPUTE_DRIVER": driver, "BASE": str(LITE_BASE)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"openstack-lite up with {driver} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    if not _wait_for_hypervisor(tc, want, 120):
        raise RuntimeError(f"nova-compute did not come back with a {want} hypervisor")
    warm_up(tc)


def warm_up(tc: CloudUnderTest, attempts: int = 5) -> None:
    """Boot one throwaway server until one reaches ACTIVE.

    Every `openstack-lite.sh up` resets the service users' passwords, which revokes the tokens the
    running services cached; each service then fails its first call (placement answers 401 and the
    scheduler reports "No valid host") before re-authenticating. Tests must not see that transient.
    """
    image = tc.conn.image.find_image(tc.image, ignore_missing=False)
    flavor = tc.conn.compute.find_flavor(tc.flavor, ignore_missing=False)
    status = "?"
    for i in range(attempts):
        server = tc.conn.compute.create_server(
            name=f"{SESSION}-warmup-{i}", image_id=image.id, flavor_id=flavor.id, networks="none"
        )
        try:
            server = tc.conn.compute.wait_for_server(
                server, status="ACTIVE", failures=["ERROR"], interval=0.5
            )
            status = server.status
        except Exception as exc:  # ERROR (a revoked token somewhere on the path): try again
            status = str(exc)
        finally:
            tc.delete_servers([server])
        if status == "ACTIVE":
            return
    raise RuntimeError(f"openstack-lite cannot boot a server after {attempts} attempts: {status}")


# ---- a second identity: a member (not admin) of its own project ------------------------------------


@dataclass
class ProjectUser:
    clouds_file: Path
    cloud: str
    bad_password_cloud: str
    project_id: str


@contextlib.contextmanager
def admin_only(what: str) -> Iterator[None]:
    """On somebody else's cloud the test identity may not be admin: those tests skip (lite is admin)."""
    try:
        yield
    except os_exc.ForbiddenException:
        # In CI the test cloud is openstack-lite, where we are admin: a refusal there is a failure.
        require(False, f"admin rights on the test cloud ({what})")


def member_project(tc: CloudUnderTest, instances_quota: int) -> Iterator[ProjectUser]:
    """A throwaway project + member user with its own clouds.yaml (and a copy with a wrong password)."""
    conn = tc.conn
    idc = conn.identity
    name = f"{SESSION}-member"
    password = os.urandom(12).hex()
    with admin_only("creating a project and a user"):
        project = idc.create_project(name=name, domain_id="default")
    user = idc.create_user(name=name, password=password, domain_id="default", default_project_id=project.id)
    role = idc.find_role("member", ignore_missing=False)
    idc.assign_project_role_to_user(project, user, role)
    conn.set_compute_quotas(project.id, instances=instances_quota)
    auth = dict(conn.config.config["auth"])
    base = {
        "auth": {
            "auth_url": auth["auth_url"],
            "username": name,
            "password": password,
            "project_name": name,
            "user_domain_name": "Default",
            "project_domain_name": "Default",
        },
        "region_name": conn.config.get_region_name(),
        "identity_api_version": 3,
    }
    wrong = {**base, "auth": {**base["auth"], "password": "not-" + password}}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "clouds.yaml"
        path.write_text(yaml.safe_dump({"clouds": {"member": base, "member-wrong": wrong}}))
        try:
            yield ProjectUser(path, "member", "member-wrong", project.id)
        finally:
            leftovers = [
                s for s in conn.compute.servers(details=True, all_projects=True) if s.project_id == project.id
            ]
            tc.delete_servers(leftovers)
            with contextlib.suppress(Exception):  # quotas of a project being deleted: nothing to keep
                conn.delete_compute_quotas(project.id)
            idc.delete_user(user, ignore_missing=True)
            idc.delete_project(project, ignore_missing=True)


def temporary_flavor(tc: CloudUnderTest, suffix: str, *, disk: int = 1) -> Iterator[str]:
    """A public flavor of this session's own, deleted when the generator closes: a test that needs a
    second flavor must not depend on which compute driver created which (m1.nano exists only under the
    libvirt driver)."""
    name = f"{SESSION}-{suffix}"
    with admin_only("creating a flavor"):
        flavor = tc.conn.compute.create_flavor(name=name, ram=128, vcpus=1, disk=disk, is_public=True)
    try:
        yield name
    finally:
        tc.conn.compute.delete_flavor(flavor, ignore_missing=True)


def huge_flavor(tc: CloudUnderTest) -> Iterator[str]:
    """A flavor no host can take (a million GB of disk): the scheduler answers 'No valid host'."""
    return temporary_flavor(tc, "huge", disk=1_000_000)


__all__ = [
    "FAKE_DRIVER",
    "LIBVIRT_DRIVER",
    "SESSION",
    "CloudUnderTest",
    "ProjectUser",
    "cloud_under_test",
    "ensure_compute_driver",
    "huge_flavor",
    "member_project",
    "sweep_session_servers",
    "temporary_flavor",
]
