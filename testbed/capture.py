"""Per-interface packet capture to pcap files (tcpdump), kept only for failing tests.

tcpdump runs inside the interface's namespace with:
- `-w FILE -U`: pcap, written packet by packet, so the file is whole whenever it stops;
- `-s 0`: whole frames (veth hands up to 64 KB GSO frames: see FACTS.md);
- `--immediate-mode`: packets reach tcpdump at once, not in TPACKET_V3 blocks that are
  only handed over after a timeout; otherwise the last packets before `stop()` are lost;
- `-B`: a 16 MiB buffer, so a starved tcpdump drops no frames of a fast transfer;
- `-Z root`: tcpdump keeps root instead of becoming user `tcpdump`, who may not write
  to the output directory.
`start()` returns once tcpdump printed "listening on" (awaited, not slept for). `stop()`
first sends a marker frame out of the interface (a local experimental ethertype, to the
veth peer, which drops it) and waits until tcpdump has written it: tcpdump lags behind
the wire on a loaded machine, and SIGTERM loses what it has not read yet (a test once
found no SYN in a pcap of a finished transfer). Then SIGTERM, on which tcpdump closes
the file and exits.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from testbed.errors import CommandFailed, FeatureMissing, TestbedError
from testbed.netns import Namespace
from testbed.nft import CAPTURE_MARKER
from testbed.process import Background, spawn

# the stop marker (`Capture._drain`): IEEE 802 local experimental ethertype 1, which the
# link impairments (testbed.nft) let through
MARKER_ETHERTYPE = CAPTURE_MARKER
MARKER_PAYLOAD = b"mptcp-lab capture stop marker "
DRAIN_TIMEOUT = 5.0

START_TIMEOUT = 5.0


# tcpdump's kernel buffer (-B, KiB): the 2 MiB default drops frames of a busy veth when
# a loaded machine starves tcpdump (GSO frames are up to 64 KB each).
CAPTURE_BUFFER_KIB = 16384


def _tcpdump() -> str:
    binary = shutil.which("tcpdump")
    if binary is None:
        raise FeatureMissing("tcpdump is missing: install the Debian package `tcpdump`")
    return binary


class Capture:
    """tcpdump on one interface of one namespace, writing `path`."""

    def __init__(self, ns: Namespace, ifname: str, path: Path | str, *, bpf_filter: str = ""):
        self.ns, self.ifname, self.path, self.bpf_filter = ns, ifname, Path(path), bpf_filter
        self._process: Background | None = None

    def __repr__(self) -> str:
        return f"Capture({self.ns.name}/{self.ifname} -> {self.path})"

    def launch(self) -> Capture:
        """Start tcpdump without waiting for it; `wait_running()` completes the start."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        argv = [_tcpdump(), "-i", self.ifname, "-n", "-U", "-s", "0", "--immediate-mode",
                "-B", str(CAPTURE_BUFFER_KIB), "-Z", "root", "-w", str(self.path)]  # fmt: skip
        if self.bpf_filter:  # the stop marker passes any filter
            argv.append(f"({self.bpf_filter}) or ether proto {MARKER_ETHERTYPE:#06x}")
        self._process = spawn(self.ns, argv)
        return self

    def wait_running(self, timeout: float = START_TIMEOUT) -> Capture:
        assert self._process is not None, "launch() first"
        try:
            self._process.wait_for_line("listening on", timeout=timeout, stream="stderr")
        except CommandFailed as error:
            self.stop()
            raise TestbedError(
                f"tcpdump on {self.ns.name}/{self.ifname} did not start: {error}"
            ) from None
        return self

    def start(self, timeout: float = START_TIMEOUT) -> Capture:
        """Start tcpdump and return once it captures."""
        return self.launch().wait_running(timeout)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    def stop(self) -> Path:
        """Stop tcpdump once it has written everything sent before this call (the file
        is complete afterwards); safe to call twice."""
        if self._process is not None:
            if self._process.running:
                self._drain()
            self._process.terminate(grace=5.0)
            self._process = None
        return self.path

    def _drain(self, timeout: float = DRAIN_TIMEOUT) -> bool:
        """Send the marker frame and wait until it is in the file (tcpdump writes packet
        by packet, -U), so tcpdump has read every frame before it. False if it did not
        come within `timeout` (the interface is down, or tcpdump is stuck)."""
        token = MARKER_PAYLOAD + os.urandom(8)
        try:
            with self.ns.entered():
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            with sock:
                sock.bind((self.ifname, 0))
                mac = sock.getsockname()[4]
                sock.send(b"\xff" * 6 + mac + MARKER_ETHERTYPE.to_bytes(2, "big") + token)
        except OSError:
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if token in self.path.read_bytes()[-4096:]:
                    return True
            if self._process is None or not self._process.running:
                return False
            time.sleep(0.002)  # polling the file: tcpdump gives no other sign
        return False

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class CaptureSet:
    """Captures on several interfaces, in one directory, kept or discarded together:
    a test's conftest keeps them (`keep`) when it failed and discards them otherwise."""

    def __init__(self, captures: list[Capture], directory: Path):
        self.captures = captures
        self.directory = directory

    @classmethod
    def start(
        cls,
        targets: Iterable[tuple[Namespace, str, str]],
        directory: Path | None = None,
        timeout: float = START_TIMEOUT,
    ) -> CaptureSet:
        """Capture each (namespace, interface, file name) into `directory` (a fresh
        temporary one by default). All tcpdumps start in parallel; returns when every
        one captures, or stops them all and raises."""
        directory = Path(directory or tempfile.mkdtemp(prefix="mptl-pcap-"))
        captures = [Capture(ns, ifname, directory / name) for ns, ifname, name in targets]
        launched = cls(captures, directory)
        try:
            for capture in captures:
                capture.launch()
            for capture in captures:
                capture.wait_running(timeout)
        except BaseException:
            launched.discard()
            raise
        return launched

    @classmethod
    def for_topology(
        cls,
        topo: Any,
        hosts: tuple[str, ...] = ("client", "server"),
        directory: Path | None = None,
    ) -> CaptureSet:
        """Capture every interface of the named hosts of a built topology, as
        `<host>-<ifname>.pcap`; hosts the topology lacks are skipped."""
        targets = []
        for name in hosts:
            host = topo.hosts.get(name)
            if host is not None:
                targets += [
                    (host.ns, ifname, f"{name}-{ifname}.pcap") for ifname in host.interfaces
                ]
        return cls.start(targets, directory)

    @property
    def paths(self) -> list[Path]:
        return [capture.path for capture in self.captures]

    def stop(self) -> list[Path]:
        return [capture.stop() for capture in self.captures]

    def keep(self, destination: Path | str) -> Path:
        """Stop, and move the pcaps to `destination` (for a failed test)."""
        destination = Path(destination)
        self.stop()
        destination.mkdir(parents=True, exist_ok=True)
        for capture in self.captures:
            if capture.path.exists():
                target = destination / capture.path.name
                shutil.move(str(capture.path), target)
                capture.path = target
        with contextlib.suppress(OSError):
            self.directory.rmdir()
        return destination

    def discard(self) -> None:
        """Stop, and delete the pcaps and their directory (for a test that passed)."""
        self.stop()
        for capture in self.captures:
            with contextlib.suppress(FileNotFoundError):
                capture.path.unlink()
        with contextlib.suppress(OSError):
            self.directory.rmdir()

    def __enter__(self) -> CaptureSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
