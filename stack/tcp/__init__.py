"""Userspace TCP: one connection (a future MPTCP subflow) as a sans-I/O state machine.

See `docs/tcp.md`. Entry points: `TcpConnection`, `TcpListener`, `TcpConfig`, `Segment`.
"""

from stack.tcp.congestion import CongestionController, NewReno
from stack.tcp.connection import TcpConfig, TcpConnection, TcpError, TcpStats
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
from stack.tcp.listener import TcpListener
from stack.tcp.segment import ACK, CWR, ECE, FIN, PSH, RST, SYN, URG, Segment, reset_for

__all__ = [
    "ACK",
    "CWR",
    "ECE",
    "FIN",
    "PSH",
    "RST",
    "SYN",
    "URG",
    "CloseReason",
    "Closed",
    "CongestionController",
    "DataAcked",
    "DataReceived",
    "Established",
    "Event",
    "NewReno",
    "PeerFinished",
    "Reset",
    "Segment",
    "SendSpaceAvailable",
    "TcpConfig",
    "TcpConnection",
    "TcpError",
    "TcpListener",
    "TcpState",
    "TcpStats",
    "reset_for",
]
