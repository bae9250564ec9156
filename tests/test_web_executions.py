"""The web UI's executions: keyset pages that visit every execution once, the list's filters, and an
execution's page (output and parameters always text, secrets masked, where it came from).

Most executions here are stored rows (times and contexts chosen by the test); the escaping tests run
real actions, so what they check is what an action really printed."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.web.executions import KEPT_SECRET, OUTPUT_PAGE
from engine.executions import new_id
from engine.parameters import MASK, ParameterError
from engine.storage import ExecutionFilter, Store
from tests.conftest import write
from tests.test_web_auth import Web, started_web

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
_LISTED_ID = re.compile(r'<a class="id" href="/executions/([0-9a-f]{24})">')


def stored(store: Store, start: datetime, *, action: str = "demo.greet", status: str = "succeeded",
           context: dict[str, Any] | None = None, parent: str | None = None) -> str:
    """An execution row as the engine writes one; its id."""
    execution_id = new_id()
    store.insert_execution({
        "id": execution_id, "action": action, "runner": "local-shell-cmd", "status": status, "parameters": {},
        "spec": {}, "sealed": None, "result": {"stdout": "ok"}, "context": context or {}, "log": [],
        "parent": parent, "runner_info": None, "start_timestamp": start,
        "end_timestamp": start + timedelta(seconds=2) if status == "succeeded" else None})
    return execution_id


def _walk(store: Store, where: ExecutionFilter, limit: int) -> list[list[str]]:
    """Every page of `where`, following each page's last id as the list's Older link does."""
    pages: list[list[str]] = []
    before = None
    while True:
        rows = store.execution_keyset(where, before=before, limit=limit)
        if not rows:
            return pages
        pages.append([r["id"] for r in rows])
        before = rows[-1]["id"]


# -- the store's keyset pages and filters ----------------------------------------------------------------

def test_keyset_pages_visit_every_execution_once_newest_first(database_url: str) -> None:
    store = Store.open(database_url)
    try:
        made = [(T0 + timedelta(seconds=i), stored(store, T0 + timedelta(seconds=i))) for i in range(60)]
        # Ten that started in the same microsecond: the id breaks the tie, so none is skipped or repeated.
        made += [(T0 + timedelta(seconds=30), stored(store, T0 + timedelta(seconds=30))) for _ in range(10)]
        stored(store, T0 + timedelta(seconds=90), parent=made[0][1])  # a workflow task: not a top-level row
        pages = _walk(store, ExecutionFilter(), 7)
        expected = [execution_id for _, execution_id in sorted(made, reverse=True)]
        assert [i for page in pages for i in page] == expected
        assert [len(p) for p in pages] == [7] * 10
        assert store.execution_keyset(ExecutionFilter(), before="f" * 24) == []  # an unknown id: nothing
        light = store.execution_keyset(ExecutionFilter(), limit=1)[0]
        assert "result" not in light and "parameters" not in light and light["context"] == {}
    finally:
        store.close()


def test_keyset_filters(database_url: str) -> None:
    store = Store.open(database_url)
    try:
        chat = stored(store, T0, context={"user": "alice", "source": "chat",
                                          "chat": {"adapter": "slack", "channel": "C1"}})
        api = stored(store, T0 + timedelta(minutes=1), action="core.local", status="failed",
                     context={"user": "ci", "source": "api"})
        rule = stored(store, T0 + timedelta(minutes=2), action="demonic.x",
                      context={"user": "squall", "rule": {"ref": "demo.on_build"},
                               "trigger_instance": {"id": "i1", "name": "core.st2.webhook"}})
        timer = stored(store, T0 + timedelta(minutes=3), context={
            "user": "squall", "rule": {"ref": "demo.hourly"},
            "trigger_instance": {"id": "i2", "name": "core.st2.IntervalTimer"}})

        def ids(**where: Any) -> set[str]:
            return {r["id"] for r in store.execution_keyset(ExecutionFilter(**where))}

        assert ids() == {chat, api, rule, timer}
        assert ids(pack="demo") == {chat, timer}  # not demonic.x: a pack is the text before the dot
        assert ids(action="core.local") == ids(status="failed") == ids(source="api") == {api}
        assert ids(user="alice") == ids(source="chat") == ids(channel="C1") == {chat}
        assert ids(channel="C2") == set()
        assert ids(rule=True) == {rule, timer}
        assert ids(triggers=("core.st2.IntervalTimer", "core.st2.CronTimer")) == {timer}
        assert ids(since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=3)) == {api, rule}
        assert ids(pack="demo", user="squall") == {timer}
    finally:
        store.close()


@pytest.mark.postgres
@pytest.mark.parametrize(("where", "index"), [(ExecutionFilter(user="carol"), "ix_executions_context_user"),
                                              (ExecutionFilter(source="chat"), "ix_executions_context_source")])
def test_postgresql_reads_a_user_or_source_filter_from_its_index(postgres_url: str, where: ExecutionFilter,
                                                                 index: str) -> None:
    """The list's query on PostgreSQL is written with the expressions its indexes are made of: with
    sequential scans priced out, the plan reads the index (a bound JSON key would match none)."""
    import sqlalchemy as sa
    from sqlalchemy.dialects import postgresql

    from engine import storage

    store = Store.open(postgres_url)
    try:
        statement = storage._narrowed(sa.select(storage.executions.c.id).order_by(
            storage.executions.c.start_timestamp.desc()), where).limit(51)
        query = str(statement.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
        with store.engine.connect() as conn:
            conn.execute(sa.text("SET enable_seqscan = off"))
            plan = "\n".join(row[0] for row in conn.execute(sa.text(f"EXPLAIN {query}")))
        assert index in plan, plan
    finally:
        store.close()


# -- the pages ---------------------------------------------------------------------------------------

@pytest.fixture
async def viewer(home: Path) -> AsyncIterator[tuple[Web, httpx.AsyncClient]]:
    async with started_web(home) as web:
        client, _ = await web.signed_in("vic", "viewer")
        yield web, client


def _listed(page: str) -> list[str]:
    return _LISTED_ID.findall(page)


async def test_the_list_pages_older_and_back_to_the_newest(viewer: tuple[Web, httpx.AsyncClient]) -> None:
    web, client = viewer
    store = web.squall.store
    made = [await web.squall.db(stored, store, T0 + timedelta(seconds=i)) for i in range(60)]
    first = await client.get("/executions")
    assert first.status_code == 200 and _listed(first.text) == made[::-1][:50]
    older = re.search(r'<a href="(/executions\?[^"]+)" rel="next">Older</a>', first.text)
    assert older and f"before={made[10]}" in older.group(1)
    second = await client.get(older.group(1).replace("&amp;", "&"))
    assert _listed(second.text) == made[::-1][50:]
    assert 'rel="next"' not in second.text and '<a href="/executions">Newest</a>' in second.text


def _paused(store: Store, start: datetime) -> str:
    """A workflow row paused on a question, as the engine writes one: with the pause's end time stored."""
    execution_id = new_id()
    store.insert_execution({
        "id": execution_id, "action": "wf.deploy", "runner": "orquesta", "status": "paused", "parameters": {},
        "spec": {}, "sealed": None, "result": None, "context": {}, "log": [], "parent": None, "runner_info": None,
        "start_timestamp": start, "end_timestamp": start + timedelta(seconds=3)})
    return execution_id


