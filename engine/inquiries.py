"""Inquiries (spec §11.2): an `inquirer` execution waits, `pending`, for a person's answer.

An inquiry is the execution itself (as in StackStorm): its result holds the schema, the route,
who may answer and the TTL. Answering validates the response against the schema, checks the
responder, and finishes the execution `succeeded` with `result.response`; the workflow waiting
on it is conducted on by the workflow service's listener. An expired inquiry finishes `timeout`.

Squall adds chat approvals' rules (`count`, `self_approval`): every answer is kept in
`result.responses` (who, when, what); the inquiry finishes once `count` distinct people answered,
or at once when one says no to a yes/no field that decides it (`deciding`), with their answers
`merged`. Answers are taken one at a time in a process, so two people answering together both count.

An answer to a `secret: true` part of the schema (a PIN) is stored masked in `result`, as it is shown, and
sealed with the datastore key in the row's `sealed` column, as a secret parameter is (`sealing`): a copied
database file discloses it no more than the API does. The workflow that asked reads it back as given
(`answered_with`, in `engine.workflows.service`); a row stored before answers were sealed holds it in clear
and is read as it is.

Who may answer is StackStorm's `check_permission`: with `users` the responder must be one of them,
and with `roles` also in one of them (both checks, as StackStorm's `roles_passed and users_passed`).
One of them names the responder by the rule `auth` grants by (`engine.identity`): `irc:carol` is the
IRC nick only, never the API's or the web's carol, nor an API user named `irc:carol`. Whether someone may
answer at all (those, then `self_approval`, then once per person) is `why_not`: `respond` refuses by it, and
the chat and the web ask it before they offer or take an answer, so they offer what it takes, in its words.
Before it, `respond` refuses any answer to an inquiry whose workflow conducts nothing more (it ended, or it or
a workflow above it is canceling or canceled: `stopped_workflow`), and ends that inquiry `canceled`; `list`
ends such an inquiry so too and leaves it out, and `get` ends it so and shows it canceled, so no view shows it
waiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from engine.crypto import CryptoError
from engine.events import INQUIRY_PENDING
from engine.identity import bare_name, person_names
from engine.parameters import draft4, holds_secret, item_schema, property_schema, schema_masked
from engine.runners import RunOutcome, RunRequest
from engine.storage import iso, utcnow

if TYPE_CHECKING:
    from engine.executions import AuditEntry, ExecutionService
    from engine.storage import Store
    from engine.triggers import TriggerService

log = logging.getLogger(__name__)
RUNNER = "inquirer"
TRIGGER = "core.st2.generic.inquiry"


class InquiryError(ValueError):
    """An answer that cannot be accepted; `status` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class InquirerRunner:
    """The `inquirer` runner: the execution goes `pending` with the question as its result."""

    async def run(self, request: RunRequest) -> RunOutcome:
        params = request.runner_parameters
        return RunOutcome("pending", {
            "schema": params.get("schema") or {},
            "roles": list(params.get("roles") or []),
            "users": list(params.get("users") or []),
            "route": params.get("route") or "",
            "ttl": int(params.get("ttl") if params.get("ttl") is not None else 1440),
            "count": int(params.get("count") or 1),
            "self_approval": params.get("self_approval") is not False,
            "requester": request.context.get("user"),
            "responses": [],
        })


#: An answer with the values of the schema's `secret: true` parts shown as `********`: a PIN or a password
#: asked for is sealed with the record, for the workflow, and is shown nowhere.
masked = schema_masked


def shown(result: Any) -> Any:
    """An inquiry's result as shown (the API, the web, chat, the audit log): its answers masked."""
    if not isinstance(result, dict) or not holds_secret(result.get("schema")):
        return result
    schema = result["schema"]
    return {**result, "response": masked(schema, result.get("response")),
            "responses": [{**entry, "response": masked(schema, entry.get("response"))} if isinstance(entry, dict)
                          else entry for entry in result.get("responses") or []]}


