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


def _in_fresh_process(setup: str, check: str = "_check_big_buffers_are_mapped()") -> None:
    """Run `setup`, then the check, in a new interpreter, as a stack process is: this
    one's heap already holds the free chunks of earlier tests, from which glibc serves
    a big request before it considers a mapping at all."""
    code = f"""
import sys
sys.path[:0] = {sys.path!r}
from stack.tests.test_alloc import _check_big_buffers_are_mapped
{setup}
{check}
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


def test_threads_share_one_arena() -> None:
    """Every thread allocates from one arena once a `Host` pinned the policy: glibc gave
    each new thread an arena of its own (up to 8 per core), each keeping its own free
    holes, and the soak's stack grew through them (stack/alloc.py)."""
    _mapped()
    _in_fresh_process(
        "import ctypes, re, tempfile, threading\n"
        "from stack.alloc import pin_mmap_threshold\n"
        "assert pin_mmap_threshold() is True\n"
        "kept = []\n"
        "def work():\n"
        "    kept.append([bytearray(4096 + i) for i in range(64)])  # malloc, not pymalloc\n"
        "threads = [threading.Thread(target=work) for _ in range(6)]\n"
        "for t in threads: t.start()\n"
        "for t in threads: t.join()\n"
        "libc = ctypes.CDLL(None)\n"
        "libc.fopen.restype = ctypes.c_void_p\n"
        "libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]\n"
        "libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]\n"
        "libc.fclose.argtypes = [ctypes.c_void_p]\n"
        "with tempfile.NamedTemporaryFile() as out:\n"
        "    stream = libc.fopen(out.name.encode(), b'w')\n"
        "    assert libc.malloc_info(0, stream) == 0\n"
        "    libc.fclose(stream)\n"
        "    arenas = len(re.findall(r'<heap nr=', open(out.name).read()))\n"
        "assert arenas == 1, f'{arenas} arenas'"
    )


@pytest.mark.netns
def test_a_busy_host_gives_the_heaps_free_pages_back(
    topology: Callable[..., Topology],
) -> None:
    """Memory freed inside the heap goes back to the system while the loop runs, rather
    than staying resident at the heap's highest peak (the soak's warm-up, alloc.py)."""
    _mapped()
    topo = topology(topologies.single_path(bare=("client",)))
    netns = topo.hosts["client"].netns
    _in_fresh_process(
        "import threading\n"
        "import stack.host\n"
        "from stack.host import Host\n"
        "from stack.route import InterfaceConfig\n"
        "stack.host.TRIM_EVERY = 0.0  # every iteration of the loop, for the test\n"
        f"host = Host([InterfaceConfig.parse('eth0=192.0.2.1/24')], netns={netns!r})\n"
        "host.start()\n"
        "def rss():\n"
        "    with open('/proc/self/status') as status:\n"
        "        return next(int(l.split()[1]) for l in status if l.startswith('VmRSS:'))\n"
        "def loop_round():  # one iteration of the loop done, and the trim after it\n"
        "    for _ in range(2):\n"
        "        done = threading.Event()\n"
        "        host.call_soon(lambda: done.set())\n"
        "        assert done.wait(10)\n"
        "loop_round()\n"
        "# 32 MB in the heap, each block followed by a small one that stays: the\n"
        "# blocks freed leave holes inside the heap, not at its top\n"
        "pairs = [(bytearray(40_000), bytearray(1_000)) for _ in range(800)]\n"
        "kept = [small for _, small in pairs]\n"
        "peak = rss()\n"
        "del pairs\n"
        "loop_round()\n"
        "assert peak - rss() > 24 << 10, (peak, rss())\n"
        "host.close()",
        check="",  # the 32 MB of holes would serve the next big buffer: not this test's
    )