async def test_the_list_shows_took_only_for_ended_executions(viewer: tuple[Web, httpx.AsyncClient]) -> None:
    """A workflow paused on an inquiry has the pause's end time stored: the list said "Took 3.0 s" of it,
    as if it had ended. Like its page (`_execution_status.html`), the list shows the time taken once it ended."""
    web, client = viewer
    store = web.squall.store
    paused = await web.squall.db(_paused, store, T0)
    ended = await web.squall.db(stored, store, T0 + timedelta(seconds=1))
    page = (await client.get("/executions")).text
    cells = {execution_id: re.findall(r"<td>(.*?)</td>", row, re.S)
             for execution_id, row in re.findall(r'<tr id="row-([0-9a-f]{24})"[^>]*>(.*?)</tr>', page, re.S)}
    assert cells[ended][4] == "2.0 s"
    assert cells[paused][4] == ""


async def test_the_list_filters_as_a_get_form(viewer: tuple[Web, httpx.AsyncClient]) -> None:
    web, client = viewer
    store = web.squall.store
    chat = await web.squall.db(stored, store, T0, context={"user": "alice", "source": "chat",
                                                            "chat": {"adapter": "slack", "channel": "C42"}})
    failed = await web.squall.db(stored, store, T0 + timedelta(hours=1), action="core.local", status="failed")
    rule = await web.squall.db(stored, store, T0 + timedelta(hours=2),
                               context={"user": "squall", "rule": {"ref": "demo.on_build"}})
    assert _listed((await client.get("/executions", params={"status": "failed"})).text) == [failed]
    by_chat = await client.get("/executions", params={"source": "chat", "user": "alice"})
    assert _listed(by_chat.text) == [chat] and "chat slack C42" in by_chat.text
    assert 'value="alice"' in by_chat.text and '<option value="chat" selected>' in by_chat.text  # kept in the form
    assert _listed((await client.get("/executions", params={"source": "rule"})).text) == [rule]
    in_channel = await client.get("/executions", params={"channel": "C42"})
    assert _listed(in_channel.text) == [chat]
    assert 'id="f-channel" name="channel" type="text" value="C42"' in in_channel.text  # kept in the form
    ranged = await client.get("/executions", params={"from": "2026-03-01T12:30", "to": "2026-03-01T14:00",
                                                     "pack": "", "status": ""})
    assert _listed(ranged.text) == [failed]
    paged = await client.get("/executions", params={"pack": "demo", "before": rule})
    assert _listed(paged.text) == [chat]
    assert "pack=demo" in paged.text.split('>Newest</a>')[0].rsplit("<a", 1)[1]  # Newest keeps the filters
    for bad, said in (({"status": "bogus"}, "unknown status"), ({"source": "email"}, "unknown source"),
                      ({"from": "yesterday"}, "must be a date and time"), ({"before": "x"}, "execution id")):
        refused = await client.get("/executions", params=bad)
        assert refused.status_code == 400 and said in refused.text, bad


async def test_output_and_parameters_render_as_text(viewer: tuple[Web, httpx.AsyncClient]) -> None:
    web, client = viewer
    record = await web.squall.executions.request(
        "core.local", {"cmd": "echo '<script>alert(1)</script>'; echo '<img src=x onerror=alert(2)>' >&2"},
        {"user": "<b>mallory</b>", "source": "api"})
    await web.squall.executions.wait(record["id"], 30)
    page = (await client.get(f"/executions/{record['id']}")).text
    assert "<script>alert(1)" not in page and "<img src=x" not in page and "<b>mallory" not in page
    assert '<pre class="output output-stdout">&lt;script&gt;alert(1)&lt;/script&gt;</pre>' in page
    assert '<pre class="output output-stderr">&lt;img src=x onerror=alert(2)&gt;</pre>' in page
    assert "&lt;b&gt;mallory&lt;/b&gt;" in page
    assert "echo &#39;&lt;script&gt;alert(1)&lt;/script&gt;&#39;" in page  # the parameter, as JSON text


