from __future__ import annotations

import ipaddress

import pytest

from stack.mptcp.connection import MptcpConfig
from stack.mptcp.handshake import (
    CapableConfig,
    JoinCrypto,
    V0Policy,
    ack_option,
    first_data_option,
    initiator_outcome,
    listener_decision,
    syn_option,
    synack_option,
)
from stack.mptcp.listener import MptcpListener
from stack.mptcp.pm import Endpoint, Limits, PathManager
from stack.mptcp.token import TokenTable
from stack.tcp.segment import RST, SYN, Segment
from stack.wire.mptcp import (
    MPC_FLAG_A,
    MPC_FLAG_B,
    MPC_FLAG_C,
    MPC_FLAG_H,
    MpCapable,
    MpJoinSyn,
    MpTcpRst,
    parse_mptcp_option,
)

V1 = CapableConfig(frozenset({1}))
V0 = CapableConfig(frozenset({0}))
BOTH = CapableConfig(frozenset({0, 1}), v0_policy=V0Policy.RETRY_V0)


def test_syn_formats_on_the_wire() -> None:
    assert len(syn_option(V1, 1).emit()) == 4  # v1: no key
    v0 = syn_option(V0, 0x1122334455667788)
    assert len(v0.emit()) == 12 and v0.sender_key == 0x1122334455667788
    assert parse_mptcp_option(v0.emit()) == v0


@pytest.mark.parametrize(
    ("config", "syn", "version"),
    [
        (V1, MpCapable(1, MPC_FLAG_H), 1),
        (V1, MpCapable(2, MPC_FLAG_H), 1),  # a future version gets v1
        (V1, MpCapable(0, MPC_FLAG_H | MPC_FLAG_A, sender_key=5), None),  # v1-only: fallback
        (V0, MpCapable(1, MPC_FLAG_H), None),  # v0-only and no Key-A: fallback
        (V0, MpCapable(0, MPC_FLAG_H | MPC_FLAG_A, sender_key=5), 0),
        (BOTH, MpCapable(0, MPC_FLAG_H, sender_key=5), 0),
        (V1, MpCapable(1, MPC_FLAG_H | MPC_FLAG_B), None),  # unknown extension: ignored
        (V1, MpCapable(1, 0), None),  # no HMAC algorithm we support
    ],
)
def test_listener_version_negotiation(config, syn, version) -> None:  # type: ignore[no-untyped-def]
    assert listener_decision(config, syn).version == version


def test_checksum_is_used_when_either_side_asks() -> None:
    decision = listener_decision(V1, MpCapable(1, MPC_FLAG_H | MPC_FLAG_A))
    assert decision.checksum
    assert synack_option(decision, 7).checksum_required
    outcome = initiator_outcome(V1, 1, MpCapable(1, MPC_FLAG_H | MPC_FLAG_A, sender_key=7))
    assert outcome.version == 1 and outcome.checksum and outcome.remote_key == 7


def test_initiator_v0_policy() -> None:
    assert initiator_outcome(V1, 1, None).version is None
    assert not initiator_outcome(V1, 1, None).retry_v0
    assert initiator_outcome(BOTH, 1, None).retry_v0
    # A SYN/ACK that offers a higher version than we asked for is not MPTCP.
    assert initiator_outcome(BOTH, 0, MpCapable(1, MPC_FLAG_H, sender_key=1)).version is None


@pytest.mark.parametrize("version", [0, 1])
def test_join_hmacs_agree_between_the_two_sides(version: int) -> None:
    key_a, key_b = 0x0102030405060708, 0x1112131415161718
    a = JoinCrypto.fresh(version, key_a, key_b)
    b = JoinCrypto.fresh(version, key_b, key_a)
    a.remote_nonce, b.remote_nonce = b.local_nonce, a.local_nonce
    assert b.synack_hmac() == a.expected_synack_hmac() and len(b.synack_hmac()) == 8
    assert a.ack_hmac() == b.expected_ack_hmac() and len(a.ack_hmac()) == 20
    assert a.ack_hmac() != b.synack_hmac()[:20]


def test_v0_listener_asks_for_checksums_and_ignores_a_b_flag_syn() -> None:
    # RFC 6824 §3.1: A SHOULD be set, so v0 checksums even when the SYN has no A ...
    decision = listener_decision(V0, MpCapable(0, MPC_FLAG_H, sender_key=5))
    assert decision.version == 0 and decision.checksum and not decision.drop
    assert synack_option(decision, 7).checksum_required
    # ... and a v0 SYN with B set "MUST be silently ignored": no answer at all.
    dropped = listener_decision(V0, MpCapable(0, MPC_FLAG_H | MPC_FLAG_B, sender_key=5))
    assert dropped.drop and dropped.version is None
    # RFC 8684 ignores only the option: a plain SYN/ACK.
    assert not listener_decision(V1, MpCapable(1, MPC_FLAG_H | MPC_FLAG_B)).drop


