"""Build a TopologySpec into live namespaces and links; tear it all down on exit.

    with build(topologies.dual_homed()) as topo:
        topo.hosts["client"].run(["ping", "-c1", "192.0.2.2"])
        topo.links["path1"].down()

The build is fast because it never forks for netlink work: one rtnetlink socket per
namespace, opened from a thread that entered it, and veth pairs created with both
ends placed straight into their namespaces (the root namespace is never touched).
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import cast

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from testbed import _linux, nft, shaping
from testbed import delay as delay_element
from testbed.errors import TestbedError, TopologyError
from testbed.netns import (
    PREFIX,
    Namespace,
    NetlinkIn,
    kill_processes_in,
    reclaim_stale,
    shielded,
)
from testbed.spec import (
    End,
    Host,
    IfAddress,
    Link,
    LinkProps,
    Nat,
    Role,
    StripMptcp,
    TopologySpec,
    parse_address,
    parse_duration,
    parse_rate,
    validate,
)

IFA_F_NODAD = 0x02
POLICY_TABLE_BASE = 100
LINK_UP_TIMEOUT = 10.0  # s: a link set up must be operational within this
LINK_UP_POLL = 0.001  # s between two looks at its operstate
POLICY_RULE_PRIORITY_BASE = 1000

_live: set[Topology] = set()
_live_lock = threading.Lock()
_reclaimed = False


def run_id() -> str:
    """A short id unique to this build: pytest-xdist workers and parallel runs never collide."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return f"{worker.replace('gw', 'w')}{secrets.token_hex(3)}"


@dataclass
class Interface:
    host: str
    ifname: str
    index: int
    addresses: list[IfAddress]
    gateways: list[str]
    link: str
    bare: bool

    def address(self, version: int = 4) -> str:
        for address in self.addresses:
            if address.version == version:
                return str(address.ip)
        raise TestbedError(f"{self.host}/{self.ifname} has no IPv{version} address")


