"""Action parameters at request time: checks, Jinja rendering with dependencies, casts, schema.

This follows StackStorm's `util/param.py` and `util/casts.py` (spec §1.3): parameters may refer
to each other and to `st2kv`, `action_context` and `config_context`; rendered values are cast by
their declared type and then validated against the merged runner ⊕ action schema. Every error
names the parameter and the rule it broke, because it is shown to the person who typed it.
"""

from __future__ import annotations

import ast
import difflib
import functools
import json
import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import unquote, unquote_plus

import jinja2

from engine.actions import Action
from engine.runners import RUNNER_TYPES
from engine.templates import (
    NONE_MAGIC_VALUE,
    TemplateLimitError,
    TemplateRenderError,
    build_environment,
    render_value,
    undeclared_variables,
)

MASK = "********"
_EXTENSION_KEYS = {"required", "secret", "immutable", "position", "default", "description", "title"}


class ParameterError(ValueError):
    """Parameters a caller supplied that cannot run; the message is meant for that caller."""


@dataclass
class Resolution:
    """The outcome of resolving one request's parameters."""

    values: dict[str, Any]
    live: list[str]
    templates: dict[str, str] = field(default_factory=dict)


def has_template(value: Any) -> bool:
    """Whether `value` (a text, or a list or object in its JSON) holds `{{` or `{%`."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, dict | list):
        return has_template(json.dumps(value))
    return False


def _template_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _rendered_names(supplied: Mapping[str, Any], render: bool | Collection[str]) -> set[str]:
    """The supplied names whose values are templates to render (`render=True`: all of them)."""
    return set(supplied) if render is True else set(render or ())


def needs_rendering(action: Action, supplied: Mapping[str, Any], render: bool | Collection[str] = False) -> bool:
    """Whether `resolve` would render a template for this request: a templated default it keeps, or a
    supplied value that `render` names and that holds `{{`/`{%`. Requests that render nothing skip the
    thread hop that rendering takes (`ExecutionService.request`)."""
    for name in action.templated_defaults:  # made once per loaded action: most have none
        if supplied.get(name) is None:
            return True
    if not render:  # most requests: nothing supplied renders
        return False
    schema = action.parameters
    for name in _rendered_names(supplied, render):
        value = supplied.get(name)
        if value is not None and name in schema and has_template(value):
            return True
    return False


#: Whole numbers a parameter may hold: 64-bit, as StackStorm's database stores them and as most JSON
#: readers can (a larger one is stored, but comes back as a rounded float to many of them).
MIN_INTEGER, MAX_INTEGER = -(2 ** 63), 2 ** 63 - 1
#: How deep lists and objects in one parameter value may nest (the API refuses bodies over 64 levels).
MAX_VALUE_DEPTH = 100


# Complex by nature: one branch per JSON value kind.
def check_storable(name: str, value: Any, spec: Mapping[str, Any], *, masked: bool = False) -> None:  # noqa: C901
    """Refuse a value the execution record cannot hold faithfully, before anything is stored: a number
    that is not finite (`1e400` cast to a number is infinity; PostgreSQL's JSON refuses it and SQLite's
    reads it back as null), a whole number past 64 bits, a lone UTF-16 surrogate (not storable as
    UTF-8), or lists and objects nested deeper than `MAX_VALUE_DEPTH`. `masked`: quote the value as a
    secret's, although its spec is not one (it was rendered from a decrypted datastore value)."""
    kind = type(value)
    if value is None or kind is bool or (kind is str and value.isascii()) or (
            kind is int and MIN_INTEGER <= value <= MAX_INTEGER):
        return  # most values: nothing to look into (every request checks each of its parameters)
    secret = bool(spec.get("secret")) or masked

    def shown(number: float) -> str:
        if secret:
            return MASK
        if isinstance(number, int) and number.bit_length() > 200:  # repr() refuses 4,300+ digits
            return f"a {number.bit_length()}-bit number"
        return repr(number)

    def label(where: str) -> str:
        return f'parameter "{name}"' + ("" if secret else where)

    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, bool) or item is None:
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise ParameterError(f"{label(where)} = {shown(item)} is not a finite number: send a number between "
                                     "about -1.8e308 and 1.8e308 (or a string)")
        elif isinstance(item, int):
            if not MIN_INTEGER <= item <= MAX_INTEGER:
                raise ParameterError(f"{label(where)} = {shown(item)} is out of range: whole numbers must lie between "
                                     f"{MIN_INTEGER} and {MAX_INTEGER} (64 bits); send larger ones as strings")
        elif isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise ParameterError(f"{label(where)} is not valid UTF-8 text: it holds a lone UTF-16 surrogate "
                                         "(such as \\ud800 without its pair, or what a command line makes of a "
                                         "byte that is not UTF-8, such as a Latin-1 é): send valid Unicode "
                                         "text") from None
        elif isinstance(item, dict | list | tuple):
            if depth >= MAX_VALUE_DEPTH:
                raise ParameterError(f'parameter "{name}" nests lists and objects more than {MAX_VALUE_DEPTH} '
                                     "levels deep: send a flatter value")
            if isinstance(item, dict):
                for key, entry in item.items():
                    stack.append((key, where, depth + 1))
                    stack.append((entry, f"{where}[{key!r}]" if len(where) < 200 else where, depth + 1))
            else:
                stack.extend((entry, f"{where}[{i}]" if len(where) < 200 else where, depth + 1)
                             for i, entry in enumerate(item))


_TRUE = {"true", "yes", "on", "1", "y"}
_FALSE = {"false", "no", "off", "0", "n", ""}


def cast(name: str, value: Any, spec: Mapping[str, Any], *, masked: bool = False) -> Any:
    """Cast a rendered value to its declared type, as StackStorm's `casts.py` does. `masked`: the value
    is never quoted, as for a `secret` parameter (`resolve` says so for one that holds what `decrypt_kv`
    revealed, or a secret key's ciphertext: a failed cast must not hand either to whoever asked).

    An array or object that reads as null (`None`, what `{{ trigger.data.source_context }}` renders when
    the payload has none, or JSON's `null`) is None, unset, as StackStorm's `_cast_object` makes it
    (`json.loads`, then `ast.literal_eval`): an optional parameter is then left out (a script's positional
    argument ""), a required one is missing."""
    if isinstance(value, str) and value == NONE_MAGIC_VALUE:
        return None
    ptype = spec.get("type")
    if value is None or not isinstance(value, str) or not isinstance(ptype, str) or ptype == "string":
        return value
    text = value.strip()
    try:
        if ptype == "integer":
            return int(text)
        if ptype == "number":
            number = float(text)
            return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number
        if ptype == "boolean":
            lowered = text.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError(text)
        if ptype == "null":
            if text.lower() in ("", "null", "none"):
                return None
            raise ValueError(text)
        if ptype == "array":
            return _cast_array(text)
        if ptype == "object":
            return _cast_object(text)
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError) as exc:
        # literal_eval raises TypeError for e.g. "{[]: 1}" and RecursionError for deep nesting.
        examples = {
            "integer": "a whole number such as 5",
            "number": "a number such as 2.5",
            "boolean": "true or false",
            "null": "null",
            "array": "a comma-separated list or a JSON array",
            "object": 'a JSON object such as {"key": "value"}',
        }
        secret = bool(spec.get("secret")) or masked or name in MASKED_MAPPINGS  # a credential may be in it
        problem = ParameterError(
            f'parameter "{name}": {MASK if secret else repr(value)} is not '
            f'{"an" if ptype[0] in "aeiou" else "a"} {ptype} (expected {examples[ptype]})'
        )
        # the cause's message quotes the value: keep it out of tracebacks when it is a secret
        raise problem from (None if secret else exc)
    return value


def _cast_array(text: str) -> Any:
    """An array parameter's text: a JSON (or Python) list, null (`_null`), else comma-separated items.
    (Text in brackets that is no list, `[1], [2]`, is refused by the schema check, which names the rule.)"""
    if text.startswith("["):
        return _decode(text)
    if _null(text):
        return None
    return [item.strip() for item in text.split(",")] if text else []


def _cast_object(text: str) -> dict[Any, Any] | None:
    """An object parameter's text: a JSON (or Python) dict, or null (`None`, `null`)."""
    decoded = _decode(text)
    if decoded is not None and not isinstance(decoded, dict):
        raise ValueError(text)
    return decoded


