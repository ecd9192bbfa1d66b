"""Packet captures in namespaces: pcap files scapy reads, with the MPTCP handshake in them."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import TCP
from scapy.utils import rdpcap

from testbed.apps import transfer
from testbed.capture import Capture, CaptureSet
from testbed.errors import TestbedError
from testbed.mptcp import KernelMptcp
from testbed.netns import Namespace
from testbed.process import running
from testbed.tests.test_process import linked_namespaces, wait_until

pytestmark = pytest.mark.netns
SYN, FIN, ACK = 0x02, 0x01, 0x10


@pytest.fixture
def pair() -> Iterator[tuple[Namespace, Namespace]]:
    with linked_namespaces(1) as namespaces:
        yield namespaces


def mptcp_option(packet: object) -> bytes | None:
    """The raw bytes of TCP option kind 30 (scapy 2.8 has no MPTCP layer), if any."""
    for kind, value in packet[TCP].options:  # type: ignore[index]
        if kind == 30:
            return bytes(value)
    return None


def test_capture_holds_the_mp_capable_syn_and_the_whole_connection(
    pair: tuple[Namespace, Namespace], tmp_path: Path
) -> None:
    client, server = pair
    with Capture(server, "eth0", tmp_path / "server.pcap") as capture:
        assert capture.running
        result = transfer(server, client, "192.0.2.2", 5300, 100_000, timeout=10)
        # Closing an MPTCP socket sends the subflow FINs later (after the DATA_FIN): wait
        # until no subflow is left open at either end, then stop at once.
        with KernelMptcp(client) as c, KernelMptcp(server) as s:
            wait_until(lambda: not c.subflows() and not s.subflows(), 5, "both FINs")
    assert not capture.running
    assert result.intact
    packets = [p for p in rdpcap(str(tmp_path / "server.pcap")) if TCP in p]
    syns = [p for p in packets if p[TCP].flags & (SYN | ACK) == SYN]
    assert len(syns) == 1
    option = mptcp_option(syns[0])
    assert option is not None, syns[0][TCP].options
    # RFC 8684 §3.1: a v1 MP_CAPABLE SYN is 4 bytes: subtype 0 and version 1 in one byte.
    assert len(option) == 2 and option[0] >> 4 == 0 and option[0] & 0xF == 1
    assert syns[0][TCP].dport == 5300
    # Stopping right after the last packets still has them: both FINs.
    fins = [p for p in packets if p[TCP].flags & FIN]
    assert {p[TCP].sport for p in fins} >= {5300}
    assert any(p[TCP].dport == 5300 for p in fins)


def test_capture_set_keeps_pcaps_only_when_asked(
    pair: tuple[Namespace, Namespace], tmp_path: Path
) -> None:
    client, server = pair
    targets = [(client, "eth0", "client-eth0.pcap"), (server, "eth0", "server-eth0.pcap")]
    failed_run = CaptureSet.start(targets, tmp_path / "work1")
    assert len(running(client)) == 1 and len(running(server)) == 1
    transfer(server, client, "192.0.2.2", 5301, 10_000, protocol="tcp", timeout=10)
    kept = failed_run.keep(tmp_path / "kept")
    assert running(client) == [] and running(server) == []
    assert sorted(p.name for p in kept.iterdir()) == ["client-eth0.pcap", "server-eth0.pcap"]
    for path in kept.iterdir():
        assert any(TCP in p and p[TCP].flags & SYN for p in rdpcap(str(path)))
    assert not (tmp_path / "work1").exists()

    passed_run = CaptureSet.start(targets, tmp_path / "work2")
    passed_run.discard()
    assert not (tmp_path / "work2").exists()
    assert running(client) == []


def test_capture_on_a_missing_interface_fails_fast(
    pair: tuple[Namespace, Namespace], tmp_path: Path
) -> None:
    with pytest.raises(TestbedError, match="did not start"):
        Capture(pair[0], "eth7", tmp_path / "x.pcap").start(timeout=5)
    assert running(pair[0]) == []


def test_stop_waits_for_a_tcpdump_that_lags_behind_the_wire(
    pair: tuple[Namespace, Namespace], tmp_path: Path
) -> None:
    """On a loaded machine tcpdump reads the wire late, and SIGTERM used to lose what it
    had not read yet (a pcap of a finished transfer once held no SYN). Here tcpdump is
    frozen (SIGSTOP) for the whole transfer and let go only as `stop()` begins: the
    stop marker makes `stop()` wait until tcpdump has written every earlier frame."""
    client, server = pair
    capture = Capture(server, "eth0", tmp_path / "late.pcap").start()
    assert capture._process is not None
    pid = capture._process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        result = transfer(server, client, "192.0.2.2", 5302, 50_000, protocol="tcp", timeout=10)
    finally:
        # the stimulus: tcpdump resumes a little after stop() has begun
        threading.Timer(0.3, os.kill, (pid, signal.SIGCONT)).start()
    capture.stop()
    assert result.intact
    packets = [p for p in rdpcap(str(tmp_path / "late.pcap")) if TCP in p]
    assert any(p[TCP].flags & SYN and not p[TCP].flags & ACK for p in packets)
    assert any(p[TCP].flags & FIN for p in packets)
