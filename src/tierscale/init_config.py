"""`tierscale init --tier T`: a commented starter config for one tier, written after a look at what this
host offers that tier (an engine, a hypervisor, a cloud) and what it found said out loud.

The probes use the tiers' own client libraries, never their command-line tools, so what they see is
what the controller will see. Every library is an extra: a missing one is reported with the pip command
and the file is still written, since the config is also wanted on the machine where it is prepared.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from tierscale.config import load_config_text
from tierscale.providers import TIER_LIBRARIES

TIERS = ("process", "docker", "libvirt", "openstack")
DEFAULT_STATE_DIR = "~/.local/state/tierscale"
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
DEFAULT_LIBVIRT_URI = "qemu:///system"
DEMO_IMAGE = "tierscale/demo:latest"
# KVM_GET_API_VERSION, _IO(KVMIO=0xAE, 0): answers 12 on every kernel since 2.6.22.
_KVM_GET_API_VERSION = 0xAE00
# Where the balancer looks for nginx beyond $PATH (tierscale.balancer.nginx): /usr/sbin is often missing
# from the PATH of a non-login shell, and a probe that looked elsewhere would report a false absence.
_NGINX_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin")
_SLOT = re.compile(r"\{\{(\w+)\}\}")
PROBE_TIMEOUT = 5  # seconds; an engine or a hypervisor that takes longer counts as not answering


class InitError(Exception):
    """Bad input for `init` (exit 2)."""


@dataclass
class Findings:
    """What the probes saw: one line each for the user, and the template's slots they fill."""

    lines: list[str] = field(default_factory=list)
    values: dict[str, str] = field(default_factory=dict)


