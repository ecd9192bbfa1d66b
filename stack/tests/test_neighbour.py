"""The neighbour table on a virtual clock: resolution, expiry, bounds, and counters."""

from __future__ import annotations

import ipaddress

from stack.neighbour import (
    GC_STALE_TIME,
    GC_THRESHOLD,
    MAX_ENTRIES,
    MAX_PROBES,
    MAX_QUEUED,
    MAX_QUEUED_BYTES,
    REACHABLE_TIME,
    RETRANSMIT_INTERVAL,
    NeighbourTable,
    Release,
    Solicit,
    Unreachable,
)

PEER = ipaddress.ip_address("192.0.2.2")
MAC = b"\x02\x00\x00\x00\x00\x02"
OTHER_MAC = b"\x02\x00\x00\x00\x00\x03"


def _table() -> NeighbourTable:
    """Reachable for exactly REACHABLE_TIME (the randomisation's middle)."""
    return NeighbourTable(random_factor=lambda: 0.5)


def _address(i: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address("198.18.0.0") + i  # 198.18.0.0/15: documentation


def _fail(table: NeighbourTable) -> list[Unreachable]:
    """Run the timers until nothing is pending; the failures they reported."""
    failures: list[Unreachable] = []
    while (deadline := table.next_timer()) is not None:
        failures += table.on_timer(deadline)[1]
    return failures


def test_unknown_neighbour_queues_and_solicits_once() -> None:
    table = _table()
    assert table.lookup("eth0", PEER, b"one", 0.0) == (None, [Solicit("eth0", PEER)])
    assert table.lookup("eth0", PEER, b"two", 0.1) == (None, [])
    assert table.learn("eth0", PEER, MAC, 0.2) == Release("eth0", MAC, (b"one", b"two"))
    assert table.lookup("eth0", PEER, b"three", 0.3) == (MAC, [])
    assert table.next_timer() is None


def test_retries_then_gives_up_and_drops_what_waited() -> None:
    table = _table()
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
    assert len(table) == 0 and table.counters.neigh_res_failed == 1
    # the next use starts afresh
    assert table.lookup("eth0", PEER, b"y", now) == (None, [Solicit("eth0", PEER)])


def test_queue_keeps_the_newest_frames_and_counts_the_rest() -> None:
    """As Linux's unres_qlen: when full, the oldest waiting frame is dropped."""
    table = _table()
    for i in range(MAX_QUEUED * 3):
        table.lookup("eth0", PEER, bytes([i % 256]), 0.0)
    release = table.learn("eth0", PEER, MAC, 0.5)
    assert release is not None and len(release.frames) == MAX_QUEUED
    assert release.frames[-1] == bytes([(MAX_QUEUED * 3 - 1) % 256])
    assert table.counters.neigh_unres_discards == MAX_QUEUED * 2


def test_queue_is_bounded_in_bytes_too() -> None:
    table = _table()
    big = bytes(65_000)
    for _ in range(10):
        table.lookup("eth0", PEER, big, 0.0)
    release = table.learn("eth0", PEER, MAC, 0.5)
    assert release is not None and len(release.frames) == MAX_QUEUED_BYTES // len(big)
    assert table.counters.neigh_unres_discards == 10 - len(release.frames)


def test_a_stale_entry_is_used_while_it_is_verified_by_unicast_probes() -> None:
    """RFC 4861 §7.3.3: after its reachable time the entry is STALE; the next use still
    gets the MAC (no frame waits) and starts probes sent straight to it."""
    table = _table()
    assert table.state("eth0", PEER, 0.0) is None
    table.lookup("eth0", PEER, b"a", 0.0)
    assert table.state("eth0", PEER, 0.0) == "INCOMPLETE"
    table.learn("eth0", PEER, MAC, 0.0)
    assert table.lookup("eth0", PEER, b"b", REACHABLE_TIME - 0.1) == (MAC, [])
    assert table.state("eth0", PEER, REACHABLE_TIME - 0.1) == "REACHABLE"
    assert table.next_timer() is None
    stale = REACHABLE_TIME + 1
    assert table.state("eth0", PEER, stale) == "STALE"
    assert table.lookup("eth0", PEER, b"c", stale) == (MAC, [Solicit("eth0", PEER, MAC)])
    assert table.state("eth0", PEER, stale) == "PROBE"
    assert table.lookup("eth0", PEER, b"d", stale + 0.1) == (MAC, [])  # probe once
    assert table.next_timer() == stale + RETRANSMIT_INTERVAL
    assert table.learn("eth0", PEER, MAC, stale + 0.2) is None  # confirmed, same MAC
    assert table.state("eth0", PEER, stale + 0.2) == "REACHABLE"
    assert table.next_timer() is None
    assert table.lookup("eth0", PEER, b"e", stale + 1) == (MAC, [])


def _verifying(table: NeighbourTable) -> float:
    """PEER resolved at 0, then used once STALE: when its verification started."""
    table.lookup("eth0", PEER, b"a", 0.0)
    table.learn("eth0", PEER, MAC, 0.0)
    stale = REACHABLE_TIME + 1
    assert table.lookup("eth0", PEER, b"b", stale) == (MAC, [Solicit("eth0", PEER, MAC)])
    return stale


def test_a_stale_entry_without_answer_is_removed_then_resolved_afresh() -> None:
    table = _table()
    now = _verifying(table)
    sent: list[Solicit] = []
    while (deadline := table.next_timer()) is not None:
        now = deadline
        solicits, failures = table.on_timer(now)
        sent += solicits
    assert sent == [Solicit("eth0", PEER, MAC)] * (MAX_PROBES - 1)
    assert failures == [Unreachable("eth0", PEER, 0)]
    assert table.counters.neigh_res_failed == 1
    assert table.lookup("eth0", PEER, b"c", now) == (None, [Solicit("eth0", PEER)])


def test_confirmation_without_an_address_ends_the_verification() -> None:
    """Linux answers a unicast NS with an NA without the target's link-layer option."""
    table = _table()
    stale = _verifying(table)
    table.confirm("eth0", PEER, stale + 0.1)
    assert table.next_timer() is None
    assert table.lookup("eth0", PEER, b"c", stale + REACHABLE_TIME - 1) == (MAC, [])
    table.confirm("eth0", _address(1), 0.0)  # nothing known: nothing learnt
    assert len(table) == 1


def test_the_reachable_time_is_randomised_between_half_and_one_and_a_half() -> None:
    for factor, last_fresh in ((0.0, REACHABLE_TIME * 0.5), (0.999, REACHABLE_TIME * 1.49)):
        table = NeighbourTable(random_factor=lambda f=factor: f)  # type: ignore[misc]
        table.lookup("eth0", PEER, b"a", 0.0)
        table.learn("eth0", PEER, MAC, 0.0)
        assert table.lookup("eth0", PEER, b"b", last_fresh - 0.01) == (MAC, [])
    assert table.lookup("eth0", PEER, b"c", REACHABLE_TIME * 1.5)[1]  # stale at last


def test_answers_and_gratuitous_arp_update_but_never_create() -> None:
    """Linux (arp_accept=0), RFC 4861 §7.2.5: only a solicitation to us creates."""
    table = _table()
    for i in range(100):
        assert table.learn("eth0", _address(i), MAC, 0.0) is None
    assert len(table) == 0 and table.counters.neigh_ignored == 100
    assert table.learn("eth0", PEER, MAC, 0.0, create=True) is None
    assert len(table) == 1 and table.lookup("eth0", PEER, b"a", 1.0) == (MAC, [])
    # an existing entry is updated by any answer; a new MAC invalidates cached paths
    assert table.learn("eth0", PEER, OTHER_MAC, 2.0) == Release("eth0", OTHER_MAC, ())
    assert table.lookup("eth0", PEER, b"b", 3.0) == (OTHER_MAC, [])


def test_a_flood_of_solicitations_stays_within_the_bound_and_spares_entries_in_use() -> None:
    table = _table()
    table.lookup("eth0", PEER, b"a", 0.0)
    table.learn("eth0", PEER, MAC, 0.0)  # in use
    waiting = ipaddress.ip_address("192.0.2.3")
    table.lookup("eth0", waiting, b"w", 0.0)  # unresolved, a frame waits
    flood = MAX_ENTRIES * 3
    for i in range(flood):
        table.learn("eth0", _address(i), OTHER_MAC, 0.5, create=True)
        assert len(table) <= MAX_ENTRIES
    assert len(table) == MAX_ENTRIES
    assert table.counters.neigh_evicted == flood + 2 - MAX_ENTRIES
    assert table.counters.neigh_unres_discards == 0
    assert table.lookup("eth0", PEER, b"b", 0.6) == (MAC, [])
    assert ("eth0", waiting) in table
    assert ("eth0", _address(flood - 1)) in table and ("eth0", _address(0)) not in table


def test_eviction_takes_entries_in_use_before_unresolved_ones() -> None:
    table = _table()
    for i in range(MAX_ENTRIES - 1):
        table.lookup("eth0", _address(i), b"x", 0.0)
        table.learn("eth0", _address(i), MAC, 0.0)
    table.lookup("eth0", PEER, b"w", 0.0)  # the only unresolved one, the newest
    assert len(table) == MAX_ENTRIES
    for i in range(MAX_ENTRIES - 1):
        table.lookup("eth0", _address(MAX_ENTRIES + i), b"y", 0.1)
    assert ("eth0", PEER) in table  # all those in use went first
    assert table.counters.neigh_unres_discards == 0
    table.lookup("eth0", _address(3 * MAX_ENTRIES), b"z", 0.2)
    assert ("eth0", PEER) not in table  # then the oldest unresolved, its frame dropped
    assert table.counters.neigh_unres_discards == 1
    assert table.counters.neigh_evicted == MAX_ENTRIES
    assert len(table) == MAX_ENTRIES


def test_long_unused_entries_are_collected_above_the_threshold() -> None:
    table = _table()
    for i in range(GC_THRESHOLD + 10):
        table.learn("eth0", _address(i), MAC, 0.0, create=True)
    table.lookup("eth0", _address(0), b"a", GC_STALE_TIME)  # used: stays
    later = GC_STALE_TIME + 1
    table.learn("eth0", PEER, MAC, later, create=True)
    assert table.counters.neigh_expired == 10  # down to GC_THRESHOLD, then it stops
    assert len(table) == GC_THRESHOLD + 1
    assert ("eth0", _address(0)) in table and ("eth0", PEER) in table
    assert table.counters.neigh_evicted == 0


def test_timers_are_cheap_after_many_voided_probes() -> None:
    """Answered solicitations leave void probe deadlines behind: next_timer skips them
    and their queue stays bounded."""
    table = _table()
    for i in range(MAX_ENTRIES * 10):
        table.lookup("eth0", _address(i), b"x", i * 1e-6)
        table.learn("eth0", _address(i), MAC, i * 1e-6)
    assert table.next_timer() is None
    assert len(table._probes) <= 4 * MAX_ENTRIES
    assert _fail(table) == []
