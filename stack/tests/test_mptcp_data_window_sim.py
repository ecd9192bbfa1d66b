"""The peer's connection-level window, as the sender uses it (in virtual time).

The stack keeps a quarter of the peer's window free (`DATA_WINDOW_RESERVE`): data sent
and not yet DATA_ACKed stays within three quarters of it. Linux 6.18 counts the
out-of-order data it holds against its receive buffer by the memory of its packets
(truesize), and once that total is over the buffer it moves no data at all from its
subflows into the connection, not even the bytes that fill the hole: the connection
stalls for good. A sender that fills the whole window while one subflow lags (a hole
at the front, everything after it out of order on the other subflow) got there about
once a window: `test_two_subflows_carry_20_mb[client-stack-sends]` stalled with the
kernel's `ss -M` showing the connection's memory just over its buffer and both
subflows' receive queues full of data they had acknowledged.

Here a client with two subflows sends to a listener whose buffers are small (so the
window is the limit), and the initial subflow's data is lost for a while mid-transfer
(the hole); at every step of the simulation the data in flight at the data level must
be within three quarters of the window.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random

from stack.mptcp.connection import DATA_WINDOW_RESERVE, MptcpConfig, MptcpConnection
from stack.mptcp.listener import MptcpListener
from stack.mptcp.pm import Endpoint, Limits, PathManager, PeerAddress
from stack.mptcp.reassembly import DSN_MOD
from stack.mptcp.token import TokenTable
from stack.sim import PathConfig, Simulator
from stack.tcp.segment import Segment
from stack.tests.test_mptcp_failover_sim import Reader
from stack.tests.test_mptcp_sim import CLIENT, FAST, SERVER, App, ClientEnd, ServerEnd

CLIENT2 = ipaddress.ip_address("198.51.100.1")
BUFFER = 256 << 10  # the listener's receive buffers: its window


@dataclasses.dataclass
class Hole:
    """Loses the initial subflow's data segments between `start` and `end`."""

    sim: Simulator | None = None
    start: float = 1e9
    end: float = 1e9

    def __call__(self, seg: Segment) -> bool:
        now = self.sim.now if self.sim is not None else 0.0
        return bool(seg.payload) and seg.src_port == CLIENT[1] and self.start <= now < self.end


@dataclasses.dataclass
class Watch:
    """The largest share of the peer's window that data in flight took."""

    client: MptcpConnection
    worst: float = 0.0

    def __call__(self, now: float) -> None:
        sendq, edge = self.client.sendq, self.client.snd_wnd_edge
        if sendq is None or edge is None:
            return
        window = (edge - sendq.snd_una) % DSN_MOD
        if window:
            self.worst = max(self.worst, sendq.in_flight / window)


def test_data_in_flight_keeps_a_quarter_of_the_peers_window_free() -> None:
    up = random.Random(9).randbytes(6_000_000)
    ports = iter(range(CLIENT[1] + 1, CLIENT[1] + 10))
    paths = PathManager([Endpoint(1, CLIENT2, subflow=True)], Limits(subflows=2))
    client = MptcpConnection.connect(
        CLIENT, SERVER, MptcpConfig(tcp=FAST), TokenTable(), isn_secret=b"a", now=0.0,
        allocate_port=lambda *_: next(ports),
        paths=paths.connection(CLIENT[0], PeerAddress(0, SERVER[0], SERVER[1])),
    )  # fmt: skip
    small = MptcpConfig(tcp=dataclasses.replace(FAST, receive_buffer=BUFFER),
                        receive_buffer=BUFFER)  # fmt: skip
    listener = MptcpListener(SERVER[1], small, TokenTable(), isn_secret=b"b")
    a, b = ClientEnd(client), ServerEnd(listener)
    hole = Hole()
    path = PathConfig(delay=0.005, rate=25e6, queue_bytes=1 << 20, drop=hole)
    sim = Simulator(a, b, a_to_b=path, b_to_a=PathConfig(delay=0.005))
    hole.sim = sim
    receiver, watch = Reader(lambda: b.msk), Watch(client)
    sim.hooks += [App(lambda: client, up), receiver, watch]
    assert sim.run(until=5.0, stop=lambda: len(client.subflows) == 2 and client.subflows[1].usable)
    assert sim.run(until=10.0, stop=lambda: client.sendq is not None
                   and client.sendq.snd_una % DSN_MOD > 0 and sum(
                       s.counters.bytes_sent for s in client.subflows) > 1_000_000)  # fmt: skip
    hole.start, hole.end = sim.now, sim.now + 0.3
    done = sim.run(until=60.0, stop=lambda: bool(client.finished and b.msk and b.msk.finished))
    assert done, client.describe()
    assert bytes(receiver.received) == up
    limit = 1 - 1 / DATA_WINDOW_RESERVE
    assert watch.worst <= limit + 1e-9, watch.worst
    assert watch.worst > limit - 0.1, watch.worst  # the window was what held the sender
    assert client.subflows[1].counters.bytes_sent > 1_000_000  # both subflows carried data
