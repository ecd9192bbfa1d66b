"""The stack's only contact with the wire: one AF_PACKET socket per interface.

The socket carries a virtio-net header (PACKET_VNET_HDR) in front of every frame, in
both directions. That one choice settles the offload traps of FACTS.md:

- Received frames may be GSO super-frames of up to 64 KB from a local kernel peer with
  TSO on, with a TCP checksum that was never filled in. The header says so:
  `NEEDS_CSUM` marks a frame whose checksum is partial (it never left this machine, so
  there is nothing to verify), `DATA_VALID` a frame whose checksum was already checked.
  Other frames carry a full checksum that the stack must verify.
- Sent frames may be TCP super-segments of up to 64 KB with a partial checksum: the
  header asks the kernel to segment them to the MSS and to sum each segment. Where the
  device cannot (offloads off), the kernel does it in software. This is how a Python
  stack reaches tens of MB/s: one system call and one header per 40 segments.

Frames that this host sent itself (PACKET_OUTGOING) are dropped at the socket.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_OUTGOING = 4
PACKET_IGNORE_OUTGOING = 23

VNET_HDR = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HDR_LEN = VNET_HDR.size
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_TCPV6 = 4
_PLAIN_HEADER = VNET_HDR.pack(0, VIRTIO_NET_HDR_GSO_NONE, 0, 0, 0, 0)
TCP_CHECKSUM_OFFSET = 16


class LinkError(OSError):
    """An interface cannot be opened or used; the message names it and the cause."""


@dataclass(frozen=True)
class InterfaceInfo:
    ifname: str
    index: int
    mac: bytes
    mtu: int


SIOCOUTQ = 0x5411  # TIOCOUTQ: the socket's unsent (not yet freed) bytes
# What one interface's queues may hold of ours before connections wait: Linux's TSQ
# lets one flow keep about two 64 KB GSO frames in the local qdisc. A userspace loop
# reacts later than the kernel's completion handler, so the limit grows when the queue
# ran dry while senders waited on it (`QueueLimit`), up to LOCAL_QUEUE_MAX
LOCAL_QUEUE_LIMIT = 128 * 1024
LOCAL_QUEUE_MAX = 1 << 20


class QueueLimit:
    """The local-queue limit of one interface, adapted to how fast we refill it.

    The kernel refills a qdisc from its completion handler; our loop comes back only
    with the next ACK it reads, and a busy Python loop (or a slow peer's stretched
    ACKs) can leave the link idle. So when a look finds the queue under 1/8 full
    although the previous one found it at least half full, it (nearly) drained between
    two looks: the limit doubles (up to LOCAL_QUEUE_MAX). While the queue stays more
    than half full the limit shrinks back by 1/64 per look, towards LOCAL_QUEUE_LIMIT."""

    __slots__ = ("limit", "was_full")

    def __init__(self) -> None:
        self.limit = LOCAL_QUEUE_LIMIT
        self.was_full = False  # the last look found it at least half full

    def room(self, queued: int) -> int:
        if queued < self.limit // 8 and self.was_full:
            self.limit = min(2 * self.limit, LOCAL_QUEUE_MAX)
        elif queued > self.limit // 2 and self.limit > LOCAL_QUEUE_LIMIT:
            self.limit = max(self.limit - (self.limit >> 6), LOCAL_QUEUE_LIMIT)
        self.was_full = queued >= self.limit // 2
        return self.limit - queued


_INT = struct.Struct("i")
_INT_ZERO = bytes(4)


class RawLink:
    """One interface, opened in the calling thread's network namespace."""

    def __init__(self, ifname: str, *, receive_buffer: int = 16 << 20):
        self.down = False  # the kernel said ENETDOWN on the last send or receive
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except PermissionError:
            raise LinkError(
                errno.EPERM, "raw sockets need root (CAP_NET_RAW): run the stack as root"
            ) from None
        try:
            sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            with contextlib.suppress(OSError):  # Linux ≥ 4.20; else filtered in recv
                sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, receive_buffer)
            sock.bind((ifname, ETH_P_ALL))
        except OSError as error:
            sock.close()
            if error.errno == errno.ENODEV:
                raise LinkError(
                    errno.ENODEV, f"no interface {ifname!r} in this network namespace"
                ) from None
            raise LinkError(error.errno, f"cannot open {ifname!r}: {error.strerror}") from None
        sock.setblocking(False)
        self.sock = sock
        self.info = _interface_info(ifname, sock)
        self._recv_into = sock.recvfrom_into
        self._buffer = bytearray(VNET_HDR_LEN + 65536 + 64)
        self._view = memoryview(self._buffer)
        self._sendmsg = sock.sendmsg
        self.queue_limit = QueueLimit()

    def fileno(self) -> int:
        return self.sock.fileno()

    def queued_bytes(self) -> int:
        """Bytes sent on this socket that the kernel still holds: frames in the
        interface's qdisc (a tbf's queue) and device queue (SIOCOUTQ: sk_wmem_alloc)."""
        try:
            return int(_INT.unpack(fcntl.ioctl(self.sock.fileno(), SIOCOUTQ, _INT_ZERO))[0])
        except OSError:
            return 0

    def close(self) -> None:
        self.sock.close()

    def receive(self, limit: int = 64) -> list[tuple[bytes, bool]]:
        """Up to `limit` waiting frames as (frame, checksum_trusted), without blocking.

        `checksum_trusted` is True when the kernel vouches for the TCP/UDP checksum
        (partial from a local sender, or already validated); otherwise the caller
        must verify it.
        """
        frames = []
        view = self._view
        for _ in range(limit):
            try:
                size, address = self._recv_into(self._buffer)
            except BlockingIOError:
                break
            except OSError as error:
                # the interface went down (the socket reports it once): no frames now
                if error.errno in (errno.ENETDOWN, errno.ENXIO, errno.ENODEV):
                    self.down = True
                    break
                raise
            self.down = False
            if address[2] == PACKET_OUTGOING:
                continue
            flags = view[0]
            frames.append((bytes(view[VNET_HDR_LEN:size]), bool(flags & 3)))
        return frames

    def send(self, frame: bytes | bytearray | memoryview) -> bool:
        """Send one complete frame (checksums filled). False if the kernel dropped it."""
        return self._transmit(_PLAIN_HEADER, frame)

    def send_segments(
        self, frame: bytes | bytearray, *, mss: int, l4_offset: int, ipv6: bool
    ) -> bool:
        """Send a TCP super-segment; the kernel cuts it at `mss` and sums each piece.

        `frame` holds Ethernet, IP and TCP headers and up to 64 KB of payload. Its TCP
        checksum field must hold the folded pseudo-header sum (not complemented), as a
        NIC expects for CHECKSUM_PARTIAL. Flags other than ACK/PSH are the caller's
        concern: the kernel copies the header to every piece (FIN/PSH on the last).
        """
        return self.send_tcp(frame, b"", l4_offset=l4_offset, gso_size=mss, ipv6=ipv6)

    def send_tcp(
        self,
        head: bytes | bytearray,
        payload: bytes | bytearray | memoryview,
        *,
        l4_offset: int,
        gso_size: int,
        ipv6: bool,
    ) -> bool:
        """Send a TCP frame (`head`: Ethernet, IP and TCP headers; then `payload`) whose
        TCP checksum the kernel completes, in one system call and without copying the
        payload here. The checksum field must hold the folded pseudo-header sum.

        With `gso_size`, the payload is cut into pieces of `gso_size` bytes (GSO, as
        `send_segments`); without, it is one frame that must fit the MTU.
        """
        if gso_size:
            tcp_header_len = (head[l4_offset + 12] >> 4) * 4
            header = VNET_HDR.pack(
                VIRTIO_NET_HDR_F_NEEDS_CSUM,
                VIRTIO_NET_HDR_GSO_TCPV6 if ipv6 else VIRTIO_NET_HDR_GSO_TCPV4,
                l4_offset + tcp_header_len,
                gso_size,
                l4_offset,
                TCP_CHECKSUM_OFFSET,
            )
        else:
            header = VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, 0, 0,
                                   l4_offset, TCP_CHECKSUM_OFFSET)  # fmt: skip
        return self._transmit(header, head, payload) if payload else self._transmit(header, head)

    def _transmit(self, *buffers: bytes | bytearray | memoryview) -> bool:
        """One frame from `buffers` (gathered by the kernel), in one system call."""
        try:
            self._sendmsg(buffers)
            self.down = False
            return True
        except (BlockingIOError, InterruptedError):
            return False  # socket buffer full: a drop, as on a wire
        except OSError as error:
            # ENOBUFS: a qdisc or an nftables egress rule dropped it. ENETDOWN: link down.
            if error.errno in (errno.ENETDOWN, errno.ENXIO):
                self.down = True
                return False
            if error.errno in (errno.ENOBUFS, errno.EAGAIN):
                return False
            raise


