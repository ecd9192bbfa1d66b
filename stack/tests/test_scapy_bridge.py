"""The scapy bridge: exact bytes through scapy's kind-30 handling, and one-line descriptions."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from scapy.layers.inet import IP, TCP

from stack.tests.test_wire_mptcp import OPTIONS, _version_of
from stack.wire import (
    AddAddrV0,
    AddAddrV1,
    Dss,
    EncodeError,
    MalformedOption,
    MaxSegmentSize,
    MpCapable,
    MpFail,
    MpFastclose,
    MpJoinAck,
    MpJoinSyn,
    MpJoinSynAck,
    MpPrio,
    MpTcpRst,
    RemoveAddr,
    Sack,
    SackPermitted,
    Timestamps,
    UnknownMptcpOption,
    UnknownTcpOption,
    WindowScale,
    build_options,
    emit_tcp_options,
)
from stack.wire.scapy_bridge import (
    describe_mptcp,
    mptcp_options_from_scapy,
    tcp_options_from_scapy,
    to_scapy_option,
)
from stack.wire.tcp import NOP, EndOfOptionList

h = bytes.fromhex


@settings(deadline=None, derandomize=True, max_examples=200)
@given(OPTIONS)
def test_scapy_keeps_mptcp_bytes_exact_both_ways(option: object) -> None:
    raw = option.emit()  # type: ignore[attr-defined]
    built = TCP(options=[to_scapy_option(option)])  # type: ignore[arg-type]
    wire = bytes(built)
    assert wire[20 : 20 + len(raw)] == raw  # scapy builds exactly our bytes
    dissected = TCP(wire)
    assert dissected.options[0] == (30, raw[2:])  # and dissects them back as (30, value)
    assert mptcp_options_from_scapy(dissected, _version_of(option)) == [option]
    assert mptcp_options_from_scapy(IP() / dissected, _version_of(option)) == [option]


def test_other_tcp_options_through_scapy() -> None:
    options = [
        MaxSegmentSize(1460),
        SackPermitted(),
        Timestamps(5, 6),
        NOP,
        WindowScale(7),
        Sack(((1, 2),)),
        UnknownTcpOption(253, h("fd03aa")),
        EndOfOptionList(),
    ]
    wire = bytes(TCP(options=[to_scapy_option(o) for o in options]))
    assert wire[20:].startswith(emit_tcp_options(options))
    assert tcp_options_from_scapy(TCP(wire))[:-1] == options[:-1]
    with pytest.raises(EncodeError, match="cannot go into scapy"):
        to_scapy_option(MalformedOption(0, "x", None, b"\x1e"))


def test_malformed_kind_30_from_a_dissected_packet() -> None:
    # A raw TCP header whose MPTCP option claims 12 bytes but has 4 left.
    header = bytes(TCP(dataofs=6, options=[]))[:20]
    header = header[:12] + b"\x60" + header[13:]  # data offset 6: 4 option bytes
    wire = header + h("1e0c0081")
    found = mptcp_options_from_scapy(TCP(wire))
    assert len(found) == 1 and isinstance(found[0], MalformedOption) and found[0].offset == 0
    assert describe_mptcp(TCP(wire)).startswith(
        "malformed option at 0: option kind 30 of length 12 does not fit the 4 bytes left"
    )
    # scapy's own list hides the damage (it shows a 2-byte value): why we walk the bytes.
    assert TCP(wire).options == [(30, h("0081"))]


DESCRIPTIONS = [
    (MpCapable(1, 0x01), "mp_capable v1 syn flags [h]"),
    (MpCapable(1, 0x81, 0xAB), "mp_capable v1 syn/synack flags [a,h] key 0xab"),
    (
        MpCapable(1, 0x01, 1, 2, 100, 0xAB),
        "mp_capable v1 data flags [h] key 0x1 key 0x2 len 100 csum 0xab",
    ),
    (MpJoinSyn(1, 0x1A2B3C4D, 0x55, True), "mp_join syn backup id 1 token 0x1a2b3c4d nonce 0x55"),
    (
        MpJoinSynAck(2, h("0102030405060708"), 9),
        "mp_join synack id 2 hmac 0x0102030405060708 nonce 0x9",
    ),
    (MpJoinAck(b"\xaa" * 20), "mp_join ack hmac 0x" + "aa" * 20),
    (Dss(1234, 5, 1, 100, 0xAB), "dss ack 1234 seq 5 subseq 1 len 100 csum 0xab"),
    (
        Dss(1, 2, 3, 4, data_fin=True, data_ack_64=True, reserved=1),
        "dss fin ack64 1 seq 2 subseq 3 len 4 reserved 0x1",
    ),
    (
        AddAddrV1(2, IPv4Address("198.51.100.2"), 8080, h("0102030405060708")),
        "add_addr v1 id 2 198.51.100.2:8080 hmac 0x0102030405060708",
    ),
    (
        AddAddrV1(3, IPv6Address("2001:db8::1"), None, None, True),
        "add_addr v1 echo id 3 [2001:db8::1]",
    ),
    (AddAddrV0(4, IPv4Address("10.0.0.1"), 80), "add_addr v0 id 4 10.0.0.1:80"),
    (RemoveAddr((1, 2)), "remove_addr id 1,2"),
    (MpPrio(True), "mp_prio backup"),
    (MpPrio(False, 3), "mp_prio regular id 3"),
    (MpFail(4096), "mp_fail seq 4096"),
    (MpFastclose(0xFF), "mp_fastclose key 0xff"),
    (MpTcpRst(3, 1), "mp_tcprst reason 3 (administratively prohibited) flags [t]"),
    (MpTcpRst(9, 0), "mp_tcprst reason 9 (unknown) flags []"),
    (UnknownMptcpOption(15, h("1e03f0")), "mptcp subtype 15 raw 1e03f0"),
]


@pytest.mark.parametrize(("option", "text"), DESCRIPTIONS)
def test_describe(option: object, text: str) -> None:
    assert describe_mptcp([option]) == text


def test_describe_a_packet() -> None:
    options = build_options([MaxSegmentSize(1460), MpCapable(1, 0x01, 0xAB)]).data
    pkt = IP() / TCP(flags="SA", options=[("MSS", 1460), (30, options[6:])])
    assert describe_mptcp(pkt) == "mp_capable v1 synack flags [h] key 0xab"
    two = IP() / TCP(flags="A", options=[to_scapy_option(Dss(5)), to_scapy_option(MpPrio(True))])
    assert describe_mptcp(two) == "dss ack 5; mp_prio backup"
    assert describe_mptcp(IP() / TCP()) == "no mptcp options"