@pytest.mark.parametrize("version", [0, 1])
def test_listener_refuses_an_unknown_token_with_mp_tcprst_only_in_v1(version: int) -> None:
    """RFC 6824 has no MP_TCPRST: a v0-only listener's refusal is a plain RST."""
    config = MptcpConfig(versions=frozenset({version}))
    listener = MptcpListener(80, config, TokenTable(), isn_secret=b"k")
    local, remote = (
        (ipaddress.ip_address("192.0.2.2"), 80),
        (ipaddress.ip_address("192.0.2.1"), 999),
    )
    join = MpJoinSyn(address_id=1, token=0x12345678, nonce=1)
    syn = Segment(999, 80, 1, 0, SYN, 65535, mss=1460, extra_options=(join,))
    assert listener.handle_syn(local, remote, syn, 0.0) is None
    [(_, _, reply)] = listener.poll_segments()
    assert reply.flags & RST
    assert any(isinstance(o, MpTcpRst) for o in reply.extra_options) == (version == 1)


def test_listener_drops_a_v0_syn_with_the_b_flag() -> None:
    listener = MptcpListener(
        80, MptcpConfig(versions=frozenset({0})), TokenTable(), isn_secret=b"k"
    )
    local, remote = (
        (ipaddress.ip_address("192.0.2.2"), 80),
        (ipaddress.ip_address("192.0.2.1"), 999),
    )
    capable = MpCapable(0, MPC_FLAG_H | MPC_FLAG_A | MPC_FLAG_B, sender_key=5)
    syn = Segment(999, 80, 1, 0, SYN, 65535, mss=1460, extra_options=(capable,))
    assert listener.handle_syn(local, remote, syn, 0.0) is None
    assert listener.poll_segments() == [] and not listener.half_open


@pytest.mark.parametrize("flags", [MPC_FLAG_H | MPC_FLAG_B, 0, MPC_FLAG_A])
@pytest.mark.parametrize("config", [V1, BOTH])
def test_initiator_ignores_synack_capable_with_b_set_or_h_clear(
    config: CapableConfig, flags: int
) -> None:
    """RFC 8684 §3.1: an MP_CAPABLE with B set (not understood) or with no crypto
    algorithm bit is ignored: the SYN/ACK counts as plain, the initiator falls back (no
    v0 retry either: the peer speaks MPTCP, only not this way)."""
    outcome = initiator_outcome(config, 1, MpCapable(1, flags, sender_key=7))
    assert outcome.version is None and not outcome.retry_v0


@pytest.mark.parametrize("deny", [False, True])
def test_c_flag_in_every_v1_mp_capable_when_joins_to_the_initial_address_are_denied(
    deny: bool,
) -> None:
    """net.mptcp.allow_join_initial_addr_port=0 (`deny_join_initial`): Linux sets C in
    the SYN, the SYN/ACK and the third ACK (seen on the wire); RFC 6824 has no C."""
    v1 = CapableConfig(frozenset({1}), deny_join_initial=deny)
    decision = listener_decision(v1, MpCapable(1, MPC_FLAG_H))
    options = [
        syn_option(v1, 1),
        synack_option(decision, 7, deny),
        ack_option(1, False, 1, 7, deny),
        first_data_option(False, 1, 7, 100, None, deny),
    ]
    for option in options:
        assert bool(option.flags & MPC_FLAG_C) == deny
        assert parse_mptcp_option(option.emit()) == option
    v0 = CapableConfig(frozenset({0}), deny_join_initial=True)
    assert not syn_option(v0, 5).flags & MPC_FLAG_C
    assert not ack_option(0, True, 1, 7, True).flags & MPC_FLAG_C


@pytest.mark.parametrize("flags", [MPC_FLAG_H, MPC_FLAG_H | MPC_FLAG_C])
def test_listener_takes_the_peers_c_flag_from_its_syn(flags: int) -> None:
    """RFC 8684 §3.1: a peer that set C must not be joined at its initial address and
    port: the listener's path manager learns it from the SYN (Linux: "set
    remote_deny_join_id0 on SYN recv")."""
    paths = PathManager([Endpoint(1, ipaddress.ip_address("198.51.100.2"), subflow=True)], Limits())
    listener = MptcpListener(80, MptcpConfig(), TokenTable(), isn_secret=b"k", paths=paths)
    local, remote = (
        (ipaddress.ip_address("192.0.2.2"), 80),
        (ipaddress.ip_address("192.0.2.1"), 999),
    )
    syn = Segment(999, 80, 1, 0, SYN, 65535, mss=1460, extra_options=(MpCapable(1, flags),))
    msk = listener.handle_syn(local, remote, syn, 0.0)
    assert msk is not None and msk.paths is not None
    assert msk.paths.initial_remote_joinable == (not flags & MPC_FLAG_C)
