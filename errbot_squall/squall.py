"""Squall inside errbot: any errbot backend (XMPP, Telegram, Discord, IRC, ...) reaches Squall's
action aliases, their results and notification routes.

errbot has no asyncio loop: backends run `serve_forever()` in errbot's main thread and plugin
callbacks run on errbot's thread pool. Squall is asyncio from end to end, so the plugin owns one
background thread with its own event loop and runs the whole `squall serve` there
(`bot.service.serve_forever`, with an `ErrbotAdapter` as its chat adapter): executions, the outbox,
rules and (unless `api.enabled: false`) the HTTP API behave exactly as in `squall serve`. Messages
cross into that loop with `run_coroutine_threadsafe`; replies cross back with `asyncio.to_thread`
calling errbot's thread-safe `BotPlugin.send`, so neither side ever blocks the other.

What reaches Squall:
- `!squall <command>`: always (errbot's own commands such as `!help` and `!echo` win otherwise);
- `!<command>` that no errbot command claims (a cmdfilter for unprocessed commands), so Squall's
  aliases answer to `!deploy web` directly; set errbot's `SUPPRESS_CMD_NOT_FOUND = True` so errbot
  does not also say "Command not found";
- a direct message, a message addressed to Squall's `chat.bot_name` (`squall: status`) or starting
  with Squall's own `chat.prefix` when that differs from errbot's prefix.

Unless Squall's config sets `chat.prefix`, it becomes `!squall ` (errbot's prefix + `squall `), so
Squall's help lists `!squall deploy {{env}}` and its hints say `!squall help`.

Squall's config file: the plugin's config `{"SQUALL_CONFIG": "/path/config.yml"}` (`!plugin config
Squall ...`), else errbot's config.py `SQUALL_CONFIG`, else the environment `SQUALL_CONFIG`, else
`./config.yml` or the built-in defaults. Notification routes name this adapter
(`routes: {ops: {adapter: errbot, channel: "#ops"}}`); the channel is turned into an errbot
identifier with `build_identifier`.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import re
import threading
from typing import Any

from errbot import BotPlugin, botcmd, cmdfilter

from adapters.base import Capabilities, DeliveryError, Message, MessageHandler, Reply
from bot.chat.dispatcher import ChatSettings
from engine.config import Config, load_config

log = logging.getLogger("squall.errbot")
START_TIMEOUT = 60.0
#: Identifiers remembered per channel string so replies go back to the exact room/person object.
MAX_IDENTIFIERS = 10_000


class ErrbotAdapter:
    """Squall's side of the bridge: errbot messages in, `BotPlugin.send` out."""

    def __init__(self, plugin: BotPlugin, name: str = "errbot") -> None:
        self.name = name
        self._plugin = plugin
        limit = int(getattr(plugin.bot_config, "MESSAGE_SIZE_LIMIT", 0) or 10_000)
        # errbot renders markdown per backend and splits at MESSAGE_SIZE_LIMIT itself.
        self.capabilities = Capabilities(threads=False, edits=False, rich=True, files=False, buttons=False,
                                         max_length=limit)
        self._identifiers: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._handler: MessageHandler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids = itertools.count(1)
        self.ready = threading.Event()
        #: (channel, identifier, text) of recent deliveries, for operators and tests.
        self.delivered: collections.deque[tuple[str, Any, str]] = collections.deque(maxlen=200)

    async def start(self, on_message: MessageHandler) -> None:
        self._handler = on_message
        self._loop = asyncio.get_running_loop()
        self.ready.set()

    async def stop(self) -> None:
        self.ready.clear()
        self._handler = None

    def submit(self, msg: Any, text: str, *, mentioned: bool) -> bool:
        """Hand an errbot message to Squall's dispatcher (called on errbot's threads); False if Squall is
        not running."""
        handler, loop = self._handler, self._loop
        if handler is None or loop is None or loop.is_closed():
            return False
        direct = bool(msg.is_direct)
        origin = msg.frm if direct else msg.to
        channel = str(origin)
        self._remember(channel, origin)
        frm = msg.frm
        user = str(getattr(frm, "person", None) or getattr(frm, "nick", None) or frm)
        message = Message(adapter=self.name, channel=channel, user=user, text=text, mentioned=mentioned,
                          direct=direct, id=f"e{next(self._ids)}", raw=msg)
        future = asyncio.run_coroutine_threadsafe(handler(message), loop)
        future.add_done_callback(_log_failure)
        return True

    def _remember(self, channel: str, identifier: Any) -> None:
        self._identifiers[channel] = identifier
        self._identifiers.move_to_end(channel)
        while len(self._identifiers) > MAX_IDENTIFIERS:
            self._identifiers.popitem(last=False)

    async def send(self, reply: Reply, edit_of: str | None = None) -> str | None:
        identifier = self._identifiers.get(reply.channel)
        try:
            if identifier is None:  # a notification route, or a reply after a restart
                identifier = self._plugin.build_identifier(reply.channel)
            text = reply.text if reply.file is None else f"{reply.text}\n{reply.file[1]}"
            await asyncio.to_thread(self._plugin.send, identifier, text)
        except Exception as exc:
            raise DeliveryError(f"errbot: sending to {reply.channel!r} failed: {exc}") from exc
        self.delivered.append((reply.channel, identifier, reply.text))
        return f"e{next(self._ids)}"


def _log_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("Squall failed on a message from errbot: %s", future.exception())


