"""The web UI's live execution pages: output streamed while the action runs (over a real server, so
"before it ends" means something), colours and `<script>` always as escaped text, the list's live
rows, a workflow's graph with each task's status, re-run with an edited parameter, bulk cancel, and
who may do either (a viewer may not; a post without the session's CSRF token is refused)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from bot.accounts import Account, Session, close_sessions, delete_user, hash_password, open_session, set_password
from bot.http import ApiServer
from bot.web import graph, live
from bot.web import session as sessions
from bot.web.ansi import AnsiRenderer, render
from engine.storage import ExecutionFilter, utcnow
from tests.conftest import free_port, write
from tests.test_api import KEY, disk_full, failing_audit
from tests.test_web_auth import PASSWORD, Web, login, started_web
from tests.test_web_executions import browser_form, field_errors, widgets


def _demo_workflows(home: Path) -> None:
    """Orquesta workflows (one waits on an inquiry), an ActionChain and a Mistral workflow in the demo
    pack that `started_web` completes."""
    pack = home / "packs" / "demo"
    write(pack / "actions" / "flow.yaml", """
        name: flow
        runner_type: orquesta
        entry_point: workflows/flow.yaml
    """)
    write(pack / "actions" / "workflows" / "flow.yaml", """
        version: 1.0
        tasks:
          first:
            action: core.local cmd="echo one"
            next:
              - when: <% succeeded() %>
                do: second
              - when: <% failed() %>
                do: cleanup
          second:
            action: core.noop
          cleanup:
            action: core.noop
    """)
    write(pack / "actions" / "chain.yaml", """
        name: chain
        runner_type: action-chain
        entry_point: chains/chain.yaml
    """)
    write(pack / "actions" / "chains" / "chain.yaml", """
        chain:
          - name: build
            ref: core.noop
            on-success: ship
            on-failure: alert
          - name: ship
            ref: core.noop
          - name: alert
            ref: core.noop
    """)
    write(pack / "actions" / "outer.yaml", """
        name: outer
        runner_type: orquesta
        entry_point: workflows/outer.yaml
    """)
    write(pack / "actions" / "workflows" / "outer.yaml", """
        version: 1.0
        tasks:
          inner:
            action: demo.flow
            next:
              - do: last
          last:
            action: core.noop
    """)
    write(pack / "actions" / "ask.yaml", """
        name: ask
        runner_type: orquesta
        entry_point: workflows/ask.yaml
    """)
    write(pack / "actions" / "workflows" / "ask.yaml", """
        version: 1.0
        tasks:
          approve:
            action: core.ask
            input:
              schema:
                type: object
                properties:
                  approved: {type: boolean, required: true}
    """)
    write(pack / "actions" / "legacy.yaml", """
        name: legacy
        runner_type: mistral-v2
        entry_point: workflows/legacy.yaml
    """)
    write(pack / "actions" / "workflows" / "legacy.yaml", """
        version: '2.0'
        demo.legacy:
          tasks:
            check:
              action: core.noop
              on-success: [deploy]
              on-error: [page]
              on-complete: [report]
            deploy:
              action: core.noop
            page:
              action: core.noop
            report:
              action: core.noop
    """)


@pytest.fixture
async def web(home: Path) -> AsyncIterator[Web]:
    _demo_workflows(home)
    async with started_web(home) as started:
        yield started


async def _running(web: Web, cmd: str = "sleep 30") -> str:
    record = await web.squall.executions.request("core.local", {"cmd": cmd}, {"user": "t", "source": "api"})
    for _ in range(500):
        if (await web.squall.executions.get(record["id"]))["status"] == "running":
            return record["id"]
        await asyncio.sleep(0.01)
    raise AssertionError(f"{record['id']} never ran")


async def _stored_session(web: Web, account: Account) -> Session:
    """A session as a login stores it (of an existing account): a stream looks at its session again."""
    _token, session = await web.squall.db(open_session, web.squall.store, account)
    return session


# -- output as text ---------------------------------------------------------------------------------

def test_ansi_colours_become_classes_and_text_stays_escaped() -> None:
    html = render("\x1b[1;31m<script>alert(1)</script>\x1b[0m & \x1b]0;title\x07\x1b[2Kplain\x1b[38;5;12mblue")
    assert html == ('<span class="ansi-red ansi-bold">&lt;script&gt;alert(1)&lt;/script&gt;</span> &amp; plain'
                    '<span class="ansi-blue-bright">blue</span>')
    renderer = AnsiRenderer()  # an escape sequence cut between two chunks, and the colour carried over
    assert renderer.feed("a \x1b[3") == "a "
    assert renderer.feed("2mgreen\n") == '<span class="ansi-green">green\n</span>'
    assert renderer.feed("still") == '<span class="ansi-green">still</span>'


def test_reverse_video_swaps_the_colours_until_27_or_0() -> None:
    """SGR 7 shows the text in the background's colour on the text's colour (27 or 0 ends it); with
    no colour given, on the default text colour (`ansi-reverse`)."""
    assert render("\x1b[7mrev\x1b[27m plain") == '<span class="ansi-reverse">rev</span> plain'
    assert render("\x1b[31;42;7mboth\x1b[0mx") == '<span class="ansi-green ansi-bg-red">both</span>x'
    assert render("\x1b[31;7mred\x1b[27mback") == ('<span class="ansi-bg-red">red</span>'
                                                  '<span class="ansi-red">back</span>')
    assert render("\x1b[44;1;7mon blue") == '<span class="ansi-blue ansi-reverse ansi-bold">on blue</span>'


# -- colours readable on both schemes (WCAG AA: 4.5:1 for text) --------------------------------------

CSS = Path(__file__).resolve().parents[1] / "bot" / "web" / "static" / "squall.css"
SCHEMES = ("light", "dark")
NAMED = [f"{colour}{bright}" for colour in ("black", "red", "green", "yellow", "blue", "magenta", "cyan", "white")
         for bright in ("", "-bright")]
_RULE = re.compile(r"@media([^{]*)\{|([^{}@]+)\{([^{}]*)\}|\}")


def _rules(scheme: str) -> list[tuple[list[str], dict[str, str]]]:
    """squall.css's rules that apply in `scheme`, in source order: the top level's and those of its
    `prefers-color-scheme: <scheme>` blocks (no other media query changes a colour)."""
    css = re.sub(r"/\*.*?\*/", "", CSS.read_text(), flags=re.S)
    rules, applies = [], True
    for match in _RULE.finditer(css):
        media, selectors, body = match.groups()
        if media is not None:
            applies = f"prefers-color-scheme: {scheme}" in media
        elif selectors is not None:
            if applies:
                declarations = dict(tuple(part.strip() for part in item.split(":", 1))
                                    for item in body.split(";") if ":" in item)
                rules.append(([s.strip() for s in selectors.split(",")], declarations))
        else:
            applies = True
    return rules


def _shown(scheme: str, classes: str) -> tuple[str, str]:
    """The (text, background) colours, as #rrggbb, of a span with `classes` in an output `<pre>`:
    the cascade of single-class rules, in source order (they are all as specific), over the page's."""
    rules = _rules(scheme)
    variables: dict[str, str] = {}
    shown = {"color": "", "background": ""}
    for selectors, declarations in rules:
        if ":root" in selectors:
            variables.update({name: value for name, value in declarations.items() if name.startswith("--")})
        if "body" in selectors and "color" in declarations:
            shown["color"] = declarations["color"]
        if "pre" in selectors and "background" in declarations:
            shown["background"] = declarations["background"]
    for selectors, declarations in rules:
        if any(f".{name}" in selectors for name in classes.split()):
            shown.update({key: declarations[key] for key in shown if key in declarations})
    resolved = [re.sub(r"var\((--[\w-]+)\)", lambda m: variables[m.group(1)], value) for value in shown.values()]
    assert all(re.fullmatch(r"#[0-9a-f]{6}", value) for value in resolved), (scheme, classes, resolved)
    return resolved[0], resolved[1]


