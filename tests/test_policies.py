"""Policies: concurrency with delay and cancel, retry; bad policy files named at load."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from engine.config import load_config
from engine.executions import COMPLETED
from engine.storage import Store, iso, utcnow
from tests.conftest import commit_groups, write
from tests.test_crash_ownership import _dead_pid
from tests.workflow_helpers import until


def _pack(home: Path, policies: dict[str, str]) -> None:
    pack = home / "packs" / "pol"
    write(pack / "pack.yaml", "ref: pol\nname: pol\nversion: 0.1.0\n")
    write(pack / "actions" / "gate.yaml", """
        name: gate
        runner_type: local-shell-cmd
        parameters:
          gate: {type: string}
          tag: {type: string, default: a}
          cmd: {default: "while [ ! -f {{gate}} ]; do sleep 0.02; done; echo {{tag}}", immutable: true}
    """)
    write(pack / "actions" / "flaky.yaml", """
        name: flaky
        runner_type: local-shell-cmd
        parameters:
          marker: {type: string}
          cmd: {default: "n=$(cat {{marker}} 2>/dev/null || echo 0); echo $((n+1)) > {{marker}}; [ $n -ge 2 ]",
                immutable: true}
    """)
    for name, text in policies.items():
        write(pack / "policies" / f"{name}.yaml", text)


async def _status(squall: Squall, execution_id: str, wanted: set[str]) -> dict:
    while True:
        record = await squall.executions.get(execution_id)
        if record["status"] in wanted:
            return record
        await asyncio.sleep(0.01)


async def test_concurrency_delay_queues_and_admits_when_one_ends(home: Path) -> None:
    _pack(home, {"limit": "name: limit\nresource_ref: pol.gate\npolicy_type: action.concurrency\n"
                          "parameters: {threshold: 1, action: delay}\n"})
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        gate = home / "gate"
        first = await squall.executions.request("pol.gate", {"gate": str(gate), "tag": "one"})
        second = await squall.executions.request("pol.gate", {"gate": str(gate), "tag": "two"})
        await _status(squall, first["id"], {"running"})
        delayed = await squall.executions.get(second["id"])
        assert delayed["status"] == "delayed"
        gate.touch()
        done = await squall.executions.wait(second["id"], timeout=20)
        assert done["status"] == "succeeded" and done["result"]["stdout"] == "two"
        assert [e["status"] for e in done["log"]][:3] == ["requested", "delayed", "scheduled"]
        first_done = await squall.executions.get(first["id"])
        assert first_done["end_timestamp"] <= done["log"][2]["timestamp"]  # admitted only after the first ended
    finally:
        await squall.close()


async def test_concurrency_cancel_and_attr_count_per_value(home: Path) -> None:
    _pack(home, {"limit": "name: limit\nresource_ref: pol.gate\npolicy_type: action.concurrency.attr\n"
                          "parameters: {threshold: 1, action: cancel, attributes: [tag]}\n"})
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        gate = home / "gate"
        first = await squall.executions.request("pol.gate", {"gate": str(gate), "tag": "x"})
        other = await squall.executions.request("pol.gate", {"gate": str(gate), "tag": "y"})
        same = await squall.executions.request("pol.gate", {"gate": str(gate), "tag": "x"})
        canceled = await squall.executions.wait(same["id"], timeout=20)
        assert canceled["status"] == "canceled" and 'policy "pol.limit"' in canceled["result"]["error"]
        gate.touch()
        assert (await squall.executions.wait(first["id"], timeout=20))["status"] == "succeeded"
        assert (await squall.executions.wait(other["id"], timeout=20))["status"] == "succeeded"
        assert squall.executions._prepared == {}  # the canceled one, never claimed, is not kept in memory
    finally:
        await squall.close()


async def test_retry_policy_reruns_a_failure_with_a_count(home: Path) -> None:
    _pack(home, {"retry": "name: retry\nresource_ref: pol.flaky\npolicy_type: action.retry\n"
                          "parameters: {retry_on: failure, max_retry_count: 3}\n"})
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        asked = {"user": "alice", "source": "chat", "chat": {"adapter": "slack", "channel": "C1", "thread": "t1"}}
        record = await squall.executions.request("pol.flaky", {"marker": str(home / "count")}, asked)
        first = await squall.executions.wait(record["id"], timeout=20)
        assert first["status"] == "failed"
        while True:
            rows = await squall.executions.list(action="pol.flaky")
            if any(r["status"] == "succeeded" for r in rows):
                break
            await asyncio.sleep(0.02)
        rows = sorted(rows, key=lambda r: r["id"])
        assert [r["status"] for r in rows] == ["failed", "failed", "succeeded"]
        assert [r["context"].get("policies", {}).get("retry", {}).get("retry_count") for r in rows] == [None, 1, 2]
        assert rows[1]["context"]["policies"]["retry"]["applied_policy"] == "pol.retry"
        for retry in rows[1:]:  # the same request again: its replies go where the first's went
            assert {k: retry["context"].get(k) for k in asked} == asked
    finally:
        await squall.close()


async def test_a_persons_re_run_of_a_retried_failure_is_retried_afresh(home: Path) -> None:
    """A person re-runs the last of a policy's retries (its count used up): it is a new request, retried as
    often as the policy says, as StackStorm's re-run starts a context of its own. It was re-run with the
    retry's `context.policies` copied, so its count was used up already and a failure was never retried."""
    _pack(home, {"retry": "name: retry\nresource_ref: pol.flaky\npolicy_type: action.retry\n"
                          "parameters: {retry_on: failure, max_retry_count: 1}\n"})
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        marker = home / "count"  # flaky succeeds at its third run
        record = await squall.executions.request("pol.flaky", {"marker": str(marker)}, {"user": "alice"})
        assert (await squall.executions.wait(record["id"], timeout=20))["status"] == "failed"
        rows = await until(lambda: _ended(squall, 2), "the failure and its one retry")
        last = max(rows, key=lambda r: r["start_timestamp"])
        assert last["status"] == "failed" and last["context"]["policies"]["retry"]["retry_count"] == 1
        marker.write_text("1\n")  # the re-run fails (its second run), its retry succeeds
        again = await squall.executions.rerun(last["id"], None, {"user": "bob", "source": "cli"})
        assert "policies" not in again["context"] and again["context"]["re-run"] == {"ref": last["id"]}
        rows = await until(lambda: _ended(squall, 4), "the re-run and its retry")
        retried = [r for r in rows if (r["context"].get("re-run") or {}).get("ref") == again["id"]]
        assert [(r["status"], r["context"]["policies"]["retry"]["retry_count"]) for r in retried] == [
            ("succeeded", 1)]
    finally:
        await squall.close()


