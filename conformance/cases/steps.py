"""Scripted steps that many cases share (a case that tests one of them spells it out)."""

from __future__ import annotations

import time
from collections.abc import Callable

from conformance.cases import Context
from conformance.iut import NotSupported
from conformance.model import deviates
from conformance.tester import MptcpConnection, Pattern, Segment, Subflow
from stack import crypto
from stack.wire.mptcp import (
    MPC_FLAG_H,
    Dss,
    MpCapable,
    MpJoinAck,
    MpJoinSyn,
    MpJoinSynAck,
    MpTcpRst,
)
from stack.wire.tcp import ACK, FIN, RST, SYN, MaxSegmentSize, TcpOption


def has_mapping(segment: Segment) -> bool:
    dss = segment.option(Dss)
    return dss is not None and dss.dsn is not None


def established(
    ctx: Context,
    *,
    mode: str = "echo",
    nbytes: int = 0,
    checksum: bool | None = None,
    ifname: str = "eth0",
) -> tuple[MptcpConnection, Subflow]:
    """The IUT listens; the tester completes MP_CAPABLE (in the case's version: v0's SYN
    carries Key-A and asks for checksums, see `Tester.connect`) and one echoed
    exchange, so the connection is fully established at both ends."""
    ctx.iut.listen(ctx.port, mode=mode, nbytes=nbytes)
    t = ctx.tester
    conn, sf = t.connect(ctx.port, version=ctx.version, checksum=checksum, ifname=ifname)
    if mode == "echo":
        exchange(ctx, conn, sf, b"hello", first=True)
    return conn, sf


def exchange(
    ctx: Context,
    conn: MptcpConnection,
    sf: Subflow,
    payload: bytes,
    *,
    first: bool = False,
    on: Subflow | None = None,
    within: float = 1.0,
) -> Segment:
    """Send `payload` on `sf`, expect it echoed (on `on`, default any subflow of the
    connection), acknowledge the echo; returns the echo segment."""
    t = ctx.tester
    if first and conn.version == 1:
        t.first_data_v1(conn, sf, payload)
    else:
        t.send_data(conn, sf, payload)
    owners = [on] if on is not None else list(conn.subflows)
    echo = t.expect_pattern(
        _data_pattern(),
        within,
        owner=lambda s: any(o.owns(s) for o in owners),
        where_text="the connection's subflows",
    )
    back = next(o for o in owners if o.owns(echo))
    back.send("A", [conn.data_ack()])
    return echo


def _data_pattern() -> Pattern:
    return Pattern(data=True, what="echoed data")


def iut_syn(
    ctx: Context, *, mode: str = "sink", nbytes: int = 0, source: str | None = None,
    address: str | None = None,
) -> Segment:  # fmt: skip
    """The IUT connects to the tester (its eth0 address, or `address`, a spelling of it
    such as the IPv4-mapped one): its SYN with MP_CAPABLE."""
    t = ctx.tester
    target = address or t.address("eth0")
    ctx.iut.connect(target, ctx.port, mode=mode, nbytes=nbytes, source=source)
    # the deadline covers the IUT's start (a userspace IUT is a new process, slow on a
    # loaded machine), not a protocol timer
    return t.expect("S", MpCapable, dport=ctx.port, within=5, what="SYN with MP_CAPABLE")


def initiated(
    ctx: Context,
    *,
    mode: str = "sink",
    nbytes: int = 0,
    source: str | None = None,
    synack_flags: int | None = None,
    address: str | None = None,
) -> tuple[MptcpConnection, Subflow, Segment]:
    """The IUT connects to the tester, which accepts MP_CAPABLE, reads Key-A from the
    third ACK (the IUT's next segment: `expect_next`, its SYN sent again excepted) and
    acknowledges it at the data level (fully established). In v0 Key-A came on the SYN
    already, and the third ACK must repeat it (RFC 6824 §3.1)."""
    syn = iut_syn(ctx, mode=mode, nbytes=nbytes, source=source, address=address)
    kwargs = {} if synack_flags is None else {"flags": synack_flags}
    conn, sf = ctx.tester.accept_mp_capable(syn, version=ctx.version, **kwargs)
    ack = sf.expect_next("A", MpCapable, within=1, what="third ACK with MP_CAPABLE",
                         skip=syn_again(sf))  # fmt: skip
    option = ack.option(MpCapable)
    assert option is not None
    if option.sender_key is None:
        raise deviates(f"third ACK MP_CAPABLE has no Key-A: {ack.describe()}")
    if conn.version == 0 and option.sender_key != conn.remote_key:
        raise deviates(
            f"third ACK Key-A {option.sender_key:#x} is not the SYN's {conn.remote_key or 0:#x}"
        )
    conn.learn_remote_key(option.sender_key)
    conn.start_data()
    sf.send("A", [conn.data_ack()])
    return conn, sf, ack


