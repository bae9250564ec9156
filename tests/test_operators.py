"""Criteria operators (spec §5.3), after StackStorm's st2common/tests/unit/test_operators.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from engine import operators as ops
from engine.operators import ALIASES, OPERATORS, UnrecognizedConditionError, canonical, get_operator


def op(name):
    return get_operator(name)


def test_names_are_case_insensitive_and_aliases_map():
    for alias, name in ALIASES.items():
        assert canonical(alias) == name
        assert canonical(alias.upper()) == name
    assert canonical("EQUALS") == "equals"
    assert canonical("MatchWildcard") == "matchwildcard"
    assert canonical("nope") is None and canonical(None) is None
    with pytest.raises(KeyError):
        get_operator("nope")
    assert len(OPERATORS) == 24


@pytest.mark.parametrize("name,value,pattern,expected", [
    ("equals", "a", "a", True), ("equals", "a", "A", False), ("equals", 1, 1, True), ("equals", "1", 1, False),
    ("eq", [1, 2], [1, 2], True), ("equals", {"a": 1}, {"a": 1}, True), ("equals", b"x", "x", True),
    ("equals", None, None, False), ("EQ", "a", "a", True),
    ("nequals", "a", "b", True), ("nequals", "a", "a", False), ("neq", "1", 1, True), ("nequals", None, None, False),
    ("nequals", "a", None, True),
    ("iequals", "ABC", "abc", True), ("ieq", "abc", "abd", False), ("iequals", "a", None, False),
    ("contains", "hello world", "world", True), ("contains", "hello", "World", False),
    ("contains", ["a", "b"], "b", True),
    ("contains", "x", None, False),
    ("ncontains", "hello", "x", True), ("ncontains", "hello", "ell", False), ("ncontains", "x", None, False),
    ("icontains", "Hello World", "WORLD", True), ("icontains", "abc", "d", False), ("icontains", "x", None, False),
    ("incontains", "Hello", "WORLD", True), ("incontains", "Hello", "ELL", False), ("incontains", "x", None, False),
    ("startswith", "hello", "he", True), ("startswith", "hello", "He", False), ("startswith", "x", None, False),
    ("istartswith", "hello", "HE", True), ("istartswith", "hello", "lo", False),
    ("endswith", "hello", "lo", True), ("endswith", "hello", "LO", False), ("endswith", "x", None, False),
    ("iendswith", "hello", "LO", True), ("iendswith", "hello", "he", False),
    ("lessthan", 1, 2, True), ("lt", 2, 1, False), ("lessthan", "a", "b", True), ("lessthan", 1, None, False),
    ("greaterthan", 3, 2, True), ("gt", 1.5, 2, False), ("greaterthan", 1, None, False),
    ("matchwildcard", "server01.prod", "server??.*", True), ("matchwildcard", "Server01", "server*", False),
    ("matchwildcard", "b", "[abc]", True), ("matchwildcard", "x", None, False),
    ("matchregex", "abc\ndef", "abc.def", True), ("matchregex", "xabc", "abc", False), ("matchregex", "x", None, False),
    ("regex", "xabc", "abc", True), ("regex", "xABC", "abc", False), ("regex", "x", None, False),
    ("iregex", "xABC", "abc", True), ("iregex", "xyz", "abc", False), ("iregex", "x", None, False),
    ("exists", "x", None, True), ("exists", 0, None, True), ("exists", None, "ignored", False),
    ("nexists", None, None, True), ("nexists", False, None, False),
    ("inside", "a", ["a", "b"], True), ("in", "c", ["a", "b"], False), ("inside", "ell", "hello", True),
    ("inside", "a", None, False),
    ("ninside", "c", ["a", "b"], True), ("nin", "a", ["a"], False), ("ninside", "a", None, False),
])
def test_operator(name, value, pattern, expected):
    assert op(name)(value, pattern) is expected


@pytest.mark.parametrize("name,value,pattern", [
    ("lessthan", "5", 10), ("greaterthan", None, 1), ("iequals", 1, "1"), ("icontains", ["A"], "a"),
    ("startswith", 1, "1"), ("regex", 5, "5"), ("matchwildcard", 5, "*"), ("contains", 5, "5"),
    ("inside", 1, "abc"), ("timediff_lt", "not a date", 10),
])
def test_type_mismatches_raise(name, value, pattern):
    with pytest.raises((TypeError, AttributeError, ValueError)):
        op(name)(value, pattern)


def test_timediff():
    recent = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    old = (datetime.now(UTC) - timedelta(hours=2)).replace(tzinfo=None).isoformat()  # naive = UTC
    assert op("timediff_lt")(recent, 60) is True
    assert op("td_lt")(old, "60") is False
    assert op("timediff_gt")(old, 3600) is True
    assert op("TD_GT")(recent, 3600) is False
    assert op("timediff_lt")(recent, None) is False
    assert op("timediff_gt")(recent, None) is False


def _check(child, item):
    (key, spec) = child
    value = item.get(key.split("#", 1)[0].removeprefix("item."))
    return get_operator(spec["type"])(value, spec["pattern"])


ITEMS = [{"name": "a", "n": 1}, {"name": "b", "n": 2}]


@pytest.mark.parametrize("condition,pattern,expected", [
    ("any", {"item.name": {"type": "equals", "pattern": "a"}, "item.n": {"type": "equals", "pattern": 1}}, True),
    ("any", {"item.name": {"type": "equals", "pattern": "a"}, "item.n": {"type": "equals", "pattern": 2}}, False),
    ("all", {"item.n": {"type": "greaterthan", "pattern": 0}}, True),
    ("all", {"item.n": {"type": "greaterthan", "pattern": 1}}, False),
    ("any2any", {"item.name": {"type": "equals", "pattern": "z"}, "item.n": {"type": "equals", "pattern": 2}}, True),
    ("any2any", {"item.name": {"type": "equals", "pattern": "z"}, "item.n": {"type": "equals", "pattern": 9}}, False),
    ("all2any", {"item.name": {"type": "equals", "pattern": "a"}, "item.n": {"type": "equals", "pattern": 2}}, True),
    ("all2any", {"item.name": {"type": "equals", "pattern": "a"}, "item.n#t": {"type": "equals", "pattern": 1}},
     False),
])
def test_search_conditions(condition, pattern, expected):
    assert ops.search(ITEMS, pattern, condition, _check) is expected


def test_search_wraps_a_dict_and_rejects_unknown_conditions():
    assert ops.search({"name": "a"}, {"item.name": {"type": "eq", "pattern": "a"}}, "all", _check) is True
    with pytest.raises(UnrecognizedConditionError):
        ops.search(ITEMS, {"item.name": {"type": "eq", "pattern": "a"}}, "some", _check)


def test_a_budget_bounds_every_regex_made_within_it(monkeypatch):
    """Inside `with Budget(s)`: each match's timeout is what is left of `s` (CPU time of the thread),
    and a match it stops raises `BudgetSpent` (a TimeoutError) that names the budget; without one, a
    match has `TIMEOUT` alone, and one it stops raises the package's own TimeoutError."""
    from engine import patterns

    monkeypatch.setattr(patterns, "TIMEOUT", 10.0)
    backtracks = "a" * 40 + "b"
    with patterns.Budget(0.05, "the test"):
        assert ops.regex("xab", "a+b")
        with pytest.raises(patterns.BudgetSpent, match=r"the 0\.05 s of CPU time for the test ran out"):
            ops.regex(backtracks, "^(a|aa)+$")
        with pytest.raises(patterns.BudgetSpent):
            ops.regex("xab", "a+b")  # nothing left: not even a cheap match runs
    assert ops.regex("xab", "a+b")  # the budget ends with its block
    monkeypatch.setattr(patterns, "TIMEOUT", 0.05)
    with pytest.raises(TimeoutError, match="regex timed out") as caught:
        ops.regex(backtracks, "^(a|aa)+$")
    assert not isinstance(caught.value, patterns.BudgetSpent)
