"""An in-memory link with a virtual clock: two sans-I/O endpoints, deterministic tests.

Each direction is a `PathConfig`: propagation delay, optional rate (a serialisation
queue with tail drop), random loss, duplication, reordering (extra random delay) and a
scripted `drop(segment)` predicate, all driven by one seeded `random.Random`. The
simulator moves segments between the endpoints and fires their timers in virtual time;
nothing sleeps. Any object with `handle_segment`, `handle_timer`, `poll_segments` and
`next_timer` is an endpoint (a `TcpConnection`, or `ListenerEndpoint` around a listener).
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from stack.tcp.connection import TcpConnection
from stack.tcp.events import Event
from stack.tcp.listener import TcpListener
from stack.tcp.segment import Segment

HEADER_BYTES = 40  # IPv4 + TCP without options, for the rate model


class Endpoint(Protocol):
    def handle_segment(self, seg: Segment, now: float) -> None: ...
    def handle_timer(self, now: float) -> None: ...
    def poll_segments(self) -> list[Segment]: ...
    def next_timer(self) -> float | None: ...


@dataclass
class PathConfig:
    delay: float = 0.005  # one way, seconds
    rate: float | None = None  # bytes per second; None: infinitely fast
    queue_bytes: int = 256 * 1024  # tail drop beyond this much queued (with a rate)
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0  # probability that a segment is held back...
    reorder_delay: float = 0.010  # ...by up to this much extra delay
    drop: Callable[[Segment], bool] | None = None  # scripted loss, on top of `loss`


@dataclass
class PathStats:
    sent: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0


@dataclass(order=True)
class _Arrival:
    time: float
    order: int
    target: int = field(compare=False)
    segment: Segment = field(compare=False)


class ListenerEndpoint:
    """A listener with one expected peer as a sim endpoint; accepts automatically."""

    def __init__(self, listener: TcpListener, remote: tuple[Any, int]) -> None:
        self.listener = listener
        self.remote = remote
        self.connection: TcpConnection | None = None
        self.accepted: list[TcpConnection] = []

    def handle_segment(self, seg: Segment, now: float) -> None:
        if self.connection is not None:
            self.connection.handle_segment(seg, now)
            return
        self.listener.handle_segment(self.remote, seg, now)
        self._accept()

    def _accept(self) -> None:
        conn = self.listener.accept()
        while conn is not None:
            self.accepted.append(conn)
            if conn.remote == self.remote:
                self.connection = conn
            conn = self.listener.accept()

    def handle_timer(self, now: float) -> None:
        if self.connection is not None:
            self.connection.handle_timer(now)
        self.listener.handle_timer(now)
        self._accept()

    def poll_segments(self) -> list[Segment]:
        out = [seg for _, seg in self.listener.poll_segments()]
        if self.connection is not None:
            out.extend(self.connection.poll_segments())
        return out

    def next_timer(self) -> float | None:
        times = [
            t
            for t in (
                self.listener.next_timer(),
                self.connection.next_timer() if self.connection else None,
            )
            if t is not None
        ]
        return min(times) if times else None


class Simulator:
    def __init__(
        self,
        a: Endpoint,
        b: Endpoint,
        *,
        a_to_b: PathConfig | None = None,
        b_to_a: PathConfig | None = None,
        seed: int = 0,
        start: float = 0.0,
        record: bool = False,
    ) -> None:
        self.endpoints = (a, b)
        self.paths = (a_to_b or PathConfig(), b_to_a or PathConfig())
        self.stats = (PathStats(), PathStats())
        self.rng = random.Random(seed)
        self.now = start
        self.record = record
        # (time, "a>b" | "b>a", segment, delivered?)
        self.trace: list[tuple[float, str, Segment, bool]] = []
        self.hooks: list[Callable[[float], None]] = []  # "applications", after every step
        self._queue: list[_Arrival] = []
        self._order = 0
        self._busy_until = [start, start]
        self.steps = 0

    def _transmit(self, index: int, seg: Segment) -> None:
        path = self.paths[index]
        stats = self.stats[index]
        stats.sent += 1
        lost = (path.loss and self.rng.random() < path.loss) or (
            path.drop is not None and path.drop(seg)
        )
        depart = self.now
        if not lost and path.rate:
            size = len(seg.payload) + HEADER_BYTES
            start = max(self.now, self._busy_until[index])
            if (start - self.now) * path.rate + size > path.queue_bytes:
                lost = True
            else:
                depart = self._busy_until[index] = start + size / path.rate
        if self.record:
            self.trace.append((self.now, "a>b" if index == 0 else "b>a", seg, not lost))
        if lost:
            stats.lost += 1
            return
        arrival = depart + path.delay
        if path.reorder and self.rng.random() < path.reorder:
            stats.reordered += 1
            arrival += self.rng.random() * path.reorder_delay
        self._push(arrival, 1 - index, seg)
        if path.duplicate and self.rng.random() < path.duplicate:
            stats.duplicated += 1
            self._push(arrival + self.rng.random() * path.delay, 1 - index, seg)

    def _push(self, time: float, target: int, seg: Segment) -> None:
        self._order += 1
        heapq.heappush(self._queue, _Arrival(time, self._order, target, seg))

    def _flush(self) -> None:
        for index, ep in enumerate(self.endpoints):
            for seg in ep.poll_segments():
                self._transmit(index, seg)

    def _run_hooks(self) -> None:
        for hook in self.hooks:
            hook(self.now)

    def run(
        self,
        until: float | None = None,
        *,
        stop: Callable[[], bool] | None = None,
        max_steps: int = 5_000_000,
    ) -> bool:
        """Advance until `stop()` holds (True), or nothing is left to do, or virtual time
        `until` (False). Every step is one delivery or one timer."""
        self._run_hooks()
        self._flush()
        a, b = self.endpoints
        for _ in range(max_steps):
            if stop is not None and stop():
                return True
            t_arrival = self._queue[0].time if self._queue else None
            ta, tb = a.next_timer(), b.next_timer()
            t = min((x for x in (t_arrival, ta, tb) if x is not None), default=None)
            if t is None:
                return stop is None
            if until is not None and t > until:
                self.now = until
                return False
            self.now = max(self.now, t)
            self.steps += 1
            if t_arrival is not None and t_arrival <= t:
                item = heapq.heappop(self._queue)
                self.endpoints[item.target].handle_segment(item.segment, self.now)
            elif ta is not None and ta <= t:
                a.handle_timer(self.now)
            else:
                b.handle_timer(self.now)
            self._run_hooks()
            self._flush()
        raise RuntimeError(f"simulation did not settle in {max_steps} steps (t={self.now:.3f})")


class StreamApp:
    """A bulk application on one connection: writes `data` (then shuts down if asked),
    reads everything into `received`, records events."""

    def __init__(
        self,
        conn: Callable[[], TcpConnection | None] | TcpConnection,
        data: bytes = b"",
        *,
        shutdown: bool = True,
        read: bool = True,
    ) -> None:
        self._conn = conn
        self.data = memoryview(data)
        self.offset = 0
        self.shutdown = shutdown
        self.read = read
        self.received = bytearray()
        self.events: list[Event] = []
        self._shut = False

    @property
    def conn(self) -> TcpConnection | None:
        return self._conn if isinstance(self._conn, TcpConnection) else self._conn()

    def __call__(self, now: float) -> None:
        conn = self.conn
        if conn is None:
            return
        self.events.extend(conn.poll_events())
        if conn.state.name in ("ESTABLISHED", "CLOSE_WAIT"):
            while self.offset < len(self.data):
                n = conn.send(self.data[self.offset : self.offset + 65536], now)
                if not n:
                    break
                self.offset += n
            if self.offset >= len(self.data) and self.shutdown and not self._shut:
                self._shut = True
                conn.shutdown_write(now)
        if self.read and conn.readable:
            self.received += conn.receive(1 << 30, now)
        self.events.extend(conn.poll_events())

    @property
    def done_sending(self) -> bool:
        return self.offset >= len(self.data)


def digest(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------- test support

ADDR_A = ("10.0.0.1", 40000)
ADDR_B = ("10.0.0.2", 80)


def connection_pair(
    config_a: Any = None,
    config_b: Any = None,
    *,
    a_to_b: PathConfig | None = None,
    b_to_a: PathConfig | None = None,
    seed: int = 0,
    record: bool = False,
    backlog: int = 16,
) -> tuple[TcpConnection, ListenerEndpoint, Simulator]:
    """An active opener A and a listener B on one simulated link (A is not yet connected)."""
    a = TcpConnection(ADDR_A, ADDR_B, config=config_a, isn_secret=b"secret-a", now=0.0)
    listener = TcpListener(ADDR_B, config=config_b, isn_secret=b"secret-b", backlog=backlog)
    b = ListenerEndpoint(listener, ADDR_A)
    sim = Simulator(a, b, a_to_b=a_to_b, b_to_a=b_to_a, seed=seed, record=record)
    return a, b, sim


class FakePeer:
    """The far end of a connection under test, written by hand: builds its segments with
    relative sequence numbers (its own ISN is `iss`) and reads the connection's answers."""

    def __init__(self, conn: TcpConnection, *, iss: int = 0xFFFFFF00) -> None:
        self.conn = conn
        self.iss = iss  # near the wrap on purpose: exercises mod-2**32 arithmetic

    def segment(
        self,
        flags: int,
        seq: int = 1,
        ack: int = 1,
        payload: bytes = b"",
        window: int = 65535,
        **options: Any,
    ) -> Segment:
        conn = self.conn
        return Segment(
            conn.remote[1],
            conn.local[1],
            (self.iss + seq) & 0xFFFFFFFF,
            (conn.iss + ack) & 0xFFFFFFFF,
            flags,
            window,
            payload=payload,
            **options,
        )

    def send(self, flags: int, now: float, **kw: Any) -> list[Segment]:
        """Deliver one segment to the connection; returns what it sent in reply."""
        self.conn.handle_segment(self.segment(flags, **kw), now)
        return self.conn.poll_segments()

    def seq_of(self, seg: Segment) -> int:
        """The connection's segment's seq, relative to the connection's ISN."""
        return (seg.seq - self.conn.iss) & 0xFFFFFFFF

    def ack_of(self, seg: Segment) -> int:
        """The connection's segment's ack, relative to our ISN."""
        return (seg.ack - self.iss) & 0xFFFFFFFF
