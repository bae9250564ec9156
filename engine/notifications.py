"""Action `notify` (spec §4): on completion, tell each section's routes.

`on-complete` always, `on-success` when succeeded, `on-failure` when failed, timed out or
abandoned; the default message is StackStorm's ("Action <ref> succeeded."). `message` and `data`
render with `st2kv` (the datastore, as parameter templates read it) besides `action_parameters`,
`action_context` and `action_results`; a value `decrypt_kv` revealed is masked in what they say,
as in results, and so is an inquiry's answer to a `secret: true` property (there and in the
triggers' payloads, which are stored and handed to rules). The engine fires
`core.st2.generic.actiontrigger` and `notifytrigger` (for rules) and publishes `NOTIFICATION_DUE`
with the rendered messages; the chat side (`bot/chat/notices.py`) posts those whose route is a
configured chat target. Unlike StackStorm, an action's own `notify` never suppresses the result of
a chat-started execution: that reply is the dispatcher's, independent of this.

Each trigger of a completed execution is stored under a key (`trigger_key`) in the deliveries
table, with its instances, in one transaction: the listener here and the sweep (`fire_missing`,
which makes up for a crash between the end's commit and this listener) fire it once between them,
in whichever process. Executions that owe neither (no `notify`, no rule on the action trigger)
cost no write.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from engine.events import EXECUTION_FINISHED, NOTIFICATION_DUE, Events
from engine.executions import COMPLETED, FAILED, public, scrub
from engine.inquiries import shown_execution
from engine.storage import utcnow
from engine.templates import TemplateRenderError, build_environment, render_template, render_value, rendered

if TYPE_CHECKING:
    import jinja2

    from engine.executions import ExecutionService
    from engine.packs import Registry
    from engine.triggers import TriggerService

log = logging.getLogger(__name__)
ACTION_TRIGGER = "core.st2.generic.actiontrigger"
NOTIFY_TRIGGER = "core.st2.generic.notifytrigger"
_DEFAULT = {"on-complete": "completed", "on-success": "succeeded", "on-failure": "failed"}
#: How long a trigger's key is kept: past the longest look back of the sweep (the chat's seven days
#: at start), which `fire_missing` never goes beyond, less a margin.
TRIGGER_KEYS_KEPT = timedelta(days=8)
_KEPT_MARGIN = timedelta(hours=1)
#: Shorter decrypted values are not masked inside text, as in results (`engine.executions`).
_MIN_MASKED = 4
#: Plaintexts `decrypt_kv` produced while one execution's notify was rendered.
_revealed: contextvars.ContextVar[list[str]] = contextvars.ContextVar("squall_notify_revealed")


def trigger_key(trigger_ref: str, execution_id: str) -> str:
    """The delivery key of an execution's `trigger_ref` instances (the sweep's query builds the same)."""
    return f"notified {trigger_ref} {execution_id}"


def sections_for(notify: dict[str, Any], status: str) -> list[tuple[str, dict[str, Any]]]:
    chosen = [("on-complete", notify.get("on-complete"))]
    if status == "succeeded":
        chosen.append(("on-success", notify.get("on-success")))
    if status in FAILED:
        chosen.append(("on-failure", notify.get("on-failure")))
    return [(name, section) for name, section in chosen if section]


def _rendered(data: dict[str, Any], context: dict[str, Any], env: jinja2.Environment | None) -> dict[str, Any]:
    """StackStorm renders notify `data`; a value that fails keeps its raw text."""
    rendered = {}
    for key, value in data.items():
        try:
            rendered[key] = render_value(value, context, env)
        except TemplateRenderError:
            rendered[key] = value
    return rendered


def _masking(revealed: list[str]) -> list[str]:
    """The decrypted values to mask, longest first."""
    return sorted({text for text in revealed if len(text) >= _MIN_MASKED}, key=len, reverse=True)


def _action_payload(execution: dict[str, Any]) -> dict[str, Any]:
    """The action trigger's payload, of the execution as shown (`shown_execution`): a trigger instance
    is stored, listed by the API and handed to rules' actions, so an inquiry's secret answer is masked."""
    execution = shown_execution(execution)
    return {"execution_id": execution["id"], "status": execution["status"],
            "start_timestamp": execution["start_timestamp"], "action_name": execution["action"].split(".", 1)[-1],
            "action_ref": execution["action"], "runner_ref": execution["runner"],
            "parameters": execution["parameters"], "result": execution.get("result")}


def _notify_payloads(execution: dict[str, Any], told: list[tuple[str, str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One notify trigger payload per route told, in order; the result as shown (`_action_payload`)."""
    result = shown_execution(execution).get("result")
    return [{"execution_id": execution["id"], "status": execution["status"],
             "start_timestamp": execution["start_timestamp"], "end_timestamp": execution["end_timestamp"],
             "action_ref": execution["action"], "runner_ref": execution["runner"], "route": route, "channel": route,
             "message": message, "data": {**data, "result": json.dumps(result)}}
            for route, message, data in told]


