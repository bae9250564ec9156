"""The web UI's pages beside executions: aliases (and trying a message), rules (enable/disable),
triggers and webhooks, packs (config masked, reload, install with progress), datastore keys, the
audit log and the status page. Roles, CSRF and escaping are checked on every one of them.

The app is test_web_auth's (test_api's config and demo pack) plus a pack of this file's, `webx`,
whose config holds a secret, whose aliases tie, and whose texts carry `<script>`."""

from __future__ import annotations

import asyncio
import contextlib
import html
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from adapters.loopback import LoopbackAdapter
from bot.app import Squall
from bot.http import create_api
from bot.web.packs import masked_config, shown_source
from engine.audit import AuditFilter, audit_kinds, audit_page
from engine.config import load_config
from engine.content_files import ContentFileError, set_enabled
from engine.jobs import queue_status
from engine.parameters import MASK
from engine.storage import Store
from tests.conftest import write
from tests.test_api import HOOK_SECRET, _home
from tests.test_web_auth import Web, csrf_of, login, started_web

PACK_SECRET = "pack-config-hunter2"
KEY_SECRET = "datastore-swordfish"
SCRIPT = "<script>alert(1)</script>"
PAGES = ("/aliases", "/rules", "/rules/demo.on_build", "/triggers", "/packs", "/packs/webx", "/packs/demo", "/keys",
         "/keys?scope=user", "/audit", "/status")


async def _changes(web: Any, limit: int = 10) -> list[dict[str, Any]]:
    """The audit log's newest entries but the logins (every signed-in client's login is audited)."""
    rows = await web.squall.db(web.squall.store.audit_list, limit + 20)
    return [row for row in rows if row["event"] != "web.login"][:limit]


def _webx(home: Path) -> None:
    """A pack with a secret in its config, two aliases that tie, and `<script>` in its texts."""
    pack = home / "packs" / "webx"
    write(pack / "pack.yaml", f"ref: webx\nname: webx\nversion: 2.1.0\ndescription: '{SCRIPT}'\n")
    write(pack / "config.schema.yaml", """
        api_token: {type: string, secret: true, required: true}
        region: {type: string, default: eu}
        nested:
          type: object
          properties:
            password: {type: string, secret: true}
            user: {type: string}
    """)
    write(home / "configs" / "webx.yaml", f"""
        api_token: {PACK_SECRET}
        nested: {{password: {PACK_SECRET}-nested, user: bob}}
    """)
    write(pack / "actions" / "noop.yaml", "name: noop\nrunner_type: noop\n")
    for name in ("one", "two"):
        write(pack / "aliases" / f"{name}.yaml", f"""
            name: {name}
            action_ref: webx.noop
            description: "{SCRIPT}"
            formats: ["deploy {{{{app}}}} now"]
        """)
    write(pack / "aliases" / "scale.yaml", """
        name: scale
        action_ref: webx.noop
        formats: ["scale {{a}} {{b}} to {{n:d}}"]
    """)


@pytest.fixture
async def web(home: Path) -> AsyncIterator[Web]:
    _webx(home)
    async with started_web(home) as started:
        yield started


async def signed_in(web: Web, name: str, role: str) -> tuple[httpx.AsyncClient, str]:
    """A client logged in as a new account of `role`, and its CSRF token (read from a page of this file's)."""
    await web.user(name, role)
    client = web.client()
    assert (await login(client, name)).status_code == 303
    return client, csrf_of((await client.get("/status")).text)


# -- every page, every role ------------------------------------------------------------------------

async def test_every_page_renders_for_a_viewer_with_the_security_headers(web: Web) -> None:
    viewer, _ = await signed_in(web, "vic", "viewer")
    for path in PAGES:
        page = await viewer.get(path)
        assert page.status_code == 200, (path, page.text)
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"], path
        assert f'href="/{path.split("/")[1].split("?")[0]}" aria-current="page"' in page.text, path
    # a viewer sees no button it could not use
    for path in ("/rules/demo.on_build", "/packs", "/keys"):
        posts = re.findall(r'<form[^>]*method="post"[^>]*action="([^"]+)"', (await viewer.get(path)).text)
        assert posts == ["/logout"], path


@pytest.mark.slow  # two accounts, six forms each: about 2 s
async def test_admin_actions_are_refused_for_viewers_and_operators(web: Web) -> None:
    instance = await web.squall.triggers.dispatch("demo.event", {"n": 1})
    admin_only = [("/rules/demo.on_build/enabled", {"enabled": "false"}),
                  (f"/triggers/{instance['id']}/re-emit", {}), ("/packs/reload", {}),
                  ("/packs/install", {"source": str(web.squall.config.pack_paths[0] / "webx")}),
                  ("/keys", {"name": "k", "value": "v", "scope": "system"}),
                  ("/keys/delete", {"name": "k", "scope": "system"})]
    await web.squall.db(web.squall.datastore.set, "k", "kept")
    for role in ("viewer", "operator"):
        client, token = await signed_in(web, f"{role}1", role)
        for url, fields in admin_only:
            answer = await client.post(url, data={**fields, "csrf_token": token})
            assert answer.status_code == 403 and "needs the admin role" in answer.text, (role, url)
    assert web.squall.rules.rules["demo.on_build"].enabled
    assert (await web.squall.db(web.squall.datastore.get, "k"))["value"] == "kept"
    assert len(await web.squall.triggers.list(trigger="demo.event")) == 1
    changes = await _changes(web, 20)  # nothing changed; each refusal is audited as one
    assert sorted((row["event"], row["actor"], row["target"]) for row in changes) == sorted(
        ("web.denied", f"{role}1", url) for role in ("viewer", "operator") for url, _ in admin_only)


