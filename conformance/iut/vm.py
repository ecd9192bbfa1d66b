"""Other Linux kernels as IUTs, each in a virtual machine that plays the server host:
`kernel-6.1`, `kernel-6.12` (Debian's cloud kernels, `python -m testbed vm fetch`) and
`kernel-vm:IMAGE[:MODULES]` (any bzImage, with its modules directory).

The VM (`testbed.vm.machine`) boots once per process and serves every case that process
runs. The topology leaves the server host bare (`bare = True`), as for the userspace
stack; the driver then wires each of the host's interfaces to one NIC of the guest: a
veth pair from the host's namespace to the VM's, and in each namespace a tc `mirred`
redirect both ways (interface <-> veth, veth <-> tap). Frames pass unchanged, so the
guest, whose NIC takes the interface's MAC and MTU, owns the host's addresses and answers
ARP and NDP itself.

In the guest the agent makes a fresh network namespace per case, moves the NICs into it
with the interfaces' names, addresses, routes and the host's sysctls (the same
`testbed.builder` code as a kernel host), and runs the host kernel's driver,
`conformance.iut.kernel.KernelIut`, there: each `Iut` call is one agent request. At the
case's end the namespace is deleted (with every socket, endpoint and sysctl of the case)
and the agent checks the reset: every NIC back, no namespace left. A failed setup or
reset, or a dead guest, closes the VM; the next case boots a new one.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Iterable
from typing import Any, ClassVar

from conformance.iut.base import AppReport, Iut, IutError, NotSupported
from testbed.errors import TestbedError
from testbed.vm import kernels
from testbed.vm.agent import pack, unpack
from testbed.vm.machine import QEMU, VIRTIOFSD, VirtualMachine, VmError

log = logging.getLogger(__name__)

SETUP_TIMEOUT = 30.0
TEARDOWN_TIMEOUT = 30.0
VETH = "vmv"  # the VM's namespace end of slot N's veth pair
PEER = "vmp"  # the host's namespace end

_machines: dict[str, VirtualMachine] = {}
_machines_lock = threading.Lock()


def machine(kernel: kernels.Kernel, role: str = "server") -> VirtualMachine:
    """This process's VM of `kernel` for the host `role` (an interop cell of a kernel
    against itself needs two), booted on first use (or again after it died)."""
    key = f"{kernel.name}/{role}"
    with _machines_lock:
        vm = _machines.get(key)
        if vm is not None and not vm.alive():
            _machines.pop(key)
            vm.close()
            vm = None
        if vm is None:
            vm = VirtualMachine(kernel)
            vm.start()
            _machines[key] = vm
        return vm


def discard(key: str) -> None:
    with _machines_lock:
        vm = _machines.pop(key, None)
    if vm is not None:
        vm.close()


def shutdown() -> None:
    """Close every VM of this process (also done at exit)."""
    with _machines_lock:
        machines = list(_machines.values())
        _machines.clear()
    for vm in machines:
        vm.close()


atexit.register(shutdown)


def _tools_missing() -> str | None:
    for tool in (QEMU, VIRTIOFSD, "/usr/bin/busybox"):
        if shutil.which(tool) is None:
            return (f"{tool} is missing: run .ci/bootstrap "
                    "(apt-get install qemu-system-x86 busybox-static)")  # fmt: skip
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (QEMU's taps need it)"
    return None


class VmKernelIut(Iut):
    """A kernel in a VM; subclasses name the kernel (`kernel_name`)."""

    name: ClassVar[str] = "kernel-vm"
    versions: ClassVar[frozenset[int]] = frozenset({1})
    bare: ClassVar[bool] = True  # the guest owns the host's addresses, as a bare host's
    description: ClassVar[str] = "Linux MPTCP of another kernel, in a VM (QEMU)"
    kernel_name: ClassVar[str] = ""  # "6.1", "6.12", or "IMAGE[:MODULES]"

    def __init__(self, topo: Any, host: str = "server") -> None:
        super().__init__(topo, host)
        self._set_up = False
        self._stopped = False
        kernel = self.kernel()
        self._key = f"{kernel.name}/{host}"
        try:
            self.vm = machine(kernel, host)
        except TestbedError as error:  # VmError, KernelError, InitramfsError
            raise IutError(f"{self.name}: {error}") from None
        self.vm.on_event = self._event
        try:
            self._wire()
            interfaces = []
            for slot, iface in enumerate(self.host.interfaces.values()):
                link = self.host.ipr.get_links(iface.index)[0]
                interfaces.append((slot, dataclasses.replace(iface), link.get_attr("IFLA_ADDRESS"),
                                   link.get_attr("IFLA_MTU")))  # fmt: skip
            spec = dataclasses.replace(self.host.spec, bare=False)
            self.vm.call("setup", SETUP_TIMEOUT, host=pack(spec), interfaces=pack(interfaces))
            self._set_up = True
        except BaseException as error:
            self._unwire()
            if isinstance(error, VmError):  # whatever the guest holds now: a new VM next
                discard(self._key)
            if isinstance(error, (VmError, subprocess.CalledProcessError)):
                raise IutError(f"{self.name}: setting the guest up failed: {error}") from None
            raise

    # -- the kernel --

    @classmethod
    def kernel(cls) -> kernels.Kernel:
        if cls.kernel_name in kernels.PACKAGES:
            kernel = kernels.fetched(cls.kernel_name)
            if kernel is None:
                raise IutError(kernels.not_fetched_reason(cls.kernel_name) or "not fetched")
            return kernel
        return kernels.custom(cls.kernel_name)

    @classmethod
    def unavailable(cls) -> str | None:
        missing = _tools_missing()
        if missing:
            return missing
        if cls.kernel_name in kernels.PACKAGES:
            return kernels.not_fetched_reason(cls.kernel_name)
        try:
            cls.kernel().check()
        except kernels.KernelError as error:
            return str(error)
        return None

    @classmethod
    def environment(cls) -> dict[str, str]:
        env = super().environment()
        try:
            kernel = cls.kernel()
        except IutError as error:
            return {**env, "kernel": str(error)}
        return {
            "implementation": "Linux kernel MPTCP in a VM (QEMU TCG)",
            "version": kernel.release or str(kernel.image),
            **env,
            "kernel": kernel.release or str(kernel.image),
            "package": kernel.package or "(own build)",
            "host kernel": os.uname().release,
        }

    # -- wiring the host's interfaces to the guest's NICs --

    def _wire(self) -> None:
        assert self.vm.ns is not None
        interfaces = list(self.host.interfaces.values())
        if len(interfaces) > self.vm.nics:
            raise IutError(f"{self.name}: the host has {len(interfaces)} interfaces, the VM "
                           f"{self.vm.nics} NICs")  # fmt: skip
        from pyroute2 import IPRoute

        from testbed import _linux
        from testbed.netns import NetlinkIn

        with self.vm.ns.entered():
            vm_ipr = NetlinkIn(self.vm.ns, IPRoute())
        try:
            vm_batch, host_batch, flush = [], [], []
            for slot, iface in enumerate(interfaces):
                mtu = self.host.ipr.get_links(iface.index)[0].get_attr("IFLA_MTU")
                veth, peer, tap = f"{VETH}{slot}", f"{PEER}{slot}", self.vm.taps[slot]
                with contextlib.suppress(Exception):  # left by a case that failed
                    vm_ipr.link("del", ifname=veth)
                far = {"ifname": peer, "net_ns_fd": self.host.ns.fd, "mtu": mtu}
                vm_ipr.link("add", ifname=veth, kind="veth", mtu=mtu, state="up", peer=far)
                (peer_index,) = self.host.ipr.link_lookup(ifname=peer)
                self.host.ipr.link("set", index=peer_index, state="up")
                (tap_index,) = vm_ipr.link_lookup(ifname=tap)
                vm_ipr.link("set", index=tap_index, state="up", mtu=mtu)
                with self.vm.ns.entered():
                    _linux.disable_offloads(veth)
                with self.host.entered():
                    _linux.disable_offloads(peer)
                vm_batch += _redirect(tap, veth) + _redirect(veth, tap)
                flush.append(f"qdisc del dev {tap} ingress")
                host_batch += _redirect(iface.ifname, peer) + _redirect(peer, iface.ifname)
            _tc(self.vm.ns, flush, check=False)  # the taps' redirects of the last case
            _tc(self.vm.ns, vm_batch)
            _tc(self.host.ns, host_batch)
        finally:
            vm_ipr.close()

    def _unwire(self) -> None:
        """Delete the veth pairs (the taps stay, with a redirect to nothing)."""
        if self.vm.ns is None:
            return
        from pyroute2 import IPRoute

        from testbed.netns import NetlinkIn

        with self.vm.ns.entered():
            vm_ipr = NetlinkIn(self.vm.ns, IPRoute())
        try:
            for slot in range(self.vm.nics):
                with contextlib.suppress(Exception):
                    vm_ipr.link("del", ifname=f"{VETH}{slot}")
        finally:
            vm_ipr.close()

    # -- the agent --

    def _event(self, message: dict[str, Any]) -> None:
        if message.get("event") == "report":
            report = unpack(message["pickle"])
            if isinstance(report, AppReport):
                self._add_report(report)

    def _call(self, method: str, *args: Any, timeout: float = 30.0, **kwargs: Any) -> Any:
        if not self._set_up or self._stopped:
            raise IutError(f"{self.name}: the guest is not set up")
        try:
            result = self.vm.call("iut", timeout, method=method, args=pack((args, kwargs)))
        except VmError as error:
            kind = getattr(error, "kind", "")
            message = str(error).removeprefix("iut: ")
            if kind == "NotSupported":
                raise NotSupported(f"{self.name}: {message}") from None
            raise IutError(f"{self.name}: {method}: {message}") from None
        return unpack(result["pickle"])

    # -- configuration --

    def set_limits(self, subflows: int, add_addr_accepted: int) -> None:
        self._call("set_limits", subflows, add_addr_accepted)

    def add_endpoint(
        self, address: str, *, flags: Iterable[str] = (), id: int | None = None,
        port: int | None = None, ifname: str | None = None,
    ) -> None:  # fmt: skip
        self._call("add_endpoint", address, flags=list(flags), id=id, port=port, ifname=ifname)

    def set_backup(self, address: str, backup: bool) -> None:
        self._call("set_backup", address, backup)

    def delete_endpoint(self, address: str) -> None:
        self._call("delete_endpoint", address)

    def set_sysctl(self, name: str, value: str | int) -> None:
        self._call("set_sysctl", name, value)

    def enable_fastopen(self) -> None:
        self._call("enable_fastopen")

    # -- running --

    def listen(
        self, port: int, *, mode: str = "echo", nbytes: int = 0, address: str | None = None
    ) -> None:
        self._send_data_seed()
        self._call("listen", port, mode=mode, nbytes=nbytes, address=address)

    def connect(
        self, address: str, port: int, *, mode: str = "sink", nbytes: int = 0,
        source: str | None = None,
    ) -> None:  # fmt: skip
        self._send_data_seed()
        self._call("connect", address, port, mode=mode, nbytes=nbytes, source=source)

    def _send_data_seed(self) -> None:
        """What a `source` sends is chosen on this side (`data_seed`): the guest's driver
        must send the same."""
        if self.data_seed is not None:
            self._call("set_data_seed", self.data_seed)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            if self._set_up:
                self.vm.call("teardown", TEARDOWN_TIMEOUT)
        except VmError as error:  # the reset failed: the next case gets a new VM
            log.warning("%s: %s; the VM is closed", self.name, error)
            discard(self._key)
        finally:
            self.vm.on_event = None
            with contextlib.suppress(Exception):
                self._unwire()

    # -- observation --

    def counters(self) -> dict[str, int]:
        value: dict[str, int] = self._call("counters")
        return value

    def subflows(self) -> list[Any]:
        value: list[Any] = self._call("subflows")
        return value

    def connections(self) -> list[Any]:
        value: list[Any] = self._call("connections")
        return value

    def snapshot(self) -> str:
        try:
            value: str = self._call("snapshot")
        except Exception as error:
            return f"snapshot failed: {error}"
        return value


def _redirect(source: str, target: str) -> list[str]:
    """tc batch lines: every frame arriving at `source` leaves through `target`."""
    return [
        f"qdisc add dev {source} ingress",
        f"filter add dev {source} parent ffff: protocol all prio 1 u32 match u32 0 0 "
        f"action mirred egress redirect dev {target}",
    ]


def _tc(ns: Any, lines: list[str], check: bool = True) -> None:
    with ns.entered():
        done = subprocess.run(
            ["tc", "-force", "-batch", "-"], input="\n".join(lines) + "\n",
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    if check and done.returncode != 0:
        raise IutError(f"tc in {ns.name} failed: {done.stderr.strip()}")


class Kernel61Iut(VmKernelIut):
    name: ClassVar[str] = "kernel-6.1"
    description: ClassVar[str] = "Linux 6.1 LTS MPTCP (Debian 12's cloud kernel) in a VM"
    kernel_name: ClassVar[str] = "6.1"


class Kernel612Iut(VmKernelIut):
    name: ClassVar[str] = "kernel-6.12"
    description: ClassVar[str] = "Linux 6.12 LTS MPTCP (Debian's bookworm backport) in a VM"
    kernel_name: ClassVar[str] = "6.12"


_custom: dict[str, type[VmKernelIut]] = {}


def custom_driver(name: str) -> type[VmKernelIut]:
    """The driver of `kernel-vm:IMAGE[:MODULES]`."""
    path = name.removeprefix("kernel-vm:")
    if not path:
        raise KeyError(f"{name!r}: name the kernel image, kernel-vm:IMAGE[:MODULES]")
    if name not in _custom:
        _custom[name] = type(
            "CustomKernelVmIut", (VmKernelIut,),
            {"name": name, "kernel_name": path,
             "description": f"Linux MPTCP of the kernel image {path} in a VM"},
        )  # fmt: skip
    return _custom[name]
