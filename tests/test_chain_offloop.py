"""ActionChain and Mistral steps evaluate their expressions on a render thread, as Orquesta's do.

A chain's `publish` or a Mistral task's YAQL, sized by a webhook body, held the event loop (chat, the
API, every other run) for up to `templates.max_seconds` per expression, and a step of many expressions
for as long as it had expressions. Each test holds a marked expression (`heldmarker`, `slowitem`)
where it evaluates and checks what the loop, a cancel, a pause or Squall's close does meanwhile; none
of them measures time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from engine import templates
from engine.config import TemplateLimits, load_config
from engine.templates import TemplateLimitError, configure_limits
from engine.workflows import expressions
from tests.workflow_helpers import children, run, task_names, workflow_pack

#: Each kind's first task publishes a marked expression in the step that also starts `second`.
HELD_CHAIN = """
chain:
  - name: first
    ref: core.noop
    publish:
      slow: "{{ 'heldmarker' }}"
    on-success: second
  - name: second
    ref: core.noop
"""
HELD_MISTRAL = """
version: '2.0'
held.mistral:
  tasks:
    first:
      action: core.noop
      publish:
        slow: <% 'heldmarker' %>
      on-success:
        - second
    second:
      action: core.noop
"""
#: Five expressions published in one step: each well within the limit, together past it.
MANY_CHAIN = """
chain:
  - name: first
    ref: core.noop
    publish:
""" + "".join(f"      p{i}: \"{{{{ 'slowitem' ~ {i} }}}}\"\n" for i in range(5))
MANY_MISTRAL = """
version: '2.0'
many.mistral:
  tasks:
    first:
      action: core.noop
      publish:
