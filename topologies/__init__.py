"""The shipped topologies, as plain data. `testbed.build(spec)` brings one up.

Every host that takes part in MPTCP is called `client` or `server`; their first
interface is `eth0`, their second `eth1`. Pass `bare=("client",)` (or "server") to leave
a host's interfaces without kernel addresses for the userspace stack or the tester.
Addresses come only from the documentation and benchmarking ranges.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from testbed.spec import (
    End,
    Host,
    Link,
    LinkProps,
    Nat,
    Role,
    Route,
    StripMptcp,
    TopologySpec,
)

__all__ = [
    "CATALOGUE",
    "asymmetric",
    "dual_homed",
    "dual_homed_ipv6",
    "dual_homed_mixed",
    "mesh_2x2",
    "nat",
    "primary_backup",
    "single_path",
    "strip_mptcp",
    "user_dual_homed",
]


def _end_hosts(bare: Iterable[str]) -> tuple[Host, Host]:
    bare = set(bare)
    unknown = bare - {"client", "server"}
    if unknown:
        raise ValueError(f"bare names unknown hosts {sorted(unknown)}; use 'client' or 'server'")
    return Host("client", bare="client" in bare), Host("server", bare="server" in bare)


def single_path(props: LinkProps | None = None, bare: Iterable[str] = ()) -> TopologySpec:
    """Two hosts on one path, dual-stack."""
    return TopologySpec(
        "single_path",
        "two hosts on a single path",
        _end_hosts(bare),
        (
            Link(
                "path1",
                End("client", "eth0", ("192.0.2.1/24", "2001:db8:1::1/64")),
                End("server", "eth0", ("192.0.2.2/24", "2001:db8:1::2/64")),
                props or LinkProps(),
            ),
        ),
    )


def _two_paths(
    name: str,
    description: str,
    path_names: tuple[str, str],
    addresses: tuple[
        tuple[tuple[str, ...], tuple[str, ...]], tuple[tuple[str, ...], tuple[str, ...]]
    ],
    props: tuple[LinkProps, LinkProps],
    bare: Iterable[str],
) -> TopologySpec:
    links = tuple(
        Link(
            path_names[i],
            End("client", f"eth{i}", addresses[i][0]),
            End("server", f"eth{i}", addresses[i][1]),
            props[i],
        )
        for i in range(2)
    )
    return TopologySpec(name, description, _end_hosts(bare), links)


V4_PATHS = (
    (("192.0.2.1/24",), ("192.0.2.2/24",)),
    (("198.51.100.1/24",), ("198.51.100.2/24",)),
)
V6_PATHS = (
    (("2001:db8:1::1/64",), ("2001:db8:1::2/64",)),
    (("2001:db8:2::1/64",), ("2001:db8:2::2/64",)),
)


def dual_homed(
    props: tuple[LinkProps, LinkProps] | None = None, bare: Iterable[str] = ()
) -> TopologySpec:
    """Two dual-homed hosts, two disjoint IPv4 paths."""
    return _two_paths(
        "dual_homed",
        "two dual-homed hosts, two disjoint IPv4 paths",
        ("path1", "path2"),
        V4_PATHS,
        props or (LinkProps(), LinkProps()),
        bare,
    )


def dual_homed_two_addresses(
    props: tuple[LinkProps, LinkProps] | None = None, bare: Iterable[str] = ()
) -> TopologySpec:
    """The dual-homed topology with a second server address on path2 (198.51.100.3): two
    endpoints besides the initial address, for a path manager that must choose between
    them. Used by conformance cases by name; not one of the shipped CATALOGUE."""
    v4 = (V4_PATHS[0], (V4_PATHS[1][0], (*V4_PATHS[1][1], "198.51.100.3/24")))
    return _two_paths(
        "dual_homed_two_addresses",
        "two dual-homed hosts, two disjoint IPv4 paths, two server addresses on path2",
        ("path1", "path2"),
        v4,
        props or (LinkProps(), LinkProps()),
        bare,
    )


def dual_homed_ipv6(
    props: tuple[LinkProps, LinkProps] | None = None, bare: Iterable[str] = ()
) -> TopologySpec:
    """The dual-homed topology with IPv6 only."""
    return _two_paths(
        "dual_homed_ipv6",
        "two dual-homed hosts, two disjoint IPv6 paths",
        ("path1", "path2"),
        V6_PATHS,
        props or (LinkProps(), LinkProps()),
        bare,
    )


def dual_homed_mixed(
    props: tuple[LinkProps, LinkProps] | None = None, bare: Iterable[str] = ()
) -> TopologySpec:
    """Dual-homed, mixed families: path1 is dual-stack, path2 is IPv6 only.

    An IPv6 (or v4-mapped) connection over path1 can add an IPv6 subflow over path2.
    """
    addresses = (
        (
            ("192.0.2.1/24", "2001:db8:1::1/64"),
            ("192.0.2.2/24", "2001:db8:1::2/64"),
        ),
        V6_PATHS[1],
    )
    return _two_paths(
        "dual_homed_mixed",
        "two dual-homed hosts: path1 dual-stack, path2 IPv6 only",
        ("path1", "path2"),
        addresses,
        props or (LinkProps(), LinkProps()),
        bare,
    )


USER_PATHS = (
    (("203.0.113.1/24",), ("203.0.113.2/24",)),
    (("198.18.0.1/24",), ("198.18.0.2/24",)),
)


def user_dual_homed(
    props: tuple[LinkProps, LinkProps] | None = None, bare: Iterable[str] = ()
) -> TopologySpec:
    """Two dual-homed hosts routed as users set them up, not as the testbed does.

    The server has no policy rules: its replies follow the main table's connected
    routes, so an answer from 203.0.113.2 to 198.18.0.1 leaves through eth1. The client
    has one source rule, for its second address (the usual companion of
    `ip mptcp endpoint add 198.18.0.1 dev eth1 subflow`). A join from 198.18.0.1 to the
    server's first address then arrives on the server's eth1.
    """
    spec = _two_paths(
        "user_dual_homed",
        "two dual-homed hosts routed as users do: no server policy rules, a source rule "
        "for the client's second address",
        ("path1", "path2"),
        USER_PATHS,
        props or (LinkProps(), LinkProps()),
        bare,
    )
    client, server = spec.hosts
    client = dataclasses.replace(client, source_rules=("198.18.0.1",))
    server = dataclasses.replace(server, source_rules=())
    return dataclasses.replace(spec, hosts=(client, server))


def asymmetric(bare: Iterable[str] = ()) -> TopologySpec:
    """Two disjoint paths of different rate and delay."""
    return _two_paths(
        "asymmetric",
        "two disjoint paths: path1 fast and near, path2 slow and far",
        ("path1", "path2"),
        V4_PATHS,
        (
            LinkProps(rate="100mbit", delay="2ms"),
            LinkProps(rate="20mbit", delay="20ms"),
        ),
        bare,
    )


def primary_backup(
    props: tuple[LinkProps, LinkProps] | None = None, bare: Iterable[str] = ()
) -> TopologySpec:
    """A primary path and a backup path; the backup flag is an endpoint's, set by the test."""
    return _two_paths(
        "primary_backup",
        "a primary path and a backup path (mark the backup endpoint in the test)",
        ("primary", "backup"),
        V4_PATHS,
        props or (LinkProps(), LinkProps()),
        bare,
    )


