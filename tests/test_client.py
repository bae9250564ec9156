"""`squall_client` against a real API: Squall and uvicorn on a free port, in a thread of their own.

The server runs on its own event loop in a background thread (started once for the module), so the
synchronous client can block in a test and the async client can run on the test's loop, both over TCP
as any user's script would. Every test asserts what the server really did: an action's stdout, a
failed status, the server's own faultstring, a secret masked, a workflow resumed by an inquiry answer.

The last tests check the client's promise to users: it imports nothing of the server, in a Python
that has only the standard library, httpx and the package on its path."""

from __future__ import annotations

import asyncio
import inspect
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

import squall_client
from bot.app import Squall
from bot.http import ApiServer
from engine.config import load_config
from squall_client import (
    COMPLETED,
    ApiConnectionError,
    ApiError,
    AsyncClient,
    Client,
    ConfigError,
    ResponseError,
    Settings,
    WaitTimeout,
)
from tests.conftest import free_port, write
from tests.workflow_helpers import workflow_pack

KEY = "client-test-key-0123456789"

#: A workflow paused on a question only olivia may answer (no chat route: the API answers it).
APPROVAL = """
version: 1.0
vars:
  - answer: null
tasks:
  approve:
    action: core.ask
    input:
      users: [olivia]
      ttl: 60
      schema:
        type: object
        properties:
          approved: {type: boolean, required: true}
    next:
      - when: <% succeeded() and result().response.approved %>
        publish: [answer: <% result().response.approved %>]
output:
  - answer: <% ctx(answer) %>
"""


def _home(home: Path, port: int) -> Path:
    write(home / "config.yml", f"""
        database:
          url: sqlite:///data/squall.db
        packs:
          paths: [packs]
        api:
          host: 127.0.0.1
          port: {port}
          keys: [{KEY}]
    """)
    pack = home / "packs" / "clt"
    write(pack / "pack.yaml", "ref: clt\nname: clt\ndescription: client tests\nversion: 1.0.0\nauthor: t\n")
    write(pack / "actions" / "greet.yaml", yaml.safe_dump({
        "name": "greet", "runner_type": "local-shell-cmd",
        "parameters": {"who": {"type": "string", "required": True},
                       "password": {"type": "string", "secret": True},
                       "cmd": {"default": 'echo "hello {{who}}"; echo oops >&2', "immutable": True}}}))
    write(pack / "actions" / "slow.yaml", """
        name: slow
        runner_type: local-shell-cmd
        parameters:
          cmd: {default: 'sleep 30', immutable: true}
    """)
    write(pack / "aliases" / "greet.yaml", """
        name: greet
        action_ref: clt.greet
        description: Greet someone.
        formats: ["greet {{who}}"]
        ack:
          format: "greeting {{ execution.parameters.who }}"
    """)
    write(pack / "triggers" / "event.yaml", """
        name: event
        pack: clt
        payload_schema:
          type: object
          properties:
            n: {type: integer}
    """)
    write(pack / "rules" / "on_event.yaml", """
        name: on_event
        pack: clt
        enabled: true
        trigger: {type: clt.event}
        action: {ref: clt.greet, parameters: {who: "number {{ trigger.n }}"}}
    """)
    workflow_pack(home, {"approval": ("orquesta", "", APPROVAL)})
    return home


class _Service(threading.Thread):
    """Squall and its API on an event loop of this thread's own, until `stop()`."""

    def __init__(self, config: Path, port: int) -> None:
        super().__init__(name="squall-client-test-server", daemon=True)
        self.config, self.port = config, port
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        try:
            squall = await Squall.start(load_config(self.config))
            server = ApiServer(squall, host="127.0.0.1", port=self.port)
            await server.start()
        except BaseException as exc:  # handed to the test thread, which raises it
            self.error = exc
            self.ready.set()
            return
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        self.ready.set()
        try:
            await self._stopping.wait()
        finally:
            await server.stop()
            await squall.triggers.settle()
            await squall.close()

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self.join(30)


@dataclass(frozen=True)
class Service:
    url: str


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    home = tmp_path_factory.mktemp("client-home")
    port = free_port()
    thread = _Service(_home(home, port) / "config.yml", port)
    thread.start()
    assert thread.ready.wait(60), "the API server did not start within 60 s"
    if thread.error is not None:
        raise thread.error
    try:
        yield Service(f"http://127.0.0.1:{port}")
    finally:
        thread.stop()
        assert not thread.is_alive(), "the API server did not stop within 30 s"


