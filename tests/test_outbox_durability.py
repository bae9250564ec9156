"""Replies are durable across SIGKILL: no stored reply is skipped, no result is lost between its
execution's final status and its reply, and no result is stored twice.

The in-process tests drive the outbox and the dispatcher through the loopback adapter. The crash
tests run real `squall serve` processes against the fake Mattermost (tests/fake_mattermost.py),
which records every post as the server would, so what reached the channel outlives the kills.
Points inside the process are hit by a launcher: with `SQUALL_KILL_AT` set, the service SIGKILLs
its own process group at that exact point, as `kill -9` would.

What is guaranteed, and asserted: every reply stored is delivered, nothing stays `pending`, and a
result is stored exactly once. A reply is sent a second time only if the kill falls after the
platform accepted it and before its `sent` mark committed (at least once, the outbox's contract):
at most two per channel per kill (one in flight, one whose mark had not committed yet).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import web

from adapters import mattermost, slack
from adapters.base import Adapter, Capabilities, DeliveryError, Part, Reply
from adapters.loopback import LoopbackAdapter
from bot.app import Squall, load_packs
from bot.chat import outbox as outbox_module
from bot.chat.bot import ChatBot
from engine import storage
from engine.config import Config, load_config
from engine.events import EXECUTION_FINISHED
from engine.executions import COMPLETED
from engine.storage import Store, keyed_in_one_statement, utcnow
from tests.conftest import write
from tests.fake_mattermost import BOT_TOKEN, FakeMattermost, fake_mattermost
from tests.fake_slack import APP_TOKEN as SLACK_APP_TOKEN
from tests.fake_slack import BOT_TOKEN as SLACK_BOT_TOKEN
from tests.fake_slack import SIGNING_SECRET as SLACK_SIGNING_SECRET
from tests.fake_slack import FakeSlack
from tests.test_chat import _config, settle

# -- in-process: the outbox and the dispatcher -----------------------------------------------------


@pytest.fixture
async def chat(home: Path) -> AsyncIterator[tuple[Squall, ChatBot, LoopbackAdapter]]:
    async for started in _chat(home):
        yield started


@pytest.fixture
async def chat_on(home: Path, database_url: str) -> AsyncIterator[tuple[Squall, ChatBot, LoopbackAdapter]]:
    """`chat` on SQLite and on PostgreSQL."""
    async for started in _chat(home, database_url):
        yield started


async def _chat(home: Path, url: str = "") -> AsyncIterator[tuple[Squall, ChatBot, LoopbackAdapter]]:
    _config(home)
    if url:
        config = home / "config.yml"
        config.write_text(config.read_text().replace("sqlite:///data/squall.db", url))
    loopback = LoopbackAdapter()
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[loopback])
    bot = squall.chat
    await bot.start()
    try:
        yield squall, bot, loopback
    finally:
        await bot.stop()
        await squall.close()


def _replies_of(store: Store, execution_id: str) -> list[dict[str, Any]]:
    """The rows of an execution's ack and result (not its `notify` messages)."""
    return [row for row in _rows(store) if row["execution_id"] == execution_id
            and not row["kind"].startswith("notify:")]


def _rows(store: Store) -> list[dict[str, Any]]:
    """Every outbox row that is a reply (not a `keyed_since` record)."""
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(storage.outbox).order_by(storage.outbox.c.id)).mappings().all()
    return [dict(row) for row in rows if not (row["kind"] or "").startswith("keyed_since")]


async def test_a_reply_another_process_stored_below_this_ones_is_sent(chat, home: Path) -> None:
    """The old high-water mark: this process's own reply raised it above the CLI's, which was never sent."""
    squall, bot, loopback = chat
    cli = Store.open(f"sqlite:///{home / 'data' / 'squall.db'}")  # another process's connection
    try:
        theirs = cli.outbox_add("loopback", "#cli", Reply(adapter="loopback", channel="#cli", text="from the cli")
                                .to_json())
    finally:
        cli.close()
    ours = await bot.outbox.post(Reply(adapter="loopback", channel="#ops", text="from the service"))
    assert ours > theirs
    # Found without waiting for the service's next poll: our id was not the next one, so it looked.
    await loopback.wait_for(lambda posted: "from the cli" in [p.text for p in posted], 5)
    assert await bot.outbox.poll() == 0  # and a poll does not queue it again
    await settle(squall, bot)
    assert loopback.texts().count("from the cli") == 1
    assert await squall.db(squall.store.outbox_pending, ["loopback"]) == []


async def test_polls_racing_deliveries_never_send_a_reply_twice(chat, home: Path) -> None:
    """Every poll reads all pending rows; rows delivered (or being delivered) here are never queued again."""
    squall, bot, loopback = chat
    real_send = loopback.send

    async def slow_send(reply: Reply, edit_of: str | None = None) -> str | None:
        await asyncio.sleep(0.002)
        return await real_send(reply, edit_of)

    loopback.send = slow_send  # type: ignore[method-assign]
    cli = Store.open(f"sqlite:///{home / 'data' / 'squall.db'}")
    stop = asyncio.Event()

    async def keep_polling() -> None:
        while not stop.is_set():
            await bot.outbox.poll()
            await asyncio.sleep(0.001)

    poller = asyncio.create_task(keep_polling())
    try:
        expected = []
        for n in range(150):
            channel = f"#c{n % 3}"
            if n % 5 == 0:
                reply = Reply(adapter="loopback", channel=channel, text=f"cli {n}")
                cli.outbox_add("loopback", channel, reply.to_json())
                expected.append(f"cli {n}")
            await bot.outbox.post(Reply(adapter="loopback", channel=channel, text=f"own {n}"))
            expected.append(f"own {n}")
            if n % 10 == 0:
                await asyncio.sleep(0.003)
        for _ in range(300):
            if (set(expected) <= set(loopback.texts())
                    and not await squall.db(squall.store.outbox_pending, ["loopback"])):
                break
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await poller
        cli.close()
    counts = Counter(loopback.texts())
    assert {text: counts[text] for text in expected if counts[text] != 1} == {}
    assert await squall.db(squall.store.outbox_pending, ["loopback"]) == []
    # In each channel, the replies of each process went out in the order they were stored (another
    # process's reply joins the channel's queue when it is found, after what was queued before).
    by_text = {row["payload"]["text"]: row["id"] for row in _rows(squall.store)}
    for channel in ("#c0", "#c1", "#c2"):
        for source in ("own", "cli"):
            sent = [by_text[text] for text in loopback.texts(channel) if text.startswith(source)]
            assert sent == sorted(sent)


async def test_a_result_is_stored_once_with_its_ack_edit_in_one_go(chat) -> None:
    squall, bot, loopback = chat
    await loopback.say("!greet once", user="alice", channel="#ops")
    await settle(squall, bot)
    [execution] = await squall.executions.list(action="demo.greet")
    rows = _replies_of(squall.store, execution["id"])
    assert [(row["kind"], row["payload"]["edit"]) for row in rows] == [("ack", None), ("status", rows[0]["id"]),
                                                                       ("result", None)]
    # Recovery and a second listener call find it stored: nothing more is stored or sent.
    assert await bot.sweep(timedelta(days=1)) == 0
    await bot.dispatcher._post_result(execution, execution["context"]["chat"])
    await settle(squall, bot)
    assert [row["id"] for row in _replies_of(squall.store, execution["id"])] == [row["id"] for row in rows]
    assert loopback.texts("#ops").count("hello once") == 1


async def _greet_unheard(chat: tuple[Squall, ChatBot, LoopbackAdapter], who: str) -> dict[str, Any]:
    """`!greet who` run to its end by a process that "dies" before its `EXECUTION_FINISHED`
    listeners hear of it (the chat's is unsubscribed meanwhile); the execution."""
    squall, bot, loopback = chat
    squall.events.unsubscribe(EXECUTION_FINISHED, bot.dispatcher.on_finished)
    try:
        await loopback.say(f"!greet {who}", user="alice", channel="#ops")
        [execution] = await squall.executions.list(action="demo.greet")
        await squall.executions.wait(execution["id"], 10)
        await settle(squall, bot)
    finally:
        squall.events.subscribe(EXECUTION_FINISHED, bot.dispatcher.on_finished)
    return execution


