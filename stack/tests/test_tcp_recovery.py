"""Loss recovery: RTO (RFC 6298) with backoff and give-up, fast retransmit and NewReno
(RFC 5681, RFC 6582), SACK on both sides (RFC 2018)."""

from __future__ import annotations

from stack.sim import ADDR_A, ADDR_B, FakePeer
from stack.tcp import (
    ACK,
    SYN,
    Closed,
    CloseReason,
    TcpConfig,
    TcpConnection,
    TcpState,
)

MSS = 1000


def established(*, sack: bool = False, max_retries: int = 15, **cfg):
    config = TcpConfig(
        mss=MSS, min_rto=0.2, timestamps=False, sack=sack, max_retries=max_retries, **cfg
    )
    conn = TcpConnection(ADDR_A, ADDR_B, config=config, isn_secret=b"k", now=0.0)
    conn.connect(0.0)
    conn.poll_segments()
    peer = FakePeer(conn)
    # SYN-ACK after 10 ms: first RTT sample, RTO = max(0.01 + 4 * 0.005, min_rto) = 0.2
    peer.send(SYN | ACK, 0.01, seq=0, ack=1, mss=MSS, wscale=7, sack_permitted=sack)
    peer.send(ACK, 0.02, seq=1, ack=1)  # the first scaled window (a SYN's is unscaled)
    conn.poll_events()
    return conn, peer


def data_seqs(peer, segs):
    return [peer.seq_of(s) for s in segs if s.payload]


def test_rto_first_timeout_backoff_and_give_up():
    conn, _peer = established(max_retries=3)
    conn.send(b"x" * 500, 1.0)
    [first] = conn.poll_segments()
    assert conn.next_timer() == 1.0 + 0.2
    times = []
    while conn.state is not TcpState.CLOSED:
        t = conn.next_timer()
        conn.handle_timer(t)
        segs = conn.poll_segments()
        if segs:
            assert segs[0].seq == first.seq and segs[0].payload == first.payload
            times.append(round(t, 6))
    # each expiry doubles the RTO (RFC 6298 5.5); the 4th expiry gives up
    assert times == [1.2, 1.6, 2.4]
    assert round(t, 6) == 4.0
    assert conn.poll_events()[-1] == Closed(CloseReason.TIMEOUT)
    assert conn.cc.cwnd == MSS  # loss window after a timeout (RFC 5681 §3.1)


def test_rto_backoff_resets_when_data_is_acknowledged():
    conn, peer = established()
    conn.send(b"x" * 500, 1.0)
    conn.poll_segments()
    conn.handle_timer(1.2)
    conn.handle_timer(1.6)
    assert conn.rto.backoff == 2
    peer.send(ACK, 1.7, seq=1, ack=501)
    assert conn.rto.backoff == 0 and conn.retries == 0 and conn.next_timer() is None


def test_karn_no_rtt_sample_from_retransmitted_segment():
    conn, peer = established()
    srtt = conn.rto.srtt
    conn.send(b"x" * 500, 1.0)
    conn.poll_segments()
    conn.handle_timer(1.2)  # retransmitted
    peer.send(ACK, 5.0, seq=1, ack=501)  # ambiguous: must not be sampled
    assert conn.rto.srtt == srtt


def _send_window(conn, peer, n, now=1.0):
    conn.send(b"d" * (n * MSS), now)
    segs = conn.poll_segments()
    assert data_seqs(peer, segs) == [1 + i * MSS for i in range(n)]
    return segs


def test_fast_retransmit_on_third_dupack_without_timeout():
    conn, peer = established()
    _send_window(conn, peer, 10)
    for i in range(2):
        assert peer.send(ACK, 1.05 + i * 0.001, seq=1, ack=1) == []  # 1st, 2nd dupack
    out = peer.send(ACK, 1.053, seq=1, ack=1)
    assert data_seqs(peer, out) == [1]  # the 3rd: retransmit the first unacked segment
    assert conn.in_recovery and conn.stats.TCPFastRetrans == 1
    assert conn.cc.ssthresh == 5 * MSS  # FlightSize / 2 (RFC 5681 eq. 4)
    assert conn.cc.cwnd == 5 * MSS + 3 * MSS
    peer.send(ACK, 1.07, seq=1, ack=1 + 10 * MSS)  # full ACK
    assert not conn.in_recovery and conn.cc.cwnd <= conn.cc.ssthresh
    assert conn.stats.TCPTimeouts == 0


def test_newreno_partial_ack_retransmits_next_hole_and_stays_in_recovery():
    conn, peer = established()
    _send_window(conn, peer, 10)  # segments 1 and 4 (seq 1 and 3001) are lost
    for i in range(3):
        out = peer.send(ACK, 1.05 + i * 0.001, seq=1, ack=1)
    assert data_seqs(peer, out) == [1]
    recover = conn.recover
    out = peer.send(ACK, 1.08, seq=1, ack=1 + 3 * MSS)  # partial: covers up to the hole
    assert data_seqs(peer, out)[0] == 1 + 3 * MSS  # RFC 6582 §3.2 step 3: next hole at once
    assert conn.in_recovery and conn.recover == recover and conn.stats.TCPPartialAck == 1
    peer.send(ACK, 1.1, seq=1, ack=conn.snd_max)
    assert not conn.in_recovery and conn.stats.TCPTimeouts == 0


def test_no_second_fast_retransmit_for_dupacks_after_timeout():
    conn, peer = established()
    _send_window(conn, peer, 4)
    conn.handle_timer(conn.next_timer())  # RTO: recover = snd_max (RFC 6582 §3.2 step 4)
    conn.poll_segments()
    for i in range(3):
        peer.send(ACK, 1.5 + i * 0.001, seq=1, ack=1)
    assert not conn.in_recovery and conn.stats.TCPFastRetrans == 0