async def test_forged_posts_without_the_csrf_token_are_refused(web: Web) -> None:
    admin, _ = await signed_in(web, "ada", "admin")
    instance = await web.squall.triggers.dispatch("demo.event", {"n": 1})
    await web.squall.db(web.squall.datastore.set, "k", "kept")
    forged = [("/aliases/try", {"message": "greet bob"}), ("/rules/demo.on_build/enabled", {"enabled": "false"}),
              (f"/triggers/{instance['id']}/re-emit", {}), ("/packs/reload", {}),
              ("/packs/install", {"source": "/tmp"}), ("/keys", {"name": "k", "value": "forged"}),
              ("/keys/delete", {"name": "k"})]
    for url, fields in forged:
        for extra in ({}, {"csrf_token": "forged"}):
            answer = await admin.post(url, data={**fields, **extra})
            assert answer.status_code == 403 and "CSRF token" in answer.text, url
    assert web.squall.rules.rules["demo.on_build"].enabled
    assert (await web.squall.db(web.squall.datastore.get, "k"))["value"] == "kept"
    assert len(await web.squall.triggers.list(trigger="demo.event")) == 1


# -- aliases ----------------------------------------------------------------------------------------

async def test_aliases_list_formats_help_and_who_may_run_them(web: Web) -> None:
    viewer, _ = await signed_in(web, "vic", "viewer")
    page = (await viewer.get("/aliases")).text
    assert "demo.greet" in page and "<code>greet {{who}}</code>" in page and "Greet someone." in page
    locked = page.split("demo.locked")[1].split("</tr>")[0]
    assert "only <span class=\"who\">users: alice</span>" in locked and "config auth.aliases" in locked
    greet = page.partition("<td>demo.greet")[2].split("</tr>")[0]
    assert "everyone" in greet


async def test_try_a_message_shows_the_match_and_its_parameters(web: Web) -> None:
    viewer, token = await signed_in(web, "vic", "viewer")
    fragment = await viewer.post("/aliases/try", data={"message": "greet <b>bob</b>", "csrf_token": token},
                                 headers={"HX-Request": "true"})
    assert fragment.status_code == 200 and "<html" not in fragment.text  # a fragment for htmx
    assert "<strong>demo.greet</strong> matches" in fragment.text and "<code>greet {{who}}</code>" in fragment.text
    assert "<td>who</td><td><code>&lt;b&gt;bob&lt;/b&gt;</code></td>" in fragment.text
    # a plain form post gets the whole page, the message kept in the box
    page = await viewer.post("/aliases/try", data={"message": "greet bob", "csrf_token": token})
    assert page.status_code == 200 and "<html" in page.text and 'value="greet bob"' in page.text
    assert "<td>who</td><td><code>bob</code></td>" in page.text
    # nothing ran and nothing was audited
    assert await web.squall.executions.list(limit=5) == []
    assert await _changes(web) == []


async def test_try_a_message_explains_no_match_and_ambiguity(web: Web) -> None:
    viewer, token = await signed_in(web, "vic", "viewer")

    async def tried(message: str) -> str:
        return (await viewer.post("/aliases/try", data={"message": message, "csrf_token": token},
                                  headers={"HX-Request": "true"})).text

    none = await tried("gret bob")
    assert "No alias matches “gret bob”" in none and "Did you mean" in none and "<code>greet {{who}}</code>" in none
    far = await tried("zzzz qqqq")
    assert "No alias matches" in far and "No format is close to it" in far
    several = await tried("deploy api now")
    assert "matches several aliases equally well" in several
    assert "<strong>webx.one</strong>" in several and "<strong>webx.two</strong>" in several
    assert "{&#34;app&#34;: &#34;api&#34;}" in several or '{"app": "api"}' in several
    assert "Type a message" in await tried("   ")
    # a message that runs past the matching budget says so, not "no alias matches"
    repetitive = await tried("scale " + "to " * 1300 + "5 5")
    assert "too long or too repetitive" in repetitive and "No alias matches" not in repetitive


# -- rules, triggers, webhooks ----------------------------------------------------------------------

async def _hook(web: Web, url: str) -> int:
    """Enforcements after one call of webhook `url` through the rules engine."""
    with contextlib.suppress(LookupError):  # no live rule on the hook: nothing to store
        await web.squall.rules.dispatch_webhook(url, {"body": {"who": "x"}, "headers": {}})
    await web.squall.rules.settle()
    return len(await web.squall.rules.enforcements(rule="demo.on_build"))


