"""The interop scenarios: the deployments people run, each configured as a user would
configure the kernel (a stack end gets the same endpoints through its CLI flags).

A scenario is one short function that reads top to bottom: configure both ends, move
data, check the bytes end to end, and judge from evidence outside the implementations
(link counters, captures). Sizes are (full, quick): `--quick` uses the second.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import topologies
from conformance.interop.cell import Cell, CellFailed
from testbed.spec import LinkProps, TopologySpec

MB = 1_000_000
SHAPED = LinkProps(rate="100mbit")
BACKUP_SHARE = 0.02  # a backup path carries less than this share while the primary lives
BOTH_PATHS_SHARE = 0.10  # "both paths carry bytes": each carries at least this share
AGGREGATION_RATIO = 0.95  # goodput against kernel->kernel in the same run
FINISH = 60.0  # s: the longest any transfer here may take


@dataclass(frozen=True)
class Scenario:
    name: str
    setup: str  # how the kernel is configured, in one sentence
    pass_when: str
    topology: Callable[..., TopologySpec]
    run: Callable[[Cell], None]
    quick: bool = True  # part of `--quick`
    exclusive: bool = False  # a throughput or timing figure: runs alone, not beside others
    cross_version: bool = False  # also runs between implementations of different versions
    # "higher": goodput must reach AGGREGATION_RATIO of kernel->kernel; "lower": the
    # figure must not exceed kernel->kernel's
    versus_kernel: tuple[str, str] | None = None


SCENARIOS: dict[str, Scenario] = {}


def scenario(**fields: Any) -> Callable[[Callable[[Cell], None]], Callable[[Cell], None]]:
    def register(run: Callable[[Cell], None]) -> Callable[[Cell], None]:
        name = run.__name__.replace("_", "-")
        SCENARIOS[name] = Scenario(name=name, run=run, **fields)
        return run

    return register


def _user_dual(rate: LinkProps | None = None) -> Callable[..., TopologySpec]:
    props = (rate or LinkProps(), rate or LinkProps())
    return lambda bare: topologies.user_dual_homed(props, bare=bare)


# -- common set-ups --

SERVER = "203.0.113.2"  # user_dual_homed: the server's first address
CLIENT_SECOND = "198.18.0.1"
SERVER_SECOND = "198.18.0.2"


def _join_from_second_interface(cell: Cell, *flags: str) -> None:
    """The usual Linux client: `ip mptcp endpoint add 198.18.0.1 dev eth1 subflow`; the
    server announces nothing. Default limits (2 subflows, no accepted ADD_ADDR)."""
    for end in (cell.client, cell.server):
        end.set_limits(2, 0)
    cell.client.add_endpoint(CLIENT_SECOND, flags={"subflow", *flags}, ifname="eth1")


def _upload(cell: Cell, nbytes: int, address: str = SERVER) -> None:
    cell.start(address, server_mode="sink", client_mode="source", nbytes=nbytes)
    client, server = cell.finish(FINISH)
    cell.check_intact(client, server, nbytes, "upload")
    cell.goodput(server, nbytes)


def _download_started(cell: Cell, nbytes: int) -> None:
    cell.start(SERVER, server_mode="source", client_mode="sink", nbytes=nbytes)


def _download_finished(cell: Cell, nbytes: int) -> None:
    client, server = cell.finish(FINISH)
    cell.check_intact(server, client, nbytes, "download")
    cell.goodput(client, nbytes)


def _need_subflows(cell: Cell, count: int) -> None:
    established = cell.subflows()
    cell.figures["subflows"] = len(established)
    if len(established) != count:
        seen = ", ".join(f"{s.kind} {s.client}->{s.server}" for s in established) or "none"
        raise CellFailed(f"{len(established)} subflows established, expected {count}: {seen}")


def _shares(cell: Cell, host: str, before: dict[str, int]) -> dict[str, float]:
    """Each path's share of the bytes `host` sent since `before` (link counters)."""
    moved = {link: cell.sent_on(link, host) - before[link] for link in before}
    total = sum(moved.values()) or 1
    return {link: sent / total for link, sent in moved.items()}


