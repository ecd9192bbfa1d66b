"""MPTCP through the userspace stack, side by side with the kernel's (issues 4 and 5).

    python -m bench.bench_mptcp [--bytes 100000000] [--runs 1] [--failover-runs 3]
                                [--join-runs 10] [--only goodput,aggregation,failover,join]
                                [--cut blackhole|down] [--quick] [--json]

Every transfer is random data that is not the testbed's seeded stream (`DATA_SEED`, as
an iperf-like sender's), so no receiver can recognise it: the receiver counts and hashes
what its application reads, and a transfer whose count or SHA-256 differs from what was
sent fails the run. The sender is always the side that connects. The stack lives on the bare
`client` host and runs in this process (its application beside its I/O thread, as a user
of `stack.api` would); kernel ends run as child processes (this module's hidden `_peer`
command), so they do not share the stack's interpreter. stack->stack's receiver is a
second stack in a child process. The kernel's reference runs on an identical topology with
kernel addresses on both hosts, and the runs alternate so machine noise hits all alike.

1. goodput (issue 4): `--bytes` on one veth path, unshaped and with tbf at `--rate`;
   stack->kernel and kernel->stack against kernel->kernel. Goodput is what the receiver's
   application reads from accept to end of stream (MB = 10^6 bytes). Goals: unshaped
   >= 40 MB/s each way; shaped >= 95 % of the kernel.
2. aggregation (issue 5): the same over two paths, each tbf at `--rate`; the sender has a
   `subflow` endpoint on eth1 (its second subflow goes from eth1 to the receiver's first
   address), the receiver's limits accept one join. stack->kernel, kernel->stack and
   stack->stack against kernel->kernel. Goal: >= 95 % of the kernel's aggregate.
3. failover (issue 5): two unshaped paths; the receiver announces its eth1 address
   (`signal` endpoint, ADD_ADDR) and the sender joins it from its eth1 address, which is a
   `backup` endpoint: the backup subflow runs over path2 both ways (a join to the
   receiver's first address would have its replies routed over path1, the path that is
   cut). The sender paces its application at `--failover-rate` so no queue hides the cut.
   Once the backup subflow is up and data has flowed for 1 s, path1 is cut (`--cut`:
   nftables blackhole, interfaces up; or both veth ends down). Measured at the receiver:
   * backup: from the cut (the moment the testbed's call returned, the cut in force) to
     the first new byte delivered over the backup. A kernel receiver is watched by a
     process of its own in its namespace (this module's hidden `_watch` command), which
     polls sock_diag every ~0.5 ms; when tcpi_bytes_received of the backup subflow has
     grown, the arrival time is the poll's less tcpi_last_data_recv (the kernel's clock,
     jiffies: 4 ms at HZ=250), so neither the in-process stack nor a busy machine delays
     the reading. A stack receiver is polled through `info()` every ms. Goal: ours <= the
     kernel's.
   * app: from the cut to the end of the longest pause of the receiving application
     (its reads are time-stamped; the pause is the hole left by data lost on path1 until
     it is resent): when delivery to the application resumed.
4. join latency (issue 5): two unshaped paths, the sender's `subflow` endpoint on eth1;
   from connect() returning (the MP_CAPABLE exchange) to the sender's second subflow being
   usable: kernel, the first sock_diag poll showing it fully established (also reported:
   TCP ESTABLISHED, i.e. its SYN/ACK came); stack, the first `info()` showing the join
   "established" (fourth ACK received). Polled every 0.2 ms while a paced transfer runs.
   The issue sets no goal: the ratio is reported.

Exit status 1 when a transfer fails (bytes, digest, timeout) or a goal is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import ipaddress
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import topologies
from stack.api import MptcpSocket, Stack
from stack.cli import endpoints_of, parse_interface, parse_limits
from testbed import build
from testbed.apps import BLOCK, stream_chunk, stream_sha256
from testbed.builder import Topology
from testbed.mptcp import IPPROTO_MPTCP, KernelMptcp
from testbed.netns import Namespace
from testbed.process import Background, spawn
from testbed.spec import LinkProps

DATA_SEED = 4242  # other random bytes than the seeded stream (see the module's docstring)
CLIENT, SERVER = ("192.0.2.1", "198.51.100.1"), ("192.0.2.2", "198.51.100.2")
ROOT = Path(__file__).resolve().parent.parent
GOAL_UNSHAPED_MBPS = 40.0
GOAL_RATIO = 0.95
TIMEOUT = 120.0
GAP = 0.005  # a pause of the receiving application longer than this is recorded
PACE_PIECE = 16384  # a paced sender writes this much at a time
WARMUP = 1.0  # failover: seconds of data before the cut
FAILOVER_DEADLINE = 30.0
JOIN_DEADLINE = 3.0


class TransferFailed(RuntimeError):
    """A transfer did not deliver every byte intact, or a measurement did not happen."""


Progress = Callable[[str], None]


# ---------------------------------------------------------------- the two loops


def send_stream(sendall: Callable[[memoryview], None], nbytes: int, pace: float | None) -> str:
    """Send the first `nbytes` of the stream, paced at `pace` bytes/s if given; its SHA-256."""
    digest = hashlib.sha256()
    started = time.monotonic()
    sent = 0
    for index in range((nbytes + BLOCK - 1) // BLOCK):
        chunk = memoryview(stream_chunk(index, DATA_SEED)[: min(BLOCK, nbytes - index * BLOCK)])
        digest.update(chunk)
        if pace is None:
            sendall(chunk)
            continue
        for offset in range(0, len(chunk), PACE_PIECE):
            piece = chunk[offset : offset + PACE_PIECE]
            sendall(piece)
            sent += len(piece)
            delay = started + sent / pace - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    return digest.hexdigest()


def receive_stream(read: Callable[[], bytes | memoryview], started: float) -> dict[str, Any]:
    """Read to EOF, hashing and counting; the pauses longer than GAP as [from, to, bytes
    read before], in time.monotonic() (CLOCK_MONOTONIC: one clock for every process)."""
    digest = hashlib.sha256()
    got = 0
    gaps: list[list[float]] = []
    last = started
    first = None
    while True:
        data = read()
        now = time.monotonic()
        if not data:
            break
        if first is None:
            first = now
        if now - last > GAP:
            gaps.append([last, now, got])
        last = now
        digest.update(data)
        got += len(data)
    return {"bytes": got, "sha256": digest.hexdigest(), "t_accept": started,
            "t_first": first, "t_eof": time.monotonic(), "gaps": gaps}  # fmt: skip


# ---------------------------------------------------------------- child processes


def _peer_main(argv: list[str]) -> int:
    """`_peer {kernel,stack} {send,receive}`: one end of a transfer, JSON lines on stdout."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_mptcp _peer")
    parser.add_argument("impl", choices=("kernel", "stack"))
    parser.add_argument("role", choices=("send", "receive"))
    parser.add_argument("--to", help="ADDR:PORT (send)")
    parser.add_argument("--port", type=int, help="port to listen on (receive)")
    parser.add_argument("--bytes", type=int, default=0)
    parser.add_argument("--pace", type=float, default=None, help="bytes/s")
    parser.add_argument("--interface", action="append", default=[], help="stack only")
    parser.add_argument("--limits", default="2,2", help="stack only")
    args = parser.parse_args(argv)

    def say(line: dict[str, Any]) -> None:
        print(json.dumps(line), flush=True)

    try:
        if args.impl == "kernel" and args.role == "receive":
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("0.0.0.0", args.port))
            listener.listen(4)
            listener.settimeout(TIMEOUT)
            say({"event": "listening"})
            conn, _ = listener.accept()
            conn.settimeout(TIMEOUT)
            buffer = bytearray(1 << 18)
            view = memoryview(buffer)

            def read() -> memoryview:
                return view[: conn.recv_into(buffer)]

            report = receive_stream(read, time.monotonic())
            conn.close()
            say({"event": "done", **report})
        elif args.impl == "kernel":
            address, port = args.to.rsplit(":", 1)
            conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
            conn.settimeout(TIMEOUT)
            conn.connect((address, int(port)))
            say({"event": "connected", "t": time.monotonic()})
            sha = send_stream(conn.sendall, args.bytes, args.pace)
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):  # the receiver closes once it has read everything
                pass
            conn.close()
            say({"event": "done", "bytes": args.bytes, "sha256": sha})
        else:
            specs = [parse_interface(text) for text in args.interface]
            with Stack([s.config for s in specs], endpoints=endpoints_of(specs),
                       limits=parse_limits(args.limits)) as stack:  # fmt: skip
                server = stack.listen(args.port)
                say({"event": "listening"})
                sock = server.accept(TIMEOUT)
                report = receive_stream(lambda: sock.recv(1 << 20, timeout=TIMEOUT),
                                        time.monotonic())  # fmt: skip
                report["mptcp"] = sock.info()
                sock.close()
            say({"event": "done", **report})
    except (OSError, TimeoutError, ValueError) as error:
        say({"event": "done", "error": f"{args.impl} {args.role}: {error}"})
        return 1
    return 0


