"""What every `squall` command shares: the root app, the consoles, config, errors as exits, packs.

Exit codes are a contract (README's list): 0 success, 1 the action failed (or timed out), 2 bad input,
3 Squall cannot work here (a database it cannot open or reach, a folder it cannot write, the API's port
taken), 128 + N stopped by signal N (130 Ctrl-C, 143 SIGTERM). Every read command takes `--json` and
then prints exactly one JSON document on stdout.

This module and every command group are imported for any command, `squall --help` included, so
they import only typer and rich's console at the top: the engine, the database layer, the chat side
and rich's tables are imported inside the functions that use them (see `bench/cli.py` for what that
buys).
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    import asyncio

    from rich.table import Table

    from bot.app import Squall
    from engine.config import Config
    from engine.executions import AuditEntry
    from engine.packs import Registry
    from engine.storage import Store
    from engine.yamlfile import ContentError

# `rich_markup_mode=None` (here and on every `group`): click's plain help and usage errors. typer's
# rich help imports rich's markdown and panels, ~0.25 s on every `--help` and every mistyped command.
app = typer.Typer(help="Squall: ChatOps automation with StackStorm's packs.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False, rich_markup_mode=None)


def group(help: str) -> typer.Typer:
    """A command group (`squall key ...`), with the root's plain help."""
    return typer.Typer(help=help, no_args_is_help=True, rich_markup_mode=None)

# `emoji=False`: rich turns `:smile:` into 😄 even with markup off, and a key's value, a parameter or a
# description is printed as written (`squall key get` feeds scripts). Squall's own lines use no emoji codes.
out = Console(highlight=False, soft_wrap=True, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def new_table(*headers: str) -> Table:
    """A table with these column headers, for the listing commands. rich's table module loads here,
    at the first listing: `squall serve` and most commands print none (~17 ms of every start). A cell too
    wide for a narrow terminal folds onto more lines, never cut short: an id or ref cut to `0661…` is of no
    use to the command that takes it."""
    from rich.table import Table

    table = Table(*headers)
    for column in table.columns:
        column.overflow = "fold"
    return table


def shown_time(value: str | None) -> str:
    """A stored time (ISO 8601 in UTC, `2026-12-05T10:11:12.345678Z`) as the listings show it,
    `2026-12-05 10:11:12`: the 27 characters of the ISO form were cut to `2026-12-05T10…` in an
    80-column table. UTC, as every time the CLI prints; an empty cell for no time."""
    if not value:
        return ""
    moment = datetime.fromisoformat(value)
    return (moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)).strftime(
        "%Y-%m-%d %H:%M:%S")


def add_row(table: Table, *cells: object) -> None:
    """Add a listing's row with every cell shown as written. rich reads a cell as markup, and cells hold
    names, values and descriptions from users and packs: a `[/x]` in one crashed the listing, a
    `[a-z0-9_]` vanished. Their control characters are written as escapes (`shown_text`): a pack's
    description or a key's value holding ESC sequences cleared the screen or retitled the terminal of whoever
    listed them. A cell that is already a rich `Text` (a styled error) is added as it is; None is an empty
    cell, as rich shows it."""
    from rich.text import Text

    table.add_row(*(cell if isinstance(cell, Text) else "" if cell is None else escape(shown_text(str(cell)))
                    for cell in cells))


def shown_text(text: str) -> str:
    """`text` (from a pack, a key, an execution) as a terminal may be given it: each line's control
    characters written as escapes (`engine.logs.printable`: `\\x1b`, `\\r`), its newlines kept, so a cell
    meant to hold lines (`alias list`'s formats, one a line) still does."""
    from engine.logs import printable

    return "\n".join(printable(line) for line in text.split("\n"))

T = TypeVar("T")

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


class _State:
    config_path: str | None = None
    #: `-v`: the long-running commands (serve, worker) then log at debug.
    verbose = False


def _version(asked: bool) -> None:
    """`--version`: the installed distribution's version, as `pip show squall` says it."""
    if asked:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"squall {version('squall')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            print("squall (not installed: run from a source checkout)")
        raise typer.Exit(0)


