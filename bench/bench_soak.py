"""Soak: the userspace stack serving kernel MPTCP clients for half an hour (issue: soak).

    python -m bench.bench_soak [--minutes 30] [--concurrency 4] [--seed 1] [--json FILE]

One `user_dual_homed` topology, both paths tbf at `RATE` (100 Mbit/s); path2 drops 1 % of
the frames in each direction (nftables) for the whole run. The stack (`python -m stack
serve` through the `stack-v1` driver) listens on the bare `server` host in echo mode,
limits 2 subflows, no endpoints. The kernel on `client` is configured as a Linux user
would (`ip mptcp endpoint add 198.18.0.1 dev eth1 subflow`, limits 2,0): every connection
goes over path1 to 203.0.113.2 and the kernel joins from 198.18.0.1 over path2.

Traffic: `--concurrency` (4) connections at a time, a new one as soon as one ends, for
`--minutes`. Each sends N bytes, N log-uniform in 100 KB..20 MB (fixed seed), of random
data that is not the testbed's seeded stream (the seed differs between the connections
running side by side, so bytes delivered to the wrong connection change its digest), and
reads the echo back while sending. All transfers are echoes, so every one moves N bytes
each way (upload and download at once): `serve` takes one port and one mode per process,
and a second stack process on the same bare host would answer the first one's port with
RST, so no sink listener can run beside the echo one.

Path1 flaps on a fixed-seed schedule: the first `down()` (both veth ends) 30-60 s into
the run, then one every 30-60 s after the previous one, each lasting 2-5 s before `up()`;
every flap is logged. Connections already running must carry on over the join on
path2. No connection is opened from `QUIET_BEFORE_FLAP` (3 s) before a scheduled down
until path1 is up again: the first subflow of a new connection can only use path1.

Each transfer is judged from both ends' reports: the kernel client's (this process: bytes
and SHA-256 of what it sent and of the echo it read) and the stack's report line for the
connection of the same client address and port. It is
* intact: N bytes each way, and the SHA-256 of what the client sent, the stack received,
  the stack sent and the client read all equal that of the N bytes of the data;
* corrupted: both ends finished without error but a count or a digest differs;
* stalled: the client's connection made no progress for `STALL_S` (10 s): no byte
  accepted by its send buffer, no byte read, and neither the connect nor the echo's end
  of stream completed, while the transfer was unfinished; or the transfer was not done
  `deadline` = 30 s + N / 250 kB/s after the connect started (110 s for 20 MB);
* failed: an error at either end (reset, refused, ...), or no report from the stack
  within `REPORT_WAIT` (10 s) of the client's end.
The client gives a stalled transfer up (closes its socket) and goes on. Pauses while path1
is down count like any other. Transfers still running when the time is up run to their
end (each bounded by its deadline) and count.

The stack process's VmRSS is sampled every `RSS_EVERY` (2 s) during the traffic. After a
warm-up (the first 60 s, or half the run if it is shorter than 2 minutes), the figure is
the median RSS of the last 20 % of the remaining time over the median of its first 20 %.
CPU: the stack process's utime + stime over the traffic. Also reported, as evidence: the
stack's subflows that ended with an error (from its reports), the kernel client's MPTcpExt
counters that moved, and for each transfer that was not intact both ends' subflows
(the kernel's from sock_diag when it was given up; `--json` has every transfer).

Goals (the issue's): every transfer intact, 0 stalls, RSS flat within 10 % (ratio
0.90..1.10). Exit status 1 when a goal is missed or on a harness error, 2 on a usage
error, 130 when interrupted (Ctrl-C or SIGTERM: transfers are abandoned, the stack
stopped, the namespaces removed).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import math
import os
import random
import re
import select
import signal
import socket
import statistics
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import topologies
from conformance.flood import cpu_seconds, rss_kib
from conformance.iut import AppReport, IutError
from conformance.iut.kernel import KernelIut
from conformance.iut.stack import StackV1Iut
from testbed import build
from testbed.apps import BLOCK, make_socket, mptcp_status, stream_chunk, stream_sha256
from testbed.mptcp import counters_diff
from testbed.spec import LinkProps

PORT = 8080
SERVER = "203.0.113.2"  # user_dual_homed: the server's first address (over path1)
CLIENT_SECOND = "198.18.0.1"  # the client's `subflow` endpoint (eth1, path2)
RATE = "100mbit"
LOSS_PERCENT = 1.0  # on path2, both directions, the whole run
DATA_SEED = 4242  # + the connection's slot: random data, not the seeded stream
MIN_BYTES, MAX_BYTES = 100_000, 20_000_000
STALL_S = 10.0
DEADLINE_BASE_S = 30.0
DEADLINE_RATE = 250_000  # bytes/s each way
REPORT_WAIT = 10.0
FLAP_EVERY = (30.0, 60.0)  # s from one down to the next (the first: from the start)
FLAP_DOWN = (2.0, 5.0)  # s that path1 stays down
QUIET_BEFORE_FLAP = 3.0
RSS_EVERY = 2.0
PROGRESS_EVERY = 30.0
WARMUP_S = 60.0
SHARE = 0.20  # the first and last 20 % of the measured time
GOAL_RSS = 0.10
CHUNK = 1 << 18
NOTED_COUNTERS = ("Join", "Rst", "Reset", "Fail", "Fallback", "DSS", "Mismatch", "Drop",
                  "Duplicate", "Retrans")  # fmt: skip

Progress = Any  # Callable[[str], None]


class HarnessError(RuntimeError):
    """The bench could not run (the stack or the topology failed)."""


# ---------------------------------------------------------------- pure figures


def flap_schedule(rng: random.Random, duration: float) -> list[tuple[float, float]]:
    """(down, up) times of path1 from the start, all within `duration`."""
    flaps: list[tuple[float, float]] = []
    down = rng.uniform(*FLAP_EVERY)
    while True:
        up = down + rng.uniform(*FLAP_DOWN)
        if up >= duration:
            return flaps
        flaps.append((down, up))
        down += rng.uniform(*FLAP_EVERY)


def transfer_size(rng: random.Random) -> int:
    """Log-uniform in MIN_BYTES..MAX_BYTES."""
    return round(math.exp(rng.uniform(math.log(MIN_BYTES), math.log(MAX_BYTES))))


def deadline_s(nbytes: int) -> float:
    return DEADLINE_BASE_S + nbytes / DEADLINE_RATE


def warmup_s(duration: float) -> float:
    return min(WARMUP_S, duration / 2)


def rss_flatness(samples: Sequence[tuple[float, int]], duration: float) -> dict[str, Any]:
    """The median RSS (KiB) of the first and the last SHARE of [warm-up, duration] and
    their ratio, with the samples (t from the start, KiB) taken during the traffic."""
    start = warmup_s(duration)
    span = (duration - start) * SHARE
    first = [kib for t, kib in samples if start <= t <= start + span]
    last = [kib for t, kib in samples if duration - span <= t <= duration]
    result: dict[str, Any] = {
        "warmup_s": start,
        "window_s": span,
        "first_kib": statistics.median(first) if first else None,
        "last_kib": statistics.median(last) if last else None,
        "max_kib": max((kib for _, kib in samples), default=None),
        "at_start_kib": samples[0][1] if samples else None,
        "ratio": None,
        "met": False,
    }
    if first and last:
        result["ratio"] = result["last_kib"] / result["first_kib"]
        result["met"] = abs(result["ratio"] - 1.0) <= GOAL_RSS
    return result


# ---------------------------------------------------------------- one transfer


class Stalled(Exception):
    """No progress for STALL_S, or past the transfer's deadline."""


