"""Goodput of plain TCP through the userspace stack, side by side with the kernel's.

    python -m bench.bench_goodput [--bytes 100000000] [--runs 1] [--rate 100mbit] [--json]

Three transfers of `--bytes` on a single veth path, each checked end to end with
SHA-256 (the seeded stream of `testbed.apps`):

- stack -> kernel: the stack (client, bare host) sends to a kernel `sink`;
- kernel -> stack: a kernel `source` connects to the stack's server;
- kernel -> kernel: the same apps on both ends of an identical path with kernel
  addresses on both hosts.

The kernel ends run as separate processes (`python -m testbed.apps`), so they do not
share the stack's interpreter; the stack's application runs in this process beside the
stack's I/O thread, as a user of `stack.tcp_host` would. Goodput is what the receiver
counts from accept (or connect) to end of stream, in MB/s (10^6 bytes per second). The
runs alternate, so machine noise hits all three alike; the figures are medians.

The path is unshaped, and then (unless `--rate ''`) shaped by the testbed's tbf to
`--rate`. Goals: unshaped, ≥ 40 MB/s each way; shaped, the stack ≥ 95 % of the kernel.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import topologies
from stack.host import Host
from stack.route import InterfaceConfig
from stack.tcp_host import TcpServer, connect
from testbed import build
from testbed.apps import BLOCK, stream_chunk, stream_sha256
from testbed.builder import Topology
from testbed.process import Background, spawn
from testbed.spec import LinkProps

CLIENT, SERVER = "192.0.2.1", "192.0.2.2"
ROOT = Path(__file__).resolve().parent.parent
GOAL_UNSHAPED_MBPS = 40.0  # MB/s each way
GOAL_SHAPED_RATIO = 0.95
TIMEOUT = 120.0


class TransferFailed(RuntimeError):
    """A transfer did not deliver every byte intact; the message says what was seen."""


def _app(topo: Topology, host: str, *args: str) -> Background:
    argv = [sys.executable, "-m", "testbed.apps", *args, "--protocol", "tcp", "--json",
            "--timeout", str(TIMEOUT)]  # fmt: skip
    return spawn(topo.hosts[host].ns, argv, cwd=str(ROOT))


def _report(app: Background, what: str) -> dict[str, Any]:
    """The JSON report line an app prints when its connection ends."""
    try:
        app.wait(TIMEOUT)
    finally:
        app.terminate()
    for line in reversed(app.stdout.splitlines()):
        if line.startswith("{") and '"role"' in line:
            report: dict[str, Any] = json.loads(line)
            if report.get("error"):
                raise TransferFailed(f"{what}: {report['error']}")
            return report
    raise TransferFailed(f"{what}: no report ({app.stdout.strip()} {app.stderr.strip()})")


def _check(what: str, nbytes: int, got: int, digest: str, expected: str) -> None:
    if got != nbytes or digest != expected:
        raise TransferFailed(
            f"{what}: {got} of {nbytes} bytes arrived, SHA-256 {digest[:16]}... "
            f"(expected {expected[:16]}...)"
        )


def stack_to_kernel(topo: Topology, host: Host, nbytes: int, port: int, sha: str) -> float:
    """The stack sends `nbytes` to a kernel sink; the sink's goodput in MB/s."""
    sink = _app(topo, "server", "sink", "--bind", SERVER, "--port", str(port))
    sink.wait_for_line("listening", timeout=10)
    stream = connect(host, (SERVER, port))
    digest = hashlib.sha256()
    for index in range((nbytes + BLOCK - 1) // BLOCK):
        chunk = stream_chunk(index)[: min(BLOCK, nbytes - index * BLOCK)]
        stream.sendall(chunk, timeout=TIMEOUT)
        digest.update(chunk)
    stream.shutdown()
    report = _report(sink, "stack -> kernel")
    stream.close()
    _check("stack -> kernel", nbytes, report["bytes_received"], report["sha256_received"], sha)
    _check("stack -> kernel (sent)", nbytes, nbytes, digest.hexdigest(), sha)
    return float(report["bytes_received"]) / report["duration_s"] / 1e6


def kernel_to_stack(topo: Topology, host: Host, nbytes: int, port: int, sha: str) -> float:
    """A kernel source sends `nbytes` to the stack's server; the stack's goodput in MB/s."""
    server = TcpServer(host, port)
    source = _app(topo, "server", "source", "--connect", f"{CLIENT}:{port}",
                  "--bytes", str(nbytes))  # fmt: skip
    stream = server.accept(timeout=10)
    started = time.monotonic()
    digest = hashlib.sha256()
    got = 0
    while chunk := stream.recv(1 << 20, timeout=TIMEOUT):
        digest.update(chunk)
        got += len(chunk)
    elapsed = time.monotonic() - started
    stream.close()
    report = _report(source, "kernel -> stack")
    _check("kernel -> stack", nbytes, got, digest.hexdigest(), sha)
    _check("kernel -> stack (sent)", nbytes, report["bytes_sent"], report["sha256_sent"], sha)
    return got / elapsed / 1e6


def kernel_to_kernel(topo: Topology, nbytes: int, port: int, sha: str) -> float:
    sink = _app(topo, "server", "sink", "--bind", SERVER, "--port", str(port))
    sink.wait_for_line("listening", timeout=10)
    source = _app(topo, "client", "source", "--connect", f"{SERVER}:{port}",
                  "--bytes", str(nbytes))  # fmt: skip
    report = _report(sink, "kernel -> kernel")
    _report(source, "kernel -> kernel (source)")
    _check("kernel -> kernel", nbytes, report["bytes_received"], report["sha256_received"], sha)
    return float(report["bytes_received"]) / report["duration_s"] / 1e6


def measure(props: LinkProps, nbytes: int, runs: int, progress: Callable[[str], None]
            ) -> dict[str, Any]:  # fmt: skip
    sha = stream_sha256(nbytes)
    figures: dict[str, list[float]] = {"stack_to_kernel": [], "kernel_to_stack": [],
                                       "kernel_to_kernel": []}  # fmt: skip
    with (
        build(topologies.single_path(props, bare=("client",))) as bare,
        build(topologies.single_path(props)) as kernels,
    ):
        host = Host([InterfaceConfig.parse(f"eth0={CLIENT}/24")], netns=bare.hosts["client"].netns)
        host.start()
        try:
            port = 9000
            for run in range(runs):
                for name, fn in (
                    ("kernel_to_kernel", lambda p: kernel_to_kernel(kernels, nbytes, p, sha)),
                    ("stack_to_kernel", lambda p: stack_to_kernel(bare, host, nbytes, p, sha)),
                    ("kernel_to_stack", lambda p: kernel_to_stack(bare, host, nbytes, p, sha)),
                ):
                    port += 1
                    figures[name].append(fn(port))
                    progress(f"{props.rate or 'unshaped'} run {run + 1}/{runs} {name}: "
                             f"{figures[name][-1]:.1f} MB/s")  # fmt: skip
        finally:
            host.close()
    result: dict[str, Any] = {"path": props.rate or "unshaped", "bytes": nbytes, "runs": runs}
    for name, values in figures.items():
        result[f"{name}_MBps"] = round(statistics.median(values), 2)
    kernel = result["kernel_to_kernel_MBps"]
    result["ratio_stack_to_kernel"] = round(result["stack_to_kernel_MBps"] / kernel, 3)
    result["ratio_kernel_to_stack"] = round(result["kernel_to_stack_MBps"] / kernel, 3)
    return result


def goals_met(result: dict[str, Any]) -> bool:
    if result["path"] == "unshaped":
        return min(result["stack_to_kernel_MBps"], result["kernel_to_stack_MBps"]) >= (
            GOAL_UNSHAPED_MBPS
        )
    return min(result["ratio_stack_to_kernel"], result["ratio_kernel_to_stack"]) >= (
        GOAL_SHAPED_RATIO
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_goodput",
                                     description=__doc__.splitlines()[0])  # fmt: skip
    parser.add_argument("--bytes", type=int, default=100_000_000, help="per transfer")
    parser.add_argument("--runs", type=int, default=1, help="runs of each transfer (median)")
    parser.add_argument("--rate", default="100mbit", help="shaped path rate ('' to skip)")
    parser.add_argument("--no-unshaped", action="store_true", help="only the shaped path")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_goodput needs root (network namespaces, raw sockets)", file=sys.stderr)
        return 2

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    paths = [] if args.no_unshaped else [LinkProps()]
    if args.rate:
        paths.append(LinkProps(rate=args.rate))
    results = []
    try:
        for props in paths:
            results.append(measure(props, args.bytes, args.runs, progress))
    except (TransferFailed, TimeoutError, ConnectionError) as error:
        print(f"bench_goodput FAILED: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(results))
    else:
        from tabulate import tabulate

        print(tabulate(results, headers="keys", floatfmt=".2f"))
    ok = all(goals_met(r) for r in results)
    summary = "; ".join(
        f"{r['path']}: stack->kernel {r['stack_to_kernel_MBps']:.1f}, kernel->stack "
        f"{r['kernel_to_stack_MBps']:.1f}, kernel->kernel {r['kernel_to_kernel_MBps']:.1f} MB/s "
        f"(ratios {r['ratio_stack_to_kernel']:.2f}/{r['ratio_kernel_to_stack']:.2f})"
        for r in results
    )
    print(f"goodput of {args.bytes} B, SHA-256 intact, median of {args.runs}: {summary}; "
          f"goals {'met' if ok else 'NOT met'}", file=sys.stderr)  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