async def _ended(squall: Squall, count: int) -> list[dict[str, Any]] | None:
    """The `pol.flaky` executions once `count` of them ended, else None."""
    rows = await squall.executions.list(action="pol.flaky")
    return rows if sum(r["status"] in COMPLETED for r in rows) >= count else None


async def test_a_request_refused_before_it_ran_is_not_retried(home: Path) -> None:
    """A rule's request refused for its parameters is stored failed (`record_refused`) without running: a
    retry would be refused the same way, and recovery would try it again for a day. The policy skips it,
    and still retries a run of the same action that failed."""
    _pack(home, {"retry": "name: retry\nresource_ref: pol.flaky\npolicy_type: action.retry\n"
                          "parameters: {retry_on: failure, max_retry_count: 3}\n"})
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        given = {"marker": str(home / "{{ trigger.nope }}")}  # a retry would run it: the file says so
        refused = await squall.executions.record_refused("pol.flaky", given, {"user": "r"},
                                                         ValueError("parameter \"marker\" did not render"))
        assert refused["status"] == "failed"
        assert await squall.executor.recover_retries() == 0
        ran = await squall.executions.request("pol.flaky", {"marker": str(home / "count")}, {"user": "r"})
        assert (await squall.executions.wait(ran["id"], timeout=20))["status"] == "failed"
        while not any(r["status"] == "succeeded" for r in await squall.executions.list(action="pol.flaky")):
            await asyncio.sleep(0.02)
        retried = [r for r in await squall.executions.list(action="pol.flaky")
                   if (r["context"].get("re-run") or {}).get("ref") == refused["id"]]
        assert retried == []
    finally:
        await squall.close()


async def test_a_delayed_run_canceled_here_or_elsewhere_gives_its_place_up(home: Path) -> None:
    """Threshold 1: of four queued behind a running one, the second is canceled here and the third in
    another process (its end unheard here). When the first ends the fourth runs, and then a new
    request does: no slot stays taken by a run that will never start."""
    _pack(home, {"limit": "name: limit\nresource_ref: pol.gate\npolicy_type: action.concurrency\n"
                          "parameters: {threshold: 1, action: delay}\n"})
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        gate = home / "gate"
        first, second, third, fourth = [await squall.executions.request("pol.gate", {"gate": str(gate), "tag": tag})
                                        for tag in ("one", "two", "three", "four")]
        await _status(squall, first["id"], {"running"})
        assert (await squall.executions.cancel(second["id"]))["status"] == "canceled"
        assert await squall.db(squall.store.update_execution, third["id"], {"status": "canceled"},
                               expect=("delayed",))  # as `squall execution cancel` in another process does
        gate.touch()
        assert (await squall.executions.wait(fourth["id"], timeout=20))["result"]["stdout"] == "four"
        fifth = await squall.executions.request("pol.gate", {"gate": str(gate), "tag": "five"})
        assert (await squall.executions.wait(fifth["id"], timeout=20))["status"] == "succeeded"
        assert {key: list(queue) for key, queue in squall.executor._queues.items() if queue} == {}
        assert not any(squall.executor._admitted.values())
    finally:
        await squall.close()


async def test_a_retry_waiting_out_its_delay_survives_a_restart(home: Path) -> None:
    """The retry is stored `delayed` when the failure is (not held in memory for the policy's delay):
    a restart during the delay runs it once that delay is over."""
    _pack(home, {"retry": "name: retry\nresource_ref: pol.flaky\npolicy_type: action.retry\n"
                          "parameters: {retry_on: failure, max_retry_count: 1, delay: 2}\n"})
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        record = await squall.executions.request("pol.flaky", {"marker": str(home / "count")})
        assert (await squall.executions.wait(record["id"], timeout=20))["status"] == "failed"
        while len(rows := await squall.executions.list(action="pol.flaky")) < 2:
            await asyncio.sleep(0.02)
        retry = next(r for r in rows if r["id"] != record["id"])
        assert retry["status"] == "delayed" and retry["runner_info"]["delayed_until"]
    finally:
        await squall.close()  # stopped during the delay
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        await squall.executions.recover()
        assert (await squall.executions.get(retry["id"]))["status"] == "delayed"  # its delay is not over yet
        done = await squall.executions.wait(retry["id"], timeout=20)
        assert done["status"] == "failed" and done["context"]["policies"]["retry"]["retry_count"] == 1
        assert (home / "count").read_text().strip() == "2"  # ran once more: the first run, then the retry
    finally:
        await squall.close()


def test_bad_policy_files_are_named(home: Path) -> None:
    from bot.app import Squall as _Squall  # noqa: F401  (policies load with the app)

    _pack(home, {"bad": "name: bad\nresource_ref: pol.gate\npolicy_type: action.concurrency\n"
                        "parameters: {action: delay}\n",
                 "kind": "name: kind\nresource_ref: pol.gate\npolicy_type: action.nope\n"})

    async def start() -> list[str]:
        squall = await Squall.start(load_config(home / "config.yml"))
        try:
            return [str(e) for e in squall.registry.errors]
        finally:
            await squall.close()

    errors = asyncio.run(start())
    assert any("policies/bad.yaml" in e and "'threshold'" in e for e in errors)
    assert any("policies/kind.yaml" in e and "unknown policy_type 'action.nope'" in e for e in errors)


async def test_a_noop_action_under_a_concurrency_policy_waits_for_a_claim(home: Path) -> None:
    """core.noop-like runs end in the call that stores them, which no policy sees: an action a
    concurrency policy may hold is submitted and claimed as any other (`PolicyExecutor.holds`)."""
    _pack(home, {"limit": "name: limit\nresource_ref: pol.instant\npolicy_type: action.concurrency\n"
                          "parameters: {threshold: 1, action: delay}\n"})
    write(home / "packs" / "pol" / "actions" / "instant.yaml", "name: instant\nrunner_type: noop\n")
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        with commit_groups(squall) as groups:
            held = await squall.executions.request("pol.instant")
            assert (await squall.executions.wait(held["id"], timeout=20))["status"] == "succeeded"
            free = await squall.executions.request("core.noop")
            assert (await squall.executions.wait(free["id"], timeout=20))["status"] == "succeeded"
        assert any("_claim" in group for group in groups[:-1])  # the held one: stored, then claimed
        assert groups[-1] == ["_store"]  # the free one: ended as it was stored
    finally:
        await squall.close()


