"""The scripted peer: a host of its own, in a bare namespace, driven by a case.

The tester owns the addresses of its (bare) host in userspace: one AF_PACKET socket per
interface, no kernel address, so its kernel never answers for it. Frames are built
with scapy (Ethernet/IP/TCP) and the MPTCP options with our codec (`stack.wire`),
through `to_scapy_option`; a deliberately malformed option goes in as raw header bytes.
Received frames are parsed with `stack.wire` (fast, never raises).

Neighbours: the tester answers ARP requests for its addresses whenever it reads its
sockets (that is how the userspace stack finds it), and, when the IUT is a kernel host,
installs permanent neighbour entries for every tester address on every IUT interface
that faces the tester, so that the kernel never waits for an ARP answer while the
tester is not reading (deterministic timing). Both are documented in docs/conformance.md.

Expectation is event-driven: `expect()` selects on the sockets until the deadline and
returns the first unconsumed segment that matches, or raises a `deviates` outcome that
lists what was seen instead. Every frame sent and seen is recorded with the kernel's
receive timestamp (SO_TIMESTAMPNS), for timing checks and for the pcap and the ladder
diagram written when a case does not conform.
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
import select
import socket
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from conformance.model import deviates
from stack import crypto
from stack.wire.errors import MalformedOption
from stack.wire.mptcp import (
    MPC_FLAG_A,
    MPC_FLAG_H,
    Dss,
    MpCapable,
    MpJoinAck,
    MpJoinSyn,
    MpJoinSynAck,
)
from stack.wire.scapy_bridge import describe_option, to_scapy_option
from stack.wire.tcp import (
    ACK,
    FIN,
    MPTCP_OPTION_TYPES,
    PSH,
    RST,
    SYN,
    MaxSegmentSize,
    TcpHeader,
    TcpOption,
    flags_text,
    parse_tcp,
    parse_tcp_options,
)

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ARP = 0x0806
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = 35
NUD_PERMANENT = 0x80
_TIMESPEC = struct.Struct("=qq")

OptionT = TypeVar("OptionT")

FLAG_LETTERS = {"S": SYN, "A": ACK, ".": ACK, "F": FIN, "R": RST, "P": PSH}
_MATCHED_FLAGS = SYN | ACK | FIN | RST  # PSH never decides a match


class TesterError(Exception):
    """A harness fault (the tester could not do what the case asked): verdict `error`."""


def parse_flags(text: str) -> int:
    """tcpdump-like letters: "S", "SA" (or "S."), "A", "FA", "R", "RA", "PA"."""
    value = 0
    for letter in text:
        if letter not in FLAG_LETTERS:
            raise TesterError(f"unknown TCP flag letter {letter!r} in {text!r} (use S A F R P)")
        value |= FLAG_LETTERS[letter]
    return value


# --------------------------------------------------------------------------- records


@dataclass
class Record:
    """One frame on the wire, as the tester sent or saw it."""

    time: float  # seconds since the epoch (the kernel's receive timestamp for "in")
    direction: str  # "out" (tester -> IUT) or "in" (IUT -> tester)
    ifname: str
    frame: bytes


class Segment:
    """A TCP segment (IPv4 or IPv6), parsed; what `expect` returns."""

    __slots__ = (
        "ack",
        "consumed",
        "dport",
        "dst",
        "flags",
        "ifname",
        "options",
        "payload",
        "seq",
        "sport",
        "src",
        "time",
        "window",
    )

    def __init__(
        self,
        *,
        time: float,
        ifname: str,
        src: str,
        dst: str,
        sport: int,
        dport: int,
        seq: int,
        ack: int,
        flags: int,
        window: int,
        options: list[Any],
        payload: bytes,
    ) -> None:
        self.time = time
        self.ifname = ifname
        self.src = src
        self.dst = dst
        self.sport = sport
        self.dport = dport
        self.seq = seq
        self.ack = ack
        self.flags = flags
        self.window = window
        self.options = options
        self.payload = payload
        self.consumed = False

    def has(self, flags: str | int) -> bool:
        value = parse_flags(flags) if isinstance(flags, str) else flags
        return self.flags & value == value

    @property
    def mptcp(self) -> list[Any]:
        """The MPTCP options (and malformed kind-30 options)."""
        return [
            o
            for o in self.options
            if isinstance(o, MPTCP_OPTION_TYPES)
            or (isinstance(o, MalformedOption) and o.kind in (30, None))
        ]

    def option(self, kind: type[OptionT]) -> OptionT | None:
        for option in self.options:
            if isinstance(option, kind):
                return option
        return None

    def need(self, kind: type[OptionT]) -> OptionT:
        """The option of that type, or the case deviates (the segment lacks it)."""
        option = self.option(kind)
        if option is None:
            raise deviates(f"{kind.__name__} missing from {self.describe()}")
        return option

    def describe(self) -> str:
        text = (
            f"{self.src}:{self.sport} > {self.dst}:{self.dport} {flags_text(self.flags)} "
            f"seq {self.seq} ack {self.ack} len {len(self.payload)}"
        )
        options = [describe_option(o, self.flags) for o in self.mptcp]
        return text + (" <" + "; ".join(options) + ">" if options else "")

    def __repr__(self) -> str:
        return f"Segment({self.describe()})"


def parse_frame(frame: bytes, ifname: str, when: float) -> Segment | None:
    """A TCP segment from an Ethernet frame (IPv4, or IPv6 with TCP as the first next
    header), or None for anything else."""
    ethertype = frame[12:14]
    ip = frame[14:]
    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    if ethertype == b"\x08\x00" and len(ip) >= 20 and ip[0] >> 4 == 4 and ip[9] == 6:
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        src, dst = ipaddress.IPv4Address(ip[12:16]), ipaddress.IPv4Address(ip[16:20])
        tcp = parse_tcp(ip[ihl:total])
    elif ethertype == b"\x86\xdd" and len(ip) >= 40 and ip[0] >> 4 == 6 and ip[6] == 6:
        total = 40 + struct.unpack_from("!H", ip, 4)[0]
        src, dst = ipaddress.IPv6Address(ip[8:24]), ipaddress.IPv6Address(ip[24:40])
        tcp = parse_tcp(ip[40:total])
    else:
        return None
    if not isinstance(tcp, TcpHeader):
        return None
    return Segment(
        time=when,
        ifname=ifname,
        src=str(src),
        dst=str(dst),
        sport=tcp.src_port,
        dport=tcp.dst_port,
        seq=tcp.seq,
        ack=tcp.ack,
        flags=tcp.flags,
        window=tcp.window,
        options=parse_tcp_options(tcp.options),
        payload=bytes(tcp.payload),
    )


# --------------------------------------------------------------------------- patterns


@dataclass
class Pattern:
    """What a segment must look like. Every given field must hold."""

    flags: str | None = None  # exact set among S, A, F, R (PSH ignored)
    option: type | tuple[type, ...] | None = None  # one of these must be present
    absent: tuple[type, ...] = ()  # none of these may be present
    where: Callable[[Segment], bool] | None = None
    data: bool | None = None  # carries payload (True) or none (False)
    what: str = ""  # a description for messages

    def matches(self, segment: Segment) -> bool:
        if self.flags is not None and segment.flags & _MATCHED_FLAGS != parse_flags(self.flags):
            return False
        if self.data is not None and bool(segment.payload) != self.data:
            return False
        if self.option is not None:
            kinds = self.option if isinstance(self.option, tuple) else (self.option,)
            if not any(isinstance(o, kinds) for o in segment.options):
                return False
        if any(isinstance(o, self.absent) for o in segment.options):
            return False
        return self.where is None or bool(self.where(segment))

    def __str__(self) -> str:
        if self.what:
            return self.what
        parts = [f"flags {self.flags}" if self.flags is not None else "any segment"]
        if self.option is not None:
            kinds = self.option if isinstance(self.option, tuple) else (self.option,)
            parts.append("with " + " or ".join(k.__name__ for k in kinds))
        if self.absent:
            parts.append("without " + ", ".join(k.__name__ for k in self.absent))
        if self.data is not None:
            parts.append("with data" if self.data else "without data")
        if self.where is not None:
            parts.append("meeting the case's condition")
        return " ".join(parts)


# --------------------------------------------------------------------------- connections


@dataclass
class MptcpConnection:
    """The connection level: keys, tokens, IDSNs, data sequence numbers."""

    version: int
    local_key: int
    remote_key: int | None = None
    checksum: bool = False
    subflows: list[Subflow] = field(default_factory=list)
    data_snd_nxt: int = 0  # next DSN the tester sends
    data_rcv_nxt: int = 0  # next DSN expected from the IUT

    @property
    def local_token(self) -> int:
        return crypto.key_token(self.local_key, self.version)

    @property
    def remote_token(self) -> int:
        if self.remote_key is None:
            raise TesterError("the IUT's key is not known yet")
        return crypto.key_token(self.remote_key, self.version)

    @property
    def local_idsn(self) -> int:
        return crypto.key_idsn(self.local_key, self.version)

    @property
    def remote_idsn(self) -> int:
        if self.remote_key is None:
            raise TesterError("the IUT's key is not known yet")
        return crypto.key_idsn(self.remote_key, self.version)

    def learn_remote_key(self, key: int) -> None:
        self.remote_key = key
        self.data_rcv_nxt = (crypto.key_idsn(key, self.version) + 1) & (2**64 - 1)

    def start_data(self) -> None:
        self.data_snd_nxt = (self.local_idsn + 1) & (2**64 - 1)

    def data_ack(self) -> Dss:
        """A DSS with only the 64-bit data ACK of what the tester has received."""
        return Dss(data_ack=self.data_rcv_nxt, data_ack_64=True)

    def mapping(self, subflow: Subflow, payload: bytes, *, data_fin: bool = False) -> Dss:
        """A DSS with data ACK and a 64-bit mapping of `payload` at the next DSN and the
        subflow's next relative sequence number; advances the data sequence."""
        length = len(payload) + (1 if data_fin else 0)
        dss = Dss(
            data_ack=self.data_rcv_nxt,
            data_ack_64=True,
            dsn=self.data_snd_nxt,
            dsn_64=True,
            subflow_seq=(subflow.snd_nxt - subflow.iss) & 0xFFFFFFFF if payload else 0,
            data_level_length=length,
            data_fin=data_fin,
            checksum=(
                crypto.dss_checksum(
                    self.data_snd_nxt, (subflow.snd_nxt - subflow.iss) & 0xFFFFFFFF, length, payload
                )
                if self.checksum
                else None
            ),
        )
        self.data_snd_nxt = (self.data_snd_nxt + length) & (2**64 - 1)
        return dss


