"""StackStorm's own `st2` CLI (PyPI st2client 3.9.0, in a throwaway virtualenv) against a live
`squall serve`: the verbs StackStorm's users type, with an API key and after `st2 login`.

Installing st2client takes a minute; a developer with one installed may point `SQUALL_TEST_ST2` at its
`st2` to skip that. Where pip cannot reach the package index the tests skip, except in CI
(`SQUALL_REQUIRE_SERVERS`), where they fail."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ST2CLIENT, free_port, server_missing, wait_until_answering, write
from tests.test_cli import SQUALL

pytestmark = [pytest.mark.integration, pytest.mark.slow]
#: The server's key from its config (`api.keys`): it names nobody, so it may act as anyone (`st2 run -u`).
CONFIG_KEY = "st2-cli-config-key-0123456789"

ASK = """
version: 1.0
input: [who]
tasks:
  question:
    action: core.ask
    input:
      schema:
        type: object
        properties:
          go: {type: boolean, required: true}
    next:
      - when: <% succeeded() %>
        publish:
          - answer: <% result().response.go %>
        do: hello
  hello:
    action: st2e.greet who=<% ctx(who) %>
output:
  - answer: <% ctx(answer) %>
"""


def _pack(home: Path) -> None:
    pack = home / "packs" / "st2e"
    write(pack / "pack.yaml", """
        ref: st2e
        name: st2e
        description: What the st2 CLI test drives.
        version: 1.2.3
        author: Squall tests
        email: tests@example.com
        keywords: [test, st2]
    """)
    write(pack / "actions" / "greet.yaml", """
        name: greet
        runner_type: local-shell-cmd
        description: Say hello.
        parameters:
          who: {type: string, required: true, position: 0}
          cmd: {default: "echo Hello {{ who }}", immutable: true}
    """)
    write(pack / "actions" / "nap.yaml", """
        name: nap
        runner_type: local-shell-cmd
        description: Sleep a while.
        parameters:
          cmd: {default: "sleep 60", immutable: true}
    """)
    write(pack / "actions" / "ask.yaml", """
        name: ask
        runner_type: orquesta
        entry_point: workflows/ask.yaml
        description: Ask before greeting.
        parameters:
          who: {type: string, default: world}
    """)
    write(pack / "actions" / "workflows" / "ask.yaml", ASK)
    write(pack / "actions" / "gated.yaml", """
        name: gated
        runner_type: local-shell-cmd
        description: Print, wait for a file, print again.
        parameters:
          gate: {type: string, required: true}
          cmd: {default: 'echo first; echo oops >&2; while [ ! -e {{gate}} ]; do sleep 0.05; done; echo last',
                immutable: true}
    """)
    write(pack / "actions" / "flow.yaml", """
        name: flow
        runner_type: orquesta
        entry_point: workflows/flow.yaml
        description: Two tasks that print.
    """)
    write(pack / "actions" / "workflows" / "flow.yaml", """
        version: 1.0
        tasks:
          one:
            action: core.local cmd="echo from one"
            next:
              - do: two
          two:
            action: core.local cmd="echo from two >&2"
    """)
    write(pack / "aliases" / "greet.yaml", """
        name: greet
        action_ref: st2e.greet
        description: Greet someone.
        formats: ["greet {{ who }}"]
    """)
    write(pack / "rules" / "on_hook.yaml", """
        name: on_hook
        pack: st2e
        description: Greet whoever the hook names.
        enabled: true
        trigger: {type: core.st2.webhook, parameters: {url: st2e}}
        action: {ref: st2e.greet, parameters: {who: "{{ trigger.body.who }}"}}
    """)
    write(pack / "sensors" / "watch.yaml", """
        class_name: Watch
        entry_point: watch.py
        description: Watches nothing (disabled, so serve never starts it).
        enabled: false  # st2 sensor enable|disable rewrite this line
        trigger_types: [{name: tick}]
    """)
    write(pack / "sensors" / "watch.py", "from st2reactor.sensor.base import Sensor\n")


WHO = """
from st2client.client import Client
from st2client.models import KeyValuePair
from st2common.runners.base_action import Action


