"""The database fails a commit, or fills up, and comes back: Squall comes back with it, says so meanwhile
(`/healthz`, the chat's answer), and leaves no execution `running` for ever.

SQLite's `max_page_count`, set on a connection to the pages the database has, makes a write there
that needs a new page fail as a full disk does (SQLITE_FULL, "database or disk is full"); raising it
frees the space again (`Space`): a full disk without root or a small filesystem. A foreign key
declared `DEFERRABLE INITIALLY DEFERRED` and violated inside a group makes the group's COMMIT fail
rather than a statement: the failure after which SQLAlchemy's connection keeps a dead transaction.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from bot.app import Squall
from bot.http import create_api
from bot.http.health import worker_api
from engine import executions as executions_module
from engine.config import load_config
from engine.storage import Database, Store, utcnow
from tests.conftest import write
from tests.test_chat import _config, loopback_chat, settle
from tests.test_storage import _execution, _kv

FULL = "database or disk is full"
#: More than any page's free room: a row with this needs new (overflow) pages.
BIG = "x" * 300_000


class Space:
    """SQLite's `max_page_count` as the disk's free space, on every connection `store` writes through:
    the loop's (checked out for good: set at once) and those the thread's pool hands out (at checkout)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.limit = 1 << 30
        sa.event.listen(store.engine, "checkout", self._apply)

    def _apply(self, dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        dbapi_connection.execute(f"PRAGMA max_page_count={self.limit}")

    def _loop_driver(self) -> Any:
        with self.store.batch_without_waiting():  # opens the loop's connection if nothing did yet
            pass
        return self.store._nowait_conn.connection.driver_connection  # type: ignore[union-attr]

    def fill(self) -> None:
        """No page more than the database has now."""
        driver = self._loop_driver()
        self.limit = driver.execute("PRAGMA page_count").fetchone()[0]
        driver.execute(f"PRAGMA max_page_count={self.limit}")

    def free(self) -> None:
        self.limit = 1 << 30
        self._loop_driver().execute(f"PRAGMA max_page_count={self.limit}")


def _with_a_deferred_key(store: Store) -> None:
    with store.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE parent_rows (id INTEGER PRIMARY KEY)")
        conn.exec_driver_sql("CREATE TABLE child_rows (parent INTEGER REFERENCES parent_rows (id) "
                             "DEFERRABLE INITIALLY DEFERRED)")


def _orphan(store: Store, through: str = "core") -> None:
    """A row naming no parent: its statement succeeds, the group's COMMIT fails. `through` SQLAlchemy
    Core (which begins SQLAlchemy's transaction, as a Core write does in a group), or the driver (as
    the hot writes do on SQLite)."""
    with store._write() as conn:
        if through == "core":
            conn.execute(sa.text("INSERT INTO child_rows (parent) VALUES (42)"))
        else:
            conn.connection.driver_connection.execute("INSERT INTO child_rows (parent) VALUES (42)")


async def until(check: Callable[[], Awaitable[bool] | bool], what: str, limit: float = 20.0) -> None:
    """Poll until `check()` holds (a guard against hanging, not an assertion about time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        held = check()
        if held if isinstance(held, bool) else await held:
            return
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.01)


# -- the connection comes back after a failed commit --------------------------------------------------

async def _a_failed_commit_then_groups(database_url: str, through: str) -> None:
    store = Store.open(database_url)
    _with_a_deferred_key(store)
    db = Database(store)
    try:
        with pytest.raises(sa.exc.IntegrityError):
            await db(_orphan, store, through)
        for n in range(3):  # and again, and again: nothing is left half-ended on the connection
            assert await db(store.kv_put, _kv(f"after{n}", "stored")) is None
        other = Store.open(database_url)  # committed: another connection (process) sees them
        try:
            assert [row["name"] for row in other.kv_list("system", "after", utcnow())] == ["after0", "after1", "after2"]
            with other.engine.connect() as conn:
                assert conn.exec_driver_sql("SELECT count(*) FROM child_rows").scalar() == 0
        finally:
            other.close()
    finally:
        db.close()
        store.close()


async def test_the_group_after_a_failed_commit_commits(database_url: str) -> None:
    """A group whose COMMIT failed after a Core statement began SQLAlchemy's transaction is rolled back
    whole, and the next group on the same connection (the loop's on SQLite, the thread's on PostgreSQL)
    commits: no PendingRollbackError ever after."""
    await _a_failed_commit_then_groups(database_url, "core")


async def test_the_group_after_a_failed_driver_commit_commits(tmp_path: Path) -> None:
    """The same when the group's writes went to SQLite's driver alone (the hot writes) and its commit failed."""
    await _a_failed_commit_then_groups(f"sqlite:///{tmp_path / 'squall.db'}", "driver")


def test_the_thread_s_next_group_after_a_failed_commit_commits(tmp_path: Path) -> None:
    """`Store.batch` (the database thread's groups, `Database._drain`) on SQLite comes back too."""
    store = Store.open(f"sqlite:///{tmp_path / 'squall.db'}")
    _with_a_deferred_key(store)
    try:
        with pytest.raises(sa.exc.IntegrityError), store.batch():
            _orphan(store)
        with store.batch():
            store.kv_put(_kv("after", "stored"))
        assert store.kv_get("system", "after", utcnow())["value"] == "stored"
        with store.engine.connect() as conn:  # the refused row did not ride with the next commit
            assert conn.exec_driver_sql("SELECT count(*) FROM child_rows").scalar() == 0
    finally:
        store.close()


# -- a full disk --------------------------------------------------------------------------------------

async def test_a_write_that_finds_the_disk_full_fails_its_whole_group(tmp_path: Path) -> None:
    """SQLite may roll a whole transaction back when a statement finds the disk full (with
    max_page_count it does): the calls of the group before it lost their writes too, so none of them
    is told it took effect. Once space is back, the same calls commit."""
    store = Store.open(f"sqlite:///{tmp_path / 'squall.db'}")
    space = Space(store)
    db = Database(store)
    try:
        space.fill()
        outcomes = await asyncio.gather(db(store.insert_execution, _execution("small")),
                                        db(store.insert_execution, _execution("big", result={"out": BIG})),
                                        db(store.insert_execution, _execution("later")),
                                        return_exceptions=True)
        for outcome in outcomes:
            assert isinstance(outcome, sa.exc.OperationalError) and FULL in str(outcome), outcome
        assert [store.get_execution(name) for name in ("small", "big", "later")] == [None, None, None]
        space.free()
        await asyncio.gather(db(store.insert_execution, _execution("small")),
                             db(store.insert_execution, _execution("big", result={"out": BIG})))
        assert store.get_execution("big")["result"] == {"out": BIG}
        assert store.get_execution("small") is not None
    finally:
        db.close()
        store.close()


@pytest.fixture
async def anon(squall: Squall) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_api(squall))
    async with httpx.AsyncClient(transport=transport, base_url="http://squall") as client:
        yield client


async def test_healthz_says_503_naming_the_database_while_its_writes_fail(squall: Squall,
                                                                          anon: httpx.AsyncClient) -> None:
    """Orchestrators see a database that takes no writes; a read that works meanwhile does not hide it,
    and the first write that commits again brings back the usual answer, exactly as before."""
    space = Space(squall.store)
    stub = SimpleNamespace(squall=squall, stopping=False, name="w1", queues=["default"], running=set())
    transport = httpx.ASGITransport(app=worker_api(stub))
    async with httpx.AsyncClient(transport=transport, base_url="http://worker") as worker:
        healthy = await anon.get("/healthz")
        assert healthy.status_code == 200
        assert healthy.json() == {"status": "ok", "packs": len(squall.registry.packs),
                                  "actions": len(squall.registry.actions)}
        worker_healthy = (await worker.get("/healthz")).json()
        assert worker_healthy["status"] == "ok" and "reason" not in worker_healthy
        space.fill()
        with pytest.raises(sa.exc.OperationalError, match=FULL):
            await squall.db(squall.store.insert_execution, _execution("big", result={"out": BIG}))
        assert await squall.db(squall.store.get_execution, "big") is None  # reads still work...
        failing = await anon.get("/healthz")
        assert failing.status_code == 503  # ...and do not hide the failed write
        body = failing.json()
        assert body["status"] == "database failing"
        assert "database" in body["reason"] and FULL in body["reason"], body
        assert "INSERT" not in body["reason"]  # the driver's words, never the statement nor its values
        worker_failing = await worker.get("/healthz")
        assert worker_failing.status_code == 503
        assert worker_failing.json() == {**worker_healthy, "status": "database failing", "reason": body["reason"]}
        space.free()
        await squall.db(squall.store.insert_execution, _execution("big", result={"out": BIG}))
        again = await anon.get("/healthz")
        assert again.status_code == 200 and again.json() == healthy.json()
        assert (await worker.get("/healthz")).json() == worker_healthy


# -- nothing stuck ------------------------------------------------------------------------------------

async def test_a_run_whose_end_finds_the_disk_full_ends_once_space_is_back(squall: Squall, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """The end of a run that could not be stored is tried again until it is: never left `running` in a
    live service, its waiters answered, its task ending cleanly; one warning for it, not one a try."""
    monkeypatch.setattr(executions_module, "END_RETRY_SECONDS", (0.01, 0.02))
    space = Space(squall.store)
    gate = tmp_path / "gate"
    cmd = f"while [ ! -e {gate} ]; do sleep 0.01; done; head -c {len(BIG)} /dev/zero | tr '\\0' x"
    requested = await squall.executions.request("core.local", {"cmd": cmd})
    execution_id = requested["id"]

    async def running() -> bool:
        return (await squall.executions.get(execution_id))["status"] == "running"

    await until(running, "the run to start")
    task = squall.executor.inner._tasks[execution_id]  # type: ignore[attr-defined]
    caplog.set_level(logging.DEBUG, logger="engine.executions")
    space.fill()
    gate.touch()

    def retried() -> bool:
        return sum("tried again" in r.getMessage() and r.levelno >= logging.DEBUG for r in caplog.records) >= 3

    await until(retried, "the end to be tried again")
    assert squall.store.get_execution(execution_id)["status"] == "running"  # not stored yet: the disk is full
    space.free()
    ended = await squall.executions.wait(execution_id, timeout=20)
    assert ended["status"] == "succeeded" and ended["result"]["stdout"] == BIG
    assert squall.store.get_execution(execution_id)["status"] == "succeeded"
    await until(task.done, "the run's task to end")
    assert task.exception() is None
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and execution_id in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


async def test_a_claim_whose_group_fails_leaves_the_request_to_be_claimed_again(squall: Squall) -> None:
    """A run whose claim was not committed ends its task without an error nobody retrieves (asyncio's
    "Task exception was never retrieved"); the request is still `requested`, for the poll to submit again."""
    _with_a_deferred_key(squall.store)
    await squall.db(squall.store.insert_execution, _execution("claimable", action="core.local",
                                                             runner="local-shell-cmd"))
    orphan = squall.db.submit(_orphan, squall.store)  # the claim rides in this group, whose commit fails
    await squall.executor.submit("claimable")
    task = squall.executor.inner._tasks["claimable"]  # type: ignore[attr-defined]
    with pytest.raises(sa.exc.IntegrityError):
        await orphan
    await until(task.done, "the run to return")
    assert task.exception() is None
    assert squall.store.get_execution("claimable")["status"] == "requested"


async def test_a_request_whose_group_fails_leaves_no_outcome_unread(home: Path) -> None:
    """Under a policy its request's group also reads the request (`PolicyExecutor.submit`, before the
    request's own outcome is awaited): when that group fails, the request says so, and nothing is left
    for asyncio to report as "Future exception was never retrieved"."""
    write(home / "packs" / "guarded" / "pack.yaml", "ref: guarded\nname: guarded\ndescription: d\n"
                                                    "version: 1.0.0\nauthor: t\n")
    write(home / "packs" / "guarded" / "policies" / "limit.yaml",
          "name: limit\nresource_ref: core.local\npolicy_type: action.concurrency\nparameters: {threshold: 5}\n")
    squall = await Squall.start(load_config(home / "config.yml"))
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context["message"]))
    try:
        assert squall.executor.policies  # type: ignore[attr-defined]
        _with_a_deferred_key(squall.store)
        orphan = squall.db.submit(_orphan, squall.store)  # the request, and the policy's read, ride in its group
        try:
            await squall.executions.request("core.local", {"cmd": "true"})
        except sa.exc.IntegrityError:
            pass
        else:
            raise AssertionError("the request was stored in a group whose commit failed")
        with pytest.raises(sa.exc.IntegrityError):
            await orphan
        del orphan
        await asyncio.sleep(0)  # (a turn for the failed group's callbacks: no time is assumed)
        gc.collect()
        assert not [message for message in reported if "never retrieved" in message], reported
        assert squall.store.list_executions(limit=5) == []
    finally:
        loop.set_exception_handler(None)
        await squall.close()