async def test_a_result_is_stored_in_the_transaction_that_stores_the_end(chat_on) -> None:
    """A process that dies right after an execution's end committed has its result stored already:
    nothing is owed to recovery, and the reply goes out."""
    squall, bot, loopback = chat_on
    execution = await _greet_unheard(chat_on, "kept")
    rows = _replies_of(squall.store, execution["id"])
    assert [row["kind"] for row in rows] == ["ack", "status", "result"]
    assert await bot.sweep(timedelta(days=1)) == 0
    assert loopback.texts("#ops").count("hello kept") == 1


async def test_a_result_that_fails_to_store_with_its_end_is_stored_by_the_listener(chat_on, monkeypatch) -> None:
    """The end is stored all the same (the failed write is rolled back alone), and the result comes
    by the listener, once."""
    squall, bot, loopback = chat_on
    from bot.chat.outbox import Keyed

    store = Keyed.store
    failed: list[str] = []

    def fail_once(self: Keyed, target: Store, *at: Any) -> Any:
        if self.key == "result" and not failed:
            failed.append(self.execution_id)
            adapter, channel = self.rows[0][:2]
            target.outbox_add(adapter, channel, Reply(adapter=adapter, channel=channel,
                                                      text="a row rolled back with its failure").to_json())
            raise RuntimeError("injected: the result could not be stored")
        return store(self, target, *at)

    monkeypatch.setattr(Keyed, "store", fail_once)
    await loopback.say("!greet retried", user="alice", channel="#ops")
    [execution] = await squall.executions.list(action="demo.greet")
    done = await squall.executions.wait(execution["id"], 10)
    await settle(squall, bot)
    assert failed == [execution["id"]] and done["status"] == "succeeded"
    assert [row["kind"] for row in _replies_of(squall.store, execution["id"])] == ["ack", "status", "result"]
    assert loopback.texts("#ops").count("hello retried") == 1
    assert "a row rolled back with its failure" not in loopback.texts()


async def test_recovery_stores_a_result_whose_reply_was_never_stored(chat) -> None:
    """As for an end stored without its result: the write with the end failed and the process died
    before its listener stored it (or a version before results were stored with their end)."""
    squall, bot, loopback = chat
    squall.executions._completing.remove(bot.dispatcher.completing)
    try:
        execution = await _greet_unheard(chat, "lost")
    finally:
        squall.executions.on_completing(bot.dispatcher.completing)
    assert "hello lost" not in loopback.texts()
    assert await bot.sweep(timedelta(days=1)) == 1
    await settle(squall, bot)
    assert loopback.texts("#ops").count("hello lost") == 1
    assert await bot.sweep(timedelta(days=1)) == 0  # stored now: never again
    rows = _replies_of(squall.store, execution["id"])
    # The ack's row is found in the database, so its edit comes too (after a real crash as well).
    assert [(row["kind"], row["status"]) for row in rows] == [("ack", "sent"), ("status", "sent"), ("result", "sent")]
    assert rows[1]["payload"]["edit"] == rows[0]["id"]


async def test_results_the_alias_turns_off_are_recorded_and_not_looked_for_again(chat, home: Path) -> None:
    squall, bot, loopback = chat
    write(home / "packs" / "demo" / "aliases" / "quiet.yaml", """
        name: quiet
        action_ref: demo.greet
        description: Greet, silently.
        formats: ["hush {{who}}"]
        ack: {enabled: false}
        result: {enabled: false}
    """)
    squall.reload(load_packs(squall.config))
    bot.reload()
    await loopback.say("!hush you", user="alice", channel="#ops")
    await settle(squall, bot)
    [execution] = await squall.executions.list(action="demo.greet")
    [row] = _replies_of(squall.store, execution["id"])
    assert (row["kind"], row["status"]) == ("result", "skipped")
    assert await bot.sweep(timedelta(days=1)) == 0
    assert loopback.texts("#ops") == []


async def test_results_finished_before_keying_began_are_not_sent_again(chat) -> None:
    """After the upgrade, results sent without a key must not look missing."""
    squall, bot, loopback = chat
    keyed_since = squall.store.outbox_keyed_since()
    chat_context = {"user": "alice", "chat": {"adapter": "loopback", "channel": "#old", "thread": None,
                                              "alias": "demo.greet"}}
    for name, ended in (("before", keyed_since - timedelta(seconds=5)), ("after", keyed_since + timedelta(seconds=1))):
        squall.store.insert_execution({
            "id": name[0] * 24, "action": "demo.greet", "runner": "local-shell-cmd", "status": "succeeded",
            "parameters": {"who": name}, "spec": {"values": {}, "templates": {}}, "sealed": None,
            "result": {"stdout": f"hello {name}"}, "context": chat_context, "log": [], "parent": None,
            "runner_info": None, "start_timestamp": ended - timedelta(seconds=1), "end_timestamp": ended})
    assert await bot.sweep(timedelta(days=1)) == 2  # the result, and the action's `notify` to route ops
    await settle(squall, bot)
    assert loopback.texts("#old") == ["hello after"]
    assert loopback.texts("#alerts") == ["greeted after"]


async def test_recovery_stores_a_notification_whose_message_was_never_stored(chat) -> None:
    """A kill between the final status and the `notify` message: the sweep stores it, once."""
    squall, bot, loopback = chat
    notifier = squall.notifier.on_finished
    squall.events.unsubscribe(EXECUTION_FINISHED, notifier)  # the process "died" before notifying
    try:
        await loopback.say("!greet unnoticed", user="alice", channel="#ops")
        [execution] = await squall.executions.list(action="demo.greet")
        await squall.executions.wait(execution["id"], 10)
        await settle(squall, bot)
    finally:
        squall.events.subscribe(EXECUTION_FINISHED, notifier)
    assert loopback.texts("#alerts") == []
    assert await bot.sweep(timedelta(days=1)) == 1
    await settle(squall, bot)
    assert loopback.texts("#alerts") == ["greeted unnoticed"]
    assert await bot.sweep(timedelta(days=1)) == 0  # stored now: never again
    await notifier(await squall.executions.get(execution["id"]))  # nor by a late listener
    await settle(squall, bot)
    assert loopback.texts("#alerts") == ["greeted unnoticed"]
    assert [(row["kind"], row["status"]) for row in _rows(squall.store)
            if row["kind"].startswith("notify:")] == [("notify:ops", "sent")]


async def test_a_result_stored_after_a_restart_edits_the_ack(chat) -> None:
    """The ack's row is found in the database, not in the memory of the process that posted it."""
    squall, bot, loopback = chat
    squall.events.unsubscribe(EXECUTION_FINISHED, bot.dispatcher.on_finished)
    try:
        await loopback.say("!greet later", user="alice", channel="#ops")
        [execution] = await squall.executions.list(action="demo.greet")
        await squall.executions.wait(execution["id"], 10)
        await settle(squall, bot)
    finally:
        squall.events.subscribe(EXECUTION_FINISHED, bot.dispatcher.on_finished)
    restarted = ChatBot(squall, [loopback])  # a new dispatcher and outbox: nothing in memory
    squall.events.unsubscribe(EXECUTION_FINISHED, restarted.dispatcher.on_finished)
    await restarted.begin()  # its sweep stores the result, with the edit of the ack a "dead" process posted
    restarted.outbox.release()
    try:
        await restarted.outbox.drain(10)
    finally:
        await restarted.outbox.close()
    rows = _replies_of(squall.store, execution["id"])
    assert [(row["kind"], row["status"]) for row in rows] == [("ack", "sent"), ("status", "sent"), ("result", "sent")]
    assert rows[1]["payload"]["edit"] == rows[0]["id"]
    [ack] = [post for post in loopback.posted if post.id == rows[0]["platform_id"]]
    assert ack.reply.text == "greeting later" and ack.edits == [rows[1]["payload"]["text"]]
    assert "greeting later" not in loopback.texts("#ops")  # the ack shows the final status now


