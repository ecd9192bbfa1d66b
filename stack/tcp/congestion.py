"""Congestion control: NewReno (RFC 5681 + RFC 6582), with a pluggable increase rule.

The connection drives the controller through these calls; only `cwnd` and `ssthresh`
are read back. Slow start, fast retransmit/recovery and the response to a timeout are
per subflow even under MPTCP (RFC 6356 §3); a coupled controller (LIA) replaces only
the congestion-avoidance increase, by passing `ca_increase` (or subclassing and
overriding `congestion_avoidance_increase`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

INITIAL_SSTHRESH = 1 << 30  # "arbitrarily high" (RFC 5681 §3.1): the initial slow start

# (cwnd, acked bytes, mss) -> bytes to add to cwnd in congestion avoidance
IncreaseRule = Callable[[int, int, int], float]


class CongestionController(Protocol):
    cwnd: int
    ssthresh: int

    def on_ack(self, acked: int, in_recovery: bool) -> None: ...
    def on_enter_recovery(self, flight: int) -> None: ...
    def on_dupack_in_recovery(self) -> None: ...
    def on_partial_ack(self, acked: int) -> None: ...
    def on_exit_recovery(self, flight: int) -> None: ...
    def on_timeout(self, flight: int) -> None: ...
    def set_mss(self, mss: int) -> None: ...


class NewReno:
    def __init__(
        self, mss: int, initial_window: int = 10, ca_increase: IncreaseRule | None = None
    ) -> None:
        self.mss = mss
        self.initial_window = initial_window
        self.cwnd = initial_window * mss  # RFC 6928
        self.ssthresh = INITIAL_SSTHRESH
        self._ca_increase = ca_increase
        self._ca_credit = 0.0

    def set_mss(self, mss: int) -> None:
        """The MSS is known only after the handshake: rescale the initial window."""
        self.mss = mss
        self.cwnd = self.initial_window * mss

    def congestion_avoidance_increase(self, acked: int) -> float:
        if self._ca_increase is not None:
            return self._ca_increase(self.cwnd, acked, self.mss)
        return acked * self.mss / self.cwnd  # ~1 MSS per RTT (RFC 5681 eq. 3)

    def on_ack(self, acked: int, in_recovery: bool) -> None:
        if in_recovery:
            return
        if self.cwnd < self.ssthresh:
            # slow start with appropriate byte counting, L = 2 SMSS (RFC 3465)
            self.cwnd += min(acked, 2 * self.mss)
        else:
            self._ca_credit += self.congestion_avoidance_increase(acked)
            if self._ca_credit >= 1:
                whole = int(self._ca_credit)
                self.cwnd += whole
                self._ca_credit -= whole

    def on_enter_recovery(self, flight: int) -> None:
        self.ssthresh = max(flight // 2, 2 * self.mss)  # RFC 5681 eq. 4
        self.cwnd = self.ssthresh + 3 * self.mss  # inflate by the 3 dupacks

    def on_dupack_in_recovery(self) -> None:
        self.cwnd += self.mss

    def on_partial_ack(self, acked: int) -> None:
        # RFC 6582 §3.2 step 3: deflate by the amount acked, add back one SMSS
        self.cwnd = max(self.cwnd - acked + (self.mss if acked >= self.mss else 0), self.mss)

    def on_exit_recovery(self, flight: int) -> None:
        # RFC 6582 §3.2 step 3 option 1, guarded against a burst
        self.cwnd = min(self.ssthresh, max(flight, self.mss) + self.mss)

    def on_timeout(self, flight: int) -> None:
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.mss  # loss window (RFC 5681 §3.1)
        self._ca_credit = 0.0
