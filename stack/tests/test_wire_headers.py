"""TCP/IP/Ethernet/ARP/NDP codecs and the TCP option list: checked against scapy and a
straightforward checksum, and fuzzed for exceptions."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import ARP, Ether

from stack.wire import (
    ARP_REQUEST,
    NOP,
    AddAddrV1,
    ArpPacket,
    Dss,
    EncodeError,
    EndOfOptionList,
    IPv4Header,
    IPv6Header,
    MalformedHeader,
    MalformedOption,
    MaxSegmentSize,
    MpCapable,
    MpJoinSyn,
    NeighborAdvertisement,
    NeighborSolicitation,
    Sack,
    SackPermitted,
    TcpHeader,
    Timestamps,
    UnknownTcpOption,
    WindowScale,
    build_options,
    emit_ethernet,
    emit_ipv4,
    emit_tcp,
    emit_tcp_ip,
    emit_tcp_options,
    internet_checksum,
    multicast_mac,
    ones_complement_sum,
    parse_arp,
    parse_ethernet,
    parse_ip,
    parse_ipv4,
    parse_ipv6,
    parse_ndp,
    parse_tcp,
    parse_tcp_options,
    solicited_node_multicast,
    tcp_checksum_ok,
    transport_checksum_ok,
)

h = bytes.fromhex


# --------------------------------------------------------------------------- checksum


def _reference_sum(data: bytes) -> int:
    """RFC 1071, the slow way: add 16-bit words with end-around carry."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


@settings(deadline=None, derandomize=True, max_examples=500)
@given(st.binary(max_size=2000) | st.sampled_from([b"", b"\0" * 7, b"\xff" * 9, b"\xff\xff"]))
def test_checksum_modulo_trick_matches_the_word_loop(data: bytes) -> None:
    assert ones_complement_sum(data) == _reference_sum(data)
    assert internet_checksum(data) == ~_reference_sum(data) & 0xFFFF


def test_checksum_edge_cases() -> None:
    assert ones_complement_sum(b"") == 0
    assert ones_complement_sum(b"\0\0\0") == 0  # +0 stays +0
    assert ones_complement_sum(b"\xff\xff") == 0xFFFF  # -0, never folded to 0
    assert ones_complement_sum(b"\x80\x00\x80\x00") == 0x0001  # end-around carry
    assert ones_complement_sum(b"\x01") == 0x0100  # odd: padded on the right


# --------------------------------------------------------------------------- TCP vs scapy

MPTCP_SYN = [
    (30, h("0101")),
    ("MSS", 1460),
    ("SAckOK", b""),
    ("Timestamp", (1, 0)),
    ("NOP", None),
    ("WScale", 7),
]


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("payload", [b"", b"x", b"hello world" * 100])
def test_tcp_checksum_against_scapy(family: int, payload: bytes) -> None:
    if family == 4:
        src, dst = "192.0.2.1", "198.51.100.2"
        pkt = (
            IP(src=src, dst=dst, id=7)
            / TCP(
                sport=1234,
                dport=80,
                seq=100,
                ack=200,
                flags="PA",
                window=512,
                options=[(30, h("2001000004d2"))],
            )
            / payload
        )
    else:
        src, dst = "2001:db8::1", "2001:db8::2"
        pkt = (
            IPv6(src=src, dst=dst)
            / TCP(
                sport=1234,
                dport=80,
                seq=100,
                ack=200,
                flags="PA",
                window=512,
                options=[(30, h("2001000004d2"))],
            )
            / payload
        )
    wire = bytes(pkt)
    ip = parse_ip(wire)
    assert isinstance(ip, IPv4Header | IPv6Header)
    assert tcp_checksum_ok(ip)
    tcp = parse_tcp(ip.payload)
    assert isinstance(tcp, TcpHeader)
    assert (tcp.src_port, tcp.dst_port, tcp.seq, tcp.ack, tcp.window) == (1234, 80, 100, 200, 512)
    assert bytes(tcp.payload) == payload
    assert parse_tcp_options(tcp.options) == [Dss(data_ack=1234)]
    assert tcp.checksum == pkt[TCP].__class__(bytes(pkt[TCP])).chksum
    # Our emitter produces the very same bytes, checksum included.
    ours = emit_tcp(
        1234,
        80,
        100,
        200,
        0x18,
        512,
        options=bytes(tcp.options),
        payload=payload,
        src=ip.src,
        dst=ip.dst,
    )
    assert ours == bytes(ip.payload)
    # One flipped payload bit is caught.
    if payload:
        broken = bytearray(ip.payload)
        broken[-1] ^= 0x01
        assert not tcp_checksum_ok(ip, broken)


