"""Multipath between our stack and the kernel, both ways round, over two real paths:
MP_JOIN, ADD_ADDR, backup semantics (no data on a backup path while the regular one is
up, failover with nothing lost, return), and MP_PRIO on a live connection. Every
transfer is SHA-256 checked at both ends; the kernel's MIB counters and diag are the
peer's own account of what happened.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

import topologies
from stack.__main__ import run_connection
from stack.api import MptcpSocket, Stack
from stack.cli import endpoints_of, parse_interface
from stack.mptcp.connection import MptcpConfig
from stack.mptcp.pm import Limits
from testbed import Topology
from testbed.apps import AppReport, make_socket, play, stream_sha256
from testbed.mptcp import KernelMptcp
from testbed.spec import LinkProps

pytestmark = [pytest.mark.netns, pytest.mark.kernel]

PORT = 8000
ADDRESSES = {
    "client": ("192.0.2.1", "198.51.100.1"),
    "server": ("192.0.2.2", "198.51.100.2"),
}


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str, s: Session | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            seen = s.stack_subflows() if s is not None and s.sock is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; {seen}")
        time.sleep(0.01)


@dataclass
class Session:
    """One connection between the stack (one host) and the kernel (the other)."""

    topo: Topology
    stack_role: str
    stack: Stack
    kernel: KernelMptcp
    sock: MptcpSocket | None = None  # the stack's end
    kernel_sock: Any = None
    listener: Any = None
    reports: dict[str, AppReport] = field(default_factory=dict)
    threads: list[threading.Thread] = field(default_factory=list)
    addresses: dict[str, tuple[str, str]] = field(default_factory=lambda: ADDRESSES)

    @property
    def kernel_role(self) -> str:
        return "server" if self.stack_role == "client" else "client"

    def start(self, stack_mode: str, kernel_mode: str, size: int) -> None:
        """Open the connection and start both applications in threads."""
        self.open()
        self.run_apps(stack_mode, kernel_mode, size)

    def open(self) -> None:
        ns = self.topo.hosts[self.kernel_role].ns
        server_address = self.addresses["server"][0]
        if self.stack_role == "client":
            listener = make_socket(ns, "0.0.0.0", "mptcp")
            listener.bind(("0.0.0.0", PORT))
            listener.listen(4)
            self.sock = self.stack.connect((server_address, PORT))
            self.kernel_sock, _ = listener.accept()
            self.listener = listener  # kept open: the kernel takes joins through it
        else:
            server = self.stack.listen(PORT)
            self.kernel_sock = make_socket(ns, server_address, "mptcp")
            self.kernel_sock.connect((server_address, PORT))
            self.sock = server.accept(10)
        self.kernel_sock.settimeout(60)

    def run_apps(self, stack_mode: str, kernel_mode: str, size: int) -> None:
        kernel_size = size if kernel_mode == "source" else 0
        stack_size = size if stack_mode == "source" else 0

        def kernel_app() -> None:
            report = AppReport(kernel_mode, self.kernel_role, "mptcp")
            play(self.kernel_sock, kernel_mode, kernel_size, report)
            self.reports["kernel"] = report

        def stack_app() -> None:
            assert self.sock is not None
            self.reports["stack"] = run_connection(self.sock, stack_mode, stack_size,
                                                   self.stack_role)  # fmt: skip

        self.threads = [threading.Thread(target=kernel_app), threading.Thread(target=stack_app)]
        for thread in self.threads:
            thread.start()

    def finish(self, timeout: float = 90) -> tuple[AppReport, AppReport]:
        for thread in self.threads:
            thread.join(timeout)
        if self.listener is not None:
            self.listener.close()
        return self.reports["stack"], self.reports["kernel"]

    def stack_subflows(self) -> list[dict[str, Any]]:
        assert self.sock is not None
        return self.sock.info()["subflows"]  # type: ignore[no-any-return]


@contextmanager
def session(
    topology: Callable[..., Topology],
    stack_role: str,
    stack_flags: tuple[str, str] = ("", ""),
    *,
    limits: Limits = Limits(2, 2),  # noqa: B008  (frozen)
    config: MptcpConfig | None = None,
    props: tuple[LinkProps, LinkProps] | None = None,
    spec: Callable[..., Any] = topologies.dual_homed,
    addresses: dict[str, tuple[str, str]] = ADDRESSES,
) -> Iterator[Session]:
    topo = topology(spec(props, bare=(stack_role,)))
    specs = [
        parse_interface(f"eth{i}={addresses[stack_role][i]}/24{stack_flags[i]}") for i in (0, 1)
    ]
    kernel = KernelMptcp(topo.hosts["server" if stack_role == "client" else "client"].ns)
    kernel.set_limits(subflows=4, add_addr_accepted=4)
    try:
        stack = Stack([s.config for s in specs], netns=topo.hosts[stack_role].netns,
                      config=config, endpoints=endpoints_of(specs), limits=limits)  # fmt: skip
        with stack:
            yield Session(topo, stack_role, stack, kernel, addresses=addresses)
    finally:
        kernel.close()


def assert_transfer_intact(
    stack_end: AppReport, kernel_end: AppReport, size: int, context: object = None
) -> None:
    expected = stream_sha256(size)
    assert not stack_end.error and not kernel_end.error, (
        stack_end.error, kernel_end.error, context, stack_end.mptcp, kernel_end.mptcp,
    )  # fmt: skip
    sent, received = (stack_end, kernel_end) if stack_end.bytes_sent else (kernel_end, stack_end)
    assert sent.bytes_sent == received.bytes_received == size
    assert sent.sha256_sent == received.sha256_received == expected


def established_subflows(s: Session) -> list[dict[str, Any]]:
    """Subflows that came up (and may since have closed in order, if the transfer ended)."""
    return [f for f in s.stack_subflows() if f["state"] in ("established", "closed")]


@pytest.mark.parametrize("stack_sends", [True, False], ids=["stack-sends", "kernel-sends"])
@pytest.mark.parametrize("stack_role", ["client", "server"])
def test_two_subflows_carry_20_mb(
    topology: Callable[..., Topology], stack_role: str, stack_sends: bool
) -> None:
    """2 subflows come up (the stack's client joins through a subflow endpoint; the
    kernel's client joins an address the stack announces); 20 MB cross intact in each
    direction; the kernel's MPJoin counters agree with ours. (Whether the lowest-RTT
    scheduler needs the second path depends on the first one's room: not asserted.)"""
    size = 20_000_000
    flags = ("", ",subflow") if stack_role == "client" else ("", ",signal")
    with session(topology, stack_role, flags) as s, s.kernel.counters_delta() as kernel:
        s.start("source" if stack_sends else "sink", "sink" if stack_sends else "source", size)
        wait_until(lambda: len(established_subflows(s)) == 2, 5, "the second subflow", s)
        stack_end, kernel_end = s.finish()
        host = s.stack.host  # if it failed: the stack's loop and the kernel's account
        context = {"host": vars(host.counters), "last_error": host.last_error}
    assert_transfer_intact(stack_end, kernel_end, size, {**context, "kernel MIB": kernel})
    subflows = stack_end.mptcp["subflows"]
    ours = stack_end.mptcp["counters"]
    assert len(subflows) == 2 and all(not f["error"] for f in subflows), subflows
    if stack_role == "client":
        assert ours["MPJoinSynTx"] == kernel["MPJoinSynRx"] == 1
        assert ours["MPJoinSynAckRx"] == kernel["MPJoinAckRx"] == 1
    else:
        assert kernel["MPJoinSynTx"] == ours["MPJoinSynRx"] == 1
        assert kernel["MPJoinSynAckRx"] == ours["MPJoinAckRx"] == 1
        assert ours["AddAddrTx"] == kernel["AddAddr"] == 1  # announced once, echoed
        assert kernel["EchoAddTx"] == ours["EchoAdd"] == 1


def test_kernel_add_addr_leads_to_a_stack_subflow(topology: Callable[..., Topology]) -> None:
    """A kernel signal endpoint: the stack (no endpoint flags) echoes the ADD_ADDR, and
    opens a subflow to the announced address from its initial address, as the kernel."""
    size = 20_000_000
    with session(topology, "client") as s, s.kernel.counters_delta() as kernel:
        s.kernel.add_endpoint(ADDRESSES["server"][1], flags={"signal"})
        # the kernel announces once it is fully established: after our first data
        s.start("source", "sink", size)
        wait_until(lambda: len(established_subflows(s)) == 2, 5, "the join to the address", s)
        stack_end, kernel_end = s.finish()
    assert_transfer_intact(stack_end, kernel_end, size)
    join = stack_end.mptcp["subflows"][1]
    # from the address routing picks for the announced one (its endpoint's ID), as Linux
    assert join["remote"].startswith(ADDRESSES["server"][1]), join
    assert join["local"].startswith(ADDRESSES["client"][1]) and join["local_id"] == 2, join
    assert kernel["AddAddrTx"] == 1 and kernel["EchoAdd"] == 1
    assert stack_end.mptcp["counters"]["AddAddr"] == 1
    assert kernel["MPJoinSynRx"] == kernel["MPJoinAckRx"] == 1


BACKUP_CASES = [
    # (stack role, stack's interface flags, kernel endpoint (address, flags) or None)
    pytest.param("client", ("", ",subflow,backup"), None, id="stack-client-declares"),
    pytest.param(
        "client",
        ("", ""),
        (ADDRESSES["server"][1], {"signal", "backup"}),
        id="kernel-server-declares",
    ),
    pytest.param("server", ("", ",signal,backup"), None, id="stack-server-declares"),
    pytest.param(
        "server",
        ("", ""),
        (ADDRESSES["client"][1], {"subflow", "backup"}),
        id="kernel-client-declares",
    ),
]


@pytest.mark.parametrize(("stack_role", "stack_flags", "kernel_endpoint"), BACKUP_CASES)
def test_backup_subflow_carries_nothing_while_regular_path_is_up(
    topology: Callable[..., Topology],
    stack_role: str,
    stack_flags: tuple[str, str],
    kernel_endpoint: tuple[str, set[str]] | None,
) -> None:
    """The second subflow is backup, declared by one side only (the B bit of its MP_JOIN
    SYN or SYN/ACK): neither side sends data on it while the first path works."""
    size = 4_000_000
    with session(topology, stack_role, stack_flags) as s, s.kernel.counters_delta() as kernel:
        if kernel_endpoint is not None:
            s.kernel.add_endpoint(kernel_endpoint[0], flags=kernel_endpoint[1])
        s.start("echo" if stack_role == "server" else "source",
                "echo" if stack_role == "client" else "source", size)  # fmt: skip
        wait_until(lambda: len(established_subflows(s)) >= 2, 5, "the backup subflow", s)
        wait_until(lambda: s.reports.get("stack") or _moved(s) > size // 2, 30, "the transfer")
        kernel_view = s.kernel.subflows()
        stack_end, kernel_end = s.finish()
    assert stack_end.sha256_received == kernel_end.sha256_received == stream_sha256(size)
    subflows = stack_end.mptcp["subflows"]
    backup = [f for f in subflows if f["backup_local"] or f["backup_remote"]]
    assert len(backup) == 1, subflows
    declared_by_us = kernel_endpoint is None
    assert backup[0]["backup_local" if declared_by_us else "backup_remote"], backup
    # our scheduler keeps off it (resends after a stall excepted, as Linux's)
    ours = stack_end.mptcp["counters"]
    assert_backup_unused(backup[0]["bytes_sent"], {"MPTCPRetrans": 0, "SubflowStale": 0,
                         "resent": 0}, {"MPTCPRetrans": ours.get("MPTCPRetrans", 0),
                         "SubflowStale": ours.get("SubflowStale", 0),
                         "resent": backup[0].get("bytes_resent", 0)})  # fmt: skip
    kernel_backups = [f for f in kernel_view if f.backup_local or f.backup_remote]
    assert len(kernel_backups) == 1  # the kernel's diag sees the same backup subflow
    if declared_by_us:  # the kernel honours our B bit (its resends after a stall excepted)
        theirs = {k: kernel.get(k, 0) for k in ("MPTCPRetrans", "SubflowStale")}
        assert_backup_unused(kernel_backups[0].bytes_sent, dict.fromkeys(theirs, 0), theirs)
        assert_backup_unused(backup[0]["bytes_received"], dict.fromkeys(theirs, 0), theirs)


def _moved(s: Session) -> int:
    return sum(f["bytes_sent"] + f["bytes_received"] for f in s.stack_subflows())


def _bytes_on(s: Session, index: int, key: str) -> int:
    return int(s.stack_subflows()[index][key])


@pytest.mark.parametrize("stack_role", ["client", "server"])
def test_failover_to_backup_and_back(topology: Callable[..., Topology], stack_role: str) -> None:
    """The regular path goes down mid-transfer: the rest flows over the backup with
    nothing lost; when it comes back, traffic returns to it."""
    size = 30_000_000
    flags = ("", ",subflow,backup") if stack_role == "client" else ("", "")
    # 40 Mbit/s paths: the transfer outlasts the cut and the return
    rate = LinkProps(rate="40mbit")
    with session(topology, stack_role, flags, props=(rate, rate)) as s:
        if stack_role == "server":
            s.kernel.add_endpoint(ADDRESSES["client"][1], flags={"subflow", "backup"})
        s.start("source", "sink", size)  # the stack sends: its scheduler is under test
        wait_until(lambda: len(established_subflows(s)) == 2, 5, "the backup subflow", s)
        wait_until(lambda: _bytes_on(s, 0, "bytes_sent") > 2_000_000, 10, "data on path 1")
        # nothing on the backup while path 1 works (resends after a stall excepted)
        assert_backup_unused(
            _bytes_on(s, 1, "bytes_sent"),
            dict.fromkeys(("MPTCPRetrans", "SubflowStale", "resent"), 0),
            _resend_evidence(s, False),
        )
        s.topo.links["path1"].down()
        wait_until(lambda: _bytes_on(s, 1, "bytes_sent") > 2_000_000, 15, "data on the backup")
        s.topo.links["path1"].up()
        on_regular = _bytes_on(s, 0, "bytes_sent")
        wait_until(lambda: _bytes_on(s, 0, "bytes_sent") > on_regular + 1_000_000, 20,
                   "traffic back on the regular path")  # fmt: skip
        stack_end, kernel_end = s.finish()
    assert_transfer_intact(stack_end, kernel_end, size)


USER_ADDRESSES = {
    "client": ("203.0.113.1", "198.18.0.1"),
    "server": ("203.0.113.2", "198.18.0.2"),
}
MIN_RTO = 0.2  # Linux's TCP_RTO_MIN, the stack's default minimum RTO (MptcpConfig)


def test_blackholed_regular_path_fails_over_within_two_probe_timeouts(
    topology: Callable[..., Topology],
) -> None:
    """Path 1 is blackholed (nftables both ways, the links stay up) while the stack
    uploads to the kernel over 100 Mbit/s paths, with a backup subflow on path 2.
    Linux's MPTCP-level retransmission timer runs with the regular subflow's pending
    timer as its interval (its tail loss probe's: 2 SRTT, at least 10 ms here): the
    first firing after the last ACK counts the silent subflow, the second, after the
    same interval, sends the oldest unacknowledged data on the backup. The queue delay
    cap (stack/tcp/delaycap.py) keeps the tbf queue, and so the RTT, small (about
    10-20 ms) and the path free of losses: two intervals are well within the 200 ms
    minimum RTO, which the stack used to wait on top of a probe timeout (about 230 ms).
    The send buffer is the default (4 MB): a small one (128 KB, 10 ms at this rate)
    ran dry while a loaded machine held the application back, and with one segment in
    flight the probe timeout includes the worst-case delayed ACK (200 ms), as Linux's
    (338 ms once). Measured from the link counters, as the interop matrix does."""
    size = 12_000_000
    rate = LinkProps(rate="100mbit")
    # user_dual_homed: the kernel answers the join (from our eth1 to its first address)
    # by its connected route, so the backup subflow lies on path 2 both ways (the
    # testbed's source rules would send its ACKs over path 1, into the blackhole)
    with session(topology, "client", ("", ",subflow,backup"), limits=Limits(2, 0),
                 props=(rate, rate), spec=topologies.user_dual_homed,
                 addresses=USER_ADDRESSES) as s:  # fmt: skip
        s.start("source", "sink", size)
        wait_until(lambda: len(established_subflows(s)) == 2, 5, "the backup subflow", s)
        # past the slow start's transient: its overshoot queues up to 700 KB (50 ms)
        # until the cap (or a loss) drains it, and the cut is about the steady state
        wait_until(lambda: _bytes_on(s, 0, "bytes_sent") > 5_000_000, 10, "data on path 1")
        # nothing on the backup while path 1 works (resends after a stall excepted)
        assert_backup_unused(
            _bytes_on(s, 1, "bytes_sent"),
            dict.fromkeys(("MPTCPRetrans", "SubflowStale", "resent"), 0),
            _resend_evidence(s, False),
        )
        path1, path2 = s.topo.links["path1"], s.topo.links["path2"]
        at_cut = path2.sent_by("client")
        cut = time.monotonic()
        path1.blackhole(True)
        deadline = cut + 10
        while path2.sent_by("client") - at_cut <= 32_000:
            assert time.monotonic() < deadline, f"no data on the backup path: {s.stack_subflows()}"
            time.sleep(0.001)  # polling the link counters
        waited = time.monotonic() - cut
        stack_end, kernel_end = s.finish()
    assert_transfer_intact(stack_end, kernel_end, size)
    assert stack_end.mptcp["counters"].get("MPTCPRetrans", 0) >= 1  # the data-level timer
    assert waited < MIN_RTO, f"{waited * 1000:.0f} ms from the cut to data on the backup path"


@pytest.mark.parametrize("ours", [True, False], ids=["our-mp-prio", "kernel-mp-prio"])
@pytest.mark.parametrize("stack_role", ["client", "server"])
def test_mp_prio_on_a_live_connection(
    topology: Callable[..., Topology], stack_role: str, ours: bool
) -> None:
    """MP_PRIO on a live connection. Ours (backup on subflow 1) makes the sending kernel
    stop using that subflow (its MPPrioRx counts it); the kernel's (the backup flag
    flipped on its endpoint of subflow 1, MPPrioTx) makes our sender stop."""
    size = 40_000_000
    kernel_role = "server" if stack_role == "client" else "client"
    kernel_address = ADDRESSES[kernel_role][1]
    kernel_flags = {"signal"} if kernel_role == "server" else {"subflow"}
    rate = LinkProps(rate="200mbit")  # the transfer outlasts the switch
    key = "bytes_received" if ours else "bytes_sent"  # the direction the switch governs
    with (
        session(topology, stack_role, props=(rate, rate)) as s,
        s.kernel.counters_delta() as kernel,
    ):
        s.kernel.add_endpoint(kernel_address, flags=kernel_flags)
        s.start("sink" if ours else "source", "source" if ours else "sink", size)
        assert s.sock is not None
        sock = s.sock
        wait_until(lambda: len(established_subflows(s)) == 2, 5, "the second subflow", s)
        wait_until(lambda: _bytes_on(s, 0, key) + _bytes_on(s, 1, key) > 1_000_000, 10,
                   "data flowing")  # fmt: skip
        if ours:
            sock.set_backup(True, subflow=1)
            wait_until(lambda: s.kernel.counters().get("MPPrioRx", 0) >= 1, 5, "MPPrioRx")
        else:
            s.kernel.set_endpoint_backup(kernel_address, True)
            wait_until(lambda: sock.info()["counters"].get("MPPrioRx"), 5, "our MPPrioRx")
            assert s.stack_subflows()[1]["backup_remote"] is True
        # what was in flight on subflow 1 lands first; then nothing more goes there
        before = _bytes_on(s, 0, key)
        wait_until(lambda: _bytes_on(s, 0, key) > before + 2_000_000, 20,
                   "data on path 1 after MP_PRIO")  # fmt: skip
        on_backup, start = _bytes_on(s, 1, key), _resend_evidence(s, ours)
        before = _bytes_on(s, 0, key)
        wait_until(lambda: _bytes_on(s, 0, key) > before + 3_000_000, 20,
                   "more data on path 1")  # fmt: skip
        moved, end = _bytes_on(s, 1, key) - on_backup, _resend_evidence(s, ours)
        stack_end, kernel_end = s.finish()
    assert_transfer_intact(stack_end, kernel_end, size)
    if ours:
        assert kernel["MPPrioRx"] >= 1 and stack_end.mptcp["counters"]["MPPrioTx"] >= 1
    else:
        assert kernel["MPPrioTx"] >= 1 and stack_end.mptcp["counters"]["MPPrioRx"] >= 1
    # the sender obeys the MP_PRIO: nothing new on the backup, unless its data-level
    # timer found the regular subflow silent (a loaded machine), as Linux allows
    assert_backup_unused(moved, start, end)


def _resend_evidence(s: Session, kernel_sends: bool) -> dict[str, int]:
    """The sender's counters of data-level resends: the kernel's MIB, or ours (with the
    bytes resent on subflow 1)."""
    if kernel_sends:
        counters = s.kernel.counters()
        return {k: counters.get(k, 0) for k in ("MPTCPRetrans", "SubflowStale")}
    assert s.sock is not None
    info = s.sock.info()
    return {**{k: info["counters"].get(k, 0) for k in ("MPTCPRetrans", "SubflowStale")},
            "resent": info["subflows"][1].get("bytes_resent", 0)}  # fmt: skip


def assert_backup_unused(moved: int, start: dict[str, int], end: dict[str, int]) -> None:
    """No new data on the backup between two readings of `_resend_evidence`: bytes there
    are resends (data-level retransmissions: MPTCPRetrans) or follow a regular subflow
    judged stale (SubflowStale), never the scheduler's choice."""
    grew = {k: end[k] - start[k] for k in end}
    if "resent" in grew:  # ours: the resent bytes are known exactly
        moved -= grew.pop("resent")
    assert moved == 0 or any(grew.values()), (moved, grew)


def test_removed_endpoint_sends_remove_addr(topology: Callable[..., Topology]) -> None:
    """Our announced address goes away mid-transfer: the kernel gets REMOVE_ADDR (its
    RmAddr counts it), the subflow to that address closes, and the transfer finishes
    intact on the first path."""
    size = 20_000_000
    rate = LinkProps(rate="200mbit")  # the transfer outlasts the removal
    with (
        session(topology, "server", ("", ",signal"), props=(rate, rate)) as s,
        s.kernel.counters_delta() as kernel,
    ):
        s.start("sink", "source", size)
        wait_until(lambda: len(established_subflows(s)) == 2, 5, "the join to our address", s)
        wait_until(lambda: _bytes_on(s, 1, "bytes_received") > 500_000, 10, "data on path 2")
        s.stack.remove_endpoint(ADDRESSES["server"][1])
        wait_until(lambda: s.kernel.counters().get("RmAddr", 0) >= 1, 5, "the kernel's RmAddr")
        wait_until(lambda: s.stack_subflows()[1]["state"] == "failed", 5, "the subflow's end", s)
        stack_end, kernel_end = s.finish()
    assert_transfer_intact(stack_end, kernel_end, size)
    assert kernel["RmAddr"] == 1 and stack_end.mptcp["counters"]["RmAddrTx"] == 1
    assert stack_end.mptcp["subflows"][1]["error"] == "local address removed"


def _send_queue(s: Session, local: str) -> int:
    """The kernel's Send-Q (bytes not yet acknowledged) of its subflow from `local`."""
    host = s.topo.hosts[s.kernel_role]
    out = host.run(["ss", "-tnH", "state", "all", "src", local], check=False).stdout
    return sum(int(line.split()[2]) for line in out.splitlines() if line.strip())


def test_stale_subflow_data_after_the_connection_ended_is_reset(
    topology: Callable[..., Topology],
) -> None:
    """A kernel client uploads with a backup subflow; its regular path is blackholed
    mid-transfer, and the rest goes over the backup. Both ends close once the data is
    through, but the client's regular subflow still holds a queue the data level no
    longer needs. When the path returns, it retransmits that queue: nobody will read it,
    so the stack, whose subflows were fully closed, answers with RST (RFC 1122
    §4.2.2.13; Linux's TCPAbortOnData), as a Linux server does. It used to ACK the whole
    stale queue, a second flow on the path for seconds beside the client's next
    connection (the interop `failover` cell: the kernel then failed over more slowly
    with the stack as receiver)."""
    size = 8_000_000
    rate = LinkProps(rate="100mbit")
    client_first, client_second = USER_ADDRESSES["client"]
    with session(topology, "server", limits=Limits(2, 0), props=(rate, rate),
                 spec=topologies.user_dual_homed, addresses=USER_ADDRESSES) as s:  # fmt: skip
        s.kernel.set_limits(subflows=2, add_addr_accepted=0)
        s.kernel.add_endpoint(client_second, flags={"subflow", "backup"}, ifname="eth1")
        s.start("sink", "source", size)
        wait_until(lambda: len(established_subflows(s)) == 2, 5, "the backup subflow", s)
        path1 = s.topo.links["path1"]
        wait_until(lambda: path1.sent_by("client") > 2_000_000, 10, "data on path 1")
        path1.blackhole(True)
        stack_end, kernel_end = s.finish()
        assert_transfer_intact(stack_end, kernel_end, size)
        stale = _send_queue(s, client_first)
        assert stale > 100_000, f"the client's path-1 subflow holds only {stale} bytes"
        before = path1.sent_by("client")
        path1.blackhole(False)
        # its retransmission timer has backed off: the stale queue comes within seconds
        wait_until(lambda: path1.sent_by("client") > before, 10, "the stale retransmission")
        wait_until(lambda: _send_queue(s, client_first) == 0, 3,
                   "the client's stale subflow to be reset")  # fmt: skip
        resent = path1.sent_by("client") - before
    assert resent < stale // 2, f"{resent} of the {stale} stale bytes were taken again"


@pytest.mark.parametrize("allow", [1, 0])
def test_stack_server_respects_the_clients_c_flag(
    topology: Callable[..., Topology], allow: int
) -> None:
    """RFC 8684 §3.1: a peer that set C in its MP_CAPABLE "MUST NOT" be joined at its
    initial address and port. A Linux client with net.mptcp.allow_join_initial_addr_port
    =0 sets C in its SYN (and SYN/ACK, third ACK); the stack server's `subflow` endpoint
    then tries nothing, where with the client's default it sends a join SYN to the
    client's address (which a Linux client, having no listener, refuses with RST)."""
    size = 2_000_000
    with session(topology, "server", ("", ",subflow")) as s:
        s.topo.hosts["client"].set_sysctl("net.mptcp.allow_join_initial_addr_port", allow)
        s.start("sink", "source", size)
        if allow:
            wait_until(lambda: len(s.stack_subflows()) == 2, 5, "the stack's join SYN", s)
        stack_end, kernel_end = s.finish()
    assert_transfer_intact(stack_end, kernel_end, size)
    attempts = stack_end.mptcp["counters"].get("MPJoinSynTx", 0)
    assert (attempts >= 1) if allow else (attempts == 0), stack_end.mptcp
    assert len(stack_end.mptcp["subflows"]) == (2 if allow else 1), stack_end.mptcp