@pytest.fixture
def client(service: Service) -> Iterator[Client]:
    with Client(service.url, api_key=KEY) as c:
        yield c


# -- executions ----------------------------------------------------------------------------------------

def test_run_and_wait_gives_stdout_and_the_record(client: Client) -> None:
    done = client.executions.run("core.local", {"cmd": "echo hi"}, wait=True, timeout=20)
    assert done.status == "succeeded" and done.succeeded and done.completed and not done.failed
    assert done.stdout == "hi" and done.return_code == 0 and done.runner == "local-shell-cmd"
    assert done.context["source"] == "api" and done.end_timestamp is not None
    assert done.end_timestamp >= done.start_timestamp  # parsed as aware datetimes
    assert client.executions.output(done.id) == "hi\n"
    assert client.executions.get(done.id[:14]).id == done.id  # a unique start of an id will do
    listed = client.executions.list(action="core.local", status="succeeded", limit=50)
    assert done.id in [e.id for e in listed]
    assert all(e.status == "succeeded" and e.action == "core.local" for e in listed)
    client.executions.run("core.local", {"cmd": "true"}, wait=True, timeout=20)
    newest, second = (client.executions.list(action="core.local", limit=1, offset=n) for n in (0, 1))
    assert len(newest) == len(second) == 1 and newest[0].id > second[0].id  # ids sort by creation time


def test_a_failing_action_ends_failed(client: Client) -> None:
    done = client.executions.run("core.local", {"cmd": "echo bad >&2; exit 3"}, wait=True, timeout=20)
    assert done.status == "failed" and done.failed and not done.succeeded
    assert done.return_code == 3 and done.stderr == "bad"


def test_bad_input_is_an_api_error_with_the_server_s_words(client: Client) -> None:
    with pytest.raises(ApiError) as unknown:
        client.executions.run("clt.gret", {"who": "x"})
    assert unknown.value.status == 400 and "clt.gret" in unknown.value.faultstring
    assert unknown.value.method == "POST" and unknown.value.url.endswith("/api/v1/executions")
    with pytest.raises(ApiError) as missing:
        client.executions.run("clt.greet", {})
    assert missing.value.status == 400 and "who" in missing.value.faultstring
    with pytest.raises(ApiError) as nothing:
        client.executions.get("ffffffffffffffffffffffff")
    assert nothing.value.status == 404 and "not found" in nothing.value.faultstring
    assert "404" in str(nothing.value)


def test_secrets_are_masked_and_rerun_keeps_them(client: Client) -> None:
    done = client.executions.run("clt.greet", {"who": "ann", "password": "hunter2"}, wait=True, timeout=20)
    assert done.parameters["password"] == "********" and "hunter2" not in json.dumps(done.raw)
    again = client.executions.rerun(done.id, {"who": "bob"}, wait=True, timeout=20)
    assert again.id != done.id and again.stdout == "hello bob"
    assert again.context["re-run"]["ref"] == done.id and again.parameters["password"] == "********"


def test_follow_yields_the_output(client: Client) -> None:
    started = client.executions.run("clt.greet", {"who": "ann"})
    pieces = list(client.executions.follow(started.id, timeout=20, interval=0.2))
    assert "".join(pieces) == "hello ann\noops\n"
    assert client.executions.get(started.id).succeeded


def test_cancel_and_wait_timeout(client: Client) -> None:
    slow = client.executions.run("clt.slow")
    with pytest.raises(WaitTimeout) as timed_out:
        client.executions.wait(slow.id, timeout=0.5, interval=0.1)
    assert timed_out.value.execution.id == slow.id and not timed_out.value.execution.completed
    assert isinstance(timed_out.value, TimeoutError)
    running = client.executions.wait(slow.id, until={"running"}, timeout=20, interval=0.1)
    assert running.status == "running"
    canceled = client.executions.cancel(slow.id)
    assert canceled.status in ("canceling", "canceled")
    assert client.executions.wait(slow.id, timeout=20).status == "canceled"
    with pytest.raises(ApiError) as again:
        client.executions.cancel(slow.id)
    assert again.value.status == 409 and "already canceled" in again.value.faultstring


# -- auth and configuration ----------------------------------------------------------------------------

