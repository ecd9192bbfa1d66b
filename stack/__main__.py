"""`python -m stack serve|connect`: the stack as a process (the harness's contract).

Prints JSON lines on stdout: `{"event": "listening", ...}` once `serve` accepts, and
one `{"event": "connection", ...}` per connection when it ends (bytes each way, SHA-256
of what was sent and received, the MPTCP version, fallback, tokens, keys and subflows).
`serve` runs until SIGTERM or SIGINT and exits 0; `connect` exits 0 when its
connection ended cleanly, 1 otherwise. Bad flags exit 2 with a message naming them.
With `--control stdin`, JSON commands on stdin change endpoints while it runs
(`stack.control`), each answered by one `{"event": "control", ...}` line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sys
import threading
import time
from typing import Any

from stack.api import MptcpSocket, Stack
from stack.cli import build_parser, endpoints_of
from stack.control import control_loop
from stack.mptcp.connection import MptcpConfig
from stack.mptcp.handshake import V0Policy
from stack.mptcp.pm import PathManagerError
from testbed.apps import SEED, AppReport, play

_print_lock = threading.Lock()


class Stopped(Exception):
    """SIGTERM or SIGINT while `connect` waits: give up at once."""


def emit(line: dict[str, Any]) -> None:
    with _print_lock:
        print(json.dumps(line), flush=True)


def run_connection(
    sock: MptcpSocket, mode: str, nbytes: int, side: str, seed: int | None = None
) -> AppReport:
    report = AppReport(role=mode, side=side, protocol="mptcp-stack")
    if mode == "close-unread":
        _close_unread(sock, report)
    elif mode == "abort":
        _abort_after_first_read(sock, report)
    else:
        play(sock, mode, nbytes, report, SEED if seed is None else seed)  # type: ignore[arg-type]
    report.mptcp = sock.msk.describe()
    if sock.close_error and not report.error:
        report.error = sock.close_error  # what was sent may not have arrived
    if sock.close_state:
        report.mptcp["state_at_abort"] = sock.close_state
    return report


def _close_unread(sock: MptcpSocket, report: AppReport) -> None:
    """Wait (up to 120 s) for data to arrive, then close without reading it."""
    started = time.monotonic()
    try:
        sock.wait_readable(timeout=120.0)
    except (OSError, TimeoutError) as error:
        report.error = f"close-unread: {error}"
    finally:
        sock.close()
        report.duration_s = time.monotonic() - started


def _abort_after_first_read(sock: MptcpSocket, report: AppReport) -> None:
    """Read what arrives first (up to 120 s), then abort: MP_FASTCLOSE, as a kernel
    socket closed with SO_LINGER 0."""
    started = time.monotonic()
    try:
        report.bytes_received = len(sock.recv(65536, timeout=120.0))
    except (OSError, TimeoutError) as error:
        report.error = f"abort: {error}"
    finally:
        sock.abort()
        report.duration_s = time.monotonic() - started


def _config(args: Any) -> MptcpConfig:
    versions = {args.version}
    if args.command == "connect" and args.version == 1 and args.v0_policy == "retry-v0":
        versions.add(0)  # retrying with v0 needs v0 among the versions this side speaks
    tcp = dataclasses.replace(MptcpConfig().tcp, syn_retries=args.syn_retries)
    return MptcpConfig(
        versions=frozenset(versions),
        tcp=tcp,
        want_checksum=args.checksum,
        v0_policy=V0Policy(args.v0_policy),
        scheduler=args.scheduler,
        congestion=args.cc,
        add_addr_timeout=args.add_addr_timeout,
        deny_join_initial=args.deny_join_initial_address,
        syn_retrans_before_fallback=(
            None if args.syn_retrans_before_fallback >= 128 else args.syn_retrans_before_fallback
        ),
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = _config(args)
    try:
        endpoints = endpoints_of(args.interface)
        stack = Stack([spec.config for spec in args.interface], netns=args.netns, config=config,
                      endpoints=endpoints, limits=args.limits)  # fmt: skip
    except (OSError, PathManagerError, ValueError) as error:
        print(f"python -m stack: {error}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()
        if args.command == "connect" and threading.current_thread() is threading.main_thread():
            raise Stopped(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.control == "stdin":
        threading.Thread(target=control_loop, args=(stack, sys.stdin, emit),
                         daemon=True).start()  # fmt: skip
    try:
        if args.command == "serve":
            return serve(stack, args, stop)
        return connect(stack, args, stop)
    finally:
        stack.close()


def serve(stack: Stack, args: Any, stop: threading.Event) -> int:
    server = stack.listen(args.port, address=args.bind)
    emit({"event": "listening", "port": args.port,
          "addresses": [str(s.config.address.ip) for s in args.interface]})  # fmt: skip

    def handle(sock: MptcpSocket) -> None:
        report = run_connection(sock, args.mode, args.bytes, "server", args.seed)
        emit({"event": "connection", **report.to_json()})

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                sock = server.accept(timeout=0.2)
            except TimeoutError:
                continue
            threading.Thread(target=handle, args=(sock,), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    stop.wait()
    # The acceptor and connections still running end with the process (they are daemon
    # threads), as a killed server's would: no waiting for the acceptor's poll.
    return 0


def connect(stack: Stack, args: Any, stop: threading.Event) -> int:
    address, port = args.to
    started = time.monotonic()
    try:
        sock = stack.connect((str(address), port), timeout=min(args.timeout, 30.0))
    except (OSError, TimeoutError, Stopped) as error:
        report = AppReport(role=args.mode, side="client", protocol="mptcp-stack",
                           error=f"connect to {address}:{port}: {error}",
                           duration_s=time.monotonic() - started)  # fmt: skip
        emit({"event": "connection", **report.to_json()})
        return 1
    result: list[AppReport] = []
    worker = threading.Thread(
        target=lambda: result.append(
            run_connection(sock, args.mode, args.bytes, "client", args.seed)
        ),
        daemon=True,
    )
    worker.start()
    deadline = time.monotonic() + args.timeout
    with contextlib.suppress(Stopped):
        while worker.is_alive() and not stop.is_set() and time.monotonic() < deadline:
            worker.join(0.1)
    if not result:
        sock.abort()
        report = AppReport(role=args.mode, side="client", protocol="mptcp-stack",
                           error="interrupted" if stop.is_set() else
                           f"not finished within --timeout {args.timeout} s")  # fmt: skip
        report.mptcp = sock.msk.describe()
        emit({"event": "connection", **report.to_json()})
        return 1
    emit({"event": "connection", **result[0].to_json()})
    return 0 if not result[0].error else 1


if __name__ == "__main__":
    sys.exit(main())
