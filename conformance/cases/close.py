"""Closing, resets and fallback: MP_FASTCLOSE, MP_TCPRST, infinite mapping (§3.5-3.7).

MP_FASTCLOSE (§3.5) and fallback (RFC 8684 §3.7, RFC 6824 §3.6) serve both versions;
MP_TCPRST (RFC 8684 §3.6) is v1 only.
"""

from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import replace

from conformance.cases import INITIATOR, LISTENER, MUST, SHOULD, Context, case
from conformance.cases.steps import (
    after_seq,
    established,
    exchange,
    expect_data_ack,
    expect_rst,
    initiated,
    is_rst,
    join_syn,
    joined,
    wait_until_connection_gone,
)
from conformance.iut.base import source_bytes
from conformance.model import deviates
from conformance.tester import MptcpConnection, Pattern, Segment, Subflow, TesterError
from stack.wire.mptcp import (
    MPC_FLAG_A,
    MPC_FLAG_H,
    Dss,
    MpCapable,
    MpFail,
    MpFastclose,
    MpTcpRst,
)
from stack.wire.tcp import FIN


@case(
    ipv6=True,
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
    ipv6=True,
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
    section={1: "3.7", 0: "3.6"},
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    expected="An infinite mapping in the form a sender puts on its first new packet (RFC "
    "8684 §3.7: data-level length 0, the DSN and subflow sequence number of a point on "
    "the stream's line, here the segment's own) makes the IUT fall back: the segment's "
    "bytes and later plain data are echoed once each, in order, without a DSS mapping.",
)
def infinite_mapping_on_the_line_falls_back(ctx: Context) -> None:
    """expect: each echo may follow a pure ACK of the data. `infinite_mapping_falls_back`
    sends subflow sequence number 0, which an IUT could take for unmapped data; this one
    is the mapping a sender that falls back really sends, as Linux's after MP_FAIL."""
    conn, sf = established(ctx)
    first, then = b"under an infinite mapping", b"then plain TCP"
    dss = Dss(
        data_ack=conn.data_rcv_nxt,
        data_ack_64=True,
        dsn=conn.data_snd_nxt,
        dsn_64=True,
        subflow_seq=(sf.snd_nxt - sf.iss) & 0xFFFFFFFF,
        data_level_length=0,
        checksum=0 if conn.checksum else None,  # an infinite mapping's checksum is zero
    )
    sf.send("PA", [dss], first)
    _expect_plain_echo(sf, first)
    sf.send("PA", payload=then)
    _expect_plain_echo(sf, then)


@case(
    section="3.1",
    level=SHOULD,
    versions=(1,),
    role=LISTENER,
    expected="The v1 client's first data whose MP_CAPABLE (used in place of the DSS) has "
    "data-level length 0, an infinite mapping, makes the IUT fall back: that data and "
    "later plain data are echoed once each, in order, without a DSS mapping.",
)
def first_data_infinite_mapping_falls_back(ctx: Context) -> None:
    """expect: each echo may follow a pure ACK of the data."""
    ctx.iut.listen(ctx.port)
    conn, sf = ctx.tester.connect(ctx.port, version=ctx.version)
    first, then = b"first data, infinite mapping", b"then plain TCP"
    option = MpCapable(
        version=1,
        flags=MPC_FLAG_H | (MPC_FLAG_A if conn.checksum else 0),
        sender_key=conn.local_key,
        receiver_key=conn.remote_key,
        data_level_length=0,
        checksum=0 if conn.checksum else None,  # an infinite mapping's checksum is zero
    )
    sf.send("PA", [option], first)
    _expect_plain_echo(sf, first)
    sf.send("PA", payload=then)
    _expect_plain_echo(sf, then)


def _expect_plain_echo(sf: Subflow, payload: bytes, within: float = 1.0) -> None:
    """The IUT's next subflow bytes are `payload`, exactly, with no DSS mapping on them
    (it fell back); each advance is acknowledged as plain TCP."""
    start = sf.rcv_nxt
    stream = bytearray()
    deadline = time.monotonic() + within
    while len(stream) < len(payload):
        left = deadline - time.monotonic()
        echo = sf.expect(data=True, within=max(left, 0.0), what=f"the echo of {payload!r}")
        dss = echo.option(Dss)
        if dss is not None and dss.dsn is not None:
            raise deviates(f"echo still carries a mapping after the fallback: {echo.describe()}")
        offset = (echo.seq - start) & 0xFFFFFFFF
        if offset <= len(stream) < offset + len(echo.payload):
            stream += echo.payload[len(stream) - offset :]
        sf.send("A")
    if bytes(stream) != payload:
        raise deviates(f"after the fallback the IUT echoed {bytes(stream)!r}, sent {payload!r}")


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