def test_a_bad_key_is_401_with_the_faultstring(service: Service) -> None:
    with Client(service.url, api_key="not-the-key") as bad, pytest.raises(ApiError) as refused:
        bad.actions.list()
    assert refused.value.status == 401 and refused.value.faultstring == "Unauthorized - the API key is not valid."
    with Client(service.url, api_key="", auth_token="") as none:  # "" is no key, whatever the environment says
        with pytest.raises(ApiError) as missing:
            none.packs.list()
        assert missing.value.status == 401 and "API key required" in missing.value.faultstring
        health = none.health()  # needs no key
    assert health.status == "ok" and health.actions > 0 and health.packs >= 2


def test_settings_come_from_the_environment(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SQUALL_API_URL", "SQUALL_API_KEY", "ST2_API_URL", "ST2_API_KEY", "ST2_AUTH_TOKEN",
                 "ST2_ACTION_API_URL", "ST2_ACTION_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ST2_API_URL", service.url + "/api/v1/")  # StackStorm's name, a URL with the prefix
    monkeypatch.setenv("ST2_API_KEY", KEY)
    with Client() as from_env:
        assert from_env.settings.api_url == service.url + "/api/v1"
        assert "core.local" in [a.ref for a in from_env.actions.list(pack="core")]
    monkeypatch.setenv("SQUALL_API_KEY", "wrong")  # Squall's name wins over StackStorm's
    with Client() as wrong, pytest.raises(ApiError) as refused:
        wrong.packs.list()
    assert refused.value.status == 401
    with Client(api_key=KEY) as argument:  # and an argument over both
        assert argument.packs.list()
    assert Settings.resolve(env={}).api_url == "http://127.0.0.1:9101/api/v1"
    assert Settings.resolve("https://st2.example/api", env={}).api_url == "https://st2.example/api/v1"
    token = Settings.resolve(env={"ST2_ACTION_AUTH_TOKEN": "tok"})
    assert token.headers() == {"X-Auth-Token": "tok"} and "tok" not in repr(token)
    assert Settings.resolve(env={"ST2_API_KEY": "k", "ST2_AUTH_TOKEN": "t"}).headers() == {"St2-Api-Key": "k"}
    with pytest.raises(ConfigError, match="http"):
        Client("127.0.0.1:9101")
    with Client(service.url, api_key=KEY) as client, pytest.raises(ConfigError, match="interval"):
        client.executions.wait("abc", interval=0)


def test_unreachable_server_is_a_connection_error() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", api_key=KEY, timeout=5) as nowhere, \
            pytest.raises(ApiConnectionError) as failed:
        nowhere.packs.list()
    assert "cannot reach the Squall API" in str(failed.value) and isinstance(failed.value.__cause__, httpx.HTTPError)


def test_an_error_without_a_faultstring_keeps_the_body_text() -> None:
    proxy = httpx.MockTransport(lambda request: httpx.Response(502, text="<h1>Bad Gateway</h1>"))
    with Client("http://squall", api_key=KEY, transport=proxy) as behind, pytest.raises(ApiError) as failed:
        behind.packs.list()
    assert failed.value.status == 502 and failed.value.faultstring == "<h1>Bad Gateway</h1>"
    login_page = httpx.MockTransport(lambda request: httpx.Response(200, text="<html>log in</html>"))
    with Client("http://squall", api_key=KEY, transport=login_page) as behind, pytest.raises(ResponseError) as odd:
        behind.executions.get("abc")
    assert "cannot read" in str(odd.value) and "log in" in str(odd.value)


# -- actions, packs, keys -------------------------------------------------------------------------------

def test_actions_and_packs(client: Client) -> None:
    actions = client.actions.list(pack="clt")
    assert [a.ref for a in actions] == ["clt.greet", "clt.slow"]
    greet = client.actions.get("clt.greet")
    assert greet.runner_type == "local-shell-cmd" and greet.parameters["who"]["required"] is True
    with pytest.raises(ApiError) as missing:
        client.actions.get("clt.nope")
    assert missing.value.status == 404 and "clt.nope" in missing.value.faultstring
    packs = {p.ref: p for p in client.packs.list()}
    assert packs["clt"].content["actions"] == 2 and packs["clt"].version == "1.0.0"
    assert client.packs.get("clt").content == packs["clt"].content
    with pytest.raises(ApiError) as no_pack:
        client.packs.get("nopack")
    assert no_pack.value.status == 404 and "clt" in no_pack.value.faultstring


