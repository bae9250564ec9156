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

import functools
import json
import os.path
import re
from collections.abc import Callable, Mapping
from typing import Any

import jinja2
import jsonpath_ng.ext
import semver
import yaml
from jinja2.sandbox import SandboxedEnvironment

__all__ = [
    "NONE_MAGIC_VALUE",
    "KVNamespace",
    "KVValue",
    "TemplateRenderError",
    "build_environment",
    "is_jinja_expression",
    "render_template",
    "render_value",
    "render_values",
]

#: StackStorm's stand-in for ``None``: the ``use_none`` filter emits it because a rendered
#: template is always text, and parameter casting later turns it back into ``None``.
NONE_MAGIC_VALUE = "%*****__%NONE%__*****%"

_JINJA_START_MARKERS = ("{{", "{%")

# StackStorm rewrites a JSON string that is exactly "{{name}}" to {{name | to_complex}} so a
# whole-value reference keeps the referenced value's type (int, list, dict...) in dict/list
# parameters.  Only a bare identifier qualifies; anything else renders as a string.
_COMPLEX_REFERENCE = re.compile(r'"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}"')

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
    return yaml.safe_load(_text(value))


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
    # jsonpath_ng builds a PLY parser per call; parsed expressions are immutable and reusable.
    return jsonpath_ng.ext.parse(query)


def jsonpath_query(value: Any, query: str) -> list[Any] | None:
    matches = [match.value for match in _jsonpath(_text(query)).find(value)]
    return matches or None


def to_complex(value: Any) -> str:
    return json.dumps(value)


def _regex_flags(ignorecase: bool) -> int:
    return re.IGNORECASE if ignorecase else 0


def regex_match(value: Any, pattern: str, ignorecase: bool = False) -> bool:
    return bool(re.match(pattern, _text(value), _regex_flags(ignorecase)))


def regex_search(value: Any, pattern: str, ignorecase: bool = False) -> bool:
    return bool(re.search(pattern, _text(value), _regex_flags(ignorecase)))


def regex_replace(value: Any, pattern: str, replacement: str, ignorecase: bool = False) -> str:
    return re.compile(pattern, _regex_flags(ignorecase)).sub(replacement, _text(value))


def regex_substring(value: Any, pattern: str, result_index: int = 0, ignorecase: bool = False) -> Any:
    """The ``result_index``-th ``re.findall`` result; no match raises IndexError, as in StackStorm."""
    return re.findall(pattern, _text(value), _regex_flags(ignorecase))[result_index]


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
    return decrypt(text)


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
# Environment
# --------------------------------------------------------------------------------------------


class _SquallSandbox(SandboxedEnvironment):
    """Sandbox where ``x.name`` on a datastore lookup always means the key, never a str method.

    StackStorm's lookup objects are not strings, so ``st2kv.system.app.title`` reads key
    ``app.title``; without this, str's ``title`` method would shadow it.  Underscore names still
    go through the sandbox's normal (blocking) path.
    """

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, KVValue | KVNamespace) and not attribute.startswith("_"):
            return obj._kv_child(attribute)
        return super().getattr(obj, attribute)


def _in_test(item: Any, container: Any) -> bool:
    return item in container


def _build(decrypt: Callable[[str], str] | None) -> SandboxedEnvironment:
    env = _SquallSandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )
    env.filters.update(_filters(decrypt))
    env.tests["in"] = _in_test
    return env


@functools.lru_cache(maxsize=1)
def _default_environment() -> SandboxedEnvironment:
    return _build(None)


def build_environment(decrypt: Callable[[str], str] | None = None) -> SandboxedEnvironment:
    """The sandboxed StackStorm-compatible environment.

    Without ``decrypt`` the same shared instance is returned every time (building one means
    registering every filter, and the compiled-template cache is keyed per environment), so
    callers must not mutate it.  With ``decrypt`` a fresh environment is built whose
    ``decrypt_kv`` filter uses that callable; keep it around to benefit from the cache.
    """
    if decrypt is None:
        return _default_environment()
    return _build(decrypt)


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
    return env.from_string(text)


def render_template(text: str, context: Mapping[str, Any], env: jinja2.Environment | None = None) -> str:
    """Render ``text`` with ``context``; every failure becomes :class:`TemplateRenderError`."""
    if env is None and "{" not in text and "\r" not in text and not text.endswith("\n"):
        return text  # nothing Jinja would change (it normalises line ends, drops a last newline)
    environment = env if env is not None else _default_environment()
    try:
        return _compile(environment, text).render(context)
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
    """Render one parameter value the way StackStorm's ``render_values`` does.

    * strings without ``{{``/``{%`` and non-string scalars come back untouched (no Jinja call);
    * other strings are rendered, and if the output equals the input the original is returned;
    * dicts and lists are JSON-encoded, every ``"{{name}}"`` string becomes
      ``{{name | to_complex}}`` so the referenced value keeps its type, the JSON text is
      rendered and decoded again; unchanged output returns the original object.
    """
    if isinstance(value, str):
        if not is_jinja_expression(value):
            return value
        rendered = render_template(value, context, env)
        return value if rendered == value else rendered

    if not isinstance(value, dict | list) or not _contains_template(value):
        return value

    try:
        encoded = json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise TemplateRenderError(
            f"Cannot render {type(value).__name__} value: it is not JSON-serialisable ({exc})"
        ) from exc
    template = _COMPLEX_REFERENCE.sub(r"{{\1 | to_complex}}", encoded)
    rendered = render_template(template, context, env)
    if rendered == encoded:
        return value
    try:
        return json.loads(rendered)
    except ValueError as exc:
        raise TemplateRenderError(
            f"Template {_preview(template)!r} rendered to invalid JSON {_preview(rendered)!r}: {exc}",
            template=template,
        ) from exc


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
