"""The declarative model of a topology: plain, frozen data, checked before anything is built.

A topology is hosts (end hosts, routers, middleboxes) and point-to-point links between
named interfaces of those hosts. Link properties (rate, delay, jitter, loss, MTU) belong
to the link; addresses and gateways belong to the interface at each end.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from enum import Enum

from testbed.errors import TopologyError

IfAddress = ipaddress.IPv4Interface | ipaddress.IPv6Interface

# Namespaces may use only documentation and benchmarking ranges.
ALLOWED_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "198.18.0.0/15",
        "2001:db8::/32",
    )
)


class Role(Enum):
    HOST = "host"  # an end host; policy-routed when multi-homed
    ROUTER = "router"  # forwards between its interfaces
    MIDDLEBOX = "middlebox"  # a router that also rewrites or drops traffic


@dataclass(frozen=True)
class Nat:
    """Source NAT (masquerade) of traffic leaving the middlebox through `outside`."""

    outside: str


@dataclass(frozen=True)
class StripMptcp:
    """Replace TCP option 30 (MPTCP) with NOPs in forwarded segments.

    With `after_handshake`, SYN, SYN/ACK and the third ACK keep their options and every
    later segment loses them: the kernel then meets an MPTCP peer whose data segments
    arrive without DSS, the case RFC 8684 §3.7 covers.
    """

    after_handshake: bool = False


MiddleboxFunction = Nat | StripMptcp


@dataclass(frozen=True)
class Route:
    """A static route in a host's main table: `destination` via `gateway`."""

    destination: str
    gateway: str


@dataclass(frozen=True)
class Host:
    name: str
    role: Role = Role.HOST
    # A bare host has its interfaces up but no kernel address: a raw-frame user (the
    # stack, the tester) owns the addresses in userspace, and offloads are off.
    bare: bool = False
    functions: tuple[MiddleboxFunction, ...] = ()
    routes: tuple[Route, ...] = ()
    sysctls: tuple[tuple[str, str], ...] = ()
    # Per-source policy routing of a multi-homed host: None gives every address a rule
    # (the testbed's default: a subflow bound to an address leaves through its
    # interface); a tuple lists the only addresses that get one, () none at all (a host
    # set up as a user would: replies follow the main table's connected routes).
    source_rules: tuple[str, ...] | None = None


@dataclass(frozen=True)
class End:
    """One end of a link: an interface of a host, its addresses and optional gateways."""

    host: str
    ifname: str
    addresses: tuple[str, ...] = ()
    gateways: tuple[str, ...] = ()  # at most one per address family


@dataclass(frozen=True)
class LinkProps:
    """Properties of a link, applied to both directions.

    rate: e.g. "100mbit", "1.5gbit", "500kbit"; delay and jitter: e.g. "10ms", "500us";
    loss: percent of frames dropped at random in each direction.
    """

    rate: str | None = None
    delay: str | None = None
    jitter: str | None = None
    loss: float = 0.0
    mtu: int = 1500


@dataclass(frozen=True)
class Link:
    name: str
    a: End
    b: End
    props: LinkProps = field(default_factory=LinkProps)


@dataclass(frozen=True)
class TopologySpec:
    name: str
    description: str
    hosts: tuple[Host, ...]
    links: tuple[Link, ...]

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def ends_of(self, host: str) -> list[End]:
        return [end for link in self.links for end in (link.a, link.b) if end.host == host]


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)?\s*$", re.I)
_RATE_UNITS = {
    "bit": 1,
    "kbit": 1e3,
    "mbit": 1e6,
    "gbit": 1e9,
    "bps": 8,
    "kbps": 8e3,
    "mbps": 8e6,
    "gbps": 8e9,
}
_TIME = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|ms|us|usec|msec|sec)?\s*$", re.I)
_TIME_UNITS = {"s": 1.0, "sec": 1.0, "ms": 1e-3, "msec": 1e-3, "us": 1e-6, "usec": 1e-6}


def parse_rate(text: str) -> int:
    """A rate in bits per second; tc's units ("mbit" = 10^6 bit/s, "mbps" = 10^6 bytes/s)."""
    match = _RATE.match(text)
    if not match:
        raise TopologyError(
            f"cannot parse rate {text!r}: write a number and a unit such as '100mbit', "
            "'1.5gbit' or '500kbit'"
        )
    value = float(match.group(1)) * _RATE_UNITS[(match.group(2) or "bit").lower()]
    if value < 8000:
        raise TopologyError(f"rate {text!r} is below 8 kbit/s, too low to carry a frame")
    return int(value)


def parse_duration(text: str) -> float:
    """A duration in seconds; a bare number means milliseconds, as in tc."""
    match = _TIME.match(text)
    if not match:
        raise TopologyError(
            f"cannot parse duration {text!r}: write a number and a unit such as '10ms' or '500us'"
        )
    return float(match.group(1)) * _TIME_UNITS[(match.group(2) or "ms").lower()]


def parse_address(text: str, where: str) -> IfAddress:
    try:
        address = ipaddress.ip_interface(text)
    except ValueError:
        raise TopologyError(
            f"{where}: {text!r} is not an address with a prefix length (e.g. 192.0.2.1/24)"
        ) from None
    if "/" not in text:
        raise TopologyError(f"{where}: address {text!r} needs a prefix length (e.g. /24)")
    if not any(address.ip in net for net in ALLOWED_NETWORKS):
        raise TopologyError(
            f"{where}: address {text} is outside the documentation and benchmarking ranges "
            "(192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 198.18.0.0/15, 2001:db8::/32)"
        )
    return address


