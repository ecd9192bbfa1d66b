"""Endpoint IDs and ports, and the live command channel (`--control stdin`), of a real
`python -m stack serve` process against the kernel's MPTCP over two real paths. The
kernel's MIB counters and diag are the peer's account of what it received; every
transfer is SHA-256 checked at both ends."""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import topologies
from stack.api import Stack
from stack.cli import endpoints_of, parse_interface
from testbed import Topology
from testbed.apps import BLOCK, make_socket, stream_chunk, stream_sha256
from testbed.mptcp import KernelMptcp

pytestmark = [pytest.mark.netns, pytest.mark.kernel]

ROOT = Path(__file__).resolve().parents[2]
PORT = 8000
SERVER = ("192.0.2.2", "198.51.100.2")


class StackProcess:
    """`python -m stack serve ... --control stdin`: its JSON lines, and commands."""

    def __init__(self, argv: list[str]):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stack", *argv, "--control", "stdin"], cwd=ROOT, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(json.loads(line))

    def event(self, kind: str, within: float = 10.0) -> dict[str, Any]:
        """The next line of `kind` (earlier lines of other kinds are dropped)."""
        deadline = time.monotonic() + within
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {kind!r} line within {within} s") from None
            if line.get("event") == kind:
                return line

    def command(self, text: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()
        return self.event("control", 10.0)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(10)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
                with contextlib.suppress(OSError):
                    stream.close()  # type: ignore[union-attr]


@contextlib.contextmanager
def served(
    topology: Callable[..., Topology], second: str
) -> Iterator[tuple[Topology, StackProcess, KernelMptcp]]:
    """The stack serves (sink) on a bare server with `second` as its eth1 fields; the
    kernel client takes 2 subflows and accepts 2 announcements."""
    topo = topology(topologies.dual_homed(bare=("server",)))
    kernel = KernelMptcp(topo.hosts["client"].ns)
    kernel.set_limits(subflows=2, add_addr_accepted=2)
    stack = StackProcess(["serve", "--netns", topo.hosts["server"].netns,
                          "--interface", f"eth0={SERVER[0]}/24",
                          "--interface", f"eth1={SERVER[1]}/24{second}",
                          "--port", str(PORT), "--mode", "sink"])  # fmt: skip
    try:
        assert stack.event("listening")["port"] == PORT
        yield topo, stack, kernel
    finally:
        assert stack.stop() == 0
        kernel.close()


def wait_until(predicate: Callable[[], object], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        time.sleep(0.01)


def joined(kernel: KernelMptcp, address: str, port: int = PORT) -> bool:
    return any(
        sf.is_join and sf.fully_established and str(sf.remote_address) == address
        and sf.remote_port == port
        for sf in kernel.subflows()
    )  # fmt: skip


def kernel_client(topo: Topology, kernel: KernelMptcp | None = None,
                  join_port: int = PORT) -> socket.socket:  # fmt: skip
    """The kernel connects and sends its first MiB; with `kernel`, waits for its join
    to our eth1 address at `join_port`."""
    sock = make_socket(topo.hosts["client"].ns, SERVER[0], "mptcp")
    sock.settimeout(30)
    sock.connect((SERVER[0], PORT))
    sock.sendall(stream_chunk(0))
    if kernel is not None:
        wait_until(lambda: joined(kernel, SERVER[1], join_port), 10,
                   f"the kernel's join to {SERVER[1]}:{join_port}")  # fmt: skip
    return sock


def finish(sock: socket.socket, stack: StackProcess, sent: int) -> dict[str, Any]:
    """The client's second MiB, its close, and the server's report of the connection."""
    sock.sendall(stream_chunk(1))
    sock.shutdown(socket.SHUT_WR)
    assert sock.recv(1) == b""  # the sink closes once it has read everything
    sock.close()
    report = stack.event("connection", 30)
    assert not report["error"]
    assert report["bytes_received"] == sent == 2 * BLOCK
    assert report["sha256_received"] == stream_sha256(sent)
    return report


def test_set_backup_sends_mp_prio_on_the_subflow_from_the_address(
    topology: Callable[..., Topology],
) -> None:
    with served(topology, ",signal") as (topo, stack, kernel), kernel.counters_delta() as moved:
        sock = kernel_client(topo, kernel)
        answer = stack.command(json.dumps({"cmd": "set_backup", "address": SERVER[1],
                                           "backup": True}))  # fmt: skip
        assert answer == {"event": "control", "ok": True, "cmd": "set_backup",
                          "address": SERVER[1], "backup": True, "subflows": 1}  # fmt: skip
        wait_until(lambda: kernel.counters().get("MPPrioRx", 0) >= 1, 5, "the kernel's MPPrioRx")
        [to_second] = [sf for sf in kernel.subflows() if str(sf.remote_address) == SERVER[1]]
        assert to_second.backup_remote  # the kernel now treats it as our backup
        report = finish(sock, stack, 2 * BLOCK)
    assert moved["MPPrioRx"] == 1
    mptcp = report["mptcp"]
    assert mptcp["counters"]["MPPrioTx"] == 1
    flags = {sf["local"].split(":")[0]: sf["backup_local"] for sf in mptcp["subflows"]}
    assert flags == {SERVER[0]: False, SERVER[1]: True}


def test_remove_endpoint_sends_remove_addr_and_the_transfer_goes_on(
    topology: Callable[..., Topology],
) -> None:
    with served(topology, ",signal") as (topo, stack, kernel), kernel.counters_delta() as moved:
        sock = kernel_client(topo, kernel)
        answer = stack.command(json.dumps({"cmd": "remove_endpoint", "address": SERVER[1]}))
        assert answer["ok"] and answer["id"] == 2  # eth1's automatic address ID
        wait_until(lambda: kernel.counters().get("RmAddr", 0) >= 1, 5, "the kernel's RmAddr")
        wait_until(lambda: not joined(kernel, SERVER[1]), 5, "the subflow to eth1 to close")
        report = finish(sock, stack, 2 * BLOCK)
    assert moved["RmAddr"] == 1
    [second] = [sf for sf in report["mptcp"]["subflows"] if sf["local"].startswith(SERVER[1])]
    assert second["state"] == "failed" and second["error"] == "local address removed"


def test_signal_endpoint_with_port_and_id_takes_the_kernels_join_on_that_port(
    topology: Callable[..., Topology],
) -> None:
    with served(topology, ",signal,id=7,port=6000") as (topo, stack, kernel):
        sock = kernel_client(topo, kernel, join_port=6000)
        [join] = [sf for sf in kernel.subflows() if sf.is_join]
        assert join.id_remote == 7  # our address ID, from the ADD_ADDR and the SYN/ACK
        report = finish(sock, stack, 2 * BLOCK)
    [second] = [sf for sf in report["mptcp"]["subflows"] if not sf["initial"]]
    assert second["local"] == f"{SERVER[1]}:6000" and second["local_id"] == 7


def test_add_endpoint_announces_again_after_a_removal(topology: Callable[..., Topology]) -> None:
    with served(topology, ",signal") as (topo, stack, kernel), kernel.counters_delta() as moved:
        sock = kernel_client(topo, kernel)
        assert stack.command(json.dumps({"cmd": "remove_endpoint", "address": SERVER[1]}))["ok"]
        wait_until(lambda: not joined(kernel, SERVER[1]), 5, "the subflow to eth1 to close")
        answer = stack.command(json.dumps({"cmd": "add_endpoint", "address": SERVER[1],
                                           "flags": ["signal"], "id": 9}))  # fmt: skip
        assert answer["ok"] and answer["id"] == 9 and answer["flags"] == ["signal"]
        wait_until(lambda: kernel.counters().get("AddAddr", 0) >= 2, 5, "a second ADD_ADDR")
        wait_until(lambda: joined(kernel, SERVER[1]), 10, "the kernel's join to eth1 again")
        [join] = [sf for sf in kernel.subflows() if sf.is_join]
        assert join.id_remote == 9
        finish(sock, stack, 2 * BLOCK)
    assert moved["AddAddr"] == 2 and moved["RmAddr"] == 1


def test_add_endpoint_gives_an_address_without_flags_signal(
    topology: Callable[..., Topology],
) -> None:
    with served(topology, "") as (topo, stack, kernel), kernel.counters_delta() as moved:
        sock = kernel_client(topo)
        answer = stack.command(json.dumps({"cmd": "add_endpoint", "address": SERVER[1],
                                           "flags": ["signal"]}))  # fmt: skip
        assert answer["ok"] and answer["id"] == 2  # the ID eth1 had
        wait_until(lambda: joined(kernel, SERVER[1]), 10, "the kernel's join to eth1")
        finish(sock, stack, 2 * BLOCK)
    assert moved["AddAddr"] == 1


def test_add_endpoint_takes_an_ipv4_mapped_address_as_its_ipv4_address(
    topology: Callable[..., Topology],
) -> None:
    """An endpoint given as ::ffff:ADDR is the IPv4 address ADDR (RFC 4291 §2.5.5.2), as
    Linux's path manager takes it: announced and joined over IPv4."""
    with served(topology, "") as (topo, stack, kernel), kernel.counters_delta() as moved:
        sock = kernel_client(topo)
        answer = stack.command(json.dumps({"cmd": "add_endpoint", "flags": ["signal"],
                                           "address": f"::ffff:{SERVER[1]}"}))  # fmt: skip
        assert answer["ok"] and answer["address"] == SERVER[1], answer
        wait_until(lambda: joined(kernel, SERVER[1]), 10, "the kernel's join to eth1")
        finish(sock, stack, 2 * BLOCK)
    assert moved["AddAddr"] == 1


def test_connect_takes_commands_too(topology: Callable[..., Topology]) -> None:
    """`connect --control stdin`: the stack's subflow endpoint joins the kernel, and a
    backup flip sends MP_PRIO on that subflow (the kernel's MPPrioRx); the upload is
    intact."""
    topo = topology(topologies.dual_homed(bare=("client",)))
    kernel = KernelMptcp(topo.hosts["server"].ns)
    listener = make_socket(topo.hosts["server"].ns, SERVER[0], "mptcp")
    listener.bind(("0.0.0.0", PORT))
    listener.listen(4)
    stack = StackProcess(["connect", "--netns", topo.hosts["client"].netns,
                          "--interface", "eth0=192.0.2.1/24",
                          "--interface", "eth1=198.51.100.1/24,subflow",
                          "--to", f"{SERVER[0]}:{PORT}", "--mode", "source",
                          "--bytes", str(2 * BLOCK)])  # fmt: skip
    try:
        listener.settimeout(10)
        conn, _ = listener.accept()
        conn.settimeout(30)
        received = bytearray(conn.recv(1 << 16))
        wait_until(lambda: any(sf.is_join and sf.fully_established for sf in kernel.subflows()),
                   10, "our join")  # fmt: skip
        with kernel.counters_delta() as moved:
            answer = stack.command(json.dumps({"cmd": "set_backup", "address": "198.51.100.1",
                                               "backup": True}))  # fmt: skip
            assert answer["ok"] and answer["subflows"] == 1, answer
            wait_until(lambda: kernel.counters().get("MPPrioRx", 0) >= 1, 5, "MPPrioRx")
        while chunk := conn.recv(1 << 16):
            received += chunk
        conn.close()
        report = stack.event("connection", 30)
        assert stack.process.wait(30) == 0
    finally:
        stack.stop()
        listener.close()
        kernel.close()
    assert moved["MPPrioRx"] == 1
    assert bytes(received) == stream_chunk(0) + stream_chunk(1)
    assert report["sha256_sent"] == stream_sha256(2 * BLOCK) and not report["error"]


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"cmd": "reboot"}', "unknown cmd 'reboot'; commands: add_endpoint, remove_endpoint"),
        ('{"cmd": "set_backup", "address": "198.51.100.2"}', "needs 'backup': true or false"),
        ('{"cmd": "set_backup", "address": "nowhere", "backup": true}',
         "'nowhere' is not an IP address"),
        ('{"cmd": "remove_endpoint", "address": "203.0.113.9"}',
         "203.0.113.9 is not an endpoint of this stack"),
        ('{"cmd": "add_endpoint", "address": "203.0.113.9"}',
         "203.0.113.9 is not an address of this stack"),
        ('{"cmd": "add_endpoint", "address": "198.51.100.2"}', "already endpoint ID 2"),
        ('{"cmd": "add_endpoint", "address": "198.51.100.2", "flags": ["turbo"]}',
         "unknown flag(s) turbo"),
    ],
)  # fmt: skip
def test_bad_commands_are_answered_with_what_is_wrong_and_serving_goes_on(
    topology: Callable[..., Topology], line: str, error: str
) -> None:
    with served(topology, ",signal") as (topo, stack, _):
        answer = stack.command(line)
        assert answer["ok"] is False and error in answer["error"], answer
        # still serving, still taking commands
        sock = kernel_client(topo)
        finish(sock, stack, 2 * BLOCK)


