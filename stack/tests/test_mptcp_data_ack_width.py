"""Our DATA_ACKs take the width of the peer's DSNs (as Linux's use_64bit_ack; RFC 8684
§3.3 leaves each sender the choice of 4 or 8 octets): a "middlebox" on the in-memory
link narrows every mapping and data ACK the client sends to 4 bytes, and the server
then acknowledges with 4-byte data ACKs only, while the transfer completes intact."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from stack.mptcp.connection import MptcpConfig
from stack.sim import PathConfig
from stack.tcp.segment import Segment
from stack.tests.test_mptcp_sim import CLIENT, FAST, SERVER, assert_intact, run_pair
from stack.wire import Dss


@dataclass
class Narrow:
    """Rewrites the client's DSS options to 4-byte DSNs and data ACKs; records the data
    ACK widths the server sends after the first narrowed mapping."""

    narrowed: bool = False
    server_widths: list[bool] = field(default_factory=list)

    def __call__(self, seg: Segment) -> bool:
        options = []
        for option in seg.extra_options:
            if isinstance(option, Dss) and seg.src_port == CLIENT[1]:
                if option.dsn is not None:
                    self.narrowed = True
                    option = replace(option, dsn=option.dsn & 0xFFFFFFFF, dsn_64=False)
                if option.data_ack is not None:
                    option = replace(option, data_ack=option.data_ack & 0xFFFFFFFF,
                                     data_ack_64=False)  # fmt: skip
            elif (
                isinstance(option, Dss)
                and seg.src_port == SERVER[1]
                and self.narrowed
                and option.data_ack is not None
            ):
                self.server_widths.append(option.data_ack_64)
            options.append(option)
        seg.extra_options = tuple(options)
        return False


@pytest.mark.parametrize("version", [0, 1])
def test_data_acks_follow_the_peers_dsn_width(version: int) -> None:
    narrow = Narrow()
    config = MptcpConfig(versions=frozenset({version}), tcp=FAST)
    _, _, app_a, app_b, up, down = run_pair(
        config, size=200_000, path=PathConfig(delay=0.002, drop=narrow)
    )
    assert_intact(app_a, app_b, up, down)
    # data ACKs already on the way when the first narrowed mapping arrived stay 8 bytes
    widths = narrow.server_widths
    assert False in widths and not any(widths[widths.index(False) :])
