"""Our userspace stack (`python -m stack`), speaking v1 (`stack-v1`) or v0 (`stack-v0`).

Built only on the stack's CLI contract:

    python -m stack serve   --netns NAME --interface IFNAME=ADDR/PLEN[,gw=ADDR][,subflow]
                            [,signal][,backup][,fullmesh][,id=N][,port=P] --port P
                            --version 0|1 --mode sink|echo|source [--bytes N]
                            [--limits S,A] [--checksum] [--add-addr-timeout S]
                            --control stdin [--bind ADDR]
    python -m stack connect ... --to ADDR:PORT

Each prints one JSON line when a connection ends (an `AppReport` here); `serve` runs
until SIGTERM. A line `{"event": "listening", ...}` (as `testbed.apps` prints) is taken
as readiness; the driver waits for it, up to `READY_TIMEOUT`, before the case goes on.
The stack runs on a bare host (it answers ARP itself), so the topology leaves both ends
bare. Configuration before the start becomes flags: endpoints (flags, ID, port) become
`--interface` fields, `net.mptcp.checksum_enabled` becomes `--checksum` and
`net.mptcp.add_addr_timeout` `--add-addr-timeout`,
`net.mptcp.syn_retrans_before_tcp_fallback` `--syn-retrans-before-fallback` and
`net.ipv4.tcp_syn_retries` `--syn-retries`; other sysctls are not supported.
Endpoint changes while running (`add_endpoint`, `set_backup`, `delete_endpoint`) go
through the process's command channel (`--control stdin`: one JSON command per line,
one `{"event": "control", ...}` answer each, awaited up to `CONTROL_TIMEOUT`).
Limits and sysctls can only be set before the start.

A process is forked from a server that has the stack imported (`conformance.iut.
launcher`: the same `main(argv)` as `python -m stack`, started in milliseconds instead of
0.3 s); `launch = "spawn"` on a subclass, or `STACK_LAUNCH=spawn` in the environment,
runs `python -m stack` itself instead.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from conformance.iut.base import MODES, AppReport, Iut, IutError, NotSupported, project_version
from conformance.iut.launcher import ROOT, ForkedProcess, Launcher, LaunchError
from testbed.apps import Divergence

READY_TIMEOUT = 5.0
CONTROL_TIMEOUT = 5.0
# sysctls with a stack flag: name -> the flag (before the start only)
SYSCTL_FLAGS = {
    "net.mptcp.checksum_enabled": "--checksum",
    "net.mptcp.add_addr_timeout": "--add-addr-timeout",
    "net.mptcp.syn_retrans_before_tcp_fallback": "--syn-retrans-before-fallback",
    "net.ipv4.tcp_syn_retries": "--syn-retries",
    "net.mptcp.allow_join_initial_addr_port": "--deny-join-initial-address",
}
# Switches without a value: sysctl value -> whether the switch is given
SYSCTL_SWITCHES = {
    "--checksum": {"0": False, "1": True},
    "--deny-join-initial-address": {"0": True, "1": False},
}


@dataclass
class _Endpoint:
    flags: set[str] = field(default_factory=set)
    id: int | None = None
    port: int | None = None


class StackIut(Iut):
    name: ClassVar[str] = "stack"
    versions: ClassVar[frozenset[int]] = frozenset({1})
    version: ClassVar[int] = 1
    bare: ClassVar[bool] = True
    description: ClassVar[str] = "the project's userspace stack"
    # "fork": from a fork server with the stack imported (`launcher`), in milliseconds;
    # "spawn": a fresh `python -m stack` each (0.3 s; what a fault planted at start needs)
    launch: ClassVar[str] = "fork"
    # planted faults (stack/faults.py) switched on in its processes (`STACK_FAULTS`);
    # empty: the environment's own, normally none
    faults: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, topo: Any, host: str = "server") -> None:
        super().__init__(topo, host)
        self._endpoints: dict[str, _Endpoint] = {}
        self._limits: tuple[int, int] | None = None
        self._sysctls: dict[str, str] = {}  # flag -> its value ("" for a switch)
        self._processes: list[subprocess.Popen[str] | ForkedProcess] = []
        self._answers: dict[int, queue.Queue[dict[str, Any]]] = {}  # pid -> control answers
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
        return {
            "implementation": "mptcp-lab userspace stack (python -m stack)",
            "version": project_version(),
            **super().environment(),  # the kernel under its AF_PACKET link
            "python": platform.python_version(),
        }

    # -- configuration --

    def _running(self) -> list[subprocess.Popen[str] | ForkedProcess]:
        return [p for p in self._processes if p.poll() is None]

    def set_limits(self, subflows: int, add_addr_accepted: int) -> None:
        if self._processes:
            raise NotSupported("the stack CLI takes limits only at start (--limits)")
        self._limits = (subflows, add_addr_accepted)

    def add_endpoint(
        self, address: str, *, flags: Iterable[str] = (), id: int | None = None,
        port: int | None = None, ifname: str | None = None,
    ) -> None:  # fmt: skip
        if self._processes:
            command: dict[str, Any] = {"cmd": "add_endpoint", "address": address,
                                       "flags": sorted(flags)}  # fmt: skip
            command.update({k: v for k, v in (("id", id), ("port", port)) if v is not None})
            self._control(command)
            return
        endpoint = self._endpoints.setdefault(address, _Endpoint())
        endpoint.flags.update(flags)
        endpoint.id = id if id is not None else endpoint.id
        endpoint.port = port if port is not None else endpoint.port

    def set_backup(self, address: str, backup: bool) -> None:
        if self._processes:
            self._control({"cmd": "set_backup", "address": address, "backup": backup})
            return
        flags = self._endpoints.setdefault(address, _Endpoint()).flags
        if backup:
            flags.add("backup")
        else:
            flags.discard("backup")

    def delete_endpoint(self, address: str) -> None:
        if self._processes:
            self._control({"cmd": "remove_endpoint", "address": address})
            return
        if self._endpoints.pop(address, None) is None:
            raise IutError(f"{self.name}: no endpoint {address}")

    def set_sysctl(self, name: str, value: str | int) -> None:
        flag = SYSCTL_FLAGS.get(name)
        if flag is None:
            raise NotSupported(
                f"the stack has no equivalent of sysctl {name} (it maps "
                f"{', '.join(sorted(SYSCTL_FLAGS))} to {', '.join(SYSCTL_FLAGS.values())})"
            )
        if self._processes:
            raise NotSupported(f"the stack takes {name} only at start ({flag})")
        switch = SYSCTL_SWITCHES.get(flag)
        if switch is not None:
            if str(value) not in switch:
                raise IutError(f"{self.name}: {name}={value!r}, expected 0 or 1")
            if switch[str(value)]:
                self._sysctls[flag] = ""
            else:
                self._sysctls.pop(flag, None)
        else:
            self._sysctls[flag] = str(value)

    def _control(self, command: dict[str, Any]) -> dict[str, Any]:
        """Send one command to every running process; each must answer ok in time."""
        running = self._running()
        if not running:
            raise IutError(f"{self.name}: no running process to send {command['cmd']} to")
        answer: dict[str, Any] = {}
        for process in running:
            assert process.stdin is not None
            try:
                process.stdin.write(json.dumps(command) + "\n")
                process.stdin.flush()
                answer = self._answers[process.pid].get(timeout=CONTROL_TIMEOUT)
            except (OSError, queue.Empty):
                raise IutError(
                    f"{self.name}: no answer to {command} within {CONTROL_TIMEOUT} s"
                ) from None
            if not answer.get("ok"):
                raise IutError(f"{self.name}: {command['cmd']} refused: {answer.get('error')}")
        return answer

    def snapshot(self) -> str:
        """Each running process's answer to the `state` control command: the data level
        and every subflow of each live connection."""
        try:
            answer = self._control({"cmd": "state"})
        except Exception as error:  # a snapshot is evidence, never a new failure
            return f"state failed: {error}"
        return json.dumps(answer.get("connections"), indent=1)

    def processes(self) -> list[subprocess.Popen[str] | ForkedProcess]:
        """The stack processes started so far (running or not): for resource checks."""
        return list(self._processes)

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
                endpoint = self._endpoints.get(str(address.ip), _Endpoint())
                for flag in sorted(endpoint.flags):
                    text += f",{flag}"
                if endpoint.id is not None:
                    text += f",id={endpoint.id}"
                if endpoint.port is not None:
                    text += f",port={endpoint.port}"
                args += ["--interface", text]
        return args

    def _common(self, mode: str, nbytes: int) -> list[str]:
        if mode not in MODES:
            raise IutError(f"mode {mode!r}: use {', '.join(MODES)}")
        args = ["--netns", self.host.netns, *self._interface_args(),
                "--version", str(self.version), "--mode", mode]  # fmt: skip
        if nbytes:
            args += ["--bytes", str(nbytes)]
        if self.data_seed is not None:
            args += ["--seed", str(self.data_seed)]
        if self._limits:
            args += ["--limits", f"{self._limits[0]},{self._limits[1]}"]
        for flag, value in sorted(self._sysctls.items()):
            args += [flag, value] if value else [flag]
        return [*args, "--control", "stdin"]

    def _start(self, argv: list[str], wait_ready: bool) -> None:
        process: subprocess.Popen[str] | ForkedProcess
        env = {"STACK_FAULTS": ",".join(sorted(self.faults))} if self.faults else {}
        if os.environ.get("STACK_LAUNCH", self.launch) == "spawn":
            process = subprocess.Popen(
                [sys.executable, "-m", "stack", *argv], cwd=ROOT, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                start_new_session=True, env={**os.environ, **env},
            )  # fmt: skip
        else:
            try:
                process = Launcher.shared().start(argv, env)
            except LaunchError as failure:
                raise IutError(f"{self.name}: {failure}") from None
        self._processes.append(process)
        self._answers[process.pid] = queue.Queue()
        reader = threading.Thread(target=self._read, args=(process,), daemon=True)
        reader.start()
        self._readers.append(reader)
        if wait_ready and not self._ready.wait(READY_TIMEOUT) and process.poll() is not None:
            error = process.stderr.read() if process.stderr else ""
            raise IutError(
                f"{self.name}: `python -m stack {' '.join(argv)}` exited "
                f"{process.returncode}: {error.strip()[-500:]}"
            )

    def _read(self, process: subprocess.Popen[str] | ForkedProcess) -> None:
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
            if data.get("event") == "control":
                self._answers[process.pid].put(data)
                continue
            self._add_report(
                AppReport(
                    bytes_received=int(data.get("bytes_received", 0) or 0),
                    bytes_sent=int(data.get("bytes_sent", 0) or 0),
                    mptcp=data.get("mptcp", {}).get("in_use")
                    if isinstance(data.get("mptcp"), dict)
                    else None,
                    error=str(data.get("error") or ""),
                    sha256_sent=str(data.get("sha256_sent") or ""),
                    sha256_received=str(data.get("sha256_received") or ""),
                    duration_s=float(data.get("duration_s") or 0.0),
                    divergences=_divergences(data.get("divergences")),
                    extra=data,
                )
            )

    def listen(
        self, port: int, *, mode: str = "echo", nbytes: int = 0, address: str | None = None
    ) -> None:
        bind = [] if address is None else ["--bind", address]
        self._start(["serve", *self._common(mode, nbytes), "--port", str(port), *bind], True)

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
            for stream in (process.stdin, process.stdout, process.stderr):
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


def _divergences(raw: Any) -> list[Divergence]:
    """The `divergences` of a report line; a malformed entry is left out."""
    found = []
    for item in raw if isinstance(raw, list) else []:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            found.append(Divergence(int(item["offset"]), int(item["length"]),
                                    int(item.get("source", -1))))  # fmt: skip
    return found