def test_full_frame_emit_matches_scapy() -> None:
    src, dst = IPv4Address("192.0.2.1").packed, IPv4Address("198.51.100.2").packed
    options = build_options([MaxSegmentSize(1460), MpCapable(1, 0x01)]).data
    packet = emit_tcp_ip(src, dst, 40000, 80, 1, 0, 0x02, 64240, options=options, ttl=64)
    scapy_pkt = IP(packet)
    assert (
        scapy_pkt[IP].chksum
        == IP(
            bytes(
                IP(src="192.0.2.1", dst="198.51.100.2", id=0, flags="DF", ttl=64, proto=6)
                / scapy_pkt[TCP]
            )
        ).chksum
    )
    rebuilt = IP(packet)
    del rebuilt[IP].chksum, rebuilt[TCP].chksum
    assert bytes(rebuilt) == packet  # scapy recomputes both checksums to the same values
    assert rebuilt[TCP].options == [("MSS", 1460), (30, h("0101"))]
    frame = emit_ethernet(b"\x02" * 6, b"\x04" * 6, 0x0800, packet)
    eth = parse_ethernet(frame)
    assert not isinstance(eth, MalformedHeader) and bytes(eth.payload) == packet
    assert Ether(frame)[TCP].sport == 40000

    v6 = emit_tcp_ip(
        IPv6Address("2001:db8::1").packed,
        IPv6Address("2001:db8::2").packed,
        1,
        2,
        3,
        4,
        0x10,
        5,
        payload=b"abc",
    )
    again = IPv6(v6)
    del again[TCP].chksum
    assert bytes(again) == v6


def test_ipv4_header_against_scapy() -> None:
    wire = bytes(IP(src="10.0.0.1", dst="10.0.0.2", ttl=3, id=99, tos=0x10) / b"data")
    ip = parse_ipv4(wire + b"\0" * 6)  # Ethernet padding beyond total length is dropped
    assert isinstance(ip, IPv4Header)
    assert ip.checksum_ok() and ip.ttl == 3 and ip.identification == 99 and ip.tos == 0x10
    assert bytes(ip.payload) == b"data" and ip.src_address == IPv4Address("10.0.0.1")
    assert (
        emit_ipv4(
            ip.src,
            ip.dst,
            ip.protocol,
            b"data",
            ttl=3,
            identification=99,
            tos=0x10,
            dont_fragment=False,
        )
        == wire
    )


# --------------------------------------------------------------------------- TCP options


def test_option_list_walk() -> None:
    raw = h("020405b40402080a0000000100000000010303071e040101")
    assert parse_tcp_options(raw) == [
        MaxSegmentSize(1460),
        SackPermitted(),
        Timestamps(1, 0),
        NOP,
        WindowScale(7),
        MpCapable(1, 0x01),
    ]
    assert parse_tcp_options(h("0101050a0000000100000002")) == [NOP, NOP, Sack(((1, 2),))]
    assert parse_tcp_options(h("1e04010100000000")) == [MpCapable(1, 1), EndOfOptionList(b"\0\0\0")]
    assert parse_tcp_options(h("fd0412340101")) == [UnknownTcpOption(253, h("fd041234")), NOP, NOP]


def test_option_list_malformed_entries_carry_offsets() -> None:
    out = parse_tcp_options(h("01010203051e0c0081"))
    assert out[:2] == [NOP, NOP]
    bad_mss = out[2]
    assert isinstance(bad_mss, MalformedOption) and bad_mss.offset == 2 and bad_mss.kind == 2
    truncated = out[3]
    assert isinstance(truncated, MalformedOption) and truncated.offset == 5
    assert "does not fit" in truncated.reason and truncated.subtype == 0
    assert parse_tcp_options(h("01011e")) == [
        NOP,
        NOP,
        MalformedOption(2, "option kind 30 truncated before its length", None, h("1e"), 30),
    ]
    assert isinstance(parse_tcp_options(h("0801"))[0], MalformedOption)  # length < 2


def test_option_list_uses_version_context() -> None:
    raw = h("1e083402c6336402")
    assert isinstance(parse_tcp_options(raw, version=1)[0], MalformedOption)
    assert not isinstance(parse_tcp_options(raw, version=0)[0], MalformedOption)


