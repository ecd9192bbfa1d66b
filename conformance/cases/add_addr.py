"""ADD_ADDR and REMOVE_ADDR: announcements, HMAC, echo, port, removal (RFC 8684 §3.4).

ADD_ADDR differs between the versions: v1's carries an E (echo) bit and a 64-bit HMAC
and is retransmitted until echoed; v0's (RFC 6824 §3.4.1) carries an IP version nibble,
no HMAC and is never echoed (8 or 10 bytes for IPv4). REMOVE_ADDR is the same in both.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import time
from typing import Any

from conformance.cases import LISTENER, MAY, MUST, SHOULD, Context, case
from conformance.cases.steps import (
    complete_iut_join,
    established,
    exchange,
    joined,
    pure_ack,
)
from conformance.model import deviates
from conformance.tester import MptcpConnection, Pattern, Segment, Subflow
from stack import crypto
from stack.wire.mptcp import AddAddrV0, AddAddrV1, MpJoinSyn, RemoveAddr
from stack.wire.tcp import FIN, RST

ECHO_TRANSIT = 0.1  # s: ample for a frame across a veth and the IUT's handling

DUAL = "dual_homed"


def _announce(ctx: Context, **endpoint: Any) -> tuple[MptcpConnection, Subflow, Segment]:
    """The IUT announces its signal endpoint on eth1: its ADD_ADDR of the case's version."""
    address = ctx.iut_address("eth1")
    ctx.iut.add_endpoint(address, flags={"signal"}, **endpoint)
    conn, sf = established(ctx)
    kind = AddAddrV1 if ctx.version == 1 else AddAddrV0
    announce = sf.expect(option=kind, within=1, what=f"ADD_ADDR v{ctx.version}", where=_not_echo)
    return conn, sf, announce


def _not_echo(segment: Segment) -> bool:
    option = segment.option(AddAddrV1)
    return option is None or not option.echo


def _acknowledge(ctx: Context, conn: MptcpConnection, sf: Subflow, announce: Segment) -> int:
    """Echo a v1 announcement (v0 has no echo); returns its address ID."""
    if ctx.version == 0:
        return announce.need(AddAddrV0).address_id
    option = announce.need(AddAddrV1)
    sf.send("A", [AddAddrV1(option.address_id, option.address, option.port, None, True),
                  conn.data_ack()])  # fmt: skip
    return option.address_id


@case(
    ipv6=True,
    section="3.4.1",
    level=MUST,
    role=LISTENER,
    versions=(0,),
    topology=DUAL,
    expected="The v0 IUT announces its signal endpoint with a v0 ADD_ADDR: the IP version "
    "of the address (4: 8 bytes; 6: 20 bytes), the address, no port, no HMAC.",
)
def iut_add_addr_v0_form(ctx: Context) -> None:
    """expect: the IUT's ADD_ADDR is its own announcement, not an answer; data ACKs may come
    first."""
    _, _, announce = _announce(ctx)
    option = announce.need(AddAddrV0)
    if str(option.address) != ctx.iut_address("eth1"):
        raise deviates(f"announced {option.address}, not the endpoint: {announce.describe()}")
    if option.port is not None:
        raise deviates(f"a port the endpoint does not have: {announce.describe()}")
    if option.address_id == 0:
        raise deviates(f"address ID 0 (the initial address's): {announce.describe()}")


@case(
    ipv6=True,
    section="3.4.1",
    level=MUST,
    role=LISTENER,
    topology=DUAL,
    expected="The IUT's ADD_ADDR (v1) for its signal endpoint carries the address and the "
    "rightmost 64 bits of HMAC-SHA256(Key-B‖Key-A, ID‖address‖port).",
)
def iut_add_addr_hmac_valid(ctx: Context) -> None:
    """expect: the IUT's ADD_ADDR is its own announcement, not an answer; data ACKs may come
    first."""
    conn, _, announce = _announce(ctx)
    option = announce.need(AddAddrV1)
    expected = crypto.add_addr_hmac(
        conn.remote_key or 0, conn.local_key, option.address_id, option.address, option.port
    )
    if str(option.address) != ctx.iut_address("eth1"):
        raise deviates(f"announced {option.address}, not the endpoint: {announce.describe()}")
    if option.hmac != expected:
        raise deviates(f"ADD_ADDR HMAC {option.hmac!r}, expected {expected.hex()}")


