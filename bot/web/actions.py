"""`/actions`: the loaded actions by pack with search, and an action's page with its run form.

The form is `bot.forms`' fields of the action's parameters, and what it sends back is parsed there, so
each wrong field gets the engine's own message beside it, a long value quoted in it cut short
(`quoted_shortly`). A good form is run through
`ExecutionService.request`, the call `POST /api/v1/executions` makes, with the values as data (never
rendered as templates), the account's name as the user and `web` as the source; the request is
audited as the UI's cancel is, in the request's own transaction, and the browser goes on to the new
execution's page.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse

from bot.accounts import Session
from bot.chat.replies import short
from bot.forms import Field, Parsed, action_fields, lf_lines, parameter_named, parse
from bot.web.pages import PageError, PageRoute, render
from bot.web.session import form_fields, operator, viewer
from engine.actions import Action, unapproved
from engine.executions import AuditEntry
from engine.packs import UnknownAction
from engine.parameters import ParameterError, shown_parameters

router = APIRouter(route_class=PageRoute, include_in_schema=False)
#: A search longer than this is cut (no ref or description needs more).
MAX_QUERY = 200
#: How much of a wrong value a field's message quotes: as much as the chat shows of a value it echoes
#: (`bot.chat.replies.short`, 60 characters for a parameter's value), then an ellipsis.
QUOTED_CHARS = 60
#: The most parts of a JSON value (items, keys, values) `quoted_shortly` looks for in a message.
MAX_QUOTED_PARTS = 200


def matches(action: Action, query: str) -> bool:
    """Whether every word of `query` is in the action's ref or description (case ignored)."""
    text = f"{action.ref} {action.description}".lower()
    return all(word in text for word in query.lower().split())


@router.get("/actions")
async def action_list(request: Request, q: str = "", session: Session = Depends(viewer)) -> Response:
    query = q.strip()[:MAX_QUERY]
    registry = request.app.state.squall.registry
    packs: dict[str, list[Action]] = {}
    for ref in sorted(registry.actions):
        action = registry.actions[ref]
        if matches(action, query):
            packs.setdefault(action.pack, []).append(action)
    return render(request, "actions.html", {"session": session, "packs": packs, "q": query,
                                            "shown": sum(map(len, packs.values())), "total": len(registry.actions)})


def _action(request: Request, ref: str) -> Action:
    action = request.app.state.squall.registry.actions.get(ref)
    if action is None:
        raise PageError(f'action "{ref}" not found: the actions page lists those loaded', 404)
    return action


def checked(fields: list[Field], submitted: Mapping[str, str]) -> Parsed:
    """`bot.forms.parse` of a run (or re-run) form, each field's message quoting its value cut short."""
    parsed = parse(fields, submitted)
    sent = {f.name: submitted.get(f.input_name, "") for f in fields if f.kind != "secret"}
    parsed.errors = {name: quoted_shortly(message, [sent.get(name, "")]) for name, message in parsed.errors.items()}
    return parsed


def quoted_shortly(message: str, texts: Iterable[str]) -> str:
    """`message` with each long value it quotes cut to its first `QUOTED_CHARS` characters and an ellipsis.

    The engine's messages and jsonschema's quote a wrong value whole, as Python writes it (`repr`): the text
    a field sent, or a part of its JSON (an item, a key); a value of 10,000 characters filled the page beside
    its field, twice. `texts` are what the form's fields sent (never a secret's: the engine quotes none).
    Only those values are cut, longest first, so nothing else a message says is (a pattern, a description)."""
    if len(message) <= QUOTED_CHARS:
        return message  # too short to quote a long value
    quoted: set[str] = set()
    for text in texts:
        for value in (text, lf_lines(text), *_parts(text)):
            try:
                quoted.add(repr(value))
            except RecursionError:  # nested as deep as json.loads reads: no message quotes it whole
                continue
    for whole in sorted((q for q in quoted if len(q) > QUOTED_CHARS), key=len, reverse=True):
        if whole in message:
            message = message.replace(whole, _cut(whole))
    return message


def refusal(exc: Exception, fields: list[Field], sent: Mapping[str, str]) -> tuple[dict[str, str], str | None]:
    """The engine's refusal of a run (or re-run) form's request, as the form shows it: beside the field it
    names (`parameter_named`), else above the form; the values it quotes from what was `sent` cut short."""
    said = quoted_shortly(str(exc), sent.values())
    named = parameter_named(said)
    if named and any(f.name == named for f in fields):
        return {named: said}, None
    return {}, said


def _cut(quoted: str) -> str:
    """A quoted value cut short, as the chat cuts one (`short`); a string keeps its closing quote."""
    if len(quoted) > 1 and quoted[0] in "'\"" and quoted[-1] == quoted[0]:
        inner = quoted[1:-1]
        return quoted if len(inner) <= QUOTED_CHARS else f"{quoted[0]}{short(inner, QUOTED_CHARS)}{quoted[0]}"
    return short(quoted, QUOTED_CHARS)


def _parts(text: str) -> Iterator[Any]:
    """The value a field's text is as JSON (an array's, an object's, a number's) and its parts, at most
    `MAX_QUOTED_PARTS`; nothing for text that is no JSON."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return
    waiting = deque([value])
    for _ in range(MAX_QUOTED_PARTS):
        if not waiting:
            return
        item = waiting.popleft()
        yield item
        if isinstance(item, dict):
            waiting.extend(part for pair in item.items() for part in pair)
        elif isinstance(item, list):
            waiting.extend(item)


def _page(request: Request, session: Session, action: Action, fields: list[Field], values: Mapping[str, str],
          errors: Mapping[str, str] | None = None, problem: str | None = None, status: int = 200) -> Response:
    return render(request, "action.html", {
        "session": session, "action": action, "parameters": shown_parameters(action.parameters), "fields": fields,
        "values": values, "errors": errors or {},
        "problem": problem, "may_run": session.account.may("operator") and action.enabled and action.approval is None,
        "needs_approval": unapproved(action.ref, action.approval) if action.approval is not None else None},
        status_code=status)


@router.get("/actions/{ref}")
async def action_page(request: Request, ref: str, session: Session = Depends(viewer)) -> Response:
    action = _action(request, ref)
    fields = action_fields(action)
    return _page(request, session, action, fields, {f.name: f.initial for f in fields})


@router.post("/actions/{ref}")
async def action_run(request: Request, ref: str, session: Session = Depends(operator)) -> Response:
    action = _action(request, ref)
    fields = action_fields(action)
    submitted = await form_fields(request)
    # What the person typed goes back into the form on an error, but never a secret.
    shown = {f.name: submitted.get(f.input_name, "") for f in fields if f.kind != "secret"}
    if action.approval is not None:
        return _page(request, session, action, fields, shown, problem=unapproved(action.ref, action.approval),
                     status=403)
    parsed = checked(fields, submitted)
    if not parsed.ok:
        return _page(request, session, action, fields, shown, parsed.errors, status=400)
    squall = request.app.state.squall
    context: dict[str, Any] = {"source": "web", "user": session.account.name}
    # Stored with the request, one transaction: with the action and its parameters as the execution stores
    # them, secrets masked, as the API's and the CLI's rows (`ExecutionService.request`).
    audit = AuditEntry("web.execution.request", session.account.name, "web", None, {})
    try:
        record = await squall.executions.request(action.ref, parsed.values, context, audit=audit)
    except (ParameterError, UnknownAction, ValueError) as exc:
        errors, problem = refusal(exc, fields, shown)
        return _page(request, session, action, fields, shown, errors, problem, status=400)
    return RedirectResponse(f"/executions/{record['id']}", status_code=303)
