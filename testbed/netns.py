"""Named network namespaces, made without forking, with an owner marker for reclaim.

A namespace is made the way `ip netns add` makes it (a bind mount of the namespace
file under /run/netns), but from a thread of this process: `unshare(CLONE_NEWNET)`
moves only the calling thread, which then returns to its own namespace. That is
what lets the testbed beat a script of `ip` commands.

Every namespace carries an owner marker (pid and process start time) under
/run/mptcp-lab/. A namespace whose owner is gone was left by a run killed with
SIGKILL, and `reclaim_stale()` removes it and kills whatever still runs in it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import json
import multiprocessing
import os
import signal
import sys
import threading
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from testbed import _linux
from testbed.errors import NotRootError, TestbedError

RUN_NETNS = "/run/netns"
MARKER_DIR = "/run/mptcp-lab"
PREFIX = "mptl-"
SESSION_ENV = "MPTL_SESSION"

_mount_lock = threading.Lock()
_run_netns_ready = False


def _ensure_run_netns() -> None:
    """Make /run/netns a shared mount point, as `ip netns add` does, once per process.

    Like iproute2: try to mark it shared; only when that fails because it is not a
    mount point, bind-mount it onto itself first. (Binding unconditionally would stack
    a new recursive bind on every run, doubling the mounts each time.)
    """
    global _run_netns_ready
    with _mount_lock:
        if _run_netns_ready:
            return
        os.makedirs(RUN_NETNS, exist_ok=True)
        os.makedirs(MARKER_DIR, exist_ok=True)
        shared = _linux.MS_SHARED | _linux.MS_REC
        try:
            _linux.mount("none", RUN_NETNS, None, shared)
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise
            _linux.mount(RUN_NETNS, RUN_NETNS, None, _linux.MS_BIND | _linux.MS_REC)
            _linux.mount("none", RUN_NETNS, None, shared)
        _run_netns_ready = True


def require_root() -> None:
    if os.geteuid() != 0:
        raise NotRootError(
            "the testbed needs root to create network namespaces; run it as root "
            "(e.g. `sudo`), or in a container with CAP_NET_ADMIN and CAP_SYS_ADMIN"
        )


@contextlib.contextmanager
def _entered(fd: int) -> Iterator[None]:
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _linux.setns(fd)
        try:
            yield
        finally:
            _linux.setns(home)
    finally:
        os.close(home)


_shield = threading.local()


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Hold a SIGTERM's interrupt until the end of the block: a namespace made and not
    yet recorded by its owner, or half removed, would otherwise be left behind. (Only
    SIGTERM, which `unwind_on_sigterm` and `worker_init` turn into KeyboardInterrupt
    through `_interrupt`; Ctrl-C stays Python's.)"""
    depth = getattr(_shield, "depth", 0)
    _shield.depth = depth + 1
    try:
        yield
    finally:
        _shield.depth = depth
        pending = getattr(_shield, "pending", None)
        if depth == 0 and pending:
            _shield.pending = None
            raise KeyboardInterrupt(pending)


def _interrupt(reason: str) -> None:
    """From a signal handler (the main thread): KeyboardInterrupt now, or at the end of
    the shielded block the thread is in."""
    if getattr(_shield, "depth", 0):
        _shield.pending = reason
        return
    raise KeyboardInterrupt(reason)


