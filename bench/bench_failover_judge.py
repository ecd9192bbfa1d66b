"""How often the failover judgement is wrong: per-cut samples, and each rule's error rates.

    python -m bench.bench_failover_judge [--cells 10] [--pair kernel:stack-v1]
                                         [--scenario failover] [--json FILE]
    python -m bench.bench_failover_judge --from-json FILE

Runs the scenario's cell `--cells` times for kernel->kernel and for the pair, one after
the other, and keeps every cut's time to resume (the cells' `resume_ms_samples`). Then,
by resampling those cuts, it estimates for 5, 7 and 9 cuts per cell how often each rule
passes the pair against kernel->kernel, and how often it fails kernel->kernel against
itself (a false failure: the flaky cells of `bench_interop`):
- `spread`: the matrix's rule (`matrix.judge_against_kernel`), the pair's median at most
  kernel->kernel's median plus its spread (slowest cut less fastest);
- `rank`: fail when the pair is faster in at most the one-sided 1 % critical number of
  the k x k pairs of cuts (Mann-Whitney, normal approximation).
The kernel's failover is bimodal (about 60 ms, or 200+ ms when its data-level timer runs
at TCP_RTO_MIN), so medians of 5 cuts wander; this puts numbers on it.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from collections.abc import Callable
from typing import Any

REFERENCE = "kernel:kernel"
RESAMPLES = 20_000


def spread_rule(kernel: list[float], ours: list[float]) -> bool:
    return statistics.median(ours) <= statistics.median(kernel) + max(kernel) - min(kernel)


def rank_rule(kernel: list[float], ours: list[float]) -> bool:
    n = len(kernel)
    faster = sum((a < b) + 0.5 * (a == b) for a in ours for b in kernel)
    critical = n * n / 2 - 2.326 * math.sqrt(n * n * (2 * n + 1) / 12)
    return faster > critical


RULES: dict[str, Callable[[list[float], list[float]], bool]] = {
    "spread": spread_rule,
    "rank": rank_rule,
}


def collect(scenario: str, pair: str, cells: int) -> dict[str, list[list[float]]]:
    from conformance.interop.cell import run_cell
    from conformance.interop.scenarios import SCENARIOS

    samples: dict[str, list[list[float]]] = {REFERENCE: [], pair: []}
    for index in range(cells):
        for name in (REFERENCE, pair):
            client, server = name.split(":")
            result = run_cell(SCENARIOS[scenario], client, server)
            cuts = result.figures.get("resume_ms_samples")
            print(f"cell {index + 1}/{cells} {name}: {result.verdict} {cuts} {result.detail}",
                  flush=True)  # fmt: skip
            if result.verdict == "pass" and cuts:
                samples[name].append(cuts)
    return samples


def report(samples: dict[str, list[list[float]]], pair: str) -> None:
    kernel = [x for cell in samples[REFERENCE] for x in cell]
    ours = [x for cell in samples[pair] for x in cell]
    if not kernel or not ours:
        sys.exit("no cuts to judge: every cell failed")
    for name, cuts in ((REFERENCE, kernel), (pair, ours)):
        fast = [x for x in cuts if x < 150]
        fast_median = statistics.median(fast or [0])
        print(f"{name}: {len(cuts)} cuts, median {statistics.median(cuts):.1f} ms, "
              f"{len(fast)} under 150 ms (their median {fast_median:.1f})")  # fmt: skip
    rnd = random.Random(0)
    for k in (5, 7, 9):
        parts = []
        for rule_name, rule in RULES.items():
            passed = sum(rule(rnd.choices(kernel, k=k), rnd.choices(ours, k=k))
                         for _ in range(RESAMPLES))  # fmt: skip
            false = sum(not rule(rnd.choices(kernel, k=k), rnd.choices(kernel, k=k))
                        for _ in range(RESAMPLES))  # fmt: skip
            parts.append(f"{rule_name}: {pair} passes {passed / RESAMPLES:.1%}, "
                         f"kernel fails itself {false / RESAMPLES:.1%}")  # fmt: skip
        print(f"{k} cuts per cell: " + "; ".join(parts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_failover_judge")
    parser.add_argument("--cells", type=int, default=10, help="cells per pair (default 10)")
    parser.add_argument("--pair", default="kernel:stack-v1", help="CLIENT:SERVER to judge")
    parser.add_argument("--scenario", default="failover",
                        choices=("failover", "failover-blackhole"))  # fmt: skip
    parser.add_argument("--json", help="write the cuts here")
    parser.add_argument("--from-json", help="judge the cuts of an earlier --json")
    args = parser.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            data: dict[str, Any] = json.load(f)
        samples, pair = data["samples"], data["pair"]
    else:
        pair = args.pair
        samples = collect(args.scenario, pair, args.cells)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"scenario": args.scenario, "pair": pair, "samples": samples}, f)
    report(samples, pair)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
