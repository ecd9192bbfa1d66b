"""The path manager: a kernel-like endpoint model, as sans-I/O decisions per connection.

Endpoints carry the kernel's flags:
- signal: announce the address to the peer (ADD_ADDR) once the connection is up;
- subflow: open a subflow from the address to the peer's initial address, and to each
  address the peer announces that we accept;
- backup: subflows from the address ask to be backup (B bit in MP_JOIN, MP_PRIO);
- fullmesh: like subflow, and the initial local address also joins every accepted
  announcement, so every local address meets every peer address.
Limits, as the kernel's: `subflows` bounds the additional subflows of a connection
(created or accepted; the initial one does not count), `add_addr_accepted` bounds the
peer announcements we act on. An ADD_ADDR is echoed whether or not it is accepted.
A subflow whose endpoint or peer address goes away is re-established when it returns.

Re-joining. A subflow we opened that fails for a transient cause (retransmissions
exhausted, a plain RST, an MP_TCPRST with the T flag: RFC 8684 §3.6 lets the receiver
"try to reestablish a subflow for this connection over the failed path") is opened
again after REJOIN_FIRST seconds, doubling up to REJOIN_MAX, at most REJOIN_ATTEMPTS
times in a row. A permanent failure (MP_TCPRST without T, or our own reset) waits, as
does one out of attempts, until its address returns: its link comes back up
(`address_returned`), its endpoint is added again, or the peer announces its address
again. If the connection's first subflow fails, the initiator joins that path again
(as address ID 0). The kernel's in-kernel path manager leaves all of this to a
userspace daemon (mptcpd); we do it ourselves.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

FLAG_NAMES = ("signal", "subflow", "backup", "fullmesh")


class PathManagerError(ValueError):
    """A configuration the path manager cannot honour; the message names it."""


@dataclass(frozen=True)
class Endpoint:
    id: int  # address ID, 1..255 (0 is the initial subflow's)
    address: IPAddress
    ifname: str = ""
    signal: bool = False
    subflow: bool = False
    backup: bool = False
    fullmesh: bool = False
    port: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.id <= 255:
            raise PathManagerError(f"endpoint {self.address}: address ID {self.id} not in 1..255")
        if self.port is not None and not (1 <= self.port <= 65535 and self.signal):
            raise PathManagerError(
                f"endpoint {self.address}: port {self.port} needs the signal flag and 1..65535 "
                "(as the kernel: a port is announced, so only a signal endpoint has one)"
            )
        if self.fullmesh and self.signal:
            raise PathManagerError(
                f"endpoint {self.address}: fullmesh cannot be combined with signal "
                "(as with the kernel's in-kernel path manager)"
            )

    @property
    def flags(self) -> frozenset[str]:
        return frozenset(name for name in FLAG_NAMES if getattr(self, name))


@dataclass(frozen=True)
class Limits:
    subflows: int = 2  # the kernel's defaults
    add_addr_accepted: int = 0

    def __post_init__(self) -> None:
        for name in ("subflows", "add_addr_accepted"):
            value = getattr(self, name)
            if not 0 <= value <= 8:
                raise PathManagerError(f"limit {name}={value} not in 0..8 (the kernel's range)")


@dataclass(frozen=True)
class PeerAddress:
    id: int
    address: IPAddress
    port: int | None  # None: the connection's port


@dataclass(frozen=True)
class OpenSubflow:
    local: Endpoint
    remote: PeerAddress
    backup: bool

    @property
    def key(self) -> tuple[IPAddress, IPAddress, int | None]:
        return (self.local.address, self.remote.address, self.remote.port)


@dataclass(frozen=True)
class Announce:
    endpoint: Endpoint


Action = OpenSubflow | Announce
PathKey = tuple[IPAddress, IPAddress, int | None]  # local, peer address, peer port

REJOIN_FIRST = 1.0  # s before the first new attempt after a transient failure
REJOIN_MAX = 30.0  # s: the longest wait between attempts
REJOIN_ATTEMPTS = 6  # failures in a row before waiting for the address to return


@dataclass
class Rejoin:
    """A failed path waiting to be joined again: at `due`, or (None) when it returns."""

    failures: int
    due: float | None
    trying: bool = False  # its attempt is under way (or about to be)


@dataclass
class ConnectionPaths:
    """Path-manager state of one connection."""

    manager: PathManager
    initial_local: IPAddress
    initial_remote: PeerAddress
    remote: dict[int, PeerAddress] = field(default_factory=dict)  # accepted announcements
    subflows: set[tuple[IPAddress, IPAddress, int | None]] = field(default_factory=set)
    extra_subflows: int = 0
    accepted_add_addrs: int = 0
    announced: set[int] = field(default_factory=set)
    established: bool = False
    # False when the peer set the C flag (RFC 8684 §3.1): its initial address takes no joins
    initial_remote_joinable: bool = True
    rejoin: dict[PathKey, Rejoin] = field(default_factory=dict)  # failed paths
    initial_failed: bool = False  # our first subflow failed: join its path again

    @property
    def initial_key(self) -> PathKey:
        return (self.initial_local, self.initial_remote.address, self.initial_remote.port)

    def on_established(self) -> list[Action]:
        """The connection is fully established: announce and open subflows."""
        self.established = True
        actions: list[Action] = []
        for endpoint in self.manager.endpoints:
            if endpoint.signal and endpoint.id not in self.announced:
                self.announced.add(endpoint.id)
                actions.append(Announce(endpoint))
        actions += self._new_subflows()
        return actions

    def on_endpoint_added(self, endpoint: Endpoint) -> list[Action]:
        """An endpoint added while the connection lives (the manager already lists it)."""
        if not self.established:
            return []  # on_established will see it
        actions: list[Action] = []
        if endpoint.signal:  # even an ID announced before: that address was removed since
            self.announced.add(endpoint.id)
            actions.append(Announce(endpoint))
        self._forget_failures(local=endpoint.address)  # the address is back: start afresh
        return actions + self._new_subflows()

    def on_add_addr(self, announced: PeerAddress) -> list[Action]:
        # No echo here: the connection echoes every valid announcement itself (RFC 8684
        # §3.4.1), whatever the endpoints and limits; this only decides about subflows.
        actions: list[Action] = []
        if announced.id in self.remote or (
            announced.address == self.initial_remote.address
            and (announced.port in (None, self.initial_remote.port))
        ):
            return actions  # a retransmission, or our initial peer address
        self._forget_failures(remote=announced.address)
        if self.accepted_add_addrs >= self.manager.limits.add_addr_accepted:
            return actions
        self.accepted_add_addrs += 1
        self.remote[announced.id] = announced
        if self.established:
            actions += self._new_subflows()
        return actions

    def on_remove_addr(self, ids: list[int]) -> list[tuple[IPAddress, int | None]]:
        """Forget announced addresses; returns the peer addresses whose subflows must close."""
        gone = []
        for address_id in ids:
            peer = self.remote.pop(address_id, None)
            if peer is not None:
                gone.append((peer.address, peer.port))
                # as the kernel: the slot is free again, so a new announcement is taken
                self.accepted_add_addrs = max(0, self.accepted_add_addrs - 1)
                self._forget_failures(remote=peer.address)
        return gone

    def join_fits(self) -> bool:
        """Whether one more subflow from the peer fits the limit now (nothing counted:
        a join counts once it completes, so a half-done join holds no slot)."""
        return self.extra_subflows < self.manager.limits.subflows

    def accept_join(self) -> bool:
        """Whether a join from the peer fits within the subflow limit (else reason 3)."""
        if self.extra_subflows >= self.manager.limits.subflows:
            return False
        self.extra_subflows += 1
        return True

    def join_closed(self) -> None:
        """A subflow the peer joined is gone: it no longer counts against the limit."""
        self.extra_subflows = max(0, self.extra_subflows - 1)

    def subflow_closed(self, key: PathKey) -> None:
        """A subflow we opened is gone (closed in order, or removed): its slot is free."""
        if key in self.subflows:
            self.subflows.discard(key)
            self.extra_subflows = max(0, self.extra_subflows - 1)

    def subflow_up(self, key: PathKey) -> None:
        """A subflow we opened works: its path's failures are forgotten."""
        self.rejoin.pop(key, None)

    def subflow_failed(self, key: PathKey, now: float, *, transient: bool) -> None:
        """A subflow we opened failed: schedule its path's next attempt (module doc)."""
        self.subflow_closed(key)
        if key == self.initial_key:
            self.initial_failed = True
        entry = self.rejoin.get(key) or Rejoin(0, None)
        entry.failures += 1
        entry.trying = False
        if transient and entry.failures <= REJOIN_ATTEMPTS:
            entry.due = now + min(REJOIN_FIRST * 2 ** (entry.failures - 1), REJOIN_MAX)
        else:
            entry.due = None
        self.rejoin[key] = entry

    def next_rejoin(self) -> float | None:
        times = [e.due for e in self.rejoin.values() if e.due is not None and not e.trying]
        return min(times) if times else None

    def rejoin_due(self, now: float) -> list[Action]:
        """The attempts due by `now`."""
        due = False
        for entry in self.rejoin.values():
            if entry.due is not None and entry.due <= now and not entry.trying:
                entry.trying = due = True
        return self._new_subflows() if due and self.established else []

    def address_returned(self, local: IPAddress) -> list[Action]:
        """A local address is usable again (its link came up): its failed paths are
        tried at once, however many attempts they have had."""
        returned = False
        for key, entry in self.rejoin.items():
            if key[0] == local:
                entry.failures, entry.due, entry.trying = 0, None, True
                returned = True
        return self._new_subflows() if returned and self.established else []

    def retry(self) -> list[Action]:
        """Open whatever the endpoints call for and is missing, except failed paths that
        still wait for their next attempt."""
        return self._new_subflows() if self.established else []

    def _forget_failures(self, *, local: IPAddress | None = None,
                         remote: IPAddress | None = None) -> None:  # fmt: skip
        for key in [k for k in self.rejoin if k[0] == local or k[1] == remote]:
            del self.rejoin[key]

    def _waiting(self, key: PathKey) -> bool:
        entry = self.rejoin.get(key)
        return entry is not None and not entry.trying

    def _new_subflows(self) -> list[Action]:
        peers = [self.initial_remote] if self.initial_remote_joinable else []
        peers += self.remote.values()
        sources = [e for e in self.manager.endpoints if e.subflow or e.fullmesh]
        if (
            any(e.fullmesh for e in sources)
            and self.manager.endpoint_for(self.initial_local) is None
        ):
            # fullmesh: the initial local address joins announced peers too.
            sources.append(Endpoint(255, self.initial_local, fullmesh=True))
        actions: list[Action] = []
        key = self.initial_key
        if (
            self.initial_failed
            and self.initial_remote_joinable
            and key not in self.subflows
            and not self._waiting(key)
            and self.extra_subflows < self.manager.limits.subflows
        ):
            # the first path again, as a join from address ID 0 (RFC 8684 §3.2)
            local = self.manager.endpoint_for(self.initial_local) or Endpoint(
                255, self.initial_local
            )
            self.subflows.add(key)
            self.extra_subflows += 1
            actions.append(OpenSubflow(local, self.initial_remote, local.backup))
        if not sources:
            # As the kernel: with no subflow endpoint, an accepted announcement gets one
            # subflow, from the address routing picks for it (the initial one if none).
            for peer in peers:
                if peer == self.initial_remote:
                    continue
                address = self.manager.source_for(peer.address) or self.initial_local
                local = self.manager.endpoint_for(address) or Endpoint(255, address)
                key = (local.address, peer.address, peer.port)
                if (
                    key in self.subflows
                    or self._waiting(key)
                    or self.extra_subflows >= self.manager.limits.subflows
                ):
                    continue
                self.subflows.add(key)
                self.extra_subflows += 1
                actions.append(OpenSubflow(local, peer, local.backup))
            return actions
        for local in sources:
            for peer in peers:
                if peer.address.version != local.address.version:
                    continue
                if local.address == self.initial_local and peer == self.initial_remote:
                    continue  # that is the initial subflow
                key = (local.address, peer.address, peer.port)
                if key in self.subflows or self._waiting(key):
                    continue
                if self.extra_subflows >= self.manager.limits.subflows:
                    return actions
                self.subflows.add(key)
                self.extra_subflows += 1
                actions.append(OpenSubflow(local, peer, local.backup))
        return actions


