"""Backup subflows: the B bit per direction, MP_PRIO, where data goes (RFC 8684 §3.2, §3.3.8).

RFC 6824 has the same B bit and the same 3-byte MP_PRIO for the subflow it arrives on;
it also has a 4-byte MP_PRIO naming an address ID, which RFC 8684 dropped.
"""

from __future__ import annotations

import time

from conformance.cases import INITIATOR, LISTENER, MUST, SHOULD, Context, case
from conformance.cases.steps import established, exchange, expect_fourth_ack, initiated, joined
from conformance.model import deviates
from conformance.tester import MptcpConnection, Pattern, Subflow
from stack.wire.mptcp import MpJoinSyn, MpJoinSynAck, MpPrio

DUAL = "dual_homed"


def _data_only_on(
    ctx: Context, conn: MptcpConnection, regular: Subflow, *, avoiding: Subflow,
    sending_on: Subflow,
) -> None:  # fmt: skip
    """Five echoes of data the tester sends on `sending_on` all come back on `regular`,
    and none on the backup subflow `avoiding`."""
    for index in range(5):
        exchange(ctx, conn, sending_on, f"echo {index}".encode(), on=regular)
    avoiding.expect_none(data=True, within=0.2, what="data on the backup subflow")


@case(
    section="3.2",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    topology=DUAL,
    expected="A join to an address that the IUT marks as backup carries B=1 in the "
    "SYN/ACK, although the tester's SYN had B=0.",
)
def synack_b_bit_from_backup_endpoint(ctx: Context) -> None:
    """expect_next (`Tester.join`): the SYN/ACK is the only answer to a join SYN."""
    ctx.iut.add_endpoint(ctx.iut_address("eth1"), flags={"signal", "backup"})
    conn, _ = established(ctx)
    _, synack = ctx.tester.join(conn, ctx.port, ifname="eth1", backup=False)
    if not synack.need(MpJoinSynAck).backup:
        raise deviates(f"SYN/ACK without B from a backup endpoint: {synack.describe()}")


@case(
    section="3.2",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    topology=DUAL,
    expected="The B bit is per direction, not an echo: a SYN with B=1 to a regular address "
    "gets a SYN/ACK with B=0.",
)
def synack_b_bit_is_not_an_echo(ctx: Context) -> None:
    """expect_next (`Tester.join`): the SYN/ACK is the only answer to a join SYN."""
    conn, _ = established(ctx)
    _, synack = ctx.tester.join(conn, ctx.port, ifname="eth1", backup=True)
    if synack.need(MpJoinSynAck).backup:
        raise deviates(f"SYN/ACK echoes B=1 from a regular address: {synack.describe()}")


@case(
    section="3.2",
    level=SHOULD,
    versions=(0, 1),
    role=LISTENER,
    topology=DUAL,
    expected="While the regular subflow is usable, the IUT sends no data on a subflow the "
    "tester joined as backup (B=1): its data goes on the regular subflow.",
)
def no_data_on_backup_while_regular_usable(ctx: Context) -> None:
    """expect_next for the fourth ACK (`joined`); expect for the echoes, which pure ACKs may
    precede."""
    conn, regular = established(ctx)
    backup = joined(ctx, conn, backup=True)
    _data_only_on(ctx, conn, regular, avoiding=backup, sending_on=backup)


@case(
    section="3.2",
    level=SHOULD,
    versions=(0, 1),
    role=LISTENER,
    topology=DUAL,
    expected="When the regular subflow is reset, the IUT moves its data to the backup subflow.",
)
def data_moves_to_backup_after_reset(ctx: Context) -> None:
    """expect_next for the fourth ACK (`joined`); expect for the echoes, which pure ACKs may
    precede."""
    conn, regular = established(ctx)
    backup = joined(ctx, conn, backup=True)
    regular.send("R", seq=regular.snd_nxt)
    exchange(ctx, conn, backup, b"after the reset", on=backup)


@case(
    section="3.2",
    level=SHOULD,
    versions=(0, 1),
    role=LISTENER,
    topology=DUAL,
    expected="When the regular path is blackholed, the IUT retransmits its data on the "
    "backup subflow.",
)
def data_moves_to_backup_when_blackholed(ctx: Context) -> None:
    """expect_next for the fourth ACK (`joined`); expect for the echo, which retransmissions on the
    dead path and pure ACKs may precede."""
    conn, _ = established(ctx)
    backup = joined(ctx, conn, backup=True)
    ctx.topo.links["path1"].blackhole(True)
    exchange(ctx, conn, backup, b"regular path is gone", on=backup, within=4)


