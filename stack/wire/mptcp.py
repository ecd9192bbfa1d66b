"""MPTCP options (TCP option kind 30) of RFC 6824 (v0) and RFC 8684 (v1): values, parse, emit.

Every option is a frozen, slotted dataclass whose `emit()` returns the whole option
(kind, length, subtype and all). Every bit that is on the wire is kept, reserved bits
and the DSS checksum included, so `emit(parse(b)) == b` for every option that parses.

`parse_mptcp_option` never raises: wrong lengths, truncation and impossible fields
become a `MalformedOption` carrying the offset within the TCP options area. The
bytes alone decide everything except ADD_ADDR of 8, 10, 20 or 22 bytes (v0 address vs
v1 echo) and subtype 8 (MP_TCPRST in v1, unknown in v0): there the `version` context
decides, and without it the rules in docs/wire.md apply.

Names follow the kernel (net/mptcp/options.c): address ID, token, nonce, DSN, data ACK,
subflow sequence number, data-level length.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, fields
from ipaddress import IPv4Address, IPv6Address
from typing import ClassVar, TypeVar

from stack.wire.errors import EncodeError, MalformedOption

TCPOPT_MPTCP = 30

# Subtypes (kernel names MPTCPOPT_*).
MPTCPOPT_MP_CAPABLE = 0
MPTCPOPT_MP_JOIN = 1
MPTCPOPT_DSS = 2
MPTCPOPT_ADD_ADDR = 3
MPTCPOPT_RM_ADDR = 4
MPTCPOPT_MP_PRIO = 5
MPTCPOPT_MP_FAIL = 6
MPTCPOPT_MP_FASTCLOSE = 7
MPTCPOPT_RST = 8

# MP_CAPABLE flags (RFC 8684 §3.1): A checksum required, B extensibility, C do not join
# to this source address (v1), D..G unassigned, H HMAC-SHA1 (v0) / HMAC-SHA256 (v1).
MPC_FLAG_A = 0x80
MPC_FLAG_B = 0x40
MPC_FLAG_C = 0x20
MPC_FLAG_H = 0x01

# DSS flags (RFC 8684 §3.3).
DSS_DATA_FIN = 0x10  # F
DSS_DSN64 = 0x08  # m
DSS_MAPPING = 0x04  # M
DSS_ACK64 = 0x02  # a
DSS_ACK = 0x01  # A

# MP_TCPRST flags and reasons (RFC 8684 §3.6).
TCPRST_FLAG_T = 0x1  # transient
MPTCP_RST_EUNSPEC = 0
MPTCP_RST_EMPTCP = 1
MPTCP_RST_ERESOURCE = 2
MPTCP_RST_EPROHIBIT = 3
MPTCP_RST_EWQ2BIG = 4
MPTCP_RST_EBADPERF = 5
MPTCP_RST_EMIDDLEBOX = 6

# TCP option space, and the most address IDs a REMOVE_ADDR can carry inside it.
MAX_OPTION_LENGTH = 40
MAX_REMOVE_ADDR_IDS = MAX_OPTION_LENGTH - 3

T = TypeVar("T")
Buffer = bytes | bytearray | memoryview


def fast_constructor(cls: type[T]) -> Callable[..., T]:
    """A positional constructor for a frozen slotted dataclass that skips __init__.

    A frozen dataclass __init__ goes through object.__setattr__ with a name lookup per
    field; calling the slot descriptors directly halves the cost, which matters on the
    parse path (measured in bench/bench_wire.py). Arguments are in field order and are
    not checked: only the parsers, which produce values straight from the wire, use it.
    """
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    namespace: dict[str, object] = {"_new": object.__new__, "_cls": cls}
    for name in names:
        namespace[f"_set_{name}"] = cls.__dict__[name].__set__
    body = "".join(f"    _set_{name}(o, {name})\n" for name in names)
    source = f"def make({', '.join(names)}):\n    o = _new(_cls)\n{body}    return o\n"
    exec(source, namespace)  # the same technique dataclasses uses to build __init__
    return namespace["make"]  # type: ignore[return-value]


def _diagnose(option: str, limits: list[tuple[str, object, int]]) -> EncodeError:
    """Name the first field that does not fit its width; called only once packing failed."""
    for name, value, bits in limits:
        if value is None:
            continue
        if not isinstance(value, int):
            return EncodeError(f"{option}: {name} must be an int, not {type(value).__name__}")
        if not 0 <= value < (1 << bits):
            return EncodeError(f"{option}: {name}={value} is out of range for {bits} bits")
    return EncodeError(f"{option}: a field cannot be encoded")


def _check_bytes(option: str, name: str, value: object, size: int) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview) or len(value) != size:
        got = len(value) if isinstance(value, bytes | bytearray | memoryview) else type(value)
        raise EncodeError(f"{option}: {name} must be {size} bytes, got {got}")
    return bytes(value)


_HDR = struct.Struct("!BBBB")
_HDR3 = struct.Struct("!BBB")
_Q = struct.Struct("!Q")
_QQ = struct.Struct("!QQ")
_I = struct.Struct("!I")
_II = struct.Struct("!II")
_H = struct.Struct("!H")
_HH = struct.Struct("!HH")


# --------------------------------------------------------------------------- MP_CAPABLE


@dataclass(frozen=True, slots=True)
class MpCapable:
    """MP_CAPABLE (subtype 0). The length follows from which fields are present.

    | length | fields                                   | used in                   |
    | 4      | -                                        | v1 SYN                    |
    | 12     | sender_key                               | v0 SYN, v0/v1 SYN/ACK     |
    | 20     | sender_key, receiver_key                 | v0/v1 third ACK           |
    | 22     | + data_level_length                      | v1 first data             |
    | 24     | + checksum                               | v1 first data, checksums  |

    On a v0 SYN the sender key is Key-A, on a SYN/ACK Key-B; on the ACK `sender_key`
    is Key-A and `receiver_key` Key-B (the ACK is sent by A). `flags` is the whole
    flag byte, D..G included, so unknown flags round-trip.
    """

    subtype: ClassVar[int] = MPTCPOPT_MP_CAPABLE
    version: int = 1
    flags: int = MPC_FLAG_H
    sender_key: int | None = None
    receiver_key: int | None = None
    data_level_length: int | None = None
    checksum: int | None = None

    @property
    def checksum_required(self) -> bool:
        return bool(self.flags & MPC_FLAG_A)

    @property
    def extensibility(self) -> bool:
        return bool(self.flags & MPC_FLAG_B)

    @property
    def do_not_join(self) -> bool:
        """C flag (v1): do not establish subflows to this packet's source address."""
        return bool(self.flags & MPC_FLAG_C)

    @property
    def hmac_sha(self) -> bool:
        return bool(self.flags & MPC_FLAG_H)

    def emit(self) -> bytes:
        v = self.version
        try:
            if v >> 4 or self.flags >> 8:
                raise struct.error
            b2 = v  # subtype 0 in the high nibble
            if self.sender_key is None:
                if self.receiver_key is not None or self.data_level_length is not None:
                    raise EncodeError(
                        "MP_CAPABLE: receiver_key or data_level_length needs sender_key"
                    )
                if self.checksum is not None:
                    raise EncodeError("MP_CAPABLE: checksum needs data_level_length")
                if v == 0:
                    raise EncodeError("MP_CAPABLE v0 always carries the sender's key")
                return _HDR.pack(30, 4, b2, self.flags)
            if self.receiver_key is None:
                if self.data_level_length is not None or self.checksum is not None:
                    raise EncodeError("MP_CAPABLE: data_level_length needs both keys")
                return _HDR.pack(30, 12, b2, self.flags) + _Q.pack(self.sender_key)
            keys = _HDR.pack(30, 20, b2, self.flags) + _QQ.pack(self.sender_key, self.receiver_key)
            if self.data_level_length is None:
                if self.checksum is not None:
                    raise EncodeError("MP_CAPABLE: checksum needs data_level_length")
                return keys
            if v == 0:
                raise EncodeError("MP_CAPABLE v0 has no data-level length (v1 only)")
            if self.checksum is None:
                tail = _H.pack(self.data_level_length)
            else:
                tail = _HH.pack(self.data_level_length, self.checksum)
            return bytes((30, 20 + len(tail))) + keys[2:] + tail
        except (struct.error, TypeError):
            raise _diagnose(
                "MP_CAPABLE",
                [
                    ("version", self.version, 4),
                    ("flags", self.flags, 8),
                    ("sender_key", self.sender_key, 64),
                    ("receiver_key", self.receiver_key, 64),
                    ("data_level_length", self.data_level_length, 16),
                    ("checksum", self.checksum, 16),
                ],
            ) from None


