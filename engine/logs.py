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

What a library logs is not Squall's to word: urllib3 quotes the path and query of every request the
`http-request` runner sends (`?api_key=…`), sse_starlette every chunk of a run's live output. So a
line logged while an execution's secrets are bound (`scrubbing`) is scrubbed of them as its output
is, and sse_starlette is held at INFO whatever `logging.libraries` says (`_CAPPED`). An error
procrastinate logs because its database connection failed is one warning line, not its traceback
(`_LibraryOutage`): an outage is said in one line, as Squall's own loops say it.

Text of another program's put on a line of Squall's log (a sensor's output) is written `printable`:
its control characters escaped, so a terminal following the log runs none of them.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable
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
#: Libraries held at this level at most, even with `logging.libraries: debug`: what they log below it is
#: a run's data (sse_starlette logs every chunk it streams: live output, results, answers) and no diagnosis.
_CAPPED = {"sse_starlette": logging.INFO}
#: What the current task's lines are scrubbed of (`scrubbing`): the secret texts of the execution it runs.
_secrets: ContextVar[Callable[[], list[str]] | None] = ContextVar("squall_log_secrets", default=None)
#: What `printable` escapes: the C0 control characters but tab, DEL, and the C1 ones (U+0080 to U+009F), which
#: a terminal may read as controls too (U+009B as ESC [).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_NAMED = {"\n": "\\n", "\r": "\\r"}


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


class scrubbing:  # lower case: used as a function, as `logging_context` is
    """Scrub `secrets()` (an execution's secret texts, longest first, as `OutputSink.secrets` gives them)
    from every line logged in this block, and in the tasks and threads started in it (they copy the
    context: `asyncio.to_thread`), whatever logger logs it: a library quotes what it was handed (urllib3
    a request's path and query), and that may be a secret parameter. Its output is scrubbed so too
    (`engine.executions.scrub`). None scrubs nothing."""

    __slots__ = ("_secrets", "_token")

    def __init__(self, secrets: Callable[[], list[str]] | None) -> None:
        self._secrets = secrets

    def __enter__(self) -> None:
        self._token = _secrets.set(self._secrets)

    def __exit__(self, *exc: object) -> None:
        _secrets.reset(self._token)


class _Scrubber(logging.Filter):
    """Squall's handler's filter: a line logged under `scrubbing` with its message, and its traceback,
    scrubbed of the bound secrets (the record itself changed, so every other handler gets it scrubbed too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = _secrets.get()
        texts = secrets() if secrets is not None else None
        if not texts:  # nearly every line: no execution's secrets bound
            return True
        from engine.executions import scrub  # bound by a run, so imported by then

        message = record.getMessage()
        shown = scrub(message, texts)
        if shown != message:
            record.msg, record.args = shown, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, texts)
            record.exc_info = None  # the formatters show `exc_text`, not the exception formatted again
        return True


class _LibraryOutage(logging.Filter):
    """Squall's handler's filter: an error procrastinate logs with a traceback because its database
    connection failed (its pool timed out, PostgreSQL went away: `connection_failure`) becomes one
    WARNING line naming the cause. After an outage procrastinate logged `poll_jobs_to_abort error` with
    some 45 lines of chained tracebacks (ConnectorException from PoolTimeout), whatever
    `logging.libraries` said; Squall's own loops say an outage once, in one line (`engine.storage.Trouble`).
    Its other errors, and a failure that is no connection's, keep their level and traceback. The line is
    dropped when `logging.libraries` leaves the logger's warnings out (`error`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or not record.name.startswith("procrastinate") or record.levelno < logging.ERROR:
            return True
        cause = connection_failure(record.exc_info[1])
        if cause is None:
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.WARNING):
            return False
        record.msg, record.args = f"{record.getMessage()}: database connection failed ({cause}); procrastinate " \
                                  "tries again", None
        record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        record.exc_info, record.exc_text = None, None
        return True


class _GonePeerWrites(logging.Filter):
    """Squall's handler's filter: asyncio's `socket.send() raised exception.` (written to a connection its peer
    closed, said from the sixth write on) is dropped. A browser closing a tab with a live page left up to 44
    such WARNING lines, naming neither the peer nor the stream; the stream ends at its next look."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "asyncio" and record.msg == "socket.send() raised exception.")


def connection_failure(exc: BaseException | None) -> str | None:
    """`PoolTimeout: couldn't get a connection after 30.00 sec` when `exc`, or what it was raised from, is
    psycopg's failure to reach or keep the database (`psycopg.OperationalError`, its pool's timeouts
    among them: what `bot.worker` takes for an outage too); None for anything else. First line only: the
    driver's text goes on."""
    psycopg = sys.modules.get("psycopg")  # not imported: the exception is none of its
    if psycopg is None:
        return None
    for _ in range(8):  # the cause chain, short, as `engine.storage.database_failure` walks it
        if exc is None:
            return None
        if isinstance(exc, psycopg.OperationalError):
            text = (str(exc).strip().splitlines() or [""])[0]
            return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        exc = exc.__cause__ or exc.__context__
    return None


def printable(text: str) -> str:
    """`text` with its control characters but tab written as escapes (`\\r`, `\\n`, `\\x1b`), for text
    another program wrote (a sensor's output) on a line of Squall's log. As they were, a terminal following
    the log (`tail -f`) ran them: ESC sequences recoloured or cleared the screen, and a CR sent the cursor
    back over the line's `time LEVEL logger:` prefix, so what followed it read as a line of Squall's own
    (`CRITICAL squall: ...`); a newline began one. Backslashes are left as they are (a Windows path stays
    readable), so a sensor that prints `\\x1b` itself reads the same as an escaped ESC: it is still text."""
    return _CONTROL.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or f"\\x{ord(char):02x}"


def _context(record: logging.LogRecord) -> dict[str, Any]:
    """The line's context: `CONTEXT_KEYS` from the task's context (`log_context`) only, then, as
    `extra_<key>`, the record's own attribute of such a name: a library's `extra=` (procrastinate passes
    `extra={"action": "start_job"}`) is its own field, never Squall's action, execution or user."""
    context = log_context.get()
    shown = {key: context[key] for key in CONTEXT_KEYS if key in context}
    for key in CONTEXT_KEYS:
        value = getattr(record, key, None)
        if value is not None:
            shown[f"extra_{key}"] = value
    return shown


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
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:  # as `logging.Formatter` does: formatted once, or given scrubbed (`_Scrubber`)
            entry["exception"] = record.exc_text
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
    handler.addFilter(_LibraryOutage())  # first: a line it shortens has no traceback left to scrub
    handler.addFilter(_GonePeerWrites())
    handler.addFilter(_Scrubber())
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
    for name, most in _CAPPED.items():  # their loggers' levels are unset: the root's, raised
        logging.getLogger(name).setLevel(max(most, _number(libraries)))
    for name in OWN:
        logging.getLogger(name).setLevel(_number(own))


def _number(level: str) -> int:
    return int(logging.getLevelName(level.upper()))
