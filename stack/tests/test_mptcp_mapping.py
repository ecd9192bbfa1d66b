from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from stack.crypto import dss_checksum
from stack.mptcp.mapping import (
    ChecksumFailed,
    DataFin,
    Deliver,
    Mapping,
    MappingError,
    SubflowReceiveMapper,
    Unmapped,
)

DSN = 1 << 40


def test_a_mapping_spans_segments() -> None:
    mapper = SubflowReceiveMapper(checksums=False)
    assert mapper.add_mapping(Mapping(DSN, 1, 10), next_in_order=1) == []
    assert mapper.deliver(1, b"abcd") == [Deliver(DSN, b"abcd")]
    assert mapper.deliver(5, b"efghijXY") == [Deliver(DSN + 4, b"efghij"), Unmapped(11, 2)]


def test_checksum_verified_per_whole_mapping() -> None:
    data = b"0123456789"
    good = dss_checksum(DSN, 1, 10, data)
    mapper = SubflowReceiveMapper(checksums=True)
    mapper.add_mapping(Mapping(DSN, 1, 10, checksum=good), 1)
    assert mapper.deliver(1, data[:4]) == []  # held until the mapping is complete
    assert mapper.deliver(5, data[4:]) == [Deliver(DSN, data)]
    bad = SubflowReceiveMapper(checksums=True)
    bad.add_mapping(Mapping(DSN + 10, 11, 4, checksum=good ^ 1), 11)
    assert bad.deliver(11, b"wxyz") == [ChecksumFailed(DSN + 10, 11, b"wxyz")]


def test_held_bytes_of_a_checksummed_mapping_are_released_on_fallback() -> None:
    """RFC 8684 §3.7: once fallen back the stream is plain TCP; bytes of a mapping whose
    checksum could not be checked yet are its next bytes, not lost."""
    data = b"0123456789"
    mapper = SubflowReceiveMapper(checksums=True)
    mapper.add_mapping(Mapping(DSN, 1, 10, checksum=dss_checksum(DSN, 1, 10, data)), 1)
    assert mapper.take_held() is None  # nothing held yet
    assert mapper.deliver(1, data[:4]) == []
    assert mapper.take_held() == Deliver(DSN, b"0123")
    assert mapper.take_held() is None  # released once


def test_a_mapping_without_its_checksum_is_a_protocol_error_when_checksums_are_used() -> None:
    mapper = SubflowReceiveMapper(checksums=True)
    (error,) = mapper.add_mapping(Mapping(DSN, 1, 10), 1)
    assert isinstance(error, MappingError) and "without a checksum" in error.reason
    assert mapper.add_mapping(Mapping(DSN, 1, 0), 1) == []  # an infinite mapping has 0


def test_data_fin_with_data_and_bare() -> None:
    mapper = SubflowReceiveMapper(checksums=False)
    mapper.add_mapping(Mapping(DSN, 1, 4, data_fin=True), 1)
    assert mapper.deliver(1, b"abc") == [Deliver(DSN, b"abc"), DataFin(DSN + 3)]
    bare = SubflowReceiveMapper(checksums=False)
    assert bare.add_mapping(Mapping(DSN + 3, 4, 1, data_fin=True), 4) == [DataFin(DSN + 3)]


def test_a_changed_mapping_is_a_protocol_error_and_a_repeat_is_fine() -> None:
    mapper = SubflowReceiveMapper(checksums=False)
    mapper.add_mapping(Mapping(DSN, 1, 10), 1)
    assert mapper.add_mapping(Mapping(DSN, 1, 10), 1) == []
    (error,) = mapper.add_mapping(Mapping(DSN + 5, 1, 10), 1)
    assert isinstance(error, MappingError) and "changed" in error.reason


def test_infinite_mapping_maps_everything_after_it() -> None:
    mapper = SubflowReceiveMapper(checksums=False)
    mapper.add_mapping(Mapping(DSN, 100, 0), 100)
    assert mapper.fallen_back
    assert mapper.deliver(150, b"tail") == [Deliver(DSN + 50, b"tail")]