async def test_secret_parameters_stay_masked(viewer: tuple[Web, httpx.AsyncClient]) -> None:
    web, client = viewer
    record = await web.squall.executions.request("demo.greet", {"who": "<i>ann</i>", "password": "hunter2"},
                                                 {"user": "t", "source": "api"})
    await web.squall.executions.wait(record["id"], 30)
    page = (await client.get(f"/executions/{record['id']}")).text
    assert "hunter2" not in page and f"&#34;password&#34;: &#34;{MASK}&#34;" in page
    assert "&lt;i&gt;ann&lt;/i&gt;" in page and "<i>ann" not in page
    assert "hello &lt;i&gt;ann&lt;/i&gt;" in page and "oops" in page  # stdout and stderr both shown


async def test_where_an_execution_came_from(viewer: tuple[Web, httpx.AsyncClient]) -> None:
    web, client = viewer
    store = web.squall.store
    chat = await web.squall.db(stored, store, T0, context={
        "user": "alice", "source": "chat", "action_alias_ref": {"id": "demo.greet"},
        "chat": {"adapter": "slack", "channel": "C42", "thread": "1700.01", "alias": "demo.greet"}})
    rule = await web.squall.db(stored, store, T0, action="core.local", context={
        "user": "squall", "rule": {"ref": "demo.on_build"},
        "trigger_instance": {"id": "ti123", "name": "core.st2.webhook"}})
    task = await web.squall.db(stored, store, T0, parent=rule, context={"workflow_task": {"task": "build"}})

    def facts(page: str) -> dict[str, str]:
        return dict(re.findall(r"<dt>([^<]+)</dt>\s*<dd>(?:<a[^>]*>)?([^<]*)", page))

    assert facts((await client.get(f"/executions/{chat}")).text) | {"Id": "", "Started": "", "Ended": ""} == {
        "Id": "", "Runner": "local-shell-cmd", "Started": "", "Ended": "", "Took": "2.0 s",
        "Requested by": "alice", "Source": "chat", "Chat adapter": "slack", "Channel": "C42",
        "Thread": "1700.01", "Alias": "demo.greet"}
    rule_page = (await client.get(f"/executions/{rule}")).text
    assert facts(rule_page)["Rule"] == "demo.on_build"
    assert facts(rule_page)["Trigger instance"] == "ti123 (core.st2.webhook)"
    assert f'<a href="/executions/{task}">build</a>' in rule_page  # its tasks, each to its own page
    task_page = (await client.get(f"/executions/{task}")).text
    assert f'<a href="/executions/{rule}">{rule}</a>' in task_page and facts(task_page)["Task"] == "build"


async def test_an_unknown_execution_is_a_404_page(viewer: tuple[Web, httpx.AsyncClient]) -> None:
    _, client = viewer
    missing = await client.get("/executions/" + "0" * 24)
    assert missing.status_code == 404 and "not found" in missing.text and "<h1>Not found</h1>" in missing.text
    assert (await client.get("/executions/not-an-id")).status_code == 404


def _field_value(page: str, field: str) -> str:
    """The value the list's filter form shows in `field` (its input's `value` attribute)."""
    found = re.search(rf'<input id="f-{field}"[^>]* value="([^"]*)"', page)
    assert found is not None, f"no input f-{field} on the page"
    return found.group(1)


async def test_a_time_filter_from_the_url_shows_in_its_field_as_utc(viewer: tuple[Web, httpx.AsyncClient]) -> None:
    """A bookmarked `from` with a zone filters the list, and its `datetime-local` field shows the same
    time in UTC (the field's label), to the second: the field cannot take a zone, and a value it cannot
    take shows empty, so pressing Filter again would drop the filter without a word."""
    web, client = viewer
    early = await web.squall.db(stored, web.squall.store, T0)
    late = await web.squall.db(stored, web.squall.store, T0 + timedelta(hours=3))
    zoned = await client.get("/executions", params={"from": "2026-03-01T15:00:00+02:00", "to": "2026-03-01T15:30Z"})
    assert _listed(zoned.text) == [late]
    assert (_field_value(zoned.text, "from"), _field_value(zoned.text, "to")) == (
        "2026-03-01T13:00:00", "2026-03-01T15:30:00")
    local = await client.get("/executions", params={"from": "2026-03-01T11:59:59.750"})
    assert _listed(local.text) == [late, early]
    assert _field_value(local.text, "from") == "2026-03-01T11:59:59"  # the field's step is a second
    assert "from=2026-03-01T11%3A59%3A59.750" in local.text  # the link to the stream keeps the query's own
    assert _field_value((await client.get("/executions")).text, "from") == ""


