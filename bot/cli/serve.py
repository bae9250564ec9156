"""`squall serve`, `squall worker` and `squall chat`: the long-running service, the process that runs
queued executions on any machine (`executor.kind: procrastinate`), and the bot in a terminal.

They hand over to `bot/service.py` and `bot/worker.py`, imported when one of them runs: they bring
the adapters, the HTTP server and every runner, which no other command needs.
"""

from __future__ import annotations

from typing import Annotated

import typer

from bot.cli.common import current_config, current_user, fail, log_level, one_shot


def chat(
    user: Annotated[str | None, typer.Option("--user", help="Who you are in the chat (default: you).")] = None,
    channel: Annotated[str, typer.Option("--channel", help="The channel you type in.")] = "console",
) -> None:
    """Chat with the bot in the terminal (or feed it lines on standard input)."""
    import asyncio
    import contextlib

    from bot.service import chat_session

    config = current_config()
    one_shot()  # standard output is the conversation, not the audit stream
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(chat_session(config, user or current_user(), channel))


def serve() -> None:
    """Run the service: recover pending work, run requested executions, until Ctrl-C."""
    import asyncio
    import contextlib
    import signal

    from adapters.base import AdapterConfigError
    from bot.service import serve_forever
    from engine.config import ConfigError
    from engine.logs import configure as configure_logging

    config = current_config()
    try:
        configure_logging(config, log_level())
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_forever(config, stop_signals=(signal.SIGINT, signal.SIGTERM)))
    except (ConfigError, AdapterConfigError) as exc:  # settings found wanting at start: say which, no traceback
        raise fail(str(exc)) from exc


def worker(
    queues: Annotated[str | None, typer.Option("--queues", help="Comma-separated queues to take jobs from "
                                                                "(default: all).")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Jobs run at once.")] = 4,
    drain: Annotated[float, typer.Option("--drain", min=0, help="Seconds running actions get to finish after "
                                                                "SIGTERM.")] = 600.0,
    health_port: Annotated[int | None, typer.Option("--health-port", min=1, max=65535, help="Answer GET /healthz "
                                                    "and /metrics on this port (default: no HTTP at all).")] = None,
    health_host: Annotated[str, typer.Option("--health-host", help="Address of the health port.")] = "127.0.0.1",
) -> None:
    """Run queued executions (executor.kind: procrastinate): on any machine that reaches the database."""
    import asyncio

    from bot.worker import work
    from engine.config import ConfigError
    from engine.logs import configure as configure_logging

    config = current_config()
    names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    try:
        configure_logging(config, log_level())
        health = (health_host, health_port) if health_port is not None else None
        asyncio.run(work(config, names, concurrency, drain, health))
    except ConfigError as exc:
        raise fail(str(exc)) from exc