class _EndDuringDelayMark:
    """The execution service's database, except that the first time a policy stores a request's
    `delayed` mark, `end` runs to its end first: the run holding the slot ends exactly while that
    mark is being stored, the interleaving that left the delayed run queued with nothing to admit it."""

    def __init__(self, db: Any, end: Callable[[], Awaitable[None]]) -> None:
        self._db, self._end, self.hit = db, end, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    async def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self.hit and fn == self._db.store.update_execution and args[1].get("status") == "delayed":
            self.hit = True
            await self._end()
        return await self._db(fn, *args, **kwargs)


async def test_a_run_that_ends_while_the_next_is_marked_delayed_admits_it(home: Path) -> None:
    _pack(home, {"limit": "name: limit\nresource_ref: pol.gate\npolicy_type: action.concurrency\n"
                          "parameters: {threshold: 1, action: delay}\n"})
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        gate = home / "gate"
        first = await squall.executions.request("pol.gate", {"gate": str(gate), "tag": "one"})
        await _status(squall, first["id"], {"running"})

        async def end_first() -> None:
            gate.touch()
            assert (await squall.executions.wait(first["id"], timeout=20))["status"] == "succeeded"

        hook = squall.executions.db = _EndDuringDelayMark(squall.executions.db, end_first)
        second = await squall.executions.request("pol.gate", {"gate": str(gate), "tag": "two"})
        assert hook.hit  # the first ended while the second's `delayed` was being stored
        done = await squall.executions.wait(second["id"], timeout=20)
        assert done["status"] == "succeeded" and done["result"]["stdout"] == "two"
        assert {key: list(queue) for key, queue in squall.executor._queues.items() if queue} == {}
        assert not any(squall.executor._admitted.values())
    finally:
        await squall.close()


_PER_TAG_AND_GLOBAL = {
    # File names sort the per-tag policy first: it was the only one applied.
    "a_per_tag": "name: per_tag\nresource_ref: pol.gate\npolicy_type: action.concurrency.attr\n"
                 "parameters: {threshold: 1, action: delay, attributes: [tag]}\n",
    "b_global": "name: global\nresource_ref: pol.gate\npolicy_type: action.concurrency\n"
                "parameters: {threshold: 2, action: delay}\n",
}


async def test_every_concurrency_policy_of_an_action_holds_its_runs(home: Path) -> None:
    """One run per tag and two in all: a run waits while any of its keys is full, and starts once
    all of them have room, in the order they were requested, each once."""
    _pack(home, _PER_TAG_AND_GLOBAL)
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        gates = {name: home / f"gate-{name}" for name in "abcd"}
        ids = {name: (await squall.executions.request("pol.gate", {"gate": str(gates[name]), "tag": tag}))["id"]
               for name, tag in zip("abcd", ("x", "x", "y", "z"), strict=True)}
        await _status(squall, ids["a"], {"running"})
        await _status(squall, ids["c"], {"running"})
        assert (await squall.executions.get(ids["b"]))["status"] == "delayed"  # tag x is taken
        assert (await squall.executions.get(ids["d"]))["status"] == "delayed"  # two run already
        gates["a"].touch()
        await _status(squall, ids["b"], {"running"})  # x is free, and one of two runs
        assert (await squall.executions.get(ids["d"]))["status"] == "delayed"  # b took the second slot
        gates["c"].touch()
        await _status(squall, ids["d"], {"running"})
        gates["b"].touch()
        gates["d"].touch()
        for name, execution_id in ids.items():
            done = await squall.executions.wait(execution_id, timeout=20)
            assert done["status"] == "succeeded", (name, done)
            assert [e["status"] for e in done["log"]].count("running") == 1
        assert {key: list(queue) for key, queue in squall.executor._queues.items() if queue} == {}
        assert not any(squall.executor._admitted.values())
    finally:
        await squall.close()


def _secret_gate(home: Path) -> None:
    write(home / "packs" / "pol" / "actions" / "vault.yaml", """
        name: vault
        runner_type: local-shell-cmd
        parameters:
          gate: {type: string}
          account: {type: string, secret: true}
          cmd: {default: "while [ ! -f {{gate}} ]; do sleep 0.02; done; echo done", immutable: true}
    """)


_PER_ACCOUNT = {"per_account": "name: per_account\nresource_ref: pol.vault\npolicy_type: action.concurrency.attr\n"
                               "parameters: {threshold: 1, action: cancel, attributes: [account]}\n"}


async def test_a_policy_keyed_on_a_secret_parameter_counts_each_value(home: Path) -> None:
    """The stored values of a secret are all the mask: the key is made of the real values, hashed."""
    _pack(home, _PER_ACCOUNT)
    _secret_gate(home)
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        gate = home / "gate"
        first, other, same = [await squall.executions.request("pol.vault", {"gate": str(gate), "account": account})
                              for account in ("acct-AAA", "acct-BBB", "acct-AAA")]
        canceled = await squall.executions.wait(same["id"], timeout=20)
        assert canceled["status"] == "canceled" and 'policy "pol.per_account"' in canceled["result"]["error"]
        assert "acct-" not in repr(dict(squall.executor._admitted))  # keys hold no secret
        gate.touch()
        assert (await squall.executions.wait(first["id"], timeout=20))["status"] == "succeeded"
        assert (await squall.executions.wait(other["id"], timeout=20))["status"] == "succeeded"
    finally:
        await squall.close()