def _decode(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return ast.literal_eval(text)


def _null(text: str) -> bool:
    """Whether `text`, an array's that is no JSON list, decodes to null as `_decode` reads it (`None`,
    `null`) rather than being the comma-separated list Squall reads it as. Only a text that names None or
    null can decode to it, so a list's items are not parsed as Python for nothing."""
    if "None" not in text and "null" not in text:
        return False
    try:
        return _decode(text) is None
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
        return False


#: Brackets nested deeper than this in a template are refused before Jinja parses it: its parser recurses
#: per level, and at the interpreter's limit the RecursionError also escapes from generators it unwinds
#: (reported as ignored exceptions), however it is caught here. No real template comes near.
MAX_TEMPLATE_NESTING = 100


def _nested_too_deeply(text: str) -> bool:
    """Whether `text`'s brackets nest deeper than `MAX_TEMPLATE_NESTING` (unbalanced ones counted as they come)."""
    if sum(text.count(bracket) for bracket in "([{") <= MAX_TEMPLATE_NESTING:
        return False  # too few to: no scan (the common case, counted in C)
    depth = 0
    for char in text:
        if char in "([{":
            depth += 1
            if depth > MAX_TEMPLATE_NESTING:
                return True
        elif char in ")]}":
            depth = max(depth - 1, 0)
    return False


def _dependencies(env: jinja2.Environment, name: str, raw: Any, secret: bool) -> set[str]:
    text = _template_text(raw)
    try:
        if _nested_too_deeply(text):
            raise RecursionError
        return undeclared_variables(env, text)
    except (RecursionError, MemoryError):
        raise ParameterError(f'Failed to render parameter "{name}": the template is nested too deeply') from None
    except jinja2.TemplateSyntaxError as exc:
        if secret:  # the message quotes tokens of the (secret) value
            raise ParameterError(f'Failed to render parameter "{name}": its (secret) value is not a valid '
                                 "template") from None
        raise ParameterError(f'Failed to render parameter "{name}": {exc.message} (line {exc.lineno})') from exc


#: Environment variables that make a program run code before (or instead of) what it was asked to run.
_DANGEROUS_ENV = re.compile(r"^(BASH_ENV|ENV|PATH|BASH_FUNC_.*|LD_.*|PYTHON.*|PERL5?(LIB|OPT)|RUBYOPT|NODE_OPTIONS|"
                            r"SHELLOPTS|BASHOPTS|PS4|PROMPT_COMMAND|IFS|GCONV_PATH)$")
#: `PYTHON*` variables that only set how Python runs what it was asked to, loading no code of the caller's
#: choice: common in Docker and CI shells, so `st2 run -e` (st2client copies the caller's environment into
#: `env`) was refused there. Not `PYTHONWARNINGS` (a category names a module it imports), `PYTHONSTARTUP`,
#: `PYTHONPATH`, `PYTHONHOME`, `PYTHONBREAKPOINT` (a callable it imports), `PYTHONINSPECT`.
_HARMLESS_ENV = frozenset({"PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONIOENCODING", "PYTHONUTF8",
                           "PYTHONHASHSEED", "PYTHONFAULTHANDLER", "PYTHONNOUSERSITE"})
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

def _check_names(action: Action, supplied: Mapping[str, Any]) -> None:
    """Every supplied name is one of the action's parameters, and none is immutable."""
    schema = action.parameters
    if supplied.keys() <= schema.keys() and action.immutable_names.isdisjoint(supplied):
        return  # most requests: two set comparisons, no list made
    unknown = [name for name in supplied if name not in schema]
    if unknown:
        hints = []
        for name in unknown:
            near = difflib.get_close_matches(name, list(schema), n=1)
            hints.append(f'"{name}"' + (f' (did you mean "{near[0]}"?)' if near else ""))
        accepted = ", ".join(sorted(schema)) or "none"
        raise ParameterError(
            f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(hints)} for action "
            f'"{action.ref}"; it accepts: {accepted}'
        )
    immutable = [n for n in supplied if schema[n].get("immutable")]
    if immutable:
        raise ParameterError(f"Override of immutable parameter(s) {sorted(immutable)} is unsupported.")


def check_unrendered(action: Action, supplied: Mapping[str, Any], render: bool | Collection[str] = False) -> None:
    """What `resolve` would refuse without rendering anything: unknown and immutable names, a required
    parameter missing with no default, and each value given as data (not a template `render` names)
    cast and checked against its spec, in `resolve`'s words. A command held for approvers is checked
    so first: a bad one is refused now, not after they said yes."""
    _check_names(action, supplied)
    renders = _rendered_names(supplied, render)
    for name, spec in action.parameters.items():
        value = supplied.get(name)
        if value is None:
            if "default" not in spec:
                check_parameter(f'action "{action.ref}"', name, spec, None)
        elif name not in renders:
            check_parameter(f'action "{action.ref}"', name, spec, cast(name, value, spec))


# Complex by nature: StackStorm's parameter resolution order, one step per rule (spec §1.2).
def resolve(action: Action, supplied: Mapping[str, Any], context: Mapping[str, Any],  # noqa: C901
            env: jinja2.Environment | None = None, *, render: bool | Collection[str] = False,
            sensitive: Sequence[str] = ()) -> Resolution:
    """Check, render, cast and validate the parameters of one request for `action`.

    Defaults are templates a pack author wrote, and render. A supplied value renders only when
    `render` names it (or is True): rule parameters and alias defaults are a pack author's text,
    but a value a person typed is data and reaches the action exactly as given, so a chat user
    cannot write templates that run with the service's datastore (docs/security.md).

    `sensitive` is the list the template context fills while templates render: what `decrypt_kv`
    revealed and the ciphertexts of secret keys read (`ExecutionService._resolve`). A parameter whose
    rendering added to it, or whose value holds one of its texts, is quoted in no error, as if it
    were `secret`: its spec may not say so (a pack author's integer parameter defaulting to a
    decrypted key), and the error goes to whoever asked, the logs and the trace."""
    schema = action.parameters
    _check_names(action, supplied)
    if not render and not sensitive and not action.templated_defaults:
        return _resolve_given(action, supplied)  # most requests

    raw: dict[str, Any] = {}
    live: list[str] = []
    renders = _rendered_names(supplied, render)
    templated = action.templated_defaults
    literal: set[str] = set()
    for name, spec in schema.items():
        given = supplied.get(name)
        if given is not None:
            raw[name] = given
            live.append(name)
            if name not in renders:
                literal.add(name)
        elif "default" in spec:
            raw[name] = spec["default"]
            if name in templated:
                live.append(name)
        else:
            raw[name] = None

    env = env or build_environment()
    masked: set[str] = set()
    if renders or templated:
        pending = {name: value for name, value in raw.items() if name not in literal and has_template(value)}
        templates = {name: _template_text(value) for name, value in pending.items()}
        values = {name: value for name, value in raw.items() if name not in pending}
    else:  # most requests: no templated default, nothing supplied renders, so nothing is pending
        pending, templates, values = {}, {}, raw
    graph = {name: _dependencies(env, name, value, bool(schema[name].get("secret")))
             for name, value in pending.items()}
    for name, deps in graph.items():
        for dep in deps:
            if dep not in schema and dep not in context:
                shown = MASK if schema[name].get("secret") else dep  # the name comes from the secret's text
                raise ParameterError(f'Dependency unsatisfied in variable "{shown}" (used by parameter "{name}")')

    while pending:
        ready = [n for n in pending if not (graph[n] & set(pending))]
        if not ready:
            raise ParameterError(
                f"Cyclic dependency found in the following variables: {', '.join(sorted(pending))}"
            )
        for name in sorted(ready):
            scope = {**context, **values}
            seen = len(sensitive)
            try:
                values[name] = render_value(pending.pop(name), scope, env)
            except TemplateLimitError as exc:  # the reason names the limit and never quotes the template
                shown = exc.reason if schema[name].get("secret") else _withheld(str(exc), sensitive, seen)
                raise ParameterError(f'Failed to render parameter "{name}": {shown or exc.reason}') from None
            except TemplateRenderError as exc:
                cause = type(exc.__cause__ or exc).__name__
                if schema[name].get("secret"):  # the message quotes the template, i.e. the secret
                    raise ParameterError(f'Failed to render parameter "{name}": its (secret) value failed '
                                         f"to render ({cause})") from None
                shown = _withheld(str(exc), sensitive, seen)
                if shown is None:
                    raise ParameterError(f'Failed to render parameter "{name}": it failed to render ({cause}) '
                                         "after reading a secret datastore value, which its message could "
                                         "quote") from None
                # the cause's message is the one unmasked: keep it out of tracebacks once anything was read
                raise ParameterError(f'Failed to render parameter "{name}": {shown}') from (
                    None if sensitive else exc)
            if len(sensitive) > seen:
                masked.add(name)

    for name, spec in schema.items():
        value = values.get(name)
        hidden = name in masked or (bool(sensitive) and _holds(value, sensitive))
        if hidden:
            masked.add(name)
        if isinstance(value, str):  # (`cast` gives anything else back as it is)
            value = cast(name, value, spec, masked=hidden)
        values[name] = value
        if value is None:
            continue  # (nothing `check_storable` would look at: most parameters of most requests)
        try:
            check_storable(name, value, spec, masked=hidden)
        except ParameterError:
            if name not in supplied:  # made from what the person gave? then name what they gave
                for given in supplied.keys() & schema.keys():
                    check_storable(given, supplied[given], schema[given], masked=given in masked)
            raise
    if "env" in supplied:
        check_environment(action, values.get("env"))
    validate(action, values, masked)
    return Resolution(values=values, live=live, templates=templates)


