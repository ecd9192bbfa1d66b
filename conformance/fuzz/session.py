"""One IUT under fuzzing: its own topology, the tester's raw socket, a listener in echo mode.

The IUT listens once (echo mode, port `PORT`, subflow limit 8, no announced address
accepted) and every sequence is a connection of its own from a distinct tester port.
Frames are built and parsed with the project's codec (`stack.wire`), not scapy: a
segment costs tens of microseconds instead of a millisecond. The tester's host is
bare; the `Tester` opens the socket and installs the kernel IUT's neighbour entries,
and answers the stack's ARP requests as frames are read here.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Iterator
from ipaddress import IPv4Address
from typing import Any

from conformance.fuzz.mutate import Packet
from conformance.iut import DRIVERS, Iut
from conformance.iut.kernel import KernelIut
from conformance.iut.stack import StackIut
from conformance.tester import PACKET_OUTGOING, Tester
from stack.wire.ethernet import ARP_REQUEST, BROADCAST_MAC, ETH_P_ARP, ArpPacket, emit_ethernet
from stack.wire.ip import IPPROTO_TCP, IPv4Header, parse_ipv4
from stack.wire.tcp import TcpHeader, emit_tcp_ip, parse_tcp

PORT = 5001
LIMITS = (8, 0)  # subflows, accepted ADD_ADDRs (an announced address is echoed, not joined)
BACKLOG = 1024  # the kernel listener's (the stack's is its own: 128)
PORTS = range(20000, 61000)  # the tester's ports, handed out in turn
IFNAME = "eth0"


class Session:
    """The IUT `name` in a topology of its own, listening in echo mode."""

    def __init__(self, name: str, driver: type[Iut] | None = None) -> None:
        self.name = name
        self.driver_class = driver or DRIVERS[name]
        self._stack = contextlib.ExitStack()
        self._free: collections.deque[int] = collections.deque(PORTS)
        self.stderr: collections.deque[str] = collections.deque(maxlen=50)
        self.internal_errors = 0
        self.iut: Iut
        self.tester: Tester

    def __enter__(self) -> Session:
        try:
            self._open()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _open(self) -> None:
        import topologies
        from testbed import build

        bare = ("client", "server") if self.driver_class.bare else ("client",)
        topo = self._stack.enter_context(build(topologies.single_path(bare=bare)))
        self.tester = self._stack.enter_context(Tester(topo, "client", "server"))
        self.iut = self.driver_class(topo, "server")
        self._stack.callback(self.iut.stop)
        if isinstance(self.iut, KernelIut):
            self.iut.backlog = BACKLOG  # else its queues overflow: resets, SYN cookies
        self.iut.set_limits(*LIMITS)
        self.iut.listen(PORT, mode="echo")
        port = self.tester.ports[IFNAME]
        self.sock = port.sock
        self.src = IPv4Address(self.tester.address(IFNAME)).packed
        self.dst = IPv4Address(self.tester.iut_address(IFNAME)).packed
        self._ethernet = port.peer_mac + port.mac + b"\x08\x00"
        self.announce()
        for process in self.processes():
            if process.stderr is not None:
                threading.Thread(target=self._drain, args=(process.stderr,), daemon=True).start()

    def _drain(self, stream: Any) -> None:
        """Keep the stack's stderr flowing (a full pipe would stop it) and its tail."""
        with contextlib.suppress(OSError, ValueError):
            for line in stream:
                self.stderr.append(line.rstrip())
                if "internal error" in line:
                    self.internal_errors += 1

    # -- the IUT's process, for the resource checks --

    def processes(self) -> list[Any]:
        return self.iut.processes() if isinstance(self.iut, StackIut) else []

    def pid(self) -> int | None:
        running = [p for p in self.processes() if p.poll() is None]
        return running[0].pid if running else None

    def exited(self) -> str | None:
        """Why the IUT is gone (a stack process that exited), or None."""
        for process in self.processes():
            code = process.poll()
            if code is not None:
                tail = " | ".join(list(self.stderr)[-5:])
                return f"{self.name} exited with status {code}" + (f": {tail}" if tail else "")
        return None

    def connections(self) -> collections.Counter[str] | None:
        """The kernel IUT's live MPTCP connections by state (None for the stack)."""
        if not isinstance(self.iut, KernelIut):
            return None
        return collections.Counter(c.state_name for c in self.iut.connections())

    # -- ports and frames --

    def close_peer(self, lport: int) -> None:
        """The IUT's application lets go of the connection from our port (Iut.close_peer)."""
        self.iut.close_peer(lport)

    def allocate(self) -> int:
        port = self._free.popleft()
        return port

    def release(self, port: int) -> None:
        self._free.append(port)  # reused last: ~40000 sequences later

    def send(self, lport: int, packet: Packet) -> None:
        frame = self._ethernet + emit_tcp_ip(
            self.src,
            self.dst,
            lport,
            PORT,
            packet.seq,
            packet.ack,
            packet.flags,
            packet.window,
            options=packet.options_area(),
            payload=packet.payload,
        )
        with contextlib.suppress(BlockingIOError):
            self.sock.send(frame)

    def announce(self) -> None:
        """An ARP request from the tester to the IUT: a userspace IUT learns (refreshes)
        the tester's MAC from it, so it never queues, nor drops, a burst of answers
        while it resolves the tester again (the stack re-resolves every 30 s)."""
        request = ArpPacket(ARP_REQUEST, self._ethernet[6:12], self.src, bytes(6), self.dst)
        with contextlib.suppress(BlockingIOError):
            self.sock.send(
                emit_ethernet(BROADCAST_MAC, self._ethernet[6:12], ETH_P_ARP, request.emit())
            )

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> Iterator[TcpHeader]:
        """The IUT's TCP segments from its listening port waiting on the socket now;
        ARP requests are answered on the way, everything else is dropped."""
        while True:
            try:
                frame, address = self.sock.recvfrom(65600)
            except BlockingIOError:
                return
            if address[2] == PACKET_OUTGOING or self.tester.answer_neighbours(IFNAME, frame):
                continue
            if frame[12:14] != b"\x08\x00":
                continue
            ip = parse_ipv4(frame[14:])
            if not isinstance(ip, IPv4Header) or ip.protocol != IPPROTO_TCP or ip.src != self.dst:
                continue
            tcp = parse_tcp(ip.payload)
            if isinstance(tcp, TcpHeader) and tcp.src_port == PORT:
                yield tcp
