"""The MPTCP connection machine on the in-memory link (`stack.sim`), in virtual time:
two of our connections (initiator and listener) exchange data through loss, duplication
and reordering, in v1 and v0, and fall back when a "middlebox" strips the options.
Deterministic and fast; the same code runs over veths against the kernel in
`test_mptcp_interop.py`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
from typing import Any

import pytest

from stack.mptcp.connection import MptcpConfig, MptcpConnection
from stack.mptcp.listener import MptcpListener
from stack.mptcp.token import TokenTable
from stack.sim import PathConfig, Simulator
from stack.tcp.connection import TcpConfig
from stack.tcp.segment import SYN, Segment
from stack.wire.mptcp import MpCapable

CLIENT = (ipaddress.ip_address("192.0.2.1"), 40000)
SERVER = (ipaddress.ip_address("192.0.2.2"), 80)


class ClientEnd:
    def __init__(self, msk: MptcpConnection, strip: Any = None):
        self.msk = msk
        self.strip = strip

    def handle_segment(self, seg: Segment, now: float) -> None:
        if self.strip is not None and self.strip(seg):
            seg.extra_options = ()
        for sf in self.msk.subflows:
            if not sf.gone and sf.local[1] == seg.dst_port:
                self.msk.handle_segment(sf, seg, now)
                return

    def handle_timer(self, now: float) -> None:
        self.msk.handle_timer(now)

    def poll_segments(self) -> list[Segment]:
        return [seg for _, seg in self.msk.poll_segments()]

    def next_timer(self) -> float | None:
        return self.msk.next_timer()


class ServerEnd:
    def __init__(self, listener: MptcpListener, strip: Any = None):
        self.listener = listener
        self.msk: MptcpConnection | None = None
        self.strip = strip

    def handle_segment(self, seg: Segment, now: float) -> None:
        if self.strip is not None and self.strip(seg):
            seg.extra_options = ()
        if self.msk is not None:
            for sf in self.msk.subflows:
                if sf.remote[1] == seg.src_port and not sf.gone:
                    self.msk.handle_segment(sf, seg, now)
                    self.listener.settle(self.msk)
                    return
        remote = (CLIENT[0], seg.src_port)
        if (SERVER, remote) in self.listener.joins:  # a half-open join: the listener's
            joined = self.listener.handle_join_segments(SERVER, remote, [seg], now)
            if joined is not None:
                self.msk.handle_segment(joined[1], seg, now)
            return
        msk = self.listener.handle_syn(SERVER, remote, seg, now)
        if msk is not None:
            self.msk = msk

    def handle_timer(self, now: float) -> None:
        self.listener.handle_timer(now)
        if self.msk is not None:
            self.msk.handle_timer(now)
            self.listener.settle(self.msk)

    def poll_segments(self) -> list[Segment]:
        out = [seg for _, _, seg in self.listener.poll_segments()]
        if self.msk is not None:
            out += [seg for _, seg in self.msk.poll_segments()]
        return out

    def next_timer(self) -> float | None:
        times = [self.listener.next_timer(), self.msk.next_timer() if self.msk else None]
        return min((t for t in times if t is not None), default=None)


class App:
    """Sends `data`, then DATA_FIN; reads everything."""

    def __init__(self, get: Any, data: bytes):
        self.get = get
        self.data = memoryview(data)
        self.offset = 0
        self.received = bytearray()
        self.shut = False

    def __call__(self, now: float) -> None:
        msk: MptcpConnection | None = self.get()
        if msk is None or not msk.established:
            return
        while self.offset < len(self.data) and msk.send_space:
            self.offset += msk.send(self.data[self.offset : self.offset + 65536], now)
        if self.offset == len(self.data) and not self.shut:
            self.shut = True
            msk.shutdown_write(now)
        if msk.readable:
            self.received += msk.receive(1 << 30, now)


def run_pair(
    config: MptcpConfig,
    *,
    size: int = 1 << 20,
    path: PathConfig | None = None,
    seed: int = 1,
    strip_to_server: Any = None,
    strip_to_client: Any = None,
    server_config: MptcpConfig | None = None,
) -> tuple[MptcpConnection, MptcpConnection, App, App, bytes, bytes]:
    rng = random.Random(seed)
    up, down = rng.randbytes(size), rng.randbytes(size)
    tokens_a: TokenTable[MptcpConnection] = TokenTable()
    tokens_b: TokenTable[MptcpConnection] = TokenTable()
    client = MptcpConnection.connect(CLIENT, SERVER, config, tokens_a, isn_secret=b"a", now=0.0)
    listener = MptcpListener(SERVER[1], server_config or config, tokens_b, isn_secret=b"b")
    a, b = ClientEnd(client, strip_to_client), ServerEnd(listener, strip_to_server)
    sim = Simulator(a, b, a_to_b=path, b_to_a=path, seed=seed)
    app_a, app_b = App(lambda: client, up), App(lambda: b.msk, down)
    sim.hooks += [app_a, app_b]
    done = sim.run(until=300.0, stop=lambda: bool(client.finished and b.msk and b.msk.finished))
    assert done, f"not finished at t={sim.now}: client {client.describe()}"
    assert b.msk is not None
    return client, b.msk, app_a, app_b, up, down


def assert_intact(app_a: App, app_b: App, up: bytes, down: bytes) -> None:
    assert hashlib.sha256(app_b.received).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(app_a.received).digest() == hashlib.sha256(down).digest()


FAST = TcpConfig(min_rto=0.2)


@pytest.mark.parametrize("version", [0, 1])
def test_clean_transfer_both_ways(version: int) -> None:
    config = MptcpConfig(versions=frozenset({version}), tcp=FAST)
    client, server, app_a, app_b, up, down = run_pair(config)
    assert_intact(app_a, app_b, up, down)
    for msk in (client, server):
        assert msk.version == version and not msk.fallback and not msk.error
        assert msk.counters["DataFinTx"] == msk.counters["DataFinRx"] == 1
    assert client.remote_token == server.local_token
    assert server.remote_token == client.local_token
    assert client.checksum is server.checksum is (version == 0)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("version", [0, 1])
def test_loss_duplication_and_reordering(version: int, seed: int) -> None:
    path = PathConfig(delay=0.005, loss=0.03, duplicate=0.02, reorder=0.05)
    config = MptcpConfig(versions=frozenset({version}), tcp=FAST)
    client, server, app_a, app_b, up, down = run_pair(config, path=path, seed=seed)
    assert_intact(app_a, app_b, up, down)
    assert not client.fallback and not server.fallback


def test_lost_data_fin_is_retransmitted() -> None:
    """A DATA_FIN whose segments are all lost for a while is sent again (with backoff)
    until a DATA_ACK covers it; the connection then closes in order."""
    dropped = []

    def drop_data_fins(seg: Segment) -> bool:
        lost = any(getattr(o, "data_fin", False) for o in seg.extra_options) and len(dropped) < 3
        if lost:
            dropped.append(seg)
        return lost

    path = PathConfig(delay=0.005, drop=drop_data_fins)
    config = MptcpConfig(tcp=FAST)
    _, _, app_a, app_b, up, down = run_pair(config, size=10_000, path=path)
    assert_intact(app_a, app_b, up, down)
    assert len(dropped) == 3


def _strip_all(seg: Segment) -> bool:
    return True


def _not_syn(seg: Segment) -> bool:
    return not seg.flags & SYN


class _AfterHandshake:
    """Strips options once the handshake is done (from the first data segment on)."""

    def __init__(self) -> None:
        self.active = False

    def __call__(self, seg: Segment) -> bool:
        if seg.payload:
            self.active = True
        return self.active


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("synack", "SYN/ACK without MP_CAPABLE"),
        ("third_ack", "third ACK without MP_CAPABLE"),
        ("after_handshake", "without"),
    ],
)
def test_fallback_when_options_are_stripped(where: str, reason: str) -> None:
    """RFC 8684 §3.7: the connection continues as TCP, and no byte is lost or doubled."""
    config = MptcpConfig(tcp=FAST)
    if where == "synack":
        client, server, app_a, app_b, up, down = run_pair(config, strip_to_client=_strip_all)
    elif where == "third_ack":
        client, server, app_a, app_b, up, down = run_pair(config, strip_to_server=_not_syn)
    else:
        strip = _AfterHandshake()
        client, server, app_a, app_b, up, down = run_pair(
            config, strip_to_server=strip, strip_to_client=strip
        )
    assert_intact(app_a, app_b, up, down)
    assert client.fallback and server.fallback  # both ends agree: plain TCP
    assert reason in client.fallback_reason + " / " + server.fallback_reason


def test_v1_initiator_to_v0_only_listener_falls_back_or_retries() -> None:
    v1 = MptcpConfig(versions=frozenset({1}), tcp=FAST)
    v0 = MptcpConfig(versions=frozenset({0}), tcp=FAST)
    client, server, app_a, app_b, up, down = run_pair(v1, server_config=v0, size=100_000)
    assert_intact(app_a, app_b, up, down)
    assert client.fallback and server.fallback


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("before_fallback", [0, 2])
def test_dropped_capable_syns_fall_back_to_a_plain_syn(version: int, before_fallback: int) -> None:
    """A middlebox drops every SYN with MP_CAPABLE: after `syn_retrans_before_fallback`
    retransmissions the initiator's SYN goes without it and the transfer completes as
    plain TCP (RFC 8684 §3.1; Linux's net.mptcp.syn_retrans_before_tcp_fallback)."""
    capable_syns: list[float] = []

    def drop_capable_syns(seg: Segment) -> bool:
        dropped = bool(seg.flags & SYN) and any(isinstance(o, MpCapable) for o in seg.extra_options)
        if dropped:
            capable_syns.append(seg.seq)
        return dropped

    config = MptcpConfig(versions=frozenset({version}), tcp=FAST,
                         syn_retrans_before_fallback=before_fallback)  # fmt: skip
    path = PathConfig(delay=0.005, drop=drop_capable_syns)
    client, server, app_a, app_b, up, down = run_pair(config, size=20_000, path=path)
    assert_intact(app_a, app_b, up, down)
    assert client.fallback and server.fallback
    assert len(capable_syns) == before_fallback + 1
    assert client.counters["MPCapableSYNTXDrop"] == 1
