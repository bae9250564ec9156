"""Ranking aliases against free text that matched no format ("did you mean", issue 20).

When a message fits no alias exactly, the chat asks a `Ranker` which aliases it most resembles and
offers the best one only when it stands out (a threshold and a margin over the runner-up, the
caller's choice). Each alias is represented by its formats (display and representations, with the
placeholders' names), its description and its name.

`rank` also returns the command *filled* from the message: the format's literal words with each
placeholder replaced by the words of the message found where that placeholder sits (between the
literal words the message shares with the format). The message's words are copied as text, never
evaluated, and the caller matches the filled command again before anything runs.

A ranker reads at most `READ_WORDS` words of a message, within its first `READ_CHARS` characters
(as `AliasMatcher.suggest` reads `text[:200]`): ranking runs on the chat's event loop, and a
100,000-character message (the command path's `MAX_COMMAND`) read whole, once per alias and format
tried, held it for a third of a second. A message cut short is ranked on what was read but not
filled: a command filled from part of it would run with part of what the person typed.

Two rankers share the interface: `LexicalRanker` (the default, no extra dependency: tokens with a
light stemmer and a few synonyms of operations verbs, weighted by how rare each word is among the
aliases) and `EmbeddingRanker` (`squall[nl]`: WordLlama's static word embeddings, whose weights ship
inside the wheel and load with no network access, blended with the lexical score).
"""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from aliases.grammar import AliasFormatError, compile_format
from aliases.model import Alias

__all__ = ["RANKERS", "EmbeddingRanker", "LexicalRanker", "Ranked", "Ranker", "fill", "make_ranker", "tokens"]


class Ranked(NamedTuple):
    """One alias's resemblance to a message (0..1), and the command filled from the message (None
    when the format's required parameters cannot be recovered from it, or the message is longer than
    a ranker reads: `READ_WORDS`)."""

    alias: Alias
    score: float
    filled: str | None


#: The names of an alias's parameters whose defaults a filled command must not spell (its secret ones).
Withheld = Callable[[Alias], Collection[str]]


class Ranker(Protocol):
    #: Default `chat.suggest.threshold` and `chat.suggest.margin` for this ranker's scores.
    threshold: float
    margin: float

    def rank(self, message: str, aliases: Sequence[Alias], withheld: Withheld | None = None) -> list[Ranked]:
        """The best `TOP` enabled aliases with a score above 0, best first, each with its filled command
        (without the defaults of the parameters `withheld` names for its alias: see `fill`)."""
        ...


#: How many ranked aliases a ranker returns (and fills): the caller needs the best and the runner-up.
TOP = 5
#: How much of a message a ranker reads: its first `READ_WORDS` words within its first `READ_CHARS`
#: characters. A mistyped command is a few words; the work of a longer message stops growing here.
READ_WORDS = 300
READ_CHARS = 3_000


# -- words -----------------------------------------------------------------------------------------

_WORD = re.compile(r"[a-z0-9]+")
#: Words that carry no meaning of a command: they neither count for an alias nor become a value.
STOPWORDS = frozenset([
    "a", "an", "the", "to", "of", "for", "on", "in", "at", "by", "with", "from", "into", "onto", "and", "or",
    "please", "pls", "plz", "can", "could", "would", "will", "you", "u", "me", "my", "i", "we", "our", "us",
    "it", "its", "is", "are", "be", "this", "that", "these", "those", "some", "any", "all", "now", "asap",
    "quickly", "just", "kindly", "thanks", "thank", "hey", "hi", "hello", "squall", "bot", "do", "does",
    "what", "whats", "how", "there", "here", "up", "out", "over", "again", "real", "quick",
])
#: Words that do not start or end a value taken from a message ("restart nginx on web1 please").
EDGE_WORDS = frozenset([
    "a", "an", "the", "to", "of", "for", "on", "in", "at", "by", "with", "from", "please", "pls", "plz",
    "now", "thanks", "me", "my", "our",
])
#: Operations verbs people use for the same thing; each maps to one canonical word.
SYNONYMS = {
    "bounce": "restart", "reload": "restart", "recycle": "restart", "kick": "restart",
    "display": "show", "list": "show", "get": "show", "view": "show", "print": "show", "see": "show",
    "release": "deploy", "ship": "deploy", "rollout": "deploy", "push": "deploy",
    "remove": "delete", "rm": "delete", "del": "delete", "drop": "delete", "erase": "delete",
    "halt": "stop", "kill": "stop", "terminate": "stop", "shutdown": "stop",
    "launch": "start", "boot": "start",
    "state": "status", "health": "status", "healthy": "status", "running": "status",
    "execute": "run", "exec": "run",
    "fetch": "download", "pull": "download",
    "say": "echo", "repeat": "echo",
    "resize": "scale",
    "store": "set", "save": "set", "put": "set",
    "add": "install",
    "logs": "log", "tail": "log",
    "reboot": "restart",
    "alive": "ping",
    "shut": "stop",
    "undo": "rollback", "revert": "rollback",
    "certificate": "cert", "expire": "expiry",
    "search": "grep", "find": "grep",
    "mute": "silence",
    "clear": "flush", "purge": "flush",
    "snapshot": "backup", "dump": "backup",
}