def test_keys_round_trip_with_secrets_and_scopes(client: Client) -> None:
    stored = client.keys.set("app.token", "tok-42", secret=True, description="deploy token")
    assert stored.value == "********" and stored.secret and stored.encrypted and stored.scope == "st2kv.system"
    client.keys.set("app.name", "squall", ttl=3600)
    listed = {k.name: k for k in client.keys.list(prefix="app.")}
    assert {n: k.value for n, k in listed.items()} == {"app.token": "********", "app.name": "squall"}
    assert listed["app.name"].expire_timestamp is not None and listed["app.token"].description == "deploy token"
    assert client.keys.get("app.token").value == "********"
    clear = client.keys.get("app.token", decrypt=True)
    assert clear.value == "tok-42" and clear.secret and not clear.encrypted
    assert {k.name: k.value for k in client.keys.list(prefix="app.", decrypt=True)}["app.token"] == "tok-42"

    mine = client.keys.set("pref", "dark", scope="user", user="ann")
    assert mine.scope == "st2kv.user" and mine.user == "ann"
    assert client.keys.get("pref", scope="user", user="ann").value == "dark"
    visible = {(k.scope, k.name) for k in client.keys.list(scope="all", user="ann")}
    assert {("st2kv.system", "app.token"), ("st2kv.user", "pref")} <= visible
    with pytest.raises(ApiError) as system:
        client.keys.get("pref")  # not a system key
    assert system.value.status == 404

    with pytest.raises(ApiError) as bad_ttl:
        client.keys.set("x", "v", ttl=-1)
    assert bad_ttl.value.status == 400 and "ttl" in bad_ttl.value.faultstring
    client.keys.delete("app.name")
    with pytest.raises(ApiError) as gone:
        client.keys.get("app.name")
    assert gone.value.status == 404
    with pytest.raises(ApiError) as twice:
        client.keys.delete("app.name")
    assert twice.value.status == 404


# -- async: executions, rules and triggers, inquiries, aliases -------------------------------------------

async def test_async_run_wait_follow_and_errors(service: Service) -> None:
    async with AsyncClient(service.url, api_key=KEY) as client:
        done = await client.executions.run("core.local", {"cmd": "echo hi"}, wait=True, timeout=20)
        assert done.succeeded and done.stdout == "hi"
        failed = await client.executions.run("core.local", {"cmd": "exit 1"}, wait=True, timeout=20)
        assert failed.status == "failed"
        started = await client.executions.run("clt.greet", {"who": "zoe"})
        pieces = [piece async for piece in client.executions.follow(started.id, timeout=20, interval=0.2)]
        assert "".join(pieces) == "hello zoe\noops\n"
        assert (await client.health()).status == "ok"
    async with AsyncClient(service.url, api_key="nope") as bad:
        with pytest.raises(ApiError) as refused:
            await bad.executions.list()
        assert refused.value.status == 401 and "not valid" in refused.value.faultstring


async def test_async_rules_triggers_and_enforcements(service: Service) -> None:
    async with AsyncClient(service.url, api_key=KEY) as client:
        rule = await client.rules.get("clt.on_event")
        assert rule.trigger_type == "clt.event" and rule.action_ref == "clt.greet"
        assert "clt.on_event" in [r.ref for r in await client.rules.list()]
        with pytest.raises(ApiError) as missing:
            await client.rules.get("clt.nope")
        assert missing.value.status == 404
        types = {t.ref: t for t in await client.triggers.types()}
        assert types["clt.event"].payload_schema["properties"]["n"] == {"type": "integer"}

        fired = await client.triggers.emit("clt.event", {"n": 7}, trace_tag="client-test")
        assert fired.trigger == "clt.event" and fired.payload == {"n": 7} and fired.trace_tag == "client-test"
        assert fired.id in [i.id for i in await client.triggers.instances(trigger="clt.event")]
        with pytest.raises(ApiError) as invalid:
            await client.triggers.emit("clt.event", {"n": "seven"})
        assert invalid.value.status == 400 and "invalid at n" in invalid.value.faultstring

        enforcement = await _eventually(lambda: client.rules.enforcements(rule="clt.on_event"))
        assert enforcement[0].trigger_instance_id == fired.id and enforcement[0].rule == "clt.on_event"
        ran = await client.executions.wait(enforcement[0].execution_id, timeout=20)
        assert ran.stdout == "hello number 7"

        again = await client.triggers.re_emit(fired.id)
        assert again.id != fired.id and again.payload == {"n": 7, "__context": {"original_id": fired.id}}
        assert (await client.triggers.instance(again.id)).trigger == "clt.event"
        with pytest.raises(ApiError) as unknown:
            await client.triggers.re_emit("nope")
        assert unknown.value.status == 404
        await _eventually(lambda: client.rules.enforcements(rule="clt.on_event", trigger_instance=again.id))