@case(
    ipv6=True,
    section="3.3.8",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    topology=DUAL,
    expected="After MP_PRIO (v1, 3 bytes, B=1) on the first subflow, the IUT sends its data "
    "on the other, regular subflow.",
)
def mp_prio_v1_makes_subflow_backup(ctx: Context) -> None:
    """expect_next for the fourth ACK (`joined`); expect for the echoes, which pure ACKs may
    precede."""
    conn, first = established(ctx)
    second = joined(ctx, conn)
    first.send("A", [MpPrio(backup=True), conn.data_ack()])
    _data_only_on(ctx, conn, second, avoiding=first, sending_on=first)


@case(
    section="3.3.8",
    level=MUST,
    role=LISTENER,
    versions=(0,),
    expected="MP_PRIO of RFC 6824 (4 bytes, with the address ID of the first subflow) "
    "makes that subflow backup: data goes on the other subflow.",
)
def mp_prio_v0_with_address_id(ctx: Context) -> None:
    """expect_next for the fourth ACK (`joined`); expect for the echoes, which pure ACKs may
    precede."""
    conn, first = established(ctx)
    second = joined(ctx, conn, ifname="eth0")
    first.send("A", [MpPrio(backup=True, address_id=0), conn.data_ack()])
    _data_only_on(ctx, conn, second, avoiding=first, sending_on=first)


@case(
    section="3.3.8",
    level=MUST,
    role=LISTENER,
    versions=(0,),
    topology=DUAL,
    expected="MP_PRIO of RFC 6824 with an address ID applies to the subflows using that "
    "address, not to the one it arrives on: sent on the first subflow naming the second "
    "subflow's address ID, it makes the second backup, and data stays on the first.",
)
def mp_prio_v0_names_another_subflow(ctx: Context) -> None:
    """expect_next for the fourth ACK (`joined`); expect for the echoes, which pure ACKs may
    precede."""
    conn, first = established(ctx)
    second = joined(ctx, conn, address_id=4)
    first.send("A", [MpPrio(backup=True, address_id=4), conn.data_ack()])
    _data_only_on(ctx, conn, first, avoiding=second, sending_on=second)


@case(
    section="3.3.8",
    level=SHOULD,
    versions=(0, 1),
    role=LISTENER,
    expected="MP_PRIO naming an address ID that no subflow uses (4-byte form) changes "
    "nothing: the connection goes on carrying data.",
)
def mp_prio_for_unknown_subflow_ignored(ctx: Context) -> None:
    """expect: the echo may follow a pure ACK of the data."""
    conn, sf = established(ctx)
    sf.send("A", [MpPrio(backup=True, address_id=42), conn.data_ack()])
    exchange(ctx, conn, sf, b"still regular", on=sf)


@case(
    section="3.3.8",
    level=SHOULD,
    versions=(0, 1),
    role=LISTENER,
    topology=DUAL,
    expected="When every subflow is backup, the IUT still sends data (on a backup subflow).",
)
def all_backup_connection_carries_data(ctx: Context) -> None:
    """expect_next for the fourth ACK (`joined`); expect for the echoes, which pure ACKs may
    precede."""
    conn, first = established(ctx)
    joined(ctx, conn, backup=True)
    first.send("A", [MpPrio(backup=True), conn.data_ack()])
    exchange(ctx, conn, first, b"all backup")


@case(
    section="3.3.8",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    topology=DUAL,
    expected="When the IUT's endpoint becomes backup during a connection, it sends MP_PRIO "
    "with B=1 on the subflow that uses it: 3 bytes (v0 may also send the 4-byte form with "
    "the endpoint's address ID).",
)
def iut_sends_mp_prio_on_flag_change(ctx: Context) -> None:
    """expect_next for the fourth ACK (`joined`); expect for MP_PRIO: a local change, not an answer,
    so the IUT's other traffic may come first."""
    address = ctx.iut_address("eth1")
    ctx.iut.add_endpoint(address, flags={"signal"})
    conn, _ = established(ctx)
    second = joined(ctx, conn)
    ctx.iut.set_backup(address, True)
    prio = second.expect(option=MpPrio, within=1, what="MP_PRIO")
    option = prio.need(MpPrio)
    if not option.backup or (option.address_id is not None and ctx.version == 1):
        raise deviates(f"expected a 3-byte MP_PRIO with B=1: {prio.describe()}")


# More than a subflow's initial congestion window (10 segments) holds, less than an
# initial receive window: the echo needs several round trips on one subflow
BULK = 40_000