def capable_syn(ctx: Context, flags: int = MPC_FLAG_H, *, key: int | None = None) -> MpCapable:
    """The MP_CAPABLE of a tester SYN in the case's version (v0: with Key-A, `key` or a
    random one; v1: no key)."""
    conn = MptcpConnection(ctx.version, key or crypto.generate_key(ctx.version)[0])
    return ctx.tester.capable_syn(conn, flags)


def expect_refusal(ctx: Context, rst: Segment, reason: int) -> None:
    """A refused join's RST: in v1 it SHOULD carry MP_TCPRST with `reason` (RFC 8684
    §3.6); RFC 6824 has no MP_TCPRST, a plain RST is the whole refusal."""
    if ctx.version == 0:
        return
    option = rst.option(MpTcpRst)
    if option is None or option.reason != reason:
        raise deviates(f"RST without MP_TCPRST reason {reason}: {rst.describe()}")


def tester_syn(ctx: Context, *options: TcpOption, raw_options: bytes | None = None) -> Subflow:
    """A new subflow to the IUT's port, opened with a SYN carrying the MSS and then
    `options` (or, for a malformed option, the MSS and then `raw_options` bytes)."""
    sf = ctx.tester.subflow(ctx.port)
    mss = ctx.tester.mss(sf.local)
    if raw_options is not None:
        sf.send("S", raw_options=mss.emit() + raw_options)
    else:
        sf.send("S", [mss, *options])
    return sf


def plain_synack(sf: Subflow) -> Segment:
    """The SYN/ACK of a responder that falls back (no MP_CAPABLE): the IUT's next segment."""
    return sf.expect_next("SA", absent=[MpCapable], within=1, what="a plain SYN/ACK (fallback)")


def join_syn(
    ctx: Context,
    token: int,
    *,
    ifname: str = "eth0",
    port: int | None = None,
    address_id: int = 1,
    backup: bool = False,
    nonce: int | None = None,
) -> tuple[Subflow, int]:
    """A new subflow opened with a join SYN for `token` (the rest of the join is the
    case's); returns it and the nonce R-A."""
    sf = ctx.tester.subflow(port or ctx.port, ifname=ifname)
    sf.local_nonce = crypto.generate_nonce() if nonce is None else nonce
    option = MpJoinSyn(address_id=address_id, token=token, nonce=sf.local_nonce, backup=backup)
    sf.send("S", [ctx.tester.mss(sf.local), option])
    return sf, sf.local_nonce


def joined(ctx: Context, conn: MptcpConnection, *, ifname: str = "eth1", **join: object) -> Subflow:
    """A complete join of the IUT's connection over `ifname`, up to the IUT's fourth
    ACK (the IUT then counts the subflow as established)."""
    sf, _ = ctx.tester.join(conn, ctx.port, ifname=ifname, **join)  # type: ignore[arg-type]
    expect_fourth_ack(sf)
    return sf


def expect_fourth_ack(sf: Subflow) -> Segment:
    """The IUT's next segment after the tester's third ACK of a join is the fourth ACK: an
    ACK without MP_JOIN (RFC 8684 §3.2; its SYN/ACK retransmitted across the third ACK
    excepted)."""
    return sf.expect_next("A", absent=[MpJoinAck, MpJoinSynAck], within=1,
                          what="the fourth ACK", skip=syn_again(sf))  # fmt: skip


