"""The testbed's command line.

python -m testbed list                 the shipped topologies
python -m testbed show NAME            a topology's hosts, links and mechanisms
python -m testbed doctor               what this machine can do (root, tools, kernel)
python -m testbed reclaim              remove namespaces left by killed runs
python -m testbed smoke [-k NAME]      kernel MPTCP interop over every topology, as a table
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Any

import topologies
from testbed.errors import TestbedError


def _doctor() -> list[dict[str, Any]]:
    from testbed import shaping

    checks: list[dict[str, Any]] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"check": name, "ok": ok, "detail": detail})

    root = os.geteuid() == 0
    check("root", root, "namespaces need CAP_NET_ADMIN and CAP_SYS_ADMIN")
    for tool, package in (("ip", "iproute2"), ("nft", "nftables"), ("tcpdump", "tcpdump")):
        path = shutil.which(tool)
        check(tool, path is not None, path or f"missing: apt-get install {package}")
    try:
        with open("/proc/sys/net/mptcp/enabled") as f:
            check("kernel MPTCP", f.read().strip() == "1", "net.mptcp.enabled")
    except FileNotFoundError:
        check("kernel MPTCP", False, "no /proc/sys/net/mptcp: kernel built without MPTCP")
    check("kernel", True, os.uname().release)
    if root:
        netem = shaping.netem_available()
        check("delay", True, shaping.delay_mechanism() if not netem else "netem")
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed", description=__doc__)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the shipped topologies")
    show = sub.add_parser("show", help="build a topology and describe it")
    show.add_argument("name", choices=sorted(topologies.CATALOGUE))
    sub.add_parser("doctor", help="what this machine can do")
    sub.add_parser("reclaim", help="remove namespaces left by killed runs")
    smoke = sub.add_parser("smoke", help="kernel MPTCP transfer over every topology")
    smoke.add_argument("-k", dest="only", action="append", help="only this topology (repeatable)")
    smoke.add_argument("--bytes", type=int, default=4 << 20, help="bytes per transfer")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except TestbedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; everything built was removed", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    if args.command == "list":
        rows = [
            {"topology": name, "description": factory().description}
            for name, factory in topologies.CATALOGUE.items()
        ]
        print(json.dumps(rows) if args.json else tabulate(rows, headers="keys"))
        print(f"{len(rows)} topologies", file=sys.stderr)
        return 0
    if args.command == "show":
        from testbed import build

        with build(topologies.CATALOGUE[args.name]()) as topo:
            if args.json:
                print(json.dumps(_describe(topo)))
            else:
                print(topo.description)
                for host in topo.hosts.values():
                    print(
                        f"  {host.name} ({host.spec.role.value}, namespace {host.netns}): "
                        f"{', '.join(host.addresses()) or 'no kernel address'}"
                    )
        print(f"built and removed {args.name}", file=sys.stderr)
        return 0
    if args.command == "doctor":
        checks = _doctor()
        print(json.dumps(checks) if args.json else tabulate(checks, headers="keys"))
        failed = [c["check"] for c in checks if not c["ok"]]
        print(
            f"doctor: {'all good' if not failed else 'missing: ' + ', '.join(failed)}",
            file=sys.stderr,
        )
        return 1 if failed else 0
    if args.command == "reclaim":
        from testbed.netns import reclaim_stale

        reclaimed = reclaim_stale()
        print(json.dumps(reclaimed) if args.json else "\n".join(reclaimed))
        print(f"reclaimed {len(reclaimed)} namespaces", file=sys.stderr)
        return 0
    if args.command == "smoke":
        from testbed.smoke import run_smoke

        return run_smoke(args.only, args.bytes, as_json=args.json)
    raise AssertionError(args.command)


def _describe(topo: Any) -> dict[str, Any]:
    return {
        "name": topo.spec.name,
        "description": topo.description,
        "hosts": {
            h.name: {"netns": h.netns, "role": h.spec.role.value, "addresses": h.addresses()}
            for h in topo.hosts.values()
        },
    }


if __name__ == "__main__":
    sys.exit(main())
