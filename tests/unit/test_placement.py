"""Placement over several hosts, pure: the filters and weigher of `choose_host`, and `scale_in_order`; and
the config errors of host lists and placement."""

from __future__ import annotations

import textwrap
from collections import Counter

import pytest

from tierscale.config import ConfigError, load_config_text
from tierscale.policy.placement import Demand, HostLoad, PlacementParams, choose_host, refusal, scale_in_order

GiB = 1024**3
SPREAD, BINPACK = PlacementParams(), PlacementParams(strategy="binpack")


def hosts(*counts: int, memory: int | None = None, cpus: float | None = None) -> list[HostLoad]:
    return [HostLoad(f"h{i}", n, memory=memory, cpus=cpus) for i, n in enumerate(counts)]


@pytest.mark.parametrize(
    ("loads", "demand", "params", "expected"),
    [
        (hosts(0, 0, 0), Demand(), SPREAD, "h0"),  # a tie goes to the name: the same inputs, the same host
        (hosts(2, 1, 2), Demand(), SPREAD, "h1"),  # spread: the fewest
        (hosts(2, 1, 2), Demand(), BINPACK, "h0"),  # binpack: the most (tie by name)
        (hosts(2, 1, 3), Demand(), BINPACK, "h2"),
        # max_per_host filters before the weigher: binpack moves on to the next fullest.
        (hosts(2, 1, 3), Demand(), PlacementParams(strategy="binpack", max_per_host=3), "h0"),
        (hosts(3, 3), Demand(), PlacementParams(max_per_host=3), None),
        # Memory: 2 GiB x 1.5 - 512 MiB = 2.5 GiB for the group; three 1 GiB replicas do not fit.
        (hosts(2, 2, memory=2 * GiB), Demand(memory=GiB), SPREAD, None),
        (hosts(1, 2, memory=2 * GiB), Demand(memory=GiB), BINPACK, "h0"),
        # CPU: 1 cpu x 16 = 16 allotments of 1 cpu each.
        (hosts(16, 15, cpus=1), Demand(cpus=1.0), SPREAD, "h1"),
        (hosts(16, 16, cpus=1), Demand(cpus=1.0), SPREAD, None),
        # Capacity not known: that resource does not filter.
        (hosts(100, 100), Demand(cpus=1.0, memory=GiB), SPREAD, "h0"),
    ],
)
def test_choose_host(
    loads: list[HostLoad], demand: Demand, params: PlacementParams, expected: str | None
) -> None:
    assert choose_host(loads, demand, params) == expected


def test_spread_prefers_the_host_with_more_room_when_counts_tie() -> None:
    small, big = HostLoad("a", 1, memory=4 * GiB), HostLoad("b", 1, memory=16 * GiB)
    assert choose_host([small, big], Demand(memory=GiB), SPREAD) == "b"
    # binpack stacks: on a tie, the host with less room left (Nova's negative RAM multiplier)
    assert choose_host([small, big], Demand(memory=GiB), BINPACK) == "a"


def test_unusable_and_cordoned_hosts_are_skipped_with_their_reason() -> None:
    loads = [HostLoad("a", 0, usable=False, why_not="cordoned"), HostLoad("b", 5)]
    assert choose_host(loads, Demand(), SPREAD) == "b"
    assert refusal(loads[0], Demand(), SPREAD) == "cordoned"
    full = HostLoad("c", 2, memory=2 * GiB)
    assert refusal(full, Demand(memory=GiB), SPREAD) == "not enough memory (512 MiB left, 1024 needed)"


def test_spread_places_six_as_two_per_host() -> None:
    loads = hosts(0, 0, 0)
    for _ in range(6):
        name = choose_host(loads, Demand(), SPREAD)
        loads = [HostLoad(h.name, h.replicas + (h.name == name)) for h in loads]
    assert [h.replicas for h in loads] == [2, 2, 2]


