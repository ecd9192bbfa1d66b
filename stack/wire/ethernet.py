"""Ethernet II, ARP (Ethernet/IPv4) and the NDP neighbour messages (RFC 4861 §4.3, §4.4).

What a bare host needs to be reachable: answer ARP requests and neighbour
solicitations for the addresses it owns in userspace. 802.1Q tags are not decoded
(the ethertype 0x8100 is returned as is). MAC addresses and IP addresses are bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from stack.wire.errors import EncodeError, MalformedHeader
from stack.wire.ip import ETH_P_IP, IPPROTO_ICMPV6, transport_checksum, transport_checksum_ok

ETH_P_ARP = 0x0806
ETH_HLEN = 14
BROADCAST_MAC = b"\xff" * 6

ARP_REQUEST = 1
ARP_REPLY = 2

ICMPV6_NEIGHBOR_SOLICITATION = 135
ICMPV6_NEIGHBOR_ADVERTISEMENT = 136
NDP_OPT_SOURCE_LLADDR = 1
NDP_OPT_TARGET_LLADDR = 2
NA_FLAG_ROUTER = 0x80
NA_FLAG_SOLICITED = 0x40
NA_FLAG_OVERRIDE = 0x20

_ETH = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")


def _check(name: str, value: object, size: int) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != size:
        raise EncodeError(f"{name} must be {size} bytes, got {value!r}")
    return bytes(value)


class EthernetHeader:
    """A parsed Ethernet II header; `payload` is a memoryview of the rest of the frame."""

    __slots__ = ("dst", "ethertype", "payload", "src")

    def __init__(self, dst: bytes, src: bytes, ethertype: int, payload: memoryview) -> None:
        self.dst = dst
        self.src = src
        self.ethertype = ethertype
        self.payload = payload

    def __repr__(self) -> str:
        return (
            f"EthernetHeader({mac_text(self.src)} > {mac_text(self.dst)}, "
            f"type 0x{self.ethertype:04x}, {len(self.payload)} B)"
        )


def mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def parse_ethernet(frame: bytes | bytearray | memoryview) -> EthernetHeader | MalformedHeader:
    mv = frame if isinstance(frame, memoryview) else memoryview(frame)
    if len(mv) < ETH_HLEN:
        return MalformedHeader("ethernet", 0, f"{len(mv)} bytes, an Ethernet header needs 14")
    dst, src, ethertype = _ETH.unpack_from(mv)
    return EthernetHeader(dst, src, ethertype, mv[ETH_HLEN:])


def emit_ethernet(
    dst: bytes, src: bytes, ethertype: int, payload: bytes | bytearray | memoryview = b""
) -> bytes:
    """An Ethernet II frame (no FCS; the NIC or veth adds none we must write)."""
    if not 0 <= ethertype <= 0xFFFF:
        raise EncodeError(f"ethertype {ethertype!r} is not 16 bits")
    return _ETH.pack(
        _check("destination MAC", dst, 6), _check("source MAC", src, 6), ethertype
    ) + bytes(payload)


# --------------------------------------------------------------------------- ARP


@dataclass(frozen=True, slots=True)
class ArpPacket:
    """ARP for Ethernet and IPv4 (RFC 826): the only combination on our links."""

    operation: int
    sender_mac: bytes
    sender_ip: bytes
    target_mac: bytes
    target_ip: bytes

    def emit(self) -> bytes:
        if not isinstance(self.operation, int) or not 0 <= self.operation <= 0xFFFF:
            raise EncodeError(f"ARP operation {self.operation!r} is not 16 bits")
        return _ARP.pack(
            1,
            ETH_P_IP,
            6,
            4,
            self.operation,
            _check("ARP sender MAC", self.sender_mac, 6),
            _check("ARP sender IP", self.sender_ip, 4),
            _check("ARP target MAC", self.target_mac, 6),
            _check("ARP target IP", self.target_ip, 4),
        )

    def reply(self, mac: bytes) -> ArpPacket:
        """The reply that says `mac` owns this request's target IP."""
        return ArpPacket(ARP_REPLY, mac, self.target_ip, self.sender_mac, self.sender_ip)


def parse_arp(data: bytes | bytearray | memoryview) -> ArpPacket | MalformedHeader:
    """Parse an ARP packet; trailing link padding is ignored."""
    if len(data) < _ARP.size:
        return MalformedHeader("arp", 0, f"{len(data)} bytes, Ethernet/IPv4 ARP needs 28")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(data)
    if (htype, ptype, hlen, plen) != (1, ETH_P_IP, 6, 4):
        return MalformedHeader(
            "arp",
            0,
            f"hardware {htype}/{hlen} and protocol 0x{ptype:04x}/{plen}: only Ethernet/IPv4",
        )
    return ArpPacket(op, sha, spa, tha, tpa)


# --------------------------------------------------------------------------- NDP