def _resolve_given(action: Action, supplied: Mapping[str, Any]) -> Resolution:
    """`resolve` for a request with nothing to render and nothing sensitive (most: every chat command of an
    action without templated defaults): each value as given, else its default, cast and checked in one pass
    over `Action.value_plan`, without the second pass, the copies and the calls rendering needs; `validate`
    runs only when a value is not one it passes at a glance (a plain type's, or unset and optional). The
    same values and the same errors, in the same order. (callgrind, chat at 100 in flight: with the request's
    other shortcuts made with it, 917,780 -> 897,798 instructions a command.)"""
    values: dict[str, Any] = {}
    live: list[str] = []
    glanced = True  # every value is one `validate` passes without a look
    for name, spec, default, textual, kinds, required in action.value_plan:
        value = supplied.get(name)
        if value is None:
            value = default
        else:
            live.append(name)
        if isinstance(value, str):
            if not textual:
                value = cast(name, value, spec)
            elif value == NONE_MAGIC_VALUE:  # (all `cast` does to a text of a `string` parameter)
                value = None
        values[name] = value
        if value is None:
            if required:
                glanced = False
            continue
        kind = type(value)
        if not ((kind is str and value.isascii()) or (kind is int and MIN_INTEGER <= value <= MAX_INTEGER)):
            try:  # (what `check_storable` returns at once for, without the call)
                check_storable(name, value, spec)
            except ParameterError:
                if name not in supplied:  # made from what the person gave? then name what they gave
                    schema = action.parameters
                    for given in supplied.keys() & schema.keys():
                        check_storable(given, supplied[given], schema[given])
                raise
        if kinds is None or kind not in kinds:
            glanced = False
    if "env" in supplied:
        check_environment(action, values.get("env"))
    if not glanced:
        validate(action, values)
    return Resolution(values=values, live=live, templates={})


def _holds(value: Any, sensitive: Sequence[str]) -> bool:
    """Whether a rendered value holds any of the `sensitive` texts (`resolve`)."""
    if not sensitive or value is None:
        return False
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return any(secret and secret in text for secret in sensitive)


#: A sensitive text shorter than this is never replaced inside other text (the letters left around
#: the mask would tell it, and a short one would mangle output): a message is withheld instead, and a
#: run's output keeps it (`engine.executions` scrubs only longer ones).
MIN_REPLACED = 4


def _withheld(message: str, sensitive: Sequence[str], seen: int) -> str | None:
    """A render error's `message` with every sensitive text masked (a template may quote one it read, or
    a parameter it uses that holds one), or None when one is too short to mask in place and the template
    read it (`sensitive[seen:]`) or the message holds it: then the message must not be shown."""
    if any(text and len(text) < MIN_REPLACED for text in sensitive[seen:]):
        return None
    for text in sorted((t for t in sensitive if t), key=len, reverse=True):
        if len(text) < MIN_REPLACED:
            if text in message:
                return None
        else:
            message = message.replace(text, MASK)
    return message


def check_environment(action: Action, env: Any) -> None:
    """Refuse an `env` that would run code of the caller's choice before the action's own command:
    `BASH_ENV`, `BASH_FUNC_*`, `LD_PRELOAD`, `PYTHONPATH`, `PATH` and their kin, unless the action's
    own default sets the same value. Names that are not variable names are refused too."""
    if not isinstance(env, Mapping):
        return
    default = action.parameters.get("env", {}).get("default")
    default = default if isinstance(default, Mapping) else {}
    for key, value in env.items():
        name = str(key)
        if not _ENV_NAME.match(name):
            raise ParameterError(f'parameter "env": {name[:80]!r} is not an environment variable name '
                                 "(letters, digits and _, not starting with a digit)")
        if (_DANGEROUS_ENV.match(name) and name not in _HARMLESS_ENV
                and not (name in default and str(default[name]) == str(value))):
            raise ParameterError(f'parameter "env": {name} may not be set by a request, because it makes the '
                                 "shell or the program run other code first; only the action's own default "
                                 "may set it")


