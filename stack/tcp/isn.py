"""Initial sequence numbers as RFC 6528: ISN = M + F(4-tuple, secret).

M is a 4-microsecond clock taken from the `now` the caller passes (never read here); F is
a keyed hash of the connection identifiers, so an off-path attacker cannot guess it.
"""

from __future__ import annotations

import hashlib
import struct

from stack.tcp.seq import SEQ_MASK

_PORT = struct.Struct("!H")


def _f(local: tuple[object, int], remote: tuple[object, int], secret: bytes) -> int:
    material = b"|".join((_bytes(local[0]), _PORT.pack(local[1]), _bytes(remote[0]),
                          _PORT.pack(remote[1])))  # fmt: skip
    digest = hashlib.blake2s(material, key=secret[:32] or b"\0").digest()
    return int.from_bytes(digest[:4], "big")


def _bytes(address: object) -> bytes:
    packed = getattr(address, "packed", None)  # an ipaddress object: no text formatting
    return packed if isinstance(packed, bytes) else str(address).encode()


def initial_sequence_number(
    local: tuple[object, int], remote: tuple[object, int], secret: bytes, now: float
) -> int:
    m = int(now * 250_000)  # RFC 6528 §3: a timer that ticks every 4 microseconds
    return (m + _f(local, remote, secret)) & SEQ_MASK


def timestamp_offset(local: tuple[object, int], remote: tuple[object, int], secret: bytes) -> int:
    """A per-connection random TSval offset (RFC 7323 §5.4) from the same keyed hash."""
    return _f(remote, local, secret)