def test_build_options_priority_and_padding() -> None:
    syn = [
        MaxSegmentSize(1460),
        SackPermitted(),
        Timestamps(1, 0),
        NOP,
        WindowScale(7),
        MpCapable(0, 0x81, 1),
    ]
    space = build_options(syn)
    # 4 + 2 + 10 + 1 + 3 + 12 = 32 bytes: everything fits.
    assert space.dropped == () and len(space.data) == 32
    assert parse_tcp_options(space.data) == syn
    # A v1 MP_CAPABLE ACK with data and checksum (24 bytes) squeezes the rest out:
    # MPTCP first, then MSS (4), SACK-permitted (2), timestamps (10): 40; no room for WS.
    space = build_options(
        [
            MaxSegmentSize(1460),
            SackPermitted(),
            Timestamps(1, 0),
            WindowScale(7),
            MpCapable(1, 1, 1, 2, 3, 4),
        ]
    )
    assert space.included == (
        MaxSegmentSize(1460),
        SackPermitted(),
        Timestamps(1, 0),
        MpCapable(1, 1, 1, 2, 3, 4),
    )
    assert space.dropped == (WindowScale(7),)
    assert len(space.data) == 40
    # Padding to a multiple of 4 counts against the budget and uses NOPs by default.
    space = build_options([MaxSegmentSize(1460), WindowScale(7)], 8)
    assert space.data == h("020405b403030701") and space.dropped == ()
    space = build_options([MaxSegmentSize(1460), WindowScale(7), SackPermitted()], 8)
    assert space.dropped == (WindowScale(7),) and space.data == h("020405b404020101")
    # The policy is an argument: timestamps before everything.
    space = build_options(
        [Timestamps(1, 0), MpCapable(1, 1, 1, 2, 3, 4)],
        28,
        priority=(Timestamps,),
        pad_with_eol=True,
    )
    assert space.dropped == (MpCapable(1, 1, 1, 2, 3, 4),) and space.data.endswith(b"\0\0")
    with pytest.raises(EncodeError, match="budget"):
        build_options([], 41)


