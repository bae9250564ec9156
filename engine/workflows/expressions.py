"""Orquesta's expressions: YAQL in `<% %>` and Jinja in `{{ }}` / `{% %}` (spec §7.2).

Both languages see the same functions: `ctx()`, `item()`, `result()`, `succeeded()`, `failed()`,
`completed()`, `task_status()`, `task()`, `st2kv()`, `json()`, `zip()` and StackStorm's data
filters. A string that is one whole expression evaluates to its native value (a list stays a
list); a string mixing text and expressions renders to text, as Orquesta does. Mixing the two
languages in one string is an error. Every failure becomes `ExpressionError` naming the
expression, so a task can fail with it instead of the engine.
"""

from __future__ import annotations

import collections.abc  # noqa: F401  (yaql 3 reads collections.abc without importing it)
import functools
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import jinja2
import yaql
from yaql.language import factory, specs, yaqltypes

from engine import templates
from engine.runners.shell_template import shell_command, shell_environment
from engine.templates import build_environment, compiled
from engine.workflows.model import NO_DEFAULT

_YAQL_BLOCK = re.compile(r"<%(.*?)%>", re.DOTALL)
_JINJA_BLOCK = re.compile(r"\{\{(.*?)\}\}|\{%.*?%\}", re.DOTALL)
_WHOLE_YAQL = re.compile(r"^\s*<%((?:(?!%>).)*)%>\s*$", re.DOTALL)
_WHOLE_JINJA = re.compile(r"^\s*\{\{((?:(?!\}\}).)*)\}\}\s*$", re.DOTALL)
_STATE = "__squall_state"


class ExpressionError(Exception):
    """An expression that cannot be parsed or evaluated; the message names it, worded as Orquesta
    words it (`text` replaces the whole message where Orquesta words it otherwise)."""

    def __init__(self, expression: str, message: str, *, language: str = "yaql", text: str | None = None) -> None:
        super().__init__(text if text is not None else f"Unable to evaluate expression '{expression}'. {message}")
        self.expression = expression
        self.language = language

    @property
    def logged(self) -> str:
        """The message as StackStorm records it in a workflow's `errors`: the exception's class first."""
        kind = "JinjaEvaluationException" if self.language == "jinja" else "YaqlEvaluationException"
        return f"{kind}: {self}"


class ExpressionEvaluationException(Exception):
    """A function refused (unknown task, missing datastore key...); named in the message as Orquesta names it."""


class VariableUndefinedError(Exception):
    """`ctx(name)` of a variable the workflow never set."""

    def __init__(self, name: str) -> None:
        super().__init__(f'The variable "{name}" is undefined.')



