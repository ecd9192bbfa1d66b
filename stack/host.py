"""One userspace host: its interfaces, ARP/NDP, IP, and the single I/O loop of the stack.

The host owns the interfaces it is given (through `stack.link`), answers ARP and NDP for
any of its addresses on any of them (weak host model, as Linux), routes as Linux does
(`stack.route`: by destination, source rules where a gateway is set), and hands TCP
segments to whoever registered for their 4-tuple or port. A segment nobody wants gets
the RFC 9293 reset. Everything runs in one thread: protocol
objects are sans-I/O and only this loop calls them, so they need no locks; other
threads talk to the loop through `call_soon`.
"""

from __future__ import annotations

import contextlib
import heapq
import ipaddress
import itertools
import os
import select
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from stack.alloc import pin_mmap_threshold, release_free_memory
from stack.link import LOCAL_QUEUE_LIMIT, RawLink, in_netns, open_in_netns
from stack.linkwatch import LinkWatcher
from stack.neighbour import NeighbourCounters, NeighbourTable, Release, Solicit
from stack.route import InterfaceConfig, IPAddress, Route, RoutingError, RoutingTable
from stack.wire.errors import MalformedHeader
from stack.wire.ethernet import (
    ARP_REPLY,
    ARP_REQUEST,
    ETH_P_ARP,
    NA_FLAG_SOLICITED,
    ArpPacket,
    NeighborAdvertisement,
    NeighborSolicitation,
    emit_ethernet,
    multicast_mac,
    parse_arp,
    parse_ethernet,
    parse_ndp,
    solicited_node_multicast,
)
from stack.wire.ip import (
    ETH_P_IP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPv4Header,
    IPv6Header,
    emit_ip,
    internet_checksum,
    ones_complement_sum,
    parse_ipv4,
    parse_ipv6,
    pseudo_header_value,
    transport_checksum,
)
from stack.wire.tcp import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    TcpHeader,
    emit_tcp,
    parse_tcp,
    tcp_checksum_ok,
)

ETH_P_IPV6 = 0x86DD
BROADCAST = b"\xff" * 6
EPHEMERAL_PORTS = range(32768, 61000)  # as Linux's ip_local_port_range
# s between two returns of the heap's free pages to the system, done by a busy loop
# (stack/alloc.py): a trim costs about a millisecond, and pages it gives back that are
# used again cost a fault each
TRIM_EVERY = 5.0

FourTuple = tuple[IPAddress, int, IPAddress, int]  # local address, port, remote address, port


class SegmentReceiver(Protocol):
    """Whoever registered a 4-tuple. It may also have `end_of_batch(now)`: then the host
    calls it once after each read of the link that brought it segments, so that it can
    take a burst of segments in one go (one ACK, one super-segment) instead of one by one.
    The headers' memoryviews stay valid until then."""

    def on_segment(self, ip: IPv4Header | IPv6Header, tcp: TcpHeader, now: float) -> None: ...


class PortListener(Protocol):
    def on_syn(self, ip: IPv4Header | IPv6Header, tcp: TcpHeader, now: float) -> bool:
        """A segment for the port that no connection claims; True if it was handled."""
        ...


@dataclass
class Counters(NeighbourCounters):  # the neighbour table's counters come first
    frames_in: int = 0
    frames_out: int = 0
    frames_dropped: int = 0  # the kernel refused them (queue full, link down)
    bad_checksum: int = 0  # TCP checksums that fail
    bad_ip_checksum: int = 0  # IPv4 header checksums that fail (RFC 1122 §3.2.1.2: drop)
    malformed: int = 0
    resets_sent: int = 0
    unreachable: int = 0  # frames dropped when their neighbour's resolution failed
    internal_errors: int = 0  # exceptions caught in the loop (bugs): see Host.last_error