def answers_of(result: Mapping[str, Any]) -> dict[str, Any]:
    """An inquiry's answers as given, what its row seals (`sealing`): the merged `response` and each of
    `responses`' in their order; a part the result has not (no `response` while it waits) is None."""
    return {"response": result.get("response"),
            "responses": [entry.get("response") if isinstance(entry, dict) else None
                          for entry in result.get("responses") or []]}


def sealing(result: Any) -> tuple[Any, dict[str, Any] | None]:
    """(`result` as stored, the answers to seal beside it): with a schema that has a secret, its answers
    masked (`shown`, keeping out the parts it has not) and the answers as given to seal; else as it is, None."""
    if not isinstance(result, dict) or not holds_secret(result.get("schema")):
        return result, None
    hidden = shown(result)
    return {**result, **{key: hidden[key] for key in ("response", "responses") if key in result}}, answers_of(result)


def answered_with(result: Any, answers: Mapping[str, Any] | None) -> Any:
    """`result` as stored (secret answers masked, `sealing`) with the `answers` sealed beside it put back:
    what the workflow that asked reads, and what the next answer of a `count` inquiry adds to. Without
    `answers` (a row stored before answers were sealed, or no secret asked) as it is."""
    if not answers or not isinstance(result, dict):
        return result
    real = dict(result)
    if "response" in result:
        real["response"] = answers.get("response")
    given = answers.get("responses") or []
    if "responses" in result:
        real["responses"] = [{**entry, "response": given[index]} if isinstance(entry, dict) and index < len(given)
                             else entry for index, entry in enumerate(result.get("responses") or [])]
    return real


def shown_execution(record: dict[str, Any]) -> dict[str, Any]:
    """An execution as shown: an inquiry's with its answers masked (`shown`); any other as it is."""
    if record.get("runner") != RUNNER:
        return record
    return {**record, "result": shown(record.get("result"))}


def public(record: dict[str, Any]) -> dict[str, Any]:
    """StackStorm's InquiryResponseAPI shape, plus status and parent, the answers masked (`shown`)."""
    result = shown(record.get("result") or {})
    return {"id": record["id"], "route": result.get("route", ""), "ttl": result.get("ttl"),
            "users": result.get("users", []), "roles": result.get("roles", []), "schema": result.get("schema", {}),
            "status": record["status"], "parent": record.get("parent"),
            "start_timestamp": record.get("start_timestamp"), "response": result.get("response"),
            "count": result.get("count", 1), "self_approval": result.get("self_approval", True),
            "responses": result.get("responses", [])}


def _secret_depth(schema: Mapping[str, Any], path: Sequence[Any]) -> int | None:
    """How much of `path` may be shown when the part of an answer there is, is inside or holds a
    `secret: true` property (the keys below a secret are part of it); None when it holds none. A path
    the schema cannot be followed along is cut there if the schema has a secret anywhere."""
    node: Any = schema
    for depth, step in enumerate(path):
        if isinstance(node, Mapping) and node.get("secret"):
            return depth
        node = ((property_schema(node, step) if isinstance(step, str) else item_schema(node, step))
                if isinstance(node, Mapping) and isinstance(step, str | int) else None)
        if node is None:
            return depth if holds_secret(schema) else None
    return len(path) if holds_secret(node) else None


def problem(schema: Mapping[str, Any], error: Any) -> str:
    """Where in an answer a jsonschema `error` is and what it says; where the value it is about holds
    a secret (a PIN mistyped), only which rule it breaks, in `check_parameter`'s words for a secret
    parameter: jsonschema's message quotes the value, and the refusal goes to chat, the API and the
    audit log. A missing property's message names the property only, so it is kept."""
    path = list(error.absolute_path)
    depth = None if error.validator == "required" else _secret_depth(schema, path)
    where = "/".join(str(step) for step in path[:len(path) if depth is None else depth]) or "response"
    return f"at {where}: " + (str(error.message) if depth is None else f"the value breaks '{error.validator}'")


