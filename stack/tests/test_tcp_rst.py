"""Resets and blind-attack defences: RFC 9293 §3.10.7, RFC 5961 (challenge ACKs),
RFC 7323 PAWS."""

from __future__ import annotations

import pytest

from stack.sim import ADDR_A, ADDR_B, FakePeer
from stack.tcp import (
    ACK,
    FIN,
    RST,
    SYN,
    Closed,
    CloseReason,
    Reset,
    Segment,
    TcpConfig,
    TcpConnection,
    TcpState,
    reset_for,
)

CFG = TcpConfig(min_rto=0.2, time_wait=0.5, challenge_ack_limit=5)


def established(config: TcpConfig = CFG, **synack_options):
    conn = TcpConnection(ADDR_A, ADDR_B, config=config, isn_secret=b"k", now=0.0)
    conn.connect(0.0)
    conn.poll_segments()
    peer = FakePeer(conn)
    synack_options.setdefault("mss", 1460)
    peer.send(SYN | ACK, 0.01, seq=0, ack=1, **synack_options)
    conn.poll_events()
    return conn, peer


def test_rst_with_exact_sequence_resets():
    conn, peer = established()
    assert peer.send(RST, 0.1, seq=1, ack=0) == []
    assert conn.state is TcpState.CLOSED
    assert conn.poll_events() == [Reset(by_peer=True), Closed(CloseReason.RESET)]


def test_rst_in_window_but_not_exact_gets_challenge_ack():
    conn, peer = established()
    replies = peer.send(RST, 0.1, seq=1000, ack=0)
    assert conn.state is TcpState.ESTABLISHED
    assert len(replies) == 1 and replies[0].flags == ACK  # RFC 5961 §3.2
    assert peer.ack_of(replies[0]) == 1 and peer.seq_of(replies[0]) == 1
    assert conn.stats.TCPChallengeACK == 1


def test_rst_out_of_window_is_ignored_silently():
    conn, peer = established()
    assert peer.send(RST, 0.1, seq=10_000_000, ack=0) == []
    assert peer.send(RST, 0.1, seq=-5, ack=0) == []
    assert conn.state is TcpState.ESTABLISHED


def test_challenge_acks_are_rate_limited():
    _conn, peer = established()
    answered = sum(len(peer.send(RST, 0.1 + i * 0.001, seq=500 + i, ack=0)) for i in range(50))
    assert answered == 5  # challenge_ack_limit per second (RFC 5961 §7)
    assert len(peer.send(RST, 1.2, seq=700, ack=0)) == 1  # a new second


def test_syn_in_established_gets_challenge_ack_not_reset():
    conn, peer = established()
    for seq in (1, 5000, 99999999):  # whatever the sequence number (RFC 5961 §4.2)
        replies = peer.send(SYN, 0.2, seq=seq, ack=0)
        assert [s.flags for s in replies] == [ACK]
    assert conn.state is TcpState.ESTABLISHED


def test_ack_beyond_snd_max_is_answered_and_dropped():
    conn, peer = established()
    conn.send(b"abc", 0.1)
    conn.poll_segments()
    replies = peer.send(ACK, 0.2, seq=1, ack=100, payload=b"zz")
    assert [s.flags for s in replies] == [ACK]
    assert conn.snd_una == 1 and conn.readable == 0  # whole segment dropped


def test_ack_too_old_is_dropped_with_challenge_ack():
    conn, peer = established()
    # below snd_una - max_snd_wnd (RFC 5961 §5.2)
    replies = peer.send(ACK, 0.2, seq=1, ack=1 - 70000, payload=b"zz")
    assert [s.flags for s in replies] == [ACK] and conn.readable == 0
    assert conn.stats.TCPChallengeACK == 1


def test_unacceptable_segment_gets_ack_not_reset():
    _conn, peer = established()
    replies = peer.send(ACK, 0.2, seq=10_000_000, ack=1, payload=b"data")
    assert [s.flags for s in replies] == [ACK] and peer.ack_of(replies[0]) == 1


def test_never_reset_a_reset():
    _conn, peer = established()
    # to a connection: unacceptable RSTs produce nothing
    for seq in (10_000_000, -100):
        assert peer.send(RST | ACK, 0.2, seq=seq, ack=1) == []
    # to no connection (RFC 9293 §3.10.7.1)
    assert reset_for(Segment(1, 2, 100, 200, RST, 0)) is None
    assert reset_for(Segment(1, 2, 100, 200, RST | ACK, 0)) is None


def test_reset_for_closed_port_follows_rfc():
    syn = Segment(1234, 80, 1000, 0, SYN, 100)
    r = reset_for(syn)
    assert r is not None and r.flags == RST | ACK and r.seq == 0 and r.ack == 1001
    data = Segment(1234, 80, 0xFFFFFFFF, 0, FIN, 100, payload=b"ab")
    r = reset_for(data)
    assert r is not None and r.ack == 2  # SEG.SEQ + SEG.LEN wraps
    ack = Segment(1234, 80, 1000, 777, ACK, 100, payload=b"x")
    r = reset_for(ack)
    assert r is not None and r.flags == RST and r.seq == 777 and r.src_port == 80


