"""MP_JOIN: joining a connection, HMACs, nonces, address IDs, the fourth ACK (§3.2).

MP_JOIN has one format in RFC 6824 and RFC 8684; only the hash differs (HMAC-SHA1 in
v0, whose 160-bit HMAC-A is the whole digest; HMAC-SHA256 in v1), and a v1 refusal
carries MP_TCPRST, which v0 does not have. So almost every case serves both versions.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import time
from collections.abc import Callable
from itertools import pairwise

from conformance.cases import INITIATOR, LISTENER, MAY, MUST, SHOULD, Context, case
from conformance.cases.steps import (
    accept_join,
    answer_join,
    capable_syn,
    complete_iut_join,
    established,
    exchange,
    expect_fourth_ack,
    expect_only_rst,
    expect_refusal,
    expect_rst,
    initiated,
    iut_hmac_a,
    join_refused,
    join_syn,
    joined,
    syn_again,
    synack_hmac,
)
from conformance.iut import NotSupported
from conformance.model import deviates
from conformance.tester import MptcpConnection, Pattern, Segment, Subflow, TesterError
from stack import crypto
from stack.wire.mptcp import (
    MPTCP_RST_EPROHIBIT,
    AddAddrV0,
    AddAddrV1,
    MpCapable,
    MpJoinAck,
    MpJoinSyn,
    MpJoinSynAck,
    MpTcpRst,
    RemoveAddr,
)
from stack.wire.tcp import FIN, RST, MaxSegmentSize

DUAL = "dual_homed"


# ------------------------------------------------------------------ IUT as responder


@case(
    ipv6=True,
    section="3.2",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    expected="A valid join gets a SYN/ACK with MP_JOIN carrying HMAC-B, and after the "
    "third ACK (HMAC-A) the IUT sends the fourth ACK without MP_JOIN.",
)
def valid_join_completes(ctx: Context) -> None:
    """expect_next: the SYN/ACK answers the join SYN and the fourth ACK the third ACK (§3.2)."""
    conn, _ = established(ctx)
    sf, _ = ctx.tester.join(conn, ctx.port, ifname="eth0")
    expect_fourth_ack(sf)


@case(
    ipv6=True,
    section="3.2",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    topology=DUAL,
    expected="A join over a second path, from an address the tester never announced, is "
    "accepted: SYN/ACK with MP_JOIN and a valid HMAC-B.",
)
def join_from_unannounced_address(ctx: Context) -> None:
    """expect_next (`Tester.join`): the SYN/ACK is the only answer to a join SYN."""
    conn, _ = established(ctx)
    ctx.tester.join(conn, ctx.port, ifname="eth1")


@case(
    section="3.2",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    topology=DUAL,
    expected="Data sent on a joined subflow is delivered at the data level: it comes back "
    "echoed with a DSS mapping.",
)
def data_on_joined_subflow_delivered(ctx: Context) -> None:
    """expect_next for the fourth ACK (`joined`); expect for the echo, which pure ACKs may
    precede."""
    conn, _ = established(ctx)
    sf = joined(ctx, conn)
    exchange(ctx, conn, sf, b"via the second path")


@case(
    ipv6=True,
    section="3.2",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    expected="A third ACK whose HMAC-A is wrong gets the subflow reset (RST).",
)
def bad_hmac_in_third_ack_reset(ctx: Context) -> None:
    """expect_next: a failed HMAC-A MUST get a RST (§3.2), as the IUT's answer to the third ACK."""
    conn, _ = established(ctx)
    sf, _ = ctx.tester.join(conn, ctx.port, ifname="eth0", ack_hmac=bytes(20))
    expect_rst(sf)


@case(
    section="3.2",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    expected="A replayed join (an earlier join's SYN, same R-A, then its third ACK's "
    "HMAC-A, on a new subflow) gets a SYN/ACK with a fresh R-B, and the replayed HMAC-A, "
    "which no longer verifies, gets the subflow reset (RST); the connection goes on.",
)
def replayed_join_refused(ctx: Context) -> None:
    """expect_next for the SYN/ACKs, the fourth ACK and the RST (the answer to the replayed HMAC-A);
    expect for the echo after it."""
    # The nonces are what defeats a replay (RFC 8684 §5, RFC 6824 §5): R-B must change,
    # so HMAC-A computed over the old R-B must fail the check of §3.2.
    ctx.iut.set_limits(8, 0)
    conn, first_sf = established(ctx)
    original = joined(ctx, conn, ifname="eth0")
    replayed_hmac = ctx.tester.join_ack_hmac(conn, original)
    sf, synack = ctx.tester.join(
        conn, ctx.port, ifname="eth0", nonce=original.local_nonce, ack_hmac=replayed_hmac
    )
    if synack.need(MpJoinSynAck).nonce == original.remote_nonce:
        raise deviates(f"the replayed join got the same R-B {original.remote_nonce:#x} again")
    expect_rst(sf)
    exchange(ctx, conn, first_sf, b"after the replay")


@case(
    section="3.2",
    level=MUST,
    versions=(0,),
    role=LISTENER,
    expected="A v0 join whose third ACK carries HMAC-A computed with v1's hash (the "
    "leftmost 160 bits of HMAC-SHA256, not HMAC-SHA1) gets the subflow reset (RST).",
)
def v0_third_ack_with_sha256_hmac_reset(ctx: Context) -> None:
    """expect_next: a failed HMAC-A MUST get a RST (§3.2), as the IUT's answer to the third ACK."""
    conn, _ = established(ctx)

    def v1_hmac(sf: Subflow) -> bytes:
        return crypto.join_ack_hmac(1, conn.local_key, conn.remote_key or 0,
                                    sf.local_nonce or 0, sf.remote_nonce or 0)  # fmt: skip

    sf, _ = ctx.tester.join(conn, ctx.port, ifname="eth0", ack_hmac=v1_hmac)
    expect_rst(sf)


@case(
    section="3.2",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    expected="A third ACK of a join without the MP_JOIN option (no HMAC-A) does not "
    "establish the subflow: it is reset.",
)
def third_ack_without_hmac_reset(ctx: Context) -> None:
    """expect_next: the SYN/ACK answers the join SYN, the RST the third ACK without HMAC-A
    (§3.2)."""
    conn, _ = established(ctx)
    sf, _ = join_syn(ctx, conn.remote_token)
    sf.connection = conn
    sf.expect_next("SA", MpJoinSynAck, within=1)
    sf.send("A", [conn.data_ack()])
    expect_rst(sf)


