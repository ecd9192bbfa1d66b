"""Evidence from outside the implementations: link byte counters and control-segment pcaps.

A cell's verdict never rests on what an end says of itself. Bytes per path come from the
kernel's counters of each veth end (`LinkHandle.counters`). Subflows come from a capture
of the segments that open and close them (SYN, FIN, RST: a few hundred frames even in a
large transfer, so the capture costs nothing beside the traffic), read with the
project's own wire codecs.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from pathlib import Path

from stack.wire import MalformedHeader, MpCapable, MpJoinSyn, MpJoinSynAck, parse_ethernet, parse_ip
from stack.wire.ip import ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP
from stack.wire.tcp import parse_tcp, parse_tcp_options

# What the captures keep: segments with SYN, FIN or RST (IPv4 via tcpflags; IPv6 by the
# flags byte of a TCP header that directly follows the fixed header).
CONTROL_FILTER = (
    "(tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0)"
    " or (ip6 and ip6[6] == 6 and ip6[53] & 0x07 != 0)"
)

_SYN, _RST, _ACK, _FIN = 0x02, 0x04, 0x10, 0x01
_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": "<",
    b"\xa1\xb2\xc3\xd4": ">",
    b"\x4d\x3c\xb2\xa1": "<",
    b"\xa1\xb2\x3c\x4d": ">",
}


@dataclass
class SubflowSeen:
    """One 4-tuple as the capture saw it, in the initiator's direction."""

    client: str
    server: str
    kind: str  # "MP_CAPABLE", "MP_JOIN" or "TCP"
    synack: bool = False  # the responder accepted (a SYN/ACK with the same kind)
    backup: bool = False  # the initiator's join SYN asked for backup (B=1)
    events: list[str] = field(default_factory=list)  # "FIN"/"RST" from either side, in order

    @property
    def established(self) -> bool:
        """Accepted, and not reset before it was closed: a RST that comes before any
        FIN is a refusal or a failure; one after a FIN is how some ends finish."""
        return self.synack and (not self.events or self.events[0] == "FIN")


def read_pcap(path: Path) -> list[bytes]:
    """The frames of a classic pcap file (what tcpdump -w writes)."""
    data = path.read_bytes() if path.exists() else b""
    if len(data) < 24 or data[:4] not in _PCAP_MAGIC:
        return []
    order = _PCAP_MAGIC[data[:4]]
    frames, offset = [], 24
    while offset + 16 <= len(data):
        _, _, captured, _ = struct.unpack_from(order + "IIII", data, offset)
        offset += 16
        frames.append(data[offset : offset + captured])
        offset += captured
    return frames


def subflows(paths: list[Path]) -> dict[tuple[str, str], SubflowSeen]:
    """Every TCP connection whose SYN the captures saw, keyed by (initiator, responder)
    endpoints "addr:port" (the same subflow seen on two links counts once)."""
    seen: dict[tuple[str, str], SubflowSeen] = {}
    for path in paths:
        for frame in read_pcap(path):
            _note(seen, frame)
    return seen


def _endpoint(address: bytes, port: int) -> str:
    ip = ipaddress.ip_address(address)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _note(seen: dict[tuple[str, str], SubflowSeen], frame: bytes) -> None:
    ethernet = parse_ethernet(frame)
    if isinstance(ethernet, MalformedHeader) or ethernet.ethertype not in (ETH_P_IP, ETH_P_IPV6):
        return  # ARP, or a capture's stop marker
    ip = parse_ip(frame[14:])
    if isinstance(ip, MalformedHeader):
        return
    protocol = ip.protocol if ip.version == 4 else ip.next_header  # type: ignore[union-attr]
    if protocol != IPPROTO_TCP:
        return
    tcp = parse_tcp(ip.payload)
    if isinstance(tcp, MalformedHeader):
        return
    here, there = _endpoint(ip.src, tcp.src_port), _endpoint(ip.dst, tcp.dst_port)
    options = parse_tcp_options(tcp.options)
    kind = "TCP"
    backup = False
    for option in options:
        if isinstance(option, MpCapable):
            kind = "MP_CAPABLE"
        elif isinstance(option, (MpJoinSyn, MpJoinSynAck)):
            kind = "MP_JOIN"
            backup = bool(option.backup)
    if tcp.flags & _SYN and not tcp.flags & _ACK:
        syn = seen.setdefault((here, there), SubflowSeen(here, there, kind))
        syn.kind, syn.backup = kind, backup
        return
    key = (there, here) if (there, here) in seen else (here, there)
    entry = seen.get(key)
    if entry is None:
        return
    if tcp.flags & _SYN and tcp.flags & _ACK:
        entry.synack = entry.synack or kind == entry.kind
    elif tcp.flags & _RST:
        entry.events.append("RST")
    elif tcp.flags & _FIN:
        entry.events.append("FIN")
