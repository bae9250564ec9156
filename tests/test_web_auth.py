"""The web UI's accounts and sessions: login (right, wrong, throttled, forged), logout and revocation,
roles and CSRF on a state-changing page, the security headers, the first admin of `squall serve`, and
`squall user ...` through the real CLI.

The app is the API's (`create_api`) over test_api's config and demo pack, driven with httpx."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import Result

from bot.accounts import (
    Account,
    bootstrap_admin,
    create_user,
    find_session,
    hash_password,
    open_session,
    password_matches,
)
from bot.app import Squall
from bot.http import create_api
from bot.web.throttle import LoginThrottle
from engine.config import load_config
from engine.storage import Store
from tests.conftest import free_port, wait_until_answering
from tests.test_api import _home
from tests.test_cli import SQUALL, in_process

PASSWORD = "correct horse battery"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Web:
    """A started Squall, its app, and ways to make accounts and signed-in clients."""

    squall: Squall
    app: Any
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    def client(self, address: str = "127.0.0.1", base_url: str = "http://squall") -> httpx.AsyncClient:
        """A browser at `address` (closed with the fixture)."""
        transport = httpx.ASGITransport(app=self.app, client=(address, 40000))
        self.clients.append(httpx.AsyncClient(transport=transport, base_url=base_url))
        return self.clients[-1]

    async def user(self, name: str, role: str, password: str = PASSWORD) -> None:
        assert await self.squall.db(create_user, self.squall.store, name, role, hash_password(password))

    async def signed_in(self, name: str, role: str) -> tuple[httpx.AsyncClient, str]:
        """A client logged in as a new account of `role`, and its session's CSRF token."""
        await self.user(name, role)
        client = self.client()
        assert (await login(client, name)).status_code == 303
        return client, csrf_of((await client.get("/executions")).text)


def csrf_of(page: str) -> str:
    found = _CSRF.search(page)
    assert found, page
    return found.group(1)


async def login(client: httpx.AsyncClient, name: str, password: str = PASSWORD,
                next_url: str | None = None) -> httpx.Response:
    """Fill in the login form as a browser does (its token comes with the page)."""
    form = await client.get("/login")
    fields = {"username": name, "password": password, "csrf_token": csrf_of(form.text)}
    if next_url is not None:
        fields["next"] = next_url
    return await client.post("/login", data=fields)


@contextlib.asynccontextmanager
async def started_web(home: Path) -> AsyncIterator[Web]:
    """Squall over test_api's config and demo pack, with its app; the clients made are closed after."""
    squall = await Squall.start(load_config(_home(home) / "config.yml"))
    web = Web(squall, create_api(squall))
    try:
        yield web
    finally:
        for client in web.clients:
            await client.aclose()
        await squall.triggers.settle()
        await squall.close()


@pytest.fixture
async def web(home: Path) -> AsyncIterator[Web]:
    async with started_web(home) as started:
        yield started


# -- login, logout, sessions -----------------------------------------------------------------------

async def test_unauthenticated_pages_redirect_to_login_and_back(web: Web) -> None:
    await web.user("ann", "viewer")
    client = web.client()
    root = await client.get("/")
    assert root.status_code == 303 and root.headers["location"] == "/executions"
    page = await client.get("/executions?status=failed")
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=%2Fexecutions%3Fstatus%3Dfailed"
    back = await login(client, "ann", next_url="/executions?status=failed")
    assert back.status_code == 303 and back.headers["location"] == "/executions?status=failed"
    listed = await client.get("/executions?status=failed")
    assert listed.status_code == 200 and "ann" in listed.text and "(viewer)" in listed.text


async def test_login_right_and_wrong_password(web: Web) -> None:
    await web.user("ann", "operator")
    client = web.client()
    wrong = await login(client, "ann", "not the password")
    assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
    assert "squall_session" not in client.cookies
    unknown = await login(client, "nobody", PASSWORD)
    assert unknown.status_code == 401 and "Wrong user name or password" in unknown.text
    right = await login(client, "ann")
    assert right.status_code == 303
    cookie = right.headers["set-cookie"].lower()
    assert "squall_session=" in cookie and "httponly" in cookie and "samesite=lax" in cookie
    assert "secure" not in cookie  # plain http: a Secure cookie would never come back
    assert (await client.get("/executions")).status_code == 200
    secure_client = web.client(base_url="https://squall")
    assert "secure" in (await login(secure_client, "ann")).headers["set-cookie"].lower()
    audited = [(row["event"], row["actor"]) for row in reversed(await web.squall.db(web.squall.store.audit_list))]
    assert audited == [("web.login.failed", "ann"), ("web.login.failed", "nobody"), ("web.login", "ann"),
                       ("web.login", "ann")]
    assert all("not the password" not in str(row["detail"]) for row in await web.squall.db(web.squall.store.audit_list))


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:x"])
async def test_login_goes_only_to_pages_of_this_site(web: Web, target: str) -> None:
    await web.user("ann", "viewer")
    client = web.client()
    done = await login(client, "ann", next_url=target)
    assert done.status_code == 303 and done.headers["location"] == "/executions"


