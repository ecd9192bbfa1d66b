"""Sender's SACK scoreboard (RFC 2018, RFC 6675 in spirit): which bytes above snd_una the
receiver holds, so retransmissions skip them and pick the holes.

Relative sequence numbers; ranges are [start, end), disjoint, sorted.
"""

from __future__ import annotations


class Scoreboard:
    def __init__(self) -> None:
        self.ranges: list[list[int]] = []
        self.sacked_bytes = 0

    def clear(self) -> None:
        self.ranges.clear()
        self.sacked_bytes = 0

    @property
    def highest_sacked(self) -> int | None:
        return self.ranges[-1][1] if self.ranges else None

    def add(self, start: int, end: int) -> bool:
        """Record one SACK block; returns whether it covered anything new."""
        if end <= start:
            return False
        rs = self.ranges
        # find overlap/adjacency span
        i = 0
        n = len(rs)
        while i < n and rs[i][1] < start:
            i += 1
        j = i
        new_start, new_end = start, end
        while j < n and rs[j][0] <= end:
            new_start = min(new_start, rs[j][0])
            new_end = max(new_end, rs[j][1])
            j += 1
        covered_before = sum(r[1] - r[0] for r in rs[i:j])
        added = (new_end - new_start) - covered_before
        if j - i == 1 and added == 0:
            return False
        rs[i:j] = [[new_start, new_end]]
        self.sacked_bytes += added
        return added > 0

    def advance(self, snd_una: int) -> None:
        """Drop everything below the cumulative ACK."""
        rs = self.ranges
        while rs and rs[0][0] < snd_una:
            r = rs[0]
            if r[1] <= snd_una:
                self.sacked_bytes -= r[1] - r[0]
                rs.pop(0)
            else:
                self.sacked_bytes -= snd_una - r[0]
                r[0] = snd_una
                break

    def is_sacked(self, seq: int) -> bool:
        return any(r[0] <= seq < r[1] for r in self.ranges)

    def next_hole(self, seq: int) -> tuple[int, int] | None:
        """The first un-SACKed range at or after `seq` that lies below the highest SACKed
        byte (only those are presumed lost), or None."""
        for r in self.ranges:
            if seq < r[0]:
                return seq, r[0]
            if seq < r[1]:
                seq = r[1]
        return None

    def sacked_between(self, start: int, end: int) -> int:
        total = 0
        for r in self.ranges:
            lo, hi = max(r[0], start), min(r[1], end)
            if hi > lo:
                total += hi - lo
        return total
