"""The testbed's command line.

python -m testbed list                 the shipped topologies
python -m testbed show NAME            a topology's hosts, links and mechanisms
python -m testbed doctor               what this machine can do (root, tools, kernel)
python -m testbed reclaim              remove namespaces left by killed runs
python -m testbed smoke [-k NAME]      kernel MPTCP interop over every topology, as a table
python -m testbed vm fetch 6.1 6.12    download and unpack kernels for VMs (never installed)
python -m testbed vm boot 6.12         boot one, print its boot time and memory, power it off
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
    checks += _vm_checks()
    return checks


def _vm_checks() -> list[dict[str, Any]]:
    """One optional check per VM kernel (`kernel-6.1`, ...): ready, or why not."""
    from conformance.iut.vm import Kernel61Iut, Kernel612Iut

    checks = []
    for driver in (Kernel61Iut, Kernel612Iut):
        reason = driver.unavailable()
        kernel = None if reason else driver.kernel()
        detail = reason or f"ready: {kernel.release if kernel else ''}"
        checks.append({"check": f"VM {driver.name}", "ok": reason is None, "detail": detail,
                       "optional": True})  # fmt: skip
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
    vm = sub.add_parser("vm", help="kernels in virtual machines")
    vm_sub = vm.add_subparsers(dest="vm_command", required=True)
    fetch = vm_sub.add_parser("fetch", help="apt-get download and unpack kernels (6.1, 6.12)")
    fetch.add_argument("versions", nargs="+", help="short versions: 6.1, 6.12")
    fetch.add_argument("--force", action="store_true", help="fetch again even when cached")
    boot = vm_sub.add_parser("boot", help="boot a kernel, measure it, power it off")
    boot.add_argument("kernel", help="6.1, 6.12, or IMAGE[:MODULES]")
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
        failed = [c["check"] for c in checks if not c["ok"] and not c.get("optional")]
        print(
            f"doctor: {'all good' if not failed else 'missing: ' + ', '.join(failed)}",
            file=sys.stderr,
        )
        return 1 if failed else 0
    if args.command == "reclaim":
        from testbed.netns import reclaim_stale
        from testbed.vm.machine import reclaim as reclaim_vms

        reclaimed = reclaim_stale()
        vm_dirs = reclaim_vms()
        print(json.dumps(reclaimed + vm_dirs) if args.json else "\n".join(reclaimed))
        print(f"reclaimed {len(reclaimed)} namespaces and the files of {len(vm_dirs)} VMs",
              file=sys.stderr)  # fmt: skip
        return 0
    if args.command == "smoke":
        from testbed.smoke import run_smoke

        return run_smoke(args.only, args.bytes, as_json=args.json)
    if args.command == "vm":
        return _vm(args)
    raise AssertionError(args.command)


def _vm(args: argparse.Namespace) -> int:
    from testbed.vm import kernels

    if args.vm_command == "fetch":
        done = []
        for version in args.versions:
            kernel = kernels.fetch(version, force=args.force)
            done.append({"version": version, "package": kernel.package,
                         "release": kernel.release, "image": str(kernel.image)})  # fmt: skip
            if not args.json:
                print(f"{version}: {kernel.package} in {kernel.image.parent.parent}")
        if args.json:
            print(json.dumps(done))
        print(f"fetched {len(done)} kernels into {kernels.cache_dir()}", file=sys.stderr)
        return 0
    if args.vm_command == "boot":
        import time

        from testbed.vm.machine import VirtualMachine

        found = kernels.fetched(args.kernel) if args.kernel in kernels.PACKAGES else None
        if args.kernel in kernels.PACKAGES and found is None:
            raise kernels.KernelError(kernels.not_fetched_reason(args.kernel) or "")
        kernel = found or kernels.custom(args.kernel)
        with VirtualMachine(kernel) as vm:
            started = time.monotonic()
            vm.call("ping")
            figures = {"kernel": vm.ready.get("release"), "boot_s": round(vm.boot_seconds, 2),
                       "guest_uptime_s": vm.ready.get("uptime_s"),
                       "rss_mb": round(vm.rss_bytes() / 2**20, 1),
                       "ping_ms": round((time.monotonic() - started) * 1000, 1)}  # fmt: skip
        print(json.dumps(figures) if args.json else
              "\n".join(f"{k}: {v}" for k, v in figures.items()))  # fmt: skip
        print(f"booted {figures['kernel']} in {figures['boot_s']} s", file=sys.stderr)
        return 0
    raise AssertionError(args.vm_command)


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