def _watch_main(argv: list[str]) -> int:
    """`_watch --port P`: in a kernel receiver's namespace, poll its subflows of the
    connection to port P every ~0.5 ms and print one JSON line whenever the bytes
    received on the backup path change (the primary's: at most every 10 ms). A process
    of its own, so the polling never waits for the in-process stack's interpreter (the
    GIL)."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_mptcp _watch")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    here = Namespace("self", os.open("/proc/self/ns/net", os.O_RDONLY))
    last = None
    with KernelMptcp(here) as kernel:
        while True:
            found = [s for s in kernel.subflows() if s.local_port == args.port]
            now = time.monotonic()
            backups = [s for s in found if _on_backup_net(str(s.local_address))]
            backup = sum(s.bytes_received for s in backups)
            primary = sum(s.bytes_received for s in found) - backup
            # every change of the backup's bytes; the primary's at most every 10 ms
            if last is None or backup != last[0] or (primary != last[1] and now > last[2] + 0.01):
                last = (backup, primary, now)
                # when the backup's latest data arrived, by the kernel's clock (jiffies):
                # free of this poll's own scheduling delay on a busy machine
                since = min((s.last_data_recv_ms for s in backups), default=0) / 1e3
                print(json.dumps({"t": now, "arrived": now - since, "backup": backup,
                                  "primary": primary}), flush=True)  # fmt: skip
            time.sleep(0.0005)


def _spawn_peer(topo: Topology, host: str, *args: str) -> Background:
    argv = [sys.executable, "-m", "bench.bench_mptcp", "_peer", *args]
    return spawn(topo.hosts[host].ns, argv, cwd=str(ROOT))


def _line(app: Background, event: str, what: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    line = app.wait_for_line(f'"event": "{event}"', timeout=timeout)
    report: dict[str, Any] = json.loads(line)
    if report.get("error"):
        raise TransferFailed(f"{what}: {report['error']}")
    return report


# ---------------------------------------------------------------- ends and transfers


@dataclass(frozen=True)
class End:
    """One end of a transfer: who runs it, on which host, with which endpoints."""

    impl: str  # "kernel" or "stack"
    host: str  # "client" or "server"
    interfaces: tuple[str, ...]  # stack: --interface specs; kernel: eth1 endpoint flags below
    kernel_endpoint: frozenset[str] = frozenset()  # flags of the kernel's eth1 endpoint
    limits: str = "2,2"

    @property
    def address(self) -> str:
        return (CLIENT if self.host == "client" else SERVER)[0]

    @property
    def second_address(self) -> str:
        return (CLIENT if self.host == "client" else SERVER)[1]


def stack_interfaces(host: str, eth1_flags: str = "", paths: int = 2) -> tuple[str, ...]:
    addresses = CLIENT if host == "client" else SERVER
    specs = [f"eth0={addresses[0]}/24"]
    if paths == 2:
        specs.append(f"eth1={addresses[1]}/24" + (f",{eth1_flags}" if eth1_flags else ""))
    return tuple(specs)


def configure_kernel(topo: Topology, end: End) -> None:
    """Limits and the eth1 endpoint of a kernel end (any other endpoint removed)."""
    with KernelMptcp(topo.hosts[end.host].ns) as kernel:
        subflows, accepted = (int(v) for v in end.limits.split(","))
        kernel.set_limits(subflows=subflows, add_addr_accepted=accepted)
        kernel.flush_endpoints()
        if end.kernel_endpoint:
            kernel.add_endpoint(end.second_address, flags=end.kernel_endpoint)


@dataclass
class Live:
    """A transfer while it runs: what a watcher needs."""

    topo: Topology
    sender: End
    receiver: End
    port: int
    connected: threading.Event = field(default_factory=threading.Event)
    t_connected: float = 0.0
    stack_socket: MptcpSocket | None = None  # the in-process stack's connection
    stack_socket_ready: threading.Event = field(default_factory=threading.Event)

    def subflows(self, end: End) -> list[SubflowView]:
        """The subflows of this transfer's connection as `end` sees them now."""
        if end.impl == "kernel":
            with KernelMptcp(self.topo.hosts[end.host].ns) as kernel:
                found = kernel.subflows()
            port_side = "remote_port" if end is self.sender else "local_port"
            return [
                SubflowView(
                    str(s.local_address),
                    str(s.remote_address),
                    s.state == 1,
                    s.fully_established,
                    not s.is_join,
                    s.bytes_sent,
                    s.bytes_received,
                )
                for s in found
                if getattr(s, port_side) == self.port
            ]
        if self.stack_socket is None:
            return []
        views = []
        for s in self.stack_socket.info()["subflows"]:
            established = s["state"] == "established"
            views.append(SubflowView(s["local"].rsplit(":", 1)[0], s["remote"].rsplit(":", 1)[0],
                                     established, established, bool(s["initial"]),
                                     s["bytes_sent"], s["bytes_received"]))  # fmt: skip
        return views


