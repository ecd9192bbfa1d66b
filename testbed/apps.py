"""Traffic apps over IPPROTO_MPTCP (or plain TCP) that check every transfer end to end.

Three roles, each usable as the server (listen) or the client (connect):
- `source` sends N bytes of a seeded pseudo-random stream, and meanwhile reads and
  hashes whatever comes back (an echo), until the peer closes;
- `sink` reads to EOF;
- `echo` sends back what it reads, until EOF.
Every end reports bytes and SHA-256 both ways, so a test compares the two ends.

In-process, through `transfer()`: the server and the client are threads whose sockets
were made inside their namespaces (no Python start-up per transfer). As a program:

    python -m testbed.apps {sink,echo,source} --bind ADDR --port P [--connect ADDR:PORT]
                           [--protocol mptcp|tcp] [--bytes N] [--timeout S] [--json]

A server prints `{"event": "listening", "address": ..., "port": ...}` once it listens
(callers wait for that line rather than sleeping). Each connection ends with one line:
the JSON report with `--json`, else a one-line summary. Errors give one JSON line
`{"event": "error", ...}` and exit status 1, never a traceback.

Whether MPTCP was really used comes from the socket itself: getsockopt(SOL_TCP,
TCP_IS_MPTCP) is 0 after a fallback, and getsockopt(SOL_MPTCP, MPTCP_INFO) gives
`struct mptcp_info` (include/uapi/linux/mptcp.h), of which the report keeps the token,
`subflows` (joined subflows, the first not counted), `subflows_total`, the flags with
MPTCP_INFO_FLAG_FALLBACK, and the data-level byte counters. After a fallback the kernel
hands SOL_MPTCP options to the TCP socket, which refuses them: the report then has
`in_use: false` and `fallback: true`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import random
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from testbed.mptcp_info import (
    IPPROTO_MPTCP,
    MPTCP_INFO,
    MPTCP_INFO_FLAG_FALLBACK,
    MPTCP_INFO_SIZE,
    SOL_MPTCP,
    TCP_IS_MPTCP,
    parse_mptcp_info,
)
from testbed.netns import Namespace

ROLES = ("sink", "echo", "source")
BLOCK = 1 << 20
SEED = 20261125
_BLOCK_DATA = random.Random(SEED).randbytes(BLOCK)
_OTHER_BLOCKS: dict[int, bytes] = {}  # seed -> its block, for data other than the stream
_RECV_SIZE = 1 << 18
_EMPTY_SHA256 = hashlib.sha256().hexdigest()


def stream_chunk(index: int, seed: int = SEED) -> bytes:
    """The index-th MiB of the deterministic stream: the seeded block rotated by a step
    per index, so that no two nearby MiBs are equal and a misplaced MiB changes the digest.
    One memcpy per MiB: far faster than the link. Another `seed` gives other random
    bytes (what an iperf-like sender sends), which receivers do not recognise as the
    stream: only their SHA-256 is checked."""
    if seed == SEED:
        block = _BLOCK_DATA
    else:
        block = _OTHER_BLOCKS.get(seed) or _OTHER_BLOCKS.setdefault(
            seed, random.Random(seed).randbytes(BLOCK)
        )
    shift = (index * 7919) % BLOCK
    return block[shift:] + block[:shift]


def stream_sha256(nbytes: int, seed: int = SEED) -> str:
    """The SHA-256 of the first `nbytes` of the stream that `source` sends."""
    digest = hashlib.sha256()
    for index in range((nbytes + BLOCK - 1) // BLOCK):
        digest.update(stream_chunk(index, seed)[: min(BLOCK, nbytes - index * BLOCK)])
    return digest.hexdigest()


@dataclass
class Divergence:
    """Received bytes [offset, offset + length) of the stream differ from what was sent.
    `source` is where in the stream the first bytes that arrived there really belong
    (data delivered at the wrong place), or -1 if they are nowhere in it."""

    offset: int
    length: int
    source: int = -1


@dataclass
class AppReport:
    """What one end saw. `role` is sink/echo/source; `side` is client or server."""

    role: str
    side: str
    protocol: str
    bytes_sent: int = 0
    bytes_received: int = 0
    sha256_sent: str = _EMPTY_SHA256
    sha256_received: str = _EMPTY_SHA256
    duration_s: float = 0.0
    local: str = ""
    remote: str = ""
    mptcp: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    # Where the received bytes differ from the stream of the run's seed (at most
    # MAX_DIVERGENCES ranges); empty when they match.
    divergences: list[Divergence] = field(default_factory=list)
    # Whether what arrived began as that stream (only then are divergences located)
    seeded_stream: bool = False

    @property
    def goodput_mbps(self) -> float:
        moved = max(self.bytes_sent, self.bytes_received)
        return moved * 8 / self.duration_s / 1e6 if self.duration_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "goodput_mbps": round(self.goodput_mbps, 2)}

    def summary(self) -> str:
        if self.protocol == "mptcp":
            m = self.mptcp
            how = (
                f"MPTCP token {m.get('token', 0):#010x}, {m.get('subflows_total', 0)} subflow(s)"
                if m.get("in_use")
                else "MPTCP fell back to TCP"
            )
        else:
            how = "TCP"
        outcome = f"FAILED: {self.error}" if self.error else "ok"
        return (
            f"{self.side} {self.role} {self.local} <-> {self.remote}: sent {self.bytes_sent} B, "
            f"received {self.bytes_received} B in {self.duration_s:.3f} s "
            f"({self.goodput_mbps:.1f} Mbit/s), {how}: {outcome}"
        )


@dataclass
class TransferResult:
    """Both ends of one transfer. `direction` is upload (client to server), download
    (server to client) or echo (client to server and back)."""

    client: AppReport
    server: AppReport
    direction: str
    nbytes: int

    @property
    def intact(self) -> bool:
        """Every byte arrived, unchanged: the digests and counts agree at both ends."""
        if self.client.error or self.server.error:
            return False
        if self.direction == "echo":
            c, s = self.client, self.server
            return (
                c.bytes_sent == s.bytes_received == s.bytes_sent == c.bytes_received == self.nbytes
                and c.sha256_sent == s.sha256_received == s.sha256_sent == c.sha256_received
            )
        sender, receiver = (
            (self.client, self.server) if self.direction == "upload" else (self.server, self.client)
        )
        return (
            sender.bytes_sent == self.nbytes == receiver.bytes_received
            and sender.sha256_sent == receiver.sha256_received
        )

    @property
    def goodput_mbps(self) -> float:
        receiver = self.server if self.direction == "upload" else self.client
        return receiver.goodput_mbps

    def __str__(self) -> str:
        return (
            f"{self.direction} of {self.nbytes} bytes: client {self.client.to_json()}, "
            f"server {self.server.to_json()}"
        )


def _protocol_number(protocol: str) -> int:
    if protocol == "mptcp":
        return IPPROTO_MPTCP
    if protocol == "tcp":
        return socket.IPPROTO_TCP
    raise ValueError(f"protocol {protocol!r}: use mptcp or tcp")


def make_socket(ns: Namespace | None, address: str, protocol: str) -> socket.socket:
    """A stream socket made inside `ns` (it stays bound to that namespace)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    number = _protocol_number(protocol)
    if ns is None:
        return socket.socket(family, socket.SOCK_STREAM, number)
    with ns.entered():
        return socket.socket(family, socket.SOCK_STREAM, number)


