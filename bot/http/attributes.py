"""StackStorm's projections: `include_attributes` and `exclude_attributes` on execution reads.

st2web's history and `st2 execution list` name the attributes they show (`include_attributes=id,
status,action.ref,context.user,...`) so that a list ships no results: one execution's output may be
megabytes. Each is a comma-separated list of attribute names, dotted for a key inside one
(`action.ref`); `id` is always kept. As StackStorm does, the two are mutually exclusive, and a name
that is no attribute of an execution is a 400 naming it. Names StackStorm's executions have and
Squall's do not (`rule`, `trigger`, `web_url`, ...) are accepted and select nothing: st2web asks for
them of every execution."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Query

#: The attributes of StackStorm's ActionExecution, and the ones Squall adds (`runner_info`, `task`).
EXECUTION_ATTRIBUTES = frozenset({
    "id", "action", "runner", "liveaction", "status", "start_timestamp", "end_timestamp", "elapsed_seconds",
    "parameters", "result", "context", "parent", "children", "log", "runner_info", "task",
    "trigger", "trigger_type", "trigger_instance", "rule", "workflow_execution", "task_execution", "delay",
    "web_url"})


def _names(value: str | None) -> list[str]:
    return [name.strip() for name in (value or "").split(",") if name.strip()]


class Projection:
    """A route's `Depends(Projection)`: which attributes of an execution to answer with."""

    def __init__(self, include_attributes: str | None = Query(
                     None, description="Comma-separated attributes to answer with (dotted for nested keys)."),
                 exclude_attributes: str | None = Query(
                     None, description="Comma-separated attributes to leave out.")) -> None:
        self.include = _names(include_attributes)
        self.exclude = _names(exclude_attributes)
        if self.include and self.exclude:
            raise HTTPException(400, "include_attributes and exclude_attributes are mutually exclusive: "
                                     "give one or the other, not both")
        for kind, names in (("include", self.include), ("exclude", self.exclude)):
            for name in names:
                if name.partition(".")[0] not in EXECUTION_ATTRIBUTES:
                    raise HTTPException(400, f"Invalid or unsupported {kind} attribute specified: {name} "
                                             f"(an execution's attributes: {', '.join(sorted(EXECUTION_ATTRIBUTES))})")

    def __call__(self, document: dict[str, Any]) -> dict[str, Any]:
        """`document` with only the included attributes (and `id`), or without the excluded ones."""
        if self.include:
            shown: dict[str, Any] = {"id": document["id"]}
            for name in self.include:
                _copy(document, shown, name.split("."))
            return shown
        if self.exclude:
            shown = dict(document)
            for name in self.exclude:
                _drop(shown, name.split("."))
            return shown
        return document


def _copy(source: Any, target: dict[str, Any], path: list[str]) -> None:
    """Copy `source`'s value at `path` into `target` at the same path (nothing where it has none)."""
    head, rest = path[0], path[1:]
    if not isinstance(source, dict) or head not in source:
        return
    if not rest:
        target[head] = source[head]
        return
    inner = target.get(head)
    if not isinstance(inner, dict):
        if not isinstance(source[head], dict):
            return
        inner = target[head] = {}
    _copy(source[head], inner, rest)
    if not inner:
        del target[head]


def _drop(document: dict[str, Any], path: list[str]) -> None:
    """Remove the value at `path`, copying the dictionaries on the way (the document's own are shared)."""
    head, rest = path[0], path[1:]
    if head not in document:
        return
    if not rest:
        del document[head]
    elif isinstance(document[head], dict):
        document[head] = dict(document[head])
        _drop(document[head], rest)
