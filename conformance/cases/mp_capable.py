"""MP_CAPABLE: the handshake, version negotiation, flags, keys (RFC 8684 §3.1, RFC 6824 §3.1).

v0 and v1 differ most here: a v0 SYN carries Key-A (12 bytes) and a v1 SYN no key (4),
v1 repeats the keys on the first data (v0 does not), B set means "ignore this SYN" in
v0 but "ignore the option" in v1, and v0 asks for checksums by default (A SHOULD be set).
"""

from __future__ import annotations

from conformance.cases import INITIATOR, LISTENER, MAY, MUST, SHOULD, Context, case
from conformance.cases.steps import (
    capable_syn,
    established,
    exchange,
    has_mapping,
    initiated,
    iut_syn,
    joined,
    plain_synack,
    syn_again,
    tester_syn,
    valid_checksum,
)
from conformance.iut import NotSupported
from conformance.iut.kernel import KernelIut
from conformance.model import deviates, not_applicable
from conformance.tester import MptcpConnection, Segment, Subflow, TesterError
from stack import crypto
from stack.wire.mptcp import (
    MPC_FLAG_A,
    MPC_FLAG_B,
    MPC_FLAG_C,
    MPC_FLAG_H,
    Dss,
    MpCapable,
    MpJoinSyn,
)
from stack.wire.tcp import SYN, MaxSegmentSize, UnknownTcpOption
from testbed.mptcp import KernelMptcpError


@case(
    ipv6=True,
    section="3.1",
    level=MUST,
    role=LISTENER,
    expected="A SYN with MP_CAPABLE v1 (4 bytes, no key) gets a SYN/ACK with MP_CAPABLE "
    "v1 of 12 bytes carrying Key-B, with H set and B clear.",
)
def v1_syn_gets_v1_synack(ctx: Context) -> None:
    """expect_next: the SYN/ACK is the only answer to a SYN."""
    ctx.iut.listen(ctx.port)
    sf = tester_syn(ctx, MpCapable(version=1, flags=MPC_FLAG_H))
    synack = sf.expect_next("SA", MpCapable, within=1)
    _capable_format(synack, "SYN/ACK", version=1, key=True)


def _capable_format(segment: Segment, name: str, *, version: int, key: bool) -> None:
    """`segment`'s MP_CAPABLE is of `version`, has H set and B clear, and carries one
    key (the sender's: 12 bytes) when `key`, none otherwise (4 bytes)."""
    option = segment.need(MpCapable)
    has_keys = (option.sender_key is not None, option.receiver_key is not None)
    if option.version != version or has_keys != (key, False):
        keys = "one key (12 bytes)" if key else "no key (4 bytes)"
        raise deviates(f"{name} MP_CAPABLE is not v{version} with {keys}: {segment.describe()}")
    if not option.hmac_sha or option.extensibility:
        raise deviates(f"{name} MP_CAPABLE flags H clear or B set: {segment.describe()}")


@case(
    ipv6=True,
    section="3.1",
    level=MUST,
    role=LISTENER,
    versions=(0,),
    expected="A v0 SYN with MP_CAPABLE and Key-A (12 bytes) gets a SYN/ACK with MP_CAPABLE "
    "v0 of 12 bytes carrying Key-B alone, with H set and B clear.",
)
def v0_syn_gets_v0_synack(ctx: Context) -> None:
    """expect_next: the SYN/ACK is the only answer to a SYN."""
    ctx.iut.listen(ctx.port)
    sf = tester_syn(ctx, capable_syn(ctx, MPC_FLAG_H | MPC_FLAG_A))
    synack = sf.expect_next("SA", MpCapable, within=1)
    _capable_format(synack, "SYN/ACK", version=0, key=True)


@case(
    section="3.1",
    level=SHOULD,
    role=LISTENER,
    versions=(0,),
    expected="A v0 listener asks for checksums: its SYN/ACK sets A (checksum required) "
    "even to a SYN without A, unless configured otherwise.",
)
def v0_synack_asks_for_checksums(ctx: Context) -> None:
    """expect_next: the SYN/ACK is the only answer to a SYN."""
    ctx.iut.listen(ctx.port)
    sf = tester_syn(ctx, capable_syn(ctx, MPC_FLAG_H))
    synack = sf.expect_next("SA", MpCapable, within=1)
    if not synack.need(MpCapable).checksum_required:
        raise deviates(f"v0 SYN/ACK without A (checksum required): {synack.describe()}")


@case(
    section="3.1",
    level=MUST,
    role=LISTENER,
    expected="A v1-only host that gets a v0 SYN (MP_CAPABLE v0 with Key-A) answers "
    "with a version no higher than 0, i.e. falls back: a SYN/ACK without MP_CAPABLE.",
)
def v0_syn_to_v1_host_falls_back(ctx: Context) -> None:
    """expect_next (`plain_synack`): the SYN/ACK is the only answer to a SYN."""
    ctx.iut.listen(ctx.port)
    sf = tester_syn(ctx, MpCapable(version=0, flags=MPC_FLAG_H, sender_key=0x1122334455667788))
    plain_synack(sf)


@case(
    section="3.1",
    level=SHOULD,
    role=LISTENER,
    expected="A SYN asking for a higher version (2) gets a SYN/ACK with MP_CAPABLE "
    "version 1, the highest the responder supports.",
)
def higher_version_syn_gets_v1(ctx: Context) -> None:
    """expect_next: the SYN/ACK is the only answer to a SYN."""
    ctx.iut.listen(ctx.port)
    sf = tester_syn(ctx, MpCapable(version=2, flags=MPC_FLAG_H))
    synack = sf.expect_next("SA", within=1)
    option = synack.option(MpCapable)
    if option is None or option.version != 1:
        raise deviates(f"expected MP_CAPABLE v1 in the SYN/ACK: {synack.describe()}")


@case(
    section="3.1",
    level=MUST,
    role=LISTENER,
    expected="A SYN whose MP_CAPABLE has the B (extensibility) flag set is not "
    "understood, so the option is ignored: a plain SYN/ACK (fallback).",
)
def b_flag_syn_is_ignored(ctx: Context) -> None:
    """expect_next (`plain_synack`): the SYN/ACK is the only answer to a SYN."""
    ctx.iut.listen(ctx.port)
    sf = tester_syn(ctx, MpCapable(version=1, flags=MPC_FLAG_H | MPC_FLAG_B))
    plain_synack(sf)


