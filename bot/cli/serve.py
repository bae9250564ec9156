"""`squall serve` and `squall chat`: the long-running service, and the bot in a terminal.

Both hand over to `bot/service.py`, imported when one of them runs: it brings the adapters, the
HTTP server and every runner, which no other command needs.
"""

from __future__ import annotations

from typing import Annotated

import typer

from bot.cli.common import current_config, current_user, fail


def chat(
    user: Annotated[str | None, typer.Option("--user", help="Who you are in the chat (default: you).")] = None,
    channel: Annotated[str, typer.Option("--channel", help="The channel you type in.")] = "console",
) -> None:
    """Chat with the bot in the terminal (or feed it lines on standard input)."""
    import asyncio
    import contextlib

    from bot.service import chat_session

    config = current_config()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(chat_session(config, user or current_user(), channel))


def serve() -> None:
    """Run the service: recover pending work, run requested executions, until Ctrl-C."""
    import asyncio
    import contextlib
    import logging
    import signal

    from adapters.base import AdapterConfigError
    from bot.service import serve_forever
    from engine.config import ConfigError

    config = current_config()
    logging.getLogger().setLevel(logging.INFO)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_forever(config, stop_signals=(signal.SIGINT, signal.SIGTERM)))
    except (ConfigError, AdapterConfigError) as exc:  # settings found wanting at start: say which, no traceback
        raise fail(str(exc)) from exc
