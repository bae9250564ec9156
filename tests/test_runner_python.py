"""The `python-script` runner end to end, with a pack written the way StackStorm packs are.

Spec §1.6 (action contract, return values, action_service) and §1.8 (environment). Actions run
in warm per-pack worker processes; crashes and timeouts must cost only that worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from tests.conftest import write

PACK = "pyaction"


@pytest.fixture
def home(home: Path) -> Path:
    """The conftest home plus a Python action pack and its config, written before Squall starts."""
    pack = home / "packs" / PACK
    write(pack / "pack.yaml", f"""
        name: {PACK}
        description: python runner test pack
        version: 0.1.0
        author: tests
    """)
    write(pack / "config.schema.yaml", """
        region:
          type: string
          required: true
        retries:
          type: integer
          default: 3
        endpoint:
          type: object
          properties:
            host:
              type: string
              default: example.invalid
    """)
    write(home / "configs" / f"{PACK}.yaml", """
        region: eu-west
    """)
    write(pack / "actions" / "lib" / "helpers.py", """
        GREETING = "hello from lib"


        def double(value):
            return value * 2
    """)
    write(pack / "actions" / "uses_lib.py", """
        from st2common.runners.base_action import Action

        from helpers import GREETING, double


        class UsesLib(Action):
            def run(self, n, text):
                return (True, {"doubled": double(n), "n_type": type(n).__name__, "greeting": GREETING,
                               "text": text})
    """)
    write(pack / "actions" / "uses_lib.yaml", """
        name: uses_lib
        runner_type: python-script
        entry_point: uses_lib.py
        parameters:
          n:
            type: integer
            required: true
          text:
            type: string
            default: "{{ n }} items"
    """)
    write(pack / "actions" / "behave.py", """
        import atexit
        import json
        import os
        import sys
        import threading
        import time

        from st2common import log as logging
        from st2common.runners.base_action import Action

        LOG = logging.getLogger(__name__)


        class Unserialisable:
            def __str__(self):
                return "<unserialisable>"


        class Behave(Action):
            def run(self, mode, value=None):
                if mode == "ok":
                    return (True, value)
                if mode == "not_ok":
                    return (False, value)
                if mode == "dict":
                    return {"a": 1, "b": [1, 2]}
                if mode == "none":
                    return None
                if mode == "three":
                    return (1, 2, 3)
                if mode == "none_status":
                    return (None, value)
                if mode == "bad_status":
                    return ("yes", value)
                if mode == "object":
                    return (True, Unserialisable())
                if mode == "raise":
                    raise RuntimeError("boom from the action")
                if mode == "print":
                    print("to stdout", value)
                    sys.stderr.write("raw stderr\\n")
                    self.logger.info("info from self.logger")
                    self.logger.debug("debug from self.logger")
                    self.logger.error("error from self.logger")
                    LOG.warning("warning from the module logger")
                    return "printed"
                if mode == "pid":
                    return os.getpid()
                if mode == "pids":  # the run's process and the warm worker that forked it
                    return [os.getpid(), os.getppid()]
                if mode == "sleep":
                    print(os.getpid(), flush=True)
                    time.sleep(30 if value is None else float(value))
                    return os.getpid()
                if mode == "pidfile":
                    with open(value, "w") as handle:
                        handle.write(str(os.getpid()))
                    time.sleep(30)
                if mode == "barrier":  # value: [folder, n]; wait until n actions run at once
                    folder, count = value
                    open(os.path.join(folder, str(os.getpid())), "w").close()
                    deadline = time.monotonic() + 20
                    while len(os.listdir(folder)) < count and time.monotonic() < deadline:
                        time.sleep(0.01)
                    return (len(os.listdir(folder)) >= count, os.getpid())
                if mode == "exit":
                    print("about to die", flush=True)
                    os._exit(3)
                if mode == "sys_exit":
                    sys.exit(4)
                if mode == "sys_exit_with":  # value: the arguments of sys.exit ([] for a bare sys.exit())
                    print("work done", flush=True)
                    sys.exit(*value)
                if mode == "orphan":  # a background program outlives the action's process
                    os.system(f"sleep 60 >/dev/null 2>&1 & echo $! > {value}")
                    os._exit(3)
                if mode == "fork_orphan":  # the same, forked without exec
                    if os.fork() == 0:
                        with open(value, "w") as handle:
                            handle.write(str(os.getpid()))
                        time.sleep(60)
                        os._exit(0)
                    while not os.path.exists(value) or not open(value).read():
                        time.sleep(0.01)
                    os._exit(3)
                if mode == "tool":  # a program found on the PATH by name
                    import subprocess
                    return subprocess.run([value], capture_output=True, text=True, check=True).stdout
                if mode == "env":
                    names = json.loads(value)
                    return {name: os.environ.get(name) for name in names}
                if mode == "config":
                    return {"region": self.config["region"], "retries": self.config["retries"],
                            "endpoint": self.config["endpoint"], "keys": sorted(self.config)}
                if mode == "missing_config":
                    return self.config["not_configured"]
                if mode == "config_fallback":  # jenkins' _get_client: no username configured, no auth
                    try:
                        username = self.config["username"]
                    except KeyError as missing:
                        username = ["fallback", missing.args[0]]
                    return {"username": username, "got": self.config.get("username", "default"),
                            "in": "username" in self.config}
                if mode == "user":
                    return self.action_service.get_user_info()
                if mode == "thread_after_return":  # a non-daemon thread finishes its work after run()
                    def later():
                        time.sleep(0.2)
                        print("thread finished", flush=True)
                    threading.Thread(target=later).start()
                    return "started"
                if mode == "atexit":
                    atexit.register(lambda: print("atexit ran", flush=True))
                    return "registered"
                if mode == "close2":
                    os.close(2)
                    return "closed fd 2"
                if mode == "devnull1":  # silence fd 1 (a noisy C library) after printing
                    print("visible line", flush=True)
                    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
                    return "silenced"
                if mode == "kbint":
                    print("interrupted", flush=True)
                    raise KeyboardInterrupt()
                if mode == "daemon_calls":  # datastore calls still on their way as the run ends
                    def hammer():
                        while True:
                            self.action_service.get_value("from_the_daemon")
                    self.action_service.set_value("from_the_daemon", "stale")
                    for _ in range(4):
                        threading.Thread(target=hammer, daemon=True).start()
                    time.sleep(0.05)
                    return "left"
                raise ValueError("unknown mode " + mode)
    """)
    write(pack / "actions" / "threads_kv.py", """
        import threading

        from st2common.runners.base_action import Action


        class ThreadsKv(Action):
            def run(self):
                svc = self.action_service
                svc.set_value("a", "value-of-a")
                svc.set_value("b", "value-of-b")
                wrong = []

                def reader(key):
                    for _ in range(100):
                        got = svc.get_value(key)
                        if got != "value-of-" + key:
                            wrong.append([key, got])

                threads = [threading.Thread(target=reader, args=(key,)) for key in ("a", "b")]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                return wrong[:3]
    """)
    write(pack / "actions" / "init_logs.py", """
        from st2common.runners.base_action import Action


        class InitLogs(Action):
            def __init__(self, config=None, action_service=None):
                super().__init__(config, action_service)
                self.logger.info("logged in __init__")

            def run(self):
                self.logger.info("logged in run")
                return self.logger.name
    """)
    write(pack / "actions" / "init_logs.yaml",
          "name: init_logs\nrunner_type: python-script\nentry_point: init_logs.py\n")
    write(pack / "actions" / "threads_kv.yaml", """
        name: threads_kv
        runner_type: python-script
        entry_point: threads_kv.py
    """)
    slow = home / "packs" / "slowstart"
    write(slow / "pack.yaml", "name: slowstart\ndescription: a slow worker\nversion: 0.1.0\nauthor: tests\n")
    write(slow / "actions" / "hello.py", """
        from st2common.runners.base_action import Action


        class Hello(Action):
            def run(self):
                return "hello"
    """)
    write(slow / "actions" / "hello.yaml", "name: hello\nrunner_type: python-script\nentry_point: hello.py\n")
    write(pack / "actions" / "behave.yaml", """
        name: behave
        runner_type: python-script
        entry_point: behave.py
        parameters:
          mode:
            type: string
            required: true
          value: {}
    """)
    write(pack / "actions" / "kv.py", """
        from st2common.runners.base_action import Action


        class KeyValues(Action):
            def run(self, name, value):
                svc = self.action_service
                out = {"set": svc.set_value(name, value)}
                out["get"] = svc.get_value(name)
                out["get_full_name"] = svc.get_value("pyaction.KeyValues:" + name, local=False)
                out["global"] = svc.get_value("shared.global", local=False)
                svc.set_value(name + "_n", 5, ttl=600)
                out["n"] = svc.get_value(name + "_n")
                out["listed"] = sorted([kv.name, kv.value] for kv in svc.list_values())
                out["listed_prefix"] = [kv.name for kv in svc.list_values(prefix=name + "_")]
                svc.set_value("secret", "s3cret-value", encrypt=True)
                out["secret_decrypted"] = svc.get_value("secret", decrypt=True)
                out["secret_decrypted_matches"] = out["secret_decrypted"] == "s3cret-value"
                out["secret_raw_differs"] = svc.get_value("secret") != "s3cret-value"
                out["deleted"] = svc.delete_value(name + "_n")
                out["after_delete"] = svc.get_value(name + "_n")
                out["missing"] = svc.get_value("never-set")
                for call in (lambda: svc.get_value(name, scope="user"),
                             lambda: svc.set_value(name, "x", scope="user"),
                             lambda: svc.delete_value(name, scope="user")):
                    try:
                        call()
                    except ValueError as exc:
                        out.setdefault("user_scope", []).append(str(exc))
                return out
    """)
    write(pack / "actions" / "kv.yaml", """
        name: kv
        runner_type: python-script
        entry_point: kv.py
        parameters:
          name:
            type: string
          value:
            type: string
    """)
    return home


async def run(app: Squall, ref: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    record = await app.executions.request(ref, params or {})
    return await app.executions.wait(record["id"], timeout=60)


async def behave(app: Squall, mode: str, value: Any = None, **runner: Any) -> dict[str, Any]:
    params = {"mode": mode, **runner}
    if value is not None:
        params["value"] = value
    return await run(app, f"{PACK}.behave", params)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


async def _wait_gone(pid: int) -> bool:
    for _ in range(100):
        if _gone(pid):
            return True
        await asyncio.sleep(0.05)
    return False


# ---------------------------------------------------------------------------------------------
# The action contract
# ---------------------------------------------------------------------------------------------


async def test_action_importing_its_lib_module_with_cast_parameters(squall: Squall) -> None:
    done = await run(squall, f"{PACK}.uses_lib", {"n": "5"})
    assert done["status"] == "succeeded", done["result"]
    result = done["result"]
    assert result["result"] == {"doubled": 10, "n_type": "int", "greeting": "hello from lib", "text": "5 items"}
    assert result["exit_code"] == 0
    assert set(result) == {"result", "stdout", "stderr", "exit_code"}


@pytest.mark.parametrize(
    ("mode", "value", "status", "expected"),
    [
        ("ok", {"x": [1, "two"]}, "succeeded", {"x": [1, "two"]}),
        ("ok", "text", "succeeded", "text"),
        ("not_ok", {"why": "bad"}, "failed", {"why": "bad"}),
        ("dict", None, "succeeded", {"a": 1, "b": [1, 2]}),
        ("none", None, "succeeded", None),
        ("three", None, "succeeded", [1, 2, 3]),
        ("none_status", "kept", "succeeded", "kept"),
        ("object", None, "succeeded", "<unserialisable>"),
    ],
)
async def test_return_values(squall: Squall, mode: str, value: Any, status: str, expected: Any) -> None:
    done = await behave(squall, mode, value)
    assert done["status"] == status, done["result"]
    assert done["result"]["result"] == expected
    assert done["result"]["exit_code"] == 0


async def test_invalid_status_exits_220(squall: Squall) -> None:
    done = await behave(squall, "bad_status", "v")
    assert done["status"] == "failed"
    assert done["result"]["exit_code"] == 220
    assert "'yes'" in done["result"]["stderr"]
    assert done["result"]["result"] is None


async def test_exception_fails_with_traceback(squall: Squall) -> None:
    done = await behave(squall, "raise")
    assert done["status"] == "failed"
    result = done["result"]
    assert result["result"] == "None"
    assert result["exit_code"] == 1
    assert "Traceback (most recent call last)" in result["stderr"]
    assert "RuntimeError: boom from the action" in result["stderr"]
    assert "behave.py" in result["stderr"]
    # the worker survives an exception in the action
    again = await behave(squall, "ok", "fine")
    assert again["status"] == "succeeded"
    assert again["result"]["stderr"] == ""


async def test_sys_exit_fails_with_its_code(squall: Squall) -> None:
    done = await behave(squall, "sys_exit")
    assert done["status"] == "failed"
    assert done["result"]["exit_code"] == 4


@pytest.mark.parametrize(
    ("arguments", "status", "exit_code", "stderr"),
    [
        ([], "succeeded", 0, ""),  # a bare sys.exit(): exit status 0, as the interpreter ends
        ([0], "succeeded", 0, ""),
        ([None], "succeeded", 0, ""),
        ([3], "failed", 3, ""),  # the code is the process's exit status; no traceback, as in StackStorm
        (["gave up: no host"], "failed", 1, "gave up: no host\n"),  # printed to stderr, exit status 1
    ],
)
async def test_sys_exit_ends_the_run_as_the_interpreter_would(squall: Squall, arguments: list[Any], status: str,
                                                               exit_code: int, stderr: str) -> None:
    """StackStorm's wrapper lets SystemExit end its process: None or 0 is a success, another int that
    exit status, anything else is printed on stderr with status 1; never a traceback."""
    done = await behave(squall, "sys_exit_with", arguments)
    assert done["status"] == status, done["result"]
    assert done["result"]["exit_code"] == exit_code
    assert done["result"]["stderr"] == stderr
    assert done["result"]["stdout"] == "work done\n"
    if status == "succeeded":
        assert done["result"]["result"] == "None"


async def test_stdout_stderr_and_logger_are_captured_per_execution(squall: Squall) -> None:
    done = await behave(squall, "print", "v1")
    assert done["status"] == "succeeded"
    result = done["result"]
    assert result["result"] == "printed"
    assert result["stdout"] == "to stdout v1\n"  # not stripped, not JSON-decoded
    assert "raw stderr" in result["stderr"]
    for line in ("info from self.logger", "debug from self.logger", "error from self.logger",
                 "warning from the module logger"):
        assert line in result["stderr"]
    assert "to stdout" not in result["stderr"]

    quiet = await behave(squall, "print", "v2", log_level="ERROR")
    assert quiet["result"]["stdout"] == "to stdout v2\n"
    assert "error from self.logger" in quiet["result"]["stderr"]
    assert "info from self.logger" not in quiet["result"]["stderr"]
    # `log_level` sets the action's own logger alone, as in StackStorm's wrapper: a module's logger is not
    # configured, so its warnings reach stderr through Python's last resort whatever the level.
    assert "warning from the module logger" in quiet["result"]["stderr"]

    audit = await behave(squall, "print", "v3", log_level="AUDIT")
    assert "warning from the module logger" in audit["result"]["stderr"]
    assert "info from self.logger" not in audit["result"]["stderr"]

    later = await behave(squall, "ok", "x")
    assert later["result"]["stdout"] == ""
    assert later["result"]["stderr"] == ""


async def test_self_logger_is_stackstorms_from_the_constructor_on(squall: Squall) -> None:
    """`self.logger` is `actions.python.<ClassName>` with StackStorm's line format; what the constructor
    logs through it is captured at the run's level too."""
    done = await run(squall, f"{PACK}.init_logs", {"log_level": "INFO"})
    assert done["status"] == "succeeded", done
    assert done["result"]["result"] == "actions.python.InitLogs"
    stderr = done["result"]["stderr"]
    assert "logged in __init__" in stderr
    assert "actions.python.InitLogs: INFO     logged in run\n" in stderr
    quiet = await run(squall, f"{PACK}.init_logs", {"log_level": "WARNING"})
    assert quiet["result"]["stderr"] == ""


