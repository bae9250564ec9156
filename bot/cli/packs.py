"""`squall pack list | install | remove | reload`.

`pack list` ends with the files that did not load ("problems"), every time, not only on the
first command after a change, then the warnings (content that loads all the same: a version that is
not semver, an alias format's stray `{{`); `--json` prints `{"packs": [...], "problems": [{"file", "line",
"reason"}]}` (`line` is null where unknown), warnings among the problems. `pack reload` reports the same
(`bot.pack_content.pack_problems`: what `squall serve` reports) and exits 1 if any file was skipped.

`pack install` keeps a pack whose requirements did not all install: each failed line is said in one
paragraph (the line, pip's reason, what to do), listed in `--json` as `requirements_failed`, and the
command exits 1. It checks the new pack's aliases, rules and sensors as `pack list` does: each one that
does not load (an alias or rule naming an action that does not exist) is a warning and one of `--json`'s
`errors`, the counts are of what loaded, and the command exits 1. An install that Squall then does not
load (another pack of its ref found first in `packs.paths`, or `install_path` not among them) is no
success: it says which folder is loaded instead and how to fix it, and exits 1. A git URL's credentials
are in nothing it prints nor in its audit entry (`engine.pack_manager.shown_source`, as the web UI's).

Every message quotes text from the user or a pack (paths, URLs, descriptions, load problems) and is
escaped before rich prints it: rich reads `[...]` as markup, which hid `[a-z0-9_]` in the ref rule and
crashed on a `[/...]`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from bot.cli.common import (
    JsonOption,
    add_row,
    audit,
    audit_made,
    current_config,
    err,
    fail,
    group,
    load_packs,
    new_table,
    out,
    print_json,
    problem_document,
    shown_text,
    warn_problems,
)

if TYPE_CHECKING:
    from engine.yamlfile import ContentError

pack_app = group("List, install, remove and reload packs.")


def _progress(message: str) -> None:
    err.print(f"[dim]…[/dim] {escape(message)}", markup=True, highlight=False)


@pack_app.command("list")
def pack_list(as_json: JsonOption = False) -> None:
    """Loaded packs and how much content each has, then the pack files that did not load."""
    # The table ends with the problems, so they are not printed a second time on stderr.
    from bot.forms import short
    from bot.pack_content import is_warning, pack_problems

    registry = load_packs(current_config(), warn=False)
    problems = pack_problems(registry)
    packs = [registry.packs[ref].summary(registry.counts(ref)) for ref in sorted(registry.packs)]
    if as_json:
        warn_problems(problems)
        print_json({"packs": packs, "problems": [problem_document(e) for e in problems]})
        return
    table = new_table("ref", "version", "actions", "path", "description")
    for pack in packs:  # a cell is markup too
        # The description on one short line (`--json` has it whole): a 2 MB one took 16 s and 8.8 MB of table.
        add_row(table, pack["ref"], pack["version"], pack["content"]["actions"], pack["path"],
                short(str(pack["description"])))
    out.print(table)
    _print_section("problems (pack content that did not load):", [e for e in problems if not is_warning(e)])
    _print_section("warnings (problems that skipped nothing: the content loads, but may not do what was meant):",
                   [e for e in problems if is_warning(e)])


def _print_section(title: str, problems: list[ContentError]) -> None:
    if problems:
        out.print(title, style="bold yellow")
        for error in problems:
            out.print(f"  {shown_text(str(error))}", markup=False)


@pack_app.command("install")
def pack_install(source: Annotated[str, typer.Argument(help="A pack folder or a git URL (URL=ref for a "
                                                             "branch, tag or commit).")],
                 as_json: JsonOption = False) -> None:
    """Install a pack: copy or clone it, build its virtualenv, check its content."""
    from bot.pack_content import check_content, is_warning
    from engine.pack_manager import (
        PackInstallError,
        failed_requirements,
        install_pack,
        needed_config_keys,
        shown_source,
        split_missing_config,
    )

    config = current_config()
    shown = shown_source(source)  # install_pack says it so too (progress, errors): no credentials in the audit log
    try:
        pack, errors = install_pack(source, config.install_path, config.configs_path, config.virtualenvs_path,
                                    _progress, pack_paths=config.pack_paths)
    except PackInstallError as exc:  # refused, nothing changed (`PackHidden`: another copy would run) or failed
        raise fail(str(exc)) from exc
    registry = load_packs(config, warn=False)
    # Its aliases, rules and sensors built as `squall serve` builds them: one naming an action that does
    # not exist loads no more than an action file that does not parse, and is said the same way.
    check = check_content(registry)
    errors = [*errors, *(e for e in check.problems_under(pack.path) if str(e) not in {str(i) for i in errors})]
    # Files, which no transaction holds with the event: it follows, and one the database does not take is
    # said with the install it is about (which holds), never as if the install had failed.
    audit_made("cli.pack.install", pack.ref, {"source": shown, "version": pack.version, "errors": len(errors)},
               f"installed {pack.ref} {pack.version} at {pack.path}")
    for error in errors:
        err.print(f"[yellow]warning:[/yellow] {escape(str(error))}", markup=True, highlight=False)
    # The other packs' problems too, as every command that loads packs shows them (each once); a
    # config file not written yet is said once below, as the keys it needs, not as a failure.
    _, others = split_missing_config(pack.ref, config.configs_path, registry.errors)
    warn_problems(e for e in others if str(e) not in {str(i) for i in errors})
    needed = needed_config_keys(pack)
    # Requirements pip could not install leave the pack installed; each is said in one paragraph.
    failed = failed_requirements(config.virtualenvs_path / pack.ref)
    for failure in failed:
        err.print(f"[yellow]requirement failed:[/yellow] "
                  f"{escape(failure.paragraph(pack.ref, pack.path / 'requirements.txt'))}",
                  markup=True, highlight=False)
    counts = check.counts(registry, pack.ref)  # what loaded, not the files found
    if as_json:
        print_json({**pack.summary(counts), "errors": [str(e) for e in errors],
                    "config_needed": needed, "requirements_failed": [f.document() for f in failed]})
    else:
        incomplete = f"; {len(failed)} of its requirements did not install (said above)" if failed else ""
        out.print(f"installed {pack.ref} {pack.version} at {pack.path} "
                  f"({counts['actions']} actions, {counts['aliases']} aliases, {counts['rules']} rules){incomplete}",
                  markup=False)
    if needed:
        err.print(f"[yellow]config needed:[/yellow] {escape(pack.ref)}'s actions need {escape(', '.join(needed))} "
                  f"(required by its config.schema.yaml, no default); set them in "
                  f"{escape(str(config.configs_path / f'{pack.ref}.yaml'))}", markup=True, highlight=False)
    # Exit 1 for pack content that did not load and for requirements that did not install (the pack
    # is installed all the same); a config still to write, or a warning (content that loads), is not a failure.
    raise typer.Exit(1 if failed or any(not is_warning(e) for e in errors) else 0)


@pack_app.command("remove")
def pack_remove(name: Annotated[str, typer.Argument(help="Pack ref.")]) -> None:
    """Remove an installed pack and its virtualenv."""
    from engine.pack_manager import PackInstallError, remove_pack

    config = current_config()
    try:
        path = remove_pack(name, load_packs(config), config.virtualenvs_path, _progress,
                           install_path=config.install_path)
    except PackInstallError as exc:
        raise fail(str(exc)) from exc
    audit_made("cli.pack.remove", name, {"path": str(path)}, f"removed {name} ({path})")  # as the install's
    out.print(f"removed {name} ({path})", markup=False)


@pack_app.command("reload")
def pack_reload(as_json: JsonOption = False) -> None:
    """Load every pack again and report what is wrong; exit 1 if any file was skipped."""
    from bot.pack_content import is_warning, pack_problems

    registry = load_packs(current_config(), warn=False)  # its own report below names every problem
    problems = pack_problems(registry)  # what `squall serve` would report: rules, aliases, sensors, policies too
    errors = [str(e) for e in problems if not is_warning(e)]
    warnings = [str(e) for e in problems if is_warning(e)]
    audit("cli.pack.reload", None, {"packs": len(registry.packs), "problems": len(problems)})  # as web.pack.reload
    if as_json:
        print_json({"packs": sorted(registry.packs), "actions": len(registry.actions),
                    "trigger_types": len(registry.trigger_types), "errors": errors, "warnings": warnings})
    else:
        skipped = f"; {len(errors)} pack files skipped (said below)" if errors else ""
        out.print(f"loaded {len(registry.packs)} packs, {len(registry.actions)} actions, "
                  f"{len(registry.trigger_types)} trigger types{skipped}")
        for error in errors:
            err.print(f"[red]skipped:[/red] {escape(error)}", markup=True, highlight=False)
        for warning in warnings:
            err.print(f"[yellow]warning:[/yellow] {escape(warning)}", markup=True, highlight=False)
    raise typer.Exit(1 if errors else 0)
