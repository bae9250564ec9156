"""The API's records as typed, immutable dataclasses.

Each model names the fields the API documents and keeps the whole record in `raw` (left out of `repr`
and equality), so a field the server adds later is readable before this package knows it. Timestamps
are parsed into aware `datetime`s; everything else stays the JSON the server sent."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "COMPLETED", "FAILED", "Action", "Alias", "AliasExecution", "AliasMatch", "Execution", "Health", "Inquiry",
    "KeyValue", "Pack", "Rule", "RuleEnforcement", "TriggerInstance", "TriggerType",
]

#: Statuses an execution never leaves (the engine's `engine.executions.COMPLETED`, repeated here because
#: this package may not import the engine). `pending` (an inquiry) and `paused` are not among them.
COMPLETED = frozenset({"succeeded", "failed", "timeout", "canceled", "abandoned"})
#: The completed statuses that mean the action did not do its job (`canceled` is someone's choice).
FAILED = frozenset({"failed", "timeout", "abandoned"})

Record = dict[str, Any]


def _time(value: Any) -> datetime | None:
    """An ISO 8601 timestamp (`...Z`) as a datetime; None for none, and for text that is not one
    (a record is never refused over a timestamp)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _name(value: Any, key: str) -> str:
    """A reference that the server sends as text or, in StackStorm's shape, as the whole document
    (an execution's `action` and `runner`): the text either way; the document stays in `raw`."""
    if isinstance(value, Mapping):
        return str(value.get(key) or value.get("name") or "")
    return "" if value is None else str(value)


@dataclass(frozen=True, slots=True)
class Execution:
    """One run of an action (StackStorm's ActionExecution). `parameters` and `result` show secrets
    masked as `********`, as every record people can read does. `action` is the action's ref and
    `runner` the runner's name, whether the server sends those or the whole documents (which are then
    in `raw["action"]`, `raw["runner"]`)."""

    id: str
    action: str
    status: str
    runner: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    context: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None
    start_timestamp: datetime | None = None
    end_timestamp: datetime | None = None
    elapsed_seconds: float | None = None
    log: list[dict[str, Any]] = field(default_factory=list)
    raw: Record = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Execution:
        return cls(id=str(data["id"]), action=_name(data.get("action"), "ref"), status=str(data.get("status", "")),
                   runner=_name(data.get("runner"), "name") or None, parameters=_dict(data.get("parameters")),
                   result=data.get("result"), context=_dict(data.get("context")), parent=_str(data.get("parent")),
                   start_timestamp=_time(data.get("start_timestamp")), end_timestamp=_time(data.get("end_timestamp")),
                   elapsed_seconds=data.get("elapsed_seconds"), log=_list(data.get("log")), raw=dict(data))

    @property
    def completed(self) -> bool:
        """Whether the status is final (a paused workflow or a pending inquiry is not)."""
        return self.status in COMPLETED

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @property
    def failed(self) -> bool:
        """failed, timeout or abandoned; a canceled execution is neither succeeded nor failed."""
        return self.status in FAILED

    def _stream(self, name: str) -> str:
        return str(self.result.get(name) or "") if isinstance(self.result, dict) else ""

    @property
    def stdout(self) -> str:
        """The result's `stdout` (shell and Python runners); "" for results without one."""
        return self._stream("stdout")

    @property
    def stderr(self) -> str:
        return self._stream("stderr")

    @property
    def return_code(self) -> int | None:
        code = self.result.get("return_code") if isinstance(self.result, dict) else None
        return code if isinstance(code, int) else None


@dataclass(frozen=True, slots=True)
class Action:
    """An action of a loaded pack; a secret parameter's default shows masked."""

    ref: str
    name: str
    pack: str
    runner_type: str
    description: str = ""
    enabled: bool = True
    parameters: dict[str, Any] = field(default_factory=dict)
    entry_point: str | None = None
    tags: list[Any] = field(default_factory=list)
    output_schema: dict[str, Any] = field(default_factory=dict)
    raw: Record = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Action:
        return cls(ref=str(data["ref"]), name=str(data.get("name", "")), pack=str(data.get("pack", "")),
                   runner_type=str(data.get("runner_type", "")), description=str(data.get("description") or ""),
                   enabled=bool(data.get("enabled", True)), parameters=_dict(data.get("parameters")),
                   entry_point=_str(data.get("entry_point")) or None, tags=_list(data.get("tags")),
                   output_schema=_dict(data.get("output_schema")), raw=dict(data))


