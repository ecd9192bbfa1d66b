"""Kernels in VMs (testbed.vm): boot and the agent, cleanup after SIGKILL, bad input.

These boot real guests (QEMU TCG, 5-7 s each): a kernel that is not fetched skips its
tests, with the command that fetches it (.ci/bootstrap fetches both).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from testbed.netns import RUN_NETNS, reclaim_stale
from testbed.vm import kernels, machine
from testbed.vm.machine import RUN_DIR, VirtualMachine, VmError

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def _kernel(version: str) -> kernels.Kernel:
    kernel = kernels.fetched(version)
    if kernel is None:
        pytest.skip(kernels.not_fetched_reason(version) or "")
    if machine.shutil.which(machine.QEMU) is None:
        pytest.skip("qemu-system-x86_64 is missing: run .ci/bootstrap")
    return kernel


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_the_guest_sees_the_hosts_tmp() -> None:
    """A CI clone and its virtualenv may live under /tmp: the guest must see them."""
    with tempfile.TemporaryDirectory(dir="/tmp") as directory:
        marker = Path(directory) / "seen-by-the-guest"
        marker.write_text("host\n")
        with VirtualMachine(_kernel("6.12")) as vm:
            done = vm.call("run", argv=["cat", str(marker)])
            assert (done["returncode"], done["stdout"]) == (0, "host\n"), done
            assert vm.call("run", argv=["touch", f"{directory}/guest"])["returncode"] == 0
        assert not (Path(directory) / "guest").exists()  # written in the guest's overlay


def test_boot_and_agent_commands() -> None:
    with VirtualMachine(_kernel("6.12")) as vm:
        assert vm.ready["mptcp"] and vm.ready["release"].startswith("6.12")
        assert vm.boot_seconds < 30, vm.boot_seconds  # goal 8 s on a quiet machine
        assert vm.rss_bytes() < 350 * 2**20
        done = vm.call("run", argv=["cat", "/proc/sys/net/mptcp/enabled"])
        assert (done["returncode"], done["stdout"].strip()) == (0, "1")
        handle = vm.call("start", argv=["sleep", "30"])["handle"]
        assert vm.call("wait", handle=handle, within=0.1)["returncode"] is None
        assert vm.call("kill", handle=handle)["returncode"] == -signal.SIGKILL
        quick = vm.call("start", argv=["sh", "-c", "echo out; exit 3"])["handle"]
        assert vm.call("wait", handle=quick, within=10) == {
            "returncode": 3, "stdout": "out\n", "stderr": ""
        }  # fmt: skip
        with pytest.raises(VmError, match="unknown command"):
            vm.call("no-such-command")
        # The guest's root is the host's, read-only
        done = vm.call("run", argv=["touch", "/usr/mptl-write-test"])
        assert done["returncode"] != 0 and "Read-only" in done["stderr"]
        # The agent dies with its guest: a clear error, no hang
        assert vm.qemu is not None
        vm.qemu.kill()
        started = time.monotonic()
        with pytest.raises(VmError, match="agent"):
            vm.call("ping", timeout=20)
        assert time.monotonic() - started < 5
    assert vm.ns is None and vm.dir is None


def test_sigkilled_run_is_reclaimed() -> None:
    """A process that booted a VM is SIGKILLed: its QEMU and virtiofsd die with it, and
    reclaim removes the namespace (with the taps) and the VM's files."""
    kernel = _kernel("6.12")
    script = (
        "import json, sys, time\n"
        "from testbed.vm.machine import VirtualMachine\n"
        "from testbed.vm import kernels\n"
        "vm = VirtualMachine(kernels.fetched('6.12'))\n"
        "vm.start()\n"
        "print(json.dumps({'ns': vm.ns.name, 'dir': str(vm.dir), 'pids': "
        "[vm.qemu.pid, vm.virtiofsd.pid]}), flush=True)\n"
        "time.sleep(600)\n"
    )
    assert kernel.image.exists()
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        info = json.loads(child.stdout.readline())
    finally:
        child.kill()
        child.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in info["pids"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    reclaim_stale()
    machine.reclaim()
    assert not any(_alive(pid) for pid in info["pids"])
    assert not os.path.exists(f"{RUN_NETNS}/{info['ns']}")
    assert not Path(info["dir"]).exists()
    assert (
        info["ns"]
        not in subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=True
        ).stdout
    )


def test_missing_image_is_a_clear_error(tmp_path: Path) -> None:
    kernel = kernels.custom(str(tmp_path / "bzImage"))
    with pytest.raises(kernels.KernelError, match="does not exist"):
        VirtualMachine(kernel).start()
    from conformance.iut import DRIVERS

    driver = DRIVERS[f"kernel-vm:{tmp_path / 'bzImage'}"]
    assert "does not exist" in (driver.unavailable() or "")


def test_custom_kernel_finds_its_modules(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    (tmp_path / "lib" / "modules" / "6.9.0-test").mkdir(parents=True)
    image = tmp_path / "boot" / "vmlinuz-6.9.0-test"
    assert kernels.custom(str(image)).modules == tmp_path / "lib" / "modules" / "6.9.0-test"
    assert kernels.custom(f"{tmp_path}/bzImage").modules is None
    assert kernels.custom(f"{tmp_path}/bzImage:{tmp_path}/mods").modules == tmp_path / "mods"


def test_not_a_kernel_and_boot_bound(tmp_path: Path) -> None:
    """An image QEMU cannot boot, and a guest not up within the bound: VmError with the
    logs, everything removed."""
    _kernel("6.12")
    bogus = tmp_path / "bzImage"
    bogus.write_bytes(b"not a kernel" * 100)
    with pytest.raises(VmError, match="QEMU exited"):
        VirtualMachine(kernels.custom(str(bogus))).start()
    started = time.monotonic()
    with pytest.raises(VmError, match="not up within 1 s"):
        VirtualMachine(_kernel("6.12"), boot_timeout=1.0).start()
    assert time.monotonic() - started < 10
    assert not [p for p in RUN_DIR.glob("*") if not Path(f"{RUN_NETNS}/{p.name}").exists()]


def test_unfetched_kernel_is_unavailable_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MPTL_VM_CACHE", str(tmp_path))
    from conformance.iut.vm import Kernel61Iut

    if machine.shutil.which(machine.QEMU) is None:
        pytest.skip("qemu-system-x86_64 is missing: run .ci/bootstrap")
    reason = Kernel61Iut.unavailable()
    assert reason == "kernel 6.1 not fetched: run python -m testbed vm fetch 6.1"


def test_kernel_without_mptcp_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A guest whose kernel has no /proc/sys/net/mptcp (as its agent reports) is closed
    with a clear error. (No such kernel is at hand: the boot is stubbed.)"""
    kernel = _kernel("6.12")
    vm = VirtualMachine(kernel)
    for step in ("_start_virtiofsd", "_start_qemu", "_connect"):
        monkeypatch.setattr(vm, step, lambda *args: None)

    def booted(started: float) -> None:
        vm.ready = {"event": "ready", "mptcp": False, "release": "6.0.0-custom"}

    monkeypatch.setattr(vm, "_wait_ready", booted)
    with pytest.raises(VmError, match=r"\(6.0.0-custom\) has no MPTCP"):
        vm.start()
    assert vm.ns is None and vm.dir is None