def mesh_2x2(bare: Iterable[str] = ()) -> TopologySpec:
    """Client and server each have two interfaces, one on each of two linked routers.

    Every pair of client and server addresses is reachable: 4 possible subflows.
    """
    client, server = _end_hosts(bare)
    r1 = Host(
        "r1",
        Role.ROUTER,
        routes=(Route("198.51.100.0/24", "198.18.1.2"), Route("198.18.0.0/24", "198.18.1.2")),
    )
    r2 = Host(
        "r2",
        Role.ROUTER,
        routes=(Route("192.0.2.0/24", "198.18.1.1"), Route("203.0.113.0/24", "198.18.1.1")),
    )
    links = (
        Link(
            "c0r1",
            End("client", "eth0", ("192.0.2.1/24",), ("192.0.2.254",)),
            End("r1", "eth0", ("192.0.2.254/24",)),
        ),
        Link(
            "c1r2",
            End("client", "eth1", ("198.51.100.1/24",), ("198.51.100.254",)),
            End("r2", "eth0", ("198.51.100.254/24",)),
        ),
        Link(
            "s0r1",
            End("server", "eth0", ("203.0.113.1/24",), ("203.0.113.254",)),
            End("r1", "eth1", ("203.0.113.254/24",)),
        ),
        Link(
            "s1r2",
            End("server", "eth1", ("198.18.0.1/24",), ("198.18.0.254",)),
            End("r2", "eth1", ("198.18.0.254/24",)),
        ),
        Link("r1r2", End("r1", "eth2", ("198.18.1.1/30",)), End("r2", "eth2", ("198.18.1.2/30",))),
    )
    return TopologySpec(
        "mesh_2x2",
        "a 2x2 mesh: two dual-homed hosts through two linked routers",
        (client, server, r1, r2),
        links,
    )


