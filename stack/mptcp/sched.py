"""Packet schedulers: which subflow carries the next chunk of data.

Backup semantics (RFC 8684 §3.3.8, and the kernel's behaviour): a subflow is backup when
either side asked for it (our B bit / MP_PRIO, or the peer's). Backup subflows carry
data only when no regular subflow is usable. "Usable" is the subflow's own judgement:
established, not failed, not stale (RTO backoff past a threshold), with room in its
congestion window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class SchedulableSubflow(Protocol):
    @property
    def usable(self) -> bool: ...  # established, MP_JOIN fully done, not failed or stale

    @property
    def backup(self) -> bool: ...  # backup in either direction

    @property
    def srtt(self) -> float: ...  # seconds; 0 when unknown

    @property
    def send_space(self) -> int: ...  # bytes the congestion and peer windows allow now


def _candidates(subflows: Sequence[SchedulableSubflow]) -> list[SchedulableSubflow]:
    usable = [s for s in subflows if s.usable]
    regular = [s for s in usable if not s.backup]
    return regular or usable  # backups only when no regular subflow is usable


class LowestRttScheduler:
    """The default: the usable regular subflow with the lowest smoothed RTT and room."""

    name = "lowest-rtt"

    def select(self, subflows: Sequence[SchedulableSubflow]) -> list[SchedulableSubflow]:
        ready = [s for s in _candidates(subflows) if s.send_space > 0]
        if not ready:
            return []
        return [min(ready, key=lambda s: s.srtt)]


class RoundRobinScheduler:
    name = "round-robin"

    def __init__(self) -> None:
        self._turn = 0

    def select(self, subflows: Sequence[SchedulableSubflow]) -> list[SchedulableSubflow]:
        ready = [s for s in _candidates(subflows) if s.send_space > 0]
        if not ready:
            return []
        self._turn = (self._turn + 1) % len(ready)
        return [ready[self._turn]]


class RedundantScheduler:
    """Every chunk on every usable subflow of the chosen class (regular, else backup)."""

    name = "redundant"

    def select(self, subflows: Sequence[SchedulableSubflow]) -> list[SchedulableSubflow]:
        return [s for s in _candidates(subflows) if s.send_space > 0]


Scheduler = LowestRttScheduler | RoundRobinScheduler | RedundantScheduler
SCHEDULERS: dict[str, type[Scheduler]] = {
    "lowest-rtt": LowestRttScheduler,
    "round-robin": RoundRobinScheduler,
    "redundant": RedundantScheduler,
}


def make_scheduler(name: str) -> Scheduler:
    try:
        return SCHEDULERS[name]()
    except KeyError:
        raise ValueError(
            f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}"
        ) from None
