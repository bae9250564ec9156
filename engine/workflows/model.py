"""What a workflow conductor and the host that runs it exchange: calls out, outcomes back.

A conductor (ActionChain or Orquesta) is pure state: given the outcome of a task it answers
with the next calls. The host turns each call into a child execution and feeds outcomes back.
Every call has a key that is the same whenever the workflow is conducted again from the same
outcomes, so after a crash the host can replay stored children instead of running them again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

COMPLETED = frozenset({"succeeded", "failed", "timeout", "canceled", "abandoned"})
FAILED = frozenset({"failed", "timeout", "abandoned"})
#: `st2kv(key)` without `default`: a missing key is an error, while `default=null` returns null.
NO_DEFAULT: Any = type("NoDefault", (), {"__repr__": lambda self: "NO_DEFAULT"})()


@dataclass
class TaskCall:
    """Run action `ref` for task `task`; `key` identifies this very run (occurrence, item, attempt)."""

    key: str
    task: str
    ref: str
    parameters: dict[str, Any]
    context: dict[str, Any] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Outcome:
    status: str
    result: Any


class Conductor(Protocol):
    def start(self) -> list[TaskCall]: ...

    def on_done(self, key: str, status: str, result: Any, execution_id: str | None) -> list[TaskCall]: ...

    @property
    def finished(self) -> bool: ...

    def outcome(self) -> Outcome: ...

    def snapshot(self) -> Any:
        """The result so far, shown while the workflow is paused."""
        ...
