"""The Linux kernel's MPTCP (RFC 8684, v1) in the non-bare host of the topology.

No process is started per case: the listener and the initiator are IPPROTO_MPTCP sockets
made inside the host's namespace from the calling thread (`HostHandle.entered()`), and
served by threads of the worker process that select on the socket and a stop pipe.
Endpoints, limits, sysctls, counters and subflows go through `testbed.mptcp.KernelMptcp`
(netlink, sock_diag, /proc/net/netstat of the namespace).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import os
import platform
import select
import socket
import struct
import threading
import time
from collections.abc import Iterable
from typing import Any, ClassVar

from conformance.iut.base import MODES, AppReport, Iut, IutError, source_bytes
from testbed.apps import SEED, StreamChecker
from testbed.mptcp import IPPROTO_MPTCP, TCP_IS_MPTCP, KernelMptcp

KEEP_DATA = 1 << 16
TCP_FASTOPEN_CONNECT = 30  # linux/tcp.h (the socket module lacks it)
FASTOPEN_QUEUE = 16  # pending TFO requests a listener takes (TCP_FASTOPEN's value)


class KernelIut(Iut):
    name: ClassVar[str] = "kernel"
    versions: ClassVar[frozenset[int]] = frozenset({1})
    bare: ClassVar[bool] = False
    description: ClassVar[str] = "Linux MPTCP (net/mptcp), RFC 8684 only"
    # The listener's backlog: its accept queue and, below SYN cookies, its SYN queue.
    # The fuzzer, with a hundred connections in flight, raises it.
    backlog: int = 64

    def __init__(self, topo: Any, host: str = "server") -> None:
        super().__init__(topo, host)
        self.control = KernelMptcp(self.host.ns)
        self._stop_r, self._stop_w = os.pipe()
        self._threads: list[threading.Thread] = []
        self._sockets: set[socket.socket] = set()
        self._accepted: dict[int, socket.socket] = {}  # by the peer's port (close_peer)
        self._lock = threading.Lock()
        self._stopped = False
        self._fastopen = False

    @classmethod
    def unavailable(cls) -> str | None:
        if not os.path.exists("/proc/sys/net/mptcp/enabled"):
            return "this kernel has no MPTCP (/proc/sys/net/mptcp/enabled is missing)"
        return None

    @classmethod
    def environment(cls) -> dict[str, str]:
        return {
            "implementation": "Linux kernel MPTCP",
            "version": platform.release(),
            **super().environment(),
            "kernel build": platform.version(),
        }

    # -- configuration --

    def set_limits(self, subflows: int, add_addr_accepted: int) -> None:
        self.control.set_limits(subflows=subflows, add_addr_accepted=add_addr_accepted)

    def add_endpoint(
        self, address: str, *, flags: Iterable[str] = (), id: int | None = None,
        port: int | None = None, ifname: str | None = None,
    ) -> None:  # fmt: skip
        kwargs: dict[str, Any] = {"flags": set(flags)}
        if id is not None:
            kwargs["id"] = id
        if port is not None:
            kwargs["port"] = port
        if ifname is not None:
            kwargs["ifname"] = ifname
        self.control.add_endpoint(address, **kwargs)

    def set_backup(self, address: str, backup: bool) -> None:
        self.control.set_endpoint_backup(address, backup)

    def delete_endpoint(self, address: str) -> None:
        for endpoint in self.control.endpoints():
            if endpoint.address == address:
                self.control.delete_endpoint(endpoint.id)
                return
        # no endpoint: the address of the initial subflows, ID 0 (as mptcp_join.sh's
        # "remove id 0" tests: `ip mptcp endpoint delete id 0 ADDR`)
        self.control.delete_initial_address(address)

    def set_sysctl(self, name: str, value: str | int) -> None:
        self.control.set_sysctl(name, value)

    def enable_fastopen(self) -> None:
        self.set_sysctl("net.ipv4.tcp_fastopen", 3)  # 1 client, 2 server
        self._fastopen = True

    # -- observation --

    def snapshot(self) -> str:
        """`ss -tinmM` in the namespace: each MPTCP socket and TCP subflow with its
        tcp_info (cwnd, unacked, retransmits, windows) and memory."""
        try:
            return self.host.run(["ss", "-tinmM"], timeout=10, check=False).stdout
        except Exception as error:  # a snapshot is evidence, never a new failure
            return f"ss failed: {error}"

    def counters(self) -> dict[str, int]:
        return self.control.counters()

    def subflows(self) -> list[Any]:
        return self.control.subflows()

    def connections(self) -> list[Any]:
        return self.control.connections()

    # -- running --

    def _socket(self, family: int = socket.AF_INET) -> socket.socket:
        """An MPTCP socket in the host; plain TCP when MPTCP is disabled there
        (net.mptcp.enabled=0 refuses IPPROTO_MPTCP), as an application would fall back."""
        with self.host.entered():
            try:
                sock = socket.socket(family, socket.SOCK_STREAM, IPPROTO_MPTCP)
            except OSError as error:
                if error.errno not in (errno.ENOPROTOOPT, errno.EPROTONOSUPPORT):
                    raise
                sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        with self._lock:
            self._sockets.add(sock)
        return sock

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            if len(self._threads) >= 256:  # a fuzzer's thousands of connections
                self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def listen(
        self, port: int, *, mode: str = "echo", nbytes: int = 0, address: str | None = None
    ) -> None:
        if mode not in MODES:
            raise IutError(f"mode {mode!r}: use {', '.join(MODES)}")
        # One listener per family (IPv6 only on the AF_INET6 one), so that IPv4 cases
        # meet a plain AF_INET socket, as before IPv6 cases existed; a bound one only in
        # its address's family.
        families = [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")]
        if address is not None:
            families = [(socket.AF_INET6 if ":" in address else socket.AF_INET, address)]
        for family, wildcard in families:
            listener = self._socket(family)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            listener.bind((wildcard, port))
            if self._fastopen:
                listener.setsockopt(socket.SOL_TCP, socket.TCP_FASTOPEN, FASTOPEN_QUEUE)
            listener.listen(self.backlog)
            listener.setblocking(False)
            self._spawn(self._accept_loop, listener, mode, nbytes)

    def connect(
        self, address: str, port: int, *, mode: str = "sink", nbytes: int = 0,
        source: str | None = None,
    ) -> None:  # fmt: skip
        if mode not in MODES:
            raise IutError(f"mode {mode!r}: use {', '.join(MODES)}")
        sock = self._socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
        if source:
            sock.bind((source, 0))
        if self._fastopen:  # the SYN waits for the first send, and carries it with a cookie
            sock.setsockopt(socket.SOL_TCP, TCP_FASTOPEN_CONNECT, 1)
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect((address, port))
        self._spawn(self._connect_then_play, sock, mode, nbytes)

    def _wait(self, sock: socket.socket, write: bool = False) -> bool:
        """Block until `sock` is ready (or stop was asked): True when ready."""
        readers: list[Any] = [self._stop_r] if write else [sock, self._stop_r]
        writers: list[Any] = [sock] if write else []
        ready_r, _, _ = select.select(readers, writers, [])
        return self._stop_r not in ready_r

    def _accept_loop(self, listener: socket.socket, mode: str, nbytes: int) -> None:
        while self._wait(listener):
            try:
                conn, peer = listener.accept()
            except (BlockingIOError, OSError):
                continue
            with self._lock:
                self._sockets.add(conn)
                self._accepted[peer[1]] = conn
            conn.setblocking(False)
            self._spawn(self._play, conn, mode, nbytes)

    def _connect_then_play(self, sock: socket.socket, mode: str, nbytes: int) -> None:
        if not self._wait(sock, write=True):
            return
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            self._add_report(AppReport(error=f"connect: {os.strerror(error)}"))
            return
        self._play(sock, mode, nbytes)

    def _play(self, conn: socket.socket, mode: str, nbytes: int) -> None:
        report = AppReport()
        started = time.monotonic()
        with contextlib.suppress(OSError):
            report.mptcp = bool(conn.getsockopt(socket.SOL_TCP, TCP_IS_MPTCP))
        sent, received = hashlib.sha256(), hashlib.sha256()
        checker = StreamChecker(SEED if self.data_seed is None else self.data_seed)
        # What is still to send, as a queue of views: no copy of the rest on each send
        queue: collections.deque[memoryview] = collections.deque()
        if mode == "source":
            queue.append(memoryview(source_bytes(nbytes, self.data_seed)))
        shut = False
        try:
            if mode == "close-unread":  # close with data unread: the kernel fast-closes
                waited: list[Any] = [conn, self._stop_r]
                select.select(waited, [], [])
                return
            if mode == "abort":  # read once, then close with SO_LINGER 0: fast close
                waited = [conn, self._stop_r]
                if conn in select.select(waited, [], [])[0]:
                    report.bytes_received = len(conn.recv(1 << 16))
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            while True:
                watched: list[Any] = [conn, self._stop_r]
                if queue:
                    ready_r, ready_w, _ = select.select(watched, [conn], [])
                else:
                    if mode == "source" and not shut:
                        conn.shutdown(socket.SHUT_WR)
                        shut = True
                    ready_r, ready_w, _ = select.select(watched, [], [])
                if self._stop_r in ready_r:
                    report.error = report.error or "stopped before the peer closed"
                    break
                if conn in ready_w and queue:
                    with contextlib.suppress(BlockingIOError):
                        done = conn.send(queue[0])
                        sent.update(queue[0][:done])
                        report.bytes_sent += done
                        queue[0] = queue[0][done:]
                        if not queue[0]:
                            queue.popleft()
                if conn in ready_r:
                    try:
                        chunk = conn.recv(1 << 18)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        # The peer has finished sending: an echo still owes it the rest.
                        conn.setblocking(True)
                        for view in queue:
                            conn.sendall(view)
                            sent.update(view)
                            report.bytes_sent += len(view)
                        break
                    report.bytes_received += len(chunk)
                    received.update(chunk)
                    checker.update(chunk)
                    if len(report.data) < KEEP_DATA:
                        report.data += chunk[: KEEP_DATA - len(report.data)]
                    if mode == "echo":
                        queue.append(memoryview(chunk))
        except OSError as error:
            report.error = str(error)
        finally:
            with self._lock:
                self._sockets.discard(conn)
                self._accepted = {p: c for p, c in self._accepted.items() if c is not conn}
            with contextlib.suppress(OSError):
                conn.close()
            report.sha256_sent, report.sha256_received = sent.hexdigest(), received.hexdigest()
            report.divergences = checker.finish()
            report.duration_s = time.monotonic() - started
            self._add_report(report)

    def close_peer(self, port: int) -> None:
        with self._lock:
            conn = self._accepted.pop(port, None)
        if conn is not None:
            # wakes its application thread (its read ends), which closes the socket
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(2.0)
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()
        os.close(self._stop_r)
        os.close(self._stop_w)
        self.control.close()
