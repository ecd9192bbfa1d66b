"""MP_CAPABLE and MP_JOIN decisions, as pure functions of what was received and configured.

MP_CAPABLE (RFC 8684 §3.1, RFC 6824 §3.1)
- The initiator sends its highest version. v1 sends no key on the SYN; v0 sends Key-A.
- The listener answers with a version it supports that is <= the SYN's. A v1-only
  listener cannot speak v0 (it would need v0's checksums and SHA-1 tokens) and falls back
  (no MP_CAPABLE in the SYN/ACK), as Linux does. A v0-only listener facing a v1 SYN
  has no Key-A to work with and falls back too (RFC 8684 §3.1's caveat).
- A version above 1 on a SYN is answered with v1 (Linux accepts ≥ 1 on a SYN); on any
  later packet the version must match the negotiated one exactly.
- Checksums: used when either side sets A (v1: "if either host requires them"). In v0
  both sides set A (RFC 6824 §3.1: A SHOULD be set unless an administrator decided
  checksums are not needed), so v0 always uses them.
- B set on a v0 SYN: RFC 6824 §3.1 has "this SYN MUST be silently ignored" (the sender
  retries in the legacy format), so the listener drops it; RFC 8684 ignores only the
  option (fallback).
- A v1 initiator whose SYN/ACK comes back without MP_CAPABLE either falls back to TCP or
  retries the connection with a v0 SYN, by policy (`V0Policy`). A SYN/ACK whose
  MP_CAPABLE has B set or H clear counts as one without (the option is ignored).
- SYNs with MP_CAPABLE that go unanswered (a middlebox dropping unknown options): after
  `syn_retrans_before_fallback` retransmissions the SYN goes without MP_CAPABLE and the
  connection is plain TCP (RFC 8684 §3.1 "eventually fall back"; Linux's
  net.mptcp.syn_retrans_before_tcp_fallback, default 2).

MP_JOIN (RFC 8684 §3.2): HMACs over the connection's keys and the two nonces.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from stack import faults
from stack.crypto import generate_nonce, join_ack_hmac, join_synack_hmac
from stack.wire.mptcp import MPC_FLAG_A, MPC_FLAG_C, MPC_FLAG_H, MpCapable


class V0Policy(Enum):
    """What a v1 initiator does when the SYN/ACK carries no MP_CAPABLE."""

    FALLBACK = "fallback"  # continue as plain TCP (the RFC's default outcome)
    RETRY_V0 = "retry-v0"  # reset, and open again with a v0 SYN carrying Key-A


@dataclass(frozen=True)
class CapableConfig:
    versions: frozenset[int] = frozenset({1})
    want_checksum: bool = False
    v0_policy: V0Policy = V0Policy.FALLBACK
    # SYN + MP_CAPABLE retransmissions before a plain SYN (None: never drop MP_CAPABLE)
    syn_retrans_before_fallback: int | None = 2
    # net.mptcp.allow_join_initial_addr_port=0: C in every v1 MP_CAPABLE we send
    deny_join_initial: bool = False

    @property
    def highest(self) -> int:
        return max(self.versions)


@dataclass(frozen=True)
class ListenerDecision:
    """What to put in the SYN/ACK. `version` None: no MP_CAPABLE, plain TCP."""

    version: int | None
    checksum: bool = False
    remote_key: int | None = None  # v0: Key-A from the SYN
    reason: str = ""
    drop: bool = False  # no answer at all: the SYN is silently ignored


def _flags(version: int, checksum: bool, deny_join_initial: bool) -> int:
    """H, A when checksums are used, and C (v1 only: RFC 6824 has no C) when this host
    takes no joins at its initial address and port. Linux sets C in the SYN, the SYN/ACK
    and the third ACK alike (net.mptcp.allow_join_initial_addr_port=0, seen on the wire)."""
    flags = MPC_FLAG_H | (MPC_FLAG_A if checksum else 0)
    if deny_join_initial and version >= 1:
        flags |= MPC_FLAG_C
    return flags


def syn_option(config: CapableConfig, local_key: int, version: int | None = None) -> MpCapable:
    """The initiator's SYN option for `version` (default: the highest configured)."""
    version = config.highest if version is None else version
    flags = _flags(version, config.want_checksum or version == 0, config.deny_join_initial)
    if version == 0:
        return MpCapable(version=0, flags=flags, sender_key=local_key)
    return MpCapable(version=version, flags=flags)


def listener_decision(config: CapableConfig, syn: MpCapable) -> ListenerDecision:
    """How a listener answers a SYN's MP_CAPABLE."""
    if syn.extensibility and syn.version == 0 and 0 in config.versions:
        return ListenerDecision(None, reason="v0 SYN with B set: silently ignored", drop=True)
    if syn.extensibility and not (faults.ACTIVE and faults.on("mpc_accept_b_flag")):
        # B set: an extension this implementation does not know; RFC 8684 §3.1 says the
        # option must then be ignored, i.e. answered as plain TCP.
        return ListenerDecision(None, reason="B (extensibility) flag set: option ignored")
    if not syn.hmac_sha and not (faults.ACTIVE and faults.on("mpc_accept_no_h_flag")):
        return ListenerDecision(None, reason="no supported HMAC algorithm (H flag clear)")
    requested = syn.version
    if requested >= 1:
        if 1 not in config.versions:
            return ListenerDecision(None, reason="v1 SYN to a v0-only listener: no Key-A")
        checksum = bool(syn.flags & MPC_FLAG_A) or config.want_checksum
        if faults.ACTIVE and faults.on("mpc_ignore_a_flag"):
            checksum = config.want_checksum
        return ListenerDecision(1, checksum)
    if 0 not in config.versions:
        return ListenerDecision(None, reason="v0 SYN to a listener without v0")
    if syn.sender_key is None:
        return ListenerDecision(None, reason="v0 SYN without Key-A")
    # v0 (RFC 6824 §3.1): checksums are used unless both sides agree to drop them, and
    # A SHOULD be set: this listener asks for them, as its v0 SYN does.
    return ListenerDecision(0, True, remote_key=syn.sender_key)


