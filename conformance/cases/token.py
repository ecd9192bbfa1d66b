"""Tokens and IDSNs derived from keys, their uniqueness, joins with wrong tokens (§3.1, §3.2)."""

from __future__ import annotations

from conformance.cases import LISTENER, MUST, Context, case
from conformance.cases.steps import established, exchange
from conformance.model import deviates
from stack import crypto
from stack.wire.mptcp import MPC_FLAG_H, Dss, MpCapable, MpFastclose, MpJoinSyn, MpJoinSynAck
from stack.wire.tcp import MaxSegmentSize


@case(
    ipv6=True,
    section="3.1",
    level=MUST,
    role=LISTENER,
    expected="The IUT's first DSN is IDSN-B + 1, IDSN-B being the least significant 64 "
    "bits of SHA-256(Key-B).",
)
def idsn_from_key(ctx: Context) -> None:
    conn, sf = established(ctx)
    echo = ctx.tester.received(lambda s: sf.owns(s) and bool(s.payload))[0]
    dss = echo.option(Dss)
    if dss is None or dss.dsn is None:
        raise deviates(f"echoed data without a DSS mapping: {echo.describe()}")
    expected = (crypto.key_idsn(conn.remote_key or 0, 1) + 1) & (2**64 - 1)
    got = dss.dsn if dss.dsn_64 else dss.dsn | (expected & ~0xFFFFFFFF)
    if got != expected:
        raise deviates(f"first DSN {got:#x}, expected IDSN-B+1 {expected:#x}")


@case(
    ipv6=True,
    section="3.2",
    level=MUST,
    role=LISTENER,
    expected="A join carrying the token computed from Key-B (most significant 32 bits of "
    "SHA-256(Key-B)) is recognised: SYN/ACK with MP_JOIN.",
)
def token_from_key_accepted(ctx: Context) -> None:
    conn, _ = established(ctx)
    ctx.tester.join(conn, ctx.port, ifname="eth0")


@case(
    section="3.1",
    level=MUST,
    role=LISTENER,
    expected="Across 200 connections the IUT's keys, and so its tokens, are all distinct.",
)
def keys_and_tokens_unique(ctx: Context) -> None:
    ctx.iut.listen(ctx.port)
    t = ctx.tester
    keys: dict[int, int] = {}
    for index in range(200):
        sf = t.subflow(ctx.port)
        sf.send("S", [MaxSegmentSize(1460), MpCapable(version=1, flags=MPC_FLAG_H)])
        synack = sf.expect("SA", MpCapable, within=1)
        option = synack.option(MpCapable)
        assert option is not None and option.sender_key is not None
        sf.send("R", seq=sf.snd_nxt)
        token = crypto.key_token(option.sender_key, 1)
        if token in keys:
            raise deviates(f"connection {index} reuses the token {token:#x} of {keys[token]}")
        keys[token] = index


@case(
    ipv6=True,
    section="3.2",
    level=MUST,
    role=LISTENER,
    expected="A join SYN with an unknown token is refused with RST.",
)
def join_unknown_token_reset(ctx: Context) -> None:
    conn, _ = established(ctx)
    sf = ctx.tester.subflow(ctx.port)
    sf.send(
        "S",
        [
            MaxSegmentSize(1460),
            MpJoinSyn(address_id=1, token=conn.remote_token ^ 0x5A5A5A5A, nonce=1),
        ],
    )
    sf.expect("RA", absent=[MpJoinSynAck], within=1, what="RST")


@case(
    section="3.2",
    level=MUST,
    role=LISTENER,
    expected="A join SYN with the token of a connection that has been closed (by "
    "MP_FASTCLOSE) is refused with RST.",
)
def join_token_of_closed_connection(ctx: Context) -> None:
    conn, sf = established(ctx)
    sf.send("A", [MpFastclose(receiver_key=conn.remote_key or 0)])
    sf.expect(within=1, what="RST", where=lambda s: bool(s.flags & 0x04))
    ctx.iut.wait_report(within=1)
    join = ctx.tester.subflow(ctx.port)
    join.send(
        "S", [MaxSegmentSize(1460), MpJoinSyn(address_id=1, token=conn.remote_token, nonce=2)]
    )
    join.expect("RA", absent=[MpJoinSynAck], within=1, what="RST")


@case(
    section="3.2",
    level=MUST,
    role=LISTENER,
    expected="A v1 join SYN whose token is derived with the v0 hash (SHA-1 of Key-B) is "
    "unknown and refused with RST.",
)
def join_token_of_wrong_hash(ctx: Context) -> None:
    conn, _ = established(ctx)
    wrong = crypto.key_token(conn.remote_key or 0, 0)
    sf = ctx.tester.subflow(ctx.port)
    sf.send("S", [MaxSegmentSize(1460), MpJoinSyn(address_id=1, token=wrong, nonce=3)])
    sf.expect("RA", absent=[MpJoinSynAck], within=1, what="RST")


@case(
    section="3.3.1",
    level=MUST,
    role=LISTENER,
    expected="The IUT's data ACK acknowledges the tester's data relative to IDSN-A + 1 "
    "(IDSN-A from SHA-256 of the tester's key).",
)
def data_ack_uses_tester_idsn(ctx: Context) -> None:
    conn, sf = established(ctx)
    echo = exchange(ctx, conn, sf, b"x" * 100)
    expected = conn.data_snd_nxt
    if _data_ack(echo) in (expected, expected & 0xFFFFFFFF):
        return
    sf.expect(
        option=Dss,
        within=1,
        what=f"DSS data ACK {expected}",
        where=lambda s: _data_ack(s) in (expected, expected & 0xFFFFFFFF),
    )


def _data_ack(segment: object) -> int | None:
    dss = segment.option(Dss)  # type: ignore[attr-defined]
    return None if dss is None else dss.data_ack
