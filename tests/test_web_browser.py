"""The web UI end to end, in a real browser: headless Chromium (Debian's `chromium`, which `.ci/run`
installs) driven by Playwright's Python package, never `playwright install`'s own download.

One real `squall serve` for the module, on a fresh SQLite home with the API on a free port, the
console adapter off and the Mattermost adapter on a faithful local Mattermost (tests/fake_mattermost.py,
on an event loop of its own in a thread: Playwright's sync API wants the test's thread to itself).
Its pack `webui` has `webui.lines` (prints a line every `pause` seconds), an alias for it,
`webui.approval`, an Orquesta workflow that waits on an inquiry, and `webui.queued`, which runs one
at a time (the others wait `delayed`). The test logs in with the first
admin's password that `squall serve` prints, and does in the browser what a person does: the list
and its filters, an execution's page, a chat-started execution with its channel, cancel, the run
form with the output arriving live, the list taking a new execution live, an inquiry answered from
the inbox while the workflow's page (graph and status) follows it, a re-run with an edited
parameter, the keyboard alone reaching the main controls with a visible focus, and live pages whose
stream a proxy cuts and answers 502 to (`CuttingProxy`) showing nothing twice. "Live" is
checked as "without reloading": a marker set on `window` must still be there at the end. Every
page's console is watched: a Content-Security-Policy violation or a script error shows there, and
fails the test.

Screenshots (1280x800) go to `$SQUALL_UI_SCREENSHOTS` (default: a temporary folder); `docs/ui/`
keeps copies of a few (docs/ui.md).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import server_missing, wait_until_answering, write
from tests.fake_mattermost import BOT_TOKEN, FakeMattermost
from tests.pgcluster import free_port
from tests.test_cli import SQUALL

pytestmark = [pytest.mark.slow, pytest.mark.browser]

KEY = "browser-test-key-0123"
VIEWPORT = {"width": 1280, "height": 800}
#: `squall serve` without a terminal (stderr a pipe, as here) logs where the first admin's password is.
_PASSWORD_LINE = re.compile(r"log in at (\S+) as admin with the password in (\S+)")

APPROVAL = """
version: 1.0
tasks:
  approve:
    action: core.ask
    input:
      ttl: 60
      schema:
        type: object
        properties:
          approved: {type: boolean, description: "Deploy to production?", required: true}
    next:
      - when: <% succeeded() %>
        publish: [answer: <% result().response.approved %>]
        do: deploy
  deploy:
    action: webui.lines
    input: {count: 2, pause: 0}
output:
  - answer: <% ctx(answer) %>
"""


def chromium_path() -> str:
    """Debian's Chromium (the `chromium` package), or the test fails or skips as conftest's servers do."""
    found = shutil.which("chromium") or next(
        (p for p in ("/usr/bin/chromium", "/usr/lib/chromium/chromium") if os.access(p, os.X_OK)), None)
    if found is None:
        server_missing("Chromium is not installed (Debian package 'chromium'; .ci/run installs it)")
    return found


# -- a Mattermost of our own, on a loop in a thread ------------------------------------------------------

class LoopThread:
    """An asyncio loop in a daemon thread, for the fake Mattermost while the test's thread drives Chromium."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-mattermost", daemon=True)
        self.thread.start()

    def run(self, make: Callable[[], Coroutine[Any, Any, Any]], timeout: float = 30) -> Any:
        async def call() -> Any:
            return await make()
        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


# -- the served home -----------------------------------------------------------------------------------

@dataclass
class Served:
    """A running `squall serve`: its address, the first admin's password, the API, the fake chat."""

    base: str
    password: str
    api: httpx.Client
    chat: FakeMattermost
    loop: LoopThread
    output: list[str] = field(default_factory=list)

    def run(self, action: str, **parameters: Any) -> str:
        """Request `action` through the API; its execution id."""
        answer = self.api.post("/api/v1/executions", json={"action": action, "parameters": parameters})
        assert answer.status_code == 201, answer.text
        return answer.json()["id"]

    def execution(self, execution_id: str) -> dict[str, Any]:
        answer = self.api.get(f"/api/v1/executions/{execution_id}")
        assert answer.status_code == 200, answer.text
        return answer.json()

    def wait(self, execution_id: str, *statuses: str, seconds: float = 30) -> dict[str, Any]:
        """The execution once its status is one of `statuses`."""
        deadline = time.monotonic() + seconds
        while True:
            record = self.execution(execution_id)
            if record["status"] in statuses:
                return record
            assert time.monotonic() < deadline, f"{execution_id} stayed {record['status']}, not {statuses}"
            time.sleep(0.1)

    def executions(self, **query: Any) -> list[dict[str, Any]]:
        answer = self.api.get("/api/v1/executions", params={"limit": 100, **query})
        assert answer.status_code == 200, answer.text
        return answer.json()


def _write_home(home: Path, port: int, chat_url: str) -> None:
    (home / "packs").mkdir(parents=True)
    write(home / "config.yml", f"""
        database:
          url: sqlite:///data/squall.db
        packs:
          paths: [packs]
        api:
          enabled: true
          host: 127.0.0.1
          port: {port}
          keys: [{KEY}]
        adapters:
          console: {{enabled: false}}
          mattermost: {{enabled: true, url: "{chat_url}", token: {BOT_TOKEN}, team: ops}}
    """)
    pack = home / "packs" / "webui"
    write(pack / "pack.yaml", "ref: webui\nname: webui\ndescription: the browser test's pack\nversion: 1.0.0\n"
                              "author: t\n")
    write(pack / "actions" / "lines.yaml", """
        name: lines
        runner_type: local-shell-cmd
        description: Print numbered lines, one every PAUSE seconds.
        parameters:
          count: {type: integer, default: 3, description: How many lines}
          pause: {type: number, default: 0.3, description: Seconds between lines}
          cmd:
            default: 'for i in $(seq 1 {{count}}); do echo "line $i of {{count}}"; sleep {{pause}}; done'
            immutable: true
    """)
    write(pack / "aliases" / "lines.yaml", """
        name: lines
        action_ref: webui.lines
        description: Print some lines.
        formats: ["lines {{count}}"]
    """)
    write(pack / "actions" / "approval.yaml", """
        name: approval
        runner_type: orquesta
        description: Ask before deploying.
        entry_point: workflows/approval.yaml
    """)
    write(pack / "actions" / "workflows" / "approval.yaml", APPROVAL)
    write(pack / "actions" / "note.yaml", """
        name: note
        runner_type: local-shell-cmd
        description: Print a note of several lines.
        parameters:
          body: {type: string, default: "Dear team,\\nthe deploy is done.\\n"}
          cmd: {default: 'printf %s "{{ body }}" | od -c', immutable: true}
    """)
    # One at a time: the others wait `delayed` until the one running ends.
    write(pack / "actions" / "queued.yaml", """
        name: queued
        runner_type: local-shell-cmd
        description: Sleep a minute, one run at a time.
        parameters:
          cmd: {default: sleep 60, immutable: true}
    """)
    write(pack / "policies" / "queued.yaml", """
        name: queued.one
        resource_ref: webui.queued
        policy_type: action.concurrency
        parameters: {action: delay, threshold: 1}
    """)


