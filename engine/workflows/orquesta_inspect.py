"""StackStorm's inspection of an Orquesta workflow (st2common's `workflows.inspect`): its `content` errors
(`orquesta.inspect_task_contents`) and Orquesta's `context` errors (`inspect_context`), a variable that an
expression reads (`ctx().x`, `ctx(x)`, `ctx('x')`, in `<% %>` or `{{ }}`) before anything sets it. Squall
answers it on `POST /workflows/inspect`; a run is checked for its content errors only (StackStorm's refuses
context errors too: docs/stackstorm-compat.md says why Squall's does not).

The context check is orquesta's (specs/base.py and specs/native/v1/models.py), ported as it is, on the
definition as written: the root context holds the application's context keys (`st2`, and a run's `parent`),
then each input and each var in order, each seeing those before it; each task is visited breadth-first from
the start tasks with the context its inbound transition gave it (a join the union of those that arrived),
and a transition checks its `when` against its task's context, then its `publish` items in order, each
seeing those before it; what it publishes goes on to the tasks it names. A task already visited is not
visited again from another branch (so a loop's head sees its first arrival only), and the output is checked
against every context visited. `retry` and `join` are not checked. As orquesta's, a transition naming two
tasks, or a task visited with two contexts, reports its errors once each. Errors are sorted as StackStorm
sorts them: by type, then schema path (orquesta sorted a type's by schema path, then spec path)."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from engine.workflows.orquesta import (
    _TASK_SCHEMA_PATH,
    ENGINE_COMMANDS,
    Parameters,
    WorkflowSpec,
    inspect_task_contents,
    parse_inline_params,
)

#: Orquesta's evaluators' `_regex_pattern` and `_delimiter` (the characters stripped from an expression's
#: ends), by language: the expressions whose context references are checked (not Jinja's `{% %}` blocks).
_EXPRESSIONS = (("yaql", re.compile(r"<%.*?%>"), "<%>"), ("jinja", re.compile(r"{{.*?}}"), "{}"))
_REF = r"[][a-zA-Z0-9_'\"\.()]*"
#: Orquesta's `_regex_ctx_pattern`: a reference to the context, `ctx(...)` and what follows it.
_CTX_REFERENCE = re.compile(rf"\bctx\(['\"]?{_REF}['\"]?\)\.?{_REF}")
_VAR = r"[a-zA-Z0-9_-]+"
#: Orquesta's `_regex_var_extracts`: the variable's name in `ctx().x`, `ctx(x)`, `ctx('x')`, `ctx("x")`.
_VAR_NAMES = tuple(re.compile(pattern) for pattern in (
    rf"(?<=\bctx\(\)\.)({_VAR})\b(?!\()\.?", rf"(?:\bctx\(({_VAR})\))", rf"(?:\bctx\('({_VAR})'\))",
    rf'(?:\bctx\("({_VAR})"\))'))
_TRANSITION_SCHEMA_PATH = f"{_TASK_SCHEMA_PATH}.properties.next.items"


def inspect(spec: WorkflowSpec, parameters_of: Callable[[str], Parameters | None],
            app_ctx: Iterable[str]) -> list[dict[str, Any]]:
    """StackStorm's `workflows.inspect` as far as Squall has it: the content and context errors of `spec`
    (its other errors, syntax and semantics, `parse` refuses first), in StackStorm's order. `app_ctx` is the
    root context's keys: StackStorm's inspection API mocks `st2` alone, its runner gives `st2` and `parent`."""
    errors = inspect_task_contents(spec, parameters_of) + inspect_context(spec.definition, app_ctx)
    return sorted(errors, key=lambda error: (error["type"], error["schema_path"]))


def inspect_context(definition: Mapping[str, Any], app_ctx: Iterable[str]) -> list[dict[str, Any]]:
    """Orquesta's `WorkflowSpec.inspect_context` (see the module's docstring), each error shaped as
    StackStorm's inspection shapes it (`type: context`, `language`, `expression`, `message`, `spec_path`,
    `schema_path`), sorted as orquesta's `inspect` sorts them."""
    errors: list[dict[str, Any]] = []
    ctx = set(app_ctx)
    for key in ("input", "vars"):
        ctx = _inspect(definition.get(key), ctx, key, f"properties.{key}", errors, sets_names=True)
    tasks = definition.get("tasks")
    if isinstance(tasks, Mapping):
        ctx |= _inspect_tasks({str(name): body or {} for name, body in tasks.items()}, ctx, errors)
    _inspect(definition.get("output"), ctx, "output", "properties.output", errors, sets_names=True)
    return sorted(errors, key=lambda error: (error["schema_path"], error["spec_path"]))


