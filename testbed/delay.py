"""A userspace delay element: an L2 forwarder between two interfaces that holds each frame.

This kernel has no netem (see FACTS.md), so a link with delay or jitter is split in two
veth pairs around a hidden namespace that runs this forwarder. Frames keep their order:
jitter varies each frame's hold time, but a frame never leaves before the one ahead of
it (netem would reorder; we document that we do not).

The testbed forks it into the hidden namespace (`start()`); it can also run as
`python -m testbed.delay IF_A IF_B --delay SECONDS [--jitter SECONDS]`. It reads commands
one per line (stdin when run as a program): `delay SECONDS JITTER_SECONDS` changes the
hold time while traffic flows, and end of file stops it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import random
import select
import socket
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
MAX_QUEUED_FRAMES = 20000  # per direction; beyond it frames drop, like a full queue


def _open(ifname: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((ifname, 0))
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    return sock


FORWARDER_NICE = -10  # root only; ordinary processes stay at 0


def forward(if_a: str, if_b: str, delay: float, jitter: float, seed: int, control: int = 0) -> None:
    """Forward until `control` (a file descriptor of command lines) reaches end of file."""
    rng = random.Random(seed)
    sock_a, sock_b = _open(if_a), _open(if_b)
    # Each direction: a FIFO of (release time, frame) and the socket it leaves by.
    queues = {
        sock_a.fileno(): (collections.deque[tuple[float, bytes]](), sock_b),
        sock_b.fileno(): (collections.deque[tuple[float, bytes]](), sock_a),
    }
    last_release = {sock_a.fileno(): 0.0, sock_b.fileno(): 0.0}
    sockets = {sock_a.fileno(): sock_a, sock_b.fileno(): sock_b}
    control_file = os.fdopen(control, "r", closefd=False)
    watched = [sock_a.fileno(), sock_b.fileno(), control]
    print("ready", flush=True)
    while True:
        now = time.monotonic()
        next_release = min((q[0][0] for q, _ in queues.values() if q), default=None)
        timeout = None if next_release is None else max(0.0, next_release - now)
        readable, _, _ = select.select(watched, [], [], timeout)
        now = time.monotonic()
        for fd in readable:
            if fd == control:
                line = control_file.readline()
                if not line:
                    return  # the testbed closed our stdin: tear down
                parts = line.split()
                if len(parts) == 3 and parts[0] == "delay":
                    delay, jitter = float(parts[1]), float(parts[2])
                    print("ok", flush=True)  # the change is in force from here on
                else:
                    print(f"error: unknown command {line.strip()!r}", flush=True)
                continue
            queue, _ = queues[fd]
            sock = sockets[fd]
            for _ in range(256):
                try:
                    frame, address = sock.recvfrom(65536)
                except BlockingIOError:
                    break
                if address[2] == PACKET_OUTGOING or len(queue) >= MAX_QUEUED_FRAMES:
                    continue
                hold = delay + (rng.uniform(-jitter, jitter) if jitter else 0.0)
                release = max(now + hold, last_release[fd])
                last_release[fd] = release
                queue.append((release, frame))
        for queue, out in queues.values():
            while queue and queue[0][0] <= now:
                _, frame = queue.popleft()
                try:  # noqa: SIM105 (hot loop: suppress() costs more)
                    out.send(frame)
                except OSError:
                    pass  # a full or downed link drops the frame, as a wire would


def start(if_a: str, if_b: str, delay: float, jitter: float) -> tuple[int, int, int]:
    """Fork the forwarder from the calling thread (which is inside the box's namespace).

    Returns (pid, control fd to write commands to, reply fd to read answers from).
    Forking skips a Python start-up (about 100 ms). The child runs nothing but the
    forwarder and leaves with os._exit, bypassing the parent's atexit handlers; it stops
    when the control pipe closes, which also happens when the parent dies.
    """
    control_read, control_write = os.pipe()
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            os.close(control_write)
            os.close(ready_read)
            os.dup2(ready_write, 1)  # "ready" goes to the parent
            os.dup2(os.open(os.devnull, os.O_RDWR), 2)
            sys.stdout = os.fdopen(1, "w")
            # A delay element is part of the emulated wire: netem runs in softirq, ahead
            # of processes. So the forwarder runs ahead of them too, as a real-time
            # process at the lowest priority (it blocks in select between frames; the
            # kernel's RT throttling caps it at 95 % of a CPU). At load 6, holds ran up
            # to 11 ms late at nice -10 and at most 0.3 ms late so; a jitter test had
            # seen 87 ms round trips on a 20 +- 10 ms link. Without CAP_SYS_NICE: nice.
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, 0, FORWARDER_NICE)
            with contextlib.suppress(OSError):
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
            forward(if_a, if_b, delay, jitter, os.getpid(), control_read)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(control_read)
    os.close(ready_write)
    line = read_line(ready_read, timeout=10.0)
    if line != "ready":
        os.close(control_write)
        os.close(ready_read)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise OSError(f"the delay forwarder between {if_a} and {if_b} failed to start")
    return pid, control_write, ready_read


def read_line(fd: int, timeout: float) -> str:
    """One line from a pipe, or "" when it closes or nothing comes within `timeout`."""
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return ""
        chunk = os.read(fd, 1)
        if not chunk:
            return ""
        data += chunk
    return data.decode().strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("if_a")
    parser.add_argument("if_b")
    parser.add_argument("--delay", type=float, required=True, help="one-way hold, seconds")
    parser.add_argument("--jitter", type=float, default=0.0, help="± variation, seconds")
    parser.add_argument("--seed", type=int, default=os.getpid())
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        forward(args.if_a, args.if_b, args.delay, args.jitter, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
