"""A chat in the terminal: each line typed is a direct message to the bot; replies are printed.

Used by `squall chat` and by `squall serve` when `adapters.console.enabled` is true, so a newcomer
can type `!help` (or just `help`) the moment the service starts.

Under `squall serve` (`serve=True`) the chat is a side door of a service that keeps running: a serve started
in the background of its terminal (`squall serve &`, or sent there with Ctrl-Z and `bg`) does not read the
terminal, since a read there stops the whole process (SIGTTIN) with the API and every other adapter, and the
end of input says that Squall keeps running. Under `squall chat` the terminal is the session: a background
chat is stopped by its shell as any interactive program, and the end of input ends it. `quit` or `exit` (the
dispatcher's `leave`, where no alias claims the word) is the end of input typed.

Replies are written as they read in a terminal, which shows markup as typed (`terminal_lines`), each line
after the speaker's tag (`SPEAKER`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import select
import signal
import sys
import threading
from typing import Any, TextIO

from adapters.base import AdapterConfigError, Capabilities, Message, MessageHandler, Reply
from adapters.markup import ZERO_WIDTH_SPACE
from engine.config import ADAPTER_KEYS, unknown_key

log = logging.getLogger(__name__)

#: How often a serve console in the background looks whether it is back in the foreground (`fg`).
FOREGROUND_POLL_SECONDS = 1.0
#: What each line of a reply is written after: who speaks, as the prompt (`ops> `) marks the person's lines.
SPEAKER = "squall: "
#: Where a fenced block's lines start (after `SPEAKER`): indented, as Markdown's indented code.
CODE_INDENT = "    "
#: A line that opens a Markdown code fence (three backticks, maybe an info string: ```json); only a bare
#: ``` closes one.
_FENCE = re.compile(r"\s*```[\w+.#-]*\s*")
#: A zero-width space between backticks: how `adapters.markup.code_block` keeps a run of them from closing
#: its fence on a platform; the terminal has no markup, so the run is shown as it was.
_SPLIT_RUN = re.compile(f"(?<=`){ZERO_WIDTH_SPACE}(?=`)")


def terminal_lines(text: str) -> list[str]:
    """A reply's text (chat Markdown) as lines that read well in a terminal, which shows markup as typed:
    a fenced block's lines indented by `CODE_INDENT`, without its fence lines (a line of three backticks
    says nothing to a reader); the rest as it is. Inline code spans keep their backticks, which read as
    quotes in a terminal (I don't know `quit`), as do a person's own backticks outside a fence."""
    lines: list[str] = []
    fenced = False
    for line in text.split("\n"):
        if _FENCE.fullmatch(line) and (not fenced or line.strip() == "```"):
            fenced = not fenced
            continue
        lines.append(f"{CODE_INDENT}{_SPLIT_RUN.sub('', line)}" if fenced and line else line)
    return lines


def tagged(line: str) -> str:
    """`line` after the speaker's tag, or after blank space as wide where the line starts with the tag's
    word itself: `help`'s header of the `squall` pack read `squall: squall:`, as if said twice."""
    return f"{' ' * len(SPEAKER) if line.startswith(SPEAKER.rstrip()) else SPEAKER}{line}\n"


class ConsoleAdapter:
    name = "console"
    capabilities = Capabilities(threads=False, edits=False, rich=False, files=False, buttons=False,
                                max_length=100_000)

    def __init__(self, user: str, channel: str = "console", *, stdin: TextIO | None = None,
                 stdout: TextIO | None = None, prompt: bool | None = None, serve: bool = False) -> None:
        self.user = user
        self.channel = channel
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.prompt = self.stdin.isatty() if prompt is None else prompt
        self.serve = serve  # `squall serve`'s console: the service outlives it (module docstring)
        self._ids = itertools.count(1)
        self._reader: asyncio.Task[None] | None = None
        self._leaving = False  # `quit` or `exit` was typed (`leave`)
        self.finished = asyncio.Event()  # set at the end of input

    async def start(self, on_message: MessageHandler) -> None:
        if self.serve and self.prompt and not self.in_background():  # a person at the terminal: how to chat, to stop
            self._say(f"Console chat as {self.user}: type !help; Ctrl-C stops Squall.\n")
        self._reader = asyncio.create_task(self._read(on_message), name="console-reader")

    async def _read(self, on_message: MessageHandler) -> None:
        try:
            while True:
                if self.serve:
                    await self._until_foreground()
                if self.prompt and not self._line_waiting():
                    self.stdout.write(f"{self.user}> ")
                    self.stdout.flush()
                line = await self._readline()
                if line is None:  # sent to the background while it waited: not the end of input
                    continue
                if not line:
                    self._stopped("Input closed: the console chat stopped")
                    break
                text = line.rstrip("\n")
                if not text.strip():
                    continue
                await on_message(Message(adapter=self.name, channel=self.channel, user=self.user, text=text,
                                         direct=True, id=f"c{next(self._ids)}"))
                if self._leaving:
                    self._stopped("The console chat stopped")
                    break
        finally:
            self.finished.set()

    def leave(self) -> None:
        """`quit` or `exit` was typed: the dispatcher calls this where no alias claims the word (so a pack's
        `quit` alias still runs). The console reads no more once the line is handled, as at the end of
        input: `squall chat` ends; under `squall serve`, whose other fronts go on, it says so."""
        self._leaving = True

    def _stopped(self, what: str) -> None:
        """Under `squall serve`, say that the console chat stopped (`what`), that Squall keeps running, and
        how to stop it: Ctrl-C from its terminal, else SIGTERM. `squall chat` ends without a word."""
        if self.serve:
            stop = "Ctrl-C" if self.prompt else "SIGTERM"
            self._say(f"{what}; Squall keeps running ({stop} stops it)\n")

    def _line_waiting(self) -> bool:
        """Whether a line typed ahead is already waiting to be read (at a terminal, which hands lines over
        whole): one typed while the console was in the background, or while it handled the last. Its echo is
        on the screen already and the read returns at once, so a prompt written before the read landed after
        that echo with nothing typed behind it, and the next prompt beside it: `ops> ops> ` after `fg`."""
        try:
            return bool(select.select([self.stdin], [], [], 0)[0])
        except (OSError, ValueError, TypeError):  # no descriptor (tests' StringIO), or closed
            return False

    def _say(self, text: str) -> None:
        """A line of the console's own; a terminal gone (hung up, closed) has nobody to tell."""
        with contextlib.suppress(OSError, ValueError):
            self.stdout.write(text)
            self.stdout.flush()

    def in_background(self) -> bool:
        """Whether stdin is this process's controlling terminal and another process group is in its
        foreground (`squall serve &`, or Ctrl-Z and `bg`): a read there would stop the whole process with
        SIGTTIN. Not a terminal, or not ours (`setsid`, no job control): reading it is harmless."""
        try:
            fd = self.stdin.fileno()
            return os.isatty(fd) and os.tcgetpgrp(fd) != os.getpgrp()
        except (OSError, ValueError, AttributeError):  # no descriptor (tests' StringIO), closed, or not our tty
            return False

    async def _until_foreground(self) -> None:
        """While `squall serve` runs in the background of its terminal, leave the terminal alone (one
        warning each time it goes there) and look again every `FOREGROUND_POLL_SECONDS`: `fg` brings the
        chat back."""
        if not self.in_background():
            return
        log.warning("the console chat is off: Squall runs in the background of its terminal, and reading the "
                    "terminal there would stop the whole process; bring it to the foreground (`fg`), start "
                    "`squall serve` in the foreground, or chat with `squall chat` in another terminal")
        while self.in_background():
            await asyncio.sleep(FOREGROUND_POLL_SECONDS)

    async def _readline(self) -> str | None:
        """The next line of input, read on a daemon thread of its own: a thread of the loop's default
        executor blocked in `readline` held `squall serve` up at exit (asyncio waits for that executor's
        threads) until one more line was typed, whatever SIGTERM said.

        Under `squall serve` that thread blocks SIGTTIN (the mask is its own): a read it started in the
        foreground and that goes on in the background (Ctrl-Z, `bg`) then fails with EIO instead of
        stopping the process; None says so."""
        loop = asyncio.get_running_loop()
        line: asyncio.Future[str | None] = loop.create_future()

        def read() -> None:
            text: str | None
            try:
                if self.serve:
                    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTIN})
                text = self.stdin.readline()
            except (OSError, ValueError):  # closed under it: the end of input, unless sent to the background
                text = None if self.serve and self.in_background() else ""
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                loop.call_soon_threadsafe(lambda: line.done() or line.set_result(text))

        threading.Thread(target=read, name="console-readline", daemon=True).start()
        return await line

    async def send(self, reply: Reply, edit_of: str | None = None) -> str | None:
        text = reply.text if reply.file is None else f"{reply.text}\n{reply.file[1]}"
        self.stdout.write("".join(tagged(line) for line in terminal_lines(text)))
        self.stdout.flush()
        return f"o{next(self._ids)}"

    async def stop(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()


def create(section: dict[str, Any], config: Any) -> ConsoleAdapter:
    """`adapters.console`: `user` (default: the login name) and `channel` (default `console`); any other
    key is named, with the nearest known one (a misspelt `usr` would chat as the login name). Only a service
    builds it this way (`squall serve`'s configured adapters), hence `serve=True`; `squall chat` builds its own."""
    import getpass

    if (problem := unknown_key("adapters.console", section, ADAPTER_KEYS["console"])) is not None:
        path = getattr(config, "path", None)
        raise AdapterConfigError(f"{path}: {problem}" if path else problem)
    return ConsoleAdapter(user=str(section.get("user") or getpass.getuser()),
                          channel=str(section.get("channel") or "console"), serve=True)