def test_syn_sent_rejects_bad_ack_with_reset_and_accepts_refusal():
    conn = TcpConnection(ADDR_A, ADDR_B, config=CFG, isn_secret=b"k", now=0.0)
    conn.connect(0.0)
    conn.poll_segments()
    peer = FakePeer(conn)
    replies = peer.send(SYN | ACK, 0.01, seq=0, ack=55)  # acks something never sent
    assert [s.flags for s in replies] == [RST] and replies[0].seq == (conn.iss + 55) & 0xFFFFFFFF
    assert conn.state is TcpState.SYN_SENT
    assert peer.send(RST, 0.02, seq=0, ack=0) == []  # RST without ACK: ignored
    assert conn.state is TcpState.SYN_SENT
    peer.send(RST | ACK, 0.03, seq=0, ack=1)  # "connection refused"
    assert conn.state is TcpState.CLOSED
    assert Reset(by_peer=True) in conn.poll_events()


def test_abort_sends_reset_and_close_with_unread_data_aborts():
    conn, peer = established()
    peer.send(ACK, 0.1, seq=1, ack=1, payload=b"unread")
    conn.poll_segments()
    conn.close(0.2)  # unread data: RST, not FIN (RFC 2525 §2.17)
    [rst] = conn.poll_segments()
    assert rst.flags == RST and peer.seq_of(rst) == 1
    assert conn.state is TcpState.CLOSED
    assert conn.poll_events()[-1] == Closed(CloseReason.ABORTED)


def test_new_data_after_close_gets_reset_and_old_data_does_not():
    """RFC 1122 §4.2.2.13: new data after a full close is answered with RST (Linux's
    TCPAbortOnData in FIN_WAIT1/2); a retransmission of what was read is only ACKed."""
    conn, peer = established()
    peer.send(ACK, 0.1, seq=1, ack=1, payload=b"read")
    assert conn.receive(100, 0.1) == b"read"
    conn.poll_segments()
    conn.close(0.2)
    assert any(seg.flags & FIN for seg in conn.poll_segments())
    assert conn.state is TcpState.FIN_WAIT_1
    [ack] = peer.send(ACK, 0.3, seq=1, ack=1, payload=b"read")  # a duplicate: ACKed
    assert ack.flags & ACK and not ack.flags & RST and conn.state is TcpState.FIN_WAIT_1
    [rst] = peer.send(ACK, 0.4, seq=5, ack=2, payload=b"more")  # new: nobody will read it
    assert rst.flags & RST
    assert conn.state is TcpState.CLOSED and conn.stats.TCPAbortOnData == 1
    assert conn.poll_events()[-1] == Closed(CloseReason.ABORTED)


def test_half_close_still_receives():
    """shutdown_write() is not close(): the peer may go on sending (RFC 9293 §3.10.4)."""
    conn, peer = established()
    conn.shutdown_write(0.1)
    conn.poll_segments()
    peer.send(ACK, 0.2, seq=1, ack=2, payload=b"still wanted")
    assert conn.receive(100, 0.2) == b"still wanted"
    assert conn.state is TcpState.FIN_WAIT_2 and conn.stats.TCPAbortOnData == 0


def test_paws_drops_old_timestamp():
    conn, peer = established(timestamp=(1000, 0))
    peer.send(ACK, 0.1, seq=1, ack=1, payload=b"new", timestamp=(1010, 0))
    replies = peer.send(ACK, 0.2, seq=4, ack=1, payload=b"old", timestamp=(900, 0))
    assert conn.readable == 3 and conn.stats.TCPPAWSDrop == 1
    assert replies and replies[-1].flags == ACK  # an ACK, never a reset (RFC 7323 §5.3)


@pytest.mark.parametrize("state_setup", ["fin_wait_2", "close_wait"])
def test_rst_in_other_synchronized_states(state_setup):
    conn, peer = established()
    if state_setup == "fin_wait_2":
        conn.shutdown_write(0.1)
        conn.poll_segments()
        peer.send(ACK, 0.2, seq=1, ack=2)
        assert conn.state is TcpState.FIN_WAIT_2
    else:
        peer.send(FIN | ACK, 0.2, seq=1, ack=1)
        assert conn.state is TcpState.CLOSE_WAIT
    nxt = 1 if state_setup == "fin_wait_2" else 2
    assert peer.send(RST, 0.3, seq=nxt + 10, ack=0)[0].flags == ACK  # challenge
    peer.send(RST, 0.3, seq=nxt, ack=0)
    assert conn.state is TcpState.CLOSED