@pytest.fixture(scope="module")
def served(chromium: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The module's `squall serve` (after `chromium`, so a machine without the browser skips at once)."""
    home = tmp_path_factory.mktemp("web-browser")
    loop = LoopThread()
    chat = loop.run(lambda: _started_fake())
    port = free_port()
    _write_home(home, port, chat.url)
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(SQUALL), "-c", str(home / "config.yml"), "serve"], cwd=home, env=dict(os.environ),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(iter(server.stdout.readline, "")),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    api = httpx.Client(base_url=base, headers={"St2-Api-Key": KEY}, timeout=10)
    try:
        wait_until_answering(base, server, 60)
        deadline = time.monotonic() + 10
        while not (found := next((m for m in map(_PASSWORD_LINE.search, list(output)) if m), None)):
            assert time.monotonic() < deadline, "squall serve printed no first admin password:\n" + "".join(output)
            time.sleep(0.05)
        assert found.group(1) == f"{base}/"
        yield Served(base, Path(found.group(2)).read_text().strip(), api, chat, loop, output)
    finally:
        api.close()
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(10)
        reader.join(5)
        loop.run(chat.stop)
        loop.close()


async def _started_fake() -> FakeMattermost:
    fake = FakeMattermost()
    await fake.start()
    return fake


# -- the browser ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        server_missing("Playwright's Python package is not installed (pip install -e '.[test]')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the run's screenshots go: `$SQUALL_UI_SCREENSHOTS`, or a temporary folder."""
    folder = Path(os.environ.get("SQUALL_UI_SCREENSHOTS") or tmp_path_factory.mktemp("ui-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class Tab:
    """A page in a fresh browser context, with every console error and uncaught exception it met."""

    page: Any
    base: str
    errors: list[str] = field(default_factory=list)

    def go(self, path: str) -> Any:
        answer = self.page.goto(self.base + path)
        assert answer is not None and answer.status < 400, f"{path}: {answer and answer.status}"
        return answer

    def shot(self, folder: Path, name: str) -> Path:
        target = folder / f"{name}.png"
        self.page.screenshot(path=str(target))
        return target


def watch(page: Any, errors: list[str]) -> None:
    """Collect `page`'s console errors (a CSP violation is one, so is a missing favicon) and uncaught
    exceptions into `errors`."""
    def console(message: Any) -> None:
        where = (message.location or {}).get("url", "")
        if message.type == "error":
            errors.append(f"console: {message.text} ({where})")

    page.on("console", console)
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))


def _login(page: Any, password: str, user: str = "admin") -> None:
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


@pytest.fixture(scope="module")
def admin_state(served: Served, chromium: Any) -> dict[str, Any]:
    """The cookies of a browser logged in as `admin` with the printed password, through the form."""
    context = chromium.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        page.goto(served.base + "/")
        page.wait_for_url(re.compile(r"/login"))
        _login(page, served.password)
        page.wait_for_url(re.compile(r"/executions$"))
        return context.storage_state()
    finally:
        context.close()


@pytest.fixture
def tab(served: Served, chromium: Any, admin_state: dict[str, Any]) -> Iterator[Tab]:
    """A page signed in as admin."""
    context = chromium.new_context(viewport=VIEWPORT, storage_state=admin_state)
    page = context.new_page()
    opened = Tab(page, served.base)
    watch(page, opened.errors)
    try:
        yield opened
    finally:
        context.close()


# -- the tests -----------------------------------------------------------------------------------------

def test_the_api_docs_pages_render_with_no_other_host_reachable(served: Served, chromium: Any) -> None:
    """`/docs` (Swagger UI) and `/redoc` render the API's operations with every request to another host
    refused, as on an operations network without the internet: FastAPI's own pages loaded their scripts
    from a CDN and stayed blank there."""
    context = chromium.new_context(viewport=VIEWPORT)
    elsewhere: list[str] = []

    def offline(route: Any) -> None:
        if route.request.url.startswith(served.base):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    context.route("**/*", offline)
    page = context.new_page()
    errors: list[str] = []
    watch(page, errors)
    try:
        page.goto(served.base + "/docs")
        page.locator(".opblock-summary-path", has_text="/api/v1/executions").first.wait_for(timeout=20_000)
        assert page.locator(".opblock").count() > 20  # every operation, from /openapi.json
        page.goto(served.base + "/redoc")
        page.get_by_role("heading", name=re.compile("Squall API")).first.wait_for(timeout=20_000)
        page.get_by_text("/api/v1/executions").first.wait_for(state="attached", timeout=20_000)
        assert elsewhere == [] and errors == [], (elsewhere, errors)
    finally:
        context.close()


def test_log_in_with_the_printed_password_and_back_to_the_page_asked_for(served: Served, chromium: Any) -> None:
    execution_id = served.run("webui.lines", count=1, pause=0)
    served.wait(execution_id, "succeeded")
    context = chromium.new_context(viewport=VIEWPORT)
    errors: list[str] = []
    try:
        page = context.new_page()
        watch(page, errors)
        page.goto(f"{served.base}/executions/{execution_id}")
        page.wait_for_url(re.compile(rf"/login\?next=%2Fexecutions%2F{execution_id}$"))
        _login(page, "not-the-password")
        alert = page.get_by_role("alert")
        assert "Wrong user name or password" in alert.inner_text()
        _login(page, served.password)
        page.wait_for_url(f"{served.base}/executions/{execution_id}")
        assert page.locator("h1").inner_text().startswith("webui.lines")
        assert "admin (admin)" in page.locator("header").inner_text()
        page.get_by_role("button", name="Log out").click()
        page.wait_for_url(re.compile(r"/login$"))
        page.goto(f"{served.base}/executions")  # the session is over: back to the form
        page.wait_for_url(re.compile(r"/login\?next=%2Fexecutions$"))
        # The wrong password's 401 is a console message of Chromium's; nothing else may be.
        assert [e for e in errors if "401" not in e] == []
    finally:
        context.close()


def test_the_list_and_an_executions_page_with_its_output(served: Served, tab: Tab, shots: Path) -> None:
    done = served.run("webui.lines", count=3, pause=0)
    failed = served.run("core.local", cmd="echo '<script>alert(1)</script>'; exit 3")
    served.wait(done, "succeeded")
    served.wait(failed, "failed")
    tab.go("/executions")
    rows = tab.page.locator("table.list tbody tr")
    assert rows.count() >= 2
    first = rows.nth(0).inner_text()
    assert failed in first and "core.local" in first and "failed" in first
    assert done in rows.nth(1).inner_text()
    tab.shot(shots, "executions")

    tab.page.get_by_role("link", name=failed).click()
    tab.page.wait_for_url(f"{served.base}/executions/{failed}")
    # Output is text: the script tag is shown, never run (an alert would be a dialog, and a CSP error).
    assert "<script>alert(1)</script>" in tab.page.locator("pre.output-stdout").inner_text()
    tab.go(f"/executions/{done}")
    assert tab.page.locator("pre.output-stdout").inner_text().splitlines() == [
        "line 1 of 3", "line 2 of 3", "line 3 of 3"]
    assert "succeeded" in tab.page.locator("h1 .status").inner_text()
    tab.shot(shots, "execution")

    # The filters: only failed ones, from the form (a GET whose URL can be shared).
    tab.go("/executions")
    tab.page.get_by_label("Status").select_option("failed")
    tab.page.get_by_role("button", name="Filter").click()
    tab.page.wait_for_url(re.compile(r"status=failed"))
    listed = tab.page.locator("table.list tbody tr").all_inner_texts()
    assert listed and all("failed" in row for row in listed)
    assert not any(done in row for row in listed)
    assert tab.errors == []