# --------------------------------------------------------------------------------------
# Issue 13, part 2: DATA_FIN and close, MP_FASTCLOSE, MP_TCPRST, MP_FAIL's sender side,
# middleboxes. RFC 8684 §3.3.3 (RFC 6824 §3.3.3 says the same): "A DATA_FIN has the
# semantics and behavior as a regular TCP FIN, but at the connection level" (so it is
# sent again until acknowledged); "a host MUST NOT close all functioning subflows unless
# it is safe to do so, i.e., until all outstanding data has been DATA_ACKed, or until the
# segment with the DATA_FIN flag set is the only outstanding segment"; "Once a DATA_FIN
# has been acknowledged, all remaining subflows MUST be closed with standard FIN
# exchanges."

MASK64 = 2**64 - 1


def _fin_dsn(conn: MptcpConnection, segment: Segment) -> int | None:
    """The DSN of the DATA_FIN that `segment` carries (the last octet its mapping covers),
    or None."""
    dss = segment.option(Dss)
    if dss is None or not dss.data_fin or dss.dsn is None:
        return None
    dsn = dss.dsn if dss.dsn_64 else dss.dsn | (conn.data_rcv_nxt & ~0xFFFFFFFF)
    return (dsn + max(dss.data_level_length or 1, 1) - 1) & MASK64


def _data_ack(sf: Subflow, upto: int) -> None:
    """A subflow ACK of everything received, with the data ACK `upto`."""
    sf.send("A", [Dss(data_ack=upto, data_ack_64=True)])


def _read_to_data_fin(
    conn: MptcpConnection, sf: Subflow, *, ack_data: bool = True, within: float = 2.0
) -> tuple[Segment, int]:
    """Read the IUT's data up to its DATA_FIN (`expect`: pure ACKs may come between),
    acknowledging every segment at the subflow level and, with `ack_data`, its data at the
    data level (up to the end of the mappings seen so far), never the DATA_FIN itself
    (without `ack_data` the data ACK stays where it was). Returns the DATA_FIN's segment
    and DSN."""
    upto = start = conn.data_rcv_nxt
    while True:
        segment = sf.expect(
            within=within,
            what="the IUT's data or DATA_FIN",
            where=lambda s: bool(s.payload) or _fin_dsn(conn, s) is not None,
        )
        fin = _fin_dsn(conn, segment)
        dss = segment.option(Dss)
        if dss is not None and dss.dsn is not None and segment.payload:
            dsn = dss.dsn if dss.dsn_64 else dss.dsn | (upto & ~0xFFFFFFFF)
            end = (dsn + (dss.data_level_length or 0) - (1 if fin is not None else 0)) & MASK64
            if (end - upto) & MASK64 < 2**63:
                upto = end
        _data_ack(sf, (fin if fin is not None else upto) if ack_data else start)
        if fin is not None:
            return segment, fin


QUIET = 0.15  # s after the tester's latest segment: what comes later answers none of them


def _data_fin_again(conn: MptcpConnection, sf: Subflow, fin: int) -> None:
    """The DATA_FIN at `fin`, left unacknowledged at the data level, is sent again on its
    timer (`next_matching`: a retransmission answers no segment). A copy that comes
    within QUIET s of the tester's latest segment may be an answer to it (Linux puts
    its pending DATA_FIN on the ACK it owes) and does not count: one must come when the
    tester has been silent."""
    tester = sf.tester
    pattern = Pattern(option=Dss, where=lambda s: _fin_dsn(conn, s) == fin,
                      what=f"the DATA_FIN at DSN {fin:#x} sent again")  # fmt: skip
    deadline = time.monotonic() + 3
    while True:
        again = tester.next_matching(pattern, deadline - time.monotonic(), owner=sf.owns)
        if again is None:
            raise deviates(f"no retransmission of the DATA_FIN at DSN {fin:#x} on a timer "
                           f"within 3 s (the tester silent for {QUIET} s or more)")  # fmt: skip
        if again.time - tester.last_sent >= QUIET:
            return


_closing = functools.partial(case, level=MUST, versions=(0, 1), role=LISTENER)


