"""`squall action list | get`: the actions of the packs, read from the pack folders.

Neither starts Squall: they load the packs only (no database, runners or chat), and warn on
stderr about each pack file that did not load. A pack's texts (descriptions, defaults) are printed as
written: rich would read a `[...]` in them as markup. The credentials in defaults are masked as the API
masks them (`_shown`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from bot.cli.common import (
    JsonOption,
    add_row,
    current_config,
    fail,
    group,
    load_packs,
    new_table,
    out,
    print_json,
    shown_text,
)

if TYPE_CHECKING:
    from engine.actions import Action

action_app = group("List and show actions.")


def _shown(action: Action) -> dict[str, Any]:
    """The action's summary with its parameters' defaults masked as the API shows them (`shown_parameters`:
    a secret's, a credential header's, a cookie's, a URL's password): what these commands print is
    pasted into tickets and chat, where the pack files' readers are not the only readers."""
    from engine.parameters import shown_parameters

    return {**action.summary(), "parameters": shown_parameters(action.parameters)}


@action_app.command("list")
def action_list(pack: Annotated[str | None, typer.Option("--pack", help="Only this pack.")] = None,
                as_json: JsonOption = False) -> None:
    """Actions of the loaded packs."""
    registry = load_packs(current_config())
    actions = [a for a in registry.actions.values() if pack in (None, a.pack)]
    actions.sort(key=lambda a: a.ref)
    if pack and pack not in registry.packs:
        raise fail(f"pack '{pack}' is not loaded; loaded packs: {', '.join(sorted(registry.packs))}")
    if as_json:
        print_json([_shown(a) for a in actions])
        return
    from bot.forms import short

    table = new_table("ref", "runner", "description")
    for a in actions:  # the description on one short line, as `pack list`'s (`--json` has it whole)
        add_row(table, a.ref, a.runner_type, short(a.description or ""))
    out.print(table)


@action_app.command("get")
def action_get(ref: Annotated[str, typer.Argument(help="Action ref.")], as_json: JsonOption = False) -> None:
    """One action with its merged parameter schema."""
    from engine.packs import UnknownAction
    from engine.parameters import shown_parameters

    registry = load_packs(current_config())
    try:
        action = registry.action(ref)
    except UnknownAction as exc:
        raise fail(str(exc)) from exc
    if as_json:
        print_json(_shown(action))
        return
    # The pack's words as a terminal may be given them (`shown_text`): an ESC sequence in them is shown, not run.
    out.print(f"[bold]{escape(action.ref)}[/bold] ({escape(action.runner_type)}) "
              f"{escape(shown_text(action.description or ''))}")
    table = new_table("parameter", "type", "required", "default", "description")
    for name, spec in sorted(shown_parameters(action.parameters).items()):
        default = spec.get("default")
        flags = "yes" if spec.get("required") else ""
        add_row(table, name, spec.get("type", ""), flags, "" if default is None else json.dumps(default),
                spec.get("description", ""))
    out.print(table)
