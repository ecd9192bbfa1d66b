"""A join's third and fourth ACKs lost on the way (in-memory link, virtual time).

RFC 8684 §3.2: the joining host sends no data until its third ACK is acknowledged, and
repeats that ACK until it is. Linux's listener answers a repeated third ACK of a join
that it already took with an ACK at once (net/mptcp/options.c, check_fully_established),
so the join completes even when the listener has nothing to send on it; the stack as
listener ignored it, and a stack that joined gave the subflow up after its retries.

A joining Linux whose third ACK was lost repeats it *without* MP_JOIN once a DATA_FIN
of its own is pending (options.c, mptcp_established_options_mp: "DATA_FIN and TCP
shutdown take precedence"): a DSS with the DATA_FIN instead of HMAC-A. Seen in the
soak (the kernel client shuts its side down while its join's third ACK is lost on the
lossy path). Such an ACK cannot be authenticated, so the subflow is reset, as Linux
resets it (MP_TCPRST reason 1); but no HMAC failed, and it was counted as one.
"""

from __future__ import annotations

from dataclasses import dataclass

from stack.mptcp.subflow import Phase
from stack.tcp.segment import ACK, FIN, RST, SYN, Segment
from stack.tests.test_mptcp_join_queue import _pair
from stack.tests.test_mptcp_sim import CLIENT, SERVER
from stack.wire.mptcp import MPTCP_RST_EMPTCP, MpJoinAck, MpTcpRst

JOIN_PORT = CLIENT[1] + 1  # the first port `_pair` gives a join


def _pure_ack(seg: Segment) -> bool:
    return seg.flags & (SYN | FIN | RST | ACK) == ACK and not seg.payload


@dataclass
class LoseFourthAck:
    """Drops the listener's first pure ACK on the join after its SYN/ACK: the fourth ACK."""

    synack_seen: bool = False
    dropped: int = 0

    def __call__(self, seg: Segment) -> bool:
        if seg.src_port != SERVER[1] or seg.dst_port != JOIN_PORT:
            return False
        if seg.flags & SYN:
            self.synack_seen = True
            return False
        if self.synack_seen and not self.dropped and _pure_ack(seg):
            self.dropped += 1
            return True
        return False


def test_a_repeated_third_ack_is_answered_when_the_fourth_ack_was_lost() -> None:
    client, b, sim, sender, reader, up = _pair(200_000)
    server = b.msk
    assert server is not None
    lose = LoseFourthAck()
    sim.paths[1].drop = lose  # listener -> joining host
    sf = client.open_subflow(CLIENT[0], 1, SERVER[0], SERVER[1], backup=False, now=sim.now)
    assert sf is not None
    # the joining host's data waits for the fourth ACK; the listener has nothing to send
    assert sim.run(until=sim.now + 5, stop=lambda: lose.dropped == 1)
    joined = server.subflows[1]
    assert joined.phase is Phase.ESTABLISHED
    lost_at = sim.now
    assert sim.run(until=sim.now + 10, stop=lambda: sf.usable)
    # one repeated third ACK (the joining host's timer, one RTO) and its answer at once
    assert client.counters.get("MPJoinAckRetrans") == 1
    assert sim.now - lost_at <= 2 * sf.tcp.rto.rto
    sim.hooks.append(sender)
    done = sim.run(until=sim.now + 60, stop=lambda: bool(client.finished and server.finished))
    assert done, server.describe()
    assert bytes(reader.received) == up
    assert sf.counters.bytes_sent > 0 and not sf.error


@dataclass
class ThirdAckWithoutJoin:
    """The joining host's first third ACK is lost; every later one arrives without
    MP_JOIN (what Linux sends while its DATA_FIN is pending)."""

    seen: int = 0

    def lose(self, seg: Segment) -> bool:
        if seg.src_port == JOIN_PORT and _pure_ack(seg) and self._is_third_ack(seg):
            self.seen += 1
            return self.seen == 1
        return False

    def strip(self, seg: Segment) -> bool:
        return seg.src_port == JOIN_PORT and self._is_third_ack(seg)

    @staticmethod
    def _is_third_ack(seg: Segment) -> bool:
        return any(isinstance(o, MpJoinAck) for o in seg.extra_options)


def test_a_third_ack_without_mp_join_resets_the_join_without_an_hmac_failure() -> None:
    client, b, sim, sender, reader, up = _pair(200_000)
    server = b.msk
    assert server is not None
    peer = ThirdAckWithoutJoin()
    sim.paths[0].drop = peer.lose  # joining host -> listener
    b.strip = peer.strip
    resets: list[Segment] = []

    def watch(seg: Segment) -> bool:
        if seg.dst_port == JOIN_PORT and seg.flags & RST:
            resets.append(seg)
        return False

    sim.paths[1].drop = watch
    sf = client.open_subflow(CLIENT[0], 1, SERVER[0], SERVER[1], backup=False, now=sim.now)
    assert sf is not None
    assert sim.run(until=sim.now + 10, stop=lambda: bool(resets))
    assert peer.seen == 2  # the lost one, then the one without MP_JOIN
    # reset as Linux resets it: MP_TCPRST reason 1 (MPTCP-specific error), not transient
    (rst,) = resets
    (reason,) = [o for o in rst.extra_options if isinstance(o, MpTcpRst)]
    assert reason.reason == MPTCP_RST_EMPTCP and not reason.transient
    assert server.counters.get("MPJoinAckMissing") == 1
    assert "MPJoinAckHMacFailure" not in server.counters  # no HMAC was checked, none failed
    (gone,) = [s for s in server.every_subflow() if not s.initial]
    assert gone.error == "third ACK without MP_JOIN (no HMAC-A)"
    # the connection goes on over its first subflow
    sim.hooks.append(sender)
    done = sim.run(until=sim.now + 60, stop=lambda: bool(client.finished and server.finished))
    assert done, server.describe()
    assert bytes(reader.received) == up
