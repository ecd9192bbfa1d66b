"""The catalogue: one module per area, one short function per case.

A case reads like a packetdrill script: send this, expect that within this deadline.
It is registered with `@case(...)`, which records its RFC section, requirement level,
versions, the IUT's role and the expected behaviour in one sentence:

    @case(section="3.1", level=MUST, role=LISTENER,
          expected="A v1 SYN with MP_CAPABLE gets a SYN/ACK with MP_CAPABLE v1 and Key-B.")
    def v1_syn_gets_v1_synack(ctx: Context) -> None:
        ctx.iut.listen(ctx.port)
        sf = tester_syn(ctx, MpCapable(version=1, flags=MPC_FLAG_H))  # MSS, then this
        synack = sf.expect("SA", MpCapable, within=1)
        ...

`versions=(0, 1)` makes one case serve RFC 6824 (v0) and RFC 8684 (v1): it runs in the
IUT's version (`ctx.version`; the kernel's is 1) and adapts to it through the shared
steps (`steps.py`), never by a copy of the case. `section` is then either one section
number for both RFCs or a mapping `{1: "3.7", 0: "3.6"}` where they differ; the report
cites both ("RFC 8684 §3.7, RFC 6824 §3.6 MUST").

The case id is `<module>.<function>`. `ipv6=True` registers the same function a second
time as `<module>.<function>_ipv6`, run with the tester speaking IPv6 (`ctx.tester`'s
default addresses are IPv6 ones) over the topology's IPv6 counterpart
(`IPV6_TOPOLOGY`); such a case takes its addresses from the tester, never spelt out.
`family=6` makes the case itself IPv6 only (on a dual-stack topology such as
`single_path`), with no IPv4 twin. A case ends with a verdict by returning (conforms)
or raising `deviates(...)` / `not_applicable(...)`; any other exception is a harness
fault (`error`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from conformance.iut.base import Iut
from conformance.model import RFC_OF_VERSION, Case, Level, Role
from conformance.tester import Tester

MUST, SHOULD, MAY = Level.MUST, Level.SHOULD, Level.MAY
LISTENER, INITIATOR = Role.LISTENER, Role.INITIATOR

AREAS = ("mp_capable", "token", "mp_join", "backup", "dss", "add_addr", "close")
PORT = 5001
# The topology an `_ipv6` variant runs on (dual-stack topologies serve both).
IPV6_TOPOLOGY = {"dual_homed": "dual_homed_ipv6"}

_REGISTRY: list[Case] = []


@dataclass
class Context:
    """What a case works with."""

    tester: Tester
    iut: Iut
    topo: Any
    version: int  # the MPTCP version this run of the case speaks (the IUT's, in the case's)
    port: int = PORT

    def iut_address(self, ifname: str = "eth0") -> str:
        """The IUT host's own address on `ifname`, in the family of the case."""
        return str(self.topo.hosts["server"].address(ifname, self.tester.family))


def case(
    *,
    section: str | Mapping[int, str],
    level: Level,
    role: Role,
    expected: str,
    versions: Iterable[int] = (1,),
    rfc: str | None = None,
    topology: str = "single_path",
    title: str | None = None,
    ipv6: bool = False,
    family: int = 4,
) -> Callable[[Callable[[Context], None]], Callable[[Context], None]]:
    def register(function: Callable[[Context], None]) -> Callable[[Context], None]:
        area = function.__module__.rsplit(".", 1)[-1]
        version_set = frozenset(versions)
        per_version = (
            {v: section for v in version_set} if isinstance(section, str) else dict(section)
        )
        if set(per_version) != version_set:
            raise ValueError(f"{function.__name__}: sections {per_version} for versions "
                             f"{sorted(version_set)}")  # fmt: skip
        primary = max(version_set)
        base = Case(
            id=f"{area}.{function.__name__}",
            area=area,
            title=title or function.__name__.replace("_", " "),
            rfc=rfc or RFC_OF_VERSION[primary],
            section=per_version[primary],
            sections=tuple(sorted(per_version.items(), reverse=True)),
            level=level,
            versions=version_set,
            role=role,
            expected=expected,
            run=function,
            topology=topology,
            family=family,
        )
        _REGISTRY.append(base)
        if ipv6:
            _REGISTRY.append(
                replace(
                    base,
                    id=f"{base.id}_ipv6",
                    title=f"{base.title} (IPv6)",
                    expected=f"Over IPv6: {expected[0].lower()}{expected[1:]}",
                    topology=IPV6_TOPOLOGY.get(topology, topology),
                    family=6,
                )
            )
        return function

    return register


def catalogue() -> list[Case]:
    """Every case, in area order then definition order."""
    for area in AREAS:
        importlib.import_module(f"conformance.cases.{area}")
    order = {area: i for i, area in enumerate(AREAS)}
    return sorted(_REGISTRY, key=lambda c: order.get(c.area, len(order)))


def by_id() -> dict[str, Case]:
    return {c.id: c for c in catalogue()}