async def test_stdout_is_not_json_decoded(squall: Squall) -> None:
    done = await behave(squall, "sleep", 0)
    assert isinstance(done["result"]["stdout"], str)
    assert done["result"]["stdout"].strip() == str(done["result"]["result"])


# ---------------------------------------------------------------------------------------------
# Pack config
# ---------------------------------------------------------------------------------------------


async def test_config_with_schema_defaults(squall: Squall) -> None:
    done = await behave(squall, "config")
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["result"] == {
        "region": "eu-west", "retries": 3, "endpoint": {"host": "example.invalid"},
        "keys": ["endpoint", "region", "retries"],
    }


async def test_missing_config_key_raises_a_key_error_naming_it(squall: Squall) -> None:
    done = await behave(squall, "missing_config")
    assert done["status"] == "failed"
    stderr = done["result"]["stderr"]
    assert stderr.rstrip().splitlines()[-1].endswith(
        'ConfigKeyError: config key "not_configured" is not set for this pack; set it in configs/<pack>.yaml or '
        "give it a default in config.schema.yaml")
    assert "KeyError: 'not_configured'" not in stderr  # not a plain dict's bare key


async def test_a_config_key_not_set_is_a_key_error_the_action_can_catch(squall: Squall) -> None:
    """StackStorm's config is a plain dict: packs fall back on `except KeyError` (jenkins runs without auth
    when no username is configured), and `.get()` gives its default."""
    done = await behave(squall, "config_fallback")
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["result"] == {"username": ["fallback", "username"], "got": "default", "in": False}