_new_mp_capable = fast_constructor(MpCapable)


def _parse_mp_capable(d: Buffer, off: int, n: int, version: int | None) -> object:
    v = d[off + 2] & 0x0F
    if n < 4:
        return _malformed(d, off, n, f"MP_CAPABLE of length {n} (at least 4)")
    flags = d[off + 3]
    if n == 12:
        return _new_mp_capable(v, flags, _Q.unpack_from(d, off + 4)[0], None, None, None)
    if n == 20:
        a, b = _QQ.unpack_from(d, off + 4)
        return _new_mp_capable(v, flags, a, b, None, None)
    if v != 0:
        if n == 4:
            return _new_mp_capable(v, flags, None, None, None, None)
        if n == 22 or n == 24:
            a, b = _QQ.unpack_from(d, off + 4)
            dll = _H.unpack_from(d, off + 20)[0]
            csum = _H.unpack_from(d, off + 22)[0] if n == 24 else None
            return _new_mp_capable(v, flags, a, b, dll, csum)
        expected = "4, 12, 20, 22 or 24"
    else:
        expected = "12 or 20"
    return _malformed(d, off, n, f"MP_CAPABLE v{v} of length {n} (expected {expected})")


# --------------------------------------------------------------------------- MP_JOIN


@dataclass(frozen=True, slots=True)
class MpJoinSyn:
    """MP_JOIN on a SYN (12 bytes): B bit, address ID, the receiver's token, nonce R-A."""

    subtype: ClassVar[int] = MPTCPOPT_MP_JOIN
    address_id: int = 0
    token: int = 0
    nonce: int = 0
    backup: bool = False
    reserved: int = 0  # the 3 bits between subtype and B

    def emit(self) -> bytes:
        try:
            if self.reserved >> 3:
                raise struct.error
            b2 = 0x10 | (self.reserved << 1) | (1 if self.backup else 0)
            return _HDR.pack(30, 12, b2, self.address_id) + _II.pack(self.token, self.nonce)
        except (struct.error, TypeError):
            raise _diagnose(
                "MP_JOIN SYN",
                [
                    ("reserved", self.reserved, 3),
                    ("address_id", self.address_id, 8),
                    ("token", self.token, 32),
                    ("nonce", self.nonce, 32),
                ],
            ) from None