@case(
    section="3.2",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    expected="A join SYN whose MP_JOIN is truncated (length 10) is not a join: no SYN/ACK "
    "with MP_JOIN.",
)
def truncated_join_syn(ctx: Context) -> None:
    """expect_none: what matters is that no SYN/ACK with MP_JOIN comes (a plain SYN/ACK or a RST
    may)."""
    conn, _ = established(ctx)
    sf = ctx.tester.subflow(ctx.port)
    raw = MpJoinSyn(address_id=1, token=conn.remote_token, nonce=7).emit()
    sf.send("S", raw_options=MaxSegmentSize(1460).emit() + bytes((30, 10)) + raw[2:10])
    sf.expect_none(option=MpJoinSynAck, within=0.3, what="a SYN/ACK with MP_JOIN")


@case(
    section="3.2",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    expected="A join SYN whose MP_JOIN is oversized (length 14) is not a valid join: no "
    "SYN/ACK with MP_JOIN.",
)
def oversized_join_syn(ctx: Context) -> None:
    """expect_none: what matters is that no SYN/ACK with MP_JOIN comes (a plain SYN/ACK or a RST
    may)."""
    conn, _ = established(ctx)
    sf = ctx.tester.subflow(ctx.port)
    raw = MpJoinSyn(address_id=1, token=conn.remote_token, nonce=7).emit()
    sf.send("S", raw_options=MaxSegmentSize(1460).emit() + bytes((30, 14)) + raw[2:] + b"\0\0")
    sf.expect_none(option=MpJoinSynAck, within=0.3, what="a SYN/ACK with MP_JOIN")


@case(
    section="3.2",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    expected="A join to the address of the initial subflow gets address ID 0 in the "
    "SYN/ACK (the initial subflow's address has ID 0).",
)
def synack_address_id_of_initial_address(ctx: Context) -> None:
    """expect_next (`Tester.join`): the SYN/ACK is the only answer to a join SYN."""
    conn, _ = established(ctx)
    _, synack = ctx.tester.join(conn, ctx.port, ifname="eth0")
    option = synack.option(MpJoinSynAck)
    if option is None or option.address_id != 0:
        raise deviates(f"expected address ID 0: {synack.describe()}")


@case(
    ipv6=True,
    section="3.2",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    topology=DUAL,
    expected="A join to an address the IUT has as endpoint ID 7 carries address ID 7 in "
    "the SYN/ACK.",
)
def synack_address_id_of_endpoint(ctx: Context) -> None:
    """expect_next (`Tester.join`): the SYN/ACK is the only answer to a join SYN."""
    ctx.iut.add_endpoint(ctx.iut_address("eth1"), id=7, flags={"signal"})
    conn, _ = established(ctx)
    _, synack = ctx.tester.join(conn, ctx.port, ifname="eth1")
    option = synack.option(MpJoinSynAck)
    if option is None or option.address_id != 7:
        raise deviates(f"expected address ID 7: {synack.describe()}")


@case(
    section="3.2",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    expected="Every SYN/ACK with MP_JOIN carries a fresh random nonce R-B.",
)
def fresh_nonces(ctx: Context) -> None:
    """expect_next: the SYN/ACK is the only answer to a join SYN."""
    ctx.iut.set_limits(8, 0)
    conn, _ = established(ctx)
    nonces = []
    for _ in range(4):
        sf, _ = join_syn(ctx, conn.remote_token)
        synack = sf.expect_next("SA", MpJoinSynAck, within=1)
        nonces.append(synack.option(MpJoinSynAck).nonce)  # type: ignore[union-attr]
        sf.send("R", seq=sf.snd_nxt)
    if len(set(nonces)) != len(nonces):
        raise deviates(f"nonces repeat: {[hex(n) for n in nonces]}")


@case(
    section="3.2",
    level=SHOULD,
    versions=(0, 1),
    role=LISTENER,
    expected="A join beyond the IUT's subflow limit (0) is refused with RST, at the SYN "
    "or after the third ACK; in v1 the RST carries MP_TCPRST reason 3 (administratively "
    "prohibited; v0 has no MP_TCPRST).",
)
def subflow_limit_reason_3(ctx: Context) -> None:
    """expect_next (`join_refused`): the refusal is the answer, at the SYN or to the third ACK."""
    ctx.iut.set_limits(0, 0)
    conn, _ = established(ctx)
    sf, _ = join_syn(ctx, conn.remote_token)
    expect_refusal(ctx, join_refused(ctx, conn, sf), MPTCP_RST_EPROHIBIT)


@case(
    section={1: "3.7", 0: "3.6"},
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    expected="A join to a connection that fell back to TCP is refused with RST (at the "
    "SYN, or at the latest after the third ACK).",
)
def join_to_fallen_back_connection(ctx: Context) -> None:
    """expect for the echo, which a pure ACK may precede; expect_next for the refusal, the answer to
    the join."""
    ctx.iut.listen(ctx.port)
    t = ctx.tester
    conn, sf = t.connect(ctx.port, version=ctx.version)
    sf.send("PA", payload=b"no mapping: fall back")  # first data without DSS
    sf.expect(data=True, within=1, what="the echo")
    join, _ = join_syn(ctx, conn.remote_token)
    join_refused(ctx, conn, join)


@case(
    section="3.2",
    level=SHOULD,
    versions=(0, 1),
    role=LISTENER,
    expected="A join that arrives before the MP_CAPABLE third ACK (connection not yet "
    "established) is refused with RST.",
)
def join_before_mp_capable_ack(ctx: Context) -> None:
    """expect_next: the SYN/ACK answers the SYN, the RST the early join SYN."""
    ctx.iut.listen(ctx.port)
    sf = ctx.tester.subflow(ctx.port)
    sf.send("S", [ctx.tester.mss(sf.local), capable_syn(ctx)])
    synack = sf.expect_next("SA", MpCapable, within=1)
    key = synack.option(MpCapable).sender_key  # type: ignore[union-attr]
    join, _ = join_syn(ctx, crypto.key_token(key or 0, ctx.version))
    expect_rst(join)


