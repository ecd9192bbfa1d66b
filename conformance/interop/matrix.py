"""The interop matrix: which cells run, running them, and the grids and reports.

A pair is (client driver, server driver). Implementations of the same versions run
every scenario; a pair with no version in common (stack-v0 with kernel or stack-v1)
runs `transfer` only, which must end in a fallback both ends agree on (RFC 8684 §3.1).
Cells whose figure is a throughput or a timing run one at a time after the others, so
that no other cell shares the two cores with them; their figure is then compared with
the kernel->kernel cell of the same run.
"""

from __future__ import annotations

import concurrent.futures
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from conformance.interop import ranktest
from conformance.interop.cell import CellResult, run_cell
from conformance.interop.scenarios import AGGREGATION_RATIO, SCENARIOS, Scenario
from conformance.iut import DRIVERS
from testbed.netns import worker_job, worker_pool

REFERENCE = "kernel"


@dataclass(frozen=True)
class Planned:
    scenario: str
    client: str
    server: str
    why_not: str = ""  # set: the cell is n/a for this reason and does not run


def plan(
    impls: Sequence[str], unavailable: dict[str, str], scenarios: Sequence[str], quick: bool
) -> list[Planned]:
    """Every cell of the matrix, in grid order."""
    cells = []
    for name in scenarios:
        scenario = SCENARIOS[name]
        for client in impls:
            for server in impls:
                cells.append(
                    Planned(
                        name, client, server, _why_not(scenario, client, server, unavailable, quick)
                    )
                )
    return cells


def _why_not(
    scenario: Scenario, client: str, server: str, unavailable: dict[str, str], quick: bool
) -> str:
    for name in (client, server):
        if name in unavailable:
            return f"{name} is unavailable here: {unavailable[name]}"
    if quick and not scenario.quick:
        return "not part of --quick"
    common = DRIVERS[client].versions & DRIVERS[server].versions
    if not common and not scenario.cross_version:
        speaks = {
            n: "/".join(f"v{v}" for v in sorted(DRIVERS[n].versions)) for n in (client, server)
        }
        return (
            f"{client} speaks {speaks[client]} and {server} {speaks[server]}: a "
            "cross-version pair runs `transfer` only"
        )
    return ""


def _run_json(
    scenario: str, client: str, server: str, quick: bool, artifacts: str | None
) -> dict[str, Any]:
    """Worker-process entry point (picklable arguments and result)."""
    with worker_job():  # SIGTERM (the run died) unwinds it, then ends the worker
        result = run_cell(
            SCENARIOS[scenario],
            client,
            server,
            quick=quick,
            artifacts=Path(artifacts) if artifacts else None,
        )
    return result.to_json()


def run(
    cells: Sequence[Planned],
    *,
    workers: int = 1,
    quick: bool = False,
    artifacts: Path | None = None,
    progress: Callable[[CellResult, int, int], None] | None = None,
) -> list[CellResult]:
    """Run the planned cells: the ordinary ones on `workers` processes, then the
    exclusive ones one by one; then judge the figures against kernel->kernel."""
    results: dict[Planned, CellResult] = {}
    total = len(cells)

    def done(planned: Planned, result: CellResult) -> None:
        results[planned] = result
        if progress:
            progress(result, len(results), total)

    for planned in cells:
        if planned.why_not:
            done(
                planned,
                CellResult(
                    planned.scenario, planned.client, planned.server, "n/a", planned.why_not
                ),
            )
    runnable = [p for p in cells if not p.why_not]
    shared = [p for p in runnable if not SCENARIOS[p.scenario].exclusive]
    alone = [p for p in runnable if SCENARIOS[p.scenario].exclusive]
    where = str(artifacts) if artifacts else None
    if workers > 1 and len(shared) > 1:
        with worker_pool(workers) as pool:
            futures = {
                pool.submit(_run_json, p.scenario, p.client, p.server, quick, where): p
                for p in shared
            }
            for future in concurrent.futures.as_completed(futures):
                planned = futures[future]
                try:
                    result = CellResult.from_json(future.result())
                except Exception as error:  # a worker died
                    result = CellResult(
                        planned.scenario,
                        planned.client,
                        planned.server,
                        "fail",
                        f"worker failed: {error}",
                    )
                done(planned, result)
    else:
        alone = shared + alone
    # The reference first, so that each exclusive figure has it when judged.
    alone.sort(key=lambda p: (p.scenario, (p.client, p.server) != (REFERENCE, REFERENCE)))
    for planned in alone:
        done(
            planned,
            run_cell(
                SCENARIOS[planned.scenario],
                planned.client,
                planned.server,
                quick=quick,
                artifacts=artifacts,
            ),
        )
    ordered = [results[p] for p in cells]
    judge_against_kernel(ordered)
    discard_judged_artifacts(ordered)
    return ordered


