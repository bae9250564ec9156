"""Executions end to end (spec §10): records, statuses, secrets, cancel, re-run, recovery, waiting.

Everything goes through a started `Squall`, so what is tested is what runs in production: the
commands really run under bash and the records really go through SQLite.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import gc
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from bot.service import reload
from engine.config import Config, load_config
from engine.executions import (
    COMPLETED,
    ExecutionNotFound,
    ExecutionStateError,
    new_id,
)
from engine.packs import UnknownAction
from engine.parameters import MASK, ParameterError
from engine.storage import Store, utcnow
from tests.conftest import commit_groups, write

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@pytest.fixture
def home(home: Path) -> Path:
    """The conftest home plus a pack with a secret parameter and templated defaults."""
    pack = home / "packs" / "exectest"
    write(pack / "pack.yaml", """
        name: exectest
        description: execution tests
        version: 0.1.0
        author: tests
    """)
    # The command prints the token (to be scrubbed) and writes its fingerprint, so the test can
    # prove the command got the real value without the value being stored anywhere.
    write(pack / "actions" / "secret_cmd.yaml", """
        name: secret_cmd
        runner_type: local-shell-cmd
        description: echoes and fingerprints a token
        parameters:
          token:
            type: string
            secret: true
            required: true
          out:
            type: string
            required: true
          cmd:
            immutable: true
            default: |-
              echo "token={{token}}"; printf '%s' "{{token}}" | sha256sum | cut -d' ' -f1 > "{{out}}"
    """)
    write(pack / "actions" / "defaults.yaml", """
        name: defaults
        runner_type: local-shell-cmd
        description: templated and plain defaults
        parameters:
          who:
            type: string
            default: world
          greeting:
            type: string
            default: "Hello {{who}}"
          count:
            type: integer
            default: 3
          cmd:
            immutable: true
            default: 'echo "{{greeting}} x{{count}}"'
    """)
    return home


def _db_path(config: Config) -> Path:
    return Path(config.database_url.removeprefix("sqlite:///"))


async def until(check: Callable[[], Awaitable[bool]], what: str, limit: float = 20.0) -> None:
    """Poll until `check()` holds (a guard against hanging, not an assertion about time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.02)


async def status_of(app: Squall, execution_id: str) -> str:
    return (await app.executions.get(execution_id))["status"]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


# -- records and statuses -------------------------------------------------------------------------

async def test_public_record_shape_for_a_noop_run(squall: Squall) -> None:
    requested = await squall.executions.request("core.noop", context={"user": "ann", "source_channel": "ops"})
    assert requested["status"] == "requested"
    assert requested["end_timestamp"] is None
    assert [e["status"] for e in requested["log"]] == ["requested"]

    done = await squall.executions.wait(requested["id"], timeout=30)
    assert {"id", "action", "runner", "status", "parameters", "result", "context", "start_timestamp",
            "end_timestamp", "log"} <= set(done)
    assert done["id"] == requested["id"]
    assert re.fullmatch(r"[0-9a-f]{24}", done["id"])
    assert done["action"] == "core.noop"
    assert done["runner"] == "noop"
    assert done["status"] == "succeeded"
    assert done["parameters"] == {}
    assert done["result"] == {"failed": False, "succeeded": True, "return_code": 0}
    assert done["context"]["user"] == "ann"
    assert done["context"]["pack"] == "core"
    assert done["context"]["source_channel"] == "ops"
    assert ISO_Z.match(done["start_timestamp"]) and ISO_Z.match(done["end_timestamp"])
    assert done["end_timestamp"] >= done["start_timestamp"]
    assert done["elapsed_seconds"] >= 0
    assert [e["status"] for e in done["log"]] == ["requested", "scheduled", "running", "succeeded"]
    assert all(ISO_Z.match(e["timestamp"]) for e in done["log"])
    assert done["runner_info"] == {"hostname": socket.gethostname(), "pid": os.getpid(),
                                   **{k: squall.executions.owner[k] for k in ("started", "boot_id", "pid_ns")}}

    assert await squall.executions.get(done["id"]) == done
    listed = await squall.executions.list(action="core.noop")
    assert [r["id"] for r in listed] == [done["id"]]


class _Leftover:
    """A node of a reference cycle: what an earlier test left behind, or what a run would leak."""

    def __init__(self) -> None:
        self.cycle = self


