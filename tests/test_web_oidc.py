"""OpenID Connect login to the web UI (`web.oidc`) against a fake provider on this machine.

`FakeProvider` is an OpenID provider as OpenID Connect Core 1.0 §3.1 (Authorization Code flow) and
Discovery 1.0 §4 describe one, with PKCE (RFC 7636): a discovery document, a JWKS with a generated
RSA key, an authorization endpoint that sends the browser back with a single-use code, and a token
endpoint that checks the client's secret (Basic), the redirect URI and the PKCE verifier before it
signs an RS256 ID token carrying the request's nonce. Knobs make it misbehave the ways a real
attacker or a broken provider would: a foreign key, a tampered token, another nonce, an expired
token, a refusal. Squall reaches it through httpx's ASGI transport; the test's "browser" is an httpx
client that follows the redirects by hand."""

from __future__ import annotations

import base64
import contextlib
import html
import json
import re
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import httpx
import pytest
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from bot.accounts import EXTERNAL_PREFIX, ROLES
from bot.app import Squall
from bot.http import create_api
from bot.web.oidc import OidcLogin
from engine.config import WEB_ROLES, ConfigError, load_config
from tests.conftest import free_port, write
from tests.test_api import _home
from tests.test_web_auth import PASSWORD, Web, csrf_of, login, started_web

ISSUER = "https://idp.test"
CLIENT_ID = "squall-ui"
CLIENT_SECRET = "the client's secret: ü&=%"
ROLES_CONFIG = "{admin: [ops-leads], operator: [ops], viewer: [staff]}"


def _config(extra: str = "") -> str:
    """`web.oidc` as one line of YAML (test_api's config takes one extra line)."""
    return (f"web: {{oidc: {{issuer: '{ISSUER}', client_id: {CLIENT_ID}, client_secret: {json.dumps(CLIENT_SECRET)}, "
            f"roles: {ROLES_CONFIG}{extra}}}}}")


class FakeProvider:
    """An OpenID provider for one client (see the module's docstring); `user` is who logs in at it."""

    def __init__(self) -> None:
        self.key = RSAKey.generate_key(2048, parameters={"kid": "idp-1", "use": "sig", "alg": "RS256"})
        #: The key ID tokens are signed with (a test puts a foreign one here).
        self.signing_key = self.key
        self.user: dict[str, Any] = {"sub": "u-1001", "preferred_username": "ann", "groups": ["staff", "ops"]}
        #: Seconds an ID token is valid from now (negative: expired already).
        self.lifetime = 300
        #: Claims put into the next ID tokens over the right ones (another nonce, audience, issuer).
        self.overrides: dict[str, Any] = {}
        #: Entries put into the discovery document over the right ones.
        self.discovered: dict[str, Any] = {}
        self.tamper: Callable[[str], str] | None = None
        self.refuse: str | None = None
        #: The client secret the token endpoint expects (an admin rotates it at the provider).
        self.secret = CLIENT_SECRET
        self.authorizations: list[dict[str, str]] = []
        self.fetched: dict[str, int] = {"discovery": 0, "jwks": 0}
        self._codes: dict[str, dict[str, Any]] = {}
        self.app = Starlette(routes=[
            Route("/.well-known/openid-configuration", self.discovery),
            Route("/jwks", self.jwks),
            Route("/authorize", self.authorize),
            Route("/token", self.token, methods=["POST"]),
        ])

    async def discovery(self, _request: Request) -> Response:
        self.fetched["discovery"] += 1
        return JSONResponse({
            "issuer": ISSUER, "authorization_endpoint": f"{ISSUER}/authorize", "token_endpoint": f"{ISSUER}/token",
            "jwks_uri": f"{ISSUER}/jwks", "response_types_supported": ["code"], "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"], "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"], **self.discovered,
        })

    async def jwks(self, _request: Request) -> Response:
        self.fetched["jwks"] += 1
        return JSONResponse(KeySet([self.key]).as_dict(private=False))

    async def authorize(self, request: Request) -> Response:
        """Core §3.1.2: the person logs in (always `user` here) and the browser goes back with a code."""
        query = dict(request.query_params)
        self.authorizations.append(query)
        if query.get("client_id") != CLIENT_ID or query.get("response_type") != "code":
            return JSONResponse({"error": "unauthorized_client"}, status_code=400)
        answer = {"state": query["state"]}
        if self.refuse:
            answer |= {"error": self.refuse, "error_description": "The user said no"}
        else:
            code = secrets.token_urlsafe(16)
            self._codes[code] = {**query, "user": dict(self.user)}
            answer["code"] = code
        return RedirectResponse(f"{query['redirect_uri']}?{urlencode(answer)}", status_code=302)

    async def token(self, request: Request) -> Response:
        """Core §3.1.3: client authenticated, code used once, same redirect URI, PKCE verifier matching."""
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        client = [unquote(part) for part in base64.b64decode(credentials).decode().split(":", 1)] if credentials else []
        if scheme != "Basic" or client != [CLIENT_ID, self.secret]:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        grant = self._codes.pop(form.get("code", ""), None)
        if (grant is None or form.get("grant_type") != "authorization_code"
                or form.get("redirect_uri") != grant["redirect_uri"]
                or create_s256_code_challenge(form.get("code_verifier", "")) != grant["code_challenge"]):
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        now = int(time.time())
        claims = {**grant["user"], "iss": ISSUER, "aud": CLIENT_ID, "iat": now, "exp": now + self.lifetime,
                  "nonce": grant["nonce"], **self.overrides}
        id_token = jwt.encode({"alg": "RS256", "kid": self.signing_key.kid}, claims, self.signing_key)
        if self.tamper:
            id_token = self.tamper(id_token)
        return JSONResponse({"access_token": secrets.token_urlsafe(16), "token_type": "Bearer", "expires_in": 300,
                             "id_token": id_token})