@dataclass(frozen=True, slots=True)
class MpJoinSynAck:
    """MP_JOIN on a SYN/ACK (16 bytes): B bit, address ID, leftmost 64 bits of HMAC-B, R-B."""

    subtype: ClassVar[int] = MPTCPOPT_MP_JOIN
    address_id: int = 0
    hmac: bytes = bytes(8)
    nonce: int = 0
    backup: bool = False
    reserved: int = 0

    def emit(self) -> bytes:
        mac = _check_bytes("MP_JOIN SYN/ACK", "hmac (truncated, 64 bits)", self.hmac, 8)
        try:
            if self.reserved >> 3:
                raise struct.error
            b2 = 0x10 | (self.reserved << 1) | (1 if self.backup else 0)
            return _HDR.pack(30, 16, b2, self.address_id) + mac + _I.pack(self.nonce)
        except (struct.error, TypeError):
            raise _diagnose(
                "MP_JOIN SYN/ACK",
                [
                    ("reserved", self.reserved, 3),
                    ("address_id", self.address_id, 8),
                    ("nonce", self.nonce, 32),
                ],
            ) from None


@dataclass(frozen=True, slots=True)
class MpJoinAck:
    """MP_JOIN on the third ACK (24 bytes): 160 bits of HMAC-A."""

    subtype: ClassVar[int] = MPTCPOPT_MP_JOIN
    hmac: bytes = bytes(20)
    reserved: int = 0  # 12 bits

    def emit(self) -> bytes:
        mac = _check_bytes("MP_JOIN ACK", "hmac (160 bits)", self.hmac, 20)
        if not isinstance(self.reserved, int) or self.reserved >> 12:
            raise _diagnose("MP_JOIN ACK", [("reserved", self.reserved, 12)])
        return _HDR.pack(30, 24, 0x10 | (self.reserved >> 8), self.reserved & 0xFF) + mac


_new_join_syn = fast_constructor(MpJoinSyn)
_new_join_synack = fast_constructor(MpJoinSynAck)
_new_join_ack = fast_constructor(MpJoinAck)


def _parse_mp_join(d: Buffer, off: int, n: int, version: int | None) -> object:
    b2 = d[off + 2]
    if n == 12:
        token, nonce = _II.unpack_from(d, off + 4)
        return _new_join_syn(d[off + 3], token, nonce, bool(b2 & 1), (b2 >> 1) & 7)
    if n == 16:
        nonce = _I.unpack_from(d, off + 12)[0]
        return _new_join_synack(
            d[off + 3], bytes(d[off + 4 : off + 12]), nonce, bool(b2 & 1), (b2 >> 1) & 7
        )
    if n == 24:
        return _new_join_ack(bytes(d[off + 4 : off + 24]), ((b2 & 0x0F) << 8) | d[off + 3])
    return _malformed(d, off, n, f"MP_JOIN of length {n} (expected 12, 16 or 24)")


