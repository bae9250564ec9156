"""Action `notify` (spec §4): on completion, post each section's message to its routes.

`on-complete` always, `on-success` when succeeded, `on-failure` when failed, timed out or
abandoned; the default message is StackStorm's ("Action <ref> succeeded."). A route that names a
configured chat target (`routes:` in config) gets the message there. Unlike StackStorm, an
action's own `notify` never suppresses the result of a chat-started execution: that reply is
the dispatcher's, independent of this.

A route's messages are stored keyed (execution_id, "notify:<route>"), in one transaction: stored
once, whoever tries. A crash between an execution's final status and its notification is made up
for by `post_missing` (run by the chat service's sweep), which stores the chat messages still owed,
at most once; triggers are not fired again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine
from datetime import datetime
from typing import TYPE_CHECKING, Any

from adapters.base import Reply
from engine.executions import COMPLETED, FAILED, public
from engine.templates import TemplateRenderError, render_template, render_value

if TYPE_CHECKING:
    from bot.app import Squall

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
    def __init__(self, squall: Squall) -> None:
        self.squall = squall

    def on_finished(self, execution: dict[str, Any]) -> Coroutine[Any, Any, None] | None:
        """What there is to tell of a finished execution, or None when nothing is (no rule on the
        action trigger, no `notify`): most executions then cost no task here."""
        action = self.squall.registry.actions.get(execution["action"])
        # A workflow's task carries the notify its workflow gave it ({} for none); others use their action's.
        notify = execution["context"].get("notify", action.notify if action is not None else None)
        if not notify and not self.squall.triggers.wanted(ACTION_TRIGGER):
            return None
        return self._tell(execution, notify or {})

    async def _tell(self, execution: dict[str, Any], notify: dict[str, Any]) -> None:
        triggers = self.squall.triggers
        if triggers.wanted(ACTION_TRIGGER):
            await triggers.dispatch(ACTION_TRIGGER, {
                "execution_id": execution["id"], "status": execution["status"],
                "start_timestamp": execution["start_timestamp"], "action_name": execution["action"].split(".", 1)[-1],
                "action_ref": execution["action"], "runner_ref": execution["runner"],
                "parameters": execution["parameters"], "result": execution.get("result"),
            }, validate=False)
        told = self._messages(execution, notify, data=triggers.wanted(NOTIFY_TRIGGER))
        for route, messages in _by_route(told).items():
            await self._deliver(route, messages, execution)
        if triggers.wanted(NOTIFY_TRIGGER):
            for route, message, data in told:
                await triggers.dispatch(NOTIFY_TRIGGER, {
                    "execution_id": execution["id"], "status": execution["status"],
                    "start_timestamp": execution["start_timestamp"],
                    "end_timestamp": execution["end_timestamp"], "action_ref": execution["action"],
                    "runner_ref": execution["runner"], "route": route, "channel": route,
                    "message": message, "data": {**data, "result": json.dumps(execution.get("result"))},
                }, validate=False)

    def _messages(self, execution: dict[str, Any], notify: dict[str, Any],
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

    async def _deliver(self, route: str, messages: list[str], execution: dict[str, Any]) -> bool:
        """Store a route's messages keyed (execution, "notify:<route>"); whether they were stored now."""
        announcer = self.squall.announcer
        if route not in announcer.routes:
            log.debug("notify route %r is not a configured chat route; left to rules", route)
            return False
        adapter, channel, thread = announcer.target(route, None, None, execution["context"].get("chat"))
        replies = [Reply(adapter=adapter, channel=channel, thread=thread, text=message) for message in messages]
        return await announcer.send_keyed(execution["id"], f"notify:{route}", replies) is not None

    async def post_missing(self, since: datetime) -> int:
        """The sweep: store the chat messages of every `notify` route (one with a chat target) owed
        by executions started since `since` that finished since notifications are keyed, and have
        none stored for that route (a crash came between the final status and the insert); returns
        how many routes. Safe beside the listener and other processes: the rows are keyed."""
        store = self.squall.store
        actions = sorted(ref for ref, action in self.squall.registry.actions.items() if action.notify)
        # Off the event loop: the read spans every execution started in the window.
        rows = await asyncio.to_thread(store.executions_owing_notifications, actions, sorted(COMPLETED), since)
        routes = self.squall.announcer.routes
        posted = 0
        for record in rows:
            stored = record.pop("notify_kinds")
            execution = public(record)
            action = self.squall.registry.actions.get(execution["action"])
            notify = execution["context"].get("notify", action.notify if action is not None else None)
            if not notify:
                continue
            for route, messages in _by_route(self._messages(execution, notify)).items():
                if route in routes and f"notify:{route}" not in stored:
                    try:
                        posted += await self._deliver(route, messages, execution)
                    except LookupError as exc:
                        log.warning("notify route %r of %s has no chat target: %s", route, execution["id"], exc)
        return posted


def _by_route(told: list[tuple[str, str, dict[str, Any]]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for route, message, _data in told:
        grouped.setdefault(route, []).append(message)
    return grouped