def test_a_policy_for_an_action_that_does_not_exist_is_reported(home: Path, caplog: pytest.LogCaptureFixture
                                                                 ) -> None:
    _pack(home, {"ghost": "name: ghost\nresource_ref: pol.nope\npolicy_type: action.concurrency\n"
                          "parameters: {threshold: 1}\n"})

    async def start() -> list[str]:
        squall = await Squall.start(load_config(home / "config.yml"))
        try:
            return [str(e) for e in squall.registry.errors]
        finally:
            await squall.close()

    with caplog.at_level(logging.WARNING):
        errors = asyncio.run(start())
    reported = [e for e in errors if "policies/ghost.yaml" in e]
    assert len(reported) == 1 and '"pol.ghost"' in reported[0] and '"pol.nope"' in reported[0]
    assert "applies to nothing until" in reported[0]
    warned = [r.getMessage() for r in caplog.records
              if "policies/ghost.yaml" in r.getMessage() and "pol.nope" in r.getMessage()]
    assert len(warned) == 1 and "applies to nothing" in warned[0], warned  # logged once, with the load's problems


# -- where workers run the executions (the count is the database's) -------------------------------

class _Workers:
    """Stands in for `squall worker`s (`JobExecutor`): what the policies admit is handed on, and
    would run in another process."""

    shared = True
    closing = False
    running: set[str] = set()

    def __init__(self) -> None:
        self.handed: list[str] = []

    async def submit(self, execution_id: str) -> None:
        self.handed.append(execution_id)

    async def cancel(self, execution_id: str) -> bool:
        return False

    async def close(self) -> None:
        pass


async def _shared(home: Path, database_url: str) -> tuple[Squall, _Workers]:
    write(home / "config.yml", f"database:\n  url: {database_url}\npacks:\n  paths: [packs]\n"
                               "api:\n  enabled: false\n")
    squall = await Squall.start(load_config(home / "config.yml"))
    workers = squall.executor.inner = _Workers()
    return squall, workers


@pytest.mark.postgres
async def test_every_concurrency_policy_counts_where_workers_run(home: Path, postgres_url: str) -> None:
    _pack(home, _PER_TAG_AND_GLOBAL)
    squall, workers = await _shared(home, postgres_url)
    try:
        ids = {name: (await squall.executions.request("pol.gate", {"gate": "-", "tag": tag}))["id"]
               for name, tag in zip("abcd", ("x", "x", "y", "z"), strict=True)}

        async def statuses() -> dict[str, str]:
            return {name: (await squall.executions.get(i))["status"] for name, i in ids.items()}

        assert await statuses() == {"a": "scheduled", "b": "delayed", "c": "scheduled", "d": "delayed"}
        assert workers.handed == [ids["a"], ids["c"]]
        assert await squall.db(squall.store.update_execution, ids["a"], {"status": "succeeded"})  # a worker ended it
        for name in "bd":  # as the poll submits `delayed` ones again
            await squall.executor.submit(ids[name])
        assert await statuses() == {"a": "succeeded", "b": "scheduled", "c": "scheduled", "d": "delayed"}
        assert workers.handed == [ids["a"], ids["c"], ids["b"]]
    finally:
        await squall.close()


@pytest.mark.postgres
async def test_a_secret_key_counts_each_value_where_workers_run(home: Path, postgres_url: str) -> None:
    _pack(home, _PER_ACCOUNT)
    _secret_gate(home)
    squall, workers = await _shared(home, postgres_url)
    try:
        first, other, same = [await squall.executions.request("pol.vault", {"gate": "-", "account": account})
                              for account in ("acct-AAA", "acct-BBB", "acct-AAA")]
        assert (await squall.executions.get(first["id"]))["status"] == "scheduled"
        assert (await squall.executions.get(other["id"]))["status"] == "scheduled"
        canceled = await squall.executions.get(same["id"])
        assert canceled["status"] == "canceled" and 'policy "pol.per_account"' in canceled["result"]["error"]
        assert workers.handed == [first["id"], other["id"]]
    finally:
        await squall.close()


_ONE_AT_A_TIME = {"limit": "name: limit\nresource_ref: pol.gate\npolicy_type: action.concurrency\n"
                           "parameters: {threshold: 1, action: delay}\n"}


@pytest.mark.postgres
async def test_a_new_request_waits_behind_an_older_delayed_one_where_workers_run(home: Path,
                                                                                 postgres_url: str) -> None:
    """Threshold 1: a slot freed by a worker is the older delayed run's. A request made before the poll
    gets to it used to take the slot (requests ran out of order); it is delayed behind it now, and
    the poll admits them oldest first."""
    _pack(home, _ONE_AT_A_TIME)
    squall, workers = await _shared(home, postgres_url)
    try:
        first, older = [await squall.executions.request("pol.gate", {"gate": "-", "tag": tag}) for tag in "ab"]

        async def status(record: dict[str, Any]) -> str:
            return (await squall.executions.get(record["id"]))["status"]

        assert [await status(first), await status(older)] == ["scheduled", "delayed"]
        assert await squall.db(squall.store.update_execution, first["id"], {"status": "succeeded"})  # a worker ended it
        newer = await squall.executions.request("pol.gate", {"gate": "-", "tag": "c"})
        assert await status(newer) == "delayed"
        await squall.executor.submit(newer["id"])  # submitted again before the older one: it still waits
        assert await status(newer) == "delayed"
        await squall.executions.poll()
        assert [await status(older), await status(newer)] == ["scheduled", "delayed"]
        assert await squall.db(squall.store.update_execution, older["id"], {"status": "succeeded"})
        await squall.executions.poll()
        assert await status(newer) == "scheduled"
        assert list(dict.fromkeys(workers.handed)) == [first["id"], older["id"], newer["id"]]
    finally:
        await squall.close()


@pytest.mark.postgres
async def test_a_run_waiting_out_a_clock_holds_no_new_request_back_where_workers_run(home: Path,
                                                                                    postgres_url: str) -> None:
    """A `delayed` run held by a clock (a retry's or a task's delay) is no run waiting for a slot:
    a newer request takes the free slot at once instead of waiting out the other's delay."""
    _pack(home, _ONE_AT_A_TIME)
    squall, workers = await _shared(home, postgres_url)
    try:
        later = await squall.executions.request("pol.gate", {"gate": "-", "tag": "later"}, delay=300)
        now = await squall.executions.request("pol.gate", {"gate": "-", "tag": "now"})
        assert (await squall.executions.get(later["id"]))["status"] == "delayed"
        assert (await squall.executions.get(now["id"]))["status"] == "scheduled"
        assert workers.handed == [now["id"]]
    finally:
        await squall.close()