@app.callback()
def _main(
    config: Annotated[str | None, typer.Option("-c", "--config", help="Config file (default ./config.yml, "
                                                "or $SQUALL_CONFIG).")] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Log what Squall does.")] = False,
    _show_version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print Squall's version and exit.")] = False,
) -> None:
    _State.config_path = config
    _State.verbose = verbose
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def log_level() -> str | None:
    """The level `-v` asks the long-running commands for (debug), or None: config `logging.level` decides."""
    return "debug" if _State.verbose else None


#: The exit of a command that cannot work on this machine's setup (README's exit codes): 1 is "the
#: action failed", which a database that cannot be opened is not.
SETUP_FAILED = 3


def fail(message: str, code: int = 2) -> typer.Exit:
    """Say what is wrong on stderr; the caller raises the returned exit (2: bad input, `SETUP_FAILED`).
    The message is escaped: it quotes what was given (a path, a URL, a pattern), and rich would read
    `[...]` as markup."""
    err.print(f"[red]error:[/red] {escape(message)}", markup=True, highlight=False)
    return typer.Exit(code)


def current_config() -> Config:
    """The config named by `-c`, `$SQUALL_CONFIG` or ./config.yml; a bad one exits 2 saying why."""
    from engine.config import ConfigError, load_config

    try:
        return load_config(_State.config_path)
    except ConfigError as exc:
        raise fail(str(exc)) from exc


def note_defaults(config: Config) -> None:
    """Say it when a command found no config file and is about to make a new database with the defaults, in
    the folder it runs in (`with_app`, `with_store`, before they open it): `squall execution list` outside the
    checkout listed nothing, made `./data/`, and left people asking where their executions had gone. Said
    once, when that database does not exist yet."""
    if config.path is not None or not config.database_url.startswith("sqlite:///"):
        return
    database = Path(config.database_url.removeprefix("sqlite:///"))
    if not database.exists():
        err.print(f"note: no config file here (./config.yml), in $SQUALL_CONFIG or given with -c: using the "
                  f"defaults, with a new database at {database}", markup=False)


