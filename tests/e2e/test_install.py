"""tierscale installed as a user installs it: a wheel built from the sources, a clean virtualenv with no
tier extra, the `tierscale` command run from a directory outside the checkout; then the systemd unit,
verified by systemd-analyze and booted under a real systemd in a throwaway container.

One wheel and one virtualenv serve the module. The virtualenv is made with the distribution's python3
under /usr and lives outside /tmp: the container sees the host's /usr only, and the unit's PrivateTmp
would hide anything under /tmp from the service.
"""

from __future__ import annotations

import contextlib
import email
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from helpers import REPO
from helpers.ci import NGINX, require
from helpers.e2e import free_port, nginx_processes, port_block, wait_for, workload_processes

pytestmark = pytest.mark.e2e

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
UNIT = REPO / "packaging" / "tierscale.service"
SYSTEM_PYTHON = Path("/usr/bin/python3")


@dataclass
class Installed:
    venv: Path
    env: dict[str, str]  # the user's environment, with the virtualenv first on PATH and nothing of ours

    @property
    def tierscale(self) -> Path:
        return self.venv / "bin" / "tierscale"

    def run(self, *args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.tierscale), *args],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _can_make_venvs(python: Path) -> bool:
    if not python.exists():
        return False
    probe = "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))"
    return subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy: setuptools leaves build/ and an egg-info next to the sources, and a stale
    # build/lib in the checkout would slip files that are gone from src/ into the wheel.
    src = tmp_path_factory.mktemp("source")
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = out.glob("tierscale-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path) -> Iterator[Installed]:
    python = SYSTEM_PYTHON if _can_make_venvs(SYSTEM_PYTHON) else Path(shutil.which("python3") or "python3")
    home = Path(tempfile.mkdtemp(prefix="tierscale-install-test-", dir="/var/lib"))
    home.chmod(0o755)  # the unit's user must reach the interpreter inside
    venv = home / "venv"
    try:
        made = subprocess.run([str(python), "-m", "venv", str(venv)], capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
        pip = subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", str(wheel)],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert pip.returncode == 0, pip.stderr[-3000:]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        yield Installed(venv, env)
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    """Where the user runs tierscale: not the checkout, so only the installed package is importable."""
    d = tmp_path / "user"
    d.mkdir()
    assert REPO not in d.parents
    return d


# ---- the wheel -------------------------------------------------------------------------------------------


def test_wheel_carries_the_package_data_and_the_extras(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        (meta_name,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(z.read(meta_name))
    pkg = REPO / "src" / "tierscale"
    # Every file the package-data patterns match in the sources, whatever is added later.
    for pattern in PYPROJECT["tool"]["setuptools"]["package-data"]["tierscale"]:
        matched = [p for p in pkg.glob(pattern) if p.is_file()]
        assert matched, f"package-data pattern {pattern} matches nothing in src/tierscale"
        for path in matched:
            assert f"tierscale/{path.relative_to(pkg)}" in names
    wanted = {
        "tierscale/balancer/nginx.conf.tmpl",
        "tierscale/api/static/index.html",
        "tierscale/api/static/dashboard.js",
        "tierscale/api/static/dashboard.css",
        *(f"tierscale/examples/{tier}.yaml" for tier in ("process", "docker", "libvirt", "openstack")),
    }
    assert wanted <= names, wanted - names

    requires = meta.get_all("Requires-Dist") or []
    core = [r for r in requires if "extra ==" not in r]
    assert not [r for r in core if r.startswith(("docker", "openstacksdk", "libvirt-python"))], core

    def extra(name: str) -> set[str]:
        reqs = [r.split(";")[0].strip() for r in requires if re.search(rf"extra == [\"']{name}[\"']", r)]
        return {re.split(r"[\[<>=!~ ]", r, maxsplit=1)[0] for r in reqs}

    assert set(meta.get_all("Provides-Extra") or []) >= {
        "docker",
        "libvirt",
        "openstack",
        "etcd",
        "redis",
        "worker",
        "sim",
        "test",
    }
    assert extra("docker") == {"docker"} and extra("openstack") == {"openstacksdk"}
    assert extra("libvirt") == {"libvirt-python"} and extra("etcd") == {"etcd3gw"}
    # `make venv` installs [test]: it must keep pulling what the tier tests import.
    assert {"docker", "openstacksdk", "pytest", "etcd3gw"} <= extra("test")


# ---- the command, installed --------------------------------------------------------------------------------


def test_installed_command_runs_a_process_tier_without_any_extra(
    installed: Installed, user_dir: Path
) -> None:
    require(NGINX is not None, "nginx")
    version = installed.run("--version", cwd=user_dir)
    assert version.returncode == 0 and version.stdout.strip() == f"tierscale, version {VERSION}"
    where = subprocess.run(
        [str(installed.venv / "bin" / "python"), "-c", "import tierscale; print(tierscale.__file__)"],
        cwd=user_dir,
        env=installed.env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(installed.venv)), where
    for library in ("docker", "openstack"):  # the core install has no tier library
        r = subprocess.run(
            [str(installed.venv / "bin" / "python"), "-c", f"import {library}"], capture_output=True
        )
        assert r.returncode != 0, f"{library} is installed without its extra"
    assert installed.run("--help", cwd=user_dir).returncode == 0

    state = user_dir / "state"
    init = installed.run(
        "init", "--tier", "process", "--out", "web.yaml", "--state-dir", str(state), cwd=user_dir
    )
    assert init.returncode == 0, init.stderr
    assert f"replicas run {installed.venv}/bin/" in init.stdout, init.stdout
    config = user_dir / "web.yaml"
    lo, hi = port_block()
    text = (
        config.read_text()
        .replace("127.0.0.1:9900", f"127.0.0.1:{free_port()}")
        .replace("127.0.0.1:8080", f"127.0.0.1:{free_port()}")
        .replace("[20000, 20999]", f"[{lo}, {hi}]")
    )
    assert f"[{lo}, {hi}]" in text
    config.write_text(text)
    validate = installed.run("validate", "web.yaml", cwd=user_dir)
    assert (validate.returncode, validate.stdout) == (0, "ok\n"), validate.stderr
    try:
        once = installed.run("run", "web.yaml", "--once", cwd=user_dir)
        assert once.returncode == 0, once.stderr
        replicas = wait_for(lambda: workload_processes((lo, hi)), 20, what="a replica process")
        assert len(replicas) == 1
        cmd = replicas[0].cmdline()
        assert cmd[0].startswith(str(installed.venv)), cmd  # the interpreter init wrote in, not ours
        port = int(cmd[cmd.index("--port") + 1])
        wait_for(lambda: _healthy(port), 20, what="the replica answering /healthz")
        assert len(nginx_processes(state)) == 1
        down = installed.run("down", "web.yaml", cwd=user_dir)
        assert down.returncode == 0, down.stderr
        assert down.stdout == "web: deleted 1 replica(s), balancer stopped\n"
        wait_for(lambda: not workload_processes((lo, hi)), 15, what="the replica gone")
        wait_for(lambda: not nginx_processes(state), 15, what="nginx gone")
    finally:
        _scrub(installed, user_dir, (lo, hi), state)


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _scrub(installed: Installed, cwd: Path, port_range: tuple[int, int], state: Path) -> None:
    """After a failure too: nothing of this test keeps running."""
    if workload_processes(port_range) or nginx_processes(state):
        installed.run("down", "web.yaml", cwd=cwd)
    for p in [*workload_processes(port_range), *nginx_processes(state)]:
        with contextlib.suppress(psutil.Error):
            p.kill()
    wait_for(
        lambda: not workload_processes(port_range) and not nginx_processes(state), 15, what="no leftovers"
    )


def test_a_tier_without_its_extra_stops_in_one_line(installed: Installed, user_dir: Path) -> None:
    for tier, extra, what in (
        ("docker", "docker", "the Docker SDK"),
        ("openstack", "openstack", "openstacksdk"),
    ):
        out = f"{tier}.yaml"
        needs = f"tier {tier} needs {what}: pip install 'tierscale[{extra}]'"
        init = installed.run(
            "init", "--tier", tier, "--out", out, "--state-dir", str(user_dir / "st"), cwd=user_dir
        )
        # The library is missing, the file is written all the same.
        assert init.returncode == 0, init.stderr
        assert f"not installed: pip install 'tierscale[{extra}]'" in init.stdout
        path = user_dir / out
        # A group name of its own: were the check ever to let `down` through, it would go for the
        # containers or servers of group `web`, which other tests run.
        group = f"install-{os.getpid()}"
        path.write_text(
            path.read_text()
            .replace("  - name: web\n", f"  - name: {group}\n")
            .replace("127.0.0.1:9900", f"127.0.0.1:{free_port()}")
            .replace("127.0.0.1:8080", f"127.0.0.1:{free_port()}")
        )
        assert installed.run("validate", out, cwd=user_dir).stdout == "ok\n"
        # --dry-run: were the check ever to let the group through, nothing would be created.
        for verb in (["run", out, "--once", "--dry-run"], ["down", out]):
            r = installed.run(*verb, cwd=user_dir)
            assert r.returncode == 2, (verb, r.stderr)
            assert r.stderr == f"tierscale: groups[{group}].tier: {needs}\n"


def test_bash_completion(installed: Installed, user_dir: Path) -> None:
    script = (
        "source <(tierscale completion bash) && COMP_WORDS=(tierscale init --tier o) && COMP_CWORD=3 && "
        '_tierscale_completion tierscale && printf "%s\\n" "${COMPREPLY[@]}"'
    )
    r = subprocess.run(
        ["bash", "-c", script], cwd=user_dir, env=installed.env, capture_output=True, text=True
    )
    assert (r.returncode, r.stdout) == (0, "openstack\n"), r.stderr
    builtin = subprocess.run(
        [str(installed.tierscale)],
        env={**installed.env, "_TIERSCALE_COMPLETE": "bash_source"},
        capture_output=True,
        text=True,
    )
    assert builtin.stdout == installed.run("completion", "bash", cwd=user_dir).stdout


# ---- the systemd unit --------------------------------------------------------------------------------------


def _unit_for(installed: Installed, dest: Path) -> Path:
    """The shipped unit with ExecStart on the test's install (/usr/local/bin/tierscale otherwise)."""
    text = UNIT.read_text()
    assert "\nExecStart=/usr/local/bin/tierscale run /etc/tierscale/tierscale.yaml\n" in text
    dest.mkdir(parents=True, exist_ok=True)
    unit = dest / "tierscale.service"
    unit.write_text(text.replace("ExecStart=/usr/local/bin/tierscale ", f"ExecStart={installed.tierscale} "))
    return unit


def test_systemd_analyze_verify(installed: Installed, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    require(analyze is not None, "systemd-analyze (apt install systemd)")
    unit = _unit_for(installed, tmp_path / "units")
    r = subprocess.run([str(analyze), "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # Not just the exit code: an unknown key or a bad value is only a warning.
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


@dataclass
class Container:
    nspawn: subprocess.Popen[bytes]
    init: int  # its systemd, as seen from the host

    def sh(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", "-t", str(self.init), "-a", *argv], capture_output=True, text=True, timeout=timeout
        )

    def out(self, *argv: str) -> str:
        return self.sh(*argv).stdout.strip()


@pytest.fixture
def container(installed: Installed, tmp_path: Path) -> Iterator[Container]:
    """A systemd booted on the host's /usr with an empty /etc (--volatile=yes) but for the unit, enabled,
    its config and its sysusers.d entry; on a private network, so its ports are its own."""
    nspawn = shutil.which("systemd-nspawn")
    require(nspawn is not None, "systemd-nspawn (apt install systemd-container)")
    require(shutil.which("nsenter") is not None, "nsenter (util-linux)")
    require(
        installed.venv.joinpath("bin", "python").resolve().is_relative_to("/usr"),
        f"a python3 with venv under /usr ({SYSTEM_PYTHON}): the container has the host's /usr only",
    )
    etc = tmp_path / "etc"
    units = etc / "systemd" / "system"
    _unit_for(installed, units)
    (units / "multi-user.target.wants").mkdir()
    (units / "multi-user.target.wants" / "tierscale.service").symlink_to("../tierscale.service")
    (etc / "sysusers.d").mkdir()
    shutil.copy2(REPO / "packaging" / "tierscale.sysusers", etc / "sysusers.d" / "tierscale.conf")
    (etc / "tierscale").mkdir()
    shutil.copy2(REPO / "packaging" / "tierscale.yaml", etc / "tierscale" / "tierscale.yaml")
    argv = [
        str(nspawn),
        "--quiet",
        "--directory=/",
        "--volatile=yes",
        # No machined or D-Bus here: the container is this process's child and nothing else.
        "--register=no",
        "--keep-unit",
        "--private-network",
        "--console=passive",
        f"--machine=tierscale-test-{os.getpid()}",
        f"--bind-ro={units}:/etc/systemd/system",
        f"--bind-ro={etc / 'sysusers.d'}:/etc/sysusers.d",
        f"--bind-ro={etc / 'tierscale'}:/etc/tierscale",
        f"--bind-ro={installed.venv.parent}",
        "--boot",
        "--",
        "systemd.firstboot=off",  # it would wait on the console for a locale and a root password
    ]
    log = (tmp_path / "boot.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:

        def init_pid() -> int | None:
            assert proc.poll() is None, (tmp_path / "boot.log").read_text(errors="replace")[-3000:]
            kids = psutil.Process(proc.pid).children()
            return kids[0].pid if kids else None

        box = Container(proc, wait_for(init_pid, 30, what="the container's systemd"))
        wait_for(
            lambda: box.out("systemctl", "is-system-running") in ("running", "degraded"),
            120,
            interval=0.5,
            what="the container booted",
        )
        yield box
    finally:
        proc.send_signal(signal.SIGTERM)  # nspawn powers the container off: every process in it ends
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def _replicas(box: Container) -> set[str]:
    return set(box.out("pgrep", "-u", "tierscale", "-f", "tierscale.workload").split())


def test_unit_under_systemd_runs_reloads_restarts_and_stops(
    installed: Installed, container: Container, tmp_path: Path
) -> None:
    box = container
    python = str(installed.venv / "bin" / "python")
    wait_for(lambda: box.out("systemctl", "is-active", "tierscale") == "active", 30, what="the unit active")
    # As its own user, with the state directory systemd made for it and the config's state_dir there.
    main_pid = box.out("systemctl", "show", "--property=MainPID", "--value", "tierscale")
    assert box.out("stat", "-c", "%U", f"/proc/{main_pid}") == "tierscale"
    assert box.out("stat", "-c", "%U %a", "/var/lib/tierscale") == "tierscale 750"
    fetch = (
        "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8080/work?ms=1', timeout=2).status)"
    )
    wait_for(lambda: box.out(python, "-c", fetch) == "200", 60, what="a request through nginx answered")
    assert len(_replicas(box)) == 1

    # systemctl reload = SIGHUP: the controller re-reads its file.
    conf = tmp_path / "etc" / "tierscale" / "tierscale.yaml"
    conf.write_text(conf.read_text().replace("    min: 1\n", "    min: 2\n"))
    assert box.sh("systemctl", "reload", "tierscale").returncode == 0
    wait_for(lambda: len(_replicas(box)) == 2, 60, what="a second replica after the reload")
    journal = box.out("journalctl", "-u", "tierscale", "--no-pager")
    assert "SIGHUP: /etc/tierscale/tierscale.yaml applied" in journal

    # A restart keeps the replicas (KillMode=process); the new controller adopts them.
    before = _replicas(box)
    assert box.sh("systemctl", "restart", "tierscale").returncode == 0
    wait_for(
        lambda: box.out("journalctl", "-u", "tierscale", "--no-pager").count("adopted replica") == 2,
        60,
        what="both replicas adopted",
    )
    assert _replicas(box) == before

    assert box.sh("systemctl", "stop", "tierscale").returncode == 0
    assert box.out("systemctl", "is-active", "tierscale") == "inactive"
    assert _replicas(box) == before  # stopping the controller leaves the service serving
    as_user = ["setpriv", "--reuid=tierscale", "--regid=tierscale", "--init-groups"]
    down = box.sh(*as_user, str(installed.tierscale), "down", "/etc/tierscale/tierscale.yaml")
    assert (down.returncode, down.stdout) == (0, "web: deleted 2 replica(s), balancer stopped\n"), down.stderr
    assert not _replicas(box)