""" + "".join(f"        p{i}: <% 'slowitem' + str({i}) %>\n" for i in range(5))
KINDS = {"chain": ("action-chain", "", HELD_CHAIN), "mistral": ("mistral-v2", "", HELD_MISTRAL)}
#: Past `templates.max_seconds` (0.3 s here) a step fails as a template does, naming the setting.
TOO_LONG = "the template ran longer than 0.3 s, the limit set by templates.max_seconds in the config"


def _on_marker(monkeypatch: pytest.MonkeyPatch, marker: str, hook: Callable[[], None]) -> None:
    """Run `hook` where an expression holding `marker` evaluates, before it does: a chain's Jinja
    (`templates.render_template`, which `render_values` calls) and a Mistral YAQL expression."""
    render, evaluate = templates.render_template, expressions._yaql_eval

    def rendered(text: str, *args: Any, **kwargs: Any) -> Any:
        if marker in text:
            hook()
        return render(text, *args, **kwargs)

    def evaluated(text: str, *args: Any, **kwargs: Any) -> Any:
        if marker in text:
            hook()
        return evaluate(text, *args, **kwargs)

    monkeypatch.setattr(templates, "render_template", rendered)
    monkeypatch.setattr(expressions, "_yaql_eval", evaluated)


async def until(check: Callable[[], Awaitable[Any]], what: str, limit: float = 20) -> Any:
    """Poll `check` until it returns something true (a bounded wait, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while loop.time() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def final(squall: Squall, execution_id: str) -> dict[str, Any]:
    squall.executions._recent.pop(execution_id, None)
    return await squall.executions.wait(execution_id, timeout=30)


@pytest.fixture
async def held(home: Path) -> AsyncIterator[Squall]:
    """The default limits (a held expression must not run out of time while a test holds it)."""
    workflow_pack(home, dict(KINDS), pack="held")
    app = await Squall.start(load_config(home / "config.yml"))
    assert app.registry.errors == []
    try:
        yield app
    finally:
        await app.close()


class _Hold:
    """Holds the marked expression until the test lets it go, noting where it evaluated."""

    def __init__(self) -> None:
        self.started, self.proceed = threading.Event(), threading.Event()
        self.threads: list[int] = []
        self.let_go: list[bool] = []

    def __call__(self) -> None:
        self.threads.append(threading.get_ident())
        self.started.set()
        self.let_go.append(self.proceed.wait(10))  # held until the loop, which must be free for it, lets it go

    async def evaluating(self) -> bool:
        return self.started.is_set()


async def _held_while(squall: Squall, monkeypatch: pytest.MonkeyPatch, ref: str,
                      meanwhile: Callable[[str], Awaitable[Any]]) -> tuple[dict[str, Any], _Hold]:
    """Run `ref`; while its marked expression is held, call `meanwhile(execution_id)` and let the
    expression go once that asked what it asks (it may wait for the step: it runs beside it)."""
    hold = _Hold()
    _on_marker(monkeypatch, "heldmarker", hold)
    record = await squall.executions.request(ref, {}, {"user": "tester"})
    asked = None
    try:
        await until(hold.evaluating, "the held expression started")
        asked = asyncio.ensure_future(meanwhile(record["id"]))

        async def status_moved() -> bool:
            return (await squall.executions.get(record["id"]))["status"] != "running" or asked.done()

        await until(status_moved, "the request was taken")
    finally:
        hold.proceed.set()
        if asked is not None:
            await asyncio.wait([asked])
    asked.result()
    return record, hold


@pytest.mark.parametrize("kind", ["chain", "mistral"])
async def test_the_event_loop_goes_on_while_a_step_evaluates(held: Squall, monkeypatch: pytest.MonkeyPatch,
                                                             kind: str) -> None:
    """The expression is held until a coroutine on the loop lets it go: it can only be let go if the
    loop runs while it evaluates, on a thread of its own."""
    hold = _Hold()
    _on_marker(monkeypatch, "heldmarker", hold)
    record = await held.executions.request(f"held.{kind}", {}, {"user": "tester"})
    try:
        await until(hold.evaluating, "the held expression started")
    finally:
        hold.proceed.set()
    done = await final(held, record["id"])
    assert done["status"] == "succeeded", done["result"]
    assert hold.let_go == [True]  # the loop let it go while it waited
    assert hold.threads != [threading.get_ident()]  # not the loop's thread


async def test_a_chain_canceled_while_a_step_evaluates_starts_nothing_and_keeps_what_the_step_did(
        held: Squall, monkeypatch: pytest.MonkeyPatch) -> None:
    """The step that was running publishes and returns `second`; the cancel asked meanwhile keeps it from
    starting, and the canceled chain's result is taken once that step ended: its task and what it published."""
    record, _hold = await _held_while(held, monkeypatch, "held.chain", held.executions.cancel)
    done = await final(held, record["id"])
    assert done["status"] == "canceled", done["result"]
    assert task_names(await children(held, done["id"])) == ["first"]  # `second` was never started
    result = done["result"]
    assert [(t["name"], t["state"]) for t in result["tasks"]] == [("first", "succeeded")]
    assert result["published"] == {"slow": "heldmarker"}
    assert result["error"] == "canceled by request"


async def test_a_mistral_workflow_canceled_while_a_step_evaluates_starts_nothing(
        held: Squall, monkeypatch: pytest.MonkeyPatch) -> None:
    record, _hold = await _held_while(held, monkeypatch, "held.mistral", held.executions.cancel)
    done = await final(held, record["id"])
    assert done["status"] == "canceled", done["result"]
    assert task_names(await children(held, done["id"])) == ["first"]  # `second` was never started


@pytest.mark.parametrize("kind", ["chain", "mistral"])
async def test_a_workflow_paused_while_a_step_evaluates_starts_the_next_task_on_resume(
        held: Squall, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    record, _hold = await _held_while(held, monkeypatch, f"held.{kind}", held.executions.pause)

    async def paused() -> bool:
        return (await held.executions.get(record["id"]))["status"] == "paused"

    await until(paused, "the workflow paused")
    assert task_names(await children(held, record["id"])) == ["first"]  # `second` waits for the resume
    await held.executions.resume(record["id"])
    done = await final(held, record["id"])
    assert done["status"] == "succeeded", done["result"]
    assert task_names(await children(held, done["id"])) == ["first", "second"]


@pytest.mark.parametrize(("kind", "runner", "text"), [("chain", "action-chain", MANY_CHAIN),
                                                      ("mistral", "mistral-v2", MANY_MISTRAL)])
async def test_the_expressions_of_one_step_share_one_time_limit(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                                kind: str, runner: str, text: str) -> None:
    """A step publishes five values, each within `templates.max_seconds`, together past it: the step
    fails with the limit (a step's time is bounded, not each expression's)."""
    config = home / "config.yml"
    config.write_text(config.read_text() + "templates:\n  max_seconds: 0.3\n")
    workflow_pack(home, {kind: (runner, "", text)}, pack="many")
    _on_marker(monkeypatch, "slowitem", lambda: time.sleep(0.1))  # a third of the limit, before its own budget
    app = await Squall.start(load_config(config))
    try:
        done = await run(app, f"many.{kind}")
    finally:
        await app.close()
        configure_limits(TemplateLimits())  # process-wide: the next test starts from the defaults
    assert done["status"] == "failed", done["result"]
    assert TOO_LONG in str(done["result"]), done["result"]


@pytest.mark.parametrize("kind", ["chain", "mistral"])
async def test_squalls_close_stops_a_step_evaluating_on_a_render_thread(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                                        kind: str) -> None:
    """A step still evaluating when Squall closes stops at its next step check: its thread would
    otherwise hold the stopping process (joined at exit) until the step's limit."""
    workflow_pack(home, {kind: KINDS[kind]}, pack="held")
    started, ended = threading.Event(), threading.Event()
    stopped: list[str] = []

    def spin() -> None:
        started.set()
        until_at = time.monotonic() + 10  # bounded: a step that is never stopped ends here, unstopped
        try:
            while time.monotonic() < until_at:
                templates.tick()  # what every evaluation step checks
        except TemplateLimitError as exc:
            stopped.append(str(exc))
        finally:
            ended.set()

    _on_marker(monkeypatch, "heldmarker", spin)
    app = await Squall.start(load_config(home / "config.yml"))
    try:
        await app.executions.request(f"held.{kind}", {}, {"user": "tester"})

        async def evaluating() -> bool:
            return started.is_set()

        await until(evaluating, "the held expression started")
    finally:
        await app.close()
    assert await asyncio.to_thread(ended.wait, 30)
    assert stopped == ["the template was stopped because Squall is stopping"]
