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