# --------------------------------------------------------------------------- DSS


@dataclass(frozen=True, slots=True)
class Dss:
    """DSS (subtype 2): an optional data ACK and an optional mapping.

    Presence follows the fields: A is set iff `data_ack` is not None, M iff the mapping
    (`dsn`, `subflow_seq`, `data_level_length`) is. `data_ack_64` and `dsn_64` are the
    a and m bits as on the wire, kept even when their field is absent so that every
    flag byte round-trips. The checksum is present iff `checksum` is not None (only
    with a mapping). `reserved` holds the 7 bits between subtype and flags.
    """

    subtype: ClassVar[int] = MPTCPOPT_DSS
    data_ack: int | None = None
    dsn: int | None = None
    subflow_seq: int | None = None
    data_level_length: int | None = None
    checksum: int | None = None
    data_fin: bool = False
    data_ack_64: bool = False
    dsn_64: bool = False
    reserved: int = 0

    @property
    def flags(self) -> int:
        return (
            (DSS_DATA_FIN if self.data_fin else 0)
            | (DSS_DSN64 if self.dsn_64 else 0)
            | (DSS_MAPPING if self.dsn is not None else 0)
            | (DSS_ACK64 if self.data_ack_64 else 0)
            | (DSS_ACK if self.data_ack is not None else 0)
        )

    def emit(self) -> bytes:
        mapping = self.dsn is not None
        if mapping != (self.subflow_seq is not None) or mapping != (
            self.data_level_length is not None
        ):
            raise EncodeError("DSS: a mapping needs all of dsn, subflow_seq and data_level_length")
        if self.checksum is not None and not mapping:
            raise EncodeError("DSS: a checksum is only carried with a mapping")
        try:
            r = self.reserved
            if r >> 7:
                raise struct.error
            flags = self.flags
            layout = _DSS_EMIT[(flags & 0x0F) | (0x10 if self.checksum is not None else 0)]
            head = (0x20 | (r >> 3), ((r & 7) << 5) | flags)
            if mapping:
                if self.data_ack is not None:
                    values: tuple[int, ...] = (
                        self.data_ack,
                        self.dsn,
                        self.subflow_seq,
                        self.data_level_length,
                    )  # type: ignore[assignment]
                else:
                    values = (self.dsn, self.subflow_seq, self.data_level_length)  # type: ignore[assignment]
                if self.checksum is not None:
                    values += (self.checksum,)
            elif self.data_ack is not None:
                values = (self.data_ack,)
            else:
                values = ()
            return layout.pack(30, layout.size, *head, *values)
        except (struct.error, TypeError):
            raise _diagnose(
                "DSS",
                [
                    ("reserved", self.reserved, 7),
                    ("data_ack", self.data_ack, 64 if self.data_ack_64 else 32),
                    ("dsn", self.dsn, 64 if self.dsn_64 else 32),
                    ("subflow_seq", self.subflow_seq, 32),
                    ("data_level_length", self.data_level_length, 16),
                    ("checksum", self.checksum, 16),
                ],
            ) from None


def _dss_layout(flags: int, csum: bool) -> struct.Struct:
    fmt = "!BBBB"
    if flags & DSS_ACK:
        fmt += "Q" if flags & DSS_ACK64 else "I"
    if flags & DSS_MAPPING:
        fmt += ("Q" if flags & DSS_DSN64 else "I") + "IH" + ("H" if csum else "")
    return struct.Struct(fmt)


# Index: low 4 flag bits (m M a A), plus 0x10 when the checksum is present.
_DSS_EMIT = [_dss_layout(i & 0x0F, bool(i & 0x10)) for i in range(32)]
# For parsing: per low-4-bit flags, the length without checksum and the body layouts.
_DSS_LEN = [_DSS_EMIT[i].size for i in range(16)]
_DSS_BODY = [struct.Struct("!" + _DSS_EMIT[i].format[5:]) for i in range(32)]
_new_dss = fast_constructor(Dss)