def current_user() -> str:
    """Who runs the command: recorded on executions, owner of user-scoped keys, inquiry answers."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "squall"


def with_app(work: Callable[[Squall], Awaitable[T]], *, recover: bool = False, pack_problems: bool = False) -> T:
    """Run `work` against a started Squall, turning known errors into clear exits.

    With `pack_problems` (the commands about pack content: `run`, rules, triggers), one stderr warning per
    pack file that did not load, as every command that reads packs gives (`warn_problems`). The others
    (`execution get`, `inquiry list`, `key set`) say nothing of packs: every problem of every pack came out
    of them as raw timestamped log lines, the start-up's, which `_started` keeps quiet.

    SIGTERM (`timeout`, a CI job's cancel, `kill`) and SIGHUP (a closed terminal) stop the command as
    Ctrl-C does (`_Stop`): what it runs is stopped and recorded `abandoned`, and one line says so. With
    their default action the process died at once, its execution left `running` and its action orphaned.
    What it asked `squall worker`s to run and waits for (`requested`) is canceled in the database
    instead, before Squall closes (`_Stop.stop_requested`)."""
    import asyncio

    from engine.config import ConfigError
    from engine.crypto import CryptoError
    from engine.executions import ExecutionNotFound, ExecutionStateError
    from engine.packs import UnknownAction
    from engine.parameters import ParameterError

    config = current_config()
    note_defaults(config)
    one_shot()
    stop = _Stop()

    async def main() -> T:
        stop.listen(asyncio.get_running_loop(), asyncio.current_task())
        _stopping.set(stop)  # (asyncio.run's own context: `requested` finds it in `work`)
        squall = await _started(config, recover, pack_problems)
        squall.executions.on_finished(stop.heard)
        done = False
        try:
            outcome = await work(squall)
            done = True
        except asyncio.CancelledError:
            if stop.signal is not None:
                await stop.stop_requested(squall)
            raise
        finally:
            # After the work: a stop signal now (Ctrl-C just as a write committed) changes nothing it did, and
            # the command says what it did. Cut short there, it said `interrupted` (130) for a stored change.
            await (carried_through(squall.close()) if done else squall.close())
        return outcome

    with setup_errors(config):
        try:
            return asyncio.run(main())
        except asyncio.CancelledError:
            if stop.signal is None:
                raise
            raise stop.report() from None
        except (UnknownAction, ParameterError, ExecutionNotFound, ExecutionStateError, CryptoError) as exc:
            raise fail(str(exc)) from exc
        except ConfigError as exc:  # a setting only starting Squall reads (`audit.sinks`, `metrics.statsd`)
            raise fail(str(exc)) from exc


async def carried_through(step: Awaitable[T]) -> T:
    """`step` run to its end even if a stop signal cancels the command meanwhile, and the command then goes on
    as if none came: for what follows a change already stored (closing Squall, a key write's triggers), which
    the stop can no longer undo. A second signal still stops at once (`_Stop._received`)."""
    import asyncio

    task = asyncio.ensure_future(step)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        return await task


#: The logger of the alias index, which logs each alias that did not load as Squall starts: `alias list`,
#: `pack list` and `pack reload` say those, not every command.
_ALIAS_INDEX_LOG = "bot.chat.index"


async def _started(config: Config, recover: bool, pack_problems: bool) -> Squall:
    """Squall started for one command, its start-up's log of pack problems left out (the command says them
    itself, once, if they concern it: `pack_problems`)."""
    from bot.app import Squall

    index_log = logging.getLogger(_ALIAS_INDEX_LOG)
    level = index_log.level
    index_log.setLevel(logging.ERROR)
    try:
        squall = await Squall.start(config, recover=recover, log_problems=False, upgrade_in_use=False)
    finally:
        index_log.setLevel(level)
    if pack_problems:
        warn_problems(squall.registry.errors)
    return squall


#: How long a stopped command waits for what it asked `squall worker`s to cancel to end, to say how it
#: ended (a worker stops an action within a second; a workflow ends once its canceled tasks did). Past it,
#: the line says `canceling` and the workers end it all the same.
STOP_SECONDS = 10.0


class _Stop:
    """The signals that stop a one-shot command, all taken as asyncio takes Ctrl-C: the first cancels the
    command's task, so Squall closes as it does at the end of any command (its runs are stopped, their
    process groups killed, their executions recorded `abandoned`); a second stops at once. What ended
    meanwhile is reported in one line each.

    Under `executor.kind: procrastinate` nothing runs in the command's process: what it requested and
    waits for (`requested`) is a job for a `squall worker`, which closing Squall left queued, to run after
    the command was gone, and unnamed. So that is canceled first (`stop_requested`)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        #: Top-level executions that ended after the signal (a workflow's tasks end with it, unreported),
        #: by id: one this command canceled is heard of as it ends here, and read again after.
        self.ended: dict[str, dict[str, Any]] = {}
        #: The requests of what this command waits for (`requested`), each to its end.
        self.requests: list[asyncio.Task[dict[str, Any]]] = []
        #: Lines for what could not be canceled (the database failing meanwhile).
        self.unstopped: list[str] = []
        #: Set the moment a stop signal arrives (`stop_flag`), before the loop gets to cancel the task.
        self.stopping = threading.Event()

    def listen(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any] | None) -> None:
        """Take the signals on `loop` for `task` (only the main thread may; elsewhere, a test's thread, the
        defaults stay). One this process was started ignoring stays ignored: `nohup squall run ...` must
        outlive its terminal, and a shell script's `squall run ... &` is deaf to Ctrl-C."""
        if task is None or threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                loop.add_signal_handler(sig, self._received, sig, task)
                # asyncio's own handler only wakes the loop, which calls `_received` once free; this one runs
                # at once on this thread, even while a database call holds the loop (`stop_flag`). The loop
                # is woken as before: that goes through the wakeup fd, whatever the Python handler.
                signal.signal(sig, self._arrived)
                signal.siginterrupt(sig, False)  # as add_signal_handler left it

    def _arrived(self, signum: int, frame: object) -> None:
        self.stopping.set()

    def _received(self, sig: signal.Signals, task: asyncio.Task[Any]) -> None:
        if self.signal is not None or task.done():
            raise KeyboardInterrupt  # asked again while closing: stop now
        self.signal = sig
        task.cancel()

    def heard(self, record: dict[str, Any]) -> None:
        """An execution finished in this process (`on_finished`): kept if the stop ended it."""
        if self.signal is not None and record.get("parent") is None:
            self.ended[record["id"]] = record

    async def stop_requested(self, squall: Squall) -> None:
        """Stop what this command requested and waited for, where this process does not run it. Each
        request is let finish first (it is quick, and cut short it could be stored unnamed). Under the local
        executor it runs here: `squall.close()` stops it, recorded `abandoned`, as before. Under the shared
        one a worker runs it, or will: it is canceled (`_cancel`), conditionally on its status as
        `squall execution cancel` cancels, so a worker that takes it at that instant wins cleanly and is
        then asked to cancel it, wherever it runs."""
        import asyncio

        stored = await asyncio.gather(*self.requests, return_exceptions=True)
        if not getattr(squall.executions.executor, "shared", False):
            return
        for record in stored:
            if isinstance(record, dict):
                await self._cancel(squall, record["id"])

    async def _cancel(self, squall: Squall, execution_id: str) -> None:
        """Cancel `execution_id` and its live tasks (`_cancel_tasks`), audited as `cli.execution.cancel`
        with the signal; then wait up to `STOP_SECONDS` for its end, to report how it is. One the database
        would not cancel is said with how to cancel it by hand."""
        from sqlalchemy.exc import DBAPIError

        from engine.executions import ExecutionNotFound, ExecutionStateError

        try:
            audit = await squall.db(audit_entry, squall.store, "cli.execution.cancel",
                                    {"signal": (self.signal or signal.SIGINT).name})
            with contextlib.suppress(ExecutionStateError):  # it ended meanwhile: reported as it ended
                await squall.executions.cancel(execution_id, audit)
            await _cancel_tasks(squall, execution_id)
            with contextlib.suppress(TimeoutError):
                await squall.executions.wait(execution_id, timeout=STOP_SECONDS)
            self.ended[execution_id] = await squall.executions.get(execution_id)
        except (DBAPIError, ExecutionNotFound) as exc:
            from engine.storage import database_trouble

            why = (database_trouble(exc) or type(exc).__name__) if isinstance(exc, DBAPIError) else str(exc)
            self.unstopped.append(f"interrupted: execution {execution_id} could not be canceled ({why}); a squall "
                                  f"worker may still run it: cancel it with `squall execution cancel {execution_id}`")

    def report(self) -> typer.Exit:
        """One line per execution the stop ended, on stderr (which a closed terminal may no longer take),
        and the exit a process stopped by the signal gives: 128 + its number (130 for Ctrl-C)."""
        lines = [f"interrupted: execution {r['id']} {r['status']} (see: squall execution get {r['id']})"
                 for r in self.ended.values()] + self.unstopped or ["interrupted"]
        with contextlib.suppress(OSError):
            for line in lines:
                err.print(line, markup=False)
        return typer.Exit(128 + (self.signal or signal.SIGINT))


