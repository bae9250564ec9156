"""`announcement`: hand a message to the chat side and, as StackStorm, to its stream.

The engine does not know chat; the service gives this runner a `publish` callable that stores the
message in the durable chat outbox. `chatops.post_message` and `chatops.post_result` use it.

StackStorm's runner publishes `{payload: <action parameters>, trace_context}` on its message bus with
the route as routing key, which its stream sends as `st2.announcement__<route>` (hubot-stackstorm
listens for `st2.announcement__chatops`). Squall has no bus between processes: the execution's stored
result is the record, since whichever process ran it (a `squall worker` too) stores it, and
`bot/http/stream.py` already reads every execution there. The result keeps StackStorm's shape
(`{output: payload, **payload}`) plus `posted`, which names the route; `announced` reads the event back.

As StackStorm's, the run succeeds once the message is announced, whether or not Squall's own chat has
a target for it: with hubot-stackstorm in front, hubot posts it from the stream (the chat side logs
that Squall's chat did not). What fails is what fails in StackStorm: `experimental` not true (before
anything is published), and a `post_result` whose execution cannot be read (its formatting fails).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from engine.runners import RunOutcome, RunRequest

#: The runner's name, as an execution's `runner` gives it.
RUNNER = "announcement"
#: The route when the action gives none (the runner parameter's default, hubot-stackstorm's route).
DEFAULT_ROUTE = "chatops"
#: The stream event of an announcement is this and its route.
EVENT_PREFIX = "st2.announcement__"

#: publish(route, parameters, request) -> what Squall's chat was given (adapter, channel, outbox id; none of
#: them when it has no target: the stream still announces it; `skipped` when nothing is announced;
#: `announced`: what the message said that the parameters do not, as post_result's text). LookupError
#: for what StackStorm would refuse too (no channel at all, an execution that is not there).
Publish = Callable[[str, dict[str, Any], RunRequest], Awaitable[dict[str, Any]]]


class AnnouncementRunner:
    def __init__(self, publish: Publish) -> None:
        self.publish = publish

    async def run(self, request: RunRequest) -> RunOutcome:
        params = dict(request.action_parameters)
        if request.runner_parameters.get("experimental", True) is not True:
            # StackStorm's pre_run: nothing is published, and the result has no `output`.
            return RunOutcome("failed", {"error": f"Experimental flag is missing for action {request.action.ref}: "
                                                  "the announcement runner needs its `experimental` parameter "
                                                  "true (its default)"})
        route = str(request.runner_parameters.get("route") or DEFAULT_ROUTE)
        try:
            posted = dict(await self.publish(route, params, request))
        except LookupError as exc:
            return RunOutcome("failed", {"error": str(exc), "output": params})
        # StackStorm's payload is the action's parameters; post_result's text is formatted by the chat
        # side (StackStorm's post_result hands it to post_message, whose announcement carries it).
        payload = {**params, **(posted.pop("announced", None) or {})}
        return RunOutcome("succeeded", {"output": payload, **payload, "posted": {"route": route, **posted}})


def announced(record: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(event name, data) of the stream event StackStorm would have sent for this execution, or None:
    not an announcement run, not ended `succeeded`, or one that posted nothing (an alias that turns
    results off: StackStorm's post_result then runs `core.noop`). Data as StackStorm's:
    `{"payload": <action parameters>, "trace_context": <the execution's>}`."""
    result = record.get("result")
    if record.get("runner") != RUNNER or record.get("status") != "succeeded" or not isinstance(result, dict):
        return None
    posted = result.get("posted")
    if not isinstance(posted, dict) or "skipped" in posted or not posted.get("route"):
        return None
    trace_context = (record.get("context") or {}).get("trace_context")
    return EVENT_PREFIX + str(posted["route"]), {"payload": result.get("output"), "trace_context": trace_context}