@dataclass(frozen=True)
class SubflowView:
    local: str
    remote: str
    established: bool  # TCP ESTABLISHED (kernel), usable (stack)
    usable: bool  # kernel: fully established; stack: phase "established"
    initial: bool
    sent: int
    received: int


@dataclass
class Outcome:
    receiver: dict[str, Any]
    sender: dict[str, Any]
    watched: Any
    kernel_counters: dict[str, dict[str, int]]

    @property
    def goodput_mbps(self) -> float:
        r = self.receiver
        return float(r["bytes"]) / (r["t_eof"] - r["t_accept"]) / 1e6


def _counters(topo: Topology, hosts: list[str]) -> dict[str, dict[str, int]]:
    values = {}
    for host in hosts:
        with KernelMptcp(topo.hosts[host].ns) as kernel:
            values[host] = kernel.counters()
    return values


def transfer(topo: Topology, sender: End, receiver: End, nbytes: int, port: int, *,
             pace: float | None = None, watch: Callable[[Live], Any] | None = None
             ) -> Outcome:  # fmt: skip
    """One connection from `sender` to `receiver` moving `nbytes`, checked end to end;
    `watch(live)` runs in this thread meanwhile and its result is kept."""
    what = f"{sender.impl} -> {receiver.impl}"
    kernel_hosts = [e.host for e in (sender, receiver) if e.impl == "kernel"]
    for end in (sender, receiver):
        if end.impl == "kernel":
            configure_kernel(topo, end)
    before = _counters(topo, kernel_hosts)
    live = Live(topo, sender, receiver, port)
    stacks: list[Stack] = []
    children: list[tuple[str, Background]] = []
    threads: list[threading.Thread] = []
    results: dict[str, dict[str, Any]] = {}
    errors: list[str] = []

    def in_stack(end: End) -> Stack:
        specs = [parse_interface(text) for text in end.interfaces]
        stack = Stack([s.config for s in specs], netns=topo.hosts[end.host].netns,
                      endpoints=endpoints_of(specs), limits=parse_limits(end.limits))  # fmt: skip
        stacks.append(stack)
        return stack

    def guarded(name: str, fn: Callable[[], dict[str, Any]]) -> threading.Thread:
        def run() -> None:
            try:
                results[name] = fn()
            except (OSError, TimeoutError, ConnectionError) as error:
                errors.append(f"{what}: {name}: {type(error).__name__}: {error}")
            finally:
                live.connected.set()
                live.stack_socket_ready.set()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)
        return thread

    try:
        # the receiver
        if receiver.impl == "kernel" or sender.impl == "stack":
            args = ["--port", str(port)]
            if receiver.impl == "stack":
                args += [f"--interface={spec}" for spec in receiver.interfaces]
                args += ["--limits", receiver.limits]
            child = _spawn_peer(topo, receiver.host, receiver.impl, "receive", *args)
            children.append(("receiver", child))
            _line(child, "listening", f"{what}: receiver", timeout=20)
        else:
            server = in_stack(receiver).listen(port)

            def receive() -> dict[str, Any]:
                sock = server.accept(TIMEOUT)
                started = time.monotonic()
                live.stack_socket = sock
                live.stack_socket_ready.set()
                report = receive_stream(lambda: sock.recv(1 << 20, timeout=TIMEOUT), started)
                report["mptcp"] = sock.info()
                sock.close()
                return report

            guarded("receiver", receive)
        # the sender
        target = receiver.address
        if sender.impl == "kernel":
            args = ["--to", f"{target}:{port}", "--bytes", str(nbytes)]
            if pace:
                args += ["--pace", str(pace)]
            child = _spawn_peer(topo, sender.host, "kernel", "send", *args)
            children.append(("sender", child))

            def connected() -> dict[str, Any]:
                line = _line(child, "connected", f"{what}: sender", timeout=20)
                live.t_connected = line["t"]
                live.connected.set()
                return line

            guarded("connected", connected)
        else:
            stack = in_stack(sender)

            def send() -> dict[str, Any]:
                sock = stack.connect((target, port), timeout=10)
                live.t_connected = time.monotonic()
                live.stack_socket = sock
                live.connected.set()
                live.stack_socket_ready.set()
                sha = send_stream(lambda data: sock.sendall(data, timeout=TIMEOUT), nbytes, pace)
                sock.shutdown()
                while sock.recv(65536, timeout=TIMEOUT):
                    pass
                info = sock.info()
                sock.close()
                return {"bytes": nbytes, "sha256": sha, "mptcp": info}

            guarded("sender", send)
        watched = watch(live) if watch is not None else None
        deadline = time.monotonic() + TIMEOUT
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                errors.append(f"{what}: an end did not finish within {TIMEOUT:.0f} s")
                if live.stack_socket is not None:
                    errors.append(
                        f"the stack's subflows then: "
                        f"{_stack_subflows({'mptcp': live.stack_socket.info()})}"
                    )
        for role, child in children:
            try:
                results[role] = _line(child, "done", f"{what}: {role}",
                                      timeout=max(1.0, deadline - time.monotonic()))  # fmt: skip
            except TransferFailed as error:
                errors.append(str(error))
            except Exception as error:  # the child's output says what happened
                errors.append(f"{what}: {role}: {error}")
    finally:
        for stack in stacks:
            stack.close()
        for _, child in children:
            child.terminate()
    after = _counters(topo, kernel_hosts)
    moved = {h: {k: v - before[h].get(k, 0) for k, v in after[h].items()
                 if v != before[h].get(k, 0)} for h in kernel_hosts}  # fmt: skip
    if errors:
        raise TransferFailed("; ".join(errors) + f" (kernel MPTcpExt moved: {moved})")
    got, sent = results["receiver"], results["sender"]
    expected = stream_sha256(nbytes, DATA_SEED)
    if got["bytes"] != nbytes or got["sha256"] != expected or sent["sha256"] != expected:
        raise TransferFailed(
            f"{what}: {got['bytes']} of {nbytes} bytes arrived, SHA-256 {got['sha256'][:16]}... "
            f"(expected {expected[:16]}...); kernel MPTcpExt moved: {moved}; stack: "
            f"{_stack_subflows(got) or _stack_subflows(sent)}"
        )
    return Outcome(got, sent, watched, moved)


