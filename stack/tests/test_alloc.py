"""A stack's big buffers stay mappings of their own (stack/alloc.py), so that freeing one
gives its memory back: with glibc's dynamic mmap threshold they moved into the heap
once the first multi-MB buffer was freed, and the holes they left stayed resident (the
soak's RSS growth, bench/bench_soak.py; reproduced in memory by bench/bench_alloc.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

import topologies
from stack.alloc import malloc_stats
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


def _in_fresh_process(setup: str) -> None:
    """Run `setup`, then the check, in a new interpreter, as a stack process is: this
    one's heap already holds the free chunks of earlier tests, from which glibc serves
    a big request before it considers a mapping at all."""
    code = f"""
import sys
sys.path[:0] = {sys.path!r}
from stack.tests.test_alloc import _check_big_buffers_are_mapped
{setup}
_check_big_buffers_are_mapped()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.netns
def test_a_hosts_big_buffers_are_mappings_of_their_own(
    topology: Callable[..., Topology],
) -> None:
    _mapped()  # skips without glibc
    topo = topology(topologies.single_path(bare=("client",)))
    netns = topo.hosts["client"].netns
    _in_fresh_process(
        "from stack.host import Host\n"
        "from stack.route import InterfaceConfig\n"
        f"host = Host([InterfaceConfig.parse('eth0=192.0.2.1/24')], netns={netns!r})"
    )


def test_pinning_is_idempotent_and_says_whether_it_holds() -> None:
    _mapped()
    _in_fresh_process(
        "from stack.alloc import pin_mmap_threshold\n"
        "assert pin_mmap_threshold() is True\n"
        "assert pin_mmap_threshold(64 << 20) is True  # the first call decided"
    )
