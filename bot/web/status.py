"""`/status`: the chat adapters and whether each holds its connection, whether this process leads
(fires the timers, runs the sensors) or which one does, the replies waiting to be sent and, under the scale-out
executor, procrastinate's workers and how many jobs wait and run per queue.

Adapters say whether they are connected through their optional `online` property
(`adapters/base.py`); one without it (the console, the loopback) has no connection to report. The
lead is what this process found at its last look (`Squall.sensor_lead`): asking again here could take
the lead, which is `squall serve`'s decision, not a page's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from bot.accounts import Session
from bot.web.pages import PageRoute, render
from bot.web.session import viewer
from engine.jobs import STALLED_SECONDS, queue_status

router = APIRouter(route_class=PageRoute, include_in_schema=False)


def _adapters(squall: Any) -> list[dict[str, Any]]:
    return [{"name": name, "online": getattr(adapter, "online", None)}
            for name, adapter in sorted(squall.chat.adapters.items())]


@router.get("/status")
async def status(request: Request, session: Session = Depends(viewer)) -> Response:
    squall = request.app.state.squall
    # The lead's page judges workers as its reaper does (by heartbeats unchanged on its own clock).
    queues = await squall.db(queue_status, squall.store, squall.jobs.watch) if squall.jobs is not None else None
    try:
        leader = None if squall.sensor_lead else await asyncio.to_thread(squall.leader.holder)
    except Exception as exc:  # the page shows the rest; the lead's own check logs its troubles
        leader = f"unknown ({exc.__class__.__name__})"
    return render(request, "status.html", {
        "session": session, "adapters": _adapters(squall), "leads": squall.sensor_lead, "leader": leader,
        "executor": squall.config.executor_kind, "queues": queues, "stalled_after": STALLED_SECONDS,
        "outbox_pending": squall.chat.outbox.pending, "packs": len(squall.registry.packs),
        "actions": len(squall.registry.actions)})
