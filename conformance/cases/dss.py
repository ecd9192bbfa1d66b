"""DSS: mappings, data ACKs, DATA_FIN, checksums (RFC 8684 §3.3)."""

from __future__ import annotations

from conformance.cases import INITIATOR, LISTENER, MUST, SHOULD, Context, case
from conformance.cases.steps import established, exchange, initiated
from conformance.model import deviates
from stack.wire.mptcp import Dss, MpFail
from stack.wire.tcp import RST


@case(
    section="3.3.1",
    level=MUST,
    role=LISTENER,
    expected="Data from the IUT carries a DSS mapping whose data-level length covers the "
    "payload and whose subflow sequence number is relative to the subflow's ISN.",
)
def mapping_covers_payload(ctx: Context) -> None:
    conn, sf = established(ctx)
    before = sf.relative_rcv_nxt
    echo = exchange(ctx, conn, sf, b"m" * 300)
    dss = echo.need(Dss)
    if dss.dsn is None:
        raise deviates(f"data without a mapping: {echo.describe()}")
    if (dss.data_level_length or 0) < len(echo.payload):
        raise deviates(f"mapping shorter than the payload: {echo.describe()}")
    if dss.subflow_seq != before:
        raise deviates(f"subflow seq {dss.subflow_seq}, expected relative {before}")


@case(
    section="3.3.2",
    level=MUST,
    role=LISTENER,
    expected="The IUT acknowledges the tester's data at the data level: a DSS data ACK of "
    "the next DSN it expects.",
)
def data_ack_advances(ctx: Context) -> None:
    conn, sf = established(ctx)
    echo = exchange(ctx, conn, sf, b"a" * 500)
    expected = conn.data_snd_nxt
    if echo.need(Dss).data_ack in (expected, expected & 0xFFFFFFFF):
        return
    sf.expect(
        option=Dss,
        within=1,
        what=f"data ACK {expected}",
        where=lambda s: s.need(Dss).data_ack in (expected, expected & 0xFFFFFFFF),
    )


@case(
    section="3.3.3",
    level=MUST,
    role=LISTENER,
    expected="A DATA_FIN from the tester is acknowledged at the data level: the data ACK "
    "covers the DATA_FIN (one DSN past the data).",
)
def data_fin_acknowledged(ctx: Context) -> None:
    conn, sf = established(ctx)
    ctx.tester.send_data(conn, sf, b"", data_fin=True)
    expected = conn.data_snd_nxt
    sf.expect(
        option=Dss,
        within=1,
        what=f"data ACK {expected} covering the DATA_FIN",
        where=lambda s: s.need(Dss).data_ack in (expected, expected & 0xFFFFFFFF),
    )


@case(
    section="3.3.3",
    level=MUST,
    role=LISTENER,
    expected="After the tester's DATA_FIN the echo application closes, and the IUT sends "
    "its own DATA_FIN (DSS with F).",
)
def iut_sends_data_fin_on_close(ctx: Context) -> None:
    conn, sf = established(ctx)
    ctx.tester.send_data(conn, sf, b"", data_fin=True)
    sf.expect(option=Dss, within=1, what="DSS with DATA_FIN", where=lambda s: s.need(Dss).data_fin)


@case(
    section="3.3.3",
    level=MUST,
    role=INITIATOR,
    expected="An initiator that sent all its data and closed sends a DATA_FIN whose DSN "
    "follows its last byte.",
)
def initiator_data_fin_after_data(ctx: Context) -> None:
    conn, sf, _ = initiated(ctx, mode="source", nbytes=300)
    total = 0
    while True:
        segment = sf.expect(
            within=1,
            what="data or DATA_FIN",
            where=lambda s: bool(s.payload) or (s.option(Dss) is not None and s.need(Dss).data_fin),
        )
        total += len(segment.payload)
        sf.send("A", [conn.data_ack()])
        dss = segment.option(Dss)
        if dss is not None and dss.data_fin:
            break
    if total != 300:
        raise deviates(f"DATA_FIN after {total} bytes, the IUT had 300 to send")


@case(
    section="3.3.1",
    level=MUST,
    role=LISTENER,
    expected="Data sent twice with the same mapping is delivered once: the echo carries "
    "the bytes once.",
)
def duplicate_mapping_delivered_once(ctx: Context) -> None:
    conn, sf = established(ctx)
    payload = b"once only"
    dss = conn.mapping(sf, payload)
    seq = sf.snd_nxt
    sf.send("PA", [dss], payload)
    sf.send("PA", [dss], payload, seq=seq)
    echo = sf.expect(data=True, within=1, what="the echo")
    sf.send("A", [conn.data_ack()])
    sf.expect_none(data=True, within=0.2, what="a second copy of the echo")
    if echo.payload != payload:
        raise deviates(f"echo {echo.payload!r}, sent {payload!r} twice")


@case(
    section="3.3.6",
    level=MUST,
    role=LISTENER,
    expected="With checksums negotiated, data whose DSS checksum is wrong is not delivered: "
    "the IUT answers with MP_FAIL or resets the subflow.",
)
def bad_dss_checksum_fails(ctx: Context) -> None:
    conn, sf = established(ctx, checksum=True)
    payload = b"corrupted on the way"
    dss = conn.mapping(sf, payload)
    from dataclasses import replace

    sf.send("PA", [replace(dss, checksum=(dss.checksum or 0) ^ 0xFFFF)], payload)
    answer = sf.expect(
        within=1,
        what="MP_FAIL or RST",
        where=lambda s: s.option(MpFail) is not None or bool(s.flags & RST),
    )
    if answer.payload == payload:
        raise deviates(f"the corrupted data was delivered: {answer.describe()}")


@case(
    section="3.3",
    level=SHOULD,
    role=LISTENER,
    expected="After a subflow FIN with no DATA_FIN the connection stays open at the data "
    "level (the tester's data is not ended by a subflow FIN).",
)
def subflow_fin_is_not_data_fin(ctx: Context) -> None:
    conn, sf = established(ctx)
    sf.send("FA", [conn.data_ack()])
    sf.expect(
        within=1, what="the ACK of the FIN", where=lambda s: s.ack == sf.snd_nxt and not s.payload
    )
    sf.expect_none(option=Dss, within=0.3, what="a DATA_FIN", where=lambda s: s.need(Dss).data_fin)
