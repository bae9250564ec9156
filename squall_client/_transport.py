"""Every API call described once, as data (`Call`: method, path, query, body, and how to read the answer),
so the sync client (`client.py`) and the async one (`aio.py`) only differ in how they send it and
cannot drift apart in paths, parameters or error handling."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from squall_client.errors import ApiError, ConfigError, ResponseError, WaitTimeout
from squall_client.models import (
    Action,
    Alias,
    AliasExecution,
    AliasMatch,
    Execution,
    Health,
    Inquiry,
    KeyValue,
    Pack,
    Rule,
    RuleEnforcement,
    TriggerInstance,
    TriggerType,
)

__version__ = "0.1.0"
USER_AGENT = f"squall-client/{__version__}"
#: The header a webhook's 202 names the stored trigger instance in (the server's `bot.headers`).
INSTANCE_HEADER = "Squall-Trigger-Instance"
#: The first pause between two polls of `wait`/`follow`; it doubles up to the caller's `interval`,
#: so a quick action is seen done within ~0.1 s and a long one costs a request per `interval`.
FIRST_POLL = 0.1

T = TypeVar("T")
M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request and the reading of its answer. `path` is under `/api/v1`, or a full URL."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] | None = None
    #: The body, sent as JSON; None sends none.
    json: Any = None
    headers: dict[str, str] | None = None


def seg(value: str) -> str:
    """A path segment: ids and names are quoted whole, so a `/` or `?` in one cannot reach another route."""
    return quote(str(value), safe="")


def query(**values: Any) -> dict[str, Any] | None:
    """Query parameters without the ones not given: the server's defaults then apply."""
    return {k: v for k, v in values.items() if v is not None} or None


def check(response: httpx.Response) -> httpx.Response:
    """`response` if it is not an error; else `ApiError` with the server's `faultstring`."""
    if response.status_code < 400:
        return response
    fault = ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        fault = str(body.get("faultstring") or body.get("detail") or "")
    if not fault:
        fault = response.text.strip()[:500] or response.reason_phrase
    request = response.request
    raise ApiError(response.status_code, fault, method=request.method, url=str(request.url))


def read(call: Call[T], response: httpx.Response) -> T:
    """The call's result from `response`: `ApiError` for an error status, `ResponseError` for a success
    whose body is not what the call expects (so callers never see a bare KeyError from a proxy's page)."""
    check(response)
    try:
        return call.parse(response)
    except ApiError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ResponseError(f"{response.request.method} {response.request.url} answered {response.status_code} "
                            f"with a body this client cannot read ({type(exc).__name__}: {exc}): "
                            f"{response.text[:200]!r}") from exc


def backoff(interval: float) -> Iterator[float]:
    """Pauses between polls: from `FIRST_POLL`, doubling, at most `interval` seconds. Checked here, before
    the first request, as 0 would poll the server in a busy loop."""
    if not interval > 0:
        raise ConfigError(f"interval must be a number of seconds above 0, not {interval}")
    return _doubling(min(FIRST_POLL, interval), interval)


def _doubling(delay: float, limit: float) -> Iterator[float]:
    while True:
        yield delay
        delay = min(delay * 2, limit)


def deadline(timeout: float | None) -> float | None:
    """When a `wait` of `timeout` seconds started now must give up (`time.monotonic()`), if ever."""
    return None if timeout is None else time.monotonic() + timeout


def pause(delay: float, deadline: float | None, execution: Execution, timeout: float | None) -> float:
    """The pause before the next poll, cut short at the deadline; `WaitTimeout` once it has passed."""
    if deadline is None:
        return delay
    left = deadline - time.monotonic()
    if left <= 0:
        raise WaitTimeout(f"execution {execution.id} is still {execution.status} after {timeout} s", execution)
    return min(delay, left)


def output_delta(seen: str, text: str) -> tuple[str, str]:
    """What `follow` should yield now that the output is `text`, after `seen` was yielded: the new end,
    or the whole text if it no longer starts with what was seen (the server replaced it)."""
    if text == seen:
        return "", seen
    return (text[len(seen):] if text.startswith(seen) else text), text


def _one(model: Callable[[Any], M]) -> Callable[[httpx.Response], M]:
    return lambda response: model(response.json())


def _many(model: Callable[[Any], M]) -> Callable[[httpx.Response], list[M]]:
    return lambda response: [model(item) for item in response.json()]


def _nothing(_response: httpx.Response) -> None:
    return None


def _text(response: httpx.Response) -> str:
    return response.text


# -- the calls -----------------------------------------------------------------------------------------

def health(root_url: str) -> Call[Health]:
    return Call("GET", f"{root_url}/healthz", _one(Health.from_api))


def packs() -> Call[list[Pack]]:
    return Call("GET", "/packs", _many(Pack.from_api))


def pack(ref: str) -> Call[Pack]:
    return Call("GET", f"/packs/{seg(ref)}", _one(Pack.from_api))


def actions(pack: str | None) -> Call[list[Action]]:
    return Call("GET", "/actions", _many(Action.from_api), params=query(pack=pack))


def action(ref: str) -> Call[Action]:
    return Call("GET", f"/actions/{seg(ref)}", _one(Action.from_api))


def execution_request(action: str, parameters: Mapping[str, Any] | None, context: Mapping[str, Any] | None,
                      render: bool) -> Call[Execution]:
    body: dict[str, Any] = {"action": action, "parameters": dict(parameters or {})}
    if context is not None:
        body["context"] = dict(context)
    if render:  # sent only when asked: servers that predate it would refuse an unknown field
        body["render"] = True
    return Call("POST", "/executions", _one(Execution.from_api), json=body)