def _bulk_echo_avoids(
    ctx: Context, conn: MptcpConnection, *, sending_on: Subflow, regular: Subflow,
    avoiding: Subflow,
) -> None:  # fmt: skip
    """The tester sends BULK bytes back to back on `sending_on`; the echo must come back
    on `regular` alone, each segment data-acknowledged as it comes, and none of it on
    the backup subflow `avoiding`, even while the regular subflow's congestion window
    is full (a backup takes data only when no regular subflow is usable, RFC 8684
    §3.2). Five small echoes (`_data_only_on`) leave the choice to the scheduler's
    preference when both subflows have room; this one does not."""
    start = conn.data_rcv_nxt
    payload = bytes(i & 0xFF for i in range(BULK))
    for offset in range(0, BULK, 1400):
        ctx.tester.send_data(conn, sending_on, payload[offset : offset + 1400])
    deadline = time.monotonic() + 3.0
    both = Pattern(data=True, what="echo data")
    while (conn.data_rcv_nxt - start) % (1 << 64) < BULK:
        segment = ctx.tester.next_matching(
            both, deadline - time.monotonic(), owner=lambda s: regular.owns(s) or avoiding.owns(s)
        )
        if segment is None:
            echoed = (conn.data_rcv_nxt - start) % (1 << 64)
            raise deviates(f"the echo stalled: {echoed} of {BULK} bytes within 3 s")
        if avoiding.owns(segment):
            raise deviates(
                f"data on the backup subflow while the regular one is usable: {segment.describe()}"
            )
        regular.send("A", [conn.data_ack()])
    # the tester tracks the data level of every subflow as frames arrive: backup data
    # that completed the count before the loop looked at it is still unconsumed here
    avoiding.expect_none(data=True, within=0.1, what="data on the backup subflow")


@case(
    section="3.2",
    level=SHOULD,
    versions=(0, 1),
    role=LISTENER,
    topology=DUAL,
    expected="While the regular subflow is usable, a bulk echo (more than one congestion "
    "window) comes back entirely on it: nothing on the subflow the tester joined as "
    "backup (B=1), even while the regular one's window is full.",
)
def bulk_data_stays_off_backup(ctx: Context) -> None:
    """Not strict: the echo is read with `next_matching` over both subflows, where ACKs
    and window updates may come between data segments; any data on the backup fails."""
    conn, regular = established(ctx)
    backup = joined(ctx, conn, backup=True)
    _bulk_echo_avoids(ctx, conn, sending_on=regular, regular=regular, avoiding=backup)


@case(
    section="3.3.8",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    topology=DUAL,
    expected="After MP_PRIO (B=1) on the joined subflow, a bulk echo (more than one "
    "congestion window) comes back entirely on the first subflow, none of it on the one "
    "made backup.",
)
def mp_prio_bulk_data_stays_off_backup(ctx: Context) -> None:
    """MP_PRIO goes on the joined subflow, which the lowest-RTT choice of a scheduler
    often prefers; read as `bulk_data_stays_off_backup` (not strict)."""
    conn, first = established(ctx)
    second = joined(ctx, conn)
    second.send("A", [MpPrio(backup=True), conn.data_ack()])
    _bulk_echo_avoids(ctx, conn, sending_on=second, regular=first, avoiding=second)


# --------------------------------------------------------------------------------------
# Issue 13, part 2: the IUT's own backup endpoint in its join SYN, MP_PRIO B=0 when the
# flag is cleared, the MP_CAPABLE subflow's own backup state (its address's endpoint
# backup before and during the connection), and a backup kept idle while any regular
# subflow lives.


def _expect_prio(ctx: Context, sf: Subflow, backup: bool, where: str) -> None:
    """The IUT's MP_PRIO with B=`backup` on `sf` (`expect`: it follows a local change,
    other traffic may come first), 3 bytes in v1."""
    prio = sf.expect(option=MpPrio, within=1, what=f"MP_PRIO B={int(backup)} {where}")
    option = prio.need(MpPrio)
    if option.backup != backup or (option.address_id is not None and ctx.version == 1):
        raise deviates(f"expected a 3-byte MP_PRIO with B={int(backup)} {where}: "
                       f"{prio.describe()}")  # fmt: skip


