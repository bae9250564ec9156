"""A held command's post handed over again after a restart is the same command, held once.

Mattermost hands a restarted Squall's catch-up every post of the last `catch_up_seconds` again (and Slack
retries what it got no acknowledgement for): a plain command is requested once per delivery key
(`DuplicateDelivery`), and so must be what waits before it runs. An approval held for a post is keyed by
the post's delivery key, so the post handed over again finds it held, and its approved run is requested
with that key, so it never runs twice; a confirmation pending for the post is left as it is, and one
whose prompt was asked before (answered since, or its command ran) is not asked again, nor is a typed
`yes` or `no` taken again. Driven as the Mattermost catch-up tests drive a restart
(tests/test_mattermost_catch_up.py): the fake server, and a Squall started again on the same database;
once with a real `squall serve` killed (SIGKILL) and started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

from bot.app import Squall
from bot.chat.bot import ChatBot
from engine.config import load_config
from engine.storage import Store
from tests.conftest import free_port, write
from tests.fake_mattermost import BOT_TOKEN, FakeMattermost, fake_mattermost
from tests.test_chat import settle
from tests.test_cli import SQUALL
from tests.test_mattermost import _chat, _pack, replies_to

fake = fake_mattermost  # the fixture, under this module's name for it


class Running(NamedTuple):
    """A started chat, and whether its adapter's catch-up handed over what it listed (`_CaughtUp`)."""

    squall: Squall
    bot: ChatBot
    caught_up: asyncio.Event


@contextlib.asynccontextmanager
async def running(home: Path, fake: FakeMattermost, port: int | None = None) -> AsyncIterator[Running]:
    """A `squall serve`'s chat with the Mattermost adapter on the home's database (with buttons, through
    Squall's API server on `port`, when one is given: the same port after a restart, so the buttons of a
    prompt posted before it reach the restarted Squall); stopped on leaving."""
    from bot.http import ApiServer

    more = {} if port is None else {"actions_url": f"http://127.0.0.1:{port}/mattermost/actions"}
    logger = logging.getLogger("adapters.mattermost")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(caught_up := _CaughtUp())
    try:
        squall, bot, _adapter = await _chat(home, fake, **more)
        server = None if port is None else ApiServer(squall, host="127.0.0.1", port=port)
        try:
            if server is not None:
                await server.start()
            yield Running(squall, bot, caught_up.done)
        finally:
            if server is not None:
                await server.stop()
            await bot.stop()
            await squall.close()
    finally:
        logger.removeHandler(caught_up)
        logger.setLevel(level)


class _CaughtUp(logging.Handler):
    """Sets `done` once the adapter says it handed over the posts its catch-up listed (all handled by then)."""

    def __init__(self) -> None:
        super().__init__()
        self.done = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Mattermost: caught up"):
            self.done.set()


def _guarded(home: Path, groups: bool = True) -> None:
    """bob approves (`groups`: added to the config); `guarded greet` needs one approval."""
    if groups:
        write(home / "config.yml", (home / "config.yml").read_text() + "auth:\n  groups:\n    approvers: [bob]\n")
    write(home / "packs" / "demo" / "aliases" / "guarded.yaml", """
        name: guarded
        action_ref: demo.greet
        formats: ["guarded greet {{who}}"]
        result:
          format: "{{ execution.result.stdout }}"
        approval: {groups: [approvers]}
    """)


def thread_of(fake: FakeMattermost, post: dict[str, Any]) -> list[dict[str, Any]]:
    """The bot's posts in the thread of `post`, oldest first."""
    return [p for p in fake.bot_posts(post["channel_id"]) if p["root_id"] == post["id"]]


async def handed_over_again(fake: FakeMattermost, squall: Squall, bot: ChatBot, caught_up: asyncio.Event) -> None:
    """Until the restarted Squall's catch-up handed over (and its chat handled) the posts it listed, and
    what they said was sent: a post made then is answered after them."""
    await asyncio.wait_for(caught_up.wait(), 30)
    marker = await fake.say(fake.alice, fake.town_square, "!greet marker")
    await replies_to(fake, marker, "hello marker")
    await settle(squall, bot)


async def greeted(squall: Squall) -> list[str]:
    """The `who` of every greeting requested: what ran, as often as it ran (the marker's left out)."""
    return sorted(e["parameters"]["who"] for e in await squall.executions.list(action="demo.greet", limit=50)
                  if e["parameters"]["who"] != "marker")


# -- approvals -------------------------------------------------------------------------------------------