async def test_disabling_a_rule_stops_it_firing_and_enabling_brings_it_back(web: Web) -> None:
    admin, token = await signed_in(web, "ada", "admin")
    assert await _hook(web, "ci/build") == 1
    page = (await admin.get("/rules/demo.on_build")).text
    assert "Disable this rule" in page and "ci/build" in page
    done = await admin.post("/rules/demo.on_build/enabled", data={"enabled": "false", "csrf_token": token})
    assert done.status_code == 303 and done.headers["location"] == "/rules/demo.on_build"
    assert not web.squall.rules.rules["demo.on_build"].enabled
    assert await _hook(web, "ci/build") == 1  # not fired again
    rule_file = Path(web.squall.rules.rules["demo.on_build"].file)
    assert "enabled: false" in rule_file.read_text()  # kept for restarts and the other processes
    rules = (await admin.get("/rules")).text
    assert re.search(r"demo\.on_build</a></td>\s*<td>disabled</td>", rules)
    history = (await admin.get("/rules/demo.on_build")).text
    assert "Enable this rule" in history and "succeeded" in history  # the earlier enforcement is listed
    again = await admin.post("/rules/demo.on_build/enabled", data={"enabled": "true", "csrf_token": token})
    assert again.status_code == 303 and web.squall.rules.rules["demo.on_build"].enabled
    assert await _hook(web, "ci/build") == 2
    audit = await _changes(web)
    assert [(a["event"], a["actor"], a["target"]) for a in audit] == [
        ("web.rule.enable", "ada", "demo.on_build"), ("web.rule.disable", "ada", "demo.on_build")]
    bad = await admin.post("/rules/demo.on_build/enabled", data={"enabled": "maybe", "csrf_token": token})
    assert bad.status_code == 400 and "must be true or false" in bad.text
    unknown = await admin.post("/rules/demo.nope/enabled", data={"enabled": "true", "csrf_token": token})
    assert unknown.status_code == 404 and "not loaded" in unknown.text


def test_a_rule_file_is_rewritten_only_where_it_is_plain(tmp_path: Path) -> None:
    rule = tmp_path / "r.yaml"
    rule.write_text("name: r\nenabled: true  # on\ncriteria:\n  trigger.enabled: {type: eq, pattern: 1}\n")
    assert set_enabled(rule, False, False)
    assert rule.read_text() == "name: r\nenabled: false  # on\ncriteria:\n  trigger.enabled: {type: eq, pattern: 1}\n"
    assert not set_enabled(rule, False, False)  # already so: untouched
    rule.write_text("name: r\n")
    assert set_enabled(rule, True, False) and rule.read_text() == "name: r\nenabled: true\n"
    rule.write_text("{name: r, enabled: true}\n")
    with pytest.raises(ContentFileError, match="by hand"):
        set_enabled(rule, False, False)
    assert rule.read_text() == "{name: r, enabled: true}\n"


async def test_trigger_instances_show_payloads_escaped_and_re_emit(web: Web) -> None:
    admin, token = await signed_in(web, "ada", "admin")
    viewer, _ = await signed_in(web, "vic", "viewer")
    instance = await web.squall.triggers.dispatch("demo.event", {"n": 7, "note": SCRIPT}, validate=False)
    page = (await viewer.get("/triggers")).text
    assert instance["id"] in page and SCRIPT not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "/re-emit" not in page  # viewers get no button
    assert f"/triggers/{instance['id']}/re-emit" in (await admin.get("/triggers")).text
    done = await admin.post(f"/triggers/{instance['id']}/re-emit", data={"csrf_token": token})
    assert done.status_code == 303
    instances = await web.squall.triggers.list(trigger="demo.event")
    assert len(instances) == 2
    assert instances[0]["payload"] == {**instance["payload"], "__context": {"original_id": instance["id"]}}
    assert done.headers["location"] == f"/triggers#instance-{instances[0]['id']}"
    filtered = (await viewer.get("/triggers", params={"trigger": "core.st2.webhook"})).text
    assert instance["id"] not in filtered
    missing = await admin.post("/triggers/nope/re-emit", data={"csrf_token": token})
    assert missing.status_code == 404


async def test_webhooks_show_their_url_and_a_curl_without_the_secret(web: Web) -> None:
    viewer, _ = await signed_in(web, "vic", "viewer")
    page = (await viewer.get("/triggers")).text
    assert HOOK_SECRET not in page
    assert "http://squall/api/v1/webhooks/ci/build" in page and "http://squall/api/v1/webhooks/signed" in page
    signed = page.split('id="hook-signed"')[1].split("</pre>")[0]
    assert "X-Squall-Signature: v1=$sig" in signed and "-hmac &#34;$SECRET&#34;" in signed
    plain = page.split('id="hook-ci/build"')[1].split("</pre>")[0]
    assert "St2-Api-Key: $ST2_API_KEY" in plain and "X-Squall-Signature" not in plain


# -- packs -----------------------------------------------------------------------------------------

