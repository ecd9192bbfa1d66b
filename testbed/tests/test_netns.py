"""Namespace lifetime: unique names, teardown on error, reclaim after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import topologies
from testbed import build
from testbed.netns import MARKER_DIR, Namespace, ours, reclaim_stale
from testbed.spec import LinkProps

pytestmark = pytest.mark.netns
ROOT = Path(__file__).resolve().parents[2]


def _run_netns_mounts() -> int:
    with open("/proc/self/mountinfo") as f:
        return sum(1 for line in f if line.split()[4] == "/run/netns")


def test_namespace_runs_code_inside_and_leaves_the_caller_where_it_was() -> None:
    home = os.readlink("/proc/thread-self/ns/net")
    ns = Namespace.create(f"mptl-t{os.getpid()}-x")
    try:
        with ns.entered():
            inside = os.readlink("/proc/thread-self/ns/net")
            with open("/proc/thread-self/net/dev") as f:
                devices = [line.split(":")[0].strip() for line in f.readlines()[2:]]
        assert inside != home
        assert devices == ["lo"]
        assert os.readlink("/proc/thread-self/ns/net") == home
        assert Path(f"/run/netns/{ns.name}").exists()
    finally:
        ns.delete()
    assert not Path(f"/run/netns/{ns.name}").exists()
    assert not Path(f"{MARKER_DIR}/{ns.name}").exists()


def test_builds_do_not_stack_mounts_on_run_netns() -> None:
    """Each process prepares /run/netns once; a new process must not add a mount."""
    code = (
        "import topologies; from testbed import build\nwith build(topologies.single_path()): pass"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)
    before = _run_netns_mounts()
    for _ in range(2):
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)
    assert _run_netns_mounts() == before <= 1


def test_names_are_unique_per_build() -> None:
    with build(topologies.single_path()) as one, build(topologies.single_path()) as two:
        assert set(one.namespace_names()).isdisjoint(two.namespace_names())
        assert all(name.startswith("mptl-") for name in one.namespace_names())


def test_exception_inside_the_with_block_tears_down() -> None:
    names: list[str] = []
    with pytest.raises(RuntimeError, match="boom"), build(topologies.dual_homed()) as topo:
        names = topo.namespace_names()
        raise RuntimeError("boom")
    assert names
    assert not set(names) & set(ours())


def test_a_run_killed_with_sigkill_is_reclaimed_by_the_next() -> None:
    program = textwrap.dedent(
        """
        import json, sys, time
        import topologies
        from testbed import build
        from testbed.spec import LinkProps
        topo = build(topologies.single_path(LinkProps(delay="5ms")))
        print(json.dumps(topo.namespace_names()), flush=True)
        time.sleep(600)
        """
    )
    victim = subprocess.Popen(
        [sys.executable, "-c", program], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert victim.stdout is not None
        names = json.loads(victim.stdout.readline())
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
    assert len(names) == 3  # client, server and the delay element's box
    assert set(names) <= set(ours()), "the killed run's namespaces should still be there"
    box = next(name for name in names if "-d-" in name)
    box_inode = os.stat(f"/run/netns/{box}").st_ino
    reclaimed = reclaim_stale()
    assert set(names) <= set(reclaimed)
    assert not set(names) & set(ours())
    # The delay forwarder that ran inside the box is gone too.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        alive = [
            pid
            for pid in os.listdir("/proc")
            if pid.isdigit() and _netns_of(pid) == f"net:[{box_inode}]"
        ]
        if not alive:
            break
        time.sleep(0.05)
    assert not alive


def _netns_of(pid: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def test_a_live_owner_is_never_reclaimed() -> None:
    with build(topologies.single_path(LinkProps())) as topo:
        assert not set(topo.namespace_names()) & set(reclaim_stale())
        assert set(topo.namespace_names()) <= set(ours())


def test_commands_run_inside_the_host(topology) -> None:
    from testbed import CommandFailed

    topo = topology(topologies.single_path())
    output = topo.hosts["client"].run(["ip", "-o", "addr", "show", "dev", "eth0"]).stdout
    assert "192.0.2.1/24" in output
    with pytest.raises(CommandFailed, match="exited 1"):
        topo.hosts["client"].run(["sh", "-c", "echo boom >&2; exit 1"])
    with pytest.raises(CommandFailed, match=r"did not finish within 0\.2 s"):
        topo.hosts["client"].run(["sleep", "5"], timeout=0.2)
    with topo.hosts["server"].entered():
        probe = socket.socket()
    probe.bind(("192.0.2.2", 0))  # only the server's namespace has this address
    probe.close()