async def test_a_time_filter_past_the_years_a_time_can_have_is_a_400_naming_the_field(
        viewer: tuple[Web, httpx.AsyncClient]) -> None:
    """`9999-12-31T23:59:59-05:00` is a valid ISO 8601 time whose UTC instant is past year 9999 (and
    `0001-01-01T00:00+01:00` one before year 1): converting it overflowed, a bare 500. It is a 400 page
    that names the field and says what a time looks like, as any other bad time is."""
    _, client = viewer
    for name, value in (("to", "9999-12-31T23:59:59-05:00"), ("from", "0001-01-01T00:00+01:00")):
        refused = await client.get("/executions", params={name: value})
        assert refused.status_code == 400, (name, value, refused.status_code)
        assert f"&#39;{name}&#39; must be a date and time such as 2026-01-31T14:00" in refused.text
        assert value in refused.text and "years 1 to 9999" in refused.text


# -- an ended execution's output -------------------------------------------------------------------

def _ended_with_output(store: Store, status: str, result: dict[str, Any] | None,
                       printed: list[tuple[str, str]]) -> str:
    """An execution that ended `status` with `result` after printing `printed` ((stream, text) chunks,
    stored as `engine/output.py` stores them while it runs); its id."""
    execution_id = stored(store, T0, action="core.local", status=status)
    store.update_execution(execution_id, {"result": result, "end_timestamp": T0 + timedelta(seconds=5)})
    if printed:
        store.execution_output_add([{"execution_id": execution_id, "stream": stream, "data": data,
                                     "timestamp": T0 + timedelta(seconds=1)} for stream, data in printed])
    return execution_id


def _shown(page: str, stream: str) -> str | None:
    """The text of the page's `stream` output, None when it shows none."""
    found = re.search(rf'<pre class="output output-{stream}">(.*?)</pre>', page, re.S)
    return found.group(1) if found else None


async def test_an_execution_that_ended_without_its_output_in_the_result_shows_what_it_printed(
        viewer: tuple[Web, httpx.AsyncClient]) -> None:
    """A run canceled or abandoned (or one whose result holds no stdout or stderr) keeps on its page the
    output it printed while it ran, read from where the live page read it (`execution_output`): the
    page showed it live, and lost it at the reload once it had ended. A result's own output still wins
    when the run ended on its own."""
    web, client = viewer
    store = web.squall.store
    printed = [("stdout", "line 1\n"), ("stderr", "\x1b[31mwarn\x1b[0m\n"), ("stdout", "line <2>\n")]
    for status, result in (("canceled", {"error": "canceled by vic"}), ("abandoned", {"error": "lost"}),
                           ("failed", {"error": "the runner died"}), ("canceled", None)):
        execution_id = await web.squall.db(_ended_with_output, store, status, result, printed)
        page = (await client.get(f"/executions/{execution_id}")).text
        assert "sse-connect" not in page, status  # ended: not followed
        assert _shown(page, "stdout") == "line 1\nline &lt;2&gt;\n", (status, result)
        assert _shown(page, "stderr") == '<span class="ansi-red">warn</span>\n', (status, result)
    own = await web.squall.db(_ended_with_output, store, "succeeded", {"stdout": "from the result", "stderr": ""},
                              [("stdout", "chunk\n")])
    page = (await client.get(f"/executions/{own}")).text
    assert _shown(page, "stdout") == "from the result" and _shown(page, "stderr") is None
    bare = await web.squall.db(_ended_with_output, store, "canceled", {"stdout": "kept in the result"}, [])
    assert _shown((await client.get(f"/executions/{bare}")).text, "stdout") == "kept in the result"
    many = [("stdout", f"{n}\n") for n in range(2 * OUTPUT_PAGE + 1)]  # read in pages: all of it shown
    long = await web.squall.db(_ended_with_output, store, "abandoned", {"error": "lost"}, many)
    assert _shown((await client.get(f"/executions/{long}")).text, "stdout") == "".join(text for _, text in many)


async def test_a_canceled_run_s_page_keeps_the_lines_it_printed(viewer: tuple[Web, httpx.AsyncClient]) -> None:
    """A real run canceled after printing: its page, loaded once it has ended, shows those lines."""
    web, client = viewer
    record = await web.squall.executions.request("core.local", {"cmd": "echo 'line 1'; echo 'line 2' >&2; sleep 30"},
                                                 {"user": "t", "source": "api"})
    deadline = asyncio.get_running_loop().time() + 30
    while len(await web.squall.db(web.squall.store.execution_output_list, record["id"])) < 2:
        assert asyncio.get_running_loop().time() < deadline, "the run printed nothing"
        await asyncio.sleep(0.05)
    await web.squall.executions.cancel(record["id"])
    ended = await web.squall.executions.wait(record["id"], 30)
    assert ended["status"] == "canceled" and not (ended["result"] or {}).get("stdout")
    page = (await client.get(f"/executions/{record['id']}")).text
    assert _shown(page, "stdout") == "line 1\n" and _shown(page, "stderr") == "line 2\n"


# -- re-run: values as the browser sends them back -----------------------------------------------------

def browser_sends(page: str, name: str) -> str:
    """The text a browser sends for the form field `name` left as the page shows it. A text input's
    value loses its line breaks (HTML's value sanitization). A textarea's text is read as the HTML parser
    reads it: CR LF and CR become LF, then one line break right after `<textarea ...>` is dropped, then
    character references are decoded; and each of its line breaks is sent as CR LF."""
    field = re.escape(name)
    area = re.search(rf'<textarea[^>]* name="{field}"[^>]*>(.*?)</textarea>', page, re.S)
    if area is not None:
        source = re.sub(r"\r\n?", "\n", area.group(1)).removeprefix("\n")
        return re.sub(r"\r\n|\r|\n", "\r\n", html.unescape(source))
    box = re.search(rf'<input[^>]* name="{field}"[^>]* value="([^"]*)"', page)
    assert box is not None, f"no field {name} on the page"
    return re.sub(r"[\r\n]", "", html.unescape(box.group(1)))


