"""An application that closes with received data unread aborts the connection: the
MPTCP form of TCP's RST for lost data (RFC 1122 4.2.2.13), MP_FASTCLOSE with the peer's
key (RFC 8684 §3.5), as Linux does; and a connection reset by either end takes no join
afterwards. Found by `close.abortive_close_sends_fastclose`."""

from __future__ import annotations

from stack.mptcp.listener import MptcpListener
from stack.tcp.segment import RST
from stack.tests.test_mptcp_join_queue import _join_syn, _pair
from stack.wire.mptcp import MpFastclose


def _close_with_unread_data() -> tuple[object, object, list[object]]:
    client, b, sim, _, reader, _ = _pair(0)
    sim.hooks.remove(reader)  # the server's application reads nothing
    client.send(b"never read", sim.now)
    server = b.msk
    assert server is not None
    assert sim.run(until=sim.now + 1.0, stop=lambda: bool(server.readable))
    server.close(sim.now)
    return client, b, [seg for _, seg in server.poll_segments()]


def test_close_with_unread_data_sends_mp_fastclose_with_the_peer_key() -> None:
    client, b, sent = _close_with_unread_data()
    server = b.msk
    assert server is not None and server.fastclose
    keys = [o.receiver_key for seg in sent for o in seg.extra_options  # type: ignore[attr-defined]
            if isinstance(o, MpFastclose)]  # fmt: skip
    assert keys and set(keys) == {client.local_key}  # type: ignore[attr-defined]
    assert any(seg.flags & RST for seg in sent)  # type: ignore[attr-defined]
    assert server.counters["MPFastcloseTx"] == 1


def test_a_join_after_the_abort_is_refused() -> None:
    """The join comes while the aborted subflows are still being torn down (the
    connection is not closed yet): its token must not be joinable any more."""
    client, b, sim, _, reader, _ = _pair(0)
    sim.hooks.remove(reader)
    client.send(b"never read", sim.now)
    server, listener = b.msk, b.listener
    assert server is not None
    assert sim.run(until=sim.now + 1.0, stop=lambda: bool(server.readable))
    server.close(sim.now)
    assert server is not None and isinstance(listener, MptcpListener)
    b.handle_segment(_join_syn(30_000, server.local_token), 0.0)
    answers = [seg for _, _, seg in listener.poll_segments()]
    assert answers and all(seg.flags & RST for seg in answers)
    assert not server.half_open_joins
