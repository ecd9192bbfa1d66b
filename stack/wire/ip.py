"""IPv4 and IPv6 headers, the internet checksum and the transport pseudo-headers.

Parsers return a light object with `__slots__` whose payload is a memoryview slice of
the input (no copy), or a `MalformedHeader`; they never raise. Addresses stay bytes
(4 or 16) on the data path; `ipaddress` objects are made only when asked for.

The checksum uses the identity that makes it fast in CPython: 2**16 == 1 (mod 0xFFFF),
so the one's-complement sum of the big-endian 16-bit words of a buffer is congruent to
the buffer read as one big integer, modulo 0xFFFF. One `int.from_bytes` and one `%`
replace a Python loop over the words.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

from stack.wire.errors import EncodeError, MalformedHeader

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
IPPROTO_TCP = 6
IPPROTO_ICMPV6 = 58

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_IPV4_DF = 0x4000


def ones_complement_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The 16-bit one's-complement sum of `data` (odd length: a zero byte is appended).

    `initial` is added in first (an integer already congruent to a sum of words, such
    as a pseudo-header value). The result is in 0..0xFFFF; 0 only when everything is 0.
    """
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    value += initial
    s = value % 0xFFFF
    return 0xFFFF if s == 0 and value else s


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The RFC 1071 checksum: the complement of the one's-complement sum."""
    return ~ones_complement_sum(data, initial) & 0xFFFF


def pseudo_header_value(src: bytes, dst: bytes, protocol: int, length: int) -> int:
    """The IPv4 (RFC 793) or IPv6 (RFC 8200 §8.1) pseudo-header as an integer to add in.

    Each piece sits on a 16-bit boundary, so adding their values is adding their words.
    """
    return int.from_bytes(src, "big") + int.from_bytes(dst, "big") + protocol + length


def transport_checksum(
    src: bytes, dst: bytes, protocol: int, segment: bytes | bytearray | memoryview
) -> int:
    """Checksum of a TCP segment or ICMPv6 message whose checksum field is zero."""
    return internet_checksum(segment, pseudo_header_value(src, dst, protocol, len(segment)))


def transport_checksum_ok(
    src: bytes, dst: bytes, protocol: int, segment: bytes | bytearray | memoryview
) -> bool:
    """True when the checksum in `segment` is right: everything sums to 0xFFFF."""
    pseudo = pseudo_header_value(src, dst, protocol, len(segment))
    return ones_complement_sum(segment, pseudo) == 0xFFFF


class IPv4Header:
    """A parsed IPv4 header. `payload` ends at total_length (link padding is dropped)."""

    __slots__ = (
        "checksum",
        "dst",
        "flags_fragment",
        "header",
        "identification",
        "options",
        "payload",
        "protocol",
        "src",
        "tos",
        "total_length",
        "ttl",
    )
    version = 4

    def __init__(
        self,
        tos: int,
        total_length: int,
        identification: int,
        flags_fragment: int,
        ttl: int,
        protocol: int,
        checksum: int,
        src: bytes,
        dst: bytes,
        header: memoryview,
        options: memoryview,
        payload: memoryview,
    ) -> None:
        self.tos = tos
        self.total_length = total_length
        self.identification = identification
        self.flags_fragment = flags_fragment
        self.ttl = ttl
        self.protocol = protocol
        self.checksum = checksum
        self.src = src
        self.dst = dst
        self.header = header
        self.options = options
        self.payload = payload

    @property
    def dont_fragment(self) -> bool:
        return bool(self.flags_fragment & _IPV4_DF)

    @property
    def is_fragment(self) -> bool:
        """More fragments set or a non-zero offset: the payload is not a whole segment."""
        return bool(self.flags_fragment & 0x3FFF)

    @property
    def src_address(self) -> IPv4Address:
        return IPv4Address(self.src)

    @property
    def dst_address(self) -> IPv4Address:
        return IPv4Address(self.dst)

    def checksum_ok(self) -> bool:
        return ones_complement_sum(self.header) == 0xFFFF

    def __repr__(self) -> str:
        return (
            f"IPv4Header({self.src_address} > {self.dst_address}, proto {self.protocol}, "
            f"len {self.total_length}, ttl {self.ttl}, id {self.identification})"
        )


class IPv6Header:
    """A parsed IPv6 fixed header; extension headers are not walked (see next_header)."""

    __slots__ = (
        "dst",
        "flow_label",
        "hop_limit",
        "next_header",
        "payload",
        "payload_length",
        "src",
        "traffic_class",
    )
    version = 6

    def __init__(
        self,
        traffic_class: int,
        flow_label: int,
        payload_length: int,
        next_header: int,
        hop_limit: int,
        src: bytes,
        dst: bytes,
        payload: memoryview,
    ) -> None:
        self.traffic_class = traffic_class
        self.flow_label = flow_label
        self.payload_length = payload_length
        self.next_header = next_header
        self.hop_limit = hop_limit
        self.src = src
        self.dst = dst
        self.payload = payload

    @property
    def protocol(self) -> int:
        """The same name as IPv4's, for code that serves both families."""
        return self.next_header

    @property
    def src_address(self) -> IPv6Address:
        return IPv6Address(self.src)

    @property
    def dst_address(self) -> IPv6Address:
        return IPv6Address(self.dst)

    def __repr__(self) -> str:
        return (
            f"IPv6Header({self.src_address} > {self.dst_address}, next {self.next_header}, "
            f"len {self.payload_length}, hlim {self.hop_limit})"
        )


