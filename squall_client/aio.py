"""`AsyncClient`: the asyncio client, method for method the same as `client.Client`, awaited.

The calls are described once in `_transport.py`; this module sends them with an `httpx.AsyncClient`
and holds the loops (`wait`, `follow`) with `asyncio.sleep`, so waiting never blocks the event loop."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Collection, Mapping
from typing import Any, TypeVar

import httpx

from squall_client import _transport as api
from squall_client.config import Settings
from squall_client.errors import ApiConnectionError
from squall_client.models import (
    COMPLETED,
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

__all__ = ["Actions", "Aliases", "AsyncClient", "Executions", "Inquiries", "Keys", "Packs", "Rules", "Triggers"]

T = TypeVar("T")


class _Resource:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def _send(self, call: api.Call[T]) -> T:
        return await self._client._send(call)


class Executions(_Resource):
    """`/api/v1/executions`: run actions and follow them."""

    async def run(self, action: str, parameters: Mapping[str, Any] | None = None, *,
            context: Mapping[str, Any] | None = None, render: bool = False, wait: bool = False,
            timeout: float | None = None) -> Execution:
        """Request `action` with `parameters` (data, never rendered as templates unless `render`, which
        only keys listed in the server's `api.render_keys` may ask for). Returns the new execution at
        once, or with `wait` the finished one (`timeout` seconds at most, else `WaitTimeout`).

        Parameters are a mapping, not keyword arguments: actions have parameters named `timeout` or
        `context` too."""
        execution = await self._send(api.execution_request(action, parameters, context, render))
        return await self.wait(execution.id, timeout=timeout) if wait else execution

    async def get(self, execution_id: str) -> Execution:
        """One execution; a unique start of its id will do, as on the CLI."""
        return await self._send(api.execution(execution_id))

    async def list(self, *, action: str | None = None, status: str | None = None, parent: str | None = None,
                   limit: int | None = None, offset: int | None = None) -> builtins.list[Execution]:
        """The newest executions first, filtered by action ref, status and `parent` (a workflow's id: its
        tasks; "null": top-level executions only). `limit` (server default 50, at most 1000) and `offset`
        page through them."""
        return await self._send(api.executions(action, status, parent, limit, offset))

    async def output(self, execution_id: str) -> str:
        """stdout then stderr of the result, as text; "" while it runs or for results without streams."""
        return await self._send(api.execution_output(execution_id))

    async def cancel(self, execution_id: str) -> Execution:
        """Ask to cancel; the answer may say `canceling` (the runner is being stopped): `wait` for `canceled`.
        An execution already finished is `ApiError` 409."""
        return await self._send(api.execution_cancel(execution_id))

    async def rerun(self, execution_id: str, parameters: Mapping[str, Any] | None = None, *, wait: bool = False,
              timeout: float | None = None) -> Execution:
        """A new execution of the same action with the same parameters (secrets too), `parameters` overriding."""
        execution = await self._send(api.execution_rerun(execution_id, parameters))
        return await self.wait(execution.id, timeout=timeout) if wait else execution

    async def wait(self, execution_id: str, *, timeout: float | None = None, interval: float = 1.0,
             until: Collection[str] = ()) -> Execution:
        """Poll until the execution is completed (succeeded, failed, timeout, canceled, abandoned) or in
        one of the statuses `until` (e.g. `{"paused"}` for a workflow waiting on an inquiry). It polls,
        quickly at first, then every `interval` seconds: plain requests work through any proxy, where the
        server's event stream (`/stream/v1/stream`) may be cut or buffered."""
        stop = COMPLETED | frozenset(until)
        deadline = api.deadline(timeout)
        delays = api.backoff(interval)
        while True:
            execution = await self.get(execution_id)
            if execution.status in stop:
                return execution
            await asyncio.sleep(api.pause(next(delays), deadline, execution, timeout))

    async def follow(self, execution_id: str, *, timeout: float | None = None,
                     interval: float = 1.0) -> AsyncIterator[str]:
        """The execution's output as it grows, as new pieces of text, until it completes.

        This polls `/executions/{id}/output`, which the shell, Python and remote runners fill while they
        run (other runners' output comes with their result): each piece is what was printed between two
        polls, not a line."""
        seen = ""
        deadline = api.deadline(timeout)
        delays = api.backoff(interval)
        while True:
            execution = await self.get(execution_id)  # status first: output read after `completed` is final
            chunk, seen = api.output_delta(seen, await self.output(execution.id))
            if chunk:
                yield chunk
            if execution.completed:
                return
            await asyncio.sleep(api.pause(next(delays), deadline, execution, timeout))


class Actions(_Resource):
    async def list(self, *, pack: str | None = None) -> builtins.list[Action]:
        return await self._send(api.actions(pack))

    async def get(self, ref: str) -> Action:
        return await self._send(api.action(ref))


class Packs(_Resource):
    async def list(self) -> builtins.list[Pack]:
        return await self._send(api.packs())

    async def get(self, ref: str) -> Pack:
        return await self._send(api.pack(ref))


class Keys(_Resource):
    """The datastore. `scope` is `system` (default) or `user` (with `user`); `list` also takes `all`.
    Secret values read back as `********` unless `decrypt=True`."""

    async def list(self, *, prefix: str | None = None, scope: str = "system", user: str | None = None,
             decrypt: bool = False, limit: int | None = None) -> builtins.list[KeyValue]:
        return await self._send(api.keys(prefix, scope, user, decrypt, limit))

    async def get(self, name: str, *, scope: str = "system", user: str | None = None,
                  decrypt: bool = False) -> KeyValue:
        return await self._send(api.key(name, scope, user, decrypt))

    async def set(self, name: str, value: str, *, secret: bool = False, ttl: int | None = None, scope: str = "system",
            user: str | None = None, description: str | None = None) -> KeyValue:
        """Store `value` as text; `secret` encrypts it (StackStorm's `encrypt`), `ttl` expires it after
        that many seconds."""
        return await self._send(api.key_set(name, value, secret=secret, ttl=ttl, scope=scope, user=user,
                                      description=description))

    async def delete(self, name: str, *, scope: str = "system", user: str | None = None) -> None:
        """Remove the key; a missing one is `ApiError` 404."""
        await self._send(api.key_delete(name, scope, user))


class Rules(_Resource):
    async def list(self) -> builtins.list[Rule]:
        return await self._send(api.rules())

    async def get(self, ref: str) -> Rule:
        """Found in the list (the API has no route for one rule); missing is `ApiError` 404."""
        return await self._send(api.rule(ref))

    async def enforcements(self, *, rule: str | None = None, trigger_instance: str | None = None,
                     execution: str | None = None, limit: int | None = None) -> builtins.list[RuleEnforcement]:
        return await self._send(api.enforcements(rule, trigger_instance, execution, limit))


class Triggers(_Resource):
    async def types(self) -> builtins.list[TriggerType]:
        return await self._send(api.trigger_types())

    async def instances(self, *, trigger: str | None = None, status: str | None = None,
                  limit: int | None = None) -> builtins.list[TriggerInstance]:
        return await self._send(api.trigger_instances(trigger, status, limit))

    async def instance(self, instance_id: str) -> TriggerInstance:
        return await self._send(api.trigger_instance(instance_id))

    async def re_emit(self, instance_id: str) -> TriggerInstance:
        """A new instance with the same trigger and payload, processed by the rules again."""
        return await self._send(api.re_emit(instance_id))

    async def emit(self, trigger: str, payload: Any = None, *, trace_tag: str | None = None) -> TriggerInstance:
        """Fire `trigger` with `payload` through StackStorm's generic webhook; the instance is stored
        before the server answers, so it is read back at once."""
        instance_id = await self._send(api.emit(trigger, {} if payload is None else payload, trace_tag))
        return await self.instance(instance_id)


class Inquiries(_Resource):
    async def list(self, *, limit: int | None = None) -> builtins.list[Inquiry]:
        """Pending inquiries (expired ones are expired on the way, not listed)."""
        return await self._send(api.inquiries(limit))

    async def get(self, inquiry_id: str) -> Inquiry:
        return await self._send(api.inquiry(inquiry_id))

    async def respond(self, inquiry_id: str, response: Mapping[str, Any], *, user: str | None = None) -> Inquiry:
        """Answer; `user` is who answers, checked against the inquiry's `users` (the server's default is
        `api`). A response that does not fit the schema is 400, a user not allowed 403, an inquiry no
        longer pending 409. The workflow resumes on its own afterwards."""
        return await self._send(api.inquiry_respond(inquiry_id, response, user))


class Aliases(_Resource):
    async def list(self) -> builtins.list[Alias]:
        return await self._send(api.aliases())

    async def match(self, command: str) -> AliasMatch:
        """Which alias `command` hits; none or several is `ApiError` 400 with the matcher's words."""
        return await self._send(api.alias_match(command))

    async def execute(self, command: str, *, user: str | None = None, channel: str | None = None) -> AliasExecution:
        """Run `command` as chat would for `user` in `channel`: the same permissions, audit and ack.
        Without `user` the server takes who the key or token speaks for; without `channel`, `api`."""
        return await self._send(api.alias_execute(command, user, channel))


class AsyncClient:
    """An asyncio Squall API client (`async with AsyncClient() as client: ...`).

    `url`, `api_key` and `auth_token` default to the environment (`config.Settings.resolve`). Use it as an
    async context manager, or await `close()`, to release its connections. `transport` is httpx's (an
    `httpx.MockTransport` in tests); `headers` are added to every request."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *, auth_token: str | None = None,
                 timeout: float | None = None, verify: bool | str = True, headers: Mapping[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = Settings.resolve(url, api_key, auth_token=auth_token, timeout=timeout)
        self._http = httpx.AsyncClient(
            base_url=self.settings.api_url, timeout=self.settings.timeout, verify=verify, transport=transport,
            headers={"User-Agent": api.USER_AGENT, **self.settings.headers(), **(headers or {})})
        self.executions = Executions(self)
        self.actions = Actions(self)
        self.packs = Packs(self)
        self.keys = Keys(self)
        self.rules = Rules(self)
        self.triggers = Triggers(self)
        self.inquiries = Inquiries(self)
        self.aliases = Aliases(self)

    def __repr__(self) -> str:
        return f"AsyncClient({self.settings.api_url!r})"

    async def _send(self, call: api.Call[T]) -> T:
        try:
            response = await self._http.request(call.method, call.path, params=call.params, json=call.json,
                                                headers=call.headers)
        except httpx.TransportError as exc:
            raise ApiConnectionError(f"cannot reach the Squall API at {self.settings.api_url}: "
                                     f"{str(exc) or type(exc).__name__}") from exc
        return api.read(call, response)

    async def health(self) -> Health:
        """`/healthz`, which needs no key: whether the service is up, and how many packs it loaded."""
        return await self._send(api.health(self.settings.root_url))

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()
