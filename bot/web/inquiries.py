"""`/inquiries`: questions workflows wait on, who may answer them, and who answered what and when.

Everything goes through `InquiryService`, as the API, the CLI and chat do: the list, the expiry of
overdue questions, and the answer, which the service checks against the schema and the inquiry's
`users` and `roles` (both, when both are set) and stores with its responder (the execution's
`result.responder`; the time is its `end_timestamp`) and its `web.inquiry.respond` audit event, in one
transaction. The answer form is `bot.forms`' fields of the response schema, offered only to an account
the service would take the answer of (`why_not_answer`), and in its place why not; a wrong answer is told
beside its field, or above the form when the service refuses it, a long value it quotes cut short
(`bot.forms.checked`, `quoted_shortly`), as the run form's. An account's groups are
its role (`viewer`, `operator`, `admin`) and the config `auth.groups` that list its name (the chat's
`Authorizer.member_of`), so an inquiry for `roles: [admin]` may be answered by the UI's admins, and
one for `roles: [approvers]` by the accounts config puts in approvers, as by a chat user in a group of
that name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse

from bot.accounts import Session
from bot.forms import Field, checked, quoted_shortly, schema_fields, with_defaults
from bot.web.pages import PageError, PageRoute, render
from bot.web.session import form_fields, operator, viewer
from engine.executions import AuditEntry, ExecutionNotFound
from engine.identity import names_of
from engine.inquiries import InquiryError, shown_execution, who_may, why_not

router = APIRouter(route_class=PageRoute, include_in_schema=False)
#: How many answered inquiries the list shows.
ANSWERED_SHOWN = 50


def question(schema: Mapping[str, Any]) -> str:
    """What the inquiry asks, in its author's words: the schema's description, else its properties'."""
    if schema.get("description"):
        return str(schema["description"])
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    asked = [str(spec.get("description") or name) for name, spec in properties.items() if isinstance(spec, dict)]
    return "; ".join(asked)


async def _workflow(request: Request, parent: str | None) -> dict[str, Any] | None:
    """The execution waiting on the inquiry (None for one asked outside a workflow, or gone)."""
    if not parent:
        return None
    try:
        return await request.app.state.squall.executions.get(parent)
    except ExecutionNotFound:
        return None


@router.get("/inquiries")
async def inquiry_list(request: Request, session: Session = Depends(viewer)) -> Response:
    inquiries = request.app.state.squall.inquiries
    pending = [{**item, "question": question(item["schema"]), "who_may": who_may(item["users"], item["roles"]),
                "workflow": await _workflow(request, item["parent"])} for item in await inquiries.list()]
    answered = [{**record, "question": question((record.get("result") or {}).get("schema") or {})}
                for record in await inquiries.answered(ANSWERED_SHOWN)]
    return render(request, "inquiries.html", {"session": session, "pending": pending, "answered": answered})


