"""Tokens and IDSNs derived from keys, their uniqueness, joins with wrong tokens (§3.1, §3.2).

Every case serves v0 and v1: H, the hash of a key, is SHA-1 in RFC 6824 and SHA-256 in
RFC 8684; the tester derives tokens and IDSNs with the case's version.
"""

from __future__ import annotations

from conformance.cases import INITIATOR, LISTENER, MUST, SHOULD, Context, case
from conformance.cases.steps import (
    capable_syn,
    established,
    exchange,
    expect_data_ack,
    expect_rst,
    initiated,
    join_refused,
    join_syn,
    joined,
    tester_syn,
)
from conformance.model import deviates
from conformance.tester import TesterError
from stack import crypto
from stack.wire.mptcp import Dss, MpCapable, MpFastclose, MpJoinSynAck
from stack.wire.tcp import FIN


@case(
    ipv6=True,
    section="3.1",
    level=MUST,
    role=LISTENER,
    versions=(0, 1),
    expected="The IUT's first DSN is IDSN-B + 1, IDSN-B being the least significant 64 "
    "bits of H(Key-B): SHA-256 in v1, SHA-1 in v0.",
)
def idsn_from_key(ctx: Context) -> None:
    """expect (`established`): the echo's DSN is checked; a pure ACK of the data may precede it."""
    conn, sf = established(ctx)
    echo = ctx.tester.received(lambda s: sf.owns(s) and bool(s.payload))[0]
    dss = echo.option(Dss)
    if dss is None or dss.dsn is None:
        raise deviates(f"echoed data without a DSS mapping: {echo.describe()}")
    expected = (crypto.key_idsn(conn.remote_key or 0, ctx.version) + 1) & (2**64 - 1)
    got = dss.dsn if dss.dsn_64 else dss.dsn | (expected & ~0xFFFFFFFF)
    if got != expected:
        raise deviates(f"first DSN {got:#x}, expected IDSN-B+1 {expected:#x}")


@case(
    ipv6=True,
    section="3.2",
    level=MUST,
    role=LISTENER,
    versions=(0, 1),
    expected="A join carrying the token computed from Key-B (most significant 32 bits of "
    "H(Key-B): SHA-256 in v1, SHA-1 in v0) is recognised: SYN/ACK with MP_JOIN.",
)
def token_from_key_accepted(ctx: Context) -> None:
    """expect_next (`Tester.join`): the SYN/ACK is the only answer to a join SYN."""
    conn, _ = established(ctx)
    ctx.tester.join(conn, ctx.port, ifname="eth0")


@case(
    section="3.1",
    level=MUST,
    role=LISTENER,
    versions=(0, 1),
    expected="Across 200 connections the IUT's keys, and so its tokens, are all distinct.",
)
def keys_and_tokens_unique(ctx: Context) -> None:
    """expect_next: the SYN/ACK is the only answer to a SYN."""
    ctx.iut.listen(ctx.port)
    keys: dict[int, int] = {}
    for index in range(200):
        sf = tester_syn(ctx, capable_syn(ctx))
        synack = sf.expect_next("SA", MpCapable, within=1)
        option = synack.option(MpCapable)
        assert option is not None and option.sender_key is not None
        sf.send("R", seq=sf.snd_nxt)
        token = crypto.key_token(option.sender_key, ctx.version)
        if token in keys:
            raise deviates(f"connection {index} reuses the token {token:#x} of {keys[token]}")
        keys[token] = index


@case(
    ipv6=True,
    section="3.2",
    level=MUST,
    role=LISTENER,
    versions=(0, 1),
    expected="A join SYN with an unknown token is refused with RST.",
)
def join_unknown_token_reset(ctx: Context) -> None:
    """expect_next: the RFC prescribes the RST as the answer to the join SYN."""
    conn, _ = established(ctx)
    _refused_at_syn(ctx, conn.remote_token ^ 0x5A5A5A5A)


def _refused_at_syn(ctx: Context, token: int) -> None:
    """A join SYN for `token` gets a RST as the IUT's next segment (`expect_next`), not a
    SYN/ACK with MP_JOIN."""
    sf, _ = join_syn(ctx, token)
    sf.expect_next("RA", absent=[MpJoinSynAck], within=1, what="RST")