def test_a_chat_started_execution_shows_its_adapter_and_channel(served: Served, tab: Tab, shots: Path) -> None:
    fake = served.chat
    channel = fake.town_square
    served.loop.run(lambda: fake.say(fake.alice, channel, "@squallbot lines 2"))
    deadline = time.monotonic() + 30
    while not (started := [e for e in served.executions(action="webui.lines")
                           if (e.get("context") or {}).get("chat")]):
        assert time.monotonic() < deadline, "the chat command started no execution:\n" + "".join(served.output)
        time.sleep(0.1)
    execution_id = started[0]["id"]
    served.wait(execution_id, "succeeded")

    tab.go("/executions")
    tab.page.get_by_label("Source").select_option("chat")
    tab.page.get_by_role("button", name="Filter").click()
    tab.page.wait_for_url(re.compile(r"source=chat"))
    rows = tab.page.locator("table.list tbody tr").all_inner_texts()
    assert len(rows) == 1 and execution_id in rows[0]
    assert f"chat mattermost {channel['id']}" in rows[0] and "alice" in rows[0]
    tab.page.get_by_role("link", name=execution_id).click()
    tab.page.wait_for_url(f"{served.base}/executions/{execution_id}")  # read the page the link leads to
    facts = dict(zip(tab.page.locator("dl.facts dt").all_inner_texts(),
                     tab.page.locator("dl.facts dd").all_inner_texts(), strict=True))
    assert facts["Chat adapter"] == "mattermost"
    assert facts["Channel"] == channel["id"]
    assert facts["Requested by"] == "alice"
    assert facts["Alias"] == "webui.lines"
    assert tab.page.locator("pre.output-stdout").inner_text().splitlines() == ["line 1 of 2", "line 2 of 2"]
    tab.shot(shots, "execution-from-chat")
    assert tab.errors == []


def _answer_confirm(page: Any, accept: bool) -> list[str]:
    """Answer the next `confirm()` question of `page` (OK or Cancel); the questions asked go in the list."""
    asked: list[str] = []

    def answer(dialog: Any) -> None:
        asked.append(f"{dialog.type}: {dialog.message}")
        if accept:
            dialog.accept()
        else:
            dialog.dismiss()

    page.once("dialog", answer)
    return asked


def test_cancel_a_running_execution(served: Served, tab: Tab) -> None:
    """Cancel asks first (static/confirm.js, the CSP allowing it): answered Cancel, nothing is sent and the run
    goes on; answered OK, it is canceled."""
    execution_id = served.run("webui.lines", count=200, pause=0.5)
    served.wait(execution_id, "running")
    tab.go(f"/executions/{execution_id}")
    assert "running" in tab.page.locator("h1 .status").inner_text()
    tab.page.evaluate("window.sameDocument = true")
    asked = _answer_confirm(tab.page, accept=False)
    tab.page.get_by_role("button", name="Cancel this execution").click()
    assert asked == [f"confirm: Cancel webui.lines {execution_id}? It cannot be resumed."]
    assert tab.page.evaluate("window.sameDocument") is True  # not sent: the same page, not a new one
    assert served.execution(execution_id)["status"] == "running"
    asked = _answer_confirm(tab.page, accept=True)
    with tab.page.expect_navigation():
        tab.page.get_by_role("button", name="Cancel this execution").click()
    assert len(asked) == 1
    served.wait(execution_id, "canceled")
    tab.go(f"/executions/{execution_id}")
    assert "canceled" in tab.page.locator("h1 .status").inner_text()
    assert tab.page.get_by_role("button", name="Cancel this execution").count() == 0
    assert tab.errors == []


def test_a_live_page_says_when_its_session_ended(served: Served, chromium: Any) -> None:
    """A live execution's page and the live list, open while their session ends (a logout in another tab):
    the server ends their streams with `end: signed-out`, which `sse-close` only closed, and the pages kept
    showing "running" with a Cancel button, frozen without a word. Each now says it is signed out and no
    longer updating, with a link to the login page that comes back to it, and is marked no longer live;
    without reloading."""
    execution_id = served.run("webui.lines", count=120, pause=0.5)
    served.wait(execution_id, "running")
    context = chromium.new_context(viewport=VIEWPORT)  # a session of its own: the module's admin one stays
    errors: list[str] = []
    try:
        other = context.new_page()
        watch(other, errors)
        other.goto(served.base + "/login")
        _login(other, served.password)
        other.wait_for_url(re.compile(r"/executions$"))
        pages = {path: context.new_page() for path in (f"/executions/{execution_id}", "/executions?action=webui.lines")}
        for path, page in pages.items():
            watch(page, errors)
            page.goto(served.base + path)
            page.evaluate("window.sameDocument = true")
        execution = pages[f"/executions/{execution_id}"]
        execution.locator("pre.output-stdout", has_text="line 2 of").wait_for(timeout=15_000)
        other.get_by_role("button", name="Log out").click()  # in another tab
        other.wait_for_url(re.compile(r"/login$"))
        for path, page in pages.items():
            notice = page.get_by_role("alert").filter(has_text="Signed out")
            notice.wait_for(timeout=30_000)  # the streams look at their session every 5 s
            assert notice.inner_text() == "Signed out: this page is no longer updating. Log in again.", path
            link = notice.get_by_role("link", name="Log in again")
            assert link.get_attribute("href") == "/login?next=" + quote(path, safe=""), path
            assert page.locator("[sse-connect]").get_attribute("data-live") == "signed-out", path
            assert page.evaluate("window.sameDocument") is True, path
        assert "running" in execution.locator("h1 .status").inner_text()  # as last known: it said so above
        execution.get_by_role("link", name="Log in again").click()
        execution.wait_for_url(re.compile(r"/login\?next="))
        _login(execution, served.password)
        execution.wait_for_url(f"{served.base}/executions/{execution_id}")
        assert errors == []
    finally:
        context.close()
        served.api.delete(f"/api/v1/executions/{execution_id}")


def _focused(page: Any) -> str:
    """What has the keyboard focus: `tag#id` or `tag "text"`, and whether a focus ring is drawn."""
    return page.evaluate("""() => {
        const e = document.activeElement;
        const name = e.id ? `${e.tagName.toLowerCase()}#${e.id}` : `${e.tagName.toLowerCase()} "${e.innerText.trim()}"`;
        // A date or time field's focus is on one of its parts (day, hour...), which Chromium highlights.
        const ring = /^(date|datetime-local|time)$/.test(e.type) ? "part" : getComputedStyle(e).outlineStyle;
        return `${name}|${ring}`;
    }""")


def test_the_keyboard_reaches_the_main_controls_with_a_visible_focus(served: Served, tab: Tab) -> None:
    served.wait(served.run("webui.lines", count=1, pause=0), "succeeded")
    tab.go("/executions")
    tab.page.keyboard.press("Tab")
    assert _focused(tab.page).startswith('a "Skip to content"|')
    tab.page.keyboard.press("Enter")
    assert _focused(tab.page).startswith("main#main|")
    reached: list[str] = []
    # Until the first execution's link (a date and time field takes a Tab per part: day, month, ...).
    while len(reached) < 80 and not (reached and re.match(r'a "[0-9a-f]{24}"', reached[-1])):
        tab.page.keyboard.press("Tab")
        reached.append(_focused(tab.page))
    names = [r.split("|")[0] for r in reached]
    # From the main content on: every filter, the Filter button, then the executions themselves.
    for control in ("select#f-status", "input#f-action", "input#f-pack", "input#f-user", "select#f-source",
                    "input#f-from", "input#f-to", 'button "Filter"'):
        assert control in names, (control, names)
    assert any(re.fullmatch(r'a "[0-9a-f]{24}"', name) for name in names), names
    assert [r for r in reached if r.endswith("|none")] == []  # each shows where the focus is
    # And the header's controls are reachable from the top of the page.
    tab.go("/executions")
    header: list[str] = []
    while len(header) < 30 and 'button "Log out"' not in header:
        tab.page.keyboard.press("Tab")
        header.append(_focused(tab.page).split("|")[0])
    for control in ('a "Executions"', 'a "Actions"', 'a "Inquiries"', 'button "Log out"'):
        assert control in header, (control, header)
    # A run form: from its first field to its button, by the keyboard alone.
    tab.go("/actions/webui.lines")
    form: list[str] = []
    while len(form) < 60 and 'button "Run webui.lines"' not in form:
        tab.page.keyboard.press("Tab")
        form.append(_focused(tab.page).split("|")[0])
    assert "input#p-count" in form and "input#p-pause" in form, form
    assert form.index("input#p-count") < form.index("input#p-pause") < form.index('button "Run webui.lines"')
    assert tab.errors == []


