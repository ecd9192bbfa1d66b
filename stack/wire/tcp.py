"""The TCP header, the TCP option list (parse and emit), and the option-space builder.

`parse_tcp` returns a light header whose options and payload are memoryview slices:
options are parsed only when `parse_tcp_options` is called on them. The option walker
never raises: a truncated or inconsistent option becomes a `MalformedOption` entry
(carrying its offset in the options area) and the walk goes on where the length byte
allows, or stops where it does not.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from stack.wire.errors import EncodeError, MalformedHeader, MalformedOption
from stack.wire.ip import (
    IPPROTO_TCP,
    IPv4Header,
    IPv6Header,
    emit_ip,
    internet_checksum,
    pseudo_header_value,
    transport_checksum_ok,
)
from stack.wire.mptcp import (
    AddAddrV0,
    AddAddrV1,
    Dss,
    MpCapable,
    MpFail,
    MpFastclose,
    MpJoinAck,
    MpJoinSyn,
    MpJoinSynAck,
    MpPrio,
    MptcpOption,
    MpTcpRst,
    RemoveAddr,
    UnknownMptcpOption,
    fast_constructor,
    parse_mptcp_at,
)

TCPOPT_EOL = 0
TCPOPT_NOP = 1
TCPOPT_MSS = 2
TCPOPT_WINDOW = 3
TCPOPT_SACK_PERM = 4
TCPOPT_SACK = 5
TCPOPT_TIMESTAMP = 8
TCPOPT_MPTCP = 30

# TCP flags (low byte of the flags field; AE/NS is 0x100).
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

MAX_OPTIONS_LENGTH = 40


# --------------------------------------------------------------------------- options


@dataclass(frozen=True, slots=True)
class EndOfOptionList:
    """EOL (kind 0) and whatever follows it in the options area (normally zeros)."""

    padding: bytes = b""

    def emit(self) -> bytes:
        return b"\x00" + bytes(self.padding)


@dataclass(frozen=True, slots=True)
class NoOperation:
    def emit(self) -> bytes:
        return b"\x01"


NOP = NoOperation()


@dataclass(frozen=True, slots=True)
class MaxSegmentSize:
    mss: int

    def emit(self) -> bytes:
        return _pack_or_explain(_MSS, "MSS", (2, 4, self.mss), "mss is 16 bits")


@dataclass(frozen=True, slots=True)
class WindowScale:
    shift: int  # kept as sent; RFC 7323 §2.3 has receivers treat > 14 as 14

    def emit(self) -> bytes:
        return _pack_or_explain(_WS, "window scale", (3, 3, self.shift), "shift is 8 bits")


@dataclass(frozen=True, slots=True)
class SackPermitted:
    def emit(self) -> bytes:
        return b"\x04\x02"


@dataclass(frozen=True, slots=True)
class Sack:
    blocks: tuple[tuple[int, int], ...]  # (left edge, right edge), 1..4 blocks

    def emit(self) -> bytes:
        if not 1 <= len(self.blocks) <= 4:
            raise EncodeError(f"SACK: 1 to 4 blocks fit in the options, got {len(self.blocks)}")
        try:
            edges = [edge for block in self.blocks for edge in block]
            if len(edges) != 2 * len(self.blocks):
                raise struct.error
            return bytes((5, 2 + 8 * len(self.blocks))) + struct.pack(f"!{len(edges)}I", *edges)
        except (struct.error, TypeError):
            raise EncodeError(
                f"SACK: each block is two 32-bit sequence numbers, got {self.blocks!r}"
            ) from None


@dataclass(frozen=True, slots=True)
class Timestamps:
    tsval: int
    tsecr: int

    def emit(self) -> bytes:
        return _pack_or_explain(
            _TS, "timestamps", (8, 10, self.tsval, self.tsecr), "tsval and tsecr are 32 bits"
        )


@dataclass(frozen=True, slots=True)
class UnknownTcpOption:
    """An option kind this codec does not interpret, kept whole (kind and length included)."""

    kind: int
    raw: bytes

    def emit(self) -> bytes:
        raw = self.raw
        if len(raw) < 2 or raw[0] != self.kind or raw[1] != len(raw):
            raise EncodeError("unknown TCP option: raw must be kind, length=len(raw), value")
        return bytes(raw)


TcpOption = (
    EndOfOptionList
    | NoOperation
    | MaxSegmentSize
    | WindowScale
    | SackPermitted
    | Sack
    | Timestamps
    | UnknownTcpOption
    | MptcpOption
    | MalformedOption
)

MPTCP_OPTION_TYPES: tuple[type, ...] = (
    MpCapable,
    MpJoinSyn,
    MpJoinSynAck,
    MpJoinAck,
    Dss,
    AddAddrV0,
    AddAddrV1,
    RemoveAddr,
    MpPrio,
    MpFail,
    MpFastclose,
    MpTcpRst,
    UnknownMptcpOption,
)

_MSS = struct.Struct("!BBH")
_WS = struct.Struct("!BBB")
_TS = struct.Struct("!BBII")
_EXPECTED_LENGTH = {TCPOPT_MSS: 4, TCPOPT_WINDOW: 3, TCPOPT_SACK_PERM: 2, TCPOPT_TIMESTAMP: 10}
_SACK_PERMITTED = SackPermitted()
_new_timestamps = fast_constructor(Timestamps)  # on every data segment: skip __init__


def _pack_or_explain(s: struct.Struct, name: str, values: tuple[int, ...], why: str) -> bytes:
    try:
        return s.pack(*values)
    except (struct.error, TypeError):
        raise EncodeError(f"{name}: cannot encode {values[2:]!r}: {why}") from None


def parse_tcp_options(
    data: bytes | bytearray | memoryview, *, version: int | None = None
) -> list[TcpOption]:
    """Walk a whole TCP options area. Never raises; offsets are from its start."""
    out: list[TcpOption] = []
    append = out.append
    end = len(data)
    i = 0
    while i < end:
        kind = data[i]
        if kind == TCPOPT_NOP:
            append(NOP)
            i += 1
            continue
        if kind == TCPOPT_EOL:
            append(EndOfOptionList(bytes(data[i + 1 :])))
            break
        if i + 1 >= end:
            append(
                MalformedOption(
                    i,
                    f"option kind {kind} truncated before its length",
                    None,
                    bytes(data[i:]),
                    kind,
                )
            )
            break
        n = data[i + 1]
        if n < 2 or i + n > end:
            append(
                MalformedOption(
                    i,
                    f"option kind {kind} of length {n} does not fit the {end - i} bytes left",
                    data[i + 2] >> 4 if kind == TCPOPT_MPTCP and i + 2 < end else None,
                    bytes(data[i:]),
                    kind,
                )
            )
            break
        if kind == TCPOPT_MPTCP:
            if n < 3:
                append(
                    MalformedOption(
                        i, f"MPTCP option of length {n} (at least 3)", None, bytes(data[i : i + n])
                    )
                )
            else:
                append(parse_mptcp_at(data, i, n, version))
        elif kind == TCPOPT_TIMESTAMP and n == 10:
            _, _, tsval, tsecr = _TS.unpack_from(data, i)
            append(_new_timestamps(tsval, tsecr))
        elif kind == TCPOPT_MSS and n == 4:
            append(MaxSegmentSize(_MSS.unpack_from(data, i)[2]))
        elif kind == TCPOPT_WINDOW and n == 3:
            append(WindowScale(data[i + 2]))
        elif kind == TCPOPT_SACK_PERM and n == 2:
            append(_SACK_PERMITTED)
        elif kind == TCPOPT_SACK:
            if n in (10, 18, 26, 34):
                edges = struct.unpack_from(f"!{(n - 2) // 4}I", data, i + 2)
                append(Sack(tuple(zip(edges[0::2], edges[1::2], strict=True))))
            else:
                append(
                    MalformedOption(
                        i,
                        f"SACK of length {n} (expected 10, 18, 26 or 34)",
                        None,
                        bytes(data[i : i + n]),
                        kind,
                    )
                )
        elif kind in _EXPECTED_LENGTH:
            append(
                MalformedOption(
                    i,
                    f"option kind {kind} of length {n} (expected {_EXPECTED_LENGTH[kind]})",
                    None,
                    bytes(data[i : i + n]),
                    kind,
                )
            )
        else:
            append(UnknownTcpOption(kind, bytes(data[i : i + n])))
        i += n
    return out


def emit_tcp_options(options: Iterable[TcpOption]) -> bytes:
    """The options' bytes, concatenated as given (no padding: see build_options)."""
    return b"".join([option.emit() for option in options])


