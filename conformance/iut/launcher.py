"""Start `python -m stack` processes in milliseconds: a fork server with the stack imported.

Starting the stack's CLI costs a Python interpreter and the import of the stack (about
0.3 s here, most of it building dataclasses), which is most of a short conformance case.
A `Launcher` starts one server process per harness process (`main` here), which
imports `stack.__main__` once and then forks a child per request. The child runs
`stack.__main__.main(argv)`, exactly what `python -m stack ARGV` runs, on the pipes the
requester passed (SCM_RIGHTS), in a session of its own, so that the driver's
process-group signals and its stdin/stdout contract are unchanged.

The wire protocol is JSON over a SOCK_SEQPACKET socketpair:

    requester -> server   {"argv": [...], "env": {...}} with three fds (stdin, stdout,
                          stderr); "env" (optional) is set in the child before it runs
    server -> requester   {"started": PID} or {"error": TEXT}
                          {"exited": PID, "status": CODE} (a signal N is -N, as Popen's)

The server is single-threaded (forking a threaded process is unsafe), ends when the
requester's end closes, and then kills the children still running, so an interrupted
harness leaves no stack behind. `STACK_LAUNCH=spawn` in the environment falls back to
one `python -m stack` subprocess per start.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]
MESSAGE_MAX = 1 << 16
START_TIMEOUT = 10.0
SERVER = "import sys; from conformance.iut.launcher import main; main(sys.argv[1])"


class LaunchError(Exception):
    """The fork server could not start a stack process."""


# -- the requester's side --------------------------------------------------------------


class ForkedProcess:
    """The part of `subprocess.Popen` the stack driver uses, for a forked stack."""

    def __init__(self, launcher: Launcher, pid: int, stdin: IO[str], stdout: IO[str],
                 stderr: IO[str]) -> None:  # fmt: skip
        self._launcher = launcher
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._launcher.status(self.pid, wait=0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self._launcher.status(self.pid, wait=timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(["stack", str(self.pid)], timeout or 0.0)
        return self.returncode


class Launcher:
    """The requester's end of one fork server (thread-safe; one per process: `shared()`)."""

    _shared: Launcher | None = None
    _shared_lock = threading.Lock()

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._socket = ours
        self._lock = threading.Lock()
        self._exited: dict[int, int] = {}
        self._server = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(theirs.fileno())],
            cwd=ROOT, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        theirs.close()

    @classmethod
    def shared(cls) -> Launcher:
        with cls._shared_lock:
            if cls._shared is None or cls._shared._server.poll() is not None:
                cls._shared = cls()
            return cls._shared

    def start(self, argv: Sequence[str], env: dict[str, str] | None = None) -> ForkedProcess:
        """Fork a child running `python -m stack ARGV`; its pipes are the caller's. `env`
        is set in the child's environment first (`STACK_FAULTS` is read again then)."""
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        try:
            with self._lock:
                message = json.dumps({"argv": list(argv), "env": dict(env or {})}).encode()
                try:
                    socket.send_fds(self._socket, [message], [stdin_r, stdout_w, stderr_w])
                except OSError as error:
                    raise LaunchError(f"the stack fork server is gone: {error}") from None
                answer = self._receive_until(lambda m: "started" in m or "error" in m,
                                             START_TIMEOUT)  # fmt: skip
        except BaseException:
            for fd in (stdin_w, stdout_r, stderr_r):
                os.close(fd)
            raise
        finally:
            for fd in (stdin_r, stdout_w, stderr_w):
                os.close(fd)
        if answer is None or "error" in answer:
            for fd in (stdin_w, stdout_r, stderr_r):
                os.close(fd)
            reason = answer["error"] if answer else f"no answer within {START_TIMEOUT} s"
            raise LaunchError(f"the stack fork server could not start a stack: {reason}")
        return ForkedProcess(
            self,
            int(answer["started"]),
            open(stdin_w, "w"),
            open(stdout_r),
            open(stderr_r),
        )

    def status(self, pid: int, wait: float | None) -> int | None:
        """The exit status of a child, waiting up to `wait` s (None: forever)."""
        deadline = None if wait is None else time.monotonic() + wait
        with self._lock:
            while pid not in self._exited:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if self._receive_until(lambda m: m.get("exited") == pid, remaining) is None:
                    break
            return self._exited.get(pid)

    def _receive_until(self, wanted: Any, timeout: float | None) -> dict[str, Any] | None:
        """Read server messages (lock held) until one is `wanted`; record exits on the way."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([self._socket], [], [], remaining)
            if not readable:
                return None
            data = self._socket.recv(MESSAGE_MAX)
            if not data:
                raise LaunchError("the stack fork server exited")
            message = json.loads(data)
            if "exited" in message:
                self._exited[int(message["exited"])] = int(message["status"])
            if "started" in message:
                # a new child with the pid of one that exited earlier (pid_max is 32768
                # here, and busy machines wrap it in minutes): not dead. Its old exit
                # came first, as the server reaps a child before its pid can be reused.
                # Taken for dead, a run's stop() left it running and then blocked
                # closing the pipe its reader thread was reading (a 30-minute hang).
                self._exited.pop(int(message["started"]), None)
            if wanted(message):
                return message

    def close(self) -> None:
        self._socket.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._server.wait(5.0)


# -- the server's side -----------------------------------------------------------------


def _exit_status(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _run_child(
    argv: list[str], fds: list[int], inherited: Sequence[int], env: dict[str, str]
) -> None:
    """In the forked child: become `python -m stack ARGV` on the passed pipes; never return."""
    code = 1
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        for fd in inherited:
            os.close(fd)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        sys.argv = ["python -m stack", *argv]
        os.environ.update(env)
        from stack import faults
        from stack.__main__ import main

        faults.configure()  # the server imported the stack before this environment

        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's errors (2) and --help (0)
            code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve(channel: socket.socket) -> None:
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    children: set[int] = set()

    def send(message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            channel.send(json.dumps(message).encode())

    def reap() -> None:
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            children.discard(pid)
            send({"exited": pid, "status": _exit_status(status)})

    try:
        while True:
            readable = select.select([channel.fileno(), wake_r], [], [])[0]
            if wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
                reap()
            if channel.fileno() not in readable:
                continue
            data, fds, _, _ = socket.recv_fds(channel, MESSAGE_MAX, 3)
            if not data:
                return  # the requester is gone
            try:
                request = json.loads(data)
                argv = [str(a) for a in request["argv"]]
                env = {str(k): str(v) for k, v in dict(request.get("env") or {}).items()}
                if len(fds) != 3:
                    raise ValueError(f"expected 3 fds (stdin, stdout, stderr), got {len(fds)}")
            except (ValueError, KeyError, TypeError) as error:
                for fd in fds:
                    os.close(fd)
                send({"error": f"bad request: {error}"})
                continue
            pid = os.fork()
            if pid == 0:
                _run_child(argv, fds, (channel.fileno(), wake_r, wake_w), env)
            for fd in fds:
                os.close(fd)
            children.add(pid)
            send({"started": pid})
            reap()  # a child that died at once sent its SIGCHLD before it was known
    finally:
        for pid in children:  # left running by a requester that went away
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def main(fd: str) -> None:
    import stack.__main__  # noqa: F401  # the point of the server: imported once

    if threading.active_count() != 1:  # forking would copy other threads' held locks
        sys.exit(f"stack fork server: {threading.active_count()} threads, expected 1")
    serve(socket.socket(fileno=int(fd)))
