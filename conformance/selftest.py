"""`python -m conformance selftest`: what the catalogue can detect, by planted faults.

Each fault of `stack.faults.FAULTS` is a deliberate RFC violation that the stack commits
when `STACK_FAULTS` names it (the stack driver passes it to its processes; the fork
server's child reads it again before it starts, `conformance.iut.launcher`). The
catalogue's v1 cases run against stack-v1 with one fault at a time, in the manner of
mutation testing. A case *catches* a fault when it conforms on the unfaulted stack-v1
(the reference run, same selection) and does not conform (deviates or errors) with the
fault, twice: a first failure is run again, up to `CONFIRM_RUNS` times, until it fails
again (so one timing flake on a loaded machine is not counted, and one lucky conforming
run of a case that sees the fault does not hide it). The score is the faults caught out
of the faults planted.

To stay fast, each fault first meets the cases of its own area (`Fault.area`); only a
fault that none of them catches meets the rest of the catalogue. `--all-cases` runs
every v1 case against every fault instead (the "caught by" lists are then complete;
otherwise they are those of the fault's area, or of the first stage that caught it).
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conformance.cases import by_id, catalogue
from conformance.iut.stack import StackV1Iut
from conformance.model import Case, Result, Verdict
from conformance.runner import run_one
from stack.faults import FAULTS, Fault

REFERENCE = ""  # the unfaulted stack-v1, where a fault name would go
CONFIRM_RUNS = 2  # runs again of a case that failed once with a fault; one more failure counts


def faulted_driver(fault: str) -> type[StackV1Iut]:
    """stack-v1 with `fault` planted (the plain driver for REFERENCE)."""
    if not fault:
        return StackV1Iut
    if fault not in FAULTS:
        raise KeyError(f"no planted fault {fault!r}; known: {', '.join(FAULTS)}")
    return type(
        "FaultedStackV1Iut",
        (StackV1Iut,),
        {"name": f"stack-v1+{fault}", "faults": frozenset({fault}),
         "description": f"stack-v1 with the planted fault {fault}"},
    )  # fmt: skip


def cases_for_selftest() -> list[Case]:
    """The cases that can run against stack-v1: every v1 case."""
    return [case for case in catalogue() if 1 in case.versions]


@dataclass
class FaultScore:
    fault: Fault
    caught_by: list[str] = field(default_factory=list)  # failed twice, conform unfaulted
    unconfirmed: list[str] = field(default_factory=list)  # failed once, then conformed twice
    verdicts: dict[str, str] = field(default_factory=dict)  # case -> verdict with the fault
    details: dict[str, str] = field(default_factory=dict)  # case -> what it saw (caught)
    stages: int = 0  # 1: its area only; 2: the rest too

    @property
    def caught(self) -> bool:
        return bool(self.caught_by)

    def to_json(self) -> dict[str, Any]:
        return {
            "fault": self.fault.name, "area": self.fault.area,
            "section": f"RFC 8684 §{self.fault.section}",
            "description": self.fault.description, "caught": self.caught,
            "caught_by": self.caught_by, "unconfirmed": self.unconfirmed,
            "details": self.details, "verdicts": self.verdicts, "stages": self.stages,
        }  # fmt: skip


@dataclass
class SelftestReport:
    scores: list[FaultScore]
    reference: dict[str, Result]
    runs: int
    wall_s: float

    @property
    def caught(self) -> int:
        return sum(score.caught for score in self.scores)

    def summary(self) -> str:
        missed = [s.fault.name for s in self.scores if not s.caught]
        line = (f"selftest: {self.caught}/{len(self.scores)} planted faults caught; "
                f"{self.runs} case runs in {self.wall_s:.1f} s")  # fmt: skip
        if missed:
            line += f"; not caught: {', '.join(missed)}"
        return line

    def to_json(self) -> dict[str, Any]:
        return {
            "score": {"caught": self.caught, "planted": len(self.scores)},
            "faults": [score.to_json() for score in self.scores],
            "reference": {case: r.verdict.value for case, r in self.reference.items()},
            "runs": self.runs, "wall_s": round(self.wall_s, 2),
        }  # fmt: skip


Job = tuple[str, str]  # (fault or REFERENCE, case id)


def _run_job(fault: str, case_id: str, artifacts: str | None) -> dict[str, object]:
    """Worker-process entry point (picklable arguments and result)."""
    path = Path(artifacts) if artifacts else None
    return run_one(by_id()[case_id], faulted_driver(fault), path).to_json()


class _Pool:
    """Runs (fault, case) jobs in-process (`workers` 1) or in spawned worker processes,
    each with its own stack fork server."""

    def __init__(self, workers: int, artifacts: Path | None,
                 progress: Callable[[str, Result, int, int], None] | None) -> None:  # fmt: skip
        self.workers = workers
        self.artifacts = str(artifacts) if artifacts else None
        self.progress = progress
        self.runs = 0
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        if workers > 1:
            context = multiprocessing.get_context("spawn")
            self._executor = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context)

    def run(self, jobs: Sequence[Job]) -> dict[Job, Result]:
        results: dict[Job, Result] = {}
        total = len(jobs)

        def done(job: Job, result: Result) -> None:
            results[job] = result
            self.runs += 1
            if self.progress:
                self.progress(job[0], result, len(results), total)

        if self._executor is None:
            for fault, case_id in jobs:
                done((fault, case_id), Result.from_json(_run_job(fault, case_id, self.artifacts)))
            return results
        futures = {self._executor.submit(_run_job, fault, case_id, self.artifacts): (fault, case_id)
                   for fault, case_id in jobs}  # fmt: skip
        for future in concurrent.futures.as_completed(futures):
            fault, case_id = futures[future]
            try:
                result = Result.from_json(future.result())
            except Exception as error:  # a worker died
                name = faulted_driver(fault).name
                result = Result(case_id, name, Verdict.ERROR, f"worker failed: {error}")
            done((fault, case_id), result)
        return results

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()


def selftest(
    faults: Iterable[str] | None = None,
    *,
    workers: int = 1,
    all_cases: bool = False,
    confirm: bool = True,
    artifacts: Path | None = None,
    cases: Sequence[Case] | None = None,
    progress: Callable[[str, Result, int, int], None] | None = None,
) -> SelftestReport:
    """Plant each fault in stack-v1 and run the catalogue's v1 cases against it."""
    names = list(faults) if faults is not None else list(FAULTS)
    for name in names:
        if name not in FAULTS:
            raise KeyError(f"no planted fault {name!r}; known: {', '.join(FAULTS)}")
    pool_cases = list(cases) if cases is not None else cases_for_selftest()
    ids = [case.id for case in pool_cases]
    area = {case.id: case.area for case in pool_cases}
    scores = {name: FaultScore(FAULTS[name]) for name in names}
    reference: dict[str, Result] = {}
    started = time.monotonic()
    pool = _Pool(workers, artifacts, progress)
    try:
        pending = {name: [c for c in ids if all_cases or area[c] == FAULTS[name].area]
                   for name in names}  # fmt: skip
        for stage in (1, 2):
            jobs: list[Job] = [(REFERENCE, c) for c in
                               dict.fromkeys(c for cs in pending.values() for c in cs)
                               if c not in reference]  # fmt: skip
            jobs += [(name, c) for name, cs in pending.items() for c in cs]
            results = pool.run(jobs)
            reference.update({c: r for (f, c), r in results.items() if f == REFERENCE})
            failed: list[Job] = []
            for (fault, case_id), result in results.items():
                if fault == REFERENCE:
                    continue
                score = scores[fault]
                score.stages = stage
                score.verdicts[case_id] = result.verdict.value
                if _catches(reference[case_id], result):
                    failed.append((fault, case_id))
                    score.details[case_id] = result.detail
            # a failure counts once a second run fails too (up to CONFIRM_RUNS tries)
            doubtful = list(failed) if confirm else []
            for _ in range(CONFIRM_RUNS):
                if not doubtful:
                    break
                again = pool.run(doubtful)
                doubtful = [job for job, r in again.items() if not _catches(reference[job[1]], r)]
            for fault, case_id in failed:
                if (fault, case_id) in doubtful:
                    scores[fault].unconfirmed.append(case_id)
                    scores[fault].details.pop(case_id, None)
                else:
                    scores[fault].caught_by.append(case_id)
            # faults nothing caught meet the rest of the catalogue
            pending = {name: [c for c in ids if c not in scores[name].verdicts]
                       for name in names if not scores[name].caught}  # fmt: skip
            pending = {name: cs for name, cs in pending.items() if cs}
            if not pending:
                break
    finally:
        pool.close()
    for score in scores.values():
        score.caught_by.sort(key=ids.index)
    return SelftestReport([scores[n] for n in names], reference, pool.runs,
                          time.monotonic() - started)  # fmt: skip


def _catches(reference: Result, faulted: Result) -> bool:
    return reference.verdict is Verdict.CONFORMS and faulted.verdict in (
        Verdict.DEVIATES, Verdict.ERROR,
    )  # fmt: skip


def table(report: SelftestReport) -> str:
    from tabulate import tabulate

    rows = []
    for score in report.scores:
        fault = score.fault
        caught = ", ".join(score.caught_by) if score.caught_by else "NOT CAUGHT"
        rows.append([fault.name, f"§{fault.section}", fault.area, caught])
    return tabulate(rows, headers=["fault", "RFC 8684", "area", "caught by"],
                    maxcolwidths=[None, None, None, 90])  # fmt: skip


def write_json(report: SelftestReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_json(), indent=1) + "\n")
