"""Command-line parsing of the stack's `serve` and `connect` (the harness depends on these flags).

python -m stack serve   --netns NAME --interface IFNAME=ADDR/PLEN[,gw=ADDR][,subflow]
                        [,signal][,backup][,fullmesh][,id=N][,port=P] [--interface ...]
                        --port PORT [--bind ADDR] [--version 0|1] [--mode sink|echo|source]
                        [--bytes N]
                        [--limits SUBFLOWS,ADD_ADDR_ACCEPTED] [--scheduler NAME] [--cc NAME]
                        [--checksum] [--add-addr-timeout S]
                        [--syn-retrans-before-fallback N] [--syn-retries N]
                        [--control stdin]
python -m stack connect ... --to ADDR:PORT

Endpoint `id=` and `port=` have the kernel's meaning (`ip mptcp endpoint add ... id N
port P`): the ID is the address ID in ADD_ADDR, MP_JOIN and REMOVE_ADDR; a port needs
`signal` and is announced in the ADD_ADDR, and the host takes joins on it. Addresses
without an `id=` take the lowest free IDs in declaration order.
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from stack.mptcp.pm import Endpoint, Limits, PathManagerError
from stack.mptcp.sched import SCHEDULERS
from stack.route import InterfaceConfig, RoutingError

T = TypeVar("T")
ENDPOINT_FLAGS = ("subflow", "signal", "backup", "fullmesh")
CONGESTION_CONTROLS = ("lia", "reno")
MODES = ("sink", "echo", "source", "close-unread", "abort")


class CliError(ValueError):
    """A flag the stack cannot honour; the message names it."""


@dataclass(frozen=True)
class InterfaceSpec:
    config: InterfaceConfig
    flags: frozenset[str]
    id: int | None = None  # the endpoint's address ID; None: the lowest free one
    port: int | None = None  # announced with the address (signal endpoints only)


def parse_interface(text: str) -> InterfaceSpec:
    name, sep, rest = text.partition("=")
    fields = rest.split(",") if sep else []
    flags = frozenset(f for f in fields[1:] if f in ENDPOINT_FLAGS)
    values = dict(f.split("=", 1) for f in fields[1:] if "=" in f)
    unknown = [f for f in fields[1:] if f not in ENDPOINT_FLAGS and "=" not in f]
    unknown += [f"{key}=" for key in values if key not in ("gw", "id", "port")]
    if unknown:
        raise CliError(
            f"--interface {text!r}: unknown flag(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(ENDPOINT_FLAGS)}, gw=ADDR, id=N, port=P"
        )
    plain = ",".join([fields[0], *[f for f in fields[1:] if f.startswith("gw=")]]) if fields else ""
    try:
        config = InterfaceConfig.parse(f"{name}={plain}" if sep else text)
    except RoutingError as error:
        raise CliError(f"--interface: {error}") from None
    address_id = _bounded(text, "id", values.get("id"), 1, 255)
    port = _bounded(text, "port", values.get("port"), 1, 65535)
    if port is not None and "signal" not in flags:
        # as the kernel: "flags must have signal when using port"
        raise CliError(f"--interface {text!r}: port={port} needs the signal flag")
    return InterfaceSpec(config, flags, address_id, port)


def _bounded(text: str, key: str, value: str | None, low: int, high: int) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise CliError(f"--interface {text!r}: {key}={value!r} is not a number") from None
    if not low <= number <= high:
        raise CliError(f"--interface {text!r}: {key}={number} not in {low}..{high}")
    return number


def parse_limits(text: str) -> Limits:
    try:
        subflows, accepted = (int(v) for v in text.split(","))
        return Limits(subflows=subflows, add_addr_accepted=accepted)
    except ValueError as error:
        if isinstance(error, PathManagerError):
            raise CliError(f"--limits: {error}") from None
        raise CliError(
            f"--limits {text!r}: expected SUBFLOWS,ADD_ADDR_ACCEPTED, e.g. 2,2"
        ) from None


def parse_destination(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """ADDR:PORT, with IPv6 as [ADDR]:PORT."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise CliError(f"--to {text!r}: expected ADDR:PORT (IPv6: [ADDR]:PORT)")
    host = host.strip("[]")
    try:
        address = ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise CliError(f"--to {text!r}: expected ADDR:PORT (IPv6: [ADDR]:PORT)") from None
    if not 1 <= number <= 65535:
        raise CliError(f"--to {text!r}: port {number} not in 1..65535")
    return address, number


