"""`ApiServer`: the API under uvicorn on the service's own loop, so routes call the engine directly,
with no thread or process hop between HTTP and chat."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from bot.http.app import create_api


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
                                log_level=None, lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        # The service owns SIGINT/SIGTERM (loop.add_signal_handler): uvicorn must not replace them.
        self.server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
        self.task: Any = None

    async def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.server.serve(), name="squall-api")
        while not self.server.started:
            if self.task.done():
                self.task.result()  # raises what stopped it (a port in use: SystemExit from uvicorn)
                raise RuntimeError(f"the API server on {self.host}:{self.port} stopped while starting")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self.task is None:
            return
        self.server.should_exit = True
        with contextlib.suppress(Exception, SystemExit):
            await self.task
        self.task = None
