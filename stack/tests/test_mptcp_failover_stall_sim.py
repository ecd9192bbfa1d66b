"""Failover when the regular subflow dies while the data level has nothing in flight
(in-memory link, virtual time).

A slow writer (an interactive application) leaves the connection idle between bursts.
When the regular path is blackholed, the backup carries the burst in flight (a
data-level retransmission), the DATA_ACK catches up and nothing is in flight at the
data level any more; the regular subflow still holds its own unacknowledged segments,
its window collapsed by its RTO, and it is not yet stale. The next burst must still
reach the peer over the backup: the data-level timer keeps counting the silent
subflow's intervals while data waits (as Linux's msk timer does, since Linux queues the
burst on the silent subflow), so it goes stale and the backup takes over. Before,
nothing was armed and the burst waited for the silent subflow's TCP to give up, minutes.

The same stall could start from the link watcher: a link that goes down marks its
subflows stale, and an ACK read after the notice (received before the link went down)
made them usable again. A subflow whose link is down carries no new data until it is up.
"""

from __future__ import annotations

import ipaddress
import random

from stack.mptcp.connection import MptcpConfig, MptcpConnection
from stack.mptcp.listener import MptcpListener
from stack.mptcp.token import TokenTable
from stack.sim import PathConfig, Simulator
from stack.tests.test_mptcp_failover_sim import JOIN_PORT, Reader, Regular
from stack.tests.test_mptcp_sim import CLIENT, FAST, SERVER, ClientEnd, ServerEnd

BACKUP_ADDRESS = ipaddress.ip_address("198.51.100.1")  # the join's own link
BURST = 48_000
GAP = 0.5  # longer than the minimum RTO: the regular subflow's window collapses


class PacedWriter:
    """Writes `data` as far as `allowed` (raised a burst at a time), then DATA_FIN."""

    def __init__(self, get, data: bytes):
        self.get = get
        self.data = memoryview(data)
        self.offset = 0
        self.allowed = 0
        self.shut = False

    def __call__(self, now: float) -> None:
        msk: MptcpConnection | None = self.get()
        if msk is None or not msk.established:
            return
        while self.offset < self.allowed and msk.send_space:
            self.offset += msk.send(self.data[self.offset : self.allowed], now)
        if self.offset == len(self.data) and not self.shut:
            self.shut = True
            msk.shutdown_write(now)


def _setup(regular, size: int):
    data = random.Random(5).randbytes(size)
    config = MptcpConfig(tcp=FAST)
    ports = iter(range(JOIN_PORT, JOIN_PORT + 10))
    client = MptcpConnection.connect(CLIENT, SERVER, config, TokenTable(), isn_secret=b"a",
                                     now=0.0, allocate_port=lambda *_: next(ports))  # fmt: skip
    listener = MptcpListener(SERVER[1], config, TokenTable(), isn_secret=b"b")
    a, b = ClientEnd(client), ServerEnd(listener)
    path = PathConfig(delay=0.005, rate=12.5e6, queue_bytes=1 << 20, drop=regular.drop)
    sim = Simulator(a, b, a_to_b=path, b_to_a=PathConfig(delay=0.005, drop=regular.drop))
    writer, reader = PacedWriter(lambda: client, data), Reader(lambda: b.msk)
    sim.hooks += [writer, reader]
    assert sim.run(until=5.0, stop=lambda: client.established and client.peer_sent_dss)
    client.open_subflow(BACKUP_ADDRESS, 1, SERVER[0], SERVER[1], backup=True, now=sim.now)
    assert sim.run(until=5.0, stop=lambda: client.subflows[1].usable)
    return client, b, sim, writer, reader, data


def _bursts(sim, writer, until_sent, stop=None) -> bool:
    """One burst every GAP s (the virtual clock moves on while the link is idle) until
    `until_sent()` holds; then runs until `stop()` or 10 s later."""
    while not until_sent():
        writer.allowed = min(len(writer.data), writer.allowed + BURST)
        deadline = sim.now + GAP
        sim.run(until=deadline)
        sim.now = max(sim.now, deadline)
    return stop is None or sim.run(until=sim.now + 10.0, stop=stop)


def test_burst_after_the_data_level_drained_goes_over_the_backup() -> None:
    regular = Regular()
    client, b, sim, writer, reader, data = _setup(regular, 40 * BURST)
    # mid-burst, so the regular subflow holds unacknowledged segments when it dies
    _bursts(sim, writer, lambda: writer.allowed >= 10 * BURST)
    writer.allowed += BURST
    sim.run(until=sim.now + 0.01)  # the burst is on its way over the regular subflow
    assert client.subflows[0].unacked > 0
    regular.blackholed = True
    cut = sim.now
    done = _bursts(sim, writer, lambda: writer.allowed == len(data),
                   stop=lambda: bool(client.finished and b.msk and b.msk.finished))  # fmt: skip
    assert done, f"stalled: {client.describe()}"
    assert bytes(reader.received) == data
    # 29 bursts left, one every GAP s: about 14.5 s if no burst waits on the dead subflow
    # for more than the stale detection (STALE_LOSS_CNT minimum RTOs)
    assert sim.now - cut < 30 * GAP + 1.5, sim.now - cut
    assert client.counters.get("SubflowStale") == 1


class LinkCut:
    """The regular subflow's link goes down at `at`: nothing of it leaves after that,
    but ACKs the peer sent before `at + late` still arrive (frames the host had received
    and not yet read when the link watcher told it)."""

    def __init__(self) -> None:
        self.sim: Simulator | None = None
        self.at: float | None = None
        self.late = 0.02

    def drop(self, seg) -> bool:
        if self.at is None or self.sim is None or CLIENT[1] not in (seg.src_port, seg.dst_port):
            return False
        return seg.src_port == CLIENT[1] or self.sim.now > self.at + self.late


def test_subflow_on_a_link_that_is_down_gets_no_new_data() -> None:
    cut = LinkCut()
    client, b, sim, writer, reader, data = _setup(cut, 40 * BURST)
    cut.sim = sim
    _bursts(sim, writer, lambda: writer.allowed >= 10 * BURST)
    writer.allowed += BURST
    sim.run(until=sim.now + 0.003)  # the burst is on its way over the regular subflow
    regular = client.subflows[0]
    cut.at = sim.now
    client.on_link_change({CLIENT[0]}, False, sim.now)
    sent_at_cut = regular.counters.bytes_sent
    done = _bursts(sim, writer, lambda: writer.allowed == len(data),
                   stop=lambda: bool(client.finished and b.msk and b.msk.finished))  # fmt: skip
    assert done, f"stalled: {client.describe()}"
    assert bytes(reader.received) == data
    # ACKs read after the link went down do not make the subflow usable again
    assert regular.counters.bytes_sent == sent_at_cut
    assert sim.now - cut.at < 30 * GAP + 0.5, sim.now - cut.at
