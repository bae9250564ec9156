"""`squall audit export`: the audit log (who ran what, from where, with which parameters; denials,
inquiry answers, key and pack changes, logins) as JSON lines or CSV, oldest first, for an auditor or
a SIEM that was not listening to `audit.sinks` at the time. `squall audit purge` deletes its old
entries (`engine/retention.py`, as `retention.audit_days` does on its own).

It reads the `audit` table only, so it opens the database without starting Squall. Details are
masked as the sinks mask them (`engine.audit_sinks.entry`). The log is read a page (`_PAGE`) at a
time, oldest first, and each page printed as it is read: memory holds one page however long the
range (reading it all into one list first took 474 MB and 9.7 s before the first line, for 200,000
events). It is the log as it stood when the export began: events logged meanwhile wait for the next.
"""

from __future__ import annotations

import csv
import json
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

from bot.cli.common import fail, group, shown_time, with_store
from bot.cli.executions import BEFORE_HELP, purge_cutoff, purge_history

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from engine.audit import AuditFilter
    from engine.config import Config
    from engine.storage import Store

audit_app = group("Export and purge the audit log.")
FORMATS = ("jsonl", "csv")
_PAGE = 1000
#: The CSV's columns. `id` is last, added after the others: a reader that takes them by position still
#: finds each where it was, and the id matches the JSON lines' and the sinks' (a SIEM dedupes by it).
CSV_COLUMNS = ("time", "event", "actor", "source", "target", "detail", "id")
#: What a spreadsheet takes for the start of a formula in a cell (OWASP, CSV injection), and the full-width
#: forms some locales' Excel reads as the same.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def _moment(option: str, value: str | None) -> datetime | None:
    """`--since`/`--until` as a UTC time (`engine.retention.parse_time`): SQLite compares the stored UTC
    times with the time as given, so a zone kept, not converted, moved the window by its offset."""
    from engine.retention import parse_time

    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError:
        raise fail(f"{option} must be a date or time such as 2026-12-01 or 2026-12-01T14:00:00Z (years 1 to "
                   f"9999 in UTC), not {value!r}") from None


def _pages(store: Store, where: AuditFilter) -> Iterator[list[dict[str, Any]]]:
    """The entries matching `where`, oldest first, a page at a time, up to the newest entry there was
    when the export began, as when it read the whole range before printing: it neither grows nor
    chases a busy log."""
    from engine.audit import audit_forward, audit_last_id

    upto, after = audit_last_id(store), None
    while upto is not None:
        page = audit_forward(store, where, after=after, upto=upto, limit=_PAGE)
        if page:
            yield page
        if len(page) < _PAGE:
            return
        after = page[-1]["id"]


def _cell(value: Any) -> str:
    """`value` as a CSV cell a spreadsheet shows as text: an auditor opens the export in Excel or LibreOffice,
    and a stranger chooses some of it (a failed login's user name, an API caller's `source_channel`), so a
    value starting as a formula (`=HYPERLINK(...)`, `+`, `-`, `@`, a tab or a line break) ran as one. Such a
    cell starts with a `'` (as OWASP advises), which the spreadsheet reads as "text". None is an empty cell,
    as `csv` writes it."""
    text = "" if value is None else str(value)
    return f"'{text}" if text.startswith(_FORMULA_STARTS) else text


def _printer(form: str, out: TextIO) -> Callable[[dict[str, Any]], None]:
    """What prints one entry (as `engine.audit_sinks.entry` shows it) in `form`; the CSV header is
    printed at once. Every CSV text cell goes through `_cell`; the id is a number, printed as it is."""
    if form == "jsonl":
        def line(shown: dict[str, Any]) -> None:
            out.write(json.dumps(shown, default=str, ensure_ascii=False) + "\n")

        return line
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)

    def row(shown: dict[str, Any]) -> None:
        texts = [shown["time"], shown["event"], shown["actor"], shown["source"], shown["target"],
                 json.dumps(shown["detail"], default=str, ensure_ascii=False)]
        writer.writerow([*map(_cell, texts), shown["id"]])

    return row


@audit_app.command("export")
def audit_export(
    since: Annotated[str | None, typer.Option("--since", help="From this time on (ISO 8601; UTC if no zone).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Before this time (ISO 8601; UTC if no zone).")] = None,
    form: Annotated[str, typer.Option("--format", help="jsonl (one JSON object per line) or csv.")] = "jsonl",
) -> None:
    """Print the audit events between --since and --until, oldest first."""
    if form not in FORMATS:
        raise fail(f"--format must be one of {', '.join(FORMATS)}, not {form!r}")
    start, end = _moment("--since", since), _moment("--until", until)
    if start and end and start >= end:
        raise fail(f"--since ({since}) must be before --until ({until})")

    def work(store: Store, config: Config) -> None:
        from engine.audit import AuditFilter
        from engine.audit_sinks import entry

        show = _printer(form, sys.stdout)
        for page in _pages(store, AuditFilter(since=start, until=end)):
            for row in page:
                show(entry(row))

    with_store(work)


@audit_app.command("purge")
def audit_purge(
    before: Annotated[str, typer.Option("--before", help=BEFORE_HELP)],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking.")] = False,
) -> None:
    """Delete the audit log's entries logged before a time (`retention.audit_days` does it hourly). Export
    them first (`squall audit export --until ...`) if they must be kept: deleting is not undone. The
    purge itself is audited, so the log says when its gap was made."""
    from engine.retention import count_audit, purge_audit
    from engine.storage import iso

    cutoff = purge_cutoff(before)

    def what(found: int) -> str:
        entries = "entry" if found == 1 else "entries"
        return f"{found:,} audit log {entries} logged before {shown_time(iso(cutoff))} UTC"

    purge_history("cli.audit.purge", cutoff, noun="audit log entries", what=what, yes=yes,
                  count=lambda store: count_audit(store, cutoff),
                  purge=lambda store, progress, closing: purge_audit(store, cutoff, progress=progress,
                                                                     closing=closing), detail={})
