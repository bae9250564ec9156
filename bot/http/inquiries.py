"""`/api/v1/inquiries` (spec §11.2): workflows waiting for a person's answer, and answering them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel

from bot.http.key_auth import acting_user
from bot.http.paging import ALL_ROWS, page_limit
from bot.http.state import api_state
from engine.executions import AuditEntry
from engine.identity import names_of
from engine.inquiries import InquiryError

router = APIRouter()


class InquiryResponse(BaseModel):
    id: str | None = None
    response: Any = None
    user: str | None = None


@router.get("/inquiries", tags=["inquiries"])
async def list_inquiries(request: Request,
                         limit: int | None = Depends(page_limit(100, 1000))) -> list[dict[str, Any]]:
    """The pending ones; `limit=-1` lists them all (`st2 inquiry list -n -1`)."""
    return await api_state(request).squall.inquiries.list(limit=ALL_ROWS if limit is None else limit)


@router.get("/inquiries/{inquiry_id}", tags=["inquiries"])
async def get_inquiry(inquiry_id: str, request: Request) -> dict[str, Any]:
    try:
        return await api_state(request).squall.inquiries.get(inquiry_id)
    except InquiryError as exc:
        raise HTTPException(exc.status, str(exc)) from exc


@router.put("/inquiries/{inquiry_id}", tags=["inquiries"])
async def respond_inquiry(inquiry_id: str, body: InquiryResponse, request: Request) -> dict[str, Any]:
    """The responder checked against the inquiry's users is who the key or token speaks for; `user`
    names someone else only with a key from config (`acting_user`). Their groups, checked against its
    `roles`, are the config `auth.groups` listing them, as the chat's `Authorizer` reads them, and its
    `users` name them as `auth` does (`names_of`, no adapter): the API's carol is `carol`, never the nick
    `irc:carol`, nor is a user named `irc:carol`. The answer and its `api.inquiry.respond` event (the
    response, secrets masked) are one transaction."""
    user = acting_user(request, body.user)
    squall = api_state(request).squall
    groups = sorted(squall.chat.inquiries.auth.member_of(user))
    audit = AuditEntry("api.inquiry.respond", user, "api", None, {})
    try:
        return await squall.inquiries.respond(inquiry_id, body.response, user, groups, audit, names_of(None, user))
    except InquiryError as exc:
        await squall.db(squall.store.audit_add, "api.inquiry.denied", user, "api", inquiry_id, {"reason": str(exc)})
        raise HTTPException(exc.status, str(exc)) from exc
