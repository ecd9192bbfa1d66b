"""Floods of SYNs at the userspace stack, side by side with the kernel's MPTCP (issue 11).

    python -m bench.bench_flood [--join-syns 10000] [--syns 100000] [--runs 1]
                                [--clients 20] [--client-spacing 0.25] [--only join,syn]
                                [--json FILE]

Each IUT (`stack-v1`, then `kernel`; alternating when `--runs` > 1) listens in echo mode
on the `server` host of `single_path`; the scripted tester (`conformance.tester`) is the
bare `client`. The floods are frames built beforehand with the project's codec
(`conformance.flood`) and sent back to back on a raw socket of the tester's interface by a
child process (this module's hidden `_flood` command), so neither the tester's measuring
nor the in-process kernel IUT's echo threads share an interpreter with the flood. The
tester's own sockets carry a BPF filter that keeps only frames to its clients' ports
(61000 and up, where no flood SYN comes from), so the flood's thousands of SYN/ACKs do
not load the measuring instrument.

1. join flood: a victim MPTCP connection is established from the tester; a thread keeps
   sending it a small echo request every 10 ms (stop and wait, each retransmitted every
   200 ms, Linux's minimum RTO, until echoed). After a 1 s baseline, `--join-syns` join
   SYNs carrying the victim's valid token (address ID 7, source ports 1024..60999) go out.
   Right after the flood a new client connects (MP_CAPABLE, SYN retransmitted at 1 s, 3 s
   as TCP would) and echoes 1 KB. Reported: the victim's longest gap between echo replies
   from the start of the flood to 5 s after its end (goal <= 1 s); the new client's connect
   time (first SYN to SYN/ACK); the IUT's memory growth at its peak, sampled every 10 ms
   (stack: the process's VmRSS, goal <= 20 MB; kernel: the machine's Slab in
   /proc/meminfo, noisy with anything else the machine runs); and from the end of the
   flood to the first 250 ms window in which the IUT used under 10 % of a CPU (stack: the
   process's utime + stime, echo traffic included, goal <= 2 s; kernel: the machine's
   softirq time from /proc/stat), and the CPU time so used up to 5 s after the flood.
2. SYN flood: `--syns` plain v1 MP_CAPABLE SYNs from the tester's address, random
   source ports in 1024..60999 (so some 4-tuples repeat), to the listener. From the start
   of the flood, `--clients` normal clients, one every `--client-spacing` s (250 ms), each
   on its own schedule with a tester of its own, connect (SYN sent again at 1 s and 3 s;
   given up at 7 s) and echo 1 KB. Reported: how many connected and echoed, their connect
   times (median, max), and, measured to 15 s after the flood, the IUT's memory growth
   and when its CPU settled (as above). The stack has no SYN cookies (a bounded
   half-open queue, oldest dropped); the kernel has them (net.ipv4.tcp_syncookies=1 in
   every namespace). The issue sets no goal here: reported.

Figures are medians over the runs (each run's in --json), client counts totals over the
runs; a goal is met when every run meets it. Exit status 1 only on a harness
error, such as the victim connection dying (it is then printed as a finding); a missed
goal is reported, not an error.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import itertools
import json
import math
import os
import random
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import topologies
from conformance.flood import (
    capable_syn_frames,
    cpu_seconds,
    echoed,
    join_syn_frames,
    rss_kib,
    slab_kib,
    softirq_seconds,
)
from conformance.iut import DRIVERS, Iut, IutError
from conformance.iut.stack import StackIut
from conformance.model import Outcome
from conformance.tester import MptcpConnection, Subflow, Tester, TesterError
from stack.wire.mptcp import MPC_FLAG_H, MpCapable
from stack.wire.tcp import TcpOption
from testbed import build

ROOT = Path(__file__).resolve().parent.parent
IUTS = ("stack-v1", "kernel")
PORT = 8000
FLOOD_PORTS = range(1024, 61000)  # flood SYNs come from these source ports
VICTIM_PORTS = range(61000, 61100)  # the tester's clients: the BPF filter keeps only these
CLIENT_PORTS = range(61100, 65536)
ECHO_INTERVAL = 0.010  # the victim's echo requests: one every 10 ms
ECHO_RTO = 0.200  # Linux's minimum RTO; no backoff, so a stall is measured to 200 ms
ECHO_GIVE_UP = 10.0  # no echo for this long: the victim connection is dead
BASELINE = 1.0  # s of echo traffic measured before a flood
AFTER = 5.0  # s measured after a join flood's end
SYN_AFTER = 15.0  # s measured after a SYN flood's end (the stack takes seconds to settle)
SAMPLE_EVERY = 0.010  # s between samples of memory and CPU time
SETTLE_WINDOW = 0.25  # s: CPU "idle" is under SETTLE_SHARE of a CPU over such a window
SETTLE_SHARE = 0.10
SYN_RTO = 1.0  # a client's SYN is sent again after 1 s, then 2 s (RFC 6298's initial RTO)
CONNECT_GIVE_UP = 7.0  # SYNs at 0, 1 and 3 s
CLIENT_SPACING = 0.250
CLIENT_ECHO_BYTES = 1024
FLOOD_TIMEOUT = 120.0
GOAL_STALL_S = 1.0
GOAL_RSS_MB = 20.0
GOAL_SETTLE_S = 2.0

Progress = Callable[[str], None]


class HarnessError(RuntimeError):
    """The bench could not measure (an IUT or the tester failed, the victim died)."""


# ---------------------------------------------------------------- pure figures


def longest_gap(replies: Sequence[float], start: float, end: float) -> float:
    """The longest time without an echo reply between `start` and `end`: the gaps between
    consecutive replies, from `start` to the first and from the last to `end`, counting
    only the part of each gap that lies in [start, end]."""
    marks = [start, *(t for t in sorted(replies) if start < t < end), end]
    return max(b - a for a, b in itertools.pairwise(marks))


def settle_time(samples: Sequence[tuple[float, float]], start: float, window: float,
                share: float) -> float | None:  # fmt: skip
    """From `start` to the start of the first window of `window` s (from a sample at or
    after `start`) over which the counter of CPU seconds `samples` [(time, seconds)] grew by
    under `share` of a CPU; None if no such window is sampled."""
    later = [(t, used) for t, used in samples if t >= start]
    ends = 0
    for t0, used0 in later:
        while ends < len(later) and later[ends][0] < t0 + window:
            ends += 1
        if ends == len(later):
            return None
        t1, used1 = later[ends]
        if (used1 - used0) / (t1 - t0) < share:
            return t0 - start
    return None


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


# ---------------------------------------------------------------- the tester's side


def _port_filter(ports: range) -> bytes:
    """A classic BPF program for an AF_PACKET socket: accept ARP, and IPv4 TCP frames whose
    destination port is in `ports`; drop everything else."""
    drop, accept = 10, 9
    program = [
        (0x28, 0, 0, 12),  # ldh [12]: the EtherType
        (0x15, accept - 2, 0, 0x0806),  # ARP: accept
        (0x15, 0, drop - 3, 0x0800),  # not IPv4: drop
        (0x30, 0, 0, 23),  # ldb [23]: the IP protocol
        (0x15, 0, drop - 5, 6),  # not TCP: drop
        (0xB1, 0, 0, 14),  # ldxb 4*([14]&0xf): the IP header's length
        (0x48, 0, 0, 16),  # ldh [x+16]: the TCP destination port
        (0x35, 0, drop - 8, ports.start),  # below the range: drop
        (0x35, drop - 9, accept - 9, ports.stop),  # at or above its end: drop
        (0x06, 0, 0, 0x40000),  # accept
        (0x06, 0, 0, 0),  # drop
    ]
    return b"".join(struct.pack("HBBI", *insn) for insn in program)


SO_ATTACH_FILTER = 26


class ClientTester(Tester):
    """The scripted tester, its client ports taken in order from `ports`, its sockets
    seeing only frames to those ports (and ARP)."""

    def __init__(self, topo: Any, ports: range) -> None:
        self._ports = iter(ports)
        super().__init__(topo, "client", "server")
        code = _port_filter(ports)
        self._filter = ctypes.create_string_buffer(code)  # kept alive with the socket
        program = struct.pack("HL", len(code) // 8, ctypes.addressof(self._filter))
        for port in self.ports.values():
            port.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, program)
        self.flush()

    def __enter__(self) -> ClientTester:
        return self

    def free_port(self) -> int:
        return next(self._ports)

    def prune(self) -> None:
        """Forget consumed segments and every record (a long run keeps no history)."""
        self.inbox[:] = [s for s in self.inbox if not s.consumed]
        self.records.clear()


def connect(tester: Tester, port: int) -> tuple[MptcpConnection, Subflow, float]:
    """An MP_CAPABLE handshake, the SYN sent again after SYN_RTO, then twice that, as TCP
    does; the connect time is from the first SYN to the SYN/ACK. Raises the tester's
    `deviates` outcome when no SYN/ACK came within CONNECT_GIVE_UP s."""
    conn = tester.connection(1)
    subflow = tester.subflow(port)
    subflow.connection = conn
    conn.subflows.append(subflow)
    syn: list[TcpOption] = [tester.mss(subflow.local), tester.capable_syn(conn)]
    started = time.monotonic()
    subflow.send("S", syn)
    rto = SYN_RTO
    while True:
        left = started + CONNECT_GIVE_UP - time.monotonic()
        try:
            synack = subflow.expect("SA", MpCapable, within=min(rto, max(left, 0.0)),
                                    what="SYN/ACK with MP_CAPABLE")  # fmt: skip
            break
        except Outcome:
            if time.monotonic() - started >= CONNECT_GIVE_UP:
                raise
            subflow.send("S", syn, seq=subflow.iss)
            rto *= 2
    took = time.monotonic() - started
    option = synack.need(MpCapable)
    if option.sender_key is None:
        raise HarnessError(f"SYN/ACK MP_CAPABLE without a key: {synack.describe()}")
    conn.learn_remote_key(option.sender_key)
    conn.start_data()
    subflow.send("A", [MpCapable(version=1, flags=MPC_FLAG_H, sender_key=conn.local_key,
                                 receiver_key=conn.remote_key)])  # fmt: skip
    return conn, subflow, took


def first_echo(conn: MptcpConnection, subflow: Subflow, payload: bytes, within: float) -> bool:
    """Send `payload` as v1 first data (MP_CAPABLE with both keys), sent again every
    ECHO_RTO, and read the echo until all of it came back; False if it did not in time."""
    option = MpCapable(version=1, flags=MPC_FLAG_H, sender_key=conn.local_key,
                       receiver_key=conn.remote_key, data_level_length=len(payload))  # fmt: skip
    seq = subflow.snd_nxt
    conn.data_snd_nxt = (conn.data_snd_nxt + len(payload)) & (2**64 - 1)
    subflow.send("PA", [option], payload)
    base = ((subflow.irs or 0) + 1) & 0xFFFFFFFF
    got = b""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            echo = subflow.expect(data=True, within=ECHO_RTO, what="the echo")
        except Outcome:
            if not got:
                subflow.send("PA", [option], payload, seq=seq)
            continue
        offset = (echo.seq - base) & 0xFFFFFFFF
        if offset <= len(got) < offset + len(echo.payload):
            got += echo.payload[len(got) - offset :]
        subflow.send("A", [conn.data_ack()])
        if len(got) >= len(payload):
            return got[: len(payload)] == payload
    return False


class Victim(threading.Thread):
    """The victim connection's echo loop (its own tester, used by this thread only):
    a request every ECHO_INTERVAL, stop and wait; the time of every reply."""

    def __init__(self, tester: ClientTester, conn: MptcpConnection, subflow: Subflow) -> None:
        super().__init__(daemon=True, name="victim")
        self.tester, self.conn, self.subflow = tester, conn, subflow
        self.replies: list[float] = []
        self.requests = 0
        self.error = ""
        self._halt = threading.Event()

    def run(self) -> None:
        due = time.monotonic()
        while not self._halt.is_set():
            self._halt.wait(max(0.0, due - time.monotonic()))  # the request interval
            payload = b"victim %010d" % self.requests
            self.requests += 1
            try:
                echoed(self.conn, self.subflow, payload, within=ECHO_GIVE_UP, rto=ECHO_RTO)
            except Outcome:
                self.error = f"no echo of request {self.requests} within {ECHO_GIVE_UP:.0f} s"
                return
            except Exception as error:  # the thread's end is read by the bench
                self.error = f"victim echo loop: {type(error).__name__}: {error}"
                return
            now = time.monotonic()
            self.replies.append(now)
            self.tester.prune()
            due = max(due + ECHO_INTERVAL, now)

    def stop(self) -> None:
        self._halt.set()
        self.join(ECHO_GIVE_UP + 1)


# ---------------------------------------------------------------- sampling the IUT


@dataclass
class Samples:
    """Memory (KiB) and CPU seconds of the IUT over time: the stack's process, or the
    machine's slab and softirq for the kernel."""

    memory: list[tuple[float, int]] = field(default_factory=list)
    cpu: list[tuple[float, float]] = field(default_factory=list)