async def test_a_login_form_from_elsewhere_is_refused(web: Web) -> None:
    await web.user("ann", "viewer")
    client = web.client()
    forged = await client.post("/login", data={"username": "ann", "password": PASSWORD})
    assert forged.status_code == 403 and "squall_session" not in forged.headers.get("set-cookie", "")
    await client.get("/login")  # the form's cookie, but a post without the matching field
    mismatched = await client.post("/login", data={"username": "ann", "password": PASSWORD, "csrf_token": "x"})
    assert mismatched.status_code == 403 and "squall_session" not in client.cookies


async def test_failed_logins_are_throttled_per_user_and_per_address(web: Web) -> None:
    await web.user("ann", "viewer")
    await web.user("bob", "viewer")
    attacker = web.client("10.0.0.1")
    elsewhere = web.client("10.0.0.2")
    for _ in range(5):
        assert (await login(attacker, "ann", "guess")).status_code == 401
    refused = await login(attacker, "ann")  # the right password, but too late
    assert refused.status_code == 429 and "Too many failed logins" in refused.text
    assert 0 < int(refused.headers["retry-after"]) <= 60
    assert (await login(elsewhere, "ann")).status_code == 429  # the name is limited from anywhere
    assert (await login(attacker, "bob")).status_code == 429  # and the address for any name
    assert (await login(elsewhere, "bob")).status_code == 303


async def test_logins_sent_at_once_check_no_more_passwords_than_the_throttle_allows(web: Web) -> None:
    """Each login is counted before its password check: guesses in flight together cannot all pass."""
    await web.user("ann", "viewer")
    browsers = [web.client("10.0.0.1") for _ in range(12)]  # each with its own login form's cookie
    tokens = [csrf_of((await browser.get("/login")).text) for browser in browsers]

    async def guess(browser: httpx.AsyncClient, token: str, password: str) -> int:
        form = {"username": "ann", "password": password, "csrf_token": token}
        return (await browser.post("/login", data=form)).status_code

    codes = await asyncio.gather(*(guess(browser, token, f"guess-{i}")
                                   for i, (browser, token) in enumerate(zip(browsers, tokens, strict=True))))
    assert sorted(codes) == [401] * 5 + [429] * 7
    assert (await login(web.client("10.0.0.9"), "ann")).status_code == 429  # the right password, after the limit
    failed = [row for row in await web.squall.db(web.squall.store.audit_list) if row["event"] == "web.login.failed"]
    assert len(failed) == 5


async def test_throttled_logins_are_audited_once_per_window_for_each_limit_reached(web: Web) -> None:
    """A login refused by the throttle (429) is audited as `web.login.throttled`, naming who was tried and
    from where; but only the first refusal per limit reached (a name's, an address's) in the throttle's
    window, so a flood of guesses writes one row, not one per guess."""
    now = [1000.0]
    web.app.state.web_throttle = LoginThrottle(clock=lambda: now[0])
    await web.user("ann", "viewer")
    attacker = web.client("10.0.0.1")

    async def throttled() -> list[dict[str, Any]]:
        rows = await web.squall.db(web.squall.store.audit_list)
        return [row for row in rows if row["event"] == "web.login.throttled"]

    codes = [(await login(attacker, "ann", f"guess-{i}")).status_code for i in range(12)]
    assert codes == [401] * 5 + [429] * 7
    failed = [row for row in await web.squall.db(web.squall.store.audit_list) if row["event"] == "web.login.failed"]
    assert len(failed) == 5
    [row] = await throttled()
    assert (row["actor"], row["source"], row["target"]) == ("ann", "web:10.0.0.1", None)
    assert row["detail"] == {"method": "password", "limits": ["user", "address"], "retry_after": 60}
    assert (await login(web.client("10.0.0.2"), "ann")).status_code == 429  # the name's limit: audited already
    assert (await login(attacker, "bob")).status_code == 429  # the address's: audited already
    assert len(await throttled()) == 1

    now[0] += 61  # the window has passed: a new flood is audited again, once
    for i in range(5):
        assert (await login(attacker, "ann", f"again-{i}")).status_code == 401
    assert [(await login(attacker, "ann")).status_code for _ in range(3)] == [429] * 3
    assert len(await throttled()) == 2


