"""Neighbour resolution (ARP for IPv4, NDP for IPv6) as a sans-I/O state machine.

The host asks `lookup()` for a next hop's MAC. When it is unknown, the frame waits in a
small queue and the table asks for a solicitation to be sent; answers fill the cache.
After `MAX_PROBES` unanswered solicitations the waiting frames are dropped and the
failure is reported, so a dead peer costs bounded memory and never a hang.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

RETRANSMIT_INTERVAL = 1.0  # seconds between solicitations (RFC 4861 RetransTimer)
MAX_PROBES = 3  # RFC 4861 MAX_MULTICAST_SOLICIT
REACHABLE_TIME = 30.0  # then re-resolve
MAX_QUEUED = 64  # frames waiting for one neighbour


@dataclass
class _Entry:
    mac: bytes | None = None
    expires: float = 0.0
    probes_sent: int = 0
    next_probe: float = 0.0
    waiting: deque[bytes] = field(default_factory=deque)  # frames without Ethernet header


@dataclass(frozen=True)
class Solicit:
    """Send a solicitation for `address` out of `ifname`."""

    ifname: str
    address: IPAddress


@dataclass(frozen=True)
class Release:
    """These frames can now go to `mac` out of `ifname`."""

    ifname: str
    mac: bytes
    frames: tuple[bytes, ...]


@dataclass(frozen=True)
class Unreachable:
    ifname: str
    address: IPAddress
    dropped: int


class NeighbourTable:
    def __init__(self) -> None:
        self._entries: dict[tuple[str, IPAddress], _Entry] = {}

    def lookup(
        self, ifname: str, address: IPAddress, frame: bytes, now: float
    ) -> tuple[bytes | None, list[Solicit]]:
        """The MAC to send `frame` to, or None (the frame waits) plus solicitations to send."""
        entry = self._entries.get((ifname, address))
        if entry is not None and entry.mac is not None and now < entry.expires:
            return entry.mac, []
        if entry is None:
            entry = self._entries[(ifname, address)] = _Entry()
        if entry.mac is not None and now >= entry.expires:
            entry.mac = None  # stale: re-resolve, queueing meanwhile
        if len(entry.waiting) < MAX_QUEUED:
            entry.waiting.append(frame)
        if entry.probes_sent == 0:
            entry.probes_sent = 1
            entry.next_probe = now + RETRANSMIT_INTERVAL
            return None, [Solicit(ifname, address)]
        return None, []

    def learn(self, ifname: str, address: IPAddress, mac: bytes, now: float) -> Release | None:
        """A reply or a solicitation from `address` told us its MAC."""
        entry = self._entries.setdefault((ifname, address), _Entry())
        entry.mac = mac
        entry.expires = now + REACHABLE_TIME
        entry.probes_sent = 0
        if not entry.waiting:
            return None
        frames = tuple(entry.waiting)
        entry.waiting.clear()
        return Release(ifname, mac, frames)

    def next_timer(self) -> float | None:
        deadlines = [
            e.next_probe for e in self._entries.values() if e.probes_sent and e.mac is None
        ]
        return min(deadlines, default=None)

    def on_timer(self, now: float) -> tuple[list[Solicit], list[Unreachable]]:
        solicits, failures = [], []
        for (ifname, address), entry in list(self._entries.items()):
            if entry.mac is not None or not entry.probes_sent or now < entry.next_probe:
                continue
            if entry.probes_sent >= MAX_PROBES:
                failures.append(Unreachable(ifname, address, len(entry.waiting)))
                del self._entries[(ifname, address)]
                continue
            entry.probes_sent += 1
            entry.next_probe = now + RETRANSMIT_INTERVAL
            solicits.append(Solicit(ifname, address))
        return solicits, failures