@_closing(
    section="3.3.3",
    expected="The IUT that closes first (from ESTABLISHED: a source that sent all its "
    "data) sends its DATA_FIN again when the tester acknowledges the data but not the "
    "DATA_FIN: a DATA_FIN behaves as a TCP FIN at the connection level.",
)
def data_fin_retransmitted_after_active_close(ctx: Context) -> None:
    """expect: the DATA_FIN follows the application's close, and its retransmission a
    timer, not a segment of the tester's."""
    conn, sf = established(ctx, mode="source", nbytes=1000)
    _, fin = _read_to_data_fin(conn, sf)
    _data_fin_again(conn, sf, fin)


@_closing(
    section="3.3.3",
    expected="After the tester's DATA_FIN and then its subflow FIN (the IUT's subflow in "
    "CLOSE_WAIT), the IUT's DATA_FIN, left unacknowledged at the data level, is sent "
    "again on that half-closed subflow: a subflow FIN does not acknowledge a DATA_FIN.",
)
def data_fin_retransmitted_on_half_closed_subflow(ctx: Context) -> None:
    """expect: the IUT's DATA_FIN follows its application's close (ACKs of the tester's
    DATA_FIN and FIN may come first), and its retransmission a timer."""
    conn, sf = established(ctx)
    acked = conn.data_rcv_nxt
    ctx.tester.send_data(conn, sf, b"", data_fin=True)
    sf.send("FA", [Dss(data_ack=acked, data_ack_64=True)])
    _, fin = _read_to_data_fin(conn, sf)
    _data_fin_again(conn, sf, fin)


@_closing(
    section="3.3.3",
    expected="A DATA_FIN riding on data (one mapping covering the payload and the "
    "DATA_FIN, data-level length = payload + 1) delivers the payload and is acknowledged: "
    "the echo carries the payload and the IUT's data ACK covers the DATA_FIN.",
)
def data_fin_on_data_delivered_and_acked(ctx: Context) -> None:
    """expect: the echo and the data ACK may follow a pure ACK of the data."""
    conn, sf = established(ctx)
    payload = b"the last words, with the DATA_FIN"
    ctx.tester.send_data(conn, sf, payload, data_fin=True)
    echo = sf.expect(data=True, within=1, what="the echo of the data before the DATA_FIN")
    if echo.payload != payload:
        raise deviates(f"echo {echo.payload!r}, sent {payload!r} with the DATA_FIN")
    expect_data_ack(sf, conn.data_snd_nxt, echo)  # one past the DATA_FIN


def _tester_data_fin(conn: MptcpConnection, sf: Subflow, data_ack: int) -> None:
    """The tester's own DATA_FIN (a mapping of length 1 at its next DSN), carrying the data
    ACK `data_ack` rather than what the tester has received."""
    dss = replace(conn.mapping(sf, b"", data_fin=True), data_ack=data_ack)
    sf.send("A", [dss])


@_closing(
    section="3.3.3",
    expected="While its data is not DATA_ACKed the IUT sends no subflow FIN, even once "
    "both ends sent their DATA_FIN (it MUST NOT close its only subflow before then); once "
    "the tester acknowledges the data and the DATA_FIN, the connection is closed at the "
    "data level and the IUT closes the subflow with a FIN.",
)
def subflow_fin_waits_for_data_ack(ctx: Context) -> None:
    """expect_none for the early FIN (0.5 s); expect for the FIN after the data ACK: a
    close follows the acknowledgement, other segments (a data ACK) may come first."""
    conn, sf = established(ctx, mode="source", nbytes=1000)
    start = conn.data_rcv_nxt
    _, fin = _read_to_data_fin(conn, sf, ack_data=False)
    _tester_data_fin(conn, sf, start)  # the application closes; its data is still unacked
    sf.expect_none(where=lambda s: bool(s.flags & FIN), within=0.5,
                   what="a subflow FIN before the data was DATA_ACKed")  # fmt: skip
    early = [s for s in ctx.tester.received(sf.owns) if s.flags & FIN]  # on data, DATA_FIN
    if early:
        raise deviates(f"a subflow FIN before the data was DATA_ACKed: {early[0].describe()}")
    _data_ack(sf, (fin + 1) & MASK64)
    sf.expect(within=1.5, what="the subflow FIN once both DATA_FINs were acknowledged",
              where=lambda s: bool(s.flags & FIN))  # fmt: skip


