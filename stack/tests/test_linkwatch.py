"""The link watcher: rtnetlink link events decoded, and heard from real veth links."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable

import pytest

import topologies
from stack.link import in_netns
from stack.linkwatch import (
    IFF_RUNNING,
    IFF_UP,
    IFINFO,
    NLMSG_HEADER,
    RTM_DELLINK,
    RTM_NEWLINK,
    LinkWatcher,
    parse_link_events,
)
from testbed import Topology


def _message(kind: int, index: int, flags: int, attributes: bytes = b"") -> bytes:
    body = IFINFO.pack(socket.AF_UNSPEC, 1, index, flags, 0xFFFFFFFF) + attributes
    return NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), kind, 0, 0, 0) + body


def test_up_needs_the_admin_flag_and_the_carrier() -> None:
    rtattr = struct.pack("=HH", 8, 3) + b"eth\x00"  # an IFLA_IFNAME, skipped
    data = (
        _message(RTM_NEWLINK, 2, IFF_UP | IFF_RUNNING, rtattr)
        + _message(RTM_NEWLINK, 3, IFF_UP)  # up, but the peer is down: no carrier
        + _message(RTM_DELLINK, 4, IFF_UP | IFF_RUNNING)
        + _message(24, 5, 0)  # RTM_NEWROUTE: not ours
    )
    assert parse_link_events(data) == [(2, True), (3, False), (4, False)]


def test_a_truncated_datagram_yields_what_is_whole() -> None:
    whole = _message(RTM_NEWLINK, 7, IFF_UP | IFF_RUNNING)
    assert parse_link_events(whole + whole[:10]) == [(7, True)]
    assert parse_link_events(whole[:-4]) == []
    bogus = NLMSG_HEADER.pack(4, RTM_NEWLINK, 0, 0, 0)  # a length below the header's
    assert parse_link_events(bogus + whole) == []


def _wait_changes(watcher: LinkWatcher, want: tuple[str, bool]) -> list[tuple[str, bool]]:
    seen: list[tuple[str, bool]] = []
    deadline = time.monotonic() + 5.0
    while want not in seen:
        assert time.monotonic() < deadline, f"no {want} within 5 s; heard {seen}"
        seen += watcher.changes()
        time.sleep(0.01)  # polling a non-blocking socket with a deadline
    return seen


@pytest.mark.netns
def test_a_link_going_down_and_up_is_heard_in_the_namespace(
    topology: Callable[..., Topology],
) -> None:
    topo = topology(topologies.dual_homed(bare=("client",)))
    host = topo.hosts["client"]
    indexes = {host.interfaces[name].index: name for name in ("eth0", "eth1")}
    watcher = in_netns(host.netns, lambda: LinkWatcher(indexes))
    try:
        topo.links["path2"].down()
        assert _wait_changes(watcher, ("eth1", False)) == [("eth1", False)]
        topo.links["path2"].up()
        assert ("eth0", False) not in _wait_changes(watcher, ("eth1", True))
        assert watcher.up == {"eth1": True}  # eth0 never changed
    finally:
        watcher.close()