def test_removed_endpoints_subflows_are_gone_when_the_call_returns(
    topology: Callable[..., Topology],
) -> None:
    """In process: once `Stack.remove_endpoint` returns (what the control answer
    waits for), the subflow from the address is failed and its data handed back to the
    connection, not left for the next timer."""
    topo = topology(topologies.dual_homed(bare=("server",)))
    specs = [
        parse_interface(f"eth0={SERVER[0]}/24"),
        parse_interface(f"eth1={SERVER[1]}/24,signal"),
    ]
    with KernelMptcp(topo.hosts["client"].ns) as kernel, Stack(
        [s.config for s in specs], netns=topo.hosts["server"].netns, endpoints=endpoints_of(specs)
    ) as stack:  # fmt: skip
        kernel.set_limits(subflows=2, add_addr_accepted=2)
        server = stack.listen(PORT)
        client = kernel_client(topo, kernel)
        sock = server.accept(10)
        received = bytearray()
        while len(received) < BLOCK:  # all of the first MiB: the connection is idle
            received += sock.recv()
        stack.remove_endpoint(SERVER[1])
        [second] = [sf for sf in sock.info()["subflows"] if not sf["initial"]]
        assert second["state"] == "failed" and second["error"] == "local address removed"
        client.sendall(stream_chunk(1))
        client.shutdown(socket.SHUT_WR)
        while chunk := sock.recv():
            received += chunk
        assert received == stream_chunk(0) + stream_chunk(1)
        sock.close()
        client.close()