def execution(execution_id: str) -> Call[Execution]:
    return Call("GET", f"/executions/{seg(execution_id)}", _one(Execution.from_api))


def executions(action: str | None, status: str | None, parent: str | None, limit: int | None,
               offset: int | None) -> Call[list[Execution]]:
    return Call("GET", "/executions", _many(Execution.from_api),
                params=query(action=action, status=status, parent=parent, limit=limit, offset=offset))


def execution_output(execution_id: str) -> Call[str]:
    return Call("GET", f"/executions/{seg(execution_id)}/output", _text)


def execution_cancel(execution_id: str) -> Call[Execution]:
    return Call("DELETE", f"/executions/{seg(execution_id)}", _one(Execution.from_api))


def execution_rerun(execution_id: str, parameters: Mapping[str, Any] | None) -> Call[Execution]:
    return Call("POST", f"/executions/{seg(execution_id)}/re_run", _one(Execution.from_api),
                json={"parameters": dict(parameters or {})})


def keys(prefix: str | None, scope: str, user: str | None, decrypt: bool, limit: int | None) -> Call[list[KeyValue]]:
    return Call("GET", "/keys", _many(KeyValue.from_api),
                params=query(prefix=prefix, scope=scope, user=user, decrypt=decrypt or None, limit=limit))


def key(name: str, scope: str, user: str | None, decrypt: bool) -> Call[KeyValue]:
    return Call("GET", f"/keys/{seg(name)}", _one(KeyValue.from_api),
                params=query(scope=scope, user=user, decrypt=decrypt or None))


def key_set(name: str, value: Any, *, secret: bool, ttl: int | None, scope: str, user: str | None,
            description: str | None) -> Call[KeyValue]:
    body = {"value": value, "secret": secret, "scope": scope, "user": user, "ttl": ttl, "description": description}
    return Call("PUT", f"/keys/{seg(name)}", _one(KeyValue.from_api),
                json={k: v for k, v in body.items() if v is not None})


def key_delete(name: str, scope: str, user: str | None) -> Call[None]:
    return Call("DELETE", f"/keys/{seg(name)}", _nothing, params=query(scope=scope, user=user))


def rules() -> Call[list[Rule]]:
    return Call("GET", "/rules", _many(Rule.from_api))


def rule(ref: str) -> Call[Rule]:
    return Call("GET", f"/rules/{seg(ref)}", _one(Rule.from_api))


def enforcements(rule: str | None, trigger_instance: str | None, execution: str | None,
                 limit: int | None) -> Call[list[RuleEnforcement]]:
    return Call("GET", "/ruleenforcements", _many(RuleEnforcement.from_api),
                params=query(rule=rule, trigger_instance=trigger_instance, execution=execution, limit=limit))


def trigger_types() -> Call[list[TriggerType]]:
    return Call("GET", "/triggertypes", _many(TriggerType.from_api))


def trigger_instances(trigger: str | None, status: str | None, limit: int | None) -> Call[list[TriggerInstance]]:
    return Call("GET", "/triggerinstances", _many(TriggerInstance.from_api),
                params=query(trigger=trigger, status=status, limit=limit))


def trigger_instance(instance_id: str) -> Call[TriggerInstance]:
    return Call("GET", f"/triggerinstances/{seg(instance_id)}", _one(TriggerInstance.from_api))


def re_emit(instance_id: str) -> Call[TriggerInstance]:
    return Call("POST", f"/triggerinstances/{seg(instance_id)}/re_emit", _one(TriggerInstance.from_api))


def emit(trigger: str, payload: Any, trace_tag: str | None) -> Call[str]:
    """StackStorm's generic webhook (`/webhooks/st2`): the answer echoes the body, and the stored
    instance's id comes in a header, which is what this call reads."""
    def instance_id(response: httpx.Response) -> str:
        found = response.headers.get(INSTANCE_HEADER)
        if not found:
            raise ApiError(response.status_code, f"the server did not name the stored trigger instance "
                                                 f"(no {INSTANCE_HEADER} header)",
                           method=response.request.method, url=str(response.request.url))
        return str(found)
    return Call("POST", "/webhooks/st2", instance_id, json={"trigger": trigger, "payload": payload},
                headers={"St2-Trace-Tag": trace_tag} if trace_tag else None)


def inquiries(limit: int | None) -> Call[list[Inquiry]]:
    return Call("GET", "/inquiries", _many(Inquiry.from_api), params=query(limit=limit))


def inquiry(inquiry_id: str) -> Call[Inquiry]:
    return Call("GET", f"/inquiries/{seg(inquiry_id)}", _one(Inquiry.from_api))


def inquiry_respond(inquiry_id: str, response: Mapping[str, Any], user: str | None) -> Call[Inquiry]:
    body: dict[str, Any] = {"id": inquiry_id, "response": dict(response)}
    if user is not None:
        body["user"] = user
    return Call("PUT", f"/inquiries/{seg(inquiry_id)}", _one(Inquiry.from_api), json=body)


def aliases() -> Call[list[Alias]]:
    return Call("GET", "/actionalias", _many(Alias.from_api))


def alias_match(command: str) -> Call[AliasMatch]:
    return Call("POST", "/actionalias/match", _one(AliasMatch.from_api), json={"command": command})


def alias_execute(command: str, user: str | None, channel: str | None) -> Call[AliasExecution]:
    body = {"command": command, "user": user, "channel": channel}
    return Call("POST", "/aliasexecution", _one(AliasExecution.from_api),
                json={k: v for k, v in body.items() if v is not None})
