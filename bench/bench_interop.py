"""The interop matrix, run again and again: its wall time, flaky cells, and the figures.

    python -m bench.bench_interop [--runs 5] [--workers 2] [--impl kernel,stack-v1,stack-v0]
                                  [--scenario NAMES] [--quick] [--json FILE]
                                  [--artifacts DIR]

Each run is the user's command, `python -m conformance interop -n WORKERS --json ...`, in
a fresh process. Reported: the wall time of each run (goal: the full matrix of kernel,
stack-v1 and stack-v0 within 5 minutes on 2 cores with -n 2), every cell whose verdict
changed between runs (goal: none in 5 runs; a failure that a documented defect of an
implementation explains, `known_defect` in the JSON, is counted apart), every cell that
failed, and per scenario
with a figure the median over the runs of each pair's figure and its ratio to
kernel->kernel of the same run (aggregation goal: >= 0.95 for kernel->stack and
stack->kernel). All data is random bytes that are not the testbed's seeded stream. The
failed cells of run N keep their evidence under DIR/run-N (`./interop-artifacts/bench`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WALL_GOAL_S = 300.0


def one_run(args: argparse.Namespace, run: int) -> tuple[float, list[dict[str, Any]], int]:
    """One matrix run; the pcaps, reports and states of its failed cells are kept under
    `--artifacts`/run-N (a flaky cell is no use without its evidence)."""
    with tempfile.TemporaryDirectory(prefix="bench-interop-") as scratch:
        out = Path(scratch) / "interop.json"
        argv = [
            sys.executable,
            "-m",
            "conformance",
            "interop",
            "-q",
            "-n",
            str(args.workers),
            "--json",
            str(out),
            "--artifacts",
            str(args.artifacts / f"run-{run + 1}"),
        ]
        for flag in ("impl", "scenario"):
            if getattr(args, flag):
                argv += [f"--{flag}", getattr(args, flag)]
        if args.quick:
            argv.append("--quick")
        started = time.monotonic()
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        wall = time.monotonic() - started
        cells = json.loads(out.read_text()) if out.exists() else []
    return wall, cells, done.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_interop")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--impl", default="")
    parser.add_argument("--scenario", default="")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--artifacts", type=Path, default=Path("interop-artifacts/bench"),
                        help="where each run's failed cells keep their evidence")  # fmt: skip
    args = parser.parse_args(argv)
    args.artifacts = args.artifacts.resolve()
    walls: list[float] = []
    verdicts: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    figures: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    ratios: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    failures: list[str] = []
    for run in range(args.runs):
        wall, cells, status = one_run(args, run)
        walls.append(wall)
        if not cells:
            print(f"run {run + 1}: no results (exit {status})", file=sys.stderr)
            return 1
        for cell in cells:
            key = (cell["scenario"], cell["client"], cell["server"])
            # A failure that a documented defect of an implementation explains is its
            # own verdict here: it says nothing of this project's flakiness
            known = cell.get("known_defect") or ""
            verdicts[key].append(f"known defect {known}" if known else cell["verdict"])
            if cell["verdict"] == "fail":
                failures.append(
                    f"run {run + 1} {' '.join(key)}: {cell['detail']}"
                    + (f" [known defect: {known}]" if known else "")
                )
            for name in ("goodput_MBps", "resume_ms"):
                if name in cell["figures"] and cell["scenario"] in (
                    "aggregation",
                    "failover",
                    "failover-blackhole",
                ):
                    figures[key].append(float(cell["figures"][name]))
            if "versus_kernel" in cell["figures"]:
                ratios[key].append(float(cell["figures"]["versus_kernel"]))
        print(
            f"run {run + 1}/{args.runs}: {wall:.1f} s, "
            f"{sum(c['verdict'] == 'fail' for c in cells)} failed cells",
            flush=True,
        )
    changed = {" ".join(k): v for k, v in verdicts.items() if len(set(v)) > 1}
    flaky = {
        k: v
        for k, v in changed.items()
        if len({x for x in v if not x.startswith("known defect")}) > 1
    }
    print(
        f"\nwall per run: {', '.join(f'{w:.1f}' for w in walls)} s "
        f"(median {statistics.median(walls):.1f} s; goal <= {WALL_GOAL_S:.0f} s)"
    )
    print(
        f"cells whose verdict changed between runs: {len(flaky)} "
        f"(besides {len(changed) - len(flaky)} whose only other verdict was a known defect "
        "of an implementation)"
    )
    for name, seen in changed.items():
        if name not in flaky:
            print(f"  {name}: {', '.join(seen)} (known defect)")
    for name, seen in flaky.items():
        print(f"  {name}: {', '.join(seen)}")
    for key in sorted(figures):
        median = statistics.median(figures[key])
        ratio = f", x kernel median {statistics.median(ratios[key]):.3f}" if ratios[key] else ""
        print(
            f"  {' '.join(key)}: median {median:g} (range {min(figures[key]):g}-"
            f"{max(figures[key]):g}){ratio}"
        )
    for failure in failures:
        print(f"  FAILED {failure}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "walls_s": walls,
                    "flaky": flaky,
                    "failures": failures,
                    "figures": {" ".join(k): v for k, v in figures.items()},
                    "ratios": {" ".join(k): v for k, v in ratios.items()},
                },
                indent=1,
            )
            + "\n"
        )
    ok = not flaky and not failures and max(walls) <= WALL_GOAL_S
    print(
        f"bench_interop: {args.runs} runs, median wall {statistics.median(walls):.1f} s, "
        f"{len(flaky)} flaky cells, {len(failures)} failed cells: "
        f"{'goals met' if ok else 'goals MISSED'}",
        file=sys.stderr,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
