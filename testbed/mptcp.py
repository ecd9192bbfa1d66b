"""Kernel MPTCP control for one namespace, through netlink, never by parsing `ip` output.

- limits and endpoints: the `mptcp_pm` generic netlink family (pyroute2's `MPTCP`),
  plus MPTCP_PM_CMD_SET_FLAGS (no pyroute2 wrapper), which flips an endpoint's backup
  flag and makes the kernel send MP_PRIO on the live subflows that use it;
- `net.*` sysctls of the namespace;
- the `MPTcpExt*` MIB counters of the namespace, and the ones that moved around a block;
- connections and subflows from sock_diag (NETLINK_SOCK_DIAG), read with our own small
  parser (`_sock_diag`) rather than pyroute2's `DiagSocket`, because:
  * an MPTCP connection (the msk) is only dumped when the request carries
    INET_DIAG_REQ_PROTOCOL = IPPROTO_MPTCP (262 does not fit the u8 `sdiag_protocol`),
    which `DiagSocket` cannot send; its INET_DIAG_INFO is `struct mptcp_info`;
  * each subflow is a TCP socket whose INET_DIAG_ULP_INFO nests the ULP name "mptcp" and
    MPTCP_SUBFLOW_ATTR_* (tokens, address IDs, MPTCP_SUBFLOW_FLAG_* with the backup bits),
    and whose INET_DIAG_INFO is `struct tcp_info` (bytes acked/received/sent).

Layouts come from include/uapi/linux/{inet_diag,mptcp,tcp}.h of Linux 6.18. Only the
fields listed in `testbed.mptcp_info.MPTCP_INFO_FIELDS` and `_TCP_INFO` are read; a
shorter struct from an older kernel leaves the missing ones at 0.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import struct
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST, genlmsg, nla
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic.mptcp import (
    MPTCP,
    MPTCP_PM_CMD_ADD_ADDR,
    MPTCP_PM_CMD_DEL_ADDR,
    MPTCP_PM_CMD_SET_FLAGS,
)

from testbed.errors import KernelMptcpError
from testbed.mptcp_info import (  # the rest re-exported: callers import them from here
    IPPROTO_MPTCP,
    MPTCP_INFO,  # noqa: F401
    MPTCP_INFO_FLAG_FALLBACK,
    MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED,  # noqa: F401
    MPTCP_INFO_SIZE,  # noqa: F401
    SOL_MPTCP,  # noqa: F401
    TCP_IS_MPTCP,  # noqa: F401
    parse_mptcp_info,
    unpack_fields,
)
from testbed.netns import Namespace

T = TypeVar("T")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# MPTCP_PM_ADDR_FLAG_* (include/uapi/linux/mptcp.h); "implicit" is set by the kernel only.
FLAG_BITS = {"signal": 1, "subflow": 2, "backup": 4, "fullmesh": 8, "implicit": 16}
SETTABLE_FLAGS = frozenset({"signal", "subflow", "backup", "fullmesh"})


# MPTCP_SUBFLOW_FLAG_* (include/uapi/linux/mptcp.h)
SUBFLOW_FLAG_MCAP_REM = 0x1
SUBFLOW_FLAG_MCAP_LOC = 0x2
SUBFLOW_FLAG_JOIN_REM = 0x4
SUBFLOW_FLAG_JOIN_LOC = 0x8
SUBFLOW_FLAG_BKUP_REM = 0x10
SUBFLOW_FLAG_BKUP_LOC = 0x20
SUBFLOW_FLAG_FULLY_ESTABLISHED = 0x40
SUBFLOW_FLAG_CONNECTED = 0x80
SUBFLOW_FLAG_MAPVALID = 0x100

TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
              6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
              11: "CLOSING", 12: "NEW_SYN_RECV"}  # fmt: skip
TCP_LISTEN = 10


class _PmMessage(genlmsg):
    """pyroute2's mptcp_msg with MPTCP_PM_ADDR_ATTR_IF_IDX encodable (pyroute2 maps it
    as 'hex', which cannot be sent) and the attributes of the userspace PM commands.
    Not a subclass of mptcp_msg: pyroute2 caches the compiled attribute table on the
    class, and a subclass would inherit the parent's."""

    prefix = "MPTCP_PM_ATTR_"
    nla_map = (
        ("MPTCP_PM_ATTR_UNSPEC", "none"),
        ("MPTCP_PM_ATTR_ADDR", "pm_addr"),
        ("MPTCP_PM_ATTR_RCV_ADD_ADDRS", "uint32"),
        ("MPTCP_PM_ATTR_SUBFLOWS", "uint32"),
        ("MPTCP_PM_ATTR_TOKEN", "uint32"),
        ("MPTCP_PM_ATTR_LOC_ID", "uint8"),
        ("MPTCP_PM_ATTR_ADDR_REMOTE", "pm_addr"),
    )

    class pm_addr(nla):
        prefix = "MPTCP_PM_ADDR_ATTR_"
        nla_map = (
            ("MPTCP_PM_ADDR_ATTR_UNSPEC", "none"),
            ("MPTCP_PM_ADDR_ATTR_FAMILY", "uint16"),
            ("MPTCP_PM_ADDR_ATTR_ID", "uint8"),
            ("MPTCP_PM_ADDR_ATTR_ADDR4", "ipaddr"),
            ("MPTCP_PM_ADDR_ATTR_ADDR6", "ipaddr"),
            ("MPTCP_PM_ADDR_ATTR_PORT", "uint16"),
            ("MPTCP_PM_ADDR_ATTR_FLAGS", "uint32"),
            ("MPTCP_PM_ADDR_ATTR_IF_IDX", "int32"),
        )


