"""Commands, background processes and callables run inside a namespace, for real.

`linked_namespaces()` is also the two-host fixture of the other testbed tests here
(apps, capture, kernel MPTCP): two namespaces joined by one or more veth pairs.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
from pyroute2 import IPRoute

from testbed.errors import CommandFailed, TestbedError
from testbed.netns import Namespace
from testbed.process import (
    Background,
    CallFailed,
    CallTimeout,
    call,
    run,
    running,
    spawn,
    terminate_all,
)

pytestmark = pytest.mark.netns

# Path i joins a's eth{i} (PATHS[i][0]) and b's eth{i} (PATHS[i][1]), /24 each, and
# 2001:db8:i::1 to 2001:db8:i::2 (/64).
PATHS = (("192.0.2.1", "192.0.2.2"), ("198.51.100.1", "198.51.100.2"),
         ("203.0.113.1", "203.0.113.2"))  # fmt: skip
_names = itertools.count()
T = TypeVar("T")
IFA_F_NODAD = 0x02


@contextlib.contextmanager
def linked_namespaces(paths: int = 1) -> Iterator[tuple[Namespace, Namespace]]:
    """Two fresh namespaces a and b, with `paths` veth links between them, addressed
    from PATHS and up; both are deleted on the way out, even after a failure."""
    tag = f"mptl-t{os.getpid()}-{next(_names)}"
    made: list[Namespace] = []
    try:
        a = Namespace.create(f"{tag}a")
        made.append(a)
        b = Namespace.create(f"{tag}b")
        made.append(b)
        with IPRoute() as ipr:
            for i in range(paths):
                ipr.link("add", ifname=f"eth{i}", kind="veth", net_ns_fd=a.fd,
                         peer={"ifname": f"eth{i}", "net_ns_fd": b.fd})  # fmt: skip
        for side, ns in enumerate((a, b)):
            with ns.entered(), IPRoute() as ipr:
                ipr.link("set", index=1, state="up")
                for i in range(paths):
                    (index,) = ipr.link_lookup(ifname=f"eth{i}")
                    # Up before the addresses: an IPv6 address added to a down link
                    # answers neighbour solicitations only seconds after the link is up.
                    ipr.link("set", index=index, state="up")
                    ipr.addr("add", index=index, address=PATHS[i][side], prefixlen=24)
                    ipr.addr("add", index=index, address=f"2001:db8:{i}::{side + 1}",
                             prefixlen=64, flags=IFA_F_NODAD)  # fmt: skip
        yield a, b
    finally:
        for ns in made:
            ns.delete()


def wait_until(predicate: Callable[[], T], timeout: float, what: str) -> T:
    """Poll `predicate` until it returns something true; its value. Fails the test with
    `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def pair() -> Iterator[tuple[Namespace, Namespace]]:
    with linked_namespaces() as namespaces:
        yield namespaces


def _interfaces() -> list[str]:
    with open("/proc/self/net/dev") as f:
        return sorted(line.split(":")[0].strip() for line in f.readlines()[2:])


# ---------------------------------------------------------------------- run


def test_run_executes_in_the_namespace(pair: tuple[Namespace, Namespace]) -> None:
    a, _ = pair
    home = os.readlink("/proc/thread-self/ns/net")
    done = run(a, ["cat", "/proc/self/net/dev"], timeout=5)
    names = sorted(line.split(":")[0].strip() for line in done.stdout.splitlines()[2:])
    assert names == ["eth0", "lo"]
    assert done.returncode == 0
    assert os.readlink("/proc/thread-self/ns/net") == home  # the caller stays home
    ip = run(a, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"], timeout=5)
    assert "192.0.2.1/24" in ip.stdout


def test_run_passes_input_and_keeps_stderr(pair: tuple[Namespace, Namespace]) -> None:
    a, _ = pair
    script = "import sys; d = sys.stdin.read(); print(d.upper()); print('e', file=sys.stderr)"
    done = run(a, [sys.executable, "-c", script], timeout=10, input="hello")
    assert done.stdout.strip() == "HELLO"
    assert done.stderr.strip() == "e"


def test_run_failure_raises_with_the_output(pair: tuple[Namespace, Namespace]) -> None:
    a, _ = pair
    with pytest.raises(CommandFailed) as caught:
        run(a, ["sh", "-c", "echo out-text; echo err-text >&2; exit 3"], timeout=5)
    assert caught.value.returncode == 3
    assert "out-text" in str(caught.value) and "err-text" in str(caught.value)
    assert caught.value.stderr.strip() == "err-text"
    # check=False returns the status instead.
    assert run(a, ["sh", "-c", "exit 4"], timeout=5, check=False).returncode == 4


def test_run_missing_binary_raises_command_failed(pair: tuple[Namespace, Namespace]) -> None:
    with pytest.raises(CommandFailed, match="could not start"):
        run(pair[0], ["/nonexistent/binary"], timeout=5)


def test_run_timeout_kills_the_command_and_keeps_partial_output(
    pair: tuple[Namespace, Namespace],
) -> None:
    a, _ = pair
    started = time.monotonic()
    with pytest.raises(CommandFailed, match=r"did not finish within 0\.5 s") as caught:
        run(a, ["sh", "-c", "echo early; exec sleep 30"], timeout=0.5)
    assert time.monotonic() - started < 5
    assert caught.value.returncode is None
    assert "early" in caught.value.stdout


# ---------------------------------------------------------------------- spawn


def test_spawn_runs_in_the_namespace_and_serves_until_terminated(
    pair: tuple[Namespace, Namespace],
) -> None:
    a, b = pair
    server = [sys.executable, "-u", "-c",
              "import socket; s = socket.create_server(('192.0.2.2', 7000)); "
              "print('ready', flush=True); c, _ = s.accept(); c.sendall(b'hi'); c.close(); "
              "import time; time.sleep(60)"]  # fmt: skip
    with spawn(b, server) as process:
        assert isinstance(process, Background)
        process.wait_for_line("ready", timeout=10)
        assert process in running(b) and process not in running(a)
        with a.entered():
            client = socket.create_connection(("192.0.2.2", 7000), timeout=5)
        with client:
            assert client.recv(16) == b"hi"
        with pytest.raises(CommandFailed, match="still runs"):
            process.wait(0.1)
        status = process.terminate(grace=2)
    assert status == -15  # SIGTERM ended it
    assert process not in running()
    assert process.stdout == "ready\n"


def test_spawn_escalates_to_sigkill_after_the_grace_deadline(
    pair: tuple[Namespace, Namespace],
) -> None:
    a, _ = pair
    stubborn = [sys.executable, "-u", "-c",
                "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('armed', flush=True); time.sleep(60)"]  # fmt: skip
    process = spawn(a, stubborn)
    try:
        process.wait_for_line("armed", timeout=10)
        started = time.monotonic()
        assert process.terminate(grace=0.3) == -9
        assert time.monotonic() - started < 3
    finally:
        process.terminate()


def test_spawn_wait_collects_output_and_status(pair: tuple[Namespace, Namespace]) -> None:
    process = spawn(pair[0], ["sh", "-c", "echo one; echo two >&2; exit 5"])
    assert process.wait(10) == 5
    assert process.stdout == "one\n" and process.stderr == "two\n"
    with pytest.raises(CommandFailed, match="ended without printing"):
        process.wait_for_line("never", timeout=5)


def test_terminate_all_ends_only_the_processes_of_one_namespace(
    pair: tuple[Namespace, Namespace],
) -> None:
    a, b = pair
    in_a = [spawn(a, ["sleep", "60"]) for _ in range(2)]
    in_b = spawn(b, ["sleep", "60"])
    try:
        ended = terminate_all(a, grace=2)
        assert set(ended) == set(in_a)
        assert all(not p.running for p in in_a)
        assert in_b.running
    finally:
        in_b.terminate()
        for p in in_a:
            p.terminate()


# ---------------------------------------------------------------------- call


def _interfaces_and_route() -> tuple[list[str], str]:
    with open("/proc/self/net/route") as f:
        return _interfaces(), f.read()


def test_call_runs_the_callable_in_the_namespace(pair: tuple[Namespace, Namespace]) -> None:
    a, _ = pair
    names, routes = call(a, _interfaces_and_route, timeout=10)
    assert names == ["eth0", "lo"]
    assert "eth0" in routes
    # A closure (not picklable) works: the child is a fork.
    offset = 40
    assert call(a, lambda x: x + offset, 2, timeout=10) == 42


def test_call_reports_the_childs_exception_with_its_traceback(
    pair: tuple[Namespace, Namespace],
) -> None:
    def explode(what: str) -> None:
        raise ValueError(f"bad {what}")

    with pytest.raises(CallFailed) as caught:
        call(pair[0], explode, "input", timeout=10)
    assert "ValueError: bad input" in str(caught.value)
    assert "in explode" in caught.value.child_traceback
    assert isinstance(caught.value, TestbedError)


def test_call_timeout_kills_the_child(pair: tuple[Namespace, Namespace]) -> None:
    def hang() -> None:
        time.sleep(60)

    started = time.monotonic()
    with pytest.raises(CallTimeout):
        call(pair[0], hang, timeout=0.5)
    assert time.monotonic() - started < 5


def test_call_of_a_child_that_dies_without_a_result(pair: tuple[Namespace, Namespace]) -> None:
    with pytest.raises(CallFailed, match="exit status 7"):
        call(pair[0], os._exit, 7, timeout=10)
