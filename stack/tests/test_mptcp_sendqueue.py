from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stack.mptcp.reassembly import DSN_MOD, DataReassembly
from stack.mptcp.sendqueue import DataSendQueue


def test_dsns_are_consecutive_and_acks_free_the_buffer() -> None:
    q = DataSendQueue(100, capacity=10)
    assert q.write(b"0123456789abc") == 10  # bounded
    assert q.take(4) == (100, b"0123")
    assert q.take(4) == (104, b"4567")
    assert q.acknowledge(104) == 4
    assert q.space == 4
    assert q.acknowledge(104) == 0  # duplicate
    assert q.acknowledge(200) == 0  # beyond what was sent: ignored
    assert q.take(10) == (108, b"89")
    assert q.take(10) is None


def test_a_data_ack_beyond_what_was_sent_is_told_from_an_old_one() -> None:
    q = DataSendQueue(100, capacity=10)
    q.write(b"0123456789")
    q.take(4)  # 100..103 in flight
    assert not q.beyond_sent(104) and not q.beyond_sent(102)  # up to snd_nxt: valid
    assert q.beyond_sent(105) and q.beyond_sent((100 + 2**63 - 4096) % DSN_MOD)
    assert not q.beyond_sent(99) and not q.beyond_sent((100 + 2**63) % DSN_MOD)  # old


def test_reinjection_goes_first_and_skips_acknowledged_parts() -> None:
    q = DataSendQueue(0, capacity=100)
    q.write(b"abcdefghij")
    q.take(6)  # on a subflow that then fails
    q.reinject(0, 6)
    q.acknowledge(2)  # a DATA_ACK arrives for part of it meanwhile
    assert q.take(3) == (2, b"cde")
    assert q.take(3) == (5, b"f")
    assert q.take(3) == (6, b"ghi")
    assert q.reinjected_bytes == 4


def test_a_reinjection_acknowledged_meanwhile_is_no_reinjection() -> None:
    """A range queued for reinjection that a DATA_ACK then covers is skipped by take():
    the next bytes are new data, which the connection must hold to the peer's window
    (it skips the window check only for old bytes). Counting the stale range as a
    reinjection let new data past the window."""
    q = DataSendQueue(0, capacity=100)
    q.write(b"abcdefghij")
    q.take(4)
    q.reinject(0, 4)  # its subflow failed...
    q.acknowledge(4)  # ...but the peer had it all
    assert not q.reinjecting
    assert q.has_work()  # the unsent bytes
    assert q.take(3) == (4, b"efg")
    q.take(10)
    q.reinject(4, 6)
    q.acknowledge(10)
    assert not q.reinjecting and not q.has_work()


def test_data_fin_takes_one_dsn() -> None:
    q = DataSendQueue(DSN_MOD - 2, capacity=100)
    q.write(b"xyz")
    q.close()
    with pytest.raises(BrokenPipeError):
        q.write(b"more")
    q.take(10)
    assert q.fin_dsn == 1
    q.mark_fin_sent()
    assert q.acknowledge(2) == 3
    assert q.fin_acknowledged


@settings(deadline=None, max_examples=100)
@given(data=st.binary(min_size=1, max_size=3000), seed=st.integers(0, 2**32))
def test_lossy_subflows_with_reinjection_deliver_the_stream(data: bytes, seed: int) -> None:
    """Chunks go to two 'subflows'; one loses everything it carries until it is declared
    failed and its unacknowledged data reinjected; the receiver gets the exact stream."""
    rng = random.Random(seed)
    start = rng.randrange(DSN_MOD)
    q = DataSendQueue(start, capacity=1 << 20)
    r = DataReassembly(start, window=1 << 20)
    q.write(data)
    failed_after = rng.randint(0, 10)
    held: list[tuple[int, int]] = []
    sent = 0
    while q.has_work():
        chunk = q.take(rng.randint(1, 200))
        assert chunk is not None
        dsn, payload = chunk
        sent += 1
        if sent % 2 and sent <= failed_after * 2:
            held.append((dsn, len(payload)))  # lost with the dying subflow
        else:
            r.add(dsn, payload)
            q.acknowledge(r.next_dsn)
        if not q.has_work() and held:
            for dsn, length in held:
                q.reinject(dsn, length)
            held.clear()
    assert r.read() == data
    assert q.acknowledge(r.next_dsn) == 0 and q.in_flight == 0
