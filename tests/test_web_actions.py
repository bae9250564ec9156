"""The web UI's actions: the list by pack with search, an action's run form (one labelled input per
parameter kind), and running it: roles and CSRF, the engine's messages beside the fields with the
secret never sent back, and the new execution's page with the web as its source.

The app is test_web_auth's (test_api's config and demo pack) plus a pack of this file's own."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from markupsafe import escape

from engine.parameters import ParameterError, cast
from tests.conftest import write
from tests.test_api import disk_full, failing_audit
from tests.test_web_auth import Web, started_web

KINDS = """
name: kinds
runner_type: local-shell-cmd
description: "Shows every kind of field <script>alert('kinds')</script>"
parameters:
  cmd: {default: 'echo "{{ who }} x{{ count }} {{ loud }} {{ colour }} {{ tags }}"', immutable: true}
  who: {type: string, required: true, description: "Whom to greet"}
  count: {type: integer, default: 2, description: "How many times"}
  ratio: {type: number}
  loud: {type: boolean, default: false}
  colour: {type: string, enum: [red, green], default: green}
  token: {type: string, secret: true}
  tags: {type: array, default: [a]}
  labels: {type: object}
  ni: {type: [integer, "null"], description: "A number or nothing"}
  size: {type: integer, minimum: 1, maximum: 10, default: 3, description: "How big"}
"""


@pytest.fixture
async def web(home: Path) -> AsyncIterator[Web]:
    write(home / "packs" / "forms" / "pack.yaml", "ref: forms\nname: forms\nversion: 1.0.0\nauthor: t\n")
    write(home / "packs" / "forms" / "actions" / "kinds.yaml", KINDS)
    async with started_web(home) as started:
        yield started


def _field(page: str, name: str) -> str:
    """The form's `<div class="field ...">` of parameter `name`."""
    found = re.search(rf'<div class="field field-\w+( invalid)?">(?:(?!<div class="field).)*?name="{name}".*?</div>',
                      page, re.S)
    assert found, name
    return found.group(0)


async def test_the_list_by_pack_and_its_search(web: Web) -> None:
    client, _ = await web.signed_in("vic", "viewer")
    page = await client.get("/actions")
    assert page.status_code == 200
    assert '<h2 id="pack-core">core</h2>' in page.text and '<h2 id="pack-forms">forms</h2>' in page.text
    assert '<a href="/actions/core.local">core.local</a>' in page.text
    found = await client.get("/actions", params={"q": "every KIND"})  # words of the description, any case
    assert '<a href="/actions/forms.kinds">forms.kinds</a>' in found.text
    assert "core.local" not in found.text.split('id="action-list"')[1]
    assert 'value="every KIND"' in found.text  # kept in the search box
    assert re.search(r'<p class="muted" role="status">1 of \d+ actions match “every KIND”.</p>', found.text)
    by_ref = await client.get("/actions", params={"q": "demo.gr"})
    assert re.findall(r'<a href="/actions/([^"]+)">', by_ref.text) == ["demo.greet"]
    none = await client.get("/actions", params={"q": "no-such-thing"})
    assert "No action matches “no-such-thing”." in none.text
    # htmx swaps the same page's list in as one types
    assert 'hx-get="/actions"' in page.text and 'hx-select="#action-list"' in page.text


async def test_the_form_has_a_labelled_input_per_kind(web: Web) -> None:
    client, _ = await web.signed_in("olga", "operator")
    page = (await client.get("/actions/forms.kinds")).text
    assert 'name="cmd"' not in page  # immutable: not a field
    for name, control in (("who", 'type="text"'), ("count", 'type="text"'),
                          ("ratio", 'type="text"'), ("loud", 'type="checkbox"'),
                          ("colour", "<select"), ("token", 'type="password"'), ("tags", "<textarea"),
                          ("labels", "<textarea")):
        field = _field(page, name)
        assert control in field, name
        assert f'<label for="p-{name}"' in field and f'id="p-{name}"' in field, name
    who = _field(page, "who")
    assert ' required aria-describedby="p-who-help"' in who
    assert '<span class="required" aria-hidden="true">*</span>' in who
    assert '<p id="p-who-help" class="help">Whom to greet.</p>' in who
    assert "required" not in _field(page, "ratio")
    assert 'value="2"' in _field(page, "count")  # defaults filled in
    assert '<option value="green" selected>' in _field(page, "colour")
    assert "checked" not in _field(page, "loud")
    assert '[\n  &#34;a&#34;\n]</textarea>' in _field(page, "tags")
    assert 'value=""' in _field(page, "token")


