"""What the routers share, per app: the service, the chat bot, and config `api.*` checked once at start.

`create_api` puts an `ApiState` on `app.state.api`; routes reach it through `api_state(request)`, so the
routers are plain modules and two apps (tests make many) never share anything."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from bot.apikeys import hash_key, static_keys
from engine.config import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_TOKEN_TTL,
    ConfigError,
    api_max_body_bytes,
    api_render_keys,
    api_token_ttl,
)

#: `api.max_body_bytes` unless set (`engine.config` checks it, at load).
DEFAULT_MAX_BODY = DEFAULT_MAX_BODY_BYTES
#: How old (or how far ahead of this clock) a signed webhook's timestamp may be, unless
#: `api.webhooks.<name>.tolerance` says otherwise: a request replayed later is refused.
DEFAULT_WEBHOOK_TOLERANCE = 300


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


@dataclass(frozen=True)
class ApiSettings:
    """Config `api.*` as the routes use it; a bad value is a `ConfigError` when the app is made, not
    a 500 at the first request."""

    max_body: int
    webhooks: dict[str, Any]
    #: SHA-256 of the keys from config `api.keys` and `$SQUALL_API_KEYS` (read once, at start).
    static_hashes: tuple[str, ...]
    #: Names of stored API keys whose execution requests may ask for their values to render (`render: true`).
    render_keys: frozenset[str]
    public_docs: bool
    tolerances: dict[str, float]
    #: Seconds a login token lives (`api.token_ttl`), and the most a login may ask for.
    token_ttl: int = DEFAULT_TOKEN_TTL

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> ApiSettings:
        # Checked as `load_config` checks them (a file was refused already; settings made in code are not)
        max_body = api_max_body_bytes(section)
        webhooks: dict[str, Any] = section.get("webhooks") or {}
        static_hashes = tuple(hash_key(k) for k in static_keys(section))
        render_keys = api_render_keys(section)  # a list: a string would give its letters the right
        public_docs = section.get("public_docs", True)
        if not isinstance(public_docs, bool):
            raise ConfigError(f"'api.public_docs' must be true or false, not {public_docs!r}")
        token_ttl = api_token_ttl(section)
        return cls(max_body=max_body, webhooks=webhooks, static_hashes=static_hashes, render_keys=render_keys,
                   public_docs=public_docs, tolerances=_webhook_tolerances(webhooks), token_ttl=token_ttl)

    def tolerance(self, hook: str) -> float:
        """How many seconds a signature of webhook `hook` stays good."""
        return self.tolerances.get(hook, DEFAULT_WEBHOOK_TOLERANCE)


@dataclass
class ApiState:
    """One app's shared state. `squall` is the running `bot.app.Squall` (the engine and its chat side)."""

    squall: Any
    settings: ApiSettings
    #: Hooks already warned about in the log for the old signature scheme (once per hook and app).
    legacy_warned: set[str] = field(default_factory=set)


def api_state(request: Request) -> ApiState:
    """The state of the app serving `request`."""
    return request.app.state.api