def _via_middlebox(
    name: str, description: str, box: Host, server_gateway: bool, bare: Iterable[str]
) -> TopologySpec:
    """path1 goes client - box - server (routed), path2 is direct."""
    client, server = _end_hosts(bare)
    server_gw = ("203.0.113.254",) if server_gateway else ()
    links = (
        Link(
            "path1",
            End("client", "eth0", ("192.0.2.1/24",), ("192.0.2.254",)),
            End(box.name, "eth0", ("192.0.2.254/24",)),
        ),
        Link(
            "path1b",
            End(box.name, "eth1", ("203.0.113.254/24",)),
            End("server", "eth0", ("203.0.113.1/24",), server_gw),
        ),
        Link(
            "path2",
            End("client", "eth1", ("198.51.100.1/24",)),
            End("server", "eth1", ("198.51.100.2/24",)),
        ),
    )
    return TopologySpec(name, description, (client, server, box), links)


def nat(bare: Iterable[str] = ()) -> TopologySpec:
    """path1 crosses a NAT (masquerade to 203.0.113.254), path2 is direct."""
    box = Host("nat", Role.MIDDLEBOX, functions=(Nat(outside="eth1"),))
    return _via_middlebox(
        "nat", "path1 through a source-NAT middlebox, path2 direct", box, False, bare
    )


def strip_mptcp(after_handshake: bool = False, bare: Iterable[str] = ()) -> TopologySpec:
    """path1 crosses a middlebox that strips TCP option 30, path2 is direct."""
    box = Host("mbox", Role.MIDDLEBOX, functions=(StripMptcp(after_handshake),))
    when = "after the handshake" if after_handshake else "from every segment"
    return _via_middlebox(
        "strip_mptcp_after_handshake" if after_handshake else "strip_mptcp",
        f"path1 through a middlebox that strips MPTCP options {when}, path2 direct",
        box,
        True,
        bare,
    )


def _strip_after_handshake(bare: Iterable[str] = ()) -> TopologySpec:
    return strip_mptcp(after_handshake=True, bare=bare)


CATALOGUE: dict[str, Callable[..., TopologySpec]] = {
    "single_path": single_path,
    "dual_homed": dual_homed,
    "mesh_2x2": mesh_2x2,
    "asymmetric": asymmetric,
    "primary_backup": primary_backup,
    "nat": nat,
    "strip_mptcp": strip_mptcp,
    "strip_mptcp_after_handshake": _strip_after_handshake,
    "dual_homed_ipv6": dual_homed_ipv6,
    "dual_homed_mixed": dual_homed_mixed,
    "user_dual_homed": user_dual_homed,
}
