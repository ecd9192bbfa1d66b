"""Self-tests of the harness: a deliberately wrong IUT must turn the matching cases to
`deviates`, the tester must say what it saw, and non-conforming cases leave artifacts."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from conformance.cases import by_id, catalogue
from conformance.iut import DRIVERS
from conformance.iut.kernel import KernelIut
from conformance.iut.stack import StackIut, StackV0Iut, StackV1Iut
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


# Planted in the stack's process at start (sitecustomize): every MP_JOIN HMAC of a v0
# connection is computed with v1's HMAC-SHA256 instead of HMAC-SHA1 (RFC 6824 §3.2).
_JOIN_HMAC_FAULT = """
import stack.crypto as crypto

_join_hmac = crypto.join_hmac


def join_hmac(version, *args):
    return _join_hmac(1 if version == 0 else version, *args)


crypto.join_hmac = join_hmac
"""


# Planted in the joining stack's process: a SYN/ACK that it refuses in SYN-SENT (a wrong
# HMAC-B) gets the ACK that completes the handshake before the RST: the stack's own
# bug that only a strict expectation sees (issue 13).
_ACK_BEFORE_RST_FAULT = """
import stack.tcp.connection as tcp
from stack.tcp.segment import ACK, RST, Segment

_emit = tcp.TcpConnection._emit


def _emit_ack_first(self, seg):
    if seg.flags == RST and seg.ack == 0 and self.state is tcp.TcpState.CLOSED and self.irs:
        _emit(self, Segment(self.local[1], self.remote[1], seg.seq, (self.irs + 1) % 2**32,
                            ACK, 1024))
    _emit(self, seg)


tcp.TcpConnection._emit = _emit_ack_first
"""


class _PlantedFaultStack(StackIut):
    """Our stack with the fault `fault` planted: a sitecustomize on the PYTHONPATH of each
    stack process runs before the stack does."""

    fault: ClassVar[str]
    launch: ClassVar[str] = "spawn"  # the sitecustomize runs only in a fresh interpreter

    def __init__(self, topo: Any, host: str = "server") -> None:
        super().__init__(topo, host)
        # the directory lives as long as the IUT (a process may start after _start returns)
        self._fault = tempfile.TemporaryDirectory()
        Path(self._fault.name, "sitecustomize.py").write_text(self.fault)

    def _start(self, argv: list[str], wait_ready: bool) -> None:
        before = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [self._fault.name, before]))
        try:
            super()._start(argv, wait_ready)
        finally:
            if before is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = before

    def stop(self) -> None:
        super().stop()
        self._fault.cleanup()


class WrongJoinHashStackV0(_PlantedFaultStack, StackV0Iut):
    """Our v0 stack with a planted fault: its join HMACs (HMAC-B it sends, HMAC-A it
    sends and expects) use SHA-256, v1's hash; tokens, keys and the rest stay v0."""

    name: ClassVar[str] = "stack-v0-join-sha256"
    fault: ClassVar[str] = _JOIN_HMAC_FAULT


class AckBeforeRstStackV1(_PlantedFaultStack, StackV1Iut):
    """Our v1 stack with a planted fault: it ACKs a join SYN/ACK it refuses, then resets."""

    name: ClassVar[str] = "stack-v1-ack-before-rst"
    fault: ClassVar[str] = _ACK_BEFORE_RST_FAULT


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
@pytest.mark.parametrize(
    ("case_id", "seen"),
    [
        ("mp_join.valid_join_completes", "is not HMAC-B"),  # the IUT as responder
        # the IUT joining: it takes the valid HMAC-B for a wrong one, no third ACK
        ("mp_join.initiator_third_ack_hmac", "with MpJoinAck"),
        ("mp_join.v0_third_ack_with_sha256_hmac_reset", "is not HMAC-B"),  # v0 only
    ],
)
def test_v0_join_cases_detect_join_hmacs_of_the_wrong_hash(
    case_id: str, seen: str, tmp_path: Path
) -> None:
    case = by_id()[case_id]
    assert 0 in case.versions
    assert run_one(case, "stack-v0", tmp_path).verdict is Verdict.CONFORMS
    result = run_one(case, WrongJoinHashStackV0, tmp_path)
    assert result.verdict is Verdict.DEVIATES, result
    assert seen in result.detail


@pytest.mark.netns
def test_a_strict_case_catches_an_ack_before_the_reset(tmp_path: Path) -> None:
    """`initiator_bad_hmac_in_synack` waits for the IUT's next segment (`expect_next`): a
    RST that comes after an ACK no longer passes."""
    case = by_id()["mp_join.initiator_bad_hmac_in_synack"]
    assert run_one(case, "stack-v1", tmp_path).verdict is Verdict.CONFORMS
    result = run_one(case, AckBeforeRstStackV1, tmp_path)
    assert result.verdict is Verdict.DEVIATES, result
    assert result.detail.startswith("expected RST on ") and "next; first came" in result.detail


@pytest.mark.netns
def test_v0_cases_do_not_apply_to_the_v1_only_kernel(tmp_path: Path) -> None:
    result = _verdict("mp_join.v0_third_ack_with_sha256_hmac_reset", "kernel", tmp_path)
    assert result.verdict is Verdict.NOT_APPLICABLE
    assert "v0" in result.detail and "v1" in result.detail


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
        assert {v for v, _ in case.sections} == case.versions, case.id
    counts = {area: sum(c.area == area for c in cases) for area in {c.area for c in cases}}
    assert counts["mp_capable"] >= 12 and counts["token"] >= 6 and counts["mp_join"] >= 15