class Namespace:
    """One named network namespace, owned by this process until `delete()`."""

    def __init__(self, name: str, fd: int):
        self.name = name
        self.fd = fd
        self.path = f"{RUN_NETNS}/{name}"

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    @classmethod
    def create(cls, name: str) -> Namespace:
        """Make the namespace; a caller that must record it before an interrupt comes
        makes and records it in one `shielded()` block."""
        with shielded():
            return cls._create(name)

    @classmethod
    def _create(cls, name: str) -> Namespace:
        require_root()
        _ensure_run_netns()
        path = f"{RUN_NETNS}/{name}"
        # The marker comes first: a namespace never exists without its owner recorded.
        _write_marker(name)
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDONLY, 0o444))
        except FileExistsError:
            _remove_marker(name)
            raise TestbedError(f"network namespace {name!r} already exists") from None
        try:
            home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            try:
                _linux.unshare(_linux.CLONE_NEWNET)
                try:
                    _linux.mount("/proc/thread-self/ns/net", path, None, _linux.MS_BIND)
                finally:
                    _linux.setns(home)
            finally:
                os.close(home)
            fd = os.open(path, os.O_RDONLY)
        except BaseException:
            _remove_namespace_file(name)
            _remove_marker(name)
            raise
        return cls(name, fd)

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Run the body with the calling thread inside this namespace.

        Sockets (netlink included) created in the body stay bound to it, and
        processes started in the body are born in it.
        """
        with _entered(self.fd):
            yield

    @property
    def inode(self) -> int:
        return os.fstat(self.fd).st_ino

    def delete(self) -> None:
        """Kill what runs inside, then remove the namespace. Safe to call twice."""
        if self.fd < 0:
            return
        with shielded():
            kill_processes_in([self.inode])
            os.close(self.fd)
            self.fd = -1
            _remove_namespace_file(self.name)
            _remove_marker(self.name)


def _write_marker(name: str) -> None:
    pid = os.getpid()
    marker = {
        "pid": pid,
        "start_time": _linux.process_start_time(pid),
        # Set by the test session so that it can tell its own leftovers from others'.
        "session": os.environ.get(SESSION_ENV, ""),
    }
    with open(f"{MARKER_DIR}/{name}", "w") as f:
        json.dump(marker, f)


def _remove_marker(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"{MARKER_DIR}/{name}")


def _remove_namespace_file(name: str) -> None:
    path = f"{RUN_NETNS}/{name}"
    with contextlib.suppress(OSError):
        _linux.umount(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _owner_alive(name: str) -> bool:
    try:
        with open(f"{MARKER_DIR}/{name}") as f:
            marker = json.load(f)
        pid, start_time = int(marker["pid"]), marker["start_time"]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return False
    return _linux.process_start_time(pid) == start_time


class NetlinkIn:
    """A pyroute2 object whose every call runs inside `ns`.

    pyroute2 0.9 opens a netlink socket per calling thread, in that thread's current
    namespace: an IPRoute or MPTCP object made inside `Namespace.entered()` answered
    any *other* thread with the root namespace (a soak bench's link flap took a root
    interface down; an endpoint listing showed the root's). Entering the namespace
    around each call makes whatever socket the call opens belong to it. Results that
    are generators (pyroute2 reads lazily) are read in full before leaving."""

    def __init__(self, ns: Namespace, obj: Any) -> None:
        self._ns = ns
        self._obj = obj

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._obj, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._ns.entered():
                result = attr(*args, **kwargs)
                if isinstance(result, types.GeneratorType):
                    result = list(result)
                return result

        return call


def kill_processes_in(inodes: Iterable[int]) -> list[int]:
    """SIGKILL every process whose network namespace is one of `inodes`.

    Deleting a namespace does not end the processes inside it, so a teardown that
    missed one (or a run killed with SIGKILL) must find them through /proc.
    """
    wanted = {f"net:[{inode}]" for inode in inodes}
    if not wanted:
        return []
    me = os.getpid()
    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/net") in wanted:
                os.kill(int(entry), signal.SIGKILL)
                killed.append(int(entry))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return killed


def ours() -> list[str]:
    """Names of every namespace this project made, live owner or not."""
    try:
        return sorted(n for n in os.listdir(RUN_NETNS) if n.startswith(PREFIX))
    except FileNotFoundError:
        return []


def owned_by_process(pid: int | None = None) -> list[str]:
    """Names of our namespaces made by process `pid` (default: this one): what a test
    may compare before and after, while other runs or xdist workers make their own."""
    pid = os.getpid() if pid is None else pid
    return _owned_where("pid", pid)


def owned_by_session(session: str) -> list[str]:
    """Names of our namespaces whose marker carries `session`."""
    return _owned_where("session", session)


def _owned_where(key: str, value: object) -> list[str]:
    names = []
    for name in ours():
        try:
            with open(f"{MARKER_DIR}/{name}") as f:
                if json.load(f).get(key) == value:
                    names.append(name)
        except (FileNotFoundError, ValueError, AttributeError):
            continue
    return names


def unwind_on_sigterm() -> None:
    """SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so that `with build(...)` and
    every `finally` tear down what they made; Python's default would die on the spot and
    leave the namespaces behind. Only where nobody installed a handler of their own."""

    def terminate(signum: int, frame: object) -> None:
        _interrupt(f"signal {signum}")

    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, terminate)
        _on_swallowed_interrupt(lambda: os.kill(os.getpid(), signal.SIGTERM))


def _on_swallowed_interrupt(then: Callable[[], None]) -> None:
    """An interrupt raised inside a weakref callback or a finalizer cannot propagate
    (Python reports it as "Exception ignored" with a traceback): call `then` instead of
    printing it. For a run, SIGTERM again, raised where it can unwind."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        value = unraisable.exc_value
        if isinstance(value, KeyboardInterrupt) and str(value).startswith("signal"):
            then()
            return
        previous(unraisable)

    sys.unraisablehook = hook


def worker_init() -> None:
    """The initializer of a pool's worker process. SIGTERM, which it also gets when the
    process that started it dies, even by SIGKILL (PR_SET_PDEATHSIG), unwinds the job it
    is running (KeyboardInterrupt: topologies torn down) and then ends the worker, with
    its exit handlers (VMs closed), instead of letting it take the next queued job or
    wait for one forever: reclaim spares what a live process owns."""
    import ctypes

    signal.signal(signal.SIGTERM, _leave)
    # a swallowed interrupt: the job runs to its end, then the worker leaves
    _on_swallowed_interrupt(lambda: None)
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before the signal was asked for
        os.kill(os.getpid(), signal.SIGTERM)


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[concurrent.futures.ProcessPoolExecutor]:
    """A pool of `worker_init` processes. Left by an exception (Ctrl-C, or SIGTERM via
    `unwind_on_sigterm`), it does not run the queued jobs first, as the executor's own
    exit would (a killed catalogue run went on for minutes): they are cancelled, each
    worker gets SIGTERM (its running job unwinds, its VMs close) and is waited for, so
    that nothing of the run is left when its process exits."""
    context = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=worker_init
    )
    try:
        yield pool
    except BaseException:
        processes = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            with contextlib.suppress(OSError, ValueError):
                process.terminate()
        for process in processes:
            with contextlib.suppress(OSError, ValueError, AssertionError):
                process.join(WORKER_UNWIND_S)
                if process.is_alive():  # stuck: what it made is reclaimed by the next run
                    process.kill()
        raise
    pool.shutdown(wait=True)