def mptcp_status(sock: socket.socket) -> dict[str, Any]:
    """Whether MPTCP is in use on a connected IPPROTO_MPTCP socket, with the fields of
    the kernel's struct mptcp_info that say how (token, subflows, fallback, bytes)."""
    try:
        in_use = bool(sock.getsockopt(socket.SOL_TCP, TCP_IS_MPTCP))
    except OSError:
        in_use = False
    status: dict[str, Any] = {"in_use": in_use, "fallback": not in_use}
    try:
        info = parse_mptcp_info(sock.getsockopt(SOL_MPTCP, MPTCP_INFO, MPTCP_INFO_SIZE))
    except OSError:
        return status  # fallen back: the TCP socket refuses SOL_MPTCP
    status.update(
        token=info["token"],
        subflows=info["subflows"],
        subflows_total=info["subflows_total"],
        flags=info["flags"],
        fallback=bool(info["flags"] & MPTCP_INFO_FLAG_FALLBACK) or not in_use,
        bytes_sent=info["bytes_sent"],
        bytes_received=info["bytes_received"],
    )
    return status


# ---------------------------------------------------------------------- roles

MAX_DIVERGENCES = 8
_MERGE_GAP = 64  # matching bytes between two differing ones that still count as one range
_SAMPLE = 32  # bytes of each range looked up in the stream, to tell where they came from


