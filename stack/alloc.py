"""The C allocator's policy for the stack's buffers: a big buffer gets a mapping of its own.

The stack keeps each connection's bytes in bytearrays that grow and shrink by realloc
(the data-level send queue and reassembly, each subflow's send and receive buffer),
from nothing to several MB (`MptcpConfig.send_buffer`, `receive_buffer`: 4 MB) and back
for every transfer. Python hands any allocation above 512 bytes to the C library's
malloc. glibc serves an allocation above `M_MMAP_THRESHOLD` (128 KiB) with a mapping of
its own, which goes back to the system when it is freed, but it raises that threshold
to the size of every mapped chunk that is freed (up to 32 MB: the "dynamic mmap
threshold"). After the first multi-MB buffer of a transfer is freed, every later one
comes from the loop thread's heap instead, among the small objects that live longer
(segments, timers, dicts), and glibc returns only the top of a heap to the system.
The free holes those buffers leave behind stay resident, and grow as sizes and
lifetimes interleave: the soak (`bench/bench_soak.py`, 6196 transfers in 30 minutes)
measured the stack's RSS from 124 to 172 MB with no Python object left over (the
counts of live objects, by type, were flat; glibc's `mallinfo2` said that the heap's
free part grew, from 25 to 54 MB in 4 minutes, while its part in use did not).

Setting the threshold explicitly turns the dynamic adjustment off (mallopt(3)): a
buffer above it is always its own mapping, returned to the system when it is freed or
shrunk, and the heap holds only what is smaller. (Linux's socket buffers are lists of
skbs of a page or a few each, never one block, so the kernel never meets this.)

One arena for every thread (`M_ARENA_MAX` 1). glibc gives a thread that finds the
arenas busy an arena of its own (up to 8 per core), and a thread that ends leaves its
arena to the next one. The stack's loop thread and its applications' threads (one per
connection in `serve`) allocate in turn, so with its 4 connections at a time the soak's
stack process had 8 arenas, each growing to its own high-water mark at its own time and
keeping its free holes: their resident part grew from 4.8 to 12.5 MB in 6 minutes while
the main arena stayed at 11 MB, the allocators' "warm-up" that kept the soak's RSS
from being flat. With one arena, the holes one thread leaves are the next allocation's
of any thread. Python threads hold the GIL while they allocate, so they hardly ever
contend for the arena's lock.

Process-wide, once, by the first `Host`; a no-op without glibc (musl's allocator has no
dynamic threshold and no per-thread arenas, and its `mallopt` does nothing). A thread
that already has an arena keeps it: set the limit before threads allocate.
"""

from __future__ import annotations

import ctypes
import functools
import threading

M_MMAP_THRESHOLD = -3  # <malloc.h>
M_ARENA_MAX = -8
MMAP_THRESHOLD = 128 * 1024  # glibc's default starting value, kept fixed
ARENA_MAX = 1

_lock = threading.Lock()
_pinned: bool | None = None  # None: not tried yet


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None  # not glibc: its dynamic threshold is glibc's, so is the remedy
    return libc


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD, arenas: int = ARENA_MAX) -> bool:
    """Fix glibc's mmap threshold at `threshold` (and so turn its dynamic raise off), and
    let all threads share `arenas` arenas. Returns whether both are in force; the first
    call decides, later ones return that."""
    global _pinned
    with _lock:
        if _pinned is None:
            libc = _libc()
            if libc is None:
                _pinned = False
            else:
                libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                libc.mallopt.restype = ctypes.c_int
                _pinned = (libc.mallopt(M_MMAP_THRESHOLD, threshold) == 1
                           and libc.mallopt(M_ARENA_MAX, arenas) == 1)  # fmt: skip
        return _pinned


def release_free_memory() -> bool:
    """Give the free pages inside the heap back to the system (malloc_trim(0): every
    arena, not only its top). Without it a heap stays as large as its highest peak so
    far, holes included: the free part that grew during the soak's first minutes.
    Returns False without glibc."""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    libc.malloc_trim(0)
    return True


class _Mallinfo2(ctypes.Structure):
    _FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(name, ctypes.c_size_t) for name in _FIELDS.split()]


def malloc_stats() -> dict[str, int] | None:
    """glibc's own account of its memory (mallinfo2(3), glibc 2.33 and later), in bytes:
    `heap` (the heaps' extent, every arena), `heap_in_use` and `heap_free` (its parts:
    free is what fragmentation keeps), `mapped` (chunks that are mappings of their
    own). None without glibc 2.33."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    function = libc.mallinfo2
    function.restype = _Mallinfo2
    info = function()
    return {"heap": info.arena, "heap_in_use": info.uordblks, "heap_free": info.fordblks,
            "mapped": info.hblkhd}  # fmt: skip
