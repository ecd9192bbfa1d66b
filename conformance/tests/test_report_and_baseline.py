"""Reports and the regression gate, on hand-made results."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from conformance import baseline, report
from conformance.model import Case, Level, Result, Role, Verdict


def _case(case_id: str) -> Case:
    return Case(
        id=case_id,
        area=case_id.split(".")[0],
        title=case_id,
        rfc="RFC 8684",
        section="3.2",
        level=Level.MUST,
        versions=frozenset({1}),
        role=Role.LISTENER,
        expected="the IUT answers with RST",
        run=lambda *_: None,
    )


CASES = [_case("mp_join.a"), _case("mp_join.b"), _case("token.c")]
RESULTS = [
    Result("mp_join.a", "kernel", Verdict.CONFORMS),
    Result("mp_join.a", "stack-v1", Verdict.CONFORMS),
    Result("mp_join.b", "kernel", Verdict.CONFORMS),
    Result("mp_join.b", "stack-v1", Verdict.DEVIATES, "no RST within 1 s"),
    Result("token.c", "kernel", Verdict.NOT_APPLICABLE, "v0 only"),
    Result("token.c", "stack-v1", Verdict.ERROR, "tester crashed"),
]


def test_matrix_has_a_row_per_case_and_a_column_per_iut() -> None:
    text = report.matrix(CASES, ["kernel", "stack-v1"], RESULTS)
    lines = text.splitlines()
    assert "kernel" in lines[0] and "stack-v1" in lines[0]
    assert len(lines) == 2 + len(CASES)
    assert "DEVIATES" in next(line for line in lines if line.startswith("mp_join.b"))


def test_diff_lists_only_cases_that_differ_and_how() -> None:
    text = report.diff(CASES, RESULTS)
    assert "mp_join.b" in text and "no RST within 1 s" in text
    assert "token.c" in text
    assert "mp_join.a" not in text
    same = [r for r in RESULTS if r.case_id == "mp_join.a"]
    assert report.diff(CASES, same) == "no difference between stack-v1 and kernel"


def test_summary_counts_each_verdict() -> None:
    line = report.summary(RESULTS, wall_time_s=1.5)
    assert line == "6 results: 3 conforms, 1 deviates, 1 not-applicable, 1 error in 1.5 s"


def test_json_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    report.to_json(RESULTS, path)
    document = json.loads(path.read_text())
    assert document["environment"]["kernel"]
    assert [Result.from_json(r) for r in document["results"]] == RESULTS


def test_junit_marks_deviations_as_failures(tmp_path: Path) -> None:
    path = tmp_path / "j.xml"
    report.to_junit(CASES, RESULTS, path)
    root = ET.parse(path).getroot()
    suite = next(s for s in root if s.get("name") == "mptcp-conformance.stack-v1")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "1")
    failure = suite.find("testcase[@name='mp_join.b']/failure")
    assert failure is not None and failure.get("message") == "no RST within 1 s"


def test_baseline_gate_flags_changes_both_ways_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    baseline.save(RESULTS, path)
    changes = baseline.check(RESULTS, path)
    # Unchanged, but an error never passes the gate.
    assert [str(c) for c in changes] == ["stack-v1 token.c: error -> error"]
    fixed = [
        Result("mp_join.b", "stack-v1", Verdict.CONFORMS),
        Result("mp_join.a", "kernel", Verdict.DEVIATES, "regressed"),
        Result("token.new", "kernel", Verdict.CONFORMS),
    ]
    assert sorted(str(c) for c in baseline.check(fixed, path)) == [
        "kernel mp_join.a: conforms -> deviates",
        "kernel token.new: absent -> conforms",
        "stack-v1 mp_join.b: deviates -> conforms",
    ]
    baseline.save(fixed, path)
    assert baseline.check(fixed, path) == []
    assert baseline.load(path)["kernel"]["mp_join.b"] == "conforms"  # untouched by the update
