"""StackStorm-compatible Jinja rendering: the one place templates are compiled and rendered.

Packs written for StackStorm carry Jinja expressions in action parameters, rule criteria,
alias formats and chains, and they rely on StackStorm's exact filter set and semantics
(``st2common/util/jinja.py`` and ``st2common/expressions/functions/*.py``).  Keeping every
filter, the datastore lookup objects and the ``render_values`` rules here means a pack renders
the same way wherever Squall evaluates it.

Differences from StackStorm are deliberate and limited to safety and speed: templates run in
a :class:`jinja2.sandbox.SandboxedEnvironment` (template text comes from chat users and
third-party packs), and compiled templates are cached so hot paths do not re-parse.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import itertools
import json
import math
import operator
import os.path
import re
import sys
import threading
import time
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, Mapping, MutableMapping, ValuesView
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import jinja2
import yaml
from jinja2 import meta, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import LoopContext
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import Namespace, generate_lorem_ipsum

from engine import patterns
from engine.config import TemplateLimits
from engine.crypto import NotEncrypted
from engine.yamlfile import AliasesTooLarge, expanded_size

if TYPE_CHECKING:
    import semver

__all__ = [
    "BRIEF_SECONDS",
    "NONE_MAGIC_VALUE",
    "KVNamespace",
    "KVValue",
    "TemplateLimitError",
    "TemplateLimits",
    "TemplateRenderError",
    "TooLongForTheLoop",
    "briefly",
    "build_environment",
    "compiled",
    "configure_limits",
    "end_budget",
    "is_jinja_expression",
    "render_pool",
    "render_template",
    "render_value",
    "render_values",
    "rendered",
    "start_budget",
    "stop_renders",
    "tick",
    "undeclared_variables",
]

#: StackStorm's stand-in for ``None``: the ``use_none`` filter emits it because a rendered
#: template is always text, and parameter casting later turns it back into ``None``.
NONE_MAGIC_VALUE = "%*****__%NONE%__*****%"

_JINJA_START_MARKERS = ("{{", "{%")

#: A dict or list leaf that is exactly one bare reference (`"{{items}}"`): as in StackStorm, it takes
#: the referenced value with its type (int, list, dict...); any other leaf renders as a string.
_WHOLE_REFERENCE = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}")

_TEMPLATE_CACHE_SIZE = 2048
_ERROR_TEMPLATE_PREVIEW = 500


class TemplateRenderError(Exception):
    """A template could not be compiled or rendered.

    One exception type for syntax errors, undefined variables, sandbox violations and filter
    failures, so callers handle "bad template" once; the original error is ``__cause__``.
    ``template`` is the offending text and ``key`` the parameter name when known.
    """

    def __init__(self, message: str, *, template: str | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.template = template
        self.key = key


class TemplateLimitError(TemplateRenderError):
    """A template went past `templates.max_output_chars` or `templates.max_seconds`.

    `reason` names the limit and the config key without quoting the template, so it may be
    shown where the template itself may not (a secret parameter's value)."""

    def __init__(self, message: str, *, reason: str | None = None, template: str | None = None,
                 key: str | None = None) -> None:
        super().__init__(message, template=template, key=key)
        self.reason = reason or message


# --------------------------------------------------------------------------------------------
# Datastore lookups (st2kv.system.* / st2kv.user.*)
# --------------------------------------------------------------------------------------------


def _join_key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _lookup(getter: Callable[[str], str | None], key: str) -> str:
    value = getter(key)
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


class KVValue(str):
    """The value of one datastore key, usable as a plain string in templates.

    StackStorm templates treat ``st2kv.system.a.b`` both as text (render it, compare it, pipe
    it into ``from_json_string``) and as a path (``.b`` goes one level deeper to key
    ``a.b``).  A ``str`` subclass gives the first for free; attribute and item access give the
    second.  The value is looked up when the object is created, i.e. at access time, and a
    missing key reads as ``""`` rather than an error, as in StackStorm.

    Inside templates every non-underscore attribute is a key (even ``title`` or ``count``, see
    :meth:`_SquallSandbox.getattr`), matching StackStorm where lookups are not strings.  From
    Python, ``__getattr__`` only sees names that are not ``str`` methods, so filters that call
    ``value.upper()`` keep working.  Underscore names are never keys: that keeps the sandbox's
    rule intact and lets copy/pickle/jinja internals probe dunder attributes safely.
    """

    _kv_key: str
    _kv_getter: Callable[[str], str | None]
    _kv_label: str

    def __new__(
        cls,
        value: str,
        key: str,
        getter: Callable[[str], str | None],
        label: str = "st2kv.system",
    ) -> KVValue:
        obj = super().__new__(cls, value)
        obj._kv_key = key
        obj._kv_getter = getter
        obj._kv_label = label
        return obj

    def __getnewargs__(self) -> tuple[Any, ...]:  # type: ignore[override]
        # copy/pickle rebuild str subclasses from these arguments; str's default gives only the
        # text, which would not satisfy __new__.
        return (str(self), self._kv_key, self._kv_getter, self._kv_label)

    def _kv_child(self, name: str) -> KVValue:
        key = _join_key(self._kv_key, name)
        return KVValue(_lookup(self._kv_getter, key), key, self._kv_getter, self._kv_label)

    def _kv_full_name(self) -> str:
        return _join_key(self._kv_label, self._kv_key)

    def __getattr__(self, name: str) -> KVValue:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._kv_child(name)

    def __getitem__(self, item: Any) -> Any:  # type: ignore[override]
        if isinstance(item, str):
            return self._kv_child(item)
        return str.__getitem__(self, item)


class KVNamespace:
    """The root of one datastore scope, e.g. ``st2kv.system`` or ``st2kv.user``.

    ``getter`` maps a key name to its stored (already scope-resolved) value or ``None``; the
    user scope passes a getter that prefixes ``<user>:``, so this class stays storage-agnostic.
    ``prefix`` starts lookups below a key path and ``label`` names the scope in error messages.
    """

    def __init__(
        self,
        getter: Callable[[str], str | None],
        prefix: str = "",
        label: str = "st2kv.system",
    ) -> None:
        self._kv_getter = getter
        self._kv_prefix = prefix
        self._kv_label = label

    def _kv_child(self, name: str) -> KVValue:
        key = _join_key(self._kv_prefix, name)
        return KVValue(_lookup(self._kv_getter, key), key, self._kv_getter, self._kv_label)

    def __getattr__(self, name: str) -> KVValue:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._kv_child(name)

    def __getitem__(self, name: str) -> KVValue:
        if not isinstance(name, str):
            raise KeyError(name)
        return self._kv_child(name)

    def __str__(self) -> str:
        # A bare namespace has no value of its own; StackStorm renders it as an empty string.
        return ""

    def __repr__(self) -> str:
        return f"KVNamespace(label={self._kv_label!r}, prefix={self._kv_prefix!r})"


# --------------------------------------------------------------------------------------------
# Filters (st2common/expressions/functions/*)
# --------------------------------------------------------------------------------------------


class _YamlDumper(yaml.SafeDumper):
    """SafeDumper that also accepts ``str`` subclasses (KVValue, markupsafe.Markup).

    ``yaml.safe_dump`` looks representers up by exact type and rejects subclasses, so a
    datastore value piped into ``to_yaml_string`` would otherwise fail.
    """


_YamlDumper.add_multi_representer(str, yaml.representer.SafeRepresenter.represent_str)


def _text(value: Any) -> str:
    return value if type(value) is str else str(value)


def from_json_string(value: Any) -> Any:
    return json.loads(_text(value))


def from_yaml_string(value: Any) -> Any:
    """`yaml.safe_load` of the text, within the render's limits (`_BoundedYamlLoader`): PyYAML builds what
    it reads in Python, node by node, so a text no longer than the limit is read, within the deadline."""
    text = _text(value)
    cap = _limits.max_output_chars
    if len(text) > cap:
        reason = (f"the text given to from_yaml_string is {len(text)} characters long; YAML is read from at most "
                  f"{cap} characters, the limit set by templates.max_output_chars in the config")
        raise TemplateLimitError(reason, reason=reason)
    loader = _BoundedYamlLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


if TYPE_CHECKING:
    _YamlLoader = yaml.SafeLoader
else:  # libyaml's parser where PyYAML was built with it: it reads text in C, ~5 times as fast
    _YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

#: The most parts a sexagesimal whole number (`1:30:00`) may have in YAML read by a template: PyYAML
#: adds them up as a whole number growing by a factor of 60 at each, so its time grows with their
#: square (100,000 parts took 4.5 s); 2150 make at most ~3,800 digits, within the 4,300 Python reads a
#: whole number from text with.
_SEXAGESIMAL_PARTS = 2150


class _BoundedYamlLoader(_YamlLoader):
    """PyYAML's safe loader within a render's limits. Why: it builds what it reads in Python, where the
    sandbox does not look, from text a template does not choose (a payload, an action's output).

    The deadline is checked at each node as it is read (`resolve`, which libyaml's parser calls too) and
    made (`construct_object`); the keys of each mapping are weighed before they are hashed, as `dict()`'s
    are (`_check_keys`: 20,000 keys of one hash value took 3.9 s); aliases may not repeat what their
    anchors name past the limit (`_check_yaml_aliases`); sexagesimal numbers have few parts."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._squall_anchored = "&" in stream  # no anchor, no alias

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        _tick()
        return super().resolve(kind, value, implicit)

    def construct_document(self, node: Any) -> Any:
        if self._squall_anchored:
            _check_yaml_aliases(node)
        return super().construct_document(node)

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        _tick()
        return super().construct_object(node, deep)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)  # merge keys (`<<: *defaults`) first: their keys are hashed too
            _check_keys([self.construct_object(key, deep) for key, _ in node.value], "from_yaml_string")
        return super().construct_mapping(node, deep)

    def construct_bounded_int(self, node: Any) -> Any:
        parts = str(self.construct_scalar(node)).count(":") + 1
        if parts > _SEXAGESIMAL_PARTS:
            reason = (f"from_yaml_string read a sexagesimal number of {parts} parts (as 1:30:00 is); YAML read by a "
                      f"template may have at most {_SEXAGESIMAL_PARTS} (~3,800 digits; Python reads a whole number of "
                      "at most 4,300 from text)")
            raise TemplateLimitError(reason, reason=reason)
        return self.construct_yaml_int(node)


_BoundedYamlLoader.add_constructor("tag:yaml.org,2002:int", _BoundedYamlLoader.construct_bounded_int)


def _check_yaml_aliases(root: yaml.Node) -> None:
    """Refuses a YAML document whose aliases repeat what their anchors name past the limit: PyYAML makes
    each node once, whatever refers to it, so nine lists of nine aliases of the one before are small, but
    a terabyte wherever it is printed or stored (a workflow's result). Measured as pack files are
    (`engine.yamlfile.expanded_size`, the one rule), with the render's deadline at each node."""
    cap = _limits.max_output_chars
    try:
        expanded_size(root, cap, _tick)
    except AliasesTooLarge as exc:
        if exc.endless:
            reason = ("the YAML given to from_yaml_string has an alias inside the node its anchor names: a value "
                      "that holds itself, without end when printed or stored")
        else:
            reason = (f"the aliases of the YAML given to from_yaml_string repeat what their anchors name to more "
                      f"than {cap} characters or list items, the limit set by templates.max_output_chars in the "
                      "config")
        raise TemplateLimitError(reason, reason=reason) from None


def to_json_string(
    value: Any,
    indent: int | None = None,
    sort_keys: bool = False,
    separators: tuple[str, str] | None = (",", ": "),
) -> str:
    options: dict[str, Any] = {}
    if indent is not None:
        options["indent"] = indent
    if sort_keys is not None:
        options["sort_keys"] = sort_keys
    if separators is not None:
        options["separators"] = tuple(separators)
    return json.dumps(value, **options)


def to_yaml_string(value: Any, indent: int | None = None, allow_unicode: bool = True) -> str:
    options: dict[str, Any] = {"default_flow_style": False}
    if indent is not None:
        options["indent"] = indent
    if allow_unicode is not None:
        options["allow_unicode"] = allow_unicode
    return yaml.dump(value, Dumper=_YamlDumper, **options)


def json_escape(value: Any) -> str:
    """Escape text for embedding inside a JSON string literal (json.dumps minus the quotes)."""
    return json.dumps(value).strip('"')


@functools.lru_cache(maxsize=256)
def _jsonpath(query: str) -> Any:
    import jsonpath_ng.ext  # at the first `jsonpath_query`, not at start (~10 ms)

    # jsonpath_ng builds a PLY parser per call; parsed expressions are immutable and reusable.
    return jsonpath_ng.ext.parse(query)


def jsonpath_query(value: Any, query: str) -> list[Any] | None:
    matches = [match.value for match in _jsonpath(_text(query)).find(value)]
    return matches or None


def to_complex(value: Any) -> str:
    return json.dumps(value)


def _regex_flags(ignorecase: bool) -> int:
    return patterns.IGNORECASE if ignorecase else 0


# The regex filters run a pack author's pattern over whatever a template is given (a payload):
# bounded in time by `engine.patterns`.
def regex_match(value: Any, pattern: str, ignorecase: bool = False) -> bool:
    return bool(patterns.match(pattern, _text(value), _regex_flags(ignorecase)))


def regex_search(value: Any, pattern: str, ignorecase: bool = False) -> bool:
    return bool(patterns.search(pattern, _text(value), _regex_flags(ignorecase)))


def regex_replace(value: Any, pattern: str, replacement: str, ignorecase: bool = False) -> str:
    return patterns.sub(pattern, replacement, _text(value), _regex_flags(ignorecase))


def regex_substring(value: Any, pattern: str, result_index: int = 0, ignorecase: bool = False) -> Any:
    """The ``result_index``-th ``findall`` result; no match raises IndexError, as in StackStorm."""
    return patterns.findall(pattern, _text(value), _regex_flags(ignorecase))[result_index]


_TIME_UNITS = (("y", 365 * 86400), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def to_human_time_from_seconds(seconds: int | float) -> str:
    """Compact duration such as ``3h25m45s``, starting at the first non-zero unit.

    Sub-second values are shown in microseconds; larger floats are rounded to whole seconds.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"to_human_time_from_seconds expects a number of seconds, got {seconds!r}")
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{int(seconds * 1_000_000)}\u03bcs"
    remaining = round(seconds) if isinstance(seconds, float) else seconds
    parts: list[str] = []
    for suffix, size in _TIME_UNITS:
        amount, remaining = divmod(remaining, size)
        if amount or parts:
            parts.append(f"{amount}{suffix}")
    return "".join(parts) or "0s"


def use_none(value: Any) -> Any:
    return NONE_MAGIC_VALUE if value is None else value


def _version(value: Any) -> semver.Version:
    import semver  # at the first `version_*` filter, not at start (~5 ms)

    return semver.Version.parse(_text(value))


def version_compare(value: Any, pattern: Any) -> int:
    return _version(value).compare(_text(pattern))


def version_more_than(value: Any, pattern: Any) -> bool:
    return version_compare(value, pattern) == 1


def version_less_than(value: Any, pattern: Any) -> bool:
    return version_compare(value, pattern) == -1


def version_equal(value: Any, pattern: Any) -> bool:
    return version_compare(value, pattern) == 0


def version_match(value: Any, pattern: Any) -> bool:
    return _version(value).match(_text(pattern))


def version_bump_major(value: Any) -> str:
    return str(_version(value).bump_major())


def version_bump_minor(value: Any) -> str:
    return str(_version(value).bump_minor())


def version_bump_patch(value: Any) -> str:
    return str(_version(value).bump_patch())


def version_strip_patch(value: Any) -> str:
    parsed = _version(value)
    return f"{parsed.major}.{parsed.minor}"


def basename(path: Any) -> str:
    return os.path.basename(_text(path))


def dirname(path: Any) -> str:
    return os.path.dirname(_text(path))


def _decrypt_kv(decrypt: Callable[[str], str] | None, value: Any) -> str:
    """StackStorm's ``decrypt_kv``: decrypt a datastore value, naming the key when it is empty."""
    text = "" if value is None else _text(value)
    if not text:
        name = value._kv_full_name() if isinstance(value, KVValue) else text
        raise jinja2.exceptions.TemplateRuntimeError(
            f'Referenced datastore item "{name}" doesn\'t exist or it contains an empty string'
        )
    if decrypt is None:
        raise jinja2.exceptions.TemplateRuntimeError(
            "decrypt_kv: datastore decryption is not configured for this template environment"
        )
    try:
        return decrypt(text)
    except NotEncrypted:  # a plain value, which is not quoted: it may be a secret stored in clear by mistake
        what = f'datastore item "{value._kv_full_name()}"' if isinstance(value, KVValue) else "the value"
        raise jinja2.exceptions.TemplateRuntimeError(
            f"decrypt_kv: {what} is not encrypted (the key was stored without encryption): drop | decrypt_kv "
            "to use it as it is, or store the key encrypted (squall key set --encrypt, st2 key set --encrypt, "
            "or secret: true in the API)"
        ) from None


def _filters(decrypt: Callable[[str], str] | None) -> dict[str, Callable[..., Any]]:
    return {
        "decrypt_kv": functools.partial(_decrypt_kv, decrypt),
        "from_json_string": from_json_string,
        "from_yaml_string": from_yaml_string,
        "json_escape": json_escape,
        "jsonpath_query": jsonpath_query,
        "to_complex": to_complex,
        "to_json_string": to_json_string,
        "to_yaml_string": to_yaml_string,
        "regex_match": regex_match,
        "regex_replace": regex_replace,
        "regex_search": regex_search,
        "regex_substring": regex_substring,
        "to_human_time_from_seconds": to_human_time_from_seconds,
        "version_compare": version_compare,
        "version_more_than": version_more_than,
        "version_less_than": version_less_than,
        "version_equal": version_equal,
        "version_match": version_match,
        "version_bump_major": version_bump_major,
        "version_bump_minor": version_bump_minor,
        "version_bump_patch": version_bump_patch,
        "version_strip_patch": version_strip_patch,
        "use_none": use_none,
        "basename": basename,
        "dirname": dirname,
    }


# --------------------------------------------------------------------------------------------
# Limits: what one render may make and how long it may take
# --------------------------------------------------------------------------------------------

#: Templates longer than this are compiled for each use instead of kept in the compiled-template cache.
_CACHED_TEMPLATE_MAX = 64 * 1024


_limits = TemplateLimits()


def configure_limits(limits: TemplateLimits) -> None:
    """Set the limits every render in this process keeps to (the service sets its config's at start)."""
    global _limits
    _limits = limits


def current_limits() -> TemplateLimits:
    return _limits


#: Set when Squall closes (`stop_renders`): the renders under way then stop at their next step.
_stopping = threading.Event()


class _Budget:
    """One render's deadline, and what it has made so far (`_count_made`); renders nested inside it
    share it, and a `brief` one is the event loop's. It keeps the `_stopping` of when it started: a
    render Squall's close stopped stays stopped, one of a Squall started after runs."""

    __slots__ = ("brief", "deadline", "grown", "made", "seconds", "stopping")

    def __init__(self, seconds: float, brief: bool = False) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.brief = brief
        self.made = 0
        self.grown: list[Any] = []  # the last texts and lists `~` and `+` made (`_count_growth`)
        self.stopping = _stopping


_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("squall_template_budget", default=None)


def _start_budget() -> contextvars.Token[_Budget | None] | None:
    """A budget for the render about to start, unless one is running (a nested render shares it)."""
    return _budget.set(_Budget(_limits.max_seconds)) if _budget.get() is None else None


def _end_budget(token: contextvars.Token[_Budget | None] | None) -> None:
    if token is not None:
        _budget.reset(token)


def _tick() -> None:
    """Called at every step the sandbox sees (calls, attributes, operators, loop items, output)."""
    budget = _budget.get()
    if budget is None:
        return
    if budget.stopping.is_set():
        reason = "the template was stopped because Squall is stopping"
        raise TemplateLimitError(reason, reason=reason)
    if time.monotonic() > budget.deadline:
        if budget.brief:
            raise TooLongForTheLoop
        reason = (f"the template ran longer than {budget.seconds:g} s, the limit set by templates.max_seconds "
                  "in the config")
        raise TemplateLimitError(reason, reason=reason)


#: The same budget for what evaluates beside Jinja (Orquesta's and Mistral's YAQL, `workflows/expressions.py`):
#: started around an evaluation (one nested in a render shares it), its deadline checked at each step.
start_budget, end_budget, tick = _start_budget, _end_budget, _tick


# --------------------------------------------------------------------------------------------
# Where renders run: briefly on the event loop, else on a render thread
# --------------------------------------------------------------------------------------------

#: How long a render may hold the event loop before it is given up there and done on a render thread.
BRIEF_SECONDS = 0.02
#: Threads that render what may take long (parameter templates, and renders too long for the loop).
_RENDER_THREADS = 4
T = TypeVar("T")


class TooLongForTheLoop(Exception):
    """A render run with `briefly` went past `BRIEF_SECONDS`: do it again on a render thread."""


@functools.cache
def render_pool() -> ThreadPoolExecutor:
    """The process's render threads: few (templates are CPU work under the GIL), and apart from
    asyncio's default pool and the database thread, so slow templates only wait for each other."""
    return ThreadPoolExecutor(max_workers=_RENDER_THREADS, thread_name_prefix="squall-render")


def stop_renders() -> None:
    """At Squall's close: stop what runs on the render threads at its next step, and drop what waits
    for one. Their threads are joined when the interpreter exits, so a workflow step or template still
    running (each up to `templates.max_seconds`, a step of many) would hold a stopping Squall up. The
    next `render_pool()` is a new pool (tests start and close Squall many times in one process)."""
    global _stopping
    _stopping.set()
    if render_pool.cache_info().currsize:
        render_pool().shutdown(wait=False, cancel_futures=True)
        render_pool.cache_clear()
    _stopping = threading.Event()


def briefly(render: Callable[..., T], *args: Any) -> T:
    """`render(*args)` within `BRIEF_SECONDS` for the templates it renders, or `TooLongForTheLoop`:
    for renders on the event loop, which nearly all take microseconds, where a pack's slow template or
    a loop over a huge result would stop every other chat command and request for up to
    `templates.max_seconds`. `render` must only render (it may be called again elsewhere)."""
    token = _budget.set(_Budget(BRIEF_SECONDS, brief=True))
    try:
        return render(*args)
    finally:
        _budget.reset(token)


async def rendered(render: Callable[..., T], *args: Any, on_loop: bool = True) -> T:
    """`render(*args)` on the event loop if it is brief (`briefly`), else on a render thread with the
    whole `templates.max_seconds` (at once, without `on_loop`: it was found too long already)."""
    if on_loop:
        try:
            return briefly(render, *args)
        except TooLongForTheLoop:
            pass
    return await asyncio.get_running_loop().run_in_executor(render_pool(), render, *args)


def _too_big(what: str) -> NoReturn:
    limit = _limits.max_output_chars
    reason = (f"{what} would be longer than {limit} characters, the limit set by templates.max_output_chars "
              "in the config")
    raise TemplateLimitError(reason, reason=reason)


def _too_much_work(what: str) -> NoReturn:
    limit = _limits.max_output_chars
    reason = (f"{what} would go through more than {limit} characters or list items, the limit set by "
              "templates.max_output_chars in the config")
    raise TemplateLimitError(reason, reason=reason)


#: What one render may make in all, as a multiple of `templates.max_output_chars`: the text and list
#: items that filters, calls, `~`, `+`, `*` and slices return. Each value alone is held to the limit;
#: without a total, a million values each within it (`xs|map('list')|list`) were gigabytes.
_MADE_PER_RENDER = 8


def _count_made(size: int, what: str) -> None:
    """Adds `size` characters or list items just made to what this render has made in all (its
    `_Budget`, as the deadline is), refused past `_MADE_PER_RENDER` times the limit."""
    budget = _budget.get()
    if budget is None:
        return
    budget.made += size
    limit = _MADE_PER_RENDER * _limits.max_output_chars
    if budget.made > limit:
        reason = (f"{what} would take what the template made in all past {limit} characters or list items, "
                  f"{_MADE_PER_RENDER} times templates.max_output_chars in the config")
        raise TemplateLimitError(reason, reason=reason)


#: How many of the texts and lists `~` and `+` made last a render keeps as what may be grown (`_count_growth`).
_GROWN_KEPT = 4
#: The references `_count_growth` itself adds to `base`: its argument, the budget's `grown` list and
#: `sys.getrefcount`'s argument (CPython's counts, as this interpreter keeps them).
_OWN_REFS = 3


def _count_growth(result: Any, base: Any, what: str, held: int) -> None:
    """Counts what `~` or `+` just made toward the render's total: only what it added to `base` (the
    longest operand of its kind) when `base` is what an earlier `~` or `+` made and the template holds it
    nowhere else, so is about to drop it (`ns.out = ns.out ~ line`); else all of it. `held` is how
    many references the caller holds to `base` (its parts, its names); one more is the template's.

    Why: counting the whole text at each step made a text built line by line cost the square of its
    length (25 KB of lines was refused); a copy kept besides its source (`ns.l.append(s ~ i)`, a tuple
    of every version) is new memory, and is counted whole."""
    budget = _budget.get()
    if budget is None:
        return
    grown = budget.grown
    size = len(result)
    accumulated = base is not None and any(kept is base for kept in grown)
    if accumulated and sys.getrefcount(base) <= 1 + held + _OWN_REFS:
        size -= len(base)
    _count_made(size, what)
    grown.append(result)
    if len(grown) > _GROWN_KEPT:
        del grown[0]


_SEQUENCES = (str, bytes, bytearray, list, tuple)
_SIZED = (*_SEQUENCES, dict, set, frozenset)
#: What `*`, `+` and `%` make that counts toward what a render makes in all (not numbers).
_MADE_BY_OPERATORS = frozenset({str, list, tuple})
#: Methods that return what their object holds, not something they made (`d.get('k')`).
_PICKING_METHODS = frozenset({"get", "pop", "popitem", "setdefault"})
#: What `str()` prints item by item (besides dicts and text).
_VIEWS = (list, tuple, set, frozenset, KeysView, ValuesView, ItemsView)


def _weight(value: Any, cap: int, indent: int = 0) -> int:
    """About how many characters `str(value)` (or its JSON, indented by `indent`) takes, counted only
    until past `cap`: a list holding one long string a million times is refused after two steps,
    not printed."""
    if isinstance(value, str):
        return len(value)
    if indent:
        return _weight_indented(value, cap, indent)
    total = 0
    stack = [value]
    pop, extend = stack.pop, stack.extend
    while stack:
        item = pop()
        kind = item.__class__
        if kind is str:
            total += len(item) + 2
        elif kind is dict or isinstance(item, dict):
            total += 2 + 4 * len(item)
            if total > cap:
                return total
            extend(item)
            extend(item.values())
        elif kind is list or kind is tuple or isinstance(item, _VIEWS):
            total += 2 + 2 * len(item)
            if total > cap:
                return total
            extend(item)
        elif isinstance(item, str | bytes | bytearray):
            total += len(item) + 2
        elif isinstance(item, int):
            total += item.bit_length() * 3 // 10 + 1
        elif isinstance(item, Namespace):
            stack.append(item._Namespace__attrs)
        else:
            total += 8
        if total > cap:
            return total
    return total


def _weight_indented(value: Any, cap: int, indent: int) -> int:
    """`_weight` of JSON or YAML indented by `indent` characters per level."""
    total = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        total += indent * depth
        if isinstance(item, str | bytes | bytearray):
            total += len(item) + 2
        elif isinstance(item, dict):
            total += 2 + 4 * len(item)
            if total > cap:
                return total
            stack.extend((key, depth + 1) for key in item)
            stack.extend((entry, depth + 1) for entry in item.values())
        elif isinstance(item, _VIEWS):
            total += 2 + 2 * len(item)
            if total > cap:
                return total
            stack.extend((entry, depth + 1) for entry in item)
        elif isinstance(item, int):
            total += item.bit_length() * 3 // 10 + 1
        elif isinstance(item, Namespace):
            stack.append((item._Namespace__attrs, depth))
        else:
            total += 8
        if total > cap:
            return total
    return total


def _check_value(value: Any, what: str, indent: int = 0) -> None:
    if isinstance(value, str):
        if len(value) > _limits.max_output_chars:
            _too_big(what)
    elif value is not None and not isinstance(value, int | float):  # a number prints at most 4,300 digits
        cap = _limits.max_output_chars
        if _weight(value, cap, indent) > cap:
            _too_big(what)


def _check_made(value: Any, what: str, counted: bool = True) -> None:
    """After the fact, for what a call or filter returned: its length (not its contents), also counted
    toward what the render makes in all unless it is not new (`counted`: an item the template had)."""
    if isinstance(value, _SIZED):
        size = len(value)
        if size > _limits.max_output_chars:
            _too_big(what)
        if counted:
            _count_made(size, what)


def _materialise(value: Any, what: str) -> Any:
    """`value` itself when it has a length, else its items in a list (refused past the limit, counted
    toward what the render makes in all)."""
    if isinstance(value, (*_SIZED, *_VIEWS, range)):
        return value
    items = list(itertools.islice(iter(value), _limits.max_output_chars + 1))
    if len(items) > _limits.max_output_chars:
        _too_big(what)
    _count_made(len(items), what)
    return items


#: What compares at once whatever it holds (a whole number is measured by its size, text by its length).
_FLAT = frozenset({bool, float, type(None)})
#: What `_leaf_work` measures itself.
_LEAVES = frozenset({str, int, bool})
#: What `_work` looks into; anything else counts one.
_WALKED = (str, bytes, bytearray, int, dict, *_VIEWS, Namespace)


def _work(value: Any, cap: int, prone: list[Any] | None = None) -> int:
    """About how many items and characters comparing (or adding up) `value` goes through, counted only
    until past `cap`: each item of a list or dict, each character of a text, each 64 bits of a number.

    Unlike `_weight` (the length of its text), a number or None counts one, so a long list of ids from a
    payload compares as before; a list holding one long list many times counts it each time, as a
    comparison in C goes through it each time, holding the GIL where no deadline reaches.

    With `prone`, `value` is a list of keys about to be hashed (`_keys_work`), and its items whose hash
    values others may share (`_collision_prone`) are added to `prone` in the same passes."""
    total = 0
    stack = [value]
    pop, extend = stack.pop, stack.extend
    while stack:
        item = pop()
        kind = item.__class__
        if kind is str:
            total += len(item)
        elif kind is int:
            total += item.bit_length() >> 6
        elif kind is list or kind is tuple:
            total += len(item)
            if total > cap:
                return total
            if len(item) > 32:
                total += _flat_work(item, stack, cap - total, prone if item is value else None)
            else:
                extend(item)
        elif kind is dict:
            total += len(item)
            extend(item)
            extend(item.values())
        elif kind not in _FLAT:
            total += _other_work(item, stack)
        if total > cap:
            return total
    return total


def _flat_work(items: list[Any] | tuple[Any, ...], stack: list[Any], cap: int, prone: list[Any] | None = None) -> int:
    """`_work` of the items of a long list, worked out in C as far as it can be (a hundred thousand ids
    or rows of an API's answer take milliseconds, not a Python step each); the rest goes on `stack`.
    `prone` as for `_work` (rows are no keys: a dict cannot be hashed)."""
    kinds = set(map(type, items))
    if kinds == {dict}:  # rows: their keys and values, gathered in C once their count is known to be within `cap`
        entries = sum(map(len, items))
        if entries > cap:
            return entries
        keys = list(itertools.chain.from_iterable(items))
        values = list(itertools.chain.from_iterable(map(dict.values, items)))
        return _leaf_work(keys, stack, set(map(type, keys))) + _leaf_work(values, stack, set(map(type, values)))
    return _leaf_work(items, stack, kinds, prone)


def _leaf_work(items: list[Any] | tuple[Any, ...], stack: list[Any], kinds: set[type],
               prone: list[Any] | None = None) -> int:
    """`_work` of `items` (of the types `kinds`) when they are texts, whole numbers and what `_work` does
    not look into (each of those counts one, as its container's length); else they go on `stack`.
    `prone` as for `_work`: found from the same types, and the same pass over the numbers' sizes."""
    if any(kind not in _LEAVES and issubclass(kind, _WALKED) for kind in kinds):
        stack.extend(items)
        if prone is not None:
            prone.extend(_collision_prone(items, kinds))
        return 0
    texts = items if kinds == {str} else _of_type(items, str) if str in kinds else ()
    whole = items if kinds <= {int, bool} else _of_type(items, int) if int in kinds else ()
    if prone is None:
        return sum(map(len, texts)) + (sum(map(int.bit_length, whole)) >> 6)
    whole = whole if whole is items else list(whole)  # gone through twice: sizes, then the big ones
    lengths = _bit_lengths(whole)
    prone.extend(_big_numbers(whole, lengths))
    if not kinds <= _LEAVES:  # floats, and what `_work` does not look into
        prone.extend(_collision_prone(items, kinds, whole=False))
    bits = sum(lengths) if lengths is not None else sum(map(int.bit_length, whole))
    return sum(map(len, texts)) + (bits >> 6)


def _of_type(items: list[Any] | tuple[Any, ...], kind: type) -> Iterator[Any]:
    """The items of exactly type `kind`, picked in C."""
    return itertools.compress(items, map(operator.is_, map(type, items), itertools.repeat(kind)))


def _other_work(item: Any, stack: list[Any]) -> int:
    """`_work` of what is not a plain str, int, list, tuple or dict (subclasses, sets, views, a
    namespace): its own share, with its items put on `stack`."""
    if isinstance(item, str | bytes | bytearray):
        return len(item)
    if isinstance(item, int):
        return item.bit_length() >> 6
    if isinstance(item, dict):
        stack.extend(item)
        stack.extend(item.values())
        return len(item)
    if isinstance(item, _VIEWS):
        stack.extend(item)
        return len(item)
    if isinstance(item, Namespace):
        stack.append(item._Namespace__attrs)
    return 1


#: Jinja's names of the comparison operators, with what each does and how a template writes it.
_ORDERINGS: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq, "ne": operator.ne, "gt": operator.gt, "gteq": operator.ge, "lt": operator.lt,
    "lteq": operator.le,
}
_SYMBOLS = {"eq": "==", "ne": "!=", "gt": ">", "gteq": ">=", "lt": "<", "lteq": "<=", "in": "in", "notin": "not in"}
#: What compares item by item (text compares as one block of memory: at once, whatever its length).
_COMPOSITE = (list, tuple, dict, set, frozenset)
#: What nearly every comparison in a template has on one side, and compares at once: no more to check.
_AT_ONCE = frozenset({str, int, float, bool, type(None)})
#: What `in` looks an item up in by its hash: only the item is gone through (hashed, compared once).
_HASHED = (dict, set, frozenset, KeysView, ItemsView)


def _compare(left: Any, op: str, right: Any) -> Any:
    """`left <op> right` (Jinja's name of the operator), refused first when it could go through more
    than the limit: a comparison is one C call, so neither the deadline nor the sizes of what it
    compares (each within the limit, `[0] * 1000000` held fifteen thousand times) stopped it.

    Cheap for what templates compare: numbers, text and a small list are compared at once; two lists
    or dicts are gone through (`_work`) only until one is found within the limit."""
    ordering = _ORDERINGS.get(op)
    if ordering is None:  # in, not in
        if right.__class__ is not str:
            right = _containment(left, right, f"comparing with {_SYMBOLS[op]}")
        return left not in right if op == "notin" else left in right
    if left.__class__ not in _AT_ONCE and right.__class__ not in _AT_ONCE and isinstance(left, _COMPOSITE) \
            and isinstance(right, _COMPOSITE):
        cap = _limits.max_output_chars
        small, large = (left, right) if len(left) <= len(right) else (right, left)
        if _work(small, cap) > cap and _work(large, cap) > cap:
            _too_much_work(f"comparing with {_SYMBOLS[op]}")
    return ordering(left, right)


def _containment(item: Any, container: Any, what: str) -> Any:
    """The container `in` (or `what`, e.g. `list.index`) looks `item` up in, refused when the look-up
    could go through more than the limit: a list compares `item` with each of its items, a dict or set
    hashes it. What Python's `in` goes through item by item (an iterator) comes back as `_searched`."""
    cap = _limits.max_output_chars
    kind = container.__class__
    if (kind is list or kind is tuple) and len(container) * (1 + _item_work(item, cap)) <= cap:
        return container  # the common cases, decided without walking anything
    if kind is dict or kind is set or kind is frozenset:
        _check_key(item, what)
        return container
    if not hasattr(kind, "__contains__") and hasattr(kind, "__iter__"):  # Python's `in` goes through it
        return _searched(item, iter(container), what)
    if isinstance(container, list | tuple | ValuesView):
        if len(container) * (1 + _item_work(item, cap)) > cap and _work(container, cap) > cap:
            _too_much_work(what)
    elif isinstance(container, _HASHED):
        _check_key(item, what)
    return container


def _searched(item: Any, items: Iterator[Any], what: str) -> Iterator[Any]:
    """`items` as `in` takes them, one at a time, each weighed before it is compared with `item`, and
    refused once going through them passes the limit (by the rule `_containment` keeps for a list).

    Why not all at once: `in` stops at the first match, and an iterator is used up as far as it went,
    so `1 in g` then `2 in g` finds both in Python; taking every item first to weigh them left the
    second nothing. The deadline is checked every few items, as a loop's are (`_Paced`)."""
    cap = _limits.max_output_chars
    per_item = 1 + _item_work(item, cap)
    by_item = by_items = 0
    for count, element in enumerate(items, 1):
        if not count & 15:
            _tick()
        by_item += per_item
        by_items += 1 + _item_work(element, cap)
        if by_item > cap and by_items > cap:
            _too_much_work(what)
        yield element


def _item_work(item: Any, cap: int) -> int:
    """`_work(item, cap)`, at once for text and numbers (what `in` nearly always looks for)."""
    kind = item.__class__
    if kind is str:
        return len(item)
    if kind is int:
        return item.bit_length() >> 6
    return 0 if kind in _FLAT else _work(item, cap)


def _check_key(key: Any, what: str) -> None:
    """A key about to be hashed: a tuple's hash goes through all it holds, every time (a str's is kept)."""
    cap = _limits.max_output_chars
    if isinstance(key, tuple | frozenset) and _work(key, cap) > cap:
        _too_much_work(what)


#: Methods that compare their argument with each item, as `in` does, or hash it.
_SCANNING_METHODS = frozenset({"count", "index", "remove"})
_HASHING_METHODS = frozenset({"add", "discard", "get", "pop", "remove", "setdefault"})


def _check_lookup(owner: Any, name: str, args: tuple[Any, ...]) -> None:
    """Calls that compare or hash what they are given in one C call, weighed as `in` and `==` are:
    `list.index`, `dict.get`, `set.add`, `loop.changed`."""
    what = f"{type(owner).__name__}.{name}"
    if isinstance(owner, list | tuple) and name in _SCANNING_METHODS:
        _containment(args[0], owner, what)
    elif isinstance(owner, dict | set | frozenset) and name in _HASHING_METHODS:
        _check_key(args[0], what)
    elif isinstance(owner, LoopContext) and name == "changed":
        cap = _limits.max_output_chars
        if _work(args, cap) > cap:  # compared with the last value given, each time
            _too_much_work("loop.changed")


def _chain(first: Any, *steps: Any) -> Any:
    """`a < b < c` as Python chains it: `steps` are operator names and callables giving the operands,
    each evaluated once, in turn, and only while the comparisons before it hold."""
    left = first
    result: Any = True
    for index in range(0, len(steps), 2):
        right = steps[index + 1]()
        result = _compare(left, steps[index], right)
        if not result:
            return result
        left = right
    return result


_PRINTF_FIELD = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_FORMAT_FIELD = re.compile(r"\{[^{}]*(\{[^{}]*\}[^{}]*)*\}")
_DIGITS = re.compile(r"\d+")


def _int_text(digits: str) -> int:
    return int(digits) if len(digits) <= 18 else 10 ** 18  # int() refuses 4,300+ digits


def _numbers(values: Any) -> Iterator[int]:
    items = values.values() if isinstance(values, dict) else values if isinstance(values, tuple | list) else (values,)
    return (v for v in items if isinstance(v, int) and not isinstance(v, bool))


def _check_printf(fmt: str, args: Any, what: str) -> None:
    """`fmt % args` (and the `format` filter): no width or precision past the limit, nothing too long in."""
    cap = _limits.max_output_chars
    starred = False
    for match in _PRINTF_FIELD.finditer(fmt):
        for part in match.groups():
            if part == "*":
                starred = True
            elif part and _int_text(part) > cap:
                _too_big(what)
    if starred and any(abs(n) > cap for n in _numbers(args)):
        _too_big(what)
    if len(fmt) + _weight(args, cap) > cap:
        _too_big(what)


def _check_str_format(fmt: str, args: tuple[Any, ...], kwargs: dict[str, Any], what: str) -> None:
    """`"{:>{}}".format(...)`: no width in a field past the limit, nothing too long in."""
    cap = _limits.max_output_chars
    nested = False
    for match in _FORMAT_FIELD.finditer(fmt):
        field = match.group(0)
        nested = nested or field.count("{") > 1
        if any(_int_text(digits) > cap for digits in _DIGITS.findall(field)):
            _too_big(what)
    if nested and any(abs(n) > cap for n in itertools.chain(_numbers(args), _numbers(kwargs))):
        _too_big(what)
    if len(fmt) + _weight(args, cap) + _weight(kwargs, cap) > cap:
        _too_big(what)


def _replaced_size(text: str, old: str, new: str, count: Any) -> int:
    found = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and 0 <= count < found:
        found = count
    return len(text) + found * (len(new) - len(old))


def _digits(bits: int) -> int:
    """About how many decimal digits a whole number of `bits` bits has."""
    return bits * 3 // 10


#: Python's own limit on the digits of a whole number turned into text (`sys.int_info`), and here on
#: both the divisor and the quotient of a division.
_BIG_INT_DIGITS = 4300


def _check_division(what: str, left: Any, right: Any) -> None:
    """`left // right` or `left % right` of whole numbers: long division goes through the divisor's
    digits for each digit of the quotient, in one C call (1.8 s for 715,000 digits by 338,000), so the
    two may not both be long; a short divisor or a short quotient is quick whatever the size."""
    if isinstance(left, int) and isinstance(right, int):
        divisor = _digits(right.bit_length())
        quotient = _digits(max(left.bit_length() - right.bit_length(), 0))
        if min(divisor, quotient) > _BIG_INT_DIGITS:
            reason = (f"{what} of a number of about {_digits(left.bit_length())} digits by one of about {divisor} "
                      f"would take too long: a template may divide by a number of more than {_BIG_INT_DIGITS} digits "
                      f"only when the quotient has at most {_BIG_INT_DIGITS} digits")
            raise TemplateLimitError(reason, reason=reason)


def _check_binop(operator: str, left: Any, right: Any) -> None:
    cap = _limits.max_output_chars
    if operator == "*":
        if isinstance(left, int) and isinstance(right, _SEQUENCES):
            left, right = right, left
        if isinstance(left, _SEQUENCES) and isinstance(right, int):
            if len(left) * right > cap:
                _too_big(f"{type(left).__name__} * {right}")
        elif isinstance(left, int) and isinstance(right, int) and _digits(left.bit_length() + right.bit_length()) > cap:
            _too_big("the product")
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and left.bit_length() > 1 \
                and _digits(left.bit_length() * right) > cap:
            _too_big("the power")
    elif operator == "+":
        if isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES) and len(left) + len(right) > cap:
            _too_big("the sum")
    elif operator == "%" and isinstance(left, str):
        _check_printf(left, right, "the formatted text")
    elif operator == "%":
        _check_division("the remainder", left, right)
    elif operator == "//":
        _check_division("the quotient", left, right)


_STR_WIDTHS = frozenset({"center", "ljust", "rjust", "zfill"})
_TEXTS = (str, bytes, bytearray)
_GROWING = frozenset({"extend", "update", "__ior__"})
_ADDING = frozenset({"append", "insert", "add", "setdefault"})


# Complex by nature: one branch per bounded call (str.join, replace, format…).
def _check_call(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:  # noqa: C901
    """What a call from a template would make, before it is made; returns the arguments to use (an
    iterator given to `join` or `extend` is taken into a list first, so it can be measured)."""
    cap = _limits.max_output_chars
    bound = getattr(obj, "__wrapped__", obj)  # str.format comes wrapped by the sandbox
    owner = getattr(bound, "__self__", None)
    name = getattr(bound, "__name__", "")
    if args:
        _check_lookup(owner, name, args)
        args = _check_hashing(bound, owner, name, args)
    if isinstance(owner, _TEXTS):
        what = f"what {'str' if isinstance(owner, str) else type(owner).__name__}.{name} makes"
        if name in _STR_WIDTHS:
            width = args[0] if args else kwargs.get("width")
            if isinstance(width, int) and width > cap:
                _too_big(what)
        elif name == "expandtabs":
            size = args[0] if args else kwargs.get("tabsize", 8)
            if isinstance(size, int) and len(owner) + owner.count("\t") * size > cap:
                _too_big(what)
        elif name == "join" and args:
            items = _materialise(args[0], what)
            if _weight(items, cap) + len(owner) * len(items) > cap:
                _too_big(what)
            args = (items, *args[1:])
        elif name == "replace" and len(args) >= 2 and isinstance(args[0], _TEXTS) and isinstance(args[1], _TEXTS):
            if _replaced_size(owner, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("count")) > cap:
                _too_big(what)
        elif name in ("format", "format_map"):
            _check_str_format(owner, args, kwargs, what)
        elif name == "translate" and args and isinstance(args[0], dict):
            longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
            if len(owner) * longest > cap:
                _too_big(what)
    elif isinstance(owner, int) and name == "to_bytes":
        length = args[0] if args else kwargs.get("length", 1)
        if isinstance(length, int) and length > cap:
            _too_big("what int.to_bytes makes")
    elif isinstance(owner, list | dict | set | bytearray):
        what = f"the {type(owner).__name__} a template grows"
        if name in _GROWING and args:
            items = args[0] if args[0].__class__ is _KeysRead else _materialise(args[0], what)
            if len(owner) + len(items) > cap:
                _too_big(what)
            _count_made(len(items), what)
            args = (items, *args[1:])
        elif name in _ADDING and len(owner) + 1 > cap:
            _too_big(what)
    return args


#: Set methods that hash every item of the iterables they are given (to add them, or to look them up).
_SET_HASHING = frozenset({
    "update", "union", "intersection", "difference", "symmetric_difference", "issubset", "issuperset",
    "isdisjoint", "intersection_update", "difference_update", "symmetric_difference_update",
})


def _check_hashing(bound: Any, owner: Any, name: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """`dict(pairs)`, `dict(mapping)`, `dict.fromkeys(keys)`, `d.update(...)` and a set's `union`,
    `update`... hash every key in one C call: their keys weighed first (`_check_keys`); returns the
    arguments to use (an iterator's items in a list, a mapping's keys read). A dict or set given keeps
    its keys' hashes and is copied with them."""
    if bound is dict or (name == "update" and isinstance(owner, dict)):
        return (_dict_source(args[0], "dict()" if bound is dict else "dict.update"), *args[1:])
    if name == "fromkeys" and isinstance(owner, type) and issubclass(owner, dict):
        given = args[0]
        if given.__class__ in _HASHES_KEPT or not hasattr(type(given), "__iter__"):  # or its own error
            return args
        items = _materialise(given, "what dict.fromkeys is given")
        _check_keys(items, "dict.fromkeys")
        return (items, *args[1:])
    if isinstance(owner, set | frozenset) and name in _SET_HASHING:
        return _set_sources(args, f"set.{name}")
    return args


#: What `dict.fromkeys` and a set's methods take keys from with the hashes they have (CPython's own types).
_HASHES_KEPT = (dict, set, frozenset)


def _dict_source(given: Any, label: str) -> Any:
    """What `dict()` or `dict.update` (`label`) is given, weighed as it will read it, and what to give it:
    a dict keeps its keys' hashes and is copied with them; any other mapping is read through its `keys()`
    (`_KeysRead`); anything else is pairs, each pair's first item a key (`_pairs`)."""
    if isinstance(given, dict) and type(given).__iter__ is dict.__iter__:  # copied as a dict, hashes and all
        return given
    if hasattr(given, "keys"):
        return _KeysRead(given, label)
    if not hasattr(type(given), "__iter__"):  # `dict()`'s own error
        return given
    return _pairs(_materialise(given, f"what {label} is given"), label)


def _set_sources(args: tuple[Any, ...], label: str) -> tuple[Any, ...]:
    """The iterables a set's method (`label`) hashes each item of (`s.union(a, b)`, `s.update(*lists)`),
    weighed together, as it hashes them in one call, and what to give it (an iterator's items in a list).
    A set or dict given keeps its hashes."""
    given: list[Any] = []
    fresh: list[Any] = []
    for arg in args:
        if arg.__class__ not in _HASHES_KEPT and hasattr(type(arg), "__iter__"):
            arg = _materialise(arg, f"what {label} is given")
            fresh.append(arg)
        given.append(arg)
    if sum(map(len, fresh)) > _limits.max_output_chars:
        _too_much_work(f"hashing the keys given to {label}")
    _check_keys(list(itertools.chain.from_iterable(fresh)), label)
    return tuple(given)


class _KeysRead:
    """A mapping that is not a dict, as `dict()` and `dict.update` read one (CPython's `PyDict_Merge`: its
    `keys()` once, into a list, then each key's item), its keys read and weighed (`_check_keys`) before
    they are hashed. Given to them in the mapping's place, it is read the same way, so the result is
    Python's: taking the mapping into a list of its keys instead made `{'ab': 1}` pairs, `{'a': 'b'}`."""

    __slots__ = ("_keys", "_mapping")

    def __init__(self, mapping: Any, label: str) -> None:
        cap = _limits.max_output_chars
        keys = list(itertools.islice(mapping.keys(), cap + 1))
        if len(keys) > cap:
            _too_big(f"what {label} is given")
        _check_keys(keys, label)
        self._keys = keys
        self._mapping = mapping

    def keys(self) -> list[Any]:
        return self._keys

    def __getitem__(self, key: Any) -> Any:
        return self._mapping[key]

    def __len__(self) -> int:
        return len(self._keys)


def _pairs(pairs: Any, label: str) -> Any:
    """Pairs given to `dict()` or `dict.update` (`label`), their keys (each pair's first item) weighed
    before they are hashed (`_check_keys`), and what to give it: the same pairs, but for a pair that is an
    iterator, taken into a tuple of at most three items (two are a pair; more fail as more did), as
    `dict()` takes it. What is not a pair is left to `dict()`'s own error."""
    keys = [pair[0] for pair in pairs if (pair.__class__ is tuple or pair.__class__ is list) and len(pair) == 2]
    if len(keys) < len(pairs):  # not all lists or tuples of two: a range, two letters, a dict, an iterator...
        pairs = [tuple(itertools.islice(pair, 3)) if _is_iterator(pair) else pair for pair in pairs]
        keys = [next(iter(pair)) for pair in pairs if _is_sized(pair) and len(pair) == 2]
    _check_keys(keys, label)
    return pairs


def _is_sized(value: Any) -> bool:
    """Whether `value` can be gone through again and again, and measured (a list, a range, a dict...)."""
    kind = type(value)
    return hasattr(kind, "__len__") and hasattr(kind, "__iter__")


def _is_iterator(value: Any) -> bool:
    """Whether `value` is gone through only once (an iterator, a generator): taken, it is used up."""
    kind = type(value)
    return not hasattr(kind, "__len__") and hasattr(kind, "__iter__")


def _check_keys(keys: Any, label: str) -> None:
    """Keys `label` is about to hash one after another, in one C call: their tuples weighed together, as
    `_check_key` weighs one (text and numbers are hashed at once, a text's hash is kept), then refused
    if too many share one hash value (`_check_shared_hashes`)."""
    cap = _limits.max_output_chars
    prone = _collision_prone(keys)
    if not prone:
        return
    if any(issubclass(kind, tuple | frozenset) for kind in set(map(type, prone))):
        held = list(itertools.compress(prone, map(isinstance, prone, itertools.repeat(tuple | frozenset))))
        if _work(held, cap) > cap:
            _too_much_work(f"hashing the keys given to {label}")
    _check_shared_hashes(prone, f"the keys given to {label}")


# --------------------------------------------------------------------------------------------
# Keys that share one hash value
# --------------------------------------------------------------------------------------------

#: CPython's modulus for hashing numbers (`sys.hash_info.modulus`, 2**61 - 1): a whole number hashes to
#: its remainder, so those that differ by a multiple of it share one hash value, and a float past it
#: shares some with them. A number below 2**61 hashes to itself, or shares with at most two others
#: (-1 and -2 hash to -2; 2**61 - 1 and its negative to 0), so ids of 61 bits cost nothing here.
_HASH_MODULUS = sys.hash_info.modulus
_FLOAT_HASH_MODULUS = float(_HASH_MODULUS + 1)
#: The bit lengths of whole numbers that may share a hash value (`_big_numbers`): 62 and more, 2**61 on.
_PRONE_BITS = _HASH_MODULUS.bit_length() + 1
#: The bit lengths below it and from it, deleted from a list's bit lengths: what is left says whether it
#: holds big numbers, or small ones.
_OWN_HASH_BITS = bytes(range(_PRONE_BITS))
_PRONE_HASH_BITS = bytes(range(_PRONE_BITS, 256))
#: Bit lengths to 1 where the number may share a hash value, else 0 (`bytearray.translate`'s table).
_PRONE_BIT_LENGTHS = bytes(_PRONE_BITS * [0] + (256 - _PRONE_BITS) * [1])
#: At most how many different floats below 2**61 share one hash value: a float m * 2**e (m odd) hashes
#: to m's 61 bits turned left by e mod 61 (`sys.hash_info`), so the floats of one hash value are the
#: turns of it that are odd and below 2**53 (six at most: each needs the eight bits below it clear),
#: each at the ~19 exponents of its class mod 61 (floats 2**61 times apart share every hash value): 114,
#: and one or two whole numbers. Among fewer keys than `templates.max_output_chars` over this, each is
#: compared with at most that many others however they share, so only among more do floats and the
#: numbers that may share their hash values count as big numbers do (`_collision_prone`).
_FLOATS_PER_HASH = 128
#: How many different keys may share one hash value. A dict or set compares a key with each key of its
#: hash value that it holds, so k of them are k²/2 comparisons in one C call; keys of real data share
#: one by chance almost never, numbers 2**61 - 1 apart always.
_SHARED_HASH_KEYS = 64


def _keys_work(keys: Any, cap: int) -> tuple[int, list[Any]]:
    """`_work(keys, cap)` of keys about to be hashed, and those of them whose hash values others may share
    (`_collision_prone`): for a long list, found in the passes `_work` makes over it (each item's type,
    each number's size), so `|unique` over a hundred thousand ids or texts pays nearly nothing more."""
    if (keys.__class__ is list or keys.__class__ is tuple) and len(keys) > 32:
        prone: list[Any] = []
        return _work(keys, cap, prone), prone
    return _work(keys, cap), _collision_prone(keys)


def _collision_prone(keys: Any, kinds: set[type] | None = None, whole: bool = True) -> list[Any]:
    """The keys among `keys` (of the types `kinds`, when known) whose hash values others may share: whole
    numbers and floats from 2**61 on, and tuples and frozensets (their hash mixes their items' without a
    key, so even pairs of small numbers can be made to share one); among many keys that include floats,
    every number (`_FLOATS_PER_HASH`). Text costs nothing here (its hash is keyed per process), nor does
    a smaller number (`_HASH_MODULUS`). Without `whole`, the whole numbers of type `int` from 2**61 on are
    left out (`_leaf_work` has found them)."""
    if keys.__class__ is range:
        ends = (abs(keys[0]), abs(keys[-1])) if keys else (0,)
        return list(_big_numbers(list(keys), None)) if max(ends).bit_length() >= _PRONE_BITS else []
    if not isinstance(keys, list | tuple):
        keys = list(keys)
    kinds = set(map(type, keys)) if kinds is None else kinds
    numbers = len(keys) > _limits.max_output_chars // _FLOATS_PER_HASH and any(issubclass(k, float) for k in kinds)
    prone: list[Any] = []
    for kind in kinds:
        if kind is str or not issubclass(kind, int | float | tuple | frozenset):
            continue
        picked = keys if len(kinds) == 1 else list(_of_type(keys, kind))
        if numbers and issubclass(kind, int | float):
            prone.extend(_small_numbers(picked) if kind is int and not whole else picked)
        elif kind is bool or (kind is int and not whole):
            continue
        elif issubclass(kind, int):
            prone.extend(_big_numbers(picked, _bit_lengths(picked)))
        elif issubclass(kind, float):
            prone.extend(_big_floats(picked))
        else:
            prone.extend(picked)
    return prone


def _small_numbers(whole: list[Any]) -> Iterable[Any]:
    """The whole numbers among `whole` below 2**61 (those `_big_numbers` leaves)."""
    return itertools.compress(whole, map(_PRONE_BITS.__gt__, map(int.bit_length, whole)))


def _bit_lengths(whole: Any) -> bytearray | None:
    """The bit lengths of the whole numbers `whole`, a byte each, in C (None when one has 256 bits or more).
    A bytearray: made from an iterator faster than bytes, and summed, or searched with `translate`, in C."""
    try:
        return bytearray(map(int.bit_length, whole))
    except ValueError:
        return None


def _big_numbers(whole: Any, lengths: bytearray | None) -> Iterable[Any]:
    """The whole numbers among `whole` (of bit lengths `lengths`, when known) that may share a hash value."""
    if lengths is not None:
        if not lengths.translate(None, _OWN_HASH_BITS):
            return ()
        if not lengths.translate(None, _PRONE_HASH_BITS):
            return whole
        return itertools.compress(whole, lengths.translate(_PRONE_BIT_LENGTHS))
    return itertools.compress(whole, map(_PRONE_BITS.__le__, map(int.bit_length, whole)))


def _big_floats(floats: list[Any]) -> list[Any]:
    """The floats among `floats` that may share a hash value (from 2**61 on, or infinite), found at once
    for the usual floats: their Euclidean norm, in C, is below 2**60, so each of them is (NaN fails the
    test, and has the floats gone through)."""
    if math.hypot(*floats) < _FLOAT_HASH_MODULUS / 2:
        return []
    return list(itertools.compress(floats, map(_FLOAT_HASH_MODULUS.__le__, map(abs, floats))))


def _check_shared_hashes(prone: list[Any], what: str) -> None:
    """Keys about to be hashed together (`what`), refused when too many share one hash value: more than
    `_SHARED_HASH_KEYS` different keys, or more comparisons among all that share one than the limit.

    `prone` are the keys whose hash values may be shared (`_collision_prone`); their hash values are
    counted in a dict, where a number's hash value hashes to itself, so the count cannot be made to
    collide in turn (a tuple's, of any 64 bits, is counted by its remainder by 2**61 - 1, which does).
    Counting repeats of a key as different keys bounds the work from above; only when that bound is past
    the limits are the different keys told apart (`_shared_work`)."""
    if len(prone) < 2:
        return
    try:
        slots = list(map(hash, prone))
    except TypeError:  # a tuple holding a list: the others are counted (hashing stops at it, with its error)
        prone = list(filter(_hashable, prone))
        slots = list(map(hash, prone))
    if any(issubclass(kind, tuple | frozenset) for kind in set(map(type, prone))):  # their hash: any 64 bits
        slots = list(map(_HASH_MODULUS.__rmod__, slots))
    if len(set(slots)) == len(slots):  # no hash value held twice: the usual answer (a set is made faster)
        return
    counts = collections.Counter(slots)
    held = counts.values()
    squares = sum(map(operator.mul, held, held)) - operator.countOf(held, 1)  # of the counts past one
    if max(held) <= _SHARED_HASH_KEYS and squares <= _limits.max_output_chars:
        return
    _shared_work(prone, slots, counts, what)


def _hashable(key: Any) -> bool:
    """Whether `hash(key)` answers (a tuple holding a list does not)."""
    try:
        hash(key)
    except TypeError:
        return False
    return True


def _shared_work(prone: list[Any], slots: list[int], counts: collections.Counter[int], what: str) -> None:
    """`_check_shared_hashes` telling different keys apart: for each hash value held more than once, the
    different keys that hold it, compared as a dict compares them (by identity, then `==`), and the work
    of hashing them all: each key looked up among the different keys of its hash value. Stops as soon as
    either passes its limit, so it goes through at most about the limit itself."""
    cap = _limits.max_output_chars
    shared: dict[int, list[Any]] = {slot: [] for slot, count in counts.items() if count > 1}
    work = 0
    for key, slot in zip(prone, slots, strict=True):
        held = shared.get(slot)
        if held is None or key in held:
            continue
        held.append(key)
        if len(held) > _SHARED_HASH_KEYS:
            reason = (f"hashing {what}: more than {_SHARED_HASH_KEYS} different ones share one hash value (whole "
                      "numbers that differ by a multiple of 2**61 - 1 do, and floats 2**61 times apart), and each "
                      "would be compared with all the others that share it")
            raise TemplateLimitError(reason, reason=reason)
        if len(held) > 1:
            work += counts[slot] * (2 if len(held) == 2 else 1)
            if work > cap:
                reason = (f"hashing {what} would go through more than {cap} comparisons between keys that share "
                          "one hash value, the limit set by templates.max_output_chars in the config")
                raise TemplateLimitError(reason, reason=reason)


def _bounded_join(parts: Any) -> str:
    """`environment.concat`: a render's output, and what macros, `{% set %}` and `{% filter %}` blocks
    collect, joined only while it stays within the limit."""
    cap = _limits.max_output_chars
    out: list[str] = []
    append = out.append
    size = 0
    for part in parts:
        size += len(part)
        if size > cap:
            _too_big("the template's output")
        append(part)
    _tick()
    return "".join(out)


class _Paced:
    """The iterable of a `{% for %}` loop, checking the deadline every few items."""

    __slots__ = ("_source",)

    def __init__(self, source: Any) -> None:
        self._source = source

    def __iter__(self) -> Iterator[Any]:
        for count, item in enumerate(self._source, 1):
            if not count & 15:
                _tick()
            yield item

    def __len__(self) -> int:
        return len(self._source)  # TypeError for an iterator: LoopContext then counts the items itself


def _is_paced(node: nodes.Node) -> bool:
    return (isinstance(node, nodes.Call) and isinstance(node.node, nodes.EnvironmentAttribute)
            and node.node.name == "squall_iterate")


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator with six hooks the sandbox lacks: every `{% for %}` iterates through
    `environment.squall_iterate` (the deadline), every `{{ }}` value passes `environment.squall_output`
    (its size, before `str()` makes it), `~` joins through `environment.squall_join`, comparisons
    (`==`, `<`, `in`...) go through `environment.squall_compare` (what they would go through), slices
    through `environment.squall_slice` (what they copy) and a dict literal's keys through
    `environment.squall_key` (what hashing them goes through).

    Nothing is evaluated while compiling (the environment is built with `optimized=False`, and `{{ }}`
    output is never folded into a constant): Jinja would otherwise run filters and `~` on constants
    at compile time, outside every limit."""

    def _output_child_to_const(self, node: nodes.Expr, frame: Frame, finalize: Any) -> str:
        if not isinstance(node, nodes.TemplateData):
            raise nodes.Impossible()
        return super()._output_child_to_const(node, frame, finalize)

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        if not _is_paced(node.iter):
            node.iter = nodes.Call(nodes.EnvironmentAttribute("squall_iterate"), [node.iter], [], None, None,
                                   lineno=node.lineno)
        super().visit_For(node, frame)

    def visit_Call(self, node: nodes.Call, frame: Frame, forward_caller: bool = False) -> None:
        if _is_paced(node):  # our own call (templates cannot name `environment`): no sandbox round trip
            self.write("environment.squall_iterate(")
            self.visit(node.args[0], frame)
            self.write(")")
            return
        super().visit_Call(node, frame, forward_caller=forward_caller)

    def visit_Compare(self, node: nodes.Compare, frame: Frame) -> None:
        """Every comparison through `environment.squall_compare` (`_compare`), which refuses one that
        could go through more than the limit in one C call; a chain (`a < b < c`) through
        `environment.squall_chain`, its later operands as lambdas so each is evaluated once, and only
        while the comparisons before it hold, as in Python."""
        if len(node.ops) == 1:
            self.write("environment.squall_compare(")
            self.visit(node.expr, frame)
            self.write(f", {node.ops[0].op!r}, ")
            self.visit(node.ops[0].expr, frame)
            self.write(")")
            return
        self.write("environment.squall_chain(")
        self.visit(node.expr, frame)
        for operand in node.ops:
            self.write(f", {operand.op!r}, lambda: ")
            self.visit(operand.expr, frame)
        self.write(")")

    def visit_Getitem(self, node: nodes.Getitem, frame: Frame) -> None:
        """`x[a:b]` through `environment.squall_slice` (Jinja writes slices as Python does, unseen)."""
        if not isinstance(node.arg, nodes.Slice):
            super().visit_Getitem(node, frame)
            return
        self.write("environment.squall_slice(")
        self.visit(node.node, frame)
        for part in (node.arg.start, node.arg.stop, node.arg.step):
            self.write(", ")
            if part is None:
                self.write("None")
            else:
                self.visit(part, frame)
        self.write(")")

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        """`{key: value}` with each key that is not a constant through `environment.squall_key`: Python
        hashes a dict literal's keys in one C call, and a tuple's hash goes through all it holds."""
        self.write("{")
        for index, item in enumerate(node.items):
            if index:
                self.write(", ")
            if isinstance(item.key, nodes.Const):
                self.visit(item.key, frame)
            else:
                self.write("environment.squall_key(")
                self.visit(item.key, frame)
                self.write(")")
            self.write(": ")
            self.visit(item.value, frame)
        self.write("}")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.squall_join((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def _output_child_pre(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        super()._output_child_pre(node, frame, finalize)
        self.write("environment.squall_output(")

    def _output_child_post(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        self.write(")")
        super()._output_child_post(node, frame, finalize)


class _Tracking(meta.TrackingCodeGenerator, _BoundedCodeGenerator):
    """`jinja2.meta`'s free-variable finder without its constant folding, which runs filters."""

    def __init__(self, environment: jinja2.Environment) -> None:
        super().__init__(environment)
        self.optimizer = None


def undeclared_variables(env: jinja2.Environment, source: str) -> set[str]:
    """The names `source` uses without defining them (`jinja2.meta.find_undeclared_variables`), found
    without evaluating anything: Jinja's own finder folds constants, so it ran the template's filters."""
    tracker = _Tracking(env)
    tracker.visit(env.parse(source))
    return set(tracker.undeclared_identifiers)


class _BoundedExpression:
    """`compile_expression`'s callable, evaluated within the limits like a render."""

    def __init__(self, expression: Any) -> None:
        self._expression = expression

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        token = _start_budget()
        try:
            return self._expression(*args, **kwargs)
        finally:
            _end_budget(token)


#: A template that is only text and `{{ }}` look-ups into the render's dicts, as `_lookups` found it: its
#: text before the first look-up, then each look-up's keys (the variable's name first) and the text after it.
_Lookups = tuple[str, tuple[tuple[tuple[object, ...], str], ...]]
#: A look-up that found nothing (None is a value).
_NOT_FOUND = object()
#: The key a look-up follows for `.name` where dicts have an attribute `name` (`.items`): no dict holds
#: it, so the look-up finds nothing and Jinja renders the template (its attribute, as the sandbox finds it).
_AN_ATTRIBUTE = object()


class _BoundedTemplate(jinja2.Template):
    """A template whose `render` keeps to the limits: its output is counted as it is made."""

    #: Set by `compiled` when the template is only text and look-ups (`_lookups`), else None.
    squall_lookups: _Lookups | None = None

    def render(self, *args: Any, **kwargs: Any) -> str:
        if self.squall_lookups is not None:
            # One dict given (every render of Squall's): read as it is, not copied first (`_looked_up` reads only).
            one = args[0] if len(args) == 1 and not kwargs else None
            text = _looked_up(self.environment, self.squall_lookups,
                              one if one.__class__ is dict else dict(*args, **kwargs))
            if text is not None:
                return text
        context = self.new_context(dict(*args, **kwargs))
        token = _start_budget()
        try:
            return _bounded_join(self.root_render_func(context))
        except Exception:
            self.environment.handle_exception()
        finally:
            _end_budget(token)


#: Filters that take lists and mappings apart without turning them into text; every other filter
#: has its value measured first (`str()` of a list holding one long string many times is huge).
_STRUCTURAL_FILTERS = frozenset({
    "abs", "attr", "batch", "count", "d", "default", "dictsort", "first", "float", "groupby", "int", "items",
    "last", "length", "list", "map", "max", "min", "random", "reject", "rejectattr", "reverse", "round",
    "select", "selectattr", "slice", "sort", "sum", "unique",
})
#: Filters that compare or add up their value's items in one C call (`sorted`, `max`, `sum`...): the
#: items are gone through (`_work`), not only counted, before the filter runs.
_ITEM_WORK_FILTERS = frozenset({"dictsort", "groupby", "max", "min", "sort", "sum", "unique"})
#: Filters that copy their value's items into lists of their own: as many items made as it has.
_REGROUPING_FILTERS = frozenset({"batch", "groupby", "slice"})
#: Filters that return their value or one of its items, not something they made.
_PICKING_FILTERS = frozenset({"attr", "d", "default", "first", "last", "max", "min", "random"})
#: Filters whose output may be much larger than their input: how large, before it is made.
_INDENTED = {"tojson": 1, "to_json_string": 1, "to_yaml_string": 1, "pprint": 1}

# Complex by nature: one branch per bounded filter.
def _filter_check(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:  # noqa: C901
    """Per-filter checks on `args` (value first); returns the arguments to use."""
    cap = _limits.max_output_chars
    what = f"what the {name} filter makes"
    if name == "center":
        width = args[1] if len(args) > 1 else kwargs.get("width", 80)
        if isinstance(width, int) and width > cap:
            _too_big(what)
    elif name == "indent":
        width = args[1] if len(args) > 1 else kwargs.get("width", 4)
        text = str(args[0])
        per_line = width if isinstance(width, int) else len(str(width))
        if len(text) + (text.count("\n") + 1) * max(per_line, 0) > cap:
            _too_big(what)
    elif name == "format" and isinstance(args[0], str):
        _check_printf(args[0], kwargs or args[1:], what)
    elif name == "join":
        items = _materialise(args[0], what)
        separator = args[1] if len(args) > 1 else kwargs.get("d", "")
        if _weight(items, cap) + len(str(separator)) * len(items) > cap:
            _too_big(what)
        args = (items, *args[1:])
    elif name == "replace" and len(args) >= 3:
        count = args[3] if len(args) > 3 else kwargs.get("count")
        if _replaced_size(str(args[0]), str(args[1]), str(args[2]), count) > cap:
            _too_big(what)
    elif name == "wordwrap":
        text = str(args[0])
        width = args[1] if len(args) > 1 else kwargs.get("width", 79)
        wrap = args[3] if len(args) > 3 else kwargs.get("wrapstring")
        breaks = len(text) // max(width, 1) + text.count("\n") + 1 if isinstance(width, int) else len(text)
        if len(text) + breaks * len(str(wrap or "\n")) > cap:
            _too_big(what)
    elif name == "regex_replace" and len(args) >= 3:
        text, replacement = str(args[0]), args[2]
        if not isinstance(replacement, str) or len(text) + (len(text) + 1) * len(replacement) > cap:
            args = (*args[:2], _bounded_replacement(replacement, what), *args[3:])  # counted as it goes
    elif name == "sum":
        start = args[2] if len(args) > 2 else kwargs.get("start", 0)
        attribute = args[1] if len(args) > 1 else kwargs.get("attribute")
        if isinstance(start, list | tuple) and attribute is None:  # sum() copies the total at every step
            items = _materialise(args[0], what)
            if all(type(item) is type(start) for item in items):
                if len(start) + sum(len(item) for item in items) > cap:
                    _too_big(what)
                args = ([type(start)(itertools.chain.from_iterable(items))], *args[1:])  # one addition
    elif name in _INDENTED:
        indent = args[1] if len(args) > 1 else kwargs.get("indent")
        width = indent if isinstance(indent, int) else len(indent) if isinstance(indent, str) else _INDENTED[name]
        _check_value(args[0], what, indent=max(width, 0) + 1)
    return args


def _bounded_replacement(replacement: Any, what: str) -> Callable[[re.Match[str]], str]:
    """`re.sub`'s replacement as a function that stops once the replacements pass the limit."""
    cap = _limits.max_output_chars
    made = 0

    def expand(match: re.Match[str]) -> str:
        nonlocal made
        _tick()
        text = match.expand(replacement)
        made += len(text)
        if made > cap:
            _too_big(what)
        return text

    return expand


#: Where the filters that compare items are given the attribute they compare by: its position among
#: the arguments after the value, and its keyword.
_ATTRIBUTE_ARGS = {"groupby": 0, "max": 1, "min": 1, "sort": 2, "sum": 0, "unique": 1}


def _filter_items(name: str, value: Any, env: Any, rest: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The value a filter that goes through its items is given: an iterator's items in a list (so they
    can be measured), refused when comparing or adding them up could go through more than the limit,
    and counted as made when the filter copies them into lists of its own. `rest` and `kwargs` are the
    filter's other arguments (the attribute it compares by); `env` is Jinja's environment, or None."""
    what = f"the value given to the {name} filter"
    if name == "dictsort":
        if hasattr(value, "items"):  # else the filter's own error, about the value as given
            _check_work(name, value.values() if _argument(rest, kwargs, 1, "by", "key") == "value" else value.keys())
        return value
    value = _materialise(value, what)
    if name == "unique":
        _check_unique(_compared_values(name, value, env, rest, kwargs))
    elif name in _ITEM_WORK_FILTERS:
        _check_work(name, _compared_values(name, value, env, rest, kwargs))
    if name in _REGROUPING_FILTERS and isinstance(value, _SIZED):
        _count_made(len(value), what)
    return value


def _argument(rest: tuple[Any, ...], kwargs: dict[str, Any], position: int, keyword: str, default: Any) -> Any:
    return rest[position] if len(rest) > position else kwargs.get(keyword, default)


def _compared_values(name: str, value: Any, env: Any, rest: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """What the filter compares or adds up: with an attribute, only each item's attribute (as the filter
    picks it; `sort` takes several, `'a,b'`), not the whole rows a long API answer holds."""
    attribute = _argument(rest, kwargs, _ATTRIBUTE_ARGS[name], "attribute", None) if name in _ATTRIBUTE_ARGS else None
    if attribute is None or env is None or not isinstance(value, list | tuple):
        return value
    if name == "sort":
        getter = jinja2.filters.make_multi_attrgetter(env, attribute)
    else:
        getter = jinja2.filters.make_attrgetter(env, attribute)
    return list(map(getter, value))


def _check_work(name: str, compared: Any) -> None:
    cap = _limits.max_output_chars
    if _work(compared, cap) > cap:
        _too_much_work(f"the {name} filter")


def _check_unique(keys: Any) -> None:
    """`unique` puts each value (or its attribute) in a set, in a loop no deadline reaches: the values
    weighed as the other filters' (`_check_work`), and refused if too many share one hash value."""
    cap = _limits.max_output_chars
    work, prone = _keys_work(keys, cap)
    if work > cap:
        _too_much_work("the unique filter")
    _check_shared_hashes(prone, "the values given to the unique filter")


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0
    stringifies = name not in _STRUCTURAL_FILTERS
    goes_through = name in _ITEM_WORK_FILTERS or name in _REGROUPING_FILTERS
    picks = name in _PICKING_FILTERS
    what = f"the value given to the {name} filter"
    made = f"what the {name} filter makes"

    @functools.wraps(func)  # keeps `jinja_pass_arg`: Jinja passes the context/environment as before
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        given = None
        if len(args) > skip:
            given = args[skip]
            if stringifies and not isinstance(given, str):
                _check_value(given, what)
            elif goes_through:
                given = _filter_items(name, given, args[0] if skip else None, args[skip + 1:], kwargs)
            args = (*args[:skip], *_filter_check(name, (given, *args[skip + 1:]), kwargs))
        result = func(*args, **kwargs)
        _check_made(result, made, counted=not picks and result is not given)
        return result

    return guarded


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> Any:  # Jinja's names
    if not all(isinstance(v, int) for v in (n, min, max)) or n * max * 12 > _limits.max_output_chars:
        _too_big("what lipsum makes")
    return generate_lorem_ipsum(n=n, html=html, min=min, max=max)


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------


#: What `getattr` finds on any dict (its class's attributes): other names are the dict's items.
_DICT_ATTRIBUTES = frozenset(dir(dict))


class _SquallSandbox(SandboxedEnvironment):
    """Sandbox where ``x.name`` on a datastore lookup always means the key, never a str method.

    StackStorm's lookup objects are not strings, so ``st2kv.system.app.title`` reads key
    ``app.title``; without this, str's ``title`` method would shadow it.  Underscore names still
    go through the sandbox's normal (blocking) path.

    It also keeps every render within `TemplateLimits`: operators that multiply (``*``, ``**``,
    ``%``, ``+``), calls, filters, ``~`` and each ``{{ }}`` value are measured before they are made,
    and the deadline is checked at each of those steps and at every item of a ``{% for %}`` loop.
    What one C call would go through at once, where no deadline reaches, is weighed first too:
    comparisons (``==``, ``<``, ``in``...), the keys a dict literal, ``dict()``, ``fromkeys`` and
    ``update`` hash (and how many of those, or of ``unique``'s values, share one hash value), the
    filters that compare or add up items (``sort``, ``max``, ``sum``...) and long division (``//``,
    ``%``). What a render makes in all (the text and list items its filters, calls and operators
    return) is counted against `_MADE_PER_RENDER`.
    """

    intercepted_binops = frozenset({"*", "**", "%", "+", "//"})
    code_generator_class = _BoundedCodeGenerator
    template_class = _BoundedTemplate
    concat = staticmethod(_bounded_join)
    squall_compare = staticmethod(_compare)
    squall_chain = staticmethod(_chain)

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        """A template's globals as one plain dict, not Jinja's ChainMap over the environment's.

        Every render copies them into its context twice (`dict(globals, **vars)`, `set(globals)`),
        and a ChainMap is iterated and read in Python: 11 of a short template's 16 microseconds went
        there. Jinja asks that globals not change once templates are loaded; `_build` sets them all
        before any template is made."""
        return {**self.globals, **(d or {})}

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            # What Jinja's lookup comes to for a plain dict (the common `execution.parameters.host`): a
            # dict instance has no attributes of its own, so getattr fails and the item is taken. Taken
            # at once here, without raising and formatting the AttributeError first.
            try:
                return obj[attribute]
            except LookupError:
                return self.undefined(obj=obj, name=attribute)
        if isinstance(obj, KVValue | KVNamespace) and not attribute.startswith("_"):
            return obj._kv_child(attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        if argument.__class__ is tuple:
            _check_key(argument, "looking up a key")
        return super().getitem(obj, argument)

    def squall_key(self, key: Any) -> Any:
        """A key of a dict literal, weighed before Python hashes it (`_check_key`)."""
        if key.__class__ is not str:
            _check_key(key, "hashing a key of a dict")
        return key

    def squall_slice(self, obj: Any, start: Any, stop: Any, step: Any) -> Any:
        """`obj[start:stop:step]`, which Jinja writes without the sandbox: a copy, counted as made."""
        _tick()
        result = obj[start:stop:step]
        if isinstance(result, _SIZED):
            _count_made(len(result), "a slice")
        return result

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _tick()
        _check_binop(operator, left, right)
        result = super().call_binop(context, operator, left, right)
        if result.__class__ in _MADE_BY_OPERATORS:
            base = None
            if operator == "+":  # the operand it grew: the longer one (`ns.l + [x]`, `[x] + ns.l`)
                base = left if len(left) >= len(right) else right
            _count_growth(result, base, f"what {operator} makes", held=2)  # `left` or `right`, and `base`
        return result

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _tick()
        args = _check_call(obj, args, kwargs)
        result = super().call(context, obj, *args, **kwargs)
        name = getattr(obj, "__name__", "")
        _check_made(result, f"what {name or 'a call'} returned", counted=name not in _PICKING_METHODS)
        return result

    def compile_expression(self, source: str, undefined_to_none: bool = True) -> Any:
        return _BoundedExpression(super().compile_expression(source, undefined_to_none))

    def squall_iterate(self, iterable: Any) -> _Paced:
        _tick()
        return _Paced(iterable)

    def squall_output(self, value: Any) -> Any:
        # no deadline check: the loops and calls around a {{ }} check it, and text alone cannot take long
        if value.__class__ is str:
            if len(value) > _limits.max_output_chars:
                _too_big("a {{ }} value")
        else:
            _check_value(value, "a {{ }} value")
        return value

    def squall_join(self, parts: tuple[Any, ...]) -> str:
        _tick()
        cap = _limits.max_output_chars
        texts = []
        size = 0
        part = None
        for part in parts:
            if not isinstance(part, str):
                size += _weight(part, cap)
                if size > cap:
                    _too_big("the text joined with ~")
                part = str(part)
            size += len(part)
            if size > cap:
                _too_big("the text joined with ~")
            texts.append(part)
        result = "".join(texts)
        del texts, part  # no references of their own to what `_count_growth` weighs
        _count_growth(result, _longest_text(parts), "the text joined with ~", held=1)  # `parts`
        return result


def _longest_text(parts: tuple[Any, ...]) -> str | None:
    """The longest of `parts` that was text already (what `~` grows), or None."""
    return max((part for part in parts if part.__class__ is str), key=len, default=None)


def _in_test(item: Any, container: Any) -> bool:
    return bool(_compare(item, "in", container))


#: Jinja's tests that compare two values (`is eq(x)`, `select('lt', 3)`), by `_compare`'s operator names.
_COMPARING_TESTS: dict[Callable[[Any, Any], Any], str] = {
    operator.eq: "eq", operator.ne: "ne", operator.gt: "gt", operator.ge: "gteq", operator.lt: "lt",
    operator.le: "lteq",
}


def _divisible_by(value: Any, num: Any) -> bool:
    _check_division("the remainder", value, num)
    return bool(jinja2.tests.test_divisibleby(value, num))


def _guard_test(func: Callable[..., Any]) -> Callable[..., Any]:
    """A test as it runs in templates: the comparing ones through `_compare`, as operators are."""
    op = _COMPARING_TESTS.get(func)
    if op is not None:
        def compared(value: Any, *args: Any, **kwargs: Any) -> Any:
            if len(args) != 1 or kwargs:  # `x is eq`: the operator's own error (eq expected 2 arguments)
                return func(value, *args, **kwargs)
            return _compare(value, op, args[0])

        return compared
    return _divisible_by if func is jinja2.tests.test_divisibleby else func


def _build(decrypt: Callable[[str], str] | None, lenient: bool = False) -> SandboxedEnvironment:
    env = _SquallSandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.Undefined if lenient else jinja2.StrictUndefined,
        autoescape=False,
        optimized=False,  # no constant folding: it would run template code at compile time, unbounded
    )
    env.filters.update(_filters(decrypt))
    env.filters = {name: _guard_filter(name, func) for name, func in env.filters.items()}
    env.globals["lipsum"] = _lipsum
    env.tests["in"] = _in_test
    env.tests = {name: _guard_test(func) for name, func in env.tests.items()}
    return env


@functools.lru_cache(maxsize=1)
def _default_environment() -> SandboxedEnvironment:
    return _build(None)


@functools.lru_cache(maxsize=1)
def _lenient_environment() -> SandboxedEnvironment:
    return _build(None, lenient=True)


def build_environment(decrypt: Callable[[str], str] | None = None, *, lenient: bool = False) -> SandboxedEnvironment:
    """The sandboxed StackStorm-compatible environment.

    Without ``decrypt`` the same shared instance is returned every time (building one means
    registering every filter, and the compiled-template cache is keyed per environment), so
    callers must not mutate it.  With ``decrypt`` a fresh environment is built whose
    ``decrypt_kv`` filter uses that callable; keep it around to benefit from the cache.

    ``lenient`` gives the shared environment with Jinja's plain ``Undefined`` instead of
    ``StrictUndefined`` (a missing name or key renders empty; an attribute of it is still an
    error), the same sandbox and limits: StackStorm's ``get_jinja_environment(allow_undefined=True)``,
    which ``chatops.format_execution_result`` renders an alias's ``result.format`` with (an abandoned
    run has no ``stdout``, yet ``{{ execution.result.stdout }}`` must still render). Everything else
    StackStorm renders strictly, and so does Squall.
    """
    if decrypt is None:
        return _lenient_environment() if lenient else _default_environment()
    return _build(decrypt, lenient)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _preview(text: str) -> str:
    if len(text) <= _ERROR_TEMPLATE_PREVIEW:
        return text
    return text[:_ERROR_TEMPLATE_PREVIEW] + "..."


def _render_error(text: str, exc: BaseException) -> TemplateRenderError:
    return TemplateRenderError(
        f"Failed to render template {_preview(text)!r}: {type(exc).__name__}: {exc}", template=text
    )


@functools.lru_cache(maxsize=_TEMPLATE_CACHE_SIZE)
def _compile(env: jinja2.Environment, text: str) -> jinja2.Template:
    # Keyed by the environment object itself (identity hash): a cached Template keeps its
    # environment alive, so an entry can never be served to a different environment that
    # happens to reuse a freed object's id().
    template = env.from_string(text)
    if type(env) is _SquallSandbox and env.finalize is None and env.autoescape is False:
        # Not for an overlay that changes what a {{ }} writes: the shell runner's `finalize` quotes each value.
        template.squall_lookups = _lookups(env, text)  # type: ignore[attr-defined]
    return template


def _lookups(env: jinja2.Environment, text: str) -> _Lookups | None:
    """The parts of a template that is only text and look-ups such as `{{ execution.parameters.host }}`
    or `{{ trigger.body['ref'] }}` (no filter, test, call or statement), or None for any other.

    Why: most result formats, acks and rule parameters are such templates, and Jinja's render spends
    most of its ~10 µs on them in fixed work (its context, its generator, the budget) around a few
    dict look-ups. `render_template` takes ~3 µs with `_looked_up` instead; whatever that is unsure
    of goes through Jinja's render as before. Each look-up is its keys from the render's variables,
    whatever was decided once of them decided here: a text joined to the text before it, an attribute
    dicts have made a key no dict holds (`_AN_ATTRIBUTE`)."""
    body = env.parse(text).body
    if len(body) != 1 or not isinstance(body[0], nodes.Output):
        return None
    first = ""
    steps: list[tuple[tuple[object, ...], str]] = []
    for node in body[0].nodes:
        if isinstance(node, nodes.TemplateData):
            if steps:
                steps[-1] = (steps[-1][0], steps[-1][1] + node.data)
            else:
                first += node.data
            continue
        path: list[object] = []
        while isinstance(node, nodes.Getattr | nodes.Getitem):
            if isinstance(node, nodes.Getattr):
                path.append(_AN_ATTRIBUTE if node.attr in _DICT_ATTRIBUTES else node.attr)
            elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                path.append(node.arg.value)
            else:
                return None
            node = node.node
        if not isinstance(node, nodes.Name) or node.name == "self":  # Jinja's `self` is the template, not a variable
            return None
        steps.append(((node.name, *reversed(path)), ""))
    return first, tuple(steps)


def _looked_up(env: jinja2.Environment, lookups: _Lookups, variables: dict[str, Any]) -> str | None:
    """What Jinja's render of the `lookups` makes with `variables`, when every look-up finds a key in a
    plain dict; else None, and Jinja renders it (a missing key's error, an attribute such as
    `.items`, a global, anything but a dict, a value over the limits: whatever might differ).

    The same steps as the compiled template's: a name is the render's variable; `.key` of a plain
    dict is its item unless dicts have an attribute of that name (`_SquallSandbox.getattr`; such a
    key is `_AN_ATTRIBUTE`, found in no dict); `['key']` is its item (the sandbox's `getitem`); each
    value goes through `squall_output`, then `str` (a text as it is: the cap on the whole output holds
    it too); the output is capped, and the deadline checked, as `_bounded_join` does. One loop over each
    look-up's keys, the texts between them appended with its value: 178 bytecodes executed for a
    result format of two look-ups (bench/chat.py's `bounce`), where a check and a branch per part and
    per key made it 260 (a traced count)."""
    first, steps = lookups
    out = [first]
    for keys, after in steps:
        value: Any = variables
        for key in keys:
            if type(value) is not dict:
                return None
            value = value.get(key, _NOT_FOUND)
        if type(value) is not str:  # `squall_output`'s check of a text is the output's cap, below
            if value is _NOT_FOUND:
                return None
            try:
                value = str(env.squall_output(value))  # type: ignore[attr-defined]
            except TemplateLimitError:
                return None
        out += value, after
    text = "".join(out)
    if len(text) > _limits.max_output_chars:
        return None
    _tick()  # the deadline, as `_bounded_join` checks it at a render's end (`briefly` gives up past it)
    return text


def compiled(env: jinja2.Environment, text: str) -> jinja2.Template:
    """`env.from_string(text)`, kept for the next render of the same text (unless it is long):
    compiling costs far more than rendering, and each compiled template is garbage in reference
    cycles, left to the garbage collector. Templates are shared across threads; rendering keeps
    its state in the context it makes."""
    return _compile(env, text) if len(text) <= _CACHED_TEMPLATE_MAX else env.from_string(text)


def render_template(text: str, context: Mapping[str, Any], env: jinja2.Environment | None = None) -> str:
    """Render ``text`` with ``context``; every failure becomes :class:`TemplateRenderError`."""
    if "{" not in text and "\r" not in text and not text.endswith("\n") and (
            env is None or (env is _lenient_environment() and len(text) <= _limits.max_output_chars)):
        # Nothing Jinja would change (it normalises line ends, drops a last newline), in the shared environments
        # (a lenient one's text within its cap): a result format that is only text (`squall.ping`'s "pong")
        # makes no render: 80 bytecodes executed for its `briefly` render in place of 175 (a traced count).
        return text
    environment = env if env is not None else _default_environment()
    try:
        return compiled(environment, text).render(context)
    except TooLongForTheLoop:
        raise
    except TemplateLimitError as exc:
        raise TemplateLimitError(f"Failed to render template {_preview(text)!r}: {exc.reason}", reason=exc.reason,
                                 template=text) from exc
    except Exception as exc:
        raise _render_error(text, exc) from exc


def is_jinja_expression(value: Any) -> bool:
    """Whether ``value`` is a string that contains a Jinja expression or statement marker."""
    return isinstance(value, str) and any(marker in value for marker in _JINJA_START_MARKERS)


def _contains_template(value: Any) -> bool:
    if isinstance(value, str):
        return is_jinja_expression(value)
    if isinstance(value, dict):
        return any(_contains_template(k) or _contains_template(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_contains_template(item) for item in value)
    return False


def render_value(value: Any, context: Mapping[str, Any], env: jinja2.Environment | None = None) -> Any:
    """Render one parameter value the way StackStorm's ``render_values`` does, minus its flaw.

    * strings without ``{{``/``{%`` and non-string scalars come back untouched (no Jinja call);
    * other strings are rendered, and if the output equals the input the original is returned;
    * in dicts and lists each string (key or leaf) renders on its own, and a leaf that is exactly
      ``"{{name}}"`` takes the referenced value with its type (``to_complex``); an unchanged
      container comes back as the original object.

    StackStorm JSON-encodes a dict or list, renders that text whole and decodes it again: a value
    with a quote (a webhook's `x", "GIT_SSH_COMMAND": "…`) then adds keys of its own choosing to an
    `env`, or breaks the JSON. Rendering leaf by leaf keeps what a payload says inside its string.
    """
    if isinstance(value, str):
        if not is_jinja_expression(value):
            return value
        rendered = render_template(value, context, env)
        return value if rendered == value else rendered
    if not isinstance(value, dict | list) or not _contains_template(value):
        return value
    return _render_leaves(value, context, env)


def _render_leaves(value: Any, context: Mapping[str, Any], env: jinja2.Environment | None) -> Any:
    """`render_value` inside a dict or list: each string alone; the container unchanged if nothing changed."""
    if isinstance(value, str):
        reference = _WHOLE_REFERENCE.fullmatch(value)
        if reference is None:
            return render_value(value, context, env)
        text = render_template(f"{{{{{reference[1]} | to_complex}}}}", context, env)
        try:
            return json.loads(text)
        except ValueError as exc:
            raise TemplateRenderError(f"{value!r} rendered to invalid JSON {_preview(text)!r}: {exc}",
                                      template=value) from exc
    if isinstance(value, dict):
        items = [(_render_leaves(k, context, env) if isinstance(k, str) else k, _render_leaves(v, context, env))
                 for k, v in value.items()]
        if all(new_k is k and new_v is v for (new_k, new_v), (k, v) in zip(items, value.items(), strict=True)):
            return value
        return dict(items)
    if isinstance(value, list):
        rendered = [_render_leaves(item, context, env) for item in value]
        return value if all(new is old for new, old in zip(rendered, value, strict=True)) else rendered
    return value


def render_values(
    mapping: Mapping[str, Any], context: Mapping[str, Any], env: jinja2.Environment | None = None
) -> dict[str, Any]:
    """Render every value of ``mapping``; templates may use ``__context`` for the whole context.

    As in StackStorm, real context keys win over the synthetic ``__context`` entry.  Errors
    carry the parameter name in ``TemplateRenderError.key``.
    """
    super_context: dict[str, Any] = {"__context": context}
    super_context.update(context)
    rendered: dict[str, Any] = {}
    for key, value in mapping.items():
        try:
            rendered[key] = render_value(value, super_context, env)
        except TemplateRenderError as exc:
            raise TemplateRenderError(
                f"Parameter {key!r}: {exc}", template=exc.template, key=key
            ) from exc.__cause__
    return rendered