async def _cyclic_garbage(squall: Squall, ref: str, parameters: dict[str, Any], runs: int,
                          midway: Callable[[], object] = lambda: None) -> collections.Counter[str]:
    """The kinds (and how many of each) of the garbage in reference cycles that `runs` runs of `ref` leave,
    found by one collection after them with the automatic ones off; `midway` is called halfway through.

    Every object alive before the first run is kept alive until that collection, so only what the runs made
    can be garbage then. What earlier tests left in the process is let go at moments of its own, within the
    runs too: a closed PostgreSQL store's engine (kept alive by process-wide template caches until they evict
    its templates) was counted, with its compiled statements and their tuples, dicts and lists, against runs
    on SQLite that compile no SQL."""
    earlier = gc.get_objects()
    try:
        for _ in range(3):  # first-time caches are not garbage
            await squall.executions.wait((await squall.executions.request(ref, parameters))["id"], timeout=30)
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds stays in gc.garbage, to be looked at
        try:
            for n in range(runs):
                if n == runs // 2:
                    midway()
                await squall.executions.wait((await squall.executions.request(ref, parameters))["id"], timeout=30)
            gc.collect()
            return collections.Counter(type(thing).__qualname__ for thing in gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    finally:
        del earlier


@pytest.mark.parametrize(("ref", "parameters"), [("core.noop", {}), ("core.echo", {"message": "hi"})])
async def test_finished_runs_leave_nothing_in_reference_cycles(squall: Squall, ref: str,
                                                               parameters: dict[str, Any]) -> None:
    """What a run builds is freed by reference counting once it ends. Garbage in cycles is left to
    the collector, whose collections stop the event loop for milliseconds (the chat's p99). core.echo
    renders a `cmd` template."""
    runs = 30
    kinds = await _cyclic_garbage(squall, ref, parameters, runs)
    assert not [kind for kind, count in kinds.items() if count >= runs], kinds


async def test_the_garbage_counted_is_what_the_runs_made_not_what_was_there_before(squall: Squall) -> None:
    """Objects made before the runs and let go while they run (an earlier test's, when a cache evicts them
    or a thread ends) are not counted as the runs' garbage; a cycle made and dropped during the runs is."""
    before = [_Leftover() for _ in range(40)]
    kinds = await _cyclic_garbage(squall, "core.noop", {}, 30, midway=before.clear)
    assert kinds["_Leftover"] == 0, kinds
    kinds = await _cyclic_garbage(squall, "core.noop", {}, 30, midway=lambda: [_Leftover() for _ in range(40)])
    assert kinds["_Leftover"] == 40, kinds


def test_ids_are_unique_and_a_forked_child_makes_its_own() -> None:
    """Ids are made without a system call (Python's generator): a forked child must not repeat its
    parent's random part, or two processes could name two executions alike in one microsecond."""
    ids = [new_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[0-9a-f]{24}", i) for i in ids)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.write(write, "".join(new_id()[14:] for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    with os.fdopen(read) as pipe:
        theirs = pipe.read()
    ours = "".join(new_id()[14:] for _ in range(50))
    assert len(theirs) == len(ours) == 500 and theirs != ours


async def test_context_user_defaults_and_pack_cannot_be_forged(squall: Squall) -> None:
    record = await squall.executions.request("core.noop", context={"pack": "forged"})
    assert record["context"]["pack"] == "core"
    assert record["context"]["user"]


@pytest.mark.parametrize(("cmd", "status", "code"), [
    ("echo out; echo err >&2", "succeeded", 0),
    ("exit 1", "failed", 1),
    ("exit 42", "failed", 42),
])
async def test_statuses_of_shell_commands(squall: Squall, cmd: str, status: str, code: int) -> None:
    record = await squall.executions.request("core.local", {"cmd": cmd})
    done = await squall.executions.wait(record["id"], timeout=30)
    assert done["status"] == status
    assert done["result"]["return_code"] == code
    assert done["result"]["succeeded"] is (code == 0)
    assert done["result"]["failed"] is (code != 0)
    assert [e["status"] for e in done["log"]] == ["requested", "scheduled", "running", status]
    if code == 0:
        assert done["result"]["stdout"] == "out"
        assert done["result"]["stderr"] == "err"
    assert done["parameters"] == {"cmd": cmd}


async def test_timeout_status(squall: Squall) -> None:
    record = await squall.executions.request("core.local", {"cmd": "sleep 20", "timeout": 1})
    done = await squall.executions.wait(record["id"], timeout=30)
    assert done["status"] == "timeout"
    assert done["status"] in COMPLETED
    assert done["parameters"] == {"cmd": "sleep 20", "timeout": 1}


async def test_bad_requests_are_refused_and_nothing_is_stored(squall: Squall) -> None:
    with pytest.raises(UnknownAction):
        await squall.executions.request("core.nope")
    with pytest.raises(ParameterError, match="cmd"):
        await squall.executions.request("core.local", {})
    with pytest.raises(ParameterError, match="unknown parameter"):
        await squall.executions.request("core.noop", {"surprise": 1})
    with pytest.raises(ParameterError, match="immutable"):
        await squall.executions.request("core.local", {"cmd": "true", "sudo": True})
    assert await squall.executions.list() == []


async def test_a_request_and_its_claim_share_a_commit_and_a_refused_one_leaves_nothing(squall: Squall) -> None:
    """This process's executor claims an action's request in the transaction that stores it; a
    request refused in that transaction leaves its claim nothing to run and no slot held."""
    with commit_groups(squall) as groups:
        requested = await squall.executions.request("core.local", {"cmd": "true"})
        await squall.executions.wait(requested["id"], timeout=30)
    assert ["_store", "_claim"] in groups  # one commit stores and claims it
    for _ in range(80):  # more than the executor's 64 slots: a leaked slot would stall the next run
        with pytest.raises(ParameterError, match="unknown parameter"):
            await squall.executions.request("core.local", {"cmd": "true", "surprise": 1})
    for _ in range(200):  # the last one's task ends a loop turn after its claim found nothing
        if not squall.executor.running:
            break
        await asyncio.sleep(0.01)
    assert not squall.executor.running
    again = await squall.executions.request("core.local", {"cmd": "true"})
    assert (await squall.executions.wait(again["id"], timeout=30))["status"] == "succeeded"
    assert len(await squall.executions.list()) == 2


async def test_a_noop_run_ends_in_the_write_that_stores_its_request(squall: Squall) -> None:
    """core.noop has nothing to wait for and no effect outside the store: it is claimed, run and ended
    in the call that stores it (one row written, one commit), and what is stored reads as any run's
    (requested, scheduled, running, the end). Under a concurrency policy it waits for a claim instead."""
    with commit_groups(squall) as groups:
        requested = await squall.executions.request("core.noop")
        done = await squall.executions.wait(requested["id"], timeout=30)
    assert groups == [["_store"]]
    assert requested["status"] == "requested"  # what was asked for, as `request` always answers
    assert done["status"] == "succeeded" and done["result"] == {"failed": False, "succeeded": True, "return_code": 0}
    assert [entry["status"] for entry in done["log"]] == ["requested", "scheduled", "running", "succeeded"]
    stored = squall.store.get_execution(requested["id"])
    assert stored["status"] == "succeeded" and stored["runner_info"]["pid"] == os.getpid()

    canceled = await squall.executions.request("core.noop", delay=30)  # canceled before its claim: never run
    await squall.executions.cancel(canceled["id"])
    assert (await squall.executions.wait(canceled["id"], timeout=30))["status"] == "canceled"


async def test_parameters_show_supplied_and_templated_defaults_only(squall: Squall) -> None:
    plain = await squall.executions.wait((await squall.executions.request("exectest.defaults"))["id"], timeout=30)
    assert plain["status"] == "succeeded"
    assert plain["result"]["stdout"] == "Hello world x3"
    # `who`, `count` and the runner's own defaults (timeout, sudo, kwarg_op) are not shown.
    assert plain["parameters"] == {"greeting": "Hello world", "cmd": 'echo "Hello world x3"'}

    record = await squall.executions.request("exectest.defaults", {"who": "Ann", "count": 5})
    done = await squall.executions.wait(record["id"], timeout=30)
    assert done["result"]["stdout"] == "Hello Ann x5"
    assert done["parameters"] == {"who": "Ann", "greeting": "Hello Ann", "count": 5,
                                  "cmd": 'echo "Hello Ann x5"'}


async def test_get_by_id_prefix_and_unknown_ids(squall: Squall) -> None:
    record = await squall.executions.request("core.noop")
    await squall.executions.wait(record["id"], timeout=30)
    assert (await squall.executions.get(record["id"][:20]))["id"] == record["id"]
    with pytest.raises(ExecutionNotFound):
        await squall.executions.get("ffffffffffffffffffffffff")
    with pytest.raises(ExecutionNotFound):
        await squall.executions.cancel("ffffffffffffffffffffffff")


async def test_on_finished_listeners_get_the_public_record(squall: Squall) -> None:
    seen: list[dict[str, Any]] = []
    squall.executions.on_finished(seen.append)
    record = await squall.executions.request("core.local", {"cmd": "echo listened"})
    done = await squall.executions.wait(record["id"], timeout=30)
    assert seen == [done]


# -- secrets --------------------------------------------------------------------------------------

def _assert_not_in_database_files(config: Config, secret: str) -> None:
    db = _db_path(config)
    files = [p for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-journal")) if p.exists()]
    assert db in files
    needle = secret.encode()
    for path in files:
        assert needle not in path.read_bytes(), f"the secret is in {path.name}"


async def test_secret_parameter_is_masked_scrubbed_and_never_stored(config: Config, tmp_path: Path) -> None:
    secret = f"tok-{uuid.uuid4().hex}"
    out = tmp_path / "fingerprint"
    app = await Squall.start(config)
    try:
        record = await app.executions.request("exectest.secret_cmd", {"token": secret, "out": str(out)})
        assert record["parameters"]["token"] == MASK
        done = await app.executions.wait(record["id"], timeout=30)
        assert done["status"] == "succeeded"
        assert done["parameters"]["token"] == MASK
        assert done["parameters"]["out"] == str(out)
        assert secret not in done["parameters"]["cmd"]
        assert MASK in done["parameters"]["cmd"]
        assert done["result"]["stdout"] == f"token={MASK}"
        assert secret not in json.dumps(done)
        assert secret not in json.dumps(await app.executions.get(record["id"]))
        assert secret not in json.dumps(await app.executions.list())
        # While Squall runs, the newest pages are in the write-ahead log: look there too.
        assert _db_path(config).with_name("squall.db-wal").exists()
        _assert_not_in_database_files(config, secret)
    finally:
        await app.close()
    # The command did get the real value.
    assert out.read_text().strip() == _sha(secret)
    _assert_not_in_database_files(config, secret)


async def test_queued_secret_is_sealed_until_another_instance_runs_it(config: Config, tmp_path: Path) -> None:
    secret = f"queued-{uuid.uuid4().hex}"
    out = tmp_path / "fingerprint"
    requester = await Squall.start(config)
    requester.executions.executor = None
    try:
        record = await requester.executions.request("exectest.secret_cmd", {"token": secret, "out": str(out)})
        stored = await requester.db(requester.store.get_execution, record["id"])
        assert stored["status"] == "requested"
        assert stored["sealed"] and secret not in stored["sealed"]
        assert secret not in json.dumps(stored, default=str)
    finally:
        await requester.close()
    _assert_not_in_database_files(config, secret)

    runner = await Squall.start(config, recover=True)
    try:
        done = await runner.executions.wait(record["id"], timeout=30)
        assert done["status"] == "succeeded"
        assert done["result"]["stdout"] == f"token={MASK}"
    finally:
        await runner.close()
    assert out.read_text().strip() == _sha(secret)
    _assert_not_in_database_files(config, secret)


async def test_a_secret_leaking_into_stderr_and_errors_is_scrubbed(squall: Squall, tmp_path: Path) -> None:
    secret = f"err-{uuid.uuid4().hex}"
    out = tmp_path / "no-such-dir" / "fingerprint"  # the redirection fails, naming the path
    record = await squall.executions.request("exectest.secret_cmd", {"token": secret, "out": str(out)})
    done = await squall.executions.wait(record["id"], timeout=30)
    assert done["status"] == "failed"
    assert secret not in json.dumps(done)


# -- cancel ---------------------------------------------------------------------------------------

async def test_cancel_a_requested_execution(squall: Squall) -> None:
    squall.executions.executor = None
    record = await squall.executions.request("core.local", {"cmd": "echo never"})
    assert record["status"] == "requested"
    canceled = await squall.executions.cancel(record["id"])
    assert canceled["status"] == "canceled"
    assert canceled["end_timestamp"] is not None
    assert [e["status"] for e in canceled["log"]] == ["requested", "canceled"]
    assert (await squall.executions.wait(record["id"], timeout=5))["status"] == "canceled"
    # An executor that gets it afterwards does not run it.
    await squall.executions.run(record["id"])
    assert await status_of(squall, record["id"]) == "canceled"
    with pytest.raises(ExecutionStateError):
        await squall.executions.cancel(record["id"])


async def test_cancel_a_running_execution_kills_the_command(squall: Squall, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    record = await squall.executions.request("core.local", {"cmd": f"echo $$ > {pid_file}; exec sleep 30"})

    async def started() -> bool:
        return pid_file.exists() and pid_file.read_text().strip() != ""

    await until(started, "the command to start")
    assert await status_of(squall, record["id"]) == "running"
    pid = int(pid_file.read_text())

    waiter = asyncio.ensure_future(squall.executions.wait(record["id"], timeout=30))
    canceled = await squall.executions.cancel(record["id"])
    assert canceled["status"] == "canceled"
    done = await waiter
    assert done["status"] == "canceled"
    assert [e["status"] for e in done["log"]] == ["requested", "scheduled", "running", "canceling", "canceled"]
    assert done["end_timestamp"] is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_cancel_of_a_finished_execution_raises(squall: Squall) -> None:
    record = await squall.executions.request("core.noop")
    done = await squall.executions.wait(record["id"], timeout=30)
    assert done["status"] == "succeeded"
    with pytest.raises(ExecutionStateError, match="succeeded"):
        await squall.executions.cancel(record["id"])
    assert await status_of(squall, record["id"]) == "succeeded"


async def test_cancel_of_an_execution_running_in_another_instance(config: Config) -> None:
    owner = await Squall.start(config)
    other = await Squall.start(config)
    other.executions.executor = None
    try:
        record = await owner.executions.request("core.local", {"cmd": "sleep 30"})

        async def running() -> bool:
            return await status_of(owner, record["id"]) == "running"

        await until(running, "the execution to run")
        answer = await other.executions.cancel(record["id"])
        assert answer["status"] == "canceling"
        waiter = asyncio.ensure_future(other.executions.wait(record["id"], timeout=30))
        await owner.executions.poll()  # the owner notices the request and stops it
        done = await waiter
        assert done["status"] == "canceled"
    finally:
        await other.close()
        await owner.close()


# -- re-run ---------------------------------------------------------------------------------------

async def test_rerun_same_action_and_parameters_with_overrides(squall: Squall) -> None:
    first = await squall.executions.request("core.local", {"cmd": "echo one", "timeout": 30},
                                            context={"user": "ann"})
    first = await squall.executions.wait(first["id"], timeout=30)

    again = await squall.executions.rerun(first["id"])
    assert again["id"] != first["id"]
    assert again["action"] == "core.local"
    assert again["parameters"] == first["parameters"]
    assert again["context"]["re-run"] == {"ref": first["id"]}
    assert again["context"]["user"] == "ann"
    assert again["context"]["pack"] == "core"
    assert (await squall.executions.wait(again["id"], timeout=30))["result"]["stdout"] == "one"

    changed = await squall.executions.rerun(first["id"], {"cmd": "echo two"}, {"user": "bob"})
    assert changed["parameters"] == {"cmd": "echo two", "timeout": 30}
    assert changed["context"]["user"] == "bob"
    assert changed["context"]["re-run"] == {"ref": first["id"]}
    assert (await squall.executions.wait(changed["id"], timeout=30))["result"]["stdout"] == "two"


async def test_a_rerun_someone_asks_for_is_theirs_and_a_retry_keeps_the_original_origin(squall: Squall) -> None:
    """A person's re-run (the web's, the API's) is their request: the original's user, source and chat
    thread are not carried over, or the web's re-run of a chat command would post into that thread.
    A retry policy's re-run (no context) is the same request again: its result goes where the first's did."""
    chat = {"adapter": "slack", "channel": "C1", "thread": "111.2", "alias": "demo.greet"}
    first = await squall.executions.request("core.noop", context={
        "user": "ann", "api_user": "ann", "source": "chat", "source_channel": "C1", "chat": chat,
        "action_alias_ref": {"id": "demo.greet", "name": "greet"}, "ticket": "OPS-1"})
    await squall.executions.wait(first["id"], timeout=30)

    theirs = await squall.executions.rerun(first["id"], context={"user": "vic", "source": "web"})
    assert theirs["context"]["user"] == "vic" and theirs["context"]["source"] == "web"
    assert not {"chat", "api_user", "source_channel", "action_alias_ref"} & set(theirs["context"])
    assert theirs["context"]["ticket"] == "OPS-1"  # what the request itself carried stays

    retried = await squall.executions.rerun(first["id"])
    assert retried["context"]["chat"] == chat and retried["context"]["user"] == "ann"


async def test_rerun_recomputes_templated_defaults(squall: Squall) -> None:
    first = await squall.executions.request("exectest.defaults", {"who": "Ann"})
    await squall.executions.wait(first["id"], timeout=30)
    again = await squall.executions.rerun(first["id"], {"who": "Bob"})
    done = await squall.executions.wait(again["id"], timeout=30)
    assert done["result"]["stdout"] == "Hello Bob x3"
    assert done["parameters"]["greeting"] == "Hello Bob"


async def test_rerun_renders_supplied_templates_again_and_safely(squall: Squall, tmp_path: Path) -> None:
    await squall.db(squall.datastore.set, "msg", "first")
    first = await squall.executions.request("core.local", {"cmd": 'echo "{{ st2kv.system.msg }}"'}, render=True)
    assert (await squall.executions.wait(first["id"], timeout=30))["result"]["stdout"] == "first"

    # A value that would run a command if it were pasted into the shell text.
    nasty = f'"; touch {tmp_path}/pwned; echo " and more'
    await squall.db(squall.datastore.set, "msg", nasty)
    again = await squall.executions.rerun(first["id"])
    done = await squall.executions.wait(again["id"], timeout=30)
    assert done["status"] == "succeeded"
    assert done["result"]["stdout"] == nasty
    assert not (tmp_path / "pwned").exists()
    # Re-running the run that rendered the nasty value is just as safe.
    third = await squall.executions.rerun(again["id"])
    assert (await squall.executions.wait(third["id"], timeout=30))["result"]["stdout"] == nasty
    assert not (tmp_path / "pwned").exists()


async def test_rerun_keeps_supplied_object_templates_as_objects(squall: Squall) -> None:
    env = {"GREETING": "{{ st2kv.system.word }}"}
    await squall.db(squall.datastore.set, "word", "hi")
    first = await squall.executions.request("core.local", {"cmd": 'echo "$GREETING"', "env": env}, render=["env"])
    assert (await squall.executions.wait(first["id"], timeout=30))["result"]["stdout"] == "hi"
    await squall.db(squall.datastore.set, "word", "bye")
    again = await squall.executions.rerun(first["id"])
    done = await squall.executions.wait(again["id"], timeout=30)
    assert done["status"] == "succeeded"
    assert done["result"]["stdout"] == "bye"
    assert done["parameters"]["env"] == {"GREETING": "bye"}


async def test_rerun_of_an_execution_with_a_secret_uses_the_real_secret(config: Config, tmp_path: Path) -> None:
    secret = f"rerun-{uuid.uuid4().hex}"
    first_out, second_out, third_out = tmp_path / "one", tmp_path / "two", tmp_path / "three"
    app = await Squall.start(config)
    try:
        first = await app.executions.request("exectest.secret_cmd", {"token": secret, "out": str(first_out)})
        assert (await app.executions.wait(first["id"], timeout=30))["status"] == "succeeded"

        again = await app.executions.rerun(first["id"], {"out": str(second_out)})
        assert again["parameters"]["token"] == MASK
        assert again["context"]["re-run"] == {"ref": first["id"]}
        done = await app.executions.wait(again["id"], timeout=30)
        assert done["status"] == "succeeded"
        assert done["result"]["stdout"] == f"token={MASK}"

        # Overriding the secret itself: the command gets the new one.
        new_secret = f"fresh-{uuid.uuid4().hex}"
        third = await app.executions.rerun(first["id"], {"token": new_secret, "out": str(third_out)})
        done = await app.executions.wait(third["id"], timeout=30)
        assert done["status"] == "succeeded"
        assert new_secret not in json.dumps(done)
    finally:
        await app.close()
    assert first_out.read_text().strip() == _sha(secret)
    assert second_out.read_text().strip() == _sha(secret)
    assert third_out.read_text().strip() == _sha(new_secret)
    _assert_not_in_database_files(config, secret)
    _assert_not_in_database_files(config, new_secret)


# -- recovery -------------------------------------------------------------------------------------

def _running_record(action: str, runner: str, runner_info: dict[str, Any]) -> dict[str, Any]:
    now = utcnow()
    return {
        "id": new_id(), "action": action, "runner": runner, "status": "running", "parameters": {},
        "spec": {"values": {}, "templates": {}}, "sealed": None, "result": None,
        "context": {"user": "tester", "pack": "core"},
        "log": [{"status": "scheduled", "timestamp": now.isoformat()},
                {"status": "running", "timestamp": now.isoformat()}],
        "parent": None, "runner_info": runner_info, "start_timestamp": now, "end_timestamp": None,
    }


async def test_recovery_abandons_dead_runs_and_starts_requested_ones(config: Config) -> None:
    host = socket.gethostname()
    queued_app = await Squall.start(config)
    queued_app.executions.executor = None
    try:
        queued = await queued_app.executions.request("core.local", {"cmd": "echo recovered"})
    finally:
        await queued_app.close()

    live = subprocess.Popen(["sleep", "60"])
    try:
        dead = _running_record("core.noop", "noop", {"hostname": host, "pid": _dead_pid()})
        alive = _running_record("core.noop", "noop", {"hostname": host, "pid": live.pid})
        elsewhere = _running_record("core.noop", "noop", {"hostname": f"not-{host}", "pid": _dead_pid()})
        store = Store.open(config.database_url)
        try:
            for record in (dead, alive, elsewhere):
                store.insert_execution(record)
        finally:
            store.close()

        app = await Squall.start(config, recover=True)
        try:
            abandoned = await app.executions.get(dead["id"])
            assert abandoned["status"] == "abandoned"
            assert "abandoned" in abandoned["result"]["error"]
            assert abandoned["end_timestamp"] is not None
            assert [e["status"] for e in abandoned["log"]][-1] == "abandoned"

            started = await app.executions.wait(queued["id"], timeout=30)
            assert started["status"] == "succeeded"
            assert started["result"]["stdout"] == "recovered"

            assert await status_of(app, alive["id"]) == "running"
            # SQLite is one machine: a host name recorded before a restart (a container's) plays no part.
            assert await status_of(app, elsewhere["id"]) == "abandoned"
        finally:
            await app.close()
    finally:
        live.kill()
        live.wait()


async def test_start_without_recover_leaves_records_alone(config: Config) -> None:
    dead = _running_record("core.noop", "noop", {"hostname": socket.gethostname(), "pid": _dead_pid()})
    store = Store.open(config.database_url)
    try:
        store.insert_execution(dead)
    finally:
        store.close()
    app = await Squall.start(config)
    try:
        assert await status_of(app, dead["id"]) == "running"
        outcome = await app.executions.recover()
        assert outcome == {"abandoned": 1, "started": 0}
        assert await status_of(app, dead["id"]) == "abandoned"
    finally:
        await app.close()


async def test_the_poll_ends_runs_whose_owner_died_as_recovery_does(
        config: Config, caplog: pytest.LogCaptureFixture) -> None:
    """A `squall run` killed (SIGKILL, an OOM kill) leaves its execution `running`: the serve's periodic
    sweep ends it as `recover()` does at start, with the same status and error, tells its listeners, and
    says it in the log at INFO with why, as every abandoned run is (docs/observability.md). Runs of live
    owners and the serve's own runs are left alone, and so is a worker's job, which `reap_stalled` ends by
    the worker's heartbeat (telling its thread the worker stopped answering)."""
    caplog.set_level(logging.INFO, logger="engine.executions")
    host = socket.gethostname()
    live = subprocess.Popen(["sleep", "60"])
    app = await Squall.start(config)
    try:
        dead = _running_record("core.noop", "noop", {"hostname": host, "pid": _dead_pid()})
        alive = _running_record("core.noop", "noop", {"hostname": host, "pid": live.pid})
        job = _running_record("core.noop", "noop", {"hostname": host, "pid": _dead_pid(), "job_id": 7,
                                                    "worker": "w1"})
        for record in (dead, alive, job):
            await app.db(app.db.store.insert_execution, record)
        mine = await app.executions.request("core.local", {"cmd": "sleep 30"})

        async def running() -> bool:
            return await status_of(app, mine["id"]) == "running"

        await until(running, "the serve's own execution to run")
        heard = asyncio.ensure_future(app.executions.wait(dead["id"], timeout=30))
        for _ in range(200):  # the sweep comes every few polls
            await app.executions.poll()
            if await status_of(app, dead["id"]) != "running":
                break
        ended = await app.executions.get(dead["id"])
        assert ended["status"] == "abandoned"
        assert ended["result"]["error"] == "Squall stopped while this execution was running; it was abandoned"
        assert ended["end_timestamp"] is not None and ended["log"][-1]["status"] == "abandoned"
        assert (await heard)["status"] == "abandoned"
        said = [r.getMessage() for r in caplog.records if dead["id"] in r.getMessage()]
        assert said == [f"core.noop abandoned (execution {dead['id']}): Squall stopped while this execution was "
                        "running; it was abandoned"]
        assert await status_of(app, alive["id"]) == "running"
        assert await status_of(app, mine["id"]) == "running"
        assert await status_of(app, job["id"]) == "running"
    finally:
        await app.close()
        live.kill()
        live.wait()


async def test_shutdown_records_running_executions_as_abandoned(config: Config) -> None:
    app = await Squall.start(config)
    record = await app.executions.request("core.local", {"cmd": "sleep 30"})

    async def running() -> bool:
        return await status_of(app, record["id"]) == "running"

    await until(running, "the execution to run")
    await app.close()
    store = Store.open(config.database_url)
    try:
        assert store.get_execution(record["id"])["status"] == "abandoned"
    finally:
        store.close()


async def test_shutdown_while_an_execution_is_being_claimed_leaves_nothing_running(config: Config) -> None:
    app = await Squall.start(config)
    record = await app.executions.request("core.local", {"cmd": "sleep 30"})
    await asyncio.sleep(0)  # the executor's task starts and asks the database thread to claim it
    await app.close()
    store = Store.open(config.database_url)
    try:
        assert store.get_execution(record["id"])["status"] in ("requested", "abandoned")
    finally:
        store.close()


# -- waiting across instances ------------------------------------------------------------------

async def test_wait_returns_an_execution_run_by_another_instance(config: Config) -> None:
    requester = await Squall.start(config)
    worker = await Squall.start(config)
    requester.executions.executor = None
    try:
        record = await requester.executions.request("core.local", {"cmd": "echo elsewhere"})
        waiter = asyncio.ensure_future(requester.executions.wait(record["id"], timeout=30))
        await asyncio.sleep(0)
        assert not waiter.done()
        assert await status_of(worker, record["id"]) == "requested"
        await worker.executions.poll()
        done = await waiter
        assert done["status"] == "succeeded"
        assert done["result"]["stdout"] == "elsewhere"
        assert done["runner_info"]["pid"] == os.getpid()
    finally:
        await worker.close()
        await requester.close()


async def test_a_request_for_a_pack_installed_after_the_server_loaded_its_packs_runs(config: Config) -> None:
    """The CLI's `--async` request can name an action of a pack installed after `squall serve` last
    loaded its packs (the install landed between its look at the pack files and its poll): the
    server loads them again instead of failing the request; an action that is gone still fails."""
    server = await Squall.start(config)
    server.executions.reload_packs = functools.partial(reload, server)
    try:
        write(config.pack_paths[0] / "late" / "pack.yaml", "name: late\nversion: 0.1.0\nauthor: t\ndescription: d\n")
        write(config.pack_paths[0] / "late" / "actions" / "hello.yaml", """
            name: hello
            runner_type: local-shell-cmd
            parameters:
              cmd: {default: echo late pack}
        """)
        write(config.pack_paths[0] / "late" / "actions" / "gone.yaml", "name: gone\nrunner_type: noop\n")
        requester = await Squall.start(config)
        requester.executions.executor = None
        try:
            hello = await requester.executions.request("late.hello")
            gone = await requester.executions.request("late.gone")
        finally:
            await requester.close()
        assert "late.hello" not in server.registry.actions
        (config.pack_paths[0] / "late" / "actions" / "gone.yaml").unlink()
        await server.executions.poll()
        done = await server.executions.wait(hello["id"], timeout=30)
        assert done["status"] == "succeeded", done
        assert done["result"]["stdout"] == "late pack"
        failed = await server.executions.wait(gone["id"], timeout=30)
        assert failed["status"] == "failed"
        assert "late.gone" in failed["result"]["error"]
    finally:
        await server.close()


async def test_wait_times_out_for_an_execution_nobody_runs(squall: Squall) -> None:
    squall.executions.executor = None
    record = await squall.executions.request("core.noop")
    with pytest.raises(TimeoutError):
        await squall.executions.wait(record["id"], timeout=0.2)
    assert await status_of(squall, record["id"]) == "requested"


# -- the executor ---------------------------------------------------------------------------------

async def test_local_executor_limits_concurrency(home: Path) -> None:
    write(home / "config.yml", """
        database:
          url: sqlite:///data/squall.db
        packs:
          paths: [packs]
        executor:
          max_concurrency: 2
    """)
    app = await Squall.start(load_config(home / "config.yml"))
    snapshots: list[dict[str, str]] = []
    try:
        ids = [(await app.executions.request("core.local", {"cmd": "sleep 30"}))["id"] for _ in range(3)]

        async def snapshot() -> dict[str, str]:
            records = await app.executions.list(action="core.local")
            shot = {r["id"]: r["status"] for r in records}
            snapshots.append(shot)
            return shot

        async def two_running() -> bool:
            return list((await snapshot()).values()).count("running") == 2

        await until(two_running, "two executions to run")
        for _ in range(10):
            shot = await snapshot()
            assert sorted(shot.values()) == ["requested", "running", "running"]
            await asyncio.sleep(0.02)
        first_running = next(i for i in ids if snapshots[-1][i] == "running")
        waiting = next(i for i in ids if snapshots[-1][i] == "requested")

        await app.executions.cancel(first_running)

        async def third_runs() -> bool:
            return (await snapshot())[waiting] == "running"

        await until(third_runs, "the queued execution to start")
        for execution_id in ids:
            if execution_id != first_running:
                await app.executions.cancel(execution_id)
        assert {i: await status_of(app, i) for i in ids} == dict.fromkeys(ids, "canceled")
    finally:
        await app.close()
    assert snapshots
    assert all(list(shot.values()).count("running") <= 2 for shot in snapshots)