def _references(statement: Any) -> list[tuple[str, str, str]]:
    """Orquesta's `extract_vars`: (language, expression, variable) for each context variable that the
    strings in `statement` (keys and values, at any depth) read, by variable name."""
    found: list[tuple[str, str, str]] = []
    if isinstance(statement, Mapping):
        for key, value in statement.items():
            found += _references(key) + _references(value)
    elif isinstance(statement, list):
        for item in statement:
            found += _references(item)
    elif isinstance(statement, str):
        for language, expression, delimiter in _EXPRESSIONS:
            references = {reference.strip() for block in expression.findall(statement)
                          for reference in _CTX_REFERENCE.findall(block.strip(delimiter).strip())}
            for reference in sorted(references):
                for pattern in _VAR_NAMES:
                    match = pattern.search(reference)
                    if match:
                        found.append((language, statement, match.group(1)))
    return sorted(dict.fromkeys(found), key=lambda reference: reference[2])


def _check(value: Any, ctx: set[str], spec_path: str, schema_path: str, errors: list[dict[str, Any]]) -> None:
    """Orquesta's `inspect_ctx`: each variable `value` reads that is private or not in `ctx`."""
    for language, expression, name in _references(value):
        messages = []
        if name.startswith("__"):
            messages.append(f'Variable "{name}" that is prefixed with double underscores is considered a '
                            "private variable and cannot be referenced.")
        if name not in ctx:
            messages.append(f'Variable "{name}" is referenced before assignment.')
        errors += [{"type": "context", "language": language, "expression": expression, "message": message,
                    "spec_path": spec_path, "schema_path": schema_path} for message in messages]


def _names(value: Any) -> list[Any]:
    """Orquesta's `get_ctx_inputs`: the names an entry of `input`, `vars`, `publish` or `output` sets."""
    if isinstance(value, Mapping):
        return list(value)
    if isinstance(value, list):
        return [name for item in value for name in (
            [item] if isinstance(item, str) else list(item) if isinstance(item, Mapping) and len(item) == 1
            else [])]
    return [value] if isinstance(value, str) else []


def _inspect(value: Any, ctx: set[str], spec_path: str, schema_path: str, errors: list[dict[str, Any]], *,
             sets_names: bool = False) -> set[str]:
    """Orquesta's check of one property of a spec: a text with inline parameters (`k=v ...`) is checked as
    their list, a list item by item (`spec_path[i]`), each seeing the names the items before it set when the
    property sets names (`sets_names`); the context after it."""
    if not value:
        return ctx
    if isinstance(value, str):
        value = [{key: item} for key, item in parse_inline_params(value)] or value
    for path, item in ([(f"{spec_path}[{i}]", item) for i, item in enumerate(value)] if isinstance(value, list)
                       else [(spec_path, value)]):
        _check(item, ctx, path, schema_path, errors)
        if sets_names:
            ctx = ctx | set(_names(item))
    return ctx


def _next_names(transition: Mapping[str, Any]) -> list[str]:
    """The tasks a transition names (orquesta's default `do` is `continue`)."""
    do = transition.get("do") or "continue"
    return [name.strip() for name in do.split(",")] if isinstance(do, str) else list(do)