@dataclass
class HostHandle:
    """A live host: its namespace, its rtnetlink socket and its interfaces."""

    spec: Host
    ns: Namespace
    ipr: IPRoute
    interfaces: dict[str, Interface] = field(default_factory=dict)
    policy_tables: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def netns(self) -> str:
        """The namespace's name, as `ip netns exec` knows it."""
        return self.ns.name

    def entered(self) -> contextlib.AbstractContextManager[None]:
        return self.ns.entered()

    def addresses(self, version: int | None = None) -> list[str]:
        return [
            str(a.ip)
            for iface in self.interfaces.values()
            for a in iface.addresses
            if version is None or a.version == version
        ]

    def address(self, ifname: str, version: int = 4) -> str:
        return self.interfaces[ifname].address(version)

    def set_sysctl(self, key: str, value: str | int) -> None:
        path = "/proc/sys/" + key.replace(".", "/")
        with self.ns.entered(), open(path, "w") as f:
            f.write(str(value))

    def sysctl(self, key: str) -> str:
        path = "/proc/sys/" + key.replace(".", "/")
        with self.ns.entered(), open(path) as f:
            return f.read().strip()

    def run(
        self,
        argv: list[str],
        *,
        timeout: float = 30.0,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in this host; CommandFailed carries its output when it fails."""
        from testbed.errors import CommandFailed

        try:
            with self.ns.entered():
                result = subprocess.run(
                    argv, capture_output=True, text=True, timeout=timeout, input=input
                )
        except subprocess.TimeoutExpired as error:
            raise CommandFailed(
                f"{argv[0]} in {self.name} did not finish within {timeout} s",
                returncode=None,
                stdout=str(error.stdout or ""),
                stderr=str(error.stderr or ""),
            ) from None
        if check and result.returncode != 0:
            raise CommandFailed(
                f"{' '.join(argv)} in {self.name} exited {result.returncode}: "
                f"{result.stderr.strip()}",
                returncode=result.returncode,
                stdout=result.stdout,
                stderr=result.stderr,
            )
        return result


@dataclass
class DelayBox:
    """The hidden namespace and forwarder that delay one link on kernels without netem."""

    ns: Namespace
    pid: int
    control: int
    replies: int

    def set(self, delay: float, jitter: float) -> None:
        """Change the hold time; returns once the forwarder applies it to new frames."""
        os.write(self.control, f"delay {delay} {jitter}\n".encode())
        reply = delay_element.read_line(self.replies, timeout=5.0)
        if reply != "ok":
            raise TestbedError(
                f"the delay element in {self.ns.name} did not apply the delay: "
                f"{reply or 'no answer within 5 s'}"
            )

    def stop(self) -> None:
        for fd in (self.control, self.replies):  # the forwarder leaves at end of file
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        self.ns.delete()


class LinkHandle:
    """A live link. Every property can change while traffic flows."""

    def __init__(self, topo: Topology, spec: Link, a: Interface, b: Interface):
        self.topo = topo
        self.spec = spec
        self.name = spec.name
        self.a = a
        self.b = b
        self.rate = parse_rate(spec.props.rate) if spec.props.rate else None
        self.loss = spec.props.loss
        self.delay = parse_duration(spec.props.delay) if spec.props.delay else None
        self.jitter = parse_duration(spec.props.jitter) if spec.props.jitter else 0.0
        self.blackholed = False
        self.is_up = True
        self.delay_box: DelayBox | None = None
        self._nft_chains: set[tuple[str, str, str]] = set()

    def __repr__(self) -> str:
        a, b = self.a, self.b
        return f"LinkHandle({self.name!r}: {a.host}/{a.ifname} - {b.host}/{b.ifname})"

    # -- observation --

    def counters(self) -> dict[str, int]:
        """The kernel's interface counters of both ends (rtnetlink IFLA_STATS64):
        `a_tx_bytes` is what end a put on the link, `b_rx_bytes` what end b took off it,
        and so on for packets. Evidence from outside whatever runs on the hosts."""
        out: dict[str, int] = {}
        for side, end in (("a", self.a), ("b", self.b)):
            [link] = self.topo.hosts[end.host].ipr.get_links(end.index)
            stats = link.get_attr("IFLA_STATS64") or {}
            for key in ("tx_bytes", "rx_bytes", "tx_packets", "rx_packets"):
                out[f"{side}_{key}"] = int(stats.get(key, 0))
        return out

    def sent_by(self, host: str) -> int:
        """Bytes the given host's end has sent onto this link so far."""
        for side, end in (("a", self.a), ("b", self.b)):
            if end.host == host:
                return self.counters()[f"{side}_tx_bytes"]
        raise TopologyError(f"link {self.name} does not reach host {host!r}")

    # -- administrative state --

    def down(self) -> None:
        """Take both ends down: carriers drop, and each host sees its interface go."""
        for end in (self.a, self.b):
            self.topo.hosts[end.host].ipr.link("set", index=end.index, state="down")
        self.is_up = False

    def up(self) -> None:
        """Bring both ends back and restore the routes the kernel flushed on down."""
        for end in (self.a, self.b):
            self.topo.hosts[end.host].ipr.link("set", index=end.index, state="up")
        for end in (self.a, self.b):
            host = self.topo.hosts[end.host]
            if not end.bare:
                _install_routes(host, only=end.ifname)
        _wait_operational(self.topo, [self.a, self.b])
        self.is_up = True

    def blackhole(self, on: bool = True) -> None:
        """Silently drop every frame in both directions; the interfaces stay up."""
        self.blackholed = on
        self._apply_impairments()

    def set_loss(self, percent: float) -> None:
        if not 0.0 <= percent <= 100.0:
            raise TopologyError(f"link {self.name}: loss {percent}% is not between 0 and 100")
        self.loss = percent
        self._apply_impairments()

    def set_rate(self, rate: str | None) -> None:
        self.rate = parse_rate(rate) if rate else None
        for end in (self.a, self.b):
            self._apply_qdisc(end)

    def set_delay(self, delay: str | None, jitter: str | None = None) -> None:
        seconds = parse_duration(delay) if delay else 0.0
        jitter_seconds = parse_duration(jitter) if jitter else 0.0
        if jitter_seconds > seconds:
            raise TopologyError(f"link {self.name}: jitter {jitter} exceeds delay {delay}")
        if shaping.netem_available():
            self.delay, self.jitter = seconds or None, jitter_seconds
            for end in (self.a, self.b):
                self._apply_qdisc(end)
            return
        if self.delay_box is None:
            raise TopologyError(
                f"link {self.name} was built without a delay element; declare it with "
                "delay='0ms' to change its delay while traffic flows"
            )
        self.delay, self.jitter = seconds, jitter_seconds
        self.delay_box.set(seconds, jitter_seconds)

    # -- applying properties --

    def _apply_qdisc(self, end: Interface) -> None:
        ipr = self.topo.hosts[end.host].ipr
        if shaping.netem_available() and self.delay:
            # Untested here (no netem on our kernels): netem delays, tbf below it shapes.
            ipr.tc(
                "replace",
                kind="netem",
                index=end.index,
                handle="1:",
                delay=int(self.delay * 1e6),
                jitter=int(self.jitter * 1e6),
            )
            if self.rate:
                params = shaping.tbf_parameters(self.rate, self.spec.props.mtu)
                ipr.tc("replace", kind="tbf", index=end.index, parent="1:1", handle="10:", **params)
            return
        shaping.set_rate(ipr, end.index, self.rate, self.spec.props.mtu)

    def _impairment_points(self) -> list[tuple[Interface, str]]:
        """Where each direction's frames are dropped: (interface, nft hook).

        A direction is impaired on its sender's egress, except when the sender is a bare
        host: its raw sends would then fail with ENOBUFS instead of vanishing on the
        wire, so that direction is dropped on the receiver's ingress instead.
        """
        points = []
        for sender, receiver in ((self.a, self.b), (self.b, self.a)):
            if sender.bare and not receiver.bare:
                points.append((receiver, "ingress"))
            else:
                points.append((sender, "egress"))
        return points

    def _apply_impairments(self) -> None:
        scripts: dict[str, str] = {}
        for iface, hook in self._impairment_points():
            key = (iface.host, iface.ifname, hook)
            if not self.blackholed and self.loss == 0 and key not in self._nft_chains:
                continue
            scripts[iface.host] = scripts.get(iface.host, "") + nft.link_chain(
                iface.ifname,
                hook,
                loss=self.loss,
                blackhole=self.blackholed,
                create=key not in self._nft_chains,
            )
            self._nft_chains.add(key)
        for host, script in scripts.items():
            nft.apply(self.topo.hosts[host].ns, script)


class Topology:
    """A live topology. Use as a context manager; teardown removes everything it made."""

    def __init__(self, spec: TopologySpec, run: str):
        self.spec = spec
        self.run_id = run
        self.hosts: dict[str, HostHandle] = {}
        self.links: dict[str, LinkHandle] = {}
        self._namespaces: list[Namespace] = []
        self._torn_down = False
        self.step = "starting"  # what the build is doing, for error messages

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def __hash__(self) -> int:
        return id(self)

    @property
    def description(self) -> str:
        """The spec's description, plus the mechanisms actually in force."""
        lines = [f"{self.spec.name}: {self.spec.description}"]
        for link in self.links.values():
            props = []
            if link.rate:
                props.append(f"rate {link.rate / 1e6:g} Mbit/s (tbf)")
            if link.delay is not None:
                props.append(
                    f"delay {link.delay * 1e3:g} ms ± {link.jitter * 1e3:g} ms "
                    f"({shaping.delay_mechanism()})"
                )
            if link.loss:
                props.append(f"loss {link.loss:g}% (nftables numgen)")
            lines.append(
                f"  {link.name}: {link.a.host}/{link.a.ifname} <-> {link.b.host}/{link.b.ifname}"
                + (": " + ", ".join(props) if props else "")
            )
        return "\n".join(lines)

    def namespace_names(self) -> list[str]:
        return [ns.name for ns in self._namespaces]

    def teardown(self) -> None:
        with shielded():  # an interrupt waits until everything is removed
            self._teardown()

    def _teardown(self) -> None:
        if self._torn_down:
            return
        self._torn_down = True
        for link in self.links.values():
            if link.delay_box is not None:
                link.delay_box.stop()
        for host in self.hosts.values():
            with contextlib.suppress(Exception):
                host.ipr.close()
        live = [ns for ns in self._namespaces if ns.fd >= 0]
        # Processes started through testbed.process get SIGTERM and a grace period first;
        # anything else still inside is killed with the namespace.
        from testbed.process import running, terminate_all

        if running():
            for ns in live:
                terminate_all(ns, grace=1.0)
        kill_processes_in(ns.inode for ns in live)
        for ns in live:
            ns.delete()
        with _live_lock:
            _live.discard(self)


def build(spec: TopologySpec) -> Topology:
    """Validate, then build; on any failure, remove what was made and re-raise."""
    validate(spec)
    _require_tools(spec)
    global _reclaimed
    if not _reclaimed:
        reclaim_stale()
        _reclaimed = True
    topo = Topology(spec, run_id())
    with _live_lock:
        _live.add(topo)
    try:
        _build(topo)
    except NetlinkError as error:
        topo.teardown()
        raise TestbedError(
            f"building topology {spec.name!r} failed while {topo.step}: the kernel said "
            f"{os.strerror(error.code) if error.code else error} (errno {error.code}); "
            "nothing was left behind"
        ) from error
    except BaseException:
        topo.teardown()
        raise
    return topo


def _require_tools(spec: TopologySpec) -> None:
    needs_nft = any(link.props.loss for link in spec.links) or any(
        host.functions for host in spec.hosts
    )
    if needs_nft:
        nft.nft_binary()


def _ns_name(topo: Topology, host: str) -> str:
    return f"{PREFIX}{topo.run_id}-{host}"


def _build(topo: Topology) -> None:
    spec = topo.spec
    needs_delay_box = not shaping.netem_available()
    for host in spec.hosts:
        topo.step = f"creating the namespace of host {host.name!r}"
        with shielded():  # made and recorded, or neither
            ns = Namespace.create(_ns_name(topo, host.name))
            topo._namespaces.append(ns)
        with ns.entered():
            ipr = cast(IPRoute, NetlinkIn(ns, IPRoute()))  # calls from any thread stay in ns
            _write_sysctls(_base_sysctls(host))
        topo.hosts[host.name] = HostHandle(host, ns, ipr)

    for link in spec.links:
        ha, hb = topo.hosts[link.a.host], topo.hosts[link.b.host]
        topo.step = f"creating link {link.name!r}"
        mtu = link.props.mtu
        live_link = LinkHandle(topo, link, _iface(link.a, link, -1), _iface(link.b, link, -1))
        topo.links[link.name] = live_link
        if link.props.delay is None or not needs_delay_box:
            _add_veth(ha.ipr, link.a.ifname, link.b.ifname, hb.ns, mtu)
            continue
        # a/ifname <-> box/a ... box/b <-> b/ifname; the box forwards in userspace.
        with shielded():
            box_ns = Namespace.create(_ns_name(topo, f"d-{link.name}"))
            topo._namespaces.append(box_ns)
        with box_ns.entered():
            box_ipr = cast(IPRoute, NetlinkIn(box_ns, IPRoute()))
        try:
            _add_veth(ha.ipr, link.a.ifname, "a", box_ns, mtu)
            _add_veth(box_ipr, "b", link.b.ifname, hb.ns, mtu)
            for ifname in ("a", "b"):
                box_ipr.link("set", ifname=ifname, state="up", promiscuity=1)
        finally:
            box_ipr.close()
        with box_ns.entered():
            _write_sysctls({"net.ipv6.conf.all.disable_ipv6": "1"})
            for ifname in ("a", "b"):
                _linux.disable_offloads(ifname)
        live_link.delay_box = _start_delay_box(box_ns, link.props)

    # Interfaces got kernel-chosen indexes: one dump per namespace learns them.
    for name, handle in topo.hosts.items():
        indexes = {msg.get("ifname"): msg["index"] for msg in handle.ipr.get_links()}
        for live in topo.links.values():
            for iface in (live.a, live.b):
                if iface.host == name:
                    iface.index = indexes[iface.ifname]
                    handle.interfaces[iface.ifname] = iface

    for handle in topo.hosts.values():
        topo.step = f"configuring addresses and routes of host {handle.name!r}"
        _configure_host(topo, handle)
    for live in topo.links.values():
        topo.step = f"applying rate, loss and delay to link {live.name!r}"
        live._apply_impairments()
        if live.rate is not None:
            for iface in (live.a, live.b):
                live._apply_qdisc(iface)
    _configure_middleboxes(topo)
    topo.step = "waiting for every link to be operational"
    _wait_operational(topo, [end for live in topo.links.values() for end in (live.a, live.b)])


def _wait_operational(topo: Topology, ends: list[Interface]) -> None:
    """Return once every end's operstate is UP. A veth whose carrier has just come on
    keeps its noop qdisc, which drops everything sent, until the kernel's linkwatch work
    has run, and that work waits for a CPU: under load, 7 of 100 datagrams sent right
    after a build were lost, the first SYN of a case among them. Polls netlink (a few
    ms, normally) up to LINK_UP_TIMEOUT, then names the interfaces that stayed down."""
    deadline = time.monotonic() + LINK_UP_TIMEOUT
    pending = list(ends)
    while True:
        pending = [end for end in pending if _operstate(topo, end) != "UP"]
        if not pending:
            return
        if time.monotonic() > deadline:
            names = ", ".join(f"{end.host}/{end.ifname}" for end in pending)
            raise TestbedError(
                f"{names}: not operational (operstate UP) {LINK_UP_TIMEOUT:g} s after "
                "being set up; the kernel's linkwatch work has not run (is the machine "
                "overloaded?)"
            )
        time.sleep(LINK_UP_POLL)


def _operstate(topo: Topology, end: Interface) -> str:
    [msg] = topo.hosts[end.host].ipr.link("get", index=end.index)
    return str(msg.get("operstate"))


def _add_veth(ipr: IPRoute, ifname: str, peer: str, peer_ns: Namespace, mtu: int) -> None:
    """A veth pair: `ifname` (up) in `ipr`'s namespace, `peer` created straight in peer_ns."""
    ipr.link(
        "add",
        ifname=ifname,
        kind="veth",
        mtu=mtu,
        state="up",
        peer={"ifname": peer, "net_ns_fd": peer_ns.fd, "mtu": mtu},
    )


def _iface(end: End, link: Link, index: int) -> Interface:
    addresses = [parse_address(text, f"{end.host}/{end.ifname}") for text in end.addresses]
    return Interface(end.host, end.ifname, index, addresses, list(end.gateways), link.name, False)


def _base_sysctls(host: Host) -> dict[str, str]:
    values = {
        # Addresses are usable at once (no duplicate address detection), and survive
        # a link going down so that up() restores the host as it was.
        "net.ipv6.conf.default.accept_dad": "0",
        "net.ipv6.conf.all.accept_dad": "0",
        "net.ipv6.conf.all.keep_addr_on_down": "1",
        "net.ipv6.conf.default.accept_ra": "0",
        "net.ipv4.conf.all.rp_filter": "0",
        "net.ipv4.conf.default.rp_filter": "0",
    }
    if host.role is not Role.HOST:
        values["net.ipv4.ip_forward"] = "1"
        values["net.ipv6.conf.all.forwarding"] = "1"
    if any(isinstance(f, StripMptcp) and f.after_handshake for f in host.functions):
        values["net.netfilter.nf_conntrack_acct"] = "1"
    values.update(dict(host.sysctls))
    return values


def _write_sysctls(values: dict[str, str]) -> None:
    for key, value in values.items():
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            with open(path, "w") as f:
                f.write(value)
        except FileNotFoundError:
            if key.startswith("net.netfilter."):
                # nf_conntrack loads on first use; the nft ruleset that needs it loads it.
                continue
            raise TopologyError(f"sysctl {key} does not exist in this kernel") from None


def _configure_host(topo: Topology, host: HostHandle) -> None:
    ipr = host.ipr
    ipr.link("set", index=1, state="up")
    for iface in host.interfaces.values():
        link = topo.links[iface.link]
        if iface is link.b:  # the a end was created up
            ipr.link("set", index=iface.index, state="up")
        iface.bare = host.spec.bare
        if host.spec.bare:
            with host.ns.entered():
                _write_sysctls({f"net.ipv6.conf.{iface.ifname}.disable_ipv6": "1"})
            continue
        for address in iface.addresses:
            ipr.addr(
                "add",
                index=iface.index,
                address=str(address.ip),
                prefixlen=address.network.prefixlen,
                flags=IFA_F_NODAD if address.version == 6 else 0,
            )
    # Raw-frame users need MTU-sized frames with valid checksums: switch offloads off on
    # both ends of every link that touches a bare host, and on links through a delay box.
    with host.ns.entered():
        for iface in host.interfaces.values():
            link = topo.links[iface.link]
            if (
                link.a.host in _bare_hosts(topo)
                or link.b.host in _bare_hosts(topo)
                or link.delay_box
            ):
                _linux.disable_offloads(iface.ifname)
    if not host.spec.bare:
        _install_routes(host)


def _bare_hosts(topo: Topology) -> set[str]:
    return {h.name for h in topo.spec.hosts if h.bare}


def _install_routes(host: HostHandle, only: str | None = None) -> None:
    """Default routes, static routes, and per-source policy routing when multi-homed.

    Each addressed interface of a multi-homed end host gets its own table holding its
    connected prefixes and its gateway, and a rule sends traffic from its addresses
    there: a subflow bound to an address then leaves through that address's interface.
    """
    ipr = host.ipr
    addressed = [iface for iface in host.interfaces.values() if iface.addresses]
    multi_homed = host.spec.role is Role.HOST and len(addressed) > 1
    default_set: set[int] = set()
    for position, iface in enumerate(addressed):
        table = POLICY_TABLE_BASE + position
        host.policy_tables[iface.ifname] = table
        if only is not None and iface.ifname != only:
            # Keep track of which family already has its main-table default route.
            default_set |= {ipaddress.ip_address(g).version for g in iface.gateways}
            continue
        for gateway in iface.gateways:
            version = ipaddress.ip_address(gateway).version
            if version not in default_set:
                ipr.route(
                    "replace",
                    dst="default",
                    family=_family(version),
                    gateway=gateway,
                    oif=iface.index,
                )
                default_set.add(version)
        if not multi_homed:
            continue
        for address in iface.addresses:
            family = _family(address.version)
            ipr.route(
                "replace",
                dst=str(address.network.network_address),
                dst_len=address.network.prefixlen,
                family=family,
                oif=iface.index,
                table=table,
                scope=253,  # link
                prefsrc=str(address.ip),
            )
            rules = host.spec.source_rules
            if rules is not None and not any(ipaddress.ip_address(r) == address.ip for r in rules):
                continue
            with contextlib.suppress(Exception):  # replaced on up(): may already exist
                ipr.rule(
                    "add",
                    family=family,
                    src=str(address.ip),
                    src_len=address.max_prefixlen,
                    table=table,
                    priority=POLICY_RULE_PRIORITY_BASE + position,
                )
        for gateway in iface.gateways:
            version = ipaddress.ip_address(gateway).version
            ipr.route(
                "replace",
                dst="default",
                family=_family(version),
                gateway=gateway,
                oif=iface.index,
                table=table,
            )
        if not any(ipaddress.ip_address(g).version == 4 for g in iface.gateways) and any(
            a.version == 4 for a in iface.addresses
        ):
            # No gateway: an on-link default keeps traffic from this address on this
            # interface even towards the peer's other addresses. The peer (Linux, or our
            # stack) answers ARP for any of its addresses on any interface.
            ipr.route(
                "replace",
                dst="default",
                family=socket.AF_INET,
                oif=iface.index,
                table=table,
                scope=253,
            )
    if only is None:
        for route in host.spec.routes:
            network = ipaddress.ip_network(route.destination)
            ipr.route(
                "replace",
                dst=str(network.network_address),
                dst_len=network.prefixlen,
                family=_family(network.version),
                gateway=route.gateway,
            )


def _family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


def _configure_middleboxes(topo: Topology) -> None:
    for host in topo.hosts.values():
        if not host.spec.functions:
            continue
        nat = [f.outside for f in host.spec.functions if isinstance(f, Nat)]
        strips = [f for f in host.spec.functions if isinstance(f, StripMptcp)]
        script = nft.middlebox(nat, bool(strips), any(f.after_handshake for f in strips))
        nft.apply(host.ns, script)
        if any(f.after_handshake for f in strips):
            # nf_conntrack is loaded now: switch on the packet counters the rule reads.
            with host.ns.entered():
                _write_sysctls({"net.netfilter.nf_conntrack_acct": "1"})


def _start_delay_box(ns: Namespace, props: LinkProps) -> DelayBox:
    delay = parse_duration(props.delay) if props.delay else 0.0
    jitter = parse_duration(props.jitter) if props.jitter else 0.0
    with ns.entered():
        try:
            pid, control, replies = delay_element.start("a", "b", delay, jitter)
        except OSError as error:
            raise TestbedError(
                f"the delay element of namespace {ns.name} failed: {error}"
            ) from None
    return DelayBox(ns, pid, control, replies)


@atexit.register
def _teardown_all() -> None:
    """Last resort on interpreter exit (including after Ctrl-C): remove what is still live."""
    with _live_lock:
        live = list(_live)
    for topo in live:
        with contextlib.suppress(Exception):
            topo.teardown()


@contextlib.contextmanager
def built(spec: TopologySpec) -> Iterator[Topology]:
    topo = build(spec)
    try:
        yield topo
    finally:
        topo.teardown()