async def test_nothing_is_sent_before_the_adapters_are_up(home: Path) -> None:
    _config(home)
    loopback = LoopbackAdapter()
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[loopback])
    bot = squall.chat
    try:
        await squall.db(squall.store.outbox_add, "loopback", "#early",
                        Reply(adapter="loopback", channel="#early", text="left by an earlier run").to_json())
        await bot.begin()
        await asyncio.sleep(0.05)
        assert loopback.posted == []  # queued, held
        await bot.start()
        await loopback.wait_for(lambda posted: len(posted) == 1, 5)
    finally:
        await bot.stop()
        await squall.close()


def test_a_result_is_stored_once_on_each_database(database_url: str) -> None:
    store = Store.open(database_url)
    try:
        reply = Reply(adapter="loopback", channel="#c", text="done").to_json()
        rows = [("loopback", "#c", {**reply, "edit": 1}, "status", "pending"),
                ("loopback", "#c", reply, "result", "pending"), ("loopback", "#c", reply, "result.2", "pending")]
        stored = store.outbox_add_keyed("e1", "result", rows)
        first = None if stored is None else [outbox_id for outbox_id, _edit in stored]
        assert first is not None and len(first) == 3 and first == sorted(first)
        assert store.outbox_add_keyed("e1", "result", rows) is None
        assert store.outbox_add_keyed("e1", "result", rows[1:2]) is None
        # The unique key holds even against a writer that did not look first.
        with store.engine.begin() as conn, pytest.raises(sa.exc.IntegrityError):
            conn.execute(storage.outbox.insert(), {"adapter": "loopback", "channel": "#c", "payload": reply,
                                                   "status": "pending", "attempts": 0, "created_at": utcnow(),
                                                   "execution_id": "e1", "kind": "result"})
        assert store.outbox_pending_ids(["loopback"]) == first
        assert store.outbox_pending_ids(["loopback"], first[0], 1) == first[1:2]
        assert [row["id"] for row in store.outbox_get_many(list(reversed(first)))] == first

        since = store.outbox_keyed_since()
        assert store.outbox_keyed_since() == since
        now = utcnow()
        for execution_id, status, adapter in (("owed", "succeeded", "loopback"), ("e1", "failed", "loopback"),
                                              ("live", "running", "loopback"), ("elsewhere", "failed", "irc")):
            store.insert_execution({
                "id": execution_id, "action": "core.noop", "runner": "noop", "status": status, "parameters": {},
                "spec": {"values": {}, "templates": {}}, "sealed": None, "result": None,
                "context": {"chat": {"adapter": adapter, "channel": "#c"}}, "log": [], "parent": None,
                "runner_info": None, "start_timestamp": now, "end_timestamp": now + timedelta(seconds=1)})
        owed = store.executions_owing_results(["loopback"], sorted(COMPLETED), now - timedelta(hours=1))
        assert [row["id"] for row in owed] == ["owed"]
        assert store.executions_owing_results(["loopback"], sorted(COMPLETED), now + timedelta(seconds=1)) == []

        # Notifications: owed by executions of actions with a notify, or carrying one in their context.
        store.outbox_keyed_since("keyed_since:notify")
        later = utcnow()
        for execution_id, action, context in (("n1", "demo.noisy", {}), ("n2", "core.noop", {"notify": {"x": 1}}),
                                              ("n3", "core.noop", {})):
            store.insert_execution({
                "id": execution_id, "action": action, "runner": "noop", "status": "succeeded", "parameters": {},
                "spec": {"values": {}, "templates": {}}, "sealed": None, "result": None, "context": context,
                "log": [], "parent": None, "runner_info": None, "start_timestamp": later,
                "end_timestamp": later + timedelta(seconds=1)})
        assert store.outbox_add_keyed("n1", "notify:ops", [("loopback", "#c", reply, "notify:ops", "pending")])
        owing = store.executions_owing_notifications(["demo.noisy"], sorted(COMPLETED), later - timedelta(hours=1))
        assert {row["id"]: row["notify_kinds"] for row in owing} == {"n1": {"notify:ops"}, "n2": set()}

        # An ack stored first is what a later result's status line edits, found in the same transaction.
        [(ack, _)] = store.outbox_add_keyed("n3", "ack", [("loopback", "#c", reply, "ack", "pending")])
        stored = store.outbox_add_keyed("n3", "result", [("loopback", "#c", reply, "status", "pending"),
                                                         ("loopback", "#c", reply, "result", "pending")], edits="ack")
        assert stored is not None and stored[0][1] == ack and stored[1][1] is None

        # A lone row of its key (a result, an ack) is stored by one statement: where the key is taken
        # it stores nothing and, inside a group commit, spoils none of the group's other writes.
        lone = [("loopback", "#c", reply, "result", "pending")]
        assert keyed_in_one_statement("result", lone, None) and not keyed_in_one_statement("result", rows, None)
        [(first_lone, _)] = store.outbox_add_keyed("n4", "result", lone)
        with store.batch():
            with store.isolated(one_statement=True):
                assert store.outbox_add_keyed("n4", "result", lone) is None
            kept = store.outbox_add("loopback", "#c", reply)
        assert store.outbox_get(kept) is not None
        assert store.outbox_keyed_id("n4", "result") == first_lone
    finally:
        store.close()


# -- real `squall serve` processes, killed with SIGKILL ----------------------------------------------

LAUNCHER = '''
"""`squall serve`, killed with SIGKILL (its whole process group) at the point SQUALL_KILL_AT names."""
import asyncio
import os
import signal

point = os.environ.get("SQUALL_KILL_AT", "")
try:  # die with the test run, even one killed before its teardown
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass


def die():
    os.killpg(os.getpgid(0), signal.SIGKILL)


if point.startswith("finished:"):
    # Right after the final status of the nth chat execution committed (with its result), before
    # its listeners (the notifications) ran.
    from engine import executions

    limit = int(point.split(":", 1)[1])
    finished = executions.ExecutionService._finished
    seen = []

    def _finished(self, record, shown=None):
        if (record.get("context") or {}).get("chat") and record.get("status") in executions.COMPLETED:
            seen.append(record["id"])
            if len(seen) >= limit:
                die()
        return finished(self, record, shown)

    executions.ExecutionService._finished = _finished
elif point.startswith("delivered:"):
    # Right after the platform took the nth reply, before its `sent` mark was written.
    from bot.chat import outbox

    limit = int(point.split(":", 1)[1])
    mark = outbox.Outbox._mark
    delivered = []

    def _mark(self, outbox_id, fields):
        delivered.append(outbox_id)
        if len(delivered) >= limit:
            die()
        return mark(self, outbox_id, fields)

    outbox.Outbox._mark = _mark
elif point == "recovered":
    # At start-up, once executions were recovered (abandoned ones told in chat), before the adapters start.
    from bot.chat import bot as chat

    async def start(self):
        await asyncio.sleep(0.3)
        die()

    chat.ChatBot.start = start

from bot.cli import main

main()
'''

CLI_POSTS = '''
"""`squall run chatops.post_message` from the CLI, in waves: each line on stdin ("prefix<TAB>count")
runs it `count` times, then "done" is printed. One interpreter, the CLI's own code path; each run
opens and closes the database as a `squall run` does."""
import contextlib
import ctypes
import os
import signal
import sys

from bot.cli import app

ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the test run

config = sys.argv[1]
for line in sys.stdin:
    prefix, count = line.rstrip("\\n").split("\\t")
    for n in range(int(count)):
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            try:
                app(["-c", config, "run", "chatops.post_message", f"message={prefix} {n}", "adapter=mattermost",
                     "channel=town-square"], standalone_mode=False)
            except SystemExit as exc:
                if exc.code:
                    raise
    print("done", flush=True)
'''

