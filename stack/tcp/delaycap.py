"""A bound on the standing queue that a loss-based sender builds (delay-based window cap).

NewReno grows its window until the bottleneck's queue overflows. Behind a tbf with a
50 ms queue that keeps a subflow's SRTT at 27-31 ms mid-transfer, where Linux's default
here, bbr, keeps 5-7 ms. Every timer derived from the SRTT slows down with it: the tail
loss probe (2 SRTT), and with it the data-level retransmission that moves a blackholed
subflow's data to another path (docs/stack.md, "Failover is the kernel's").

So, as TCP Vegas and bbr do in their own ways, the window stops growing once the
round trips show a standing queue:
- each round (one window of data acknowledged) keeps its smallest RTT sample: a
  scheduling hiccup of either end raises some samples, a standing queue raises all;
  a round with fewer than `SAMPLES` samples is not judged;
- the path's base RTT is the smallest sample of the last `BASE_WINDOW` seconds (a
  route change or a slower path shows within that time);
- a round whose minimum is `HOLD` above the base holds the window for the next round;
  `SHRINK` above it, the window is scaled to what the path holds with `HOLD` of queue,
  (base + HOLD) / round minimum, at most halved per round (as a loss would) and never
  below `MIN_SEGMENTS`: a slow start that overshot drains in two or three rounds.

A loss is still answered as NewReno answers it; the cap only keeps the queue from
building. Like Vegas, it yields to loss-based flows that share its bottleneck (they
fill the queue, it backs off): in this testbed the stack shares its links with its own
flows, and a test that needs NewReno alone turns it off (`TcpConfig.queue_delay_cap`).
"""

from __future__ import annotations

BASE_WINDOW = 10.0  # seconds of RTT samples that the base RTT is the minimum of (as bbr)
HOLD = 0.008  # seconds of standing queue at which the window stops growing
SHRINK = 0.016  # seconds of standing queue at which the window shrinks
MIN_FACTOR = 0.5  # a round shrinks the window by at most this much, as a loss would
MIN_SEGMENTS = 8  # the cap never shrinks the window below this many segments
# A round is judged only with this many samples: in a window of a few segments every
# sample may include the peer's delayed ACK (up to 40-200 ms), which is no queue.
SAMPLES = 8


class QueueDelayCap:
    """Per-connection round tracking; sans-I/O, fed with every valid RTT sample."""

    def __init__(self) -> None:
        self.round_end = 0  # the round ends when snd_una reaches this
        self.round_min: float | None = None
        self.round_samples = 0
        # The base RTT over two half-windows: the minimum of the current and the last.
        self._base_now: float | None = None
        self._base_last: float | None = None
        self._base_since = 0.0
        self.holding = False  # True: congestion avoidance and slow start add nothing
        # After a shrink, the next round's data had left at the old window: that round
        # shows the old queue still, and is not judged (it holds the window, though).
        self._settling = False
        self.shrinks = 0  # rounds that shrank the window (a counter for tests and reports)

    @property
    def base_rtt(self) -> float | None:
        known = [b for b in (self._base_now, self._base_last) if b is not None]
        return min(known) if known else None

    def restart(self) -> None:
        """After a loss (recovery or timeout) the window is NewReno's again: what the
        rounds before it saw no longer holds it."""
        self.holding = self._settling = False
        self.round_min = None
        self.round_samples = 0
        self.round_end = 0

    def on_rtt(self, rtt: float, snd_una: int, snd_max: int, now: float) -> float:
        """One RTT sample with the ACK's snd_una and the highest sequence sent. Returns
        the factor to scale the window by now (1.0: leave it; below 1 at most once per
        round). Updates `holding`."""
        if now - self._base_since >= BASE_WINDOW / 2:
            self._base_last, self._base_now, self._base_since = self._base_now, None, now
        if self._base_now is None or rtt < self._base_now:
            self._base_now = rtt
        factor = 1.0
        if snd_una >= self.round_end:  # the round is over: judge it, start the next
            self.holding = self._settling  # the last round's data left before a shrink
            base = self.base_rtt
            if self._settling:
                self._settling = False
            elif self.round_min is not None and self.round_samples >= SAMPLES and base is not None:
                queue = self.round_min - base
                self.holding = queue >= HOLD
                if queue >= SHRINK:
                    factor = max(MIN_FACTOR, (base + HOLD) / self.round_min)
                    self.shrinks += 1
                    self._settling = True
            self.round_min = None
            self.round_samples = 0
            self.round_end = snd_max
        self.round_samples += 1
        if self.round_min is None or rtt < self.round_min:
            self.round_min = rtt
        return factor


def shrunk(cwnd: int, factor: float, mss: int) -> int:
    """The window scaled by `factor`, never below MIN_SEGMENTS (nor above what it was)."""
    return min(cwnd, max(int(cwnd * factor), MIN_SEGMENTS * mss))