def _new_id(url: str) -> str:
    found = re.search(r"/executions/([0-9a-f]{24})$", url)
    assert found, url
    return found.group(1)


def test_run_an_action_from_its_form_and_watch_the_output_arrive_live(served: Served, tab: Tab,
                                                                        shots: Path) -> None:
    tab.go("/actions")
    tab.page.get_by_role("link", name="webui.lines").click()
    tab.page.wait_for_url(f"{served.base}/actions/webui.lines")
    form = tab.page.locator("form.run-form")
    form.get_by_label("count").fill("3")
    form.get_by_label("pause").fill("1.5")
    tab.shot(shots, "run-form")
    form.get_by_role("button", name="Run webui.lines").click()
    tab.page.wait_for_url(re.compile(r"/executions/[0-9a-f]{24}$"))
    execution_id = _new_id(tab.page.url)
    tab.page.evaluate("window.sameDocument = true")  # gone if anything reloads the page
    output = tab.page.locator("pre.output-stdout")
    output.filter(has_text="line 1 of 3").wait_for(timeout=15_000)
    # Seen while it runs (the last line comes 3 s after the first): the page says running.
    assert "line 3 of 3" not in output.inner_text()
    assert "running" in tab.page.locator("h1 .status").inner_text()
    tab.page.locator("pre.output-stdout", has_text="line 2 of 3").wait_for(timeout=15_000)
    tab.shot(shots, "execution-live")
    tab.page.locator("h1 .status", has_text="succeeded").wait_for(timeout=15_000)
    assert output.inner_text().splitlines() == [f"line {i} of 3" for i in range(1, 4)]
    assert tab.page.evaluate("window.sameDocument") is True
    record = served.execution(execution_id)
    assert (record["parameters"]["count"], record["parameters"]["pause"]) == (3, 1.5)
    assert record["context"]["user"] == "admin" and record["context"]["source"] == "web"
    assert tab.errors == []


def test_core_local_from_its_form_streams_its_output(served: Served, tab: Tab) -> None:
    """StackStorm's own `core.local`, run from its generated form: its lines arrive while it runs."""
    tab.go("/actions/core.local")
    form = tab.page.locator("form.run-form")
    form.get_by_label("cmd").fill('for i in 1 2 3; do echo "local $i"; sleep 1.5; done')
    form.get_by_role("button", name="Run core.local").click()
    tab.page.wait_for_url(re.compile(r"/executions/[0-9a-f]{24}$"))
    output = tab.page.locator("pre.output-stdout")
    output.filter(has_text="local 1").wait_for(timeout=15_000)
    assert "local 3" not in output.inner_text()  # seen while it runs: the last line comes 3 s after the first
    tab.page.locator("h1 .status", has_text="succeeded").wait_for(timeout=15_000)
    assert output.inner_text().splitlines() == ["local 1", "local 2", "local 3"]
    assert served.execution(_new_id(tab.page.url))["action"]["ref"] == "core.local"
    assert tab.errors == []


def test_the_list_shows_a_new_execution_without_reloading(served: Served, tab: Tab, shots: Path) -> None:
    tab.go("/executions")
    tab.page.evaluate("window.sameDocument = true")
    execution_id = served.run("webui.lines", count=1, pause=0)
    row = tab.page.locator("table.list tbody tr", has_text=execution_id)
    row.wait_for(timeout=15_000)
    row.filter(has_text="succeeded").wait_for(timeout=15_000)
    assert tab.page.locator("table.list tbody tr").first.inner_text().count(execution_id) == 1
    tab.shot(shots, "executions-live")
    assert tab.page.evaluate("window.sameDocument") is True
    assert tab.errors == []


def test_a_new_row_takes_the_change_sent_right_behind_it(served: Served, tab: Tab) -> None:
    """An action that ends at once: the list's stream sends its row, then the row's change a moment
    later. The change must not fall into the time htmx takes to start listening on the new row. The
    stream is served once by Playwright, both events in one chunk, with rows as the page renders them
    (taken from the page, under an id no execution has); after it, the real stream takes over."""
    shown = served.run("webui.lines", count=1, pause=0)
    served.wait(shown, "succeeded")
    tab.go("/executions")
    row = tab.page.locator(f"tr#row-{shown}")
    ended = row.evaluate("row => row.outerHTML")
    assert 'sse-swap="row-' in ended and "succeeded" in ended
    fake = "f" * 24
    ended = ended.replace(shown, fake)
    running = ended.replace("succeeded", "running")
    stream = "".join(f"event: {name}\n" + "".join(f"data: {line}\n" for line in html.splitlines()) + "\n"
                     for name, html in (("new", running), (f"row-{fake}", ended)))

    tab.page.route(re.compile(r"/live/executions\?"), lambda route: route.fulfill(
        status=200, headers={"content-type": "text/event-stream", "cache-control": "no-store"}, body=stream),
        times=1)
    tab.go("/executions")
    tab.page.evaluate("window.sameDocument = true")
    tab.page.locator(f"tr#row-{fake}", has_text="succeeded").wait_for(timeout=15_000)
    assert tab.page.locator(f"tr#row-{fake}").count() == 1
    assert tab.page.evaluate("window.sameDocument") is True
    # The served stream ends, which EventSource reports as an error event (htmx logs it) before it
    # reconnects, to the real stream this time; nothing else may show.
    assert [error for error in tab.errors if not error.startswith("console: [object Event] ")] == []


