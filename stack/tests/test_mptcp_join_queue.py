"""Half-open joins wait in the listener's bounded queue, as in Linux's request queue
(issue 11 fault 1): a flood of join SYNs carrying a live token never touches the
connection, a complete join still attaches at its third ACK, half-open joins that are
never completed expire, and subflows that are gone leave the connection.

In-memory (`stack.sim`), beside the real-namespace flood in test_hostile_input.py."""

from __future__ import annotations

import random

from stack.mptcp.connection import CLOSED_SUBFLOW_HISTORY, MptcpConfig, MptcpConnection
from stack.mptcp.listener import JOINS_PER_CONNECTION, MptcpListener
from stack.mptcp.subflow import Subflow
from stack.mptcp.token import TokenTable
from stack.sim import Simulator
from stack.tcp.segment import ACK, PSH, SYN, Segment
from stack.tests.test_mptcp_failover_sim import Reader
from stack.tests.test_mptcp_sim import CLIENT, FAST, SERVER, App, ClientEnd, ServerEnd
from stack.wire.mptcp import MPTCP_RST_EUNSPEC, MpFastclose, MpJoinSyn

FLOOD = 10_000


def _pair(size: int) -> tuple[MptcpConnection, ServerEnd, Simulator, App, Reader, bytes]:
    config = MptcpConfig(tcp=FAST)
    ports = iter(range(CLIENT[1] + 1, CLIENT[1] + 1000))
    client = MptcpConnection.connect(CLIENT, SERVER, config, TokenTable(), isn_secret=b"a",
                                     now=0.0, allocate_port=lambda *_: next(ports))  # fmt: skip
    listener = MptcpListener(SERVER[1], config, TokenTable(), isn_secret=b"b")
    a, b = ClientEnd(client), ServerEnd(listener)
    sim = Simulator(a, b)
    up = random.Random(7).randbytes(size)
    sender, reader = App(lambda: client, up), Reader(lambda: b.msk)
    sim.hooks.append(reader)  # the caller adds the sender when the data is to flow
    assert sim.run(until=5.0, stop=lambda: bool(b.msk and b.msk.established))
    return client, b, sim, sender, reader, up


def _join_syn(port: int, token: int) -> Segment:
    seg = Segment(port, SERVER[1], port * 7919, 0, SYN, 65535, mss=1460)
    seg.extra_options = (MpJoinSyn(address_id=9, token=token, nonce=port),)
    return seg


def test_a_join_syn_flood_stays_in_the_listener_queue_and_a_real_join_still_works() -> None:
    """One connection holds at most JOINS_PER_CONNECTION half-open joins: the rest of a
    flood is dropped before any work (no SYN/ACK), the connection is untouched, a real
    join completes at its third ACK, and the flood's joins expire."""
    client, b, sim, sender, reader, up = _pair(2_000_000)
    server, listener = b.msk, b.listener
    assert server is not None
    for i in range(FLOOD):
        b.handle_segment(_join_syn(20_000 + i, server.local_token), sim.now)
    assert len(server.subflows) == 1 and len(server.half_open_joins) == JOINS_PER_CONNECTION
    assert len(listener.joins) == JOINS_PER_CONNECTION
    assert listener.counters["ListenDrops"] == FLOOD - JOINS_PER_CONNECTION
    assert server.counters["MPJoinSynRx"] == JOINS_PER_CONNECTION
    synacks = [seg for _, _, seg in listener.poll_segments() if seg.flags & SYN]
    assert len(synacks) == JOINS_PER_CONNECTION
    # a real join right after the flood: its SYN is dropped, and when it comes again
    # (1 s later) the flood's oldest join, unanswered for 1 s, makes room for it
    sf = client.open_subflow(CLIENT[0], 1, SERVER[0], SERVER[1], backup=False, now=sim.now)
    assert sf is not None
    assert sim.run(until=sim.now + 5, stop=lambda: sf.usable and len(server.subflows) == 2)
    assert sf.tcp.stats.RetransSegs == 1
    assert listener.counters["ListenDrops"] == FLOOD - JOINS_PER_CONNECTION + 2
    sim.hooks.append(sender)
    done = sim.run(until=sim.now + 60, stop=lambda: bool(client.finished and server.finished))
    assert done, server.describe()
    assert bytes(reader.received) == up
    assert all(sf.counters.bytes_received > 0 for sf in server.subflows)
    # the flood's other joins give up after their SYN/ACK retries (6, backing off)
    assert sim.run(until=sim.now + 300, stop=lambda: not listener.joins)
    assert not server.half_open_joins and listener.next_timer() is None
    assert len(listener.poll_gone_joins()) == JOINS_PER_CONNECTION


