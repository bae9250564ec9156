"""How far a timed comparison can be trusted on a machine whose speed drifts.

On this 2-core machine one core's speed moves by 15-25% from one second to the next (a bare Python
loop timed in 15 ms slices: coefficient of variation 0.24, slowest slice twice the fastest), so two
rounds of the same code differ as much as the targets the benches judge (5% for the cost of metrics,
1.0x for Squall against errbot). An A/A run of bench/chat.py's metrics comparison (metrics on in both
halves) read a cost of -12% from the medians of eight rounds each.

So a comparison is judged on its rounds' paired figures (the two sides measured next to each other in
one round, which shares that moment's speed) and the interval that holds their true median with at
least 90% confidence, from order statistics: no assumption about the noise's shape. A target is met
when the whole interval meets it, not met when none of it does, and otherwise the run did not decide
it: more rounds narrow the interval; bench/instructions.py counts instructions, which drift cannot move.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from math import comb

#: The least confidence the interval around a median has (with fewer than five values the range
#: itself has less: 0.875 with four).
CONFIDENCE = 0.9


def median_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(low, median, high) of `values`: `low` and `high` are the k-th smallest and k-th largest, with k
    the largest for which the true median lies between them with probability >= CONFIDENCE
    (1 - 2 P(Binomial(n, 1/2) < k)); at least the range."""
    if not values:
        raise ValueError("median_interval needs at least one value")
    ordered = sorted(values)
    n = len(ordered)

    def coverage(k: int) -> float:
        return 1 - 2 * sum(comb(n, i) for i in range(k)) / 2**n

    k = 1
    while k < (n + 1) // 2 and coverage(k + 1) >= CONFIDENCE:
        k += 1
    return ordered[k - 1], statistics.median(ordered), ordered[n - k]


def verdict(low: float, high: float, *, at_most: float | None = None, at_least: float | None = None) -> str:
    """'met', 'NOT met' or 'not decided by this run' for an interval against one bound."""
    if at_most is not None:
        return "met" if high <= at_most else "NOT met" if low > at_most else "not decided by this run"
    if at_least is None:
        raise ValueError("verdict needs at_most or at_least")
    return "met" if low >= at_least else "NOT met" if high < at_least else "not decided by this run"
