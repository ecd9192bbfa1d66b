from __future__ import annotations

import pytest

from stack.mptcp.mapping import Deliver, Mapping, SubflowReceiveMapper
from stack.mptcp.sendmap import Chunk, SubflowSendMap


def test_each_chunk_is_one_mapping_and_segments_never_span_two() -> None:
    sent = SubflowSendMap()
    assert sent.append(1000, 100) == 1
    assert sent.append(1100, 50) == 101  # contiguous DSNs still make a mapping of their own
    assert sent.limit(1) == 100
    assert sent.limit(140) == 11
    sent.append(5000, 20, checksum=0xBEEF)  # a reinjected chunk from elsewhere in the stream
    assert sent.mapping(151, 20) == Chunk(151, 5000, 20, 0xBEEF)
    with pytest.raises(ValueError, match="spans two mappings"):
        sent.mapping(140, 20)
    with pytest.raises(ValueError, match=r"1\.\.65535"):
        sent.append(0, 65536)


def test_every_segment_of_a_chunk_carries_the_same_mapping() -> None:
    """RFC 8684 §3.3.1: retransmissions, however cut, carry the original mapping."""
    sent = SubflowSendMap()
    sent.append(7, 10)
    sent.append(100, 10)
    assert sent.mapping(3, 5) == sent.mapping(1, 10) == sent.mapping(8, 2) == Chunk(1, 7, 10)
    sent.acknowledged(11)
    assert sent.unacknowledged() == [(100, 10)]
    assert sent.dsn_offset() == 100 - 11
    sent.trim()
    with pytest.raises(KeyError):
        sent.mapping(3, 1)


def test_a_segment_built_before_an_ack_that_covers_it_keeps_its_mapping() -> None:
    """A batch of input: a SACK retransmission is built in answer to one ACK, the next
    ACK covers it, and only then are options given: the mapping must still be there."""
    sent = SubflowSendMap()
    sent.append(500, 10)
    sent.append(510, 10)
    sent.acknowledged(21)  # everything, before the retransmission got its options
    assert sent.mapping(1, 10) == Chunk(1, 500, 10)
    assert sent.unacknowledged() == [] and sent.dsn_offset() is None
    sent.trim()
    with pytest.raises(KeyError):
        sent.mapping(1, 10)
    assert sent.append(520, 5) == 21


def test_send_map_and_receive_mapper_agree() -> None:
    stream = bytes(range(256)) * 4
    sent = SubflowSendMap()
    sent.append(0, 600)
    sent.append(600, 424)
    receiver = SubflowReceiveMapper(checksums=False)
    position, out = 1, bytearray()
    while position <= len(stream):
        size = min(97, sent.limit(position))
        chunk = sent.mapping(position, size)
        receiver.add_mapping(Mapping(chunk.dsn, chunk.subflow_seq, chunk.length), position)
        for event in receiver.deliver(position, stream[position - 1 : position - 1 + size]):
            assert isinstance(event, Deliver)
            out += event.data
        position += size
    assert bytes(out) == stream