def _stack_subflows(report: dict[str, Any]) -> list[dict[str, Any]]:
    info = report.get("mptcp") or {}
    return [
        {
            k: s[k]
            for k in (
                "local",
                "remote",
                "state",
                "backup_local",
                "backup_remote",
                "bytes_sent",
                "bytes_received",
            )
        }
        for s in info.get("subflows", [])
    ]


def _stack_view(outcome: Outcome) -> dict[str, Any]:
    """The stack's own account of a transfer: per-subflow bytes and its counters."""
    for report in (outcome.sender, outcome.receiver):
        if report.get("mptcp"):
            info = report["mptcp"]
            return {"subflows": _stack_subflows(report), "counters": info.get("counters", {})}
    return {}


# ---------------------------------------------------------------- topologies


class Labs:
    """The topologies of one figure: the stack on the bare client; kernels on both."""

    def __init__(self, spec: Callable[[tuple[str, ...]], Any]):
        self.spec = spec
        self._stack: contextlib.ExitStack | None = None
        self.stack: Topology
        self.kernel: Topology
        self.both: Topology | None = None

    def __enter__(self) -> Labs:
        self._stack = contextlib.ExitStack()
        self.stack = self._stack.enter_context(build(self.spec(("client",))))
        self.kernel = self._stack.enter_context(build(self.spec(())))
        return self

    def stack_to_stack(self) -> Topology:
        assert self._stack is not None
        if self.both is None:
            self.both = self._stack.enter_context(build(self.spec(("client", "server"))))
        return self.both

    def for_direction(self, name: str) -> Topology:
        if name == "kernel_to_kernel":
            return self.kernel
        return self.stack_to_stack() if name == "stack_to_stack" else self.stack

    def __exit__(self, *exc: object) -> None:
        assert self._stack is not None
        self._stack.close()


