"""`squall apikey create | list | delete`: keys for the HTTP API, stored as SHA-256 hashes.

`create` prints the key once; nothing can show it again. It takes the key's name as an argument
(`squall apikey create ci-bot`, as `user create` takes one) or with `-n/--name`.
`delete` also ends the login tokens (`st2 login`) obtained with the key: a token records its key and works
only while that key does. Keys from config `api.keys` and `$SQUALL_API_KEYS` work too but are not listed here
(they live outside the database).
These commands touch the `api_keys` table only, so they open the database without starting Squall.
`create` and `delete` are audited (`cli.apikey.create`, `cli.apikey.delete`) with the key's id and name, the
event stored with the change in one transaction.
A key's name is printed as written: rich would read a `[...]` in it as markup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from bot.cli.common import (
    JsonOption,
    add_row,
    changed_and_audited,
    fail,
    group,
    new_table,
    out,
    print_json,
    shown_time,
    with_store,
)

if TYPE_CHECKING:
    from engine.config import Config
    from engine.storage import Store

apikey_app = group("Create, list and delete API keys for the HTTP API.")


@apikey_app.command("create")
def apikey_create(named: Annotated[str | None, typer.Argument(metavar="NAME", show_default=False,
                                                              help="What the key is for (or --name).")] = None,
                  name: Annotated[str | None, typer.Option("--name", "-n", help="What the key is for.")] = None,
                  as_json: JsonOption = False) -> None:
    """Make a key and print it (once: only its hash is stored)."""
    from bot.apikeys import create_key

    name = _one_name(named, name)

    def work(store: Store, _config: Config) -> tuple[str, dict[str, Any]]:
        return create_key(store, name)

    # The id and name, never the key; stored with it, one transaction.
    key, record = changed_and_audited(work, "cli.apikey.create", lambda made: (made[1]["id"], {"name": name}))
    if as_json:
        print_json({**record, "key": key})
    else:
        out.print(f"API key {record['id']}" + (f" ({name})" if name else "") + ":", markup=False)
        out.print(key, markup=False)
        out.print("Keep it now: it cannot be shown again.")


def _one_name(argument: str | None, option: str | None) -> str | None:
    """The key's name, given as `apikey create NAME` (as `user create NAME` takes one) or with `-n/--name`
    (what scripts have used); two different names are refused rather than one silently dropped."""
    from engine.datastore import lone_surrogate, not_utf8

    if argument is not None and option is not None and argument != option:
        raise fail(f"two names given: {argument!r} and --name {option!r}; give one")
    name = argument if argument is not None else option
    if name is not None and (at := lone_surrogate(name)) is not None:  # a byte not UTF-8: no column stores it
        raise fail(not_utf8("the API key's name", at))
    return name


@apikey_app.command("list")
def apikey_list(as_json: JsonOption = False) -> None:
    """The stored keys (ids and names; never the keys)."""
    from bot.apikeys import public_key

    def work(store: Store, _config: Config) -> list[dict[str, Any]]:
        return [public_key(r) for r in store.api_key_list()]

    keys = with_store(work)
    if as_json:
        print_json(keys)
        return
    table = new_table("id", "name", "created (UTC)", "enabled")
    for key in keys:  # the ISO time (27 characters) was cut short in 80 columns
        add_row(table, key["id"], key["name"] or "", shown_time(key["created_at"]), "yes" if key["enabled"] else "no")
    out.print(table)


@apikey_app.command("delete")
def apikey_delete(key_id: Annotated[str, typer.Argument(help="Key id (from `squall apikey list`).")]) -> None:
    """Delete a key; requests with it, and with the login tokens obtained with it, are refused from now on."""

    def work(store: Store, _config: Config) -> dict[str, Any] | None:
        found = next((r for r in store.api_key_list() if r["id"] == key_id), None)
        return found if found is not None and store.api_key_delete(key_id) else None

    deleted = changed_and_audited(work, "cli.apikey.delete",
                                  lambda found: None if found is None else (key_id, {"name": found["name"]}))
    if deleted is None:
        raise fail(f"no API key with id {key_id} (see `squall apikey list`)")
    out.print(f"deleted API key {key_id}", markup=False)