class Notifier:
    """Listens for finished executions (`EXECUTION_FINISHED`) and tells what their `notify` asks."""

    def __init__(self, registry: Callable[[], Registry], triggers: TriggerService, events: Events,
                 executions: ExecutionService) -> None:
        self.registry = registry
        self.triggers = triggers
        self.events = events
        #: Messages read the datastore as parameters do (`st2kv`, and `decrypt_kv` through `_decrypt`).
        self.executions = executions
        self.env = build_environment(decrypt=self._decrypt)
        events.subscribe(EXECUTION_FINISHED, self.on_finished)

    def _decrypt(self, token: str) -> str:
        """`decrypt_kv` for notify: what it reveals is noted, to be masked in the messages and data."""
        plaintext = self.executions.keys.decrypt(token)
        bucket = _revealed.get(None)
        if bucket is not None:
            bucket.append(plaintext)
        return plaintext

    def notify_of(self, execution: dict[str, Any]) -> dict[str, Any] | None:
        """The `notify` that applies: a workflow's task carries its workflow's ({} for none)."""
        action = self.registry().actions.get(execution["action"])
        return execution["context"].get("notify", action.notify if action is not None else None)

    def messages(self, execution: dict[str, Any], notify: dict[str, Any],
                 data: bool = False) -> list[tuple[str, str, dict[str, Any]]]:
        """`messages` with the datastore (`st2kv`), each decrypted value masked in what is told.
        Renders only (run on the loop or a render thread by `rendered`)."""
        st2kv = self.executions.template_context({}, execution["context"])["st2kv"]
        revealed: list[str] = []
        token = _revealed.set(revealed)  # here, not around `rendered`: a render thread has a context of its own
        try:
            told = messages(execution, notify, data, st2kv=st2kv, env=self.env)
        finally:
            _revealed.reset(token)
        secrets = _masking(revealed)
        if not secrets:
            return told
        return [(route, scrub(message, secrets), scrub(values, secrets)) for route, message, values in told]

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
            await self._fire(ACTION_TRIGGER, execution, [_action_payload(execution)])
        told = await rendered(self.messages, execution, notify, triggers.wanted(NOTIFY_TRIGGER))
        if told:
            self.events.publish(NOTIFICATION_DUE, execution, [(route, message) for route, message, _ in told])
        if told and triggers.wanted(NOTIFY_TRIGGER):
            await self._fire(NOTIFY_TRIGGER, execution, _notify_payloads(execution, told))

    async def _fire(self, trigger_ref: str, execution: dict[str, Any], payloads: list[dict[str, Any]]) -> int:
        """Dispatch an execution's instances of `trigger_ref`; those of a completed one keyed, so that
        the sweep fires them only if this never did (a paused one is not keyed: it ends later); how
        many were stored now."""
        if execution["status"] not in COMPLETED:
            for payload in payloads:
                await self.triggers.dispatch(trigger_ref, payload, validate=False)
            return len(payloads)
        stored = await self.triggers.dispatch_once(trigger_ref, payloads, trigger_key(trigger_ref, execution["id"]),
                                                   utcnow() + TRIGGER_KEYS_KEPT)
        return len(stored)

    async def fire_missing(self, since: datetime) -> int:
        """The sweep: fire the action and notify triggers owed by executions started since `since`
        (no further back than the keys are kept) that completed while a rule listened to that trigger,
        and have no key stored for it (a crash came between the end's commit and `_tell`); returns
        how many instances. Safe beside the listener and other processes: the keys decide who fires.
        A trigger no rule listens to now is owed by nobody (and its start is forgotten: a rule added
        later does not fire for executions that ended without one)."""
        store = self.triggers.db.store
        floor = utcnow() - TRIGGER_KEYS_KEPT + _KEPT_MARGIN
        since = max(since, floor)
        fired = 0
        for trigger_ref in (ACTION_TRIGGER, NOTIFY_TRIGGER):
            # Off the event loop, as the chat's sweep: the reads span every execution in the window.
            listened_since = await asyncio.to_thread(store.keyed_since_while, f"keyed_since:{trigger_ref}",
                                                     self.triggers.wanted(trigger_ref))
            if listened_since is None:
                continue
            actions = None if trigger_ref == ACTION_TRIGGER else sorted(
                ref for ref, action in self.registry().actions.items() if action.notify)
            rows = await asyncio.to_thread(store.executions_owing_trigger, trigger_key(trigger_ref, ""), since,
                                           max(listened_since, floor), sorted(COMPLETED), actions)
            for record in rows:
                try:
                    fired += await self._owed(trigger_ref, public(record))
                except Exception:
                    log.exception("firing the %s owed by %s failed; trying again at the next sweep",
                                  trigger_ref, record["id"])
        if fired:
            log.info("fired %d action or notify trigger instance(s) a crash had kept from firing", fired)
        return fired

    async def _owed(self, trigger_ref: str, execution: dict[str, Any]) -> int:
        """Fire what `execution` owes of `trigger_ref`; with nothing owed (no section applies), only the
        key is stored, so that the next sweep does not look again."""
        if trigger_ref == ACTION_TRIGGER:
            payloads = [_action_payload(execution)]
        else:
            notify = self.notify_of(execution)
            told = await rendered(self.messages, execution, notify, True) if notify else []
            payloads = _notify_payloads(execution, told)
        return await self._fire(trigger_ref, execution, payloads)


