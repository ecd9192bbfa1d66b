"""Link properties measured over real veth links: rate, loss, delay, down/up, blackhole."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable

import pytest

import topologies
from testbed import HostHandle, Topology, _linux, builder
from testbed.errors import TestbedError
from testbed.spec import LinkProps

pytestmark = pytest.mark.netns


def _listen(host: HostHandle, address: str, kind: int = socket.SOCK_STREAM) -> socket.socket:
    with host.entered():
        sock = socket.socket(socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, 0))
    if kind == socket.SOCK_STREAM:
        sock.listen(8)
    return sock


def _connect(host: HostHandle, address: tuple[str, int], timeout: float = 5.0) -> socket.socket:
    with host.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(address)
    return sock


def _handshake_rtt(sock: socket.socket) -> float:
    """The SYN -> SYN/ACK round trip as the kernel measured it (tcp_info.tcpi_rtt, µs):
    a clock read in this process would add its scheduling delays on a loaded machine."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return struct.unpack_from("I", info, 68)[0] / 1e6


def tcp_goodput(client: HostHandle, server: HostHandle, address: str, seconds: float) -> float:
    """Bits per second that one TCP flow delivers from client to server."""
    listener = _listen(server, address)
    received = [0]
    started = threading.Event()
    times = [0.0, 0.0]

    def sink() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            # Skip the first 0.5 s: slow start is not the shaped rate.
            warmup_end = time.monotonic() + 0.5
            while time.monotonic() < warmup_end and conn.recv(1 << 16):
                pass
            times[0] = time.monotonic()
            started.set()
            while chunk := conn.recv(1 << 16):
                received[0] += len(chunk)
            times[1] = time.monotonic()

    thread = threading.Thread(target=sink)
    thread.start()
    data = b"x" * (1 << 16)
    with _connect(client, listener.getsockname()) as conn:
        deadline = time.monotonic() + 0.5 + seconds
        while time.monotonic() < deadline:
            conn.sendall(data)
    thread.join(30)
    listener.close()
    assert started.is_set(), "the flow never got past its warm-up"
    return received[0] * 8 / (times[1] - times[0])


def connect_rtt(client: HostHandle, server: HostHandle, address: str, samples: int = 5) -> float:
    """The smallest TCP handshake time: one round trip, with no data in the queues."""
    listener = _listen(server, address)
    best = float("inf")
    try:
        for _ in range(samples):
            start = time.monotonic()
            conn = _connect(client, listener.getsockname())
            best = min(best, time.monotonic() - start)
            conn.close()
            listener.accept()[0].close()
    finally:
        listener.close()
    return best


def udp_delivery(
    client: HostHandle, server: HostHandle, address: str, count: int, *, warm_up: bool = False
) -> int:
    """How many of `count` datagrams from client reach server.

    With `warm_up`, datagrams are first sent until one arrives: until then the sender's
    neighbour entry is unresolved, and a burst overflows the kernel's queue of packets
    awaiting ARP (unres_qlen_bytes, about 270 of these): under load, 240 extra losses
    once. Off where the very first datagram is what a test checks."""
    receiver = _listen(server, address, socket.SOCK_DGRAM)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    with client.entered():
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    payload = b"p" * 64
    receiver.settimeout(0.2)
    deadline = time.monotonic() + 10.0
    while warm_up:
        sender.sendto(b"warm-up", receiver.getsockname())
        with contextlib.suppress(TimeoutError):
            if receiver.recv(128) == b"warm-up":
                break
        assert time.monotonic() < deadline, "no datagram crossed the link in 10 s"
    for i in range(count):
        sender.sendto(payload, receiver.getsockname())
        if i % 200 == 199:
            time.sleep(0.001)  # pacing, not synchronisation: keeps the veth queue short
    sender.sendto(b"end", receiver.getsockname())
    received = 0
    receiver.settimeout(2.0)
    try:
        while True:
            datagram = receiver.recv(128)
            if datagram == b"end":
                break
            received += datagram == payload  # not a late warm-up datagram
    except TimeoutError:
        pass  # the end marker itself was lost: everything before it has arrived
    receiver.close()
    sender.close()
    return received


