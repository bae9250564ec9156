"""Rules on the triggers a `squall worker` raises (`executor.kind: procrastinate`), on the suite's real
PostgreSQL: a worker stores the instances its executions raise (action and notify triggers, datastore
changes, inquiries) as `pending` and processes none of them; the `squall serve` nodes process them with
their current rules, woken by a notification at the commit of the worker's insert, else by their poll,
else at their start. A worker emits the engine's own trigger types whatever rules it loaded: the serve
nodes' rules decide. Each instance is processed once, however many serve nodes take at once.

A serve node stores a heartbeat; one that stops beating (killed, its machine lost) has the instances it
held `processing` resumed by a live serve node, whatever host it was on. The watching node's clock is
the test's (`triggers.time`); a node of "another host" is an owner record forged with another host name
and boot."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from bot.app import Squall
from bot.service import POLL_SECONDS, Housekeeping
from bot.worker import Worker
from engine import triggers
from engine.config import load_config
from engine.executions import new_id
from engine.notifications import ACTION_TRIGGER
from engine.storage import Store, utcnow
from engine.triggers import NODE_BEAT_SECONDS, NODE_SILENT_SECONDS, encode_owner
from tests.conftest import write
from tests.test_migrations_0020 import _alembic
from tests.test_reaper_clock import Monotonic
from tests.test_scaleout import Cluster, _heard, _home

pytestmark = [pytest.mark.postgres]
ON_HELLO = """
name: on_hello
pack: demo
enabled: true
trigger: {type: core.st2.generic.actiontrigger}
criteria:
  trigger.action_ref: {type: equals, pattern: demo.hello}
