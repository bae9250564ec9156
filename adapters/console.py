"""A chat in the terminal: each line typed is a direct message to the bot; replies are printed.

Used by `squall chat` and by `squall serve` when `adapters.console.enabled` is true, so a newcomer
can type `!help` (or just `help`) the moment the service starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import threading
from typing import Any, TextIO

from adapters.base import AdapterConfigError, Capabilities, Message, MessageHandler, Reply
from engine.config import ADAPTER_KEYS, unknown_key


class ConsoleAdapter:
    name = "console"
    capabilities = Capabilities(threads=False, edits=False, rich=False, files=False, buttons=False,
                                max_length=100_000)

    def __init__(self, user: str, channel: str = "console", *, stdin: TextIO | None = None,
                 stdout: TextIO | None = None, prompt: bool | None = None) -> None:
        self.user = user
        self.channel = channel
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.prompt = self.stdin.isatty() if prompt is None else prompt
        self._ids = itertools.count(1)
        self._reader: asyncio.Task[None] | None = None
        self.finished = asyncio.Event()  # set at the end of input

    async def start(self, on_message: MessageHandler) -> None:
        self._reader = asyncio.create_task(self._read(on_message), name="console-reader")

    async def _read(self, on_message: MessageHandler) -> None:
        try:
            while True:
                if self.prompt:
                    self.stdout.write(f"{self.user}> ")
                    self.stdout.flush()
                line = await self._readline()
                if not line:
                    break
                text = line.rstrip("\n")
                if not text.strip():
                    continue
                await on_message(Message(adapter=self.name, channel=self.channel, user=self.user, text=text,
                                         direct=True, id=f"c{next(self._ids)}"))
        finally:
            self.finished.set()

    async def _readline(self) -> str:
        """The next line of input, read on a daemon thread of its own: a thread of the loop's default
        executor blocked in `readline` held `squall serve` up at exit (asyncio waits for that executor's
        threads) until one more line was typed, whatever SIGTERM said."""
        loop = asyncio.get_running_loop()
        line: asyncio.Future[str] = loop.create_future()

        def read() -> None:
            try:
                text = self.stdin.readline()
            except (OSError, ValueError):  # closed under it: the end of input
                text = ""
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                loop.call_soon_threadsafe(lambda: line.done() or line.set_result(text))

        threading.Thread(target=read, name="console-readline", daemon=True).start()
        return await line

    async def send(self, reply: Reply, edit_of: str | None = None) -> str | None:
        text = reply.text if reply.file is None else f"{reply.text}\n{reply.file[1]}"
        self.stdout.write("".join(f"squall: {line}\n" for line in text.split("\n")))
        self.stdout.flush()
        return f"o{next(self._ids)}"

    async def stop(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()


def create(section: dict[str, Any], config: Any) -> ConsoleAdapter:
    """`adapters.console`: `user` (default: the login name) and `channel` (default `console`); any other
    key is named, with the nearest known one (a misspelt `usr` would chat as the login name)."""
    import getpass

    if (problem := unknown_key("adapters.console", section, ADAPTER_KEYS["console"])) is not None:
        path = getattr(config, "path", None)
        raise AdapterConfigError(f"{path}: {problem}" if path else problem)
    return ConsoleAdapter(user=str(section.get("user") or getpass.getuser()),
                          channel=str(section.get("channel") or "console"))
