"""The stack fork server: a forked stack keeps `python -m stack`'s contract (JSON lines,
exit codes, SIGTERM, bad flags), and no stack outlives its launcher."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import topologies
from conformance.iut.launcher import Launcher, LaunchError
from testbed import Topology
from testbed.apps import connect_one, stream_sha256


@pytest.fixture
def launcher() -> Iterator[Launcher]:
    launcher = Launcher()
    try:
        yield launcher
    finally:
        launcher.close()


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        if state == "Z":  # dead, not yet reaped by its (new) parent
            return True
        time.sleep(0.02)  # polling the process table with a deadline
    return False


def test_bad_flags_exit_2_with_a_message(launcher: Launcher) -> None:
    process = launcher.start(["serve", "--interface", "eth0=192.0.2.2/24", "--port", "8000",
                              "--no-such-flag"])  # fmt: skip
    assert process.wait(10) == 2
    assert "--no-such-flag" in process.stderr.read()
    assert process.poll() == 2


def test_a_missing_namespace_is_named(launcher: Launcher) -> None:
    process = launcher.start(["serve", "--netns", "no-such-netns-x", "--interface",
                              "eth0=192.0.2.2/24", "--port", "8000"])  # fmt: skip
    assert process.wait(10) == 2
    assert "no-such-netns-x" in process.stderr.read()


def test_a_dead_server_is_a_launch_error() -> None:
    launcher = Launcher()
    launcher.close()
    with pytest.raises(LaunchError, match="fork server"):
        launcher.start(["serve"])


@pytest.mark.netns
@pytest.mark.kernel
def test_a_forked_stack_serves_a_kernel_client_and_exits_0_on_sigterm(
    topology: Callable[..., Topology], launcher: Launcher
) -> None:
    topo = topology(topologies.single_path(bare=("server",)))
    process = launcher.start(["serve", "--netns", topo.hosts["server"].netns, "--interface",
                              "eth0=192.0.2.2/24", "--port", "8000", "--mode", "echo"])  # fmt: skip
    try:
        ready = json.loads(process.stdout.readline())
        assert ready["event"] == "listening" and ready["port"] == 8000
        client = connect_one(topo.hosts["client"].ns, "192.0.2.2", 8000, "source", 300_000,
                             "mptcp", 30)  # fmt: skip
        report = json.loads(process.stdout.readline())
        os.killpg(process.pid, signal.SIGTERM)  # its own session, as the driver expects
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    assert client.sha256_received == client.sha256_sent == stream_sha256(300_000)
    assert report["sha256_received"] == stream_sha256(300_000)
    assert (
        report["mptcp"]["in_use"]
        and int(report["mptcp"]["remote_token"], 16) == (client.mptcp["token"])
    )


@pytest.mark.netns
def test_closing_the_launcher_kills_the_stacks_still_running(
    topology: Callable[..., Topology],
) -> None:
    topo = topology(topologies.single_path(bare=("server",)))
    launcher = Launcher()
    try:
        netns = topo.hosts["server"].netns
        process = launcher.start(["serve", "--netns", netns, "--interface",
                                  "eth0=192.0.2.2/24", "--port", "8000"])  # fmt: skip
        assert json.loads(process.stdout.readline())["event"] == "listening"
        assert process.poll() is None
    finally:
        launcher.close()
    assert _gone(process.pid, 10.0)


def test_a_reused_pid_is_not_taken_for_dead() -> None:
    """The server reports a child's exit, then (pids wrap) a new child with its pid."""
    launcher = Launcher.__new__(Launcher)  # the test plays the fork server
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    launcher._socket, launcher._lock, launcher._exited = ours, threading.Lock(), {}
    theirs.send(json.dumps({"exited": 4242, "status": 0}).encode())
    theirs.send(json.dumps({"started": 4242}).encode())
    process = launcher.start(["serve"])
    try:
        assert process.pid == 4242
        assert process.poll() is None  # running, whatever the earlier 4242 did
        theirs.send(json.dumps({"exited": 4242, "status": -9}).encode())
        assert process.wait(5) == -9
    finally:
        for stream in (process.stdin, process.stdout, process.stderr):
            stream.close()
        ours.close()
        theirs.close()
