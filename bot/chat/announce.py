"""Where `chatops.post_message` / `post_result` and notification routes deliver: a chat target.

A named route from config (`routes: {ops: {adapter: irc, channel: "#ops"}}`) wins; otherwise the
message's own adapter and channel; otherwise the chat the execution came from. Everything goes
through the durable outbox: when no adapter runs in this process (a CLI run), the reply waits in
the database until `squall serve` sends it.

A `chatops.post_*` whose adapter is none Squall has configured (Squall with only the console, or
none, behind hubot-stackstorm; a platform Squall is not on) is not Squall's chat's to post: as in
StackStorm, the run succeeds and the stream announces it (hubot posts it), nothing is stored that no
process would ever send, and the log says so once per adapter and channel. "Configured" is read from
the config as well as from the adapters this process holds: a CLI run holds none and a `squall
worker` never connects its own, and what they post must still wait in the outbox for `squall serve`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from adapters.base import Reply
from bot.chat.replies import WHOLE_MESSAGE, WHOLE_OUTPUT, capped, result_message, split_pretext
from engine.events import ANNOUNCE, FORMAT_RESULT
from engine.templates import rendered

if TYPE_CHECKING:
    from bot.chat.index import AliasIndex
    from bot.chat.outbox import Outbox
    from engine.core import Engine
    from engine.runners import RunRequest

log = logging.getLogger(__name__)


class Announcer:
    """Delivers what the `announcement` runner asks (it answers `ANNOUNCE`) and tells the other
    chat parts where a route, an adapter/channel pair or an execution's chat points."""

    def __init__(self, engine: Engine, outbox: Outbox, index: AliasIndex) -> None:
        self.engine = engine
        self.outbox = outbox
        self.index = index
        #: (adapter, channel) pairs already logged as having no target in Squall's chat: said once each.
        self._untargeted: set[tuple[str | None, str]] = set()
        engine.events.subscribe(ANNOUNCE, self.publish)
        engine.events.subscribe(FORMAT_RESULT, self.formatted)

    @property
    def routes(self) -> dict[str, Any]:
        return self.engine.config.section("routes")

    @property
    def configured(self) -> set[str]:
        """The adapters Squall's chat posts through: those this process holds (connected or not, as a
        worker's) and those the config enables (`squall serve` holds them while a CLI run does not)."""
        enabled = {name for name, section in (self.engine.config.section("adapters") or {}).items()
                   if isinstance(section, dict) and section.get("enabled") is True}
        return enabled | set(self.outbox.adapters)

    def target(self, route: str | None, adapter: str | None, channel: str | None,
               chat: dict[str, Any] | None) -> tuple[str, str, str | None]:
        """(adapter, channel, thread) for a message, or LookupError saying what is missing."""
        found, channel, thread = self._resolve(route, adapter, channel, chat)
        if not found or not channel:
            raise LookupError(f"no chat target for route {route!r}: give adapter= and channel=, or configure "
                              f"routes.{route or '<name>'} (known routes: {self._known()})")
        return found, channel, thread

    def _known(self) -> str:
        return ", ".join(sorted(self.routes)) or "none configured"

    def _resolve(self, route: str | None, adapter: str | None, channel: str | None,
                 chat: dict[str, Any] | None) -> tuple[str | None, str | None, str | None]:
        """(adapter, channel, thread) as far as the route, the message and the execution's chat tell."""
        chat = chat or {}
        named = self.routes.get(route) if route else None
        if isinstance(named, dict):
            adapter, channel = named.get("adapter") or adapter, named.get("channel") or channel
        adapter = adapter or chat.get("adapter")
        channel = channel or chat.get("channel")
        thread = chat.get("thread") if chat.get("channel") == channel and chat.get("adapter") == adapter else None
        return (str(adapter) if adapter else None), (str(channel) if channel else None), thread

    def _announced_elsewhere(self, route: str, adapter: str | None, channel: str) -> None:
        """Log, once per adapter and channel, that Squall's chat has no target for a post the stream
        announces: hubot-stackstorm posting it is the normal case, a mistyped adapter is not."""
        if (adapter, channel) in self._untargeted:
            return
        self._untargeted.add((adapter, channel))
        configured = ", ".join(sorted(self.configured)) or "none"
        named = f"its adapter {adapter!r}" if adapter else f"no adapter (none given, in routes.{route} or in its chat)"
        log.info("a chatops.post_* to channel %r is not posted by Squall's chat: it names %s, and the adapters "
                 "Squall has configured are: %s. Stream clients such as hubot-stackstorm get it as "
                 "st2.announcement__%s. For Squall to post it too, give adapter= one of those, set routes.%s, "
                 "or enable that adapter. (Logged once per channel.)", channel, named, configured, route, route)

    async def publish(self, route: str, params: dict[str, Any], request: RunRequest) -> dict[str, Any]:
        """The `announcement` runner's delivery: post_message and post_result (whose formatted text
        comes back under `announced`, for the stream's `st2.announcement__<route>`). What is posted to
        an adapter without files that caps results (IRC) is cut as a result is (`replies.capped`), its
        last line naming the execution that holds the whole: the result's, or post_message's own."""
        if request.action.pack != "chatops":  # `core.announcement`, a pack's own: as StackStorm's runner, the
            return {}                          # stream's alone (hubot-stackstorm posts `chatops.post_*` only)
        chat = (params.get("context") or {}).get("chat") or request.context.get("chat")
        adapter, channel, thread = self._resolve(route, params.get("adapter"), params.get("channel"), chat)
        if not channel:  # StackStorm's post_message and post_result require a channel
            raise LookupError(f"no channel to post to for route {route!r}: give channel= (StackStorm's "
                              f"chatops.post_* require it), or configure routes.{route}.channel (known routes: "
                              f"{self._known()})")
        announced: dict[str, Any] = {}
        if request.action.name == "post_result":
            text, extra = await self._result_text(str(params["execution_id"]))
            if text is None:
                return {"skipped": "the alias turns results off"}
            # The stream's announcement carries the text as StackStorm's post_result hands it to post_message,
            # `{~}` intact for hubot-stackstorm to split; Squall's chat splits its own copy.
            announced = {"message": text, "extra": extra}
            text, extra = split_pretext(text, extra)
            whole = (str(params["execution_id"]), WHOLE_OUTPUT)
        else:
            text, extra = str(params["message"]), params.get("extra") or {}
            whole = (request.execution_id, WHOLE_MESSAGE)
        if adapter not in self.configured:
            self._announced_elsewhere(route, adapter, channel)
            return {"announced": announced} if announced else {}
        user = params.get("user")
        if params.get("whisper") and user:
            channel, thread = str(user), None
        elif user:
            text = f"{user}: {text}"
        # Cut as a command's result is where the platform pays for every line (IRC): only this chat's
        # copy, the stream's announcement (hubot posts it on its own platform) keeps it whole.
        text, extra = capped(self.outbox.adapters.get(str(adapter)), text, extra, *whole)
        reply = Reply(adapter=str(adapter), channel=channel, thread=params.get("thread") or thread, text=text,
                      extra=extra)
        outbox_id = await self.outbox.post(reply)
        return {"adapter": adapter, "channel": channel, "outbox_id": outbox_id,
                **({"announced": announced} if announced else {})}

    async def formatted(self, execution_id: str) -> dict[str, Any]:
        """`chatops.format_execution_result`'s answer (what `st2 action-alias test` prints): the execution's
        result as `post_result` would post it, `{message, extra}` as StackStorm's action returns it (`extra`
        only when the alias gives one); an alias whose results are off refuses it, as StackStorm's does."""
        text, extra = await self._result_text(execution_id)
        if text is None:
            raise ValueError("Output of this template is disabled.")
        return {"message": text, **({"extra": extra} if extra else {})}

    async def _result_text(self, execution_id: str) -> tuple[str | None, dict[str, Any]]:
        """post_result's text and extra for an execution, as its alias formats it (None: results off), its `{~}`
        kept (`result_message`).
        An execution that is not there is `ExecutionNotFound` (a LookupError): the run fails, as StackStorm's
        `format_execution_result` does."""
        execution = await self.engine.executions.get(execution_id)
        context = execution["context"]  # a chat command names its alias; one through the API (hubot's) as StackStorm
        alias_ref = (context.get("chat") or {}).get("alias") or (context.get("action_alias_ref") or {}).get("id")
        return await rendered(result_message, self.index.aliases.get(alias_ref), execution)
