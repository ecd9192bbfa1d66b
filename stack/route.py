"""Routing for a multi-homed userspace host: connected prefixes plus a gateway per interface.

- A packet from a given local address leaves through that address's interface, via the
  interface's gateway when the destination is not on-link (per-source routing, as the
  testbed sets up for kernel hosts).
- Without a source, the most specific connected prefix wins, then the first interface
  with a gateway of the right family.
- Packets to any of the host's addresses are accepted on any interface (weak host
  model, as Linux does).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class RoutingError(ValueError):
    """No route, or a configuration that cannot work; the message says which."""


@dataclass(frozen=True)
class InterfaceConfig:
    """One interface as the CLI declares it: `IFNAME=ADDR/PLEN[,gw=ADDR]`."""

    ifname: str
    address: IPInterface
    gateway: IPAddress | None = None

    @classmethod
    def parse(cls, text: str) -> InterfaceConfig:
        """Parse `eth0=192.0.2.1/24,gw=192.0.2.254` (extra flags are the caller's)."""
        name, sep, rest = text.partition("=")
        if not sep or not name or not rest:
            raise RoutingError(
                f"interface {text!r}: expected IFNAME=ADDR/PREFIXLEN[,gw=ADDR], "
                "e.g. eth0=192.0.2.1/24,gw=192.0.2.254"
            )
        fields = rest.split(",")
        try:
            address = ipaddress.ip_interface(fields[0])
        except ValueError:
            raise RoutingError(f"interface {text!r}: {fields[0]!r} is not ADDR/PREFIXLEN") from None
        if "/" not in fields[0]:
            raise RoutingError(f"interface {text!r}: address {fields[0]!r} needs a /prefix length")
        gateway = None
        for item in fields[1:]:
            if item.startswith("gw="):
                try:
                    gateway = ipaddress.ip_address(item[3:])
                except ValueError:
                    raise RoutingError(
                        f"interface {text!r}: gateway {item[3:]!r} is not an address"
                    ) from None
                if gateway.version != address.version:
                    raise RoutingError(
                        f"interface {text!r}: gateway {gateway} is not IPv{address.version}"
                    )
                if gateway not in address.network:
                    raise RoutingError(
                        f"interface {text!r}: gateway {gateway} is not on {address.network}"
                    )
        return cls(name, address, gateway)


@dataclass(frozen=True)
class Route:
    ifname: str
    source: IPAddress
    next_hop: IPAddress  # the destination itself when on-link


class RoutingTable:
    def __init__(self, interfaces: list[InterfaceConfig]):
        seen: dict[IPAddress, str] = {}
        for config in interfaces:
            if config.address.ip in seen:
                raise RoutingError(
                    f"address {config.address.ip} is given twice "
                    f"({seen[config.address.ip]} and {config.ifname})"
                )
            seen[config.address.ip] = config.ifname
        self.interfaces = list(interfaces)
        self.local_addresses = frozenset(seen)
        # whether an interface's link is down (the host tells, from its sockets)
        self.is_down: Callable[[str], bool] = lambda ifname: False

    def is_local(self, address: IPAddress) -> bool:
        return address in self.local_addresses

    def interface_of(self, source: IPAddress) -> InterfaceConfig:
        for config in self.interfaces:
            if config.address.ip == source:
                return config
        raise RoutingError(f"{source} is not one of this host's addresses")

    def route(self, destination: IPAddress, source: IPAddress | None = None) -> Route:
        if source is not None:
            config = self.interface_of(source)
            if destination.version != source.version:
                raise RoutingError(f"cannot reach {destination} from {source}: family differs")
            if destination in config.address.network:
                return Route(config.ifname, source, destination)
            if self.is_down(config.ifname):
                # as Linux when a link goes down (its routes go with it): an address of
                # the dead interface still reaches a peer through another that is on-link
                for other in self.interfaces:
                    if destination in other.address.network and not self.is_down(other.ifname):
                        return Route(other.ifname, source, destination)
            if config.gateway is not None:
                return Route(config.ifname, source, config.gateway)
            # No gateway: on-link, as the testbed's kernel hosts do; the peer answers ARP
            # for any of its addresses on any interface.
            return Route(config.ifname, source, destination)
        candidates = [c for c in self.interfaces if c.address.version == destination.version]
        connected = [c for c in candidates if destination in c.address.network]
        if connected:
            best = max(connected, key=lambda c: c.address.network.prefixlen)
            return Route(best.ifname, best.address.ip, destination)
        for config in candidates:
            if config.gateway is not None:
                return Route(config.ifname, config.address.ip, config.gateway)
        raise RoutingError(
            f"no route to {destination}: no interface on its network and no IPv"
            f"{destination.version} gateway (add ,gw=ADDR to an --interface)"
        )