class StreamChecker:
    """Compares received bytes with the stream of a seed (the seeded stream by default:
    what a `source` of that seed sends) as they arrive, so that a failed
    digest comes with where it failed. A copy and a memcmp per read (~10 us per 256 KiB);
    only a read that differs is scanned byte by byte. Differing bytes less than
    _MERGE_GAP apart form one range (random data matches the expected byte 1 time in 256).

    It costs nothing on other data (a file, iperf-like random bytes): when the first
    bytes are not the stream's, it stops at once (`is_stream` False), and it also stops
    once it has located MAX_DIVERGENCES ranges or one range longer than _MAX_RANGE. The
    SHA-256 of what arrived is what says whether a transfer is intact; this only says where
    a seeded transfer went wrong."""

    def __init__(self, seed: int = SEED) -> None:
        self.seed = seed  # the stream expected: what a `source` of this seed sends
        self.offset = 0
        self.divergences: list[Divergence] = []
        self.is_stream: bool | None = None  # None until the first bytes arrive
        self.checking = True
        self._samples: list[bytes] = []
        self._index, self._chunk = -1, b""

    def _expected(self, offset: int, n: int) -> bytes:
        index, start = divmod(offset, BLOCK)
        if index == self._index and start + n <= BLOCK:
            return self._chunk[start : start + n]  # the usual read: one slice
        out = bytearray()
        while n > 0:
            index, start = divmod(offset, BLOCK)
            if index != self._index:
                self._index, self._chunk = index, stream_chunk(index, self.seed)
            piece = self._chunk[start : start + n]
            out += piece
            offset, n = offset + len(piece), n - len(piece)
        return bytes(out)

    def update(self, data: memoryview | bytes) -> None:
        if not self.checking:
            self.offset += len(data)
            return
        got = bytes(data)  # bytes == bytes is a memcmp; memoryview == bytes is ~100x slower
        expected = self._expected(self.offset, len(got))
        if self.is_stream is None and got:
            self.is_stream = _looks_like(got[:_PROBE], expected[:_PROBE])
            if not self.is_stream:
                self.checking = False
                self.offset += len(got)
                return
        if got != expected:
            self._note(got, expected)
        self.offset += len(got)

    def _note(self, got: bytes, expected: bytes) -> None:
        ranges = self.divergences
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            if a == b:
                continue
            at = self.offset + i
            last = ranges[-1] if ranges else None
            if last is not None and at - (last.offset + last.length) < _MERGE_GAP:
                last.length = at + 1 - last.offset
                if last.length > _MAX_RANGE:
                    self.checking = False  # located; scanning on is Python per byte
                    return
            elif len(ranges) < MAX_DIVERGENCES:
                ranges.append(Divergence(at, 1))
                self._samples.append(got[i : i + _SAMPLE])
            else:
                self.checking = False
                return

    def finish(self) -> list[Divergence]:
        """The divergences, each with the stream offset its bytes belong at."""
        if self.divergences:
            stream = self._expected(0, self.offset)
            for divergence, sample in zip(self.divergences, self._samples, strict=True):
                divergence.source = stream.find(sample) if len(sample) >= _SAMPLE // 2 else -1
        return self.divergences