@case(
    section="3.2",
    level=MUST,
    role=LISTENER,
    versions=(0, 1),
    topology=DUAL,
    expected="A join to an address and port the IUT announced (ADD_ADDR with a port: v1 "
    "with its HMAC, v0 of 10 bytes) is accepted: SYN/ACK with MP_JOIN.",
)
def join_to_announced_port(ctx: Context) -> None:
    """expect for the ADD_ADDR (the IUT's own announcement; other traffic may precede it);
    expect_next for the join's SYN/ACK."""
    address = ctx.iut_address("eth1")
    ctx.iut.add_endpoint(address, flags={"signal"}, port=6000)
    conn, sf = established(ctx)
    kind: type[AddAddrV0 | AddAddrV1] = AddAddrV1 if ctx.version == 1 else AddAddrV0

    def announces_port(segment: Segment) -> bool:
        option = segment.option(kind)
        return option is not None and option.port == 6000

    sf.expect(option=kind, within=1, what="ADD_ADDR with port 6000", where=announces_port)
    ctx.tester.join(conn, 6000, ifname="eth1")


# ------------------------------------------------------------------ IUT as initiator


ENDPOINT_ID = 3  # the address ID the IUT's subflow endpoint gets, where it can be set


def _subflow_endpoint(ctx: Context) -> int | None:
    """A subflow endpoint on the IUT's second interface, ID 3 where the IUT's
    configuration takes an ID; returns the ID set (None: the IUT picks it)."""
    ctx.iut.set_limits(2, 0)
    try:
        ctx.iut.add_endpoint(ctx.iut_address("eth1"), flags={"subflow"}, id=ENDPOINT_ID)
    except NotSupported:
        ctx.iut.add_endpoint(ctx.iut_address("eth1"), flags={"subflow"})
        return None
    return ENDPOINT_ID


def _initiator_join(
    ctx: Context, *, mode: str = "sink", nbytes: int = 0, endpoint: bool = True
) -> tuple[MptcpConnection, Subflow, Subflow, Segment]:
    """The IUT connects with a subflow endpoint on its second interface (made here
    unless `endpoint` is False): the tester accepts MP_CAPABLE and waits for the
    IUT's join SYN."""
    if endpoint:
        _subflow_endpoint(ctx)
    conn, sf, _ = initiated(ctx, mode=mode, nbytes=nbytes)
    syn = ctx.tester.expect("S", MpJoinSyn, dport=ctx.port, within=2, what="the IUT's join SYN")
    return conn, sf, accept_join(ctx, conn, syn), syn


@case(
    ipv6=True,
    section="3.2",
    level=MUST,
    versions=(0, 1),
    role=INITIATOR,
    topology=DUAL,
    expected="The IUT's join SYN carries the tester's token (from H(Key-B): SHA-256 in "
    "v1, SHA-1 in v0) and the address ID of its endpoint (3; where the IUT takes no "
    "endpoint ID, any but 0, the initial address's).",
)
def initiator_join_syn_token(ctx: Context) -> None:
    """expect: the IUT's join SYN opens a new subflow; nothing to answer."""
    configured = _subflow_endpoint(ctx)
    conn, _, _, syn = _initiator_join(ctx, endpoint=False)
    option = syn.need(MpJoinSyn)
    if option.token != conn.local_token:
        raise deviates(f"token {option.token:#x}, expected {conn.local_token:#x}")
    if configured is not None and option.address_id != configured:
        raise deviates(f"address ID {option.address_id}, expected the endpoint's {configured}")
    if configured is None and option.address_id == 0:
        raise deviates("address ID 0 (the initial address's) on a join from another address")


@case(
    ipv6=True,
    section="3.2",
    level=MUST,
    versions=(0, 1),
    role=INITIATOR,
    topology=DUAL,
    expected="The IUT's third ACK of a join carries a valid HMAC-A of 160 bits (v1: the "
    "leftmost 160 bits of HMAC-SHA256; v0: the whole HMAC-SHA1).",
)
def initiator_third_ack_hmac(ctx: Context) -> None:
    """expect_next: the third ACK answers the SYN/ACK (its join SYN sent again excepted)."""
    conn, _, join, _ = _initiator_join(ctx)
    answer_join(conn, join)
    ack = join.expect_next("A", MpJoinAck, within=1, skip=syn_again(join))
    expected = iut_hmac_a(conn, join)
    if ack.need(MpJoinAck).hmac != expected:
        raise deviates(f"HMAC-A wrong: {ack.describe()}, expected {expected.hex()}")


# a SYN/ACK to the IUT's join SYN that it must refuse (RST only): the cases' common part
_refusal = functools.partial(
    case, section="3.2", level=MUST, versions=(0, 1), role=INITIATOR, topology=DUAL
)


@_refusal(
    ipv6=True,
    expected="A SYN/ACK with a wrong HMAC-B makes the joining IUT reset the subflow: "
    "its next segment on the subflow is a RST, with nothing before it (an ACK would "
    "complete the handshake of a peer that failed authentication) and nothing but RSTs "
    "after it.",
)
def initiator_bad_hmac_in_synack(ctx: Context) -> None:
    """expect_next (`expect_only_rst`): the RST MUST be the answer; an ACK first would complete the
    handshake."""
    refused_join_synack(ctx, "bad_hmac")


def _bad_hmac(conn: MptcpConnection, join: Subflow) -> None:
    answer_join(conn, join, hmac=bytes(8))


def _bad_hmac_twice(conn: MptcpConnection, join: Subflow) -> None:
    """The same SYN/ACK twice, back to back (a retransmission: both may arrive in one
    read of the IUT's link)."""
    answer_join(conn, join, hmac=bytes(8))
    join.snd_nxt = join.iss
    answer_join(conn, join, hmac=bytes(8))


def _bad_hmac_other_interface(conn: MptcpConnection, join: Subflow) -> None:
    """The SYN/ACK comes in on the IUT's other interface (the tester's eth0 link) while
    the join went out on eth1."""
    other = copy.copy(join)
    other.ifname = next(i for i in join.tester.ports if i != join.ifname)
    answer_join(conn, other, hmac=bytes(8))


def _no_mp_join(conn: MptcpConnection, join: Subflow) -> None:
    join.send("SA", [MaxSegmentSize(1460)])