@case(
    section="3.1",
    level=MUST,
    role=LISTENER,
    versions=(0,),
    expected="A v0 SYN whose MP_CAPABLE has the B (extensibility) flag set, not "
    "understood, is silently ignored, the SYN itself (the sender retries in the legacy "
    "format): no SYN/ACK, no RST.",
)
def v0_b_flag_syn_silently_ignored(ctx: Context) -> None:
    """expect_none: no answer at all is the prescribed one."""
    ctx.iut.listen(ctx.port)
    sf = tester_syn(ctx, capable_syn(ctx, MPC_FLAG_H | MPC_FLAG_A | MPC_FLAG_B))
    sf.expect_none(within=0.5, what="any answer to the SYN")


@case(
    section="3.1",
    level=MUST,
    role=LISTENER,
    versions=(0, 1),
    expected="A SYN whose MP_CAPABLE has no crypto algorithm bit (H clear) gets a "
    "SYN/ACK without MP_CAPABLE: no common algorithm, fall back.",
)
def no_h_flag_syn_falls_back(ctx: Context) -> None:
    """expect_next (`plain_synack`): the SYN/ACK is the only answer to a SYN."""
    ctx.iut.listen(ctx.port)
    sf = tester_syn(ctx, capable_syn(ctx, 0))
    plain_synack(sf)


@case(
    section="3.1",
    level=SHOULD,
    role=LISTENER,
    versions=(0, 1),
    expected="D..H are crypto algorithm bits: a SYN offering unknown algorithms (D..G) "
    "besides H gets a SYN/ACK with MP_CAPABLE that picks H alone.",
)
def unassigned_flags_ignored(ctx: Context) -> None:
    """expect_next: the SYN/ACK is the only answer to a SYN."""
    ctx.iut.listen(ctx.port)
    sf = tester_syn(ctx, capable_syn(ctx, MPC_FLAG_H | 0x1E))
    synack = sf.expect_next("SA", within=1)
    option = synack.option(MpCapable)
    if option is None:
        raise deviates(f"no MP_CAPABLE in the SYN/ACK: {synack.describe()}")
    if option.flags & 0x1E:
        raise deviates(f"SYN/ACK sets unassigned flags: {synack.describe()}")


@case(
    section="3.1",
    level=MUST,
    role=LISTENER,
    versions=(0, 1),
    expected="A SYN with the A (checksum) flag makes checksums mandatory: the IUT's DSS "
    "mappings then carry a valid DSS checksum.",
)
def a_flag_requires_checksums(ctx: Context) -> None:
    """expect (`established`): the echo's mapping is checked, and TCP may acknowledge the data on a
    pure ACK before the echo."""
    conn, sf = established(ctx, checksum=True)
    valid_checksum(conn, ctx.tester.received(lambda s: sf.owns(s) and bool(s.payload))[-1])


@case(
    section="3.1",
    level=MUST,
    role=LISTENER,
    versions=(0, 1),
    expected="A SYN with an MP_CAPABLE option of impossible length (5) is not an "
    "MP_CAPABLE: the SYN/ACK carries no MP_CAPABLE.",
)
def bad_option_length_syn(ctx: Context) -> None:
    """expect_next: the SYN/ACK is the only answer to a SYN."""
    ctx.iut.listen(ctx.port)
    sf = tester_syn(ctx, raw_options=bytes((30, 5, ctx.version, MPC_FLAG_H, 0)))
    sf.expect_next("SA", absent=[MpCapable], within=1, what="a SYN/ACK without MP_CAPABLE")


@case(
    section="3.1",
    level=MUST,
    role=LISTENER,
    expected="When the third ACK is lost, the first data segment carrying MP_CAPABLE "
    "with both keys and the data-level length establishes the connection: the data "
    "is delivered (echoed with a DSS mapping).",
)
def lost_third_ack_first_data_establishes(ctx: Context) -> None:
    """expect_next for the SYN/ACK; expect for the echo, which a pure ACK of the data may
    precede."""
    ctx.iut.listen(ctx.port)
    t = ctx.tester
    conn = t.connection(1)
    sf = tester_syn(ctx, MpCapable(version=1, flags=MPC_FLAG_H))
    sf.connection = conn
    conn.subflows.append(sf)
    synack = sf.expect_next("SA", MpCapable, within=1)
    option = synack.option(MpCapable)
    assert option is not None and option.sender_key is not None
    conn.learn_remote_key(option.sender_key)
    conn.start_data()
    # no third ACK: straight to the first data
    t.first_data_v1(conn, sf, b"lost third ack")
    sf.expect(data=True, where=has_mapping, within=1, what="echoed data with a DSS mapping")


@case(
    ipv6=True,
    section="3.1",
    level=MUST,
    role=INITIATOR,
    expected="The IUT's SYN carries MP_CAPABLE v1 of 4 bytes (no key) with H set, B clear.",
)
def initiator_v1_syn_format(ctx: Context) -> None:
    """expect (`iut_syn`): the IUT's SYN is the first thing it sends; nothing to answer."""
    _capable_format(iut_syn(ctx), "SYN", version=1, key=False)


@case(
    ipv6=True,
    section="3.1",
    level=MUST,
    role=INITIATOR,
    versions=(0,),
    expected="The IUT's v0 SYN carries MP_CAPABLE v0 of 12 bytes with Key-A alone, H set, B clear.",
)
def initiator_v0_syn_format(ctx: Context) -> None:
    """expect (`iut_syn`): the IUT's SYN is the first thing it sends; nothing to answer."""
    _capable_format(iut_syn(ctx), "SYN", version=0, key=True)


@case(
    section="3.1",
    level=SHOULD,
    role=INITIATOR,
    versions=(0,),
    expected="A v0 initiator asks for checksums: its MP_CAPABLE SYN sets A (checksum "
    "required), unless configured otherwise.",
)
def initiator_v0_syn_asks_for_checksums(ctx: Context) -> None:
    """expect (`iut_syn`): the IUT's SYN is the first thing it sends; nothing to answer."""
    syn = iut_syn(ctx)
    if not syn.need(MpCapable).checksum_required:
        raise deviates(f"v0 SYN without A (checksum required): {syn.describe()}")


@case(
    ipv6=True,
    section="3.1",
    level=MUST,
    role=INITIATOR,
    versions=(0, 1),
    expected="The IUT's third ACK carries MP_CAPABLE (20 bytes) with Key-A (in v0 the "
    "one its SYN carried) and the tester's Key-B echoed exactly.",
)
def initiator_third_ack_has_both_keys(ctx: Context) -> None:
    """expect_next (`initiated`): the third ACK answers the SYN/ACK (its SYN sent again
    excepted)."""
    conn, _, ack = initiated(ctx)
    option = ack.option(MpCapable)
    assert option is not None
    if option.receiver_key != conn.local_key:
        raise deviates(
            f"third ACK echoes key {option.receiver_key:#x}, the tester's is {conn.local_key:#x}"
        )


