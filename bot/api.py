"""Squall's HTTP API (StackStorm-compatible where StackStorm has the route): FastAPI on the service's loop.

`create_api(squall, bot=None)` builds the app; `squall serve` runs it with uvicorn next to the chat
adapters. Every route needs an API key — header `St2-Api-Key`, `Authorization: Bearer <key>` or query
`st2-api-key` — except `GET /healthz`, the API's description (`/openapi.json`, `/docs`, `/redoc`, unless
config `api.public_docs` is false), a webhook with a secret (`api.webhooks.<name>.secret`: it is
signed instead, see `sign_webhook`) and the routes chat platforms call (they check the platform's own
signature or token). Keys come from the `api_keys` table (SHA-256 hashes, made with `squall apikey
create`), config `api.keys` and the environment variable `SQUALL_API_KEYS`.
Errors answer `{"faultstring": "..."}`, as StackStorm does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import re
import time
import uuid
from itertools import accumulate
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapters.base import Message
from aliases import AliasMatcher, AmbiguousCommand, NoMatch, load_aliases
from bot.apikeys import create_key, hash_key, public_key, static_keys
from bot.service_api import INSTANCE_HEADER
from engine.config import ConfigError
from engine.crypto import CryptoError
from engine.datastore import DatastoreError
from engine.executions import ExecutionNotFound, ExecutionStateError
from engine.packs import UnknownAction
from engine.parameters import MASK, ParameterError
from engine.rules import enforcement_public
from engine.triggers import TriggerError

API_PREFIX = "/api/v1"
DEFAULT_MAX_BODY = 1024 * 1024
#: JSON bodies may nest objects and arrays this many levels deep (`{"a": [1]}` is 2); deeper ones get 400.
#: Real payloads stay far below it (a Slack event with rich-text blocks is about 8), and without a limit
#: a webhook body of a thousand `[` broke the parser (RecursionError, HTTP 500).
MAX_JSON_DEPTH = 64
#: How much of a body over `api.max_body_bytes` is read and dropped before the 413 goes out: a client
#: sends its whole body before it reads the answer, and a server that closes on unread data resets the
#: connection, so the client never sees the 413. Past this much the 413 goes out at once.
MAX_DRAIN_BYTES = 64 * 1024 * 1024
#: The longest `ttl` of a key (100 years, in seconds): longer ones overflow the expiry date.
MAX_KEY_TTL = 100 * 365 * 24 * 3600
SIGNATURE_HEADER = "x-squall-signature"
#: When a webhook's sender signed it (whole seconds since 1970); the signature covers it.
TIMESTAMP_HEADER = "x-squall-timestamp"
#: How old (or how far ahead of this clock) a signed webhook's timestamp may be, unless
#: `api.webhooks.<name>.tolerance` says otherwise: a request replayed later is refused.
DEFAULT_WEBHOOK_TOLERANCE = 300
#: Removed from the headers a webhook passes on in its payload (spec §6.3).
_SECRET_HEADERS = {"x-auth-token", "st2-api-key", "authorization", "cookie", SIGNATURE_HEADER}

log = logging.getLogger(__name__)


def sign_webhook(secret: str, body: bytes, timestamp: float | None = None) -> dict[str, str]:
    """The headers a sender adds to sign `body` for a webhook with `secret`: `X-Squall-Timestamp: <unix
    seconds>` and `X-Squall-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`."""
    stamp = str(int(time.time() if timestamp is None else timestamp))
    digest = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-Squall-Timestamp": stamp, "X-Squall-Signature": f"v1={digest}"}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"faultstring": message}, status_code=status, headers=headers)


# -- JSON bodies ------------------------------------------------------------------------------------

class JsonBodyError(ValueError):
    """Well-formed text that Squall still refuses as JSON: NaN or Infinity, a float out of range, or
    nesting deeper than `MAX_JSON_DEPTH`. The message says what was wrong and what would be right."""


_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*+"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]|[\ud800-\udfff]")
_DEPTH_STEP = tuple(1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256))


def _refuse_constant(name: str) -> Any:
    raise JsonBodyError(f"The JSON body holds {name}; JSON has no NaN, Infinity or -Infinity: send a finite number, "
                        "a string or null instead.")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise JsonBodyError(f"The JSON body holds the number {shown}, which is out of range for a float "
                            "(at most about 1.8e308): send it as a string instead.")
    return value


def _depth(raw: bytes) -> int:
    """How deep the objects and arrays of valid JSON `raw` nest (strings dropped first: their brackets
    do not count); linear, at C speed."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return 0  # cannot be too deep: not worth measuring
    brackets = _STRINGS.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def decode_json(raw: bytes | str) -> Any:
    """`raw` as JSON, the way every route of the API takes it: NaN, Infinity, -Infinity and floats out of
    range, and objects or arrays nested deeper than `MAX_JSON_DEPTH`, raise `JsonBodyError`; text that is
    not JSON raises `ValueError` (`UnicodeDecodeError` for bytes that are not UTF-8)."""
    too_deep = (f"The JSON body nests objects and arrays more than {MAX_JSON_DEPTH} levels deep; "
                f"the limit is {MAX_JSON_DEPTH} levels: send a flatter document.")
    if isinstance(raw, bytes):  # as json.loads reads bytes: UTF-8, or UTF-16/32 by their zero bytes
        encoding = json.detect_encoding(raw)
        text = raw.decode(encoding, "surrogatepass")
        utf8 = raw if encoding == "utf-8" else text.encode("utf-8", "surrogatepass")
    else:
        text, utf8 = raw, raw.encode("utf-8", "surrogatepass")
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise JsonBodyError(too_deep) from None
    depth = _depth(utf8)
    if depth > MAX_JSON_DEPTH:
        raise JsonBodyError(f"The JSON body nests objects and arrays {depth} levels deep; the limit is "
                            f"{MAX_JSON_DEPTH} levels: send a flatter document.")
    if _SURROGATE.search(text):  # \ud83d\ude00 pairs are fine; a lone half cannot be stored or answered
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise JsonBodyError("The JSON body holds a lone UTF-16 surrogate (such as \\ud800 without its pair, "
                                "or its bytes ED A0 80): send valid Unicode text.") from None
    return value


