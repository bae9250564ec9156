"""OpenID Connect login to the web UI (config `web.oidc`): the Authorization Code flow with PKCE, `state`
and `nonce`, as OpenID Connect Core 1.0 §3.1 describes it; the routes are in `login.py`.

`begin` remembers a login it sends to the provider (its `state`, `nonce` and PKCE verifier) for ten
minutes, in this process; `take` hands it back once, so a replayed or forged callback finds nothing.
The browser holds the `state` in an HttpOnly cookie too, and the callback must bring both: a callback
started in another browser (a login CSRF) is refused. `finish` trades the code for tokens and checks
the ID token: the signature against the provider's JWKS (fetched again once when a token names an
unknown key: providers rotate keys), `iss`, `aud` (and `azp`), `exp`, `iat` and the `nonce`. The
role comes from the groups in `role_claim`; the account (`bot.accounts.provision_external`) is bound
to the provider's `sub`, so a reused user name cannot take over another account.

The libraries (`authlib`, and `joserfc` under it) are the `squall[oidc]` extra: imported only when
`web.oidc` is configured, and checked when the app is built, so a missing extra stops `squall serve` at
start with the command that installs it. The provider's discovery document is fetched at the first
login and kept (`/.well-known/openid-configuration`, OpenID Connect Discovery 1.0 §4).

Logins in flight live in this process: with several `squall serve` processes behind one address, the
proxy must send a browser's callback to the process that started its login (sticky sessions).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from fastapi import FastAPI

from bot.accounts import NAME_PATTERN, ROLES, external_marker
from engine.config import ConfigError, OidcSettings

if TYPE_CHECKING:
    import httpx
    from joserfc.jwk import KeySet

log = logging.getLogger(__name__)

EXTRA = "squall[oidc]"
#: How long a login may stay at the provider (typing a password, a second factor) before it expires.
PENDING_SECONDS = 600
#: Logins in flight kept at most; beyond, the oldest is forgotten (anyone can start one: bounded memory).
MAX_PENDING = 1000
#: Clock difference tolerated between the provider and this machine when checking `exp` and `iat`.
LEEWAY_SECONDS = 60
#: A token naming an unknown key fetches the JWKS again, at most this often (rotation, not a flood).
JWKS_REFRESH_SECONDS = 60
#: Asymmetric algorithms only: `none` and HMAC (keyed by the client secret) are never accepted.
SIGNING_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
HTTP_TIMEOUT = 10.0
#: Claims tried in turn for the account's name; `sub` always exists but is often an opaque id.
NAME_CLAIMS = ("preferred_username", "email", "sub")


class OidcError(Exception):
    """A login that cannot go on; the message is shown on the login page as is (no secrets in it)."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Pending:
    """A login sent to the provider: what its callback is checked against."""

    nonce: str
    verifier: str
    redirect_uri: str
    next_url: str
    started: float


@dataclass(frozen=True)
class Identity:
    """Whom the provider vouched for: the account's name and role, and the marker binding it to them."""

    name: str
    role: str
    marker: str


def require_libraries() -> None:
    """Fail at start, naming the extra, when `web.oidc` is configured without its libraries."""
    try:
        import authlib  # noqa: F401
        import joserfc  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"'web.oidc' is configured but {exc.name} is not installed: "
                          f"pip install '{EXTRA}'") from exc


def install(app: FastAPI) -> None:
    """`app.state.web_oidc`: the OIDC login of this app when `web.oidc` is configured, else None."""
    settings = app.state.squall.config.oidc
    app.state.web_oidc = OidcLogin(settings) if settings is not None else None


