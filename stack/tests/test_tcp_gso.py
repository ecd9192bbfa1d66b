"""Super-segments (GSO/TSO) and batched input of the TCP machine, on a hand-driven peer
and on the simulated link."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from stack.sim import ADDR_A, ADDR_B, FakePeer, PathConfig, StreamApp, connection_pair, digest
from stack.tcp import ACK, FIN, PSH, SYN, Segment, TcpConfig, TcpConnection
from stack.tcp_host import GSO_MAX_SIZE, option_area
from stack.tests.test_tcp_flow import MSS, receiver
from stack.wire.mptcp import Dss
from stack.wire.tcp import (
    MAX_OPTIONS_LENGTH,
    MaxSegmentSize,
    Sack,
    SackPermitted,
    Timestamps,
    WindowScale,
    build_options,
)

GSO = 64 * MSS


def sender(window: int = 65535, *, gso: int = GSO, **cfg) -> tuple[TcpConnection, FakePeer]:
    """An established connection (no timestamps: the payload MSS is MSS) with a peer
    window of `window` bytes (scale 4) and super-segments of up to `gso` bytes."""
    config = TcpConfig(mss=MSS, timestamps=False, gso_max_size=gso, **cfg)
    conn = TcpConnection(ADDR_A, ADDR_B, config=config, isn_secret=b"k", now=0.0)
    conn.connect(0.0)
    conn.poll_segments()
    peer = FakePeer(conn)
    peer.send(SYN | ACK, 0.01, seq=0, ack=1, mss=MSS, wscale=4, window=65535, sack_permitted=True)
    peer.send(ACK, 0.02, seq=1, ack=1, window=window >> 4)
    conn.poll_events()
    return conn, peer


def sizes(segments: list[Segment]) -> list[int]:
    return [len(s.payload) for s in segments]


def test_the_initial_window_leaves_in_one_super_segment() -> None:
    conn, _ = sender(window=1 << 20)
    conn.send(b"x" * 100 * MSS, 1.0)
    [seg] = conn.poll_segments()
    assert len(seg.payload) == 10 * MSS == conn.cc.cwnd  # RFC 6928 IW10, one syscall


def test_super_segments_are_bounded_by_gso_max_size_and_stay_full_sized() -> None:
    conn, _ = sender(window=1 << 20, gso=5 * MSS + 300)
    conn.cc.cwnd = 1 << 20
    conn.send(b"x" * (12 * MSS + 7), 1.0)
    # 5.3 MSS of room per segment: 5 full pieces each, the tail (2 MSS + 7) at the end
    assert sizes(conn.poll_segments()) == [5 * MSS, 5 * MSS, 2 * MSS + 7]


def test_cwnd_bounds_a_super_segment_to_whole_pieces() -> None:
    conn, peer = sender(window=1 << 20)
    conn.cc.cwnd = 7 * MSS + 500
    conn.send(b"x" * 50 * MSS, 1.0)
    assert sizes(conn.poll_segments()) == [7 * MSS]  # not 7.5: the half piece waits
    # an ACK of 3 MSS opens 3.5 MSS (+ the slow-start increase): whole pieces again
    conn.handle_segment(peer.segment(ACK, seq=1, ack=1 + 3 * MSS, window=(1 << 20) >> 4), 1.1)
    out = conn.poll_segments()
    assert all(n % MSS == 0 for n in sizes(out))
    assert conn.snd_max - conn.snd_una <= conn.cc.cwnd


def test_peer_window_bounds_a_super_segment() -> None:
    conn, _ = sender(window=24 * MSS)
    conn.cc.cwnd = 1 << 20
    conn.send(b"x" * 50 * MSS, 1.0)
    assert sizes(conn.poll_segments()) == [24 * MSS]


def test_segment_limit_ends_a_super_segment_exactly_at_a_mapping_end() -> None:
    conn, _ = sender(window=1 << 20)
    conn.cc.cwnd = 1 << 20
    ends = [1 + 2500, 1 + 2500 + 30_000, 1 + 100_000]  # relative ends of three mappings
    conn.segment_limit = lambda rel: min(e for e in ends if e > rel) - rel
    seen: list[tuple[int, int]] = []
    conn.option_provider = lambda seg, rel: seen.append((rel, len(seg.payload)))
    conn.send(b"x" * 40_000, 1.0)
    out = conn.poll_segments()
    assert sizes(out) == [2500, 30_000, 7500]  # never across a mapping end
    # the provider ran once per super-segment, with the sequence of its first byte
    assert seen == [(1, 2500), (2501, 30_000), (32_501, 7500)]


def test_retransmissions_never_cross_a_mapping_end() -> None:
    """A retransmission that starts inside a mapping (the peer acknowledged a piece of a
    super-segment) stops at `segment_limit` as new data does, in SACK recovery and after
    an RTO: an MPTCP mapping must never be cut across."""
    conn, peer = sender(window=1 << 20)
    conn.cc.cwnd = 1 << 20
    ends = list(range(1 + 2500, 1 + 60_000, 2500))  # mappings of 2500 bytes: 1.7 MSS
    conn.segment_limit = lambda rel: min(e for e in ends if e > rel) - rel
    conn.send(b"x" * 50_000, 1.0)
    first = conn.poll_segments()
    high = first[-1].seq + len(first[-1].payload)
    # the first piece arrived, the rest of the first mapping did not, the end did
    for dup in range(4):
        block = ((conn.iss + 25_001) & 0xFFFFFFFF, high)
        ack = peer.segment(ACK, seq=1, ack=1 + MSS, window=(1 << 20) >> 4, sack_blocks=(block,))
        conn.handle_segment(ack, 1.1 + dup / 100)
    recovery = conn.poll_segments()
    conn.handle_timer(conn.next_timer() or 5.0)  # and an RTO: go-back-N from snd_una
    after_rto = conn.poll_segments()
    assert peer.seq_of(recovery[0]) == 1 + MSS and peer.seq_of(after_rto[0]) == 1 + MSS
    for seg in first + recovery + after_rto:
        start = peer.seq_of(seg)
        if seg.payload:
            assert len(seg.payload) <= min(e for e in ends if e > start) - start, (start, seg)


def test_a_mapping_tail_goes_out_at_once_with_data_in_flight() -> None:
    """A sub-MSS segment that ends a mapping is not held back by sender SWS avoidance
    (nor Nagle) while data is in flight: held until every byte is acknowledged, each
    64 KB mapping cost a round trip (MPTCP crawled at ~64 KB per RTT)."""
    conn, _ = sender(window=1 << 20, gso=0, nodelay=False)
    conn.cc.cwnd = 1 << 20
    ends = [1 + 2 * MSS + 100, 1 + 10 * MSS]  # the first mapping ends 100 bytes past 2 MSS
    conn.segment_limit = lambda rel: min(e for e in ends if e > rel) - rel
    conn.send(b"x" * 10 * MSS, 1.0)
    # the last partial segment ends the data, not a mapping: Nagle still holds it
    assert sizes(conn.poll_segments()) == [MSS, MSS, 100, *[MSS] * 7]


def test_fin_rides_on_the_last_super_segment() -> None:
    conn, peer = sender(window=1 << 20)
    conn.cc.cwnd = 0  # hold the data back until the FIN is queued too
    conn.send(b"x" * 4 * MSS, 1.0)
    conn.shutdown_write(1.0)
    assert conn.poll_segments() == []
    conn.cc.cwnd = 10 * MSS
    conn.handle_segment(peer.segment(ACK, seq=1, ack=1, window=(1 << 20) >> 4), 1.1)
    [seg] = conn.poll_segments()
    assert len(seg.payload) == 4 * MSS and seg.flags & FIN and seg.flags & PSH


def test_without_gso_segments_are_one_mss() -> None:
    conn, _ = sender(window=1 << 20, gso=0)
    conn.send(b"x" * 4 * MSS, 1.0)
    assert sizes(conn.poll_segments()) == [MSS] * 4


def test_retransmission_stops_at_sacked_bytes() -> None:
    """Go-back-N after a timeout resends whole super-segments, but never beyond what
    was sent before the SACKed block."""
    conn, peer = sender(window=1 << 20, min_rto=0.2)
    conn.cc.cwnd = 1 << 20
    conn.send(b"x" * 20 * MSS, 1.0)
    conn.poll_segments()
    # the peer has [5, 10) MSS: one SACK block, then the RTO
    sack = ((peer.conn.iss + 1 + 5 * MSS) & 0xFFFFFFFF, (peer.conn.iss + 1 + 10 * MSS) & 0xFFFFFFFF)
    conn.handle_segment(peer.segment(ACK, seq=1, ack=1, window=4096, sack_blocks=(sack,)), 1.01)
    conn.poll_segments()
    conn.cc.cwnd = 1 << 20
    conn.snd_nxt = conn.snd_una  # as the RTO does, keeping the scoreboard for this check
    conn._output(1.5)
    out = conn.poll_segments()
    assert (peer.seq_of(out[0]), len(out[0].payload)) == (1, 5 * MSS)


# ---------------------------------------------------------------------- batched input


def test_a_batch_of_in_order_segments_gets_one_stretch_ack() -> None:
    conn, peer = receiver()
    batch = [peer.segment(ACK, seq=1 + i * MSS, ack=1, payload=b"d" * MSS) for i in range(40)]
    conn.handle_segments(batch, 1.0)
    [ack] = conn.poll_segments()
    assert peer.ack_of(ack) == 1 + 40 * MSS
    assert conn.readable == 40 * MSS and conn.stats.InSegs == 41


def test_out_of_order_segments_in_a_batch_each_get_their_duplicate_ack() -> None:
    conn, peer = receiver()
    batch = [peer.segment(ACK, seq=1, ack=1, payload=b"a" * MSS)]
    batch += [peer.segment(ACK, seq=1 + i * MSS, ack=1, payload=b"c" * MSS) for i in (2, 3, 4)]
    conn.handle_segments(batch, 1.0)
    acks = conn.poll_segments()
    # three duplicate ACKs of 1 + MSS, for a peer that counts them (RFC 5681 §3.2)
    assert [peer.ack_of(a) for a in acks] == [1 + MSS] * 3


def test_a_single_segment_batch_behaves_as_handle_segment() -> None:
    conn, peer = receiver()
    conn.handle_segments([peer.segment(ACK, seq=1, ack=1, payload=b"x" * MSS)], 1.0)
    assert conn.poll_segments() == []  # delayed ACK, as for handle_segment
    assert conn.next_timer() == 1.0 + conn.config.delayed_ack


def test_default_buffers_do_not_limit_one_fast_flow() -> None:
    config = TcpConfig()
    assert config.receive_buffer >= 4 << 20 and config.send_buffer >= 4 << 20
    assert config.wanted_wscale() == 7


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 1000), loss=st.sampled_from([0.0, 0.01, 0.05]))
def test_bulk_transfer_with_super_segments_arrives_intact(seed: int, loss: float) -> None:
    """Both ends send super-segments over a lossy, reordering link; every byte arrives."""
    config = TcpConfig(min_rto=0.2, time_wait=0.5, gso_max_size=GSO_MAX_SIZE)
    path = PathConfig(rate=50e6, loss=loss, reorder=0.01)
    a, b, sim = connection_pair(config, config, a_to_b=path, b_to_a=path, seed=seed, record=True)
    data_ab, data_ba = bytes(range(256)) * 1200, bytes(range(255, -1, -1)) * 900
    app_a, app_b = StreamApp(a, data_ab), StreamApp(lambda: b.connection, data_ba)
    sim.hooks += [app_a, app_b]
    a.connect(0.0)
    sim.run(until=600.0)
    assert digest(app_b.received) == digest(data_ab)
    assert digest(app_a.received) == digest(data_ba)
    assert max(len(seg.payload) for _, _, seg, _ in sim.trace) > a.payload_mss


# ---------------------------------------------------------------------- option encoding

_options = st.fixed_dictionaries(
    {
        "mss": st.none() | st.integers(0, 0xFFFF),
        "wscale": st.none() | st.integers(0, 14),
        "sack_permitted": st.booleans(),
        "timestamp": st.none() | st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
        "sack_blocks": st.lists(
            st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), max_size=4
        ).map(tuple),
        "dss": st.booleans(),
    }
)


@given(_options)
def test_option_area_is_what_build_options_gives(fields: dict) -> None:
    dss = fields.pop("dss")
    seg = Segment(1, 2, 3, 4, ACK, 5, **fields)
    if dss:
        # a long DSS: with timestamps and SACK blocks it overflows the 40 bytes
        seg.extra_options = (
            Dss(data_ack=1 << 40, dsn=1 << 50, subflow_seq=7, data_level_length=1000,
                checksum=0x1234, data_ack_64=True, dsn_64=True),
        )  # fmt: skip
    options: list = []
    if seg.mss is not None:
        options.append(MaxSegmentSize(seg.mss))
    if seg.sack_permitted:
        options.append(SackPermitted())
    if seg.timestamp is not None:
        options.append(Timestamps(*seg.timestamp))
    if seg.wscale is not None:
        options.append(WindowScale(seg.wscale))
    if seg.sack_blocks:
        options.append(Sack(seg.sack_blocks))
    options.extend(seg.extra_options)
    expected = build_options(options).data if options else b""
    area = option_area(seg)
    assert area == expected and len(area) <= MAX_OPTIONS_LENGTH and len(area) % 4 == 0