def _malformed_mp_join(conn: MptcpConnection, join: Subflow) -> None:
    """MP_JOIN of length 14: a SYN/ACK's 16 bytes (with the right HMAC-B) cut short."""
    raw = MpJoinSynAck(address_id=0, hmac=synack_hmac(conn, join), nonce=join.local_nonce or 0)
    join.send("SA", raw_options=MaxSegmentSize(1460).emit() + bytes((30, 14))
              + raw.emit()[2:14] + b"\0\0")  # fmt: skip


REFUSED_SYNACKS: dict[str, Callable[[MptcpConnection, Subflow], None]] = {
    "bad_hmac": _bad_hmac,
    "bad_hmac_twice": _bad_hmac_twice,
    "bad_hmac_other_interface": _bad_hmac_other_interface,
    "no_mp_join": _no_mp_join,
    "malformed_mp_join": _malformed_mp_join,
}


def refused_join_synack(
    ctx: Context, variant: str, *, mode: str = "sink"
) -> tuple[MptcpConnection, Subflow, Segment]:
    """The IUT joins (a subflow endpoint on eth1); the tester answers its join SYN with
    a SYN/ACK the IUT must refuse (`REFUSED_SYNACKS[variant]`). The IUT's next segment
    on the join is a RST, and nothing but RSTs follow. Returns the connection, its
    first subflow and the RST."""
    conn, sf, join, _ = _initiator_join(ctx, mode=mode)
    answered = time.time()  # some variants answer with two segments: "next" is after the first
    REFUSED_SYNACKS[variant](conn, join)
    return conn, sf, expect_only_rst(join, since=answered)


@_refusal(
    expected="A SYN/ACK with a wrong HMAC-B that comes twice (a retransmission) gets "
    "RSTs only from the joining IUT: its next segment on the subflow is a RST.",
)
def initiator_bad_hmac_in_synack_twice(ctx: Context) -> None:
    """expect_next (`expect_only_rst`): the RST MUST be the answer; an ACK first would complete the
    handshake."""
    refused_join_synack(ctx, "bad_hmac_twice")


@_refusal(
    expected="A SYN/ACK with a wrong HMAC-B that arrives on the IUT's other interface "
    "(not the one the join SYN left by) gets a RST only: no ACK first.",
)
def initiator_bad_hmac_in_synack_other_interface(ctx: Context) -> None:
    """expect_next (`expect_only_rst`): the RST MUST be the answer; an ACK first would complete the
    handshake."""
    refused_join_synack(ctx, "bad_hmac_other_interface")


@_refusal(
    expected="A SYN/ACK to the IUT's join SYN without MP_JOIN leaves the join "
    "unauthenticated (a join cannot fall back to TCP): the IUT closes the subflow with a "
    "RST only, no ACK first.",
)
def initiator_synack_without_mp_join(ctx: Context) -> None:
    """expect_next (`expect_only_rst`): the RST MUST be the answer; an ACK first would complete the
    handshake."""
    refused_join_synack(ctx, "no_mp_join")


@_refusal(
    expected="A SYN/ACK to the IUT's join SYN whose MP_JOIN is malformed (length 14, "
    "cut short) carries no valid MP_JOIN: the IUT closes the subflow with a RST only.",
)
def initiator_synack_with_malformed_mp_join(ctx: Context) -> None:
    """expect_next (`expect_only_rst`): the RST MUST be the answer; an ACK first would complete the
    handshake."""
    refused_join_synack(ctx, "malformed_mp_join")


@case(
    section="3.2",
    level=MUST,
    versions=(0, 1),
    role=INITIATOR,
    topology=DUAL,
    expected="With the fourth ACK withheld, the joining IUT retransmits its third ACK "
    "(with MP_JOIN and HMAC-A) within 3 s.",
)
def initiator_retransmits_third_ack(ctx: Context) -> None:
    """expect_next: the third ACK answers the SYN/ACK, and with no answer to it the IUT's next
    segment is the third ACK again (nothing else may go on a subflow not yet established)."""
    conn, _, join, _ = _initiator_join(ctx)
    answer_join(conn, join)
    first = join.expect_next("A", MpJoinAck, within=1, skip=syn_again(join))
    again = join.expect_next("A", MpJoinAck, within=3, what="a retransmitted third ACK",
                             skip=syn_again(join))  # fmt: skip
    # The RFC sets no interval; Linux resends after its minimum timer (2 jiffies, a few
    # ms on a veth's tiny RTT). Only a back-to-back duplicate is no timer retransmission.
    if again.time - first.time < 0.001:
        raise deviates(f"a duplicate {again.time - first.time:.4f} s later, not a retransmission")


@case(
    section="3.2",
    level=MUST,
    versions=(0, 1),
    role=INITIATOR,
    topology=DUAL,
    expected="The joining IUT sends no data on the new subflow before its third ACK is "
    "acknowledged (the fourth ACK), even while it has data to send.",
)
def initiator_no_data_before_fourth_ack(ctx: Context) -> None:
    """expect_next for the third ACK, the answer to the SYN/ACK; expect_none for data."""
    conn, sf, join, _ = _initiator_join(ctx, mode="source", nbytes=200_000)
    answer_join(conn, join)
    join.expect_next("A", MpJoinAck, within=1, skip=syn_again(join))
    join.expect_none(data=True, within=0.5, what="data before the fourth ACK")
    del sf


# The most third-ACK retransmissions a joining host may send without giving up: TCP's
# default bound on retransmissions of an unacknowledged segment (Linux tcp_retries2,
# RFC 1122 4.2.3.5 R2), which the retransmitted third ACK stands in for.
MAX_THIRD_ACK_TRIES = 15


