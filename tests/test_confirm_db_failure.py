"""A `yes` the database failed is not lost: the confirmation stays pending until it expires.

A confirming alias's command held for its sender's `yes` used to be dropped (from memory and from the stored
chat sessions) before it was requested; when the database then failed the request (SQLite locked by another
process, PostgreSQL down), nothing ran and the person had to type the whole command again. Now the
confirmation waits again, the answer says so, and the next `yes` once the database is back runs it once. So
does a "did you mean" offer's, and a confirmed `retry <id>`'s.

The lock is held by a connection of the test's own (`tests.test_db_outage_replies.Locker`), with the busy
timeout and the bound on waiting made short (`short_waits`), as the other database-trouble tests do.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bot.chat.dispatcher import PendingConfirmation
from engine.storage import DatabaseLocked
from tests.test_chat import _config, _confirmations_stored, loopback_chat, settle
from tests.test_chat_confirm import _buttons
from tests.test_db_outage_replies import _locker_of, short_waits  # noqa: F401 (a fixture)

LOCKED = "Squall could not store that command: the SQLite database is locked by another process"
KEPT = "Nothing ran; your confirmation still waits: reply `!yes` again within "


def _locked() -> DatabaseLocked:
    return DatabaseLocked(sa.exc.OperationalError("INSERT …", {}, sqlite3.OperationalError("database is locked")), 0.3)


@pytest.mark.usefixtures("short_waits")
async def test_a_typed_yes_the_locked_database_refused_waits_and_the_next_yes_runs_it_once(
        home: Path) -> None:
    _config(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!wipe db1", user="alice")
        await settle(squall, bot)
        assert loopback.texts()[-1].startswith("About to run demo.wipe with target=db1.")
        locker = _locker_of(squall)
        try:
            locker.hold()
            await loopback.say("!yes", user="alice")
            said = loopback.texts()[-1]
            assert said.startswith(LOCKED), said
            assert KEPT in said and said.endswith("s to run it, or `!no`."), said
            locker.release()
            assert await squall.executions.list(action="demo.wipe") == []
            # The stored one too (its removal failed with the database): a restart would still ask it.
            assert len(_confirmations_stored(squall)) == 1
            await loopback.say("!yes", user="alice")
            await settle(squall, bot)
            [ran] = await squall.executions.list(action="demo.wipe")
            assert ran["parameters"]["target"] == "db1" and ran["status"] == "succeeded"
            assert _confirmations_stored(squall) == []
            await loopback.say("!yes", user="alice")  # answered: a third yes runs nothing more
            await settle(squall, bot)
            assert loopback.texts()[-1] == "Nothing is waiting for your yes here."
            assert len(await squall.executions.list(action="demo.wipe")) == 1
        finally:
            locker.close()


@pytest.mark.usefixtures("short_waits")
async def test_a_clicked_yes_the_locked_database_refused_waits_and_the_next_click_runs_it_once(
        home: Path) -> None:
    _config(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!wipe db2", user="alice")
        await settle(squall, bot)
        yes = _buttons(loopback)["Yes"]
        locker = _locker_of(squall)
        try:
            locker.hold()
            await loopback.say(yes, user="alice", mentioned=True)
            assert loopback.texts()[-1].startswith(LOCKED), loopback.texts()[-1]
            locker.release()
            assert await squall.executions.list(action="demo.wipe") == []
            await loopback.say(yes, user="alice", mentioned=True)  # the same button answers it still
            await settle(squall, bot)
            assert [e["parameters"]["target"] for e in await squall.executions.list(action="demo.wipe")] == ["db2"]
            await loopback.say(yes, user="alice", mentioned=True)
            await settle(squall, bot)
            assert loopback.texts()[-1] == ("That prompt is no longer pending: you answered it already (yes); this "
                                            "click runs nothing.")
            assert len(await squall.executions.list(action="demo.wipe")) == 1
        finally:
            locker.close()


async def test_a_confirmation_a_failed_yes_kept_is_stored_again_and_answered_after_a_restart(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The database failed the request alone (its removal of the stored confirmation went through): the
    confirmation is stored again, so a restart before the next yes still asks it, and a `no` then runs
    nothing, as a `no` always did."""
    _config(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!wipe db3", user="alice")
        await settle(squall, bot)

        async def refused(*_args: Any, **_kwargs: Any) -> None:
            raise _locked()

        with monkeypatch.context() as patched:
            patched.setattr(bot.commands, "run", refused)
            await loopback.say("!yes", user="alice")
        assert KEPT in loopback.texts()[-1], loopback.texts()[-1]
        assert len(_confirmations_stored(squall)) == 1
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!no", user="alice")
        await settle(squall, bot)
        assert loopback.texts()[-1] == "OK, not running demo.wipe."
        assert _confirmations_stored(squall) == []
        assert await squall.executions.list(action="demo.wipe") == []


async def test_a_yes_the_database_refused_after_its_confirmation_expired_is_not_kept(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Expired while the request waited for the database: nothing waits any more, as before."""
    _config(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!wipe db4", user="alice")
        await settle(squall, bot)
        [pending] = bot.dispatcher._confirmations.values()
        assert isinstance(pending, PendingConfirmation)

        async def refused_late(*_args: Any, **_kwargs: Any) -> None:
            pending.expires = time.time() - 1  # its time ran out while the lock was waited for
            raise _locked()

        with monkeypatch.context() as patched:
            patched.setattr(bot.commands, "run", refused_late)
            await loopback.say("!yes", user="alice")
        said = loopback.texts()[-1]
        assert said.startswith(LOCKED) and said.endswith("Nothing ran."), said
        await loopback.say("!yes", user="alice")
        await settle(squall, bot)
        assert loopback.texts()[-1] == "Nothing is waiting for your yes here."
        assert await squall.executions.list(action="demo.wipe") == []


@pytest.mark.usefixtures("short_waits")
async def test_a_yes_to_a_did_you_mean_offer_the_locked_database_refused_waits_too(home: Path) -> None:
    """A "did you mean" offer (`!please bounce nginx on web2` → `!restart nginx on web2`) is a confirmation
    too: its `yes` that the database refused keeps it waiting, and the next `yes` runs the command once."""
    from tests.test_chat_suggest import _start

    squall, loopback = await _start(home)
    locker = _locker_of(squall)
    try:
        await loopback.say("!please bounce nginx on web2", user="alice", channel="#ops")
        await settle(squall, squall.chat)
        assert loopback.texts()[-1].startswith("Did you mean `!restart nginx on web2`?"), loopback.texts()
        locker.hold()
        await loopback.say("!yes", user="alice", channel="#ops")
        said = loopback.texts()[-1]
        assert said.startswith(LOCKED) and KEPT in said, said
        locker.release()
        assert await squall.executions.list(action="ops.restart") == []
        await loopback.say("!yes", user="alice", channel="#ops")
        await settle(squall, squall.chat)
        [ran] = await squall.executions.list(action="ops.restart")
        assert {k: ran["parameters"][k] for k in ("service", "host")} == {"service": "nginx", "host": "web2"}
        await loopback.say("!yes", user="alice", channel="#ops")
        await settle(squall, squall.chat)
        assert loopback.texts()[-1] == "Nothing is waiting for your yes here."
        assert len(await squall.executions.list(action="ops.restart")) == 1
    finally:
        locker.close()
        await squall.chat.stop()
        await squall.close()


@pytest.mark.usefixtures("short_waits")
async def test_a_yes_to_a_retry_the_locked_database_refused_waits_and_the_next_yes_retries_once(home: Path) -> None:
    """`!retry <id>` of a confirming alias's command asks first (`_ask_to_confirm_retry`): its `yes` that the
    database refused keeps that confirmation waiting too, and the next `yes` re-runs the execution once."""
    _config(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!wipe db5", user="alice")
        await loopback.say("!yes", user="alice")
        await settle(squall, bot)
        [wiped] = await squall.executions.list(action="demo.wipe")
        await loopback.say(f"!retry {wiped['id']}", user="alice")
        await settle(squall, bot)
        assert loopback.texts()[-1].startswith(f"About to retry {wiped['id']}: demo.wipe with "), loopback.texts()
        locker = _locker_of(squall)
        try:
            locker.hold()
            await loopback.say("!yes", user="alice")
            said = loopback.texts()[-1]
            assert said.startswith(LOCKED), said
            assert KEPT in said and said.endswith("s to run it, or `!no`."), said
            locker.release()
            assert [e["id"] for e in await squall.executions.list(action="demo.wipe")] == [wiped["id"]]
            assert len(_confirmations_stored(squall)) == 1
            await loopback.say("!yes", user="alice")
            await settle(squall, bot)
            [again] = [e for e in await squall.executions.list(action="demo.wipe") if e["id"] != wiped["id"]]
            assert again["parameters"]["target"] == "db5" and again["context"]["user"] == "alice"
            assert f"Retrying as {again['id']}." in loopback.texts()
            assert _confirmations_stored(squall) == []
            await loopback.say("!yes", user="alice")  # answered: a third yes retries nothing more
            await settle(squall, bot)
            assert loopback.texts()[-1] == "Nothing is waiting for your yes here."
            assert len(await squall.executions.list(action="demo.wipe")) == 2
        finally:
            locker.close()
