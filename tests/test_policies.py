"""Policies: concurrency with delay and cancel, retry; bad policy files named at load."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.app import Squall
from engine.config import load_config
from tests.conftest import commit_groups, write


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
        assert groups[-1] == ["_prepare"]  # the free one: ended as it was stored
    finally:
        await squall.close()