async def test_a_typo_in_a_number_field_reaches_the_form_and_is_told(web: Web) -> None:
    """A browser's `type="number"` input sends text it cannot read (`1e`, `5-`) as an empty field,
    which is "not given": the action ran with its default. Integer and number fields are text inputs
    (with a numeric keypad where negatives are ruled out, and the range as help), so the typo reaches
    `bot.forms.parse` and comes back beside its field in the engine's words."""
    client, csrf = await web.signed_in("olga", "operator")
    page = (await client.get("/actions/forms.kinds")).text
    assert 'type="number"' not in page
    size = _field(page, "size")
    assert 'type="text" inputmode="numeric"' in size and 'value="3"' in size
    assert '<p id="p-size-help" class="help">How big. From 1 to 10. Default: 3.</p>' in size
    assert "inputmode" not in _field(page, "count")  # negatives allowed: a keypad may lack the minus sign
    for typo in ("1e", "5-"):
        bad = await client.post("/actions/forms.kinds", data={"csrf_token": csrf, "who": "ann", "size": typo})
        assert bad.status_code == 400
        with pytest.raises(ParameterError) as engine_says:
            cast("size", typo, {"type": "integer"})
        assert str(escape(str(engine_says.value))) in _field(bad.text, "size")
        assert f'value="{typo}"' in _field(bad.text, "size")
    too_big = await client.post("/actions/forms.kinds", data={"csrf_token": csrf, "who": "ann", "size": "50"})
    assert too_big.status_code == 400 and "50 is greater than the maximum of 10" in _field(too_big.text, "size")
    assert await web.squall.executions.list(action="forms.kinds") == []


async def test_a_viewer_sees_no_form_and_cannot_run(web: Web) -> None:
    client, csrf = await web.signed_in("vic", "viewer")
    page = await client.get("/actions/forms.kinds")
    assert page.status_code == 200 and 'name="who"' not in page.text and "needs the operator role" in page.text
    refused = await client.post("/actions/forms.kinds", data={"csrf_token": csrf, "who": "ann"})
    assert refused.status_code == 403 and "needs the operator role" in refused.text
    assert await web.squall.executions.list(action="forms.kinds") == []


async def test_a_forged_post_without_the_csrf_token_is_refused(web: Web) -> None:
    client, _ = await web.signed_in("olga", "operator")
    forged = await client.post("/actions/forms.kinds", data={"who": "ann"})
    assert forged.status_code == 403 and "CSRF token" in forged.text
    wrong = await client.post("/actions/forms.kinds", data={"who": "ann", "csrf_token": "not-it"})
    assert wrong.status_code == 403
    assert await web.squall.executions.list(action="forms.kinds") == []


async def test_bad_values_come_back_beside_their_fields_without_the_secret(web: Web) -> None:
    client, csrf = await web.signed_in("olga", "operator")
    bad = await client.post("/actions/forms.kinds", data={
        "csrf_token": csrf, "who": "", "count": "many", "token": "hunter2", "tags": '["a",', "ratio": "1.5"})
    assert bad.status_code == 400
    page = bad.text
    assert "hunter2" not in page  # the secret is never echoed
    with pytest.raises(ParameterError) as engine_says:
        cast("count", "many", {"type": "integer"})  # what `squall run forms.kinds count=many` says
    count = _field(page, "count")
    assert str(escape(str(engine_says.value))) in count and 'aria-invalid="true"' in count
    assert 'aria-describedby="p-count-help p-count-error"' in count and 'value="many"' in count
    assert 'parameter &#34;who&#34; is required by action &#34;forms.kinds&#34; (Whom to greet)' in _field(page, "who")
    assert "is not valid JSON (Expecting value at line 1 column 6)" in _field(page, "tags")
    assert 'value="1.5"' in _field(page, "ratio") and "invalid" not in _field(page, "ratio")
    assert "3 fields to correct" in page
    assert await web.squall.executions.list(action="forms.kinds") == []


async def test_a_value_the_service_refuses_comes_back_beside_its_field(web: Web) -> None:
    client, csrf = await web.signed_in("olga", "operator")
    refused = await client.post("/actions/forms.kinds", data={"csrf_token": csrf, "who": "ann",
                                                             "env": '{"BASH_ENV": "/tmp/evil"}'})
    assert refused.status_code == 400
    assert 'parameter &#34;env&#34;: BASH_ENV may not be set by a request' in _field(refused.text, "env")
    assert await web.squall.executions.list(action="forms.kinds") == []


