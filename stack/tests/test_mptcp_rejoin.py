"""Re-joining, with the kernel as peer over two real paths: a subflow whose path fails
is joined again once the path works (the join path, and the connection's first path),
a link that comes back brings its traffic back at once, and an address the peer
removes and announces again gets a subflow again. Every transfer is SHA-256 checked.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from stack.mptcp.pm import Limits
from stack.tests.test_mptcp_multipath import (
    ADDRESSES,
    Session,
    assert_transfer_intact,
    established_subflows,
    session,
    wait_until,
)
from testbed import Topology, nft
from testbed.spec import LinkProps

pytestmark = [pytest.mark.netns, pytest.mark.kernel]

REJECT_TABLE = "rejoin_test"


def _reject_from(s: Session, address: str) -> None:
    """The kernel's host answers every TCP segment from `address` with a RST (a
    firewall in the way); joins from it are refused the same way."""
    nft.apply(s.topo.hosts["server"].ns, f"""
add table inet {REJECT_TABLE}
add chain inet {REJECT_TABLE} input {{ type filter hook input priority 0 ; policy accept ; }}
add rule inet {REJECT_TABLE} input ip saddr {address} meta l4proto tcp reject with tcp reset
""")  # fmt: skip


def _accept_again(s: Session) -> None:
    nft.apply(s.topo.hosts["server"].ns, f"delete table inet {REJECT_TABLE}\n")


def _from(s: Session, address: str) -> list[dict[str, Any]]:
    return [f for f in s.stack_subflows() if f["local"].startswith(f"{address}:")]


def _counter(s: Session, name: str) -> int:
    assert s.sock is not None
    return int(s.sock.info()["counters"].get(name, 0))


@pytest.mark.parametrize("path", [1, 0], ids=["join-path", "first-path"])
def test_a_failed_path_is_joined_again_once_it_works(
    topology: Callable[..., Topology], path: int
) -> None:
    """The kernel's host resets everything from one of our addresses: that subflow
    fails, and our attempts to join again are refused, each later than the last; once
    the path works again, the next attempt joins, the new subflow carries data, and
    the transfer is whole. The first path is joined again as address ID 0."""
    size = 40_000_000
    rate = LinkProps(rate="40mbit")  # the transfer outlasts the failure and the return
    address = ADDRESSES["client"][path]
    with (
        session(topology, "client", ("", ",subflow"), props=(rate, rate)) as s,
        s.kernel.counters_delta() as kernel,
    ):
        s.start("source", "sink", size)
        wait_until(lambda: len(established_subflows(s)) == 2, 5, "the second subflow", s)
        wait_until(lambda: sum(f["bytes_sent"] for f in _from(s, address)) > 500_000, 10,
                   f"data from {address}", s)  # fmt: skip
        [original] = _from(s, address)
        joins_before = _counter(s, "MPJoinSynTx")
        _reject_from(s, address)
        # the subflow fails, and at least one attempt to join again is refused
        wait_until(lambda: _counter(s, "SubflowFailed") >= 2, 20, "a refused re-join", s)
        assert _counter(s, "MPJoinSynTx") > joins_before
        _accept_again(s)
        wait_until(lambda: any(f["state"] == "established" and f["bytes_sent"] > 0
                               for f in _from(s, address) if not f["initial"]), 20,
                   f"a new subflow from {address} carrying data", s)  # fmt: skip
        [rejoined] = [f for f in _from(s, address) if f["state"] == "established"]
        assert rejoined["local_id"] == original["local_id"]  # 0 for the first path
        assert original["state"] == "established" and not rejoined["initial"]
        stack_end, kernel_end = s.finish()
    assert_transfer_intact(stack_end, kernel_end, size)
    assert kernel["MPJoinSynRx"] >= 2 and kernel["MPJoinAckRx"] >= 2


def test_a_link_that_comes_back_brings_its_traffic_back_at_once(
    topology: Callable[..., Topology],
) -> None:
    """The second path's link goes down for longer than a few RTOs: its subflow (to
    the address the kernel announced there) stops carrying data as soon as we see the
    link go, and the rest flows on the first path; when the link comes back we see it
    too and retransmit at once, instead of at the backed-off RTO, so data is on it
    again within 1.5 s, when its next retransmission was more than 1.5 s away."""
    size = 60_000_000
    rate = LinkProps(rate="40mbit")
    with session(topology, "client", limits=Limits(2, 1), props=(rate, rate)) as s:
        s.kernel.add_endpoint(ADDRESSES["server"][1], flags={"signal"})
        s.start("source", "sink", size)
        wait_until(lambda: len(established_subflows(s)) == 2, 5, "the second subflow", s)
        wait_until(lambda: s.stack_subflows()[1]["bytes_sent"] > 500_000, 10, "path 2 data")
        s.topo.links["path2"].down()
        on_first = s.stack_subflows()[0]["bytes_sent"]
        wait_until(lambda: s.stack_subflows()[0]["bytes_sent"] > on_first + 2_000_000, 10,
                   "the rest on the first path", s)  # fmt: skip
        assert s.sock is not None
        tcp = s.sock.msk.subflows[1].tcp
        # wait until the join subflow's next retransmission is seconds away
        wait_until(lambda: tcp.rto.backoff >= 4, 15, "the RTO backed off", s)
        assert tcp.rto_deadline is not None and tcp.rto_deadline - time.monotonic() > 1.5
        on_second = s.stack_subflows()[1]["bytes_sent"]
        s.topo.links["path2"].up()
        wait_until(lambda: s.stack_subflows()[1]["bytes_sent"] > on_second + 500_000, 1.5,
                   "data on the second path again", s)  # fmt: skip
        stack_end, kernel_end = s.finish()
    assert_transfer_intact(stack_end, kernel_end, size)


def test_an_address_the_peer_removes_and_announces_again_gets_a_subflow_again(
    topology: Callable[..., Topology],
) -> None:
    """The kernel announces its second address (signal endpoint), we join it; it
    removes the endpoint (REMOVE_ADDR: we close that subflow) and adds it again (a
    new ADD_ADDR): we join it again although we accept one announcement only, as the
    kernel frees the slot of a removed address."""
    size = 40_000_000
    rate = LinkProps(rate="40mbit")
    announced = ADDRESSES["server"][1]
    with (
        session(topology, "client", limits=Limits(2, 1), props=(rate, rate)) as s,
        s.kernel.counters_delta() as kernel,
    ):
        endpoint = s.kernel.add_endpoint(announced, flags={"signal"})
        s.start("source", "sink", size)
        wait_until(lambda: len(established_subflows(s)) == 2, 5, "a subflow to the ADD_ADDR", s)
        s.kernel.delete_endpoint(endpoint.id)
        wait_until(lambda: _counter(s, "RmAddr") >= 1
                   and not any(f["state"] == "established" for f in s.stack_subflows()[1:]),
                   10, "the subflow to the removed address closed", s)  # fmt: skip
        s.kernel.add_endpoint(announced, id=endpoint.id, flags={"signal"})
        wait_until(lambda: any(f["state"] == "established" and f["bytes_sent"] > 0
                               for f in s.stack_subflows()[2:]), 10,
                   "a subflow to the address announced again, carrying data", s)  # fmt: skip
        stack_end, kernel_end = s.finish()
    assert_transfer_intact(stack_end, kernel_end, size)
    assert kernel["AddAddrTx"] >= 2 and kernel["MPJoinSynRx"] >= 2
