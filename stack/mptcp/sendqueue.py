"""The data-level send buffer of a connection (msk): DSNs, DATA_ACKs and reinjection.

Application bytes get consecutive DSNs. The scheduler takes chunks for subflows; a
chunk stays buffered until a DATA_ACK covers it, whatever subflow carried it. When a
subflow fails, the ranges it held unacknowledged are queued for reinjection and are
handed out again before any new data, to whichever subflow the scheduler picks.
"""

from __future__ import annotations

from collections import deque

from stack.mptcp.reassembly import DSN_MOD, HALF


class DataSendQueue:
    def __init__(self, initial_dsn: int, capacity: int):
        self.snd_una = initial_dsn % DSN_MOD  # oldest unacknowledged DSN
        self.snd_nxt = self.snd_una  # next new DSN to hand out
        self.capacity = capacity
        self._buffer = bytearray()  # bytes from snd_una onwards
        self._reinject: deque[tuple[int, int]] = deque()
        self.fin_requested = False
        self.fin_sent = False
        self.fin_acknowledged = False
        self.reinjected_bytes = 0

    @property
    def write_end(self) -> int:
        return (self.snd_una + len(self._buffer)) % DSN_MOD

    @property
    def space(self) -> int:
        return max(0, self.capacity - len(self._buffer))

    @property
    def unsent(self) -> int:
        return (self.write_end - self.snd_nxt) % DSN_MOD

    @property
    def in_flight(self) -> int:
        return (self.snd_nxt - self.snd_una) % DSN_MOD

    @property
    def fin_dsn(self) -> int | None:
        """The DSN the DATA_FIN occupies, once the application closed."""
        return self.write_end if self.fin_requested else None

    def write(self, data: bytes | memoryview) -> int:
        if self.fin_requested:
            raise BrokenPipeError("the connection's send side is closed (DATA_FIN queued)")
        accepted = min(len(data), self.space)
        self._buffer += data[:accepted]
        return accepted

    def close(self) -> None:
        self.fin_requested = True

    def _reinjection(self) -> int:
        """Bytes left of the first reinjection range not acknowledged meanwhile (0: none)."""
        for dsn, length in self._reinject:
            offset = (dsn - self.snd_una) % DSN_MOD
            if offset < HALF:
                return length
            if DSN_MOD - offset < length:  # partly acknowledged meanwhile
                return length - (DSN_MOD - offset)
        return 0

    @property
    def reinjecting(self) -> bool:
        """The next take() re-sends old bytes (below snd_nxt) rather than new ones (a
        range acknowledged since it was queued does not count: take() skips it)."""
        return self._reinjection() > 0

    def has_work(self) -> bool:
        return self.reinjecting or self.unsent > 0

    def take(self, max_len: int) -> tuple[int, bytes] | None:
        """The next chunk to send: reinjections first, then new data. None when idle."""
        while self._reinject:
            dsn, length = self._reinject[0]
            offset = (dsn - self.snd_una) % DSN_MOD
            if offset >= HALF:  # partly acknowledged meanwhile
                acked = DSN_MOD - offset
                if acked >= length:
                    self._reinject.popleft()
                    continue
                dsn, length, offset = self.snd_una, length - acked, 0
            size = min(length, max_len)
            if size == length:
                self._reinject.popleft()
            else:
                self._reinject[0] = ((dsn + size) % DSN_MOD, length - size)
            self.reinjected_bytes += size
            return dsn, bytes(self._buffer[offset : offset + size])
        unsent = self.unsent
        if unsent == 0:
            return None
        size = min(unsent, max_len)
        offset = (self.snd_nxt - self.snd_una) % DSN_MOD
        dsn = self.snd_nxt
        self.snd_nxt = (self.snd_nxt + size) % DSN_MOD
        return dsn, bytes(self._buffer[offset : offset + size])

    def mark_fin_sent(self) -> None:
        """The DATA_FIN went out (on a mapping that ends at write_end)."""
        self.fin_sent = True

    def acknowledge(self, data_ack: int) -> int:
        """Apply a DATA_ACK; returns the bytes newly acknowledged (0 for old or bogus).

        The DATA_FIN occupies one DSN after the data: a DATA_ACK one beyond the last
        byte acknowledges it.
        """
        advance = (data_ack - self.snd_una) % DSN_MOD
        fin_pending = self.fin_sent and not self.fin_acknowledged
        limit = self.in_flight + (1 if fin_pending and self.unsent == 0 else 0)
        if advance == 0 or advance > limit:
            return 0  # old, duplicate, or acknowledging what we never sent: ignored
        data_advance = min(advance, len(self._buffer))
        del self._buffer[:data_advance]
        self.snd_una = (self.snd_una + data_advance) % DSN_MOD
        if advance > data_advance:
            self.fin_acknowledged = True
        return data_advance

    def beyond_sent(self, data_ack: int) -> bool:
        """Whether a DATA_ACK acknowledges bytes never sent (RFC 8684 §3.3.2: invalid;
        Linux ignores where it points). Behind snd_una (half the space back) is old, not
        beyond."""
        advance = (data_ack - self.snd_una) % DSN_MOD
        fin_pending = self.fin_sent and not self.fin_acknowledged
        limit = self.in_flight + (1 if fin_pending and self.unsent == 0 else 0)
        return limit < advance < HALF

    def reinject(self, dsn: int, length: int) -> None:
        """Queue [dsn, dsn+length) for sending again, e.g. after its subflow failed."""
        offset = (dsn - self.snd_una) % DSN_MOD
        if offset >= HALF:
            cut = DSN_MOD - offset
            if cut >= length:
                return
            dsn, length = self.snd_una, length - cut
        self._reinject.append((dsn % DSN_MOD, length))

    def unacknowledged(self) -> tuple[int, int]:
        """(snd_una, bytes in flight): what reinjection of everything would cover."""
        return self.snd_una, self.in_flight
