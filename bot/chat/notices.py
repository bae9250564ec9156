"""`notify` messages to chat routes: the chat side of action notifications (spec §4).

The engine publishes `NOTIFICATION_DUE` with an execution's rendered messages
(`engine/notifications.py`); a route that names a configured chat target (`routes:` in config)
gets them there. A route's messages are stored keyed (execution_id, "notify:<route>"), in one
transaction: stored once, whoever tries. A crash between an execution's final status and its
notification, or a process with no chat side (a worker), is made up for by `post_missing` (the
chat's sweep), which stores the chat messages still owed, at most once, and fires the action and
notify triggers still owed (`Notifier.fire_missing`: keyed, so once, whoever fires them).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from adapters.base import Reply
from bot.chat.replies import WHOLE_NOTICE, capped
from engine.events import NOTIFICATION_DUE
from engine.executions import COMPLETED, public
from engine.notifications import by_route
from engine.templates import rendered

if TYPE_CHECKING:
    from bot.chat.announce import Announcer
    from bot.chat.outbox import Outbox
    from engine.core import Engine

log = logging.getLogger(__name__)


class Notices:
    def __init__(self, engine: Engine, announcer: Announcer, outbox: Outbox) -> None:
        self.engine = engine
        self.announcer = announcer
        self.outbox = outbox
        engine.events.subscribe(NOTIFICATION_DUE, self.on_due)

    async def on_due(self, execution: dict[str, Any], told: list[tuple[str, str]]) -> None:
        for route, texts in by_route(told).items():
            await self._deliver(route, texts, execution)

    async def _deliver(self, route: str, texts: list[str], execution: dict[str, Any]) -> bool:
        """Store a route's messages keyed (execution, "notify:<route>"); whether they were stored now.
        Each is cut as a result is where every line costs the platform's pace (IRC, `replies.capped`)."""
        if route not in self.announcer.routes:
            log.debug("notify route %r is not a configured chat route; left to rules", route)
            return False
        adapter, channel, thread = self.announcer.target(route, None, None, execution["context"].get("chat"))
        held = self.outbox.adapters.get(adapter)
        replies = [Reply(adapter=adapter, channel=channel, thread=thread,
                         text=capped(held, text, {}, execution["id"], WHOLE_NOTICE)[0]) for text in texts]
        return await self.outbox.post_keyed(execution["id"], f"notify:{route}", replies) is not None

    async def post_missing(self, since: datetime) -> int:
        """The sweep: store the chat messages of every `notify` route (one with a chat target) owed
        by executions started since `since` that finished since notifications are keyed, and have
        none stored for that route (a crash came between the final status and the insert); returns
        how many routes. Then the action and notify triggers still owed (`Notifier.fire_missing`).
        Safe beside the listener and other processes: the rows are keyed."""
        engine = self.engine
        actions = sorted(ref for ref, action in engine.registry.actions.items() if action.notify)
        # Off the event loop: the read spans every execution started in the window.
        rows = await asyncio.to_thread(engine.store.executions_owing_notifications, actions, sorted(COMPLETED), since)
        routes = self.announcer.routes
        posted = 0
        for record in rows:
            stored = record.pop("notify_kinds")
            execution = public(record)
            notify = engine.notifier.notify_of(execution)
            if not notify:
                continue
            told = [(route, text) for route, text, _data in await rendered(engine.notifier.messages, execution, notify)]
            for route, texts in by_route(told).items():
                if route in routes and f"notify:{route}" not in stored:
                    try:
                        posted += await self._deliver(route, texts, execution)
                    except LookupError as exc:
                        log.warning("notify route %r of %s has no chat target: %s", route, execution["id"], exc)
        await engine.notifier.fire_missing(since)
        return posted