def stem(word: str) -> str:
    """A light stemmer: plural and verb endings off, so `restarting`, `restarts` and `restarted` meet
    (and `running` meets `run`); `status` and `redis` keep their `s`."""
    if word.endswith(("ss", "us", "is")):
        return word
    for suffix, keep in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: len(word) - len(suffix)] + keep
            if suffix in ("ing", "ed") and len(word) > 3 and word[-1] == word[-2] and word[-1] not in "aeiouls":
                word = word[:-1]
            return word
    return word


def key(word: str) -> str:
    """The comparison key of one word: lower case, synonym, stem."""
    word = word.lower()
    word = SYNONYMS.get(word, word)
    return SYNONYMS.get(stem(word), stem(word))


_VALUE_LIKE = re.compile(r"\w[./:@=]\w")


def tokens(text: str) -> list[str]:
    """The meaningful words of `text` as comparison keys (placeholders' braces and punctuation go).
    Words that look like values (`example.com`, `deploy.env`, a URL or a path) name no command."""
    words = (w for chunk in text.lower().split() if not _VALUE_LIKE.search(chunk) for w in _WORD.findall(chunk))
    return [key(w) for w in words if w not in STOPWORDS]


# -- filling ---------------------------------------------------------------------------------------

_PIECE = re.compile(r"(\{\{.*?\}\})", re.DOTALL)
_REGEX_SYNTAX = re.compile(r"[()\[\]|?*+\\^$]")


def _pieces(representation: str) -> list[tuple[str, Any]] | None:
    """A format as ("lit", text) and ("ph", Placeholder) pieces; None for regex formats, which a
    substitution cannot fill."""
    try:
        placeholders = list(compile_format(representation).placeholders.values())
    except AliasFormatError:
        return None
    parts = _PIECE.split(representation)
    literals = parts[0::2]
    if len(parts) // 2 != len(placeholders) or any(_REGEX_SYNTAX.search(t) for t in literals):
        return None
    pieces: list[tuple[str, Any]] = []
    for index, text in enumerate(literals):
        if text:
            pieces.append(("lit", text))
        if index < len(placeholders):
            pieces.append(("ph", placeholders[index]))
    return pieces


def _quoted(value: str, last: bool) -> str | None:
    """A value as the grammar reads it back: words with spaces are quoted unless they end the format."""
    if last or not any(c.isspace() for c in value):
        return value
    for quote in ('"', "'"):
        if quote not in value:
            return f"{quote}{value}{quote}"
    return None


def fill(representation: str, message: str, vocabulary: frozenset[str] = frozenset(),
         withheld: Collection[str] = ()) -> str | None:
    """`representation` with its placeholders replaced by the message's words found where each sits;
    None when a required placeholder gets no words or the format is a regex.

    The format's literal words are looked for in the message in order (by comparison key, so
    synonyms count). A placeholder between two literal words found takes the words between them;
    one before a found literal takes the word just before it; the format's last placeholder takes
    the rest of the message; an optional one keeps its default unless it sits between two found
    literal words. Words of the alias's own `vocabulary` (its command words) and
    stopwords at a value's edges are not values. Values are text: nothing in them is interpreted.
    An optional placeholder named in `withheld` (a secret parameter's) that keeps its default is left
    out, not spelled: the filled command is shown to the person, and matching it applies the default."""
    words = message.split()
    return _fill(representation, words, _fill_keys(words), vocabulary, withheld)


