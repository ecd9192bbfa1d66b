"""Closing, resets and fallback: MP_FASTCLOSE, MP_TCPRST, infinite mapping (§3.5-3.7).

MP_FASTCLOSE (§3.5) and fallback (RFC 8684 §3.7, RFC 6824 §3.6) serve both versions;
MP_TCPRST (RFC 8684 §3.6) is v1 only.
"""

from __future__ import annotations

import hashlib

from conformance.cases import LISTENER, MUST, SHOULD, Context, case
from conformance.cases.steps import established, exchange, expect_rst, join_syn, joined
from conformance.iut.base import source_bytes
from conformance.model import deviates
from conformance.tester import Segment, TesterError
from stack.wire.mptcp import Dss, MpFastclose, MpTcpRst


@case(
    section="3.5",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    expected="MP_FASTCLOSE carrying the IUT's key closes the connection: the IUT answers with RST.",
)
def fastclose_with_right_key_resets(ctx: Context) -> None:
    """expect_next (`expect_rst`): the RST is the answer to MP_FASTCLOSE (§3.5)."""
    conn, sf = established(ctx)
    sf.send("A", [MpFastclose(receiver_key=conn.remote_key or 0)])
    expect_rst(sf)


@case(
    section="3.5",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    expected="MP_FASTCLOSE with a wrong key is ignored: no RST, the connection carries data.",
)
def fastclose_with_wrong_key_ignored(ctx: Context) -> None:
    """expect: the echo may follow a pure ACK of the data."""
    conn, sf = established(ctx)
    sf.send("A", [MpFastclose(receiver_key=(conn.remote_key or 0) ^ 1)])
    exchange(ctx, conn, sf, b"still open", on=sf)


@case(
    section="3.5",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    topology="dual_homed",
    expected="After MP_FASTCLOSE on one subflow, the IUT resets every subflow of the connection.",
)
def fastclose_resets_all_subflows(ctx: Context) -> None:
    """expect_next: RSTs on every subflow are the answer to MP_FASTCLOSE (§3.5)."""
    conn, first = established(ctx)
    second = joined(ctx, conn)
    first.send("A", [MpFastclose(receiver_key=conn.remote_key or 0)])
    expect_rst(second)
    expect_rst(first)


@case(
    section="3.6",
    level=MUST,
    role=LISTENER,
    topology="dual_homed",
    expected="A RST with MP_TCPRST on one subflow closes only that subflow: the connection "
    "carries data on the other.",
)
def tcprst_closes_only_its_subflow(ctx: Context) -> None:
    """expect_next for the fourth ACK (`joined`); expect for the echo, which pure ACKs may
    precede."""
    conn, first = established(ctx)
    second = joined(ctx, conn)
    second.send("R", [MpTcpRst(reason=5)], seq=second.snd_nxt)
    exchange(ctx, conn, first, b"the connection lives", on=first)


@case(
    section="3.6",
    level=SHOULD,
    role=LISTENER,
    expected="When the IUT refuses a join (unknown token), its RST carries MP_TCPRST with "
    "reason 1 (MPTCP-specific error).",
)
def refused_join_rst_reason(ctx: Context) -> None:
    """expect_next (`expect_rst`): the RST is the answer to a join SYN with an unknown token."""
    conn, _ = established(ctx)
    sf, _ = join_syn(ctx, conn.remote_token ^ 0xFFFF)
    rst = expect_rst(sf)
    option = rst.option(MpTcpRst)
    if option is None or option.reason != 1:
        raise deviates(f"RST without MP_TCPRST reason 1: {rst.describe()}")


@case(
    section={1: "3.7", 0: "3.6"},
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    expected="When the first data after MP_CAPABLE carries no DSS (options stripped), the "
    "IUT falls back to TCP: its answer (the ACK of the data, or the echo) carries no MPTCP "
    "option (a DATA_ACK would tell the sender that MPTCP goes on), and the data is "
    "delivered and echoed without MPTCP options.",
)
def fallback_when_first_data_has_no_dss(ctx: Context) -> None:
    """expect_next for the answer to the unmapped data, which falling back makes plain TCP;
    expect for the echo, which that ACK may precede."""
    ctx.iut.listen(ctx.port)
    _, sf = ctx.tester.connect(ctx.port, version=ctx.version)
    sf.send("PA", payload=b"stripped")
    answer = sf.expect_next(within=1, what="the ACK of the data or the echo")
    if answer.mptcp:
        raise deviates(f"the answer to data without DSS still carries MPTCP options (no "
                       f"fallback): {answer.describe()}")  # fmt: skip
    echo = answer if answer.payload else sf.expect(data=True, within=1, what="the echo")
    if echo.option(Dss) is not None:
        raise deviates(f"echo still carries DSS after the fallback: {echo.describe()}")