def parse_ipv4(data: bytes | bytearray | memoryview) -> IPv4Header | MalformedHeader:
    mv = data if isinstance(data, memoryview) else memoryview(data)
    n = len(mv)
    if n < 20:
        return MalformedHeader("ipv4", 0, f"{n} bytes, an IPv4 header needs 20")
    vihl, tos, total, ident, ff, ttl, proto, csum, src, dst = _IPV4.unpack_from(mv)
    if vihl >> 4 != 4:
        return MalformedHeader("ipv4", 0, f"version {vihl >> 4}, expected 4")
    hlen = (vihl & 0x0F) * 4
    if hlen < 20:
        return MalformedHeader("ipv4", 0, f"header length {hlen} is below 20")
    if hlen > n:
        return MalformedHeader("ipv4", 0, f"header length {hlen} beyond the {n} bytes given")
    if total < hlen or total > n:
        return MalformedHeader(
            "ipv4", 2, f"total length {total} outside {hlen}..{n} (header .. bytes given)"
        )
    return IPv4Header(
        tos, total, ident, ff, ttl, proto, csum, src, dst, mv[:hlen], mv[20:hlen], mv[hlen:total]
    )


def parse_ipv6(data: bytes | bytearray | memoryview) -> IPv6Header | MalformedHeader:
    mv = data if isinstance(data, memoryview) else memoryview(data)
    n = len(mv)
    if n < 40:
        return MalformedHeader("ipv6", 0, f"{n} bytes, an IPv6 header needs 40")
    vtcfl, plen, nh, hlim, src, dst = _IPV6.unpack_from(mv)
    if vtcfl >> 28 != 6:
        return MalformedHeader("ipv6", 0, f"version {vtcfl >> 28}, expected 6")
    if plen > n - 40:
        return MalformedHeader("ipv6", 4, f"payload length {plen} beyond the {n - 40} bytes given")
    if plen == 0 and n > 40:
        # A jumbogram (RFC 2675) or a lie; neither can be a frame on our links.
        return MalformedHeader("ipv6", 4, "payload length 0 with data (jumbograms unsupported)")
    return IPv6Header(
        (vtcfl >> 20) & 0xFF, vtcfl & 0xFFFFF, plen, nh, hlim, src, dst, mv[40 : 40 + plen]
    )


def parse_ip(data: bytes | bytearray | memoryview) -> IPv4Header | IPv6Header | MalformedHeader:
    """IPv4 or IPv6 by the version nibble."""
    if not data:
        return MalformedHeader("ip", 0, "empty packet")
    version = data[0] >> 4
    if version == 4:
        return parse_ipv4(data)
    if version == 6:
        return parse_ipv6(data)
    return MalformedHeader("ip", 0, f"IP version {version}")


def _address(name: str, value: bytes, size: int) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != size:
        raise EncodeError(f"{name} must be {size} bytes (use ipaddress .packed), got {value!r}")
    return bytes(value)


def emit_ipv4(
    src: bytes,
    dst: bytes,
    protocol: int,
    payload: bytes | bytearray | memoryview = b"",
    *,
    ttl: int = 64,
    identification: int = 0,
    tos: int = 0,
    dont_fragment: bool = True,
) -> bytes:
    """An IPv4 header (no options) with its checksum, followed by `payload`."""
    total = 20 + len(payload)
    if total > 0xFFFF:
        raise EncodeError(f"IPv4: total length {total} exceeds 65535")
    try:
        header = _IPV4.pack(
            0x45,
            tos,
            total,
            identification,
            _IPV4_DF if dont_fragment else 0,
            ttl,
            protocol,
            0,
            _address("IPv4 source", src, 4),
            _address("IPv4 destination", dst, 4),
        )
    except struct.error as e:
        raise EncodeError(
            f"IPv4: a field is out of range ({e}): ttl, tos and protocol are "
            "8 bits, identification 16"
        ) from None
    csum = internet_checksum(header)
    return header[:10] + csum.to_bytes(2, "big") + header[12:] + bytes(payload)


def emit_ipv6(
    src: bytes,
    dst: bytes,
    next_header: int,
    payload: bytes | bytearray | memoryview = b"",
    *,
    hop_limit: int = 64,
    traffic_class: int = 0,
    flow_label: int = 0,
) -> bytes:
    """An IPv6 fixed header followed by `payload`."""
    if len(payload) > 0xFFFF:
        raise EncodeError(f"IPv6: payload length {len(payload)} exceeds 65535")
    if not 0 <= traffic_class <= 0xFF or not 0 <= flow_label <= 0xFFFFF:
        raise EncodeError("IPv6: traffic class is 8 bits and flow label 20 bits")
    try:
        header = _IPV6.pack(
            (6 << 28) | (traffic_class << 20) | flow_label,
            len(payload),
            next_header,
            hop_limit,
            _address("IPv6 source", src, 16),
            _address("IPv6 destination", dst, 16),
        )
    except struct.error as e:
        raise EncodeError(f"IPv6: a field is out of range ({e})") from None
    return header + bytes(payload)


def emit_ip(
    src: bytes,
    dst: bytes,
    protocol: int,
    payload: bytes | bytearray | memoryview = b"",
    *,
    ttl: int = 64,
) -> bytes:
    """IPv4 or IPv6 by the address length (4 or 16 bytes)."""
    if len(src) == 16:
        return emit_ipv6(src, dst, protocol, payload, hop_limit=ttl)
    return emit_ipv4(src, dst, protocol, payload, ttl=ttl)