# ---------------------------------------------------------------------------------------------
# action_service (datastore)
# ---------------------------------------------------------------------------------------------


async def test_action_service_datastore_round_trip(squall: Squall) -> None:
    await squall.db(squall.datastore.set, "shared.global", "from outside")
    done = await run(squall, f"{PACK}.kv", {"name": "greeting", "value": "hi there"})
    assert done["status"] == "succeeded", done["result"]
    out = done["result"]["result"]
    prefix = f"{PACK}.KeyValues:"
    assert out["set"] is True
    assert out["get"] == "hi there"
    assert out["get_full_name"] == "hi there"
    assert out["global"] == "from outside"
    assert out["n"] == "5"  # values are stored as strings
    assert out["listed"] == [[f"{prefix}greeting", "hi there"], [f"{prefix}greeting_n", "5"]]
    assert out["listed_prefix"] == [f"{prefix}greeting_n"]
    assert out["secret_decrypted_matches"] is True  # the action read the plaintext...
    assert out["secret_decrypted"] == "********"  # ...and the stored result does not show it
    assert out["secret_raw_differs"] is True
    assert out["deleted"] is True
    assert out["after_delete"] is None
    assert out["missing"] is None
    assert out["user_scope"] == ["Scope user is unsupported."] * 3

    stored = await squall.db(squall.datastore.get, f"{prefix}greeting")
    assert stored is not None and stored["value"] == "hi there"
    assert await squall.db(squall.datastore.get, "greeting") is None
    assert await squall.db(squall.datastore.get, f"{prefix}greeting_n") is None
    secret = await squall.db(squall.datastore.get, f"{prefix}secret", decrypt=True)
    assert secret is not None and secret["secret"] is True and secret["value"] == "s3cret-value"


