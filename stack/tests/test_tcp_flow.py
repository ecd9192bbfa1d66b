"""Delayed ACKs (RFC 5681 §4.2, RFC 9293 §3.8.6.3), flow control with a bounded receive
buffer, zero-window probing (RFC 9293 §3.8.6.1), window updates."""

from __future__ import annotations

import itertools
import random

from stack.sim import ADDR_A, ADDR_B, FakePeer, PathConfig, StreamApp, connection_pair
from stack.tcp import ACK, SYN, SendSpaceAvailable, TcpConfig, TcpConnection

MSS = 1000


def receiver(**cfg):
    """Our connection, established, receiving from a scripted peer. Quick-ACK mode is off
    unless asked for: these tests are about the delayed ACK that follows it."""
    cfg.setdefault("max_quick_acks", 0)
    config = TcpConfig(mss=MSS, timestamps=False, **cfg)
    conn = TcpConnection(ADDR_A, ADDR_B, config=config, isn_secret=b"k", now=0.0)
    conn.connect(0.0)
    conn.poll_segments()
    peer = FakePeer(conn)
    peer.send(SYN | ACK, 0.01, seq=0, ack=1, mss=MSS)
    conn.poll_events()
    return conn, peer


def test_delayed_ack_on_timer_for_a_single_segment():
    conn, peer = receiver()
    assert peer.send(ACK, 1.0, seq=1, ack=1, payload=b"x" * MSS) == []
    assert conn.next_timer() == 1.0 + 0.040
    conn.handle_timer(1.04)
    [ack] = conn.poll_segments()
    assert peer.ack_of(ack) == 1 + MSS and conn.stats.DelayedACKs == 1
    assert conn.next_timer() is None


def test_quick_acks_for_the_first_segments_and_after_a_silence():
    # Linux's tcp_event_data_recv(): the first data, and data after a gap longer than
    # the RTO, put the receiver in quick-ACK mode for up to TCP_MAX_QUICKACKS segments
    # (rcv_wnd / 2 MSS at least 2): each is ACKed without waiting for a second one
    conn, peer = receiver(max_quick_acks=16, receive_buffer=4 * MSS)  # room for 2 quick
    seq = 1
    for i in range(2):
        [ack] = peer.send(ACK, 1.0 + i * 0.001, seq=seq, ack=1, payload=b"x" * MSS)
        seq += MSS
        assert peer.ack_of(ack) == seq
        conn.receive(1 << 20, 1.0 + i * 0.001)
        conn.poll_segments()  # a window update, if any
    assert peer.send(ACK, 1.01, seq=seq, ack=1, payload=b"x" * MSS) == []  # delayed again
    conn.handle_timer(1.01 + 0.040)
    [ack] = conn.poll_segments()
    seq += MSS
    conn.receive(1 << 20, 1.06)
    conn.poll_segments()
    silence = 1.06 + conn.rto.rto + 0.001  # longer than the RTO: a sender restarting
    [ack] = peer.send(ACK, silence, seq=seq, ack=1, payload=b"y" * 100)
    assert peer.ack_of(ack) == seq + 100


def test_ack_every_second_full_segment():
    _conn, peer = receiver()
    acks = []
    for i in range(6):
        acks.append(peer.send(ACK, 1.0 + i * 0.001, seq=1 + i * MSS, ack=1, payload=b"x" * MSS))
    assert [len(a) for a in acks] == [0, 1, 0, 1, 0, 1]
    assert [peer.ack_of(a[0]) for a in acks if a] == [1 + 2 * MSS, 1 + 4 * MSS, 1 + 6 * MSS]


def test_immediate_ack_for_out_of_order_and_hole_fill():
    _conn, peer = receiver()
    [dup] = peer.send(ACK, 1.0, seq=1 + MSS, ack=1, payload=b"y" * 10)
    assert peer.ack_of(dup) == 1  # out of order: a duplicate ACK at once
    [ack] = peer.send(ACK, 1.001, seq=1, ack=1, payload=b"x" * MSS)
    assert peer.ack_of(ack) == 1 + MSS + 10  # hole filled: ACK at once


def test_window_shrinks_as_app_does_not_read_and_right_edge_never_moves_left():
    conn, peer = receiver(receive_buffer=8 * MSS, window_scaling=False)
    edges = []
    for i in range(8):
        for seg in peer.send(ACK, 1.0 + i * 0.001, seq=1 + i * MSS, ack=1, payload=b"z" * MSS):
            edges.append(peer.ack_of(seg) + seg.window)
            last = seg
    assert last.window == 0 and peer.ack_of(last) == 1 + 8 * MSS
    assert edges == sorted(edges)
    # data beyond the closed window is not taken, and answered by an ACK
    [ack] = peer.send(ACK, 1.1, seq=1 + 8 * MSS, ack=1, payload=b"!" * 100)
    assert conn.readable == 8 * MSS and ack.window == 0
    # reading reopens the window and says so with a window update
    conn.receive(4 * MSS, 1.2)
    [update] = conn.poll_segments()
    assert update.window == 4 * MSS and peer.ack_of(update) == 1 + 8 * MSS