def test_answer_an_inquiry_from_the_inbox_and_the_workflow_goes_on(served: Served, tab: Tab, shots: Path) -> None:
    workflow = served.run("webui.approval")
    deadline = time.monotonic() + 30
    while not (asked := [e for e in served.executions(parent=workflow) if e["status"] == "pending"]):
        assert time.monotonic() < deadline, served.execution(workflow)
        time.sleep(0.1)
    inquiry = asked[0]["id"]
    # The workflow's page, open in a second tab while the answer is given in the first: its graph and
    # status follow the workflow live.
    watching = tab.page.context.new_page()
    watch(watching, tab.errors)
    watching.goto(f"{served.base}/executions/{workflow}")
    watching.evaluate("window.sameDocument = true")
    assert "status-pending" in (watching.locator("g.graph-task[data-task=approve]").get_attribute("class") or "")
    assert watching.locator("g.graph-task[data-task=deploy]").count() == 1
    tab.go("/inquiries")
    pending = tab.page.locator("section[aria-labelledby=pending-title] tbody tr", has_text=inquiry)
    assert "webui.approval" in pending.inner_text()
    tab.shot(shots, "inquiries")
    pending.get_by_role("link", name=inquiry).click()
    tab.page.wait_for_url(f"{served.base}/inquiries/{inquiry}")
    tab.page.get_by_role("radio", name="Yes").check()
    tab.shot(shots, "inquiry")
    tab.page.get_by_role("button", name="Answer as admin").click()
    tab.page.locator(".responder", has_text="admin").wait_for(timeout=15_000)

    record = served.wait(workflow, "succeeded")
    assert record["result"]["output"] == {"answer": True}
    watching.locator("h1 .status", has_text="succeeded").wait_for(timeout=15_000)
    watching.locator("g.graph-task.status-succeeded[data-task=deploy]").wait_for(timeout=15_000)
    assert watching.evaluate("window.sameDocument") is True
    watching.locator("section[aria-labelledby=children-title]").scroll_into_view_if_needed()
    watching.screenshot(path=str(shots / "workflow.png"))
    tab.page.get_by_role("link", name=re.compile(workflow)).first.click()
    tab.page.wait_for_url(f"{served.base}/executions/{workflow}")
    tasks = tab.page.locator("section[aria-labelledby=children-title]")
    assert "approve" in tasks.inner_text() and "deploy" in tasks.inner_text()
    tab.go("/inquiries")
    answered = tab.page.locator("section[aria-labelledby=answered-title] tbody tr", has_text=inquiry)
    assert "admin" in answered.locator(".responder").inner_text()
    assert tab.errors == []


def _but_the_refusal(errors: list[str]) -> list[str]:
    """The console errors but Chromium's note of the 400 a refused form is answered with."""
    return [error for error in errors if "status of 400" not in error]


def test_enter_before_choosing_yes_or_no_answers_nothing(served: Served, tab: Tab) -> None:
    """A required boolean is a yes or no with nothing chosen: Enter on it before choosing sends nothing
    chosen, which is refused beside it (an unticked checkbox answered "no"); "No" chosen is an answer."""
    workflow = served.run("webui.approval")
    deadline = time.monotonic() + 30
    while not (asked := [e for e in served.executions(parent=workflow) if e["status"] == "pending"]):
        assert time.monotonic() < deadline, served.execution(workflow)
        time.sleep(0.1)
    inquiry = asked[0]["id"]
    tab.go(f"/inquiries/{inquiry}")
    yes, no = tab.page.get_by_role("radio", name="Yes"), tab.page.get_by_role("radio", name="No")
    assert not yes.is_checked() and not no.is_checked()
    yes.focus()
    with tab.page.expect_navigation():
        yes.press("Enter")
    assert "is required by inquiry" in tab.page.locator("#a-approved-error").inner_text()
    assert served.execution(inquiry)["status"] == "pending"
    no.check()
    tab.page.get_by_role("button", name="Answer as admin").click()
    tab.page.locator(".responder", has_text="admin").wait_for(timeout=15_000)
    assert served.wait(workflow, "succeeded")["result"]["output"] == {"answer": False}
    assert _but_the_refusal(tab.errors) == []


def test_a_typo_in_a_number_field_is_told_not_run_with_the_default(served: Served, tab: Tab) -> None:
    """`1e` typed into an integer field reaches the server and comes back beside the field: a
    `type="number"` input sent it empty, and the action ran with its default."""
    before = {e["id"] for e in served.executions(action="webui.lines")}
    tab.go("/actions/webui.lines")
    count = tab.page.get_by_label(re.compile(r"^count"))
    count.fill("")
    count.press_sequentially("1e")
    with tab.page.expect_navigation():
        tab.page.get_by_role("button", name="Run webui.lines").click()
    assert "'1e' is not an integer" in tab.page.locator("#p-count-error").inner_text()
    assert count.input_value() == "1e" and count.get_attribute("aria-invalid") == "true"
    assert {e["id"] for e in served.executions(action="webui.lines")} == before
    assert _but_the_refusal(tab.errors) == []


def test_a_keys_value_to_encrypt_is_not_shown_and_a_refusal_is_told_beside_its_field(served: Served,
                                                                                     tab: Tab) -> None:
    """While Encrypt is ticked the value is a password field (static/keys.js, the CSP allowing it); a
    refused key comes back on the keys page with the message beside its field, the secret not sent back."""
    tab.go("/keys")
    value, encrypt = tab.page.get_by_label("Value", exact=True), tab.page.get_by_label(re.compile(r"^Encrypt"))
    assert value.get_attribute("type") == "text"
    encrypt.check()
    assert value.get_attribute("type") == "password"
    encrypt.uncheck()
    assert value.get_attribute("type") == "text"
    encrypt.check()
    tab.page.get_by_label("Name", exact=True).fill("db.password")
    value.fill("hunter2-prod")
    tab.page.get_by_label("TTL in seconds").fill("99999999999999")
    with tab.page.expect_navigation():
        tab.page.get_by_label("Description").press("Enter")
    assert "ttl must be at most" in tab.page.locator("#key-ttl-error").inner_text()
    assert tab.page.get_by_label("Name", exact=True).input_value() == "db.password"
    assert value.input_value() == "" and value.get_attribute("type") == "password" and encrypt.is_checked()
    assert "hunter2-prod" not in tab.page.content()
    assert served.api.get("/api/v1/keys/db.password").status_code == 404
    assert _but_the_refusal(tab.errors) == []


def test_a_key_s_delete_asks_first(served: Served, tab: Tab) -> None:
    """A key's Delete deleted it at one click: it asks first, naming the key, and deletes only once told OK."""
    assert served.api.put("/api/v1/keys/webui.doomed", json={"name": "webui.doomed", "value": "v"}).status_code == 200
    tab.go("/keys")
    delete = tab.page.get_by_role("button", name="Delete webui.doomed")
    asked = _answer_confirm(tab.page, accept=False)
    delete.click()
    assert asked == ["confirm: Delete the system key “webui.doomed”? It cannot be undone."]
    assert served.api.get("/api/v1/keys/webui.doomed").status_code == 200
    asked = _answer_confirm(tab.page, accept=True)
    with tab.page.expect_navigation():
        delete.click()
    assert len(asked) == 1
    assert served.api.get("/api/v1/keys/webui.doomed").status_code == 404
    assert tab.page.get_by_role("button", name="Delete webui.doomed").count() == 0
    assert tab.errors == []


def test_rerun_an_execution_with_an_edited_parameter(served: Served, tab: Tab) -> None:
    first = served.run("webui.lines", count=2, pause=0)
    served.wait(first, "succeeded")
    tab.go(f"/executions/{first}")
    tab.page.get_by_role("link", name="Re-run with edited parameters").click()
    tab.page.wait_for_url(f"{served.base}/executions/{first}/rerun")
    count = tab.page.get_by_label(re.compile(r"^count"))
    assert count.input_value() == "2"
    count.fill("3")
    tab.page.get_by_role("button", name="Run again").click()
    tab.page.wait_for_url(re.compile(r"/executions/[0-9a-f]{24}$"))
    again = _new_id(tab.page.url)
    assert again != first
    tab.page.locator("h1 .status", has_text="succeeded").wait_for(timeout=15_000)
    assert tab.page.locator("pre.output-stdout").inner_text().splitlines() == [
        "line 1 of 3", "line 2 of 3", "line 3 of 3"]
    assert served.execution(again)["parameters"]["count"] == 3
    assert served.execution(first)["parameters"]["count"] == 2
    assert tab.errors == []


