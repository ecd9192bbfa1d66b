"""Slow-start exit on delay increase (HyStart, RFC 9406 §4.2's detection).

Slow start doubles cwnd every round trip until a loss. Behind a rate limiter with a deep
queue (tbf) that loss comes only after the queue is full: hundreds of segments of one
window die at once, and recovering from that costs many round trips. Two subflows that
overshoot together also fill the connection-level window with data stuck behind the
holes, so the other subflow idles too.

The RTT tells earlier: once the pipe is full, every round's smallest RTT grows by the
queue that the round built. As RFC 9406 (and Linux CUBIC's HyStart) does, each round
(one window of data acknowledged) keeps the minimum of its RTT samples; once it has
`SAMPLES` of them and that minimum exceeds the previous round's by an eighth of it
(clamped to 4..16 ms), slow start ends: ssthresh becomes cwnd, and congestion
avoidance takes over without a loss. Unlike RFC 9406 there is no conservative slow
start phase after detection (as Linux): the connection goes straight to congestion
avoidance. As RFC 9406 §4.3 says, only the initial slow start is watched: after a loss
the slow start up to the new ssthresh is the standard one (a CPU-starved peer's RTT
noise cut it short, and LIA's increase then took seconds to refill the window).
"""

from __future__ import annotations

SAMPLES = 8  # RTT samples per round (N_RTT_SAMPLE)
MIN_THRESH = 0.004  # seconds (MIN_RTT_THRESH)
MAX_THRESH = 0.016  # seconds (MAX_RTT_THRESH)
DIVISOR = 8  # MIN_RTT_DIVISOR
LOW_WINDOW = 16  # segments: below this cwnd slow start is never cut short (as Linux)


class SlowStartExit:
    """Per-connection round tracking; sans-I/O, fed with every valid RTT sample."""

    def __init__(self) -> None:
        self.round_end = 0  # the round ends when snd_una reaches this
        self.last_round_min: float | None = None
        self.current_min: float | None = None
        self.samples = 0
        self.exits = 0  # slow starts ended by delay (a counter for tests and reports)

    def on_rtt(self, rtt: float, snd_una: int, snd_max: int, cwnd_segments: int) -> bool:
        """One RTT sample during slow start, with the ACK's snd_una and the highest
        sequence sent; True when slow start should end now."""
        if snd_una >= self.round_end:  # a new round: what the last one saw is the base
            if self.current_min is not None:
                self.last_round_min = self.current_min
            self.current_min = None
            self.samples = 0
            self.round_end = snd_max
        self.samples += 1
        if self.current_min is None or rtt < self.current_min:
            self.current_min = rtt
        if self.samples < SAMPLES or self.last_round_min is None or cwnd_segments < LOW_WINDOW:
            return False
        threshold = min(max(self.last_round_min / DIVISOR, MIN_THRESH), MAX_THRESH)
        if self.current_min >= self.last_round_min + threshold:
            self.exits += 1
            return True
        return False
