"""`squall run` and `squall execution list | get | cancel | pause | resume | re-run | purge`.

`run` exits 0 if the action succeeded, 1 if it failed or timed out, 2 on bad input, 3 when the
database or data folder cannot be used, 128+N when signal N stopped it (the execution abandoned; canceled, with
its running tasks, where `squall worker`s run it); with `--async` it stores the request and `squall serve` runs
it. So does a plain `run` of an action a concurrency policy holds, or of a workflow naming one as a task's action,
and a `re-run` of either, while `squall serve` runs on the database (it counts the runs in its own memory); the
command then waits for the end and shows it as usual (a stop signal ends the wait, not that run). A plain `run`
(or `re-run`) that failed says when its retry policy queued a retry for its `delay`, which `squall serve` runs
once due; a retry without a delay runs in the command, which waits for it (and its retries) and shows the last
attempt, whose status is the exit code's. Parameters and results are printed as written: rich would read a
`[...]` in them as markup (a `[/x]` in a message crashed `squall run`).

`execution purge` (StackStorm's `st2-purge-executions`) and `trigger-instance purge` share `purge_history`: what
they would delete is counted and confirmed (`--yes`, or a `y` at a terminal), deleted in batches of their own
(`engine/retention.py`) with progress on stderr while it lasts, audited with the counts, and exit 0.

`execution list` keeps each id on one line (to be copied) and each action and status whole at any width: a
narrower terminal puts a start time on two lines, then folds the action; narrower than that table can be, each
execution gets lines of its own.
Times are UTC (`2026-12-05 10:11:12`), as everywhere in the CLI; `--json` keeps ISO 8601.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.cells import cell_len
from rich.markup import escape

from bot.cli.common import (
    MAX_LISTED,
    JsonOption,
    add_row,
    audit,
    audit_entry,
    audit_sinks,
    current_config,
    current_user,
    err,
    fail,
    group,
    new_table,
    out,
    parse_assignments,
    print_json,
    record_audit,
    requested,
    runner_named,
    say_unaudited,
    served_elsewhere,
    shown_time,
    with_app,
    with_store,
)

if TYPE_CHECKING:
    from datetime import datetime

    from rich.table import Table

    from bot.app import Squall
    from engine.config import Config
    from engine.retention import Purged
    from engine.storage import Store

    #: A purge as its command runs it (`purge_history`): on the store, telling `progress` of the running total
    #: after each batch that committed, with `closing` (its audit event) in the transaction of its last batch.
    Purge = Callable[[Store, Callable[[Purged], None], Callable[[Store, Purged], None]], Purged]

execution_app = group("Inspect, cancel and re-run executions.")

T = TypeVar("T")


#: How much of one value of a workflow's result `show_execution` shows (`short`): `--json` shows it whole.
SHOWN_CHARS = 200


def show_execution(record: dict[str, Any], inquiries: Sequence[str] = ()) -> None:
    """An execution for people: status in colour, then the result's parts a person looks for first, and the
    `inquiries` a paused workflow waits on with how to answer them (`paused` alone left people guessing)."""
    colour = {"succeeded": "green", "failed": "red", "timeout": "red", "abandoned": "red",
              "canceled": "yellow"}.get(record["status"], "cyan")
    out.print(f"id: {record['id']}", markup=False)
    out.print(f"action: {record['action']}", markup=False)
    out.print(f"status: [{colour}]{escape(record['status'])}[/{colour}]"
              + (f" ({record['elapsed_seconds']:.3f} s)" if record.get("elapsed_seconds") is not None else ""))
    if record["parameters"]:
        out.print("parameters: " + json.dumps(record["parameters"], default=str), markup=False)
    result = record.get("result")
    if isinstance(result, dict):
        for key in ("stdout", "stderr", "result", "error", "body", "status_code"):
            value = result.get(key)
            if value not in (None, "", [], {}):
                text = value if isinstance(value, str) else json.dumps(value, indent=2, default=str)
                out.print(f"{key}:", style="bold")
                out.print(text, markup=False)
        _show_workflow(record["status"], result)
    elif result is not None:
        out.print("result: " + json.dumps(result, default=str), markup=False)
    for inquiry in inquiries:
        out.print(f"waiting on inquiry {inquiry}: see its question with `squall inquiry get {inquiry}`, answer it "
                  f"with `squall inquiry respond {inquiry} -r '<json>'`", markup=False)


def _show_workflow(status: str, result: dict[str, Any]) -> None:
    """What a workflow's result says that the keys above do not: an Orquesta workflow's `output` and its
    `errors` (a task's, or its definition's: a missing action, an unexpected input), an ActionChain's failed
    tasks with why each failed, or the values it `published` when it succeeded. Without them `squall run`
    of a workflow said only `failed`, or `succeeded` without its output. Values are the stored record's
    (secrets masked as stored), each on one line, cut short (`SHOWN_CHARS`)."""
    from engine.workflows.model import FAILED

    output = result.get("output")
    if output not in (None, "", [], {}):
        _show_values("output", output)
    errors = result.get("errors")
    if isinstance(errors, list) and errors:
        out.print("errors:", style="bold")
        for error in errors:
            out.print("  " + _error_line(error), markup=False)
    tasks = result.get("tasks")
    if not isinstance(tasks, list):
        return
    failed = [task for task in tasks if isinstance(task, dict) and task.get("state") in FAILED]
    if status != "succeeded" and failed:
        out.print("failed tasks:", style="bold")
        for task in failed:
            why = _why(task.get("result"))
            out.print(f"  {task.get('name')} {task.get('state')}" + (f": {why}" if why else ""), markup=False)
    published = result.get("published")
    if status == "succeeded" and published not in (None, "", [], {}):
        _show_values("published", published)


def _shown_value(value: Any) -> str:
    """One value on one line, as `show_execution` writes values (a string as it is, anything else as JSON),
    cut short."""
    from bot.forms import short

    return short(value if isinstance(value, str) else json.dumps(value, default=str), SHOWN_CHARS)


def _show_values(name: str, value: Any) -> None:
    """`name` and its value; an object's each on a line of its own."""
    if not isinstance(value, dict):
        out.print(f"{name}: {_shown_value(value)}", markup=False)
        return
    out.print(f"{name}:", style="bold")
    for key, item in value.items():
        out.print(f"  {key}: {_shown_value(item)}", markup=False)


