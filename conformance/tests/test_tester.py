"""The tester's frame parser, without namespaces: IPv4 and IPv6 TCP segments with MPTCP
options come out the same, and anything else is None."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import ICMPv6ND_NS, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from conformance.tester import parse_frame
from stack.wire.mptcp import MpJoinSyn
from stack.wire.scapy_bridge import to_scapy_option

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