def test_a_case_for_both_versions_cites_both_rfcs() -> None:
    both = by_id()["mp_join.join_to_fallen_back_connection"]  # fallback: §3.7 vs §3.6
    assert both.versions == frozenset({0, 1})
    assert both.reference == "RFC 8684 §3.7, RFC 6824 §3.6 MUST"
    assert both.citation(0) == "RFC 6824 §3.6" and both.citation(1) == "RFC 8684 §3.7"
    v0_only = by_id()["backup.mp_prio_v0_with_address_id"]
    assert v0_only.reference == "RFC 6824 §3.3.8 MUST"
    # most of the catalogue serves v0 too, and every v0 area has its own cases
    cases = catalogue()
    assert sum(0 in c.versions for c in cases) >= 0.7 * len(cases)
    for area in ("mp_capable", "token", "mp_join", "backup", "dss", "add_addr", "close"):
        assert any(0 in c.versions and c.area == area for c in cases), area


def test_selection_expression() -> None:
    cases = catalogue()
    joins = select_cases(cases, "mp_join and not initiator")
    assert joins and all(c.area == "mp_join" and "initiator" not in c.id for c in joins)
    assert select_cases(cases, "token or fastclose") == [
        c for c in cases if c.area == "token" or "token" in c.id or "fastclose" in c.id
    ]


def test_a_run_killed_with_sigterm_drops_its_queued_cases_and_leaves_nothing() -> None:
    """SIGTERM a `conformance run -n 2` with a catalogue's worth of jobs queued: the run
    cancels them (a pool's own exit would run every one first: a killed VM run went on
    for minutes), its workers unwind their case and end, and nothing of it is left."""
    import signal
    import subprocess
    import sys
    import time

    from testbed._linux import process_cmdline
    from testbed.netns import owned_by_process

    root = Path(__file__).resolve().parents[2]
    run = subprocess.Popen(
        [sys.executable, "-m", "conformance", "run", "--iut", "kernel,stack-v1", "-n", "2",
         "--pcap-dir", os.devnull, "-q"],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert run.poll() is None, "the run ended before its workers built a topology"
            workers = [c for c in _children(run.pid) if b"spawn_main" in process_cmdline(c)]
            if any(owned_by_process(w) for w in workers):
                break
            time.sleep(0.05)  # polling for the workers' namespaces, with a deadline
        assert any(owned_by_process(w) for w in workers), "no worker namespace within 60 s"
        killed = time.monotonic()
        run.send_signal(signal.SIGTERM)
        _, errors = run.communicate(timeout=60)
        took = time.monotonic() - killed
        assert "interrupted (signal 15)" in errors and "Traceback" not in errors, errors
        assert run.returncode == 130
        # the catalogue takes a minute and more; unwinding one case per worker, seconds
        assert took < 20, f"the run took {took:.1f} s to end after SIGTERM"
        assert not [w for w in workers if os.path.exists(f"/proc/{w}")], "a worker outlived it"
        left = [(w, n) for w in [run.pid, *workers] for n in owned_by_process(w)]
        assert not left, errors
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _rst_only_subflow_then_close_peer(ctx: Any) -> None:
    """A connection whose only subflow the tester resets lives on, ESTABLISHED (a RST
    closes its subflow; the connection stays at the data level, RFC 8684 §3.5), until
    the IUT's application lets it go (`Iut.close_peer`, what the fuzzer does after
    each run)."""
    import time

    from conformance.cases.steps import established
    from conformance.model import Outcome

    conn, sf = established(ctx)
    sf.send("R", [])
    token = conn.remote_token
    deadline = time.monotonic() + 2.0
    while ctx.iut.control.subflows(token):  # the RST takes the subflow away
        if time.monotonic() > deadline:
            raise Outcome(Verdict.DEVIATES, "the subflow outlived its RST by 2 s")
        time.sleep(0.01)  # polling the IUT's subflow table
    states = [c.state_name for c in ctx.iut.connections() if c.token == token]
    if states != ["ESTABLISHED"]:
        raise Outcome(Verdict.DEVIATES, f"after the subflow's RST: {states}")
    ctx.iut.close_peer(sf.lport)
    deadline = time.monotonic() + 2.0
    while any(c.token == token for c in ctx.iut.connections()):
        if time.monotonic() > deadline:
            raise Outcome(Verdict.DEVIATES, "still listed 2 s after close_peer")
        time.sleep(0.01)  # polling the IUT's connection table


@pytest.mark.netns
@pytest.mark.kernel
def test_close_peer_lets_a_subflowless_kernel_connection_go(tmp_path: Path) -> None:
    import dataclasses

    template = by_id()["mp_capable.v1_syn_gets_v1_synack"]
    case = dataclasses.replace(template, id="harness.close_peer",
                               run=_rst_only_subflow_then_close_peer)  # fmt: skip
    result = run_one(case, "kernel", tmp_path)
    assert result.verdict is Verdict.CONFORMS, result
