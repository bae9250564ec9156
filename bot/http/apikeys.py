"""`/api/v1/apikeys`: StackStorm's API key resource, as `st2 apikey ...` calls it."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
