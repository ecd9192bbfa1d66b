"""`python -m conformance run|list`: the conformance catalogue against the IUTs.

    python -m conformance run [--iut kernel,stack-v1,stack-v0] [-k EXPR] [-n WORKERS]
                              [--json FILE] [--junit FILE] [--pcap-dir DIR]
                              [--check-baseline] [--update-baseline] [--quiet]
    python -m conformance list [-k EXPR] [--json FILE]

`run` prints progress, the verdict matrix, the diff of stack-v1 against the kernel and
a summary line. Exit status: 0, or 1 when `--check-baseline` finds a changed verdict
(either way) or an error, or 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from conformance import baseline, report
from conformance.cases import catalogue
from conformance.iut import DRIVERS
from conformance.model import Result, Verdict
from conformance.runner import DEFAULT_ARTIFACTS, available, run, select_cases


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m conformance",
        description="MPTCP conformance (RFC 6824/8684) against the kernel and our stack.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run the catalogue")
    run_p.add_argument("--iut", default=",".join(DRIVERS), help="comma-separated IUT names")
    run_p.add_argument("-k", dest="expression", help="select cases (substring, and/or/not)")
    run_p.add_argument("-n", dest="workers", type=int, default=1, help="worker processes")
    run_p.add_argument("--json", type=Path, help="write every result as JSON")
    run_p.add_argument("--junit", type=Path, help="write JUnit XML")
    run_p.add_argument("--pcap-dir", type=Path, default=DEFAULT_ARTIFACTS,
                       help="where pcaps and ladders of non-conforming cases go")  # fmt: skip
    run_p.add_argument("--check-baseline", action="store_true",
                       help="fail when a verdict differs from the committed baseline")  # fmt: skip
    run_p.add_argument("--update-baseline", action="store_true",
                       help="record this run's verdicts as the baseline")  # fmt: skip
    run_p.add_argument("--baseline", type=Path, default=baseline.DEFAULT_PATH)
    run_p.add_argument("-q", "--quiet", action="store_true", help="no per-case progress")
    list_p = sub.add_parser("list", help="list the catalogue")
    list_p.add_argument("-k", dest="expression")
    list_p.add_argument("--json", type=Path, help="write the list as JSON")
    return parser


def _list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    cases = select_cases(catalogue(), args.expression)
    rows = [
        [c.id, c.reference, ",".join(f"v{v}" for v in sorted(c.versions)), c.role.value,
         c.expected]
        for c in cases
    ]  # fmt: skip
    print(tabulate(rows, headers=["case", "requirement", "versions", "IUT role", "expected"],
                   maxcolwidths=[None, None, None, None, 70]))  # fmt: skip
    if args.json:
        entries = [
            {"id": c.id, "area": c.area, "rfc": c.rfc, "section": c.section,
             "level": c.level.value, "versions": sorted(c.versions), "role": c.role.value,
             "expected": c.expected, "topology": c.topology,
             "citations": [c.citation(v) for v, _ in c.sections] or [c.citation()]}
            for c in cases
        ]  # fmt: skip
        args.json.write_text(json.dumps(entries, indent=1) + "\n")
    areas = sorted({c.area for c in cases})
    print(f"{len(cases)} cases in {len(areas)} areas ({', '.join(areas)})")
    return 0


def _run(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.iut.split(",") if n.strip()]
    try:
        iuts, skipped = available(names)
    except KeyError as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
    for name, reason in skipped.items():
        print(f"skipping {name}: {reason}")
    cases = select_cases(catalogue(), args.expression)
    if not cases:
        print(f"no case matches -k {args.expression!r}", file=sys.stderr)
        return 2
    started = time.monotonic()

    def progress(result: Result, done: int, total: int) -> None:
        if args.quiet:
            return
        mark = report.SHORT[result.verdict]
        print(f"[{done:>3}/{total}] {result.iut:<9} {result.case_id:<48} {mark:<9} "
              f"{result.duration_s:5.2f} s", flush=True)  # fmt: skip

    results = run(cases, iuts, workers=args.workers, artifacts=args.pcap_dir, progress=progress)
    wall = time.monotonic() - started
    print()
    print(report.matrix(cases, iuts, results))
    print()
    if "stack-v1" in iuts and "kernel" in iuts:
        print(report.diff(cases, results))
        print()
    for result in results:
        if result.verdict in (Verdict.DEVIATES, Verdict.ERROR):
            counters = f" counters {result.counters}" if result.counters else ""
            print(f"{result.iut} {result.case_id}: {result.verdict.value}: {result.detail}"
                  f"{counters}")  # fmt: skip
            for path in result.artifacts:
                print(f"    {path}")
    extra = {"iuts": {n: DRIVERS[n].environment() for n in iuts}, "skipped": skipped}
    if args.json:
        report.to_json(results, args.json, extra)
    if args.junit:
        report.to_junit(cases, results, args.junit)
    status = 0
    if args.check_baseline:
        changes = baseline.check(results, args.baseline)
        if changes:
            print(f"\n{len(changes)} verdict(s) differ from the baseline {args.baseline}:")
            for change in changes:
                print(f"  {change}")
            status = 1
        else:
            print(f"\nall verdicts match the baseline {args.baseline}")
    if args.update_baseline:
        baseline.save(results, args.baseline)
        print(f"baseline {args.baseline} updated")
    line = report.summary(results, wall)
    if skipped:
        line += f"; skipped {', '.join(skipped)}"
    print(line)
    return status


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "list":
        return _list(args)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