async def test_a_good_run_opens_the_new_execution_from_the_web(web: Web) -> None:
    client, csrf = await web.signed_in("olga", "operator")
    done = await client.post("/actions/forms.kinds", data={
        "csrf_token": csrf, "who": "ann", "count": "3", "loud": "true", "colour": "red", "tags": '["x"]',
        "token": "hunter2", "labels": ""})
    assert done.status_code == 303
    execution_id = done.headers["location"].removeprefix("/executions/")
    record = await web.squall.executions.wait(execution_id, 30)
    assert record["status"] == "succeeded", record
    assert record["context"]["source"] == "web" and record["context"]["user"] == "olga"
    assert record["parameters"]["count"] == 3 and record["parameters"]["loud"] is True
    assert record["parameters"]["token"] != "hunter2"  # masked as the engine stores secrets
    assert record["result"]["stdout"].strip() == "ann x3 True red ['x']"
    (entry,) = await web.squall.db(web.squall.store.audit_list, 10, "web.execution.request")
    assert entry["actor"] == "olga" and entry["target"] == execution_id and entry["source"] == "web"
    page = await client.get(done.headers["location"])
    assert page.status_code == 200 and "olga" in page.text


async def test_a_parameter_of_several_types_runs_from_the_form_and_the_api(web: Web) -> None:
    """`type: [integer, "null"]` (a JSON schema type list): validated, never a 500."""
    client, csrf = await web.signed_in("olga", "operator")
    page = await client.get("/actions/forms.kinds")
    assert page.status_code == 200 and 'type="text"' in _field(page.text, "ni")
    done = await client.post("/actions/forms.kinds", data={"csrf_token": csrf, "who": "ann", "ni": "7"})
    assert done.status_code == 303
    record = await web.squall.executions.wait(done.headers["location"].removeprefix("/executions/"), 30)
    assert record["parameters"]["ni"] == 7
    wrong = await client.post("/actions/forms.kinds", data={"csrf_token": csrf, "who": "ann", "ni": "x"})
    assert wrong.status_code == 400
    assert "parameter &#34;ni&#34; = &#39;x&#39; breaks the rule type" in _field(wrong.text, "ni")
    for value, status in ((7, 201), (None, 201), ("x", 400)):
        answer = await client.post("/api/v1/executions", headers={"St2-Api-Key": "test-key-123"},
                                   json={"action": "forms.kinds", "parameters": {"who": "ann", "ni": value}})
        assert answer.status_code == status, (value, answer.text)
        if status == 201:
            assert (await web.squall.executions.wait(answer.json()["id"], 30))["parameters"].get("ni") == value
    assert answer.json()["faultstring"].startswith("parameter \"ni\" = 'x' breaks the rule type")


async def test_a_parameter_named_as_the_csrf_field_gets_its_own_input(web: Web) -> None:
    """A parameter called `csrf_token` would share its input's name with the page's token: it is
    sent as `p.csrf_token`, so the token still guards the post and the value reaches the action."""
    from bot.forms import PAGE_FIELDS
    from bot.web.session import CSRF_FIELD

    assert CSRF_FIELD in PAGE_FIELDS
    write(Path(web.squall.config.path).parent / "packs" / "forms" / "actions" / "clash.yaml", """
        name: clash
        runner_type: local-shell-cmd
        parameters:
          csrf_token: {type: string, required: true}
          cmd: {default: 'echo "got {{ csrf_token }}"', immutable: true}
    """)
    await web.squall.reload_packs()
    client, csrf = await web.signed_in("olga", "operator")
    form = (await client.get("/actions/forms.clash")).text
    assert 'name="p.csrf_token"' in form
    done = await client.post("/actions/forms.clash", data={"csrf_token": csrf, "p.csrf_token": "mine"})
    assert done.status_code == 303
    record = await web.squall.executions.wait(done.headers["location"].removeprefix("/executions/"), 30)
    assert record["result"]["stdout"].strip() == "got mine"


async def test_an_actions_description_is_text(web: Web) -> None:
    client, _ = await web.signed_in("vic", "viewer")
    for url in ("/actions", "/actions/forms.kinds"):
        page = (await client.get(url)).text
        assert "<script>alert" not in page, url
        assert "&lt;script&gt;alert(&#39;kinds&#39;)&lt;/script&gt;" in page, url


async def test_an_unknown_action_is_a_404_page(web: Web) -> None:
    client, csrf = await web.signed_in("olga", "operator")
    missing = await client.get("/actions/forms.nope")
    assert missing.status_code == 404 and 'action &#34;forms.nope&#34; not found' in missing.text
    assert (await client.post("/actions/forms.nope", data={"csrf_token": csrf})).status_code == 404