def test_sender_skips_sacked_segments():
    conn, peer = established(sack=True)
    segs = _send_window(conn, peer, 10)

    def sack(*blocks):  # relative to the connection's ISN
        return tuple(((conn.iss + a) & 0xFFFFFFFF, (conn.iss + b) & 0xFFFFFFFF) for a, b in blocks)

    # segments 1 and 5 lost; the receiver SACKs the rest as it arrives
    retransmitted = []
    arrived = [2, 3, 4, 6, 7, 8, 9, 10]
    blocks = []
    for k, n in enumerate(arrived):
        start = 1 + (n - 1) * MSS
        blocks.append((start, start + MSS))
        merged = _merge(blocks)
        out = peer.send(ACK, 1.05 + k * 0.001, seq=1, ack=1, sack_blocks=sack(*merged[:3]))
        retransmitted += data_seqs(peer, out)
    assert 1 in retransmitted and 1 + 4 * MSS in retransmitted
    sacked = {1 + (n - 1) * MSS for n in arrived}
    assert not sacked & set(retransmitted)  # nothing the receiver holds is sent again
    assert conn.stats.TCPTimeouts == 0
    assert len(segs) == 10


def _merge(blocks):
    out = []
    for a, b in sorted(blocks):
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def test_receiver_generates_sack_blocks_most_recent_first():
    conn, peer = established(sack=True)

    def blocks(seg):
        return [
            ((a - peer.iss) & 0xFFFFFFFF, (b - peer.iss) & 0xFFFFFFFF) for a, b in seg.sack_blocks
        ]

    out = peer.send(ACK, 1.0, seq=1, ack=1, payload=b"a" * 100)
    assert not out or not out[-1].sack_blocks
    [ack] = peer.send(ACK, 1.01, seq=201, ack=1, payload=b"c" * 100)
    assert peer.ack_of(ack) == 101 and blocks(ack) == [(201, 301)]
    [ack] = peer.send(ACK, 1.02, seq=401, ack=1, payload=b"e" * 100)
    assert blocks(ack) == [(401, 501), (201, 301)]  # RFC 2018 §4: newest first
    [ack] = peer.send(ACK, 1.03, seq=301, ack=1, payload=b"d" * 100)
    assert blocks(ack) == [(201, 501)]
    [ack] = peer.send(ACK, 1.04, seq=101, ack=1, payload=b"b" * 100)  # fills the hole
    assert peer.ack_of(ack) == 501 and not ack.sack_blocks  # immediately, no blocks left
    assert (
        conn.receive(1000, 1.05) == b"a" * 100 + b"b" * 100 + b"c" * 100 + b"d" * 100 + b"e" * 100
    )


def test_tail_loss_probe_resends_the_last_segment_after_two_srtt():
    # RFC 8985 §7: a flight's tail is lost and no duplicate ACK comes; after PTO = 2 SRTT
    # (20 ms here, not the 200 ms RTO) the last segment goes again, and the ACK it draws
    # (with SACK) lets recovery repair the rest; one probe per flight, then the RTO
    conn, peer = established(sack=True)
    conn.send(b"x" * 5 * MSS, 1.0)
    assert len(data_seqs(peer, conn.poll_segments())) == 5
    assert conn.rto.srtt == 0.01 and conn.rto_deadline == 1.2
    probe_at = conn.next_timer()
    assert probe_at is not None and abs(probe_at - 1.02) < 1e-9
    conn.handle_timer(probe_at)
    [probe] = conn.poll_segments()
    assert peer.seq_of(probe) == 1 + 4 * MSS and len(probe.payload) == MSS
    assert conn.stats.TCPLossProbes == 1 and conn.retries == 0 and not conn.in_recovery
    rto_at = conn.next_timer()
    assert rto_at is not None and abs(rto_at - (probe_at + 0.2)) < 1e-9
    # the probe's ACK: everything but the first segment arrived: SACK recovery resends it
    block = ((conn.iss + 1 + MSS) & 0xFFFFFFFF, (conn.iss + 1 + 5 * MSS) & 0xFFFFFFFF)
    answer = peer.send(ACK, probe_at + 0.01, seq=1, ack=1, sack_blocks=(block,))
    assert data_seqs(peer, answer) == [1] and conn.in_recovery


def test_no_tail_loss_probe_without_sack():
    conn, _peer = established(sack=False)
    conn.send(b"x" * 5 * MSS, 1.0)
    conn.poll_segments()
    assert conn.next_timer() == 1.2  # the RTO alone


def test_a_full_local_queue_holds_back_new_data_but_never_a_retransmission():
    """The local-queue limit (`queue_room`, as Linux's TSQ) holds back new data only.
    An RTO's retransmission held back sent nothing while the timer backed off, and a
    lossy path whose interface other connections kept full stalled for seconds."""
    conn, _peer = established()
    room = [1 << 20]
    conn.queue_room = lambda: room[0]
    conn.send(b"x" * 500, 1.0)
    [first] = conn.poll_segments()
    room[0] = 0  # the interface's queue is full from now on (other connections)
    conn.send(b"y" * 500, 1.01)
    assert conn.poll_segments() == []  # new data waits for the queue to drain
    conn.handle_timer(conn.next_timer())  # the RTO: the lost segment goes again at once
    [again] = conn.poll_segments()
    assert again.seq == first.seq and again.payload == first.payload
