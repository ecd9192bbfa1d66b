"""Thin wrappers over the Linux system calls the testbed needs and Python 3.11 lacks.

Network namespaces are per thread: `setns(fd, CLONE_NEWNET)` moves only the calling
thread, so one process can work in many namespaces without forking.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import socket
import struct

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20
MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(source: str, target: str, fstype: str | None, flags: int) -> None:
    _check(
        _libc.mount(
            source.encode(), target.encode(), fstype.encode() if fstype else None, flags, None
        ),
        f"mount {source} on {target}",
    )


def umount(target: str, flags: int = MNT_DETACH) -> None:
    _check(_libc.umount2(target.encode(), flags), f"umount {target}")


# --- ethtool: the legacy SIOCETHTOOL value commands, enough to switch offloads ---

SIOCETHTOOL = 0x8946
ETHTOOL_SRXCSUM = 0x15
ETHTOOL_STXCSUM = 0x17
ETHTOOL_SSG = 0x19
ETHTOOL_STSO = 0x1F
ETHTOOL_SGSO = 0x24
ETHTOOL_SGRO = 0x2C


def ethtool_set(ifname: str, command: int, value: int) -> None:
    """Run one ETHTOOL_S* value command on `ifname` in the calling thread's namespace."""
    data = ctypes.create_string_buffer(struct.pack("II", command, value))
    ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(data))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)


ETHTOOL_GTXCSUM = 0x16
ETHTOOL_GTSO = 0x1E
ETHTOOL_GGSO = 0x23


def ethtool_get(ifname: str, command: int) -> int:
    """Run one ETHTOOL_G* value command on `ifname`; returns the value."""
    data = ctypes.create_string_buffer(struct.pack("II", command, 0))
    ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(data))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    return int(struct.unpack_from("II", data.raw)[1])


def offloads(ifname: str) -> dict[str, bool]:
    return {
        "tx-checksumming": bool(ethtool_get(ifname, ETHTOOL_GTXCSUM)),
        "tcp-segmentation-offload": bool(ethtool_get(ifname, ETHTOOL_GTSO)),
        "generic-segmentation-offload": bool(ethtool_get(ifname, ETHTOOL_GGSO)),
    }


def disable_offloads(ifname: str) -> None:
    """Make the kernel send MTU-sized frames with their checksums filled in.

    Raw-frame readers (the stack, the tester) then see what a NIC would put on the wire.
    Turning tx checksumming off also turns off scatter-gather and so TSO/GSO, but we
    switch each one explicitly so the result does not depend on feature coupling.
    """
    for command in (ETHTOOL_STSO, ETHTOOL_SGSO, ETHTOOL_SGRO, ETHTOOL_STXCSUM):
        ethtool_set(ifname, command, 0)


def process_start_time(pid: int) -> int | None:
    """The start time of `pid` in clock ticks, or None when no such process exists.

    Together with the pid it identifies a process across pid reuse.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Field 2 (comm) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[19])


def process_cmdline(pid: int) -> bytes:
    """The command line of `pid`, NUL-separated (of a process that is gone: empty)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""
