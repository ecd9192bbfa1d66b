from __future__ import annotations

import ipaddress
import re

import pytest

from stack.route import InterfaceConfig, Route, RoutingError, RoutingTable

ip = ipaddress.ip_address


def _table() -> RoutingTable:
    return RoutingTable(
        [
            InterfaceConfig.parse("eth0=192.0.2.1/24,gw=192.0.2.254"),
            InterfaceConfig.parse("eth1=198.51.100.1/24"),
            InterfaceConfig.parse("eth1=2001:db8:1::1/64,gw=2001:db8:1::ff"),
        ]
    )


def test_bound_source_leaves_through_its_own_interface() -> None:
    table = _table()
    assert table.route(ip("203.0.113.9"), ip("192.0.2.1")) == Route(
        "eth0", ip("192.0.2.1"), ip("192.0.2.254")
    )
    # No gateway on eth1: on-link, even to the peer's address on another network.
    assert table.route(ip("192.0.2.2"), ip("198.51.100.1")) == Route(
        "eth1", ip("198.51.100.1"), ip("192.0.2.2")
    )


def test_unbound_picks_connected_then_gateway() -> None:
    table = _table()
    assert table.route(ip("198.51.100.7")).ifname == "eth1"
    assert table.route(ip("203.0.113.9")) == Route("eth0", ip("192.0.2.1"), ip("192.0.2.254"))
    assert table.route(ip("2001:db8:9::1")).next_hop == ip("2001:db8:1::ff")


def test_weak_host_accepts_any_local_address() -> None:
    table = _table()
    assert table.is_local(ip("198.51.100.1")) and table.is_local(ip("2001:db8:1::1"))
    assert not table.is_local(ip("192.0.2.2"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("eth0", "expected IFNAME=ADDR/PREFIXLEN"),
        ("eth0=192.0.2.1", "needs a /prefix length"),
        ("eth0=banana/24", "is not ADDR/PREFIXLEN"),
        ("eth0=192.0.2.1/24,gw=198.51.100.1", "is not on 192.0.2.0/24"),
        ("eth0=192.0.2.1/24,gw=2001:db8::1", "is not IPv4"),
    ],
)
def test_bad_interface_text_is_named(text: str, message: str) -> None:
    with pytest.raises(RoutingError, match=re.escape(message)):
        InterfaceConfig.parse(text)


def test_no_route_and_duplicates_are_named() -> None:
    table = RoutingTable([InterfaceConfig.parse("eth0=192.0.2.1/24")])
    with pytest.raises(RoutingError, match=re.escape("no route to 203.0.113.1")):
        table.route(ip("203.0.113.1"))
    with pytest.raises(RoutingError, match="is not one of this host's addresses"):
        table.route(ip("192.0.2.9"), ip("192.0.2.77"))
    with pytest.raises(RoutingError, match="given twice"):
        RoutingTable([InterfaceConfig.parse("eth0=192.0.2.1/24")] * 2)