class Scope:
    """What the functions of one evaluation see: the context and the current task's outcome."""

    __slots__ = ("ctx", "item", "result", "routed_tasks", "st2kv", "status", "task_name", "task_route", "tasks")

    def __init__(self, ctx: Mapping[str, Any], *, item: Any = None, result: Any = None, status: str | None = None,
                 tasks: Callable[[str], dict[str, Any] | None] | None = None,
                 st2kv: Callable[..., Any] | None = None, task_name: str | None = None, task_route: int = 0,
                 routed_tasks: Callable[[str, int], dict[str, Any] | None] | None = None) -> None:
        self.ctx = ctx
        self.item = item
        self.result = result
        self.status = status
        self.tasks = tasks
        self.st2kv = st2kv
        #: The task being rendered or transitioned from: what `task()` without a name means.
        self.task_name = task_name
        #: Its route (Orquesta's branch after a split): `task(name)` looks on it unless told another.
        self.task_route = task_route
        #: `(name, route) -> record` where the conductor keeps records per route; else `tasks(name)`.
        self.routed_tasks = routed_tasks

    def _record(self, name: str, route: Any = None) -> dict[str, Any] | None:
        if self.routed_tasks is not None:
            return self.routed_tasks(name, self.task_route if route is None else int(route))
        return self.tasks(name) if self.tasks is not None else None

    # The functions, shared by both languages.
    def f_ctx(self, name: str | None = None) -> Any:
        if name is None:
            return self.ctx
        if name not in self.ctx:
            raise VariableUndefinedError(name)
        return self.ctx[name]

    def f_item(self, name: str | None = None) -> Any:
        if name is None:
            return self.item
        if not isinstance(self.item, Mapping):
            raise ExpressionEvaluationException("Item is not type of collections.abc.Mapping.")
        if name in self.item:
            return self.item[name]
        raise ExpressionEvaluationException(f'Item does not have key "{name}".')

    def f_result(self) -> Any:
        return self.result

    def f_succeeded(self) -> bool:
        return self.status == "succeeded"

    def f_failed(self) -> bool:
        return self.status in ("failed", "timeout", "abandoned")

    def f_completed(self) -> bool:
        return self.status in ("succeeded", "failed", "timeout", "abandoned", "canceled")

    def f_task(self, name: str | None = None, route: Any = None) -> Any:
        """A task's record; without a name the current task's (StackStorm's `task()`), on the current
        task's route unless `route` names another (an earlier route before a split is looked on too)."""
        if name is None:
            name = self.task_name
            if name is None:
                raise ExpressionEvaluationException("The current task is not set in the context.")
        record = self._record(name, route)
        if record is None:
            raise ExpressionEvaluationException(f'Unable to find task execution for "{name}".')
        return record

    def f_task_status(self, name: str, route: Any = None) -> Any:
        record = self._record(name, route)
        return record["status"] if record else "null"

    def f_st2kv(self, key: str, decrypt: bool = False, default: Any = NO_DEFAULT) -> Any:
        """A datastore value; a missing key is an error unless `default` is given, even as null."""
        if not isinstance(key, str):
            raise TypeError("Given key is not typeof string.")
        if not isinstance(decrypt, bool):
            raise TypeError("Decrypt parameter is not typeof bool.")
        if self.st2kv is None:
            raise ExpressionEvaluationException("st2kv is not available here")
        try:
            return self.st2kv(key, decrypt, default)
        except KeyError as exc:
            raise ExpressionEvaluationException(str(exc.args[0]) if exc.args else str(exc)) from exc


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _zip(*lists: Any, pad: Any = None) -> list[list[Any]]:
    longest = max((len(x) for x in lists), default=0)
    return [[x[i] if i < len(x) else pad for x in lists] for i in range(longest)]


_SCOPE_FUNCTIONS = ("ctx", "item", "result", "succeeded", "failed", "completed", "task", "task_status", "st2kv")
_PLAIN_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "json": _json,
    "zip": _zip,
    "to_json_string": templates.to_json_string,
    "json_dump": templates.to_json_string,
    "from_json_string": templates.from_json_string,
    "json_parse": templates.from_json_string,
    "to_yaml_string": templates.to_yaml_string,
    "yaml_dump": templates.to_yaml_string,
    "from_yaml_string": templates.from_yaml_string,
    "yaml_parse": templates.from_yaml_string,
    "json_escape": templates.json_escape,
    "jsonpath_query": templates.jsonpath_query,
    "regex_match": templates.regex_match,
    "regex_search": templates.regex_search,
    "regex_replace": templates.regex_replace,
    "regex_substring": templates.regex_substring,
    "to_human_time_from_seconds": templates.to_human_time_from_seconds,
    "use_none": templates.use_none,
    "basename": templates.basename,
    "dirname": templates.dirname,
    "version_compare": templates.version_compare,
    "version_more_than": templates.version_more_than,
    "version_less_than": templates.version_less_than,
    "version_equal": templates.version_equal,
    "version_match": templates.version_match,
    "version_bump_major": templates.version_bump_major,
    "version_bump_minor": templates.version_bump_minor,
    "version_bump_patch": templates.version_bump_patch,
    "version_strip_patch": templates.version_strip_patch,
}


# -- YAQL ---------------------------------------------------------------------------------------

def _yaql_scope_function(name: str) -> Callable[..., Any]:
    method = getattr(Scope, f"f_{name}")

    @specs.name(name)
    @specs.inject("context", yaqltypes.Context())
    def call(context: Any, *args: Any, **kwargs: Any) -> Any:
        return method(context[_STATE], *args, **kwargs)

    return call