VALID_OPTIONS = st.lists(
    st.one_of(
        st.just(NOP),
        st.builds(MaxSegmentSize, st.integers(0, 0xFFFF)),
        st.builds(WindowScale, st.integers(0, 255)),
        st.just(SackPermitted()),
        st.builds(Timestamps, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
        st.builds(
            Sack,
            st.lists(
                st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
                min_size=1,
                max_size=4,
            ).map(tuple),
        ),
        st.builds(MpJoinSyn, st.integers(0, 255), st.integers(0, 2**32 - 1)),
        st.builds(Dss, st.integers(0, 2**32 - 1)),
        st.builds(
            lambda k, v: UnknownTcpOption(k, bytes((k, 2 + len(v))) + v),
            st.integers(9, 29),
            st.binary(max_size=6),
        ),
    ),
    max_size=8,
)


@settings(deadline=None, derandomize=True, max_examples=300)
@given(VALID_OPTIONS)
def test_option_list_round_trip(options: list) -> None:
    raw = emit_tcp_options(options)
    assert parse_tcp_options(raw) == options
    assert emit_tcp_options(parse_tcp_options(raw)) == raw


@settings(deadline=None, derandomize=True, max_examples=500)
@given(st.binary(max_size=60), st.sampled_from([None, 0, 1]))
def test_option_walker_never_raises(raw: bytes, version: int | None) -> None:
    out = parse_tcp_options(raw, version=version)
    # Malformed entries included, the walk accounts for bytes up to where it stopped.
    assert len(emit_tcp_options(out)) <= len(raw)
    assert raw.startswith(emit_tcp_options(out))


# --------------------------------------------------------------------------- header fuzzing


@settings(deadline=None, derandomize=True, max_examples=400)
@given(st.binary(max_size=120))
def test_header_parsers_never_raise(raw: bytes) -> None:
    for parse in (parse_ip, parse_ipv4, parse_ipv6, parse_tcp, parse_ethernet, parse_arp):
        parse(raw)
    parse_ndp(bytes(16), bytes(16), raw)
    ip = parse_ip(b"\x45" + raw)
    if isinstance(ip, IPv4Header):
        tcp_checksum_ok(ip)


@settings(deadline=None, derandomize=True, max_examples=200)
@given(st.data())
def test_truncated_tcp_ip_is_typed(data: st.DataObject) -> None:
    packet = emit_tcp_ip(
        bytes(4), bytes(4), 1, 2, 3, 4, 0x10, 5, options=h("01010101"), payload=b"12345"
    )
    cut = packet[: data.draw(st.integers(0, len(packet) - 1))]
    ip = parse_ipv4(cut)
    if not isinstance(ip, MalformedHeader):
        tcp = parse_tcp(ip.payload)
        assert isinstance(tcp, TcpHeader | MalformedHeader)


def test_malformed_headers_say_why() -> None:
    assert "version 6" in parse_ipv4(bytes(IPv6())).reason  # type: ignore[union-attr]
    assert "total length" in parse_ipv4(h("45000064") + bytes(16)).reason  # type: ignore[union-attr]
    assert "data offset 8" in parse_tcp(bytes(12) + b"\x20" + bytes(7)).reason  # type: ignore[union-attr]
    assert "beyond" in parse_ipv6(h("6000000000100640") + bytes(32)).reason  # type: ignore[union-attr]


# --------------------------------------------------------------------------- Ethernet, ARP, NDP


def test_arp_against_scapy() -> None:
    wire = bytes(
        ARP(
            op=1,
            hwsrc="02:00:00:00:00:01",
            psrc="10.0.0.1",
            hwdst="00:00:00:00:00:00",
            pdst="10.0.0.2",
        )
    )
    arp = parse_arp(wire + bytes(18))  # minimum-frame padding is ignored
    assert arp == ArpPacket(ARP_REQUEST, h("020000000001"), h("0a000001"), bytes(6), h("0a000002"))
    assert arp.emit() == wire  # type: ignore[union-attr]
    reply = arp.reply(h("020000000002"))  # type: ignore[union-attr]
    assert ARP(reply.emit()).op == 2 and ARP(reply.emit()).psrc == "10.0.0.2"
    assert isinstance(parse_arp(bytes(ARP(hwlen=8))), MalformedHeader)


def test_ndp_against_scapy() -> None:
    src = IPv6Address("fe80::1").packed
    target = IPv6Address("2001:db8::2").packed
    dst = solicited_node_multicast(target)
    assert IPv6Address(dst) == IPv6Address("ff02::1:ff00:2")
    assert multicast_mac(dst) == h("3333ff000002")
    ns = NeighborSolicitation(target, h("020000000001"))
    ours = ns.emit(src, dst)
    theirs = bytes(
        IPv6(src="fe80::1", dst="ff02::1:ff00:2")
        / ICMPv6ND_NS(tgt="2001:db8::2")
        / ICMPv6NDOptSrcLLAddr(lladdr="02:00:00:00:00:01")
    )[40:]
    assert ours == theirs
    assert parse_ndp(src, dst, theirs) == ns

    na = NeighborAdvertisement(target, h("020000000002"))
    ours = na.emit(target, src)
    theirs = bytes(
        IPv6(src="2001:db8::2", dst="fe80::1")
        / ICMPv6ND_NA(tgt="2001:db8::2", R=0, S=1, O=1)
        / ICMPv6NDOptDstLLAddr(lladdr="02:00:00:00:00:02")
    )[40:]
    assert ours == theirs
    parsed = parse_ndp(target, src, theirs)
    assert parsed == na and parsed.solicited and parsed.override and not parsed.router  # type: ignore[union-attr]
    assert transport_checksum_ok(target, src, 58, theirs)

    broken = bytearray(theirs)
    broken[10] ^= 1
    assert parse_ndp(target, src, bytes(broken)) == MalformedHeader(
        "icmpv6", 2, "bad ICMPv6 checksum"
    )
    echo = bytes(IPv6(src="fe80::1", dst="fe80::2") / ICMPv6EchoRequest(id=1))[40:]
    assert parse_ndp(src, IPv6Address("fe80::2").packed, echo) is None  # valid, not NDP


def test_emit_errors_for_headers() -> None:
    with pytest.raises(EncodeError, match="multiple of 4"):
        emit_tcp(1, 2, 3, 4, 0, 5, options=b"\x01")
    with pytest.raises(EncodeError, match="16 bits"):
        emit_tcp(70000, 2, 3, 4, 0, 5)
    with pytest.raises(EncodeError, match="4 bytes"):
        emit_ipv4(b"\x01", bytes(4), 6)
    with pytest.raises(EncodeError, match="6 bytes"):
        emit_ethernet(b"\x01", bytes(6), 0x800)
    with pytest.raises(EncodeError, match="8 bytes"):
        AddAddrV1(1, IPv4Address("10.0.0.1"), None, b"1").emit()