def judge_against_kernel(results: list[CellResult]) -> None:
    """Figures that must match the kernel: each passing cell's against the
    kernel->kernel cell of the same scenario in the same run."""
    reference = {
        r.scenario: r
        for r in results
        if (r.client, r.server) == (REFERENCE, REFERENCE) and r.verdict == "pass"
    }
    for result in results:
        scenario = SCENARIOS[result.scenario]
        if scenario.versus_kernel is None or result.verdict != "pass":
            continue
        key, better = scenario.versus_kernel
        ref = reference.get(result.scenario)
        if ref is None or key not in ref.figures or key not in result.figures:
            result.detail = "no kernel→kernel figure in this run to compare with"
            continue
        ours, theirs = float(result.figures[key]), float(ref.figures[key])
        ratio = ours / theirs if theirs else float("inf")
        result.figures["versus_kernel"] = round(ratio, 3)
        if better == "higher" and ratio < AGGREGATION_RATIO:
            result.verdict = "fail"
            result.detail = (
                f"{key} {ours:g} is {ratio:.2f} x kernel→kernel's {theirs:g} "
                f"(goal ≥ {AGGREGATION_RATIO})"
            )
        elif better == "lower":
            _judge_slower(result, key, ours, theirs, ref.figures.get(f"{key}_samples"))


def _judge_slower(
    result: CellResult, key: str, ours: float, theirs: float, their_samples: Any
) -> None:
    """Time to resume must not be slower than the kernel's: over the cuts, a one-sided
    rank test (`ranktest`, false failures at its alpha whatever the kernel's bimodal
    distribution); without samples, the figures themselves."""
    our_samples: Any = result.figures.get(f"{key}_samples")
    if _samples(our_samples) and _samples(their_samples):
        p = ranktest.p_slower(our_samples, their_samples)
        result.figures[f"{key}_p_slower"] = round(p, 4)
        if p <= ranktest.ALPHA:
            result.verdict = "fail"
            result.detail = (
                f"{key} {ours:g} (cuts {our_samples}) is slower than kernel→kernel's "
                f"{theirs:g} (cuts {their_samples}) in this run: one-sided rank test "
                f"p = {p:.4f} ≤ {ranktest.ALPHA}"
            )
    elif ours > theirs:
        result.verdict = "fail"
        result.detail = f"{key} {ours:g} exceeds kernel→kernel's {theirs:g} in this run"


def discard_judged_artifacts(results: list[CellResult]) -> None:
    """After `judge_against_kernel`: the pcaps and reports of cells whose figure passed
    go; a failed figure keeps its own, and the kernel->kernel cell it was judged
    against keeps its, to compare with."""
    judged_failing = {
        r.scenario
        for r in results
        if r.verdict == "fail" and SCENARIOS[r.scenario].versus_kernel is not None
    }
    for result in results:
        if result.verdict != "pass" or SCENARIOS[result.scenario].versus_kernel is None:
            continue
        reference = (result.client, result.server) == (REFERENCE, REFERENCE)
        if reference and result.scenario in judged_failing:
            continue
        for kept in result.artifacts:
            shutil.rmtree(kept, ignore_errors=True)
        result.artifacts = []


