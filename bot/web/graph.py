"""A workflow's read-only graph, as SVG drawn on the server from its definition, each task coloured by
the status of its latest execution and linked to it.

The definition is the one the engine runs: a run's own, kept in its `spec.workflow` at its first step
(`engine.workflows.service.kept_spec`, cached), which the engine conducts it from to its end, so a pack
updated meanwhile does not redraw a run with tasks it does not have; for a run that kept none (one
started before runs kept theirs, or not conducted yet) its action's file (`load_spec`, cached). Orquesta
tasks and their `next` transitions, ActionChain's `on-success`/`on-failure`, Mistral's
`on-success`/`on-error`/`on-complete`. Tasks go left to right by their distance from the start
(breadth first, so a loop back does not push its target right), in the definition's order within a
column. Every name is escaped; colours are classes (`squall.css`), since the page's
Content-Security-Policy forbids inline styles.
"""

from __future__ import annotations

import html
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup

from engine.actions import Action
from engine.workflows.service import KEPT, WORKFLOW_RUNNERS, kept_action, kept_spec, load_spec

NODE_W, NODE_H, GAP_X, GAP_Y, MARGIN = 170, 40, 70, 18, 12


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    #: `success`, `failure` or `other` (a class of the line).
    kind: str
    label: str


def _kind(condition: Any) -> str:
    text = str(condition or "")
    if "succeeded()" in text:
        return "success"
    if "failed()" in text:
        return "failure"
    return "other"


def _definition(action: Action | None, kept: Mapping[str, Any] | None) -> tuple[str, Any] | None:
    """The runner kind and parsed definition to draw: the run's `kept` one (its `spec.workflow`: the
    definition the engine conducts it from, and the action it started as) when it has one, else
    `action`'s file as it is now. None when it is no workflow, or its definition cannot be read or
    parsed (a file changed or removed since: the page still shows the task list)."""
    kept = kept if isinstance(kept, Mapping) else {}
    text = kept.get("definition")
    ran = (kept_action({"spec": {KEPT: kept}}) if isinstance(text, str) else None) or action
    if ran is None or ran.runner_type not in WORKFLOW_RUNNERS:
        return None
    try:
        if isinstance(text, str):  # named as the engine names it, so that its parse (cached by both) is reused
            return ran.runner_type, kept_spec(ran.runner_type, text, str(kept.get("file") or ran.ref))
        if ran.entry_path is not None:
            return ran.runner_type, load_spec(ran.runner_type, ran.entry_path, str(ran.entry_path))
    except Exception:  # shown without a graph, as a definition that could not be drawn
        return None
    return None


def workflow_edges(action: Action | None,
                   kept: Mapping[str, Any] | None = None) -> tuple[list[str], list[str], list[Edge]] | None:
    """The tasks (in definition order), where the workflow starts, and its transitions, of the run's
    `kept` definition, or else of `action`'s file (`_definition`); None when there is none to read (it is
    shown without a graph then)."""
    found = _definition(action, kept)
    if found is None:
        return None
    runner, spec = found
    edges: list[Edge] = []
    if runner == "action-chain":
        for node in spec.nodes.values():
            edges += [Edge(node.name, target, kind, label) for target, kind, label in (
                (node.on_success, "success", "on-success"), (node.on_failure, "failure", "on-failure")) if target]
        return list(spec.nodes), [spec.start], [e for e in edges if e.target in spec.nodes]
    if runner == "orquesta":
        for task in spec.tasks.values():
            for transition in task.next:
                label = str(transition.when) if transition.when is not None else ""
                edges += [Edge(task.name, target, _kind(label), label) for target in transition.do]
    else:
        kinds = {"on-success": "success", "on-error": "failure", "on-complete": "other"}
        for task in spec.tasks.values():
            for key, transitions in task.transitions.items():
                edges += [Edge(task.name, t.target, kinds.get(key, "other"), key) for t in transitions]
    return list(spec.tasks), list(spec.starts), [e for e in edges if e.target in spec.tasks]