@contextlib.contextmanager
def sampling(pid: int | None) -> Iterator[Samples]:
    samples = Samples()
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            now = time.monotonic()
            with contextlib.suppress(OSError, StopIteration, ValueError):
                if pid is None:
                    samples.memory.append((now, slab_kib()))
                    samples.cpu.append((now, softirq_seconds()))
                else:
                    samples.memory.append((now, rss_kib(pid)))
                    samples.cpu.append((now, cpu_seconds(pid)))
            done.wait(SAMPLE_EVERY)  # the sampling interval

    thread = threading.Thread(target=sample, daemon=True, name="sampler")
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join(2)


def growth_mb(samples: Samples, before: float, *, at_end: bool = False) -> float | None:
    """The peak memory after `before` (`at_end`: the last sample) less the last sample
    before it, MB (10^6 bytes)."""
    base = [kib for t, kib in samples.memory if t <= before]
    after = [kib for t, kib in samples.memory if t > before]
    if not base or not after:
        return None
    return ((after[-1] if at_end else max(after)) - base[-1]) * 1024 / 1e6


def cpu_used(samples: Samples, start: float, end: float) -> float | None:
    inside = [used for t, used in samples.cpu if start <= t <= end]
    return inside[-1] - inside[0] if len(inside) > 1 else None


