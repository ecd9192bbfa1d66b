"""Conformance cases against kernels in VMs (kernel-6.12, kernel-6.1), real packets.

One test per kernel runs a few cases in one VM (booted once, 5-7 s): a handshake over
IPv4 and IPv6, the kernel as initiator, a join with endpoints, a live backup change and
TCP Fast Open, with the reset checked between them, then an interop cell (stack-v1
uploading to it). Skipped, with the fetch command, when the kernel is not fetched.
"""

from __future__ import annotations

import pytest

from conformance.cases import by_id
from conformance.interop.cell import run_cell
from conformance.interop.scenarios import SCENARIOS
from conformance.iut import DRIVERS
from conformance.iut import vm as vm_iut
from conformance.model import Verdict
from conformance.runner import run_one

pytestmark = [pytest.mark.netns, pytest.mark.kernel, pytest.mark.slow]

CASES = (
    "mp_capable.v1_syn_gets_v1_synack",
    "mp_capable.v1_syn_gets_v1_synack_ipv6",
    "mp_capable.initiator_third_ack_has_both_keys",
    "mp_join.valid_join_completes",
    "mp_join.synack_address_id_of_endpoint",
    "backup.iut_sends_mp_prio_on_flag_change",  # set_backup on a live connection
    "mp_capable.tfo_cookie_request_gets_cookie_and_mp_capable",  # enable_fastopen
)
TFO_LISTENER = "mp_capable.tfo_cookie_request_gets_cookie_and_mp_capable"


@pytest.mark.parametrize("iut", ["kernel-6.12", "kernel-6.1"])
def test_cases_in_one_vm(iut: str) -> None:
    reason = DRIVERS[iut].unavailable()
    if reason:
        pytest.skip(reason)
    cases = by_id()
    try:
        results = [run_one(cases[case_id], iut, None) for case_id in CASES]
        # Every case ran in the VM the first one booted: the reset held between them.
        assert len(vm_iut._machines) == 1
        release = next(iter(vm_iut._machines.values())).ready["release"]
        # The same VM serves an interop cell: the userspace stack uploads to it
        cell = run_cell(SCENARIOS["transfer"], "stack-v1", iut, quick=True)
        assert len(vm_iut._machines) == 1
    finally:
        vm_iut.shutdown()
    assert cell.verdict == "pass", cell.detail
    assert release.startswith(iut.removeprefix("kernel-"))
    verdicts = {r.case_id: (r.verdict, r.detail) for r in results}
    expected = {case_id: Verdict.CONFORMS for case_id in CASES}
    if iut == "kernel-6.1":  # an MPTCP listener of 6.1 takes no TCP_FASTOPEN
        expected[TFO_LISTENER] = Verdict.NOT_APPLICABLE
    assert {c: v for c, (v, _) in verdicts.items()} == expected, verdicts
    if iut == "kernel-6.1":
        assert "no TCP Fast Open" in verdicts[TFO_LISTENER][1]
    # The counters come from the guest's kernel
    join = next(r for r in results if r.case_id == "mp_join.valid_join_completes")
    assert join.counters.get("MPJoinSynRx", 0) >= 1, join.counters