def _transitions(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [t for t in body.get("next") or [] if isinstance(t, Mapping)]


def _inspect_tasks(tasks: dict[str, Any], ctx: set[str], errors: list[dict[str, Any]]) -> set[str]:
    """Orquesta's `TaskMappingSpec.inspect_context`, breadth-first from the start tasks (by name); the union
    of every context it visited."""
    targets = {name: {target for t in _transitions(body) for target in _next_names(t)}
               for name, body in tasks.items() if isinstance(body, Mapping)}
    queue: deque[tuple[str, set[str] | None]] = deque(
        (name, set(ctx)) for name in sorted(tasks) if not any(name in named for named in targets.values()))
    rolling, traversed = set(ctx), set()
    joins: dict[str, set[str]] = {}
    queued_with: dict[str, set[str]] = {}
    while queue:
        name, task_ctx = queue.popleft()
        traversed.add(name)
        task_ctx = task_ctx or joins.get(name, set())
        body = {} if name in ENGINE_COMMANDS else tasks[name]
        if not isinstance(body, Mapping):
            continue
        spec_path = f"tasks.{name}"
        _inspect_task(body, task_ctx, spec_path, errors)
        rolling |= task_ctx
        for index, transition in enumerate(_transitions(body)):
            for target in _next_names(transition):
                branch_ctx = _inspect_transition(transition, task_ctx, f"{spec_path}.next[{index}]", errors)
                if target in traversed or not (target in ENGINE_COMMANDS or target in tasks):
                    continue
                target_body = {} if target in ENGINE_COMMANDS else tasks[target]
                if not (isinstance(target_body, Mapping) and target_body.get("join")):
                    if queued_with.get(target) != branch_ctx:
                        queue.append((target, branch_ctx))
                        queued_with[target] = branch_ctx
                else:
                    joins[target] = joins.get(target, set()) | branch_ctx
                    queue.append((target, None))
    return rolling


def _inspect_task(body: Mapping[str, Any], ctx: set[str], spec_path: str, errors: list[dict[str, Any]]) -> None:
    """Orquesta's `TaskSpec.inspect_context`: `delay`, `with` (its `items`, `concurrency`), `action` and
    `input` (an `action`'s inline parameters are its input), in that order."""
    schema_path = f"{_TASK_SCHEMA_PATH}.properties"
    _inspect(body.get("delay"), ctx, f"{spec_path}.delay", f"{schema_path}.delay", errors)
    with_ = body.get("with")
    with_ = {"items": with_} if isinstance(with_, str) else with_
    if isinstance(with_, Mapping):
        for key in ("items", "concurrency"):
            _inspect(with_.get(key), ctx, f"{spec_path}.with.{key}", f"{schema_path}.with.properties.{key}", errors)
    action, given = body.get("action"), body.get("input")
    inline = dict(parse_inline_params(action)) if isinstance(action, str) else {}
    if inline:
        action, given = action[:action.index(" ")] if " " in action else action, inline
    _inspect(action, ctx, f"{spec_path}.action", f"{schema_path}.action", errors)
    _inspect(given, ctx, f"{spec_path}.input", f"{schema_path}.input", errors)


def _inspect_transition(transition: Mapping[str, Any], ctx: set[str], spec_path: str,
                        errors: list[dict[str, Any]]) -> set[str]:
    """Orquesta's `TaskTransitionSpec.inspect_context`: `when` against the task's context, then each
    `publish` item seeing those before it, then `do`; the context it gives the tasks it names."""
    _inspect(transition.get("when"), ctx, f"{spec_path}.when", f"{_TRANSITION_SCHEMA_PATH}.properties.when", errors)
    publish = transition.get("publish")
    if isinstance(publish, str):
        publish = [{key: value} for key, value in parse_inline_params(publish)]
    published = _inspect(publish, ctx, f"{spec_path}.publish", f"{_TRANSITION_SCHEMA_PATH}.properties.publish",
                         errors, sets_names=True)
    _inspect(transition.get("do") or "continue", published, f"{spec_path}.do",
             f"{_TRANSITION_SCHEMA_PATH}.properties.do", errors)
    return published
