"""The alias format grammar: StackStorm's cases (spec §2.2-2.3), Squall's fixes, typed placeholders, bad input."""

from __future__ import annotations

import contextlib
import gc
import random
import re
import time
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aliases import AliasParseError, extract_multiple, extract_parameters, grammar
from aliases.grammar import (
    TOO_COMPLEX,
    AliasFormatError,
    MessageTooComplex,
    _Scanner,
    compile_format,
    normalise,
    prepare,
    split_pairs,
)

NO_MATCH = None
ROW7 = "(run|execute) {{cmd}}( on {{hosts=localhost}})?[!.]?"

# Spec §2.3, row by row: (row, format, message, expected parameters or NO_MATCH).
TABLE = [
    (1, "run {{cmd}} on {{hosts}}", "run date on localhost", {"cmd": "date", "hosts": "localhost"}),
    (2, "run {{cmd}} on {{hosts}}", 'run "ls -la /tmp" on host1,host2', {"cmd": "ls -la /tmp", "hosts": "host1,host2"}),
    (3, "run {{cmd}} on {{hosts}}", "run ls -la /tmp on host1", {"cmd": "ls -la /tmp", "hosts": "host1"}),
    (4, "run {{cmd}} on {{hosts}}", "run date on localhost timeout=120 sudo=true",
     {"cmd": "date", "hosts": "localhost", "timeout": "120", "sudo": "true"}),
    (5, "run {{cmd}} {{hosts=localhost}}", "run date", {"cmd": "date", "hosts": "localhost"}),
    (6, "run {{cmd}} {{hosts=localhost}}", "run uname -a", {"cmd": "uname", "hosts": "-a"}),
    (7, ROW7, "execute uptime!", {"cmd": "uptime", "hosts": "localhost"}),
    (8, ROW7, "run uptime on web1.", {"cmd": "uptime", "hosts": "web1"}),
    (9, "ping {{host}}", "PING host1", NO_MATCH),
    (10, "ping {{host}}", "ping host1 extra words", {"host": "host1 extra words"}),
    (11, "deploy {{app}} to {{env=staging}}", "deploy web to", {"app": "web", "env": "staging"}),
    (11, "deploy {{app}} to {{env=staging}}", "deploy web", NO_MATCH),
    (12, "say {{ phrase }} in {{ color }}", "say 'hello world' in red", {"phrase": "hello world", "color": "red"}),
    (13, "set {{key}} {{value}}", 'set k1 {"a": 1}', {"key": "k1", "value": '{"a": 1}'}),
    (15, "", 'x=1 y="two words"', {"x": "1", "y": "two words"}),
    (16, "hello", "hello world", NO_MATCH),
    (17, "^show {{n}}$", "show 5", NO_MATCH),
    (17, r"^\s*show {{n}}\s*$", "show 5", {"n": "5"}),
    (19, "{{ captain }} is my captain", 'Malcolm Reynolds is my captain weirdo="River Tam"',
     {"captain": "Malcolm Reynolds", "weirdo": "River Tam"}),
    (20, "s {{a}} more {{ b }} more {{ c=99 }} more {{ d = 99 }}", "s one more two more three more",
     {"a": "one", "b": "two", "c": "three", "d": "99"}),
    (21, r"^\s*foo (?P<issue_key>[A-Z][A-Z0-9]+-[0-9]+)", "foo ASDF-1234", {"issue_key": "ASDF-1234"}),
    (22, "{{ p0='http' }} g {{ p1=p }} a {{ url }} {{ p2={'a':'b'} }} {{ p3={{ e.i }} }}",
     "g a http://google.com {{ execution.id }} p4='testing' p5={'a':'c'}",
     {"p0": "http", "p1": "p", "url": "http://google.com", "p2": "{{ execution.id }}", "p3": "{{ e.i }}",
      "p4": "testing", "p5": "{'a':'c'}"}),
]


@pytest.mark.parametrize(("row", "fmt", "message", "expected"), TABLE)
def test_spec_table(row: int, fmt: str, message: str, expected: dict | None) -> None:
    if expected is NO_MATCH:
        with pytest.raises(AliasParseError):
            extract_parameters(fmt, message)
    else:
        assert extract_parameters(fmt, message) == expected


def test_row_14_fixed_a_pair_may_supply_a_placeholder() -> None:
    # StackStorm: no match (the pair is stripped first, leaving `foo`), and hubot crashed on it
    # (hubot-stackstorm#182). Squall lets a trailing pair fill the placeholder it names.
    assert extract_parameters("foo {{a}}", "foo a=b") == {"a": "b"}
    # ... but a pair naming something else still leaves the placeholder unfilled.
    with pytest.raises(AliasParseError):
        extract_parameters("foo {{a}}", "foo c=b")


def test_row_18_fixed_urls_with_query_strings_are_values() -> None:
    # StackStorm took the trailing URL for a pair (key "https://h/api?some") and the format no longer
    # matched (st2#5074, st2#3882). Squall only takes identifier keys as pairs.
    assert extract_parameters("bar {{ someval }}", "bar https://h/api?some=url&x=y") == {
        "someval": "https://h/api?some=url&x=y"}