def _check_ip(text: str, where: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise TopologyError(f"{where}: {text!r} is not an IP address") from None
    if not any(address in net for net in ALLOWED_NETWORKS):
        raise TopologyError(f"{where}: {text} is outside the documentation ranges")
    return address


def validate(spec: TopologySpec) -> None:
    """Raise TopologyError naming the first problem; nothing has been built yet."""
    names = [h.name for h in spec.hosts]
    for name in names:
        if names.count(name) > 1:
            raise TopologyError(f"topology {spec.name!r}: host {name!r} is declared twice")
        if not re.fullmatch(r"[a-z][a-z0-9]{0,14}", name):
            raise TopologyError(
                f"topology {spec.name!r}: host name {name!r} must be 1-15 lowercase letters "
                "and digits, starting with a letter"
            )
    link_names = [link.name for link in spec.links]
    seen_ifnames: set[tuple[str, str]] = set()
    seen_addresses: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, str] = {}
    for link in spec.links:
        where = f"topology {spec.name!r}, link {link.name!r}"
        if link_names.count(link.name) > 1:
            raise TopologyError(f"{where}: the link name is used twice")
        if link.a.host == link.b.host:
            raise TopologyError(f"{where}: both ends are on host {link.a.host!r}")
        _check_props(link.props, where)
        for end in (link.a, link.b):
            if end.host not in names:
                raise TopologyError(f"{where}: links to unknown host {end.host!r}")
            if not re.fullmatch(r"[a-zA-Z0-9_.-]{1,15}", end.ifname):
                raise TopologyError(
                    f"{where}: interface name {end.ifname!r} must be 1-15 characters "
                    "of letters, digits, '_', '.' or '-'"
                )
            if (end.host, end.ifname) in seen_ifnames:
                raise TopologyError(
                    f"{where}: host {end.host!r} has interface {end.ifname!r} twice"
                )
            seen_ifnames.add((end.host, end.ifname))
            families = set()
            for text in end.addresses:
                address = parse_address(text, f"{where}, {end.host}/{end.ifname}")
                if address.ip in seen_addresses:
                    raise TopologyError(
                        f"{where}: duplicate address {address.ip} "
                        f"(also on {seen_addresses[address.ip]})"
                    )
                seen_addresses[address.ip] = f"{end.host}/{end.ifname}"
                families.add(address.version)
            gateway_families = set()
            for gateway in end.gateways:
                ip = _check_ip(gateway, f"{where}, gateway of {end.host}/{end.ifname}")
                if ip.version in gateway_families:
                    raise TopologyError(
                        f"{where}: {end.host}/{end.ifname} has two IPv{ip.version} gateways"
                    )
                if ip.version not in families:
                    raise TopologyError(
                        f"{where}: gateway {gateway} of {end.host}/{end.ifname} has no "
                        f"IPv{ip.version} address on that interface to reach it from"
                    )
                gateway_families.add(ip.version)
    for host in spec.hosts:
        where = f"topology {spec.name!r}, host {host.name!r}"
        ifnames = {end.ifname for end in spec.ends_of(host.name)}
        if host.functions and host.role is not Role.MIDDLEBOX:
            raise TopologyError(f"{where}: only a middlebox can have NAT or option stripping")
        if host.bare and host.role is not Role.HOST:
            raise TopologyError(f"{where}: a router or middlebox cannot be bare")
        for function in host.functions:
            if isinstance(function, Nat) and function.outside not in ifnames:
                raise TopologyError(
                    f"{where}: NAT outside interface {function.outside!r} is not one of "
                    f"its interfaces {sorted(ifnames)}"
                )
        for route in host.routes:
            try:
                ipaddress.ip_network(route.destination)
            except ValueError:
                raise TopologyError(
                    f"{where}: route destination {route.destination!r} is not a network"
                ) from None
            _check_ip(route.gateway, f"{where}, route to {route.destination}")
        if host.source_rules is not None:
            own = {str(parse_address(a, where).ip) for e in spec.ends_of(host.name)
                   for a in e.addresses}  # fmt: skip
            for text in host.source_rules:
                if str(_check_ip(text, f"{where}, source rule")) not in own:
                    raise TopologyError(
                        f"{where}: source rule for {text}, which is not one of its addresses"
                    )
        for key, _ in host.sysctls:
            if not re.fullmatch(r"net\.[a-z0-9_.*-]+", key):
                raise TopologyError(f"{where}: sysctl {key!r} is not a net.* sysctl")
    for text in link_names:
        if not re.fullmatch(r"[a-z0-9_-]{1,32}", text):
            raise TopologyError(
                f"topology {spec.name!r}: link name {text!r} must be lowercase letters, "
                "digits, '_' or '-'"
            )


def _check_props(props: LinkProps, where: str) -> None:
    if props.rate is not None:
        parse_rate(props.rate)
    if props.delay is not None:
        parse_duration(props.delay)
    if props.jitter is not None:
        if props.delay is None:
            raise TopologyError(f"{where}: jitter {props.jitter!r} needs a delay as well")
        if parse_duration(props.jitter) > parse_duration(props.delay):
            raise TopologyError(f"{where}: jitter {props.jitter} exceeds delay {props.delay}")
    if not 0.0 <= props.loss <= 100.0:
        raise TopologyError(f"{where}: loss {props.loss}% is not between 0 and 100")
    if not 68 <= props.mtu <= 65535:
        raise TopologyError(f"{where}: MTU {props.mtu} is not between 68 and 65535")