def _fourth_ack_withheld(
    ctx: Context, *, enough: Callable[[list[Segment]], bool], within: float
) -> tuple[list[Segment], Segment | None]:
    """The IUT joins with data to send; the tester answers the join and never sends the
    fourth ACK. Collects the IUT's third ACKs (each must carry HMAC-A) until `enough`,
    a RST, or `within` s; data on the join subflow, still PRE_ESTABLISHED, deviates at
    once. Returns the third ACKs and the RST (None when there was none)."""
    conn, _, join, _ = _initiator_join(ctx, mode="source", nbytes=200_000)
    answer_join(conn, join)
    hmac = iut_hmac_a(conn, join)
    acks: list[Segment] = []
    deadline = time.monotonic() + within
    while not enough(acks):
        segment = ctx.tester.next_matching(Pattern(), deadline - time.monotonic(), owner=join.owns)
        if segment is None:
            return acks, None
        if segment.payload:
            raise deviates(
                f"data on the join subflow before its third ACK was acknowledged (fourth "
                f"ACK withheld, {len(acks)} third ACKs so far): {segment.describe()}"
            )
        if segment.flags & RST:
            return acks, segment
        option = segment.option(MpJoinAck)
        if option is None:
            continue
        if option.hmac != hmac:
            raise deviates(f"a third ACK without HMAC-A {hmac.hex()}: {segment.describe()}")
        acks.append(segment)
    return acks, None


def _intervals_ms(acks: list[Segment]) -> list[float]:
    return [round((b.time - a.time) * 1000, 1) for a, b in pairwise(acks)]


@case(
    section="3.2",
    level=SHOULD,
    versions=(0, 1),
    role=INITIATOR,
    topology=DUAL,
    expected="With the fourth ACK withheld, the joining IUT retransmits its third ACK "
    "(MP_JOIN, HMAC-A) on a timer that backs off as TCP's retransmission timer does (each "
    "interval longer than the one before, by 1.2 times at least, and the last at least "
    "1.5^(n-1) times the first), and sends no data on the subflow.",
)
def initiator_third_ack_retransmission_backs_off(ctx: Context) -> None:
    """Reads every segment of the join itself (`next_matching`): third ACKs, data (a deviation) or a
    RST."""
    acks, rst = _fourth_ack_withheld(ctx, enough=lambda a: len(a) >= 5, within=3.5)
    gaps = _intervals_ms(acks)
    if not gaps and rst is None:
        raise deviates("the third ACK was never retransmitted within 3.5 s")
    # A fixed timer (Linux: about 2 x srtt) wanders with the RTT estimate; an
    # exponential backoff grows at every step, whatever the RTT does. One firing late
    # (the IUT waited for the CPU: 198, 400, 1105, 1620 ms on a loaded machine) makes its
    # interval long and the next one look short next to it, but not short of 1.2 times
    # it, and it cannot take the growth from the first to the last away.
    growth = 1.5 ** (len(gaps) - 1)
    if any(later < 1.2 * earlier for earlier, later in pairwise(gaps)) or (
        len(gaps) > 1 and gaps[-1] < growth * gaps[0]
    ):
        raise deviates(
            f"third ACK retransmitted at intervals of {gaps} ms: no backoff (a timer that "
            "does not grow)"
        )


@case(
    section="3.2",
    level=SHOULD,
    versions=(0, 1),
    role=INITIATOR,
    topology=DUAL,
    expected="With the fourth ACK withheld, the joining IUT gives up after a bounded "
    f"number of third-ACK retransmissions (at most {MAX_THIRD_ACK_TRIES}, TCP's default) "
    "and resets the subflow, sending no data on it meanwhile.",
)
def initiator_third_ack_retransmission_bounded(ctx: Context) -> None:
    """Reads every segment of the join itself (`next_matching`): third ACKs, data (a deviation) or a
    RST."""
    started = time.monotonic()
    acks, rst = _fourth_ack_withheld(
        ctx, enough=lambda a: len(a) > MAX_THIRD_ACK_TRIES + 1, within=3
    )
    if rst is None and len(acks) > MAX_THIRD_ACK_TRIES + 1:
        raise deviates(
            f"{len(acks) - 1} third-ACK retransmissions in {time.monotonic() - started:.2f} s "
            f"(intervals {_intervals_ms(acks)[:4]}… ms) and no RST: the joining IUT does not "
            f"give up after {MAX_THIRD_ACK_TRIES}"
        )


@case(
    section="3.2",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    expected="A join whose third ACK never comes is not counted: with a subflow limit of "
    "1, a later complete join is still accepted (fourth ACK), and the IUT sends nothing "
    "but SYN/ACKs on the half-open one.",
)
def join_without_third_ack_not_counted(ctx: Context) -> None:
    """expect_next: the SYN/ACKs answer the join SYNs, the fourth ACK (or a RST) the third ACK;
    expect for the echo."""
    ctx.iut.set_limits(1, 0)
    conn, first = established(ctx)
    half, _ = join_syn(ctx, conn.remote_token)
    half.expect_next("SA", MpJoinSynAck, within=1, what="SYN/ACK with MP_JOIN")
    sf, _ = ctx.tester.join(conn, ctx.port, ifname="eth0", address_id=2)
    answer = sf.expect_next(within=1, what="the fourth ACK of the second join, or a RST",
                            skip=syn_again(sf))  # fmt: skip
    if answer.flags & RST:
        raise deviates(f"the complete join was refused, the half-open one counted: "
                       f"{answer.describe()}")  # fmt: skip
    exchange(ctx, conn, first, b"still one connection", on=first)
    other = [s for s in ctx.tester.received(half.owns) if not s.has("SA")]
    if other:
        raise deviates(f"the IUT used the half-open join: {other[0].describe()}")


# ------------------------------------------------------------------ issue 13: breadth
# (joins to what the tester announced, the initial address's ID, subflow limits on both
# sides)


def _announce_to_iut(
    ctx: Context,
    conn: MptcpConnection,
    sf: Subflow,
    address_id: int,
    port: int | None = None,
    ifname: str = "eth1",
) -> None:
    """The tester announces its `ifname` address (with `port`) to the IUT, in the case's
    version: v1's ADD_ADDR with its HMAC (rightmost 64 bits of HMAC-SHA256(Key-A‖Key-B,
    ID‖address‖port), RFC 8684 §3.4.1), v0's without."""
    address = ipaddress.ip_address(ctx.tester.address(ifname))
    option: AddAddrV0 | AddAddrV1
    if ctx.version == 0:
        option = AddAddrV0(address_id, address, port)
    else:
        mac = crypto.add_addr_hmac(conn.local_key, conn.remote_key or 0, address_id, address,
                                   port)  # fmt: skip
        option = AddAddrV1(address_id, address, port, mac)
    sf.send("A", [option, conn.data_ack()])


