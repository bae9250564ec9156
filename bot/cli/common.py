"""What every `squall` command shares: the root app, the consoles, config, errors as exits, packs.

Exit codes are a contract: 0 success, 1 the action failed (or timed out), 2 bad input. Every
read command takes `--json` and then prints exactly one JSON document on stdout.

This module and every command group are imported for any command, `squall --help` included, so
they import only typer and rich's console at the top: the engine, the database layer, the chat side
and rich's tables are imported inside the functions that use them (see `bench/cli.py` for what that
buys).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from rich.table import Table

    from bot.app import Squall
    from engine.config import Config
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
    at the first listing: `squall serve` and most commands print none (~17 ms of every start)."""
    from rich.table import Table

    return Table(*headers)


def add_row(table: Table, *cells: object) -> None:
    """Add a listing's row with every cell shown as written. rich reads a cell as markup, and cells hold
    names, values and descriptions from users and packs: a `[/x]` in one crashed the listing, a
    `[a-z0-9_]` vanished. A cell that is already a rich `Text` (a styled error) is added as it is; None is
    an empty cell, as rich shows it."""
    from rich.text import Text

    table.add_row(*(cell if isinstance(cell, Text) else "" if cell is None else escape(str(cell)) for cell in cells))

T = TypeVar("T")

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


class _State:
    config_path: str | None = None
    #: `-v`: the long-running commands (serve, worker) then log at debug.
    verbose = False


@app.callback()
def _main(
    config: Annotated[str | None, typer.Option("-c", "--config", help="Config file (default ./config.yml, "
                                                "or $SQUALL_CONFIG).")] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Log what Squall does.")] = False,
) -> None:
    _State.config_path = config
    _State.verbose = verbose
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def log_level() -> str | None:
    """The level `-v` asks the long-running commands for (debug), or None: config `logging.level` decides."""
    return "debug" if _State.verbose else None


def fail(message: str, code: int = 2) -> typer.Exit:
    """Say what is wrong on stderr; the caller raises the returned exit (2: bad input). The message is
    escaped: it quotes what was given (a path, a URL, a pattern), and rich would read `[...]` as markup."""
    err.print(f"[red]error:[/red] {escape(message)}", markup=True, highlight=False)
    return typer.Exit(code)


def current_config() -> Config:
    """The config named by `-c`, `$SQUALL_CONFIG` or ./config.yml; a bad one exits 2 saying why."""
    from engine.config import ConfigError, load_config

    try:
        return load_config(_State.config_path)
    except ConfigError as exc:
        raise fail(str(exc)) from exc


def current_user() -> str:
    """Who runs the command: recorded on executions, owner of user-scoped keys, inquiry answers."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "squall"


def with_app(work: Callable[[Squall], Awaitable[T]], *, recover: bool = False) -> T:
    """Run `work` against a started Squall, turning known errors into clear exits.

    Starting Squall loads the packs and warns about each file that did not load (the assembly
    logs them at start, on stderr), so commands run through here need no warning of their own."""
    import asyncio

    from bot.app import Squall
    from engine.crypto import CryptoError
    from engine.executions import ExecutionNotFound, ExecutionStateError
    from engine.packs import UnknownAction
    from engine.parameters import ParameterError

    config = current_config()
    one_shot()

    async def main() -> T:
        squall = await Squall.start(config, recover=recover)
        try:
            return await work(squall)
        finally:
            await squall.close()

    try:
        return asyncio.run(main())
    except (UnknownAction, ParameterError, ExecutionNotFound, ExecutionStateError, CryptoError) as exc:
        raise fail(str(exc)) from exc


def one_shot() -> None:
    """This process is a command, not the service: no stdout audit sink (`engine.audit_sinks`), since
    its standard output is its answer (one JSON document with `--json`; an action's result in chat)."""
    from engine.audit_sinks import leave_out_stdout

    leave_out_stdout()


def with_store(work: Callable[[Store, Config], T]) -> T:
    """Run `work` on the database alone, for commands whose rows nothing else reacts to (reading
    keys, API keys): no packs, runners or chat side are loaded, which is most of a command's time."""
    from engine.crypto import CryptoError
    from engine.storage import Store

    config = current_config()
    store = Store.open(config.database_url)
    try:
        return work(store, config)
    except CryptoError as exc:
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


def record_audit(store: Store, event: str, target: str | None, detail: dict[str, Any]) -> None:
    """Store one audit event of this command, as whoever it acts for (`acting_for`); on the database
    thread (`await squall.db(record_audit, squall.store, ...)`) or a store of `with_store`."""
    actor, source, more = acting_for(store)
    store.audit_add(event, actor, source, target, {**detail, **more})


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

    registry = load_registry_cached(config.pack_paths, config.configs_path, SYSTEM_PACKS_PATH,
                                    config.data_dir / "cache")
    if warn:
        warn_problems(registry.errors)
    return registry


def warn_problems(problems: Iterable[ContentError]) -> None:
    """One stderr line per pack file that did not load: file, line where known, reason."""
    for problem in problems:
        err.print(f"[yellow]warning:[/yellow] pack content skipped: {escape(str(problem))}", markup=True,
                  highlight=False)


def problem_document(problem: ContentError) -> dict[str, Any]:
    """A load problem as JSON: `file`, `line` (null when unknown) and `reason`."""
    return {"file": problem.file, "line": problem.line, "reason": problem.reason}


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
