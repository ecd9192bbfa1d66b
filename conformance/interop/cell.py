"""One cell of the interop matrix: a scenario between a client driver and a server driver.

`run_cell` builds the scenario's topology (each host bare when its driver is a userspace
stack), starts control-segment captures on the client's links, binds a driver to each
end, runs the scenario, and turns its ending into a `CellResult`: returning is `pass`,
`CellFailed` is `fail` with what was seen, `NotSupported` from a driver is `n/a`, and
anything else is a `fail` that names the harness error. A failed cell keeps its pcaps
and both ends' reports (JSON) under the artifacts directory, with each end's state
(`Iut.snapshot`: `ss -tinmM`, or the stack's `state` command) when a transfer hung. A
cell whose figure is judged against the kernel's afterwards keeps them until then.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conformance.interop import evidence
from conformance.iut import DRIVERS, AppReport, Iut, NotSupported

if TYPE_CHECKING:
    from conformance.interop.scenarios import Scenario

PORT = 8080
# Data every source sends: random bytes that are not the testbed's seeded stream (as
# from iperf or a file), so no receiver can take a shortcut; the SHA-256 is compared.
DATA_SEED = 4242


class CellFailed(Exception):
    """The scenario's pass condition does not hold; the message says what was seen.
    `known_defect` names a documented defect of an implementation that explains it."""

    def __init__(self, message: str, known_defect: str = "") -> None:
        super().__init__(message)
        self.known_defect = known_defect


# Defects of an implementation, documented, that a failed cell may be recognised as:
# the cell still fails, and the command's exit status and the bench leave it aside
KNOWN_DEFECTS = {
    "kernel-join-remap": "Linux 6.18 receiver: a join's first mapping applied at the "
    "msk's ack_seq (docs/architecture.md, 'Kernel data corruption at a join')",
}


@dataclass
class CellResult:
    scenario: str
    client: str
    server: str
    verdict: str  # "pass", "fail" or "n/a"
    detail: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    known_defect: str = ""  # a KNOWN_DEFECTS key when the failure is one of those

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CellResult:
        return cls(**data)


class Cell:
    """What a scenario works with: the live topology, both drivers, figures, evidence."""

    def __init__(self, topo: Any, client: Iut, server: Iut, quick: bool) -> None:
        self.topo = topo
        self.client = client
        self.server = server
        self.quick = quick
        self.figures: dict[str, Any] = {}
        self.captures: list[Any] = []  # testbed.capture.Capture of the client's links
        self.snapshots: dict[str, str] = {}  # each end's state when a transfer hung

    # -- sizes and transfers --

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def start(self, address: str, *, server_mode: str, client_mode: str, nbytes: int) -> None:
        """The server listens, then the client connects."""
        self.server.listen(PORT, mode=server_mode, nbytes=nbytes if server_mode == "source" else 0)
        self.connect(address, client_mode, nbytes)

    def connect(self, address: str, client_mode: str, nbytes: int) -> None:
        """One more connection from the client to the listening server."""
        self.client.connect(
            address, PORT, mode=client_mode, nbytes=nbytes if client_mode == "source" else 0
        )

    def finish(self, within: float, count: int = 1) -> tuple[AppReport, AppReport]:
        """Both ends' reports of the `count`-th connection, waited for (events, not sleeps)."""
        deadline = time.monotonic() + within
        client = self.client.wait_report(within, count)
        server = self.server.wait_report(max(0.1, deadline - time.monotonic()), count)
        if len(client) < count or len(server) < count:
            missing = [n for n, r in (("client", client), ("server", server)) if len(r) < count]
            self.snapshots = {"client": self.client.snapshot(), "server": self.server.snapshot()}
            raise CellFailed(
                f"no report from the {' and '.join(missing)} within {within:g} s "
                "(the transfer hung)"
            )
        for name, report in (("client", client[count - 1]), ("server", server[count - 1])):
            if report.error:
                raise CellFailed(f"{name}: {report.error}")
        return client[count - 1], server[count - 1]

    def check_intact(self, sender: AppReport, receiver: AppReport, nbytes: int, what: str) -> None:
        """The bytes arrived whole: counts and SHA-256 at both ends, against the digest
        of the data the harness knows was sent."""
        from testbed.apps import stream_sha256

        expected = stream_sha256(nbytes, DATA_SEED)
        if sender.bytes_sent != nbytes or sender.sha256_sent != expected:
            raise CellFailed(
                f"{what}: the sender sent {sender.bytes_sent} of {nbytes} bytes "
                f"(SHA-256 {sender.sha256_sent[:12]}, expected {expected[:12]})"
            )
        if receiver.bytes_received != nbytes or receiver.sha256_received != expected:
            message = (
                f"{what}: the receiver got {receiver.bytes_received} of {nbytes} bytes with "
                f"SHA-256 {receiver.sha256_received[:12]}, sent {expected[:12]}"
            )
            if receiver.divergences:
                message += "; " + ", ".join(
                    f"bytes [{d.offset}, {d.offset + d.length}) differ"
                    + (f" (they are the sent bytes from {d.source})" if d.source >= 0 else "")
                    for d in receiver.divergences
                )
            raise CellFailed(message, self._known_corruption(receiver, nbytes))

    def _known_corruption(self, receiver: AppReport, nbytes: int) -> str:
        """The KNOWN_DEFECTS key that a corruption with every byte counted matches."""
        from testbed.apps import join_remap_evidence

        driver = self.server if any(r is receiver for r in self.server.reports()) else self.client
        if receiver.bytes_received != nbytes or not driver.name.startswith("kernel"):
            return ""
        return "kernel-join-remap" if join_remap_evidence(receiver.divergences,
                                                          driver.counters()) else ""  # fmt: skip

    def goodput(self, receiver: AppReport, nbytes: int) -> float:
        """MB/s (10^6 bytes) from the receiver's accept or connect to its end of stream."""
        rate = nbytes / receiver.duration_s / 1e6 if receiver.duration_s > 0 else 0.0
        self.figures["goodput_MBps"] = round(rate, 2)
        return rate

    # -- evidence from outside the implementations --

    def sent_on(self, link: str, host: str) -> int:
        """Bytes the host has put on the link so far (kernel interface counters)."""
        return int(self.topo.links[link].sent_by(host))

    def subflows(self) -> list[evidence.SubflowSeen]:
        """The established subflows in the captures so far (of every connection)."""
        seen = evidence.subflows([c.path for c in self.captures])
        return [s for s in seen.values() if s.established and s.kind != "TCP"]

    def wait_for(self, predicate: Any, within: float, what: str, step: float = 0.005) -> Any:
        """Poll `predicate` until it is true, or fail the cell after `within` seconds."""
        deadline = time.monotonic() + within
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise CellFailed(f"{what}: not within {within:g} s")
            time.sleep(step)