# ---------------------------------------------------------------- the flood child


def _flood_main(argv: list[str]) -> int:
    """`_flood --fd N --frames FILE`: read the frames (4-byte length, then the frame),
    say ready, wait for a line on stdin, send them all on the raw socket `fd` as fast as
    Python can, say when it started and ended and how many the link refused."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_flood _flood")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--frames", type=Path, required=True)
    args = parser.parse_args(argv)
    data = args.frames.read_bytes()
    frames, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("!I", data, offset)
        frames.append(data[offset + 4 : offset + 4 + length])
        offset += 4 + length
    sock = socket.socket(fileno=args.fd)
    print(json.dumps({"event": "ready", "frames": len(frames)}), flush=True)
    if not sys.stdin.readline():
        return 1
    send = sock.send
    refused = 0
    started = time.monotonic()
    for frame in frames:
        try:
            send(frame)
        except OSError:  # ENOBUFS: the veth's peer dropped it
            refused += 1
    ended = time.monotonic()
    print(json.dumps({"event": "done", "t_start": started, "t_end": ended,
                      "sent": len(frames) - refused, "refused": refused}), flush=True)  # fmt: skip
    return 0


class Flood:
    """A flood child, ready to go: `go()` starts it, `wait()` returns its report."""

    def __init__(self, tester: Tester, frames: list[bytes], ifname: str = "eth0") -> None:
        with tester.host.entered():
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # sends only
        self._sock.bind((ifname, 0))
        fd, self._path = tempfile.mkstemp(prefix="bench-flood-", suffix=".frames")
        with open(fd, "wb") as file:
            file.write(b"".join(struct.pack("!I", len(f)) + f for f in frames))
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.bench_flood", "_flood",
             "--fd", str(self._sock.fileno()), "--frames", self._path],
            cwd=ROOT, pass_fds=[self._sock.fileno()], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )  # fmt: skip
        self._line("ready", 30.0)

    def _line(self, event: str, within: float) -> dict[str, Any]:
        stdout = self._process.stdout
        assert stdout is not None
        deadline = time.monotonic() + within
        while True:
            ready, _, _ = select.select([stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise HarnessError(f"the flood child said no {event!r} within {within:.0f} s")
            line = stdout.readline()
            if not line:
                raise HarnessError(f"the flood child exited ({self._process.wait()}) "
                                   f"before {event!r}")  # fmt: skip
            report: dict[str, Any] = json.loads(line)
            if report.get("event") == event:
                return report

    def go(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(b"go\n")
        self._process.stdin.flush()

    def wait(self) -> dict[str, Any]:
        return self._line("done", FLOOD_TIMEOUT)

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self._path)


# ---------------------------------------------------------------- the two floods


@contextlib.contextmanager
def listening(name: str) -> Iterator[tuple[Any, Iut, int | None]]:
    """The IUT `name` listening in echo mode on PORT of a fresh single_path topology;
    the stack's process ID (None for the kernel). Everything is undone on the way out."""
    driver = DRIVERS[name]
    bare = ("client", "server") if driver.bare else ("client",)
    with build(topologies.single_path(bare=bare)) as topo:
        iut = driver(topo, "server")
        try:
            iut.listen(PORT, mode="echo")
            pid = iut._processes[0].pid if isinstance(iut, StackIut) else None
            yield topo, iut, pid
        finally:
            iut.stop()


