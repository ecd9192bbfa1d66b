"""MPTCP option codec: known vectors from the RFC figures, round trips, fuzzing, encode errors."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stack.wire import (
    AddAddrV0,
    AddAddrV1,
    Dss,
    EncodeError,
    MalformedOption,
    MpCapable,
    MpFail,
    MpFastclose,
    MpJoinAck,
    MpJoinSyn,
    MpJoinSynAck,
    MpPrio,
    MpTcpRst,
    RemoveAddr,
    UnknownMptcpOption,
    WireError,
    parse_mptcp_option,
)

h = bytes.fromhex
KEY_A = 0x0102030405060708
KEY_B = 0x1112131415161718

# --------------------------------------------------------------------------- known vectors
# Bytes written out by hand from the option layouts in the RFCs; each comment names the
# figure (RFC 8684 = v1, RFC 6824 = v0).

KNOWN = [
    # RFC 8684 §3.1, Figure 4 (MP_CAPABLE): v1 SYN, 4 bytes, flags H.
    (h("1e040101"), MpCapable(1, 0x01), None),
    # RFC 8684 Figure 4: v1 SYN with A (checksum) and H, and the C flag.
    (h("1e0401a1"), MpCapable(1, 0xA1), None),
    # RFC 8684 Figure 4: v1 SYN/ACK, 12 bytes, Key-B.
    (h("1e0c01011112131415161718"), MpCapable(1, 0x01, KEY_B), None),
    # RFC 8684 Figure 4: v1 third ACK, 20 bytes, Key-A then Key-B.
    (h("1e14010101020304050607081112131415161718"), MpCapable(1, 0x01, KEY_A, KEY_B), None),
    # RFC 8684 Figure 4: v1 ACK with data, 22 bytes: keys and data-level length 100.
    (
        h("1e160101010203040506070811121314151617180064"),
        MpCapable(1, 0x01, KEY_A, KEY_B, 100),
        None,
    ),
    # RFC 8684 Figure 4: v1 ACK with data and checksum 0xabcd, 24 bytes.
    (
        h("1e180181010203040506070811121314151617180064abcd"),
        MpCapable(1, 0x81, KEY_A, KEY_B, 100, 0xABCD),
        None,
    ),
    # RFC 6824 §3.1, Figure 4: v0 SYN, 12 bytes, Key-A, flags A and H (SHA-1).
    (h("1e0c00810102030405060708"), MpCapable(0, 0x81, KEY_A), None),
    # RFC 6824 Figure 4: v0 third ACK, 20 bytes.
    (h("1e14008101020304050607081112131415161718"), MpCapable(0, 0x81, KEY_A, KEY_B), None),
    # RFC 8684 §3.2, Figure 5 (MP_JOIN SYN): B=1, address ID 1, token, nonce R-A.
    (h("1e0c11011a2b3c4d00000007"), MpJoinSyn(1, 0x1A2B3C4D, 7, True), None),
    # RFC 8684 Figure 6 (MP_JOIN SYN/ACK): B=0, address ID 2, truncated HMAC, nonce R-B.
    (h("1e101002010203040506070800000009"), MpJoinSynAck(2, h("0102030405060708"), 9, False), None),
    # RFC 8684 Figure 7 (MP_JOIN ACK): 160-bit HMAC.
    (h("1e181000" + "aa" * 20), MpJoinAck(b"\xaa" * 20), None),
    # RFC 8684 §3.3, Figure 9 (DSS): flags A only, 32-bit data ACK 1234.
    (h("1e082001000004d2"), Dss(data_ack=1234), None),
    # RFC 8684 Figure 9: A a, 64-bit data ACK.
    (h("1e0c200300000001000004d2"), Dss(data_ack=(1 << 32) + 1234, data_ack_64=True), None),
    # RFC 8684 Figure 9: A M, 32-bit ack and DSN 5, subflow seq 1, length 100, no checksum.
    (h("1e122005000004d200000005000000010064"), Dss(1234, 5, 1, 100), None),
    # RFC 8684 Figure 9: A M with checksum 0x00ab.
    (h("1e142005000004d20000000500000001006400ab"), Dss(1234, 5, 1, 100, 0xAB), None),
    # RFC 8684 Figure 9: F A a M m, 64-bit ack and DSN, checksum: the longest DSS (28 bytes).
    (
        h("1e1c201f000000000000000100000000000000020000000300040005"),
        Dss(1, 2, 3, 4, 5, data_fin=True, data_ack_64=True, dsn_64=True),
        None,
    ),
    # RFC 8684 Figure 9: mapping only (M), 32-bit DSN.
    (h("1e0e200400000005000000010064"), Dss(None, 5, 1, 100), None),
    # RFC 8684 §3.4.1 (ADD_ADDR figure): v1 IPv4 with port and truncated HMAC, 18 bytes.
    (
        h("1e123002c63364021f900102030405060708"),
        AddAddrV1(2, IPv4Address("198.51.100.2"), 8080, h("0102030405060708")),
        None,
    ),
    # RFC 8684 §3.4.1: v1 IPv4 without port, 16 bytes.
    (
        h("1e103002c63364020102030405060708"),
        AddAddrV1(2, IPv4Address("198.51.100.2"), None, h("0102030405060708")),
        1,
    ),
    # RFC 8684 §3.4.1: v1 echo (E=1) of an IPv4 address: no HMAC, 8 bytes.
    (h("1e083102c6336402"), AddAddrV1(2, IPv4Address("198.51.100.2"), None, None, True), 1),
    # RFC 8684 §3.4.1: v1 IPv6 with port and HMAC, 30 bytes.
    (
        h("1e1e300320010db800000000000000000000000100500102030405060708"),
        AddAddrV1(3, IPv6Address("2001:db8::1"), 80, h("0102030405060708")),
        None,
    ),
    # RFC 6824 §3.4.1 (ADD_ADDR figure): v0 IPVer 4, 8 bytes.
    (h("1e083402c6336402"), AddAddrV0(2, IPv4Address("198.51.100.2")), 0),
    # RFC 6824 §3.4.1: v0 IPVer 6 with port, 22 bytes.
    (
        h("1e16360320010db80000000000000000000000010050"),
        AddAddrV0(3, IPv6Address("2001:db8::1"), 80),
        None,
    ),
    # RFC 8684 §3.4.2 (REMOVE_ADDR figure): address IDs 1 and 2.
    (h("1e05400102"), RemoveAddr((1, 2)), None),
    # RFC 8684 §3.3.8 (MP_PRIO figure): B=1, 3 bytes.
    (h("1e0351"), MpPrio(True), None),
    # RFC 6824 §3.3.8 (MP_PRIO figure): B=0 with address ID 4.
    (h("1e045004"), MpPrio(False, 4), None),
    # RFC 8684 §3.7 (MP_FAIL figure): 64-bit DSN.
    (h("1e0c60000000000000001000"), MpFail(0x1000), None),
    # RFC 8684 §3.5 (MP_FASTCLOSE figure): the receiver's key.
    (h("1e0c70001112131415161718"), MpFastclose(KEY_B), None),
    # RFC 8684 §3.6 (MP_TCPRST figure): T=1, reason 3 (administratively prohibited).
    (h("1e048103"), MpTcpRst(3, 0x1), None),
    # RFC 8684 §3.6: unknown reason 200 and flags U V W preserved.
    (h("1e048ec8"), MpTcpRst(200, 0xE), None),
    # Subtype 0xf (MP_EXPERIMENTAL) is unknown to this codec: kept whole.
    (h("1e05f0abcd"), UnknownMptcpOption(15, h("1e05f0abcd")), None),
]


@pytest.mark.parametrize(("raw", "value", "version"), KNOWN)
def test_known_vectors(raw: bytes, value: object, version: int | None) -> None:
    assert parse_mptcp_option(raw, version=version) == value
    assert value.emit() == raw  # type: ignore[attr-defined]


def test_flag_properties() -> None:
    mpc = MpCapable(1, 0xE1)
    assert (mpc.checksum_required, mpc.extensibility, mpc.do_not_join, mpc.hmac_sha) == (
        True,
        True,
        True,
        True,
    )
    assert MpTcpRst(1, 1).transient and not MpTcpRst(1, 0).transient
    assert Dss(1, 2, 3, 4, data_fin=True).flags == 0x15


# --------------------------------------------------------------------------- context


def test_add_addr_8_bytes_is_decided_by_context() -> None:
    v0 = h("1e083402c6336402")  # nibble 4: v0 IPv4 without context
    assert isinstance(parse_mptcp_option(v0), AddAddrV0)
    # The same bytes read as v1: reserved bits 010, E=0 -> an announcement needs 16 bytes.
    assert isinstance(parse_mptcp_option(v0, version=1), MalformedOption)
    echo = h("1e083102c6336402")  # E=1: v1 echo without context
    assert isinstance(parse_mptcp_option(echo), AddAddrV1)
    bad = parse_mptcp_option(echo, version=0)
    assert isinstance(bad, MalformedOption) and "IP version 1" in bad.reason


def test_add_addr_v1_reserved_bits_survive_with_context() -> None:
    raw = h("1e083502c6336402")  # v1 echo with reserved bits 010 set
    value = parse_mptcp_option(raw, version=1)
    assert value == AddAddrV1(2, IPv4Address("198.51.100.2"), None, None, True, 2)
    assert value.emit() == raw  # type: ignore[union-attr]


def test_tcprst_is_unknown_in_v0() -> None:
    assert parse_mptcp_option(h("1e048103"), version=0) == UnknownMptcpOption(8, h("1e048103"))


def test_dss_length_alone_decides_the_checksum() -> None:
    """For every flag combination exactly one or two lengths parse, and they never overlap.

    So no parse context is needed for the DSS checksum: with M set, length L is without
    and L + 2 with checksum; without M there is no checksum. The kernel does the same
    (mptcp_parse_option accepts both and checks the negotiation later).
    """
    for flags in range(32):
        accepted = {}
        for length in range(4, 40):
            raw = bytes((30, length, 0x20, flags)) + bytes(length - 4)
            value = parse_mptcp_option(raw)
            if isinstance(value, Dss):
                accepted[length] = value.checksum is not None
                assert value.emit() == raw
        expected_count = 2 if flags & 0x04 else 1
        assert len(accepted) == expected_count, (flags, accepted)
        assert sorted(accepted.values()) == ([False, True] if flags & 0x04 else [False])


# --------------------------------------------------------------------------- round trips

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, (1 << 64) - 1)
ipv4 = st.builds(IPv4Address, u32)
ipv6 = st.builds(IPv6Address, st.integers(0, (1 << 128) - 1))
addresses = st.one_of(ipv4, ipv6)
ports = st.none() | u16


@st.composite
def mp_capable(draw: st.DrawFn) -> MpCapable:
    version = draw(st.integers(0, 15))
    flags = draw(u8)
    shape = draw(st.integers(1 if version == 0 else 0, 2 if version == 0 else 4))
    a = draw(u64) if shape >= 1 else None
    b = draw(u64) if shape >= 2 else None
    dll = draw(u16) if shape >= 3 else None
    csum = draw(u16) if shape >= 4 else None
    return MpCapable(version, flags, a, b, dll, csum)


@st.composite
def dss(draw: st.DrawFn) -> Dss:
    ack64, dsn64 = draw(st.booleans()), draw(st.booleans())
    ack = draw(u64 if ack64 else u32) if draw(st.booleans()) else None
    mapping = draw(st.booleans())
    return Dss(
        ack,
        draw(u64 if dsn64 else u32) if mapping else None,
        draw(u32) if mapping else None,
        draw(u16) if mapping else None,
        draw(u16) if mapping and draw(st.booleans()) else None,
        draw(st.booleans()),
        ack64,
        dsn64,
        draw(st.integers(0, 127)),
    )


@st.composite
def add_addr_v1(draw: st.DrawFn) -> AddAddrV1:
    echo = draw(st.booleans())
    return AddAddrV1(
        draw(u8),
        draw(addresses),
        draw(ports),
        None if echo else draw(st.binary(min_size=8, max_size=8)),
        echo,
        draw(st.integers(0, 7)),
    )


OPTIONS = st.one_of(
    mp_capable(),
    st.builds(MpJoinSyn, u8, u32, u32, st.booleans(), st.integers(0, 7)),
    st.builds(
        MpJoinSynAck, u8, st.binary(min_size=8, max_size=8), u32, st.booleans(), st.integers(0, 7)
    ),
    st.builds(MpJoinAck, st.binary(min_size=20, max_size=20), st.integers(0, 0xFFF)),
    dss(),
    st.builds(AddAddrV0, u8, addresses, ports),
    add_addr_v1(),
    st.builds(RemoveAddr, st.lists(u8, min_size=1, max_size=37).map(tuple), st.integers(0, 15)),
    st.builds(MpPrio, st.booleans(), st.none() | u8, st.integers(0, 7)),
    st.builds(MpFail, u64, st.integers(0, 0xFFF)),
    st.builds(MpFastclose, u64, st.integers(0, 0xFFF)),
    st.builds(MpTcpRst, u8, st.integers(0, 15)),
    st.builds(
        lambda subtype, body: UnknownMptcpOption(
            subtype, bytes((30, 3 + len(body), subtype << 4)) + body
        ),
        st.integers(9, 15),
        st.binary(max_size=30),
    ),
)


def _version_of(option: object) -> int | None:
    if isinstance(option, AddAddrV0):
        return 0
    if isinstance(option, AddAddrV1):
        return 1
    return None


@settings(deadline=None, derandomize=True, max_examples=400)
@given(OPTIONS)
def test_parse_emit_round_trip(option: object) -> None:
    raw = option.emit()  # type: ignore[attr-defined]
    assert raw[0] == 30 and raw[1] == len(raw)
    assert parse_mptcp_option(raw, version=_version_of(option)) == option
    # And at an offset inside a larger buffer, as the option walker calls it.
    assert parse_mptcp_option(b"\x01\x01" + raw + b"\x00", 2, version=_version_of(option)) == option


# --------------------------------------------------------------------------- fuzzing


def _check_never_raises(raw: bytes) -> None:
    for version in (None, 0, 1):
        value = parse_mptcp_option(raw, version=version)
        if isinstance(value, MalformedOption):
            assert value.offset == 0 and value.reason
        else:
            # Whatever parses re-emits the identical bytes (the option's own length).
            assert value.emit() == raw[: raw[1]]


@settings(deadline=None, derandomize=True, max_examples=600)
@given(st.binary(max_size=48))
def test_random_bytes_never_raise(body: bytes) -> None:
    _check_never_raises(b"\x1e" + body)


@settings(deadline=None, derandomize=True, max_examples=600)
@given(OPTIONS, st.data())
def test_mutations_never_raise(option: object, data: st.DataObject) -> None:
    raw = bytearray(option.emit())  # type: ignore[attr-defined]
    mutation = data.draw(st.sampled_from(["flip", "truncate", "length"]))
    if mutation == "flip":
        bit = data.draw(st.integers(8, len(raw) * 8 - 1))  # keep kind 30
        raw[bit // 8] ^= 1 << (bit % 8)
    elif mutation == "truncate":
        raw = raw[: data.draw(st.integers(1, len(raw)))]
    else:
        raw[1] = data.draw(u8)
    _check_never_raises(bytes(raw))


@pytest.mark.parametrize("subtype", range(16))
@pytest.mark.parametrize("length", [3, 4, 5])
def test_every_subtype_at_minimal_lengths(subtype: int, length: int) -> None:
    # Found by the fuzzer: parsers must not read a fourth byte a 3-byte option lacks.
    raw = bytes((30, length, subtype << 4)) + b"\xff" * (length - 3)
    _check_never_raises(raw)


def test_truncated_and_short_options_are_typed() -> None:
    cases = {
        h("1e"): "truncated before its length",
        h("1e02"): "length 2",
        h("1e0c0081"): "truncated to 4 bytes",
        h("1e030081"): "MP_CAPABLE of length 3 (at least 4)",  # never reads past the length
        h("1e0d1101000000000000000000"): "MP_JOIN of length 13",
        h("1e034000"): "REMOVE_ADDR without any address ID",
        h("1e0a2005000004d20000"): "DSS with flags 0x05 of length 10",
        h("1e0b6000000000000000000000"): "MP_FAIL of length 11",
        h("1e05810300"): "MP_TCPRST of length 5",
        h("02040584"): "not MPTCP",
    }
    for raw, reason in cases.items():
        value = parse_mptcp_option(raw)
        assert isinstance(value, MalformedOption), raw.hex()
        assert reason in value.reason, (raw.hex(), value.reason)
    too_long = parse_mptcp_option(bytes((30, 42, 0x40)) + bytes(range(39)))
    assert isinstance(too_long, MalformedOption) and "exceeds the 40-byte" in too_long.reason
    assert parse_mptcp_option(b"", 0).reason == "no option at this offset"  # type: ignore[union-attr]


# --------------------------------------------------------------------------- encode errors

ENCODE_ERRORS = [
    (MpCapable(1, 1, 1 << 64), "sender_key=18446744073709551616 is out of range for 64 bits"),
    (MpCapable(16, 1), "version=16 is out of range for 4 bits"),
    (MpCapable(0, 0x81), "v0 always carries the sender's key"),
    (MpCapable(0, 0x81, 1, 2, 3), "v0 has no data-level length"),
    (MpCapable(1, 1, None, 2), "needs sender_key"),
    (MpCapable(1, 1, 1, 2, None, 5), "checksum needs data_level_length"),
    (MpCapable(1, 1, 1, 2, 1 << 16), "data_level_length=65536 is out of range for 16 bits"),
    (MpJoinSyn(256, 1, 1), "address_id=256 is out of range for 8 bits"),
    (MpJoinSyn(1, -1, 1), "token=-1 is out of range for 32 bits"),
    (MpJoinSynAck(1, b"short", 1), "hmac (truncated, 64 bits) must be 8 bytes, got 5"),
    (MpJoinAck(bytes(32)), "hmac (160 bits) must be 20 bytes, got 32"),
    (Dss(data_ack=1 << 32), "data_ack=4294967296 is out of range for 32 bits"),
    (Dss(None, 1, 2, None), "a mapping needs all of dsn, subflow_seq and data_level_length"),
    (Dss(1, None, None, None, 5), "a checksum is only carried with a mapping"),
    (Dss(1, reserved=128), "reserved=128 is out of range for 7 bits"),
    (Dss("1"), "data_ack must be an int, not str"),  # type: ignore[arg-type]
    (AddAddrV1(1, IPv4Address("10.0.0.1")), "an announcement (E=0) needs the 64-bit hmac"),
    (AddAddrV1(1, IPv4Address("10.0.0.1"), None, bytes(8), True), "an echo (E=1) carries no HMAC"),
    (AddAddrV1(1, IPv4Address("10.0.0.1"), 70000, bytes(8)), "is not a 16-bit port"),
    (AddAddrV0(1, "10.0.0.1"), "address must be an ipaddress"),  # type: ignore[arg-type]
    (AddAddrV0(300, IPv4Address("10.0.0.1")), "address_id=300 is out of range for 8 bits"),
    (RemoveAddr(()), "needs at least one address ID"),
    (RemoveAddr(tuple(range(38))), "38 address IDs do not fit"),
    (RemoveAddr((1, 256)), "address IDs must be 0..255"),
    (MpPrio(True, 256), "address_id=256 is out of range for 8 bits"),
    (MpFail(1 << 64), "dsn=18446744073709551616 is out of range for 64 bits"),
    (MpFastclose(-5), "receiver_key=-5 is out of range for 64 bits"),
    (MpFastclose(1, 1 << 12), "reserved=4096 is out of range for 12 bits"),
    (MpTcpRst(256), "reason=256 is out of range for 8 bits"),
    (MpTcpRst(1, 16), "flags=16 is out of range for 4 bits"),
    (UnknownMptcpOption(9, h("1e04900000")), "raw must be the whole option"),
]


@pytest.mark.parametrize(("value", "message"), ENCODE_ERRORS)
def test_encode_errors(value: object, message: str) -> None:
    with pytest.raises(EncodeError) as info:
        value.emit()  # type: ignore[attr-defined]
    assert message in str(info.value)
    assert isinstance(info.value, WireError) and isinstance(info.value, ValueError)


def test_values_are_immutable_and_hashable() -> None:
    value = Dss(1, 2, 3, 4)
    with pytest.raises(AttributeError):
        value.dsn = 5  # type: ignore[misc]
    assert len({value, Dss(1, 2, 3, 4), AddAddrV0(1, ip_address("10.0.0.1"))}) == 2
