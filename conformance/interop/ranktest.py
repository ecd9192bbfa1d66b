"""Are our timings slower than the kernel's? A one-sided rank test (Mann-Whitney U) with
the exact null distribution, for the few samples an interop cell takes.

Why a rank test: the kernel as sender resumes after a cut in ~60 ms, or in ~250 ms and
more when its data-level timer runs at TCP_RTO_MIN, whatever the receiver. Medians of a
few cuts from that bimodal distribution wander by its whole width, so any rule on
medians plus a tolerance fails the kernel against itself at a rate that depends on the
distribution (the earlier "median ≤ kernel's median + its spread" did in 4-7 % of cells
at 5 cuts). A rank test's false-failure rate is its alpha, whatever the distribution,
when both samples come from the same one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache

# One-sided significance: with 5 cuts against 5, only "every one of ours is slower than
# every one of the kernel's" (p = 1/252) fails; one faster pair (p = 2/252) passes.
ALPHA = 0.005


def faster_pairs(ours: Sequence[float], theirs: Sequence[float]) -> float:
    """U: of all (ours, theirs) pairs, how many have ours faster (a tie counts half)."""
    return sum((a < b) + 0.5 * (a == b) for a in ours for b in theirs)


@cache
def _arrangements(n: int, m: int, u: int) -> int:
    """How many orderings of n of ours among m of theirs have exactly u faster pairs."""
    if u < 0:
        return 0
    if n == 0 or m == 0:
        return 1 if u == 0 else 0
    # the slowest of all is ours (then it is faster than none of theirs) or theirs (then
    # each of our n is faster than it)
    return _arrangements(n - 1, m, u) + _arrangements(n, m - 1, u - n)


def p_slower(ours: Sequence[float], theirs: Sequence[float]) -> float:
    """One-sided p-value of "ours are slower": the chance, were both samples from one
    distribution, of as few faster pairs as observed or fewer."""
    n, m = len(ours), len(theirs)
    if n == 0 or m == 0:
        raise ValueError("p_slower needs samples on both sides")
    observed = faster_pairs(ours, theirs)
    total = math.comb(n + m, n)
    at_most = sum(_arrangements(n, m, u) for u in range(int(observed) + 1))
    return at_most / total


def slower(ours: Sequence[float], theirs: Sequence[float], alpha: float = ALPHA) -> bool:
    return p_slower(ours, theirs) <= alpha