def _fill_keys(words: list[str]) -> list[str]:
    """The comparison key of each of a message's words, as `fill` aligns them with a format's."""
    return [key(w.strip(",.;:!?")) for w in words]


def _fill(representation: str, words: list[str], keys: list[str],  # noqa: C901 (one alignment rule per placeholder position)
          vocabulary: frozenset[str], withheld: Collection[str]) -> str | None:
    """`fill` of a message already split into `words`, with their `keys` (`_fill_keys`): a ranker
    computes both once per message, not once per format it tries."""
    pieces = _pieces(representation)
    if pieces is None:
        return None
    # Where each literal word of the format is found in the message (in order), -1 when missing.
    found: list[list[int]] = []
    cursor = 0
    for kind, value in pieces:
        if kind != "lit":
            found.append([])
            continue
        positions = []
        for word in _WORD.findall(value.lower()):
            wanted = key(word)
            at = next((i for i in range(cursor, len(words)) if keys[i] == wanted), -1)
            positions.append(at)
            if at >= 0:
                cursor = at + 1
        found.append(positions)

    def bound_left(index: int) -> int:
        for j in range(index - 1, -1, -1):
            hits = [p for p in found[j] if p >= 0]
            if hits:
                return max(hits) + 1
        return 0

    def bound_right(index: int) -> int | None:
        for j in range(index + 1, len(pieces)):
            hits = [p for p in found[j] if p >= 0]
            if hits:
                return min(hits)
        return None

    def meaningful(i: int) -> bool:
        word = words[i].lower().strip(",.;:!?")
        return word not in EDGE_WORDS and keys[i] not in vocabulary

    last_ph = max(i for i, (kind, _) in enumerate(pieces) if kind == "ph") if any(
        kind == "ph" for kind, _ in pieces) else -1
    taken: set[int] = set()
    out: list[str] = []
    for index, (kind, value) in enumerate(pieces):
        if kind == "lit":
            out.append(value)
            continue
        start, end = bound_left(index), bound_right(index)
        if value.default is not None and not (start > 0 and end is not None):
            if value.name not in withheld:
                out.append(value.default)  # an optional value is taken only from between two literal words
            continue
        start = max([start, *(i + 1 for i in taken)])
        span = list(range(start, len(words) if end is None else end))
        while span and not meaningful(span[0]):
            span.pop(0)
        while span and not meaningful(span[-1]):
            span.pop()
        before = pieces[index - 1] if index else None
        if before and before[0] == "lit" and _WORD.search(before[1]) and not any(p >= 0 for p in found[index - 1]) \
                and len(span) > 1:
            span.pop(0)  # the word where the format's missing literal word would be ("fetch" for "http")
        after = next((p for p in pieces[index + 1:] if p[0] == "ph" or _WORD.search(p[1])), None)
        if span and after is not None and after[0] == "ph":
            span = span[:1]  # two placeholders in a row: one word each, the last takes the rest
        elif span and not (index == last_ph and end is None) and not (start > 0 and end is not None):
            span = [span[-1]] if end is not None else [span[0]]
        taken.update(span)
        text = " ".join(words[i] for i in span)
        if not text:
            if value.default is None:
                return None
            if value.name in withheld:
                continue
            text = value.default
        quoted = _quoted(text, index == last_ph and end is None)
        if quoted is None:
            return None
        out.append(quoted)
    return " ".join("".join(out).split())


# -- what a ranker reads of a message ---------------------------------------------------------------


@dataclass(frozen=True)
class _Read:
    """What a ranker reads of one message, computed once per `rank` (not once per alias and format)."""

    text: str                 # the message, or the words read of it when it was cut short
    tokens: list[str]         # `tokens(text)`, in order
    query: frozenset[str]     # the same, as a set
    whole: bool               # whether `text` is all of the message: only then is a command filled from it
    words: list[str]          # the words a command is filled from (none when cut short)
    keys: list[str]           # their comparison keys (`_fill_keys`)


