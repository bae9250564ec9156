"""`/stream/v1/stream`: StackStorm's event stream (`st2 execution tail`, `st2 run --tail`)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
