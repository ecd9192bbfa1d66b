"""What a connection tells its user (the application, or the MPTCP layer above it)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class TcpState(enum.Enum):
    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN_SENT"
    SYN_RECEIVED = "SYN_RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN_WAIT_1"
    FIN_WAIT_2 = "FIN_WAIT_2"
    CLOSE_WAIT = "CLOSE_WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST_ACK"
    TIME_WAIT = "TIME_WAIT"


class CloseReason(enum.Enum):
    NORMAL = "normal"  # both FINs exchanged and acknowledged (after TIME_WAIT if we closed first)
    RESET = "reset"  # the peer sent an acceptable RST
    TIMEOUT = "timeout"  # retransmissions exhausted (max_retries / syn_retries)
    ABORTED = "aborted"  # the user called abort() (we sent RST) or a half-open was evicted


@dataclass(frozen=True, slots=True)
class Established:
    pass


@dataclass(frozen=True, slots=True)
class DataReceived:
    readable: int  # bytes receive() can return now


@dataclass(frozen=True, slots=True)
class DataAcked:
    snd_una: int  # relative sequence number: every byte below is acknowledged
    acked: int  # bytes of sequence space this ACK covered


@dataclass(frozen=True, slots=True)
class SendSpaceAvailable:
    space: int


@dataclass(frozen=True, slots=True)
class PeerFinished:
    pass


@dataclass(frozen=True, slots=True)
class Reset:
    by_peer: bool
    options: tuple[Any, ...] = ()  # the peer's RST's extra options (e.g. MP_TCPRST)


@dataclass(frozen=True, slots=True)
class Closed:
    reason: CloseReason


Event = Established | DataReceived | DataAcked | SendSpaceAvailable | PeerFinished | Reset | Closed