def _contrast(pair: tuple[str, str]) -> float:
    def luminance(colour: str) -> float:
        channels = [int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    light, dark = sorted(map(luminance, pair), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_output_colours_are_readable_on_both_schemes() -> None:
    """Every colour an action's output can take, computed from squall.css's variables and rules, has
    a contrast of at least 4.5:1 with what is behind it, in the light scheme and the dark: each of the
    16 text colours on the output's background, the default text on each of the 16 backgrounds, any
    text on a black background (the light scheme's default text is dark too), and reverse video."""
    spans = [f"ansi-{name}" for name in NAMED] + [f"ansi-bg-{name}" for name in NAMED]
    spans += [f"ansi-{name} ansi-bg-black" for name in NAMED if not name.startswith("black")]
    spans += [f"ansi-{name} ansi-bg-black-bright" for name in NAMED if not name.startswith("black")]
    spans += ["ansi-reverse"] + [f"ansi-{name} ansi-reverse" for name in NAMED]
    low = {(scheme, classes): round(_contrast(_shown(scheme, classes)), 2)
           for scheme in SCHEMES for classes in spans if _contrast(_shown(scheme, classes)) < 4.5}
    assert low == {}


async def test_the_page_and_its_stream_show_script_and_colours_as_text(web: Web) -> None:
    client, _ = await web.signed_in("vic", "viewer")
    cmd = r"sleep 0.2; printf '\033[31m<script>alert(1)</script>\033[0m <b>bold</b>\n'; printf 'err\n' >&2"
    execution_id = await _running(web, cmd)
    page = (await client.get(f"/executions/{execution_id}")).text
    assert f'sse-connect="/live/executions/{execution_id}?after=0"' in page and 'sse-close="end"' in page
    # The stream of a running execution ends by itself when the execution does (the transport reads to the end).
    streamed = (await client.get(f"/live/executions/{execution_id}", timeout=30)).text
    assert (await web.squall.executions.get(execution_id))["status"] == "succeeded"
    chunks = await web.squall.db(web.squall.store.execution_output_list, execution_id)
    stdout_id = next(c["id"] for c in chunks if c["stream"] == "stdout")
    assert (f'id: {stdout_id}\r\nevent: stdout\r\ndata: <span class="ansi-red">&lt;script&gt;alert(1)&lt;/script&gt;'
            "</span> &lt;b&gt;bold&lt;/b&gt;") in streamed
    assert "event: stderr\r\ndata: err" in streamed and "<script>" not in streamed and "<b>" not in streamed
    assert streamed.rstrip().endswith("event: end\r\ndata: succeeded")
    assert 'event: status\r\ndata: <h1>core.local <span class="status status-succeeded">' in streamed
    resumed = await client.get(f"/live/executions/{execution_id}", headers={"Last-Event-ID": str(chunks[-1]["id"])})
    assert "event: stdout" not in resumed.text and "event: stderr" not in resumed.text  # nothing twice
    assert "event: end" in resumed.text
    for last in (b"99999999999999999999999", b"\xb2"):  # past 64 bits; ² (Latin-1), a digit int() refuses
        anew = await client.get(f"/live/executions/{execution_id}", headers={"Last-Event-ID": last})
        assert anew.status_code == 200 and f"id: {stdout_id}\r\nevent: stdout" in anew.text
    too_far = await client.get(f"/live/executions/{execution_id}?after=99999999999999999999999")
    assert too_far.status_code == 400 and "less than or equal to 9223372036854775807" in too_far.text
    finished = (await client.get(f"/executions/{execution_id}")).text
    assert "sse-connect" not in finished and "<script>alert" not in finished
    assert '<span class="ansi-red">&lt;script&gt;alert(1)&lt;/script&gt;</span>' in finished


async def test_a_colour_and_an_escape_cut_at_the_page_s_last_chunk_carry_on_into_the_stream(web: Web) -> None:
    """The page shows the output so far; the stream goes on from its last chunk in the state that
    output left: still green, and an escape sequence cut at the seam is neither lost nor shown."""
    client, _ = await web.signed_in("vic", "viewer")
    execution_id = await _running(web)
    store = web.squall.store

    def chunk(data: str) -> dict:
        return {"execution_id": execution_id, "stream": "stdout", "data": data, "timestamp": utcnow()}

    await web.squall.db(store.execution_output_add, [chunk("\x1b[32mgreen "), chunk("cut \x1b[")])
    page = (await client.get(f"/executions/{execution_id}")).text
    after = int(re.search(rf'sse-connect="/live/executions/{execution_id}\?after=(\d+)"', page).group(1))
    assert '<span class="ansi-green">green cut </span></pre>' in page  # the cut escape waits for the stream
    await web.squall.db(store.execution_output_add, [chunk("1mbold green")])
    session = await _stored_session(web, Account("vic", "viewer"))
    events = live._execution_stream(web.squall, session, execution_id, after)
    first = await asyncio.wait_for(anext(events), 10)
    await events.aclose()
    assert first["event"] == "stdout" and first["data"] == '<span class="ansi-green ansi-bold">bold green</span>'
    await web.squall.executions.cancel(execution_id)
    await web.squall.executions.wait(execution_id, 30)


@pytest.mark.slow
async def test_the_stream_carries_lines_before_the_execution_ends(web: Web) -> None:
    """Over a real server: the first line arrives while the action still runs (it sleeps after it)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(web.app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.ensure_future(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.02)
        await web.user("vic", "viewer")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            assert (await login(client, "vic", PASSWORD)).status_code == 303
            execution_id = await _running(web, "echo first line; sleep 30")
            seen: list[str] = []
            async with client.stream("GET", f"/live/executions/{execution_id}") as stream:
                event = None
                async for line in stream.aiter_lines():
                    if line.startswith("event: "):
                        event = line[len("event: "):]
                    elif line.startswith("data: ") and event == "stdout":
                        seen.append(line[len("data: "):])
                        if len(seen) == 1:  # the line is here, and the action still runs
                            assert (await web.squall.executions.get(execution_id))["status"] == "running"
                            await web.squall.executions.cancel(execution_id)
                    elif event == "end" and line.startswith("data: "):
                        assert line == "data: canceled"
                        break
            assert seen == ["first line", ""]  # data lines, which the browser joins with a line end
    finally:
        server.should_exit = True
        await serving


async def test_the_stream_ends_with_the_result_s_output_in_place_of_its_cut_live_copy(web: Web) -> None:
    """The live copy of a stream stops at the cap with `[output truncated]`; once the run ends, the
    stream puts the result's output in place of it (as the page loaded then shows it), so the last
    line, where an error usually is, shows without a reload."""
    client, _ = await web.signed_in("vic", "viewer")
    execution_id = await _running(web, r"sleep 0.2; head -c 1100000 /dev/zero | tr '\0' x; echo; echo the last line")
    async with client.stream("GET", f"/live/executions/{execution_id}", timeout=60) as response:
        events = [event async for event in _events(response)]
    appended = "".join(event["data"] for event in events if event["event"] == "stdout")
    assert "[output truncated]" in appended and "the last line" not in appended  # the live cap
    assert [event["event"] for event in events][-2:] == ["output", "end"]
    output = events[-2]["data"]
    assert '<pre class="output output-stdout">' in output and "sse-swap" not in output
    assert output == live.fragment("_execution_output.html", live=False,
                                   streams={"stdout": render("x" * 1100000 + "\nthe last line")})
    # A page that had the cut copy before its stream opened (loaded then, or reconnecting) is given it too.
    last = [event["id"] for event in events if "id" in event][-1]
    resumed = await client.get(f"/live/executions/{execution_id}", headers={"Last-Event-ID": last})
    assert "event: stdout" not in resumed.text and "event: output" in resumed.text


@contextlib.asynccontextmanager
async def _served(web: Web) -> AsyncIterator[str]:
    """The app on a real server (`ApiServer`, as `squall serve` runs it): its address."""
    server = ApiServer(web.squall, host="127.0.0.1", port=free_port())
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.stop()


async def _events(response: httpx.Response) -> AsyncIterator[dict[str, str]]:
    """A server-sent event stream's events, each as its fields (`data` lines joined)."""
    event: dict[str, str] = {}
    async for line in response.aiter_lines():
        if not line:
            if event:
                yield event
            event = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            event[name] = f"{event[name]}\n{value}" if name == "data" and name in event else value


async def _open_streams(stack: contextlib.AsyncExitStack, web: Web, base: str,
                        execution_id: str) -> list[httpx.Response]:
    """The four kinds of live stream, open on a real server: the UI's list and execution page (signed
    in), the API's event stream and an execution's output tail (with a key)."""
    await web.user("vic", "viewer")
    browser = await stack.enter_async_context(httpx.AsyncClient(base_url=base, timeout=30))
    assert (await login(browser, "vic", PASSWORD)).status_code == 303
    api = await stack.enter_async_context(httpx.AsyncClient(base_url=base, timeout=30, headers={"St2-Api-Key": KEY}))
    opened = [await stack.enter_async_context(client.stream("GET", path)) for client, path in (
        (browser, "/live/executions"), (browser, f"/live/executions/{execution_id}"),
        (api, "/stream/v1/stream"), (api, f"/stream/v1/executions/{execution_id}/output"))]
    assert [response.status_code for response in opened] == [200] * 4
    return opened


@pytest.mark.slow
async def test_the_server_stops_with_live_streams_open_and_a_next_one_streams_again(web: Web) -> None:
    """`squall serve` on SIGTERM stops its server while browsers follow live pages: every stream ends
    (cleanly, with the chunked body's end, not cut off by uvicorn's backstop), so the server does not
    wait for the browsers to leave while it holds the leader lock. A server started after it in the
    same process streams again (the shutdown flag it raised was lowered)."""
    execution_id = await _running(web, "echo started; sleep 60")
    server = ApiServer(web.squall, host="127.0.0.1", port=free_port())
    await server.start()
    async with contextlib.AsyncExitStack() as stack:
        try:
            opened = await _open_streams(stack, web, f"http://127.0.0.1:{server.port}", execution_id)
            async with asyncio.timeout(30):  # a hang fails here instead of hanging the test run
                await server.stop()
                for response in opened:
                    await response.aread()  # the end of the body: raises if the connection was cut instead
        finally:
            await server.stop()
    try:
        async with (_served(web) as base, httpx.AsyncClient(base_url=base, headers={"St2-Api-Key": KEY},
                                                             timeout=30) as api,
                    api.stream("GET", f"/stream/v1/executions/{execution_id}/output") as tail):
            first = await asyncio.wait_for(anext(_events(tail)), 10)
            assert json.loads(first["data"])["data"] == "started\n"
    finally:
        await web.squall.executions.cancel(execution_id)
        await web.squall.executions.wait(execution_id, 30)


async def _statuses_until_end(events: AsyncIterator[dict[str, str]]) -> list[str]:
    """The `status` events' data a stream sends until its `end`."""
    seen: list[str] = []
    while (event := await asyncio.wait_for(anext(events), 30))["event"] != "end":
        if event["event"] == "status":
            seen.append(event["data"])
    return seen


def _times(html: str) -> dict[str, str]:
    """The Started, Ended and Took facts in a page or fragment (`datetime` of a time, else the text)."""
    found = re.findall(r'<dt>(Started|Ended|Took)</dt><dd>(?:<time datetime="([^"]+)">[^<]*</time>|([^<]*))</dd>',
                       html)
    return {name: when or text for name, when, text in found}


async def test_the_times_follow_the_status_live_and_a_paused_workflow_has_not_ended(web: Web) -> None:
    """A paused workflow has an end time stored (the pause's) but has not ended: no Ended or Took on
    its page. Followed live, the times come with the status: a plain action's page gets Ended and Took
    when it ends, and a workflow's the time it really ended (the live page kept the pause's)."""
    client, _ = await web.signed_in("vic", "viewer")
    session = await _stored_session(web, Account("vic", "viewer"))
    workflow = (await web.squall.executions.request("demo.ask", {}, {"user": "t", "source": "api"}))["id"]
    paused = await web.squall.executions.wait(workflow, 30)
    assert paused["status"] == "paused" and paused["end_timestamp"] is not None
    page = (await client.get(f"/executions/{workflow}")).text
    assert set(_times(page)) == {"Started"}
    events = live._execution_stream(web.squall, session, workflow, 0)
    while (event := await asyncio.wait_for(anext(events), 10))["event"] != "status":
        pass
    assert set(_times(event["data"])) == {"Started"} and "status-paused" in event["data"]
    (inquiry,) = await web.squall.executions.list(parent=workflow)
    await web.squall.inquiries.respond(inquiry["id"], {"approved": True}, "vic")
    last = (await _statuses_until_end(events))[-1]
    ended = await web.squall.executions.get(workflow)
    assert ended["status"] == "succeeded" and ended["end_timestamp"] != paused["end_timestamp"]
    assert _times(last) == {"Started": ended["start_timestamp"], "Ended": ended["end_timestamp"],
                            "Took": f"{ended['elapsed_seconds']:.1f} s"}
    assert _times(last) == _times((await client.get(f"/executions/{workflow}")).text)

    action = await _running(web, "sleep 0.3")
    assert set(_times((await client.get(f"/executions/{action}")).text)) == {"Started"}
    last = (await _statuses_until_end(live._execution_stream(web.squall, session, action, 0)))[-1]
    done = await web.squall.executions.get(action)
    assert _times(last) == {"Started": done["start_timestamp"], "Ended": done["end_timestamp"],
                            "Took": f"{done['elapsed_seconds']:.1f} s"}


# -- the list, live ---------------------------------------------------------------------------------

async def test_the_list_streams_new_rows_and_changed_ones(web: Web) -> None:
    client, _ = await web.signed_in("otto", "operator")
    first = await _running(web)
    page = (await client.get("/executions")).text
    assert f'sse-connect="/live/executions?top={first}"' in page
    assert f'sse-swap="row-{first}"' in page and 'sse-swap="new"' in page
    session = await _stored_session(web, Account("otto", "operator"))
    events = live._list_stream(web.squall, session, ExecutionFilter(), first)
    refreshed = await anext(events)  # every row once at first: it may have changed since the page
    assert refreshed["event"] == f"row-{first}" and "status-running" in refreshed["data"]
    second = await _running(web)
    await web.squall.executions.cancel(first)
    await web.squall.executions.wait(first, 30)
    got = {}
    while set(got) != {"new", f"row-{first}"}:
        event = await asyncio.wait_for(anext(events), 10)
        got[event["event"]] = event["data"]
    assert f'<a class="id" href="/executions/{second}">' in got["new"]
    assert "status-canceled" in got[f"row-{first}"]
    assert f'value="{second}" form="bulk-cancel"' in got["new"]  # an operator's checkbox
    await events.aclose()
    await web.squall.executions.cancel(second)
    older = (await client.get("/executions", params={"before": second})).text
    assert "sse-connect" not in older  # an older page stays as it was
    for bad, said in (({"status": "bogus"}, "unknown status"), ({"top": "x"}, "execution id")):
        refused = await client.get("/live/executions", params=bad)
        assert refused.status_code == 400 and said in refused.text


async def test_the_list_s_stream_resumes_from_its_last_event_id(web: Web) -> None:
    """Each `new` event names the newest row the page has then (its id); a browser that reconnects
    sends it back, and the rows it already has are not sent as new again (they were prepended twice)."""
    first, second, third = [(await web.squall.executions.request("core.noop", {}, {"user": "t"}))["id"]
                            for _ in range(3)]
    for execution_id in (first, second, third):
        await web.squall.executions.wait(execution_id, 30)
    await web.user("otto", "operator")
    async with _served(web) as base, httpx.AsyncClient(base_url=base, timeout=30) as client:
        assert (await login(client, "otto", PASSWORD)).status_code == 303
        got: dict[str, dict[str, str]] = {}
        async with client.stream("GET", "/live/executions", params={"top": first}) as stream:
            events = _events(stream)
            while (event := await asyncio.wait_for(anext(events), 10))["event"] != f"row-{first}":
                got[event["event"]] = event
        assert got["new"]["id"] == third and f'id="row-{second}"' in got["new"]["data"]
        got = {}
        # The browser that got that `new` comes back (its page still says top=first) naming `third`.
        async with client.stream("GET", "/live/executions", params={"top": first},
                                 headers={"Last-Event-ID": third}) as stream:
            events = _events(stream)
            while (event := await asyncio.wait_for(anext(events), 10))["event"] != f"row-{first}":
                got[event["event"]] = event
        assert "new" not in got and set(got) == {f"row-{third}", f"row-{second}"}
        assert got[f"row-{third}"]["id"] == third
        for wrong in ("not-an-id", "f" * 25):  # a Last-Event-ID that is no execution id is no cursor
            async with client.stream("GET", "/live/executions", params={"top": first},
                                     headers={"Last-Event-ID": wrong}) as stream:
                assert (await asyncio.wait_for(anext(_events(stream)), 10))["event"] == "new"


async def test_a_filtered_list_removes_a_row_that_stops_matching(web: Web) -> None:
    """On a list of running executions, one that ends is sent once more with no row (its row is
    replaced by nothing: it would show running for ever, or ended on a list of running ones), then
    leaves the stream's memory; one that starts running is added."""
    await web.user("otto", "operator")
    session = await _stored_session(web, Account("otto", "operator"))
    first = await _running(web)
    events = live._list_stream(web.squall, session, ExecutionFilter(status="running"), first)
    refreshed = await anext(events)
    assert refreshed["event"] == f"row-{first}"
    await web.squall.executions.cancel(first)
    await web.squall.executions.wait(first, 30)
    ended = await asyncio.wait_for(anext(events), 10)
    assert ended == {"event": f"row-{first}", "data": "", "id": first}
    late = await _running(web)  # newer than the page's top: new
    got = await asyncio.wait_for(anext(events), 10)
    assert got["event"] == "new" and f'href="/executions/{late}"' in got["data"]
    await events.aclose()
    # One that left the page still matching (newer ones pushed it down) is sent as it is.
    record = await web.squall.db(web.squall.store.get_execution, late)
    pushed = live._left(session, ExecutionFilter(status="running"), record)
    assert pushed["event"] == f"row-{late}" and "status-running" in pushed["data"]
    await web.squall.executions.cancel(late)


# -- streams end with their session ----------------------------------------------------------------

def _end_session(web: Web, session: Session, how: str) -> None:
    """What a logout, `squall user passwd` and `squall user delete` do to the stored session."""
    store = web.squall.store
    if how == "logout":
        close_sessions(store, [session.token_hash], {})
    elif how == "new password":
        assert set_password(store, session.account.name, hash_password("another password"))
    else:
        assert delete_user(store, session.account.name)


@pytest.mark.parametrize("how", ["logout", "new password", "deleted account"])
async def test_an_execution_s_stream_ends_when_its_session_does(web: Web, monkeypatch: pytest.MonkeyPatch,
                                                                how: str) -> None:
    """The output goes on, but not to a browser whose session ended after it opened the stream."""
    monkeypatch.setattr(sessions, "RECHECK_SECONDS", 0.0)  # look at the session on every round
    await web.user("vic", "viewer")
    session = await _stored_session(web, Account("vic", "viewer"))
    execution_id = await _running(web, "for i in $(seq 600); do echo line $i; sleep 0.05; done")
    events = live._execution_stream(web.squall, session, execution_id, 0)
    while (await asyncio.wait_for(anext(events), 10))["event"] != "stdout":
        pass
    await web.squall.db(_end_session, web, session, how)
    while (event := await asyncio.wait_for(anext(events), 10))["event"] not in ("stdout", "end"):
        pass  # the rest of the round that sent the output (status, log)
    assert event == {"event": "end", "data": "signed-out"}
    with pytest.raises(StopAsyncIteration):
        await anext(events)
    await web.squall.executions.cancel(execution_id)
    await web.squall.executions.wait(execution_id, 30)


@pytest.mark.parametrize("how", ["logout", "new password", "deleted account"])
async def test_the_list_s_stream_ends_when_its_session_does(web: Web, monkeypatch: pytest.MonkeyPatch,
                                                            how: str) -> None:
    monkeypatch.setattr(sessions, "RECHECK_SECONDS", 0.0)
    await web.user("otto", "operator")
    session = await _stored_session(web, Account("otto", "operator"))
    first = await _running(web)
    events = live._list_stream(web.squall, session, ExecutionFilter(), first)
    assert (await asyncio.wait_for(anext(events), 10))["event"] == f"row-{first}"
    await web.squall.db(_end_session, web, session, how)
    later = await _running(web)
    assert await asyncio.wait_for(anext(events), 10) == {"event": "end", "data": "signed-out"}
    with pytest.raises(StopAsyncIteration):
        await anext(events)
    for execution_id in (first, later):
        await web.squall.executions.cancel(execution_id)


async def test_a_stream_s_look_at_its_session_records_no_use(web: Web) -> None:
    """`current_session` applies the login's rules but writes no `last_seen`: a tab left open on a
    live page does not keep an idle session from ending."""
    from datetime import timedelta

    from bot.accounts import SESSION_IDLE, TOUCH_EVERY, current_session

    await web.user("ann", "operator")
    session = await _stored_session(web, Account("ann", "operator"))
    store = web.squall.store
    seen = utcnow() - TOUCH_EVERY - timedelta(minutes=1)  # a request now would record its use
    await web.squall.db(store.web_session_touch, session.token_hash, seen)
    assert await web.squall.db(current_session, store, session) == session
    assert (await web.squall.db(store.web_session_get, session.token_hash))["last_seen"] == seen
    await web.squall.db(store.web_session_touch, session.token_hash, utcnow() - SESSION_IDLE)
    assert await web.squall.db(current_session, store, session) is None


# -- workflows ----------------------------------------------------------------------------------------

async def test_the_workflow_graph_lists_each_task_with_its_status(web: Web) -> None:
    client, _ = await web.signed_in("vic", "viewer")
    record = await web.squall.executions.request("demo.flow", {}, {"user": "t", "source": "api"})
    assert (await web.squall.executions.wait(record["id"], 30))["status"] == "succeeded"
    children = await web.squall.executions.list(parent=record["id"], oldest_first=True)
    by_task = {c["context"]["workflow_task"]["task"]: c["id"] for c in children}
    page = (await client.get(f"/executions/{record['id']}")).text
    svg = page[page.index("<svg"):page.index("</svg>")]
    found = re.findall(r'<g class="graph-task status-([a-z-]+)" data-task="([a-z]+)">', svg)
    assert {task: status for status, task in found} == {
        "first": "succeeded", "second": "succeeded", "cleanup": "not-started"}
    for task in ("first", "second"):
        link = f'<a href="/executions/{by_task[task]}"><g class="graph-task status-succeeded" data-task="{task}">'
        assert link in svg
    assert svg.count("graph-edge-success") == 1 and svg.count("graph-edge-failure") == 1


async def test_the_task_tree_opens_a_sub_workflows_tasks_under_the_task_that_ran_it(web: Web) -> None:
    client, _ = await web.signed_in("vic", "viewer")
    record = await web.squall.executions.request("demo.outer", {}, {"user": "t", "source": "api"})
    assert (await web.squall.executions.wait(record["id"], 30))["status"] == "succeeded"
    page = (await client.get(f"/executions/{record['id']}")).text
    tree = page[page.index('id="children-title"'):page.index("</table>", page.index('id="children-title"'))]
    rows = re.findall(r'<tr( class="subtask depth-(\d)")?>\s*<td>(?:<span class="visually-hidden">[^<]*</span>)?'
                      r'<a href="/executions/[0-9a-f]{24}">([a-z]+)</a>', tree)
    assert [(depth or "0", task) for _, depth, task in rows] == [
        ("0", "inner"), ("1", "first"), ("1", "second"), ("0", "last")]


def _graph_tasks(page: str) -> dict[str, str]:
    """Each task of the graph in a page or fragment, with the status it is drawn in."""
    svg = page[page.index("<svg"):page.index("</svg>")]
    return {task: status for status, task in re.findall(
        r'<g class="graph-task status-([a-z-]+)" data-task="([a-z]+)">', svg)}


def _renamed_tasks(path: Path, text: str) -> None:
    """`path` rewritten as a pack update would (a later modification time, so the file's cache sees it)."""
    before = path.stat().st_mtime_ns
    write(path, text)
    os.utime(path, ns=(before + 10**9, before + 10**9))


async def test_a_run_s_graph_is_drawn_from_the_definition_it_kept(web: Web, home: Path) -> None:
    """A pack update renames a waiting workflow's tasks: the engine goes on with the definition the run
    kept (`spec.workflow`), so its page and its live view draw that one's tasks, not the file's new ones
    (which were drawn with the run's real task missing). A run that kept none (started before runs kept
    theirs) is drawn from its file still."""
    client, _ = await web.signed_in("vic", "viewer")
    session = await _stored_session(web, Account("vic", "viewer"))
    workflows = home / "packs" / "demo" / "actions" / "workflows"
    waiting = (await web.squall.executions.request("demo.ask", {}, {"user": "t", "source": "api"}))["id"]
    assert (await web.squall.executions.wait(waiting, 30))["status"] == "paused"
    _renamed_tasks(workflows / "ask.yaml", """
        version: 1.0
        tasks:
          review:
            action: core.noop
            next:
              - do: notify
          notify:
            action: core.noop
    """)
    assert _graph_tasks((await client.get(f"/executions/{waiting}")).text) == {"approve": "pending"}
    events = live._execution_stream(web.squall, session, waiting, 0)
    while (event := await asyncio.wait_for(anext(events), 10))["event"] != "tasks":
        pass
    assert _graph_tasks(event["data"]) == {"approve": "pending"}
    (inquiry,) = await web.squall.executions.list(parent=waiting)
    await web.squall.inquiries.respond(inquiry["id"], {"approved": True}, "vic")  # the run goes on, and ends
    drawn: list[dict[str, str]] = []
    while (event := await asyncio.wait_for(anext(events), 30))["event"] != "end":
        if event["event"] == "tasks":
            drawn.append(_graph_tasks(event["data"]))
    assert drawn[-1] == {"approve": "succeeded"}
    assert (await web.squall.executions.get(waiting))["status"] == "succeeded"
    assert _graph_tasks((await client.get(f"/executions/{waiting}")).text) == {"approve": "succeeded"}

    older = (await web.squall.executions.request("demo.flow", {}, {"user": "t", "source": "api"}))["id"]
    assert (await web.squall.executions.wait(older, 30))["status"] == "succeeded"
    await web.squall.db(web.squall.store.update_execution, older, {"spec": {}})  # as runs kept none
    _renamed_tasks(workflows / "flow.yaml", """
        version: 1.0
        tasks:
          first:
            action: core.noop
    """)
    assert _graph_tasks((await client.get(f"/executions/{older}")).text) == {"first": "succeeded"}


def test_graphs_of_action_chains_and_mistral_workflows(web: Web) -> None:
    chain = web.squall.registry.action("demo.chain")
    tasks, starts, edges = graph.workflow_edges(chain)  # type: ignore[misc]
    assert tasks == ["build", "ship", "alert"] and starts == ["build"]
    assert {(e.source, e.target, e.kind) for e in edges} == {("build", "ship", "success"),
                                                             ("build", "alert", "failure")}
    drawn = graph.svg(chain, [])
    assert drawn is not None and drawn.count('class="graph-task status-not-started"') == 3
    tasks, starts, edges = graph.workflow_edges(web.squall.registry.action("demo.legacy"))  # type: ignore[misc]
    assert starts == ["check"] and {(e.target, e.kind, e.label) for e in edges} == {
        ("deploy", "success", "on-success"), ("page", "failure", "on-error"), ("report", "other", "on-complete")}
    assert graph.svg(web.squall.registry.action("core.local"), []) is None  # no workflow, no graph


# -- re-run --------------------------------------------------------------------------------------------

async def test_rerun_with_an_edited_parameter_makes_a_new_execution(web: Web) -> None:
    client, csrf = await web.signed_in("otto", "operator")
    record = await web.squall.executions.request("demo.greet", {"who": "ann", "password": "hunter2"},
                                                 {"user": "t", "source": "api"})
    await web.squall.executions.wait(record["id"], 30)
    rerun = f"/executions/{record['id']}/rerun"
    form = await client.get(rerun)
    assert form.status_code == 200 and browser_form(form.text, rerun)["who"] == "ann"
    assert "hunter2" not in form.text and browser_form(form.text, rerun)["password"] == ""
    assert widgets(form.text, rerun)["password"] == ("input", "password")
    assert "cmd" not in widgets(form.text, rerun)  # immutable: not offered
    bare = await web.squall.executions.request("demo.greet", {"who": "ann"}, {"user": "t", "source": "api"})
    await web.squall.executions.wait(bare["id"], 30)
    offered = (await client.get(f"/executions/{bare['id']}/rerun")).text
    assert widgets(offered, f"/executions/{bare['id']}/rerun")["password"] == ("input", "password")  # offered too
    answer = await client.post(rerun, data={"csrf_token": csrf, "who": "bob", "password": ""})
    assert answer.status_code == 303
    new_id = answer.headers["location"].rsplit("/", 1)[1]
    new = await web.squall.executions.wait(new_id, 30)
    assert new["id"] != record["id"] and new["parameters"]["who"] == "bob"
    assert new["context"]["re-run"] == {"ref": record["id"]} and new["context"]["user"] == "otto"
    assert new["result"]["stdout"] == "hello bob" and new["parameters"]["password"] != "hunter2"



async def test_a_rerun_value_of_the_wrong_type_is_refused_beside_the_form(web: Web) -> None:
    """The refusal is the run form's, beside the field, which keeps what was typed to be corrected."""
    client, csrf = await web.signed_in("otto", "operator")
    record = await web.squall.executions.request("core.local", {"cmd": "echo x", "timeout": 5}, {"user": "t"})
    await web.squall.executions.wait(record["id"], 30)
    rerun = f"/executions/{record['id']}/rerun"
    form = (await client.get(rerun)).text
    assert widgets(form, rerun)["timeout"] == ("input", "text")  # the run form's, not a text area of JSON
    assert browser_form(form, rerun)["timeout"] == "5" and browser_form(form, rerun)["cmd"] == "echo x"
    wrong = await client.post(rerun, data={"csrf_token": csrf, "timeout": "soon"})
    assert wrong.status_code == 400 and browser_form(wrong.text, rerun)["timeout"] == "soon"
    assert field_errors(wrong.text) == {
        "timeout": """parameter "timeout": 'soon' is not an integer (expected a whole number such as 5)"""}
    assert 'aria-invalid="true"' in re.search(r'<input id="p-timeout"[^>]*>', wrong.text).group(0)
    assert len(await web.squall.executions.list(action="core.local", limit=10)) == 1


async def test_a_rerun_value_nested_too_deeply_is_refused_beside_the_form(web: Web) -> None:
    """JSON nested past Python's recursion limit is a 400 with the form, as the run form answers."""
    client, csrf = await web.signed_in("otto", "operator")
    record = await web.squall.executions.request("core.local", {"cmd": "echo x", "env": {"A": "1"}}, {"user": "t"})
    await web.squall.executions.wait(record["id"], 30)
    deep = "[" * 1900 + "]" * 1900  # past the recursion limit; unescaped, to stay within api.max_body_bytes
    wrong = await client.post(f"/executions/{record['id']}/rerun", content=f"csrf_token={csrf}&env={deep}",
                              headers={"content-type": "application/x-www-form-urlencoded"})
    assert wrong.status_code == 400
    assert field_errors(wrong.text) == {"env": 'parameter "env" is not valid JSON (nested too deeply): write a JSON '
                                               'object such as {"key": "value"}'}
    assert len(await web.squall.executions.list(action="core.local", limit=10)) == 1


@pytest.mark.slow  # two signed-in accounts and several runs: seconds
async def test_a_viewer_cannot_rerun_or_cancel_and_a_forged_post_is_refused(web: Web) -> None:
    running = await _running(web)
    viewer, viewer_csrf = await web.signed_in("vic", "viewer")
    operator, _ = await web.signed_in("otto", "operator")
    page = (await viewer.get(f"/executions/{running}")).text
    assert "/rerun" not in page and "/cancel" not in page
    assert "bulk-cancel" not in (await viewer.get("/executions")).text
    assert (await viewer.get(f"/executions/{running}/rerun")).status_code == 403
    before = len(await web.squall.executions.list(limit=100))
    refused = [await viewer.post(f"/executions/{running}/rerun", data={"csrf_token": viewer_csrf, "cmd": "id"}),
               await viewer.post("/executions/cancel", data={"csrf_token": viewer_csrf, "execution": running}),
               await operator.post(f"/executions/{running}/rerun", data={"cmd": "id"}),
               await operator.post("/executions/cancel", data={"execution": running, "csrf_token": "forged"})]
    assert [r.status_code for r in refused] == [403] * 4
    assert "operator role" in refused[0].text and "CSRF" in refused[2].text
    assert len(await web.squall.executions.list(limit=100)) == before
    assert (await web.squall.executions.get(running))["status"] == "running"
    await web.squall.executions.cancel(running)


# -- bulk cancel ---------------------------------------------------------------------------------------

@pytest.mark.slow  # three runs, two of them canceled: seconds
async def test_bulk_cancel_cancels_the_checked_and_says_what_it_could_not(web: Web) -> None:
    client, csrf = await web.signed_in("otto", "operator")
    first, second = await _running(web), await _running(web)
    done = await web.squall.executions.request("core.noop", {}, {"user": "t"})
    await web.squall.executions.wait(done["id"], 30)
    listed = (await client.get("/executions")).text
    assert f'value="{first}" form="bulk-cancel"' in listed and f'value="{done["id"]}"' not in listed
    answer = await client.post("/executions/cancel", content=(
        f"csrf_token={csrf}&execution={first}&execution={second}&execution={done['id']}"),
        headers={"content-type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 200
    assert f"{done['id']}</a>: execution {done['id']} is already succeeded" in answer.text
    for execution_id in (first, second):
        assert (await web.squall.executions.wait(execution_id, 30))["status"] == "canceled"
    audit = await web.squall.db(web.squall.store.audit_list, 10, "web.execution.cancel")
    assert sorted(a["target"] for a in audit) == sorted([first, second])
    nothing = await client.post("/executions/cancel", data={"csrf_token": csrf})
    assert nothing.status_code == 400 and "none was chosen" in nothing.text


# -- a change and its audit event: one transaction -------------------------------------------------------

async def test_a_cancel_whose_audit_event_fails_cancels_nothing(web: Web, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cancel button's change and its `web.execution.cancel` event commit together: an event the full
    disk cannot take leaves the execution running behind the error page; the bulk cancel lists the one it
    could not cancel, with why, beside those it did (their cancels are stored: no 503 for the page)."""
    client, csrf = await web.signed_in("otto", "operator")
    first, second = await _running(web), await _running(web)
    failing_audit(web.squall, monkeypatch, "web.execution.cancel", disk_full())
    alone = await client.post(f"/executions/{first}/cancel", data={"csrf_token": csrf})
    assert alone.status_code == 503 and "database or disk is full" in alone.text
    assert (await web.squall.executions.get(first))["status"] == "running"
    monkeypatch.undo()
    failing_audit(web.squall, monkeypatch, "web.execution.cancel", disk_full(), target=second)
    answer = await client.post("/executions/cancel", content=f"csrf_token={csrf}&execution={first}&execution={second}",
                               headers={"content-type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 200, answer.text
    assert f"{second}</a>: Squall could not cancel it: the database is full" in answer.text
    assert (await web.squall.executions.wait(first, 30))["status"] == "canceled"
    assert (await web.squall.executions.get(second))["status"] == "running"
    [row] = await web.squall.db(web.squall.store.audit_list, 10, "web.execution.cancel")
    assert (row["actor"], row["target"], row["detail"]) == ("otto", first, {"action": "core.local",
                                                                           "status": "canceling"})
    monkeypatch.undo()
    await web.squall.executions.cancel(second)


async def test_a_rerun_whose_audit_event_fails_is_not_stored(web: Web, monkeypatch: pytest.MonkeyPatch) -> None:
    """The re-run form's re-run and its `web.execution.rerun` event are one transaction (`CommandService.rerun`
    forwards the event to `ExecutionService.rerun`): an event the full disk cannot take leaves no re-run
    behind the error page, so sending the form again runs it once; the re-run that works is audited with
    the original, the fields changed, the action and the parameters as stored."""
    client, csrf = await web.signed_in("otto", "operator")
    record = await web.squall.executions.request("demo.greet", {"who": "ann"}, {"user": "t", "source": "api"})
    await web.squall.executions.wait(record["id"], 30)
    failing_audit(web.squall, monkeypatch, "web.execution.rerun", disk_full())
    failed = await client.post(f"/executions/{record['id']}/rerun", data={"csrf_token": csrf, "who": "bob"})
    assert failed.status_code == 503 and "database or disk is full" in failed.text, failed.text
    assert [e["id"] for e in await web.squall.executions.list(action="demo.greet")] == [record["id"]]
    monkeypatch.undo()
    answer = await client.post(f"/executions/{record['id']}/rerun", data={"csrf_token": csrf, "who": "bob"})
    assert answer.status_code == 303, answer.text
    new = await web.squall.executions.wait(answer.headers["location"].rsplit("/", 1)[1], 30)
    assert new["parameters"]["who"] == "bob" and new["status"] == "succeeded"
    [row] = await web.squall.db(web.squall.store.audit_list, 10, "web.execution.rerun")
    assert (row["actor"], row["target"]) == ("otto", new["id"])
    assert row["detail"] == {"of": record["id"], "changed": ["who"], "action": "demo.greet",
                             "parameters": new["parameters"]}

