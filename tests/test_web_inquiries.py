"""The web UI's inquiries: the pending ones with their workflow and who may answer, an answer form from
the response schema, the inquiry's `users`/`roles` enforced by the service, and the answer resuming
the workflow with who answered and when shown.

The app is test_web_auth's (test_api's config and demo pack) plus a workflow pack of this file's own."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from bot.app import Squall
from bot.http import create_api
from engine.config import load_config
from tests.conftest import write
from tests.test_api import KEY, disk_full, failing_audit
from tests.test_web_auth import Web, login, started_web
from tests.test_web_live import _events, _served
from tests.workflow_helpers import children, workflow_pack

DEPLOY = """
version: 1.0
tasks:
  approve:
    action: core.ask
    input:
      users: [olivia, ada]
      roles: [admin, operator]
      schema:
        type: object
        description: "Deploy <b>web</b> to production?"
        required: [reason]
        properties:
          approved: {type: boolean, description: "Go ahead?", required: true}
          reason: {type: string, description: "Why"}
          when: {type: string, enum: [now, tonight], default: now}
    next:
      - when: <% succeeded() %>
        publish: [answer: <% result().response %>]
output:
  - answer: <% ctx(answer) %>
"""


#: An inquiry asking for a secret (a PIN): the workflow compares it, and shows only whether it matched.
UNLOCK = """
version: 1.0
tasks:
  unlock:
    action: core.ask
    input:
      schema:
        type: object
        properties:
          pin: {type: string, secret: true, description: "Your PIN", required: true}
          note: {type: string}
    next:
      - when: <% succeeded() %>
        publish: [matched: <% result().response.pin = "4711-secret" %>]
output:
  - matched: <% ctx(matched) %>
