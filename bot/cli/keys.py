"""`squall key set | get | list | delete | load | rotate`: the datastore from the shell (spec §8).

Encrypted values print as `********` unless `--decrypt` is given, in tables and JSON alike.
Reads (`get`, `list`) open the database alone; writes start Squall, because a rule on
`core.st2.key_value_pair.*` may have to fire. A write is stored with its audit event (`cli.key.set`,
`cli.key.delete`), in one transaction; `load` stores every item and its `cli.key.load` in one. A stop signal
(Ctrl-C) is told the truth of that transaction (`_written`): committed, the command says what it did (exit 0);
not, it says `interrupted` (130) and nothing was written.

Names, values, users and errors are printed as written: rich would read a `[...]` in them as markup.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.markup import escape

from bot.cli.common import (
    JsonOption,
    add_row,
    audit_entry,
    carried_through,
    current_config,
    current_user,
    err,
    fail,
    group,
    new_table,
    out,
    print_json,
    shown_text,
    shown_time,
    stop_flag,
    with_app,
    with_store,
)

if TYPE_CHECKING:
    import asyncio

    from bot.app import Squall
    from engine.config import Config
    from engine.datastore import Datastore
    from engine.executions import AuditEntry
    from engine.storage import Store

key_app = group("Read and write the key-value datastore.")
T = TypeVar("T")

ScopeOption = Annotated[str, typer.Option("--scope", "-s", help="system or user.")]
UserOption = Annotated[str | None, typer.Option("--user", "-u", help="Owner of a user-scoped key "
                                                "(default: you).")]
DecryptOption = Annotated[bool, typer.Option("--decrypt", "-d", help="Show encrypted values in clear.")]


def _shown(item: dict[str, Any], decrypt: bool) -> dict[str, Any]:
    """The item as printed: a secret's value masked unless `--decrypt` (or it could not be read)."""
    if item["secret"] and not decrypt and item.get("error") is None:
        from engine.parameters import MASK

        return {**item, "value": MASK}
    return item


def _owner(scope: str, user: str | None) -> str | None:
    return (user or current_user()) if scope.removeprefix("st2kv.") == "user" else user


def _datastore_call(work: Any) -> Any:
    """Run a datastore write. A rule on `core.st2.key_value_pair.*` fires here as the write
    commits; the execution it asks for is stored as requested, and `squall serve` runs it."""
    from engine.datastore import DatastoreError

    async def queued(squall: Squall) -> Any:
        squall.executions.executor = None
        outcome = await work(squall)
        await carried_through(squall.emitted())  # stored: a stop now must not say `interrupted`
        return outcome

    try:
        return with_app(queued)
    except DatastoreError as exc:
        raise fail(str(exc)) from exc


def _sealing(squall: Squall, encrypt: bool) -> contextlib.AbstractContextManager[None]:
    """Held around a write that seals its value, until the awaited database call has committed it
    (`KeyRing.sealing`): a `squall key rotate` running meanwhile waits for it before it reads the secrets,
    rather than retire the key the value was sealed under just after it was stored. A plain write holds
    nothing."""
    return squall.keys.sealing() if encrypt else contextlib.nullcontext()


def _datastore_read(work: Callable[[Datastore], T]) -> T:
    """Run a datastore read on the database alone: reads fire no trigger, so no packs, rules or
    runners need loading (most of what `squall key get` cost when it started Squall)."""
    from engine.crypto import KeyRing
    from engine.datastore import Datastore, DatastoreError

    def read(store: Store, config: Config) -> T:
        return work(Datastore(store, KeyRing(config.encryption_key_path)))

    try:
        return with_store(read)
    except DatastoreError as exc:
        raise fail(str(exc)) from exc


