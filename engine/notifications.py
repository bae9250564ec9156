"""Action `notify` (spec §4): on completion, tell each section's routes.

`on-complete` always, `on-success` when succeeded, `on-failure` when failed, timed out or
abandoned; the default message is StackStorm's ("Action <ref> succeeded."). The engine fires
`core.st2.generic.actiontrigger` and `notifytrigger` (for rules) and publishes `NOTIFICATION_DUE`
with the rendered messages; the chat side (`bot/chat/notices.py`) posts those whose route is a
configured chat target. Unlike StackStorm, an action's own `notify` never suppresses the result
of a chat-started execution: that reply is the dispatcher's, independent of this.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from engine.events import EXECUTION_FINISHED, NOTIFICATION_DUE, Events
from engine.executions import FAILED
from engine.templates import TemplateRenderError, render_template, render_value, rendered

if TYPE_CHECKING:
    from engine.packs import Registry
    from engine.triggers import TriggerService

log = logging.getLogger(__name__)
ACTION_TRIGGER = "core.st2.generic.actiontrigger"
NOTIFY_TRIGGER = "core.st2.generic.notifytrigger"
_DEFAULT = {"on-complete": "completed", "on-success": "succeeded", "on-failure": "failed"}


def sections_for(notify: dict[str, Any], status: str) -> list[tuple[str, dict[str, Any]]]:
    chosen = [("on-complete", notify.get("on-complete"))]
    if status == "succeeded":
        chosen.append(("on-success", notify.get("on-success")))
    if status in FAILED:
        chosen.append(("on-failure", notify.get("on-failure")))
    return [(name, section) for name, section in chosen if section]


def _rendered(data: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """StackStorm renders notify `data`; a value that fails keeps its raw text."""
    rendered = {}
    for key, value in data.items():
        try:
            rendered[key] = render_value(value, context)
        except TemplateRenderError:
            rendered[key] = value
    return rendered


class Notifier:
    """Listens for finished executions (`EXECUTION_FINISHED`) and tells what their `notify` asks."""

    def __init__(self, registry: Callable[[], Registry], triggers: TriggerService, events: Events) -> None:
        self.registry = registry
        self.triggers = triggers
        self.events = events
        events.subscribe(EXECUTION_FINISHED, self.on_finished)

    def notify_of(self, execution: dict[str, Any]) -> dict[str, Any] | None:
        """The `notify` that applies: a workflow's task carries its workflow's ({} for none)."""
        action = self.registry().actions.get(execution["action"])
        return execution["context"].get("notify", action.notify if action is not None else None)

    def on_finished(self, execution: dict[str, Any]) -> Coroutine[Any, Any, None] | None:
        """What there is to tell of a finished execution, or None when nothing is (no rule on the
        action trigger, no `notify`): most executions then cost no task here."""
        notify = self.notify_of(execution)
        if not notify and not self.triggers.wanted(ACTION_TRIGGER):
            return None
        return self._tell(execution, notify or {})

    async def _tell(self, execution: dict[str, Any], notify: dict[str, Any]) -> None:
        triggers = self.triggers
        if triggers.wanted(ACTION_TRIGGER):
            await triggers.dispatch(ACTION_TRIGGER, {
                "execution_id": execution["id"], "status": execution["status"],
                "start_timestamp": execution["start_timestamp"], "action_name": execution["action"].split(".", 1)[-1],
                "action_ref": execution["action"], "runner_ref": execution["runner"],
                "parameters": execution["parameters"], "result": execution.get("result"),
            }, validate=False)
        told = await rendered(messages, execution, notify, triggers.wanted(NOTIFY_TRIGGER))
        if told:
            self.events.publish(NOTIFICATION_DUE, execution, [(route, message) for route, message, _ in told])
        if triggers.wanted(NOTIFY_TRIGGER):
            for route, message, data in told:
                await triggers.dispatch(NOTIFY_TRIGGER, {
                    "execution_id": execution["id"], "status": execution["status"],
                    "start_timestamp": execution["start_timestamp"],
                    "end_timestamp": execution["end_timestamp"], "action_ref": execution["action"],
                    "runner_ref": execution["runner"], "route": route, "channel": route,
                    "message": message, "data": {**data, "result": json.dumps(execution.get("result"))},
                }, validate=False)


def messages(execution: dict[str, Any], notify: dict[str, Any],
             data: bool = False) -> list[tuple[str, str, dict[str, Any]]]:
    """(route, message, rendered data if `data`) for each route of each section that applies, in order."""
    told = []
    for name, section in sections_for(notify, execution["status"]):
        routes = section.get("routes") or section.get("channels") or []
        if not routes:
            continue
        context = {"action_parameters": execution["parameters"], "action_context": execution["context"],
                   "action_results": execution.get("result"), "execution": execution}
        template = section.get("message") or f"Action {execution['action']} {_DEFAULT[name]}."
        try:
            message = render_template(template, context)
        except TemplateRenderError as exc:
            log.warning("notify message of %s does not render: %s", execution["action"], exc)
            message = template
        rendered = _rendered(section.get("data") or {}, context) if data else {}
        told += [(str(route), message, rendered) for route in routes]
    return told


def by_route(told: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Messages grouped by route, in order."""
    grouped: dict[str, list[str]] = {}
    for route, message in told:
        grouped.setdefault(route, []).append(message)
    return grouped