@contextlib.asynccontextmanager
async def oidc_web(home: Path, extra: str = "") -> AsyncIterator[tuple[Web, FakeProvider]]:
    """Squall with `web.oidc` pointing at a fresh fake provider (reached through its ASGI app)."""
    squall = await Squall.start(load_config(_home(home, _config(extra)) / "config.yml"))
    web, idp = Web(squall, create_api(squall)), FakeProvider()
    web.app.state.web_oidc = OidcLogin(squall.config.oidc, transport=httpx.ASGITransport(app=idp.app))
    try:
        yield web, idp
    finally:
        for client in web.clients:
            await client.aclose()
        await squall.triggers.settle()
        await squall.close()


@pytest.fixture
async def setup(home: Path) -> AsyncIterator[tuple[Web, FakeProvider]]:
    async with oidc_web(home) as started:
        yield started


async def at_provider(idp: FakeProvider, location: str) -> str:
    """The browser at the provider's authorization URL: where the provider sends it back."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=idp.app)) as browser:
        answer = await browser.get(location)
    assert answer.status_code == 302, answer.text
    return answer.headers["location"]


async def oidc_login(client: httpx.AsyncClient, idp: FakeProvider, next_url: str | None = None) -> httpx.Response:
    """Click "Log in with idp.test", log in at the provider, and come back: Squall's answer to the callback."""
    start = await client.get("/login/oidc", params={"next": next_url} if next_url else None)
    assert start.status_code == 303, start.text
    assert start.headers["location"].startswith(f"{ISSUER}/authorize?")
    return await client.get(await at_provider(idp, start.headers["location"]))


async def whoami(client: httpx.AsyncClient) -> str:
    """`name (role)` as the page header shows the signed-in account."""
    page = await client.get("/executions")
    assert page.status_code == 200, page.text
    found = re.search(r'<span>([^<]+) <span class="role">\(([a-z]+)\)</span>', page.text)
    assert found, page.text
    return f"{found.group(1)} ({found.group(2)})"


def refused(answer: httpx.Response, status: int, words: str) -> None:
    """The login page again, with the reason, and no session."""
    assert answer.status_code == status, answer.text
    assert words in html.unescape(answer.text), answer.text
    assert 'action="/login"' in answer.text and "Traceback" not in answer.text
    assert "squall_session=" not in answer.headers.get("set-cookie", "")


