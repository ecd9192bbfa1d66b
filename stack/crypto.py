"""MPTCP cryptography: key -> token and IDSN, join and ADD_ADDR HMACs, DSS checksum.

v0 (RFC 6824) uses SHA-1 and HMAC-SHA1; v1 (RFC 8684) SHA-256 and HMAC-SHA256. Keys
are 64-bit and enter every hash big-endian, as on the wire (kernel: crypto.c).

Naming follows the kernel: the sender of a message calls its own key `local_key` and
the peer's `remote_key`. HMAC-A = HMAC(Key-A‖Key-B, R-A‖R-B) is what A sends on the
third ACK; HMAC-B = HMAC(Key-B‖Key-A, R-B‖R-A) what B sends on the SYN/ACK. So the
sender of either always computes HMAC(local_key‖remote_key, local_nonce‖remote_nonce),
and the receiver checks it with the roles swapped.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
import secrets
import struct
from collections.abc import Callable, Container
from ipaddress import IPv4Address, IPv6Address

from stack import faults
from stack.wire.errors import EncodeError

_QQ = struct.Struct("!QQ")
_II = struct.Struct("!II")
_Q = struct.Struct("!Q")
_DSS_PSEUDO = struct.Struct("!QIHH")


def _hash_name(version: int) -> str:
    if version == 0:
        return "sha1"
    if version == 1:
        return "sha256"
    raise ValueError(f"MPTCP version must be 0 or 1, got {version!r}")


def _key_bytes(key: int) -> bytes:
    try:
        return _Q.pack(key)
    except struct.error:
        raise EncodeError(f"an MPTCP key is 64 bits, got {key!r}") from None


def key_digest(key: int, version: int) -> bytes:
    """H(key): SHA-1 (v0) or SHA-256 (v1) of the 64-bit key, big-endian."""
    return hashlib.new(_hash_name(version), _key_bytes(key)).digest()


def key_token_idsn(key: int, version: int) -> tuple[int, int]:
    """(token, IDSN): the most significant 32 bits and the least significant 64 bits of H(key)."""
    digest = key_digest(key, version)
    if faults.ACTIVE:  # planted faults (stack/faults.py)
        token_digest = key_digest(key, 1 - version) if faults.on("token_wrong_hash") else digest
        idsn_bytes = digest[:8] if faults.on("idsn_wrong_bits") else digest[-8:]
        return int.from_bytes(token_digest[:4], "big"), int.from_bytes(idsn_bytes, "big")
    return int.from_bytes(digest[:4], "big"), int.from_bytes(digest[-8:], "big")


def key_token(key: int, version: int) -> int:
    return key_token_idsn(key, version)[0]


def key_idsn(key: int, version: int) -> int:
    return key_token_idsn(key, version)[1]


def hmac_sha(version: int, key1: int, key2: int, message: bytes) -> bytes:
    """The full HMAC with key = key1‖key2 (as the kernel's mptcp_crypto_hmac_sha)."""
    return _hmac.digest(_QQ.pack(key1, key2), message, _hash_name(version))


def join_hmac(
    version: int, local_key: int, remote_key: int, local_nonce: int, remote_nonce: int
) -> bytes:
    """The full join HMAC a sender computes: HMAC(local‖remote key, local‖remote nonce)."""
    try:
        message = _II.pack(local_nonce, remote_nonce)
        key = _QQ.pack(local_key, remote_key)
    except struct.error:
        raise EncodeError("join HMAC: keys are 64-bit and nonces 32-bit unsigned") from None
    return _hmac.digest(key, message, _hash_name(version))  # OpenSSL's one-shot: fast


def join_synack_hmac(
    version: int, local_key: int, remote_key: int, local_nonce: int, remote_nonce: int
) -> bytes:
    """The 8 bytes of MP_JOIN SYN/ACK: leftmost 64 bits of HMAC-B (B = the sender)."""
    return join_hmac(version, local_key, remote_key, local_nonce, remote_nonce)[:8]


def join_ack_hmac(
    version: int, local_key: int, remote_key: int, local_nonce: int, remote_nonce: int
) -> bytes:
    """The 20 bytes of MP_JOIN ACK: leftmost 160 bits of HMAC-A (A = the sender)."""
    return join_hmac(version, local_key, remote_key, local_nonce, remote_nonce)[:20]


def add_addr_hmac(
    sender_key: int,
    receiver_key: int,
    address_id: int,
    address: IPv4Address | IPv6Address | bytes,
    port: int | None,
) -> bytes:
    """The v1 ADD_ADDR HMAC: rightmost 64 bits of HMAC-SHA256(sender‖receiver key, msg).

    msg = address ID (1 byte) ‖ address (4 or 16 bytes) ‖ port (2 bytes, 0 when the
    option carries none). This is what Linux does today (add_addr_generate_hmac in
    net/mptcp/options.c). Earlier kernels differed: first the leftmost 64 bits, then
    bytes 12..19 of the digest (a SHA-1-sized length constant), and the port bytes were
    zero before ports were supported. See docs/wire.md.
    """
    raw = address.packed if isinstance(address, IPv4Address | IPv6Address) else bytes(address)
    if len(raw) not in (4, 16):
        raise EncodeError(f"ADD_ADDR HMAC: an address is 4 or 16 bytes, got {len(raw)}")
    if not 0 <= address_id <= 0xFF or not 0 <= (port or 0) <= 0xFFFF:
        raise EncodeError("ADD_ADDR HMAC: address ID is 8 bits and port 16 bits")
    message = bytes((address_id,)) + raw + (port or 0).to_bytes(2, "big")
    return hmac_sha(1, sender_key, receiver_key, message)[-8:]


def _fold(total: int) -> int:
    """One's-complement sum of 16-bit words from their big-endian concatenation value."""
    s = total % 0xFFFF  # 2**16 == 1 (mod 0xFFFF), so the words' sum and the value agree
    return 0xFFFF if s == 0 and total else s


def dss_checksum(dsn: int, subflow_seq: int, data_level_length: int, payload: bytes) -> int:
    """The DSS checksum of RFC 6824/8684 §3.3 over the pseudo-header and the payload.

    The pseudo-header is the 64-bit DSN (always 64 bits, even when the option carries
    only 32), the 32-bit relative subflow sequence number, the 16-bit data-level length
    and a 16-bit zero checksum.
    """
    pseudo = _DSS_PSEUDO.pack(dsn, subflow_seq, data_level_length, 0)
    value = int.from_bytes(payload, "big")
    if len(payload) & 1:
        value <<= 8
    return ~_fold(int.from_bytes(pseudo, "big") + value) & 0xFFFF


def dss_checksum_ok(
    dsn: int, subflow_seq: int, data_level_length: int, checksum: int, payload: bytes
) -> bool:
    return dss_checksum(dsn, subflow_seq, data_level_length, payload) == checksum


def generate_key(
    version: int,
    existing_tokens: Container[int] = frozenset(),
    *,
    randbits: Callable[[int], int] = secrets.randbits,
) -> tuple[int, int]:
    """A random 64-bit key whose token is not in `existing_tokens`: (key, token).

    RFC 8684 §3.1: a host generating a key whose token is already in use locally must
    generate a new key. `randbits` is injectable for deterministic tests.
    """
    while True:
        key = randbits(64)
        token = key_token(key, version)
        if token not in existing_tokens:
            return key, token


def generate_nonce(*, randbits: Callable[[int], int] = secrets.randbits) -> int:
    """A random 32-bit MP_JOIN nonce."""
    return randbits(32)
