"""Two bugs users found, each tested against a real peer in real namespaces:

- ADD_ADDR echo: the stack as a client with no endpoint flags and the default limits
  (2,0: it accepts no announced address) must still echo a kernel server's ADD_ADDR
  (RFC 8684 §3.4.1: the receiver echoes whether or not it uses the address), as Linux
  does: a pure ACK carrying only the echo (E=1, the ID and the address; no DSS, no
  HMAC). The kernel's own counters and a capture on its side are the judges. The
  reported cause (a connection without a path manager returned before queueing the
  echo) is pinned down in the simulator too, with a bad HMAC and a lost echo;
- a refused join SYN/ACK: the stack joining (MP_JOIN initiator) a peer whose SYN/ACK
  fails authentication must answer with a RST only, never an ACK first. The peer is
  the scapy tester of the conformance harness, crafting the SYN/ACK in each variant
  that could lead there (`conformance.cases.mp_join.REFUSED_SYNACKS`).
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from scapy.layers.inet import IP, TCP
from scapy.utils import rdpcap

import topologies
from conformance.cases import Context
from conformance.cases.mp_join import REFUSED_SYNACKS, refused_join_synack
from conformance.cases.steps import exchange
from conformance.iut import NotSupported
from conformance.iut.base import Iut
from conformance.tester import Tester as ScriptedPeer  # (named so pytest does not collect it)
from stack.__main__ import run_connection
from stack.api import MptcpSocket, Stack
from stack.cli import endpoints_of, parse_interface
from stack.mptcp.connection import MptcpConfig, MptcpConnection, send_ack_now
from stack.mptcp.listener import MptcpListener
from stack.mptcp.pm import Limits
from stack.mptcp.token import TokenTable
from stack.sim import PathConfig, Simulator
from stack.tcp.segment import Segment
from stack.tests.test_mptcp_multipath import wait_until
from stack.tests.test_mptcp_sim import CLIENT, FAST, SERVER, App, ClientEnd, ServerEnd
from stack.wire import AddAddrV1, Dss, MpTcpRst
from stack.wire.mptcp import MPTCP_RST_EMPTCP
from stack.wire.scapy_bridge import mptcp_options_from_scapy
from testbed import Topology
from testbed.apps import AppReport, make_socket, play, stream_sha256
from testbed.capture import Capture
from testbed.mptcp import KernelMptcp

PORT = 8000
CLIENT_ADDRESSES = ("192.0.2.1", "198.51.100.1")
SERVER_ADDRESSES = ("192.0.2.2", "198.51.100.2")
ADD_ADDR_TIMEOUT = 1  # s: the kernel's resend interval for an unechoed ADD_ADDR


def _add_addrs(pcap: Path) -> list[tuple[str, AddAddrV1, bool]]:
    """Every v1 ADD_ADDR in a capture: (sender, option, whether a DSS rode with it)."""
    found = []
    for frame in rdpcap(str(pcap)):
        if TCP not in frame or IP not in frame:
            continue
        options = mptcp_options_from_scapy(frame[TCP], version=1)
        for option in options:
            if isinstance(option, AddAddrV1):
                found.append((frame[IP].src, option, any(isinstance(o, Dss) for o in options)))
    return found


# ---------------------------------------------------------------- ADD_ADDR echo

ANNOUNCED = ipaddress.ip_address("198.51.100.2")


def _announced_pair(
    good: bool, drop: Callable[[Segment], bool] | None = None
) -> tuple[MptcpConnection, MptcpConnection, list[AddAddrV1], list[Segment]]:
    """Two of our connections without a path manager (`paths` None: no endpoints, no
    limits: what the sans-I/O API gives), in v1, 640 KB each way; the listener announces
    198.51.100.2 as ID 5 once established (with a wrong HMAC unless `good`). `drop`
    loses client-to-server segments. Returns both ends, the announcements the client
    received and the segments carrying its echoes."""
    config = MptcpConfig(versions=frozenset({1}), tcp=FAST)
    client = MptcpConnection.connect(CLIENT, SERVER, config, TokenTable(), isn_secret=b"a",
                                     now=0.0)  # fmt: skip
    listener = MptcpListener(SERVER[1], config, TokenTable(), isn_secret=b"b")
    a, b = ClientEnd(client), ServerEnd(listener)
    echoes: list[Segment] = []
    received: list[AddAddrV1] = []

    def watch(seg: Segment) -> bool:  # client to server
        if any(isinstance(o, AddAddrV1) and o.echo for o in seg.extra_options):
            echoes.append(seg)
        return drop is not None and drop(seg)

    def watch_back(seg: Segment) -> bool:  # server to client
        received.extend(o for o in seg.extra_options if isinstance(o, AddAddrV1))
        return False

    # 640 KB each way at 64 KB/s: the connection lives 10 s, past every ADD_ADDR resend
    # (1, 3 and 7 s after the first: the stack's schedule)
    sim = Simulator(a, b, a_to_b=PathConfig(rate=64_000, drop=watch),
                    b_to_a=PathConfig(rate=64_000, drop=watch_back))  # fmt: skip
    data = bytes(range(256)) * 2560
    app_a, app_b = App(lambda: client, data), App(lambda: b.msk, data)

    def announce(now: float) -> None:
        server = b.msk
        if server is None or not server.established or server.counters.get("AddAddrTx"):
            return
        server._queue_announce(5, ANNOUNCED, None)
        if not good:
            wrong = server._announce[-1]
            assert isinstance(wrong, AddAddrV1) and wrong.hmac is not None
            server._announce[-1] = AddAddrV1(5, ANNOUNCED, None, bytes(8))
        send_ack_now(server.subflows[0].tcp, now)

    sim.hooks += [app_a, app_b, announce]
    assert sim.run(until=60.0, stop=lambda: bool(client.finished and b.msk and b.msk.finished))
    assert b.msk is not None
    assert app_b.received == data and app_a.received == data
    return client, b.msk, received, echoes


def test_an_add_addr_is_echoed_without_a_path_manager() -> None:
    """The reported bug: a connection with no path manager returned before queueing the
    echo. Echoed once, as Linux echoes: a pure ACK with only the echo (no DSS, no
    HMAC), the same ID and address; the announcer stops resending."""
    client, server, received, echoes = _announced_pair(good=True)
    assert [o.echo for o in received] == [False]  # announced once: never resent
    [echo] = echoes
    options = echo.extra_options
    assert not echo.payload and len(options) == 1, echo
    assert options[0] == AddAddrV1(5, ANNOUNCED, None, None, True)
    assert client.counters["AddAddr"] == client.counters["EchoAddTx"] == 1
    assert server.counters["EchoAdd"] == 1 and "AddAddrRetrans" not in server.counters


def test_an_add_addr_with_a_bad_hmac_is_not_echoed() -> None:
    client, server, received, echoes = _announced_pair(good=False)
    assert echoes == [] and len(received) == 4  # the original and 3 resends, unechoed
    assert client.counters["AddAddrHmacBad"] == 4 and "AddAddr" not in client.counters
    assert "EchoAdd" not in server.counters


def test_a_resent_add_addr_is_echoed_again() -> None:
    """The first echo is lost: the listener resends its ADD_ADDR (1 s later), and the
    client echoes that one too (as Linux: every announcement received is echoed)."""
    lost: list[Segment] = []

    def first_echo(seg: Segment) -> bool:
        if not lost and any(isinstance(o, AddAddrV1) and o.echo for o in seg.extra_options):
            lost.append(seg)
            return True
        return False

    client, server, received, echoes = _announced_pair(good=True, drop=first_echo)
    assert [o.echo for o in received] == [False, False] and len(echoes) == 2
    assert client.counters["AddAddr"] == client.counters["EchoAddTx"] == 2
    assert server.counters["AddAddrRetrans"] == 1 and server.counters["EchoAdd"] == 1


@pytest.mark.netns
@pytest.mark.kernel
def test_stack_without_endpoints_echoes_the_kernels_add_addr(
    topology: Callable[..., Topology], tmp_path: Path
) -> None:
    """A kernel server announces its second address (a `signal` endpoint on eth1) to the
    stack, a client with no endpoint flags and the default limits. The stack echoes it
    once, in Linux's form; the kernel counts the echo (`EchoAdd`) and stops resending
    (`AddAddrTx` stays 1 over more than two of its resend intervals); 4 MB cross intact."""
    size = 4_000_000
    topo = topology(topologies.dual_homed(bare=("client",)))
    server = topo.hosts["server"]
    kernel = KernelMptcp(server.ns)
    capture = Capture(server.ns, "eth0", tmp_path / "server-eth0.pcap")
    listener = make_socket(server.ns, "0.0.0.0", "mptcp")
    try:
        kernel.set_sysctl("net.mptcp.add_addr_timeout", ADD_ADDR_TIMEOUT)
        announced = kernel.add_endpoint(SERVER_ADDRESSES[1], flags={"signal"}, ifname="eth1")
        capture.start()
        listener.bind(("0.0.0.0", PORT))
        listener.listen(4)
        specs = [parse_interface(f"eth{i}={CLIENT_ADDRESSES[i]}/24") for i in (0, 1)]
        reports: dict[str, AppReport] = {}
        # no endpoint flags (flagless endpoints: IDs only) and the default limits
        stack = Stack([s.config for s in specs], netns=topo.hosts["client"].netns,
                      endpoints=endpoints_of(specs), limits=Limits())  # fmt: skip
        with kernel.counters_delta() as moved, stack:
            sock = stack.connect((SERVER_ADDRESSES[0], PORT))
            kernel_sock, _ = listener.accept()
            kernel_sock.settimeout(60)

            def kernel_sink() -> None:
                report = AppReport("sink", "server", "mptcp")
                play(kernel_sock, "sink", 0, report)
                reports["kernel"] = report

            def stack_source() -> None:
                reports["stack"] = run_connection(sock, "source", size, "client")

            threads = [threading.Thread(target=kernel_sink), threading.Thread(target=stack_source)]
            for thread in threads:
                thread.start()
            try:
                # the kernel announces once fully established (after our first data)
                wait_until(lambda: kernel.counters().get("EchoAdd", 0) >= 1, 5, "EchoAdd")
                echoed = kernel.counters()
                # Unechoed, the announcement would be resent every ADD_ADDR_TIMEOUT s:
                # watch for more than two such intervals that it is not.
                window_end = time.monotonic() + 2.5 * ADD_ADDR_TIMEOUT
                while time.monotonic() < window_end:
                    assert kernel.counters().get("AddAddrTx", 0) == echoed.get("AddAddrTx"), (
                        "the kernel resent its ADD_ADDR after our echo"
                    )
                    time.sleep(0.05)
            finally:
                for thread in threads:
                    thread.join(90)
            subflows = sock.info()["subflows"]
        kernel_sock.close()
    finally:
        listener.close()
        capture.stop()
        kernel.close()

    # the transfer, checked at both ends
    stack_end, kernel_end = reports["stack"], reports["kernel"]
    assert not stack_end.error and not kernel_end.error, (stack_end.error, kernel_end.error)
    assert stack_end.bytes_sent == kernel_end.bytes_received == size
    assert stack_end.sha256_sent == kernel_end.sha256_received == stream_sha256(size)
    # the kernel: one announcement, one echo received, nothing resent
    assert moved.get("AddAddrTx") == 1, moved
    assert moved.get("EchoAdd") == 1, moved
    # default limits: the address is not used (no join), only echoed
    assert len(subflows) == 1 and moved.get("MPJoinSynRx", 0) == 0, (subflows, moved)

    # the wire, on the kernel's side: its one ADD_ADDR, and our echo in Linux's form
    seen = _add_addrs(tmp_path / "server-eth0.pcap")
    originals = [(o, dss) for src, o, dss in seen if src == SERVER_ADDRESSES[0] and not o.echo]
    echoes = [(o, dss) for src, o, dss in seen if src == CLIENT_ADDRESSES[0] and o.echo]
    assert len(originals) == 1, seen
    assert len(echoes) == 1, seen
    echo, with_dss = echoes[0]
    assert echo.address_id == announced.id, echo
    assert echo.address == ipaddress.ip_address(SERVER_ADDRESSES[1]) and echo.port is None, echo
    assert echo.hmac is None, echo
    assert not with_dss, "the echo rides with a DSS (Linux sends it alone on a pure ACK)"
    assert not [o for src, o, _ in seen if src == CLIENT_ADDRESSES[0] and not o.echo], seen


# ---------------------------------------------------------------- a refused join SYN/ACK


class InProcessStack(Iut):
    """The stack in this process (`stack.api.Stack`) as the harness's IUT, so that the
    conformance steps drive it and the test can look inside: only what the join cases
    use (limits and endpoints before the start, `connect`)."""

    name: ClassVar[str] = "stack-in-process"
    versions: ClassVar[frozenset[int]] = frozenset({0, 1})
    bare: ClassVar[bool] = True

    def __init__(self, topo: Topology, version: int) -> None:
        super().__init__(topo, "server")
        self.version = version
        self.limits = Limits()
        self.flags: dict[str, str] = {}  # address -> ",subflow,id=3"...
        self.stack: Stack | None = None
        self.sock: MptcpSocket | None = None
        self.connected = threading.Event()
        self._threads: list[threading.Thread] = []

    def set_limits(self, subflows: int, add_addr_accepted: int) -> None:
        self.limits = Limits(subflows, add_addr_accepted)

    def add_endpoint(
        self, address: str, *, flags: Iterable[str] = (), id: int | None = None,
        port: int | None = None, ifname: str | None = None,
    ) -> None:  # fmt: skip
        if self.stack is not None or port is not None:
            raise NotSupported("endpoints before the start, without a port")
        text = "".join(f",{flag}" for flag in sorted(flags))
        self.flags[address] = text + (f",id={id}" if id is not None else "")

    def set_sysctl(self, name: str, value: str | int) -> None:
        raise NotSupported("no sysctls in process")

    def listen(self, port: int, *, mode: str = "echo", nbytes: int = 0) -> None:
        raise NotSupported("the join cases only connect")

    def connect(
        self, address: str, port: int, *, mode: str = "sink", nbytes: int = 0,
        source: str | None = None,
    ) -> None:  # fmt: skip
        specs = [
            parse_interface(f"{ifname}={a.with_prefixlen}{self.flags.get(str(a.ip), '')}")
            for ifname, iface in self.host.interfaces.items()
            for a in iface.addresses
        ]
        config = MptcpConfig(versions=frozenset({self.version}))
        self.stack = Stack([s.config for s in specs], netns=self.host.netns, config=config,
                           endpoints=endpoints_of(specs), limits=self.limits)  # fmt: skip

        def run() -> None:
            assert self.stack is not None
            self.sock = self.stack.connect((address, port))
            self.connected.set()
            run_connection(self.sock, mode, nbytes, "client")

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._threads.append(thread)

    def info(self) -> dict[str, Any]:
        assert self.connected.wait(5) and self.sock is not None
        return self.sock.info()

    def stop(self) -> None:
        if self.sock is not None:
            self.sock.abort()  # the application ends at once (a RST to the tester)
        for thread in self._threads:  # before the stack goes: the application closes on it
            thread.join(10)
        if self.stack is not None:
            self.stack.close()


@pytest.mark.netns
@pytest.mark.parametrize("variant", sorted(REFUSED_SYNACKS))
@pytest.mark.parametrize("version", [1, 0])
def test_a_refused_join_synack_gets_only_a_rst(
    topology: Callable[..., Topology], variant: str, version: int
) -> None:
    """The stack joins (a `subflow` endpoint on eth1) a peer crafted by the scapy tester,
    which answers the join SYN with a SYN/ACK the stack must refuse: a wrong HMAC-B
    (once, twice, or on the other interface), no MP_JOIN, or a malformed one. The first
    segment the stack sends on the subflow after it is a RST (in v1 with MP_TCPRST
    reason 1, not transient, as Linux), never an ACK, and nothing but RSTs follow; the
    connection goes on over its first subflow, and the failed path is not joined again."""
    topo = topology(topologies.dual_homed(bare=("client", "server")))
    with ScriptedPeer(topo, "client", "server") as tester:
        iut = InProcessStack(topo, version)
        try:
            ctx = Context(tester, iut, topo, version)
            conn, first, rst = refused_join_synack(ctx, variant, mode="echo")
            echoed = exchange(ctx, conn, first, b"still one subflow", on=first)
            assert echoed.payload == b"still one subflow"
            info = iut.info()
        finally:
            iut.stop()
    reset = rst.option(MpTcpRst)
    if version == 1:
        assert reset is not None and reset.reason == MPTCP_RST_EMPTCP, rst.describe()
        assert not reset.transient, rst.describe()
    else:
        assert reset is None, rst.describe()
    initial, join = info["subflows"]
    assert initial["state"] == "established" and not initial["error"], initial
    assert join["state"] == "failed" and join["error"], join
    counters = info["counters"]
    assert counters["MPJoinSynTx"] == 1 and counters["SubflowReset"] == 1, counters
    hmac_failed = variant.startswith("bad_hmac")
    assert counters.get("MPJoinSynAckHMacFailure", 0) == (1 if hmac_failed else 0), counters
    # the path failed for good (our own reset: no re-join until its address returns)
    assert "MPJoinSynAckRx" not in counters and counters["SubflowFailed"] == 1, counters