def _join_to_announced(
    ctx: Context,
    conn: MptcpConnection,
    sf: Subflow,
    address_id: int,
    port: int | None = None,
    ifname: str = "eth1",
) -> Segment:
    """The tester announces (`_announce_to_iut`); the IUT's join SYN to that address and
    port (the initial subflow's tester port when none was announced): `expect`, as it
    opens a subflow of its own (Linux echoes the ADD_ADDR first)."""
    _announce_to_iut(ctx, conn, sf, address_id, port, ifname)
    address = ctx.tester.address(ifname)
    wanted = sf.lport if port is None else port
    return ctx.tester.expect(
        "S", MpJoinSyn, within=2, what=f"a join SYN to {address} port {wanted}",
        where=lambda s: s.dst == address and s.dport == wanted,
    )  # fmt: skip


@case(
    section="3.2",
    level=MUST,
    role=LISTENER,
    topology=DUAL,
    expected="Allowed to accept announced addresses, the v1 IUT joins an address the "
    "tester announced with a valid ADD_ADDR HMAC: its join SYN goes to that address (at "
    "the initial subflow's port) with the tester's token, and its third ACK carries a "
    "valid HMAC-A.",
)
def iut_joins_announced_address(ctx: Context) -> None:
    """expect for the join SYN, which opens a new subflow; expect_next for the third ACK, the
    answer to the SYN/ACK. RFC 8684 §3.4.1 (an announced address may be joined) and §3.2
    (the join's token and HMACs). The v0 form is `add_addr.tester_add_addr_v0_leads_to_join`."""
    ctx.iut.set_limits(2, 2)
    conn, sf = established(ctx)
    complete_iut_join(ctx, conn, _join_to_announced(ctx, conn, sf, 5))


@case(
    section="3.2",
    level=MUST,
    role=LISTENER,
    topology=DUAL,
    expected="Allowed to accept announced addresses, the v1 IUT joins an address and port "
    "the tester announced (ADD_ADDR with a port, its HMAC covering the port): the join "
    "SYN goes to that port, with the tester's token, and the third ACK carries a valid "
    "HMAC-A.",
)
def iut_joins_announced_address_with_port(ctx: Context) -> None:
    """expect for the join SYN, which opens a new subflow; expect_next for the third ACK, the
    answer to the SYN/ACK. RFC 8684 §3.4.1: with a port, "the port ... to use", the HMAC
    over ID‖address‖port. The v0 form is `add_addr.tester_add_addr_v0_with_port_leads_to_join`."""
    ctx.iut.set_limits(2, 2)
    conn, sf = established(ctx)
    complete_iut_join(ctx, conn, _join_to_announced(ctx, conn, sf, 5, port=6002))


@case(
    section="3.2",
    level=MUST,
    role=LISTENER,
    versions=(0, 1),
    expected="A join the IUT opens from the address of its initial subflow (to another "
    "port the tester announced on its initial address) carries address ID 0 in its "
    "MP_JOIN SYN.",
)
def iut_join_from_initial_address_id_0(ctx: Context) -> None:
    """expect for the join SYN, which opens a new subflow. RFC 8684 §3.2 and §3.4.1 (RFC
    6824 the same): the address of the initial subflow has the implicit address ID 0, and
    the join SYN carries the ID of the address it comes from."""
    ctx.iut.set_limits(2, 2)
    conn, sf = established(ctx)
    syn = _join_to_announced(ctx, conn, sf, 5, port=6004, ifname="eth0")
    if syn.src != ctx.iut_address("eth0"):
        raise TesterError(f"the IUT joined from {syn.src}, not its initial address "
                          f"{ctx.iut_address('eth0')}: the case tested nothing")  # fmt: skip
    option = syn.need(MpJoinSyn)
    if option.address_id != 0:
        raise deviates(f"a join from the initial address with address ID "
                       f"{option.address_id}, not 0: {syn.describe()}")  # fmt: skip


@case(
    section="3.2",
    level=SHOULD,
    role=LISTENER,
    versions=(0, 1),
    expected="With a subflow limit of 1 the IUT accepts one join (fourth ACK) and refuses "
    "the next with RST, at the SYN or after the third ACK (v1: MP_TCPRST reason 3, "
    "administratively prohibited); the first join goes on carrying data.",
)
def subflow_limit_one_accepts_one_join(ctx: Context) -> None:
    """expect_next for the fourth ACK and the refusal (the answers the RFC prescribes); expect
    for the echo on the first join. RFC 8684 §3.2: a host that does not want another subflow
    answers the join with RST (MP_TCPRST reason 3 in v1, §3.6); Linux counts a join at its
    third ACK and refuses beyond `ip mptcp limits set subflows`."""
    ctx.iut.set_limits(1, 0)
    conn, _ = established(ctx)
    first = joined(ctx, conn, ifname="eth0", address_id=2)
    second, _ = join_syn(ctx, conn.remote_token, address_id=3)
    expect_refusal(ctx, join_refused(ctx, conn, second), MPTCP_RST_EPROHIBIT)
    exchange(ctx, conn, first, b"on the one join allowed", on=first)


@case(
    section="3.2",
    level=SHOULD,
    role=INITIATOR,
    versions=(0, 1),
    topology=DUAL,
    expected="With a subflow limit of 0 the IUT opens no join, even with a subflow "
    "endpoint configured: no MP_JOIN SYN after MP_CAPABLE.",
)
def initiator_subflow_limit_zero_no_join(ctx: Context) -> None:
    """expect_none: no join SYN at all is the behaviour. RFC 8684 §3.2 leaves the number of
    subflows to the host's policy; Linux's limit bounds the joins its path manager opens
    (`ip mptcp limits set subflows 0`: none)."""
    ctx.iut.add_endpoint(ctx.iut_address("eth1"), flags={"subflow"})
    ctx.iut.set_limits(0, 0)
    initiated(ctx)
    ctx.tester.expect_none("S", MpJoinSyn, within=0.5, what="a join SYN beyond the limit")


