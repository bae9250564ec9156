"""Where `chatops.post_message` / `post_result` and notification routes deliver: a chat target.

A named route from config (`routes: {ops: {adapter: irc, channel: "#ops"}}`) wins; otherwise the
message's own adapter and channel; otherwise the chat the execution came from. Everything goes
through the durable outbox: when no adapter runs in this process (a CLI run), the reply waits in
the database until `squall serve` sends it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapters.base import Reply
from bot.chat.replies import render_result
from engine.events import ANNOUNCE
from engine.templates import rendered

if TYPE_CHECKING:
    from bot.chat.index import AliasIndex
    from bot.chat.outbox import Outbox
    from engine.core import Engine
    from engine.runners import RunRequest


class Announcer:
    """Delivers what the `announcement` runner asks (it answers `ANNOUNCE`) and tells the other
    chat parts where a route, an adapter/channel pair or an execution's chat points."""

    def __init__(self, engine: Engine, outbox: Outbox, index: AliasIndex) -> None:
        self.engine = engine
        self.outbox = outbox
        self.index = index
        engine.events.subscribe(ANNOUNCE, self.publish)

    @property
    def routes(self) -> dict[str, Any]:
        return self.engine.config.section("routes")

    def target(self, route: str | None, adapter: str | None, channel: str | None,
               chat: dict[str, Any] | None) -> tuple[str, str, str | None]:
        """(adapter, channel, thread) for a message, or LookupError saying what is missing."""
        chat = chat or {}
        named = self.routes.get(route) if route else None
        if isinstance(named, dict):
            adapter, channel = named.get("adapter") or adapter, named.get("channel") or channel
        adapter = adapter or chat.get("adapter")
        channel = channel or chat.get("channel")
        if not adapter or not channel:
            known = ", ".join(sorted(self.routes)) or "none configured"
            raise LookupError(f"no chat target for route {route!r}: give adapter= and channel=, or configure "
                              f"routes.{route or '<name>'} (known routes: {known})")
        thread = chat.get("thread") if chat.get("channel") == channel and chat.get("adapter") == adapter else None
        return str(adapter), str(channel), thread

    async def publish(self, route: str, params: dict[str, Any], request: RunRequest) -> dict[str, Any]:
        """The `announcement` runner's delivery: post_message and post_result (whose formatted text
        comes back under `announced`, for the stream's `st2.announcement__<route>`)."""
        chat = (params.get("context") or {}).get("chat") or request.context.get("chat")
        adapter, channel, thread = self.target(route, params.get("adapter"), params.get("channel"), chat)
        announced: dict[str, Any] = {}
        if request.action.name == "post_result":
            execution = await self.engine.executions.get(str(params["execution_id"]))
            alias_ref = (execution["context"].get("chat") or {}).get("alias")
            text, extra = await rendered(render_result, self.index.aliases.get(alias_ref), execution)
            if text is None:
                return {"skipped": "the alias turns results off"}
            # The stream's announcement carries the text, as StackStorm's post_result hands it to post_message.
            announced = {"message": text, "extra": extra}
        else:
            text, extra = str(params["message"]), params.get("extra") or {}
        user = params.get("user")
        if params.get("whisper") and user:
            channel, thread = str(user), None
        elif user:
            text = f"{user}: {text}"
        reply = Reply(adapter=adapter, channel=channel, thread=params.get("thread") or thread, text=text,
                      extra=extra)
        outbox_id = await self.outbox.post(reply)
        return {"adapter": adapter, "channel": channel, "outbox_id": outbox_id,
                **({"announced": announced} if announced else {})}