async def test_a_held_post_handed_over_again_after_a_restart_is_held_once_and_runs_once(
        home: Path, fake: FakeMattermost) -> None:
    """The reported case: the post of a command that needs approval, handed over again by the restarted
    Squall's catch-up, was held a second time (two approvals pending, and approving both ran it twice)."""
    _guarded(home)
    async with running(home, fake) as (squall, bot, _caught_up):
        post = await fake.say(fake.alice, fake.town_square, "!guarded greet carol")
        await replies_to(fake, post, "waiting for 1 approval")
        await settle(squall, bot)
        [held] = await squall.db(squall.store.approvals_pending)
    asked = [p["message"] for p in thread_of(fake, post)]
    for _restart in range(2):
        async with running(home, fake) as (squall, bot, caught_up):
            await handed_over_again(fake, squall, bot, caught_up)
            assert [row["id"] for row in await squall.db(squall.store.approvals_pending)] == [held["id"]]
    assert [p["message"] for p in thread_of(fake, post)] == asked  # the approvers were not asked again
    async with running(home, fake) as (squall, bot, _caught_up):
        approve = await fake.say(fake.bob, fake.town_square, f"!approve {held['id']}", root_id=post["id"])
        await replies_to(fake, approve, "hello carol")
        await settle(squall, bot)
        assert await greeted(squall) == ["carol"]
    async with running(home, fake) as (squall, bot, caught_up):  # approved and run: handed over again, nothing
        await handed_over_again(fake, squall, bot, caught_up)
        assert await greeted(squall) == ["carol"]
        assert await squall.db(squall.store.approvals_pending) == []
        [row] = [row for row in [await squall.db(squall.store.approval_get, held["id"])] if row]
        assert row["status"] == "approved" and row["execution_id"] is not None


