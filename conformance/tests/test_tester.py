"""The tester without namespaces: its frame parser (IPv4 and IPv6 TCP segments with MPTCP
options come out the same, and anything else is None), and `expect` against the strict
`expect_next` on segments already received."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import ICMPv6ND_NS, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from conformance import tester as tester_module
from conformance.model import Outcome
from conformance.tester import Segment, Subflow, parse_frame
from stack.wire.mptcp import MpJoinSyn
from stack.wire.scapy_bridge import to_scapy_option
from stack.wire.tcp import ACK, FIN, RST, SYN

JOIN = MpJoinSyn(address_id=3, token=0x01020304, nonce=0x0A0B0C0D, backup=True)


@pytest.mark.parametrize(
    ("ip", "src"),
    [
        (IP(src="192.0.2.2", dst="192.0.2.1"), "192.0.2.2"),
        (IPv6(src="2001:db8:1::2", dst="2001:db8:1::1"), "2001:db8:1::2"),
    ],
)
def test_tcp_segments_of_both_families_parse_alike(ip: Packet, src: str) -> None:
    tcp = TCP(sport=5001, dport=40000, seq=7, ack=9, flags="S", options=[to_scapy_option(JOIN)])
    frame = bytes(Ether() / ip / tcp / b"payload")
    segment = parse_frame(frame, "eth0", 1.0)
    assert segment is not None
    assert (segment.src, segment.sport, segment.dport, segment.seq) == (src, 5001, 40000, 7)
    assert segment.option(MpJoinSyn) == JOIN
    assert segment.payload == b"payload"


def test_other_frames_are_not_segments() -> None:
    solicitation = (
        Ether() / IPv6(src="2001:db8:1::2", dst="ff02::1:ff00:1") / ICMPv6ND_NS(tgt="2001:db8:1::1")
    )
    assert parse_frame(bytes(solicitation), "eth0", 1.0) is None
    assert parse_frame(b"\x00" * 60, "eth0", 1.0) is None


# ------------------------------------------------------------------ expect / expect_next


def _offline_tester(*arrivals: tuple[float, int]) -> tuple[tester_module.Tester, Subflow]:
    """A tester without sockets whose inbox holds segments of one subflow, each (time,
    flags); its latest segment left at t=10."""
    tester = tester_module.Tester.__new__(tester_module.Tester)  # (a `Tester` name: collected)
    tester.inbox, tester.subflows, tester._by_fd, tester.last_sent = [], [], {}, 10.0
    sf = Subflow(tester, "eth0", "192.0.2.1", 40000, "192.0.2.2", 5001, iss=0)
    sf.snd_nxt = 1  # what the IUT's segments acknowledge
    for when, flags in arrivals:
        tester.inbox.append(Segment(
            time=when, ifname="eth0", src="192.0.2.2", dst="192.0.2.1", sport=5001,
            dport=40000, seq=1, ack=1, flags=flags, window=100, options=[], payload=b"",
        ))  # fmt: skip
    return tester, sf


def test_expect_passes_over_other_segments_and_expect_next_does_not() -> None:
    _, sf = _offline_tester((11.0, ACK), (12.0, RST))
    assert sf.expect(within=0, where=lambda s: bool(s.flags & RST)).flags == RST
    _, sf = _offline_tester((11.0, ACK), (12.0, RST))
    with pytest.raises(Outcome, match="next; first came"):
        sf.expect_next(within=0, where=lambda s: bool(s.flags & RST))


def test_expect_next_starts_after_the_tester_s_latest_segment_or_since() -> None:
    # an ACK sent before the stimulus (t=10) cannot answer it
    _, sf = _offline_tester((9.0, ACK), (11.0, RST))
    assert sf.expect_next(within=0, flags="R").time == 11.0
    _, sf = _offline_tester((9.0, ACK), (11.0, RST))
    with pytest.raises(Outcome, match="first came"):
        sf.expect_next(within=0, flags="R", since=8.0)


def test_expect_next_passes_over_only_what_skip_excuses() -> None:
    _, sf = _offline_tester((11.0, SYN), (12.0, RST))
    assert sf.expect_next(within=0, flags="R", skip=lambda s: s.flags == SYN).time == 12.0
    _, sf = _offline_tester((11.0, ACK), (12.0, RST))
    with pytest.raises(Outcome, match="first came"):
        sf.expect_next(within=0, flags="R", skip=lambda s: s.flags == SYN)
    _, sf = _offline_tester()
    with pytest.raises(Outcome, match="next, within 0 s; saw nothing"):
        sf.expect_next(within=0, flags="R")


def test_expect_next_passes_over_what_crossed_the_tester_s_segment() -> None:
    # an ACK that does not cover the tester's latest data was sent before the IUT took it
    tester, sf = _offline_tester((11.0, ACK), (12.0, ACK | FIN))
    sf.snd_nxt = 1 + 100  # the tester then sent 100 bytes, which only the FIN acknowledges
    tester.inbox[1].ack = 101
    assert sf.expect_next(within=0, flags="FA").time == 12.0
