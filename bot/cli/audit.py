"""`squall audit export`: the audit log (who ran what, from where, with which parameters; denials,
inquiry answers, key and pack changes, logins) as JSON lines or CSV, oldest first, for an auditor or
a SIEM that was not listening to `audit.sinks` at the time.

It reads the `audit` table only, so it opens the database without starting Squall. Details are
masked as the sinks mask them (`engine.audit_sinks.entry`).
"""

from __future__ import annotations

import csv
import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from bot.cli.common import fail, group, with_store

if TYPE_CHECKING:
    from engine.config import Config
    from engine.storage import Store

audit_app = group("Export the audit log.")
FORMATS = ("jsonl", "csv")
_PAGE = 1000


def _moment(option: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise fail(f"{option} must be a date or time such as 2026-12-01 or 2026-12-01T14:00:00Z, not {value!r}") \
            from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


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

    def work(store: Store, config: Config) -> list[dict[str, Any]]:
        from engine.audit import AuditFilter, audit_page
        from engine.audit_sinks import entry

        where, rows, before = AuditFilter(since=start, until=end), [], None
        while page := audit_page(store, where, before=before, limit=_PAGE):
            rows.extend(page)
            before = page[-1]["id"]
        return [entry(row) for row in reversed(rows)]

    entries = with_store(work)
    if form == "jsonl":
        for shown in entries:
            sys.stdout.write(json.dumps(shown, default=str, ensure_ascii=False) + "\n")
        return
    writer = csv.writer(sys.stdout)
    writer.writerow(["time", "event", "actor", "source", "target", "detail"])
    for shown in entries:
        writer.writerow([shown["time"], shown["event"], shown["actor"] or "", shown["source"] or "",
                         shown["target"] or "", json.dumps(shown["detail"], default=str, ensure_ascii=False)])
