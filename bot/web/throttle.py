"""Failed logins counted per user name and per client address: past `limit` in `window` seconds,
logins for that name or from that address are refused (429) without a password check until the
oldest failure leaves the window. Guessing a password then takes years instead of hours, and an
attacker spreading guesses over many names still hits the address limit.

An attempt is counted when it is let through, before its password is checked (`reserve`), and
given back only if the password was right (`release`): guesses sent all at once cannot all pass the
check while none has failed yet, so at most `limit` passwords are checked per name and per address.

Counts live in the process (one per app): several `squall serve` processes behind one name each
count their own, which multiplies the limit by their number and stays far from brute-force speed.
"""

from __future__ import annotations

import contextlib
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

    def reserve(self, *keys: str) -> tuple[int, float]:
        """Let one attempt through if no key is at its limit, counting it as a failure at once.

        Returns (seconds to wait, 0) when refused, else (0, the attempt's stamp for `release`). Checking
        and counting in one call, with no await between, is what keeps concurrent guesses in the limit.
        """
        if wait := self.wait(*keys):
            return wait, 0.0
        return 0, self.failed(*keys)

    def release(self, stamp: float, *keys: str) -> None:
        """Give back an attempt `reserve` counted (its password was right): one entry of `stamp` per key."""
        for key in keys:
            failures = self._failures.get(key)
            if failures is None:
                continue
            with contextlib.suppress(ValueError):
                failures.remove(stamp)
            if not failures:
                del self._failures[key]

    def failed(self, *keys: str) -> float:
        """Count a failure now under every key; returns its stamp."""
        now = self.clock()
        for key in keys:
            failures = self._recent(key, now)
            self._failures.pop(key, None)
            failures.append(now)
            self._failures[key] = failures  # (re-)inserted last: the dict's order is staleness
        while len(self._failures) > MAX_KEYS:
            del self._failures[next(iter(self._failures))]
        return now

    def succeeded(self, key: str) -> None:
        """A right password clears that name's failures (not the address's)."""
        self._failures.pop(key, None)
