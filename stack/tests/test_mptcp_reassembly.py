from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from stack.mptcp.reassembly import DSN_MOD, DataReassembly, dsn_after


def test_in_order_out_of_order_and_duplicates() -> None:
    r = DataReassembly(1000, window=1 << 20)
    assert r.add(1005, b"fghij") == 0
    assert r.add(1000, b"abcde") == 10
    assert r.add(1002, b"cdefg") == 0  # a duplicate
    assert r.read() == b"abcdefghij"
    assert r.next_dsn == 1010
    assert r.duplicate_bytes == 5


def test_mappings_after_a_hole_are_held_as_one_chunk() -> None:
    """Mappings that follow one another past a hole extend one chunk (issue 11: fewer,
    larger buffers on the heap), across the 2^64 wrap too; the bytes come out whole."""
    start = DSN_MOD - 3000
    data = random.Random(5).randbytes(1400 * 40)
    r = DataReassembly(start, window=1 << 20)
    for k in range(1, 40):  # the first mapping is late
        assert r.add((start + 1400 * k) % DSN_MOD, data[1400 * k : 1400 * (k + 1)]) == 0
    assert len(r._chunks) == 1
    assert r.add(start, data[:1400]) == len(data)
    assert r.read() == data and not r._chunks


def test_beyond_the_window_is_dropped() -> None:
    r = DataReassembly(0, window=10)
    assert r.add(8, b"xxxxxx") == 0
    assert r.out_of_window_bytes == 4
    assert r.add(0, b"01234567") == 10
    assert r.read() == b"01234567xx"


def test_wraps_at_two_to_the_64() -> None:
    start = DSN_MOD - 3
    r = DataReassembly(start, window=100)
    assert r.add(0, b"def") == 0  # after the wrap
    assert r.add(start, b"abc") == 6
    assert r.read() == b"abcdef"
    assert r.next_dsn == 3
    assert dsn_after(2, DSN_MOD - 1)


@settings(deadline=None, max_examples=200)
@given(
    data=st.binary(min_size=1, max_size=4000),
    start=st.one_of(st.integers(0, DSN_MOD - 1), st.integers(DSN_MOD - 5000, DSN_MOD - 1)),
    seed=st.integers(0, 2**32),
)
def test_any_order_with_duplicates_yields_the_stream(data: bytes, start: int, seed: int) -> None:
    rng = random.Random(seed)
    pieces = []
    position = 0
    while position < len(data):
        size = rng.randint(1, 300)
        pieces.append((position, data[position : position + size]))
        position += size
    pieces += rng.sample(pieces, k=len(pieces) // 3)  # duplicates
    # Overlapping retransmissions of a different cut.
    for _ in range(3):
        a = rng.randrange(len(data))
        pieces.append((a, data[a : a + rng.randint(1, 500)]))
    rng.shuffle(pieces)
    r = DataReassembly(start, window=1 << 20)
    out = bytearray()
    for offset, chunk in pieces:
        r.add((start + offset) % DSN_MOD, chunk)
        out += r.read(rng.randint(0, 200))
    out += r.read()
    assert bytes(out) == data
    assert r.next_dsn == (start + len(data)) % DSN_MOD
