"""Routing as Linux does, against Linux, in the set-up users have (issue 10, item 1).

`topologies.user_dual_homed`: paths 203.0.113.0/24 (eth0) and 198.18.0.0/24 (eth1), the
kernel host without policy rules except the client's source rule for 198.18.0.1. A
Linux client with `ip mptcp endpoint add 198.18.0.1 dev eth1 subflow` joins the
server's *first* address from its second interface: the join SYN reaches the server's
eth1 for 203.0.113.2, and the answer must leave by the connected route (eth1), not by
the interface that owns 203.0.113.2 (the subflow exists only on the client's eth1: a
SYN/ACK arriving on eth0 gets a RST). Every claim about which path carried what is
checked with the links' kernel byte counters, from outside the stack; every transfer
is SHA-256 checked end to end.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

import topologies
from stack.api import Stack
from stack.cli import endpoints_of, parse_interface
from stack.host import Host
from stack.mptcp.pm import Limits
from stack.route import InterfaceConfig
from stack.tcp_host import TcpServer
from stack.tests.test_mptcp_multipath import (
    Session,
    assert_transfer_intact,
    established_subflows,
    wait_until,
)
from testbed import Topology
from testbed.apps import make_socket
from testbed.mptcp import KernelMptcp
from testbed.spec import LinkProps

pytestmark = [pytest.mark.netns, pytest.mark.kernel]

PORT = 8000
ADDRESSES = {
    "client": ("203.0.113.1", "198.18.0.1"),
    "server": ("203.0.113.2", "198.18.0.2"),
}
PATHS = ("path1", "path2")
# 40 Mbit/s a path: one path cannot take the whole transfer, so both carry data
RATE = LinkProps(rate="40mbit")
# MIB counters that say a join went wrong (refused, reset, HMAC, no socket to send from)
JOIN_FAILURES = (
    "MPJoinNoTokenFound",
    "MPJoinSynAckHMacFailure",
    "MPJoinAckHMacFailure",
    "MPJoinRejected",
    "MPJoinSynTxCreatSkErr",
    "MPJoinSynTxBindErr",
    "MPJoinSynTxConnectErr",
    "MPRstTx",
    "MPRstRx",
)

Sent = dict[tuple[str, str], int]  # (link, host) -> bytes that host put on the link


def sent(topo: Topology) -> Sent:
    """Bytes each end host has put on each path so far (the kernel's interface counters)."""
    return {(link, host): topo.links[link].sent_by(host) for link in PATHS
            for host in ("client", "server")}  # fmt: skip


def since(topo: Topology, start: Sent) -> Sent:
    return {key: value - start[key] for key, value in sent(topo).items()}


@contextmanager
def user_session(
    topology: Callable[..., Topology], stack_role: str, stack_flags: tuple[str, str] = ("", "")
) -> Iterator[Session]:
    """The stack on one end of user_dual_homed (no gateways; endpoint flags as given),
    the kernel on the other as users set it up: limits of 2 subflows, and on the
    client the `subflow` endpoint on eth1 (`dev eth1`), nothing announced."""
    topo = topology(topologies.user_dual_homed((RATE, RATE), bare=(stack_role,)), capture=True)
    kernel_role = "server" if stack_role == "client" else "client"
    kernel = KernelMptcp(topo.hosts[kernel_role].ns)
    kernel.set_limits(subflows=2, add_addr_accepted=0)
    if kernel_role == "client":
        kernel.add_endpoint(ADDRESSES["client"][1], flags={"subflow"}, ifname="eth1")
    specs = [parse_interface(f"eth{i}={ADDRESSES[stack_role][i]}/24{stack_flags[i]}")
             for i in (0, 1)]  # fmt: skip
    try:
        with Stack([s.config for s in specs], netns=topo.hosts[stack_role].netns,
                   endpoints=endpoints_of(specs), limits=Limits(2, 0)) as stack:  # fmt: skip
            yield Session(topo, stack_role, stack, kernel)
    finally:
        kernel.close()


def open_connection(s: Session) -> None:
    """The client connects to the server's first address; nobody announces anything."""
    server = ADDRESSES["server"][0]
    ns = s.topo.hosts[s.kernel_role].ns
    if s.stack_role == "client":
        s.listener = make_socket(ns, "0.0.0.0", "mptcp")
        s.listener.bind(("0.0.0.0", PORT))
        s.listener.listen(4)  # kept open: the kernel takes joins through it
        s.sock = s.stack.connect((server, PORT))
        s.kernel_sock, _ = s.listener.accept()
    else:
        listening = s.stack.listen(PORT)
        s.kernel_sock = make_socket(ns, server, "mptcp")
        s.kernel_sock.settimeout(10)
        s.kernel_sock.connect((server, PORT))
        s.sock = listening.accept(10)
    s.kernel_sock.settimeout(60)


def start_joined(s: Session, stack_mode: str, kernel_mode: str, size: int) -> Sent:
    """Connect, start both applications, wait for the join from the client's eth1;
    returns the link counters from before the connection."""
    start = sent(s.topo)
    open_connection(s)
    s.run_apps(stack_mode, kernel_mode, size)
    wait_until(lambda: len(established_subflows(s)) == 2, 10, "the join from eth1", s)
    return start


def assert_no_join_failure(moved: dict[str, int]) -> None:
    failures = {name: moved[name] for name in JOIN_FAILURES if moved.get(name)}
    assert not failures, f"the kernel counted join failures: {failures} (all moved: {moved})"


def assert_both_paths_both_ways(carried: Sent, at_least: int) -> None:
    thin = {key: value for key, value in carried.items() if value < at_least}
    assert not thin, f"bytes put on a path below {at_least}: {thin} (all: {carried})"


def test_replies_to_a_socket_bound_to_eth1_leave_through_eth1(
    topology: Callable[..., Topology],
) -> None:
    """The host layer on its own (plain TCP): a Linux socket bound to eth1 (as a
    `dev eth1` subflow is) from 198.18.0.1 reaches 203.0.113.2 through our eth1. Our
    SYN/ACK and data, and the reset of a closed port, go back out of eth1 (the connected
    route), the only interface where that socket exists: the connection works and the
    closed port is refused at once. With the old routing both went out of eth0, where
    Linux finds no such socket: the connect timed out instead."""
    topo = topology(topologies.user_dual_homed(bare=("server",)), capture=True)
    configs = [InterfaceConfig.parse(f"eth{i}={ADDRESSES['server'][i]}/24") for i in (0, 1)]
    host = Host(configs, netns=topo.hosts["server"].netns)
    host.start()
    try:
        server = TcpServer(host, PORT)

        def bound_socket() -> socket.socket:
            with topo.hosts["client"].entered():
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth1")
            sock.bind((ADDRESSES["client"][1], 0))
            sock.settimeout(3)
            return sock

        start = sent(topo)
        with bound_socket() as sock:
            sock.connect((ADDRESSES["server"][0], PORT))
            stream = server.accept(5)
            sock.sendall(b"ping")
            assert stream.recv(4, timeout=5) == b"ping"
            stream.sendall(b"pong", timeout=5)
            assert sock.recv(4) == b"pong"
            stream.close()
        with bound_socket() as sock:
            began = time.monotonic()
            with pytest.raises(ConnectionRefusedError):
                sock.connect((ADDRESSES["server"][0], 4242))
            assert time.monotonic() - began < 2, "refused at once, not after retransmissions"
        carried = since(topo, start)
        assert carried[("path1", "server")] == 0, carried  # nothing of ours went by eth0
        assert host.counters.resets_sent >= 1
    finally:
        host.close()


@pytest.mark.parametrize("stack_role", ["server", "client"])
def test_the_client_joins_the_first_address_from_its_second_interface(
    topology: Callable[..., Topology], stack_role: str
) -> None:
    """The client (203.0.113.1 on eth0, 198.18.0.1 on eth1) connects to 203.0.113.2 and
    joins it from 198.18.0.1; it sends 8 MB, the server echoes them.

    Stack server (no flags, no gateways), Linux client (`dev eth1` endpoint): the join
    comes in on our eth1, our SYN/ACK goes back out of eth1 (the connected route), the
    join completes (the client's MPJoinSynAckRx, no failure counted) and the client
    ends with 1 joined subflow. With the old routing (out of the interface that owns
    the source) the SYN/ACK went out of eth0, the client answered with a RST, and no
    join ever completed.

    Stack client (`subflow` endpoint on eth1), Linux server without policy rules: the
    join leaves from 198.18.0.1 out of eth1 (the endpoint's interface, as `dev eth1`,
    not the connected route of 203.0.113.0/24 on eth0) and Linux answers by its
    connected route on eth1.

    Both ways: the echo is intact, and both paths carried more than 1 MB in each
    direction by the link counters."""
    size = 8_000_000
    flags = ("", ",subflow") if stack_role == "client" else ("", "")
    modes = ("source", "echo") if stack_role == "client" else ("echo", "source")
    with user_session(topology, stack_role, flags) as s, s.kernel.counters_delta() as moved:
        start = start_joined(s, *modes, size)
        stack_end, kernel_end = s.finish()
        carried = since(s.topo, start)
    assert_transfer_intact(stack_end, kernel_end, size)
    client_end, server_end = (
        (stack_end, kernel_end) if stack_role == "client" else (kernel_end, stack_end)
    )
    assert client_end.sha256_received == server_end.sha256_sent == client_end.sha256_sent
    if stack_role == "server":
        assert moved.get("MPJoinSynTx") == moved.get("MPJoinSynAckRx") == 1, moved
    else:
        assert moved.get("MPJoinSynRx") == moved.get("MPJoinAckRx") == 1, moved
    assert_no_join_failure(moved)
    assert kernel_end.mptcp["subflows"] == 1, kernel_end.mptcp  # joined subflows
    [join] = [f for f in stack_end.mptcp["subflows"] if not f["initial"]]
    ends = {join["local"].rsplit(":", 1)[0], join["remote"].rsplit(":", 1)[0]}
    assert ends == {ADDRESSES["client"][1], ADDRESSES["server"][0]} and not join["error"], join
    assert f":{PORT}" in join["local" if stack_role == "server" else "remote"], join
    assert_both_paths_both_ways(carried, 1_000_000)


def test_mp_prio_from_the_linux_client_moves_our_download_off_path2(
    topology: Callable[..., Topology],
) -> None:
    """The stack serves a 24 MB download to the Linux client of the first test. Once
    path2 has carried 1 MB of it (the join works), the client marks its eth1 endpoint
    backup: its MP_PRIO reaches us on the second subflow, and from 0.5 s after we saw
    it (what was in flight lands), less than 2 % of what we put on the wire goes on
    path2, by the link counters. With the old routing path2 never carried the 1 MB."""
    size = 24_000_000
    with user_session(topology, "server") as s, s.kernel.counters_delta() as moved:
        start = start_joined(s, "source", "sink", size)
        wait_until(lambda: since(s.topo, start)[("path2", "server")] > 1_000_000, 15,
                   "1 MB of the download on path2", s)  # fmt: skip
        s.kernel.set_endpoint_backup(ADDRESSES["client"][1], True)
        wait_until(lambda: s.stack_subflows()[1]["backup_remote"], 5, "our view of MP_PRIO", s)
        # not synchronisation: the criterion's grace for data already in flight on path2
        time.sleep(0.5)
        window = sent(s.topo)
        assert not s.reports, "the download ended before the measured window"
        stack_end, kernel_end = s.finish()
        after = since(s.topo, window)
    assert_transfer_intact(stack_end, kernel_end, size)
    assert moved.get("MPJoinSynAckRx") == 1 and moved.get("MPPrioTx", 0) >= 1, moved
    assert stack_end.mptcp["counters"]["MPPrioRx"] >= 1
    assert_no_join_failure(moved)
    total = after[("path1", "server")] + after[("path2", "server")]
    assert total > 2_000_000, after  # the window measured something
    assert after[("path2", "server")] < 0.02 * total, after
