"""A passive opener with a bounded backlog, sans-I/O like the connection.

Half-open connections (SYN_RECEIVED) live here until their handshake completes; then
they wait in the accept queue. Both are bounded, so a SYN flood costs at most `backlog`
small connection objects: when the backlog is full, the *oldest* half-open connection is
dropped silently (it is the likeliest to be spoofed; a real peer retransmits its SYN).
When the accept queue is full, new SYNs are ignored (as Linux does), so the peer retries.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from stack.tcp.connection import Address, SegmentHook, TcpConfig, TcpConnection
from stack.tcp.events import TcpState
from stack.tcp.segment import ACK, RST, SYN, Segment, reset_for


class TcpListener:
    def __init__(
        self,
        local: Address,
        *,
        config: TcpConfig | None = None,
        isn_secret: bytes,
        backlog: int = 128,
        accept_backlog: int = 128,
        on_syn: Callable[[Address, Segment], bool] | None = None,
        option_provider: SegmentHook | None = None,
        option_observer: SegmentHook | None = None,
    ) -> None:
        self.local = local
        self.config = config or TcpConfig()
        self._secret = isn_secret
        self.backlog = backlog
        self.accept_backlog = accept_backlog
        self.on_syn = on_syn  # veto hook: return False to ignore a SYN (e.g. unknown token)
        self.option_provider = option_provider
        self.option_observer = option_observer
        self.half_open: OrderedDict[Any, TcpConnection] = OrderedDict()
        self.accept_queue: deque[TcpConnection] = deque()
        self._out: list[tuple[Address, Segment]] = []
        self.dropped_half_open = 0  # like Linux's ListenDrops
        self.overflows = 0  # like ListenOverflows

    def handle_segment(self, remote: Address, seg: Segment, now: float) -> None:
        conn = self.half_open.get(remote)
        if conn is not None:
            conn.handle_segment(seg, now)
            self._settle(remote, conn)
            return
        flags = seg.flags
        if flags & RST:
            return
        if flags & ACK:  # RFC 9293 §3.10.7.2: an ACK to a listener gets a reset
            reply = reset_for(seg)
            if reply is not None:
                self._out.append((remote, reply))
            return
        if not flags & SYN:
            return
        if len(self.accept_queue) >= self.accept_backlog:
            self.overflows += 1
            return
        if self.on_syn is not None and not self.on_syn(remote, seg):
            return
        if len(self.half_open) >= self.backlog:
            _, oldest = self.half_open.popitem(last=False)
            oldest.forget()
            self.dropped_half_open += 1
        conn = TcpConnection.accept_syn(
            self.local,
            remote,
            seg,
            config=self.config,
            isn_secret=self._secret,
            now=now,
            option_provider=self.option_provider,
            option_observer=self.option_observer,
        )
        self.half_open[remote] = conn
        self._drain(remote, conn)

    def _drain(self, remote: Address, conn: TcpConnection) -> None:
        self._out.extend((remote, s) for s in conn.poll_segments())

    def _settle(self, remote: Address, conn: TcpConnection) -> None:
        st = conn.state
        if st is TcpState.SYN_RECEIVED:
            self._drain(remote, conn)
            return
        del self.half_open[remote]
        if st is TcpState.CLOSED:
            self._drain(remote, conn)
            return
        # established (maybe already CLOSE_WAIT): its segments and events go to the acceptor
        self.accept_queue.append(conn)

    def accept(self) -> TcpConnection | None:
        return self.accept_queue.popleft() if self.accept_queue else None

    def poll_segments(self) -> list[tuple[Address, Segment]]:
        out = self._out
        self._out = []
        return out

    def next_timer(self) -> float | None:
        times = [t for c in self.half_open.values() if (t := c.next_timer()) is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        for remote, conn in list(self.half_open.items()):
            t = conn.next_timer()
            if t is not None and t <= now:
                conn.handle_timer(now)
                self._settle(remote, conn)


__all__ = ["TcpListener"]