@case(
    section="3.4.1",
    level=MUST,
    role=LISTENER,
    topology=DUAL,
    expected="An endpoint with a port is announced with that port, and the HMAC covers it.",
)
def iut_add_addr_with_port(ctx: Context) -> None:
    """expect: the IUT's ADD_ADDR is its own announcement, not an answer; data ACKs may come
    first."""
    conn, _, announce = _announce(ctx, port=6001)
    option = announce.need(AddAddrV1)
    if option.port != 6001:
        raise deviates(f"expected port 6001: {announce.describe()}")
    expected = crypto.add_addr_hmac(
        conn.remote_key or 0, conn.local_key, option.address_id, option.address, 6001
    )
    if option.hmac != expected:
        raise deviates(f"ADD_ADDR HMAC does not cover the port: {announce.describe()}")


@case(
    section="3.4.1",
    level=SHOULD,
    role=LISTENER,
    topology=DUAL,
    expected="An ADD_ADDR that the tester does not echo is retransmitted.",
)
def iut_add_addr_retransmitted_until_echo(ctx: Context) -> None:
    """expect: retransmissions come on a timer, not in answer to a segment."""
    ctx.iut.set_sysctl("net.mptcp.add_addr_timeout", 1)
    _, sf, first = _announce(ctx)
    again = sf.expect(option=AddAddrV1, within=2.5, what="the ADD_ADDR again", where=_not_echo)
    if again.need(AddAddrV1).address != first.need(AddAddrV1).address:
        raise deviates(f"a different address was announced: {again.describe()}")


@case(
    section="3.4.1",
    level=MUST,
    role=LISTENER,
    topology=DUAL,
    expected="An ADD_ADDR echoed by the tester (E=1) stops the retransmissions.",
)
def iut_add_addr_echo_stops_retransmission(ctx: Context) -> None:
    """expect_none: no retransmission after the echo."""
    ctx.iut.set_sysctl("net.mptcp.add_addr_timeout", 1)
    conn, sf, first = _announce(ctx)
    echoed = time.time()  # the clock of Segment.time
    _acknowledge(ctx, conn, sf, first)

    # A resend that arrives before the echo can have reached the IUT is its timer doing
    # its job (a loaded tester may echo late); only a later one shows the echo ignored.
    def resent_after_echo(segment: Segment) -> bool:
        return _not_echo(segment) and segment.time > echoed + ECHO_TRANSIT

    sf.expect_none(option=AddAddrV1, within=1.3, what="a retransmitted ADD_ADDR after the echo",
                   where=resent_after_echo)  # fmt: skip


def _v0_announcement_joined(ctx: Context, port: int | None) -> None:
    """The tester announces its eth1 address with a v0 ADD_ADDR (with `port`); the IUT,
    allowed 2 accepted addresses, joins it: its join SYN carries the tester's token
    (SHA-1) and its third ACK the 160-bit HMAC-SHA1 HMAC-A."""
    ctx.iut.set_limits(2, 2)
    conn, sf = established(ctx)
    address = ipaddress.IPv4Address(ctx.tester.address("eth1"))
    sf.send("A", [AddAddrV0(5, address, port), conn.data_ack()])
    wanted = sf.lport if port is None else port  # no port: the initial subflow's (ours)
    syn = ctx.tester.expect(
        "S", MpJoinSyn, within=2, what=f"a join SYN to {address} port {wanted}",
        where=lambda s: s.dst == str(address) and s.dport == wanted,
    )  # fmt: skip
    complete_iut_join(ctx, conn, syn)  # the token and HMAC-A in v0: SHA-1's


