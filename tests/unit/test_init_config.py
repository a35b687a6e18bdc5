"""`tierscale init`, `tierscale completion` and what a tier without its extra does: the starters validate
whatever the probes found, the probes' reports with each library missing or a host that does not answer,
and the one-line refusals. Fake libraries and closed ports only: no daemon is needed."""

from __future__ import annotations

import builtins
import configparser
import socket
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from click.shell_completion import BashComplete
from click.testing import CliRunner, Result

from helpers import REPO
from tierscale import init_config as ic
from tierscale.cli import main
from tierscale.config import load_config_text
from tierscale.providers import MissingExtra, make_provider, missing_extra

TIER_MODULES = {
    "docker": ("docker", "tierscale.providers.docker", "tierscale.providers.swarm"),
    "libvirt": (
        "libvirt",
        "tierscale.providers.libvirt",
        "tierscale.providers.libvirt_conn",
        "tierscale.providers.libvirt_entry",
        "tierscale.providers.libvirt_storage",
        "tierscale.providers.libvirt_pool",
        "tierscale.providers.libvirt_probe",
    ),
    "openstack": ("openstack", "tierscale.providers.openstack", "tierscale.providers.openstack_cloud"),
}


def without(monkeypatch: pytest.MonkeyPatch, library: str) -> None:
    """As if `library` were not installed: importing it fails, and so does importing again the provider
    modules that import it (they may be cached from another test)."""
    first, *ours = TIER_MODULES[library]
    monkeypatch.setitem(sys.modules, first, None)
    for name in ours:
        monkeypatch.delitem(sys.modules, name, raising=False)


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def _no_ambient_tier_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The host's own engine, hypervisor or clouds.yaml must not decide what these tests see.
    for var in ("DOCKER_HOST", "LIBVIRT_DEFAULT_URI", "OS_CLOUD", "OS_CLIENT_CONFIG_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)  # ./clouds.yaml is one of the files openstacksdk reads


# ---- the starters ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("tier", ic.TIERS)
def test_every_starter_validates_with_its_library_missing(
    tier: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for library in TIER_MODULES:
        without(monkeypatch, library)
    text, lines = ic.starter_config(tier, str(tmp_path / "state dir"), "my.yaml")
    cfg = load_config_text(text, "my.yaml")
    assert cfg.groups[0].tier == tier
    assert cfg.state_dir == tmp_path / "state dir"
    assert "{{" not in text and "tierscale run my.yaml" in text
    # What was found heads the file, one comment line each.
    assert all(f"#   {line}\n" in text for line in lines)
    if tier in TIER_MODULES:
        extra = ic.TIER_LIBRARIES[tier].extra
        assert f"not installed: pip install 'tierscale[{extra}]'" in lines[0]


def test_process_starter_runs_the_interpreter_init_ran_on() -> None:
    text, lines = ic.starter_config("process")
    command = load_config_text(text, "x.yaml").groups[0].template.command
    assert command == [sys.executable, "-m", "tierscale.workload", "--port", "{port}"]
    assert sys.executable in lines[0]


def test_the_default_state_dir_is_the_users() -> None:
    text, _ = ic.starter_config("process")
    assert load_config_text(text, "x.yaml").state_dir == Path("~/.local/state/tierscale").expanduser()


def test_packaged_config_fits_the_unit() -> None:
    """packaging/tierscale.yaml is what the unit runs: its state_dir is the unit's StateDirectory."""
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read(REPO / "packaging" / "tierscale.service")
    service = unit["Service"]
    config_path = service["ExecStart"].split()[-1]
    assert config_path == "/etc/tierscale/tierscale.yaml"
    cfg = load_config_text((REPO / "packaging" / "tierscale.yaml").read_text(), config_path)
    assert cfg.state_dir == Path("/var/lib") / service["StateDirectory"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    # Replicas and nginx outlive a restart of the controller, which adopts them.
    assert service["KillMode"] == "process"


# ---- probes --------------------------------------------------------------------------------------------


def test_docker_probe_names_the_engine_that_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    host = f"tcp://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("DOCKER_HOST", host)
    found = ic.probe_docker()
    assert len(found.lines) == 1 and found.lines[0].startswith("docker: ") and host in found.lines[0]
    # DOCKER_HOST goes into the file: a service manager would not pass this shell's environment on.
    assert found.values["docker_host"] == f'"{host}"'
    text, _ = ic.starter_config("docker")
    assert load_config_text(text, "x.yaml").groups[0].template.host == host


class FakeImageNotFound(Exception):
    pass


def fake_docker(version: dict[str, str], images: set[str]) -> types.ModuleType:
    class Images:
        def get(self, name: str) -> object:
            if name not in images:
                raise FakeImageNotFound(name)
            return object()

    class Client:
        images = Images()

        def version(self) -> dict[str, str]:
            return version

        def close(self) -> None:
            pass

    errors = types.ModuleType("docker.errors")
    errors.DockerException = type("DockerException", (Exception,), {})  # type: ignore[attr-defined]
    errors.ImageNotFound = FakeImageNotFound  # type: ignore[attr-defined]
    mod = types.ModuleType("docker")
    mod.errors = errors  # type: ignore[attr-defined]
    mod.from_env = lambda **kw: Client()  # type: ignore[attr-defined]
    return mod


@pytest.mark.parametrize("present", [True, False])
def test_docker_probe_reports_the_engine_and_the_demo_image(
    monkeypatch: pytest.MonkeyPatch, present: bool
) -> None:
    mod = fake_docker({"Version": "27.1.0", "ApiVersion": "1.46", "Os": "linux", "Arch": "amd64"}, set())
    if present:
        mod = fake_docker({"Version": "27.1.0", "ApiVersion": "1.46"}, {ic.DEMO_IMAGE})
    monkeypatch.setitem(sys.modules, "docker", mod)
    monkeypatch.setitem(sys.modules, "docker.errors", mod.errors)
    lines = ic.probe_docker().lines
    assert lines[0].startswith(f"docker: engine at {ic.DEFAULT_DOCKER_HOST} answers: Docker 27.1.0 (API 1.46")
    assert ("is on the engine" in lines[1]) is present
    assert ("never pulls" in lines[1]) is not present


class FakeLibvirtError(Exception):
    def get_error_message(self) -> str:
        return str(self)


def fake_libvirt(rw: bool, ro: bool, kvm: bool) -> types.ModuleType:
    class Conn:
        def getLibVersion(self) -> int:
            return 9_000_000

        def getVersion(self) -> int:
            return 7_002_022

        def getType(self) -> str:
            return "QEMU"

        def getHostname(self) -> str:
            return "hv1"

        def getDomainCapabilities(self, *args: Any) -> str:
            if not kvm:
                raise FakeLibvirtError("invalid argument: KVM is not supported on this host")
            return "<domainCapabilities/>"

        def close(self) -> None:
            pass

    def opener(ok: bool, what: str) -> Any:
        def open_(uri: str) -> Conn:
            if not ok:
                raise FakeLibvirtError(f"{what} refused: {uri}")
            return Conn()

        return open_

    mod = types.ModuleType("libvirt")
    mod.libvirtError = FakeLibvirtError  # type: ignore[attr-defined]
    mod.registerErrorHandler = lambda handler, ctx: None  # type: ignore[attr-defined]
    mod.open = opener(rw, "read-write")  # type: ignore[attr-defined]
    mod.openReadOnly = opener(ro, "read-only")  # type: ignore[attr-defined]
    return mod


@pytest.mark.parametrize(
    ("rw", "ro", "kvm", "expect"),
    [
        (
            True,
            True,
            True,
            ["libvirt: qemu:///system answers: libvirt 9.0.0, QEMU 7.2.22 on hv1", "offers kvm"],
        ),
        (True, True, False, ["answers", "offers no kvm domains (invalid argument: KVM is not supported"]),
        (False, True, False, ["answers read-only but refuses to be driven", "libvirt group"]),
        (False, False, False, ["libvirt: qemu:///system does not answer: read-write refused"]),
    ],
)
def test_libvirt_probe(
    monkeypatch: pytest.MonkeyPatch, rw: bool, ro: bool, kvm: bool, expect: list[str]
) -> None:
    monkeypatch.setitem(sys.modules, "libvirt", fake_libvirt(rw, ro, kvm))
    found = ic.probe_libvirt()
    text = "\n".join(found.lines)
    assert all(e in text for e in expect), text
    assert found.lines[-1].startswith("kvm: ")  # /dev/kvm is reported whatever libvirt says


def test_libvirt_probe_uses_the_default_uri_of_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "libvirt", fake_libvirt(True, True, True))
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "qemu+ssh://hv1/system")
    text, lines = ic.starter_config("libvirt")
    assert lines[0].startswith("libvirt: qemu+ssh://hv1/system answers")
    assert load_config_text(text, "x.yaml").groups[0].template.uri == "qemu+ssh://hv1/system"


def test_kvm_probe_tells_a_missing_device_from_one_that_does_not_work(tmp_path: Path) -> None:
    assert "no " in ic.probe_kvm(str(tmp_path / "kvm")) and "TCG" in ic.probe_kvm(str(tmp_path / "kvm"))
    not_kvm = tmp_path / "file"
    not_kvm.write_text("")
    assert "does not answer KVM_GET_API_VERSION" in ic.probe_kvm(str(not_kvm))


def test_openstack_probe_lists_the_clouds_and_picks_os_cloud(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(
        "clouds:\n"
        "  lab: {auth: {auth_url: 'http://127.0.0.1:1/v3'}}\n"
        "  'prod: eu \"1\"': {auth: {auth_url: 'http://127.0.0.1:1/v3'}}\n"
    )
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    text, lines = ic.starter_config("openstack")
    assert lines[0] == f'openstack: {clouds}: clouds lab, prod: eu "1"; using lab (the first)'
    assert load_config_text(text, "x.yaml").groups[0].template.cloud == "lab"
    monkeypatch.setenv("OS_CLOUD", 'prod: eu "1"')
    text, lines = ic.starter_config("openstack")
    assert lines[0].endswith('using prod: eu "1" ($OS_CLOUD)')
    # Any name goes into the file intact: it is written as a quoted scalar.
    assert load_config_text(text, "x.yaml").groups[0].template.cloud == 'prod: eu "1"'


def test_openstack_probe_without_a_clouds_yaml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tierscale.providers import openstack_cloud

    monkeypatch.setattr(openstack_cloud, "_config_files", lambda: ([str(tmp_path / "none.yaml")], []))
    text, lines = ic.starter_config("openstack")
    assert lines[0].startswith("openstack: no clouds.yaml with a cloud in it")
    assert load_config_text(text, "x.yaml").groups[0].template.cloud == "mycloud"


@pytest.mark.parametrize("tier", sorted(TIER_MODULES))
def test_probe_reports_a_missing_library(monkeypatch: pytest.MonkeyPatch, tier: str) -> None:
    without(monkeypatch, tier)
    lib = ic.TIER_LIBRARIES[tier]
    line = ic.PROBES[tier]().lines[0]
    assert line == f"{lib.module} ({lib.what}): not installed: pip install 'tierscale[{lib.extra}]'"


def test_probe_quotes_a_library_that_is_there_but_broken(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fail_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "libvirt":  # what libvirt-python raises once the libvirt.so it was built against is gone
            raise ImportError("libvirt.so.0: cannot open shared object file", name="libvirtmod")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "libvirt", raising=False)
    monkeypatch.setattr(builtins, "__import__", fail_import)
    line = ic.probe_libvirt().lines[0]
    assert line == (
        "libvirt (libvirt-python): cannot be imported (libvirt.so.0: cannot open shared object file): "
        "pip install 'tierscale[libvirt]'"
    )


def test_nginx_probe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(ic, "_NGINX_DIRS", ())
    monkeypatch.setenv("PATH", str(tmp_path))
    assert ic.probe_nginx().startswith("nginx: not found: install it")
    fake = tmp_path / "nginx"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert ic.probe_nginx() == f"nginx: {fake}"


# ---- the command -----------------------------------------------------------------------------------------


def test_init_writes_says_what_it_found_and_the_file_validates(tmp_path: Path) -> None:
    out = tmp_path / "etc" / "tierscale.yaml"  # a parent that does not exist yet is made
    r = cli("init", "--tier", "process", "--out", str(out), "--state-dir", str(tmp_path / "st"))
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0].startswith("process: nothing to probe; replicas run ")
    assert f"wrote {out}" in r.stdout
    v = cli("validate", str(out))
    assert v.exit_code == 0 and v.stdout == "ok\n"


def test_init_to_stdout_keeps_the_report_apart(tmp_path: Path) -> None:
    r = cli("init", "--tier", "process", "--out", "-")
    assert r.exit_code == 0
    assert r.stdout.startswith("# A starter config for the process tier")
    assert "process: nothing to probe" in r.stderr and "wrote" not in r.stdout
    assert load_config_text(r.stdout, "-").groups[0].tier == "process"


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "mine.yaml"
    out.write_text("my own config\n")
    r = cli("init", "--tier", "process", "--out", str(out))
    assert r.exit_code == 2
    assert r.stderr == f"tierscale: {out} exists: pass --force to overwrite it\n"
    assert out.read_text() == "my own config\n"
    r = cli("init", "--tier", "process", "--out", str(out), "--force")
    assert r.exit_code == 0 and load_config_text(out.read_text(), str(out)).groups[0].tier == "process"


def test_init_refuses_a_dangling_symlink_too(tmp_path: Path) -> None:
    out = tmp_path / "link.yaml"
    out.symlink_to(tmp_path / "elsewhere.yaml")
    r = cli("init", "--tier", "process", "--out", str(out))
    assert r.exit_code == 2 and "exists: pass --force" in r.stderr
    assert not (tmp_path / "elsewhere.yaml").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--tier", "swarm"],
            "tierscale: --tier swarm: must be one of process, docker, libvirt, openstack\n",
        ),
        ([], "tierscale: --tier is required: one of process, docker, libvirt, openstack\n"),
        (["--tier", "process", "--out", "."], "tierscale: --out .: is a directory\n"),
    ],
)
def test_init_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    r = cli("init", *args)
    assert r.exit_code == 2 and r.stderr == message


