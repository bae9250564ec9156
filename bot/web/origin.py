"""Where an execution came from, read from the context its requester stored: chat (adapter, channel,
thread), the API or the CLI (who), a rule (and the trigger instance that fired it), or a workflow.

The list shows `summary`, the detail page `details`; both only read keys the engine and the chat
side write (`bot/chat/commands.py`, `engine/rules.py`, `engine/workflows/service.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: The list's source filter: what each choice selects (`engine.storage.ExecutionFilter` fields).
TIMER_TRIGGERS = ("core.st2.IntervalTimer", "core.st2.DateTimer", "core.st2.CronTimer")
SOURCES: dict[str, dict[str, Any]] = {
    "chat": {"source": "chat"},
    "web": {"source": "web"},
    "api": {"source": "api"},
    "cli": {"source": "cli"},
    "rule": {"rule": True},
    "timer": {"triggers": TIMER_TRIGGERS},
}


@dataclass(frozen=True)
class Fact:
    """One line of "where it came from": a label, a value, and a page of Squall's to link, if any."""

    label: str
    value: str
    href: str | None = None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def summary(context: Mapping[str, Any]) -> str:
    """A few words for the list: `chat slack #ops`, `rule demo.on_build`, `api`, `workflow task x`."""
    chat, rule = _mapping(context.get("chat")), _mapping(context.get("rule"))
    if chat:
        return f"chat {chat.get('adapter', '?')} {chat.get('channel', '?')}"
    if rule:
        return f"rule {rule.get('ref', '?')}"
    task = _mapping(context.get("workflow_task")).get("task")
    if task:
        return f"workflow task {task}"
    return str(context.get("source") or "")


def details(record: Mapping[str, Any]) -> list[Fact]:
    """Everything the context says about the execution's origin, for the detail page."""
    context = _mapping(record.get("context"))
    chat, rule = _mapping(context.get("chat")), _mapping(context.get("rule"))
    instance = _mapping(context.get("trigger_instance"))
    alias = _mapping(context.get("action_alias_ref"))
    task = _mapping(context.get("workflow_task"))
    facts = [
        Fact("requested by", str(context["user"])) if context.get("user") else None,
        Fact("source", str(context["source"])) if context.get("source") else None,
        Fact("chat adapter", str(chat["adapter"])) if chat.get("adapter") else None,
        Fact("channel", str(chat.get("channel") or context.get("source_channel")))
        if chat.get("channel") or context.get("source_channel") else None,
        Fact("thread", str(chat["thread"])) if chat.get("thread") else None,
        Fact("alias", str(alias["id"])) if alias.get("id") else None,
        Fact("rule", str(rule["ref"])) if rule.get("ref") else None,
        Fact("trigger instance", f"{instance.get('id', '?')} ({instance.get('name', '?')})") if instance else None,
        Fact("workflow", str(record["parent"]), f"/executions/{record['parent']}") if record.get("parent") else None,
        Fact("task", str(task["task"])) if task.get("task") else None,
    ]
    return [fact for fact in facts if fact is not None]
