"""The queue delay cap (stack/tcp/delaycap.py) on the simulated link, in virtual time.

A 100 Mbit/s bottleneck with a 1 MB queue (80 ms of it) and a 10 ms base RTT: NewReno
alone fills the queue until it overflows, so its smoothed RTT ends up tens of
milliseconds above the base, and every timer derived from it (the tail loss probe, the
MPTCP data-level retransmission) slows down. With the cap the queue stays within its
bounds while the link stays busy.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
from dataclasses import dataclass, field

from stack.sim import PathConfig, StreamApp, connection_pair, digest
from stack.tcp import TcpConfig
from stack.tcp.delaycap import SHRINK

FAST = TcpConfig(min_rto=0.2, time_wait=0.5)
RATE = 12.5e6  # bytes/s: 100 Mbit/s
BASE_RTT = 0.010
SIZE = 50_000_000


@dataclass
class SrttAfter:
    """The sender's SRTT at every step once `start` seconds have passed."""

    conn: object
    start: float
    samples: list[float] = field(default_factory=list)

    def __call__(self, now: float) -> None:
        srtt = self.conn.rto.srtt  # type: ignore[attr-defined]
        if now >= self.start and srtt is not None:
            self.samples.append(srtt)


def _upload(cap: bool):
    config = dataclasses.replace(FAST, queue_delay_cap=cap)
    path = PathConfig(delay=BASE_RTT / 2, rate=RATE, queue_bytes=1 << 20)
    a, b, sim = connection_pair(config, config, a_to_b=path,
                                b_to_a=PathConfig(delay=BASE_RTT / 2), seed=5)  # fmt: skip
    data = random.Random(5).randbytes(SIZE)
    app_a, app_b = StreamApp(a, data), StreamApp(lambda: b.connection, b"")
    srtt = SrttAfter(a, start=0.5)  # past slow start
    sim.hooks += [app_a, app_b, srtt]
    a.connect(0.0)
    sim.run(until=60.0, stop=lambda: len(app_b.received) == SIZE)
    assert digest(app_b.received) == digest(data)
    return a, sim.now, srtt.samples


def test_the_cap_keeps_the_queue_short_and_the_link_busy() -> None:
    capped, took, srtts = _upload(cap=True)
    goodput = SIZE / took
    # the standing queue stays near its bounds (a round can overshoot by the growth of
    # one round before the next is judged)
    assert max(srtts) < BASE_RTT + 2 * SHRINK, f"SRTT up to {max(srtts) * 1e3:.1f} ms"
    assert capped.delay_cap is not None and capped.delay_cap.shrinks > 0
    assert capped.stats.RetransSegs == 0  # the queue never overflowed
    assert goodput >= 0.95 * RATE, f"{goodput / 1e6:.2f} MB/s"
    # what the cap is for: NewReno alone keeps the queue fuller, at no more goodput
    _, took_alone, srtts_alone = _upload(cap=False)
    assert statistics.median(srtts) < statistics.median(srtts_alone) / 1.8, (
        statistics.median(srtts),
        statistics.median(srtts_alone),
    )
    assert took_alone >= took * 0.99
