"""What recording Prometheus metrics costs a bench's throughput: the same measurement with
`metrics.enabled` off and on, alternated round by round in one process so drift (a warming cache,
a busy neighbour) falls on both sides alike. Each round swaps which side goes first (off, on; on,
off; ...): every measurement adds rows to the same database, so whichever side always went second
met a bigger one, a bias of several percent against it. Eight rounds: one measurement varies by
about ±5% from the next on a 2-core machine, as much as the target, so four rounds' medians
said "met" and "not met" of the same code. Issue 19's target: at most 5% of throughput."""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable

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
    cost = (off - on) / off * 100
    return (f"metrics off {off:,.0f}/s, on {on:,.0f}/s (median of {rounds} alternating rounds each): cost "
            f"{cost:+.1f}% of throughput (target <= 5%: {'met' if cost <= 5 else 'NOT met'})")
