"""Connections leave nothing behind. Two of our stacks in real namespaces, one connection
after another, each with a join (the client's `subflow` endpoint), ended in order or by
an abort (MP_FASTCLOSE) from either side: afterwards every table of both stacks is as it
was before the first (the connections' drivers, the host's 4-tuple registrations and
timer heap, the token table, the listener's half-open, join and accept queues and its
join timers), and every connection object is freed.

A guard for the soak (bench/bench_soak.py, issue 11), whose stack grew by about 8 KB per
connection: no connection was retained there (the counts of live objects stayed flat);
the growth was the C allocator's (stack/alloc.py, test_alloc.py)."""

from __future__ import annotations

import gc
import os
import weakref
from collections.abc import Callable
from typing import Any

import pytest

import topologies
from stack.api import MptcpServerSocket, MptcpSocket, Stack
from stack.cli import endpoints_of, parse_interface
from stack.mptcp.connection import MptcpConfig
from stack.mptcp.pm import Limits
from stack.tcp.connection import TcpConfig
from stack.tests.test_mptcp_stack_pair import subflows_up, wait_until
from testbed import Topology

pytestmark = pytest.mark.netns

CONNECTIONS = 9  # three of each ending
PAYLOAD = 200_000
# a short TIME_WAIT, so that the subflows that enter it end within the test
CONFIG = MptcpConfig(tcp=TcpConfig(min_rto=0.2, time_wait=0.5))


def _tables(stack: Stack) -> dict[str, Any]:
    """The sizes of everything a connection may leave in the stack (on its loop)."""

    def read(now: float) -> dict[str, Any]:
        host = stack.host
        tables: dict[str, Any] = {
            "drivers": len(stack._drivers),
            "registered 4-tuples": len(host._connections),
            "host timers": len(host._timers),
            "tokens": len(stack.tokens),
        }
        for port, driver in stack._listeners.items():
            listener = driver.listener
            tables[f"port {port}"] = {
                "half-open connections": len(listener.half_open) + len(driver.half_open),
                "half-open joins": len(listener.joins) + len(driver._join_ports),
                "accept queue": len(listener.accept_queue),
                "join timers": len(listener._join_timers),
                "timer armed": driver._timer is not None,
            }
        return tables

    result: dict[str, Any] = stack._on_loop(read)
    return result


def _read_all(sock: MptcpSocket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(1 << 16, timeout=10):
        data += chunk
    return bytes(data)


def _one_connection(client: Stack, listener: MptcpServerSocket, ending: str) -> list[Any]:
    """One connection with a join, ended as `ending` says; weak references to both ends'
    connection objects (nothing else of it stays referenced here)."""
    payload = os.urandom(PAYLOAD)
    sock = client.connect(("192.0.2.2", 8000), timeout=10)
    accepted = listener.accept(10)
    wait_until(lambda: subflows_up(sock) == 2 == subflows_up(accepted), 5, "the join")
    sock.sendall(payload)
    if ending == "orderly":
        sock.shutdown()
        assert _read_all(accepted) == payload
        accepted.sendall(payload)
        accepted.close()
        assert _read_all(sock) == payload
        sock.close()
    else:
        aborting, peer = (sock, accepted) if ending == "client aborts" else (accepted, sock)
        aborting.abort()
        wait_until(lambda: peer.msk.finished, 5, f"the abort ({ending})")
        assert peer.msk.error, f"{ending}: the peer saw no reset"
        peer.close()
    for end in (sock, accepted):
        assert len(end.msk.every_subflow()) == 2, f"{ending}: no join"
    return [weakref.ref(sock.msk), weakref.ref(accepted.msk)]


def test_connections_with_joins_and_resets_leave_nothing_behind(
    topology: Callable[..., Topology],
) -> None:
    topo = topology(topologies.dual_homed(bare=("client", "server")))
    stacks: dict[str, Stack] = {}
    for host, last, flags in (("server", "2", ""), ("client", "1", ",subflow")):
        specs = [parse_interface(f"eth0=192.0.2.{last}/24"),
                 parse_interface(f"eth1=198.51.100.{last}/24{flags}")]  # fmt: skip
        stacks[host] = Stack([s.config for s in specs], netns=topo.hosts[host].netns,
                             config=CONFIG, endpoints=endpoints_of(specs),
                             limits=Limits(2, 2))  # fmt: skip
    server, client = stacks["server"], stacks["client"]
    try:
        listener = server.listen(8000)
        before = {name: _tables(stack) for name, stack in stacks.items()}
        freed: list[weakref.ref[Any]] = []
        endings = ("orderly", "client aborts", "server aborts")
        for index in range(CONNECTIONS):
            freed += _one_connection(client, listener, endings[index % len(endings)])
        after: dict[str, dict[str, Any]] = {}

        def settled() -> bool:
            gc.collect()
            after.update({name: _tables(stack) for name, stack in stacks.items()})
            return after == before and all(ref() is None for ref in freed)

        try:
            wait_until(settled, 15, "every table back to its size, every connection freed")
        except AssertionError:
            alive = sum(ref() is not None for ref in freed)
            raise AssertionError(
                f"before: {before}\nafter: {after}\n{alive} of {len(freed)} connection "
                f"objects still alive"
            ) from None
    finally:
        for stack in stacks.values():
            stack.close()