"""


@pytest.fixture
async def web(home: Path) -> AsyncIterator[Web]:
    workflow_pack(home, {"deploy": ("orquesta", "", DEPLOY), "unlock": ("orquesta", "", UNLOCK)})
    async with started_web(home) as started:
        yield started


async def _asked(web: Web, workflow: str = "wf.deploy") -> tuple[str, str]:
    """A workflow paused on its question: the workflow's id and the inquiry's."""
    record = await web.squall.executions.request(workflow, {}, {"user": "tester"})
    paused = await web.squall.executions.wait(record["id"], timeout=20)
    assert paused["status"] == "paused", paused
    (inquiry,) = [c for c in await children(web.squall, record["id"]) if c["runner"] == "inquirer"]
    return record["id"], inquiry["id"]


async def _final(web: Web, workflow_id: str) -> dict[str, Any]:
    """The workflow once it has run on after the answer."""
    for _ in range(200):
        web.squall.executions._recent.pop(workflow_id, None)
        done = await web.squall.executions.wait(workflow_id, timeout=20)
        if done["status"] not in ("paused", "resuming", "running"):
            return done
    raise AssertionError(f"workflow {workflow_id} did not finish")


async def _operator(web: Web, name: str) -> tuple[httpx.AsyncClient, str]:
    return await web.signed_in(name, "operator")


async def test_pending_inquiries_are_listed_with_workflow_and_who_may_answer(web: Web) -> None:
    workflow_id, inquiry_id = await _asked(web)
    client, _ = await web.signed_in("vic", "viewer")
    page = (await client.get("/inquiries")).text
    pending = page.split('id="answered-title"')[0]
    row = re.search(rf'<tr>\s*<td><a class="id" href="/inquiries/{inquiry_id}">.*?</tr>', pending, re.S)
    assert row, pending
    assert "Deploy &lt;b&gt;web&lt;/b&gt; to production?" in row.group(0)  # the question, as text
    assert f'<a href="/executions/{workflow_id}">wf.deploy</a>' in row.group(0)
    assert "<td>olivia or ada (who must also be in role admin or operator)</td>" in row.group(0)
    assert "No inquiry has been answered yet." in page


async def test_the_answer_form_comes_from_the_schema(web: Web) -> None:
    _, inquiry_id = await _asked(web)
    client, _ = await _operator(web, "olivia")
    page = (await client.get(f"/inquiries/{inquiry_id}")).text
    # a required boolean is a yes or no to choose, nothing chosen: never an unticked box that answers "no"
    assert '<legend>approved <span class="required" aria-hidden="true">*</span>' in page
    assert '<input id="a-approved" name="approved" type="radio" value="true">' in page
    assert '<label for="a-approved" class="inline-label">Yes</label>' in page
    assert '<input id="a-approved-no" name="approved" type="radio" value="false">' in page
    assert 'type="checkbox"' not in page
    assert re.search(r'<input id="a-reason" name="reason" required aria-describedby="a-reason-help" type="text"', page)
    assert '<option value="now" selected>now</option>' in page and '<option value="tonight">' in page
    assert "<dt>Who may answer</dt><dd>olivia or ada (who must also be in role admin or operator)</dd>" in page
    viewer, _ = await web.signed_in("vic", "viewer")
    assert 'name="reason"' not in (await viewer.get(f"/inquiries/{inquiry_id}")).text


async def test_a_user_not_in_the_inquirys_users_cannot_answer(web: Web) -> None:
    _, inquiry_id = await _asked(web)
    client, csrf = await _operator(web, "oscar")
    refused = await client.post(f"/inquiries/{inquiry_id}", data={"csrf_token": csrf, "approved": "true",
                                                                    "reason": "ok"})
    assert refused.status_code == 403
    assert (f"oscar may not respond to inquiry {inquiry_id}: only olivia or ada (who must also be in role admin "
            "or operator) may, and oscar is not one of its users") in refused.text
    assert (await web.squall.inquiries.get(inquiry_id))["status"] == "pending"
    viewer, viewer_csrf = await web.signed_in("vic", "viewer")
    as_viewer = await viewer.post(f"/inquiries/{inquiry_id}", data={"csrf_token": viewer_csrf, "reason": "x"})
    assert as_viewer.status_code == 403 and "needs the operator role" in as_viewer.text
    forged = await client.post(f"/inquiries/{inquiry_id}", data={"approved": "true", "reason": "ok"})
    assert forged.status_code == 403 and "CSRF token" in forged.text


async def test_a_paused_workflow_s_page_links_its_question_to_whom_may_answer_it(web: Web) -> None:
    """A workflow paused on `core.ask` linked its task only to the ask's execution page, which had no way to
    the answer form. The task's row, in the page and in its live updates, and the ask's page link the inquiry
    for an account that may answer it (the inquiries page's rule), and for no other; once answered, nowhere."""
    workflow_id, inquiry_id = await _asked(web)
    answer = f'href="/inquiries/{inquiry_id}"'
    olivia, csrf = await _operator(web, "olivia")
    oscar, _ = await _operator(web, "oscar")  # an operator, but not one of its users
    vic, _ = await web.signed_in("vic", "viewer")
    for client, offered in ((olivia, True), (oscar, False), (vic, False)):
        for page in (f"/executions/{workflow_id}", f"/executions/{inquiry_id}"):
            assert (answer in (await client.get(page)).text) is offered, (page, offered)
    async with _served(web) as base, httpx.AsyncClient(base_url=base, timeout=30) as browser:
        assert (await login(browser, "olivia")).status_code == 303
        async with browser.stream("GET", f"/live/executions/{workflow_id}") as stream:
            tasks = await anext(event async for event in _events(stream) if event.get("event") == "tasks")
        assert answer in tasks["data"]
    done = await olivia.post(f"/inquiries/{inquiry_id}", data={"csrf_token": csrf, "approved": "true", "reason": "ok"})
    assert done.status_code == 303
    await _final(web, workflow_id)
    for page in (f"/executions/{workflow_id}", f"/executions/{inquiry_id}"):
        assert answer not in (await olivia.get(page)).text


async def test_an_admin_answers_an_inquiry_for_the_admin_role(web: Web) -> None:
    workflow_id, inquiry_id = await _asked(web)
    client, csrf = await web.signed_in("ada", "admin")
    done = await client.post(f"/inquiries/{inquiry_id}", data={"csrf_token": csrf, "reason": "as admin"})
    assert done.status_code == 303
    assert (await _final(web, workflow_id))["result"]["output"]["answer"] == {
        "approved": False, "reason": "as admin", "when": "now"}


async def test_a_wrong_answer_comes_back_beside_its_field(web: Web) -> None:
    _, inquiry_id = await _asked(web)
    client, csrf = await _operator(web, "olivia")
    bad = await client.post(f"/inquiries/{inquiry_id}", data={"csrf_token": csrf, "approved": "true",
                                                                "reason": "", "when": "never"})
    assert bad.status_code == 400
    assert (f'<p id="a-reason-error" class="field-error">parameter &#34;reason&#34; is required by inquiry '
            f'&#34;{inquiry_id}&#34; (Why)</p>') in bad.text
    assert "breaks the rule enum: &#39;never&#39; is not one of [&#39;now&#39;, &#39;tonight&#39;]" in bad.text
    assert (await web.squall.inquiries.get(inquiry_id))["status"] == "pending"


async def _post_form(client: httpx.AsyncClient, url: str, fields: list[tuple[str, str]]) -> httpx.Response:
    """A form posted as a browser posts it: every field in order, a name repeated as often as it is sent."""
    return await client.post(url, content=urlencode(fields),
                             headers={"Content-Type": "application/x-www-form-urlencoded"})


async def test_a_required_yes_or_no_left_unchosen_is_refused_beside_it(web: Web) -> None:
    """Enter pressed in another field before choosing: the choice arrives empty (the hidden field after
    the radio buttons; a chosen one comes first, and a form's first value of a name is the one read),
    which is refused beside the field; the inquiry stays pending. A choice of "no" is an answer."""
    workflow_id, inquiry_id = await _asked(web)
    client, csrf = await _operator(web, "olivia")
    page = (await client.get(f"/inquiries/{inquiry_id}")).text
    radios = page.index('name="approved" type="radio" value="false"')
    assert page.index('<input type="hidden" name="approved" value="">') > radios
    unchosen = await _post_form(client, f"/inquiries/{inquiry_id}", [
        ("csrf_token", csrf), ("approved", ""), ("reason", "checked the canary")])
    assert unchosen.status_code == 400
    assert (f'<p id="a-approved-error" class="field-error">parameter &#34;approved&#34; is required by inquiry '
            f'&#34;{inquiry_id}&#34; (Go ahead?)</p>') in unchosen.text
    assert 'aria-invalid="true"' in unchosen.text.split("<legend>approved")[0].rsplit("<fieldset", 1)[1]
    assert 'value="checked the canary"' in unchosen.text  # what was typed is kept
    assert (await web.squall.inquiries.get(inquiry_id))["status"] == "pending"
    said_no = await _post_form(client, f"/inquiries/{inquiry_id}", [
        ("csrf_token", csrf), ("approved", "false"), ("approved", ""), ("reason", "not today")])
    assert said_no.status_code == 303, said_no.text
    assert (await _final(web, workflow_id))["result"]["output"]["answer"] == {
        "approved": False, "reason": "not today", "when": "now"}


async def test_each_answer_of_a_several_people_inquiry_shows_when_as_people_read_it(web: Web) -> None:
    record = await web.squall.executions.request("core.ask", {
        "schema": {"type": "object", "properties": {"ok": {"type": "boolean", "required": True}}}, "count": 2},
        {"user": "tester"})
    inquiry_id = record["id"]
    assert (await web.squall.executions.wait(inquiry_id, timeout=20))["status"] == "pending"
    await web.squall.inquiries.respond(inquiry_id, {"ok": True}, "ada", ["operator"])
    client, _ = await _operator(web, "olivia")
    page = (await client.get(f"/inquiries/{inquiry_id}")).text
    answer = re.search(r'<dd class="responder">ada <time datetime="([^"]+)">([^<]+)</time>', page)
    assert answer, page
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", answer.group(2)), answer.group(2)
    assert answer.group(1).startswith(answer.group(2)[:10])  # the ISO time stays for machines


async def test_answering_resumes_the_workflow_and_shows_who_and_when(web: Web) -> None:
    workflow_id, inquiry_id = await _asked(web)
    client, csrf = await _operator(web, "olivia")
    done = await client.post(f"/inquiries/{inquiry_id}", data={
        "csrf_token": csrf, "approved": "true", "reason": "release 1.2", "when": "tonight"})
    assert done.status_code == 303 and done.headers["location"] == f"/inquiries/{inquiry_id}"
    final = await _final(web, workflow_id)
    assert final["status"] == "succeeded", final
    assert final["result"]["output"]["answer"] == {"approved": True, "reason": "release 1.2", "when": "tonight"}
    record = await web.squall.executions.get(inquiry_id)
    assert record["result"]["responder"] == "olivia"
    answered_at = re.escape(re.sub(r"\.\d+", "", str(record["end_timestamp"]))[:19].replace("T", " "))
    page = (await client.get(done.headers["location"])).text
    assert '<dt>Answered by</dt><dd class="responder">olivia</dd>' in page
    assert re.search(rf"<dt>Answered</dt><dd><time [^>]*>{answered_at} UTC</time>", page)
    assert "&#34;reason&#34;: &#34;release 1.2&#34;" in page and 'name="reason"' not in page
    listed = (await client.get("/inquiries")).text
    assert "No inquiry is waiting for an answer." in listed
    answered = listed.split('id="answered-title"')[1]
    assert f'href="/inquiries/{inquiry_id}"' in answered and '<td class="responder">olivia</td>' in answered
    assert re.search(rf"<time [^>]*>{answered_at} UTC</time>", answered)
    (entry,) = await web.squall.db(web.squall.store.audit_list, 10, "web.inquiry.respond")
    assert entry["actor"] == "olivia" and entry["target"] == inquiry_id
    again = await client.post(f"/inquiries/{inquiry_id}", data={"csrf_token": csrf, "reason": "twice"})
    assert again.status_code == 409 and "cannot be answered: it is succeeded" in again.text


async def test_a_secret_answer_reaches_the_workflow_and_is_shown_nowhere(web: Web) -> None:
    """A `secret: true` property of the response schema, answered through the API: the workflow gets
    the real value; the API's answers, every page a viewer sees and the audit log show `********`."""
    workflow_id, inquiry_id = await _asked(web, "wf.unlock")
    api = web.client()
    api.headers["St2-Api-Key"] = KEY
    answered = await api.put(f"/api/v1/inquiries/{inquiry_id}", json={"response": {"pin": "4711-secret",
                                                                                   "note": "on call"}})
    assert answered.status_code == 200, answered.text
    assert answered.json()["response"] == {"pin": "********", "note": "on call"}
    final = await _final(web, workflow_id)
    assert final["status"] == "succeeded" and final["result"]["output"] == {"matched": True}
    viewer, _ = await web.signed_in("vic", "viewer")
    shown = [(await viewer.get(url)).text for url in ("/inquiries", f"/inquiries/{inquiry_id}",
                                                       f"/executions/{inquiry_id}", "/audit")]
    shown += [(await api.get(url)).text for url in (f"/api/v1/inquiries/{inquiry_id}",
                                                     f"/api/v1/executions/{inquiry_id}",
                                                     "/api/v1/executions?action=core.ask")]
    assert all("4711-secret" not in text for text in shown)
    assert "********" in shown[1] and "on call" in shown[1]  # the inquiry's page shows the rest
    assert '"pin":"********"' in shown[5].replace(" ", "")
    (entry,) = await web.squall.db(web.squall.store.audit_list, 10, "api.inquiry.respond")
    assert entry["detail"]["response"] == {"pin": "********", "note": "on call"}


async def test_a_roles_only_inquiry_is_answered_by_a_member_of_a_config_group(home: Path) -> None:
    """An account's groups are its role and the config `auth.groups` listing its name, as a chat user's
    are: olivia (an operator, in deployers) answers an inquiry for `roles: [deployers]`; oscar, an
    operator in no such group, is refused, told why."""
    write(home / "config.yml", "database:\n  url: sqlite:///data/squall.db\npacks:\n  paths: [packs]\n"
                               "auth:\n  groups:\n    deployers: [olivia]\n")
    workflow_pack(home, {"deploy": ("orquesta", "", DEPLOY.replace("      users: [olivia, ada]\n", "").replace(
        "roles: [admin, operator]", "roles: [deployers]"))})
    squall = await Squall.start(load_config(home / "config.yml"))
    web = Web(squall, create_api(squall))
    try:
        assert not squall.registry.errors, squall.registry.errors
        workflow_id, inquiry_id = await _asked(web)
        outsider, outsider_csrf = await _operator(web, "oscar")
        refused = await outsider.post(f"/inquiries/{inquiry_id}", data={"csrf_token": outsider_csrf,
                                                                        "approved": "true", "reason": "ok"})
        assert refused.status_code == 403
        assert "oscar is in none of its roles (in operator)" in refused.text
        client, csrf = await _operator(web, "olivia")
        assert "<dd>members of role deployers</dd>" in (await client.get(f"/inquiries/{inquiry_id}")).text
        done = await client.post(f"/inquiries/{inquiry_id}", data={"csrf_token": csrf, "approved": "true",
                                                                     "reason": "member"})
        assert done.status_code == 303, done.text
        assert (await _final(web, workflow_id))["result"]["output"]["answer"]["reason"] == "member"
        assert (await squall.executions.get(inquiry_id))["result"]["responder"] == "olivia"
    finally:
        for opened in web.clients:
            await opened.aclose()
        await squall.close()


async def test_a_web_answer_whose_audit_event_fails_is_not_recorded(web: Web, monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer form stored the answer in one commit and its `web.inquiry.respond` event in the next: under
    a full disk the page said the database failed for an answer that was recorded (and the workflow ran on),
    with no audit row. Both are one transaction now: the inquiry stays pending, and the same answer may be
    given again, audited with the workflow and the response (secrets masked, as the API's row)."""
    workflow_id, inquiry_id = await _asked(web, "wf.unlock")
    client, csrf = await _operator(web, "olivia")
    answer = {"csrf_token": csrf, "pin": "4711-secret", "note": "on call"}
    failing_audit(web.squall, monkeypatch, "web.inquiry.respond", disk_full())
    failed = await client.post(f"/inquiries/{inquiry_id}", data=answer)
    assert failed.status_code == 503 and "database or disk is full" in failed.text, failed.text
    record = await web.squall.executions.get(inquiry_id)
    assert record["status"] == "pending" and not (record["result"] or {}).get("responses"), record
    monkeypatch.undo()
    done = await client.post(f"/inquiries/{inquiry_id}", data=answer)
    assert done.status_code == 303, done.text
    assert (await _final(web, workflow_id))["result"]["output"] == {"matched": True}
    (entry,) = await web.squall.db(web.squall.store.audit_list, 10, "web.inquiry.respond")
    assert (entry["actor"], entry["target"]) == ("olivia", inquiry_id)
    assert entry["detail"] == {"workflow": workflow_id, "response": {"pin": "********", "note": "on call"}}


async def _ask(web: Web, user: str, **parameters: Any) -> str:
    """A `core.ask` of a yes/no, requested by `user`, pending: its id."""
    record = await web.squall.executions.request("core.ask", {
        "schema": {"type": "object", "properties": {"ok": {"type": "boolean", "required": True}}}, **parameters},
        {"user": user})
    assert (await web.squall.executions.wait(record["id"], timeout=20))["status"] == "pending"
    return record["id"]


def _answer_form(page: str) -> bool:
    return 'name="ok"' in page and "Answer as " in page


async def test_the_form_is_offered_only_to_who_may_answer_and_the_page_says_why_not(web: Web) -> None:
    """The answer form was offered to everyone with the operator role: the requester of a `self_approval:
    false` inquiry, an account outside its `users` and `roles`, someone who already answered a `count: 2`
    one; the post then answered a bare "Not allowed" page linking to the executions. The page offers the
    form by the service's own rule and, in its place, says why not; a refused post comes back as the
    inquiry's page saying why. "Answers needed" says "1 person", not "1 people"."""
    own = await _ask(web, "ann", self_approval=False)
    ann, ann_csrf = await _operator(web, "ann")
    page = (await ann.get(f"/inquiries/{own}")).text
    assert not _answer_form(page), page
    assert f"ann started the workflow of inquiry {own}: someone else must answer it" in page
    assert "<dt>Answers needed</dt><dd>1 person, not the requester</dd>" in page
    refused = await ann.post(f"/inquiries/{own}", data={"csrf_token": ann_csrf, "ok": "true"})
    assert refused.status_code == 403 and f"<h1>Inquiry <span class=\"id\">{own}</span>" in refused.text
    assert f"ann started the workflow of inquiry {own}" in refused.text and not _answer_form(refused.text)
    assert (await web.squall.inquiries.get(own))["status"] == "pending"
    bea, _ = await _operator(web, "bea")
    assert _answer_form((await bea.get(f"/inquiries/{own}")).text)

    named = await _ask(web, "tester", users=["bea"])
    page = (await ann.get(f"/inquiries/{named}")).text
    assert not _answer_form(page)
    assert f"ann may not respond to inquiry {named}: only bea may, and ann is not one of its users" in page
    assert _answer_form((await bea.get(f"/inquiries/{named}")).text)

    pair = await _ask(web, "tester", count=2)
    await web.squall.inquiries.respond(pair, {"ok": True}, "bea", ["operator"])
    page = (await bea.get(f"/inquiries/{pair}")).text
    assert not _answer_form(page) and f"bea already answered inquiry {pair}; each person counts once" in page
    assert "<dt>Answers needed</dt><dd>2 people</dd>" in page
    assert _answer_form((await ann.get(f"/inquiries/{pair}")).text)

    viewer, _ = await web.signed_in("vic", "viewer")
    page = (await viewer.get(f"/inquiries/{pair}")).text
    assert not _answer_form(page) and "Answering needs the operator role; vic is a viewer." in page