# --------------------------------------------------------------------------- option space

DEFAULT_OPTION_PRIORITY: tuple[type | tuple[type, ...], ...] = (
    MPTCP_OPTION_TYPES,
    MaxSegmentSize,
    SackPermitted,
    Timestamps,
    WindowScale,
)


@dataclass(frozen=True, slots=True)
class OptionSpace:
    """The options that fit, as bytes padded to a multiple of 4, and those that did not."""

    data: bytes
    included: tuple[TcpOption, ...]
    dropped: tuple[TcpOption, ...]


def build_options(
    options: Sequence[TcpOption],
    budget: int = MAX_OPTIONS_LENGTH,
    *,
    priority: Sequence[type | tuple[type, ...]] = DEFAULT_OPTION_PRIORITY,
    pad_with_eol: bool = False,
) -> OptionSpace:
    """Fit `options` into `budget` bytes, dropping the least important first.

    Options are admitted in `priority` order (by default: MPTCP, MSS, SACK-permitted,
    timestamps, window scale; anything not named comes last, in the caller's order),
    each only if the padded total still fits. The ones admitted are emitted in the
    caller's order, then padded to a multiple of 4 with NOPs (or an EOL and zeros).
    """
    if budget < 0 or budget > MAX_OPTIONS_LENGTH:
        raise EncodeError(f"option budget {budget} outside 0..{MAX_OPTIONS_LENGTH}")

    def rank(option: TcpOption) -> int:
        for r, kinds in enumerate(priority):
            if isinstance(option, kinds):
                return r
        return len(priority)

    encoded = [option.emit() for option in options]
    order = sorted(range(len(options)), key=lambda k: rank(options[k]))  # stable
    used = 0
    admitted = set()
    for k in order:
        size = len(encoded[k])
        if (used + size + 3) & ~3 <= budget:
            admitted.add(k)
            used += size
    data = b"".join(encoded[k] for k in range(len(options)) if k in admitted)
    pad = -len(data) & 3
    if pad:
        data += b"\x00" * pad if pad_with_eol else b"\x01" * pad
    return OptionSpace(
        data,
        tuple(options[k] for k in range(len(options)) if k in admitted),
        tuple(options[k] for k in range(len(options)) if k not in admitted),
    )