def test_pack_config_secrets_are_masked_at_any_depth() -> None:
    schema = {"token": {"secret": True}, "plain": {"type": "string"},
              "nested": {"type": "object", "properties": {"pw": {"secret": True}, "user": {}},
                         "additionalProperties": {"secret": True}},
              "list": {"type": "array", "items": {"secret": True}}}
    values = {"token": "t", "plain": "p", "nested": {"pw": "x", "user": "u", "other": "o"}, "list": ["a"],
              "unknown": "shown", "none": None}
    assert masked_config(schema, values) == {
        "token": MASK, "plain": "p", "nested": {"pw": MASK, "user": "u", "other": MASK}, "list": [MASK],
        "unknown": "shown", "none": None}


def test_install_sources_are_shown_without_credentials() -> None:
    assert shown_source("cloning https://bot:ghp_token@github.com/o/p.git at v1") == \
        "cloning https://***@github.com/o/p.git at v1"
    assert shown_source("/srv/packs/p") == "/srv/packs/p" and shown_source("git@host:o/p") == "git@host:o/p"


async def test_packs_show_version_contents_problems_and_masked_config(web: Web) -> None:
    viewer, _ = await signed_in(web, "vic", "viewer")
    listed = (await viewer.get("/packs")).text
    assert '<a href="/packs/webx">webx</a>' in listed and "2.1.0" in listed
    assert SCRIPT not in listed and "&lt;script&gt;" in listed
    page = (await viewer.get("/packs/webx")).text
    assert "webx.noop" in page and "webx.one" in page and "Aliases (3)" in page
    assert PACK_SECRET not in page and page.count(MASK) >= 2 and "bob" in page and "eu" in page
    demo = (await viewer.get("/packs/demo")).text
    assert '<a href="/rules/demo.on_build">' in demo and "This pack has no config." in demo
    assert (await viewer.get("/packs/nope")).status_code == 404


async def test_reload_picks_up_pack_changes_and_shows_problems(web: Web) -> None:
    admin, token = await signed_in(web, "ada", "admin")
    pack = web.squall.config.pack_paths[0] / "webx"
    write(pack / "actions" / "added.yaml", "name: added\nrunner_type: noop\n")
    write(pack / "actions" / "broken.yaml", "name: broken\nrunner_type: no-such-runner\n")
    assert "webx.added" not in web.squall.registry.actions
    done = await admin.post("/packs/reload", data={"csrf_token": token})
    assert done.status_code == 303 and done.headers["location"] == "/packs"
    assert "webx.added" in web.squall.registry.actions
    page = (await admin.get("/packs")).text
    assert "broken.yaml" in page
    assert "broken.yaml" in (await admin.get("/packs/webx")).text


async def test_install_from_a_folder_shows_progress_then_the_outcome(web: Web, tmp_path: Path) -> None:
    admin, token = await signed_in(web, "ada", "admin")
    source = tmp_path / "src" / "fresh"
    write(source / "pack.yaml", "ref: fresh\nname: fresh\nversion: 0.3.0\n")
    write(source / "actions" / "hi.yaml", "name: hi\nrunner_type: noop\n")
    started = await admin.post("/packs/install", data={"source": str(source), "csrf_token": token})
    assert started.status_code == 303 and started.headers["location"].startswith("/packs/installs/")
    url = started.headers["location"]
    page = (await admin.get(url)).text
    assert "<html" in page and 'id="install-progress"' in page
    for _ in range(500):
        fragment = await admin.get(url, headers={"HX-Request": "true"})
        if "Done:" in fragment.text or "Failed:" in fragment.text:
            break
        assert 'hx-trigger="every 1s"' in fragment.text  # htmx polls while it runs
        await asyncio.sleep(0.02)
    assert "<html" not in fragment.text and "Done: installed fresh 0.3.0" in fragment.text, fragment.text
    assert "hx-trigger" not in fragment.text  # finished: polling stops
    assert "copying fresh 0.3.0" in fragment.text
    assert "fresh.hi" in web.squall.registry.actions
    audit = await web.squall.db(web.squall.store.audit_list, 10, "web.pack.install")
    assert audit[0]["actor"] == "ada" and audit[0]["target"] == "fresh"
    failed = await admin.post("/packs/install", data={"source": str(tmp_path / "none"), "csrf_token": token})
    for _ in range(500):
        fragment = await admin.get(failed.headers["location"], headers={"HX-Request": "true"})
        if "Failed:" in fragment.text:
            break
        await asyncio.sleep(0.02)
    assert "Failed:" in fragment.text
    empty = await admin.post("/packs/install", data={"source": " ", "csrf_token": token})
    assert empty.status_code == 400 and "git URL" in empty.text
    assert (await admin.get("/packs/installs/nope")).status_code == 404