def merged(responses: Sequence[dict[str, Any]], count: int = 1) -> dict[str, Any]:
    """What several people's answers tell the workflow: the last answer, with every yes/no field a
    yes only if everyone said yes and at least `count` people answered (a two-person approval is two
    yeses; one no is a no): an inquiry a no ended early never tells the workflow yes."""
    answer = dict(responses[-1])
    enough = len(responses) >= count
    for key in {k for r in responses for k, v in r.items() if isinstance(v, bool)}:
        answer[key] = enough and all(r.get(key) is True for r in responses if key in r)
    return answer


def _is_boolean(spec: Any) -> bool:
    kind = spec.get("type") if isinstance(spec, Mapping) else None
    return kind == "boolean" or (isinstance(kind, list) and "boolean" in kind)


def deciding(schema: Any, answer: Mapping[str, Any]) -> set[str]:
    """The yes/no fields whose no denies the inquiry: the schema's required booleans (`approved`), else
    its booleans, else (a schema naming none) every boolean in `answer`. A no to one of them decides
    the `merged` result (a yes only if everyone said yes), so the inquiry ends at once; an optional
    flag beside a required one (`notify_team: false`) is no no, or one person could end a two-person
    approval early."""
    plain = draft4(schema) if isinstance(schema, dict) else {}
    properties = plain.get("properties") if isinstance(plain.get("properties"), dict) else {}
    booleans = {name for name, spec in properties.items() if _is_boolean(spec)}
    required = set(plain["required"]) if isinstance(plain.get("required"), list) else set()
    return (booleans & required or booleans) if booleans else {k for k, v in answer.items() if isinstance(v, bool)}


def who_may(users: Sequence[str], roles: Sequence[str]) -> str:
    """Who may answer, in words (`ann or bea (who must also be in role dba)`): both lists must be met."""
    people = " or ".join(users)
    groups = "role " + " or ".join(roles)
    if users and roles:
        return f"{people} (who must also be in {groups})"
    return people or (f"members of {groups}" if roles else "anyone")


def refusal(user: str | None, groups: Sequence[str], users: Sequence[str], roles: Sequence[str],
            names: Collection[str] | None = None) -> str | None:
    """Why `user` (in `groups`) may not answer an inquiry for `users` and `roles`, or None if they may.
    Both must hold, as StackStorm's `check_permission`: with `users` set one must name them, and with
    `roles` set they must be in one; either alone would let anyone in a role answer what names one person.

    A user is named as `auth` names people (`engine.identity`): `names` are how config may name them
    (`names_of(None, user)` for the API's and the web's user: `carol` is neither `irc:carol` nor
    `slack:carol`, and a user named `irc:carol` only `api:irc:carol`); without them `user` is as chat's
    `person` gives it (`irc:carol` for the nick, `person_names`)."""
    name = f"{user} is" if user else "you are"
    known = set(names) if names is not None else person_names(user) if user else set()
    if users and not known & {str(entry) for entry in users}:
        return f"{name} not one of its users"
    if roles and not set(groups) & set(roles):
        return f"{name} in none of its roles" + (f" (in {', '.join(sorted(groups))})" if groups else "")
    return None


