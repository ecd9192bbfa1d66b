"""Kernel-to-kernel MPTCP uploads over the dual-homed topology, checked byte by byte.

    python -m bench.mptcp_integrity [--runs 30] [--bytes 2097152] [--capture DIR] [--json]

Each run is one connection (client `source` -> server `sink`, IPPROTO_MPTCP on both
ends) on a fresh dual-homed topology, with a `subflow` endpoint on the client's second
address, so that a second subflow joins while data flows: the set-up of
test_kernel_topologies' transfer test. Without `--capture` no tcpdump runs, so whether
capturing matters can be told apart. A run that does not arrive intact is printed with
where the received bytes differ from the stream (`divergences`: offset, length, and
where those bytes belong), the MPTcpExt counters that moved on both hosts, and `known`:
the evidence if it is the kernel bug of docs/architecture.md ("Kernel data corruption
at a join"), else empty; with `--capture`, its pcaps are kept.
The exit status is 1 if any run failed.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import topologies
from testbed import build
from testbed.apps import kernel_join_remap, transfer
from testbed.capture import CaptureSet
from testbed.mptcp import KernelMptcp, counters_diff

SERVER, CLIENT_SECOND = "192.0.2.2", "198.51.100.1"


def one_run(nbytes: int, port: int, capture: Path | None) -> dict[str, Any]:
    """One upload on a fresh topology; what it saw, failed or not."""
    with build(topologies.dual_homed()) as topo:
        captures = CaptureSet.for_topology(topo, hosts=("client", "server")) if capture else None
        client = KernelMptcp(topo.hosts["client"].ns)
        server = KernelMptcp(topo.hosts["server"].ns)
        for side in (client, server):
            side.set_limits(subflows=4, add_addr_accepted=4)
        client.add_endpoint(CLIENT_SECOND, flags={"subflow"})
        kept = False
        try:
            before = (client.counters(), server.counters())
            result = transfer(server.ns, client.ns, SERVER, port, nbytes, protocol="mptcp")
            outcome: dict[str, Any] = {
                "intact": result.intact,
                "divergences": [asdict(d) for d in result.server.divergences],
                "subflows_total": result.server.mptcp.get("subflows_total"),
                "client_mib": counters_diff(before[0], client.counters()),
                "server_mib": counters_diff(before[1], server.counters()),
            }
            if not result.intact:
                outcome["known"] = kernel_join_remap(result, outcome["server_mib"])
                outcome["result"] = str(result)
                if captures is not None and capture is not None:
                    outcome["pcaps"] = str(captures.keep(capture / f"port{port}"))
                    kept = True
        finally:
            if captures is not None and not kept:
                captures.discard()
        return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mptcp_integrity",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--bytes", type=int, default=2 << 20)
    parser.add_argument("--capture", type=Path, default=None, help="tcpdump; keep failed pcaps")
    parser.add_argument("--json", action="store_true", help="one JSON line per run")
    args = parser.parse_args(argv)
    # A kill between runs or mid-run still tears the namespaces and tcpdumps down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    failed = 0
    for run in range(args.runs):
        outcome = one_run(args.bytes, 6000 + run, args.capture)
        failed += not outcome["intact"]
        if args.json:
            print(json.dumps({"run": run, **outcome}), flush=True)
        elif not outcome["intact"]:
            print(f"run {run}: CORRUPT {json.dumps(outcome)}", flush=True)
    print(f"{failed} of {args.runs} runs corrupt", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
