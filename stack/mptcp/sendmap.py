"""Send-side DSS mappings of one subflow: which DSN each subflow byte carries.

The scheduler hands a subflow chunks of the connection's stream (at most 64 KB - 1, the
mapping's 16-bit length); the subflow appends them to its TCP send buffer, and this map
remembers, per chunk, the subflow sequence number (relative: the first data byte is 1)
where it starts, its DSN and, when checksums are in use, its DSS checksum. Each chunk
is one mapping, carried whole by every segment that holds any of its bytes, as Linux
does with an skb's mapping: so a retransmission, however the TCP layer cuts it, carries
the very mapping the first transmission did (RFC 8684 §3.3.1), and a checksum covers
exactly the bytes it was computed over. `limit()` says where a segment must end so that
it never spans two chunks. Chunks are never merged: a mapping never changes once sent.

A chunk the peer acknowledges is forgotten only at `trim()`, once the segments already
built have been given their options: an ACK later in the same batch of input can cover
a segment (a SACK retransmission) built from an earlier one, and that segment still
needs its mapping.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from stack.mptcp.reassembly import DSN_MOD

MAX_MAPPING = 0xFFFF  # data-level length is a 16-bit field


@dataclass(frozen=True)
class Chunk:
    subflow_seq: int
    dsn: int
    length: int
    checksum: int | None = None


class SubflowSendMap:
    def __init__(self) -> None:
        self._chunks: list[Chunk] = []
        self._starts: list[int] = []
        self.write_seq = 1  # the next subflow byte to assign
        self.una = 1  # the first subflow byte the peer has not acknowledged

    def append(self, dsn: int, length: int, checksum: int | None = None) -> int:
        """Assign the next `length` subflow bytes to DSN `dsn` as one mapping; returns
        their subflow seq."""
        if not 0 < length <= MAX_MAPPING:
            raise ValueError(f"a mapping of {length} bytes: must be 1..{MAX_MAPPING}")
        start = self.write_seq
        self._chunks.append(Chunk(start, dsn % DSN_MOD, length, checksum))
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

    def mapping(self, subflow_seq: int, length: int) -> Chunk:
        """The mapping a segment of `length` bytes from `subflow_seq` carries: its chunk's."""
        chunk = self._chunk(subflow_seq)
        if subflow_seq + length > chunk.subflow_seq + chunk.length:
            raise ValueError(
                f"a segment of {length} bytes at {subflow_seq} spans two mappings; "
                f"cut it at {self.limit(subflow_seq)}"
            )
        return chunk

    def acknowledged(self, subflow_seq: int) -> None:
        """The peer acknowledged the subflow bytes below `subflow_seq` (kept until `trim`)."""
        self.una = max(self.una, subflow_seq)

    def trim(self) -> None:
        """Forget the chunks entirely acknowledged (every built segment has its options)."""
        chunks = self._chunks
        count = 0
        while count < len(chunks) and chunks[count].subflow_seq + chunks[count].length <= self.una:
            count += 1
        if count:
            del chunks[:count]
            del self._starts[:count]

    def _unacknowledged(self) -> list[Chunk]:
        return [c for c in self._chunks if c.subflow_seq + c.length > self.una]

    def dsn_offset(self) -> int | None:
        """DSN minus subflow seq of the oldest unacknowledged chunk (None: there is none)."""
        held = self._unacknowledged()
        if not held:
            return None
        return (held[0].dsn - held[0].subflow_seq) % DSN_MOD

    def unacknowledged(self) -> list[tuple[int, int]]:
        """(dsn, length) of every chunk not entirely acknowledged: what reinjection
        re-sends if the subflow dies."""
        return [(c.dsn, c.length) for c in self._unacknowledged()]