def _parse_dss(d: Buffer, off: int, n: int, version: int | None) -> object:
    if n < 4:
        return _malformed(d, off, n, f"DSS of length {n} (at least 4)")
    b2 = d[off + 2]
    b3 = d[off + 3]
    f = b3 & 0x0F
    expected = _DSS_LEN[f]
    if n == expected:
        csum = 0
    elif n == expected + 2 and f & DSS_MAPPING:
        csum = 0x10
    else:
        return _malformed(
            d,
            off,
            n,
            f"DSS with flags 0x{b3 & 0x1F:02x} of length {n} (expected {expected}"
            + (f" or {expected + 2} with checksum)" if f & DSS_MAPPING else ")"),
        )
    t = _DSS_BODY[f | csum].unpack_from(d, off + 4)
    reserved = ((b2 & 0x0F) << 3) | (b3 >> 5)
    if f & DSS_ACK:
        ack = t[0]
        i = 1
    else:
        ack = None
        i = 0
    if f & DSS_MAPPING:
        return _new_dss(
            ack,
            t[i],
            t[i + 1],
            t[i + 2],
            t[i + 3] if csum else None,
            bool(b3 & DSS_DATA_FIN),
            bool(f & DSS_ACK64),
            bool(f & DSS_DSN64),
            reserved,
        )
    return _new_dss(
        ack,
        None,
        None,
        None,
        None,
        bool(b3 & DSS_DATA_FIN),
        bool(f & DSS_ACK64),
        bool(f & DSS_DSN64),
        reserved,
    )


# --------------------------------------------------------------------------- ADD_ADDR

IPAddress = IPv4Address | IPv6Address


def _address_bytes(option: str, address: object) -> bytes:
    if not isinstance(address, IPv4Address | IPv6Address):
        raise EncodeError(
            f"{option}: address must be an ipaddress.IPv4Address or IPv6Address, "
            f"not {type(address).__name__}"
        )
    return address.packed


def _port_bytes(option: str, port: object) -> bytes:
    if port is None:
        return b""
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise EncodeError(f"{option}: port={port!r} is not a 16-bit port (None when absent)")
    return _H.pack(port)


def _check_u8(option: str, name: str, value: object) -> int:
    if not isinstance(value, int) or not 0 <= value <= 0xFF:
        raise EncodeError(f"{option}: {name}={value!r} is out of range for 8 bits")
    return value


@dataclass(frozen=True, slots=True)
class AddAddrV0:
    """ADD_ADDR of RFC 6824 (v0): IP version nibble, address ID, address, optional port.

    8 or 10 bytes for IPv4, 20 or 22 for IPv6; no HMAC, no echo. The nibble follows
    from the address family.
    """

    subtype: ClassVar[int] = MPTCPOPT_ADD_ADDR
    address_id: int
    address: IPv4Address | IPv6Address
    port: int | None = None

    def emit(self) -> bytes:
        addr = _address_bytes("ADD_ADDR v0", self.address)
        port = _port_bytes("ADD_ADDR v0", self.port)
        aid = _check_u8("ADD_ADDR v0", "address_id", self.address_id)
        ipver = 4 if len(addr) == 4 else 6
        return bytes((30, 4 + len(addr) + len(port), 0x30 | ipver, aid)) + addr + port


@dataclass(frozen=True, slots=True)
class AddAddrV1:
    """ADD_ADDR of RFC 8684 (v1): E bit, address ID, address, optional port, HMAC.

    `hmac` is the truncated 64-bit HMAC (8 bytes) on an announcement and None on an
    echo (E set), as the kernel requires. IPv4: 16/18 bytes, echo 8/10; IPv6: 28/30,
    echo 20/22. `reserved` holds the 3 bits between subtype and E.
    """

    subtype: ClassVar[int] = MPTCPOPT_ADD_ADDR
    address_id: int
    address: IPv4Address | IPv6Address
    port: int | None = None
    hmac: bytes | None = None
    echo: bool = False
    reserved: int = 0

    def emit(self) -> bytes:
        addr = _address_bytes("ADD_ADDR", self.address)
        port = _port_bytes("ADD_ADDR", self.port)
        aid = _check_u8("ADD_ADDR", "address_id", self.address_id)
        if self.echo:
            if self.hmac is not None:
                raise EncodeError("ADD_ADDR: an echo (E=1) carries no HMAC; set hmac=None")
            mac = b""
        else:
            if self.hmac is None:
                raise EncodeError("ADD_ADDR: an announcement (E=0) needs the 64-bit hmac")
            mac = _check_bytes("ADD_ADDR", "hmac (truncated, 64 bits)", self.hmac, 8)
        if not isinstance(self.reserved, int) or self.reserved >> 3:
            raise _diagnose("ADD_ADDR", [("reserved", self.reserved, 3)])
        b2 = 0x30 | (self.reserved << 1) | (1 if self.echo else 0)
        body = addr + port + mac
        return bytes((30, 4 + len(body), b2, aid)) + body


