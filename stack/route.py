"""Routing for a multi-homed userspace host, as Linux routes (docs/stack.md, "Routing").

A route is looked up as a Linux host set up like the testbed's kernel hosts would do:
- a socket bound to a device (a subflow opened from an endpoint, as `ip mptcp endpoint
  add ADDR dev IFNAME`) leaves through that device: the device's connected prefix, else
  its gateway, else on-link (Linux assumes on-link for a bound device without a route);
- a source whose interface has a gateway has a source rule, looked up first: the
  interface's own prefixes on-link, anything else via that gateway, out of it;
- then the main table: the longest connected prefix of an interface that is up, out of
  that interface whatever the source (the weak host model; the source stays the one
  given);
- then, with a source, on-link out of its interface (the testbed's on-link default of
  a source table), or without one, via the first interface with a gateway.
Packets to any of the host's addresses are accepted on any interface (weak host model).
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

    def _configs(self, ifname: str, version: int) -> list[InterfaceConfig]:
        return [c for c in self.interfaces if c.ifname == ifname and c.address.version == version]

    def _out_of(
        self, ifname: str, destination: IPAddress, source: IPAddress | None
    ) -> Route | None:
        """Through `ifname` only (a bound device, or a source rule): its own prefix
        on-link, else its gateway; None if it has neither for this destination."""
        configs = self._configs(ifname, destination.version)
        if not configs:
            return None
        on_link = [c for c in configs if destination in c.address.network]
        if on_link:
            best = max(on_link, key=lambda c: c.address.network.prefixlen)
            return Route(ifname, source or best.address.ip, destination)
        for config in configs:
            if config.gateway is not None:
                return Route(ifname, source or config.address.ip, config.gateway)
        return None

    def route(
        self, destination: IPAddress, source: IPAddress | None = None, device: str = ""
    ) -> Route:
        """The way to `destination` from `source` (None: routing picks the source), for
        a socket bound to `device` ("" for none); the rules are the module's."""
        own: InterfaceConfig | None = None
        if source is not None:
            own = self.interface_of(source)
            if destination.version != source.version:
                raise RoutingError(f"cannot reach {destination} from {source}: family differs")
        if device:
            if not any(c.ifname == device for c in self.interfaces):
                raise RoutingError(
                    f"cannot send out of {device}: not one of this host's interfaces"
                )
            bound = self._out_of(device, destination, source)
            if bound is not None:
                return bound
            configs = self._configs(device, destination.version)
            if source is None and not configs:
                raise RoutingError(f"no route to {destination} out of {device}: "
                                   f"it has no IPv{destination.version} address")  # fmt: skip
            # Linux: a bound device without a route to the destination is taken as on-link
            return Route(device, source or configs[0].address.ip, destination)
        if own is not None and own.gateway is not None and not self.is_down(own.ifname):
            # the source rule: its table holds the interface's prefixes and its gateway
            routed = self._out_of(own.ifname, destination, source)
            if routed is not None:
                return routed
        connected = [
            c
            for c in self.interfaces
            if c.address.version == destination.version
            and destination in c.address.network
            and not self.is_down(c.ifname)
        ]
        if connected:
            best = max(connected, key=lambda c: c.address.network.prefixlen)
            return Route(best.ifname, source or best.address.ip, destination)
        if own is not None and source is not None:
            # No connected route: the source's interface, via its gateway if it has one,
            # else on-link as the testbed's on-link default in a source table (the peer
            # answers ARP for any of its addresses on any interface). A down interface
            # keeps it: the send fails (ENETDOWN), as it would on Linux.
            return Route(own.ifname, source, own.gateway or destination)
        # the main table's default route: the first interface with a gateway, one that is
        # up first (sorted() is stable)
        for config in sorted(self.interfaces, key=lambda c: self.is_down(c.ifname)):
            if config.gateway is not None and config.address.version == destination.version:
                return Route(config.ifname, config.address.ip, config.gateway)
        raise RoutingError(
            f"no route to {destination}: no interface on its network and no IPv"
            f"{destination.version} gateway (add ,gw=ADDR to an --interface)"
        )