class _TimedLimit(int):
    """A YAQL limit (`yaql.limitIterators`, `yaql.memoryQuota`) that checks the evaluation's deadline
    (`templates.tick`) whenever YAQL compares against it. YAQL compares against the one at every item
    of every iterator it limits, and against the other after every function call (its memory check):
    together every step of an evaluation, so a loop the data makes long (`range(0, ctx(n))` nested)
    stops at `templates.max_seconds` as a Jinja template does, where the limits alone bound only sizes.
    An int still, for YAQL's own arithmetic and `isinstance` checks on it."""

    def __le__(self, other: int) -> bool:
        templates.tick()
        return super().__le__(other)

    def __ge__(self, other: int) -> bool:  # `0 <= limit` is asked of the limit (a subclass of int)
        templates.tick()
        return super().__ge__(other)

    def __lt__(self, other: int) -> bool:  # `total > quota`, likewise
        templates.tick()
        return super().__lt__(other)


@functools.lru_cache(maxsize=1)
def _yaql() -> tuple[Any, Any]:
    engine = factory.YaqlFactory().create(options={
        "yaql.convertInputData": True, "yaql.convertOutputData": True, "yaql.limitIterators": _TimedLimit(100_000),
        "yaql.memoryQuota": _TimedLimit(64 * 1024 * 1024),
    })
    root = yaql.create_context()
    for name in _SCOPE_FUNCTIONS:  # named as written: without `name=` yaql would register task_status as taskStatus
        root.register_function(_yaql_scope_function(name), name=name)
    for name, function in _PLAIN_FUNCTIONS.items():
        root.register_function(function, name=name)
    return engine, root


@functools.lru_cache(maxsize=4096)
def _yaql_parse(text: str) -> Any:
    engine, _ = _yaql()
    return engine(text)


def _yaql_eval(text: str, scope: Scope, raw: str | None = None) -> Any:
    """Evaluate one YAQL expression; `raw` is the expression as written (named in errors, as Orquesta
    names it). A key missing from data is worded apart, as Orquesta words it."""
    expression = raw if raw is not None else f"<% {text.strip()} %>"
    try:
        parsed = _yaql_parse(text.strip())
    except Exception as exc:
        raise ExpressionError(expression, f"YaqlGrammarException: {exc}") from exc
    _, root = _yaql()
    context = root.create_child_context()
    context[_STATE] = scope
    budget = templates.start_budget()  # `templates.max_seconds`, as a template has (see `_TimedLimit`)
    try:
        return parsed.evaluate(data=dict(scope.ctx), context=context)
    except templates.TooLongForTheLoop:
        raise  # evaluated under `templates.briefly`: the caller evaluates it again off the loop
    except KeyError as exc:
        key = str(exc.args[0] if exc.args else exc).strip("'")
        raise ExpressionError(expression, "", text=f"Unable to resolve key '{key}' in expression "
                                                   f"'{expression}' from context.") from exc
    except Exception as exc:
        raise ExpressionError(expression, f"{type(exc).__name__}: {str(exc).strip(chr(39))}") from exc
    finally:
        templates.end_budget(budget)


# -- Jinja --------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _jinja() -> jinja2.Environment:
    return build_environment()  # shared and never mutated; decrypt with st2kv(key, decrypt=true)


@functools.lru_cache(maxsize=4096)
def _jinja_compile(text: str, whole: bool) -> Any:
    env = _jinja()
    return env.compile_expression(text, undefined_to_none=False) if whole else env.from_string(text)


def _jinja_names(scope: Scope) -> dict[str, Any]:
    names: dict[str, Any] = dict(_PLAIN_FUNCTIONS)
    for name in _SCOPE_FUNCTIONS:
        names[name] = getattr(scope, f"f_{name}")
    return names


def _jinja_eval(text: str, scope: Scope, whole: bool, raw: str | None = None) -> Any:
    expression = raw if raw is not None else (f"{{{{ {text.strip()} }}}}" if whole else text)
    try:
        compiled = _jinja_compile(text, whole)
    except Exception as exc:
        raise ExpressionError(expression, f"JinjaSyntaxError: {exc}", language="jinja") from exc
    try:
        names = _jinja_names(scope)
        if whole:
            value = compiled(**names)
            if isinstance(value, jinja2.Undefined):
                value._fail_with_undefined_error()
            return value
        return compiled.render(names)
    except ExpressionError:
        raise
    except Exception as exc:
        raise ExpressionError(expression, f"{type(exc).__name__}: {exc}", language="jinja") from exc