@dataclass(frozen=True, slots=True)
class Pack:
    ref: str
    name: str
    version: str = ""
    description: str = ""
    #: How many actions, aliases, rules... the pack holds.
    content: dict[str, int] = field(default_factory=dict)
    raw: Record = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Pack:
        return cls(ref=str(data["ref"]), name=str(data.get("name", "")), version=str(data.get("version") or ""),
                   description=str(data.get("description") or ""), content=_dict(data.get("content")), raw=dict(data))


@dataclass(frozen=True, slots=True)
class KeyValue:
    """A datastore pair. A secret's `value` is `********` unless it was read with `decrypt=True`;
    `encrypted` says the value shown is not the plain text. `scope` is StackStorm's `st2kv.system` or
    `st2kv.user` (with `user`)."""

    name: str
    value: Any
    secret: bool = False
    encrypted: bool = False
    scope: str = "st2kv.system"
    user: str | None = None
    description: str | None = None
    expire_timestamp: datetime | None = None
    #: Set when a listed secret could not be decrypted (the others are still listed).
    error: str | None = None
    raw: Record = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> KeyValue:
        return cls(name=str(data["name"]), value=data.get("value"), secret=bool(data.get("secret")),
                   encrypted=bool(data.get("encrypted")), scope=str(data.get("scope") or "st2kv.system"),
                   user=_str(data.get("user")), description=_str(data.get("description")),
                   expire_timestamp=_time(data.get("expire_timestamp")), error=_str(data.get("error")),
                   raw=dict(data))


@dataclass(frozen=True, slots=True)
class Rule:
    ref: str
    name: str
    pack: str
    enabled: bool = True
    description: str = ""
    #: `{"type": <trigger type ref>, "parameters": {...}, "ref": ...}`
    trigger: dict[str, Any] = field(default_factory=dict)
    criteria: dict[str, Any] = field(default_factory=dict)
    #: `{"ref": <action ref>, "parameters": {...}}`
    action: dict[str, Any] = field(default_factory=dict)
    raw: Record = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Rule:
        return cls(ref=str(data["ref"]), name=str(data.get("name", "")), pack=str(data.get("pack", "")),
                   enabled=bool(data.get("enabled", True)), description=str(data.get("description") or ""),
                   trigger=_dict(data.get("trigger")), criteria=_dict(data.get("criteria")),
                   action=_dict(data.get("action")), raw=dict(data))

    @property
    def trigger_type(self) -> str:
        return str(self.trigger.get("type", ""))

    @property
    def action_ref(self) -> str:
        return str(self.action.get("ref", ""))


@dataclass(frozen=True, slots=True)
class RuleEnforcement:
    """One time a rule matched a trigger instance, and what came of it."""

    id: str
    rule: str
    trigger_instance_id: str | None
    execution_id: str | None
    status: str
    failure_reason: str | None = None
    enforced_at: datetime | None = None
    raw: Record = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> RuleEnforcement:
        rule = data.get("rule")
        return cls(id=str(data["id"]), rule=str(rule.get("ref", "") if isinstance(rule, Mapping) else rule or ""),
                   trigger_instance_id=_str(data.get("trigger_instance_id")),
                   execution_id=_str(data.get("execution_id")), status=str(data.get("status", "")),
                   failure_reason=_str(data.get("failure_reason")), enforced_at=_time(data.get("enforced_at")),
                   raw=dict(data))


@dataclass(frozen=True, slots=True)
class TriggerType:
    ref: str
    name: str
    pack: str
    description: str = ""
    payload_schema: dict[str, Any] = field(default_factory=dict)
    parameters_schema: dict[str, Any] = field(default_factory=dict)
    raw: Record = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> TriggerType:
        return cls(ref=str(data["ref"]), name=str(data.get("name", "")), pack=str(data.get("pack", "")),
                   description=str(data.get("description") or ""), payload_schema=_dict(data.get("payload_schema")),
                   parameters_schema=_dict(data.get("parameters_schema")), raw=dict(data))


