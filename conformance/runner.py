"""Run cases against IUTs: one topology per case, in-process or in worker processes.

`run_one` builds the case's topology (the tester's host bare, and the IUT's too when the
IUT is a userspace stack), starts the tester and the IUT driver, runs the case, and
turns its ending into a verdict: returning is `conforms`, `deviates(...)`/
`not_applicable(...)` say so, `NotSupported` from a driver is not-applicable, anything
else is `error` with the exception. Teardown is guaranteed by `with build(...)`. A case
that does not conform leaves a pcap and a ladder diagram in the artifacts directory:
`./conformance-artifacts` under the current directory unless told otherwise, never
inside the package (which may be installed read-only, or shared by other runs). With
`keep_all`, every case does: the ladders of conforming runs, side by side across IUTs,
show what no case asserts (how the stack's two extra ACKs per segment were found).
"""

from __future__ import annotations

import concurrent.futures
import re
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from conformance.cases import Context, by_id
from conformance.iut import DRIVERS, Iut, NotSupported
from conformance.model import Case, Outcome, Result, Verdict
from conformance.tester import Tester
from testbed.netns import worker_job, worker_pool

# Relative: resolved against the current directory when a case writes its artefacts.
DEFAULT_ARTIFACTS = Path("conformance-artifacts")


def _spec(case: Case, iut: type[Iut]) -> object:
    import topologies

    factory = topologies.CATALOGUE.get(case.topology) or getattr(topologies, case.topology)
    bare = ("client", "server") if iut.bare else ("client",)
    return factory(bare=bare)


def version_for(case: Case, iut: type[Iut]) -> int | None:
    common = case.versions & iut.versions
    return max(common) if common else None


def run_one(
    case: Case,
    iut: str | type[Iut],
    artifacts: Path | None = DEFAULT_ARTIFACTS,
    *,
    keep_all: bool = False,
) -> Result:
    """One case against one IUT (a name in DRIVERS, or a driver class); never raises for
    a case's fault (that is `error`)."""
    from testbed import build
    from testbed.mptcp import counters_diff

    iut_cls = DRIVERS[iut] if isinstance(iut, str) else iut
    iut_name = iut_cls.name
    started = time.monotonic()
    version = version_for(case, iut_cls)
    if version is None:
        wanted = "/".join(f"v{v}" for v in sorted(case.versions))
        speaks = "/".join(f"v{v}" for v in sorted(iut_cls.versions))
        return Result(
            case.id, iut_name, Verdict.NOT_APPLICABLE,
            f"the case is for {wanted}; {iut_name} speaks only {speaks}",
        )  # fmt: skip
    verdict, detail, moved, paths = Verdict.ERROR, "", {}, []
    try:
        with build(_spec(case, iut_cls)) as topo:  # type: ignore[arg-type]
            tester: Tester | None = None
            driver: Iut | None = None
            try:
                tester = Tester(topo, "client", "server", family=case.family)
                driver = iut_cls(topo, "server")
                before = driver.counters()
                try:
                    case.run(Context(tester, driver, topo, version))
                    verdict = Verdict.CONFORMS
                finally:
                    moved = counters_diff(before, driver.counters())
            except Outcome as outcome:
                verdict, detail = outcome.verdict, outcome.detail
            except NotSupported as error:
                verdict, detail = Verdict.NOT_APPLICABLE, str(error)
            except Exception as error:
                verdict = Verdict.ERROR
                where = traceback.extract_tb(error.__traceback__)[-1]
                detail = (
                    f"{type(error).__name__}: {error} ({Path(where.filename).name}:{where.lineno})"
                )
            finally:
                if driver is not None:
                    driver.stop()
                if tester is not None:
                    failed = verdict in (Verdict.DEVIATES, Verdict.ERROR)
                    if artifacts is not None and (failed or keep_all):
                        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{iut_name}.{case.id}")
                        paths = tester.write_artifacts(artifacts, stem)
                    tester.close()
    except Exception as error:  # the topology itself failed
        verdict, detail = Verdict.ERROR, f"topology: {type(error).__name__}: {error}"
    return Result(case.id, iut_name, verdict, detail, time.monotonic() - started, moved, paths)


def _run_by_id(
    case_id: str, iut_name: str, artifacts: str | None, keep_all: bool = False
) -> dict[str, object]:
    """Worker-process entry point (picklable arguments and result)."""
    case = by_id()[case_id]
    with worker_job():  # SIGTERM (the run died) unwinds it, then ends the worker
        path = Path(artifacts) if artifacts else None
        return run_one(case, iut_name, path, keep_all=keep_all).to_json()


def available(iuts: Iterable[str]) -> tuple[list[str], dict[str, str]]:
    """The IUTs that can run here, and why the others cannot."""
    usable, skipped = [], {}
    for name in iuts:
        if name not in DRIVERS:
            raise KeyError(f"unknown IUT {name!r}; known: {', '.join(DRIVERS)}")
        reason = DRIVERS[name].unavailable()
        if reason:
            skipped[name] = reason
        else:
            usable.append(name)
    return usable, skipped


def run(
    cases: Sequence[Case],
    iuts: Sequence[str],
    *,
    workers: int = 1,
    artifacts: Path | None = DEFAULT_ARTIFACTS,
    keep_all: bool = False,
    progress: Callable[[Result, int, int], None] | None = None,
) -> list[Result]:
    """Every case against every IUT; `workers` > 1 runs them in worker processes.
    `keep_all`: artefacts of every case, not only of those that do not conform."""
    jobs = [(case, iut) for case in cases for iut in iuts]
    results: list[Result] = []
    total = len(jobs)
    if workers <= 1:
        for case, iut in jobs:
            result = run_one(case, iut, artifacts, keep_all=keep_all)
            results.append(result)
            if progress:
                progress(result, len(results), total)
        return results
    with worker_pool(workers) as pool:
        futures = {
            pool.submit(
                _run_by_id, case.id, iut, str(artifacts) if artifacts else None, keep_all
            ): (
                case,
                iut,
            )
            for case, iut in jobs
        }
        for future in concurrent.futures.as_completed(futures):
            case, iut = futures[future]
            try:
                result = Result.from_json(future.result())
            except Exception as error:  # a worker died
                result = Result(case.id, iut, Verdict.ERROR, f"worker failed: {error}")
            results.append(result)
            if progress:
                progress(result, len(results), total)
    order = {(c.id, i): n for n, (c, i) in enumerate(jobs)}
    results.sort(key=lambda r: order[(r.case_id, r.iut)])
    return results


def select_cases(cases: Sequence[Case], expression: str | None) -> list[Case]:
    """pytest-like -k: words separated by `and`/`or`/`not`, matched as substrings of the
    case id, its area and its RFC section."""
    if not expression:
        return list(cases)
    tokens = re.findall(r"\(|\)|[^\s()]+", expression)
    selected = []
    for case in cases:
        haystack = f"{case.id} {case.area} {case.reference}"
        python = []
        for token in tokens:
            if token in ("and", "or", "not", "(", ")"):
                python.append(token)
            else:
                python.append(repr(token.lower() in haystack.lower()))
        if eval(" ".join(python), {"__builtins__": {}}):
            selected.append(case)
    return selected
