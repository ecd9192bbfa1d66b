"""The interop matrix: its plan, its judgement against the kernel, its command line, and,
in real namespaces, that a cell notices the fault it exists for."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import topologies
from conformance.interop import matrix, ranktest
from conformance.interop.cell import DATA_SEED, Cell, CellFailed, CellResult, run_cell
from conformance.interop.scenarios import SCENARIOS, Scenario
from conformance.iut import DRIVERS, AppReport
from testbed.apps import Divergence, stream_sha256

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conformance", "interop", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_an_unknown_implementation_is_refused_with_the_valid_names() -> None:
    done = _cli("--impl", "kernel,bsd")
    assert done.returncode == 2
    assert "unknown implementation 'bsd'" in done.stderr
    assert all(name in done.stderr for name in DRIVERS)


def test_an_unknown_scenario_is_refused_with_the_valid_names() -> None:
    done = _cli("--scenario", "teleport")
    assert done.returncode == 2
    assert "unknown scenario 'teleport'" in done.stderr and "join-same-address" in done.stderr


def test_the_plan_runs_every_scenario_for_pairs_of_one_version_and_transfer_across() -> None:
    cells = matrix.plan(["kernel", "stack-v1", "stack-v0"], {}, list(SCENARIOS), quick=False)
    assert len(cells) == 9 * len(SCENARIOS)
    runs = {(c.scenario, c.client, c.server) for c in cells if not c.why_not}
    assert ("transfer", "stack-v0", "kernel") in runs and ("transfer", "kernel", "stack-v0") in runs
    assert ("failover", "stack-v0", "stack-v0") in runs
    assert ("failover", "stack-v0", "kernel") not in runs
    [cross] = [
        c for c in cells if (c.scenario, c.client, c.server) == ("nat", "stack-v1", "stack-v0")
    ]
    assert "cross-version pair runs `transfer` only" in cross.why_not


def test_an_unavailable_implementation_gets_n_a_with_the_reason() -> None:
    cells = matrix.plan(["kernel", "stack-v1"], {"stack-v1": "no CLI"}, ["transfer"], quick=False)
    reasons = {(c.client, c.server): c.why_not for c in cells}
    assert reasons[("kernel", "kernel")] == ""
    assert reasons[("kernel", "stack-v1")] == "stack-v1 is unavailable here: no CLI"
    results = matrix.run([c for c in cells if c.why_not])
    assert {r.verdict for r in results} == {"n/a"}


def _result(client: str, server: str, scenario: str, **figures: float) -> CellResult:
    return CellResult(scenario, client, server, "pass", figures=dict(figures))


def test_throughput_and_failover_figures_are_judged_against_kernel_to_kernel() -> None:
    results = [
        _result("kernel", "kernel", "aggregation", goodput_MBps=23.0),
        _result("kernel", "stack-v1", "aggregation", goodput_MBps=22.0),  # 0.957
        _result("stack-v1", "kernel", "aggregation", goodput_MBps=21.0),  # 0.913
        _result("kernel", "kernel", "failover", resume_ms=200.0),
        _result("stack-v1", "kernel", "failover", resume_ms=150.0),
        _result("kernel", "stack-v1", "failover", resume_ms=250.0),
        _result("stack-v0", "stack-v0", "failover-blackhole", resume_ms=10.0),
    ]
    matrix.judge_against_kernel(results)
    verdicts = [r.verdict for r in results]
    assert verdicts == ["pass", "pass", "fail", "pass", "pass", "fail", "pass"]
    assert "0.91 x kernel" in results[2].detail
    assert "exceeds kernel" in results[5].detail
    assert results[6].detail == "no kernel→kernel figure in this run to compare with"


def test_time_to_resume_is_judged_by_a_rank_test_over_the_cuts() -> None:
    """With cuts on both sides, a cell fails only when its cuts are slower than the
    kernel's beyond chance (one-sided p ≤ 0.005): with 5 against 5, every one of its
    cuts slower than every one of the kernel's. A median above the kernel's, from a
    kernel whose cuts fall in both of its modes, is not enough."""
    kernel_cuts = [61.0, 58.0, 250.0, 70.0, 66.0]

    def failover(client: str, server: str, cuts: list[float]) -> CellResult:
        figures = {"resume_ms": sorted(cuts)[2], "resume_ms_samples": cuts}
        return CellResult("failover", client, server, "pass", figures=figures)

    results = [
        failover("kernel", "kernel", kernel_cuts),
        failover("kernel", "stack-v1", [251.0, 255.0, 260.0, 270.0, 300.0]),  # all slower
        failover("stack-v1", "kernel", [62.0, 255.0, 260.0, 270.0, 300.0]),  # one faster
        failover("stack-v1", "stack-v1", [5.0, 5.2, 4.9, 5.1, 5.0]),
    ]
    matrix.judge_against_kernel(results)
    assert [r.verdict for r in results] == ["pass", "fail", "pass", "pass"]
    assert "one-sided rank test p = 0.0040" in results[1].detail
    assert results[2].figures["resume_ms_p_slower"] > ranktest.ALPHA
    assert ranktest.p_slower([2.0] * 5, [1.0] * 5) == 1 / 252
    assert ranktest.p_slower([1.0] * 5, [2.0] * 5) == 1.0


def test_a_figure_that_fails_its_judgement_keeps_its_pcaps_and_the_references(
    tmp_path: Path,
) -> None:
    """Cells with a figure keep their artifacts until judged: a failed judgement keeps
    them (and kernel->kernel's, to compare with); passing figures drop theirs."""

    def kept(result: CellResult) -> CellResult:
        directory = tmp_path / f"{result.scenario}.{result.client}.{result.server}"
        directory.mkdir()
        (directory / "client-eth0.pcap").write_bytes(b"")
        result.artifacts = [str(directory)]
        return result

    results = [
        kept(_result("kernel", "kernel", "failover", resume_ms=60.0)),
        kept(_result("kernel", "stack-v1", "failover", resume_ms=250.0)),
        kept(_result("stack-v1", "kernel", "failover", resume_ms=50.0)),
        kept(_result("kernel", "kernel", "aggregation", goodput_MBps=23.0)),
        kept(_result("kernel", "stack-v1", "aggregation", goodput_MBps=23.0)),
    ]
    matrix.judge_against_kernel(results)
    matrix.discard_judged_artifacts(results)
    assert [r.verdict for r in results] == ["pass", "fail", "pass", "pass", "pass"]
    assert [bool(r.artifacts) for r in results] == [True, True, False, False, False]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["failover.kernel.kernel", "failover.kernel.stack-v1"]


def test_the_json_of_a_cell_has_the_documented_fields() -> None:
    [entry] = matrix.to_json([_result("kernel", "stack-v1", "transfer", goodput_MBps=1.0)])
    assert {"scenario", "client", "server", "verdict", "detail", "figures"} <= set(entry)
    json.dumps(entry)


class _Receiver:
    """A driver as far as check_intact looks at it: its name, reports and counters."""

    def __init__(self, name: str, report: AppReport, counters: dict[str, int]) -> None:
        self.name, self._report, self._counters = name, report, counters

    def reports(self) -> list[AppReport]:
        return [self._report]

    def counters(self) -> dict[str, int]:
        return self._counters


def _corrupt_upload(server: str, counters: dict[str, int]) -> CellFailed:
    """An upload whose receiver got every byte, 51872 of them the ones sent 74888 bytes
    later (the kernel's join remap, as the aggregation cell met it)."""
    nbytes = 1 << 20
    sent = AppReport(bytes_sent=nbytes, sha256_sent=stream_sha256(nbytes, DATA_SEED))
    got = AppReport(bytes_received=nbytes, sha256_received="0" * 64,
                    divergences=[Divergence(98_184, 51_872, 173_072)])  # fmt: skip
    client = _Receiver("kernel", sent, {})
    cell = Cell(None, client, _Receiver(server, got, counters), quick=True)  # type: ignore[arg-type]
    with pytest.raises(CellFailed) as failed:
        cell.check_intact(sent, got, nbytes, "upload")
    return failed.value


def test_a_corruption_says_where_and_names_the_known_kernel_defect() -> None:
    failure = _corrupt_upload("kernel", {"MPJoinAckRx": 1, "DuplicateData": 2})
    assert "bytes [98184, 150056) differ (they are the sent bytes from 173072)" in str(failure)
    assert failure.known_defect == "kernel-join-remap"
    # Not without a join, and never for the stack: the stack has no such known defect.
    assert _corrupt_upload("kernel", {"DuplicateData": 2}).known_defect == ""
    assert _corrupt_upload("stack-v1", {"MPJoinAckRx": 1}).known_defect == ""


def test_a_known_defect_fails_its_cell_but_not_the_command() -> None:
    known = CellResult("aggregation", "kernel", "kernel", "fail", "corrupt",
                       known_defect="kernel-join-remap")  # fmt: skip
    other = CellResult("transfer", "kernel", "stack-v1", "fail", "corrupt")
    assert matrix.new_failures([known]) == []
    assert matrix.new_failures([known, other]) == [other]
    assert "(known defect)" in matrix.cell_text(known)
    assert "1 of them a known defect" in matrix.summary([known, other], 1.0)
    [entry] = matrix.to_json([known])
    assert entry["known_defect"] == "kernel-join-remap"


def _testbed_routed_server(bare: tuple[str, ...]) -> object:
    """The fault of issue 10 played by the kernel itself: a server whose replies follow
    per-source rules (the testbed's default) answers a join that arrived on eth1 out of
    eth0, where the client's subflow bound to eth1 does not exist."""
    spec = topologies.user_dual_homed(bare=bare)
    client, server = spec.hosts
    return dataclasses.replace(spec, hosts=(client, dataclasses.replace(server, source_rules=None)))


@pytest.mark.netns
@pytest.mark.kernel
def test_join_same_address_passes_kernel_to_kernel_and_notices_a_misrouted_reply(
    tmp_path: Path,
) -> None:
    scenario = SCENARIOS["join-same-address"]
    good = run_cell(scenario, "kernel", "kernel", quick=True, artifacts=tmp_path)
    assert good.verdict == "pass", good.detail
    assert good.figures["subflows"] == 2
    assert good.figures["path1_share"] >= 0.1 and good.figures["path2_share"] >= 0.1
    broken: Scenario = dataclasses.replace(scenario, topology=_testbed_routed_server)
    bad = run_cell(broken, "kernel", "kernel", quick=True, artifacts=tmp_path)
    assert bad.verdict == "fail" and "1 subflows established, expected 2" in bad.detail
    [kept] = bad.artifacts
    kept_files = sorted(p.name for p in Path(kept).iterdir())
    assert kept_files == ["client-eth0.pcap", "client-eth1.pcap", "client.json", "server.json"]


@pytest.mark.netns
@pytest.mark.kernel
def test_strip_notices_no_fallback_when_nothing_strips(tmp_path: Path) -> None:
    """Would `strip` notice MPTCP surviving? Run it on a plain path: it must fail."""
    plain = dataclasses.replace(SCENARIOS["strip"],
                                topology=lambda bare: topologies.nat(bare=bare))  # fmt: skip
    result = run_cell(plain, "kernel", "kernel", quick=True, artifacts=tmp_path)
    assert result.verdict == "fail" and "no fallback" in result.detail


def _hangs(cell: Cell) -> None:
    """An upload whose only path is blackholed for good once it started: it hangs."""
    cell.start("192.0.2.2", server_mode="sink", client_mode="source", nbytes=50 * 1024 * 1024)
    cell.wait_for(lambda: cell.sent_on("path1", "client") > 1_000_000, 10, "data on path1")
    cell.topo.links["path1"].blackhole(True)
    cell.finish(1.0)


@pytest.mark.netns
@pytest.mark.kernel
def test_a_hung_transfer_keeps_each_ends_state(tmp_path: Path) -> None:
    """The kernel client's sockets (`ss -tinmM`) and the stack server's live connection
    (its `state` command) are kept beside the pcaps: the evidence of what each end was
    waiting on."""
    hung = dataclasses.replace(SCENARIOS["transfer"], run=_hangs)
    result = run_cell(hung, "kernel", "stack-v1", quick=True, artifacts=tmp_path)
    assert result.verdict == "fail" and "the transfer hung" in result.detail
    [kept] = result.artifacts
    client_state = (Path(kept) / "client-state.txt").read_text()
    assert "mptcp" in client_state and "192.0.2.2:8080" in client_state
    [connection] = json.loads((Path(kept) / "server-state.txt").read_text())
    assert connection["local"] == "192.0.2.2:8080"
    assert connection["subflows"][0]["tcp_state"] == "ESTABLISHED"
    assert connection["receive"]["readable"] + connection["subflows"][0]["bytes_received"] > 0


@pytest.mark.netns
@pytest.mark.kernel
def test_a_run_killed_with_sigterm_removes_its_namespaces() -> None:
    """SIGTERM (a CI timeout, `kill`) unwinds the run like Ctrl-C: the cell's topology is
    torn down before the process exits, not left for the next run to reclaim."""
    from testbed.netns import owned_by_process

    run = subprocess.Popen(
        [sys.executable, "-m", "conformance", "interop", "--impl", "kernel",
         "--scenario", "transfer", "-n", "1", "--quiet"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not owned_by_process(run.pid) and time.monotonic() < deadline:
            assert run.poll() is None, "the run ended before building its topology"
            time.sleep(0.05)  # polling for the namespaces to appear, with a deadline
        assert owned_by_process(run.pid), "no namespace of the run appeared within 30 s"
        run.send_signal(signal.SIGTERM)
        _, errors = run.communicate(timeout=60)
        assert owned_by_process(run.pid) == []
        # one line that says what happened, not a traceback
        assert "Traceback" not in errors and "interrupted (signal 15)" in errors, errors
        assert run.returncode == 130
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
