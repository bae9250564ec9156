"""How Squall's long-running processes log: config `logging.*`, text or JSON lines, and the context
(execution, action, user, adapter, channel) every line written on an execution's or a message's
behalf carries.

The context is a `ContextVar` (`log_context`), set where work starts (`ExecutionService.run`, the
chat dispatcher) and inherited by every task spawned under it, so no log call has to pass ids by
hand. The JSON formatter puts it beside time, level, logger and message: a log pipeline (Loki,
Splunk, LogStash) can then find every line of one execution. The text format appends it in
brackets, so a person reading a terminal sees it too.

Libraries log at WARNING unless `logging.libraries` says otherwise: Alembic's INFO lines (a screen
of them at every migration) and uvicorn's access log would bury the few lines a person starting
`squall serve` needs (the address, the packs, the adapters, the problems).
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

#: What the current task works for: `execution_id`, `action`, `user`, `adapter`, `channel` (any of them).
log_context: ContextVar[dict[str, Any]] = ContextVar("squall_log_context", default={})  # noqa: B039
#: The context keys, in the order lines show them.
CONTEXT_KEYS = ("execution_id", "action", "user", "adapter", "channel")
#: Loggers of Squall's own code; every other logger is a library's.
OWN = ("squall", "engine", "bot", "adapters", "aliases")
LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
_KEYS = {"level", "format", "libraries"}
#: Libraries that set their loggers' levels themselves: held to `logging.libraries` by name.
_SELF_LEVELLED = ("alembic", "uvicorn", "uvicorn.access", "uvicorn.error", "procrastinate", "asyncssh")


class logging_context:  # lower case: used as a function, `with logging_context(user=...):`
    """Add `values` (None ones left out) to the context of what this task logs, until the block ends.
    A class, not a generator: every chat message enters one, and a generator's context manager
    costs about twice as much."""

    __slots__ = ("_token", "_values")

    def __init__(self, **values: Any) -> None:
        self._values = values

    def __enter__(self) -> None:
        self._token = log_context.set({**log_context.get(), **{k: v for k, v in self._values.items() if v is not None}})

    def __exit__(self, *exc: object) -> None:
        log_context.reset(self._token)


def bind(**values: Any) -> None:
    """Add `values` to the current task's context for the rest of the task (a task's copy of the
    context dies with it, so nothing leaks to other tasks)."""
    log_context.set({**log_context.get(), **{k: v for k, v in values.items() if v is not None}})


def _context(record: logging.LogRecord) -> dict[str, Any]:
    context = dict(log_context.get())
    for key in CONTEXT_KEYS:  # `extra=` of one call wins over the task's context
        value = getattr(record, key, None)
        if value is not None:
            context[key] = value
    return {key: context[key] for key in CONTEXT_KEYS if key in context}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, then the context."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_context(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message [execution_id=… action=…]`: for people at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = _context(record)
        if not context:
            return text
        shown = " ".join(f"{key}={value}" for key, value in context.items())
        head, newline, tail = text.partition("\n")  # a traceback stays below the line
        return f"{head} [{shown}]{newline}{tail}"


def _choice(path: Any, key: str, value: Any, allowed: tuple[str, ...], default: str) -> str:
    from engine.config import ConfigError

    if value is None:
        return default
    if not isinstance(value, str) or value.lower() not in allowed:
        raise ConfigError(f"{path}: 'logging.{key}' must be one of {', '.join(allowed)}, not {value!r}")
    return value.lower()


def configure(config: Any, level: str | None = None) -> None:
    """Log as config `logging` says (`level`: info, `format`: text, `libraries`: warning) to stderr.
    `level` overrides the config's (`-v`). Raises `ConfigError` naming a bad key or value."""
    from engine.config import ConfigError

    section = config.section("logging")
    unknown = sorted(set(section) - _KEYS)
    if unknown:
        raise ConfigError(f"{config.path}: unknown key 'logging.{unknown[0]}'; known: {', '.join(sorted(_KEYS))}")
    own = _choice(config.path, "level", level or section.get("level"), LEVELS, "info")
    libraries = _choice(config.path, "libraries", section.get("libraries"), LEVELS, "warning")
    form = _choice(config.path, "format", section.get("format"), FORMATS, "text")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if form == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    # Libraries inherit the root's level; Squall's own loggers have theirs (a record reaches the
    # root's handler whatever the root's level once its own logger let it through).
    root.setLevel(_number(libraries))
    for name in _SELF_LEVELLED:  # and through Squall's handler: a config of the library's own (uvicorn's
        logger = logging.getLogger(name)  # default: a handler of its own, propagate off) printed past it
        logger.setLevel(_number(libraries))
        logger.handlers.clear()
        logger.propagate = True
        logger.disabled = False
    for name in OWN:
        logging.getLogger(name).setLevel(_number(own))


def _number(level: str) -> int:
    return int(logging.getLevelName(level.upper()))