@case(
    section="3.4.1",
    level=MUST,
    role=LISTENER,
    versions=(0,),
    topology=DUAL,
    expected="A v0 ADD_ADDR (8 bytes: IP version 4, no port, no HMAC) for the tester's "
    "second address is accepted: the IUT joins it at the initial subflow's port (token "
    "from SHA-1, HMAC-A the whole HMAC-SHA1).",
)
def tester_add_addr_v0_leads_to_join(ctx: Context) -> None:
    """expect for the join SYN, which opens a new subflow; expect_next for the third ACK, the answer
    to the SYN/ACK."""
    _v0_announcement_joined(ctx, None)


@case(
    section="3.4.1",
    level=MUST,
    role=LISTENER,
    versions=(0,),
    topology=DUAL,
    expected="A v0 ADD_ADDR with a port (10 bytes) is accepted: the IUT joins the "
    "announced address at that port.",
)
def tester_add_addr_v0_with_port_leads_to_join(ctx: Context) -> None:
    """expect for the join SYN, which opens a new subflow; expect_next for the third ACK, the answer
    to the SYN/ACK."""
    _v0_announcement_joined(ctx, 6002)


def _tester_announce(
    ctx: Context, *, good: bool, limits: bool | tuple[int, int] = True,
    port: int | None = None, address: str | None = None,
) -> tuple[MptcpConnection, Subflow]:  # fmt: skip
    """The tester announces its eth1 address (or `address`) with `port`, ID 5, with a
    v1 ADD_ADDR; with `limits` the IUT may accept 2 addresses (or takes the limits
    given), else it keeps its defaults (Linux's: accept none)."""
    if limits is True:
        ctx.iut.set_limits(2, 2)
    elif limits:
        ctx.iut.set_limits(*limits)
    conn, sf = established(ctx)
    announced = ipaddress.ip_address(address or ctx.tester.address("eth1"))
    mac = crypto.add_addr_hmac(conn.local_key, conn.remote_key or 0, 5, announced, port)
    if not good:
        mac = bytes(b ^ 0xFF for b in mac)
    sf.send("A", [AddAddrV1(5, announced, port, mac), conn.data_ack()])
    return conn, sf


# the tester announces its second address to the IUT (a listener): the cases' common part
_tester_announces = functools.partial(
    case, section="3.4.1", level=MUST, role=LISTENER, topology=DUAL
)


def _expect_echo(
    ctx: Context, *, limits: bool | tuple[int, int], port: int | None = None,
    address: str | None = None,
) -> Segment:  # fmt: skip
    """The tester announces (`_tester_announce` with `limits`, `port`, `address`); the
    IUT's next segment on the subflow (`expect_next`) is the echo: E=1, the same ID (5),
    address (the tester's eth1, or `address`) and port, no HMAC."""
    _, sf = _tester_announce(ctx, good=True, limits=limits, port=port, address=address)
    echo = sf.expect_next(
        option=AddAddrV1,
        within=1,
        what="the ADD_ADDR echo",
        where=lambda s: s.need(AddAddrV1).echo,
    )
    option = echo.need(AddAddrV1)
    announced = ipaddress.ip_address(address or ctx.tester.address("eth1"))
    if option.address_id != 5 or option.address != announced or option.port != port:
        raise deviates(f"echo of another ID, address or port: {echo.describe()}")
    if option.hmac is not None:
        raise deviates(f"echo with an HMAC: {echo.describe()}")
    return echo


@_tester_announces(
    ipv6=True,
    expected="A valid ADD_ADDR from the tester is echoed: ADD_ADDR with E=1, the same ID "
    "and address, and no HMAC.",
)
def tester_add_addr_echoed(ctx: Context) -> None:
    """expect_next: the echo is the answer to the ADD_ADDR (§3.4.1)."""
    _expect_echo(ctx, limits=True)


@_tester_announces(
    expected="With no endpoints and the default limits (no announced address accepted), "
    "the IUT still echoes a valid ADD_ADDR from the tester: E=1, the same ID and address, "
    "no HMAC (the receiver echoes whether or not it uses the address).",
)
def tester_add_addr_echoed_without_endpoints(ctx: Context) -> None:
    """expect_next: the echo is the answer to the ADD_ADDR (§3.4.1)."""
    _expect_echo(ctx, limits=False)