_V0_ADD_ADDR_LENGTHS = {4: (8, 10), 6: (20, 22)}
# v1: (echo, length) -> (address size, port present)
_V1_ADD_ADDR_LAYOUT = {
    (False, 16): (4, False),
    (False, 18): (4, True),
    (False, 28): (16, False),
    (False, 30): (16, True),
    (True, 8): (4, False),
    (True, 10): (4, True),
    (True, 20): (16, False),
    (True, 22): (16, True),
}


def _ip(raw: bytes) -> IPv4Address | IPv6Address:
    return IPv4Address(raw) if len(raw) == 4 else IPv6Address(raw)


def _parse_add_addr(d: Buffer, off: int, n: int, version: int | None) -> object:
    if n < 8:
        return _malformed(d, off, n, f"ADD_ADDR of length {n} (at least 8)")
    nibble = d[off + 2] & 0x0F
    aid = d[off + 3]
    if version == 0 or (
        version is None and nibble in _V0_ADD_ADDR_LENGTHS and n in _V0_ADD_ADDR_LENGTHS[nibble]
    ):
        if nibble not in _V0_ADD_ADDR_LENGTHS:
            return _malformed(d, off, n, f"ADD_ADDR v0 with IP version {nibble} (expected 4 or 6)")
        if n not in _V0_ADD_ADDR_LENGTHS[nibble]:
            return _malformed(
                d,
                off,
                n,
                f"ADD_ADDR v0 IPv{nibble} of length {n} "
                f"(expected {' or '.join(map(str, _V0_ADD_ADDR_LENGTHS[nibble]))})",
            )
        size = 4 if nibble == 4 else 16
        port = _H.unpack_from(d, off + 4 + size)[0] if n == 4 + size + 2 else None
        return AddAddrV0(aid, _ip(bytes(d[off + 4 : off + 4 + size])), port)
    echo = bool(nibble & 1)
    layout = _V1_ADD_ADDR_LAYOUT.get((echo, n))
    if layout is None:
        expected = "8, 10, 20 or 22" if echo else "16, 18, 28 or 30"
        kind = "echo" if echo else "announcement"
        return _malformed(d, off, n, f"ADD_ADDR v1 {kind} of length {n} (expected {expected})")
    size, has_port = layout
    p = off + 4 + size
    port = None
    if has_port:
        port = _H.unpack_from(d, p)[0]
        p += 2
    mac = None if echo else bytes(d[p : p + 8])
    return AddAddrV1(aid, _ip(bytes(d[off + 4 : off + 4 + size])), port, mac, echo, nibble >> 1)


# --------------------------------------------------------------------------- REMOVE_ADDR


@dataclass(frozen=True, slots=True)
class RemoveAddr:
    """REMOVE_ADDR (subtype 4): one or more address IDs."""

    subtype: ClassVar[int] = MPTCPOPT_RM_ADDR
    address_ids: tuple[int, ...]
    reserved: int = 0  # the 4 bits after the subtype

    def emit(self) -> bytes:
        ids = self.address_ids
        if not isinstance(ids, tuple | list) or not ids:
            raise EncodeError("REMOVE_ADDR: needs at least one address ID")
        if len(ids) > MAX_REMOVE_ADDR_IDS:
            raise EncodeError(
                f"REMOVE_ADDR: {len(ids)} address IDs do not fit in 40 bytes of TCP options "
                f"(at most {MAX_REMOVE_ADDR_IDS})"
            )
        if not isinstance(self.reserved, int) or self.reserved >> 4:
            raise _diagnose("REMOVE_ADDR", [("reserved", self.reserved, 4)])
        try:
            return bytes((30, 3 + len(ids), 0x40 | self.reserved, *ids))
        except (ValueError, TypeError):
            raise EncodeError(f"REMOVE_ADDR: address IDs must be 0..255, got {ids!r}") from None


def _parse_remove_addr(d: Buffer, off: int, n: int, version: int | None) -> object:
    if n < 4:
        return _malformed(d, off, n, "REMOVE_ADDR without any address ID")
    return RemoveAddr(tuple(d[off + 3 : off + n]), d[off + 2] & 0x0F)


# --------------------------------------------------------------------------- MP_PRIO


