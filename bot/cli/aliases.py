"""`squall alias list | match`: the loaded action aliases and what a chat message would run (spec §2).

`squall alias match TEXT --json` prints `{"alias": "<pack>.<name>", "format": "<representation>",
"parameters": {...}}` and exits 0; a `match_multiple` format that fits several times prints a list of
such objects. No match exits 1 with suggestions on stderr, an ambiguity exits 1 listing the candidates
(with `--json`, stdout then holds `{"error", "suggestions"}` or `{"error", "candidates"}`).

The message, formats and descriptions are printed as written: rich would read a `[...]` in them as markup.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from bot.cli.common import (
    JsonOption,
    add_row,
    current_config,
    err,
    group,
    load_packs,
    new_table,
    out,
    print_json,
    warn_problems,
)

if TYPE_CHECKING:
    from aliases.model import Alias
    from engine.yamlfile import ContentError

alias_app = group("List action aliases and try chat messages against them.")


def _load() -> tuple[list[Alias], list[ContentError]]:
    """The aliases and their problems; other pack files that did not load are warned about here."""
    from aliases import load_aliases

    registry = load_packs(current_config(), warn=False)
    aliases, errors = load_aliases(registry)
    # YAML errors in alias files are found while loading packs; show them with the alias errors.
    file_errors = [e for e in registry.errors if Path(e.file).parent.name == "aliases"]
    warn_problems(e for e in registry.errors if Path(e.file).parent.name != "aliases")
    return aliases, file_errors + errors


def _warn(errors: list[ContentError]) -> None:
    for error in errors:
        err.print(f"[yellow]alias skipped:[/yellow] {escape(str(error))}", markup=True, highlight=False)


@alias_app.command("list")
def alias_list(as_json: JsonOption = False) -> None:
    """Loaded aliases: ref, action, formats, description, enabled (load errors go to stderr)."""
    aliases, errors = _load()
    _warn(errors)
    if as_json:
        print_json([a.summary() for a in aliases])
        return
    from bot.forms import short

    table = new_table("ref", "action", "enabled", "formats", "description")
    for alias in aliases:  # the description on one short line, as `pack list`'s (`--json` has it whole)
        formats = "\n".join(rep for f in alias.formats for rep in (f.representations or [f"({f.display})"]))
        add_row(table, alias.ref, alias.action_ref, "yes" if alias.enabled else "no", formats,
                short(alias.description or ""))
    out.print(table)


def _line(document: dict[str, Any]) -> str:
    params = " ".join(f"{k}={json.dumps(v)}" for k, v in document["parameters"].items())
    return f"{document['alias']}  format: {document['format']}" + (f"  parameters: {params}" if params else "")


@alias_app.command("match")
def alias_match(text: Annotated[str, typer.Argument(help="A chat message, without the bot prefix.")],
                as_json: JsonOption = False) -> None:
    """Which alias and format a message selects, and the parameters it extracts (before casting)."""
    from aliases import AliasMatcher, AmbiguousCommand, CommandTooComplex, NoMatch

    aliases, errors = _load()
    _warn(errors)
    matcher = AliasMatcher(aliases)
    try:
        matches = matcher.match_all(text)
    except CommandTooComplex as exc:
        err.print(f"[red]too complex:[/red] {escape(str(exc))}", markup=True, highlight=False)
        if as_json:
            print_json({"error": str(exc), "suggestions": []})
        raise typer.Exit(1) from None
    except NoMatch as exc:
        err.print(f"[red]no match:[/red] no alias matches {escape(repr(text))}", markup=True, highlight=False)
        if exc.suggestions:
            err.print("did you mean:", highlight=False)
            for suggestion in exc.suggestions:
                err.print(f"  {suggestion}", markup=False, highlight=False)
        if as_json:
            print_json({"error": str(exc), "suggestions": exc.suggestions})
        raise typer.Exit(1) from None
    except AmbiguousCommand as exc:
        err.print(f"[red]ambiguous:[/red] {escape(repr(text))} matches several aliases equally well:",
                  markup=True, highlight=False)
        for candidate in exc.candidates:
            err.print(f"  {candidate.alias.ref}: {candidate.representation}", markup=False, highlight=False)
        if as_json:
            print_json({"error": str(exc), "candidates": [c.summary() for c in exc.candidates]})
        raise typer.Exit(1) from None
    documents = [m.summary() for m in matches]
    if as_json:
        print_json(documents[0] if len(documents) == 1 else documents)
        return
    for document in documents:
        out.print(_line(document), markup=False, highlight=False)