async def test_user_info(squall: Squall) -> None:
    record = await squall.executions.request(f"{PACK}.behave", {"mode": "user"}, {"user": "alice"})
    done = await squall.executions.wait(record["id"], timeout=60)
    assert done["result"]["result"] == {"username": "alice"}


# ---------------------------------------------------------------------------------------------
# Workers: reuse, timeouts, crashes, concurrency
# ---------------------------------------------------------------------------------------------


async def test_worker_is_reused(squall: Squall) -> None:
    """The warm worker serves both runs; each run has a process of its own, forked from it."""
    first = await behave(squall, "pids")
    second = await behave(squall, "pids")
    assert first["status"] == second["status"] == "succeeded"
    (first_run, first_worker), (second_run, second_worker) = first["result"]["result"], second["result"]["result"]
    assert isinstance(first_worker, int)
    assert first_worker == second_worker
    assert first_worker != os.getpid()
    assert len({first_run, second_run, first_worker}) == 3


async def test_a_worker_busy_through_a_recycle_serves_no_later_run(squall: Squall) -> None:
    """A pack updated while one of its actions runs (`reload_packs` recycles the pool): the worker that ran
    it went back to the pool and served every later run with the old packages, in a deleted folder. It
    now stops when its run ends, and the next run gets a new worker."""
    before = await behave(squall, "pids")
    worker = before["result"]["result"][1]
    record = await squall.executions.request(f"{PACK}.behave", {"mode": "sleep", "value": 1})
    for _ in range(200):  # running in that worker, the only one
        if (await squall.executions.get(record["id"]))["status"] == "running":
            break
        await asyncio.sleep(0.02)
    await squall.python.recycle(PACK)
    assert (await squall.executions.wait(record["id"], timeout=30))["status"] == "succeeded"
    after = await behave(squall, "pids")
    assert after["status"] == "succeeded"
    assert after["result"]["result"][1] != worker
    assert await _wait_gone(worker)


