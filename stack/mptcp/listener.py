"""The passive side: SYNs to a listening port become MPTCP connections or joins.

- A SYN with MP_CAPABLE starts a connection (version and checksums negotiated by
  `handshake.listener_decision`); one without starts a plain-TCP (fallen-back) one.
  Either way it is "half-open" until its handshake completes, and half-open connections
  are bounded by `backlog`: when full, the oldest is dropped silently if it waited an
  initial RTO, else the new SYN is (before any work). So a SYN flood costs bounded
  memory and tokens and little CPU per SYN (a real peer retransmits its SYN).
- A SYN with MP_JOIN (RFC 8684 §3.2) is looked up by token. Unknown token: RST with
  MP_TCPRST reason 1. A connection that fell back or is closing, or one at its subflow
  limit (reason 3, "administratively prohibited"), refuses it the same way. Otherwise
  the join waits here, half-open, in its own bounded queue (`joins`, oldest dropped
  when full), as Linux keeps it in the listener's request queue: its connection is not
  touched until the third ACK. One connection has at most `joins_per_connection` of
  them; a join SYN beyond is dropped before any work unless the oldest went unanswered
  for a second. So a flood of join SYNs with a valid token costs bounded memory and
  little CPU and leaves the connection alone, and a real join gets in after it.
  The third ACK attaches the subflow to its connection (`handle_join_segments`), which
  then checks its HMAC and limit.
- Once established, connections wait in a bounded accept queue.
Sans-I/O: the caller sends `poll_segments()` and registers what `handle_syn` returns.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict, deque
from typing import Any

from stack import faults
from stack.mptcp import handshake
from stack.mptcp.connection import MptcpConfig, MptcpConnection
from stack.mptcp.handshake import JoinCrypto
from stack.mptcp.pm import PathManager, PeerAddress
from stack.mptcp.subflow import Address, Subflow
from stack.mptcp.token import TokenTable
from stack.tcp.connection import TcpConnection, TcpState
from stack.tcp.segment import ACK, RST, SYN, Segment
from stack.wire.mptcp import (
    MPC_FLAG_C,
    MPTCP_RST_EMPTCP,
    MPTCP_RST_EPROHIBIT,
    MPTCP_RST_ERESOURCE,
    MPTCP_RST_EUNSPEC,
    MpCapable,
    MpJoinSyn,
    MpTcpRst,
)

# Half-open joins one connection may have here: twice the most subflows Linux allows
# (net.mptcp limits: 8), so a peer that joins at once on every path never meets it
JOINS_PER_CONNECTION = 16
# s: TCP's initial RTO (RFC 6298): a SYN/ACK unanswered this long is sent again, and a
# half-open handshake this old may make room for a new one
SYN_UNANSWERED = 1.0


class MptcpListener:
    def __init__(
        self,
        port: int,
        config: MptcpConfig,
        tokens: TokenTable[MptcpConnection],
        *,
        isn_secret: bytes,
        paths: PathManager | None = None,
        allocate_port: Any = None,
        backlog: int = 128,
        accept_backlog: int = 128,
        joins_per_connection: int = JOINS_PER_CONNECTION,
    ) -> None:
        self.port = port
        self.config = config
        self.tokens = tokens
        self.isn_secret = isn_secret
        self.paths = paths
        self.allocate_port = allocate_port
        self.backlog = backlog
        self.accept_backlog = accept_backlog
        self.joins_per_connection = joins_per_connection
        self.half_open: OrderedDict[tuple[Address, Address], MptcpConnection] = OrderedDict()
        self.joins: OrderedDict[tuple[Address, Address], tuple[MptcpConnection, Subflow]] = (
            OrderedDict()
        )
        self._new_joins: list[tuple[Address, Address]] = []
        self._gone_joins: list[tuple[Address, Address]] = []
        # (deadline, order, key, subflow) of the half-open joins' timers; an entry whose
        # join is gone or whose timer moved is skipped (`_armed`)
        self._join_timers: list[tuple[float, int, tuple[Address, Address], Subflow]] = []
        self._timer_order = itertools.count()
        self.accept_queue: deque[MptcpConnection] = deque()
        self._out: list[tuple[Address, Address, Segment]] = []
        self._evicted: list[MptcpConnection] = []
        self.counters: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def handle_syn(
        self, local: Address, remote: Address, seg: Segment, now: float
    ) -> MptcpConnection | None:
        """A segment for the port that no subflow owns. Returns the new connection that
        now owns it, or None (a join, kept half-open here; answered here; or ignored)."""
        if seg.flags & RST:
            return None
        if seg.flags & ACK or not seg.flags & SYN:
            self._reset(local, remote, seg)  # RFC 9293 §3.10.7.2
            return None
        join = next((o for o in seg.extra_options if isinstance(o, MpJoinSyn)), None)
        if join is not None:
            return self._join(local, remote, seg, join, now)
        capable = next((o for o in seg.extra_options if isinstance(o, MpCapable)), None)
        decision = (
            handshake.listener_decision(self.config.capable, capable)
            if capable is not None
            else handshake.ListenerDecision(None, reason="SYN without MP_CAPABLE")
        )
        if decision.drop:
            self._count("MPCapableSYNIgnored")
            return None
        if len(self.accept_queue) >= self.accept_backlog:
            self._count("ListenOverflows")
            return None  # as Linux: ignored, the peer retries
        if len(self.half_open) >= self.backlog:
            self._count("ListenDrops")
            oldest_key, oldest = next(iter(self.half_open.items()))
            if now - oldest.opened_at < SYN_UNANSWERED:
                # a flood: every waiting handshake is younger than an initial RTO. The
                # new SYN is dropped before any work (as Linux without cookies), so the
                # loop keeps up; a real peer sends its SYN again
                return None
            del self.half_open[oldest_key]  # its SYN/ACK went unanswered for an RTO
            oldest.discard()
            self._evicted.append(oldest)
        paths = (
            self.paths.connection(local[0], PeerAddress(0, remote[0], remote[1]))
            if self.paths is not None
            else None
        )
        if paths is not None and capable is not None and capable.flags & MPC_FLAG_C:
            paths.initial_remote_joinable = False  # RFC 8684 §3.1: "MUST NOT try"
        msk = MptcpConnection(self.config, self.tokens, isn_secret=self.isn_secret, server=True,
                              allocate_port=self.allocate_port, paths=paths)  # fmt: skip
        msk.opened_at = now
        sf = self._passive_subflow(msk, local, remote, seg, now, initial=True)
        tcp = sf.tcp
        if decision.version is None:
            msk.fallback_reason = decision.reason
            msk.add_subflow(sf)
            msk._fall_back(sf, decision.reason)
        else:
            try:
                msk.local_key, msk.local_token = self.tokens.new_key(decision.version)
            except OverflowError:
                tcp.abort(now)
                return None
            msk.version = decision.version
            msk.checksum = decision.checksum
            if decision.remote_key is not None:  # v0: Key-A came on the SYN
                msk.remote_key = decision.remote_key
            msk.add_subflow(sf)
        msk._hook(sf)
        self.half_open[(local, remote)] = msk
        return msk

    def _join(
        self, local: Address, remote: Address, seg: Segment, join: MpJoinSyn, now: float
    ) -> MptcpConnection | None:
        msk = self.tokens.lookup(join.token)
        if msk is None:
            self._count("MPJoinNoTokenFound")
            self._reset(local, remote, seg, MPTCP_RST_EMPTCP)
            return None
        fallback = msk.fallback and not (faults.ACTIVE and faults.on("join_to_fallen_back"))
        if fallback or msk.mp_fail_dsn is not None or msk.closed or msk.version is None or (
            msk.remote_key is None or msk.fastclose  # reset by either end: never joined again
        ) or (
            msk.sendq is not None and msk.sendq.fin_requested
        ):  # fmt: skip
            self._count("MPJoinRefused")
            self._reset(local, remote, seg, MPTCP_RST_EMPTCP)
            return None
        if (msk.paths is not None and not msk.paths.join_fits()
                and not (faults.ACTIVE and faults.on("join_no_subflow_limit"))):  # fmt: skip
            self._count("MPJoinRejectedLimit")
            self._reset(local, remote, seg, MPTCP_RST_EPROHIBIT)
            return None
        if msk.paths is None and len(msk._alive()) > 8:
            self._reset(local, remote, seg, MPTCP_RST_ERESOURCE)
            return None
        if len(msk.half_open_joins) >= self.joins_per_connection:
            # more half-open joins for one connection than it could ever use: the
            # oldest goes if its SYN/ACK went unanswered for an initial RTO (a real
            # peer's SYN that comes again gets in); otherwise the SYN is dropped before
            # any work (no subflow, no HMAC, no SYN/ACK), as Linux drops a SYN when the
            # listener's queue is full, and the peer retransmits it
            oldest, (created, owner) = next(iter(msk.half_open_joins.items()))
            if now - created < SYN_UNANSWERED:
                self._count("ListenDrops")
                return None
            owner._count("ListenDrops")
            owner._drop_join(oldest)
        endpoint = self.paths.endpoint_for(local[0]) if self.paths is not None else None
        # the connection's initial address is address ID 0 (RFC 8684 §3.2), whatever
        # endpoint it also is
        initial = msk.first_subflow.local[0] if msk.first_subflow is not None else None
        local_id = 0 if local[0] == initial or endpoint is None else endpoint.id
        backup_local, backup_remote = bool(endpoint and endpoint.backup), join.backup
        if faults.ACTIVE:  # planted faults (stack/faults.py)
            local_id += faults.on("join_wrong_address_id")
            backup_local = join.backup if faults.on("backup_mirror_b") else backup_local
            backup_local = backup_local and not faults.on("backup_endpoint_b_not_sent")
            backup_remote = backup_remote and not faults.on("backup_ignore_b")
        crypto = JoinCrypto.fresh(msk.version, msk.local_key, msk.remote_key)
        crypto.remote_nonce = join.nonce
        sf = self._passive_subflow(msk, local, remote, seg, now, initial=False, local_id=local_id,
                     remote_id=join.address_id, backup_local=backup_local,
                     backup_remote=backup_remote, join=crypto)  # fmt: skip
        msk._count("MPJoinSynRx")
        if len(self.joins) >= self.backlog:
            self._count("ListenDrops")
            self._drop_join(next(iter(self.joins)))  # the oldest
        self.joins[(local, remote)] = (msk, sf)
        msk.half_open_joins[(local, remote)] = (now, self)
        self._new_joins.append((local, remote))
        self._drain(local, remote, sf)
        self._arm((local, remote), sf)
        return None

    def handle_join_segments(
        self, local: Address, remote: Address, segments: list[Segment], now: float
    ) -> tuple[MptcpConnection, Subflow] | None:
        """Segments for a half-open join. The third ACK (an ACK without SYN or RST)
        hands the subflow to its connection: returns (connection, subflow), and the
        caller gives it the segments. Anything else (the SYN again, a RST) stays here."""
        key = (local, remote)
        entry = self.joins.get(key)
        if entry is None:
            return None
        msk, sf = entry
        if any(seg.flags & ACK and not seg.flags & (SYN | RST) for seg in segments):
            fallback = msk.fallback and not (faults.ACTIVE and faults.on("join_to_fallen_back"))
            if fallback or msk.closed or msk.mp_fail_dsn is not None:
                # the connection changed while the join was half-open: refused at the
                # third ACK, as Linux (its request is disposed of, with a reset)
                self._count("MPJoinRefused")
                self._drop_join(key)
                self._reset(local, remote, segments[-1], MPTCP_RST_EMPTCP)
                return None
            del self.joins[key]
            del msk.half_open_joins[key]
            msk.attach_join(sf)
            return msk, sf
        sf.tcp.handle_segments(segments, now)
        self._drain(local, remote, sf)
        self._settle_join(key, sf)
        self._arm(key, sf)
        return None

    def next_timer(self) -> float | None:
        """The earliest SYN/ACK retransmission of a half-open join. A heap, not a scan:
        a join flood asks after every SYN."""
        heap = self._join_timers
        while heap:
            deadline, _, key, sf = heap[0]
            if self._armed(key, sf, deadline):
                return deadline
            heapq.heappop(heap)  # the join is gone, or its timer moved (pushed again)
        return None

    def handle_timer(self, now: float) -> None:
        heap = self._join_timers
        while heap and heap[0][0] <= now:
            deadline, _, key, sf = heapq.heappop(heap)
            if self._armed(key, sf, deadline):
                sf.tcp.handle_timer(now)
                self._drain(key[0], key[1], sf)
                self._settle_join(key, sf)
                self._arm(key, sf)

    def _arm(self, key: tuple[Address, Address], sf: Subflow) -> None:
        deadline = sf.tcp.next_timer()
        if deadline is None or key not in self.joins:
            return
        if len(self._join_timers) > 4 * max(self.backlog, 1):  # stale entries: rebuild
            self._join_timers = [entry for entry in self._join_timers
                                 if self._armed(entry[2], entry[3], entry[0])]  # fmt: skip
            heapq.heapify(self._join_timers)
        heapq.heappush(self._join_timers, (deadline, next(self._timer_order), key, sf))

    def _armed(self, key: tuple[Address, Address], sf: Subflow, deadline: float) -> bool:
        entry = self.joins.get(key)
        return entry is not None and entry[1] is sf and sf.tcp.next_timer() == deadline

    def _settle_join(self, key: tuple[Address, Address], sf: Subflow) -> None:
        if sf.tcp.state is TcpState.CLOSED:  # reset by the peer, or SYN/ACKs unanswered
            self._drop_join(key)

    def _drop_join(self, key: tuple[Address, Address]) -> None:
        """A half-open join leaves the queue silently (reported by `poll_gone_joins`)."""
        msk, sf = self.joins.pop(key)
        del msk.half_open_joins[key]
        _forget(sf)
        self._gone_joins.append(key)

    def drop_joins(self) -> None:
        """The port closes: every half-open join goes."""
        for key in list(self.joins):
            self._drop_join(key)
        self._join_timers.clear()

    def _drain(self, local: Address, remote: Address, sf: Subflow) -> None:
        self._out.extend((local, remote, seg) for seg in sf.tcp.poll_segments())

    def poll_new_joins(self) -> list[tuple[Address, Address]]:
        """Half-open joins since the last call: their (local, remote) is to be routed to
        `handle_join_segments`."""
        new, self._new_joins = self._new_joins, []
        return new

    def poll_gone_joins(self) -> list[tuple[Address, Address]]:
        """Half-open joins dropped since the last call (queue full, reset, timed out)."""
        gone, self._gone_joins = self._gone_joins, []
        return gone

    def _passive_subflow(
        self, msk: MptcpConnection, local: Address, remote: Address, seg: Segment, now: float,
        **fields: Any,
    ) -> Subflow:  # fmt: skip
        """A subflow in SYN_RECEIVED for `seg`, its SYN/ACK's options from `msk`."""
        box: list[Subflow] = []
        tcp = TcpConnection.accept_syn(
            local, remote, seg, config=msk._subflow_config(), isn_secret=self.isn_secret,
            now=now,
            option_provider=lambda s, rel: msk._provide(box[0], s, rel),
            option_observer=lambda s, rel: msk._observe(box[0], s, rel) if box else None,
        )  # fmt: skip
        box.append(Subflow(tcp, **fields))
        return box[0]

    def _reset(
        self, local: Address, remote: Address, seg: Segment, reason: int | None = None
    ) -> None:
        if seg.flags & ACK:
            reply = Segment(local[1], remote[1], seg.ack, 0, RST, 0)
        else:
            reply = Segment(local[1], remote[1], 0, (seg.seq + seg.seg_len) & 0xFFFFFFFF,
                            RST | ACK, 0)  # fmt: skip
        if reason is not None and faults.ACTIVE and faults.on("tcprst_no_reason"):
            reason = MPTCP_RST_EUNSPEC
        if reason is not None and 1 in self.config.versions:
            # MP_TCPRST is RFC 8684's; a v0-only host (RFC 6824) refuses with a plain RST
            reply.extra_options = (MpTcpRst(reason),)
        self._out.append((local, remote, reply))

    def settle(self, msk: MptcpConnection) -> None:
        """After the connection handled a segment or timer: queue it for accept() once
        established, forget it if its handshake failed."""
        for key, pending in list(self.half_open.items()):
            if pending is not msk:
                continue
            if msk.established:
                del self.half_open[key]
                self.accept_queue.append(msk)
            elif msk.closed:
                del self.half_open[key]

    def accept(self) -> MptcpConnection | None:
        return self.accept_queue.popleft() if self.accept_queue else None

    def poll_segments(self) -> list[tuple[Address, Address, Segment]]:
        out, self._out = self._out, []
        return out

    def poll_evicted(self) -> list[MptcpConnection]:
        evicted, self._evicted = self._evicted, []
        return evicted


def _forget(sf: Subflow) -> None:
    """Drop a half-open join silently (nothing sent, no timer left)."""
    sf.tcp.forget()
    sf.gone = True
