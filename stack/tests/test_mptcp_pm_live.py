"""Endpoints changed while connections live (as `ip mptcp endpoint add/change/delete`
on the kernel), endpoint ports, and the ADD_ADDR resend schedule that
`--add-addr-timeout` (net.mptcp.add_addr_timeout) sets."""

from __future__ import annotations

import pytest

from stack.mptcp.connection import MptcpConfig, MptcpConnection
from stack.mptcp.pm import Announce, Endpoint, Limits, OpenSubflow, PathManager, PathManagerError
from stack.mptcp.token import TokenTable
from stack.tests.test_mptcp_pm import CLIENT0, CLIENT1, SERVER0


def test_an_endpoint_added_to_a_live_connection_is_announced_and_joins() -> None:
    pm = PathManager([], Limits(subflows=2))
    conn = pm.connection(CLIENT0, SERVER0)
    assert conn.on_established() == []
    added = Endpoint(4, CLIENT1, "eth1", signal=True, subflow=True, port=6000)
    pm.add(added)
    assert conn.on_endpoint_added(added) == [Announce(added), OpenSubflow(added, SERVER0, False)]


def test_an_endpoint_added_before_establishment_waits_for_it() -> None:
    pm = PathManager([], Limits(subflows=2))
    conn = pm.connection(CLIENT0, SERVER0)
    added = Endpoint(4, CLIENT1, signal=True)
    pm.add(added)
    assert conn.on_endpoint_added(added) == []
    assert conn.on_established() == [Announce(added)]  # once, at establishment


def test_added_endpoints_keep_ids_and_addresses_unique() -> None:
    pm = PathManager([Endpoint(1, CLIENT0, subflow=True)])
    with pytest.raises(PathManagerError, match=r"192\.0\.2\.1 is already endpoint ID 1"):
        pm.add(Endpoint(2, CLIENT0))
    with pytest.raises(PathManagerError, match=r"address ID 1 is taken by 192\.0\.2\.1"):
        pm.add(Endpoint(1, CLIENT1))
    assert pm.free_id() == 2


def test_a_port_needs_the_signal_flag() -> None:
    with pytest.raises(PathManagerError, match="port 6000 needs the signal flag"):
        Endpoint(1, CLIENT1, subflow=True, port=6000)


def _add_addr_send_times(timeout: float | None) -> list[float]:
    """When an ADD_ADDR that is never echoed goes out (first at 0)."""
    msk = MptcpConnection(MptcpConfig(add_addr_timeout=timeout), TokenTable(),
                          isn_secret=b"k", server=True)  # fmt: skip
    msk.version = 1
    msk._queue_announce(1, CLIENT1, None)
    sent, now = [], 0.0
    while msk._announce and now < 100:
        msk._now = now
        msk._take_announcement()
        sent.append(now)
        deadline = msk.next_timer()
        if deadline is None or deadline == float("inf"):
            break
        now = deadline
        msk.handle_timer(now)
    return sent


@pytest.mark.parametrize(
    ("timeout", "times"),
    [
        (None, [0.0, 1.0, 3.0, 7.0]),  # the stack's own: 1 s, doubling, 3 resends
        (0.5, [0.0, 0.5, 1.0, 1.5]),  # net.mptcp.add_addr_timeout: a fixed interval
        (0.0, [0.0]),  # 0: never resent (as the kernel)
    ],
)
def test_add_addr_resend_schedule(timeout: float | None, times: list[float]) -> None:
    assert _add_addr_send_times(timeout) == pytest.approx(times)


def test_an_address_without_flags_takes_a_new_endpoint_and_keeps_its_id() -> None:
    pm = PathManager([Endpoint(1, CLIENT0), Endpoint(2, CLIENT1)])
    assert pm.free_id(CLIENT1) == 2 and pm.free_id() == 3
    signal = Endpoint(pm.free_id(CLIENT1), CLIENT1, signal=True)
    pm.add(signal)
    assert pm.endpoint_for(CLIENT1) == signal and len(pm.endpoints) == 2
    with pytest.raises(PathManagerError, match="already endpoint ID 2"):
        pm.add(Endpoint(5, CLIENT1, subflow=True))  # it has flags now