_SUBSCHEMA_MAPS = ("properties", "patternProperties", "definitions")
_SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
_SUBSCHEMA_ONE = ("items", "additionalItems", "additionalProperties", "not")


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` that also accepts null (StackStorm's `modify_schema_allow_default_none` for one property).
    A property without a type accepts null already; StackStorm would narrow it to string, we do not."""
    for combinator in ("anyOf", "oneOf"):
        choices = schema.get(combinator)
        if isinstance(choices, list):
            if not any(isinstance(c, dict) and c.get("type") == "null" for c in choices):
                return {**schema, combinator: [*choices, {"type": "null"}]}
            return schema
    kind = schema.get("type")
    if isinstance(kind, list):
        return schema if "null" in kind else {**schema, "type": [*kind, "null"]}
    if isinstance(kind, str) and kind != "null":
        return {**schema, "type": [kind, "null"]}
    return schema


def _allow_default_none(out: dict[str, Any], required: Collection[str]) -> None:
    """Let null stand for an optional property, or one whose default is null, as every StackStorm
    validation of parameters, configs, trigger parameters and inquiry answers does (`allow_default_none`):
    a pack's `default: null` then means "unset" instead of a value that breaks its own type."""
    properties = out.get("properties")
    if not isinstance(properties, dict):
        return
    for name, spec in properties.items():
        if not isinstance(spec, dict) or spec.get("default") is not None:
            continue
        if "default" in spec or name not in required:
            properties[name] = _nullable(spec)


def draft4(schema: Any) -> Any:
    """A StackStorm schema as plain draft-4: each property's boolean `required` (draft-3 style, which
    StackStorm's validator honours at every depth) becomes its parent's `required` list, and null is
    allowed where StackStorm's `allow_default_none` allows it (`_allow_default_none`)."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "required" and isinstance(value, bool):
            continue
        if key in _SUBSCHEMA_MAPS and isinstance(value, dict):
            out[key] = {k: draft4(v) for k, v in value.items()}
        elif key == "dependencies" and isinstance(value, dict):
            out[key] = {k: draft4(v) if isinstance(v, dict) else v for k, v in value.items()}
        elif (key in _SUBSCHEMA_LISTS or key == "items") and isinstance(value, list):
            out[key] = [draft4(v) for v in value]
        elif key in _SUBSCHEMA_ONE and isinstance(value, dict):
            out[key] = draft4(value)
        else:
            out[key] = value
    properties = schema.get("properties")
    if isinstance(properties, dict):
        names = [k for k, v in properties.items() if isinstance(v, dict) and v.get("required") is True]
        if names:
            listed = schema.get("required") if isinstance(schema.get("required"), list) else []
            out["required"] = [*listed, *(n for n in names if n not in listed)]
    required = out.get("required")
    _allow_default_none(out, required if isinstance(required, list) else [])
    return out


def validate(action: Action, values: Mapping[str, Any], masked: Collection[str] = ()) -> None:
    """Required parameters present, and every present value valid for its schema (those named in
    `masked` never quoted)."""
    owner = f'action "{action.ref}"'  # once, not per parameter: only an error quotes it
    plain = action.plain_types
    for name, spec in action.parameters.items():
        value = values.get(name)
        if value is None:
            if not spec.get("required"):
                continue  # nothing `check_parameter` would look at (most parameters of most requests)
        else:
            types = plain.get(name)
            if types is not None and isinstance(value, types) and (types is _BOOLEAN or not isinstance(value, bool)):
                continue  # what `check_parameter` finds `_plain`, without the call nor the look at every key
        check_parameter(owner, name, spec, value, masked=name in masked)


#: JSON types whose check is an isinstance (a bool is none of them but `boolean`, as in JSON schema).
_PLAIN_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "boolean": (bool,), "integer": (int,),
                                            "number": (int, float), "object": (dict,), "array": (list,)}
_BOOLEAN = _PLAIN_TYPES["boolean"]
_PLAIN_KEYS = _EXTENSION_KEYS | {"type"}
#: Each parameter spec's validator, built once (a spec's id, kept alive with it, so ids are not reused).
_VALIDATORS: dict[int, tuple[Mapping[str, Any], Any]] = {}


def _plain(spec: Mapping[str, Any], value: Any) -> bool:
    """Whether `spec` asks nothing but a type `value` has: most parameters, checked without jsonschema.
    A list of types (`[integer, "null"]`, which JSON schema allows) is not plain: jsonschema checks it."""
    kind = spec.get("type")
    plain = _PLAIN_TYPES.get(kind) if isinstance(kind, str) else None
    return (plain is not None and isinstance(value, plain)
            and (spec["type"] == "boolean" or not isinstance(value, bool))
            and all(key in _PLAIN_KEYS for key in spec))


def plain_types(parameters: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[type, ...]]:
    """For each parameter whose spec asks nothing but one type (`_plain`'s keys), the Python types of its
    values (`Action.plain_types`, made once per loaded action: `validate` checks every request with it)."""
    return {name: _PLAIN_TYPES[spec["type"]] for name, spec in parameters.items()
            if isinstance(spec.get("type"), str) and spec["type"] in _PLAIN_TYPES
            and all(key in _PLAIN_KEYS for key in spec)}


def value_plan(parameters: Mapping[str, Mapping[str, Any]]
               ) -> tuple[tuple[str, dict[str, Any], Any, bool, frozenset[type] | None, bool], ...]:
    """For each parameter (`Action.value_plan`, made once per loaded action: `_resolve_given` reads every
    request with nothing to render by it): its name; its spec; its default (None: none); whether `cast`
    leaves a text as it is but `NONE_MAGIC_VALUE` (a `string`, or no type); the exact types of the values
    `validate` passes at a glance (`plain_types`; None: it looks at every value); whether it is required."""
    plain = plain_types(parameters)
    plan = []
    for name, spec in parameters.items():
        ptype = spec.get("type")
        types = plain.get(name)
        # matched exactly (`type(value) in kinds`): a bool is no `int` (nor an integer to `validate`), and
        # a subclass takes `validate`'s look
        kinds = None if types is None else frozenset(types)
        plan.append((name, spec, spec.get("default"), not isinstance(ptype, str) or ptype == "string", kinds,
                     bool(spec.get("required"))))
    return tuple(plan)


def _validator(spec: Mapping[str, Any]) -> Any:
    """The Draft 4 validator of a parameter's spec, built once (one per value was 3% of a chat command)."""
    cached = _VALIDATORS.get(id(spec))
    if cached is not None and cached[0] is spec:
        return cached[1]
    import jsonschema  # here, not at the top: ~35 ms that `squall serve` need not pay before it answers

    check = draft4({k: v for k, v in spec.items() if k not in _EXTENSION_KEYS})
    validator = jsonschema.Draft4Validator(check)
    if len(_VALIDATORS) >= 4096:  # pack reloads leave old specs behind: start again rather than grow
        _VALIDATORS.clear()
    _VALIDATORS[id(spec)] = (spec, validator)
    return validator


def check_parameter(owner: str, name: str, spec: Mapping[str, Any], value: Any, *, masked: bool = False) -> None:
    """One parameter's value (None: not given) against its spec: present if required, valid for its
    schema. `owner` says whose parameter it is (`action "core.local"`) in the required message.

    `validate` checks a request with it, and the web UI's forms (`bot/forms.py`) each field, so a form
    shows every field's problem at once in the words the CLI and the API use. `masked`: the value is
    never quoted, as for a `secret` parameter (see `cast`)."""
    if value is None:
        # A required parameter whose default is null is satisfied by it, as in StackStorm (which
        # fills defaults in before it checks `required`): the action gets it unset.
        if spec.get("required") and not ("default" in spec and spec["default"] is None):
            raise ParameterError(
                f'parameter "{name}" is required by {owner}'
                + (f" ({spec['description']})" if spec.get("description") else "")
            )
        return
    if _plain(spec, value):
        return
    import jsonschema  # here, not at the top: ~35 ms that `squall serve` need not pay before it answers

    error = jsonschema.exceptions.best_match(_validator(spec).iter_errors(value))
    if error is not None:
        where = "".join(f"[{p!r}]" for p in error.absolute_path)
        secret = bool(spec.get("secret")) or masked
        hidden = mask_value(name, value) if not secret else value
        # the value at `where` (`"tags"[1] = 2`), not the whole parameter's: taken from the masked whole,
        # whose credentials stay masked (MASK where masking changed its shape)
        element = hidden
        for step in error.absolute_path:
            try:
                element = element[step]
            except (KeyError, IndexError, TypeError):
                element = MASK
                break
        shown = MASK if secret else repr(element)
        # jsonschema's message quotes the value: not one whose credentials are shown masked everywhere else
        message = error.message if not secret and hidden is value else f"the value breaks '{error.validator}'"
        raise ParameterError(
            f'parameter "{name}"{where} = {shown} breaks the rule {error.validator}: {message}'
        )


def property_schema(schema: Mapping[str, Any], key: Any) -> Any:
    """The subschema describing key `key` of an object `schema` describes: its `properties` entry, else
    every `patternProperties` schema whose pattern finds the key, merged (each applies, as in
    jsonschema and StackStorm's config loader; a pack author's pattern stops after
    `engine.patterns.TIMEOUT`, and a bad one finds nothing), else `additionalProperties` when that is
    a schema; None when the schema says nothing of it."""
    properties = schema.get("properties")
    if isinstance(properties, Mapping) and key in properties:
        return properties[key]
    by_pattern = schema.get("patternProperties")
    if isinstance(by_pattern, Mapping) and by_pattern:
        from engine import patterns

        matched = []
        for pattern, sub in by_pattern.items():
            try:
                if isinstance(sub, Mapping) and patterns.search(str(pattern), str(key)) is not None:
                    matched.append(sub)
            except Exception:  # the `regex` package's error or its TimeoutError: the pattern finds nothing
                continue
        if matched:
            return {k: v for sub in matched for k, v in sub.items()}
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, Mapping) else None


def item_schema(schema: Mapping[str, Any], index: int) -> Any:
    """The subschema describing item `index` of an array `schema` describes: `items` (one schema for
    all, or positional ones), else `additionalItems` when that is a schema; None when it says nothing."""
    items = schema.get("items")
    if isinstance(items, Mapping):
        return items
    if isinstance(items, list) and 0 <= index < len(items):
        return items[index]
    extra = schema.get("additionalItems")
    return extra if isinstance(extra, Mapping) else None


def schema_masked(schema: Any, value: Any) -> Any:
    """`value` with every part its JSON `schema` marks `secret: true` shown as `********`, at any depth (a
    part's schema found as `property_schema` and `item_schema` find it; a secret object or list masked
    whole; a None left as it is: nothing given, nothing to hide): an inquiry's answers, as StackStorm's
    `mask_inquiry_response` shows them, and a pack's config (`engine.pack_config.masked_config`)."""
    if not isinstance(schema, Mapping):
        return value
    if schema.get("secret") and value is not None:
        return MASK
    if isinstance(value, Mapping):  # its properties, pattern properties or additional properties
        return {key: schema_masked(property_schema(schema, key), item) for key, item in value.items()}
    if isinstance(value, list):  # its items, one schema for all or positional
        return [schema_masked(item_schema(schema, index), item) for index, item in enumerate(value)]
    return value


def holds_secret(schema: Any) -> bool:
    """Whether a JSON schema is, or has at any depth (properties, pattern properties, additional
    properties, items one for all or positional, additional items), a `secret: true` property: a value
    it describes must not be quoted or shown as it is."""
    if not isinstance(schema, Mapping):
        return False
    children: list[Any] = [schema.get("additionalProperties"), schema.get("additionalItems")]
    for key in ("properties", "patternProperties"):
        found = schema.get(key)
        children.extend(found.values() if isinstance(found, Mapping) else ())
    items = schema.get("items")
    children.extend(items if isinstance(items, list) else [items])
    return bool(schema.get("secret")) or any(holds_secret(child) for child in children)


#: Names of keys whose values are secrets (`password`, `api_key`, `X-Auth-Token`, `Private-Key`): what
#: an audit event's detail masks at any depth (`engine.audit_sinks`) and a request's headers by name.
SECRET_NAME = re.compile(r"pass(word|wd)?|secret|token|api[_-]?key|private[_-]?key|credential", re.IGNORECASE)
#: HTTP headers that carry credentials, in lower case; beside them, any name with a word `SECRET_NAME`
#: names, or that holds `authorization` or `cookie` (`X-Authorization`, `Set-Cookie2`), is one (`secret_header`).
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key",
                            "x-auth-token", "st2-api-key", "x-st2-api-key"})
#: Parameters whose mapping holds credentials by key: the headers an HTTP request sends (those
#: `secret_header` names), its cookies (every one: a cookie sent is a session) and a command's environment
#: (`env`: those `secret_variable` names, `DB_PASSWORD`, `ST2_API_KEY`, what `st2 run -e` sends of the caller's).
MASKED_MAPPINGS = ("headers", "cookies", "env")
#: The `http-request` runner's URL parameter, the first of those `url_parameter` names.
URL_PARAMETER = "url"
#: How the name of a parameter whose value is a URL that may carry credentials ends, in any case: `url`
#: (`url`, `repo_url`, `webhookUrl`) and `_proxy` (the `http-request` runner's `http_proxy`, `https_proxy`).
_URL_NAME_ENDINGS = ("url", "_proxy")


def url_parameter(name: Any) -> bool:
    """Whether parameter `name` holds a URL whose credentials (`_url_login`) are shown as `********`."""
    return isinstance(name, str) and name.lower().endswith(_URL_NAME_ENDINGS)


class _MaskedNames(frozenset[str]):
    """The names `mask_value` may show otherwise than given: `headers`, `cookies`, `env`, and every URL parameter
    (`url_parameter`), which no fixed set can list. `name in MASKED_NAMES` is the one test, here and in the
    audit sinks (`engine.audit_sinks`), so a `repo_url` is masked wherever a `url` is."""

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (frozenset.__contains__(self, name) or url_parameter(name))


#: Every parameter `mask_value` may show otherwise than given: where a credential hides though no spec
#: says `secret`. Anything else is shown as it is, after one look-up here.
MASKED_NAMES = _MaskedNames({*MASKED_MAPPINGS, URL_PARAMETER})


@functools.lru_cache(maxsize=1024)
def _masked_name(name: str) -> bool:
    """`name in MASKED_NAMES`, kept for the parameter names lately asked about: `mask_value` asks for
    every value of every request and audit row, and the test takes two Python calls."""
    return name in MASKED_NAMES


def shown_parameters(parameters: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """An action's parameter schema as people are shown it, with each `default` masked by the rules a
    request's values are stored by (`mask`): a secret parameter's as `********`, the
    credentials in `headers` and `cookies`, a URL's `user:password@`. A default is given to every run that
    leaves the parameter out, so it is the same credential the execution's `parameters` mask; the viewers
    who read the actions must not find it in clear in the schema beside them. The one rule for the web's
    action page and the API's actions, the execution's embedded `action` among them
    (`bot.http.actions.action_public`); a client of the API only displays the defaults (st2's `run -h`),
    the engine applies them."""
    defaults = {name: spec["default"] for name, spec in parameters.items() if "default" in spec}
    shown = mask(defaults, {name for name, spec in parameters.items() if spec.get("secret")})
    return {name: {**spec, "default": shown[name]} if name in shown else dict(spec)
            for name, spec in parameters.items()}


#: A header name's word that names a secret (`X-Auth-Token`, `X-Api-Key`, `X-Vault-Secret`): `SECRET_NAME`'s
#: words, whole between dashes, so that `X-Bypass-Cache` and `X-Compass-Region` are no credentials.
_SECRET_HEADER_WORD = re.compile(
    r"(?:^|[-_ ])(?:pass(?:word|wd)?|secret|token|api[-_]?key|private[-_]?key|credentials?)(?:$|[-_ ])")


def secret_header(name: Any) -> bool:
    """Whether an HTTP header (any case) carries a credential, so its value is shown as `********`."""
    if not isinstance(name, str):
        return False
    lowered = name.strip().lower()
    return (lowered in SECRET_HEADERS or "authorization" in lowered or "cookie" in lowered
            or _SECRET_HEADER_WORD.search(lowered) is not None)


def secret_variable(name: Any) -> bool:
    """Whether an environment variable (a command's `env`) carries a credential, so its value is shown as
    `********`: a header's rule (`secret_header`: `DB_PASSWORD`, `ST2_API_KEY`), or a secret's word anywhere in
    its name (`SECRET_NAME`: `PGPASSWORD`, `VAULTTOKEN`), since variables are written without separators. A
    name masked needlessly (`BYPASS_CACHE`) costs its display only: the command gets every value."""
    return secret_header(name) or (isinstance(name, str) and SECRET_NAME.search(name) is not None)


def _shown(value: Any) -> Any:
    """A credential's value as shown: `********`, but for null and "" (nothing to hide)."""
    return value if value is None or value == "" else MASK


def mask_headers(headers: Mapping[Any, Any]) -> dict[Any, Any]:
    """A copy of `headers` (sent or received) with the value of each header that carries a credential
    (`secret_header`: `Authorization`, `Cookie`, `X-Api-Key`…) as `********`: the one rule for which of
    a request's headers are shown, which `mask` (a stored request's `headers` parameter) and the audit
    sinks apply."""
    return {k: _shown(v) if secret_header(k) else v for k, v in headers.items()}


def _as_mapping(value: Any) -> Mapping[Any, Any] | None:
    """`value` as the object cast would make of it: itself if a mapping, the object a text spells (what
    chat and approvals hold before the request is resolved), else None."""
    if isinstance(value, Mapping):
        return value
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            decoded = _decode(value)
        except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
            return None
        return decoded if isinstance(decoded, Mapping) else None
    return None


class _Login(NamedTuple):
    """A URL that carries a credential, as written: its scheme, its user as shown (may be ""), the `secret`
    it hides (never ""), its host with the port, if any, and where the secret stands in the URL's text.
    The secret is the password (`https://ann:pw@host/`), or, when the user is a token (`token_user`:
    `https://ghp_…@github.com/`), the whole of the user and password, and then the user shown is ""."""

    scheme: str
    user: str
    secret: str
    host: str
    start: int
    end: int
    token: bool = False

    def with_secret(self, url: str, secret: str) -> str:
        """`url` (the one this was read from) with `secret` in place of its own, all else as written."""
        return f"{url[:self.start]}{secret}{url[self.end:]}"


#: A URL's scheme and authority as requests reads them (urllib3's `parse_url`, after requests strips the
#: leading spaces): the authority ends at the first `/`, `?`, `#` or `\` (`http://ann:pw@a.example\@b.example/`
#: goes to a.example, with the password `pw`), and holds the user and password up to its last `@`.
_URL_AUTHORITY = re.compile(r"\s*([A-Za-z][A-Za-z0-9+.-]*)://([^\\/?#]*)")
#: An authority that names a host and maybe a port, which is where the request goes (`example.com:8080`,
#: `[::1]`), so an `@` after it is the path's or the query's (`?email=a@b.example`), not the end of a password.
_HOST_AND_PORT = re.compile(r"(?:\[[^\]]*\]|[^:\[\]]*)(?::\d+)?")
#: What ends a URL's authority (`_URL_AUTHORITY`), and so, unencoded in a password, ends what requests reads of it.
_AUTHORITY_END = re.compile(r"[\\/?#]")
#: A URL's text up to its first space (`_written_login`).
_UNSPACED = re.compile(r"\S*")


def _url_login(value: Any) -> _Login | None:
    """`value`'s user and password when it is a URL with a password in it (`https://ann:pw@host/`,
    `http://:token@host/`), read as requests reads them (`_URL_AUTHORITY`: the last `@` of the authority
    ends them, the first `:` parts them); None otherwise, at the cost of one `in` for a text without `@`.

    A password holding an unencoded `#`, `/` or `?` (`http://ann:Hash#Passw0rd@host/`) ends requests'
    authority early, at `ann:Hash`, which it cannot send (`Hash` is no port): read here as written, up to
    the last `@` before any space (`_written_login`), so that such a URL is shown and stored masked too."""
    if not isinstance(value, str) or "@" not in value:
        return None
    url = _URL_AUTHORITY.match(value)
    if url is None:
        return None
    authority, begins = url.group(2), url.start(2)
    if "@" not in authority:
        return _written_login(value, url)
    userinfo, _at, host = authority.rpartition("@")
    return _login(url.group(1), userinfo, host, begins)


def _written_login(value: str, url: re.Match[str]) -> _Login | None:
    """The user and password of a URL whose authority, as requests reads it, holds no `@` (`_url_login`):
    from after `scheme://` up to the last `@` before any space, when the `:` that ends its user is in that
    authority and the authority names no host and port (`http://example.com:8080/p?mail=a@b.example` is a
    URL with an `@` in its query, sent to example.com)."""
    authority = url.group(2)
    if ":" not in authority or _HOST_AND_PORT.fullmatch(authority):
        return None
    written = _UNSPACED.match(value, url.start(2))
    userinfo, at, rest = (written.group() if written else "").rpartition("@")
    return _login(url.group(1), userinfo, _AUTHORITY_END.split(rest, 1)[0], url.start(2)) if at else None


def _login(scheme: str, userinfo: str, host: str, begins: int) -> _Login | None:
    """The `_Login` of `userinfo` (`user:password`, which starts at `begins` in the URL's text): the user
    and password when the user is a token (`token_user`), else the password; None when it holds neither."""
    user, colon, password = userinfo.partition(":")
    if token_user(scheme, user):
        return _Login(scheme, "", userinfo, host, begins, begins + len(userinfo), token=True)
    if not colon or not password:
        return None
    start = begins + len(user) + 1
    return _Login(scheme, user, password, host, start, start + len(password))


#: Prefixes of the tokens services issue and take as a URL's bare user (`https://<token>@host/`): GitHub's
#: (personal, OAuth, user-to-server, server-to-server, refresh, fine-grained), GitLab's, Slack's.
TOKEN_PREFIXES = ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "glpat-", "xoxb-", "xoxp-", "xoxa-",
                  "xoxr-", "xoxs-")
#: A user that may be a token: only `[A-Za-z0-9_.-]` (no `%`, so no encoded `@` of an e-mail address).
_TOKEN_TEXT = re.compile(r"[A-Za-z0-9_.\-]+")
#: The shortest user of no known prefix that is taken for a token (with a digit in it): names are shorter.
TOKEN_USER_MIN = 20


def token_user(scheme: str, user: str) -> bool:
    """Whether `user`, an http(s) URL's user, is a credential: a token (a `TOKEN_PREFIXES` prefix and more, or
    `TOKEN_USER_MIN` characters or more with a digit, all of `[A-Za-z0-9_.-]`), or `********`, a token shown
    masked (a re-run's). GitHub, GitLab and others take a token as the user with no password (requests sends
    none for it, git does); `https://ann@host/`, `https://git@host/` and an `ssh://` URL's user are names."""
    if scheme.lower() not in ("http", "https"):
        return False
    if user == MASK:
        return True
    if not _TOKEN_TEXT.fullmatch(user):
        return False
    if any(user.startswith(prefix) and len(user) > len(prefix) for prefix in TOKEN_PREFIXES):
        return True
    return len(user) >= TOKEN_USER_MIN and any(c.isdigit() for c in user)