@case(
    section="3.2",
    level=MUST,
    role=LISTENER,
    versions=(0, 1),
    expected="A join SYN with the token of a connection that has been closed (by "
    "MP_FASTCLOSE) is refused with RST.",
)
def join_token_of_closed_connection(ctx: Context) -> None:
    """expect_next: the RFC prescribes the RST as the answer to MP_FASTCLOSE, and to the join
    SYN."""
    conn, sf = established(ctx)
    sf.send("A", [MpFastclose(receiver_key=conn.remote_key or 0)])
    expect_rst(sf)
    ctx.iut.wait_report(within=1)
    _refused_at_syn(ctx, conn.remote_token)


@case(
    section="3.2",
    level=MUST,
    role=LISTENER,
    versions=(0, 1),
    expected="A join SYN whose token is derived with the other version's hash (in v1 "
    "SHA-1 of Key-B, in v0 SHA-256 of Key-B) is unknown and refused with RST.",
)
def join_token_of_wrong_hash(ctx: Context) -> None:
    """expect_next: the RFC prescribes the RST as the answer to the join SYN."""
    conn, _ = established(ctx)
    _refused_at_syn(ctx, crypto.key_token(conn.remote_key or 0, 1 - ctx.version))


@case(
    section="3.3.1",
    level=MUST,
    role=LISTENER,
    versions=(0, 1),
    expected="The IUT's data ACK acknowledges the tester's data relative to IDSN-A + 1 "
    "(IDSN-A from H of the tester's key: SHA-256 in v1, SHA-1 in v0).",
)
def data_ack_uses_tester_idsn(ctx: Context) -> None:
    """expect: the data ACK may ride on any segment after the data."""
    conn, sf = established(ctx)
    echo = exchange(ctx, conn, sf, b"x" * 100)
    expect_data_ack(sf, conn.data_snd_nxt, echo)


# --------------------------------------------------------------------------------------
# Issue 13, part 2 (token area): which token a join must carry, and which connection it
# reaches; the IDSNs of an initiating IUT.


@case(
    ipv6=True,
    section="3.2",
    level=MUST,
    role=LISTENER,
    versions=(0, 1),
    expected="A join SYN carrying the tester's own token (from Key-A, the key the IUT "
    "received) instead of the IUT's is refused with RST: a token names the receiver's "
    "connection.",
)
def join_with_senders_own_token_refused(ctx: Context) -> None:
    """expect_next: the RFC prescribes the RST as the answer to a join SYN whose token the
    IUT never issued. RFC 8684 §3.2 (RFC 6824 §3.2): the SYN carries "the receiver's
    token"; an IUT that looked tokens up among its peers' keys would accept this."""
    conn, _ = established(ctx)
    _refused_at_syn(ctx, conn.local_token)


@case(
    section="3.2",
    level=MUST,
    role=LISTENER,
    versions=(0, 1),
    expected="A join SYN whose token is the least significant 32 bits of H(Key-B) (the "
    "wrong end of the hash: SHA-256 in v1, SHA-1 in v0) is unknown and refused with RST.",
)
def join_token_of_low_bits_refused(ctx: Context) -> None:
    """expect_next: the RFC prescribes the RST as the answer to the join SYN. The token is
    the most significant 32 bits of the hash (§3.1); the low bits are the IDSN's."""
    conn, _ = established(ctx)
    low = crypto.key_idsn(conn.remote_key or 0, ctx.version) & 0xFFFFFFFF
    if low == conn.remote_token:  # 1 in 2^32: nothing to tell apart
        raise TesterError("the IUT's key hashes to equal high and low words; run again")
    _refused_at_syn(ctx, low)


@case(
    section="3.2",
    level=MUST,
    role=LISTENER,
    versions=(0, 1),
    expected="With two connections open, a join carrying the first one's token joins the "
    "first (not the latest): data on the joined subflow, mapped in the first "
    "connection's data sequence space, is echoed on the first connection.",
)
def join_token_selects_its_connection(ctx: Context) -> None:
    """expect_next (`Tester.join`, `joined`): the SYN/ACK, HMAC-B and fourth ACK answer the
    join; expect for the echo, which a pure ACK may precede. RFC 8684 §3.2: the token
    "identifies the MPTCP connection" the subflow joins; HMAC-B, keyed with the first
    connection's keys, must verify, and the echo must come in its DSN space."""
    first, first_sf = established(ctx)
    second, _ = ctx.tester.connect(ctx.port, version=ctx.version)
    exchange(ctx, second, second.subflows[0], b"the second connection", first=True)
    join = joined(ctx, first, ifname="eth0", address_id=3)  # another port of eth0
    echo = exchange(ctx, first, join, b"on the join of the first connection")
    if not any(sf.owns(echo) for sf in (first_sf, join)):
        raise deviates(f"the join's data came back on another connection: {echo.describe()}")