class _Controls(HTMLParser):
    """The controls of one form as a browser reads them (`browser_form`, `widgets`)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sent: list[tuple[str, str]] = []  # in document order, as the browser sends them
        self.widgets: dict[str, tuple[str, str]] = {}  # each name's first control: (tag, type)
        self._area: tuple[str, list[str]] | None = None
        self._select: tuple[str, list[tuple[str, bool]]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        given = {key: value or "" for key, value in attrs}
        name = given.get("name")
        if tag == "input" and name is not None:
            kind = given.get("type", "text")
            self.widgets.setdefault(name, (tag, kind))
            if kind not in ("checkbox", "radio"):
                self.sent.append((name, re.sub(r"[\r\n]", "", given.get("value", ""))))
            elif "checked" in given:
                self.sent.append((name, given.get("value", "on")))
        elif tag == "textarea" and name is not None:
            self.widgets.setdefault(name, (tag, ""))
            self._area = (name, [])
        elif tag == "select" and name is not None:
            self.widgets.setdefault(name, (tag, ""))
            self._select = (name, [])
        elif tag == "option" and self._select is not None:
            self._select[1].append((given.get("value", ""), "selected" in given))

    def handle_data(self, data: str) -> None:
        if self._area is not None:
            self._area[1].append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "textarea" and self._area is not None:
            text = re.sub(r"\r\n?", "\n", "".join(self._area[1])).removeprefix("\n")
            self.sent.append((self._area[0], text.replace("\n", "\r\n")))
            self._area = None
        elif tag == "select" and self._select is not None:
            name, options = self._select
            chosen = [value for value, selected in options if selected] or [value for value, _ in options[:1]]
            self.sent += [(name, value) for value in chosen[:1]]
            self._select = None


def _controls(page: str, action: str) -> _Controls:
    start = page.rindex("<form", 0, page.index(f'action="{action}"'))
    controls = _Controls()
    controls.feed(page[start:page.index("</form>", start)])
    return controls


def browser_form(page: str, action: str) -> dict[str, str]:
    """What a browser sends for the form posting to `action` on `page`, left as shown: text inputs (their
    line breaks lost), text areas as `browser_sends` reads them, ticked boxes and chosen buttons only, each
    select's chosen option (else its first); the first value of each name, as the server reads it."""
    sent: dict[str, str] = {}
    for name, value in _controls(page, action).sent:
        sent.setdefault(name, value)
    return sent


def widgets(page: str, action: str) -> dict[str, tuple[str, str]]:
    """The control each field of the form posting to `action` is drawn with: (tag, input type)."""
    return _controls(page, action).widgets


def field_errors(page: str) -> dict[str, str]:
    """The message shown beside each field of a form drawn by form_fields.html, by field."""
    return {name: html.unescape(text)
            for name, text in re.findall(r'<p id="p-([^"]+)-error" class="field-error">(.*?)</p>', page, re.S)}


@pytest.fixture
async def operator(home: Path) -> AsyncIterator[tuple[Web, httpx.AsyncClient, str]]:
    async with started_web(home) as web:
        client, csrf = await web.signed_in("otto", "operator")
        yield web, client, csrf


@pytest.mark.parametrize("cmd", ["set -e\necho deployed", "\necho deployed", "echo deployed\r\n", "echo one\rtrue"])
async def test_a_rerun_left_as_shown_keeps_a_multi_line_value(operator: tuple[Web, httpx.AsyncClient, str],
                                                              cmd: str) -> None:
    """Run again untouched, a value with line breaks is the original's: browsers send a textarea's line
    breaks as CR LF (`set -e` then read `-\\r` and was off), and the HTML parser drops a line break right
    after `<textarea>` (a value starting with one lost it); a CR alone in a text input was dropped."""
    web, client, csrf = operator
    first = await web.squall.executions.request("core.local", {"cmd": cmd}, {"user": "t", "source": "api"})
    await web.squall.executions.wait(first["id"], 30)
    form = (await client.get(f"/executions/{first['id']}/rerun")).text
    answer = await client.post(f"/executions/{first['id']}/rerun",
                               data={"csrf_token": csrf, "cmd": browser_sends(form, "cmd")})
    assert answer.status_code == 303, answer.text
    again = await web.squall.executions.wait(answer.headers["location"].rsplit("/", 1)[1], 30)
    assert again["parameters"]["cmd"] == cmd
    [entry] = await web.squall.db(web.squall.store.audit_list, 10, "web.execution.rerun")
    assert entry["detail"]["changed"] == []


async def test_an_edited_multi_line_rerun_value_is_sent_with_lf_line_breaks(
        operator: tuple[Web, httpx.AsyncClient, str]) -> None:
    """An edited value arrives with the browser's CR LF line breaks; the action gets LF, as typed."""
    web, client, csrf = operator
    first = await web.squall.executions.request("core.local", {"cmd": "set -e\necho deployed"},
                                                {"user": "t", "source": "api"})
    await web.squall.executions.wait(first["id"], 30)
    answer = await client.post(f"/executions/{first['id']}/rerun",
                               data={"csrf_token": csrf, "cmd": "set -e\r\necho changed\r\n"})
    assert answer.status_code == 303, answer.text
    again = await web.squall.executions.wait(answer.headers["location"].rsplit("/", 1)[1], 30)
    assert again["parameters"]["cmd"] == "set -e\necho changed\n"
    assert again["status"] == "succeeded" and again["result"]["stdout"] == "changed"
    [entry] = await web.squall.db(web.squall.store.audit_list, 10, "web.execution.rerun")
    assert entry["detail"]["changed"] == ["cmd"]


