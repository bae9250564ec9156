"""What recording Prometheus metrics costs a bench's throughput: the same measurement with
`metrics.enabled` off and on, alternated round by round in one process so drift (a warming cache,
a busy neighbour) falls on both sides alike. Each round swaps which side goes first (off, on; on,
off; ...): every measurement adds rows to the same database, so whichever side always went second
met a bigger one, a bias of several percent against it. Issue 19's target: at most 5% of throughput.

Each round's cost is its two measurements' (taken next to each other), and the target is judged on
the interval around their median (bench/spread.py): one round varies from the next by 15-25% on a
2-core machine, several times the target, so the medians of eight rounds each said "met" and "not
met" of the same code, and -12% of an A/A run. bench/instructions.py counts the cost without drift."""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable

from bench.spread import median_interval, verdict
from engine.metrics import metrics


async def compare(measure: Callable[[], Awaitable[float]], rounds: int = 8) -> str:
    """`measure()` returns a rate (per second); the line to print: median rates off and on, and the cost."""
    rates: dict[bool, list[float]] = {False: [], True: []}
    try:
        for round_ in range(rounds):
            for enabled in ((False, True) if round_ % 2 == 0 else (True, False)):
                metrics.enabled = enabled
                rates[enabled].append(await measure())
    finally:
        metrics.enabled = True
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    low, cost, high = median_interval([(a - b) / a * 100 for a, b in zip(rates[False], rates[True], strict=True)])
    return (f"metrics off {off:,.0f}/s, on {on:,.0f}/s (median of {rounds} alternating rounds each): cost "
            f"{cost:+.1f}% of throughput (median of the rounds' own; 90% interval {low:+.1f}% to {high:+.1f}%; "
            f"target <= 5%: {verdict(low, high, at_most=5)})")