@_closing(
    section="3.3.3",
    expected="A DATA_FIN acknowledged out of order (the data ACK covering it arrives "
    "before an older data ACK, both DATA_FINs sent) stays acknowledged: the IUT never "
    "sends its DATA_FIN again and, the connection closed at the data level, closes the "
    "subflow with a FIN.",
)
def data_fin_acked_out_of_order(ctx: Context) -> None:
    """expect for the FIN (a close follows the acknowledgement); expect_none for a
    DATA_FIN sent again after the stale data ACK."""
    conn, sf = established(ctx, mode="source", nbytes=300)
    start = conn.data_rcv_nxt
    _, fin = _read_to_data_fin(conn, sf, ack_data=False)
    _tester_data_fin(conn, sf, (fin + 1) & MASK64)
    _data_ack(sf, start)  # the older data ACK, overtaken on the way
    since = time.time()
    sf.expect(within=1.5, what="the subflow FIN once both DATA_FINs were acknowledged",
              where=lambda s: bool(s.flags & FIN))  # fmt: skip
    sf.expect_none(option=Dss, within=0.5, what="the DATA_FIN sent again",
                   where=lambda s: s.time > since and _fin_dsn(conn, s) == fin)  # fmt: skip


@_closing(
    section="3.5",
    expected="MP_FASTCLOSE with the IUT's key on an ACK whose sequence number is outside "
    "the receive window is not accepted (TCP drops such a segment): no RST, and the "
    "connection goes on carrying data.",
)
def fastclose_outside_window_ignored(ctx: Context) -> None:
    """expect_none for a RST (0.3 s); expect for the echo, which pure ACKs may precede."""
    conn, sf = established(ctx)
    outside = (sf.snd_nxt + 2**30) & 0xFFFFFFFF
    sf.send("A", [MpFastclose(receiver_key=conn.remote_key or 0)], seq=outside)
    sf.expect_none(where=is_rst, within=0.3, what="a RST after an out-of-window MP_FASTCLOSE")
    exchange(ctx, conn, sf, b"still open", on=sf)


@case(
    section="3.5",
    level=MUST,
    role=LISTENER,
    topology="dual_homed",
    expected="A RST carrying MP_FASTCLOSE with the IUT's key on one subflow (RFC 8684's "
    "RST form) closes the connection: the IUT resets the other subflow, and sends nothing "
    "on the one the RST came on.",
)
def fastclose_rst_form_resets_other_subflows(ctx: Context) -> None:
    """expect_next (`expect_rst`): the RST on the other subflow is the answer to the
    MP_FASTCLOSE; expect_none: a RST is never answered."""
    conn, first = established(ctx)
    second = joined(ctx, conn)
    second.send("R", [MpFastclose(receiver_key=conn.remote_key or 0)], seq=second.snd_nxt)
    expect_rst(first)
    second.expect_none(within=0.3, what="an answer to the RST with MP_FASTCLOSE")


@case(
    section="3.6",
    level=SHOULD,
    role=LISTENER,
    topology="dual_homed",
    expected="MP_TCPRST on a segment without the RST flag is ignored: the subflow it came "
    "on is not reset and still carries data.",
)
def tcprst_without_rst_flag_ignored(ctx: Context) -> None:
    """expect_none for a RST (0.3 s); expect for the echo, which pure ACKs may precede."""
    conn, _ = established(ctx)
    second = joined(ctx, conn)
    second.send("A", [MpTcpRst(reason=1), conn.data_ack()])
    second.expect_none(where=is_rst, within=0.3, what="a RST after MP_TCPRST without RST")
    exchange(ctx, conn, second, b"MP_TCPRST alone closes nothing")


@case(
    section={1: "3.7", 0: "3.6"},
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    topology="dual_homed",
    expected="Data without a DSS mapping on a joined subflow (options lost there) cannot "
    "fall back with another subflow in use: the IUT resets that subflow, in v1 with "
    "MP_TCPRST reason 6 (middlebox interference), and the connection goes on on the first.",
)
def data_without_dss_on_join_reset_reason_6(ctx: Context) -> None:
    """expect_next (`expect_rst`): the RST is the answer to the unmapped data; expect for
    the echo on the first subflow, which pure ACKs may precede."""
    conn, first = established(ctx)
    second = joined(ctx, conn)
    second.send("PA", payload=b"no mapping on a join")
    rst = expect_rst(second)
    option = rst.option(MpTcpRst)
    if ctx.version == 1 and (option is None or option.reason != 6):
        raise deviates(f"RST without MP_TCPRST reason 6 (middlebox interference): "
                       f"{rst.describe()}")  # fmt: skip
    exchange(ctx, conn, first, b"the first subflow lives", on=first)


