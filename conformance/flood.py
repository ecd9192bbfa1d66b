"""Floods from the scripted tester, and what they cost the IUT: shared by the hostile-input
test (`stack/tests/test_hostile_input.py`) and the flood bench (`bench/bench_flood.py`).

Frames are built with the project's codec (scapy would take seconds for thousands) and
sent as they are on the tester's raw socket. The process probes read /proc: a process's
resident memory (VmRSS) and CPU time (utime + stime), and the machine's softirq time.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from conformance.model import Outcome
from conformance.tester import Tester
from stack.wire.ethernet import emit_ethernet
from stack.wire.ip import ETH_P_IP
from stack.wire.mptcp import MPC_FLAG_H, Dss, MpCapable, MpJoinSyn
from stack.wire.tcp import ACK, SYN, MaxSegmentSize, TcpOption, build_options, emit_tcp_ip


def syn_frames(
    tester: Tester, dport: int, sports: Iterable[int], options: list[TcpOption],
    *, ifname: str = "eth0",
) -> list[bytes]:  # fmt: skip
    """SYNs from the tester's address on `ifname` to the IUT's on that path, port `dport`,
    one per source port in `sports` (repeats allowed), carrying MSS 1460 and `options`."""
    port = tester.ports[ifname]
    src = ipaddress.ip_address(tester.address(ifname, 4)).packed
    dst = ipaddress.ip_address(tester.iut_address(ifname, 4)).packed
    data = build_options([MaxSegmentSize(1460), *options]).data
    frames = []
    for index, sport in enumerate(sports):
        seq = (sport * 7919 + index * 104729) & 0xFFFFFFFF
        packet = emit_tcp_ip(src, dst, sport, dport, seq, 0, SYN, 65535, options=data)
        frames.append(emit_ethernet(port.peer_mac, port.mac, ETH_P_IP, packet))
    return frames


def join_syn_frames(tester: Tester, token: int, sports: Iterable[int], dport: int = 8000
                    ) -> list[bytes]:  # fmt: skip
    """Join SYNs (MP_JOIN with `token`, address ID 7, the source port as nonce)."""
    frames = []
    for sport in sports:  # one option per frame: the nonce differs
        frames += syn_frames(tester, dport, [sport], [MpJoinSyn(address_id=7, token=token,
                                                                 nonce=sport)])  # fmt: skip
    return frames


def capable_syn_frames(tester: Tester, sports: Iterable[int], dport: int = 8000) -> list[bytes]:
    """v1 MP_CAPABLE SYNs (flag H), as a Linux client's first SYN."""
    return syn_frames(tester, dport, sports, [MpCapable(version=1, flags=MPC_FLAG_H)])


def future_mapping_frames(conn: Any, subflow: Any, count: int, offset: int = 100_000
                          ) -> list[bytes]:  # fmt: skip
    """Pure ACKs on `subflow`, each with a DSS mapping 10 bytes that were never sent, at
    `offset` and on past the next DSN and subflow sequence number (bytes the receiver
    can only keep the mappings of, for data that never comes)."""
    tester = subflow.tester
    port = tester.ports[subflow.ifname]
    src = ipaddress.ip_address(subflow.local).packed
    dst = ipaddress.ip_address(subflow.remote).packed
    relative = (subflow.snd_nxt - subflow.iss) & 0xFFFFFFFF
    frames = []
    for index in range(count):
        dss = Dss(data_ack=conn.data_rcv_nxt, data_ack_64=True,
                  dsn=(conn.data_snd_nxt + offset + 10 * index) % 2**64, dsn_64=True,
                  subflow_seq=(relative + offset + 10 * index) & 0xFFFFFFFF,
                  data_level_length=10)  # fmt: skip
        packet = emit_tcp_ip(src, dst, subflow.lport, subflow.rport, subflow.snd_nxt,
                             subflow.rcv_nxt, ACK, 64240,
                             options=build_options([dss]).data)  # fmt: skip
        frames.append(emit_ethernet(port.peer_mac, port.mac, ETH_P_IP, packet))
    return frames


def echoed(conn: Any, subflow: Any, payload: bytes, within: float, rto: float = 0.25) -> Any:
    """Send `payload` and wait for its echo, sending it again every `rto` s as TCP would
    (a flood may fill either end's socket buffer, and a dropped frame is no stall).
    Raises the tester's `deviates` outcome when no echo came `within` s."""
    seq, dss = subflow.snd_nxt, conn.mapping(subflow, payload)
    subflow.send("PA", [dss], payload)
    deadline = time.monotonic() + within
    while True:
        try:
            echo = subflow.expect(data=True, within=rto, what="the echo",
                                  where=lambda s: s.payload == payload)  # fmt: skip
            break
        except Outcome:
            if time.monotonic() > deadline:
                raise
            subflow.send("PA", [dss], payload, seq=seq)
    subflow.send("A", [conn.data_ack()])
    return echo


# ---------------------------------------------------------------- probes (/proc)


def rss_kib(pid: int) -> int:
    """The process's resident set (VmRSS), KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def cpu_seconds(pid: int) -> float:
    """CPU time the process has used (utime + stime), s."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def softirq_seconds() -> float:
    """softirq time of every CPU of the machine (/proc/stat), s."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return int(fields[7]) / os.sysconf("SC_CLK_TCK")


def slab_kib() -> int:
    """The kernel's slab memory, the whole machine (/proc/meminfo `Slab`), KiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Slab:"):
            return int(line.split()[1])
    return 0


def cpu_settled_after(pid: int, within: float, window: float = 0.25) -> float | None:
    """Seconds until the process uses under 10% of a CPU over a `window`; None if it
    never does within `within` (the windows are a measurement, not a wait for an event)."""
    return settled_after(lambda: cpu_seconds(pid), within, window)


def settled_after(used: Any, within: float, window: float = 0.25, share: float = 0.1
                  ) -> float | None:  # fmt: skip
    """Seconds until the CPU time counter `used()` grows by under `share` of a CPU over a
    `window`; None if it never does within `within`."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        before = used()
        time.sleep(window)  # a measurement window
        if used() - before < share * window:
            return time.monotonic() - started - window
    return None
