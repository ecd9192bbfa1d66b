"""Data-level reassembly: bytes arrive by DSN, on any subflow, in any order, maybe twice.

DSNs are 64-bit and wrap (RFC 8684 §3.3); offsets are computed modulo 2^64 relative to
the next expected DSN, so the queue works across the wrap. The out-of-order store is
bounded by the receive window the caller advertises: anything beyond it is dropped and
will be retransmitted, as at the TCP level.
"""

from __future__ import annotations

import bisect

DSN_MOD = 1 << 64
HALF = 1 << 63


def dsn_after(a: int, b: int) -> bool:
    """a > b in 64-bit sequence space."""
    return 0 < (a - b) % DSN_MOD < HALF


class DataReassembly:
    def __init__(self, initial_dsn: int, window: int):
        self.next_dsn = initial_dsn % DSN_MOD  # the DATA_ACK we send
        self.window = window
        self._ready = bytearray()
        # Out-of-order chunks keyed by offset from next_dsn at insertion time; kept as
        # absolute DSNs and sorted by their distance from next_dsn when needed.
        self._starts: list[int] = []  # offsets relative to self._base
        self._chunks: dict[int, bytearray] = {}
        self._base = self.next_dsn
        self.duplicate_bytes = 0
        self.out_of_window_bytes = 0

    @property
    def readable(self) -> int:
        return len(self._ready)

    @property
    def buffered(self) -> int:
        return len(self._ready) + sum(len(c) for c in self._chunks.values())

    def receive_window(self) -> int:
        """What we may still accept beyond next_dsn (the data-level window)."""
        return max(0, self.window - len(self._ready))

    def add(self, dsn: int, data: bytes | memoryview) -> int:
        """Store data mapped at `dsn`; returns how many new in-order bytes became readable."""
        if not data:
            return 0
        offset = (dsn - self.next_dsn) % DSN_MOD
        length = len(data)
        if offset >= HALF:  # starts before next_dsn: trim the part we already have
            overlap = DSN_MOD - offset
            if overlap >= length:
                self.duplicate_bytes += length
                return 0
            self.duplicate_bytes += overlap
            data = data[overlap:]
            offset = 0
            length = len(data)
        limit = self.receive_window()
        if offset >= limit:
            self.out_of_window_bytes += length
            return 0
        if offset + length > limit:
            self.out_of_window_bytes += offset + length - limit
            data = data[: limit - offset]
            length = len(data)
        if offset == 0:
            self._ready += data
            self.next_dsn = (self.next_dsn + length) % DSN_MOD
            gained = length + self._drain()
            return gained
        key = (self.next_dsn + offset - self._base) % DSN_MOD
        existing = self._chunks.get(key)
        if existing is None:
            at = bisect.bisect_left(self._starts, key)
            before = self._chunks[self._starts[at - 1]] if at else None
            if before is not None and self._starts[at - 1] + len(before) == key:
                # continues the chunk before it: one growing buffer per run of data
                # past a hole, not an object per mapping (the soak's heap, issue 11)
                before += data
                return 0
            self._starts.insert(at, key)
            self._chunks[key] = bytearray(data)
        elif len(existing) < length:
            self._chunks[key] = bytearray(data)
        else:
            self.duplicate_bytes += length
        return 0

    def _drain(self) -> int:
        """Move chunks that now touch next_dsn into the readable buffer."""
        gained = 0
        while self._starts:
            key = self._starts[0]
            start = (self._base + key) % DSN_MOD
            offset = (start - self.next_dsn) % DSN_MOD
            chunk = self._chunks[key]
            if offset < HALF and offset > 0:
                break  # still a hole before it
            self._starts.pop(0)
            del self._chunks[key]
            skip = 0 if offset < HALF else DSN_MOD - offset
            if skip >= len(chunk):
                self.duplicate_bytes += len(chunk)
                continue
            self.duplicate_bytes += skip
            piece = chunk[skip:]
            self._ready += piece
            self.next_dsn = (self.next_dsn + len(piece)) % DSN_MOD
            gained += len(piece)
        if not self._starts:
            self._base = self.next_dsn
        return gained

    def read(self, max_bytes: int = -1) -> bytes:
        if max_bytes < 0 or max_bytes >= len(self._ready):
            data = bytes(self._ready)
            self._ready.clear()
            return data
        data = bytes(self._ready[:max_bytes])
        del self._ready[:max_bytes]
        return data
