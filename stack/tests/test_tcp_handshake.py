"""Opening and closing: three-way handshake both ways, simultaneous open and close, option
negotiation, SYN retransmission, every close path through TIME_WAIT to CLOSED, the
listener's bounded backlog."""

from __future__ import annotations

import ipaddress

from stack.sim import ADDR_A, ADDR_B, FakePeer, PathConfig, Simulator, connection_pair
from stack.tcp import (
    ACK,
    FIN,
    RST,
    SYN,
    Closed,
    CloseReason,
    Established,
    PeerFinished,
    Segment,
    TcpConfig,
    TcpConnection,
    TcpListener,
    TcpState,
)

FAST = TcpConfig(min_rto=0.2, time_wait=0.5)


def _open(config_a=FAST, config_b=FAST, **kw):
    a, b, sim = connection_pair(config_a, config_b, record=True, **kw)
    a.connect(0.0)
    sim.run(stop=lambda: b.connection is not None and a.state is TcpState.ESTABLISHED)
    return a, b, sim


def test_three_way_handshake_active_and_passive():
    a, b, sim = _open()
    flags = [seg.flags for _, _, seg, _ in sim.trace[:3]]
    assert flags == [SYN, SYN | ACK, ACK]
    syn, synack, ack = (seg for _, _, seg, _ in sim.trace[:3])
    assert synack.ack == (syn.seq + 1) & 0xFFFFFFFF
    assert ack.ack == (synack.seq + 1) & 0xFFFFFFFF and ack.seq == synack.ack
    assert Established() in a.poll_events()
    bc = b.connection
    assert bc is not None and bc.state is TcpState.ESTABLISHED
    assert Established() in bc.poll_events()
    assert a.iss == syn.seq and bc.irs == syn.seq


def test_options_negotiated_when_both_offer():
    a, b, sim = _open(TcpConfig(mss=1400, receive_buffer=1 << 20), TcpConfig(mss=1200))
    syn, synack = sim.trace[0][2], sim.trace[1][2]
    assert syn.mss == 1400 and syn.sack_permitted and syn.timestamp is not None
    assert syn.wscale == 5  # 1 MiB >> 5 fits 16 bits
    assert syn.window == 0xFFFF  # the window of a SYN is never scaled (RFC 7323 §2.2)
    assert synack.timestamp is not None and synack.timestamp[1] == syn.timestamp[0]
    bc = b.connection
    assert a.snd_mss == 1200 and bc.snd_mss == 1200
    assert a.wscale_enabled and bc.wscale_enabled
    assert a.snd_wscale == bc.rcv_wscale and bc.snd_wscale == a.rcv_wscale == 5
    assert a.ts_enabled and bc.ts_enabled and a.sack_enabled and bc.sack_enabled
    assert a.payload_mss == 1200 - 12  # timestamps take 12 bytes of every segment


def test_window_scaling_off_unless_both_send_it():
    a, _b, sim = _open(TcpConfig(receive_buffer=1 << 20), TcpConfig(window_scaling=False))
    synack = sim.trace[1][2]
    assert synack.wscale is None  # B does not scale, so it sends no option (RFC 7323 §2.2)
    assert not a.wscale_enabled and a.rcv_wscale == 0 and a.snd_wscale == 0
    # unscaled: the field is capped at 65535 although the buffer is 1 MiB
    a.send(b"x", 1.0)
    seg = a.poll_segments()[0]
    assert seg.window == 0xFFFF


def test_options_absent_in_synack_when_syn_had_none():
    _a, b, sim = _open(TcpConfig(sack=False, timestamps=False, window_scaling=False), FAST)
    synack = sim.trace[1][2]
    assert synack.wscale is None and synack.timestamp is None and not synack.sack_permitted
    assert not b.connection.ts_enabled and not b.connection.sack_enabled


def test_default_mss_536_without_option():
    conn = TcpConnection(ADDR_A, ADDR_B, config=FAST, isn_secret=b"k", now=0.0)
    conn.connect(0.0)
    conn.poll_segments()
    FakePeer(conn).send(SYN | ACK, 0.01, seq=0, ack=1)
    assert conn.snd_mss == 536  # RFC 9293 §3.7.1


def test_simultaneous_open():
    cfg = FAST
    a = TcpConnection(ADDR_A, ADDR_B, config=cfg, isn_secret=b"a", now=0.0)
    b = TcpConnection(ADDR_B, ADDR_A, config=cfg, isn_secret=b"b", now=0.0)
    sim = Simulator(a, b, record=True)
    a.connect(0.0)
    b.connect(0.0)
    sim.run(stop=lambda: a.state is b.state is TcpState.ESTABLISHED)
    kinds = [(d, seg.flags) for _, d, seg, _ in sim.trace]
    assert kinds[:2] == [("a>b", SYN), ("b>a", SYN)]
    assert ("a>b", SYN | ACK) in kinds and ("b>a", SYN | ACK) in kinds  # RFC 9293 fig. 7
    assert a.snd_una == 1 and b.snd_una == 1 and a.rcv_nxt == 1 and b.rcv_nxt == 1
    assert Established() in a.poll_events() and Established() in b.poll_events()
    # and data flows
    a.send(b"hello", sim.now)
    sim.run(stop=lambda: b.readable == 5)
    assert b.receive(100, sim.now) == b"hello"