def accept_join(ctx: Context, conn: MptcpConnection, syn: Segment) -> Subflow:
    """The tester's side of a join the IUT opens with `syn`: a subflow of `conn` that
    knows R-A and has its own fresh R-B (answer it with `answer_join`)."""
    join = ctx.tester.accept(syn)
    join.connection = conn
    conn.subflows.append(join)
    join.remote_nonce = syn.need(MpJoinSyn).nonce
    join.local_nonce = crypto.generate_nonce()
    return join


def complete_iut_join(ctx: Context, conn: MptcpConnection, syn: Segment) -> Subflow:
    """The tester's side of the IUT's join: the SYN's token must be the tester's, the
    SYN/ACK carries HMAC-B, and the IUT's third ACK (`expect_next`, its SYN sent again
    excepted) must carry a valid HMAC-A; the tester then sends the fourth ACK."""
    if syn.need(MpJoinSyn).token != conn.local_token:
        raise deviates(f"join SYN token is not the tester's {conn.local_token:#x}: "
                       f"{syn.describe()}")  # fmt: skip
    join = accept_join(ctx, conn, syn)
    answer_join(conn, join)
    ack = join.expect_next("A", MpJoinAck, within=1, what="the third ACK with HMAC-A",
                           skip=syn_again(join))  # fmt: skip
    if ack.need(MpJoinAck).hmac != iut_hmac_a(conn, join):
        raise deviates(f"third ACK HMAC-A does not verify: {ack.describe()}")
    join.send("A", [conn.data_ack()])
    return join


def join_refused(ctx: Context, conn: MptcpConnection, sf: Subflow) -> Segment:
    """After a join SYN: a RST, either at once or, when the IUT answered SYN/ACK with
    MP_JOIN, after a valid third ACK (the join is never completed: no fourth ACK). Each
    is the IUT's next segment (`expect_next`)."""
    answer = sf.expect_next(
        within=1,
        what="RST or SYN/ACK with MP_JOIN",
        where=lambda s: is_rst(s) or s.option(MpJoinSynAck) is not None,
    )
    if is_rst(answer):
        return answer
    sf.connection = conn
    sf.remote_nonce = answer.option(MpJoinSynAck).nonce  # type: ignore[union-attr]
    sf.send("A", [MpJoinAck(hmac=ctx.tester.join_ack_hmac(conn, sf))])
    return expect_rst(sf)


def answer_join(conn: MptcpConnection, join: Subflow, hmac: bytes | None = None) -> None:
    """SYN/ACK with MP_JOIN to the IUT's join SYN: HMAC-B (or `hmac`) and R-B."""
    mac = synack_hmac(conn, join) if hmac is None else hmac
    option = MpJoinSynAck(address_id=0, hmac=mac, nonce=join.local_nonce or 0)
    join.send("SA", [MaxSegmentSize(1460), option])


def synack_hmac(conn: MptcpConnection, join: Subflow) -> bytes:
    """HMAC-B that the tester (host B of a join the IUT opens) sends, in `conn`'s version."""
    return crypto.join_synack_hmac(conn.version, conn.local_key, conn.remote_key or 0,
                                   join.local_nonce or 0, join.remote_nonce or 0)  # fmt: skip


def iut_hmac_a(conn: MptcpConnection, join: Subflow) -> bytes:
    """HMAC-A that the joining IUT's third ACK must carry (the IUT is host A): 160 bits,
    the whole HMAC-SHA1 in v0, the leftmost bits of HMAC-SHA256 in v1."""
    return crypto.join_ack_hmac(conn.version, conn.remote_key or 0, conn.local_key,
                                join.remote_nonce or 0, join.local_nonce or 0)  # fmt: skip


def is_rst(segment: Segment) -> bool:
    return bool(segment.flags & RST)


def syn_again(sf: Subflow) -> Callable[[Segment], bool]:
    """Whether a segment is the IUT's own SYN (or SYN/ACK) of `sf` sent again: a
    retransmission that can cross the tester's answer, which TCP allows."""
    irs = sf.irs
    return lambda segment: segment.flags & (SYN | RST | FIN) == SYN and segment.seq == irs


