"""A subflow that fails while another carries on, on the in-memory link in virtual time.

RFC 8684 §3.3.6: what a failed subflow held unacknowledged goes again on the others,
and a connection with a live subflow does not stall. Two regular subflows (the initial
one and a join the client's path manager opens from its `subflow` endpoint) share one
rate-limited path; the join fails with data in flight: reset by either side, or its
retransmissions exhausted behind a blackhole.

And the peer's MP_FASTCLOSE on the RST of every subflow (RFC 8684 §3.5, how Linux resets
a connection) ends the connection: no subflow failure is counted and no path is joined
again. The stack used to take that RST for a failed subflow, counting `SubflowFailed`
and scheduling a re-join of a connection the peer had closed (seen at the end of a
stalled test against Linux, where it was read as the stall's cause).

Our own MP_FASTCLOSE (`abort`, and `fail` after an internal error) must end the peer's
connection even when our RST is not at the sequence number the peer expects.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random

import pytest

from stack.mptcp.connection import MptcpConfig, MptcpConnection
from stack.mptcp.listener import MptcpListener
from stack.mptcp.pm import Endpoint, Limits, PathManager, PeerAddress
from stack.mptcp.subflow import Subflow
from stack.mptcp.token import TokenTable
from stack.sim import PathConfig, Simulator
from stack.tcp.segment import RST, Segment
from stack.tests.test_mptcp_failover_sim import Reader
from stack.tests.test_mptcp_sim import CLIENT, FAST, SERVER, App, ClientEnd, ServerEnd
from stack.wire.mptcp import MPTCP_RST_EUNSPEC, MpFastclose, MpTcpRst

CLIENT2 = ipaddress.ip_address("198.51.100.1")  # the client's subflow endpoint
JOIN_PORT = CLIENT[1] + 1


@dataclasses.dataclass
class Blackhole:
    """Drops the join's segments (either way) while on."""

    on: bool = False

    def __call__(self, seg: Segment) -> bool:
        return self.on and JOIN_PORT in (seg.src_port, seg.dst_port)


def _setup(size: int, config: MptcpConfig, blackhole: Blackhole):
    up = random.Random(5).randbytes(size)
    ports = iter(range(JOIN_PORT, JOIN_PORT + 10))
    paths = PathManager([Endpoint(1, CLIENT2, subflow=True)], Limits(subflows=2))
    client = MptcpConnection.connect(
        CLIENT, SERVER, config, TokenTable(), isn_secret=b"a", now=0.0,
        allocate_port=lambda *_: next(ports),
        paths=paths.connection(CLIENT[0], PeerAddress(0, SERVER[0], SERVER[1])),
    )  # fmt: skip
    listener = MptcpListener(SERVER[1], config, TokenTable(), isn_secret=b"b")
    a, b = ClientEnd(client), ServerEnd(listener)
    path = PathConfig(delay=0.005, rate=12.5e6, queue_bytes=1 << 20, drop=blackhole)
    sim = Simulator(a, b, a_to_b=path, b_to_a=PathConfig(delay=0.005, drop=blackhole))
    sender, receiver = App(lambda: client, up), Reader(lambda: b.msk)
    sim.hooks += [sender, receiver]
    # the path manager joins once the listener's first DSS shows it fully established
    both = lambda: len(client.subflows) == 2 and all(s.usable for s in client.subflows)  # noqa: E731
    assert sim.run(until=5.0, stop=both), client.describe()
    return client, b, sim, receiver, up


def _join_with_data_in_flight(client: MptcpConnection, sim: Simulator) -> Subflow:
    join = client.subflows[1]
    assert sim.run(until=sim.now + 5.0, stop=lambda: join.unacked > 100_000)
    return join


def _finish(client: MptcpConnection, b: ServerEnd, sim: Simulator, receiver: Reader,
            up: bytes, join: Subflow) -> None:  # fmt: skip
    done = sim.run(until=120.0, stop=lambda: bool(client.finished and b.msk and b.msk.finished
                                                  and join.gone))  # fmt: skip
    assert done, f"stalled at t={sim.now:.1f}: {client.describe()}"
    assert not client.error, client.error
    assert bytes(receiver.received) == up


@pytest.mark.parametrize("how", ["peer-resets-it", "we-reset-it", "retransmissions-exhausted"])
def test_a_failed_subflows_data_goes_on_the_other_one(how: str) -> None:
    config = MptcpConfig(tcp=dataclasses.replace(FAST, max_retries=3))
    blackhole = Blackhole()
    client, b, sim, receiver, up = _setup(6_000_000, config, blackhole)
    join = _join_with_data_in_flight(client, sim)
    assert b.msk is not None
    if how == "peer-resets-it":
        theirs = next(s for s in b.msk.subflows if not s.initial)
        b.msk._reset_subflow(theirs, MPTCP_RST_EUNSPEC, "test: reset by the server")
    elif how == "we-reset-it":
        client._reset_subflow(join, MPTCP_RST_EUNSPEC, "test: reset by the client")
    else:
        blackhole.on = True
    _finish(client, b, sim, receiver, up, join)
    assert join.phase.value == "failed" and join.counters.reinjected_away > 0, join.describe()
    assert client.subflows[0].phase.value != "failed" and not client.subflows[0].error
    if how != "retransmissions-exhausted":  # that one ends after the transfer (stale first)
        assert client.counters["SubflowFailed"] == 1