def test_state_shows_each_live_connection_and_its_subflows(
    topology: Callable[..., Topology],
) -> None:
    """`{"cmd": "state"}`: what a user asks when a transfer seems stuck. The kernel
    joined our eth1 address and has sent its first MiB: both subflows are listed with
    their TCP state, and the data level has received at least that MiB."""
    with served(topology, ",signal") as (topo, stack, kernel):
        sock = kernel_client(topo, kernel)
        wait_until(lambda: _received(stack) >= BLOCK, 10, "the first MiB at the data level")
        answer = stack.command(json.dumps({"cmd": "state"}))
        [connection] = answer["connections"]
        assert connection["remote"].startswith(topo.hosts["client"].interfaces["eth0"]
                                               .addresses[0].ip.compressed)  # fmt: skip
        subflows = {sf["local"].split(":")[0]: sf for sf in connection["subflows"]}
        assert set(subflows) == {SERVER[0], SERVER[1]}
        assert all(sf["tcp_state"] == "ESTABLISHED" and sf["usable"] for sf in subflows.values())
        assert connection["send"]["in_flight"] == 0  # a sink sends nothing
        finish(sock, stack, 2 * BLOCK)
        # both DATA_FINs done: what is left waits only on TCP's TIME_WAIT (2 MSL)
        wait_until(lambda: _closing_done(stack), 10, "the subflows to finish closing")


def _closing_done(stack: StackProcess) -> bool:
    connections = stack.command(json.dumps({"cmd": "state"}))["connections"]
    return all(
        c["eof"] and c["send"]["fin_acknowledged"]
        and {sf["tcp_state"] for sf in c["subflows"]} <= {"TIME_WAIT", "CLOSED"}
        for c in connections
    )  # fmt: skip


def _received(stack: StackProcess) -> int:
    """Data-level bytes the live connection has taken from its subflows."""
    [connection] = stack.command(json.dumps({"cmd": "state"}))["connections"]
    return sum(int(sf["bytes_received"]) for sf in connection["subflows"])
