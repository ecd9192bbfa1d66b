"""DSS checksum failures on the in-memory link (RFC 8684 §3.7, RFC 6824 §3.6), in
virtual time: a "middlebox" changes one data segment's payload, so the checksum of its
mapping fails at the receiver.

- One subflow: the receiver sends MP_FAIL with the DSN of the failed mapping and keeps
  its bytes; the sender answers MP_FAIL and puts an infinite mapping (a DSS mapping of
  length 0) on its first new packet, one that "acts retroactively" from the last byte
  DATA_ACKed (RFC 8684 §3.7): both go on as plain TCP. The stream arrives with the
  middlebox's change in it (as between two Linux hosts, whose selftest checks for the
  inverted bytes), nothing lost or doubled.
- Two subflows: the failing subflow is reset (RST with MP_FAIL and, in v1, MP_TCPRST
  reason 6) and the connection goes on on the other one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from stack.mptcp.connection import MptcpConfig, MptcpConnection
from stack.mptcp.listener import MptcpListener
from stack.mptcp.token import TokenTable
from stack.sim import PathConfig, Simulator
from stack.tcp.segment import RST, Segment
from stack.tests.test_mptcp_sim import (
    CLIENT,
    FAST,
    SERVER,
    App,
    ClientEnd,
    ServerEnd,
    run_pair,
)
from stack.wire import Dss, MpFail, MpTcpRst

MPTCP_RST_EMIDDLEBOX = 6


@dataclass
class Corrupt:
    """Flips one byte of the `nth` data segment carrying a DSS mapping from `port`, and
    records the MPTCP options of every segment it sees."""

    nth: int
    port: int = CLIENT[1]
    seen: int = 0
    failed_dsn: int | None = None  # the corrupted segment's mapping
    failed_ssn: int | None = None
    original: bytes = b""  # the corrupted segment's payload as sent
    options: list[tuple[Segment, object]] = field(default_factory=list)

    def __call__(self, seg: Segment) -> bool:
        self.options += [(seg, o) for o in seg.extra_options]
        dss = next((o for o in seg.extra_options if isinstance(o, Dss)), None)
        if seg.src_port == self.port and seg.payload and dss is not None and dss.dsn is not None:
            self.seen += 1
            if self.seen == self.nth:
                self.failed_dsn, self.failed_ssn = dss.dsn, dss.subflow_seq
                self.original = bytes(seg.payload)
                payload = bytearray(seg.payload)  # a copy: the sender's buffer stays intact
                payload[len(payload) // 2] ^= 0x55
                seg.payload = bytes(payload)
        return False  # nothing stripped

    def of(self, kind: type) -> list:
        return [o for _, o in self.options if isinstance(o, kind)]

    def changed(self, stream: bytes) -> bytes:
        """`stream` as the middlebox left it: the corrupted segment's byte flipped."""
        at = stream.find(self.original) + len(self.original) // 2
        return stream[:at] + bytes([stream[at] ^ 0x55]) + stream[at + 1 :]


@dataclass
class Record:
    options: list[tuple[Segment, object]] = field(default_factory=list)

    def __call__(self, seg: Segment) -> bool:
        self.options += [(seg, o) for o in seg.extra_options]
        return False

    def of(self, kind: type) -> list:
        return [o for _, o in self.options if isinstance(o, kind)]


def _config(version: int) -> MptcpConfig:
    return MptcpConfig(versions=frozenset({version}), want_checksum=True, tcp=FAST)


@pytest.mark.parametrize("path", [None, PathConfig(delay=0.005, loss=0.02)], ids=["clean", "lossy"])
@pytest.mark.parametrize("version", [0, 1])
def test_single_subflow_mp_fail_falls_back_keeping_the_changed_bytes(
    version: int, path: PathConfig
) -> None:
    to_server, to_client = Corrupt(nth=20), Record()
    client, server, app_a, app_b, up, down = run_pair(
        _config(version), size=600_000, path=path, strip_to_server=to_server,
        strip_to_client=to_client,
    )  # fmt: skip
    assert client.checksum and server.checksum
    assert to_server.failed_dsn is not None and to_server.failed_ssn is not None
    # the stream as the middlebox left it, once, in place; the other way intact
    assert bytes(app_b.received) == to_server.changed(up)
    assert bytes(app_a.received) == down
    # the receiver of the bad checksum: MP_FAIL with the failed mapping's DSN, no reset
    assert server.counters["DSSChecksumBad"] == 1
    fails = to_client.of(MpFail)
    assert fails and {f.dsn for f in fails} == {to_server.failed_dsn}
    assert not any(seg.flags & RST for seg, _ in to_client.options)
    assert "SubflowReset" not in server.counters and "SubflowReset" not in client.counters
    # the sender: MP_FAIL in answer ("MUST also respond"), and one infinite mapping,
    # retroactive (on the line of DSN - subflow seq the failed mapping had), then plain
    # TCP: no other DSS mapping after it
    assert to_server.of(MpFail), "the sender did not answer MP_FAIL"
    options = [o for _, o in to_server.options]
    infinite = [o for o in options if isinstance(o, Dss) and o.dsn is not None
                and o.data_level_length == 0]  # fmt: skip
    assert len({(m.dsn, m.subflow_seq) for m in infinite}) == 1, infinite
    after = options[options.index(infinite[0]) :]
    assert not [o for o in after if isinstance(o, Dss) and o.data_level_length], after
    line = (to_server.failed_dsn - to_server.failed_ssn) & 0xFFFFFFFF
    assert (infinite[0].dsn - infinite[0].subflow_seq) & 0xFFFFFFFF == line
    assert infinite[0].dsn >= to_server.failed_dsn  # from what the peer DATA_ACKed
    assert client.counters["InfiniteMapTx"] == 1 and server.counters["InfiniteMapRx"] == 1
    assert client.fallback and server.fallback
    assert client.fallback_reason == "MP_FAIL from the peer"
    assert server.fallback_reason == "infinite mapping (MP_FAIL)"