def why_not(record: Mapping[str, Any], user: str | None, groups: Sequence[str] = (),
            names: Collection[str] | None = None, by_name: str | None = None) -> InquiryError | None:
    """Why `user` (in `groups`) may not answer the inquiry `record` (an execution record: its `result` names
    who may), as the error `respond` raises, or None if they may. In `respond`'s order: its `users` and `roles`
    (`refusal`, `names` as there; 403), not the requester when `self_approval` is false (403), and once per
    person for a `count` of more than one (409). `respond` refuses by it; the chat and the web ask it first,
    so that they offer the answer to whom the service takes it from, and say why not in the service's words.

    `by_name` (chat: the sender's name as the platform gives it) compares the requester and the earlier
    answerers by name on any platform (`bare_name`), the stricter reading, and names the person by it: the
    nick carol (`irc:carol`) may be the carol who started the workflow on Slack or answered through the API,
    so the nick may not answer in her place. Without it they are compared as `user` is given (the API, the
    web, the CLI, and the service's own check of chat's `irc:carol`)."""
    result = record.get("result") or {}
    users, roles = result.get("users") or [], result.get("roles") or []
    why = refusal(user, groups, users, roles, names)
    if why is not None:
        return InquiryError(f'{user or "you"} may not respond to inquiry {record["id"]}: only '
                            f'{who_may(users, roles)} may, and {why}', 403)
    who = user if by_name is None else by_name
    where = "" if by_name is None else " (by that name, on any platform)"
    if result.get("self_approval") is False and who is not None and _same(who, result.get("requester"), by_name):
        return InquiryError(f"{who} started the workflow of inquiry {record['id']}{where}: someone else must answer "
                            "it", 403)
    if any(_same(who, r.get("user"), by_name) for r in result.get("responses") or []):
        return InquiryError(f"{who or 'you'} already answered inquiry {record['id']}{where}; each person counts "
                            "once", 409)
    return None


def _same(who: str | None, other: str | None, by_name: str | None) -> bool:
    """Whether the recorded `other` is `who`: by name on any platform with `by_name` (`why_not`), else as given."""
    return bare_name(other) == bare_name(who) if by_name is not None else other == who


def stopped_workflow(store: Store, workflow_id: str) -> dict[str, Any] | None:
    """The workflow that makes an answer to an inquiry of `workflow_id` pointless, or None (on the database
    thread, one call): `workflow_id` itself if it ended (any end) or is canceling, as recovery cancels what
    is left under an ended workflow; else the first workflow above it that is canceling or canceled
    (`canceled_above`), whatever the levels between say: a cancel that failed midway leaves them `paused`."""
    from engine.executions import COMPLETED
    from engine.workflows.service import canceled_above  # that module imports this one

    workflow = store.get_execution(workflow_id)
    if workflow is None:
        return None
    if workflow["status"] == "canceling" or workflow["status"] in COMPLETED:
        return workflow
    return canceled_above(store, workflow.get("parent"))