async def test_install_shows_aliases_and_rules_that_do_not_load(web: Web, tmp_path: Path) -> None:
    """As `squall pack list` and `squall pack install` do: counted as not loaded, each problem shown."""
    admin, token = await signed_in(web, "ada", "admin")
    source = tmp_path / "src" / "halfway"
    write(source / "pack.yaml", "ref: halfway\nname: halfway\nversion: 1.0.0\n")
    write(source / "actions" / "hi.yaml", "name: hi\nrunner_type: noop\n")
    write(source / "aliases" / "good.yaml", "name: good\naction_ref: halfway.hi\nformats: ['say hi']\n")
    write(source / "aliases" / "bad.yaml", "name: bad\naction_ref: halfway.missing_action\nformats: ['do it']\n")
    write(source / "rules" / "r.yaml", """
        name: r
        pack: halfway
        trigger: {type: core.st2.webhook, parameters: {url: halfway}}
        action: {ref: halfway.nosuch}
    """)
    started = await admin.post("/packs/install", data={"source": str(source), "csrf_token": token})
    for _ in range(500):
        fragment = await admin.get(started.headers["location"], headers={"HX-Request": "true"})
        if "Done:" in fragment.text or "Failed:" in fragment.text:
            break
        await asyncio.sleep(0.02)
    shown = html.unescape(fragment.text)
    assert "Done: installed halfway 1.0.0" in shown and "(1 actions, 1 aliases, 0 rules)" in shown, shown
    assert 'bad.yaml:2: action_ref: action "halfway.missing_action" not found' in shown
    assert 'r.yaml:4: action "halfway.nosuch" not found' in shown
    assert "good.yaml" not in shown


# -- keys ------------------------------------------------------------------------------------------

async def test_keys_set_and_delete_with_secrets_masked(web: Web) -> None:
    admin, token = await signed_in(web, "ada", "admin")
    plain = await admin.post("/keys", data={"name": "greeting", "value": "hello <b>", "scope": "system",
                                            "ttl": "3600", "description": "said", "csrf_token": token})
    assert plain.status_code == 303 and plain.headers["location"] == "/keys?scope=system"
    secret = await admin.post("/keys", data={"name": "pw", "value": KEY_SECRET, "secret": "on", "scope": "system",
                                             "csrf_token": token})
    assert secret.status_code == 303
    mine = await admin.post("/keys", data={"name": "pref", "value": "dark", "scope": "user", "user": "ann",
                                           "csrf_token": token})
    assert mine.status_code == 303
    stored = await web.squall.db(web.squall.datastore.get, "pw", decrypt=True)
    assert stored["secret"] and stored["value"] == KEY_SECRET
    ciphertext = (await web.squall.db(web.squall.datastore.get, "pw"))["value"]
    page = (await admin.get("/keys")).text
    assert "hello &lt;b&gt;" in page and "said" in page and "UTC" in page
    assert KEY_SECRET not in page and ciphertext not in page and MASK in page
    users = (await admin.get("/keys?scope=user")).text
    assert "pref" in users and "<td>ann</td>" in users and "greeting" not in users
    deleted = await admin.post("/keys/delete", data={"name": "pw", "scope": "system", "csrf_token": token})
    assert deleted.status_code == 303 and await web.squall.db(web.squall.datastore.get, "pw") is None
    again = await admin.post("/keys/delete", data={"name": "pw", "scope": "system", "csrf_token": token})
    assert again.status_code == 404
    bad_ttl = await admin.post("/keys", data={"name": "x", "value": "v", "ttl": "soon", "csrf_token": token})
    assert bad_ttl.status_code == 400 and "whole number of seconds" in bad_ttl.text
    no_user = await admin.post("/keys", data={"name": "x", "value": "v", "scope": "user", "csrf_token": token})
    assert no_user.status_code == 400 and "needs the user" in no_user.text
    assert (await admin.get("/keys?scope=galaxy")).status_code == 400
    audit = await _changes(web)
    assert [a["event"] for a in audit] == ["web.key.delete", "web.key.set", "web.key.set", "web.key.set"]
    assert all(KEY_SECRET not in str(a["detail"]) for a in audit)


def _delete_form(page: str, name: str, user: str | None = None) -> dict[str, str]:
    """The fields the Delete button of key `name` (of `user`) posts, read from the page as a browser would."""
    for form in re.findall(r'<form method="post" action="/keys/delete">(.*?)</form>', page, re.S):
        fields = {key: html.unescape(value) for key, value in re.findall(r'name="(\w+)" value="([^"]*)"', form)}
        if fields.get("name") == name and fields.get("user") == user:
            return fields
    raise AssertionError(f"no delete form for {name!r} of {user!r} in {page}")