def _ports() -> Iterator[int]:
    port = 9100
    while True:
        port += 1
        yield port


PORTS = _ports()


# ---------------------------------------------------------------- 1 and 2: goodput


def goodput(props: LinkProps, paths: int, nbytes: int, runs: int, progress: Progress
            ) -> dict[str, Any]:  # fmt: skip
    """Goodput in MB/s, median of `runs`: stack->kernel, kernel->stack (and stack->stack on
    two paths) against kernel->kernel."""
    eth1 = "subflow" if paths == 2 else ""
    joins = frozenset({"subflow"}) if paths == 2 else frozenset()
    limits = "2,2" if paths == 2 else "0,0"
    directions: dict[str, tuple[End, End]] = {
        "kernel_to_kernel": (End("kernel", "client", (), joins, limits),
                             End("kernel", "server", (), frozenset(), limits)),
        "stack_to_kernel": (End("stack", "client", stack_interfaces("client", eth1, paths),
                                limits=limits),
                            End("kernel", "server", (), frozenset(), limits)),
        # the stack listens on the client host; the kernel connects from the server host
        "kernel_to_stack": (End("kernel", "server", (), joins, limits),
                            End("stack", "client", stack_interfaces("client", "", paths),
                                limits=limits)),
    }  # fmt: skip
    if paths == 2:
        directions["stack_to_stack"] = (
            End("stack", "client", stack_interfaces("client", eth1), limits=limits),
            End("stack", "server", stack_interfaces("server"), limits=limits),
        )

    def spec(bare: tuple[str, ...]) -> Any:
        if paths == 1:
            return topologies.single_path(props, bare)
        return topologies.dual_homed((props, props), bare)

    figures: dict[str, list[float]] = {name: [] for name in directions}
    details: dict[str, Any] = {}
    failures: list[str] = []
    label = f"{paths} path{'s' if paths > 1 else ''}, {props.rate or 'unshaped'}"
    with Labs(spec) as labs:
        for run in range(runs):
            for name, (sender, receiver) in directions.items():
                topo = labs.for_direction(name)
                try:
                    outcome = transfer(topo, sender, receiver, nbytes, next(PORTS))
                except TransferFailed as error:
                    failures.append(str(error))
                    progress(f"{label} run {run + 1}/{runs} {name}: FAILED: {error}")
                    continue
                figures[name].append(outcome.goodput_mbps)
                details[name] = {"stack": _stack_view(outcome), "kernel": outcome.kernel_counters}
                progress(f"{label} run {run + 1}/{runs} {name}: {figures[name][-1]:.2f} MB/s"
                         + _split(outcome))  # fmt: skip
    result: dict[str, Any] = {"figure": "goodput" if paths == 1 else "aggregation",
                              "path": label, "bytes": nbytes, "runs": runs}  # fmt: skip
    for name, values in figures.items():
        result[f"{name}_MBps"] = round(statistics.median(values), 2) if values else None
    kernel = result["kernel_to_kernel_MBps"]
    ours = [n for n in directions if n != "kernel_to_kernel"]
    for name in ours:
        value = result[f"{name}_MBps"]
        result[f"ratio_{name}"] = round(value / kernel, 3) if value and kernel else None
    if paths == 2 and kernel:
        result["kernel_to_kernel_Mbitps"] = round(kernel * 8, 1)
    if not props.rate:
        result["goal"] = f">= {GOAL_UNSHAPED_MBPS:.0f} MB/s each way"
        met = all((result[f"{n}_MBps"] or 0) >= GOAL_UNSHAPED_MBPS for n in ours)
    else:
        result["goal"] = f">= {GOAL_RATIO:.2f} of the kernel"
        met = all((result[f"ratio_{n}"] or 0) >= GOAL_RATIO for n in ours)
    result["goal_met"] = met and not failures
    result["missing"] = failures
    result["details"] = details
    return result


def _split(outcome: Outcome) -> str:
    """How the stack's subflows shared the bytes, for the progress line."""
    view = _stack_view(outcome)
    if not view or len(view["subflows"]) < 2:
        return ""
    parts = [f"{s['local']}->{s['remote']} sent {s['bytes_sent']} recv {s['bytes_received']}"
             for s in view["subflows"]]  # fmt: skip
    return " (stack subflows: " + "; ".join(parts) + ")"