def _client(tester: Tester, port: int) -> dict[str, Any]:
    """One normal client: connect, echo 1 KB; its figures."""
    try:
        conn, subflow, took = connect(tester, port)
    except Outcome:
        return {"connected": False, "connect_s": None, "echoed": False}
    payload = random.randbytes(CLIENT_ECHO_BYTES)
    return {"connected": True, "connect_s": took,
            "echoed": first_echo(conn, subflow, payload, within=5.0)}  # fmt: skip


def join_flood(name: str, count: int, progress: Progress) -> dict[str, Any]:
    with (
        listening(name) as (topo, _iut, pid),
        ClientTester(topo, VICTIM_PORTS) as victim_tester,
        ClientTester(topo, CLIENT_PORTS) as tester,
    ):
        conn, subflow, _ = connect(victim_tester, PORT)
        if not first_echo(conn, subflow, b"before the flood", within=5.0):
            raise HarnessError(f"{name}: the victim connection echoed nothing before the flood")
        victim_tester.prune()
        sports = [FLOOD_PORTS[i % len(FLOOD_PORTS)] for i in range(count)]
        frames = join_syn_frames(victim_tester, conn.remote_token, sports, PORT)
        flood = Flood(tester, frames)
        victim = Victim(victim_tester, conn, subflow)
        try:
            with sampling(pid) as samples:
                victim.start()
                started = time.monotonic()
                while time.monotonic() < started + BASELINE and victim.is_alive():
                    time.sleep(SAMPLE_EVERY)  # the baseline's measurement interval
                flood.go()
                sent = flood.wait()
                t_start, t_end = sent["t_start"], sent["t_end"]
                client = _client(tester, PORT)
                while time.monotonic() < t_end + AFTER and victim.is_alive():
                    time.sleep(SAMPLE_EVERY)  # the measurement interval after the flood
                victim.stop()
        finally:
            if victim.is_alive():
                victim.stop()
            flood.close()
    dead = victim.error or ("" if victim.replies else "no echo at all")
    result = {
        "iut": name,
        "syns_sent": sent["sent"],
        "syns_refused_by_link": sent["refused"],
        "flood_s": t_end - t_start,
        "baseline_gap_s": longest_gap(victim.replies, t_start - BASELINE, t_start),
        "stall_s": longest_gap(victim.replies, t_start, t_end + AFTER) if not dead else None,
        "victim_requests": victim.requests,
        "victim_dead": dead,
        "new_client_connect_s": client["connect_s"],
        "new_client_echoed": client["echoed"],
        **_costs(samples, t_start, t_end, pid, AFTER),
    }
    progress(
        f"join flood {name}: {result['syns_sent']} SYNs in {result['flood_s']:.3f} s, "
        f"victim stall {_ms(result['stall_s'])}"
        f"{' DEAD: ' + dead if dead else ''}, new client {_ms(client['connect_s'])}, "
        f"memory +{_num(result['memory_growth_mb'])} MB, CPU {_settled(result)}"
    )
    return result


