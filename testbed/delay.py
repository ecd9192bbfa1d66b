"""A userspace delay element: an L2 forwarder between two interfaces that holds each frame.

This kernel has no netem (see FACTS.md), so a link with delay or jitter is split in two
veth pairs around a hidden namespace that runs this forwarder. Frames keep their order:
jitter varies each frame's hold time, but a frame never leaves before the one ahead of
it (netem would reorder; we document that we do not).

Run as `python -m testbed.delay IF_A IF_B --delay SECONDS [--jitter SECONDS]` inside the
namespace. It prints `ready` once both sockets are bound. It reads commands on stdin,
one per line: `delay SECONDS JITTER_SECONDS` changes the hold time while traffic flows.
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


def forward(if_a: str, if_b: str, delay: float, jitter: float, seed: int) -> None:
    rng = random.Random(seed)
    sock_a, sock_b = _open(if_a), _open(if_b)
    # Each direction: a FIFO of (release time, frame) and the socket it leaves by.
    queues = {
        sock_a.fileno(): (collections.deque[tuple[float, bytes]](), sock_b),
        sock_b.fileno(): (collections.deque[tuple[float, bytes]](), sock_a),
    }
    last_release = {sock_a.fileno(): 0.0, sock_b.fileno(): 0.0}
    sockets = {sock_a.fileno(): sock_a, sock_b.fileno(): sock_b}
    stdin = sys.stdin.fileno()
    print("ready", flush=True)
    while True:
        now = time.monotonic()
        next_release = min((q[0][0] for q, _ in queues.values() if q), default=None)
        timeout = None if next_release is None else max(0.0, next_release - now)
        readable, _, _ = select.select([sock_a, sock_b, stdin], [], [], timeout)
        now = time.monotonic()
        for item in readable:
            if isinstance(item, int):
                line = sys.stdin.readline()
                if not line:
                    return  # the testbed closed our stdin: tear down
                parts = line.split()
                if len(parts) == 3 and parts[0] == "delay":
                    delay, jitter = float(parts[1]), float(parts[2])
                continue
            fd = item.fileno()
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