# -- the flow ---------------------------------------------------------------------------------------

async def test_login_page_offers_the_provider_only_when_configured(setup: tuple[Web, FakeProvider],
                                                                   tmp_path: Path) -> None:
    web, _ = setup
    page = await web.client().get("/login?next=/executions%3Fstatus%3Dfailed")
    assert 'href="/login/oidc?next=/executions%3Fstatus%3Dfailed">Log in with idp.test</a>' in page.text
    async with started_web(tmp_path / "plain") as plain:
        client = plain.client()
        assert "Log in with" not in (await client.get("/login")).text
        missing = await client.get("/login/oidc")
        assert missing.status_code == 404 and "not configured" in missing.text


async def test_full_flow_to_a_session_with_the_groups_role(setup: tuple[Web, FakeProvider]) -> None:
    web, idp = setup
    client = web.client()
    back = await oidc_login(client, idp, next_url="/executions?status=failed")
    assert back.status_code == 303, back.text
    assert back.headers["location"] == "/executions?status=failed"
    cookies = back.headers.get_list("set-cookie")
    session = next(c.lower() for c in cookies if c.startswith("squall_session="))
    assert "httponly" in session and "samesite=lax" in session
    assert any(c.startswith("squall_oidc=") and "max-age=0" in c.lower() for c in cookies)  # the state is spent
    assert await whoami(client) == "ann (operator)"  # staff and ops: the higher role wins

    asked = idp.authorizations[0]
    assert asked["scope"] == "openid profile email" and asked["response_type"] == "code"
    assert asked["code_challenge_method"] == "S256" and len(asked["code_challenge"]) == 43
    assert asked["redirect_uri"] == "http://squall/login/oidc/callback"
    assert len(asked["state"]) >= 32 and len(asked["nonce"]) >= 32 and asked["state"] != asked["nonce"]

    # the same session as a password login's: its CSRF token guards posts
    token = csrf_of((await client.get("/executions")).text)
    assert (await client.post("/logout", data={"csrf_token": "forged"})).status_code == 403
    assert (await client.post("/logout", data={"csrf_token": token})).status_code == 303
    assert (await client.get("/executions")).status_code == 303

    record = await web.squall.db(web.squall.store.web_user_get, "ann")
    assert record["role"] == "operator" and record["password_hash"].startswith(EXTERNAL_PREFIX)
    assert CLIENT_SECRET not in json.dumps(record, default=str)
    for password in ("", PASSWORD, record["password_hash"]):  # no password opens an OIDC account
        assert (await login(web.client(), "ann", password)).status_code == 401

    await oidc_login(web.client(), idp)
    assert idp.fetched["discovery"] == 1 and idp.fetched["jwks"] == 1  # fetched once, kept


async def test_next_stays_on_this_site(setup: tuple[Web, FakeProvider]) -> None:
    web, idp = setup
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        back = await oidc_login(web.client(), idp, next_url=target)
        assert back.status_code == 303 and back.headers["location"] == "/executions"


async def test_role_follows_the_groups_at_each_login(setup: tuple[Web, FakeProvider]) -> None:
    web, idp = setup
    idp.user["groups"] = ["ops-leads"]
    first = web.client()
    assert (await oidc_login(first, idp)).status_code == 303
    assert await whoami(first) == "ann (admin)"
    idp.user["groups"] = "staff"  # one group as a string
    second = web.client()
    assert (await oidc_login(second, idp)).status_code == 303
    assert await whoami(second) == "ann (viewer)"
    assert (await first.get("/executions")).status_code == 303  # the admin session ended with the role
    assert (await web.squall.db(web.squall.store.web_user_get, "ann"))["role"] == "viewer"


async def test_nobody_without_a_matching_group(setup: tuple[Web, FakeProvider]) -> None:
    web, idp = setup
    idp.user["groups"] = ["contractors"]
    refused(await oidc_login(web.client(), idp), 403, "none of your groups gives a role")
    del idp.user["groups"]
    refused(await oidc_login(web.client(), idp), 403, "none of your groups gives a role")
    assert await web.squall.db(web.squall.store.web_user_get, "ann") is None


