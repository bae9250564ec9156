"""The action-alias format grammar (spec §2.2): one format string and one chat message in, parameters out.

A representation is a Python regular expression in which `{{ name }}` and `{{ name = default }}`
placeholders become named groups; trailing `key=value` pairs of the message supply (and override)
parameters. Each format is compiled once (`compile_format`, cached) and each message is prepared once
(`prepare`: normalised, trailing pairs split off), so the matcher can try many formats on one message
cheaply. `extract_parameters(format, message)` is the whole thing for one pair, for pack authors' tests.

What StackStorm does and Squall keeps: formats are case-sensitive regexes matched with DOTALL;
required placeholders match an optionally quoted value, a `{...}` blob or lazy any-text; an optional
placeholder and the whitespace before it form an optional group; `^\\s*` / `\\s*$` are added when the
format has no begin / end anchor and the message is padded with one space on each side (so `^show$`
never matches: write `^\\s*show\\s*$`); values are strings and are not trimmed; defaults apply when a
placeholder matched nothing; pairs override placeholder values; an empty format takes only pairs; user
`(?P<name>...)` groups are parameters too; "No value supplied and no default value found." when the
format is non-empty and nothing at all was supplied.

Deviations from StackStorm (each one fixes a reported problem, or is a Squall extension):

1. Trailing pairs need a plain identifier key (`[A-Za-z_][A-Za-z0-9_]*`) directly followed by `=`.
   StackStorm took any token holding `=` as a pair, so a trailing URL with a query string
   (`bar https://h/api?some=url&x=y`) or base64 padding was cut into a bogus pair and the message no
   longer matched (st2#5074, st2#3882, err-stackstorm#37). Squall keeps such tokens in the text.
2. The message is tokenised with its quotes and brackets, so a quoted token is one value even when it
   holds `=` or spaces (`"https://x/?a=b"`, `"say a=b"` are values, never pairs); StackStorm split them.
3. A `{...}` or `[...]` value of a trailing pair is taken whole with its nesting (and JSON strings in
   it); StackStorm stopped at the first `}` (`d={"a": {"b": 1}}` became `{"a": {"b": 1}`).
4. Only the trailing run of pairs is removed from the message; StackStorm removed every occurrence of
   its text anywhere in the message.
5. Typographic quotes (U+201C-201F double, U+2018-201B single, as Slack and phones insert them)
   become ASCII quotes, odd spaces (no-break, figure, thin, ideographic...) and the information
   separators U+001C-U+001F (spaces to Python's `str.split`) become plain spaces,
   zero-width spaces and BOMs are dropped and CR/CRLF line ends become LF, in the message and in the
   format alike (errbot#1145).
6. A placeholder that the message leaves out may be supplied as a trailing pair of the same name:
   `foo {{a}}` + `foo a=b` gives `{a: "b"}`. StackStorm stripped the pair first and then failed to
   match (hubot-stackstorm#182, where it crashed the bot).
7. Auto-anchoring wraps the whole format, `^\\s*(?:FORMAT)\\s*$`, so a top-level alternation such as
   `run {{x}}|exec {{x}}` stays anchored on both sides; StackStorm glued the anchors to the first and
   last alternative only. Anchors are looked for in every alternative (StackStorm looked in one).
   Global inline flags at the start of a format (`(?i)...`) stay at the start, so they compile.
8. A user `(?P<name>...)` group, or a placeholder inside an optional regex group, that did not take
   part in the match is left out of the result instead of being `None` (the action default applies).
9. A format that is not a valid regex, or has a placeholder whose name is not an identifier, raises
   `AliasFormatError` (an `AliasParseError`) naming the format, instead of a bare `re.error`.
10. A closing quote is taken off a value only when the value began with one: `run echo "hi there"`
    gives `echo "hi there"`. StackStorm's optional quotes on both sides were independent, so it gave
    `echo "hi there` and the shell saw an unbalanced quote. (A lone opening quote is still dropped,
    as StackStorm drops it.) The opening quote has a group of its own, so numbered backreferences
    in a format (`\\2`) count one more group per untyped placeholder before them than in StackStorm;
    named ones (`(?P=word)`) are unaffected.
11. Extension: typed placeholders `{{count:d}}`, `{{ratio:f}}`, `{{word:w}}`, also with a default
    (`{{count:d=3}}`), with the `parse` package's type letters and conversions: d (int; also 0x, 0o,
    0b), n (int with thousands separators), f (float with a decimal point, as in `parse`), e, g and %
    (floats), x, o, b (ints), w (one word), W, l (letters), S (no spaces). A typed value is not quoted;
    the converted value (int, float or str) is returned, and a trailing pair naming a typed
    placeholder is converted the same way (or the message does not fit).
12. No message can hold the service: formats are matched by the `regex` package (which reads them as
    `re` does) with a budget of `MATCH_BUDGET` seconds a message over every format it is tried with;
    past it the message is refused with `MessageTooComplex` (a chat message may be 100,000
    characters, and three placeholders in a row take time that grows with the cube of its length).
    First a sound pre-check turns most non-fitting messages away without the regex: the format's
    literal text in order (case-folded as the format is), and the characters it must start and end
    with (literals, character classes, typed placeholders). A message under `CHECKED_FROM`
    characters on a format with at most `FAST_PARTS` free-length parts runs on `re` instead: a few
    milliseconds at worst, counted in the budget, and several times faster. `regex` follows the
    Unicode standard where `re` follows `str` methods, so for a few rare characters in the messages
    it matches a format's `\\w` or `\\d` differs from StackStorm's
    (combining marks and superscript digits are word characters; `(?i)i` does not match U+0131).
13. A value is never the space the message is padded with, nor other whitespace ending the message.
    StackStorm's placeholder takes at least one character, so where the message ends before a
    placeholder's value it took the padding: `note {{text}} level={{level=info}}` and `note hi level=`
    gave `level: " "`. A placeholder written against the text before it (`level={{level}}`) that
    the message leaves so is the empty string, as `level=""` is (what the person wrote: the key and
    no value; the action's schema then takes it or refuses it); one after whitespace in the format
    (`greet {{name=World}}` and `greet `) took nothing, so its default applies, and a required one is
    left out (the action then names it as missing).

Literal text in a format is regex (escape `.`, `?`, `(`... to mean them literally), and values that
look like shell (`$(...)`, backticks, `;`) are plain strings: nothing here runs or renders them.
"""

from __future__ import annotations

import bisect
import functools
import gc
import re
import re._constants as sre
import re._parser as sre_parse
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import parse as parse_lib

__all__ = [
    "MATCH_BUDGET",
    "TOO_COMPLEX",
    "AliasFormatError",
    "AliasParseError",
    "CompiledFormat",
    "MessageTooComplex",
    "Prepared",
    "brace_problem",
    "compile_format",
    "extract_multiple",
    "extract_parameters",
    "normalise",
    "prepare",
]


