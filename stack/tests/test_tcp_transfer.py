"""Bulk transfers over the simulated link: every byte arrives once, in order, unchanged."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stack.sim import PathConfig, StreamApp, connection_pair, digest
from stack.tcp import ACK, Closed, CloseReason, TcpConfig, TcpState

FAST = TcpConfig(min_rto=0.2, time_wait=0.5)


@dataclass
class Transfer:
    a: Any
    b: Any
    sim: Any
    app_a: Any
    app_b: Any
    data_ab: bytes
    data_ba: bytes


def _payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def run_transfer(
    a_to_b: PathConfig,
    b_to_a: PathConfig,
    *,
    seed: int,
    size_ab: int,
    size_ba: int,
    config: TcpConfig = FAST,
    until: float = 3000.0,
):
    a, b, sim = connection_pair(config, config, a_to_b=a_to_b, b_to_a=b_to_a, seed=seed)
    data_ab, data_ba = _payload(size_ab, seed), _payload(size_ba, seed + 1)
    app_a = StreamApp(a, data_ab)
    app_b = StreamApp(lambda: b.connection, data_ba)
    sim.hooks += [app_a, app_b]
    a.connect(0.0)
    sim.run(until=until)
    return Transfer(a, b, sim, app_a, app_b, data_ab, data_ba)


def _assert_complete(t):
    a, b, app_a, app_b, data_ab, data_ba = t.a, t.b, t.app_a, t.app_b, t.data_ab, t.data_ba
    assert digest(app_b.received) == digest(data_ab)
    assert digest(app_a.received) == digest(data_ba)
    # both ends went through the whole close: A via TIME_WAIT or LAST_ACK, all CLOSED
    assert a.state is TcpState.CLOSED and b.connection.state is TcpState.CLOSED
    assert Closed(CloseReason.NORMAL) in app_a.events
    assert Closed(CloseReason.NORMAL) in app_b.events


def test_bulk_2mb_each_way_clean_link():
    # windows that fit the 256 KB bottleneck queue: nothing is ever dropped (with the
    # default buffers of 4 MB, slow start overshoots the queue, as it would on a wire)
    fits = dataclasses.replace(FAST, receive_buffer=256 * 1024, send_buffer=256 * 1024)
    t = run_transfer(
        PathConfig(rate=12.5e6),
        PathConfig(rate=12.5e6),
        seed=1,
        size_ab=2_000_000,
        size_ba=2_000_000,
        config=fits,
    )
    _assert_complete(t)
    assert t.a.stats.RetransSegs == 0 and t.b.connection.stats.RetransSegs == 0
    # 4 MB through 100 Mbit/s each way takes ~0.17 s of serialisation; allow slow start
    assert t.sim.now < 2.0


@pytest.mark.parametrize("loss", [0.02, 0.10])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bulk_2mb_under_random_loss(loss, seed):
    t = run_transfer(
        PathConfig(loss=loss, rate=12.5e6),
        PathConfig(loss=loss),
        seed=seed,
        size_ab=2_000_000,
        size_ba=200_000,
    )
    _assert_complete(t)
    assert t.a.stats.RetransSegs > 0  # the loss happened and was repaired


@pytest.mark.parametrize("seed", [4, 5])
def test_bulk_under_reordering_duplication_and_loss(seed):
    path = PathConfig(loss=0.03, duplicate=0.05, reorder=0.2, reorder_delay=0.02)
    t = run_transfer(path, path, seed=seed, size_ab=1_000_000, size_ba=1_000_000)
    _assert_complete(t)
    assert t.sim.stats[0].duplicated and t.sim.stats[0].reordered


def test_bulk_reordering_only_and_duplication_only():
    for path in (PathConfig(reorder=0.3, reorder_delay=0.02), PathConfig(duplicate=0.2)):
        t = run_transfer(path, path, seed=9, size_ab=2_000_000, size_ba=100_000)
        _assert_complete(t)


def test_transfer_without_sack_timestamps_or_window_scaling():
    cfg = TcpConfig(min_rto=0.2, time_wait=0.5, sack=False, timestamps=False, window_scaling=False)
    path = PathConfig(loss=0.03, reorder=0.05)
    t = run_transfer(path, path, seed=11, size_ab=1_000_000, size_ba=50_000, config=cfg)
    _assert_complete(t)
    assert not t.a.sack_enabled and not t.a.ts_enabled and not t.a.wscale_enabled


def test_segments_larger_than_mss_are_accepted():
    """A GRO/TSO super-segment of 64 KB from a kernel peer is ordinary data."""
    from stack.sim import FakePeer
    from stack.tcp import SYN, TcpConnection

    conn = TcpConnection(("a", 1), ("b", 2), config=TcpConfig(), isn_secret=b"k", now=0.0)
    conn.connect(0.0)
    conn.poll_segments()
    peer = FakePeer(conn)
    peer.send(SYN | ACK, 0.01, seq=0, ack=1, mss=1460, wscale=7)
    blob = _payload(65000, 3)
    replies = peer.send(ACK, 0.02, seq=1, ack=1, payload=blob, window=1000)
    assert conn.receive(1 << 20, 0.02) == blob
    # 65000 bytes is far more than two full segments: the ACK goes at once (RFC 5681 §4.2)
    assert replies and peer.ack_of(replies[-1]) == 1 + len(blob)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    loss=st.floats(0, 0.25),
    dup=st.floats(0, 0.2),
    reorder=st.floats(0, 0.4),
    delay=st.floats(0.0005, 0.05),
    size_ab=st.integers(0, 120_000),
    size_ba=st.integers(0, 60_000),
    sack=st.booleans(),
    timestamps=st.booleans(),
)
def test_property_random_impairments_never_lose_or_corrupt(
    seed, loss, dup, reorder, delay, size_ab, size_ba, sack, timestamps
):
    cfg = TcpConfig(
        min_rto=0.2,
        time_wait=0.5,
        sack=sack,
        timestamps=timestamps,
        receive_buffer=32768,
        send_buffer=16384,
        max_retries=30,
    )
    path = PathConfig(
        delay=delay, loss=loss, duplicate=dup, reorder=reorder, reorder_delay=3 * delay
    )
    t = run_transfer(
        path, path, seed=seed, size_ab=size_ab, size_ba=size_ba, config=cfg, until=20000.0
    )
    assert bytes(t.app_b.received) == t.data_ab
    assert bytes(t.app_a.received) == t.data_ba


def test_no_ack_war_after_go_back_n():
    """Regression (found by the property test): after an RTO rewinds snd_nxt, a pure ACK
    must not carry the rewound seq, or each side finds the other's ACKs unacceptable and
    answers them forever without ever processing their ACK fields."""
    cfg = TcpConfig(
        min_rto=0.2,
        time_wait=0.5,
        sack=False,
        receive_buffer=32768,
        send_buffer=16384,
        max_retries=30,
    )
    path = PathConfig(
        delay=0.03125, loss=0.25, duplicate=0.25, reorder=0.375, reorder_delay=0.09375
    )
    t = run_transfer(path, path, seed=1, size_ab=15929, size_ba=13033, config=cfg)
    _assert_complete(t)
    assert t.a.stats.OutOfWindowDrops < 20 and t.sim.now < 60


@pytest.mark.parametrize("hystart", [True, False])
def test_slow_start_ends_on_delay_before_the_bottleneck_queue_overflows(hystart):
    # 4 MB windows over 100 Mbit/s with a 512 KB queue (40 ms of it): slow start alone
    # doubles cwnd until the queue overflows and a window's worth of segments is lost;
    # HyStart (RFC 9406 §4.2) sees each round's minimum RTT grow by the queue it built
    # and moves to congestion avoidance first, without a loss (HyStart alone: the queue
    # delay cap, which would also stop the growth, is off)
    config = dataclasses.replace(FAST, hystart=hystart, queue_delay_cap=False)
    queue = 512 * 1024
    t = run_transfer(PathConfig(rate=12.5e6, queue_bytes=queue), PathConfig(), seed=3,
                     size_ab=4_000_000,
                     size_ba=0, config=config)  # fmt: skip
    _assert_complete(t)
    if hystart:
        assert t.a.hystart is not None and t.a.hystart.exits == 1
        assert t.a.stats.RetransSegs == 0
        assert t.a.cc.ssthresh < queue + 12.5e6 * 0.010  # queue + bandwidth-delay
    else:
        assert t.a.hystart is None
        assert t.a.stats.RetransSegs > 0


def test_hystart_watches_only_the_initial_slow_start():
    # RFC 9406 §4.3: once a loss has set ssthresh, slow start up to it is the standard
    # one; the delay that the queue builds on the way does not end it early
    queue = 512 * 1024
    alone = dataclasses.replace(FAST, queue_delay_cap=False)  # HyStart alone, as above
    a, b, sim = connection_pair(alone, alone, a_to_b=PathConfig(rate=12.5e6, queue_bytes=queue),
                                b_to_a=PathConfig(), seed=3)  # fmt: skip
    data = _payload(4_000_000, 3)
    app_a, app_b = StreamApp(a, data), StreamApp(lambda: b.connection, b"")
    sim.hooks += [app_a, app_b]
    after_loss = 300 * 1448  # below queue + bandwidth-delay: no loss on the way up
    a.cc.ssthresh = after_loss
    a.connect(0.0)
    sim.run(until=3000.0)
    assert digest(app_b.received) == digest(data)
    assert a.hystart is not None and a.hystart.exits == 0
    assert a.stats.RetransSegs == 0 and a.cc.ssthresh == after_loss
