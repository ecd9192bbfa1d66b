from __future__ import annotations

import itertools

import pytest

from stack.crypto import key_token
from stack.mptcp.token import TokenTable


@pytest.mark.parametrize("version", [0, 1])
def test_tokens_are_unique_and_derived_from_the_key(version: int) -> None:
    table: TokenTable[str] = TokenTable()
    pairs = [table.new_key(version) for _ in range(500)]
    assert all(key_token(key, version) == token for key, token in pairs)
    assert len({token for _, token in pairs}) == 500


def test_a_colliding_key_is_regenerated() -> None:
    table: TokenTable[str] = TokenTable()
    first_key, first_token = table.new_key(1)
    keys = itertools.chain([first_key, first_key], itertools.count(12345))
    from stack.crypto import generate_key

    key, token = generate_key(1, table.tokens(), randbits=lambda _: next(keys))
    assert token != first_token and key == 12345


def test_lookup_bind_release_and_capacity() -> None:
    table: TokenTable[str] = TokenTable(capacity=2)
    _, token = table.new_key(1)
    assert table.lookup(token) is None  # reserved, not yet established
    table.bind(token, "conn")
    assert table.lookup(token) == "conn"
    table.new_key(0)
    with pytest.raises(OverflowError, match="token table full"):
        table.new_key(1)
    table.release(token)
    assert table.lookup(token) is None and len(table) == 1
    with pytest.raises(KeyError, match="never reserved"):
        table.bind(0xDEAD, "x")
