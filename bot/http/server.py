"""`ApiServer`: the API under uvicorn on the service's own loop, so routes call the engine directly,
with no thread or process hop between HTTP and chat."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from bot.http.app import create_api

#: How long `stop()` lets requests still running finish before uvicorn cancels them: a backstop, for a
#: stream the shutdown flag below does not reach (one that is not sse-starlette's) or a slow request.
GRACEFUL_SHUTDOWN_SECONDS = 10


class ApiServer:
    """The API under uvicorn on the running loop: `start()` makes `serve()` a task, `stop()` ends it."""

    def __init__(self, squall: Any, host: str | None = None, port: int | None = None, app: Any = None) -> None:
        """`app`: another ASGI app than the API over `squall` (a worker's health port)."""
        import uvicorn  # only `squall serve` needs it, not every import of the API

        section = squall.config.section("api")
        self.host = host or str(section.get("host", "127.0.0.1"))
        self.port = int(port if port is not None else section.get("port", 9101))
        # No logging config of uvicorn's own: its handlers print text past `logging.format: json` and
        # its level would override `logging.libraries` (engine/logs.py sets both for its loggers).
        config = uvicorn.Config(app or create_api(squall), host=self.host, port=self.port, log_config=None,
                                log_level=None, lifespan="off", access_log=False,
                                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS)
        self.server = uvicorn.Server(config)
        # The service owns SIGINT/SIGTERM (loop.add_signal_handler): uvicorn must not replace them.
        self.server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
        self.task: Any = None

    async def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._serve(), name="squall-api")
        while not self.server.started:
            if self.task.done():
                self.task.result()  # raises what stopped it (a port in use: `_serve`'s OSError)
                raise RuntimeError(f"the API server on {self.host}:{self.port} stopped while starting")
            await asyncio.sleep(0.01)

    async def _serve(self) -> None:
        """uvicorn's `serve`, its exit turned into the OSError it stands for. uvicorn calls `sys.exit(3)`
        when it cannot bind (a port taken after the caller's check, `bot.cli.serve._probe_listen`), and
        asyncio re-raises a task's SystemExit out of the event loop, past `start`'s caller: the process
        ended with two tracebacks and nothing of it closed. Its own log line has said why by then."""
        try:
            await self.server.serve()
        except SystemExit as exc:
            raise OSError(f"the server on {self.host}:{self.port} could not start (uvicorn exited with "
                          f"{exc.code}): the address is in use, or not this machine's") from None

    async def stop(self) -> None:
        """Stop serving, ending the live streams (server-sent events) still open.

        uvicorn waits for every open connection to finish, and a live page's stream never does by itself
        (it pings until the browser leaves). sse-starlette ends its streams when its `AppStatus.should_exit`
        is set, which it does itself only from uvicorn's signal handler, and the service owns the signals
        (`capture_signals` above): so it is set here, for as long as this server stops, then lowered again
        for a server started later in the same process (a test's)."""
        if self.task is None:
            return
        from sse_starlette.sse import AppStatus

        self.server.should_exit = True
        AppStatus.should_exit = True
        try:
            with contextlib.suppress(Exception, SystemExit):
                await self.task
        finally:
            AppStatus.should_exit = False
        self.task = None
