"""The metrics' shortcuts on every execution's path: `Metrics._fold` counts the increments recorded alike in
C and adds them to their series, each series once, whatever their amounts, the order they came in, or the
thread that recorded them; `source_of` looks for the keys that may override `source` in one look."""

from __future__ import annotations

import sys
import threading
from typing import Any

import pytest

from engine import metrics as metrics_module
from engine.metrics import Metrics, source_of


def _source_before(context: Any) -> str:
    """`source_of` as it was: every key looked up."""
    context = context or {}
    trigger = (context.get("trigger_instance") or {}).get("name")
    if trigger in ("core.st2.IntervalTimer", "core.st2.DateTimer", "core.st2.CronTimer"):
        return "timer"
    if context.get("rule"):
        return "rule"
    if context.get("parent"):
        return "workflow"
    return str(context.get("source") or "api")


@pytest.mark.parametrize("context", [
    None, {}, {"source": "chat"}, {"source": ""}, {"source": None}, {"source": 3}, {"user": "ann"},
    {"source": "chat", "parent": "p1"}, {"source": "chat", "parent": None}, {"rule": "r", "source": "web"},
    {"rule": None, "source": "web"}, {"rule": {"ref": "p.r"}, "parent": "x"},
    {"trigger_instance": {"name": "core.st2.CronTimer"}, "rule": "r"},
    {"trigger_instance": {"name": "core.st2.webhook"}, "rule": "r"}, {"trigger_instance": None, "source": "api"},
    {"trigger_instance": {}, "parent": "p"},
])
def test_source_of_decides_as_before(context: Any) -> None:
    assert source_of(context) == _source_before(context)


def test_increments_are_added_to_their_series_with_their_amounts() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.count(metrics.chat_commands, "irc", "matched")
    metrics.count(metrics.chat_commands, "irc", "denied")
    metrics.evaluated("core.st2.webhook", 4)
    metrics.evaluated("core.st2.webhook", 2)
    metrics.started({"action": "core.noop", "context": {"source": "chat"}})
    metrics._fold()
    assert not metrics._counts
    sample = metrics.registry.get_sample_value
    assert sample("squall_chat_commands_total", {"adapter": "irc", "outcome": "matched"}) == 3
    assert sample("squall_chat_commands_total", {"adapter": "irc", "outcome": "denied"}) == 1
    assert sample("squall_rules_evaluated_total", {"trigger_type": "core.st2.webhook"}) == 6
    assert sample("squall_executions_started_total", {"action": "core.noop", "pack": "core", "source": "chat"}) == 1
    metrics.count(metrics.chat_commands, "irc", "matched")
    metrics._fold()  # added to what the series holds
    assert sample("squall_chat_commands_total", {"adapter": "irc", "outcome": "matched"}) == 4


def test_threads_recording_and_folding_at_once_lose_no_increment(monkeypatch) -> None:
    """Past `_FOLD_AT` each recording thread folds: four threads folding the one deque at once count
    every increment once (threads switched every microsecond, so folds overlap: a fold that failed when
    another emptied the deque first lost thousands)."""
    monkeypatch.setattr(metrics_module, "_FOLD_AT", 5)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    metrics = Metrics()

    def record() -> None:
        for _ in range(5_000):
            metrics.count(metrics.chat_replies, "irc", "sent")
            metrics.evaluated("core.st2.webhook", 2)

    threads = [threading.Thread(target=record) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    metrics._fold()
    sent = metrics.registry.get_sample_value("squall_chat_replies_total", {"adapter": "irc", "outcome": "sent"})
    assert sent == 20_000
    evaluated = metrics.registry.get_sample_value("squall_rules_evaluated_total", {"trigger_type": "core.st2.webhook"})
    assert evaluated == 40_000


def test_an_executions_series_is_found_by_its_action_status_and_source_and_labelled_with_its_pack() -> None:
    """`started` and `finished` find a series by the action ref, status and source, and cut the pack label
    from the ref only when they make the series: each combination is its own series, a ref without a dot
    is its own pack, and a workflow paused or an inquiry pending is no end."""
    metrics = Metrics()
    chat, rule = {"source": "chat"}, {"rule": {"ref": "demo.on_alert"}, "source": "api"}
    for _ in range(2):
        metrics.started({"action": "demo.greet", "context": chat})
    metrics.started({"action": "demo.greet", "context": rule})
    metrics.started({"action": "nodot", "context": None})
    for status in ("succeeded", "succeeded", "failed", "paused", "pending"):
        metrics.finished({"action": "demo.greet", "status": status, "context": chat, "runner": "local-shell-cmd",
                          "elapsed_seconds": 0.2})
    metrics.finished({"action": "demo.greet", "status": "succeeded", "context": rule, "runner": "local-shell-cmd",
                      "elapsed_seconds": 0.2})
    metrics._fold()
    sample = metrics.registry.get_sample_value
    started = "squall_executions_started_total"
    assert sample(started, {"action": "demo.greet", "pack": "demo", "source": "chat"}) == 2
    assert sample(started, {"action": "demo.greet", "pack": "demo", "source": "rule"}) == 1
    assert sample(started, {"action": "nodot", "pack": "nodot", "source": "api"}) == 1
    finished = "squall_executions_finished_total"
    assert sample(finished, {"action": "demo.greet", "pack": "demo", "status": "succeeded", "source": "chat"}) == 2
    assert sample(finished, {"action": "demo.greet", "pack": "demo", "status": "failed", "source": "chat"}) == 1
    assert sample(finished, {"action": "demo.greet", "pack": "demo", "status": "succeeded", "source": "rule"}) == 1
    assert sample(finished, {"action": "demo.greet", "pack": "demo", "status": "paused", "source": "chat"}) is None
    assert sample("squall_execution_duration_seconds_count", {"runner": "local-shell-cmd"}) == 4
