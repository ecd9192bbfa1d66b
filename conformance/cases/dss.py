"""DSS: mappings, data ACKs, DATA_FIN, checksums (RFC 8684 §3.3, RFC 6824 §3.3).

The DSS option is the same in both versions. What differs is the checksum's default:
a v0 host asks for checksums (RFC 6824 §3.1: A SHOULD be set), so v0 cases run with
checksums unless they say otherwise; and MP_FAIL belongs to §3.6 in RFC 6824 (§3.7 in
RFC 8684).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from conformance.cases import INITIATOR, LISTENER, MUST, SHOULD, Context, case
from conformance.cases.steps import (
    established,
    exchange,
    expect_data_ack,
    initiated,
    is_rst,
    iut_syn,
    joined,
    syn_again,
    valid_checksum,
)
from conformance.iut.base import source_bytes
from conformance.model import deviates
from conformance.tester import (
    MptcpConnection,
    Pattern,
    Segment,
    Subflow,
    TesterError,
    parse_frame,
)
from stack import crypto
from stack.wire.mptcp import MPC_FLAG_A, MPC_FLAG_H, Dss, MpCapable, MpFail
from stack.wire.tcp import ACK, RST, TcpOption


@case(
    section="3.3.1",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    expected="Data from the IUT carries a DSS mapping whose data-level length covers the "
    "payload and whose subflow sequence number is relative to the subflow's ISN.",
)
def mapping_covers_payload(ctx: Context) -> None:
    """expect: the echo (and its data ACK) may follow a pure ACK of the data."""
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
    level=SHOULD,
    versions=(0, 1),
    role=LISTENER,
    expected="The IUT sends no pure ACK identical to its previous one (the same ACK, window "
    "and options: the same data ACK) when the tester sent nothing in between: a data ACK "
    "goes only when it advances (or the window moves), and to a TCP sender such a "
    "segment is a duplicate ACK, the sign of a loss.",
)
def no_duplicate_pure_acks(ctx: Context) -> None:
    """Reads the whole exchange afterwards: three echoes of growing size (each `exchange`
    expects its echo, which pure ACKs may precede).
    The tester offers no window scaling, so the IUT's window field tops out at 65535
    however large its buffer: an IUT that compares its buffer, not the field, with what it
    advertised sends a "window update" identical to the last ACK after every read."""
    conn, sf = established(ctx)
    for payload in (b"one", b"two" * 300, b"three" * 250):
        exchange(ctx, conn, sf, payload)
    previous: tuple[Any, ...] | None = None
    for record in ctx.tester.records:
        segment = parse_frame(record.frame, record.ifname, record.time)
        if segment is None:
            continue
        if record.direction == "out":
            if segment.sport == sf.lport and segment.dport == sf.rport:
                previous = None  # the tester spoke: the IUT may answer it
            continue
        if not sf.owns(segment) or segment.payload or segment.flags != ACK:
            previous = None
            continue
        this = (segment.ack, segment.window, repr(segment.options))
        if this == previous:
            raise deviates(f"a pure ACK identical to the one before it, with nothing from "
                           f"the tester in between: {segment.describe()} window "
                           f"{segment.window}")  # fmt: skip
        previous = this


@case(
    section="3.3.2",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    expected="The IUT acknowledges the tester's data at the data level: a DSS data ACK of "
    "the next DSN it expects.",
)
def data_ack_advances(ctx: Context) -> None:
    """expect: the data ACK may ride on any segment after the data."""
    conn, sf = established(ctx)
    echo = exchange(ctx, conn, sf, b"a" * 500)
    expect_data_ack(sf, conn.data_snd_nxt, echo)


@case(
    section="3.3.3",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    expected="A DATA_FIN from the tester is acknowledged at the data level: the data ACK "
    "covers the DATA_FIN (one DSN past the data).",
)
def data_fin_acknowledged(ctx: Context) -> None:
    """expect: the data ACK of the DATA_FIN may ride on any later segment (a pure ACK or the IUT's
    own DATA_FIN)."""
    conn, sf = established(ctx)
    ctx.tester.send_data(conn, sf, b"", data_fin=True)
    expect_data_ack(sf, conn.data_snd_nxt)


@case(
    section="3.3.3",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    expected="After the tester's DATA_FIN the echo application closes, and the IUT sends "
    "its own DATA_FIN (DSS with F).",
)
def iut_sends_data_fin_on_close(ctx: Context) -> None:
    """expect: the DATA_FIN follows the application's close; the ACK of the tester's DATA_FIN may
    come first."""
    conn, sf = established(ctx)
    ctx.tester.send_data(conn, sf, b"", data_fin=True)
    sf.expect(option=Dss, within=1, what="DSS with DATA_FIN", where=lambda s: s.need(Dss).data_fin)


@case(
    section="3.3.3",
    level=MUST,
    versions=(0, 1),
    role=INITIATOR,
    expected="An initiator that sent all its data and closed sends a DATA_FIN whose DSN "
    "follows its last byte.",
)
def initiator_data_fin_after_data(ctx: Context) -> None:
    """expect_next for the third ACK (`initiated`); expect for the data and DATA_FIN, which pure
    ACKs may precede."""
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
    versions=(0, 1),
    role=LISTENER,
    expected="Data sent twice with the same mapping is delivered once: the echo carries "
    "the bytes once.",
)
def duplicate_mapping_delivered_once(ctx: Context) -> None:
    """expect: the echo may follow pure ACKs (of the data and its duplicate)."""
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
    versions=(0, 1),
    role=LISTENER,
    expected="With checksums negotiated, data whose DSS checksum is wrong is not delivered: "
    "the IUT answers with MP_FAIL or resets the subflow.",
)
def bad_dss_checksum_fails(ctx: Context) -> None:
    """expect_next (`_bad_checksum`): MP_FAIL or the RST is the answer to the failed checksum
    (§3.7)."""
    conn, sf = established(ctx, checksum=True)
    _bad_checksum(ctx, conn, sf, b"corrupted on the way")


@case(
    section="3.3",
    level=SHOULD,
    versions=(0, 1),
    role=LISTENER,
    expected="After a subflow FIN with no DATA_FIN the connection stays open at the data "
    "level (the tester's data is not ended by a subflow FIN).",
)
def subflow_fin_is_not_data_fin(ctx: Context) -> None:
    """expect: TCP may delay the ACK of the FIN; what matters is that no DATA_FIN follows
    (expect_none)."""
    conn, sf = established(ctx)
    sf.send("FA", [conn.data_ack()])
    sf.expect(
        within=1, what="the ACK of the FIN", where=lambda s: s.ack == sf.snd_nxt and not s.payload
    )
    sf.expect_none(option=Dss, within=0.3, what="a DATA_FIN", where=lambda s: s.need(Dss).data_fin)


@case(
    section="3.3.1",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    expected="Mappings with a 4-byte DSN (m=0: the low 32 bits of the DSN) and a 4-byte "
    "data ACK are accepted: the data of two such mappings comes back echoed, in order.",
)
def dsn_32_bit_mapping_accepted(ctx: Context) -> None:
    """expect: the echo (and its data ACK) may follow a pure ACK of the data."""
    conn, sf = established(ctx)
    payloads = [b"four-byte DSN, one", b"four-byte DSN, two"]
    for payload in payloads:
        dss = conn.mapping(sf, payload)
        sf.send("PA", [_short(dss)], payload)
    echoed = b""
    while len(echoed) < sum(map(len, payloads)):
        echo = sf.expect(data=True, within=1, what="the echo of the 4-byte-DSN data")
        echoed += echo.payload
        sf.send("A", [conn.data_ack()])
    if echoed != b"".join(payloads):
        raise deviates(f"echoed {echoed!r} for {b''.join(payloads)!r}")


def _short(dss: Dss) -> Dss:
    """The same DSS with a 4-byte DSN and a 4-byte data ACK (the low 32 bits)."""
    return replace(
        dss,
        dsn=None if dss.dsn is None else dss.dsn & 0xFFFFFFFF,
        dsn_64=False,
        data_ack=None if dss.data_ack is None else dss.data_ack & 0xFFFFFFFF,
        data_ack_64=False,
    )


@case(
    section="3.3.2",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    expected="4-byte data ACKs (a=0) acknowledge the IUT's data: a 200 KB download that "
    "the tester acknowledges with 4-byte data ACKs only arrives exactly once, nothing of "
    "it sent again at the data level (reinjected) within 2.5 s.",
)
def data_ack_32_bit_accepted(ctx: Context) -> None:
    """Reads the stream as plain TCP (`read_stream`); no answer to wait for."""
    nbytes = 200_000
    conn, sf = established(ctx, mode="source", nbytes=nbytes)

    def short_data_ack(stream: bytes) -> list[TcpOption]:
        return [Dss(data_ack=(conn.remote_idsn + 1 + len(stream)) & 0xFFFFFFFF)]

    # One subflow, no loss: the subflow stream is the data stream, so its length gives
    # the data ACK, and bytes beyond nbytes are data sent again.
    got, _ = sf.read_stream(enough=lambda s: len(s) > nbytes, within=2.5, options=short_data_ack)
    if got != source_bytes(nbytes):
        raise deviates(
            f"{len(got)} bytes arrived for {nbytes} sent, acknowledged with 4-byte data "
            "ACKs: " + ("data acknowledged was sent again, the ACKs were not taken"
                        if len(got) > nbytes else "the download stalled")
        )  # fmt: skip


def _checksums_required(ctx: Context) -> None:
    """The IUT requires DSS checksums itself (Linux: net.mptcp.checksum_enabled=1)."""
    ctx.iut.set_sysctl("net.mptcp.checksum_enabled", 1)


@case(
    section="3.3.6",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    expected="An IUT configured to require checksums sets A in its SYN/ACK to a SYN "
    "without A; then its mappings carry a valid DSS checksum, and the tester's "
    "checksummed data is delivered.",
)
def iut_requires_checksums(ctx: Context) -> None:
    """expect (`established`, `exchange`): the echo may follow a pure ACK of the data."""
    _checksums_required(ctx)
    conn, sf = established(ctx, checksum=False)
    synack = next(s for s in ctx.tester.received(sf.owns) if s.has("SA"))
    if not synack.need(MpCapable).checksum_required:
        raise deviates(f"SYN/ACK without A from an IUT requiring checksums: {synack.describe()}")
    if not conn.checksum:
        raise TesterError("the tester did not switch to checksummed mappings")
    echo = exchange(ctx, conn, sf, b"checksummed both ways")
    valid_checksum(conn, echo)


@case(
    section="3.3.6",
    level=MUST,
    versions=(0, 1),
    role=INITIATOR,
    expected="An IUT configured to require checksums sets A in its MP_CAPABLE SYN, and its "
    "first data then carries a valid DSS checksum.",
)
def initiator_requires_checksums(ctx: Context) -> None:
    """expect: the third ACK comes before the first data."""
    _checksums_required(ctx)
    t = ctx.tester
    syn = iut_syn(ctx, mode="source", nbytes=300)
    if not syn.need(MpCapable).checksum_required:
        raise deviates(f"MP_CAPABLE SYN without A from an IUT requiring checksums: "
                       f"{syn.describe()}")  # fmt: skip
    conn, sf = t.accept_mp_capable(syn, version=ctx.version, flags=MPC_FLAG_H | MPC_FLAG_A)
    data = sf.expect(data=True, within=1, what="the IUT's first data")
    option = data.option(MpCapable)
    if option is not None:  # v1 first data: MP_CAPABLE with the length and the checksum
        conn.learn_remote_key(option.sender_key or 0)
        if option.checksum is None:
            raise deviates(f"first data MP_CAPABLE without a checksum: {data.describe()}")
        if not crypto.dss_checksum_ok(
            conn.data_rcv_nxt, 1, option.data_level_length or 0, option.checksum, data.payload
        ):
            raise deviates(f"first data checksum does not verify: {data.describe()}")
        return
    valid_checksum(conn, data)


@case(
    section="3.3",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    expected="With checksums negotiated (A in the tester's SYN), data whose DSS mapping "
    "carries no checksum is not accepted: the IUT closes the subflow with RST, and the "
    "data is not echoed.",
)
def missing_checksum_resets_subflow(ctx: Context) -> None:
    """expect_next: a mapping without its checksum MUST get the subflow reset (§3.3), as the
    answer."""
    conn, sf = established(ctx, checksum=True)
    payload = b"mapping without its checksum"
    sf.send("PA", [replace(conn.mapping(sf, payload), checksum=None)], payload)
    answer = sf.expect_next(within=1, what="RST", skip=syn_again(sf))
    if answer.payload:
        raise deviates(f"data mapped without a checksum was delivered: {answer.describe()}")
    if not is_rst(answer):
        raise deviates(f"expected a RST next, the answer to a mapping without a checksum; "
                       f"first came {answer.describe()}")  # fmt: skip


def _bad_checksum(
    ctx: Context, conn: MptcpConnection, sf: Subflow, payload: bytes
) -> tuple[int, Segment]:
    """Send `payload` with a wrong DSS checksum; the IUT's next segment (`expect_next`),
    which must carry MP_FAIL or be a RST (RFC 8684 §3.7: MP_FAIL on the ACK of the
    failed data, or a RST), and the DSN of the bad mapping."""
    dsn, answer, _ = _bad_checksum_mapping(ctx, conn, sf, payload)
    return dsn, answer


def _bad_checksum_mapping(
    ctx: Context, conn: MptcpConnection, sf: Subflow, payload: bytes
) -> tuple[int, Segment, Dss]:
    """`_bad_checksum`, and the bad mapping itself."""
    dss = conn.mapping(sf, payload)
    sf.send("PA", [replace(dss, checksum=(dss.checksum or 0) ^ 0xFFFF)], payload)
    answer = sf.expect_next(within=1, what="MP_FAIL or RST", skip=syn_again(sf))
    if answer.payload and answer.option(MpFail) is None:
        raise deviates(f"data with a bad checksum was delivered: {answer.describe()}")
    if answer.option(MpFail) is None and not answer.flags & RST:
        raise deviates(f"expected MP_FAIL or a RST next, the answer to a failed checksum; "
                       f"first came {answer.describe()}")  # fmt: skip
    return dss.dsn or 0, answer, dss


@case(
    section={1: "3.7", 0: "3.6"},
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    expected="With checksums required by the IUT and a single subflow, data whose DSS "
    "checksum fails gets MP_FAIL carrying the DSN of the failed mapping (on the ACK of "
    "that data, or on a RST if the IUT closes the subflow). After MP_FAIL on an ACK, the "
    "tester answers MP_FAIL and puts an infinite mapping (data-level length 0) on its "
    "first new packet, one that acts retroactively from the failed mapping's start, so "
    "the failed bytes stay in the stream and are not sent again; then plain TCP. The IUT "
    "delivers that stream as TCP: the echo comes back whole, the failed bytes once, in "
    "place.",
)
def bad_checksum_single_subflow_mp_fail(ctx: Context) -> None:
    """expect_next for MP_FAIL, the answer to the failed checksum (§3.7); expect for the echo,
    which pure ACKs may precede (and which may start before the tester falls back: the
    failed bytes are the stream's, RFC 8684 §3.7's retroactive mapping; Linux delivers
    them at once)."""
    _checksums_required(ctx)
    conn, sf = established(ctx)
    payload = b"flipped on the way"
    echo_start = sf.rcv_nxt
    dsn, answer, failed = _bad_checksum_mapping(ctx, conn, sf, payload)
    fail = answer.option(MpFail)
    if fail is None:
        # RFC 8684 §3.7: a subflow closed for a checksum failure gets "a RST that
        # includes an MP_FAIL option", and with one subflow MP_FAIL goes on an ACK
        raise deviates(f"answer to a failed checksum without MP_FAIL: {answer.describe()}")
    if fail.dsn != dsn:
        raise deviates(f"MP_FAIL names DSN {fail.dsn:#x}, the failed mapping is at {dsn:#x}")
    if is_rst(answer):
        return  # the non-contiguous case of §3.7: the subflow is closed
    # an echo that carried the MP_FAIL itself was the answer: it counts
    echoed = answer.payload if answer.seq == echo_start else b""
    _infinite_mapping_fallback(conn, sf, failed, payload, echo_start, echoed)


def _at_seq(seq: int) -> Callable[[Segment], bool]:
    return lambda segment: segment.seq == seq


def _infinite_mapping_fallback(
    conn: MptcpConnection,
    sf: Subflow,
    failed: Dss,
    payload: bytes,
    echo_start: int,
    echoed: bytes,
) -> None:
    """The tester as the receiver of MP_FAIL (RFC 8684 §3.7): MP_FAIL in answer, and an
    infinite mapping on its first new packet that acts retroactively, from the failed
    mapping's DSN and subflow sequence number (nothing sent twice), then plain TCP; the
    IUT's echo, read as TCP from where it stood before the failed data, must be all of
    it, the failed bytes once."""
    sf.send("A", [MpFail(conn.data_rcv_nxt)])
    more = b", then sent as plain TCP"
    infinite = Dss(
        data_ack=conn.data_rcv_nxt, data_ack_64=True, dsn=failed.dsn, dsn_64=True,
        subflow_seq=failed.subflow_seq, data_level_length=0,
        checksum=0 if conn.checksum else None,
    )  # fmt: skip
    sf.send("PA", [infinite], more[:8])
    sf.send("PA", [], more[8:])
    expected = payload + more
    while len(echoed) < len(expected):
        echo = sf.expect(
            data=True, within=2, what="the echo, as TCP, of the data around MP_FAIL",
            where=_at_seq((echo_start + len(echoed)) & 0xFFFFFFFF),
        )  # fmt: skip
        echoed += echo.payload
        sf.send("A")  # acknowledges what the tester tracked in order
    if echoed != expected:
        raise deviates(
            f"after MP_FAIL and a retroactive infinite mapping at DSN {failed.dsn:#x}, the "
            f"IUT echoed {echoed!r}, not {expected!r}"
        )


@case(
    section={1: "3.7", 0: "3.6"},
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    topology="dual_homed",
    expected="With checksums required and two subflows, a checksum failure on one subflow "
    "resets that subflow with a RST carrying MP_FAIL at the failed mapping's DSN, and the "
    "connection goes on on the other.",
)
def bad_checksum_with_two_subflows_resets_subflow(ctx: Context) -> None:
    """expect_next for the fourth ACK and for the RST with MP_FAIL, the answer to the failed
    checksum with another subflow in use (§3.7); expect for the echo."""
    _checksums_required(ctx)
    conn, first = established(ctx)
    second = joined(ctx, conn)
    payload = b"flipped on the second path"
    dsn, rst = _bad_checksum(ctx, conn, second, payload)
    if not is_rst(rst):
        # RFC 8684 §3.7: with other subflows, the failing one "MUST be closed with a RST"
        raise deviates(f"expected the RST next, with other subflows in use; first came "
                       f"{rst.describe()}")  # fmt: skip
    fail = rst.option(MpFail)
    if fail is None or fail.dsn != dsn:
        # RFC 8684 §3.7: "closed with a RST that includes an MP_FAIL option, which
        # defines the data sequence number at the start of the segment" that failed
        raise deviates(f"the RST does not carry MP_FAIL at DSN {dsn:#x}: {rst.describe()}")
    conn.data_snd_nxt = dsn  # the failed bytes, sent again on the first subflow
    exchange(ctx, conn, first, payload, on=first)


# ------------------------------------------------------------------ issue 13: breadth
# (DATA_ACK width, a connection-level zero window, checksum negotiation)


def _data_acks_after(sf: Subflow, covering: int, since: float) -> list[Dss]:
    """The IUT's DSS options on `sf` with a data ACK of `covering` (64-bit, or its low 32
    bits) in segments stamped after `since`."""
    found = []
    for segment in sf.tester.received(sf.owns):
        dss = segment.option(Dss)
        if segment.time < since or dss is None or dss.data_ack is None:
            continue
        if dss.data_ack in (covering, covering & 0xFFFFFFFF):
            found.append(dss)
    return found


@case(
    section="3.3",
    level=SHOULD,
    versions=(0, 1),
    role=LISTENER,
    expected="The IUT's DATA_ACK takes the width of the tester's DSNs: data mapped with "
    "4-byte DSNs is acknowledged with 4-byte data ACKs (a=0), and data mapped with 8-byte "
    "DSNs with 8-byte ones (a=1).",
)
def data_ack_width_follows_dsn_width(ctx: Context) -> None:
    """expect (`exchange`): the data ACK may ride on the echo or on a pure ACK before it.
    RFC 8684 §3.3 (RFC 6824 §3.3) lets each side send 4- or 8-octet DSNs and data ACKs
    (flags m and a); Linux answers in the width of the peer's latest mapping (a peer
    that maps with 4 bytes may keep only 32 bits), which the anchors test: SHOULD, the
    RFC leaving the choice open."""
    conn, sf = established(ctx)
    for wide in (False, True):
        payload = b"eight-byte DSN" if wide else b"four-byte DSN"
        dss = conn.mapping(sf, payload)
        sent = time.time()
        sf.send("PA", [dss if wide else _short(dss)], payload)
        echo = sf.expect(data=True, within=1, what="the echo")
        sf.send("A", [conn.data_ack()])
        acks = _data_acks_after(sf, conn.data_snd_nxt, sent)
        if not acks:
            expect_data_ack(sf, conn.data_snd_nxt, echo)
            acks = _data_acks_after(sf, conn.data_snd_nxt, sent)
        widths = {8 if a.data_ack_64 else 4 for a in acks}
        if widths != {8 if wide else 4}:
            raise deviates(f"data mapped with {8 if wide else 4}-byte DSNs acknowledged with "
                           f"{sorted(widths)}-byte data ACKs: {echo.describe()}")  # fmt: skip


ZERO_WINDOW_PROBE_WITHIN = 2.0  # s: Linux's first probe after an RTO (200 ms minimum) + slack


@case(
    section="3.3.4",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    expected="When the tester's receive window (connection-level, relative to its DATA_ACK) "
    "closes to 0 while the IUT has data to send, the IUT sends no more than a one-byte "
    "window probe, probes the zero window, and resumes sending once the window opens.",
)
def zero_window_probe_and_resume(ctx: Context) -> None:
    """Reads the IUT's segments itself (`next_matching`): the probe is its timer's, not an
    answer. RFC 8684 §3.3.4 (RFC 6824 §3.3.4): the window in the TCP header is the
    connection's receive window, relative to the DATA_ACK; RFC 9293 §3.8.6.1: a sender
    facing a zero window MUST probe it (one octet of new data, or Linux's segment at
    snd_una - 1), and RFC 8684 §3.3.5 has the sender keep to the window."""
    conn, sf = established(ctx, mode="source", nbytes=60_000)
    # acknowledge everything the IUT has in flight, each time with a zero window
    data = Pattern(data=True)
    while (segment := ctx.tester.next_matching(data, 0.3, owner=sf.owns)) is not None:
        del segment
        sf.send("A", [conn.data_ack()], window=0)
    edge = sf.rcv_nxt
    closed = time.time()

    def probe(segment: Segment) -> bool:
        old = segment.seq == (edge - 1) & 0xFFFFFFFF and not segment.payload
        return old or (segment.seq == edge and len(segment.payload) == 1)

    deadline = time.monotonic() + ZERO_WINDOW_PROBE_WITHIN
    found = None
    while found is None:
        segment = ctx.tester.next_matching(Pattern(), deadline - time.monotonic(),
                                           owner=sf.owns)  # fmt: skip
        if segment is None:
            raise deviates(f"no zero-window probe within {ZERO_WINDOW_PROBE_WITHIN:g} s of the "
                           f"window closing at {edge}")  # fmt: skip
        if len(segment.payload) > 1 and (segment.seq - edge) & 0x80000000 == 0:
            raise deviates(f"{len(segment.payload)} bytes sent into a zero window "
                           f"{segment.time - closed:.3f} s after it closed: "
                           f"{segment.describe()}")  # fmt: skip
        if probe(segment):
            found = segment
    sf.rcv_nxt = edge if not found.payload else sf.rcv_nxt
    sf.send("A", [conn.data_ack()])  # the window opens (64240)
    sf.expect(data=True, within=1, what="new data once the window opened",
              where=lambda s: (s.seq - edge) & 0x80000000 == 0 and len(s.payload) > 1)  # fmt: skip


@case(
    section="3.1",
    level=MUST,
    role=LISTENER,
    expected="Checksums negotiated by neither side (no A in the tester's SYN, the IUT not "
    "configured to require them) are not used: the SYN/ACK leaves A clear and the IUT's "
    "mappings carry no DSS checksum.",
)
def checksum_required_by_neither(ctx: Context) -> None:
    """expect (`established`, `exchange`): the echo may follow a pure ACK of the data. RFC
    8684 §3.1: checksums are used when either host sets A, so with neither the mapping
    has no checksum field (a checksum there would break the length the peer parses). v1
    only: a v0 host asks for checksums by default (RFC 6824 §3.1, A SHOULD be set)."""
    conn, sf = established(ctx, checksum=False)
    synack = next(s for s in ctx.tester.received(sf.owns) if s.has("SA"))
    if synack.need(MpCapable).checksum_required:
        raise deviates(f"SYN/ACK sets A though neither side requires checksums: "
                       f"{synack.describe()}")  # fmt: skip
    echo = exchange(ctx, conn, sf, b"no checksums either way")
    dss = echo.need(Dss)
    if dss.dsn is None or dss.checksum is not None:
        raise deviates(f"a mapping with a checksum (or none) when neither side asked: "
                       f"{echo.describe()}")  # fmt: skip


@case(
    section="3.1",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    expected="Checksums required by both sides (A in the tester's SYN, the IUT configured "
    "to require them) are used: the SYN/ACK sets A, and the IUT's mappings carry a valid "
    "DSS checksum while the tester's checksummed data is delivered.",
)
def checksum_required_by_both(ctx: Context) -> None:
    """expect (`established`, `exchange`): the echo may follow a pure ACK of the data. RFC
    8684 §3.1 (RFC 6824 §3.1): A set by either host makes checksums mandatory; the other
    combinations are `a_flag_requires_checksums` (the tester's), `iut_requires_checksums`
    (the IUT's) and `checksum_required_by_neither`."""
    _checksums_required(ctx)
    conn, sf = established(ctx, checksum=True)
    synack = next(s for s in ctx.tester.received(sf.owns) if s.has("SA"))
    if not synack.need(MpCapable).checksum_required:
        raise deviates(f"SYN/ACK without A, both sides requiring checksums: {synack.describe()}")
    valid_checksum(conn, exchange(ctx, conn, sf, b"checksums both ways"))
