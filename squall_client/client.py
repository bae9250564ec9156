"""`Client`: the synchronous client, one attribute per resource (`client.executions.run(...)`).

The calls themselves are described once in `_transport.py`; this module sends them with an
`httpx.Client` and holds the blocking loops (`wait`, `follow`). `aio.py` is the same over asyncio."""

from __future__ import annotations

import builtins
import time
from collections.abc import Collection, Iterator, Mapping
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

__all__ = ["Actions", "Aliases", "Client", "Executions", "Inquiries", "Keys", "Packs", "Rules", "Triggers"]

T = TypeVar("T")


class _Resource:
    def __init__(self, client: Client) -> None:
        self._client = client

    def _send(self, call: api.Call[T]) -> T:
        return self._client._send(call)


class Executions(_Resource):
    """`/api/v1/executions`: run actions and follow them."""

    def run(self, action: str, parameters: Mapping[str, Any] | None = None, *,
            context: Mapping[str, Any] | None = None, render: bool = False, wait: bool = False,
            timeout: float | None = None) -> Execution:
        """Request `action` with `parameters` (data, never rendered as templates unless `render`, which
        only keys listed in the server's `api.render_keys` may ask for). Returns the new execution at
        once, or with `wait` the finished one (`timeout` seconds at most, else `WaitTimeout`).

        Parameters are a mapping, not keyword arguments: actions have parameters named `timeout` or
        `context` too."""
        execution = self._send(api.execution_request(action, parameters, context, render))
        return self.wait(execution.id, timeout=timeout) if wait else execution

    def get(self, execution_id: str) -> Execution:
        """One execution; a unique start of its id will do, as on the CLI."""
        return self._send(api.execution(execution_id))

    def list(self, *, action: str | None = None, status: str | None = None, parent: str | None = None,
             limit: int | None = None, offset: int | None = None) -> builtins.list[Execution]:
        """The newest executions first, filtered by action ref, status and `parent` (a workflow's id: its
        tasks; "null": top-level executions only). `limit` (server default 50, at most 1000) and `offset`
        page through them."""
        return self._send(api.executions(action, status, parent, limit, offset))

    def output(self, execution_id: str) -> str:
        """stdout then stderr of the result, as text; "" while it runs or for results without streams."""
        return self._send(api.execution_output(execution_id))

    def cancel(self, execution_id: str) -> Execution:
        """Ask to cancel; the answer may say `canceling` (the runner is being stopped): `wait` for `canceled`.
        An execution already finished is `ApiError` 409."""
        return self._send(api.execution_cancel(execution_id))

    def rerun(self, execution_id: str, parameters: Mapping[str, Any] | None = None, *, wait: bool = False,
              timeout: float | None = None) -> Execution:
        """A new execution of the same action with the same parameters (secrets too), `parameters` overriding."""
        execution = self._send(api.execution_rerun(execution_id, parameters))
        return self.wait(execution.id, timeout=timeout) if wait else execution

    def wait(self, execution_id: str, *, timeout: float | None = None, interval: float = 1.0,
             until: Collection[str] = ()) -> Execution:
        """Poll until the execution is completed (succeeded, failed, timeout, canceled, abandoned) or in
        one of the statuses `until` (e.g. `{"paused"}` for a workflow waiting on an inquiry). It polls,
        quickly at first, then every `interval` seconds: plain requests work through any proxy, where the
        server's event stream (`/stream/v1/stream`) may be cut or buffered."""
        stop = COMPLETED | frozenset(until)
        deadline = api.deadline(timeout)
        delays = api.backoff(interval)
        while True:
            execution = self.get(execution_id)
            if execution.status in stop:
                return execution
            time.sleep(api.pause(next(delays), deadline, execution, timeout))

    def follow(self, execution_id: str, *, timeout: float | None = None, interval: float = 1.0) -> Iterator[str]:
        """The execution's output as it grows, as new pieces of text, until it completes.

        This polls `/executions/{id}/output`, which the shell, Python and remote runners fill while they
        run (other runners' output comes with their result): each piece is what was printed between two
        polls, not a line."""
        seen = ""
        deadline = api.deadline(timeout)
        delays = api.backoff(interval)
        while True:
            execution = self.get(execution_id)  # status first: output read after `completed` is final
            chunk, seen = api.output_delta(seen, self.output(execution.id))
            if chunk:
                yield chunk
            if execution.completed:
                return
            time.sleep(api.pause(next(delays), deadline, execution, timeout))


class Actions(_Resource):
    def list(self, *, pack: str | None = None) -> builtins.list[Action]:
        return self._send(api.actions(pack))

    def get(self, ref: str) -> Action:
        return self._send(api.action(ref))


class Packs(_Resource):
    def list(self) -> builtins.list[Pack]:
        return self._send(api.packs())

    def get(self, ref: str) -> Pack:
        return self._send(api.pack(ref))