#: What `_checked_json` gives for a body that is not JSON (form data, empty, other text): the route decides.
NOT_JSON = object()


def _checked_json(body: bytes, content_type: str) -> Any:
    """The body decoded as JSON under `decode_json`'s rules, or `NOT_JSON`; raises `JsonBodyError`.

    Form and multipart bodies are not JSON. Any other body that parses as JSON is held to
    `decode_json`'s rules (a webhook takes JSON whatever its Content-Type says); text that is not JSON
    at all is left to the route, which says what it expected."""
    if content_type in ("application/x-www-form-urlencoded", "multipart/form-data") or not body.strip():
        return NOT_JSON
    try:
        return decode_json(body)
    except JsonBodyError:
        raise
    except ValueError:
        return NOT_JSON


# -- request bodies ---------------------------------------------------------------------------------

class ExecutionRequest(BaseModel):
    action: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] | None = None
    #: Render the values as Jinja templates, as StackStorm does; only for keys in `api.render_keys`.
    render: bool = False


class RerunRequest(BaseModel):
    parameters: dict[str, Any] = Field(default_factory=dict)


class InquiryResponse(BaseModel):
    id: str | None = None
    response: Any = None
    user: str | None = None


class AliasMatchRequest(BaseModel):
    command: str


class AliasExecutionRequest(BaseModel):
    command: str
    user: str
    channel: str = "api"


class KeyRequest(BaseModel):
    value: Any
    secret: bool = False
    encrypt: bool = False
    ttl: int | None = None
    scope: str = "system"
    user: str | None = None
    description: str | None = None


# -- the app ----------------------------------------------------------------------------------------

