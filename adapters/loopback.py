"""An in-process chat for tests and benchmarks: inject messages, collect what the bot posts."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

from adapters.base import Capabilities, DeliveryError, Message, MessageHandler, Reply


@dataclass
class Posted:
    """A reply as the loopback platform stored it (edits update `text` in place)."""

    id: str
    reply: Reply
    edits: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.edits[-1] if self.edits else self.reply.text


class LoopbackAdapter:
    """A chat platform that lives in memory, with every capability switched on by default."""

    def __init__(self, name: str = "loopback", capabilities: Capabilities | None = None) -> None:
        self.name = name
        self.capabilities = capabilities or Capabilities(threads=True, edits=True, rich=True, files=True,
                                                         buttons=True, max_length=4000)
        self.posted: list[Posted] = []
        self.failures_to_inject = 0
        self.refusals_to_inject = 0  # permanent failures (an unknown channel, say)
        self._by_id: dict[str, Posted] = {}
        self._ids = itertools.count(1)
        self._handler: MessageHandler | None = None
        self._changed = asyncio.Condition()

    async def start(self, on_message: MessageHandler) -> None:
        self._handler = on_message

    async def stop(self) -> None:
        self._handler = None

    async def say(self, text: str, *, user: str = "alice", channel: str = "#ops", thread: str | None = None,
                  direct: bool = False, mentioned: bool = False, groups: list[str] | None = None,
                  user_id: str | None = None) -> None:
        """A person types `text`; returns once the bot has handled it (not once replies are posted).
        `user_id` is the sender's platform id, as Slack's and Mattermost's adapters set it (read only
        where the adapter is named like one of them: `LoopbackAdapter("slack")`)."""
        assert self._handler is not None, "the loopback adapter is not started"
        message = Message(adapter=self.name, channel=channel, user=user, text=text, thread=thread,
                          direct=direct, mentioned=mentioned, groups=groups or [], id=f"m{next(self._ids)}",
                          user_id=user_id)
        await self._handler(message)

    async def send(self, reply: Reply, edit_of: str | None = None) -> str | None:
        if self.refusals_to_inject > 0:
            self.refusals_to_inject -= 1
            raise DeliveryError("loopback: injected refusal", permanent=True)
        if self.failures_to_inject > 0:
            self.failures_to_inject -= 1
            raise DeliveryError("loopback: injected failure", retry_after=0.01)
        async with self._changed:
            if edit_of is not None and edit_of in self._by_id:
                self._by_id[edit_of].edits.append(reply.text)
                self._changed.notify_all()
                return edit_of
            posted = Posted(id=f"p{next(self._ids)}", reply=reply)
            self.posted.append(posted)
            self._by_id[posted.id] = posted
            self._changed.notify_all()
            return posted.id

    def texts(self, channel: str | None = None) -> list[str]:
        return [p.text for p in self.posted if channel in (None, p.reply.channel)]

    async def wait_for(self, predicate, timeout: float = 10) -> list[Posted]:
        """Wait until `predicate(posted)` is true for the list of posted replies."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: predicate(self.posted)), timeout)
        return self.posted