def _snapshot(cell: Cell, host: str) -> dict[str, int]:
    return {link: cell.sent_on(link, host) for link in ("path1", "path2")}


def _both_paths_carry(cell: Cell, host: str, before: dict[str, int]) -> None:
    shares = _shares(cell, host, before)
    cell.figures.update({f"{link}_share": round(v, 3) for link, v in shares.items()})
    idle = [f"{link} {v:.1%}" for link, v in shares.items() if v < BOTH_PATHS_SHARE]
    if idle:
        raise CellFailed(
            f"a path carried under {BOTH_PATHS_SHARE:.0%} of the {host}'s bytes: {', '.join(idle)}"
        )


# -- the scenarios --


@scenario(
    setup="single path; the client sends 20 MB, the server echoes it",
    pass_when="bytes intact both ways (SHA-256 at both ends); MPTCP in use, or a fallback "
    "both ends agree on between versions (RFC 8684 §3.1)",
    topology=lambda bare: topologies.single_path(bare=bare),
    cross_version=True,
)
def transfer(cell: Cell) -> None:
    nbytes = cell.size(20 * MB, 2 * MB)
    cell.start("192.0.2.2", server_mode="echo", client_mode="source", nbytes=nbytes)
    client, server = cell.finish(FINISH)
    cell.check_intact(client, server, nbytes, "client to server")
    cell.check_intact(server, client, nbytes, "server to client")
    cell.goodput(client, nbytes)
    cell.figures["mptcp"] = {"client": client.mptcp, "server": server.mptcp}
    common = cell.client.versions & cell.server.versions
    if client.mptcp is not None and server.mptcp is not None and client.mptcp != server.mptcp:
        raise CellFailed(
            f"the ends disagree on MPTCP: client in use {client.mptcp}, server {server.mptcp}"
        )
    if common and client.mptcp is False:
        raise CellFailed(f"fell back to TCP although both speak v{max(common)}")


@scenario(
    setup="client: `subflow` endpoint on eth1 (198.18.0.1, with a source rule); server: "
    "no endpoints, no policy rules; both paths tbf 100 Mbit/s; upload",
    pass_when=f"2 subflows; each path carries ≥ {BOTH_PATHS_SHARE:.0%} of the bytes; intact",
    topology=_user_dual(SHAPED),
)
def join_same_address(cell: Cell) -> None:
    _join_from_second_interface(cell)
    before = _snapshot(cell, "client")
    _upload(cell, cell.size(20 * MB, 6 * MB))
    _need_subflows(cell, 2)
    _both_paths_carry(cell, "client", before)


@scenario(
    setup="server: `signal` endpoint on eth1 (198.18.0.2); client: no endpoints, limits "
    "subflows 2, add_addr_accepted 1; both paths tbf 100 Mbit/s; upload",
    pass_when="the client joins the announced address; each path carries "
    f"≥ {BOTH_PATHS_SHARE:.0%} of the bytes; intact",
    topology=_user_dual(SHAPED),
)
def join_announced(cell: Cell) -> None:
    cell.client.set_limits(2, 1)
    cell.server.set_limits(2, 0)
    cell.server.add_endpoint(SERVER_SECOND, flags={"signal"}, ifname="eth1")
    before = _snapshot(cell, "client")
    _upload(cell, cell.size(20 * MB, 6 * MB))
    _need_subflows(cell, 2)
    if not any(
        s.kind == "MP_JOIN" and s.server.startswith(SERVER_SECOND + ":") for s in cell.subflows()
    ):
        raise CellFailed(f"no join to the announced {SERVER_SECOND}")
    _both_paths_carry(cell, "client", before)


ANNOUNCED_PORT = 10100  # the port of a `signal port` endpoint: its own listener


