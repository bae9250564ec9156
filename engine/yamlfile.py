"""Safe YAML loading that remembers where each key was, so errors can name file and line.

Files are composed once with libyaml's C parser (`yaml.CSafeLoader`) where PyYAML was built with it:
its nodes carry marks (line, column) like the pure-Python parser's, so the same pass gives the data
and the `LineMap`. A big pack (aws: ~4,000 action files) spent most of its load time in the
pure-Python scanner, and each file used to be parsed twice (compose, then load). A file the C
parser refuses is parsed again with the pure-Python `SafeLoader`, only to report the error in the
words and at the line Squall always used; without libyaml everything uses `SafeLoader`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContentError:
    """One problem in one pack file: where it is and what is wrong, in words for people."""

    file: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.reason}"


class ContentInvalid(Exception):
    """A pack file that cannot be loaded; carries the `ContentError`."""

    def __init__(self, error: ContentError) -> None:
        super().__init__(str(error))
        self.error = error


#: The fast loader when PyYAML has libyaml, else the pure-Python one (same results, same marks).
FAST_LOADER: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

#: The most characters and list items a pack file's aliases (`*name`) may add to what the file writes out.
#: PyYAML builds an anchor's value once and makes every alias of it the same object, so a file of 800
#: bytes (nine lists of ten aliases of the one before) loads in no time into 10^9 strings, which take
#: that much memory, and more, the first time they are written out (`GET /api/v1/actions`: `squall serve`
#: died). Real packs repeat a few defaults (`<<: *defaults`), far below this.
MAX_ALIAS_GROWTH = 1_000_000

#: The tag of YAML's merge key (`<<: *anchor`): written more than once it merges each, nothing is lost.
_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class DuplicateKey:
    """A mapping key written twice in one mapping: YAML loaders keep the last value and drop the first
    without a word (PyYAML, and so StackStorm), whatever it held."""

    #: The key's path from the top of the document, dotted (`auth.aliases.squall`; `[1]` for list items).
    key: str
    first: int
    again: int

    def __str__(self) -> str:
        return f"duplicate key '{self.key}' (at line {self.first} and again at line {self.again})"


class AliasesTooLarge(Exception):
    """What `expanded_size` refuses: `node`, the first whose value, its aliases written out, is over the
    limit, or (`endless`) that holds an alias of itself, a value without end wherever it is written out."""

    def __init__(self, node: yaml.Node, limit: int, *, endless: bool = False) -> None:
        what = "holds an alias of itself" if endless else f"expands to more than {limit} characters and list items"
        super().__init__(f"the YAML value at line {node.start_mark.line + 1} {what}")
        self.node, self.limit, self.endless = node, limit, endless


def _no_tick() -> None:
    """`expanded_size`'s default: nothing to check at each node."""


def expanded_size(root: yaml.Node, limit: int, tick: Callable[[], None] = _no_tick) -> int:
    """The size of `root` with every alias written out: the characters of each scalar, plus one for each
    item of a list and each pair of a mapping; `AliasesTooLarge` at the first node over `limit`, or that
    holds itself. The one rule for pack files (`load_yaml`) and templates (`from_yaml_string`).

    Each node is measured once, whatever refers to it (an alias is its anchor's node), so this takes time
    in what the text holds, not in what it expands to. `tick` is called at each node measured (a
    template's deadline)."""
    sizes: dict[int, int] = {}
    opened: set[int] = set()  # the nodes whose items are being counted: what holds the node at hand
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, closing = stack.pop()
        key = id(node)
        if closing:
            opened.discard(key)
            size = len(node.value) + sum(sizes[id(item)] for item in _items(node))
            if size > limit:
                raise AliasesTooLarge(node, limit)
            sizes[key] = size
        elif key in opened:
            raise AliasesTooLarge(node, limit, endless=True)
        elif key not in sizes:
            tick()
            opened.add(key)
            stack.append((node, True))
            stack.extend((item, False) for item in _items(node))
    return sizes[id(root)]


def _items(node: yaml.Node) -> Iterable[yaml.Node]:
    """The nodes a sequence or mapping node holds (a mapping's keys and values); none for a scalar."""
    if isinstance(node, yaml.MappingNode):
        return itertools.chain.from_iterable(node.value)
    return node.value if isinstance(node, yaml.SequenceNode) else ()


#: Where a node sits: None at the top, else (its parent's place, its key or list index). Made into
#: words (`_dotted`) only for a duplicate, so the walk allocates no strings.
_Place = tuple["_Place | None", Any] | None


def _dotted(place: _Place, key: Any) -> str:
    """`auth.aliases.squall`, `chain[1].name`: the path of `key` under `place`."""
    parts = [key]
    while place is not None:
        place, step = place
        parts.append(step)
    text = ""
    for step in reversed(parts):
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else str(step))
    return text