# StackStorm's own parser tests (st2common/tests/unit/test_action_alias_utils.py).
ST2_UNIT = [
    ("", "", {}),
    ("", "a=foobar1", {"a": "foobar1"}),
    ("foo", 'foo a="foobar2 poonies bar"', {"a": "foobar2 poonies bar"}),
    ("foo", "foo a='foobar2 poonies bar'", {"a": "foobar2 poonies bar"}),
    ("foo", 'foo a={"foobar2": "poonies"}', {"a": '{"foobar2": "poonies"}'}),
    ("", 'a=foobar1 b="boobar2 3 4" c=\'coobar3 4\' d={"a": "b"}',
     {"a": "foobar1", "b": "boobar2 3 4", "c": "coobar3 4", "d": '{"a": "b"}'}),
    ("skip {{a}} more skip {{b}} and skip more.", "skip a1 more skip b1 and skip more.", {"a": "a1", "b": "b1"}),
    ("skip {{a}} more skip {{b}}", "skip a1 more skip b1", {"a": "a1", "b": "b1"}),
    ("skip {{a}} more skip {{b}} and skip more.", 'skip "a1 a2" more skip b1 and skip more.',
     {"a": "a1 a2", "b": "b1"}),
    ("acl {{a}} {{b}} {{c}} {{d=1}}", 'acl "a1 a2" "b1" "c1"', {"a": "a1 a2", "b": "b1", "c": "c1", "d": "1"}),
    ("acl {{a=test}}", "acl", {"a": "test"}),
    ("skip {{a}} more skip.", 'skip {"a": "b", "c": "d"} more skip.', {"a": '{"a": "b", "c": "d"}'}),
    ("skip {{a}} more skip {{b}}.", 'skip {"a": "b", "c": "d"} more skip x.', {"a": '{"a": "b", "c": "d"}', "b": "x"}),
    ("skip {{ a = value }} more", "skip one more", {"a": "one"}),
    ("skip {{ a = value }} more", "skip more", {"a": "value"}),
    ("two by two hands of {{ color = {{ colors.default_color }} }}", "two by two hands of",
     {"color": "{{ colors.default_color }}"}),
    ("testing {{ a }}", "testing value b=value2", {"a": "value", "b": "value2"}),
    ("testing {{ a=new }}", 'testing b="another value"', {"a": "new", "b": "another value"}),
    ("testing {{ b=abc }} {{ c=xyz }}", 'testing newvalue d={"1": "2"} e="long value"',
     {"b": "newvalue", "c": "xyz", "d": '{"1": "2"}', "e": "long value"}),
    ("skip {{d=test1}} more skip {{e=test1}}.", "skip more skip", {"d": "test1", "e": "test1"}),
    ("skip {{d=test}} more skip {{e=test}}", "skip ponies more skip", {"d": "ponies", "e": "test"}),
    ("foo bar", "foo bar pony1=foo pony2=bar", {"pony1": "foo", "pony2": "bar"}),
    (r"foo (?P<issue_key>[A-Z][A-Z0-9]+-[0-9]+)\s*$", "foo ASDF-1234", {"issue_key": "ASDF-1234"}),
    (r"^\s*foo (?P<issue_key>[A-Z][A-Z0-9]+-[0-9]+) bar\s*$", "foo ASDF-1234 bar", {"issue_key": "ASDF-1234"}),
    # values are not trimmed (spec §2.2 item 7)
    ("greet {{name=World}}", "greet  Bob  ", {"name": " Bob"}),
]


@pytest.mark.parametrize(("fmt", "message", "expected"), ST2_UNIT)
def test_stackstorm_unit_cases(fmt: str, message: str, expected: dict) -> None:
    assert extract_parameters(fmt, message) == expected


@pytest.mark.parametrize(("fmt", "message"), [
    ("skip {{d}} more skip {{e}}.", ""),
    ("foo bar ponies", "foo lulz ponies"),
    (r"^\s*foo (?P<issue_key>[A-Z][A-Z0-9]+-[0-9]+)", "bar foo ASDF-1234"),
    (r"foo (?P<issue_key>[A-Z][A-Z0-9]+-[0-9]+)\s*$", "foo ASDF-1234 bar"),
    (r"^\s*foo (?P<issue_key>[A-Z][A-Z0-9]+-[0-9]+)\s*$", "bar ASDF-1234"),
])
def test_stackstorm_unit_non_matches(fmt: str, message: str) -> None:
    with pytest.raises(AliasParseError) as caught:
        extract_parameters(fmt, message)
    assert caught.value.reason == f'Command "{message}" doesn\'t match format string "{fmt}"'


def test_error_names_format_and_message() -> None:
    with pytest.raises(AliasParseError) as caught:
        extract_parameters("deploy {{app}} to {{env}}", "deploy web")
    assert "deploy {{app}} to {{env}}" in str(caught.value)
    assert '"deploy web"' in str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert caught.value.format == "deploy {{app}} to {{env}}"
    assert caught.value.message == "deploy web"


def test_no_value_and_no_default() -> None:
    with pytest.raises(AliasParseError, match="No value supplied and no default value found"):
        extract_parameters("(?P<a>x*)", "  ")


# -- Squall's fixes ------------------------------------------------------------------------------

@pytest.mark.parametrize(("message", "expected"), [
    ('fetch "https://x/?a=b"', {"url": "https://x/?a=b"}),                   # quoted trailing token
    ("fetch https://x/?a=b", {"url": "https://x/?a=b"}),                     # bare, key not an identifier
    ("fetch aGVsbG8gd29ybGQ=", {"url": "aGVsbG8gd29ybGQ="}),                 # base64 padding
    ('fetch "say a=b"', {"url": "say a=b"}),                                  # pair-looking text in quotes
    ("fetch u timeout=5", {"url": "u", "timeout": "5"}),                      # a real pair still works
    ('fetch u note="x=1, y=2"', {"url": "u", "note": "x=1, y=2"}),            # quoted pair value keeps `=`
    ("fetch u url2=https://h/?q=1&r=2", {"url": "u", "url2": "https://h/?q=1&r=2"}),
])
def test_equals_signs_in_values(message: str, expected: dict) -> None:
    assert extract_parameters("fetch {{url}}", message) == expected


