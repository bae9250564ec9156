"""`squall apikey create | list | delete`: keys for the HTTP API, stored as SHA-256 hashes.

`create` prints the key once; nothing can show it again. Keys from config `api.keys` and
`$SQUALL_API_KEYS` work too but are not listed here (they live outside the database).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from bot.apikeys import create_key, public_key
from bot.app import Squall
from bot.cli import JsonOption, app, fail, out, print_json, with_app

apikey_app = typer.Typer(help="Create, list and delete API keys for the HTTP API.", no_args_is_help=True)
app.add_typer(apikey_app, name="apikey")


@apikey_app.command("create")
def apikey_create(name: Annotated[str | None, typer.Option("--name", "-n", help="What the key is for.")] = None,
                  as_json: JsonOption = False) -> None:
    """Make a key and print it (once: only its hash is stored)."""

    async def work(squall: Squall) -> tuple[str, dict[str, Any]]:
        return await squall.db(create_key, squall.store, name)

    key, record = with_app(work)
    if as_json:
        print_json({**record, "key": key})
    else:
        out.print(f"API key {record['id']}" + (f" ({name})" if name else "") + ":")
        out.print(key)
        out.print("Keep it now: it cannot be shown again.")


@apikey_app.command("list")
def apikey_list(as_json: JsonOption = False) -> None:
    """The stored keys (ids and names; never the keys)."""

    async def work(squall: Squall) -> list[dict[str, Any]]:
        return [public_key(r) for r in await squall.db(squall.store.api_key_list)]

    keys = with_app(work)
    if as_json:
        print_json(keys)
        return
    table = Table("id", "name", "created", "enabled")
    for key in keys:
        table.add_row(key["id"], key["name"] or "", key["created_at"] or "", "yes" if key["enabled"] else "no")
    out.print(table)


@apikey_app.command("delete")
def apikey_delete(key_id: Annotated[str, typer.Argument(help="Key id (from `squall apikey list`).")]) -> None:
    """Delete a key; requests with it are refused from now on."""

    async def work(squall: Squall) -> bool:
        return await squall.db(squall.store.api_key_delete, key_id)

    if not with_app(work):
        raise fail(f"no API key with id {key_id} (see `squall apikey list`)")
    out.print(f"deleted API key {key_id}")
