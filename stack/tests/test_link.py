"""The AF_PACKET link against the real kernel over veth, offloads on (the default)."""

from __future__ import annotations

import hashlib
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable

import pytest

import topologies
from stack.link import LinkError, RawLink, open_in_netns
from testbed import Topology, _linux

pytestmark = pytest.mark.netns

CLIENT, SERVER = "192.0.2.1", "192.0.2.2"


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )  # fmt: skip
    header = header[:10] + struct.pack("!H", ~_checksum(header) & 0xFFFF) + header[12:]
    return header + payload


def _pseudo(src: str, dst: str, proto: int, length: int) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, proto, length)


@pytest.fixture
def wired(topology: Callable[..., Topology]) -> tuple[Topology, RawLink, bytes]:
    """The client is bare and owned by a RawLink; the server is the kernel with offloads ON."""
    topo = topology(topologies.single_path(bare=("client",)))
    client, server = topo.hosts["client"], topo.hosts["server"]
    with server.entered():
        for command in (_linux.ETHTOOL_STXCSUM, _linux.ETHTOOL_SSG, _linux.ETHTOOL_STSO,
                        _linux.ETHTOOL_SGSO):  # fmt: skip
            _linux.ethtool_set("eth0", command, 1)
    link = open_in_netns("eth0", client.netns)
    server_mac = server.ipr.link("get", index=server.interfaces["eth0"].index)[0].get("address")
    mac = ":".join(f"{b:02x}" for b in link.info.mac)
    server.ipr.neigh("add", dst=CLIENT, lladdr=mac, ifindex=server.interfaces["eth0"].index)
    yield topo, link, bytes.fromhex(server_mac.replace(":", ""))
    link.close()


_pending: dict[int, list[tuple[bytes, bool]]] = {}


def _receive(link: RawLink, match: Callable[[bytes], bool], timeout: float = 3.0):
    """The first waiting frame that matches; frames before it are dropped, later ones kept."""
    pending = _pending.setdefault(id(link), [])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pending:
            pending.extend(link.receive())
        while pending:
            frame, trusted = pending.pop(0)
            if match(frame):
                return frame, trusted
        select.select([link], [], [], 0.05)
    raise AssertionError("no matching frame within the deadline")


def test_interface_info_comes_from_the_namespace(wired) -> None:
    topo, link, _ = wired
    assert link.info.mtu == 1500
    assert link.info.index == topo.hosts["client"].interfaces["eth0"].index


def test_missing_interface_and_namespace_are_named() -> None:
    with pytest.raises(LinkError, match="no interface 'nope0'"):
        RawLink("nope0")
    with pytest.raises(LinkError, match="no network namespace 'mptl-none'"):
        open_in_netns("eth0", "mptl-none")


def test_udp_both_ways(wired) -> None:
    topo, link, server_mac = wired
    server = topo.hosts["server"]
    with server.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((SERVER, 7000))
    sock.settimeout(3)
    payload = b"hello from userspace"
    udp = struct.pack("!HHHH", 40000, 7000, 8 + len(payload), 0) + payload
    csum = ~_checksum(_pseudo(CLIENT, SERVER, 17, len(udp)) + udp) & 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    assert link.send(server_mac + link.info.mac + b"\x08\x00" + _ipv4(CLIENT, SERVER, 17, udp))
    data, peer = sock.recvfrom(100)
    assert (data, peer) == (payload, (CLIENT, 40000))
    sock.sendto(b"reply", (CLIENT, 40000))
    frame, _ = _receive(link, lambda f: f[12:14] == b"\x08\x00" and f[23] == 17)
    assert frame[42:] == b"reply"
    sock.close()


def test_tcp_super_segments_both_ways_with_offloads_on(wired) -> None:
    """We send a 60 KB GSO frame; the kernel's TSO frames reach us larger than the MSS."""
    topo, link, server_mac = wired
    server = topo.hosts["server"]
    with server.entered():
        listener = socket.socket()
    listener.bind((SERVER, 5000))
    listener.listen()
    upload = os.urandom(60000)
    download = os.urandom(300000)
    received = []

    def serve() -> None:
        conn, _ = listener.accept()
        conn.settimeout(5)
        data = b""
        while len(data) < len(upload):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        received.append(data)
        conn.sendall(download)
        conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    ether = server_mac + link.info.mac + b"\x08\x00"

    def segment(flags: int, seq: int, ack: int, payload: bytes = b"", opts: bytes = b"") -> bytes:
        tcp = struct.pack("!HHIIBBHHH", 40000, 5000, seq, ack, (20 + len(opts)) // 4 << 4,
                          flags, 65535, 0, 0) + opts  # fmt: skip
        return tcp + payload

    def send_full(tcp: bytes) -> None:
        csum = ~_checksum(_pseudo(CLIENT, SERVER, 6, len(tcp)) + tcp) & 0xFFFF
        tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
        assert link.send(ether + _ipv4(CLIENT, SERVER, 6, tcp))

    def is_tcp(frame: bytes) -> bool:
        return frame[12:14] == b"\x08\x00" and frame[23] == 6

    isn = 1000
    send_full(segment(0x02, isn, 0, opts=struct.pack("!BBH", 2, 4, 1460)))
    synack, _ = _receive(link, is_tcp)
    server_isn = struct.unpack_from("!I", synack, 38)[0]
    send_full(segment(0x10, isn + 1, server_isn + 1))
    tcp = segment(0x18, isn + 1, server_isn + 1, upload)
    partial = _checksum(_pseudo(CLIENT, SERVER, 6, len(tcp)))
    tcp = tcp[:16] + struct.pack("!H", partial) + tcp[18:]
    assert link.send_segments(ether + _ipv4(CLIENT, SERVER, 6, tcp), mss=1448, l4_offset=34,
                              ipv6=False)  # fmt: skip

    got = bytearray()
    largest = 0
    deadline = time.monotonic() + 10
    while len(got) < len(download) and time.monotonic() < deadline:
        frame, trusted = _receive(link, is_tcp)
        payload = frame[54 : 14 + struct.unpack_from("!H", frame, 16)[0]]  # no Ethernet padding
        if payload:
            largest = max(largest, len(payload))
            seq = struct.unpack_from("!I", frame, 38)[0]
            if seq == server_isn + 1 + len(got):
                got += payload
            assert trusted, "a partial-checksum frame from the local kernel must be trusted"
        send_full(segment(0x10, isn + 1 + len(upload), server_isn + 1 + len(got)))
    thread.join(10)
    listener.close()
    assert received and hashlib.sha256(received[0]).digest() == hashlib.sha256(upload).digest()
    assert bytes(got) == download
    assert largest > 1460, "with TSO on, the kernel's frames exceed the MSS"