def test_shaped_link_carries_one_tcp_flow_at_its_rate(topology: Callable[..., Topology]) -> None:
    topo = topology(topologies.single_path(LinkProps(rate="50mbit")))
    client, server = topo.hosts["client"], topo.hosts["server"]
    goodput = tcp_goodput(client, server, server.address("eth0"), seconds=2.0)
    assert 0.85 * 50e6 <= goodput <= 1.15 * 50e6, f"goodput {goodput / 1e6:.1f} Mbit/s"


def test_rate_changes_while_traffic_flows(topology: Callable[..., Topology]) -> None:
    topo = topology(topologies.single_path(LinkProps(rate="50mbit")))
    client, server = topo.hosts["client"], topo.hosts["server"]
    topo.links["path1"].set_rate("20mbit")
    goodput = tcp_goodput(client, server, server.address("eth0"), seconds=2.0)
    assert 0.85 * 20e6 <= goodput <= 1.15 * 20e6, f"goodput {goodput / 1e6:.1f} Mbit/s"
    topo.links["path1"].set_rate(None)
    assert tcp_goodput(client, server, server.address("eth0"), seconds=1.0) > 200e6


def test_configured_loss_is_observed(topology: Callable[..., Topology]) -> None:
    topo = topology(topologies.single_path(LinkProps(loss=10.0)))
    client, server = topo.hosts["client"], topo.hosts["server"]
    count = 4000
    delivered = udp_delivery(client, server, server.address("eth0"), count, warm_up=True)
    lost = count - delivered
    # Binomial(4000, 0.1): mean 400, sd 19; ±5 sd keeps a false failure below 1e-6.
    assert 305 <= lost <= 495, f"lost {lost} of {count}"
    topo.links["path1"].set_loss(0)
    assert udp_delivery(client, server, server.address("eth0"), 1000) == 1000


def test_configured_delay_shows_in_the_rtt(topology: Callable[..., Topology]) -> None:
    topo = topology(topologies.single_path(LinkProps(delay="15ms")))
    client, server = topo.hosts["client"], topo.hosts["server"]
    rtt = connect_rtt(client, server, server.address("eth0"))
    assert 0.030 <= rtt <= 0.045, f"rtt {rtt * 1e3:.1f} ms for 15 ms each way"
    topo.links["path1"].set_delay("40ms")
    rtt = connect_rtt(client, server, server.address("eth0"), samples=3)
    assert 0.080 <= rtt <= 0.095, f"rtt {rtt * 1e3:.1f} ms for 40 ms each way"


def test_jitter_varies_the_delay_within_its_bound(topology: Callable[..., Topology]) -> None:
    topo = topology(topologies.single_path(LinkProps(delay="20ms", jitter="10ms")))
    client, server = topo.hosts["client"], topo.hosts["server"]
    listener = _listen(server, server.address("eth0"))
    rtts = []
    for _ in range(9):
        conn = _connect(client, listener.getsockname())
        rtts.append(_handshake_rtt(conn))
        conn.close()
        listener.accept()[0].close()
    listener.close()
    rtts = rtts[1:]  # the first handshake waited for ARP as well
    assert all(0.018 <= rtt <= 0.065 for rtt in rtts), rtts
    assert max(rtts) - min(rtts) > 0.002, f"no variation at all: {rtts}"