def _error_line(error: Any) -> str:
    """An Orquesta error on one line: its message, after its task's id when it has one (else where in the
    definition it is, `spec_path`), and why the task failed when its result says (`_why`): the message of
    a task's failure is only `Execution failed. See result for details.`"""
    if not isinstance(error, dict):
        return _shown_value(error)
    where = f"task {error['task_id']}: " if error.get("task_id") else ""
    at = f" (at {error['spec_path']})" if not where and error.get("spec_path") else ""
    why = _why(error.get("result"))
    return where + _shown_value(error.get("message") or error) + at + (f" ({why})" if why else "")


def _why(result: Any) -> str:
    """Why a task failed, from its result, on one line: its `error`, else the last line of its stderr and
    its exit code, else a sub-workflow's first error; empty when the result says none of these."""
    if not isinstance(result, dict):
        return ""
    if result.get("error") not in (None, "", [], {}):
        return _shown_value(result["error"])
    lines = [line for line in str(result.get("stderr") or "").splitlines() if line.strip()]
    code = next((result[key] for key in ("return_code", "exit_code") if result.get(key) is not None), None)
    parts = ([_shown_value(lines[-1])] if lines else []) + ([f"exit code {code}"] if code is not None else [])
    errors = result.get("errors")
    if not parts and isinstance(errors, list) and errors:
        parts.append(_error_line(errors[0]))
    return ", ".join(parts)


#: How long `run` and `execution re-run` wait out a database they cannot read their execution's end from
#: (PostgreSQL down or restarting, SQLite locked by another process past Squall's wait): the execution is
#: stored and runs on meanwhile. Past it they give up waiting (`OUTAGE_EXIT`).
OUTAGE_SECONDS = 600.0
#: Seconds between two tries at reading the end while the database is away.
OUTAGE_RETRY_SECONDS = 1.0
#: The exit of a wait the database stayed away for longer than `OUTAGE_SECONDS` (README's exit codes): not
#: 3, a setup that never worked, nor 1, a failed action; the execution is stored, and may still run.
OUTAGE_EXIT = 4


async def waited(squall: Squall, execution_id: str) -> dict[str, Any]:
    """The end of `execution_id`, which this command stored, waited for across a database outage
    (`outlasting`)."""
    return await outlasting(squall, execution_id, lambda: squall.executions.wait(execution_id))


