"""How often the failover judgement is wrong: per-cut samples, and each rule's error rates.

    python -m bench.bench_failover_judge [--cells 10] [--pair kernel:stack-v1]
                                         [--scenario failover] [--json FILE]
    python -m bench.bench_failover_judge --from-json FILE

Runs the scenario's cell `--cells` times for kernel->kernel and for the pair, one after
the other, and keeps every cut's time to resume (the cells' `resume_ms_samples`). Then,
by resampling those cuts, it estimates for 5, 7 and 9 cuts per cell how often each rule
passes the pair against kernel->kernel, and how often it fails kernel->kernel against
itself (a false failure: the flaky cells of `bench_interop`):
- `rank`: the matrix's rule (`matrix.judge_against_kernel`): fail when a one-sided exact
  rank test (`conformance.interop.ranktest`) finds the pair slower, p <= 0.005;
- `spread`: the rule before it, the pair's median at most kernel->kernel's median plus
  its spread (slowest cut less fastest).
The kernel's failover is bimodal (about 60 ms, or 200+ ms when its data-level timer runs
at TCP_RTO_MIN), so medians of 5 cuts wander; this puts numbers on it. It also prints
each rule's power against the pair made slower (every cut x1.5, x2, +100 ms, +1 s), and
the rank test over all the cuts at once: the comparison that resolves differences of
tens of milliseconds, which 5 cuts a cell cannot.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from collections.abc import Callable
from typing import Any

from conformance.interop import ranktest

REFERENCE = "kernel:kernel"
RESAMPLES = 5_000


def spread_rule(kernel: list[float], ours: list[float]) -> bool:
    return statistics.median(ours) <= statistics.median(kernel) + max(kernel) - min(kernel)


def rank_rule(kernel: list[float], ours: list[float]) -> bool:
    return not ranktest.slower(ours, kernel)


RULES: dict[str, Callable[[list[float], list[float]], bool]] = {
    "rank": rank_rule,
    "spread": spread_rule,
}
SLOWER: dict[str, Callable[[float], float]] = {
    "x1.5": lambda x: x * 1.5,
    "x2": lambda x: x * 2,
    "+100 ms": lambda x: x + 100,
    "+1 s": lambda x: x + 1000,
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
    p = ranktest.p_slower(ours, kernel)
    print(f"all cuts at once: one-sided rank test p = {p:.4f} that {pair} is slower")
    rnd = random.Random(0)

    def pass_rate(rule: Callable[[list[float], list[float]], bool], pool: list[float],
                  k: int) -> float:  # fmt: skip
        return sum(rule(rnd.choices(kernel, k=k), rnd.choices(pool, k=k))
                   for _ in range(RESAMPLES)) / RESAMPLES  # fmt: skip

    for k in (5, 7, 9):
        for rule_name, rule in RULES.items():
            slower = ", ".join(f"{name} {pass_rate(rule, [f(x) for x in ours], k):.0%}"
                               for name, f in SLOWER.items())  # fmt: skip
            print(f"{k} cuts per cell, {rule_name}: {pair} passes {pass_rate(rule, ours, k):.1%}, "
                  f"kernel fails itself {1 - pass_rate(rule, kernel, k):.1%}; "
                  f"{pair} made slower passes: {slower}")  # fmt: skip


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