_PROBE = 64  # first bytes compared to tell the seeded stream from other data
_MAX_RANGE = 1 << 16  # a differing range this long is located enough


def _looks_like(got: bytes, expected: bytes) -> bool:
    """Whether the first bytes are the seeded stream's, allowing for a few corrupted ones
    (other data matches 1 byte in 256 by chance)."""
    same = sum(a == b for a, b in zip(got, expected, strict=True))
    return same * 2 >= len(got)


def _receive_all(conn: socket.socket, report: AppReport, reply: bool, seed: int = SEED) -> None:
    """Read to EOF, hashing what arrives and checking it against the stream of `seed` (what
    a source of that seed sends, echoed or not); with `reply`, send it all back (echo)."""
    received, sent = hashlib.sha256(), hashlib.sha256()
    checker = StreamChecker(seed)
    buffer = bytearray(_RECV_SIZE)
    view = memoryview(buffer)
    while True:
        n = conn.recv_into(buffer)
        if n == 0:
            break
        received.update(view[:n])
        checker.update(view[:n])
        report.bytes_received += n
        if reply:
            conn.sendall(view[:n])
            sent.update(view[:n])
            report.bytes_sent += n
    report.sha256_received = received.hexdigest()
    report.divergences = checker.finish()
    report.seeded_stream = bool(checker.is_stream)
    if reply:
        report.sha256_sent = sent.hexdigest()


def _source(conn: socket.socket, nbytes: int, report: AppReport, seed: int = SEED) -> None:
    """Send the stream while a second thread reads (and hashes) what comes back, so that
    an echoing peer never blocks on a full window; done when the peer closes."""
    errors: list[OSError] = []

    def read_back() -> None:
        try:
            _receive_all(conn, report, reply=False, seed=seed)
        except OSError as error:
            errors.append(error)

    reader = threading.Thread(target=read_back, daemon=True)
    reader.start()
    digest = hashlib.sha256()
    try:
        for index in range((nbytes + BLOCK - 1) // BLOCK):
            chunk = stream_chunk(index, seed)[: min(BLOCK, nbytes - index * BLOCK)]
            conn.sendall(chunk)
            digest.update(chunk)
            report.bytes_sent += len(chunk)
        report.sha256_sent = digest.hexdigest()
        conn.shutdown(socket.SHUT_WR)
    except BaseException:
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)  # unblocks the reader
        raise
    finally:
        reader.join()  # the peer's close (EOF) says it read everything
    if errors:
        raise errors[0]


def play(conn: socket.socket, role: str, nbytes: int, report: AppReport, seed: int = SEED) -> None:
    """Play `role` on a connected socket; fills `report` (errors included) and closes it.
    A `source` sends the stream of `seed` (the seeded stream by default); a `sink` or an
    `echo` locates where what it receives differs from that stream."""
    started = time.monotonic()
    try:
        report.local = _endpoint(conn.getsockname())
        report.remote = _endpoint(conn.getpeername())
        if report.protocol == "mptcp":
            report.mptcp = mptcp_status(conn)
        if role == "source":
            _source(conn, nbytes, report, seed)
        elif role in ("sink", "echo"):
            _receive_all(conn, report, reply=role == "echo", seed=seed)
        else:
            raise ValueError(f"role {role!r}: use sink, echo or source")
        if report.protocol == "mptcp" and report.mptcp.get("in_use"):
            # Again at the end: joins come after the start and the byte counters grew.
            # Subflows may already be closing after EOF, so the counts keep their maxima.
            start, end = report.mptcp, mptcp_status(conn)
            for key in ("subflows", "subflows_total"):
                end[key] = max(start.get(key, 0), end.get(key, 0))
            report.mptcp = {**start, **end}
    except (OSError, ValueError) as error:
        report.error = f"{role}: {error}"
    finally:
        report.duration_s = time.monotonic() - started
        conn.close()