def test_a_multi_line_value_runs_again_as_it_was_when_left_untouched(served: Served, tab: Tab) -> None:
    """Chromium sends a text area's line breaks as CR LF and drops one right after `<textarea>`: a re-run
    left as shown ran `set -e\\r` (refused by bash, `set -e` off) and lost a leading line break."""
    cmd = "\nset -e\necho deployed"
    first = served.run("core.local", cmd=cmd)
    served.wait(first, "succeeded")
    tab.go(f"/executions/{first}/rerun")
    assert tab.page.get_by_label(re.compile(r"^cmd")).input_value() == cmd
    tab.page.get_by_role("button", name="Run again").click()
    tab.page.wait_for_url(re.compile(r"/executions/[0-9a-f]{24}$"))
    again = served.wait(_new_id(tab.page.url), "succeeded", "failed")
    assert again["parameters"]["cmd"] == cmd
    assert (again["status"], again["result"]["stdout"], again["result"]["stderr"]) == ("succeeded", "deployed", "")
    assert tab.errors == []


def test_a_multi_line_default_runs_from_the_form_as_written(served: Served, tab: Tab) -> None:
    """A string default of several lines is a text area holding them (a text input's value loses its line
    breaks in the browser, and the run got them run together); sent untouched, it runs as written."""
    tab.go("/actions/webui.note")
    body = tab.page.get_by_label(re.compile(r"^body"))
    assert body.evaluate("e => e.tagName") == "TEXTAREA"
    assert body.input_value() == "Dear team,\nthe deploy is done.\n"
    tab.page.get_by_role("button", name="Run webui.note").click()
    tab.page.wait_for_url(re.compile(r"/executions/[0-9a-f]{24}$"))
    record = served.wait(_new_id(tab.page.url), "succeeded", "failed")
    assert record["parameters"]["body"] == "Dear team,\nthe deploy is done.\n"
    assert "\\r" not in record["result"]["stdout"] and record["result"]["stdout"].count("\\n") == 2  # od -c
    assert tab.errors == []


def test_a_canceled_executions_page_still_shows_what_it_printed(served: Served, tab: Tab) -> None:
    """Loaded once the run was canceled, the page shows the lines it showed while the run printed them."""
    execution_id = served.run("webui.lines", count=200, pause=0.2)
    tab.go(f"/executions/{execution_id}")
    tab.page.locator("pre.output-stdout", has_text="line 3 of 200").wait_for(timeout=15_000)
    _answer_confirm(tab.page, accept=True)
    tab.page.get_by_role("button", name="Cancel this execution").click()
    served.wait(execution_id, "canceled")
    tab.go(f"/executions/{execution_id}")
    assert "canceled" in tab.page.locator("h1 .status").inner_text()
    assert tab.page.locator("pre.output-stdout").inner_text().splitlines()[:3] == [
        "line 1 of 200", "line 2 of 200", "line 3 of 200"]
    assert tab.errors == []


# -- live streams through a proxy that fails -------------------------------------------------------------

async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        sink.close()


class CuttingProxy:
    """A reverse proxy in front of `squall serve`, as nginx would be, that fails as one does: `cut()`
    severs every connection through it (a network blip: the browser reconnects by itself, naming the
    last event it got) and answers the next `failing` live streams asked for with 502 (the proxy while
    squall restarts: the browser's EventSource gives up, and htmx opens the stream anew from the page's
    `sse-connect` URL, naming nothing)."""

    def __init__(self, loop: LoopThread, upstream: str) -> None:
        self.loop = loop
        self.upstream = httpx.URL(upstream)
        self.connections: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.failing = 0
        self.failed = 0  # live streams answered 502
        self.streams: list[str] = []  # the request line of each live stream asked for
        self.server = loop.run(lambda: asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        line = head.split(b"\r\n", 1)[0].decode()
        if " /live/" in line:
            self.streams.append(line)
            if self.failing:
                self.failing -= 1
                self.failed += 1
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n"
                             b"Connection: close\r\n\r\nBad Gateway")
                await writer.drain()
                writer.close()
                return
        upstream_reader, upstream_writer = await asyncio.open_connection(self.upstream.host, self.upstream.port)
        # One request a connection, so each request's head is read here (and a live one can fail).
        upstream_writer.write(re.sub(rb"(?im)^connection:[^\r\n]*\r\n", b"", head)[:-2] + b"Connection: close\r\n\r\n")
        pair = (writer, upstream_writer)
        self.connections.add(pair)
        try:
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        finally:
            self.connections.discard(pair)

    def cut(self, failing: int = 0) -> None:
        """Sever every connection now (idle ones too, so the browser's next request opens a new one)."""
        async def sever() -> None:
            self.failing = failing
            for writer, upstream_writer in list(self.connections):
                writer.transport.abort()
                upstream_writer.transport.abort()
        self.loop.run(sever)

    def close(self) -> None:
        async def close() -> None:
            self.server.close()
            for writer, upstream_writer in list(self.connections):
                writer.transport.abort()
                upstream_writer.transport.abort()
        self.loop.run(close)


@pytest.fixture
def proxy(served: Served) -> Iterator[CuttingProxy]:
    """A `CuttingProxy` in front of the module's `squall serve` (the session cookie goes with it: cookies
    are per host, not per port)."""
    opened = CuttingProxy(served.loop, served.base)
    try:
        yield opened
    finally:
        opened.close()


def _not_the_cut(errors: list[str]) -> list[str]:
    """The console errors a cut and a 502 do not explain: the failed loads Chromium reports, and htmx's
    log of the stream's error event."""
    explained = ("502", "[object Event]", "net::ERR_", "EventSource's response has a MIME type")
    return [error for error in errors if not any(part in error for part in explained)]


def test_an_executions_output_is_not_shown_twice_when_its_stream_comes_back(served: Served, tab: Tab,
                                                                            proxy: CuttingProxy) -> None:
    """The stream is cut while the action prints, and the proxy answers 502 to the browser's reconnect:
    htmx opens the stream anew from the page's URL, which must go on from the last chunk the page
    shows (static/live.js keeps it there), not from the page's first (every chunk since came twice)."""
    execution_id = served.run("webui.lines", count=8, pause=0.5)
    served.wait(execution_id, "running")
    tab.base = proxy.base
    tab.go(f"/executions/{execution_id}")
    tab.page.evaluate("window.sameDocument = true")
    output = tab.page.locator("pre.output-stdout")
    output.filter(has_text="line 2 of 8").wait_for(timeout=15_000)
    proxy.cut(failing=1)
    tab.page.locator("h1 .status", has_text="succeeded").wait_for(timeout=30_000)
    assert output.inner_text().splitlines() == [f"line {i} of 8" for i in range(1, 9)]
    assert proxy.failed == 1 and len(proxy.streams) >= 3, proxy.streams  # the first, the 502, htmx's new one
    assert tab.page.evaluate("window.sameDocument") is True
    assert _not_the_cut(tab.errors) == []


def test_the_list_shows_each_row_once_when_its_stream_comes_back(served: Served, tab: Tab,
                                                                 proxy: CuttingProxy) -> None:
    """Rows prepended live, then the stream cut and a 502: the stream htmx opens anew must not send
    them as new again (the page showed them twice)."""
    tab.base = proxy.base
    tab.go("/executions?action=core.noop")
    tab.page.evaluate("window.sameDocument = true")
    before = [served.run("core.noop") for _ in range(3)]
    for execution_id in before:
        tab.page.locator(f"tr#row-{execution_id}", has_text="succeeded").wait_for(timeout=15_000)
    proxy.cut(failing=1)
    after = served.run("core.noop")  # shown only once the stream is back
    tab.page.locator(f"tr#row-{after}", has_text="succeeded").wait_for(timeout=30_000)
    rows = tab.page.locator("table.list tbody tr").evaluate_all("rows => rows.map(row => row.id)")
    assert rows[:4] == [f"row-{execution_id}" for execution_id in [after, *reversed(before)]]
    assert len(rows) == len(set(rows)), rows
    assert proxy.failed == 1 and len(proxy.streams) >= 3, proxy.streams
    assert tab.page.evaluate("window.sameDocument") is True
    assert _not_the_cut(tab.errors) == []