# -- what the chat says -------------------------------------------------------------------------------

async def test_chat_says_the_database_could_not_store_the_command(home: Path) -> None:
    _config(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        space = Space(squall.store)
        space.fill()
        await loopback.say(f"!greet {'x' * 20_000}", user="olivia", channel="#ops")
        await settle(squall, bot)
        said = loopback.texts("#ops")
        assert not any("something went wrong" in text or "sqlalchemy" in text.lower() or "[SQL:" in text
                       for text in said), said
        assert len(said) == 1 and said[0].startswith("Squall could not store that command: the database is full"), said
        assert FULL in said[0] and said[0].endswith("Nothing ran.")
        space.free()
        await loopback.say("!greet bob", user="olivia", channel="#ops")
        await settle(squall, bot)
        assert "hello bob" in loopback.texts("#ops")[-1]


async def test_chat_never_quotes_a_database_error_s_statement(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another database error (a constraint) is named by its kind: SQLAlchemy's text quotes the
    statement and its values, a secret parameter among them, to everyone in the channel."""
    _config(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        async def refused(*_args: Any, **_kwargs: Any) -> Any:
            raise sa.exc.IntegrityError("INSERT INTO executions (parameters) VALUES (?)", ['{"token": "hunter2"}'],
                                        sqlite3.IntegrityError("UNIQUE constraint failed: executions.id"))

        monkeypatch.setattr(bot.dispatcher.commands, "run", refused)
        await loopback.say("!greet bob", user="olivia", channel="#ops")
        await settle(squall, bot)
        said = loopback.texts("#ops")
        assert said == ["Sorry, something went wrong handling that: the database refused it (IntegrityError; "
                        "Squall's log has the details)."], said


async def test_a_stored_request_whose_submit_the_database_fails_is_accepted(squall: Squall,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A request handed to the executor after its commit (a workflow, a delay, another process's executor)
    whose hand-over the database failed raised to the caller, who was told "Nothing ran", though the request
    was stored and the poll submits it. It is accepted now, and the log says what the poll will do."""
    inner = squall.executions.executor

    class Failing:
        shared = True  # submitted after the request's commit, as a worker's queue is

        async def submit(self, execution_id: str) -> None:
            raise sa.exc.OperationalError("INSERT INTO procrastinate_jobs ...", {}, sqlite3.OperationalError(
                "database is locked"))

    squall.executions.executor = Failing()  # type: ignore[assignment]
    caplog.set_level(logging.WARNING, logger="engine.executions")
    try:
        record = await squall.executions.request("core.noop", {})
    finally:
        squall.executions.executor = inner
    assert squall.store.get_execution(record["id"])["status"] == "requested"
    [said] = [r.getMessage() for r in caplog.records if record["id"] in r.getMessage()]
    assert "was not claimed, as the SQLite database is locked by another process" in said, said
