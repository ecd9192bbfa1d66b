"""Plain TCP between our stack and the kernel over a veth, bytes checked end to end."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Callable

import pytest

import topologies
from stack.host import Host
from stack.route import InterfaceConfig
from stack.tcp.connection import TcpConfig
from stack.tcp_host import TcpServer, connect
from testbed import Topology
from testbed.spec import LinkProps

pytestmark = pytest.mark.netns
SIZE = 2 << 20


@pytest.fixture(params=[0.0, 2.0], ids=["clean", "loss2"])
def stack_host(topology: Callable[..., Topology], request: pytest.FixtureRequest):
    topo = topology(topologies.single_path(LinkProps(loss=request.param), bare=("client",)))
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


def _read_all(recv: Callable[[], bytes]) -> bytes:
    chunks = []
    while chunk := recv():
        chunks.append(chunk)
    return b"".join(chunks)


def _upload(topo: Topology, host: Host, server: str) -> None:
    """The stack sends SIZE bytes to a kernel server, which checks them."""
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with topo.hosts["server"].entered():
        listener = socket.socket(family)
    listener.bind((server, 9000))
    listener.listen()
    received: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        conn.settimeout(30)
        received.append(_read_all(lambda: conn.recv(1 << 16)))
        conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    data = os.urandom(SIZE)
    stream = connect(host, (server, 9000), config=TcpConfig(min_rto=0.2))
    stream.sendall(data)
    stream.shutdown()
    thread.join(60)
    listener.close()
    assert received and hashlib.sha256(received[0]).digest() == hashlib.sha256(data).digest()


@pytest.mark.parametrize("server", ["192.0.2.2", "2001:db8:1::2"], ids=["ipv4", "ipv6"])
def test_stack_client_to_kernel_server(stack_host, server: str) -> None:
    """Super-segments (GSO, checksums completed by the kernel) reach the kernel intact."""
    topo, host = stack_host
    _upload(topo, host, server)
    # one frame per super-segment: far fewer sends than MSS-sized segments (under 2 %
    # loss, retransmissions and a smaller window add single-segment sends)
    assert host.counters.frames_out < SIZE // 1448 // 2
    assert host.counters.bad_checksum == 0


def test_segments_cut_in_software_while_the_path_is_not_cached(stack_host, monkeypatch) -> None:
    """With no cached path (every send looks the MAC up again, as after its expiry),
    super-segments are cut and checksummed in Python: the bytes still arrive intact."""
    monkeypatch.setattr("stack.host._PATH_TTL", 0.0)
    topo, host = stack_host
    _upload(topo, host, "192.0.2.2")
    assert host.counters.frames_out > SIZE // 1448


def test_kernel_client_to_stack_server(stack_host) -> None:
    topo, host = stack_host
    server = TcpServer(host, 9001, config=TcpConfig(min_rto=0.2, receive_buffer=1 << 20))
    data = os.urandom(SIZE)
    with topo.hosts["server"].entered():
        client = socket.socket()
    client.settimeout(30)

    def send() -> None:
        client.connect(("192.0.2.1", 9001))
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=send)
    thread.start()
    stream = server.accept(timeout=10)
    got = _read_all(lambda: stream.recv(1 << 16, timeout=30))
    thread.join(30)
    client.close()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
