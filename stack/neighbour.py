"""Neighbour resolution (ARP for IPv4, NDP for IPv6) as a sans-I/O state machine.

The host asks `lookup()` for a next hop's MAC. The model is Linux's neighbour table
(net/core/neighbour.c) with RFC 4861's states, kept small:

- **INCOMPLETE** (no MAC yet): the frame waits in a bounded queue (`MAX_QUEUED` frames
  and `MAX_QUEUED_BYTES`, Linux's unres_qlen_bytes; when full the *oldest* waiting frame
  is dropped, as Linux, and counted in `neigh_unres_discards`) and a broadcast
  solicitation goes out, then one every `RETRANSMIT_INTERVAL`. After `MAX_PROBES`
  unanswered ones the entry fails: its frames are dropped (`Unreachable`), counted in
  `neigh_res_failed`, so a dead peer costs bounded memory and never a hang.
- **REACHABLE** for a randomised reachable time (`REACHABLE_TIME` x 0.5..1.5, RFC 4861
  §6.3.2, Linux's base_reachable_time) after an answer, then **STALE**.
- A STALE entry is still used (no frame waits), but its first use starts a
  verification: up to `MAX_PROBES` solicitations sent straight to the known MAC (Linux's
  PROBE state, without its 5 s DELAY: the stack has no upper-layer confirmation). An
  answer makes it REACHABLE again; silence removes it, and the next use resolves afresh.

Entries are created only by our own lookups and by a solicitation addressed to one of our
addresses (an ARP request or a Neighbor Solicitation whose target is ours: the sender is
about to talk to us). Replies, advertisements and gratuitous ARP only update an entry that
exists (Linux with arp_accept=0, RFC 4861 §7.2.5), so they cannot grow the table.

The table holds at most `MAX_ENTRIES` (Linux's gc_thresh3). To make room it evicts, in
this order and each time the least recently touched: an entry learnt from a solicitation
and never used by us, then one that we used, then an unresolved one (its frames dropped).
A flood of solicitations from made-up senders therefore churns among its own entries and
the ones we use survive it. Above `GC_THRESHOLD` entries (gc_thresh1), an entry unused for
`GC_STALE_TIME` (gc_staletime) is collected when another is created. Every operation is
O(1) (amortised): three insertion-ordered dicts and one FIFO of probe deadlines, which
relies on `now` never going backwards (all deadlines are `now + RETRANSMIT_INTERVAL`; one
out of order is only served as late as the deadline before it).
"""

from __future__ import annotations

import ipaddress
import random
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Key = tuple[str, IPAddress]  # interface name, neighbour's address

RETRANSMIT_INTERVAL = 1.0  # seconds between solicitations (RFC 4861 RetransTimer)
MAX_PROBES = 3  # RFC 4861 MAX_MULTICAST_SOLICIT and MAX_UNICAST_SOLICIT; Linux's 3 and 3
REACHABLE_TIME = 30.0  # RFC 4861 REACHABLE_TIME, Linux base_reachable_time; randomised
MAX_QUEUED = 64  # frames waiting for one neighbour
MAX_QUEUED_BYTES = 212_992  # and their bytes (Linux's unres_qlen_bytes default)
MAX_ENTRIES = 1024  # Linux's gc_thresh3: the table never holds more
GC_THRESHOLD = 128  # Linux's gc_thresh1: below it, nothing is collected for age
GC_STALE_TIME = 60.0  # Linux's gc_staletime: unused this long, an entry may be collected


@dataclass
class NeighbourCounters:
    """What the table dropped, and why (the host's `Counters` has these fields)."""

    neigh_evicted: int = 0  # entries removed to stay within MAX_ENTRIES (forced GC)
    neigh_expired: int = 0  # entries collected after GC_STALE_TIME unused
    neigh_res_failed: int = 0  # resolutions and verifications that got no answer
    neigh_unres_discards: int = 0  # waiting frames dropped: queue full, entry evicted
    neigh_ignored: int = 0  # answers for no entry (not a solicitation to us): not learnt


