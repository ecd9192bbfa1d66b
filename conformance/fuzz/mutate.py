"""Deterministic mutations of one segment: MPTCP option fields, raw option bytes, TCP fields.

A `Mutation` is data (kind, target, op), chosen at generation time from the step's
option *template* (`seeds.TEMPLATES`), never from an IUT's answers, so that the same
seed gives the same mutations. It is applied when the segment is built, to the values
of that run (the IUT's key, sequence numbers), so that both IUTs get the same
transformation of their own exchange:

- `field`: one field of the MPTCP option set to an edge value (`EDGE_OPS`: zero, max,
  +1, -1, the top bit flipped, 2^32 added for 64-bit sequence numbers, each flag bit
  for narrow fields; HMACs zeroed or bit-flipped; addresses replaced);
- `subtype`, `length`: the option's subtype nibble or length byte rewritten (raw bytes);
- `truncate`: the option cut after `op` bytes at the very end of the 40-byte option
  space, its length byte unchanged;
- `drop`, `duplicate`: the option left out, or sent twice;
- `extra`: another MPTCP option (`EXTRAS`: every subtype, unknown ones included) added;
- `tcp`: a TCP header field (flags, seq, ack, window) changed.

Everything is encoded with the project's codec (`stack.wire`); raw bytes only where
the option is deliberately malformed.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from stack.wire.errors import EncodeError
from stack.wire.mptcp import (
    AddAddrV1,
    Dss,
    MpCapable,
    MpFail,
    MpFastclose,
    MpJoinAck,
    MpJoinSyn,
    MpJoinSynAck,
    MpPrio,
    MpTcpRst,
    RemoveAddr,
    UnknownMptcpOption,
)
from stack.wire.tcp import (
    ACK,
    FIN,
    MAX_OPTIONS_LENGTH,
    MPTCP_OPTION_TYPES,
    PSH,
    RST,
    SYN,
    URG,
    TcpOption,
)

KINDS = ("field", "subtype", "length", "truncate", "drop", "duplicate", "extra", "tcp")
KIND_WEIGHTS = (40, 10, 12, 8, 6, 6, 10, 8)

# Field widths in bits; `reserved` differs per option.
WIDTHS = {
    "version": 4,
    "flags": 8,
    "sender_key": 64,
    "receiver_key": 64,
    "data_level_length": 16,
    "checksum": 16,
    "address_id": 8,
    "token": 32,
    "nonce": 32,
    "subflow_seq": 32,
    "reason": 8,
    "port": 16,
    "dsn": 64,
    "data_ack": 64,
}
RESERVED_WIDTHS = {
    MpJoinSyn: 3,
    MpJoinSynAck: 3,
    MpJoinAck: 12,
    Dss: 7,
    AddAddrV1: 3,
    MpPrio: 3,
    MpFastclose: 12,
    MpFail: 12,
    RemoveAddr: 4,
}
BYTES_OPS = ("zero", "ones", "flip-first", "flip-last")
ADDRESS_OPS = ("0.0.0.0", "255.255.255.255", "192.0.2.1", "192.0.2.2", "127.0.0.1")
TCP_OPS = {
    "flags": tuple(f"xor:{m}" for m in (FIN, SYN, RST, PSH, ACK, URG)),
    "seq": ("+1", "-1", "+2^31"),
    "ack": ("+1", "-1", "+2^31"),
    "window": ("zero",),
}
# Options `extra` adds: every subtype, valid in form, fixed values (never a run's keys)
EXTRAS: dict[str, Any] = {
    "mp_capable": MpCapable(version=1),
    "mp_join_syn": MpJoinSyn(address_id=3, token=0x01020304, nonce=5),
    "dss_ack": Dss(data_ack=0, data_ack_64=True),
    "add_addr_echo": AddAddrV1(9, IPv4Address("198.51.100.9"), echo=True),
    "remove_addr": RemoveAddr((7,)),
    "mp_prio": MpPrio(backup=True),
    "mp_fail": MpFail(dsn=0),
    "mp_fastclose": MpFastclose(receiver_key=0),
    "mp_tcprst": MpTcpRst(reason=1),
    **{f"subtype_{s}": UnknownMptcpOption(s, bytes((30, 4, s << 4, 0))) for s in range(9, 16)},
}


@dataclass(frozen=True)
class Mutation:
    kind: str  # one of KINDS
    target: str = ""  # a field name, an EXTRAS name, a TCP header field
    op: str = ""  # an edge op or a number

    @property
    def label(self) -> str:
        """The mutation without its value: what a divergence class names."""
        return f"{self.kind}:{self.target}" if self.target else self.kind

    def __str__(self) -> str:
        return f"{self.label}={self.op}" if self.op else self.label


@dataclass
class Packet:
    """One segment the tester sends, before encoding."""

    flags: int
    seq: int
    ack: int
    options: list[TcpOption] = field(default_factory=list)
    payload: bytes = b""
    window: int = 64240
    raw_options: bytes | None = None  # the whole options area, when a mutation made it

    def options_area(self) -> bytes:
        """The options as sent: padded with NOPs to a multiple of 4, at most 40 bytes."""
        data = (
            self.raw_options
            if self.raw_options is not None
            else b"".join(o.emit() for o in self.options)
        )
        data = data[:MAX_OPTIONS_LENGTH]
        return data + b"\x01" * (-len(data) % 4)


# --------------------------------------------------------------------------- choosing


def mutable_fields(option: Any) -> list[str]:
    """The fields of `option` a `field` mutation may change (present, not None)."""
    names = []
    for f in dataclasses.fields(option):
        value = getattr(option, f.name)
        if value is None or f.name == "raw":
            continue
        plain = isinstance(value, bool | bytes | IPv4Address | IPv6Address)
        reserved = f.name == "reserved" and type(option) in RESERVED_WIDTHS
        if plain or reserved or f.name in WIDTHS or f.name == "address_ids":
            names.append(f.name)
    return names


def _width(option: Any, name: str) -> int:
    if name == "reserved":
        return RESERVED_WIDTHS[type(option)]
    if isinstance(option, Dss) and name in ("dsn", "data_ack"):
        return 64 if getattr(option, f"{name}_64" if name == "data_ack" else "dsn_64") else 32
    if isinstance(option, MpTcpRst) and name == "flags":
        return 4
    return WIDTHS[name]


def ops_for(option: Any, name: str) -> tuple[str, ...]:
    value = getattr(option, name)
    if isinstance(value, bool):
        return ("toggle",)
    if isinstance(value, bytes):
        return BYTES_OPS
    if isinstance(value, IPv4Address | IPv6Address):
        return ADDRESS_OPS
    if name == "address_ids":
        return ("zero", "max", "many")
    width = _width(option, name)
    ops = ["zero", "one", "max", "max-1", "+1", "-1", "top"]
    if width >= 32:
        ops.append("+2^31")
    if width == 64:
        ops += ["+2^32", "-2^32"]
    if width <= 8:
        ops += [f"xor:{1 << bit}" for bit in range(width)]
    return tuple(ops)


def choose(rng: random.Random, options: list[TcpOption]) -> Mutation:
    """A mutation of a segment whose options (the template) are `options`; only the
    random draws of `rng` decide, in a fixed order."""
    option = _mptcp(options)
    encoded = sum(len(o.emit()) for o in options)
    while True:
        kind = rng.choices(KINDS, KIND_WEIGHTS)[0]
        if kind == "tcp":
            target = rng.choice(sorted(TCP_OPS))
            return Mutation(kind, target, rng.choice(TCP_OPS[target]))
        if kind == "extra":
            name = rng.choice(sorted(EXTRAS))
            if encoded + len(EXTRAS[name].emit()) <= MAX_OPTIONS_LENGTH:
                return Mutation(kind, name)
            continue
        if option is None:
            continue
        length = len(option.emit())
        if kind == "field":
            name = rng.choice(mutable_fields(option))
            return Mutation(kind, name, rng.choice(ops_for(option, name)))
        if kind == "subtype":
            others = [s for s in range(16) if s != option.subtype]
            return Mutation(kind, "", str(rng.choice(others)))
        if kind == "length":
            choices = sorted({2, 3, length - 1, length + 1, length + 4, 40} - {length})
            return Mutation(kind, "", str(rng.choice([c for c in choices if c >= 0])))
        if kind == "truncate" and length >= 3:
            return Mutation(kind, "", str(rng.randint(2, length - 1)))
        if kind == "duplicate" and encoded + length <= MAX_OPTIONS_LENGTH:
            return Mutation(kind)
        if kind == "drop":
            return Mutation(kind)


# --------------------------------------------------------------------------- applying


def edge(op: str, value: int, width: int) -> int:
    """An edge value of a `width`-bit field from its current `value`."""
    top = 1 << width
    if op.startswith("xor:"):
        return value ^ int(op[4:])
    table = {
        "zero": 0,
        "one": 1,
        "max": top - 1,
        "max-1": top - 2,
        "+1": value + 1,
        "-1": value - 1,
        "top": value ^ (top >> 1),
        "+2^31": value + (1 << 31),
        "+2^32": value + (1 << 32),
        "-2^32": value - (1 << 32),
    }
    return table[op] % top


def _field_value(option: Any, name: str, op: str) -> Any:
    value = getattr(option, name)
    if isinstance(value, bool):
        return not value
    if isinstance(value, bytes):
        if op == "zero":
            return bytes(len(value))
        if op == "ones":
            return b"\xff" * len(value)
        at = 0 if op == "flip-first" else len(value) - 1
        return value[:at] + bytes((value[at] ^ 0x80,)) + value[at + 1 :]
    if isinstance(value, IPv4Address | IPv6Address):
        return IPv4Address(op)
    if name == "address_ids":
        return {"zero": (0,), "max": (255,), "many": tuple(range(1, 38))}[op]
    return edge(op, value, _width(option, name))


def _field_changes(option: Any, mutation: Mutation) -> dict[str, Any]:
    """The fields to replace; a flag that decides another field's form changes it too
    (a DSS a/m bit cleared keeps 32 bits of the value, an ADD_ADDR echo drops its HMAC)."""
    name = mutation.target
    value = _field_value(option, name, mutation.op)
    changes = {name: value}
    if isinstance(option, Dss) and name in ("data_ack_64", "dsn_64") and not value:
        wide = "data_ack" if name == "data_ack_64" else "dsn"
        changes[wide] = getattr(option, wide) & 0xFFFFFFFF
    if isinstance(option, AddAddrV1) and name == "echo":
        changes["hmac"] = None if value else bytes(8)
    return changes


def _mptcp(options: list[TcpOption]) -> Any:
    return next((o for o in options if isinstance(o, MPTCP_OPTION_TYPES)), None)


def apply(mutation: Mutation, packet: Packet) -> Packet:
    """`packet` with `mutation` applied (a new packet; `packet` is not changed). A mutation
    of an option the segment does not carry (the IUT fell back, say) leaves it as it is."""
    out = dataclasses.replace(packet, options=list(packet.options))
    kind = mutation.kind
    if kind == "tcp":
        _apply_tcp(out, mutation)
        return out
    if kind == "extra":
        out.options.append(EXTRAS[mutation.target])
        return out
    index = next((i for i, o in enumerate(out.options) if isinstance(o, MPTCP_OPTION_TYPES)), None)
    if index is None:
        return out
    option = out.options[index]
    if kind == "field":
        try:
            changed = dataclasses.replace(option, **_field_changes(option, mutation))
            changed.emit()
        except (EncodeError, KeyError, ValueError, TypeError):
            return out
        out.options[index] = changed
        return out
    if kind == "drop":
        del out.options[index]
        return out
    if kind == "duplicate":
        out.options.insert(index, option)
        return out
    before = b"".join(o.emit() for o in out.options[:index])
    after = b"".join(o.emit() for o in out.options[index + 1 :])
    raw = bytearray(option.emit())
    if kind == "subtype":
        raw[2] = (int(mutation.op) << 4) | (raw[2] & 0x0F)
    elif kind == "length":
        raw[1] = int(mutation.op)
    elif kind == "truncate":
        kept = raw[: int(mutation.op)]
        filler = MAX_OPTIONS_LENGTH - len(before) - len(after) - len(kept)
        out.raw_options = before + after + b"\x01" * max(filler, 0) + bytes(kept)
        return out
    out.raw_options = before + bytes(raw) + after
    return out


def _apply_tcp(packet: Packet, mutation: Mutation) -> None:
    op = mutation.op
    if mutation.target == "flags":
        packet.flags ^= int(op[4:])
    elif mutation.target == "window":
        packet.window = 0
    else:
        delta = {"+1": 1, "-1": -1, "+2^31": 1 << 31}[op]
        setattr(packet, mutation.target, (getattr(packet, mutation.target) + delta) & 0xFFFFFFFF)


def fuzzed(options: list[TcpOption], *mutations: Mutation) -> bytes:
    """The options area of a segment carrying `options`, with `mutations` applied: how
    a case skeleton sends a fuzzed segment (`Subflow.send(raw_options=...)`)."""
    packet = Packet(0, 0, 0, list(options))
    for mutation in mutations:
        packet = apply(mutation, packet)
    return packet.options_area()