# -- a run admitted, then canceled or claimed elsewhere before its claim -----------------------------

class _BeforeTheClaim:
    """The execution service's database, except that before the first run's claim (right after a
    policy admitted it) `meddle(execution_id)` runs to its end: the claim then finds nothing to run."""

    def __init__(self, db: Any, claim: Callable[..., Any], meddle: Callable[[str], Awaitable[None]]) -> None:
        self._db, self._claim, self._meddle = db, claim, meddle
        self.claimed: asyncio.Future[Any] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    async def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await self._db(fn, *args, **kwargs)

    def submit_firm(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.claimed is not None or fn != self._claim:
            return self._db.submit_firm(fn, *args, **kwargs)

        async def meddled() -> Any:
            await self._meddle(args[0])
            return await self._db.submit_firm(fn, *args, **kwargs)

        self.claimed = asyncio.ensure_future(meddled())
        return self.claimed


def _meddle(squall: Squall, how: str) -> Callable[[str], Awaitable[None]]:
    """What lands between the admission and the claim: a cancel here (the API's), a cancel in another
    process (`squall execution cancel`: its end is not heard here), or another process's claim (a
    second `squall serve` on the database), which then runs the execution to its end there."""
    from engine.storage import iso, utcnow

    store = squall.store

    async def meddle(execution_id: str) -> None:
        if how == "canceled here":
            assert (await squall.executions.cancel(execution_id))["status"] == "canceled"
        elif how == "canceled elsewhere":
            assert await squall.db(store.update_execution, execution_id,
                                   {"status": "canceled", "end_timestamp": utcnow()}, expect=("requested",))
        else:
            elsewhere = {"hostname": "elsewhere", "pid": 1}
            log = [{"status": "running", "timestamp": iso(utcnow())}]
            assert await squall.db(store.claim_execution, execution_id,
                                   {"status": "running", "runner_info": elsewhere, "log": log}, ("requested",))

    return meddle


@pytest.mark.parametrize("how", ["canceled here", "canceled elsewhere", "claimed elsewhere"])
async def test_a_run_admitted_then_gone_before_its_claim_gives_its_place_up(home: Path, how: str) -> None:
    """Threshold 1: a run admitted and then canceled, or claimed by another process, before its claim
    finds nothing to run, and its run returns without an end heard here (unless canceled here). The
    next request of the action runs: its slot is not kept by a run that never starts."""
    _pack(home, {"limit": "name: limit\nresource_ref: pol.gate\npolicy_type: action.concurrency\n"
                          "parameters: {threshold: 1, action: delay}\n"})
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        gate = home / "gate"
        gate.touch()
        hook = squall.executions.db = _BeforeTheClaim(squall.executions.db, squall.executions._claim,
                                                      _meddle(squall, how))
        first = await squall.executions.request("pol.gate", {"gate": str(gate), "tag": "one"})
        while hook.claimed is None:  # the run's task starts on the loop's next turns
            await asyncio.sleep(0.01)
        assert await hook.claimed is None  # nothing left to claim
        assert (await squall.executions.get(first["id"]))["status"] == ("running" if how == "claimed elsewhere"
                                                                         else "canceled")
        second = await squall.executions.request("pol.gate", {"gate": str(gate), "tag": "two"})
        assert (await squall.executions.get(second["id"]))["status"] != "delayed"
        done = await squall.executions.wait(second["id"], timeout=20)
        assert done["status"] == "succeeded" and done["result"]["stdout"] == "two"
        assert not any(squall.executor._admitted.values())
    finally:
        await squall.close()


@pytest.mark.parametrize("how", ["canceled elsewhere", "claimed elsewhere"])
async def test_a_run_delayed_behind_one_gone_before_its_claim_starts_when_that_run_returns(home: Path,
                                                                                          how: str) -> None:
    """Threshold 1: a second run is delayed behind the first, which is then canceled or claimed in
    another process before its claim. When the first's run returns having claimed nothing, the second
    starts: no third request is needed to notice the slot is free."""
    _pack(home, {"limit": "name: limit\nresource_ref: pol.gate\npolicy_type: action.concurrency\n"
                          "parameters: {threshold: 1, action: delay}\n"})
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        gate = home / "gate"
        gate.touch()
        meddle = _meddle(squall, how)
        second: dict[str, Any] = {}

        async def delay_one_then_meddle(execution_id: str) -> None:
            second.update(await squall.executions.request("pol.gate", {"gate": str(gate), "tag": "two"}))
            assert (await squall.executions.get(second["id"]))["status"] == "delayed"
            await meddle(execution_id)

        hook = squall.executions.db = _BeforeTheClaim(squall.executions.db, squall.executions._claim,
                                                      delay_one_then_meddle)
        await squall.executions.request("pol.gate", {"gate": str(gate), "tag": "one"})
        while hook.claimed is None:
            await asyncio.sleep(0.01)
        assert await hook.claimed is None  # nothing left to claim
        done = await squall.executions.wait(second["id"], timeout=20)
        assert done["status"] == "succeeded" and done["result"]["stdout"] == "two"
        assert not any(squall.executor._admitted.values())
    finally:
        await squall.close()


async def test_a_queued_run_another_process_claimed_gives_its_place_up_when_its_turn_comes(home: Path) -> None:
    """Threshold 1: the second run waits `delayed`; another process (a second `squall serve`'s recovery)
    claims and runs it. When the first run ends here, the second is not run here and its end is never
    heard here: its slot must not stay taken, or a third run would wait `delayed` until a restart."""
    from engine.storage import iso, utcnow

    _pack(home, {"limit": "name: limit\nresource_ref: pol.gate\npolicy_type: action.concurrency\n"
                          "parameters: {threshold: 1, action: delay}\n"})
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        first_gate, gate = home / "first", home / "gate"
        gate.touch()
        first = await squall.executions.request("pol.gate", {"gate": str(first_gate), "tag": "one"})
        await _status(squall, first["id"], {"running"})
        second = await squall.executions.request("pol.gate", {"gate": str(gate), "tag": "two"})
        assert (await squall.executions.get(second["id"]))["status"] == "delayed"
        elsewhere = {"hostname": "elsewhere", "pid": 1}
        assert await squall.db(squall.store.update_execution, second["id"],
                               {"status": "running", "runner_info": elsewhere,
                                "log": [{"status": "running", "timestamp": iso(utcnow())}]}, expect=("delayed",))
        first_gate.touch()
        assert (await squall.executions.wait(first["id"], timeout=20))["status"] == "succeeded"
        third = await squall.executions.request("pol.gate", {"gate": str(gate), "tag": "three"})
        done = await squall.executions.wait(third["id"], timeout=20)
        assert done["status"] == "succeeded" and done["result"]["stdout"] == "three"
        assert (await squall.executions.get(second["id"]))["status"] == "running"  # still the other process's
    finally:
        await squall.close()


async def test_a_held_run_whose_sealed_values_cannot_be_read_fails_saying_why(home: Path) -> None:
    """An `.attr` policy on a secret parameter unseals it to count it. A run stored sealed under a key the
    key file no longer holds (the file lost and made anew) fails at its claim saying why, as without a
    policy: the error does not escape the policy (it stopped `recover`, and with it `squall serve`'s start)."""
    from engine.crypto import KeyRing

    _pack(home, {"per_token": "name: per_token\nresource_ref: pol.vault\npolicy_type: action.concurrency.attr\n"
                              "parameters: {threshold: 1, action: delay, attributes: [token]}\n"})
    write(home / "packs" / "pol" / "actions" / "vault.yaml", """
        name: vault
        runner_type: local-shell-cmd
        parameters:
          token: {type: string, secret: true}
          cmd: {default: "echo ok", immutable: true}
    """)
    config = load_config(home / "config.yml")
    squall = await Squall.start(config)
    squall.executions.executor = None  # stored only, as `squall run --async` does
    record = await squall.executions.request("pol.vault", {"token": "s3cr3t-value"})
    await squall.close()
    config.encryption_key_path.unlink()
    KeyRing(config.encryption_key_path).encrypt("x")  # a fresh key file

    squall = await Squall.start(config, recover=True)
    try:
        failed = await squall.executions.wait(record["id"], timeout=20)
        assert failed["status"] == "failed" and "sealed under key" in failed["result"]["error"], failed
    finally:
        await squall.close()


# -- a policy edited, disabled or removed while runs wait on it (packs reloaded, as serve's watcher does) ---

def _limit(threshold: int, *, name: str = "limit", enabled: bool = True) -> str:
    return (f"name: {name}\nresource_ref: pol.gate\npolicy_type: action.concurrency\n"
            + ("" if enabled else "enabled: false\n") + f"parameters: {{threshold: {threshold}, action: delay}}\n")


async def _edit_limit(squall: Squall, home: Path, text: str | None) -> None:
    """Write (or, with None, remove) `pol.gate`'s policy file and reload the packs, as serve does on a change."""
    path = home / "packs" / "pol" / "policies" / "limit.yaml"
    if text is None:
        path.unlink()
    else:
        write(path, text)
    await squall.reload_packs()


async def _reaches(squall: Squall, execution_id: str, wanted: set[str]) -> dict:
    """`_status`, failing (not hanging) when the execution never gets there."""
    return await asyncio.wait_for(_status(squall, execution_id, wanted), timeout=20)


async def _gated(squall: Squall, home: Path, names: str) -> tuple[dict[str, str], dict[str, Path]]:
    """One `pol.gate` request per letter of `names`, each waiting on a gate file of its own, requested in order."""
    gates = {name: home / f"gate-{name}" for name in names}
    ids = {name: (await squall.executions.request("pol.gate", {"gate": str(gates[name]), "tag": name}))["id"]
           for name in names}
    return ids, gates


@pytest.mark.parametrize("how", ["disabled", "removed"])
async def test_runs_waiting_on_a_policy_run_once_it_is_disabled_or_removed(home: Path, how: str) -> None:
    """Threshold 0: three runs wait `delayed`. The policy is turned off (`enabled: false`) or its file
    deleted and the packs reloaded: nothing holds them any more, and all three start, not only the
    requests made after the reload."""
    _pack(home, {"limit": _limit(0)})
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        ids, gates = await _gated(squall, home, "abc")
        for execution_id in ids.values():
            assert (await squall.executions.get(execution_id))["status"] == "delayed"
        await _edit_limit(squall, home, _limit(0, enabled=False) if how == "disabled" else None)
        for execution_id in ids.values():
            await _reaches(squall, execution_id, {"running"})
        for gate in gates.values():
            gate.touch()
        for execution_id in ids.values():
            assert (await squall.executions.wait(execution_id, timeout=20))["status"] == "succeeded"
        assert {key: list(queue) for key, queue in squall.executor._queues.items() if queue} == {}
        assert not any(squall.executor._admitted.values())
    finally:
        await squall.close()


async def test_runs_waiting_on_a_policy_follow_its_new_threshold_in_the_order_they_were_delayed(home: Path
                                                                                                ) -> None:
    """Threshold 1: `a` runs, `b`, `c` and `d` wait. Raised to 3: `b` and `c` start at once, `d` still
    waits, and a request made after the reload (`e`) waits behind `d`; when `a` ends, `d` takes its
    slot, not `e`."""
    _pack(home, {"limit": _limit(1)})
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        ids, gates = await _gated(squall, home, "abcd")
        await _reaches(squall, ids["a"], {"running"})
        await _edit_limit(squall, home, _limit(3))
        await _reaches(squall, ids["b"], {"running"})
        await _reaches(squall, ids["c"], {"running"})
        assert (await squall.executions.get(ids["d"]))["status"] == "delayed"  # three run: a, b and c
        later, later_gates = await _gated(squall, home, "e")
        assert (await squall.executions.get(later["e"]))["status"] == "delayed"  # behind d, not beside it
        gates["a"].touch()
        await _reaches(squall, ids["d"], {"running"})
        assert (await squall.executions.get(later["e"]))["status"] == "delayed"
        for gate in [*gates.values(), *later_gates.values()]:
            gate.touch()
        for execution_id in [*ids.values(), *later.values()]:
            assert (await squall.executions.wait(execution_id, timeout=20))["status"] == "succeeded"
    finally:
        await squall.close()


async def test_a_renamed_policy_counts_the_runs_admitted_under_its_old_name(home: Path) -> None:
    """Threshold 1: `a` runs, `b` waits. The policy is renamed (its ref, part of its key, changes): `a`
    still holds the one slot, so `b` keeps waiting and a new request `c` waits behind it (it ran at
    once beside `a`)."""
    _pack(home, {"limit": _limit(1)})
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        ids, gates = await _gated(squall, home, "ab")
        await _reaches(squall, ids["a"], {"running"})
        await _edit_limit(squall, home, _limit(1, name="one_at_a_time"))
        later, later_gates = await _gated(squall, home, "c")
        assert (await squall.executions.get(later["c"]))["status"] == "delayed"
        assert (await squall.executions.get(ids["b"]))["status"] == "delayed"
        gates["a"].touch()
        await _reaches(squall, ids["b"], {"running"})
        assert (await squall.executions.get(later["c"]))["status"] == "delayed"
        gates["b"].touch()
        later_gates["c"].touch()
        done = await squall.executions.wait(later["c"], timeout=20)
        assert done["status"] == "succeeded" and done["log"][1]["status"] == "delayed"
    finally:
        await squall.close()


async def test_a_policy_added_while_runs_run_counts_them(home: Path) -> None:
    """No policy: `a` runs. A threshold-1 policy is added and the packs reloaded: `a` holds its slot,
    so a new request `b` waits until `a` ends (it ran at once, two runs under a policy of one)."""
    _pack(home, {})
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        ids, gates = await _gated(squall, home, "a")
        await _reaches(squall, ids["a"], {"running"})
        await _edit_limit(squall, home, _limit(1))
        later, later_gates = await _gated(squall, home, "b")
        assert (await squall.executions.get(later["b"]))["status"] == "delayed"
        later_gates["b"].touch()
        gates["a"].touch()
        done = await squall.executions.wait(later["b"], timeout=20)
        assert done["status"] == "succeeded"
        first = await squall.executions.get(ids["a"])
        assert first["end_timestamp"] <= done["log"][2]["timestamp"]  # admitted only after `a` ended
        assert not any(squall.executor._admitted.values())
    finally:
        await squall.close()


@pytest.mark.postgres
@pytest.mark.parametrize("how", ["disabled", "removed"])
async def test_a_run_waiting_on_a_policy_since_disabled_or_removed_is_admitted_where_workers_run(
        home: Path, postgres_url: str, how: str) -> None:
    """Threshold 1 where workers run: `older` waits `delayed` behind `first`. The policy is disabled (no
    policy left at all) or its file removed (a retry policy of another action left): the poll admits
    `older` (to `scheduled`, handed to the workers), where it stayed `delayed` for ever."""
    retry = "name: retry\nresource_ref: pol.flaky\npolicy_type: action.retry\nparameters: {retry_on: failure}\n"
    _pack(home, {**_ONE_AT_A_TIME, "retry": retry} if how == "removed" else _ONE_AT_A_TIME)
    squall, workers = await _shared(home, postgres_url)
    try:
        first, older = [await squall.executions.request("pol.gate", {"gate": "-", "tag": tag}) for tag in "ab"]
        assert (await squall.executions.get(older["id"]))["status"] == "delayed"
        await _edit_limit(squall, home, _limit(1, enabled=False) if how == "disabled" else None)
        await squall.executions.poll()
        assert (await squall.executions.get(older["id"]))["status"] == "scheduled"
        assert list(dict.fromkeys(workers.handed)) == [first["id"], older["id"]]
    finally:
        await squall.close()


# -- workflows under a concurrency policy across a crash ---------------------------------------------

def _flow(home: Path) -> None:
    """`pol.flow`: a workflow of two `pol.gate` tasks, `wait` and `more` (each runs until its gate file
    exists: the `gate` given, then that name with `.more`), held to two at once by policy."""
    _pack(home, {"flows": "name: flows\nresource_ref: pol.flow\npolicy_type: action.concurrency\n"
                          "parameters: {threshold: 2, action: delay}\n"})
    actions = home / "packs" / "pol" / "actions"
    write(actions / "flow.yaml", "name: flow\nrunner_type: orquesta\nentry_point: workflows/flow.yaml\n"
                                 "parameters:\n  gate: {type: string}\n  tag: {type: string}\n")
    write(actions / "workflows" / "flow.yaml", """
        version: 1.0
        input: [gate, tag]
        tasks:
          wait:
            action: pol.gate gate=<% ctx(gate) %> tag=<% ctx(tag) %>
            next: [{when: <% succeeded() %>, do: more}]
          more:
            action: pol.gate gate="<% ctx(gate) %>.more" tag=<% ctx(tag) %>
    """)


def _open(gate: Path) -> None:
    """Let both tasks of a `pol.flow` run through."""
    gate.touch()
    Path(f"{gate}.more").touch()


def _most_at_once(records: list[dict[str, Any]]) -> int:
    """The most of `records` that ran at once, from their logs: each runs from its first `running` or
    `resuming` to its end."""
    edges = []
    for record in records:
        entries = record["log"]
        began = next(e["timestamp"] for e in entries if e["status"] in ("running", "resuming"))
        edges += [(began, 1), (next(e["timestamp"] for e in entries if e["status"] in COMPLETED), -1)]
    now = most = 0
    for _at, step in sorted(edges):  # at one instant an end sorts before a start: it freed the slot first
        now += step
        most = max(most, now)
    return most


@pytest.mark.parametrize("older", ["the running ones", "the delayed ones", "none delayed"])
async def test_workflows_a_crash_left_running_hold_their_slots_after_the_restart(home: Path, older: str) -> None:
    """Threshold 2 on a workflow: two ran and two waited `delayed` when the process died (or, `none
    delayed`, two more are requested after the restart). Recovery conducts the two on (`resuming`) and
    submits the delayed ones, in the order they were requested: whichever comes first, the two it
    conducts on hold both slots, and the others start only as they end. Four ran at once: the ones it
    conducted on took no slot, and the delayed ones were admitted against an empty count."""
    _flow(home)
    config = load_config(home / "config.yml")
    gates = {tag: home / f"gate-{tag}" for tag in "abcd"}
    crashed = await Squall.start(config)
    crashed.executions.executor = None  # stored only: the rows are made what the crash left below
    try:
        ids = {tag: (await crashed.executions.request("pol.flow", {"gate": str(gates[tag]), "tag": tag}))["id"]
               for tag in ("abcd" if older != "none delayed" else "ab")}
    finally:
        await crashed.close()
    ran, waited = ("ab", "cd") if older != "the delayed ones" else ("cd", "ab")
    store = Store.open(config.database_url)
    try:
        dead = {"hostname": socket.gethostname(), "pid": _dead_pid()}
        for tag in ids:
            record = store.get_execution(ids[tag])
            status = "running" if tag in ran else "delayed"
            changes = {"status": status, "log": [*record["log"], {"status": status, "timestamp": iso(utcnow())}]}
            assert store.update_execution(ids[tag], {**changes, "runner_info": dead} if tag in ran else changes,
                                          expect=("requested",))
    finally:
        store.close()

    squall = await Squall.start(config, recover=True)
    try:
        if older == "none delayed":
            ids.update({tag: (await squall.executions.request("pol.flow", {"gate": str(gates[tag]), "tag": tag}))[
                "id"] for tag in waited})

        async def flows() -> dict[str, str]:
            return {tag: (await squall.executions.get(ids[tag]))["status"] for tag in ids}

        async def gated() -> int:
            return len([r for r in await squall.executions.list(action="pol.gate") if r["status"] == "running"])

        async def two_gated() -> bool:
            return await gated() >= 2

        await until(two_gated, "two workflows' tasks to run")
        await asyncio.sleep(0.3)  # what else was let start has claimed by now
        statuses = await flows()
        assert sorted(statuses[tag] for tag in waited) == ["delayed", "delayed"], statuses
        assert await gated() == 2
        for tag in (*ran, *waited):
            _open(gates[tag])
            assert (await squall.executions.wait(ids[tag], timeout=30))["status"] == "succeeded"
        records = [await squall.executions.get(ids[tag]) for tag in ids]
        assert _most_at_once(records) <= 2, [r["log"] for r in records]
        assert not any(squall.executor._admitted.values())
    finally:
        await squall.close()


async def test_a_workflow_a_crash_left_that_another_process_took_on_gives_its_slot_back(home: Path) -> None:
    """Threshold 2: `a` and `b` waited `delayed`, `c` and `d` ran when the process died. Another process
    (a second `squall serve` starting too) marks `d` to be conducted on (`resuming`) before this one's
    recovery gets to it: both count, but this recovery leaves `d` to the other, whose end will not be
    heard here, so at its end the slot of `d` is given back and `a` runs beside `c`. It stayed taken,
    `a` waiting on a run of another process."""
    _flow(home)
    config = load_config(home / "config.yml")
    gates = {tag: home / f"gate-{tag}" for tag in "abcd"}
    crashed = await Squall.start(config)
    crashed.executions.executor = None
    try:
        ids = {tag: (await crashed.executions.request("pol.flow", {"gate": str(gates[tag]), "tag": tag}))["id"]
               for tag in "abcd"}
    finally:
        await crashed.close()
    store = Store.open(config.database_url)
    dead = {"hostname": socket.gethostname(), "pid": _dead_pid()}
    try:
        for tag in ids:
            record = store.get_execution(ids[tag])
            status = "delayed" if tag in "ab" else "running"
            changes = {"status": status, "log": [*record["log"], {"status": status, "timestamp": iso(utcnow())}]}
            assert store.update_execution(ids[tag], changes if tag in "ab" else {**changes, "runner_info": dead},
                                          expect=("requested",))
    finally:
        store.close()
    squall = await Squall.start(config)
    try:
        end_orphaned = squall.executions._end_orphaned

        async def taken_on_elsewhere_first(row: Any) -> str | None:
            if row["id"] == ids["d"]:  # as `_end_orphaned` marks it, in the other process
                record = await squall.executions.get(ids["d"])
                assert await squall.db(squall.store.update_execution, ids["d"], {"status": "resuming", "log": [
                    *record["log"], {"status": "resuming", "timestamp": iso(utcnow())}]}, expect=("running",))
            return await end_orphaned(row)

        squall.executions._end_orphaned = taken_on_elsewhere_first  # type: ignore[method-assign]
        await squall.executions.recover()
        await _reaches(squall, ids["a"], {"running"})
        assert (await squall.executions.get(ids["c"]))["status"] == "running"
        assert (await squall.executions.get(ids["b"]))["status"] == "delayed"
        for tag in "cab":
            _open(gates[tag])
            assert (await squall.executions.wait(ids[tag], timeout=30))["status"] == "succeeded"
        assert (await squall.executions.get(ids["d"]))["status"] == "resuming"  # the other process's to conduct
    finally:
        await squall.close()



async def test_a_resumed_workflow_holds_its_slot(home: Path) -> None:
    """Threshold 2: `a` and `b` run; `a` pauses (it holds no slot while paused) and `c` takes the slot.
    `a` resumed runs again, and counts: `d` waits `delayed` though `b` ended, until `a` ends too. It
    took no slot, and `d` ran beside `a` and `c`."""
    _flow(home)
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        gates = {tag: home / f"gate-{tag}" for tag in "abcd"}

        async def flow(tag: str) -> str:
            return (await squall.executions.request("pol.flow", {"gate": str(gates[tag]), "tag": tag}))["id"]

        a, b = await flow("a"), await flow("b")
        await _reaches(squall, b, {"running"})
        await squall.executions.pause(a)
        gates["a"].touch()  # its running task ends: then it pauses
        await _reaches(squall, a, {"paused"})
        c = await flow("c")
        await _reaches(squall, c, {"running"})
        await squall.executions.resume(a)
        await _reaches(squall, a, {"running"})
        d = await flow("d")
        assert (await squall.executions.get(d))["status"] == "delayed"
        _open(gates["b"])
        assert (await squall.executions.wait(b, timeout=20))["status"] == "succeeded"
        await asyncio.sleep(0.3)  # what the end of `b` let start has claimed by now
        assert (await squall.executions.get(d))["status"] == "delayed"  # `a` and `c` run
        _open(gates["a"])
        await _reaches(squall, d, {"running"})
        for tag in "cd":
            _open(gates[tag])
        for execution_id in (a, c, d):
            assert (await squall.executions.wait(execution_id, timeout=20))["status"] == "succeeded"
        assert not any(squall.executor._admitted.values())
    finally:
        await squall.close()