def _stream(*events: tuple[str, str, str]) -> str:
    """A server-sent event stream's text: (id, event, data) each."""
    return "".join((f"id: {id_}\n" if id_ else "") + f"event: {name}\n"
                   + "".join(f"data: {line}\n" for line in data.split("\n")) + "\n" for id_, name, data in events)


def _serve_once(tab: Tab, url: str, body: str) -> None:
    """The next request for a stream matching `url` answered with `body`; later ones reach the server."""
    tab.page.route(re.compile(url), lambda route: route.fulfill(
        status=200, headers={"content-type": "text/event-stream", "cache-control": "no-store"}, body=body), times=1)


def test_a_repeated_output_event_is_shown_once(served: Served, tab: Tab) -> None:
    """An output event the page has applied already (same id) is dropped, not appended again, whatever
    stream brings it back."""
    execution_id = served.run("core.local", cmd="sleep 60")
    served.wait(execution_id, "running")
    chunk = ("9000000001", "stdout", "once\n")
    _serve_once(tab, rf"/live/executions/{execution_id}\?", _stream(chunk, chunk, ("9000000002", "stdout", "twice\n")))
    tab.go(f"/executions/{execution_id}")
    output = tab.page.locator("pre.output-stdout")
    output.filter(has_text="twice").wait_for(timeout=15_000)
    assert output.inner_text().splitlines() == ["once", "twice"]
    served.api.delete(f"/api/v1/executions/{execution_id}")
    tab.page.locator("h1 .status", has_text="canceled").wait_for(timeout=15_000)  # the real stream took over
    assert output.inner_text().splitlines() == ["once", "twice"]
    assert [error for error in tab.errors if not error.startswith("console: [object Event] ")] == []


def test_a_new_row_the_list_has_already_is_kept_once(served: Served, tab: Tab) -> None:
    """A `new` event that brings a row the page shows (a stream that started from an older top) leaves
    one row of that id: the new copy, on top."""
    shown = served.run("webui.lines", count=1, pause=0)
    served.wait(shown, "succeeded")
    tab.go("/executions")
    row = tab.page.locator(f"tr#row-{shown}").evaluate("row => row.outerHTML")
    fake = "f" * 24
    _serve_once(tab, r"/live/executions\?", _stream((fake, "new", row.replace(shown, fake) + "\n" + row)))
    tab.go("/executions")
    tab.page.locator(f"tr#row-{fake}").wait_for(timeout=15_000)
    rows = tab.page.locator("table.list tbody tr").evaluate_all("rows => rows.map(row => row.id)")
    assert rows[:2] == [f"row-{fake}", f"row-{shown}"] and rows.count(f"row-{shown}") == 1, rows
    assert [error for error in tab.errors if not error.startswith("console: [object Event] ")] == []


# -- what a live update must not take from the person, and a phone's screen ---------------------------------

def test_a_row_s_live_update_keeps_its_tick_and_the_focus(served: Served, tab: Tab) -> None:
    """Two executions waiting their turn are ticked for the bulk cancel, the focus on the first's box;
    the first then starts, and its row is replaced live: both stay ticked, the focus stays on the
    same box, and the bulk cancel cancels both."""
    ahead = served.run("webui.queued")
    served.wait(ahead, "running")
    waiting = [served.run("webui.queued") for _ in range(2)]
    for execution_id in waiting:
        served.wait(execution_id, "delayed")
    tab.go("/executions?action=webui.queued")
    tab.page.evaluate("window.sameDocument = true")
    boxes = [tab.page.locator(f"tr#row-{execution_id} input[type=checkbox]") for execution_id in waiting]
    for box in boxes:
        box.check()
    boxes[0].focus()
    served.api.delete(f"/api/v1/executions/{ahead}")  # its end lets the first waiting one start
    served.wait(waiting[0], "running")
    tab.page.locator(f"tr#row-{waiting[0]} .status", has_text="running").wait_for(timeout=15_000)
    assert [box.is_checked() for box in boxes] == [True, True]
    assert tab.page.evaluate("document.activeElement.value") == waiting[0]
    assert tab.page.evaluate("window.sameDocument") is True
    tab.page.get_by_role("button", name="Cancel the checked executions").click()
    tab.page.wait_for_url(f"{served.base}/executions/cancel")
    assert [served.wait(execution_id, "canceled")["status"] for execution_id in waiting] == ["canceled"] * 2
    assert tab.errors == []


def _at_end(box: Any) -> bool:
    """Whether the output box is scrolled to its end (within a pixel: positions may be fractional)."""
    return box.evaluate("box => box.scrollHeight - box.scrollTop - box.clientHeight < 2")


def test_live_output_follows_its_newest_line_unless_scrolled_up(served: Served, tab: Tab, tmp_path: Path) -> None:
    """The output box of a running execution, once it overflows, follows the lines as they arrive (as
    `tail -f` does) while it is scrolled to its end; scrolled up to read, it stays where it was. A page
    opened on output that overflows already opens at its end. The action prints each part of its
    output when the test creates that part's file, so the box's state before each part is known."""
    gate = tmp_path / "part"
    cmd = (f'for n in 1 2 3 4; do while [ ! -e {gate}-$n ]; do sleep 0.05; done; '
           f'[ $n = 4 ] || for i in $(seq 1 60); do echo "part $n line $i"; done; done')
    execution_id = served.run("core.local", cmd=cmd)
    served.wait(execution_id, "running")
    tab.go(f"/executions/{execution_id}")
    tab.page.evaluate("window.sameDocument = true")
    output = tab.page.locator("pre.output-stdout")

    def part(n: int) -> None:
        (tmp_path / f"part-{n}").touch()
        output.filter(has_text=f"part {n} line 60").wait_for(timeout=15_000)

    part(1)
    assert output.evaluate("box => box.scrollHeight > box.clientHeight + 200")  # it overflows
    assert _at_end(output)
    output.evaluate("box => { box.scrollTop = 0; }")
    part(2)
    assert output.evaluate("box => box.scrollTop") == 0
    output.evaluate("box => { box.scrollTop = box.scrollHeight; }")
    part(3)
    assert _at_end(output)
    assert tab.page.evaluate("window.sameDocument") is True
    tab.go(f"/executions/{execution_id}")  # still running: the page opens on its output's end
    assert output.inner_text().splitlines()[-1] == "part 3 line 60" and _at_end(output)
    (tmp_path / "part-4").touch()
    served.wait(execution_id, "succeeded")
    assert tab.errors == []


def test_a_row_that_stops_matching_the_filter_leaves_the_live_list(served: Served, tab: Tab) -> None:
    """On the live list of running executions, one that ends is taken off the page, not shown ended."""
    execution_id = served.run("webui.lines", count=200, pause=0.5)
    served.wait(execution_id, "running")
    # The stream sends every row once when it opens: that event says the stream looked at the list.
    # Noted on the page as an attribute a locator waits for: `wait_for_function` evaluates its
    # predicate as a string when it polls, which the page's CSP (no 'unsafe-eval') refuses.
    tab.page.add_init_script("""document.addEventListener("htmx:sseBeforeMessage", event => {
        const root = document.documentElement;
        root.dataset.streamed = (root.dataset.streamed || "") + " " + event.detail.type; });""")
    tab.go("/executions?action=webui.lines&status=running")
    row = tab.page.locator(f"tr#row-{execution_id}")
    tab.page.locator(f"html[data-streamed~='row-{execution_id}']").wait_for(state="attached", timeout=15_000)
    assert row.count() == 1
    tab.page.evaluate("window.sameDocument = true")
    served.api.delete(f"/api/v1/executions/{execution_id}")
    served.wait(execution_id, "canceled")
    row.wait_for(state="detached", timeout=15_000)
    assert tab.page.evaluate("window.sameDocument") is True
    assert tab.errors == []


