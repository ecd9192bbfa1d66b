"""Tokens and IDSNs derived from keys, their uniqueness, joins with wrong tokens (§3.1, §3.2).

Every case serves v0 and v1: H, the hash of a key, is SHA-1 in RFC 6824 and SHA-256 in
RFC 8684; the tester derives tokens and IDSNs with the case's version.
"""

from __future__ import annotations

from conformance.cases import LISTENER, MUST, Context, case
from conformance.cases.steps import (
    capable_syn,
    established,
    exchange,
    expect_data_ack,
    expect_rst,
    join_syn,
    tester_syn,
)
from conformance.model import deviates
from stack import crypto
from stack.wire.mptcp import Dss, MpCapable, MpFastclose, MpJoinSynAck


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