async def test_a_rerun_form_moved_to_another_host_asks_for_the_credentials_again(
        operator: tuple[Web, httpx.AsyncClient, str]) -> None:
    """otto opened the re-run form of someone's `core.http` request, changed only `url` to another host and
    left the masked headers and the empty password as shown: that host got the real `X-Api-Key` and the
    password. The form comes back saying what to give again; given, or to the same host, it runs."""
    import base64

    from tests.test_http_secret_headers import _echo_server

    web, client, _ = operator
    with _echo_server() as (url, seen):
        first = await web.squall.executions.request("core.http", {
            "url": url, "headers": {"X-Api-Key": "key-of-alice-0001", "Accept": "text/plain"},
            "username": "alice", "password": "pw-of-alice-0002"}, {"user": "alice", "source": "api"})
        assert (await web.squall.executions.wait(first["id"], 30))["status"] == "succeeded"
        moved = url.replace("127.0.0.1", "localhost")
        rerun = f"/executions/{first['id']}/rerun"
        sent = browser_form((await client.get(rerun)).text, rerun)  # its verify_ssl_cert box ticked
        refused = await client.post(rerun, data={**sent, "url": moved})
        assert refused.status_code == 400, refused.text
        shown = html.unescape(refused.text)
        assert "give headers.X-Api-Key, password again" in shown, shown
        assert "key-of-alice-0001" not in shown and "pw-of-alice-0002" not in shown
        assert len(seen) == 1 and len(await web.squall.executions.list(action="core.http")) == 1

        typed = await client.post(f"/executions/{first['id']}/rerun", data={
            **sent, "url": moved, "headers": '{"X-Api-Key": "key-of-otto-0003"}',
            "password": "pw-of-otto-0004"})
        assert typed.status_code == 303, typed.text
        await web.squall.executions.wait(typed.headers["location"].rsplit("/", 1)[1], 30)
        assert seen[-1]["X-Api-Key"] == "key-of-otto-0003"
        assert seen[-1]["Authorization"] == "Basic " + base64.b64encode(b"alice:pw-of-otto-0004").decode()

        same = await client.post(f"/executions/{first['id']}/rerun", data={**sent, "url": url + "?2"})
        assert same.status_code == 303, same.text
        await web.squall.executions.wait(same.headers["location"].rsplit("/", 1)[1], 30)
        assert seen[-1]["X-Api-Key"] == "key-of-alice-0001"  # the same host: the original's, as before
        assert seen[-1]["Authorization"] == "Basic " + base64.b64encode(b"alice:pw-of-alice-0002").decode()


#: An action with a parameter of each kind the run form draws differently, for the re-run form to match.
TYPES = """
    name: types
    runner_type: local-shell-cmd
    parameters:
      name: {type: string, required: true}
      size: {type: integer, default: 3, minimum: 1, maximum: 10}
      items: {type: array, default: [a]}
      must: {type: boolean, required: true}
      careful: {type: boolean, required: true, default: false}
      loud: {type: boolean, default: false}
      color: {type: string, enum: [red, green, blue], default: red}
      pin: {type: integer, secret: true, description: The door's PIN}
      cmd:
        default: >-
          echo "name=[{{name}}] size={{size}} must={{must}} loud={{loud}} color={{color}}";
          test "{{pin}}" = 4711 && echo pin kept
        immutable: true
"""


@pytest.fixture
async def typed(home: Path) -> AsyncIterator[tuple[Web, httpx.AsyncClient, str]]:
    """otto, an operator, and a run of `demo.types` that gave every parameter but `items`; its id."""
    write(home / "packs" / "demo" / "actions" / "types.yaml", TYPES)
    async with started_web(home) as web:
        client, _ = await web.signed_in("otto", "operator")
        first = await web.squall.executions.request("demo.types", {
            "name": "n1", "size": 4, "must": True, "loud": True, "color": "green", "pin": 4711},
            {"user": "t", "source": "api"})
        ended = await web.squall.executions.wait(first["id"], 30)
        assert ended["status"] == "succeeded" and "pin kept" in ended["result"]["stdout"], ended["result"]
        yield web, client, first["id"]


async def _reruns(web: Web) -> list[dict[str, Any]]:
    return await web.squall.executions.list(action="demo.types", limit=10)