@dataclass(frozen=True, slots=True)
class TriggerInstance:
    """One occurrence of a trigger, stored before rules see it. `status`: pending, processing,
    processed or processing_failed."""

    id: str
    trigger: str
    payload: Any
    status: str
    occurrence_time: datetime | None = None
    trace_tag: str | None = None
    trigger_parameters: dict[str, Any] = field(default_factory=dict)
    raw: Record = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> TriggerInstance:
        return cls(id=str(data["id"]), trigger=str(data.get("trigger", "")), payload=data.get("payload"),
                   status=str(data.get("status", "")), occurrence_time=_time(data.get("occurrence_time")),
                   trace_tag=_str(data.get("trace_tag")), trigger_parameters=_dict(data.get("trigger_parameters")),
                   raw=dict(data))


@dataclass(frozen=True, slots=True)
class Inquiry:
    """A workflow's question waiting for a person (`core.ask`). Its `id` is also an execution's id, and
    `parent` the workflow's. Only `users` (or `roles`) may answer when either is set; the answer must fit
    `schema`."""

    id: str
    status: str
    route: str = ""
    ttl: int | None = None
    users: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    schema: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None
    start_timestamp: datetime | None = None
    response: dict[str, Any] | None = None
    raw: Record = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Inquiry:
        response = data.get("response")
        return cls(id=str(data["id"]), status=str(data.get("status", "")), route=str(data.get("route") or ""),
                   ttl=data.get("ttl"), users=[str(u) for u in _list(data.get("users"))],
                   roles=[str(r) for r in _list(data.get("roles"))], schema=_dict(data.get("schema")),
                   parent=_str(data.get("parent")), start_timestamp=_time(data.get("start_timestamp")),
                   response=dict(response) if isinstance(response, Mapping) else None, raw=dict(data))


@dataclass(frozen=True, slots=True)
class Alias:
    """An action alias: the chat command formats that run `action_ref`."""

    ref: str
    name: str
    pack: str
    action_ref: str
    description: str = ""
    enabled: bool = True
    #: `[{"display": ..., "representation": [...], "match_multiple": bool}]`
    formats: list[dict[str, Any]] = field(default_factory=list)
    raw: Record = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Alias:
        return cls(ref=str(data["ref"]), name=str(data.get("name", "")), pack=str(data.get("pack", "")),
                   action_ref=str(data.get("action_ref", "")), description=str(data.get("description") or ""),
                   enabled=bool(data.get("enabled", True)), formats=_list(data.get("formats")), raw=dict(data))


@dataclass(frozen=True, slots=True)
class AliasMatch:
    """Which alias a command hits, the format it matched through and the parameters it takes from it."""

    alias: Alias
    display: str | None
    representation: str
    parameters: dict[str, Any] = field(default_factory=dict)
    raw: Record = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> AliasMatch:
        return cls(alias=Alias.from_api(data["actionalias"]), display=_str(data.get("display")),
                   representation=str(data.get("representation") or ""), parameters=_dict(data.get("parameters")),
                   raw=dict(data))


@dataclass(frozen=True, slots=True)
class AliasExecution:
    """A chat command run over HTTP: the execution it requested and the ack chat would have posted."""

    execution: Execution
    alias: Alias
    message: str
    raw: Record = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> AliasExecution:
        return cls(execution=Execution.from_api(data["execution"]), alias=Alias.from_api(data["actionalias"]),
                   message=str(data.get("message") or ""), raw=dict(data))


@dataclass(frozen=True, slots=True)
class Health:
    """`GET /healthz`: answers without a key and touches no database (a liveness probe)."""

    status: str
    packs: int = 0
    actions: int = 0
    raw: Record = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Health:
        return cls(status=str(data.get("status", "")), packs=int(data.get("packs") or 0),
                   actions=int(data.get("actions") or 0), raw=dict(data))
