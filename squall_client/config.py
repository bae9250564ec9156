"""Where the API is and how to authenticate: from arguments first, then the environment.

The environment names are Squall's own (`SQUALL_API_URL`, `SQUALL_API_KEY`) and StackStorm's
(`ST2_API_URL`, `ST2_API_KEY`, `ST2_AUTH_TOKEN`), so scripts written for `st2` work unchanged. Inside a
running action, `ST2_ACTION_API_URL` and `ST2_ACTION_AUTH_TOKEN` are set by Squall itself, which makes a
bare `Client()` work from an action with the rights of the user who ran it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from squall_client.errors import ConfigError

__all__ = ["DEFAULT_TIMEOUT", "DEFAULT_URL", "KEY_ENV", "TOKEN_ENV", "URL_ENV", "Settings"]

#: `squall serve`'s default `api.host`:`api.port`.
DEFAULT_URL = "http://127.0.0.1:9101"
#: Seconds one HTTP request may take (not a whole `wait`, which has a timeout of its own).
DEFAULT_TIMEOUT = 30.0
#: Read in this order; the first one set (and not empty) wins.
URL_ENV = ("SQUALL_API_URL", "ST2_API_URL", "ST2_ACTION_API_URL")
KEY_ENV = ("SQUALL_API_KEY", "ST2_API_KEY")
TOKEN_ENV = ("ST2_AUTH_TOKEN", "ST2_ACTION_AUTH_TOKEN")
_PREFIX = "/api/v1"


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def _api_base(url: str) -> str:
    """The URL the routes hang under (`.../api/v1`), from the service's root, `.../api` (StackStorm's
    convention behind a proxy) or `.../api/v1` itself (`ST2_ACTION_API_URL`)."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"the API URL must start with http:// or https://, not {url[:60]!r} "
                          f"(set SQUALL_API_URL, or pass url=)")
    if url.endswith(_PREFIX):
        return url
    if url.endswith("/api"):
        return url + "/v1"
    return url + _PREFIX


@dataclass(frozen=True, slots=True)
class Settings:
    """Resolved client settings. `api_url` ends in `/api/v1`; `root_url` is where `/healthz` answers."""

    api_url: str
    api_key: str | None = field(default=None, repr=False)
    auth_token: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT

    @property
    def root_url(self) -> str:
        return self.api_url.removesuffix(_PREFIX).removesuffix("/api")

    @classmethod
    def resolve(cls, url: str | None = None, api_key: str | None = None, *, auth_token: str | None = None,
                timeout: float | None = None, env: Mapping[str, str] | None = None) -> Settings:
        """Arguments win over the environment. A key wins over a token: the server tries the token only
        when no key is sent, so sending both would hide a bad key behind a good token."""
        env = os.environ if env is None else env
        timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
        if timeout <= 0:
            raise ConfigError(f"timeout must be a number of seconds above 0, not {timeout}")
        key = api_key if api_key is not None else _first(env, KEY_ENV)
        token = None
        if not key:
            token = auth_token if auth_token is not None else _first(env, TOKEN_ENV)
        return cls(api_url=_api_base(url or _first(env, URL_ENV) or DEFAULT_URL), api_key=key or None,
                   auth_token=token or None, timeout=timeout)

    def headers(self) -> dict[str, str]:
        """The authentication header: `St2-Api-Key` (StackStorm's, checked first by the server) or the
        action token's `X-Auth-Token`; none at all is left to the server to refuse with its own words."""
        if self.api_key:
            return {"St2-Api-Key": self.api_key}
        if self.auth_token:
            return {"X-Auth-Token": self.auth_token}
        return {}