def syn_flood(name: str, count: int, clients: int, spacing: float, progress: Progress
              ) -> dict[str, Any]:  # fmt: skip
    seen: list[dict[str, Any]] = [{} for _ in range(clients)]

    def client(index: int, tester: ClientTester, go: float) -> None:
        time.sleep(max(0.0, go + index * spacing - time.monotonic()))  # its schedule
        try:
            seen[index] = {"start_s": time.monotonic() - go, **_client(tester, PORT)}
        except Exception as error:  # read below: a harness error
            seen[index] = {"error": f"client {index}: {type(error).__name__}: {error}"}

    with listening(name) as (topo, _iut, pid), contextlib.ExitStack() as testers:
        mine = [
            testers.enter_context(ClientTester(topo, CLIENT_PORTS[10 * i : 10 * (i + 1)]))
            for i in range(clients)
        ]  # one tester each: the clients run side by side, each on its own schedule
        rng = random.Random(11)
        sports = [rng.choice(FLOOD_PORTS) for _ in range(count)]
        flood = Flood(mine[0], capable_syn_frames(mine[0], sports, PORT))
        try:
            with sampling(pid) as samples:
                time.sleep(5 * SAMPLE_EVERY)  # a few samples before: the memory's base
                flood.go()
                go = time.monotonic()
                threads = [threading.Thread(target=client, args=(i, t, go), daemon=True)
                           for i, t in enumerate(mine)]  # fmt: skip
                for thread in threads:
                    thread.start()
                sent = flood.wait()
                for thread in threads:
                    thread.join(CONNECT_GIVE_UP + 10 + clients * spacing)
                while time.monotonic() < sent["t_end"] + SYN_AFTER:
                    time.sleep(SAMPLE_EVERY)  # the measurement interval after the flood
        finally:
            flood.close()
    failed = [c.get("error", "did not finish") for c in seen if "connected" not in c]
    if failed:
        raise HarnessError(f"SYN flood at {name}: {'; '.join(failed)}")
    times = [c["connect_s"] for c in seen if c["connect_s"] is not None]
    t_start, t_end = sent["t_start"], sent["t_end"]
    result = {
        "iut": name,
        "syns_sent": sent["sent"],
        "syns_refused_by_link": sent["refused"],
        "flood_s": t_end - t_start,
        "clients": clients,
        "connected": sum(c["connected"] for c in seen),
        "echoed": sum(c["echoed"] for c in seen),
        "connect_median_s": statistics.median(times) if times else None,
        "connect_max_s": max(times) if times else None,
        **_costs(samples, t_start, t_end, pid, SYN_AFTER),
        "clients_detail": seen,
    }
    progress(
        f"SYN flood {name}: {result['syns_sent']} SYNs in {result['flood_s']:.3f} s, "
        f"{result['connected']}/{clients} clients connected, {result['echoed']} echoed, "
        f"connect median {_ms(result['connect_median_s'])} max "
        f"{_ms(result['connect_max_s'])}, memory +{_num(result['memory_growth_mb'])} MB "
        f"(+{_num(result['memory_growth_end_mb'])} MB at the end), CPU {_settled(result)}"
    )
    return result