async def test_the_rerun_form_draws_each_parameter_as_the_run_form_does(
        typed: tuple[Web, httpx.AsyncClient, str]) -> None:
    """Booleans, enums and numbers were free-text boxes of JSON on the re-run form: now each field is the run
    form's control, filled with the execution's value; a secret it was given is empty and says that left so
    it keeps the original's. Sent as shown but for a box unticked, a yes/no answered no and another choice,
    the re-run has those and the rest of the original's, its secret too."""
    web, client, first = typed
    rerun, run = f"/executions/{first}/rerun", "/actions/demo.types"
    form = (await client.get(rerun)).text
    assert widgets(form, rerun) == widgets((await client.get(run)).text, run)
    assert widgets(form, rerun)["must"] == ("input", "radio") and widgets(form, rerun)["loud"] == ("input", "checkbox")
    assert widgets(form, rerun)["color"] == ("select", "") and widgets(form, rerun)["pin"] == ("input", "password")
    sent = browser_form(form, rerun)
    assert {name: sent.get(name) for name in ("name", "size", "must", "careful", "loud", "color", "pin")} == {
        "name": "n1", "size": "4", "must": "true", "careful": "false", "loud": "true", "color": "green", "pin": ""}
    assert "4711" not in form and KEPT_SECRET in html.unescape(form)
    assert 'name="pin" required' not in form  # left empty, the original's is kept: nothing to fill in
    del sent["loud"]  # unticked: a browser sends nothing
    answer = await client.post(rerun, data={**sent, "must": "false", "color": "blue"})
    assert answer.status_code == 303, answer.text
    again = await web.squall.executions.wait(answer.headers["location"].rsplit("/", 1)[1], 30)
    assert again["result"]["stdout"] == "name=[n1] size=4 must=False loud=False color=blue\npin kept"
    [entry] = await web.squall.db(web.squall.store.audit_list, 10, "web.execution.rerun")
    assert entry["detail"]["changed"] == ["color", "loud", "must"]  # not `careful`: not given, its "no" as shown


async def test_the_rerun_form_names_every_wrong_field_at_once_in_the_run_form_s_words(
        typed: tuple[Web, httpx.AsyncClient, str]) -> None:
    """The re-run form stopped at the first wrong field and said it as a JSON parser would ("must be JSON
    ...: Expecting value"): it says what the run form says of the same values, beside each field, and keeps
    what was typed there to correct; nothing runs."""
    web, client, first = typed
    rerun, run = f"/executions/{first}/rerun", "/actions/demo.types"
    wrong = {"size": "abc", "items": "[1,", "must": "maybe", "color": "purple"}
    refused = await client.post(rerun, data={**browser_form((await client.get(rerun)).text, rerun), **wrong})
    ran = await client.post(run, data={**browser_form((await client.get(run)).text, run), "name": "n1", **wrong})
    assert refused.status_code == ran.status_code == 400
    said = field_errors(refused.text)
    assert said == field_errors(ran.text) and set(said) == set(wrong)
    assert said["size"] == """parameter "size": 'abc' is not an integer (expected a whole number such as 5)"""
    assert "4 fields to correct" in refused.text
    kept = browser_form(refused.text, rerun)
    assert (kept["size"], kept["items"], kept["pin"]) == ("abc", "[1,", "")
    assert [e["id"] for e in await _reruns(web)] == [first]


async def test_a_required_field_emptied_on_the_rerun_form_is_refused_and_an_optional_one_gets_its_default(
        typed: tuple[Web, httpx.AsyncClient, str]) -> None:
    """`name` emptied ran the action with `name=[]`; the run form refuses it as required, and so does the
    re-run form now, in its words. An optional field emptied is not given: its default applies, as on the
    run form, not the original's value."""
    web, client, first = typed
    rerun, run = f"/executions/{first}/rerun", "/actions/demo.types"
    sent = browser_form((await client.get(rerun)).text, rerun)
    refused = await client.post(rerun, data={**sent, "name": ""})
    ran = await client.post(run, data={**browser_form((await client.get(run)).text, run), "must": "true"})
    assert refused.status_code == ran.status_code == 400
    assert field_errors(refused.text) == field_errors(ran.text) == {
        "name": 'parameter "name" is required by action "demo.types"'}
    assert [e["id"] for e in await _reruns(web)] == [first]
    defaulted = await client.post(rerun, data={**sent, "size": ""})
    assert defaulted.status_code == 303, defaulted.text
    again = await web.squall.executions.wait(defaulted.headers["location"].rsplit("/", 1)[1], 30)
    assert again["result"]["stdout"] == "name=[n1] size=3 must=True loud=True color=green\npin kept"


async def test_a_secret_typed_wrong_on_the_rerun_form_is_not_quoted_back(
        typed: tuple[Web, httpx.AsyncClient, str]) -> None:
    """The re-run page comes back with the refusal: a secret field's text (an integer PIN mistyped) is in it
    nowhere, as on the run form and in the engine's errors (`********`); typed right, it replaces the
    original's."""
    web, client, first = typed
    rerun = f"/executions/{first}/rerun"
    sent = browser_form((await client.get(rerun)).text, rerun)
    refused = await client.post(rerun, data={**sent, "pin": "x-787878"})
    assert refused.status_code == 400 and "787878" not in refused.text
    assert field_errors(refused.text) == {
        "pin": f'parameter "pin": {MASK} is not an integer (expected a whole number such as 5)'}
    answer = await client.post(rerun, data={**sent, "pin": "4712"})
    assert answer.status_code == 303, answer.text
    again = await web.squall.executions.wait(answer.headers["location"].rsplit("/", 1)[1], 30)
    assert "pin kept" not in again["result"]["stdout"] and again["parameters"]["pin"] == MASK