@scenario(
    setup="server: `signal port 10100` endpoint on eth1 (198.18.0.2); client: no "
    "endpoints, limits subflows 2, add_addr_accepted 1; both paths tbf 100 Mbit/s; upload",
    pass_when=f"the client joins the announced address at port {ANNOUNCED_PORT}; each path "
    f"carries ≥ {BOTH_PATHS_SHARE:.0%} of the bytes; intact",
    topology=_user_dual(SHAPED),
)
def join_announced_port(cell: Cell) -> None:
    cell.client.set_limits(2, 1)
    cell.server.set_limits(2, 0)
    cell.server.add_endpoint(SERVER_SECOND, flags={"signal"}, port=ANNOUNCED_PORT, ifname="eth1")
    before = _snapshot(cell, "client")
    _upload(cell, cell.size(20 * MB, 6 * MB))
    _need_subflows(cell, 2)
    joined = f"{SERVER_SECOND}:{ANNOUNCED_PORT}"
    if not any(s.kind == "MP_JOIN" and s.server == joined for s in cell.subflows()):
        seen = sorted(s.server for s in cell.subflows() if s.kind == "MP_JOIN")
        raise CellFailed(f"no join to the announced {joined} (joins to: {seen or 'none'})")
    _both_paths_carry(cell, "client", before)


@scenario(
    setup="client: `subflow fullmesh` endpoints on both addresses; server: `signal` "
    "endpoint on eth1; limits 4 subflows, 4 accepted ADD_ADDR on both",
    pass_when="4 subflows (every client address to every server address); intact",
    topology=_user_dual(),
)
def fullmesh(cell: Cell) -> None:
    for end in (cell.client, cell.server):
        end.set_limits(4, 4)
    cell.client.add_endpoint("203.0.113.1", flags={"subflow", "fullmesh"}, ifname="eth0")
    cell.client.add_endpoint(CLIENT_SECOND, flags={"subflow", "fullmesh"}, ifname="eth1")
    cell.server.add_endpoint(SERVER_SECOND, flags={"signal"}, ifname="eth1")
    _upload(cell, cell.size(20 * MB, 4 * MB))
    _need_subflows(cell, 4)


@scenario(
    setup="as join-same-address; each path tbf 100 Mbit/s; the client uploads 60 MB",
    pass_when=f"intact, 2 subflows, goodput ≥ {AGGREGATION_RATIO} x kernel→kernel in the same run",
    topology=_user_dual(SHAPED),
    quick=False,
    exclusive=True,
    versus_kernel=("goodput_MBps", "higher"),
)
def aggregation(cell: Cell) -> None:
    _join_from_second_interface(cell)
    _upload(cell, 60 * MB)
    _need_subflows(cell, 2)


@scenario(
    setup="client: second endpoint `subflow backup` on eth1; upload",
    pass_when=f"the backup path carries < {BACKUP_SHARE:.0%} of the client's bytes while "
    "the first path is up; intact",
    topology=_user_dual(),
)
def backup_own(cell: Cell) -> None:
    _join_from_second_interface(cell, "backup")
    before = _snapshot(cell, "client")
    _upload(cell, cell.size(20 * MB, 6 * MB))
    _need_subflows(cell, 2)
    _backup_idle(cell, "client", before)


@scenario(
    setup="client: second endpoint `subflow backup` on eth1 (its join SYN has B=1); the "
    "server sends (download)",
    pass_when=f"the server sends < {BACKUP_SHARE:.0%} of its bytes on the backup path; intact",
    topology=_user_dual(),
)
def backup_peer(cell: Cell) -> None:
    _join_from_second_interface(cell, "backup")
    before = _snapshot(cell, "server")
    nbytes = cell.size(20 * MB, 6 * MB)
    _download_started(cell, nbytes)
    _download_finished(cell, nbytes)
    _need_subflows(cell, 2)
    _backup_idle(cell, "server", before)


def _backup_idle(cell: Cell, host: str, before: dict[str, int]) -> None:
    share = _shares(cell, host, before)["path2"]
    cell.figures["backup_share"] = round(share, 4)
    if share >= BACKUP_SHARE:
        raise CellFailed(f"the backup path carried {share:.1%} of the {host}'s bytes")


