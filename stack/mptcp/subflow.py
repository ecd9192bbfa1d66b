"""One subflow of an MPTCP connection: a TCP connection plus its MPTCP bookkeeping.

The TCP machine (`stack.tcp`) does the subflow's reliability; this object holds what
MPTCP adds to it: the DSS mappings in both directions, the subflow's address IDs and
backup state (each direction separately, RFC 8684 §3.3.8), the MP_JOIN crypto and the
handshake phase, and per-subflow data counters. The connection (`connection.py`)
installs the hooks and drives it; nothing here does I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from stack.mptcp.handshake import JoinCrypto
from stack.mptcp.mapping import SubflowReceiveMapper
from stack.mptcp.sendmap import SubflowSendMap
from stack.route import IPAddress
from stack.tcp.connection import TcpConnection
from stack.tcp.events import TcpState

Address = tuple[IPAddress, int]


class Phase(enum.Enum):
    CONNECTING = "connecting"  # handshake in progress
    PRE_ESTABLISHED = "pre-established"  # join initiator: third ACK sent, no fourth ACK yet
    ESTABLISHED = "established"  # usable for data
    FAILED = "failed"  # reset, timed out or refused: carries nothing more
    CLOSED = "closed"  # closed in order


@dataclass
class SubflowCounters:
    bytes_sent: int = 0  # data-level bytes handed to this subflow (reinjections included)
    bytes_received: int = 0  # data-level bytes delivered from this subflow
    reinjected_away: int = 0  # bytes moved to other subflows when this one failed
    bytes_resent: int = 0  # of bytes_sent, data-level resends (reinjections, MPTCPRetrans)


@dataclass(eq=False)
class Subflow:
    tcp: TcpConnection
    initial: bool  # the MP_CAPABLE subflow
    local_id: int = 0
    remote_id: int = 0
    backup_local: bool = False  # we asked the peer not to send on it (our B bit / MP_PRIO)
    backup_remote: bool = False  # the peer asked us not to send on it
    join: JoinCrypto | None = None
    phase: Phase = Phase.CONNECTING
    sendmap: SubflowSendMap = field(default_factory=SubflowSendMap)
    recvmap: SubflowReceiveMapper | None = None
    counters: SubflowCounters = field(default_factory=SubflowCounters)
    # handshake options still owed on outgoing segments
    capable_ack_due: bool = False  # MP_CAPABLE with both keys on the third ACK
    join_ack_due: bool = False  # MP_JOIN ACK with HMAC-A (retransmitted until the 4th ACK)
    join_ack_tries: int = 0
    join_ack_deadline: float | None = None
    rst_reason: int | None = None  # MP_TCPRST reason to put on our RST, if we reset it
    prio_due: bool | None = None  # an MP_PRIO with this backup value is owed to the peer
    fourth_ack_due: bool = False  # join responder: acknowledge the third ACK at once
    ack_due: bool = False  # send a pure ACK once the segments in hand are processed
    mp_fail_due: int | None = None  # MP_FAIL with this DSN owed to the peer (RFC 8684 §3.7)
    # our infinite mapping after MP_FAIL: its (DSN, subflow seq), retroactive, and the
    # first new byte, whose segments carry it
    infinite_map: tuple[int, int, int] | None = None
    # the kernel's stale detection (net.mptcp.stale_loss_cnt): data-level retransmission
    # intervals that found data outstanding here and nothing received meanwhile
    stale_count: int = 0
    stale_rcv_tstamp: float = 0.0  # the TCP's rcv_tstamp when stale_count started
    stale_marked: bool = False  # STALE_LOSS_CNT intervals without progress, others usable
    stale_reinjected: bool = False  # its unacknowledged data was moved to other subflows
    link_down: bool = False  # the link of its address is down (the host's link watcher)
    gone: bool = False  # reset, timed out or closed: reported once
    number: int = 0  # its place in the connection's order of subflows (0: the first)
    counted: bool = False  # a join the peer completed: it holds a slot of the limit
    # the path manager's key of a join we opened (local, peer address, peer port)
    path_key: tuple[IPAddress, IPAddress, int | None] | None = None
    # the interface a join we opened is bound to (its endpoint's, as `ip mptcp endpoint
    # add ADDR dev IFNAME`): it leaves through it whatever the routes say; "" for none
    device: str = ""
    plain_ack: bool = False  # the last segment in carried no MPTCP option
    last_plain: str = ""  # that segment, for the fallback reason
    error: str = ""

    @property
    def local(self) -> Address:
        return self.tcp.local

    @property
    def remote(self) -> Address:
        return self.tcp.remote

    # ---- the scheduler's view (stack.mptcp.sched.SchedulableSubflow)

    @property
    def active(self) -> bool:
        """Established and open for sending, stale or not (the kernel's
        __mptcp_subflow_active)."""
        return (
            self.phase is Phase.ESTABLISHED
            and self.tcp.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT)
            and self.tcp.fin_seq is None
        )

    @property
    def usable(self) -> bool:
        return self.active and not self.stale and not self.link_down

    @property
    def backup(self) -> bool:
        return self.backup_local or self.backup_remote

    @property
    def stale(self) -> bool:
        """Judged stale by the connection and nothing received since: one ACK makes it
        usable again (as the kernel's mptcp_subflow_set_active on progress)."""
        return self.stale_marked and self.tcp.rcv_tstamp == self.stale_rcv_tstamp

    @property
    def outstanding(self) -> bool:
        """Data given to TCP and not acknowledged (tcp_rtx_and_write_queues_empty false)."""
        return self.unacked > 0

    def note_retransmit_interval(self) -> None:
        """A data-level retransmission interval found data outstanding here: count it
        (the kernel's mptcp_pm_subflow_chk_stale). The count is the number of intervals
        since the receive time it recorded; anything received since starts it again
        from this interval (the kernel restarts at 0 and records at the next one, which
        costs a whole interval more when a late ACK came just before a path died). Data
        acknowledged on the subflow clears it (`MptcpConnection._after`)."""
        stamp = self.tcp.rcv_tstamp
        if self.stale_count and stamp == self.stale_rcv_tstamp:
            self.stale_count += 1
        else:
            self.stale_rcv_tstamp = stamp
            self.stale_count = 1
            self.stale_marked = False

    @property
    def srtt(self) -> float:
        return self.tcp.rto.srtt or 0.0

    @property
    def unacked(self) -> int:
        """Data bytes given to TCP and not yet acknowledged at the subflow level."""
        return self.sendmap.write_seq - max(self.tcp.snd_una, 1)

    @property
    def send_space(self) -> int:
        """How much more the scheduler may queue here: about two windows' worth, so the
        subflow never idles, yet a failure leaves little to reinject."""
        window = max(self.tcp.cc.cwnd, 4 * self.tcp.payload_mss)
        return max(0, min(2 * window - self.unacked, self.tcp.send_space))

    def describe(self) -> dict[str, object]:
        return {
            "local": f"{self.local[0]}:{self.local[1]}",
            "remote": f"{self.remote[0]}:{self.remote[1]}",
            "local_id": self.local_id,
            "remote_id": self.remote_id,
            "initial": self.initial,
            "backup_local": self.backup_local,
            "backup_remote": self.backup_remote,
            "state": self.phase.value,
            "bytes_sent": self.counters.bytes_sent,
            "bytes_received": self.counters.bytes_received,
            "bytes_resent": self.counters.bytes_resent,
            "error": self.error,
        }


# data-level retransmission intervals without progress before a subflow stops being
# usable (net.mptcp.stale_loss_cnt's default)
STALE_LOSS_CNT = 4