# ---------------------------------------------------------------- 3: failover


def _on_backup_net(address: str) -> bool:
    return ipaddress.ip_address(address) in ipaddress.ip_network("198.51.100.0/24")


def _is_backup(view: SubflowView) -> bool:
    return _on_backup_net(view.local)


def _records(watcher: Background) -> list[dict[str, float]]:
    return [json.loads(line) for line in watcher.stdout.splitlines() if line.startswith("{")]


def _watch_records(watcher: Background, t_cut: float) -> dict[str, Any]:
    """The kernel receiver's records around the cut: the first one that shows the
    backup's received bytes grown (or None within FAILOVER_DEADLINE)."""
    deadline = t_cut + FAILOVER_DEADLINE
    while True:
        records = _records(watcher)
        before = [r for r in records if r["t"] <= t_cut] or records[:1]
        if not before:
            raise TransferFailed("the subflow watcher printed nothing")
        base = before[-1]
        after = [r for r in records if r["t"] > t_cut]
        grown = next((r for r in after if r["backup"] > base["backup"]), None)
        if grown is not None or time.monotonic() > deadline or not watcher.running:
            break
        time.sleep(0.005)
    moved = [r for r in after if r["primary"] > base["primary"]]
    # the kernel's arrival time, not before the last poll that saw nothing yet
    t_backup = None
    if grown is not None:
        seen_before = [r["t"] for r in records if r["t"] < grown["t"]]
        t_backup = max([grown["arrived"], *seen_before[-1:]])
    return {"t_backup": t_backup,
            "backup_bytes_before_cut": base["backup"], "primary_bytes_at_cut": base["primary"],
            "primary_bytes_after_cut": (moved[-1]["primary"] - base["primary"]) if moved else 0,
            "primary_last_after_cut_s": (moved[-1]["t"] - t_cut) if moved else 0.0}  # fmt: skip


def failover_watch(cut: Callable[[bool], None]) -> Callable[[Live], dict[str, Any]]:
    def watch(live: Live) -> dict[str, Any]:
        receiver = live.receiver
        if receiver.impl == "stack":
            live.stack_socket_ready.wait(20)
        live.connected.wait(20)
        deadline = time.monotonic() + 20
        while True:  # the backup subflow is up and data flows on the primary
            views = live.subflows(receiver)
            backup = [v for v in views if _is_backup(v) and v.usable]
            primary = [v for v in views if not _is_backup(v)]
            if backup and primary and primary[0].received > 0:
                break
            if time.monotonic() > deadline:
                raise TransferFailed(f"{live.sender.impl} -> {receiver.impl}: no backup "
                                     f"subflow at the receiver within 20 s: {views}")  # fmt: skip
            time.sleep(0.01)
        watcher = None
        if receiver.impl == "kernel":
            watcher = spawn(live.topo.hosts[receiver.host].ns,
                            [sys.executable, "-m", "bench.bench_mptcp", "_watch",
                             "--port", str(live.port)], cwd=str(ROOT))  # fmt: skip
            watcher.wait_for_line('"t"', timeout=20)
        time.sleep(max(0.0, live.t_connected + WARMUP - time.monotonic()))
        if watcher is not None:
            try:
                called = time.monotonic()
                cut(True)
                t_cut = time.monotonic()
                return {"t_cut": t_cut, "cut_call_s": t_cut - called,
                        **_watch_records(watcher, t_cut)}  # fmt: skip
            finally:
                watcher.terminate()
        views = live.subflows(receiver)
        backup_at_cut = sum(v.received for v in views if _is_backup(v))
        primary_at_cut = sum(v.received for v in views if not _is_backup(v))
        called = time.monotonic()
        cut(True)
        t_cut = time.monotonic()
        primary_last, primary_seen = t_cut, primary_at_cut
        t_backup = None
        deadline = t_cut + FAILOVER_DEADLINE
        while time.monotonic() < deadline:
            views = live.subflows(receiver)
            now = time.monotonic()
            primary_now = sum(v.received for v in views if not _is_backup(v))
            if primary_now > primary_seen:
                primary_seen, primary_last = primary_now, now
            if sum(v.received for v in views if _is_backup(v)) > backup_at_cut:
                t_backup = now
                break
            time.sleep(0.001)
        return {"t_cut": t_cut, "cut_call_s": t_cut - called, "t_backup": t_backup,
                "backup_bytes_before_cut": backup_at_cut, "primary_bytes_at_cut": primary_at_cut,
                "primary_bytes_after_cut": primary_seen - primary_at_cut,
                "primary_last_after_cut_s": primary_last - t_cut}  # fmt: skip

    return watch


def app_resume(receiver: dict[str, Any], t_cut: float) -> float | None:
    """Seconds from the cut to the end of the application's longest pause after it."""
    pauses = [(t1 - max(t0, t_cut), t1) for t0, t1, _ in receiver["gaps"] if t1 > t_cut]
    if not pauses:
        return None
    return max(pauses)[1] - t_cut


