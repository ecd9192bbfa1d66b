"""A SYN/ACK that the option observer refuses (the MPTCP layer: an MP_JOIN SYN/ACK whose
HMAC-B fails, RFC 8684 §3.2) gets a RST and nothing else: the subflow never becomes
established, and no ACK (which would carry a third ACK for a refused join) goes out."""

from __future__ import annotations

from stack.sim import ADDR_A, ADDR_B, FakePeer
from stack.tcp import ACK, RST, SYN, Segment, TcpConfig, TcpConnection, TcpState


def test_a_synack_refused_by_the_observer_gets_only_a_rst() -> None:
    conn = TcpConnection(ADDR_A, ADDR_B, config=TcpConfig(), isn_secret=b"k", now=0.0)
    refused: list[Segment] = []

    def observer(seg: Segment, rel: int) -> None:
        refused.append(seg)
        conn.abort(0.01)  # what MptcpConnection._on_join_synack does on a bad HMAC

    conn.option_observer = observer
    conn.connect(0.0)
    conn.poll_segments()
    peer = FakePeer(conn)
    replies = peer.send(SYN | ACK, 0.01, seq=0, ack=1, mss=1460)
    assert len(refused) == 1 and conn.state is TcpState.CLOSED
    [rst] = replies
    assert rst.flags == RST and peer.seq_of(rst) == 1  # at the SYN/ACK's ack (RFC 9293)
