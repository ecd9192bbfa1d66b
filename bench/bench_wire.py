"""Throughput of the wire codecs.

    python -m bench.bench_wire [--seconds 1.0] [--json]

- options: parse plus emit of single MPTCP options in a DSS-heavy mix (80% DSS with a
  data ACK and a mapping, the rest MP_CAPABLE, MP_JOIN, ADD_ADDR, MP_PRIO), one
  parse_mptcp_option and one emit() per option.
- option lists: parse_tcp_options over a data segment's options area (NOP NOP TS, DSS).
- segments: a 1514-byte Ethernet/IPv4/TCP frame (1448 bytes of payload): Ethernet,
  IPv4 and TCP parse, IPv4 header checksum and TCP checksum verify, options walked.

Each figure is the best of 5 rounds of `--seconds / 5`. Goals: 500k options/s and
100k segments/s; the exit status is 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from ipaddress import IPv4Address

from tabulate import tabulate

from stack.wire import (
    AddAddrV1,
    Dss,
    MpCapable,
    MpJoinAck,
    MpJoinSyn,
    MpJoinSynAck,
    MpPrio,
    NoOperation,
    Timestamps,
    build_options,
    emit_ethernet,
    emit_tcp_ip,
    parse_ethernet,
    parse_ipv4,
    parse_mptcp_option,
    parse_tcp,
    parse_tcp_options,
    tcp_checksum_ok,
)

OPTION_GOAL = 500_000
SEGMENT_GOAL = 100_000


def option_mix() -> list[bytes]:
    """100 options: 80 DSS (ACK + mapping, some 64-bit, some with checksum), 20 others."""
    mix: list[bytes] = []
    for i in range(80):
        mix.append(
            Dss(
                data_ack=(1 << 40) + i if i % 4 == 0 else 1000 + i,
                dsn=5000 + 1448 * i,
                subflow_seq=1 + 1448 * i,
                data_level_length=1448,
                checksum=0xABCD if i % 5 == 0 else None,
                data_ack_64=i % 4 == 0,
                dsn_64=i % 2 == 0,
                data_fin=i == 79,
            ).emit()
        )
    others = [
        MpCapable(1, 0x01),
        MpCapable(1, 0x01, 0x0102030405060708),
        MpCapable(1, 0x01, 0x0102030405060708, 0x1112131415161718, 1448),
        MpJoinSyn(1, 0x1A2B3C4D, 0x55, True),
        MpJoinSynAck(1, bytes(range(8)), 0x66),
        MpJoinAck(bytes(range(20))),
        AddAddrV1(2, IPv4Address("198.51.100.2"), 8080, bytes(8)),
        MpPrio(True),
    ]
    for i in range(20):
        mix.append(others[i % len(others)].emit())
    return mix


def _rate(work: Callable[[], int], seconds: float) -> float:
    """Best of 5 rounds, in items per second."""
    best = 0.0
    for _ in range(5):
        deadline = time.perf_counter() + seconds / 5
        done = 0
        start = time.perf_counter()
        while True:
            done += work()
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, done / (now - start))
    return best


def bench_options(seconds: float) -> float:
    mix = option_mix()
    parse = parse_mptcp_option

    def work() -> int:
        for raw in mix:
            parse(raw).emit()
        return len(mix)

    return _rate(work, seconds)


def bench_option_lists(seconds: float) -> float:
    area = build_options(
        [
            NoOperation(),
            NoOperation(),
            Timestamps(123456, 654321),
            Dss(1000, 5000, 1, 1448, 0xABCD),
        ]
    ).data
    batch = [area] * 100

    def work() -> int:
        for raw in batch:
            parse_tcp_options(raw)
        return len(batch)

    return _rate(work, seconds)


def data_frame() -> bytes:
    options = build_options(
        [
            NoOperation(),
            NoOperation(),
            Timestamps(123456, 654321),
            Dss(1000, 5000, 1, 1448),
        ]
    ).data
    payload = bytes(range(256)) * 6
    payload = payload[: 1500 - 20 - 20 - len(options)]
    packet = emit_tcp_ip(
        IPv4Address("192.0.2.1").packed,
        IPv4Address("198.51.100.2").packed,
        40000,
        80,
        1,
        2,
        0x18,
        512,
        options=options,
        payload=payload,
    )
    assert len(packet) == 1500
    return emit_ethernet(b"\x02" * 6, b"\x04" * 6, 0x0800, packet)


def bench_segments(seconds: float) -> float:
    frame = data_frame()
    batch = [frame] * 100

    def work() -> int:
        for raw in batch:
            eth = parse_ethernet(raw)
            ip = parse_ipv4(eth.payload)  # type: ignore[union-attr]
            if not ip.checksum_ok() or not tcp_checksum_ok(ip):  # type: ignore[union-attr]
                raise AssertionError("checksum")
            tcp = parse_tcp(ip.payload)  # type: ignore[union-attr]
            parse_tcp_options(tcp.options)  # type: ignore[union-attr]
        return len(batch)

    return _rate(work, seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per figure")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()

    options = bench_options(args.seconds)
    lists = bench_option_lists(args.seconds)
    segments = bench_segments(args.seconds)
    results = [
        {
            "figure": "MPTCP option parse+emit (80% DSS)",
            "per_second": round(options),
            "goal": OPTION_GOAL,
            "met": options >= OPTION_GOAL,
        },
        {
            "figure": "TCP option list parse (NOP NOP TS DSS)",
            "per_second": round(lists),
            "goal": None,
            "met": True,
        },
        {
            "figure": "1514 B frame: parse + IPv4/TCP checksum verify + options",
            "per_second": round(segments),
            "goal": SEGMENT_GOAL,
            "met": segments >= SEGMENT_GOAL,
        },
    ]
    ok = all(r["met"] for r in results)
    if args.json:
        print(json.dumps({"python": sys.version.split()[0], "results": results, "ok": ok}))
    else:
        print(tabulate(results, headers="keys", intfmt=","))
        print(
            f"{'ok' if ok else 'FAILED'}: {options / 1e3:.0f}k options/s "
            f"(goal {OPTION_GOAL // 1000}k), {segments / 1e3:.0f}k segments/s "
            f"(goal {SEGMENT_GOAL // 1000}k)"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
