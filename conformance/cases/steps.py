"""Scripted steps that many cases share (a case that tests one of them spells it out)."""

from __future__ import annotations

from conformance.cases import Context
from conformance.model import deviates
from conformance.tester import MptcpConnection, Pattern, Segment, Subflow
from stack.wire.mptcp import Dss, MpCapable
from stack.wire.tcp import MaxSegmentSize


def has_mapping(segment: Segment) -> bool:
    dss = segment.option(Dss)
    return dss is not None and dss.dsn is not None


def established(
    ctx: Context,
    *,
    mode: str = "echo",
    nbytes: int = 0,
    checksum: bool = False,
    ifname: str = "eth0",
) -> tuple[MptcpConnection, Subflow]:
    """The IUT listens; the tester completes MP_CAPABLE and one echoed exchange, so the
    connection is fully established at both ends."""
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


def initiated(
    ctx: Context,
    *,
    mode: str = "sink",
    nbytes: int = 0,
    source: str | None = None,
    synack_flags: int | None = None,
) -> tuple[MptcpConnection, Subflow, Segment]:
    """The IUT connects to the tester, which accepts MP_CAPABLE, reads Key-A from the
    third ACK and acknowledges it at the data level (fully established)."""
    t = ctx.tester
    ctx.iut.connect(t.address("eth0"), ctx.port, mode=mode, nbytes=nbytes, source=source)
    syn = t.expect("S", MpCapable, dport=ctx.port, within=2, what="SYN with MP_CAPABLE")
    kwargs = {} if synack_flags is None else {"flags": synack_flags}
    conn, sf = t.accept_mp_capable(syn, version=ctx.version, **kwargs)
    ack = sf.expect("A", MpCapable, within=1, what="third ACK with MP_CAPABLE")
    option = ack.option(MpCapable)
    assert option is not None
    if option.sender_key is None:
        raise deviates(f"third ACK MP_CAPABLE has no Key-A: {ack.describe()}")
    conn.learn_remote_key(option.sender_key)
    conn.start_data()
    sf.send("A", [conn.data_ack()])
    return conn, sf, ack


def syn_options(*options: object) -> list[object]:
    return [MaxSegmentSize(1460), *options]
