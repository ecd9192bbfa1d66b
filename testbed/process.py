"""Run commands, background processes and Python callables inside a namespace.

No `ip netns exec`: the calling thread enters the namespace (`Namespace.entered()`)
and forks from there, so the child is born in the namespace at the cost of one fork.
`subprocess` forks from the calling thread, and so does `os.fork()`.

- `run()`: a command to completion, output captured; `CommandFailed` on a non-zero exit
  or a timeout, with the output in the message.
- `spawn()`: a background process whose output is collected by reader threads; it can
  be waited on for a line (a server's readiness), and every one that is still running
  sits in a registry so that a topology teardown can end what it started.
- `call()`: a Python callable in a forked child inside the namespace; its result comes
  back pickled, its exception as the child's traceback text.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from testbed.errors import CommandFailed, TestbedError
from testbed.netns import Namespace

T = TypeVar("T")
# How much of a command's output goes into an error message (the rest stays on the error).
_MESSAGE_TAIL = 2000


class CallFailed(TestbedError):
    """A callable run with `call()` raised, died, or returned something unpicklable."""

    def __init__(self, message: str, *, child_traceback: str = "", exitcode: int | None = None):
        super().__init__(message)
        self.child_traceback = child_traceback
        self.exitcode = exitcode


class CallTimeout(CallFailed):
    """A callable run with `call()` did not return in time; its child was killed."""


@dataclass(frozen=True)
class Completed:
    """A finished command."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    duration_s: float


def _where(ns: Namespace | None) -> str:
    return ns.name if ns is not None else "the current namespace"


def _entered(ns: Namespace | None) -> contextlib.AbstractContextManager[None]:
    return ns.entered() if ns is not None else contextlib.nullcontext()


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _MESSAGE_TAIL else "..." + text[-_MESSAGE_TAIL:]


def _output_text(stdout: str, stderr: str) -> str:
    parts = [f"{name}: {_tail(text)}" for name, text in (("stdout", stdout), ("stderr", stderr))
             if text.strip()]  # fmt: skip
    return "; ".join(parts) if parts else "no output"