@case(
    section={1: "3.7", 0: "3.6"},
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    topology="strip_mptcp_after_handshake",
    expected="Through a middlebox that strips MPTCP options after the handshake on one "
    "of two paths, the joined subflow there gets data without DSS: the IUT resets that "
    "subflow (its MP_TCPRST cannot cross the box) and the connection goes on over the "
    "other path.",
)
def options_stripped_on_join_path_reset(ctx: Context) -> None:
    """expect_next (`expect_rst`): the RST answers the stripped data, after pure ACKs only
    (the RFC prescribes closing the subflow, and TCP may acknowledge the bytes first: a
    guest under TCG did); expect for the echo on the other path, which pure ACKs may
    precede."""
    conn, direct = established(ctx, ifname="eth1")
    stripped = joined(ctx, conn, ifname="eth0")
    dsn = conn.data_snd_nxt
    ctx.tester.send_data(conn, stripped, b"stripped on the way")
    expect_rst(stripped, after_pure_acks=True)
    conn.data_snd_nxt = dsn  # never delivered: sent again on the direct path
    exchange(ctx, conn, direct, b"stripped on the way", on=direct)


@case(
    section={1: "3.7", 0: "3.6"},
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    expected="After MP_FAIL at the DSN of its data (checksums on, one subflow), the IUT "
    "answers with MP_FAIL, its first data after it carries an infinite mapping (data-level "
    "length 0), and its later data carries no mapping: it fell back to TCP.",
)
def mp_fail_received_sender_falls_back(ctx: Context) -> None:
    """expect_next: MP_FAIL is the prescribed answer to MP_FAIL ("the receiver of an
    MP_FAIL MUST also respond with an MP_FAIL"); expect for the echoes, which pure ACKs
    may precede."""
    conn, sf = established(ctx, checksum=True)
    _mp_fail_answered_then_fallback(ctx, conn, sf)


@case(
    section={1: "3.7", 0: "3.6"},
    level=MUST,
    versions=(0, 1),
    role=INITIATOR,
    expected="An initiating IUT (checksums asked for by the tester's SYN/ACK, one subflow) "
    "that gets MP_FAIL at the DSN of its data answers with MP_FAIL, its first data after "
    "it carries an infinite mapping, and its later data no mapping: it fell back to TCP.",
)
def initiator_mp_fail_received_sender_falls_back(ctx: Context) -> None:
    """expect_next: MP_FAIL is the prescribed answer to MP_FAIL; expect for the echoes,
    which pure ACKs may precede (as `mp_fail_received_sender_falls_back`, the IUT
    connecting and echoing)."""
    conn, sf, _ = initiated(ctx, mode="echo", synack_flags=MPC_FLAG_H | MPC_FLAG_A)
    _mp_fail_answered_then_fallback(ctx, conn, sf)