def failover(nbytes: int, rate: float, runs: int, how: str, progress: Progress
             ) -> dict[str, Any]:  # fmt: skip
    directions = {
        "kernel_to_kernel": (End("kernel", "client", (), frozenset({"backup"})),
                             End("kernel", "server", (), frozenset({"signal"}))),
        "stack_to_kernel": (End("stack", "client", stack_interfaces("client", "backup")),
                            End("kernel", "server", (), frozenset({"signal"}))),
        "kernel_to_stack": (End("kernel", "server", (), frozenset({"backup"})),
                            End("stack", "client", stack_interfaces("client", "signal"))),
    }  # fmt: skip
    figures: dict[str, dict[str, list[float]]] = {n: {"backup": [], "app": []} for n in directions}
    runs_detail: dict[str, list[dict[str, Any]]] = {n: [] for n in directions}
    missing: list[str] = []
    with Labs(lambda bare: topologies.primary_backup(bare=bare)) as labs:
        for run in range(runs):
            for name, (sender, receiver) in directions.items():
                topo = labs.for_direction(name)
                link = topo.links["primary"]

                def cut(on: bool, link: Any = link) -> None:
                    if how == "down":
                        link.down() if on else link.up()
                    else:
                        link.blackhole(on)

                try:
                    outcome = transfer(topo, sender, receiver, nbytes, next(PORTS), pace=rate,
                                       watch=failover_watch(cut))  # fmt: skip
                except TransferFailed as error:
                    missing.append(f"{name} run {run + 1}: {error}")
                    progress(f"failover run {run + 1}/{runs} {name}: FAILED: {error}")
                    continue
                finally:
                    cut(False)
                seen = outcome.watched
                t_cut = seen["t_cut"]
                backup = seen["t_backup"] - t_cut if seen["t_backup"] is not None else None
                app = app_resume(outcome.receiver, t_cut)
                detail = {
                    **{k: v for k, v in seen.items() if not k.startswith("t_")},
                    "backup_s": backup,
                    "app_s": app,
                    "stack": _stack_view(outcome),
                    "kernel": outcome.kernel_counters,
                }
                runs_detail[name].append(detail)
                if backup is None:
                    missing.append(f"{name} run {run + 1}: no byte over the backup within "
                                   f"{FAILOVER_DEADLINE:.0f} s")  # fmt: skip
                else:
                    figures[name]["backup"].append(backup)
                if app is not None:
                    figures[name]["app"].append(app)
                progress(f"failover run {run + 1}/{runs} {name}: first byte over the backup "
                         f"{_ms(backup)}, application resumed {_ms(app)} after the cut "
                         f"(cut call {seen['cut_call_s'] * 1e3:.1f} ms)")  # fmt: skip
    result: dict[str, Any] = {"figure": "failover", "path": f"primary cut ({how}), backup up",
                              "bytes": nbytes, "pace_MBps": rate / 1e6, "runs": runs}  # fmt: skip
    for name, values in figures.items():
        for kind in ("backup", "app"):
            result[f"{name}_{kind}_ms"] = (
                round(statistics.median(values[kind]) * 1e3, 1) if values[kind] else None
            )
    kernel = result["kernel_to_kernel_backup_ms"]
    met = not missing and kernel is not None
    for name in ("stack_to_kernel", "kernel_to_stack"):
        ours = result[f"{name}_backup_ms"]
        result[f"ratio_{name}"] = round(ours / kernel, 3) if ours and kernel else None
        met = met and ours is not None and kernel is not None and ours <= kernel
    result["goal"] = "first byte over the backup: ours <= the kernel's"
    result["goal_met"] = met
    result["missing"] = missing
    result["details"] = runs_detail
    return result


def _ms(seconds: float | None) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds is not None else "never"


# ---------------------------------------------------------------- 4: join latency


def join_watch(live: Live) -> dict[str, Any]:
    """At the sender: when its second subflow appears (join SYN sent), is TCP-established
    (SYN/ACK received) and is usable."""
    if live.sender.impl == "stack":
        live.stack_socket_ready.wait(20)
    started = established = usable = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        views = [v for v in live.subflows(live.sender) if not v.initial]
        now = time.monotonic()
        if views and started is None:
            started = now
        if established is None and any(v.established for v in views):
            established = now
        if any(v.usable for v in views):
            usable = now
            established = established or now
            break
        if live.connected.is_set() and live.t_connected and now > live.t_connected + JOIN_DEADLINE:
            break
        time.sleep(0.0002)
    live.connected.wait(20)
    return {"started": started, "established": established, "usable": usable,
            "t_connected": live.t_connected}  # fmt: skip