async def test_a_run_whose_audit_event_fails_is_not_stored(web: Web, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run form's request and its `web.execution.request` event are one transaction: an event the full
    disk cannot take leaves no execution that ran unaudited behind its error page."""
    client, csrf = await web.signed_in("olga", "operator")
    failing_audit(web.squall, monkeypatch, "web.execution.request", disk_full())
    answer = await client.post("/actions/forms.kinds", data={"csrf_token": csrf, "who": "ann"})
    assert answer.status_code == 503 and "database or disk is full" in answer.text
    assert await web.squall.executions.list(action="forms.kinds") == []
    monkeypatch.undo()
    done = await client.post("/actions/forms.kinds", data={"csrf_token": csrf, "who": "ann"})
    assert done.status_code == 303, done.text
    execution_id = done.headers["location"].removeprefix("/executions/")
    [entry] = await web.squall.db(web.squall.store.audit_list, 10, "web.execution.request")
    assert (entry["actor"], entry["target"]) == ("olga", execution_id)
    await web.squall.executions.wait(execution_id, 30)


async def test_a_multi_line_default_runs_as_written_from_the_form(web: Web) -> None:
    """A string whose default has several lines is a text area holding it (a text input's value loses
    its line breaks in the browser, and the run got the lines run together); what the browser sends
    back untouched, its line breaks as CR LF, runs with the default as written. A default that starts
    with a line break keeps it (the HTML parser drops one right after `<textarea>`)."""
    from tests.test_web_executions import browser_sends

    write(Path(web.squall.config.path).parent / "packs" / "forms" / "actions" / "note.yaml", """
        name: note
        runner_type: local-shell-cmd
        parameters:
          body: {type: string, default: "Dear team,\\nthe deploy is done.\\n"}
          lead: {type: string, default: "\\nindented"}
          cmd: {default: 'printf %s "{{ body }}"', immutable: true}
    """)
    await web.squall.reload_packs()
    client, csrf = await web.signed_in("olga", "operator")
    page = (await client.get("/actions/forms.note")).text
    for name in ("body", "lead"):
        assert "<textarea" in _field(page, name), name
    sent = {name: browser_sends(page, name) for name in ("body", "lead")}
    assert sent["body"] == "Dear team,\r\nthe deploy is done.\r\n"
    done = await client.post("/actions/forms.note", data={"csrf_token": csrf, **sent})
    assert done.status_code == 303, done.text
    record = await web.squall.executions.wait(done.headers["location"].removeprefix("/executions/"), 30)
    assert record["parameters"]["body"] == "Dear team,\nthe deploy is done.\n"
    assert record["parameters"]["lead"] == "\nindented"
    assert record["result"]["stdout"] == "Dear team,\nthe deploy is done."  # as stored: the last line break cut
    # Sent back with a field's error, the text area keeps the text (the other field refused).
    wrong = await client.post("/actions/forms.note", data={"csrf_token": csrf, **sent, "timeout": "soon"})
    assert wrong.status_code == 400 and browser_sends(wrong.text, "lead") == "\r\nindented"


async def test_a_negative_timeout_is_refused_beside_its_field(web: Web) -> None:
    """A negative `timeout` passed the run form (the runners' schemas set it no minimum) and was requested:
    the run ended `timeout` at once ("Action failed to complete in -5 seconds"). The form refuses it beside
    the field, naming the value and the least it may be, and says the range in the field's help; 0 runs (the
    runner's default applies). `core.http`'s own `timeout`, which its runner reads, is refused the same way."""
    from tests.test_web_executions import field_errors

    client, csrf = await web.signed_in("olga", "operator")
    assert "At least 0." in _field((await client.get("/actions/forms.kinds")).text, "timeout")
    for ref, wrong in (("forms.kinds", "-5"), ("core.http", "-0.5")):
        refused = await client.post(f"/actions/{ref}", data={
            "csrf_token": csrf, "who": "ann", "url": "http://127.0.0.1:9/", "timeout": wrong})
        assert refused.status_code == 400, refused.text
        said = field_errors(refused.text)
        assert list(said) == ["timeout"], said
        assert f"{wrong} is less than the minimum of 0" in said["timeout"]
        assert await web.squall.executions.list(action=ref) == []
    ran = await client.post("/actions/forms.kinds", data={"csrf_token": csrf, "who": "ann", "timeout": "0"})
    assert ran.status_code == 303, ran.text
    record = await web.squall.executions.wait(ran.headers["location"].removeprefix("/executions/"), 30)
    assert record["status"] == "succeeded" and record["parameters"]["timeout"] == 0


async def test_a_long_wrong_value_is_quoted_shortened_beside_its_field(web: Web) -> None:
    """A wrong value of a thousand characters was quoted whole in its field's message (twice, where
    jsonschema's words quote it again). It is quoted cut to its first 60 characters, ending with an
    ellipsis, as the chat shows a value it echoes (`bot.forms.short`); the rest of the message is the
    engine's. The value itself stays in the field, to correct."""
    from bot.forms import short
    from tests.test_web_executions import browser_form, field_errors

    client, csrf = await web.signed_in("olga", "operator")
    count, colour = "9" * 1000 + "x", "purple-" * 200  # under the test config's 4 KiB body
    refused = await client.post("/actions/forms.kinds", data={"csrf_token": csrf, "who": "ann", "count": count,
                                                             "colour": colour})
    assert refused.status_code == 400
    said = field_errors(refused.text)
    assert said["count"] == (f"""parameter "count": '{short(count, 60)}' is not an integer """
                             "(expected a whole number such as 5)")
    assert said["colour"] == (f"""parameter "colour" = '{short(colour, 60)}' breaks the rule enum: """
                              f"""'{short(colour, 60)}' is not one of ['red', 'green']""")
    kept = browser_form(refused.text, "/actions/forms.kinds")
    assert (kept["count"], kept["colour"]) == (count, colour)


async def test_a_refused_form_puts_the_focus_on_its_first_field_in_error(web: Web) -> None:
    """A refused form is a new page, whose focus started at its top: a keyboard or screen-reader user had
    to look for what was wrong. The first field in error takes the focus (`autofocus`), and no other."""
    client, csrf = await web.signed_in("olga", "operator")
    refused = await client.post("/actions/forms.kinds", data={"csrf_token": csrf, "who": "", "size": "50",
                                                             "count": "many"})
    assert refused.status_code == 400
    first = re.search(r'<(?:input|select|textarea)[^>]*aria-invalid="true"[^>]*>', refused.text)
    assert first is not None and re.search(r"\sautofocus[\s>]", first.group(0)), first
    assert refused.text.count("autofocus") == 1
    assert "autofocus" not in (await client.get("/actions/forms.kinds")).text


async def test_only_admins_run_the_actions_of_squall_s_own_packs(web: Web) -> None:
    """An operator, whom `/keys` refuses, set a key all the same from `/actions/squall.key_set`'s run form. The
    actions of the `squall` and `packs` packs are run (and re-run) from the web by admins only: an operator's
    list marks them, their pages offer no form and say why, and a post is refused (403, audited) with nothing
    run; every other action, `core.local` included, stays the operator's to run."""
    olga, csrf = await web.signed_in("olga", "operator")
    listed = (await olga.get("/actions")).text
    assert '<a href="/actions/squall.key_set">squall.key_set</a> <span class="status">(admins run it)</span>' in listed
    assert '<a href="/actions/core.local">core.local</a></td>' in listed
    page = (await olga.get("/actions/squall.key_set")).text
    assert 'action="/actions/squall.key_set"' not in page
    assert "needs the admin role; olga is a operator" in page
    refused = await olga.post("/actions/squall.key_set", data={"csrf_token": csrf, "name": "k1", "value": "v1"})
    assert refused.status_code == 403
    assert "Running squall.key_set, of the squall pack" in refused.text and "ask an admin" in refused.text
    assert await web.squall.executions.list(action="squall.key_set") == []
    [denied] = await web.squall.db(web.squall.store.audit_list, 10, "web.denied")
    assert denied["detail"]["needs"] == "admin" and denied["actor"] == "olga"
    ran = await olga.post("/actions/core.local", data={"csrf_token": csrf, "cmd": "true"})
    assert ran.status_code == 303

    ada, admin_csrf = await web.signed_in("ada", "admin")
    assert 'action="/actions/squall.key_set"' in (await ada.get("/actions/squall.key_set")).text
    assert "(admins run it)" not in (await ada.get("/actions")).text
    done = await ada.post("/actions/squall.key_set", data={"csrf_token": admin_csrf, "name": "k1", "value": "v1"})
    assert done.status_code == 303, done.text
    first = done.headers["location"].rsplit("/", 1)[1]
    assert (await web.squall.executions.wait(first, 30))["status"] == "succeeded"
    # Its re-run, too: no button for the operator, and the form and its post refused.
    assert "/rerun" not in (await olga.get(f"/executions/{first}")).text
    assert f'href="/executions/{first}/rerun"' in (await ada.get(f"/executions/{first}")).text
    assert (await olga.get(f"/executions/{first}/rerun")).status_code == 403
    assert (await olga.post(f"/executions/{first}/rerun", data={"csrf_token": csrf})).status_code == 403
    assert len(await web.squall.executions.list(action="squall.key_set")) == 1