def test_init_writes_the_file_when_the_library_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    without(monkeypatch, "openstack")
    out = tmp_path / "os.yaml"
    r = cli("init", "--tier", "openstack", "--out", str(out))
    assert r.exit_code == 0
    assert "openstack (openstacksdk): not installed: pip install 'tierscale[openstack]'" in r.stdout
    assert load_config_text(out.read_text(), str(out)).groups[0].tier == "openstack"


# ---- a tier without its extra ------------------------------------------------------------------------------


GROUP = """\
state_dir: {sd}
groups:
  - name: web
    tier: {tier}
    min: 1
    max: 2
    template: {template}
"""
TEMPLATES = {
    "docker": "{image: tierscale/demo:latest}",
    "swarm": "{service: web, manager: 'unix:///var/run/docker.sock', nodes: ['unix:///var/run/docker.sock']}",
    "libvirt": "{base_image: /var/lib/libvirt/images/golden.qcow2}",
    "openstack": "{cloud: lab, image: golden, flavor: m1.small}",
}
WHAT = {"docker": "the Docker SDK", "libvirt": "libvirt-python", "openstack": "openstacksdk"}


@pytest.mark.parametrize("tier", sorted(TEMPLATES))
def test_a_tier_without_its_extra_fails_in_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tier: str
) -> None:
    extra = ic.TIER_LIBRARIES[tier].extra
    without(monkeypatch, extra)
    path = tmp_path / "c.yaml"
    path.write_text(GROUP.format(sd=tmp_path / "st", tier=tier, template=TEMPLATES[tier]))
    cfg = load_config_text(path.read_text(), str(path))  # the file itself is fine
    expected = f"groups[web].tier: tier {tier} needs {WHAT[extra]}: pip install 'tierscale[{extra}]'"
    with pytest.raises(MissingExtra) as err:
        make_provider(cfg.groups[0], tmp_path / "st")
    assert str(err.value) == expected
    r = cli("down", str(path))
    assert r.exit_code == 2 and r.stderr == f"tierscale: {expected}\n"


def test_a_broken_import_of_our_own_is_not_blamed_on_an_extra() -> None:
    exc = ImportError("cannot import name 'Gone'", name="tierscale.providers.docker_stats")
    with pytest.raises(ImportError) as err:
        missing_extra("docker", exc)
    assert err.value is exc


# ---- completion ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_clicks_script(shell: str) -> None:
    r = cli("completion", shell)
    assert r.exit_code == 0 and f"_TIERSCALE_COMPLETE={shell}_complete" in r.stdout


def test_completion_of_an_unknown_shell_is_one_line() -> None:
    r = cli("completion", "tcsh")
    assert r.exit_code == 2 and r.stderr == "tierscale: completion tcsh: the shells are bash, zsh, fish\n"


def test_completion_knows_the_tiers_and_the_commands() -> None:
    comp = BashComplete(main, {}, "tierscale", "_TIERSCALE_COMPLETE")
    assert [c.value for c in comp.get_completions(["init", "--tier"], "o")] == ["openstack"]
    assert {"init", "completion"} <= {c.value for c in comp.get_completions([], "")}
