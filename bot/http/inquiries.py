"""`/api/v1/inquiries` (spec §11.2): workflows waiting for a person's answer, and answering them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel

from bot.http.key_auth import acting_user
from bot.http.state import api_state
from engine.inquiries import InquiryError, masked

router = APIRouter()


class InquiryResponse(BaseModel):
    id: str | None = None
    response: Any = None
    user: str | None = None


@router.get("/inquiries", tags=["inquiries"])
async def list_inquiries(request: Request, limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    return await api_state(request).squall.inquiries.list(limit=limit)


@router.get("/inquiries/{inquiry_id}", tags=["inquiries"])
async def get_inquiry(inquiry_id: str, request: Request) -> dict[str, Any]:
    try:
        return await api_state(request).squall.inquiries.get(inquiry_id)
    except InquiryError as exc:
        raise HTTPException(exc.status, str(exc)) from exc


@router.put("/inquiries/{inquiry_id}", tags=["inquiries"])
async def respond_inquiry(inquiry_id: str, body: InquiryResponse, request: Request) -> dict[str, Any]:
    """The responder checked against the inquiry's users is who the key or token speaks for; `user`
    names someone else only with a key from config (`acting_user`)."""
    user = acting_user(request, body.user)
    squall = api_state(request).squall
    try:
        answered = await squall.inquiries.respond(inquiry_id, body.response, user)
    except InquiryError as exc:
        await squall.db(squall.store.audit_add, "api.inquiry.denied", user, "api", inquiry_id, {"reason": str(exc)})
        raise HTTPException(exc.status, str(exc)) from exc
    await squall.db(squall.store.audit_add, "api.inquiry.respond", user, "api", answered["id"],
                    {"response": masked(answered["schema"], body.response)})
    return answered
