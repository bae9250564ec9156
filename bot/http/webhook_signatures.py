"""Webhook signatures: how a sender signs (`sign_webhook`) and how a hook with a secret checks it, so a
hook can be called without an API key yet not by anyone, nor replayed: later, the signature is too
old; meanwhile, the delivery it names was accepted already and fires nothing (`HookAuth.delivery`)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import HTTPException, Request

from bot.http.key_auth import require_key
from bot.http.state import api_state

SIGNATURE_HEADER = "x-squall-signature"
#: When a webhook's sender signed it (whole seconds since 1970); the signature covers it.
TIMESTAMP_HEADER = "x-squall-timestamp"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HookAuth:
    """What checking a webhook's caller found: headers for the answer (`Deprecation` for the old
    scheme), and for a `v1=` signature the delivery it names (a key, and when the signature will be
    refused as too old), stored with the trigger instance so the same request sent again fires nothing."""

    headers: dict[str, str] = field(default_factory=dict)
    delivery: tuple[str, datetime] | None = None


def sign_webhook(secret: str, body: bytes, timestamp: float | None = None) -> dict[str, str]:
    """The headers a sender adds to sign `body` for a webhook with `secret`: `X-Squall-Timestamp: <unix
    seconds>` and `X-Squall-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`."""
    stamp = str(int(time.time() if timestamp is None else timestamp))
    digest = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-Squall-Timestamp": stamp, "X-Squall-Signature": f"v1={digest}"}


def _needs(hook: str) -> str:
    return (f"webhook {hook} needs headers X-Squall-Timestamp: <unix seconds> and X-Squall-Signature: "
            'v1=<hex HMAC-SHA256 of "<timestamp>.<body>">')


def _timestamp(hook: str, headers: Mapping[str, str]) -> str:
    """The request's X-Squall-Timestamp, checked to be whole seconds; 401 if missing or not."""
    stamp = headers.get(TIMESTAMP_HEADER, "").strip()
    if not stamp:
        raise HTTPException(401, f"Unauthorized - {_needs(hook)}; X-Squall-Timestamp is missing.")
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
        raise HTTPException(401, f"Unauthorized - X-Squall-Timestamp must be whole seconds since 1970, "
                                 f"not {stamp[:40]!r}.")
    return stamp


def _expected_signature(hook: str, settings: Mapping[str, Any], signature: str, headers: Mapping[str, str],
                        raw: bytes) -> tuple[str, str | None]:
    """The signature the sender should have sent under the scheme `signature` names, and its timestamp
    (None for the old `sha256=` scheme); 401 for a scheme the hook does not accept."""
    key = str(settings["secret"]).encode()
    if not signature:
        raise HTTPException(401, f"Unauthorized - {_needs(hook)}.")
    if signature.startswith("sha256=") and settings.get("legacy_signature", True):
        # the old scheme: the body alone, replayable for ever; accepted until the next release
        return "sha256=" + hmac.new(key, raw, hashlib.sha256).hexdigest(), None
    if signature.startswith("v1="):
        stamp = _timestamp(hook, headers)
        return "v1=" + hmac.new(key, stamp.encode() + b"." + raw, hashlib.sha256).hexdigest(), stamp
    if signature.startswith("sha256="):
        raise HTTPException(401, f"Unauthorized - {_needs(hook)}; the old sha256= scheme is turned off for it "
                                 f"(api.webhooks.{hook}.legacy_signature: false).")
    raise HTTPException(401, f"Unauthorized - {_needs(hook)}; the signature does not start with v1=.")


def _check_age(hook: str, stamp: str, tolerance: float) -> None:
    """401 for a signature made longer ago (or further ahead) than `tolerance` seconds: a replay."""
    age = time.time() - int(stamp)
    if abs(age) > tolerance:
        when = f"{age:.0f} s old" if age > 0 else f"{-age:.0f} s in the future"
        raise HTTPException(401, f"Unauthorized - the signature for webhook {hook} is {when}; signatures are "
                                 f"accepted for {tolerance:g} s (api.webhooks.{hook}.tolerance): sign each "
                                 "request when it is sent, and keep the sender's clock right.")


async def authorize_hook(request: Request, hook: str, raw: bytes) -> HookAuth:
    """Check a webhook's signature (or, for a hook without a secret, the API key)."""
    state = api_state(request)
    settings = state.settings.webhooks.get(hook) or {}
    if not settings.get("secret"):
        await require_key(request)
        return HookAuth()
    signature = request.headers.get(SIGNATURE_HEADER, "").strip()
    expected, stamp = _expected_signature(hook, settings, signature, request.headers, raw)
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        raise HTTPException(401, f"Unauthorized - the signature for webhook {hook} does not match.")
    if stamp is None:
        if hook not in state.legacy_warned:
            state.legacy_warned.add(hook)
            log.warning("webhook %s was signed with the deprecated sha256= scheme, which a replay passes; "
                        "the next release refuses it: sign with X-Squall-Timestamp and v1= (README)", hook)
        return HookAuth(headers={"Deprecation": "true"})
    tolerance = state.settings.tolerance(hook)
    _check_age(hook, stamp, tolerance)
    key = "webhook " + hashlib.sha256(f"{hook}\n{signature}".encode()).hexdigest()  # the signature covers the body
    return HookAuth(delivery=(key, datetime.fromtimestamp(int(stamp) + tolerance + 1, UTC)))
