"""Errors of the wire codecs, and the typed values that stand for malformed input.

Parsing never raises: garbage on the wire becomes a `MalformedOption` or a
`MalformedHeader` value that says where and why. Emitting a value that cannot be
encoded raises `EncodeError`, because that is a bug in the caller, not an event on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass


class WireError(Exception):
    """Base of every exception raised by `stack.wire`."""


class EncodeError(WireError, ValueError):
    """A value cannot be put on the wire (a field out of range, a missing field, ...)."""


@dataclass(frozen=True, slots=True)
class MalformedOption:
    """A TCP option (MPTCP or other) that could not be parsed.

    `offset` is the byte offset of the option within the TCP options area, `subtype`
    the MPTCP subtype where one was read (None otherwise), `raw` the bytes that were
    rejected (the whole option, or everything left when the option list is truncated),
    `kind` the TCP option kind (None when not even that byte was there).
    """

    offset: int
    reason: str
    subtype: int | None
    raw: bytes
    kind: int | None = 30

    def emit(self) -> bytes:
        """The bytes as they were seen, so an option list re-emits unchanged."""
        return self.raw


@dataclass(frozen=True, slots=True)
class MalformedHeader:
    """A header (Ethernet, ARP, IPv4, IPv6, TCP, ICMPv6) that could not be parsed."""

    layer: str
    offset: int
    reason: str