def _bare(scenario: Scenario, client: type[Iut], server: type[Iut]) -> tuple[str, ...]:
    del scenario
    return tuple(name for name, driver in (("client", client), ("server", server)) if driver.bare)


def _write_report(directory: Path, name: str, driver: Iut | None) -> None:
    if driver is None:
        return
    reports = []
    for report in driver.reports():
        data = dataclasses.asdict(report)
        data["data"] = len(report.data)  # the first bytes themselves are noise in a report
        reports.append(data)
    (directory / f"{name}.json").write_text(json.dumps(reports, indent=1, default=str) + "\n")


def run_cell(
    scenario: Scenario,
    client_name: str,
    server_name: str,
    *,
    quick: bool = False,
    artifacts: Path | None = None,
) -> CellResult:
    """One scenario between two drivers; never raises for a fault of either end."""
    from testbed import build
    from testbed.capture import Capture

    started = time.monotonic()
    client_cls, server_cls = DRIVERS[client_name], DRIVERS[server_name]
    result = CellResult(scenario.name, client_name, server_name, "fail")
    scratch = Path(tempfile.mkdtemp(prefix="mptl-interop-"))
    client: Iut | None = None
    server: Iut | None = None
    captures: list[Capture] = []
    try:
        spec = scenario.topology(bare=_bare(scenario, client_cls, server_cls))
        with build(spec) as topo:
            try:
                for ifname in topo.hosts["client"].interfaces:
                    captures.append(
                        Capture(
                            topo.hosts["client"].ns,
                            ifname,
                            scratch / f"client-{ifname}.pcap",
                            bpf_filter=evidence.CONTROL_FILTER,
                        ).launch()
                    )
                for capture in captures:
                    capture.wait_running()
                client, server = client_cls(topo, "client"), server_cls(topo, "server")
                client.data_seed = server.data_seed = DATA_SEED
                cell = Cell(topo, client, server, quick)
                cell.captures = captures
                try:
                    scenario.run(cell)
                    result.verdict = "pass"
                finally:
                    result.figures = cell.figures
                    for end, text in cell.snapshots.items():
                        (scratch / f"{end}-state.txt").write_text(text)
            except CellFailed as failure:
                result.detail = str(failure)
                result.known_defect = failure.known_defect
            except NotSupported as error:
                result.verdict, result.detail = "n/a", str(error)
            except Exception as error:
                where = traceback.extract_tb(error.__traceback__)[-1]
                result.detail = (
                    f"harness error: {type(error).__name__}: {error} "
                    f"({Path(where.filename).name}:{where.lineno})"
                )
            finally:
                for driver in (client, server):
                    if driver is not None:
                        with contextlib.suppress(Exception):
                            driver.stop()
                for capture in captures:
                    with contextlib.suppress(Exception):
                        capture.stop()
                # A passing cell whose figure is still to be judged against the kernel's
                # keeps them too, until the judgement (`matrix.judge_against_kernel`)
                judged_later = result.verdict == "pass" and scenario.versus_kernel is not None
                if (result.verdict == "fail" or judged_later) and artifacts is not None:
                    result.artifacts = _keep(result, scratch, artifacts, client, server)
    except Exception as error:  # the topology itself failed
        result.verdict, result.detail = "fail", f"topology: {type(error).__name__}: {error}"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result.duration_s = round(time.monotonic() - started, 2)
    return result


def _keep(
    result: CellResult, scratch: Path, artifacts: Path, client: Iut | None, server: Iut | None
) -> list[str]:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{result.scenario}.{result.client}.{result.server}")
    directory = artifacts / stem
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    for kept in [*scratch.glob("*.pcap"), *scratch.glob("*-state.txt")]:
        shutil.copy(kept, directory / kept.name)
    _write_report(directory, "client", client)
    _write_report(directory, "server", server)
    return [str(directory)]
