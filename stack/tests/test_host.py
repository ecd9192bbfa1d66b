"""The host layer against the kernel: ARP and NDP answered, closed ports reset."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable

import pytest

import topologies
from stack.host import Host
from stack.route import InterfaceConfig
from stack.tcp_host import connect
from stack.tests.test_mptcp_stack_pair import wait_until
from testbed import Topology

pytestmark = pytest.mark.netns


@pytest.fixture
def stack_client(topology: Callable[..., Topology]):
    """The client namespace is bare and run by our Host; the server is the kernel."""
    topo = topology(topologies.single_path(bare=("client",)))
    host = Host(
        [
            InterfaceConfig.parse("eth0=192.0.2.1/24"),
            InterfaceConfig.parse("eth0=2001:db8:1::1/64"),
        ],
        netns=topo.hosts["client"].netns,
    )
    host.start()
    yield topo, host
    host.close()


@pytest.mark.parametrize("address", ["192.0.2.1", "2001:db8:1::1"])
def test_kernel_connect_to_a_closed_port_is_refused(stack_client, address: str) -> None:
    """The kernel resolves our address (ARP/NDP answered) and gets RST|ACK (RFC 9293)."""
    topo, host = stack_client
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with topo.hosts["server"].entered():
        sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(5)
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        sock.connect((address, 4242))
    assert time.monotonic() - started < 2, "refused at once, not after retransmissions"
    sock.close()
    assert host.counters.resets_sent >= 1
    assert host.counters.bad_checksum == 0


def test_path_mss_is_the_links_mtu_less_the_families_headers(stack_client) -> None:
    """As Linux advertises: 1460 for IPv4 and 1440 for IPv6 on a 1500-byte veth."""
    _, host = stack_client
    assert host.links["eth0"].info.mtu == 1500
    v4, v6 = ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("2001:db8:1::1")
    assert host.path_mss(v4, ipaddress.ip_address("192.0.2.2")) == 1460
    assert host.path_mss(v6, ipaddress.ip_address("2001:db8:1::2")) == 1440
    assert host.path_mss(v6, ipaddress.ip_address("192.0.2.2")) is None  # no such route


@pytest.mark.parametrize("server", ["192.0.2.2", "2001:db8:1::2"], ids=["ipv4", "ipv6"])
def test_a_stale_neighbour_is_confirmed_by_the_kernels_answer_to_a_unicast_probe(
    stack_client, monkeypatch: pytest.MonkeyPatch, server: str
) -> None:
    """The kernel's entry goes STALE (a reachable time of 50 ms here); the next send
    still goes to its MAC and starts a verification by probes sent straight to it (ARP
    to its MAC; NS to its address, which Linux answers with an NA without the
    link-layer option): the answer makes it REACHABLE again, and the bytes flow on."""
    monkeypatch.setattr("stack.neighbour.REACHABLE_TIME", 0.05)
    monkeypatch.setattr("stack.host._PATH_TTL", 0.0)  # every send looks its MAC up
    topo, host = stack_client
    peer = ipaddress.ip_address(server)
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with topo.hosts["server"].entered():
        listener = socket.socket(family)
    listener.bind((server, 9000))
    listener.listen()
    listener.settimeout(10)

    def state() -> str | None:
        return host.neighbours.state("eth0", peer, host.clock())

    try:
        stream = connect(host, (server, 9000))
        conn, _ = listener.accept()
        conn.settimeout(10)
        stream.sendall(b"before")
        assert conn.recv(100) == b"before"
        wait_until(lambda: state() == "STALE", 5, "the entry to go stale")
        monkeypatch.setattr("stack.neighbour.REACHABLE_TIME", 30.0)
        stream.sendall(b"after")  # goes at once, and starts the verification
        assert conn.recv(100) == b"after"
        wait_until(lambda: state() == "REACHABLE", 5, "the kernel's answer to the probe")
        stream.close()
        conn.close()
    finally:
        listener.close()
    assert host.counters.neigh_res_failed == 0 and host.counters.unreachable == 0
