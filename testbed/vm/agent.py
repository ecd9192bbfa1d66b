"""The agent inside the guest: PID 1 after the initramfs, run by the project's own Python
over the host's root (shared read-only). It speaks JSON lines over a virtio-serial port
named `mptl.agent`.

Requests carry an `id` and a `cmd`; each gets one answer with the same `id`, `ok` true and
a `result`, or `ok` false with `error` (text) and `kind` (the exception's class name).
Unsolicited lines are events: `{"event": "ready", ...}` once booted, `{"event": "report",
...}` each time an application connection of the IUT ends. Commands:

- `ping`: the kernel release; `run` (argv, within: seconds): wait and return the exit status and
  output; `start` (argv): a handle; `wait` (handle, within); `kill` (handle); `exit`:
  power off.
- `setup` (host, interfaces): a fresh network namespace holding the NICs, renamed and
  addressed as the topology's server host (its MACs, MTUs, addresses, routes, sysctls),
  and the kernel IUT driver (`conformance.iut.kernel.KernelIut`) bound to it;
  `iut` (method, args): one call of that driver; `teardown`: stop the driver, delete the
  namespace and check the reset: every NIC back, no namespace, no process of the case.

Values that are the project's own objects (the host's spec, app reports, subflows) travel
pickled inside the JSON (`pickle` field, base64): both ends run the same code.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import pickle
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Any

PORT_NAME = "mptl.agent"
NIC_PREFIX = "vmnic"
CASE_NS = "case"
RESET_TIMEOUT = 15.0
IUT_METHODS = frozenset(
    {
        "set_limits", "add_endpoint", "set_backup", "delete_endpoint", "set_sysctl",
        "enable_fastopen", "listen", "connect", "counters", "subflows", "connections",
        "snapshot", "reports", "set_data_seed",
    }
)  # fmt: skip


def pack(value: Any) -> str:
    return base64.b64encode(pickle.dumps(value)).decode()


def unpack(text: str) -> Any:
    return pickle.loads(base64.b64decode(text))


def find_port() -> str:
    for entry in Path("/sys/class/virtio-ports").glob("*"):
        with contextlib.suppress(OSError):
            if (entry / "name").read_text().strip() == PORT_NAME:
                return f"/dev/{entry.name}"
    raise RuntimeError(f"no virtio-serial port named {PORT_NAME}")


def nic_paths() -> dict[str, str]:
    """Each NIC's device path (stable across namespaces) -> its current name, in this
    namespace."""
    nics = {}
    for entry in Path("/sys/class/net").iterdir():
        device = entry / "device"
        if device.exists():
            nics[os.path.realpath(device)] = entry.name
    return nics


class Agent:
    def __init__(self, port: str) -> None:
        self.fd = os.open(port, os.O_RDWR)
        self.write_lock = threading.Lock()
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.slots: list[str] = []  # device path of NIC n (PCI order)
        self.case: Any = None  # (Namespace, KernelIut) of the running case

    def send(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message) + "\n").encode()
        with self.write_lock:
            while data:
                data = data[os.write(self.fd, data) :]

    # -- boot --

    def boot(self) -> dict[str, Any]:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=False)
        self.slots = sorted(nic_paths())
        self._name_nics()
        return {
            "event": "ready",
            "release": os.uname().release,
            "mptcp": os.path.exists("/proc/sys/net/mptcp/enabled"),
            "nics": len(self.slots),
            "uptime_s": float(Path("/proc/uptime").read_text().split()[0]),
        }

    def _name_nics(self) -> list[str]:
        """Rename the NICs present in this namespace `vmnicN`; the slots still missing."""
        from pyroute2 import IPRoute

        present = nic_paths()
        missing = []
        renames = []
        for slot, path in enumerate(self.slots):
            name = present.get(path)
            if name is None:
                missing.append(f"{NIC_PREFIX}{slot}")
            elif name != f"{NIC_PREFIX}{slot}":
                renames.append((name, f"{NIC_PREFIX}{slot}"))
        if renames:
            with IPRoute() as ipr:
                for name, wanted in renames:
                    (index,) = ipr.link_lookup(ifname=name)
                    ipr.link("set", index=index, state="down")
                    ipr.link("set", index=index, ifname=wanted)
        return missing

    # -- the loop --

    def serve(self) -> None:
        self.send(self.boot())
        buffer = b""
        while True:
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:  # the host closed its end: wait for it to come back
                time.sleep(0.05)
                continue
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    request = json.loads(line)
                    threading.Thread(target=self.answer, args=(request,), daemon=True).start()

    def answer(self, request: dict[str, Any]) -> None:
        try:
            handler = getattr(self, "do_" + str(request.get("cmd")))
        except AttributeError:
            self.send({"id": request.get("id"), "ok": False, "kind": "ValueError",
                       "error": f"unknown command {request.get('cmd')!r}"})  # fmt: skip
            return
        try:
            result = handler(request)
        except Exception as error:
            detail = f"{error}"
            if isinstance(error, (TypeError, AttributeError, KeyError, NameError, AssertionError)):
                detail += "\n" + traceback.format_exc()  # a bug of ours: where it is
            self.send({"id": request.get("id"), "ok": False,
                       "kind": type(error).__name__, "error": detail})  # fmt: skip
            return
        self.send({"id": request.get("id"), "ok": True, "result": result})

    # -- processes --

    def do_ping(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"release": os.uname().release, "time": time.time()}

    def do_run(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            done = subprocess.run(
                request["argv"], capture_output=True, text=True,
                timeout=float(request.get("within", 30)), check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return {"returncode": None, "stdout": "", "stderr": "timed out"}
        except OSError as error:
            return {"returncode": 127, "stdout": "", "stderr": str(error)}
        return {"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr}

    def do_start(self, request: dict[str, Any]) -> dict[str, Any]:
        process = subprocess.Popen(
            request["argv"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        self.processes[process.pid] = process
        return {"handle": process.pid}

    def do_wait(self, request: dict[str, Any]) -> dict[str, Any]:
        process = self.processes[int(request["handle"])]
        try:
            stdout, stderr = process.communicate(timeout=float(request.get("within", 30)))
        except subprocess.TimeoutExpired:
            return {"returncode": None}
        del self.processes[process.pid]
        return {"returncode": process.returncode, "stdout": stdout.decode(errors="replace"),
                "stderr": stderr.decode(errors="replace")}  # fmt: skip

    def do_kill(self, request: dict[str, Any]) -> dict[str, Any]:
        process = self.processes.pop(int(request["handle"]))
        process.kill()
        process.wait()
        return {"returncode": process.returncode}

    def do_exit(self, request: dict[str, Any]) -> dict[str, Any]:
        threading.Thread(target=power_off, daemon=True).start()
        return {}

    # -- the IUT --

    def do_setup(self, request: dict[str, Any]) -> dict[str, Any]:
        from pyroute2 import IPRoute

        from testbed.builder import (
            IFA_F_NODAD,
            HostHandle,
            _base_sysctls,
            _install_routes,
            _write_sysctls,
        )
        from testbed.netns import Namespace, NetlinkIn

        if self.case is not None:
            raise RuntimeError("the previous case was not torn down")
        phases = [("start", time.monotonic())]
        missing = self._wait_nics(RESET_TIMEOUT)
        phases.append(("nics", time.monotonic()))
        if missing:
            raise RuntimeError(f"reset check: NICs {', '.join(missing)} did not come back")
        spec = unpack(request["host"])
        interfaces = unpack(request["interfaces"])  # [(slot, Interface, mac, mtu)]
        if len(interfaces) > len(self.slots):
            raise RuntimeError(f"the host has {len(interfaces)} interfaces, the VM "
                               f"{len(self.slots)} NICs")  # fmt: skip
        ns = Namespace.create(CASE_NS)
        phases.append(("netns", time.monotonic()))
        try:
            with ns.entered():
                _write_sysctls(_base_sysctls(spec))
            phases.append(("sysctls", time.monotonic()))
            with IPRoute() as root:
                for slot, _, _, _ in interfaces:
                    (index,) = root.link_lookup(ifname=f"{NIC_PREFIX}{slot}")
                    root.link("set", index=index, net_ns_fd=ns.path)
            with ns.entered():
                ipr = NetlinkIn(ns, IPRoute())
            host = HostHandle(spec=spec, ns=ns, ipr=ipr)
            phases.append(("moved", time.monotonic()))
            ipr.link("set", index=1, state="up")
            for slot, iface, mac, mtu in interfaces:
                (index,) = ipr.link_lookup(ifname=f"{NIC_PREFIX}{slot}")
                ipr.link("set", index=index, ifname=iface.ifname, address=mac, mtu=mtu)
                ipr.link("set", index=index, state="up")
                iface.index = index
                iface.bare = False
                host.interfaces[iface.ifname] = iface
                for address in iface.addresses:
                    ipr.addr(
                        "add", index=index, address=str(address.ip),
                        prefixlen=address.network.prefixlen,
                        flags=IFA_F_NODAD if address.version == 6 else 0,
                    )  # fmt: skip
            phases.append(("addressed", time.monotonic()))
            _install_routes(host)
            phases.append(("routed", time.monotonic()))
            iut = GuestKernelIut(SimpleNamespace(hosts={spec.name: host}), spec.name)
            iut.agent = self
        except BaseException:
            self._release(ns, host.ipr if "host" in locals() else None)
            raise
        self.case = (ns, iut)
        phases.append(("driver", time.monotonic()))
        return {"ms": {name: round((t - phases[i][1]) * 1000, 1)
                       for i, (name, t) in enumerate(phases[1:])}}  # fmt: skip

    def do_iut(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.case is None:
            raise RuntimeError("no case is set up")
        method = request["method"]
        if method not in IUT_METHODS:
            raise ValueError(f"no IUT method {method!r}")
        args, kwargs = unpack(request["args"])
        value = getattr(self.case[1], method)(*args, **kwargs)
        return {"pickle": pack(value)}

    def do_teardown(self, request: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        problems = []
        if self.case is not None:
            ns, iut = self.case
            self.case = None
            try:
                iut.stop()
            except Exception as error:
                problems.append(f"stop: {error}")
            stopped = time.monotonic()
            problems += self._release(ns, iut.host.ipr)
            released = time.monotonic()
        missing = self._wait_nics(RESET_TIMEOUT)
        if missing:
            problems.append(f"NICs {', '.join(missing)} did not come back")
        if Path(f"/run/netns/{CASE_NS}").exists():
            problems.append("the case's namespace is still there")
        if self.processes:
            problems.append(f"{len(self.processes)} started processes still tracked")
        if problems:
            raise RuntimeError("reset check failed: " + "; ".join(problems))
        done = time.monotonic()
        if "released" in locals():
            return {"ms": {"stop": round((stopped - started) * 1000, 1),
                           "release": round((released - stopped) * 1000, 1),
                           "check": round((done - released) * 1000, 1)}}  # fmt: skip
        return {"ms": {"check": round((done - started) * 1000, 1)}}

    def _release(self, ns: Any, ipr: Any) -> list[str]:
        """Move the NICs back here and delete the namespace. The NICs are moved by hand:
        the kernel returns them only once the namespace is destroyed, which waits for
        its last socket (an orphan in FIN_WAIT holds it for a minute or more)."""
        from pyroute2 import IPRoute

        problems = []
        with ns.entered(), IPRoute() as inside:
            for link in inside.get_links():
                # Only the NICs are in it (the case makes no device); /sys shows the
                # agent's namespace, not this one, so they are known by having no kind.
                if link["index"] == 1 or link.get_attr("IFLA_LINKINFO") is not None:
                    continue
                try:
                    with open("/proc/1/ns/net") as home:
                        inside.link("set", index=link["index"], net_ns_fd=home.fileno())
                except Exception as error:
                    problems.append(f"moving {link.get_attr('IFLA_IFNAME')} back: {error}")
        if ipr is not None:
            with contextlib.suppress(Exception):
                ipr.close()
        ns.delete()
        return problems

    def _wait_nics(self, within: float) -> list[str]:
        """Wait until every NIC is back in the agent's namespace (a deleted namespace
        returns them asynchronously), named `vmnicN` again; the ones still missing."""
        deadline = time.monotonic() + within
        while True:
            missing = self._name_nics()
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.01)  # polled with a deadline: the kernel gives no event for it here


def _guest_iut_class() -> type:
    import errno
    import socket

    from conformance.iut.base import AppReport, NotSupported
    from conformance.iut.kernel import KernelIut
    from testbed.mptcp import TCP_IS_MPTCP

    SOL_MPTCP, MPTCP_INFO = 284, 1  # linux/socket.h, linux/mptcp.h

    class _GuestKernelIut(KernelIut):
        """The host kernel's driver, unchanged, but for what an older kernel lacks: that
        is not applicable to it (NotSupported), not a harness fault."""

        agent: Agent | None = None
        _in_use: dict[int, bool] = {}  # thread -> MPTCP in use (see _play)

        def _play(self, conn: socket.socket, mode: str, nbytes: int) -> None:
            """Linux 6.1's MPTCP sockets answer no TCP_IS_MPTCP: there MPTCP_INFO tells
            (a connection that fell back passes it to TCP, which refuses it)."""
            try:
                conn.getsockopt(socket.SOL_TCP, TCP_IS_MPTCP)
            except OSError:
                try:
                    conn.getsockopt(SOL_MPTCP, MPTCP_INFO, 64)
                    self._in_use[threading.get_ident()] = True
                except OSError:
                    self._in_use[threading.get_ident()] = False
            super()._play(conn, mode, nbytes)

        def _add_report(self, report: AppReport) -> None:
            in_use = self._in_use.pop(threading.get_ident(), None)
            if report.mptcp is None and in_use is not None:
                report.mptcp = in_use
            super()._add_report(report)
            if self.agent is not None:
                self.agent.send({"event": "report", "pickle": pack(report)})

        def set_data_seed(self, seed: int | None) -> None:
            self.data_seed = seed  # what a `source` sends (the interop matrix sets it)

        def set_sysctl(self, name: str, value: str | int) -> None:
            if not Path("/proc/sys", *name.split(".")).exists():
                raise NotSupported(
                    f"Linux {os.uname().release} has no sysctl {name}: the case needs it"
                )
            super().set_sysctl(name, value)

        def listen(self, port: int, **kwargs: Any) -> None:
            try:
                super().listen(port, **kwargs)
            except OSError as error:
                self._no_fastopen(error, "TCP_FASTOPEN on a listener")
                raise

        def connect(self, address: str, port: int, **kwargs: Any) -> None:
            try:
                super().connect(address, port, **kwargs)
            except OSError as error:
                self._no_fastopen(error, "TCP_FASTOPEN_CONNECT")
                raise

        def _no_fastopen(self, error: OSError, what: str) -> None:
            if self._fastopen and error.errno == errno.ENOPROTOOPT:
                raise NotSupported(
                    f"MPTCP sockets of Linux {os.uname().release} take no {what} "
                    "(ENOPROTOOPT): no TCP Fast Open there"
                ) from None

    return _GuestKernelIut


def GuestKernelIut(topo: Any, host: str) -> Any:
    return _guest_iut_class()(topo, host)


def power_off() -> None:
    os.sync()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.reboot(0x4321FEDC)  # LINUX_REBOOT_CMD_POWER_OFF
    os._exit(0)


def main() -> None:
    os.environ.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    os.environ["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    try:
        agent = Agent(find_port())
        agent.serve()
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        power_off()


if __name__ == "__main__":
    main()
