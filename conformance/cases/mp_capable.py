"""MP_CAPABLE: the handshake, version negotiation, flags, keys (RFC 8684 §3.1, RFC 6824 §3.1).

v0 and v1 differ most here: a v0 SYN carries Key-A (12 bytes) and a v1 SYN no key (4),
v1 repeats the keys on the first data (v0 does not), B set means "ignore this SYN" in
v0 but "ignore the option" in v1, and v0 asks for checksums by default (A SHOULD be set).
"""

from __future__ import annotations

from conformance.cases import INITIATOR, LISTENER, MUST, SHOULD, Context, case
from conformance.cases.steps import (
    capable_syn,
    established,
    has_mapping,
    initiated,
    iut_syn,
    plain_synack,
    syn_again,
    tester_syn,
    valid_checksum,
)
from conformance.iut.kernel import KernelIut
from conformance.model import deviates, not_applicable
from conformance.tester import Segment, TesterError
from testbed.mptcp import KernelMptcpError
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
from stack.wire.tcp import MaxSegmentSize


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
    always; `SyncookiesSent` and `MPCapableSYNRX`/`MPCapablePassive` back the verdict."""
    ctx.iut.set_sysctl("net.ipv4.tcp_syncookies", 2)  # NotSupported: not applicable
    conn, sf = established(ctx)
    echo = ctx.tester.received(lambda s: sf.owns(s) and bool(s.payload))[-1]
    if not has_mapping(echo):
        raise deviates(f"the echo under SYN cookies has no DSS mapping: {echo.describe()}")
    if isinstance(ctx.iut, KernelIut) and not _tcp_ext(ctx.iut).get("SyncookiesRecv"):
        raise TesterError("the kernel took the third ACK without a SYN cookie "
                          "(TcpExt SyncookiesRecv did not move): the case tested nothing")  # fmt: skip


def _tcp_ext(iut: KernelIut) -> dict[str, int]:
    """The kernel IUT's TcpExt MIB counters (SyncookiesSent, TCPFastOpenPassive, ...)."""
    with iut.host.entered(), open("/proc/thread-self/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return dict(zip(names.split()[1:], map(int, values.split()[1:]), strict=True))
    return {}