def test_syn_retransmitted_with_backoff_then_gives_up():
    cfg = TcpConfig(syn_retries=3, initial_rto=1.0)
    conn = TcpConnection(ADDR_A, ADDR_B, config=cfg, isn_secret=b"k", now=0.0)
    conn.connect(0.0)
    first = conn.poll_segments()
    times = []
    t = 0.0
    while conn.state is not TcpState.CLOSED:
        t = conn.next_timer()
        conn.handle_timer(t)
        segs = conn.poll_segments()
        if segs:
            assert segs[0].flags == SYN and segs[0].seq == first[0].seq  # same ISN
            times.append(t)
    assert times == [1.0, 3.0, 7.0]  # RTO 1 s (RFC 6298 2.1), doubling (5.5)
    assert t == 15.0
    assert Closed(CloseReason.TIMEOUT) in conn.poll_events()


def _close_run(sim, a, b, *, until=10.0):
    sim.run(until=until)
    return a.poll_events(), b.connection.poll_events()


def test_active_close_goes_through_fin_wait_and_time_wait():
    a, b, sim = _open()
    bc = b.connection
    states_a = []
    sim.hooks.append(lambda now: states_a.append(a.state))
    a.shutdown_write(sim.now)
    assert a.state is TcpState.FIN_WAIT_1
    sim.run(stop=lambda: bc.state is TcpState.CLOSE_WAIT and a.state is TcpState.FIN_WAIT_2)
    assert PeerFinished() in bc.poll_events()
    bc.shutdown_write(sim.now)
    assert bc.state is TcpState.LAST_ACK
    sim.run(stop=lambda: a.state is TcpState.TIME_WAIT)
    entered = sim.now
    sim.run(stop=lambda: bc.state is TcpState.CLOSED)
    assert Closed(CloseReason.NORMAL) in bc.poll_events()
    sim.run(until=entered + 0.4)
    assert a.state is TcpState.TIME_WAIT  # time_wait is 0.5 s
    sim.run(until=entered + 0.6)
    assert a.state is TcpState.CLOSED
    assert Closed(CloseReason.NORMAL) in a.poll_events()
    order = [s for i, s in enumerate(states_a) if i == 0 or states_a[i - 1] is not s]
    assert order == [TcpState.FIN_WAIT_1, TcpState.FIN_WAIT_2, TcpState.TIME_WAIT, TcpState.CLOSED]


def test_simultaneous_close_goes_through_closing():
    a, b, sim = _open(a_to_b=PathConfig(delay=0.05), b_to_a=PathConfig(delay=0.05))
    bc = b.connection
    seen_a, seen_b = set(), set()
    sim.hooks.append(lambda now: (seen_a.add(a.state), seen_b.add(bc.state)))
    a.shutdown_write(sim.now)
    bc.shutdown_write(sim.now)  # both FINs cross in flight
    sim.run(until=sim.now + 5)
    assert TcpState.CLOSING in seen_a and TcpState.CLOSING in seen_b
    assert TcpState.TIME_WAIT in seen_a and TcpState.TIME_WAIT in seen_b
    assert a.state is TcpState.CLOSED and bc.state is TcpState.CLOSED


def test_fin_with_data_and_close_wait_can_still_send():
    a, b, sim = _open()
    bc = b.connection
    a.send(b"request", sim.now)
    a.shutdown_write(sim.now)
    sim.run(stop=lambda: bc.state is TcpState.CLOSE_WAIT)
    assert bc.receive(100, sim.now) == b"request"
    bc.send(b"response", sim.now)  # half-close: the other direction still works
    bc.close(sim.now)
    sim.run(until=sim.now + 3)
    assert a.receive(100, sim.now) == b"response"
    assert a.state is TcpState.CLOSED and bc.state is TcpState.CLOSED


def test_time_wait_acks_a_retransmitted_fin_and_restarts_its_timer():
    conn = TcpConnection(ADDR_A, ADDR_B, config=FAST, isn_secret=b"k", now=0.0)
    conn.connect(0.0)
    conn.poll_segments()
    peer = FakePeer(conn)
    peer.send(SYN | ACK, 0.0, seq=0, ack=1)
    conn.shutdown_write(0.1)
    fin = conn.poll_segments()[0]
    assert fin.flags & FIN and peer.seq_of(fin) == 1
    peer.send(ACK, 0.2, seq=1, ack=2)
    assert conn.state is TcpState.FIN_WAIT_2
    replies = peer.send(FIN | ACK, 0.3, seq=1, ack=2)
    assert conn.state is TcpState.TIME_WAIT and peer.ack_of(replies[0]) == 2
    assert conn.next_timer() == 0.3 + 0.5
    replies = peer.send(FIN | ACK, 0.6, seq=1, ack=2)  # our ACK was lost: FIN again
    assert len(replies) == 1 and replies[0].flags == ACK and peer.ack_of(replies[0]) == 2
    assert conn.next_timer() == 0.6 + 0.5  # 2MSL restarts (RFC 9293 §3.10.7.4)
    conn.handle_timer(1.1)
    assert conn.state is TcpState.CLOSED


