"""One virtual machine: QEMU (TCG) booting a kernel over the host's root, shared read-only.

What runs, and where:
- a network namespace of its own (`mptl-vm-XXXXXX`, with the testbed's owner marker):
  QEMU and virtiofsd run in it and QEMU's taps (`vmtap0`..) live in it, so a run killed
  with SIGKILL is reclaimed like any namespace (`testbed.netns.reclaim_stale` kills the
  processes inside and the taps go with the namespace);
- virtiofsd (bookworm's C one, `/usr/lib/qemu/virtiofsd`) in a private mount namespace
  over a read-only recursive bind of `/` (nothing is left mounted on the host);
- QEMU: `-accel tcg`, `-m 256M` in a shared memfd (vhost-user needs it), the kernel with
  our initramfs (`testbed.vm.initramfs`), one virtio-serial port to the agent
  (`testbed.vm.agent`), NICs on the taps with every offload off (MTU-sized frames with
  their checksums, as the testbed's links to a bare host carry);
- files in `/run/mptcp-lab-vm/<namespace>/`: the sockets, the console log, the pids.

The agent is reached through QEMU's chardev socket; `call()` sends a request and waits
for its answer within a deadline; events (`report`) go to `on_event`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testbed import _linux
from testbed.errors import TestbedError
from testbed.netns import PREFIX, Namespace, shielded
from testbed.vm import initramfs
from testbed.vm.kernels import Kernel, cache_dir

QEMU = "qemu-system-x86_64"
VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
RUN_DIR = Path("/run/mptcp-lab-vm")
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the checkout the guest runs
VM_PREFIX = f"{PREFIX}vm-"
BOOT_TIMEOUT = float(os.environ.get("MPTL_VM_BOOT_TIMEOUT", "60"))
CALL_TIMEOUT = 30.0
NICS = 4
MEMORY = "256M"
TAP = "vmtap"
# Offloads off both ways: the guest sends MTU-sized frames with their checksums filled in
NIC_OPTIONS = (
    "csum=off,gso=off,guest_csum=off,guest_tso4=off,guest_tso6=off,guest_ecn=off,"
    "guest_ufo=off,host_tso4=off,host_tso6=off,host_ecn=off,host_ufo=off,mrg_rxbuf=off"
)
PR_SET_PDEATHSIG = 1


class VmError(TestbedError):
    """The VM could not start, or its agent failed or died; `kind` is the class name of
    the guest's exception when the agent answered with an error."""

    def __init__(self, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.kind = kind


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    os.setpgrp()


def _start_time(pid: int) -> str | None:
    try:
        return str(_linux.process_start_time(pid))
    except Exception:
        return None


class VirtualMachine:
    """A booted guest with its agent; `close()` (or the context manager) removes it all."""

    def __init__(
        self, kernel: Kernel, *, nics: int = NICS, boot_timeout: float = BOOT_TIMEOUT,
        memory: str = MEMORY,
    ) -> None:  # fmt: skip
        self.kernel = kernel
        self.nics = nics
        self.boot_timeout = boot_timeout
        self.memory = memory
        self.ns: Namespace | None = None
        self.dir: Path | None = None
        self.qemu: subprocess.Popen[bytes] | None = None
        self.virtiofsd: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.on_event: Callable[[dict[str, Any]], None] | None = None
        self.ready: dict[str, Any] = {}
        self.boot_seconds = 0.0
        self._lock = threading.Lock()
        self._next_id = 0
        self._pending: dict[int, dict[str, Any]] = {}
        self._answered = threading.Condition(self._lock)
        self._ready_event = threading.Event()
        self._dead: str | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> VirtualMachine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def taps(self) -> list[str]:
        return [f"{TAP}{n}" for n in range(self.nics)]

    # -- start --

    def start(self) -> None:
        started = time.monotonic()
        self.kernel.check()
        for tool in (QEMU, VIRTIOFSD, "unshare"):
            if shutil.which(tool) is None:
                raise VmError(f"{tool} is missing: apt-get install qemu-system-x86 "
                              "(.ci/bootstrap installs it)")  # fmt: skip
        initrd = initramfs.build(self.kernel.modules, cache_dir() / "initramfs")
        reclaim()  # the files of VMs whose run was killed
        try:
            with shielded():  # made and recorded, or neither
                self.ns = Namespace.create(f"{VM_PREFIX}{secrets.token_hex(3)}")
            self.dir = RUN_DIR / self.ns.name
            self.dir.mkdir(parents=True, exist_ok=True)
            self._start_virtiofsd()
            self._start_qemu(initrd)
            self._connect()
            self._wait_ready(started)
        except BaseException:
            self.close()
            raise
        if not self.ready.get("mptcp"):
            release = self.ready.get("release", "?")
            self.close()
            raise VmError(
                f"kernel {self.kernel.name} ({release}) has no MPTCP "
                "(net.mptcp.enabled is absent): build it with CONFIG_MPTCP=y"
            )

    def _start_virtiofsd(self) -> None:
        assert self.dir is not None and self.ns is not None
        root = self.dir / "root"
        root.mkdir(exist_ok=True)
        socket_path = self.dir / "fs.sock"
        script = (
            'mount --rbind / "$1" && mount -o remount,bind,ro "$1" && '
            'exec "$2" --socket-path="$3" -o source="$1" -o sandbox=chroot -o cache=always '
            "-o no_posix_lock -o no_flock -o log_level=err"
        )
        argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "virtiofsd",
                str(root), VIRTIOFSD, str(socket_path)]  # fmt: skip
        with self.ns.entered(), open(self.dir / "virtiofsd.log", "wb") as log:
            self.virtiofsd = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )  # fmt: skip
        self._record_pids()
        self._poll(lambda: socket_path.exists(), 10.0, "virtiofsd did not make its socket",
                   self.virtiofsd, self.dir / "virtiofsd.log")  # fmt: skip

    def _start_qemu(self, initrd: Path) -> None:
        assert self.dir is not None and self.ns is not None
        python = sys.executable
        append = [
            "console=ttyS0",
            "panic=-1",
            "quiet",
            "loglevel=3",
            "mitigations=off",
            "tsc=reliable",
            "no_timer_check",
            "rdinit=/init",
            f"mptl.python={python}",
            # the guest runs this checkout's code, not whatever the venv's editable
            # install points at (a second worktree sharing one venv ran the other's)
            f"mptl.root={PROJECT_ROOT}",
        ]
        argv = [
            QEMU, "-name", self.ns.name, "-accel", "tcg,thread=multi,tb-size=64",
            "-machine", "q35", "-cpu", "max", "-smp", "1", "-m", self.memory,
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-object", f"memory-backend-memfd,id=mem,size={self.memory},share=on",
            "-numa", "node,memdev=mem",
            "-kernel", str(self.kernel.image), "-initrd", str(initrd),
            "-append", " ".join(append),
            "-serial", f"file:{self.dir / 'console.log'}",
            "-chardev", f"socket,id=fs,path={self.dir / 'fs.sock'}",
            "-device", "vhost-user-fs-pci,chardev=fs,tag=rootfs,queue-size=1024",
            "-chardev", f"socket,id=agent,path={self.dir / 'agent.sock'},server=on,wait=off",
            "-device", "virtio-serial-pci",
            "-device", "virtserialport,chardev=agent,name=mptl.agent",
        ]  # fmt: skip
        for n, tap in enumerate(self.taps):
            mac = f"02:00:00:00:00:{n + 1:02x}"
            nic = f"virtio-net-pci,netdev=n{n},mac={mac},romfile=,{NIC_OPTIONS}"
            argv += ["-netdev", f"tap,id=n{n},ifname={tap},script=no,downscript=no",
                     "-device", nic]  # fmt: skip
        with self.ns.entered(), open(self.dir / "qemu.log", "wb") as log:
            self.qemu = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )  # fmt: skip
        self._record_pids()

    def _record_pids(self) -> None:
        assert self.dir is not None
        pids = {
            str(p.pid): _start_time(p.pid) for p in (self.qemu, self.virtiofsd) if p is not None
        }
        (self.dir / "pids.json").write_text(json.dumps(pids))

    def _poll(
        self, done: Callable[[], bool], within: float, what: str,
        process: subprocess.Popen[bytes] | None, log: Path,
    ) -> None:  # fmt: skip
        deadline = time.monotonic() + within
        while not done():
            if process is not None and process.poll() is not None:
                raise VmError(f"{what}: it exited {process.returncode}: {_tail(log)}")
            if time.monotonic() > deadline:
                raise VmError(f"{what} within {within:.0f} s: {_tail(log)}")
            time.sleep(0.01)  # polled with a deadline: a file appearing has no event here

    def _connect(self) -> None:
        assert self.dir is not None
        path = str(self.dir / "agent.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

        def connected() -> bool:
            try:
                sock.connect(path)
            except (FileNotFoundError, ConnectionRefusedError):
                return False
            return True

        try:
            self._poll(connected, 10.0, "QEMU did not open the agent's socket", self.qemu,
                       self.dir / "qemu.log")  # fmt: skip
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self._reader = threading.Thread(target=self._read, daemon=True, name="vm-agent")
        self._reader.start()

    def _wait_ready(self, started: float) -> None:
        assert self.dir is not None
        deadline = started + self.boot_timeout
        while not self._ready_event.wait(0.05):
            if self._dead and self.qemu is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.qemu.wait(2.0)  # the channel closes first when QEMU gives up
            if self.qemu is not None and self.qemu.poll() is not None:
                raise VmError(
                    f"QEMU exited {self.qemu.returncode} while booting {self.kernel.name}: "
                    f"{_tail(self.dir / 'qemu.log')}; console: {_tail(self.dir / 'console.log')}"
                )
            if self._dead:
                raise VmError(f"the guest died while booting ({self._dead}); console: "
                              f"{_tail(self.dir / 'console.log')}")  # fmt: skip
            if time.monotonic() > deadline:
                raise VmError(
                    f"the guest ({self.kernel.name}) was not up within {self.boot_timeout:.0f} s "
                    f"(MPTL_VM_BOOT_TIMEOUT); console: {_tail(self.dir / 'console.log')}"
                )
        self.boot_seconds = time.monotonic() - started

    # -- the agent --

    def _read(self) -> None:
        assert self.sock is not None
        buffer = b""
        reason = "the agent's channel closed"
        try:
            while True:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    break
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    try:
                        message = json.loads(line)
                    except ValueError:
                        continue  # not ours (a console line): ignore
                    self._dispatch(message)
        except OSError as error:
            reason = f"the agent's channel failed: {error}"
        with self._lock:
            self._dead = reason
            self._answered.notify_all()

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "event" in message:
            if message["event"] == "ready":
                self.ready = message
                self._ready_event.set()
            elif self.on_event is not None:
                self.on_event(message)
            return
        with self._lock:
            self._pending[int(message.get("id", -1))] = message
            self._answered.notify_all()

    def alive(self) -> bool:
        return (
            self._dead is None
            and self.qemu is not None
            and self.qemu.poll() is None
            and self._ready_event.is_set()
        )

    def call(self, cmd: str, timeout: float = CALL_TIMEOUT, **args: Any) -> Any:
        """One request to the agent; its result, or VmError (with the guest's error
        `kind` in `.kind`) when it failed, timed out or the agent is gone."""
        if self.sock is None:
            raise VmError("the VM is not running")
        with self._lock:
            if self._dead:
                raise VmError(f"the guest agent is gone ({self._dead})")
            self._next_id += 1
            ident = self._next_id
        data = (json.dumps({"id": ident, "cmd": cmd, **args}) + "\n").encode()
        try:
            self.sock.sendall(data)
        except OSError as error:
            raise VmError(f"the guest agent is gone ({error})") from None
        deadline = time.monotonic() + timeout
        with self._lock:
            while ident not in self._pending:
                if self._dead:
                    raise VmError(f"the guest agent died during {cmd!r} ({self._dead})")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise VmError(f"the guest agent did not answer {cmd!r} within {timeout} s")
                self._answered.wait(min(remaining, 0.5))
                if self.qemu is not None and self.qemu.poll() is not None:
                    self._dead = f"QEMU exited {self.qemu.returncode}"
            answer = self._pending.pop(ident)
        if not answer.get("ok"):
            raise VmError(f"{cmd}: {answer.get('error')}", kind=answer.get("kind", ""))
        return answer.get("result")

    # -- stop --

    def close(self) -> None:
        """Power the guest off and remove everything; safe to call twice, never raises
        for a dead guest."""
        if self.sock is not None and self.alive():
            with contextlib.suppress(Exception):
                self.call("exit", timeout=2.0)
        if self.qemu is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.qemu.wait(2.0)
        for process in (self.qemu, self.virtiofsd):
            if process is not None and process.poll() is None:
                with contextlib.suppress(OSError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.kill()
                process.wait()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()
            self.sock = None
        if self._reader is not None:
            self._reader.join(2.0)
        if self.ns is not None:
            self.ns.delete()
            self.ns = None
        if self.dir is not None:
            if not os.environ.get("MPTL_VM_KEEP"):  # keep the logs to debug a boot
                shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def rss_bytes(self) -> int:
        """QEMU's resident memory."""
        if self.qemu is None:
            return 0
        with open(f"/proc/{self.qemu.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0


def _tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty)"


def reclaim() -> list[str]:
    """Remove what killed runs left: the VM directories whose namespace is gone (their
    QEMU and virtiofsd, when still alive, are killed by pid and start time)."""
    removed: list[str] = []
    if not RUN_DIR.is_dir():
        return removed
    for entry in RUN_DIR.iterdir():
        if Path(f"/run/netns/{entry.name}").exists():
            continue  # live (or reclaimed with its namespace by netns.reclaim_stale)
        with contextlib.suppress(OSError, ValueError):
            for pid, start in json.loads((entry / "pids.json").read_text()).items():
                if start is not None and _start_time(int(pid)) == start:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry.name)
    return removed
