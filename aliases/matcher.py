"""Matching a chat message against every loaded alias through an index (spec §2.4, with Squall's fixes).

StackStorm tries every representation of every alias on every message and refuses the command when
more than one fits, even `run {{cmd}}` against `run {{cmd}} on {{hosts}}` (st2#4511, st2#3770,
st2#2293). Squall:

* indexes representations instead of trying them all: by the words every match starts with, in a
  trie (`aws restart pod {{name}}` can only fit a message starting `aws restart pod`; `(run|execute)
  ...` goes under both words), else by a whole word every match contains (`{{who}} is my captain`
  needs the word `is`), else (rare: case-insensitive formats, a leading regex) tried every time; each
  trie node's list is pre-sorted by specificity, so trying stops at the first less specific format
  once one fits. The words are derived from the parsed regex, so the index never changes the outcome
  of trying every format (tests compare it with a brute-force scan);
* prepares the message once (normalised, trailing pairs split off) for all formats;
* breaks ties deterministically: the most literal characters, then the fewest placeholders; only a true
  tie (same score, different aliases or formats giving different parameters) is an `AmbiguousCommand`
  listing the candidates;
* answers an unmatched command with "did you mean" suggestions from the display strings;
* never matches disabled aliases nor display-only formats; `match_multiple` formats are a second pass
  (only when nothing else matched) that may yield several matches (`match_all`);
* refuses a message whose matching runs past its budget (`MATCH_BUDGET`, grammar deviation 12) with
  `CommandTooComplex`: one long, repetitive message must not hold the event loop, chat and the API.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aliases.grammar import (
    MAX_PATH,
    TOO_COMPLEX,
    AliasFormatError,
    AliasParseError,
    CompiledFormat,
    MessageTooComplex,
    Prepared,
    compile_format,
    prepare,
)
from aliases.model import Alias, check_overrides, engine_immutables, inject_immutable
from engine.actions import Action

__all__ = ["AliasMatch", "AliasMatchError", "AliasMatcher", "AmbiguousCommand", "CommandTooComplex", "NoMatch"]


# Made for every chat command: slotted (see docs/architecture.md, "Value objects").
@dataclass(slots=True)
class AliasMatch:
    """One alias format that fits a message, and the parameters it extracted (before casting)."""

    alias: Alias
    display: str | None
    representation: str
    parameters: dict[str, Any]

    @property
    def ref(self) -> str:
        return self.alias.ref

    def summary(self) -> dict[str, Any]:
        return {"alias": self.alias.ref, "format": self.representation, "parameters": self.parameters}

    @property
    def pairs(self) -> set[str]:
        """Names given as trailing key=value pairs for which the format has no placeholder (none
        without parameters: asked twice of every command, `!ping` among them)."""
        if not self.parameters:
            return set()
        return self.parameters.keys() - compile_format(self.representation).placeholders.keys()  # (no comprehension)

    @property
    def authored(self) -> set[str]:
        """Names whose value is the format's own default (`{{ name = default }}`): a pack author's
        text, which renders as a template. Everything a person typed is data."""
        if not self.parameters:
            return set()
        compiled = compile_format(self.representation)
        if not compiled.defaulted:  # no placeholder has a default (most formats): no comprehension to run
            return set()
        placeholders = compiled.placeholders
        return {name for name, value in self.parameters.items()
                if name in placeholders and placeholders[name].default is not None
                and value == placeholders[name].default}

    def request_parameters(self, action: Action, context: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
        """The parameters to request the alias's action with, and the names among them that render.

        Key=value pairs may not set runner parameters the alias does not open (`check_overrides`);
        the alias's immutable parameters are added, rendered once, here, except those that read the
        datastore and a shell runner's `cmd`, which are added as written and render in the engine
        (`engine_immutables`), with the alias's context as names (`immutable_names`)."""
        check_overrides(self.alias, action, self.pairs)
        # `inject_immutable` returns a new dict and changes nothing of what it is given: no copy first
        return (inject_immutable(self.alias, self.parameters, context, action=action),
                self.authored | engine_immutables(self.alias, action))


class AliasMatchError(LookupError):
    """The message selects no single alias."""


class NoMatch(AliasMatchError):
    """No enabled alias fits; `suggestions` are display strings of formats the user may have meant."""

    def __init__(self, suggestions: list[str], command: str = "") -> None:
        self.suggestions = suggestions
        self.command = command
        hint = f"; did you mean: {' | '.join(suggestions)}" if suggestions else ""
        super().__init__(f"Command '{_short(command)}' matched no patterns{hint}")


