"""Traffic apps between two namespaces: MPTCP and TCP transfers checked end to end."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator

import pytest

from testbed.apps import (
    BLOCK,
    AppReport,
    Divergence,
    StreamChecker,
    TransferResult,
    join_remap_evidence,
    kernel_join_remap,
    stream_chunk,
    stream_sha256,
    transfer,
)
from testbed.mptcp import KernelMptcp
from testbed.netns import Namespace
from testbed.process import run, spawn
from testbed.tests.test_process import linked_namespaces

pytestmark = pytest.mark.netns
MB20 = 20 * 1000 * 1000


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Namespace, Namespace]]:
    """Client a (192.0.2.1) and server b (192.0.2.2) over one veth; shared by the module's
    tests, which each use their own port."""
    with linked_namespaces(1) as namespaces:
        yield namespaces


@pytest.mark.parametrize("direction", ["upload", "download"])
def test_20mb_mptcp_transfer_arrives_intact(
    pair: tuple[Namespace, Namespace], direction: str
) -> None:
    client, server = pair
    port = 5200 if direction == "upload" else 5201
    result = transfer(server, client, "192.0.2.2", port, MB20, direction=direction, timeout=20)
    assert result.intact, result
    sender, receiver = (
        (result.client, result.server) if direction == "upload" else (result.server, result.client)
    )
    assert sender.bytes_sent == receiver.bytes_received == MB20
    assert receiver.divergences == []
    assert sender.sha256_sent == receiver.sha256_received == stream_sha256(MB20)
    assert (sender.role, receiver.role) == ("source", "sink")
    for end in (result.client, result.server):
        assert end.mptcp["in_use"] is True and end.mptcp["fallback"] is False
        assert end.mptcp["token"] != 0 and end.mptcp["subflows_total"] == 1
    # Each end has its own token; both count the data they moved at the MPTCP level.
    assert result.client.mptcp["token"] != result.server.mptcp["token"]
    assert sender.mptcp["bytes_sent"] == MB20
    assert result.goodput_mbps > 0


def test_20mb_plain_tcp_transfer_arrives_intact(pair: tuple[Namespace, Namespace]) -> None:
    client, server = pair
    result = transfer(server, client, "192.0.2.2", 5202, MB20, protocol="tcp", timeout=20)
    assert result.intact, result
    assert result.server.sha256_received == stream_sha256(MB20)
    assert result.client.mptcp == {} and result.server.protocol == "tcp"


def test_mptcp_over_ipv6_arrives_intact(pair: tuple[Namespace, Namespace]) -> None:
    client, server = pair
    result = transfer(server, client, "2001:db8::2", 5205, 2_000_000, timeout=10)
    assert result.intact, result
    assert result.client.remote == "[2001:db8::2]:5205"
    assert result.client.mptcp["in_use"] is True


def test_echo_round_trip_returns_every_byte(pair: tuple[Namespace, Namespace]) -> None:
    client, server = pair
    # Larger than the socket buffers both ways: the source must read while it sends.
    nbytes = 8 * 1000 * 1000 + 7
    result = transfer(server, client, "192.0.2.2", 5203, nbytes, direction="echo", timeout=20)
    assert result.intact, result
    assert result.client.bytes_received == nbytes
    assert result.client.sha256_received == result.client.sha256_sent == stream_sha256(nbytes)
    assert result.server.role == "echo" and result.server.bytes_sent == nbytes


def test_mptcp_client_to_a_tcp_server_reports_the_fallback(
    pair: tuple[Namespace, Namespace],
) -> None:
    client, server = pair
    with KernelMptcp(client) as kernel, kernel.counters_delta() as moved:
        result = transfer(server, client, "192.0.2.2", 5204, 100_000, server_protocol="tcp",
                          timeout=10)  # fmt: skip
    assert result.intact, result
    assert result.client.mptcp["in_use"] is False and result.client.mptcp["fallback"] is True
    assert moved.get("MPCapableFallbackSYNACK") == 1


def _check_in_reads(data: bytes, read: int) -> list[Divergence]:
    checker = StreamChecker()
    for start in range(0, len(data), read):
        checker.update(memoryview(data)[start : start + read])
    return checker.finish()


def test_stream_checker_stops_at_once_on_data_that_is_not_the_stream() -> None:
    checker = StreamChecker()
    other = stream_chunk(0, seed=7) + stream_chunk(1, seed=7)
    checker.update(other[:4096])
    assert checker.is_stream is False and not checker.checking
    checker.update(other[4096:])
    assert checker.finish() == [] and checker.offset == len(other)


def test_stream_checker_stops_scanning_after_a_long_corrupted_range() -> None:
    stream = bytearray(stream_chunk(0))
    stream[200_000:600_000] = stream_chunk(0, seed=7)[:400_000]
    checker = StreamChecker()
    for start in range(0, len(stream), 65_536):
        checker.update(memoryview(stream)[start : start + 65_536])
    assert checker.is_stream is True and not checker.checking
    [divergence] = checker.finish()
    assert divergence.offset == 200_000 and divergence.length > 1 << 16


def test_a_seed_gives_other_bytes_and_their_digest() -> None:
    assert stream_chunk(0, seed=7) != stream_chunk(0)
    assert stream_sha256(3 << 20, seed=7) != stream_sha256(3 << 20)


def test_stream_checker_passes_the_stream_read_across_the_mib_boundary() -> None:
    stream = stream_chunk(0) + stream_chunk(1)
    assert _check_in_reads(stream, 100_003) == []


def test_stream_checker_locates_bytes_delivered_at_the_wrong_offset() -> None:
    # 1500 bytes of offset 100000 delivered at offset BLOCK - 700 (spanning two reads
    # and the MiB boundary): one range, and where its bytes belong.
    stream = bytearray(stream_chunk(0) + stream_chunk(1))
    stream[BLOCK - 700 : BLOCK + 800] = stream[100_000:101_500]
    assert _check_in_reads(bytes(stream), 65_536) == [Divergence(BLOCK - 700, 1500, 100_000)]


def test_stream_checker_reports_bytes_that_are_nowhere_in_the_stream() -> None:
    stream = bytearray(stream_chunk(0))
    stream[5000:5100] = bytes(100)
    stream[9000:9001] = bytes([stream[9000] ^ 0xFF])
    assert _check_in_reads(bytes(stream), 4096) == [Divergence(5000, 100), Divergence(9000, 1)]


# The stream that the CI run of 2026-12-02 received (SHA-256 935d6493...) in
# test_kernel_topologies[dual_homed]: the join subflow's first mapping (DSN 88752, 9432
# bytes) applied at the msk's ack_seq of the moment, 808 bytes too low.
_CI_SHIFTED = (88_752, 89_560, 98_184)
_CI_SHA256 = "935d64934e0061245c1b5ec3374b7cd5e147d61e9bb24d21dc0987ae0a5494da"


def _ci_stream() -> bytes:
    start, source, end = _CI_SHIFTED
    stream = stream_chunk(0) + stream_chunk(1)
    return stream[:start] + stream[source:end] + stream[start + end - source :]


def _upload(received: bytes, divergences: list[Divergence]) -> TransferResult:
    n = len(received)
    sent = AppReport("source", "client", "mptcp", bytes_sent=n, sha256_sent=stream_sha256(n))
    got = AppReport("sink", "server", "mptcp", bytes_received=n,
                    sha256_received=hashlib.sha256(received).hexdigest(),
                    divergences=divergences)  # fmt: skip
    return TransferResult(sent, got, "upload", n)


def test_stream_checker_explains_the_corrupt_ci_transfer() -> None:
    received = _ci_stream()
    assert hashlib.sha256(received).hexdigest() == _CI_SHA256
    assert _check_in_reads(received, 1 << 18) == [Divergence(88_752, 8_624, 89_560)]


def test_kernel_join_remap_needs_its_whole_signature() -> None:
    received = _ci_stream()
    found = _check_in_reads(received, 1 << 18)
    mib = {"MPJoinAckRx": 1}
    assert "808 bytes early" in kernel_join_remap(_upload(received, found), mib)
    # Without a join it is something else.
    assert kernel_join_remap(_upload(received, found), {"DuplicateData": 1}) == ""
    # Bytes from earlier in the stream (a replay), or two runs, are not this bug.
    replay = [Divergence(89_560, 8_624, 88_752)]
    assert kernel_join_remap(_upload(received, replay), mib) == ""
    two = [*found, Divergence(500_000, 10, 600_000)]
    assert kernel_join_remap(_upload(received, two), mib) == ""
    far = [Divergence(88_752, 8_624, 88_752 + (8 << 20) + 1)]  # beyond any receive window
    assert kernel_join_remap(_upload(received, far), mib) == ""
    # Neither are missing bytes.
    short = _upload(received, found)
    short.server.bytes_received -= 1
    assert kernel_join_remap(short, mib) == ""
    intact = _upload(stream_chunk(0) + stream_chunk(1), [])
    assert intact.intact and kernel_join_remap(intact, mib) == ""


# The interop aggregation cell (kernel->kernel, 60 MB of the stream of seed 4242) as
# received on 2026-12-05: the join's first mapping (DSN 163640, 61304 bytes) applied at
# the msk's ack_seq 88752, so its bytes from 173072 on arrived at 98184.
_INTEROP_SEED = 4242  # conformance.interop.cell.DATA_SEED
_INTEROP_SHIFTED = (98_184, 173_072, 224_944)


def test_stream_checker_of_a_seed_locates_the_interop_remap() -> None:
    start, source, end = _INTEROP_SHIFTED
    stream = b"".join(stream_chunk(i, _INTEROP_SEED) for i in range(2))
    received = stream[:start] + stream[source:end] + stream[start + end - source :]
    checker = StreamChecker(_INTEROP_SEED)
    for at in range(0, len(received), 1 << 18):
        checker.update(received[at : at + (1 << 18)])
    [run] = checker.finish()
    assert (run.offset, run.source) == (start, source) and run.length <= end - source
    # The default seed does not take that data for its stream: nothing is located.
    assert _check_in_reads(received, 1 << 18) == []
    # The shift (74888) is larger than a mapping: still the join remap, with a join.
    evidence = join_remap_evidence([run], {"MPJoinAckRx": 1, "DuplicateData": 2})
    assert "74888 bytes early" in evidence and "DuplicateData 2" in evidence
    assert join_remap_evidence([run], {"DuplicateData": 2}) == ""
    beyond = Divergence(start, run.length, start + (8 << 20) + 1)
    assert join_remap_evidence([beyond], {"MPJoinAckRx": 1}) == ""


def test_intact_is_false_when_the_ends_disagree() -> None:
    good = AppReport("source", "client", "tcp", bytes_sent=10, sha256_sent="a")
    short = AppReport("sink", "server", "tcp", bytes_received=9, sha256_received="a")
    assert not TransferResult(good, short, "upload", 10).intact
    other = AppReport("sink", "server", "tcp", bytes_received=10, sha256_received="b")
    assert not TransferResult(good, other, "upload", 10).intact
    same = AppReport("sink", "server", "tcp", bytes_received=10, sha256_received="a")
    assert TransferResult(good, same, "upload", 10).intact
    assert not TransferResult(good, AppReport("sink", "server", "tcp", error="x"), "upload",
                              10).intact  # fmt: skip


def test_refused_connection_is_reported_not_raised(pair: tuple[Namespace, Namespace]) -> None:
    from testbed.apps import connect_one

    report = connect_one(pair[0], "192.0.2.2", 5299, "source", 10, "mptcp", timeout=5)
    assert "Connection refused" in report.error


# ---------------------------------------------------------------------- the program

APPS = [sys.executable, "-m", "testbed.apps"]


def test_cli_server_and_client_in_two_namespaces(pair: tuple[Namespace, Namespace]) -> None:
    client, server = pair
    nbytes = 3 * 1000 * 1000
    with spawn(server, [*APPS, "sink", "--bind", "192.0.2.2", "--port", "5210", "--json",
                        "--timeout", "10"]) as sink:  # fmt: skip
        ready = json.loads(sink.wait_for_line('"listening"', timeout=15))
        assert ready == {"event": "listening", "address": "192.0.2.2", "port": 5210,
                         "protocol": "mptcp", "role": "sink"}  # fmt: skip
        sent = run(client, [*APPS, "source", "--connect", "192.0.2.2:5210", "--bytes",
                            str(nbytes), "--json"], timeout=30)  # fmt: skip
        assert sink.wait(15) == 0
    (client_line,) = sent.stdout.splitlines()
    client_report = json.loads(client_line)
    server_report = json.loads(sink.stdout.splitlines()[-1])
    assert client_report["bytes_sent"] == server_report["bytes_received"] == nbytes
    assert client_report["sha256_sent"] == server_report["sha256_received"]
    assert server_report["mptcp"]["in_use"] is True
    assert client_report["mptcp"]["token"] > 0
    for key in ("role", "protocol", "bytes_sent", "bytes_received", "sha256_sent",
                "sha256_received", "duration_s", "goodput_mbps"):  # fmt: skip
        assert key in client_report and key in server_report


def test_cli_summary_line_and_error_line(pair: tuple[Namespace, Namespace]) -> None:
    client, server = pair
    with spawn(server, [*APPS, "echo", "--bind", "192.0.2.2", "--port", "5211"]) as echo:
        echo.wait_for_line('"listening"', timeout=15)
        done = run(client, [*APPS, "source", "--connect", "192.0.2.2:5211", "--bytes", "1000"],
                   timeout=30)  # fmt: skip
        assert echo.wait(15) == 0
    assert done.stdout.count("\n") == 1
    assert "client source" in done.stdout and "received 1000 B" in done.stdout
    assert "MPTCP token" in done.stdout and ": ok" in done.stdout
    failed = run(client, [*APPS, "sink", "--connect", "192.0.2.2:5299", "--json"], timeout=30,
                 check=False)  # fmt: skip
    assert failed.returncode == 1
    assert "Connection refused" in json.loads(failed.stdout)["error"]
    assert "Traceback" not in failed.stderr
    busy = run(server, [*APPS, "sink", "--bind", "203.0.113.99", "--port", "1"], timeout=30,
               check=False)  # fmt: skip
    assert busy.returncode == 1 and json.loads(busy.stdout)["event"] == "error"
    assert "Traceback" not in busy.stderr