def test_nested_json_in_pairs_is_kept_whole() -> None:
    # StackStorm: d = '{"a": {"b": 1}' (cut at the first `}`).
    assert extract_parameters("x", 'x d={"a": {"b": 1}}') == {"d": '{"a": {"b": 1}}'}
    assert extract_parameters("x", 'x d=[1, {"b": "}"}] e=2') == {"d": '[1, {"b": "}"}]', "e": "2"}
    # nested JSON in a placeholder was always fine
    assert extract_parameters("set {{v}}", 'set {"a": {"b": [1, 2]}}') == {"v": '{"a": {"b": [1, 2]}}'}


def test_only_the_trailing_pairs_are_removed() -> None:
    # StackStorm removed every occurrence of the tail's text: `echo a=1 then a=1` lost both.
    assert extract_parameters("echo {{text}}", "echo a=1 then a=1") == {"text": "a=1 then", "a": "1"}
    # pairs must be the contiguous tail: `d=e` is followed by a plain word, so it stays in the text
    assert extract_parameters("echo {{text}}", "echo hi there d=e f") == {"text": "hi there d=e f"}
    assert split_pairs("a b=1 c=2") == ("a", {"b": "1", "c": "2"})


def test_smart_quotes_and_odd_spaces_are_normalised() -> None:
    fmt = "say {{ phrase }} in {{ color }}"
    assert extract_parameters(fmt, "say \u201chello world\u201d in\u00a0red") == {"phrase": "hello world",
                                                                                   "color": "red"}
    assert extract_parameters(fmt, "say \u2018hello world\u2019 in\u202fred") == {"phrase": "hello world",
                                                                                  "color": "red"}
    assert extract_parameters("x", "x\u200b msg=\u201ctwo words\u201d") == {"msg": "two words"}
    assert extract_parameters("what\u2019s {{x}}", "what's up") == {"x": "up"}  # the format too
    assert normalise("a\r\nb\rc") == "a\nb\nc"


def test_multi_line_values() -> None:
    script = "echo one\necho two\n  echo three"
    assert extract_parameters("run {{cmd}} on {{hosts}}", f"run {script} on web1") == {"cmd": script,
                                                                                       "hosts": "web1"}
    assert extract_parameters("run {{cmd}}", f'run "{script}"') == {"cmd": script}
    assert extract_parameters("post {{msg}}", 'post x body="line 1\nline 2"') == {"msg": "x", "body": "line 1\nline 2"}
    assert extract_parameters("x", 'x d={\n  "a": {"b": 1}\n}') == {"d": '{\n  "a": {"b": 1}\n}'}
    assert extract_parameters("run {{cmd}}", "run a\r\nb") == {"cmd": "a\nb"}


def test_top_level_alternation_is_anchored_as_a_whole() -> None:
    # StackStorm glued `^\s*` to the first alternative only, so `exec` matched anywhere.
    fmt = "run {{x}}|exec {{y}}"
    assert extract_parameters(fmt, "exec 1") == {"y": "1"}
    with pytest.raises(AliasParseError):
        extract_parameters(fmt, "please exec 1")


def test_inline_global_flags_stay_first() -> None:
    assert extract_parameters("(?i)ping {{host}}", "PING host1") == {"host": "host1"}


def test_groups_that_took_no_part_are_left_out() -> None:
    assert extract_parameters("foo( {{x}})?", "foo") == {}
    assert extract_parameters("foo(?: (?P<n>[0-9]+))?", "foo") == {}
    assert extract_parameters("foo(?: (?P<n>[0-9]+))?", "foo 5") == {"n": "5"}


# -- typed placeholders (Squall extension, `parse` type letters) ---------------------------------

def test_typed_placeholders() -> None:
    assert extract_parameters("scale {{app}} to {{count:d}}", "scale web to 5") == {"app": "web", "count": 5}
    assert extract_parameters("scale {{app}} to {{count:d}}", "scale web to -2") == {"app": "web", "count": -2}
    assert extract_parameters("wait {{n:d}}", "wait 0x10") == {"n": 16}
    assert extract_parameters("ratio {{r:f}}", "ratio 0.25") == {"r": 0.25}
    assert extract_parameters("ratio {{r:g}}", "ratio 2") == {"r": 2.0}
    assert extract_parameters("tag {{word:w}} {{rest}}", "tag alpha beta gamma") == {"word": "alpha",
                                                                                    "rest": "beta gamma"}
    assert extract_parameters("big {{n:n}}", "big 1,234,567") == {"n": 1234567}


def test_typed_placeholders_refuse_other_text() -> None:
    with pytest.raises(AliasParseError):
        extract_parameters("scale {{app}} to {{count:d}}", "scale web to five")
    with pytest.raises(AliasParseError):  # parse's `f` needs a decimal point; `g` takes any number
        extract_parameters("ratio {{r:f}}", "ratio 1")
    with pytest.raises(AliasParseError):
        extract_parameters("tag {{word:w}}", "tag two words")


def test_typed_defaults_and_pairs() -> None:
    assert extract_parameters("retry {{n:d=3}}", "retry") == {"n": 3}
    assert extract_parameters("retry {{n:d=3}}", "retry 7") == {"n": 7}
    assert extract_parameters("retry {{n:d=3}}", "retry n=9") == {"n": 9}
    with pytest.raises(AliasParseError, match='"n" = \'x\' is not of type "d"'):
        extract_parameters("retry {{n:d=3}}", "retry n=x")


