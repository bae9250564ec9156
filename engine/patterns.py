"""Regular expressions a pack author wrote, applied to text anyone may send (a webhook's body, a
trigger's payload): rule criteria (`regex`, `iregex`, `matchregex`) and the Jinja filters
(`regex_match`, `regex_search`, `regex_replace`, `regex_substring`).

Python's `re` backtracks without limit: `^(a|aa)+$` over forty-one characters runs for minutes, on
the event loop, and stops chat, the API and timers with it. The `regex` package reads the same
syntax, is immune to many such patterns, and stops any match after `TIMEOUT` seconds with a
`TimeoutError`: the criterion fails (a failed enforcement that says why) instead of the service.

One match per second is not enough where one sender's text meets many matches: a `search` criterion
runs its regex over every item of a list, and every rule of a trigger gets the same payload. Work that
must stay bounded as a whole runs inside `with Budget(...)`: each match's timeout is then what is left
of it (at most `TIMEOUT`), and a match stopped by it raises `BudgetSpent`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from contextvars import ContextVar, Token
from functools import lru_cache
from typing import Any

#: Seconds one match may take. Real criteria take microseconds.
TIMEOUT = 1.0
#: The flags, as `re` numbers them (`regex` numbers them the same).
IGNORECASE, DOTALL = int(re.IGNORECASE), int(re.DOTALL)
#: How many `Budget.now_and_then` calls read the clock once: a cheap step (a criterion of `equals`)
#: takes ~0.2 µs, as much as reading the thread's CPU clock.
_CLOCK_EVERY = 8


class BudgetSpent(TimeoutError):
    """The `Budget` of the work under way ran out: a match it stopped, or a step begun with none left."""


class Budget:
    """CPU seconds for everything one piece of work evaluates (the criteria of one trigger instance),
    counted on the thread that does it (`time.thread_time`): a thread waiting for the GIL while the
    event loop or another render runs spends none of it. Matches made inside `with budget:` stop at
    what is left of it. Use it on the thread that made it."""

    __slots__ = ("_countdown", "_end", "_token", "seconds", "what")

    def __init__(self, seconds: float, what: str = "the work", spent: float = 0.0) -> None:
        """`spent`: what the same work took before, elsewhere (tried on the event loop first)."""
        self.seconds = seconds
        #: What the budget is for, as the message of `BudgetSpent` names it.
        self.what = what
        self._end = time.thread_time() + seconds - spent
        self._countdown = _CLOCK_EVERY
        self._token: Token[Budget | None] | None = None

    def __enter__(self) -> Budget:
        self._token = _budget.set(self)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._token is not None:
            _budget.reset(self._token)
            self._token = None

    def left(self) -> float:
        return self._end - time.thread_time()

    def spent(self) -> float:
        return self.seconds - self.left()

    def exhausted(self, while_doing: str = "") -> BudgetSpent:
        doing = f" ({while_doing})" if while_doing else ""
        return BudgetSpent(f"the {self.seconds:g} s of CPU time for {self.what} ran out{doing}")

    def check(self, while_doing: str = "") -> None:
        """`BudgetSpent` if nothing is left."""
        if self._end <= time.thread_time():
            raise self.exhausted(while_doing)

    def now_and_then(self) -> None:
        """`check`, for a step that is cheap as a rule: every `_CLOCK_EVERY`-th call reads the clock."""
        self._countdown -= 1
        if self._countdown <= 0:
            self._countdown = _CLOCK_EVERY
            self.check()


_budget: ContextVar[Budget | None] = ContextVar("squall_pattern_budget", default=None)


def current_budget() -> Budget | None:
    """The budget of the work under way on this thread (`with budget:`), or None."""
    return _budget.get()


def check_budget(while_doing: str = "") -> None:
    """`BudgetSpent` if a budget is under way and nothing is left of it (after a step that might have
    used it up, whatever that step raised)."""
    budget = _budget.get()
    if budget is not None:
        budget.check(while_doing)


@lru_cache(maxsize=512)
def compiled(pattern: str, flags: int = 0) -> Any:
    import regex  # with the first pattern, not at start: ~18 ms that `squall serve` need not pay first

    return regex.compile(pattern, flags)


def _bounded(method: Callable[..., Any], *args: Any) -> Any:
    """`method(*args, timeout=...)`: `TIMEOUT`, or less where a budget has less left."""
    budget = _budget.get()
    if budget is None:
        return method(*args, timeout=TIMEOUT)
    left = budget.left()
    if left >= TIMEOUT:
        return method(*args, timeout=TIMEOUT)
    if left <= 0:
        raise budget.exhausted("before a regex ran")
    try:
        return method(*args, timeout=left)
    except TimeoutError as exc:  # stopped by what was left of the budget, not by TIMEOUT
        raise budget.exhausted(f"a regex stopped at what was left of it, {left:.2g} s") from exc


def search(pattern: str, text: str, flags: int = 0) -> Any:
    return _bounded(compiled(pattern, flags).search, text)


def match(pattern: str, text: str, flags: int = 0) -> Any:
    return _bounded(compiled(pattern, flags).match, text)


def sub(pattern: str, replacement: str, text: str, flags: int = 0) -> str:
    return _bounded(compiled(pattern, flags).sub, replacement, text)


def findall(pattern: str, text: str, flags: int = 0) -> list[Any]:
    return _bounded(compiled(pattern, flags).findall, text)
