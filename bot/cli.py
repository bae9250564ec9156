"""The `squall` command line: run actions, inspect executions, manage packs, serve.

Exit codes are a contract: 0 success, 1 the action failed (or timed out), 2 bad input. Every
read command takes `--json` and then prints exactly one JSON document on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from adapters.base import AdapterConfigError
from bot.app import Squall
from engine.config import Config, ConfigError, load_config
from engine.crypto import CryptoError
from engine.executions import ExecutionNotFound, ExecutionStateError
from engine.packs import UnknownAction
from engine.parameters import ParameterError

app = typer.Typer(help="Squall: ChatOps automation with StackStorm's packs.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
execution_app = typer.Typer(help="Inspect, cancel and re-run executions.", no_args_is_help=True)
action_app = typer.Typer(help="List and show actions.", no_args_is_help=True)
pack_app = typer.Typer(help="List, install, remove and reload packs.", no_args_is_help=True)
app.add_typer(execution_app, name="execution")
app.add_typer(action_app, name="action")
app.add_typer(pack_app, name="pack")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
T = TypeVar("T")

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


class _State:
    config_path: str | None = None


@app.callback()
def _main(
    config: Annotated[str | None, typer.Option("-c", "--config", help="Config file (default ./config.yml, "
                                                "or $SQUALL_CONFIG).")] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Log what Squall does.")] = False,
) -> None:
    _State.config_path = config
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    return typer.Exit(code)


def current_config() -> Config:
    try:
        return load_config(_State.config_path)
    except ConfigError as exc:
        raise fail(str(exc)) from exc


def with_app(work: Callable[[Squall], Awaitable[T]], *, recover: bool = False) -> T:
    """Run `work` against a started Squall, turning known errors into clear exits."""
    config = current_config()

    async def main() -> T:
        squall = await Squall.start(config, recover=recover)
        try:
            return await work(squall)
        finally:
            await squall.close()

    try:
        return asyncio.run(main())
    except (UnknownAction, ParameterError, ExecutionNotFound, ExecutionStateError, CryptoError) as exc:
        raise fail(str(exc)) from exc


def parse_assignments(items: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise fail(f"expected name=value, got {item!r} (quote values with spaces: msg='hello world')")
        params[name.strip()] = value
    return params


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")


def show_execution(record: dict[str, Any]) -> None:
    colour = {"succeeded": "green", "failed": "red", "timeout": "red", "abandoned": "red",
              "canceled": "yellow"}.get(record["status"], "cyan")
    out.print(f"id: {record['id']}")
    out.print(f"action: {record['action']}")
    out.print(f"status: [{colour}]{record['status']}[/{colour}]"
              + (f" ({record['elapsed_seconds']:.3f} s)" if record.get("elapsed_seconds") is not None else ""))
    if record["parameters"]:
        out.print("parameters: " + json.dumps(record["parameters"], default=str))
    result = record.get("result")
    if isinstance(result, dict):
        for key in ("stdout", "stderr", "result", "error", "body", "status_code"):
            value = result.get(key)
            if value not in (None, "", [], {}):
                text = value if isinstance(value, str) else json.dumps(value, indent=2, default=str)
                out.print(f"{key}:", style="bold")
                out.print(text, markup=False)
    elif result is not None:
        out.print("result: " + json.dumps(result, default=str), markup=False)


def _exit_for(record: dict[str, Any]) -> int:
    return 0 if record["status"] == "succeeded" else 1


@app.command()
def run(
    ref: Annotated[str, typer.Argument(help="Action ref, e.g. core.local.")],
    parameters: Annotated[list[str] | None, typer.Argument(help="Parameters as name=value.")] = None,
    as_json: JsonOption = False,
    run_async: Annotated[bool, typer.Option("--async", help="Store the request and return at once.")] = False,
    render: Annotated[bool, typer.Option(
        "--render", help="Render the values as Jinja templates ({{ st2kv.system.x }}), as StackStorm does; "
                         "without it they are passed exactly as given.")] = False,
) -> None:
    """Run an action and wait for it: exit 0 if it succeeded, 1 if not, 2 on bad input."""
    params = parse_assignments(parameters or [])

    async def work(squall: Squall) -> dict[str, Any]:
        context = {"user": _user(), "source": "cli"}
        if run_async:
            squall.executions.executor = None  # stored as requested; `squall serve` runs it
            return await squall.executions.request(ref, params, context, render=render)
        record = await squall.executions.request(ref, params, context, render=render)
        return await squall.executions.wait(record["id"])

    record = with_app(work)
    if as_json:
        print_json(record)
    elif run_async:
        out.print(f"requested {record['id']} ({record['action']}); `squall serve` runs it. "
                  f"See it with: squall execution get {record['id']}")
    else:
        show_execution(record)
    raise typer.Exit(0 if run_async else _exit_for(record))


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "squall"


@execution_app.command("list")
def execution_list(
    action: Annotated[str | None, typer.Option("--action", help="Only this action ref.")] = None,
    status: Annotated[str | None, typer.Option("--status", help="Only this status.")] = None,
    limit: Annotated[int, typer.Option("-n", "--limit", help="How many, newest first.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """The most recent executions, newest first."""
    records = with_app(lambda s: s.executions.list(action=action, status=status, limit=limit))
    if as_json:
        print_json(records)
        return
    table = Table("id", "action", "status", "started", "elapsed")
    table.columns[0].no_wrap = True
    for r in records:
        elapsed = f"{r['elapsed_seconds']:.3f}s" if r["elapsed_seconds"] is not None else ""
        table.add_row(r["id"], r["action"], r["status"], r["start_timestamp"], elapsed)
    out.print(table)


@execution_app.command("get")
def execution_get(execution_id: Annotated[str, typer.Argument(help="Execution id (or its first characters).")],
                  as_json: JsonOption = False) -> None:
    """One execution with its parameters and result; a workflow's tasks as a tree under it."""

    async def work(squall: Squall) -> tuple[dict[str, Any], list[tuple[int, dict[str, Any]]]]:
        record = await squall.executions.get(execution_id)
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
    show_execution(record)
    if tree:
        out.print("children:", style="bold")
    for depth, row in tree:
        task = (row["context"].get("workflow_task") or {}).get("task") or ""
        out.print(f"{'  ' * depth}{row['id']} {task + ' ' if task else ''}{row['action']} {row['status']}",
                  markup=False)


