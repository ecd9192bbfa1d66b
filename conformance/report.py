"""Reports of a run: verdict matrix, the stack-versus-kernel diff, summary, JSON, JUnit."""

from __future__ import annotations

import json
import platform
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

from conformance.model import Case, Result, Verdict

SHORT = {
    Verdict.CONFORMS: "conforms",
    Verdict.DEVIATES: "DEVIATES",
    Verdict.NOT_APPLICABLE: "n/a",
    Verdict.ERROR: "ERROR",
}


def _index(results: Iterable[Result]) -> dict[tuple[str, str], Result]:
    return {(r.case_id, r.iut): r for r in results}


def matrix(cases: Sequence[Case], iuts: Sequence[str], results: Iterable[Result]) -> str:
    """One row per case, one column per IUT."""
    index = _index(results)
    rows = []
    for case in cases:
        row = [case.id, case.reference]
        for iut in iuts:
            result = index.get((case.id, iut))
            row.append(SHORT[result.verdict] if result else "-")
        rows.append(row)
    return tabulate(rows, headers=["case", "requirement", *iuts])


def diff(
    cases: Sequence[Case], results: Iterable[Result], left: str = "stack-v1", right: str = "kernel"
) -> str:
    """Only the cases where `left` and `right` behave differently, and how."""
    index = _index(results)
    rows = []
    for case in cases:
        a, b = index.get((case.id, left)), index.get((case.id, right))
        if a is None or b is None or a.verdict == b.verdict:
            continue
        rows.append([case.id, _cell(a), _cell(b)])
    if not rows:
        return f"no difference between {left} and {right}"
    return tabulate(rows, headers=["case", left, right], maxcolwidths=[40, 50, 50])


def _cell(result: Result) -> str:
    text = SHORT[result.verdict]
    return f"{text}: {result.detail}" if result.detail else text


def summary(results: Iterable[Result], wall_time_s: float | None = None) -> str:
    results = list(results)
    counts = Counter(r.verdict for r in results)
    parts = [f"{counts[v]} {v.value}" for v in Verdict if counts[v]]
    line = f"{len(results)} results: " + ", ".join(parts)
    if wall_time_s is not None:
        line += f" in {wall_time_s:.1f} s"
    return line


def environment() -> dict[str, str]:
    return {"kernel": platform.release(), "python": platform.python_version()}


def to_json(results: Iterable[Result], path: Path, extra: dict[str, Any] | None = None) -> None:
    document = {
        "environment": environment(),
        **(extra or {}),
        "results": [r.to_json() for r in results],
    }
    path.write_text(json.dumps(document, indent=1) + "\n")


def to_junit(cases: Sequence[Case], results: Iterable[Result], path: Path) -> None:
    """One testsuite per IUT; `deviates` is a failure, `error` an error, n/a a skip."""
    by_case = {case.id: case for case in cases}
    suites = ET.Element("testsuites")
    grouped: dict[str, list[Result]] = {}
    for result in results:
        grouped.setdefault(result.iut, []).append(result)
    for iut, items in grouped.items():
        counts = Counter(r.verdict for r in items)
        suite = ET.SubElement(
            suites,
            "testsuite",
            name=f"mptcp-conformance.{iut}",
            tests=str(len(items)),
            failures=str(counts[Verdict.DEVIATES]),
            errors=str(counts[Verdict.ERROR]),
            skipped=str(counts[Verdict.NOT_APPLICABLE]),
        )
        for result in items:
            case = by_case.get(result.case_id)
            element = ET.SubElement(
                suite,
                "testcase",
                classname=f"{iut}.{case.area if case else 'unknown'}",
                name=result.case_id,
                time=f"{result.duration_s:.3f}",
            )
            if result.verdict is Verdict.DEVIATES:
                ET.SubElement(
                    element, "failure", message=result.detail
                ).text = f"{case.reference if case else ''}: {case.expected if case else ''}"
            elif result.verdict is Verdict.ERROR:
                ET.SubElement(element, "error", message=result.detail)
            elif result.verdict is Verdict.NOT_APPLICABLE:
                ET.SubElement(element, "skipped", message=result.detail)
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)