action: {ref: zone.where}
"""
KV_CREATE = "core.st2.key_value_pair.create"
JOB = {"job_id": 1, "worker_id": 1, "worker": "test:1"}


def _rule(home: Path) -> None:
    """A rule on the action trigger of `demo.hello` (its action: `zone.where`)."""
    write(home / "packs" / "demo" / "rules" / "on_hello.yaml", ON_HELLO)


async def _raised(worker: Worker, serve: Squall, who: str = "w") -> dict[str, Any]:
    """`demo.hello` requested on `serve`, run by `worker` as its job does: the action trigger it raised."""
    asked = await serve.executions.request("demo.hello", {"who": who})
    await worker.run_job(asked["id"], JOB)
    await _heard(worker.squall)
    store = serve.store
    assert store.get_execution(asked["id"])["status"] == "succeeded"
    [raised] = [row for row in store.trigger_instance_list(ACTION_TRIGGER, limit=1000)
                if row["payload"]["execution_id"] == asked["id"]]
    return raised


async def _until(check: Callable[[], Awaitable[bool]], seconds: float = 20) -> None:
    """Until `check()` holds (a deadline, not a pause: it returns as soon as it does)."""
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "it never happened"
        await asyncio.sleep(0.05)


async def _enforced(serve: Squall, instance_id: str) -> dict[str, Any]:
    """The one enforcement of `on_hello` for the instance, and the `zone.where` execution it requested."""
    [enforcement] = await serve.rules.enforcements(trigger_instance_id=instance_id)
    assert enforcement["status"] == "succeeded" and enforcement["rule"]["ref"] == "demo.on_hello"
    execution = serve.store.get_execution(enforcement["execution_id"])
    assert execution is not None and execution["action"] == "zone.where"
    return execution


async def test_a_rule_added_after_the_worker_started_acts_on_what_the_worker_raises(home: Path,
                                                                                    postgres_url: str) -> None:
    """The worker started with no rule on the action trigger nor on the datastore: it emits them all the
    same, stores them `pending`, and processes none; serve, which loaded the rule later, enforces it."""
    config = load_config(_home(home, postgres_url) / "config.yml")
    worker_side = await Squall.start(config)
    worker = Worker(worker_side)
    _rule(home)
    serve = await Squall.start(config)  # the rule added since the worker's start
    store = serve.store
    try:
        assert not worker_side.rules.interested(ACTION_TRIGGER) and serve.rules.interested(ACTION_TRIGGER)
        raised = await _raised(worker, serve)
        assert raised["status"] == "pending" and not worker_side.triggers.busy  # the worker processes nothing
        assert await serve.rules.enforcements(trigger_instance_id=raised["id"]) == []

        await worker_side.datastore_call("set_value", {"name": "demo:seen", "value": "yes"})  # a Python action's
        await worker_side.emitted()
        [changed] = store.trigger_instance_list(KV_CREATE)
        assert changed["status"] == "pending" and changed["payload"]["object"]["name"] == "demo:seen"

        assert await serve.triggers.take_pending() == 2
        await serve.triggers.settle()
        assert store.trigger_instance_get(raised["id"])["status"] == "processed"
        assert store.trigger_instance_get(changed["id"])["status"] == "processed"  # no rule: processed, no more
        assert (await _enforced(serve, raised["id"]))["status"] == "requested"  # queued for a worker
        assert await serve.triggers.take_pending() == 0  # nothing twice
    finally:
        await serve.close()
        await worker_side.close()


async def test_serve_is_woken_by_the_commit_of_what_a_worker_stores(home: Path, postgres_url: str) -> None:
    """No poll runs here: the second instance reaches serve only through the notification its insert's
    commit sends (the first may come with the listener's own first look)."""
    config = load_config(_home(home, postgres_url) / "config.yml")
    _rule(home)
    worker_side = await Squall.start(config)
    worker = Worker(worker_side)
    serve = await Squall.start(config)
    store = serve.store
    try:
        serve.triggers.follow(config.database_url)
        for who in ("first", "second"):
            raised = await _raised(worker, serve, who)

            async def processed(instance_id: str = raised["id"]) -> bool:
                return store.trigger_instance_get(instance_id)["status"] == "processed"

            await _until(processed)
            await _enforced(serve, raised["id"])
    finally:
        await serve.close()
        await worker_side.close()


async def test_serve_s_poll_takes_what_a_lost_notification_did_not_bring(home: Path, postgres_url: str) -> None:
    config = load_config(_home(home, postgres_url) / "config.yml")
    _rule(home)
    worker_side = await Squall.start(config)
    worker = Worker(worker_side)
    serve = await Squall.start(config)
    try:
        housekeeping = Housekeeping(serve, [])
        await housekeeping.start()
        raised = await _raised(worker, serve)
        assert raised["status"] == "pending"
        await housekeeping.tick()  # serve listens to nothing here: its one-second poll
        await serve.triggers.settle()
        assert serve.store.trigger_instance_get(raised["id"])["status"] == "processed"
        await _enforced(serve, raised["id"])
    finally:
        await serve.close()
        await worker_side.close()


async def test_two_serve_nodes_taking_at_once_process_each_instance_once(home: Path, postgres_url: str) -> None:
    config = load_config(_home(home, postgres_url) / "config.yml")
    _rule(home)
    worker_side = await Squall.start(config)
    Worker(worker_side)
    one, two = await Squall.start(config), await Squall.start(config)
    try:
        payloads = [{"execution_id": f"e{n}", "action_ref": "demo.hello", "status": "succeeded"} for n in range(30)]
        stored = [await worker_side.triggers.dispatch(ACTION_TRIGGER, payload, validate=False) for payload in payloads]
        taken = await asyncio.gather(one.triggers.take_pending(), two.triggers.take_pending())
        await asyncio.gather(one.triggers.settle(), two.triggers.settle())
        assert sum(taken) == len(stored)
        for instance in stored:
            assert one.store.trigger_instance_get(instance["id"])["status"] == "processed"
            await _enforced(one, instance["id"])
        assert len(one.store.list_executions(action="zone.where", limit=1000)) == len(stored)
    finally:
        await one.close()
        await two.close()
        await worker_side.close()


@pytest.mark.slow
def test_what_a_killed_worker_stored_while_serve_was_down_is_processed_once_serve_starts(home: Path,
                                                                                       postgres_url: str) -> None:
    """Real processes: a worker started before the rule existed runs `demo.hello`, stores its action
    trigger and is killed; no serve node is up. Two serve nodes start: the rule's action runs once for
    each instance."""
    cluster = Cluster(_home(home, postgres_url))
    try:
        doomed = cluster.worker()
        cluster.wait(cluster.request("demo.hello", "who=up"), "succeeded")  # the worker has loaded its rules
        _rule(home)  # after the worker's start
        asked = cluster.request("demo.hello", "who=early")
        cluster.wait(asked, "succeeded")
        deadline = time.monotonic() + 30
        while not (raised := [row for row in cluster.store.trigger_instance_list(ACTION_TRIGGER)
                              if row["payload"]["execution_id"] == asked]):
            assert time.monotonic() < deadline, "the worker did not store the action trigger"
            time.sleep(0.1)
        assert raised[0]["status"] == "pending"  # no serve node: nobody processes it
        os.killpg(doomed.pid, signal.SIGKILL)
        cluster.serve()
        cluster.serve()
        cluster.worker()
        # Serve takes every instance stored meanwhile, the warm-up's too: one run of the rule's action each.
        instances = [row["id"] for row in cluster.store.trigger_instance_list(ACTION_TRIGGER)
                     if row["payload"]["action_ref"] == "demo.hello"]
        assert len(instances) == 2 and raised[0]["id"] in instances
        deadline = time.monotonic() + 60
        while len(ran := cluster.store.list_executions(action="zone.where", status="succeeded")) < len(instances):
            assert time.monotonic() < deadline, f"the rule's actions did not all run: {cluster._logs()}"
            time.sleep(0.1)
        assert sorted(run["context"]["trigger_instance"]["id"] for run in ran) == sorted(instances)
        while (status := cluster.store.trigger_instance_get(raised[0]["id"])["status"]) != "processed":
            assert status == "processing" and time.monotonic() < deadline, status  # marked once its rules acted
            time.sleep(0.1)
    finally:
        cluster.close()


#: A `squall serve` of another host, as the instances it claims record it (another host name, another boot).
FAR = {"hostname": "far.example", "pid": 4242, "started": 1, "boot_id": "another-boot", "pid_ns": "4026531836"}


@pytest.fixture
def node_clock(monkeypatch: pytest.MonkeyPatch) -> Monotonic:
    """The monotonic clock serve nodes watch each other's heartbeats by: the test moves it."""
    clock = Monotonic()
    monkeypatch.setattr(triggers, "time", clock)
    return clock


def _far(pid: int) -> str:
    """The owner record of a serve node of another host."""
    return encode_owner({**FAR, "pid": pid})


def _held_by(serve: Squall, owner: str | None = None) -> dict[str, Any]:
    """An action trigger of `demo.hello`, stored `pending` and, with `owner`, claimed by it (`processing`)."""
    record = {"id": new_id(), "trigger": ACTION_TRIGGER, "occurrence_time": utcnow(), "status": "pending",
              "payload": {"execution_id": new_id(), "action_ref": "demo.hello", "status": "succeeded"},
              "trace_tag": None, "trigger_parameters": None}
    serve.store.trigger_instance_add(record)
    if owner is not None:
        assert serve.store.trigger_instance_claim(record["id"], owner)
    return record


def _state(serve: Squall, instance_id: str) -> tuple[str, str]:
    row = serve.store.trigger_instance_get(instance_id)
    return row["status"], row["owner"]


async def _watch(serve: Squall, clock: Monotonic, seconds: float, beating: Callable[[], None] = lambda: None,
                 settle: bool = True) -> None:
    """`serve`'s looks at the heartbeats, every `NODE_BEAT_SECONDS` of its clock for `seconds`, and (`settle`)
    what it resumed processed; `beating()` (the live nodes' beats) before each look."""
    end = clock.now + seconds
    while clock.now < end:
        clock.now += NODE_BEAT_SECONDS
        beating()
        await serve.triggers.resume_silent()
    if settle:
        await serve.triggers.settle()


class Gate:
    """A processor that holds each instance until let through: a node caught in the middle of one."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.through = asyncio.Event()

    def interested(self, trigger_ref: str) -> bool:
        return True

    async def process(self, instance: dict[str, Any], resumed: bool = False) -> None:
        self.reached.set()
        await self.through.wait()


async def test_a_serve_node_of_another_host_that_stopped_beating_has_its_instances_resumed(
        home: Path, postgres_url: str, node_clock: Monotonic) -> None:
    """Three owners of another host hold an instance each: a serve node that beat once and was then
    lost, one that beats on, and a process that never beat (a CLI command there, which may live). The
    live serve node resumes the lost node's instance once it has watched its heartbeat stay the same for
    `NODE_SILENT_SECONDS`, not before; its rule acts once; the other two are left to their owners."""
    config = load_config(_home(home, postgres_url) / "config.yml")
    _rule(home)
    serve = await Squall.start(config)
    store = serve.store
    lost, beating, unknown = _far(4242), _far(4343), _far(4444)
    try:
        store.serve_node_beat(lost)  # then never again: killed, or its machine is gone
        store.serve_node_beat(beating)
        left, held, elsewhere = (_held_by(serve, owner) for owner in (lost, beating, unknown))

        def beats() -> None:
            store.serve_node_beat(beating)

        await _watch(serve, node_clock, NODE_SILENT_SECONDS - NODE_BEAT_SECONDS, beats)
        assert _state(serve, left["id"]) == ("processing", lost)  # not silent for long enough yet
        await _watch(serve, node_clock, 2 * NODE_BEAT_SECONDS, beats)
        assert _state(serve, left["id"]) == ("processed", serve.triggers.owner)
        assert (await _enforced(serve, left["id"]))["status"] == "requested"
        assert _state(serve, held["id"]) == ("processing", beating)
        assert _state(serve, elsewhere["id"]) == ("processing", unknown)

        await _watch(serve, node_clock, 4 * NODE_SILENT_SECONDS, beats)  # later looks take nothing more
        assert len(store.list_executions(action="zone.where", limit=100)) == 1
        assert _state(serve, held["id"]) == ("processing", beating)
    finally:
        await serve.close()


async def test_a_serve_node_presumed_dead_that_comes_back_does_not_process_twice(
        home: Path, postgres_url: str, node_clock: Monotonic) -> None:
    """A serve node of another host is caught in the middle of an instance (a long pause) and stops
    beating; the live node takes the instance over and is itself caught in the middle of it. The paused
    node comes back and finishes: its rule's action is requested, but its end is not written, for the
    instance is no longer its own. The live node then finishes: the rule that acted is not enforced
    again, and the instance ends `processed`, by the node that holds it."""
    config = load_config(_home(home, postgres_url) / "config.yml")
    _rule(home)
    paused, live = await Squall.start(config), await Squall.start(config)
    paused.triggers.identity = {**paused.triggers.identity, **{k: FAR[k] for k in ("hostname", "boot_id")}}
    paused.triggers.owner = encode_owner(paused.triggers.identity)
    first, second = Gate(), Gate()
    paused.triggers.processors.insert(0, first)
    live.triggers.processors.insert(0, second)
    try:
        instance = _held_by(paused)
        await paused.triggers.beat()
        assert await paused.triggers.take_pending() == 1
        await first.reached.wait()
        assert _state(live, instance["id"]) == ("processing", paused.triggers.owner)

        await _watch(live, node_clock, NODE_SILENT_SECONDS + NODE_BEAT_SECONDS, settle=False)
        await second.reached.wait()
        assert _state(live, instance["id"]) == ("processing", live.triggers.owner)

        first.through.set()  # the paused node comes back and finishes
        await paused.triggers.settle()
        assert _state(live, instance["id"]) == ("processing", live.triggers.owner)  # its end was not written
        second.through.set()
        await live.triggers.settle()
        assert _state(live, instance["id"]) == ("processed", live.triggers.owner)
        await _enforced(live, instance["id"])
        assert len(live.store.list_executions(action="zone.where", limit=100)) == 1
    finally:
        first.through.set()
        second.through.set()
        await live.close()
        await paused.close()


async def test_serve_s_housekeeping_beats_and_resumes_what_a_lost_serve_node_held(
        home: Path, postgres_url: str, node_clock: Monotonic) -> None:
    """`squall serve`'s housekeeping stores the node's heartbeat from its start, and looks at the
    others' every `NODE_BEAT_SECONDS` of its ticks: a lost node's instance is processed."""
    config = load_config(_home(home, postgres_url) / "config.yml")
    _rule(home)
    serve = await Squall.start(config)
    store = serve.store
    try:
        lost = _far(4242)
        store.serve_node_beat(lost)
        left = _held_by(serve, lost)
        housekeeping = Housekeeping(serve, [])
        await housekeeping.start()

        async def beaten() -> bool:
            return serve.triggers.owner in store.serve_node_beats()

        await _until(beaten)
        ticks = int((NODE_SILENT_SECONDS + 2 * NODE_BEAT_SECONDS) / POLL_SECONDS)
        for _ in range(ticks):
            node_clock.now += POLL_SECONDS
            await housekeeping.tick()
        await serve.triggers.settle()
        assert _state(serve, left["id"]) == ("processed", serve.triggers.owner)
        await _enforced(serve, left["id"])
    finally:
        await serve.close()



def _connections_cut(url: str) -> None:
    """Every other connection to the database `url` ended by the server, as a restart ends them: once this
    returns, the next statement on any of them fails (`FATAL: terminating connection ...`)."""
    with psycopg.connect(url, autocommit=True) as conn:
        others = "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        conn.execute(f"SELECT pg_terminate_backend(pid) {others}")
        deadline = time.monotonic() + 20
        while conn.execute(f"SELECT count(*) {others}").fetchone()[0]:  # type: ignore[index]
            assert time.monotonic() < deadline, "the connections were not ended"
            time.sleep(0.05)


@pytest.mark.parametrize("seam", ["trigger_instance_claim", "insert_execution", "trigger_instance_finish"])
async def test_an_instance_whose_processing_the_database_failed_is_processed_once_it_is_back(
        home: Path, postgres_url: str, seam: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The review's restart: the instance's claim (`trigger_instance_claim`), the rule's request
    (`insert_execution`) or the instance's end (`trigger_instance_finish`) met the server ending the
    connections. The claim's error escaped the task, the instance left `pending` for a minute sweep; the
    request was recorded as a failed enforcement (the action never ran for an event answered 202); the end
    escaped the task (`Task exception was never retrieved`), the instance left `processing` while its node
    lived. Now each is tried again until the database takes it, said once: the instance is processed, its
    rule acting once."""
    config = load_config(_home(home, postgres_url) / "config.yml")
    _rule(home)
    serve = await Squall.start(config)
    store = serve.store
    real, cut = getattr(store, seam), []

    def in_a_restart(*args: Any, **kwargs: Any) -> Any:
        if not cut:
            _connections_cut(postgres_url)
            cut.append(seam)
        return real(*args, **kwargs)

    monkeypatch.setattr(store, seam, in_a_restart)
    caplog.set_level(logging.INFO)
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    try:
        raised = await serve.triggers.dispatch(
            ACTION_TRIGGER, {"execution_id": "e1", "action_ref": "demo.hello", "status": "succeeded"}, validate=False)
        await serve.triggers.settle()
        gc.collect()
        assert cut == [seam]
        assert store.trigger_instance_get(raised["id"])["status"] == "processed"
        await _enforced(serve, raised["id"])
        assert len(store.list_executions(action="zone.where", limit=1000)) == 1
    finally:
        loop.set_exception_handler(None)
        await serve.close()
    assert not unhandled, unhandled
    said = [r.getMessage() for r in caplog.records if r.name == "engine.triggers"]
    assert len([m for m in said if "tried again until the database takes it" in m]) == 1, said
    assert len([m for m in said if "went through, after" in m]) == 1, said

def test_migration_0024_adds_the_serve_nodes_heartbeats_and_takes_them_away(postgres_url: str) -> None:
    """Up from 0023 the table is there and takes beats; down again it is gone."""
    store = Store.open(postgres_url)
    try:
        store.serve_node_beat(_far(1))
        store.serve_node_beat(_far(1))
        assert store.serve_node_beats() == {_far(1): 2}
        with store.engine.begin() as connection:
            _alembic(connection, "0023", down=True)
        assert "serve_nodes" not in sa.inspect(store.engine).get_table_names()
        with store.engine.begin() as connection:
            _alembic(connection, "0024")
        assert store.serve_node_beats() == {}
    finally:
        store.close()
