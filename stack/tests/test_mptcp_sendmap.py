from __future__ import annotations

import pytest

from stack.mptcp.mapping import Deliver, Mapping, SubflowReceiveMapper
from stack.mptcp.sendmap import SubflowSendMap


def test_contiguous_chunks_merge_and_gaps_cut_segments() -> None:
    sent = SubflowSendMap()
    assert sent.append(1000, 100) == 1
    assert sent.append(1100, 50) == 101  # contiguous DSN: one mapping
    assert sent.limit(1) == 150
    sent.append(5000, 20)  # a reinjected chunk from elsewhere in the stream
    assert sent.limit(140) == 11
    assert sent.mapping(151, 20) == (5000, 151, 20)
    with pytest.raises(ValueError, match="spans two mappings"):
        sent.mapping(140, 20)


def test_retransmission_gets_the_same_mapping_and_acks_prune() -> None:
    sent = SubflowSendMap()
    sent.append(7, 10)
    sent.append(100, 10)
    assert sent.mapping(3, 5) == sent.mapping(3, 5) == (9, 3, 5)
    sent.acknowledged(11)
    assert sent.unacknowledged() == [(100, 10)]
    with pytest.raises(KeyError):
        sent.mapping(3, 1)


def test_send_map_and_receive_mapper_agree() -> None:
    stream = bytes(range(256)) * 4
    sent = SubflowSendMap()
    sent.append(0, 600)
    sent.append(600, 424)
    receiver = SubflowReceiveMapper(checksums=False)
    position, out = 1, bytearray()
    while position <= len(stream):
        size = min(97, sent.limit(position))
        dsn, seq, length = sent.mapping(position, size)
        receiver.add_mapping(Mapping(dsn, seq, length), position)
        for event in receiver.deliver(position, stream[dsn : dsn + length]):
            assert isinstance(event, Deliver)
            out += event.data
        position += size
    assert bytes(out) == stream
