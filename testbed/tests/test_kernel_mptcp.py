"""Kernel MPTCP control through netlink, against the real kernel in fresh namespaces."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

import topologies
from testbed import Topology
from testbed.errors import KernelMptcpError
from testbed.mptcp import IPPROTO_MPTCP, MPTCP_INFO, SOL_MPTCP, KernelMptcp, Subflow
from testbed.netns import Namespace
from testbed.process import run
from testbed.tests.test_process import linked_namespaces, wait_until

T = TypeVar("T")

pytestmark = [pytest.mark.netns, pytest.mark.kernel]


@pytest.fixture
def one_path() -> Iterator[tuple[KernelMptcp, KernelMptcp]]:
    with linked_namespaces(1) as (a, b), KernelMptcp(a) as ka, KernelMptcp(b) as kb:
        yield ka, kb


@pytest.fixture
def two_paths() -> Iterator[tuple[KernelMptcp, KernelMptcp]]:
    """Client a and server b over two veth paths; the client's kernel opens a second
    subflow from 198.51.100.1 (a `subflow` endpoint) on every connection."""
    with linked_namespaces(2) as (a, b), KernelMptcp(a) as ka, KernelMptcp(b) as kb:
        for side in (ka, kb):
            side.set_limits(subflows=2, add_addr_accepted=2)
        ka.add_endpoint("198.51.100.1", flags={"subflow"}, ifname="eth1")
        yield ka, kb


@contextlib.contextmanager
def mptcp_connection(
    client: Namespace, server: Namespace, address: str = "192.0.2.2", port: int = 5100
) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected (client socket, accepted server socket) pair over IPPROTO_MPTCP, with
    a byte exchanged both ways so that the connection is fully established."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with server.entered():
        listener = socket.socket(family, socket.SOCK_STREAM, IPPROTO_MPTCP)
    with client.entered():
        conn = socket.socket(family, socket.SOCK_STREAM, IPPROTO_MPTCP)
    with listener, conn:
        listener.bind((address, port))
        listener.listen(1)
        listener.settimeout(5)
        conn.settimeout(5)
        conn.connect((address, port))
        accepted, _ = listener.accept()
        with accepted:
            accepted.settimeout(5)
            conn.sendall(b"c")
            assert accepted.recv(1) == b"c"
            accepted.sendall(b"s")
            assert conn.recv(1) == b"s"
            yield conn, accepted


def established(kernel: KernelMptcp, count: int) -> list[Subflow]:
    """The subflows, once there are `count` of them and all are fully established."""
    flows = kernel.subflows()
    return flows if len(flows) == count and all(f.fully_established for f in flows) else []


def info_token(sock: socket.socket) -> int:
    """mptcpi_token of struct mptcp_info (offset 12), read by getsockopt."""
    raw = sock.getsockopt(SOL_MPTCP, MPTCP_INFO, 96)
    return int(struct.unpack_from("=I", raw, 12)[0])


# ---------------------------------------------------------------------- limits, sysctls


def test_limits_show_and_set_per_namespace(one_path: tuple[KernelMptcp, KernelMptcp]) -> None:
    a, b = one_path
    assert a.limits() == {"subflows": 2, "add_addr_accepted": 0}  # kernel defaults
    a.set_limits(subflows=5, add_addr_accepted=3)
    assert a.limits() == {"subflows": 5, "add_addr_accepted": 3}
    a.set_limits(subflows=1)  # one value alone leaves the other
    assert a.limits() == {"subflows": 1, "add_addr_accepted": 3}
    assert b.limits() == {"subflows": 2, "add_addr_accepted": 0}  # the other namespace
    assert "subflows 1" in run(a.ns, ["ip", "mptcp", "limits"], timeout=5).stdout


def test_limits_refused_by_the_kernel_raise_with_errno_text(
    one_path: tuple[KernelMptcp, KernelMptcp],
) -> None:
    with pytest.raises(KernelMptcpError, match=r"set limits.*Invalid argument.*EINVAL"):
        one_path[0].set_limits(subflows=100)  # MPTCP_PM_ADDR_MAX is 8


def test_sysctls_read_and_write_inside_the_namespace(
    one_path: tuple[KernelMptcp, KernelMptcp],
) -> None:
    a, b = one_path
    assert a.sysctl("net.mptcp.enabled") == "1"
    a.set_sysctl("net.mptcp.enabled", 0)
    assert a.sysctl("net.mptcp.enabled") == "0"
    assert b.sysctl("net.mptcp.enabled") == "1"
    a.set_sysctl("net.ipv4.tcp_syn_retries", 2)  # any net.* sysctl
    assert a.sysctl("net.ipv4.tcp_syn_retries") == "2"
    with pytest.raises(KernelMptcpError, match="does not exist"):
        a.sysctl("net.mptcp.no_such_knob")
    with pytest.raises(KernelMptcpError, match="refused"):
        a.set_sysctl("net.mptcp.enabled", "not-a-number")
    with pytest.raises(KernelMptcpError, match="only net"):
        a.sysctl("kernel.hostname")


# ---------------------------------------------------------------------- endpoints


EACH_FLAG = [{"signal"}, {"subflow"}, {"subflow", "backup"}, {"subflow", "fullmesh"},
             {"signal", "backup"}, set()]  # fmt: skip


@pytest.mark.parametrize("flags", EACH_FLAG)
def test_endpoint_add_show_delete_with_each_flag(
    one_path: tuple[KernelMptcp, KernelMptcp], flags: set[str]
) -> None:
    a, _ = one_path
    added = a.add_endpoint("192.0.2.1", flags=flags, id=7)
    assert (added.id, added.address, added.flags) == (7, "192.0.2.1", frozenset(flags))
    assert a.endpoints() == [added]
    shown = run(a.ns, ["ip", "mptcp", "endpoint", "show"], timeout=5).stdout
    assert "192.0.2.1 id 7" in shown and all(flag in shown for flag in flags)
    a.delete_endpoint(7)
    assert a.endpoints() == []


def test_endpoint_ids_interfaces_ports_errors_and_flush(
    one_path: tuple[KernelMptcp, KernelMptcp],
) -> None:
    a, b = one_path
    first = a.add_endpoint("192.0.2.1", flags={"subflow"}, ifname="eth0")
    assert first.ifindex == socket_index(a.ns, "eth0")
    second = a.add_endpoint("2001:db8::1", flags={"signal"})
    assert second.address == "2001:db8::1" and second.id != first.id
    port = b.add_endpoint("192.0.2.2", flags={"signal"}, port=6001)
    assert port.port == 6001
    with pytest.raises(KernelMptcpError, match="File exists"):
        a.add_endpoint("192.0.2.1", flags={"subflow"})
    with pytest.raises(KernelMptcpError, match="unknown endpoint flags"):
        a.add_endpoint("192.0.2.1", flags={"turbo"})
    with pytest.raises(KernelMptcpError, match="no interface"):
        a.add_endpoint("192.0.2.1", ifname="eth9")
    with pytest.raises(KernelMptcpError, match="no endpoint 99"):
        a.delete_endpoint(99)
    assert len(a.endpoints()) == 2 and len(b.endpoints()) == 1
    a.flush_endpoints()
    assert a.endpoints() == []
    assert len(b.endpoints()) == 1  # flush is per namespace


def socket_index(ns: Namespace, ifname: str) -> int:
    with ns.entered():
        return socket.if_nametoindex(ifname)


# ---------------------------------------------------------------------- counters, diag


def test_counters_delta_shows_the_mp_capable_handshake(
    one_path: tuple[KernelMptcp, KernelMptcp],
) -> None:
    a, b = one_path
    assert "MPCapableSYNRX" in a.counters()
    with (
        a.counters_delta() as client_moved,
        b.counters_delta() as server_moved,
        mptcp_connection(a.ns, b.ns),
    ):
        pass
    assert client_moved.get("MPCapableSYNTX") == 1
    assert client_moved.get("MPCapableSYNACKRX") == 1
    assert server_moved.get("MPCapableSYNRX") == 1
    assert server_moved.get("MPCapableACKRX") == 1
    assert all(value != 0 for value in client_moved.values())  # only what moved
    assert "MPJoinSynRx" not in server_moved


def test_two_paths_give_one_connection_two_subflows_with_matching_tokens(
    two_paths: tuple[KernelMptcp, KernelMptcp],
) -> None:
    client, server = two_paths
    with server.counters_delta() as moved, mptcp_connection(client.ns, server.ns) as (c, s):
        flows = wait_until(lambda: established(client, 2), 5, "2 established client subflows")
        (client_conn,) = client.connections()
        (server_conn,) = wait_until(server.connections, 5, "the server's connection")
        # One token per side, the same in diag (msk and each subflow) and MPTCP_INFO.
        assert client_conn.token == info_token(c) != 0
        assert server_conn.token == info_token(s) != 0
        assert {f.token_local for f in flows} == {client_conn.token}
        assert len(client.subflows(token=client_conn.token)) == 2
        assert client.subflows(token=client_conn.token + 1) == []
        # The join carried the server's token: the client's view of it matches.
        (join,) = [f for f in flows if f.is_join]
        assert join.token_remote == server_conn.token
        assert str(join.local_address) == "198.51.100.1"
        assert join.remote_address == ipaddress.ip_address("192.0.2.2")
        assert (join.id_local, join.remote_port) == (1, 5100)
        server_flows = wait_until(lambda: established(server, 2), 5, "2 server subflows")
        assert {f.token_local for f in server_flows} == {server_conn.token}
        remotes = sorted(str(f.remote_address) for f in server_flows)
        assert remotes == ["192.0.2.1", "198.51.100.1"]
        assert not client_conn.fallback and client_conn.subflows == 1
        # Bytes sent on the first subflow show up in its tcp_info.
        first = next(f for f in flows if not f.is_join)
        assert first.bytes_acked >= 1 and first.state_name == "ESTABLISHED"
    assert moved.get("MPJoinSynRx") == 1 and moved.get("MPJoinAckRx") == 1


def test_set_endpoint_backup_on_a_live_connection_sends_mp_prio(
    two_paths: tuple[KernelMptcp, KernelMptcp],
) -> None:
    client, server = two_paths
    with mptcp_connection(client.ns, server.ns):
        wait_until(lambda: len(server.subflows()) == 2, 5, "the join")

        def server_join_backup() -> bool:
            (join,) = [f for f in server.subflows() if f.is_join]
            return join.backup_remote

        assert not server_join_backup()
        with client.counters_delta() as sent, server.counters_delta() as received:
            endpoint = client.set_endpoint_backup("198.51.100.1", True)
            wait_until(server_join_backup, 5, "the server to see the join as backup")
        assert "backup" in endpoint.flags and "subflow" in endpoint.flags
        assert sent.get("MPPrioTx") == 1
        assert received.get("MPPrioRx") == 1
        (join,) = [f for f in client.subflows() if f.is_join]
        assert join.backup_local
        with client.counters_delta() as sent:
            endpoint = client.set_endpoint_backup(endpoint.id, False)
            wait_until(lambda: not server_join_backup(), 5, "backup cleared at the server")
        assert sent.get("MPPrioTx") == 1 and "backup" not in endpoint.flags
    with pytest.raises(KernelMptcpError, match="no endpoint"):
        client.set_endpoint_backup("203.0.113.77", True)


def test_ipv6_connection_and_subflow_are_listed(
    one_path: tuple[KernelMptcp, KernelMptcp],
) -> None:
    client, server = one_path
    with mptcp_connection(client.ns, server.ns, "2001:db8:0::2", 5101) as (c, _):
        (conn,) = client.connections()
        assert conn.local_address == ipaddress.ip_address("2001:db8::1")
        assert (conn.remote_address, conn.remote_port) == (
            ipaddress.ip_address("2001:db8::2"),
            5101,
        )
        assert conn.token == info_token(c)
        (flow,) = client.subflows()
        assert flow.token_local == conn.token
        assert str(flow.remote_address) == "2001:db8::2" and flow.remote_port == 5101


def _in_thread(fn: Callable[[], T]) -> T:
    """fn() in a new thread (that never entered any namespace), its result here."""
    out: list[T] = []
    worker = threading.Thread(target=lambda: out.append(fn()))
    worker.start()
    worker.join(30)
    return out[0]


def _root_state() -> tuple[str, str]:
    return (
        run(None, ["ip", "-o", "link", "show"], timeout=5).stdout,
        run(None, ["ip", "mptcp", "endpoint", "show"], timeout=5).stdout,
    )


def test_netlink_calls_from_another_thread_stay_in_the_namespace(
    topology: Callable[..., Topology],
) -> None:
    """pyroute2 0.9 opens a socket per calling thread, in that thread's namespace: a
    link flap or an endpoint made from a thread other than the topology's builder
    reached the root namespace (a soak bench took a root interface down). Every
    netlink object is now bound to its namespace by name (`netns=`): from another
    thread, the link goes down and the endpoint appears in the namespace, and the root
    namespace's links and endpoints are as they were."""
    topo = topology(topologies.single_path())
    before = _root_state()
    link, server = topo.links["path1"], topo.hosts["server"]
    _in_thread(link.down)
    show_eth0 = ["ip", "-n", server.netns, "-o", "link", "show", "eth0"]
    state = run(None, show_eth0, timeout=5).stdout
    assert ",UP" not in state and "state UP" not in state, state
    _in_thread(link.up)
    assert "state UP" in run(None, show_eth0, timeout=5).stdout
    kernel = KernelMptcp(server.ns)
    try:
        _in_thread(lambda: kernel.add_endpoint("192.0.2.2", flags=("signal",), id=9))
        shown = run(None, ["ip", "-n", server.netns, "mptcp", "endpoint", "show"], timeout=5).stdout
        assert "192.0.2.2" in shown and "id 9" in shown, shown
        assert [e.id for e in _in_thread(kernel.endpoints)] == [9]
    finally:
        kernel.close()
    assert _root_state() == before