@pytest.mark.parametrize(("fmt", "problem"), [
    ("x {{n:q}}", "unknown type 'q'"),
    ("x {{n:d=abc}}", "is not of type 'd'"),
    ("x {{a-b}}", "must be an identifier"),
    ("x {{a}} {{a}}", "appears twice"),
    ("x (unclosed {{a}}", "missing )"),
    ("x [z", "unterminated character set"),
    ("x a{99999999999}", "repetition"),
])
def test_bad_formats(fmt: str, problem: str) -> None:
    with pytest.raises(AliasFormatError) as caught:
        extract_parameters(fmt, "x 1")
    assert problem in str(caught.value)
    assert fmt in str(caught.value)
    assert isinstance(caught.value, AliasParseError)


# -- match_multiple ------------------------------------------------------------------------------

def test_extract_multiple() -> None:
    fmt = r"(?:\b|^)duplicate of (?P<issue_key>[A-Z][A-Z0-9]+-[0-9]+)(?:\b|$)"
    assert extract_multiple(fmt, "dupe: duplicate of ABC-1 and duplicate of XY-22") == [
        {"issue_key": "ABC-1"}, {"issue_key": "XY-22"}]
    with pytest.raises(AliasParseError):
        extract_multiple(fmt, "nothing here")


# -- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    "$(rm -rf /)", "`id`", "a; reboot", "x && y || z", "x'; DROP TABLE executions; --", "{{ 7*7 }}",
    "{% for x in y %}", "../../etc/passwd", "\\x00", "%s%s%n",
])
def test_injection_attempts_are_plain_values(value: str) -> None:
    assert extract_parameters("run {{cmd}}", f"run {value}") == {"cmd": value}
    assert extract_parameters("run {{cmd}} on {{host}}", f"run {value} on h") == {"cmd": value, "host": "h"}


def test_control_characters() -> None:
    assert extract_parameters("run {{cmd}}", "run a\x00b\x07c\x1bd") == {"cmd": "a\x00b\x07c\x1bd"}
    assert extract_parameters("run {{cmd}} on {{h}}", "run \x7f\x9b on h") == {"cmd": "\x7f\x9b", "h": "h"}
    with pytest.raises(AliasParseError):
        extract_parameters("run {{cmd}}", "\x00run x")


@pytest.mark.parametrize(("message", "expected"), [
    ('run "unbalanced', {"cmd": "unbalanced"}),   # StackStorm's optional quotes: the lone quote is dropped
    ("run it's here", {"cmd": "it's here"}),
    ("run it's a=b", {"cmd": "it's", "a": "b"}),
    ('run x note="open', {"cmd": "x", "note": '"open'}),  # an unclosed quote is part of a bare value
    ('run {"a": 1', {"cmd": '{"a": 1'}),
    ("run ]]}}{{[[", {"cmd": "]]}}{{[["}),
])
def test_unbalanced_quotes_and_brackets(message: str, expected: dict) -> None:
    assert extract_parameters("run {{cmd}}", message) == expected


def test_100_kb_messages() -> None:
    big = "x" * 100_000
    start = time.perf_counter()
    assert extract_parameters("run {{cmd}}", f"run {big}") == {"cmd": big}
    assert extract_parameters("run {{cmd}} on {{hosts}}", f"run {big} on h") == {"cmd": big, "hosts": "h"}
    pairs = " ".join(f"k{i}={i}" for i in range(10_000))
    assert len(extract_parameters("run", f"run {pairs}")) == 10_000
    with pytest.raises(AliasParseError) as caught:
        extract_parameters("stop {{x}}", f"run {big}")
    assert len(str(caught.value)) < 500  # the message is shortened in the reason
    # adversarial: many partial matches, quotes and brackets that never close
    for message in ("run " + "x on " * 20_000, "run " + '{ " ' * 25_000 + " a=1", "run " + '"a ' * 30_000 + " a=1",
                    "run " + "a=" * 50_000):
        for fmt in ("run {{cmd}} on {{hosts}} now", "run {{cmd}}", "run {{a}} {{b}} {{c}}"):
            with contextlib.suppress(AliasParseError):
                extract_parameters(fmt, message)
    assert time.perf_counter() - start < 10


def test_prepare_splits_once() -> None:
    prepared = prepare("  deploy web to prod force=true  ")
    assert prepared.word == "deploy"
    assert prepared.pairs == {"force": "true"}
    assert prepared.stream == "   deploy web to prod "


def test_compiled_format_index_words_and_score() -> None:
    assert compile_format("restart {{service}} on {{host}}").leading_words == {"restart"}
    assert compile_format("(run|execute) {{cmd}}").leading_words == {"run", "execute"}
    assert compile_format(r"^\s*foo (?P<k>x)").leading_words == {"foo"}
    assert compile_format("status").leading_words == {"status"}
    assert compile_format("status {{x=all}}").leading_words == {"status"}
    assert compile_format("run x|runway").leading_words == {"run", "runway"}
    # not indexable: the first word is not fixed
    for fmt in ("{{x}} is my captain", "foo ?bar", "foo{{x}}", "(?i)ping", "fo+ bar", "foo|^bar", "[a-z]+ x", ""):
        assert compile_format(fmt).leading_words is None, fmt
    assert compile_format("run {{cmd}} on {{hosts}}").score > compile_format("run {{cmd}}").score
    assert compile_format("status").score > compile_format("status {{x=all}}").score