@pytest.mark.parametrize(
    ("ordered", "strategy", "expected"),
    [
        # spread: from the most loaded host first; within a host the group's own victim order.
        ([("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b")], "spread", ["a1", "a2", "a3", "b1"]),
        ([("b1", "b"), ("a1", "a"), ("a2", "a"), ("c1", "c")], "spread", ["a1", "b1", "a2", "c1"]),
        # binpack: the emptiest host first, so that it empties.
        ([("a1", "a"), ("a2", "a"), ("b1", "b")], "binpack", ["b1", "a1", "a2"]),
        ([], "spread", []),
    ],
)
def test_scale_in_order(ordered: list[tuple[str, str]], strategy: str, expected: list[str]) -> None:
    assert scale_in_order(ordered, strategy) == expected


def test_scale_in_order_counts_replicas_outside_the_candidates() -> None:
    # Host a has a replica that is not a candidate (it is leaving already): b is the more loaded.
    assert scale_in_order([("a1", "a"), ("b1", "b")], "spread", Counter(a=1, b=2)) == ["b1", "a1"]


def test_six_to_one_keeps_the_spread() -> None:
    ordered = [(f"{h}{i}", h) for i in range(2) for h in "abc"]
    out = scale_in_order(ordered, "spread")
    left = Counter(h for _, h in ordered)
    for rid in out[:5]:
        left[rid[0]] -= 1
        assert max(left.values()) - min(left.values()) <= 1


# ---------------------------------------------------------------------------------------------- config errors
def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config_text(textwrap.dedent(text).lstrip("\n"), "c.yaml")
    return info.value.first_line()


DOCKER = """
groups:
  - name: web
    tier: docker
    min: {min}
    max: 6
{extra}    template:
      image: demo
      hosts: {hosts}
"""


@pytest.mark.parametrize(
    ("hosts_", "extra", "min_", "expected"),
    [
        ("[]", "", 1, "c.yaml:8: groups[0].template.hosts: needs at least one engine URL"),
        (
            "[tcp://10.0.0.1:2375, 'tcp://10.0.0.1:2375']",
            "",
            1,
            "c.yaml:8: groups[0].template.hosts[1]: duplicate engine URL 'tcp://10.0.0.1:2375' (also [0])",
        ),
        (
            "[tcp://10.0.0.1]",
            "",
            1,
            "c.yaml:8: groups[0].template.hosts[0]: a tcp:// URL needs a port, like tcp://10.0.0.5:2376",
        ),
        ("[http://x:1]", "", 1, "c.yaml:8: groups[0].template.hosts[0]: expected a DOCKER_HOST URL"),
        (
            "[unix:///a.sock, unix:///b.sock]",
            "    placement: {max_per_host: 1}\n",
            3,
            "c.yaml:6: groups[0].placement.max_per_host: 1 per host x 2 host(s) cannot hold min (3)",
        ),
        (
            "[unix:///a.sock]",
            "    placement: {strategy: pack}\n",
            1,
            "c.yaml:6: groups[0].placement.strategy: must be one of: spread, binpack",
        ),
    ],
)
def test_bad_host_lists_and_placement(hosts_: str, extra: str, min_: int, expected: str) -> None:
    assert config_error(DOCKER.format(hosts=hosts_, extra=extra, min=min_)).startswith(expected)


def test_host_and_hosts_together_are_refused() -> None:
    text = DOCKER.format(hosts="[unix:///a.sock]", extra="", min=1) + "      host: unix:///b.sock\n"
    assert "host" in config_error(text) and "not both" in config_error(text)


def test_a_group_over_hosts_gets_placement_defaults() -> None:
    cfg = load_config_text(
        textwrap.dedent(DOCKER.format(hosts="[unix:///a.sock, ssh://me@b]", extra="", min=1))
    )
    g = cfg.groups[0]
    assert g.host_count() == 2
    assert (g.placement.strategy, g.placement.max_per_host, g.host_timeout) == ("spread", None, 30.0)
    assert (g.placement.ram_allocation_ratio, g.placement.cpu_allocation_ratio) == (1.5, 16.0)
    assert g.placement.reserved_host_memory == 512 * 1024**2
