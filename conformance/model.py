"""What a conformance case is, and what running one yields.

A case carries its RFC section, requirement level, the protocol versions it applies to,
the IUT's role and a one-sentence expected behaviour. Running it against one IUT yields
a Result with one of four verdicts; `error` is a harness fault and is never hidden.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

RFC_OF_VERSION = {0: "RFC 6824", 1: "RFC 8684"}


class Verdict(Enum):
    CONFORMS = "conforms"
    DEVIATES = "deviates"
    NOT_APPLICABLE = "not-applicable"
    ERROR = "error"


class Level(Enum):
    MUST = "MUST"
    SHOULD = "SHOULD"
    MAY = "MAY"


class Role(Enum):
    LISTENER = "listener"  # the IUT accepts the connection the tester opens
    INITIATOR = "initiator"  # the IUT opens the connection to the tester


class Outcome(Exception):
    """Raised inside a case to end it with a verdict (see `deviates`, `not_applicable`)."""

    def __init__(self, verdict: Verdict, detail: str):
        super().__init__(detail)
        self.verdict = verdict
        self.detail = detail


def deviates(detail: str) -> Outcome:
    """`raise deviates("saw X instead of Y")` ends a case: the IUT broke the rule."""
    return Outcome(Verdict.DEVIATES, detail)


def not_applicable(detail: str) -> Outcome:
    """`raise not_applicable("why")` ends a case that does not apply to this IUT."""
    return Outcome(Verdict.NOT_APPLICABLE, detail)


@dataclass(frozen=True)
class Case:
    id: str  # e.g. "mp_join.bad_hmac_in_ack"
    area: str  # mp_capable, token, mp_join, backup, dss, add_addr, close
    title: str
    rfc: str  # "RFC 8684"
    section: str  # "3.2"
    level: Level
    versions: frozenset[int]  # {0}, {1} or {0, 1}
    role: Role
    expected: str  # one sentence
    run: Callable[..., None] = field(compare=False, repr=False)
    topology: str = "single_path"
    family: int = 4  # the IP version the tester speaks (an `_ipv6` variant: 6)
    # (version, section) per MPTCP version the case applies to, highest version first:
    # a case serving v0 and v1 cites RFC 8684 and RFC 6824, whose sections may differ
    # (fallback is §3.7 in RFC 8684, §3.6 in RFC 6824). Empty: `rfc` and `section` alone.
    sections: tuple[tuple[int, str], ...] = ()

    def citation(self, version: int | None = None) -> str:
        """ "RFC 6824 §3.6" for v0, "RFC 8684 §3.7" for v1; default: the primary one."""
        for v, section in self.sections:
            if version is None or v == version:
                return f"{RFC_OF_VERSION[v]} §{section}"
        return f"{self.rfc} §{self.section}"

    @property
    def reference(self) -> str:
        """Every citation and the level: "RFC 8684 §3.7, RFC 6824 §3.6 MUST"."""
        cited = [self.citation(v) for v, _ in self.sections] or [self.citation()]
        return f"{', '.join(cited)} {self.level.value}"


@dataclass
class Result:
    case_id: str
    iut: str
    verdict: Verdict
    detail: str = ""
    duration_s: float = 0.0
    counters: dict[str, int] = field(default_factory=dict)  # kernel MIB counters that moved
    artifacts: list[str] = field(default_factory=list)  # pcap and ladder files

    def to_json(self) -> dict[str, Any]:
        return {
            "case": self.case_id,
            "iut": self.iut,
            "verdict": self.verdict.value,
            "detail": self.detail,
            "duration_s": round(self.duration_s, 4),
            "counters": self.counters,
            "artifacts": self.artifacts,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Result:
        return cls(
            case_id=data["case"],
            iut=data["iut"],
            verdict=Verdict(data["verdict"]),
            detail=data.get("detail", ""),
            duration_s=data.get("duration_s", 0.0),
            counters=data.get("counters", {}),
            artifacts=data.get("artifacts", []),
        )
