"""Security defaults (issue G.4) in the config: loopback addresses by default, and no place in the config
for passwords. (A running controller's sockets, token and files: tests/e2e/test_security_defaults.py.)"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from helpers.e2e import is_loopback
from tierscale.config import ConfigError, load_config_text
from tierscale.config.models import ApiConfig, BalancerConfig, Config


# ---------------------------------------------------------------------------------------------- listen
def test_default_addresses_are_loopback() -> None:
    cfg = load_config_text(
        "groups:\n  - {name: web, tier: process, max: 1, template: {command: [x]}}\n", "min.yaml"
    )
    for listen in (
        ApiConfig().listen,
        BalancerConfig().listen,
        cfg.api.listen,
        cfg.groups[0].balancer.listen,
    ):
        host = listen.rpartition(":")[0]
        assert is_loopback(host), listen


# ---------------------------------------------------------------------------------------------- config
def _field_names(model: type[BaseModel], seen: set[type[BaseModel]] | None = None) -> set[str]:
    seen = seen if seen is not None else set()
    if model in seen:
        return set()
    seen.add(model)
    names: set[str] = set()
    for name, info in model.model_fields.items():
        names.add(name)
        for sub in _models_in(info.annotation):
            names |= _field_names(sub, seen)
    return names


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


def test_the_config_schema_has_no_field_for_a_credential() -> None:
    names = _field_names(Config)
    assert {"uri", "cloud", "image", "token_env"} <= names  # the walk reached every tier's template
    suspicious = {n for n in names if any(w in n for w in ("pass", "secret", "credential", "key", "auth"))}
    # key_name names an OpenStack keypair (a public key Nova already holds), key a Redis key (the queue's
    # name), not secrets; a metric source's login comes from the environment variable login_env names.
    assert suspicious <= {"key_name", "key"}, suspicious


GROUP = "groups:\n  - name: web\n    tier: {tier}\n    max: 1\n    template: {template}\n{extra}"
TEMPLATES = {
    "libvirt": "{kernel: /k, network: default, %s}",
    "openstack": "{image: i, flavor: f, %s}",
    "docker": "{image: tierscale/demo, %s}",
}


@pytest.mark.parametrize(
    ("tier", "key", "field"),
    [
        ("libvirt", "password: hunter2", "groups[0].template.password"),
        ("libvirt", "auth: {username: root, password: x}", "groups[0].template.auth"),
        ("openstack", "auth: {password: x}", "groups[0].template.auth"),
        ("openstack", "os_password: x", "groups[0].template.os_password"),
        ("openstack", "application_credential_secret: x", "groups[0].template.application_credential_secret"),
        ("docker", "registry_password: x", "groups[0].template.registry_password"),
    ],
)
def test_a_credential_in_the_config_is_refused_with_where_it_belongs(tier: str, key: str, field: str) -> None:
    text = GROUP.format(tier=tier, template=TEMPLATES[tier] % key, extra="")
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "creds.yaml")
    (problem,) = [p for p in info.value.problems if p.field == field]
    assert "credentials never go in the config" in problem.message and "clouds.yaml" in problem.message


@pytest.mark.parametrize("where", ["top", "group"])
def test_a_password_key_anywhere_else_is_refused_too(where: str) -> None:
    extra = "    password: x\n" if where == "group" else "password: x\n"
    text = GROUP.format(tier="process", template="{command: [x]}", extra=extra)
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "creds.yaml")
    field = "groups[0].password" if where == "group" else "password"
    assert [p.field for p in info.value.problems] == [field]


def test_a_libvirt_uri_with_a_password_is_refused() -> None:
    template = "{uri: 'qemu+ssh://root:hunter2@host/system', kernel: /k, network: default}"
    with pytest.raises(ConfigError) as info:
        load_config_text(GROUP.format(tier="libvirt", template=template, extra=""), "creds.yaml")
    (problem,) = info.value.problems
    assert problem.field == "groups[0].template.uri" and "password" in problem.message
    assert "hunter2" not in str(problem)  # the error does not repeat the secret either
    ok = "{uri: 'qemu+ssh://root@host/system', kernel: /k, network: default}"
    assert load_config_text(GROUP.format(tier="libvirt", template=ok, extra=""), "ok.yaml").groups[0].template