@case(
    section="3.1",
    level=MUST,
    role=INITIATOR,
    expected="The IUT's first data segment carries MP_CAPABLE (v1, 22 or 24 bytes) with "
    "both keys and the data-level length, or a DSS mapping once the peer acknowledged.",
)
def initiator_first_data_carries_keys(ctx: Context) -> None:
    """expect: the third ACK comes before the first data."""
    t = ctx.tester
    syn = iut_syn(ctx, mode="source", nbytes=200)
    conn, sf = t.accept_mp_capable(syn)
    data = sf.expect(data=True, within=1, what="the IUT's first data")
    option = data.option(MpCapable)
    if option is None:
        raise deviates(f"first data without MP_CAPABLE: {data.describe()}")
    if option.receiver_key != conn.local_key or option.data_level_length is None:
        raise deviates(f"first data MP_CAPABLE lacks Key-B or the length: {data.describe()}")


@case(
    section="3.1",
    level=MUST,
    role=INITIATOR,
    versions=(0,),
    expected="The v0 IUT's first data carries a DSS mapping (no MP_CAPABLE: RFC 6824 has "
    "no keys on data) at DSN IDSN-A + 1, IDSN-A the least significant 64 bits of "
    "SHA-1(Key-A) from its SYN, with a valid DSS checksum (A set).",
)
def initiator_v0_first_data_mapping_at_idsn(ctx: Context) -> None:
    """expect: the third ACK comes before the first data."""
    syn = iut_syn(ctx, mode="source", nbytes=200)
    conn, sf = ctx.tester.accept_mp_capable(syn, version=0)
    data = sf.expect(data=True, within=1, what="the IUT's first data")
    if data.option(MpCapable) is not None:
        raise deviates(f"v0 first data carries MP_CAPABLE: {data.describe()}")
    dss = data.need(Dss)
    expected = (crypto.key_idsn(syn.need(MpCapable).sender_key or 0, 0) + 1) & (2**64 - 1)
    got = None if dss.dsn is None else dss.dsn if dss.dsn_64 else dss.dsn | (expected & ~0xFFFFFFFF)
    if got != expected:
        raise deviates(f"first mapping at DSN {got}, expected IDSN-A+1 {expected:#x}: "
                       f"{data.describe()}")  # fmt: skip
    valid_checksum(conn, data)


@case(
    section="3.1",
    level=MUST,
    role=INITIATOR,
    versions=(0, 1),
    expected="A SYN/ACK without MP_CAPABLE makes the initiator fall back to TCP: its ACK "
    "and its data carry no MPTCP option.",
)
def initiator_falls_back_on_plain_synack(ctx: Context) -> None:
    """expect_next for the third ACK, which answers the SYN/ACK (its SYN sent again excepted);
    expect for the data after it."""
    t = ctx.tester
    syn = iut_syn(ctx, mode="source", nbytes=100)
    sf = t.accept(syn)
    sf.send("SA", [MaxSegmentSize(1460)])
    ack = sf.expect_next("A", within=1, what="the IUT's third ACK", skip=syn_again(sf))
    if ack.mptcp:
        raise deviates(f"the ACK of a plain SYN/ACK carries MPTCP options: {ack.describe()}")
    data = ack if ack.payload else sf.expect(data=True, within=1, what="the IUT's data")
    if data.mptcp:
        raise deviates(f"data after a plain SYN/ACK carries MPTCP options: {data.describe()}")


@case(
    section="3.1",
    level=MUST,
    role=INITIATOR,
    versions=(0, 1),
    expected="A SYN/ACK with an MP_CAPABLE version other than the one asked for (2) is "
    "not accepted: the initiator falls back (no MPTCP option on its ACK or data).",
)
def initiator_rejects_higher_version_synack(ctx: Context) -> None:
    """expect_next: the ACK answers the SYN/ACK (its SYN sent again excepted)."""
    t = ctx.tester
    syn = iut_syn(ctx, mode="source", nbytes=100)
    sf = t.accept(syn)
    sf.send(
        "SA",
        [
            MaxSegmentSize(1460),
            MpCapable(version=2, flags=MPC_FLAG_H, sender_key=0x0102030405060708),
        ],
    )
    answer = sf.expect_next(within=1, what="the IUT's ACK or data", skip=syn_again(sf))
    if any(isinstance(o, MpCapable | Dss) for o in answer.options):
        raise deviates(f"IUT went on with MPTCP after a v2 SYN/ACK: {answer.describe()}")


@case(
    section="3.1",
    level=MUST,
    role=INITIATOR,
    topology="dual_homed",
    expected="With the C flag set in the tester's SYN/ACK, the IUT never opens a subflow "
    "to the tester's source address, even with a subflow endpoint configured.",
)
def initiator_respects_c_flag(ctx: Context) -> None:
    """expect_none: no join SYN at all is the prescribed behaviour."""
    ctx.iut.set_limits(2, 2)
    ctx.iut.add_endpoint(ctx.iut_address("eth1"), flags={"subflow"})
    conn, sf, _ = initiated(ctx, synack_flags=MPC_FLAG_H | MPC_FLAG_C)
    ctx.tester.expect_none("S", MpJoinSyn, within=0.5, what="a join SYN to the tester")
    del conn, sf


# ------------------------------------------------------------------ issue 13: breadth
# (the initiator's reading of a SYN/ACK's flags, blackhole fallback, plain TCP clients,
# SYN cookies, TCP Fast Open)


def _initiator_falls_back_on(ctx: Context, flags: int) -> None:
    """The IUT connects; the tester answers with a SYN/ACK whose MP_CAPABLE (Key-B) has
    `flags`. The IUT's next segment (`expect_next`, its SYN sent again excepted) and its
    data carry no MPTCP option: it fell back to TCP."""
    t = ctx.tester
    syn = iut_syn(ctx, mode="source", nbytes=100)
    sf = t.accept(syn)
    option = MpCapable(version=ctx.version, flags=flags, sender_key=0x0102030405060708)
    sf.send("SA", [t.mss(sf.local), option])
    ack = sf.expect_next("A", within=1, what="the IUT's third ACK", skip=syn_again(sf))
    if ack.mptcp:
        raise deviates(f"the ACK of an ignored MP_CAPABLE carries MPTCP options: "
                       f"{ack.describe()}")  # fmt: skip
    data = ack if ack.payload else sf.expect(data=True, within=1, what="the IUT's data")
    if data.mptcp:
        raise deviates(f"data after an ignored MP_CAPABLE carries MPTCP options: "
                       f"{data.describe()}")  # fmt: skip