# -- entry points ---------------------------------------------------------------------------------

def has_expression(value: Any) -> bool:
    return isinstance(value, str) and ("<%" in value or "{{" in value or "{%" in value)


def evaluate(value: Any, scope: Scope) -> Any:
    """Evaluate every expression in `value` (strings, recursively through lists and dicts)."""
    if isinstance(value, str):
        return _evaluate_text(value, scope)
    if isinstance(value, dict):
        return {evaluate(k, scope): evaluate(v, scope) for k, v in value.items()}
    if isinstance(value, list):
        return [evaluate(v, scope) for v in value]
    return value


def _evaluate_text(text: str, scope: Scope) -> Any:
    has_yaql = "<%" in text
    has_jinja = "{{" in text or "{%" in text
    if not has_yaql and not has_jinja:
        return text
    if has_yaql and has_jinja:
        raise ExpressionError(text, "Expressions of YAQL and Jinja cannot be mixed in one string.")
    if has_yaql:
        whole = _WHOLE_YAQL.match(text)
        if whole:
            return _yaql_eval(whole.group(1), scope, text.strip())
        return _YAQL_BLOCK.sub(lambda m: _embed(_yaql_eval(m.group(1), scope, m.group(0))), text)
    whole = _WHOLE_JINJA.match(text)
    if whole and "{%" not in text:
        return _jinja_eval(whole.group(1), scope, True, text.strip())
    return _jinja_eval(text, scope, False)


def evaluate_shell(text: str, scope: Scope) -> tuple[str, dict[str, str]]:
    """A shell task's `cmd` with expressions in it: bash text whose values travel in environment
    variables, as the shell runner renders its own templates (`shell_template`). An expression that
    is the whole `cmd` is the command itself, evaluated as usual."""
    if not has_expression(text) or _WHOLE_YAQL.match(text) or ("{%" not in text and _WHOLE_JINJA.match(text)):
        return str(_text(_evaluate_text(text, scope))), {}
    if "<%" in text:
        if "{{" in text or "{%" in text:
            raise ExpressionError(text, "Expressions of YAQL and Jinja cannot be mixed in one string.")
        return shell_command(lambda mark: _YAQL_BLOCK.sub(lambda m: mark(_embed(_yaql_eval(m.group(1), scope))), text),
                             text)

    def render(_mark: Any) -> str:
        try:
            return compiled(shell_environment(_jinja()), text).render(_jinja_names(scope))
        except Exception as exc:
            raise ExpressionError(text, f"{type(exc).__name__}: {exc}", language="jinja") from exc

    return shell_command(render, text)


def _embed(value: Any) -> str:
    """A YAQL value inside text, as Orquesta (and Mistral) put it there: Python's `str()`, so a
    boolean reads `True` and null `None`."""
    return value if isinstance(value, str) else str(value)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list | bool) or value is None:
        return json.dumps(value)
    return str(value)


def syntax_errors(value: Any) -> list[str]:
    """Parse (without evaluating) every expression in `value`; the messages of those that fail."""
    errors: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            errors += syntax_errors(k) + syntax_errors(v)
        return errors
    if isinstance(value, list):
        for v in value:
            errors += syntax_errors(v)
        return errors
    if not isinstance(value, str) or not has_expression(value):
        return errors
    if "<%" in value and ("{{" in value or "{%" in value):
        return [f"'{value}' mixes YAQL and Jinja expressions"]
    if "<%" in value:
        if value.count("<%") != value.count("%>"):
            return [f"'{value}' has an unclosed '<%'"]
        for block in _YAQL_BLOCK.findall(value):
            try:
                _yaql_parse(block.strip())
            except Exception as exc:
                errors.append(f"'<% {block.strip()} %>': {exc}")
        return errors
    try:
        _jinja().parse(value)
    except jinja2.TemplateSyntaxError as exc:
        errors.append(f"'{value}': {exc}")
    return errors
