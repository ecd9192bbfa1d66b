"""Send-side DSS mappings of one subflow: which DSN each subflow byte carries.

The scheduler hands a subflow chunks of the connection's stream; the subflow appends them
to its TCP send buffer, and this map remembers, per chunk, the subflow sequence number
(relative: the first data byte is 1) where it starts and its DSN. Every outgoing segment
then carries a mapping that covers exactly its payload; a retransmission of the same
subflow bytes carries the same mapping by construction, as RFC 8684 §3.3.1 requires.
A segment never spans two chunks whose DSNs are not contiguous: `limit()` says where
the TCP layer must cut.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from stack.mptcp.reassembly import DSN_MOD


@dataclass(frozen=True)
class Chunk:
    subflow_seq: int
    dsn: int
    length: int


class SubflowSendMap:
    def __init__(self) -> None:
        self._chunks: list[Chunk] = []
        self._starts: list[int] = []
        self.write_seq = 1  # the next subflow byte to assign

    def append(self, dsn: int, length: int) -> int:
        """Assign the next `length` subflow bytes to DSN `dsn`; returns their subflow seq."""
        start = self.write_seq
        last = self._chunks[-1] if self._chunks else None
        if (
            last is not None
            and (last.dsn + last.length) % DSN_MOD == dsn % DSN_MOD
            and (last.subflow_seq + last.length == start)
        ):
            self._chunks[-1] = Chunk(last.subflow_seq, last.dsn, last.length + length)
        else:
            self._chunks.append(Chunk(start, dsn % DSN_MOD, length))
            self._starts.append(start)
        self.write_seq += length
        return start

    def _chunk(self, subflow_seq: int) -> Chunk:
        index = bisect.bisect_right(self._starts, subflow_seq) - 1
        if index < 0:
            raise KeyError(f"subflow byte {subflow_seq} was never assigned a DSN")
        chunk = self._chunks[index]
        if not chunk.subflow_seq <= subflow_seq < chunk.subflow_seq + chunk.length:
            raise KeyError(f"subflow byte {subflow_seq} was never assigned a DSN")
        return chunk

    def limit(self, subflow_seq: int) -> int:
        """How many bytes from `subflow_seq` one segment may carry under one mapping."""
        chunk = self._chunk(subflow_seq)
        return chunk.subflow_seq + chunk.length - subflow_seq

    def mapping(self, subflow_seq: int, length: int) -> tuple[int, int, int]:
        """(dsn, subflow_seq, length) for a segment's payload."""
        chunk = self._chunk(subflow_seq)
        if subflow_seq + length > chunk.subflow_seq + chunk.length:
            raise ValueError(
                f"a segment of {length} bytes at {subflow_seq} spans two mappings; "
                f"cut it at {self.limit(subflow_seq)}"
            )
        return (chunk.dsn + subflow_seq - chunk.subflow_seq) % DSN_MOD, subflow_seq, length

    def acknowledged(self, subflow_seq: int) -> None:
        """Forget chunks entirely below `subflow_seq` (acknowledged at the subflow level)."""
        while self._chunks and self._chunks[0].subflow_seq + self._chunks[0].length <= subflow_seq:
            self._chunks.pop(0)
            self._starts.pop(0)

    def unacknowledged(self) -> list[tuple[int, int]]:
        """(dsn, length) of every chunk still held: what reinjection re-sends if the
        subflow dies."""
        return [(c.dsn, c.length) for c in self._chunks]
