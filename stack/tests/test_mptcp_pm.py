from __future__ import annotations

import ipaddress

import pytest

from stack.mptcp.pm import (
    REJOIN_ATTEMPTS,
    REJOIN_FIRST,
    REJOIN_MAX,
    Announce,
    ConnectionPaths,
    Endpoint,
    Limits,
    OpenSubflow,
    PathManager,
    PathManagerError,
    PeerAddress,
)

ip = ipaddress.ip_address
CLIENT0, CLIENT1 = ip("192.0.2.1"), ip("198.51.100.1")
SERVER0 = PeerAddress(0, ip("192.0.2.2"), None)
SERVER1 = PeerAddress(1, ip("198.51.100.2"), None)


def test_subflow_endpoint_joins_the_initial_address_once_established() -> None:
    pm = PathManager([Endpoint(1, CLIENT1, "eth1", subflow=True)], Limits(subflows=2))
    conn = pm.connection(CLIENT0, SERVER0)
    actions = conn.on_established()
    assert actions == [OpenSubflow(pm.endpoints[0], SERVER0, backup=False)]
    assert conn.retry() == []  # already there


def test_signal_endpoint_is_announced_and_backup_flag_carries() -> None:
    signal = Endpoint(2, CLIENT1, "eth1", signal=True)
    backup = Endpoint(3, ip("203.0.113.1"), "eth2", subflow=True, backup=True)
    conn = PathManager([signal, backup], Limits(subflows=2)).connection(CLIENT0, SERVER0)
    actions = conn.on_established()
    assert Announce(signal) in actions
    assert OpenSubflow(backup, SERVER0, backup=True) in actions


def test_add_addr_is_accepted_within_the_limit() -> None:
    """(The echo is the connection's, for every valid announcement: not a path-manager
    decision; see test_user_setups_echo_hmac.)"""
    pm = PathManager([Endpoint(1, CLIENT1, subflow=True)], Limits(subflows=4, add_addr_accepted=0))
    conn = pm.connection(CLIENT0, SERVER0)
    conn.on_established()
    assert conn.on_add_addr(SERVER1) == []  # not acted on
    pm2 = PathManager([Endpoint(1, CLIENT1, subflow=True)], Limits(subflows=4, add_addr_accepted=1))
    conn2 = pm2.connection(CLIENT0, SERVER0)
    conn2.on_established()
    actions = conn2.on_add_addr(SERVER1)
    assert OpenSubflow(pm2.endpoints[0], SERVER1, backup=False) in actions
    assert conn2.on_add_addr(SERVER1) == []  # a retransmission


def test_subflow_limit_bounds_created_and_accepted_joins() -> None:
    pm = PathManager([Endpoint(1, CLIENT1, subflow=True)], Limits(subflows=1))
    conn = pm.connection(CLIENT0, SERVER0)
    assert len(conn.on_established()) == 1
    assert conn.accept_join() is False  # the limit is spent: reject with reason 3
    conn.subflow_closed((CLIENT1, SERVER0.address, None))
    assert conn.accept_join() is True


def test_closed_subflow_is_re_established_on_retry() -> None:
    pm = PathManager([Endpoint(1, CLIENT1, subflow=True)], Limits(subflows=2))
    conn = pm.connection(CLIENT0, SERVER0)
    first = conn.on_established()
    conn.subflow_closed((CLIENT1, SERVER0.address, None))
    assert conn.retry() == first


def _one_join() -> tuple[ConnectionPaths, OpenSubflow]:
    pm = PathManager([Endpoint(1, CLIENT1, subflow=True)], Limits(subflows=2))
    conn = pm.connection(CLIENT0, SERVER0)
    [join] = conn.on_established()
    assert isinstance(join, OpenSubflow)
    return conn, join


def test_a_transient_failure_is_joined_again_with_backoff() -> None:
    conn, join = _one_join()
    conn.subflow_failed(join.key, 100.0, transient=True)
    assert conn.retry() == []  # held back: not before its time
    assert conn.next_rejoin() == 100.0 + REJOIN_FIRST
    assert conn.rejoin_due(100.5) == []
    assert conn.rejoin_due(101.0) == [join]
    assert conn.next_rejoin() is None  # under way
    conn.subflow_failed(join.key, 110.0, transient=True)  # the attempt failed too
    assert conn.next_rejoin() == 110.0 + 2 * REJOIN_FIRST
    assert conn.rejoin_due(112.0) == [join]
    conn.subflow_up(join.key)  # it worked: the next failure starts again from 1 s
    conn.subflow_closed(join.key)
    conn.subflow_failed(join.key, 200.0, transient=True)
    assert conn.next_rejoin() == 200.0 + REJOIN_FIRST