def _mapping_duplicates(node: yaml.MappingNode, place: _Place, found: list[DuplicateKey]) -> None:
    """The keys of one mapping written more than once; a key is its resolved tag and text, so `1` and
    `'1'` (an int and a string, two keys once loaded) are not the same key."""
    first: dict[tuple[str, str], int] = {}
    for key_node, _value in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
            continue
        line = key_node.start_mark.line + 1
        ident = (key_node.tag, key_node.value)
        if ident in first:
            found.append(DuplicateKey(_dotted(place, key_node.value), first[ident], line))
        else:
            first[ident] = line


def _may_repeat(node: yaml.MappingNode) -> bool:
    """Whether two keys of `node` have the same text: the cheap test every mapping gets (most have no
    duplicate); `_mapping_duplicates` then looks closer."""
    texts = [key.value for key, _value in node.value]
    try:
        return len(set(texts)) < len(texts)
    except TypeError:  # a mapping or list as a key (`? [a, b]`): look closer
        return True


def duplicate_keys(node: yaml.Node | None) -> list[DuplicateKey]:
    """Every key written twice in one mapping of a composed document, in the order of their second
    line. Read from the nodes before they are constructed (constructing merges `<<` into the nodes)."""
    found: list[DuplicateKey] = []
    pending: list[tuple[yaml.Node, _Place]] = [] if node is None else [(node, None)]
    visited: set[int] = set()  # an alias is its anchor's node: walked once, and no loop (`&a [*a]`)
    scalar = yaml.ScalarNode
    while pending:
        current, place = pending.pop()
        if id(current) in visited:
            continue
        visited.add(id(current))
        if isinstance(current, yaml.MappingNode):
            if _may_repeat(current):
                _mapping_duplicates(current, place, found)
            pending.extend((value, (place, key.value if isinstance(key, scalar) else "?"))
                           for key, value in current.value if not isinstance(value, scalar))
        elif isinstance(current, yaml.SequenceNode):
            pending.extend((item, (place, index)) for index, item in enumerate(current.value)
                           if not isinstance(item, scalar))
    return sorted(found, key=lambda duplicate: duplicate.again)


#: A `LineMap` kept for the pack cache: (line, {key: child}) for a mapping, (line, [child]) for a
#: sequence, (line, None) for a scalar; plain tuples, so a pickle holds no parser objects.
_Compact = tuple[int, "dict[Any, _Compact] | list[_Compact] | None"]


def _compact(node: yaml.Node, inside: frozenset[int] = frozenset(),
             done: dict[int, _Compact] | None = None) -> _Compact:
    """The lines `LineMap.line` reads, without the parser's nodes and marks (which hold the text).

    `inside` holds the nodes being compacted above this one: an alias may point back to its own
    anchor (`&a [*a]`), and the lines end there instead of recursing forever. `done` holds each node
    compacted: an anchor's lines are made once and shared by its aliases (a pickle keeps them once), as
    its value is, so they take room in what the file writes, not in what its aliases expand to."""
    done = {} if done is None else done
    if id(node) in done:
        return done[id(node)]
    line = node.start_mark.line + 1
    if id(node) in inside:
        return line, None
    inside = inside | {id(node)}
    compact: _Compact = (line, None)
    if isinstance(node, yaml.MappingNode):
        children: dict[Any, _Compact] = {}
        for key_node, value_node in node.value:
            # The last key of a name wins, as in `line` and in the data (a duplicate's value is the last).
            if isinstance(key_node, yaml.ScalarNode):
                children[key_node.value] = (key_node.start_mark.line + 1, _compact(value_node, inside, done)[1])
        compact = (line, children)
    elif isinstance(node, yaml.SequenceNode):
        compact = (line, [_compact(item, inside, done) for item in node.value])
    done[id(node)] = compact
    return compact


