"""The codec against the real kernel: every MPTCP option a kernel session puts on the wire
parses, re-emits to the same bytes, and its keys, tokens and HMACs check out.

One session between two kernel namespaces produces, between them: MP_CAPABLE (SYN,
SYN/ACK, ACK, first data), MP_JOIN (SYN, SYN/ACK, ACK), DSS with DATA_FIN, ADD_ADDR and
its echo (a signal endpoint), REMOVE_ADDR (the endpoint deleted), MP_PRIO (backup flag
flipped) and MP_FASTCLOSE (an abortive close).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
import time
from collections.abc import Callable

import pytest

import topologies
from stack.crypto import add_addr_hmac, join_ack_hmac, join_synack_hmac, key_token
from stack.wire import (
    AddAddrV1,
    Dss,
    MalformedOption,
    MpCapable,
    MpFastclose,
    MpJoinAck,
    MpJoinSyn,
    MpJoinSynAck,
    MpPrio,
    MpTcpRst,
    RemoveAddr,
    parse_tcp_options,
)
from stack.wire.tcp import ACK, SYN
from testbed import HostHandle, Topology
from testbed.apps import make_socket
from testbed.mptcp import KernelMptcp

pytestmark = [pytest.mark.netns, pytest.mark.kernel]

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


class Sniffer:
    """Every frame on the client's interfaces, both directions, from a raw socket."""

    def __init__(self, host: HostHandle, ifnames: list[str]):
        self.frames: list[bytes] = []
        self._sockets = []
        for ifname in ifnames:
            with host.entered():
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            sock.bind((ifname, 0))
            sock.settimeout(0.05)
            self._sockets.append(sock)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(s,)) for s in self._sockets]
        for thread in self._threads:
            thread.start()

    def _run(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                self.frames.append(sock.recv(65536))
            except TimeoutError:
                continue

    def stop(self) -> list[bytes]:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        # Frames already queued when the threads stopped are part of the session too: a
        # frame the peer's counters have seen may still sit in our receive buffer.
        for sock in self._sockets:
            sock.setblocking(False)
            try:
                while True:
                    self.frames.append(sock.recv(65536))
            except BlockingIOError:
                pass
            sock.close()
        return self.frames


def _tcp_segments(frames: list[bytes]):  # type: ignore[no-untyped-def]
    """(src ip, (src port, dst port), tcp flags, options area, payload length) of each
    TCP/IPv4 frame."""
    for frame in frames:
        if frame[12:14] != b"\x08\x00" or frame[23] != 6:
            continue
        ihl = (frame[14] & 0x0F) * 4
        total = struct.unpack_from("!H", frame, 16)[0]
        tcp = frame[14 + ihl : 14 + total]
        offset = (tcp[12] >> 4) * 4
        yield (
            ipaddress.IPv4Address(frame[26:30]),
            struct.unpack_from("!HH", tcp),
            tcp[13],
            tcp[20:offset],
            len(tcp) - offset,
        )


def _wait(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_every_kernel_option_parses_re_emits_and_verifies(
    topology: Callable[..., Topology],
) -> None:
    topo = topology(topologies.dual_homed())
    client, server = topo.hosts["client"], topo.hosts["server"]
    kc, ks = KernelMptcp(client.ns), KernelMptcp(server.ns)
    for side in (kc, ks):
        side.set_limits(subflows=4, add_addr_accepted=4)
    client_endpoint = kc.add_endpoint("198.51.100.1", flags={"subflow"})
    sniffer = Sniffer(client, ["eth0", "eth1"])
    try:
        listener = make_socket(server.ns, "192.0.2.2", "mptcp")
        listener.bind(("192.0.2.2", 8000))
        listener.listen()
        conn = make_socket(client.ns, "192.0.2.2", "mptcp")
        conn.connect(("192.0.2.2", 8000))
        accepted, _ = listener.accept()
        conn.sendall(b"a" * 5000)
        received = b""
        while len(received) < 5000:
            received += accepted.recv(65536)
        accepted.sendall(b"b" * 3000)
        # Announced only now, so that nothing from the server precedes the client's
        # first data, which then repeats MP_CAPABLE (RFC 8684 §3.1).
        server_endpoint = ks.add_endpoint("198.51.100.2", flags={"signal"})
        _wait(lambda: len(kc.subflows()) >= 2, 5, "the join")
        _wait(lambda: kc.counters().get("MPAddAddrTxEcho", 0) or kc.counters().get(
            "EchoAdd", 0) or ks.counters().get("EchoAdd", 0), 5, "the ADD_ADDR echo")  # fmt: skip
        subflows_client, subflows_server = kc.subflows(), ks.subflows()
        with kc.counters_delta() as prio:
            kc.set_endpoint_backup(client_endpoint.id, True)
            _wait(lambda: kc.counters().get("MPPrioTx", 0), 5, "MP_PRIO")
        ks.delete_endpoint(server_endpoint.id)
        _wait(lambda: kc.counters().get("RmAddr", 0), 5, "REMOVE_ADDR at the client")
        # An orderly DATA_FIN from the server, then an abortive close from the client.
        accepted.shutdown(socket.SHUT_WR)
        while conn.recv(65536):
            pass
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        _wait(lambda: ks.counters().get("MPFastcloseRx", 0), 5, "MP_FASTCLOSE at the server")
        accepted.close()
        listener.close()
    finally:
        frames = sniffer.stop()
    assert prio.get("MPPrioTx") == 1

    seen: dict[str, list] = {}
    keys: dict[ipaddress.IPv4Address, int] = {}  # sender address -> its key
    for src, ports, flags, area, payload in _tcp_segments(frames):
        for option in parse_tcp_options(area, version=1):
            if isinstance(option, MalformedOption):
                pytest.fail(f"kernel option does not parse: {option}")
            if not hasattr(option, "subtype"):
                continue
            raw = option.emit()
            assert raw in bytes(area), f"{option} does not re-emit to the kernel's bytes"
            name = type(option).__name__
            if isinstance(option, MpCapable):
                phase = {SYN: "syn", SYN | ACK: "synack"}.get(flags & (SYN | ACK), "ack")
                if option.data_level_length is not None:
                    phase = "data"
                name = f"MpCapable.{phase}"
                if option.sender_key is not None and phase == "synack":
                    keys[src] = option.sender_key
                if phase in ("ack", "data") and option.receiver_key is not None:
                    keys[src] = option.sender_key  # type: ignore[assignment]
            if isinstance(option, Dss) and option.data_fin:
                name = "Dss.data_fin"
            if isinstance(option, AddAddrV1) and option.echo:
                name = "AddAddrV1.echo"
            seen.setdefault(name, []).append((src, ports, option, payload))

    for needed in (
        "MpCapable.syn", "MpCapable.synack", "MpCapable.ack", "MpCapable.data",
        "MpJoinSyn", "MpJoinSynAck", "MpJoinAck", "Dss.data_fin", "AddAddrV1",
        "AddAddrV1.echo", "RemoveAddr", "MpPrio",
    ):  # fmt: skip
        assert needed in seen, f"no {needed} in the capture; saw {sorted(seen)}"
    assert "MpFastclose" in seen or "MpTcpRst" in seen

    # Keys -> tokens: as the kernel reports them for this connection (sock_diag).
    client_key, server_key = keys[ipaddress.ip_address("192.0.2.1")], keys[
        ipaddress.ip_address("192.0.2.2")
    ]  # fmt: skip
    assert {s.token_local for s in subflows_client} == {key_token(client_key, 1)}
    assert {s.token_local for s in subflows_server} == {key_token(server_key, 1)}

    # MP_JOIN: the token names the server's connection; both HMACs verify. There may be
    # several joins (to the initial and to the announced address): pair them by ports.
    (_, ports, join_ack, _) = seen["MpJoinAck"][0]
    join_syn = next(o for _, p, o, _ in seen["MpJoinSyn"] if p == ports)
    join_synack = next(o for _, p, o, _ in seen["MpJoinSynAck"] if p == ports[::-1])
    assert isinstance(join_syn, MpJoinSyn) and isinstance(join_synack, MpJoinSynAck)
    assert isinstance(join_ack, MpJoinAck)
    assert join_syn.token == key_token(server_key, 1)
    assert join_synack.hmac == join_synack_hmac(
        1, server_key, client_key, join_synack.nonce, join_syn.nonce
    )
    assert join_ack.hmac == join_ack_hmac(1, client_key, server_key, join_syn.nonce,
                                          join_synack.nonce)  # fmt: skip

    # ADD_ADDR from the server: its HMAC verifies with (server key, client key).
    (_, _, announce, _) = seen["AddAddrV1"][0]
    assert isinstance(announce, AddAddrV1)
    assert announce.address == ipaddress.ip_address("198.51.100.2")
    assert announce.hmac == add_addr_hmac(
        server_key, client_key, announce.address_id, announce.address, announce.port
    )
    (_, _, removal, _) = seen["RemoveAddr"][0]
    assert isinstance(removal, RemoveAddr) and announce.address_id in removal.address_ids
    (_, _, prio_option, _) = seen["MpPrio"][0]
    assert isinstance(prio_option, MpPrio) and prio_option.backup
    if "MpFastclose" in seen:
        (_, _, fastclose, _) = seen["MpFastclose"][0]
        assert isinstance(fastclose, MpFastclose) and fastclose.receiver_key == server_key
    else:
        assert isinstance(seen["MpTcpRst"][0][2], MpTcpRst)