def _read(message: str) -> _Read:
    """The first `READ_WORDS` words of `message` within its first `READ_CHARS` characters; all of
    it, unchanged, when it is no longer."""
    words = message[:READ_CHARS].split(maxsplit=READ_WORDS)
    whole = len(message) <= READ_CHARS and len(words) <= READ_WORDS
    if not whole:
        text = " ".join(words[:READ_WORDS])
        read = tokens(text)
        return _Read(text, read, frozenset(read), False, [], [])
    read = tokens(message)
    return _Read(message, read, frozenset(read), True, words, _fill_keys(words))


# -- the lexical ranker ----------------------------------------------------------------------------


@dataclass
class _Doc:
    alias: Alias
    weights: dict[str, float]                   # comparison key -> how strongly it names the alias
    formats: list[tuple[str, frozenset[str]]]   # (representation, its literal words' keys)
    vocabulary: frozenset[str]


def _document(alias: Alias) -> _Doc:
    weights: dict[str, float] = {}

    def add(text: str, weight: float) -> None:
        for token in tokens(text):
            weights[token] = max(weights.get(token, 0.0), weight)

    formats: list[tuple[str, frozenset[str]]] = []
    for fmt in alias.formats:
        if not fmt.display:
            continue  # a format with `representation` only is kept out of help, and out of suggestions
        for text in [*([fmt.display] if fmt.display else []), *fmt.representations]:
            literal = _PIECE.sub(" ", text)
            add(literal, 1.0)
            for name in re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)", text):
                add(name.replace("_", " "), 0.6)
            if text in fmt.representations:
                formats.append((text, frozenset(tokens(literal))))
    add(alias.description, 0.5)
    add(alias.name.replace("_", " "), 0.8)
    vocabulary = frozenset(k for _, literal in formats for k in literal)
    return _Doc(alias, weights, formats, vocabulary)


@dataclass
class _Index:
    aliases: tuple[Alias, ...]
    docs: list[_Doc]
    idf: dict[str, float]


@dataclass
class LexicalRanker:
    """Words the message shares with each alias, weighted by rarity (an IDF-weighted overlap, both
    ways: how much of the message the alias explains, and how much of the alias's command words the
    message says). No dependency beyond the standard library."""

    threshold: float = 0.5
    margin: float = 0.15
    _index: _Index | None = field(default=None, repr=False)

    def index(self, aliases: Sequence[Alias]) -> _Index:
        """The documents of `aliases`, built once per alias set (a pack reload makes a new one)."""
        current = self._index
        if current is not None and len(current.aliases) == len(aliases) and all(
                a is b for a, b in zip(current.aliases, aliases, strict=True)):
            return current
        docs = [_document(a) for a in aliases if a.enabled]
        frequency: dict[str, int] = {}
        for doc in docs:
            for token in doc.weights:
                frequency[token] = frequency.get(token, 0) + 1
        idf = {t: math.log(1 + len(docs) / n) for t, n in frequency.items()}
        self._index = _Index(tuple(aliases), docs, idf)
        return self._index

    def scores(self, message: str, aliases: Sequence[Alias]) -> list[tuple[_Doc, float]]:
        """Each alias's score for `message` (above 0), in the aliases' order."""
        return self._scores(_read(message), aliases)

    def _scores(self, read: _Read, aliases: Sequence[Alias]) -> list[tuple[_Doc, float]]:
        index = self.index(aliases)
        query = read.query
        known = [t for t in query if t in index.idf]
        total = sum(index.idf[t] for t in known)
        if not total:
            return []
        scored = []
        for doc in index.docs:
            said = sum(index.idf[t] * doc.weights.get(t, 0.0) for t in known)
            if not said:
                continue
            covered = 0.0
            for _, literal in doc.formats:
                if literal:
                    covered = max(covered, sum(index.idf.get(t, 0.0) for t in literal & query)
                                  / sum(index.idf.get(t, 0.0) for t in literal))
            scored.append((doc, 0.6 * said / total + 0.4 * covered))
        return scored

    def rank(self, message: str, aliases: Sequence[Alias], withheld: Withheld | None = None) -> list[Ranked]:
        read = _read(message)
        scored = heapq.nlargest(TOP, self._scores(read, aliases), key=lambda item: item[1])
        return [Ranked(doc.alias, round(score, 4), _filled(doc, read, withheld)) for doc, score in scored]