def _scalar(value: str | None) -> str:
    # A JSON string is a YAML double-quoted scalar: any path, cloud name or URL goes in verbatim.
    return "null" if value is None else json.dumps(value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _not_installed(tier: str, exc: ImportError) -> str:
    lib = TIER_LIBRARIES[tier]
    if isinstance(exc, ModuleNotFoundError) and exc.name == lib.module:
        return f"{lib.module} ({lib.what}): not installed: pip install 'tierscale[{lib.extra}]'"
    # Installed but broken (libvirt-python built against a libvirt.so that has gone, say): quote why.
    why = _first_line(exc)
    return f"{lib.module} ({lib.what}): cannot be imported ({why}): pip install 'tierscale[{lib.extra}]'"


# ---- probes --------------------------------------------------------------------------------------------


def probe_nginx() -> str:
    """Every starter config puts its group behind nginx; without one `run` fails at once."""
    search = os.pathsep.join([os.environ.get("PATH", ""), *_NGINX_DIRS])
    found = shutil.which("nginx", path=search)
    if found:
        return f"nginx: {found}"
    return "nginx: not found: install it (Debian: apt install nginx-light), or set balancer: {type: none}"


def probe_process() -> Findings:
    # The interpreter `init` runs on has tierscale installed, so its demo workload is importable there.
    python = sys.executable
    return Findings(
        [f"process: nothing to probe; replicas run {python} -m tierscale.workload (the demo service)"],
        {"python": _scalar(python)},
    )


def probe_docker() -> Findings:
    host = os.environ.get("DOCKER_HOST") or None
    where = host or DEFAULT_DOCKER_HOST
    # An explicit DOCKER_HOST goes into the file: under systemd the controller does not see this shell's
    # environment.
    found = Findings(values={"docker_host": _scalar(host), "image": _scalar(DEMO_IMAGE)})
    try:
        import docker
        import docker.errors
    except ImportError as exc:
        found.lines.append(_not_installed("docker", exc))
        return found
    try:
        # from_env, as the controller does: DOCKER_HOST (else the local socket), DOCKER_TLS_VERIFY, ...
        client = docker.from_env(timeout=PROBE_TIMEOUT)
    except docker.errors.DockerException as exc:
        found.lines.append(f"docker: cannot use {where}: {_first_line(exc)}")
        return found
    try:
        version = client.version()
    except (docker.errors.DockerException, OSError) as exc:
        hint = " (is this user in the docker group?)" if "Permission denied" in str(exc) else ""
        found.lines.append(f"docker: no engine answers at {where}: {_first_line(exc)}{hint}")
        client.close()
        return found
    try:
        found.lines.append(
            f"docker: engine at {where} answers: Docker {version.get('Version', '?')} "
            f"(API {version.get('ApiVersion', '?')}, {version.get('Os', '?')}/{version.get('Arch', '?')})"
        )
        try:
            client.images.get(DEMO_IMAGE)
            found.lines.append(f"docker: image {DEMO_IMAGE} is on the engine")
        except docker.errors.ImageNotFound:
            found.lines.append(
                f"docker: image {DEMO_IMAGE} is not on the engine (tierscale never pulls): "
                "build it (make docker-image in a checkout), or set template.image to yours"
            )
        except (docker.errors.DockerException, OSError) as exc:
            found.lines.append(f"docker: cannot list images: {_first_line(exc)}")
    finally:
        client.close()
    return found


def _libvirt_version(n: int) -> str:
    return f"{n // 1_000_000}.{n // 1000 % 1000}.{n % 1000}"


def probe_kvm(device: str = "/dev/kvm") -> str:
    """Whether this process can use KVM. libvirt's QEMU runs as its own user, so 'libvirt offers kvm' (the
    libvirt probe) is what decides; this line tells a missing device from a permission problem."""
    import fcntl

    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return f"kvm: no {device}: VMs would run under TCG (emulated, much slower)"
    except OSError as exc:
        return f"kvm: {device} is there but does not open here: {exc.strerror or exc}"
    try:
        api = fcntl.ioctl(fd, _KVM_GET_API_VERSION)
    except OSError as exc:
        return f"kvm: {device} opens but does not answer KVM_GET_API_VERSION: {exc.strerror or exc}"
    finally:
        os.close(fd)
    return f"kvm: {device} works (KVM API {api})"


def probe_libvirt() -> Findings:
    uri = os.environ.get("LIBVIRT_DEFAULT_URI") or DEFAULT_LIBVIRT_URI
    found = Findings(values={"uri": _scalar(uri)})
    try:
        import libvirt
    except ImportError as exc:
        found.lines += [_not_installed("libvirt", exc), probe_kvm()]
        return found

    def _quiet(_ctx: object, _err: object) -> None:
        """libvirt's default handler prints every error to stderr; the probe reports them itself."""

    libvirt.registerErrorHandler(_quiet, None)
    conn = None
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        # Read-write refused but read-only accepted: the daemon is up, this user may not drive it.
        try:
            libvirt.openReadOnly(uri).close()
            found.lines.append(
                f"libvirt: {uri} answers read-only but refuses to be driven: {exc.get_error_message()} "
                "(qemu:///system needs root or the libvirt group)"
            )
        except libvirt.libvirtError:
            found.lines.append(f"libvirt: {uri} does not answer: {exc.get_error_message()}")
    if conn is not None:
        try:
            found.lines.append(
                f"libvirt: {uri} answers: libvirt {_libvirt_version(conn.getLibVersion())}, "
                f"{conn.getType()} {_libvirt_version(conn.getVersion())} on {conn.getHostname()}"
            )
            try:
                conn.getDomainCapabilities(None, None, None, "kvm", 0)
                found.lines.append("libvirt: offers kvm domains (domain_type auto still boots a probe guest)")
            except libvirt.libvirtError as exc:
                why = exc.get_error_message()
                found.lines.append(
                    f"libvirt: offers no kvm domains ({why}): domain_type auto means qemu (TCG)"
                )
        finally:
            conn.close()
    found.lines.append(probe_kvm())
    return found


def probe_openstack() -> Findings:
    found = Findings(values={"cloud": _scalar("mycloud")})
    try:
        from openstack import exceptions as os_exc
        from openstack.config import loader

        # The same files, in the same order, as the controller reads (OS_CLIENT_CONFIG_FILE first).
        from tierscale.providers.openstack_cloud import _config_files
    except ImportError as exc:
        found.lines.append(_not_installed("openstack", exc))
        return found
    files, secure = _config_files()
    try:
        config = loader.OpenStackConfig(config_files=files, secure_files=secure, load_envvars=False)
    except (os_exc.ConfigException, OSError, ValueError) as exc:
        found.lines.append(f"openstack: cannot read clouds.yaml: {_first_line(exc)}")
        return found
    clouds = sorted(config.cloud_config.get("clouds", {}))
    # With no cloud in any file the loader makes one up ("defaults", from its built-in settings).
    if config.config_filename is None or config.cloud_config.get("clouds") == {"defaults": config.defaults}:
        clouds = []
    if not clouds:
        found.lines.append(
            "openstack: no clouds.yaml with a cloud in it (looked at $OS_CLIENT_CONFIG_FILE, ./clouds.yaml, "
            "~/.config/openstack/clouds.yaml, /etc/openstack/clouds.yaml): set template.cloud when there is"
        )
        return found
    wanted = os.environ.get("OS_CLOUD")
    pick = wanted if wanted in clouds else clouds[0]
    why = "$OS_CLOUD" if pick == wanted else "the first"
    found.lines.append(
        f"openstack: {config.config_filename}: clouds {', '.join(clouds)}; using {pick} ({why})"
    )
    found.values["cloud"] = _scalar(pick)
    return found


PROBES: dict[str, Callable[[], Findings]] = {
    "process": probe_process,
    "docker": probe_docker,
    "libvirt": probe_libvirt,
    "openstack": probe_openstack,
}


# ---- the file ------------------------------------------------------------------------------------------


def template_text(tier: str) -> str:
    return resources.files("tierscale").joinpath("examples", f"{tier}.yaml").read_text(encoding="utf-8")


def render(tier: str, values: Mapping[str, str], found: list[str]) -> str:
    """The tier's template with its slots filled; what the probes found heads the file as comments."""
    head = [f"# `tierscale init --tier {tier}` found:"] + [f"#   {line}" for line in found]

    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        if name == "found":
            return "\n".join(head)
        return values[name]  # a KeyError here is a template naming a slot no probe fills: a bug

    return _SLOT.sub(fill, template_text(tier))


def starter_config(
    tier: str, state_dir: str | None = None, file: str = "tierscale.yaml"
) -> tuple[str, list[str]]:
    """The starter config for `tier` (its comments name it `file`) and what the probes found, one line
    each."""
    if tier not in PROBES:
        raise InitError(f"--tier {tier}: must be one of {', '.join(TIERS)}")
    findings = PROBES[tier]()
    lines = [*findings.lines, probe_nginx()]
    # One line each in the file's head comment, whatever an error message carried.
    lines = [" ".join(line.split()) for line in lines]
    values = {
        "state_dir": _scalar(state_dir or DEFAULT_STATE_DIR),
        "file": " ".join(file.split()),  # only in comments
        **findings.values,
    }
    return render(tier, values, lines), lines


def write_new(path: Path, text: str, force: bool) -> None:
    """Write `text` to `path`, never over an existing file unless `force`."""
    if path.is_dir():
        raise InitError(f"--out {path}: is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # "x" unless forced: the check and the creation are one step, so nothing is clobbered in between.
        with open(path, "w" if force else "x", encoding="utf-8") as f:
            f.write(text)
    except FileExistsError:
        raise InitError(f"{path} exists: pass --force to overwrite it") from None


def init_config(
    tier: str, out: str, force: bool = False, state_dir: str | None = None
) -> tuple[str, list[str]]:
    """Probe, render, check, and write to `out` ("-": write nothing). Returns the text and the report;
    ConfigError if the starter does not validate."""
    if tier not in PROBES:
        raise InitError(f"--tier {tier}: must be one of {', '.join(TIERS)}")
    path = None if out == "-" else Path(out)
    if path is not None and path.is_dir():
        raise InitError(f"--out {out}: is a directory")
    if path is not None and not force and (path.exists() or path.is_symlink()):
        # Refused before probing: a probe can take seconds, and the answer is already known.
        raise InitError(f"{out} exists: pass --force to overwrite it")
    text, lines = starter_config(tier, state_dir, "tierscale.yaml" if path is None else out)
    # Checked before it is written: a starter that does not validate is a bug, and must not be left behind.
    load_config_text(text, out)
    if path is not None:
        write_new(path, text, force)
    return text, lines