async def test_a_key_is_deleted_and_set_under_its_exact_name(web: Web) -> None:
    """The delete form's hidden fields hold the stored name and user; stripped, deleting `deploy_token `
    (a trailing space, as the API stores it) deleted `deploy_token`, another key. The set form writes the
    name it is given too, as the API and `squall key set` do."""
    ds = web.squall.datastore
    for name, user, value in (("deploy_token", None, "the-real-one"), ("deploy_token ", None, "a-typo"),
                              ("pref", "ann", "ann's"), ("pref", "ann ", "another user's")):
        await web.squall.db(ds.set, name, value, scope="user" if user else "system", user=user)
    admin, token = await signed_in(web, "ada", "admin")
    form = _delete_form((await admin.get("/keys")).text, "deploy_token ")
    assert (await admin.post("/keys/delete", data=form)).status_code == 303
    assert await web.squall.db(ds.get, "deploy_token ") is None
    assert (await web.squall.db(ds.get, "deploy_token"))["value"] == "the-real-one"
    form = _delete_form((await admin.get("/keys?scope=user")).text, "pref", "ann ")
    assert (await admin.post("/keys/delete", data=form)).status_code == 303
    assert await web.squall.db(ds.get, "pref", scope="user", user="ann ") is None
    assert (await web.squall.db(ds.get, "pref", scope="user", user="ann"))["value"] == "ann's"
    assert (await admin.post("/keys/delete", data=form)).status_code == 404  # gone: not ann's instead
    assert (await web.squall.db(ds.get, "pref", scope="user", user="ann"))["value"] == "ann's"
    written = await admin.post("/keys", data={"name": " padded ", "value": "v", "scope": "system",
                                              "csrf_token": token})
    assert written.status_code == 303
    assert (await web.squall.db(ds.get, " padded "))["value"] == "v" and await web.squall.db(ds.get, "padded") is None
    assert [(a["event"], a["target"]) for a in await _changes(web)][:3] == [
        ("web.key.set", " padded "), ("web.key.delete", "pref"), ("web.key.delete", "deploy_token ")]


async def test_a_nul_character_comes_back_beside_its_field(web: Web) -> None:
    """`\x00` in a value or description was PostgreSQL's DataError (a 500) and stored on SQLite: the keys page
    again, with the engine's words beside the value, or above the form for the description (no field of its
    own for an error), the rest of what was typed kept."""
    admin, token = await signed_in(web, "ada", "admin")
    value = await admin.post("/keys", data={"name": "k", "value": "a\x00b", "scope": "system", "csrf_token": token})
    assert value.status_code == 400 and "1 field to correct: Value." in value.text
    assert "its value holds a NUL character (\\x00) at position 2" in _key_input(value.text, "value")
    about = await admin.post("/keys", data={"name": "k", "value": "v", "description": "d\x00", "scope": "system",
                                            "csrf_token": token})
    assert about.status_code == 400 and 'value="v"' in _key_input(about.text, "value")
    assert "its description holds a NUL character (\\x00) at position 2" in about.text.split('<form method="post" '
                                                                                            'action="/keys"')[1]
    user = await admin.post("/keys", data={"name": "k", "value": "v", "scope": "user", "user": "ann\x00",
                                           "csrf_token": token})
    assert user.status_code == 400 and "the user name holds a NUL character" in _key_input(user.text, "user")
    assert await web.squall.db(web.squall.datastore.list, scope="all") == []


def _key_input(page: str, name: str) -> str:
    """The keys form's `<div>` holding input `key-NAME`, its label and its error."""
    found = re.search(rf'<div[^>]*>(?:(?!<div).)*?id="key-{name}".*?</div>', page, re.S)
    assert found, (name, page)
    return found.group(0)


async def test_a_wrong_key_comes_back_beside_its_field_without_the_secret(web: Web) -> None:
    """The keys page again, with the engine's message beside the field and what was typed kept, but
    never a secret's value (it goes back empty): not the error page."""
    from engine.datastore import MAX_KEY_TTL

    admin, token = await signed_in(web, "ada", "admin")
    huge = await admin.post("/keys", data={"name": "db.password", "value": KEY_SECRET, "secret": "on",
                                           "scope": "system", "ttl": "99999999999999", "description": "prod db",
                                           "csrf_token": token})
    assert huge.status_code == 400
    page = huge.text
    assert KEY_SECRET not in page and "Back to the executions" not in page and "<h1>Datastore keys</h1>" in page
    assert '<div class="error" role="alert"><p>1 field to correct: TTL.</p></div>' in page
    ttl = _key_input(page, "ttl")
    assert 'value="99999999999999"' in ttl and 'aria-invalid="true"' in ttl
    assert 'aria-describedby="key-ttl-help key-ttl-error"' in ttl and 'inputmode="numeric"' in ttl
    assert (f'<p id="key-ttl-error" class="field-error">ttl must be at most {MAX_KEY_TTL} seconds (100 years), '
            f"not 99999999999999.</p>") in ttl
    assert 'value="db.password"' in _key_input(page, "name")
    assert 'value="prod db"' in _key_input(page, "description")
    assert "checked" in _key_input(page, "secret")
    value = _key_input(page, "value")
    assert 'type="password"' in value and 'value=""' in value  # a secret is shown nowhere, not even back
    assert await web.squall.db(web.squall.datastore.get, "db.password") is None
    typos = await admin.post("/keys", data={"name": "", "value": "plain <b>", "scope": "system", "ttl": "1e",
                                            "csrf_token": token})
    assert typos.status_code == 400
    assert "2 fields to correct: Name, TTL." in typos.text
    assert "a key needs a name" in _key_input(typos.text, "name")
    assert "TTL must be a whole number of seconds" in _key_input(typos.text, "ttl")
    value = _key_input(typos.text, "value")
    assert 'type="text"' in value and 'value="plain &lt;b&gt;"' in value  # not a secret: kept, as text
    users = await admin.post("/keys", data={"name": "pref", "value": "v", "scope": "user", "user": "a:b",
                                            "csrf_token": token})
    assert users.status_code == 400 and "cannot have user-scoped keys" in _key_input(users.text, "user")
    assert 'aria-current="page">user</a>' in users.text  # still the user scope's page
    assert [a["event"] for a in await _changes(web)] == []