@dataclass(slots=True, eq=False)
class _Entry:
    mac: bytes | None = None
    expires: float = 0.0  # REACHABLE until then (with a MAC), then STALE
    touched: float = 0.0  # last use (or, never used, last confirmation): for collection
    probes_sent: int = 0  # in the current resolution or verification; 0: none running
    next_probe: float = 0.0
    waiting: deque[bytes] = field(default_factory=deque)  # frames without Ethernet header
    waiting_bytes: int = 0


@dataclass(frozen=True)
class Solicit:
    """Send a solicitation for `address` out of `ifname`: broadcast (ARP) or to the
    solicited-node group (NDP), or, with `mac`, straight to it (verifying a STALE entry)."""

    ifname: str
    address: IPAddress
    mac: bytes | None = None


@dataclass(frozen=True)
class Release:
    """`address` is at `mac`: send these waiting frames to it. Also returned, with no
    frames, when a known neighbour's MAC changed (cached paths must be looked up again)."""

    ifname: str
    mac: bytes
    frames: tuple[bytes, ...]


@dataclass(frozen=True)
class Unreachable:
    ifname: str
    address: IPAddress
    dropped: int


class NeighbourTable:
    def __init__(
        self,
        counters: NeighbourCounters | None = None,
        *,
        random_factor: Callable[[], float] = random.random,
    ) -> None:
        self.counters = counters if counters is not None else NeighbourCounters()
        self._random = random_factor  # in [0, 1): the reachable time's randomisation
        # each least recently touched first; an entry is in exactly one of them
        self._used: OrderedDict[Key, _Entry] = OrderedDict()  # with a MAC, used by us
        self._unused: OrderedDict[Key, _Entry] = OrderedDict()  # learnt, never used
        self._incomplete: OrderedDict[Key, _Entry] = OrderedDict()  # no MAC yet
        # (deadline, key, entry) in deadline order; an item is void once the entry's
        # next_probe moved on or its probes stopped (probes_sent == 0)
        self._probes: deque[tuple[float, Key, _Entry]] = deque()

    def __len__(self) -> int:
        return len(self._used) + len(self._unused) + len(self._incomplete)

    def __contains__(self, key: Key) -> bool:
        return key in self._used or key in self._unused or key in self._incomplete

    def state(self, ifname: str, address: IPAddress, now: float) -> str | None:
        """RFC 4861's name for the entry's state (PROBE: STALE and being verified), or
        None without an entry: for tests and diagnostics."""
        key = (ifname, address)
        entry = self._used.get(key) or self._unused.get(key)
        if entry is None:
            return "INCOMPLETE" if key in self._incomplete else None
        if entry.probes_sent:
            return "PROBE"
        return "REACHABLE" if now < entry.expires else "STALE"

    # ------------------------------------------------------------------ lookups

    def lookup(
        self, ifname: str, address: IPAddress, frame: bytes, now: float
    ) -> tuple[bytes | None, list[Solicit]]:
        """The MAC to send `frame` to, or None (the frame waits) plus solicitations to send."""
        key = (ifname, address)
        entry = self._used.get(key)
        if entry is not None:
            self._used.move_to_end(key)
        else:
            entry = self._unused.pop(key, None)
            if entry is not None:
                self._used[key] = entry
        if entry is not None:
            entry.touched = now
            if now < entry.expires or entry.probes_sent:
                return entry.mac, []  # REACHABLE, or STALE and being verified
            self._start_probes(key, entry, now)  # STALE: verify it, use it meanwhile
            return entry.mac, [Solicit(ifname, address, entry.mac)]
        entry = self._incomplete.get(key)
        if entry is not None:
            self._queue(entry, frame)
            return None, []
        self._make_room(now)
        entry = self._incomplete[key] = _Entry(touched=now)
        self._queue(entry, frame)
        self._start_probes(key, entry, now)
        return None, [Solicit(ifname, address)]

    def learn(
        self, ifname: str, address: IPAddress, mac: bytes, now: float, *, create: bool = False
    ) -> Release | None:
        """A reply, an advertisement or a solicitation from `address` told us its MAC.
        Only `create` (a solicitation addressed to us) makes a new entry; otherwise an
        unknown neighbour is ignored and counted."""
        key = (ifname, address)
        entry = self._used.get(key)
        if entry is None:
            entry = self._unused.get(key)
            if entry is not None:
                self._unused.move_to_end(key)
                entry.touched = now
        if entry is None:
            entry = self._incomplete.pop(key, None)
            if entry is not None:
                self._used[key] = entry  # we asked: it is in use
                entry.touched = now
        if entry is None:
            if not create:
                self.counters.neigh_ignored += 1
                return None
            self._make_room(now)
            entry = self._unused[key] = _Entry(touched=now)
        changed = entry.mac is not None and entry.mac != mac
        entry.mac = mac
        entry.expires = now + REACHABLE_TIME * (0.5 + self._random())
        entry.probes_sent = 0  # voids its pending probe, if any
        if not entry.waiting:
            return Release(ifname, mac, ()) if changed else None
        frames = tuple(entry.waiting)
        entry.waiting.clear()
        entry.waiting_bytes = 0
        return Release(ifname, mac, frames)

    def confirm(self, ifname: str, address: IPAddress, now: float) -> None:
        """A solicited answer without a link-layer address (RFC 4861 §7.2.5): the MAC we
        have is right; an entry without one learns nothing."""
        key = (ifname, address)
        entry = self._used.get(key) or self._unused.get(key)
        if entry is None:
            return
        entry.expires = now + REACHABLE_TIME * (0.5 + self._random())
        entry.probes_sent = 0

    # ------------------------------------------------------------------ timers

    def next_timer(self) -> float | None:
        probes = self._probes
        while probes:
            deadline, _, entry = probes[0]
            if entry.probes_sent and entry.next_probe == deadline:
                return deadline
            probes.popleft()  # void
        return None

    def on_timer(self, now: float) -> tuple[list[Solicit], list[Unreachable]]:
        solicits: list[Solicit] = []
        failures: list[Unreachable] = []
        probes = self._probes
        while probes and probes[0][0] <= now:
            deadline, key, entry = probes.popleft()
            if not entry.probes_sent or entry.next_probe != deadline:
                continue  # void
            if entry.probes_sent >= MAX_PROBES:
                self._remove(key, entry)
                self.counters.neigh_res_failed += 1
                failures.append(Unreachable(key[0], key[1], len(entry.waiting)))
                continue
            entry.probes_sent += 1
            entry.next_probe = now + RETRANSMIT_INTERVAL
            probes.append((entry.next_probe, key, entry))
            solicits.append(Solicit(key[0], key[1], entry.mac))
        return solicits, failures

    # ------------------------------------------------------------------ internals

    def _start_probes(self, key: Key, entry: _Entry, now: float) -> None:
        entry.probes_sent = 1
        entry.next_probe = now + RETRANSMIT_INTERVAL
        self._probes.append((entry.next_probe, key, entry))
        if len(self._probes) > 4 * MAX_ENTRIES:  # mostly void items: drop them
            self._probes = deque(
                item for item in self._probes
                if item[2].probes_sent and item[2].next_probe == item[0]
            )  # fmt: skip

    def _queue(self, entry: _Entry, frame: bytes) -> None:
        waiting = entry.waiting
        while waiting and (
            len(waiting) >= MAX_QUEUED or entry.waiting_bytes + len(frame) > MAX_QUEUED_BYTES
        ):
            entry.waiting_bytes -= len(waiting.popleft())  # as Linux: the oldest goes
            self.counters.neigh_unres_discards += 1
        waiting.append(frame)
        entry.waiting_bytes += len(frame)

    def _remove(self, key: Key, entry: _Entry) -> None:
        for entries in (self._used, self._unused, self._incomplete):
            if entries.get(key) is entry:
                del entries[key]
        entry.probes_sent = 0  # voids its pending probe

    def _make_room(self, now: float) -> None:
        """Before a new entry: collect a few long-unused ones, then evict to stay within
        MAX_ENTRIES."""
        for entries in (self._unused, self._used):
            while entries and len(self) > GC_THRESHOLD:
                key, entry = next(iter(entries.items()))
                if entry.touched + GC_STALE_TIME > now:
                    break
                self._remove(key, entry)
                self.counters.neigh_expired += 1
        while len(self) >= MAX_ENTRIES:
            entries = self._unused or self._used or self._incomplete
            key, entry = next(iter(entries.items()))
            self._remove(key, entry)
            self.counters.neigh_evicted += 1
            self.counters.neigh_unres_discards += len(entry.waiting)