@dataclass(frozen=True, slots=True)
class MpPrio:
    """MP_PRIO (subtype 5): B bit; v0 also allows an address ID (4 bytes)."""

    subtype: ClassVar[int] = MPTCPOPT_MP_PRIO
    backup: bool = False
    address_id: int | None = None
    reserved: int = 0  # the 3 bits between subtype and B

    def emit(self) -> bytes:
        if not isinstance(self.reserved, int) or self.reserved >> 3:
            raise _diagnose("MP_PRIO", [("reserved", self.reserved, 3)])
        b2 = 0x50 | (self.reserved << 1) | (1 if self.backup else 0)
        if self.address_id is None:
            return bytes((30, 3, b2))
        return bytes((30, 4, b2, _check_u8("MP_PRIO", "address_id", self.address_id)))


def _parse_mp_prio(d: Buffer, off: int, n: int, version: int | None) -> object:
    b2 = d[off + 2]
    if n == 3:
        return MpPrio(bool(b2 & 1), None, (b2 >> 1) & 7)
    if n == 4:
        return MpPrio(bool(b2 & 1), d[off + 3], (b2 >> 1) & 7)
    return _malformed(d, off, n, f"MP_PRIO of length {n} (expected 3, or 4 with an address ID)")


# --------------------------------------------------------------------------- MP_FAIL, MP_FASTCLOSE


def _emit_12(option: str, subtype: int, reserved: object, name: str, value: object) -> bytes:
    try:
        if reserved >> 12:  # type: ignore[operator]
            raise struct.error
        return _HDR.pack(30, 12, (subtype << 4) | (reserved >> 8), reserved & 0xFF) + _Q.pack(  # type: ignore[operator]
            value
        )
    except (struct.error, TypeError):
        raise _diagnose(option, [("reserved", reserved, 12), (name, value, 64)]) from None


@dataclass(frozen=True, slots=True)
class MpFail:
    """MP_FAIL (subtype 6, 12 bytes): the 64-bit DSN where the checksum failed."""

    subtype: ClassVar[int] = MPTCPOPT_MP_FAIL
    dsn: int
    reserved: int = 0  # 12 bits

    def emit(self) -> bytes:
        return _emit_12("MP_FAIL", MPTCPOPT_MP_FAIL, self.reserved, "dsn", self.dsn)


@dataclass(frozen=True, slots=True)
class MpFastclose:
    """MP_FASTCLOSE (subtype 7, 12 bytes): the option receiver's key."""

    subtype: ClassVar[int] = MPTCPOPT_MP_FASTCLOSE
    receiver_key: int
    reserved: int = 0  # 12 bits (v1 calls the low ones flags; none is defined)

    def emit(self) -> bytes:
        return _emit_12(
            "MP_FASTCLOSE", MPTCPOPT_MP_FASTCLOSE, self.reserved, "receiver_key", self.receiver_key
        )


def _parse_12(d: Buffer, off: int, n: int, version: int | None) -> object:
    subtype = d[off + 2] >> 4
    if n != 12:
        name = "MP_FAIL" if subtype == MPTCPOPT_MP_FAIL else "MP_FASTCLOSE"
        return _malformed(d, off, n, f"{name} of length {n} (expected 12)")
    reserved = ((d[off + 2] & 0x0F) << 8) | d[off + 3]
    value = _Q.unpack_from(d, off + 4)[0]
    return MpFail(value, reserved) if subtype == MPTCPOPT_MP_FAIL else MpFastclose(value, reserved)


# --------------------------------------------------------------------------- MP_TCPRST


@dataclass(frozen=True, slots=True)
class MpTcpRst:
    """MP_TCPRST (v1, subtype 8, 4 bytes): U/V/W/T flags and a reason code.

    Reasons 0..6 are defined (MPTCP_RST_*); others are kept as they are.
    """

    subtype: ClassVar[int] = MPTCPOPT_RST
    reason: int = MPTCP_RST_EUNSPEC
    flags: int = 0  # U V W T, T (transient) = 0x1

    @property
    def transient(self) -> bool:
        return bool(self.flags & TCPRST_FLAG_T)

    def emit(self) -> bytes:
        try:
            if self.flags >> 4:
                raise struct.error
            return _HDR.pack(30, 4, 0x80 | self.flags, self.reason)
        except (struct.error, TypeError):
            raise _diagnose(
                "MP_TCPRST", [("flags", self.flags, 4), ("reason", self.reason, 8)]
            ) from None


def _parse_tcprst(d: Buffer, off: int, n: int, version: int | None) -> object:
    if version == 0:  # no subtype 8 in RFC 6824
        return UnknownMptcpOption(MPTCPOPT_RST, bytes(d[off : off + n]))
    if n != 4:
        return _malformed(d, off, n, f"MP_TCPRST of length {n} (expected 4)")
    return MpTcpRst(d[off + 3], d[off + 2] & 0x0F)