@_tester_announces(
    expected="An ADD_ADDR whose HMAC is wrong is ignored: no echo, no join to the address.",
)
def tester_add_addr_bad_hmac_ignored(ctx: Context) -> None:
    """expect_none: no echo is the prescribed behaviour."""
    _tester_announce(ctx, good=False)
    ctx.tester.expect_none(option=AddAddrV1, within=0.5, what="an ADD_ADDR echo")


@case(
    ipv6=True,
    section="3.4.1",
    level=MUST,
    role=LISTENER,
    versions=(0,),
    topology=DUAL,
    expected="A v0 ADD_ADDR (no HMAC, IP version nibble; 8 bytes for IPv4, 20 for IPv6) "
    "for the tester's second address is accepted: the connection goes on carrying data.",
)
def tester_add_addr_v0(ctx: Context) -> None:
    """expect: the echo may follow a pure ACK of the data."""
    conn, sf = established(ctx)
    address = ipaddress.ip_address(ctx.tester.address("eth1"))
    sf.send("A", [AddAddrV0(5, address), conn.data_ack()])
    exchange(ctx, conn, sf, b"after the v0 ADD_ADDR")


def _expect_closed(removed: Subflow) -> None:
    """The IUT's next segment on a removed subflow closes it (RST or FIN; pure ACKs
    skipped: the RFC prescribes the closing, not that nothing precede it)."""
    removed.expect_next(
        within=1, what="RST or FIN on the removed subflow",
        where=lambda s: bool(s.flags & (RST | FIN)), skip=pure_ack,
    )  # fmt: skip


def _removed(
    ctx: Context, conn: MptcpConnection, *, on: Subflow, address_id: int, closes: Subflow
) -> None:
    """REMOVE_ADDR for `address_id` sent on `on` closes the subflow `closes`
    (`_expect_closed`); the connection goes on on `on` (its echo: `expect`)."""
    on.send("A", [RemoveAddr((address_id,)), conn.data_ack()])
    _expect_closed(closes)
    exchange(ctx, conn, on, b"still here", on=on)


@case(
    ipv6=True,
    section="3.4.2",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    topology=DUAL,
    expected="REMOVE_ADDR for the address ID of the tester's joined subflow makes the IUT "
    "close that subflow (RST or FIN) while the connection goes on.",
)
def remove_addr_closes_subflow(ctx: Context) -> None:
    """expect_next: closing the removed subflow (RST or FIN) is the prescribed answer to
    REMOVE_ADDR (§3.4.2); pure ACKs may come first (Linux sends one: the RFC prescribes the
    closing, not that nothing precedes it), nothing else; expect for the echo after it."""
    conn, first = established(ctx)
    second = joined(ctx, conn, address_id=4)
    _removed(ctx, conn, on=first, address_id=4, closes=second)


@case(
    section="3.4.2",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    topology=DUAL,
    expected="When the IUT removes an announced endpoint, it sends REMOVE_ADDR with that "
    "address ID.",
)
def iut_remove_addr_on_endpoint_removal(ctx: Context) -> None:
    """expect: REMOVE_ADDR follows a local change, not a segment; other traffic may come first."""
    _announced_then_removed(ctx)


def _announced_then_removed(ctx: Context, **endpoint: Any) -> None:
    """The IUT announces its eth1 endpoint (`_announce`, with `endpoint`'s settings), the
    tester echoes it (v1), the endpoint is removed: a REMOVE_ADDR with the announced ID
    must follow (`expect`: it follows a local change, other traffic may come first)."""
    conn, sf, announce = _announce(ctx, **endpoint)
    address_id = _acknowledge(ctx, conn, sf, announce)
    ctx.iut.delete_endpoint(ctx.iut_address("eth1"))
    removal = sf.expect(option=RemoveAddr, within=1, what="REMOVE_ADDR")
    if address_id not in removal.need(RemoveAddr).address_ids:
        raise deviates(f"REMOVE_ADDR without ID {address_id}: {removal.describe()}")