@case(
    section="3.1",
    level=MUST,
    role=INITIATOR,
    expected="A SYN/ACK whose MP_CAPABLE has B (extensibility) set is not understood, so "
    "the option is ignored: the initiator falls back to TCP (no MPTCP option on its ACK "
    "or data).",
)
def initiator_falls_back_on_synack_b_flag(ctx: Context) -> None:
    """expect_next: the ACK answers the SYN/ACK (its SYN sent again excepted). RFC 8684
    §3.1: a message with B set that is not understood has its MP_CAPABLE "silently
    ignored, which triggers a fallback to regular TCP" (Linux drops the option on any
    packet with B set). RFC 6824 has the SYN itself ignored, which says nothing about a
    SYN/ACK: v1 only."""
    _initiator_falls_back_on(ctx, MPC_FLAG_H | MPC_FLAG_B)


@case(
    section="3.1",
    level=MUST,
    role=INITIATOR,
    versions=(0, 1),
    expected="A SYN/ACK whose MP_CAPABLE names no crypto algorithm (H and the other "
    "algorithm bits clear) is invalid and ignored: the initiator falls back to TCP (no "
    "MPTCP option on its ACK or data).",
)
def initiator_falls_back_on_synack_without_h(ctx: Context) -> None:
    """expect_next: the ACK answers the SYN/ACK (its SYN sent again excepted). RFC 8684
    §3.1 (and RFC 6824 §3.1, bits C..H): "If flag bits D through H are all 0, the
    MP_CAPABLE option MUST be treated as invalid and ignored (that is, it must be treated
    as a regular TCP handshake)"."""
    _initiator_falls_back_on(ctx, MPC_FLAG_A if ctx.version == 0 else 0)


# net.mptcp.syn_retrans_before_tcp_fallback: the SYN + MP_CAPABLE retransmissions
# before a SYN without it (Linux 6.14+, default 2); 0 drops MP_CAPABLE from the first
# retransmission, about 1 s (TCP's initial RTO) after the first SYN.
SYN_RETRANS_BEFORE_FALLBACK = "net.mptcp.syn_retrans_before_tcp_fallback"


@case(
    section="3.1",
    level=SHOULD,
    role=INITIATOR,
    versions=(0, 1),
    expected="When its SYNs with MP_CAPABLE go unanswered (a middlebox drops them), the "
    "initiator retries with a plain SYN (no MP_CAPABLE, same ports) and the connection "
    "goes on as plain TCP.",
)
def initiator_syn_blackhole_retries_plain(ctx: Context) -> None:
    """expect for the plain SYN: the retries are the IUT's timer, not an answer;
    expect_next for the ACK that answers the tester's SYN/ACK. RFC 8684 §3.1 (RFC 6824
    §3.1): "It is expected that a sender will eventually fall back to single-path TCP
    (i.e., without the MP_CAPABLE option) in order to work around middleboxes that may
    drop packets with unknown options", the number of attempts left to local policy.
    The IUT is set to the shortest honest policy, the first retransmission without
    MP_CAPABLE (Linux: net.mptcp.syn_retrans_before_tcp_fallback=0), so the case waits
    one initial RTO (1 s) and allows 3.5 s (two retransmissions with MP_CAPABLE)."""
    try:
        ctx.iut.set_sysctl(SYN_RETRANS_BEFORE_FALLBACK, 0)
    except KernelMptcpError as error:  # a kernel before 6.14: no such knob
        raise not_applicable(f"no MPTCP blackhole fallback to configure: {error}") from None
    first = iut_syn(ctx, mode="source", nbytes=100)
    started = first.time
    plain = ctx.tester.expect(
        "S", absent=[MpCapable, MpJoinSyn], within=3.5, what="a SYN without MP_CAPABLE",
        where=lambda s: s.sport == first.sport and s.dport == first.dport,
    )  # fmt: skip
    sf = ctx.tester.accept(plain)
    sf.send("SA", [ctx.tester.mss(sf.local)])
    ack = sf.expect_next("A", within=1, what="the ACK of the SYN/ACK", skip=syn_again(sf))
    data = ack if ack.payload else sf.expect(data=True, within=1, what="the IUT's data")
    for segment in (ack, data):
        if segment.mptcp:
            raise deviates(f"MPTCP options after the plain SYN ({plain.time - started:.2f} "
                           f"s after the first): {segment.describe()}")  # fmt: skip


@case(
    ipv6=True,
    section="3.1",
    level=MUST,
    role=LISTENER,
    versions=(0, 1),
    expected="A plain TCP client (SYN without MP_CAPABLE) gets a plain SYN/ACK from the "
    "MPTCP listener, and its data is echoed as plain TCP: no MPTCP option on any segment.",
)
def plain_tcp_client_to_mptcp_listener(ctx: Context) -> None:
    """expect_next (`plain_synack`): the SYN/ACK is the only answer to a SYN; expect for
    the echo, which a pure ACK of the data may precede. RFC 8684 §3.1 (RFC 6824 §3.1):
    MP_CAPABLE in the SYN/ACK only answers one in the SYN; without it the connection is
    regular TCP (§3.7's fallback from the start)."""
    ctx.iut.listen(ctx.port)
    sf = tester_syn(ctx)
    plain_synack(sf)
    sf.send("A")
    payload = b"plain TCP to an MPTCP listener"
    sf.send("PA", payload=payload)
    echoed = b""
    while len(echoed) < len(payload):
        echo = sf.expect(data=True, within=1, what="the echo, as plain TCP")
        if echo.mptcp:
            raise deviates(f"MPTCP options towards a plain TCP client: {echo.describe()}")
        echoed += echo.payload
        sf.send("A")
    if echoed != payload:
        raise deviates(f"echoed {echoed!r}, sent {payload!r}")
    others = [s for s in ctx.tester.received(sf.owns) if s.mptcp]
    if others:
        raise deviates(f"MPTCP options towards a plain TCP client: {others[0].describe()}")