class _BodyGuard:
    """Every HTTP request's body, checked once before any route sees it.

    Over `limit` bytes is 413, whether Content-Length says so or the bytes are counted as they come
    (chunked, or a Content-Length that lies); what comes past the limit is read and dropped (up to
    `MAX_DRAIN_BYTES`) so the client can read the 413. A JSON body that `decode_json` refuses (NaN,
    Infinity, nesting past `MAX_JSON_DEPTH`) is 400, for every route: webhooks, executions, keys,
    inquiries, Slack's and Mattermost's endpoints."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared: int | None = None
        content_type = ""
        expects_continue = False
        for name, value in scope.get("headers") or []:
            if name == b"content-length":
                text = value.decode("latin-1").strip()
                if not text.isascii() or not text.isdigit():
                    await _error(400, f"Content-Length must be a whole number of bytes, not {text[:40]!r}.",
                                 {"Connection": "close"})(scope, receive, send)
                    return
                declared = int(text) if len(text) <= 18 else 10 ** 18  # int() refuses 4,300+ digits
            elif name == b"content-type":
                content_type = value.decode("latin-1").split(";")[0].strip().lower()
            elif name == b"expect":
                expects_continue = value.strip().lower() == b"100-continue"
        if declared is not None and declared > self.limit:
            if not expects_continue:  # the client waits for "100 Continue" otherwise, and sends nothing
                await self._drain(receive, 0)
            await self._too_large(scope, receive, send, f"is {declared} bytes")
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            more = bool(message.get("more_body"))
            if size > self.limit:
                if more:
                    size, more = await self._drain(receive, size)
                await self._too_large(scope, receive, send, f"is at least {size} bytes" if more else f"is {size} bytes")
                return
            chunks.append(chunk)
            if not more:
                break
        if declared is not None and size != declared:
            await _error(400, f"The body is {size} bytes but Content-Length said {declared}: send the exact "
                              "length, or no Content-Length with chunked transfer encoding.",
                         {"Connection": "close"})(scope, receive, send)
            return
        body = b"".join(chunks)
        try:
            decoded = _checked_json(body, content_type)
        except JsonBodyError as exc:
            await _error(400, str(exc))(scope, receive, send)
            return
        # Decoded once, here: a route that takes the raw body (webhooks) reads it from request.state.
        scope.setdefault("state", {})["json_body"] = decoded
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # http.disconnect, for a route that listens for it

        await self.app(scope, replay, send)

    @staticmethod
    async def _drain(receive: Any, size: int) -> tuple[int, bool]:
        """Read and drop the rest of a body (up to `MAX_DRAIN_BYTES` in all): the bytes seen, and whether
        more was left unread."""
        while size <= MAX_DRAIN_BYTES:
            message = await receive()
            if message["type"] == "http.disconnect":
                return size, True
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                return size, False
        return size, True

    async def _too_large(self, scope: dict[str, Any], receive: Any, send: Any, size: str) -> None:
        response = _error(413, f"Request body {size}; the limit is {self.limit} bytes (config api.max_body_bytes): "
                               "send less.", {"Connection": "close"})
        await response(scope, receive, send)


def _webhook_tolerances(webhooks: Any) -> dict[str, float]:
    """`api.webhooks.<name>.tolerance` of each hook that sets it (seconds, above 0 and at most a day);
    `legacy_signature` is checked to be true or false on the way."""
    if not isinstance(webhooks, dict):
        raise ConfigError(f"'api.webhooks' must map hook names to settings, not {type(webhooks).__name__}")
    tolerances: dict[str, float] = {}
    for name, settings in webhooks.items():
        if not isinstance(settings, dict):
            raise ConfigError(f"'api.webhooks.{name}' must be a mapping such as {{secret: ..., tolerance: 300}}")
        if "tolerance" in settings:
            value = settings["tolerance"]
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 86400:
                raise ConfigError(f"'api.webhooks.{name}.tolerance' must be seconds above 0 and at most 86400, "
                                  f"not {value!r}")
            tolerances[str(name)] = float(value)
        if not isinstance(settings.get("legacy_signature", True), bool):
            raise ConfigError(f"'api.webhooks.{name}.legacy_signature' must be true or false, "
                              f"not {settings['legacy_signature']!r}")
    return tolerances


def create_api(squall: Any, bot: Any = None) -> FastAPI:
    """The HTTP API over `squall` (and `bot`, for alias permissions and the chat's alias index)."""
    section: dict[str, Any] = squall.config.section("api")
    max_body = int(section.get("max_body_bytes") or DEFAULT_MAX_BODY)
    webhooks_config: dict[str, Any] = section.get("webhooks") or {}
    static_hashes = [hash_key(k) for k in static_keys(section)]
    #: Names of stored API keys whose execution requests may ask for their values to render (`render: true`).
    render_keys = {str(name) for name in section.get("render_keys") or []}
    public_docs = section.get("public_docs", True)
    if not isinstance(public_docs, bool):
        raise ConfigError(f"'api.public_docs' must be true or false, not {public_docs!r}")
    tolerances = _webhook_tolerances(webhooks_config)

    # The API's description answers without a key unless api.public_docs is false: then /openapi.json
    # needs one, and the /docs and /redoc pages (which a browser loads without a key) are not served.
    app = FastAPI(title="Squall API", version="1.0", description="StackStorm-compatible ChatOps automation API.",
                  openapi_url="/openapi.json" if public_docs else None,
                  docs_url="/docs" if public_docs else None, redoc_url="/redoc" if public_docs else None)
    app.add_middleware(_BodyGuard, limit=max_body)
    app.state.squall = squall
    app.state.bot = bot

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 400 and message == "There was an error parsing the body":  # FastAPI's words
            cause = exc.__cause__
            reason = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
            message = f"The body could not be read{reason}: send JSON, as UTF-8, with Content-Type: application/json."
        response = _error(exc.status_code, message)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors():
            if error.get("type") == "json_invalid":
                reason = (error.get("ctx") or {}).get("error", "")
                return _error(400, f"Malformed JSON body: {reason}".rstrip(": "))
            where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
            problems.append(f"{where or 'body'}: {error.get('msg')}")
        return _error(400, "Invalid request: " + "; ".join(problems))

    async def authenticated(key: str | None) -> dict[str, Any] | None:
        """Who the key is: `{"name": ...}` of a stored key, `{"name": None}` for a configured one."""
        if not key:
            return None
        digest = hash_key(key)
        found = False
        for known in static_hashes:  # constant time, whichever matches
            found |= hmac.compare_digest(digest, known)
        if found:
            return {"name": None}
        record = await squall.db(squall.store.api_key_by_hash, digest)
        return record if record and record.get("enabled", True) else None

    def presented_key(request: Request) -> str | None:
        key = request.headers.get("st2-api-key")
        if not key:
            auth = request.headers.get("authorization", "")
            scheme, _, value = auth.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                key = value.strip()
        return key or request.query_params.get("st2-api-key")

    async def require_key(request: Request) -> None:
        key = presented_key(request)
        if not key:
            raise HTTPException(401, "Unauthorized - API key required: send header St2-Api-Key, "
                                     "Authorization: Bearer <key> or query parameter st2-api-key.",
                                headers={"WWW-Authenticate": "Bearer"})
        who = await authenticated(key)
        if who is None:
            raise HTTPException(401, "Unauthorized - the API key is not valid.",
                                headers={"WWW-Authenticate": "Bearer"})
        request.state.api_key_name = who.get("name")

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "packs": len(squall.registry.packs), "actions": len(squall.registry.actions)}

    if not public_docs:
        @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_key)])
        async def openapi() -> dict[str, Any]:
            return app.openapi()

    api = APIRouter(prefix=API_PREFIX, dependencies=[Depends(require_key)])
    hooks = APIRouter(prefix=API_PREFIX)

    # -- actions and packs ---------------------------------------------------------------------
    def action_summary(action: Any) -> dict[str, Any]:
        summary = action.summary()
        summary["parameters"] = {
            name: ({**spec, "default": MASK} if spec.get("secret") and spec.get("default") is not None else spec)
            for name, spec in (summary.get("parameters") or {}).items()}
        return summary

    @api.get("/actions", tags=["actions"])
    async def list_actions(pack: str | None = None) -> list[dict[str, Any]]:
        actions = sorted(squall.registry.actions.values(), key=lambda a: a.ref)
        return [action_summary(a) for a in actions if pack in (None, a.pack)]

    @api.get("/actions/{ref}", tags=["actions"])
    async def get_action(ref: str) -> dict[str, Any]:
        try:
            return action_summary(squall.registry.action(ref))
        except UnknownAction as exc:
            raise HTTPException(404, str(exc)) from exc

    @api.get("/packs", tags=["packs"])
    async def list_packs() -> list[dict[str, Any]]:
        registry = squall.registry
        return [registry.packs[ref].summary(registry.counts(ref)) for ref in sorted(registry.packs)]

    # -- executions ------------------------------------------------------------------------------
    @api.get("/executions", tags=["executions"])
    async def list_executions(action: str | None = None, status: str | None = None,
                              limit: int = Query(50, ge=1, le=1000)) -> list[dict[str, Any]]:
        return await squall.executions.list(action=action, status=status, limit=limit)

    async def find_execution(execution_id: str) -> dict[str, Any]:
        try:
            return await squall.executions.get(execution_id)
        except ExecutionNotFound as exc:
            raise HTTPException(404, str(exc)) from exc

    @api.get("/executions/{execution_id}", tags=["executions"])
    async def get_execution(execution_id: str) -> dict[str, Any]:
        return await find_execution(execution_id)

    @api.post("/executions", status_code=201, tags=["executions"])
    async def create_execution(body: ExecutionRequest, request: Request) -> dict[str, Any]:
        context = {"source": "api", **(body.context or {})}
        key_name = request.state.api_key_name
        if body.render and key_name not in render_keys:
            raise HTTPException(403, f"This API key ({key_name or 'a configured key'}) may not ask for parameters "
                                     "to be rendered as templates; list a stored key's name in api.render_keys "
                                     "to allow it, or send the values as data.")
        try:
            return await squall.executions.request(body.action, body.parameters, context, render=body.render)
        except (ParameterError, UnknownAction, ValueError) as exc:
            raise HTTPException(400, str(exc)) from exc

    @api.delete("/executions/{execution_id}", tags=["executions"])
    async def cancel_execution(execution_id: str) -> dict[str, Any]:
        try:
            return await squall.executions.cancel(execution_id)
        except ExecutionNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        except ExecutionStateError as exc:
            raise HTTPException(409, str(exc)) from exc

    @api.get("/executions/{execution_id}/output", tags=["executions"], response_class=PlainTextResponse)
    async def execution_output(execution_id: str) -> str:
        result = (await find_execution(execution_id)).get("result")
        if not isinstance(result, dict):
            return ""
        streams = [str(result.get(name) or "") for name in ("stdout", "stderr")]
        return "\n".join(text.rstrip("\n") for text in streams if text) + ("\n" if any(streams) else "")

    @api.post("/executions/{execution_id}/re_run", status_code=201, tags=["executions"])
    async def rerun_execution(execution_id: str, body: RerunRequest | None = None) -> dict[str, Any]:
        try:
            return await squall.executions.rerun(execution_id, body.parameters if body else None)
        except ExecutionNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        except (ParameterError, UnknownAction, ValueError) as exc:
            raise HTTPException(400, str(exc)) from exc

    # -- aliases -------------------------------------------------------------------------------
    alias_cache: dict[str, Any] = {}

    def matcher() -> tuple[AliasMatcher, dict[str, Any]]:
        if bot is not None:
            return bot.dispatcher.matcher, bot.dispatcher.aliases
        if alias_cache.get("registry") is not squall.registry:  # rebuilt after a pack reload
            aliases, _errors = load_aliases(squall.registry)
            alias_cache.update(registry=squall.registry, matcher=AliasMatcher(aliases),
                               aliases={a.ref: a for a in aliases})
        return alias_cache["matcher"], alias_cache["aliases"]

    def match_command(command: str) -> Any:
        try:
            return matcher()[0].match(command)
        except (NoMatch, AmbiguousCommand) as exc:
            raise HTTPException(400, str(exc)) from exc

    @api.get("/actionalias", tags=["aliases"])
    async def list_aliases() -> list[dict[str, Any]]:
        return [alias.summary() for _ref, alias in sorted(matcher()[1].items())]

    @api.post("/actionalias/match", tags=["aliases"])
    async def match_alias(body: AliasMatchRequest) -> dict[str, Any]:
        match = match_command(body.command)
        return {"actionalias": match.alias.summary(), "display": match.display,
                "representation": match.representation, "parameters": match.parameters}

    @api.post("/aliasexecution", status_code=201, tags=["aliases"])
    async def alias_execution(body: AliasExecutionRequest) -> dict[str, Any]:
        from bot.replies import render_ack

        match = match_command(body.command)
        alias = match.alias
        if bot is not None:
            message = Message(adapter="api", channel=body.channel, user=body.user, text=body.command)
            decision = bot.dispatcher.auth.check(alias, message)
            if not decision.allowed:
                await squall.db(squall.store.audit_add, "api.denied", body.user, f"api:{body.channel}", alias.ref,
                                {"command": body.command[:500], "reason": decision.reason})
                raise HTTPException(403, f"{body.user} may not run {alias.ref}: {decision.reason}")
        context = {"user": body.user, "api_user": body.user, "source": "api", "source_channel": body.channel,
                   "action_alias_ref": {"id": alias.ref, "name": alias.name}}
        try:
            parameters, render = match.request_parameters(squall.registry.action(alias.action_ref), context)
            execution = await squall.executions.request(alias.action_ref, parameters, context, render=render)
        except (ParameterError, UnknownAction, ValueError) as exc:
            raise HTTPException(400, str(exc)) from exc
        await squall.db(squall.store.audit_add, "api.execution", body.user, f"api:{body.channel}", alias.ref,
                        {"execution": execution["id"], "action": alias.action_ref})
        text, _extra = render_ack(alias, execution)
        return {"execution": execution, "actionalias": alias.summary(), "message": text}

    # -- rules -----------------------------------------------------------------------------------
    @api.get("/rules", tags=["rules"])
    async def list_rules() -> list[dict[str, Any]]:
        rules = squall.rules.rules
        return [rules[ref].public() for ref in sorted(rules)]

    @api.get("/ruleenforcements", tags=["rules"])
    async def list_enforcements(rule: str | None = None, trigger_instance: str | None = None,
                                execution: str | None = None,
                                limit: int = Query(50, ge=1, le=1000)) -> list[dict[str, Any]]:
        rows = await squall.db(squall.store.rule_enforcement_list, rule, trigger_instance, execution, limit)
        return [enforcement_public(row) for row in rows]

    # -- triggers --------------------------------------------------------------------------------
    @api.get("/triggertypes", tags=["triggers"])
    async def list_trigger_types() -> list[dict[str, Any]]:
        return [{"ref": t.ref, "name": t.name, "pack": t.pack, "description": t.description,
                 "payload_schema": t.payload_schema, "parameters_schema": t.parameters_schema}
                for _ref, t in sorted(squall.registry.trigger_types.items())]

    @api.get("/triggerinstances", tags=["triggers"])
    async def list_trigger_instances(trigger: str | None = None, status: str | None = None,
                                     limit: int = Query(50, ge=1, le=1000)) -> list[dict[str, Any]]:
        return await squall.triggers.list(trigger=trigger, status=status, limit=limit)

    @api.get("/triggerinstances/{instance_id}", tags=["triggers"])
    async def get_trigger_instance(instance_id: str) -> dict[str, Any]:
        try:
            return await squall.triggers.get(instance_id)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from exc

    @api.post("/triggerinstances/{instance_id}/re_emit", status_code=201, tags=["triggers"])
    async def re_emit(instance_id: str) -> dict[str, Any]:
        try:
            return await squall.triggers.re_emit(instance_id)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from exc

    # -- keys ------------------------------------------------------------------------------------
    def shown(item: dict[str, Any], decrypt: bool) -> dict[str, Any]:
        if item["secret"] and not decrypt and item.get("error") is None:
            return {**item, "value": MASK}
        return item

    async def datastore(fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await squall.db(fn, *args, **kwargs)
        except (DatastoreError, CryptoError) as exc:
            raise HTTPException(400, str(exc)) from exc

    @api.get("/keys", tags=["keys"])
    async def list_keys(prefix: str | None = None, scope: str = "system", user: str | None = None,
                        decrypt: bool = False, limit: int | None = Query(None, ge=1)) -> list[dict[str, Any]]:
        items = await datastore(squall.datastore.list, prefix=prefix, scope=scope, user=user, decrypt=decrypt,
                                limit=limit)
        return [shown(item, decrypt) for item in items]

    @api.get("/keys/{name}", tags=["keys"])
    async def get_key(name: str, scope: str = "system", user: str | None = None,
                      decrypt: bool = False) -> dict[str, Any]:
        item = await datastore(squall.datastore.get, name, scope=scope, user=user, decrypt=decrypt)
        if item is None:
            raise HTTPException(404, f'Resource with a name "{name}" not found')
        return shown(item, decrypt)

    @api.put("/keys/{name}", tags=["keys"])
    async def put_key(name: str, body: KeyRequest) -> dict[str, Any]:
        if body.ttl is not None and body.ttl > MAX_KEY_TTL:
            raise HTTPException(400, f"ttl must be at most {MAX_KEY_TTL} seconds (100 years), not {body.ttl}.")
        item = await datastore(squall.datastore.set, name, body.value, scope=body.scope, user=body.user,
                               encrypt=body.secret or body.encrypt, ttl=body.ttl, description=body.description)
        return shown(item, False)

    @api.delete("/keys/{name}", status_code=204, tags=["keys"])
    async def delete_key(name: str, scope: str = "system", user: str | None = None) -> None:
        if not await datastore(squall.datastore.delete, name, scope=scope, user=user):
            raise HTTPException(404, f'Resource with a name "{name}" not found')

    # -- webhooks --------------------------------------------------------------------------------
    async def read_body(request: Request) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                raise HTTPException(413, f"Request body is over the limit of {max_body} bytes.")
            chunks.append(chunk)
        return b"".join(chunks)

    legacy_warned: set[str] = set()

    async def authorize_hook(request: Request, hook: str, raw: bytes) -> dict[str, str]:
        """Check a webhook's signature (or, for a hook without a secret, the API key); the headers the
        answer should carry (`Deprecation` for a signature of the old scheme)."""
        settings = webhooks_config.get(hook) or {}
        secret = settings.get("secret")
        if not secret:
            await require_key(request)
            return {}
        key = str(secret).encode()
        signature = request.headers.get(SIGNATURE_HEADER, "").strip()
        needs = (f"webhook {hook} needs headers X-Squall-Timestamp: <unix seconds> and X-Squall-Signature: "
                 'v1=<hex HMAC-SHA256 of "<timestamp>.<body>">')
        if not signature:
            raise HTTPException(401, f"Unauthorized - {needs}.")
        legacy = signature.startswith("sha256=") and settings.get("legacy_signature", True)
        if legacy:  # the old scheme: the body alone, replayable for ever; accepted until the next release
            expected = "sha256=" + hmac.new(key, raw, hashlib.sha256).hexdigest()
        elif signature.startswith("v1="):
            stamp = request.headers.get(TIMESTAMP_HEADER, "").strip()
            if not stamp:
                raise HTTPException(401, f"Unauthorized - {needs}; X-Squall-Timestamp is missing.")
            if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
                raise HTTPException(401, f"Unauthorized - X-Squall-Timestamp must be whole seconds since 1970, "
                                         f"not {stamp[:40]!r}.")
            expected = "v1=" + hmac.new(key, stamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
        elif signature.startswith("sha256="):
            raise HTTPException(401, f"Unauthorized - {needs}; the old sha256= scheme is turned off for it "
                                     f"(api.webhooks.{hook}.legacy_signature: false).")
        else:
            raise HTTPException(401, f"Unauthorized - {needs}; the signature does not start with v1=.")
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            raise HTTPException(401, f"Unauthorized - the signature for webhook {hook} does not match.")
        if legacy:
            if hook not in legacy_warned:
                legacy_warned.add(hook)
                log.warning("webhook %s was signed with the deprecated sha256= scheme, which a replay passes; "
                            "the next release refuses it: sign with X-Squall-Timestamp and v1= (README)", hook)
            return {"Deprecation": "true"}
        age = time.time() - int(stamp)
        tolerance = tolerances.get(hook, DEFAULT_WEBHOOK_TOLERANCE)
        if abs(age) > tolerance:
            when = f"{age:.0f} s old" if age > 0 else f"{-age:.0f} s in the future"
            raise HTTPException(401, f"Unauthorized - the signature for webhook {hook} is {when}; signatures are "
                                     f"accepted for {tolerance:g} s (api.webhooks.{hook}.tolerance): sign each "
                                     "request when it is sent, and keep the sender's clock right.")
        return {}

    def parse_body(request: Request, raw: bytes) -> Any:
        content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if content_type == "application/x-www-form-urlencoded":
            from urllib.parse import parse_qsl

            return dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
        if not raw.strip():
            return {}
        decoded = getattr(request.state, "json_body", NOT_JSON)  # the body guard decoded it already
        if decoded is not NOT_JSON:
            return decoded
        try:
            return decode_json(raw)
        except JsonBodyError as exc:
            raise HTTPException(400, str(exc)) from exc
        except ValueError as exc:  # UnicodeDecodeError too
            raise HTTPException(400, f"Failed to parse request body: {exc}; send JSON (UTF-8) or form data.") \
                from exc

    def trace_tag(request: Request, hook: str) -> str:
        return request.headers.get("st2-trace-tag") or f"webhook-{hook}-{uuid.uuid4().hex}"

    @hooks.post("/webhooks/st2", status_code=202, tags=["webhooks"])
    async def generic_webhook(request: Request) -> Any:
        raw = await read_body(request)
        answer_headers = await authorize_hook(request, "st2", raw)
        body = parse_body(request, raw)
        if not isinstance(body, dict):
            raise HTTPException(400, "The body must be a JSON object with \"trigger\" and \"payload\".")
        trigger = body.get("trigger")
        if not trigger:
            raise HTTPException(400, "Trigger not specified.")
        try:
            instance = await squall.triggers.dispatch(str(trigger), body.get("payload") or {},
                                                      trace_tag=trace_tag(request, "st2"))
        except TriggerError as exc:
            raise HTTPException(400, str(exc)) from exc
        return JSONResponse(body, status_code=202, headers={INSTANCE_HEADER: instance["id"], **answer_headers})

    @hooks.post("/webhooks/{name:path}", status_code=202, tags=["webhooks"])
    async def custom_webhook(name: str, request: Request) -> Any:
        hook = name.strip("/")
        raw = await read_body(request)
        if not squall.rules.webhook_rules(hook):
            # Authenticate first: an unauthenticated caller must not learn which hooks exist.
            await authorize_hook(request, hook, raw)
            raise HTTPException(404, f"Webhook {hook} not registered")
        answer_headers = await authorize_hook(request, hook, raw)
        body = parse_body(request, raw)
        if not isinstance(body, (dict, list)):
            raise HTTPException(400, "The body must be a JSON object or array.")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SECRET_HEADERS}
        payload = {"headers": headers, "headers_lower": {k.lower(): v for k, v in headers.items()}, "body": body}
        try:
            # The instance is tied to this hook's rules only (its trigger parameters are the URL).
            instance = await squall.rules.dispatch_webhook(hook, payload, trace_tag=trace_tag(request, hook))
        except TriggerError as exc:
            raise HTTPException(400, str(exc)) from exc
        except LookupError as exc:  # the rule went away meanwhile
            raise HTTPException(404, f"Webhook {hook} not registered") from exc
        return JSONResponse(body, status_code=202, headers={INSTANCE_HEADER: instance["id"], **answer_headers})

    # -- inquiries (spec §11.2) ------------------------------------------------------------------
    from engine.inquiries import InquiryError

    @api.get("/inquiries", tags=["inquiries"])
    async def list_inquiries(limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
        return await squall.inquiries.list(limit=limit)

    @api.get("/inquiries/{inquiry_id}", tags=["inquiries"])
    async def get_inquiry(inquiry_id: str) -> dict[str, Any]:
        try:
            return await squall.inquiries.get(inquiry_id)
        except InquiryError as exc:
            raise HTTPException(exc.status, str(exc)) from exc

    @api.put("/inquiries/{inquiry_id}", tags=["inquiries"])
    async def respond_inquiry(inquiry_id: str, body: InquiryResponse, request: Request) -> dict[str, Any]:
        """`user` names the responder checked against the inquiry's users (default: the API caller)."""
        try:
            return await squall.inquiries.respond(inquiry_id, body.response, body.user or "api")
        except InquiryError as exc:
            raise HTTPException(exc.status, str(exc)) from exc

    app.include_router(api)
    app.include_router(hooks)
    # Platforms that call Squall over HTTP (Slack's Events API, Mattermost's slash commands) mount
    # their own routes; they verify the platform's signature or token instead of an API key.
    for adapter in (bot.adapters.values() if bot is not None else ()):
        mount = getattr(adapter, "mount", None)
        if mount is not None:
            mount(app)
    return app


class ApiServer:
    """The API under uvicorn on the running loop: `start()` makes `serve()` a task, `stop()` ends it."""

    def __init__(self, squall: Any, bot: Any = None, host: str | None = None, port: int | None = None) -> None:
        import uvicorn

        section = squall.config.section("api")
        self.host = host or str(section.get("host", "127.0.0.1"))
        self.port = int(port if port is not None else section.get("port", 9101))
        config = uvicorn.Config(create_api(squall, bot), host=self.host, port=self.port, log_level="warning",
                                lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        # The service owns SIGINT/SIGTERM (loop.add_signal_handler): uvicorn must not replace them.
        self.server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
        self.task: Any = None

    async def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.server.serve(), name="squall-api")
        while not self.server.started:
            if self.task.done():
                self.task.result()  # raises what stopped it (a port in use: SystemExit from uvicorn)
                raise RuntimeError(f"the API server on {self.host}:{self.port} stopped while starting")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self.task is None:
            return
        self.server.should_exit = True
        with contextlib.suppress(Exception, SystemExit):
            await self.task
        self.task = None


__all__ = ["MAX_JSON_DEPTH", "ApiServer", "JsonBodyError", "create_api", "create_key", "decode_json", "hash_key",
           "public_key", "sign_webhook", "static_keys"]