RESULT = "{{ execution.status }} {{ execution.parameters.who }}"


def _service_home(home: Path, fake: FakeMattermost) -> None:
    write(home / "config.yml", f"""
        database: {{url: "sqlite:///data/squall.db"}}
        packs: {{paths: [packs]}}
        api: {{enabled: false}}
        adapters:
          console: {{enabled: false}}
          mattermost: {{enabled: true, url: "{fake.url}", token: "{BOT_TOKEN}", team: ops}}
        routes:
          ops: {{adapter: mattermost, channel: town-square}}
    """)
    (home / "launch.py").write_text(LAUNCHER)
    (home / "cli_posts.py").write_text(CLI_POSTS)
    os.mkfifo(home / "idle")
    pack = home / "packs" / "demo"
    write(pack / "pack.yaml", "ref: demo\nname: demo\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    write(pack / "actions" / "quick.yaml", """
        name: quick
        runner_type: local-shell-cmd
        parameters:
          who: {type: string, required: true}
          cmd: {default: 'echo "{{who}}"', immutable: true}
    """)
    # Waits for the gate file without forking (`read -t` on a FIFO nobody writes to is a sleep), and
    # gives up by itself: a killed service no longer enforces its timeout.
    held = (f'exec 3<>{home}/idle; while [ ! -f {home}/gate ] && [ $SECONDS -lt 90 ]; do read -t 0.05 -u 3 x; '
            'done; echo "{{who}}"')
    write(pack / "actions" / "held.yaml", f"""
        name: held
        runner_type: local-shell-cmd
        parameters:
          who: {{type: string, required: true}}
          cmd: {{default: {json.dumps(held)}, immutable: true}}
          timeout: {{default: 120}}
    """)
    write(pack / "actions" / "noted.yaml", """
        name: noted
        runner_type: local-shell-cmd
        parameters:
          who: {type: string, required: true}
          cmd: {default: 'echo "{{who}}"', immutable: true}
        notify:
          on-complete:
            message: "noted {{ action_parameters.who }}"
            routes: [ops]
    """)
    write(pack / "aliases" / "noted.yaml", f"""
        name: noted
        action_ref: demo.noted
        description: d
        formats: ["noted {{{{who}}}}"]
        ack: {{format: "noting {{{{ execution.parameters.who }}}}"}}
        result: {{format: "{RESULT}"}}
    """)
    write(pack / "actions" / "instant.yaml", """
        name: instant
        runner_type: noop
        parameters:
          who: {type: string, required: true}
    """)
    for name in ("quick", "held", "instant"):
        write(pack / "aliases" / f"{name}.yaml", f"""
            name: {name}
            action_ref: demo.{name}
            description: d
            formats: ["{name} {{{{who}}}}"]
            ack: {{enabled: false}}
            result: {{format: "{RESULT}"}}
        """)


class Service:
    """One `squall serve` process (through the launcher), its output in a file beside the database."""

    count = 0

    def __init__(self, home: Path, fake: FakeMattermost) -> None:
        self.home = home
        self.fake = fake
        self.process: asyncio.subprocess.Process | None = None
        Service.count += 1
        self.log = home / f"serve-{Service.count}.log"

    async def start(self, kill_at: str = "", connected: bool = True) -> Service:
        connects = len(self.fake.ws_connects)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MATTERMOST_")}
        env["SQUALL_KILL_AT"] = kill_at
        with self.log.open("w") as out:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, str(self.home / "launch.py"), "-c", str(self.home / "config.yml"), "serve",
                cwd=self.home, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
                env=env, start_new_session=True)
        if connected:
            await self.fake.wait_for(lambda: len(self.fake.ws_connects) > connects
                                     or self.process.returncode is not None, 60)
            assert self.process.returncode is None, self.output()
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def died(self, timeout: float = 30) -> None:
        """Wait for the process to kill itself at its kill point."""
        assert self.process is not None
        await asyncio.wait_for(self.process.wait(), timeout)
        assert self.process.returncode == -signal.SIGKILL, self.output()

    async def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                await self.kill()


fake = fake_mattermost  # the fixture, under this module's name for it


@pytest.fixture
async def service(home: Path, fake: FakeMattermost) -> AsyncIterator[tuple[Path, FakeMattermost, list[Service],
                                                                          Store]]:
    _service_home(home, fake)
    store = Store.open(f"sqlite:///{home / 'data' / 'squall.db'}")
    started: list[Service] = []
    try:
        yield home, fake, started, store
    finally:
        for one in started:
            await one.stop()
        (home / "gate").touch()  # actions a killed service left running end now (their session is their own)
        store.close()


async def _serve(home: Path, fake: FakeMattermost, started: list[Service], kill_at: str = "",
                 connected: bool = True) -> Service:
    one = Service(home, fake)
    started.append(one)
    return await one.start(kill_at, connected)


class Cli:
    """The CLI storing `chatops.post_message` replies, in waves (see CLI_POSTS)."""

    async def start(self, home: Path) -> Cli:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, str(home / "cli_posts.py"), str(home / "config.yml"), cwd=home,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        return self

    def post(self, prefix: str, count: int) -> asyncio.Task[None]:
        """Start a wave; the task ends when its replies are stored."""
        async def wave() -> None:
            assert self.process.stdin is not None and self.process.stdout is not None
            self.process.stdin.write(f"{prefix}\t{count}\n".encode())
            await self.process.stdin.drain()
            line = await asyncio.wait_for(self.process.stdout.readline(), 60)
            if line != b"done\n":
                assert self.process.stderr is not None
                raise AssertionError((await self.process.stderr.read()).decode())

        return asyncio.create_task(wave())

    async def close(self) -> None:
        if self.process.returncode is not None:
            return
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


def _chat_executions(store: Store) -> list[dict[str, Any]]:
    return [row for row in store.list_executions(limit=10_000) if row["context"].get("chat")]


async def _until(predicate, timeout: float = 30, what: str = "") -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := predicate()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
    return value


def _posts(fake: FakeMattermost) -> Counter[str]:
    return Counter(post["message"] for post in fake.bot_posts())


async def _delivered(fake: FakeMattermost, store: Store, expected: set[str], timeout: float = 40) -> Counter[str]:
    """Wait until every expected text was posted and no row is pending; then what was posted."""
    def done() -> bool:
        posts = _posts(fake)
        return all(posts[text] for text in expected) and not any(
            row["status"] == "pending" for row in _rows(store))

    try:
        await _until(done, timeout, "the replies")
    except AssertionError:
        posts = _posts(fake)
        pending = [row["payload"]["text"] for row in _rows(store) if row["status"] == "pending"]
        raise AssertionError(f"never posted: {sorted(t for t in expected if not posts[t])}; "
                             f"pending: {pending}") from None
    await asyncio.sleep(0.3)  # anything sent twice would come now
    return _posts(fake)


def _expected_results(store: Store) -> set[str]:
    return {f"{row['status']} {row['parameters']['who']}" for row in _chat_executions(store)}


def _stored_texts(store: Store) -> Counter[str]:
    return Counter(row["payload"]["text"] for row in _rows(store) if row["status"] != "skipped")


@pytest.mark.slow
async def test_a_kill_in_a_burst_of_commands_that_end_in_their_request_s_commit_loses_nothing(service) -> None:
    """A noop command's request is stored as it ended, with its result, in one write and one commit
    (`_end_at_once`), and a burst shares commits: killed after the 20th end, every stored command has
    its end and its result stored, each result reaches the channel, and nothing is left requested or
    running for a restart to run again. What was not stored was never acknowledged, and the restart
    catches up on those posts (`catch_up_seconds`): each of the 40 runs once."""
    home, fake, started, store = service
    first = await _serve(home, fake, started, kill_at="finished:20")
    for n in range(40):
        await fake.say(fake.alice, fake.town_square, f"!instant i{n}")
    await first.died()
    stored = _chat_executions(store)
    assert len(stored) >= 20
    assert all(row["status"] == "succeeded" for row in stored)  # never stored requested without its end
    results = {row["execution_id"] for row in _rows(store) if row["kind"] == "result"}
    assert {row["id"] for row in stored} <= results  # each end with its result

    await _serve(home, fake, started)
    # The restart catches up on the posts whose commands were not stored (`catch_up_seconds`): all 40 run.
    await _until(lambda: len(_chat_executions(store)) == 40, 60, "the caught-up commands")
    expected = _expected_results(store)  # every chat execution's result, those the restart took up too
    assert expected == {f"succeeded i{n}" for n in range(40)}
    assert {row["id"]: row["status"] for row in _chat_executions(store) if row["id"] in results} == {
        row["id"]: "succeeded" for row in stored}  # the restart ran none of them again
    posts = await _delivered(fake, store, expected)
    assert _stored_texts(store) == dict.fromkeys(expected, 1)
    assert sum(count - 1 for count in posts.values()) <= 2, posts


@pytest.mark.slow
async def test_a_kill_right_after_the_final_status_loses_no_result(service) -> None:
    """The result is stored in the transaction of the final status: a kill right after that commit
    finds it stored, not sent, and the next start sends it once."""
    home, fake, started, store = service
    first = await _serve(home, fake, started, kill_at="finished:1")
    await fake.say(fake.alice, fake.town_square, "!quick k1")
    await first.died()
    [execution] = _chat_executions(store)
    assert execution["status"] == "succeeded"
    assert [(row["kind"], row["status"]) for row in _rows(store)
            if row["execution_id"] == execution["id"]] == [("result", "pending")]

    await _serve(home, fake, started)
    posts = await _delivered(fake, store, {"succeeded k1"})
    assert posts == {"succeeded k1": 1}
    assert _stored_texts(store) == {"succeeded k1": 1}


@pytest.mark.slow
async def test_a_kill_before_the_result_still_edits_the_ack_and_sends_the_notification(service) -> None:
    home, fake, started, store = service
    first = await _serve(home, fake, started, kill_at="finished:1")
    await fake.say(fake.alice, fake.town_square, "!noted n1")
    await first.died()
    [execution] = _chat_executions(store)
    # The result and the ack's edit came with the final status; the notification comes after it.
    assert [row["kind"] for row in _rows(store) if row["execution_id"] == execution["id"]] == ["ack", "status",
                                                                                              "result"]

    await _serve(home, fake, started)
    posts = await _delivered(fake, store, {"succeeded n1", "noted n1"})
    rows = {row["kind"]: row for row in _rows(store) if row["execution_id"] == execution["id"]}
    assert sorted(rows) == ["ack", "notify:ops", "result", "status"]
    assert rows["status"]["payload"]["edit"] == rows["ack"]["id"]
    # The ack (the post its row names) shows the final status, edited in place. The kill may come
    # after the platform took the ack and before its `sent` mark committed: then it is posted again
    # (at least once) and that copy is the one edited.
    [ack] = [post for post in fake.bot_posts() if post["id"] == rows["ack"]["platform_id"]]
    assert ack["message"] == rows["status"]["payload"]["text"] and ack["edit_at"] > 0
    assert posts["noting n1"] <= 1
    assert posts["succeeded n1"] == 1 and posts["noted n1"] == 1


@pytest.mark.slow
async def test_a_kill_after_the_platform_took_a_reply_does_not_post_it_again(service) -> None:
    home, fake, started, store = service
    first = await _serve(home, fake, started, kill_at="delivered:3")
    for n in range(3):
        await fake.say(fake.alice, fake.town_square, f"!quick d{n}")
    await first.died()
    expected = {f"succeeded d{n}" for n in range(3)}
    assert _posts(fake) == dict.fromkeys(expected, 1)  # all three reached the platform...
    assert sum(row["status"] == "pending" for row in _rows(store)) >= 1  # ...the last one's mark never did

    await _serve(home, fake, started)
    posts = await _delivered(fake, store, expected)
    assert posts == dict.fromkeys(expected, 1)
    by_text = {post["message"]: post["id"] for post in fake.bot_posts()}
    rows = [row for row in _rows(store) if row["kind"] == "result"]
    assert {row["payload"]["text"]: row["platform_id"] for row in rows} == by_text  # found there, marked sent
    # Each post carries its outbox id, the key the restart looked it up by.
    assert {post["props"]["squall_outbox_id"] for post in fake.bot_posts()} == {row["id"] for row in rows}


async def _running(store: Store, who: str) -> None:
    await _until(lambda: any(row["status"] == "running" and row["parameters"]["who"] == who
                             for row in _chat_executions(store)), 30, f"{who} to run")


@pytest.mark.slow
async def test_replies_stored_by_the_cli_during_chat_and_while_down_are_each_sent_once(service) -> None:
    home, fake, started, store = service
    cli = await Cli().start(home)
    try:
        await _cli_during_chat_and_while_down(home, fake, started, store, cli)
    finally:
        await cli.close()


async def _cli_during_chat_and_while_down(home: Path, fake: FakeMattermost, started: list[Service], store: Store,
                                          cli: Cli) -> None:
    first = await _serve(home, fake, started)
    await fake.say(fake.alice, fake.town_square, "!held h1")  # still running when the service is killed
    await _running(store, "h1")

    # The CLI stores replies while the service is chatting (each chat reply raised the old mark past them).
    wave = cli.post("during chat", 10)
    expected: set[str] = set()
    while not wave.done() and len(expected) < 100:
        await fake.say(fake.alice, fake.town_square, f"!quick q{len(expected)}")
        expected.add(f"succeeded q{len(expected)}")
        await asyncio.sleep(0.1)
    await wave
    expected |= {f"during chat {n}" for n in range(10)}
    posts = await _delivered(fake, store, expected)
    assert posts == dict.fromkeys(expected, 1)

    # Replies stored while the service is down, then a start whose recovery tells chat h1 was abandoned:
    # that reply raised the old mark past them before the outbox first polled.
    await first.kill()
    await cli.post("while down", 3)
    second = await _serve(home, fake, started)
    expected |= {f"while down {n}" for n in range(3)} | {"abandoned h1"}
    posts = await _delivered(fake, store, expected)
    assert posts == dict.fromkeys(expected, 1)

    # Again, killed once recovery stored h2's result and before the adapters started: nothing may be
    # sent then, and the start after sends it all, once.
    await fake.say(fake.alice, fake.town_square, "!held h2")
    await _running(store, "h2")
    await second.kill()
    await cli.post("down again", 2)
    await cli.close()
    third = await _serve(home, fake, started, kill_at="recovered", connected=False)
    await third.died()
    [held] = [row for row in _chat_executions(store) if row["parameters"]["who"] == "h2"]
    assert held["status"] == "abandoned"
    assert [(row["kind"], row["status"]) for row in _rows(store) if row["execution_id"] == held["id"]] == [
        ("result", "pending")]  # stored, not sent
    assert _posts(fake) == posts

    await _serve(home, fake, started)
    expected |= {f"down again {n}" for n in range(2)} | {"abandoned h2"}
    posts = await _delivered(fake, store, expected)
    assert posts == dict.fromkeys(expected, 1)
    assert _stored_texts(store) == dict.fromkeys(expected, 1)


@pytest.mark.slow
async def test_forty_results_finishing_at_once_survive_a_kill_in_the_burst(service) -> None:
    home, fake, started, store = service
    first = await _serve(home, fake, started, kill_at="finished:20")
    for n in range(40):
        await fake.say(fake.alice, fake.town_square, f"!held b{n}")
    await _until(lambda: sum(row["status"] == "running" for row in _chat_executions(store)) == 40, 60,
                 "40 executions to run")
    (home / "gate").touch()
    await first.died()
    finished = [row for row in _chat_executions(store) if row["status"] in COMPLETED]
    stored = {row["execution_id"] for row in _rows(store) if row["kind"] == "result"}
    assert len(finished) >= 20 and all(row["id"] in stored for row in finished)  # each end with its result

    await _serve(home, fake, started)
    await _until(lambda: all(row["status"] in COMPLETED for row in _chat_executions(store)), 30, "recovery")
    expected = _expected_results(store)
    assert len(expected) == 40
    posts = await _delivered(fake, store, expected)
    assert set(posts) == expected
    assert _stored_texts(store) == dict.fromkeys(expected, 1)  # each result stored once
    resent = sum(count - 1 for count in posts.values())
    assert resent <= 2, posts  # only replies the platform took just before the kill, not yet marked sent


async def test_an_outage_longer_than_a_few_minutes_loses_no_reply(chat, monkeypatch: pytest.MonkeyPatch) -> None:
    """Transient refusals (429, 5xx, a disconnect) are retried until the platform takes the reply, in
    order: 40 in a row (a quarter of an hour at the real backoff) lose nothing; only a reply refused
    for `GIVE_UP_AFTER` is marked failed, so one no platform takes cannot hold its channel forever."""
    squall, bot, loopback = chat
    loopback.failures_to_inject = 40  # each with Retry-After 0.01 s
    first = await bot.outbox.post(Reply(adapter="loopback", channel="#ops", text="the result"))
    second = await bot.outbox.post(Reply(adapter="loopback", channel="#ops", text="the next"))
    await settle(squall, bot)
    assert loopback.texts("#ops") == ["the result", "the next"]
    row = await squall.db(squall.store.outbox_get, first)
    assert row["status"] == "sent" and row["attempts"] == 41
    assert (await squall.db(squall.store.outbox_get, second))["status"] == "sent"

    monkeypatch.setattr(outbox_module, "GIVE_UP_AFTER", 0.3)
    loopback.failures_to_inject = 10_000
    stuck = await bot.outbox.post(Reply(adapter="loopback", channel="#ops", text="never taken"))
    await settle(squall, bot)
    row = await squall.db(squall.store.outbox_get, stuck)
    assert row["status"] == "failed" and row["attempts"] >= 3 and "injected failure" in row["error"]
    loopback.failures_to_inject = 0


async def test_a_long_reply_sent_in_parts_goes_on_after_a_failed_part(chat, home: Path) -> None:
    """A reply stored where its adapter was not running (a CLI run) is split when it is sent; when a
    later part is refused for a moment, the retry sends the rest, not the first part again."""
    squall, bot, loopback = chat
    real_send, calls = loopback.send, []

    async def second_part_fails_once(reply: Reply, edit_of: str | None = None) -> str | None:
        calls.append(reply.text.split("\n", 1)[0])
        if len(calls) == 2:
            raise DeliveryError("HTTP 503", retry_after=0.01)
        return await real_send(reply, edit_of)

    loopback.send = second_part_fails_once  # type: ignore[method-assign]
    loopback.capabilities = Capabilities(threads=True, edits=True, files=False, max_length=4000)
    text = "\n".join(f"line {i:04d} " + "x" * 90 for i in range(80))  # about 8,000 characters: two parts
    cli = Store.open(f"sqlite:///{home / 'data' / 'squall.db'}")
    try:
        outbox_id = cli.outbox_add("loopback", "#ops", Reply(adapter="loopback", channel="#ops", text=text).to_json())
    finally:
        cli.close()
    await bot.outbox.poll()
    await settle(squall, bot)
    firsts = [posted.text.split("\n", 1)[0] for posted in loopback.posted]
    assert len(firsts) >= 2 and len(firsts) == len(set(firsts)), firsts  # each part once
    assert "\n".join(posted.text for posted in loopback.posted).count("line 0079") == 1
    assert (await squall.db(squall.store.outbox_get, outbox_id))["status"] == "sent"



def test_the_posts_found_of_a_reply_sent_in_parts_say_how_far_it_got() -> None:
    """After a crash: a reply found whole, or with its last part, is sent (as its first part); else it
    goes on after the furthest part found, also across a split that changed at an earlier restart,
    and a part missing before that one (deleted since) is not posted again."""
    left_of, progress = outbox_module._left_of, outbox_module.Progress
    assert left_of([("p1", None)]) == "p1"
    assert left_of([("p1", Part(1, 3, 100)), ("p2", Part(2, 3, 200)), ("p3", Part(3, 3, 250))]) == "p1"
    assert left_of([("p2", Part(2, 3, 200)), ("p3", Part(3, 3, 250))]) is None  # its first part deleted
    assert left_of([("p2", Part(2, 3, 200)), ("p1", Part(1, 3, 100))]) == progress("p1", 2, 200)
    assert left_of([("p1", Part(1, 3, 100)), ("p3", Part(2, 5, 160))]) == progress("p1", 2, 160)  # split anew
    assert left_of([("p1", Part(1, 4, 100)), ("p3", Part(3, 4, 300))]) == progress("p1", 3, 300)  # p2 deleted


async def test_a_long_reply_split_anew_after_a_restart_keeps_every_line_once(chat, home: Path) -> None:
    """A row whose first part an earlier run posted (found by the lookup) goes on from where that part
    ended, split at today's limit, each part tagged with where it ends; the row is sent as its first."""
    squall, bot, loopback = chat
    loopback.capabilities = Capabilities(threads=True, edits=True, files=False, max_length=300)
    text = "\n".join(f"line {i:03d} " + "x" * 60 for i in range(30))
    cli = Store.open(f"sqlite:///{home / 'data' / 'squall.db'}")
    try:
        outbox_id = cli.outbox_add("loopback", "#ops", Reply(adapter="loopback", channel="#ops", text=text).to_json())
    finally:
        cli.close()
    head = text[:text.index("line 004") - 1]  # what an earlier run's first part, at a limit of 400, carried
    bot.outbox._progress[outbox_id] = outbox_module.Progress("earlier-1", 1, len(head))
    await bot.outbox.poll()
    await settle(squall, bot)
    assert "\n".join([head, *(posted.text for posted in loopback.posted)]) == text
    parts = [posted.reply.part for posted in loopback.posted]
    assert [part.number for part in parts] == list(range(2, len(parts) + 2))
    assert {part.count for part in parts} == {len(parts) + 1} and parts[-1].end == len(text)
    assert all(text[:part.end].endswith(posted.text) for part, posted in zip(parts, loopback.posted, strict=True))
    row = await squall.db(squall.store.outbox_get, outbox_id)
    assert row["status"] == "sent" and row["platform_id"] == "earlier-1"


async def test_a_long_reply_with_a_file_resumed_after_its_first_part_uploads_it_no_more(chat, home: Path) -> None:
    """A row carrying its own file, whose first part (with the file) an earlier run posted, goes on with
    parts that carry no file: the file was uploaded once, with the first part."""
    squall, bot, loopback = chat
    loopback.capabilities = Capabilities(threads=True, edits=True, files=True, max_length=300)
    text = "\n".join(f"line {i:03d} " + "x" * 60 for i in range(30))
    reply = Reply(adapter="loopback", channel="#ops", text=text, file=("report.csv", "a,b\n1,2\n"))
    cli = Store.open(f"sqlite:///{home / 'data' / 'squall.db'}")
    try:
        outbox_id = cli.outbox_add("loopback", "#ops", reply.to_json())
    finally:
        cli.close()
    head = text[:text.index("line 004") - 1]
    bot.outbox._progress[outbox_id] = outbox_module.Progress("earlier-1", 1, len(head))
    await bot.outbox.poll()
    await settle(squall, bot)
    assert "\n".join([head, *(posted.text for posted in loopback.posted)]) == text
    assert loopback.posted and [posted.reply.file for posted in loopback.posted] == [None] * len(loopback.posted)


async def test_a_reply_the_adapter_cannot_send_fails_and_does_not_hold_its_channel(chat) -> None:
    """An exception that is not a `DeliveryError` (here the encode error a lone surrogate caused in an
    adapter) is not a refusal that may pass: after `UNEXPECTED_LIMIT` attempts the reply is recorded
    as failed, with the reason, and the channel's next reply goes out instead of waiting 24 hours."""
    squall, bot, loopback = chat
    real_send, tries = loopback.send, []

    async def cannot_encode(reply: Reply, edit_of: str | None = None) -> str | None:
        if "bad" in reply.text:
            tries.append(reply.text)
            reply.text.encode()  # raises UnicodeEncodeError: a bug the adapter has, every time
        return await real_send(reply, edit_of)

    loopback.send = cannot_encode  # type: ignore[method-assign]
    bad = await bot.outbox.post(Reply(adapter="loopback", channel="#ops", text="bad \ud83d"))
    good = await bot.outbox.post(Reply(adapter="loopback", channel="#ops", text="the next"))
    await asyncio.wait_for(settle(squall, bot), 60)  # without the limit: retried for GIVE_UP_AFTER (24 h)
    assert loopback.texts("#ops") == ["the next"]
    assert len(tries) == outbox_module.UNEXPECTED_LIMIT
    row = await squall.db(squall.store.outbox_get, bad)
    assert row["status"] == "failed" and "UnicodeEncodeError" in row["error"], row
    assert (await squall.db(squall.store.outbox_get, good))["status"] == "sent"


# -- a post the platform took but never confirmed ----------------------------------------------------
# The platform stores the post, then the connection drops before its answer (a load balancer's reset,
# a network blip): Squall was not told. Sent again blindly, the post is there twice (an ack that says
# "Running" for ever beside its twin edited to the final status). The outbox asks `find_sent` first.


class _LossySlack(FakeSlack):
    """Slack cutting the connection of the next `lose` calls of `lose_method` (`chat.postMessage`, or
    `files.completeUploadExternal`, which shares an upload): after storing the message (`after_storing`)
    or before."""

    lose = 0
    lose_method = "chat.postMessage"
    after_storing = True

    async def _api(self, request: web.Request) -> web.Response:
        cut = request.match_info["method"] == self.lose_method and self.lose > 0
        if cut and not self.after_storing:
            self.lose -= 1
            return _cut(request)
        response = await super()._api(request)
        if cut:
            self.lose -= 1
            return _cut(request)
        return response


class _LossyMattermost(FakeMattermost):
    """Mattermost cutting the connection of the next `lose` `POST /api/v4/posts`: after storing the
    post (`after_storing`) or before."""

    lose = 0
    after_storing = True

    async def _answer(self, request: web.Request, handler: Any) -> web.StreamResponse:
        cut = request.method == "POST" and request.path == "/api/v4/posts" and self.lose > 0
        if cut and not self.after_storing:
            self.lose -= 1
            return _cut(request)
        response = await super()._answer(request, handler)
        if cut:
            self.lose -= 1
            return _cut(request)
        return response

    def lookups(self) -> int:
        """`find_sent`'s calls: a channel's posts since a time."""
        return sum(1 for call in self.calls if call["method"] == "GET" and call["path"].endswith("/posts")
                   and "since" in call["query"])


def _cut(request: web.Request) -> web.Response:
    """Drop the connection without an answer (the client sees the server disconnect)."""
    assert request.transport is not None
    request.transport.close()
    raise ConnectionResetError("the fake cut the connection before its answer")


@contextlib.asynccontextmanager
async def _platform_chat(home: Path, adapter_of: Callable[[Config], Adapter]) -> AsyncIterator[tuple[Squall, ChatBot]]:
    """A Squall whose only adapter is `adapter_of(config)`, its chat started (the outbox released)."""
    _config(home)
    config = load_config(home / "config.yml")
    squall = await Squall.start(config, adapters=[adapter_of(config)])
    bot = squall.chat
    await bot.start()
    try:
        yield squall, bot
    finally:
        await bot.stop()
        await squall.close()


@contextlib.asynccontextmanager
async def _slack_chat(home: Path) -> AsyncIterator[tuple[Squall, ChatBot, _LossySlack]]:
    fake = await _LossySlack().start()
    settings = {"enabled": True, "bot_token": SLACK_BOT_TOKEN, "app_token": SLACK_APP_TOKEN,
                "signing_secret": SLACK_SIGNING_SECRET, "base_url": fake.base_url}
    try:
        async with _platform_chat(home, lambda config: slack.create(settings, config)) as (squall, bot):
            yield squall, bot, fake
    finally:
        await fake.close()


@contextlib.asynccontextmanager
async def _mattermost_chat(home: Path) -> AsyncIterator[tuple[Squall, ChatBot, _LossyMattermost]]:
    fake = _LossyMattermost()
    await fake.start()
    settings = {"enabled": True, "url": fake.url, "token": BOT_TOKEN, "team": "ops"}
    try:
        async with _platform_chat(home, lambda config: mattermost.create(settings, config)) as (squall, bot):
            yield squall, bot, fake
    finally:
        await fake.stop()


def _slack_says(fake: FakeSlack, text: str) -> list[dict[str, Any]]:
    return [message for message in fake.messages if message.get("text") == text]


async def test_a_slack_post_whose_answer_was_lost_is_found_not_posted_again(home: Path) -> None:
    """Slack stored the message and the connection dropped before its answer: the outbox finds it by
    its outbox id (`find_sent`) and records it sent with its platform id, so the later edit goes to it.
    Neither the outbox nor the Slack client posts it a second time; a send that succeeds asks nothing."""
    async with _slack_chat(home) as (squall, bot, fake):
        await bot.outbox.post(Reply(adapter="slack", channel="COPS0001", text="an earlier reply"))
        await settle(squall, bot)
        assert fake.called("conversations.history") == []  # the happy path: no lookup

        fake.lose = 1
        ack = await bot.outbox.post(Reply(adapter="slack", channel="COPS0001", text="Running ops.echo"))
        await settle(squall, bot)
        assert fake.lose == 0
        [message] = _slack_says(fake, "Running ops.echo")
        row = await squall.db(squall.store.outbox_get, ack)
        assert row["status"] == "sent" and row["platform_id"] == f"COPS0001:{message['ts']}", row
        assert len(fake.called("conversations.history")) == 1

        await bot.outbox.post(Reply(adapter="slack", channel="COPS0001", text="succeeded", edit=ack))
        await settle(squall, bot)
        assert [edit["text"] for edit in message["edits"]] == ["succeeded"]
        assert _slack_says(fake, "succeeded") == []  # the edit went to the one ack, not a new message


async def test_a_slack_upload_whose_answer_was_lost_is_found_not_uploaded_again(home: Path) -> None:
    """A reply with a file: Slack shared the upload (`files.completeUploadExternal`) and the connection
    dropped before its answer. Neither the Slack client nor the outbox completes it again: the outbox
    finds the message the upload made by the outbox id it carries and records it sent as that file."""
    async with _slack_chat(home) as (squall, bot, fake):
        fake.lose, fake.lose_method = 1, "files.completeUploadExternal"
        reply = Reply(adapter="slack", channel="COPS0001", text="the output (full output attached)",
                      file=("output.txt", "line\n" * 3000))
        outbox_id = await bot.outbox.post(reply)
        await settle(squall, bot)
        assert fake.lose == 0
        [shared] = fake.shares
        assert shared["channel"] == "COPS0001" and fake.shown(shared) == reply.text
        assert len(fake.called("files.completeUploadExternal")) + len(fake.called("chat.postMessage")) == 1
        row = await squall.db(squall.store.outbox_get, outbox_id)
        assert row["status"] == "sent" and row["platform_id"] == f"file:{shared['files'][0]['id']}", row
        assert len(fake.called("conversations.history")) == 1


async def test_only_a_failure_slack_may_have_taken_costs_a_lookup(home: Path) -> None:
    """A 429 stored nothing: the reply is sent again without asking. A 503 from Slack's edge may have
    come after the message was taken: the outbox looks first, finds nothing, and sends it once."""
    async with _slack_chat(home) as (squall, bot, fake):
        fake.ratelimit("chat.postMessage", retry_after=0.01)
        limited = await bot.outbox.post(Reply(adapter="slack", channel="COPS0001", text="after a 429"))
        await settle(squall, bot)
        assert len(_slack_says(fake, "after a 429")) == 1
        assert fake.called("conversations.history") == []
        assert (await squall.db(squall.store.outbox_get, limited))["status"] == "sent"

        fake.outage("chat.postMessage")
        await bot.outbox.post(Reply(adapter="slack", channel="COPS0001", text="after a 503"))
        await settle(squall, bot)
        assert len(_slack_says(fake, "after a 503")) == 1
        assert len(fake.called("conversations.history")) == 1


async def test_a_slack_post_that_cannot_be_looked_up_is_sent_again(home: Path) -> None:
    """Where the lookup itself is refused (no history scope), the outbox cannot tell, and sends the
    reply again rather than never: at least once, as adapters without `find_sent` deliver."""
    async with _slack_chat(home) as (squall, bot, fake):
        fake.errors["conversations.history"] = "missing_scope"
        fake.lose = 1
        outbox_id = await bot.outbox.post(Reply(adapter="slack", channel="COPS0001", text="the result"))
        await settle(squall, bot)
        assert len(_slack_says(fake, "the result")) == 2
        assert any(call.method == "conversations.history" for call in fake.calls)  # it did ask
        assert (await squall.db(squall.store.outbox_get, outbox_id))["status"] == "sent"


async def test_a_mattermost_post_whose_answer_was_lost_is_found_not_posted_again(home: Path) -> None:
    """Mattermost stored the post and the connection dropped before its answer: found by its outbox id
    and recorded sent, so the ack's edit to the final status goes to the one post (before: one copy
    said "Running" for ever). A post cut off before the server stored it is looked for, and sent once."""
    async with _mattermost_chat(home) as (squall, bot, fake):
        await bot.outbox.post(Reply(adapter="mattermost", channel="town-square", text="an earlier reply"))
        await settle(squall, bot)
        assert fake.lookups() == 0  # the happy path: no lookup

        fake.lose = 1
        ack = await bot.outbox.post(Reply(adapter="mattermost", channel="town-square", text="Running ops.echo"))
        await settle(squall, bot)
        assert fake.lose == 0
        [post] = [post for post in fake.bot_posts() if post["message"] == "Running ops.echo"]
        row = await squall.db(squall.store.outbox_get, ack)
        assert row["status"] == "sent" and row["platform_id"] == post["id"], row
        assert fake.lookups() == 1

        await bot.outbox.post(Reply(adapter="mattermost", channel="town-square", text="succeeded", edit=ack))
        await settle(squall, bot)
        assert fake.posts[post["id"]]["message"] == "succeeded"
        assert [post["message"] for post in fake.bot_posts()] == ["an earlier reply", "succeeded"]

        fake.lose, fake.after_storing = 1, False
        await bot.outbox.post(Reply(adapter="mattermost", channel="town-square", text="cut off before"))
        await settle(squall, bot)
        assert fake.lose == 0
        assert [post["message"] for post in fake.bot_posts()].count("cut off before") == 1
        assert fake.lookups() == 2


async def test_a_mattermost_429_is_sent_again_without_a_lookup(home: Path) -> None:
    """A rate limit stored nothing: no lookup, the reply is sent once after the wait."""
    async with _mattermost_chat(home) as (squall, bot, fake):
        fake.rate_limit(retry_after=0)
        outbox_id = await bot.outbox.post(Reply(adapter="mattermost", channel="town-square", text="after a 429"))
        await settle(squall, bot)
        assert [post["message"] for post in fake.bot_posts()] == ["after a 429"]
        assert fake.lookups() == 0
        assert (await squall.db(squall.store.outbox_get, outbox_id))["status"] == "sent"


def _loopback_finds(loopback: LoopbackAdapter, *, fail: int = 0) -> list[int]:
    """Give the loopback a `find_sent` over what it stored (refusing the first `fail` lookups, as a
    platform that cannot be reached refuses them); returns the list its lookups are counted in."""
    lookups: list[int] = []

    async def find_sent(replies: list[Reply], since: Any) -> dict[int, list[Any]]:
        lookups.append(len(replies))
        if len(lookups) <= fail:
            raise DeliveryError("loopback: the lookup could not reach the platform")
        wanted = {reply.outbox_id for reply in replies}
        found: dict[int, list[Any]] = {}
        for posted in loopback.posted:
            if posted.reply.outbox_id in wanted:
                found.setdefault(posted.reply.outbox_id, []).append((posted.id, posted.reply.part))
        return found

    loopback.find_sent = find_sent  # type: ignore[attr-defined]
    return lookups


async def test_a_part_taken_without_an_answer_is_not_posted_again(chat, home: Path) -> None:
    """A row sent in parts whose second part the platform stored before the connection dropped: the
    lookup finds the parts so far, and the row goes on after the second, each part posted once; it is
    recorded sent as its first part, whose id its edits use."""
    squall, bot, loopback = chat
    real_send, calls = loopback.send, []

    async def second_answer_lost(reply: Reply, edit_of: str | None = None) -> str | None:
        calls.append(reply.text.split("\n", 1)[0])
        platform_id = await real_send(reply, edit_of)
        if len(calls) == 2:
            raise DeliveryError("loopback: the connection dropped before the answer")
        return platform_id

    loopback.send = second_answer_lost  # type: ignore[method-assign]
    lookups = _loopback_finds(loopback)
    loopback.capabilities = Capabilities(threads=True, edits=True, files=False, max_length=4000)
    text = "\n".join(f"line {i:04d} " + "x" * 90 for i in range(120))  # about 12,000 characters: three parts
    cli = Store.open(f"sqlite:///{home / 'data' / 'squall.db'}")
    try:
        outbox_id = cli.outbox_add("loopback", "#ops", Reply(adapter="loopback", channel="#ops", text=text).to_json())
    finally:
        cli.close()
    await bot.outbox.poll()
    await settle(squall, bot)
    assert len(calls) == len(set(calls)) >= 3, calls  # each part once
    assert "\n".join(posted.text for posted in loopback.posted) == text
    assert lookups == [1]
    row = await squall.db(squall.store.outbox_get, outbox_id)
    assert row["status"] == "sent" and row["platform_id"] == loopback.posted[0].id, row


async def test_a_lookup_that_failed_is_made_again_before_the_next_attempt(chat) -> None:
    """The platform took the reply but its answer was lost; the lookup then failed (sending again, at
    least once) and that attempt was refused (a 429, which stored nothing). Still unsure, the outbox
    looks again before the next attempt, finds the reply, and does not post it a second time."""
    squall, bot, loopback = chat
    real_send, calls = loopback.send, []

    async def answer_lost_then_limited(reply: Reply, edit_of: str | None = None) -> str | None:
        calls.append(reply.text)
        if len(calls) == 2:
            raise DeliveryError("loopback: rate limited", retry_after=0.01)
        platform_id = await real_send(reply, edit_of)
        if len(calls) == 1:
            raise DeliveryError("loopback: no answer in time")
        return platform_id

    loopback.send = answer_lost_then_limited  # type: ignore[method-assign]
    lookups = _loopback_finds(loopback, fail=1)
    outbox_id = await bot.outbox.post(Reply(adapter="loopback", channel="#ops", text="once"))
    await settle(squall, bot)
    assert loopback.texts("#ops") == ["once"] and len(calls) == 2
    assert lookups == [1, 1]
    row = await squall.db(squall.store.outbox_get, outbox_id)
    assert row["status"] == "sent" and row["platform_id"] == loopback.posted[0].id and row["attempts"] == 2, row