def test_blackhole_and_down_cut_the_path_and_restore_it(topology: Callable[..., Topology]) -> None:
    topo = topology(topologies.dual_homed())
    client, server = topo.hosts["client"], topo.hosts["server"]
    path1 = topo.links["path1"]
    address = server.address("eth0")
    assert udp_delivery(client, server, address, 200) == 200
    path1.blackhole()
    assert udp_delivery(client, server, address, 200) == 0
    assert udp_delivery(client, server, server.address("eth1"), 200) == 200  # path2 unharmed
    path1.blackhole(False)
    assert udp_delivery(client, server, address, 200) == 200
    path1.down()
    with pytest.raises(OSError):
        _connect(client, (address, 9), timeout=1.0)
    path1.up()
    # Routes come back with the link, including the per-source policy table.
    assert udp_delivery(client, server, address, 200) == 200
    table = client.policy_tables["eth0"]
    routes = client.ipr.route("dump", table=table)
    assert any(r.get("dst") == "192.0.2.0" for r in routes)


def _operstates(topo: Topology) -> set[str]:
    states = set()
    for live in topo.links.values():
        for end in (live.a, live.b):
            [msg] = topo.hosts[end.host].ipr.link("get", index=end.index)
            states.add(str(msg.get("operstate")))
    return states


def test_a_built_or_restored_link_is_operational_at_once(
    topology: Callable[..., Topology],
) -> None:
    """Until the kernel's linkwatch work has run, a veth just set up drops what is sent
    (its noop qdisc): under load, the first SYN of a case was lost that way. build() and
    up() return only once every end's operstate is UP, and the first datagram arrives."""
    topo = topology(topologies.dual_homed())
    assert _operstates(topo) == {"UP"}
    client, server = topo.hosts["client"], topo.hosts["server"]
    assert udp_delivery(client, server, server.address("eth0"), 1) == 1
    path1 = topo.links["path1"]
    path1.down()
    path1.up()
    assert _operstates(topo) == {"UP"}
    assert udp_delivery(client, server, server.address("eth0"), 1) == 1


def test_a_link_that_never_comes_up_is_named(
    topology: Callable[..., Topology], monkeypatch: pytest.MonkeyPatch
) -> None:
    topo = topology(topologies.single_path())
    link = topo.links["path1"]
    server_end = link.b
    topo.hosts[server_end.host].ipr.link("set", index=server_end.index, state="down")
    monkeypatch.setattr(builder, "LINK_UP_TIMEOUT", 0.2)
    with pytest.raises(TestbedError, match=r"client/eth0, server/eth0: not operational"):
        builder._wait_operational(topo, [link.a, link.b])


def test_link_mtu_is_applied(topology: Callable[..., Topology]) -> None:
    topo = topology(topologies.single_path(LinkProps(mtu=1280)))
    for host in topo.hosts.values():
        (link,) = host.ipr.link("get", index=host.interfaces["eth0"].index)
        assert link.get("mtu") == 1280


def test_multi_homed_host_routes_by_source(topology: Callable[..., Topology]) -> None:
    """A socket bound to path2's address reaches the server through eth1 only."""
    topo = topology(topologies.dual_homed())
    client, server = topo.hosts["client"], topo.hosts["server"]
    (route,) = client.ipr.route("get", dst="192.0.2.2", src="198.51.100.1")
    assert route.get("oif") == client.interfaces["eth1"].index
    (route,) = client.ipr.route("get", dst="198.51.100.2", src="192.0.2.1")
    assert route.get("oif") == client.interfaces["eth0"].index
    assert server.sysctl("net.ipv4.ip_forward") == "0"


def test_bare_host_has_no_kernel_address_and_no_offloads(topology: Callable[..., Topology]) -> None:
    topo = topology(topologies.single_path(bare=("client",)))
    client = topo.hosts["client"]
    addresses = [a.get("address") for a in client.ipr.get_addr() if a["index"] != 1]
    assert addresses == []
    (link,) = client.ipr.link("get", index=client.interfaces["eth0"].index)
    assert link.get("operstate") == "UP"
    # Both ends: the kernel peer's frames must reach the raw reader MTU-sized and summed.
    for host in topo.hosts.values():
        with host.entered():
            state = _linux.offloads("eth0")
        assert state == {
            "tx-checksumming": False,
            "tcp-segmentation-offload": False,
            "generic-segmentation-offload": False,
        }, f"{host.name}: {state}"
