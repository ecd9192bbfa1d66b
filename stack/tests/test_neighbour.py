from __future__ import annotations

import ipaddress

from stack.neighbour import (
    MAX_PROBES,
    MAX_QUEUED,
    RETRANSMIT_INTERVAL,
    NeighbourTable,
    Release,
    Solicit,
    Unreachable,
)

PEER = ipaddress.ip_address("192.0.2.2")
MAC = b"\x02\x00\x00\x00\x00\x02"


def test_unknown_neighbour_queues_and_solicits_once() -> None:
    table = NeighbourTable()
    assert table.lookup("eth0", PEER, b"one", 0.0) == (None, [Solicit("eth0", PEER)])
    assert table.lookup("eth0", PEER, b"two", 0.1) == (None, [])
    assert table.learn("eth0", PEER, MAC, 0.2) == Release("eth0", MAC, (b"one", b"two"))
    assert table.lookup("eth0", PEER, b"three", 0.3) == (MAC, [])
    assert table.next_timer() is None


def test_retries_then_gives_up_and_drops_what_waited() -> None:
    table = NeighbourTable()
    table.lookup("eth0", PEER, b"x", 0.0)
    now = 0.0
    solicits = 1
    for _ in range(MAX_PROBES - 1):
        now = table.next_timer() or 0.0
        assert now > 0
        sent, failed = table.on_timer(now)
        assert sent == [Solicit("eth0", PEER)] and failed == []
        solicits += 1
    assert solicits == MAX_PROBES
    now = table.next_timer() or 0.0
    assert now == RETRANSMIT_INTERVAL * MAX_PROBES
    assert table.on_timer(now) == ([], [Unreachable("eth0", PEER, 1)])
    assert table.next_timer() is None


def test_queue_is_bounded() -> None:
    table = NeighbourTable()
    for i in range(MAX_QUEUED * 3):
        table.lookup("eth0", PEER, bytes([i % 256]), 0.0)
    release = table.learn("eth0", PEER, MAC, 0.5)
    assert release is not None and len(release.frames) == MAX_QUEUED


def test_entries_expire_and_re_resolve() -> None:
    table = NeighbourTable()
    table.learn("eth0", PEER, MAC, 0.0)
    assert table.lookup("eth0", PEER, b"a", 1.0)[0] == MAC
    mac, solicits = table.lookup("eth0", PEER, b"b", 100.0)
    assert mac is None and solicits == [Solicit("eth0", PEER)]