# -- property: never anything but a dict or AliasParseError --------------------------------------

FORMATS = [
    "run {{cmd}} on {{hosts}}", "run {{cmd}} {{hosts=localhost}}", ROW7,
    "", "{{ captain }} is my captain", "set {{key}} {{value}}", "scale {{app}} to {{count:d}}", "ratio {{r:f=0.5}}",
    r"^\s*foo (?P<issue_key>[A-Z][A-Z0-9]+-[0-9]+)", "say {{ phrase }} in {{ color }}", "x {{a:w}} {{b}}",
]
TEXT = st.text(alphabet=st.sampled_from(list("run on execute set scale to x=\"'{}[]\\ \n\t\u201c\u00a0:-5.a,;$`"))
               | st.characters(), max_size=80)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(FORMATS), body=TEXT, prefix=st.sampled_from(["", "run ", "scale a to ", "x ", "foo "]))
def test_arbitrary_messages(fmt: str, body: str, prefix: str) -> None:
    try:
        values = extract_parameters(fmt, prefix + body)
    except AliasParseError:
        return
    assert isinstance(values, dict)
    for key, value in values.items():
        assert isinstance(key, str)
        assert isinstance(value, str | int | float)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # re's "possible nested set" on random formats
@settings(max_examples=200, deadline=None)
@given(fmt=st.text(alphabet=st.sampled_from(list("ab {}=:d()|?*+^$\\[]'\"")), max_size=24), message=TEXT)
def test_arbitrary_formats(fmt: str, message: str) -> None:
    try:
        values = extract_parameters(fmt, message)
    except AliasParseError:
        return
    assert all(isinstance(v, str | int | float) for v in values.values())


@pytest.mark.filterwarnings("ignore::FutureWarning")  # re's "possible nested set" on `[[:alpha:]]`
@pytest.mark.parametrize(("fmt", "fits", "misfits"), [
    ("{d", "{d", "d"),  # `regex` refused the format at the first message: "expected }"
    ("ping a{e}", "ping a{e}", "ping b"),  # to `regex`, `{e}` is a fuzzy match: any number of errors
    ("[[:alpha:]]x", "a]x", "bx"),  # to `regex`, a POSIX class (to `re`, a class and `]x`)
    ("[]{]+ {{n}}", "{] 5", "x 5"),
    ("go a{,2} {{n}}", "go aa 5", "go aaa 5"),
    # (?x): a `[` in a comment opens no class, so the `{` after it is still a literal
    ("(?x) ping {{host}} # [see docs\n a{e}", "ping web1 a{e}", "ping web1 b"),
])
def test_the_budgeted_engine_reads_a_format_as_re_does(fmt: str, fits: str, misfits: str) -> None:
    assert extract_parameters(fmt, fits) is not None
    with pytest.raises(AliasParseError, match="doesn't match"):
        extract_parameters(fmt, misfits)
    # The budgeted engine itself, which long messages meet (short ones may run on `re`):
    budgeted = grammar._compile(compile_format(fmt).regex.pattern, re.DOTALL)
    assert budgeted.search(prepare(fits).stream) is not None
    assert budgeted.search(prepare(misfits).stream) is None


@pytest.mark.filterwarnings("ignore::FutureWarning")  # re's "possible nested set" on random formats
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.text(alphabet=st.sampled_from(list("ab {}=:de()|?*+^$\\[]'\",012-")), max_size=16),
       messages=st.lists(st.text(alphabet=st.sampled_from(list("ab {}=:d012e[]\"'x-")), max_size=10), max_size=8))
def test_the_budgeted_engine_matches_as_re_does(fmt: str, messages: list[str]) -> None:
    # Formats are analysed with `re` and run on `regex` (deviation 12): both must find the same fits.
    try:
        pattern = compile_format(fmt).regex
    except AliasParseError:
        return
    budgeted = grammar._compile(pattern.pattern, re.DOTALL)
    for message in messages:
        ours, theirs = budgeted.search(message), pattern.search(message)
        assert (ours and ours.groups()) == (theirs and theirs.groups()), (fmt, message)


def _pairs_by_tokenizer(text: str) -> tuple[str, dict[str, str]]:
    tokens = list(_Scanner(text).tokens())
    first = len(tokens)
    while first > 0 and tokens[first - 1][2] is not None:
        first -= 1
    if first == len(tokens):
        return text, {}
    return text[:tokens[first][0]].rstrip(), {k: v for _, _, k, v in tokens[first:] if k is not None}


PIECES = ["a", "b=", "x=1", "k_2=v=w", "=", "\u00e9=1", " ", "  ", "\t", "\n", "1a=b", "_=_", "\x0b", "\x1c", "\u2028",
          '"', "'", "{", "}", "[", "]", 'x="', "y={", '"a b"', "z=[1, 2]", '{"a": "}"}', "\\"]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=10).map("".join))
def test_fast_pair_split_agrees_with_the_tokenizer(text: str) -> None:
    assert split_pairs(text) == _pairs_by_tokenizer(text)
    assert split_pairs(text * 40) == _pairs_by_tokenizer(text * 40)  # long messages take the tokenizer


