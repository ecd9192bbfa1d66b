"""Bring-up plus teardown time of topologies: ours against a shell script of `ip` commands.

    python -m bench.bench_testbed [--runs 20] [--json]

Both sides build the same network (namespaces, veth pairs, addresses, links up, and the
per-source policy routing of multi-homed hosts), alternating run by run so that machine
noise hits both alike. The figure is the median; the ratio is ours ÷ the script.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import topologies
from testbed import build
from testbed.spec import TopologySpec


def ip_script_dual_homed(tag: str, policy_routing: bool) -> str:
    a, b = f"mptl-bench{tag}-a", f"mptl-bench{tag}-b"
    lines = [
        f"ip netns add {a}",
        f"ip netns add {b}",
        f"ip -n {a} link add eth0 type veth peer name eth0 netns {b}",
        f"ip -n {a} link add eth1 type veth peer name eth1 netns {b}",
    ]
    addresses = {
        a: [("eth0", "192.0.2.1/24"), ("eth1", "198.51.100.1/24")],
        b: [("eth0", "192.0.2.2/24"), ("eth1", "198.51.100.2/24")],
    }
    for ns, entries in addresses.items():
        for ifname, address in entries:
            lines.append(f"ip -n {ns} addr add {address} dev {ifname}")
        lines.append(f"ip -n {ns} link set lo up")
        for ifname, _ in entries:
            lines.append(f"ip -n {ns} link set {ifname} up")
        if policy_routing:
            for table, (ifname, address) in enumerate(entries, start=100):
                ip, prefix = address.split("/")
                network = ip.rsplit(".", 1)[0] + f".0/{prefix}"
                lines.append(f"ip -n {ns} route add {network} dev {ifname} src {ip} table {table}")
                lines.append(f"ip -n {ns} rule add from {ip} table {table} pref {table + 900}")
    lines += [f"ip netns del {a}", f"ip netns del {b}"]
    return "\n".join(lines) + "\n"


def time_script(script: str) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as f:
        f.write("set -e\n" + script)
        path = f.name
    try:
        start = time.perf_counter()
        subprocess.run(["sh", path], check=True)
        return time.perf_counter() - start
    finally:
        os.unlink(path)


def time_ours(spec: TopologySpec) -> float:
    start = time.perf_counter()
    with build(spec):
        pass
    return time.perf_counter() - start


def measure(runs: int) -> list[dict[str, object]]:
    cases: list[tuple[str, Callable[[], float], Callable[[], float] | None, int]] = [
        (
            "dual_homed",
            lambda: time_ours(topologies.dual_homed()),
            lambda: time_script(ip_script_dual_homed(str(os.getpid()), True)),
            24,
        ),
        ("mesh_2x2", lambda: time_ours(topologies.mesh_2x2()), None, 0),
    ]
    minimal = ip_script_dual_homed(str(os.getpid()), False)
    results = []
    time_ours(topologies.dual_homed())  # warm-up: imports, the netem probe, /run/netns
    for name, ours, script, commands in cases:
        ours_times, script_times, minimal_times = [], [], []
        for _ in range(runs):
            ours_times.append(ours())
            if script is not None:
                script_times.append(script())
                minimal_times.append(time_script(minimal))
        row: dict[str, object] = {"topology": name, "ours_ms": statistics.median(ours_times) * 1e3}
        if script_times:
            row["ip_script_ms"] = statistics.median(script_times) * 1e3
            row["ip_script_commands"] = commands
            row["ratio"] = statistics.median(ours_times) / statistics.median(script_times)
            row["ip_minimal_ms"] = statistics.median(minimal_times) * 1e3
            row["ip_minimal_commands"] = minimal.count("\n")
        results.append(row)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    results = measure(args.runs)
    if args.json:
        print(json.dumps(results))
    else:
        from tabulate import tabulate

        print(tabulate(results, headers="keys", floatfmt=".2f"))
    dual = results[0]
    ok = float(dual["ratio"]) <= 1.0  # type: ignore[arg-type]
    print(
        f"bring-up+teardown dual_homed: ours {dual['ours_ms']:.1f} ms vs ip script "
        f"{dual['ip_script_ms']:.1f} ms (ratio {dual['ratio']:.2f}, goal <= 1.0: "
        f"{'met' if ok else 'NOT met'}), median of {args.runs}",
        file=sys.stderr,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
