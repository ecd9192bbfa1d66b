"""Plain TCP on the host: wire bytes <-> `stack.tcp.Segment`, and the loop's glue.

`TcpStream` drives one `TcpConnection` from the host's I/O loop (segments in, segments
out through `Host.send_ip`, one timer through `Host.call_at`) and offers blocking calls
to other threads. `TcpServer` does the same for a `TcpListener`. This is the subflow
path the MPTCP layer will use; on its own it is plain TCP against any peer.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os
import threading
from collections.abc import Callable
from typing import Any

from stack.host import Host, Timer
from stack.route import IPAddress
from stack.tcp.connection import TcpConfig, TcpConnection
from stack.tcp.events import Closed, Established, PeerFinished, Reset
from stack.tcp.listener import TcpListener
from stack.tcp.segment import Segment
from stack.wire.errors import MalformedOption
from stack.wire.ip import IPv4Header, IPv6Header
from stack.wire.tcp import (
    MAX_OPTIONS_LENGTH,
    MaxSegmentSize,
    Sack,
    SackPermitted,
    TcpHeader,
    Timestamps,
    WindowScale,
    build_options,
    emit_tcp,
    parse_tcp_options,
)

_ISN_SECRET = os.urandom(16)


def _new_isn_secret() -> None:
    global _ISN_SECRET
    _ISN_SECRET = os.urandom(16)


# A forked stack (the harness's fork server) must not share its ISN secret (RFC 6528).
os.register_at_fork(after_in_child=_new_isn_secret)
# The largest payload of a super-segment: its IP packet must stay within 65535 bytes
# (20 bytes of IPv4 header and up to 60 of TCP header).
GSO_MAX_SIZE = 65535 - 20 - 60


def segment_from_header(tcp: TcpHeader) -> Segment:
    """Decode a parsed TCP header into the state machine's view (MPTCP options kept).

    The payload stays a memoryview of the received frame (no copy); the state machine
    copies it once, into its receive buffer.
    """
    seg = Segment(tcp.src_port, tcp.dst_port, tcp.seq, tcp.ack, tcp.flags & 0xFF, tcp.window,
                  payload=tcp.payload)  # fmt: skip
    if len(tcp.options):
        extra = []
        for option in parse_tcp_options(tcp.options):
            if isinstance(option, MaxSegmentSize):
                seg.mss = option.mss
            elif isinstance(option, WindowScale):
                seg.wscale = option.shift
            elif isinstance(option, SackPermitted):
                seg.sack_permitted = True
            elif isinstance(option, Timestamps):
                seg.timestamp = (option.tsval, option.tsecr)
            elif isinstance(option, Sack):
                seg.sack_blocks = tuple(option.blocks)
            elif hasattr(option, "subtype") and not isinstance(option, MalformedOption):
                extra.append(option)
        seg.extra_options = tuple(extra)
    return seg


_NOPS = (b"", b"\x01\x01\x01", b"\x01\x01", b"\x01")  # padding to a multiple of 4


def option_area(seg: Segment) -> bytes:
    """The encoded options of `seg`, padded: exactly what `build_options` gives, which is
    only called when they do not all fit (it then drops the least important)."""
    ts = seg.timestamp
    if (
        not seg.extra_options
        and not seg.sack_blocks
        and seg.mss is None
        and seg.wscale is None
        and not seg.sack_permitted
    ):  # a data segment or an ACK: timestamps or nothing
        return Timestamps(*ts).emit() + b"\x01\x01" if ts is not None else b""
    options: list[Any] = []
    if seg.mss is not None:
        options.append(MaxSegmentSize(seg.mss))
    if seg.sack_permitted:
        options.append(SackPermitted())
    if ts is not None:
        options.append(Timestamps(*ts))
    if seg.wscale is not None:
        options.append(WindowScale(seg.wscale))
    if seg.sack_blocks:
        options.append(Sack(tuple(seg.sack_blocks)))
    options.extend(seg.extra_options)
    area = b"".join([option.emit() for option in options])
    if len(area) + (-len(area) & 3) > MAX_OPTIONS_LENGTH:
        return build_options(options).data
    return area + _NOPS[len(area) & 3]


def segment_header(seg: Segment) -> bytes:
    """The TCP header of `seg` with its options, checksum field zero."""
    return emit_tcp(seg.src_port, seg.dst_port, seg.seq, seg.ack, seg.flags, seg.window,
                    options=option_area(seg))  # fmt: skip


def segment_to_bytes(seg: Segment, src: IPAddress, dst: IPAddress) -> bytes:
    """The whole TCP segment, checksum filled (for `Host.send_ip`; `transmit` is faster)."""
    return emit_tcp(seg.src_port, seg.dst_port, seg.seq, seg.ack, seg.flags, seg.window,
                    options=option_area(seg), payload=seg.payload, src=src.packed,
                    dst=dst.packed)  # fmt: skip


def with_path_mss(config: TcpConfig, host: Host) -> TcpConfig:
    """`config` for connections on `host`: their MSS fits the route's link (RFC 9293
    §3.7.1: the MTU less the IP and TCP headers of the connection's family), unless the
    caller chose `path_mss` already."""
    if config.path_mss is not None:
        return config
    return dataclasses.replace(config, path_mss=host.path_mss)


def transmit(
    host: Host, seg: Segment, src: IPAddress, dst: IPAddress, mss: int, device: str = ""
) -> bool:
    """Send one outgoing segment from `src` to `dst` through the host, in one system call
    (out of `device` if the connection is bound to one: `RoutingTable.route`).

    `mss` is the peer's MSS (`TcpConnection.snd_mss`): payload plus TCP options of one
    wire segment (RFC 9293 §3.7.1). A segment whose payload does not fit beside its
    options goes out as a GSO super-segment that the kernel cuts into pieces of
    `mss - options` bytes (as TSO does: every piece carries the same options, so a DSS
    mapping on it covers the whole super-segment); the TCP checksum is the kernel's.
    Returns False if the frame was dropped locally (full queue) or waits for ARP/NDP.
    """
    header = segment_header(seg)
    return host.send_tcp(src, dst, header, seg.payload, gso_size=mss - (len(header) - 20),
                         device=device)  # fmt: skip


class TcpStream:
    """One connection, driven by the host loop; blocking calls for other threads."""

    def __init__(self, host: Host, conn: TcpConnection):
        self.host = host
        self.conn = conn
        self.local: tuple[IPAddress, int] = conn.local
        self.remote: tuple[IPAddress, int] = conn.remote
        self._changed = threading.Condition()
        self._timer: Timer | None = None
        self.established = False
        self.finished = False  # the peer sent FIN
        self.closed = False
        self.error = ""
        if conn.config.gso_max_size is None:
            conn.gso_max_size = GSO_MAX_SIZE  # the host's link cuts super-segments
        self._arrived: list[Segment] = []
        host.register((self.local[0], self.local[1], self.remote[0], self.remote[1]), self)

    # ---- loop side

    def on_segment(self, ip: IPv4Header | IPv6Header, tcp: TcpHeader, now: float) -> None:
        self._arrived.append(segment_from_header(tcp))

    def end_of_batch(self, now: float) -> None:
        """The segments of one read of the link, in one go: one ACK, one super-segment."""
        arrived, self._arrived = self._arrived, []
        self.conn.handle_segments(arrived, now)
        self.pump(now)

    def pump(self, now: float) -> None:
        conn, host, src, dst = self.conn, self.host, self.local[0], self.remote[0]
        for seg in conn.poll_segments():
            transmit(host, seg, src, dst, conn.snd_mss)
        events = self.conn.poll_events()
        for event in events:
            if isinstance(event, Established):
                self.established = True
            elif isinstance(event, PeerFinished):
                self.finished = True
            elif isinstance(event, Reset):
                self.error = "connection reset by peer" if event.by_peer else "aborted"
            elif isinstance(event, Closed):
                self.closed = True
                self.host.unregister((self.local[0], self.local[1], self.remote[0],
                                      self.remote[1]))  # fmt: skip
        deadline = self.conn.next_timer()
        if self._timer is not None and (deadline is None or deadline != self._timer.deadline):
            self._timer.cancel()
            self._timer = None
        if deadline is not None and self._timer is None:
            self._timer = self.host.call_at(deadline, self._on_timer)
        # Wake callers on events, and also when a send or receive call freed space.
        with self._changed:
            self._changed.notify_all()

    def _on_timer(self, now: float) -> None:
        self._timer = None
        self.conn.handle_timer(now)
        self.pump(now)

    # ---- caller side (any thread but the loop's)

    def _run(self, fn: Callable[[float], Any]) -> Any:
        result: list[Any] = []
        done = threading.Event()

        def call() -> None:
            now = self.host.clock()
            try:
                result.append(fn(now))
            finally:
                self.pump(now)
                done.set()

        self.host.call_soon(call)
        done.wait()
        return result[0] if result else None

    def _wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: predicate() or bool(self.error), timeout):
                raise TimeoutError(f"{what} did not happen within {timeout} s")
        if self.error and not predicate():
            raise ConnectionError(self.error)

    def sendall(self, data: bytes, timeout: float = 60.0) -> None:
        view = memoryview(data)
        while view:
            taken: int = self._run(functools.partial(self._send_now, view))
            view = view[taken:]
            if view:
                self._wait(lambda: self.conn.send_space > 0 or self.closed, timeout, "send space")

    def _send_now(self, data: memoryview, now: float) -> int:
        return self.conn.send(data, now)

    def recv(self, max_bytes: int = 65536, timeout: float = 60.0) -> bytes:
        self._wait(lambda: self.conn.rcvbuf.readable > 0 or self.finished or self.closed,
                   timeout, "data")  # fmt: skip
        return bytes(self._run(lambda now: self.conn.receive(max_bytes, now)))

    def shutdown(self) -> None:
        self._run(self.conn.shutdown_write)

    def close(self) -> None:
        self._run(self.conn.close)


def connect(host: Host, remote: tuple[str, int], *, config: TcpConfig | None = None,
            timeout: float = 10.0) -> TcpStream:  # fmt: skip
    address = ipaddress.ip_address(remote[0])
    route = host.routing.route(address)
    port = host.allocate_port(route.source, address, remote[1])
    config = with_path_mss(config or TcpConfig(), host)
    holder: list[TcpStream] = []
    ready = threading.Event()

    def start() -> None:
        now = host.clock()
        conn = TcpConnection((route.source, port), (address, remote[1]),
                             config=config, isn_secret=_ISN_SECRET, now=now)  # fmt: skip
        stream = TcpStream(host, conn)
        conn.connect(now)
        stream.pump(now)
        holder.append(stream)
        ready.set()

    host.call_soon(start)
    ready.wait()
    stream = holder[0]
    stream._wait(lambda: stream.established, timeout, f"connect to {remote[0]}:{remote[1]}")
    return stream


class TcpServer:
    """Accepts plain TCP connections on a port, on any of the host's addresses."""

    def __init__(self, host: Host, port: int, *, config: TcpConfig | None = None):
        self.host = host
        self.port = port
        self.config = with_path_mss(config or TcpConfig(), host)
        self._listeners: dict[IPAddress, TcpListener] = {}
        self._accepted: list[TcpStream] = []
        self._changed = threading.Condition()
        self._timers: dict[IPAddress, Timer] = {}
        host.call_soon(lambda: host.listen(port, self))

    def on_syn(self, ip: IPv4Header | IPv6Header, tcp: TcpHeader, now: float) -> bool:
        local = ipaddress.ip_address(ip.dst)
        listener = self._listeners.get(local)
        if listener is None:
            listener = TcpListener((local, self.port), config=self.config, isn_secret=_ISN_SECRET)
            self._listeners[local] = listener
        remote = (ipaddress.ip_address(ip.src), tcp.src_port)
        listener.handle_segment(remote, segment_from_header(tcp), now)
        self._pump(listener, now)
        return True

    def _pump(self, listener: TcpListener, now: float) -> None:
        for remote, seg in listener.poll_segments():
            transmit(self.host, seg, listener.local[0], remote[0], listener.config.mss)
        while (conn := listener.accept()) is not None:
            stream = TcpStream(self.host, conn)
            stream.established = True
            stream.pump(now)
            with self._changed:
                self._accepted.append(stream)
                self._changed.notify_all()
        # One timer per listener: re-armed for its earliest half-open deadline.
        timer = self._timers.pop(listener.local[0], None)
        if timer is not None:
            timer.cancel()
        deadline = listener.next_timer()
        if deadline is not None:

            def fire(now: float) -> None:
                self._timers.pop(listener.local[0], None)
                listener.handle_timer(now)
                self._pump(listener, now)

            self._timers[listener.local[0]] = self.host.call_at(deadline, fire)

    def accept(self, timeout: float = 30.0) -> TcpStream:
        with self._changed:
            if not self._changed.wait_for(lambda: bool(self._accepted), timeout):
                raise TimeoutError(f"no connection on port {self.port} within {timeout} s")
            return self._accepted.pop(0)