class Keys(_Resource):
    """The datastore. `scope` is `system` (default) or `user` (with `user`); `list` also takes `all`.
    Secret values read back as `********` unless `decrypt=True`."""

    def list(self, *, prefix: str | None = None, scope: str = "system", user: str | None = None,
             decrypt: bool = False, limit: int | None = None) -> builtins.list[KeyValue]:
        return self._send(api.keys(prefix, scope, user, decrypt, limit))

    def get(self, name: str, *, scope: str = "system", user: str | None = None, decrypt: bool = False) -> KeyValue:
        return self._send(api.key(name, scope, user, decrypt))

    def set(self, name: str, value: str, *, secret: bool = False, ttl: int | None = None, scope: str = "system",
            user: str | None = None, description: str | None = None) -> KeyValue:
        """Store `value` as text; `secret` encrypts it (StackStorm's `encrypt`), `ttl` expires it after
        that many seconds."""
        return self._send(api.key_set(name, value, secret=secret, ttl=ttl, scope=scope, user=user,
                                      description=description))

    def delete(self, name: str, *, scope: str = "system", user: str | None = None) -> None:
        """Remove the key; a missing one is `ApiError` 404."""
        self._send(api.key_delete(name, scope, user))


class Rules(_Resource):
    def list(self) -> builtins.list[Rule]:
        return self._send(api.rules())

    def get(self, ref: str) -> Rule:
        """Found in the list (the API has no route for one rule); missing is `ApiError` 404."""
        return self._send(api.rule(ref))

    def enforcements(self, *, rule: str | None = None, trigger_instance: str | None = None,
                     execution: str | None = None, limit: int | None = None) -> builtins.list[RuleEnforcement]:
        return self._send(api.enforcements(rule, trigger_instance, execution, limit))


class Triggers(_Resource):
    def types(self) -> builtins.list[TriggerType]:
        return self._send(api.trigger_types())

    def instances(self, *, trigger: str | None = None, status: str | None = None,
                  limit: int | None = None) -> builtins.list[TriggerInstance]:
        return self._send(api.trigger_instances(trigger, status, limit))

    def instance(self, instance_id: str) -> TriggerInstance:
        return self._send(api.trigger_instance(instance_id))

    def re_emit(self, instance_id: str) -> TriggerInstance:
        """A new instance with the same trigger and payload, processed by the rules again."""
        return self._send(api.re_emit(instance_id))

    def emit(self, trigger: str, payload: Any = None, *, trace_tag: str | None = None) -> TriggerInstance:
        """Fire `trigger` with `payload` through StackStorm's generic webhook; the instance is stored
        before the server answers, so it is read back at once."""
        instance_id = self._send(api.emit(trigger, {} if payload is None else payload, trace_tag))
        return self.instance(instance_id)


class Inquiries(_Resource):
    def list(self, *, limit: int | None = None) -> builtins.list[Inquiry]:
        """Pending inquiries (expired ones are expired on the way, not listed)."""
        return self._send(api.inquiries(limit))

    def get(self, inquiry_id: str) -> Inquiry:
        return self._send(api.inquiry(inquiry_id))

    def respond(self, inquiry_id: str, response: Mapping[str, Any], *, user: str | None = None) -> Inquiry:
        """Answer; `user` is who answers, checked against the inquiry's `users` (the server's default is
        `api`). A response that does not fit the schema is 400, a user not allowed 403, an inquiry no
        longer pending 409. The workflow resumes on its own afterwards."""
        return self._send(api.inquiry_respond(inquiry_id, response, user))


class Aliases(_Resource):
    def list(self) -> builtins.list[Alias]:
        return self._send(api.aliases())

    def match(self, command: str) -> AliasMatch:
        """Which alias `command` hits; none or several is `ApiError` 400 with the matcher's words."""
        return self._send(api.alias_match(command))

    def execute(self, command: str, *, user: str | None = None, channel: str | None = None) -> AliasExecution:
        """Run `command` as chat would for `user` in `channel`: the same permissions, audit and ack.
        Without `user` the server takes who the key or token speaks for; without `channel`, `api`."""
        return self._send(api.alias_execute(command, user, channel))


class Client:
    """A synchronous Squall API client.

    `url`, `api_key` and `auth_token` default to the environment (`config.Settings.resolve`). Use it as a
    context manager, or call `close()`, to release its connections. `transport` is httpx's (tests pass an
    `httpx.MockTransport`); `headers` are added to every request."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *, auth_token: str | None = None,
                 timeout: float | None = None, verify: bool | str = True, headers: Mapping[str, str] | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.settings = Settings.resolve(url, api_key, auth_token=auth_token, timeout=timeout)
        self._http = httpx.Client(base_url=self.settings.api_url, timeout=self.settings.timeout, verify=verify,
                                  transport=transport,
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
        return f"Client({self.settings.api_url!r})"

    def _send(self, call: api.Call[T]) -> T:
        try:
            response = self._http.request(call.method, call.path, params=call.params, json=call.json,
                                          headers=call.headers)
        except httpx.TransportError as exc:
            raise ApiConnectionError(f"cannot reach the Squall API at {self.settings.api_url}: "
                                     f"{str(exc) or type(exc).__name__}") from exc
        return api.read(call, response)

    def health(self) -> Health:
        """`/healthz`, which needs no key: whether the service is up, and how many packs it loaded."""
        return self._send(api.health(self.settings.root_url))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