class Subflow:
    """One TCP connection of the tester: addresses, ports and sequence numbers."""

    def __init__(
        self,
        tester: Tester,
        ifname: str,
        local: str,
        lport: int,
        remote: str,
        rport: int,
        *,
        iss: int | None = None,
    ) -> None:
        self.tester = tester
        self.ifname = ifname
        self.local = local
        self.lport = lport
        self.remote = remote
        self.rport = rport
        self.iss = random.getrandbits(32) if iss is None else iss
        self.snd_nxt = self.iss
        self.irs: int | None = None
        self.rcv_nxt = 0
        self.connection: MptcpConnection | None = None
        # MP_JOIN state, when this subflow is a join
        self.local_nonce: int | None = None
        self.remote_nonce: int | None = None
        self.address_id = 0

    def __repr__(self) -> str:
        return f"Subflow({self.local}:{self.lport} <-> {self.remote}:{self.rport})"

    def owns(self, segment: Segment) -> bool:
        return (
            segment.src == self.remote
            and segment.sport == self.rport
            and segment.dst == self.local
            and segment.dport == self.lport
        )

    def track(self, segment: Segment) -> None:
        """Follow the IUT's sequence numbers (in-order data only)."""
        if segment.flags & SYN:
            self.irs = segment.seq
            self.rcv_nxt = (segment.seq + 1) & 0xFFFFFFFF
            return
        if self.irs is None or segment.flags & RST:
            return
        if segment.seq == self.rcv_nxt:
            advance = len(segment.payload) + (1 if segment.flags & FIN else 0)
            self.rcv_nxt = (self.rcv_nxt + advance) & 0xFFFFFFFF
            connection = self.connection
            dss = segment.option(Dss)
            if connection is not None and dss is not None and dss.dsn is not None:
                dsn = dss.dsn
                if not dss.dsn_64:  # extend a 32-bit DSN with the expected upper bits
                    dsn |= connection.data_rcv_nxt & ~0xFFFFFFFF
                end = (dsn + dss.data_level_length) & (2**64 - 1)  # type: ignore[operator]
                if dsn == connection.data_rcv_nxt or (dss.data_fin and dss.data_level_length == 1):
                    connection.data_rcv_nxt = end

    @property
    def relative_rcv_nxt(self) -> int:
        return (self.rcv_nxt - (self.irs or 0)) & 0xFFFFFFFF

    def send(
        self,
        flags: str = "A",
        options: Sequence[TcpOption] = (),
        payload: bytes = b"",
        *,
        seq: int | None = None,
        ack: int | None = None,
        window: int = 64240,
        raw_options: bytes | None = None,
    ) -> None:
        """Send one segment. `seq`/`ack` default to the tracked numbers; the tracked
        send sequence advances only for in-sequence segments."""
        value = parse_flags(flags)
        in_sequence = seq is None
        if seq is None:
            seq = self.snd_nxt
        if ack is None:
            ack = self.rcv_nxt if value & ACK else 0
        self.tester.send_tcp(
            self.ifname,
            self.local,
            self.remote,
            self.lport,
            self.rport,
            seq,
            ack,
            value,
            window,
            options,
            payload,
            raw_options,
        )
        if in_sequence:
            advance = len(payload) + (1 if value & SYN else 0) + (1 if value & FIN else 0)
            self.snd_nxt = (self.snd_nxt + advance) & 0xFFFFFFFF

    def expect(
        self,
        flags: str | None = None,
        option: type | tuple[type, ...] | None = None,
        *,
        absent: Iterable[type] = (),
        where: Callable[[Segment], bool] | None = None,
        data: bool | None = None,
        within: float = 1.0,
        what: str = "",
    ) -> Segment:
        """The first segment of this subflow matching the pattern, within `within` s;
        whatever else the IUT sends first is passed over. For waits where other traffic
        may legitimately come first (data, pure ACKs, window updates); where the RFC
        prescribes the answer, use `expect_next`."""
        pattern = Pattern(flags, option, tuple(absent), where, data, what)
        return self.tester.expect_pattern(pattern, within, owner=self.owns, where_text=repr(self))

    def expect_next(
        self,
        flags: str | None = None,
        option: type | tuple[type, ...] | None = None,
        *,
        absent: Iterable[type] = (),
        where: Callable[[Segment], bool] | None = None,
        data: bool | None = None,
        within: float = 1.0,
        what: str = "",
        skip: Callable[[Segment], bool] | None = None,
        since: float | None = None,
    ) -> Segment:
        """Strict, as a packetdrill line: the IUT's next segment on this subflow must
        match the pattern, within `within` s; any other first is a deviation. "Next"
        is the first unconsumed segment of the subflow that the IUT sent after it took
        the tester's latest segment (the stimulus; `since`, a `time.time()` taken before
        a stimulus of several segments, moves the start back). What it sent before
        cannot answer it and is passed over: segments that arrived before the stimulus
        left, and those whose ACK does not yet cover what the tester sent on the subflow
        (they crossed it). So are the segments that `skip` excuses, which must be only
        what TCP or the RFC lets come first (e.g. the IUT's own SYN retransmitted across
        the tester's answer), never a deviation."""
        pattern = Pattern(flags, option, tuple(absent), where, data, what)
        snd_nxt = self.snd_nxt

        def excused(segment: Segment) -> bool:
            crossed = bool(segment.flags & ACK) and (segment.ack - snd_nxt) & 0x80000000 != 0
            return crossed or (skip is not None and skip(segment))

        return self.tester.expect_next_pattern(pattern, within, owner=self.owns,
                                               where_text=repr(self), skip=excused,
                                               since=since)  # fmt: skip

    def read_stream(
        self,
        *,
        enough: Callable[[bytes], bool],
        within: float,
        options: Callable[[bytes], Sequence[TcpOption]] = lambda stream: (),
    ) -> tuple[bytes, bool]:
        """Read the IUT's byte stream on this subflow as plain TCP delivers it: in-order
        bytes from the subflow's ISN, retransmitted overlaps once, each advance
        acknowledged (with `options(stream so far)`). Ends at the IUT's FIN, at a RST, when
        `enough(stream)` holds, or `within` s from now; returns (stream, FIN seen)."""
        if self.irs is None:
            raise TesterError(f"{self!r}: no SYN from the IUT seen, no stream to read")
        base = (self.irs + 1) & 0xFFFFFFFF
        stream = bytearray()
        fin = False
        deadline = time.monotonic() + within
        pattern = Pattern(where=lambda s: bool(s.payload) or bool(s.flags & (FIN | RST)))
        while not fin and not enough(bytes(stream)):
            segment = self.tester.next_matching(
                pattern, deadline - time.monotonic(), owner=self.owns
            )
            if segment is None or segment.flags & RST:
                break
            offset = (segment.seq - base) & 0xFFFFFFFF
            end = offset + len(segment.payload)
            if offset <= len(stream) < end:
                stream += segment.payload[len(stream) - offset :]
            if segment.flags & FIN and end == len(stream):
                fin = True
            ack = (base + len(stream) + fin) & 0xFFFFFFFF
            self.send("A", list(options(bytes(stream))), ack=ack)
        return bytes(stream), fin

    def expect_none(
        self,
        flags: str | None = None,
        option: type | tuple[type, ...] | None = None,
        *,
        absent: Iterable[type] = (),
        where: Callable[[Segment], bool] | None = None,
        data: bool | None = None,
        within: float = 0.3,
        what: str = "",
    ) -> None:
        """No segment of this subflow matches the pattern for `within` s."""
        pattern = Pattern(flags, option, tuple(absent), where, data, what)
        self.tester.expect_none_pattern(pattern, within, owner=self.owns, where_text=repr(self))