async def _eventually(read: Any, seconds: float = 20) -> Any:
    """What `read()` returns once it is not empty (rules process an instance after it is stored)."""
    deadline = time.monotonic() + seconds
    while not (found := await read()):
        assert time.monotonic() < deadline, "nothing came"
        await asyncio.sleep(0.05)
    return found


async def test_async_inquiry_answered_through_the_client_resumes_the_workflow(service: Service) -> None:
    async with AsyncClient(service.url, api_key=KEY) as client:
        workflow = await client.executions.run("wf.approval")
        paused = await client.executions.wait(workflow.id, until={"paused"}, timeout=20, interval=0.1)
        assert paused.status == "paused", paused.result
        (inquiry,) = [i for i in await client.inquiries.list() if i.parent == workflow.id]
        assert inquiry.status == "pending" and inquiry.users == ["olivia"] and inquiry.ttl == 60
        (task,) = await client.executions.list(parent=workflow.id)  # the workflow's one task so far
        assert task.id == inquiry.id and task.runner == "inquirer" and task.status == "pending"
        assert (await client.inquiries.get(inquiry.id)).schema["properties"]["approved"]["type"] == "boolean"

        with pytest.raises(ApiError) as unfit:
            await client.inquiries.respond(inquiry.id, {"approved": "sure"}, user="olivia")
        assert unfit.value.status == 400 and "schema" in unfit.value.faultstring
        with pytest.raises(ApiError) as denied:
            await client.inquiries.respond(inquiry.id, {"approved": True}, user="eve")
        assert denied.value.status == 403

        answered = await client.inquiries.respond(inquiry.id, {"approved": True}, user="olivia")
        assert answered.status == "succeeded" and answered.response == {"approved": True}
        done = await client.executions.wait(workflow.id, timeout=20, interval=0.1)
        assert done.status == "succeeded", done.result
        assert done.result["output"] == {"answer": True}
        with pytest.raises(ApiError) as twice:
            await client.inquiries.respond(inquiry.id, {"approved": False}, user="olivia")
        assert twice.value.status == 409


async def test_async_aliases_list_match_and_execute(service: Service) -> None:
    async with AsyncClient(service.url, api_key=KEY) as client:
        aliases = {a.ref: a for a in await client.aliases.list()}
        assert aliases["clt.greet"].action_ref == "clt.greet"
        matched = await client.aliases.match("greet zoe")
        assert matched.alias.ref == "clt.greet" and matched.parameters == {"who": "zoe"}
        assert matched.representation == "greet {{who}}"
        with pytest.raises(ApiError) as nomatch:
            await client.aliases.match("fly to the moon")
        assert nomatch.value.status == 400 and "matched no patterns" in nomatch.value.faultstring

        ran = await client.aliases.execute("greet zoe", user="zed", channel="#ops")
        assert ran.message == "greeting zoe" and ran.alias.ref == "clt.greet"
        assert ran.execution.context["api_user"] == "zed" and ran.execution.context["source_channel"] == "#ops"
        done = await client.executions.wait(ran.execution.id, timeout=20)
        assert done.status in COMPLETED and done.stdout == "hello zoe"


def test_the_async_client_has_the_sync_client_s_methods() -> None:
    """The two clients are written twice (one awaits): the same resources, methods and parameters."""
    from squall_client import aio, client

    for name in client.__all__:
        sync_cls = getattr(client, name)
        async_cls = getattr(aio, "AsyncClient" if name == "Client" else name)
        methods = {m for m in vars(sync_cls) if not m.startswith("_") and callable(getattr(sync_cls, m))}
        assert methods == {m for m in vars(async_cls) if not m.startswith("_") and callable(getattr(async_cls, m))}
        for method in methods:
            sync_sig, async_sig = (inspect.signature(getattr(c, method)) for c in (sync_cls, async_cls))
            assert list(sync_sig.parameters.values()) == list(async_sig.parameters.values()), (name, method)
            awaited = getattr(async_cls, method)
            assert inspect.iscoroutinefunction(awaited) or inspect.isasyncgenfunction(awaited), (name, method)
    sync_client, async_client = Client("http://x"), AsyncClient("http://x")
    try:
        resources = {k: type(v).__name__ for k, v in vars(sync_client).items() if not k.startswith("_")}
        assert resources == {k: type(v).__name__ for k, v in vars(async_client).items() if not k.startswith("_")}
        assert {"executions", "actions", "packs", "keys", "rules", "triggers", "inquiries", "aliases"} < set(resources)
    finally:
        sync_client.close()
        asyncio.run(async_client.close())


