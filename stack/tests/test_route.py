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


def _tables(*texts: str) -> RoutingTable:
    return RoutingTable([InterfaceConfig.parse(text) for text in texts])


def _user_table() -> RoutingTable:
    """The issue-10 server: two interfaces, no gateways, no flags."""
    return _tables("eth0=203.0.113.2/24", "eth1=198.18.0.2/24")


def _via(table: RoutingTable, destination: str, source: str = "", device: str = "") -> str:
    """The route as `IFNAME SOURCE -> NEXT_HOP`, for one-line expectations."""
    route = table.route(ip(destination), ip(source) if source else None, device)
    return f"{route.ifname} {route.source} -> {route.next_hop}"


def test_connected_prefix_on_another_interface_wins_whatever_the_source() -> None:
    """Linux's main table (the weak host model): the reply from 203.0.113.2 to a peer
    on-link on eth1 leaves through eth1, its source unchanged (issue 10: a join from
    198.18.0.1 to our first address, answered out of eth0, was reset by Linux)."""
    table = _user_table()
    assert _via(table, "198.18.0.1", "203.0.113.2") == "eth1 203.0.113.2 -> 198.18.0.1"
    assert _via(table, "203.0.113.1", "198.18.0.2") == "eth0 198.18.0.2 -> 203.0.113.1"
    assert _via(table, "198.18.0.1", "198.18.0.2") == "eth1 198.18.0.2 -> 198.18.0.1"


def test_longest_connected_prefix_wins() -> None:
    table = _tables("eth0=192.0.2.1/24", "eth1=192.0.2.129/25")
    assert _via(table, "192.0.2.200", "192.0.2.1") == "eth1 192.0.2.1 -> 192.0.2.200"
    assert _via(table, "192.0.2.5", "192.0.2.129") == "eth0 192.0.2.129 -> 192.0.2.5"
    assert _via(table, "192.0.2.200") == "eth1 192.0.2.129 -> 192.0.2.200"


def test_a_gateway_is_a_source_rule_looked_up_before_the_main_table() -> None:
    """As the testbed's kernel hosts: `from ADDR` selects a table holding the
    interface's prefixes and `default via GW`, so from 192.0.2.1 everything not on
    192.0.2.0/24 goes via 192.0.2.254 out of eth0, even a destination connected on eth1.
    From an address whose interface has no gateway, the main table decides."""
    table = _table()
    assert _via(table, "203.0.113.9", "192.0.2.1") == "eth0 192.0.2.1 -> 192.0.2.254"
    assert _via(table, "198.51.100.7", "192.0.2.1") == "eth0 192.0.2.1 -> 192.0.2.254"
    assert _via(table, "192.0.2.9", "192.0.2.1") == "eth0 192.0.2.1 -> 192.0.2.9"
    # eth1 has no gateway: connected on eth0 wins; nothing connected: on-link out of eth1
    assert _via(table, "192.0.2.2", "198.51.100.1") == "eth0 198.51.100.1 -> 192.0.2.2"
    assert _via(table, "203.0.113.9", "198.51.100.1") == "eth1 198.51.100.1 -> 203.0.113.9"


def test_a_down_interface_carries_no_route() -> None:
    table = _user_table()
    table.is_down = lambda ifname: ifname == "eth1"
    # eth1's connected route is gone: the source's own interface, on-link (a send that
    # cannot go fails on the wire, not here)
    assert _via(table, "198.18.0.1", "203.0.113.2") == "eth0 203.0.113.2 -> 198.18.0.1"
    # an address of the dead interface reaches a peer connected on a live one
    assert _via(table, "203.0.113.1", "198.18.0.2") == "eth0 198.18.0.2 -> 203.0.113.1"
    with pytest.raises(RoutingError, match=re.escape("no route to 198.18.0.1")):
        table.route(ip("198.18.0.1"))
    # a source rule of a down interface is gone too: the main table decides, and
    # without a source, the default route of an interface that is up
    gated = _tables("eth0=192.0.2.1/24,gw=192.0.2.254", "eth1=198.51.100.1/24,gw=198.51.100.254")
    gated.is_down = lambda ifname: ifname == "eth0"
    assert _via(gated, "198.51.100.7", "192.0.2.1") == "eth1 192.0.2.1 -> 198.51.100.7"
    assert _via(gated, "203.0.113.9") == "eth1 198.51.100.1 -> 198.51.100.254"


def test_a_bound_device_keeps_its_traffic() -> None:
    """A subflow from an endpoint (`dev eth1`) leaves through eth1: on-link there when
    no route of eth1 covers the destination, as Linux does for a bound socket."""
    table = _user_table()
    assert _via(table, "203.0.113.1", "198.18.0.2", "eth1") == "eth1 198.18.0.2 -> 203.0.113.1"
    gated = _table()
    assert _via(gated, "198.51.100.9", "192.0.2.1", "eth0") == "eth0 192.0.2.1 -> 192.0.2.254"
    with pytest.raises(RoutingError, match="eth7: not one of this host's interfaces"):
        _via(table, "203.0.113.1", "198.18.0.2", "eth7")


def test_ipv6_follows_the_same_rules() -> None:
    table = _tables("eth0=2001:db8:1::2/64", "eth1=2001:db8:2::2/64,gw=2001:db8:2::ff")
    # connected on eth1 whatever the source (eth0 has no gateway)
    assert _via(table, "2001:db8:2::1", "2001:db8:1::2") == "eth1 2001:db8:1::2 -> 2001:db8:2::1"
    # eth1's gateway is a source rule for 2001:db8:2::2, before eth0's connected prefix
    assert _via(table, "2001:db8:1::1", "2001:db8:2::2") == "eth1 2001:db8:2::2 -> 2001:db8:2::ff"
    assert _via(table, "2001:db8:9::1") == "eth1 2001:db8:2::2 -> 2001:db8:2::ff"
    with pytest.raises(RoutingError, match="family differs"):
        _via(table, "192.0.2.1", "2001:db8:1::2")


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
    with pytest.raises(RoutingError, match=re.escape("no route to 203.0.113.1 out of eth0")):
        RoutingTable([InterfaceConfig.parse("eth0=2001:db8::1/64")]).route(
            ip("203.0.113.1"), device="eth0"
        )
    with pytest.raises(RoutingError, match="given twice"):
        RoutingTable([InterfaceConfig.parse("eth0=192.0.2.1/24")] * 2)