class CommandTooComplex(NoMatch):
    """Matching the command was stopped when it ran past its budget: the reply is `str(exc)`.

    A `NoMatch` (with no suggestions), so a caller that knows only `NoMatch` treats the command as
    matching nothing; callers that answer people should say this exception's text instead."""

    def __init__(self, command: str = "") -> None:
        self.suggestions = []
        self.command = command
        AliasMatchError.__init__(self, TOO_COMPLEX)


class AmbiguousCommand(AliasMatchError):
    """Several formats fit equally well; `candidates` are the matches, best first."""

    def __init__(self, candidates: list[AliasMatch], command: str = "") -> None:
        self.candidates = candidates
        self.command = command
        listed = ", ".join(f'{c.alias.ref} ("{c.display or c.representation}")' for c in candidates)
        super().__init__(f"Command '{_short(command)}' matched more than 1 pattern equally well: {listed}")


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass
class _Entry:
    alias: Alias
    display: str | None
    representation: str
    compiled: CompiledFormat
    order: int
    multiple: bool
    score: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        self.score = self.compiled.score


class AliasMatcher:
    """An index over the enabled aliases' representations; build once per loaded set of aliases."""

    # Complex by nature: the alias index: one branch per format shape it indexes.
    def __init__(self, aliases: Iterable[Alias]) -> None:  # noqa: C901
        self.aliases: list[Alias] = sorted(aliases, key=lambda a: (a.pack, a.name))
        self.errors: list[str] = []
        self._by_ref = {a.ref: a for a in self.aliases}
        singles: list[_Entry] = []
        self._multiple: list[_Entry] = []
        order = 0
        for alias in self.aliases:
            if not alias.enabled:
                continue
            seen: set[str] = set()
            for fmt in alias.formats:
                for rep in fmt.representations:
                    if rep in seen:  # the same representation twice in one alias is one format
                        continue
                    seen.add(rep)
                    try:
                        compiled = compile_format(rep)
                    except AliasFormatError as exc:
                        self.errors.append(f"{alias.ref}: {exc}")
                        continue
                    entry = _Entry(alias, fmt.display, rep, compiled, order, fmt.match_multiple)
                    order += 1
                    (self._multiple if fmt.match_multiple else singles).append(entry)

        def ranked(entries: Iterable[_Entry]) -> list[_Entry]:
            return sorted(entries, key=lambda e: (-e.score[0], -e.score[1], e.order))

        # Three kinds of entries: those whose first words are fixed (looked up by the message's first
        # words, a list per word path that includes the shorter paths' entries), those that need a
        # given whole word somewhere (looked up by the message's words), and the rest (always tried).
        by_path: dict[tuple[str, ...], list[_Entry]] = {}
        by_token: dict[str, list[_Entry]] = {}
        always: list[_Entry] = []
        for entry in singles:
            compiled = entry.compiled
            if compiled.index_paths:
                for path in compiled.index_paths:
                    by_path.setdefault(path, []).append(entry)
            elif compiled.required_token:
                by_token.setdefault(compiled.required_token, []).append(entry)
            else:
                always.append(entry)
        # A trie over word paths; each node holds (children, ranked entries of its path and shorter ones).
        self._trie: dict[str, tuple[dict[str, Any], list[_Entry] | None]] = {}
        for path in sorted(by_path, key=len):
            children = self._trie
            for depth, word in enumerate(path, 1):
                node = children.get(word)
                if node is None:
                    node = children[word] = ({}, None)
                if depth == len(path):
                    merged = ranked(e for n in range(1, depth + 1) for e in by_path.get(path[:n], ()))
                    node = children[word] = (node[0], merged)
                children = node[0]
        self._by_token = {token: ranked(entries) for token, entries in by_token.items()}
        self._token_keys = frozenset(self._by_token)
        self._always = ranked(always)
        self._multiple = ranked(self._multiple)
        self._singles = ranked(singles)

        # Suggestions: display strings by their first word (lower case, for typos and wrong case).
        self._displays: list[tuple[Alias, str]] = []
        self._by_word: dict[str, list[str]] = {}
        for alias in self.aliases:
            if not alias.enabled:
                continue
            for fmt in alias.formats:
                if fmt.display:
                    self._displays.append((alias, fmt.display))
                    words = fmt.display.split()
                    if words:
                        self._by_word.setdefault(words[0].lower(), []).append(fmt.display)
        self._words = list(self._by_word)
        self._near_words: dict[str, list[str]] = {}

    # -- matching --------------------------------------------------------------------------------

    def candidates(self, prepared: Prepared) -> tuple[list[_Entry], list[_Entry]]:
        """The entries that can fit `prepared`: one ranked list for its first words, and the others."""
        ranked: list[_Entry] = []
        children = self._trie
        for word in prepared.words[:MAX_PATH]:
            node = children.get(word)
            if node is None:
                break
            children, entries = node
            if entries is not None:
                ranked = entries  # the deepest path the message starts with
        others = self._always
        if self._token_keys:
            hits = self._token_keys.intersection(prepared.words)
            if hits:
                others = [e for token in hits for e in self._by_token[token]] + others
        return ranked, others

    def _first_pass(self, prepared: Prepared) -> list[tuple[_Entry, dict[str, Any]]]:
        """The best-scoring fits among the single-pass formats, in rank order."""
        ranked, others = self.candidates(prepared)
        found: list[tuple[_Entry, dict[str, Any]]] = []
        best: tuple[int, int] | None = None
        for entry in ranked:
            if best is not None and entry.score < best:
                break  # ranked: everything after this is less specific
            values = entry.compiled.extract(prepared)
            if values is not None:
                found.append((entry, values))
                best = entry.score
        if not others:
            return found  # all of one score (the first fit's), in rank order
        for entry in others:
            if best is not None and entry.score < best:
                continue
            values = entry.compiled.extract(prepared)
            if values is not None:
                found.append((entry, values))
                if best is None or entry.score > best:
                    best = entry.score
        top = [(e, v) for e, v in found if e.score == best]
        top.sort(key=lambda item: item[0].order)
        return top

    def _decide(self, found: list[tuple[_Entry, dict[str, Any]]], command: str) -> AliasMatch:
        if len(found) == 1:
            entry, values = found[0]
            return AliasMatch(entry.alias, entry.display, entry.representation, values)
        distinct: list[tuple[_Entry, dict[str, Any]]] = []
        for entry, values in found:
            if any(e.alias is entry.alias and v == values for e, v in distinct):
                continue  # two formats of one alias giving the same parameters are one command
            distinct.append((entry, values))
        matches = [AliasMatch(e.alias, e.display, e.representation, v) for e, v in distinct]
        if len(matches) > 1:
            raise AmbiguousCommand(matches, command)
        return matches[0]

    def match(self, text: str) -> AliasMatch:
        """The best alias format for `text`; `NoMatch`, `AmbiguousCommand` or `CommandTooComplex` otherwise.

        For a `match_multiple` format that fits several times, this is the first fit (see `match_all`).
        """
        return self._match(text, every=False)[0]

    def match_all(self, text: str) -> list[AliasMatch]:
        """Like `match`, but a `match_multiple` format yields one match per fit in the message."""
        return self._match(text, every=True)

    def _match(self, text: str, every: bool) -> list[AliasMatch]:
        """Both passes over one prepared message, each format tried at most once (`every`: all the fits
        of a `match_multiple` format, else its first)."""
        prepared = prepare(text)
        try:
            found = self._first_pass(prepared)
            if found:
                return [self._decide(found, text)]
            matches = self._second_pass(prepared, text)
        except MessageTooComplex:
            raise CommandTooComplex(text) from None
        return matches if every else matches[:1]

    def _second_pass(self, prepared: Prepared, text: str) -> list[AliasMatch]:
        """The `match_multiple` formats, when no other format fits: the best one's fits."""
        multi: list[tuple[_Entry, list[dict[str, Any]]]] = []
        best: tuple[int, int] | None = None
        for entry in self._multiple:
            if best is not None and entry.score < best:
                break
            results = entry.compiled.extract_all(prepared)
            if results:
                multi.append((entry, results))
                best = entry.score
        if not multi:
            raise NoMatch(self.suggest(text), text)
        if len(multi) > 1:
            raise AmbiguousCommand([AliasMatch(e.alias, e.display, e.representation, r[0]) for e, r in multi], text)
        entry, results = multi[0]
        return [AliasMatch(entry.alias, entry.display, entry.representation, values) for values in results]

    def match_format(self, ref: str, representation: str, text: str) -> list[AliasMatch]:
        """Parse `text` with one named alias format (the hubot path: the client chose the format)."""
        alias = self._by_ref.get(ref)
        if alias is None:
            raise NoMatch([], text)
        for fmt in alias.formats:
            if representation in fmt.representations:
                compiled = compile_format(representation)
                prepared = prepare(text)
                if fmt.match_multiple:
                    results = compiled.extract_all(prepared)
                else:
                    one = compiled.extract(prepared)
                    results = [one] if one is not None else []
                if not results:
                    raise AliasParseError(compiled.why_not(prepared), format=representation, message=text)
                return [AliasMatch(alias, fmt.display, representation, r) for r in results]
        raise AliasParseError(f'Format string "{representation}" is not available on the alias "{alias.name}"',
                              format=representation, message=text)

    # -- help and suggestions ------------------------------------------------------------------------

    def suggest(self, text: str, limit: int = 5) -> list[str]:
        """Display strings close to `text`: same or similar first word, then similar whole strings."""
        words = text.split(None, 1)
        if not words or not self._displays:
            return []
        first = words[0].lower()[:100]
        chosen: list[str] = []
        keys = [first] if first in self._by_word else []
        near = self._near_words.get(first)
        if near is None:
            near = [w for w in difflib.get_close_matches(first, self._words, n=3, cutoff=0.75) if w != first]
            if len(self._near_words) < 4096:  # typos repeat; a bounded memo keeps "did you mean" cheap
                self._near_words[first] = near
        keys += near
        for key in keys:
            chosen.extend(d for d in self._by_word[key] if d not in chosen)
        if not chosen:
            displays = [d for _, d in self._displays]
            chosen = difflib.get_close_matches(text[:200].lower(), [d.lower() for d in displays], n=limit,
                                               cutoff=0.5)
            lowered = {d.lower(): d for d in displays}
            chosen = [lowered[c] for c in chosen]
        if len(chosen) > 1:
            scorer = difflib.SequenceMatcher(autojunk=False)
            scorer.set_seq2(text.lower()[:200])  # the message is analysed once, each display against it

            def similarity(display: str) -> float:
                scorer.set_seq1(display.lower())
                return scorer.ratio()

            chosen.sort(key=similarity, reverse=True)
        return chosen[:limit]

    def help(self, filter: str | None = None, allowed: Callable[[Alias], bool] | None = None,
             pack: str | None = None) -> list[dict[str, Any]]:
        """Help lines `{pack, display, description, ref}` of enabled aliases, sorted by pack and name.

        `filter` is a case-insensitive regex searched in the display string and the description (text
        that is not a valid regex is searched literally); `allowed` hides aliases the asker may not run.
        """
        pattern = None
        if filter:
            try:
                pattern = re.compile(filter, re.IGNORECASE)
            except re.error:
                pattern = re.compile(re.escape(filter), re.IGNORECASE)
        lines = []
        for alias in self.aliases:
            if not alias.enabled or (pack is not None and alias.pack != pack):
                continue
            if allowed is not None and not allowed(alias):
                continue
            for fmt in alias.formats:
                if not fmt.display:
                    continue
                if pattern is not None and not (pattern.search(fmt.display) or pattern.search(alias.description)):
                    continue
                lines.append({"pack": alias.pack, "display": fmt.display, "description": alias.description,
                              "ref": alias.ref})
        return lines

    def stats(self) -> dict[str, int]:
        """How the representations are indexed (for benchmarks and `--verbose` output)."""
        paths = {id(e) for entries in self._paths_lists() for e in entries}
        return {
            "representations": len(self._singles) + len(self._multiple),
            "by_first_words": len(paths),
            "by_required_word": sum(len(v) for v in self._by_token.values()),
            "always_tried": len(self._always),
            "match_multiple": len(self._multiple),
        }

    def _paths_lists(self) -> list[list[_Entry]]:
        lists: list[list[_Entry]] = []
        stack = [self._trie]
        while stack:
            for children, entries in stack.pop().values():
                if entries is not None:
                    lists.append(entries)
                stack.append(children)
        return lists

    def get(self, ref: str) -> Alias | None:
        return self._by_ref.get(ref)

    def linear_match(self, text: str) -> list[AliasMatch]:
        """Every single-pass format that fits, by trying each one (no index): for tests and benchmarks."""
        prepared = prepare(text)
        try:
            return [AliasMatch(e.alias, e.display, e.representation, v) for e in self._singles
                    if (v := e.compiled.extract(prepared)) is not None]
        except MessageTooComplex:
            raise CommandTooComplex(text) from None