class PathManager:
    def __init__(self, endpoints: list[Endpoint], limits: Limits | None = None):
        ids = [e.id for e in endpoints]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise PathManagerError(f"address IDs used twice: {duplicates}")
        addresses = [e.address for e in endpoints]
        if len(set(addresses)) != len(addresses):
            raise PathManagerError("an address is given as two endpoints")
        self.endpoints = list(endpoints)
        self.limits = limits or Limits()
        # the host's routing: which local address reaches a peer address (None: unknown)
        self.route_source: Callable[[IPAddress], IPAddress | None] | None = None

    def source_for(self, address: IPAddress) -> IPAddress | None:
        return self.route_source(address) if self.route_source is not None else None

    def add(self, endpoint: Endpoint) -> None:
        """A new endpoint (as `ip mptcp endpoint add`); IDs and addresses stay unique. An
        address whose endpoint has no flags (only an ID for joins to it) takes the new one."""
        plain = [e for e in self.endpoints
                 if e.address == endpoint.address and not e.flags and e.port is None]  # fmt: skip
        for other in self.endpoints:
            if other in plain:
                continue
            if other.address == endpoint.address:
                raise PathManagerError(f"{endpoint.address} is already endpoint ID {other.id}")
            if other.id == endpoint.id:
                raise PathManagerError(f"address ID {endpoint.id} is taken by {other.address}")
        for other in plain:
            self.endpoints.remove(other)
        self.endpoints.append(endpoint)

    def free_id(self, address: IPAddress | None = None) -> int:
        """The ID a new endpoint for `address` gets: the one its flagless endpoint has,
        else the lowest address ID no endpoint uses (the kernel picks one the same way)."""
        for endpoint in self.endpoints:
            if endpoint.address == address and not endpoint.flags and endpoint.port is None:
                return endpoint.id
        used = {e.id for e in self.endpoints}
        for candidate in range(1, 256):
            if candidate not in used:
                return candidate
        raise PathManagerError("all 255 address IDs are in use")

    def endpoint_for(self, address: IPAddress) -> Endpoint | None:
        for endpoint in self.endpoints:
            if endpoint.address == address:
                return endpoint
        return None

    def connection(self, initial_local: IPAddress, initial_remote: PeerAddress) -> ConnectionPaths:
        return ConnectionPaths(self, initial_local, initial_remote)
