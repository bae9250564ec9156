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

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse

from bot.accounts import Session
from bot.forms import Field, action_fields, checked, parameter_named, quoted_shortly
from bot.web.pages import PageError, PageRoute, render
from bot.web.session import admin_to, form_fields, operator, viewer
from engine.actions import Action, unapproved
from engine.executions import AuditEntry
from engine.packs import UnknownAction
from engine.parameters import ParameterError, shown_parameters

router = APIRouter(route_class=PageRoute, include_in_schema=False)
#: A search longer than this is cut (no ref or description needs more).
MAX_QUERY = 200
#: Packs whose actions manage Squall itself (datastore keys, packs): on the web only admins run them, as only
#: admins manage keys and packs on its pages; an operator running `squall.key_set` set a key `/keys` refused.
ADMIN_PACKS = frozenset({"squall", "packs"})


def admin_only(ref: str) -> str | None:
    """Why running (or re-running) the action `ref` from the web needs the admin role, or None when the
    operator role will do (`ADMIN_PACKS`)."""
    pack = ref.partition(".")[0]
    if pack not in ADMIN_PACKS:
        return None
    return f"Running {ref}, of the {pack} pack, which manages Squall itself (its packs and datastore keys),"


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
    return render(request, "actions.html", {"session": session, "packs": packs, "q": query, "admin_packs": ADMIN_PACKS,
                                            "shown": sum(map(len, packs.values())), "total": len(registry.actions)})


def _action(request: Request, ref: str) -> Action:
    action = request.app.state.squall.registry.actions.get(ref)
    if action is None:
        raise PageError(f'action "{ref}" not found: the actions page lists those loaded', 404)
    return action


def refusal(exc: Exception, fields: list[Field], sent: Mapping[str, str]) -> tuple[dict[str, str], str | None]:
    """The engine's refusal of a run (or re-run) form's request, as the form shows it: beside the field it
    names (`parameter_named`), else above the form; the values it quotes from what was `sent` cut short."""
    said = quoted_shortly(str(exc), sent.values())
    named = parameter_named(said)
    if named and any(f.name == named for f in fields):
        return {named: said}, None
    return {}, said


def _page(request: Request, session: Session, action: Action, fields: list[Field], values: Mapping[str, str],
          errors: Mapping[str, str] | None = None, problem: str | None = None, status: int = 200) -> Response:
    admins_only = admin_only(action.ref) if not session.account.may("admin") else None
    return render(request, "action.html", {
        "session": session, "action": action, "parameters": shown_parameters(action.parameters), "fields": fields,
        "values": values, "errors": errors or {}, "admins_only": admins_only,
        "problem": problem, "may_run": session.account.may("operator") and admins_only is None and action.enabled
                                       and action.approval is None,
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
    if (doing := admin_only(action.ref)) is not None:
        session = await admin_to(request, doing)
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