@dataclass(frozen=True, slots=True)
class NeighborSolicitation:
    """ICMPv6 type 135: who has `target`? `source_lladdr` is the sender's MAC (option 1).

    `other_options` keeps the options this codec does not interpret, as raw bytes.
    """

    target: bytes
    source_lladdr: bytes | None = None
    other_options: bytes = b""

    def emit(self, src: bytes, dst: bytes) -> bytes:
        """The ICMPv6 message with its checksum for the IPv6 `src` and `dst` (16 bytes each)."""
        body = bytes(4) + _check("NS target", self.target, 16)
        if self.source_lladdr is not None:
            body += _lladdr_option(NDP_OPT_SOURCE_LLADDR, self.source_lladdr)
        return _icmpv6(ICMPV6_NEIGHBOR_SOLICITATION, body + _options(self.other_options), src, dst)


@dataclass(frozen=True, slots=True)
class NeighborAdvertisement:
    """ICMPv6 type 136: `target` is at `target_lladdr` (option 2). Flags R, S, O."""

    target: bytes
    target_lladdr: bytes | None = None
    flags: int = NA_FLAG_SOLICITED | NA_FLAG_OVERRIDE  # the first byte: R S O, 5 reserved
    other_options: bytes = b""

    @property
    def router(self) -> bool:
        return bool(self.flags & NA_FLAG_ROUTER)

    @property
    def solicited(self) -> bool:
        return bool(self.flags & NA_FLAG_SOLICITED)

    @property
    def override(self) -> bool:
        return bool(self.flags & NA_FLAG_OVERRIDE)

    def emit(self, src: bytes, dst: bytes) -> bytes:
        if not isinstance(self.flags, int) or not 0 <= self.flags <= 0xFF:
            raise EncodeError(f"NA flags {self.flags!r} are not 8 bits (R S O and reserved)")
        body = bytes((self.flags, 0, 0, 0)) + _check("NA target", self.target, 16)
        if self.target_lladdr is not None:
            body += _lladdr_option(NDP_OPT_TARGET_LLADDR, self.target_lladdr)
        return _icmpv6(ICMPV6_NEIGHBOR_ADVERTISEMENT, body + _options(self.other_options), src, dst)


def _lladdr_option(option_type: int, mac: bytes) -> bytes:
    return bytes((option_type, 1)) + _check("link-layer address", mac, 6)


def _options(raw: bytes) -> bytes:
    if len(raw) % 8:
        raise EncodeError(f"NDP options come in units of 8 bytes, got {len(raw)} bytes")
    return bytes(raw)


def _icmpv6(icmp_type: int, body: bytes, src: bytes, dst: bytes) -> bytes:
    message = bytes((icmp_type, 0, 0, 0)) + body
    csum = transport_checksum(
        _check("IPv6 source", src, 16), _check("IPv6 destination", dst, 16), IPPROTO_ICMPV6, message
    )
    return message[:2] + csum.to_bytes(2, "big") + message[4:]


def parse_ndp(
    src: bytes, dst: bytes, message: bytes | bytearray | memoryview
) -> NeighborSolicitation | NeighborAdvertisement | MalformedHeader | None:
    """Parse an ICMPv6 message carried from `src` to `dst` if it is an NS or NA.

    Returns None for any other well-formed ICMPv6 type. A bad checksum, a non-zero code
    or malformed options give a MalformedHeader (RFC 4861 §7.1.1: silently discard).
    The hop limit (must be 255) is in the IPv6 header: the caller checks it.
    """
    n = len(message)
    if n < 4:
        return MalformedHeader("icmpv6", 0, f"{n} bytes, an ICMPv6 header needs 4")
    if not transport_checksum_ok(src, dst, IPPROTO_ICMPV6, message):
        return MalformedHeader("icmpv6", 2, "bad ICMPv6 checksum")
    icmp_type = message[0]
    if icmp_type not in (ICMPV6_NEIGHBOR_SOLICITATION, ICMPV6_NEIGHBOR_ADVERTISEMENT):
        return None
    if message[1] != 0:
        return MalformedHeader("icmpv6", 1, f"NDP message with code {message[1]} (must be 0)")
    if n < 24:
        return MalformedHeader("icmpv6", 0, f"{n} bytes, an NS/NA needs 24")
    target = bytes(message[8:24])
    lladdr: bytes | None = None
    other = b""
    want = (
        NDP_OPT_SOURCE_LLADDR
        if icmp_type == ICMPV6_NEIGHBOR_SOLICITATION
        else NDP_OPT_TARGET_LLADDR
    )
    i = 24
    while i < n:
        if i + 2 > n:
            return MalformedHeader("icmpv6", i, "NDP option truncated")
        length = message[i + 1] * 8
        if length == 0 or i + length > n:
            return MalformedHeader("icmpv6", i, f"NDP option of length {length} does not fit")
        if message[i] == want and length == 8 and lladdr is None:
            lladdr = bytes(message[i + 2 : i + 8])
        else:
            other += bytes(message[i : i + length])
        i += length
    if icmp_type == ICMPV6_NEIGHBOR_SOLICITATION:
        return NeighborSolicitation(target, lladdr, other)
    return NeighborAdvertisement(target, lladdr, message[4], other)


def solicited_node_multicast(address: bytes) -> bytes:
    """ff02::1:ffXX:XXXX for an IPv6 address (RFC 4291 §2.7.1)."""
    return bytes.fromhex("ff0200000000000000000001ff") + bytes(address[13:16])


def multicast_mac(address: bytes) -> bytes:
    """The Ethernet address of an IPv6 multicast address: 33:33 and its last 32 bits."""
    return b"\x33\x33" + bytes(address[12:16])