@key_app.command("set")
def key_set(
    name: Annotated[str, typer.Argument(help="Key name.")],
    value: Annotated[str, typer.Argument(help="Value (stored as a string).")],
    encrypt: Annotated[bool, typer.Option("--encrypt", "-e", help="Encrypt the value at rest.")] = False,
    ttl: Annotated[int | None, typer.Option("--ttl", "-l", help="Expire after this many seconds.")] = None,
    scope: ScopeOption = "system",
    user: UserOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create or replace a key."""
    if ttl is not None and ttl <= 0:  # StackStorm's API reads 0 as "no expiry"; here, leaving --ttl out says so
        raise fail(f"--ttl must be a positive number of seconds, not {ttl}; leave --ttl out for a key that "
                   "never expires")

    async def work(squall: Squall) -> dict[str, Any]:
        # Stored with the key, one transaction: its detail gains the scope, the user and whether it is a secret.
        audit = await squall.db(audit_entry, squall.store, "cli.key.set", {"ttl": ttl})
        with _sealing(squall, encrypt):
            return await _written(squall.db.submit(_unless_stopped, stop_flag(), squall.datastore.set, name, value,
                                                   scope=scope, user=_owner(scope, user), encrypt=encrypt, ttl=ttl,
                                                   audit=audit))

    item = _datastore_call(work)
    if as_json:
        print_json(_shown(item, False))
    else:
        out.print(f"set {item['scope']} key {item['name']}" + (" (encrypted)" if item["secret"] else "")
                  + (f", expires {item['expire_timestamp']}" if item["expire_timestamp"] else ""), markup=False)


@key_app.command("get")
def key_get(name: Annotated[str, typer.Argument(help="Key name.")], decrypt: DecryptOption = False,
            scope: ScopeOption = "system", user: UserOption = None, as_json: JsonOption = False) -> None:
    """Show one key; exit 2 if it does not exist (or has expired)."""

    item = _datastore_read(lambda datastore: datastore.get(name, scope=scope, user=_owner(scope, user),
                                                           decrypt=decrypt))
    if item is None:
        raise fail(f"key '{name}' does not exist in scope {scope}")
    item = _shown(item, decrypt)
    if as_json:
        print_json(item)
    elif out.is_terminal:  # control characters escaped for a person (`shown_text`); a script reads them as stored
        out.print(shown_text(item["value"]), markup=False, highlight=False)
    else:
        out.print(item["value"], markup=False, highlight=False)


@key_app.command("list")
def key_list(prefix: Annotated[str | None, typer.Option("--prefix", "-p", help="Only names starting so.")] = None,
             decrypt: DecryptOption = False, scope: ScopeOption = "system", user: UserOption = None,
             as_json: JsonOption = False) -> None:
    """List keys, sorted by name."""

    found = _datastore_read(lambda datastore: datastore.list(prefix=prefix, scope=scope, user=_owner(scope, user),
                                                             decrypt=decrypt))
    items = [_shown(item, decrypt) for item in found]
    if as_json:
        print_json(items)
        return
    from rich.text import Text

    table = new_table("name", "value", "scope", "user", "expires (UTC)")
    for item in items:
        value = item["value"] if item.get("error") is None else Text(str(item["error"]), style="red")
        add_row(table, item["name"], value, item["scope"], item["user"] or "", shown_time(item["expire_timestamp"]))
    out.print(table)
    for item in items:
        if item.get("error"):
            err.print(f"[red]error:[/red] key {escape(shown_text(item['name']))}: "
                      f"{escape(shown_text(str(item['error'])))}", markup=True, highlight=False)


@key_app.command("delete")
def key_delete(name: Annotated[str, typer.Argument(help="Key name.")], scope: ScopeOption = "system",
               user: UserOption = None) -> None:
    """Delete a key; exit 2 if it does not exist."""

    async def work(squall: Squall) -> bool:
        # Stored with the deletion, one transaction, if a key was deleted: its detail gains the scope.
        audit = await squall.db(audit_entry, squall.store, "cli.key.delete", {})
        return await _written(squall.db.submit(_unless_stopped, stop_flag(), squall.datastore.delete, name,
                                               scope=scope, user=_owner(scope, user), audit=audit))

    if not _datastore_call(work):
        raise fail(f"key '{name}' does not exist in scope {scope}")
    out.print(f"deleted {name}", markup=False)


#: `expire_timestamp` is in what `key list --json` exports; it is read and left aside, as `st2 key load` does.
_LOAD_FIELDS = {"name", "value", "secret", "encrypted", "scope", "user", "ttl", "description", "expire_timestamp"}


def _load_items(path: Path, convert: bool) -> list[dict[str, Any]]:
    """Read and check every item first, so a bad item means nothing is written."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise fail(f"cannot read {path}: {exc}") from exc
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise fail(f"{path} must hold a list of {{name, value, ...}} items")
    items = []
    for index, item in enumerate(data):
        where = f"{path} item {index + 1}"
        if not isinstance(item, dict) or "name" not in item or "value" not in item:
            raise fail(f"{where}: each item needs 'name' and 'value'")
        unknown = set(item) - _LOAD_FIELDS
        if unknown:
            raise fail(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; allowed: "
                       f"{', '.join(sorted(_LOAD_FIELDS))}")
        value = item["value"]
        if not isinstance(value, str):
            _refuse_unjsonable(where, item["name"], value)
            if not convert:
                raise fail(f"{where} ('{item['name']}'): value is a {type(value).__name__}, not a string; "
                           "use --convert to store it as JSON")
            value = json.dumps(value)
        _check_item(where, item)
        if item.get("encrypted") or item.get("secret"):
            _refuse_masked(where, item["name"], value)
        items.append({**item, "value": value, "where": where})
    return items


#: What YAML may hand `key load` that JSON holds as it is (a dict's keys are written as text by json.dumps).
_JSON_SCALARS = (str, int, float, bool, type(None))


def _unjsonable(value: Any, at: str, path: tuple[int, ...] = ()) -> tuple[str, Any] | None:
    """The first place in `value` (`at`: "value", "value.when", "value[1]") JSON cannot hold, with what is
    there, or None. A list or mapping that holds itself (a YAML alias inside its own anchor) is `...`."""
    if isinstance(value, _JSON_SCALARS):
        return None
    if id(value) in path:
        return at, ...
    if isinstance(value, list):
        children = [(f"{at}[{n}]", entry) for n, entry in enumerate(value)]
    elif isinstance(value, dict):
        bad_key = next((key for key in value if not isinstance(key, _JSON_SCALARS)), None)
        if bad_key is not None:
            return f"the key {bad_key} in {at}", bad_key
        children = [(f"{at}.{key}", entry) for key, entry in value.items()]
    else:
        return at, value
    inside = (*path, id(value))
    return next((found for where, entry in children if (found := _unjsonable(entry, where, inside))), None)


def _refuse_unjsonable(where: str, name: Any, value: Any) -> None:
    """Refuse a value neither stored as text nor as JSON (`--convert`): a YAML date (`2024-01-01` unquoted),
    `!!binary` bytes, a list that holds itself. `--convert` was a TypeError traceback for them, and the
    refusal without it advised `--convert`; this names where the value is and what to write instead."""
    import datetime

    problem = _unjsonable(value, "value")
    if problem is None:
        return
    at, bad = problem
    if bad is ...:
        said = (f"{at} refers back to what holds it (a YAML alias inside its own anchor), which JSON cannot "
                "hold; write the value out without that alias")
    elif isinstance(bad, (datetime.date, datetime.datetime)):
        said = f"{at} is a YAML date ({bad}), which JSON cannot hold; quote it ('{bad}') to store it as text"
    elif isinstance(bad, bytes):
        said = (f"{at} is binary data (!!binary), which JSON cannot hold; give it as a quoted string (its base64 "
                "text, say) to store it as text")
    else:
        said = f"{at} is a {type(bad).__name__}, which JSON cannot hold; give it as a quoted string"
    raise fail(f"{where} ('{name}'): {said}")


def _check_item(where: str, item: dict[str, Any]) -> None:
    """Everything `Datastore.set` would refuse (scope, name and its stored length, user, ttl), and the
    types of the flags, checked while reading: a bad scope or `ttl: soon` in item 2 once left item 1
    written, or ended in a traceback."""
    from engine.datastore import DatastoreError, check_key, normalise_scope, st2_ttl

    try:
        scope = normalise_scope(item.get("scope"))
        check_key(item["name"], scope=scope, user=_owner(scope, item.get("user")), ttl=st2_ttl(item.get("ttl")))
    except DatastoreError as exc:
        raise fail(f"{where} ('{item['name']}'): {exc}") from None
    for flag in ("secret", "encrypted"):
        if not isinstance(item.get(flag, False), bool):
            raise fail(f"{where} ('{item['name']}'): {flag} must be true or false, not {item[flag]!r}")
    if not isinstance(item.get("description") or "", str):
        raise fail(f"{where} ('{item['name']}'): description must be a string, not {item['description']!r}")


def _refuse_masked(where: str, name: str, value: str) -> None:
    """Refuse a secret whose value is the mask (`key list --json` without `--decrypt` exports it): loaded,
    it would replace the secret with eight asterisks. Checked while reading, so nothing is written."""
    from engine.parameters import MASK

    if value == MASK:
        raise fail(f"{where} ('{name}'): the value {MASK!r} is the mask shown in place of a secret, not the "
                   "secret; export with the values (squall key list --decrypt --json, or st2 key list "
                   "--decrypt -j) and load that: items with secret: true are encrypted again")


class _WriteStopped(Exception):
    """A stop signal came before a key write was stored (`_unless_stopped`, `_stored_together`): nothing of it
    is, and the command is stopped (`_written`)."""


def _unless_stopped(stopping: threading.Event, write: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`write(*args, **kwargs)` (`Datastore.set`, `delete`: one change and its audit event) in its database call,
    unless `stopping` (`stop_flag`) was set before it began (`_WriteStopped`). The command's cancel does not reach
    a queued call: a Ctrl-C while `key set` waited for it stored the key, and said `interrupted`."""
    if stopping.is_set():
        raise _WriteStopped
    return write(*args, **kwargs)


def _stored_together(datastore: Datastore, items: list[tuple[dict[str, Any], dict[str, Any]]], audit: AuditEntry,
                     about: str, stopping: threading.Event) -> None:
    """`key load`'s items (each with its `Datastore.set` arguments), then its `audit` event about `about`
    (the file), in one database call and one savepoint (`Store.isolated`: any failure undoes them all, not
    only its own statement): all of them and the event, or nothing. Each item in a commit of its own and
    the event in another, a failure (a full disk) left some keys loaded, none audited, and a command that
    said it failed.

    `stopping` (`stop_flag`: Ctrl-C, SIGTERM) is checked before each item and before the event, and undoes
    them all (`_WriteStopped`): the command's cancel cannot reach this call, so a Ctrl-C at the first
    progress line let every key of a wrong file overwrite the right ones, audited, with `interrupted` said."""
    with datastore.store.isolated():
        for number, (item, arguments) in enumerate(items, 1):
            if stopping.is_set():
                raise _WriteStopped
            datastore.set(item["name"], item["value"], **arguments, description=item.get("description"))
            if number % 500 == 0:
                err.print(f"[dim]…[/dim] {number}/{len(items)}", markup=True)
        if stopping.is_set():
            raise _WriteStopped
        audit.add(datastore.store, about)


async def _written(write: asyncio.Future[T]) -> T:
    """The outcome of a key write (`_unless_stopped`; `key load`'s `_stored_together`), once it ended, whatever
    the command is told meanwhile. A stop signal that cancels the command while the write is queued or runs on
    the database thread waits for it: rolled back or refused, the stop goes on (`interrupted`, 130); committed
    first (the signal came just after), the write is done and said so. One that stopped the write before the
    loop could cancel the command (the write held the loop: SQLite's groups) waits for that cancel, which the
    signal has already asked for."""
    import asyncio

    try:
        await asyncio.wait([write])
    except asyncio.CancelledError:
        await asyncio.wait([write])
        if write.exception() is not None:
            raise
        return write.result()
    if isinstance(write.exception(), _WriteStopped):
        await asyncio.get_running_loop().create_future()  # never done: the stop's cancel ends it
    return write.result()


@key_app.command("load")
def key_load(file: Annotated[Path, typer.Argument(help="JSON or YAML list of {name, value, secret, scope, "
                                                        "user, ttl, description}.")],
             convert: Annotated[bool, typer.Option("--convert", "-c", help="Store non-string values as "
                                                   "JSON.")] = False) -> None:
    """Load many keys from a file (as `st2 key load`), in one transaction; nothing is written if any item is
    bad. An item
    with `encrypted: true` holds ciphertext under this server's key (a `--json` export of `st2 key list`
    from it, as StackStorm's API takes it): it must decrypt here, and is stored as given."""
    from engine.datastore import DatastoreError, st2_ttl

    items = _load_items(file, convert)

    def arguments(item: dict[str, Any]) -> dict[str, Any]:
        scope = item.get("scope") or "system"
        encrypted = bool(item.get("encrypted"))  # a ttl of 0 never expires, as `st2 key load` through the API
        return {"scope": scope, "user": _owner(scope, item.get("user")), "ttl": st2_ttl(item.get("ttl")),
                "encrypt": bool(item.get("secret")) and not encrypted, "encrypted": encrypted}

    async def work(squall: Squall) -> int:
        for item in items:  # every ciphertext, and every mask over a stored secret, before anything is written
            try:
                await squall.db(squall.datastore.check_write, item["name"], item["value"], **arguments(item),
                                description=item.get("description"))
            except DatastoreError as exc:
                raise DatastoreError(f"{item['where']}: {exc}") from None
        audit = await squall.db(audit_entry, squall.store, "cli.key.load",
                                {"count": len(items), "scopes": sorted({arguments(item)["scope"] for item in items})})
        with _sealing(squall, any(arguments(item)["encrypt"] for item in items)):
            await _written(squall.db.submit(
                _stored_together, squall.datastore, [(item, arguments(item)) for item in items], audit, str(file),
                stop_flag()))
        return len(items)

    count = _datastore_call(work)
    out.print(f"loaded {count} keys from {file}", markup=False)


@key_app.command("rotate")
def key_rotate() -> None:
    """Re-encrypt every secret under a new key; the old keys are dropped only when all succeeded and no
    other Squall process (`squall serve`, a worker) uses the database: run it again once they are stopped.
    One rotation at a time: another one under way makes this one stop at once, saying so."""

    from engine.crypto import KeyRing, RotationUnderWay
    from engine.datastore import rotate_key_through

    async def work(squall: Squall) -> Any:
        def progress(message: str) -> None:
            err.print(f"[dim]…[/dim] {escape(message)}", markup=True, highlight=False)

        # Its event is stored with its first pass over the secrets, before any key is retired (`_rotation`).
        audit = await squall.db(audit_entry, squall.store, "cli.key.rotate", {})
        return await rotate_key_through(squall.db, squall.store, squall.keys, progress,
                                        others=squall.other_processes, audit=audit)

    try:
        # Taken before Squall starts, so that a second rotation is refused at once; the rotation itself
        # takes it again (this process holds it).
        with KeyRing(current_config().encryption_key_path).rotating():
            report = _datastore_call(work)
    except RotationUnderWay as exc:
        raise fail(str(exc)) from exc
    for problem in report.unreadable:
        err.print(f"[red]unreadable:[/red] {escape(str(problem))}", markup=True, highlight=False)
    done = f"re-encrypted {report.reencrypted} secrets under key {report.key_id}"
    if report.unreadable:
        out.print(f"{done}; {len(report.unreadable)} could not be read and the old keys were kept for them",
                  markup=False)
        raise typer.Exit(1)
    if report.changed:
        out.print(f"{done}; {report.changed} kept changing while they were re-encrypted, so the old keys were "
                  "kept for them: run squall key rotate again", markup=False)
        raise typer.Exit(1)
    if report.in_use_by:
        out.print(f"{done}; kept the old keys: {', '.join(report.in_use_by)} use(s) this database and may hold "
                  "secrets sealed under them. Every secret reads as before; to retire the old keys, run "
                  "squall key rotate again while no squall serve or worker runs", markup=False)
        return
    out.print(f"{done}; retired {report.retired} old key(s)", markup=False)