async def test_a_role_refusal_is_audited(web: Web) -> None:
    """A signed-in account asking for what its role does not allow (an operator changing keys, rules or
    packs) is answered 403 and audited as `web.denied`: who, the page, and the role it needs."""
    operator, csrf = await web.signed_in("otto", "operator")
    asked = [("/keys", {"scope": "system", "name": "opkey", "value": "x"}), ("/rules/demo.on_build/enabled",
             {"enabled": "false"}), ("/packs/reload", {})]
    for path, fields in asked:
        refused = await operator.post(path, data={"csrf_token": csrf, **fields})
        assert refused.status_code == 403 and "admin role" in refused.text
    denied = await web.squall.db(web.squall.store.audit_list, 10, "web.denied")
    assert [(row["actor"], row["source"], row["target"], row["detail"]) for row in reversed(denied)] == [
        ("otto", "web", path, {"method": "POST", "needs": "admin", "role": "operator"}) for path, _ in asked]
    assert await web.squall.db(web.squall.datastore.get, "opkey") is None


async def test_a_right_password_does_not_count_against_the_address(web: Web) -> None:
    await web.user("ann", "viewer")
    await web.user("bob", "viewer")
    client = web.client("10.0.0.3")
    for _ in range(4):
        assert (await login(client, "bob", "guess")).status_code == 401
    for _ in range(3):
        assert (await login(client, "ann")).status_code == 303
    assert (await login(client, "bob", "guess")).status_code == 401  # the address's fifth failure
    assert (await login(client, "ann")).status_code == 429


def test_a_user_name_with_a_trailing_newline_is_refused() -> None:
    """`^...$` with `match` lets a final newline through: `bob\\n` would be a second, different bob."""
    from bot.accounts import AccountError, check_name

    assert check_name("bob") == "bob"
    for bad in ("bob\n", "\nbob", "bob\r", ""):
        with pytest.raises(AccountError, match="not a usable user name"):
            check_name(bad)


def test_the_throttle_counts_an_attempt_when_it_lets_it_through() -> None:
    now = [1000.0]
    throttle = LoginThrottle(limit=2, window=60, clock=lambda: now[0])
    assert throttle.reserve("user:a", "address:x") == (0, 1000.0)
    now[0] += 1
    assert throttle.reserve("user:a", "address:x") == (0, 1001.0)
    assert throttle.reserve("user:b", "address:x") == (59, 0.0)  # the address is at its limit
    throttle.release(1001.0, "address:x")
    assert throttle.wait("address:x") == 0 and throttle.wait("user:a") == 59
    assert throttle.reserve("user:b", "address:x")[0] == 0


def test_the_throttle_forgets_failures_after_its_window() -> None:
    now = [1000.0]
    throttle = LoginThrottle(limit=2, window=60, clock=lambda: now[0])
    throttle.failed("user:a")
    throttle.failed("user:a")
    assert throttle.wait("user:a") == 60 and throttle.wait("user:b") == 0
    now[0] += 59.5
    assert throttle.wait("user:a") == 1
    now[0] += 1
    assert throttle.wait("user:a") == 0
    throttle.failed("user:a")
    throttle.succeeded("user:a")
    assert throttle.wait("user:a") == 0


async def test_logout_ends_the_session_for_good(web: Web) -> None:
    client, csrf = await web.signed_in("ann", "viewer")
    cookie = client.cookies["squall_session"]
    without_token = await client.post("/logout")
    assert without_token.status_code == 403  # logging someone out is a state change too
    out = await client.post("/logout", data={"csrf_token": csrf})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    client.cookies.set("squall_session", cookie)  # a copy of the cookie is worth nothing now
    assert (await client.get("/executions")).status_code == 303
    assert await web.squall.db(find_session, web.squall.store, cookie) is None


def _disk_full(*_args: Any, **_kwargs: Any) -> Any:
    """What the driver raises for a write to a full disk (as tests/test_db_outage_replies.py has it)."""
    raise sa.exc.OperationalError("DELETE FROM web_sessions ...", {},
                                  sqlite3.OperationalError("database or disk is full"))


