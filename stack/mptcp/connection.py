"""The MPTCP connection (the "meta socket", msk): what the application sees.

Sans-I/O, like the TCP machine under it. The caller (the host glue in `stack.api`)
feeds it segments per subflow and timer ticks, and collects `(subflow, segment)` pairs
to send. Subflows are internal: each is a `TcpConnection` whose option hooks this
object installs, so every outgoing segment gets its MPTCP options (MP_CAPABLE, MP_JOIN,
DSS, MP_PRIO, ADD_ADDR, MP_FASTCLOSE, MP_TCPRST) and every accepted incoming segment is
read for them.

Data path: the application's bytes go into a `DataSendQueue` (DSNs); the scheduler
hands chunks to subflows, whose `SubflowSendMap` gives every segment a mapping. On
receive, each subflow's in-order bytes are translated by its `SubflowReceiveMapper`
into DSNs and reassembled in one `DataReassembly`. DATA_ACKs release the send queue.

Fallback (RFC 8684 §3.7) turns the connection into plain TCP on its one subflow, with
no byte lost or duplicated: a SYN/ACK without MP_CAPABLE, a third ACK without it (the
listener, as Linux), or data with no mapping while only one subflow exists.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from stack import faults
from stack.crypto import add_addr_hmac, dss_checksum, key_token_idsn
from stack.mptcp import handshake
from stack.mptcp.coupled import SubflowWindow, alpha, increase
from stack.mptcp.handshake import CapableConfig, JoinCrypto, V0Policy
from stack.mptcp.mapping import (
    ChecksumFailed,
    DataFin,
    Deliver,
    Mapping,
    MappingError,
    SubflowReceiveMapper,
    Unmapped,
)
from stack.mptcp.pm import (
    Announce,
    ConnectionPaths,
    Endpoint,
    OpenSubflow,
    PeerAddress,
)
from stack.mptcp.reassembly import DSN_MOD, HALF, DataReassembly
from stack.mptcp.sched import make_scheduler
from stack.mptcp.sendmap import MAX_MAPPING
from stack.mptcp.sendqueue import DataSendQueue
from stack.mptcp.subflow import STALE_LOSS_CNT, Address, Phase, Subflow
from stack.mptcp.token import TokenTable
from stack.route import IPAddress
from stack.tcp.congestion import NewReno
from stack.tcp.connection import TcpConfig, TcpConnection
from stack.tcp.events import (
    Closed,
    CloseReason,
    DataAcked,
    DataReceived,
    PeerFinished,
    Reset,
    TcpState,
)
from stack.tcp.segment import ACK, FIN, PSH, RST, SYN, Segment
from stack.wire.mptcp import (
    MPC_FLAG_C,
    MPTCP_RST_EMIDDLEBOX,
    MPTCP_RST_EMPTCP,
    MPTCP_RST_EPROHIBIT,
    MPTCP_RST_EUNSPEC,
    AddAddrV0,
    AddAddrV1,
    Dss,
    MpCapable,
    MpFail,
    MpFastclose,
    MpJoinAck,
    MpJoinSyn,
    MpJoinSynAck,
    MpPrio,
    MpTcpRst,
    RemoveAddr,
)

# Linux's fail_tout (TCP_RTO_MAX): our MP_FAIL unanswered by an infinite mapping this
# long, the subflow is reset rather than discarding data for ever
MP_FAIL_TIMEOUT = 120.0
DSS_RESERVE = 28  # DSS with 64-bit DATA_ACK and DSN and a checksum: 26 bytes, padded
JOIN_ACK_RETRIES = 5  # third-ACK retransmissions before the join is given up
DATA_FIN_RTO = 0.5  # first retransmission of a lone DATA_FIN; doubles each time
ADD_ADDR_RTO = 1.0  # first retransmission of an unechoed ADD_ADDR; doubles each time
ADD_ADDR_RETRIES = 3  # as the kernel's ADD_ADDR_RETRANS_MAX
STALE_NEVER = 1 << 30  # no subflow holds data: nothing counts against a backup
# the part of the peer's connection-level window left unused (1/N): see _data_window_room
DATA_WINDOW_RESERVE = 4

# closed subflows kept for reports (`describe`); older ones are forgotten
CLOSED_SUBFLOW_HISTORY = 32


@dataclass(frozen=True)
class MptcpConfig:
    versions: frozenset[int] = frozenset({1})
    want_checksum: bool = False
    v0_policy: V0Policy = V0Policy.FALLBACK
    # net.mptcp.syn_retrans_before_tcp_fallback: SYN + MP_CAPABLE retransmissions before
    # the SYN goes without it (blackhole fallback); None: every SYN carries MP_CAPABLE
    syn_retrans_before_fallback: int | None = 2
    scheduler: str = "lowest-rtt"
    congestion: str = "lia"  # "lia" (RFC 6356) or "reno" (uncoupled)
    send_buffer: int = 4 << 20
    receive_buffer: int = 4 << 20
    # Linux's 200 ms minimum RTO: a path failure is noticed in a fraction of a second
    tcp: TcpConfig = field(default_factory=lambda: TcpConfig(min_rto=0.2))
    join_ack_retries: int = JOIN_ACK_RETRIES
    # net.mptcp.add_addr_timeout: a fixed ADD_ADDR resend interval (0: never resend);
    # None: ADD_ADDR_RTO, doubling
    add_addr_timeout: float | None = None
    # TCP small queues (docs/stack.md, "The local queue"): off by default. On, a local
    # shaper's queue stays short (blackhole failover 35-55 ms instead of 118-140), but
    # the shorter RTT makes a loaded machine's ACK gaps look like a dead path: spurious
    # data on a backup subflow and slower failover in the loaded test runs
    small_queues: bool = False
    # net.mptcp.allow_join_initial_addr_port=0: C set in our MP_CAPABLE (RFC 8684 §3.1),
    # peers must not join our initial address and port
    deny_join_initial: bool = False

    @property
    def capable(self) -> CapableConfig:
        return CapableConfig(self.versions, self.want_checksum, self.v0_policy,
                             self.syn_retrans_before_fallback,
                             self.deny_join_initial)  # fmt: skip


def _expand(value: int, reference: int, wide: bool) -> int:
    """A 32-bit DSN or DATA_ACK, widened to 64 bits next to `reference` (RFC 8684 §3.3)."""
    if wide or (faults.ACTIVE and faults.on("dss_dsn32_not_expanded")):
        return value
    candidate = (reference & ~0xFFFFFFFF) | value
    delta = (candidate - reference) % DSN_MOD
    if delta >= HALF and DSN_MOD - delta > 1 << 31:
        candidate = (candidate + (1 << 32)) % DSN_MOD
    elif delta < HALF and delta > 1 << 31:
        candidate = (candidate - (1 << 32)) % DSN_MOD
    return candidate


def _transient(event: Reset | Closed) -> bool:
    """Whether a subflow's failure may pass (pm.py: re-joining): retransmissions
    exhausted, or the peer's RST without MP_TCPRST, or with its T flag (RFC 8684 §3.6).
    Our own resets (a bad HMAC, a removed address, ...) are not."""
    if isinstance(event, Closed):
        return event.reason is CloseReason.TIMEOUT
    if not event.by_peer:
        return False
    rst = next((o for o in event.options if isinstance(o, MpTcpRst)), None)
    return rst is None or rst.transient


def send_ack_now(tcp: TcpConnection, now: float) -> None:
    """Make the subflow send a pure ACK now (it carries whatever options are owed)."""
    tcp._ack_now = True
    tcp._output(now)


class MptcpConnection:
    """One MPTCP connection and its subflows, as a sans-I/O state machine."""

    def __init__(
        self,
        config: MptcpConfig,
        tokens: TokenTable[MptcpConnection],
        *,
        isn_secret: bytes,
        server: bool,
        allocate_port: Callable[[IPAddress, IPAddress, int], int] | None = None,
        paths: ConnectionPaths | None = None,
    ) -> None:
        self.config = config
        self.tokens = tokens
        self.isn_secret = isn_secret
        self.server = server
        self.allocate_port = allocate_port
        self.paths = paths
        self.scheduler = make_scheduler(config.scheduler)
        self.subflows: list[Subflow] = []
        self.version: int | None = None  # negotiated MPTCP version; None: plain TCP
        self.sent_version = 1
        self.checksum = False
        self.local_key = 0
        self.local_token = 0
        self.remote_key: int | None = None
        self.remote_token: int | None = None
        self.fallback = False
        self.fallback_reason = ""
        self.mptcp_decided = False  # version/fallback settled for the initial subflow
        self.peer_sent_dss = False  # the peer is fully established (v1 first-data rule)
        self.peer_data_acked = False  # a DATA_ACK has covered some of our data
        self.snd_wnd_edge: int | None = None  # DSN right edge of the peer's receive window
        self.sendq: DataSendQueue | None = None
        self.reasm: DataReassembly | None = None
        self.peer_fin_dsn: int | None = None
        self.eof = False  # the peer's DATA_FIN (or FIN after fallback) was consumed in order
        self.established = False  # the application may use it
        self.closed = False  # every subflow is gone
        self.error = ""
        self.fastclose = False  # we sent, or got, MP_FASTCLOSE
        self._fastclose_ack = False  # we abort: pure ACKs carry MP_FASTCLOSE (abort())
        self.retry_v0 = False  # reopen with a v0 SYN (V0Policy.RETRY_V0)
        self.syn_without_capable = False  # blackhole fallback: a SYN went without MP_CAPABLE
        self.data_ack_64 = True  # the width of our data ACKs: the peer's latest DSN's
        self._pending_opens: list[OpenSubflow] = []
        self._fin_deadline: float | None = None
        # data-level retransmission: when the DATA_ACK stalls although the subflows
        # delivered (Linux's msk-level retransmit timer, MPTCPRetrans)
        self._data_rtx_deadline: float | None = None
        # the interval in force (the kernel's timer_ival): what the next arming uses
        # (`_rearm_data_rtx`), recomputed just after it
        self._data_rtx_ival = config.tcp.min_rto
        self._data_rtx_backoff = 0
        self._fin_backoff = 0
        self._fb_offset = 0  # DSN - subflow sequence, once fallen back (one subflow)
        # RFC 8684 §3.7 with one subflow: the DSN our MP_FAIL reported (the peer's data
        # from it on is discarded until its infinite mapping), and that mapping's
        # (subflow seq, DSN): where the peer's stream resumes as plain TCP
        self.mp_fail_dsn: int | None = None
        self._infinite_rx: tuple[int, int] | None = None
        self._mp_fail_deadline: float | None = None
        self._new_subflows: list[Subflow] = []
        self._gone_subflows: list[Subflow] = []
        # subflows that are gone and CLOSED leave `subflows` (as the kernel's conn_list:
        # nothing scans them again); the last few are kept for reports (`describe`)
        self.closed_subflows: deque[Subflow] = deque(maxlen=CLOSED_SUBFLOW_HISTORY)
        self.first_subflow: Subflow | None = None  # the (latest) initial subflow
        self._subflows_added = 0
        # joins waiting for their third ACK in a listener: (local, remote) -> (when, the
        # listener), oldest first
        self.opened_at = 0.0  # when a listener took its SYN
        self._aborted_others = False  # subflows aborted beside the one at hand (_after)
        self.half_open_joins: dict[tuple[Address, Address], tuple[float, Any]] = {}
        self._tcp_config: TcpConfig | None = None
        self._announce: list[Any] = []  # ADD_ADDR / REMOVE_ADDR options owed to the peer
        # v1 ADD_ADDRs sent and not yet echoed: address ID -> (option, resend at, tries)
        self._unechoed: dict[int, tuple[AddAddrV1, float, int]] = {}
        self._add_addr_deadline: float | None = None
        self.counters: dict[str, int] = {}

    # ------------------------------------------------------------------ creation

    @classmethod
    def connect(
        cls,
        local: Address,
        remote: Address,
        config: MptcpConfig,
        tokens: TokenTable[MptcpConnection],
        *,
        isn_secret: bytes,
        now: float,
        allocate_port: Callable[[IPAddress, IPAddress, int], int] | None = None,
        paths: ConnectionPaths | None = None,
    ) -> MptcpConnection:
        msk = cls(config, tokens, isn_secret=isn_secret, server=False,
                  allocate_port=allocate_port, paths=paths)  # fmt: skip
        msk._open_initial(local, remote, config.capable.highest, now)
        return msk

    def _open_initial(self, local: Address, remote: Address, version: int, now: float) -> None:
        self.sent_version = version
        if self.local_token:
            self.tokens.release(self.local_token)
        self.local_key, self.local_token = self.tokens.new_key(version)
        self.tokens.bind(self.local_token, self)
        tcp = TcpConnection(
            local, remote, config=self._subflow_config(), isn_secret=self.isn_secret, now=now
        )
        sf = Subflow(tcp, initial=True)
        self._hook(sf)
        self.add_subflow(sf)
        tcp.connect(now)

    def _subflow_config(self) -> TcpConfig:
        if self._tcp_config is None:  # made once: a join flood makes one per SYN
            self._tcp_config = self._make_subflow_config()
        return self._tcp_config

    def _make_subflow_config(self) -> TcpConfig:
        base = self.config.tcp
        if self.config.congestion == "lia":

            def congestion(mss: int, initial_window: int) -> NewReno:
                controller = NewReno(mss, initial_window)
                controller._ca_increase = lambda cwnd, acked, mss_: self._lia(controller, acked)
                return controller

            return dataclasses.replace(base, option_reserve=DSS_RESERVE, congestion=congestion)
        return dataclasses.replace(base, option_reserve=DSS_RESERVE)

    def _lia(self, controller: NewReno, acked: int) -> float:
        windows, mine = [], None
        for sf in self.subflows:
            if sf.phase is not Phase.ESTABLISHED:
                continue
            window = SubflowWindow(sf.tcp.cc.cwnd, sf.srtt, sf.tcp.payload_mss)
            windows.append(window)
            if sf.tcp.cc is controller:
                mine = window
        if mine is None or len(windows) < 2:
            return acked * controller.mss / max(controller.cwnd, 1)
        return increase(mine, acked, windows, alpha(windows))

    def add_subflow(self, sf: Subflow) -> None:
        """A subflow now belongs to this connection (the driver registers it)."""
        sf.number = self._subflows_added
        self._subflows_added += 1
        if sf.initial:
            self.first_subflow = sf
        self.subflows.append(sf)
        self._new_subflows.append(sf)

    def _hook(self, sf: Subflow) -> None:
        sf.tcp.option_provider = lambda seg, rel: self._provide(sf, seg, rel)
        sf.tcp.option_observer = lambda seg, rel: self._observe(sf, seg, rel)
        sf.tcp.segment_limit = lambda rel: self._segment_limit(sf, rel)

    # ------------------------------------------------------------------ negotiation

    def _become_mptcp(self, version: int, checksum: bool, remote_key: int) -> None:
        self.version = version
        self.checksum = checksum
        self.remote_key = remote_key
        self.remote_token, remote_idsn = key_token_idsn(remote_key, version)
        _, local_idsn = key_token_idsn(self.local_key, version)
        self.mptcp_decided = True
        self.sendq = DataSendQueue(local_idsn + 1, self.config.send_buffer)
        self.reasm = DataReassembly(remote_idsn + 1, self._reassembly_limit())
        for sf in self.subflows:
            sf.recvmap = SubflowReceiveMapper(checksum)

    def _reassembly_limit(self) -> int:
        """What the data level may hold: the application's buffer, plus what the subflows'
        windows let the peer have in flight (bytes TCP acknowledged must never be dropped;
        a checksummed mapping is released whole, however little room is left)."""
        return 2 * self.config.receive_buffer + 9 * self.config.tcp.receive_buffer

    def _data_room(self) -> int:
        assert self.reasm is not None
        return self.config.receive_buffer - self.reasm.readable

    def _fall_back(self, sf: Subflow, reason: str) -> None:
        """Continue as plain TCP on `sf`, the only subflow (RFC 8684 §3.7)."""
        if self.fallback:
            return
        self.fallback = True
        self.fallback_reason = reason
        self._count("MPTcpFallback")
        if self.sendq is None:
            self.sendq = DataSendQueue(0, self.config.send_buffer)
        if self.reasm is None:
            self.reasm = DataReassembly(0, self._reassembly_limit())
        if not self.mptcp_decided:
            self.mptcp_decided = True
        # Everything given to the subflow is in order on it: DSN = subflow seq + offset.
        offset = sf.sendmap.dsn_offset()
        if offset is None:
            offset = (self.sendq.snd_nxt - sf.sendmap.write_seq) % DSN_MOD
        self._fb_offset = offset
        sf.tcp.segment_limit = None
        held = sf.recvmap.take_held() if sf.recvmap is not None else None
        if held is not None:
            # a checksummed mapping half received: its bytes are the stream's next
            self.reasm.add(held.dsn, held.data)
        if self.local_token and not self.subflows_joined():
            if faults.ACTIVE and faults.on("join_to_fallen_back"):
                return  # its token stays: joins find it
            self.tokens.release(self.local_token)

    def subflows_joined(self) -> bool:
        return any(not s.initial for s in self.subflows)

    def _infinite_fallback_allowed(self) -> bool:
        """RFC 8684 §3.7: an infinite mapping needs all data in flight contiguous on
        one subflow: only one is alive and no other ever joined (Linux's
        allow_infinite_fallback is cleared by the first join)."""
        return len(self._alive()) == 1 and not self.subflows_joined()

    def _count(self, name: str, by: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + by

    # ------------------------------------------------------------------ outgoing options

    def _segment_limit(self, sf: Subflow, rel: int) -> int:
        try:
            return sf.sendmap.limit(rel)
        except KeyError:
            return 1 << 16

    def _data_ack(self) -> int:
        assert self.reasm is not None
        if faults.ACTIVE and faults.on("dss_data_ack_stuck") and self.remote_key is not None:
            return (key_token_idsn(self.remote_key, self.version or 0)[1] + 1) % DSN_MOD
        return (self.reasm.next_dsn + (1 if self.eof and not self.fallback else 0)) % DSN_MOD

    def _dss(
        self,
        dsn: int | None = None,
        subflow_seq: int | None = None,
        length: int | None = None,
        checksum: int | None = None,
        *,
        data_fin: bool = False,
    ) -> Dss:
        """A DSS with our data ACK in the width of the peer's latest DSN (as Linux's
        use_64bit_ack: a peer that maps with 4 bytes gets 4-byte data ACKs, RFC 8684
        §3.3 leaving the choice to each sender), and the mapping given, if any (our
        DSNs always 8 bytes)."""
        ack = self._data_ack()
        if not self.data_ack_64:
            ack &= 0xFFFFFFFF
        return Dss(ack, dsn, subflow_seq, length, checksum, data_fin=data_fin,
                   data_ack_64=self.data_ack_64, dsn_64=dsn is not None)  # fmt: skip

    def _provide(self, sf: Subflow, seg: Segment, rel: int) -> None:
        flags = seg.flags
        options: list[Any] = []
        if flags & SYN:
            self._provide_syn(sf, seg, options)
        elif flags & RST:
            if self.fastclose and self.remote_key is not None and not self.fallback:
                options.append(MpFastclose(self.remote_key))
            elif sf.mp_fail_due is not None:
                # RFC 8684 §3.7: "closed with a RST that includes an MP_FAIL option"
                options.append(MpFail(sf.mp_fail_due))
            if sf.rst_reason is not None and self.version == 1:
                options.append(MpTcpRst(sf.rst_reason))
        elif self.fallback:
            self._provide_fallback(sf, seg, rel, options)
        elif self._fastclose_ack and self.remote_key is not None:
            options.append(MpFastclose(self.remote_key))  # abort(): the ACK before the RST
        elif not self.mptcp_decided or self.version is None:
            pass
        elif sf.join_ack_due and not (
            seg.payload and faults.ACTIVE and faults.on("join_data_before_fourth_ack")
        ):
            assert sf.join is not None
            options.append(MpJoinAck(sf.join.ack_hmac()))
        else:
            self._provide_data(sf, seg, rel, options)
        if options:
            seg.extra_options = tuple(options)

    def _provide_syn(self, sf: Subflow, seg: Segment, options: list[Any]) -> None:
        if sf.initial:
            if self.server:
                if self.version is not None:
                    decision = handshake.ListenerDecision(self.version, self.checksum)
                    options.append(handshake.synack_option(
                        decision, self.local_key, self.config.deny_join_initial))  # fmt: skip
            elif self._capable_syn_dropped(sf):
                if not self.syn_without_capable:
                    self._count("MPCapableSYNTXDrop")
                self.syn_without_capable = True  # its SYN/ACK is plain TCP's, whatever it says
            else:
                options.append(handshake.syn_option(self.config.capable, self.local_key,
                                                    self.sent_version))  # fmt: skip
            return
        join = sf.join
        assert join is not None and self.remote_token is not None
        if seg.flags & ACK:
            options.append(MpJoinSynAck(sf.local_id, join.synack_hmac(), join.local_nonce,
                                        backup=sf.backup_local))  # fmt: skip
        else:
            options.append(MpJoinSyn(sf.local_id, self.remote_token, join.local_nonce,
                                     backup=sf.backup_local))  # fmt: skip

    def _capable_syn_dropped(self, sf: Subflow) -> bool:
        """Whether this (re)transmission of the initial SYN goes without MP_CAPABLE: the
        earlier ones went unanswered, a middlebox may drop them (RFC 8684 §3.1)."""
        limit = self.config.syn_retrans_before_fallback
        return self.syn_without_capable or (limit is not None and sf.tcp.retries > limit)

    def _provide_fallback(self, sf: Subflow, seg: Segment, rel: int, options: list[Any]) -> None:
        """After MP_FAIL (RFC 8684 §3.7): our MP_FAIL answer on a pure ACK, and the
        infinite mapping (data-level length 0) on every segment that holds the first new
        byte until that byte is acknowledged; nothing otherwise, as plain TCP."""
        payload = seg.payload
        if sf.mp_fail_due is not None and not payload:
            options.append(MpFail(sf.mp_fail_due))
            sf.mp_fail_due = None
        if sf.infinite_map is not None and payload:
            dsn, subflow_seq, first_new = sf.infinite_map
            if rel <= first_new < rel + len(payload):
                options.append(self._dss(dsn, subflow_seq & 0xFFFFFFFF, 0,
                                         0 if self.checksum else None))  # fmt: skip

    def _provide_data(self, sf: Subflow, seg: Segment, rel: int, options: list[Any]) -> None:
        assert self.sendq is not None and self.remote_key is not None
        payload = seg.payload
        checksum: int | None = None
        if sf.capable_ack_due and not payload:
            sf.capable_ack_due = False
            options.append(
                handshake.ack_option(self.version or 0, self.checksum, self.local_key,
                                     self.remote_key, self.config.deny_join_initial)
            )  # fmt: skip
            return
        if payload:
            chunk = sf.sendmap.mapping(rel, len(payload))
            if (
                sf.initial
                and not self.server
                and self.version == 1
                and rel == 1
                and (not self.peer_sent_dss)
                and not (faults.ACTIVE and faults.on("mpc_no_keys_on_first_data"))
            ):
                # RFC 8684 §3.1: the first data repeats both keys, in case the third ACK
                # was lost; its mapping is implicit (IDSN+1, subflow seq 1).
                options.append(
                    handshake.first_data_option(
                        self.checksum, self.local_key, self.remote_key, chunk.length,
                        chunk.checksum, self.config.deny_join_initial,
                    )
                )  # fmt: skip
                return
            subflow_seq = chunk.subflow_seq
            if faults.ACTIVE and faults.on("dss_subflow_seq_absolute"):
                subflow_seq = (subflow_seq + sf.tcp.iss) & 0xFFFFFFFF
            options.append(self._dss(chunk.dsn, subflow_seq, chunk.length,
                                     chunk.checksum))  # fmt: skip
        elif self.sendq.fin_sent and not self.sendq.fin_acknowledged:
            fin = self.sendq.write_end
            if self.checksum:
                checksum = dss_checksum(fin, 0, 1, b"")
            options.append(self._dss(fin, 0, 1, checksum, data_fin=True))
        elif sf.mp_fail_due is None and self._echo_next(seg):
            # as Linux: an echo goes alone on a pure ACK (no DSS), and an MP_PRIO owed
            if sf.prio_due is not None:
                options.append(MpPrio(sf.prio_due, sf.local_id if self.version == 0 else None))
                sf.prio_due = None
            options.append(self._take_announcement())
            self._count("EchoAddTx")
            return
        else:
            options.append(self._dss())
        if sf.mp_fail_due is not None and not payload:
            options.append(MpFail(sf.mp_fail_due))  # on every pure ACK until answered
            return
        if sf.prio_due is not None and not payload:
            options.append(MpPrio(sf.prio_due, sf.local_id if self.version == 0 else None))
            sf.prio_due = None
        if self._announce and not payload:
            options.append(self._take_announcement())

    def _echo_next(self, seg: Segment) -> bool:
        """Whether `seg` is a pure ACK (RST, SYN and FIN excepted) that carries the next
        announcement, an ADD_ADDR echo. Linux's echo (`drop_other_suboptions`) is only E,
        the ID and the address: no DSS, no HMAC."""
        if seg.payload or seg.flags & ~(ACK | PSH) or not self._announce:
            return False
        head = self._announce[0]
        return isinstance(head, AddAddrV1) and head.echo

    # ------------------------------------------------------------------ incoming options

    def _observe(self, sf: Subflow, seg: Segment, rel: int) -> None:
        flags = seg.flags
        options = seg.extra_options
        if flags & SYN:
            if flags & ACK and not sf.tcp.passive:  # a SYN/ACK to a subflow we opened
                if sf.initial:
                    self._on_synack(sf, options)
                else:
                    self._on_join_synack(sf, options)
            return
        if sf.initial and self.server and not self.mptcp_decided:
            self._on_third_ack(sf, options)
        elif not sf.initial and sf.tcp.passive and sf.phase is Phase.CONNECTING:
            self._on_join_ack(sf, options)
            return
        elif (
            not sf.initial
            and sf.tcp.passive
            and rel == 1
            and not seg.payload
            and not flags & FIN
            and any(isinstance(o, MpJoinAck) for o in options)
        ):
            # the joining peer sent its third ACK again: our fourth ACK was lost, and
            # it sends no data until it has one (RFC 8684 §3.2). Answered at once, as
            # Linux (check_fully_established: tcp_send_ack on a passive join's 3rd
            # ACK retransmission), so the join completes even if we have nothing to send
            sf.ack_due = True
        elif sf.phase is Phase.PRE_ESTABLISHED or (faults.ACTIVE and sf.join_ack_due):
            # the fourth ACK (RFC 8684 §3.2): the join is complete, data may flow
            sf.phase = Phase.ESTABLISHED
            sf.join_ack_due = False
            sf.join_ack_deadline = None
            self._count("MPJoinAckRx")
            if self.paths is not None and sf.path_key is not None:
                self.paths.subflow_up(sf.path_key)
        if (self._infinite_rx is None and not self.fallback and self.mptcp_decided
                and self.reasm is not None and not flags & RST):  # fmt: skip
            self._on_infinite_mapping(sf, options, rel)
        if self.fallback or self.version is None:
            return
        sf.plain_ack = not options  # no MPTCP option at all
        if sf.plain_ack:
            sf.last_plain = repr(seg)
        for option in options:
            if isinstance(option, Dss):
                self._on_dss(sf, option, seg.window)
            elif isinstance(option, MpCapable) and option.data_level_length is not None:
                self._on_capable_data(sf, option)
            elif isinstance(option, MpPrio):
                self._on_prio(sf, option)
            elif isinstance(option, AddAddrV1 | AddAddrV0):
                self._on_add_addr(sf, option)
            elif isinstance(option, RemoveAddr):
                self._on_remove_addr(option)
            elif isinstance(option, MpFastclose):
                self._on_fastclose(option, sf)
            elif isinstance(option, MpFail):
                self._count("MPFailRx")
                if not flags & RST:
                    self._on_mp_fail(sf, option)

    def _on_fastclose(self, option: MpFastclose, sf: Subflow | None = None) -> None:
        """RFC 8684 §3.5: the peer reset the whole connection, with MP_FASTCLOSE on an ACK
        or (as Linux does) on the RST of each subflow. Every subflow goes at once, and
        none is joined again."""
        wrong_key = option.receiver_key != self.local_key
        if faults.ACTIVE and faults.on("fastclose_accept_wrong_key"):
            wrong_key = False
        if wrong_key or self.fastclose or (faults.ACTIVE and faults.on("fastclose_ignored")):
            return
        self._count("MPFastcloseRx")
        if faults.ACTIVE and faults.on("fastclose_one_subflow") and sf is not None:
            sf.tcp.abort(self._now)
            return
        self.error = "connection reset by peer (MP_FASTCLOSE)"
        self.fastclose = True
        for other in self.subflows:
            other.tcp.abort(self._now)
        # the aborted subflows' Reset events are digested in `_after`, which runs only
        # for the subflow at hand: the others' would wait for an input or timer that a
        # closed TCP never gets, and the connection would never close (a leak the
        # fuzzer found: MP_FASTCLOSE on a join, its initial subflow never gone)
        self._aborted_others = True

    def _on_mp_fail(self, sf: Subflow, option: MpFail) -> None:
        """RFC 8684 §3.7 (RFC 6824 §3.6): a mapping of ours failed its checksum at the
        peer. With all data in flight contiguous on this one subflow: answer MP_FAIL
        ("the receiver of an MP_FAIL MUST also respond with an MP_FAIL"), fall back, and
        put an infinite mapping on the first new packet, one that "acts retroactively":
        from the last byte DATA_ACKed (its DSN, and its place on the subflow), so the
        bytes that failed stay in the stream as the middlebox left them and nothing is
        sent twice (a receiver that keeps them, as Linux, would otherwise get them
        twice). With other subflows the peer resets this one, and reinjection sends its
        data on the others."""
        if not self._infinite_fallback_allowed() or self.sendq is None:
            return
        if self.mp_fail_dsn is not None:
            return  # the answer to ours (Linux: the fail timeout stops); ours stands
        sf.mp_fail_due = self._data_ack()
        sf.ack_due = True
        self._count("MPFailTx")
        self._fall_back(sf, "MP_FAIL from the peer")
        acked = self.sendq.snd_una
        # on the first new packet: the first byte never sent (bytes queued in the
        # subflow but not sent yet go out plain, before it)
        sf.infinite_map = (acked, (acked - self._fb_offset) % DSN_MOD, sf.tcp.snd_max)
        if faults.ACTIVE and faults.on("mp_fail_infinite_map_off_line"):
            sf.infinite_map = (option.dsn, sf.tcp.snd_max, sf.tcp.snd_max)
        self._count("InfiniteMapTx")

    def _on_infinite_mapping(self, sf: Subflow, options: tuple[Any, ...], rel: int) -> None:
        """RFC 8684 §3.7 (RFC 6824 §3.6): a DSS mapping of data-level length 0 is the
        peer's fallback to TCP, after our MP_FAIL or on its own (a middlebox it saw). It
        ties its subflow bytes to DSNs for good, from an earlier byte (retroactive) or
        from its own segment (subflow sequence number 0, or Linux's: the same line);
        from there on the connection is plain TCP. As Linux (MAPPING_INVALID), only a
        connection that could fall back takes it: once a subflow has joined, the
        subflow is reset (MP_TCPRST 1). A line that puts the next subflow byte we read
        past the next DSN we expect leaves a hole that nothing fills: reset."""
        assert self.reasm is not None
        for option in options:
            if isinstance(option, MpFail):
                self._count("MPFailRx")  # the peer's answer
            elif isinstance(option, Dss) and option.dsn is not None:
                planted = faults.ACTIVE and faults.on("infinite_mapping_kept_mptcp")
                if option.data_level_length or (planted and option.subflow_seq):
                    continue  # a mapping (or, planted: `_on_dss` maps the bytes on the line)
                self._count("InfiniteMapRx")
                if not self._infinite_fallback_allowed():
                    why = "infinite mapping with other subflows"
                    self._reset_subflow(sf, MPTCP_RST_EMPTCP, why)
                    return
                start = option.subflow_seq or rel  # 0: the segment's own start
                dsn = _expand(option.dsn, self.reasm.next_dsn, option.dsn_64)
                # the first subflow byte not yet handed to the data level, from `start`
                held = sf.recvmap.held_bytes if sf.recvmap is not None else 0
                ahead = (sf.tcp.read_seq - held - start) & 0xFFFFFFFF
                ahead -= (ahead >= 1 << 31) << 32
                next_on_line = (dsn + ahead) % DSN_MOD
                gap = (next_on_line - self.reasm.next_dsn) % DSN_MOD
                if 0 < gap < HALF:
                    # the peer resumes past what we have: those bytes are gone for good
                    have = self.reasm.next_dsn
                    why = (f"infinite mapping at {dsn:#x} puts the next byte at "
                           f"{next_on_line:#x}, past the data from {have:#x}")  # fmt: skip
                    self._reset_subflow(sf, MPTCP_RST_EMIDDLEBOX, why)
                    return
                self._infinite_rx = (start, dsn)
                self._mp_fail_deadline = None
                sf.mp_fail_due = None
                why = "MP_FAIL" if self.mp_fail_dsn is not None else "peer's fallback"
                self._fall_back(sf, f"infinite mapping ({why})")
                return

    def _on_synack(self, sf: Subflow, options: tuple[Any, ...]) -> None:
        capable = next((o for o in options if isinstance(o, MpCapable)), None)
        if self.syn_without_capable:
            capable = None  # the SYN it answers may have been the plain one
        outcome = handshake.initiator_outcome(self.config.capable, self.sent_version, capable)
        if outcome.version is None:
            if outcome.retry_v0:
                self.retry_v0 = True
                return
            self._fall_back(sf, outcome.reason)
            return
        assert outcome.remote_key is not None and capable is not None
        self._become_mptcp(outcome.version, outcome.checksum, outcome.remote_key)
        sf.capable_ack_due = True
        if (
            capable.flags & MPC_FLAG_C
            and self.paths is not None
            and not (faults.ACTIVE and faults.on("mpc_ignore_c_flag"))
        ):
            self.paths.initial_remote_joinable = False

    def _on_third_ack(self, sf: Subflow, options: tuple[Any, ...]) -> None:
        capable = next((o for o in options if isinstance(o, MpCapable)), None)
        if (
            capable is None
            and self.version == 0
            and self.remote_key is not None
            and any(isinstance(o, Dss) for o in options)
        ):
            # v0: Key-A came on the SYN; a DSS proves the peer went on with MPTCP even
            # if its third ACK was lost
            self._become_mptcp(0, self.checksum, self.remote_key)
            self.tokens.bind(self.local_token, self)
            return
        if (
            capable is None
            or capable.receiver_key != self.local_key
            or capable.sender_key is None
            or capable.version != self.version
        ):
            # as Linux: a third ACK (or first data) without both keys falls back
            self._fall_back(sf, "third ACK without MP_CAPABLE")
            return
        self._become_mptcp(self.version or 0, self.checksum, capable.sender_key)
        self.tokens.bind(self.local_token, self)

    def _on_capable_data(self, sf: Subflow, option: MpCapable) -> None:
        """The v1 initiator's first data: MP_CAPABLE carrying an implicit mapping."""
        assert self.reasm is not None and sf.recvmap is not None
        if not sf.initial or not self.server or option.receiver_key != self.local_key:
            return
        _, remote_idsn = key_token_idsn(self.remote_key or 0, 1)
        if not option.data_level_length:
            # used "in place of the DSS" (RFC 8684 §3.1): length 0 is an infinite
            # mapping, the peer's fallback from its first byte (as Linux)
            self._count("InfiniteMapRx")
            self._infinite_rx = (1, (remote_idsn + 1) % DSN_MOD)
            self._fall_back(sf, "infinite mapping (peer's fallback)")
            return
        mapping = Mapping((remote_idsn + 1) % DSN_MOD, 1, option.data_level_length,
                          option.checksum)  # fmt: skip
        self._mapping_events(sf, sf.recvmap.add_mapping(mapping, sf.tcp.read_seq))

    def _update_send_window(self, data_ack: int, sf: Subflow, window: int) -> None:
        """RFC 8684 §3.3.4: the receive window is the connection's, relative to the
        DATA_ACK it came with, whichever subflow carried it; its right edge never moves
        back (as Linux's wnd_end)."""
        edge = (data_ack + (window << sf.tcp.snd_wscale)) % DSN_MOD
        if self.snd_wnd_edge is None or 0 < (edge - self.snd_wnd_edge) % DSN_MOD < HALF:
            self.snd_wnd_edge = edge

    def _data_window_room(self) -> int:
        """New bytes the peer's connection-level window still admits, a quarter of it
        kept free (`DATA_WINDOW_RESERVE`). Linux (6.18) counts out-of-order data against
        its receive buffer by the memory its packets take, which a full window of ours
        can exceed; it then takes no more data from any subflow, not even the bytes
        that fill the hole, and the connection stalls for good."""
        sendq = self.sendq
        assert sendq is not None
        if self.snd_wnd_edge is None:
            return MAX_MAPPING  # not heard yet: the subflows' TCP windows bound the start
        window = (self.snd_wnd_edge - sendq.snd_una) % DSN_MOD
        if window >= HALF:
            return 0
        return max(window - window // DATA_WINDOW_RESERVE - sendq.in_flight, 0)

    def _on_dss(self, sf: Subflow, option: Dss, window: int) -> None:
        assert self.sendq is not None and self.reasm is not None and sf.recvmap is not None
        if not self.peer_sent_dss:
            self.peer_sent_dss = True
            if not self.server and self.established:
                # As Linux: the initiator's path manager starts once the listener has
                # shown it is fully established (a DSS), or joins would be refused.
                self._start_paths(self._now)
        if option.data_ack is not None:
            ack = _expand(option.data_ack, self.sendq.snd_una, option.data_ack_64)
            if self.sendq.beyond_sent(ack):
                # As Linux: such a DATA_ACK moves nothing, and the window it carries is
                # taken relative to snd_una (else one bogus ACK far ahead pushed the
                # window's edge out of reach and sending stopped for good)
                self._count("DataAckBeyondSent")
                ack = self.sendq.snd_una
            if self.sendq.acknowledge(ack):
                self._fin_backoff = 0
                self._data_rtx_backoff = 0
                self._data_rtx_deadline = None  # progress: re-armed from now by _push
                self.peer_data_acked = True
            self._update_send_window(ack, sf, window)
        if option.dsn is not None:
            self.data_ack_64 = option.dsn_64  # our data ACKs follow its DSN width
            dsn = _expand(option.dsn, self.reasm.next_dsn, option.dsn_64)
            length = option.data_level_length or 0
            if length == 0 and not (
                faults.ACTIVE and faults.on("infinite_mapping_kept_mptcp") and option.subflow_seq
            ):
                return  # an infinite mapping: `_on_infinite_mapping` took it
            mapping = Mapping(dsn, option.subflow_seq or 0, length, option.checksum,
                              option.data_fin)  # fmt: skip
            self._mapping_events(sf, sf.recvmap.add_mapping(mapping, sf.tcp.read_seq))

    def _on_prio(self, sf: Subflow, option: MpPrio) -> None:
        self._count("MPPrioRx")
        if faults.ACTIVE and faults.on("backup_ignore_mp_prio"):
            return
        targets = [sf]
        if option.address_id is not None:  # v0's 4-byte form names the subflows' address
            targets = [s for s in self.subflows if s.remote_id == option.address_id] or [sf]
        for target in targets:
            target.backup_remote = option.backup

    def _on_add_addr(self, sf: Subflow, option: AddAddrV1 | AddAddrV0) -> None:
        if isinstance(option, AddAddrV1):
            if option.echo:
                self._count("EchoAdd")
                if faults.ACTIVE and faults.on("add_addr_echo_ignored"):
                    return
                self._unechoed.pop(option.address_id, None)
                self._announce = [a for a in self._announce
                                  if not (isinstance(a, AddAddrV1) and not a.echo and
                                          a.address_id == option.address_id)]  # fmt: skip
                return
            expected = add_addr_hmac(self.remote_key or 0, self.local_key, option.address_id,
                                     option.address, option.port)  # fmt: skip
            if option.hmac != expected and not (
                faults.ACTIVE and faults.on("add_addr_accept_bad_hmac")
            ):
                self._count("AddAddrHmacBad")
                return  # RFC 8684 §3.4.1: ignored
        self._count("AddAddr")
        if isinstance(option, AddAddrV1) and not (faults.ACTIVE and faults.on("add_addr_no_echo")):
            # RFC 8684 §3.4.1: echoed whether or not the address is used, whatever the
            # endpoints and limits, and each time it comes (a resend means ours was lost)
            self._announce.append(AddAddrV1(option.address_id, option.address, option.port,
                                            echo=True))  # fmt: skip
        if self.paths is None:
            return
        peer = PeerAddress(option.address_id, option.address, option.port)
        for action in self.paths.on_add_addr(peer):
            if isinstance(action, OpenSubflow):
                self._pending_opens.append(action)

    def _on_remove_addr(self, option: RemoveAddr) -> None:
        self._count("RmAddr")
        if faults.ACTIVE and faults.on("remove_addr_ignored"):
            return
        for sf in list(self.subflows):
            if (sf.remote_id in option.address_ids and not sf.initial) or (
                sf.initial and 0 in option.address_ids
            ):
                sf.error = "peer removed its address"
                sf.tcp.abort(0.0)
        if self.paths is not None:
            self.paths.on_remove_addr(list(option.address_ids))

    # ------------------------------------------------------------------ data in

    def _mapping_events(self, sf: Subflow, events: list[Any]) -> None:
        assert self.reasm is not None
        for event in events:
            if isinstance(event, Deliver):
                self.reasm.add(event.dsn, event.data)
                sf.counters.bytes_received += len(event.data)
            elif isinstance(event, DataFin):
                self.peer_fin_dsn = event.dsn
            elif isinstance(event, Unmapped):
                if (len(self._alive()) == 1 and sf.initial
                        and not (faults.ACTIVE and faults.on("fallback_refused"))):  # fmt: skip
                    # RFC 8684 §3.7: the peer (or a middlebox) dropped the options: the
                    # bytes continue the stream in order.
                    self._fall_back(sf, "data without a DSS mapping")
                else:
                    self._reset_subflow(sf, MPTCP_RST_EMIDDLEBOX, "data without a mapping")
            elif isinstance(event, ChecksumFailed):
                self._count("DSSChecksumBad")
                self._on_checksum_failed(sf, event)
            elif isinstance(event, MappingError):
                self._reset_subflow(sf, MPTCP_RST_EMPTCP, event.reason)
        self._check_eof()

    def _on_checksum_failed(self, sf: Subflow, event: ChecksumFailed) -> None:
        """RFC 8684 §3.7 (RFC 6824 §3.6). With other subflows (or data not contiguous):
        the subflow is reset, MP_FAIL on the RST, and its data comes again on the
        others. One subflow with contiguous data: MP_FAIL with the mapping's DSN on the
        next pure ACKs, and the bytes stay the stream's: the peer's infinite mapping
        "acts retroactively", from the last byte we DATA_ACKed, so a middlebox's change
        becomes the (fallen-back) TCP stream's content, as it does for Linux, which
        delivers them at once; the peer sends nothing twice. Later failures before its
        infinite mapping (everything in flight crossed the same middlebox) are the same
        stream's bytes too."""
        if self.mp_fail_dsn is None or not self._infinite_fallback_allowed():
            sf.mp_fail_due = event.dsn
            if faults.ACTIVE and faults.on("mp_fail_wrong_dsn"):
                sf.mp_fail_due = (event.dsn + 1) % DSN_MOD
            self._count("MPFailTx")
        if not self._infinite_fallback_allowed():
            if faults.ACTIVE and faults.on("mp_fail_without_rst"):
                sf.mp_fail_due = None
                return  # the mapping's data is dropped, the subflow goes on
            self._reset_subflow(sf, MPTCP_RST_EMIDDLEBOX, "DSS checksum failed")
            return
        assert self.reasm is not None
        self.reasm.add(event.dsn, event.data)
        sf.counters.bytes_received += len(event.data)
        if self.mp_fail_dsn is None:
            self.mp_fail_dsn = event.dsn
            self._mp_fail_deadline = self._now + MP_FAIL_TIMEOUT
            sf.ack_due = True

    def _deliver_fallback(self, sf: Subflow, data: bytes, start: int) -> None:
        """In-order subflow bytes from `start`, once fallen back: the stream's next
        bytes; after our MP_FAIL, at the DSNs the peer's infinite mapping gives them
        (bytes it sends again are duplicates the reassembly drops)."""
        assert self.reasm is not None
        dsn = self.reasm.next_dsn
        if self._infinite_rx is not None:
            resume_seq, resume_dsn = self._infinite_rx
            skip = resume_seq - start
            if skip >= len(data):
                return
            if skip > 0:
                data, start = data[skip:], resume_seq
            dsn = (resume_dsn + start - resume_seq) % DSN_MOD
        if data:
            self.reasm.add(dsn, data)
            sf.counters.bytes_received += len(data)

    def _drain(self, sf: Subflow, now: float) -> None:
        """Move the subflow's in-order bytes to the data level, as far as the data-level
        buffer has room (so a slow reader closes the subflows' windows)."""
        reasm = self.reasm
        if reasm is None:
            return
        while sf.tcp.readable:
            room = self._data_room()
            if room <= 0:
                break
            start = sf.tcp.read_seq
            data = sf.tcp.receive(min(room, sf.tcp.readable), now)
            if not data:
                break
            if self.fallback:
                self._deliver_fallback(sf, data, start)
                continue
            assert sf.recvmap is not None
            events = sf.recvmap.deliver(start, data)
            unmapped = [e for e in events if isinstance(e, Unmapped)]
            self._mapping_events(sf, [e for e in events if not isinstance(e, Unmapped)])
            if unmapped:
                self._mapping_events(sf, unmapped[:1])
                if self.fallback:
                    offset = unmapped[0].subflow_seq - start
                    self._deliver_fallback(sf, data[offset:], unmapped[0].subflow_seq)
        self._check_eof()

    def _check_eof(self) -> None:
        reasm = self.reasm
        if reasm is None or self.eof:
            return
        if self.peer_fin_dsn is not None and reasm.next_dsn == self.peer_fin_dsn:
            self.eof = True
            self._count("DataFinRx")
            self._maybe_close_subflows()

    # ------------------------------------------------------------------ data out

    def _push(self, now: float) -> None:
        sendq = self.sendq
        if sendq is None or not self.established:
            return
        if self.fallback:
            alive = self._alive()
            sf = alive[0] if alive else None
            if sf is None or sf.tcp.fin_seq is not None:
                return
            while sendq.has_work() and sf.tcp.send_space > 0:
                chunk = sendq.take(sf.tcp.send_space)
                if chunk is None:
                    break
                sf.tcp.send(chunk[1], now)
                sf.counters.bytes_sent += len(chunk[1])
            if sendq.fin_requested and not sendq.has_work() and sf.tcp.state in (
                TcpState.ESTABLISHED, TcpState.CLOSE_WAIT
            ):  # fmt: skip
                sendq.mark_fin_sent()
                sf.tcp.shutdown_write(now)
            return
        while sendq.has_work():
            chosen = cast(list[Subflow], self.scheduler.select(self.subflows))
            if not chosen:
                break
            room = min(min(s.send_space for s in chosen), MAX_MAPPING)
            resend = sendq.reinjecting
            if not resend:
                room = min(room, self._data_window_room())
                if room <= 0:
                    break  # the peer's connection-level window is full
            chunk = sendq.take(room)
            if chunk is None:
                break
            dsn, data = chunk
            for sf in chosen:
                self._send_chunk(sf, dsn, data, now, resend)
        self._arm_data_rtx(now)
        if sendq.fin_requested and not sendq.has_work() and not sendq.fin_sent:
            ready = [s for s in self.subflows if s.usable]
            if ready:
                sendq.mark_fin_sent()
                self._count("DataFinTx")
                for sf in ready:
                    send_ack_now(sf.tcp, now)
                self._fin_deadline = now + DATA_FIN_RTO

    def _send_chunk(
        self, sf: Subflow, dsn: int, data: bytes, now: float, resend: bool = False
    ) -> None:
        """One mapping's worth of the stream onto `sf` (its TCP has room for it); `resend`:
        bytes sent before (a reinjection or a data-level retransmission)."""
        checksum = (
            dss_checksum(dsn, sf.sendmap.write_seq, len(data), data) if self.checksum else None
        )
        if checksum is not None and faults.ACTIVE and faults.on("dss_checksum_wrong"):
            checksum = dss_checksum(0, 0, 0, data)  # the pseudo-header left out
        sf.sendmap.append(dsn, len(data), checksum)
        sf.tcp.send(data, now)
        sf.counters.bytes_sent += len(data)
        if resend:
            sf.counters.bytes_resent += len(data)

    def _data_rto(self, now: float) -> float:
        """The data-level retransmission interval, as Linux's msk timer: until the latest
        pending retransmission timer (tail loss probe or RTO) of a subflow still making
        progress (no stale count), else the minimum RTO; doubled per data-level
        retransmission without a DATA_ACK."""
        waits = [
            deadline - now
            for sf in self.subflows
            if sf.usable
            and sf.stale_count == 0
            and (deadline := sf.tcp.retransmission_timer(now)) is not None
        ]
        base = max(waits, default=0.0)
        if base <= 0:
            base = self.config.tcp.min_rto
        return min(base * (1 << min(self._data_rtx_backoff, 5)), 30.0)

    def _arm_data_rtx(self, now: float) -> None:
        sendq = self.sendq
        if (
            sendq is None
            or self.fallback
            or (sendq.in_flight == 0 and not self._waiting_on_silent_subflow())
        ):
            self._data_rtx_deadline = None
        elif self._data_rtx_deadline is None:
            self._rearm_data_rtx(now)

    def _waiting_on_silent_subflow(self) -> bool:
        """Data waits to be sent while nothing is in flight at the data level, and a
        subflow still holds segments of its own unacknowledged (the DATA_ACK covered
        them: the backup carried them again). Linux would have queued the new data on
        that subflow, in flight at the data level; our scheduler keeps it out of a
        collapsed window. Either way the data-level timer must go on counting the
        silent subflow's intervals, or it never goes stale and the data never moves
        to the backup."""
        sendq = self.sendq
        return (
            sendq is not None
            and sendq.has_work()
            and any(sf.active and sf.outstanding for sf in self.subflows)
        )

    def _rearm_data_rtx(self, now: float) -> None:
        """Arm the data-level timer with the interval in force, then recompute the
        interval for the next arming, in the kernel's order: a DATA_ACK that moves
        (__mptcp_clean_una) and a firing (__mptcp_retrans) reset the timer with
        timer_ival, which the scheduler (mptcp_subflow_get_send) recomputes only
        afterwards. So after a blackhole the firing that finds the path silent goes
        again after the path's own short interval (its tail loss probe's, 2 SRTT),
        and the second one sends on the backup, rather than a minimum RTO later (the
        silent subflow no longer counts towards the recomputed interval)."""
        self._data_rtx_deadline = now + self._data_rtx_ival
        self._data_rtx_ival = self._data_rto(now)

    def _retransmit_target(self) -> Subflow | None:
        """Where the oldest unacknowledged bytes go again (the kernel's
        mptcp_subflow_get_retrans): an idle regular subflow; an idle backup only when
        every subflow holding data has gone two intervals without receiving anything
        (a lossy regular path that still answers keeps the backup unused). Subflows
        holding data count the interval towards going stale."""
        pick = backup = None
        least_stale = STALE_NEVER
        for sf in self.subflows:
            if not sf.active:
                continue
            if sf.outstanding:
                sf.note_retransmit_interval()
                least_stale = min(least_stale, sf.stale_count)
                self._mark_stale(sf)
            elif sf.link_down:
                continue
            elif sf.backup:
                backup = backup or sf
            else:
                pick = pick or sf
        if pick is not None:
            return pick
        return backup if least_stale > 1 else None

    def _mark_stale(self, sf: Subflow) -> None:
        """STALE_LOSS_CNT intervals without progress, and another subflow does better:
        this one stops carrying data, and what it holds goes to the others (the
        kernel's mptcp_pm_subflows_chk_stale)."""
        if sf.stale_marked or sf.stale_count < STALE_LOSS_CNT:
            return
        if any(o is not sf and o.active and o.stale_count < STALE_LOSS_CNT
               for o in self.subflows):  # fmt: skip
            sf.stale_marked = True
            self._check_stale(sf)

    def _retransmit_data(self, now: float) -> None:
        """The DATA_ACK has not moved for a data-level interval: send the oldest
        unacknowledged bytes again on the subflow `_retransmit_target` picks (the
        kernel's __mptcp_retrans). A peer can hold a hole otherwise (bytes its subflow
        acknowledged but its connection did not take), and a blackholed regular path
        loses the bytes it holds until the backup carries them."""
        self._data_rtx_deadline = None
        sendq = self.sendq
        if sendq is None or self.fallback:
            return
        if sendq.in_flight == 0:
            if self._waiting_on_silent_subflow():
                self._retransmit_target()  # nothing to send again; count the interval
                self._rearm_data_rtx(now)
            return
        target = self._retransmit_target()
        if target is not None and target.tcp.send_space > 0:
            room = min(sendq.in_flight, MAX_MAPPING, target.tcp.send_space)
            sendq.reinject(sendq.snd_una, room)
            chunk = sendq.take(room)
            if chunk is not None:
                self._data_rtx_backoff += 1
                self._count("MPTCPRetrans")
                self._send_chunk(target, chunk[0], chunk[1], now, resend=True)
        self._rearm_data_rtx(now)

    def _maybe_close_subflows(self) -> None:
        """Both DATA_FINs done: close the subflows in order (RFC 8684 §3.3.3). A full close,
        as Linux's __tcp_close() of each subflow: data still arriving on one is stale
        (the data level has it all) and gets a RST (`TcpConnection.close`). Bytes a
        subflow holds undrained are copies of what the data level has (Linux drops them
        as they come): no reason for a RST."""
        sendq = self.sendq
        if self.fallback or sendq is None:
            return
        if self.eof and sendq.fin_acknowledged:
            for sf in self.subflows:
                if sf.tcp.fin_seq is None and sf.tcp.state in (
                    TcpState.ESTABLISHED, TcpState.CLOSE_WAIT, TcpState.SYN_RECEIVED
                ):  # fmt: skip
                    sf.tcp.close(self._now, unread_aborts=False)

    # ------------------------------------------------------------------ subflow events

    _now = 0.0

    def _after(self, sf: Subflow, now: float) -> None:
        """Digest what the subflow's TCP reported after an input or timer."""
        self._now = now
        self._digest_events(sf, now)
        if self._aborted_others:
            self._aborted_others = False
            for other in list(self.subflows):
                if other is not sf:
                    self._digest_events(other, now)
        if sf.tcp.state is TcpState.ESTABLISHED or sf.tcp.state is TcpState.CLOSE_WAIT:
            self._on_tcp_established(sf, now)
        if sf.tcp.readable:
            self._drain(sf, now)
            # draining may reset the subflow (data without a mapping, a bad checksum):
            # its Reset is digested now, or no later input or timer of a closed TCP
            # would, and the connection would never learn that its subflow is gone
            self._digest_events(sf, now)
        if self.sendq is not None and self.sendq.fin_acknowledged:
            self._fin_deadline = None
        self._maybe_close_subflows()

    def _digest_events(self, sf: Subflow, now: float) -> None:
        for event in sf.tcp.poll_events():
            if isinstance(event, DataReceived):
                continue  # drained below
            if isinstance(event, DataAcked):
                if (
                    sf.plain_ack
                    and not self.fallback
                    and not self.peer_data_acked
                    and len(self._alive()) == 1
                ):
                    # RFC 8684 §3.7: our first data acknowledged without any MPTCP
                    # option: the options are being stripped, and the peer fell back.
                    # So do we, before counting this ACK, so no byte is sent twice. (Later
                    # option-less ACKs are no proof: Linux sends some, e.g. window updates.)
                    self._fall_back(sf, f"data acknowledged without DATA_ACK: {sf.last_plain}")
                sf.sendmap.acknowledged(event.snd_una)
                if sf.infinite_map is not None and event.snd_una > sf.infinite_map[2]:
                    sf.infinite_map = None  # the peer has it
                sf.stale_count = 0  # progress: its timers time the data level again
                if self.fallback and self.sendq is not None:
                    self.sendq.acknowledge((event.snd_una + self._fb_offset) % DSN_MOD)
            elif isinstance(event, PeerFinished):
                if self.fallback or (sf.initial and self.version is None):
                    self.eof = True
                elif faults.ACTIVE and faults.on("dss_subflow_fin_is_data_fin"):
                    self.eof = True
                    self._maybe_close_subflows()
            elif isinstance(event, Reset | Closed):
                self._subflow_gone(sf, event, now)

    def _on_tcp_established(self, sf: Subflow, now: float) -> None:
        if sf.phase is not Phase.CONNECTING:
            return
        if sf.initial:
            if not self.mptcp_decided:
                if self.server:
                    return  # decided by the third ACK's options (observer)
                self._fall_back(sf, "no MP_CAPABLE decision")
            sf.phase = Phase.ESTABLISHED
            if not self.established:
                self.established = True
                if self.version is not None and not self.fallback:
                    self._count("MPCapableEstablished")
                    if self.server or self.peer_sent_dss:
                        self._start_paths(now)
                    if self.server:
                        # a DSS (DATA_ACK) at once: the initiator is fully established
                        # only when it gets one, and only then does its PM open subflows
                        send_ack_now(sf.tcp, now)
        elif not sf.tcp.passive:  # a join we opened (a listener opens some too)
            sf.phase = Phase.PRE_ESTABLISHED
            if faults.ACTIVE and faults.on("join_data_before_fourth_ack"):
                sf.phase = Phase.ESTABLISHED
            sf.join_ack_due = True
            sf.join_ack_deadline = now + sf.tcp.rto.rto

    def _retry_with_v0(self, sf: Subflow, now: float) -> None:
        """RFC 8684 §3.1: a v1 SYN met a peer without it; open again with a v0 SYN."""
        self.retry_v0 = False
        sf.tcp.abort(now)
        sf.tcp.poll_events()
        sf.gone = True
        sf.phase = Phase.FAILED
        sf.error = "SYN/ACK without MP_CAPABLE: retried with v0"
        self._gone_subflows.append(sf)
        self._count("MPCapableRetryV0")
        if self.allocate_port is None:
            self._fall_back(sf, "no port to retry with v0")
            return
        remote = sf.remote
        port = self.allocate_port(sf.local[0], remote[0], remote[1])
        self._open_initial((sf.local[0], port), remote, 0, now)

    def _alive(self) -> list[Subflow]:
        return [s for s in self.subflows if not s.gone]

    def _subflow_gone(self, sf: Subflow, event: Reset | Closed, now: float) -> None:
        if sf.gone:
            return
        sf.gone = True
        if isinstance(event, Reset) and event.by_peer and self.version is not None:
            # Linux resets a connection with MP_FASTCLOSE on the RST of every subflow:
            # the connection ends, this is no subflow failure to join again
            for option in event.options:
                if isinstance(option, MpFastclose):
                    self._on_fastclose(option, sf)
            if (
                faults.ACTIVE
                and faults.on("tcprst_kills_connection")
                and any(isinstance(o, MpTcpRst) for o in event.options)
            ):
                for other in self.subflows:
                    if other is not sf:
                        other.tcp.abort(now)
                self._aborted_others = True
        orderly = isinstance(event, Closed) and event.reason.value == "normal"
        sf.phase = Phase.CLOSED if orderly else Phase.FAILED
        if not sf.error and not orderly:
            sf.error = "reset by peer" if isinstance(event, Reset) and event.by_peer else str(
                getattr(event, "reason", "aborted"))  # fmt: skip
        if self.sendq is not None and not self.fallback:
            for dsn, length in sf.sendmap.unacknowledged():
                self.sendq.reinject(dsn, length)
                sf.counters.reinjected_away += length
        if self.paths is not None:
            if sf.tcp.passive and not sf.initial:
                if sf.counted:
                    self.paths.join_closed()
            else:
                self._path_gone(sf, event, orderly, now)
        if not self._alive():
            if not (self.eof and (self.sendq is None or self.sendq.fin_acknowledged)):
                if not self.error:
                    self.error = (
                        f"every subflow is gone (last: {sf.error or 'closed'})"
                        if not (self.fallback and orderly) else ""
                    )  # fmt: skip
                if self.fallback and orderly:
                    self.eof = True
            self.closed = True
            if self.local_token:
                self.tokens.release(self.local_token)
        self._gone_subflows.append(sf)

    def _path_gone(self, sf: Subflow, event: Reset | Closed, orderly: bool, now: float) -> None:
        """A subflow we opened is gone: free its slot, and have its path joined again
        if it failed while the connection goes on (pm.py: re-joining)."""
        assert self.paths is not None
        key = sf.path_key
        if sf.initial:
            key = self.paths.initial_key if not self.server else None
        if key is None:
            return
        ongoing = (
            not orderly
            and not self.fallback
            and not self.fastclose
            and self.mp_fail_dsn is None
            and not self.closed
            and not (self.eof and (self.sendq is None or self.sendq.fin_acknowledged))
            and any(not other.gone for other in self.subflows)
        )
        if not ongoing:
            self.paths.subflow_closed(key)
            return
        self.paths.subflow_failed(key, now, transient=_transient(event))
        self._count("SubflowFailed")
        # its slot is free: the path manager moves on to what else its limits allow (as
        # Linux's mptcp_pm_subflow_check_next), opened once the caller is done
        self._pending_opens += [a for a in self.paths.retry() if isinstance(a, OpenSubflow)]

    def on_link_change(
        self,
        addresses: set[IPAddress],
        up: bool,
        now: float,
        way_down: Callable[[Subflow], bool] | None = None,
    ) -> None:
        """A link of ours went down or came back (the host's link watcher); `addresses`
        are its own. `way_down(sf)`: whether the subflow's packets now leave through a
        link that is down (by default: its address is one of `addresses`, down). A
        subflow whose way went down goes stale at once, its data to the others, rather
        than after the data-level timeouts, and carries nothing new until its way is up
        again (an ACK read after the notice, received before, must not make it usable).
        Up: it retransmits now rather than at its backed-off RTO, and the link's failed
        paths are joined again."""
        self._now = now
        if self.closed or self.version is None or self.fallback:
            return
        for sf in self.subflows:
            if sf.gone:
                continue
            was_down = sf.link_down
            if way_down is not None:
                sf.link_down = way_down(sf)
            elif sf.local[0] in addresses:
                sf.link_down = not up
            if was_down and not sf.link_down:
                sf.tcp.kick(now)
            elif (
                sf.link_down
                and sf.active
                and not sf.stale_marked
                and any(o is not sf and o.usable for o in self.subflows)
            ):
                sf.stale_count = STALE_LOSS_CNT
                sf.stale_rcv_tstamp = sf.tcp.rcv_tstamp
                sf.stale_marked = True
                self._check_stale(sf)
        if up and self.paths is not None:
            for address in sorted(addresses, key=str):
                self._apply_paths(self.paths.address_returned(address), now)
        self._push(now)

    def _reset_subflow(self, sf: Subflow, reason: int, why: str) -> None:
        if faults.ACTIVE and faults.on("tcprst_no_reason"):
            reason = MPTCP_RST_EUNSPEC
        sf.rst_reason = reason
        sf.error = why
        self._count("SubflowReset")
        sf.tcp.abort(self._now)

    # ------------------------------------------------------------------ path manager

    def _start_paths(self, now: float) -> None:
        if self.paths is None or self.paths.established:
            return
        self._prio_initial_subflow(now)
        self._apply_paths(self.paths.on_established(), now)

    def _prio_initial_subflow(self, now: float) -> None:
        """The initial subflow's address is a backup endpoint: no join carries its B bit,
        so tell the peer with MP_PRIO B=1 once the connection is established (RFC 8684
        §3.3.8), as Linux does (mptcp_join.sh, "mpc backup")."""
        sf = self.first_subflow
        if self.paths is None or sf is None or sf.backup_local:
            return
        if any(e.backup and e.address == sf.local[0] for e in self.paths.manager.endpoints):
            sf.backup_local = True
            sf.prio_due = True
            self._count("MPPrioTx")
            send_ack_now(sf.tcp, now)

    def _apply_paths(self, actions: list[Any], now: float) -> None:
        for action in actions:
            if isinstance(action, Announce):
                self._queue_announce(action.endpoint.id, action.endpoint.address,
                                     action.endpoint.port)  # fmt: skip
            elif isinstance(action, OpenSubflow):
                self._pending_opens.append(action)
        self._open_pending(now)

    def add_local_endpoint(self, endpoint: Endpoint, now: float) -> None:
        """A new endpoint on a live connection (as `ip mptcp endpoint add`): announce it
        if it signals, open the subflows it allows."""
        if self.paths is None or self.fallback or self.version is None or self.closed:
            return
        self._apply_paths(self.paths.on_endpoint_added(endpoint), now)
        usable = [sf for sf in self.subflows if sf.usable]
        if self._announce and usable:
            send_ack_now(usable[0].tcp, now)

    def _take_announcement(self) -> Any:
        """The next ADD_ADDR (or echo, or REMOVE_ADDR), for one pure ACK. A v1 original
        is sent again on a timer until echoed (RFC 8684 §3.4.1), at most 3 more times
        as the kernel does; the rest go once."""
        sent = self._announce.pop(0)
        if isinstance(sent, AddAddrV1) and not sent.echo:
            tries = self._unechoed.get(sent.address_id, (sent, 0.0, -1))[2] + 1
            fixed = self.config.add_addr_timeout
            if faults.ACTIVE and faults.on("add_addr_no_retransmit"):
                fixed = 0
            if tries < ADD_ADDR_RETRIES and fixed != 0:  # the original, then 3 resends
                interval = ADD_ADDR_RTO * (1 << tries) if fixed is None else fixed
                deadline = self._now + interval
                self._unechoed[sent.address_id] = (sent, deadline, tries)
            else:
                self._unechoed.pop(sent.address_id, None)
        return sent

    def _queue_announce(self, address_id: int, address: IPAddress, port: int | None) -> None:
        if faults.ACTIVE and faults.on("add_addr_port_dropped"):
            port = None
        if self.version == 1:
            mac = add_addr_hmac(self.local_key, self.remote_key or 0, address_id, address, port)
            if faults.ACTIVE and faults.on("add_addr_hmac_keys_swapped"):
                mac = add_addr_hmac(self.remote_key or 0, self.local_key, address_id, address,
                                    port)  # fmt: skip
            self._announce.append(AddAddrV1(address_id, address, port, hmac=mac))
        else:
            self._announce.append(AddAddrV0(address_id, address, port))
        self._count("AddAddrTx")

    def remove_local_address(self, address_id: int, address: IPAddress, now: float) -> None:
        """An endpoint went away: tell the peer (REMOVE_ADDR, RFC 8684 §3.4.2) and reset
        the subflows that use the address. The peer knows the initial subflow's address
        by ID 0 (§3.2), whatever the endpoint's ID: when the address is that one, the
        REMOVE_ADDR carries 0 and the initial subflow goes too, as Linux does for ID 0
        (`ip mptcp endpoint delete id 0 ADDR`, mptcp_join.sh "remove id 0 address")."""
        if self.fallback or self.version is None or self.closed:
            return
        self._unechoed.pop(address_id, None)
        self._announce = [a for a in self._announce
                          if getattr(a, "address_id", None) != address_id]  # fmt: skip
        first = self.first_subflow
        initial = first is not None and first.local[0] == address
        if not (faults.ACTIVE and faults.on("remove_addr_not_sent")):
            self._announce.append(RemoveAddr((0,) if initial else (address_id,)))
            self._count("RmAddrTx")
        for sf in list(self.subflows):
            if not sf.gone and sf.local[0] == address:
                self._reset_subflow(sf, MPTCP_RST_EUNSPEC, "local address removed")
                self._after(sf, now)  # gone now: its data reinjected, not at the next timer
        usable = [sf for sf in self.subflows if sf.usable]
        if usable:
            send_ack_now(usable[0].tcp, now)

    def _open_pending(self, now: float) -> None:
        opens, self._pending_opens = self._pending_opens, []
        first = self.first_subflow
        initial = first.local[0] if first is not None else None
        for action in opens:
            # the connection's initial address is address ID 0 (RFC 8684 §3.2)
            local_id = 0 if action.local.address == initial else action.local.id
            sf = self.open_subflow(action.local.address, local_id, action.remote.address,
                                   action.remote.port or self._peer_port(),
                                   backup=action.backup, now=now,
                                   device=action.local.ifname)  # fmt: skip
            if sf is not None:
                sf.path_key = action.key
            elif self.paths is not None:
                self.paths.subflow_closed(action.key)  # not opened: its slot stays free

    def open_subflow(self, local: IPAddress, local_id: int, remote: IPAddress, port: int, *,
                     backup: bool, now: float, device: str = "") -> Subflow | None:  # fmt: skip
        """MP_JOIN from `local` to `remote` (RFC 8684 §3.2), bound to `device` if given."""
        if (self.fallback or self.version is None or self.remote_key is None or self.closed
                or self.mp_fail_dsn is not None):  # fmt: skip
            return None  # after MP_FAIL no subflow may join (Linux: allow_subflows)
        if self.allocate_port is None:
            return None
        local_port = self.allocate_port(local, remote, port)
        tcp = TcpConnection((local, local_port), (remote, port), config=self._subflow_config(),
                            isn_secret=self.isn_secret, now=now)  # fmt: skip
        sf = Subflow(tcp, initial=False, local_id=local_id, backup_local=backup, device=device)
        sf.join = JoinCrypto.fresh(self.version, self.local_key, self.remote_key)
        sf.recvmap = SubflowReceiveMapper(self.checksum)
        self._hook(sf)
        self.add_subflow(sf)
        self._count("MPJoinSynTx")
        tcp.connect(now)
        return sf

    def _on_join_synack(self, sf: Subflow, options: tuple[Any, ...]) -> None:
        synack = next((o for o in options if isinstance(o, MpJoinSynAck)), None)
        join = sf.join
        assert join is not None
        if synack is None:
            self._reset_subflow(sf, MPTCP_RST_EMPTCP, "SYN/ACK without MP_JOIN")
            return
        join.remote_nonce = synack.nonce
        if synack.hmac != join.expected_synack_hmac() and not (
            faults.ACTIVE and faults.on("join_accept_bad_hmac_b")
        ):
            self._count("MPJoinSynAckHMacFailure")
            # aborted from inside TCP's SYN-SENT processing: TCP answers the SYN/ACK
            # with a RST (MP_TCPRST reason 1) and nothing else, as Linux; never the ACK
            # that would complete the handshake of a peer that failed authentication
            self._reset_subflow(sf, MPTCP_RST_EMPTCP, "MP_JOIN SYN/ACK with a wrong HMAC")
            return
        self._count("MPJoinSynAckRx")
        sf.remote_id = synack.address_id
        sf.backup_remote = synack.backup

    def attach_join(self, sf: Subflow) -> None:
        """A join the listener accepted at its third ACK: the subflow now belongs here."""
        sf.recvmap = SubflowReceiveMapper(self.checksum)
        self._hook(sf)
        self.add_subflow(sf)

    def _on_join_ack(self, sf: Subflow, options: tuple[Any, ...]) -> None:
        ack = next((o for o in options if isinstance(o, MpJoinAck)), None)
        join = sf.join
        assert join is not None
        if ack is None:
            # no HMAC-A to check, so the subflow cannot be authenticated: reset (RFC
            # 8684 §3.2), as Linux (a fallback, fatal for a join: MP_TCPRST reason 1,
            # and no MPJoinAckHMacFailure). Linux itself sends this: a joining Linux
            # whose third ACK was lost repeats it without MP_JOIN once a DATA_FIN of
            # its own is pending (options.c: "DATA_FIN and TCP shutdown take
            # precedence"), a DSS with the DATA_FIN in its place; no HMAC failed
            self._count("MPJoinAckMissing")
            sf.phase = Phase.FAILED
            sf.rst_reason = MPTCP_RST_EMPTCP
            sf.error = "third ACK without MP_JOIN (no HMAC-A)"
            return
        if ack.hmac != join.expected_ack_hmac() and not (
            faults.ACTIVE and faults.on("join_accept_bad_hmac_a")
        ):
            self._count("MPJoinAckHMacFailure")
            sf.phase = Phase.FAILED
            sf.rst_reason = MPTCP_RST_EMPTCP
            sf.error = "third ACK with a wrong MP_JOIN HMAC-A"
            return
        if (self.paths is not None and not self.paths.accept_join()
                and not (faults.ACTIVE and faults.on("join_no_subflow_limit"))):  # fmt: skip
            # the limit filled up while this join was half-done (as Linux, at the 3rd ACK)
            self._count("MPJoinRejectedLimit")
            sf.phase = Phase.FAILED
            sf.rst_reason = MPTCP_RST_EPROHIBIT
            sf.error = "subflow limit reached"
            return
        sf.counted = True
        self._count("MPJoinAckRx")
        sf.phase = Phase.ESTABLISHED
        sf.fourth_ack_due = True

    # ------------------------------------------------------------------ driving

    def handle_segment(self, sf: Subflow, seg: Segment, now: float) -> None:
        self.handle_segments(sf, [seg], now)

    def handle_segments(self, sf: Subflow, segments: list[Segment], now: float) -> None:
        """Segments of one subflow that arrived together (one read of the link)."""
        self._now = now
        if len(segments) == 1:
            sf.tcp.handle_segment(segments[0], now)
        else:
            sf.tcp.handle_segments(segments, now)
        if sf.phase is Phase.FAILED and sf.tcp.state is not TcpState.CLOSED:
            sf.tcp.abort(now)  # a join whose third ACK failed its HMAC
        elif sf.fourth_ack_due:
            sf.fourth_ack_due = False
            send_ack_now(sf.tcp, now)
        if self.retry_v0 and sf.initial and not sf.gone:
            self._retry_with_v0(sf, now)
            return
        self._after(sf, now)
        if sf.ack_due and not sf.gone:
            sf.ack_due = False
            send_ack_now(sf.tcp, now)  # an MP_FAIL is owed
        if self._announce and sf.usable:
            send_ack_now(sf.tcp, now)  # an ADD_ADDR, its echo or a REMOVE_ADDR is owed
        self._open_pending(now)
        self._push(now)

    def next_timer(self) -> float | None:
        times = [t for sf in self.subflows if (t := sf.tcp.next_timer()) is not None]
        if self.closed:
            return min(times) if times else None  # every subflow is gone: nothing else to do
        times += [sf.join_ack_deadline for sf in self.subflows if sf.join_ack_deadline]
        if self._fin_deadline is not None:
            times.append(self._fin_deadline)
        if self._data_rtx_deadline is not None:
            times.append(self._data_rtx_deadline)
        if self._mp_fail_deadline is not None:
            times.append(self._mp_fail_deadline)
        times += [deadline for _, deadline, _ in self._unechoed.values()]
        rejoin = self.paths.next_rejoin() if self.paths is not None else None
        if rejoin is not None and not self.closed:
            times.append(rejoin)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        self._now = now
        for sf in list(self.subflows):
            deadline = sf.tcp.next_timer()
            if deadline is not None and deadline <= now:
                sf.tcp.handle_timer(now)
            if sf.join_ack_deadline is not None and sf.join_ack_deadline <= now:
                self._retransmit_join_ack(sf, now)
            self._after(sf, now)
            self._check_stale(sf)
        for address_id, (option, deadline, tries) in list(self._unechoed.items()):
            if deadline <= now:
                self._unechoed[address_id] = (option, float("inf"), tries)
                self._announce.append(option)
                self._count("AddAddrRetrans")
                usable = [s for s in self.subflows if s.usable]
                if usable:
                    send_ack_now(usable[0].tcp, now)
        if self.paths is not None and not self.closed:
            rejoin = self.paths.next_rejoin()
            if rejoin is not None and rejoin <= now:
                self._apply_paths(self.paths.rejoin_due(now), now)
        if self._pending_opens:
            self._open_pending(now)  # a subflow failed on a timer: the next one's turn
        if self._data_rtx_deadline is not None and self._data_rtx_deadline <= now:
            self._retransmit_data(now)
        if self._mp_fail_deadline is not None and self._mp_fail_deadline <= now:
            self._mp_fail_deadline = None
            for sf in self._alive():
                self._reset_subflow(sf, MPTCP_RST_EMIDDLEBOX, "MP_FAIL never answered")
        if self._fin_deadline is not None and self._fin_deadline <= now:
            self._fin_backoff += 1
            self._fin_deadline = now + DATA_FIN_RTO * (1 << min(self._fin_backoff, 6))
            for sf in self.subflows:
                if sf.usable and not (
                    faults.ACTIVE and faults.on("dss_data_fin_not_retransmitted")
                ):
                    send_ack_now(sf.tcp, now)
        self._push(now)

    def _check_stale(self, sf: Subflow) -> None:
        """A subflow whose retransmissions go unanswered stops carrying data, and what it
        holds unacknowledged is sent again at the data level on the others (the kernel's
        stale subflows and MPTCP-level retransmission)."""
        if not sf.stale:
            sf.stale_reinjected = False
            return
        if sf.stale_reinjected or self.fallback or self.sendq is None or sf.gone:
            return
        others = [s for s in self.subflows if s is not sf and s.usable]
        if not others:
            return
        sf.stale_reinjected = True
        self._count("SubflowStale")
        for dsn, length in sf.sendmap.unacknowledged():
            self.sendq.reinject(dsn, length)
            sf.counters.reinjected_away += length

    def _retransmit_join_ack(self, sf: Subflow, now: float) -> None:
        sf.join_ack_tries += 1
        if sf.join_ack_tries > self.config.join_ack_retries:
            sf.join_ack_deadline = None
            self._reset_subflow(sf, MPTCP_RST_EMPTCP, "no fourth ACK: join given up")
            return
        self._count("MPJoinAckRetrans")
        if not (faults.ACTIVE and faults.on("join_no_third_ack_retransmit")):
            send_ack_now(sf.tcp, now)
        backoff = 1 << sf.join_ack_tries
        if faults.ACTIVE and faults.on("join_third_ack_fixed_timer"):
            backoff = 1
        sf.join_ack_deadline = now + sf.tcp.rto.rto * backoff

    def poll_segments(self) -> list[tuple[Subflow, Segment]]:
        out = []
        finished = False
        for sf in self.subflows:
            for seg in sf.tcp.poll_segments():
                out.append((sf, seg))
            sf.sendmap.trim()  # now that every built segment carries its mapping
            finished = finished or (sf.gone and sf.tcp.state is TcpState.CLOSED)
        if finished:
            self._prune_closed()
        return out

    def _prune_closed(self) -> None:
        """Subflows gone for good leave the connection (reported once more to the
        driver, which unregisters them); the last few stay in `closed_subflows`."""
        live = []
        for sf in self.subflows:
            if sf.gone and sf.tcp.state is TcpState.CLOSED:
                self.closed_subflows.append(sf)
                self._gone_subflows.append(sf)
            else:
                live.append(sf)
        self.subflows = live

    def every_subflow(self) -> list[Subflow]:
        """The live subflows and the last closed ones, in the order they were made."""
        if not self.closed_subflows:
            return list(self.subflows)
        return sorted([*self.closed_subflows, *self.subflows], key=lambda sf: sf.number)

    def _peer_port(self) -> int:
        first = self.first_subflow
        return first.remote[1] if first is not None else 0

    def poll_new_subflows(self) -> list[Subflow]:
        new, self._new_subflows = self._new_subflows, []
        return new

    def poll_gone_subflows(self) -> list[Subflow]:
        gone, self._gone_subflows = self._gone_subflows, []
        return gone

    # ------------------------------------------------------------------ the application

    def send(self, data: bytes | memoryview, now: float) -> int:
        if self.sendq is None:
            raise BrokenPipeError("the connection is not established")
        if self.error:
            raise ConnectionError(self.error)
        taken = self.sendq.write(data)
        self._push(now)
        return taken

    @property
    def send_space(self) -> int:
        return self.sendq.space if self.sendq is not None else 0

    @property
    def readable(self) -> int:
        return self.reasm.readable if self.reasm is not None else 0

    def receive(self, max_bytes: int, now: float) -> bytes:
        if self.reasm is None:
            return b""
        data = self.reasm.read(max_bytes)
        for sf in self.subflows:
            if sf.tcp.readable:
                self._drain(sf, now)
        return data

    def shutdown_write(self, now: float) -> None:
        if self.sendq is None:
            for sf in self.subflows:
                sf.tcp.shutdown_write(now)
            return
        if not self.sendq.fin_requested:
            self.sendq.close()
        self._push(now)

    def close(self, now: float) -> None:
        """The application closes: DATA_FIN; with received data it never read, an abort
        instead (MP_FASTCLOSE), the MPTCP equivalent of TCP's RST for data lost at close
        (RFC 1122 4.2.2.13, RFC 8684 §3.5), as Linux does."""
        if self.readable and not self.fallback and self.version is not None:
            self.abort(now)
            return
        self.shutdown_write(now)

    def discard(self) -> None:
        """Forget a half-open connection silently (listener backlog overflow)."""
        for sf in self.subflows:
            sf.tcp.forget()
            sf.gone = True
            sf.phase = Phase.FAILED
        self.closed = True
        self.error = "dropped from a full listen backlog"
        self._gone_subflows.extend(self.subflows)
        if self.local_token:
            self.tokens.release(self.local_token)

    def abort(self, now: float) -> None:
        """MP_FASTCLOSE (RFC 8684 §3.5): reset every subflow at once. Each gets a pure ACK
        with MP_FASTCLOSE, then a RST with it (and MP_TCPRST in v1 if a reason is set):
        a RST is taken only at the exact sequence number the peer expects (RFC 5961), so
        with data lost in flight the peer would answer it with a challenge ACK and end
        only the subflow, at our host's plain reset; the ACK it always takes."""
        fastclose = not self.fallback and self.version is not None
        if fastclose:
            self.fastclose = self._fastclose_ack = True
            self._count("MPFastcloseTx")
        for sf in self.subflows:
            if fastclose:
                sf.tcp.send_pure_ack(now)
            sf.tcp.abort(now, flush=not fastclose)  # the MP_FASTCLOSE ACK goes first
        if not self.error:
            self.error = "aborted"

    def fail(self, reason: str, now: float) -> None:
        """Something went wrong in our own handling of this connection (an exception on
        the I/O loop: a bug, or a send the kernel refused): rather than leave it silent,
        reset it. Every subflow gets `abort`'s MP_FASTCLOSE (so the peer ends the
        connection at once, RFC 8684 §3.5), its RST with MP_TCPRST in v1 (reason:
        unspecified, not transient); the application's calls fail with `reason`."""
        self._now = now
        if not self.error:
            self.error = reason
        for sf in self.subflows:
            if not sf.gone:
                sf.rst_reason = MPTCP_RST_EUNSPEC
                sf.error = sf.error or reason
        self.abort(now)
        for sf in list(self.subflows):
            self._after(sf, now)  # gone now: no timer of theirs left to fire

    @property
    def sent_done(self) -> bool:
        """The peer acknowledged every byte we sent, and our DATA_FIN (or FIN)."""
        sendq = self.sendq
        if sendq is None:
            return False
        return sendq.fin_acknowledged or (self.fallback and sendq.fin_sent
                                          and sendq.in_flight == 0)  # fmt: skip

    @property
    def finished(self) -> bool:
        """Both directions done at the data level, or the connection failed."""
        if self.error or self.closed:
            return True
        return self.eof and self.sent_done

    def internals(self, now: float) -> dict[str, Any]:
        """The data level's and each live subflow's state, for a user asking what a
        connection is waiting on (`--control stdin`, cmd "state"): not on any data path."""
        sendq, reasm = self.sendq, self.reasm
        data: dict[str, Any] = {"closed": self.closed, "eof": self.eof, "error": self.error}
        if sendq is not None:
            data["send"] = {"snd_una": sendq.snd_una, "in_flight": sendq.in_flight,
                            "unsent": sendq.unsent, "reinjecting": sendq.reinjecting,
                            "fin_sent": sendq.fin_sent, "fin_acknowledged": sendq.fin_acknowledged,
                            "window_room": self._data_window_room()}  # fmt: skip
        if reasm is not None:
            data["receive"] = {"next_dsn": reasm.next_dsn, "readable": reasm.readable,
                               "out_of_order": reasm.buffered - reasm.readable,
                               "out_of_window_bytes": reasm.out_of_window_bytes,
                               "window": reasm.receive_window()}  # fmt: skip
        timers = {"data_rtx": self._data_rtx_deadline, "data_fin": self._fin_deadline,
                  "mp_fail": self._mp_fail_deadline}  # fmt: skip
        data["timers_in_s"] = {k: round(t - now, 3) for k, t in timers.items() if t is not None}
        data["subflows"] = [_subflow_internals(sf) for sf in self.subflows]
        return data

    def describe(self) -> dict[str, Any]:
        return {
            "in_use": self.version is not None and not self.fallback,
            "version": self.version if not self.fallback else None,
            "fallback": self.fallback,
            "fallback_reason": self.fallback_reason,
            "checksum": self.checksum,
            "local_token": f"{self.local_token:08x}" if self.version is not None else None,
            "remote_token": f"{self.remote_token:08x}" if self.remote_token is not None else None,
            "local_key": f"{self.local_key:016x}" if self.version is not None else None,
            "remote_key": f"{self.remote_key:016x}" if self.remote_key is not None else None,
            "subflows": [sf.describe() for sf in self.every_subflow()],
            "counters": dict(self.counters),
        }


def _subflow_internals(sf: Subflow) -> dict[str, Any]:
    tcp = sf.tcp
    return {
        **sf.describe(),
        "tcp_state": tcp.state.name,
        "snd_una": tcp.snd_una,
        "snd_max": tcp.snd_max,
        "snd_wnd": tcp.snd_wnd,
        "cwnd": tcp.cc.cwnd,
        "srtt_ms": round(sf.srtt * 1000, 2),  # the data-level interval follows it
        "unacked": sf.unacked,
        "send_space": sf.send_space,
        "retries": tcp.retries,
        "rcv_nxt": tcp.rcv_nxt,
        "rcv_adv": tcp.rcv_adv,
        "stale_count": sf.stale_count,
        "stale": sf.stale,
        "link_down": sf.link_down,
        "usable": sf.usable,
    }