def _endpoint(address: Any) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen(ns: Namespace | None, address: str, port: int, protocol: str) -> socket.socket:
    listener = make_socket(ns, address, protocol)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((address, port))
        listener.listen(16)
    except OSError:
        listener.close()
        raise
    return listener


def serve_one(
    listener: socket.socket, role: str, nbytes: int, protocol: str, timeout: float,
    seed: int = SEED,
) -> AppReport:  # fmt: skip
    """Accept one connection and play `role` on it; `timeout` bounds each socket wait."""
    report = AppReport(role, "server", protocol)
    listener.settimeout(timeout)
    try:
        conn, _ = listener.accept()
    except OSError as error:
        report.error = f"accept: {error or 'timed out'}"
        return report
    conn.settimeout(timeout)
    play(conn, role, nbytes, report, seed)
    return report


def connect_one(
    ns: Namespace | None,
    address: str,
    port: int,
    role: str,
    nbytes: int,
    protocol: str,
    timeout: float,
    bind: str | None = None,
    seed: int = SEED,
) -> AppReport:
    """Connect from `ns` (optionally from `bind`) and play `role`."""
    report = AppReport(role, "client", protocol)
    try:
        conn = make_socket(ns, address, protocol)
    except (OSError, ValueError) as error:
        report.error = f"socket: {error}"
        return report
    conn.settimeout(timeout)
    try:
        if bind:
            conn.bind((bind, 0))
        conn.connect((address, port))
    except OSError as error:
        report.error = f"connect to {address}:{port}: {error or 'timed out'}"
        conn.close()
        return report
    play(conn, role, nbytes, report, seed)
    return report


# The largest DSS mapping Linux sends (one GSO skb): the longest run a misapplied one
# can misplace
_MAX_MAPPING = 1 << 16
# How far it can misplace it: the distance from the msk's ack_seq at the join to the
# join's first DSN is at most what the sender had in flight, within the receive window
# (74,888 bytes seen in the interop aggregation cell; tcp_rmem's default maximum is 6 MiB)
_MAX_REMAP_SHIFT = 1 << 23


def join_remap_evidence(divergences: list[Divergence], receiver_mib: dict[str, int]) -> str:
    """The evidence that wrong received bytes are the Linux 6.18 receiver bug documented
    in docs/architecture.md ("Kernel data corruption at a join"), or "" if they are not.

    For a transfer whose byte counts and sender digest are right: one run of received
    bytes (at most one 64 KiB mapping long) that belong `shift` bytes later in the stream
    (0 < shift ≤ 8 MiB), and a join counted by the receiver (MPJoinAckRx). The evidence
    quotes the counters that vary between occurrences (DuplicateData, DSSNotMatching,
    MPRstTx when the receiver later resets the join)."""
    if len(divergences) != 1:
        return ""
    run = divergences[0]
    shift = run.source - run.offset
    if not (0 < shift <= _MAX_REMAP_SHIFT and run.length <= _MAX_MAPPING):
        return ""
    if receiver_mib.get("MPJoinAckRx", 0) < 1:
        return ""
    counters = ", ".join(
        f"{name} {receiver_mib.get(name, 0)}"
        for name in ("MPJoinAckRx", "DuplicateData", "DSSNotMatching", "MPRstTx")
    )
    return (
        f"received bytes [{run.offset}, {run.offset + run.length}) are the stream's bytes from "
        f"{run.source}: a mapping applied {shift} bytes early after a join ({counters})"
    )


def kernel_join_remap(result: TransferResult, receiver_mib: dict[str, int]) -> str:
    """`join_remap_evidence` for a transfer of the seeded stream: "" unless the transfer
    failed with every byte counted and the sender's digest right."""
    sender, receiver = (
        (result.client, result.server)
        if result.direction == "upload"
        else (result.server, result.client)
    )
    if result.intact or result.direction == "echo" or sender.error or receiver.error:
        return ""
    if not (sender.bytes_sent == receiver.bytes_received == result.nbytes):
        return ""
    if sender.sha256_sent != stream_sha256(result.nbytes):
        return ""
    return join_remap_evidence(receiver.divergences, receiver_mib)


