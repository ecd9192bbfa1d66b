"""A decoded TCP segment: plain fields, independent of the wire bytes.

The codec in `stack/wire` turns bytes into a `Segment` and back; the state machine only
sees this. `window` is the raw 16-bit field (unscaled). `extra_options` carries opaque
option objects (MPTCP) untouched in both directions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# the flag bits are the codec's: one definition for the stack, the tester and reports
from stack.wire.tcp import ACK, CWR, ECE, FIN, PSH, RST, SYN, URG

_FLAG_NAMES = (
    (SYN, "S"),
    (FIN, "F"),
    (RST, "R"),
    (PSH, "P"),
    (ACK, "."),
    (URG, "U"),
    (ECE, "E"),
    (CWR, "W"),
)


@dataclass(slots=True)
class Segment:
    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int
    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    timestamp: tuple[int, int] | None = None
    sack_blocks: tuple[tuple[int, int], ...] = ()
    extra_options: tuple[Any, ...] = ()
    payload: bytes | memoryview = b""

    @property
    def seg_len(self) -> int:
        """Sequence space the segment occupies: payload plus one each for SYN and FIN."""
        return len(self.payload) + (self.flags & SYN != 0) + (self.flags & FIN != 0)

    def flag_string(self) -> str:
        return "".join(name for bit, name in _FLAG_NAMES if self.flags & bit)

    def __repr__(self) -> str:  # short, tcpdump-like: handy in test failures
        parts = [f"{self.src_port}>{self.dst_port} [{self.flag_string()}] seq={self.seq}"]
        if self.flags & ACK:
            parts.append(f"ack={self.ack}")
        parts.append(f"win={self.window} len={len(self.payload)}")
        if self.sack_blocks:
            parts.append(f"sack={list(self.sack_blocks)}")
        return "Segment(" + " ".join(parts) + ")"


def reset_for(segment: Segment) -> Segment | None:
    """The RST answering `segment` sent to no connection (RFC 9293 §3.10.7.1); never an RST
    in reply to an RST."""
    if segment.flags & RST:
        return None
    if segment.flags & ACK:
        return Segment(segment.dst_port, segment.src_port, segment.ack, 0, RST, 0)
    ack = (segment.seq + segment.seg_len) & 0xFFFFFFFF
    return Segment(segment.dst_port, segment.src_port, 0, ack, RST | ACK, 0)


__all__ = ["ACK", "CWR", "ECE", "FIN", "PSH", "RST", "SYN", "URG", "Segment", "reset_for"]
