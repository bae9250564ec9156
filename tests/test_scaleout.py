"""Scale-out (`executor.kind: procrastinate`): `squall worker` processes on the suite's real
PostgreSQL run what the CLI and `squall serve` queue, by queue; a killed worker's executions are
reaped; cancels reach the worker running the execution; SIGTERM drains; workflows conduct in steps
on any worker, each task on a worker of its own queue."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from engine.config import ConfigError, load_config
from engine.jobs import STALLED_SECONDS
from engine.storage import Store, as_utc, iso, utcnow
from tests.conftest import write
from tests.fake_mattermost import BOT_TOKEN, FakeMattermost
from tests.pgcluster import free_port
from tests.test_cli import SQUALL

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
SCRAPE_KEY = "scrape-key-for-the-worker-metrics"

SLOW_FLOW = """
version: 1.0
input: [marker, seconds]
tasks:
  first:
    action: demo.nap seconds=<% ctx(seconds) %> marker=<% ctx(marker) %>
    next:
      - when: <% succeeded() %>
        do: second
  second:
    action: demo.hello who="second"
output:
  - said: <% task(second).result.stdout %>
"""

FLOW = """
version: 1.0
tasks:
  one:
    action: demo.hello who="one"
    next:
      - when: <% succeeded() %>
        publish:
          - said: <% result().stdout %>
        do: two
  two:
    action: demo.hello who="two"
output:
  - said: <% ctx(said) %>
"""


ZONED_FLOW = """
version: 1.0
tasks:
  local:
    action: demo.hello who="here"
    next:
      - when: <% succeeded() %>
        do: remote
  remote:
    action: zone.where
    next:
      - when: <% succeeded() %>
        do: back
  back:
    action: demo.hello who="back"
output:
  - said: <% task(remote).result.stdout %>
"""


MISTRAL_PAUSE = """
version: '2.0'
demo.mistral_pause:
  tasks:
    first:
      action: demo.hello who=first
      on-success:
        - second
    second:
      pause-before: true
      action: demo.hello who=second
      publish:
        got: <% task(second).result.stdout %>
  output:
    got: <% $.got %>
"""


def _home(home: Path, database_url: str) -> Path:
    write(home / "config.yml", f"""
        database:
          url: {database_url}
        packs:
          paths: [packs]
        executor:
          kind: procrastinate
          queues: {{zone: zone-a}}
          unserved_after: 2
        api:
          enabled: false
          keys: [{SCRAPE_KEY}]
        adapters:
          console:
            enabled: false
    """)
    write(home / "packs" / "demo" / "pack.yaml", "ref: demo\nname: demo\nversion: 1.0.0\n")
    write(home / "packs" / "demo" / "actions" / "hello.yaml", """
        name: hello
        runner_type: local-shell-cmd
        parameters:
          who: {type: string, required: true}
          cmd: {default: "echo hello {{ who }}", immutable: true}
    """)
    write(home / "packs" / "demo" / "actions" / "nap.yaml", """
        name: nap
        runner_type: local-shell-cmd
        parameters:
          seconds: {type: integer, default: 30}
          marker: {type: string, required: true}
          cmd: {default: "sleep {{ seconds }} && echo ran >> {{ marker }}", immutable: true}
    """)
    write(home / "packs" / "demo" / "actions" / "flow.yaml", """
        name: flow
        runner_type: orquesta
        entry_point: workflows/flow.yaml
    """)
    write(home / "packs" / "demo" / "actions" / "workflows" / "flow.yaml", FLOW)
    write(home / "packs" / "demo" / "actions" / "slow_flow.yaml", """
        name: slow_flow
        runner_type: orquesta
        entry_point: workflows/slow_flow.yaml
        parameters:
          marker: {type: string, required: true}
          seconds: {type: integer, default: 4}
    """)
    write(home / "packs" / "demo" / "actions" / "workflows" / "slow_flow.yaml", SLOW_FLOW)
    write(home / "packs" / "demo" / "actions" / "zoned_flow.yaml", """
        name: zoned_flow
        runner_type: orquesta
        entry_point: workflows/zoned_flow.yaml
    """)
    write(home / "packs" / "demo" / "actions" / "workflows" / "zoned_flow.yaml", ZONED_FLOW)
    write(home / "packs" / "demo" / "actions" / "mistral_pause.yaml", """
        name: mistral_pause
        runner_type: mistral-v2
        entry_point: workflows/mistral_pause.yaml
    """)
    write(home / "packs" / "demo" / "actions" / "workflows" / "mistral_pause.yaml", MISTRAL_PAUSE)
    write(home / "packs" / "demo" / "aliases" / "greet.yaml", """
        name: greet
        action_ref: demo.hello
        formats: ["greet {{ who }}"]
    """)
    write(home / "packs" / "demo" / "aliases" / "nap.yaml", """
        name: nap
        action_ref: demo.nap
        formats: ["nap {{ marker }}"]
    """)
    write(home / "packs" / "zone" / "pack.yaml", "ref: zone\nname: zone\nversion: 1.0.0\n")
    write(home / "packs" / "zone" / "actions" / "where.yaml", """
        name: where
        runner_type: local-shell-cmd
        parameters:
          cmd: {default: "echo zone", immutable: true}
    """)
    return home


def _workflow(home: Path, postgres_url: str, name: str, runner: str, text: str) -> Any:
    """`_home`'s config with one more workflow action, `demo.<name>`, whose definition is `text`."""
    _home(home, postgres_url)
    write(home / "packs" / "demo" / "actions" / f"{name}.yaml",
          f"name: {name}\nrunner_type: {runner}\nentry_point: workflows/{name}.yaml\n")
    write(home / "packs" / "demo" / "actions" / "workflows" / f"{name}.yaml", text)
    return load_config(home / "config.yml")