@dataclass(frozen=True)
class Endpoint:
    """One path-manager endpoint (`ip mptcp endpoint`)."""

    id: int
    address: str
    flags: frozenset[str]
    port: int | None
    ifindex: int | None


@dataclass(frozen=True)
class Subflow:
    """One TCP subflow of a kernel MPTCP connection, as sock_diag reports it."""

    local_address: IPAddress
    local_port: int
    remote_address: IPAddress
    remote_port: int
    state: int  # TCP state (1 = ESTABLISHED)
    token_local: int
    token_remote: int  # the peer's token; 0 on the MP_CAPABLE subflow (only joins carry it)
    id_local: int
    id_remote: int
    flags: int  # MPTCP_SUBFLOW_FLAG_*
    bytes_acked: int  # sent and acknowledged on this subflow (tcpi_bytes_acked)
    bytes_received: int
    bytes_sent: int
    rtt_us: int
    last_data_recv_ms: int = 0  # since data last arrived (tcpi_last_data_recv, jiffies)

    @property
    def state_name(self) -> str:
        return TCP_STATES.get(self.state, str(self.state))

    @property
    def is_join(self) -> bool:
        return bool(self.flags & (SUBFLOW_FLAG_JOIN_LOC | SUBFLOW_FLAG_JOIN_REM))

    @property
    def backup_local(self) -> bool:
        """We asked the peer to treat this subflow as backup (join B bit or MP_PRIO)."""
        return bool(self.flags & SUBFLOW_FLAG_BKUP_LOC)

    @property
    def backup_remote(self) -> bool:
        """The peer asked us to treat this subflow as backup."""
        return bool(self.flags & SUBFLOW_FLAG_BKUP_REM)

    @property
    def fully_established(self) -> bool:
        return bool(self.flags & SUBFLOW_FLAG_FULLY_ESTABLISHED)


@dataclass(frozen=True)
class Connection:
    """One kernel MPTCP connection (the msk), from sock_diag with IPPROTO_MPTCP."""

    token: int
    local_address: IPAddress
    local_port: int
    remote_address: IPAddress
    remote_port: int
    state: int
    subflows: int  # joined subflows, the first not counted (mptcpi_subflows)
    subflows_total: int  # every subflow, the first included (mptcpi_subflows_total, 6.8+)
    flags: int  # MPTCP_INFO_FLAG_*
    bytes_sent: int
    bytes_received: int
    bytes_acked: int

    @property
    def fallback(self) -> bool:
        return bool(self.flags & MPTCP_INFO_FLAG_FALLBACK)

    @property
    def state_name(self) -> str:
        return TCP_STATES.get(self.state, str(self.state))