# --------------------------------------------------------------------------- header

_TCP = struct.Struct("!HHIIHHHH")


class TcpHeader:
    """A parsed TCP header. `options` and `payload` are memoryview slices of the input.

    `flags` holds the 12 bits after the data offset (reserved bits and AE included), so
    nothing on the wire is lost; FIN..CWR are its low byte.
    """

    __slots__ = (
        "ack",
        "checksum",
        "data_offset",
        "dst_port",
        "flags",
        "options",
        "payload",
        "seq",
        "src_port",
        "urgent",
        "window",
    )

    def __init__(
        self,
        src_port: int,
        dst_port: int,
        seq: int,
        ack: int,
        data_offset: int,
        flags: int,
        window: int,
        checksum: int,
        urgent: int,
        options: memoryview,
        payload: memoryview,
    ) -> None:
        self.src_port = src_port
        self.dst_port = dst_port
        self.seq = seq
        self.ack = ack
        self.data_offset = data_offset
        self.flags = flags
        self.window = window
        self.checksum = checksum
        self.urgent = urgent
        self.options = options
        self.payload = payload

    def parse_options(self, *, version: int | None = None) -> list[TcpOption]:
        return parse_tcp_options(self.options, version=version)

    @property
    def syn(self) -> bool:
        return bool(self.flags & SYN)

    @property
    def has_ack(self) -> bool:
        return bool(self.flags & ACK)

    @property
    def fin(self) -> bool:
        return bool(self.flags & FIN)

    @property
    def rst(self) -> bool:
        return bool(self.flags & RST)

    def __repr__(self) -> str:
        return (
            f"TcpHeader({self.src_port} > {self.dst_port}, flags {flags_text(self.flags)}, "
            f"seq {self.seq}, ack {self.ack}, win {self.window}, "
            f"options {len(self.options)} B, payload {len(self.payload)} B)"
        )


