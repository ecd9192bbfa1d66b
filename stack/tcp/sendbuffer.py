"""The send buffer: bytes the application wrote and the peer has not acknowledged.

Stream offsets count from 0 (relative sequence number 1). A bytearray with a moving
head: acknowledged bytes are dropped lazily, so an ACK costs no memmove of the whole
buffer.
"""

from __future__ import annotations


class SendBuffer:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._buf = bytearray()
        self._head = 0  # index in _buf of stream offset `base`
        self.base = 0  # stream offset of the oldest unacknowledged byte

    def __len__(self) -> int:
        return len(self._buf) - self._head

    @property
    def end(self) -> int:
        """Stream offset one past the last byte written."""
        return self.base + len(self)

    @property
    def space(self) -> int:
        return max(self.capacity - len(self), 0)

    def append(self, data: bytes | bytearray | memoryview) -> int:
        n = min(len(data), self.space)
        if n:
            self._buf += data[:n] if n < len(data) else data
        return n

    def get(self, offset: int, length: int) -> bytes:
        """A copy of `length` bytes at stream `offset` (stable while the buffer moves on)."""
        start = self._head + offset - self.base
        if offset < self.base or offset + length > self.end:
            raise IndexError(f"[{offset}, {offset + length}) not in [{self.base}, {self.end})")
        return bytes(memoryview(self._buf)[start : start + length])

    def release(self, offset: int) -> int:
        """Forget everything below stream `offset`; returns the bytes released."""
        n = min(max(offset - self.base, 0), len(self))
        self.base += n
        self._head += n
        if self._head == len(self._buf):
            # all acknowledged: keep nothing (a subflow in TIME_WAIT held up to 64 KiB
            # of acknowledged bytes for its 60 s)
            self._buf = bytearray()
            self._head = 0
        elif self._head >= 65536 and self._head * 2 >= len(self._buf):
            del self._buf[: self._head]
            self._head = 0
        return n