#: A query key that names a credential (`secret_query_key`), read lower-cased with its words joined by `_`
#: (`accessToken`, `X-Amz-Security-Token`, `API-Key`): one of `SECRET_NAME`'s words whole (`access_token`,
#: `api_key`, `apikey`, `client_secret`, `credentials`, not `tokens_count`, `passage`, `bypass_cache`), or ending
#: the key glued to another (`accesstoken`, `userpassword`), but for a bare `pass` (`compass`, `bypass`).
_SECRET_QUERY_KEY = re.compile(rf"(?:^|_)(?:{SECRET_NAME.pattern}|credentials)(?:$|_)"
                               rf"|(?!pass$)(?:{SECRET_NAME.pattern})$")
#: Where a query key's words part (`secret_query_key`): a run of anything not a letter or digit, and a capital
#: after a small letter or digit, or starting a word after capitals (`APIKey` → `api_key`).
_QUERY_KEY_BREAK = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
#: Whole query keys, decoded and lower-cased, that carry a credential in a URL only, so they are not in
#: `SECRET_NAME` (a header `Key-Id` or a variable `KEY_FILE` names none): an Azure SAS token's `sig`, the
#: signature of an AWS or Google signed URL (`Signature`, `X-Amz-Signature`, `X-Goog-Signature`; their
#: `X-Amz-Credential` and `X-Goog-Credential` are `SECRET_NAME`'s already), a Google API key (`?key=AIza…`).
#: Not `code` (an OAuth callback's one-use grant) nor `GoogleAccessId` (a service account's name).
SECRET_QUERY_KEYS = frozenset({"sig", "signature", "key", "x-amz-signature", "x-goog-signature"})


