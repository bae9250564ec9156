"""OpenTelemetry traces (exported here to an in-memory exporter): a chat message's trace holds its
matching, its execution and its reply; a workflow's tasks are children of the workflow's run; a
webhook's trace holds its rule and the action the rule asked for. Off, nothing is traced."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from adapters.loopback import LoopbackAdapter
from bot.app import Squall
from bot.http.app import create_api
from engine import tracing
from engine.config import load_config
from tests.test_api import KEY, _home
from tests.test_chat import settle
from tests.workflow_helpers import run, workflow_pack


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert tracing.configure(exporter)
    yield exporter
    tracing.shutdown()


def _one(exporter: InMemorySpanExporter, name: str, **attributes: Any) -> Any:
    found = [s for s in exporter.get_finished_spans() if s.name == name
             and all(s.attributes.get(f"squall.{k}") == v for k, v in attributes.items())]
    assert len(found) == 1, (name, attributes, [(s.name, dict(s.attributes)) for s in exporter.get_finished_spans()])
    return found[0]


def _child_of(span: Any, parent: Any) -> bool:
    return span.context.trace_id == parent.context.trace_id and span.parent.span_id == parent.context.span_id


async def test_a_chat_message_is_one_trace_to_its_reply(home: Path, spans: InMemorySpanExporter) -> None:
    loopback = LoopbackAdapter()
    squall = await Squall.start(load_config(_home(home) / "config.yml"), adapters=[loopback])
    await squall.chat.start()
    try:
        await loopback.say("!greet world", user="alice", channel="#ops")
        await settle(squall, squall.chat)
        execution = (await squall.executions.list(action="demo.greet"))[0]
    finally:
        await squall.chat.stop()
        await squall.close()
    message = _one(spans, "chat.message", adapter="loopback", channel="#ops", user="alice")
    assert message.parent is None  # the message starts the trace
    assert _child_of(_one(spans, "alias.match"), message)
    ran = _one(spans, "execution.run", execution_id=execution["id"])
    assert _child_of(ran, message) and ran.attributes["squall.status"] == "succeeded"
    assert ran.attributes["squall.action"] == "demo.greet" and ran.attributes["squall.runner"] == "local-shell-cmd"
    result = _one(spans, "chat.result", execution_id=execution["id"])
    assert _child_of(result, message)
    # The trace ends where the reply reached the platform: its sending is a span under the result's.
    sent = [s for s in spans.get_finished_spans() if s.name == "chat.reply" and _child_of(s, result)]
    assert sent and all(s.attributes["squall.adapter"] == "loopback" for s in sent)  # the result, the ack's edit
    assert len({s.attributes["squall.outbox_id"] for s in sent}) == len(sent)
    assert any(s.name == "chat.reply" and _child_of(s, message) for s in spans.get_finished_spans())  # the ack
    assert execution["context"]["trace_context"]["traceparent"].split("-")[1] == f"{message.context.trace_id:032x}"
    assert "world" not in str([dict(s.attributes) for s in spans.get_finished_spans()])  # no parameter values


async def test_workflow_tasks_are_children_of_the_workflow(home: Path, spans: InMemorySpanExporter) -> None:
    _home(home)
    workflow_pack(home, {"two": ("orquesta", "", """
        version: 1.0
        tasks:
          one:
            action: core.noop
            next:
              - do: two
          two:
            action: core.noop
    """)})
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        done = await run(squall, "wf.two")
    finally:
        await squall.close()
    assert done["status"] == "succeeded"
    flow = _one(spans, "execution.run", execution_id=done["id"])
    tasks = [s for s in spans.get_finished_spans() if s.name == "execution.run" and s is not flow]
    assert len(tasks) == 2 and all(_child_of(task, flow) for task in tasks)


async def test_a_webhook_is_one_trace_through_its_rule_to_the_action(home: Path, spans: InMemorySpanExporter) -> None:
    squall = await Squall.start(load_config(_home(home) / "config.yml"))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(squall)), base_url="http://squall",
                                     headers={"St2-Api-Key": KEY}) as client:
            assert (await client.post("/api/v1/webhooks/ci/build/", json={"who": "ci"})).status_code == 202
            await squall.triggers.settle()
            execution = (await squall.executions.list(action="demo.greet"))[0]
            await squall.executions.wait(execution["id"], timeout=30)
    finally:
        await squall.close()
    hook = _one(spans, "webhook", hook="ci/build")
    rule = _one(spans, "rule.enforce", rule="demo.on_build")
    assert _child_of(rule, hook)
    assert _child_of(_one(spans, "execution.run", execution_id=execution["id"]), rule)


async def test_nothing_is_traced_when_off(home: Path) -> None:
    tracing.shutdown()
    squall = await Squall.start(load_config(_home(home) / "config.yml"))
    try:
        record = await squall.executions.request("core.noop", {})
        assert "traceparent" not in (record["context"].get("trace_context") or {})
        assert tracing.traceparent() is None
    finally:
        await squall.close()