# --------------------------------------------------------------------------- unknown


@dataclass(frozen=True, slots=True)
class UnknownMptcpOption:
    """A subtype this codec does not know (9..15, or 8 in v0): kept whole, re-emitted as is."""

    subtype: int
    raw: bytes

    def emit(self) -> bytes:
        raw = self.raw
        if (
            not isinstance(raw, bytes | bytearray)
            or not 3 <= len(raw) <= MAX_OPTION_LENGTH
            or raw[0] != TCPOPT_MPTCP
            or raw[1] != len(raw)
            or raw[2] >> 4 != self.subtype
        ):
            raise EncodeError(
                "unknown MPTCP option: raw must be the whole option (kind 30, a length "
                "equal to len(raw), 3..40 bytes, the subtype in the third byte's high nibble)"
            )
        return bytes(raw)


def _parse_unknown(d: Buffer, off: int, n: int, version: int | None) -> object:
    return UnknownMptcpOption(d[off + 2] >> 4, bytes(d[off : off + n]))


# --------------------------------------------------------------------------- entry points

MptcpOption = (
    MpCapable
    | MpJoinSyn
    | MpJoinSynAck
    | MpJoinAck
    | Dss
    | AddAddrV0
    | AddAddrV1
    | RemoveAddr
    | MpPrio
    | MpFail
    | MpFastclose
    | MpTcpRst
    | UnknownMptcpOption
)

_ParseFn = Callable[[Buffer, int, int, "int | None"], object]
_PARSERS: list[_ParseFn] = [_parse_unknown] * 16
_PARSERS[MPTCPOPT_MP_CAPABLE] = _parse_mp_capable
_PARSERS[MPTCPOPT_MP_JOIN] = _parse_mp_join
_PARSERS[MPTCPOPT_DSS] = _parse_dss
_PARSERS[MPTCPOPT_ADD_ADDR] = _parse_add_addr
_PARSERS[MPTCPOPT_RM_ADDR] = _parse_remove_addr
_PARSERS[MPTCPOPT_MP_PRIO] = _parse_mp_prio
_PARSERS[MPTCPOPT_MP_FAIL] = _parse_12
_PARSERS[MPTCPOPT_MP_FASTCLOSE] = _parse_12
_PARSERS[MPTCPOPT_RST] = _parse_tcprst


def _malformed(d: Buffer, off: int, n: int, reason: str) -> MalformedOption:
    return MalformedOption(off, reason, d[off + 2] >> 4, bytes(d[off : off + n]))


def parse_mptcp_at(
    d: Buffer, off: int, n: int, version: int | None
) -> MptcpOption | MalformedOption:
    """Parse the option at `off` whose length byte `n` (>= 3) is known to fit in `d`."""
    if n > MAX_OPTION_LENGTH:  # only from a buffer that is not a TCP header's options
        return _malformed(
            d, off, n, f"MPTCP option of length {n} exceeds the 40-byte TCP option space"
        )
    return _PARSERS[d[off + 2] >> 4](d, off, n, version)  # type: ignore[return-value]


def parse_mptcp_option(
    data: Buffer, offset: int = 0, *, version: int | None = None
) -> MptcpOption | MalformedOption:
    """Parse the MPTCP option that starts at `offset` in `data` (kind and length included).

    `version` (0 or 1) is the connection's MPTCP version where it is known; see the
    module docstring for where it matters. Never raises on any input.
    """
    end = len(data)
    if offset < 0 or offset >= end:
        return MalformedOption(offset, "no option at this offset", None, b"", None)
    kind = data[offset]
    if kind != TCPOPT_MPTCP:
        return MalformedOption(
            offset, f"TCP option kind {kind} is not MPTCP (30)", None, bytes(data[offset:]), kind
        )
    if offset + 2 > end:
        return MalformedOption(
            offset, "MPTCP option truncated before its length", None, bytes(data[offset:])
        )
    n = data[offset + 1]
    if n < 3:
        return MalformedOption(
            offset,
            f"MPTCP option of length {n} (at least 3)",
            data[offset + 2] >> 4 if offset + 2 < end else None,
            bytes(data[offset : offset + max(n, 2)]),
        )
    if offset + n > end:
        return MalformedOption(
            offset,
            f"MPTCP option of length {n} truncated to {end - offset} bytes",
            data[offset + 2] >> 4 if offset + 2 < end else None,
            bytes(data[offset:]),
        )
    return parse_mptcp_at(data, offset, n, version)