_DIRECTIONS = {  # direction -> (server role, client role)
    "upload": ("sink", "source"),
    "download": ("source", "sink"),
    "echo": ("echo", "source"),
}


def transfer(
    server_ns: Namespace,
    client_ns: Namespace,
    server_address: str,
    port: int,
    nbytes: int,
    *,
    protocol: str = "mptcp",
    direction: str = "upload",
    timeout: float = 60.0,
    client_bind: str | None = None,
    server_protocol: str | None = None,
    seed: int = SEED,
) -> TransferResult:
    """One connection from client to server moving `nbytes`; asserts nothing, reports
    both ends (`TransferResult.intact`). `timeout` bounds each socket wait. A different
    `server_protocol` (e.g. an MPTCP client to a TCP server) exercises the fallback."""
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction {direction!r}: use {', '.join(_DIRECTIONS)}")
    server_role, client_role = _DIRECTIONS[direction]
    server_protocol = server_protocol or protocol
    listener = listen(server_ns, server_address, port, server_protocol)
    reports: list[AppReport] = []
    thread = threading.Thread(
        target=lambda: reports.append(
            serve_one(listener, server_role, nbytes, server_protocol, timeout, seed)
        ),
        daemon=True,
    )
    thread.start()
    try:
        client = connect_one(
            client_ns, server_address, port, client_role, nbytes, protocol, timeout,
            client_bind, seed,
        )  # fmt: skip
    finally:
        thread.join(timeout + 5)
        listener.close()
    server = reports[0] if reports else AppReport(server_role, "server", server_protocol,
                                                  error="the server thread hung")  # fmt: skip
    return TransferResult(client, server, direction, nbytes)


# ---------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m testbed.apps",
        description="MPTCP/TCP traffic apps that report bytes and SHA-256 at both ends.",
    )
    parser.add_argument("role", choices=ROLES)
    parser.add_argument("--bind", default=None, help="local address (server: listen on it)")
    parser.add_argument("--port", type=int, default=0, help="listen port (server)")
    parser.add_argument("--connect", metavar="ADDR:PORT", help="be the client")
    parser.add_argument("--protocol", choices=("mptcp", "tcp"), default="mptcp")
    parser.add_argument("--bytes", type=int, default=0, help="bytes to send as source")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per socket wait")
    parser.add_argument("--seed", type=int, default=SEED,
                        help="source: send the random bytes of this seed instead of the "
                        "seeded stream; sink, echo: locate differences against them")  # fmt: skip
    parser.add_argument("--count", type=int, default=1, help="connections to serve")
    parser.add_argument("--json", action="store_true", help="end with JSON reports")
    return parser


def _emit(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def finish(report: AppReport) -> None:
        if args.json:
            _emit(report.to_json())
        else:
            print(report.summary(), flush=True)

    try:
        if args.bytes < 0:
            raise ValueError("--bytes must not be negative")
        if args.connect:
            host, _, port = args.connect.rpartition(":")
            report = connect_one(None, host.strip("[]"), int(port), args.role, args.bytes,
                                 args.protocol, args.timeout, args.bind, args.seed)  # fmt: skip
            finish(report)
            return 1 if report.error else 0
        address = args.bind or "0.0.0.0"
        with listen(None, address, args.port, args.protocol) as listener:
            _emit({"event": "listening", "address": address, "port": listener.getsockname()[1],
                   "protocol": args.protocol, "role": args.role})  # fmt: skip
            failed = 0
            for _ in range(args.count):
                report = serve_one(listener, args.role, args.bytes, args.protocol, args.timeout,
                                   args.seed)  # fmt: skip
                finish(report)
                failed += bool(report.error)
        return 1 if failed else 0
    except (OSError, ValueError) as error:
        _emit({"event": "error", "error": f"{type(error).__name__}: {error}"})
        return 1
    except KeyboardInterrupt:
        _emit({"event": "error", "error": "interrupted"})
        return 130


if __name__ == "__main__":
    sys.exit(main())