class SquallThread:
    """`squall serve` on an event loop of its own, in a daemon thread the plugin starts and stops."""

    def __init__(self, config: Config, adapters: list[Any]) -> None:
        self.config = config
        self.adapters = adapters
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="squall", daemon=True)

    def start(self, ready: threading.Event, timeout: float = START_TIMEOUT) -> None:
        """Start, and return once `ready` is set (the errbot adapter listens); raise if Squall failed."""
        self._thread.start()
        deadline = threading.Event()
        for _ in range(int(timeout * 20)):
            if ready.is_set() or self.done.is_set():
                break
            deadline.wait(0.05)
        if self.error is not None:
            raise RuntimeError(f"Squall did not start: {self.error}") from self.error
        if not ready.is_set():
            self.stop()
            raise RuntimeError(f"Squall did not start within {timeout:g}s")

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main())
        finally:
            try:
                # As asyncio.run does: any task still pending is cancelled and awaited here, never
                # destroyed with the closed loop (an outbox sender once was, in a full test run).
                left = asyncio.all_tasks(loop)
                for task in left:
                    task.cancel()
                if left:
                    loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()
                self.done.set()

    async def _main(self) -> None:
        from bot.service import configured_adapters, serve_forever

        self._task = asyncio.current_task()
        self._started.set()
        try:
            # Platforms Squall speaks itself (IRC, Slack, ...) may run alongside; the terminal chat may not.
            others = [a for a in configured_adapters(self.config) if a.name != "console"]
            await serve_forever(self.config, adapters=[*others, *self.adapters])
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # reported to start() and the log; errbot itself stays up
            self.error = exc
            log.exception("Squall stopped with an error")

    def stop(self, timeout: float = 30) -> None:
        if not self._thread.is_alive():
            return
        self._started.wait(timeout)
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("Squall did not stop within %.0fs", timeout)


class Squall(BotPlugin):
    """Run Squall's ChatOps (action aliases, results, notifications) in errbot."""

    adapter: ErrbotAdapter | None = None
    runner: SquallThread | None = None

    def get_configuration_template(self) -> dict[str, str]:
        return {"SQUALL_CONFIG": "/etc/squall/config.yml"}

    def _config_path(self) -> str | None:
        own = (self.config or {}).get("SQUALL_CONFIG") if isinstance(self.config, dict) else None
        return own or getattr(self.bot_config, "SQUALL_CONFIG", None) or os.environ.get("SQUALL_CONFIG") or None

    def activate(self) -> None:
        config = load_config(self._config_path())
        chat = config.raw.setdefault("chat", {}) if isinstance(config.raw.get("chat"), dict | None) else {}
        if chat.get("prefix") is None:
            # Squall's help and hints then read `!squall deploy web`, which always reaches Squall, and
            # never point at errbot's own `!help` or `!echo`.
            chat["prefix"] = f"{self.bot_config.BOT_PREFIX}squall "
        self.chat = ChatSettings.from_config(config.section("chat"))
        self.adapter = ErrbotAdapter(self)
        self.runner = SquallThread(config, [self.adapter])
        self.runner.start(self.adapter.ready)
        super().activate()

    def deactivate(self) -> None:
        if self.runner is not None:
            self.runner.stop()
            self.runner = None
        super().deactivate()

    def _forward(self, msg: Any, text: str, mentioned: bool) -> str | None:
        if self.adapter is None or not self.adapter.submit(msg, text, mentioned=mentioned):
            return "Squall is not running (see the errbot log)."
        return None

    @botcmd
    def squall(self, msg: Any, args: str) -> str | None:
        """Send a command to Squall: `!squall help`, `!squall deploy web`."""
        return self._forward(msg, args or "", mentioned=True)

    @cmdfilter(catch_unprocessed=True)
    def squall_commands(self, msg: Any, cmd: Any, args: Any, dry_run: bool, emptycmd: bool = False) -> Any:
        """A `!command` errbot does not know goes to Squall (the filter passes known commands through)."""
        if not emptycmd:
            return msg, cmd, args
        if not dry_run:
            reply = self._forward(msg, self._strip_errbot_prefix(msg.body), mentioned=True)
            if reply:
                return reply
        return None

    def callback_message(self, msg: Any) -> None:
        """Direct messages, `squall: ...` and Squall's own prefix, when errbot did not take them as commands."""
        body = msg.body or ""
        if self._errbot_took(msg, body):
            return
        prefix, name = self.chat.prefix, self.chat.bot_name
        mentioned = bool(name and re.match(rf"^@?{re.escape(name)}\b[:,]?", body, re.IGNORECASE))
        if msg.is_direct or mentioned or (prefix and body.startswith(prefix)):
            reply = self._forward(msg, body, mentioned=mentioned)
            if reply:
                self.send(msg.frm if msg.is_direct else msg.to, reply)

    def _errbot_took(self, msg: Any, body: str) -> bool:
        """Whether errbot's own parsing handled this (a command, or the unknown-command filter above)."""
        config = self.bot_config
        if body.startswith(config.BOT_PREFIX):
            return True
        alt = tuple(getattr(config, "BOT_ALT_PREFIXES", ()) or ())
        folded = body.lower() if getattr(config, "BOT_ALT_PREFIX_CASEINSENSITIVE", False) else body
        if alt and folded.startswith(alt):
            return True
        return bool(msg.is_direct and getattr(config, "BOT_PREFIX_OPTIONAL_ON_CHAT", False))

    def _strip_errbot_prefix(self, body: str) -> str:
        config = self.bot_config
        text = body.strip()
        alts = sorted((getattr(config, "BOT_ALT_PREFIXES", ()) or ()), key=len, reverse=True)
        for prefix in (config.BOT_PREFIX, *alts):
            if prefix and text.lower().startswith(prefix.lower()):
                text = text[len(prefix):]
                for sep in getattr(config, "BOT_ALT_PREFIX_SEPARATORS", ()) or ():
                    if text.startswith(sep):
                        text = text[len(sep):]
                        break
                break
        return text.strip()
