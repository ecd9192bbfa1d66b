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


@dataclass(frozen=True)
class Announce:
    endpoint: Endpoint


@dataclass(frozen=True)
class Echo:
    announced: PeerAddress


Action = OpenSubflow | Announce | Echo


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
        return actions + self._new_subflows()

    def on_add_addr(self, announced: PeerAddress) -> list[Action]:
        actions: list[Action] = [Echo(announced)]
        if announced.id in self.remote or (
            announced.address == self.initial_remote.address
            and (announced.port in (None, self.initial_remote.port))
        ):
            return actions  # a retransmission, or our initial peer address
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

    def subflow_closed(self, local: IPAddress, remote: IPAddress, port: int | None) -> None:
        if (local, remote, port) in self.subflows:
            self.subflows.discard((local, remote, port))
            self.extra_subflows = max(0, self.extra_subflows - 1)

    def retry(self) -> list[Action]:
        """Re-establish what is missing, e.g. after a failed address returns."""
        return self._new_subflows() if self.established else []

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
        if not sources:
            # As the kernel: with no subflow endpoint, an accepted announcement gets one
            # subflow, from the address routing picks for it (the initial one if none).
            for peer in peers:
                if peer == self.initial_remote:
                    continue
                address = self.manager.source_for(peer.address) or self.initial_local
                local = self.manager.endpoint_for(address) or Endpoint(255, address)
                key = (local.address, peer.address, peer.port)
                if key in self.subflows or self.extra_subflows >= self.manager.limits.subflows:
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
                if key in self.subflows:
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
