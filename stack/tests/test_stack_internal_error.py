"""An internal error on the stack's I/O loop resets the connection it happened in.

An exception while the loop works for one connection (a bug of ours, or a send the
kernel refuses, e.g. `OSError: [Errno 90] Message too long` from the AF_PACKET socket)
used to be caught by the loop and counted, and nothing more: the connection lost the
rest of that round (its output, its timer), went silent, and its application waited
for 120 s. Now the connection is reset as any broken host's would be: a RST with
MP_FASTCLOSE and MP_TCPRST on every subflow, the kernel peer's socket reports the
reset, and the application's calls fail with an error naming the exception. The stack
goes on serving its other connections.

The error is injected where the loop enters a connection: a segment batch
(`handle_segments`), a timer (`handle_timer`, with the kernel's ACKs dropped so that a
retransmission timer must fire), and the output (the link's send raising EMSGSIZE).
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from stack.tests.test_mptcp_multipath import ADDRESSES, Session, session
from testbed import Topology

pytestmark = [pytest.mark.netns, pytest.mark.kernel]

MESSAGE_TOO_LONG = OSError(errno.EMSGSIZE, os.strerror(errno.EMSGSIZE))


def _nft(s: Session, *commands: str) -> None:
    ns = s.topo.hosts["server"].ns.name
    for command in commands:
        subprocess.run(["ip", "netns", "exec", ns, "nft", *command.split()], check=True)


@contextmanager
def _kernel_acks_dropped(s: Session) -> Iterator[None]:
    """The kernel's segments to the stack are lost (nftables on its output)."""
    client = ", ".join(ADDRESSES["client"])
    _nft(s, "add table inet stalltest",
         "add chain inet stalltest out { type filter hook output priority 0 ; }",
         f"add rule inet stalltest out ip daddr {{ {client} }} drop")  # fmt: skip
    try:
        yield
    finally:
        _nft(s, "delete table inet stalltest")


def _break_link_sends(s: Session) -> Callable[[], None]:
    """Every data frame the stack sends raises EMSGSIZE; returns the repair."""
    links = list(s.stack.host.links.values())
    for link in links:
        send_tcp, send = link.send_tcp, link.send

        def bad_send_tcp(head: Any, payload: Any, *, _send: Any = send_tcp, **kw: Any) -> bool:
            if len(payload):
                raise MESSAGE_TOO_LONG
            return bool(_send(head, payload, **kw))

        def bad_send(frame: Any, _send: Any = send) -> bool:
            if len(frame) > 200:  # data; ARP, pure ACKs and resets are shorter
                raise MESSAGE_TOO_LONG
            return bool(_send(frame))

        link.send_tcp = bad_send_tcp  # type: ignore[method-assign]
        link.send = bad_send  # type: ignore[method-assign]

    def repair() -> None:
        for link in links:
            del link.send_tcp, link.send

    return repair


def _raiser(message: str) -> Callable[..., None]:
    def boom(*args: Any) -> None:
        raise RuntimeError(message)

    return boom


@pytest.mark.parametrize("where", ["segments", "timer", "link-send"])
def test_an_internal_error_resets_its_connection(
    topology: Callable[..., Topology], where: str
) -> None:
    with session(topology, "client", ("", ",subflow")) as s, s.kernel.counters_delta() as kernel:
        s.open()
        assert s.sock is not None
        sock, msk = s.sock, s.sock.msk
        outcome: list[object] = []

        def kernel_reads() -> None:
            try:
                while s.kernel_sock.recv(1 << 16):
                    pass
                outcome.append("EOF")
            except OSError as error:
                outcome.append(error)

        reader = threading.Thread(target=kernel_reads)
        reader.start()
        sock.sendall(b"x" * 2_000_000, timeout=10)  # the connection works
        repair = None
        if where == "segments":
            msk.handle_segments = _raiser("injected into handle_segments")  # type: ignore[method-assign]
            expected = "RuntimeError: injected into handle_segments"
        elif where == "timer":
            msk.handle_timer = _raiser("injected into handle_timer")  # type: ignore[method-assign]
            expected = "RuntimeError: injected into handle_timer"
        else:
            repair = _break_link_sends(s)
            expected = "OSError: [Errno 90] Message too long"
        started = time.monotonic()
        with _kernel_acks_dropped(s) if where == "timer" else _nothing():
            with pytest.raises(ConnectionError) as raised:
                sock.sendall(b"y" * (256 << 20), timeout=20)
            took = time.monotonic() - started
            reader.join(10)
        assert expected in str(raised.value) and "internal error" in str(raised.value)
        assert took < 5, took  # at once (the next segment, timer or send), not a timeout
        assert outcome and isinstance(outcome[0], ConnectionResetError), outcome
        info = sock.info()
        assert all(f["state"] == "failed" for f in info["subflows"]), info["subflows"]
        assert msk.closed and msk.error == str(raised.value)
        host = s.stack.host
        assert host.counters.internal_errors >= 1 and expected in host.last_error
        with pytest.raises(ConnectionError, match="internal error"):
            sock.sendall(b"z", timeout=5)  # every later call fails the same way
        if repair is not None:
            repair()
        # the stack goes on: a new connection carries data
        s.listener.close()
        s.open()
        s.sock.sendall(b"w" * 1_000_000, timeout=10)
        got = 0
        while got < 1_000_000:
            got += len(s.kernel_sock.recv(1 << 20))
        s.sock.close()
        s.kernel_sock.close()
        s.listener.close()
    assert kernel.get("MPFastcloseRx", 0) >= 1, kernel  # the ACK with MP_FASTCLOSE: it reset


@contextmanager
def _nothing() -> Iterator[None]:
    yield