def test_what_the_client_repeats_of_the_server_matches_it() -> None:
    """The client may not import the server, so it repeats a few of its constants; they must agree."""
    from bot.headers import INSTANCE_HEADER
    from engine.executions import COMPLETED as SERVER_COMPLETED
    from engine.executions import FAILED as SERVER_FAILED
    from squall_client import FAILED, _transport

    assert _transport.INSTANCE_HEADER == INSTANCE_HEADER
    assert (COMPLETED, FAILED) == (SERVER_COMPLETED, SERVER_FAILED)


# -- the client stands alone -----------------------------------------------------------------------------

#: Run in the test's interpreter: where httpx and what it requires (its distributions' requirements,
#: followed through, extras aside) have their top-level modules; httpx imports some only when used.
_HTTPX_MODULES = """
import importlib.util, json, re
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

wanted, todo = set(), ["httpx"]
while todo:
    try:
        dist = distribution(todo.pop())
    except PackageNotFoundError:  # a requirement for other Pythons (a marker) that is not installed
        continue
    if norm(dist.metadata["Name"]) in wanted:
        continue
    wanted.add(norm(dist.metadata["Name"]))
    todo += [re.split(r"[ ;<>=!~\\[(]", r, maxsplit=1)[0] for r in dist.requires or [] if "extra ==" not in r]
found = {}
for top, dists in packages_distributions().items():
    spec = importlib.util.find_spec(top) if top.isidentifier() else None
    if spec is not None and {norm(d) for d in dists} & wanted:
        found[top] = spec.submodule_search_locations[0] if spec.submodule_search_locations else spec.origin
print(json.dumps({"distributions": sorted(wanted), "modules": found}))
"""


#: Run in a Python with no site-packages (-I -S): the standard library, the copied package and httpx's
#: modules only. It talks to the real service, sync and async, so httpx's lazily imported parts load too.
_STANDALONE = """
import asyncio, importlib.util, json, sys
assert not [p for p in sys.path if "site-packages" in p], sys.path
url = sys.argv[3]
sys.path += sys.argv[1:3]
import squall_client
from squall_client import ApiError, AsyncClient, Client

with Client(url, api_key="wrong") as client:
    health = client.health().status
    try:
        client.packs.list()
    except ApiError as exc:
        status = exc.status

async def main():
    async with AsyncClient(url, api_key="wrong") as client:
        return (await client.health()).status

print(json.dumps({"file": squall_client.__file__, "health": [health, asyncio.run(main())], "status": status,
                  "modules": sorted(sys.modules),
                  "findable": {n: importlib.util.find_spec(n) is not None for n in ("bot", "engine", "fastapi")}}))
"""


def test_the_client_imports_without_the_server(service: Service, tmp_path: Path) -> None:
    probe = subprocess.run([sys.executable, "-I", "-c", _HTTPX_MODULES], capture_output=True, text=True, check=True)
    deps = tmp_path / "deps"
    deps.mkdir()
    found = json.loads(probe.stdout)
    assert {"httpx", "httpcore"} <= set(found["distributions"])
    for name, path in found["modules"].items():
        (deps / Path(path).name).symlink_to(path)
        assert name not in {"fastapi", "sqlalchemy", "bot", "engine"}
    package = tmp_path / "pkg"
    shutil.copytree(Path(squall_client.__file__).parent, package / "squall_client",
                    ignore=shutil.ignore_patterns("__pycache__"))

    run = subprocess.run([sys.executable, "-I", "-S", "-c", _STANDALONE, str(package), str(deps), service.url],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["file"] == str(package / "squall_client" / "__init__.py")
    assert result["health"] == ["ok", "ok"] and result["status"] == 401
    assert result["findable"] == {"bot": False, "engine": False, "fastapi": False}  # the isolation is real
    tops = {name.partition(".")[0] for name in result["modules"]}
    assert not tops & {"fastapi", "starlette", "pydantic", "sqlalchemy", "uvicorn", "yaml", "jinja2",
                       "bot", "engine", "aliases", "adapters"}