def synack_option(
    decision: ListenerDecision, local_key: int, deny_join_initial: bool = False
) -> MpCapable:
    assert decision.version is not None
    flags = _flags(decision.version, decision.checksum, deny_join_initial)
    return MpCapable(version=decision.version, flags=flags, sender_key=local_key)


@dataclass(frozen=True)
class InitiatorOutcome:
    version: int | None  # None: the connection continues as plain TCP
    checksum: bool = False
    remote_key: int | None = None
    retry_v0: bool = False
    reason: str = ""


def initiator_outcome(
    config: CapableConfig, sent_version: int, synack: MpCapable | None
) -> InitiatorOutcome:
    """The initiator's reading of the SYN/ACK."""
    if synack is not None and (synack.extensibility or not synack.hmac_sha):
        # RFC 8684 §3.1: an MP_CAPABLE with B set that is not understood is "silently
        # ignored, which triggers a fallback to regular TCP", and one with no crypto
        # algorithm bit "MUST be treated as invalid and ignored" (RFC 6824 §3.1 too);
        # Linux drops such an option on any packet. Ignored here: plain TCP, no v0 retry.
        why = "B (extensibility) set" if synack.extensibility else "no crypto algorithm (H clear)"
        return InitiatorOutcome(None, reason=f"SYN/ACK MP_CAPABLE ignored, {why}: fall back")
    if synack is None:
        if sent_version >= 1 and 0 in config.versions and config.v0_policy is V0Policy.RETRY_V0:
            return InitiatorOutcome(None, retry_v0=True, reason="no MP_CAPABLE: retry with v0")
        return InitiatorOutcome(None, reason="SYN/ACK without MP_CAPABLE: fall back to TCP")
    version = synack.version
    if version > sent_version and faults.ACTIVE and faults.on("mpc_accept_higher_version"):
        version = sent_version  # taken as if it were our own version
    if version > sent_version or version not in config.versions:
        return InitiatorOutcome(
            None, reason=f"SYN/ACK offers version {synack.version} to our {sent_version}"
        )
    if synack.sender_key is None or synack.receiver_key is not None:
        return InitiatorOutcome(None, reason="SYN/ACK MP_CAPABLE without exactly Key-B")
    checksum = bool(synack.flags & MPC_FLAG_A) or config.want_checksum
    return InitiatorOutcome(version, checksum, remote_key=synack.sender_key)


def ack_option(
    version: int, checksum: bool, local_key: int, remote_key: int, deny_join_initial: bool = False
) -> MpCapable:
    """The third ACK's MP_CAPABLE: both keys (Key-A first)."""
    if faults.ACTIVE and faults.on("mpc_third_ack_keys_swapped"):
        local_key, remote_key = remote_key, local_key
    flags = _flags(version, checksum, deny_join_initial)
    return MpCapable(version=version, flags=flags, sender_key=local_key, receiver_key=remote_key)


def first_data_option(
    checksum_used: bool,
    local_key: int,
    remote_key: int,
    length: int,
    checksum: int | None,
    deny_join_initial: bool = False,
) -> MpCapable:
    """v1: the MP_CAPABLE the initiator repeats on its first data (RFC 8684 §3.1)."""
    flags = _flags(1, checksum_used, deny_join_initial)
    return MpCapable(
        version=1,
        flags=flags,
        sender_key=local_key,
        receiver_key=remote_key,
        data_level_length=length,
        checksum=checksum if checksum_used else None,
    )


@dataclass
class JoinCrypto:
    """One side of an MP_JOIN exchange: its nonce, and the HMACs it sends and expects."""

    version: int
    local_key: int
    remote_key: int
    local_nonce: int
    remote_nonce: int | None = None

    @classmethod
    def fresh(cls, version: int, local_key: int, remote_key: int) -> JoinCrypto:
        if faults.ACTIVE and faults.on("join_fixed_nonce"):
            return cls(version, local_key, remote_key, 0x5EED5EED)
        return cls(version, local_key, remote_key, generate_nonce())

    def synack_hmac(self) -> bytes:
        """What the responder (B) sends: leftmost 64 bits of HMAC-B."""
        assert self.remote_nonce is not None
        if faults.ACTIVE and faults.on("join_hmac_b_keys_swapped"):
            return self.expected_synack_hmac()
        return join_synack_hmac(
            self.version, self.local_key, self.remote_key, self.local_nonce, self.remote_nonce
        )

    def expected_synack_hmac(self) -> bytes:
        """What the initiator (A) expects from B."""
        assert self.remote_nonce is not None
        return join_synack_hmac(
            self.version, self.remote_key, self.local_key, self.remote_nonce, self.local_nonce
        )

    def ack_hmac(self) -> bytes:
        """What the initiator (A) sends: leftmost 160 bits of HMAC-A."""
        assert self.remote_nonce is not None
        if faults.ACTIVE and faults.on("join_hmac_a_keys_swapped"):
            return self.expected_ack_hmac()
        return join_ack_hmac(
            self.version, self.local_key, self.remote_key, self.local_nonce, self.remote_nonce
        )

    def expected_ack_hmac(self) -> bytes:
        """What the responder (B) expects from A."""
        assert self.remote_nonce is not None
        return join_ack_hmac(
            self.version, self.remote_key, self.local_key, self.remote_nonce, self.local_nonce
        )
