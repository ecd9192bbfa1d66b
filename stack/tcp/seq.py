"""Sequence-number arithmetic modulo 2**32 (RFC 9293 §3.4) and unwrapping.

The state machine keeps every sequence number *relative to its ISN* as an unbounded
Python int (the SYN is 0, the first data byte 1, as MPTCP's relative subflow sequence
numbers), so comparisons inside are plain `<`. Only the wire boundary works modulo 2**32:
`unwrap` turns a 32-bit field into the relative number nearest to a reference.
"""

from __future__ import annotations

SEQ_MOD = 1 << 32
SEQ_MASK = SEQ_MOD - 1
_HALF = 1 << 31


def seq_add(a: int, n: int) -> int:
    return (a + n) & SEQ_MASK


def seq_diff(a: int, b: int) -> int:
    """a - b as a signed 32-bit distance."""
    d = (a - b) & SEQ_MASK
    return d - SEQ_MOD if d >= _HALF else d


def seq_lt(a: int, b: int) -> bool:
    return seq_diff(a, b) < 0


def seq_leq(a: int, b: int) -> bool:
    return seq_diff(a, b) <= 0


def seq_gt(a: int, b: int) -> bool:
    return seq_diff(a, b) > 0


def seq_geq(a: int, b: int) -> bool:
    return seq_diff(a, b) >= 0


def unwrap(wire: int, isn: int, reference: int) -> int:
    """The relative sequence number (to `isn`) of 32-bit `wire` closest to relative `reference`."""
    return reference + seq_diff(wire - isn, reference)