class KernelMptcp:
    """The kernel's MPTCP in one namespace."""

    def __init__(self, ns: Namespace):
        self.ns = ns
        # No pyroute2 object is kept: pyroute2 0.9 opens a socket per calling thread, in
        # that thread's namespace (one made in the namespace answered other threads with
        # the root's path manager), and its MPTCP object used from a second thread fails
        # with ECONNRESET. Each request opens its own socket inside the namespace.

    def close(self) -> None:
        """Nothing to release: each request has its own socket (kept for callers)."""

    def __enter__(self) -> KernelMptcp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ limits

    def limits(self) -> dict[str, int]:
        """{'subflows': n, 'add_addr_accepted': m}."""
        (msg,) = self._request("show limits", lambda pm: pm.limits("show"))
        return {
            "subflows": msg.get_attr("MPTCP_PM_ATTR_SUBFLOWS"),
            "add_addr_accepted": msg.get_attr("MPTCP_PM_ATTR_RCV_ADD_ADDRS"),
        }

    def set_limits(
        self, *, subflows: int | None = None, add_addr_accepted: int | None = None
    ) -> None:
        values = {"subflows": subflows, "add_addr_accepted": add_addr_accepted}
        values = {k: v for k, v in values.items() if v is not None}
        self._request(f"set limits {values}", lambda pm: pm.limits("set", **values))

    # ------------------------------------------------------------------ endpoints

    def endpoints(self) -> list[Endpoint]:
        result = []
        for msg in self._request("show endpoints", lambda pm: pm.endpoint("show")):
            attrs = dict(msg.get_attr("MPTCP_PM_ATTR_ADDR")["attrs"])
            bits = attrs.get("MPTCP_PM_ADDR_ATTR_FLAGS", 0)
            address = attrs.get("MPTCP_PM_ADDR_ATTR_ADDR4") or attrs.get("MPTCP_PM_ADDR_ATTR_ADDR6")
            index = attrs.get("MPTCP_PM_ADDR_ATTR_IF_IDX")
            if isinstance(index, str):  # pyroute2 decodes the s32 as a hex string
                index = struct.unpack("=i", bytes.fromhex(index.replace(":", "")))[0]
            result.append(
                Endpoint(
                    id=attrs["MPTCP_PM_ADDR_ATTR_ID"],
                    address=str(address),
                    flags=frozenset(n for n, b in FLAG_BITS.items() if bits & b),
                    port=attrs.get("MPTCP_PM_ADDR_ATTR_PORT") or None,
                    ifindex=index or None,
                )
            )
        return sorted(result, key=lambda e: e.id)

    def add_endpoint(
        self,
        address: str,
        *,
        id: int | None = None,
        flags: Iterable[str] = (),
        ifname: str | None = None,
        ifindex: int | None = None,
        port: int | None = None,
    ) -> Endpoint:
        """Add a path-manager endpoint and return it as the kernel lists it.

        `flags` from {'signal', 'subflow', 'backup', 'fullmesh'}; `ifname` (or `ifindex`)
        is the device the kernel binds subflows from this endpoint to.
        """
        flagset = frozenset(flags)
        unknown = flagset - SETTABLE_FLAGS
        if unknown:
            raise KernelMptcpError(
                f"unknown endpoint flags {sorted(unknown)}; use {sorted(SETTABLE_FLAGS)}"
            )
        canonical = str(ipaddress.ip_address(address))
        if ifname is not None:
            ifindex = self._ifindex(ifname)
        attrs: list[tuple[str, Any]] = [*_address_attrs(canonical)]
        attrs.append(("MPTCP_PM_ADDR_ATTR_FLAGS", _flag_bits(flagset)))
        if id is not None:
            attrs.append(("MPTCP_PM_ADDR_ATTR_ID", id))
        if ifindex is not None:
            attrs.append(("MPTCP_PM_ADDR_ATTR_IF_IDX", ifindex))
        if port is not None:
            attrs.append(("MPTCP_PM_ADDR_ATTR_PORT", port))
        self._pm_command(
            MPTCP_PM_CMD_ADD_ADDR, attrs, f"add endpoint {canonical} {sorted(flagset)}"
        )
        for endpoint in self.endpoints():
            # the kernel may spell an address otherwise (::ffff:198.51.100.2 for an
            # IPv4-mapped one), so compare addresses, not their text
            if ipaddress.ip_address(endpoint.address) == ipaddress.ip_address(canonical) and (
                id is None or endpoint.id == id
            ):
                return endpoint
        raise KernelMptcpError(f"endpoint {canonical} was added but the kernel does not list it")

    def delete_endpoint(self, id: int) -> None:
        """Remove an endpoint; the kernel sends REMOVE_ADDR for it on live connections."""
        endpoint = self._endpoint(id)
        target = {("addr6" if ":" in endpoint.address else "addr4"): endpoint.address}
        self._request(f"delete endpoint {id}", lambda pm: pm.endpoint("del", id=id, **target))

    def delete_initial_address(self, address: str) -> None:
        """Stop using `address` as the initial subflows' address (`ip mptcp endpoint
        delete id 0 ADDR`): every connection whose initial subflow is from it sends
        REMOVE_ADDR for address ID 0 and closes that subflow."""
        canonical = str(ipaddress.ip_address(address))
        attrs = [*_address_attrs(canonical), ("MPTCP_PM_ADDR_ATTR_ID", 0)]
        self._pm_command(MPTCP_PM_CMD_DEL_ADDR, attrs, f"delete id 0 {canonical}")

    def flush_endpoints(self) -> None:
        self._request("flush endpoints", lambda pm: pm.endpoint("flush"))

    def set_endpoint_backup(self, id_or_address: int | str, backup: bool) -> Endpoint:
        """Set or clear an endpoint's backup flag (MPTCP_PM_CMD_SET_FLAGS). The kernel
        sends MP_PRIO on every live subflow that uses the endpoint (counter MPPrioTx)."""
        endpoint = self._endpoint(id_or_address)
        flags = (endpoint.flags - {"backup", "implicit"}) | ({"backup"} if backup else set())
        attrs: list[tuple[str, Any]] = [
            *_address_attrs(endpoint.address),
            ("MPTCP_PM_ADDR_ATTR_ID", endpoint.id),
            ("MPTCP_PM_ADDR_ATTR_FLAGS", _flag_bits(flags)),
        ]
        what = f"set backup={backup} on endpoint {endpoint.id} ({endpoint.address})"
        self._pm_command(MPTCP_PM_CMD_SET_FLAGS, attrs, what)
        return self._endpoint(endpoint.id)

    # ------------------------------------------------------------------ sysctls

    def sysctl(self, name: str) -> str:
        """A `net.*` sysctl as the namespace sees it, e.g. 'net.mptcp.enabled'."""
        try:
            with self.ns.entered(), open(_sysctl_path(name)) as f:
                return f.read().strip()
        except FileNotFoundError:
            raise KernelMptcpError(f"sysctl {name} does not exist in this kernel") from None

    def set_sysctl(self, name: str, value: str | int) -> None:
        try:
            with self.ns.entered(), open(_sysctl_path(name), "w") as f:
                f.write(str(value))
        except FileNotFoundError:
            raise KernelMptcpError(f"sysctl {name} does not exist in this kernel") from None
        except OSError as error:
            raise KernelMptcpError(
                f"sysctl {name}={value} in {self.ns.name} refused: {error.strerror}"
            ) from None

    # ------------------------------------------------------------------ counters

    def counters(self) -> dict[str, int]:
        """The MPTcpExt MIB counters, without the prefix (e.g. 'MPJoinSynRx')."""
        with self.ns.entered(), open("/proc/thread-self/net/netstat") as f:
            lines = f.read().splitlines()
        # The file is pairs of lines: "Prefix: names..." then "Prefix: values...".
        for names, values in zip(lines[::2], lines[1::2], strict=False):
            if names.startswith("MPTcpExt:"):
                return dict(zip(names.split()[1:], map(int, values.split()[1:]), strict=True))
        raise KernelMptcpError("no MPTcpExt row in /proc/net/netstat: a kernel without MPTCP?")

    @contextlib.contextmanager
    def counters_delta(self) -> Iterator[dict[str, int]]:
        """`with kernel.counters_delta() as moved:` fills `moved` at the end of the block
        with the counters that changed during it, and by how much."""
        before = self.counters()
        moved: dict[str, int] = {}
        try:
            yield moved
        finally:
            moved.update(counters_diff(before, self.counters()))

    # ------------------------------------------------------------------ sock_diag

    def connections(self) -> list[Connection]:
        """Live MPTCP connections (not listeners) in this namespace."""
        found = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for header, attrs in self._diag(family, IPPROTO_MPTCP):
                if header.state == TCP_LISTEN:
                    continue
                info = parse_mptcp_info(attrs.get(INET_DIAG_INFO, b""))
                found.append(
                    Connection(
                        token=info["token"],
                        local_address=header.local_address,
                        local_port=header.local_port,
                        remote_address=header.remote_address,
                        remote_port=header.remote_port,
                        state=header.state,
                        subflows=info["subflows"],
                        subflows_total=info["subflows_total"],
                        flags=info["flags"],
                        bytes_sent=info["bytes_sent"],
                        bytes_received=info["bytes_received"],
                        bytes_acked=info["bytes_acked"],
                    )
                )
        return found

    def subflows(self, token: int | None = None) -> list[Subflow]:
        """MPTCP subflows in this namespace (only those of connection `token` if given),
        listeners excluded."""
        found = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for header, attrs in self._diag(family, socket.IPPROTO_TCP):
                if header.state == TCP_LISTEN:
                    continue  # a listener carries the mptcp ULP too, with no connection
                subflow = _subflow(header, attrs)
                if subflow is not None and (token is None or subflow.token_local == token):
                    found.append(subflow)
        return found

    # ------------------------------------------------------------------ helpers

    def _diag(self, family: int, protocol: int) -> list[tuple[_DiagHeader, dict[int, bytes]]]:
        try:
            with self.ns.entered():
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
            with sock:
                return _sock_diag(sock, family, protocol)
        except OSError as error:
            raise KernelMptcpError(
                f"sock_diag dump (family {family}, protocol {protocol}) in {self.ns.name} "
                f"failed: {error.strerror or error}"
            ) from None

    def _ifindex(self, ifname: str) -> int:
        try:
            with self.ns.entered():
                return socket.if_nametoindex(ifname)
        except OSError:
            raise KernelMptcpError(f"no interface {ifname!r} in {self.ns.name}") from None

    def _endpoint(self, id_or_address: int | str) -> Endpoint:
        for endpoint in self.endpoints():
            if id_or_address in (endpoint.id, endpoint.address):
                return endpoint
        raise KernelMptcpError(f"no endpoint {id_or_address!r} in {self.ns.name}")

    def _pm_command(self, command: int, addr_attrs: list[tuple[str, Any]], what: str) -> None:
        msg = _PmMessage()
        msg["cmd"] = command
        msg["version"] = 1
        msg["attrs"] = [("MPTCP_PM_ATTR_ADDR", {"attrs": addr_attrs}, 0x8000)]  # NLA_F_NESTED
        self._request(
            what,
            lambda pm: pm.nlm_request(msg, msg_type=pm.prid, msg_flags=NLM_F_REQUEST | NLM_F_ACK),
        )

    def _request(self, what: str, call: Callable[[MPTCP], T]) -> T:
        """call(pm) on a path-manager socket of this namespace's, opened for it."""
        try:
            with self.ns.entered():
                pm = MPTCP()
                try:
                    result = call(pm)
                    if isinstance(result, types.GeneratorType):  # pyroute2 reads lazily
                        result = cast(T, list(result))
                    return result
                finally:
                    pm.close()
        except NetlinkError as error:
            detail = error.args[1] if len(error.args) > 1 else ""
            text = os.strerror(error.code) if error.code else "unknown error"
            if detail and detail != text:
                text = f"{text}: {detail}"
            raise KernelMptcpError(
                f"kernel MPTCP in {self.ns.name} refused to {what}: {text} "
                f"(errno {error.code} {errno.errorcode.get(error.code, '')})"
            ) from None