async def test_timeout_kills_the_worker_and_the_next_run_succeeds(squall: Squall) -> None:
    done = await behave(squall, "sleep", 30, timeout=1)
    assert done["status"] == "timeout"
    result = done["result"]
    assert result["error"] == "Action failed to complete in 1 seconds"
    assert result["exit_code"] == -9
    pid = int(result["stdout"].strip())
    assert await _wait_gone(pid)
    after = await behave(squall, "pid")
    assert after["status"] == "succeeded"
    assert after["result"]["result"] != pid


@pytest.mark.parametrize("mode", ["orphan", "fork_orphan"])
async def test_worker_crash_is_seen_while_its_background_child_lives(squall: Squall, tmp_path: Path,
                                                                     mode: str) -> None:
    """The worker's protocol pipes are its own: a child the action left running does not hold the reply
    pipe open, so the crash is reported as such instead of as a timeout once `timeout` has passed."""
    pidfile = tmp_path / "child.pid"
    try:
        done = await behave(squall, mode, str(pidfile), timeout=30)
        assert done["status"] == "failed", done["result"]
        assert "died" in done["result"]["error"]
        assert done["result"]["exit_code"] == 3
    finally:
        if pidfile.exists() and pidfile.read_text().strip():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)


async def test_worker_crash_fails_the_execution_and_the_next_run_succeeds(squall: Squall) -> None:
    before = await behave(squall, "pid")
    done = await behave(squall, "exit")
    assert done["status"] == "failed"
    result = done["result"]
    assert "died" in result["error"]
    assert result["exit_code"] == 3
    assert result["stdout"] == "about to die\n"
    assert await _wait_gone(before["result"]["result"])
    after = await behave(squall, "pid")
    assert after["status"] == "succeeded"
    assert after["result"]["result"] != before["result"]["result"]


