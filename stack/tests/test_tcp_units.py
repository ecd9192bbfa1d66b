"""The small pieces: sequence arithmetic, RTO estimator, ISN, reassembly, scoreboard,
congestion control, and the hooks the MPTCP layer uses."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from stack.sim import PathConfig, StreamApp, connection_pair
from stack.tcp import NewReno, TcpConfig, TcpState
from stack.tcp.hystart import LOW_WINDOW, SlowStartExit
from stack.tcp.isn import initial_sequence_number
from stack.tcp.reassembly import ReceiveBuffer
from stack.tcp.rto import RtoEstimator
from stack.tcp.scoreboard import Scoreboard
from stack.tcp.sendbuffer import SendBuffer
from stack.tcp.seq import seq_diff, seq_geq, seq_gt, seq_leq, seq_lt, unwrap


def test_sequence_comparisons_wrap():
    assert seq_lt(0xFFFFFFF0, 0x10) and seq_gt(0x10, 0xFFFFFFF0)
    assert seq_leq(5, 5) and seq_geq(5, 5) and seq_diff(0x10, 0xFFFFFFF0) == 0x20
    assert unwrap(0x00000010, 0xFFFFFFF0, 0) == 0x20
    assert unwrap(0xFFFFFFF0, 0xFFFFFFF0, 5) == 0
    assert unwrap(5, 10, 1 << 33) == (1 << 33) + ((5 - 10) & 0xFFFFFFFF) - (1 << 32)


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**40), st.integers(-(2**31) + 1, 2**31 - 1))
def test_unwrap_inverts_wrap(isn, reference, delta):
    rel = reference + delta
    assert unwrap((isn + rel) & 0xFFFFFFFF, isn, reference) == rel


def test_rto_rfc6298():
    r = RtoEstimator(initial=1.0, min_rto=0.2, max_rto=60)
    assert r.rto == 1.0  # (2.1)
    r.sample(0.1)
    assert r.srtt == 0.1 and r.rttvar == 0.05 and abs(r.rto - 0.3) < 1e-12  # (2.2): 0.1 + 4 * 0.05
    r.sample(0.2)  # (2.3)
    assert abs(r.rttvar - (0.75 * 0.05 + 0.25 * 0.1)) < 1e-12
    assert abs(r.srtt - (0.875 * 0.1 + 0.125 * 0.2)) < 1e-12
    r.back_off()
    r.back_off()
    assert abs(r.rto - 4 * (r.srtt + 4 * r.rttvar)) < 1e-12  # (5.5)
    for _ in range(20):
        r.back_off()
    assert r.rto == 60  # capped
    slow = RtoEstimator(min_rto=1.0)
    slow.sample(0.001)
    assert slow.rto == 1.0  # (2.4) the minimum


def test_isn_rfc6528_keyed_and_clocked():
    a, b = ("10.0.0.1", 1), ("10.0.0.2", 2)
    isn0 = initial_sequence_number(a, b, b"s", 0.0)
    assert initial_sequence_number(a, b, b"s", 1.0) == (isn0 + 250_000) & 0xFFFFFFFF  # 4 us
    assert initial_sequence_number(a, b, b"t", 0.0) != isn0  # secret
    assert initial_sequence_number(a, ("10.0.0.2", 3), b"s", 0.0) != isn0  # 4-tuple


def test_reassembly_out_of_order_overlaps_and_duplicates():
    rb = ReceiveBuffer(1 << 20)
    data = random.Random(1).randbytes(5000)
    pieces = [(0, 1000), (2000, 3000), (1500, 2500), (2900, 4000), (500, 1600), (4000, 5000)]
    for a, b in pieces:
        rb.insert(1 + a, data[a:b])
        rb.insert(1 + a, data[a:b])  # duplicates change nothing
    assert rb.rcv_nxt == 5001 and not rb.has_out_of_order
    assert rb.read(10_000) == data


def test_a_run_of_segments_after_a_hole_is_held_as_one_piece():
    """After a loss, the segments that follow in order extend one out-of-order piece
    (as Linux coalesces its ofo queue), rather than each becoming an object of its own
    (the soak's heap: issue 11); SACK still reports the whole run as one block."""
    rb = ReceiveBuffer(1 << 20)
    data = random.Random(3).randbytes(1448 * 60)
    for k in range(1, 60):  # segment 0 lost
        segment = memoryview(data)[1448 * k : 1448 * (k + 1)]
        rb.insert(1 + 1448 * k, segment)
    assert len(rb._pieces) == 1 and rb.out_of_order_bytes == 1448 * 59
    assert rb.sack_blocks(4) == [(1 + 1448, 1 + 1448 * 60)]
    rb.insert(1, data[:1448])
    assert rb.read(1 << 20) == data and not rb.has_out_of_order


@given(st.lists(st.tuples(st.integers(0, 3000), st.integers(1, 700)), max_size=40))
def test_reassembly_property(pieces):
    data = random.Random(7).randbytes(4000)
    rb = ReceiveBuffer(1 << 20)
    for start, length in pieces:
        rb.insert(1 + start, data[start : start + length])
    rb.insert(1, data)
    assert rb.read(10_000) == data and rb.rcv_nxt == 4001


def test_send_buffer_keeps_nothing_once_all_is_acknowledged():
    """A subflow in TIME_WAIT used to hold up to 64 KiB of acknowledged bytes for 60 s
    (released only in steps of 64 KiB): per connection closed in the last minute."""
    buffer = SendBuffer(1 << 20)
    assert buffer.append(bytes(50_000)) == 50_000
    assert buffer.release(20_000) == 20_000  # partly: the bytes stay, head moves
    assert buffer.get(20_000, 10) == bytes(10) and len(buffer) == 30_000
    assert buffer.release(50_000) == 30_000
    assert len(buffer) == 0 and buffer.base == buffer.end == 50_000
    assert len(buffer._buf) == 0, "acknowledged bytes still held"
    assert buffer.append(b"next") == 4 and buffer.get(50_000, 4) == b"next"


def test_scoreboard_merges_and_finds_holes():
    sb = Scoreboard()
    assert sb.add(100, 200) and sb.add(300, 400) and sb.add(200, 300)
    assert sb.ranges == [[100, 400]] and sb.sacked_bytes == 300
    assert not sb.add(150, 250)  # nothing new
    sb.add(500, 600)
    assert sb.next_hole(1) == (1, 100) and sb.next_hole(100) == (400, 500)
    assert sb.next_hole(600) is None  # above the highest SACK nothing is presumed lost
    sb.advance(350)
    assert sb.ranges == [[350, 400], [500, 600]] and sb.sacked_bytes == 150


def test_newreno_slow_start_avoidance_and_pluggable_increase():
    cc = NewReno(1000, 10)
    assert cc.cwnd == 10_000
    cc.on_ack(1000, False)
    assert cc.cwnd == 11_000  # slow start
    cc.on_enter_recovery(20_000)
    assert cc.ssthresh == 10_000 and cc.cwnd == 13_000
    cc.on_exit_recovery(5_000)
    assert cc.cwnd == 6_000
    cc.cwnd = cc.ssthresh
    for _ in range(10):
        cc.on_ack(1000, False)
    assert 10_900 <= cc.cwnd <= 11_000  # ~1 MSS per window of ACKs
    calls = []
    coupled = NewReno(1000, 10, ca_increase=lambda cwnd, acked, mss: calls.append(1) or 0.5)
    coupled.ssthresh = 1
    coupled.on_ack(1000, False)
    assert calls and coupled.cwnd == 10_000  # the LIA-like rule decides, here +0.5 byte


def test_mptcp_hooks_see_every_segment_with_relative_sequence_numbers():
    cfg = TcpConfig(min_rto=0.2, time_wait=0.2, option_reserve=20)
    a, b, sim = connection_pair(cfg, cfg, a_to_b=PathConfig(loss=0.05), seed=3)
    sent: list[tuple[int, int]] = []  # (relative seq, length) of every data segment A emits
    seen: list[tuple[int, int]] = []  # what B accepted, with relative seqs

    def provider(seg, rel):
        seg.extra_options = ("dss", rel)
        if seg.payload:
            sent.append((rel, len(seg.payload)))

    a.option_provider = provider
    a.segment_limit = lambda rel: 700  # e.g. a DSS mapping boundary
    b.listener.option_observer = lambda seg, rel: seen.append((rel, len(seg.payload)))
    data = random.Random(4).randbytes(50_000)
    app_b = StreamApp(lambda: b.connection)
    sim.hooks += [StreamApp(a, data), app_b]
    a.connect(0.0)
    sim.run(until=60)
    assert bytes(app_b.received) == data and a.state is TcpState.CLOSED
    assert all(n <= 700 for _, n in sent)  # the limit hook is honoured
    assert {r for r, _ in sent if r < 50_001} >= {1}  # data starts at relative seq 1
    for rel, n in sent:  # payload at relative seq r is stream byte r-1
        assert rel >= 1 and rel + n <= 50_001
    assert seen[0] == (0, 0)  # the SYN, at relative 0
    assert {r for r, n in seen if n} <= {r for r, _ in sent}
    assert a.payload_mss == 1460 - 12 - 20  # room left for the MPTCP option


def _round(detector, rtt, start, cwnd, samples=8):
    """One round of slow start: `samples` ACKs with RTT `rtt`, from snd_una `start`."""
    verdicts = [detector.on_rtt(rtt, start + i, start + 100, cwnd) for i in range(samples)]
    return any(verdicts)


def test_hystart_exits_when_a_round_min_rtt_grows_by_an_eighth_clamped_to_4ms():
    steady = SlowStartExit()
    assert not any(_round(steady, 0.010, 100 * r, 32) for r in range(1, 6))  # flat RTT
    growing = SlowStartExit()
    assert not _round(growing, 0.010, 100, 32)  # the first round only sets the base
    assert not _round(growing, 0.0139, 200, 32)  # +3.9 ms < max(10/8 ms, 4 ms)
    assert _round(growing, 0.0179, 300, 32)  # +4 ms over the last round's 13.9 ms
    assert growing.exits == 1
    assert not _round(growing, 0.0139, 400, 32, samples=7)  # too few samples


def test_hystart_leaves_small_windows_alone():
    detector = SlowStartExit()
    _round(detector, 0.010, 100, LOW_WINDOW - 1)
    assert not _round(detector, 0.100, 200, LOW_WINDOW - 1)
    assert _round(detector, 0.200, 300, LOW_WINDOW)