def join_latency(nbytes: int, rate: float, runs: int, progress: Progress) -> dict[str, Any]:
    sub = frozenset({"subflow"})
    directions = {
        "kernel_to_kernel": (End("kernel", "client", (), sub), End("kernel", "server", ())),
        "stack_to_kernel": (End("stack", "client", stack_interfaces("client", "subflow")),
                            End("kernel", "server", ())),
        "kernel_to_stack": (End("kernel", "server", (), sub),
                            End("stack", "client", stack_interfaces("client"))),
        "stack_to_stack": (End("stack", "client", stack_interfaces("client", "subflow")),
                           End("stack", "server", stack_interfaces("server"))),
    }  # fmt: skip
    figures: dict[str, dict[str, list[float]]] = {
        n: {"usable": [], "established": [], "started": []} for n in directions
    }
    missing: list[str] = []
    with Labs(lambda bare: topologies.dual_homed(bare=bare)) as labs:
        for run in range(runs):
            for name, (sender, receiver) in directions.items():
                topo = labs.for_direction(name)
                try:
                    outcome = transfer(topo, sender, receiver, nbytes, next(PORTS), pace=rate,
                                       watch=join_watch)  # fmt: skip
                except TransferFailed as error:
                    missing.append(f"{name} run {run + 1}: {error}")
                    progress(f"join run {run + 1}/{runs} {name}: FAILED: {error}")
                    continue
                seen = outcome.watched
                t0 = seen["t_connected"]
                for kind in ("usable", "established", "started"):
                    if seen[kind] is not None:
                        figures[name][kind].append(seen[kind] - t0)
                if seen["usable"] is None:
                    missing.append(f"{name} run {run + 1}: no usable second subflow within "
                                   f"{JOIN_DEADLINE} s of connect")  # fmt: skip
                times = {k: _ms(seen[k] - t0 if seen[k] else None)
                         for k in ("started", "established", "usable")}  # fmt: skip
                progress(f"join run {run + 1}/{runs} {name} after connect(): join SYN seen "
                         f"{times['started']}, TCP established {times['established']}, "
                         f"usable {times['usable']}")  # fmt: skip
    result: dict[str, Any] = {"figure": "join latency", "path": "2 paths, unshaped",
                              "bytes": nbytes, "runs": runs}  # fmt: skip
    for name, values in figures.items():
        for kind in ("usable", "established", "started"):
            result[f"{name}_{kind}_ms"] = (
                round(statistics.median(values[kind]) * 1e3, 2) if values[kind] else None
            )
    kernel = result["kernel_to_kernel_usable_ms"]
    for name in ("stack_to_kernel", "kernel_to_stack", "stack_to_stack"):
        ours = result[f"{name}_usable_ms"]
        result[f"ratio_{name}"] = round(ours / kernel, 2) if ours and kernel else None
    result["goal"] = "none set (reported)"
    result["goal_met"] = not missing
    result["missing"] = missing
    return result


# ---------------------------------------------------------------- CLI


def _table(results: list[dict[str, Any]]) -> str:
    from tabulate import tabulate

    blocks = []
    for r in results:
        rows = [[k, v] for k, v in r.items() if k not in ("details", "missing")]
        rows += [["missing", m] for m in r.get("missing", [])]
        blocks.append(tabulate(rows, tablefmt="simple"))
    return "\n\n".join(blocks)


def stack_tree() -> str:
    """The commit measured, and the files of stack/ changed in the work tree since."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "diff", "--name-only", "HEAD", "--", "stack"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split()
    except OSError:
        return "unknown"
    return head + (f" + uncommitted {', '.join(dirty)}" if dirty else "")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_peer"]:
        return _peer_main(argv[1:])
    if argv[:1] == ["_watch"]:
        return _watch_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench.bench_mptcp",
                                     description=__doc__.splitlines()[0])  # fmt: skip
    parser.add_argument("--bytes", type=int, default=100_000_000, help="goodput transfers")
    parser.add_argument("--runs", type=int, default=1, help="goodput runs (median)")
    parser.add_argument("--rate", default="100mbit", help="tbf rate of the shaped paths")
    parser.add_argument("--failover-runs", type=int, default=3)
    parser.add_argument("--failover-rate", type=float, default=10e6, help="bytes/s, paced")
    parser.add_argument("--failover-bytes", type=int, default=40_000_000)
    parser.add_argument("--cut", choices=("blackhole", "down"), default="blackhole")
    parser.add_argument("--join-runs", type=int, default=10)
    parser.add_argument("--only", default="goodput,aggregation,failover,join",
                        help="comma-separated figures to run")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="20 MB transfers, 1 failover run, 3 join runs")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_mptcp needs root (network namespaces, raw sockets)", file=sys.stderr)
        return 2
    if args.quick:
        args.bytes, args.failover_runs, args.join_runs = 20_000_000, 1, 3
        args.failover_bytes = 30_000_000
    wanted = set(args.only.split(","))

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    results: list[dict[str, Any]] = []
    try:
        if "goodput" in wanted:
            results.append(goodput(LinkProps(), 1, args.bytes, args.runs, progress))
            results.append(goodput(LinkProps(rate=args.rate), 1, args.bytes, args.runs, progress))
        if "aggregation" in wanted:
            results.append(goodput(LinkProps(rate=args.rate), 2, args.bytes, args.runs, progress))
        if "failover" in wanted:
            results.append(failover(args.failover_bytes, args.failover_rate,
                                    args.failover_runs, args.cut, progress))  # fmt: skip
        if "join" in wanted:
            results.append(join_latency(2_000_000, 20e6, args.join_runs, progress))
    except TransferFailed as error:
        print(f"bench_mptcp FAILED: {error}", file=sys.stderr)
        return 1
    tree = stack_tree()
    for result in results:
        result["stack_tree"] = tree
    if args.json:
        print(json.dumps(results))
    else:
        print(_table(results))
    ok = all(r["goal_met"] for r in results)
    summary = "; ".join(f"{r['figure']} ({r['path']}): goal {'met' if r['goal_met'] else 'MISSED'}"
                        for r in results)  # fmt: skip
    print(f"bench_mptcp, SHA-256 intact: {summary}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