def test_listener_syn_flood_stays_bounded():
    listener = TcpListener(ADDR_B, config=FAST, isn_secret=b"s", backlog=8)
    for i in range(1000):
        syn = Segment(10000 + i, 80, i * 7919, 0, SYN, 65535, mss=1460)
        listener.handle_segment(("10.9.9.9", 10000 + i), syn, i * 0.001)
    assert len(listener.half_open) == 8  # oldest evicted (documented policy)
    assert listener.dropped_half_open == 992
    assert ("10.9.9.9", 10999) in listener.half_open
    assert ("10.9.9.9", 10000) not in listener.half_open
    out = listener.poll_segments()
    assert len(out) == 1000 and all(s.flags == SYN | ACK for _, s in out)
    # a legitimate client still gets through afterwards
    a = TcpConnection(ADDR_A, ADDR_B, config=FAST, isn_secret=b"a", now=2.0)
    from stack.sim import ListenerEndpoint

    ep = ListenerEndpoint(listener, ADDR_A)
    sim = Simulator(a, ep, start=2.0)
    a.connect(2.0)
    sim.run(stop=lambda: ep.connection is not None)
    assert a.state is TcpState.ESTABLISHED


def test_listener_answers_a_stray_ack_with_reset_and_ignores_rst():
    listener = TcpListener(ADDR_B, config=FAST, isn_secret=b"s")
    listener.handle_segment(ADDR_A, Segment(1, 80, 100, 5555, ACK, 100), 0.0)
    [(remote, rst)] = listener.poll_segments()
    assert remote == ADDR_A and rst.flags == RST and rst.seq == 5555  # <SEQ=SEG.ACK>
    listener.handle_segment(ADDR_A, Segment(1, 80, 100, 0, RST, 0), 0.0)
    assert listener.poll_segments() == []


def test_lost_synack_is_retransmitted_by_listener():
    drops = {"n": 0}

    def drop_first_synack(seg):
        if seg.flags == SYN | ACK and drops["n"] == 0:
            drops["n"] += 1
            return True
        return False

    a, b, sim = connection_pair(FAST, FAST, b_to_a=PathConfig(drop=drop_first_synack))
    a.connect(0.0)
    sim.run(stop=lambda: a.state is TcpState.ESTABLISHED and b.connection is not None)
    assert drops["n"] == 1 and sim.now > 1.0  # waited one (initial) RTO


V6_A = (ipaddress.ip_address("2001:db8:1::1"), 40000)
V6_B = (ipaddress.ip_address("2001:db8:1::2"), 80)


def _active(config: TcpConfig, local=V6_A, remote=V6_B) -> tuple[TcpConnection, Segment]:
    conn = TcpConnection(local, remote, config=config, isn_secret=b"k", now=0.0)
    conn.connect(0.0)
    [syn] = conn.poll_segments()
    return conn, syn


def test_the_path_mss_caps_what_is_announced_and_what_is_sent():
    """On a 1500-byte link an IPv6 segment carries 1440 bytes (40 of IPv6 header): we
    announce 1440, and a peer announcing 1460 (the IPv4 figure) does not make us send
    frames the link refuses."""
    asked = []

    def path_mss(local, remote):
        asked.append((local, remote))
        return 1440

    conn, syn = _active(TcpConfig(path_mss=path_mss))
    assert asked == [(V6_A[0], V6_B[0])] and syn.mss == 1440
    FakePeer(conn).send(SYN | ACK, 0.01, seq=0, ack=1, mss=1460)
    assert conn.state is TcpState.ESTABLISHED and conn.snd_mss == 1440
    # a passive open takes the same cap
    listener = TcpListener(V6_B, config=TcpConfig(path_mss=path_mss), isn_secret=b"k")
    listener.handle_segment(V6_A, Segment(V6_A[1], 80, 7, 0, SYN, 65535, mss=1460), 0.0)
    [(_, synack)] = listener.poll_segments()
    assert synack.mss == 1440
    # no answer (no route): the configured MSS alone
    conn, syn = _active(TcpConfig(mss=1400, path_mss=lambda local, remote: None))
    assert syn.mss == 1400


def test_the_default_send_mss_without_an_option_depends_on_the_family():
    """RFC 9293 §3.7.1: 536 for IPv4, 1220 for IPv6 when the SYN carries no MSS."""
    for local, remote, expected in ((ADDR_A, ADDR_B, 536), (V6_A, V6_B, 1220)):
        conn, _ = _active(TcpConfig(), local, remote)
        FakePeer(conn).send(SYN | ACK, 0.01, seq=0, ack=1)
        assert conn.snd_mss == expected