def _costs(samples: Samples, t_start: float, t_end: float, pid: int | None, after: float
           ) -> dict[str, Any]:  # fmt: skip
    """What the flood cost the IUT: memory (peak, and `after` s after its end), CPU time
    from its start to then, and when the CPU settled (None: not by then)."""
    return {
        "measured_after_s": after,
        "memory_growth_mb": growth_mb(samples, t_start),
        "memory_growth_end_mb": growth_mb(samples, t_start, at_end=True),
        "memory": "VmRSS of the process" if pid else "Slab of the machine",
        "cpu_used_s": cpu_used(samples, t_start, t_end + after),
        "cpu_settle_s": settle_time(samples.cpu, t_end, SETTLE_WINDOW, SETTLE_SHARE),
        "cpu": "utime+stime of the process" if pid else "softirq of the machine",
    }


# ---------------------------------------------------------------- the table


def _ms(seconds: float | None) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds is not None else "n/a"


def _num(value: float | None, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if value is not None else "n/a"


def _settled(result: dict[str, Any]) -> str:
    if result["cpu_settle_s"] is None:
        return f"not idle within {result['measured_after_s']:g} s"
    return f"idle {result['cpu_settle_s']:.2f} s after"


def _ratio(ours: float | str | None, theirs: float | str | None) -> str:
    if isinstance(ours, float | int) and isinstance(theirs, float | int) and theirs:
        return f"{ours / theirs:.2f}"
    return "n/a"


def _met(values: Sequence[float], goal: float | None) -> str:
    """Whether every run met the goal, and how many did."""
    if goal is None:
        return ""
    if not values:
        return "n/a"
    met = sum(v <= goal for v in values)
    return f"{'yes' if met == len(values) else 'NO'} ({met}/{len(values)} runs)"


def summary(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """One row per figure: the median over the runs of stack and kernel, their ratio,
    the goal and whether each meets it."""
    rows: list[dict[str, Any]] = []

    def row(phase: str, figure: str, key: str, unit: float = 1.0, goal: float | None = None,
            *, kernel_too: bool = True, ratio: bool = True, never: bool = False
            ) -> None:  # fmt: skip
        """`never`: a run without a value did not get there within its measurement (it
        counts as infinite: the median of the runs is then `> the measurement`)."""
        values: dict[str, float | str | None] = {}
        per_run: dict[str, list[float]] = {}
        for name in IUTS:
            got = [r.get(key) for r in runs[phase][name]]
            numbers = [g * unit if isinstance(g, int | float) else math.inf for g in got
                       if isinstance(g, int | float) or never]  # fmt: skip
            per_run[name] = numbers
            value = statistics.median(numbers) if numbers else None
            values[name] = value
            if value == math.inf:
                values[name] = f"> {runs[phase][name][0]['measured_after_s']:g}"
        stack, kernel = values["stack-v1"], values["kernel"]
        rows.append({
            "figure": figure, "stack": stack, "kernel": kernel,
            "stack/kernel": _ratio(stack, kernel) if ratio else "",
            "goal": f"<= {goal:g}" if goal is not None else "",
            "stack meets": _met(per_run["stack-v1"], goal),
            "kernel meets": _met(per_run["kernel"], goal) if kernel_too else "",
        })  # fmt: skip

    if runs["join"]["stack-v1"] or runs["join"]["kernel"]:
        row("join", "join flood: SYNs sent", "syns_sent", ratio=False)
        row("join", "join flood: duration (s)", "flood_s")
        row("join", "victim: longest gap before the flood (ms)", "baseline_gap_s", 1e3)
        row("join", "victim: longest stall (ms)", "stall_s", 1e3, GOAL_STALL_S * 1e3,
            never=True)  # fmt: skip
        row("join", "new client: connect (ms)", "new_client_connect_s", 1e3)
        row("join", "memory growth, peak (MB; kernel: machine's Slab)", "memory_growth_mb",
            goal=GOAL_RSS_MB, kernel_too=False, ratio=False)  # fmt: skip
        row("join", f"memory growth, {AFTER:g} s after (MB)", "memory_growth_end_mb",
            ratio=False)  # fmt: skip
        row("join", f"CPU used, flood to {AFTER:g} s after (s; kernel: softirq)", "cpu_used_s",
            ratio=False)  # fmt: skip
        row("join", "CPU idle after the flood (s; kernel: softirq)", "cpu_settle_s",
            goal=GOAL_SETTLE_S, kernel_too=False, ratio=False, never=True)  # fmt: skip
    if runs["syn"]["stack-v1"] or runs["syn"]["kernel"]:
        row("syn", "SYN flood: SYNs sent", "syns_sent", ratio=False)
        row("syn", "SYN flood: duration (s)", "flood_s")
        for key, figure in (("connected", "clients connected"), ("echoed", "clients echoed 1 KB")):
            totals = {name: f"{sum(r[key] for r in runs['syn'][name])}/"
                            f"{sum(r['clients'] for r in runs['syn'][name])}"
                      for name in IUTS}  # fmt: skip
            rows.append({"figure": f"{figure} (all runs)", "stack": totals["stack-v1"],
                         "kernel": totals["kernel"], "stack/kernel": "", "goal": "",
                         "stack meets": "", "kernel meets": ""})  # fmt: skip
        row("syn", "client connect, median (ms)", "connect_median_s", 1e3)
        row("syn", "client connect, max (ms)", "connect_max_s", 1e3)
        row("syn", "memory growth, peak (MB; kernel: machine's Slab)", "memory_growth_mb",
            ratio=False)  # fmt: skip
        row("syn", f"memory growth, {SYN_AFTER:g} s after (MB)", "memory_growth_end_mb",
            ratio=False)  # fmt: skip
        row("syn", f"CPU used, flood to {SYN_AFTER:g} s after (s; kernel: softirq)",
            "cpu_used_s", ratio=False)  # fmt: skip
        row("syn", "CPU idle after the flood (s; kernel: softirq)", "cpu_settle_s",
            ratio=False, never=True)  # fmt: skip
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    from tabulate import tabulate

    shown = [{k: _shown(v) for k, v in r.items()} for r in rows]
    return tabulate(shown, headers="keys", disable_numparse=True)


def _shown(value: Any) -> str:
    """A figure as the table shows it: three significant digits, no exponent."""
    if value is None:
        return "n/a"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{value:.0f}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_flood"]:
        return _flood_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench.bench_flood",
                                     description=__doc__.splitlines()[0])  # fmt: skip
    parser.add_argument("--join-syns", type=int, default=10_000)
    parser.add_argument("--syns", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=20, help="normal clients (SYN flood)")
    parser.add_argument("--client-spacing", type=float, default=CLIENT_SPACING,
                        help="s between the normal clients' starts")  # fmt: skip
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--only", default="join,syn", help="join, syn or both")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_flood needs root (network namespaces, raw sockets)", file=sys.stderr)
        return 2
    wanted = set(args.only.split(","))

    def terminate(signum: int, frame: object) -> None:  # unwinds like Ctrl-C: all undone
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        phase: {name: [] for name in IUTS} for phase in ("join", "syn")
    }
    errors: list[str] = []
    try:
        for run in range(args.runs):
            order = IUTS if run % 2 == 0 else IUTS[::-1]
            for name in order if "join" in wanted else ():
                progress(f"run {run + 1}/{args.runs}: join flood at {name}")
                result = join_flood(name, args.join_syns, progress)
                runs["join"][name].append(result)
                if result["victim_dead"]:
                    errors.append(f"{name} run {run + 1}: the victim connection died during "
                                  f"the join flood: {result['victim_dead']}")  # fmt: skip
            for name in order if "syn" in wanted else ():
                progress(f"run {run + 1}/{args.runs}: SYN flood at {name}")
                runs["syn"][name].append(syn_flood(name, args.syns, args.clients,
                                                   args.client_spacing, progress))  # fmt: skip
    except (HarnessError, IutError, TesterError, Outcome) as failure:
        errors.append(f"harness error: {type(failure).__name__}: {failure}")
    except KeyboardInterrupt:
        print("bench_flood: interrupted (everything it made is removed)", file=sys.stderr)
        return 130
    rows = summary(runs)
    print(table(rows))
    for error in errors:
        print(f"FINDING/ERROR: {error}")
    if args.json:
        args.json.write_text(json.dumps({"summary": rows, "runs": runs, "errors": errors,
                                         "args": vars(args) | {"json": str(args.json)}},
                                        indent=1, default=str) + "\n")  # fmt: skip
    goals = [r for r in rows if r["stack meets"]]
    met = sum(r["stack meets"].startswith("yes") for r in goals)
    failed = f"; {len(errors)} error(s)" if errors else ""
    print(
        f"bench_flood: {args.runs} run(s); stack meets {met}/{len(goals)} goals{failed}",
        file=sys.stderr,
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
