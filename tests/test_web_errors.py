"""The web UI's answers to a browser's mistakes: an address no page has, `/logout` visited, an address that
takes a form's post, and where each error page links back to, while API clients keep the API's JSON.

The app is test_web_auth's (test_api's config and demo pack)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.test_api import disk_full
from tests.test_web_auth import Web, csrf_of, started_web

#: What Chromium sends when it navigates to an address.
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,"
                     "*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"}
EXECUTION = "0661f5c8c0c6c3487669ac37"


@pytest.fixture
async def web(home: Path) -> AsyncIterator[Web]:
    async with started_web(home) as started:
        yield started


def _back(page: str) -> tuple[str, str]:
    """The error page's link back: (where, what it says)."""
    found = re.search(r'<p><a href="([^"]+)">(Back to [^<]+)</a></p>', page)
    assert found, page
    return found.group(1), found.group(2)


async def test_a_browser_s_mistyped_address_is_the_ui_s_404_page_naming_the_page_meant(web: Web) -> None:
    """`/execution/<id>` (a typo) and `/Executions` answered a signed-in browser the API's
    `{"faultstring": "Not Found"}`: it now gets the UI's 404 page, with the menu, the page it likely meant
    and a link back."""
    client, _csrf = await web.signed_in("ann", "operator")
    for path, meant in ((f"/execution/{EXECUTION}", f"/executions/{EXECUTION}"), ("/Executions", "/executions"),
                        ("/nothing/here", None)):
        page = await client.get(path, headers=BROWSER)
        assert page.status_code == 404, (path, page.text)
        assert page.headers["content-type"].startswith("text/html"), path
        assert "<h1>Not found</h1>" in page.text and f"Squall has no page at {path}." in page.text, page.text
        assert 'action="/logout"' in page.text and '<a href="/keys">Keys</a>' in page.text  # the menu
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        suggested = re.search(r'Did you mean <a href="([^"]+)">', page.text)
        assert (suggested and suggested.group(1)) == meant, (path, page.text)
        assert _back(page.text) == ("/executions", "Back to the executions")
    anonymous = web.client()
    page = await anonymous.get("/Executions", headers=BROWSER)
    assert page.status_code == 404 and "<h1>Not found</h1>" in page.text and 'action="/logout"' not in page.text


async def test_api_clients_keep_the_api_s_json_errors(web: Web) -> None:
    """Only a browser's request outside the API's, auth's and stream's folders gets a page: st2client and
    curl (JSON or `*/*`) get the router's `faultstring` as before, and so does a browser under /api, /auth
    and /stream."""
    client, _csrf = await web.signed_in("ann", "operator")
    for headers in ({}, {"Accept": "*/*"}, {"Accept": "text/html;q=0, */*"}):
        for path in (f"/execution/{EXECUTION}", "/Executions", "/nothing"):
            answer = await client.get(path, headers=headers)
            assert answer.status_code == 404 and answer.content == b'{"faultstring":"Not Found"}', (path, headers)
        refused = await client.get("/keys/delete", headers=headers)
        assert refused.status_code == 405 and refused.json() == {"faultstring": "Method Not Allowed"}
    for path in ("/Executions", "/keys/delete"):  # a JSON client's: the 404 naming the API's URL (`st2_urls`)
        answer = await client.get(path, headers={"Accept": "application/json"})
        assert answer.status_code == 404 and "ST2_API_URL" in answer.json()["faultstring"], path
    for path in ("/api/v1/nothing", "/api/nothing", "/auth/v1/nothing", "/stream/v1/nothing"):
        answer = await client.get(path, headers=BROWSER)
        assert answer.status_code == 404 and answer.json() == {"faultstring": "Not Found"}, path


async def test_logout_visited_is_a_page_with_the_logout_button(web: Web) -> None:
    """`GET /logout` (typed, bookmarked) answered the API's 405 JSON. It is a page whose button posts the
    logout with the session's CSRF token; without a session, the login page."""
    client, _csrf = await web.signed_in("ann", "operator")
    page = await client.get("/logout", headers=BROWSER)
    assert page.status_code == 200, page.text
    form = re.search(r'<main.*?<form method="post" action="/logout">(.*?)</form>', page.text, re.S)
    assert form and "Log out ann</button>" in form.group(1), page.text
    assert (await client.get("/executions")).status_code == 200  # the visit logged nobody out
    logged_out = await client.post("/logout", data={"csrf_token": csrf_of(form.group(1))})
    assert logged_out.status_code == 303 and logged_out.headers["location"] == "/login"
    assert (await client.get("/executions")).headers["location"].startswith("/login")
    again = await client.get("/logout", headers=BROWSER)
    assert again.status_code == 303 and again.headers["location"] == "/login"


async def test_a_form_s_address_visited_is_the_ui_s_405_page(web: Web) -> None:
    """`/keys/delete` takes the delete button's post; a browser's visit answered `{"faultstring": "Method Not
    Allowed"}`. It gets the UI's page saying so, with `Allow`, and a link back to the keys."""
    client, _csrf = await web.signed_in("ada", "admin")
    page = await client.get("/keys/delete", headers=BROWSER)
    assert page.status_code == 405 and page.headers["allow"] == "POST", page.text
    assert "/keys/delete is where a form of Squall&#39;s page sends what it does" in page.text, page.text
    assert _back(page.text) == ("/keys", "Back to the keys")
    posted = await client.post("/audit", headers=BROWSER)  # a page, posted to
    assert posted.status_code == 405 and "/audit takes no POST, only GET" in posted.text, posted.text
    assert _back(posted.text) == ("/audit", "Back to the audit log")


async def test_an_error_page_links_back_to_its_section(web: Web) -> None:
    """Every error page linked "Back to the executions", whatever failed: a missing pack's page goes back
    to the packs, an inquiry's to the inquiries, and an address of no section to the section the person
    came from."""
    client, _csrf = await web.signed_in("vic", "viewer")
    missing = await client.get("/packs/nope")
    assert missing.status_code == 404 and _back(missing.text) == ("/packs", "Back to the packs")
    inquiry = await client.get(f"/inquiries/{EXECUTION}")
    assert inquiry.status_code == 404 and _back(inquiry.text) == ("/inquiries", "Back to the inquiries")
    scope = await client.get("/keys?scope=galaxy")
    assert scope.status_code == 400 and _back(scope.text) == ("/keys", "Back to the keys")
    came_from = await client.get("/nowhere", headers={**BROWSER, "Referer": "http://squall/rules/demo.x"})
    assert came_from.status_code == 404 and _back(came_from.text) == ("/rules", "Back to the rules")
    elsewhere = await client.get("/nowhere", headers={**BROWSER, "Referer": "http://evil.example/rules"})
    assert _back(elsewhere.text) == ("/executions", "Back to the executions")


async def test_a_browser_s_404_page_answers_while_the_session_cannot_be_read(web: Web,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The menu of the 404 page needs the session; a database that fails under that look leaves the menu
    out, not the page."""
    client, _csrf = await web.signed_in("ann", "operator")

    async def failing(*_args: object, **_kwargs: object) -> object:
        raise disk_full()

    monkeypatch.setattr(web.squall.db, "read", failing)
    page = await client.get("/Executions", headers=BROWSER)
    assert page.status_code == 404 and "<h1>Not found</h1>" in page.text and 'action="/logout"' not in page.text
