"""Retransmission timeout estimation (RFC 6298) with exponential backoff."""

from __future__ import annotations

_ALPHA = 1 / 8
_BETA = 1 / 4
_K = 4
_G = 0.001  # clock granularity: 1 ms timestamps


class RtoEstimator:
    def __init__(self, *, initial: float = 1.0, min_rto: float = 1.0, max_rto: float = 120.0):
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.srtt: float | None = None
        self.rttvar = 0.0
        self._base = max(initial, min_rto)  # (2.1) RTO before any sample
        self.backoff = 0  # number of doublings since the last valid sample or progress

    def sample(self, rtt: float) -> None:
        """A valid measurement (Karn: never from a retransmitted segment)."""
        rtt = max(rtt, 0.0)
        if self.srtt is None:  # (2.2)
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:  # (2.3): rttvar first, with the old srtt
            self.rttvar = (1 - _BETA) * self.rttvar + _BETA * abs(self.srtt - rtt)
            self.srtt = (1 - _ALPHA) * self.srtt + _ALPHA * rtt
        self._base = self.srtt + max(_G, _K * self.rttvar)

    @property
    def rto(self) -> float:
        """The current timeout: base clamped to [min, max], doubled per backoff (5.5)."""
        base = min(max(self._base, self.min_rto), self.max_rto)
        return min(base * (1 << min(self.backoff, 30)), self.max_rto)

    def back_off(self) -> None:
        self.backoff += 1

    def reset_backoff(self) -> None:
        self.backoff = 0