@pytest.mark.parametrize(("fmt", "message", "expected"), [
    ("run {{cmd}}", 'run echo "hi there"', {"cmd": 'echo "hi there"'}),  # StackStorm: 'echo "hi there'
    ("run {{cmd}}", "run grep -c 'x y'", {"cmd": "grep -c 'x y'"}),
    ("run {{cmd}}", 'run "ls -la"', {"cmd": "ls -la"}),  # a quoted value still loses its quotes
    ("deploy {{app}} to {{env}}", 'deploy "my app" to prod', {"app": "my app", "env": "prod"}),
    ("deploy {{app}} to {{env}}", 'deploy web to "prod eu"', {"app": "web", "env": "prod eu"}),
    ("say {{msg}} now", 'say he said "hi" now', {"msg": 'he said "hi"'}),
])
def test_a_closing_quote_goes_only_with_its_opening_quote(fmt: str, message: str, expected: dict) -> None:
    assert extract_parameters(fmt, message) == expected


# -- bounded matching (deviation 12) -------------------------------------------------------------

class _Counting:
    """A format's compiled regex, counting its runs into `runs`."""

    def __init__(self, engine: Any, runs: list[str]) -> None:
        self.engine = engine
        self.runs = runs

    def search(self, *args: Any) -> Any:
        self.runs.append(self.engine.pattern)
        return self.engine.search(*args)

    def finditer(self, *args: Any, **kwargs: Any) -> Any:
        self.runs.append(self.engine.pattern)
        return self.engine.finditer(*args, **kwargs)