@case(
    section="3.4.2",
    level=SHOULD,
    versions=(0, 1),
    role=LISTENER,
    expected="REMOVE_ADDR for an address ID that no subflow uses changes nothing: the "
    "connection goes on carrying data.",
)
def remove_addr_unknown_id_ignored(ctx: Context) -> None:
    """expect: the echo may follow a pure ACK of the data."""
    conn, sf = established(ctx)
    sf.send("A", [RemoveAddr((99,)), conn.data_ack()])
    exchange(ctx, conn, sf, b"unchanged", on=sf)


# --------------------------------------------------------------------------------------
# Issue 13, part 2: the echo of an ADD_ADDR with a port and of an IPv6 one (the `_ipv6`
# variant of `tester_add_addr_echoed`), the IUT's ADD_ADDR right after the third ACK, the
# retransmission count, `add_addr_accepted 0`, REMOVE_ADDR with several IDs, an IPv4
# ADD_ADDR on an IPv6 connection.


@_tester_announces(
    expected="A valid ADD_ADDR with a port from the tester is echoed with that port: E=1, "
    "the same ID, address and port, no HMAC.",
)
def tester_add_addr_with_port_echoed(ctx: Context) -> None:
    """expect_next: the echo is the answer to the ADD_ADDR (§3.4.1)."""
    _expect_echo(ctx, limits=True, port=6002)


@case(
    section="3.4.1",
    level=MAY,
    versions=(0, 1),
    role=LISTENER,
    topology=DUAL,
    expected="The IUT announces its signal endpoint as soon as the connection is "
    "established, right after the MP_CAPABLE third ACK and before any data (as Linux "
    "does): its next segment after the third ACK, pure ACKs excepted, is the ADD_ADDR.",
)
def iut_add_addr_after_third_ack(ctx: Context) -> None:
    """expect_next (pure ACKs skipped): nothing else is due from the IUT after the third
    ACK; the ADD_ADDR must not wait for data."""
    ctx.iut.add_endpoint(ctx.iut_address("eth1"), flags={"signal"})
    ctx.iut.listen(ctx.port)
    _, sf = ctx.tester.connect(ctx.port, version=ctx.version)
    kind: type[AddAddrV1] | type[AddAddrV0] = AddAddrV1 if ctx.version == 1 else AddAddrV0
    announce = sf.expect_next(option=kind, within=0.5, where=_not_echo, skip=pure_ack,
                              what=f"ADD_ADDR v{ctx.version} after the third ACK")  # fmt: skip
    option: AddAddrV1 | AddAddrV0 = announce.need(kind)
    if str(option.address) != ctx.iut_address("eth1"):
        raise deviates(f"announced {option.address}, not the endpoint: {announce.describe()}")


ADD_ADDR_RETRANSMISSIONS = 3  # Linux's ADD_ADDR_RETRANS_MAX; the RFC leaves the count open


@case(
    section="3.4.1",
    level=SHOULD,
    role=LISTENER,
    topology=DUAL,
    expected="An ADD_ADDR that is never echoed is sent again a bounded number of times "
    "(add_addr_timeout 1 s, the longest wait; Linux 6.18 starts from the subflow's RTO and "
    "doubles), as Linux does: 3 retransmissions, then no more.",
)
def iut_add_addr_retransmission_count(ctx: Context) -> None:
    """next_matching: counts every announcement on a timer (none answers a segment)
    until 1.6 s pass without one."""
    ctx.iut.set_sysctl("net.mptcp.add_addr_timeout", 1)
    _, sf, first = _announce(ctx)
    times = [first.time]
    pattern = Pattern(option=AddAddrV1, where=_not_echo, what="the ADD_ADDR again")
    while len(times) <= ADD_ADDR_RETRANSMISSIONS + 2:
        again = ctx.tester.next_matching(pattern, 1.6, owner=sf.owns)
        if again is None:
            break
        times.append(again.time)
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(times)]
    if len(times) - 1 != ADD_ADDR_RETRANSMISSIONS:
        raise deviates(f"{len(times) - 1} retransmissions of an unechoed ADD_ADDR (gaps "
                       f"{gaps} s), expected {ADD_ADDR_RETRANSMISSIONS}")  # fmt: skip