# A worker's job unwinds a topology (and its VMs close, 2 s each at most): ample.
WORKER_UNWIND_S = 60.0


# A worker runs one job at a time under this lock. Once it is leaving (SIGTERM), no job
# starts, and the thread that ends it waits for the lock: a job that was running unwinds
# first (its topology, its VMs), and none is half-built when the process goes.
_job_lock = threading.Lock()
_in_job = False
_leaving = threading.Event()


@contextlib.contextmanager
def worker_job() -> Iterator[None]:
    """Around a job of a pool's worker: SIGTERM unwinds it before the worker ends; a job
    handed over after SIGTERM (the pool's queue runs ahead) does not start."""
    global _in_job
    with _job_lock:
        if _leaving.is_set():
            raise KeyboardInterrupt("the worker is leaving (SIGTERM)")
        _in_job = True
        try:
            yield
        finally:
            _in_job = False


def _leave(signum: int, frame: object) -> None:
    # Only the first SIGTERM interrupts the job: more may follow while it unwinds (the
    # executor terminates the other workers once one has ended), and a second interrupt
    # would cut its teardown short and leave its namespaces behind.
    if _leaving.is_set():
        return
    _leaving.set()
    # Not a daemon: the pool's worker loop may end the main thread meanwhile (its call
    # queue closed under it), and the interpreter would kill a daemon thread in the
    # middle of closing the VMs
    threading.Thread(target=_leave_when_idle).start()
    if _in_job:
        _interrupt(f"signal {signum}")


def _leave_when_idle() -> None:
    import atexit

    with _job_lock:
        atexit._run_exitfuncs()  # the VMs and topologies of this process
        os._exit(1)


def reclaim_stale() -> list[str]:
    """Remove namespaces (and processes in them) whose owning process is gone."""
    if os.geteuid() != 0:
        return []
    stale = [name for name in ours() if not _owner_alive(name)]
    inodes = []
    for name in stale:
        with contextlib.suppress(OSError):
            inodes.append(os.stat(f"{RUN_NETNS}/{name}").st_ino)
    kill_processes_in(inodes)
    for name in stale:
        _remove_namespace_file(name)
        _remove_marker(name)
    # Markers whose namespace is already gone.
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(MARKER_DIR):
            if not os.path.exists(f"{RUN_NETNS}/{name}") and not _owner_alive(name):
                _remove_marker(name)
    return stale
