"""An impossible topology fails before anything is created, naming the problem."""

from __future__ import annotations

import dataclasses
import os

import pytest

import topologies
from testbed import TestbedError, TopologyError, build
from testbed.netns import owned_by_process
from testbed.spec import (
    End,
    Host,
    Link,
    LinkProps,
    Nat,
    Role,
    TopologySpec,
    parse_duration,
    parse_rate,
    validate,
)


def _pair(a: End, b: End, props: LinkProps | None = None) -> TopologySpec:
    return TopologySpec(
        "t", "test", (Host("client"), Host("server")), (Link("p", a, b, props or LinkProps()),)
    )


@pytest.mark.parametrize("name", sorted(topologies.CATALOGUE))
def test_every_shipped_topology_validates(name: str) -> None:
    validate(topologies.CATALOGUE[name]())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            _pair(
                End("client", "eth0", ("192.0.2.1/24",)), End("server", "eth0", ("192.0.2.1/24",))
            ),
            "duplicate address 192.0.2.1",
        ),
        (
            _pair(End("client", "eth0"), End("nobody", "eth0")),
            "unknown host 'nobody'",
        ),
        (
            _pair(End("client", "eth0"), End("server", "eth0"), LinkProps(rate="fast")),
            "cannot parse rate 'fast'",
        ),
        (
            _pair(End("client", "eth0"), End("server", "eth0"), LinkProps(delay="soon")),
            "cannot parse duration 'soon'",
        ),
        (
            _pair(End("client", "eth0"), End("server", "eth0"), LinkProps(jitter="1ms")),
            "jitter '1ms' needs a delay",
        ),
        (
            _pair(End("client", "eth0"), End("server", "eth0"), LinkProps(loss=150)),
            "loss 150",
        ),
        (
            _pair(End("client", "eth0", ("10.0.0.1/24",)), End("server", "eth0")),
            "outside the documentation and benchmarking ranges",
        ),
        (
            _pair(End("client", "eth0", ("192.0.2.1",)), End("server", "eth0")),
            "needs a prefix length",
        ),
        (
            _pair(
                End("client", "eth0", ("192.0.2.1/24",), ("2001:db8::1",)),
                End("server", "eth0"),
            ),
            "has no IPv6 address",
        ),
        (
            _pair(End("client", "eth0"), End("client", "eth1")),
            "both ends are on host 'client'",
        ),
        (
            _pair(End("client", "an-interface-name-too-long"), End("server", "eth0")),
            "interface name",
        ),
    ],
)
def test_impossible_topology_is_refused_with_a_reason(spec: TopologySpec, message: str) -> None:
    with pytest.raises(TopologyError, match=message.replace("(", r"\(").replace("'", "'")):
        validate(spec)


def test_a_source_rule_for_a_foreign_address_is_refused() -> None:
    spec = _pair(End("client", "eth0", ("192.0.2.1/24",)), End("server", "eth0", ("192.0.2.2/24",)))
    client = dataclasses.replace(spec.hosts[0], source_rules=("192.0.2.2",))
    with pytest.raises(TopologyError, match=r"source rule for 192\.0\.2\.2, which is not one of"):
        validate(dataclasses.replace(spec, hosts=(client, spec.hosts[1])))


def test_duplicate_host_and_interface_are_refused() -> None:
    spec = _pair(End("client", "eth0"), End("server", "eth0"))
    twice = dataclasses.replace(spec, hosts=(*spec.hosts, Host("client")))
    with pytest.raises(TopologyError, match="host 'client' is declared twice"):
        validate(twice)
    second = Link("q", End("client", "eth0"), End("server", "eth1"))
    with pytest.raises(TopologyError, match="has interface 'eth0' twice"):
        validate(dataclasses.replace(spec, links=(*spec.links, second)))


def test_middlebox_functions_are_checked() -> None:
    spec = _pair(End("client", "eth0"), End("server", "eth0"))
    wrong_role = dataclasses.replace(
        spec, hosts=(Host("client", functions=(Nat("eth0"),)), Host("server"))
    )
    with pytest.raises(TopologyError, match="only a middlebox"):
        validate(wrong_role)
    bad_outside = dataclasses.replace(
        spec, hosts=(Host("client", Role.MIDDLEBOX, functions=(Nat("eth9"),)), Host("server"))
    )
    with pytest.raises(TopologyError, match="NAT outside interface 'eth9'"):
        validate(bad_outside)


def test_units() -> None:
    assert parse_rate("100mbit") == 100_000_000
    assert parse_rate("1.5gbit") == 1_500_000_000
    assert parse_rate("1mbps") == 8_000_000  # tc: bps means bytes per second
    assert parse_duration("10ms") == pytest.approx(0.010)
    assert parse_duration("500us") == pytest.approx(0.0005)
    assert parse_duration("2") == pytest.approx(0.002)  # a bare number is ms, as in tc
    with pytest.raises(TopologyError, match="below 8 kbit/s"):
        parse_rate("10bit")


@pytest.mark.netns
def test_refused_topology_creates_nothing() -> None:
    before = set(owned_by_process())
    spec = _pair(End("client", "eth0", ("192.0.2.1/24",)), End("server", "eth0", ("192.0.2.1/24",)))
    with pytest.raises(TopologyError):
        build(spec)
    assert set(owned_by_process()) == before


@pytest.mark.netns
def test_topology_failing_halfway_leaves_nothing_behind() -> None:
    """A failure after namespaces and links exist (a bad static route) removes all of it."""
    before = set(owned_by_process())
    spec = topologies.dual_homed()
    # Valid as data, impossible for the kernel: the gateway is on no connected network.
    from testbed.spec import Route

    broken_client = Host("client", routes=(Route("203.0.113.0/24", "198.18.5.5"),))
    spec = dataclasses.replace(spec, hosts=(broken_client, spec.hosts[1]))
    with pytest.raises(TestbedError, match="configuring addresses and routes of host 'client'"):
        build(spec)
    assert set(owned_by_process()) == before
    links = os.popen("ip -o link show type veth").read()
    assert "mptl" not in links
