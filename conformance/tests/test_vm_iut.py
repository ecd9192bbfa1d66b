"""Conformance cases against kernels in VMs (kernel-6.12, kernel-6.1), real packets.

One test per kernel runs a few cases in one VM (booted once, 5-7 s): a handshake over
IPv4 and IPv6, the kernel as initiator, a join with endpoints, a live backup change and
TCP Fast Open, with the reset checked between them, then an interop cell (stack-v1
uploading to it). Skipped, with the fetch command, when the kernel is not fetched.
"""

from __future__ import annotations

import json
import os

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


def test_a_killed_run_takes_its_workers_and_vms_along() -> None:
    """SIGKILL a `conformance run -n 2` once its workers are booting their VMs: the
    workers (SIGTERM at their parent's death) unwind, close their VMs and exit instead of
    going on with the queued cases; reclaim then leaves nothing of them."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from testbed._linux import process_cmdline
    from testbed.netns import RUN_NETNS, reclaim_stale
    from testbed.vm import machine

    reason = DRIVERS["kernel-6.12"].unavailable()
    if reason:
        pytest.skip(reason)
    run = subprocess.Popen(
        [sys.executable, "-m", "conformance", "run", "--iut", "kernel-6.12", "-n", "2",
         "-k", "mp_join", "--pcap-dir", os.devnull, "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    workers: set[int] = set()
    qemus: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while len(qemus) < 2 and time.monotonic() < deadline and run.poll() is None:
            workers = {p for p in _processes() if _parent(p) == run.pid and
                       b"spawn_main" in process_cmdline(p)}  # fmt: skip
            qemus = {p for p in _processes() if _parent(p) in workers and
                     process_cmdline(p).startswith(b"qemu-system")}  # fmt: skip
            time.sleep(0.1)
        assert len(qemus) == 2, "the run's two workers did not start their VMs"
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{p}").exists() for p in workers | qemus):
        assert time.monotonic() < deadline, "workers or QEMU outlived the killed run"
        time.sleep(0.1)
    reclaim_stale()
    machine.reclaim()
    left = [name for name in os.listdir(RUN_NETNS) if _owner(name) in workers]
    assert not left and not [d for d in machine.RUN_DIR.glob("*") if _owner(d.name) in workers]


def _processes() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def _parent(pid: int) -> int:
    """The parent of `pid` (of a process that is gone: -1)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def _owner(name: str) -> int:
    try:
        with open(f"/run/mptcp-lab/{name}") as f:
            return int(json.load(f)["pid"])
    except (OSError, ValueError, KeyError):
        return -1