async def test_default_role_for_people_in_no_group(home: Path) -> None:
    async with oidc_web(home, ", default_role: viewer, role_claim: realm_access.roles") as (web, idp):
        idp.user["groups"] = ["ops-leads"]  # not where role_claim looks
        client = web.client()
        assert (await oidc_login(client, idp)).status_code == 303
        assert await whoami(client) == "ann (viewer)"
        idp.user["realm_access"] = {"roles": ["ops"]}  # a nested claim (Keycloak's)
        client = web.client()
        assert (await oidc_login(client, idp)).status_code == 303
        assert await whoami(client) == "ann (operator)"


async def test_a_local_account_of_that_name_is_not_taken_over(setup: tuple[Web, FakeProvider]) -> None:
    web, idp = setup
    await web.user("ann", "admin")
    refused(await oidc_login(web.client(), idp), 403, "belongs to another Squall account")
    assert (await login(web.client(), "ann")).status_code == 303  # her password still works
    idp.user = {"sub": "u-2002", "preferred_username": "bob", "groups": ["ops"]}
    assert (await oidc_login(web.client(), idp)).status_code == 303
    idp.user["sub"] = "u-3003"  # another person now called bob at the provider
    refused(await oidc_login(web.client(), idp), 403, "belongs to another Squall account")


# -- refused tokens and callbacks --------------------------------------------------------------------

