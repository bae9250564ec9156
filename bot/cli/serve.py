"""`squall serve`, `squall worker` and `squall chat`: the long-running service, the process that runs
queued executions on any machine (`executor.kind: procrastinate`), and the bot in a terminal.

They hand over to `bot/service.py` and `bot/worker.py`, imported when one of them runs: they bring
the adapters, the HTTP server and every runner, which no other command needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from bot.cli.common import SETUP_FAILED, current_config, current_user, fail, log_level, one_shot, setup_errors

if TYPE_CHECKING:
    from engine.config import Config


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
    with contextlib.suppress(KeyboardInterrupt), setup_errors(config):
        asyncio.run(chat_session(config, user or current_user(), channel))


def serve() -> None:
    """Run the service: recover pending work, run requested executions, until Ctrl-C."""
    from bot.heap import collections_held

    with collections_held():  # from before the imports until serve_forever settles the heap, once it serves
        _serve()


def _serve() -> None:
    import asyncio
    import contextlib
    import signal

    from adapters.base import AdapterConfigError
    from bot.service import serve_forever
    from engine.config import ConfigError
    from engine.logs import configure as configure_logging

    config = current_config()
    _check_api_address(config)
    try:
        configure_logging(config, log_level())
        with contextlib.suppress(KeyboardInterrupt), setup_errors(config):
            asyncio.run(serve_forever(config, stop_signals=(signal.SIGINT, signal.SIGTERM)))
    except (ConfigError, AdapterConfigError) as exc:  # settings found wanting at start: say which, no traceback
        raise fail(str(exc)) from exc


def _check_api_address(config: Config) -> None:
    """Exit 3 with one line if the API's address cannot be listened on (the port in use, an address not
    this machine's, a port below 1024 without the right). Checked before anything starts: uvicorn, finding
    it so, raises SystemExit inside its task, which ended serve with its error, a "Task exception was never
    retrieved" traceback and exit 3 besides. Bound then let go (`_probe_listen`). A port that is no port
    (out of 1 to 65535) exits 2 naming `api.port`: asked to bind it, the socket raised OverflowError (70000),
    or getaddrinfo an error worded as a busy port (-1)."""
    from bot.service import api_enabled
    from engine.config import ConfigError, api_port

    try:
        if not api_enabled(config):
            return
        section = config.section("api")
        port = api_port(section, config.path)  # load_config checked it; settings changed in code are not
    except ConfigError as exc:
        raise fail(str(exc)) from None
    host = str(section.get("host", "127.0.0.1"))
    try:
        _probe_listen(host, port)
    except OverflowError as exc:  # a port out of range that got here all the same: the key, not a traceback
        raise fail(f"{config.path}: 'api.port' must be a port number from 1 to 65535, not {port!r} ({exc})") \
            from None
    except OSError as exc:
        where = config.path or "the config"
        raise fail(f"api.port {port}: cannot listen on {host}:{port}: {exc.strerror or exc}; stop what listens "
                   f"there (ss -ltnp 'sport = :{port}' names it), or set another api.port or api.host in {where} "
                   "(api.enabled: false serves without the web UI and API)", SETUP_FAILED) from None


def _probe_listen(host: str, port: int) -> None:
    """Bind `host`:`port` as asyncio's server binds (SO_REUSEADDR, IPv6 only on IPv6 sockets), then let
    go: raises the OSError uvicorn would meet (in use, not this machine's address, no right to a port
    below 1024), or OverflowError for a port out of range. `squall serve`'s API and `squall worker`'s
    health port are checked so before anything starts, since uvicorn turns the failure into SystemExit
    inside its own task, which the caller cannot catch (`_check_api_address`)."""
    import socket

    for family, kind, proto, _name, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                                   flags=socket.AI_PASSIVE):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind(address)


def worker(
    queues: Annotated[str | None, typer.Option("--queues", help="Comma-separated queues to take jobs from "
                                                                "(default, without --queues: all).")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Jobs run at once.")] = 4,
    drain: Annotated[float | None, typer.Option("--drain", min=0, help="Seconds running actions get to finish "
                                                                       "after SIGTERM (default: the config's "
                                                                       "executor.shutdown_grace).")] = None,
    health_port: Annotated[int | None, typer.Option("--health-port", min=1, max=65535, help="Answer GET /healthz "
                                                    "and /metrics on this port (default: no HTTP at all).")] = None,
    health_host: Annotated[str, typer.Option("--health-host", help="Address of the health port.")] = "127.0.0.1",
) -> None:
    """Run queued executions (executor.kind: procrastinate): on any machine that reaches the database."""
    from bot.heap import collections_held

    with collections_held():  # from before the imports until work settles the heap, once it takes jobs
        _work(queues, concurrency, drain, health_port, health_host)


def _work(queues: str | None, concurrency: int, drain: float | None, health_port: int | None,
          health_host: str) -> None:
    import asyncio

    from bot.worker import work
    from engine.config import ConfigError
    from engine.logs import configure as configure_logging

    config = current_config()
    names = _queue_names(queues)
    health = (health_host, health_port) if health_port is not None else None
    if health is not None:  # before any job is taken: uvicorn's failure to bind cannot be caught (`_probe_listen`)
        try:
            _probe_listen(*health)
        except OSError as exc:
            raise fail(f"--health-port {health_port}: cannot listen on {health_host}:{health_port} (in use, or not "
                       f"this machine's address): {exc.strerror or exc}; stop what listens there (ss -ltnp "
                       f"'sport = :{health_port}' names it), or give another --health-port or --health-host",
                       SETUP_FAILED) from None
    try:
        configure_logging(config, log_level())
        with setup_errors(config):
            asyncio.run(work(config, names, concurrency, drain, health))
    except ConfigError as exc:
        raise fail(str(exc)) from exc


def _queue_names(queues: str | None) -> list[str] | None:
    """The queues `--queues` names; None (every queue) only when it is not given. A value that names none
    (`""`, `" , "`: an unset shell variable, a template left empty) exits 2: taken for "all", it made a
    zone-a worker run zone-b's actions."""
    if queues is None:
        return None
    names = [q.strip() for q in queues.split(",") if q.strip()]
    if not names:
        raise fail(f"--queues {queues!r} names no queue; name the queues to take jobs from (--queues zone-a or "
                   "--queues zone-a,default), or leave --queues out to take jobs from every queue")
    return names