@case(
    section="3.1",
    level=MUST,
    role=INITIATOR,
    expected="An initiating IUT maps its first data byte at IDSN-A + 1, IDSN-A being the "
    "least significant 64 bits of SHA-256(Key-A), Key-A the key of its third ACK (the "
    "first data's MP_CAPABLE maps it there implicitly; a DSS must say so).",
)
def initiator_idsn_from_key(ctx: Context) -> None:
    """expect: the IUT's data follows the handshake on its own (a pure ACK may precede
    it). RFC 8684 §3.1 and §3.3.1: the DSN of the first byte is IDSN + 1. (v0 has its own
    case: `mp_capable.initiator_v0_first_data_mapping_at_idsn`.)"""
    conn, sf, _ = initiated(ctx, mode="source", nbytes=1000)
    first_dsn = conn.data_rcv_nxt  # IDSN-A + 1, from the third ACK's Key-A
    data = sf.expect(data=True, within=1, what="the IUT's first data")
    dss = data.option(Dss)
    capable = data.option(MpCapable)
    if dss is not None and dss.dsn is not None:
        dsn = dss.dsn if dss.dsn_64 else dss.dsn | (first_dsn & ~0xFFFFFFFF)
        if dsn != first_dsn or (dss.subflow_seq or 0) != 1:
            raise deviates(f"first data mapped at DSN {dsn:#x} subflow seq {dss.subflow_seq}, "
                           f"expected IDSN-A+1 {first_dsn:#x} at 1: {data.describe()}")  # fmt: skip
    elif capable is None or capable.data_level_length is None:
        raise deviates(f"first data with neither a mapping nor MP_CAPABLE: {data.describe()}")
    if (data.seq - (sf.irs or 0)) & 0xFFFFFFFF != 1:
        raise deviates(
            f"first data at relative sequence "
            f"{(data.seq - (sf.irs or 0)) & 0xFFFFFFFF}, not 1: {data.describe()}"
        )


@case(
    section="3.3.1",
    level=MUST,
    role=INITIATOR,
    versions=(0, 1),
    expected="An initiating IUT acknowledges the tester's data relative to IDSN-B + 1 "
    "(IDSN-B from H of the tester's Key-B, given in the SYN/ACK: SHA-256 in v1, SHA-1 in v0).",
)
def initiator_data_ack_uses_tester_idsn(ctx: Context) -> None:
    """expect: the data ACK may ride on any segment after the data."""
    conn, sf, _ = initiated(ctx, mode="sink")
    payload = b"y" * 100
    ctx.tester.send_data(conn, sf, payload)
    expect_data_ack(sf, conn.data_snd_nxt)


@case(
    section="3.2",
    level=SHOULD,
    role=LISTENER,
    versions=(0, 1),
    expected="Once a connection is closed in order (both DATA_FINs acknowledged, the "
    "subflow closed with FINs both ways), a join SYN with its token is refused with RST "
    "(at the SYN, or at the latest after the third ACK).",
)
def join_token_of_connection_closed_in_order(ctx: Context) -> None:
    """expect for the IUT's DATA_FIN and FIN, its own (other segments may come first);
    expect_next (`join_refused`) for the refusal, the answer to the join. RFC 8684 §3.2:
    a token that names no connection is refused with RST; after §3.3.3's orderly close
    the connection is gone (`join_token_of_closed_connection` is the MP_FASTCLOSE way)."""
    conn, sf = established(ctx, mode="source", nbytes=300)
    data_fin = sf.expect(option=Dss, within=2, what="the IUT's DATA_FIN",
                         where=lambda s: s.need(Dss).data_fin)  # fmt: skip
    sf.send("A", [conn.data_ack()])
    dss = conn.mapping(sf, b"", data_fin=True)
    sf.send("A", [dss])
    fin = data_fin if data_fin.flags & FIN else sf.expect(
        within=1.5, what="the IUT's subflow FIN", where=lambda s: bool(s.flags & FIN)
    )  # fmt: skip
    sf.send("FA", [conn.data_ack()], ack=(fin.seq + len(fin.payload) + 1) & 0xFFFFFFFF)
    join, _ = join_syn(ctx, conn.remote_token, address_id=3)
    join_refused(ctx, conn, join)
