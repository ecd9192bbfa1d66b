"""MPTCP socket constants and `struct mptcp_info`, with no netlink library behind them.

Kept apart from `testbed.mptcp` (which needs pyroute2) so that applications, such as
`testbed.apps` and the stack's CLI, start without loading pyroute2: the conformance
harness starts one such process per case, and pyroute2 alone costs a few hundred ms.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

IPPROTO_MPTCP = 262
SOL_MPTCP = 284
MPTCP_INFO = 1
MPTCP_INFO_FLAG_FALLBACK = 0x1
MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED = 0x2
MPTCP_INFO_SIZE = 96  # sizeof(struct mptcp_info) in 6.18
TCP_IS_MPTCP = 43  # SOL_TCP option: 1 while the socket speaks MPTCP, 0 after a fallback

# struct mptcp_info (include/uapi/linux/mptcp.h): (name, offset, struct format)
MPTCP_INFO_FIELDS = (
    ("subflows", 0, "B"), ("add_addr_signal", 1, "B"), ("add_addr_accepted", 2, "B"),
    ("subflows_max", 3, "B"), ("flags", 8, "I"), ("token", 12, "I"),
    ("write_seq", 16, "Q"), ("snd_una", 24, "Q"), ("rcv_nxt", 32, "Q"),
    ("local_addr_used", 40, "B"), ("local_addr_max", 41, "B"), ("csum_enabled", 42, "B"),
    ("retransmits", 44, "I"), ("bytes_retrans", 48, "Q"), ("bytes_sent", 56, "Q"),
    ("bytes_received", 64, "Q"), ("bytes_acked", 72, "Q"), ("subflows_total", 80, "B"),
)  # fmt: skip


def parse_mptcp_info(raw: bytes) -> dict[str, int]:
    """struct mptcp_info (from getsockopt(SOL_MPTCP, MPTCP_INFO) or sock_diag) as a dict
    of the fields in `MPTCP_INFO_FIELDS`; fields past the end of `raw` (older kernel) are 0."""
    return unpack_fields(MPTCP_INFO_FIELDS, raw)


def unpack_fields(layout: Iterable[tuple[str, int, str]], data: bytes) -> dict[str, int]:
    """Native-endian fields of a kernel struct; a field beyond `data` reads 0."""
    values = {}
    for name, offset, fmt in layout:
        size = struct.calcsize(fmt)
        values[name] = (
            struct.unpack_from("=" + fmt, data, offset)[0] if len(data) >= offset + size else 0
        )
    return values
