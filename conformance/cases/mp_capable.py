"""MP_CAPABLE: the handshake, version negotiation, flags, keys, fallback (§3.1, §3.7)."""

from __future__ import annotations

from conformance.cases import LISTENER, MUST, Context, case
from conformance.model import deviates
from conformance.tester import Segment
from stack import crypto
from stack.wire.mptcp import MPC_FLAG_H, Dss, MpCapable
from stack.wire.tcp import MaxSegmentSize


def _has_mapping(segment: Segment) -> bool:
    dss = segment.option(Dss)
    return dss is not None and dss.dsn is not None


@case(
    section="3.1",
    level=MUST,
    role=LISTENER,
    expected="A SYN with MP_CAPABLE v1 (no key) gets a SYN/ACK with MP_CAPABLE v1 of 12 "
    "bytes carrying Key-B, with H set and B clear.",
)
def v1_syn_gets_v1_synack(ctx: Context) -> None:
    ctx.iut.listen(ctx.port)
    sf = ctx.tester.subflow(ctx.port)
    sf.send("S", [MaxSegmentSize(1460), MpCapable(version=1, flags=MPC_FLAG_H)])
    synack = sf.expect("SA", MpCapable, within=1)
    option = synack.option(MpCapable)
    assert option is not None
    if option.version != 1 or option.sender_key is None or option.receiver_key is not None:
        raise deviates(f"SYN/ACK option is not v1 with one key: {synack.describe()}")
    if not option.hmac_sha or option.extensibility:
        raise deviates(f"SYN/ACK flags H clear or B set: {synack.describe()}")


@case(
    section="3.1",
    level=MUST,
    role=LISTENER,
    expected="After the third ACK, data from the IUT carries a DSS whose DSN starts at "
    "IDSN-B + 1, IDSN-B being the low 64 bits of SHA-256(Key-B).",
)
def idsn_from_key(ctx: Context) -> None:
    ctx.iut.listen(ctx.port, mode="echo")
    t = ctx.tester
    conn, sf = t.connect(ctx.port)
    t.first_data_v1(conn, sf, b"ping")
    echo = sf.expect(option=Dss, data=True, within=1, where=_has_mapping)
    dss = echo.option(Dss)
    assert dss is not None and dss.dsn is not None
    expected = (crypto.key_idsn(conn.remote_key or 0, 1) + 1) & (2**64 - 1)
    got = dss.dsn if dss.dsn_64 else dss.dsn | (expected & ~0xFFFFFFFF)
    if got != expected:
        raise deviates(f"first DSN {got:#x}, expected IDSN+1 {expected:#x}")
