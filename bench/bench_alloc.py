"""The soak's RSS growth in memory: connections one after another, glibc's allocator as it
comes against the stack's (`stack/alloc.py`, issue 11).

    python -m bench.bench_alloc [--connections 80] [--json]

Each variant runs in a fresh process: `--connections` MPTCP connections between two of
our connections on the in-memory link (`stack.sim`, virtual time; the pair of
`stack/tests/test_mptcp_sim.py`), one after another, each moving N bytes each way, N
log-uniform in 100 KB..8 MB (fixed seed), on a 50 MB/s path. Nothing of a connection
outlives it, so the process's RSS should stay where the first few left it. Reported per
variant: RSS (MB) after every fifth connection, glibc's heap at the end (its extent, and
its free part: what fragmentation keeps resident), and the CPU time per MB.

* `dynamic`: glibc's default, whose mmap threshold rises to the size of every big
  buffer freed, so that later multi-MB buffers come from the heap;
* `pinned`: the threshold fixed (`stack.alloc.pin_mmap_threshold`, what every `Host`
  does), so that a buffer above 128 KiB is a mapping of its own.

Measured here (80 connections, 123 MB each way): dynamic 33 -> 65 MB; pinned 33 -> 35 MB.
The goal: the pinned variant's RSS at the end within 10 % of its first sample.
Exit status 1 when it is missed, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("dynamic", "pinned")
SIZES = (100_000, 8_000_000)
RATE = 50e6  # bytes/s
GOAL = 0.10


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(variant: str, connections: int) -> dict[str, Any]:
    """One variant in this process (fresh: the allocator's policy is process-wide)."""
    from stack.alloc import malloc_stats, pin_mmap_threshold

    if variant == "pinned" and not pin_mmap_threshold():
        raise SystemExit("bench_alloc: no glibc here: nothing to compare")
    from stack.mptcp.connection import MptcpConfig
    from stack.sim import PathConfig
    from stack.tcp.connection import TcpConfig
    from stack.tests.test_mptcp_sim import run_pair

    config = MptcpConfig(tcp=TcpConfig(min_rto=0.2))
    path = PathConfig(delay=0.002, rate=RATE, queue_bytes=512 * 1024)
    rng = random.Random(7)
    rss: list[float] = []
    total = 0
    started = time.process_time()
    for index in range(connections):
        size = round(math.exp(rng.uniform(*map(math.log, SIZES))))
        run_pair(config, size=size, path=path, seed=index)
        total += size
        if index % 5 == 4:
            rss.append(round(_rss_mib(), 1))
    cpu = time.process_time() - started
    return {"variant": variant, "connections": connections, "bytes_each_way": total,
            "rss_mib": rss, "malloc": malloc_stats(), "cpu_s": cpu,
            "cpu_ms_per_mb": cpu / total * 1e9}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_alloc",
                                     description=__doc__.splitlines()[0])  # fmt: skip
    parser.add_argument("--connections", type=int, default=80, help="one after another (80)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of lines")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.connections < 10:
        parser.error("--connections must be at least 10")
    if args.child:
        print(json.dumps(child(args.child, args.connections)))
        return 0
    results = []
    for variant in VARIANTS:
        print(f"bench_alloc: {variant}, {args.connections} connections...", file=sys.stderr,
              flush=True)  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "bench.bench_alloc", "--child", variant,
             "--connections", str(args.connections)],
            cwd=ROOT, capture_output=True, text=True, env=os.environ,
        )  # fmt: skip
        if done.returncode != 0:
            print(done.stderr.strip()[-2000:], file=sys.stderr)
            return 1
        results.append(json.loads(done.stdout))
    pinned = next(r for r in results if r["variant"] == "pinned")
    growth = pinned["rss_mib"][-1] / pinned["rss_mib"][0] - 1
    met = growth <= GOAL
    if args.json:
        print(json.dumps({"variants": results, "pinned_growth": growth, "met": met}, indent=1))
    else:
        for result in results:
            malloc = result["malloc"] or {}
            heap = ", ".join(f"{k} {v / 2**20:.1f} MB" for k, v in malloc.items())
            print(f"{result['variant']:8s} RSS (MB) every 5 connections: "
                  f"{' '.join(f'{x:.0f}' for x in result['rss_mib'])}; glibc: {heap or 'n/a'}; "
                  f"CPU {result['cpu_ms_per_mb']:.0f} ms/MB")  # fmt: skip
    print(f"bench_alloc: {args.connections} connections, pinned RSS {growth:+.1%} "
          f"(goal within {GOAL:.0%}): {'met' if met else 'MISSED'}", file=sys.stderr)  # fmt: skip
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