def flags_text(flags: int) -> str:
    """tcpdump's flag letters: S, F, R, P, ., U, E, W."""
    text = "".join(
        c
        for bit, c in (
            (SYN, "S"),
            (FIN, "F"),
            (RST, "R"),
            (PSH, "P"),
            (URG, "U"),
            (ECE, "E"),
            (CWR, "W"),
        )
        if flags & bit
    )
    return text + "." if flags & ACK else text or "none"


def parse_tcp(segment: bytes | bytearray | memoryview) -> TcpHeader | MalformedHeader:
    """Parse a TCP header; the payload is everything after the options."""
    mv = segment if isinstance(segment, memoryview) else memoryview(segment)
    n = len(mv)
    if n < 20:
        return MalformedHeader("tcp", 0, f"{n} bytes, a TCP header needs 20")
    sport, dport, seq, ack, off_flags, window, csum, urg = _TCP.unpack_from(mv)
    hlen = (off_flags >> 12) * 4
    if hlen < 20:
        return MalformedHeader("tcp", 12, f"data offset {hlen} is below 20")
    if hlen > n:
        return MalformedHeader("tcp", 12, f"data offset {hlen} beyond the {n} bytes given")
    return TcpHeader(
        sport, dport, seq, ack, hlen, off_flags & 0x0FFF, window, csum, urg, mv[20:hlen], mv[hlen:]
    )


def tcp_checksum_ok(ip: IPv4Header | IPv6Header, segment: bytes | memoryview | None = None) -> bool:
    """Verify the TCP checksum of `segment` (default: the IP payload) with ip's pseudo-header."""
    return transport_checksum_ok(
        ip.src, ip.dst, IPPROTO_TCP, ip.payload if segment is None else segment
    )


def emit_tcp(
    src_port: int,
    dst_port: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    *,
    options: bytes = b"",
    payload: bytes | bytearray | memoryview = b"",
    urgent: int = 0,
    src: bytes | None = None,
    dst: bytes | None = None,
) -> bytes:
    """A TCP segment. With `src` and `dst` (4 or 16 bytes each) the checksum is filled in.

    `options` are raw bytes (see build_options); their length must be a multiple of 4.
    """
    if len(options) > MAX_OPTIONS_LENGTH or len(options) & 3:
        raise EncodeError(
            f"TCP options of {len(options)} bytes: at most 40, and a multiple of 4 "
            "(pad them with build_options)"
        )
    try:
        if flags >> 12:
            raise struct.error
        header = _TCP.pack(
            src_port, dst_port, seq, ack, ((20 + len(options)) << 10) | flags, window, 0, urgent
        )
    except (struct.error, TypeError):
        raise EncodeError(
            "TCP: ports, window and urgent pointer are 16 bits, seq and ack 32 bits, flags 12 "
            f"bits; got {(src_port, dst_port, seq, ack, flags, window, urgent)!r}"
        ) from None
    segment = header + options + bytes(payload)
    if src is None or dst is None:
        return segment
    if len(src) not in (4, 16) or len(dst) != len(src):
        raise EncodeError("TCP checksum: src and dst must both be 4 or both 16 bytes")
    csum = internet_checksum(segment, pseudo_header_value(src, dst, IPPROTO_TCP, len(segment)))
    return segment[:16] + csum.to_bytes(2, "big") + segment[18:]


def emit_tcp_ip(
    src: bytes,
    dst: bytes,
    src_port: int,
    dst_port: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    *,
    options: bytes = b"",
    payload: bytes | bytearray | memoryview = b"",
    urgent: int = 0,
    ttl: int = 64,
) -> bytes:
    """A whole IPv4 or IPv6 packet (by address length) carrying a checksummed TCP segment."""
    segment = emit_tcp(
        src_port,
        dst_port,
        seq,
        ack,
        flags,
        window,
        options=options,
        payload=payload,
        urgent=urgent,
        src=src,
        dst=dst,
    )
    return emit_ip(src, dst, IPPROTO_TCP, segment, ttl=ttl)