async def _inquiry(request: Request, inquiry_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The inquiry as the service shows it (expired first if overdue), and its execution record."""
    squall = request.app.state.squall
    try:
        inquiry = await squall.inquiries.get(inquiry_id)
    except InquiryError as exc:
        raise PageError(str(exc), exc.status) from exc
    return inquiry, shown_execution(await squall.executions.get(inquiry["id"]))


def _groups(squall: Any, session: Session) -> list[str]:
    """The account's groups for an inquiry's `roles`: its role and the config `auth.groups` that list it."""
    name = session.account.name
    return sorted({session.account.role} | squall.chat.inquiries.auth.member_of(name))


def why_not_answer(squall: Any, session: Session, record: dict[str, Any]) -> str | None:
    """Why the account may not answer the pending inquiry (`record`, its execution), in the words
    `InquiryService.respond` would refuse it with, or None when it may: the operator role, then the engine's
    rule (`why_not`, the person named as the answer names them): its `users` and `roles`, not the requester
    under `self_approval: false`, and once per person. The form was offered to all three, and its post
    answered a bare error page. Only decides what the page offers (and an execution's page, which links the
    inquiry's to whom may answer): the answer is checked again by the service."""
    if not session.account.may("operator"):
        return f"Answering needs the operator role; {session.account.name} is a {session.account.role}."
    name = session.account.name
    refused = why_not(record, name, _groups(squall, session), names_of(None, name))
    return None if refused is None else str(refused)


def _page(request: Request, session: Session, inquiry: dict[str, Any], record: dict[str, Any],
          workflow: dict[str, Any] | None, fields: list[Field], values: Mapping[str, str],
          errors: Mapping[str, str] | None = None, problem: str | None = None, status: int = 200,
          refused: str | None = None) -> Response:
    """The inquiry, and while it is pending the answer form, or in its place why the account may not answer
    (`why_not_answer`). `refused`: why the service just refused an answer (not allowed, or no longer pending)."""
    squall = request.app.state.squall
    why_not = why_not_answer(squall, session, record) if inquiry["status"] == "pending" else None
    return render(request, "inquiry.html", {
        "session": session, "inquiry": inquiry, "record": record, "workflow": workflow, "fields": fields,
        "values": values, "errors": errors or {}, "problem": problem, "question": question(inquiry["schema"]),
        "who_may": who_may(inquiry["users"], inquiry["roles"]), "refused": refused, "why_not": why_not,
        "may_answer": inquiry["status"] == "pending" and why_not is None}, status_code=status)


def _fields(inquiry: dict[str, Any]) -> list[Field]:
    return schema_fields(inquiry["schema"], f'inquiry "{inquiry["id"]}"')


@router.get("/inquiries/{inquiry_id}")
async def inquiry_page(request: Request, inquiry_id: str, session: Session = Depends(viewer)) -> Response:
    inquiry, record = await _inquiry(request, inquiry_id)
    fields = _fields(inquiry)
    return _page(request, session, inquiry, record, await _workflow(request, inquiry["parent"]), fields,
                 {f.name: f.initial for f in fields})


@router.post("/inquiries/{inquiry_id}")
async def inquiry_answer(request: Request, inquiry_id: str, session: Session = Depends(operator)) -> Response:
    inquiry, record = await _inquiry(request, inquiry_id)
    fields = _fields(inquiry)
    submitted = await form_fields(request)
    shown = {f.name: submitted.get(f.input_name, "") for f in fields if f.kind != "secret"}
    parsed = checked(fields, submitted)  # a long wrong value quoted cut short, as the run form's
    workflow = await _workflow(request, inquiry["parent"])
    if not parsed.ok:
        return _page(request, session, inquiry, record, workflow, fields, shown, parsed.errors, status=400)
    squall = request.app.state.squall
    name = session.account.name
    groups = _groups(squall, session)
    # Stored with the answer, one transaction (`InquiryService.respond`): an answer the database did not
    # take leaves no event, and none is recorded without it. Its detail gains the response, secrets masked.
    audit = AuditEntry("web.inquiry.respond", name, "web", None, {"workflow": inquiry["parent"]})
    try:
        # Named as `auth` names the web's user (no adapter): an account called `irc:carol` is not the nick.
        await squall.inquiries.respond(inquiry["id"], with_defaults(fields, parsed.values), name, groups, audit,
                                       names_of(None, name))
    except InquiryError as exc:
        if exc.status in (403, 409):  # not this person's to answer, or no longer pending: the inquiry as it is
            inquiry, record = await _inquiry(request, inquiry_id)  # now, saying why in place of the form
            return _page(request, session, inquiry, record, workflow, fields, shown, status=exc.status,
                         refused=str(exc))
        if exc.status != 400:  # gone, or its answers unreadable: nothing to correct in the form
            raise PageError(str(exc), exc.status) from exc
        return _page(request, session, inquiry, record, workflow, fields, shown,
                     problem=quoted_shortly(str(exc), shown.values()), status=400)
    return RedirectResponse(f"/inquiries/{inquiry['id']}", status_code=303)