class LineMap:
    """Lines of the mapping keys in one YAML document, addressed by key path.

    Holds the composed node tree while fresh; pickled (the pack cache), it keeps only the lines,
    in `_Compact` form, and answers the same."""

    def __init__(self, node: yaml.Node | None) -> None:
        self._node = node
        self._compact: _Compact | None = None

    def __getstate__(self) -> dict[str, Any]:
        compact = self._compact if self._node is None else _compact(self._node)
        return {"_node": None, "_compact": compact}

    def line(self, *path: str | int) -> int | None:
        if self._node is None and self._compact is not None:
            return self._compact_line(path)
        node = self._node
        line = node.start_mark.line + 1 if node is not None else None
        for key in path:
            if isinstance(node, yaml.MappingNode):
                # From the end: the value loaded for a key written twice is the last (and a key written
                # beside a merge `<<` overrides the merged one, which constructing put in front).
                for key_node, value_node in reversed(node.value):
                    if key_node.value == key:
                        line = key_node.start_mark.line + 1
                        node = value_node
                        break
                else:
                    return line
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
                node = node.value[key]
                line = node.start_mark.line + 1
            else:
                return line
        return line

    def _compact_line(self, path: tuple[str | int, ...]) -> int | None:
        assert self._compact is not None
        line, children = self._compact
        for key in path:
            if isinstance(children, dict):
                if key not in children:
                    return line
                line, children = children[key]
            elif isinstance(children, list) and isinstance(key, int) and key < len(children):
                line, children = children[key]
            else:
                return line
        return line


def parse(text: str, loader_class: type[yaml.SafeLoader] | type[yaml.CSafeLoader] | None = None,
          *, alias_growth: int | None = None) -> tuple[Any, yaml.Node | None, list[DuplicateKey]]:
    """Compose the document once and build the data from those nodes (one parse, marks kept), with the
    keys written twice, found before constructing (which drops them). `loader_class`: `FAST_LOADER`
    unless given (Squall's own config takes the pure-Python one, for its error messages' words).

    With `alias_growth`, a document whose aliases add more than that many characters and list items to
    the text's own length is refused before it is built (`AliasesTooLarge`): without an anchor (`&`)
    there is no alias, and nothing to measure."""
    loader = (loader_class or FAST_LOADER)(text)
    try:
        node = loader.get_single_node()
        if alias_growth is not None and node is not None and "&" in text:
            expanded_size(node, len(text) + alias_growth)
        duplicates = duplicate_keys(node)
        return (loader.construct_document(node) if node is not None else None), node, duplicates
    finally:
        loader.dispose()


def load_yaml(path: Path, display: str | None = None) -> tuple[Any, LineMap]:
    """Load one YAML file safely; a syntax error becomes `ContentInvalid` with its line.

    A key written twice is a WARNING naming file and line, and the last value is used: that is what
    StackStorm's loader (PyYAML) does, so a pack that ran there loads here too."""
    name = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ContentInvalid(ContentError(name, None, f"cannot read file: {exc}")) from exc
    try:
        data, node, duplicates = parse(text, alias_growth=MAX_ALIAS_GROWTH)
    except yaml.YAMLError as fast_error:
        _raise_with_line(text, name, fast_error)
    except AliasesTooLarge as exc:
        raise ContentInvalid(_alias_error(name, len(text), exc)) from exc
    for duplicate in duplicates:
        log.warning("%s:%d: duplicate key '%s' (also at line %d); the value at line %d is used, the other is "
                    "ignored: remove one of them", name, duplicate.again, duplicate.key, duplicate.first,
                    duplicate.again)
    return data, LineMap(node)


def _alias_error(name: str, length: int, exc: AliasesTooLarge) -> ContentError:
    """The file's problem, at the line of the value that holds itself or grew past the budget."""
    line = exc.node.start_mark.line + 1
    if exc.endless:
        reason = ("the value anchored here (&name) holds an alias of itself (*name): it has no end wherever it "
                  "is written out (a listing, a result); write the value without the alias")
    else:
        reason = (f"the YAML aliases (*name) in this file repeat what their anchors (&name) hold to more than "
                  f"{exc.limit:,} characters and list items, from a file of {length:,} characters: a pack file's "
                  f"aliases may add at most {MAX_ALIAS_GROWTH:,} (each takes memory wherever the value is written "
                  f"out); use fewer aliases, or write the values out")
    return ContentError(name, line, reason)


def _raise_with_line(text: str, name: str, fast_error: yaml.YAMLError) -> NoReturn:
    """`ContentInvalid` for a file the loader refused, worded as the pure-Python parser words it."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            yaml.SafeLoader(text).construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        context_mark = getattr(exc, "context_mark", None)
        if mark is None or (context_mark is not None and mark.index >= len(text)):
            # "unexpected end of stream" (an unclosed quote or bracket) is found past the last
            # line; the construct that was never closed starts at the context mark.
            mark = context_mark
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        reason = f"invalid YAML: {problem}" + (f" ({context})" if context else "")
        raise ContentInvalid(ContentError(name, mark.line + 1 if mark else None, reason)) from exc
    # Only libyaml refused it (the parsers differ on a few corner cases): its own words and line.
    mark = getattr(fast_error, "problem_mark", None)
    reason = f"invalid YAML: {getattr(fast_error, 'problem', None) or fast_error}"
    raise ContentInvalid(ContentError(name, mark.line + 1 if mark else None, reason)) from fast_error