def test_mp_fastclose_on_the_rst_ends_the_connection_without_rejoining() -> None:
    """Linux resets a connection with RST + MP_FASTCLOSE (+ MP_TCPRST) on every subflow."""
    client, b, sim, _, _ = _setup(6_000_000, MptcpConfig(tcp=FAST), Blackhole())
    _join_with_data_in_flight(client, sim)
    assert b.msk is not None
    b.msk.abort(sim.now)  # the server's MP_FASTCLOSE, on the RST of both subflows
    sim.run(until=sim.now + 10.0)  # any re-join would have come by now (1 s after)
    assert client.error == "connection reset by peer (MP_FASTCLOSE)"
    assert client.closed and client.finished
    assert client.counters["MPFastcloseRx"] == 1
    assert "SubflowFailed" not in client.counters, client.counters
    assert client.counters["MPJoinSynTx"] == 1  # the one join, never opened again
    assert client.paths is not None and client.paths.next_rejoin() is None


def test_our_mp_fastclose_ends_the_peer_even_with_data_lost_in_flight() -> None:
    """abort() sends, on every subflow, a pure ACK with MP_FASTCLOSE before the RST: a RST
    is taken only at the exact sequence number the peer expects (RFC 5961 §3.2), and
    with data lost in flight ours is beyond it; the peer answered it with a challenge
    ACK and kept its connection (the kernel did, in test_stack_internal_error)."""
    blackhole = Blackhole()
    client, b, sim, _, _ = _setup(6_000_000, MptcpConfig(tcp=FAST), blackhole)
    join = _join_with_data_in_flight(client, sim)
    assert b.msk is not None
    blackhole.on = True  # the join's data in flight is lost...
    assert sim.run(until=sim.now + 1.0, stop=lambda: join.unacked > 0 and join.tcp.retries > 0)
    blackhole.on = False  # ...and the path is back when we abort
    client.abort(sim.now)
    sim.run(until=sim.now + 2.0)
    assert b.msk.error == "connection reset by peer (MP_FASTCLOSE)"
    assert b.msk.closed and all(s.gone for s in b.msk.subflows)


def test_fail_resets_every_subflow_with_mp_fastclose_and_mp_tcprst() -> None:
    """MptcpConnection.fail (an internal error): per subflow, a pure ACK with MP_FASTCLOSE,
    then a RST with MP_FASTCLOSE and MP_TCPRST (unspecified, not transient); the
    application's calls fail with the reason."""
    client, _, sim, _, _ = _setup(2_000_000, MptcpConfig(tcp=FAST), Blackhole())
    client.poll_segments()  # what was owed before
    client.fail("internal error in the stack: RuntimeError: test", sim.now)
    sent: dict[int, list[Segment]] = {}
    for sf, seg in client.poll_segments():
        sent.setdefault(sf.local[1], []).append(seg)
    assert sorted(sent) == [CLIENT[1], JOIN_PORT]
    for segments in sent.values():
        ack, rst = segments
        assert not ack.flags & RST and not ack.payload
        assert [type(o) for o in ack.extra_options] == [MpFastclose]
        assert rst.flags & RST
        assert [type(o) for o in rst.extra_options] == [MpFastclose, MpTcpRst]
        reset = rst.extra_options[1]
        assert reset.reason == MPTCP_RST_EUNSPEC and not reset.transient
    assert client.closed and client.finished
    assert client.error == "internal error in the stack: RuntimeError: test"
    with pytest.raises(ConnectionError, match="RuntimeError: test"):
        client.send(b"more", sim.now)


def test_a_failed_join_frees_its_slot_for_the_next_endpoint() -> None:
    """Limit 1, two subflow endpoints: when the join from the first fails (the peer
    resets it), the path manager moves on and joins from the second, as Linux's
    mptcp_pm_subflow_check_next (conformance: initiator_refused_join_moves_to_next_endpoint)."""
    other = ipaddress.ip_address("198.51.100.9")
    ports = iter(range(JOIN_PORT, JOIN_PORT + 10))
    endpoints = [Endpoint(1, CLIENT2, subflow=True), Endpoint(2, other, subflow=True)]
    paths = PathManager(endpoints, Limits(subflows=1))
    config = MptcpConfig(tcp=FAST)
    client = MptcpConnection.connect(
        CLIENT, SERVER, config, TokenTable(), isn_secret=b"a", now=0.0,
        allocate_port=lambda *_: next(ports),
        paths=paths.connection(CLIENT[0], PeerAddress(0, SERVER[0], SERVER[1])),
    )  # fmt: skip
    listener = MptcpListener(SERVER[1], config, TokenTable(), isn_secret=b"b")
    a, b = ClientEnd(client), ServerEnd(listener)
    path = PathConfig(delay=0.005, rate=12.5e6, queue_bytes=1 << 20)
    sim = Simulator(a, b, a_to_b=path, b_to_a=PathConfig(delay=0.005))
    sim.hooks += [App(lambda: client, bytes(6_000_000)), Reader(lambda: b.msk)]
    joined = lambda: len(client.subflows) == 2 and client.subflows[1].usable  # noqa: E731
    assert sim.run(until=5.0, stop=joined), client.describe()
    assert client.subflows[1].local[0] == CLIENT2 and b.msk is not None
    theirs = next(s for s in b.msk.subflows if not s.initial)
    b.msk._reset_subflow(theirs, MPTCP_RST_EUNSPEC, "test: the first join refused")
    moved = lambda: any(s.local[0] == other and s.usable for s in client.subflows)  # noqa: E731
    assert sim.run(until=sim.now + 2.0, stop=moved), client.describe()
    assert client.counters["MPJoinSynTx"] == 2