# --------------------------------------------------------------------------- the tester


@dataclass
class _Port:
    ifname: str
    sock: socket.socket
    mac: bytes
    peer_mac: bytes
    addresses: list[str]


class Tester:
    """The scripted peer on the bare host `host` of a topology, on all its interfaces."""

    def __init__(
        self, topo: Any, host: str = "client", iut_host: str = "server", *, family: int = 4
    ) -> None:
        self.topo = topo
        self.family = family  # the IP version of addresses that calls do not name
        self.host = topo.hosts[host]
        self.iut_host = topo.hosts[iut_host]
        self.records: list[Record] = []
        self.inbox: list[Segment] = []
        self.ports: dict[str, _Port] = {}
        self._by_fd: dict[int, _Port] = {}
        self._used_ports: set[int] = set()
        self.connections: list[MptcpConnection] = []
        self.subflows: list[Subflow] = []  # every subflow the tester made: all tracked
        self.started = time.time()
        self.last_sent = self.started  # when the latest frame left (`expect_next`'s start)
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # -- set-up --

    def _open(self) -> None:
        for ifname, iface in self.host.interfaces.items():
            peer = self._peer_interface(iface)
            if peer is None:
                continue
            with self.host.entered():
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            with contextlib.suppress(OSError):
                sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.bind((ifname, ETH_P_ALL))
            sock.setblocking(False)
            mac = sock.getsockname()[4]
            peer_host = self.topo.hosts[peer.host]
            peer_mac = _link_mac(peer_host, peer.index)
            port = _Port(ifname, sock, mac, peer_mac, [str(a.ip) for a in iface.addresses])
            self.ports[ifname] = port
            self._by_fd[sock.fileno()] = port
        if not self.ports:
            raise TesterError(f"host {self.host.name} has no interface facing another host")
        self._install_neighbours()

    def _peer_interface(self, iface: Any) -> Any:
        link = self.topo.links.get(iface.link)
        if link is None:
            return None
        return link.b if link.a.host == iface.host and link.a.ifname == iface.ifname else link.a

    def _install_neighbours(self) -> None:
        """Permanent neighbour entries for every tester address on every kernel interface
        that faces the tester: the IUT's (kernel IUTs only) and a router's or
        middlebox's on a routed path."""
        for port in self.ports.values():
            peer = self._peer_interface(self.host.interfaces[port.ifname])
            peer_host = self.topo.hosts[peer.host]
            if peer_host.spec.bare:
                continue
            for other in self.ports.values():
                for address in other.addresses:
                    peer_host.ipr.neigh(
                        "replace",
                        family=_family(address),
                        dst=address,
                        lladdr=":".join(f"{b:02x}" for b in port.mac),
                        ifindex=peer.index,
                        state=NUD_PERMANENT,
                    )

    def close(self) -> None:
        for port in self.ports.values():
            port.sock.close()
        self.ports.clear()
        self._by_fd.clear()

    def __enter__(self) -> Tester:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- addresses --

    def address(self, ifname: str = "eth0", version: int | None = None) -> str:
        """The tester's address on `ifname` of IP version `version` (default: the
        tester's family)."""
        return str(self.host.interfaces[ifname].address(version or self.family))

    def iut_address(self, ifname: str = "eth0", version: int | None = None) -> str:
        """The IUT's address on the path that the tester's `ifname` is on: its address on
        the link, or, when a router or middlebox is the link's other end, the address of
        the IUT's interface of the same name (the shipped topologies route ethN to ethN).
        Of IP version `version` (default: the tester's family)."""
        peer = self._peer_interface(self.host.interfaces[ifname])
        if peer.host != self.iut_host.name:
            peer = self.iut_host.interfaces[ifname]
        return str(peer.address(version or self.family))

    def mss(self, address: str) -> MaxSegmentSize:
        """The MSS option for a SYN from `address`: the 1500-byte MTU less the headers."""
        return MaxSegmentSize(1440 if _family(address) == socket.AF_INET6 else 1460)

    def free_port(self) -> int:
        while True:
            port = random.randint(20000, 60000)
            if port not in self._used_ports:
                self._used_ports.add(port)
                return port

    # -- connections --

    def subflow(
        self, rport: int, *, ifname: str = "eth0", lport: int | None = None,
        remote: str | None = None, local: str | None = None,
    ) -> Subflow:  # fmt: skip
        """A new tester-initiated subflow towards the IUT."""
        subflow = Subflow(
            self,
            ifname,
            local or self.address(ifname),
            lport or self.free_port(),
            remote or self.iut_address(ifname),
            rport,
        )
        self.subflows.append(subflow)
        return subflow

    def accept(self, syn: Segment) -> Subflow:
        """A subflow answering the IUT's SYN (the tester as listener)."""
        subflow = Subflow(self, syn.ifname, syn.dst, syn.dport, syn.src, syn.sport)
        subflow.track(syn)
        self.subflows.append(subflow)
        return subflow

    def connection(self, version: int = 1, *, key: int | None = None) -> MptcpConnection:
        connection = MptcpConnection(version, key if key is not None else _random_key(version))
        self.connections.append(connection)
        return connection

    # -- raw I/O --

    def send_tcp(
        self,
        ifname: str,
        src: str,
        dst: str,
        sport: int,
        dport: int,
        seq: int,
        ack: int,
        flags: int,
        window: int,
        options: Sequence[TcpOption] = (),
        payload: bytes = b"",
        raw_options: bytes | None = None,
    ) -> None:
        from scapy.layers.inet import IP, TCP
        from scapy.layers.inet6 import IPv6
        from scapy.layers.l2 import Ether
        from scapy.packet import Packet, Raw

        port = self.ports[ifname]
        ip: Packet
        if _family(src) == socket.AF_INET6:
            ip = IPv6(src=src, dst=dst, hlim=64)
        else:
            ip = IP(src=src, dst=dst, ttl=64, id=random.getrandbits(16))
        if raw_options is None:
            tcp = TCP(
                sport=sport,
                dport=dport,
                seq=seq,
                ack=ack,
                flags=flags,
                window=window,
                options=[to_scapy_option(o) for o in options],
            )
            packet = Ether(src=port.mac, dst=port.peer_mac) / ip / tcp
            if payload:
                packet = packet / Raw(payload)
        else:
            padded = raw_options + b"\x00" * (-len(raw_options) % 4)
            tcp = TCP(
                sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, window=window,
                dataofs=5 + len(padded) // 4,
            )  # fmt: skip
            packet = Ether(src=port.mac, dst=port.peer_mac) / ip / tcp / Raw(padded + payload)
        self.send_frame(ifname, bytes(packet))

    def send_frame(self, ifname: str, frame: bytes) -> None:
        port = self.ports[ifname]
        when = time.time()  # before the send: the IUT's answer may be stamped before we return
        try:
            port.sock.send(frame)
        except OSError as error:
            raise TesterError(f"sending on {ifname} failed: {error.strerror}") from None
        self.records.append(Record(when, "out", ifname, frame))
        self.last_sent = when

    def _poll(self, timeout: float) -> None:
        """Wait up to `timeout` s for frames, then read everything waiting."""
        fds = list(self._by_fd)
        ready, _, _ = select.select(fds, [], [], max(timeout, 0.0))
        for fd in ready:
            port = self._by_fd[fd]
            while True:
                try:
                    data, ancillary, _, address = port.sock.recvmsg(65600, 64)
                except BlockingIOError:
                    break
                if address[2] == PACKET_OUTGOING:
                    continue
                when = time.time()
                for level, kind, value in ancillary:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                        seconds, nanoseconds = _TIMESPEC.unpack_from(value)
                        when = seconds + nanoseconds / 1e9
                self._receive(port, data, when)

    def answer_neighbours(self, ifname: str, frame: bytes) -> bool:
        """Answer `frame` when it is an ARP request or an NDP solicitation (for one of
        the tester's addresses); True when it was ARP or ICMPv6, which the caller then
        drops. For callers that read the tester's sockets themselves (the fuzzer)."""
        port = self.ports[ifname]
        ethertype = frame[12:14]
        if ethertype == b"\x08\x06":
            self._answer_arp(port, frame)
            return True
        if ethertype == b"\x86\xdd" and len(frame) >= 78 and frame[20] == 58:
            self._answer_neighbour_solicitation(port, frame)
            return True
        return False

    def _receive(self, port: _Port, frame: bytes, when: float) -> None:
        if self.answer_neighbours(port.ifname, frame):
            return
        segment = parse_frame(frame, port.ifname, when)
        if segment is None or not self._is_mine(segment.dst):
            return
        self.records.append(Record(when, "in", port.ifname, frame))
        for subflow in self.subflows:
            if subflow.owns(segment):
                subflow.track(segment)
        # In the order the kernel stamped them on arrival: two frames sent back to back
        # can reach this socket the other way round (veth hands each to the backlog of
        # the CPU that sent it), and "the next segment" means the next one sent.
        at = len(self.inbox)
        while at > 0 and self.inbox[at - 1].time > when:
            at -= 1
        self.inbox.insert(at, segment)

    def _is_mine(self, address: str) -> bool:
        return any(address in port.addresses for port in self.ports.values())

    def _answer_arp(self, port: _Port, frame: bytes) -> None:
        if len(frame) < 42:
            return
        op = struct.unpack_from("!H", frame, 20)[0]
        target = str(ipaddress.IPv4Address(frame[38:42]))
        if op != 1 or not self._is_mine(target):
            return
        sender_mac, sender_ip = frame[22:28], frame[28:32]
        reply = (
            sender_mac + port.mac + b"\x08\x06"
            + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2)
            + port.mac + frame[38:42] + sender_mac + sender_ip
        )  # fmt: skip
        with contextlib.suppress(OSError):
            port.sock.send(reply)

    def _answer_neighbour_solicitation(self, port: _Port, frame: bytes) -> None:
        """A neighbour advertisement for an NDP solicitation of one of our addresses."""
        if frame[54] != 135:  # ICMPv6 type: neighbour solicitation
            return
        target = str(ipaddress.IPv6Address(frame[62:78]))
        if not self._is_mine(target):
            return
        from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
        from scapy.layers.l2 import Ether

        mac = ":".join(f"{b:02x}" for b in port.mac)
        source = str(ipaddress.IPv6Address(frame[22:38]))
        answer = (
            Ether(src=port.mac, dst=frame[6:12])
            / IPv6(src=target, dst=source, hlim=255)
            / ICMPv6ND_NA(tgt=target, R=0, S=1, O=1)
            / ICMPv6NDOptDstLLAddr(lladdr=mac)
        )
        with contextlib.suppress(OSError):
            port.sock.send(bytes(answer))

    # -- expectations --

    def next_matching(
        self,
        pattern: Pattern,
        within: float,
        *,
        owner: Callable[[Segment], bool] | None = None,
    ) -> Segment | None:
        """The first unconsumed segment matching, marked consumed, or None when none
        came within `within` s (for loops that decide themselves what a timeout means)."""
        deadline = time.monotonic() + within
        while True:
            for segment in self.inbox:
                if segment.consumed or (owner is not None and not owner(segment)):
                    continue
                if pattern.matches(segment):
                    segment.consumed = True
                    return segment
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._poll(remaining)

    def expect_pattern(
        self,
        pattern: Pattern,
        within: float,
        *,
        owner: Callable[[Segment], bool] | None = None,
        where_text: str = "",
    ) -> Segment:
        """The first unconsumed segment (of `owner`) matching, consumed; those before it
        are passed over (and stay unconsumed)."""
        start = len(self.inbox)
        found = self.next_matching(pattern, within, owner=owner)
        if found is not None:
            return found
        raise deviates(f"expected {pattern}{_place(where_text)} within {within:g} s; "
                       f"saw {self._seen(start, owner)}")  # fmt: skip

    def expect_next_pattern(
        self,
        pattern: Pattern,
        within: float,
        *,
        owner: Callable[[Segment], bool] | None = None,
        where_text: str = "",
        skip: Callable[[Segment], bool] | None = None,
        since: float | None = None,
    ) -> Segment:
        """Strict: the first unconsumed segment (of `owner`) stamped after `since`
        (default: the tester's latest segment sent) that `skip` does not excuse must
        match; it is consumed either way, and another one is a deviation. Segments from
        before `since` and those `skip` excuses are passed over and stay unconsumed."""
        start = len(self.inbox)
        begin = self.last_sent if since is None else since

        def candidate(segment: Segment) -> bool:
            return segment.time >= begin and (skip is None or not skip(segment))

        found = self.next_matching(Pattern(where=candidate), within, owner=owner)
        if found is None:
            raise deviates(f"expected {pattern}{_place(where_text)} next, within {within:g} s; "
                           f"saw {self._seen(start, owner)}")  # fmt: skip
        if not pattern.matches(found):
            raise deviates(f"expected {pattern}{_place(where_text)} next; first came "
                           f"{found.describe()}")  # fmt: skip
        return found

    def _seen(self, start: int, owner: Callable[[Segment], bool] | None) -> str:
        """The last segments (of `owner`) from a little before `start` on, for messages."""
        seen = [s for s in self.inbox[max(0, start - 5) :] if owner is None or owner(s)]
        return "; ".join(s.describe() for s in seen[-6:]) if seen else "nothing"

    def expect_none_pattern(
        self,
        pattern: Pattern,
        within: float,
        *,
        owner: Callable[[Segment], bool] | None = None,
        where_text: str = "",
    ) -> None:
        deadline = time.monotonic() + within
        while True:
            for segment in self.inbox:
                if segment.consumed or (owner is not None and not owner(segment)):
                    continue
                if pattern.matches(segment):
                    place = f" on {where_text}" if where_text else ""
                    raise deviates(f"expected no {pattern}{place}; saw {segment.describe()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._poll(remaining)

    def expect(
        self,
        flags: str | None = None,
        option: type | tuple[type, ...] | None = None,
        *,
        absent: Iterable[type] = (),
        where: Callable[[Segment], bool] | None = None,
        data: bool | None = None,
        dport: int | None = None,
        within: float = 1.0,
        what: str = "",
    ) -> Segment:
        """Any segment to the tester matching the pattern (e.g. the IUT's SYN)."""
        pattern = Pattern(flags, option, tuple(absent), where, data, what)
        owner = None if dport is None else (lambda s: s.dport == dport)
        return self.expect_pattern(pattern, within, owner=owner)

    def expect_none(
        self,
        flags: str | None = None,
        option: type | tuple[type, ...] | None = None,
        *,
        absent: Iterable[type] = (),
        where: Callable[[Segment], bool] | None = None,
        data: bool | None = None,
        within: float = 0.3,
        what: str = "",
    ) -> None:
        pattern = Pattern(flags, option, tuple(absent), where, data, what)
        self.expect_none_pattern(pattern, within)

    def flush(self) -> None:
        """Read what is waiting and mark every segment seen so far as consumed."""
        self._poll(0)
        for segment in self.inbox:
            segment.consumed = True

    def received(self, owner: Callable[[Segment], bool] | None = None) -> list[Segment]:
        self._poll(0)
        return [s for s in self.inbox if owner is None or owner(s)]

    # -- scripted exchanges (cases that test something else use these) --

    def connect(
        self,
        rport: int,
        *,
        version: int = 1,
        ifname: str = "eth0",
        checksum: bool | None = None,
        flags: int = MPC_FLAG_H,
        within: float = 1.0,
    ) -> tuple[MptcpConnection, Subflow]:
        """A complete MP_CAPABLE handshake to an IUT listener (SYN, SYN/ACK, ACK); the
        SYN/ACK must be the IUT's next segment (`expect_next`).

        `checksum` None follows the version's default: RFC 6824 §3.1 says A SHOULD be
        set (v0 asks for checksums), RFC 8684 §3.1 leaves it to policy (v1 does not).
        Checksums are then used when either side set A."""
        connection = self.connection(version)
        subflow = self.subflow(rport, ifname=ifname)
        subflow.connection = connection
        connection.subflows.append(subflow)
        if checksum is None:
            checksum = version == 0
        if checksum:
            flags |= MPC_FLAG_A
        subflow.send("S", [self.mss(subflow.local), self.capable_syn(connection, flags)])
        synack = subflow.expect_next("SA", MpCapable, within=within, what="SYN/ACK with MP_CAPABLE")
        option = synack.option(MpCapable)
        assert option is not None
        if option.sender_key is None:
            raise deviates(f"SYN/ACK MP_CAPABLE carries no key: {synack.describe()}")
        connection.learn_remote_key(option.sender_key)
        connection.checksum = option.checksum_required or checksum
        connection.start_data()
        subflow.send(
            "A",
            [
                MpCapable(
                    version=version,
                    flags=flags,
                    sender_key=connection.local_key,
                    receiver_key=connection.remote_key,
                )
            ],
        )
        return connection, subflow

    @staticmethod
    def capable_syn(connection: MptcpConnection, flags: int = MPC_FLAG_H) -> MpCapable:
        """The MP_CAPABLE of the tester's SYN in the connection's version: v1 carries no
        key (4 bytes), v0 the sender's key (12 bytes, RFC 6824 §3.1)."""
        if connection.version == 1:
            return MpCapable(version=1, flags=flags)
        return MpCapable(version=0, flags=flags, sender_key=connection.local_key)

    def send_data(
        self, connection: MptcpConnection, subflow: Subflow, payload: bytes, *,
        data_fin: bool = False, flags: str = "PA",
    ) -> None:  # fmt: skip
        """Send `payload` on `subflow` with a DSS mapping at the next DSN."""
        subflow.send(flags, [connection.mapping(subflow, payload, data_fin=data_fin)], payload)

    def first_data_v1(self, connection: MptcpConnection, subflow: Subflow, payload: bytes) -> None:
        """v1 first data carrying MP_CAPABLE with both keys and the data-level length."""
        option = MpCapable(
            version=1,
            flags=MPC_FLAG_H | (0x80 if connection.checksum else 0),
            sender_key=connection.local_key,
            receiver_key=connection.remote_key,
            data_level_length=len(payload),
            checksum=(
                crypto.dss_checksum(
                    connection.data_snd_nxt,
                    (subflow.snd_nxt - subflow.iss) & 0xFFFFFFFF,
                    len(payload),
                    payload,
                )
                if connection.checksum
                else None
            ),
        )
        connection.data_snd_nxt = (connection.data_snd_nxt + len(payload)) & (2**64 - 1)
        subflow.send("PA", [option], payload)

    def join(
        self,
        connection: MptcpConnection,
        rport: int,
        *,
        ifname: str = "eth1",
        address_id: int = 1,
        backup: bool = False,
        remote: str | None = None,
        token: int | None = None,
        within: float = 1.0,
        ack_hmac: bytes | Callable[[Subflow], bytes] | None = None,
        nonce: int | None = None,
    ) -> tuple[Subflow, Segment]:
        """SYN + MP_JOIN, SYN/ACK + MP_JOIN with a valid HMAC-B as the IUT's next segment
        (`expect_next`), then the third ACK.

        Returns the subflow and the SYN/ACK. `ack_hmac` replaces HMAC-A (to send a bad
        one): bytes, or a function of the subflow (its nonces are known by then). `nonce`
        replaces the fresh R-A (to replay an earlier join's SYN).
        """
        subflow = self.subflow(rport, ifname=ifname, remote=remote)
        subflow.connection = connection
        connection.subflows.append(subflow)
        subflow.local_nonce = crypto.generate_nonce() if nonce is None else nonce
        subflow.address_id = address_id
        subflow.send(
            "S",
            [
                self.mss(subflow.local),
                MpJoinSyn(
                    address_id=address_id,
                    token=connection.remote_token if token is None else token,
                    nonce=subflow.local_nonce,
                    backup=backup,
                ),
            ],
        )
        synack = subflow.expect_next("SA", MpJoinSynAck, within=within, what="SYN/ACK with MP_JOIN")
        option = synack.option(MpJoinSynAck)
        assert option is not None
        subflow.remote_nonce = option.nonce
        expected = crypto.join_synack_hmac(
            connection.version, connection.remote_key or 0, connection.local_key,
            option.nonce, subflow.local_nonce,
        )  # fmt: skip
        if option.hmac != expected:
            raise deviates(
                f"SYN/ACK MP_JOIN HMAC {option.hmac.hex()} is not HMAC-B {expected.hex()}"
            )
        if ack_hmac is None:
            hmac = self.join_ack_hmac(connection, subflow)
        else:
            hmac = ack_hmac(subflow) if callable(ack_hmac) else ack_hmac
        subflow.send("A", [MpJoinAck(hmac=hmac)])
        return subflow, synack

    @staticmethod
    def join_ack_hmac(connection: MptcpConnection, subflow: Subflow) -> bytes:
        return crypto.join_ack_hmac(
            connection.version, connection.local_key, connection.remote_key or 0,
            subflow.local_nonce or 0, subflow.remote_nonce or 0,
        )  # fmt: skip

    def accept_mp_capable(
        self, syn: Segment, *, version: int = 1, flags: int | None = None
    ) -> tuple[MptcpConnection, Subflow]:
        """Answer the IUT's MP_CAPABLE SYN with a SYN/ACK carrying the tester's key.

        `flags` None: H, and in v0 A too (RFC 6824 §3.1: A SHOULD be set). Checksums are
        used when the IUT's SYN or the SYN/ACK set A; a v0 SYN's Key-A is learnt here."""
        connection = self.connection(version)
        subflow = self.accept(syn)
        subflow.connection = connection
        connection.subflows.append(subflow)
        if flags is None:
            flags = MPC_FLAG_H | (MPC_FLAG_A if version == 0 else 0)
        offered = syn.option(MpCapable)
        connection.checksum = bool(flags & MPC_FLAG_A) or bool(
            offered is not None and offered.checksum_required
        )
        if version == 0 and offered is not None and offered.sender_key is not None:
            connection.learn_remote_key(offered.sender_key)
        subflow.send(
            "SA",
            [self.mss(subflow.local), MpCapable(version=version, flags=flags,
                                                sender_key=connection.local_key)],
        )  # fmt: skip
        return connection, subflow

    # -- artifacts --

    def write_artifacts(self, directory: Path, stem: str) -> list[str]:
        """A pcap of every frame and a ladder diagram; returns the two paths."""
        directory.mkdir(parents=True, exist_ok=True)
        pcap = directory / f"{stem}.pcap"
        ladder = directory / f"{stem}.ladder.txt"
        write_pcap(pcap, self.records)
        ladder.write_text(self.ladder())
        return [str(pcap), str(ladder)]

    def ladder(self) -> str:
        lines = []
        for record in self.records:
            segment = parse_frame(record.frame, record.ifname, record.time)
            arrow = "tester → IUT" if record.direction == "out" else "tester ← IUT"
            offset = record.time - self.started
            if segment is None:
                lines.append(f"{offset:+9.6f}  {arrow}  {record.ifname}  (not TCP)")
                continue
            options = "; ".join(describe_option(o, segment.flags) for o in segment.mptcp)
            lines.append(
                f"{offset:+9.6f}  {arrow}  {record.ifname}  "
                f"{segment.src}:{segment.sport} > {segment.dst}:{segment.dport}  "
                f"{flags_text(segment.flags):<3} seq {segment.seq} ack {segment.ack} "
                f"len {len(segment.payload)}  {options or 'no mptcp options'}"
            )
        return "\n".join(lines) + "\n"


def _place(where_text: str) -> str:
    return f" on {where_text}" if where_text else ""


def write_pcap(path: Path, records: Iterable[Record]) -> None:
    """A classic pcap (Ethernet link type), microsecond timestamps, in time order."""
    with path.open("wb") as f:
        f.write(struct.pack("=IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for record in sorted(records, key=lambda r: r.time):
            seconds = int(record.time)
            micro = int((record.time - seconds) * 1e6)
            f.write(struct.pack("=IIII", seconds, micro, len(record.frame), len(record.frame)))
            f.write(record.frame)


def _link_mac(host: Any, index: int) -> bytes:
    link = host.ipr.get_links(index)[0]
    return bytes.fromhex(link.get_attr("IFLA_ADDRESS").replace(":", ""))


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _random_key(version: int) -> int:
    return crypto.generate_key(version)[0]