async def test_the_keys_value_hides_as_a_password_when_encrypt_is_ticked(web: Web) -> None:
    """A script of Squall's own (the CSP allows no inline one) turns the value into a password field while
    Encrypt is ticked; the browser test ticks it."""
    admin, _ = await signed_in(web, "ada", "admin")
    page = (await admin.get("/keys")).text
    assert '<script src="/static/keys.js" defer></script>' in page
    assert 'id="key-secret" name="secret" type="checkbox" data-hides="key-value"' in page
    script = await admin.get("/static/keys.js")
    assert script.status_code == 200 and "data-hides" in script.text and "password" in script.text


async def test_secrets_never_reach_any_page(web: Web) -> None:
    admin, token = await signed_in(web, "ada", "admin")
    await admin.post("/keys", data={"name": "pw", "value": KEY_SECRET, "secret": "on", "csrf_token": token})
    await admin.post("/keys", data={"name": "upw", "value": KEY_SECRET, "secret": "on", "scope": "user",
                                    "user": "ann", "csrf_token": token})
    await admin.post("/aliases/try", data={"message": "greet bob", "csrf_token": token})
    for path in PAGES:
        page = (await admin.get(path)).text
        assert KEY_SECRET not in page and PACK_SECRET not in page and HOOK_SECRET not in page, path


async def test_script_in_descriptions_renders_escaped(web: Web) -> None:
    viewer, _ = await signed_in(web, "vic", "viewer")
    for path in ("/aliases", "/packs", "/packs/webx"):
        page = (await viewer.get(path)).text
        assert SCRIPT not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page, path
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", page) == [], path


# -- audit and status ------------------------------------------------------------------------------

async def test_the_audit_log_filters_and_pages(web: Web) -> None:
    viewer, _ = await signed_in(web, "vic", "viewer")
    store = web.squall.store
    for i in range(55):
        await web.squall.db(store.audit_add, "chat.execution", "alice", "slack:C1", "demo.greet",
                            {"execution": f"{i:024x}", "action": "demo.greet"})
    await web.squall.db(store.audit_add, "chat.denied", "mallory", "slack:C1", "demo.locked",
                        {"command": f"secretgreet {SCRIPT}", "reason": "demo.locked is allowed only for users alice"})
    first = (await viewer.get("/audit")).text
    assert first.count("<tr class=\"audit-") == 50 and "mallory" in first
    assert SCRIPT not in first and "secretgreet &lt;script&gt;" in first
    older = re.search(r'<a href="(/audit\?[^"]+)" rel="next">Older</a>', first)
    assert older
    second = (await viewer.get(older.group(1).replace("&amp;", "&"))).text
    # 55 + 1 above, and vic's own login (logins are audited), oldest last
    assert second.count("<tr class=\"audit-") == 7 and 'rel="next"' not in second and ">Newest</a>" in second
    assert "web.login" in second
    denied = (await viewer.get("/audit", params={"kind": "chat.denied"})).text
    assert denied.count("<tr class=\"audit-") == 1 and "allowed only for users alice" in denied
    assert '<option value="chat.denied" selected>' in denied
    by_user = (await viewer.get("/audit", params={"user": "alice", "action": "demo.greet"})).text
    assert by_user.count("<tr class=\"audit-") == 50 and "mallory" not in by_user
    assert (await viewer.get("/audit", params={"user": "nobody"})).text.count("<tr class=\"audit-") == 0
    future = (await viewer.get("/audit", params={"from": "2999-01-01T00:00"})).text
    assert "No audit entries match these filters" in future
    past = (await viewer.get("/audit", params={"to": "2000-01-01T00:00"})).text
    assert "No audit entries match" in past
    bad = await viewer.get("/audit", params={"from": "yesterday"})
    assert bad.status_code == 400 and "must be a date and time" in bad.text
    for before in ("x", "99999999999999999999999", "²"):  # past 64 bits; a digit int() refuses
        refused = await viewer.get("/audit", params={"before": before})
        assert refused.status_code == 400 and "must be an audit entry&#39;s number" in refused.text


class _Flaky(LoopbackAdapter):
    """An adapter that reports its connection lost."""

    online = False


async def test_the_status_page_shows_adapters_and_the_lead(home: Path) -> None:
    config = load_config(_home(home) / "config.yml")
    squall = await Squall.start(config, adapters=[LoopbackAdapter(), _Flaky(name="flaky")])
    try:
        await squall.sync_sensors()
        web = Web(squall, create_api(squall))
        client, _ = await signed_in(web, "vic", "viewer")
        page = (await client.get("/status")).text
        rows = dict(re.findall(r"<tr><td>([a-z]+)</td>\s*<td>(.*?)</td></tr>", page, re.S))
        assert "in-process" in rows["loopback"] and "not connected" in rows["flaky"]
        assert "This process leads" in page and "Executor: local" in page and "runs its executions itself" in page
        for c in web.clients:
            await c.aclose()
    finally:
        await squall.close()


