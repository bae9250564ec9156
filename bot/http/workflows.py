"""`POST /api/v1/workflows/inspect` (`st2 workflow inspect --file FILE`, which CI jobs run to lint Orquesta
workflows): a definition sent as its YAML text (st2client sends it as `text/plain`) is checked without
running it, and answered with the list of its errors, `[]` when there is none, each shaped as StackStorm's
inspection shapes it (`type`, `message`, `spec_path`, `schema_path`; an expression's `language` and
`expression`).

The checks are the ones a run gets (`engine.workflows.orquesta`): `parse`, which a pack's workflow passes
at load, then `inspect_task_contents`, which a run passes at its first conduct, against the actions loaded
here; and StackStorm's context errors (`orquesta_inspect`: a variable read before anything sets it), which
StackStorm refuses a run for and Squall does not (docs/stackstorm-compat.md says why). `parse` stops at its
first problem, so a definition with several is answered with that one (its line in the message); the task
contents and the context are checked once the definition parses. Text that is not a YAML mapping is a 400,
as StackStorm's spec loader refuses it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml
from fastapi import APIRouter, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from bot.http.state import api_state
from engine.actions import Action
from engine.yamlfile import MAX_ALIAS_GROWTH, AliasesTooLarge, ContentError, ContentInvalid, LineMap
from engine.yamlfile import parse as parse_yaml

router = APIRouter()
#: What the definition is called in `parse`'s errors (it has no file).
_DISPLAY = "workflow definition"
#: Words of `orquesta.parse`'s reasons for tasks that do not connect (StackStorm's `semantic` errors, such as
#: 'The task "x" is not defined.'); its other reasons are an expression that does not parse (`expression`)
#: or the document's shape (`syntax`).
_SEMANTIC = ("names unknown task", "unreachable from the start tasks", "no task can start", "has no exit")
_EXPRESSION = re.compile(r"expression syntax error: '(?P<expression>.+?)': ", re.DOTALL)
#: The root context's keys in StackStorm's inspection (its API's `mock_st2_ctx`): `ctx().st2` is set, and
#: `ctx().parent`, which a run has, is not.
_INSPECTION_ROOT = ("st2",)
_HOW = "send the workflow file's text as the body (`st2 workflow inspect --file FILE`)"


@router.post("/workflows/inspect", tags=["workflows"], openapi_extra={"requestBody": {
    "required": True, "content": {"text/plain": {"schema": {"type": "string"}}}}})
async def inspect_workflow(request: Request) -> list[dict[str, Any]]:
    """StackStorm's workflow inspection: the errors of the Orquesta definition in the body. Checked on a
    thread, so a big definition's YAML and expressions do not hold up the loop's other requests."""
    actions = api_state(request).squall.registry.actions
    return await run_in_threadpool(inspection, await request.body(), actions)


def inspection(body: bytes, actions: Mapping[str, Action]) -> list[dict[str, Any]]:
    """The errors of the definition `body` holds, the task contents checked against `actions`; an
    `HTTPException` (400) for a body that is not a YAML mapping."""
    from engine.workflows import orquesta, orquesta_inspect  # YAQL and Jinja load with the first workflow

    data, node = _definition(body)
    try:
        spec = orquesta.parse(data, LineMap(node), _DISPLAY)
    except ContentInvalid as exc:
        return [_spec_error(exc.error)]

    def parameters_of(ref: str) -> orquesta.Parameters | None:
        action = actions.get(ref)
        return None if action is None else action.parameters

    return orquesta_inspect.inspect(spec, parameters_of, _INSPECTION_ROOT)


def _definition(body: bytes) -> tuple[dict[Any, Any], yaml.Node]:
    """The YAML mapping `body` holds, and its node (for `parse`'s lines); 400 for anything else."""
    try:
        data, node, _ = parse_yaml(body.decode("utf-8"), alias_growth=MAX_ALIAS_GROWTH)
    except UnicodeDecodeError as exc:
        raise HTTPException(400, f"The workflow definition is not UTF-8 text: {_HOW}.") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or exc
        raise HTTPException(400, f"The workflow definition is not valid YAML{where}: {problem}; {_HOW}.") from exc
    except AliasesTooLarge as exc:
        raise HTTPException(400, f"The workflow definition is refused: {exc}.") from exc
    if not isinstance(data, dict) or node is None:
        raise HTTPException(400, "The workflow definition must be a YAML mapping (an Orquesta workflow: `version: "
                                 f"1.0`, `input`, `tasks`, ...), not {type(data).__name__} text; {_HOW}.")
    return data, node


def _spec_error(error: ContentError) -> dict[str, Any]:
    """`parse`'s problem as an entry of StackStorm's inspection; its line, which StackStorm's entries lack,
    leads the message (the entry has no path to the place)."""
    message = f"line {error.line}: {error.reason}" if error.line else error.reason
    entry: dict[str, Any] = {"type": "syntax", "message": message, "spec_path": None, "schema_path": None}
    if "expression syntax error" in error.reason:
        entry["type"] = "expression"
        found = _EXPRESSION.search(error.reason)
        if found:
            expression = found.group("expression")
            entry.update(language="yaql" if expression.startswith("<%") else "jinja", expression=expression)
    elif any(words in error.reason for words in _SEMANTIC):
        entry["type"] = "semantic"
    return entry