def messages(execution: dict[str, Any], notify: dict[str, Any], data: bool = False, *,
             st2kv: Any = None, env: jinja2.Environment | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """(route, message, rendered data if `data`) for each route of each section that applies, in
    order; templates see `st2kv` when given (and render with `env`: its `decrypt_kv`), and the
    execution as shown (`shown_execution`: an inquiry's secret answers masked, as routes are chat)."""
    execution = shown_execution(execution)
    told = []
    for name, section in sections_for(notify, execution["status"]):
        routes = section.get("routes") or section.get("channels") or []
        if not routes:
            continue
        context = {"action_parameters": execution["parameters"], "action_context": execution["context"],
                   "action_results": execution.get("result"), "execution": execution}
        if st2kv is not None:
            context["st2kv"] = st2kv
        template = section.get("message") or f"Action {execution['action']} {_DEFAULT[name]}."
        try:
            message = render_template(template, context, env if "{" in template else None)  # else: text as is
        except TemplateRenderError as exc:
            log.warning("notify message of %s does not render: %s", execution["action"],
                        scrub(str(exc), _masking(_revealed.get([]))))
            message = template
        rendered = _rendered(section.get("data") or {}, context, env) if data else {}
        told += [(str(route), message, rendered) for route in routes]
    return told


def by_route(told: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Messages grouped by route, in order."""
    grouped: dict[str, list[str]] = {}
    for route, message in told:
        grouped.setdefault(route, []).append(message)
    return grouped
