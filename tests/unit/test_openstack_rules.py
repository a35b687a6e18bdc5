"""The OpenStack provider's pure rules (server → replica: ownership, state, address, faults, CPU) and the
example config. (Against a real cloud: tests/e2e/test_openstack_api.py.)"""

from __future__ import annotations

import pytest

from helpers import REPO
from tierscale.config import validate_file
from tierscale.providers.openstack_servers import (
    cpu_seconds,
    created_at,
    fault_message,
    owned_by,
    parse_time,
    pick_address,
    replica_state,
)


def test_ownership_needs_both_marks_of_this_group() -> None:
    assert owned_by({"tierscale_group": "web", "tierscale_replica": "r-1"}, "web") == "r-1"
    assert owned_by({"tierscale_group": "web2", "tierscale_replica": "r-1"}, "web") is None
    assert owned_by({"tierscale_group": "web"}, "web") is None
    assert owned_by({}, "web") is None
    assert owned_by(None, "web") is None


def test_state_mapping() -> None:
    assert replica_state("ACTIVE", None, 5, 300) == "running"
    assert replica_state("HARD_REBOOT", "rebooting_hard", 5, 300) == "running"
    assert replica_state("BUILD", "spawning", 5, 300) == "provisioning"
    assert replica_state("BUILD", "spawning", 301, 300) == "failed"  # its creator gave up on it
    assert replica_state("ERROR", None, 5, 300) == "failed"
    assert replica_state("SHUTOFF", None, 5, 300) == "failed"
    assert replica_state("ACTIVE", "deleting", 5, 300) is None
    assert replica_state("SOFT_DELETED", None, 5, 300) is None


def test_address_prefers_floating_then_ipv4_on_the_configured_network() -> None:
    addresses = {
        "other": [{"addr": "192.0.2.9", "version": 4, "OS-EXT-IPS:type": "fixed"}],
        "test": [
            {"addr": "2001:db8::5", "version": 6, "OS-EXT-IPS:type": "fixed"},
            {"addr": "10.0.0.5", "version": 4, "OS-EXT-IPS:type": "fixed"},
            {"addr": "203.0.113.7", "version": 4, "OS-EXT-IPS:type": "floating"},
        ],
    }
    assert pick_address(addresses, "test", 5000) == "203.0.113.7:5000"
    assert pick_address({"test": addresses["test"][:2]}, "test", 80) == "10.0.0.5:80"
    assert pick_address({"test": addresses["test"][:1]}, "test", 80) == "[2001:db8::5]:80"
    assert pick_address(addresses, "missing", 80) is None
    assert pick_address(addresses, None, 80) == "192.0.2.9:80"  # no network configured: the first one
    assert pick_address({}, None, 80) is None  # networks: none


def test_fault_time_and_cpu_parsing() -> None:
    assert (
        fault_message({"code": 500, "message": "No valid host was found. \nmore"})
        == "No valid host was found."
    )
    assert fault_message(None) == "no fault recorded by Nova"
    assert parse_time("2026-11-27T19:25:13Z") == pytest.approx(1795807513.0)
    assert created_at({"tierscale_created_at": "12.5"}, "2026-11-27T19:25:13Z", 0) == 12.5
    assert created_at({}, "2026-11-27T19:25:13Z", 0) == pytest.approx(1795807513.0)
    assert created_at({}, None, 7.0) == 7.0
    assert cpu_seconds([{"id": 0, "time": 1_500_000_000}, {"id": 1, "time": 500_000_000}]) == 2.0
    assert cpu_seconds([{"id": 0, "time": None}]) is None


def test_example_config_is_valid() -> None:
    example = REPO / "examples" / "openstack.yaml"
    assert validate_file(example) == []