@contextlib.asynccontextmanager
async def serving(home: Path, fake: FakeMattermost, stop: signal.Signals) -> AsyncIterator[list[str]]:
    """A real `squall serve` on the home's config, connected to the fake, and the lines it logged so far; ended
    by `stop` on leaving (SIGKILL: as a crash ends it, with nothing closed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MATTERMOST_")}
    process = await asyncio.create_subprocess_exec(str(SQUALL), "-c", str(home / "config.yml"), "serve",
                                                   stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True)
    lines: list[str] = []

    async def read() -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            lines.append(line.decode(errors="replace"))

    reader = asyncio.create_task(read())
    try:
        await fake.wait_for(lambda: fake.live_connections(fake.bot["id"]) or process.returncode is not None, 60)
        assert process.returncode is None, "squall serve exited:\n" + "".join(lines)
        yield lines
    finally:
        if process.returncode is None:
            process.send_signal(stop)
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()
        await asyncio.wait_for(reader, 30)
        await fake.wait_for(lambda: not fake.live_connections(fake.bot["id"]), 30)
    assert "Traceback" not in "".join(lines), "".join(lines)


async def test_a_held_post_handed_over_again_after_a_crash_of_squall_serve_is_held_once(
        home: Path, fake: FakeMattermost) -> None:
    """The same with the real service killed (SIGKILL) after the approvers were asked, as the reviewer
    found it: the restarted `squall serve`'s catch-up hands the post over again, and nothing new is held
    or asked."""
    write(home / "config.yml", f"""
        database:
          url: sqlite:///data/squall.db
        packs:
          paths: [packs]
        api:
          port: {free_port()}
        auth:
          groups:
            approvers: [bob]
        adapters:
          console: {{enabled: false}}
          mattermost: {{enabled: true, url: "{fake.url}", token: "{BOT_TOKEN}", team: ops}}
    """)
    _pack(home)
    _guarded(home, groups=False)
    async with serving(home, fake, signal.SIGKILL):
        post = await fake.say(fake.alice, fake.town_square, "!guarded greet carol")
        await replies_to(fake, post, "waiting for 1 approval")
    asked = [p["message"] for p in thread_of(fake, post)]
    async with serving(home, fake, signal.SIGTERM) as logged:
        await fake.wait_for(lambda: any("caught up 1 post(s)" in line for line in logged), 60)
        marker = await fake.say(fake.alice, fake.town_square, "!greet marker")
        await replies_to(fake, marker, "hello marker")  # and its answers sent
    assert [p["message"] for p in thread_of(fake, post)] == asked
    store = Store.open(load_config(home / "config.yml").database_url)
    try:
        assert len(store.approvals_pending()) == 1
    finally:
        store.close()


async def test_an_approval_held_twice_before_approvals_were_keyed_runs_once(home: Path, fake: FakeMattermost) -> None:
    """A post held twice (as it was before an approval was keyed by its post): approving both runs it
    once, since the approved run is requested with the post's delivery key; the second approval names the
    execution the post became, and its thread is told."""
    _guarded(home)
    async with running(home, fake) as (squall, bot, _caught_up):
        post = await fake.say(fake.alice, fake.town_square, "!guarded greet carol")
        await replies_to(fake, post, "waiting for 1 approval")
        await settle(squall, bot)
        [first] = await squall.db(squall.store.approvals_pending)
    second = {**first, "id": "0badcafe"}  # what the post's second handing over stored, before the fix
    async with running(home, fake) as (squall, bot, _caught_up):
        await squall.db(squall.store.approval_add, second)
        for approval in (first, second):
            await fake.say(fake.bob, fake.town_square, f"!approve {approval['id']}", root_id=post["id"])
        await fake.wait_for(lambda: all(squall.store.approval_get(approval["id"])["execution_id"]
                                        for approval in (first, second)))
        await settle(squall, bot)
        [execution] = await squall.executions.list(action="demo.greet")
        assert execution["parameters"]["who"] == "carol" and execution["context"]["approval"]["id"] == first["id"]
        for approval in (first, second):
            row = await squall.db(squall.store.approval_get, approval["id"])
            assert (row["status"], row["execution_id"]) == ("approved", execution["id"])
        assert await squall.db(squall.store.approvals_unran) == []  # the sweep has nothing to run again
        told = [p["message"] for p in thread_of(fake, post) if p["message"].startswith("Not running")]
        assert told == [f"Not running demo.greet again for approval {second['id']}: the message it holds was run "
                        f"already, as execution {execution['id']}."]


# -- confirmations ---------------------------------------------------------------------------------------

def prompts_of(fake: FakeMattermost, post: dict[str, Any]) -> list[dict[str, Any]]:
    """The prompts (posts with buttons, or answered: "alice chose ...") in the thread of `post`."""
    return [p for p in thread_of(fake, post) if (p.get("props") or {}).get("attachments") or "chose **" in p["message"]]


async def test_a_pending_confirmation_is_left_as_it_is_and_a_confirmed_one_not_asked_again(
        home: Path, fake: FakeMattermost) -> None:
    """The reported case: the post of a `confirm:` command handed over again replaced its pending prompt
    with an identical one (whose Yes on the first said "your newer command replaced it"), and once it had
    run, the next restart asked a third time, a prompt whose Yes did nothing."""
    port = free_port()
    async with running(home, fake, port) as (squall, bot, _caught_up):
        post = await fake.say(fake.alice, fake.town_square, "@squallbot careful bob")
        [prompt] = await fake.wait_for(lambda: prompts_of(fake, post))
        await settle(squall, bot)
    async with running(home, fake, port) as (squall, bot, caught_up):
        await handed_over_again(fake, squall, bot, caught_up)
        assert [p["id"] for p in prompts_of(fake, post)] == [prompt["id"]]  # no second prompt
        status, _answer = await fake.click(prompt, 0)
        assert status == 200
        await replies_to(fake, post, "hello bob")
        await settle(squall, bot)
        assert not [p for p in thread_of(fake, post) if "no longer pending" in p["message"]]
        assert await greeted(squall) == ["bob"]
    async with running(home, fake, port) as (squall, bot, caught_up):
        await handed_over_again(fake, squall, bot, caught_up)
        assert [p["id"] for p in prompts_of(fake, post)] == [prompt["id"]]  # its command ran: not asked again
        assert await greeted(squall) == ["bob"]


async def test_typed_answers_handed_over_again_answer_nothing_and_nothing_is_asked_again(
        home: Path, fake: FakeMattermost) -> None:
    """Without buttons: a prompt declined, one confirmed and one still pending, and the `no` and `yes`
    typed to them, all handed over again by the restarted Squall's catch-up. Nothing is asked again, and
    the old `yes` does not answer the prompt asked after it (alice never confirmed `two`); her new `yes`
    does."""
    async with running(home, fake) as (squall, bot, _caught_up):
        posts = []
        for text, answered, needle in (("!careful zero", 0, "About to run"), ("!no", 1, "not running"),
                                       ("!careful one", 2, "About to run"), ("!yes", 2, "hello one"),
                                       ("!careful two", 4, "About to run")):
            posts.append(await fake.say(fake.alice, fake.town_square, text))
            await replies_to(fake, posts[answered], needle)  # a command's result goes to its own thread
        await settle(squall, bot)
        assert await greeted(squall) == ["one"]
    before = {post["id"]: [p["message"] for p in thread_of(fake, post)] for post in posts}
    async with running(home, fake) as (squall, bot, caught_up):
        await handed_over_again(fake, squall, bot, caught_up)
        assert {post["id"]: [p["message"] for p in thread_of(fake, post)] for post in posts} == before
        assert await greeted(squall) == ["one"]
        again = await fake.say(fake.alice, fake.town_square, "!yes")
        await replies_to(fake, posts[4], "hello two")
        await settle(squall, bot)
        assert await greeted(squall) == ["one", "two"]
        assert not [p for p in thread_of(fake, again) if "Nothing is waiting" in p["message"]]


# -- chat's words ----------------------------------------------------------------------------------------

async def test_an_execution_id_that_names_nothing_points_at_the_chat_listing(home: Path) -> None:
    """`!execution`, `!cancel` and `!retry` of an id that names nothing point at the chat's own listing, with
    the configured prefix, never at the CLI's `squall execution list`, which a person in a channel may not
    have."""
    from tests.test_chat import _config, loopback_chat

    _config(home, 'chat: {prefix: "."}')
    async with loopback_chat(home) as (squall, bot, loopback):
        for command in ("execution zz", "cancel zz", "retry 0123456789abcdef01234567", "execution abc"):
            await loopback.say(f".{command}", user="root-admin", channel="#ops")
            await settle(squall, bot)
            answer = loopback.texts()[-1]
            assert "`.executions` lists the last ones started here" in answer and "squall" not in answer, answer
        assert '"zz" is not an execution id' in loopback.texts()[0]
        assert 'There is no execution "0123456789abcdef01234567"' in loopback.texts()[2]