@settings(deadline=None, max_examples=150)
@given(data=st.binary(min_size=1, max_size=3000), seed=st.integers(0, 2**32), csum=st.booleans())
def test_any_mapping_and_segment_cuts_translate_the_stream(
    data: bytes, seed: int, csum: bool
) -> None:
    rng = random.Random(seed)
    mappings, position = [], 0
    while position < len(data):
        length = rng.randint(1, 700)
        chunk = data[position : position + length]
        checksum = dss_checksum(DSN + position, position + 1, len(chunk), chunk) if csum else None
        mappings.append(Mapping(DSN + position, position + 1, len(chunk), checksum))
        position += length
    mapper = SubflowReceiveMapper(checksums=csum)
    out = bytearray()
    position = 0
    pending = list(mappings)
    while position < len(data):
        piece = data[position : position + rng.randint(1, 400)]
        # Every mapping the piece touches has arrived (with it or earlier); sometimes
        # the next one arrives early too.
        early = rng.randint(0, 400)
        while pending and pending[0].subflow_seq <= position + len(piece) + early:
            assert mapper.add_mapping(pending.pop(0), position + 1) == []
        for event in mapper.deliver(position + 1, piece):
            assert isinstance(event, Deliver), event
            assert event.dsn == DSN + len(out)
            out += event.data
        position += len(piece)
    assert bytes(out) == data


def test_data_fin_added_to_a_mapping_when_sent_again() -> None:
    """Linux resends the last mapping with DATA_FIN set (one DSN longer): not a conflict."""
    mapper = SubflowReceiveMapper(checksums=False)
    assert mapper.add_mapping(Mapping(500, 1, 10), 1) == []
    assert mapper.deliver(1, b"x" * 4) == [Deliver(500, b"xxxx")]
    assert mapper.add_mapping(Mapping(500, 1, 11, data_fin=True), 5) == []
    assert mapper.deliver(5, b"y" * 6) == [Deliver(504, b"yyyyyy"), DataFin(510)]


def test_a_mapping_sent_again_without_its_data_fin_is_the_same_mapping() -> None:
    """Linux may resend the last bytes of a transfer without the DATA_FIN it first sent
    with them (length one less): the bytes' mapping is the same, and Linux compares
    mappings without the FIN's DSN. It used to fail the subflow ("mapping changed")."""
    mapper = SubflowReceiveMapper(checksums=False)
    assert mapper.add_mapping(Mapping(500, 1, 11, data_fin=True), 1) == []
    assert mapper.deliver(1, b"x" * 4) == [Deliver(500, b"xxxx")]
    assert mapper.add_mapping(Mapping(500, 1, 10), 5) == []
    assert mapper.deliver(5, b"y" * 6) == [Deliver(504, b"yyyyyy"), DataFin(510)]
    # other bytes at the same place are still a conflict
    other = SubflowReceiveMapper(checksums=False)
    assert other.add_mapping(Mapping(500, 1, 11, data_fin=True), 1) == []
    assert isinstance(other.add_mapping(Mapping(600, 1, 10), 1)[0], MappingError)


def test_data_fin_on_a_mapping_whose_bytes_were_all_delivered() -> None:
    mapper = SubflowReceiveMapper(checksums=False)
    mapper.add_mapping(Mapping(500, 1, 10), 1)
    mapper.deliver(1, b"x" * 10)
    assert mapper.add_mapping(Mapping(500, 1, 11, data_fin=True), 11) == [DataFin(510)]


def test_mappings_for_future_bytes_are_bounded() -> None:
    """100,000 mappings for bytes never sent (issue 11: 27 MB on one connection) keep at
    most MAX_MAPPINGS; those beyond the receive window are not kept at all; the stream's
    own mappings still work after the flood."""
    from stack.mptcp.mapping import MAX_MAPPINGS

    mapper = SubflowReceiveMapper(checksums=False, window=1 << 20)
    for i in range(100_000):
        mapper.add_mapping(Mapping(10_000 + i * 10, 2 + i * 10, 10), next_in_order=1)
    assert len(mapper._mappings) == MAX_MAPPINGS == len(mapper._starts)
    assert mapper.ignored == 100_000 - MAX_MAPPINGS
    far = SubflowReceiveMapper(checksums=False, window=1 << 20)
    assert far.add_mapping(Mapping(5, (1 << 20) + (1 << 17), 10), next_in_order=1) == []
    assert far.ignored == 1 and not far._mappings
    # the stream's own mapping, within the window, is still kept and used
    assert far.add_mapping(Mapping(7, 1, 3), next_in_order=1) == []
    assert far.deliver(1, b"abc") == [Deliver(7, b"abc")]