async def test_a_rerun_shows_the_original_s_value_that_is_no_longer_a_choice(
        typed: tuple[Web, httpx.AsyncClient, str], home: Path) -> None:
    """`blue` was taken out of `color`'s choices after a run with it: the re-run form's select could not show
    it, showed the first choice instead and, left as shown, sent it, so the re-run ran with `red` unasked.
    The form shows the original's value chosen, marked, and says beside the field that it is no longer one of
    the choices; sent as shown it is refused beside the field in the engine's words, and nothing runs."""
    web, client, _ = typed
    blue = await web.squall.executions.request("demo.types", {"name": "n1", "must": True, "color": "blue"},
                                               {"user": "t", "source": "api"})
    await web.squall.executions.wait(blue["id"], 30)
    write(home / "packs" / "demo" / "actions" / "types.yaml", TYPES.replace("[red, green, blue]", "[red, green]"))
    await web.squall.reload_packs()
    rerun = f"/executions/{blue['id']}/rerun"
    form = (await client.get(rerun)).text
    sent = browser_form(form, rerun)
    assert sent["color"] == "blue"
    note = re.search(r'<p id="p-color-unlisted"[^>]*>(.*?)</p>', form, re.S)
    assert note is not None and "“blue” is no longer one of the choices" in html.unescape(note.group(1))
    assert re.search(r'<select id="p-color"[^>]* aria-describedby="[^"]*p-color-unlisted', form)
    assert re.search(r'<option value="blue" selected>blue \(no longer one of the choices\)</option>', form)
    before = {e["id"] for e in await _reruns(web)}
    refused = await client.post(rerun, data=sent)
    assert refused.status_code == 400, refused.text
    assert "'blue' is not one of ['red', 'green']" in field_errors(refused.text)["color"]
    assert {e["id"] for e in await _reruns(web)} == before
    chosen = await client.post(rerun, data={**sent, "color": "red"})
    assert chosen.status_code == 303, chosen.text
    again = await web.squall.executions.wait(chosen.headers["location"].rsplit("/", 1)[1], 30)
    assert again["parameters"]["color"] == "red"


async def test_a_rerun_drops_a_parameter_the_action_no_longer_has_and_says_so(
        typed: tuple[Web, httpx.AsyncClient, str], home: Path) -> None:
    """`note` was taken out of the action after a run given it: the re-run form, which has no field for it,
    was refused `unknown parameter "note"` with no way to take it out. The form says beside it that it is not
    sent, and the re-run runs without it; the API's re-run still refuses it, as StackStorm's does."""
    web, client, _ = typed
    write(home / "packs" / "demo" / "actions" / "types.yaml", TYPES + "      note: {type: string}\n")
    await web.squall.reload_packs()
    noted = await web.squall.executions.request("demo.types", {"name": "n1", "must": True, "note": "hi"},
                                                {"user": "t", "source": "api"})
    await web.squall.executions.wait(noted["id"], 30)
    write(home / "packs" / "demo" / "actions" / "types.yaml", TYPES)
    await web.squall.reload_packs()
    rerun = f"/executions/{noted['id']}/rerun"
    form = (await client.get(rerun)).text
    assert "note: no longer a parameter of demo.types; not sent." in html.unescape(form)
    answer = await client.post(rerun, data=browser_form(form, rerun))
    assert answer.status_code == 303, answer.text
    again = await web.squall.executions.wait(answer.headers["location"].rsplit("/", 1)[1], 30)
    assert "note" not in again["parameters"] and again["parameters"]["name"] == "n1"
    assert again["result"]["stdout"].startswith("name=[n1]")
    [entry] = await web.squall.db(web.squall.store.audit_list, 10, "web.execution.rerun")
    assert entry["detail"]["dropped"] == ["note"]
    with pytest.raises(ParameterError, match='unknown parameter "note"'):
        await web.squall.executions.rerun(noted["id"], {}, {"user": "t", "source": "api"})


async def test_a_negative_timeout_typed_on_the_rerun_form_is_refused_beside_it(
        typed: tuple[Web, httpx.AsyncClient, str]) -> None:
    """The re-run form asks with the run form's fields: a negative `timeout`, which ended the run `timeout`
    at once, is refused beside the field, named with the least it may be, as the run form refuses it."""
    web, client, first = typed
    rerun = f"/executions/{first}/rerun"
    refused = await client.post(rerun, data={**browser_form((await client.get(rerun)).text, rerun), "timeout": "-3"})
    assert refused.status_code == 400
    said = field_errors(refused.text)
    assert list(said) == ["timeout"] and "-3 is less than the minimum of 0" in said["timeout"]
    assert [e["id"] for e in await _reruns(web)] == [first]


async def test_a_refusal_naming_no_field_puts_the_focus_on_the_summary(
        operator: tuple[Web, httpx.AsyncClient, str]) -> None:
    """A refusal that names no field (a re-run moved to another host, which must be given its credentials
    again) comes back as a new page with the focus at its top: the summary takes it (`autofocus`, focusable
    by `tabindex="-1"`), so it is read first; no field does."""
    web, client, _ = operator
    first = await web.squall.executions.request("core.http", {
        "url": "http://127.0.0.1:9/", "headers": {"X-Api-Key": "key-of-alice-0001"}},
        {"user": "alice", "source": "api"})
    await web.squall.executions.wait(first["id"], 30)
    rerun = f"/executions/{first['id']}/rerun"
    refused = await client.post(rerun, data={**browser_form((await client.get(rerun)).text, rerun),
                                             "url": "http://localhost:9/"})
    assert refused.status_code == 400 and field_errors(refused.text) == {}
    summary = re.search(r'<div class="error" role="alert"([^>]*)>(.*?)</div>', refused.text, re.S)
    assert summary is not None and "again" in summary.group(2)
    assert 'tabindex="-1"' in summary.group(1) and "autofocus" in summary.group(1)
    assert refused.text.count("autofocus") == 1