@case(
    section="3.1",
    level=MUST,
    role=LISTENER,
    expected="Under SYN cookies (the listener keeps no state for the SYN), the SYN/ACK "
    "still carries MP_CAPABLE with Key-B, the third ACK's two keys re-create the "
    "connection, and it is MPTCP: the tester's data is echoed with a DSS mapping.",
)
def syn_cookies_keep_mptcp(ctx: Context) -> None:
    """expect_next for the SYN/ACK (the only answer to a SYN); expect for the echo, which a
    pure ACK may precede. RFC 8684 §3.1: the third ACK echoes both keys "so that the
    passive opener can be stateless until the three-way handshake is complete" (v1's
    design for SYN cookies; RFC 6824's third ACK carries both keys too, but the v1 IUT
    is the only one with cookies here). Linux: net.ipv4.tcp_syncookies=2, cookies
    always; TcpExt `SyncookiesRecv` shows the cookie was used (else a harness error)."""
    ctx.iut.set_sysctl("net.ipv4.tcp_syncookies", 2)  # NotSupported: not applicable
    _, sf = established(ctx)
    echo = ctx.tester.received(lambda s: sf.owns(s) and bool(s.payload))[-1]
    if not has_mapping(echo):
        raise deviates(f"the echo under SYN cookies has no DSS mapping: {echo.describe()}")
    if isinstance(ctx.iut, KernelIut) and not _tcp_ext(ctx.iut).get("SyncookiesRecv"):
        raise TesterError("the kernel took the third ACK without a SYN cookie (TcpExt "
                          "SyncookiesRecv did not move): the case tested nothing")  # fmt: skip


