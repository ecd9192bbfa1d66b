"""Our userspace stack (`python -m stack`), speaking v1 (`stack-v1`) or v0 (`stack-v0`).

Built only on the stack's CLI contract:

    python -m stack serve   --netns NAME --interface IFNAME=ADDR/PLEN[,gw=ADDR][,subflow]
                            [,signal][,backup][,fullmesh] --port P --version 0|1
                            --mode sink|echo|source [--bytes N] [--limits S,A]
    python -m stack connect ... --to ADDR:PORT

Each prints one JSON line when a connection ends (an `AppReport` here); `serve` runs
until SIGTERM. A line `{"event": "listening", ...}` (as `testbed.apps` prints) is taken
as readiness; the driver waits for it, up to `READY_TIMEOUT`, before the case goes on.
The stack runs on a bare host (it answers ARP itself), so the topology leaves both ends
bare. Endpoint flags become `--interface` flags, so they must be set before the start;
live changes (MP_PRIO through a backup flip) are not part of the contract: cases that
need them are not applicable.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from conformance.iut.base import MODES, AppReport, Iut, IutError

READY_TIMEOUT = 5.0


class StackIut(Iut):
    name: ClassVar[str] = "stack"
    versions: ClassVar[frozenset[int]] = frozenset({1})
    version: ClassVar[int] = 1
    bare: ClassVar[bool] = True
    description: ClassVar[str] = "the project's userspace stack"

    def __init__(self, topo: Any, host: str = "server") -> None:
        super().__init__(topo, host)
        self._endpoints: dict[str, set[str]] = {}
        self._limits: tuple[int, int] | None = None
        self._processes: list[subprocess.Popen[str]] = []
        self._readers: list[threading.Thread] = []
        self._ready = threading.Event()

    @classmethod
    def unavailable(cls) -> str | None:
        try:
            found = importlib.util.find_spec("stack.__main__") is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return "the stack has no CLI yet (stack/__main__.py is missing)"
        return None

    @classmethod
    def environment(cls) -> dict[str, str]:
        return {"stack_version": str(cls.version)}

    # -- configuration --

    def set_limits(self, subflows: int, add_addr_accepted: int) -> None:
        if self._processes:
            from conformance.iut.base import NotSupported

            raise NotSupported("the stack CLI takes limits only at start (--limits)")
        self._limits = (subflows, add_addr_accepted)

    def add_endpoint(
        self, address: str, *, flags: Iterable[str] = (), id: int | None = None,
        port: int | None = None, ifname: str | None = None,
    ) -> None:  # fmt: skip
        if port is not None or id is not None:
            from conformance.iut.base import NotSupported

            raise NotSupported("the stack CLI takes no endpoint port or ID")
        self._endpoints.setdefault(address, set()).update(flags)

    def set_sysctl(self, name: str, value: str | int) -> None:
        from conformance.iut.base import NotSupported

        raise NotSupported(f"the stack has no sysctl {name}")

    # -- running --

    def _interface_args(self) -> list[str]:
        args = []
        for ifname, iface in self.host.interfaces.items():
            for address in iface.addresses:
                text = f"{ifname}={address.with_prefixlen}"
                gateways = [g for g in iface.gateways if ":" in g] if address.version == 6 else [
                    g for g in iface.gateways if ":" not in g
                ]  # fmt: skip
                if gateways:
                    text += f",gw={gateways[0]}"
                for flag in sorted(self._endpoints.get(str(address.ip), ())):
                    text += f",{flag}"
                args += ["--interface", text]
        return args

    def _common(self, mode: str, nbytes: int) -> list[str]:
        if mode not in MODES:
            raise IutError(f"mode {mode!r}: use {', '.join(MODES)}")
        args = ["--netns", self.host.netns, *self._interface_args(),
                "--version", str(self.version), "--mode", mode]  # fmt: skip
        if nbytes:
            args += ["--bytes", str(nbytes)]
        if self._limits:
            args += ["--limits", f"{self._limits[0]},{self._limits[1]}"]
        return args

    def _start(self, argv: list[str], wait_ready: bool) -> None:
        root = Path(__file__).resolve().parents[2]
        process = subprocess.Popen(
            [sys.executable, "-m", "stack", *argv],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._processes.append(process)
        reader = threading.Thread(target=self._read, args=(process,), daemon=True)
        reader.start()
        self._readers.append(reader)
        if wait_ready and not self._ready.wait(READY_TIMEOUT) and process.poll() is not None:
            error = process.stderr.read() if process.stderr else ""
            raise IutError(
                f"{self.name}: `python -m stack {' '.join(argv)}` exited "
                f"{process.returncode}: {error.strip()[-500:]}"
            )

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if not isinstance(data, dict):
                continue
            if data.get("event") in ("listening", "ready"):
                self._ready.set()
                continue
            self._add_report(
                AppReport(
                    bytes_received=int(data.get("bytes_received", 0) or 0),
                    bytes_sent=int(data.get("bytes_sent", 0) or 0),
                    mptcp=data.get("mptcp", {}).get("in_use")
                    if isinstance(data.get("mptcp"), dict)
                    else None,
                    error=str(data.get("error") or ""),
                    extra=data,
                )
            )

    def listen(self, port: int, *, mode: str = "echo", nbytes: int = 0) -> None:
        self._start(["serve", *self._common(mode, nbytes), "--port", str(port)], True)

    def connect(
        self, address: str, port: int, *, mode: str = "sink", nbytes: int = 0,
        source: str | None = None,
    ) -> None:  # fmt: skip
        self._start(["connect", *self._common(mode, nbytes), "--to", f"{address}:{port}"], False)

    def stop(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 3.0
        for process in self._processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for reader in self._readers:
            reader.join(1.0)
        for process in self._processes:
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        self._processes.clear()


class StackV1Iut(StackIut):
    name: ClassVar[str] = "stack-v1"
    versions: ClassVar[frozenset[int]] = frozenset({1})
    version: ClassVar[int] = 1
    description: ClassVar[str] = "the project's userspace stack, RFC 8684 (v1)"


class StackV0Iut(StackIut):
    name: ClassVar[str] = "stack-v0"
    versions: ClassVar[frozenset[int]] = frozenset({0})
    version: ClassVar[int] = 0
    description: ClassVar[str] = "the project's userspace stack, RFC 6824 (v0)"
