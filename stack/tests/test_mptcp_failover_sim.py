"""Failover to a backup subflow on the in-memory link, in virtual time (the kernel's
way, net/mptcp: stale detection and data-level retransmission onto the backup).

Two subflows share one simulated path: the initial one (regular) and a join flagged
backup. The regular one's segments can be dropped both ways (a blackhole) or at random
(a lossy path that still answers). The data-level timer is armed, at every DATA_ACK
that moves and at every firing, with the interval in force (the kernel's timer_ival),
which is recomputed just after: the time until the latest pending retransmission timer
(tail loss probe or RTO: the kernel's icsk_timeout) of the subflows still making
progress, else the minimum RTO. So after a blackhole the first firing comes one probe
timeout after the last DATA_ACK, and the second one probe timeout later again.
An interval that finds data outstanding and nothing received since the last one counts
against the subflow. The backup gets the oldest unacknowledged bytes once every
subflow holding data has gone two intervals without a word; after STALE_LOSS_CNT
intervals the regular subflow is stale and everything it held moves over.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from stack.mptcp.connection import MptcpConfig, MptcpConnection
from stack.mptcp.listener import MptcpListener
from stack.mptcp.token import TokenTable
from stack.sim import PathConfig, Simulator
from stack.tcp.segment import Segment
from stack.tests.test_mptcp_sim import CLIENT, FAST, SERVER, App, ClientEnd, ServerEnd

JOIN_PORT = CLIENT[1] + 1
MIN_RTO = FAST.min_rto


@dataclass
class Regular:
    """What happens to the regular subflow's segments (port CLIENT[1]), both ways."""

    blackholed: bool = False
    loss: float = 0.0
    both_ways: bool = True  # the loss hits the ACKs too
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    def drop(self, seg: Segment) -> bool:
        if CLIENT[1] not in (seg.src_port, seg.dst_port):
            return False
        if not self.both_ways and seg.src_port != CLIENT[1]:
            return self.blackholed
        return self.blackholed or (self.loss > 0 and self.rng.random() < self.loss)


class Reader(App):
    """Reads everything; closes its side only after the peer's DATA_FIN (a listener
    whose side is closed refuses joins, as Linux)."""

    def __init__(self, get):
        super().__init__(get, b"")

    def __call__(self, now: float) -> None:
        msk = self.get()
        if msk is None or not msk.established:
            return
        if msk.readable:
            self.received += msk.receive(1 << 30, now)
        if msk.eof and not self.shut:
            self.shut = True
            msk.shutdown_write(now)


@dataclass
class Watch:
    """Virtual times of what the test is about."""

    client: MptcpConnection
    first_on_backup: float | None = None

    def __call__(self, now: float) -> None:
        subflows = self.client.subflows
        if self.first_on_backup is None and len(subflows) > 1 and subflows[1].counters.bytes_sent:
            self.first_on_backup = now


def _setup(regular: Regular, size: int, rate: float = 12.5e6):
    rng = random.Random(3)
    up = rng.randbytes(size)
    config = MptcpConfig(tcp=FAST)
    ports = iter(range(JOIN_PORT, JOIN_PORT + 10))
    client = MptcpConnection.connect(CLIENT, SERVER, config, TokenTable(), isn_secret=b"a",
                                     now=0.0, allocate_port=lambda *_: next(ports))  # fmt: skip
    listener = MptcpListener(SERVER[1], config, TokenTable(), isn_secret=b"b")
    a, b = ClientEnd(client), ServerEnd(listener)
    path = PathConfig(delay=0.005, rate=rate, queue_bytes=1 << 20, drop=regular.drop)
    sim = Simulator(a, b, a_to_b=path, b_to_a=PathConfig(delay=0.005, drop=regular.drop))
    sender, receiver = App(lambda: client, up), Reader(lambda: b.msk)
    watch = Watch(client)
    sim.hooks += [sender, receiver, watch]
    # the backup joins once the connection is up, before most of the data has gone
    assert sim.run(until=5.0, stop=lambda: client.established and client.peer_sent_dss)
    client.open_subflow(CLIENT[0], 1, SERVER[0], SERVER[1], backup=True, now=sim.now)
    assert sim.run(until=5.0, stop=lambda: client.subflows[1].usable)
    return client, b, sim, sender, receiver, watch, up


def _finish(client, b, sim, receiver, up) -> None:
    done = sim.run(until=120.0, stop=lambda: bool(client.finished and b.msk and b.msk.finished))
    assert done, f"not finished at t={sim.now}: {client.describe()}"
    assert bytes(receiver.received) == up


def test_blackholed_regular_path_reinjects_on_the_backup_after_two_intervals() -> None:
    regular = Regular()
    client, b, sim, _, receiver, watch, up = _setup(regular, 8_000_000)
    assert sim.run(until=30.0, stop=lambda: client.subflows[0].counters.bytes_sent > 2_000_000)
    assert client.subflows[1].counters.bytes_sent == 0  # backup: nothing while path 1 works
    regular.blackholed = True
    cut = sim.now
    probe_timeout = 2 * client.subflows[0].srtt  # its tail loss probe's (RFC 8985 PTO)
    _finish(client, b, sim, receiver, up)
    assert watch.first_on_backup is not None
    waited = watch.first_on_backup - cut
    # two intervals, each the regular subflow's pending timer (its tail loss probe, 2
    # SRTT, sooner than its 200 ms RTO), as Linux: not one and then a minimum RTO
    assert probe_timeout < waited <= 2 * probe_timeout + 0.02, (waited, probe_timeout)
    assert waited < MIN_RTO
    counters = client.counters
    assert counters.get("MPTCPRetrans", 0) >= 1
    assert counters.get("SubflowStale") == 1  # after STALE_LOSS_CNT intervals
    assert client.subflows[0].stale_count >= 4
    assert client.subflows[1].counters.bytes_sent > 4_000_000  # the rest went over it


def test_lossy_regular_path_that_answers_keeps_the_backup_idle() -> None:
    regular = Regular(loss=0.01, both_ways=False)  # data lost, ACKs all come back
    client, b, sim, _, receiver, _, up = _setup(regular, 8_000_000)
    _finish(client, b, sim, receiver, up)
    tcp = client.subflows[0].tcp
    assert tcp.stats.RetransSegs > 0  # the loss happened and was repaired on path 1
    assert client.subflows[1].counters.bytes_sent == 0
    assert "SubflowStale" not in client.counters