@case(
    section="3.4.1",
    level=SHOULD,
    versions=(0, 1),
    role=LISTENER,
    topology=DUAL,
    expected="Configured to accept no announced address (add_addr_accepted 0, 2 "
    "subflows allowed), the IUT still echoes the tester's ADD_ADDR (v1) but opens no "
    "subflow to the address.",
)
def add_addr_accepted_0_echoes_without_joining(ctx: Context) -> None:
    """expect_next: the echo is the answer to the ADD_ADDR (v1); expect_none: no join
    SYN within 0.5 s."""
    if ctx.version == 1:
        _expect_echo(ctx, limits=(2, 0))
    else:
        ctx.iut.set_limits(2, 0)
        conn, sf = established(ctx)
        address = ipaddress.ip_address(ctx.tester.address("eth1"))
        sf.send("A", [AddAddrV0(5, address), conn.data_ack()])
    ctx.tester.expect_none("S", MpJoinSyn, within=0.5, what="a join SYN to the address")


@case(
    section="3.4.2",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    topology=DUAL,
    expected="REMOVE_ADDR with two address IDs (4 and 6, the tester's two joined "
    "subflows) makes the IUT close both subflows (RST or FIN) while the connection goes "
    "on on the first.",
)
def remove_addr_several_ids(ctx: Context) -> None:
    """expect_next on each removed subflow (pure ACKs skipped, as in
    `remove_addr_closes_subflow`): closing is the prescribed answer; expect for the echo."""
    ctx.iut.set_limits(3, 0)
    conn, first = established(ctx)
    second = joined(ctx, conn, address_id=4)
    third = joined(ctx, conn, ifname="eth0", address_id=6)  # another port of eth0
    first.send("A", [RemoveAddr((4, 6)), conn.data_ack()])
    for removed in (second, third):
        _expect_closed(removed)
    exchange(ctx, conn, first, b"the first subflow stays", on=first)


@case(
    section="3.4.1",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    family=6,
    expected="An ADD_ADDR carrying an IPv4 address (the tester's) on an IPv6 connection "
    "is valid: v1 echoes it (E=1, the IPv4 address, no HMAC), and the connection goes on "
    "carrying data.",
)
def tester_add_addr_ipv4_on_ipv6_connection(ctx: Context) -> None:
    """expect_next: the echo is the answer to the ADD_ADDR (v1); expect for the data echo,
    which pure ACKs may precede."""
    address = ctx.tester.address("eth0", 4)
    if ctx.version == 1:
        echo = _expect_echo(ctx, limits=True, address=address)
        conn = ctx.tester.connections[-1]
        sf = next(s for s in conn.subflows if s.owns(echo))
    else:
        ctx.iut.set_limits(2, 2)
        conn, sf = established(ctx)
        sf.send("A", [AddAddrV0(5, ipaddress.ip_address(address)), conn.data_ack()])
    exchange(ctx, conn, sf, b"after an IPv4 ADD_ADDR", on=sf)


# --------------------------------------------------------------------------------------
# Issue 13, part 2 (more of mptcp_join.sh): address ID 0 removed both ways, an announced
# address that never answers, endpoints added and removed during the connection.


@case(
    ipv6=True,
    section="3.4.2",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    topology=DUAL,
    expected="REMOVE_ADDR carrying address ID 0 (the tester's initial address, the "
    "MP_CAPABLE subflow's), sent on a joined subflow, makes the IUT close the initial "
    "subflow (RST or FIN) while the connection goes on on the join.",
)
def remove_addr_id_0_closes_initial_subflow(ctx: Context) -> None:
    """expect_next on the initial subflow (pure ACKs skipped, as in
    `remove_addr_closes_subflow`): closing it is the prescribed answer (§3.4.2; the
    initial subflow's address has ID 0, §3.2); expect for the echo on the join."""
    conn, first = established(ctx)
    second = joined(ctx, conn, address_id=4)
    _removed(ctx, conn, on=second, address_id=0, closes=first)