def _samples(value: Any) -> bool:
    return isinstance(value, list) and len(value) >= 2


# -- output --

_FIGURE = {
    "goodput_MBps": "{} MB/s",
    "resume_ms": "{} ms",
    "backup_share": "backup {:.1%}",
    "subflows": "{} subflows",
}
_SHOWN = {
    "aggregation": "goodput_MBps",
    "failover": "resume_ms",
    "failover-blackhole": "resume_ms",
    "backup-own": "backup_share",
    "backup-peer": "backup_share",
    "mp-prio-live": "backup_share",
    "fullmesh": "subflows",
}


def cell_text(result: CellResult) -> str:
    if result.verdict == "n/a":
        return "n/a"
    key = _SHOWN.get(result.scenario, "goodput_MBps")
    figure = result.figures.get(key)
    text = result.verdict + (" (known defect)" if result.known_defect else "")
    if figure is not None:
        text += " " + _FIGURE[key].format(figure)
    if "versus_kernel" in result.figures:
        text += f" ({result.figures['versus_kernel']:.2f}x)"
    return text


def grids(results: Sequence[CellResult], impls: Sequence[str]) -> str:
    from tabulate import tabulate

    out = []
    for name in dict.fromkeys(r.scenario for r in results):
        by_pair = {(r.client, r.server): r for r in results if r.scenario == name}
        rows = [
            [
                f"{client} →",
                *[
                    cell_text(by_pair[(client, server)]) if (client, server) in by_pair else ""
                    for server in impls
                ],
            ]
            for client in impls
        ]
        out.append(f"{name}: {SCENARIOS[name].pass_when}")
        out.append(tabulate(rows, headers=["client \\ server", *impls]))
        out.append("")
    return "\n".join(out)


def summary(results: Sequence[CellResult], wall: float) -> str:
    counts = {v: sum(r.verdict == v for r in results) for v in ("pass", "fail", "n/a")}
    known = sum(r.verdict == "fail" and bool(r.known_defect) for r in results)
    return (
        f"{len(results)} cells: {counts['pass']} pass, {counts['fail']} fail"
        + (f" ({known} of them a known defect of an implementation)" if known else "")
        + f", {counts['n/a']} n/a in {wall:.1f} s"
    )


def new_failures(results: Sequence[CellResult]) -> list[CellResult]:
    """The failed cells that no documented defect explains: what makes the command fail."""
    return [r for r in results if r.verdict == "fail" and not r.known_defect]


def to_json(results: Sequence[CellResult]) -> list[dict[str, Any]]:
    return [
        {
            "scenario": r.scenario,
            "client": r.client,
            "server": r.server,
            "verdict": r.verdict,
            "detail": r.detail,
            "figures": r.figures,
            "artifacts": r.artifacts,
            "duration_s": r.duration_s,
            "known_defect": r.known_defect,
        }
        for r in results
    ]


def to_junit(results: Sequence[CellResult], path: Path) -> None:
    suite = ElementTree.Element(
        "testsuite",
        name="interop",
        tests=str(len(results)),
        failures=str(sum(r.verdict == "fail" for r in results)),
        skipped=str(sum(r.verdict == "n/a" for r in results)),
    )
    for r in results:
        case = ElementTree.SubElement(
            suite,
            "testcase",
            classname=f"interop.{r.scenario}",
            name=f"{r.client}->{r.server}",
            time=f"{r.duration_s:.2f}",
        )
        if r.verdict == "fail":
            ElementTree.SubElement(case, "failure", message=r.detail).text = r.detail
        elif r.verdict == "n/a":
            ElementTree.SubElement(case, "skipped", message=r.detail)
        if r.figures:
            ElementTree.SubElement(case, "system-out").text = str(r.figures)
    path.parent.mkdir(parents=True, exist_ok=True)
    ElementTree.ElementTree(suite).write(path, encoding="unicode", xml_declaration=True)
