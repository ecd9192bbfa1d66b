"""Self-tests of the harness: a deliberately wrong IUT must turn the matching cases to
`deviates`, the tester must say what it saw, and non-conforming cases leave artifacts."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from conformance.cases import by_id, catalogue
from conformance.iut import DRIVERS
from conformance.iut.kernel import KernelIut
from conformance.iut.stack import StackIut
from conformance.model import Verdict
from conformance.runner import run_one, select_cases


class MptcpDisabledKernel(KernelIut):
    """A kernel host whose MPTCP is switched off: it answers every MP_CAPABLE plainly."""

    name: ClassVar[str] = "kernel-mptcp-off"

    def __init__(self, topo: Any, host: str = "server") -> None:
        super().__init__(topo, host)
        self.set_sysctl("net.mptcp.enabled", 0)


class NoJoinsKernel(KernelIut):
    """A kernel that accepts no subflow at all (limit 0), whatever the case asks."""

    name: ClassVar[str] = "kernel-no-joins"

    def __init__(self, topo: Any, host: str = "server") -> None:
        super().__init__(topo, host)
        self.control.set_limits(subflows=0, add_addr_accepted=0)

    def set_limits(self, subflows: int, add_addr_accepted: int) -> None:
        pass  # the fault: limits are ignored


class BackupBlindKernel(KernelIut):
    """A kernel driver that drops the backup flag of endpoints: the B bit is never sent."""

    name: ClassVar[str] = "kernel-backup-blind"

    def add_endpoint(self, address: str, *, flags: Iterable[str] = (), **kwargs: Any) -> None:
        super().add_endpoint(address, flags=set(flags) - {"backup"}, **kwargs)


def _verdict(case_id: str, iut: Any, tmp_path: Path) -> Any:
    return run_one(by_id()[case_id], iut, tmp_path)


@pytest.mark.netns
@pytest.mark.parametrize(
    ("iut", "case_id", "seen"),
    [
        (MptcpDisabledKernel, "mp_capable.v1_syn_gets_v1_synack", "MpCapable"),
        (MptcpDisabledKernel, "mp_capable.initiator_v1_syn_format", "SYN with MP_CAPABLE"),
        (NoJoinsKernel, "mp_join.valid_join_completes", "mp_tcprst"),
        (BackupBlindKernel, "backup.synack_b_bit_from_backup_endpoint", "without B"),
    ],
)
def test_a_faulty_iut_turns_its_cases_to_deviates(
    iut: Any, case_id: str, seen: str, tmp_path: Path
) -> None:
    assert _verdict(case_id, "kernel", tmp_path).verdict is Verdict.CONFORMS
    result = _verdict(case_id, iut, tmp_path)
    assert result.verdict is Verdict.DEVIATES, result
    assert seen in result.detail
    pcap, ladder = (Path(p) for p in result.artifacts)
    assert pcap.read_bytes()[:4] == bytes.fromhex("d4c3b2a1")
    assert "IUT" in ladder.read_text()


@pytest.mark.netns
def test_unrelated_cases_still_conform_on_a_faulty_iut(tmp_path: Path) -> None:
    result = _verdict("backup.synack_b_bit_is_not_an_echo", BackupBlindKernel, tmp_path)
    assert result.verdict is Verdict.CONFORMS, result


def test_stack_drivers_say_why_they_cannot_run() -> None:
    import importlib.util

    reason = StackIut.unavailable()
    if importlib.util.find_spec("stack.__main__") is None:
        assert reason is not None and "stack/__main__.py" in reason
    else:
        assert reason is None
    assert {"kernel", "stack-v1", "stack-v0"} <= set(DRIVERS)
    assert DRIVERS["stack-v0"].versions == frozenset({0})


def test_every_case_carries_its_reference_and_the_catalogue_is_large_enough() -> None:
    cases = catalogue()
    assert len(cases) >= 60
    assert len({c.id for c in cases}) == len(cases)
    for case in cases:
        assert case.rfc in ("RFC 8684", "RFC 6824") and case.section and case.expected
        assert case.expected.endswith("."), case.id
    counts = {area: sum(c.area == area for c in cases) for area in {c.area for c in cases}}
    assert counts["mp_capable"] >= 12 and counts["token"] >= 6 and counts["mp_join"] >= 15


def test_selection_expression() -> None:
    cases = catalogue()
    joins = select_cases(cases, "mp_join and not initiator")
    assert joins and all(c.area == "mp_join" and "initiator" not in c.id for c in joins)
    assert select_cases(cases, "token or fastclose") == [
        c for c in cases if c.area == "token" or "token" in c.id or "fastclose" in c.id
    ]
