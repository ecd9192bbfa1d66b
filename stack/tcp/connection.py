"""One TCP connection as a sans-I/O state machine (RFC 9293 with 5681, 5961, 6298, 6582,
7323, 2018, 6528).

Feed it `handle_segment(segment, now)`, `handle_timer(now)` and the application calls;
collect `poll_segments()`, `poll_events()` and `next_timer()`. It never reads a clock or
touches a socket.

Every sequence-number attribute (`snd_una`, `snd_nxt`, `snd_max`, `rcv_nxt`, ...) is
*relative to its ISN* and unbounded: the SYN is 0 and the first data byte 1, exactly the
relative subflow sequence numbers of MPTCP DSS mappings. `iss` and `irs` are the wire
ISNs; conversion to 32-bit fields happens only when a segment is built or read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from stack.tcp.congestion import INITIAL_SSTHRESH, CongestionController, NewReno
from stack.tcp.delaycap import QueueDelayCap, shrunk
from stack.tcp.events import (
    Closed,
    CloseReason,
    DataAcked,
    DataReceived,
    Established,
    Event,
    PeerFinished,
    Reset,
    SendSpaceAvailable,
    TcpState,
)
from stack.tcp.hystart import SlowStartExit
from stack.tcp.isn import initial_sequence_number, timestamp_offset
from stack.tcp.reassembly import ReceiveBuffer
from stack.tcp.rto import RtoEstimator
from stack.tcp.scoreboard import Scoreboard
from stack.tcp.segment import ACK, FIN, PSH, RST, SYN, Segment
from stack.tcp.sendbuffer import SendBuffer
from stack.tcp.seq import SEQ_MASK, seq_lt, unwrap

Address = tuple[Any, int]


def _same_ack(a: Segment, b: Segment) -> bool:
    """Two pure ACKs alike before the layer above adds its options."""
    return (a.flags == ACK and not a.payload and a.seq == b.seq and a.ack == b.ack
            and a.window == b.window)  # fmt: skip


# hooks: (segment, relative sequence number of its first byte)
SegmentHook = Callable[[Segment, int], None]

# RFC 9293 §3.7.1: the send MSS when the peer sends no MSS option (576 and 1280 bytes
# less the IP and TCP headers)
_DEFAULT_MSS = 536
_DEFAULT_MSS_V6 = 1220
# The smallest send MSS a peer can impose: Linux's tcp_min_snd_mss (a hostile MSS of 1
# would leave no room for options, or make every segment a byte)
MIN_SND_MSS = 48
_TS_LEN = 12  # timestamps option with its padding
_WORST_DELAYED_ACK = 0.2  # RFC 8985 §7.2 WCDelAckT: one segment in flight may wait for it
_MIN_PTO = 0.01  # seconds: no probe sooner than this (timer and scheduling noise)
QUEUE_RETRY = 0.001  # s: a full local queue is looked at again after this, without ACKs
_SYNCHRONIZED_SEND = frozenset(
    {
        TcpState.ESTABLISHED,
        TcpState.CLOSE_WAIT,
        TcpState.FIN_WAIT_1,
        TcpState.CLOSING,
        TcpState.LAST_ACK,
    }
)
_RECEIVES_DATA = frozenset({TcpState.ESTABLISHED, TcpState.FIN_WAIT_1, TcpState.FIN_WAIT_2})


def _default_congestion(mss: int, initial_window: int) -> CongestionController:
    return NewReno(mss, initial_window)


@dataclass
class TcpConfig:
    mss: int = 1460  # the most we announce and the cap on what we send
    # The largest MSS the path (local address, remote address) carries: its link's MTU
    # less the IP and TCP headers, as Linux's advertised MSS (1460 for IPv4, 1440 for
    # IPv6 on a 1500-byte link); None (or a None answer): `mss` alone. The host glue
    # sets it (`Host.path_mss`); the in-memory simulator leaves it unset.
    path_mss: Callable[[Any, Any], int | None] | None = None
    # a few MB, as Linux's tcp_rmem/tcp_wmem maxima: one flow is not window-limited on
    # a fast path (4 MiB is 3 ms at 10 Gbit/s, 330 ms at 100 Mbit/s)
    receive_buffer: int = 4 << 20
    send_buffer: int = 4 << 20
    window_scaling: bool = True
    timestamps: bool = True
    sack: bool = True
    delayed_ack: float = 0.040  # RFC 5681 §4.2: < 500 ms; ACK at least every 2 full segments
    # quick-ACK mode: at most this many segments ACKed at once after the first data and
    # after a silence longer than the RTO (Linux's TCP_MAX_QUICKACKS); 0: never
    max_quick_acks: int = 16
    initial_rto: float = 1.0  # RFC 6298 (2.1)
    min_rto: float = 1.0  # RFC 6298 (2.4); Linux uses 0.2
    max_rto: float = 120.0
    max_retries: int = 15  # like tcp_retries2: RTO expiries without progress before failing
    syn_retries: int = 6  # like tcp_syn_retries
    time_wait: float = 60.0  # 2*MSL
    initial_cwnd: int = 10  # segments (RFC 6928)
    hystart: bool = True  # end slow start when the RTT grows (RFC 9406), not at a loss
    queue_delay_cap: bool = True  # stop growing cwnd on a standing queue (tcp/delaycap.py)
    tail_loss_probe: bool = True  # a probe after 2 SRTT of silence (RFC 8985 §7)
    nodelay: bool = True  # False turns Nagle on (RFC 896)
    challenge_ack_limit: int = 10  # per second, per connection (RFC 5961 §7)
    option_reserve: int = 0  # bytes of every segment kept for extra options (MPTCP DSS)
    # Largest payload of one outgoing (super-)segment, cut at the MSS on the way out (GSO,
    # like Linux's TSO). None: whoever drives the connection decides (`gso_max_size`);
    # the host glue turns it on, the in-memory simulator leaves one MSS.
    gso_max_size: int | None = None
    congestion: Callable[[int, int], CongestionController] = field(default=_default_congestion)

    def wanted_wscale(self) -> int:
        """The smallest shift that lets the whole receive buffer be advertised."""
        shift = 0
        while shift < 14 and (self.receive_buffer >> shift) > 0xFFFF:
            shift += 1
        return shift


@dataclass
class TcpStats:
    """Counters with Linux MIB names where one applies."""

    InSegs: int = 0
    OutSegs: int = 0
    RetransSegs: int = 0
    TCPTimeouts: int = 0
    TCPFastRetrans: int = 0  # recoveries entered by dupacks/SACK
    TCPPartialAck: int = 0
    TCPChallengeACK: int = 0
    TCPPAWSDrop: int = 0
    TCPSACKSkipped: int = 0  # retransmissions avoided because the bytes were SACKed
    TCPWinProbe: int = 0
    TCPLossProbes: int = 0
    DelayedACKs: int = 0
    OutOfWindowDrops: int = 0
    TCPAbortOnData: int = 0  # new data after a full close(): answered with RST


class TcpConnection:
    def __init__(
        self,
        local: Address,
        remote: Address,
        *,
        config: TcpConfig | None = None,
        isn_secret: bytes,
        now: float,
    ) -> None:
        self.local = local
        self.remote = remote
        self.config = cfg = config or TcpConfig()
        self.state = TcpState.CLOSED
        self.stats = TcpStats()
        self.option_provider: SegmentHook | None = None  # called for every outgoing segment
        self.option_observer: SegmentHook | None = None  # called for every accepted segment
        self.segment_limit: Callable[[int], int] | None = None  # max payload at a rel seq
        # bytes the local interface takes now (the host's `queue_room`, as TSQ); None:
        # no limit. When it runs out, output waits for ACKs (or, with nothing in flight,
        # for `throttle_deadline`)
        self.queue_room: Callable[[], int] | None = None
        self.throttle_deadline: float | None = None
        self._out_bytes = 0  # payload in `_out`, not yet taken by `poll_segments`
        # payload bytes one outgoing segment may carry; above the MSS it is a super-segment
        # that the link cuts (0: one MSS)
        self.gso_max_size = cfg.gso_max_size or 0
        self.passive = False

        self.iss = initial_sequence_number(local, remote, isn_secret, now)
        self.irs = 0
        self._ts_offset = timestamp_offset(local, remote, isn_secret)
        # send side (relative sequence numbers)
        self.snd_una = 0
        self.snd_nxt = 0
        self.snd_max = 0
        self.snd_wnd = 0
        self.max_snd_wnd = 0
        self.snd_wl1 = 0
        self.snd_wl2 = 0
        self.snd_wscale = 0
        self.rcv_wscale = 0
        self.wscale_enabled = False
        # our MSS: announced on the SYN, and the most any segment carries whatever the
        # peer announces (an IPv6 segment of 1460 bytes does not fit a 1500-byte link)
        ipv6 = getattr(local[0], "version", 4) == 6
        path_mss = cfg.path_mss(local[0], remote[0]) if cfg.path_mss is not None else None
        self.mss = max(min(cfg.mss, path_mss or cfg.mss), 1)
        self._default_mss = _DEFAULT_MSS_V6 if ipv6 else _DEFAULT_MSS
        self.snd_mss = min(self.mss, self._default_mss)
        self.ts_enabled = False
        self.sack_enabled = False
        self.ts_recent: int | None = None
        self.last_ack_sent = 0
        self.sendbuf = SendBuffer(cfg.send_buffer)
        self.fin_seq: int | None = None  # relative seq of our FIN once shutdown_write()
        self.rto = RtoEstimator(initial=cfg.initial_rto, min_rto=cfg.min_rto, max_rto=cfg.max_rto)
        self.cc = cfg.congestion(self.snd_mss, cfg.initial_cwnd)
        self.scoreboard = Scoreboard()
        self.hystart = SlowStartExit() if cfg.hystart else None
        self.delay_cap = QueueDelayCap() if cfg.queue_delay_cap else None
        self.retries = 0
        self.rcv_tstamp = now  # when the last acceptable ACK arrived: the path's liveness
        self.dupacks = 0
        self.in_recovery = False
        self.recover = 0
        self._high_rxt = 0  # retransmissions in this recovery went up to here
        self._rxt_credit = 0
        self._rtt_seq: int | None = None
        self._rtt_time = 0.0
        self._syn_time: float | None = None  # when the (only) SYN/SYN-ACK went out
        self._persist_backoff = 0
        self._want_space = False
        # receive side
        self.rcvbuf = ReceiveBuffer(cfg.receive_buffer)
        self.rcv_adv = 0  # right edge of the window we advertised (never moves left)
        self._peer_fin_seq: int | None = None
        self.fin_received = False
        self.closed_by_app = False  # close(): nothing more is read (shutdown_write reads on)
        self._rcv_mss = self._default_mss
        self._unacked_bytes = 0
        self._ack_now = False  # an ACK is owed at once (out of order, duplicate, window...)
        self._ack_due = False  # two full segments unacknowledged: ACK at the end of the batch
        # Linux's quick-ACK mode (tcp_incr_quickack): after the first data and after a
        # silence longer than the RTO, this many segments are acknowledged without delay
        self._quick_acks = 0
        self._unacked_segments = 0
        self._last_data_at: float | None = None
        self._data_event = False
        # timers (absolute deadlines on the caller's clock)
        self.rto_deadline: float | None = None
        self.probe_deadline: float | None = None  # tail loss probe (PTO), before the RTO
        self._probe_sent = False  # one probe per flight: until an ACK makes progress
        self._probe_rearm = False  # new data went out or an ACK came: schedule again
        self.delack_deadline: float | None = None
        self.persist_deadline: float | None = None
        self.timewait_deadline: float | None = None
        self._challenge_window = 0.0
        self._challenge_count = 0

        self._out: list[Segment] = []
        self._repeats: list[int] = []  # `_out` indices of pure ACKs that may repeat the last
        self._acked_at_in = -1  # InSegs when the last pure ACK was queued
        self._events: list[Event] = []

    # ------------------------------------------------------------------ opening

    def connect(self, now: float) -> None:
        """Active open: send a SYN (SYN_SENT)."""
        if self.state is not TcpState.CLOSED:
            raise TcpError(f"connect() in state {self.state.name}: only a fresh connection opens")
        self.state = TcpState.SYN_SENT
        self._send_syn(now)

    @classmethod
    def accept_syn(
        cls,
        local: Address,
        remote: Address,
        syn: Segment,
        *,
        config: TcpConfig | None = None,
        isn_secret: bytes,
        now: float,
        option_provider: SegmentHook | None = None,
        option_observer: SegmentHook | None = None,
    ) -> TcpConnection:
        """Passive open: a connection in SYN_RECEIVED with its SYN-ACK queued."""
        if syn.flags & (SYN | ACK | RST) != SYN:
            raise TcpError(f"accept_syn() needs a bare SYN, got {syn!r}")
        conn = cls(local, remote, config=config, isn_secret=isn_secret, now=now)
        conn.option_provider = option_provider
        conn.option_observer = option_observer
        conn.passive = True
        conn._take_syn(syn)
        conn.state = TcpState.SYN_RECEIVED
        conn._send_syn(now)
        return conn

    def _take_syn(self, syn: Segment) -> None:
        """Record the peer's ISN and negotiate options (RFC 7323, RFC 2018)."""
        cfg = self.config
        self.irs = syn.seq
        self.rcvbuf.rcv_nxt = self.rcvbuf.read_seq = 1
        self.snd_mss = min(self.mss, max(syn.mss or self._default_mss, MIN_SND_MSS))
        self.wscale_enabled = cfg.window_scaling and syn.wscale is not None
        if self.wscale_enabled and syn.wscale is not None:
            # RFC 7323 §2.3: shifts above 14 are treated as 14
            self.snd_wscale = min(syn.wscale, 14)
            self.rcv_wscale = cfg.wanted_wscale()
        else:
            self.snd_wscale = self.rcv_wscale = 0
        self.ts_enabled = cfg.timestamps and syn.timestamp is not None
        if syn.timestamp is not None and self.ts_enabled:
            self.ts_recent = syn.timestamp[0]
        self.sack_enabled = cfg.sack and syn.sack_permitted
        self._rcv_mss = min(self.mss, self._default_mss)
        self.cc.set_mss(self.payload_mss)
        if self.option_observer is not None:
            self.option_observer(syn, 0)

    @property
    def payload_mss(self) -> int:
        """Bytes of payload in a full-sized segment: the MSS less our fixed options."""
        return max(
            self.snd_mss - (_TS_LEN if self.ts_enabled else 0) - self.config.option_reserve, 1
        )

    def _send_syn(self, now: float) -> None:
        cfg = self.config
        flags = SYN | (ACK if self.state is TcpState.SYN_RECEIVED else 0)
        seg = Segment(
            self.local[1],
            self.remote[1],
            self.iss,
            0,
            flags,
            min(cfg.receive_buffer, 0xFFFF),
            mss=self.mss,
        )
        if flags & ACK:
            seg.ack = (self.irs + 1) & SEQ_MASK
            self.last_ack_sent = 1
            # a SYN-ACK carries only what the SYN offered (RFC 7323 §1.3, RFC 2018 §2)
            if self.wscale_enabled:
                seg.wscale = self.rcv_wscale
            seg.sack_permitted = self.sack_enabled
            if self.ts_enabled:
                seg.timestamp = (self._tsval(now), self.ts_recent or 0)
        else:
            if cfg.window_scaling:
                seg.wscale = cfg.wanted_wscale()
            seg.sack_permitted = cfg.sack
            if cfg.timestamps:
                seg.timestamp = (self._tsval(now), 0)
        self.rcv_adv = max(self.rcv_adv, 1 + seg.window)
        self.snd_nxt = self.snd_max = 1
        self._syn_time = now if self._syn_time is None and self.retries == 0 else None
        self.rto_deadline = now + self.rto.rto
        self._emit(seg)

    # ------------------------------------------------------------------ application calls

    def send(self, data: bytes | bytearray | memoryview, now: float) -> int:
        """Queue data; returns how many bytes the send buffer took (maybe fewer than given)."""
        if self.fin_seq is not None or self.state in (
            TcpState.CLOSED,
            TcpState.LISTEN,
            TcpState.TIME_WAIT,
            TcpState.LAST_ACK,
            TcpState.CLOSING,
            TcpState.FIN_WAIT_1,
            TcpState.FIN_WAIT_2,
        ):
            raise TcpError(f"send() in state {self.state.name} after shutdown or close")
        n = self.sendbuf.append(data)
        if n < len(data):
            self._want_space = True
        if n:
            self._output(now)
        return n

    @property
    def send_space(self) -> int:
        return self.sendbuf.space

    @property
    def readable(self) -> int:
        return self.rcvbuf.readable

    @property
    def read_seq(self) -> int:
        """Relative subflow sequence number of the next byte receive() returns."""
        return self.rcvbuf.read_seq

    def receive(self, max_bytes: int, now: float) -> bytes:
        """Take up to `max_bytes` in-order bytes; reopens the window (and says so if the
        window grew enough to matter, RFC 9293 §3.8.6.2.2)."""
        data = self.rcvbuf.read(max_bytes)
        if data and self.state in _RECEIVES_DATA:
            free = max(self.config.receive_buffer - self.rcvbuf.readable, 0)
            # what the window field can say: unscaled, at most 65535 bytes however large
            # the buffer (else every read sent an ACK identical to the last, a dupack)
            edge = self.rcv_nxt + min(free, 0xFFFF << self.rcv_wscale)
            current = self.rcv_adv - self.rcv_nxt
            if edge - self.rcv_adv >= max(self._sws_threshold, current):
                self._ack_now = True
                self._output(now)
        return data

    def shutdown_write(self, now: float) -> None:
        """No more data from us: queue a FIN after the buffered data."""
        if self.fin_seq is not None:
            return
        st = self.state
        if st in (TcpState.CLOSED, TcpState.SYN_SENT):
            self._close(CloseReason.NORMAL)
            return
        if st not in (TcpState.SYN_RECEIVED, TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
            return
        self.fin_seq = 1 + self.sendbuf.end
        self.state = TcpState.LAST_ACK if st is TcpState.CLOSE_WAIT else TcpState.FIN_WAIT_1
        self._output(now)

    def close(self, now: float, *, unread_aborts: bool = True) -> None:
        """Full close: FIN after the data; with unread data, abort with RST (RFC 2525 §2.17)
        unless `unread_aborts` is False (the caller knows those bytes are copies). New data
        arriving afterwards is answered with RST (`_abort_on_data`)."""
        self.closed_by_app = True
        if (
            unread_aborts
            and self.rcvbuf.readable
            and self.state in _SYNCHRONIZED_SEND | {TcpState.FIN_WAIT_2}
        ):
            self.abort(now)
            return
        self.shutdown_write(now)

    def send_pure_ack(self, now: float) -> None:
        """A pure ACK at once, and no data (in a synchronized state): a carrier for the
        options of the layer above. Its sequence number is the one every pure ACK
        carries, inside the peer's window (a RST must match the peer's next expected
        byte exactly, RFC 5961 §3.2, which after a loss ours may not)."""
        if self.state in _SYNCHRONIZED_SEND | {TcpState.FIN_WAIT_2}:
            self._segment(0, min(self.snd_max, self.snd_una + self.snd_wnd), b"", now)

    def abort(self, now: float, *, flush: bool = True) -> None:
        """Send RST (in a synchronized state) and drop everything. With `flush`, that
        includes the segments queued and not yet taken by `poll_segments` (RFC 9293
        §3.10.5, ABORT: "all segments queued for transmission (except for the RST formed
        above) ... should be flushed"): e.g. the ACK of a segment whose processing by the
        layer above ends in this reset never goes out before the RST. Without `flush` the
        queue stays (the layer above queued a carrier for its options on purpose)."""
        if flush:
            self._out = []
            self._repeats = []
            self._out_bytes = 0
        if self.state in _SYNCHRONIZED_SEND | {TcpState.SYN_RECEIVED, TcpState.FIN_WAIT_2}:
            seg = Segment(
                self.local[1], self.remote[1], (self.iss + self.snd_max) & SEQ_MASK, 0, RST, 0
            )
            self._emit(seg)
        if self.state is not TcpState.CLOSED:
            self._events.append(Reset(by_peer=False))
            self._close(CloseReason.ABORTED)

    def forget(self) -> None:
        """Drop this connection silently: nothing sent, no timer left (a half-open one
        pushed out of a full queue; its peer retransmits or gives up)."""
        self.state = TcpState.CLOSED
        self.rto_deadline = self.delack_deadline = self.persist_deadline = None
        self.probe_deadline = self.throttle_deadline = None
        self._out = []
        self._repeats = []
        self._out_bytes = 0

    # ------------------------------------------------------------------ outputs

    def poll_segments(self) -> list[Segment]:
        out = self._out
        if not out:
            return []  # never hand out the live list
        self._out = []
        self._out_bytes = 0
        provider = self.option_provider
        if provider is not None:
            iss = self.iss
            for seg in out:
                provider(seg, (seg.seq - iss) & SEQ_MASK)
        if self._repeats:
            out = self._without_repeated_acks(out)
        return out

    def _without_repeated_acks(self, out: list[Segment]) -> list[Segment]:
        """Drop each pure ACK that repeats the one before it exactly, options included:
        two reasons to ACK in one round (TCP's own, and a layer above asking for one
        "now") must not put two identical segments on the wire, which the peer's TCP
        counts as duplicate ACKs, the sign of a loss."""
        repeats, self._repeats = self._repeats, []
        drop = {
            i
            for i in repeats
            if out[i].extra_options == out[i - 1].extra_options
            and out[i].timestamp == out[i - 1].timestamp
            and out[i].sack_blocks == out[i - 1].sack_blocks
        }
        self.stats.OutSegs -= len(drop)
        return [seg for i, seg in enumerate(out) if i not in drop]

    def poll_events(self) -> list[Event]:
        ev = self._events
        self._events = []
        return ev

    def next_timer(self) -> float | None:
        best: float | None = None
        for t in (
            self.rto_deadline,
            self.probe_deadline,
            self.delack_deadline,
            self.throttle_deadline,
            self.persist_deadline,
            self.timewait_deadline,
        ):
            if t is not None and (best is None or t < best):
                best = t
        return best

    @property
    def rcv_nxt(self) -> int:
        return self.rcvbuf.rcv_nxt + (1 if self.fin_received else 0)

    @property
    def flight_size(self) -> int:
        return self.snd_max - self.snd_una

    # ------------------------------------------------------------------ timers

    def handle_timer(self, now: float) -> None:
        if self.timewait_deadline is not None and now >= self.timewait_deadline:
            self.timewait_deadline = None
            self._close(CloseReason.NORMAL)
            return
        if self.rto_deadline is not None and now >= self.rto_deadline:
            self.rto_deadline = self.probe_deadline = None
            self._on_rto(now)
        if self.probe_deadline is not None and now >= self.probe_deadline:
            self.probe_deadline = None
            self._on_probe(now)
        if self.persist_deadline is not None and now >= self.persist_deadline:
            self.persist_deadline = None
            self._on_persist(now)
        if self.throttle_deadline is not None and now >= self.throttle_deadline:
            self.throttle_deadline = None  # the output below looks at the queue again
        if self.delack_deadline is not None and now >= self.delack_deadline:
            self.delack_deadline = None
            if self.state is not TcpState.CLOSED:
                self.stats.DelayedACKs += 1
                self._ack_now = True
        if self.state is not TcpState.CLOSED:
            self._output(now)

    def _on_rto(self, now: float) -> None:
        st = self.state
        self.stats.TCPTimeouts += 1
        self.retries += 1
        if st in (TcpState.SYN_SENT, TcpState.SYN_RECEIVED):
            if self.retries > self.config.syn_retries:
                self._close(CloseReason.TIMEOUT)
                return
            self.rto.back_off()
            self.stats.RetransSegs += 1
            self._send_syn(now)
            return
        if self.snd_una >= self.snd_max:
            return
        if self.retries > self.config.max_retries:
            self._close(CloseReason.TIMEOUT)
            return
        # RFC 6298 (5.4)-(5.6), RFC 5681 §3.1, RFC 6582 §3.2 step 4, RFC 2018 §8
        self.cc.on_timeout(self.flight_size)
        if self.delay_cap is not None:
            self.delay_cap.restart()
        self.rto.back_off()
        self.in_recovery = False
        self.recover = self.snd_max
        self.dupacks = 0
        self.scoreboard.clear()
        self.snd_nxt = self.snd_una
        self._rtt_seq = None
        self.rto_deadline = now + self.rto.rto

    def kick(self, now: float) -> None:
        """The path is back (its link came up): what waits for a backed-off
        retransmission (data, or a SYN) goes again now, from a fresh backoff."""
        if self.rto_deadline is not None and self.retries and self.rto_deadline > now:
            self.rto.reset_backoff()
            self.rto_deadline = now

    def _arm_probe(self, now: float) -> None:
        self._probe_rearm = False
        self.probe_deadline = self._probe_deadline_at(now)

    def _probe_deadline_at(self, now: float) -> float | None:
        """When a tail loss probe scheduled now would go (RFC 8985 §7.2): 2 SRTT after
        the last transmission of new data or ACK, plus the worst-case delayed ACK when
        one segment is in flight; only while open, not recovering, not backed off, and
        not after the RTO. None: no probe."""
        srtt = self.rto.srtt
        flight = self.snd_max - self.snd_una
        if (
            not self.config.tail_loss_probe
            or srtt is None
            or flight <= 0
            or self._probe_sent
            or self.in_recovery
            or self.retries
            or not self.sack_enabled
            or self.rto_deadline is None
            or self.state not in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT)
        ):
            return None
        pto = 2 * srtt + (_WORST_DELAYED_ACK if flight <= self.payload_mss else 0.0)
        deadline = now + max(pto, _MIN_PTO)
        return deadline if deadline < self.rto_deadline else None

    def retransmission_timer(self, now: float) -> float | None:
        """When this connection's next retransmission timer fires (the kernel's
        icsk_timeout): the tail loss probe or the RTO. A probe that an ACK or new data
        has asked for counts as armed already, as Linux schedules it while processing
        the ACK: our output arms it only when it next runs."""
        probe = self._probe_deadline_at(now) if self._probe_rearm else self.probe_deadline
        times = [t for t in (probe, self.rto_deadline) if t is not None]
        return min(times) if times else None

    def _on_probe(self, now: float) -> None:
        """The tail loss probe (RFC 8985 §7.3): one new segment if there is one and the
        peer's window takes it, else the last segment again; the ACK it draws reveals a
        lost tail to SACK recovery without waiting for the RTO. Then the RTO is armed."""
        if self.snd_una >= self.snd_max or self.in_recovery or self.retries:
            return
        self.stats.TCPLossProbes += 1
        self._probe_sent = True
        mss = self.payload_mss
        data_end = 1 + self.sendbuf.end
        nxt = self.snd_nxt
        if nxt == self.snd_max and nxt < data_end and self.snd_una + self.snd_wnd - nxt >= mss:
            self._send_data(nxt, mss, now)
        else:
            start = max(self.snd_una, self.snd_max - mss)
            self._send_data(start, self.snd_max - start, now, retransmit=True)
        self.rto_deadline = now + self.rto.rto

    def _on_persist(self, now: float) -> None:
        """Zero-window probe: one byte beyond the closed window (RFC 9293 §3.8.6.1)."""
        if self.state not in _SYNCHRONIZED_SEND or self.snd_wnd > 0:
            return
        data_end = 1 + self.sendbuf.end
        start = self.snd_una if self.snd_nxt > self.snd_una else self.snd_nxt
        if start < data_end:
            self.stats.TCPWinProbe += 1
            self._send_data(start, 1, now, probe=True)
        self._persist_backoff += 1
        self.persist_deadline = now + self._persist_interval()

    def _persist_interval(self) -> float:
        return min(self.rto.rto * (1 << min(self._persist_backoff, 30)), self.config.max_rto)

    # ------------------------------------------------------------------ input

    def handle_segment(self, seg: Segment, now: float) -> None:
        self._input(seg, now)
        self._end_of_input(now)

    def handle_segments(self, segments: Iterable[Segment], now: float) -> None:
        """A batch of segments that arrived together (one read of the link), in order.

        Each is processed as by `handle_segment`, but output waits for the end of the
        batch: the ACK that two in-order full segments earn covers the whole batch
        (stretch ACK, as GRO gives), and the cwnd the ACKs open leaves in one
        super-segment. ACKs owed at once (out-of-order data, duplicates, challenges)
        still go out segment by segment, so a peer counting duplicate ACKs sees them all.
        """
        for seg in segments:
            self._input(seg, now)
            if self._ack_now and self.state is not TcpState.CLOSED:
                self._output(now)
        self._end_of_input(now)

    def _input(self, seg: Segment, now: float) -> None:
        self.stats.InSegs += 1
        st = self.state
        if st is TcpState.CLOSED or st is TcpState.LISTEN:
            return  # the host answers with reset_for(); nothing here owns the segment
        if st is TcpState.SYN_SENT:
            self._input_syn_sent(seg, now)
        else:
            self._input_synchronized(seg, now)

    def _end_of_input(self, now: float) -> None:
        if self._data_event:
            self._data_event = False
            self._events.append(DataReceived(self.rcvbuf.readable))
        if self.state is not TcpState.CLOSED:
            self._output(now)

    def _input_syn_sent(self, seg: Segment, now: float) -> None:
        flags = seg.flags
        ack = 0
        if flags & ACK:
            ack = unwrap(seg.ack, self.iss, self.snd_una)
            if ack <= 0 or ack > self.snd_max:
                if not flags & RST:
                    self._emit(Segment(self.local[1], self.remote[1], seg.ack, 0, RST, 0))
                return
        if flags & RST:
            if flags & ACK:  # acceptable ACK: the peer refused
                self._events.append(Reset(by_peer=True, options=seg.extra_options))
                self._close(CloseReason.RESET)
            return
        if not flags & SYN:
            return
        self._take_syn(seg)
        if self.state is TcpState.CLOSED:
            # the option observer refused the SYN/ACK (e.g. an MP_JOIN HMAC that fails,
            # RFC 8684 §3.2): the peer is synchronized, so it gets a RST, never our ACK
            if flags & ACK:
                self._emit(Segment(self.local[1], self.remote[1], seg.ack, 0, RST, 0))
            return
        if flags & ACK:
            self._established_from_syn(seg, ack, 0, now)
            self._ack_now = True
        else:  # simultaneous open (RFC 9293 §3.5, figure 7)
            self.state = TcpState.SYN_RECEIVED
            self._send_syn(now)

    def _established_from_syn(self, seg: Segment, ack: int, seq: int, now: float) -> None:
        self.state = TcpState.ESTABLISHED
        self.snd_una = ack
        if self.snd_nxt < ack:
            self.snd_nxt = ack
        # window in a SYN is never scaled (RFC 7323 §2.2)
        self.snd_wnd = seg.window if seg.flags & SYN else seg.window << self.snd_wscale
        self.max_snd_wnd = max(self.max_snd_wnd, self.snd_wnd)
        self.snd_wl1, self.snd_wl2 = seq, ack
        if self._syn_time is not None:  # Karn: only if the SYN was never retransmitted
            self.rto.sample(now - self._syn_time)
        self.rto.reset_backoff()
        self.retries = 0
        self.rto_deadline = None
        self._events.append(Established())

    def _input_synchronized(self, seg: Segment, now: float) -> None:
        flags = seg.flags
        st = self.state
        rcv_nxt = self.rcv_nxt
        seq = unwrap(seg.seq, self.irs, rcv_nxt)
        payload = seg.payload
        plen = len(payload)
        seg_len = plen + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)

        if st is TcpState.SYN_RECEIVED and flags & SYN and not flags & RST and seq == 0:
            if not flags & ACK:
                self.stats.RetransSegs += 1
                self._send_syn(now)  # the peer lost our SYN-ACK
                return
            ack = unwrap(seg.ack, self.iss, self.snd_una)
            if 0 < ack <= self.snd_max:  # simultaneous open: the peer's SYN-ACK
                self._established_from_syn(seg, ack, 0, now)
                self._ack_now = True
            return
        ts = seg.timestamp if self.ts_enabled else None
        # PAWS (RFC 7323 §5.3)
        if (
            ts is not None
            and self.ts_recent is not None
            and not flags & RST
            and seq_lt(ts[0], self.ts_recent)
        ):
            self.stats.TCPPAWSDrop += 1
            self._ack_now = True
            return
        # 1. sequence number acceptability (RFC 9293 §3.10.7.4)
        wnd = max(self.rcv_adv - rcv_nxt, 0)
        drop_data = False
        if seg_len == 0:
            ok = seq == rcv_nxt if wnd == 0 else rcv_nxt <= seq < rcv_nxt + wnd
        elif wnd == 0:
            # a closed window still takes ACKs, RSTs and a FIN at rcv_nxt; the data goes
            ok = seq == rcv_nxt
            drop_data = ok
        else:
            end = seq + seg_len - 1
            ok = (
                rcv_nxt <= seq < rcv_nxt + wnd
                or rcv_nxt <= end < rcv_nxt + wnd
                or (seq < rcv_nxt and end >= rcv_nxt + wnd)
            )
        if not ok:
            if not flags & RST:
                self.stats.OutOfWindowDrops += 1
                self._ack_now = True
                if st is TcpState.TIME_WAIT and flags & FIN:
                    self.timewait_deadline = now + self.config.time_wait
            return
        # 2. RST (RFC 5961 §3)
        if flags & RST:
            if seq == rcv_nxt:
                self._events.append(Reset(by_peer=True, options=seg.extra_options))
                self._close(CloseReason.RESET)
            else:
                self._challenge_ack(now)
            return
        # 4. SYN in a synchronized state (RFC 5961 §4)
        if flags & SYN:
            self._challenge_ack(now)
            return
        # 5. ACK
        if not flags & ACK:
            return
        if ts is not None and self.ts_recent is not None and seq <= self.last_ack_sent:
            self.ts_recent = ts[0]  # RFC 7323 §4.3
        ack = unwrap(seg.ack, self.iss, self.snd_una)
        if st is TcpState.SYN_RECEIVED:
            if 0 < ack <= self.snd_max:
                self._established_from_syn(seg, self.snd_una, seq, now)
                st = self.state
            else:
                self._emit(Segment(self.local[1], self.remote[1], seg.ack, 0, RST, 0))
                return
        if ack > self.snd_max:
            self._ack_now = True  # acks what we never sent (RFC 9293; RFC 5961 §5)
            return
        if ack < self.snd_una - max(self.max_snd_wnd, 1):
            self._challenge_ack(now)
            return
        self.rcv_tstamp = now  # an acceptable ACK arrived (Linux's tp->rcv_tstamp)
        if self.option_observer is not None:
            self.option_observer(seg, seq)
        self._process_ack(seg, seq, ack, plen, now)
        st = self.state
        if st is TcpState.CLOSED:
            return
        # 7. data
        if plen and st in _RECEIVES_DATA and not drop_data:
            if self._abort_on_data(seq, plen, now):
                return
            self._receive_data(seq, payload, now)
        elif plen:
            self._ack_now = True
        # 8. FIN
        if flags & FIN and not (drop_data and plen) and seq + plen < self.rcv_adv + 1:
            self._peer_fin_seq = seq + plen
        if self._peer_fin_seq is not None and not self.fin_received:
            if self.rcvbuf.rcv_nxt == self._peer_fin_seq:
                self._take_fin(now)
        elif flags & FIN and st is TcpState.TIME_WAIT:
            self._ack_now = True
            self.timewait_deadline = now + self.config.time_wait

    def _abort_on_data(self, seq: int, plen: int, now: float) -> bool:
        """New data after the application's full close: nobody will read it, so say so
        with RST (RFC 1122 §4.2.2.13, "if new data is received after CLOSE is called, its
        TCP SHOULD send a RST"), as Linux does in FIN_WAIT1/2 (TCPAbortOnData). Without
        it, a peer keeps sending into a connection nobody reads: a kernel MPTCP client
        whose old subflow came back after a failover pushed its stale queue for seconds,
        beside its next connection."""
        if not self.closed_by_app or seq + plen <= self.rcvbuf.rcv_nxt:
            return False
        if self.state not in (TcpState.FIN_WAIT_1, TcpState.FIN_WAIT_2):
            return False
        self.stats.TCPAbortOnData += 1
        self.abort(now)
        return True

    def _challenge_ack(self, now: float) -> None:
        """RFC 5961 §3.2/§4.2/§5.2, rate-limited per connection (§7)."""
        if now - self._challenge_window >= 1.0:
            self._challenge_window = now
            self._challenge_count = 0
        if self._challenge_count < self.config.challenge_ack_limit:
            self._challenge_count += 1
            self.stats.TCPChallengeACK += 1
            self._ack_now = True

    def _process_ack(self, seg: Segment, seq: int, ack: int, plen: int, now: float) -> None:
        scaled_wnd = seg.window << self.snd_wscale
        acked = ack - self.snd_una
        sack_new = False
        if self.sack_enabled and seg.sack_blocks:
            iss, una, smax = self.iss, max(ack, self.snd_una), self.snd_max
            for left, right in seg.sack_blocks:
                lo = unwrap(left, iss, una)
                hi = unwrap(right, iss, una)
                if una <= lo < hi <= smax:  # D-SACK and bogus blocks are ignored
                    sack_new |= self.scoreboard.add(lo, hi)
        if acked > 0:
            self._on_new_ack(seg, ack, acked, now)
        elif (
            acked == 0
            and self.snd_una < self.snd_max
            and plen == 0
            and self.persist_deadline is None
            and not seg.flags & (SYN | FIN)
            and (scaled_wnd == self.snd_wnd or sack_new)
        ):
            self._on_dupack(sack_new, now)
        # window update (RFC 9293 §3.10.7.4, SND.WL1/WL2)
        if self.snd_wl1 < seq or (self.snd_wl1 == seq and self.snd_wl2 <= ack):
            opened = self.snd_wnd == 0 and scaled_wnd > 0
            self.snd_wnd = scaled_wnd
            self.snd_wl1, self.snd_wl2 = seq, ack
            if scaled_wnd > self.max_snd_wnd:
                self.max_snd_wnd = scaled_wnd
            if opened:
                self.persist_deadline = None
                self._persist_backoff = 0
                if self.snd_nxt > self.snd_una and self.rto_deadline is None:
                    self.snd_nxt = self.snd_una  # the probe byte was dropped: send it again
        # our FIN acknowledged?
        fin = self.fin_seq
        if fin is not None and self.snd_una > fin:
            st = self.state
            if st is TcpState.FIN_WAIT_1:
                self.state = TcpState.FIN_WAIT_2
            elif st is TcpState.CLOSING:
                self._enter_time_wait(now)
            elif st is TcpState.LAST_ACK:
                self._close(CloseReason.NORMAL)

    def _on_new_ack(self, seg: Segment, ack: int, acked: int, now: float) -> None:
        ts = seg.timestamp if self.ts_enabled else None
        rtt: float | None = None
        if ts is not None and ts[1]:
            rtt = ((self._tsval(now) - ts[1]) & SEQ_MASK) / 1000.0
        elif self._rtt_seq is not None and ack >= self._rtt_seq:
            rtt = now - self._rtt_time
            self._rtt_seq = None
        if rtt is not None:
            self.rto.sample(rtt)
            cc = self.cc
            if (
                self.hystart is not None
                and cc.ssthresh >= INITIAL_SSTHRESH  # the initial slow start only (§4.3)
                and cc.cwnd < cc.ssthresh
                and not self.in_recovery
                and self.hystart.on_rtt(rtt, ack, self.snd_max, cc.cwnd // self.payload_mss)
            ):
                cc.ssthresh = cc.cwnd  # the queue grows: congestion avoidance from here
            cap = self.delay_cap
            factor = cap.on_rtt(rtt, ack, self.snd_max, now) if cap is not None else 1.0
            if factor < 1.0 and not self.in_recovery:
                cc.cwnd = shrunk(cc.cwnd, factor, self.payload_mss)
                cc.ssthresh = min(cc.ssthresh, cc.cwnd)
        self.rto.reset_backoff()
        self.retries = 0
        data_end = 1 + self.sendbuf.end
        self.sendbuf.release(min(ack, data_end) - 1)
        self.snd_una = ack
        if self.snd_nxt < ack:
            self.snd_nxt = ack
        self.scoreboard.advance(ack)
        self.dupacks = 0
        self._probe_sent = False
        self._probe_rearm = True
        if self.in_recovery:
            if ack >= self.recover:  # full ACK (RFC 6582 §3.2 step 3)
                self.in_recovery = False
                self.cc.on_exit_recovery(self.snd_max - ack)
            else:  # partial ACK: the next hole is lost too
                self.stats.TCPPartialAck += 1
                self.cc.on_partial_ack(acked)
                if ack >= self._high_rxt:
                    self._retransmit_at(ack, now)
                self._rxt_credit += 1
        elif self.delay_cap is None or not self.delay_cap.holding:
            self.cc.on_ack(acked, False)
        if self.snd_una >= self.snd_max:
            self.rto_deadline = None
        elif not (self.snd_wnd == 0 and self.persist_deadline is not None):
            self.rto_deadline = now + self.rto.rto  # RFC 6298 (5.3)
        self._events.append(DataAcked(self.snd_una, acked))
        if self._want_space and self.sendbuf.space:
            self._want_space = False
            self._events.append(SendSpaceAvailable(self.sendbuf.space))

    def _on_dupack(self, sack_new: bool, now: float) -> None:
        self.dupacks += 1
        if self.in_recovery:
            self.cc.on_dupack_in_recovery()
            self._rxt_credit += 1
            return
        lost = self.dupacks >= 3 or (
            self.sack_enabled and self.scoreboard.sacked_bytes > 2 * self.payload_mss
        )
        if lost and self.snd_una >= self.recover:
            # fast retransmit (RFC 5681 §3.2, RFC 6582 §3.2 step 2; SACK as RFC 6675 IsLost)
            self.stats.TCPFastRetrans += 1
            self.in_recovery = True
            self.probe_deadline = None  # recovery repairs the tail itself
            self.recover = self.snd_max
            self.cc.on_enter_recovery(self.flight_size)
            if self.delay_cap is not None:
                self.delay_cap.restart()
            self._high_rxt = self.snd_una
            self._rxt_credit = 0
            self._retransmit_at(self.snd_una, now)

    def _retransmit_at(self, start: int, now: float) -> None:
        """Send again the segment at `start` (skipping SACKed bytes)."""
        limit = self.payload_mss
        hole = self.scoreboard.next_hole(start)
        end = start + limit
        if hole is not None and hole[0] == start:
            end = min(end, hole[1])
        elif self.scoreboard.is_sacked(start):
            self.stats.TCPSACKSkipped += 1
            return
        used = self._send_data(start, end - start, now, retransmit=True)
        self._high_rxt = max(self._high_rxt, start + max(used, 1))

    def _receive_data(self, seq: int, payload: bytes | memoryview, now: float) -> None:
        rb = self.rcvbuf
        before = rb.rcv_nxt
        had_ooo = rb.has_out_of_order
        limit = self.rcv_adv - seq
        if limit < len(payload):
            payload = payload[: max(limit, 0)]
        plen = len(payload)
        if plen > self._rcv_mss:
            self._rcv_mss = min(plen, self.mss)
        advanced = rb.insert(seq, payload)
        if advanced:
            self._data_event = True
        if seq > before or had_ooo or not advanced:
            # out of order, filling a hole, or a duplicate: ACK now (RFC 5681 §4.2, §3.2)
            self._ack_now = True
            return
        self._unacked_bytes += advanced
        self._unacked_segments += 1
        self._note_arrival(now)
        if self._unacked_bytes >= 2 * self._rcv_mss or self._quick_acks:
            self._ack_due = True  # every second full segment; a batch shares one ACK
        elif self.delack_deadline is None:
            self.delack_deadline = now + self.config.delayed_ack

    def _note_arrival(self, now: float) -> None:
        """Enter quick-ACK mode on the first data and after a silence longer than the RTO,
        as Linux's tcp_event_data_recv(): the sender is (re)starting its window, or
        failing over to this subflow, and a delayed ACK would only slow it down (a
        kernel sender then re-arms its data-level timer at TCP_RTO_MIN)."""
        last, self._last_data_at = self._last_data_at, now
        if last is not None and now - last <= self.rto.rto:
            return
        window = max(self.rcv_adv - self.rcv_nxt, 0)
        quick = min(max(window // (2 * self._rcv_mss), 2), self.config.max_quick_acks)
        self._quick_acks = max(self._quick_acks, quick)

    def _take_fin(self, now: float) -> None:
        self.fin_received = True
        self._ack_now = True
        self._events.append(PeerFinished())
        st = self.state
        if st in (TcpState.SYN_RECEIVED, TcpState.ESTABLISHED):
            self.state = TcpState.CLOSE_WAIT
        elif st is TcpState.FIN_WAIT_1:
            # our FIN not yet acknowledged (else we would be in FIN_WAIT_2): simultaneous close
            self.state = TcpState.CLOSING
        elif st is TcpState.FIN_WAIT_2:
            self._enter_time_wait(now)

    def _enter_time_wait(self, now: float) -> None:
        self.state = TcpState.TIME_WAIT
        self.rto_deadline = self.persist_deadline = self.delack_deadline = None
        self.throttle_deadline = None
        self.probe_deadline = None
        self.timewait_deadline = now + self.config.time_wait

    def _close(self, reason: CloseReason) -> None:
        self.state = TcpState.CLOSED
        self.rto_deadline = self.persist_deadline = self.probe_deadline = None
        self.delack_deadline = self.timewait_deadline = self.throttle_deadline = None
        self._events.append(Closed(reason))

    # ------------------------------------------------------------------ output engine

    @property
    def _sws_threshold(self) -> int:
        return min(self.config.receive_buffer // 2, self.mss)

    def _window_field(self) -> int:
        """The window to advertise: never moves the right edge left (RFC 9293 §3.8.6.2.2),
        advances it only by worthwhile amounts (receiver SWS avoidance)."""
        rcv_nxt = self.rcv_nxt
        free = max(self.config.receive_buffer - self.rcvbuf.readable, 0)
        edge = rcv_nxt + free
        if edge > self.rcv_adv and (
            edge - self.rcv_adv >= self._sws_threshold or self.rcvbuf.readable == 0
        ):
            target = edge
        else:
            target = max(self.rcv_adv, rcv_nxt)
        ws = self.rcv_wscale
        field = min((target - rcv_nxt + (1 << ws) - 1) >> ws, 0xFFFF)
        adv = rcv_nxt + (field << ws)
        if adv > self.rcv_adv:
            self.rcv_adv = adv
        return field

    def _tsval(self, now: float) -> int:
        return (int(now * 1000) + self._ts_offset) & SEQ_MASK  # 1 ms clock

    def _emit(self, seg: Segment) -> None:
        out = self._out
        if seg.flags == ACK and not seg.payload:
            # A pure ACK after another, with nothing received in between: the same ACK
            # twice unless the layer above gives it other options (`poll_segments`)
            if out and self._acked_at_in == self.stats.InSegs and _same_ack(out[-1], seg):
                self._repeats.append(len(out))
            self._acked_at_in = self.stats.InSegs
        self.stats.OutSegs += 1
        out.append(seg)
        self._out_bytes += len(seg.payload)

    def _segment(self, flags: int, seq: int, payload: bytes, now: float) -> Segment:
        """A synchronized-state segment carrying ACK, window, timestamps and SACK blocks."""
        rcv_nxt = self.rcv_nxt
        seg = Segment(
            self.local[1],
            self.remote[1],
            (self.iss + seq) & SEQ_MASK,
            (self.irs + rcv_nxt) & SEQ_MASK,
            flags | ACK,
            self._window_field(),
            payload=payload,
        )
        if self.ts_enabled:
            seg.timestamp = (self._tsval(now), self.ts_recent or 0)
        if self.sack_enabled and self.rcvbuf.has_out_of_order:
            irs = self.irs
            blocks = self.rcvbuf.sack_blocks(3 if self.ts_enabled else 4)
            seg.sack_blocks = tuple(((irs + a) & SEQ_MASK, (irs + b) & SEQ_MASK) for a, b in blocks)
        self.last_ack_sent = rcv_nxt
        self._ack_now = self._ack_due = False
        self._quick_acks = max(self._quick_acks - self._unacked_segments, 0)
        self._unacked_bytes = self._unacked_segments = 0
        self.delack_deadline = None
        self._emit(seg)
        return seg

    def _send_data(
        self, start: int, length: int, now: float, *, retransmit: bool = False, probe: bool = False
    ) -> int:
        """Send [start, start+length) of the stream (plus our FIN if it falls right after);
        returns the sequence space used."""
        data_end = 1 + self.sendbuf.end
        end = min(start + length, data_end)
        if end > start and self.segment_limit is not None:
            # every path (new data, retransmissions, probes) keeps a segment inside one
            # of the layer above's units (MPTCP mappings)
            end = min(end, start + self.segment_limit(start))
        payload = self.sendbuf.get(start - 1, end - start) if end > start else b""
        flags = PSH if end == data_end and payload else 0
        fin = self.fin_seq
        if fin is not None and end == fin and not probe:
            flags |= FIN
        used = len(payload) + (1 if flags & FIN else 0)
        if not used:
            return 0
        self._segment(flags, start, payload, now)
        top = start + used
        if retransmit or top <= self.snd_max:
            self.stats.RetransSegs += 1
        elif self._rtt_seq is None and not self.ts_enabled:
            self._rtt_seq, self._rtt_time = top, now  # time one segment per RTT (Karn)
        if retransmit:
            self._rtt_seq = None
        elif top > self.snd_max:
            self._probe_rearm = True  # new data: the probe timer starts again
        if not retransmit and top > self.snd_nxt:
            self.snd_nxt = top
        if top > self.snd_max:
            self.snd_max = top
        if self.rto_deadline is None and not probe:
            self.rto_deadline = now + self.rto.rto
        return used

    def _output(self, now: float) -> None:
        if self.state in _SYNCHRONIZED_SEND:
            self._output_data(now)
        if (self._ack_now or self._ack_due) and self.state not in (
            TcpState.CLOSED,
            TcpState.SYN_SENT,
            TcpState.SYN_RECEIVED,
        ):
            # a pure ACK carries the highest sequence sent (not a rewound snd_nxt, which the
            # peer would find unacceptable and answer: an ACK war), kept inside the peer's
            # window as Linux's tcp_acceptable_seq() does
            self._segment(0, min(self.snd_max, self.snd_una + self.snd_wnd), b"", now)

    def _output_data(self, now: float) -> None:
        mss = self.payload_mss
        cc = self.cc
        # 1. SACK-guided retransmission of holes during recovery, one per returning ACK
        if self.in_recovery and self.sack_enabled:
            while self._rxt_credit > 0:
                hole = self.scoreboard.next_hole(max(self._high_rxt, self.snd_una))
                if hole is None:
                    break
                self._rxt_credit -= 1
                used = self._send_data(hole[0], min(hole[1] - hole[0], mss), now, retransmit=True)
                self._high_rxt = hole[0] + max(used, 1)
        self._rxt_credit = 0
        # 2. new data (or go-back-N after a timeout), within cwnd and the peer's window
        data_end = 1 + self.sendbuf.end
        fin = self.fin_seq
        limit_hook = self.segment_limit
        # one segment carries up to gso_max_size bytes: a super-segment of full-sized
        # pieces that the link cuts at the MSS (TSO); bounded below by cwnd and windows
        cap = max(self.gso_max_size, mss)
        # what the interface's queue takes, less what waits here to be handed to it
        room = self.queue_room() - self._out_bytes if self.queue_room is not None else None
        self.throttle_deadline = None
        while True:
            nxt = self.snd_nxt
            top = data_end  # a retransmission stops at snd_max and before SACKed bytes
            if nxt < self.snd_max:
                top = self.snd_max
                if self.scoreboard.ranges:
                    hole = self.scoreboard.next_hole(nxt)
                    if hole is None or hole[0] >= self.snd_max:
                        nxt = self.snd_nxt = max(nxt, self.scoreboard.highest_sacked or nxt)
                        top = data_end
                    else:
                        if hole[0] > nxt:
                            nxt = self.snd_nxt = hole[0]
                        top = hole[1]
            avail = data_end - nxt
            fin_due = fin is not None and nxt == fin
            if avail <= 0 and not fin_due:
                break
            flight = nxt - self.snd_una
            cwnd_room = cc.cwnd - flight
            wnd_room = self.snd_una + self.snd_wnd - nxt
            size = min(avail, cap, wnd_room, cwnd_room, top - nxt)
            # only new data waits for the queue: a retransmission (after an RTO, or of
            # a hole) goes at once, as Linux's. Held back, an RTO's retransmission
            # sent nothing while the timer backed off, and a lossy path whose link
            # other connections kept full stalled for seconds (the soak bench)
            if room is not None and room < size and avail > 0 and nxt >= self.snd_max:
                if room < mss:  # the interface's queue is full: wait until it drains,
                    if flight <= 0:  # for the next ACK, or when none is to come, a while
                        self.throttle_deadline = now + QUEUE_RETRY
                    break
                size = room
            cut = size < avail  # something else than the end of the data bounds it
            mapping_end = False
            if limit_hook is not None and avail > 0:
                limit = limit_hook(nxt)
                if limit < size:
                    # a mapping's end: send up to it exactly, and at once. The short tail
                    # is not a small window's crumb (what SWS avoidance and Nagle hold
                    # back); holding it until nothing is in flight stalled every mapping.
                    size, cut, mapping_end = limit, False, True
            if fin_due:
                if cwnd_room <= 0:
                    break
                size = 0
            elif size <= 0:
                break
            elif size > mss and cut:
                size -= size % mss  # full-sized pieces only; the rest waits for room
            elif size < mss and size < avail and not mapping_end:
                # sender SWS avoidance (RFC 9293 §3.8.6.2.1): a partial segment only if it
                # is half the largest window seen or nothing is outstanding
                if size < self.max_snd_wnd // 2 and flight > 0:
                    break
            elif (
                size < mss
                and not mapping_end
                and not self.config.nodelay
                and flight > 0
                and fin is None
            ):
                break  # Nagle
            used = self._send_data(nxt, size, now, retransmit=nxt < self.snd_max)
            if used <= 0:
                break
            self.snd_nxt = max(self.snd_nxt, nxt + used)
            if room is not None:
                room -= used
        if self._probe_rearm:
            self._arm_probe(now)
        # 3. persist timer: data waiting, a closed window and nothing in flight to clock ACKs
        if (
            self.snd_wnd == 0
            and data_end > self.snd_una
            and self.rto_deadline is None
            and self.persist_deadline is None
        ):
            self.persist_deadline = now + self._persist_interval()


class TcpError(Exception):
    """An application call that makes no sense in the connection's state."""