@case(
    section="3.2",
    level=SHOULD,
    role=LISTENER,
    versions=(0, 1),
    topology=DUAL,
    expected="A listener bound to the IUT's first address accepts no join to its second "
    "address: the join SYN there gets a RST (no SYN/ACK with MP_JOIN), and the connection "
    "goes on.",
)
def bound_listener_refuses_join_to_other_address(ctx: Context) -> None:
    """expect_next (`expect_rst`): the RST is the answer to a SYN for a port nobody listens
    on at that address; expect for the echo. RFC 8684 §3.2: a join is a new TCP connection
    to the receiver, which may refuse it with RST; an application that binds its listener
    to one address (RFC 6897 §4: the local addresses a connection may use) takes no
    subflow at another, as Linux, whose joins go through the bound listening socket."""
    ctx.iut.listen(ctx.port, address=ctx.iut_address("eth0"))
    conn, sf = ctx.tester.connect(ctx.port, version=ctx.version)
    exchange(ctx, conn, sf, b"hello", first=True)
    join, _ = join_syn(ctx, conn.remote_token, ifname="eth1")
    expect_rst(join)
    exchange(ctx, conn, sf, b"after the refused join", on=sf)


@case(
    ipv6=True,
    section="3.2",
    level=MUST,
    role=INITIATOR,
    versions=(0, 1),
    topology="dual_homed_mixed",
    expected="A subflow endpoint of the other address family than the connection's (IPv6 "
    "on an IPv4 connection, IPv4 on an IPv6 one) gets no join: the peer's address is of "
    "the connection's family, and a subflow cannot mix families.",
)
def initiator_no_join_across_families(ctx: Context) -> None:
    """expect_none: no join SYN at all is the behaviour. RFC 8684 §3.2 (RFC 6824 the same):
    a join is a new TCP connection to an address of the peer, and a TCP connection's two
    ends are of one family; the peer announced nothing of the other family, so there is
    no pair to join (Linux's mptcp_join.sh "no JOIN with diff families v4-v6", "v6-v4").
    IPv4-mapped IPv6 addresses, which Linux lets join IPv4 connections, are not tested."""
    other = 6 if ctx.tester.family == 4 else 4
    ifname = "eth1" if other == 6 else "eth0"  # path2 is IPv6 only; path1 has both
    address = str(ctx.topo.hosts["server"].address(ifname, other))
    ctx.iut.add_endpoint(address, flags={"subflow"})
    ctx.iut.set_limits(2, 0)
    initiated(ctx)
    ctx.tester.expect_none("S", MpJoinSyn, within=0.5, what="a join SYN across families")


@case(
    section="3.2",
    level=SHOULD,
    role=INITIATOR,
    versions=(0, 1),
    topology="dual_homed_two_addresses",
    expected="With a subflow limit of 1 and two subflow endpoints, a join the tester "
    "refuses (RST; v1: MP_TCPRST reason 3) frees the slot and the IUT's path manager "
    "moves on: it joins from its other endpoint, and that join completes.",
)
def initiator_refused_join_moves_to_next_endpoint(ctx: Context) -> None:
    """expect for the join SYNs, which the IUT opens on its own; expect_next for the third
    ACK, the answer to the SYN/ACK. RFC 8684 §3.2: a refused join is closed with RST and
    the subflow never existed; which subflows to open is the host's policy, and Linux's
    in-kernel path manager then opens the next one its limits allow (mptcp_join.sh "multi
    subflows, with failing subflow", "fair usage on close")."""
    first, second = (str(a.ip) for a in ctx.topo.hosts["server"].interfaces["eth1"].addresses)
    ctx.iut.set_limits(1, 0)
    for address_id, address in ((3, first), (4, second)):
        try:
            ctx.iut.add_endpoint(address, flags={"subflow"}, id=address_id)
        except NotSupported:
            ctx.iut.add_endpoint(address, flags={"subflow"})
    conn, _, _ = initiated(ctx)
    t = ctx.tester
    syn = t.expect("S", MpJoinSyn, dport=ctx.port, within=2, what="the IUT's first join SYN")
    refused = t.accept(syn)
    refused.send("RA", [MpTcpRst(MPTCP_RST_EPROHIBIT)] if ctx.version == 1 else [])
    other = second if syn.src == first else first
    syn = t.expect("S", MpJoinSyn, dport=ctx.port, within=2,
                   what=f"a join SYN from the other endpoint {other}",
                   where=lambda s: s.src == other)  # fmt: skip
    complete_iut_join(ctx, conn, syn)


# Linux's join SYN gives up after net.ipv4.tcp_syn_retries retransmissions (default 6,
# about 127 s); 1 is the shortest that still retransmits: 1 s, then 2 s, 3 s in all.
JOIN_SYN_RETRIES = 1
JOIN_TIMEOUT = 3.0


@case(
    section="3.2",
    level=SHOULD,
    role=INITIATOR,
    versions=(0, 1),
    topology="dual_homed_two_addresses",
    expected="With a subflow limit of 1 and two subflow endpoints, a join that times out "
    "(the tester never answers its SYN) frees the slot and the IUT's path manager moves "
    "on: it joins from its other endpoint, and that join completes.",
)
def initiator_timed_out_join_moves_to_next_endpoint(ctx: Context) -> None:
    """expect for the join SYNs, which the IUT opens on its own timers; expect_next for the
    third ACK. RFC 8684 §3.2 leaves which subflows to open to the host; Linux's path
    manager opens the next one once a join times out (mptcp_join.sh "multi subflows, with
    subflow timeout"). The IUT gives up after one SYN retransmission
    (net.ipv4.tcp_syn_retries=1, the stack's --syn-retries 1): about 3 s, the shortest
    honest wait for a timeout."""
    first, second = (str(a.ip) for a in ctx.topo.hosts["server"].interfaces["eth1"].addresses)
    ctx.iut.set_sysctl("net.ipv4.tcp_syn_retries", JOIN_SYN_RETRIES)
    ctx.iut.set_limits(1, 0)
    for address_id, address in ((3, first), (4, second)):
        try:
            ctx.iut.add_endpoint(address, flags={"subflow"}, id=address_id)
        except NotSupported:
            ctx.iut.add_endpoint(address, flags={"subflow"})
    conn, _, _ = initiated(ctx)
    t = ctx.tester
    syn = t.expect("S", MpJoinSyn, dport=ctx.port, within=2, what="the IUT's first join SYN")
    other = second if syn.src == first else first
    syn = t.expect("S", MpJoinSyn, dport=ctx.port, within=JOIN_TIMEOUT + 1.5,
                   what=f"after the first join timed out, a join SYN from {other}",
                   where=lambda s: s.src == other)  # fmt: skip
    complete_iut_join(ctx, conn, syn)