async def outlasting(squall: Squall, execution_id: str, read: Callable[[], Awaitable[T]], *,
                     ended: str | None = None, reading: str = "") -> T:
    """`read()` for the execution `execution_id`, which this command stored, tried again across a database
    outage: its end (`waited`), or, once it `ended` (its status: failed, paused), `reading`, what the command's
    exit and output depend on (its retry, the inquiries it waits on). Such a read exited 3, "check the user,
    password and database name", while the execution ran on and ended well: a script that retries on a
    non-zero exit ran the action twice. The outage is said once on stderr, with the execution's id, and once
    more when the database is back; Ctrl-C stops the wait as ever, and an outage past `OUTAGE_SECONDS` ends it
    with `OUTAGE_EXIT` and a line naming the execution."""
    import asyncio

    from sqlalchemy.exc import DBAPIError

    from engine.storage import database_trouble

    since = None
    while True:
        try:
            found = await read()
        except DBAPIError as exc:
            trouble = database_trouble(exc)
            if trouble is None:  # not the database's trouble: a bug, seen whole
                raise
            if since is None:
                since = time.monotonic()
                state = ("is stored and runs on: waiting for the database" if ended is None else
                         f"{ended}: waiting for the database to read {reading}")
                err.print(f"{trouble}; execution {execution_id} {state} (Ctrl-C stops the wait)", markup=False)
            elif time.monotonic() - since > OUTAGE_SECONDS:
                # Run by this process (the local executor), it stops with the command: `abandoned` once stored.
                fate = ("ran here and stops with this command" if execution_id in getattr(
                    squall.executions.executor, "running", ()) else "may still run")
                gave_up = (f"waiting for execution {execution_id}, which is stored and {fate}" if ended is None else
                           f"reading {reading} of execution {execution_id}, which {ended}")
                raise fail(f"{trouble} for over {OUTAGE_SECONDS:g} s; gave up {gave_up}: see it with "
                           f"`squall execution get {execution_id}` once the database is back", OUTAGE_EXIT) from None
            await asyncio.sleep(OUTAGE_RETRY_SECONDS)
            continue
        if since is not None:
            state = f"ended {found['status']}" if ended is None else ended  # `waited`'s read is the record
            err.print(f"the database is back; execution {execution_id} {state}", markup=False)
        return found


def _exit_for(record: dict[str, Any]) -> int:
    """The exit code contract: 0 only for `succeeded` (failed, timeout, canceled... are 1)."""
    return 0 if record["status"] == "succeeded" else 1


def run(
    ref: Annotated[str, typer.Argument(help="Action ref, e.g. core.local.")],
    parameters: Annotated[list[str] | None, typer.Argument(help="Parameters as name=value.")] = None,
    as_json: JsonOption = False,
    run_async: Annotated[bool, typer.Option("--async", help="Store the request and return at once.")] = False,
    render: Annotated[bool, typer.Option(
        "--render", help="Render the values as Jinja templates ({{ st2kv.system.x }}), as StackStorm does; "
                         "without it they are passed exactly as given.")] = False,
) -> None:
    """Run an action and wait for it: exit 0 if it succeeded, 1 if not, 2 on bad input. When it fails and
    its retry policy retries it at once (no `delay`), the retry runs in this command too, which waits for
    it (and for its own retries, up to the policy's `max_retry_count`), says which execution retried which,
    and shows the last attempt: the exit code (and `--json`) are the last attempt's."""
    params = parse_assignments(parameters or [])

    async def work(squall: Squall) -> tuple[dict[str, Any], list[str], bool, str | None]:
        context = {"user": current_user(), "source": "cli"}
        server = None if run_async else await _counting_server(squall, ref)
        if (run_async or server is not None) and squall.config.executor_kind == "local":
            squall.executions.executor = None  # stored as requested; `squall serve` runs it
        # Stored with the request, one transaction: its detail gains the action and the parameters as stored.
        audit = await squall.db(audit_entry, squall.store, "cli.execution", {})
        request = squall.executions.request(ref, params, context, render=render, audit=audit)  # else: queued
        # What it waits for a worker to run, a stop signal cancels (`requested`); a server's run it only stops
        # waiting for, and `--async` asks for no wait.
        record = await (request if run_async or server is not None else requested(request))
        if server is not None:
            _say_served(squall, record, server)
        retried = None
        if not run_async:
            record = await waited(squall, record["id"])
            if server is None:  # run here: so is a retry its policy requests at once
                record, retried = await _retried(squall, record)
        waiting = await _asking(squall, record) if record["status"] == "paused" else []
        served = not run_async or await outlasting(squall, record["id"], lambda: served_elsewhere(squall),
                                                   ended=record["status"], reading="who runs it")
        return record, waiting, served, retried

    # An action skipped for a load problem is said.
    record, waiting, served, retried = with_app(work, pack_problems=True)
    if as_json:
        print_json(record)
    elif run_async:
        runs = "a `squall worker`" if current_config().executor_kind == "procrastinate" else "`squall serve`"
        out.print(f"requested {record['id']} ({record['action']}); {runs} runs it. "
                  f"See it with: squall execution get {record['id']}", markup=False)
        if not served:  # stored, and nothing runs it until one starts
            err.print(f"none runs on this database now: {record['id']} waits, `requested`, until "
                      f"{runner_named(current_config())} starts", markup=False)
    else:
        show_execution(record, waiting)
    if retried is not None:
        err.print(retried, markup=False)
    raise typer.Exit(0 if run_async else _exit_for(record))