class InquiryService:
    """Lists, answers and expires inquiries; publishes `INQUIRY_PENDING` for new ones (chat asks them)."""

    def __init__(self, executions: ExecutionService, triggers: TriggerService | None = None) -> None:
        self.executions = executions
        self.triggers = triggers
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Answers are read, checked and written one at a time: a count of 2 must not lose one of two.
        self._answering = asyncio.Lock()
        executions.on_finished(self._on_finished)

    def _on_finished(self, record: dict[str, Any]) -> Any:
        if record["runner"] != RUNNER:
            return None
        if record["status"] != "pending":
            timer = self._timers.pop(record["id"], None)
            if timer is not None:
                timer.cancel()
            return None
        return self._pending(record)

    async def _pending(self, record: dict[str, Any]) -> None:
        ttl = int((record.get("result") or {}).get("ttl") or 0)
        if ttl > 0:
            self._timers[record["id"]] = asyncio.get_running_loop().call_later(ttl * 60, self._expire_soon,
                                                                               record["id"])
        if self.triggers is not None:
            try:
                await self.triggers.dispatch(TRIGGER, {"id": record["id"],
                                                       "route": (record.get("result") or {}).get("route", "")},
                                             validate=False)
            except Exception:
                log.exception("dispatching %s for inquiry %s failed", TRIGGER, record["id"])
        self.executions.events.publish(INQUIRY_PENDING, record)

    def _expire_soon(self, inquiry_id: str) -> None:
        self._timers.pop(inquiry_id, None)
        task = asyncio.ensure_future(self.expire(inquiry_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- reading ---------------------------------------------------------------------------------
    async def _record(self, inquiry_id: str) -> dict[str, Any]:
        from engine.executions import ExecutionNotFound

        try:
            record = await self.executions.get(inquiry_id)
        except ExecutionNotFound as exc:
            raise InquiryError(f'inquiry "{inquiry_id}" not found', 404) from exc
        if record["runner"] != RUNNER:
            raise InquiryError(f'execution {record["id"]} is not an inquiry (runner {record["runner"]})', 404)
        if record["status"] == "pending" and self._expired(record):
            record = await self.expire(record["id"]) or await self.executions.get(record["id"])
        return record

    @staticmethod
    def _expired(record: dict[str, Any]) -> bool:
        ttl = int((record.get("result") or {}).get("ttl") or 0)
        if ttl <= 0:
            return False
        from datetime import datetime

        started = datetime.fromisoformat(str(record["start_timestamp"]).replace("Z", "+00:00"))
        return utcnow() >= started + timedelta(minutes=ttl)

    async def get(self, inquiry_id: str) -> dict[str, Any]:
        """The inquiry as shown (`public`). One still `pending` whose workflow conducts nothing more
        (`stopped_workflow`) is ended `canceled` first, as `list` and `respond` end it, and shown so: shown
        `pending` (the web's inquiry page, the API, `squall inquiry get`), it offered an answer `respond`
        would refuse. Done here, not in `_record`: `respond` refuses such an inquiry by its own check."""
        record = await self._record(inquiry_id)
        if record["status"] == "pending" and await self._cancel_if_workflow_stopped(record) is not None:
            record = await self.executions.get(record["id"])
        return public(record)

    async def list(self, limit: int = 100) -> list[dict[str, Any]]:
        """The pending inquiries, up to `limit`. One that expired is ended `timeout`, and one whose workflow
        conducts nothing more (`stopped_workflow`) is ended `canceled` as `respond` ends it, both left out:
        listed, it showed as waiting (in chat, the web, `squall inquiry list`) until someone answered it
        only to be refused, or the next start canceled it."""
        rows = await self.executions.list(status="pending", limit=10_000)
        found = []
        for row in rows:
            if row["runner"] != RUNNER:
                continue
            if self._expired(row):
                await self.expire(row["id"])
                continue
            if len(found) < limit and await self._cancel_if_workflow_stopped(row) is not None:
                continue
            found.append(public(row))
        return found[:limit]

    async def answered(self, limit: int = 50) -> list[dict[str, Any]]:
        """The `limit` inquiries asked most recently that were answered, newest first, as execution
        records shown (`shown_execution`): `result.responder` says who answered and `end_timestamp`
        when (`respond` stores both)."""
        refs = [ref for ref, action in self.executions.registry.actions.items() if action.runner_type == RUNNER]
        rows = [row for ref in refs for row in await self.executions.list(action=ref, status="succeeded",
                                                                           limit=limit)]
        ordered = sorted(rows, key=lambda row: (row["start_timestamp"], row["id"]), reverse=True)[:limit]
        return [shown_execution(row) for row in ordered]

    # -- answering ---------------------------------------------------------------------------------
    async def respond(self, inquiry_id: str, response: Any, user: str | None,
                      groups: Sequence[str] = (), audit: AuditEntry | None = None,
                      names: Collection[str] | None = None, by_name: str | None = None) -> dict[str, Any]:
        """Validate and record the answer; raises `InquiryError` saying what is wrong. `audit` (who answered)
        is stored with the answer, in its transaction (`ExecutionService.change`, `complete`): about the
        inquiry unless it names its own target, its detail gaining the response, secrets masked. `names`:
        how config may name `user`, for the inquiry's `users` (`refusal`); `by_name` (chat: the sender's
        name) compares the requester and the earlier answerers by name on any platform (`why_not`), here,
        with the answers read under the lock: checked before it, the nicks carol on IRC and carol on Slack
        answering together both counted towards a `count` of 2."""
        async with self._answering:
            return await self._respond(inquiry_id, response, user, groups, audit, names, by_name)

    async def _respond(self, inquiry_id: str, response: Any, user: str | None, groups: Sequence[str],
                       audit: AuditEntry | None = None, names: Collection[str] | None = None,
                       by_name: str | None = None) -> dict[str, Any]:
        record = await self._record(inquiry_id)
        if record["status"] != "pending":
            why = "it expired" if record["status"] == "timeout" else f"it is {record['status']}"
            raise InquiryError(f'inquiry {record["id"]} cannot be answered: {why}', 409)
        await self._refuse_if_workflow_stopped(record)
        stored = await self._stored(record)
        result = record.get("result") or {}
        if stored is not None:
            result = answered_with(result, self._sealed_answers(stored))
        refused = why_not(record, user, groups, names, by_name)  # who may and who did: `answered_with` changes neither
        if refused is not None:
            raise refused
        earlier = list(result.get("responses") or [])
        if not isinstance(response, dict):
            raise InquiryError("the response must be a JSON object, e.g. {\"continue\": true}")
        schema = draft4(result.get("schema") or {})
        import jsonschema  # here, not at the top: ~35 ms that `squall serve` need not pay before it answers

        try:
            error = jsonschema.exceptions.best_match(jsonschema.Draft4Validator(schema).iter_errors(response))
        except jsonschema.exceptions.SchemaError as exc:
            raise InquiryError(f"the inquiry's schema is invalid: {exc.message}") from exc
        if error is not None:
            raise InquiryError("the response does not fit the inquiry's schema "
                               + problem(result.get("schema") or {}, error))
        responses = [*earlier, {"user": user, "at": iso(utcnow()), "response": response}]
        answers = [r["response"] for r in responses]
        count = int(result.get("count") or 1)
        said_no = any(response.get(key) is False for key in deciding(result.get("schema"), response))
        if audit is not None:
            audit = audit.with_facts(response=masked(result.get("schema") or {}, response))
        if len(responses) < count and not said_no:  # more people must answer
            waiting = {**result, "responses": responses}
            if not await self.executions.change(record["id"], self._at_rest(stored, waiting), ("pending",), audit):
                raise InquiryError(f'inquiry {record["id"]} was answered or expired meanwhile', 409)
            return public({**record, "result": waiting})
        ended = self._at_rest(stored, {**result, "response": merged(answers, count), "responder": user,
                                       "responses": responses})
        done = await self.executions.complete(record["id"], "succeeded", ended["result"], ("pending",), audit,
                                              sealed=ended.get("sealed"))
        if done is None:
            raise InquiryError(f'inquiry {record["id"]} was answered or expired meanwhile', 409)
        return public(done)

    async def _refuse_if_workflow_stopped(self, record: dict[str, Any]) -> None:
        """Refuse an answer to an inquiry whose workflow conducts nothing more (`stopped_workflow`): the
        inquiry is ended `canceled`, as the workflow's cancel (or recovery, under an ended one) ends it,
        and the InquiryError (409) names the workflow and its status. Taken, the answer ran the
        workflow's branch inside a tree that had been canceled, or woke a workflow that had ended."""
        stopped = await self._cancel_if_workflow_stopped(record)
        if stopped is None:
            return
        where, ended = stopped
        raise InquiryError(f'inquiry {record["id"]} cannot be answered: {where}, so nothing would act on the '
                           "answer" + ("; the inquiry is canceled with it" if ended else ""), 409)

    async def _cancel_if_workflow_stopped(self, record: dict[str, Any]) -> tuple[str, bool] | None:
        """End the inquiry `canceled` if its workflow conducts nothing more (`stopped_workflow`; one database
        call): (where it stopped, in words naming the workflow and its status; whether this call ended the
        inquiry, not someone else meanwhile), or None when its workflow still waits on it (or it has none)."""
        if not record.get("parent"):
            return None
        executions = self.executions
        stopped = await executions.db(stopped_workflow, executions.db.store, record["parent"])
        if stopped is None:
            return None
        what = f'{stopped["id"]} ({stopped["action"]})'
        where = (f"its workflow {what} is {stopped['status']}" if stopped["id"] == record["parent"] else
                 f"workflow {what}, which its workflow {record['parent']} runs under, is {stopped['status']}")
        ended = await executions.complete(record["id"], "canceled", {
            **(record.get("result") or {}), "error": f"it can no longer be answered: {where}"},
            ("pending",))
        return where, ended is not None

    async def _stored(self, record: Mapping[str, Any]) -> dict[str, Any] | None:
        """The inquiry's row as stored, its `sealed` column with it, when its schema has a secret (its answers
        are sealed there); None otherwise."""
        if not holds_secret((record.get("result") or {}).get("schema")):
            return None
        executions = self.executions
        return await executions.db(executions.db.store.get_execution, record["id"]) or {}

    def _sealed_answers(self, stored: Mapping[str, Any]) -> Any:
        """The answers sealed with the inquiry's row (`ExecutionService.unseal_answers`); InquiryError when the
        key file no longer reads them: an answer added to them would lose the earlier ones."""
        try:
            return self.executions.unseal_answers(stored)
        except CryptoError as exc:
            raise InquiryError(f"inquiry {stored.get('id')}: the answers given so far are sealed under a key the "
                               f"key file no longer holds ({exc}); restore the key file that sealed them, then "
                               "answer again", 500) from exc

    def _at_rest(self, stored: Mapping[str, Any] | None, result: dict[str, Any]) -> dict[str, Any]:
        """The fields that store `result`: with a schema that has a secret (`stored`, the row, is then given),
        its answers masked in `result` and sealed with what the row seals already (`sealing`)."""
        kept, answers = sealing(result)
        if stored is None or answers is None:
            return {"result": result}
        return {"result": kept, "sealed": self.executions.seal_answers(stored, answers)}

    async def expire(self, inquiry_id: str) -> dict[str, Any] | None:
        record = await self.executions.get(inquiry_id)
        if record["status"] != "pending":
            return None
        result = {**(record.get("result") or {}), "error": "the inquiry expired before anyone answered it"}
        return await self.executions.complete(inquiry_id, "timeout", result, ("pending",))

    async def recover(self) -> int:
        """Arm the TTL timers of pending inquiries that have none here; expire the overdue ones. Run at
        the start of `squall serve` and `squall worker`, and with workers by the lead every minute: a
        timer lives in the process that asked, and a worker that stopped took it along, leaving the
        question (and its workflow) waiting for ever. Idempotent, and safe beside another process
        doing the same: `expire` ends only a `pending` one (compare-and-set), so one process alone
        ends it and tells its workflow. Returns how many timers it armed."""
        armed = 0
        loop = asyncio.get_running_loop()
        for row in await self.executions.list(status="pending", limit=100_000):
            ttl = int((row.get("result") or {}).get("ttl") or 0)
            if row["runner"] != RUNNER or ttl <= 0:
                continue
            if self._expired(row):
                if await self.expire(row["id"]) is not None:
                    log.info("inquiry %s expired: its TTL of %d min ran out with no timer left for it (the process "
                             "that asked it stopped)", row["id"], ttl)
                continue
            if row["id"] in self._timers:
                continue
            from datetime import datetime

            started = datetime.fromisoformat(str(row["start_timestamp"]).replace("Z", "+00:00"))
            left = (started + timedelta(minutes=ttl) - utcnow()).total_seconds()
            self._timers[row["id"]] = loop.call_later(max(0.0, left), self._expire_soon, row["id"])
            armed += 1
        return armed

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
