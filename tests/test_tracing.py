"""OpenTelemetry traces (exported here to an in-memory exporter): a chat message's trace holds its
matching, its execution and its reply; a workflow's tasks are children of the workflow's run; a
webhook's trace holds its rule and the action the rule asked for. Off, nothing is traced."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
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


class _Collector:
    """A real OTLP receiver on 127.0.0.1, over gRPC (opentelemetry-proto's TraceService on a grpc
    server) or HTTP (`POST /v1/traces`, protobuf): the spans Squall exported, decoded."""

    def __init__(self, protocol: str) -> None:
        self.requests: list[Any] = []
        #: (path, content type) of each HTTP request
        self.posted: list[tuple[str, str]] = []
        self.protocol = protocol
        if protocol == "grpc":
            collector = self

            class Traces(trace_service_pb2_grpc.TraceServiceServicer):
                def Export(self, request: Any, context: Any) -> Any:
                    collector.requests.append(request)
                    return trace_service_pb2.ExportTraceServiceResponse()

            self.server = grpc.server(ThreadPoolExecutor(2))
            trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), self.server)
            self.port = self.server.add_insecure_port("127.0.0.1:0")
            self.server.start()
        else:
            requests, posted = self.requests, self.posted

            class Handler(BaseHTTPRequestHandler):
                def do_POST(self) -> None:
                    body = self.rfile.read(int(self.headers["Content-Length"]))
                    posted.append((self.path, self.headers["Content-Type"]))
                    requests.append(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
                    answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/x-protobuf")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)

                def log_message(self, *args: Any) -> None:
                    pass

            self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            self.port = self.server.server_address[1]
            threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self) -> list[tuple[str, str, Any]]:
        """(service.name, span name, span) of everything received."""
        found = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                service = next(a.value.string_value for a in resource_spans.resource.attributes
                               if a.key == "service.name")
                found += [(service, span.name, span) for scope in resource_spans.scope_spans for span in scope.spans]
        return found

    def stop(self) -> None:
        if self.protocol == "grpc":
            self.server.stop(None)
        else:
            self.server.shutdown()
            self.server.server_close()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_traces_reach_a_collector_over_the_protocol_asked_for(home: Path, protocol: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`OTEL_EXPORTER_OTLP_ENDPOINT` and `OTEL_EXPORTER_OTLP_PROTOCOL`, as an operator sets them: a chat
    command's spans arrive at a real collector, one trace, under `OTEL_SERVICE_NAME`."""
    collector = _Collector(protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "squall-ops")
    tracing.shutdown()
    loopback = LoopbackAdapter()
    try:
        squall = await Squall.start(load_config(_home(home) / "config.yml"), adapters=[loopback])
        await squall.chat.start()
        try:
            await loopback.say("!greet world", user="alice", channel="#ops")
            await settle(squall, squall.chat)
        finally:
            await squall.chat.stop()
            await squall.close()  # flushes the spans to the collector
        received = collector.spans()
    finally:
        tracing.shutdown()
        collector.stop()
    names = {name for _, name, _ in received}
    assert {"chat.message", "alias.match", "execution.run"} <= names, names
    assert {service for service, _, _ in received} == {"squall-ops"}
    message = next(span for _, name, span in received if name == "chat.message")
    ran = next(span for _, name, span in received if name == "execution.run")
    assert ran.trace_id == message.trace_id and len(message.trace_id) == 16
    if protocol == "http/protobuf":
        assert set(collector.posted) == {("/v1/traces", "application/x-protobuf")}


@pytest.mark.parametrize(("variable", "value", "said"), [
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "OTEL_EXPORTER_OTLP_PROTOCOL=http/json is not a protocol"),
    ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "thrift", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=thrift is not a protocol"),
])
def test_a_protocol_squall_cannot_send_is_named_and_traces_stay_off(
        variable: str, value: str, said: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    monkeypatch.setenv(variable, value)
    tracing.shutdown()
    assert tracing.configure() is False
    assert not tracing.enabled()
    assert said in caplog.text and "http/protobuf (the default) or grpc" in caplog.text


class _Leaky(Exception):
    """An error whose message quotes what it was about, as `NoMatch` quotes the command typed."""


def test_an_error_ends_its_span_marked_with_its_type_and_nothing_of_its_message(
        spans: InMemorySpanExporter) -> None:
    """Every span: an exception's message and stack may quote user input, parameters or SQL values."""
    with pytest.raises(_Leaky), tracing.span("outer"), tracing.span("inner", rule="demo.r"):
        raise _Leaky("the pin was Marker-Secret-9q8w7e")
    finished = spans.get_finished_spans()
    assert [s.name for s in finished] == ["inner", "outer"]
    for ended in finished:  # the error passes through both
        assert "Marker-Secret" not in ended.to_json()
        assert ended.status.status_code.name == "ERROR"
        assert ended.status.description == f"{__name__}._Leaky"
        assert [(e.name, dict(e.attributes)) for e in ended.events] == [
            ("exception", {"exception.type": f"{__name__}._Leaky"})]


async def test_a_chat_command_that_matches_nothing_leaves_no_trace_of_its_text(
        home: Path, spans: InMemorySpanExporter) -> None:
    """An unmatched line may be an answer typed in the clear (`!respond <id> {"pin": …}`)."""
    loopback = LoopbackAdapter()
    squall = await Squall.start(load_config(_home(home) / "config.yml"), adapters=[loopback])
    await squall.chat.start()
    try:
        await loopback.say("!bogus Marker-Secret-5t6y7u", user="alice", channel="#ops")
        await settle(squall, squall.chat)
    finally:
        await squall.chat.stop()
        await squall.close()
    matched = _one(spans, "alias.match")
    assert matched.status.status_code.name == "ERROR" and matched.status.description.endswith("NoMatch")
    assert "Marker-Secret" not in str([s.to_json() for s in spans.get_finished_spans()])