def pure_ack(segment: Segment) -> bool:
    """A segment that only acknowledges: ACK, no data, no SYN/FIN/RST, no MPTCP option
    but a DSS with a data ACK alone. TCP sends these when it likes (window updates,
    duplicate ACKs, a data ACK that moved); skip them only where the RFC prescribes an
    action (close the subflow) rather than the answer."""
    if segment.flags & (SYN | FIN | RST) or not segment.flags & ACK or segment.payload:
        return False
    return all(isinstance(o, Dss) and o.dsn is None and not o.data_fin for o in segment.mptcp)


def expect_rst(
    sf: Subflow,
    within: float = 1.0,
    *,
    since: float | None = None,
    after_pure_acks: bool = False,
) -> Segment:
    """The IUT's next segment on `sf` is a RST (`expect_next`; its SYN or SYN/ACK
    retransmitted across the tester's segment excepted): for resets the RFC prescribes.
    `after_pure_acks`: pure ACKs may come first, where the RFC prescribes closing the
    subflow on what the tester sent rather than an answer to it (`pure_ack`)."""
    again = syn_again(sf)
    skip = (lambda s: again(s) or pure_ack(s)) if after_pure_acks else again
    return sf.expect_next(within=within, what="RST", where=is_rst, skip=skip, since=since)


def after_seq(seq: int) -> Callable[[Segment], bool]:
    """Whether a segment starts at or after subflow sequence `seq` (mod 2^32): new bytes,
    not a retransmission of earlier ones."""
    return lambda segment: (segment.seq - seq) & 0xFFFFFFFF < 0x80000000


def wait_until_connection_gone(ctx: Context, token: int, within: float = 2.0) -> None:
    """Poll the IUT's connections until none holds `token`, for at most `within` s: what
    a "later" join after the IUT closed means. Linux unhashes a token only once it has
    finished destroying the connection, which a guest under TCG takes long enough for
    a join 1 ms after the RST to meet. An IUT that cannot list its connections (the
    stack drops the token as it closes) is not waited for; one that still lists it
    after `within` s is joined all the same, and must refuse."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            live = [c for c in ctx.iut.connections() if getattr(c, "token", None) == token]
        except NotSupported:
            return
        if not live:
            return
        time.sleep(0.005)  # polling the IUT's connection table


def expect_only_rst(
    sf: Subflow, within: float = 1.0, quiet: float = 0.3, *, since: float | None = None
) -> Segment:
    """The IUT's next segment on `sf` is a RST (`expect_rst`), and nothing but RSTs (and
    its own SYN again) follow in the `quiet` s after it."""
    rst = expect_rst(sf, within, since=since)
    again = syn_again(sf)
    sf.expect_none(where=lambda s: not is_rst(s) and not again(s), within=quiet,
                   what="a segment other than a RST after the RST")  # fmt: skip
    return rst


def expect_data_ack(sf: Subflow, expected: int, already: Segment | None = None) -> None:
    """The IUT acknowledges up to `expected` at the data level (64- or 32-bit data ACK),
    on `already` or a later segment of `sf`."""

    def acks(segment: Segment) -> bool:
        dss = segment.option(Dss)
        return dss is not None and dss.data_ack in (expected, expected & 0xFFFFFFFF)

    if already is None or not acks(already):
        sf.expect(option=Dss, within=1, what=f"data ACK {expected}", where=acks)


def valid_checksum(conn: MptcpConnection, segment: Segment) -> None:
    """`segment` carries a DSS mapping with a checksum that verifies over its payload."""
    dss = segment.option(Dss)
    if dss is None or dss.dsn is None:
        raise deviates(f"data without a DSS mapping: {segment.describe()}")
    if dss.checksum is None:
        raise deviates(f"mapping without a checksum, checksums negotiated: {segment.describe()}")
    dsn = dss.dsn if dss.dsn_64 else dss.dsn | (conn.data_rcv_nxt & ~0xFFFFFFFF)
    length = dss.data_level_length or 0
    if not crypto.dss_checksum_ok(
        dsn, dss.subflow_seq or 0, length, dss.checksum, segment.payload[:length]
    ):
        raise deviates(f"DSS checksum {dss.checksum:#06x} does not verify: {segment.describe()}")
