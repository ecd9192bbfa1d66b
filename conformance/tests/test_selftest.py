"""The planted-fault self-test: faults reach the stack's processes (forked or spawned),
the cases that should see them turn to deviates, and the others keep conforming."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import stack
from conformance.cases import by_id
from conformance.iut.launcher import Launcher
from conformance.model import Verdict
from conformance.runner import run_one
from conformance.selftest import cases_for_selftest, faulted_driver, selftest
from stack import faults


def test_every_fault_has_its_hook_and_every_hook_its_fault() -> None:
    root = Path(stack.__file__).parent
    hooked = set()
    for path in root.rglob("*.py"):
        if "tests" in path.parts or path.name == "faults.py":
            continue
        hooked |= set(re.findall(r'faults\.on\("([a-z0-9_]+)"\)', path.read_text()))
    assert hooked == set(faults.FAULTS)
    assert len(faults.FAULTS) >= 25
    areas = {case.area for case in cases_for_selftest()}
    for fault in faults.FAULTS.values():
        assert fault.area in areas and fault.section.startswith("3.") and fault.description


def test_unset_means_no_fault_and_unknown_names_are_refused() -> None:
    assert faults.parse(None) == frozenset() == faults.parse("")
    assert faults.parse(" add_addr_no_echo,tcprst_no_reason ") == {
        "add_addr_no_echo", "tcprst_no_reason",
    }  # fmt: skip
    with pytest.raises(ValueError, match="no_such_fault"):
        faults.parse("add_addr_no_echo,no_such_fault")
    with pytest.raises(KeyError):
        faults.on("no_such_fault")
    assert not faults.ACTIVE  # the test run plants nothing
    try:
        assert faults.configure({faults.ENVIRONMENT: "join_fixed_nonce"}) == {"join_fixed_nonce"}
        assert faults.on("join_fixed_nonce") and not faults.on("add_addr_no_echo")
    finally:
        faults.configure({})
    assert not faults.ACTIVE


def test_a_forked_stack_reads_the_faults_of_its_request() -> None:
    launcher = Launcher()
    try:
        process = launcher.start(["serve", "--help"], {faults.ENVIRONMENT: "no_such_fault"})
        assert process.wait(10) == 1  # refused before the stack runs: the name reached it
        assert "unknown fault(s) no_such_fault" in process.stderr.read()
        process = launcher.start(["serve", "--help"])  # the next child plants nothing
        assert process.wait(10) == 0
    finally:
        launcher.close()


@pytest.mark.netns
def test_selftest_catches_planted_faults_with_the_cases_that_see_them() -> None:
    catching = {
        "join_accept_bad_hmac_a": "mp_join.bad_hmac_in_third_ack_reset",
        "tcprst_no_reason": "close.refused_join_rst_reason",
    }
    cases = [by_id()[case_id] for case_id in catching.values()]
    report = selftest(list(catching), cases=cases, all_cases=True, confirm=False)
    assert report.caught == 2 and len(report.scores) == 2
    for score in report.scores:
        assert score.caught_by == [catching[score.fault.name]], score
        other = next(c for c in catching.values() if c != catching[score.fault.name])
        assert score.verdicts[other] == "conforms"  # the other fault's case does not see it
    assert {r.verdict for r in report.reference.values()} == {Verdict.CONFORMS}
    assert "2/2 planted faults caught" in report.summary()


@pytest.mark.netns
def test_a_spawned_stack_plants_the_fault_too(tmp_path: Path) -> None:
    driver = type("SpawnedFaulted", (faulted_driver("backup_mirror_b"),), {"launch": "spawn"})
    result = run_one(by_id()["backup.synack_b_bit_is_not_an_echo"], driver, tmp_path)
    assert result.verdict is Verdict.DEVIATES, result
    assert result.iut == "stack-v1+backup_mirror_b"


def test_scoring_confirms_failures_and_looks_beyond_the_area(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The selftest's logic with scripted verdicts (no namespaces): a case catches a fault
    when it conforms without it and fails twice with it; a fault its area misses meets
    the rest of the catalogue."""
    from conformance import selftest as module
    from conformance.model import Result

    area_case = next(c for c in cases_for_selftest() if c.area == "add_addr")
    other_case = next(c for c in cases_for_selftest() if c.area == "close")
    script = {  # (fault, case) -> verdicts of its successive runs
        ("add_addr_no_echo", area_case.id): ["deviates", "conforms", "deviates"],
        ("add_addr_port_dropped", area_case.id): ["deviates", "conforms", "conforms"],
        ("add_addr_port_dropped", other_case.id): ["error", "error"],
        ("add_addr_echo_ignored", area_case.id): ["conforms"],
        ("add_addr_echo_ignored", other_case.id): ["conforms"],
    }
    calls: list[tuple[str, str]] = []

    def fake(fault: str, case_id: str, artifacts: str | None) -> dict[str, object]:
        calls.append((fault, case_id))
        verdict = "conforms" if not fault else script[(fault, case_id)].pop(0)
        return Result(case_id, faulted_driver(fault).name, Verdict(verdict), verdict).to_json()

    monkeypatch.setattr(module, "_run_job", fake)
    report = selftest(
        ["add_addr_no_echo", "add_addr_port_dropped", "add_addr_echo_ignored"],
        cases=[area_case, other_case],
    )
    caught = {s.fault.name: (s.caught_by, s.unconfirmed, s.stages) for s in report.scores}
    assert caught == {
        "add_addr_no_echo": ([area_case.id], [], 1),  # failed again at its third run
        "add_addr_port_dropped": ([other_case.id], [area_case.id], 2),  # a flake, then
        "add_addr_echo_ignored": ([], [], 2),  # seen by nothing, anywhere
    }
    assert all(not verdicts for verdicts in script.values())  # every scripted run ran
    assert calls.count(("", other_case.id)) == 1  # the reference runs once per case
    assert report.caught == 2 and "not caught: add_addr_echo_ignored" in report.summary()
