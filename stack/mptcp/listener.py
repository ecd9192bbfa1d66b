"""The passive side: SYNs to a listening port become MPTCP connections or joins.

- A SYN with MP_CAPABLE starts a connection (version and checksums negotiated by
  `handshake.listener_decision`); one without starts a plain-TCP (fallen-back) one.
  Either way it is "half-open" until its handshake completes, and half-open connections
  are bounded: the oldest is dropped silently when `backlog` is reached, so a SYN flood
  costs bounded memory and tokens (a real peer retransmits its SYN).
- A SYN with MP_JOIN (RFC 8684 §3.2) is looked up by token. Unknown token: RST with
  MP_TCPRST reason 1. A connection that fell back or is closing, or one at its subflow
  limit (reason 3, "administratively prohibited"), refuses it the same way. Otherwise
  the subflow is attached to its connection at once, and that connection checks the
  third ACK's HMAC.
- Once established, connections wait in a bounded accept queue.
Sans-I/O: the caller sends `poll_segments()` and registers what `handle_syn` returns.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

from stack.mptcp import handshake
from stack.mptcp.connection import MptcpConfig, MptcpConnection
from stack.mptcp.handshake import JoinCrypto
from stack.mptcp.pm import PathManager, PeerAddress
from stack.mptcp.subflow import Address, Subflow
from stack.mptcp.token import TokenTable
from stack.tcp.connection import TcpConnection
from stack.tcp.segment import ACK, RST, SYN, Segment
from stack.wire.mptcp import (
    MPTCP_RST_EMPTCP,
    MPTCP_RST_EPROHIBIT,
    MPTCP_RST_ERESOURCE,
    MpCapable,
    MpJoinSyn,
    MpTcpRst,
)


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
    ) -> None:
        self.port = port
        self.config = config
        self.tokens = tokens
        self.isn_secret = isn_secret
        self.paths = paths
        self.allocate_port = allocate_port
        self.backlog = backlog
        self.accept_backlog = accept_backlog
        self.half_open: OrderedDict[tuple[Address, Address], MptcpConnection] = OrderedDict()
        self.accept_queue: deque[MptcpConnection] = deque()
        self._out: list[tuple[Address, Address, Segment]] = []
        self._evicted: list[MptcpConnection] = []
        self.counters: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def handle_syn(
        self, local: Address, remote: Address, seg: Segment, now: float
    ) -> MptcpConnection | None:
        """A segment for the port that no subflow owns. Returns the connection that now
        owns it (new, or joined), or None (answered here, or ignored)."""
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
            _, oldest = self.half_open.popitem(last=False)
            self._count("ListenDrops")
            oldest.discard()
            self._evicted.append(oldest)
        paths = (
            self.paths.connection(local[0], PeerAddress(0, remote[0], remote[1]))
            if self.paths is not None
            else None
        )
        msk = MptcpConnection(self.config, self.tokens, isn_secret=self.isn_secret, server=True,
                              allocate_port=self.allocate_port, paths=paths)  # fmt: skip
        sf = self._passive_subflow(msk, local, remote, seg, now, initial=True)
        tcp = sf.tcp
        if decision.version is None:
            msk.fallback_reason = decision.reason
            msk.subflows.append(sf)
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
            msk.subflows.append(sf)
        msk._hook(sf)
        msk._new_subflows.append(sf)
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
        if msk.fallback or msk.mp_fail_dsn is not None or msk.closed or msk.version is None or (
            msk.remote_key is None
        ) or (
            msk.sendq is not None and msk.sendq.fin_requested
        ):  # fmt: skip
            self._count("MPJoinRefused")
            self._reset(local, remote, seg, MPTCP_RST_EMPTCP)
            return None
        if msk.paths is not None and not msk.paths.join_fits():
            self._count("MPJoinRejectedLimit")
            self._reset(local, remote, seg, MPTCP_RST_EPROHIBIT)
            return None
        if msk.paths is None and len(msk._alive()) > 8:
            self._reset(local, remote, seg, MPTCP_RST_ERESOURCE)
            return None
        endpoint = self.paths.endpoint_for(local[0]) if self.paths is not None else None
        # the connection's initial address is address ID 0 (RFC 8684 §3.2), whatever
        # endpoint it also is
        initial = msk.subflows[0].local[0] if msk.subflows else None
        local_id = 0 if local[0] == initial or endpoint is None else endpoint.id
        crypto = JoinCrypto.fresh(msk.version, msk.local_key, msk.remote_key)
        crypto.remote_nonce = join.nonce
        sf = self._passive_subflow(msk, local, remote, seg, now, initial=False, local_id=local_id,
                     remote_id=join.address_id, backup_local=bool(endpoint and endpoint.backup),
                     backup_remote=join.backup, join=crypto)  # fmt: skip
        msk.attach_join(sf)
        msk._count("MPJoinSynRx")
        return msk

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
