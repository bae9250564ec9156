"""bench/spread.py: the interval a timed comparison is judged on holds the true median with at least 90%
confidence whatever the noise's shape, and a target is met or missed only when the whole interval says so."""

from __future__ import annotations

import random

import pytest

from bench.spread import median_interval, verdict


@pytest.mark.parametrize(("n", "k"), [(1, 1), (3, 1), (5, 1), (8, 2), (12, 3), (20, 6)])
def test_the_interval_is_the_kth_smallest_and_largest_for_the_least_90_percent_coverage(n: int, k: int) -> None:
    values = [float(v) for v in random.Random(n).sample(range(1000), n)]
    low, median, high = median_interval(values)
    ordered = sorted(values)
    assert (low, high) == (ordered[k - 1], ordered[n - k])
    assert low <= median <= high


def test_the_interval_holds_the_true_median_at_least_nine_times_in_ten() -> None:
    """Rounds drawn from a skewed distribution (a machine that only ever slows down) with a known median."""
    rng = random.Random(7)
    true_median = 1.0 + 0.2 * 0.6931471805599453  # the median of 1 + 0.2 Exp(1)
    held = 0
    for _ in range(2000):
        low, _median, high = median_interval([1 + rng.expovariate(5) for _ in range(8)])
        held += low <= true_median <= high
    assert held / 2000 >= 0.9


def test_a_target_is_decided_only_when_the_whole_interval_is_on_one_side() -> None:
    assert verdict(-3.0, 4.9, at_most=5) == "met"
    assert verdict(5.1, 9.0, at_most=5) == "NOT met"
    assert verdict(-3.0, 12.0, at_most=5) == "not decided by this run"
    assert verdict(1.02, 1.3, at_least=1.0) == "met"
    assert verdict(0.7, 0.98, at_least=1.0) == "NOT met"
    assert verdict(0.9, 1.2, at_least=1.0) == "not decided by this run"
    with pytest.raises(ValueError, match="at least one value"):
        median_interval([])