class AliasParseError(ValueError):
    """The message does not fit the format; `reason` says why, naming the format and the message."""

    def __init__(self, reason: str, *, format: str = "", message: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.format = format
        self.message = message


class AliasFormatError(AliasParseError):
    """The format itself is unusable (not a regex, a bad placeholder, an unknown type letter)."""


#: Seconds of regex matching one message may take, over every format it is tried with (deviation 12),
#: plus `MATCH_BUDGET_PER_CHAR` for each of its characters: a command takes microseconds, and a script
#: pasted into `run {{cmd}} on {{hosts}}` a few per character, on each format that nearly fits it
#: (12,900 characters: 21 ms on `re`, 3.4 times that on `regex`). At the chat's 100,000-character
#: limit a message may hold the loop for half a second at most, instead of minutes.
MATCH_BUDGET = 0.05
MATCH_BUDGET_PER_CHAR = 4e-6
TOO_COMPLEX = "That message is too long or too repetitive to match against the aliases; shorten it."


class MessageTooComplex(AliasParseError):
    """Matching the message ran past its budget (`MATCH_BUDGET`) and was stopped: refuse the message.

    A format's regex can backtrack for seconds over one long or repetitive message, and matching
    runs on the event loop, so everything else would wait; `reason` is the refusal to say."""

    def __init__(self, format: str = "", message: str = "") -> None:
        super().__init__(TOO_COMPLEX, format=format, message=message)


# -- normalisation -------------------------------------------------------------------------------

_QUOTES = {"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"',
           "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'"}
_SPACES = {chr(c): " " for c in (0x00A0, 0x1680, *range(0x2000, 0x200B), 0x202F, 0x205F, 0x3000)}
#: The information separators: spaces to `str.split` and to `re`'s `\s`, not to `regex`'s (deviation 12).
_SEPARATORS = {chr(c): " " for c in range(0x1C, 0x20)}
_SEPARATOR = re.compile("[\x1c-\x1f]")
_DROPPED = {"\u200b": None, "\u2060": None, "\ufeff": None}
_TABLE = str.maketrans({**_QUOTES, **_SPACES, **_SEPARATORS, **_DROPPED})


def normalise(text: str) -> str:
    """Plain quotes and spaces for typographic ones, LF line ends (deviation 5)."""
    if not text.isascii() or _SEPARATOR.search(text) is not None:
        text = text.translate(_TABLE)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} characters)"


# -- the message: trailing key=value pairs -------------------------------------------------------

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_SPACE = re.compile(r"\s*")
_NONSPACE = re.compile(r"\S*")
_CLOSING = {'"': re.compile(r'"(?=\s|\Z)'), "'": re.compile(r"'(?=\s|\Z)")}
_BRACKETS = re.compile(r'[\[\]{}"\\]')
_PAIRS_OF = {"}": "{", "]": "["}


MAX_PATH = 4  # index paths hold at most this many leading words


class _CollectorClock(threading.local):
    """The CPU time this thread has spent in the garbage collector (`spent`), which a message's budget
    leaves out: a collection that falls within its matching walks the whole process's heap, tens of
    milliseconds in a fresh CLI process, and counted, it refused an ordinary command as too complex."""

    spent = 0.0
    since = 0.0


_COLLECTING = _CollectorClock()


def _clock_collection(phase: str, _info: dict[str, int]) -> None:
    if phase == "start":
        _COLLECTING.since = time.thread_time()
    else:
        _COLLECTING.spent += time.thread_time() - _COLLECTING.since


gc.callbacks.append(_clock_collection)


class Prepared:
    """A message ready for matching: `stream` (padded text without the trailing pairs), the pairs.

    `core` is the stream stripped and `words` its whitespace-separated words. The message's matching
    budget (`MATCH_BUDGET`, deviation 12) is the time its regex runs take, over every format it is
    tried with: the matching thread's CPU time from its first regex run on, so waiting for the GIL or
    a core is not counted, nor is making a format's regex (`not_counting`) nor a garbage collection
    (`_CollectorClock`).
    """

    __slots__ = ("_backwards", "_budget", "_collected", "_lead", "_started", "core", "pairs", "stream", "text",
                 "words")

    def __init__(self, text: str, stream: str, pairs: dict[str, str]) -> None:
        self.text = text
        self.stream = stream
        self.pairs = pairs
        self.core = stream.strip()
        self.words = self.core.split()
        self._started = -1.0
        self._collected = 0.0
        self._backwards: str | None = None
        self._lead = -1
        self._budget = MATCH_BUDGET + len(text) * MATCH_BUDGET_PER_CHAR

    @property
    def word(self) -> str:
        return self.words[0] if self.words else ""

    @property
    def backwards(self) -> str:
        """`core` read from its end (the pre-check's tails of varying width match there), made once per
        message however many formats look."""
        if self._backwards is None:
            self._backwards = self.core[::-1]
        return self._backwards

    @property
    def span(self) -> tuple[int, int]:
        """Where `core` lies in `stream` (the pre-check's anchored ends look there)."""
        if self._lead < 0:
            self._lead = len(self.stream) - len(self.stream.lstrip())
        return self._lead, self._lead + len(self.core)

    def time_left(self) -> float:
        """Seconds of matching this message has left: its budget less the CPU time the matching thread
        has spent since the message's first regex run (one clock reading a run, not two), less what
        it spent collecting garbage meanwhile."""
        now = time.thread_time()
        if self._started < 0:
            self._started = now
            self._collected = _COLLECTING.spent
        return self._budget - (now - self._started) + (_COLLECTING.spent - self._collected)

    def not_counting(self, since: float) -> None:
        """Leave the CPU time since `since` (a `time.thread_time()` reading) out of the budget: a format's
        pre-check or bounded regex made while this message is matched (the first also imports `regex`,
        20-30 ms). That is the format's cost, paid once, not the message's: counted, the first command
        that needed `regex` on a busy machine was refused as too complex."""
        if self._started >= 0:
            self._budget += time.thread_time() - since