def counters_diff(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Counters that moved between two `counters()` snapshots, and by how much."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def _flag_bits(flags: Iterable[str]) -> int:
    return sum(FLAG_BITS[f] for f in set(flags))


def _address_attrs(address: str) -> list[tuple[str, Any]]:
    if ":" in address:
        return [("MPTCP_PM_ADDR_ATTR_FAMILY", socket.AF_INET6),
                ("MPTCP_PM_ADDR_ATTR_ADDR6", address)]  # fmt: skip
    return [("MPTCP_PM_ADDR_ATTR_FAMILY", socket.AF_INET), ("MPTCP_PM_ADDR_ATTR_ADDR4", address)]


def _sysctl_path(name: str) -> str:
    if not name.startswith("net.") or "/" in name or ".." in name:
        raise KernelMptcpError(f"sysctl {name!r}: only net.* sysctls are per namespace")
    return "/proc/sys/" + name.replace(".", "/")


# ---------------------------------------------------------------------- sock_diag

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
INET_DIAG_REQ_PROTOCOL = 3  # request attribute: u32 protocol, for numbers above 255
INET_DIAG_INFO = 2  # tcp_info for TCP, mptcp_info for MPTCP
INET_DIAG_ULP_INFO = 19
INET_ULP_INFO_NAME = 1
INET_ULP_INFO_MPTCP = 3
_NLMSGHDR = struct.Struct("=IHHII")
# inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid (48 bytes)
_REQUEST = struct.Struct("=BBBxI48x")
# inet_diag_msg: family, state, timer, retrans; sockid (sport, dport big-endian, src[16],
# dst[16], if, cookie[2]); expires, rqueue, wqueue, uid, inode
_RESPONSE = struct.Struct("=BBBBHH16s16sI8xIIIII")

# struct tcp_info (include/uapi/linux/tcp.h): the few fields reported per subflow
_TCP_INFO = (("last_data_recv", 52, "I"), ("rtt_us", 68, "I"), ("bytes_acked", 120, "Q"),
             ("bytes_received", 128, "Q"), ("bytes_sent", 200, "Q"))  # fmt: skip
# MPTCP_SUBFLOW_ATTR_* inside INET_ULP_INFO_MPTCP
_SUBFLOW_ATTRS = {1: ("token_remote", "I"), 2: ("token_local", "I"), 8: ("flags", "I"),
                  9: ("id_remote", "B"), 10: ("id_local", "B")}  # fmt: skip


@dataclass(frozen=True)
class _DiagHeader:
    family: int
    state: int
    local_address: IPAddress
    local_port: int
    remote_address: IPAddress
    remote_port: int


def _attributes(data: bytes) -> dict[int, bytes]:
    """Netlink attributes (type without the nested/byte-order bits -> payload)."""
    attrs, offset = {}, 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4 or offset + length > len(data):
            break
        attrs[kind & 0x3FFF] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return attrs


def _sock_diag(
    sock: socket.socket, family: int, protocol: int
) -> list[tuple[_DiagHeader, dict[int, bytes]]]:
    """One SOCK_DIAG_BY_FAMILY dump of every state, with INET_DIAG_INFO requested."""
    body = _REQUEST.pack(family, protocol & 0xFF, 1 << (INET_DIAG_INFO - 1), 0xFFFFFFFF)
    if protocol > 0xFF:
        body += struct.pack("=HHI", 8, INET_DIAG_REQ_PROTOCOL, protocol)
    sock.sendto(
        _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY,
                       NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + body,
        (0, 0),
    )  # fmt: skip
    found: list[tuple[_DiagHeader, dict[int, bytes]]] = []
    while True:
        data = sock.recv(1 << 16)
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, offset)
            payload = data[offset + _NLMSGHDR.size : offset + length]
            offset += (length + 3) & ~3
            if kind == NLMSG_DONE:
                return found
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", payload)[0]
                if code in (errno.ENOENT, errno.EINVAL, errno.EOPNOTSUPP):
                    return found  # no diag module for this protocol/family: no sockets
                raise OSError(code, os.strerror(code))
            fam, state, _, _, sport, dport, src, dst, *_ = _RESPONSE.unpack_from(payload)
            size = 4 if fam == socket.AF_INET else 16
            header = _DiagHeader(
                family=fam, state=state,
                local_address=ipaddress.ip_address(src[:size]), local_port=socket.ntohs(sport),
                remote_address=ipaddress.ip_address(dst[:size]), remote_port=socket.ntohs(dport),
            )  # fmt: skip
            found.append((header, _attributes(payload[_RESPONSE.size :])))


