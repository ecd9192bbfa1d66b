"""Multipath between two of our stacks, in v1 and in v0 (RFC 6824, checksums on): joins
by subflow endpoint and by ADD_ADDR, backup semantics with failover and return, MP_PRIO
(v0's 4-byte form carries the address ID), and IPv6 on 1500-byte links. Real namespaces,
SHA-256 checked."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import topologies
from stack.__main__ import run_connection
from stack.api import MptcpSocket, Stack
from stack.cli import endpoints_of, parse_interface
from stack.mptcp.connection import MptcpConfig
from stack.mptcp.pm import Limits
from testbed import Topology
from testbed.apps import AppReport, stream_sha256
from testbed.spec import LinkProps

pytestmark = pytest.mark.netns
VERSIONS = [pytest.param(1, id="v1"), pytest.param(0, id="v0")]


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


@contextmanager
def pair(
    topology: Callable[..., Topology],
    version: int,
    client_flags: str = "",
    server_flags: str = "",
    rate: str | None = None,
    *,
    ipv6: bool = False,
    limits: dict[str, Limits] | None = None,
) -> Iterator[tuple[Topology, Stack, Stack]]:
    """Two stacks on the dual-homed topology (IPv4, or IPv6 only: `dual_homed_ipv6`)."""
    props = LinkProps(rate=rate) if rate else LinkProps()
    spec = topologies.dual_homed_ipv6 if ipv6 else topologies.dual_homed
    topo = topology(spec((props, props), bare=("client", "server")))
    config = MptcpConfig(versions=frozenset({version}))
    stacks = []
    for host, flags in (("server", server_flags), ("client", client_flags)):
        last = "2" if host == "server" else "1"
        first, second = (
            (f"2001:db8:1::{last}/64", f"2001:db8:2::{last}/64")
            if ipv6
            else (f"192.0.2.{last}/24", f"198.51.100.{last}/24")
        )
        specs = [parse_interface(f"eth0={first}"), parse_interface(f"eth1={second}{flags}")]
        stacks.append(Stack([s.config for s in specs], netns=topo.hosts[host].netns,
                            config=config, endpoints=endpoints_of(specs),
                            limits=(limits or {}).get(host, Limits(2, 2))))  # fmt: skip
    try:
        yield topo, stacks[0], stacks[1]
    finally:
        for stack in stacks:
            stack.close()


def run(
    server: Stack,
    client: Stack,
    client_mode: str,
    size: int,
    server_mode: str = "echo",
    address: str = "192.0.2.2",
) -> tuple[Any, ...]:
    """Connect, start both applications; returns (client sock, server sock, finish())."""
    listener = server.listen(8000)
    sock = client.connect((address, 8000))
    accepted = listener.accept(10)
    reports: dict[str, AppReport] = {}
    threads = [
        threading.Thread(target=lambda: reports.__setitem__(
            "client", run_connection(sock, client_mode, size, "client"))),
        threading.Thread(target=lambda: reports.__setitem__(
            "server", run_connection(accepted, server_mode, 0, "server"))),
    ]  # fmt: skip
    for thread in threads:
        thread.start()

    def finish() -> tuple[AppReport, AppReport]:
        for thread in threads:
            thread.join(90)
        return reports["client"], reports["server"]

    return sock, accepted, finish


def subflows_up(sock: MptcpSocket) -> int:
    return sum(f["state"] in ("established", "closed") for f in sock.info()["subflows"])


def on(sock: MptcpSocket, index: int, key: str) -> int:
    return int(sock.info()["subflows"][index][key])


def assert_echo(client: AppReport, server: AppReport, size: int) -> None:
    assert not client.error and not server.error, (client.error, server.error)
    assert client.sha256_sent == client.sha256_received == stream_sha256(size)
    assert server.sha256_received == stream_sha256(size)


def assert_upload(client: AppReport, server: AppReport, size: int) -> None:
    assert not client.error and not server.error, (client.error, server.error)
    assert client.sha256_sent == server.sha256_received == stream_sha256(size)
    assert server.bytes_received == size


@pytest.mark.parametrize("version", VERSIONS)
def test_join_by_subflow_endpoint_carries_data(
    topology: Callable[..., Topology], version: int
) -> None:
    size = 20_000_000
    with pair(topology, version, client_flags=",subflow") as (_, server, client):
        sock, _, finish = run(server, client, "source", size)
        wait_until(lambda: subflows_up(sock) == 2, 5, "the join")
        client_end, server_end = finish()
    assert_echo(client_end, server_end, size)
    for end in (client_end, server_end):
        assert end.mptcp["version"] == version and len(end.mptcp["subflows"]) == 2
        assert all(f["bytes_sent"] > 0 for f in end.mptcp["subflows"]), end.mptcp["subflows"]
    assert client_end.mptcp["counters"]["MPJoinAckRx"] == 1  # the fourth ACK came
    assert server_end.mptcp["counters"]["MPJoinAckRx"] == 1  # HMAC-A checked out


@pytest.mark.parametrize("version", VERSIONS)
def test_join_to_an_announced_address(topology: Callable[..., Topology], version: int) -> None:
    size = 20_000_000
    with pair(topology, version, server_flags=",signal") as (_, server, client):
        sock, _, finish = run(server, client, "source", size)
        wait_until(lambda: subflows_up(sock) == 2, 5, "the join to the announced address")
        client_end, server_end = finish()
    assert_echo(client_end, server_end, size)
    join = client_end.mptcp["subflows"][1]
    assert join["remote"] == "198.51.100.2:8000" and join["remote_id"] == 2
    assert server_end.mptcp["counters"]["AddAddrTx"] == 1
    if version == 1:  # v1 echoes ADD_ADDR (with its HMAC checked); v0 has no echo
        assert server_end.mptcp["counters"]["EchoAdd"] == 1


@pytest.mark.parametrize("version", VERSIONS)
def test_backup_failover_and_return(topology: Callable[..., Topology], version: int) -> None:
    """An upload: the client's scheduler moves to the backup and back. (An echo through
    the same cut can stall: see docs/stack.md, "What is missing".)"""
    size = 30_000_000
    with pair(topology, version, client_flags=",subflow,backup", rate="40mbit") as (
        topo, server, client,
    ):  # fmt: skip
        sock, accepted, finish = run(server, client, "source", size, server_mode="sink")
        wait_until(lambda: subflows_up(sock) == 2, 5, "the backup subflow")
        wait_until(lambda: on(sock, 0, "bytes_sent") > 2_000_000, 10, "data on path 1")
        assert on(sock, 1, "bytes_sent") == 0 and on(accepted, 1, "bytes_sent") == 0
        assert accepted.info()["subflows"][1]["backup_remote"] is True  # our B bit
        topo.links["path1"].down()
        wait_until(lambda: on(sock, 1, "bytes_sent") > 2_000_000, 15, "data on the backup")
        topo.links["path1"].up()
        regular = on(sock, 0, "bytes_sent")
        wait_until(lambda: on(sock, 0, "bytes_sent") > regular + 1_000_000, 20,
                   "traffic back on path 1")  # fmt: skip
        client_end, server_end = finish()
    assert_upload(client_end, server_end, size)


@pytest.mark.parametrize("version", VERSIONS)
def test_mp_prio_moves_the_peers_traffic(topology: Callable[..., Topology], version: int) -> None:
    """The client marks subflow 1 backup (MP_PRIO): the server's scheduler gives it no
    new data from then on. Resends are another matter: when the DATA_ACK stops moving
    for two data-level intervals (the client stalled), the oldest bytes go again on a
    backup, and a regular subflow judged stale leaves new data to it, as in Linux
    (__mptcp_retrans, stale_loss_cnt). On a loaded machine one run had 64 KB (one
    mapping) on the backup after MP_PRIO; the per-subflow `bytes_resent` and the
    connection's counters now tell a resend from the scheduler's choice."""
    size = 40_000_000
    with pair(topology, version, client_flags=",subflow", rate="200mbit") as (_, server, client):
        sock, accepted, finish = run(server, client, "source", size)
        wait_until(lambda: subflows_up(sock) == 2, 5, "the join")
        wait_until(lambda: on(sock, 1, "bytes_received") > 200_000, 10, "echo on path 2")
        sock.set_backup(True, subflow=1)
        wait_until(lambda: accepted.info()["counters"].get("MPPrioRx"), 5, "MP_PRIO")
        assert accepted.info()["subflows"][1]["backup_remote"] is True
        before = accepted.info()
        regular = on(accepted, 0, "bytes_sent")
        wait_until(lambda: on(accepted, 0, "bytes_sent") > regular + 3_000_000, 20,
                   "the echo on path 1")  # fmt: skip
        after = accepted.info()
        client_end, server_end = finish()
    assert_echo(client_end, server_end, size)
    moved, resent = (after["subflows"][1][k] - before["subflows"][1][k]
                     for k in ("bytes_sent", "bytes_resent"))  # fmt: skip
    grew = {k: after["counters"].get(k, 0) - before["counters"].get(k, 0)
            for k in ("SubflowStale", "MPTCPRetrans")}  # fmt: skip
    # the peer's scheduler obeyed at once: no new data on the backup, unless the
    # regular subflow was judged stale meanwhile; resends only from the data level
    assert moved - resent == 0 or grew["SubflowStale"] > 0, (moved, resent, after["counters"])
    assert resent == 0 or any(grew.values()), (resent, grew)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_removed_address_that_returns_is_joined_again(
    topology: Callable[..., Topology], version: int
) -> None:
    """The server removes its announced endpoint (REMOVE_ADDR: the client closes that
    subflow) and adds it again (a new ADD_ADDR): the client joins it again."""
    size = 40_000_000
    with pair(topology, version, server_flags=",signal", rate="40mbit") as (_, server, client):
        sock, _, finish = run(server, client, "source", size, server_mode="sink")
        wait_until(lambda: subflows_up(sock) == 2, 5, "the join to the announced address")
        endpoint = server.remove_endpoint("198.51.100.2")
        wait_until(lambda: sock.info()["subflows"][1]["state"] == "failed", 5,
                   "the subflow to the removed address closed")  # fmt: skip
        server.add_endpoint(endpoint)
        wait_until(lambda: len(sock.info()["subflows"]) == 3 and on(sock, 2, "bytes_sent") > 0,
                   10, "a new subflow to the address announced again, carrying data")  # fmt: skip
        client_end, server_end = finish()
    assert_upload(client_end, server_end, size)
    assert server_end.mptcp["counters"]["AddAddrTx"] == 2
    assert client_end.mptcp["subflows"][2]["remote"] == "198.51.100.2:8000"


@pytest.mark.parametrize("version", VERSIONS)
def test_removing_the_initial_address_sends_remove_addr_for_id_0(
    topology: Callable[..., Topology], version: int
) -> None:
    """The server stops using its initial address (the MP_CAPABLE subflow's): the peer
    knows it by ID 0 (RFC 8684 §3.2), so REMOVE_ADDR carries 0, not the endpoint's ID,
    and the initial subflow closes (as Linux's `ip mptcp endpoint delete id 0 ADDR`);
    the upload finishes intact on the join."""
    size = 20_000_000
    with pair(topology, version, server_flags=",signal", rate="40mbit") as (_, server, client):
        sock, _, finish = run(server, client, "source", size, server_mode="sink")
        wait_until(lambda: subflows_up(sock) == 2, 5, "the join to the announced address")
        server.remove_endpoint("192.0.2.2")
        wait_until(lambda: sock.info()["subflows"][0]["state"] == "failed", 5,
                   "the initial subflow closed")  # fmt: skip
        client_end, server_end = finish()
    assert_upload(client_end, server_end, size)
    assert server_end.mptcp["counters"]["RmAddrTx"] == 1
    assert client_end.mptcp["counters"]["RmAddr"] == 1
    assert server_end.mptcp["subflows"][0]["error"] == "local address removed"


def test_a_connection_to_an_ipv4_mapped_address_is_ipv4_and_joins(
    topology: Callable[..., Topology],
) -> None:
    """connect(("::ffff:192.0.2.2", port)) is an IPv4 connection (RFC 4291 §2.5.5.2, as
    an IPv6 socket's on Linux), and the client's IPv4 subflow endpoint joins it."""
    size = 4_000_000
    with pair(topology, 1, client_flags=",subflow") as (_, server, client):
        sock, _, finish = run(server, client, "source", size, server_mode="sink",
                              address="::ffff:192.0.2.2")  # fmt: skip
        wait_until(lambda: subflows_up(sock) == 2, 5, "the join from the IPv4 endpoint")
        client_end, server_end = finish()
    assert_upload(client_end, server_end, size)
    assert client_end.mptcp["subflows"][0]["remote"] == "192.0.2.2:8000"


@pytest.mark.parametrize("version", VERSIONS)
def test_traffic_returns_at_once_when_a_link_comes_back(
    topology: Callable[..., Topology], version: int
) -> None:
    """The link of the join path goes down until its RTO has backed off past 1.5 s;
    when it comes back, both stacks hear it and data is on it again within 1.5 s."""
    size = 60_000_000
    with pair(topology, version, server_flags=",signal", rate="40mbit") as (
        topo, server, client,
    ):  # fmt: skip
        sock, _, finish = run(server, client, "source", size, server_mode="sink")
        wait_until(lambda: subflows_up(sock) == 2, 5, "the join to the announced address")
        wait_until(lambda: on(sock, 1, "bytes_sent") > 500_000, 10, "data on path 2")
        topo.links["path2"].down()
        tcp = sock.msk.subflows[1].tcp
        wait_until(lambda: tcp.rto.backoff >= 4, 15, "the RTO backed off")
        assert tcp.rto_deadline is not None and tcp.rto_deadline - time.monotonic() > 1.5
        before = on(sock, 1, "bytes_sent")
        topo.links["path2"].up()
        wait_until(lambda: on(sock, 1, "bytes_sent") > before + 500_000, 1.5,
                   "data on path 2 again")  # fmt: skip
        client_end, server_end = finish()
    assert_upload(client_end, server_end, size)


@pytest.mark.parametrize("version", VERSIONS)
def test_ipv6_upload_to_an_announced_address_behind_tbf(
    topology: Callable[..., Topology], version: int
) -> None:
    """The interop matrix's `ipv6` cell between two stacks: IPv6 only, both paths tbf
    100 Mbit/s, the server announces its address on eth1. Full-sized segments must fit
    the 1500-byte MTU with a 40-byte IPv6 header: each stack announces MSS 1440 (as
    Linux) and sends no more. With 1460, the IPv4 figure, no data segment ever left
    (the kernel refused the oversized frames) and the transfer hung."""
    size = 6_000_000
    limits = {"server": Limits(2, 0), "client": Limits(2, 1)}
    with pair(topology, version, server_flags=",signal", rate="100mbit", ipv6=True,
              limits=limits) as (_, server, client):  # fmt: skip
        sock, accepted, finish = run(server, client, "source", size, server_mode="sink",
                                     address="2001:db8:1::2")  # fmt: skip
        wait_until(lambda: subflows_up(sock) == 2, 5, "the join to the announced address")
        wait_until(lambda: on(accepted, 0, "bytes_received") > 0, 5, "data on the first path")
        client_end, server_end = finish()
        assert [sf.tcp.snd_mss for sf in sock.msk.subflows] == [1440, 1440]
    assert_upload(client_end, server_end, size)
    subflows = client_end.mptcp["subflows"]
    assert [f["remote"] for f in subflows] == ["2001:db8:1::2:8000", "2001:db8:2::2:8000"]
    assert all(f["bytes_sent"] > 0 for f in subflows), subflows