class Halted(Exception):
    """The bench is stopping (interrupted)."""


@dataclass
class Transfer:
    """One connection of the kernel client: N bytes up and their echo back."""

    index: int
    nbytes: int
    slot: int
    started_s: float  # from the start of the run
    deadline_s: float
    local: str = ""
    sent: int = 0
    received: int = 0
    sha256_sent: str = ""
    sha256_received: str = ""
    eof: bool = False
    longest_pause_s: float = 0.0
    duration_s: float = 0.0
    client_mptcp: dict[str, Any] = field(default_factory=dict)
    client_subflows: list[dict[str, Any]] = field(default_factory=list)  # on failure
    # on a stall or failure: the stack's `state` of this connection, the kernel's ss -tinmM
    stack_state: dict[str, Any] = field(default_factory=dict)
    client_state: str = ""
    client_counters: dict[str, int] = field(default_factory=dict)
    error: str = ""
    stalled: str = ""
    outcome: str = "running"  # intact, corrupted, stalled, failed
    detail: str = ""
    server: dict[str, Any] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return DATA_SEED + self.slot


class Client(threading.Thread):
    """Plays one transfer from the kernel client's namespace, then judges it against
    the stack's report; `done` is called at the end, whatever happened."""

    def __init__(self, bench: Soak, transfer: Transfer) -> None:
        super().__init__(daemon=True, name=f"transfer-{transfer.index}")
        self.bench, self.transfer = bench, transfer
        self._last_progress = 0.0
        self._began = 0.0
        self._first_report = len(bench.stack.reports())

    def run(self) -> None:
        transfer = self.transfer
        self._began = self._last_progress = time.monotonic()
        try:
            self._play()
        except Stalled as stall:
            transfer.stalled = str(stall)
        except Halted:
            transfer.error = "halted: the bench is stopping"
        except OSError as error:
            transfer.error = f"client: {error}"
        transfer.duration_s = time.monotonic() - self._began
        try:
            self._judge()
        except Exception as error:  # read by the bench: a harness error, never silent
            transfer.outcome = "failed"
            transfer.detail = f"harness: {type(error).__name__}: {error}"
        self.bench.done(self)

    def _progress(self) -> None:
        now = time.monotonic()
        self.transfer.longest_pause_s = max(self.transfer.longest_pause_s,
                                            now - self._last_progress)  # fmt: skip
        self._last_progress = now

    def _left(self) -> float:
        """Seconds until the stall or the deadline watchdog fires (raises when it has)."""
        transfer, now = self.transfer, time.monotonic()
        where = f"sent {transfer.sent}, echoed {transfer.received} of {transfer.nbytes} bytes"
        transfer.longest_pause_s = max(transfer.longest_pause_s, now - self._last_progress)
        if now - self._last_progress >= STALL_S:
            raise Stalled(f"no progress for {STALL_S:g} s ({where})")
        if now - self._began >= transfer.deadline_s:
            raise Stalled(f"not done within its deadline of {transfer.deadline_s:.0f} s ({where})")
        return min(self._last_progress + STALL_S, self._began + transfer.deadline_s) - now

    def _wait(self, sock: socket.socket, read: bool, write: bool) -> tuple[bool, bool]:
        halt = self.bench.halt_r
        readers: list[Any] = [sock, halt] if read else [halt]
        writers: list[Any] = [sock] if write else []
        readable, writable, _ = select.select(readers, writers, [], self._left())
        if halt in readable:
            raise Halted
        return sock in readable, sock in writable

    def _play(self) -> None:
        transfer = self.transfer
        sock = make_socket(self.bench.topo.hosts["client"].ns, SERVER, "mptcp")
        try:
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect((SERVER, PORT))
            while not self._wait(sock, read=False, write=True)[1]:
                pass
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, f"connect: {os.strerror(error)}")
            self._progress()
            host, port = sock.getsockname()[:2]
            transfer.local = f"{host}:{port}"
            transfer.client_mptcp = mptcp_status(sock)
            self._exchange(sock)
        except (Stalled, OSError):
            self._diagnose(sock)
            raise
        else:
            end = mptcp_status(sock)
            for key in ("subflows", "subflows_total"):
                end[key] = max(transfer.client_mptcp.get(key, 0), end.get(key, 0))
            transfer.client_mptcp = {**transfer.client_mptcp, **end}
        finally:
            sock.close()

    def _diagnose(self, sock: socket.socket) -> None:
        """What the kernel knew of a connection that stalled or failed, before it is closed:
        its struct mptcp_info and its subflows (sock_diag)."""
        transfer = self.transfer
        with contextlib.suppress(OSError):
            transfer.client_mptcp = mptcp_status(sock)
        token = transfer.client_mptcp.get("token")
        if token is None:
            self._capture_state()
            return
        with contextlib.suppress(Exception):  # evidence only: never fails the judgement
            transfer.client_subflows = [
                {**asdict(s), "state": s.state_name}
                for s in self.bench.client.control.subflows(token)
            ]
        self._capture_state()

    def _capture_state(self) -> None:
        """Both ends' view of a connection that stalled or failed, while it is still
        open: the stack's `state` control command (data level, every subflow) for this
        connection, and the kernel's `ss -tinmM` (msk and subflows, tcp_info, memory)."""
        transfer = self.transfer
        with contextlib.suppress(Exception):  # evidence only
            states = json.loads(self.bench.stack.snapshot() or "null") or []
            transfer.stack_state = next(
                (c for c in states if c.get("remote") == transfer.local), {"connections": states}
            )
        with contextlib.suppress(Exception):
            transfer.client_state = self.bench.client.snapshot()
        with contextlib.suppress(Exception):  # the client host's MPTcpExt since the start
            transfer.client_counters = counters_diff(self.bench.counters_before,
                                                     self.bench.client.counters())  # fmt: skip

    def _exchange(self, sock: socket.socket) -> None:
        """Send the N bytes (then SHUT_WR) while reading the echo, until its end of stream."""
        transfer = self.transfer
        sent, received = hashlib.sha256(), hashlib.sha256()
        chunks = (stream_chunk(i, transfer.seed)[: min(BLOCK, transfer.nbytes - i * BLOCK)]
                  for i in range((transfer.nbytes + BLOCK - 1) // BLOCK))  # fmt: skip
        pending = memoryview(next(chunks, b""))
        shut = False
        while True:
            readable, writable = self._wait(sock, read=True, write=not shut)
            if writable and pending:
                with contextlib.suppress(BlockingIOError):
                    done = sock.send(pending[:CHUNK])
                    sent.update(pending[:done])
                    transfer.sent += done
                    pending = pending[done:]
                    if not pending:
                        pending = memoryview(next(chunks, b""))
                    self._progress()
            if not pending and not shut:
                sock.shutdown(socket.SHUT_WR)
                transfer.sha256_sent = sent.hexdigest()
                shut = True
            if readable:
                try:
                    data = sock.recv(1 << 18)
                except BlockingIOError:
                    continue
                self._progress()
                if not data:
                    transfer.eof = True
                    transfer.sha256_received = received.hexdigest()
                    return
                received.update(data)
                transfer.received += len(data)

    def _server_report(self, within: float) -> AppReport | None:
        """The stack's report of this connection (its client address and port), waited
        for (events, not sleeps)."""
        stack, deadline = self.bench.stack, time.monotonic() + within
        seen = self._first_report
        while True:
            reports = stack.reports()
            for report in reports[seen:]:
                if report.extra.get("remote") == self.transfer.local:
                    return report
            seen = len(reports)
            left = deadline - time.monotonic()
            if left <= 0 or self.bench.halt.is_set():
                return None
            stack.wait_report(left, seen + 1)

    def _judge(self) -> None:
        transfer = self.transfer
        if transfer.error.startswith("halted"):
            transfer.outcome, transfer.detail = "failed", transfer.error
            return
        report = self._server_report(REPORT_WAIT) if transfer.local else None
        if report is not None:
            subflows = report.extra.get("mptcp", {}).get("subflows", [])
            transfer.server = {
                "bytes_received": report.bytes_received, "bytes_sent": report.bytes_sent,
                "sha256_received": report.sha256_received, "sha256_sent": report.sha256_sent,
                "error": report.error, "duration_s": report.duration_s, "mptcp": report.mptcp,
                "joins": sum(not s.get("initial") for s in subflows),
                "subflows": subflows,
                # the stack's internals when its close gave up (data unacknowledged)
                "state_at_abort": report.extra.get("mptcp", {}).get("state_at_abort"),
                "counters": {k: v for k, v in report.extra.get("mptcp", {}).get("counters", {})
                             .items() if v},
            }  # fmt: skip
        if transfer.stalled:
            transfer.outcome, transfer.detail = "stalled", transfer.stalled
            return
        if transfer.error or report is None or report.error:
            transfer.outcome = "failed"
            where = f"sent {transfer.sent}, echoed {transfer.received} of {transfer.nbytes} bytes"
            transfer.detail = f"({where}) " + "; ".join(
                filter(None, [transfer.error, f"stack: {report.error}" if report and report.error
                              else "" if report else
                              f"no report from the stack within {REPORT_WAIT:g} s"])
            )  # fmt: skip
            return
        expected = stream_sha256(transfer.nbytes, transfer.seed)
        seen = {
            "client sent": (transfer.sent, transfer.sha256_sent),
            "stack received": (report.bytes_received, report.sha256_received),
            "stack sent": (report.bytes_sent, report.sha256_sent),
            "client read back": (transfer.received, transfer.sha256_received),
        }
        wrong = [f"{what} {count} bytes, SHA-256 {digest[:12]}" for what, (count, digest)
                 in seen.items() if count != transfer.nbytes or digest != expected]  # fmt: skip
        if wrong:
            transfer.outcome = "corrupted"
            transfer.detail = f"expected {transfer.nbytes} bytes, SHA-256 {expected[:12]}: " + (
                "; ".join(wrong)
            )
        else:
            transfer.outcome = "intact"


# ---------------------------------------------------------------- the run


@dataclass
class Flap:
    planned_down_s: float
    planned_up_s: float
    down_s: float | None = None  # when the testbed's call returned, from the start
    up_s: float | None = None
    error: str = ""


class Soak:
    """One run: the topology, both ends, the flap schedule, the RSS sampler, the clients."""

    def __init__(self, topo: Any, client: KernelIut, stack: StackV1Iut,
                 args: argparse.Namespace, progress: Progress) -> None:  # fmt: skip
        self.topo, self.client, self.stack = topo, client, stack
        self.args, self.progress = args, progress
        self.kernel_counters: dict[str, int] = {}  # the client's MPTcpExt that moved
        self.counters_before: dict[str, int] = {}
        self.duration = args.minutes * 60.0
        self.pid = stack._processes[0].pid
        rng = random.Random(args.seed)
        self.sizes = random.Random(rng.random())
        self.flaps = [Flap(d, u) for d, u in flap_schedule(random.Random(rng.random()),
                                                           self.duration)]  # fmt: skip
        self.halt = threading.Event()
        self.halt_r, self._halt_w = os.pipe()
        self.wake = threading.Event()
        self.lock = threading.Lock()
        self.running: dict[int, Client] = {}  # slot -> its client
        self.transfers: list[Transfer] = []
        self.rss: list[tuple[float, int]] = []
        self.cpu: list[tuple[float, float]] = []
        self.t0 = 0.0

    def now(self) -> float:
        return time.monotonic() - self.t0

    # -- the measurement intervals --

    def _sample(self) -> None:
        while not self.halt.is_set():
            with contextlib.suppress(OSError, StopIteration, ValueError):
                t = self.now()
                self.rss.append((t, rss_kib(self.pid)))
                self.cpu.append((t, cpu_seconds(self.pid)))
            if self.now() >= self.duration:
                return
            self.halt.wait(RSS_EVERY)  # the sampling interval

    def _next_flap_event(self) -> tuple[Flap | None, float]:
        """The flap whose down or up comes next, and when (from the start)."""
        for flap in self.flaps:
            if flap.down_s is None:
                return flap, flap.planned_down_s
            if flap.up_s is None:
                return flap, flap.planned_up_s
        return None, math.inf

    def _flap(self, flap: Flap) -> None:
        """Take path1 down or bring it up, as `flap` is due. From this (the main) thread:
        the testbed's pyroute2 handles act on the namespace of the thread that calls them,
        and only the thread that built the topology is in the hosts' namespaces."""
        link = self.topo.links["path1"]
        try:
            if flap.down_s is None:
                link.down()
                flap.down_s = self.now()
                self.progress(f"{flap.down_s:7.1f} s: path1 down (for "
                              f"{flap.planned_up_s - flap.planned_down_s:.1f} s)")  # fmt: skip
            else:
                link.up()
                flap.up_s = self.now()
                self.progress(f"{flap.up_s:7.1f} s: path1 up")
        except Exception as error:
            flap.error = f"{type(error).__name__}: {error}"
            raise HarnessError(f"path1 flap at {self.now():.1f} s: {flap.error}") from error

    def _may_start(self, t: float) -> bool:
        """A connection may be opened unless the next flap's quiet time has begun (from
        QUIET_BEFORE_FLAP before its planned down until path1 is up again)."""
        flap, _ = self._next_flap_event()
        return flap is None or t < flap.planned_down_s - QUIET_BEFORE_FLAP

    # -- transfers --

    def done(self, client: Client) -> None:
        transfer = client.transfer
        with self.lock:
            self.running.pop(transfer.slot, None)
        if transfer.outcome != "intact" and not self.halt.is_set():
            self.progress(f"{self.now():7.1f} s: transfer {transfer.index} "
                          f"({transfer.nbytes} bytes, started at {transfer.started_s:.1f} s) "
                          f"{transfer.outcome.upper()}: {transfer.detail}")  # fmt: skip
        self.wake.set()

    def _start(self, slot: int) -> None:
        nbytes = transfer_size(self.sizes)
        transfer = Transfer(len(self.transfers), nbytes, slot, self.now(), deadline_s(nbytes))
        client = Client(self, transfer)
        with self.lock:
            self.transfers.append(transfer)
            self.running[slot] = client
        client.start()

    def run(self) -> None:
        self.t0 = time.monotonic()
        sampler = threading.Thread(target=self._sample, daemon=True, name="rss")
        sampler.start()
        next_progress = PROGRESS_EVERY
        before = self.counters_before = self.client.counters()
        try:
            while (t := self.now()) < self.duration:
                self.wake.clear()
                flap, due = self._next_flap_event()
                if flap is not None and t >= due:
                    self._flap(flap)
                    continue
                if t >= next_progress:
                    self._report_progress()
                    next_progress += PROGRESS_EVERY
                with self.lock:
                    free = [s for s in range(self.args.concurrency) if s not in self.running]
                if free and self._may_start(t):
                    self._start(free[0])
                    continue
                # the flap schedule and the progress lines are defined intervals; the
                # end of a transfer wakes the loop at once
                self.wake.wait(max(0.0, min(self.duration, next_progress, due) - t))
            flap, _ = self._next_flap_event()
            if flap is not None and flap.down_s is not None:
                self._flap(flap)  # late (a busy machine): path1 up before the drain
            self.progress(f"{self.now():7.1f} s: traffic over; waiting for "
                          f"{len(self.running)} running transfer(s) to end")  # fmt: skip
            with self.lock:
                clients = list(self.running.values())
            for client in clients:  # each ends by its own deadline and the report wait
                client.join()
        finally:
            self.halt.set()
            os.write(self._halt_w, b"x")
            sampler.join(RSS_EVERY + 1)
            with self.lock:
                clients = list(self.running.values())
            for client in clients:
                client.join(REPORT_WAIT + 1)
            os.close(self._halt_w)
            self.kernel_counters = counters_diff(before, self.client.counters())

    def _report_progress(self) -> None:
        rss = f"{self.rss[-1][1] / 1024:.1f} MB" if self.rss else "n/a"
        with self.lock:
            ended = [t for t in self.transfers if t.outcome != "running"]
        bad = len(ended) - sum(t.outcome == "intact" for t in ended)
        self.progress(f"{self.now():7.1f} s: {len(ended)} transfers ended ({bad} not intact), "
                      f"{len(self.running)} running, "
                      f"{sum(f.down_s is not None for f in self.flaps)} flaps, "
                      f"stack RSS {rss}")  # fmt: skip

    # -- figures --

    def figures(self) -> dict[str, Any]:
        ended = [t for t in self.transfers if t.outcome != "running"]
        outcomes = {name: sum(t.outcome == name for t in ended)
                    for name in ("intact", "corrupted", "stalled", "failed")}  # fmt: skip
        cpu = self.cpu[-1][1] - self.cpu[0][1] if len(self.cpu) >= 2 else None
        flaps_done = [f for f in self.flaps if f.down_s is not None]
        intact = [t for t in ended if t.outcome == "intact"]
        subflow_errors: collections.Counter[str] = collections.Counter()
        stack_counters: collections.Counter[str] = collections.Counter()
        for transfer in ended:
            for subflow in transfer.server.get("subflows", []):
                if subflow.get("error"):
                    subflow_errors[re.sub(r"\d+", "N", str(subflow["error"]))[:160]] += 1
            stack_counters.update(transfer.server.get("counters", {}))
        return {
            "minutes": self.args.minutes,
            "transfers": len(ended),
            **outcomes,
            "stalls": outcomes["stalled"],
            "bytes_each_way": sum(t.nbytes for t in intact),
            "joined": sum(bool(t.server.get("joins")) for t in ended),
            "longest_pause_s": max((t.longest_pause_s for t in ended), default=None),
            "flaps": len(flaps_done),
            "flap_errors": [f.error for f in self.flaps if f.error],
            "rss": rss_flatness(self.rss, self.duration),
            "stack_subflow_errors": dict(subflow_errors.most_common()),
            "stack_counters": dict(sorted(stack_counters.items())),
            "kernel_counters": self.kernel_counters,
            "cpu_s": cpu,
            "cpu_share": cpu / (self.cpu[-1][0] - self.cpu[0][0]) if cpu else None,
        }


@contextlib.contextmanager
def testbed(args: argparse.Namespace) -> Iterator[tuple[Any, KernelIut, StackV1Iut]]:
    """The topology with the kernel client configured and the stack listening; all of
    it undone on the way out."""
    spec = topologies.user_dual_homed(
        (LinkProps(rate=RATE), LinkProps(rate=RATE, loss=LOSS_PERCENT)), bare=("server",)
    )
    with build(spec) as topo:
        client = KernelIut(topo, "client")
        stack = StackV1Iut(topo, "server")
        try:
            client.set_limits(2, 0)
            client.add_endpoint(CLIENT_SECOND, flags={"subflow"}, ifname="eth1")
            stack.set_limits(2, 0)
            stack.listen(PORT, mode="echo")
            if not stack._running():
                raise HarnessError("the stack exited at start")
            yield topo, client, stack
        finally:
            stack.stop()
            client.stop()


# ---------------------------------------------------------------- output


def _mb(kib: float | None) -> str:
    return f"{kib / 1024:.1f} MB" if kib is not None else "n/a"


def lines(figures: dict[str, Any]) -> list[str]:
    rss, errors = figures["rss"], figures["stack_subflow_errors"]
    ratio = f"{rss['ratio']:.3f}" if rss["ratio"] is not None else "n/a"
    pause = figures["longest_pause_s"]
    cpu = figures["cpu_s"]
    return [
        f"transfers: {figures['transfers']} done, {figures['intact']} intact, "
        f"{figures['corrupted']} corrupted, {figures['stalled']} stalled, "
        f"{figures['failed']} failed (goal: all intact, 0 stalls)",
        f"data: {figures['bytes_each_way'] / 1e6:.1f} MB each way in intact transfers; "
        f"{figures['joined']} transfers had a join accepted by the stack",
        f"longest pause of a transfer: {pause:.2f} s" if pause is not None else
        "longest pause of a transfer: n/a",
        f"path1 flaps: {figures['flaps']}"
        + (f" ({len(figures['flap_errors'])} with errors)" if figures["flap_errors"] else ""),
        f"stack RSS: {_mb(rss['at_start_kib'])} at start, {_mb(rss['first_kib'])} median of "
        f"{rss['warmup_s']:g}-{rss['warmup_s'] + rss['window_s']:g} s, {_mb(rss['last_kib'])} "
        f"median of the last {rss['window_s']:g} s, max {_mb(rss['max_kib'])}; ratio {ratio} "
        f"(goal within {GOAL_RSS:.0%}: {'met' if rss['met'] else 'MISSED'})",
        f"stack CPU: {cpu:.1f} s ({figures['cpu_share']:.0%} of a core)" if cpu else
        "stack CPU: n/a",
        f"stack subflows ended by an error: {sum(errors.values())}",
        *(f"  {count} x {error}" for error, count in errors.items()),
        "kernel client's MPTcpExt counters (joins, resets, retransmissions): " + (", ".join(
            f"{name} {value}" for name, value in figures["kernel_counters"].items()
            if any(word in name for word in NOTED_COUNTERS)) or "none moved"),
    ]  # fmt: skip


def evidence(transfer: Transfer) -> list[str]:
    """Each end's subflows of a transfer that was not intact, one line per end."""
    kernel = (
        ", ".join(
            f"{s['local_address']}:{s['local_port']}->{s['remote_address']}:{s['remote_port']} "
            f"{s['state']} acked {s['bytes_acked']} received {s['bytes_received']} "
            f"idle {s['last_data_recv_ms']} ms"
            for s in transfer.client_subflows
        )
        or "none listed"
    )
    found = [f"kernel client subflows: {kernel}"]
    if transfer.server:
        stack = ", ".join(
            f"{s['remote']} {s['state']} sent {s['bytes_sent']} received {s['bytes_received']}"
            + (f" error {s['error']!r}" if s.get("error") else "")
            for s in transfer.server.get("subflows", [])
        )
        counters = ", ".join(f"{k} {v}" for k, v in transfer.server.get("counters", {}).items())
        found.append(f"stack subflows: {stack}; counters: {counters}")
    else:
        found.append("stack: no report of this connection")
    at_abort = transfer.server.get("state_at_abort")
    if at_abort:
        found.append(f"stack state when its close gave up: {json.dumps(at_abort)}")
    if transfer.stack_state:
        found.append(f"stack state at the stall: {json.dumps(transfer.stack_state)}")
    if transfer.client_counters:
        found.append(
            "kernel client's MPTcpExt counters that had moved at the stall: "
            + ", ".join(f"{k} {v}" for k, v in transfer.client_counters.items())
        )
    if transfer.client_state:
        found.append("kernel client's ss -tinmM at the stall:")
        found.extend(f"  {line}" for line in transfer.client_state.splitlines())
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_soak",
                                     description=__doc__.splitlines()[0])  # fmt: skip
    parser.add_argument("--minutes", type=float, default=30.0, help="traffic time (30)")
    parser.add_argument("--concurrency", type=int, default=4, help="connections at a time")
    parser.add_argument("--seed", type=int, default=1, help="sizes and flap schedule")
    parser.add_argument("--json", type=Path, help="write the figures and every transfer here")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.concurrency < 1:
        parser.error("--minutes must be > 0 and --concurrency >= 1")
    if os.geteuid() != 0:
        print("bench_soak needs root (network namespaces, raw sockets)", file=sys.stderr)
        return 2

    def terminate(signum: int, frame: object) -> None:  # unwinds like Ctrl-C: all undone
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    soak: Soak | None = None
    error = ""
    try:
        with testbed(args) as (topo, client, stack):
            soak = Soak(topo, client, stack, args, progress)
            flaps = ", ".join(f"{f.planned_down_s:.0f}-{f.planned_up_s:.0f}" for f in soak.flaps)
            progress(f"soak: {args.minutes:g} min, {args.concurrency} at a time, stack pid "
                     f"{soak.pid}; path1 down at (s): {flaps or 'none'}")  # fmt: skip
            try:
                soak.run()
            finally:
                os.close(soak.halt_r)
    except (HarnessError, IutError, OSError) as failure:
        error = f"harness error: {type(failure).__name__}: {failure}"
    except KeyboardInterrupt:
        print("bench_soak: interrupted (everything it made is removed)", file=sys.stderr)
        return 130
    if soak is None:
        print(f"bench_soak: {error}", file=sys.stderr)
        return 1
    figures = soak.figures()
    for line in lines(figures):
        print(line)
    bad = [t for t in soak.transfers if t.outcome not in ("intact", "running")]
    for transfer in bad:
        print(f"  transfer {transfer.index} ({transfer.nbytes} bytes, {transfer.local}, "
              f"started {transfer.started_s:.1f} s): "
              f"{transfer.outcome}: {transfer.detail}")  # fmt: skip
        for line in evidence(transfer):
            print(f"    {line}")
    if error:
        print(f"ERROR: {error}")
    if args.json:
        args.json.write_text(json.dumps({
            "figures": figures, "error": error,
            "flaps": [asdict(f) for f in soak.flaps],
            "rss_samples": soak.rss, "cpu_samples": soak.cpu,
            "transfers": [asdict(t) for t in soak.transfers],
            "args": vars(args) | {"json": str(args.json)},
        }, indent=1, default=str) + "\n")  # fmt: skip
    met = (not error and figures["transfers"] > 0 and figures["intact"] == figures["transfers"]
           and figures["rss"]["met"])  # fmt: skip
    print(
        f"bench_soak: {args.minutes:g} min, {figures['transfers']} transfers, "
        f"{figures['intact']} intact, {figures['stalled']} stalled, {figures['flaps']} flaps, "
        f"RSS ratio {figures['rss']['ratio'] or 0:.3f}: {'goals met' if met else 'goals MISSED'}",
        file=sys.stderr,
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
