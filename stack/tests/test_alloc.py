"""A stack's big buffers stay mappings of their own (stack/alloc.py), so that freeing one
gives its memory back: with glibc's dynamic mmap threshold they moved into the heap
once the first multi-MB buffer was freed, and the holes they left stayed resident (the
soak's RSS growth, bench/bench_soak.py; reproduced in memory by bench/bench_alloc.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import topologies
from stack.alloc import malloc_stats, pin_mmap_threshold
from stack.host import Host
from stack.route import InterfaceConfig
from testbed import Topology


def _mapped() -> int:
    stats = malloc_stats()
    if stats is None:
        pytest.skip("glibc 2.33 or later only: the dynamic mmap threshold is glibc's")
    return stats["mapped"]


def _check_big_buffers_are_mapped() -> None:
    # a multi-MB buffer freed, as at the end of every transfer: glibc's dynamic
    # threshold would rise to its size, and the next big buffers come from the heap
    transfer = bytearray(8 << 20)
    del transfer
    before = _mapped()  # bytes in mappings of their own
    buffer = bytearray(1 << 20)
    assert _mapped() - before >= 1 << 20, "a 1 MB buffer came from the heap"
    buffer += bytes(1 << 20)  # grown by realloc: still a mapping (mremap)
    assert _mapped() - before >= 2 << 20
    del buffer
    assert _mapped() == before, "freed, its mapping went back to the system"


@pytest.mark.netns
def test_a_hosts_big_buffers_are_mappings_of_their_own(
    topology: Callable[..., Topology],
) -> None:
    _mapped()  # skips without glibc
    topo = topology(topologies.single_path(bare=("client",)))
    host = Host([InterfaceConfig.parse("eth0=192.0.2.1/24")], netns=topo.hosts["client"].netns)
    try:
        _check_big_buffers_are_mapped()
    finally:
        host.close()


def test_pinning_is_idempotent_and_says_whether_it_holds() -> None:
    _mapped()
    assert pin_mmap_threshold() is True
    assert pin_mmap_threshold(64 << 20) is True  # the first call decided: nothing changes
    _check_big_buffers_are_mapped()
