"""`python -m conformance run|list`: the conformance catalogue against the IUTs.

    python -m conformance run [--iut kernel,stack-v1,stack-v0] [-k EXPR] [-n WORKERS]
                              [--json FILE] [--junit FILE] [--html FILE] [--pcap-dir DIR]
                              [--keep-all-artifacts]
                              [--check-baseline] [--update-baseline] [--quiet]
    python -m conformance list [-k EXPR] [--json [FILE]]
    python -m conformance selftest [--fault NAME ...] [-n WORKERS] [--all-cases]
                                   [--no-confirm] [--json FILE] [--pcap-dir DIR] [--list]
    python -m conformance fuzz [--iut kernel,stack-v1] [--seed N] [--budget 500|60s]
                               [--known FILE] [--json FILE] [--seeds NAMES] [--quiet]
    python -m conformance interop [--impl kernel,stack-v1,stack-v0] [--scenario NAMES]
                                  [-n WORKERS] [--quick] [--json FILE] [--junit FILE]
                                  [--html FILE] [--artifacts DIR] [--quiet]

`run` prints progress, the verdict matrix, the diff of stack-v1 against the kernel and
a summary line. Exit status: 0, or 1 when `--check-baseline` finds a changed verdict
(either way) or an error, or 2 on a usage error; every command exits 130, with one line
and after removing what it made, on Ctrl-C or SIGTERM. `interop` prints one grid per scenario
(client in rows, server in columns) and exits 1 when a cell fails that no documented
defect of an implementation explains (`KNOWN_DEFECTS` in conformance/interop/cell.py:
such a cell is still shown failed, with the defect named). `fuzz` exits 1 on
a crash, a hang, growth or a new divergence class (docs/conformance.md, "Fuzzer").
`--html` (run, interop) writes one self-contained page (`conformance/html_report.py`).
Artefacts go under the current directory (`./conformance-artifacts`,
`./interop-artifacts`) unless `--pcap-dir`/`--artifacts` say where. `list --json`
prints the catalogue as JSON on stdout (`--json FILE` writes it there instead).
`selftest` plants each fault of `stack/faults.py` in stack-v1 in turn, runs the v1 cases
and prints which cases catch each and the score; it exits 1 when a fault goes uncaught.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from conformance import baseline, html_report, report
from conformance.cases import catalogue
from conformance.iut import DRIVERS
from conformance.model import Case, Result, Verdict
from conformance.runner import DEFAULT_ARTIFACTS, available, run, select_cases
from testbed.netns import unwind_on_sigterm


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
    run_p.add_argument("--html", type=Path, help="write a self-contained HTML report")
    run_p.add_argument("--pcap-dir", type=Path, default=DEFAULT_ARTIFACTS,
                       help="where pcaps and ladders of non-conforming cases go "
                       f"(default: ./{DEFAULT_ARTIFACTS})")  # fmt: skip
    run_p.add_argument("--keep-all-artifacts", action="store_true",
                       help="write the pcap and ladder of every case, conforming ones "
                       "too (to compare IUTs' traffic side by side)")  # fmt: skip
    run_p.add_argument("--check-baseline", action="store_true",
                       help="fail when a verdict differs from the committed baseline")  # fmt: skip
    run_p.add_argument("--update-baseline", action="store_true",
                       help="record this run's verdicts as the baseline")  # fmt: skip
    run_p.add_argument("--baseline", type=Path, default=baseline.DEFAULT_PATH)
    run_p.add_argument("-q", "--quiet", action="store_true", help="no per-case progress")
    run_p.add_argument("--diff", action="append", default=[], metavar="LEFT,RIGHT",
                       help="also print where two IUTs differ (repeatable); stack-v1,kernel, "
                       "kernel-6.1,kernel-6.12 and kernel-6.12,kernel are printed when "
                       "both ran")  # fmt: skip
    inter = sub.add_parser("interop", help="the interop matrix: every implementation as "
                           "client and as server")  # fmt: skip
    inter.add_argument("--impl", default=",".join(DRIVERS),
                       help="comma-separated implementations (default: all)")  # fmt: skip
    inter.add_argument("--scenario", default="",
                       help="comma-separated scenarios (default: all)")  # fmt: skip
    inter.add_argument("-n", dest="workers", type=int, default=1, help="worker processes")
    inter.add_argument("--quick", action="store_true",
                       help="smaller transfers, only the scenarios marked quick")  # fmt: skip
    inter.add_argument("--json", type=Path, help="write one object per cell as JSON")
    inter.add_argument("--junit", type=Path, help="write JUnit XML")
    inter.add_argument("--html", type=Path, help="write a self-contained HTML report")
    inter.add_argument("--artifacts", type=Path, default=Path("interop-artifacts"),
                       help="where failed cells keep their pcaps and reports "
                       "(default: ./interop-artifacts)")  # fmt: skip
    inter.add_argument("-q", "--quiet", action="store_true", help="no per-cell progress")
    fuzz_p = sub.add_parser("fuzz", help="differential fuzzer: the same mutated segment "
                            "sequences to two IUTs, where they differ")  # fmt: skip
    fuzz_p.add_argument("--iut", default="kernel,stack-v1", help="the two IUTs to compare")
    fuzz_p.add_argument("--seed", type=int, default=0, help="the same seed, the same sequences")
    fuzz_p.add_argument("--budget", default="500",
                        help="sequences (500) or seconds (60s) to run")  # fmt: skip
    fuzz_p.add_argument("--known", type=Path, default=None,
                        help="known divergences (default: conformance/fuzz/"
                        "known_divergences.json)")  # fmt: skip
    fuzz_p.add_argument("--json", type=Path, help="write the findings and figures as JSON")
    fuzz_p.add_argument("--seeds", default="", help="comma-separated seed exchanges (default all)")
    fuzz_p.add_argument("--batch", type=int, default=400, help="sequences between health checks")
    fuzz_p.add_argument("--concurrency", type=int, default=96, help="runs in flight per IUT")
    fuzz_p.add_argument("--no-minimise", action="store_true", help="report reproducers as found")
    fuzz_p.add_argument("-q", "--quiet", action="store_true",
                        help="no per-batch progress; only the new classes")  # fmt: skip
    self_p = sub.add_parser("selftest", help="planted faults in stack-v1: which cases "
                            "catch each, and the score")  # fmt: skip
    self_p.add_argument("--fault", action="append", default=[], metavar="NAME",
                        help="a fault to plant (repeatable; default: all)")  # fmt: skip
    self_p.add_argument("-n", dest="workers", type=int, default=1, help="worker processes")
    self_p.add_argument("--all-cases", action="store_true",
                        help="every v1 case against every fault (default: the fault's "
                        "area, then the rest only if nothing there caught it)")  # fmt: skip
    self_p.add_argument("--no-confirm", action="store_true",
                        help="count a catch after one failing run (default: two)")  # fmt: skip
    self_p.add_argument("--json", type=Path, help="write the per-fault results as JSON")
    self_p.add_argument("--pcap-dir", type=Path, default=None,
                        help="keep pcaps and ladders of the failing runs here")  # fmt: skip
    self_p.add_argument("--list", action="store_true", help="list the faults and exit")
    self_p.add_argument("-q", "--quiet", action="store_true", help="no per-run progress")
    list_p = sub.add_parser("list", help="list the catalogue")
    list_p.add_argument("-k", dest="expression")
    list_p.add_argument("--json", type=Path, nargs="?", const=STDOUT,
                        help="print the catalogue as JSON (or write it to FILE)")  # fmt: skip
    return parser


STDOUT = Path("-")  # `list --json` without a file: the JSON goes to standard output


def catalogue_json(cases: list[Case]) -> list[dict[str, object]]:
    """What `list --json` prints: one object per case."""
    return [
        {"id": c.id, "area": c.area, "title": c.title, "rfc": c.rfc, "section": c.section,
         "citations": [c.citation(v) for v, _ in c.sections] or [c.citation()],
         "level": c.level.value, "versions": sorted(c.versions), "role": c.role.value,
         "expected": c.expected, "topology": c.topology, "ip_version": c.family}
        for c in cases
    ]  # fmt: skip


def _list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    cases = select_cases(catalogue(), args.expression)
    areas = sorted({c.area for c in cases})
    line = f"{len(cases)} cases in {len(areas)} areas ({', '.join(areas)})"
    if args.json == STDOUT:  # JSON alone on stdout, for pipes; the summary on stderr
        print(json.dumps(catalogue_json(cases), indent=1))
        print(line, file=sys.stderr)
        return 0
    rows = [
        [c.id, c.reference, ",".join(f"v{v}" for v in sorted(c.versions)), c.role.value,
         c.expected]
        for c in cases
    ]  # fmt: skip
    print(tabulate(rows, headers=["case", "requirement", "versions", "IUT role", "expected"],
                   maxcolwidths=[None, None, None, None, 70]))  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(catalogue_json(cases), indent=1) + "\n")
    print(line)
    return 0


def _page(title: str, summary: str, environments: dict[str, dict[str, str]],
          skipped: dict[str, str]) -> html_report.Page:  # fmt: skip
    return html_report.Page(
        title=title, summary=summary,
        generated=datetime.now().astimezone().isoformat(" ", "seconds"),
        command="python -m conformance " + shlex.join(sys.argv[1:]),
        environments=environments, harness=report.environment(), skipped=skipped,
    )  # fmt: skip


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

    results = run(cases, iuts, workers=args.workers, artifacts=args.pcap_dir,
                  keep_all=args.keep_all_artifacts, progress=progress)  # fmt: skip
    wall = time.monotonic() - started
    print()
    print(report.matrix(cases, iuts, results))
    print()
    pairs = [("stack-v1", "kernel"), ("kernel-6.1", "kernel-6.12"), ("kernel-6.12", "kernel")]
    pairs += [tuple(p.split(",", 1)) for p in args.diff if "," in p]
    for left, right in dict.fromkeys(pairs):
        if left in iuts and right in iuts:
            print(report.diff(cases, results, left, right))
            print()
    for result in results:
        if result.verdict in (Verdict.DEVIATES, Verdict.ERROR):
            counters = f" counters {result.counters}" if result.counters else ""
            print(f"{result.iut} {result.case_id}: {result.verdict.value}: {result.detail}"
                  f"{counters}")  # fmt: skip
            for path in result.artifacts:
                print(f"    {path}")
    environments = {n: DRIVERS[n].environment() for n in iuts}
    extra = {"iuts": environments, "skipped": skipped}
    if args.json:
        report.to_json(results, args.json, extra)
    if args.junit:
        report.to_junit(cases, results, args.junit)
    if args.html:
        page = _page("MPTCP conformance", report.summary(results, wall), environments, skipped)
        html_report.write(args.html, html_report.run_page(cases, iuts, results, page, args.html))
        print(f"HTML report: {args.html}")
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


def _names(text: str, known: list[str], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(map(repr, unknown))}; "
                         f"valid: {', '.join(known)}")  # fmt: skip
    return names or list(known)


def _interop(args: argparse.Namespace) -> int:
    from conformance.interop import matrix
    from conformance.interop.cell import KNOWN_DEFECTS
    from conformance.interop.scenarios import SCENARIOS

    try:
        impls = _names(args.impl, list(DRIVERS), "implementation")
        scenarios = _names(args.scenario, list(SCENARIOS), "scenario")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("error: -n must be at least 1", file=sys.stderr)
        return 2
    unavailable = {n: r for n in impls if (r := DRIVERS[n].unavailable())}
    for name, reason in unavailable.items():
        print(f"{name} is unavailable: {reason} (its cells are n/a)")
    cells = matrix.plan(impls, unavailable, scenarios, args.quick)
    started = time.monotonic()

    def progress(result: matrix.CellResult, done: int, total: int) -> None:
        if args.quiet or result.verdict == "n/a":
            return
        print(f"[{done:>3}/{total}] {result.scenario:<20} {result.client:>9} -> "
              f"{result.server:<9} {matrix.cell_text(result):<28} {result.duration_s:5.1f} s",
              flush=True)  # fmt: skip

    results = matrix.run(cells, workers=args.workers, quick=args.quick,
                         artifacts=args.artifacts, progress=progress)  # fmt: skip
    wall = time.monotonic() - started
    print()
    print(matrix.grids(results, impls))
    for result in results:
        if result.verdict == "fail" or (result.verdict == "pass" and result.detail):
            print(f"{result.scenario} {result.client} -> {result.server}: {result.verdict}: "
                  f"{result.detail}")  # fmt: skip
            if result.known_defect:
                print(f"    known defect, not counted as a failure of this run: "
                      f"{KNOWN_DEFECTS[result.known_defect]}")  # fmt: skip
            for path in result.artifacts:
                print(f"    {path}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(matrix.to_json(results), indent=1) + "\n")
    if args.junit:
        matrix.to_junit(results, args.junit)
    if args.html:
        environments = {n: DRIVERS[n].environment() for n in impls if n not in unavailable}
        page = _page("MPTCP interop matrix", matrix.summary(results, wall), environments,
                     unavailable)  # fmt: skip
        text = html_report.interop_page(
            results, impls, page, args.html, cell_text=matrix.cell_text,
            descriptions={n: SCENARIOS[n].pass_when for n in scenarios},
        )  # fmt: skip
        html_report.write(args.html, text)
        print(f"HTML report: {args.html}")
    print(matrix.summary(results, wall))
    return 1 if matrix.new_failures(results) else 0


def parse_budget(text: str) -> tuple[int | None, float | None]:
    """`500` (sequences) or `60s` (seconds): (cases, seconds)."""
    try:
        value = float(text[:-1]) if text.endswith("s") else int(text)
    except ValueError:
        raise ValueError(f"--budget {text!r}: a number of sequences (500) or of "
                         "seconds (60s)") from None  # fmt: skip
    if value <= 0:
        raise ValueError(f"--budget {text!r} must be positive")
    return (None, float(value)) if text.endswith("s") else (int(value), None)


def _fuzz(args: argparse.Namespace) -> int:
    from conformance.fuzz import known
    from conformance.fuzz.run import Config, fuzz
    from conformance.fuzz.seeds import SEEDS

    try:
        cases, seconds = parse_budget(args.budget)
        iuts = _names(args.iut, list(DRIVERS), "IUT")
        seeds = _names(args.seeds, list(SEEDS), "seed exchange")
        if len(iuts) != 2 or iuts[0] == iuts[1]:
            raise ValueError(f"--iut {args.iut!r}: name two different IUTs, e.g. kernel,stack-v1")
        if min(args.batch, args.concurrency) < 1:
            raise ValueError("--batch and --concurrency must be at least 1")
        known.load(args.known or known.DEFAULT_PATH)
    except (ValueError, known.KnownError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name in iuts:
        reason = DRIVERS[name].unavailable()
        if reason:
            print(f"error: {name} is unavailable: {reason}", file=sys.stderr)
            return 2
    config = Config(
        seed=args.seed, cases=cases, seconds=seconds, iuts=(iuts[0], iuts[1]),
        known=args.known or known.DEFAULT_PATH, seeds=tuple(seeds), batch=args.batch,
        concurrency=args.concurrency, minimise=not args.no_minimise,
        progress=None if args.quiet else lambda line: print(line, flush=True),
    )  # fmt: skip
    report = fuzz(config)
    for finding in report.findings:
        if finding.kind != "divergence":
            print(f"{finding.kind} ({finding.iut}): {finding.detail}")
    shown = [entry for entry in report.classes.values()  # --quiet: only the new classes
             if not args.quiet or not (entry.known or entry.flaky)]  # fmt: skip
    for entry in shown:
        state = "known" if entry.known else "flaky" if entry.flaky else "NEW"
        print(f"{state:<5} x{entry.count:<4} {entry.class_id}")
    if shown:
        print()
    for finding in report.findings:
        if finding.kind == "divergence":
            print(finding.reproducer)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_json(), indent=1) + "\n")
    print(report.summary())
    return report.exit_status


def _selftest(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from conformance import selftest
    from stack.faults import FAULTS

    if args.list:
        rows = [[f.name, f"§{f.section}", f.area, f.description] for f in FAULTS.values()]
        print(tabulate(rows, headers=["fault", "RFC 8684", "area", "what the stack does"],
                       maxcolwidths=[None, None, None, 70]))  # fmt: skip
        print(f"{len(FAULTS)} planted faults")
        return 0
    unknown = [name for name in args.fault if name not in FAULTS]
    if unknown or args.workers < 1:
        problem = (f"unknown fault(s) {', '.join(unknown)}; see --list" if unknown
                   else "-n must be at least 1")  # fmt: skip
        print(f"error: {problem}", file=sys.stderr)
        return 2
    reason = DRIVERS["stack-v1"].unavailable()
    if reason:
        print(f"error: stack-v1 is unavailable: {reason}", file=sys.stderr)
        return 2

    def progress(fault: str, result: Result, done: int, total: int) -> None:
        if args.quiet:
            return
        mark = report.SHORT[result.verdict]
        print(f"[{done:>4}/{total}] {fault or '(no fault)':<32} {result.case_id:<52} "
              f"{mark:<9} {result.duration_s:5.2f} s", flush=True)  # fmt: skip

    outcome = selftest.selftest(
        args.fault or None, workers=args.workers, all_cases=args.all_cases,
        confirm=not args.no_confirm, artifacts=args.pcap_dir, progress=progress,
    )  # fmt: skip
    print()
    print(selftest.table(outcome))
    broken = [c for c, r in outcome.reference.items() if r.verdict is not Verdict.CONFORMS]
    if broken:
        print(f"\n{len(broken)} case(s) do not conform on the unfaulted stack-v1 (they catch "
              f"nothing): {', '.join(broken)}")  # fmt: skip
    for score in outcome.scores:
        if score.unconfirmed:
            print(f"{score.fault.name}: failed once, conformed each time it ran again: "
                  f"{', '.join(score.unconfirmed)}")  # fmt: skip
    if args.json:
        selftest.write_json(outcome, args.json)
    print(outcome.summary())
    return 0 if outcome.caught == len(outcome.scores) else 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        unwind_on_sigterm()  # a killed run still removes its namespaces
    commands = {"selftest": _selftest, "list": _list, "fuzz": _fuzz, "interop": _interop}
    try:
        return commands.get(args.command, _run)(args)
    except KeyboardInterrupt as interrupt:
        # Ctrl-C or SIGTERM: everything was unwound on the way here; say so in one line
        print(f"conformance {args.command}: interrupted ({interrupt or 'Ctrl-C'}); "
              "its namespaces and processes were removed", file=sys.stderr)  # fmt: skip
        # A netlink call cut short leaves a pyroute2 coroutine that the interpreter's exit
        # collects on a closed event loop ("Exception ignored in ..."): expected now
        sys.unraisablehook = lambda unraisable: None
        return 130


if __name__ == "__main__":
    sys.exit(main())