def endpoints_of(interfaces: list[InterfaceSpec]) -> list[Endpoint]:
    """Path-manager endpoints, one per address: the given `id=`s, and for the rest the
    lowest free IDs in declaration order (so without any `id=`, 1, 2, ... as before)."""
    given = [spec.id for spec in interfaces if spec.id is not None]
    twice = sorted({i for i in given if given.count(i) > 1})
    if twice:
        raise CliError(f"--interface: address ID(s) {twice} given to more than one address")
    free = (i for i in range(1, 256) if i not in given)
    endpoints = []
    for spec in interfaces:
        endpoints.append(
            Endpoint(
                spec.id if spec.id is not None else next(free, 0),
                spec.config.address.ip,
                spec.config.ifname,
                signal="signal" in spec.flags,
                subflow="subflow" in spec.flags,
                backup="backup" in spec.flags,
                fullmesh="fullmesh" in spec.flags,
                port=spec.port,
            )
        )
    return endpoints


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stack",
        description="A userspace MPTCP host (RFC 6824 v0, RFC 8684 v1) in a network namespace.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command, help_text in (
        ("serve", "accept connections until SIGTERM"),
        ("connect", "open one connection"),
    ):
        p = sub.add_parser(command, help=help_text)
        p.add_argument("--netns", help="network namespace to work in (as `ip netns` names it)")
        p.add_argument(
            "--interface",
            action="append",
            required=True,
            type=_wrap(parse_interface),
            metavar="IFNAME=ADDR/PLEN[,gw=ADDR][,subflow][,signal][,backup][,fullmesh]"
            "[,id=N][,port=P]",
            help="an interface the stack owns and one of its addresses, with endpoint flags, "
            "address ID and (signal only) the port announced and taken joins on, as `ip "
            "mptcp endpoint add` (repeat for more addresses or interfaces)",
        )
        if command == "serve":
            p.add_argument("--port", type=_port, required=True, help="port to listen on")
            p.add_argument(
                "--bind", default=None, metavar="ADDR",
                help="listen at this local address only (default: every address); "
                "connections and joins to another address are reset",
            )  # fmt: skip
        else:
            p.add_argument(
                "--to", type=_wrap(parse_destination), required=True, metavar="ADDR:PORT",
                help="the peer to connect to",
            )  # fmt: skip
        p.add_argument("--version", type=int, choices=(0, 1), default=1, help="MPTCP version")
        p.add_argument(
            "--mode", choices=MODES, default="sink" if command == "serve" else "source",
            help="sink: read to EOF; echo: return what arrives; source: send --bytes; "
            "close-unread: close as soon as data arrives, without reading it (an abortive "
            "close: MP_FASTCLOSE, as a kernel socket closed with unread data); abort: read "
            "what arrives first, then abort (MP_FASTCLOSE, as close() with SO_LINGER 0)",
        )  # fmt: skip
        p.add_argument("--bytes", type=_non_negative, default=0, help="bytes to send as source")
        p.add_argument(
            "--seed", type=_non_negative, default=None,
            help="source: send the random bytes of this seed instead of the testbed's seeded "
            "stream (receivers then check only the SHA-256)",
        )  # fmt: skip
        p.add_argument(
            "--limits", type=_wrap(parse_limits), default=Limits(),
            metavar="SUBFLOWS,ADD_ADDR_ACCEPTED", help="path-manager limits (default 2,0)",
        )  # fmt: skip
        p.add_argument("--scheduler", choices=tuple(SCHEDULERS), default="lowest-rtt")
        p.add_argument("--cc", choices=CONGESTION_CONTROLS, default="lia")
        p.add_argument(
            "--checksum", action="store_true",
            help="require DSS checksums (as net.mptcp.checksum_enabled=1): A in the SYN and "
            "SYN/ACK, a checksum on every mapping",
        )  # fmt: skip
        p.add_argument(
            "--deny-join-initial-address", action="store_true",
            help="set C in MP_CAPABLE: peers must not join this host's initial address and "
            "port (as net.mptcp.allow_join_initial_addr_port=0; joins there are still "
            "taken, as Linux takes them)",
        )  # fmt: skip
        p.add_argument(
            "--add-addr-timeout", type=_seconds, default=None, metavar="S",
            help="resend an unechoed ADD_ADDR every S seconds, at most 3 times, 0: never "
            "(as net.mptcp.add_addr_timeout); default: after 1 s, doubling",
        )  # fmt: skip
        p.add_argument(
            "--syn-retrans-before-fallback", type=int, default=2, metavar="N",
            help="SYN + MP_CAPABLE retransmissions before the SYN goes without MP_CAPABLE "
            "and the connection is plain TCP (blackhole fallback; as "
            "net.mptcp.syn_retrans_before_tcp_fallback; >= 128: never; default 2)",
        )  # fmt: skip
        p.add_argument(
            "--syn-retries", type=int, default=6, metavar="N",
            help="SYN retransmissions before a connection or join attempt gives up (as "
            "net.ipv4.tcp_syn_retries; default 6, about 127 s; 1: 3 s)",
        )  # fmt: skip
        p.add_argument(
            "--control", choices=("stdin",), default=None,
            help="read JSON commands from stdin while running, one per line, each answered "
            'by one JSON line {"event": "control", "ok": ...} on stdout: '
            '{"cmd": "set_backup", "address": A, "backup": true|false} (MP_PRIO on every '
            'subflow from A), {"cmd": "remove_endpoint", "address": A} (REMOVE_ADDR, its '
            'subflows reset), {"cmd": "add_endpoint", "address": A, "flags": [...], '
            '"id": N, "port": P} (A: an --interface address without endpoint flags)',
        )  # fmt: skip
        p.add_argument(
            "--v0-policy", choices=("fallback", "retry-v0"), default="fallback",
            help="a v1 initiator whose SYN/ACK lacks MP_CAPABLE: fall back or retry with v0",
        )  # fmt: skip
        p.add_argument("--timeout", type=float, default=120.0, help="give up after S seconds")
    return parser


def _wrap(parse: Callable[[str], T]) -> Callable[[str], T]:
    """Turn our CliError into argparse's error, so a bad flag gets usage and exit 2."""

    def wrapped(text: str) -> T:
        try:
            return parse(text)
        except CliError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    wrapped.__name__ = parse.__name__
    return wrapped


def _number(kind: Callable[[str], float], text: str, low: float, high: float,
            what: str) -> float:  # fmt: skip
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} {text!r} is not a number") from None
    if not low <= value <= high:  # NaN fails too
        raise argparse.ArgumentTypeError(f"{what} {value} not in {low}..{high}")
    return value


def _port(text: str) -> int:
    return int(_number(int, text, 1, 65535, "port"))


def _seconds(text: str) -> float:
    return _number(float, text, 0, 3600, "seconds")


def _non_negative(text: str) -> int:
    return int(_number(int, text, 0, 1 << 62, "byte count"))
