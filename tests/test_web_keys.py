"""The web UI's `/keys` writes and their audit events: a key's set or deletion and its `web.key.*` event are
one transaction, as the API's `PUT` and `DELETE /api/v1/keys/{name}` are.

The app is test_web_auth's (test_api's config and demo pack)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.test_api import disk_full, failing_audit
from tests.test_web_auth import Web, started_web

SECRET = "web-keys-swordfish"


@pytest.fixture
async def web(home: Path) -> AsyncIterator[Web]:
    async with started_web(home) as started:
        yield started


async def test_a_key_change_whose_audit_event_fails_changes_nothing(web: Web, monkeypatch: pytest.MonkeyPatch) -> None:
    """The set and delete forms stored the key in one commit and the `web.key.*` event in the next: under a
    full disk the page said the database failed for a key that was written (or deleted), and the audit log
    never showed who did it. Both are one transaction now: the failed set leaves no key, the failed delete
    leaves it, and the changes that work are audited with the scope, the user and whether it is a secret."""
    admin, csrf = await web.signed_in("ada", "admin")
    datastore = web.squall.datastore
    form = {"name": "pw", "value": SECRET, "secret": "on", "scope": "system", "csrf_token": csrf}
    failing_audit(web.squall, monkeypatch, "web.key.set", disk_full())
    failed = await admin.post("/keys", data=form)
    assert failed.status_code == 503 and "database or disk is full" in failed.text, failed.text
    assert await web.squall.db(datastore.get, "pw") is None
    monkeypatch.undo()
    assert (await admin.post("/keys", data=form)).status_code == 303
    mine = {"name": "pref", "value": "dark", "scope": "user", "user": "ann", "csrf_token": csrf}
    assert (await admin.post("/keys", data=mine)).status_code == 303
    failing_audit(web.squall, monkeypatch, "web.key.delete", disk_full())
    delete = {"name": "pw", "scope": "system", "csrf_token": csrf}
    refused = await admin.post("/keys/delete", data=delete)
    assert refused.status_code == 503 and "database or disk is full" in refused.text, refused.text
    assert (await web.squall.db(datastore.get, "pw", decrypt=True))["value"] == SECRET
    monkeypatch.undo()
    assert (await admin.post("/keys/delete", data=delete)).status_code == 303
    assert await web.squall.db(datastore.get, "pw") is None
    rows = await web.squall.db(web.squall.store.audit_list, 20)
    changes = [(row["event"], row["actor"], row["target"], row["detail"]) for row in reversed(rows)
               if row["event"].startswith("web.key.")]
    assert changes == [
        ("web.key.set", "ada", "pw", {"scope": "system", "user": None, "secret": True}),
        ("web.key.set", "ada", "pref", {"scope": "user", "user": "ann", "secret": False}),
        ("web.key.delete", "ada", "pw", {"scope": "system", "user": None}),
    ]
    assert SECRET not in str(rows)


async def test_the_user_scope_shows_a_person_their_own_keys_as_the_api_does(web: Web) -> None:
    """`/keys?scope=user` listed every user's user-scoped keys and values to any viewer, while the API refuses
    the same person another user's (`this credential speaks for vic; it may not act as ann`). The page
    follows the API's rule: a viewer or an operator sees their own keys only; an admin, who may set and
    delete anyone's here, sees every user's."""
    datastore = web.squall.datastore
    for user, value in (("ann", "ann-private-value"), ("vic", "vic-own-value"), ("opal", "opal-own-value")):
        await web.squall.db(datastore.set, "note", value, scope="user", user=user)
    await web.squall.db(datastore.set, "shared", "for-everyone", scope="system")
    for name, role in (("vic", "viewer"), ("opal", "operator")):
        client, _csrf = await web.signed_in(name, role)
        page = await client.get("/keys?scope=user")
        assert page.status_code == 200, page.text
        assert f"{name}-own-value" in page.text and f"<td>{name}</td>" in page.text, page.text
        others = [user for user in ("ann", "vic", "opal") if user != name]
        assert not any(f"{user}-private-value" in page.text or f"{user}-own-value" in page.text
                       or f"<td>{user}</td>" in page.text for user in others), page.text
        assert "for-everyone" in (await client.get("/keys?scope=system")).text
    admin, _csrf = await web.signed_in("ada", "admin")
    everyone = (await admin.get("/keys?scope=user")).text
    assert all(value in everyone for value in ("ann-private-value", "vic-own-value", "opal-own-value")), everyone


async def test_the_keys_table_scrolls_in_its_own_box(web: Web) -> None:
    """The keys table was the one list not in a `table-scroll` box: on a phone (390 px wide) the whole page
    scrolled sideways, 567 px wide. It is in one now, as every other list is, whichever scope."""
    await web.squall.db(web.squall.datastore.set, "deploy_token_for_the_production_cluster", "x" * 60)
    await web.squall.db(web.squall.datastore.set, "pref", "dark", scope="user", user="ada")
    admin, _csrf = await web.signed_in("ada", "admin")
    for scope in ("system", "user"):
        page = (await admin.get(f"/keys?scope={scope}")).text
        assert page.count('<table class="list">') == 1, page
        assert re.search(r'<div class="table-scroll">\s*<table class="list">.*?</table>\s*</div>', page, re.S), page