@pytest.fixture
def regex_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The format regexes run (`search` / `finditer`), one entry each; the pre-check is not counted."""
    runs: list[str] = []
    compiled = grammar._Variant._compiled
    monkeypatch.setattr(grammar._Variant, "_compiled",
                        lambda variant, prepared: _Counting(compiled(variant, prepared), runs))
    return runs


# Chat-sized messages (~39,000 characters, under Slack's 40,000) that do not fit, each a shape whose
# regex backtracks for seconds (quadratic or cubic in the words) and that the pre-check reads.
ADVERSARIAL = [
    ("a typed placeholder at the end", "scale {{a}} {{b}} to {{word:d}}", "scale " + "to " * 13_000 + "x"),
    ("a case-insensitive format", "(?i)restart {{svc}} on {{host}} now", "restart " + "on " * 13_000),
    ("a character class at the end", "deploy {{a}} {{b}} {{c}}[.!]", "deploy " + "w " * 19_000),
    ("the author's anchors", r"^\s*stop {{a}} {{b}} now\s*$", "stop " + "x " * 19_000 + "now!"),
    ("a case-insensitive end", "(?i)tag {{a}} {{b}} as DONE", "tag " + "as " * 13_000 + "dune"),
    # A pasted script against the more specific of `run {{cmd}} on {{hosts}}` and this one: each ` on `
    # is a split to try; the message must end with ` as <word>` (12,900 characters ran out of budget).
    ("literals before a typed placeholder at the end", "run {{cmd}} on {{hosts}} as {{user:w}}",
     "run for h in $HOSTS; do\n" + 'echo "restarting nginx on $h as deploy user" || echo "failed on $h"\n' * 600
     + "done on web1,web2"),
    ("a repeated literal at the end", "run {{cmd}} on {{hosts}}!+", "run " + "on x! " * 6_000 + "on y"),
]


@pytest.mark.parametrize(("fmt", "message"), [a[1:] for a in ADVERSARIAL], ids=[a[0] for a in ADVERSARIAL])
def test_the_pre_check_turns_adversarial_messages_away_without_the_regex(regex_runs: list[str], fmt: str,
                                                                         message: str) -> None:
    with pytest.raises(AliasParseError, match="doesn't match format string"):
        extract_parameters(fmt, message)
    assert regex_runs == []


def test_a_fitting_long_message_still_runs_the_regex(regex_runs: list[str]) -> None:
    message = "scale " + "to " * 13_000 + "5"
    assert extract_parameters("scale {{a}} {{b}} to {{word:d}}", message) == {
        "a": "to", "b": " ".join(["to"] * 12_998), "word": 5}
    assert len(regex_runs) == 1


def test_a_message_the_pre_check_lets_through_is_refused_past_its_budget(regex_runs: list[str]) -> None:
    # It ends as the format must (a number) and holds ` to `: only the regex can tell it does not fit,
    # trying every split of 13,000 words between `a` and `b`. It is stopped and refused instead.
    message = "scale " + "to " * 13_000 + "5 5"
    with pytest.raises(MessageTooComplex) as caught:
        extract_parameters("scale {{a}} {{b}} to {{word:d}}", message)
    assert isinstance(caught.value, AliasParseError)
    assert caught.value.reason == TOO_COMPLEX == str(caught.value)
    assert caught.value.format == "scale {{a}} {{b}} to {{word:d}}" and caught.value.message == message
    assert len(regex_runs) == 1


def test_a_longer_message_has_a_longer_budget() -> None:
    # A pasted script takes a few microseconds a character on each format that nearly fits it.
    short, long = prepare("ping web1"), prepare("run " + "x" * 50_000)
    assert short.time_left() == pytest.approx(grammar.MATCH_BUDGET + 9 * grammar.MATCH_BUDGET_PER_CHAR)
    assert long.time_left() == pytest.approx(grammar.MATCH_BUDGET + 50_004 * grammar.MATCH_BUDGET_PER_CHAR)
    assert long.time_left() < 0.5  # the chat's 100,000 characters hold the loop half a second at most


def test_every_regex_run_is_within_the_messages_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grammar, "MATCH_BUDGET", 0.0)  # nothing left: the first run is refused
    monkeypatch.setattr(grammar, "MATCH_BUDGET_PER_CHAR", 0.0)
    for run in (lambda: extract_parameters("run {{cmd}}", "run x"),
                lambda: extract_parameters("run {{cmd}}", "run " + "x" * 1_000),
                lambda: extract_parameters("", "a=1"),
                lambda: extract_multiple("dup {{x}}", "dup 1")):
        with pytest.raises(MessageTooComplex):
            run()


def test_long_multi_line_commands_match_as_before() -> None:
    # ~90 KB of script (the chat's limit is 100,000 characters) with quotes, braces and 2,000 ` on `.
    script = "\n".join(f'echo "line {i}" on host{i % 7} {{"k": {i}}}; sleep 1' for i in range(2_000))
    body = "\n".join(f"line {i}" for i in range(1_000))
    cases = [
        ("run {{cmd}} on {{hosts}}", f"run {script} on web1,web2"),
        ("run {{cmd}} on {{hosts}}", f'run {script}\non web1 body="{body}"'),
        ("run {{cmd}}", f'run "{script}"'),
        ("post {{msg}} to {{where=#ops}}", f"post {script} to #dev\n"),
        ("(?i)RUN {{cmd}} on {{hosts}}", f"run {script} on web1"),
        ("run {{cmd}} x{{n:d}}", f"run {script} x3"),
    ]
    for fmt, message in cases:
        compiled = compile_format(fmt)
        prepared = prepare(message)
        before = compiled.regex.search(prepared.stream)  # `re`, as before deviation 12, with no budget
        assert before is not None, fmt
        assert extract_parameters(fmt, message) == compiled._values(before, prepared), fmt
    plain = script.replace(" on ", " at ")
    assert extract_parameters("run {{cmd}} on {{hosts}}", f"run {plain} on web1") == {"cmd": plain, "hosts": "web1"}


def test_matching_leaves_the_global_random_numbers_alone() -> None:
    # `regex`'s own pattern cache, when full (500), drops entries with the global `random`: a seeded
    # caller's numbers would change with the formats matched. Format regexes stay out of it.
    random.seed(7)
    state = random.getstate()
    for i in range(600):
        assert extract_parameters(f"(?i)seed{i} {{{{a}}}}[.!]", f"SEED{i} x " + "y" * 200 + "!") == {
            "a": "x " + "y" * 200}
    assert random.getstate() == state


def test_information_separators_are_spaces() -> None:
    # `str.split` and `re`'s `\s` count U+001C-U+001F as spaces, `regex`'s `\s` does not: made plain.
    assert normalise("a\x1cb\x1dc\x1ed\x1fe") == "a b c d e"
    assert extract_parameters("run {{cmd}}", "run\x1ca\x1fb\x1e") == {"cmd": "a b"}
    assert extract_parameters("x {{a:S}}", "x y\x1f") == {"a": "y"}


CHECKED = [
    "scale {{a}} {{b}} to {{n:d}}", "(?i)restart {{svc}} on {{host}} now", "deploy {{a}} {{b}} {{c}}[.!]",
    r"^\s*stop {{a}}\s+now\s*$", "(?i)Ping {{h:w}}!", " lead {{x}}", "{{a}}{{b}}x", r"tail {{a}} \d{{b}}",
    "(?m)^x {{a}}$", "(?i:on) {{a}} [^a-c]", "{{a}} {{b:f}}", "ß {{a}} K", "(?i)ß {{a}} K", "{{a=1}} [.!]?",
    r"go\b{{a}}", "x(?=y){{a}}", "{{a:x}} {{b:l}}", "say {{a}}( now)?",
]
WORDS = st.sampled_from(["scale", "to", "5", "-3", "0x1f", "2.5", "x", "X", "y", "restart", "RESTART", "on", "ON",
                         "now", "NOW", "deploy", "w", ".", "!", "stop", "ping", "Ping", "lead", "tail", '"', "'", "{",
                         "}", "é", "ß", "SS", "k", "K", "\u212a", "\n", " ", "\t", "\u2028", "a", "d"])


@settings(max_examples=600, deadline=None)
@given(fmt=st.sampled_from(CHECKED), words=st.lists(WORDS, max_size=10), sep=st.sampled_from([" ", "", "  ", "\n"]))
def test_the_pre_check_never_turns_a_fitting_message_away(fmt: str, words: list[str], sep: str) -> None:
    compiled = compile_format(fmt)
    message = sep.join(words)
    prepared = prepare(message)
    found = compiled.regex.search(prepared.stream)  # `re`, without the pre-check
    with mock.patch.object(grammar, "CHECKED_FROM", 0):  # the pre-check on short messages too
        values = compiled.extract(prepare(message))
    assert values == (None if found is None else compiled._values(found, prepared))


@pytest.mark.parametrize(("fmt", "message"), [
    ("s (a|aa)+b {{x}}", "s " + "a" * 40 + "c y"),  # a repeat of alternatives: 2^40 ways to split
    ("s (?:a|a)* {{b}}", "s " + "a" * 55 + "!y"),
    ("s {{a}} {{b}} {{c}} z", "s " + "' " * 60 + "y"),  # three placeholders
    ("s {{a}}{{b}}{{c}} z", "s " + "'" * 60 + "y"),  # 612 ms on `re`
])
def test_a_short_message_on_a_format_that_may_backtrack_long_stays_in_the_budget(fmt: str, message: str) -> None:
    # Short messages run on `re` (several times faster) only for formats whose backtracking grows at
    # most with the square of the message's length; on these `re` would hold the loop for seconds or
    # for good, and the budgeted engine stops them instead.
    assert len(prepare(message).stream) < grammar.CHECKED_FROM
    with pytest.raises(MessageTooComplex):
        extract_parameters(fmt, message)


@pytest.mark.parametrize(("fmt", "on_re"), [
    ("ping {{host}}", True), ("restart {{svc}} on {{host}}", True), ("run {{cmd}} on {{hosts=localhost}}", True),
    ("scale {{a}} {{b}} to {{n:d}}", False), ("s (a|aa)+ {{x}}", False), ("x(?=.*y) {{a}}", False),
    ("(?m)^ping {{h}}$", True), ("(?m)^ping {{h}} {{g}}$", False),
])
def test_which_formats_short_messages_run_on_re(fmt: str, on_re: bool) -> None:
    assert grammar._runs_on_re(compile_format(fmt).regex) is on_re


@pytest.mark.parametrize(("fmt", "message"), [
    # A repeat at an end whose class may match a space: the padded message's space fits it, the
    # stripped one's end does not show it.
    ("note {{title}}: [^\n]{5,}", "note " + "groceries " * 14 + ": milk"),
    ("note {{title}}:[^,]{2,}", "note " + "groceries " * 14 + ":a"),
    ("say {{a}}\\W{2,}", "say " + "hello " * 25 + "!"),
    ("[^:]{2,}:{{a}}", "x:" + "b" * 140),
    # (?a): `\D` is any but an ASCII digit, on the pre-check too (`regex` numbers ASCII otherwise).
    ("(?a)sum {{a}} \\D=", "sum " + "1" * 140 + " \u0663="),
])
def test_the_pre_check_lets_through_what_the_regex_matches(fmt: str, message: str) -> None:
    assert len(prepare(message).stream) >= grammar.CHECKED_FROM
    assert compile_format(fmt).regex.search(prepare(message).stream) is not None
    assert extract_parameters(fmt, message) is not None


def _burning(make: Any, seconds: float) -> Any:
    """`make`, after spending `seconds` of this thread's CPU time (as the first `import regex` does, 20-30 ms
    on an idle machine and more on a busy one)."""

    def slow(*args: Any) -> Any:
        until = time.thread_time() + seconds
        while time.thread_time() < until:
            pass
        return make(*args)

    return slow


@pytest.mark.parametrize("made", ["_compile", "_build_check"])
def test_making_a_formats_regex_is_not_spent_from_the_messages_budget(monkeypatch: pytest.MonkeyPatch,
                                                                       made: str) -> None:
    # The first command that needed `regex` imported it within its budget: on a busy machine, a short
    # command was refused as too complex. Each case's formats are new, so their regexes are made while a
    # message is matched: a `match_multiple` format's as its clock starts, a second format's after the
    # first's regex ran (a short message, and a long one, which has the pre-check made too).
    monkeypatch.setattr(grammar, made, _burning(getattr(grammar, made), grammar.MATCH_BUDGET * 1.5))
    tag = f"{made}{time.monotonic_ns()}"
    duplicate = rf"(?:\b|^)dup{tag} of (?P<key>[A-Z]+-[0-9]+)(?:\b|$)"
    assert extract_multiple(duplicate, f"dup{tag} of AB-1 and dup{tag} of XY-22") == [{"key": "AB-1"},
                                                                                     {"key": "XY-22"}]
    for text in (f"scale{tag} a b to 5", f"scale{tag} " + "web " * 40 + "to 5"):  # a short and a long one
        first, second = (compile_format(f"scale{tag} {{{{a}}}} {middle}to {{{{n:d}}}}") for middle in ("{{b}} ", ""))
        prepared = prepare(text)
        assert first.extract(prepared)["n"] == 5  # its regex ran: the clock runs when the second's is made
        assert second.extract(prepared)["n"] == 5
        assert prepared.time_left() > grammar.MATCH_BUDGET / 2


def test_a_garbage_collection_within_a_match_is_not_spent_from_the_messages_budget(
        request: pytest.FixtureRequest) -> None:
    # A collection that falls within a message's matching walks the whole heap, tens of milliseconds in a
    # fresh CLI process; counted, it refused an ordinary command as too complex. Here one that takes 1.5
    # budgets runs between the message's first format and its second.
    tag = f"gc{time.monotonic_ns()}"
    first, second = (compile_format(f"scale{tag} {{{{a}}}} {middle}to {{{{n:d}}}}") for middle in ("{{b}} ", ""))
    prepared = prepare(f"scale{tag} " + "web " * 40 + "to 5")  # long: both run `regex` within the budget
    assert first.extract(prepared)["n"] == 5  # the clock runs from here

    def slow_collection(phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            _burning(lambda: None, grammar.MATCH_BUDGET * 1.5)()

    gc.callbacks.append(slow_collection)
    request.addfinalizer(lambda: slow_collection in gc.callbacks and gc.callbacks.remove(slow_collection))
    gc.collect()
    gc.callbacks.remove(slow_collection)
    assert second.extract(prepared)["n"] == 5
    assert prepared.time_left() > grammar.MATCH_BUDGET / 2


def test_threads_busy_beside_the_matching_one_do_not_spend_its_budget() -> None:
    # The budget counted the wall clock, and `regex` let go of the GIL while it matched: with Python
    # threads busy beside it, an ordinary command was now and then refused as too complex.
    import threading

    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1_000))

    busy = [threading.Thread(target=spin) for _ in range(6)]
    for thread in busy:
        thread.start()
    refused = 0
    try:
        for _ in range(3_000):
            with contextlib.suppress(AliasParseError):
                try:
                    extract_parameters("run {{cmd}} on {{hosts}} as {{user}}", "run uptime on web1,web2 as deploy " * 2)
                except MessageTooComplex:
                    refused += 1
    finally:
        stop.set()
        for thread in busy:
            thread.join()
    assert refused == 0
