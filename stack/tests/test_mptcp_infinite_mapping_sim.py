"""A peer's own fallback (RFC 8684 §3.7, RFC 6824 §3.6) on the in-memory link, in
virtual time: its infinite mapping (a DSS mapping of data-level length 0) on a data
segment, on the line of the mappings before it, and no MPTCP option after it, as a
sender that drops out of MPTCP sends (with no MP_FAIL before it).

- One subflow: the receiver falls back at once, its bytes at the DSNs the line gives
  them; the stream arrives intact, nothing lost or doubled, as Linux (MAPPING_INVALID,
  then fallback when allow_infinite_fallback holds).
- A subflow has joined: fallback is no longer possible, and the subflow that carried the
  infinite mapping is reset (MP_TCPRST 1 in v1, as Linux); the data goes on the other.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from stack.mptcp.connection import MptcpConfig
from stack.sim import PathConfig
from stack.tcp.segment import RST, Segment
from stack.tests.test_mptcp_mp_fail_sim import two_subflows
from stack.tests.test_mptcp_sim import CLIENT, FAST, assert_intact, run_pair
from stack.wire import Dss, MpTcpRst

MPTCP_RST_EMPTCP = 1


@dataclass
class FallsBack:
    """The client's `nth` data segment with a mapping (from `port`) gets an infinite
    mapping in place of its mapping, on the same line, and every later segment from
    the client loses its options: the peer has dropped out of MPTCP."""

    nth: int
    port: int = CLIENT[1]
    seen: int = 0
    active: bool = False
    infinite: Dss | None = None
    rst_reasons: tuple[int, ...] = ()

    def __call__(self, seg: Segment) -> bool:
        if self.active:
            return seg.src_port == self.port  # plain TCP from here on
        dss = next((o for o in seg.extra_options if isinstance(o, Dss)), None)
        if seg.src_port == self.port and seg.payload and dss is not None and dss.dsn is not None:
            self.seen += 1
            if self.seen == self.nth:
                checksum = 0 if dss.checksum is not None else None  # zero when in use
                self.infinite = replace(dss, data_level_length=0, checksum=checksum)
                seg.extra_options = tuple(self.infinite if o is dss else o
                                          for o in seg.extra_options)  # fmt: skip
                self.active = True
        return False


@pytest.mark.parametrize("path", [None, PathConfig(delay=0.005, loss=0.02)], ids=["clean", "lossy"])
@pytest.mark.parametrize("version", [0, 1])
def test_an_infinite_mapping_on_the_line_falls_back_and_keeps_the_stream(
    version: int, path: PathConfig | None
) -> None:
    to_server = FallsBack(nth=20)
    config = MptcpConfig(versions=frozenset({version}), tcp=FAST)
    client, server, app_a, app_b, up, down = run_pair(config, size=600_000, path=path,
                                                      strip_to_server=to_server)  # fmt: skip
    assert to_server.infinite is not None and to_server.infinite.subflow_seq
    assert_intact(app_a, app_b, up, down)
    assert server.counters["InfiniteMapRx"] == 1
    assert server.fallback and server.fallback_reason == "infinite mapping (peer's fallback)"
    assert client.fallback  # its ACKs came without DATA_ACK from then on
    assert "SubflowReset" not in server.counters


@pytest.mark.parametrize("version", [0, 1])
def test_an_infinite_mapping_after_a_join_resets_that_subflow(version: int) -> None:
    to_server = FallsBack(nth=10, port=CLIENT[1] + 1)  # on the joined subflow
    _, server, receiver, up, to_client = two_subflows(version, to_server, 1_000_000)
    assert to_server.infinite is not None
    assert bytes(receiver.received) == up
    joined = next(sf for sf in server.every_subflow() if not sf.initial)
    assert joined.gone and joined.error == "infinite mapping with other subflows"
    assert server.counters["InfiniteMapRx"] == 1 and not server.fallback
    reasons = [o.reason for seg, o in to_client.options
               if seg.flags & RST and isinstance(o, MpTcpRst)]  # fmt: skip
    assert reasons[:1] == ([MPTCP_RST_EMPTCP] if version == 1 else [])