async def test_a_logout_the_database_failed_still_ends_the_session(web: Web, monkeypatch: pytest.MonkeyPatch) -> None:
    """A logout whose delete the database refused said it failed and left the session alive: once the
    database came back, whoever sat down at that shared machine was still logged in."""
    client, csrf = await web.signed_in("ann", "viewer")
    cookie = client.cookies["squall_session"]
    thief = web.client()
    thief.cookies.set("squall_session", cookie)  # a copy of the cookie
    with monkeypatch.context() as outage:
        outage.setattr(web.squall.store, "web_session_delete", _disk_full)
        assert (await client.post("/logout")).status_code == 403  # the CSRF token is checked still
        out = await client.post("/logout", data={"csrf_token": csrf})
        assert (await thief.get("/executions")).status_code == 303  # refused during the outage...
    assert out.status_code == 200 and "squall_session" not in client.cookies, out.text
    assert "You are logged out on this browser" in out.text and "database or disk is full" in out.text
    assert "once the database works again" in out.text
    assert (await thief.get("/executions")).status_code == 303  # ... and once the database is back
    late = await thief.post("/logout", data={"csrf_token": csrf})
    assert late.status_code == 303 and late.headers["location"].startswith("/login")


async def test_the_server_forgets_a_session_ended_in_an_outage_once_the_database_is_back(
        web: Web, monkeypatch: pytest.MonkeyPatch) -> None:
    """The session's row is deleted by a later request (at most every `RETRY_SECONDS`), and the logout
    audited then; a retry the database fails costs that request nothing."""
    from bot.web.session import RETRY_SECONDS, EndedSessions

    now = [1000.0]
    web.app.state.web_ended_sessions = EndedSessions(clock=lambda: now[0])
    store = web.squall.store
    client, csrf = await web.signed_in("ann", "viewer")
    other, _ = await web.signed_in("bob", "viewer")
    session = await web.squall.db(find_session, store, client.cookies["squall_session"])
    assert session is not None
    with monkeypatch.context() as outage:
        outage.setattr(store, "web_session_delete", _disk_full)
        assert (await client.post("/logout", data={"csrf_token": csrf})).status_code == 200
        now[0] += RETRY_SECONDS
        assert (await other.get("/executions")).status_code == 200  # its retry failed, not bob's page
    assert await web.squall.db(store.web_session_get, session.token_hash) is not None
    assert (await other.get("/executions")).status_code == 200  # the next retry waits RETRY_SECONDS
    assert await web.squall.db(store.web_session_get, session.token_hash) is not None
    assert await web.squall.db(store.audit_list, 10, "web.logout") == []
    now[0] += RETRY_SECONDS
    assert (await other.get("/executions")).status_code == 200
    assert await web.squall.db(store.web_session_get, session.token_hash) is None
    [logout] = await web.squall.db(store.audit_list, 10, "web.logout")
    assert (logout["actor"], logout["detail"]) == ("ann", {"after_outage": True})