@execution_app.command("cancel")
def execution_cancel(execution_id: Annotated[str, typer.Argument(help="Execution id.")],
                     as_json: JsonOption = False) -> None:
    """Cancel a requested or running execution."""
    record = with_app(lambda s: s.executions.cancel(execution_id))
    if as_json:
        print_json(record)
    else:
        out.print(f"execution {record['id']} is {record['status']}")


@execution_app.command("pause")
def execution_pause(execution_id: Annotated[str, typer.Argument(help="Workflow execution id.")]) -> None:
    """Pause a running workflow: nothing new starts; it is paused once its running tasks end."""
    record = with_app(lambda s: s.executions.pause(execution_id))
    out.print(f"execution {record['id']} is {record['status']}")


@execution_app.command("resume")
def execution_resume(execution_id: Annotated[str, typer.Argument(help="Workflow execution id.")]) -> None:
    """Resume a paused workflow (`squall serve` conducts it on)."""

    async def work(squall: Squall) -> dict[str, Any]:
        squall.executions.executor = None  # the server picks `resuming` up; this process exits now
        return await squall.executions.resume(execution_id)

    record = with_app(work)
    out.print(f"execution {record['id']} is {record['status']}")


@execution_app.command("re-run")
def execution_rerun(
    execution_id: Annotated[str, typer.Argument(help="Execution id.")],
    parameters: Annotated[list[str] | None, typer.Argument(help="Overrides as name=value.")] = None,
    tasks: Annotated[list[str] | None, typer.Option("--tasks", help="Workflows: re-run in place from these "
                                                    "tasks, keeping the others' results.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Run the same action again with the same parameters (overridden by any given)."""
    params = parse_assignments(parameters or [])
    if tasks and params:
        raise fail("Parameters override is not supported when re-running task(s) for a workflow.")

    async def work(squall: Squall) -> dict[str, Any]:
        if tasks:
            record = await squall.workflows.rerun(execution_id, tasks)
            return await squall.executions.wait(record["id"])
        record = await squall.executions.rerun(execution_id, params, {"user": _user(), "source": "cli"})
        return await squall.executions.wait(record["id"])

    record = with_app(work)
    if as_json:
        print_json(record)
    else:
        show_execution(record)
    raise typer.Exit(_exit_for(record))


@action_app.command("list")
def action_list(pack: Annotated[str | None, typer.Option("--pack", help="Only this pack.")] = None,
                as_json: JsonOption = False) -> None:
    """Actions of the loaded packs."""
    from bot.app import load_packs

    registry = load_packs(current_config())
    actions = [a for a in registry.actions.values() if pack in (None, a.pack)]
    actions.sort(key=lambda a: a.ref)
    if pack and pack not in registry.packs:
        raise fail(f"pack '{pack}' is not loaded; loaded packs: {', '.join(sorted(registry.packs))}")
    if as_json:
        print_json([a.summary() for a in actions])
        return
    table = Table("ref", "runner", "description")
    for a in actions:
        table.add_row(a.ref, a.runner_type, a.description)
    out.print(table)


@action_app.command("get")
def action_get(ref: Annotated[str, typer.Argument(help="Action ref.")], as_json: JsonOption = False) -> None:
    """One action with its merged parameter schema."""
    from bot.app import load_packs

    registry = load_packs(current_config())
    try:
        action = registry.action(ref)
    except UnknownAction as exc:
        raise fail(str(exc)) from exc
    if as_json:
        print_json(action.summary())
        return
    out.print(f"[bold]{action.ref}[/bold] ({action.runner_type}) {action.description}")
    table = Table("parameter", "type", "required", "default", "description")
    for name, spec in sorted(action.parameters.items()):
        default = "********" if spec.get("secret") and spec.get("default") is not None else spec.get("default")
        flags = "yes" if spec.get("required") else ""
        table.add_row(name, str(spec.get("type", "")), flags, "" if default is None else json.dumps(default),
                      str(spec.get("description", "")))
    out.print(table)


@app.command()
def chat(
    user: Annotated[str | None, typer.Option("--user", help="Who you are in the chat (default: you).")] = None,
    channel: Annotated[str, typer.Option("--channel", help="The channel you type in.")] = "console",
) -> None:
    """Chat with the bot in the terminal (or feed it lines on standard input)."""
    from bot.service import chat_session

    config = current_config()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(chat_session(config, user or _user(), channel))


@app.command()
def serve() -> None:
    """Run the service: recover pending work, run requested executions, until Ctrl-C."""
    from bot.service import serve_forever

    config = current_config()
    logging.getLogger().setLevel(logging.INFO)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_forever(config, stop_signals=(signal.SIGINT, signal.SIGTERM)))
    except (ConfigError, AdapterConfigError) as exc:  # settings found wanting at start: say which, no traceback
        raise fail(str(exc)) from exc


from bot import (  # noqa: E402, F401  (sub-command groups)
    aliases_cli,
    apikeys_cli,
    inquiries_cli,
    keys_cli,
    packs_cli,
    rules_cli,
)

__all__ = ["app", "keys_cli", "main", "packs_cli"]


def main() -> None:
    app()


if __name__ == "__main__":
    main()