class OidcLogin:
    """One provider's login: discovery, logins in flight, the code exchange and the ID token's checks.

    `transport` is httpx's (tests put a fake provider there); by default the network."""

    def __init__(self, settings: OidcSettings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        require_libraries()
        self.settings = settings
        self._secret = settings.secret()  # here, so a missing variable stops `squall serve` at start
        self.host = urlsplit(settings.issuer).hostname or settings.issuer
        self._transport = transport
        self._pending: OrderedDict[str, Pending] = OrderedDict()
        self._metadata: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._keys_fetched = 0.0
        self._lock = asyncio.Lock()

    @property
    def label(self) -> str:
        """The login page's button."""
        return f"Log in with {self.host}"

    # -- the provider's documents -----------------------------------------------------------------------
    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        import httpx  # here, not at the top: only a configured `web.oidc` needs it (~20 ms at start)

        try:
            async with httpx.AsyncClient(transport=self._transport, timeout=HTTP_TIMEOUT) as client:
                response = await client.get(url, headers={"Accept": "application/json"})
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("OIDC: cannot read %s at %s: %s", what, url, exc)
            raise OidcError(f"{self.host} could not be reached for its {what}: try again later.", 502) from exc
        if not isinstance(document, dict):
            raise OidcError(f"{self.host}'s {what} is not a JSON object.", 502)
        return document

    async def metadata(self) -> dict[str, Any]:
        """The discovery document, fetched once and kept; its `issuer` must be the configured one (a
        document served for another issuer would let that issuer's tokens in)."""
        async with self._lock:
            if self._metadata is None:
                url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
                document = await self._get_json(url, "discovery document")
                if document.get("issuer") != self.settings.issuer:
                    raise OidcError(f"{self.host}'s discovery document names the issuer "
                                    f"{document.get('issuer')!r}, not {self.settings.issuer!r} as configured.", 502)
                scheme = urlsplit(self.settings.issuer).scheme
                for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                    value = document.get(key)
                    if not isinstance(value, str) or urlsplit(value).scheme != scheme:
                        raise OidcError(f"{self.host}'s discovery document has no usable {key}.", 502)
                self._metadata = document
            return self._metadata

    async def _key_set(self, refresh: bool) -> KeySet:
        """The provider's signing keys; `refresh` fetches them again unless that was done just now."""
        from joserfc.errors import JoseError
        from joserfc.jwk import KeySet

        metadata = await self.metadata()
        async with self._lock:
            stale = refresh and time.monotonic() - self._keys_fetched >= JWKS_REFRESH_SECONDS
            if self._keys is None or stale:
                document = await self._get_json(metadata["jwks_uri"], "signing keys (JWKS)")
                try:
                    self._keys = KeySet.import_key_set(document)  # type: ignore[arg-type]
                except (JoseError, ValueError, KeyError, TypeError) as exc:
                    raise OidcError(f"{self.host}'s signing keys (JWKS) cannot be read.", 502) from exc
                self._keys_fetched = time.monotonic()
            return self._keys

    # -- logins in flight ---------------------------------------------------------------------------------
    async def begin(self, redirect_uri: str, next_url: str) -> tuple[str, str]:
        """Start a login: its `state` (for the browser's cookie) and the provider's URL to send it to."""
        from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
        from authlib.oauth2.rfc7636 import create_s256_code_challenge

        metadata = await self.metadata()
        state, nonce, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(48)
        self._forget_expired()
        while len(self._pending) >= MAX_PENDING:
            self._pending.popitem(last=False)
        self._pending[state] = Pending(nonce, verifier, redirect_uri, next_url, time.monotonic())
        url = prepare_grant_uri(metadata["authorization_endpoint"], self.settings.client_id, "code",
                                redirect_uri=redirect_uri, scope=" ".join(self.settings.scopes), state=state,
                                nonce=nonce, code_challenge=create_s256_code_challenge(verifier),
                                code_challenge_method="S256")
        return state, url

    def take(self, state: str, cookie: str) -> Pending | None:
        """The login this callback finishes, once: None when the browser's cookie is not this login's
        `state`, or the login is unknown, used or expired."""
        if not state or not cookie or not hmac.compare_digest(state.encode(), cookie.encode()):
            return None
        self._forget_expired()
        return self._pending.pop(state, None)

    def _forget_expired(self) -> None:
        limit = time.monotonic() - PENDING_SECONDS
        while self._pending and next(iter(self._pending.values())).started < limit:
            self._pending.popitem(last=False)

    # -- the callback -------------------------------------------------------------------------------------
    async def finish(self, pending: Pending, code: str) -> Identity:
        """Trade the code for an ID token, check it, and say who logged in with which role."""
        claims = await self._verify(await self._exchange(pending, code), pending.nonce)
        role = self.role_for(claims)
        if role is None:
            raise OidcError(f"You logged in at {self.host}, but none of your groups gives a role in Squall: "
                            "ask an admin to add you to one.", 403)
        return Identity(self.name_for(claims), role, external_marker(self.settings.issuer, claims["sub"]))

    async def _exchange(self, pending: Pending, code: str) -> str:
        """The ID token of the code (client authentication as the provider supports it, Core §9)."""
        import httpx  # here, not at the top: only a configured `web.oidc` needs it (~20 ms at start)
        from authlib.oauth2.rfc6749.parameters import prepare_token_request

        metadata = await self.metadata()
        methods = metadata.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        extra: dict[str, str] = {}
        auth: httpx.BasicAuth | None = None
        if "client_secret_basic" in methods:  # RFC 6749 §2.3.1: both form-encoded before Basic
            auth = httpx.BasicAuth(quote(self.settings.client_id, safe=""), quote(self._secret, safe=""))
        elif "client_secret_post" in methods:
            extra = {"client_id": self.settings.client_id, "client_secret": self._secret}
        else:
            raise OidcError(f"{self.host} accepts neither client_secret_basic nor client_secret_post at its "
                            "token endpoint.", 502)
        body = prepare_token_request("authorization_code", code=code, redirect_uri=pending.redirect_uri,
                                     code_verifier=pending.verifier, **extra)
        try:
            async with httpx.AsyncClient(transport=self._transport, timeout=HTTP_TIMEOUT) as client:
                response = await client.post(metadata["token_endpoint"], content=body, auth=auth, headers={
                    "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"})
        except httpx.HTTPError as exc:
            log.warning("OIDC: token endpoint of %s failed: %s", self.host, exc)
            raise OidcError(f"{self.host} could not be reached to finish the login: try again.", 502) from exc
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code != 200 or not isinstance(answer, dict) or not isinstance(answer.get("id_token"), str):
            error = str(answer.get("error") or "no ID token") if isinstance(answer, dict) else "no JSON"
            # the error code only: a 200 without an ID token still carries an access token
            log.warning("OIDC: %s answered the code with HTTP %s: %s", self.host, response.status_code, error[:100])
            raise OidcError(f"{self.host} did not accept the login ({error[:100]}): try again.")
        return answer["id_token"]

    async def _verify(self, id_token: str, nonce: str) -> dict[str, Any]:
        """The ID token's claims once its signature, issuer, audience, times and nonce hold (Core §3.1.3.7)."""
        from authlib.oidc.core import CodeIDToken
        from joserfc import jwt
        from joserfc.errors import InvalidKeyIdError, JoseError

        metadata = await self.metadata()
        offered = metadata.get("id_token_signing_alg_values_supported") or ["RS256"]
        algorithms = [alg for alg in SIGNING_ALGORITHMS if alg in offered]
        try:
            try:
                token = jwt.decode(id_token, await self._key_set(refresh=False), algorithms=algorithms)
            except InvalidKeyIdError:
                token = jwt.decode(id_token, await self._key_set(refresh=True), algorithms=algorithms)
            claims = CodeIDToken(token.claims, token.header, options={
                "iss": {"essential": True, "value": self.settings.issuer},
                "aud": {"essential": True, "value": self.settings.client_id},
                "nonce": {"essential": True},
            }, params={"nonce": nonce, "client_id": self.settings.client_id})
            claims.validate(leeway=LEEWAY_SECONDS)
        except (JoseError, ValueError) as exc:
            log.warning("OIDC: ID token from %s refused: %s", self.host, exc)
            raise OidcError(f"The ID token from {self.host} did not pass its checks ({exc}): login refused.") from exc
        return dict(claims)

    # -- who and which role ----------------------------------------------------------------------------------
    def _claim(self, claims: dict[str, Any]) -> Any:
        """`role_claim` as named (namespaced claims have dots: `https://example.com/groups`), else as a
        dotted path into nested claims (Keycloak's `realm_access.roles`)."""
        name = self.settings.role_claim
        if name in claims:
            return claims[name]
        value: Any = claims
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    def role_for(self, claims: dict[str, Any]) -> str | None:
        """The highest role any of the person's groups gives, else `default_role` (None: refused)."""
        value = self._claim(claims)
        values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        groups = {group for group in values if isinstance(group, str)}
        for role in reversed(ROLES):
            if groups.intersection(self.settings.roles.get(role, ())):
                return role
        return self.settings.default_role

    def name_for(self, claims: dict[str, Any]) -> str:
        """The account's name: the first of `NAME_CLAIMS` that is a usable Squall user name."""
        for claim in NAME_CLAIMS:
            value = claims.get(claim)
            if isinstance(value, str) and NAME_PATTERN.match(value):
                return value
        raise OidcError(f"{self.host} gave no user name Squall can use (preferred_username, email or sub of "
                        "1 to 64 letters, digits, '.', '_', '@' or '-'): ask an admin.", 403)
