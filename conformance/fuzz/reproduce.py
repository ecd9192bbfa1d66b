"""Minimise a divergent sequence, and write it as a conformance case skeleton.

`minimise` drops one step (or, with more than one, one mutation) at a time, keeping a
removal when the reduced sequence still diverges with the same difference; all the
candidates of a round run at once. `skeleton` prints the minimal sequence as a case
in the style of `conformance/cases/*.py`: the tester's own steps where a step is not
mutated, `raw_options=fuzzed(...)` where it is (`mutate.fuzzed` applies the same
mutation to that run's values), and the two outcomes as the TODO of the verdict.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from conformance.fuzz.mutate import Mutation
from conformance.fuzz.observe import Difference, Outcome
from conformance.fuzz.seeds import STEPS, Sequence, payload
from stack.wire.tcp import ACK, FIN, PSH, RST, SYN

DifferencesOf = Callable[[list[Sequence]], list[Difference]]


def candidates(sequence: Sequence) -> list[Sequence]:
    """Every sequence one removal shorter: a step (a mutated one only while another
    mutation remains), or one of several mutations."""
    total = sum(len(s.mutations) for s in sequence.steps)
    out = [
        sequence.without_step(i)
        for i, step in enumerate(sequence.steps)
        if total > len(step.mutations)
    ]
    if total > 1:
        out += [
            sequence.without_mutation(i, j)
            for i, step in enumerate(sequence.steps)
            for j in range(len(step.mutations))
        ]
    return out


def minimise(
    sequence: Sequence, difference: Difference, differences_of: DifferencesOf, rounds: int = 30
) -> Sequence:
    """The shortest sequence found that still shows `difference` (greedy, one removal
    per round, the first candidate that keeps it)."""
    current = sequence
    for _ in range(rounds):
        options = candidates(current)
        if not options:
            break
        for candidate, found in zip(options, differences_of(options), strict=True):
            if found == difference:
                current = candidate
                break
        else:
            break
    return current


# --------------------------------------------------------------------------- skeleton

_OPTIONS = {
    "syn": "[t.mss(sf.local), MpCapable(version=1, flags=MPC_FLAG_H)]",
    "ack": "[MpCapable(1, MPC_FLAG_H, conn.local_key, conn.remote_key)]",
    "first_data": "[MpCapable(1, MPC_FLAG_H, conn.local_key, conn.remote_key, len(DATA))]",
    "data": "[conn.mapping(sf, DATA)]",
    "join_syn": "[t.mss(join.local), MpJoinSyn(address_id=1, token=conn.remote_token, "
    "nonce=join.local_nonce)]",
    "join_ack": "[MpJoinAck(hmac=t.join_ack_hmac(conn, join))]",
    "join_data": "[conn.mapping(join, DATA)]",
    "add_addr": "[AddAddrV1(9, ADDRESS, hmac=crypto.add_addr_hmac(conn.local_key, "
    "conn.remote_key, 9, ADDRESS, None))]",
    "mp_prio": "[MpPrio(backup=True)]",
    "fastclose": "[MpFastclose(receiver_key=conn.remote_key)]",
    "tcprst": "[MpTcpRst(reason=1)]",
    "probe": "[conn.mapping(sf, DATA)]",
}
_LETTERS = ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (ACK, "A"))


def _send(name: str, mutations: tuple[Mutation, ...], data: bytes | None) -> list[str]:
    """The lines that send step `name` with its mutations."""
    spec = STEPS[name]
    who = "join" if spec.subflow == 1 else "sf"
    flags = sum(bit for bit, letter in _LETTERS if letter in spec.flags)
    extra, notes = [], []
    raw = [m for m in mutations if m.kind != "tcp"]
    for m in mutations:
        if m.kind != "tcp":
            continue
        if m.target == "flags":
            flags ^= int(m.op[4:])
        elif m.target == "window":
            extra.append("window=0")
        else:
            delta = {"+1": "+ 1", "-1": "- 1", "+2^31": "+ 2**31"}[m.op]
            base = "snd_nxt" if m.target == "seq" else "rcv_nxt"
            extra.append(f"{m.target}=({who}.{base} {delta}) & 0xFFFFFFFF")
    letters = "".join(letter for bit, letter in _LETTERS if flags & bit) or "A"
    if flags & 0x20:
        notes.append("  # and URG: Subflow.send has no letter for it")
    lines = [] if data is None else [f"DATA = {data!r}"]
    if raw:
        args = ", ".join(f"Mutation({m.kind!r}, {m.target!r}, {m.op!r})" for m in raw)
        options = f"raw_options=fuzzed({_OPTIONS[name]}, {args})"
    else:
        options = _OPTIONS[name]
    call = [f'"{letters}"', options, *(["payload=DATA"] if data is not None else []), *extra]
    lines.append(f"{who}.send({', '.join(call)})" + "".join(notes))
    return lines


_FIRST = [
    "conn = t.connection(1)",
    "sf = t.subflow(ctx.port)",
    "sf.connection = conn",
    "conn.subflows.append(sf)",
]
_JOIN = ["join = t.subflow(ctx.port)", "join.connection = conn", "conn.subflows.append(join)"]


def _body(sequence: Sequence) -> list[str]:
    names = [s.name for s in sequence.steps]
    lines = ["ctx.iut.listen(ctx.port)", "t = ctx.tester"]
    if "syn" not in names:  # minimised away: the segments go to a connection never opened
        lines += _FIRST
    if "join_syn" not in names and any(STEPS[n].subflow == 1 for n in names):
        lines += _JOIN
    skip = set()
    for i, step in enumerate(sequence.steps):
        if i in skip:
            continue
        name, plain = step.name, not step.mutations
        following_plain = i + 1 < len(names) and not sequence.steps[i + 1].mutations
        data = payload(i, name) if STEPS[name].data else None
        if name == "syn" and plain and following_plain and names[i + 1] == "ack":
            lines.append("conn, sf = t.connect(ctx.port)")
            skip.add(i + 1)
            continue
        if name == "join_syn" and plain and following_plain and names[i + 1] == "join_ack":
            lines.append('join, _ = t.join(conn, ctx.port, ifname="eth0")')
            skip.add(i + 1)
            continue
        if name == "syn":
            lines += _FIRST
        if name == "join_syn":
            lines += [*_JOIN, f"join.local_nonce = {sequence.nonce:#x}"]
        if plain and name in ("first_data", "data", "join_data", "probe"):
            who = "join" if name == "join_data" else "sf"
            call = "first_data_v1" if name == "first_data" else "send_data"
            lines += [f"DATA = {data!r}", f"t.{call}(conn, {who}, DATA)"]
        else:
            lines += _send(name, step.mutations, data)
            if name == "first_data":  # conn.mapping() advances it for the others
                lines.append("conn.data_snd_nxt += len(DATA)")
        if name == "syn":
            lines += [
                'synack = sf.expect("SA", within=1)',
                "conn.learn_remote_key(synack.need(MpCapable).sender_key or 0)",
                "conn.start_data()",
            ]
        elif name == "join_syn":
            lines.append(
                'join.remote_nonce = join.expect("SA", MpJoinSynAck, within=1)'
                ".need(MpJoinSynAck).nonce"
            )
        elif name == "probe":
            lines.append('sf.expect(data=True, within=1, what="the probe echoed")')
    return lines


def skeleton(
    sequence: Sequence,
    outcomes: dict[str, Outcome],
    difference: Difference,
    sent: list[str],
    seed: int,
) -> str:
    """A conformance case skeleton reproducing `sequence` (see the module docstring)."""
    names = list(outcomes)
    digest = hashlib.sha1(sequence.describe().encode()).hexdigest()[:6]
    seen = "; ".join(f"{f}: {names[0]} {a}, {names[1]} {b}" for f, a, b in difference)
    head = [
        f"# Found by `python -m conformance fuzz --seed {seed}` (sequence {sequence.index}),",
        f"# minimised to: {sequence.describe()}",
        *(f"# {name}: {outcome.describe()}" for name, outcome in outcomes.items()),
        f"# The segments sent to {names[0]}:",
        *(f"#   {line}" for line in sent),
        "# Imports: from ipaddress import IPv4Address; from stack import crypto;",
        "# from conformance.fuzz.mutate import Mutation, fuzzed; ADDRESS =",
        '# IPv4Address("198.51.100.9"); and the options from stack.wire.mptcp.',
        "@case(",
        '    section="TODO",',
        "    level=MUST,  # TODO: what the RFC prescribes",
        "    role=LISTENER,",
        f'    expected="TODO: one sentence. Seen: {seen}.",',
        ")",
        f"def fuzz_{sequence.seed}_{digest}(ctx: Context) -> None:",
    ]
    body = [*_body(sequence), f"# TODO: the verdict; the IUTs differ in {seen}"]
    return "\n".join(head + [f"    {line}" for line in body]) + "\n"