async def test_cancel_kills_the_worker(squall: Squall, tmp_path: Path) -> None:
    pidfile = tmp_path / "worker.pid"
    record = await squall.executions.request(f"{PACK}.behave", {"mode": "pidfile", "value": str(pidfile)})
    pid = None
    for _ in range(200):
        text = pidfile.read_text().strip() if pidfile.exists() else ""
        if text:
            pid = int(text)
            break
        await asyncio.sleep(0.05)
    assert pid is not None, "the action never started"
    await squall.executions.cancel(record["id"])
    done = await squall.executions.wait(record["id"], timeout=10)
    assert done["status"] == "canceled"
    assert await _wait_gone(pid)
    after = await behave(squall, "pid")
    assert after["status"] == "succeeded"
    assert after["result"]["result"] != pid


async def test_concurrent_executions_of_one_pack(squall: Squall) -> None:
    records = [await squall.executions.request(f"{PACK}.uses_lib", {"n": n}) for n in range(8)]
    done = await asyncio.gather(*(squall.executions.wait(r["id"], timeout=60) for r in records))
    assert [d["status"] for d in done] == ["succeeded"] * 8
    assert [d["result"]["result"]["doubled"] for d in done] == [n * 2 for n in range(8)]


async def test_concurrent_executions_run_at_once_in_separate_workers(squall: Squall, tmp_path: Path) -> None:
    records = [await squall.executions.request(f"{PACK}.behave", {"mode": "barrier", "value": [str(tmp_path), 3]})
               for _ in range(3)]
    done = await asyncio.gather(*(squall.executions.wait(r["id"], timeout=60) for r in records))
    assert [d["status"] for d in done] == ["succeeded"] * 3, [d["result"] for d in done]
    assert len({d["result"]["result"] for d in done}) == 3  # one action at a time per worker


