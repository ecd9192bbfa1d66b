"""Linked Increases congestion control (RFC 6356, "LIA"), coupled across a connection's subflows.

In congestion avoidance, each ACK of `acked` bytes on subflow i increases its window by

    min(alpha * acked * mss_i / cwnd_total, acked * mss_i / cwnd_i)

where alpha = cwnd_total * max_i(cwnd_i / rtt_i^2) / (sum_i(cwnd_i / rtt_i))^2.
The first term caps the aggregate at what one TCP flow would take on the best path;
the second keeps each subflow no more aggressive than TCP. Slow start, fast
retransmit and the response to loss stay per subflow, as the RFC says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class SubflowWindow:
    cwnd: int  # bytes
    rtt: float  # seconds (smoothed); <= 0 when unknown
    mss: int


def alpha(subflows: Sequence[SubflowWindow]) -> float:
    """RFC 6356 §3 alpha over the subflows with a known RTT."""
    known = [s for s in subflows if s.rtt > 0 and s.cwnd > 0]
    if not known:
        return 1.0
    total = sum(s.cwnd for s in known)
    best = max(s.cwnd / (s.rtt * s.rtt) for s in known)
    denominator = sum(s.cwnd / s.rtt for s in known) ** 2
    return total * best / denominator


def increase(
    subflow: SubflowWindow, acked: int, subflows: Sequence[SubflowWindow], alpha_value: float
) -> float:
    """Congestion-avoidance window increase, in bytes, for `acked` bytes on `subflow`."""
    total = sum(s.cwnd for s in subflows) or subflow.cwnd
    coupled = alpha_value * acked * subflow.mss / total
    uncoupled = acked * subflow.mss / max(subflow.cwnd, 1)
    return min(coupled, uncoupled)