def _mp_fail_answered_then_fallback(ctx: Context, conn: MptcpConnection, sf: Subflow) -> None:
    """The tester's data is echoed; the tester fails the echo's mapping (MP_FAIL at its
    DSN): the IUT's next segment carries MP_FAIL (`expect_next`), its first data after
    the tester's infinite mapping carries one too, on the line of the failed mapping
    (RFC 8684 §3.7: it "acts retroactively", so the failed bytes stay in the stream and
    are not sent again), and later data no mapping. Each echo is the first data segment
    past the previous one: a retransmission of an earlier echo (a guest under TCG sends
    some) keeps the mapping it had."""
    ctx.tester.send_data(conn, sf, b"said to be corrupted")
    failed = sf.expect(data=True, within=1, what="the echo the tester will fail")
    dss = failed.need(Dss)
    if dss.dsn is None:
        raise deviates(f"echo without a mapping: {failed.describe()}")
    dsn = dss.dsn if dss.dsn_64 else dss.dsn | (conn.data_rcv_nxt & ~0xFFFFFFFF)
    sf.send("A", [MpFail(dsn)])
    sf.expect_next(option=MpFail, within=1, what="MP_FAIL in answer to MP_FAIL")
    infinite = Dss(data_ack=dsn, data_ack_64=True, dsn=conn.data_snd_nxt, dsn_64=True,
                   subflow_seq=(sf.snd_nxt - sf.iss) & 0xFFFFFFFF, data_level_length=0,
                   checksum=0 if conn.checksum else None)  # fmt: skip
    sf.send("PA", [infinite], b"under the infinite mapping")
    echo = sf.expect(data=True, within=1, what="the IUT's first data after MP_FAIL",
                     where=after_seq(failed.seq + len(failed.payload)))  # fmt: skip
    mapping = echo.option(Dss)
    if mapping is None or mapping.dsn is None or mapping.data_level_length != 0:
        raise deviates(f"first data after MP_FAIL without an infinite mapping: {echo.describe()}")
    # "a Data Sequence Mapping that acts retroactively, referring to the start of the
    # subflow sequence number of the most recent segment that was known to be delivered
    # intact (i.e., was successfully DATA_ACKed)": any point of the failed mapping's
    # line (its DSN less its subflow sequence number) will do (Linux: its own segment),
    # one off it sends bytes twice or skips some
    line = (dss.dsn - (dss.subflow_seq or 0)) & 0xFFFFFFFF
    if (mapping.dsn - (mapping.subflow_seq or 0)) & 0xFFFFFFFF != line:
        raise deviates(
            f"infinite mapping off the failed mapping's line (DSN {dss.dsn:#x} at subflow "
            f"sequence {dss.subflow_seq}): {echo.describe()}"
        )
    sf.send("A")
    sf.send("PA", payload=b"plain TCP now")
    later = sf.expect(data=True, within=1, what="the echo of plain TCP data",
                      where=after_seq(echo.seq + len(echo.payload)))  # fmt: skip
    if later.option(Dss) is not None and later.need(Dss).dsn is not None:
        raise deviates(f"data still mapped after the fallback: {later.describe()}")


def _abortive_close(ctx: Context, mode: str) -> None:
    """The IUT's application (`mode`) closes abortively once the tester's first data has
    arrived: MP_FASTCLOSE with the tester's key (on an ACK or a RST), a RST on the
    subflow, then, once the IUT no longer lists the connection, a join with its token
    is refused with RST."""
    ctx.iut.listen(ctx.port, mode=mode)
    conn, sf = ctx.tester.connect(ctx.port, version=ctx.version)
    payload = b"sent before the abort"
    if ctx.version == 1:
        ctx.tester.first_data_v1(conn, sf, payload)
    else:
        ctx.tester.send_data(conn, sf, payload)
    fastclose = sf.expect(option=MpFastclose, within=2, what="MP_FASTCLOSE")
    key = fastclose.need(MpFastclose).receiver_key
    if key != conn.local_key:
        raise deviates(f"MP_FASTCLOSE carries {key:#x}, not the tester's key "
                       f"{conn.local_key:#x}: {fastclose.describe()}")  # fmt: skip
    if not is_rst(fastclose):
        sf.expect(within=1, what="the RST after the MP_FASTCLOSE ACK", where=is_rst)
    wait_until_connection_gone(ctx, conn.remote_token)
    join, _ = join_syn(ctx, conn.remote_token, ifname="eth1")
    expect_rst(join)


_aborting = functools.partial(case, section="3.5", versions=(0, 1), role=LISTENER,
                              topology="dual_homed")  # fmt: skip


@_aborting(
    level=SHOULD,
    expected="An application that closes with received data unread makes the IUT abort "
    "the connection, the MPTCP form of TCP's RST for lost data (RFC 1122 4.2.2.13): "
    "MP_FASTCLOSE carrying the tester's key (on an ACK or a RST), a RST on the subflow, "
    "and a later join with the connection's token is refused with RST.",
)
def abortive_close_sends_fastclose(ctx: Context) -> None:
    """expect for MP_FASTCLOSE and the RST: they follow the application's close, and an
    ACK of the data may come first; expect_next (`expect_rst`) for the refused join."""
    _abortive_close(ctx, "close-unread")


@_aborting(
    level=MUST,
    expected="An application that aborts (close() with SO_LINGER 0; the stack's "
    "abort()) after reading makes the IUT send MP_FASTCLOSE carrying the tester's key "
    "(on an ACK or a RST) and a RST on the subflow; a later join with the connection's "
    "token is refused with RST.",
)
def linger_zero_close_sends_fastclose(ctx: Context) -> None:
    """expect for MP_FASTCLOSE and the RST: they follow the application's abort, and an
    ACK of the data may come first; expect_next (`expect_rst`) for the refused join."""
    _abortive_close(ctx, "abort")