def test_attempts_are_bounded_and_the_wait_is_capped() -> None:
    conn, join = _one_join()
    now, waits = 0.0, []
    for _ in range(REJOIN_ATTEMPTS):
        conn.subflow_failed(join.key, now, transient=True)
        due = conn.next_rejoin()
        assert due is not None
        waits.append(due - now)
        assert conn.rejoin_due(due) == [join]
        now = due + 10.0
    assert waits == [min(REJOIN_FIRST * 2**i, REJOIN_MAX) for i in range(REJOIN_ATTEMPTS)]
    conn.subflow_failed(join.key, now, transient=True)  # one too many: wait for the address
    assert conn.next_rejoin() is None and conn.rejoin_due(now + 1000) == []
    assert conn.address_returned(CLIENT1) == [join]  # its link came back


def test_a_permanent_failure_waits_for_its_address_to_return() -> None:
    conn, join = _one_join()
    conn.subflow_failed(join.key, 0.0, transient=False)
    assert conn.next_rejoin() is None and conn.retry() == []
    assert conn.address_returned(CLIENT0) == []  # another address: nothing
    assert conn.address_returned(CLIENT1) == [join]


def test_a_re_added_endpoint_or_re_announced_address_starts_afresh() -> None:
    pm = PathManager([], Limits(subflows=2, add_addr_accepted=1))
    conn = pm.connection(CLIENT0, SERVER0)
    conn.on_established()
    [join] = conn.on_add_addr(SERVER1)
    assert isinstance(join, OpenSubflow)
    conn.subflow_failed(join.key, 0.0, transient=False)
    # the peer removes the address (the slot is free again, as the kernel's) and
    # announces it once more: a subflow to it, although the limit is one announcement
    assert conn.on_remove_addr([SERVER1.id]) == [(SERVER1.address, None)]
    assert conn.on_add_addr(SERVER1) == [join]
    endpoint = Endpoint(2, CLIENT1, subflow=True)
    conn.subflow_failed(join.key, 0.0, transient=False)
    pm.add(endpoint)
    actions = conn.on_endpoint_added(endpoint)
    assert OpenSubflow(endpoint, SERVER0, backup=False) in actions


def test_the_first_path_is_joined_again_when_its_subflow_fails() -> None:
    conn, _ = _one_join()
    conn.subflow_failed(conn.initial_key, 0.0, transient=True)
    assert conn.rejoin_due(REJOIN_FIRST) == [
        OpenSubflow(Endpoint(255, CLIENT0), SERVER0, backup=False)
    ]
    conn.initial_remote_joinable = False  # the peer's C flag: never to its first address
    conn.subflow_failed(conn.initial_key, 10.0, transient=True)
    assert conn.rejoin_due(20.0) == []


def test_fullmesh_connects_every_local_to_every_peer() -> None:
    mesh = Endpoint(1, CLIENT1, fullmesh=True)
    conn = PathManager([mesh], Limits(subflows=8, add_addr_accepted=8)).connection(CLIENT0, SERVER0)
    conn.on_established()
    actions = conn.on_add_addr(SERVER1)
    opened = {(a.local.address, a.remote.address) for a in actions if isinstance(a, OpenSubflow)}
    assert opened == {(CLIENT1, SERVER1.address), (CLIENT0, SERVER1.address)}


def test_remove_addr_names_the_subflows_to_close() -> None:
    conn = PathManager([], Limits(add_addr_accepted=2)).connection(CLIENT0, SERVER0)
    conn.on_add_addr(SERVER1)
    assert conn.on_remove_addr([1, 9]) == [(SERVER1.address, None)]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Endpoint(0, CLIENT1), "address ID 0 not in 1..255"),
        (lambda: Endpoint(1, CLIENT1, signal=True, fullmesh=True), "fullmesh cannot"),
        (lambda: Limits(subflows=9), "limit subflows=9"),
        (lambda: PathManager([Endpoint(1, CLIENT1), Endpoint(1, CLIENT0)]), "used twice"),
    ],
)
def test_impossible_configuration_is_named(build, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PathManagerError, match=message.replace(".", r"\.")):
        build()