def _tcp_ext(iut: KernelIut) -> dict[str, int]:
    """The kernel IUT's TcpExt MIB counters (SyncookiesSent, TCPFastOpenPassive, ...)."""
    with iut.host.entered(), open("/proc/thread-self/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return dict(zip(names.split()[1:], map(int, values.split()[1:]), strict=True))
    return {}


# TCP Fast Open (RFC 7413) with MPTCP: RFC 8684 Appendix B. v1 only (RFC 6824 has no
# TFO text). An IUT without TFO is not applicable (`Iut.enable_fastopen`).
TFO_KIND = 34
TFO_COOKIE_REQUEST = bytes((TFO_KIND, 2))


def _tfo_cookie(segment: Segment) -> bytes | None:
    """The Fast Open cookie a segment carries (None: no TFO option, or a bare request)."""
    for option in segment.options:
        if isinstance(option, UnknownTcpOption) and option.kind == TFO_KIND:
            return bytes(option.raw[2:]) or None
    return None


def _tfo_syn(ctx: Context, tfo: bytes, payload: bytes = b"") -> Subflow:
    """A tester SYN with the MSS, the TFO option `tfo` (a request or a cookie),
    MP_CAPABLE v1 (4 bytes) and `payload`: 4 + 12 + 4 bytes at most, within 40."""
    sf = ctx.tester.subflow(ctx.port)
    raw = ctx.tester.mss(sf.local).emit() + tfo + MpCapable(version=1, flags=MPC_FLAG_H).emit()
    sf.send("S", raw_options=raw, payload=payload)
    return sf


def _tfo_cookie_from_listener(ctx: Context) -> tuple[Subflow, Segment, bytes]:
    """The IUT listens with Fast Open; the tester asks for a cookie on an MP_CAPABLE
    SYN. The SYN/ACK (`expect_next`) must carry a cookie and MP_CAPABLE with Key-B."""
    ctx.iut.enable_fastopen()
    ctx.iut.listen(ctx.port)
    sf = _tfo_syn(ctx, TFO_COOKIE_REQUEST)
    synack = sf.expect_next("SA", within=1, what="SYN/ACK to a TFO cookie request")
    _capable_format(synack, "SYN/ACK", version=1, key=True)
    cookie = _tfo_cookie(synack)
    if cookie is None or not 4 <= len(cookie) <= 16:
        raise deviates(f"no Fast Open cookie (4 to 16 bytes) beside MP_CAPABLE: "
                       f"{synack.describe()}")  # fmt: skip
    return sf, synack, cookie


@case(
    section="B.1",
    level=SHOULD,
    role=LISTENER,
    expected="A listener with TCP Fast Open answers an MP_CAPABLE SYN carrying a TFO "
    "cookie request with a SYN/ACK that carries both a cookie and MP_CAPABLE v1 with Key-B.",
)
def tfo_cookie_request_gets_cookie_and_mp_capable(ctx: Context) -> None:
    """expect_next: the SYN/ACK is the only answer to a SYN. RFC 8684 Appendix B.1: the
    cookie request and MP_CAPABLE go together on the SYN, and the SYN/ACK has room for
    the cookie and MP_CAPABLE (a host drops TCP timestamps first, as Linux does, to
    make it fit)."""
    sf, _, _ = _tfo_cookie_from_listener(ctx)
    sf.send("R")


@case(
    section="B.2",
    level=SHOULD,
    role=LISTENER,
    expected="A SYN with MP_CAPABLE, a valid TFO cookie and data gets a SYN/ACK that "
    "acknowledges the data and carries MP_CAPABLE with Key-B; after the third ACK (both "
    "keys) and the first data, the SYN's data reaches the application once and first, "
    "and the connection is MPTCP (the echo comes back with DSS mappings from IDSN-B + 1).",
)
def tfo_syn_data_with_cookie_delivered(ctx: Context) -> None:
    """expect_next for the SYN/ACKs, the answers to the SYNs; expect for the echo, which a
    pure ACK may precede. RFC 8684 Appendix B.2 (data sequence mapping under TFO): the
    SYN's data is the application's, delivered before any mapped data; the IUT's own
    data is mapped from IDSN-B + 1 as on any connection."""
    first, _, cookie = _tfo_cookie_from_listener(ctx)
    first.send("R")
    payload = b"data on the SYN, with a cookie"
    _syn_data_taken(ctx, _tfo_syn(ctx, bytes((TFO_KIND, 2 + len(cookie))) + cookie, payload),
                    payload)  # fmt: skip


@case(
    section="B.2",
    level=MUST,
    role=LISTENER,
    expected="A SYN with MP_CAPABLE, data and a Fast Open cookie the IUT never issued gets "
    "a SYN/ACK with MP_CAPABLE that acknowledges only the SYN (a listener without TFO may "
    "instead take the data, as TCP queues SYN data); either way the data, sent again "
    "after the handshake when it was not acknowledged, reaches the application once.",
)
def tfo_syn_data_with_invalid_cookie_delivered_once(ctx: Context) -> None:
    """expect_next for the SYN/ACK, the answer to the SYN; expect for the echo, which a pure
    ACK may precede. RFC 7413 §4.2.2: a server that does not validate the cookie drops
    the SYN's data and acknowledges only the SYN's sequence number; RFC 8684 Appendix B.2
    keeps that under MPTCP. An IUT without TFO runs it as a plain MPTCP listener (RFC
    9293 §3.10.7.2 lets TCP queue a SYN's data until the handshake completes): the data
    must still arrive exactly once."""
    try:
        ctx.iut.enable_fastopen()
        fastopen = True
    except NotSupported:
        fastopen = False
    ctx.iut.listen(ctx.port)
    payload = b"data on the SYN, with a cookie never issued"
    _syn_data_once(ctx, _tfo_syn(ctx, bytes((TFO_KIND, 10)) + bytes(8), payload), payload,
                   fastopen=fastopen)  # fmt: skip


def _syn_data_taken(ctx: Context, sf: Subflow, payload: bytes) -> None:
    """The IUT takes `payload`, sent on the tester's MP_CAPABLE SYN `sf`: its SYN/ACK
    (`expect_next`) acknowledges the data and carries MP_CAPABLE with Key-B; after the
    third ACK (both keys) and the first data, the SYN's data is echoed once and first,
    the echo mapped from IDSN-B + 1 (`expect`: a pure ACK may precede it)."""
    t = ctx.tester
    conn = t.connection(1)
    sf.connection = conn
    conn.subflows.append(sf)
    synack = sf.expect_next("SA", MpCapable, within=1, what="SYN/ACK with MP_CAPABLE")
    if synack.ack != sf.snd_nxt:
        raise deviates(f"the SYN/ACK acknowledges {synack.ack}, not the SYN's "
                       f"{len(payload)} bytes of data (up to {sf.snd_nxt}): "
                       f"{synack.describe()}")  # fmt: skip
    key = synack.need(MpCapable).sender_key
    if key is None:
        raise deviates(f"SYN/ACK MP_CAPABLE carries no key: {synack.describe()}")
    conn.learn_remote_key(key)
    first_dsn = conn.data_rcv_nxt  # IDSN-B + 1 (the tracking moves on with the echo)
    conn.start_data()
    sf.send("A", [MpCapable(version=1, flags=MPC_FLAG_H, sender_key=conn.local_key,
                            receiver_key=key)])  # fmt: skip
    # then the first data with MP_CAPABLE, as a v1 client goes on (Linux's packetdrill
    # scripts do the same): Linux 6.18 sometimes loses the keys of a TFO connection's
    # third ACK and holds its own data until the next MPTCP option (docs/conformance.md)
    more = b", then the first data"
    t.first_data_v1(conn, sf, more)
    expected = payload + more
    echoed = b""
    while len(echoed) < len(expected):
        echo = sf.expect(data=True, within=1, what="the echo of the SYN's data and the first data")
        dss = echo.option(Dss)
        if dss is None or dss.dsn is None:
            raise deviates(f"the echo has no DSS mapping: {echo.describe()}")
        if not echoed:
            dsn = dss.dsn if dss.dsn_64 else dss.dsn | (first_dsn & ~0xFFFFFFFF)
            if dsn != first_dsn:
                raise deviates(f"the echo is mapped at DSN {dsn:#x}, not IDSN-B + 1 "
                               f"{first_dsn:#x}: {echo.describe()}")  # fmt: skip
        echoed += echo.payload
        sf.send("A", [conn.data_ack()])
    if echoed != expected:
        raise deviates(f"echoed {echoed!r} for the SYN's data and the first data {expected!r}")
    sf.expect_none(data=True, within=0.2, what="the SYN's data a second time")


def _syn_data_once(ctx: Context, sf: Subflow, payload: bytes, *, fastopen: bool) -> bytes:
    """The tester's MP_CAPABLE SYN `sf` carried `payload` under a cookie the IUT must not
    validate: its SYN/ACK (`expect_next`) acknowledges only the SYN (`fastopen`; an IUT
    without TFO may take the data, as TCP queues a SYN's data); after the handshake the
    data not acknowledged is sent again and the echo (`expect`) carries it once. Returns
    the SYN/ACK's cookie, if any."""
    t = ctx.tester
    conn = t.connection(1)
    sf.connection = conn
    conn.subflows.append(sf)
    sf.snd_nxt = (sf.iss + 1) & 0xFFFFFFFF  # a SYN/ACK of the SYN alone answers it too
    synack = sf.expect_next("SA", MpCapable, within=1, what="SYN/ACK with MP_CAPABLE")
    acked = (synack.ack - sf.iss - 1) & 0xFFFFFFFF
    sf.snd_nxt = (sf.iss + 1 + acked) & 0xFFFFFFFF
    if acked not in (0, len(payload)) or (fastopen and acked):
        raise deviates(f"the SYN/ACK acknowledges {acked} bytes of the SYN's data, sent with "
                       f"a cookie the IUT must not take: {synack.describe()}")  # fmt: skip
    key = synack.need(MpCapable).sender_key
    if key is None:
        raise deviates(f"SYN/ACK MP_CAPABLE carries no key: {synack.describe()}")
    conn.learn_remote_key(key)
    conn.start_data()
    sf.send("A", [MpCapable(version=1, flags=MPC_FLAG_H, sender_key=conn.local_key,
                            receiver_key=key)])  # fmt: skip
    more = payload if not acked else b", then the first data"
    t.first_data_v1(conn, sf, more)
    expected = more if not acked else payload + more
    echoed = b""
    while len(echoed) < len(expected):
        echo = sf.expect(data=True, within=1, what="the echo, once")
        echoed += echo.payload
        sf.send("A", [conn.data_ack()])
    if echoed != expected:
        raise deviates(f"echoed {echoed!r}, expected {expected!r} once")
    sf.expect_none(data=True, within=0.2, what="the data a second time")
    return _tfo_cookie(synack) or b""


def _tfo_accept(
    ctx: Context, syn: Segment, tfo: bytes = b"", *, take_data: bool = True
) -> tuple[MptcpConnection, Subflow]:
    """The tester's SYN/ACK to the IUT's MP_CAPABLE SYN: MSS, `tfo` (a cookie), and
    MP_CAPABLE v1 with Key-B; it acknowledges the SYN's data, if any, when `take_data`
    (else the SYN alone, as a server that rejects the cookie)."""
    t = ctx.tester
    conn = t.connection(1)
    sf = t.accept(syn)
    sf.rcv_nxt = (syn.seq + 1 + (len(syn.payload) if take_data else 0)) & 0xFFFFFFFF
    sf.connection = conn
    conn.subflows.append(sf)
    capable = MpCapable(version=1, flags=MPC_FLAG_H, sender_key=conn.local_key)
    sf.send("SA", raw_options=t.mss(sf.local).emit() + tfo + capable.emit())
    return conn, sf


def _iut_syn_with_cookie(ctx: Context) -> Segment:
    """The IUT (TFO on) connects and asks for a cookie on its MP_CAPABLE SYN (`expect`:
    it opens a connection); the tester gives one, and the IUT's next connection's SYN
    must carry that cookie, data and MP_CAPABLE v1 without a key: returned."""
    ctx.iut.enable_fastopen()
    t = ctx.tester
    syn = iut_syn(ctx, mode="source", nbytes=100)
    if syn.payload or not any(isinstance(o, UnknownTcpOption) and o.raw == TFO_COOKIE_REQUEST
                              for o in syn.options):  # fmt: skip
        raise deviates(f"the first SYN is not a TFO cookie request: {syn.describe()}")
    cookie = bytes(range(0xC0, 0xC8))
    _, sf = _tfo_accept(ctx, syn, bytes((TFO_KIND, 2 + len(cookie))) + cookie)
    sf.expect_next("A", MpCapable, within=1, what="third ACK with MP_CAPABLE",
                   skip=syn_again(sf))  # fmt: skip
    sf.send("R")
    # a second connection: the cookie, the data and MP_CAPABLE on the SYN
    # (more than a SYN holds: the application's shutdown comes once the handshake is
    # done; Linux aborts a connection shut down in SYN-SENT with MP_FASTCLOSE)
    ctx.iut.connect(t.address("eth0"), ctx.port, mode="source", nbytes=20_000)
    second = t.expect("S", MpCapable, dport=ctx.port, within=5, what="the second SYN",
                      where=lambda s: s.sport != syn.sport)  # fmt: skip
    if _tfo_cookie(second) != cookie or not second.payload:
        raise deviates(f"the second SYN does not carry the cookie and data: {second.describe()}")
    _capable_format(second, "SYN", version=1, key=False)
    return second


def _third_ack_with_both_keys(
    ctx: Context, syn: Segment, *, take_data: bool = True
) -> tuple[MptcpConnection, Subflow, Segment]:
    """The tester's SYN/ACK to the IUT's SYN (`_tfo_accept`); the IUT's next segment
    (`expect_next`, its SYN sent again excepted) is the third ACK with both keys."""
    conn, sf = _tfo_accept(ctx, syn, take_data=take_data)
    ack = sf.expect_next("A", MpCapable, within=1, what="third ACK with MP_CAPABLE",
                         skip=syn_again(sf))  # fmt: skip
    option = ack.need(MpCapable)
    if option.receiver_key != conn.local_key or option.sender_key is None:
        raise deviates(f"third ACK MP_CAPABLE without both keys: {ack.describe()}")
    conn.learn_remote_key(option.sender_key)
    conn.start_data()
    return conn, sf, ack


@case(
    section="B.1",
    level=SHOULD,
    role=INITIATOR,
    expected="An initiator with TCP Fast Open asks for a cookie on its MP_CAPABLE SYN; "
    "holding the cookie from that connection, its next connection's SYN carries the "
    "cookie, its first data and MP_CAPABLE v1 (no key), and after a SYN/ACK that "
    "acknowledges the data its third ACK carries both keys.",
)
def initiator_tfo_cookie_then_syn_data(ctx: Context) -> None:
    """expect for the SYNs, which open connections (nothing to answer); expect_next for
    the third ACK, the answer to the SYN/ACK (its SYN sent again excepted). RFC 8684
    Appendix B.1 and B.3: the cookie request and then the cookie ride on MP_CAPABLE
    SYNs, and the SYN's data goes with the v1 SYN's MP_CAPABLE (no key)."""
    second = _iut_syn_with_cookie(ctx)
    _third_ack_with_both_keys(ctx, second)


# --------------------------------------------------------------------------------------
# Issue 13, part 2 (packetdrill fastopen/): the no-cookie modes both ways, the initiator
# whose cookie is rejected, the listener whose key was replaced.
TFO_SYSCTL = "net.ipv4.tcp_fastopen"
TFO_SERVER_NO_COOKIE = 0x200  # Linux: TFO_SERVER_COOKIE_NOT_REQD
TFO_CLIENT_NO_COOKIE = 0x4  # Linux: TFO_CLIENT_NO_COOKIE


@case(
    section="B.2",
    level=MAY,
    role=LISTENER,
    expected="A listener configured to take Fast Open data without a cookie acknowledges "
    "the data of an MP_CAPABLE SYN that carries no TFO option in its SYN/ACK (with "
    "MP_CAPABLE and Key-B), and the data reaches the application once and first.",
)
def tfo_syn_data_without_cookie_taken(ctx: Context) -> None:
    """expect_next for the SYN/ACK, the answer to the SYN; expect for the echo, which a
    pure ACK may precede. RFC 7413 §3 leaves the cookie to the server's policy (Linux:
    net.ipv4.tcp_fastopen 0x200, packetdrill fastopen/server "no cookie"); RFC 8684
    Appendix B.2 has the SYN's data delivered first, the IUT's own data mapped from
    IDSN-B + 1."""
    ctx.iut.enable_fastopen()
    ctx.iut.set_sysctl(TFO_SYSCTL, 3 | TFO_SERVER_NO_COOKIE)
    ctx.iut.listen(ctx.port)
    payload = b"data on the SYN, no cookie"
    _syn_data_taken(ctx, _tfo_syn(ctx, b"", payload), payload)


@case(
    section="B.2",
    level=SHOULD,
    role=LISTENER,
    expected="A Fast Open cookie the IUT issued before its server key was replaced no "
    "longer validates: the SYN/ACK (MP_CAPABLE, Key-B) acknowledges only the SYN and "
    "offers no cookie but a new one, and the data, sent again after the handshake, "
    "reaches the application once.",
)
def tfo_cookie_of_replaced_key_rejected(ctx: Context) -> None:
    """expect_next for the SYN/ACKs, the answers to the SYNs; expect for the echo, which a
    pure ACK may precede. RFC 7413 §4.1.2: the cookie is a MAC under the server's secret
    key, and a server that changes its key stops validating cookies made with the old
    one (Linux: net.ipv4.tcp_fastopen_key; packetdrill fastopen/server "key"); RFC 8684
    Appendix B.2: the SYN's data then goes as the first data."""
    ctx.iut.set_sysctl("net.ipv4.tcp_fastopen_key", "00000001-00000002-00000003-00000004")
    first, _, cookie = _tfo_cookie_from_listener(ctx)
    first.send("R")
    ctx.iut.set_sysctl("net.ipv4.tcp_fastopen_key", "0000000a-0000000b-0000000c-0000000d")
    payload = b"data on the SYN, under the old key's cookie"
    sf = _tfo_syn(ctx, bytes((TFO_KIND, 2 + len(cookie))) + cookie, payload)
    offered = _syn_data_once(ctx, sf, payload, fastopen=True)
    if offered == cookie:
        raise deviates(f"the SYN/ACK offers the old key's cookie {cookie.hex()} again")


@case(
    section="B.1",
    level=MAY,
    role=INITIATOR,
    expected="An initiator configured to send Fast Open data without a cookie puts its "
    "first data on its MP_CAPABLE SYN (v1, no key), and after a SYN/ACK that acknowledges "
    "the data its third ACK carries both keys.",
)
def initiator_tfo_syn_data_without_cookie(ctx: Context) -> None:
    """expect for the SYN, which opens the connection (nothing to answer); expect_next for
    the third ACK, the answer to the SYN/ACK. RFC 7413 §3 leaves the cookie to policy
    (Linux: net.ipv4.tcp_fastopen 0x4, packetdrill fastopen/client "no cookie"); RFC 8684
    Appendix B.3: the SYN's data goes with the v1 SYN's MP_CAPABLE (no key)."""
    ctx.iut.enable_fastopen()
    ctx.iut.set_sysctl(TFO_SYSCTL, 3 | TFO_CLIENT_NO_COOKIE)
    # more than a SYN holds: the shutdown comes after the handshake (as in the cookie case)
    syn = iut_syn(ctx, mode="source", nbytes=20_000)
    if not syn.payload:
        raise deviates(f"the SYN carries no data: {syn.describe()}")
    _capable_format(syn, "SYN", version=1, key=False)
    _third_ack_with_both_keys(ctx, syn)


@case(
    section="B.3",
    level=MUST,
    role=INITIATOR,
    expected="When the SYN/ACK acknowledges only the SYN (the cookie rejected), the "
    "initiator's next segment carries MP_CAPABLE with both keys, and it sends its SYN's "
    "data again as the connection's first data: from relative sequence 1, mapped at "
    "IDSN-A + 1.",
)
def initiator_tfo_rejected_cookie_data_sent_again(ctx: Context) -> None:
    """expect for the SYNs and the data (they are the IUT's own); expect_next for the
    third ACK, the answer to the SYN/ACK: whether it carries data or not, it must carry
    MP_CAPABLE with both keys (RFC 8684 §3.1: the initiator's first segment after the
    SYN/ACK completes MP_CAPABLE; a listener that gets data without it falls back, §3.7).
    RFC 7413 §4.2.2 (and TCP): data the SYN/ACK does not acknowledge is retransmitted;
    RFC 8684 Appendix B.3: it is then the first data, mapped from IDSN-A + 1
    (MP_CAPABLE's implicit mapping, or a DSS)."""
    second = _iut_syn_with_cookie(ctx)
    conn, sf, ack = _third_ack_with_both_keys(ctx, second, take_data=False)
    data = ack if ack.payload else sf.expect(data=True, within=1, what="the SYN's data again")
    if (data.seq - (sf.irs or 0)) & 0xFFFFFFFF != 1:
        raise deviates(f"the first data is not at relative sequence 1: {data.describe()}")
    if not data.payload.startswith(second.payload[: len(data.payload)]):
        raise deviates(f"the first data is not the SYN's: {data.describe()}")
    dss = data.option(Dss)
    if dss is not None and dss.dsn is not None:
        dsn = dss.dsn if dss.dsn_64 else dss.dsn | (conn.data_rcv_nxt & ~0xFFFFFFFF)
        if dsn != conn.data_rcv_nxt and dsn != conn.remote_idsn + 1:
            raise deviates(f"the SYN's data mapped at DSN {dsn:#x}, not IDSN-A + 1 "
                           f"{conn.remote_idsn + 1:#x}: {data.describe()}")  # fmt: skip
    elif data.option(MpCapable) is None:
        raise deviates(f"the SYN's data has neither a mapping nor MP_CAPABLE: {data.describe()}")


# --------------------------------------------------------------------------------------
# Issue 13, part 2 (mptcp_join.sh "deny_join_id0"): a listener that takes no joins at its
# initial address says so with C, and keeps to it.
ALLOW_JOIN_INITIAL = "net.mptcp.allow_join_initial_addr_port"


def _c_flag_listener(ctx: Context) -> MptcpConnection:
    """The IUT listens configured to take no joins at its initial address and port
    (Linux: net.mptcp.allow_join_initial_addr_port=0); the tester connects: the SYN/ACK
    (`expect_next`, `Tester.connect`) must carry C, and the connection echoes."""
    ctx.iut.set_limits(2, 0)
    ctx.iut.set_sysctl(ALLOW_JOIN_INITIAL, 0)
    ctx.iut.listen(ctx.port)
    conn, sf = ctx.tester.connect(ctx.port, version=ctx.version)
    synack = next(s for s in ctx.tester.received(sf.owns) if s.flags & SYN)
    if not synack.need(MpCapable).flags & MPC_FLAG_C:
        raise deviates(f"the SYN/ACK does not set C: {synack.describe()}")
    exchange(ctx, conn, sf, b"hello", first=True)
    return conn


@case(
    section="3.1",
    level=MAY,
    role=LISTENER,
    topology="dual_homed",
    expected="A listener configured to take no joins at its initial address sets C in its "
    "SYN/ACK, and still accepts a join to its other address (eth1): SYN/ACK with a valid "
    "HMAC-B, then the fourth ACK.",
)
def listener_c_flag_accepts_join_to_other_address(ctx: Context) -> None:
    """expect_next (`Tester.connect`, `joined`): the SYN/ACKs and the fourth ACK answer
    the SYNs and the third ACK. RFC 8684 §3.1: C says the sender "will not accept
    additional MPTCP subflows to the source address and port" (the MUST is the peer's:
    not to try); the host's other addresses still take joins (mptcp_join.sh
    "deny_join_id0"). Linux still accepts a join to the initial address after setting C;
    the RFC does not require the refusal, so no case asks for it."""
    conn = _c_flag_listener(ctx)
    joined(ctx, conn, ifname="eth1")  # to the IUT's eth1 address