def _say_served(squall: Squall, record: dict[str, Any], server: str) -> None:
    """Tell that `squall serve` runs `record` (a held action, or a workflow calling one), not this command."""
    held = _held_refs(squall, record["action"])
    what = (f"{record['action']} is held by a concurrency policy" if record["action"] in held else
            f"{record['action']} calls {', '.join(held)}, held by a concurrency policy,")
    err.print(f"{what} and `squall serve` ({server}) runs on this database: it runs {record['id']}, counted with "
              "its own runs. Waiting for its end (Ctrl-C stops the wait, not the run).", markup=False)


async def _retried(squall: Squall, record: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The last attempt of `record`, which ended here, and what to say of a retry still to come. A retry its
    policy requests at once is this process's listener's, and this process's executor runs it: the command
    waits for it, and for its own retry in turn, saying on stderr which execution retried which. Exiting
    meanwhile cut it short (`abandoned`) or left it `running` for a dead process. A retry held for the
    policy's `delay` is left stored `delayed`: `squall serve` runs it once due (`_queued_retry`)."""
    while (retry := await _requested_retry(squall, record)) is not None and not _on_a_clock(retry):
        if squall.config.executor_kind != "local":  # a worker's listener requested it: a worker runs it
            return record, None
        applied = ((retry.get("context") or {}).get("policies") or {}).get("retry") or {}
        err.print(f"{record['id']} {record['status']}; its retry policy {applied.get('applied_policy')} retries it "
                  f"at once, in this command: retry {applied.get('retry_count')} is {retry['id']}. Waiting for its "
                  "end.", markup=False)
        record = await waited(squall, retry["id"])
    return record, None if retry is None else await _queued_retry(squall, record, retry)


def _on_a_clock(retry: dict[str, Any]) -> bool:
    """Whether `retry` waits out its policy's `delay` (`runner_info.delayed_until`), which this command
    does not wait for; one `delayed` for a concurrency policy's slot here is admitted as slots free."""
    return retry["status"] == "delayed" and bool((retry.get("runner_info") or {}).get("delayed_until"))


async def _requested_retry(squall: Squall, record: dict[str, Any]) -> dict[str, Any] | None:
    """The retry a retry policy requested after `record` ended, once its listener stored it; None when
    no policy retries it (or the request failed: the log says why)."""
    import asyncio
    import contextlib

    from engine.core import LISTENERS_SETTLE_SECONDS
    from engine.executions import COMPLETED
    from engine.policies import retry_id

    if record["status"] not in COMPLETED or not squall.policies.retries(record):
        return None
    wanted = retry_id(record["id"])
    loop = asyncio.get_running_loop()
    settling = LISTENERS_SETTLE_SECONDS  # the listeners' time, not a database outage's (`outlasting`)
    # This process's retry listener stores it (its end may be read first).
    while (retry := await outlasting(squall, record["id"], lambda: squall.db(squall.store.get_execution, wanted),
                                     ended=record["status"], reading=f"its retry {wanted}")) is None and settling > 0:
        started = loop.time()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(settling):
                await squall.events.settle()
        await asyncio.sleep(0.05)
        settling -= loop.time() - started
    return retry


async def _queued_retry(squall: Squall, record: dict[str, Any], retry: dict[str, Any]) -> str:
    """What to say of the `retry` a retry policy queued after `record` failed here: it is stored `delayed`
    for the policy's delay, and this command exits before then, so `squall serve` runs it (its poll takes a
    due retry another process stored), or, none running, the next one that starts."""
    until = (retry.get("runner_info") or {}).get("delayed_until") or "its delay"
    served = await outlasting(squall, record["id"], lambda: served_elsewhere(squall), ended=record["status"],
                              reading=f"who runs its retry {retry['id']}")
    runs = (f"{runner_named(squall.config)} runs it once due" if served else
            f"none runs on this database now: it waits until {runner_named(squall.config)} starts")
    return (f"{record['id']} {record['status']}; its retry policy queued retry {retry['id']} until {until}, after "
            f"this command exits: {runs}. See it with: squall execution get {retry['id']}")


async def _asking(squall: Squall, record: dict[str, Any]) -> list[str]:
    """The ids of the inquiries the paused workflow `record` waits on, read across a database outage."""
    return await outlasting(squall, record["id"], lambda: _waiting_inquiries(squall, record["id"]),
                            ended=record["status"], reading="the inquiries it waits on")


async def _waiting_inquiries(squall: Squall, workflow_id: str) -> list[str]:
    """The ids of the inquiries a paused workflow waits on: its tasks' still `pending` ones, and those its
    paused sub-workflows wait on (an inquiry is asked where its `core.ask` task runs), oldest first."""
    from engine.inquiries import RUNNER

    found: list[str] = []
    rows = await squall.executions.list(parent=workflow_id, status=("pending", "paused"), limit=MAX_LISTED)
    for row in sorted(rows, key=lambda r: r["id"]):
        if row["status"] == "paused":
            found += await _waiting_inquiries(squall, row["id"])
        elif row["runner"] == RUNNER:
            found.append(row["id"])
    return found


async def _counting_server(squall: Squall, ref: str) -> str | None:
    """The `squall serve` that must run a request of `ref`, or None to run it here. A concurrency
    policy counts runs in the memory of the process that runs them, so a run in this command would
    pass the count of a server's runs: when a policy holds `ref` and a server leads on this database
    (only `squall serve` takes the lead), the server runs it. Workers (`executor.kind: procrastinate`)
    count in the database, wherever the request comes from."""
    import asyncio

    from engine.wakeups import PROCESS_NAME

    if squall.config.executor_kind != "local" or not _held_refs(squall, ref):
        return None
    holder = await asyncio.to_thread(squall.leader.holder)
    return holder if holder not in (None, PROCESS_NAME) else None


#: How deep `_held_refs` follows workflows calling workflows (Squall refuses deeper nesting when it runs).
_NESTING = 10


def _held_refs(squall: Squall, ref: str) -> list[str]:
    """The actions a concurrency policy holds among `ref` and, for a workflow, the task actions its definition
    names, in its sub-workflows too (Orquesta and Mistral `tasks.*.action`, ActionChain `chain[].ref`): a
    workflow run here would run those tasks here, beside the server's runs of the same action, each process
    counting only its own. An action a task names by an expression is known only when it runs: not seen."""
    held: list[str] = []
    seen: set[str] = set()
    todo = [(ref, 0)]
    while todo:
        name, depth = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if squall.policies.holds(name):
            held.append(name)
        if depth < _NESTING:
            todo.extend((task, depth + 1) for task in _task_actions(squall, name))
    return sorted(held)


def _task_actions(squall: Squall, ref: str) -> list[str]:
    """The action refs the workflow `ref`'s definition names (none for an action that is no workflow, or a
    definition that cannot be read: its run says why)."""
    from engine.workflows.service import WORKFLOW_RUNNERS, load_spec

    action = squall.registry.actions.get(ref)
    path = action.entry_path if action is not None else None
    if action is None or path is None or action.runner_type not in WORKFLOW_RUNNERS:
        return []
    try:
        spec = load_spec(action.runner_type, path, str(path))
    except Exception:  # a broken file is the run's to report
        return []
    named = [node.ref for node in getattr(spec, "nodes", {}).values()]
    named += [task.action for task in getattr(spec, "tasks", {}).values() if isinstance(task.action, str)]
    return [text.split()[0] for text in named if isinstance(text, str) and text.strip()]


@execution_app.command("list")
def execution_list(
    action: Annotated[str | None, typer.Option("--action", help="Only this action ref.")] = None,
    status: Annotated[str | None, typer.Option("--status", help="Only this status.")] = None,
    limit: Annotated[int, typer.Option("-n", "--limit", min=1, max=MAX_LISTED, help="How many, newest first.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """The most recent executions, newest first; exit 2 for a status no execution can have."""
    from engine.executions import public
    from engine.inquiries import shown_execution

    if status is not None:
        _check_status(status)
    # The database alone: starting the engine (packs, runners) would triple this command's time. An inquiry's
    # secret answers are shown masked (`shown_execution`), as the API shows them: a row stored before answers
    # were sealed holds them in clear.
    records = with_store(lambda store, _config: [shown_execution(public(r)) for r in store.list_executions(
        action=action, status=status, limit=limit)])
    if as_json:
        print_json(records)
        return
    rows = [(r["id"], r["action"], r["status"], shown_time(r["start_timestamp"]),
             f"{r['elapsed_seconds']:.3f}s" if r["elapsed_seconds"] is not None else "") for r in records]
    table = _execution_table(rows, out.width)
    if table is not None:
        out.print(table)
        return
    for ident, ref, state, started, elapsed in rows:  # narrower than any table that shows them whole
        out.print(f"{ident}\n  {ref}  {state}\n  {started} UTC" + (f"  {elapsed}" if elapsed else ""), markup=False)


def _check_status(status: str) -> None:
    """Exit 2 for a status no execution has: `--status faild` listed nothing and exited 0, as if none had failed."""
    import difflib

    from engine.executions import STATUSES

    if status not in STATUSES:
        near = difflib.get_close_matches(status, STATUSES, n=1)
        hint = f"did you mean {near[0]}? " if near else ""
        raise fail(f"no execution has the status {status!r}; {hint}the statuses are: {', '.join(STATUSES)}")


_EXECUTION_HEADERS = ("id", "action", "status", "started (UTC)", "elapsed")
#: A start time on two lines, its date over its time.
_DATE_WIDTH = len("2026-12-05")
#: Narrower than this, an action folded onto more lines takes more room than it is worth: `execution list`
#: then prints each execution on lines of its own.
_ACTION_FOLDED_MIN = 8


def _execution_table(rows: list[tuple[str, str, str, str, str]], width: int) -> Table | None:
    """The `execution list` table fitting `width` columns with every id on one line and every action and
    status whole: rich shrinks every column alike, and `succ…`, or an empty cell beside a whole id, hid
    what a person scans a listing for, and an id folded onto two lines could not be copied. Too wide, the
    start time goes on two lines (date over time) first, then the action folds onto more lines; None
    when even then it would not fit."""
    table = new_table(*_EXECUTION_HEADERS)
    widths = [max(cell_len(cell) for cell in column) for column in zip(_EXECUTION_HEADERS, *rows, strict=True)]
    room = width - 3 * len(widths) - 1  # each column's padding (a space either side) and border
    for column in table.columns if rows else ():  # no rows: the headers alone wrap as rich wraps them
        column.no_wrap = True
    if rows and sum(widths) > room:
        started, action = table.columns[3], table.columns[1]
        started.no_wrap, started.max_width = False, _DATE_WIDTH
        action_room = room - widths[0] - widths[2] - _DATE_WIDTH - widths[4]
        if action_room < min(widths[1], _ACTION_FOLDED_MIN):
            return None
        if action_room < widths[1]:
            action.no_wrap, action.overflow, action.width = False, "fold", action_room
    for row in rows:
        add_row(table, *row)
    return table


@execution_app.command("get")
def execution_get(execution_id: Annotated[str, typer.Argument(help="Execution id (or its first characters).")],
                  as_json: JsonOption = False) -> None:
    """One execution with its parameters and result; a workflow's tasks as a tree under it. An inquiry's
    secret answers are shown masked (`shown_execution`), as the API shows them."""
    from engine.inquiries import RUNNER, shown_execution

    async def work(squall: Squall) -> tuple[dict[str, Any], list[tuple[int, dict[str, Any]]]]:
        record = shown_execution(await squall.executions.get(execution_id))
        tree: list[tuple[int, dict[str, Any]]] = []

        async def descend(parent: str, depth: int) -> None:
            rows = await squall.executions.list(parent=parent, limit=100_000)
            for row in sorted(rows, key=lambda r: r["id"]):
                tree.append((depth, row))
                await descend(row["id"], depth + 1)

        await descend(record["id"], 1)
        return record, tree

    record, tree = with_app(work)
    if as_json:
        print_json({**record, "children": [row["id"] for depth, row in tree if depth == 1]})
        return
    show_execution(record, [row["id"] for _, row in tree if row["status"] == "pending" and row["runner"] == RUNNER])
    from datetime import datetime

    from engine.jobs import waiting_note
    from engine.storage import utcnow

    started = datetime.fromisoformat(record["start_timestamp"].replace("Z", "+00:00"))
    note = waiting_note(current_config(), {**record, "start_timestamp": started}, utcnow())
    if note is not None:
        out.print(f"[yellow]{escape(note)}[/yellow]")
    if tree:
        out.print("children:", style="bold")
    for depth, row in tree:
        task = (row["context"].get("workflow_task") or {}).get("task") or ""
        out.print(f"{'  ' * depth}{row['id']} {task + ' ' if task else ''}{row['action']} {row['status']}",
                  markup=False)


async def _changed(squall: Squall, change: str, execution_id: str) -> dict[str, Any]:
    """Cancel, pause or resume the execution with its `cli.execution.<change>` event (as the API's
    `api.execution.<change>`) in the change's transaction, its detail gaining the action and the status
    written: the execution as it is now."""
    audit = await squall.db(audit_entry, squall.store, f"cli.execution.{change}", {})
    return await getattr(squall.executions, change)(execution_id, audit)


@execution_app.command("cancel")
def execution_cancel(execution_id: Annotated[str, typer.Argument(help="Execution id.")],
                     as_json: JsonOption = False) -> None:
    """Cancel a requested or running execution."""
    record = with_app(lambda s: _changed(s, "cancel", execution_id))
    if as_json:
        print_json(record)
    else:
        out.print(f"execution {record['id']} is {record['status']}", markup=False)


@execution_app.command("pause")
def execution_pause(execution_id: Annotated[str, typer.Argument(help="Workflow execution id.")]) -> None:
    """Pause a running workflow: nothing new starts; it is paused once its running tasks end."""
    record = with_app(lambda s: _changed(s, "pause", execution_id))
    out.print(f"execution {record['id']} is {record['status']}", markup=False)


@execution_app.command("resume")
def execution_resume(execution_id: Annotated[str, typer.Argument(help="Workflow execution id.")]) -> None:
    """Resume a paused workflow (`squall serve` conducts it on)."""

    async def work(squall: Squall) -> dict[str, Any]:
        squall.executions.executor = None  # the server picks `resuming` up; this process exits now
        return await _changed(squall, "resume", execution_id)

    record = with_app(work)
    out.print(f"execution {record['id']} is {record['status']}", markup=False)


@execution_app.command("re-run")
def execution_rerun(
    execution_id: Annotated[str, typer.Argument(help="Execution id.")],
    parameters: Annotated[list[str] | None, typer.Argument(help="Overrides as name=value.")] = None,
    tasks: Annotated[list[str] | None, typer.Option("--tasks", help="Workflows: re-run in place from these "
                                                    "tasks, keeping the others' results.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Run the same action again with the same parameters (overridden by any given), and wait for it: exit 0
    if it succeeded, 1 if not. A retry its retry policy runs at once is waited for too, as `squall run`
    waits for it: the exit code (and `--json`) are the last attempt's."""
    params = parse_assignments(parameters or [])
    if tasks and params:
        raise fail("Parameters override is not supported when re-running task(s) for a workflow.")

    async def work(squall: Squall) -> tuple[dict[str, Any], str | None]:
        # Audited when asked for, as the API's `api.execution.rerun` (the wait may outlast the command): with
        # the new execution, or the workflow's reset when re-run in place, one transaction, its detail gaining
        # the action and the parameters as stored.
        audit = await squall.db(audit_entry, squall.store, "cli.execution.rerun",
                                {"of": execution_id, **({"tasks": tasks} if tasks else {})})
        server = await _counting_server(squall, (await squall.executions.get(execution_id))["action"])
        if server is not None and squall.config.executor_kind == "local":
            squall.executions.executor = None  # stored as requested (or resuming); `squall serve` runs it
        if tasks:  # waited for, as `run` waits: a stop signal cancels it where a worker runs it (`requested`)
            rerun = squall.workflows.rerun(execution_id, tasks, audit=audit)
        else:
            rerun = squall.executions.rerun(execution_id, params, {"user": current_user(), "source": "cli"},
                                            audit=audit)
        # A server's run a stop signal only stops waiting for, as `run`'s (`requested` would cancel it).
        record = await (rerun if server is not None else requested(rerun))
        if server is not None:
            _say_served(squall, record, server)
        record = await waited(squall, record["id"])
        # Run here, so is a retry its policy requests at once, as `run`'s. (A workflow re-run in place keeps its
        # id, and so its retry's, `retry_id`: a retry of its earlier failure is no retry of this run.)
        return (record, None) if server is not None or tasks else await _retried(squall, record)

    record, retried = with_app(work, pack_problems=True)  # it runs the action again, as `run` does
    if as_json:
        print_json(record)
    else:
        show_execution(record)
    if retried is not None:
        err.print(retried, markup=False)
    raise typer.Exit(_exit_for(record))


#: `--before` of the purges, as people write it.
BEFORE_HELP = ("Delete what is older than this: a number of days ago (30d) or an ISO 8601 time (2026-01-31, "
               "2026-01-31T12:00:00Z; UTC unless it names a zone).")
#: Seconds between two progress lines of a long purge.
PROGRESS_SECONDS = 2.0


def purge_cutoff(before: str) -> datetime:
    """`--before` as a time; exit 2 saying what it takes."""
    from engine.retention import parse_before

    try:
        return parse_before(before)
    except ValueError as exc:
        raise fail(f"--before: {exc}") from exc


def _confirmed(what: str, yes: bool) -> bool:
    """Whether to delete `what`: `--yes`, or a yes at a terminal. Without a terminal to ask on, exit 2: a
    script must say `--yes`, and deleting history is not undone."""
    if yes:
        return True
    if not sys.stdin.isatty():
        raise fail(f"this would delete {what}; standard input is no terminal to ask on: pass --yes to delete them")
    return typer.confirm(f"Delete {what}?", default=False)


def _progress() -> Callable[[Purged], None]:
    """Tell stderr what a long purge has deleted so far, every `PROGRESS_SECONDS`."""
    last = time.monotonic()

    def told(purged: Purged) -> None:
        nonlocal last
        if time.monotonic() - last >= PROGRESS_SECONDS:
            last = time.monotonic()
            err.print(f"[dim]…[/dim] deleted {escape(purged.describe())} so far", markup=True, highlight=False)

    return told


def purge_history(event: str, cutoff: datetime, *, noun: str, count: Callable[[Store], int],
                  what: Callable[[int], str], purge: Purge, yes: bool, detail: dict[str, Any]) -> None:
    """A purge command: `count` what it would delete (none: say so), confirm `what(count)`, `purge` it with
    progress and print the counts. Its audit event (`event`, with `detail`, the cutoff and the counts) is
    stored with the batch that ends the purge (`engine.retention.run`'s `closing`): one the database does not
    take puts that batch back, so a purge of one batch deletes nothing then. Stored after the purge, an event
    that failed left history deleted with nothing saying so. One cut short (Ctrl-C, a failure, that event
    refused) audits what its committed batches deleted, marked `interrupted`; an event that cannot be stored
    either is said whole on stderr."""
    from engine.storage import iso

    so_far: list[Purged] = []
    finished: list[bool] = []

    def closing(store: Store, purged: Purged) -> None:
        record_audit(store, event, None, {"before": iso(cutoff), **detail, **purged.counts()})

    def work(store: Store, config: Config) -> Purged | None:
        found = count(store)
        if not found:
            return None
        if not _confirmed(what(found), yes):
            out.print("nothing deleted", markup=False)
            raise typer.Exit(0)
        told = _progress()

        def progress(purged: Purged) -> None:
            so_far[:] = [purged]
            told(purged)

        with audit_sinks(store, config):
            purged = purge(store, progress, closing)
        finished.append(True)  # its last batch committed, with its event
        return purged

    try:
        purged = with_store(work)
    except BaseException:
        if so_far and not finished:
            _audit_cut_short(event, {"before": iso(cutoff), **detail, **so_far[0].counts(), "interrupted": True},
                             so_far[0])
        raise
    shown = f"{shown_time(iso(cutoff))} UTC"
    if purged is None:
        out.print(f"no {noun} older than {shown}; nothing deleted", markup=False)
        return
    out.print(f"deleted {purged.describe()} (older than {shown})", markup=False)


def _audit_cut_short(event: str, detail: dict[str, Any], purged: Purged) -> None:
    """The audit event of a purge cut short, what its committed batches deleted (`purged`), stored on its own:
    one the database does not take either is said whole on stderr, and the failure that cut the purge short
    goes on."""
    from sqlalchemy.exc import DBAPIError

    try:
        audit(event, None, detail)
    except (typer.Exit, DBAPIError) as exc:
        say_unaudited(event, None, detail, f"the purge stopped having deleted {purged.describe()}", exc)


@execution_app.command("purge")
def execution_purge(
    before: Annotated[str, typer.Option("--before", help=BEFORE_HELP)],
    action: Annotated[str | None, typer.Option("--action", help="Only this action's executions (a workflow's "
                                                                "tasks go with their workflow).")] = None,
    include_incomplete: Annotated[bool, typer.Option(
        "--include-incomplete", help="Also executions that never ended (requested, running, paused...), by their "
                                     "start: only those you know are dead.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking.")] = False,
) -> None:
    """Delete executions that ended before a time, with their workflow tasks, output and sent chat replies
    (StackStorm's st2-purge-executions). One with a reply still to send stays until it is sent."""
    from engine.retention import count_executions, purge_executions
    from engine.storage import iso

    cutoff = purge_cutoff(before)

    def what(found: int) -> str:
        of = f" of {action}" if action else ""
        ended = "started" if include_incomplete else "that ended"
        return (f"{found:,} execution{'s' if found != 1 else ''}{of} {ended} before {shown_time(iso(cutoff))} UTC, "
                "with their workflow tasks, output and sent chat replies")

    purge_history(
        "cli.execution.purge", cutoff, noun="executions", what=what, yes=yes,
        count=lambda store: count_executions(store, cutoff, action=action, include_incomplete=include_incomplete),
        purge=lambda store, progress, closing: purge_executions(
            store, cutoff, action=action, include_incomplete=include_incomplete, progress=progress, closing=closing),
        detail={"action": action, "include_incomplete": include_incomplete})