class _Scanner:
    """Token boundaries of one message: quoted values, balanced brackets, bare words."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._closes: dict[str, list[int]] = {}
        self._brackets: dict[int, int] | None = None

    def _close_quote(self, quote: str, after: int) -> int | None:
        positions = self._closes.get(quote)
        if positions is None:
            positions = self._closes[quote] = [m.start() for m in _CLOSING[quote].finditer(self.text)]
        index = bisect.bisect_left(positions, after)
        return positions[index] if index < len(positions) else None

    def _close_bracket(self, at: int) -> int | None:
        if self._brackets is None:
            # One pass: each opening bracket's matching close; JSON strings inside brackets are skipped.
            matches: dict[int, int] = {}
            stack: list[tuple[str, int]] = []
            in_string = False
            skip = -1
            for m in _BRACKETS.finditer(self.text):
                pos, char = m.start(), m.group()
                if pos == skip:
                    continue
                if in_string:
                    if char == "\\":
                        skip = pos + 1
                    elif char == '"':
                        in_string = False
                elif char == '"':
                    in_string = bool(stack)
                elif char in "{[":
                    stack.append((char, pos))
                elif char in "}]" and stack and stack[-1][0] == _PAIRS_OF[char]:
                    matches[stack.pop()[1]] = pos
            self._brackets = matches
        return self._brackets.get(at)

    def value_end(self, start: int) -> tuple[int, str | None]:
        """Where the value starting at `start` ends, and its text when it is a usable pair value."""
        text = self.text
        if start >= len(text) or text[start].isspace():
            return start, None
        char = text[start]
        if char in "\"'":
            close = self._close_quote(char, start + 1)
            if close is not None:
                return close + 1, text[start + 1:close]
        elif char in "{[":
            close = self._close_bracket(start)
            if close is not None and (close + 1 == len(text) or text[close + 1].isspace()):
                return close + 1, text[start:close + 1]
        end = _NONSPACE.match(text, start).end()
        return end, text[start:end]

    def tokens(self) -> Iterator[tuple[int, int, str | None, str | None]]:
        """(start, end, key, value) of each token; key is None for tokens that are not pairs."""
        text = self.text
        pos = _SPACE.match(text).end()
        while pos < len(text):
            key_match = _KEY.match(text, pos)
            if key_match:
                end, value = self.value_end(key_match.end())
                if value is not None:
                    yield pos, end, key_match.group()[:-1], value
                else:  # `key=` followed by a space: a plain word
                    yield pos, end, None, None
            else:
                end, _ = self.value_end(pos)
                yield pos, end, None, None
            pos = _SPACE.match(text, end).end()


def _could_end_with_pair(text: str) -> bool:
    """Cheap test: a trailing pair ends in a token holding `=`, or in a closing quote or bracket."""
    parts = text.rsplit(None, 1)
    if not parts:
        return False
    last = parts[-1]
    return "=" in last or last[-1] in "\"'}]"


_PLAIN_PAIR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.")
_GROUPING = re.compile(r"[\"'{}\[\]]")


def _split_simple(text: str) -> tuple[str, dict[str, str]] | None:
    """`split_pairs` when the words at the end hold no quote or bracket (None: use the tokenizer).

    A quoted value or a bracket blob ends in a word holding its closing quote or bracket, so when
    neither the trailing pairs nor the word before them hold one, whitespace-separated words are
    exactly the tokenizer's tokens there.
    """
    parts = text.split()
    i = len(parts)
    while i and _PLAIN_PAIR.match(parts[i - 1]) and not _GROUPING.search(parts[i - 1]):
        i -= 1
    if i and _GROUPING.search(parts[i - 1]):
        return None
    if i == len(parts):
        return text, {}
    stream = text.rstrip()
    for token in reversed(parts[i:]):
        stream = stream[:-len(token)].rstrip()
    pairs: dict[str, str] = {}
    for token in parts[i:]:
        key, _, value = token.partition("=")
        pairs[key] = value
    return stream, pairs


def split_pairs(text: str) -> tuple[str, dict[str, str]]:
    """The message without its trailing run of `key=value` pairs, and those pairs (deviations 1-4)."""
    if "=" not in text:
        return text, {}
    if len(text) < 512:
        simple = _split_simple(text)
        if simple is not None:
            return simple
    elif not _could_end_with_pair(text):
        return text, {}
    tokens = list(_Scanner(text).tokens())
    first = len(tokens)
    while first > 0 and tokens[first - 1][2] is not None:
        first -= 1
    if first == len(tokens):
        return text, {}
    pairs = {key: value for _, _, key, value in tokens[first:] if key is not None and value is not None}
    return text[:tokens[first][0]].rstrip(), pairs


def prepare(message: str) -> Prepared:
    """Normalise one message and split off its trailing pairs; done once per message."""
    text = normalise(message or "")
    stream, pairs = split_pairs(text)
    return Prepared(text=text, stream=f" {stream} ", pairs=pairs)


# -- the format ----------------------------------------------------------------------------------

#: One `{{ name[:kind] [= default] }}` of a format, with the whitespace before it (chat help masks defaults with it).
PLACEHOLDER = re.compile(
    r"""(?P<ws>\s*)\{\{\s*(?P<name>[^\s=:{}]+?)(?::(?P<kind>[A-Za-z%]+))?\s*"""
    r"""(?:=\s*(?:(?P<empty>""|'')|"(?P<dq>.+?)"|'(?P<sq>.+?)'|(?P<brace>\{.+?\})|(?P<bare>.+?))\s*)?\}\}""",
    re.DOTALL,
)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_GLOBAL_FLAGS = re.compile(r"\(\?[aiLmsux]+\)")
#: The group holding a value's opening quote (deviation 10); never a parameter.
_QUOTE = "squall_quote_"
_VALUE = (r"""(?P<squall_quote_{name}>["'])?(?P<{name}>(?:(?<=').+?(?=')|(?<=").+?(?=")|\{{.+?\}}|.+?))"""
          r"""(?(squall_quote_{name})["']?)""")
TYPES = "dnfeg%xobwWlS"


@functools.cache
def _type_parser(kind: str) -> tuple[str, parse_lib.Parser]:
    parser = parse_lib.compile("{:" + kind + "}")
    expression = getattr(parser, "_expression", r"\S+")
    # parse's own groups are capturing; keep our group numbering to the placeholders.
    return re.sub(r"(?<!\\)\((?!\?)", "(?:", expression), parser


def _convert(kind: str, text: str) -> Any:
    result = _type_parser(kind)[1].parse(text)
    if result is None:
        raise ValueError(text)
    return result.fixed[0]


def _convert_matched(kind: str, text: str) -> Any:
    """`_convert` for text that already matched the type's pattern: the common cases without `parse`."""
    if kind in "wWlS":
        return text
    if kind == "d" and text.lstrip(" +-").isdigit():
        return int(text)
    if kind in "feg":
        try:
            return float(text)
        except ValueError:
            pass
    return _convert(kind, text)


@dataclass(frozen=True)
class Placeholder:
    name: str
    default: str | None
    kind: str | None = None
    ws: str = ""

    @property
    def optional(self) -> bool:
        return self.default is not None


def _placeholder_regex(p: Placeholder, optional: bool) -> str:
    body = f"(?P<{p.name}>{_type_parser(p.kind)[0]})" if p.kind else _VALUE.format(name=p.name)
    return f"(?:{p.ws}{body})?" if optional else p.ws + body


_AT_BEGIN = {sre.AT_BEGINNING, sre.AT_BEGINNING_STRING}
_AT_END = {sre.AT_END, sre.AT_END_STRING}
_REPEATS = {sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT}


def _has_anchor(ops: Any, wanted: set[Any]) -> bool:
    for op, av in ops:
        if op is sre.AT and av in wanted:
            return True
        if op is sre.SUBPATTERN and _has_anchor(av[3], wanted):
            return True
        if op is sre.BRANCH and any(_has_anchor(alt, wanted) for alt in av[1]):
            return True
    return False


def _is_space_op(op: Any, av: Any) -> bool:
    if op is sre.LITERAL:
        return chr(av).isspace()
    if op is sre.IN:
        return bool(av) and all(
            (o is sre.CATEGORY and a is sre.CATEGORY_SPACE) or (o is sre.LITERAL and chr(a).isspace())
            for o, a in av)
    return False


def _forces_boundary(ops: list[Any], tail_anchored: bool) -> bool:
    """Whether every match of `ops` starts with whitespace or ends the message."""
    if not ops:
        return tail_anchored
    op, av = ops[0]
    rest = ops[1:]
    if _is_space_op(op, av):
        return True
    if op is sre.AT:
        return av in _AT_END
    if op is sre.SUBPATTERN:
        if av[1] & (re.IGNORECASE | re.MULTILINE):
            return False
        return _forces_boundary(list(av[3]) + rest, tail_anchored)
    if op is sre.ATOMIC_GROUP:
        return _forces_boundary(list(av) + rest, tail_anchored)
    if op is sre.BRANCH:
        return all(_forces_boundary(list(alt) + rest, tail_anchored) for alt in av[1])
    if op in _REPEATS:
        low, _, sub = av
        if not _forces_boundary(list(sub) + rest, tail_anchored):
            return False
        return low >= 1 or _forces_boundary(rest, tail_anchored)
    return False


_MAX_WORDS = 32


def _leading(ops: list[Any], prefix: str, anchored: bool, tail_anchored: bool) -> set[str] | None:
    """The possible first whitespace-delimited words of any match, or None when they are not fixed."""
    i = 0
    while i < len(ops):
        op, av = ops[i]
        if op is sre.LITERAL and not chr(av).isspace():
            if not anchored:
                return None
            prefix += chr(av)
            i += 1
            continue
        if not prefix:
            if op is sre.AT and av in _AT_BEGIN:
                anchored = True
                i += 1
                continue
            if _is_space_op(op, av) or (op in _REPEATS and all(_is_space_op(o, a) for o, a in av[2])):
                i += 1
                continue
        if op is sre.SUBPATTERN:
            if av[1] & (re.IGNORECASE | re.MULTILINE):
                return None
            return _leading(list(av[3]) + ops[i + 1:], prefix, anchored, tail_anchored)
        if op is sre.BRANCH:
            words: set[str] = set()
            for alt in av[1]:
                found = _leading(list(alt) + ops[i + 1:], prefix, anchored, tail_anchored)
                if found is None:
                    return None
                words |= found
                if len(words) > _MAX_WORDS:
                    return None
            return words
        break
    if not prefix or not _forces_boundary(ops[i:], tail_anchored):
        return None
    return {prefix}


def _literal_count(ops: Any, skip: set[int]) -> int:
    """Non-space literal characters every match must contain, outside placeholder groups."""
    total = 0
    for op, av in ops:
        if op is sre.LITERAL:
            total += not chr(av).isspace()
        elif op is sre.SUBPATTERN:
            if av[0] not in skip:
                total += _literal_count(av[3], skip)
        elif op is sre.ATOMIC_GROUP:
            total += _literal_count(av, skip)
        elif op is sre.BRANCH:
            total += min(_literal_count(alt, skip) for alt in av[1])
        elif op in _REPEATS:
            total += min(av[0], 8) * _literal_count(av[2], skip)
    return total


def _literal_runs(ops: Any) -> list[str]:
    """Runs of literal text at the top level of the format, in order (each must appear in a match)."""
    runs: list[str] = []
    current: list[str] = []
    for op, av in ops:
        if op is sre.LITERAL:
            current.append(chr(av))
            continue
        if current:
            runs.append("".join(current))
            current = []
        runs.append("")  # something else stands between two runs
    if current:
        runs.append("".join(current))
    return runs


def _prefix_path(ops: list[Any], anchors: tuple[bool, bool]) -> tuple[str, ...]:
    """The whole words every match starts with, from the literal text at the start of the format."""
    anchored = anchors[0]
    i = 0
    while i < len(ops):
        op, av = ops[i]
        if op is sre.AT and av in _AT_BEGIN:
            anchored = True
        elif not (_is_space_op(op, av) or (op in _REPEATS and all(_is_space_op(o, a) for o, a in av[2]))):
            break
        i += 1
    if not anchored:
        return ()
    j = i
    while j < len(ops) and ops[j][0] is sre.LITERAL:
        j += 1
    run = "".join(chr(av) for _, av in ops[i:j])
    words = run.split()
    if words and not run[-1].isspace() and not _forces_boundary(ops[j:], anchors[1]):
        words.pop()  # the last word may run on into what follows (`deploy-{{app}}`)
    return tuple(words)


_INNER_WORD = re.compile(r"(?<=\s)\S+(?=\s)")


def _required_token(ops: list[Any]) -> str | None:
    """A whole word every match contains (whitespace on both sides inside the format's literal text)."""
    words = [w for run in _literal_runs(ops) for w in _INNER_WORD.findall(run)]
    return max(words, key=len) if words else None


# -- the bounded engine and its pre-check (deviation 12) -------------------------------------------

_CATEGORIES = {sre.CATEGORY_DIGIT: r"\d", sre.CATEGORY_NOT_DIGIT: r"\D", sre.CATEGORY_SPACE: r"\s",
               sre.CATEGORY_NOT_SPACE: r"\S", sre.CATEGORY_WORD: r"\w", sre.CATEGORY_NOT_WORD: r"\W"}
_ZERO_WIDTH = {sre.AT, sre.ASSERT, sre.ASSERT_NOT}
#: What a character class means depends on these flags only.
_CLASS_FLAGS = re.IGNORECASE | re.ASCII


@functools.cache
def _engine() -> Any:
    import regex  # with the first message, not at start: `squall serve` need not pay its import first

    return regex


def _compile(pattern: str, flags: int) -> Any:
    """`regex.compile` of an `re` pattern (`_as_re_reads_it`) with `re`'s `flags` (IGNORECASE, ASCII,
    DOTALL: `regex` numbers ASCII otherwise, and `re.ASCII`'s number is its VERSION1), kept out of
    `regex`'s own cache: each pattern is kept where it is used, and that cache, when full, drops
    entries chosen with the global `random` (a seeded caller's numbers)."""
    engine = _engine()
    own = sum(getattr(engine, name) for name in ("IGNORECASE", "ASCII", "DOTALL") if flags & getattr(re, name))
    verbose = bool(re.compile(pattern).flags & re.VERBOSE)
    return engine.compile(_as_re_reads_it(pattern, verbose), own, cache_pattern=False)


#: A brace `re` takes as a repeat: `{m}`, `{m,}`, `{m,n}`, `{,n}`, `{,}`.
_REPEAT = re.compile(r"\{(\d*),?(\d*)\}")


def _as_re_reads_it(pattern: str, verbose: bool = False) -> str:
    """`pattern` (valid for `re`) spelled so `regex` reads it as `re` does. Two spellings differ:
    a `{` that does not open a repeat is a literal to `re` and a fuzzy constraint (`a{e}`) or an
    error (`{d`) to `regex`; a `[` inside a class is a literal to `re` and opens a POSIX class
    (`[[:alpha:]]`) to `regex`. Both are escaped; repeats are written with their lower bound.
    `verbose` (a format starting `(?x)`): a `#` outside a class comments out the rest of its line."""
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        c = pattern[i]
        if c == "\\":
            end = pattern.index("}", i) + 1 if pattern.startswith("N{", i + 1) else i + 2
            out.append(pattern[i:end])
            i = end
            continue
        if in_class:
            if c == "]":
                in_class = False
            out.append("\\[" if c == "[" else c)
            i += 1
            continue
        if c == "[":
            # `]` right after `[` or `[^` is a member, not the end (as in `re`).
            start = i + 2 if pattern.startswith("^", i + 1) else i + 1
            first = start + 1 if pattern.startswith("]", start) else start
            out.append(pattern[i:first].replace("]", "\\]") if first > start else pattern[i:first])
            in_class, i = True, first
            continue
        if c == "#" and verbose:
            end = pattern.find("\n", i)
            end = n if end < 0 else end
            out.append(pattern[i:end])
            i = end
            continue
        if c == "{":
            repeat = _REPEAT.match(pattern, i)
            if repeat is not None and (repeat[1] or "," in repeat[0]):
                low, high = repeat[1] or "0", repeat[2]
                out.append("{" + low + ("," + high if "," in repeat[0] else "") + "}")
                i = repeat.end()
                continue
            out.append("\\{")
            i += 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


@functools.cache
def _spaces() -> str:
    r"""Every character `str.strip` strips (what `Prepared.core` leaves out); `\s` matches no other."""
    return "".join(c for c in map(chr, range(0x3001)) if c.isspace())


def _char(code: int) -> str:
    return f"\\U{code:08x}"


def _one_char(op: Any, av: Any) -> str | None:
    """The pattern of an item that matches exactly one character, or None for any other item."""
    if op is sre.LITERAL:
        return _char(av)
    if op is sre.NOT_LITERAL:
        return f"[^{_char(av)}]"
    if op is not sre.IN:
        return None
    parts = []
    for o, a in av:
        if o is sre.NEGATE:
            parts.append("^")
        elif o is sre.LITERAL:
            parts.append(_char(a))
        elif o is sre.RANGE:
            parts.append(f"{_char(a[0])}-{_char(a[1])}")
        elif o is sre.CATEGORY and a in _CATEGORIES:
            parts.append(_CATEGORIES[a])
        else:
            return None
    return "[" + "".join(parts) + "]"


def _edge(ops: Any, last: bool) -> tuple[list[str] | None, bool]:
    """Patterns one of which the first (`last`: the last) character of every non-empty match of the
    sequence `ops` fits, or None when that is not known; and whether `ops` may match nothing."""
    found: list[str] = []
    for op, av in (reversed(ops) if last else ops):
        patterns, empty = _edge_item(op, av, last)
        if patterns is None:
            return None, False
        found += patterns
        if not empty:
            return found, False
    return found, True


def _edge_item(op: Any, av: Any, last: bool) -> tuple[list[str] | None, bool]:
    one = _one_char(op, av)
    if one is not None:
        return [one], False
    if op in _ZERO_WIDTH:
        return [], True
    if op is sre.SUBPATTERN:
        return (None, False) if av[1] or av[2] else _edge(av[3], last)  # a group's own flags: not followed
    if op is sre.ATOMIC_GROUP:
        return _edge(av, last)
    if op is sre.BRANCH or op is sre.GROUPREF_EXISTS:
        found: list[str] = []
        empty = False
        for alternative in (av[1] if op is sre.BRANCH else (av[1], av[2] or [])):
            patterns, may_be_empty = _edge(alternative, last)
            if patterns is None:
                return None, False
            found += patterns
            empty = empty or may_be_empty
        return found, empty
    if op in _REPEATS:
        low, high, sub = av
        if high == 0:
            return [], True
        patterns, empty = _edge(sub, last)
        return patterns, empty or low == 0
    return None, False  # `.` (any character), a backreference


def _only_spaces(op: Any, av: Any) -> bool:
    return _is_space_op(op, av) or (op in _REPEATS and all(_is_space_op(o, a) for o, a in av[2]))


def _flat(items: Any, last: bool) -> Iterator[tuple[Any, Any]]:
    """`items` in their order, a group's own items in its place, read from its end when `last`: a
    group adds nothing to what its sequence matches (one with flags of its own is kept whole)."""
    for op, av in items:
        if op is sre.SUBPATTERN and not av[1] and not av[2]:
            yield from _flat(list(av[3])[::-1] if last else av[3], last)
        else:
            yield op, av


def _one_char_repeat(op: Any, av: Any) -> str | None:
    """`C{m,n}` for a repeat of one character class at least once (a typed placeholder's `\\w+`)."""
    if op not in _REPEATS or av[0] < 1 or len(av[2]) != 1:
        return None
    one = _one_char(*av[2][0])
    if one is None:
        return None
    return f"{one}{{{av[0]},}}" if av[1] == sre.MAXREPEAT else f"{one}{{{av[0]},{av[1]}}}"


def _chain(ops: list[Any], last: bool) -> list[str]:
    """Patterns of what every match has at the stripped message's start (`last`: end), edge first,
    when the regex is anchored there: the anchor, spaces, then items one character wide and at most
    one repeat of one character class (so `as {{user:w}}` at the end asks for ` as ` before the last
    word), and the first (last) character of the item after them when it cannot match nothing."""
    items = ops[::-1] if last else ops
    if not items or items[0][0] is not sre.AT or items[0][1] not in (_AT_END if last else _AT_BEGIN):
        return []
    i = 1
    while i < len(items) and (items[i][0] in _ZERO_WIDTH or _only_spaces(*items[i])):
        i += 1
    chain: list[str] = []
    repeated = False
    for op, av in _flat(items[i:], last):
        if op in _ZERO_WIDTH:
            continue
        one = _one_char(op, av)
        if one is None and not repeated:
            one = _one_char_repeat(op, av)
            repeated = one is not None
        if one is not None:
            chain.append(one)
            continue
        patterns, empty = _edge_item(op, av, last)
        if patterns and not empty:
            chain.append(f"(?:{'|'.join(patterns)})")
        break
    return chain


def _edge_check(chain: list[str], flags: int, last: bool) -> str | Any | None:
    """The text (or engine pattern) `chain` makes, in message order; None when there is none or its
    edge character may be a space, which the stripped message would not show."""
    if not chain:
        return None
    # The edge's one character, of a repeat (`_one_char_repeat`'s `C{m,n}`) too: past its first, a
    # repeat's characters may be spaces the stripped message does not show either.
    edge = _compile(chain[0][:chain[0].rindex("{")] if chain[0].endswith("}") else chain[0], flags)
    if any(edge.fullmatch(c) for c in _spaces()):
        return None
    ordered = chain[::-1] if last else chain
    if not flags & re.IGNORECASE and all(p.startswith("\\U") and len(p) == 10 for p in ordered):  # `_char`s
        return "".join(chr(int(p[2:], 16)) for p in ordered)
    return _compile("".join(ordered), flags)


@dataclass(frozen=True)
class _Check:
    """A necessary condition for a regex to match, cheap to test (linear in the message): its
    top-level literal text in order, and what the stripped message starts and ends with."""

    runs: tuple[str | Any, ...] = ()
    head: str | Any | None = None
    tail: str | Any | None = None
    tail_width: int = 0

    def possible(self, prepared: Prepared) -> bool:
        stream = prepared.stream
        if self.head is not None or self.tail is not None:
            # The anchored ends' characters: past the first (before the last) they may be spaces too.
            start, end = prepared.span
            if isinstance(self.head, str):
                if not stream.startswith(self.head, start):
                    return False
            elif self.head is not None and self.head.match(stream, start) is None:
                return False
            if isinstance(self.tail, str):
                if not stream.endswith(self.tail, 0, end):
                    return False
            elif self.tail_width < 0:
                if self.tail.match(prepared.backwards) is None:
                    return False
            elif self.tail is not None and (end < self.tail_width
                                            or self.tail.fullmatch(stream, end - self.tail_width, end) is None):
                return False
        pos = 0
        for run in self.runs:
            if isinstance(run, str):
                found = stream.find(run, pos)
                if found < 0:
                    return False
                pos = found + len(run)
            else:
                hit = run.search(stream, pos)
                if hit is None:
                    return False
                pos = hit.end()
        return True


def _build_check(pattern: re.Pattern[str]) -> _Check:
    """The pre-check of one compiled format regex, from its parsed form."""
    tree = sre_parse.parse(pattern.pattern, re.DOTALL)
    ops = list(tree)
    flags = tree.state.flags & _CLASS_FLAGS
    runs = tuple(run if not flags & re.IGNORECASE else _compile(_engine().escape(run), flags)
                 for run in _literal_runs(ops) if run)
    if tree.state.flags & re.MULTILINE:  # `^` and `$` hold at every line
        return _Check(runs)
    tail_chain = _chain(ops, True)
    tail = _edge_check(tail_chain, flags, True)
    if tail is not None and any(p.endswith("}") for p in tail_chain):  # `_one_char_repeat`'s `C{m,n}`
        # Of varying width: matched from the end of the message read backwards (edge first), which
        # the chain's order already is; a one-character pattern reads the same either way.
        return _Check(runs, _edge_check(_chain(ops, False), flags, False), _compile("".join(tail_chain), flags), -1)
    return _Check(runs, _edge_check(_chain(ops, False), flags, False), tail, len(tail_chain))


#: From this length of message on, the pre-check runs before the regex: it costs more than the regex
#: saves on short messages, and over those no regex runs for long (three placeholders in a row over
#: 127 characters take a few milliseconds).
CHECKED_FROM = 128


#: A format whose regex has at most this many free-length parts (`_free_parts`) runs on `re` for
#: messages shorter than `CHECKED_FROM`: over those its worst case is a few milliseconds (two
#: placeholders in a row, a message of quotes: 2.5 ms), still counted in the message's budget, and
#: `re` is several times faster than `regex` on the short messages chat is made of.
FAST_PARTS = 2
_ONE_CHAR = {sre.LITERAL, sre.NOT_LITERAL, sre.ANY, sre.IN, sre.CATEGORY}
_REPEATS = {sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT}
_UNBOUNDED = 1_000  # backtracking that may grow exponentially: never on `re`


def _free_parts(ops: Any) -> int:
    """How many parts of `ops` may take any of many lengths: the exponent of the message length in
    the time backtracking may take. A repeat of one character counts 1; a repeat of anything longer
    (`(a|aa)+`, `(?:x.+)*`) may split a message in exponentially many ways, as may a lookaround with
    a free part (tried at every position): those count `_UNBOUNDED`."""
    total = 0
    for op, av in ops:
        if op in _REPEATS:
            _low, high, body = av
            if high <= 1:
                total += _free_parts(body)
            elif len(body) == 1 and body[0][0] in _ONE_CHAR:
                total += 1
            else:
                total += _UNBOUNDED
        elif op is sre.SUBPATTERN:
            total += _free_parts(av[3])
        elif op is sre.ATOMIC_GROUP:
            total += _free_parts(av)
        elif op is sre.BRANCH:
            total += max(_free_parts(alternative) for alternative in av[1])
        elif op is sre.GROUPREF_EXISTS:
            total += max(_free_parts(av[1]), _free_parts(av[2]) if av[2] is not None else 0)
        elif op in (sre.ASSERT, sre.ASSERT_NOT):
            total += _UNBOUNDED if _free_parts(av[1]) else 0
    return total


def _runs_on_re(pattern: re.Pattern[str]) -> bool:
    """Whether short messages may be matched with `re` (`FAST_PARTS`). The `\\s*` around the format
    (`_compile_pieces`) do not count: the message has one space at each end. A search not anchored at
    the start tries every start: one free part more."""
    tree = sre_parse.parse(pattern.pattern, re.DOTALL)
    ops = list(tree)
    parts = _free_parts(ops)
    anchored = (bool(ops) and ops[0] == (sre.AT, sre.AT_BEGINNING) and not tree.state.flags & re.MULTILINE)
    if anchored and len(ops) >= 2 and ops[1][0] in _REPEATS and list(ops[1][1][2]) == _WHITESPACE:
        parts -= 1
    if ops and ops[-1] == (sre.AT, sre.AT_END) and len(ops) >= 2 and ops[-2][0] in _REPEATS \
            and list(ops[-2][1][2]) == _WHITESPACE:
        parts -= 1
    return parts + (0 if anchored else 1) <= FAST_PARTS


_WHITESPACE = sre_parse.parse(r"\s").data


class _Variant:
    """One regex of a format: `re`'s (the analysed one), the bounded engine's and its pre-check, the
    last two made when first used. A format has its own regex and one for each set of required
    placeholders that trailing pairs supply (deviation 6)."""

    __slots__ = ("_check", "_engine", "_fast", "pattern")

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self._engine: Any = None
        self._check: _Check | None = None
        self._fast: bool | None = None

    def _checked(self, prepared: Prepared) -> _Check:
        if self._check is None:
            since = time.thread_time()
            self._check = _build_check(self.pattern)
            prepared.not_counting(since)
        return self._check

    def _compiled(self, prepared: Prepared) -> Any:
        if self._engine is None:
            since = time.thread_time()
            self._engine = _compile(self.pattern.pattern, re.DOTALL)
            prepared.not_counting(since)
        return self._engine

    def search(self, prepared: Prepared, fmt: str) -> Any:
        """The first fit in the message, within what is left of the message's budget; None when the
        pre-check or the regex says there is none; `MessageTooComplex` when the budget runs out."""
        stream = prepared.stream
        if len(stream) >= CHECKED_FROM:
            if not self._checked(prepared).possible(prepared):
                return None
        elif self._fast is None:
            self._fast = _runs_on_re(self.pattern)
        engine = None if self._fast and len(stream) < CHECKED_FROM else self._compiled(prepared)
        left = prepared.time_left()
        if left <= 0:
            raise MessageTooComplex(fmt, prepared.text)
        if engine is None:
            return self.pattern.search(stream)
        try:
            # Positional (the cheaper call); `concurrent` False: the GIL is kept, so that the timeout,
            # which `regex` counts on the wall clock, is not spent by other threads meanwhile.
            return engine.search(stream, 0, None, False, False, left)
        except TimeoutError:
            raise MessageTooComplex(fmt, prepared.text) from None

    def finditer(self, prepared: Prepared, fmt: str) -> Iterator[Any]:
        """`finditer` within the message's budget. `regex` times each step of an iteration alone, so
        after each non-empty fit the search starts afresh where it ended, as `finditer` goes on."""
        if len(prepared.stream) >= CHECKED_FROM and not self._checked(prepared).possible(prepared):
            return
        pos = 0
        while True:
            fits = self._fits(prepared, fmt, pos)
            for found in fits:
                yield found
                if found.end() > found.start():
                    pos = found.end()
                    break
            else:
                return

    def _fits(self, prepared: Prepared, fmt: str, pos: int) -> Iterator[Any]:
        """One `finditer` from `pos`: each of its steps may take what was left of the budget when it
        began, and none starts past the budget (a second step follows only an empty fit)."""
        fits = None
        engine = self._compiled(prepared)
        while True:
            left = prepared.time_left()
            if left <= 0:
                raise MessageTooComplex(fmt, prepared.text)
            if fits is None:
                fits = engine.finditer(prepared.stream, pos, concurrent=False, timeout=left)
            try:
                found = next(fits, None)
            except TimeoutError:
                raise MessageTooComplex(fmt, prepared.text) from None
            if found is None:
                return
            yield found


@dataclass
class CompiledFormat:
    """One representation compiled: its regex, placeholders, specificity and index words."""

    format: str
    regex: re.Pattern[str]
    placeholders: dict[str, Placeholder]
    literal_count: int
    placeholder_count: int
    leading_words: frozenset[str] | None
    index_paths: frozenset[tuple[str, ...]] | None = None
    required_token: str | None = None
    _pieces: list[str | Placeholder] = field(repr=False, default_factory=list)
    _flags: str = field(repr=False, default="")
    _anchors: tuple[bool, bool] = field(repr=False, default=(True, True))
    #: The format's own regex (under the empty set) and one per set of placeholders pairs supply.
    _variants: dict[frozenset[str], _Variant] = field(repr=False, default_factory=dict)
    _defaults: tuple[tuple[str, Any], ...] = field(repr=False, default=())
    #: The placeholders with a default (`{{ name = default }}`), for `AliasMatch.authored`.
    defaulted: frozenset[str] = field(repr=False, default=frozenset())
    _typed: tuple[tuple[str, str], ...] = field(repr=False, default=())
    _slots: tuple[tuple[str, int], ...] = field(repr=False, default=())
    score: tuple[int, int] = (0, 0)  # specificity: more literal characters first, then fewer placeholders

    def __post_init__(self) -> None:
        self.score = (self.literal_count, -self.placeholder_count)
        self._defaults = tuple((p.name, _convert(p.kind, p.default) if p.kind and p.default else p.default)
                               for p in self.placeholders.values() if p.default is not None)
        self.defaulted = frozenset(name for name, _default in self._defaults)
        self._typed = tuple((p.name, p.kind) for p in self.placeholders.values() if p.kind)
        # Where each parameter sits in `Match.groups()` (the relaxed variants number groups the same).
        self._slots = tuple((name, number - 1) for name, number in self.regex.groupindex.items()
                            if not name.startswith(_QUOTE))
        self._variants[frozenset()] = _Variant(self.regex)

    def _variant(self, names: frozenset[str]) -> _Variant:
        variant = self._variants.get(names)
        if variant is None:
            variant = _Variant(_compile_pieces(self._pieces, self._flags, self._anchors, names))
            self._variants[names] = variant
        return variant

    def _relaxed_regex(self, names: frozenset[str]) -> re.Pattern[str]:
        """The regex where the placeholders `names` (supplied as trailing pairs) are optional."""
        return self._variant(names).pattern

    def _values(self, found: Any, prepared: Prepared) -> dict[str, Any] | None:
        groups = found.groups()
        result: dict[str, Any] = {name: groups[i] for name, i in self._slots if groups[i] is not None}
        emptied = _unpadded(found, result, self._slots, prepared.stream)
        for name, default in self._defaults:
            if result.get(name) in (None, ""):
                result[name] = default
        for name in emptied:
            result[name] = ""
        for name, kind in self._typed:
            value = result.get(name)
            if isinstance(value, str) and value:
                try:
                    result[name] = _convert_matched(kind, value)
                except ValueError:
                    return None
        for key, value in prepared.pairs.items():
            p = self.placeholders.get(key)
            if p is not None and p.kind:
                try:
                    value = _convert(p.kind, value)
                except ValueError:
                    return None
            result[key] = value
        if self.format and not prepared.core and not any(v is not None and v != "" for v in result.values()):
            return None
        return result

    def extract(self, prepared: Prepared) -> dict[str, Any] | None:
        """The parameters when the prepared message fits this format, else None; `MessageTooComplex`
        when the message's matching budget runs out (deviation 12)."""
        found = self._variants[frozenset()].search(prepared, self.format)
        if found is None:
            supplied = frozenset(n for n in prepared.pairs if n in self.placeholders
                                 and self.placeholders[n].default is None)
            if not supplied:
                return None
            found = self._variant(supplied).search(prepared, self.format)
            if found is None:
                return None
        return self._values(found, prepared)

    def extract_all(self, prepared: Prepared) -> list[dict[str, Any]]:
        """Every non-overlapping fit in the message (for `match_multiple` formats); `MessageTooComplex`
        as `extract`."""
        results = []
        for found in self._variants[frozenset()].finditer(prepared, self.format):
            values = self._values(found, prepared)
            if values is not None:
                results.append(values)
        return results

    def why_not(self, prepared: Prepared) -> str:
        """The reason the prepared message does not fit (for errors)."""
        shown = _shorten(prepared.text)
        for key, value in prepared.pairs.items():
            p = self.placeholders.get(key)
            if p is not None and p.kind:
                try:
                    _convert(p.kind, value)
                except ValueError:
                    return (f'Command "{shown}": parameter "{key}" = {value!r} is not of type "{p.kind}" '
                            f'in format string "{self.format}"')
        if (self.format and not prepared.core
                and self._variants[frozenset()].search(prepared, self.format) is not None):
            return (f'Command "{shown}" supplies no value for format string "{self.format}" and it has no '
                    "defaults: No value supplied and no default value found.")
        return f'Command "{shown}" doesn\'t match format string "{self.format}"'


def _unpadded(found: Any, result: dict[str, Any], slots: tuple[tuple[str, int], ...], stream: str) -> list[str]:
    """Deviation 13: take out of `result` each value that is only the whitespace ending `stream` (its
    padding, and any the message ended with), which the person did not write as a value. Returns the
    names of those the format writes right after text (`level={{level}}`, the stream's character before
    the value not a space): they are the empty string (the caller sets it after the defaults, which an
    empty value would otherwise take). Those after a space are left out: nothing was given for them."""
    end = None
    emptied = []
    for name, i in slots:
        value = result.get(name)
        if value.__class__ is not str or not (value == "" or value.isspace()):
            continue
        if end is None:
            end = len(stream.rstrip())
        start = found.start(i + 1)
        if start < end:
            continue  # whitespace the person wrote inside the message (`say " "`): a value as typed
        del result[name]
        if start > 0 and not stream[start - 1].isspace():
            emptied.append(name)
    return emptied


def _compile_pieces(pieces: list[str | Placeholder], flags: str, anchors: tuple[bool, bool],
                    optional: frozenset[str] = frozenset()) -> re.Pattern[str]:
    body = "".join(p if isinstance(p, str) else _placeholder_regex(p, p.optional or p.name in optional)
                   for p in pieces)
    begin, end = anchors
    return re.compile(flags + (r"^\s*" if begin else "") + f"(?:{body})" + (r"\s*$" if end else ""), re.DOTALL)


def _fail(fmt: str, reason: str) -> AliasFormatError:
    return AliasFormatError(f'Format string "{fmt}" is not valid: {reason}', format=fmt)


@functools.lru_cache(maxsize=8192)
def compile_format(fmt: str) -> CompiledFormat:  # noqa: C901 (one branch per token kind of StackStorm's format grammar)
    """Compile one representation (cached); raises `AliasFormatError` naming it when it is unusable."""
    if not isinstance(fmt, str):
        raise AliasFormatError(f"a format string must be text, not {type(fmt).__name__}")
    text = normalise(fmt)
    flags = ""
    lead = _GLOBAL_FLAGS.match(text)
    if lead:
        flags, text = lead.group(), text[lead.end():]
    pieces: list[str | Placeholder] = []
    placeholders: dict[str, Placeholder] = {}
    pos = 0
    for m in PLACEHOLDER.finditer(text):
        name, kind = m.group("name"), m.group("kind")
        if not _IDENTIFIER.match(name):
            raise _fail(fmt, f"placeholder name '{name}' must be an identifier (letters, digits, '_')")
        if name in placeholders:
            raise _fail(fmt, f"placeholder '{name}' appears twice")
        if kind is not None and kind not in TYPES:
            raise _fail(fmt, f"placeholder '{name}' has unknown type '{kind}'; use one of {', '.join(TYPES)}")
        default: str | None = None
        if m.group("empty") is not None:
            default = ""
        else:
            for group in ("dq", "sq", "brace", "bare"):
                if m.group(group) is not None:
                    default = m.group(group)
                    break
        if kind and default:
            try:
                _convert(kind, default)
            except ValueError:
                raise _fail(fmt, f"default {default!r} of placeholder '{name}' is not of type '{kind}'") from None
        placeholder = Placeholder(name, default, kind, m.group("ws"))
        placeholders[name] = placeholder
        pieces.append(text[pos:m.start()])
        pieces.append(placeholder)
        pos = m.end()
    pieces.append(text[pos:])
    pieces = [p for p in pieces if p != ""]

    body = "".join(p if isinstance(p, str) else _placeholder_regex(p, p.optional) for p in pieces)
    try:
        tree = sre_parse.parse(flags + body, re.DOTALL)
        anchors = (not _has_anchor(tree, _AT_BEGIN), not _has_anchor(tree, _AT_END))
        regex = _compile_pieces(pieces, flags, anchors)
    except (re.error, OverflowError, RecursionError, ValueError, TypeError, IndexError) as exc:
        raise _fail(fmt, str(exc)) from None
    ops = list(tree)
    group_ids = {tree.state.groupdict[name] for name in placeholders if name in tree.state.groupdict}
    user_groups = [n for n in regex.groupindex if n not in placeholders and not n.startswith(_QUOTE)]
    caseless = bool(regex.flags & (re.IGNORECASE | re.MULTILINE))
    words = None
    paths: frozenset[tuple[str, ...]] | None = None
    token = None
    if not caseless:
        # Index words must hold for every variant `extract` may try, including the one where trailing
        # pairs supply required placeholders (deviation 6): analyse the most relaxed pattern, whose
        # matches include those of every other variant.
        relaxed = "".join(p if isinstance(p, str) else _placeholder_regex(p, True) for p in pieces)
        try:
            relaxed_ops = list(sre_parse.parse(flags + relaxed, re.DOTALL))
        except (re.error, OverflowError, RecursionError, ValueError, TypeError, IndexError):
            relaxed_ops = None
        if relaxed_ops is not None:
            words = _leading(relaxed_ops, "", anchors[0], anchors[1])
            if words is not None:
                paths = frozenset((w,) for w in words)
                if len(words) == 1:
                    longer = _prefix_path(relaxed_ops, anchors)
                    if longer and longer[0] in words:
                        paths = frozenset({longer[:MAX_PATH]})
            else:
                token = _required_token(relaxed_ops)

    return CompiledFormat(
        format=fmt,
        regex=regex,
        placeholders=placeholders,
        literal_count=_literal_count(ops, group_ids),
        placeholder_count=len(placeholders) + len(user_groups),
        leading_words=frozenset(words) if words is not None else None,
        index_paths=paths,
        required_token=token,
        _pieces=pieces,
        _flags=flags,
        _anchors=anchors,
    )


#: A placeholder's delimiters, where no placeholder took them (`brace_problem`).
_STRAY_BRACES = re.compile(r"\{\{|\}\}")


def brace_problem(fmt: str) -> str | None:
    """Why a format's `{{` or `}}` is no placeholder's, or None: `restart {{host}` has a `{{` that nothing
    closes, so it names no parameter and the format matches those characters as written, as StackStorm's
    grammar does too. A load-time warning only (`aliases.model`); matching is not changed by it."""
    text = normalise(fmt) if isinstance(fmt, str) else ""
    # The placeholders blanked out, each character kept in place, so what is left is stray braces only.
    stray = _STRAY_BRACES.search(PLACEHOLDER.sub(lambda m: "\0" * len(m.group()), text))
    if stray is None:
        return None
    start = max(text.rfind(" ", 0, stray.start()), text.rfind("\n", 0, stray.start())) + 1
    shown = text[start:].split(None, 1)[0][:40]  # the word the braces are in
    opening = stray.group() == "{{"
    missing, where = ("}}", "after") if opening else ("{{", "before")
    return (f'format "{fmt}": the "{stray.group()}" of "{shown}" has no "{missing}" {where} it, so it is no '
            "parameter and the alias matches those characters as written; write {{name}} for a parameter, "
            "or \\{\\{ and \\}\\} for literal braces")


def extract_parameters(format: str, message: str) -> dict[str, Any]:
    """The parameters `format` extracts from `message` (defaults applied, before casting).

    Raises `AliasParseError` with the reason when the message does not fit the format (or the
    format is unusable: `AliasFormatError`).
    """
    compiled = compile_format(format or "")
    prepared = prepare(message)
    values = compiled.extract(prepared)
    if values is None:
        raise AliasParseError(compiled.why_not(prepared), format=format, message=message)
    return values


def extract_multiple(format: str, message: str) -> list[dict[str, Any]]:
    """Every fit of a `match_multiple` format in the message, one parameter set each (spec §2.4)."""
    compiled = compile_format(format or "")
    prepared = prepare(message)
    results = compiled.extract_all(prepared)
    if not results:
        raise AliasParseError(compiled.why_not(prepared), format=format, message=message)
    return results
