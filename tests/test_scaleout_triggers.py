"""Rules on the triggers a `squall worker` raises (`executor.kind: procrastinate`), on the suite's real
PostgreSQL: a worker stores the instances its executions raise (action and notify triggers, datastore
changes, inquiries) as `pending` and processes none of them; the `squall serve` nodes process them with
their current rules, woken by a notification at the commit of the worker's insert, else by their poll,
else at their start. A worker emits the engine's own trigger types whatever rules it loaded: the serve
nodes' rules decide. Each instance is processed once, however many serve nodes take at once."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from bot.service import Housekeeping
from bot.worker import Worker
from engine.config import load_config
from engine.notifications import ACTION_TRIGGER
from tests.conftest import write
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