@case(
    section="3.4.2",
    level=SHOULD,
    versions=(0, 1),
    role=LISTENER,
    topology=DUAL,
    expected="When the IUT stops using its initial address (the MP_CAPABLE subflow's, "
    "address ID 0), it sends REMOVE_ADDR carrying ID 0 and closes the initial subflow "
    "(RST or FIN); the connection goes on on the tester's join.",
)
def iut_remove_addr_id_0_when_initial_address_removed(ctx: Context) -> None:
    """expect: REMOVE_ADDR and the close follow a local change, not a segment; other
    traffic may come first; expect for the echo on the join. RFC 8684 §3.4.2: an address
    that is no longer valid SHOULD be announced removed, with the ID the peer knows it
    by: 0 for the initial subflow's address (§3.2). Linux: `ip mptcp endpoint delete id
    0 ADDR` (mptcp_join.sh "remove id 0 address"); the stack: its `remove_endpoint`
    command for an address that only the initial subflows use."""
    ctx.iut.set_limits(2, 0)
    conn, first = established(ctx)
    second = joined(ctx, conn, address_id=4)
    ctx.iut.delete_endpoint(ctx.iut_address("eth0"))
    removal = ctx.tester.expect_pattern(
        Pattern(option=RemoveAddr, what="REMOVE_ADDR"), 1,
        owner=lambda s: first.owns(s) or second.owns(s),
    )  # fmt: skip
    if 0 not in removal.need(RemoveAddr).address_ids:
        raise deviates(f"REMOVE_ADDR for the initial address without ID 0: {removal.describe()}")
    first.expect(within=1, what="RST or FIN on the initial subflow",
                 where=lambda s: bool(s.flags & (RST | FIN)))  # fmt: skip
    exchange(ctx, conn, second, b"on the join", on=second)


@case(
    section="3.4.1",
    level=SHOULD,
    versions=(0, 1),
    role=LISTENER,
    topology=DUAL,
    expected="A join to an announced address that never answers (the tester's eth1: its "
    "join SYN is black-holed) neither stalls the connection nor stops the IUT from "
    "joining a second announced address (the tester's eth0, another port).",
)
def unreachable_announced_address_connection_goes_on(ctx: Context) -> None:
    """expect for the join SYNs, which open subflows, and for the echo, which a pure ACK
    may precede; expect_next for the third ACK, the answer to the SYN/ACK. RFC 8684
    §3.4.1: an announced address may be unreachable, the host "MAY" try it; a failed
    attempt is a subflow's failure, not the connection's (mptcp_join.sh "signal invalid
    addresses": the valid one is still joined)."""
    ctx.iut.set_limits(3, 3)
    conn, sf = established(ctx)
    unreachable = ipaddress.ip_address(ctx.tester.address("eth1"))
    _send_add_addr(ctx, conn, sf, 5, unreachable, None)
    t = ctx.tester
    t.expect("S", MpJoinSyn, within=2, what=f"a join SYN to {unreachable}",
             where=lambda s: s.dst == str(unreachable))  # fmt: skip
    exchange(ctx, conn, sf, b"while the join hangs", on=sf)
    reachable = ipaddress.ip_address(ctx.tester.address("eth0"))
    _send_add_addr(ctx, conn, sf, 6, reachable, 6002)
    syn = t.expect("S", MpJoinSyn, within=2, what=f"a join SYN to {reachable} port 6002",
                   where=lambda s: s.dst == str(reachable) and s.dport == 6002)  # fmt: skip
    complete_iut_join(ctx, conn, syn)
    exchange(ctx, conn, sf, b"after the second join", on=sf)


