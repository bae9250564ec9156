"""`announcement`: hand a message to the chat side (StackStorm publishes it to its stream).

The engine does not know chat; the service gives this runner a `publish` callable that stores the
message in the durable chat outbox. `chatops.post_message` and `chatops.post_result` use it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from engine.runners import RunOutcome, RunRequest

#: publish(route, parameters, request) -> what was posted (adapter, channel, outbox id).
Publish = Callable[[str, dict[str, Any], RunRequest], Awaitable[dict[str, Any]]]


class AnnouncementRunner:
    def __init__(self, publish: Publish) -> None:
        self.publish = publish

    async def run(self, request: RunRequest) -> RunOutcome:
        params = dict(request.action_parameters)
        route = str(request.runner_parameters.get("route") or "chatops")
        try:
            posted = await self.publish(route, params, request)
        except LookupError as exc:
            return RunOutcome("failed", {"error": str(exc), "output": params})
        return RunOutcome("succeeded", {"output": params, **params, "posted": posted})