def _filled(doc: _Doc, read: _Read, withheld: Withheld | None) -> str | None:
    """The command filled from the message `read` with the format whose literal words it says most
    of; None when the message was cut short (a command from part of it would run part of it)."""
    if not read.whole:
        return None
    ordered = sorted(doc.formats, key=lambda f: -len(f[1] & read.query))
    names = withheld(doc.alias) if withheld is not None else ()
    for representation, _ in ordered:
        filled = _fill(representation, read.words, read.keys, doc.vocabulary, names)
        if filled is not None:
            return filled
    return None


# -- the embedding ranker --------------------------------------------------------------------------


@dataclass
class EmbeddingRanker:
    """WordLlama's static embeddings (`squall[nl]`), cosine similarity between the message and each
    alias's text, blended with the lexical score (the embedding alone cannot tell `restart` from
    `stop`: both are near in meaning). The model is the 256-dimension `l2_supercat` shipped inside
    the `wordllama` wheel (MIT); it is loaded from the installed package, never downloaded."""

    threshold: float = 0.5
    margin: float = 0.1
    weight: float = 0.4
    lexical: LexicalRanker = field(default_factory=LexicalRanker)
    _model: Any = field(default=None, repr=False)
    _vectors: tuple[tuple[Alias, ...], Any] | None = field(default=None, repr=False)

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = load_wordllama()
        return self._model

    def _alias_vectors(self, aliases: Sequence[Alias]) -> Any:
        if self._vectors is not None and len(self._vectors[0]) == len(aliases) and all(
                a is b for a, b in zip(self._vectors[0], aliases, strict=True)):
            return self._vectors[1]
        docs = self.lexical.index(aliases).docs
        texts = [" ".join([_PIECE.sub(" ", r) for r, _ in d.formats] + [d.alias.description]) for d in docs]
        vectors = self.model.embed(texts, norm=True) if texts else None
        self._vectors = (tuple(aliases), vectors)
        return vectors

    def rank(self, message: str, aliases: Sequence[Alias], withheld: Withheld | None = None) -> list[Ranked]:
        vectors = self._alias_vectors(aliases)
        if vectors is None:
            return []
        docs = self.lexical.index(aliases).docs
        read = _read(message)
        lexical = {id(doc): score for doc, score in self.lexical._scores(read, aliases)}
        if not lexical:
            return []  # no word of the message is any alias's: nothing to suggest
        query = self.model.embed([" ".join(read.tokens) or read.text], norm=True)[0]
        similarity = vectors @ query
        blended = self.weight * similarity.clip(min=0.0) + (1 - self.weight) * self._lexical_vector(docs, lexical)
        best = [i for i in blended.argsort()[::-1][:TOP] if blended[i] > 0]
        return [Ranked(docs[i].alias, round(float(blended[i]), 4), _filled(docs[i], read, withheld))
                for i in best]

    @staticmethod
    def _lexical_vector(docs: list[_Doc], lexical: dict[int, float]) -> Any:
        import numpy

        return numpy.fromiter((lexical.get(id(doc), 0.0) for doc in docs), dtype=numpy.float32, count=len(docs))


def load_wordllama() -> Any:
    """WordLlama's default model from the files inside the installed package, downloads disabled.

    `WordLlama.load()` alone looks for the tokenizer in a folder the wheel does not use and would
    fetch it from the network; pointing its cache at the package folder finds both shipped files."""
    from pathlib import Path

    import wordllama

    return wordllama.WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True)


RANKERS = ("lexical", "embedding")


def make_ranker(name: str) -> Ranker:
    """The ranker `chat.suggest.ranker` names."""
    if name == "embedding":
        ranker = EmbeddingRanker()
        _ = ranker.model  # load now: a missing or broken install shows at start-up, not at a message
        return ranker
    if name == "lexical":
        return LexicalRanker()
    raise ValueError(f"unknown ranker {name!r}; use one of {', '.join(RANKERS)}")