def _kill_group(popen: subprocess.Popen[str], sig: int) -> None:
    """Signal the command and whatever it started (it leads its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, sig)


def run(
    ns: Namespace | None,
    argv: Sequence[str],
    *,
    timeout: float,
    check: bool = True,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Completed:
    """Run `argv` inside `ns` (None: where the caller is) and wait for it.

    Raises CommandFailed when it cannot start, exits non-zero (with `check`), or runs
    past `timeout` (then it and its process group are killed; partial output is kept).
    """
    argv = [str(a) for a in argv]
    started = time.monotonic()
    try:
        with _entered(ns):
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
    except OSError as error:
        raise CommandFailed(
            f"{argv[0]} in {_where(ns)} could not start: {error.strerror or error}",
            returncode=None, stdout="", stderr="",
        ) from None  # fmt: skip
    try:
        stdout, stderr = popen.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(popen, signal.SIGKILL)
        stdout, stderr = popen.communicate()
        raise CommandFailed(
            f"{' '.join(argv)} in {_where(ns)} did not finish within {timeout} s and was "
            f"killed ({_output_text(stdout, stderr)})",
            returncode=None, stdout=stdout, stderr=stderr,
        ) from None  # fmt: skip
    except BaseException:
        _kill_group(popen, signal.SIGKILL)
        popen.wait()
        raise
    completed = Completed(argv, popen.returncode, stdout, stderr, time.monotonic() - started)
    if check and popen.returncode != 0:
        raise CommandFailed(
            f"{' '.join(argv)} in {_where(ns)} exited {popen.returncode} "
            f"({_output_text(stdout, stderr)})",
            returncode=popen.returncode, stdout=stdout, stderr=stderr,
        )  # fmt: skip
    return completed


# ---------------------------------------------------------------------- background

_registry_lock = threading.Lock()
_registry: dict[int, Background] = {}


class Background:
    """A process started by `spawn()`; ends it on exit from a `with` block."""

    def __init__(self, ns: Namespace | None, argv: list[str], popen: subprocess.Popen[str]):
        self.ns = ns
        self.argv = argv
        self.popen = popen
        self._lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._changed = threading.Condition()
        self._open_streams = 2
        self._readers = [
            threading.Thread(
                target=self._read, args=(name, stream), daemon=True, name=f"{popen.pid}.{name}"
            )
            for name, stream in (("stdout", popen.stdout), ("stderr", popen.stderr))
        ]
        for reader in self._readers:
            reader.start()

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.popen.returncode}"
        return f"Background({' '.join(self.argv)!r} in {_where(self.ns)}, {state})"

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    @property
    def stdout(self) -> str:
        """Everything the process wrote to stdout so far."""
        with self._changed:
            return "".join(self._lines["stdout"])

    @property
    def stderr(self) -> str:
        with self._changed:
            return "".join(self._lines["stderr"])

    def _read(self, name: str, stream: Any) -> None:
        try:
            for line in stream:
                with self._changed:
                    self._lines[name].append(line)
                    self._changed.notify_all()
        finally:
            stream.close()
            with self._changed:
                self._open_streams -= 1
                self._changed.notify_all()

    def wait_for_line(
        self, match: str | Callable[[str], bool], *, timeout: float, stream: str = "stdout"
    ) -> str:
        """The first line of `stream` that contains `match` (or satisfies it), waiting up
        to `timeout` for it. Raises CommandFailed if the process ends or time runs out."""
        accept = match if callable(match) else (lambda line: match in line)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                lines = self._lines[stream]
                for line in lines[seen:]:
                    if accept(line):
                        return line
                seen = len(lines)
                remaining = deadline - time.monotonic()
                if self._open_streams == 0 or remaining <= 0:
                    break
                self._changed.wait(remaining)
        why = "ended" if self._open_streams == 0 else f"ran for {timeout} s"
        raise CommandFailed(
            f"{' '.join(self.argv)} in {_where(self.ns)} {why} without printing "
            f"{match!r} ({_output_text(self.stdout, self.stderr)})",
            returncode=self.returncode, stdout=self.stdout, stderr=self.stderr,
        )  # fmt: skip

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; its exit status. CommandFailed on timeout (the
        process keeps running: `terminate()` it)."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise CommandFailed(
                f"{' '.join(self.argv)} in {_where(self.ns)} still runs after {timeout} s",
                returncode=None, stdout=self.stdout, stderr=self.stderr,
            ) from None  # fmt: skip
        self._finish()
        return code

    def terminate(self, grace: float = 2.0) -> int:
        """SIGTERM to its process group, SIGKILL if it still runs after `grace` seconds.
        Returns the exit status (negative: the signal). Safe to call twice."""
        if self.popen.poll() is None:
            _kill_group(self.popen, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                _kill_group(self.popen, signal.SIGKILL)
                self.popen.wait()
        self._finish()
        return self.popen.returncode

    def _finish(self) -> None:
        # The readers end at EOF; a grandchild holding the pipes open must not hang us.
        for reader in self._readers:
            reader.join(1.0)
        with _registry_lock:
            _registry.pop(self.popen.pid, None)

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()


def spawn(
    ns: Namespace | None,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Background:
    """Start `argv` inside `ns` in the background, in its own session (so that its
    children end with it); stdout and stderr are collected as text."""
    argv = [str(a) for a in argv]
    try:
        with _entered(ns):
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, bufsize=1, env=dict(env) if env is not None else None, cwd=cwd,
                start_new_session=True,
            )  # fmt: skip
    except OSError as error:
        raise CommandFailed(
            f"{argv[0]} in {_where(ns)} could not start: {error.strerror or error}",
            returncode=None, stdout="", stderr="",
        ) from None  # fmt: skip
    process = Background(ns, argv, popen)
    with _registry_lock:
        _registry[popen.pid] = process
    return process


def running(ns: Namespace | None = None) -> list[Background]:
    """Background processes started here and not yet reaped (only those in `ns`)."""
    with _registry_lock:
        found = list(_registry.values())
    return [p for p in found if ns is None or (p.ns is not None and p.ns.name == ns.name)]


def terminate_all(ns: Namespace | None = None, grace: float = 2.0) -> list[Background]:
    """End every background process started in `ns` (all of them when None), in parallel:
    SIGTERM first, SIGKILL after one shared `grace` deadline."""
    processes = running(ns)
    for process in processes:
        if process.running:
            _kill_group(process.popen, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        process.terminate(max(0.0, deadline - time.monotonic()))
    return processes


# ---------------------------------------------------------------------- callables


def _read_all(fd: int, deadline: float) -> tuple[bytes, bool]:
    """Read `fd` to EOF or the deadline; (data, reached EOF)."""
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return b"".join(chunks), False
        if not select.select([fd], [], [], remaining)[0]:
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)


def _child(write_fd: int, fn: Callable[..., Any], args: tuple[Any, ...],
           kwargs: dict[str, Any]) -> None:  # fmt: skip
    """The forked child: run fn, send the outcome, leave without running exit handlers."""
    code = 0
    try:
        try:
            outcome: tuple[Any, ...] = ("ok", fn(*args, **kwargs))
            payload = pickle.dumps(outcome)
        except BaseException as error:
            code = 1
            text = traceback.format_exc()
            payload = pickle.dumps(("error", f"{type(error).__name__}: {error}", text))
        view = memoryview(payload)
        while view:
            view = view[os.write(write_fd, view) :]
    except BaseException:
        code = 2
    finally:
        os._exit(code)


def call(
    ns: Namespace | None,
    fn: Callable[..., T],
    *args: Any,
    timeout: float,
    **kwargs: Any,
) -> T:
    """Run `fn(*args, **kwargs)` in a child forked inside `ns` and return its result.

    `fn` need not be picklable (the child is a fork); the result must be. A raised
    exception becomes CallFailed carrying the child's traceback text; running past
    `timeout` kills the child and raises CallTimeout. The child is a fork of a possibly
    multi-threaded process: keep `fn` to plain work (sockets, files, computation), not
    locks that other threads of the parent may have held at the fork.
    """
    name = getattr(fn, "__qualname__", repr(fn))
    read_fd, write_fd = os.pipe()
    try:
        with _entered(ns):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child leaves through os._exit
                # Still inside the `with`: leaving it would take the child back home.
                os.close(read_fd)
                _child(write_fd, fn, args, kwargs)
        os.close(write_fd)
        write_fd = -1
        data, complete = _read_all(read_fd, time.monotonic() + timeout)
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
    if not complete:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise CallTimeout(f"{name} in {_where(ns)} did not return within {timeout} s; killed")
    _, status = os.waitpid(pid, 0)
    exitcode = os.waitstatus_to_exitcode(status)
    try:
        outcome = pickle.loads(data) if data else None
    except Exception as error:
        raise CallFailed(
            f"{name} in {_where(ns)} sent an unreadable result: {error}", exitcode=exitcode
        ) from None
    if outcome is None:
        raise CallFailed(
            f"{name} in {_where(ns)} died without a result (exit status {exitcode})",
            exitcode=exitcode,
        )
    if outcome[0] == "ok":
        result: T = outcome[1]
        return result
    _, summary, text = outcome
    raise CallFailed(
        f"{name} in {_where(ns)} raised {summary}\n--- child traceback ---\n{text}",
        child_traceback=text, exitcode=exitcode,
    )  # fmt: skip
