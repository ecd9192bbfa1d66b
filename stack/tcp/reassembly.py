"""Receive side: in-order bytes waiting for the application, the out-of-order queue, and
the SACK blocks that describe it (RFC 2018 §4).

Sequence numbers are relative (see `seq.py`). The caller trims segments to the window
before inserting; this module only keeps bytes, never more than once.
"""

from __future__ import annotations

import bisect


class ReceiveBuffer:
    def __init__(self, capacity: int, rcv_nxt: int = 1) -> None:
        self.capacity = capacity
        self.rcv_nxt = rcv_nxt
        self._buf = bytearray()
        self._head = 0
        # out-of-order pieces, disjoint and sorted by start; a segment that continues the
        # piece before it extends that piece (Linux coalesces skbs in its ofo queue): a
        # loss leaves one growing buffer, not hundreds of 1.4 KB objects on the heap
        self._starts: list[int] = []
        self._pieces: list[bytearray] = []
        self._recent: list[int] = []  # starts of the most recently received ooo pieces
        self.read_seq = rcv_nxt  # relative seq of the next byte receive() returns

    @property
    def readable(self) -> int:
        return len(self._buf) - self._head

    @property
    def out_of_order_bytes(self) -> int:
        return sum(len(p) for p in self._pieces)

    @property
    def has_out_of_order(self) -> bool:
        return bool(self._starts)

    def insert(self, seq: int, data: bytes | memoryview) -> int:
        """Store `data` at relative `seq`; returns how far rcv_nxt advanced."""
        end = seq + len(data)
        if end <= self.rcv_nxt or not data:
            return 0
        if seq <= self.rcv_nxt:
            self._buf += data[self.rcv_nxt - seq :] if seq < self.rcv_nxt else data
            before = self.rcv_nxt
            self.rcv_nxt = end
            self._pull()
            return self.rcv_nxt - before
        self._insert_ooo(seq, data)
        return 0

    def _pull(self) -> None:
        starts, pieces = self._starts, self._pieces
        while starts and starts[0] <= self.rcv_nxt:
            s = starts.pop(0)
            p = pieces.pop(0)
            e = s + len(p)
            if e > self.rcv_nxt:
                self._buf += p[self.rcv_nxt - s :]
                self.rcv_nxt = e
        if self._recent:
            self._recent = [s for s in self._recent if s >= self.rcv_nxt]

    def _insert_ooo(self, s: int, data: bytes | memoryview) -> None:
        starts, pieces = self._starts, self._pieces
        e = s + len(data)
        first = s
        i = bisect.bisect_right(starts, s) - 1
        if i >= 0:
            prev_end = starts[i] + len(pieces[i])
            if prev_end >= e:
                self._note_recent(first)
                return
            if prev_end > s:
                data = data[prev_end - s :]
                s = prev_end
        i += 1
        while s < e:
            if i < len(starts) and starts[i] < e:
                ns = starts[i]
                if ns > s:
                    starts.insert(i, s)
                    pieces.insert(i, bytearray(data[: ns - s]))
                    i += 1
                nend = ns + len(pieces[i])
                if nend >= e:
                    break
                data = data[nend - s :]
                s = nend
                i += 1
            elif i > 0 and starts[i - 1] + len(pieces[i - 1]) == s:
                pieces[i - 1] += data  # continues the piece before it
                break
            else:
                starts.insert(i, s)
                pieces.insert(i, bytearray(data))
                break
        self._note_recent(first)

    def _note_recent(self, start: int) -> None:
        if start in self._recent:
            self._recent.remove(start)
        self._recent.insert(0, start)
        del self._recent[8:]

    def ranges(self) -> list[tuple[int, int]]:
        """The out-of-order data as merged [start, end) ranges, in sequence order."""
        out: list[tuple[int, int]] = []
        for s, p in zip(self._starts, self._pieces, strict=True):
            e = s + len(p)
            if out and out[-1][1] == s:
                out[-1] = (out[-1][0], e)
            else:
                out.append((s, e))
        return out

    def sack_blocks(self, limit: int) -> list[tuple[int, int]]:
        """Up to `limit` SACK blocks: the block holding the most recently received segment
        first, then the other recent ones, then the rest (RFC 2018 §4)."""
        if not self._starts:
            return []
        ranges = self.ranges()
        blocks: list[tuple[int, int]] = []
        for s in self._recent:
            for r in ranges:
                if r[0] <= s < r[1]:
                    if r not in blocks:
                        blocks.append(r)
                    break
            if len(blocks) >= limit:
                return blocks
        for r in ranges:
            if len(blocks) >= limit:
                break
            if r not in blocks:
                blocks.append(r)
        return blocks

    def read(self, max_bytes: int) -> bytes:
        n = min(max_bytes, self.readable)
        if n <= 0:
            return b""
        out = bytes(memoryview(self._buf)[self._head : self._head + n])
        self._head += n
        self.read_seq += n
        if self._head == len(self._buf):
            self._buf.clear()
            self._head = 0
        elif self._head >= 65536 and self._head * 2 >= len(self._buf):
            del self._buf[: self._head]
            self._head = 0
        return out