def test_small_reads_do_not_advertise_silly_windows():
    conn, peer = receiver(receive_buffer=8 * MSS, window_scaling=False)
    for i in range(8):
        peer.send(ACK, 1.0 + i * 0.001, seq=1 + i * MSS, ack=1, payload=b"z" * MSS)
    conn.receive(10, 1.1)
    assert conn.poll_segments() == []  # 10 bytes is not worth a window update
    [seg] = peer.send(ACK, 1.2, seq=1 + 8 * MSS, ack=1, payload=b"!")
    assert seg.window == 0  # and not advertised either (receiver SWS avoidance)


def test_a_read_sends_no_update_when_the_unscaled_field_cannot_grow():
    """A peer without window scaling: the field tops out at 65535 however large the
    buffer, so a read that frees buffer space changes nothing on the wire. An "update"
    would be a copy of the last ACK, which the peer counts as a duplicate ACK."""
    conn, peer = receiver(receive_buffer=1 << 20)  # the peer's SYN/ACK offers no scaling
    assert not conn.wscale_enabled
    for i in range(2):  # two full segments: ACKed at once
        sent = peer.send(ACK, 1.0, seq=1 + i * MSS, ack=1, payload=b"z" * MSS)
    [ack] = sent
    assert ack.window == 0xFFFF and peer.ack_of(ack) == 1 + 2 * MSS
    assert conn.receive(2 * MSS, 1.01) == b"z" * 2 * MSS
    assert conn.poll_segments() == []


def test_a_pure_ack_repeated_in_one_round_goes_once_unless_its_options_differ():
    """Two reasons to ACK in one round (TCP's own ACK of the data, then the layer above's
    "ACK now") give one segment: two identical ones are duplicate ACKs to the peer.
    When the layer above puts other options on the second (an ADD_ADDR, say), both go."""
    conn, peer = receiver()
    segments = [peer.segment(ACK, seq=1 + i * MSS, ack=1, payload=b"z" * MSS) for i in (0, 1)]
    conn.handle_segments(segments, 1.0)  # two full segments: ACKed in this round
    conn.send_pure_ack(1.0)  # the layer above's "now", nothing received in between
    [ack] = conn.poll_segments()
    assert peer.ack_of(ack) == 1 + 2 * MSS
    assert conn.stats.OutSegs == 3  # the SYN, the handshake's ACK, and this one
    tags = iter(("a", "b"))
    conn.option_provider = lambda seg, rel: setattr(seg, "extra_options", (next(tags),))
    conn.send_pure_ack(1.1)
    conn.send_pure_ack(1.1)
    assert [seg.extra_options for seg in conn.poll_segments()] == [("a",), ("b",)]


def test_zero_window_persist_probes_back_off_and_transfer_resumes():
    cfg_a = TcpConfig(min_rto=0.2, time_wait=0.5)
    cfg_b = TcpConfig(min_rto=0.2, time_wait=0.5, receive_buffer=16384)
    a, b, sim = connection_pair(cfg_a, cfg_b, record=True)
    data = random.Random(1).randbytes(100_000)
    app_a = StreamApp(a, data)
    app_b = StreamApp(lambda: b.connection, read=False)
    sim.hooks += [app_a, app_b]
    a.connect(0.0)
    sim.run(until=20.0)
    bc = b.connection
    assert bc.readable == 16384  # exactly the buffer, never more
    assert a.snd_wnd == 0 and a.stats.TCPWinProbe >= 3
    probes = [t for t, d, seg, _ in sim.trace if d == "a>b" and len(seg.payload) == 1]
    gaps = [round(y - x, 3) for x, y in itertools.pairwise(probes)]
    assert all(g2 >= 1.9 * g1 for g1, g2 in itertools.pairwise(gaps))  # backoff
    # the application reads: the window reopens and everything arrives
    app_b.read = True
    sim.run(until=200.0)
    assert bytes(app_b.received) == data
    assert a.stats.TCPTimeouts == 0  # probes are not retransmission timeouts


def test_sender_respects_peer_window_and_reports_send_space():
    conn, peer = receiver(send_buffer=10 * MSS)
    peer.send(ACK, 0.02, seq=1, ack=1, window=3 * MSS)
    assert conn.send(b"q" * (20 * MSS), 1.0) == 10 * MSS  # bounded by the send buffer
    segs = conn.poll_segments()
    assert sum(len(s.payload) for s in segs) == 3 * MSS  # bounded by the peer's window
    more = peer.send(ACK, 1.1, seq=1, ack=1 + 3 * MSS, window=3 * MSS)
    assert SendSpaceAvailable(3 * MSS) in conn.poll_events()
    assert sum(len(s.payload) for s in more) == 3 * MSS  # the window slid by 3 segments


def test_rate_limited_link_with_small_buffers_completes():
    cfg = TcpConfig(min_rto=0.2, time_wait=0.5, receive_buffer=20000, send_buffer=20000)
    a, b, sim = connection_pair(cfg, cfg, a_to_b=PathConfig(rate=1e6, queue_bytes=30000))
    data = random.Random(2).randbytes(300_000)
    app_b = StreamApp(lambda: b.connection)
    sim.hooks += [StreamApp(a, data), app_b]
    a.connect(0.0)
    sim.run(until=100.0)
    assert bytes(app_b.received) == data