# --------------------------------------------------------------------------------------
# Issue 13, part 2 (mptcp_join.sh "add subflow" / "remove single subflow", the IPv4-mapped
# tests): endpoints added and removed during the connection, an endpoint given as an
# IPv4-mapped IPv6 address.


def _join_after_live_endpoint(ctx: Context, address: str) -> tuple[MptcpConnection, Subflow]:
    """The IUT connects with no endpoint; once the connection is established a subflow
    endpoint `address` is added. Its join SYN (`expect`: it opens a subflow) must come from
    the IPv4 address of eth1 with the tester's token; the tester answers it and the third
    ACK (`expect_next`: the answer to the SYN/ACK) must carry a valid HMAC-A. Returns the
    connection and the joined subflow, its fourth ACK sent."""
    ctx.iut.set_limits(2, 0)
    conn, _, _ = initiated(ctx)
    ctx.iut.add_endpoint(address, flags={"subflow"})
    source = ctx.iut_address("eth1")
    syn = ctx.tester.expect("S", MpJoinSyn, dport=ctx.port, within=2,
                            what=f"a join SYN from {source}")  # fmt: skip
    if syn.src != source:
        raise deviates(f"join SYN from {syn.src}, not the new endpoint's {source}: "
                       f"{syn.describe()}")  # fmt: skip
    join = complete_iut_join(ctx, conn, syn)
    join.address_id = syn.need(MpJoinSyn).address_id
    return conn, join


@case(
    ipv6=True,
    section="3.2",
    level=MAY,
    versions=(0, 1),
    role=INITIATOR,
    topology=DUAL,
    expected="A subflow endpoint added while the IUT's connection is open makes it join "
    "from that address: a join SYN with the tester's token, then a third ACK with a "
    "valid HMAC-A.",
)
def initiator_joins_from_endpoint_added(ctx: Context) -> None:
    """expect for the join SYN (a local change, not an answer); expect_next for the third
    ACK, the answer to the SYN/ACK. RFC 8684 §3.2: a host may open subflows at any time
    (mptcp_join.sh "add single subflow": `ip mptcp endpoint add ... subflow`
    mid-connection)."""
    _join_after_live_endpoint(ctx, ctx.iut_address("eth1"))


@case(
    section="3.4.2",
    level=SHOULD,
    versions=(0, 1),
    role=INITIATOR,
    topology=DUAL,
    expected="When the subflow endpoint the IUT joined from is removed, it sends "
    "REMOVE_ADDR with that address ID (its join SYN's) and closes the subflow (RST or FIN).",
)
def initiator_endpoint_removed_sends_remove_addr(ctx: Context) -> None:
    """expect: REMOVE_ADDR and the close follow a local change, not a segment; other
    traffic may come first. RFC 8684 §3.4.2: an address that is no longer valid SHOULD be
    announced removed, and its subflows closed (mptcp_join.sh "remove single subflow")."""
    conn, join = _join_after_live_endpoint(ctx, ctx.iut_address("eth1"))
    ctx.iut.delete_endpoint(ctx.iut_address("eth1"))
    removal = ctx.tester.expect_pattern(
        Pattern(option=RemoveAddr, what="REMOVE_ADDR"), 1,
        owner=lambda s: any(sf.owns(s) for sf in conn.subflows),
    )  # fmt: skip
    if join.address_id not in removal.need(RemoveAddr).address_ids:
        raise deviates(f"REMOVE_ADDR without the join's ID {join.address_id}: "
                       f"{removal.describe()}")  # fmt: skip
    join.expect(within=1, what="RST or FIN on the removed address's subflow",
                where=lambda s: bool(s.flags & (RST | FIN)))  # fmt: skip


@case(
    section="3.2",
    level=SHOULD,
    versions=(0, 1),
    role=INITIATOR,
    topology=DUAL,
    expected="A subflow endpoint given as an IPv4-mapped IPv6 address (::ffff:ADDR) is "
    "the IPv4 address ADDR: on an IPv4 connection the IUT joins from it over IPv4 (token, "
    "HMAC-A valid).",
)
def initiator_joins_from_ipv4_mapped_endpoint(ctx: Context) -> None:
    """expect for the join SYN (a local change, not an answer); expect_next for the third
    ACK, the answer to the SYN/ACK. RFC 4291 §2.5.5.2: ::ffff:ADDR represents the IPv4
    address ADDR; RFC 8684 §3.2 lets a join use any of the host's addresses of the
    connection's family (mptcp_join.sh "single subflow IPv4-mapped")."""
    mapped = f"::ffff:{ctx.iut_address('eth1')}"
    _join_after_live_endpoint(ctx, mapped)


@case(
    section="3.2",
    level=SHOULD,
    versions=(0, 1),
    role=INITIATOR,
    topology=DUAL,
    expected="A connection the IUT's application opens to the tester's IPv4-mapped IPv6 "
    "address (::ffff:ADDR, an IPv6 socket) runs over IPv4, and the IUT's IPv4 subflow "
    "endpoint joins it over IPv4 (token, HMAC-A valid).",
)
def initiator_ipv4_mapped_connection_joins_over_ipv4(ctx: Context) -> None:
    """expect for the SYNs, which open subflows; expect_next for the third ACKs, the
    answers to the SYN/ACKs (`initiated`, `complete_iut_join`). RFC 4291 §2.5.5.2: the
    mapped address is the IPv4 node's, so the connection and its subflows are IPv4 ones
    (mptcp_join.sh "single subflow v4-map-v6": an IPv6 socket, an IPv4 path)."""
    _subflow_endpoint(ctx)
    mapped = f"::ffff:{ctx.tester.address('eth0')}"
    conn, sf, _ = initiated(ctx, address=mapped)
    if ":" in sf.remote:
        raise deviates(f"the connection to {mapped} is not over IPv4: {sf!r}")
    syn = ctx.tester.expect("S", MpJoinSyn, dport=ctx.port, within=2,
                            what="the IUT's join SYN over IPv4")  # fmt: skip
    complete_iut_join(ctx, conn, syn)