class Who(Action):
    def run(self, pack):
        client = Client()  # ST2_API_URL and ST2_AUTH_TOKEN from the action's environment
        client.keys.update(KeyValuePair(name="seen_by_st2client", value=pack))
        return {"actions": sorted(a.ref for a in client.actions.query(pack=pack)),
                "key": client.keys.get_by_name("seen_by_st2client").value}
"""


def _st2client_pack(source: Path) -> None:
    """A pack whose Python action calls the API with st2client from its own virtualenv (as the
    Exchange's `st2` pack does), st2client coming from its requirements.txt."""
    write(source / "pack.yaml", "ref: st2c\nname: st2c\ndescription: st2client inside.\nversion: 0.1.0\n"
                                "author: tests\n")
    write(source / "requirements.txt", ST2CLIENT + "\n")
    write(source / "actions" / "who.yaml", """
        name: who
        runner_type: python-script
        entry_point: who.py
        parameters:
          pack: {type: string, required: true}
    """)
    write(source / "actions" / "who.py", WHO)


@dataclass
class Server:
    home: Path
    url: str
    key: str
    st2: Path

    def env(self, key: bool = True) -> dict[str, str]:
        """`st2`'s environment: this server's URLs, and the API key (or, `key=False`, what `st2 login`
        cached in HOME)."""
        env = {**os.environ, "HOME": str(self.home / "user"), "ST2_API_URL": f"{self.url}/api/v1",
               "ST2_AUTH_URL": f"{self.url}/auth/v1", "ST2_STREAM_URL": f"{self.url}/stream/v1"}
        env.pop("ST2_API_KEY", None)
        env.pop("ST2_AUTH_TOKEN", None)
        if key:
            env["ST2_API_KEY"] = self.key
        return env

    def run(self, *args: str, key: bool = True, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`st2 ARGS` with the API key (or, `key=False`, with what `st2 login` cached in HOME)."""
        done = subprocess.run([str(self.st2), *args], capture_output=True, text=True, env=self.env(key), timeout=120)
        if check:
            assert done.returncode == 0, f"st2 {' '.join(args)}: {done.stdout}\n{done.stderr}"
        return done

    def json(self, *args: str, key: bool = True) -> Any:
        """The first JSON document `st2 ARGS -j` prints (a workflow's `execution get` adds its tasks')."""
        return json.JSONDecoder().raw_decode(self.run(*args, "-j", key=key).stdout.strip())[0]

    def wait(self, execution_id: str, *statuses: str) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            record = self.json("execution", "get", execution_id)
            if record["status"] in statuses:
                return record
            time.sleep(0.2)
        raise AssertionError(f"execution {execution_id} did not reach {statuses}: {record}")


def _id(text: str) -> str:
    """The execution id `st2 run -a` and `action-alias execute` print ("st2 execution get ID")."""
    return text.split("st2 execution get ", 1)[1].split()[0]


@pytest.fixture(scope="module")
def server(st2_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("st2home")
    port = free_port()
    write(home / "config.yml", f"""
        database:
          url: sqlite:///data/squall.db
        packs:
          paths: [packs]
        api:
          host: 127.0.0.1
          port: {port}
          keys: [{CONFIG_KEY}]
        adapters:
          console:
            enabled: false
    """)
    _pack(home)
    (home / "user").mkdir()
    config = str(home / "config.yml")
    made = subprocess.run([str(SQUALL), "-c", config, "apikey", "create", "--name", "alice", "--json"],
                          capture_output=True, text=True, cwd=home, timeout=60, check=True)
    _st2client_pack(home / "src" / "st2c")
    installed = subprocess.run([str(SQUALL), "-c", config, "pack", "install", str(home / "src" / "st2c")],
                               capture_output=True, text=True, cwd=home, timeout=900)
    if installed.returncode != 0:
        server_missing(f"pack install with {ST2CLIENT} failed: {installed.stderr.strip()[-1500:]}")
    process = subprocess.Popen([str(SQUALL), "-c", config, "serve"], cwd=home, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(url, process)
        yield Server(home, url, json.loads(made.stdout)["key"], st2_binary)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_actions_runs_and_executions(server: Server) -> None:
    refs = [a["ref"] for a in server.json("action", "list", "-p", "st2e")]
    assert refs == ["st2e.ask", "st2e.flow", "st2e.gated", "st2e.greet", "st2e.nap"]
    assert server.json("action", "get", "st2e.greet")["runner_type"] == "local-shell-cmd"

    ran = server.json("run", "st2e.greet", "who=ann")
    assert ran["status"] == "succeeded" and ran["result"]["stdout"] == "Hello ann"
    assert ran["action"]["ref"] == "st2e.greet" and ran["context"]["user"] == "alice"
    failed = server.run("run", "core.local", "cmd=exit 3", check=False)
    assert failed.returncode != 0 and "return_code: 3" in failed.stdout

    queued = _id(server.run("run", "-a", "st2e.greet", "who=bob").stdout)
    assert server.wait(queued, "succeeded")["result"]["stdout"] == "Hello bob"
    again = server.json("execution", "re-run", queued, "who=cyd")
    assert server.wait(again["id"], "succeeded")["result"]["stdout"] == "Hello cyd"
    listed = [e["id"] for e in server.json("execution", "list", "-n", "3")]
    assert queued in listed and again["id"] in listed
    table = server.run("execution", "list", "-n", "2")
    assert "Only first 2 action executions" in table.stdout + table.stderr  # from X-Total-Count

    napping = _id(server.run("run", "-a", "st2e.nap").stdout)
    server.wait(napping, "running")
    canceled = server.run("execution", "cancel", napping)
    assert f"{napping} canceled" in canceled.stdout
    assert server.wait(napping, "canceled")["status"] == "canceled"

    unknown = server.run("run", "st2e.nope", check=False)
    assert unknown.returncode != 0 and "st2e.nope" in unknown.stdout + unknown.stderr


def test_run_delay_and_run_as_another_user(server: Server) -> None:
    """`st2 run --delay MS` ran at once and `st2 run -u USER` ran as the key's user: Squall dropped both
    fields. The run is held `delayed`; `-u` works with the config's key and is refused (403) with alice's."""
    held = _id(server.run("run", "-a", "--delay", "600000", "st2e.greet", "who=kim").stdout)
    assert server.json("execution", "get", held)["status"] == "delayed"
    server.run("execution", "cancel", held)
    refused = server.run("run", "-u", "bob", "st2e.greet", "who=lou", check=False)
    assert refused.returncode != 0 and "speaks for alice; it may not act as bob" in refused.stdout + refused.stderr
    assert server.json("run", "-u", "alice", "st2e.greet", "who=meg")["context"]["user"] == "alice"
    bridge = subprocess.run([str(server.st2), "run", "-u", "bob", "st2e.greet", "who=ned", "-j"], capture_output=True,
                            text=True, env={**server.env(), "ST2_API_KEY": CONFIG_KEY}, timeout=120)
    assert bridge.returncode == 0, bridge.stdout + bridge.stderr
    ran = json.JSONDecoder().raw_decode(bridge.stdout.strip())[0]
    assert ran["status"] == "succeeded" and ran["context"]["user"] == "bob"


def test_a_pack_action_calls_the_api_with_st2client_and_its_token(server: Server) -> None:
    ran = server.json("run", "st2c.who", "pack=st2e")
    assert ran["status"] == "succeeded", ran
    assert ran["result"]["result"] == {"actions": ["st2e.ask", "st2e.flow", "st2e.gated", "st2e.greet", "st2e.nap"],
                                       "key": "st2e"}
    assert server.json("key", "get", "seen_by_st2client")["value"] == "st2e"


def test_keys_with_encryption_and_scopes(server: Server) -> None:
    server.run("key", "set", "colour", "blue")
    assert server.json("key", "get", "colour")["value"] == "blue"
    server.run("key", "set", "pw", "s3cret", "--encrypt")
    assert server.json("key", "get", "pw")["value"] != "s3cret"
    assert server.json("key", "get", "pw", "--decrypt")["value"] == "s3cret"
    assert "s3cret" not in server.run("key", "list").stdout
    server.run("key", "set", "mine", "tea", "--scope", "user")
    scoped = {(k["name"], k["scope"], k.get("user")) for k in server.json("key", "list", "--scope", "all")}
    assert {("colour", "st2kv.system", None), ("mine", "st2kv.user", "alice")} <= scoped
    server.run("key", "delete", "colour")
    missing = server.run("key", "get", "colour", check=False)
    assert missing.returncode != 0 and "colour" in missing.stdout + missing.stderr


def test_rules_triggers_packs_and_aliases(server: Server) -> None:
    (rule,) = server.json("rule", "list", "-p", "st2e")
    assert rule["ref"] == "st2e.on_hook"
    assert server.json("rule", "get", "st2e.on_hook")["action"]["ref"] == "st2e.greet"
    assert "core.st2.webhook" in [t["ref"] for t in server.json("trigger", "list")]
    assert "st2e" in [p["ref"] for p in server.json("pack", "list")]
    pack = server.json("pack", "get", "st2e")
    assert pack["version"] == "1.2.3" and pack["keywords"] == ["test", "st2"]

    assert "st2e.greet" in [a["ref"] for a in server.json("action-alias", "list")]
    matched = server.run("action-alias", "match", "greet dan").stdout
    assert "greet" in matched and "Greet someone." in matched
    executed = server.run("action-alias", "execute", "greet dan").stdout
    assert "Matching Action-alias: 'st2e.greet'" in executed
    assert server.wait(_id(executed), "succeeded")["result"]["stdout"] == "Hello dan"


def test_inquiry_list_get_respond_resumes_the_workflow(server: Server) -> None:
    workflow = _id(server.run("run", "-a", "st2e.ask", "who=eve").stdout)
    deadline = time.monotonic() + 60
    while not (inquiries := server.json("inquiry", "list")) and time.monotonic() < deadline:
        time.sleep(0.2)
    (inquiry,) = inquiries
    assert server.json("inquiry", "get", inquiry["id"])["schema"]["properties"]["go"]["type"] == "boolean"
    answered = server.run("inquiry", "respond", inquiry["id"], "-r", '{"go": true}')
    assert "Response accepted" in answered.stdout
    done = server.wait(workflow, "succeeded", "failed")
    assert done["status"] == "succeeded" and done["result"]["output"] == {"answer": True}
    tasks = server.run("execution", "get", workflow, "--show-tasks").stdout
    assert "question" in tasks and "hello" in tasks and "st2e.greet" in tasks


def test_login_with_an_api_key_then_commands_use_the_token(server: Server) -> None:
    wrong = server.run("login", "mallory", "--password", server.key, key=False, check=False)
    assert wrong.returncode != 0 and "log in as alice" in wrong.stdout + wrong.stderr
    server.run("login", "alice", "--password", server.key, key=False)
    whoami = server.run("whoami", key=False).stdout
    assert 'Currently logged in as "alice"' in whoami and "authentication token" in whoami
    ran = server.json("run", "st2e.greet", "who=fay", key=False)
    assert ran["result"]["stdout"] == "Hello fay" and ran["context"]["user"] == "alice"


def test_key_backup_restore_and_execution_list_filters(server: Server) -> None:
    """StackStorm's datastore backup (`st2 key list -j`, `st2 key load`): the masked export is refused
    instead of replacing the secret with the mask, the `--decrypt` export restores it encrypted, and
    `--encrypted` takes only this server's ciphertext. `st2 execution list`'s filters are applied."""
    server.run("key", "set", "vault", "hunter2", "--encrypt")
    write(server.home / "masked.json", server.run("key", "list", "-j").stdout)
    refused = server.run("key", "load", str(server.home / "masked.json"), check=False)
    assert refused.returncode != 0 and "--decrypt" in refused.stdout + refused.stderr
    assert server.json("key", "get", "vault", "--decrypt")["value"] == "hunter2"
    write(server.home / "clear.json", server.run("key", "list", "--decrypt", "-j").stdout)
    server.run("key", "delete", "vault")
    server.run("key", "load", str(server.home / "clear.json"))
    assert server.json("key", "get", "vault", "--decrypt")["value"] == "hunter2"
    assert server.json("key", "get", "vault")["value"] == "********"
    forged = server.run("key", "set", "k2", "not-a-ciphertext", "--encrypted", check=False)
    assert forged.returncode != 0 and "not valid ciphertext" in forged.stdout + forged.stderr

    ran = server.json("run", "st2e.greet", "who=gus")
    mine = [e["id"] for e in server.json("execution", "list", "--user", "alice", "-n", "100")]
    assert ran["id"] in mine
    for flags in (("--user", "nobody"), ("--timestamp-gt", "2999-01-01T00:00:00.000Z"),
                  ("--timestamp-lt", "2000-01-01T00:00:00.000Z"), ("--trigger_instance", "0" * 24)):
        assert server.json("execution", "list", *flags) == [], flags
    later = server.run("execution", "list", "--timestamp-gt", "tomorrow", check=False)
    assert later.returncode != 0 and "timestamp_gt" in later.stdout + later.stderr


def test_n_minus_one_lists_everything_and_rules_enable_and_disable(server: Server) -> None:
    """`-n -1` is st2's "all of them" and `st2 rule enable|disable` updates the rule at `PUT /rules/{id}`;
    both failed (a 400 on the limit; `'Rule' object has no attribute 'id'` then a 405)."""
    keyed = {"St2-Api-Key": server.key}
    ran = server.json("run", "st2e.greet", "who=hal")
    assert httpx.post(f"{server.url}/api/v1/webhooks/st2e", json={"who": "ivy"}, headers=keyed).status_code == 202
    assert ran["id"] in [e["id"] for e in server.json("execution", "list", "-n", "-1")]
    assert "st2e.on_hook" in [r["ref"] for r in server.json("rule", "list", "-n", "-1")]
    deadline = time.monotonic() + 60
    while not server.json("rule-enforcement", "list", "-n", "-1") and time.monotonic() < deadline:
        time.sleep(0.2)  # the hook's rule is enforced after its trigger instance is stored
    assert server.json("rule-enforcement", "list", "-n", "-1")
    assert server.json("trigger-instance", "list", "-n", "-1")
    # How hubot-stackstorm loads the aliases (`st2 action-alias list` sends no limit).
    aliases = httpx.get(f"{server.url}/api/v1/actionalias", params={"limit": -1}, headers=keyed)
    assert aliases.status_code == 200 and "st2e.greet" in [a["ref"] for a in aliases.json()]

    rule_file = server.home / "packs" / "st2e" / "rules" / "on_hook.yaml"
    disabled = server.json("rule", "disable", "st2e.on_hook")
    assert disabled["enabled"] is False and disabled["ref"] == "st2e.on_hook" and len(disabled["id"]) == 24
    assert "enabled: false" in rule_file.read_text()
    assert server.json("rule", "get", "st2e.on_hook")["enabled"] is False  # the server uses it at once
    silent = httpx.post(f"{server.url}/api/v1/webhooks/st2e", json={"who": "jo"}, headers=keyed)
    assert silent.status_code == 404  # no live rule behind the hook any more
    assert server.json("rule", "get", disabled["id"])["ref"] == "st2e.on_hook"
    enabled = server.json("rule", "enable", disabled["id"])
    assert enabled["enabled"] is True and "enabled: true" in rule_file.read_text()
    shown = server.run("rule", "enable", "st2e.on_hook").stdout  # already so: the table, no error
    assert "st2e.on_hook" in shown and "True" in shown
    missing = server.run("rule", "disable", "st2e.nope", check=False)
    assert missing.returncode != 0 and "st2e.nope" in missing.stdout + missing.stderr


def test_sensor_list_get_and_a_running_execution_without_an_end(server: Server) -> None:
    """`st2 sensor list|get` read `/sensortypes` (a 404 before); `st2 sensor enable|disable` and
    `st2 action disable|enable` rewrite the `enabled:` line of the file (a 405 and a 409 before).
    A running execution has no `end_timestamp` (null before, which pack templates took for a value)."""
    (sensor,) = server.json("sensor", "list", "-p", "st2e")
    assert sensor["ref"] == "st2e.Watch" and sensor["enabled"] is False
    got = server.json("sensor", "get", "st2e.Watch")
    assert got["trigger_types"] == ["st2e.tick"] and got["uid"] == "sensor_type:st2e:Watch"
    sensor_file = server.home / "packs" / "st2e" / "sensors" / "watch.yaml"
    enabled = server.json("sensor", "enable", "st2e.Watch")
    assert enabled["enabled"] is True and enabled["ref"] == "st2e.Watch"
    assert "enabled: true  # st2 sensor enable|disable rewrite this line" in sensor_file.read_text()
    disabled = server.json("sensor", "disable", got["id"])
    assert disabled["enabled"] is False and "enabled: false  # st2" in sensor_file.read_text()
    assert server.json("sensor", "get", "st2e.Watch")["enabled"] is False

    action_file = server.home / "packs" / "st2e" / "actions" / "nap.yaml"
    assert server.json("action", "disable", "st2e.nap")["enabled"] is False
    assert "enabled: false" in action_file.read_text()
    refused = server.run("run", "-a", "st2e.nap", check=False)
    assert refused.returncode != 0
    assert 'Action "st2e.nap" is disabled' in refused.stdout + refused.stderr, refused
    assert server.json("action", "enable", "st2e.nap")["enabled"] is True
    assert "enabled: true" in action_file.read_text()
    napping = _id(server.run("run", "-a", "st2e.nap").stdout)
    running = server.wait(napping, "running")
    assert "end_timestamp" not in running and "elapsed_seconds" not in running, running
    assert napping in server.run("execution", "list", "-n", "5").stdout
    server.run("execution", "cancel", napping)


def test_tail_prints_a_running_execution_s_output_and_run_tail_a_workflow_s(server: Server) -> None:
    """`st2 execution tail` of a running execution printed nothing and exited 0 (no `/stream/v1/stream`):
    now its lines come while it runs and the tail ends with it; an ended one's output is printed;
    `st2 run --tail` of a workflow shows each task's start, output and end, then the workflow's."""
    gate = server.home / "gate"
    running = _id(server.run("run", "-a", "st2e.gated", f"gate={gate}").stdout)
    server.wait(running, "running")
    tail = subprocess.Popen([str(server.st2), "execution", "tail", running], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**server.env(), "PYTHONUNBUFFERED": "1"})
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert tail.stdout is not None
        for line in tail.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    printed: list[str] = []
    try:
        while "first\n" not in printed:
            line = lines.get(timeout=60)
            assert line is not None, f"st2 execution tail ended before printing the output: {printed}"
            printed.append(line)
        assert server.json("execution", "get", running)["status"] == "running"  # printed while it runs
        gate.touch()
        assert tail.wait(timeout=60) == 0
    finally:
        tail.kill()
    while (line := lines.get(timeout=10)) is not None:
        printed.append(line)
    text = "".join(printed)
    assert text.index("first") < text.index("last") < text.index(
        f"Execution {running} has completed (status=succeeded).")
    assert "oops" in text
    after = server.run("execution", "tail", running).stdout
    assert "first" in after and "last" in after and f"Execution {running} has completed (status=succeeded)." in after

    ran = server.run("run", "--tail", "st2e.flow").stdout
    started = [line for line in ran.splitlines() if line.startswith("Child execution (task=")]
    assert [line.split(")")[0] + ")" for line in started] == ["Child execution (task=one)"] * 2 + [
        "Child execution (task=two)"] * 2, ran
    assert ran.index("task=one") < ran.index("from one") < ran.index("task=two") < ran.index("from two")
    assert "has finished (status=succeeded)" in ran and "has completed (status=succeeded)" in ran


def _listed(server: Server, *args: str) -> list[dict[str, Any]]:
    """What `st2 ARGS -j` lists: st2 prints "No matching items found" for an empty list of rules, and the
    JSON `[]` for an empty list of the logs (it reverses those, and a reversed list is never empty)."""
    printed = server.run(*args, "-j").stdout.strip()
    return [] if printed == "No matching items found" else json.loads(printed)


def test_list_filters_are_applied(server: Server) -> None:
    """The filters `st2 trigger|action-alias|rule|rule-enforcement|trigger-instance list` send (`pack`,
    `action`, `trigger`, `enabled`, `rule_ref`, `enforced_at_gt|lt`, `timestamp_gt|lt`), which StackStorm's
    API applies, were ignored: the whole list was printed."""
    keyed = {"St2-Api-Key": server.key}
    assert httpx.post(f"{server.url}/api/v1/webhooks/st2e", json={"who": "kim"}, headers=keyed).status_code == 202
    deadline = time.monotonic() + 60
    while not _listed(server, "rule-enforcement", "list", "--rule", "st2e.on_hook") and time.monotonic() < deadline:
        time.sleep(0.2)  # the hook's rule is enforced after its trigger instance is stored
    core = [t["ref"] for t in _listed(server, "trigger", "list", "-p", "core")]
    assert "core.st2.webhook" in core and all(ref.startswith("core.") for ref in core)
    assert not [t["ref"] for t in _listed(server, "trigger", "list", "-p", "st2e") if not t["ref"].startswith("st2e.")]
    assert [a["ref"] for a in _listed(server, "action-alias", "list", "-p", "st2e")] == ["st2e.greet"]

    def rules(*flags: str) -> list[str]:
        return [r["ref"] for r in _listed(server, "rule", "list", *flags)]

    assert rules("--action", "st2e.greet") == rules("--trigger", "core.st2.webhook", "-p", "st2e") == ["st2e.on_hook"]
    assert rules("--enabled", "-p", "st2e") == ["st2e.on_hook"]
    assert rules("--disabled", "-p", "st2e") == rules("--trigger", "core.st2.IntervalTimer") == []

    enforced = _listed(server, "rule-enforcement", "list", "--rule", "st2e.on_hook")
    assert enforced and {e["rule"]["ref"] for e in enforced} == {"st2e.on_hook"}
    for flags in (("--rule", "no.such_rule"), ("-tg", "2099-01-01T00:00:00.000Z"), ("-tl", "2000-01-01T00:00:00.000Z")):
        assert _listed(server, "rule-enforcement", "list", *flags) == [], flags
    assert _listed(server, "rule-enforcement", "list", "-tg", "2000-01-01T00:00:00.000Z")
    for flags in (("-tg", "2099-01-01T00:00:00.000Z"), ("-tl", "2000-01-01T00:00:00.000Z")):
        assert _listed(server, "trigger-instance", "list", *flags) == [], flags
    assert _listed(server, "trigger-instance", "list", "--trigger", "core.st2.webhook", "-tg", "2000-01-01T00:00:00Z")
    later = server.run("trigger-instance", "list", "-tg", "tomorrow", check=False)
    assert later.returncode != 0 and "timestamp_gt" in later.stdout + later.stderr


def test_action_alias_get_shows_the_alias_list_shows(server: Server) -> None:
    """`st2 action-alias get st2e.greet` said the alias was not found although `list` showed it (the route
    was missing). It shows StackStorm's fields, `metadata_file` relative to the pack; an unknown ref is
    st2's own "not found"; `match` (POST /actionalias/match) is not taken for a ref."""
    assert "st2e.greet" in [a["ref"] for a in server.json("action-alias", "list", "-p", "st2e")]
    got = server.json("action-alias", "get", "st2e.greet")
    assert got["ref"] == "st2e.greet" and got["action_ref"] == "st2e.greet" and got["enabled"] is True
    assert [f["display"] for f in got["formats"]] == ["greet {{ who }}"]
    assert got["metadata_file"] == "aliases/greet.yaml"
    table = server.run("action-alias", "get", "st2e.greet").stdout
    assert "Greet someone." in table and "greet {{ who }}" in table
    missing = server.run("action-alias", "get", "st2e.nope", check=False)
    assert missing.returncode != 0 and '"st2e.nope" is not found' in missing.stdout + missing.stderr
    matched = server.run("action-alias", "match", "greet dan").stdout
    assert "greet" in matched and "Greet someone." in matched
