"""`bot.http.server.ApiServer.start` on an address it cannot bind: an OSError its caller can catch, not
uvicorn's SystemExit escaping the event loop (a port taken between the CLI's check and the bind)."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest

from bot.http.server import ApiServer


async def _app(scope, receive, send) -> None:  # never reached: nothing is served
    raise AssertionError("served")


async def test_a_port_taken_is_an_os_error_the_caller_catches() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    squall = SimpleNamespace(config=SimpleNamespace(section=lambda _name: {}))
    server = ApiServer(squall, "127.0.0.1", port, app=_app)
    try:
        with pytest.raises(OSError, match=f"127.0.0.1:{port} could not start"):
            await server.start()
        assert taken.fileno() >= 0  # the holder keeps its port
    finally:
        await server.stop()
        taken.close()
