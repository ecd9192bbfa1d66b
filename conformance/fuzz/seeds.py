"""The base exchanges the fuzzer mutates, and the deterministic sequence generator.

Each seed is one of the catalogue's scripted exchanges as a list of steps; a step is
one segment the tester sends (built by `engine.Run` from what the IUT said so far), and
what the tester then waits for. Every seed ends with a `probe`: data at the IUT's own
expected sequence numbers (its TCP ACK and DATA_ACK), echoed if the connection is
still usable.

| seed | steps |
| --- | --- |
| handshake | SYN+MP_CAPABLE, ACK+MP_CAPABLE (keys), first data+MP_CAPABLE (v1) |
| data | + data with a DSS mapping |
| join | + join SYN, third ACK (HMAC-A), data on the join |
| add_addr | + ADD_ADDR with its HMAC (the IUT echoes it) |
| mp_prio | + MP_PRIO (backup), then data |
| fastclose | + MP_FASTCLOSE with the IUT's key (the IUT resets) |
| tcprst | + a join, then RST+MP_TCPRST on it |

Determinism: `generate(seed, index)` is a pure function of its arguments (one
`random.Random` seeded with both): the seed exchange, the mutated steps and mutations,
the tester's key, ISNs and nonce. The same `--seed` gives the same sequences.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from ipaddress import IPv4Address

from conformance.fuzz.mutate import Mutation, choose
from stack.wire.mptcp import (
    MPC_FLAG_H,
    AddAddrV1,
    Dss,
    MpCapable,
    MpFastclose,
    MpJoinAck,
    MpJoinSyn,
    MpPrio,
    MpTcpRst,
)
from stack.wire.tcp import MaxSegmentSize, TcpOption

MSS = MaxSegmentSize(1460)
ADD_ADDR_ID = 9
ADD_ADDR_ADDRESS = IPv4Address("198.51.100.9")  # TEST-NET-2: nobody there
_DSS = Dss(data_ack=1, data_ack_64=True, dsn=1, dsn_64=True, subflow_seq=1, data_level_length=1)


@dataclass(frozen=True)
class StepSpec:
    subflow: int  # 0: the first subflow, 1: the join
    flags: str  # the TCP flags (tcpdump letters), for descriptions and skeletons
    template: tuple[TcpOption, ...]  # the options' shape (the builder fills the values)
    data: bool = False  # carries a payload of its own


STEPS: dict[str, StepSpec] = {
    "syn": StepSpec(0, "S", (MSS, MpCapable(version=1, flags=MPC_FLAG_H))),
    "ack": StepSpec(0, "A", (MpCapable(1, MPC_FLAG_H, 1, 1),)),
    "first_data": StepSpec(0, "PA", (MpCapable(1, MPC_FLAG_H, 1, 1, 1),), data=True),
    "data": StepSpec(0, "PA", (_DSS,), data=True),
    "join_syn": StepSpec(1, "S", (MSS, MpJoinSyn(address_id=1, token=1, nonce=1))),
    "join_ack": StepSpec(1, "A", (MpJoinAck(hmac=bytes(20)),)),
    "join_data": StepSpec(1, "PA", (_DSS,), data=True),
    "add_addr": StepSpec(0, "A", (AddAddrV1(ADD_ADDR_ID, ADD_ADDR_ADDRESS, hmac=bytes(8)),)),
    "mp_prio": StepSpec(0, "A", (MpPrio(backup=True),)),
    "fastclose": StepSpec(0, "A", (MpFastclose(receiver_key=1),)),
    "tcprst": StepSpec(1, "RA", (MpTcpRst(reason=1),)),
    "probe": StepSpec(0, "PA", (_DSS,), data=True),
}

_HANDSHAKE = ("syn", "ack", "first_data")
_JOIN = ("join_syn", "join_ack")
SEEDS: dict[str, tuple[str, ...]] = {
    "handshake": (*_HANDSHAKE, "probe"),
    "data": (*_HANDSHAKE, "data", "probe"),
    "join": (*_HANDSHAKE, *_JOIN, "join_data", "probe"),
    "add_addr": (*_HANDSHAKE, "add_addr", "probe"),
    "mp_prio": (*_HANDSHAKE, "mp_prio", "data", "probe"),
    "fastclose": (*_HANDSHAKE, "fastclose", "probe"),
    "tcprst": (*_HANDSHAKE, *_JOIN, "tcprst", "probe"),
}


@dataclass(frozen=True)
class Step:
    name: str
    mutations: tuple[Mutation, ...] = ()

    @property
    def spec(self) -> StepSpec:
        return STEPS[self.name]


@dataclass(frozen=True)
class Sequence:
    """One segment sequence: a seed's steps, some mutated, and the tester's randomness."""

    seed: str
    index: int
    steps: tuple[Step, ...]
    key: int  # the tester's MPTCP key
    iss: tuple[int, int]  # the tester's ISN on the first subflow and on the join
    nonce: int  # R-A of the join

    @property
    def labels(self) -> tuple[str, ...]:
        """What was mutated, without values: part of a divergence class."""
        return tuple(sorted(f"{s.name}.{m.label}" for s in self.steps for m in s.mutations))

    def describe(self) -> str:
        parts = [s.name + "".join(f"[{m}]" for m in s.mutations) for s in self.steps]
        return f"{self.seed} #{self.index}: " + " ".join(parts)

    def without_step(self, at: int) -> Sequence:
        return replace(self, steps=self.steps[:at] + self.steps[at + 1 :])

    def without_mutation(self, at: int, which: int) -> Sequence:
        step = self.steps[at]
        kept = step.mutations[:which] + step.mutations[which + 1 :]
        return replace(
            self, steps=(*self.steps[:at], replace(step, mutations=kept), *self.steps[at + 1 :])
        )


def payload(step_index: int, name: str) -> bytes:
    """The data a step carries: unique within a sequence, the same for every IUT."""
    return f"<fuzz {step_index} {name}>".encode()


def _plain(seed: str, index: int, rng: random.Random) -> Sequence:
    return Sequence(
        seed=seed,
        index=index,
        steps=tuple(Step(name) for name in SEEDS[seed]),
        key=rng.getrandbits(64),
        iss=(rng.getrandbits(32), rng.getrandbits(32)),
        nonce=rng.getrandbits(32),
    )


def plain(seed: str, index: int = -1) -> Sequence:
    """A seed exchange without mutation (the liveness check's normal client)."""
    return _plain(seed, index, random.Random(f"plain/{seed}/{index}"))


def generate(seed: int, index: int, seeds: tuple[str, ...] = tuple(SEEDS)) -> Sequence:
    """Sequence number `index` of the run with `--seed seed` (see the module docstring)."""
    rng = random.Random(f"{seed}/{index}")
    base = _plain(rng.choice(seeds), index, rng)
    names = [s.name for s in base.steps]
    own = [i for i, n in enumerate(names) if n not in (*_HANDSHAKE, "probe")]
    anywhere = [i for i, n in enumerate(names) if n != "probe"]
    steps = list(base.steps)
    for _ in range(1 if rng.random() < 0.75 else 2):
        at = rng.choice(own if own and rng.random() < 0.6 else anywhere)
        mutation = choose(rng, list(STEPS[names[at]].template))
        steps[at] = replace(steps[at], mutations=(*steps[at].mutations, mutation))
    return replace(base, steps=tuple(steps))
