"""Rule criteria operators (spec §5.3), with StackStorm's exact semantics (`st2common/operators.py`).

Every operator is `op(value, pattern) -> bool`; `value` is what the criterion key found in the
payload (`None` when missing), `pattern` the rendered criterion pattern. Operator names are
case-insensitive and the short aliases (`eq`, `lt`, `td_gt`, ...) map to the long names. There is
no type coercion except what an operator does itself, so `lessthan "5" vs 10` raises `TypeError`,
which the rules engine turns into a failed criterion and a failed enforcement record, as in
StackStorm. `search` is separate: it needs a function that evaluates child criteria.
"""

from __future__ import annotations

import fnmatch
import operator as _op
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from engine import patterns

try:  # StackStorm parses timestamps with dateutil; ISO 8601 covers what Squall itself emits
    from dateutil import parser as _dateutil_parser
except ImportError:  # pragma: no cover - depends on the environment
    _dateutil_parser = None

__all__ = ["ALIASES", "OPERATORS", "SEARCH", "UnrecognizedConditionError", "canonical", "get_operator", "search"]

SEARCH = "search"


class UnrecognizedConditionError(ValueError):
    """A `search` criterion whose `condition` is not any, all, any2any or all2any."""


def ensure_str(value: Any, pattern: Any) -> tuple[Any, Any]:
    """StackStorm's `ensure_operators_are_strings`: bytes are UTF-8 decoded, nothing else changes."""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(pattern, bytes):
        pattern = pattern.decode("utf-8")
    return value, pattern


def equals(value: Any, pattern: Any) -> bool:
    if pattern is None:
        return False
    value, pattern = ensure_str(value, pattern)
    return bool(value == pattern)


def nequals(value: Any, pattern: Any) -> bool:
    value, pattern = ensure_str(value, pattern)
    return bool(value != pattern)


def iequals(value: Any, pattern: Any) -> bool:
    if pattern is None:
        return False
    value, pattern = ensure_str(value, pattern)
    return bool(value.lower() == pattern.lower())


def contains(value: Any, pattern: Any) -> bool:
    if pattern is None:
        return False
    value, pattern = ensure_str(value, pattern)
    return pattern in value


def ncontains(value: Any, pattern: Any) -> bool:
    if pattern is None:
        return False
    value, pattern = ensure_str(value, pattern)
    return pattern not in value


def icontains(value: Any, pattern: Any) -> bool:
    if pattern is None:
        return False
    value, pattern = ensure_str(value, pattern)
    return bool(pattern.lower() in value.lower())


def incontains(value: Any, pattern: Any) -> bool:
    if pattern is None:
        return False
    value, pattern = ensure_str(value, pattern)
    return bool(pattern.lower() not in value.lower())


def startswith(value: Any, pattern: Any) -> bool:
    if pattern is None:
        return False
    value, pattern = ensure_str(value, pattern)
    return bool(value.startswith(pattern))


def istartswith(value: Any, pattern: Any) -> bool:
    if pattern is None:
        return False
    value, pattern = ensure_str(value, pattern)
    return bool(value.lower().startswith(pattern.lower()))


def endswith(value: Any, pattern: Any) -> bool:
    if pattern is None:
        return False
    value, pattern = ensure_str(value, pattern)
    return bool(value.endswith(pattern))


def iendswith(value: Any, pattern: Any) -> bool:
    if pattern is None:
        return False
    value, pattern = ensure_str(value, pattern)
    return bool(value.lower().endswith(pattern.lower()))


def lessthan(value: Any, pattern: Any) -> bool:
    if pattern is None:
        return False
    return bool(value < pattern)


def greaterthan(value: Any, pattern: Any) -> bool:
    if pattern is None:
        return False
    return bool(value > pattern)


def match_wildcard(value: Any, pattern: Any) -> bool:
    if pattern is None:
        return False
    value, pattern = ensure_str(value, pattern)
    return fnmatch.fnmatch(value, pattern)


def match_regex(value: Any, pattern: Any) -> bool:
    if pattern is None:
        return False
    value, pattern = ensure_str(value, pattern)
    return patterns.match(pattern, value, patterns.DOTALL) is not None


def regex(value: Any, pattern: Any) -> bool:
    """`pattern` found in `value`, bounded in time (`engine.patterns`): a payload cannot stall the loop."""
    if pattern is None:
        return False
    value, pattern = ensure_str(value, pattern)
    return patterns.search(pattern, value) is not None