@case(
    section={1: "3.7", 0: "3.6"},
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    expected="An infinite mapping (data-level length 0) from the tester makes the IUT fall "
    "back: later data is delivered without a DSS mapping.",
)
def infinite_mapping_falls_back(ctx: Context) -> None:
    """expect: the echo may follow a pure ACK of the data."""
    conn, sf = established(ctx)
    payload = b"infinite mapping"
    dss = Dss(
        data_ack=conn.data_rcv_nxt,
        data_ack_64=True,
        dsn=conn.data_snd_nxt,
        dsn_64=True,
        subflow_seq=0,
        data_level_length=0,
        checksum=0 if conn.checksum else None,  # an infinite mapping's checksum is zero
    )
    sf.send("PA", [dss], payload)
    echo = sf.expect(data=True, within=1, what="the echo")
    if echo.option(Dss) is not None and echo.need(Dss).dsn is not None:
        raise deviates(f"echo still carries a mapping after the fallback: {echo.describe()}")


@case(
    section="3.6",
    level=SHOULD,
    role=LISTENER,
    expected="A RST with MP_TCPRST of an unknown reason code (99) on the only subflow is "
    "handled as a RST: the IUT does not answer it.",
)
def tcprst_unknown_reason_accepted(ctx: Context) -> None:
    """expect_none: no answer to a RST is the prescribed behaviour."""
    _, sf = established(ctx)
    ctx.tester.flush()
    sf.send("R", [MpTcpRst(reason=99)], seq=sf.snd_nxt)
    sf.expect_none(within=0.3, what="an answer to a RST")


@case(
    section={1: "3.7", 0: "3.6"},
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    topology="strip_mptcp_after_handshake",
    expected="Through a middlebox that strips MPTCP options after the handshake, a "
    "download falls back without loss or corruption: the tester, reading the subflow "
    "as plain TCP once data came without DSS, gets exactly the bytes the application "
    "sent (same length, same SHA-256), then the FIN.",
)
def fallback_after_handshake_download_intact(ctx: Context) -> None:
    """Reads the stream as plain TCP (`read_stream`); no answer to wait for."""
    nbytes = 64_000
    sent = source_bytes(nbytes)
    ctx.iut.listen(ctx.port, mode="source", nbytes=nbytes)
    _, sf = ctx.tester.connect(ctx.port, version=ctx.version)
    got, fin = sf.read_stream(enough=lambda s: len(s) > nbytes, within=2)
    data = [s for s in ctx.tester.received(sf.owns) if s.payload]
    if data and data[0].mptcp:
        raise TesterError(f"the middlebox left MPTCP options on data: {data[0].describe()}")
    if got != sent:
        raise deviates(
            f"data corrupted across the fallback: {len(got)} bytes delivered for {nbytes} "
            f"sent, SHA-256 {_sha256(got)[:16]}… instead of {_sha256(sent)[:16]}…; "
            + _what_differs(got, sent)
        )
    if not fin:
        raise deviates(f"all {nbytes} bytes arrived intact but no FIN within 2 s")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _what_differs(got: bytes, sent: bytes) -> str:
    """Where `got` leaves `sent`, and whether what follows repeats earlier bytes (data
    sent again as new subflow bytes: a reinjection the fallen-back receiver delivers)."""
    at = next((i for i, (x, y) in enumerate(zip(got, sent, strict=False)) if x != y),
              min(len(got), len(sent)))  # fmt: skip
    if at == len(got):
        return f"the stream stops after {at} bytes"
    tail = got[at : at + 64]
    copy = sent.find(tail)
    if 0 <= copy < at:
        return (
            f"from byte {at} it repeats bytes from {copy} on: the IUT kept MPTCP after ACKs "
            "without a DATA_ACK and reinjected data as new subflow bytes on a path where "
            "the receiver had fallen back (MUST fall back on such an ACK, §3.7)"
        )
    return f"the streams differ from byte {at} on"


def _is_data_fin(segment: Segment) -> bool:
    dss = segment.option(Dss)
    return dss is not None and dss.data_fin


@case(
    section="3.3.3",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    expected="A DATA_FIN that the tester never acknowledges at the data level is sent "
    "again, on a timer, with the same DSN.",
)
def data_fin_retransmitted_until_acked(ctx: Context) -> None:
    """The tester's DATA_FIN makes the echo application close; the tester then stays
    silent, so the IUT's DATA_FIN stays unacknowledged (its DATA_ACK is never sent).
    `expect`, not strict: the ACK of the tester's DATA_FIN may come first, alone or
    carrying the IUT's DATA_FIN; a copy within 50 ms is the same flight, not a resend."""
    conn, sf = established(ctx)
    ctx.tester.send_data(conn, sf, b"", data_fin=True)
    first = sf.expect(option=Dss, within=1, what="DSS with DATA_FIN", where=_is_data_fin)
    again = sf.expect(
        option=Dss, within=3, what="the DATA_FIN sent again (never acknowledged)",
        where=lambda s: _is_data_fin(s) and s.time - first.time > 0.05,
    )  # fmt: skip
    if again.need(Dss).dsn != first.need(Dss).dsn:
        raise deviates(f"the DATA_FIN moved: {first.describe()}, then {again.describe()}")