def secret_query_key(key: str) -> bool:
    """Whether a URL query's `key` (as written: percent-encoded, `+` for a space, in any case) names a credential
    (`_SECRET_QUERY_KEY`): `SECRET_NAME`'s words, the one rule for headers, variables and audit details, read as
    whole words, since a query's keys are words a server chose (`?tokens_count=`, `?passage=` name none), or at the
    key's end (`?accesstoken=`); or it is, whole, one of `SECRET_QUERY_KEYS` (`?sig=`, not `?signed_at=`)."""
    decoded = unquote_plus(key)
    if decoded.lower() in SECRET_QUERY_KEYS:
        return True
    words = _QUERY_KEY_BREAK.sub("_", decoded).strip("_").lower()
    return _SECRET_QUERY_KEY.search(words) is not None


def _query_span(url: Any) -> tuple[int, int] | None:
    """Where `url`'s query string stands in its text (after the `?`, up to the `#` of a fragment or the end), as
    requests reads it: after the authority (`_URL_AUTHORITY`) or a password written with a `?` in it
    (`_url_login`); None for no query or no URL, at the cost of one `in` for a text without `?`."""
    if not isinstance(url, str) or "?" not in url:
        return None
    found = _URL_AUTHORITY.match(url)
    if found is None:
        return None
    login = _url_login(url)
    after = found.end(2) if login is None else max(found.end(2), login.end)
    start, fragment = url.find("?", after), url.find("#", after)
    if start == -1 or -1 < fragment < start:
        return None
    end = url.find("#", start)
    return start + 1, len(url) if end == -1 else end


def _query_secrets(url: Any) -> list[tuple[str, int, int]]:
    """The credentials in `url`'s query (`secret_query_key`: `?api_key=…&token=…`): each one's key as decoded
    (`unquote_plus`) and where its value stands in the URL's text; an empty value is none."""
    span = _query_span(url)
    if span is None:
        return []
    found: list[tuple[str, int, int]] = []
    at = span[0]
    for pair in url[span[0]:span[1]].split("&"):
        key, equals, value = pair.partition("=")
        if equals and value and secret_query_key(key):
            found.append((unquote_plus(key), at + len(key) + 1, at + len(pair)))
        at += len(pair) + 1
    return found


def _with_query_values(url: str, values: Mapping[int, str]) -> str:
    """`url` with the value of each of its query credentials (`_query_secrets`) whose index `values` holds as that
    value; the rest of the URL as written, byte for byte."""
    pieces, done = [], 0
    for index, (_key, start, end) in enumerate(_query_secrets(url)):
        if index in values:
            pieces.extend([url[done:start], values[index]])
            done = end
    return "".join([*pieces, url[done:]])


def mask_url(url: Any) -> Any:
    """`url` with the password in it (`https://ann:********@host/`) shown as `********`, and a user that is
    a token (`token_user`: `https://********@github.com/`) with its password, if any, and each credential of its
    query (`secret_query_key`: `?api_key=********&page=2`); anything else as given, as written: the user, host,
    path and other query keys say where a request went and what it asked, a password or a token is a credential."""
    login = _url_login(url)
    shown = url if login is None else login.with_secret(url, MASK)
    secrets = _query_secrets(shown)
    return _with_query_values(shown, dict.fromkeys(range(len(secrets)), MASK)) if secrets else shown


