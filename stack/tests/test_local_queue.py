"""With `small_queues`, the stack keeps its bytes in a local qdisc low, as Linux's TCP
small queues (TSQ). (Off by default for now: docs/stack.md, "The local queue".)

Without it the stack filled a local tbf's whole queue (50 ms at the rate): every RTT
sample grew by that much, and a blackholed path took four of those SRTTs to fail over
(2 x 2 SRTT), 118-140 ms against the kernel's 70-90 ms in the interop matrix. A stack
client sends to a kernel sink over a link shaped to 100 Mbit/s; the client's qdisc
backlog, read from the kernel (tc) while the data flows, stays within the link's limit
(LOCAL_QUEUE_LIMIT unless the loop fell behind, `QueueLimit`) and one more GSO frame,
the stack's RTT estimate stays well below the tbf's queue time, and every byte
arrives."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable

import pytest

import topologies
from stack.__main__ import run_connection
from stack.link import LOCAL_QUEUE_LIMIT
from stack.tests.test_mptcp_interop import stack_in
from testbed import Topology
from testbed.apps import AppReport, listen, serve_one, stream_sha256
from testbed.spec import LinkProps

pytestmark = [pytest.mark.netns, pytest.mark.kernel]

SIZE = 12_000_000  # ~1 s at 100 Mbit/s
GSO_FRAME = 65536 + 1024  # one super-segment and its headers, as the qdisc counts it
TBF_QUEUE_S = 0.05  # testbed.shaping: the tbf holds 50 ms at its rate


def _backlog(netns: str, ifname: str) -> int:
    """Bytes waiting in the interface's root qdisc, from `tc -s -j`."""
    out = subprocess.run(["ip", "netns", "exec", netns, "tc", "-s", "-j", "qdisc", "show",
                          "dev", ifname], capture_output=True, text=True, check=True)  # fmt: skip
    return max((int(q.get("backlog", 0)) for q in json.loads(out.stdout)), default=0)


def test_a_local_shaper_queue_holds_no_more_than_the_local_limit(
    topology: Callable[..., Topology],
) -> None:
    topo = topology(topologies.single_path(LinkProps(rate="100mbit"), bare=("client",)))
    netns = topo.hosts["client"].netns
    listener = listen(topo.hosts["server"].ns, "192.0.2.2", 8000, "mptcp")
    served: list[AppReport] = []
    thread = threading.Thread(target=lambda: served.append(
        serve_one(listener, "sink", 0, "mptcp", 60)))  # fmt: skip
    thread.start()
    backlogs: list[int] = []
    limits: list[int] = []
    srtts: list[float] = []
    done = threading.Event()
    with stack_in(topo, "client", ["eth0=192.0.2.1/24"], small_queues=True) as stack:
        sock = stack.connect(("192.0.2.2", 8000))
        queue_limit = stack.host.links["eth0"].queue_limit

        def sample() -> None:  # every 10 ms, a measurement interval
            while not done.wait(0.01):
                limits.append(queue_limit.limit)
                backlogs.append(_backlog(netns, "eth0"))
                subflows = sock.msk.subflows
                if subflows and subflows[0].tcp.rto.srtt is not None:
                    srtts.append(subflows[0].tcp.rto.srtt)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            started = time.monotonic()
            client = run_connection(sock, "source", SIZE, "client")
            elapsed = time.monotonic() - started
        finally:
            done.set()
            sampler.join()
        thread.join(60)
        listener.close()
    assert not client.error and not served[0].error, (client.error, served[0].error)
    assert served[0].bytes_received == SIZE
    assert served[0].sha256_received == stream_sha256(SIZE)
    assert len(backlogs) >= 20, f"only {len(backlogs)} samples in {elapsed:.2f} s"
    # the shaper was busy (something queued), never beyond our limit and one frame
    assert max(backlogs) > 0, backlogs
    assert min(limits) == LOCAL_QUEUE_LIMIT
    assert max(backlogs) <= max(limits) + GSO_FRAME, (max(backlogs), max(limits))
    median_srtt = sorted(srtts)[len(srtts) // 2]
    assert median_srtt < TBF_QUEUE_S / 2, f"SRTT {median_srtt * 1000:.1f} ms: the queue filled"
