"""pytest integration: markers, the root check, topology fixtures, captures kept on failure.

Fixtures:
- `topology`: a factory; `topology(spec, capture=True)` builds a spec and tears it down
  after the test, even when it fails. With `capture`, every link end of the client and
  server is captured and the pcaps are kept under `artifacts/pcap/<test>/` if it fails.
- `kernel_mptcp`: a factory giving the kernel MPTCP control of a host.
- `dual_homed`: the dual-homed topology, built.

At the end of the whole run (the xdist controller, or the single process) the session
fails if any namespace of ours is left behind.
"""

from __future__ import annotations

import os
import re
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).parent / "artifacts"


def _is_root() -> bool:
    return os.geteuid() == 0


def pytest_configure(config: pytest.Config) -> None:
    from testbed.netns import SESSION_ENV

    # Namespace markers carry the session id (xdist workers inherit it), so the end of
    # the run can tell its own leftovers from those of another run on the machine.
    if not hasattr(config, "workerinput"):
        os.environ[SESSION_ENV] = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"

    # SIGTERM (CI timeouts, `kill`) unwinds like Ctrl-C, so fixtures tear down.
    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _terminate)


def pytest_sessionstart(session: pytest.Session) -> None:
    if _is_root():
        from testbed.netns import reclaim_stale

        reclaim_stale()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _is_root():
        return
    skip = pytest.mark.skip(
        reason="needs root: network namespaces and veth links need CAP_NET_ADMIN and "
        "CAP_SYS_ADMIN; run the suite as root"
    )
    for item in items:
        if item.get_closest_marker("netns") or item.get_closest_marker("kernel"):
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    node = request.node
    return any(
        getattr(getattr(node, f"report_{when}", None), "failed", False)
        for when in ("setup", "call")
    )


@pytest.fixture
def topology(request: pytest.FixtureRequest) -> Iterator[Callable[..., object]]:
    from testbed import build

    built = []
    captures = []

    def make(spec, *, capture: bool = False):  # type: ignore[no-untyped-def]
        topo = build(spec)
        built.append(topo)
        if capture:
            from testbed.capture import CaptureSet

            captures.append(CaptureSet.for_topology(topo, hosts=("client", "server")))
        return topo

    try:
        yield make
    finally:
        failed = _failed(request)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)[-120:]
        for capture_set in captures:
            if failed:
                kept = capture_set.keep(ARTIFACTS / "pcap" / safe)
                request.node.add_report_section("teardown", "pcap", f"captures kept in {kept}")
            else:
                capture_set.discard()
        for topo in built:
            topo.teardown()


@pytest.fixture
def kernel_mptcp() -> Callable[..., object]:
    from testbed.mptcp import KernelMptcp

    def control(host):  # type: ignore[no-untyped-def]
        return KernelMptcp(host.ns)

    return control


@pytest.fixture
def dual_homed(topology):  # type: ignore[no-untyped-def]
    import topologies

    return topology(topologies.dual_homed())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput") or not _is_root():
        return  # an xdist worker: the controller checks once every worker is done
    from testbed.netns import SESSION_ENV, owned_by_session

    left = owned_by_session(os.environ[SESSION_ENV])
    if left:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print(f"\nLEAK: namespaces left behind by this run: {', '.join(left)}")