def _interface_info(ifname: str, sock: socket.socket) -> InterfaceInfo:
    """MAC, index and MTU from the kernel, read through the bound socket's namespace.

    Not from /sys/class/net: sysfs shows the namespace it was mounted in, not the
    calling thread's, so it lies to a thread that entered another namespace.
    """
    SIOCGIFMTU, SIOCGIFHWADDR, SIOCGIFINDEX = 0x8921, 0x8927, 0x8933
    name = struct.pack("16s16x", ifname.encode())
    hw = fcntl.ioctl(sock.fileno(), SIOCGIFHWADDR, name)
    mtu = struct.unpack_from("i", fcntl.ioctl(sock.fileno(), SIOCGIFMTU, name), 16)[0]
    index = struct.unpack_from("i", fcntl.ioctl(sock.fileno(), SIOCGIFINDEX, name), 16)[0]
    return InterfaceInfo(ifname, index, bytes(hw[18:24]), mtu)


def open_in_netns(ifname: str, netns: str | None) -> RawLink:
    """Open `ifname` inside the named namespace (as `ip netns` names it), or here."""
    return in_netns(netns, lambda: RawLink(ifname))


def in_netns(netns: str | None, make: Callable[[], T]) -> T:
    """`make()` run inside the named namespace (its sockets stay there), or here."""
    if netns is None:
        return make()
    from testbed import _linux

    path = f"/run/netns/{netns}"
    try:
        target = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise LinkError(errno.ENOENT, f"no network namespace {netns!r} ({path})") from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _linux.setns(target)
        try:
            return make()
        finally:
            _linux.setns(home)
    finally:
        os.close(target)
        os.close(home)
