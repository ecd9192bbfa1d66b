"""The regression gate: each IUT's expected verdict per case, committed to the repository.

`check` reports every case whose verdict changed, in either direction: a fix must be
acknowledged with `--update-baseline` just as a regression must be fixed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from conformance.model import Result, Verdict

DEFAULT_PATH = Path(__file__).with_name("baseline.json")


@dataclass(frozen=True)
class Change:
    case_id: str
    iut: str
    was: str  # a verdict's value, or "absent"
    now: str

    def __str__(self) -> str:
        return f"{self.iut} {self.case_id}: {self.was} -> {self.now}"


def load(path: Path = DEFAULT_PATH) -> dict[str, dict[str, str]]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {iut: dict(verdicts) for iut, verdicts in data.get("verdicts", {}).items()}


def save(results: Iterable[Result], path: Path = DEFAULT_PATH) -> None:
    """Record the results' verdicts, keeping IUTs and cases this run did not cover."""
    verdicts = load(path)
    for result in results:
        verdicts.setdefault(result.iut, {})[result.case_id] = result.verdict.value
    ordered = {iut: dict(sorted(v.items())) for iut, v in sorted(verdicts.items())}
    path.write_text(json.dumps({"verdicts": ordered}, indent=1) + "\n")


def check(results: Iterable[Result], path: Path = DEFAULT_PATH) -> list[Change]:
    """Changes between this run and the baseline, for the cases and IUTs this run covered.

    An `error` verdict is always a change: a harness fault never passes the gate.
    """
    expected = load(path)
    changes = []
    for result in results:
        was = expected.get(result.iut, {}).get(result.case_id, "absent")
        now = result.verdict.value
        if was != now or result.verdict is Verdict.ERROR:
            changes.append(Change(result.case_id, result.iut, was, now))
    return changes
