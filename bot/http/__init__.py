"""Squall's HTTP API (StackStorm-compatible where StackStorm has the route): FastAPI on the service's loop.

`create_api(squall)` builds the app (`app.py`); `squall serve` runs it with uvicorn next to the
chat adapters (`ApiServer`, `server.py`). Every route needs an API key (`key_auth.py`) — header
`St2-Api-Key`, `Authorization: Bearer <key>` or query `st2-api-key` — except `GET /healthz`, the API's
description (`/openapi.json`, `/docs`, `/redoc`, unless config `api.public_docs` is false), a webhook with
a secret (`api.webhooks.<name>.secret`: it is signed instead, see `sign_webhook`) and the routes chat
platforms call (they check the platform's own signature or token). Keys come from the `api_keys` table
(SHA-256 hashes, made with `squall apikey create`; `bot.apikeys`), config `api.keys` and the environment
variable `SQUALL_API_KEYS`. Every body passes the body guard first (`body_guard.py`, `json_body.py`).
Errors answer `{"faultstring": "..."}`, as StackStorm does (`errors.py`). Each resource has its router
module; what they share per app is `state.ApiState`.
"""

from bot.apikeys import create_key, hash_key, public_key, static_keys
from bot.http.app import create_api
from bot.http.json_body import MAX_JSON_DEPTH, JsonBodyError, decode_json
from bot.http.keys import MAX_KEY_TTL
from bot.http.server import ApiServer
from bot.http.webhook_signatures import sign_webhook

__all__ = ["MAX_JSON_DEPTH", "MAX_KEY_TTL", "ApiServer", "JsonBodyError", "create_api", "create_key", "decode_json",
           "hash_key", "public_key", "sign_webhook", "static_keys"]
