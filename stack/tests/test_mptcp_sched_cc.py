from __future__ import annotations

from dataclasses import dataclass

import pytest

from stack.mptcp.coupled import SubflowWindow, alpha, increase
from stack.mptcp.sched import make_scheduler


@dataclass
class Fake:
    name: str
    usable: bool = True
    backup: bool = False
    srtt: float = 0.01
    send_space: int = 10000


def test_lowest_rtt_prefers_regular_over_faster_backup() -> None:
    sched = make_scheduler("lowest-rtt")
    regular = Fake("regular", srtt=0.050)
    backup = Fake("backup", backup=True, srtt=0.001)
    assert sched.select([backup, regular]) == [regular]
    faster = Fake("faster", srtt=0.010)
    assert sched.select([backup, regular, faster]) == [faster]


def test_backup_carries_data_only_when_no_regular_is_usable() -> None:
    sched = make_scheduler("lowest-rtt")
    regular = Fake("regular", usable=False)
    backup = Fake("backup", backup=True)
    assert sched.select([regular, backup]) == [backup]
    regular.usable = True
    assert sched.select([regular, backup]) == [regular]


def test_a_full_regular_window_does_not_spill_onto_the_backup() -> None:
    sched = make_scheduler("lowest-rtt")
    regular = Fake("regular", send_space=0)
    backup = Fake("backup", backup=True)
    assert sched.select([regular, backup]) == []


def test_round_robin_and_redundant() -> None:
    a, b, c = Fake("a"), Fake("b"), Fake("c", backup=True)
    rr = make_scheduler("round-robin")
    picks = [rr.select([a, b, c])[0].name for _ in range(4)]
    assert sorted(picks) == ["a", "a", "b", "b"]
    assert make_scheduler("redundant").select([a, b, c]) == [a, b]
    with pytest.raises(ValueError, match="unknown scheduler 'fastest'"):
        make_scheduler("fastest")


def test_lia_alpha_equal_paths_and_single_path() -> None:
    one = [SubflowWindow(cwnd=10 * 1448, rtt=0.02, mss=1448)]
    assert alpha(one) == pytest.approx(1.0)
    two = [SubflowWindow(10 * 1448, 0.02, 1448), SubflowWindow(10 * 1448, 0.02, 1448)]
    # Two equal paths: alpha = 2w * (w/r^2) / (2w/r)^2 = 1/2.
    assert alpha(two) == pytest.approx(0.5)


def _fluid_equilibrium(paths: int, coupled: bool, loss: float = 0.001) -> float:
    """Total window at the fluid equilibrium: per RTT each subflow gains its increase for
    cwnd acked bytes and loses loss * cwnd/mss halvings of its window."""
    mss = 1448
    flows = [SubflowWindow(10 * mss, 0.02, mss) for _ in range(paths)]
    for _ in range(20000):
        a = alpha(flows)
        for f in flows:
            gain = increase(f, f.cwnd, flows, a) if coupled else mss
            f.cwnd = max(mss, int(f.cwnd + gain - loss * f.cwnd / mss * f.cwnd / 2))
    return float(sum(f.cwnd for f in flows))


def test_lia_takes_one_tcp_share_of_a_shared_bottleneck() -> None:
    """Two subflows through the same bottleneck (same loss rate) settle at the total
    window one TCP flow reaches there, where two uncoupled flows take twice that."""
    tcp = _fluid_equilibrium(1, coupled=False)
    lia = _fluid_equilibrium(2, coupled=True)
    uncoupled = _fluid_equilibrium(2, coupled=False)
    assert lia == pytest.approx(tcp, rel=0.05)
    assert uncoupled == pytest.approx(2 * tcp, rel=0.05)


def test_lia_is_never_more_aggressive_than_tcp_on_its_own_path() -> None:
    mss = 1448
    solo = SubflowWindow(5 * mss, 0.02, mss)
    assert increase(solo, solo.cwnd, [solo], 10.0) == pytest.approx(mss)