def test_a_full_join_queue_drops_its_oldest_join() -> None:
    """The listener's queue is bounded for all connections together: when full, the
    oldest half-open join goes silently and the new one is answered."""
    _, b, sim, _, _, _ = _pair(1000)
    server, listener = b.msk, b.listener
    assert server is not None
    listener.backlog = 4
    for i in range(10):
        b.handle_segment(_join_syn(20_000 + i, server.local_token), sim.now)
    assert [remote[1] for _, remote in listener.joins] == [20_006, 20_007, 20_008, 20_009]
    assert listener.counters["ListenDrops"] == 6 and len(server.half_open_joins) == 4
    assert [remote[1] for _, remote in listener.poll_gone_joins()] == list(range(20_000, 20_006))
    synacks = [seg for _, _, seg in listener.poll_segments() if seg.flags & SYN]
    assert len(synacks) == 10


def test_subflows_that_are_gone_leave_the_connection() -> None:
    """Joined and reset 40 times: the connection's list keeps only its live subflows
    (nothing scans the dead again); reports keep the last few closed ones, in order."""
    client, b, sim, sender, reader, up = _pair(3_000_000)
    server = b.msk
    assert server is not None
    for _ in range(40):
        sf = client.open_subflow(CLIENT[0], 1, SERVER[0], SERVER[1], backup=False, now=sim.now)
        assert sf is not None
        assert sim.run(until=sim.now + 5, stop=lambda sf=sf: sf.usable)
        client._reset_subflow(sf, MPTCP_RST_EUNSPEC, "test: reset the join")
        client._after(sf, sim.now)
        assert sim.run(until=sim.now + 5, stop=lambda: len(server.subflows) == 1)
        assert len(client.subflows) == 1
    assert not server.finished
    sim.hooks.append(sender)
    done = sim.run(until=sim.now + 60, stop=lambda: bool(client.finished and server.finished))
    assert done, server.describe()
    assert bytes(reader.received) == up
    every = server.every_subflow()
    assert len(every) == 1 + CLOSED_SUBFLOW_HISTORY
    assert every[0].initial and [sf.number for sf in every] == sorted(sf.number for sf in every)
    assert all(sf.gone for sf in every[1:])
    assert len(server.describe()["subflows"]) == len(every)


def _on_server_subflow(sf: Subflow, flags: int, payload: bytes = b"") -> Segment:
    """A segment from the client on the server's subflow `sf`, in sequence."""
    tcp = sf.tcp
    return Segment(sf.remote[1], sf.local[1], (tcp.irs + tcp.rcv_nxt) & 0xFFFFFFFF,
                   (tcp.iss + tcp.snd_nxt) & 0xFFFFFFFF, flags, 65535, payload=payload)  # fmt: skip


def _joined(client: MptcpConnection, sim: Simulator, server: MptcpConnection) -> Subflow:
    sf = client.open_subflow(CLIENT[0], 1, SERVER[0], SERVER[1], backup=False, now=sim.now)
    assert sf is not None
    assert sim.run(until=sim.now + 5, stop=lambda: sf.usable and len(server.subflows) == 2)
    return server.subflows[1]


def test_mp_fastclose_on_one_subflow_closes_the_connection_and_frees_it() -> None:
    """MP_FASTCLOSE on a join's ACK aborts every subflow (RFC 8684 §3.5). The aborted
    initial subflow's reset used to wait for an input or timer that its closed TCP
    never gets: the connection never closed, and it, its token and its registrations
    stayed for good (the fuzzer's growing stack)."""
    client, b, sim, _, _, _ = _pair(1000)
    server = b.msk
    assert server is not None
    join = _joined(client, sim, server)
    fastclose = _on_server_subflow(join, ACK)
    fastclose.extra_options = (MpFastclose(receiver_key=server.local_key),)
    server.handle_segment(join, fastclose, sim.now)
    assert server.closed and server.error == "connection reset by peer (MP_FASTCLOSE)"
    assert all(sf.gone for sf in server.every_subflow())
    assert server.tokens.lookup(server.local_token) is None


def test_a_subflow_reset_while_its_data_is_read_is_gone_at_once() -> None:
    """Data without a mapping on a join is a reason to reset that subflow (RFC 8684
    §3.7), found while its bytes are read: the reset's events came after the events had
    been read, so the subflow was never gone nor dropped from the connection."""
    client, b, sim, _, _, _ = _pair(1000)
    server = b.msk
    assert server is not None
    join = _joined(client, sim, server)
    server.handle_segment(join, _on_server_subflow(join, ACK | PSH, b"no mapping"), sim.now)
    assert join.gone and join.error == "data without a mapping"
    server.poll_segments()  # sends its RST; a gone and closed subflow leaves the connection
    assert join not in server.subflows and not server.closed
