"""The two helpers every tier shares: CPU utilization from cumulative counters, and `host:port` parsing."""

from __future__ import annotations

import pytest

from tierscale.addresses import AddressError, format_address, host_of, split_address
from tierscale.providers.cpu_rate import CpuRate, CpuReading


def test_split_address_handles_names_ipv4_and_bracketed_ipv6() -> None:
    assert split_address("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert split_address("web-1.example:80") == ("web-1.example", 80)
    assert split_address("[2001:db8::1]:443") == ("2001:db8::1", 443)
    assert split_address("[::1]:1") == ("::1", 1)


@pytest.mark.parametrize(
    ("value", "part"),
    [
        ("no-port", "form"),
        (":80", "form"),
        ("::1:80", "form"),  # an IPv6 literal without brackets: the port is ambiguous
        ("[not-v6]:80", "form"),
        ("[::1]", "form"),
        ("host:0", "port"),
        ("host:65536", "port"),
        ("host:８０", "port"),  # non-ASCII digits are not a port
        ("host:", "port"),
    ],
)
def test_split_address_says_which_part_is_wrong(value: str, part: str) -> None:
    with pytest.raises(AddressError) as err:
        split_address(value)
    assert err.value.part == part and isinstance(err.value, ValueError)


def test_split_address_checks_the_host_before_the_port() -> None:
    with pytest.raises(AddressError) as err:
        split_address("bad host:99999", host_ok=lambda h: " " not in h)
    assert err.value.part == "host"


def test_format_address_and_host_of_round_trip() -> None:
    assert format_address("10.0.0.5", 80) == "10.0.0.5:80"
    assert format_address("2001:db8::5", 80) == "[2001:db8::5]:80"
    assert format_address("[2001:db8::5]", "80") == "[2001:db8::5]:80"
    for host in ("10.0.0.5", "2001:db8::5", "example.org"):
        assert split_address(format_address(host, 5000)) == (host, 5000)
    assert host_of("example.org:8080") == "example.org"
    assert host_of("example.org") == "example.org"
    assert host_of("[::1]:9900") == "::1"
    assert host_of("::1") == "::1"


def test_cpu_rate_is_the_delta_of_cpu_time_over_wall_time_against_the_allotment() -> None:
    rate = CpuRate(min_interval=0.2)
    assert rate.percent("r", 10.0, 500, at=100.0) is None  # first sight, lifetime unknown: no value
    # 0.5 s of CPU in 1 s against a 0.5-core allotment: fully used.
    assert rate.percent("r", 10.5, 500, at=101.0) == pytest.approx(100.0)
    # Asked again right away: the last value stands and the baseline stays...
    assert rate.percent("r", 10.5, 500, at=101.1) == pytest.approx(100.0)
    # ...so the next interval is measured from the kept reading (101.0), not from 101.1.
    assert rate.percent("r", 10.6, 500, at=102.0) == pytest.approx(20.0)


def test_cpu_rate_first_sight_uses_the_lifetime_or_the_tiers_previous_reading() -> None:
    rate = CpuRate()
    assert rate.percent("a", 2.0, 1000, at=50.0, lifetime=4.0) == pytest.approx(50.0)
    assert rate.percent("b", 3.0, 2000, at=50.0, previous=CpuReading(2.0, 49.0)) == pytest.approx(50.0)


def test_cpu_rate_counter_reset_starts_over_and_forgotten_keys_are_dropped() -> None:
    rate = CpuRate()
    rate.percent("r", 100.0, 1000, at=0.0)
    rate.percent("r", 101.0, 1000, at=1.0)
    assert rate.percent("r", 0.5, 1000, at=2.0) is None  # a restarted process: no interval
    assert rate.percent("r", 1.0, 1000, at=3.0) == pytest.approx(50.0)
    rate.percent("gone", 1.0, 1000, at=3.0)
    rate.retain({"r"})
    assert rate.percent("gone", 2.0, 1000, at=4.0) is None  # its reading was dropped
    assert rate.percent("r", 1.0, 1000, at=4.0) == pytest.approx(0.0)
