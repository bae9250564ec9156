"""Failed logins counted per user name and per client address: past `limit` in `window` seconds,
logins for that name or from that address are refused (429) without a password check until the
oldest failure leaves the window. Guessing a password then takes years instead of hours, and an
attacker spreading guesses over many names still hits the address limit.

Counts live in the process (one per app): several `squall serve` processes behind one name each
count their own, which multiplies the limit by their number and stays far from brute-force speed.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

#: Failures per key at most in `window`, then refusals.
LIMIT = 5
WINDOW = 60.0
#: Keys remembered at most; the stalest are forgotten first (a flood of names cannot fill the memory).
MAX_KEYS = 10_000


class LoginThrottle:
    """Failures per key (`user:<name>`, `address:<ip>`) in a sliding window."""

    def __init__(self, limit: int = LIMIT, window: float = WINDOW, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        failures = self._failures.get(key)
        if failures is None:
            return deque()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[key]
        return failures

    def wait(self, *keys: str) -> int:
        """Seconds until a login under these keys may be tried again (0: now)."""
        now = self.clock()
        waits = [failures[0] + self.window - now for key in keys
                 if len(failures := self._recent(key, now)) >= self.limit]
        return math.ceil(max(waits)) if waits else 0

    def failed(self, *keys: str) -> None:
        now = self.clock()
        for key in keys:
            failures = self._recent(key, now)
            self._failures.pop(key, None)
            failures.append(now)
            self._failures[key] = failures  # (re-)inserted last: the dict's order is staleness
        while len(self._failures) > MAX_KEYS:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, key: str) -> None:
        """A right password clears that name's failures (not the address's)."""
        self._failures.pop(key, None)