def _subflow(header: _DiagHeader, attrs: dict[int, bytes]) -> Subflow | None:
    ulp = _attributes(attrs.get(INET_DIAG_ULP_INFO, b""))
    if ulp.get(INET_ULP_INFO_NAME, b"").rstrip(b"\0") != b"mptcp":
        return None
    values: dict[str, int] = {}
    for kind, payload in _attributes(ulp.get(INET_ULP_INFO_MPTCP, b"")).items():
        if kind in _SUBFLOW_ATTRS:
            name, fmt = _SUBFLOW_ATTRS[kind]
            values[name] = struct.unpack_from("=" + fmt, payload)[0]
    info = unpack_fields(_TCP_INFO, attrs.get(INET_DIAG_INFO, b""))
    return Subflow(
        local_address=header.local_address,
        local_port=header.local_port,
        remote_address=header.remote_address,
        remote_port=header.remote_port,
        state=header.state,
        token_local=values.get("token_local", 0),
        token_remote=values.get("token_remote", 0),
        id_local=values.get("id_local", 0),
        id_remote=values.get("id_remote", 0),
        flags=values.get("flags", 0),
        bytes_acked=info["bytes_acked"],
        bytes_received=info["bytes_received"],
        bytes_sent=info["bytes_sent"],
        rtt_us=info["rtt_us"],
        last_data_recv_ms=info["last_data_recv"],
    )
