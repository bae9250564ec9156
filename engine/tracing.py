"""Optional OpenTelemetry traces: one trace from a chat message through matching and the execution
(a workflow's tasks as its children) to the reply, and from a webhook through its rule to the action.

Off unless the standard variables ask for it (`OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_TRACES_EXPORTER=otlp`; `OTEL_SDK_DISABLED=true` wins),
sent over HTTP (the default) or gRPC as `OTEL_EXPORTER_OTLP_PROTOCOL` says, and then only with the
`squall[otel]` extra installed: without it, nothing here imports OpenTelemetry and every call is a
no-op that costs a global read.

Work that goes on elsewhere (an execution run later, or by a `squall worker` on another machine)
carries its parent as a W3C `traceparent` in the execution's context (`trace_context.traceparent`,
beside StackStorm's `trace_tag`), so the run's span joins the trace of the message or webhook that
asked for it, whichever process runs it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

log = logging.getLogger(__name__)
_tracer: Any = None
_propagator: Any = None
_provider: Any = None


def _wanted() -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or os.environ.get("OTEL_TRACES_EXPORTER", "").lower() == "otlp")


def configure(exporter: Any = None) -> bool:
    """Start tracing if the environment asks for it, or to `exporter` (tests); whether it is on."""
    global _tracer, _propagator, _provider
    if exporter is None and (_tracer is not None or not _wanted()):
        return _tracer is not None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        log.warning("OTEL_* asks for traces, but OpenTelemetry is not installed: pip install 'squall[otel]'")
        return False
    if exporter is None:
        exporter = _otlp_exporter()
        if exporter is None:
            return False
        processor: Any = BatchSpanProcessor(exporter)
    else:
        processor = SimpleSpanProcessor(exporter)
    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME",
                                                                                      "squall")}))
    provider.add_span_processor(processor)
    if _provider is not None:
        _provider.shutdown()
    _provider, _tracer, _propagator = provider, provider.get_tracer("squall"), TraceContextTextMapPropagator()
    return True


#: `OTEL_EXPORTER_OTLP_PROTOCOL` values and the exporter module each needs (the standard's default: HTTP).
_PROTOCOLS = {"http/protobuf": "opentelemetry.exporter.otlp.proto.http.trace_exporter",
              "grpc": "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"}


def _otlp_exporter() -> Any:
    """The OTLP span exporter `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` (else `OTEL_EXPORTER_OTLP_PROTOCOL`)
    names, its endpoint and headers read by OpenTelemetry from the same variables; None, said in the
    log, for a protocol Squall cannot send. A collector listening for gRPC on 4317 answers nothing
    useful to HTTP, so the protocol asked for is the one spoken, never a silent fallback."""
    variable = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
    if not os.environ.get(variable):
        variable = "OTEL_EXPORTER_OTLP_PROTOCOL"
    protocol = os.environ.get(variable) or "http/protobuf"
    module = _PROTOCOLS.get(protocol)
    if module is None:
        log.warning("%s=%s is not a protocol Squall sends traces over: set %s (the default) or grpc; traces are off",
                    variable, protocol, "http/protobuf")
        return None
    try:
        exporter_class = importlib.import_module(module).OTLPSpanExporter
    except ImportError:
        log.warning("traces over %s need its OTLP exporter, which is not installed: pip install 'squall[otel]'",
                    protocol)
        return None
    return exporter_class()


def enabled() -> bool:
    """Whether spans are recorded (work that would go untimed otherwise takes the timed path)."""
    return _tracer is not None


def flush() -> None:
    """Send what is buffered now (an engine is closing; the process may end next)."""
    if _provider is not None:
        _provider.force_flush()


def shutdown() -> None:
    """Send what is buffered and stop (the process is ending)."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


#: What `span` gives when tracing is off: one reusable no-op (a chat command opens three spans).
_NO_SPAN = contextlib.nullcontext()


def span(name: str, parent: str | None = None, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """A span around the block, child of the current one, or of `parent` (a stored traceparent)."""
    if _tracer is None:
        return _NO_SPAN
    return _span(name, parent, attributes)


@contextlib.contextmanager
def _span(name: str, parent: str | None, attributes: dict[str, Any]) -> Iterator[Any]:
    """The span itself. An exception that ends it marks it ERROR with the exception's type alone:
    OpenTelemetry's default would export its message and stack (as an event and as the status's
    description), and those quote what they were about: a chat command that matched no alias (an
    inquiry's pin, typed in the clear), a parameter, the SQL and bound values of a failed insert."""
    assert _tracer is not None
    context = _propagator.extract({"traceparent": parent}) if parent else None
    shown = {f"squall.{key}": value for key, value in attributes.items() if value is not None}
    with _tracer.start_as_current_span(name, context=context, attributes=shown, record_exception=False,
                                       set_status_on_exception=False) as current:
        try:
            yield current
        except Exception as exc:  # as OpenTelemetry's: a cancel (a BaseException) is not the span's error
            if current.is_recording():
                from opentelemetry.trace import Status, StatusCode  # installed: `_tracer` is set

                kind = _type_name(exc)
                current.add_event("exception", {"exception.type": kind})
                current.set_status(Status(StatusCode.ERROR, kind))
            raise


def _type_name(exc: BaseException) -> str:
    """`module.Class` of `exc` (`Class` for a builtin), as OpenTelemetry names an exception's type."""
    module, name = type(exc).__module__, type(exc).__qualname__
    return name if module in ("builtins", "") else f"{module}.{name}"


def traceparent() -> str | None:
    """The current span as a W3C traceparent, for work that goes on elsewhere; None when off."""
    if _tracer is None:
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


def parent_of(context: Mapping[str, Any] | None) -> str | None:
    """The traceparent an execution's context carries, if any: a caller's context (`POST
    /api/v1/executions`) may hold anything under `trace_context`, and a run must not fail on it."""
    carried = (context or {}).get("trace_context")
    parent = carried.get("traceparent") if isinstance(carried, Mapping) else None
    return parent if isinstance(parent, str) else None
