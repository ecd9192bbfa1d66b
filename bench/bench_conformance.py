"""Benchmark of the conformance run: wall time with -n 2, median case time, flakiness.

    python -m bench.bench_conformance [--runs N] [--workers 2] [--iut ...] [--json FILE]

Runs the whole catalogue N times against every available IUT; reports the wall time of
each run, the median time per case that ran (not-applicable ones take no time and are
left out), overall and per IUT, and the verdict changes across runs (flakiness: a
(case, IUT) whose verdict is not the same in every run). Goal: full run ≤ 120 s,
median case ≤ 0.5 s, no verdict change.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

from tabulate import tabulate

from conformance.cases import catalogue
from conformance.iut import DRIVERS
from conformance.runner import available, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_conformance")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--iut", default=",".join(DRIVERS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    iuts, skipped = available(n for n in args.iut.split(",") if n)
    for name, reason in skipped.items():
        print(f"skipping {name}: {reason}")
    cases = catalogue()
    walls: list[float] = []
    durations: list[float] = []  # cases that ran: a not-applicable one takes no time
    per_iut: dict[str, list[float]] = defaultdict(list)
    verdicts: dict[tuple[str, str], set[str]] = defaultdict(set)
    # each (case, IUT)'s verdicts with the run and the detail: a flip is no use to the
    # next engineer without what the case saw
    seen: dict[tuple[str, str], list[str]] = defaultdict(list)
    for index in range(args.runs):
        started = time.monotonic()
        results = run(cases, iuts, workers=args.workers, artifacts=None)
        walls.append(time.monotonic() - started)
        for result in results:
            verdicts[(result.case_id, result.iut)].add(result.verdict.value)
            seen[(result.case_id, result.iut)].append(
                f"run {index + 1} {result.verdict.value}: {result.detail}"
            )
            if result.verdict.value != "not-applicable":
                durations.append(result.duration_s)
                per_iut[result.iut].append(result.duration_s)
        print(f"run {index + 1}/{args.runs}: {len(results)} results in {walls[-1]:.1f} s",
              flush=True)  # fmt: skip
    changed = sorted(key for key, v in verdicts.items() if len(v) > 1)
    flaky = [f"{iut} {case}: {sorted(verdicts[(case, iut)])}" for case, iut in changed]
    # the runs whose verdict was the rarer one, with their detail
    flips = {
        f"{iut} {case}": [line for line in seen[(case, iut)] if _rarer(line, seen[(case, iut)])]
        for case, iut in changed
    }
    figures = {
        "runs": args.runs,
        "workers": args.workers,
        "iuts": iuts,
        "cases": len(cases),
        "wall_s_max": round(max(walls), 2),
        "wall_s_median": round(statistics.median(walls), 2),
        "case_s_median": round(statistics.median(durations), 3),
        "case_s_max": round(max(durations), 3),
        **{f"case_s_median[{iut}]": round(statistics.median(t), 3) for iut, t in per_iut.items()},
        "verdict_changes": len(flaky),
        "flaky": flaky,
        "flips": flips,
    }
    rows = [[k, v] for k, v in figures.items() if k not in ("flaky", "flips")]
    print(tabulate(rows, headers=["figure", "value"]))
    for line in flaky:
        print(f"  flaky: {line}")
    for name, lines in flips.items():
        for line in lines:
            print(f"    {name}: {line}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    ok = figures["wall_s_max"] <= 120 and figures["case_s_median"] <= 0.5 and not flaky
    print(
        f"{'OK' if ok else 'FAIL'}: {len(cases)} cases x {len(iuts)} IUT(s), {args.runs} runs: "
        f"wall {figures['wall_s_max']} s max, median case {figures['case_s_median']} s, "
        f"{len(flaky)} verdict change(s)"
    )
    return 0 if ok else 1


def _rarer(line: str, lines: list[str]) -> bool:
    """Whether `line`'s verdict is not the most common of `lines` ("run N VERDICT: ...");
    on a tie, every line is."""
    verdict = line.split(" ", 3)[2].rstrip(":")
    counts: dict[str, int] = defaultdict(int)
    for other in lines:
        counts[other.split(" ", 3)[2].rstrip(":")] += 1
    top = max(counts.values())
    return counts[verdict] < top or list(counts.values()).count(top) > 1  # a tie: all


if __name__ == "__main__":
    sys.exit(main())