@scenario(
    setup="as join-same-address, both paths tbf 100 Mbit/s; the server sends; "
    "mid-transfer the client marks its eth1 endpoint backup (MP_PRIO)",
    pass_when=f"from 0.5 s after the switch, path2 carries < {BACKUP_SHARE:.0%} of the "
    "server's bytes; intact",
    topology=_user_dual(SHAPED),
)
def mp_prio_live(cell: Cell) -> None:
    _join_from_second_interface(cell)
    nbytes = cell.size(40 * MB, 20 * MB)
    start = _snapshot(cell, "server")
    _download_started(cell, nbytes)
    cell.wait_for(
        lambda: cell.sent_on("path2", "server") - start["path2"] > 500_000,
        10,
        "the server sending on both paths",
    )
    cell.client.set_backup(CLIENT_SECOND, True)
    switched = time.monotonic()
    # The measurement window opens 0.5 s after the switch (the figure): not a
    # synchronisation, a defined interval of the measurement.
    cell.wait_for(lambda: time.monotonic() - switched >= 0.5, 1, "0.5 s")
    after = _snapshot(cell, "server")
    _download_finished(cell, nbytes)
    moved = sum(cell.sent_on(link, "server") - after[link] for link in after)
    cell.figures["bytes_after_window"] = moved
    if moved < nbytes // 5:
        raise CellFailed(f"only {moved} bytes moved after the window opened: too few to judge")
    _backup_idle(cell, "server", after)


# Cuts per cell. The kernel as sender resumes after ~60 ms or, in about a fifth of the
# cuts, after 250 ms or more (its msk timer then runs at TCP_RTO_MIN: no tail loss probe
# was pending), whatever the receiver. The cell is judged against kernel->kernel's cuts
# by a rank test (`matrix.judge_against_kernel`, `ranktest`): 5 cuts keep its false
# failures at 1/252 and catch a stack slower than the kernel in every cut; finer
# differences need `bench.bench_failover_judge`'s 50 cuts.
FAILOVER_SAMPLES = 5


def _failover(cell: Cell, cut: Callable[[bool], None]) -> None:
    """The client uploads over path1 with a backup subflow on path2; path1 is cut when
    a quarter of the data is through. A sample is the time from the cut until path2
    carries data (32 KB more than at the cut), from the link counters. FAILOVER_SAMPLES
    connections, path1 restored between them; the figure is their median."""
    _join_from_second_interface(cell, "backup")
    nbytes = cell.size(20 * MB, 10 * MB)
    samples = []
    for sample in range(1, FAILOVER_SAMPLES + 1):
        if sample == 1:
            cell.start(SERVER, server_mode="sink", client_mode="source", nbytes=nbytes)
        else:
            cut(False)
            cell.connect(SERVER, "source", nbytes)
        start = cell.sent_on("path1", "client")
        cell.wait_for(lambda start=start: cell.sent_on("path1", "client") - start > nbytes // 4,
                      20, "a quarter of the data on path1")  # fmt: skip
        at_cut = cell.sent_on("path2", "client")
        cut_at = time.monotonic()
        cut(True)
        cell.wait_for(lambda at_cut=at_cut: cell.sent_on("path2", "client") - at_cut > 32_000,
                      20, "data on the backup path after the cut", step=0.001)  # fmt: skip
        samples.append(round((time.monotonic() - cut_at) * 1000, 1))
        client, server = cell.finish(FINISH, count=sample)
        cell.check_intact(client, server, nbytes, f"upload {sample} across the cut")
    cell.figures["resume_ms_samples"] = samples
    cell.figures["resume_ms"] = statistics.median(samples)


@scenario(
    setup="client: second endpoint `subflow backup`; both paths tbf 100 Mbit/s; path1 "
    "taken down (both ends) mid-upload",
    pass_when=f"{FAILOVER_SAMPLES} cuts, each completes intact; the times from the cut "
    "to data on path2 (figure: their median) "
    "not slower than kernel→kernel's in the same run (one-sided rank test over the "
    "cuts, p ≤ 0.005: fails when every cut is slower than every one of the kernel's)",
    topology=_user_dual(SHAPED),
    quick=False,
    exclusive=True,
    versus_kernel=("resume_ms", "lower"),
)
def failover(cell: Cell) -> None:
    link = cell.topo.links["path1"]
    _failover(cell, lambda cut: link.down() if cut else link.up())