class Timer:
    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callable[[float], None]):
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Host:
    def __init__(
        self,
        interfaces: list[InterfaceConfig],
        *,
        netns: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        # big buffers in mappings of their own, or their holes stay resident (alloc.py)
        pin_mmap_threshold()
        self.routing = RoutingTable(interfaces)
        self.clock = clock
        self.counters = Counters()
        self.links: dict[str, RawLink] = {}
        try:
            for config in interfaces:
                if config.ifname not in self.links:
                    self.links[config.ifname] = open_in_netns(config.ifname, netns)
        except OSError:
            for link in self.links.values():  # nothing else exists yet
                link.close()
            raise
        # link up/down events; without them (no netlink here) ENETDOWN still tells down
        self.watcher: LinkWatcher | None = None
        with contextlib.suppress(OSError):
            indexes = {link.info.index: name for name, link in self.links.items()}
            self.watcher = in_netns(netns, lambda: LinkWatcher(indexes))
        # called on the loop with (interface name, up, now) when a link changes
        self.link_listeners: list[Callable[[str, bool, float], None]] = []
        self._macs = {name: link.info.mac for name, link in self.links.items()}
        self.routing.is_down = lambda ifname: self.links[ifname].down
        self._by_fd = {link.fileno(): (name, link) for name, link in self.links.items()}
        self.neighbours = NeighbourTable(self.counters)
        self._connections: dict[FourTuple, SegmentReceiver] = {}
        self._listeners: dict[int, PortListener] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._sequence = itertools.count()
        self._trimmed = clock()  # when the heap's free pages last went back (alloc.py)
        self._calls: deque[Callable[[], None]] = deque()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rng_port = itertools.cycle(
            EPHEMERAL_PORTS[int.from_bytes(os.urandom(2), "big") % len(EPHEMERAL_PORTS) :]
        )
        self.loop_thread_id: int | None = None
        self.last_error = ""
        # receivers with end_of_batch() that got segments in the current read of a link
        self._batch: dict[int, Callable[[float], None]] = {}
        # per (source, destination, bound device): route, Ethernet header, IP header
        # template, pseudo-header sum; the MAC part is trusted for _PATH_TTL seconds and
        # dropped whenever a neighbour is learnt
        self._paths: dict[tuple[IPAddress, IPAddress, str], _Path] = {}
        self._addresses: dict[bytes, IPAddress] = {}

    # ------------------------------------------------------------------ lifetime

    def start(self) -> None:
        """Run the I/O loop in a daemon thread."""
        self._thread = threading.Thread(target=self.run, name="stack-io", daemon=True)
        self._thread.start()

    @property
    def stopped(self) -> bool:
        """The loop was asked to stop: it runs no more calls."""
        return self._stop.is_set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def close(self) -> None:
        self.stop()
        for link in self.links.values():
            link.close()
        if self.watcher is not None:
            self.watcher.close()
        with contextlib.suppress(AttributeError):
            self._wake_read.close()
            self._wake_write.close()

    # ------------------------------------------------------------------ scheduling

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the loop thread (safe from any thread)."""
        self._calls.append(fn)
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_write.send(b"x")

    def call_at(self, deadline: float, callback: Callable[[float], None]) -> Timer:
        """Run callback(now) on the loop at `deadline` (loop thread only)."""
        timer = Timer(deadline, callback)
        heapq.heappush(self._timers, (deadline, next(self._sequence), timer))
        return timer

    # ------------------------------------------------------------------ registry

    def register(self, four_tuple: FourTuple, receiver: SegmentReceiver) -> None:
        self._connections[four_tuple] = receiver

    def unregister(self, four_tuple: FourTuple) -> None:
        self._connections.pop(four_tuple, None)

    def listen(self, port: int, listener: PortListener) -> None:
        if port in self._listeners:
            raise OSError(98, f"port {port} is already in use by a listener of this stack")
        self._listeners[port] = listener

    def unlisten(self, port: int) -> None:
        self._listeners.pop(port, None)

    def allocate_port(self, local: IPAddress, remote: IPAddress, remote_port: int) -> int:
        for _ in range(len(EPHEMERAL_PORTS)):
            port = next(self._rng_port)
            if (local, port, remote, remote_port) not in self._connections:
                return port
        raise OSError(99, f"no free local port towards {remote}:{remote_port}")

    def path_mss(self, local: IPAddress, remote: IPAddress) -> int | None:
        """The largest MSS a segment from `local` to `remote` may announce and carry: the
        MTU of the route's link less the IP and TCP headers (1460 for IPv4 and 1440 for
        IPv6 on a 1500-byte link), as Linux advertises. None if there is no route."""
        try:
            route = self.routing.route(remote, local)
        except RoutingError:
            return None
        headers = 60 if remote.version == 6 else 40
        return self.links[route.ifname].info.mtu - headers

    # ------------------------------------------------------------------ loop

    def run(self) -> None:
        self.loop_thread_id = threading.get_ident()
        fds = [self._wake_read.fileno(), *self._by_fd]
        if self.watcher is not None:
            fds.append(self.watcher.fileno())
        poller = select.epoll()
        for fd in fds:
            poller.register(fd, select.EPOLLIN)
        try:
            while not self._stop.is_set():
                try:
                    self._iterate(poller)
                except Exception:  # a bug must not take the whole host down: say so, go on
                    self._internal_error()
        finally:
            poller.close()

    def _iterate(self, poller: select.epoll) -> None:
        events = poller.poll(self._poll_timeout())
        for fd, _ in events:
            if fd == self._wake_read.fileno():
                with contextlib.suppress(BlockingIOError):
                    self._wake_read.recv(4096)
                continue
            if self.watcher is not None and fd == self.watcher.fileno():
                self._on_link_changes(self.watcher.changes())
                continue
            name, link = self._by_fd[fd]
            for frame, trusted in link.receive(128):
                self._on_frame(name, frame, trusted)
            if self._batch:
                self._end_batch()
        while self._calls:
            self._calls.popleft()()
        # Timers after the input: one that came due while this process waited for the
        # CPU sees the ACKs queued meanwhile first (a data-level timer fired on them
        # sent spurious retransmissions onto a backup path on a loaded machine)
        self._run_timers()
        now = self.clock()
        if now - self._trimmed >= TRIM_EVERY:
            self._trimmed = now
            release_free_memory()

    def _on_link_changes(self, changes: list[tuple[str, bool]]) -> None:
        if not changes:
            return
        now = self.clock()
        for ifname, up in changes:
            self.links[ifname].down = not up
            self._paths.clear()  # routes afresh: the way to a peer may have changed
            for listener in self.link_listeners:
                listener(ifname, up, now)

    def _internal_error(self) -> None:
        self._batch = {}
        self.note_internal_error()

    def note_internal_error(self, context: str = "") -> None:
        """Count the exception being handled (call it from an `except` block) and keep its
        traceback in `last_error`; the first three are printed."""
        self.counters.internal_errors += 1
        self.last_error = context + traceback.format_exc()
        if self.counters.internal_errors <= 3:
            print(f"stack: internal error in the I/O loop: {self.last_error}", file=sys.stderr)

    def _end_batch(self) -> None:
        batch = self._batch
        self._batch = {}
        now = self.clock()
        for end_of_batch in batch.values():
            end_of_batch(now)

    def _run_timers(self) -> None:
        """Fire due timers."""
        now = self.clock()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.callback(now)
        next_neighbour = self.neighbours.next_timer()
        if next_neighbour is not None and next_neighbour <= now:
            self._neighbour_timer(now)

    def _poll_timeout(self) -> float:
        """Seconds until the next timer (0: one is due; -1: none)."""
        deadlines = [t[0] for t in self._timers[:1]]
        next_neighbour = self.neighbours.next_timer()
        if next_neighbour is not None:
            deadlines.append(next_neighbour)
        if not deadlines:
            return -1
        return max(0.0, min(deadlines) - self.clock())

    # ------------------------------------------------------------------ receive

    def _on_frame(self, ifname: str, frame: bytes, trusted: bool) -> None:
        self.counters.frames_in += 1
        eth = parse_ethernet(frame)
        if isinstance(eth, MalformedHeader):
            self.counters.malformed += 1
            return
        if eth.ethertype == ETH_P_IP:
            ip4 = parse_ipv4(eth.payload)
            if isinstance(ip4, MalformedHeader) or ip4.is_fragment:
                self.counters.malformed += 1
                return
            if internet_checksum(ip4.header):
                # never offloaded on veth: a sender always fills it in, so no frame
                # from the wire is exempt (RFC 1122 §3.2.1.2 MUST drop)
                self.counters.bad_ip_checksum += 1
                return
            if ip4.protocol == IPPROTO_TCP:
                self._on_tcp(ip4, self._address(ip4.dst), trusted)
        elif eth.ethertype == ETH_P_IPV6:
            ip6 = parse_ipv6(eth.payload)
            if isinstance(ip6, MalformedHeader):
                self.counters.malformed += 1
                return
            if ip6.next_header == IPPROTO_TCP:
                self._on_tcp(ip6, self._address(ip6.dst), trusted)
            elif ip6.next_header == IPPROTO_ICMPV6:
                self._on_icmpv6(ifname, eth.src, ip6)
        elif eth.ethertype == ETH_P_ARP:
            self._on_arp(ifname, eth.payload)

    def _address(self, packed: bytes) -> IPAddress:
        """The address object of 4 or 16 packed bytes, from a small cache (a TCP flow
        meets the same two addresses in every segment)."""
        address = self._addresses.get(packed)
        if address is None:
            if len(self._addresses) >= 1024:
                self._addresses.clear()  # bounded, whatever sources a flood makes up
            address = self._addresses[packed] = ipaddress.ip_address(packed)
        return address

    def _on_arp(self, ifname: str, payload: memoryview) -> None:
        arp = parse_arp(payload)
        if isinstance(arp, MalformedHeader):
            self.counters.malformed += 1
            return
        sender = ipaddress.IPv4Address(arp.sender_ip)
        for_us = arp.operation == ARP_REQUEST and self.routing.is_local(
            ipaddress.IPv4Address(arp.target_ip)
        )
        if (
            arp.operation in (ARP_REQUEST, ARP_REPLY)
            and sender != ipaddress.IPv4Address(0)  # an RFC 5227 probe
            and not self.routing.is_local(sender)
        ):
            # as Linux (arp_accept=0): only a request to us creates an entry; other
            # requests and replies (solicited or not) update one that exists
            self._flush(
                self.neighbours.learn(ifname, sender, arp.sender_mac, self.clock(), create=for_us)
            )
        if for_us:
            reply = arp.reply(self._macs[ifname])
            self._transmit(ifname, emit_ethernet(arp.sender_mac, self._macs[ifname],
                                                 ETH_P_ARP, reply.emit()))  # fmt: skip

    def _on_icmpv6(self, ifname: str, src_mac: bytes, ip6: IPv6Header) -> None:
        if ip6.hop_limit != 255:
            return  # RFC 4861 §7.1: NDP from off-link is discarded
        message = parse_ndp(ip6.src, ip6.dst, ip6.payload)
        if message is None or isinstance(message, MalformedHeader):
            return
        now = self.clock()
        if isinstance(message, NeighborSolicitation):
            source = ipaddress.IPv6Address(ip6.src)
            target = ipaddress.IPv6Address(message.target)
            for_us = self.routing.is_local(target)
            if message.source_lladdr is not None and not source.is_unspecified:
                # RFC 4861 §7.2.3: a solicitation for us creates the entry (others update)
                self._flush(self.neighbours.learn(ifname, source, message.source_lladdr, now,
                                                  create=for_us))  # fmt: skip
            if not for_us:
                return
            advert = NeighborAdvertisement(message.target, self._macs[ifname])
            dst = ip6.src if not source.is_unspecified else bytes.fromhex("ff02" + "0" * 27 + "1")
            payload = advert.emit(message.target, dst)
            packet = emit_ip(message.target, dst, IPPROTO_ICMPV6, payload, ttl=255)
            mac = src_mac if not source.is_unspecified else multicast_mac(dst)
            self._transmit(ifname, emit_ethernet(mac, self._macs[ifname], ETH_P_IPV6, packet))
        elif isinstance(message, NeighborAdvertisement):
            # RFC 4861 §7.2.5: an advertisement for no entry is discarded (not learnt)
            target = ipaddress.IPv6Address(message.target)
            if message.target_lladdr is not None:
                self._flush(self.neighbours.learn(ifname, target, message.target_lladdr, now))
            elif message.flags & NA_FLAG_SOLICITED:
                # the answer to a unicast probe (Linux leaves the option out): the MAC
                # we have is confirmed
                self.neighbours.confirm(ifname, target, now)

    def _on_tcp(self, ip: IPv4Header | IPv6Header, dst: IPAddress, trusted: bool) -> None:
        if not self.routing.is_local(dst):
            return  # not ours (the kernel has no address here either: stay silent)
        if not trusted and not tcp_checksum_ok(ip):
            self.counters.bad_checksum += 1
            return
        tcp = parse_tcp(ip.payload)
        if isinstance(tcp, MalformedHeader):
            self.counters.malformed += 1
            return
        src = self._address(ip.src)
        now = self.clock()
        receiver = self._connections.get((dst, tcp.dst_port, src, tcp.src_port))
        if receiver is not None:
            receiver.on_segment(ip, tcp, now)
            end_of_batch = getattr(receiver, "end_of_batch", None)
            if end_of_batch is not None:
                self._batch[id(receiver)] = end_of_batch
            return
        listener = self._listeners.get(tcp.dst_port)
        if listener is not None and listener.on_syn(ip, tcp, now):
            return
        self.reset_for(ip, tcp)

    # ------------------------------------------------------------------ transmit

    def reset_for(self, ip: IPv4Header | IPv6Header, tcp: TcpHeader, options: bytes = b"") -> None:
        """The RFC 9293 §3.10.7.1 answer to a segment no connection owns (never to a RST)."""
        if tcp.flags & RST:
            return
        if tcp.flags & ACK:
            seq, ack, flags = tcp.ack, 0, RST
        else:
            length = (
                len(tcp.payload) + (1 if tcp.flags & SYN else 0) + (1 if tcp.flags & FIN else 0)
            )
            seq, ack, flags = 0, (tcp.seq + length) & 0xFFFFFFFF, RST | ACK
        segment = emit_tcp(tcp.dst_port, tcp.src_port, seq, ack, flags, 0, options=options,
                           src=ip.dst, dst=ip.src)  # fmt: skip
        self.counters.resets_sent += 1
        self.send_ip(ipaddress.ip_address(ip.dst), ipaddress.ip_address(ip.src), segment)

    def send_ip(
        self,
        src: IPAddress,
        dst: IPAddress,
        segment: bytes | bytearray,
        *,
        gso_mss: int = 0,
        route: Route | None = None,
    ) -> None:
        """Send a TCP segment (checksum filled, or partial when gso_mss is set)."""
        route = route or self.routing.route(dst, src)
        packet = emit_ip(src.packed, dst.packed, IPPROTO_TCP, segment)
        ethertype = ETH_P_IP if dst.version == 4 else ETH_P_IPV6
        mac, solicits = self.neighbours.lookup(route.ifname, route.next_hop, packet, self.clock())
        for solicit in solicits:
            self._solicit(solicit, route.source)
        if mac is None:
            return  # waits for resolution (GSO frames too: released as plain sends)
        frame = emit_ethernet(mac, self._macs[route.ifname], ethertype, packet)
        if gso_mss and len(segment) - ((segment[12] >> 4) * 4) > gso_mss:
            ok = self.links[route.ifname].send_segments(
                frame, mss=gso_mss, l4_offset=14 + (20 if dst.version == 4 else 40),
                ipv6=dst.version == 6,
            )  # fmt: skip
            self._count(ok)
        else:
            self._transmit(route.ifname, frame)

    def queue_room(self, src: IPAddress, dst: IPAddress, device: str = "") -> int:
        """Bytes a connection from `src` to `dst` may still hand to its interface now:
        the interface's local-queue limit less what waits in its queues. Linux's TCP
        small queues (TSQ) keep a flow's bytes in the local qdisc this low; without it
        a local shaper's whole queue fills, and every RTT sample grows by it."""
        path = self._paths.get((src, dst, device))
        if path is None:
            return LOCAL_QUEUE_LIMIT  # not sent on yet: nothing of ours waits there
        return path.link.queue_limit.room(path.link.queued_bytes())

    def send_tcp(
        self,
        src: IPAddress,
        dst: IPAddress,
        header: bytes,
        payload: bytes | bytearray | memoryview = b"",
        *,
        gso_size: int = 0,
        device: str = "",
    ) -> bool:
        """Send a TCP segment in one system call, its checksum left to the kernel.

        `header` is the TCP header with its options (checksum field ignored); `payload`
        goes out without being copied here. With `gso_size` and a longer payload, the
        segment is a super-segment that the kernel cuts into pieces of `gso_size` bytes
        of payload (each with a copy of the header, FIN and PSH on the last only), as
        TSO does. Returns False when it was dropped (queue full, link down) or waits
        for address resolution. The route is `RoutingTable.route(dst, src, device)`:
        `device` is the interface a connection is bound to ("" for none).
        """
        now = self.clock()
        path = self._paths.get((src, dst, device))
        if path is None or now >= path.expires:
            return self._send_tcp_slowly(src, dst, header, payload, gso_size, now, device)
        length = len(header) + len(payload)
        value = path.pseudo + length
        partial = value % 0xFFFF or 0xFFFF  # folded, not complemented (CHECKSUM_PARTIAL)
        tcp_header = header[:16] + partial.to_bytes(2, "big") + header[18:]
        if path.ipv6:
            ip_header = path.ip[:4] + length.to_bytes(2, "big") + path.ip[6:]
        else:
            ip = bytearray(path.ip)  # its checksum field is zero
            ip[2:4] = (20 + length).to_bytes(2, "big")
            ip[10:12] = internet_checksum(ip).to_bytes(2, "big")
            ip_header = bytes(ip)
        ok = path.link.send_tcp(
            path.ethernet + ip_header + tcp_header,
            payload,
            l4_offset=path.l4_offset,
            gso_size=gso_size if len(payload) > gso_size else 0,
            ipv6=path.ipv6,
        )
        self._count(ok)
        if not ok and path.link.down:
            # route afresh: another link may reach dst
            self._paths.pop((src, dst, device), None)
        return ok

    def _send_tcp_slowly(
        self,
        src: IPAddress,
        dst: IPAddress,
        header: bytes,
        payload: bytes | bytearray | memoryview,
        gso_size: int,
        now: float,
        device: str,
    ) -> bool:
        """The path is not cached (first segment, or its MAC is due for a fresh look):
        cut and checksum the segment here and send the pieces as plain packets, which
        wait in the neighbour queue if need be; cache the path once the MAC is known."""
        route = self.routing.route(dst, src, device)
        step = gso_size if 0 < gso_size < len(payload) else max(len(payload), 1)
        seq = int.from_bytes(header[4:8], "big")
        flags = header[13]
        mac: bytes | None = None
        for offset in range(0, max(len(payload), 1), step):
            last = offset + step >= len(payload)
            tcp = bytearray(header)
            tcp[4:8] = ((seq + offset) & 0xFFFFFFFF).to_bytes(4, "big")
            tcp[13] = flags if last else flags & ~(FIN | PSH)
            tcp[16:18] = b"\0\0"
            tcp += payload[offset : offset + step]
            csum = transport_checksum(src.packed, dst.packed, IPPROTO_TCP, tcp)
            tcp[16:18] = csum.to_bytes(2, "big")
            mac = self._send_packet(route, emit_ip(src.packed, dst.packed, IPPROTO_TCP, tcp))
        if mac is None:
            return False
        ipv6 = dst.version == 6
        ethernet = emit_ethernet(mac, self._macs[route.ifname], ETH_P_IPV6 if ipv6 else ETH_P_IP)
        template = bytearray(emit_ip(src.packed, dst.packed, IPPROTO_TCP))
        if not ipv6:
            template[10:12] = b"\0\0"
        self._paths[(src, dst, device)] = _Path(
            link=self.links[route.ifname],
            ethernet=ethernet,
            ip=template,
            pseudo=pseudo_header_value(src.packed, dst.packed, IPPROTO_TCP, 0),
            l4_offset=len(ethernet) + len(template),
            ipv6=ipv6,
            expires=now + _PATH_TTL,
        )
        return True

    def _send_packet(self, route: Route, packet: bytes) -> bytes | None:
        """Send a complete IP packet (checksums filled) to the route's next hop; the MAC
        it went to, or None if it waits for address resolution."""
        mac, solicits = self.neighbours.lookup(route.ifname, route.next_hop, packet, self.clock())
        for solicit in solicits:
            self._solicit(solicit, route.source)
        if mac is not None:
            ethertype = ETH_P_IP if packet[0] >> 4 == 4 else ETH_P_IPV6
            self._transmit(route.ifname, emit_ethernet(mac, self._macs[route.ifname],
                                                       ethertype, packet))  # fmt: skip
        return mac

    def _transmit(self, ifname: str, frame: bytes) -> None:
        self._count(self.links[ifname].send(frame))

    def _count(self, ok: bool) -> None:
        if ok:
            self.counters.frames_out += 1
        else:
            self.counters.frames_dropped += 1

    def _flush(self, release: Release | None) -> None:
        if release is None:
            return  # nothing waited and no known MAC changed: cached paths stay right
        self._paths.clear()  # look MACs up afresh
        for packet in release.frames:
            ethertype = ETH_P_IP if packet[0] >> 4 == 4 else ETH_P_IPV6
            self._transmit(
                release.ifname,
                emit_ethernet(release.mac, self._macs[release.ifname], ethertype, packet),
            )

    def _solicit(self, solicit: Solicit, source: IPAddress) -> None:
        """Broadcast (ARP) or to the solicited-node group (NDP); to the neighbour itself
        when verifying the MAC we have (`solicit.mac`: Linux's unicast probes)."""
        mac = self._macs[solicit.ifname]
        if solicit.address.version == 4:
            request = ArpPacket(ARP_REQUEST, mac, source.packed, bytes(6), solicit.address.packed)
            self._transmit(solicit.ifname, emit_ethernet(solicit.mac or BROADCAST, mac,
                                                         ETH_P_ARP, request.emit()))  # fmt: skip
            return
        target = solicit.address.packed
        dst = target if solicit.mac else solicited_node_multicast(target)
        payload = NeighborSolicitation(target, mac).emit(source.packed, dst)
        packet = emit_ip(source.packed, dst, IPPROTO_ICMPV6, payload, ttl=255)
        dst_mac = solicit.mac or multicast_mac(dst)
        self._transmit(solicit.ifname, emit_ethernet(dst_mac, mac, ETH_P_IPV6, packet))

    def _neighbour_timer(self, now: float) -> None:
        solicits, failures = self.neighbours.on_timer(now)
        for solicit in solicits:
            for config in self.routing.interfaces:
                if config.ifname == solicit.ifname and (
                    config.address.version == solicit.address.version
                ):
                    self._solicit(solicit, config.address.ip)
                    break
        for failure in failures:
            self.counters.unreachable += failure.dropped


_PATH_TTL = 1.0  # seconds a cached MAC is used before the neighbour table is asked again


@dataclass(slots=True)
class _Path:
    link: RawLink
    ethernet: bytes
    ip: bytes | bytearray  # IP header template (length and checksum patched per packet)
    pseudo: int  # pseudo-header sum without the length
    l4_offset: int
    ipv6: bool
    expires: float


def partial_checksum(src: IPAddress, dst: IPAddress, length: int) -> int:
    """The folded pseudo-header sum a GSO segment's checksum field must hold."""
    return ones_complement_sum(
        b"", pseudo_header_value(src.packed, dst.packed, IPPROTO_TCP, length)
    )