#: The stop of the command running in this context (`with_app`), told by `requested` of what it waits for.
_stopping: ContextVar[_Stop | None] = ContextVar("squall_cli_stop", default=None)


def stop_flag() -> threading.Event:
    """What a long database call of `with_app`'s work checks between its steps, to stop and roll back at a
    stop signal (`squall key load`'s write): set the moment the signal arrives. The task's cancel does not
    reach such a call, which runs on the database thread, or on the loop itself (SQLite's groups), where the
    cancel waits for it to end. A flag never set outside `with_app`."""
    stop = _stopping.get()
    return stop.stopping if stop is not None else threading.Event()


async def requested(request: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """The execution `request` stores (`ExecutionService.request`, a re-run), which this command then waits
    for: a stop signal meanwhile stops it wherever it runs (`_Stop.stop_requested`). The request runs to its
    end even then (shielded): cut short, it could be stored without this command knowing its id, and a
    worker would run it after the command was gone."""
    import asyncio

    task = asyncio.ensure_future(request)
    stop = _stopping.get()
    if stop is not None:
        stop.requests.append(task)
    return await asyncio.shield(task)


async def _cancel_tasks(squall: Squall, execution_id: str) -> None:
    """Cancel the live tasks of workflow `execution_id`, and theirs, at any depth: a workflow's cancel lets
    its running tasks finish (as Orquesta does), while a stopped command stops what it ran, as it does under
    the local executor. The workflow is canceled first, so that no task ending here starts another."""
    from engine.executions import COMPLETED, ExecutionNotFound, ExecutionStateError

    parents = [execution_id]
    while parents:
        for child in await squall.executions.list(parent=parents.pop(), limit=100_000):
            parents.append(child["id"])
            if child["status"] not in COMPLETED:
                with contextlib.suppress(ExecutionStateError, ExecutionNotFound):  # ended, or canceling already
                    await squall.executions.cancel(child["id"])


@contextlib.contextmanager
def setup_errors(config: Config) -> Iterator[None]:
    """Turn what this machine's setup makes fail into one line and exit 3 (`SETUP_FAILED`): a database
    that cannot be opened or reached, a folder or file under `data_dir` that cannot be written (read-only,
    a file where a folder must be). These ended in 50 to 160 lines of traceback and exit 1, the code of
    a failed action. The line names the path or the URL (its password masked) and what to check. An
    install without Squall's own packs (`SystemPacksMissing`) is one too: nothing can run without `core`."""
    from sqlalchemy.exc import OperationalError

    try:
        yield
    except OperationalError as exc:
        raise fail(_database_problem(config, exc), SETUP_FAILED) from None
    except OSError as exc:
        if exc.filename is None:  # not about a path of the setup (a broken pipe, a socket): a bug to see whole
            raise
        raise fail(_path_problem(config, exc), SETUP_FAILED) from None
    except Exception as exc:
        if not _refused_setup(exc):
            raise
        raise fail(str(exc), SETUP_FAILED) from None


def _refused_setup(exc: Exception) -> bool:
    """Whether `exc` is the pack loader's `SystemPacksMissing` or the store's `SchemaRefused` (a database a newer
    Squall migrated, or an older one a running service uses), told without importing their modules (the loader
    is ~50 ms) into the commands that never use them: only a process that imported one can have raised its
    exception."""
    packs, storage = sys.modules.get("engine.packs"), sys.modules.get("engine.storage")
    return ((packs is not None and isinstance(exc, packs.SystemPacksMissing))
            or (storage is not None and isinstance(exc, storage.SchemaRefused)))


async def served_elsewhere(squall: Squall) -> bool:
    """Whether another process runs what this command leaves stored (a request with `--async`, an answered
    inquiry's workflow to resume): `squall serve`, the one process that takes the lead, or with `squall
    worker`s (`executor.kind: procrastinate`) any other Squall process on the database
    (`Engine.other_processes`). Without one, the command's "requested" or "answered" alone left people
    waiting on what sat `requested` or `resuming` until a serve ran."""
    import asyncio

    from engine.wakeups import PROCESS_NAME

    if squall.config.executor_kind == "procrastinate":
        return bool(await squall.db(squall.other_processes))
    return await asyncio.to_thread(squall.leader.holder) not in (None, PROCESS_NAME)


def runner_named(config: Config) -> str:
    """Who runs what the CLI stores, as its messages name it."""
    return "`squall serve` or a `squall worker`" if config.executor_kind == "procrastinate" else "`squall serve`"


def _database_problem(config: Config, exc: Exception) -> str:
    """What an `OperationalError` of the database says, with the database it is about and what to check."""
    from sqlalchemy.engine import make_url

    url = make_url(config.database_url)
    cause = getattr(exc, "orig", None) or exc
    reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    if url.password:  # libpq quotes none, but a driver's message might: masked where it stands alone
        import re

        reason = re.sub(rf"(?<!\w){re.escape(str(url.password))}(?!\w)", "***", reason)
    if url.get_backend_name() == "sqlite":
        path = Path(url.database or "")
        if "locked" in reason:  # another process writes: no folder or permission is wrong
            return (f"the SQLite database {path} stayed locked by another process (squall serve, a worker or "
                    f"another command) for longer than this command waits; nothing more was done. Try again, "
                    f"or stop that process first")
        return (f"cannot use the SQLite database {path}: {reason}; check that {path.parent} is a folder and "
                f"{path.name} in it a file, both writable by this user ({current_user()}), or set "
                f"database.url in {config.named}")
    return (f"cannot reach the database {url.render_as_string(hide_password=True)}: {reason}; check that "
            "PostgreSQL runs at that host and port and accepts connections from here, and the user, password "
            f"and database name of database.url in {config.named}")


def _path_problem(config: Config, exc: OSError) -> str:
    """What an `OSError` on a path of the setup says, with what to check."""
    import errno

    reason = exc.strerror or type(exc).__name__
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        reason += " (a file is where a folder must be)"
    return (f"cannot use {exc.filename}: {reason}; check that data_dir ({config.data_dir}) and the other paths "
            f"in {config.named} are folders this user ({current_user()}) can write")


def one_shot() -> None:
    """This process is a command, not the service: no stdout audit sink (`engine.audit_sinks`), since
    its standard output is its answer (one JSON document with `--json`; an action's result in chat); and
    no log line of the database's outage (`_service_outage_line`)."""
    from engine.audit_sinks import leave_out_stdout

    leave_out_stdout()
    storage_log = logging.getLogger("engine.storage")
    if _service_outage_line not in storage_log.filters:
        storage_log.addFilter(_service_outage_line)


def _service_outage_line(record: logging.LogRecord) -> bool:
    """False for the store's warning that the database failed, which speaks to a service's operator
    ("/healthz answers 503"): a command has no /healthz, and says a database problem itself, in its own
    words (`_database_problem`, exit 3; `squall run`'s wait, which waits it out)."""
    return "/healthz" not in str(record.msg)


def with_store(work: Callable[[Store, Config], T]) -> T:
    """Run `work` on the database alone, for commands whose rows nothing else reacts to (reading
    keys, API keys): no packs, runners or chat side are loaded, which is most of a command's time."""
    from engine.config import ConfigError
    from engine.crypto import CryptoError
    from engine.storage import Store

    config = current_config()
    note_defaults(config)
    with setup_errors(config):
        store = Store.open(config.database_url, upgrade_in_use=False)
        try:
            return work(store, config)
        except (CryptoError, ConfigError) as exc:  # ConfigError: `audit.sinks`, read by the writes' `install`
            raise fail(str(exc)) from exc
        finally:
            store.close()


def audit(event: str, target: str | None, detail: dict[str, Any]) -> None:
    """Record what a command changed without starting Squall (a pack installed, a user made) in the
    audit log, as whoever the command acts for (`acting_for`), and in `audit.sinks` as any audit event
    goes (but stdout: `one_shot`)."""
    from engine.audit_sinks import install

    one_shot()

    def write(store: Store, config: Config) -> None:
        sinks = install(store, config)  # guarded: a sink that fails must not fail what is already done
        try:
            record_audit(store, event, target, detail)
        finally:
            for sink in sinks:
                sink.close()

    with_store(write)


@contextlib.contextmanager
def audit_sinks(store: Store, config: Config) -> Iterator[None]:
    """This command's `audit.sinks` (no stdout: `one_shot`) while it stores events with `store` itself, closed
    after: an event reaches them once its transaction commits, as `audit`'s do. A sink that fails to open
    fails nothing (`install` is guarded)."""
    from engine.audit_sinks import install

    one_shot()
    sinks = install(store, config)
    try:
        yield
    finally:
        for sink in sinks:
            sink.close()


def audit_made(event: str, target: str | None, detail: dict[str, Any], made: str) -> None:
    """`audit` of a change made for good before its event is written, with no transaction the event could
    share (a pack's files installed or removed; an instance a running service stored through its webhook
    route): an event that cannot be stored is said, with `made` (the change, which holds) and the event
    whole, and the command exits 3. Said only as the database's failure, it read as if the change had
    failed, and a retry made it again; the event was nowhere."""
    from sqlalchemy.exc import DBAPIError

    try:
        audit(event, target, detail)
    except (typer.Exit, DBAPIError) as exc:  # an exit: `setup_errors` said why the database took nothing
        say_unaudited(event, target, detail, made, exc)
        raise typer.Exit(SETUP_FAILED) from None


def say_unaudited(event: str, target: str | None, detail: dict[str, Any], made: str, exc: BaseException) -> None:
    """Say on stderr that `made` (a change that holds) has no audit event, the database having refused it
    (`exc`: an exit when `setup_errors` said why already), with the event whole."""
    from sqlalchemy.exc import DBAPIError

    from engine.storage import database_failure

    why = f" ({database_failure(exc) or type(exc).__name__})" if isinstance(exc, DBAPIError) else ""
    event_text = json.dumps({"event": event, "target": target, "detail": detail}, default=str)
    said = f"{made}, but its audit event could not be stored{why}; the event: {event_text}"
    err.print(f"[red]error:[/red] {escape(said)}", markup=True, highlight=False)


def changed_and_audited(work: Callable[[Store, Config], T], event: str,
                        audited: Callable[[T], tuple[str | None, dict[str, Any]] | None]) -> T:
    """`with_store`'s `work`, a change made without starting Squall (a user, an API key), and its audit
    event in one transaction (`Store.batch`): neither is stored without the other. Stored apart (`audit`),
    a failure between them left an account or a key nobody was audited for, and the command said it
    failed for what it had done. `audited(outcome)` is the event's target and detail, or None when `work`
    changed nothing (no event). The event reaches `audit.sinks` once committed, as `audit`'s do."""
    from engine.audit_sinks import install

    one_shot()

    def write(store: Store, config: Config) -> T:
        sinks = install(store, config)  # guarded: a sink that fails must not fail the change
        try:
            with store.batch():
                outcome = work(store, config)
                said = audited(outcome)
                if said is not None:
                    record_audit(store, event, *said)
            return outcome
        finally:
            for sink in sinks:
                sink.close()

    return with_store(write)


def record_audit(store: Store, event: str, target: str | None, detail: dict[str, Any]) -> None:
    """Store one audit event of this command, as whoever it acts for (`acting_for`); on the database
    thread (`await squall.db(record_audit, squall.store, ...)`) or a store of `with_store`. For an event
    that records no change stored with it: a change's event goes with the change (`audit_entry`,
    `changed_and_audited`)."""
    actor, source, more = acting_for(store)
    store.audit_add(event, actor, source, target, {**detail, **more})


def audit_entry(store: Store, event: str, detail: dict[str, Any]) -> AuditEntry:
    """This command's audit event for the engine to store in the transaction of the change it records
    (`audit=` of a request, a cancel, a re-run, an answer, a key's write), about what it changes, as
    whoever the command acts for (`acting_for`, which reads the database: call it on its thread, `await
    squall.db(audit_entry, squall.store, ...)`). Stored after the change, a failure between them left a
    change nobody was audited for, and the command failed (exit 3) for what it had done: run again, it
    did it twice."""
    from engine.executions import AuditEntry

    actor, source, more = acting_for(store)
    return AuditEntry(event, actor, source, None, {**detail, **more})


def acting_for(store: Store) -> tuple[str, str, dict[str, Any]]:
    """Who a command acts for, where from, and what to add to its events' detail.

    A person at a shell: their OS user, from `cli`. The same command run by an action (the `squall`
    pack's `!pack install` runs `"$SQUALL_CLI" pack install ...`) acts for whoever asked for that
    execution: its requester (`context.user`, else `api_user`) from the execution's origin (the chat
    command's `adapter:channel`, as chat events say, or `api`, `web`, `rule`, ...), with the execution
    and the OS user in the detail. An execution proves itself with the token the runner gave it
    (`ST2_ACTION_AUTH_TOKEN`, valid only while it runs): a variable set by hand, an execution that ended
    or an unknown id leave the shell's attribution."""
    import os

    shell = (current_user(), "cli", {})
    execution_id = os.environ.get("ST2_ACTION_EXECUTION_ID")
    if not execution_id:
        return shell
    record = _running_execution(store, execution_id, os.environ.get("ST2_ACTION_AUTH_TOKEN", ""))
    if record is None:
        return shell
    context = record.get("context") or {}
    actor = context.get("user") or context.get("api_user")
    if not actor:
        return shell
    return str(actor), _origin(store, record), {"execution": record["id"], "os_user": current_user()}


def _running_execution(store: Store, execution_id: str, token: str) -> dict[str, Any] | None:
    """The execution `execution_id` if `token` is its own live token, else None."""
    from engine.tokens import authenticate

    who = authenticate(store, token) if token else None
    if who is None or who.get("execution_id") != execution_id:
        return None
    return store.get_execution(execution_id)


def _origin(store: Store, record: dict[str, Any]) -> str:
    """Where the work `record` is part of came from: its workflow's root execution's chat channel as
    `adapter:channel` (chat events' source), else its origin as the metrics name it (`api`, `web`,
    `cli`, `rule`, `timer`)."""
    from engine.metrics import source_of

    context = record.get("context") or {}
    root_id = (context.get("parent") or {}).get("root_id")
    root = store.get_execution(root_id) if root_id and root_id != record["id"] else None
    origin = (root or record).get("context") or {}
    chat = origin.get("chat") or context.get("chat") or (context.get("parent") or {}).get("chat") or {}
    if chat.get("adapter") and chat.get("channel"):
        return f"{chat['adapter']}:{chat['channel']}"
    return source_of(origin)


def load_packs(config: Config, *, warn: bool = True) -> Registry:
    """The packs, for commands that read them without starting Squall; with `warn`, one stderr
    line per file that did not load, on every call (a problem must not show only once).

    The same call as `engine.core.load_packs`, made here so listing packs imports the pack loader
    only, not the runners, the database layer and the chat side that module brings.

    The registry comes from the pack cache in `<data_dir>/cache` when no pack or config file
    changed since it was written (`engine.packs.load_registry_cached`): with a 4,000-action pack
    every command used to spend seconds parsing YAML. `SQUALL_PACK_CACHE=0` turns it off."""
    from engine.config import SYSTEM_PACKS_PATH
    from engine.packs import load_registry_cached

    with setup_errors(config):  # an install without Squall's own packs: exit 3, as starting Squall says
        registry = load_registry_cached(config.pack_paths, config.configs_path, SYSTEM_PACKS_PATH,
                                        config.data_dir / "cache")
    if warn:
        warn_problems(registry.errors)
    return registry


def warn_problems(problems: Iterable[ContentError]) -> None:
    """One stderr line per pack file that did not load: file, line where known, reason. A warning about
    content that loads all the same (`engine.packs.ContentWarning`: a version that is not semver, an alias
    format's unbalanced braces) is not called skipped."""
    from engine.logs import printable
    from engine.packs import ContentWarning

    for problem in problems:
        what = "pack content" if isinstance(problem, ContentWarning) else "pack content skipped"
        err.print(f"[yellow]warning:[/yellow] {what}: {escape(printable(str(problem)))}", markup=True,
                  highlight=False)


def problem_document(problem: ContentError) -> dict[str, Any]:
    """A load problem as JSON: `file`, `line` (null when unknown) and `reason`."""
    return {"file": problem.file, "line": problem.line, "reason": problem.reason}


#: The most rows a listing's `-n/--limit` takes (`execution list`, `trigger-instance list`, `rule-enforcement
#: list`): a number past SQLite's 64-bit integers ended in the database driver's OverflowError traceback.
MAX_LISTED = 1_000_000
#: How deep a JSON option (`--payload`, `--response`, a trigger instance file) may nest objects and arrays:
#: the HTTP API's limit, `bot.http.json_body.MAX_JSON_DEPTH`, kept here because importing `bot.http` brings
#: FastAPI, a third of a second of every command that parses JSON (tests/test_cli_errors.py keeps them equal).
MAX_JSON_DEPTH = 64


def json_value(text: str, what: str) -> Any:
    """`text` decoded as JSON for `what` (an option or a file, as the user names it), nested at most
    `MAX_JSON_DEPTH` levels as the HTTP API takes it: deeper is one line and exit 2 (2000 levels was a
    RecursionError traceback). Text that is not JSON raises `ValueError`, which the caller words."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise too_deep(what, None) from None
    check_depth(value, what)
    return value


def check_depth(value: Any, what: str) -> None:
    """Exit 2 when `value` (decoded JSON or YAML) nests objects and arrays more than `MAX_JSON_DEPTH` levels."""
    depth = _nesting(value)
    if depth > MAX_JSON_DEPTH:
        raise too_deep(what, depth)


def too_deep(what: str, depth: int | None) -> typer.Exit:
    """The one line for a document nested too deep (`depth` None: too deep to be read at all)."""
    levels = f"{depth} levels deep" if depth is not None else f"more than {MAX_JSON_DEPTH} levels deep"
    return fail(f"{what} nests objects and arrays {levels}; the limit is {MAX_JSON_DEPTH} levels (as the HTTP "
                "API's): give a flatter document")


def _nesting(value: Any) -> int:
    """How deep `value`'s dicts and lists nest (`{"a": [1]}` is 2, as `bot.http.json_body` counts), without
    recursion: the value may be nearly as deep as the parser's own recursion allowed."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_assignments(items: list[str]) -> dict[str, str]:
    """`name=value` arguments as a dict; anything else exits 2 with a hint about quoting."""
    params: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise fail(f"expected name=value, got {item!r} (quote values with spaces: msg='hello world')")
        params[name.strip()] = value
    return params


def print_json(document: Any) -> None:
    """The one JSON document a `--json` command prints (dates and other objects as strings)."""
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