@scenario(
    setup="as failover, but path1 is blackholed with nftables (links stay up)",
    pass_when=f"{FAILOVER_SAMPLES} cuts, each completes intact; the times from the cut "
    "to data on path2 (figure: their median) "
    "not slower than kernel→kernel's in the same run (one-sided rank test over the "
    "cuts, p ≤ 0.005: fails when every cut is slower than every one of the kernel's)",
    topology=_user_dual(SHAPED),
    quick=False,
    exclusive=True,
    versus_kernel=("resume_ms", "lower"),
)
def failover_blackhole(cell: Cell) -> None:
    _failover(cell, cell.topo.links["path1"].blackhole)


@scenario(
    setup="path1 crosses a source NAT (the client's 192.0.2.1 becomes 203.0.113.254); "
    "the client echoes 10 MB through it",
    pass_when="intact both ways; MPTCP in use at both ends",
    topology=lambda bare: topologies.nat(bare=bare),
)
def nat(cell: Cell) -> None:
    nbytes = cell.size(10 * MB, 2 * MB)
    cell.start("203.0.113.1", server_mode="echo", client_mode="source", nbytes=nbytes)
    client, server = cell.finish(FINISH)
    cell.check_intact(client, server, nbytes, "client to server")
    cell.check_intact(server, client, nbytes, "server to client")
    if not (client.mptcp and server.mptcp):
        raise CellFailed(
            f"MPTCP not in use through the NAT: client {client.mptcp}, server {server.mptcp}"
        )
    _need_subflows(cell, 1)


@scenario(
    setup="path1 crosses a middlebox that strips TCP option 30 from every segment",
    pass_when="both ends fall back to TCP; intact both ways",
    topology=lambda bare: topologies.strip_mptcp(bare=bare),
)
def strip(cell: Cell) -> None:
    nbytes = cell.size(10 * MB, 2 * MB)
    cell.start("203.0.113.1", server_mode="echo", client_mode="source", nbytes=nbytes)
    client, server = cell.finish(FINISH)
    cell.check_intact(client, server, nbytes, "client to server")
    cell.check_intact(server, client, nbytes, "server to client")
    if client.mptcp is not False or server.mptcp is not False:
        raise CellFailed(f"no fallback: client in use {client.mptcp}, server {server.mptcp}")


def _second_family_path(cell: Cell, address: str, announced: str) -> None:
    """The server announces its IPv6 address on eth1 (`signal`), the client accepts it."""
    cell.client.set_limits(2, 1)
    cell.server.set_limits(2, 0)
    cell.server.add_endpoint(announced, flags={"signal"}, ifname="eth1")
    before = _snapshot(cell, "client")
    _upload(cell, cell.size(20 * MB, 6 * MB), address)
    _need_subflows(cell, 2)
    _both_paths_carry(cell, "client", before)


@scenario(
    setup="IPv6 only, two paths tbf 100 Mbit/s; server: `signal` endpoint on eth1; "
    "client: add_addr_accepted 1",
    pass_when=f"2 subflows; each path carries ≥ {BOTH_PATHS_SHARE:.0%}; intact",
    topology=lambda bare: topologies.dual_homed_ipv6((SHAPED, SHAPED), bare=bare),
)
def ipv6(cell: Cell) -> None:
    _second_family_path(cell, "2001:db8:1::2", "2001:db8:2::2")


@scenario(
    setup="path1 dual-stack, path2 IPv6 only, tbf 100 Mbit/s; an IPv6 connection over "
    "path1; the server announces its IPv6 address on eth1",
    pass_when=f"2 subflows; each path carries ≥ {BOTH_PATHS_SHARE:.0%}; intact",
    topology=lambda bare: topologies.dual_homed_mixed((SHAPED, SHAPED), bare=bare),
)
def mixed(cell: Cell) -> None:
    _second_family_path(cell, "2001:db8:1::2", "2001:db8:2::2")