def two_subflows(version: int, corrupt: Any, size: int):
    """A connection with a second subflow joined, `size` bytes uploaded through
    `corrupt` (a hook on the segments to the server); returns both ends, the receiving
    application, the bytes and the record of what the server sent."""
    config = _config(version)
    up = random.Random(5).randbytes(size)
    ports = iter(range(CLIENT[1] + 1, CLIENT[1] + 10))
    client = MptcpConnection.connect(CLIENT, SERVER, config, TokenTable(), isn_secret=b"a",
                                     now=0.0, allocate_port=lambda *_: next(ports))  # fmt: skip
    listener = MptcpListener(SERVER[1], config, TokenTable(), isn_secret=b"b")
    to_client = Record()
    a, b = ClientEnd(client, strip=to_client), ServerEnd(listener, strip=corrupt)
    path = PathConfig(delay=0.005, rate=12.5e6, queue_bytes=1 << 20)
    sim = Simulator(a, b, a_to_b=path, b_to_a=PathConfig(delay=0.005))
    sender, receiver = App(lambda: client, up), App(lambda: b.msk, b"")
    assert sim.run(until=5.0, stop=lambda: client.established and client.peer_sent_dss)
    client.open_subflow(CLIENT[0], 1, SERVER[0], SERVER[1], backup=False, now=sim.now)
    assert sim.run(until=5.0, stop=lambda: client.subflows[1].usable)
    sim.hooks += [sender, receiver]
    done = sim.run(until=120.0, stop=lambda: bool(client.finished and b.msk and b.msk.finished))
    assert done, f"not finished at t={sim.now}: {client.describe()}"
    assert b.msk is not None
    return client, b.msk, receiver, up, to_client


@pytest.mark.parametrize("version", [0, 1])
def test_two_subflows_bad_checksum_resets_that_subflow(version: int) -> None:
    corrupt = Corrupt(nth=10, port=CLIENT[1] + 1)  # on the joined subflow
    client, server, receiver, up, to_client = two_subflows(version, corrupt, 2_000_000)
    assert corrupt.failed_dsn is not None
    assert bytes(receiver.received) == up
    assert server.counters["DSSChecksumBad"] == 1 and server.counters["SubflowReset"] == 1
    joined = next(sf for sf in server.every_subflow() if not sf.initial)
    assert joined.gone and joined.error == "DSS checksum failed"
    # the RST carries MP_FAIL (RFC 8684 §3.7) and, in v1, MP_TCPRST "middlebox interference"
    rst = [(seg, o) for seg, o in to_client.options if seg.flags & RST]
    assert [o.dsn for _, o in rst if isinstance(o, MpFail)] == [corrupt.failed_dsn]
    # and nothing before it: with other subflows the answer is the RST alone, never an
    # ACK of the failed data (with MP_FAIL on it, the single-subflow answer) first
    assert [seg.flags & RST for seg, o in to_client.options if isinstance(o, MpFail)] == [RST]
    reasons = [o.reason for _, o in rst if isinstance(o, MpTcpRst)]
    assert reasons == ([MPTCP_RST_EMIDDLEBOX] if version == 1 else [])
    assert not client.fallback and not server.fallback
    assert "MPFailTx" in server.counters and "InfiniteMapTx" not in client.counters


@dataclass
class SkipAhead(Corrupt):
    """Corrupt, then move the peer's infinite mapping 100 DSNs on: as a sender that
    resumes past the MP_FAIL DSN without sending those bytes again."""

    def __call__(self, seg: Segment) -> bool:
        super().__call__(seg)
        seg.extra_options = tuple(
            replace(o, dsn=o.dsn + 100)
            if isinstance(o, Dss) and o.dsn is not None and o.data_level_length == 0
            else o
            for o in seg.extra_options
        )
        return False


def test_an_infinite_mapping_past_the_mp_fail_dsn_resets_instead_of_hanging() -> None:
    """Bytes between what we have and where the peer's infinite mapping puts its next
    byte would never come:
    a clear reset (MP_TCPRST reason 6), no stall and nothing delivered out of place."""
    to_server = SkipAhead(nth=5)
    client, server, _, app_b, up, _ = run_pair(_config(1), size=200_000, strip_to_server=to_server)
    assert to_server.failed_dsn is not None
    assert server.counters["InfiniteMapRx"] == 1 and not server.fallback
    (sf,) = server.every_subflow()
    assert sf.gone and sf.rst_reason == MPTCP_RST_EMIDDLEBOX
    assert sf.error.startswith("infinite mapping at") and "past the data from" in sf.error
    assert to_server.changed(up).startswith(bytes(app_b.received))  # nothing out of place
    assert server.closed and client.closed and client.error