async def test_pages_need_a_login(web: Web) -> None:
    anon = web.client()
    for path in PAGES:
        answer = await anon.get(path)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login?next="), path
    assert (await login(anon, "nobody")).status_code == 401


@pytest.mark.postgres
def test_queue_status_reads_workers_and_queue_depths(postgres_url: str) -> None:
    store = Store.open(postgres_url)  # the migrations bring procrastinate's tables
    try:
        assert queue_status(store) == {"workers": [], "queues": {}}
        with store.engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now()), "
                                 "(now() - interval '1 hour')"))
            for queue, status in (("default", "todo"), ("default", "todo"), ("default", "doing"),
                                  ("zone-a", "doing"), ("zone-a", "succeeded")):
                conn.execute(sa.text("INSERT INTO procrastinate_jobs (queue_name, task_name, status) "
                                     "VALUES (:q, 't', CAST(:s AS procrastinate_job_status))"),
                             {"q": queue, "s": status})
        status = queue_status(store)
        assert [w["stalled"] for w in status["workers"]] == [False, True]
        assert all(w["last_heartbeat"].tzinfo is not None for w in status["workers"])
        assert status["queues"] == {"default": {"todo": 2, "doing": 1}, "zone-a": {"todo": 0, "doing": 1}}
    finally:
        store.close()


@pytest.mark.postgres
async def test_the_status_page_shows_workers_and_queues_under_procrastinate(home: Path, postgres_url: str) -> None:
    _home(home, "executor: {kind: procrastinate}")
    text = (home / "config.yml").read_text().replace("sqlite:///data/squall.db", postgres_url)
    (home / "config.yml").write_text(text)
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        with squall.store.engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now())"))
            conn.execute(sa.text("INSERT INTO procrastinate_jobs (queue_name, task_name) VALUES ('zone-a', 't')"))
        web = Web(squall, create_api(squall))
        client, _ = await signed_in(web, "vic", "viewer")
        page = (await client.get("/status")).text
        assert "Executor: procrastinate" in page and "alive" in page
        assert re.search(r"<tr><td>zone-a</td><td>1</td><td>0</td></tr>", page)
        for c in web.clients:
            await c.aclose()
    finally:
        await squall.close()


def test_audit_page_filters_on_both_databases(database_url: str) -> None:
    store = Store.open(database_url)
    try:
        store.audit_add("chat.execution", "alice", "slack:C1", "demo.greet", {"action": "demo.hello"})
        store.audit_add("web.key.set", "ada", "web", "pw", {"scope": "system"})
        store.audit_add("api.execution", "ci", "api:api", "demo.other", {"action": "demo.greet"})

        def events(**where: str) -> list[str]:
            return [row["event"] for row in audit_page(store, AuditFilter(**where))]

        assert events() == ["api.execution", "web.key.set", "chat.execution"]
        assert events(action="demo.greet") == ["api.execution", "chat.execution"]  # target or detail.action
        assert events(action="demo.hello") == ["chat.execution"]
        assert events(actor="ada") == ["web.key.set"] and events(kind="chat.execution") == ["chat.execution"]
        newest = audit_page(store, AuditFilter(), limit=1)[0]
        assert newest["timestamp"].tzinfo is not None
        assert [r["event"] for r in audit_page(store, AuditFilter(), before=newest["id"])] == [
            "web.key.set", "chat.execution"]
        assert audit_kinds(store) == ["api.execution", "chat.execution", "web.key.set"]
        store.audit_add("chat.execution", "bob", "slack_x:C2", "demo.greet", {})  # `_` is no wildcard
        assert events(source="slack") == ["chat.execution"] and events(source="slack:C1") == ["chat.execution"]
        assert events(source="web") == ["web.key.set"] and events(source="api:api") == ["api.execution"]
        assert events(source="slack:C2") == [] and [r["actor"] for r in audit_page(
            store, AuditFilter(source="slack_x"))] == ["bob"]
    finally:
        store.close()


async def test_a_run_from_the_web_is_audited_with_its_parameters_secrets_masked(web: Web) -> None:
    """`web.execution.request` says with which parameters, as `api.execution` and `cli.execution` do:
    as the execution stores them (its defaults too), a secret as ********."""
    client, token = await signed_in(web, "olga", "operator")
    done = await client.post("/actions/demo.greet", data={"csrf_token": token, "who": "ann", "password": "hunter2"})
    assert done.status_code == 303, done.text
    execution_id = done.headers["location"].removeprefix("/executions/")
    [entry] = await web.squall.db(web.squall.store.audit_list, 10, "web.execution.request")
    record = await web.squall.executions.wait(execution_id, 30)
    assert entry["target"] == execution_id
    assert entry["detail"] == {"action": "demo.greet", "parameters": record["parameters"]}
    assert entry["detail"]["parameters"]["who"] == "ann" and entry["detail"]["parameters"]["password"] == MASK
    assert "hunter2" not in str(entry)
