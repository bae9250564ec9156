"""Regular expressions a pack author wrote, applied to text anyone may send (a webhook's body, a
trigger's payload): rule criteria (`regex`, `iregex`, `matchregex`) and the Jinja filters
(`regex_match`, `regex_search`, `regex_replace`, `regex_substring`).

Python's `re` backtracks without limit: `^(a|aa)+$` over forty-one characters runs for minutes, on
the event loop, and stops chat, the API and timers with it. The `regex` package reads the same
syntax, is immune to many such patterns, and stops any match after `TIMEOUT` seconds with a
`TimeoutError`: the criterion fails (a failed enforcement that says why) instead of the service.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

#: Seconds one match may take. Real criteria take microseconds.
TIMEOUT = 1.0
#: The flags, as `re` numbers them (`regex` numbers them the same).
IGNORECASE, DOTALL = int(re.IGNORECASE), int(re.DOTALL)


@lru_cache(maxsize=512)
def compiled(pattern: str, flags: int = 0) -> Any:
    import regex  # with the first pattern, not at start: ~18 ms that `squall serve` need not pay first

    return regex.compile(pattern, flags)


def search(pattern: str, text: str, flags: int = 0) -> Any:
    return compiled(pattern, flags).search(text, timeout=TIMEOUT)


def match(pattern: str, text: str, flags: int = 0) -> Any:
    return compiled(pattern, flags).match(text, timeout=TIMEOUT)


def sub(pattern: str, replacement: str, text: str, flags: int = 0) -> str:
    return compiled(pattern, flags).sub(replacement, text, timeout=TIMEOUT)


def findall(pattern: str, text: str, flags: int = 0) -> list[Any]:
    return compiled(pattern, flags).findall(text, timeout=TIMEOUT)