def mask_value(name: str, value: Any) -> Any:
    """`value` of parameter `name` as shown where its spec does not say `secret`: a `headers` or `env` object
    with its credentials masked (`mask_headers`, `secret_variable`), a `cookies` object with every value
    masked, the password or token of a URL in a parameter `url_parameter` names (`mask_url`), anything else as
    it is. An object given as text comes back masked as an object when it held a credential, else as given:
    what changed is what must travel sealed (`ExecutionService._store`, `bot.chat.approvals`)."""
    if not isinstance(name, str) or not _masked_name(name):
        return value
    if url_parameter(name):
        return mask_url(value)
    mapping = _as_mapping(value)
    if mapping is None:
        return value
    if name == "env":
        shown = {k: _shown(v) if secret_variable(k) else v for k, v in mapping.items()}
    else:
        shown = mask_headers(mapping) if name == "headers" else {k: _shown(v) for k, v in mapping.items()}
    return value if shown == mapping else shown


def mask(values: Mapping[str, Any], secret_names: Collection[str]) -> dict[str, Any]:
    """A copy with every secret value replaced by `********` (None stays None), and the credentials in
    `headers` and `cookies` too (`mask_value`). What differs from `values` is what is sealed."""
    return {k: (MASK if k in secret_names and v is not None else mask_value(k, v)) for k, v in values.items()}


#: The shortest credential scrubbed as exact text where else it shows (a rendered `cmd`, output, a result,
#: a server's echo): tokens, session ids and `Basic` pairs are longer; `dark`, `en-US` and `gzip` are settings.
CREDENTIAL_MIN = 8


def credential_texts(values: Mapping[str, Any]) -> list[str]:
    """The credentials `mask_value` hides in `values`' `headers`, `env`, `cookies` and URL parameters (each
    credential header's or variable's value and a `Bearer <token>`'s token, each cookie of a `Cookie` header, each value
    of `cookies`, a URL's password or token as written and percent-decoded: `_url_texts`), as texts to
    scrub wherever else they show, as a secret parameter's are. Only what could be a credential:
    `CREDENTIAL_MIN` characters or more, and no JSON word or number (a cookie `consent=true` is a setting,
    and every `true` of a result is the action's). Longest first."""
    urls = [text for name, value in values.items() if url_parameter(name) for text in _url_texts(value)]
    if "headers" not in values and "cookies" not in values and "env" not in values:  # most requests: on its path twice
        return _credentials(set(urls)) if urls else []
    texts = _header_texts(_as_mapping(values.get("headers")))
    texts.update(str(value) for name, value in (_as_mapping(values.get("env")) or {}).items()
                 if secret_variable(name) and value is not None)
    cookies = _as_mapping(values.get("cookies"))
    texts.update(str(value) for value in (cookies or {}).values() if value is not None)
    return _credentials(texts, urls)


def _url_texts(url: Any) -> list[str]:
    """A URL's password (`credential_texts`), as written and percent-decoded (requests sends it decoded); for
    a token given as its user, the token and its password, if any, each alone too (git prints the token); each
    credential of its query as written and decoded (a server decodes `%2B` and `+`)."""
    texts = {text for _key, start, end in _query_secrets(url)
             for text in (url[start:end], unquote(url[start:end]), unquote_plus(url[start:end]))}
    login = _url_login(url)  # one `in` for a URL without `@`: every `core.http` request's
    if login is None:
        return _credentials(texts) if texts else []
    # and what requests reads of one holding an unencoded `#`, `/` or `?`, which its error quotes (`'ann:Hash'
    # is not a valid host or port`)
    read = _AUTHORITY_END.split(login.secret, 1)[0]
    texts.update([login.secret, unquote(login.secret), read])
    if login.token:
        texts.update(unquote(part) for part in login.secret.split(":", 1))
    return _credentials(texts)


def _credentials(texts: set[str], more: Collection[str] = ()) -> list[str]:
    """Those of `texts` and `more` that could be a credential (`credential_texts`), longest first."""
    texts.update(more)
    return sorted((t for t in texts if len(t) >= CREDENTIAL_MIN and not _json_word(t)), key=len, reverse=True)


def _header_texts(headers: Mapping[Any, Any] | None) -> set[str]:
    """The texts of `headers`' credentials (`credential_texts`): the value, a scheme's token, a cookie's."""
    texts: set[str] = set()
    for name, value in (headers or {}).items():
        if not secret_header(name) or not isinstance(value, str):
            continue
        texts.update([value, value.partition(" ")[2].strip()])
        if "cookie" in str(name).lower():
            texts.update(part.partition("=")[2].strip() for part in value.split(";"))
    return texts


def _json_word(text: str) -> bool:
    """Whether `text` is a JSON literal or number, which a result holds for its own reasons."""
    try:
        return not isinstance(json.loads(text), dict | list | str)
    except ValueError:
        return False


def restore_masked(given: Mapping[str, Any], original: Mapping[str, Any]) -> dict[str, Any]:
    """A re-run's `given` parameters with each `********` that `mask_value` showed in place of one of
    the `original`'s credentials (a header or cookie of the same name) replaced by that credential: the
    re-run form and the API show `headers` masked, and whoever edits one header of them sends the others
    back as shown. A mask under a name the original had no credential under stays as given; a header's
    name is matched in any case, and `headers` given as text comes back as text. A URL parameter
    (`url_parameter`) shown with its password or token masked gets the original's back (`_restored_url`) when
    it still names the same user and host."""
    restored = dict(given)
    for name, value in given.items():
        if url_parameter(name):
            restored[name] = _restored_url(value, original.get(name))
    for name in MASKED_MAPPINGS:
        new, old = _as_mapping(given.get(name)), _as_mapping(original.get(name))
        if new is None or old is None or not _holds_mask(new):
            continue
        shown = mask_value(name, old)
        hidden = {str(k).lower(): k for k, v in (shown.items() if isinstance(shown, Mapping) else ()) if v == MASK}
        mapping = {k: old[hidden[str(k).lower()]] if v == MASK and str(k).lower() in hidden else v
                   for k, v in new.items()}  # header names are the same in any case
        restored[name] = json.dumps(mapping) if isinstance(given.get(name), str) else mapping  # as it was given
    return restored


def _restored_url(given: Any, original: Any) -> Any:
    """`given` (a re-run's URL) with the `original`'s password or token in place of the `********` it shows,
    when both name the same scheme, user and host (and port), and both hide a token or both a password: the
    path or query edited, it goes where it went. Its query's credentials likewise (`_restored_query`). Else as
    given: whoever may re-run a request must not send its credential to a host of their choosing."""
    new = _url_login(given)
    if new is not None and new.secret == MASK:
        old = _url_login(original)
        if old is not None and _login_target(new) == _login_target(old):
            given = new.with_secret(given, old.secret)
    return _restored_query(given, original)


def _restored_query(given: Any, original: Any) -> Any:
    """`given` (a re-run's URL) with each query credential it shows as `********` (`?api_key=********`) given the
    `original`'s value under the same key (the first `********` of a key its first value, and so on), when both
    go to the same scheme, host and port (`_url_target`, as `retargeted` reads them): the path, the user or the
    other keys edited, it goes where it went. Else as given, as `_restored_url`."""
    secrets = _query_secrets(given)
    if not any(given[start:end] == MASK for _key, start, end in secrets) or not isinstance(original, str) \
            or _url_target(given) != _url_target(original):
        return given
    values: dict[str, list[str]] = {}
    for key, start, end in _query_secrets(original):
        values.setdefault(key, []).append(original[start:end])
    taken: dict[int, str] = {}
    seen: dict[str, int] = {}
    for index, (key, start, end) in enumerate(secrets):
        nth = seen[key] = seen.get(key, -1) + 1  # the key's first, second… value, as the original's
        if given[start:end] == MASK and nth < len(values.get(key, ())):
            taken[index] = values[key][nth]
    return _with_query_values(given, taken) if taken else given


def _login_target(login: _Login) -> tuple[str, str, str, bool]:
    """Whom a URL's credential is for: its scheme, user and host with the port (names in any case), and
    whether it is a token given as the user (a password is never put back as one, nor one as a password)."""
    return login.scheme.lower(), login.user, login.host.lower(), login.token


def _url_masked(url: Any) -> bool:
    """Whether `url`'s password or token (`_url_login`) or one of its query credentials (`_query_secrets`) is
    `********` as shown."""
    login = _url_login(url)
    return (login is not None and login.secret == MASK) or any(
        url[start:end] == MASK for _key, start, end in _query_secrets(url))


def _holds_mask(mapping: Mapping[Any, Any]) -> bool:
    """Whether one of `mapping`'s values is `********` as shown (a number or a flag never is)."""
    return any(isinstance(value, str) and value == MASK for value in mapping.values())


