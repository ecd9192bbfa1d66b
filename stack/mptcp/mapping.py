"""Receive-side DSS mappings of one subflow: subflow bytes -> data-level bytes.

RFC 8684 §3.3.1: a mapping says that `data_level_length` bytes starting at subflow
sequence number `subflow_seq` (relative: the first data byte is 1) carry the connection's
bytes from `dsn`. Mappings arrive in DSS options on any segment, possibly out of order,
so they are recorded as they come (`add_mapping`); the subflow's in-order bytes arrive
separately (`deliver`), after TCP reassembly, and are translated with the mappings.

- A mapping that contradicts one already recorded for the same bytes is a protocol
  error (the subflow must be reset).
- With checksums (§3.3), a mapping's bytes are held until the whole mapping arrived and
  its checksum verifies; a bad checksum gives `ChecksumFailed` (MP_FAIL, §3.7), a
  mapping of data without a checksum a `MappingError` (the subflow is reset).
- DATA_FIN takes one DSN after the mapping's data; a mapping of length 1 with no
  subflow bytes is a bare DATA_FIN.
- Bytes with no mapping at all: `Unmapped` (the caller decides: fall back to TCP if
  this is the first data, reset otherwise, §3.7). An infinite mapping (length 0) maps
  everything from its start: the connection has fallen back.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from stack import faults
from stack.crypto import dss_checksum
from stack.mptcp.reassembly import DSN_MOD

SEQ_MOD = 1 << 32


@dataclass(frozen=True)
class Mapping:
    dsn: int
    subflow_seq: int  # relative; the first data byte of the subflow is 1
    length: int  # data-level length, DATA_FIN included; 0: infinite
    checksum: int | None = None
    data_fin: bool = False

    @property
    def data_length(self) -> int:
        """Subflow bytes the mapping covers (the DATA_FIN has none)."""
        return self.length - (1 if self.data_fin else 0)


@dataclass(frozen=True)
class Deliver:
    dsn: int
    data: bytes


@dataclass(frozen=True)
class DataFin:
    dsn: int  # the DSN the DATA_FIN occupies


@dataclass(frozen=True)
class ChecksumFailed:
    dsn: int  # the mapping's start: what MP_FAIL reports
    subflow_seq: int
    data: bytes = b""  # the mapping's bytes, as they came


@dataclass(frozen=True)
class Unmapped:
    subflow_seq: int
    length: int


@dataclass(frozen=True)
class MappingError:
    reason: str


Event = Deliver | DataFin | ChecksumFailed | Unmapped | MappingError


# Mappings kept for bytes not yet delivered are bounded, as Linux bounds what it queues
# out of order (by the receive buffer): one that starts beyond the receive window (plus
# one 64 KiB mapping) maps bytes TCP would not accept, and at most MAX_MAPPINGS are kept.
# A peer that sent 100,000 mappings for bytes it never sent held 27 MB (issue 11).
MAX_MAPPINGS = 8192
MAPPING_SLACK = 1 << 16


class SubflowReceiveMapper:
    def __init__(self, checksums: bool, max_pending: int = 1 << 20, window: int = 4 << 20):
        self.checksums = checksums
        self.max_pending = max_pending
        self.window = window  # the subflow's receive buffer
        self.ignored = 0  # mappings dropped by the bounds above
        self._starts: list[int] = []  # mapping subflow_seq, sorted (relative, unwrapped)
        self._mappings: dict[int, Mapping] = {}
        self._infinite: Mapping | None = None
        self._held = bytearray()  # bytes of the current mapping awaiting its checksum
        self._held_from = 0

    @property
    def fallen_back(self) -> bool:
        return self._infinite is not None

    def add_mapping(self, mapping: Mapping, next_in_order: int) -> list[Event]:
        """Record a mapping; `next_in_order` is the next subflow byte not yet delivered."""
        if mapping.length == 0:
            self._infinite = mapping
            return []
        if self.checksums and mapping.checksum is None and mapping.data_length:
            # RFC 8684 §3.3 (and RFC 6824 §3.3): "If a checksum is not present when its
            # use has been negotiated, the receiver MUST close the subflow with a RST"
            return [MappingError(f"mapping at subflow seq {mapping.subflow_seq} without a "
                                 "checksum, checksums in use")]  # fmt: skip
        events: list[Event] = []
        existing = self._mappings.get(mapping.subflow_seq)
        if existing is not None:
            if (
                mapping.data_fin != existing.data_fin
                and mapping.dsn == existing.dsn
                and mapping.data_length == existing.data_length
            ):
                # the same bytes sent again with the DATA_FIN added to the last mapping,
                # or without it (Linux does both): as Linux, mappings compare without
                # the FIN's DSN; the one that carries the DATA_FIN is kept
                if mapping.data_fin:
                    self._mappings[mapping.subflow_seq] = mapping
                return []
            if existing != mapping:
                return [MappingError(f"mapping at subflow seq {mapping.subflow_seq} changed "
                                     f"from {existing} to {mapping}")]  # fmt: skip
            return []
        end = mapping.subflow_seq + mapping.data_length
        if mapping.data_fin and mapping.data_length and end <= next_in_order:
            return [DataFin((mapping.dsn + mapping.length - 1) % DSN_MOD)]  # data already in
        if end < next_in_order and mapping.data_length:
            return []  # a retransmitted segment's copy of a mapping already used
        if (
            mapping.subflow_seq > next_in_order + self.window + MAPPING_SLACK
            or len(self._mappings) >= MAX_MAPPINGS
        ):
            self.ignored += 1
            return []
        bisect.insort(self._starts, mapping.subflow_seq)
        self._mappings[mapping.subflow_seq] = mapping
        if mapping.data_fin and mapping.data_length == 0 and mapping.subflow_seq <= next_in_order:
            events.append(self._fin(mapping))
        return events

    def deliver(self, subflow_seq: int, data: bytes) -> list[Event]:
        """Translate in-order subflow bytes starting at `subflow_seq`."""
        events: list[Event] = []
        position, view = subflow_seq, memoryview(data)
        while view:
            mapping = self._covering(position)
            if mapping is None:
                if self._infinite is not None:
                    offset = position - self._infinite.subflow_seq
                    dsn = (self._infinite.dsn + offset) % DSN_MOD
                    events.append(Deliver(dsn, bytes(view)))
                    return events
                events.append(Unmapped(position, len(view)))
                return events
            offset = position - mapping.subflow_seq
            take = min(len(view), mapping.data_length - offset)
            piece, view = view[:take], view[take:]
            position += take
            if self.checksums and mapping.checksum is not None:
                events += self._hold(mapping, offset, piece)
            else:
                events.append(Deliver((mapping.dsn + offset) % DSN_MOD, bytes(piece)))
                if offset + take == mapping.data_length:
                    events += self._complete(mapping)
        return events

    @property
    def held_bytes(self) -> int:
        """Bytes read from the subflow and held for a checksum not yet verified."""
        return len(self._held)

    def take_held(self) -> Deliver | None:
        """The bytes of a checksummed mapping received so far, unverified: on fallback
        (RFC 8684 §3.7) the stream goes on as plain TCP, and these bytes are its next."""
        mapping = self._mappings.get(self._held_from)
        if not self._held or mapping is None:
            return None
        held = Deliver(mapping.dsn, bytes(self._held))
        self._held.clear()
        return held

    def _covering(self, position: int) -> Mapping | None:
        index = bisect.bisect_right(self._starts, position) - 1
        while index >= 0:
            mapping = self._mappings[self._starts[index]]
            if mapping.subflow_seq <= position < mapping.subflow_seq + mapping.data_length:
                return mapping
            index -= 1
            if mapping.subflow_seq + mapping.data_length <= position:
                break
        return None

    def _hold(self, mapping: Mapping, offset: int, piece: memoryview) -> list[Event]:
        if offset == 0:
            self._held.clear()
            self._held_from = mapping.subflow_seq
        self._held += piece
        if len(self._held) > self.max_pending:
            return [MappingError("a checksummed mapping larger than the receive buffer")]
        if len(self._held) < mapping.data_length:
            return []
        data = bytes(self._held)
        self._held.clear()
        expected = dss_checksum(mapping.dsn, mapping.subflow_seq, mapping.length, data)
        if expected != mapping.checksum and not (
            faults.ACTIVE and faults.on("dss_checksum_not_verified")
        ):
            self._forget(mapping)
            return [ChecksumFailed(mapping.dsn, mapping.subflow_seq, data)]
        return [Deliver(mapping.dsn, data), *self._complete(mapping)]

    def _complete(self, mapping: Mapping) -> list[Event]:
        events: list[Event] = []
        if mapping.data_fin:
            events.append(self._fin(mapping))
        self._forget(mapping)
        return events

    def _fin(self, mapping: Mapping) -> DataFin:
        self._forget(mapping)
        return DataFin((mapping.dsn + mapping.length - 1) % DSN_MOD)

    def _forget(self, mapping: Mapping) -> None:
        if self._mappings.pop(mapping.subflow_seq, None) is not None:
            self._starts.remove(mapping.subflow_seq)
