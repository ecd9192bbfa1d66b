"""What an IUT answered to one sequence, as a small outcome two IUTs can be compared on.

`Observed` is filled by the engine as segments arrive; `Observed.outcome()` reduces it
to an `Outcome`: whether the IUT reset a subflow (and which), the MP_TCPRST reasons it
gave, whether it fell back to TCP, whether the join was accepted, whether it echoed
the ADD_ADDR, which data it delivered (echoed back) and acknowledged at the data level,
and whether the connection was still usable (the closing probe was echoed).

A divergence is the set of fields where two outcomes differ; its class is the seed,
what was mutated (without values) and those differences (`class_id`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from conformance.fuzz.seeds import Sequence

ROLES = ("first", "join")


@dataclass(frozen=True)
class Outcome:
    reset: tuple[str, ...] = ()  # the subflows the IUT reset ("first", "join")
    tcprst: tuple[int, ...] = ()  # MP_TCPRST reasons on its RSTs
    fallback: bool = False  # a SYN/ACK without MP_CAPABLE, data without DSS, an infinite map
    joined: bool | None = None  # the join's SYN/ACK carried MP_JOIN (None: no join sent)
    add_addr_echo: bool | None = None  # it echoed the ADD_ADDR (None: none sent)
    delivered: tuple[str, ...] = ()  # data steps whose bytes came back (echoed)
    acked: tuple[str, ...] = ()  # data steps its DATA_ACK covers (before the probe)
    usable: bool | None = None  # the closing probe came back (None: no probe sent)

    def describe(self) -> str:
        return ", ".join(f"{f.name}={text(getattr(self, f.name))}" for f in fields(self))


def text(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "-"
    return str(value)


@dataclass
class Observed:
    """Filled while a sequence runs against one IUT."""

    reset: set[str] = field(default_factory=set)
    tcprst: set[int] = field(default_factory=set)
    fallback: bool = False
    join_answer: bool | None = None
    add_addr_sent: bool = False
    add_addr_echo: bool = False
    streams: dict[int, bytearray] = field(default_factory=lambda: {0: bytearray(), 1: bytearray()})
    data_steps: list[tuple[str, bytes, int]] = field(default_factory=list)  # name, payload, end
    data_ack: int | None = None  # the IUT's highest DATA_ACK, 64 bits
    probe: bytes | None = None
    acked_before_probe: int | None = None  # DATA_ACK when the probe went (it reuses DSNs)

    def came_back(self, data: bytes) -> bool:
        return any(data in stream for stream in self.streams.values())

    def outcome(self) -> Outcome:
        data_ack = self.data_ack if self.probe is None else self.acked_before_probe
        return Outcome(
            reset=tuple(r for r in ROLES if r in self.reset),
            tcprst=tuple(sorted(self.tcprst)),
            fallback=self.fallback,
            joined=self.join_answer,
            add_addr_echo=self.add_addr_echo if self.add_addr_sent else None,
            delivered=tuple(n for n, data, _ in self.data_steps if self.came_back(data)),
            acked=tuple(
                n
                for n, _, end in self.data_steps
                if data_ack is not None and (data_ack - end) % 2**64 < 2**63
            ),
            usable=None if self.probe is None else self.came_back(self.probe),
        )


Difference = tuple[tuple[str, str, str], ...]  # (field, first IUT's value, second's)


def diff(a: Outcome, b: Outcome) -> Difference:
    return tuple(
        (f.name, text(getattr(a, f.name)), text(getattr(b, f.name)))
        for f in fields(Outcome)
        if getattr(a, f.name) != getattr(b, f.name)
    )


def class_id(sequence: Sequence, difference: Difference) -> str:
    """`seed | mutated step.kind:target ... | field=first/second; ...`"""
    labels = " ".join(sequence.labels) or "unmutated"
    diffs = "; ".join(f"{name}={a}/{b}" for name, a, b in difference)
    return f"{sequence.seed} | {labels} | {diffs}"
