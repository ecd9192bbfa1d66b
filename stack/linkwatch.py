"""Link up and down of the stack's interfaces, from the kernel's rtnetlink link events.

The stack learns that a link went down from ENETDOWN on its raw socket, but it has no
way to learn that it came back except by trying. A NETLINK_ROUTE socket in the
interfaces' namespace, in the RTMGRP_LINK group, hears every RTM_NEWLINK: a link is
up when it is administratively up (IFF_UP) and has its carrier (IFF_RUNNING: the veth
peer, or the cable, is up too). Only the two header fields needed are decoded
(nlmsghdr, then ifinfomsg); the attributes that follow are skipped.
"""

from __future__ import annotations

import errno
import socket
import struct

RTMGRP_LINK = 0x1
RTM_NEWLINK = 16
RTM_DELLINK = 17
IFF_UP = 0x1
IFF_RUNNING = 0x40
NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port
IFINFO = struct.Struct("=BxHiII")  # family, (pad), type, index, flags, change


def parse_link_events(data: bytes) -> list[tuple[int, bool]]:
    """(interface index, up) for each RTM_NEWLINK/RTM_DELLINK in one netlink datagram;
    anything truncated or of another type is skipped."""
    events = []
    offset = 0
    while offset + NLMSG_HEADER.size <= len(data):
        length, kind, _, _, _ = NLMSG_HEADER.unpack_from(data, offset)
        if length < NLMSG_HEADER.size or offset + length > len(data):
            break
        body = offset + NLMSG_HEADER.size
        if kind in (RTM_NEWLINK, RTM_DELLINK) and length >= NLMSG_HEADER.size + IFINFO.size:
            _, _, index, flags, _ = IFINFO.unpack_from(data, body)
            up = kind == RTM_NEWLINK and bool(flags & IFF_UP) and bool(flags & IFF_RUNNING)
            events.append((index, up))
        offset += (length + 3) & ~3  # NLMSG_ALIGN
    return events


class LinkWatcher:
    """Reports when one of `interfaces` (index -> name) goes down or comes back up.

    Open it in the interfaces' namespace; it does not block."""

    def __init__(self, interfaces: dict[int, str]):
        self.interfaces = dict(interfaces)
        self.up: dict[str, bool] = {}  # the last state heard (none yet: unknown)
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                             socket.NETLINK_ROUTE)  # fmt: skip
        try:
            sock.bind((0, RTMGRP_LINK))
        except OSError:
            sock.close()
            raise
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def changes(self) -> list[tuple[str, bool]]:
        """(interface name, up) for each change of state since the last call. A link
        seen for the first time counts as a change (up after an unknown state is news
        worth acting on: retransmit, join again)."""
        changed = []
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as error:
                if error.errno == errno.ENOBUFS:  # events were lost; the next ones tell
                    continue
                break
            for index, up in parse_link_events(data):
                name = self.interfaces.get(index)
                if name is None or self.up.get(name) == up:
                    continue
                self.up[name] = up
                changed.append((name, up))
        return changed