@case(
    section="3.2",
    level=MUST,
    versions=(0, 1),
    role=INITIATOR,
    topology=DUAL,
    expected="A join the IUT opens from an endpoint marked backup (`subflow backup`) "
    "carries B=1 in its SYN: the sender asks the peer to treat the subflow as backup.",
)
def initiator_join_syn_b_bit_from_backup_endpoint(ctx: Context) -> None:
    """expect: the IUT's join SYN opens a new subflow; nothing to answer."""
    ctx.iut.set_limits(2, 0)
    ctx.iut.add_endpoint(ctx.iut_address("eth1"), flags={"subflow", "backup"})
    initiated(ctx)
    syn = ctx.tester.expect("S", MpJoinSyn, dport=ctx.port, within=2, what="the IUT's join SYN")
    if not syn.need(MpJoinSyn).backup:
        raise deviates(f"join SYN from a backup endpoint without B: {syn.describe()}")


@case(
    section="3.3.8",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    topology=DUAL,
    expected="When the IUT's backup endpoint (whose join SYN/ACK had B=1) is made regular "
    "during the connection, the IUT sends MP_PRIO with B=0 on the subflow that uses it.",
)
def iut_sends_mp_prio_b0_when_backup_cleared(ctx: Context) -> None:
    """expect_next for the SYN/ACK and the fourth ACK; expect for MP_PRIO: a local change,
    not an answer, so the IUT's other traffic may come first."""
    address = ctx.iut_address("eth1")
    ctx.iut.add_endpoint(address, flags={"signal", "backup"})
    conn, _ = established(ctx)
    second, synack = ctx.tester.join(conn, ctx.port, ifname="eth1")
    if not synack.need(MpJoinSynAck).backup:
        raise deviates(f"SYN/ACK without B from a backup endpoint: {synack.describe()}")
    expect_fourth_ack(second)
    ctx.iut.set_backup(address, False)
    _expect_prio(ctx, second, False, "on the joined subflow")


@case(
    section="3.3.8",
    level=SHOULD,
    versions=(0, 1),
    role=LISTENER,
    topology=DUAL,
    expected="With the endpoint of its initial address marked backup before the "
    "connection (`subflow backup`, as in mptcp_join.sh), the IUT treats the MP_CAPABLE "
    "subflow as backup: it tells the tester "
    "with MP_PRIO B=1 on that subflow (no join carries its B bit), and its data goes on "
    "the regular subflow the tester joined.",
)
def initial_subflow_backup_from_endpoint(ctx: Context) -> None:
    """expect for MP_PRIO (the IUT's own signal, other traffic may come first) and for the
    echoes, which pure ACKs may precede."""
    ctx.iut.add_endpoint(ctx.iut_address("eth0"), flags={"subflow", "backup"})
    conn, first = established(ctx)
    _expect_prio(ctx, first, True, "on the initial subflow")
    second = joined(ctx, conn)
    _data_only_on(ctx, conn, second, avoiding=first, sending_on=first)


@case(
    section="3.3.8",
    level=MUST,
    versions=(0, 1),
    role=LISTENER,
    topology=DUAL,
    expected="When the endpoint of the IUT's initial address becomes backup during the "
    "connection, the IUT sends MP_PRIO with B=1 on the MP_CAPABLE subflow, and its data "
    "then goes on the regular subflow the tester joined.",
)
def initial_subflow_becomes_backup(ctx: Context) -> None:
    """expect for MP_PRIO: a local change, not an answer; expect for the echoes, which
    pure ACKs may precede."""
    address = ctx.iut_address("eth0")
    ctx.iut.add_endpoint(address)
    conn, first = established(ctx)
    second = joined(ctx, conn)
    ctx.iut.set_backup(address, True)
    _expect_prio(ctx, first, True, "on the initial subflow")
    _data_only_on(ctx, conn, second, avoiding=first, sending_on=first)


@case(
    section="3.2",
    level=SHOULD,
    versions=(0, 1),
    role=LISTENER,
    topology=DUAL,
    expected="A subflow joined as backup stays idle while any regular subflow lives: with "
    "two regular subflows, one reset, the data goes on the other regular one; only when "
    "that one is reset too does the data move to the backup.",
)
def backup_idle_until_all_regular_gone(ctx: Context) -> None:
    """expect_next for the fourth ACKs (`joined`); expect for the echoes, which pure ACKs
    may precede."""
    ctx.iut.set_limits(3, 0)
    conn, first = established(ctx)
    second = joined(ctx, conn)
    backup = joined(ctx, conn, ifname="eth0", backup=True, address_id=7)  # eth0, new port
    first.send("R", seq=first.snd_nxt)
    _data_only_on(ctx, conn, second, avoiding=backup, sending_on=backup)
    second.send("R", seq=second.snd_nxt)
    exchange(ctx, conn, backup, b"the regular subflows are gone", on=backup)