PHONE = {"width": 390, "height": 844}


def test_a_phone_s_screen_shows_the_menu_and_scrolls_only_the_lists_sideways(
        served: Served, chromium: Any, admin_state: dict[str, Any], tab: Tab, shots: Path) -> None:
    """At 390 pixels wide no page scrolls sideways: the menu wraps, a list wider than the screen
    scrolls in its own box, and the executions' filters start folded, so the list is on the first
    screen (they open with a tap; on a wide screen they start open)."""
    served.wait(served.run("webui.lines", count=1, pause=0), "succeeded")
    context = chromium.new_context(viewport=PHONE, storage_state=admin_state)
    phone = Tab(context.new_page(), served.base)
    watch(phone.page, phone.errors)
    try:
        for path in ("/executions", "/audit", "/actions", "/inquiries", "/aliases", "/rules", "/triggers",
                     "/packs", "/status"):
            phone.go(path)
            assert phone.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], path
            assert phone.page.evaluate("""() => [...document.querySelectorAll('header nav a')]
                .filter(a => a.getBoundingClientRect().right > innerWidth).map(a => a.innerText)""") == [], path
        phone.go("/audit")
        listed = phone.page.locator(".table-scroll", has=phone.page.locator("table.list"))
        assert listed.evaluate("box => box.scrollWidth > box.clientWidth")  # wider than the screen: it scrolls
        phone.go("/executions")
        filters = phone.page.locator("details.filters-box")
        assert filters.evaluate("details => details.open") is False
        assert phone.page.locator("table.list tbody tr").first.evaluate(
            "row => row.getBoundingClientRect().bottom") < PHONE["height"]
        phone.shot(shots, "executions-phone")
        phone.page.get_by_text("Filters", exact=True).click()
        phone.page.get_by_label("Status").select_option("succeeded")
        phone.page.get_by_role("button", name="Filter").click()
        phone.page.wait_for_url(re.compile(r"status=succeeded"))
        assert "(1 set)" in phone.page.locator("details.filters-box summary").inner_text()
        assert phone.errors == []
    finally:
        context.close()
    tab.go("/executions")
    assert tab.page.locator("details.filters-box").evaluate("details => details.open") is True
    assert tab.page.get_by_label("Status").is_visible()


# -- live tabs and the browser's connections, and the end of a cut output -------------------------------------

#: Counts, on the page's root, the streams htmx opened (`htmx:sseOpen`), for a locator to wait on.
_COUNT_OPENED = """document.addEventListener("htmx:sseOpen", () => {
    const root = document.documentElement;
    root.dataset.opened = String(Number(root.dataset.opened || 0) + 1); });"""


def _shown(page: Any, shown: bool) -> None:
    """`page` as its tab sent to the background (or brought back) shows to its scripts. Headless Chromium
    shows every page whatever is done to it (its window minimized, its lifecycle frozen, another page
    brought to the front, focus emulation off), so `document.visibilityState` is made to say it and
    `visibilitychange` sent, as the browser sends it."""
    page.evaluate("""shown => {
        const state = shown ? "visible" : "hidden";
        Object.defineProperty(document, "visibilityState", {configurable: true, get: () => state});
        document.dispatchEvent(new Event("visibilitychange")); }""", shown)


def test_hidden_live_tabs_let_go_of_their_connections(served: Served, chromium: Any,
                                                      admin_state: dict[str, Any]) -> None:
    """Each live page's stream holds one of the 6 connections Chromium allows a host over HTTP/1.1 (all
    uvicorn speaks), and every other request to the host waits for a free one: with six live tabs, no
    other page of Squall loaded, without a word. A hidden tab closes its stream, so a seventh tab loads
    while five of six are hidden; one shown again opens its stream from where the page stands: what it
    missed shows, once."""
    context = chromium.new_context(viewport=VIEWPORT, storage_state=admin_state)  # one pool of connections
    context.add_init_script(_COUNT_OPENED)
    errors: list[str] = []
    try:
        tabs = []
        for _ in range(6):
            page = context.new_page()
            watch(page, errors)
            page.goto(served.base + "/executions?action=core.noop")
            page.locator("html[data-opened='1']").wait_for(state="attached", timeout=15_000)
            page.evaluate("window.sameDocument = true")
            tabs.append(page)
        seen = served.run("core.noop")  # moves each page's cursor (`top`), where its stream goes on from
        tabs[1].locator(f"tr#row-{seen}", has_text="succeeded").wait_for(timeout=15_000)
        for page in tabs[1:]:
            _shown(page, False)
        other = context.new_page()
        watch(other, errors)
        answer = other.goto(served.base + "/actions", timeout=15_000)
        assert answer is not None and answer.status == 200
        assert other.get_by_role("heading", name="Actions", exact=True).is_visible()
        missed = served.run("core.noop")
        tabs[0].locator(f"tr#row-{missed}", has_text="succeeded").wait_for(timeout=15_000)
        assert tabs[1].locator(f"tr#row-{missed}").count() == 0  # hidden: its stream is closed
        streams: list[str] = []
        tabs[1].on("request", lambda request: streams.append(request.url) if "/live/" in request.url else None)
        _shown(tabs[1], True)
        tabs[1].locator("html[data-opened='2']").wait_for(state="attached", timeout=15_000)
        assert streams == [f"{served.base}/live/executions?action=core.noop&top={seen}"]
        tabs[1].locator(f"tr#row-{missed}", has_text="succeeded").wait_for(timeout=15_000)
        rows = tabs[1].locator("table.list tbody tr").evaluate_all("rows => rows.map(row => row.id)")
        assert rows[0] == f"row-{missed}" and len(rows) == len(set(rows)), rows
        assert [page.evaluate("window.sameDocument") for page in tabs] == [True] * 6
        assert errors == []
    finally:
        context.close()


def test_a_live_page_shows_the_end_of_an_output_cut_at_the_live_cap_once_the_run_ends(
        served: Served, tab: Tab, tmp_path: Path) -> None:
    """A run prints past the live copy's cap (1 MiB, then `[output truncated]`) and then its last line,
    where an error usually is: once it has ended, the page shows the result's output, last line
    included, without a reload. The run starts printing once the page follows it."""
    gate = tmp_path / "go"
    cmd = (f"while [ ! -e {gate} ]; do sleep 0.05; done; "
           r"head -c 1100000 /dev/zero | tr '\0' x; echo; echo the last line")
    execution_id = served.run("core.local", cmd=cmd)
    served.wait(execution_id, "running")
    tab.go(f"/executions/{execution_id}")
    tab.page.evaluate("window.sameDocument = true")
    gate.touch()
    tab.page.locator("h1 .status", has_text="succeeded").wait_for(timeout=30_000)
    output = tab.page.locator("pre.output-stdout")
    output.filter(has_text="the last line").wait_for(timeout=15_000)
    assert "[output truncated]" not in output.inner_text()
    assert tab.page.evaluate("window.sameDocument") is True
    assert tab.errors == []