def _columns(tasks: list[str], starts: list[str], edges: list[Edge]) -> dict[str, int]:
    """Each task's column: its distance from the nearest start (unreachable ones in the first)."""
    following: dict[str, list[str]] = {}
    for edge in edges:
        following.setdefault(edge.source, []).append(edge.target)
    column = {name: 0 for name in starts if name in tasks}
    queue = deque(column)
    while queue:
        name = queue.popleft()
        for target in following.get(name, ()):
            if target not in column:
                column[target] = column[name] + 1
                queue.append(target)
    return {name: column.get(name, 0) for name in tasks}


def task_states(children: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each task's latest execution (children oldest first): what the graph colours and links."""
    states: dict[str, dict[str, Any]] = {}
    for child in children:
        task = ((child.get("context") or {}).get("workflow_task") or {}).get("task")
        if task:
            states[task] = child
    return states


def svg(action: Action | None, children: list[dict[str, Any]],
        kept: Mapping[str, Any] | None = None) -> Markup | None:
    """The workflow's graph with each task's live status, drawn from the run's `kept` definition when it
    has one (`workflow_edges`); None when there is none to draw."""
    found = workflow_edges(action, kept)
    if found is None or not found[0]:
        return None
    tasks, starts, edges = found
    column = _columns(tasks, starts, edges)
    rows: dict[int, int] = {}
    place: dict[str, tuple[int, int]] = {}
    for name in tasks:
        row = rows.get(column[name], 0)
        rows[column[name]] = row + 1
        place[name] = (MARGIN + column[name] * (NODE_W + GAP_X), MARGIN + row * (NODE_H + GAP_Y))
    width = MARGIN * 2 + (max(column.values()) + 1) * (NODE_W + GAP_X) - GAP_X
    height = MARGIN * 2 + max(rows.values()) * (NODE_H + GAP_Y) - GAP_Y
    states = task_states(children)
    parts = [f'<svg class="graph" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-labelledby="graph-title">',
             '<title id="graph-title">The workflow\'s tasks and transitions</title>',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
             'orient="auto-start-reverse"><path class="graph-arrow" d="M 0 0 L 10 5 L 0 10 z"/></marker></defs>']
    for edge in edges:
        parts.append(_edge(edge, place[edge.source], place[edge.target]))
    for name in tasks:
        parts.append(_node(name, place[name], states.get(name)))
    parts.append("</svg>")
    return Markup("".join(parts))


def _edge(edge: Edge, source: tuple[int, int], target: tuple[int, int]) -> str:
    x1, y1 = source[0] + NODE_W, source[1] + NODE_H // 2
    x2, y2 = target[0], target[1] + NODE_H // 2
    if x2 <= x1:  # back to the same or an earlier column: around, below the boxes
        x1, x2 = source[0] + NODE_W // 2, target[0] + NODE_W // 2
        y1, y2 = source[1] + NODE_H, target[1] + NODE_H
        path = f"M {x1} {y1} C {x1} {y1 + 40}, {x2} {y2 + 40}, {x2} {y2}"
    else:
        middle = (x1 + x2) // 2
        path = f"M {x1} {y1} C {middle} {y1}, {middle} {y2}, {x2} {y2}"
    label = html.escape(f"{edge.source} → {edge.target}" + (f" ({edge.label})" if edge.label else ""))
    return (f'<path class="graph-edge graph-edge-{edge.kind}" d="{path}" marker-end="url(#arrow)">'
            f"<title>{label}</title></path>")


def _node(name: str, at: tuple[int, int], child: dict[str, Any] | None) -> str:
    x, y = at
    status = child["status"] if child else "not-started"
    shown = name if len(name) <= 22 else name[:21] + "…"
    body = (f'<g class="graph-task status-{html.escape(status)}" data-task="{html.escape(name)}">'
            f"<title>{html.escape(name)}: {html.escape(status.replace('-', ' '))}</title>"
            f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="6"/>'
            f'<text x="{x + 10}" y="{y + 16}" class="graph-name">{html.escape(shown)}</text>'
            f'<text x="{x + 10}" y="{y + 32}" class="graph-status">{html.escape(status.replace("-", " "))}</text>'
            "</g>")
    return f'<a href="/executions/{html.escape(child["id"])}">{body}</a>' if child else body