class Cluster:
    """`squall worker` processes on one home, and the CLI against it."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.workers: list[subprocess.Popen[str]] = []
        self.store = Store.open(load_config(home / "config.yml").database_url)

    def cli(self, *args: str, as_json: bool = True) -> Any:
        done = subprocess.run([str(SQUALL), "-c", str(self.home / "config.yml"), *args,
                               *(["--json"] if as_json else [])], cwd=self.home, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout) if as_json else done.stdout

    def request(self, ref: str, *assignments: str) -> str:
        return self.cli("run", ref, *assignments, "--async")["id"]

    def worker(self, *args: str) -> subprocess.Popen[str]:
        return self.start("worker", *args)

    def serve(self) -> subprocess.Popen[str]:
        """A `squall serve` (no API, no chat): it re-submits what policies delayed and reaps."""
        return self.start("serve")

    def start(self, *argv: str) -> subprocess.Popen[str]:
        process = subprocess.Popen([str(SQUALL), "-c", str(self.home / "config.yml"), *argv],
                                   cwd=self.home, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.workers.append(process)
        return process

    def execution(self, execution_id: str) -> dict[str, Any]:
        record = self.store.get_execution(execution_id)
        assert record is not None
        return record

    def wait(self, execution_id: str, *statuses: str, seconds: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            record = self.execution(execution_id)
            if record["status"] in statuses:
                return record
            time.sleep(0.1)
        raise AssertionError(f"{execution_id} is {record['status']}, not {statuses}: {self._logs()}")

    def _logs(self) -> str:
        for process in self.workers:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        return "\n".join((p.stdout.read() if p.stdout else "") for p in self.workers)

    def close(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        self.store.close()


@pytest.fixture
def cluster(home: Path, postgres_url: str) -> Iterator[Cluster]:
    group = Cluster(_home(home, postgres_url))
    try:
        yield group
    finally:
        group.close()


def test_procrastinate_needs_postgresql(tmp_path: Path) -> None:
    write(tmp_path / "config.yml", "database:\n  url: sqlite:///data/squall.db\nexecutor:\n  kind: procrastinate\n")
    with pytest.raises(ConfigError, match=r"executor.kind: procrastinate' needs PostgreSQL"):
        load_config(tmp_path / "config.yml")
    write(tmp_path / "config.yml", "executor:\n  kind: celery\n")
    with pytest.raises(ConfigError, match=r"'executor.kind' must be one of local, procrastinate"):
        load_config(tmp_path / "config.yml")


def test_requests_wait_for_a_worker_of_their_queue(cluster: Cluster) -> None:
    first = cluster.request("demo.hello", "who=early")
    zoned = cluster.request("zone.where")
    time.sleep(1.5)
    assert cluster.execution(first)["status"] == "requested"  # nobody runs anything without a worker
    default = cluster.worker("--queues", "default", "--concurrency", "2")
    assert cluster.wait(first, "succeeded")["result"]["stdout"] == "hello early"
    assert cluster.execution(first)["runner_info"]["worker"].endswith(f":{default.pid}")
    time.sleep(1.5)
    assert cluster.execution(zoned)["status"] == "requested"  # no worker serves zone-a yet
    shown = subprocess.run([str(SQUALL), "-c", str(cluster.home / "config.yml"), "execution", "get", zoned],
                           cwd=cluster.home, capture_output=True, text=True, timeout=60)
    assert "for a squall worker of queue 'zone-a'" in shown.stdout and "--queues zone-a" in shown.stdout
    zone = cluster.worker("--queues", "zone-a")
    done = cluster.wait(zoned, "succeeded")
    assert done["runner_info"]["worker"].endswith(f":{zone.pid}") and done["result"]["stdout"] == "zone"
    # A CLI run that waits is run by a worker too, and a workflow is conducted on one.
    assert cluster.cli("run", "demo.hello", "who=waited")["result"]["stdout"] == "hello waited"
    flow = cluster.request("demo.flow")
    assert cluster.wait(flow, "succeeded", "failed")["result"]["output"] == {"said": "hello one"}


def test_cancel_reaches_the_worker_running_it(cluster: Cluster, tmp_path: Path) -> None:
    cluster.worker()
    marker = tmp_path / "napped"
    # A nap the cancel's CLI (a process start and its imports) reaches in time on a busy machine: it took over
    # 5 s in a CI run beside other work.
    napping = cluster.request("demo.nap", f"marker={marker}", "seconds=20")
    started = time.monotonic()
    cluster.wait(napping, "running")
    cluster.cli("execution", "cancel", napping)
    done = cluster.wait(napping, "canceled")
    assert done["result"]["error"] == "canceled by request"
    time.sleep(max(0.0, started + 21 - time.monotonic()))
    assert not marker.exists()  # the action's process was stopped, not left to finish


def test_a_killed_workers_execution_is_abandoned_by_another(cluster: Cluster, tmp_path: Path) -> None:
    doomed = cluster.worker()
    marker = tmp_path / "never"
    napping = cluster.request("demo.nap", f"marker={marker}", "seconds=120")
    assert cluster.wait(napping, "running")["runner_info"]["worker"].endswith(f":{doomed.pid}")
    os.killpg(doomed.pid, signal.SIGKILL)
    killed = time.monotonic()
    cluster.worker()
    done = cluster.wait(napping, "abandoned", seconds=STALLED_SECONDS + 30)
    assert time.monotonic() - killed <= 30 + 5  # within the issue's 30 s (5 s of slack for a busy machine)
    assert "stopped answering" in done["result"]["error"]
    after = cluster.request("demo.hello", "who=after")
    assert cluster.wait(after, "succeeded")["result"]["stdout"] == "hello after"


def test_sigterm_lets_running_actions_finish(cluster: Cluster, tmp_path: Path) -> None:
    port = free_port()
    worker = cluster.worker("--queues", "default,zone-a", "--health-port", str(port))
    marker = tmp_path / "finished"
    napping = cluster.request("demo.nap", f"marker={marker}", "seconds=4")
    cluster.wait(napping, "running")
    health = _healthz(port)
    assert health["status"] == "ok" and health["worker"].endswith(f":{worker.pid}")
    assert health["queues"] == ["default", "zone-a"] and health["running"] == [napping]
    with pytest.raises(urllib.error.HTTPError) as keyless:  # behind the API's keys, as on serve
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert keyless.value.code == 401
    scrape = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"St2-Api-Key": SCRAPE_KEY})
    with urllib.request.urlopen(scrape, timeout=10) as response:
        scraped = response.read().decode()
    assert 'squall_executions_started_total{action="demo.nap",pack="demo",source="cli"} 1.0' in scraped
    assert 'squall_executions{state="running"} 1.0' in scraped
    os.killpg(worker.pid, signal.SIGTERM)
    with pytest.raises(urllib.error.HTTPError) as stopping:  # draining: probes see it
        _healthz(port)
    assert stopping.value.code == 503 and json.loads(stopping.value.read())["status"] == "stopping"
    assert worker.wait(timeout=60) == 0
    assert cluster.execution(napping)["status"] == "succeeded" and marker.exists()


def test_sigterm_drains_for_executor_shutdown_grace_unless_drain_is_given(cluster: Cluster,
                                                                        tmp_path: Path) -> None:
    """`executor.shutdown_grace` is how long a stopped `squall serve` lets running actions finish; a worker
    ignored it and drained for `--drain` only, 600 s unless given, so one config did not set it for every
    node. Now a worker without `--drain` drains for the key's seconds, as serve does; `--drain` still wins."""
    config = cluster.home / "config.yml"
    config.write_text(config.read_text().replace("  kind: procrastinate\n", "  kind: procrastinate\n"
                                                 "  shutdown_grace: 1\n"))
    worker = cluster.worker()
    napping = cluster.request("demo.nap", f"marker={tmp_path / 'never'}", "seconds=60")
    cluster.wait(napping, "running")
    os.killpg(worker.pid, signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert cluster.execution(napping)["status"] == "abandoned"
    assert "its drain (1 s) ran out" in (worker.stdout.read() if worker.stdout else "")

    explicit = cluster.worker("--drain", "60")  # the flag over the key: the nap has time to finish
    marker = tmp_path / "finished"
    finishing = cluster.request("demo.nap", f"marker={marker}", "seconds=3")
    cluster.wait(finishing, "running")
    os.killpg(explicit.pid, signal.SIGTERM)
    assert explicit.wait(timeout=60) == 0
    assert cluster.execution(finishing)["status"] == "succeeded" and marker.exists()


def _healthz(port: int) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.URLError as exc:
            if isinstance(exc, urllib.error.HTTPError) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_workflow_whose_worker_dies_is_conducted_on_by_another(cluster: Cluster, tmp_path: Path) -> None:
    doomed = cluster.worker()
    marker = tmp_path / "first-ran"
    flow = cluster.request("demo.slow_flow", f"marker={marker}")
    deadline = time.monotonic() + 60
    while not (children := cluster.store.list_executions(parent=flow)) or children[0]["status"] != "running":
        assert time.monotonic() < deadline, "the workflow's first task did not start"
        time.sleep(0.1)
    os.killpg(doomed.pid, signal.SIGKILL)  # the conductor and its running task die together
    cluster.worker()
    done = cluster.wait(flow, "succeeded", "failed", seconds=STALLED_SECONDS + 60)
    assert done["status"] == "succeeded" and done["result"]["output"] == {"said": "hello second"}
    tasks = sorted(cluster.store.list_executions(parent=flow), key=lambda r: r["start_timestamp"])
    assert [(t["action"], t["status"]) for t in tasks] == [
        ("demo.nap", "abandoned"), ("demo.nap", "succeeded"), ("demo.hello", "succeeded")]
    assert marker.read_text() == "ran\n"  # the killed run never finished; the task ran to its end once


async def test_chat_commands_run_on_workers_and_a_dead_workers_thread_is_told(home: Path, postgres_url: str,
                                                                           tmp_path: Path) -> None:
    fake = FakeMattermost()
    await fake.start()
    cluster = Cluster(_home(home, postgres_url))
    config = home / "config.yml"
    config.write_text(config.read_text().replace(
        "    enabled: false\n", "    enabled: false\n"
        f"  mattermost: {{enabled: true, url: \"{fake.url}\", token: \"{BOT_TOKEN}\", team: ops}}\n"))
    serve = await asyncio.create_subprocess_exec(
        str(SQUALL), "-c", str(config), "serve", cwd=home, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
    try:
        await fake.wait_for(lambda: fake.ws_connects, 60)
        channel = fake.town_square["id"]
        asked = await fake.say(fake.alice, fake.town_square, "!greet bob")
        queued = await fake.wait_for(lambda: [p for p in fake.bot_posts(channel) if p["root_id"] == asked["id"]
                                              and "Still queued" in p["message"]], 60)
        assert "queue 'default'" in queued[0]["message"]  # no worker yet: the thread hears why it waits
        doomed = cluster.worker()
        reply = await fake.wait_for(lambda: [p for p in fake.bot_posts(channel)
                                             if "hello bob" in p["message"]], 60)
        assert reply[0]["root_id"] == asked["id"]  # in the command's thread, posted by serve for the worker
        assert len([p for p in fake.bot_posts(channel) if "Still queued" in p["message"]]) == 1  # told once

        napping = await fake.say(fake.alice, fake.town_square, f"!nap {tmp_path / 'never'}")
        deadline = time.monotonic() + 60
        while not [e for e in cluster.store.list_executions(action="demo.nap", status="running")]:
            assert time.monotonic() < deadline, "the nap did not start on the worker"
            await asyncio.sleep(0.1)
        os.killpg(doomed.pid, signal.SIGKILL)
        cluster.worker()
        told = await fake.wait_for(lambda: [p for p in fake.bot_posts(channel) if p["root_id"] == napping["id"]
                                            and "stopped answering" in p["message"]], STALLED_SECONDS + 40)
        assert told
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        await serve.wait()
        cluster.close()
        await fake.stop()


def test_a_worker_presumed_dead_cannot_overwrite_what_was_decided_meanwhile(cluster: Cluster,
                                                                          tmp_path: Path) -> None:
    frozen = cluster.worker()
    marker = tmp_path / "late"
    napping = cluster.request("demo.nap", f"marker={marker}", "seconds=3")
    cluster.wait(napping, "running")
    os.killpg(frozen.pid, signal.SIGSTOP)  # a network cut or a stalled machine: no heartbeat, nothing written
    try:
        cluster.worker()
        cluster.wait(napping, "abandoned", seconds=STALLED_SECONDS + 30)
    finally:
        os.killpg(frozen.pid, signal.SIGCONT)  # it comes back, and its action ends
    deadline = time.monotonic() + 30
    while frozen.poll() is None and not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)
    record = cluster.execution(napping)
    assert record["status"] == "abandoned" and "stopped answering" in record["result"]["error"]


def test_a_worker_refuses_a_request_made_with_other_pack_content(cluster: Cluster) -> None:
    asked = cluster.request("demo.hello", "who=old")
    script = cluster.home / "packs" / "demo" / "actions" / "hello.yaml"
    script.write_text(script.read_text().replace("echo hello", "echo HELLO"))  # deployed here, not yet there
    cluster.worker()
    done = cluster.wait(asked, "failed", "succeeded")
    assert done["status"] == "failed" and "the pack demo on this squall worker differs" in done["result"]["error"]
    again = cluster.request("demo.hello", "who=new")  # a request made with the pack the worker holds runs
    assert cluster.wait(again, "succeeded")["result"]["stdout"] == "HELLO new"


def test_a_concurrency_policy_holds_across_workers(cluster: Cluster, tmp_path: Path) -> None:
    write(cluster.home / "packs" / "demo" / "policies" / "one_nap.yaml", """
        name: one_nap
        resource_ref: demo.nap
        policy_type: action.concurrency
        parameters: {threshold: 1, action: delay}
    """)
    cluster.serve()
    cluster.worker("--concurrency", "4")
    cluster.worker("--concurrency", "4")
    naps = [cluster.request("demo.nap", f"marker={tmp_path / str(n)}", "seconds=1") for n in range(4)]
    runs = []
    for nap in naps:
        done = cluster.wait(nap, "succeeded", "failed", seconds=120)
        assert done["status"] == "succeeded", done
        started = next(e["timestamp"] for e in done["log"] if e["status"] == "running")
        runs.append((datetime.fromisoformat(started.replace("Z", "+00:00")), as_utc(done["end_timestamp"])))
    runs.sort()
    for (_, ended), (started, _) in itertools.pairwise(runs):
        assert started >= ended, runs  # one at a time, whichever worker took it


def test_pause_resume_and_cancel_reach_a_workflow_on_a_worker(cluster: Cluster, tmp_path: Path) -> None:
    cluster.serve()  # conducts nothing itself: hands `resuming` back to the queue
    cluster.worker()

    def first_task_running(flow: str) -> None:
        deadline = time.monotonic() + 60
        while not [c for c in cluster.store.list_executions(parent=flow) if c["status"] == "running"]:
            assert time.monotonic() < deadline, "the workflow's first task did not start"
            time.sleep(0.1)

    # The pause's CLI must start while the first task runs, as the cancel's below.
    paused = cluster.request("demo.slow_flow", f"marker={tmp_path / 'paused'}", "seconds=15")
    first_task_running(paused)
    cluster.cli("execution", "pause", paused, as_json=False)
    assert cluster.wait(paused, "paused")["status"] == "paused"  # once its running task finished
    assert [c["action"] for c in cluster.store.list_executions(parent=paused)] == ["demo.nap"]
    cluster.cli("execution", "resume", paused, as_json=False)
    done = cluster.wait(paused, "succeeded", "failed")
    assert done["status"] == "succeeded" and done["result"]["output"] == {"said": "hello second"}

    held = cluster.request("demo.mistral_pause")  # a pause its own definition asks for outlives the step
    assert cluster.wait(held, "paused", "succeeded", "failed")["status"] == "paused"
    assert [c["parameters"].get("who") for c in cluster.store.list_executions(parent=held)
            if c["action"] == "demo.hello"] == ["first"]
    cluster.cli("execution", "resume", held, as_json=False)
    resumed = cluster.wait(held, "succeeded", "failed")
    assert resumed["status"] == "succeeded" and resumed["result"]["got"] == "hello second", resumed["result"]

    # The cancel's CLI must start while the first task runs: on a busy machine that took over 4 s.
    canceled = cluster.request("demo.slow_flow", f"marker={tmp_path / 'canceled'}", "seconds=15")
    first_task_running(canceled)
    assert cluster.cli("execution", "cancel", canceled)["status"] == "canceling"  # its running task finishes
    assert cluster.wait(canceled, "canceled")["status"] == "canceled"
    tasks = cluster.store.list_executions(parent=canceled)
    assert [(t["action"], t["status"]) for t in tasks] == [("demo.nap", "succeeded")], [
        (t["result"], t["log"]) for t in tasks]  # nothing new started


def test_sigterm_lets_a_workflows_task_finish_and_another_worker_steps_on(cluster: Cluster, tmp_path: Path) -> None:
    stopping = cluster.worker()
    marker = tmp_path / "first-ran"
    flow = cluster.request("demo.slow_flow", f"marker={marker}")
    deadline = time.monotonic() + 60
    while not [c for c in cluster.store.list_executions(parent=flow) if c["status"] == "running"]:
        assert time.monotonic() < deadline, "the workflow's first task did not start"
        time.sleep(0.1)
    os.killpg(stopping.pid, signal.SIGTERM)
    assert stopping.wait(timeout=60) == 0
    waiting = cluster.execution(flow)  # no worker holds it: its next step waits in the queue
    assert waiting["status"] == "running" and waiting["runner_info"]["between_steps"] is True
    assert marker.read_text() == "ran\n"
    cluster.worker()
    done = cluster.wait(flow, "succeeded", "failed")
    assert done["status"] == "succeeded" and done["result"]["output"] == {"said": "hello second"}
    tasks = sorted(cluster.store.list_executions(parent=flow), key=lambda r: r["start_timestamp"])
    assert [(t["action"], t["status"]) for t in tasks] == [("demo.nap", "succeeded"), ("demo.hello", "succeeded")]
    assert marker.read_text() == "ran\n"  # the first task ran once


# -- Ctrl-C on a `squall run` whose execution a worker runs (or would) --------------------------------------

def _run_in_background(cluster: Cluster, *argv: str) -> subprocess.Popen[str]:
    """`squall run ...` waiting for its end, to be stopped by a signal (its own session: the test's is spared)."""
    return subprocess.Popen([str(SQUALL), "-c", str(cluster.home / "config.yml"), "run", *argv], cwd=cluster.home,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _requested_by(cluster: Cluster, runner: subprocess.Popen[str], action: str, *statuses: str) -> dict[str, Any]:
    """The execution of `action` the `squall run` `runner` requested, once it is in one of `statuses`."""
    deadline = time.monotonic() + 60
    while True:
        found = [r for r in cluster.store.list_executions(action=action) if r["status"] in statuses]
        if found:
            return found[0]
        assert runner.poll() is None and time.monotonic() < deadline, (runner.poll(), cluster._logs())
        time.sleep(0.05)


def _interrupted(runner: subprocess.Popen[str]) -> tuple[str, str]:
    """Ctrl-C to `squall run` alone (as a terminal's SIGINT reaches it): its stdout and stderr once it exited."""
    runner.send_signal(signal.SIGINT)
    try:
        return runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()


def _jobs_done(cluster: Cluster, execution_id: str) -> None:
    """Wait until a worker has taken and finished every procrastinate job of `execution_id`."""
    query = sa.text("SELECT count(*) FROM procrastinate_jobs WHERE args ->> 'execution_id' = :id "
                    "AND status IN ('todo', 'doing')")
    deadline = time.monotonic() + 60
    while True:
        with cluster.store._read() as conn:
            if not conn.execute(query, {"id": execution_id}).scalar_one():
                return
        assert time.monotonic() < deadline, f"no worker took the job of {execution_id}: {cluster._logs()}"
        time.sleep(0.1)


def test_ctrl_c_on_run_cancels_the_request_no_worker_took(cluster: Cluster, tmp_path: Path) -> None:
    """No worker serves the queue yet: Ctrl-C cancels the queued request in the database, names it, and a
    worker started after does not run it (it ran, unnamed, once one started)."""
    marker = tmp_path / "ran-after-ctrl-c"
    runner = _run_in_background(cluster, "core.local", f"cmd=touch {marker}")
    requested = _requested_by(cluster, runner, "core.local", "requested")
    output, errors = _interrupted(runner)
    assert runner.returncode == 130, errors
    execution_id = requested["id"]
    assert errors.strip() == (f"interrupted: execution {execution_id} canceled "
                              f"(see: squall execution get {execution_id})")
    assert output == ""
    assert cluster.execution(execution_id)["status"] == "canceled"
    cluster.worker()
    _jobs_done(cluster, execution_id)
    assert cluster.execution(execution_id)["status"] == "canceled" and not marker.exists()
    audited = [e for e in cluster.store.audit_list(limit=100) if e["event"] == "cli.execution.cancel"]
    assert [(e["target"], e["detail"].get("signal")) for e in audited] == [(execution_id, "SIGINT")]


def test_ctrl_c_on_run_cancels_the_action_a_worker_runs(cluster: Cluster, tmp_path: Path) -> None:
    """A worker runs it: Ctrl-C asks that worker to cancel it, which stops the action's process."""
    from tests.test_cli import _gone

    cluster.worker()
    marker = tmp_path / "action.pid"
    runner = _run_in_background(cluster, "core.local", f"cmd=echo $$ > {marker}; exec sleep 60")
    running = _requested_by(cluster, runner, "core.local", "running")
    deadline = time.monotonic() + 30
    while not (marker.exists() and marker.read_text().strip()):
        assert time.monotonic() < deadline, cluster._logs()
        time.sleep(0.05)
    output, errors = _interrupted(runner)
    assert runner.returncode == 130, errors
    execution_id = running["id"]
    assert errors.strip() == (f"interrupted: execution {execution_id} canceled "
                              f"(see: squall execution get {execution_id})")
    assert output == "" and cluster.execution(execution_id)["status"] == "canceled"
    assert _gone(int(marker.read_text())), "the action's process outlived the cancel"


def test_ctrl_c_on_run_cancels_a_workflow_and_its_running_task(cluster: Cluster, tmp_path: Path) -> None:
    """A workflow conducted by workers: Ctrl-C cancels it and the task running (a cancel alone lets that task
    finish), and nothing after it starts."""
    cluster.worker()
    marker = tmp_path / "napped"
    runner = _run_in_background(cluster, "demo.slow_flow", f"marker={marker}")
    flow = _requested_by(cluster, runner, "demo.slow_flow", "running")["id"]
    deadline = time.monotonic() + 60
    while not [c for c in cluster.store.list_executions(parent=flow) if c["status"] == "running"]:
        assert time.monotonic() < deadline, "the workflow's first task did not start"
        time.sleep(0.1)
    output, errors = _interrupted(runner)
    assert runner.returncode == 130, errors
    assert errors.strip() == f"interrupted: execution {flow} canceled (see: squall execution get {flow})"
    assert output == "" and cluster.execution(flow)["status"] == "canceled"
    tasks = cluster.store.list_executions(parent=flow)
    assert [(t["action"], t["status"]) for t in tasks] == [("demo.nap", "canceled")]
    assert not marker.exists()


def test_a_workflows_tasks_run_on_workers_of_their_queues(cluster: Cluster) -> None:
    default = cluster.worker("--queues", "default")
    zone = cluster.worker("--queues", "zone-a")
    flow = cluster.request("demo.zoned_flow")
    done = cluster.wait(flow, "succeeded", "failed")
    assert done["status"] == "succeeded" and done["result"]["output"] == {"said": "zone"}
    ran = {t["action"] + ":" + (t["parameters"].get("who") or ""): t["runner_info"]["worker"]
           for t in cluster.store.list_executions(parent=flow)}
    assert ran["zone.where:"].endswith(f":{zone.pid}")  # the zone's task, on the zone's worker only
    assert ran["demo.hello:here"].endswith(f":{default.pid}") and ran["demo.hello:back"].endswith(f":{default.pid}")
    assert done["runner_info"]["worker"].endswith(f":{default.pid}")  # the workflow's last step, on its queue
    assert [e["status"] for e in done["log"]] == ["scheduled", "running", "succeeded"]  # steps leave no trace


def test_a_worker_holds_no_workflow_while_its_tasks_run(cluster: Cluster, tmp_path: Path) -> None:
    """One job slot is enough for many workflows: a workflow lets go of its worker between steps."""
    cluster.worker("--concurrency", "1")
    flows = [cluster.request("demo.slow_flow", f"marker={tmp_path / str(n)}") for n in range(3)]
    deadline = time.monotonic() + 60
    while not all(cluster.store.list_executions(parent=flow) for flow in flows):
        assert time.monotonic() < deadline, "the three workflows did not all start while one nap ran"
        time.sleep(0.1)
    naps = [c for flow in flows for c in cluster.store.list_executions(parent=flow)]
    assert sorted(c["status"] for c in naps)[0] in ("requested", "running") and not (tmp_path / "2").exists()
    for flow in flows:
        done = cluster.wait(flow, "succeeded", "failed", seconds=120)
        assert done["status"] == "succeeded" and done["result"]["output"] == {"said": "hello second"}
    assert all((tmp_path / str(n)).read_text() == "ran\n" for n in range(3))


async def test_a_workflow_step_handed_to_another_worker_requests_nothing_more(home: Path, postgres_url: str,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker frozen mid-step past the heartbeat limit, whose step another worker took meanwhile,
    comes back: its requests are refused (so no task runs twice) and it does not overwrite the
    other's claim on the workflow (which would fence that one out instead)."""
    from bot.app import Squall

    squall = await Squall.start(load_config(_home(home, postgres_url) / "config.yml"))
    executions, store = squall.executions, squall.store
    try:
        flow = await executions.request("demo.flow")
        await executions.run(flow["id"], {"job_id": 1})  # the first step requests task `one`
        [one] = store.list_executions(parent=flow["id"])
        await executions.run(one["id"], {"job_id": 2})
        assert store.get_execution(one["id"])["status"] == "succeeded"

        real_request = executions.request
        handed_over = []

        async def frozen_meanwhile(*args: Any, **kwargs: Any) -> dict[str, Any]:
            if not handed_over:  # the reaper failed job 3 and job 4's step took the workflow
                store.update_execution(flow["id"], {"runner_info": {"job_id": 4}})
                handed_over.append(True)
            return await real_request(*args, **kwargs)

        monkeypatch.setattr(executions, "request", frozen_meanwhile)
        await executions.step(flow["id"], {"job_id": 3})  # comes back, and would request task `two`
        assert handed_over
        assert [c["action"] for c in store.list_executions(parent=flow["id"])] == ["demo.hello"]  # nothing new
        stale = store.get_execution(flow["id"])
        assert stale["status"] == "running" and stale["runner_info"] == {"job_id": 4}

        monkeypatch.setattr(executions, "request", real_request)
        await executions.step(flow["id"], {"job_id": 4})  # the step that holds it requests `two`, once
        children = store.list_executions(parent=flow["id"], oldest_first=True)
        assert [(c["context"]["workflow_task"]["task"]) for c in children] == ["one", "two"]
        await executions.run(children[1]["id"], {"job_id": 5})
        await executions.step(flow["id"], {"job_id": 6})
        done = store.get_execution(flow["id"])
        assert done["status"] == "succeeded" and done["result"]["output"] == {"said": "hello one"}
    finally:
        await squall.close()


DELAYED_FLOW = """
version: 1.0
tasks:
  later:
    delay: 30
    action: demo.hello who="later"
"""


async def test_a_delayed_workflow_task_is_submitted_by_any_node_once_due(home: Path, postgres_url: str) -> None:
    """A task's `delay` is stored with the task (`runner_info.delayed_until`): a poll before then
    submits nothing; once due, any node's poll (a worker's or serve's: the step's worker may be
    gone) queues its job, and the job runs it."""
    from bot.app import Squall
    from engine.storage import iso, utcnow

    squall = await Squall.start(_workflow(home, postgres_url, "delayed", "orquesta", DELAYED_FLOW))
    executions, store = squall.executions, squall.store

    def jobs() -> list[str]:
        with store.engine.connect() as conn:
            return [str(row[0]) for row in conn.execute(sa.text(
                "SELECT args ->> 'execution_id' FROM procrastinate_jobs WHERE status = 'todo'"))]

    try:
        flow = await executions.request("demo.delayed")
        await executions.run(flow["id"], {"job_id": 1})
        [later] = store.list_executions(parent=flow["id"])
        assert later["status"] == "delayed" and later["runner_info"]["delayed_until"]
        await executions.poll()
        assert later["id"] not in jobs()  # not before it is due
        store.update_execution(later["id"], {"runner_info": {"delayed_until": iso(utcnow())}})  # 30 s later
        await executions.poll()
        assert jobs().count(later["id"]) == 1
        await executions.run(later["id"], {"job_id": 2})
        assert store.get_execution(later["id"])["status"] == "succeeded"
    finally:
        await squall.close()


# -- nothing stuck or run early around workers (found by review, each failed before its fix) --------

async def test_a_time_delayed_request_waits_out_its_delay_under_a_concurrency_policy(home: Path,
                                                                                    postgres_url: str) -> None:
    """A poll hands every `delayed` request to the policy layer, which admitted it at once, whatever
    its `delayed_until` (a retry's or a task's delay): it waits now."""
    from bot.app import Squall

    _home(home, postgres_url)
    write(home / "packs" / "demo" / "policies" / "five.yaml", """
        name: five
        resource_ref: demo.hello
        policy_type: action.concurrency
        parameters: {threshold: 5, action: delay}
    """)
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        later = await squall.executions.request("demo.hello", {"who": "later"}, delay=300)
        await squall.executions.poll()
        with squall.store.engine.connect() as conn:
            queued = [str(r[0]) for r in conn.execute(sa.text(
                "SELECT args ->> 'execution_id' FROM procrastinate_jobs WHERE status = 'todo'"))]
        assert squall.store.get_execution(later["id"])["status"] == "delayed" and later["id"] not in queued
    finally:
        await squall.close()


async def test_a_delayed_request_is_refused_by_a_worker_with_other_pack_content(home: Path,
                                                                               postgres_url: str) -> None:
    from bot.app import Squall
    from bot.worker import Worker
    from engine.storage import iso, utcnow

    _home(home, postgres_url)
    serve = await Squall.start(load_config(home / "config.yml"))  # requests with the pack as it is
    try:
        asked = await serve.executions.request("demo.hello", {"who": "held"}, delay=30)
    finally:
        await serve.close()
    script = home / "packs" / "demo" / "actions" / "hello.yaml"
    script.write_text(script.read_text().replace("echo hello", "echo HELLO"))  # the worker's differs
    worker = await Squall.start(load_config(home / "config.yml"))
    try:
        worker.store.update_execution(asked["id"], {"runner_info": {"delayed_until": iso(utcnow())}})  # now due
        await Worker(worker).run_job(asked["id"], {"job_id": 99, "worker_id": 1, "worker": "w"})
        done = worker.store.get_execution(asked["id"])
        assert done["status"] == "failed"
        assert "differs from the one the request was made with" in done["result"]["error"]
    finally:
        await worker.close()


async def test_an_action_whose_job_ended_first_is_ended_by_the_reaper(home: Path, postgres_url: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A reaping pass cut short after it failed a dead worker's job (its node killed) left the
    execution `running` for ever: later passes only look at jobs still `doing`. Now the execution
    ends first, and a sweep ends any action whose job ended without it, audited with why
    (`reaper.execution.abandon`: the trail had no event for it). The execution's error says the same
    why, where it ran, as does that of an action whose worker is gone (it said "stopped answering" for
    every one)."""
    from bot.app import Squall
    from engine.jobs import REAPER_ABANDON, defer, reap_stalled

    squall = await Squall.start(load_config(_home(home, postgres_url) / "config.yml"))
    executions, store = squall.executions, squall.store
    try:
        for case in ("worker gone", "pass cut short", "job failed"):
            asked = await executions.request("demo.hello", {"who": "x"})
            defer(store, asked["id"], "default")
            with store.engine.begin() as conn:  # a worker took it, claimed it, then was SIGKILLed
                job = conn.execute(sa.text("SELECT max(id) FROM procrastinate_jobs")).scalar()
                conn.execute(sa.text("UPDATE procrastinate_jobs SET status = 'doing', worker_id = NULL WHERE id = :j"),
                             {"j": job})
            store.update_execution(asked["id"], {"status": "running", "runner_info": {
                "job_id": job, "worker": "dead:1", "hostname": "elsewhere", "pid": 1}})
            if case == "job failed":  # the job failed, the execution not ended: the node died in between
                with store.engine.begin() as conn:
                    conn.execute(sa.text("SELECT procrastinate_finish_job_v1(:j, 'failed', false)"), {"j": job})
            elif case == "pass cut short":  # where the old order had failed the job already
                real = executions.complete

                async def dies(*args: Any, **kwargs: Any) -> Any:
                    raise RuntimeError("the reaping node is killed here")

                monkeypatch.setattr(executions, "complete", dies)
                with pytest.raises(RuntimeError):
                    await reap_stalled(executions, squall.jobs)
                monkeypatch.setattr(executions, "complete", real)
            await reap_stalled(executions, squall.jobs)
            row = store.get_execution(asked["id"])
            assert row["status"] == "abandoned", (case, row["status"])
            [event] = [e for e in store.audit_list(event=REAPER_ABANDON) if e["target"] == asked["id"]]
            assert (event["detail"]["worker"], event["detail"]["job_id"]) == ("dead:1", job)
            why = ("its worker is gone (its procrastinate entry was removed: it unregistered, or was pruned)"
                   if case == "worker gone" else "its job ended without it (its end could not be stored)")
            assert event["detail"]["reason"] == why, event["detail"]
            assert row["result"]["error"] == f"Squall stopped running it on dead:1 (elsewhere): {why}", row["result"]
    finally:
        await squall.close()


CANCELED_CHAIN = """
chain:
  - name: one
    ref: demo.hello
    parameters: {who: one}
    on-success: two
  - name: two
    ref: demo.hello
    parameters: {who: two}
"""


@pytest.mark.parametrize("ref", ["demo.flow", "demo.chain"])
async def test_a_cancel_during_a_workers_step_starts_no_next_task(home: Path, postgres_url: str,
                                                                   monkeypatch: pytest.MonkeyPatch, ref: str) -> None:
    """The step read `running` when it began; the cancel lands just before it requests the next task.
    The step's request is fenced by the workflow's status too: task two never runs."""
    from bot.app import Squall

    squall = await Squall.start(_workflow(home, postgres_url, "chain", "action-chain", CANCELED_CHAIN))
    executions, store = squall.executions, squall.store
    try:
        flow = await executions.request(ref)
        await executions.run(flow["id"], {"job_id": 1})  # the first step requests task one
        [one] = store.list_executions(parent=flow["id"])
        await executions.run(one["id"], {"job_id": 2})
        real_request, canceled = executions.request, []

        async def the_cancel_lands_now(*args: Any, **kwargs: Any) -> dict[str, Any]:
            if not canceled:  # `squall execution cancel` on a serve node, while job 3's step conducts
                canceled.append((await executions.cancel(flow["id"]))["status"])
            return await real_request(*args, **kwargs)

        monkeypatch.setattr(executions, "request", the_cancel_lands_now)
        await executions.step(flow["id"], {"job_id": 3})
        monkeypatch.setattr(executions, "request", real_request)
        for child in store.list_executions(parent=flow["id"]):
            if child["status"] == "requested":
                await executions.run(child["id"], {"job_id": 4})
        if store.get_execution(flow["id"])["status"] in ("running", "canceling"):
            await executions.step(flow["id"], {"job_id": 5})
        tasks = [(c["parameters"].get("who"), c["status"]) for c in store.list_executions(parent=flow["id"])]
        assert canceled and all(who != "two" or status == "canceled" for who, status in tasks), tasks
        ended = store.get_execution(flow["id"])
        assert ended["status"] == "canceled"
        if ref == "demo.chain":  # it keeps the task it ran, as a chain canceled in one process does
            assert [t["name"] for t in ended["result"].get("tasks", [])][:1] == ["one"], ended["result"]
    finally:
        await squall.close()


async def test_the_lead_requests_a_retry_a_killed_worker_never_did(home: Path, postgres_url: str) -> None:
    """A worker killed between a failure's commit and its retry's request has no restart of its own
    whose recovery would find it: the lead's periodic pass requests the retry once the failure is a
    minute old (younger, the worker's own listener may be at it), and once only."""
    from bot.app import Squall
    from bot.service import _queued_work
    from engine.policies import RETRY_SETTLE, retry_id

    _home(home, postgres_url)
    write(home / "packs" / "demo" / "policies" / "retry.yaml",
          "name: retry\nresource_ref: demo.hello\npolicy_type: action.retry\n"
          "parameters: {retry_on: failure, max_retry_count: 1}\n")
    squall = await Squall.start(load_config(home / "config.yml"))
    store = squall.store
    try:
        await squall.sync_sensors()
        assert squall.sensor_lead
        asked = await squall.executions.request("demo.hello", {"who": "x"})
        # What a worker that then died committed: the run's failure, and nothing more. (It ran: a request
        # refused before it ran is never retried, `engine.policies._ran`.)
        ran = [{"status": "running", "timestamp": iso(utcnow())}, {"status": "failed", "timestamp": iso(utcnow())}]
        store.update_execution(asked["id"], {"status": "failed", "end_timestamp": datetime.now(tz=UTC),
                                             "log": [*(asked.get("log") or []), *ran]})
        await _queued_work(squall, sweep=True)
        assert store.get_execution(retry_id(asked["id"])) is None  # a fresh failure is its worker's to retry

        store.update_execution(asked["id"], {"end_timestamp": datetime.now(tz=UTC) - RETRY_SETTLE * 2})
        await _queued_work(squall, sweep=False)  # the 5-second pass does not look
        assert store.get_execution(retry_id(asked["id"])) is None
        await _queued_work(squall, sweep=True)
        retry = store.get_execution(retry_id(asked["id"]))
        assert retry is not None and retry["parameters"]["who"] == "x"
        assert retry["context"]["re-run"] == {"ref": asked["id"]}
        assert retry["context"]["policies"]["retry"] == {"retry_count": 1, "applied_policy": "demo.retry"}

        await _queued_work(squall, sweep=True)  # the next sweep sees it was retried
        assert [r["id"] for r in store.list_executions(action="demo.hello")].count(retry_id(asked["id"])) == 1
        assert len(store.list_executions(action="demo.hello")) == 2
    finally:
        await squall.close()


ASKING_FLOW = """
version: 1.0
tasks:
  ask:
    action: core.ask
    input:
      ttl: 1
      schema: {type: object, properties: {ok: {type: boolean}}, required: [ok]}
    next:
      - when: <% failed() %>
        do: expired
  expired:
    action: demo.hello who="nobody answered"
output:
  - said: <% task(expired).result.stdout %>
"""


async def test_the_lead_expires_an_inquiry_whose_asking_worker_is_gone(home: Path, postgres_url: str) -> None:
    """A question's TTL timer lives in the process that asked it, a worker. That worker stopped (a
    deploy, a kill), nothing else ever expired the question, and its workflow stayed paused for ever.
    The lead's minute sweep expires it (and arms timers for the questions not yet due), and the
    workflow goes on. Expiring is a compare-and-set on `pending`: a restarted worker's start-up
    expiring the same question at the same moment resumes the workflow no second time."""
    from bot.app import Squall
    from bot.service import _queued_work

    config = _workflow(home, postgres_url, "asking", "orquesta", ASKING_FLOW)
    lead = await Squall.start(config)
    store = lead.store
    try:
        await lead.sync_sensors()
        assert lead.sensor_lead
        asking = await Squall.start(config)  # the worker that asks
        try:
            first, second = [await _asked(asking, "demo.asking") for _ in range(2)]
        finally:
            await asking.close()  # the worker stops, and the questions' timers with it
        _overdue(store, first[1])

        await _queued_work(lead, sweep=False)  # the 5-second pass does not look
        assert store.get_execution(first[1])["status"] == "pending"
        await _queued_work(lead, sweep=True)
        await _heard(lead)
        expired = store.get_execution(first[1])
        assert expired["status"] == "timeout" and "expired" in expired["result"]["error"]
        assert store.get_execution(first[0])["status"] == "resuming"
        assert store.get_execution(second[1])["status"] == "pending" and second[1] in lead.inquiries._timers

        await lead.executions.run(first[0], {"job_id": 10})  # its job: the workflow goes on, `expired` is requested
        [told] = [c for c in store.list_executions(parent=first[0]) if c["action"] == "demo.hello"]
        await lead.executions.run(told["id"], {"job_id": 11})
        await lead.executions.step(first[0], {"job_id": 12})
        done = store.get_execution(first[0])
        assert done["status"] == "succeeded" and done["result"]["output"] == {"said": "hello nobody answered"}

        _overdue(store, second[1])
        restarted = await Squall.start(config)  # a worker starting as the sweep runs: both find it overdue
        try:
            await asyncio.gather(_queued_work(lead, sweep=True), restarted.inquiries.recover())
            await asyncio.gather(_heard(lead), _heard(restarted))
        finally:
            await restarted.close()
        assert store.get_execution(second[1])["status"] == "timeout"
        resumed = store.get_execution(second[0])
        assert [entry["status"] for entry in resumed["log"]].count("resuming") == 1
    finally:
        await lead.close()


async def _asked(worker: Any, ref: str) -> tuple[str, str]:
    """A workflow `ref` run by `worker` up to its question (`pending`, the worker's timer armed) and
    paused for the answer: (the workflow's id, the question's)."""
    store = worker.store
    flow = await worker.executions.request(ref)
    await worker.executions.run(flow["id"], {"job_id": 1})  # the first step requests `ask`
    [ask] = store.list_executions(parent=flow["id"])
    await worker.executions.run(ask["id"], {"job_id": 2})
    await worker.executions.step(flow["id"], {"job_id": 3})
    assert store.get_execution(ask["id"])["status"] == "pending" and ask["id"] in worker.inquiries._timers
    assert store.get_execution(flow["id"])["status"] == "paused"
    await _heard(worker)  # before the worker stops
    return flow["id"], ask["id"]


async def _heard(squall: Any) -> None:
    """Until the listeners of what ended in `squall` are done (a workflow resumed, a step queued)."""
    for _ in range(600):  # a deadline
        if not squall.executions.notifying:
            return
        await asyncio.sleep(0.05)


def _overdue(store: Store, inquiry_id: str) -> None:
    """Two minutes pass for the question (`ttl: 1`)."""
    from engine.storage import utcnow

    store.update_execution(inquiry_id, {"start_timestamp": utcnow() - timedelta(minutes=2)})
