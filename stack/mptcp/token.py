"""The token table: local token -> connection, the key to every MP_JOIN (RFC 8684 §3.2).

A token is reserved as soon as its key is chosen (before the handshake completes), so
two connections never share one, and released when the connection is gone. v0 and v1
connections share the table: a join carries only the token, not the hash that made it.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from stack.crypto import generate_key

Connection = TypeVar("Connection")


class TokenTable(Generic[Connection]):
    def __init__(self, capacity: int = 65536):
        self.capacity = capacity
        self._connections: dict[int, Connection | None] = {}

    def __len__(self) -> int:
        return len(self._connections)

    def new_key(self, version: int) -> tuple[int, int]:
        """A fresh (key, token) whose token is unique here; the token is reserved."""
        if len(self._connections) >= self.capacity:
            raise OverflowError(
                f"token table full ({self.capacity} connections): refuse new MPTCP connections"
            )
        key, token = generate_key(version, self._connections)
        self._connections[token] = None
        return key, token

    def bind(self, token: int, connection: Connection) -> None:
        if token not in self._connections:
            raise KeyError(f"token {token:#010x} was never reserved")
        self._connections[token] = connection

    def lookup(self, token: int) -> Connection | None:
        """The established connection holding `token`, or None (unknown or not yet bound)."""
        return self._connections.get(token)

    def release(self, token: int) -> None:
        self._connections.pop(token, None)

    def tokens(self) -> list[int]:
        return list(self._connections)