def shows_masked(given: Mapping[str, Any]) -> bool:
    """Whether a re-run's `given` parameters hold a `headers`, `env` or `cookies` object with a `********` in
    it, or a URL parameter whose password or token is one, which `restore_masked` may have to take from the
    original (only then is it read and unsealed)."""
    if any(url_parameter(name) and _url_masked(value) for name, value in given.items()):
        return True
    return any((mapping := _as_mapping(given.get(name))) is not None and _holds_mask(mapping)
               for name in MASKED_MAPPINGS)


#: A parameter that says where a request goes, besides a URL (`url_parameter`): a host or hosts (`hosts`,
#: `bastion_host`, `hostname`), a server, a port, an endpoint; a whole word of the name (`sshPort`, not `report`).
_TARGET_NAME = re.compile(r"(?i:(?:^|[_\-.])(?:hosts?|hostname|server|port|endpoint))$"
                          r"|[a-z](?:Hosts?|Hostname|Server|Port|Endpoint)$")
#: The port a scheme's URL goes to when it names none: `https://h/` and `https://h:443/` are one target.
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def target_parameter(name: Any) -> bool:
    """Whether parameter `name` says where its action sends what it is given (`retargeted`): a URL (`url`,
    `repo_url`, a proxy: `url_parameter`) or a host, server, port or endpoint (`_TARGET_NAME`)."""
    return url_parameter(name) or (isinstance(name, str) and _TARGET_NAME.search(name) is not None)


def _targets(name: str, value: Any) -> frozenset[Any]:
    """Where `value` of target parameter `name` sends a request: a URL's scheme and host with its port (as
    `_login_target` reads them, a default port dropped), each host of a list (`hosts: a, b`), or the text of
    anything else, in any case; nothing for None (the default applies: the pack author's, not the caller's)."""
    if value is None:
        return frozenset()
    if url_parameter(name) and isinstance(value, str):
        return frozenset([_url_target(value)])
    items = value if isinstance(value, list) else str(value).split(",") if isinstance(value, str) else [value]
    return frozenset(text for item in items if (text := str(item).strip().lower()))


def _url_target(url: str) -> tuple[str, str] | str:
    """`url`'s scheme and host with its port, as requests reads them (`_url_login`, `_URL_AUTHORITY`), the
    scheme's default port dropped; the stripped text itself when it is no URL."""
    login = _url_login(url)
    found = _URL_AUTHORITY.match(url) if login is None else None
    if login is None and found is None:
        return url.strip().lower()
    scheme, host = (login.scheme, login.host) if login is not None else (found[1], found[2].rpartition("@")[2])
    scheme, host = scheme.lower(), host.lower()
    default = _DEFAULT_PORTS.get(scheme)
    return scheme, host[:-len(default)] if default and host.endswith(default) else host


def retargeted(given: Mapping[str, Any], original: Mapping[str, Any]) -> list[str]:
    """The target parameters (`target_parameter`) that a re-run's `given` points somewhere the `original`'s
    values did not: another scheme, host or port of a URL or proxy, a host not among the original's hosts,
    another port. Fewer of the same hosts, or the same URL's path or query edited, is the same target."""
    return [name for name, value in given.items()
            if target_parameter(name) and not _targets(name, value) <= _targets(name, original.get(name))]


#: The settings that say how a request reaches its target, which a re-run may not weaken and keep the
#: original's credentials (`weakened`): each one's safe value, and what a re-run moving it off that does to
#: them. A re-run giving none (None) gets the http-request runner's default, StackStorm's `core.http`'s
#: (`verify_ssl_cert` true, `allow_redirects` false): `rerun_parameters` is given the original's values, not
#: the action's schema, so an action that declares another default is read as having the runner's.
_SAFE_SETTINGS: dict[str, tuple[bool, str]] = {
    "verify_ssl_cert": (True, "turned off (a TLS connection left unverified)"),
    "allow_redirects": (False, "turned on (followed wherever the target redirects)"),
}
_SETTING_DEFAULTS = {name: RUNNER_TYPES["http-request"].parameters[name]["default"] for name in _SAFE_SETTINGS}
#: The parameter naming the account a request's password, key or header logs in as (http-request's basic auth,
#: the remote runners' SSH login).
_ACCOUNT = "username"


def _setting(name: str, value: Any) -> bool | None:
    """Setting `name`'s `value` as the runner takes it: True or False (a boolean's text, as `cast` reads it), the
    runner's default for None, else None (no flag: a value `resolve` refuses, never the safe one)."""
    if value is None:
        return _SETTING_DEFAULTS[name]
    if isinstance(value, bool):
        return value
    text = value.strip().lower() if isinstance(value, str) else None
    return True if text in _TRUE else False if text in _FALSE else None


def _account(value: Any) -> str | None:
    """The account `value` of `_ACCOUNT` names; None for none (empty: the runner's own, no basic auth)."""
    return None if value is None or value == "" else str(value)


def weakened(given: Mapping[str, Any], original: Mapping[str, Any]) -> list[tuple[str, str]]:
    """How a re-run's `given` sends the `original`'s credentials less safely to the same target, each as the
    parameter and what it did: TLS verification turned off (`_SAFE_SETTINGS`: a server in between reads them),
    redirects turned on (followed with them: the http-request runner withholds them from another origin, an
    action's own code naming the setting may not), or another account (`_ACCOUNT`: the original's password tried
    for it). Verification turned on, redirects off, or a value left as it was weakens nothing."""
    changes = [(name, f"{name} {change}") for name, (safe, change) in _SAFE_SETTINGS.items()
               if name in given and _setting(name, original.get(name)) is safe
               and _setting(name, given[name]) is not safe]
    if _ACCOUNT in given and _account(given[_ACCOUNT]) != _account(original.get(_ACCOUNT)):
        changes.append((_ACCOUNT, f"a new {_ACCOUNT} (another account)"))
    return changes


def _credential_names(name: str, value: Any) -> list[str]:
    """How a re-run's refusal names the credentials `value` of parameter `name` holds: each masked key of
    `headers`, `env` or `cookies` (`headers.X-Api-Key`, `env.DB_PASSWORD`), else the parameter."""
    shown = _as_mapping(mask_value(name, value)) if name in MASKED_MAPPINGS else None
    keys = [f"{name}.{key}" for key, item in (shown or {}).items() if isinstance(item, str) and item == MASK]
    return keys or [name]


def _filled(given: Mapping[str, Any], restored: Mapping[str, Any]) -> list[str]:
    """The credentials `restore_masked` put in place of a `given` `********` (`headers.Authorization`, `url`)."""
    names: list[str] = []
    for name, value in given.items():
        if restored.get(name) == value:
            continue
        new, old = _as_mapping(value), _as_mapping(restored.get(name))
        if name in MASKED_MAPPINGS and new is not None and old is not None:
            names.extend(f"{name}.{key}" for key, item in new.items() if item == MASK and old.get(key) != MASK)
        else:
            names.append(name)
    return names


def rerun_parameters(given: Mapping[str, Any], original: Mapping[str, Any], sealed: Collection[str]) -> dict[str, Any]:
    """A re-run's `given` parameters, the credentials they show masked taken from the `original`'s (real)
    values (`restore_masked`): the one rule of what a re-run carries of someone else's request.

    To the same target, as safely, it carries everything: the `original`'s values given no other (`sealed` names
    those it was given and stored sealed: secret parameters, credential headers and cookies, what a secret was
    rendered into), and each `********` left as shown. When `given` points it elsewhere (`retargeted`: a new
    `url`'s host, a proxy, `hosts`) or sends them less safely (`weakened`: TLS verification off, redirects on,
    another `username`), it carries none of them: ParameterError names what changed and each credential to give
    again, since whoever may re-run a request must not send its credentials to a host of their choosing, nor
    where one could take them, and sending none would fail there in ways that do not say why."""
    restored = restore_masked(given, original) if shows_masked(given) else dict(given)
    moved, weaker = retargeted(given, original), weakened(given, original)
    if not moved and not weaker:
        return restored
    carried = [credential for name in sealed if name not in given
               for credential in _credential_names(name, original.get(name))]
    carried = list(dict.fromkeys([*carried, *_filled(given, restored)]))
    if carried:
        changes = [*([f"a new {', '.join(moved)} (not where the original went)"] if moved else []),
                   *(change for _, change in weaker)]
        kept = [*(["to the original's target"] if moved else []),
                *([f"with the original's {', '.join(name for name, _ in weaker)}"] if weaker else [])]
        raise ParameterError(f"re-running with {', '.join(changes)} does not carry the original's credentials"
                             f"{' there' if moved else ''}: give {', '.join(carried)} again, or re-run "
                             f"{' and '.join(kept)}")
    return restored
