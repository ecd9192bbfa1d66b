"""One interface for every implementation under test (IUT).

An IUT runs in the non-tester host of a case's topology (`server` by convention; the
tester is the bare `client`). A case configures it (endpoints, limits, sysctls), starts
it as a listener or an initiator, reads its counters, subflows and application reports,
and the runner stops it. Adding an implementation is one subclass of `Iut`, registered
in `conformance.iut.DRIVERS` (see docs/conformance.md).
"""

from __future__ import annotations

import platform
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from conformance.model import RFC_OF_VERSION

if TYPE_CHECKING:
    from testbed.apps import Divergence

# close-unread: close as data arrives, unread; abort: read once, close with SO_LINGER 0
MODES = ("sink", "echo", "source", "close-unread", "abort")


def source_bytes(nbytes: int, seed: int | None = None) -> bytes:
    """What a `source` application sends: the first `nbytes` of the testbed's
    deterministic stream (`testbed.apps`), the same for every IUT, so that a case can
    check what arrives byte for byte; with a `seed`, other random bytes (iperf-like)."""
    from testbed.apps import BLOCK, SEED, stream_chunk

    seed = SEED if seed is None else seed
    chunks = [stream_chunk(i, seed) for i in range((nbytes + BLOCK - 1) // BLOCK)]
    return b"".join(chunks)[:nbytes]


def project_version() -> str:
    """This project's version, and the commit of its source tree when it runs from a git
    checkout ("0.1.0 (git 695df82a1c-dirty)"); what a report names the stack by."""
    try:
        version = metadata.version("mptcp-lab")
    except metadata.PackageNotFoundError:
        version = "unknown"
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():  # installed, not a checkout
        return version
    try:
        described = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=10"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        described = ""
    return f"{version} (git {described})" if described else version


class IutError(Exception):
    """The IUT could not be started or configured: a harness fault (verdict `error`)."""


class NotSupported(IutError):
    """The IUT has no way to do what the case asks (e.g. a live flag change through a
    CLI that has none): the case is not applicable to it."""


@dataclass
class AppReport:
    """What the IUT's application saw on one connection (one per connection, at its end
    or when the IUT stops)."""

    bytes_received: int = 0
    bytes_sent: int = 0
    data: bytes = b""  # the first bytes received (up to 64 KB), when the driver keeps them
    mptcp: bool | None = None  # MPTCP in use (False: fell back to TCP), None: unknown
    error: str = ""
    sha256_sent: str = ""  # of every byte sent / received ("": the driver cannot tell)
    sha256_received: str = ""
    duration_s: float = 0.0  # from the connection's start to its end
    # Where the received bytes differ from what a source of the run's `data_seed` sends
    # (testbed.apps.StreamChecker): [] when they match or the driver cannot tell
    divergences: list[Divergence] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


class Iut(ABC):
    """An implementation under test, bound to one host of a live topology."""

    name: ClassVar[str]
    versions: ClassVar[frozenset[int]]
    bare: ClassVar[bool]  # True: runs in userspace on a bare host (answers ARP itself)
    description: ClassVar[str] = ""
    # What a `source` sends: None, the testbed's seeded stream; a number, the random
    # bytes of that seed (data the receiver cannot recognise, as from iperf or a file)
    data_seed: int | None = None

    def __init__(self, topo: Any, host: str = "server") -> None:
        self.topo = topo
        self.host = topo.hosts[host]
        self._reports: list[AppReport] = []
        self._reports_changed = threading.Condition()

    # -- availability and identity --

    @classmethod
    def unavailable(cls) -> str | None:
        """None when the IUT can run here, else why not (the runner skips it)."""
        return None

    @classmethod
    def environment(cls) -> dict[str, str]:
        """What identifies this IUT in a report; drivers add their own (`implementation`,
        `version`, `kernel`, ...) to the MPTCP versions it speaks."""
        versions = ", ".join(f"v{v} ({RFC_OF_VERSION[v]})" for v in sorted(cls.versions))
        return {"mptcp": versions, "kernel": platform.release()}

    # -- configuration (before listen/connect, unless the driver supports live changes) --

    @abstractmethod
    def set_limits(self, subflows: int, add_addr_accepted: int) -> None: ...

    @abstractmethod
    def add_endpoint(
        self, address: str, *, flags: Iterable[str] = (), id: int | None = None,
        port: int | None = None, ifname: str | None = None,
    ) -> None: ...  # fmt: skip

    def set_backup(self, address: str, backup: bool) -> None:
        """Flip an endpoint's backup flag on a live connection (MP_PRIO)."""
        raise NotSupported(f"{self.name} cannot change an endpoint's backup flag while running")

    def delete_endpoint(self, address: str) -> None:
        raise NotSupported(f"{self.name} cannot remove an endpoint while running")

    def enable_fastopen(self) -> None:
        """TCP Fast Open (RFC 7413) from now on: listeners issue cookies and take data on
        a SYN with a valid one; connections ask for a cookie and, holding one, send
        their first data on the SYN (Linux: net.ipv4.tcp_fastopen=3, TCP_FASTOPEN on
        the listener, TCP_FASTOPEN_CONNECT on the connecting socket)."""
        raise NotSupported(f"{self.name} has no TCP Fast Open")

    @abstractmethod
    def set_sysctl(self, name: str, value: str | int) -> None: ...

    # -- running --

    @abstractmethod
    def listen(
        self, port: int, *, mode: str = "echo", nbytes: int = 0, address: str | None = None
    ) -> None:
        """Accept connections on every local address at `port` (or, with `address`, on
        that one only); play `mode` on each."""

    @abstractmethod
    def connect(
        self, address: str, port: int, *, mode: str = "sink", nbytes: int = 0,
        source: str | None = None,
    ) -> None:  # fmt: skip
        """Open one connection to `address:port` (returns at once); play `mode` on it."""

    @abstractmethod
    def stop(self) -> None:
        """Stop everything started; idempotent; never raises for a dead IUT."""

    def close_peer(self, port: int) -> None:  # noqa: B027 (optional: no-op by default)
        """The application closes the connection it accepted from peer port `port`, if
        it still holds one. A RST only closes its subflow; the connection stays alive at
        the data level (RFC 8684 §3.5, for break-before-make), and Linux keeps it
        ESTABLISHED until its application closes it. The fuzzer calls this when a run is
        over. A no-op where the IUT's application lets such connections go itself."""

    # -- observation --

    def counters(self) -> dict[str, int]:
        """MIB-style counters (kernel names, without the MPTcpExt prefix)."""
        return {}

    def subflows(self) -> list[Any]:
        raise NotSupported(f"{self.name} cannot list its subflows")

    def connections(self) -> list[Any]:
        raise NotSupported(f"{self.name} cannot list its connections")

    def snapshot(self) -> str:
        """What the IUT's connections are doing now, as text for a human: kept with the
        artefacts of a transfer that hung. Never raises."""
        return ""

    def reports(self) -> list[AppReport]:
        with self._reports_changed:
            return list(self._reports)

    def wait_report(self, within: float, count: int = 1) -> list[AppReport]:
        """Wait (event-driven) until `count` connections have ended; returns all reports."""
        deadline = time.monotonic() + within
        with self._reports_changed:
            while len(self._reports) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._reports_changed.wait(remaining)
            return list(self._reports)

    def _add_report(self, report: AppReport) -> None:
        with self._reports_changed:
            self._reports.append(report)
            self._reports_changed.notify_all()