def _resign_claims(token: str) -> str:
    """The same signature over other claims (an admin's groups)."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["groups"] = ["ops-leads"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


async def test_tampered_and_foreign_tokens_are_refused(setup: tuple[Web, FakeProvider]) -> None:
    web, idp = setup
    idp.tamper = _resign_claims
    refused(await oidc_login(web.client(), idp), 401, "did not pass its checks")
    idp.tamper = None
    idp.signing_key = RSAKey.generate_key(2048, parameters={"kid": "idp-1"})  # the provider's kid, not its key
    refused(await oidc_login(web.client(), idp), 401, "did not pass its checks")
    idp.signing_key = RSAKey.generate_key(2048, parameters={"kid": "elsewhere"})  # a key the JWKS never had
    refused(await oidc_login(web.client(), idp), 401, "did not pass its checks")
    assert idp.fetched["jwks"] == 1  # fetched a moment ago: an unknown kid does not make the provider a target
    idp.signing_key = idp.key
    assert (await oidc_login(web.client(), idp)).status_code == 303


async def test_rotated_keys_are_fetched_again(setup: tuple[Web, FakeProvider], monkeypatch: pytest.MonkeyPatch) -> None:
    web, idp = setup
    assert (await oidc_login(web.client(), idp)).status_code == 303
    monkeypatch.setattr("bot.web.oidc.JWKS_REFRESH_SECONDS", 0)
    idp.key = idp.signing_key = RSAKey.generate_key(2048, parameters={"kid": "idp-2"})
    assert (await oidc_login(web.client(), idp)).status_code == 303
    assert idp.fetched["jwks"] == 2
    idp.signing_key = RSAKey.generate_key(2048, parameters={"kid": "idp-3"})  # published nowhere
    refused(await oidc_login(web.client(), idp), 401, "did not pass its checks")
    assert idp.fetched["jwks"] == 3


@pytest.mark.parametrize(("claims", "words"), [
    ({"nonce": "a nonce from another login"}, "nonce"),
    ({"aud": "another-client"}, "aud"),
    ({"aud": [CLIENT_ID, "another-client"], "azp": "another-client"}, "azp"),
    ({"iss": "https://idp.evil"}, "iss"),
])
async def test_tokens_for_another_login_client_or_issuer_are_refused(setup: tuple[Web, FakeProvider],
                                                                     claims: dict[str, Any], words: str) -> None:
    web, idp = setup
    idp.overrides = claims
    refused(await oidc_login(web.client(), idp), 401, words)
    assert await web.squall.db(web.squall.store.web_user_get, "ann") is None


async def test_expired_tokens_are_refused(setup: tuple[Web, FakeProvider]) -> None:
    web, idp = setup
    idp.lifetime = -600
    refused(await oidc_login(web.client(), idp), 401, "expired")
    assert await web.squall.db(web.squall.store.web_user_get, "ann") is None


async def test_state_must_be_this_browsers_and_is_used_once(setup: tuple[Web, FakeProvider]) -> None:
    web, idp = setup
    attacker = web.client()
    start = await attacker.get("/login/oidc")
    callback = await at_provider(idp, start.headers["location"])
    # login CSRF: the attacker's callback opened in the victim's browser (no state cookie there)
    refused(await web.client().get(callback), 400, "started in another browser")
    # a state the browser's cookie does not hold
    forged = callback.replace("state=", "state=x")
    refused(await attacker.get(forged), 400, "expired, was already used")
    assert (await attacker.get(callback)).status_code == 303
    replay = web.client()
    replay.cookies.set("squall_oidc", parse_qs(urlsplit(callback).query)["state"][0])
    refused(await replay.get(callback), 400, "already used")
    refused(await attacker.get("/login/oidc/callback"), 400, "expired")


async def test_the_providers_refusal_is_shown(setup: tuple[Web, FakeProvider]) -> None:
    web, idp = setup
    idp.refuse = "access_denied"
    refused(await oidc_login(web.client(), idp), 401, "idp.test did not log you in (access_denied: The user said no)")
    # another browser's error text is not shown (nobody can put words on the login page by a link)
    lure = await web.client().get("/login/oidc/callback?error=access_denied&error_description=Call+555&state=x")
    refused(lure, 400, "expired")
    assert "555" not in lure.text


async def test_a_code_the_provider_does_not_accept(setup: tuple[Web, FakeProvider]) -> None:
    web, idp = setup
    idp.secret = "rotated at the provider"
    refused(await oidc_login(web.client(), idp), 401, "idp.test did not accept the login (invalid_client)")


async def test_an_unreachable_provider_is_said_so(setup: tuple[Web, FakeProvider]) -> None:
    web, _ = setup
    broken = Starlette(routes=[])
    web.app.state.web_oidc = OidcLogin(web.squall.config.oidc, transport=httpx.ASGITransport(app=broken))
    refused(await web.client().get("/login/oidc"), 502, "could not be reached for its discovery document")


async def test_a_discovery_document_for_another_issuer_is_refused(setup: tuple[Web, FakeProvider]) -> None:
    web, idp = setup
    idp.discovered = {"issuer": "https://idp.evil"}
    refused(await web.client().get("/login/oidc"), 502, "names the issuer 'https://idp.evil'")
    idp.discovered = {"token_endpoint": "http://idp.test/token"}  # the code and secret over plain http
    refused(await web.client().get("/login/oidc"), 502, "no usable token_endpoint")
    idp.discovered = {}
    assert (await oidc_login(web.client(), idp)).status_code == 303  # a refused document is not kept


# -- configuration -----------------------------------------------------------------------------------

def test_roles_are_the_accounts_roles() -> None:
    assert WEB_ROLES == ROLES


def _load(tmp_path: Path, oidc: str) -> str:
    write(tmp_path / "config.yml", f"web:\n  oidc: {oidc}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "config.yml")
    return str(caught.value)


GOOD = f"issuer: '{ISSUER}', client_id: c, client_secret: s"


@pytest.mark.parametrize(("oidc", "words"), [
    (f"{{{GOOD}, roles: {ROLES_CONFIG}, client_secrt: x}}", "unknown key 'web.oidc.client_secrt' (did you mean "
                                                             "'web.oidc.client_secret'?)"),
    (f"{{client_id: c, client_secret: s, roles: {ROLES_CONFIG}}}", "'web.oidc.issuer' is missing"),
    (f"{{issuer: 'http://idp.example', client_id: c, client_secret: s, roles: {ROLES_CONFIG}}}",
     "'web.oidc.issuer' must be the provider's https URL"),
    (f"{{issuer: '{ISSUER}', client_secret: s, roles: {ROLES_CONFIG}}}", "'web.oidc.client_id' is missing"),
    (f"{{issuer: '{ISSUER}', client_id: c, roles: {ROLES_CONFIG}}}", "'web.oidc.client_secret' is missing"),
    (f"{{{GOOD}, client_secret_env: X, roles: {ROLES_CONFIG}}}", "are both set"),
    (f"{{{GOOD}}}", "'web.oidc.roles' is missing"),
    (f"{{{GOOD}, roles: {{root: [wheel]}}}}", "'web.oidc.roles.root': unknown role; use viewer, operator, admin"),
    (f"{{{GOOD}, roles: {{admin: [1]}}}}", "'web.oidc.roles.admin' must be a list of group names"),
    (f"{{{GOOD}, default_role: owner}}", "'web.oidc.default_role' must be one of viewer, operator, admin"),
    (f"{{{GOOD}, default_role: viewer, scopes: [profile]}}", "'web.oidc.scopes' must be a list of scopes including "
                                                             "openid"),
    (f"{{{GOOD}, default_role: viewer, role_claim: ''}}", "'web.oidc.role_claim' must be"),
    ("[issuer]", "'web.oidc' must be a mapping"),
])
def test_config_errors_name_the_key(tmp_path: Path, oidc: str, words: str) -> None:
    assert words in _load(tmp_path, oidc)


def test_config_unknown_web_key_and_secret_from_the_environment(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "config.yml", "web:\n  oidx: {}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'web\.oidx' \(did you mean 'web\.oidc'\?\)"):
        load_config(tmp_path / "config.yml")
    monkeypatch.setenv("SQUALL_TEST_OIDC_SECRET", "from the environment")
    write(tmp_path / "config.yml", f"web:\n  oidc: {{issuer: '{ISSUER}/realms/ops', client_id: c, "
                                   "client_secret_env: SQUALL_TEST_OIDC_SECRET, default_role: viewer}\n")
    settings = load_config(tmp_path / "config.yml").oidc
    assert settings is not None and settings.secret() == "from the environment"
    assert settings.scopes == ("openid", "profile", "email") and settings.role_claim == "groups"
    assert settings.roles == {} and settings.default_role == "viewer"
    assert "from the environment" not in repr(settings)


def test_a_missing_secret_variable_stops_serve_not_the_squall_packs_commands(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Actions inherit no `SQUALL_*` variable, yet the `squall` pack's (`!pack list`) load the file: the
    variable is read when the web app starts, and `squall serve` stops there naming it."""
    monkeypatch.delenv("SQUALL_TEST_NO_SUCH_VAR", raising=False)
    # A port of its own: whatever listens on the default one must not answer for this serve.
    write(tmp_path / "config.yml", f"api:\n  port: {free_port()}\nweb:\n  oidc: {{issuer: '{ISSUER}', client_id: c, "
                                   f"client_secret_env: SQUALL_TEST_NO_SUCH_VAR, roles: {ROLES_CONFIG}}}\n")
    settings = load_config(tmp_path / "config.yml").oidc
    assert settings is not None and settings.client_secret_env == "SQUALL_TEST_NO_SUCH_VAR"
    listed = subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(tmp_path / "config.yml"), "pack", "list"],
                            capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent)
    assert listed.returncode == 0, listed.stderr
    assert "core" in listed.stdout
    served = subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(tmp_path / "config.yml"), "serve"],
                            capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent)
    assert served.returncode != 0
    assert "'web.oidc.client_secret_env': the environment variable SQUALL_TEST_NO_SUCH_VAR is not set" in served.stderr
    with pytest.raises(ConfigError, match="SQUALL_TEST_NO_SUCH_VAR is not set"):
        OidcLogin(settings)
    monkeypatch.setenv("SQUALL_TEST_NO_SUCH_VAR", "now set")
    assert settings.secret() == "now set"


def test_a_missing_extra_stops_the_app_naming_it(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(_home(home, _config()) / "config.yml")
    monkeypatch.setitem(sys.modules, "authlib", None)
    with pytest.raises(ConfigError, match=r"authlib is not installed: pip install 'squall\[oidc\]'"):
        OidcLogin(config.oidc)  # type: ignore[arg-type]