def _send_add_addr(
    ctx: Context, conn: MptcpConnection, sf: Subflow, address_id: int,
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int | None,
) -> None:  # fmt: skip
    """The tester announces `address` (`port`) with ID `address_id`, in the case's version
    (v1 with its HMAC)."""
    if ctx.version == 0:
        sf.send("A", [AddAddrV0(address_id, address, port), conn.data_ack()])
        return
    mac = crypto.add_addr_hmac(conn.local_key, conn.remote_key or 0, address_id, address, port)
    sf.send("A", [AddAddrV1(address_id, address, port, mac), conn.data_ack()])


@case(
    ipv6=True,
    section="3.4.1",
    level=MAY,
    versions=(0, 1),
    role=LISTENER,
    topology=DUAL,
    expected="A signal endpoint added while a connection is open is announced on it: "
    "ADD_ADDR with the new address (v1: with a valid HMAC).",
)
def iut_add_addr_on_endpoint_added(ctx: Context) -> None:
    """expect: the ADD_ADDR follows a local change, not a segment; other traffic may come
    first. RFC 8684 §3.4.1: addresses may be announced at any time during a connection
    (mptcp_join.sh "add single address": `ip mptcp endpoint add ... signal` mid-connection)."""
    address = ctx.iut_address("eth1")
    _live_announcement(ctx, configured=address, announced=address)


@case(
    section="3.4.2",
    level=MUST,
    role=LISTENER,
    topology=DUAL,
    expected="When the IUT removes a signal endpoint that it announced with a port, it "
    "sends REMOVE_ADDR with the announced address ID (REMOVE_ADDR names IDs, not ports).",
)
def iut_remove_addr_of_endpoint_with_port(ctx: Context) -> None:
    """expect: REMOVE_ADDR follows a local change, not a segment; other traffic may come
    first. RFC 8684 §3.4.2 (mptcp_join.sh "remove signal address with port"). v1: RFC
    6824's ADD_ADDR port is announced the same way, but our v0 IUTs take no ports."""
    _announced_then_removed(ctx, port=6001)


@case(
    section="3.4.1",
    level=SHOULD,
    versions=(0, 1),
    role=LISTENER,
    topology=DUAL,
    expected="A signal endpoint given as an IPv4-mapped IPv6 address (::ffff:ADDR), added "
    "during an IPv4 connection, is announced as the IPv4 address ADDR (v1: a 16-byte "
    "ADD_ADDR, its HMAC over the 4-byte address; v0: IP version 4).",
)
def iut_announces_ipv4_mapped_endpoint_as_ipv4(ctx: Context) -> None:
    """expect: the ADD_ADDR follows a local change, not a segment; other traffic may come
    first. RFC 4291 §2.5.5.2: ::ffff:ADDR represents the IPv4 address ADDR, and RFC
    8684 §3.4.1 announces an IPv4 address in the IPv4 form (mptcp_join.sh "signal
    address IPv4-mapped")."""
    address = ctx.iut_address("eth1")
    _live_announcement(ctx, configured=f"::ffff:{address}", announced=address)


def _live_announcement(ctx: Context, *, configured: str, announced: str) -> None:
    """Once the connection is established, a signal endpoint `configured` is added: the
    IUT's ADD_ADDR of the case's version (`expect`: it follows a local change) must carry
    the address `announced` and, in v1, a valid HMAC."""
    conn, sf = established(ctx)
    ctx.iut.add_endpoint(configured, flags={"signal"})
    kind: type[AddAddrV1] | type[AddAddrV0] = AddAddrV1 if ctx.version == 1 else AddAddrV0
    announce = sf.expect(option=kind, within=1, where=_not_echo,
                         what=f"ADD_ADDR v{ctx.version} of endpoint {configured}")  # fmt: skip
    option: AddAddrV1 | AddAddrV0 = announce.need(kind)
    if option.address != ipaddress.ip_address(announced):
        raise deviates(f"announced {option.address}, not {announced}: {announce.describe()}")
    if isinstance(option, AddAddrV1):
        mac = crypto.add_addr_hmac(conn.remote_key or 0, conn.local_key, option.address_id,
                                   option.address, option.port)  # fmt: skip
        if option.hmac != mac:
            raise deviates(f"ADD_ADDR HMAC does not verify: {announce.describe()}")