# ---------------------------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------------------------


async def test_environment_of_the_action(squall: Squall, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-do-not-leak")
    monkeypatch.setenv("IRC_PASSWORD", "irc-do-not-leak")
    monkeypatch.setenv("SQUALL_SECRET_KEY", "key-do-not-leak")
    monkeypatch.setenv("SQUALL_OIDC_SECRET", "oidc-do-not-leak")  # the name docs/ui.md suggests
    monkeypatch.setenv("PGPASSWORD", "pg-do-not-leak")
    names = ["ST2_ACTION_PACK_NAME", "ST2_ACTION_EXECUTION_ID", "SQUALL_ACTION_PACK_NAME",
             "SQUALL_ACTION_EXECUTION_ID", "ST2_ACTION_API_URL", "ST2_API_URL", "FOO", "SLACK_BOT_TOKEN",
             "IRC_PASSWORD", "SQUALL_SECRET_KEY", "SQUALL_OIDC_SECRET", "PGPASSWORD"]
    record = await squall.executions.request(
        f"{PACK}.behave", {"mode": "env", "value": json.dumps(names), "env": {"FOO": "bar"}}
    )
    done = await squall.executions.wait(record["id"], timeout=60)
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["result"] == {
        "ST2_ACTION_PACK_NAME": PACK, "ST2_ACTION_EXECUTION_ID": record["id"], "SQUALL_ACTION_PACK_NAME": PACK,
        "SQUALL_ACTION_EXECUTION_ID": record["id"], "ST2_ACTION_API_URL": squall.config.api_url, "FOO": "bar",
        "ST2_API_URL": squall.config.api_url,
        "SLACK_BOT_TOKEN": None, "IRC_PASSWORD": None, "SQUALL_SECRET_KEY": None, "SQUALL_OIDC_SECRET": None,
        "PGPASSWORD": None,
    }
    # the same (warm) worker: the previous execution's env is gone, this one's id is set
    again = await squall.executions.request(f"{PACK}.behave", {"mode": "env", "value": json.dumps(names)})
    second = await squall.executions.wait(again["id"], timeout=60)
    assert second["result"]["result"]["FOO"] is None
    assert second["result"]["result"]["ST2_ACTION_EXECUTION_ID"] == again["id"]


async def test_an_action_runs_the_tools_of_its_packs_virtualenv_by_name(squall: Squall) -> None:
    """StackStorm's python runner puts the pack virtualenv's `bin` first on an action's PATH (its sandbox
    path), so an action runs the tools its pack's requirements installed by name: the Exchange `ansible`
    pack's actions call `ansible-playbook`, which Squall's did not find. Ahead of the service's own PATH."""
    tool = squall.config.virtualenvs_path / PACK / "bin" / "squall-pack-tool"
    write(tool, "#!/bin/sh\necho \"from the pack's virtualenv\"\n")
    tool.chmod(0o755)
    done = await behave(squall, "tool", "squall-pack-tool")
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["result"] == "from the pack's virtualenv\n"
    path = (await behave(squall, "env", json.dumps(["PATH"])))["result"]["result"]["PATH"].split(os.pathsep)
    assert path[0] == str(tool.parent) and path[1:] == os.environ["PATH"].split(os.pathsep)


async def test_threads_calling_the_datastore_at_once_each_get_their_own_answer(squall: Squall) -> None:
    """Datastore calls share one pipe: two threads of an action calling at once must not read each
    other's answers (another key's value, maybe a secret)."""
    record = await squall.executions.request(f"{PACK}.threads_kv", {"timeout": 20})
    done = await squall.executions.wait(record["id"], timeout=60)
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["result"] == []


async def test_answers_to_an_ended_runs_calls_never_reach_the_next_run(squall: Squall) -> None:
    """Daemon threads' datastore calls may be under way as their run ends: their answers never reach
    the next run of the worker as its own, and none of those threads reads the next run's request
    (which the parent sends as soon as the run answered)."""
    for _ in range(20):
        assert (await behave(squall, "daemon_calls"))["status"] == "succeeded"
        record = await squall.executions.request(f"{PACK}.threads_kv", {"timeout": 10})
        done = await squall.executions.wait(record["id"], timeout=60)
        assert done["status"] == "succeeded", done["result"]
        assert done["result"]["result"] == []


async def test_threads_and_exit_handlers_finish_before_the_run_is_done(squall: Squall) -> None:
    """As at StackStorm's interpreter exit: non-daemon threads the action left are waited for and
    `atexit` handlers run, and what they print is the run's output."""
    threaded = await behave(squall, "thread_after_return")
    assert threaded["status"] == "succeeded", threaded["result"]
    assert threaded["result"]["stdout"] == "thread finished\n"
    handled = await behave(squall, "atexit")
    assert handled["status"] == "succeeded", handled["result"]
    assert handled["result"]["stdout"] == "atexit ran\n"


async def test_an_action_that_closes_or_silences_its_streams(squall: Squall) -> None:
    """The output is measured through the run's own descriptors of its capture files, so an action
    that closes fd 2 still succeeds and one that points fd 1 at /dev/null keeps what it printed."""
    closed = await behave(squall, "close2")
    assert closed["status"] == "succeeded", closed["result"]
    assert closed["result"]["result"] == "closed fd 2"
    silenced = await behave(squall, "devnull1")
    assert silenced["status"] == "succeeded", silenced["result"]
    assert silenced["result"]["stdout"] == "visible line\n"


async def test_keyboard_interrupt_ends_the_run_as_sigint(squall: Squall) -> None:
    """An uncaught KeyboardInterrupt ends a Python interpreter by SIGINT: exit code -2, as before."""
    done = await behave(squall, "kbint")
    assert done["status"] == "failed"
    assert done["result"]["exit_code"] == -2
    assert done["result"]["stdout"] == "interrupted\n"
    assert "KeyboardInterrupt" in done["result"]["stderr"]
    assert (await behave(squall, "ok", 1))["status"] == "succeeded"


async def test_a_worker_that_does_not_start_in_the_runs_timeout_times_the_run_out(squall: Squall) -> None:
    """Starting the worker counts against the run's timeout, and the error says what did not start."""
    site = squall.config.virtualenvs_path / "slowstart" / "lib" / "python3.0" / "site-packages"
    write(site / "sitecustomize.py", "import time\ntime.sleep(300)\n")  # run by every interpreter start
    record = await squall.executions.request("slowstart.hello", {"timeout": 2})
    done = await squall.executions.wait(record["id"], timeout=60)
    assert done["status"] == "timeout", done["result"]
    assert "Action failed to complete in 2 seconds" in done["result"]["error"]
    assert "the Python worker for slowstart did not say it was ready within 2 seconds" in done["result"]["error"]
