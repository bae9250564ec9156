"""`POST /api/v1/aliasexecution`: run a chat command over HTTP (what `st2 action-alias execute` calls),
through the same command path as chat (`bot/chat/commands.py`): match, permission, request, audit, ack.

A chat bot relaying its users' commands (hubot-stackstorm, err-stackstorm) names a `notification_route`
(StackStorm's older `notification_channel`) to get the result back: the execution's `notify` is then
StackStorm's (`_get_notify_field`), so `core.st2.generic.notifytrigger` fires with that route and the
chat's user, channel and message envelope, and the chatops pack's `chatops.notify` rule posts the result
(`st2.announcement__chatops` on the stream, which hubot listens to). Without a route there is none."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel

from adapters.base import Message
from aliases import AliasMatch, AmbiguousCommand, NoMatch
from bot.chat.commands import Accepted, CommandFailed, CommandRefused
from bot.http.aliases import alias_public, match_command
from bot.http.executions import execution_doc
from bot.http.key_auth import acting_user
from bot.http.state import ApiState, api_state
from engine.templates import is_jinja_expression

router = APIRouter()


class AliasExecutionRequest(BaseModel):
    command: str
    #: Who runs it; empty (as `st2 action-alias execute` sends without `-u`): the requester.
    user: str = ""
    channel: str | None = None
    #: StackStorm's name for `channel`.
    source_channel: str | None = None
    #: The chat message's envelope, handed back with the result (hubot threads and addresses by it).
    source_context: dict[str, Any] | None = None
    #: The route of the result's notify trigger (hubot-stackstorm sends `hubot`); none: no notify.
    notification_route: str | None = None
    #: StackStorm's older name for `notification_route`, used when that is not given.
    notification_channel: str | None = None


def _message(request: Request, body: AliasExecutionRequest) -> Message:
    """The command as the command path takes it: from the acting user, in the named channel."""
    return Message(adapter="api", channel=body.channel or body.source_channel or "api",
                   user=acting_user(request, body.user), text=body.command)


def _notify(body: AliasExecutionRequest, message: Message) -> dict[str, Any] | None:
    """StackStorm's notify of a relayed command (st2api's `_get_notify_field`): on completion, tell the
    route who asked, where and in answer to which message; None without a route (no notify, as before)."""
    route = body.notification_route or body.notification_channel
    if not route:
        return None
    data = {"user": message.user, "source_channel": message.channel, "source_context": body.source_context}
    return {"on-complete": {"routes": [route], "data": _as_data(data)}}


def _as_data(value: Any) -> Any:
    """`value` as notify `data` renders it back to what was sent: the notifier renders `data` as templates
    with the datastore (StackStorm renders it too), and the chat envelope holds what a person typed, which
    must stay data (`{{ st2kv.system.token }}` in a chat message must not read the datastore). A string
    with a template marker becomes a Jinja string literal of itself (keys too, which are rendered as well);
    everything else, as a message without one, is kept as StackStorm stores it."""
    if isinstance(value, str):
        return "{{ " + json.dumps(value, ensure_ascii=False) + " }}" if is_jinja_expression(value) else value
    if isinstance(value, dict):
        return {_as_data(key): _as_data(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_data(item) for item in value]
    return value


def _match_all(state: ApiState, command: str) -> list[AliasMatch]:
    """Every command `command` means (one per fit of a `match_multiple` format); 400 when none or
    several aliases match, or it is past `MAX_COMMAND`, as `match_command`."""
    try:
        return state.squall.chat.commands.match_all(command)
    except (NoMatch, AmbiguousCommand) as exc:
        raise HTTPException(400, str(exc)) from exc


async def _run(state: ApiState, matches: list[AliasMatch], message: Message,
               notify: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Authorise `matches` (one command, or every fit of a `match_multiple` one) and request each as
    chat would, with `notify` (`_notify`); one StackStorm result each. 403 when its user may not run
    them, 400 when a request is refused (naming the fits already requested, which run: StackStorm's
    loop stops there too)."""
    commands = state.squall.chat.commands
    alias = matches[0].alias
    try:
        if len(matches) == 1:
            matches = [await commands.authorise(matches[0], message, "api")]
        else:
            matches = await commands.authorise_all(matches, message, "api")
    except CommandRefused as exc:
        raise HTTPException(403, f"{message.user} may not run {alias.ref}: {exc}") from exc
    results: list[dict[str, Any]] = []
    for match in matches:
        try:
            # Never Held: without chat to ask approvers in, a command that needs approval is refused.
            accepted = await commands.run(match, message, "api", notify=notify)
        except CommandRefused as exc:
            raise HTTPException(403, f"{message.user} may not run {alias.ref}: {exc}{_started(results)}") from exc
        except CommandFailed as exc:
            raise HTTPException(400, f"{exc}{_started(results)}") from exc
        assert isinstance(accepted, Accepted)
        results.append({"execution": execution_doc(accepted.execution, state.squall.registry),
                        "actionalias": alias_public(state, match.alias), "message": accepted.ack})
    return results


def _started(results: list[dict[str, Any]]) -> str:
    """What an error after some fits of a `match_multiple` command were requested says of them."""
    if not results:
        return ""
    return f" (requested before it: {', '.join(r['execution']['id'] for r in results)})"


@router.post("/aliasexecution", status_code=201, tags=["aliases"])
async def alias_execution(body: AliasExecutionRequest, request: Request) -> dict[str, Any]:
    """Match, authorise and run `body.command` as chat would: one execution, the first fit of a
    `match_multiple` format (StackStorm's answers its `results[0]` too)."""
    state = api_state(request)
    message = _message(request, body)
    [result] = await _run(state, [match_command(state, body.command)], message, _notify(body, message))
    return result


@router.post("/aliasexecution/match_and_execute", status_code=201, tags=["aliases"])
async def match_and_execute(body: AliasExecutionRequest, request: Request) -> dict[str, Any]:
    """StackStorm's `{"results": [...]}`: one execution per fit of a `match_multiple` format
    (spec §2.4 step 5), else the one best match. Created: 201, as StackStorm's (st2api's
    `ActionAliasExecutionController.match_and_execute`); err-stackstorm reads the JSON of a 201 or a
    400 only, and posted any other answer's whole text into chat in place of the ack."""
    state = api_state(request)
    message = _message(request, body)
    return {"results": await _run(state, _match_all(state, body.command), message, _notify(body, message))}