def iregex(value: Any, pattern: Any) -> bool:
    if pattern is None:
        return False
    value, pattern = ensure_str(value, pattern)
    return patterns.search(pattern, value, patterns.IGNORECASE) is not None


def _parse_utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        parsed = value
    elif _dateutil_parser is not None:
        parsed = _dateutil_parser.parse(value)
    else:
        parsed = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    if parsed.tzinfo is None:  # StackStorm assumes UTC for naive timestamps
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _timediff(value: Any, seconds: float, compare: Callable[[float, float], bool]) -> bool:
    return compare((datetime.now(UTC) - _parse_utc(value)).total_seconds(), seconds)


def timediff_lt(value: Any, pattern: Any) -> bool:
    if pattern is None:
        return False
    return _timediff(value, float(pattern), _op.lt)


def timediff_gt(value: Any, pattern: Any) -> bool:
    if pattern is None:
        return False
    return _timediff(value, float(pattern), _op.gt)


def exists(value: Any, pattern: Any = None) -> bool:
    return value is not None


def nexists(value: Any, pattern: Any = None) -> bool:
    return value is None


def inside(value: Any, pattern: Any) -> bool:
    if pattern is None:
        return False
    value, pattern = ensure_str(value, pattern)
    return value in pattern


def ninside(value: Any, pattern: Any) -> bool:
    if pattern is None:
        return False
    value, pattern = ensure_str(value, pattern)
    return value not in pattern


CheckFunction = Callable[[str, dict[str, Any], Any], bool]
_CONDITIONS = {"any": (any, all), "all": (all, all), "any2any": (any, any), "all2any": (all, any)}


#: Items one `search` criterion checks at most: a 1 MiB body holds ~340,000 empty objects, which took
#: 5 s of the event loop (chat, the API and timers wait meanwhile); real alert lists hold dozens.
SEARCH_MAX_ITEMS = 10_000


def search(value: Any, pattern: dict[str, Any], condition: str | None, check: Callable[[Any, Any], bool]) -> bool:
    """StackStorm's `search`: `check(child, item)` evaluates one child criterion against one list item.

    `any`: some item matches all children; `all`: every item matches all children; `any2any`:
    some item matches some child; `all2any`: every item matches some child. A dict value is
    searched as a one-item list.
    """
    if condition not in _CONDITIONS:
        raise UnrecognizedConditionError(
            f'The "condition" argument to the "search" operator must be one of: {", ".join(_CONDITIONS)}, '
            f'not "{condition}"')
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list | tuple) and len(value) > SEARCH_MAX_ITEMS:
        raise ValueError(f"the search is over {len(value):,} items, more than the {SEARCH_MAX_ITEMS:,} one criterion "
                         "may check (every rule waits while it runs): filter the list before it is sent")
    over_items, over_children = _CONDITIONS[condition]
    children = list(pattern.items()) if isinstance(pattern, dict) else pattern
    return over_items(over_children(check(child, item) for child in children) for item in value)


OPERATORS: dict[str, Callable[..., bool]] = {
    "equals": equals,
    "nequals": nequals,
    "iequals": iequals,
    "contains": contains,
    "ncontains": ncontains,
    "icontains": icontains,
    "incontains": incontains,
    "startswith": startswith,
    "istartswith": istartswith,
    "endswith": endswith,
    "iendswith": iendswith,
    "lessthan": lessthan,
    "greaterthan": greaterthan,
    "matchwildcard": match_wildcard,
    "matchregex": match_regex,
    "regex": regex,
    "iregex": iregex,
    "timediff_lt": timediff_lt,
    "timediff_gt": timediff_gt,
    "exists": exists,
    "nexists": nexists,
    "inside": inside,
    "ninside": ninside,
    SEARCH: search,
}

ALIASES = {
    "eq": "equals", "neq": "nequals", "ieq": "iequals", "lt": "lessthan", "gt": "greaterthan",
    "td_lt": "timediff_lt", "td_gt": "timediff_gt", "in": "inside", "nin": "ninside",
}

#: Operators that ignore the pattern (Squall does not require one for them, unlike StackStorm).
PATTERNLESS = {"exists", "nexists"}


def canonical(name: Any) -> str | None:
    """The long operator name for `name` (any case, alias or not), or None if it is unknown."""
    if not isinstance(name, str):
        return None
    lowered = name.lower()
    lowered = ALIASES.get(lowered, lowered)
    return lowered if lowered in OPERATORS else None


def get_operator(name: str) -> Callable[..., bool]:
    found = canonical(name)
    if found is None:
        raise KeyError(f'Invalid operator: {name}')
    return OPERATORS[found]