async def test_a_logout_the_database_cannot_read_is_taken_from_this_site_s_pages_only(
        web: Web, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the session cannot even be read (last use due to be recorded on a full disk, a database out of
    reach), its CSRF token cannot be checked: the logout is taken from a post that the browser says came
    from this site (Origin, else Referer), and refused (the outage's 503, the cookie kept) from any other."""
    client, csrf = await web.signed_in("ann", "viewer")
    cookie = client.cookies["squall_session"]
    thief = web.client()
    thief.cookies.set("squall_session", cookie)
    with monkeypatch.context() as outage:
        outage.setattr(web.squall.store, "web_session_get", _disk_full)
        for headers in ({}, {"Origin": "https://evil.example", "Referer": "http://squall/executions"},
                        {"Origin": "null"}, {"Referer": "http://squall.evil.example/executions"}):
            forged = await client.post("/logout", data={"csrf_token": csrf}, headers=headers)
            assert forged.status_code == 503 and client.cookies["squall_session"] == cookie, headers
        out = await client.post("/logout", data={"csrf_token": csrf}, headers={"Origin": "http://squall"})
    assert out.status_code == 200 and "squall_session" not in client.cookies, out.text
    assert "You are logged out on this browser" in out.text
    assert (await thief.get("/executions")).status_code == 303


async def test_a_new_password_or_deleting_the_user_ends_their_sessions(web: Web) -> None:
    from bot.accounts import delete_user, set_password

    client, _ = await web.signed_in("ann", "operator")
    other, _ = await web.signed_in("bob", "operator")
    assert await web.squall.db(set_password, web.squall.store, "ann", hash_password("another password"))
    assert (await client.get("/executions")).headers.get("location", "").startswith("/login")
    assert (await other.get("/executions")).status_code == 200  # only ann's sessions ended
    assert await web.squall.db(delete_user, web.squall.store, "bob")
    assert (await other.get("/executions")).status_code == 303


def test_sessions_end_when_idle_or_old(home: Path) -> None:
    from bot.accounts import SESSION_IDLE, SESSION_LIFETIME, TOUCH_EVERY

    store = Store.open(f"sqlite:///{home / 'data' / 'squall.db'}")
    try:
        assert create_user(store, "ann", "viewer", hash_password(PASSWORD))
        token, session = open_session(store, Account("ann", "viewer"))
        start = store.web_session_get(session.token_hash)["created_at"]
        assert find_session(store, token, start + TOUCH_EVERY / 2) == session  # too soon to write last_seen
        assert find_session(store, token, start + SESSION_IDLE) is None  # idle too long
        token, session = open_session(store, Account("ann", "viewer"))
        start = store.web_session_get(session.token_hash)["created_at"]
        # Used now and then, it lives on (last_seen is written at most every TOUCH_EVERY)...
        moment = start
        while moment + SESSION_IDLE / 2 < start + SESSION_LIFETIME:
            moment += SESSION_IDLE / 2
            assert find_session(store, token, moment) == session
        assert store.web_session_get(session.token_hash)["last_seen"] > start + SESSION_LIFETIME - SESSION_IDLE
        assert find_session(store, token, moment + TOUCH_EVERY) == session
        # ... until its lifetime is over, however busy.
        assert find_session(store, token, start + SESSION_LIFETIME) is None
        assert find_session(store, "not a cookie", start) is None
    finally:
        store.close()


# -- roles and CSRF ----------------------------------------------------------------------------------

async def _running(web: Web) -> str:
    record = await web.squall.executions.request("demo.slow", {}, {"user": "t", "source": "api"})
    for _ in range(200):
        if (await web.squall.executions.get(record["id"]))["status"] == "running":
            return record["id"]
        await asyncio.sleep(0.01)
    raise AssertionError("demo.slow never ran")


async def test_a_viewer_cannot_cancel_an_operator_can(web: Web) -> None:
    execution_id = await _running(web)
    viewer, viewer_csrf = await web.signed_in("vic", "viewer")
    operator, operator_csrf = await web.signed_in("otto", "operator")
    page = await viewer.get(f"/executions/{execution_id}")
    assert page.status_code == 200 and "/cancel" not in page.text  # no button it could not use
    refused = await viewer.post(f"/executions/{execution_id}/cancel", data={"csrf_token": viewer_csrf})
    assert refused.status_code == 403 and "operator role" in refused.text
    assert (await web.squall.executions.get(execution_id))["status"] == "running"
    assert "/cancel" in (await operator.get(f"/executions/{execution_id}")).text
    done = await operator.post(f"/executions/{execution_id}/cancel", data={"csrf_token": operator_csrf})
    assert done.status_code == 303 and done.headers["location"] == f"/executions/{execution_id}"
    final = await web.squall.executions.wait(execution_id, 30)
    assert final["status"] == "canceled"
    audit = await web.squall.db(web.squall.store.audit_list, 10, "web.execution.cancel")
    assert [(a["actor"], a["target"]) for a in audit] == [("otto", execution_id)]


async def test_a_post_without_the_sessions_csrf_token_is_refused(web: Web) -> None:
    execution_id = await _running(web)
    operator, csrf = await web.signed_in("otto", "operator")
    url = f"/executions/{execution_id}/cancel"
    assert (await operator.post(url)).status_code == 403
    assert (await operator.post(url, data={"csrf_token": "forged"})).status_code == 403
    assert (await operator.post(url, headers={"X-CSRF-Token": "forged"})).status_code == 403
    assert (await web.squall.executions.get(execution_id))["status"] == "running"
    # htmx sends the token as a header (from the body's hx-headers): accepted
    page = (await operator.get(f"/executions/{execution_id}")).text
    assert f'hx-headers=\'{{"X-CSRF-Token": "{csrf}"}}\'' in page
    assert (await operator.post(url, headers={"X-CSRF-Token": csrf})).status_code == 303
    assert (await web.squall.executions.wait(execution_id, 30))["status"] == "canceled"


async def test_an_unauthenticated_post_does_nothing(web: Web) -> None:
    execution_id = await _running(web)
    anon = web.client()
    answer = await anon.post(f"/executions/{execution_id}/cancel")  # no Referer, and no page of its own
    assert answer.status_code == 303 and answer.headers["location"] == "/login?expired=1"
    assert (await web.squall.executions.get(execution_id))["status"] == "running"
    await web.squall.executions.cancel(execution_id)


async def test_a_form_sent_after_the_session_ended_goes_back_to_its_page_after_login(web: Web) -> None:
    """A run form sent once its session has ended (expired, `squall user logout`, a new password): the
    login page says so, and logging in goes back to the page the form was on (the Referer, when it is
    a page of this site; else the post's own path, when that is a page), never to another site."""
    from bot.accounts import end_sessions

    client, csrf = await web.signed_in("ann", "operator")
    form = "http://squall/actions/demo.greet?from=list"
    assert (await client.get(form)).status_code == 200
    assert await web.squall.db(end_sessions, web.squall.store, "ann")
    sent = await client.post("/actions/demo.greet", data={"csrf_token": csrf, "name": "bob"},
                             headers={"Referer": form})
    assert sent.status_code == 303
    assert sent.headers["location"] == "/login?next=%2Factions%2Fdemo.greet%3Ffrom%3Dlist&expired=1"
    page = await client.get(sent.headers["location"])
    assert '<p class="notice" role="status" id="login-notice">Your session expired; log in again to continue. ' \
           "What that form sent was not done.</p>" in page.text
    assert 'name="next" value="/actions/demo.greet?from=list"' in page.text
    back = await login(client, "ann", next_url="/actions/demo.greet?from=list")
    assert back.status_code == 303 and back.headers["location"] == "/actions/demo.greet?from=list"
    assert await web.squall.executions.list(action="demo.greet") == []
    # Without a Referer (or with another site's), the post's path when it is a page, else no page at all.
    assert await web.squall.db(end_sessions, web.squall.store, "ann")
    for referer in (None, "https://evil.example/actions/core.local", "http://squall.evil.example/keys"):
        headers = {"Referer": referer} if referer else {}
        answer = await client.post("/actions/demo.greet", data={"csrf_token": csrf}, headers=headers)
        assert answer.headers["location"] == "/login?next=%2Factions%2Fdemo.greet&expired=1", referer
        no_page = await client.post("/keys/delete", data={"csrf_token": csrf}, headers=headers)
        assert no_page.headers["location"] == "/login?expired=1", referer
    # A Referer of this site that is not a page (the login page itself, a live stream) is not gone back to.
    for referer in ("http://squall/login?next=%2Fkeys", "http://squall/live/executions", "http://squall//evil.example/"):
        answer = await client.post("/keys/delete", data={"csrf_token": csrf}, headers={"Referer": referer})
        assert answer.headers["location"] == "/login?expired=1", referer
    assert "Your session expired" not in (await client.get("/login")).text
    assert "Your session expired" not in (await client.get("/login?next=%2Fkeys")).text


# -- headers and static files ----------------------------------------------------------------------

async def test_every_page_forbids_inline_script_and_framing(web: Web) -> None:
    client, _ = await web.signed_in("ann", "viewer")
    anon = web.client()
    answers = [await anon.get("/login"), await anon.get("/executions"), await client.get("/executions"),
               await client.get("/executions/" + "0" * 24), await client.post("/logout")]
    assert [a.status_code for a in answers] == [200, 303, 200, 404, 403]
    for answer in answers:
        policy = answer.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "script-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["x-content-type-options"] == "nosniff"
    for page in (answers[0].text, answers[2].text):
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", page) == []  # no inline script
        assert re.search(r"\son[a-z]+=", page) is None  # no inline event handlers
    api = await client.get("/healthz")
    assert "content-security-policy" not in api.headers  # the API's answers are left alone


async def test_vendored_scripts_and_styles_are_served(web: Web) -> None:
    anon = web.client()
    for path, kind in (("/static/htmx.min.js", "javascript"), ("/static/htmx-ext-sse.min.js", "javascript"),
                       ("/static/squall.css", "text/css")):
        answer = await anon.get(path)
        assert answer.status_code == 200 and kind in answer.headers["content-type"], path
    assert "prefers-color-scheme: dark" in (await anon.get("/static/squall.css")).text


async def test_api_keys_still_work_and_a_session_is_not_one(web: Web) -> None:
    client, _ = await web.signed_in("ann", "admin")
    assert (await client.get("/api/v1/actions")).status_code == 401  # the cookie is no API key
    keyed = await client.get("/api/v1/actions", headers={"St2-Api-Key": "test-key-123"})
    assert keyed.status_code == 200


# -- the first admin ----------------------------------------------------------------------------

async def test_the_first_admin_is_made_once_on_an_empty_database(web: Web) -> None:
    password = await bootstrap_admin(web.squall.db)
    assert password and len(password) >= 16
    assert await bootstrap_admin(web.squall.db) is None
    users = await web.squall.db(web.squall.store.web_user_list)
    assert [(u["name"], u["role"]) for u in users] == [("admin", "admin")]
    client = web.client()
    assert (await login(client, "admin", password)).status_code == 303
    assert "admin" in (await client.get("/executions")).text


async def test_no_first_admin_where_accounts_exist(web: Web) -> None:
    await web.user("ann", "viewer")
    assert await bootstrap_admin(web.squall.db) is None
    assert [u["name"] for u in await web.squall.db(web.squall.store.web_user_list)] == ["ann"]


@pytest.mark.slow
def test_squall_serve_as_a_service_puts_the_first_admins_password_in_a_private_file_not_the_log(home: Path) -> None:
    """Under systemd or docker stderr is the log stream: the password printed there went to the log
    pipeline. Without a terminal `squall serve` writes it to `data/initial-admin-password` (0600) and
    logs only where it is; a restart says nothing."""
    port = free_port()
    _home(home, """
        adapters:
          console: {enabled: false}
        logging: {format: json}
    """)
    text = (home / "config.yml").read_text().replace("max_body_bytes: 4096", f"max_body_bytes: 4096\n  port: {port}")
    (home / "config.yml").write_text(text)
    base = f"http://127.0.0.1:{port}"
    outputs = []
    for _ in range(2):
        server = subprocess.Popen([str(SQUALL), "-c", str(home / "config.yml"), "serve"], cwd=home,
                                  env=dict(os.environ), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        try:
            wait_until_answering(base, server, 30)
            if not outputs:
                form = httpx.get(f"{base}/login", timeout=5)
                assert form.status_code == 200
        finally:
            server.terminate()
            outputs.append(server.communicate(timeout=30)[0])
    first, second = outputs
    secret = home / "data" / "initial-admin-password"
    password = secret.read_text().strip()
    assert oct(secret.stat().st_mode & 0o777) == "0o600" and len(password) >= 16
    assert password not in first + second
    lines = [json.loads(line) for line in first.splitlines() if line.strip()]  # every line JSON: none printed raw
    said = next(line["message"] for line in lines if "initial-admin-password" in line["message"])
    assert f"log in at {base}/ as admin with the password in {secret}" in said
    assert "delete" in said and "squall user passwd admin" in said
    assert "initial-admin-password" not in second and "web UI and HTTP API on" in second
    store = Store.open(f"sqlite:///{home / 'data' / 'squall.db'}")
    try:
        assert [u["name"] for u in store.web_user_list()] == ["admin"]
        assert password_matches(store.web_user_get("admin"), password)
    finally:
        store.close()


async def test_without_a_terminal_the_first_admins_password_goes_to_a_private_file(
        web: Web, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """stderr a pipe (systemd, docker): nothing on it, the log names the file, the file (0600) holds the
    password; a file left from an earlier database is replaced, not appended to."""
    from bot.service import _first_admin

    secret = web.squall.config.data_dir / "initial-admin-password"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text("an old password\n")
    pipe = io.StringIO()
    monkeypatch.setattr("sys.stderr", pipe)
    with caplog.at_level("INFO", logger="squall"):
        await _first_admin(web.squall, "http://127.0.0.1:9101/")
    password = secret.read_text().strip()
    assert oct(secret.stat().st_mode & 0o777) == "0o600" and "old" not in password
    assert password_matches(await web.squall.db(web.squall.store.web_user_get, "admin"), password)
    assert pipe.getvalue() == "" and password not in caplog.text
    assert f"as admin with the password in {secret}" in caplog.text


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_at_a_terminal_the_first_admins_password_is_printed_once_and_no_file_written(
        web: Web, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make run`: a person reads the terminal, so the password is shown there, once."""
    from bot.service import _first_admin

    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    await _first_admin(web.squall, "http://127.0.0.1:9101/")
    await _first_admin(web.squall, "http://127.0.0.1:9101/")
    shown = re.findall(r"log in at http://127.0.0.1:9101/ as admin with password (\S+)\s", terminal.getvalue())
    assert len(shown) == 1
    assert password_matches(await web.squall.db(web.squall.store.web_user_get, "admin"), shown[0])
    assert not (web.squall.config.data_dir / "initial-admin-password").exists()


# -- squall user ... ------------------------------------------------------------------------------

def _user(cli: Callable[..., Result], *args: str, stdin: str | None = None) -> Result:
    return cli("user", *args, stdin=stdin)


def test_user_cli_create_list_passwd_delete(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cli = in_process(home, monkeypatch)
    created = _user(cli, "create", "ann", "--role", "operator")
    assert created.exit_code == 0, created.stderr
    generated = re.search(r"password: (\S+)", created.stdout)
    assert generated and "cannot be shown again" in created.stdout
    from_stdin = _user(cli, "create", "bob", "--role", "admin", "--password-stdin", "--json",
                       stdin="bob's long password\n")
    assert from_stdin.exit_code == 0 and json.loads(from_stdin.stdout) == {"name": "bob", "role": "admin"}
    listed = _user(cli, "list", "--json")
    users = json.loads(listed.stdout)
    assert [(u["name"], u["role"]) for u in users] == [("ann", "operator"), ("bob", "admin")]
    assert "hash" not in listed.stdout and generated.group(1) not in listed.stdout

    store = Store.open(f"sqlite:///{home / 'data' / 'squall.db'}")
    try:
        from bot.accounts import password_matches

        assert password_matches(store.web_user_get("ann"), generated.group(1))
        assert password_matches(store.web_user_get("bob"), "bob's long password")
        assert store.web_user_get("ann")["password_hash"].startswith("$argon2")
        token, _ = open_session(store, Account("ann", "operator"))
        changed = _user(cli, "passwd", "ann", "--json")
        assert changed.exit_code == 0
        new_password = json.loads(changed.stdout)["password"]
        assert new_password != generated.group(1) and password_matches(store.web_user_get("ann"), new_password)
        assert find_session(store, token) is None  # the old password's session ended with it
        token, _ = open_session(store, Account("bob", "admin"))
        second, _ = open_session(store, Account("bob", "admin"))
        assert [u["sessions"] for u in json.loads(_user(cli, "list", "--json").stdout)] == [0, 2]
        logout = _user(cli, "logout", "bob")
        assert logout.exit_code == 0 and "ended 2 sessions of bob" in logout.stdout
        assert find_session(store, token) is None and find_session(store, second) is None
        assert password_matches(store.web_user_get("bob"), "bob's long password")  # kept
        assert [e["target"] for e in store.audit_list(10, "cli.user.logout")] == ["bob"]
        assert _user(cli, "logout", "nobody").exit_code == 2
        token, _ = open_session(store, Account("bob", "admin"))
        assert _user(cli, "delete", "bob").exit_code == 0
        assert find_session(store, token) is None and store.web_user_get("bob") is None
    finally:
        store.close()


def test_user_cli_refusals_exit_2_and_change_nothing(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cli = in_process(home, monkeypatch)
    assert _user(cli, "create", "ann").exit_code == 0
    for args, stdin, said in [
        (("create", "bob", "--role", "root"), None, "unknown role 'root'"),
        (("create", "bad name"), None, "not a usable user name"),
        (("create", "carl", "--password-stdin"), "short\n", "at least 8 characters"),
        (("create", "ann"), None, "a user named ann exists"),
        (("passwd", "nobody"), None, "no user named nobody"),
        (("delete", "nobody"), None, "no user named nobody"),
    ]:
        refused = _user(cli, *args, stdin=stdin)
        assert refused.exit_code == 2 and said in refused.stderr, (args, refused.stderr)
    assert [u["name"] for u in json.loads(_user(cli, "list", "--json").stdout)] == ["ann"]


def test_every_file_the_ui_serves_is_in_the_installed_package() -> None:
    """The wheel carries the templates and static files by pyproject's package-data globs: a file no
    glob names (the favicon once) works from a checkout and is a 404 once installed."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parent.parent
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["bot"]
    served = [path.relative_to(root / "bot").as_posix() for folder in ("web/templates", "web/static")
              for path in (root / "bot" / folder).iterdir() if path.is_file()]
    assert "web/static/favicon.svg" in served
    assert [name for name in served if not any(fnmatch.fnmatch(name, glob) for glob in globs)] == []


# -- forms refused before a page reads them: the UI's page, never the API's JSON or a bare 500 ---------------

async def test_a_list_cancel_with_too_many_fields_and_a_header_token_gets_the_ui_s_400(web: Web) -> None:
    """With the token in `X-CSRF-Token` nothing read the form before the bulk cancel parsed it itself, and
    past the field limit that parse raised: a bare 500 and a traceback in the log."""
    client, csrf = await web.signed_in("otto", "operator")
    answer = await client.post("/executions/cancel", content="&".join(["execution=x"] * 201),
                               headers={"content-type": "application/x-www-form-urlencoded", "X-CSRF-Token": csrf})
    assert answer.status_code == 400 and answer.headers["content-type"].startswith("text/html")
    assert "fields" in answer.text and "Content-Security-Policy" in answer.headers


async def test_a_form_over_the_body_limit_gets_the_ui_s_error_page(web: Web) -> None:
    """A browser's form over `api.max_body_bytes` was answered with the API's JSON fault: raw JSON on screen,
    no way back. The API itself keeps its JSON fault."""
    client, csrf = await web.signed_in("otto", "operator")
    big = {"csrf_token": csrf, "cmd": "x" * 5000}
    page = await client.post("/actions/demo.greet", data=big)
    assert page.status_code == 413 and page.headers["content-type"].startswith("text/html")
    assert "api.max_body_bytes" in page.text and "Content-Security-Policy" in page.headers
    api = await client.post("/api/v1/executions", json={"action": "core.noop", "parameters": {"x": "y" * 5000}})
    assert api.status_code == 413 and api.json()["faultstring"].startswith("Request body is")
