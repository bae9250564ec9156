"""`audit.sinks`: every audit event also goes to a rotated JSON-lines file, to syslog (RFC 5424 over
UDP, checked with a local listener) or to stdout, secrets masked; a failing sink stops nothing;
`squall audit export` gives the stored log as JSON lines or CSV."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from adapters.loopback import LoopbackAdapter
from bot.app import Squall
from engine.config import ConfigError, load_config
from engine.storage import Store
from tests.conftest import write
from tests.test_chat import _config, settle
from tests.test_cli import SQUALL


def _with(home: Path, sinks: str) -> Path:
    _config(home)
    config = home / "config.yml"
    config.write_text(config.read_text() + f"audit:\n  sinks:\n{sinks}")
    return config


async def test_chat_commands_reach_the_file_and_syslog_with_secrets_masked(home: Path) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    config = _with(home, f"""    - {{type: file, path: data/audit.jsonl, max_bytes: 2000, backups: 2}}
    - {{type: syslog, host: 127.0.0.1, port: {port}, facility: auth}}
""")
    loopback = LoopbackAdapter()
    squall = await Squall.start(load_config(config), adapters=[loopback])
    await squall.chat.start()
    try:
        await loopback.say("!greet world", user="alice", channel="#ops")
        await settle(squall, squall.chat)
        await squall.db(squall.store.audit_add, "api.key.set", "ops", "api", "db_password",
                        {"value": "hunter2", "password": "hunter2", "nested": {"api_key": "k-123"}})
        for n in range(20):  # enough to rotate the file past its 2,000 bytes
            await squall.db(squall.store.audit_add, "web.login.failed", f"mallory{n}", "web", None, {})
    finally:
        await squall.chat.stop()
        await squall.close()
    datagrams = []
    while True:
        try:
            datagrams.append(listener.recv(65536).decode())
        except TimeoutError:
            break
        if len(datagrams) == 22:
            listener.settimeout(0.5)  # all in: only stragglers now
    listener.close()
    current = home / "data" / "audit.jsonl"
    rotated = home / "data" / "audit.jsonl.1"
    assert rotated.exists() and current.stat().st_size <= 2000 + 500
    assert [oct(path.stat().st_mode & 0o777) for path in (current, rotated)] == ["0o600", "0o600"]  # rotated too
    lines = [json.loads(line) for path in (rotated, current) for line in path.read_text().splitlines()]
    assert all(set(entry) == {"id", "time", "event", "actor", "source", "target", "detail"} for entry in lines)
    ids = [entry["id"] for entry in lines]  # the stored event's id, by which a receiver drops a repeat
    assert all(isinstance(n, int) for n in ids) and ids == sorted(set(ids))
    chat = next(entry for entry in _all_lines(home) if entry["event"] == "chat.execution")
    assert chat["actor"] == "alice" and chat["source"] == "loopback:#ops" and chat["target"] == "demo.greet"
    secret = next(entry for entry in _all_lines(home) if entry["event"] == "api.key.set")
    assert secret["detail"] == {"value": "hunter2", "password": "********", "nested": {"api_key": "********"}}
    assert "k-123" not in (rotated.read_text() + current.read_text())
    assert len(datagrams) == 22
    executed = next(d for d in datagrams if " chat.execution " in d)
    header, _, body = executed.partition(" - ")
    assert header.startswith("<37>1 ") and " squall " in header  # auth (4) * 8 + notice (5)
    assert json.loads(body)["actor"] == "alice" and json.loads(body)["id"] == chat["id"]
    assert next(d for d in datagrams if " web.login.failed " in d).startswith("<36>1 ")  # refusals: warning
    assert "k-123" not in "".join(datagrams) and "********" in next(d for d in datagrams if "api.key.set" in d)


def _all_lines(home: Path) -> list[dict]:
    paths = sorted((home / "data").glob("audit.jsonl*"), reverse=True)
    return [json.loads(line) for path in paths for line in path.read_text().splitlines()]


async def test_stdout_sink_and_a_failing_sink_stops_nothing(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _with(home, f"""    - {{type: syslog, socket: {home / 'no-such-socket'}}}
    - {{type: stdout}}
""")
    squall = await Squall.start(load_config(config))
    try:
        await squall.db(squall.store.audit_add, "cli.key.delete", "ops", "cli", "k", {})
        stored = await squall.db(squall.store.audit_list)
    finally:
        await squall.close()
    assert [row["event"] for row in stored] == ["cli.key.delete"]  # stored though the syslog sink failed
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(p["event"], p["actor"], p["target"]) for p in printed] == [("cli.key.delete", "ops", "k")]


#: One process's share of a shared audit file: `count` events through its own FileSink, as `squall serve`,
#: a worker and a CLI command each hold one on the same path.
_WRITER = """
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from engine.audit_sinks import FileSink
path, who, count, max_bytes, backups = Path(sys.argv[1]), sys.argv[2], *map(int, sys.argv[3:6])
sink = FileSink(path, max_bytes, backups)
for n in range(count):
    sink({"timestamp": datetime.now(UTC), "event": "cli.key.set", "actor": who, "source": "cli",
          "target": f"{who}-{n}", "detail": {"token": "t-1"}})
sink.close()
"""


def _write_from_processes(path: Path, writers: int, count: int, max_bytes: int, backups: int) -> None:
    processes = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), f"p{w}", str(count), str(max_bytes),
                                   str(backups)], cwd=Path(__file__).resolve().parents[1]) for w in range(writers)]
    assert [process.wait(timeout=120) for process in processes] == [0] * writers


def test_processes_sharing_the_file_rotate_it_without_losing_a_line(tmp_path: Path) -> None:
    """Four processes append 600 events each to one file rotated every 4,000 bytes: each event is in
    exactly one file, once, whole; no file passes 4,000 bytes; every file is private."""
    path = tmp_path / "data" / "audit.jsonl"
    _write_from_processes(path, writers=4, count=600, max_bytes=4000, backups=1000)
    files = sorted(tmp_path.joinpath("data").glob("audit.jsonl*"))
    assert len(files) > 50  # it rotated, many times, under contention
    targets = [json.loads(text)["target"] for file in files for text in file.read_text().splitlines()]
    assert sorted(targets) == sorted(f"p{w}-{n}" for w in range(4) for n in range(600))
    assert max(file.stat().st_size for file in files) <= 4000
    assert {oct(file.stat().st_mode & 0o777) for file in files} == {"0o600"}
    assert "t-1" not in "".join(file.read_text() for file in files)
    for file in files:  # each process's events stay in order within a file
        in_file = [json.loads(text)["target"] for text in file.read_text().splitlines()]
        for who in ("p0", "p1", "p2", "p3"):
            mine = [int(target.split("-")[1]) for target in in_file if target.startswith(f"{who}-")]
            assert mine == sorted(mine)


def test_threads_of_one_process_share_a_sink(tmp_path: Path) -> None:
    """The database threads of one process call one sink: every event lands once, files stay in size."""
    from engine.audit_sinks import FileSink

    path = tmp_path / "audit.jsonl"
    sink = FileSink(path, 2000, 1000)

    def write(who: str) -> None:
        for n in range(300):
            sink({"event": "web.login", "target": f"{who}-{n}", "detail": {}})

    threads = [threading.Thread(target=write, args=(f"t{t}",)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sink.close()
    files = list(tmp_path.glob("audit.jsonl*"))
    targets = [json.loads(text)["target"] for file in files for text in file.read_text().splitlines()]
    assert sorted(targets) == sorted(f"t{t}-{n}" for t in range(4) for n in range(300))
    assert len(files) > 20 and max(file.stat().st_size for file in files) <= 2000


def test_backups_keep_the_newest_events_and_a_moved_file_is_reopened(tmp_path: Path) -> None:
    """With `backups: 2` the file and its two backups hold the newest events, none twice; when
    logrotate (here, a rename) moves the file away, the next event goes to a new file at the path."""
    from engine.audit_sinks import FileSink

    path = tmp_path / "audit.jsonl"
    _write_from_processes(path, writers=2, count=300, max_bytes=3000, backups=2)
    kept = [path.with_name("audit.jsonl.2"), path.with_name("audit.jsonl.1"), path]
    assert sorted(p.name for p in tmp_path.glob("audit.jsonl*")) == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    targets = [json.loads(text)["target"] for file in kept for text in file.read_text().splitlines()]
    assert len(targets) == len(set(targets)) > 20
    for who in ("p0", "p1"):  # oldest file first: each writer's newest events, contiguous, up to its last
        mine = [int(t.split("-")[1]) for t in targets if t.startswith(f"{who}-")]
        assert mine == list(range(300 - len(mine), 300))

    sink = FileSink(path, 0, 0)  # max_bytes 0: never rotates itself, as under logrotate
    try:
        sink({"event": "one", "detail": {}})
        path.rename(path.with_name("audit.jsonl.rotated"))
        sink({"event": "two", "detail": {}})
    finally:
        sink.close()
    assert json.loads(path.read_text())["event"] == "two"
    assert json.loads(path.with_name("audit.jsonl.rotated").read_text().splitlines()[-1])["event"] == "one"
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _open_at(path: Path, number: int) -> int:
    """`path` opened read-write at descriptor `number` (free now), as the process's next open gets the lowest
    free number: an accepted socket, an action's pipe or a SQLite file takes a number a sink let go."""
    fd = os.open(path, os.O_RDWR)
    if fd != number:
        os.dup2(fd, number)
        os.close(fd)
    return number


def test_a_file_that_cannot_be_reopened_leaves_the_freed_descriptor_to_its_new_owner(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """logrotate moved the file and the reopen failed (here a directory at the path; a full disk or EACCES
    alike): the sink kept the number it had closed, the process gave it to the next thing it opened, and
    the next event fstat()ed that, saw another inode and closed it (API requests dropped unanswered), or
    wrote audit lines into it. Now the sink holds no file: the events are skipped, counted and logged once,
    the other owner's descriptor stays open and untouched, and the sink writes again once the path is a
    file it can open."""
    from engine.audit_sinks import FileSink, _guarded

    caplog.set_level(logging.INFO, logger="engine.audit_sinks")
    path, other_path = tmp_path / "audit.jsonl", tmp_path / "squall.db"
    other_path.write_bytes(b"someone else's data\n")
    sink = FileSink(path, 0, 0)
    deliver = _guarded(sink)
    other = None
    try:
        deliver({"event": "one", "detail": {}})
        freed = sink._fd  # the number the failed reopen lets go
        assert freed is not None
        path.rename(path.with_name("audit.jsonl.rotated"))  # logrotate moves it away...
        path.mkdir()  # ...and the path cannot be opened for writing any more
        before = _missed("file")
        deliver({"event": "skipped-0", "detail": {}})
        other = _open_at(other_path, freed)
        inode = os.fstat(other).st_ino
        for n in range(1, 4):
            deliver({"event": f"skipped-{n}", "detail": {}})
        assert _is_open(other), "the sink closed a descriptor the process had given to another file"
        assert os.fstat(other).st_ino == inode
        assert os.pread(other, 100, 0) == b"someone else's data\n" == other_path.read_bytes()
        assert _missed("file") - before == 4
        failures = _sink_logs(caplog)
        assert len(failures) == 1 and "skipped-0" in failures[0] and "Is a directory" in failures[0], failures

        path.rmdir()  # the path can be opened again: the next event does
        deliver({"event": "two", "detail": {}})
        recovered = _sink_logs(caplog)[1:]
        assert len(recovered) == 1 and "the 4 it missed" in recovered[0], recovered
    finally:
        sink.close()
    assert _is_open(other) and os.fstat(other).st_ino == inode  # closing the sink closed only its own
    os.close(other)
    assert [json.loads(text)["event"] for text in path.read_text().splitlines()] == ["two"]
    assert [json.loads(text)["event"] for text in path.with_name("audit.jsonl.rotated").read_text()
            .splitlines()] == ["one"]
    assert other_path.read_bytes() == b"someone else's data\n"


def test_closing_a_file_sink_twice_closes_only_its_own_descriptors(tmp_path: Path) -> None:
    """A second `close` closed the numbers again, which the process had since given to other files."""
    from engine.audit_sinks import FileSink

    sink = FileSink(tmp_path / "audit.jsonl", 0, 0)
    numbers = [sink._fd, sink._lock]
    sink.close()
    others = [tmp_path / "other0", tmp_path / "other1"]
    for other in others:
        other.write_text("x")
    reused = [_open_at(other, number) for other, number in zip(others, numbers, strict=True) if number is not None]
    try:
        sink.close()
        assert [_is_open(fd) for fd in reused] == [True, True]
    finally:
        for fd in reused:
            with contextlib.suppress(OSError):
                os.close(fd)


def test_a_sink_hears_of_an_event_once_it_is_committed(database_url: str) -> None:
    """Inside a group of writes the event reaches the sinks after the commit, never when it rolls back."""
    store = Store.open(database_url)
    heard: list[str] = []
    store.audit_listeners.append(lambda record: heard.append(record["event"]))
    try:
        with pytest.raises(RuntimeError), store.batch():
            store.audit_add("test.rolled_back", "ops", "cli", None, {})
            assert heard == []
            raise RuntimeError("the group fails")
        with store.batch():
            store.audit_add("test.committed", "ops", "cli", None, {})
            assert heard == []
        assert heard == ["test.committed"]
        store.audit_add("test.alone", "ops", "cli", None, {})  # its own transaction: told at once
        assert heard == ["test.committed", "test.alone"]
        assert [row["event"] for row in store.audit_list()] == ["test.alone", "test.committed"]
    finally:
        store.close()


@pytest.mark.parametrize(("sinks", "message"), [
    ("    - {type: kafka}\n", r"'audit.sinks\[0\].type' must be one of file, syslog, stdout, not 'kafka'"),
    ("    - {type: file, size: 3}\n", r"unknown key 'audit.sinks\[0\].size' for a file sink"),
    ("    - {type: syslog, facility: mail2}\n", r"'audit.sinks\[0\].facility' must be one of kern, user"),
])
async def test_bad_sinks_are_named(home: Path, sinks: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        await Squall.start(load_config(_with(home, sinks)))


def test_audit_export_jsonl_and_csv_oldest_first_within_the_range(home: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.storage import Store
    from tests.test_cli import in_process

    write(home / "config.yml", "database:\n  url: sqlite:///data/squall.db\n")
    store = Store.open(f"sqlite:///{home / 'data' / 'squall.db'}")
    try:
        for n in range(3):
            store.audit_add("api.execution", f"user{n}", "api", f"core.noop#{n}", {"token": "t-secret", "n": n})
    finally:
        store.close()

    cli = in_process(home, monkeypatch)

    def export(*args: str) -> str:
        done = cli("audit", "export", *args)
        assert done.exit_code == 0, done.stderr
        return done.stdout

    entries = [json.loads(line) for line in export("--since", "2000-01-01").splitlines()]
    assert [e["actor"] for e in entries] == ["user0", "user1", "user2"]
    assert entries[0]["detail"] == {"token": "********", "n": 0}
    assert export("--since", "2999-01-01") == ""
    assert export("--until", "2000-01-01") == ""  # all of them are newer
    assert [json.loads(line)["actor"] for line in export("--since", "2000-01-01", "--until", "2999-01-01")
            .splitlines()] == ["user0", "user1", "user2"]
    last = entries[2]["time"]
    assert [json.loads(line)["actor"] for line in export("--since", last).splitlines()][-1] == "user2"
    rows = list(csv.reader(io.StringIO(export("--format", "csv"))))
    assert rows[0] == ["time", "event", "actor", "source", "target", "detail", "id"] and len(rows) == 4
    assert rows[3][2] == "user2" and json.loads(rows[3][5]) == {"token": "********", "n": 2}
    assert [int(row[6]) for row in rows[1:]] == [e["id"] for e in entries]
    bad = cli("audit", "export", "--format", "xml")
    assert bad.exit_code == 2 and "--format must be one of jsonl, csv, not 'xml'" in bad.stderr


async def test_key_changes_logins_and_pack_changes_are_audited(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import base64

    import httpx

    from bot.http.app import create_api
    from tests.test_api import KEY
    from tests.test_api import _home as api_home
    from tests.test_cli import in_process

    config = api_home(home, "audit: {sinks: [{type: file, path: data/audit.jsonl}]}")
    squall = await Squall.start(load_config(config / "config.yml"))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(squall)),
                                     base_url="http://squall", headers={"St2-Api-Key": KEY}) as client:
            put = await client.put("/api/v1/keys/db_pass", json={"value": "hunter2", "secret": True})
            assert put.status_code == 200
            assert (await client.delete("/api/v1/keys/db_pass")).status_code == 204
            bad = base64.b64encode(b"mallory:not-a-key").decode()
            refused = await client.post("/auth/v1/tokens", headers={"Authorization": f"Basic {bad}",
                                                                    "St2-Api-Key": ""})
            assert refused.status_code == 401
            ran = await client.post("/api/v1/executions", json={"action": "demo.greet", "parameters": {
                "who": "ann", "password": "hunter2"}})
            assert ran.status_code == 201
            slow = (await client.post("/api/v1/executions", json={"action": "demo.slow"})).json()["id"]
            assert (await client.delete(f"/api/v1/executions/{slow}")).status_code == 200
            again = await client.post(f"/api/v1/executions/{ran.json()['id']}/re_run", json={})
            assert again.status_code == 201
    finally:
        await squall.close()
    pack = home / "src" / "tiny"
    write(pack / "pack.yaml", "ref: tiny\nname: tiny\nversion: 0.2.0\n")
    cli = in_process(home, monkeypatch)
    for args in (("key", "set", "region", "eu"), ("pack", "install", str(pack)), ("pack", "remove", "tiny"),
                 ("run", "core.noop")):
        done = await asyncio.to_thread(cli, *args)  # the command runs its own event loop
        assert done.exit_code == 0, done.stderr
    events = [(e["event"], e["source"], e["target"]) for e in _all_lines(home)]
    assert ("api.key.set", "api", "db_pass") in events and ("api.key.delete", "api", "db_pass") in events
    assert ("api.login.failed", "api:127.0.0.1", None) in events
    assert ("api.execution", "api", ran.json()["id"]) in events and ("api.execution.cancel", "api", slow) in events
    assert ("api.execution.rerun", "api", again.json()["id"]) in events
    requested = next(e for e in _all_lines(home) if e["event"] == "api.execution" and e["target"] == ran.json()["id"])
    assert requested["detail"]["parameters"]["who"] == "ann"
    assert requested["detail"]["parameters"]["password"] == "********"
    assert ("cli.key.set", "cli", "region") in events
    assert [e["detail"]["action"] for e in _all_lines(home) if e["event"] == "cli.execution"] == ["core.noop"]
    assert ("cli.pack.install", "cli", "tiny") in events and ("cli.pack.remove", "cli", "tiny") in events
    assert "hunter2" not in (home / "data" / "audit.jsonl").read_text()
    failed = next(e for e in _all_lines(home) if e["event"] == "api.login.failed")
    assert failed["actor"] == "mallory" and "not a valid API key" in failed["detail"]["reason"]


def test_masking_keeps_flags_and_masks_values_under_secret_names() -> None:
    """A boolean under a secret-named key is a flag about a secret (`api.key.set`'s `secret`), not one:
    the sinks and the export show it as stored. Strings, numbers and nested values there stay masked."""
    from engine.audit_sinks import entry

    detail = {"secret": True, "plain": {"secret": False}, "token": None, "password": "", "api_key": "k-1",
              "pin_secret": 4321, "credential": {"user": "u"}, "list": [{"secret": True, "private_key": "p"}]}
    assert entry({"event": "api.key.set", "detail": detail})["detail"] == {
        "secret": True, "plain": {"secret": False}, "token": None, "password": "", "api_key": "********",
        "pin_secret": "********", "credential": "********", "list": [{"secret": True, "private_key": "********"}]}


async def test_key_set_events_say_whether_the_key_is_secret(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`api.key.set` through the API: the file sink and `squall audit export` say `secret: true` for a
    secret key and `false` for a plain one, as the database does; the value is in neither."""
    import httpx

    from bot.http.app import create_api
    from tests.test_api import KEY
    from tests.test_api import _home as api_home
    from tests.test_cli import in_process

    config = api_home(home, "audit: {sinks: [{type: file, path: data/audit.jsonl}]}")
    squall = await Squall.start(load_config(config / "config.yml"))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(squall)),
                                     base_url="http://squall", headers={"St2-Api-Key": KEY}) as client:
            for name, secret in (("plain_key", False), ("hidden_key", True)):
                put = await client.put(f"/api/v1/keys/{name}", json={"value": "v-Lk29-value", "secret": secret})
                assert put.status_code == 200, put.text
    finally:
        await squall.close()
    sink = {e["target"]: e["detail"] for e in _all_lines(home) if e["event"] == "api.key.set"}
    done = await asyncio.to_thread(in_process(home, monkeypatch), "audit", "export")  # its own event loop
    assert done.exit_code == 0, done.stderr
    exported = {e["target"]: e["detail"] for e in map(json.loads, done.stdout.splitlines())
                if e["event"] == "api.key.set"}
    for shown in (sink, exported):
        assert shown["plain_key"]["secret"] is False and shown["hidden_key"]["secret"] is True, shown
    assert "v-Lk29-value" not in (home / "data" / "audit.jsonl").read_text() + done.stdout


# -- syslog: an event bigger than a datagram --------------------------------------------------------

def _udp_listener() -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(10)
    return listener


async def test_syslog_caps_a_big_event_and_keeps_who_did_what(home: Path) -> None:
    """A 70 kB parameter made the datagram too long ("Message too long"): the event never reached syslog.
    Now the message is at most 8 KiB (or the sink's `max_bytes`), the long value is cut and marked, and
    the event, actor, source and target arrive whole; small values arrive as they are."""
    listener, small = _udp_listener(), _udp_listener()
    config = _with(home, f"""    - {{type: syslog, host: 127.0.0.1, port: {listener.getsockname()[1]}}}
    - {{type: syslog, host: 127.0.0.1, port: {small.getsockname()[1]}, max_bytes: 1024}}
""")
    squall = await Squall.start(load_config(config))
    try:
        await squall.db(squall.store.audit_add, "api.execution", "ann", "api", "5f0c0ffee",
                        {"action": "demo.echo", "parameters": {"msg": "A" * 70_000, "count": 3}})
    finally:
        await squall.close()
    try:
        for capture, cap in ((listener, 8192), (small, 1024)):
            datagram = capture.recv(65536)
            assert len(datagram) <= cap
            body = json.loads(datagram.decode().partition(" - ")[2])
            assert (body["event"], body["actor"], body["source"], body["target"]) == (
                "api.execution", "ann", "api", "5f0c0ffee")
            msg = body["detail"]["parameters"]["msg"]
            assert msg.startswith("A" * 100) and msg.endswith("more characters cut]"), msg[-60:]
            assert body["detail"]["action"] == "demo.echo" and body["detail"]["parameters"]["count"] == 3
    finally:
        listener.close()
        small.close()


def test_syslog_leaves_out_a_detail_that_cannot_be_cut_to_fit() -> None:
    """Thousands of small values cannot be cut short enough: the detail is left out, said so, and the
    event still arrives with who did what."""
    from engine.audit_sinks import SyslogSink

    listener = _udp_listener()
    sink = SyslogSink(4, ("127.0.0.1", listener.getsockname()[1]), 1024)
    try:
        sink({"timestamp": datetime.now(UTC), "event": "cli.key.load", "actor": "root", "source": "cli", "target": None,
              "detail": {"names": [f"key{n}" for n in range(5000)]}})
        datagram = listener.recv(65536)
    finally:
        sink.close()
        listener.close()
    body = json.loads(datagram.decode().partition(" - ")[2])
    assert len(datagram) <= 1024 and (body["event"], body["actor"]) == ("cli.key.load", "root")
    assert body["detail"]["truncated"].endswith("bytes of detail left out")


@pytest.mark.parametrize("value", [100, 70000, "big", True])
async def test_a_bad_syslog_max_bytes_is_named(home: Path, value: object) -> None:
    with pytest.raises(ConfigError, match=r"'audit.sinks\[0\].max_bytes' must be a whole number of bytes from 480 "
                                          r"to 65507"):
        await Squall.start(load_config(_with(home, f"    - {{type: syslog, max_bytes: {json.dumps(value)}}}\n")))


@pytest.mark.parametrize("value", [70000, 0, -1, "http", True])
async def test_a_bad_syslog_port_is_named(home: Path, value: object) -> None:
    """Out of range, the sink loaded and then failed to send every audit event, one warning each."""
    with pytest.raises(ConfigError, match=r"'audit.sinks\[0\].port' must be a port number from 1 to 65535"):
        await Squall.start(load_config(_with(home, f"    - {{type: syslog, port: {json.dumps(value)}}}\n")))


# -- the stdout sink and the CLI --------------------------------------------------------------------

def test_a_cli_commands_stdout_is_its_answer_not_the_audit_stream(home: Path) -> None:
    """With a stdout sink configured, `squall run ... --json` printed the audit event before its document,
    and a chat action running the CLI showed it in its result. A CLI process builds no stdout sink: its
    output is one JSON document, and the event is stored and reaches the other sinks all the same."""
    config = _with(home, "    - {type: stdout}\n    - {type: file, path: data/audit.jsonl}\n")
    ran = subprocess.run([str(SQUALL), "-c", str(config), "run", "core.noop", "--json"], capture_output=True,
                         text=True, timeout=120, cwd=home)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["action"] == "core.noop"  # one document, nothing before it
    done = subprocess.run([str(SQUALL), "-c", str(config), "key", "set", "region", "eu"], capture_output=True,
                          text=True, timeout=120, cwd=home)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "set st2kv.system key region\n"
    assert [e["event"] for e in _all_lines(home)] == ["cli.execution", "cli.key.set"]


# -- who a CLI command run by an action acts for ------------------------------------------------------

_CLI_ACTION = """
name: cli_key
runner_type: local-shell-cmd
parameters:
  value: {type: string, required: true}
  cmd:
    default: '"$SQUALL_CLI" key set from_chat {{value}} && "$SQUALL_CLI" apikey create --name from-chat'
    immutable: true
"""
_CLI_FLOW = """
version: 1.0
input: [value]
tasks:
  set:
    action: demo.cli_key value=<% ctx(value) %>
"""


async def _chat_runs(squall: Squall, loopback: LoopbackAdapter, text: str, ref: str) -> dict:
    """Say `text` as alice in #ops; the execution of `ref` it started, once finished."""
    await loopback.say(text, user="alice", channel="#ops")
    [started] = await squall.executions.list(action=ref)
    done = await squall.executions.wait(started["id"], timeout=120)
    assert done["status"] == "succeeded", done["result"]
    return done


async def test_a_cli_command_run_by_a_chat_action_is_audited_as_the_chat_user(home: Path) -> None:
    """The `squall` pack's actions run "$SQUALL_CLI": a `!pack install` from chat was audited as `root`
    from `cli`. A CLI command inside an action now acts for whoever asked for the execution, from where
    they asked (the chat channel, as chat events say, also for a workflow's task), with the execution and
    the OS user in the detail; one whose execution id is set by hand, without its token, is the shell's."""
    import getpass

    _config(home)
    write(home / "packs" / "demo" / "actions" / "cli_key.yaml", _CLI_ACTION)
    write(home / "packs" / "demo" / "actions" / "cli_flow.yaml", "name: cli_flow\nrunner_type: orquesta\n"
          "entry_point: workflows/cli_flow.yaml\nparameters:\n  value: {type: string, required: true}\n")
    write(home / "packs" / "demo" / "actions" / "workflows" / "cli_flow.yaml", _CLI_FLOW)
    write(home / "packs" / "demo" / "aliases" / "cli.yaml", "name: cli_key\naction_ref: demo.cli_key\n"
          "formats: ['clikey {{value}}']\n")
    write(home / "packs" / "demo" / "aliases" / "cli_flow.yaml", "name: cli_flow\naction_ref: demo.cli_flow\n"
          "formats: ['cliflow {{value}}']\n")
    loopback = LoopbackAdapter()
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[loopback])
    await squall.chat.start()
    try:
        assert squall.registry.errors == []
        direct = await _chat_runs(squall, loopback, "!clikey one", "demo.cli_key")
        flow = await _chat_runs(squall, loopback, "!cliflow two", "demo.cli_flow")
        [task] = await squall.executions.list(parent=flow["id"])
        await settle(squall, squall.chat)
    finally:
        await squall.chat.stop()
        await squall.close()
    forged = subprocess.run([str(SQUALL), "-c", str(home / "config.yml"), "key", "set", "forged", "x"], cwd=home,
                            env={**os.environ, "ST2_ACTION_EXECUTION_ID": direct["id"],
                                 "ST2_ACTION_AUTH_TOKEN": "made-up"}, capture_output=True, text=True, timeout=120)
    assert forged.returncode == 0, forged.stderr
    store = Store.open(f"sqlite:///{home / 'data' / 'squall.db'}")
    try:
        events = [row for row in reversed(store.audit_list()) if row["event"].startswith("cli.")]
    finally:
        store.close()
    me = getpass.getuser()
    assert [(e["event"], e["actor"], e["source"], e["detail"].get("execution"), e["detail"].get("os_user"))
            for e in events] == [
        ("cli.key.set", "alice", "loopback:#ops", direct["id"], me),
        ("cli.apikey.create", "alice", "loopback:#ops", direct["id"], me),
        ("cli.key.set", "alice", "loopback:#ops", task["id"], me),  # a task of the chat's workflow
        ("cli.apikey.create", "alice", "loopback:#ops", task["id"], me),
        ("cli.key.set", me, "cli", None, None),  # an execution id without its token: the shell's
    ]


async def test_a_cli_command_run_by_an_api_execution_acts_for_its_api_user(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside chat the source is the execution's origin (`api` here, as the metrics name it); the token
    stops speaking for it once the execution ends, and the shell's attribution is back."""
    from bot.cli.common import acting_for, current_user
    from engine.tokens import mint

    _config(home)
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        squall.executions.executor = None  # stored, not run: this test plays its runner
        record = await squall.executions.request("demo.greet", {"who": "x"}, {"user": "ann", "source": "api"})
        store = squall.store
        token = await squall.db(mint, store, record["id"], "ann")
        assert await squall.db(store.update_execution, record["id"], {"status": "running"}, expect=("requested",))
        monkeypatch.setenv("ST2_ACTION_EXECUTION_ID", record["id"])
        monkeypatch.setenv("ST2_ACTION_AUTH_TOKEN", token)
        assert await squall.db(acting_for, store) == ("ann", "api", {"execution": record["id"],
                                                                     "os_user": current_user()})
        assert await squall.db(store.update_execution, record["id"], {"status": "succeeded"})
        assert await squall.db(acting_for, store) == (current_user(), "cli", {})
    finally:
        await squall.close()


def test_a_file_sink_without_a_path_writes_in_the_data_dir(home: Path) -> None:
    # It wrote `data/audit.jsonl` beside the config whatever `data_dir` said: a read-only
    # config folder, or two services sharing one, met there.
    from engine.audit_sinks import build

    config = _with(home, "    - {type: file}\n    - {type: file, path: logs/audit.jsonl}\n")
    config.write_text(config.read_text() + "data_dir: state\n")
    sinks = build(load_config(config))
    assert [sink.path for sink in sinks] == [home / "state" / "audit.jsonl", home / "logs" / "audit.jsonl"]


# -- a receiver that stops reading, a disk that fills --------------------------------------------------

def _drained(receiver: socket.socket) -> list[str]:
    """The targets of the messages queued at `receiver`, oldest first, read until none is left."""
    receiver.setblocking(False)
    targets = []
    while True:
        try:
            datagram = receiver.recv(65536)
        except BlockingIOError:
            return targets
        targets.append(json.loads(datagram.decode().partition(" - ")[2])["target"])


def _sink_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "engine.audit_sinks"]


def test_a_local_syslog_that_stops_reading_never_blocks_the_caller(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A unix datagram socket queues a handful of unread messages; then the sink's blocking `sendto` waited
    for the reader, on the event loop (`Store._tell_audited` in `batch_without_waiting`), and `squall serve`
    froze, /healthz too. Now a full queue is a failed send: the event is skipped (the database has it), the
    outage logged once, and once more when the reader catches up and events arrive again."""
    from engine.audit_sinks import SyslogSink, _guarded

    caplog.set_level(logging.INFO, logger="engine.audit_sinks")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "log.sock"))  # a stalled journald: bound, never read
    sink = SyslogSink(4, str(tmp_path / "log.sock"))
    deliver = _guarded(sink)
    finished = threading.Event()

    def send(first: int) -> None:
        for n in range(first, first + 100):
            deliver({"timestamp": datetime.now(UTC), "event": "api.execution", "actor": "ann", "target": f"e{n}",
                     "detail": {}})
        finished.set()

    try:
        threading.Thread(target=send, args=(0,), daemon=True).start()
        assert finished.wait(timeout=30), "the sink blocked on a syslog that stopped reading"
        queued = _drained(receiver)
        assert 0 < len(queued) < 100 and queued == [f"e{n}" for n in range(len(queued))]
        failures = _sink_logs(caplog)
        assert len(failures) == 1, failures  # once for the outage, not once per event
        assert "log.sock" in failures[0] and "not reading" in failures[0]

        deliver({"timestamp": datetime.now(UTC), "event": "api.execution", "actor": "ann", "target": "after",
                 "detail": {}})
        assert _drained(receiver) == ["after"]
        recovered = _sink_logs(caplog)[1:]
        assert len(recovered) == 1 and f"the {100 - len(queued)} it missed" in recovered[0], recovered

        finished.clear()  # a second outage is logged again, once
        threading.Thread(target=send, args=(100,), daemon=True).start()
        assert finished.wait(timeout=30), "the sink blocked on a syslog that stopped reading"
        assert len(_sink_logs(caplog)) == 3
    finally:
        sink.close()
        receiver.close()


#: Events through a FileSink while the disk fills (a file-size limit of 2,000 bytes), then after space is
#: freed; with `broken` set, truncating the torn line away fails too.
_FILLING_DISK = """
import os, resource, sys
from pathlib import Path
from engine.audit_sinks import FileSink, _guarded
path, broken = Path(sys.argv[1]), sys.argv[2] == "broken"
sink = _guarded(FileSink(path, 0, 0))
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
real_truncate = os.ftruncate
def failing_truncate(fd, size):
    raise OSError(5, "Input/output error")
if broken:
    os.ftruncate = failing_truncate
resource.setrlimit(resource.RLIMIT_FSIZE, (2000, hard))  # the disk is all but full
for n in range(8):
    sink({"event": "api.execution", "target": f"e{n}", "detail": {"msg": "x" * 300}})
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space freed
os.ftruncate = real_truncate
for n in range(100, 103):
    sink({"event": "api.execution", "target": f"e{n}", "detail": {"msg": "x" * 300}})
"""


@pytest.mark.parametrize("truncate", ["works", "broken"])
def test_a_write_that_fails_midway_leaves_no_partial_line(tmp_path: Path, truncate: str) -> None:
    """A write that failed halfway (a full disk) left part of a line, and the next event was appended onto
    it: both lost to a JSON-lines reader. Now the torn tail is cut off again, so every event is whole on a
    line of its own or not in the file; if even the cut fails, the next event starts on a new line."""
    path = tmp_path / "audit.jsonl"
    subprocess.run([sys.executable, "-c", _FILLING_DISK, str(path), truncate], check=True, timeout=60,
                   cwd=Path(__file__).resolve().parents[1])
    lines = path.read_text().splitlines()
    read = [_json_or_none(text) for text in lines]
    whole = [event["target"] for event in read if event is not None]
    torn = [text for text, event in zip(lines, read, strict=True) if event is None]
    assert whole == [f"e{n}" for n in range(len(whole) - 3)] + ["e100", "e101", "e102"], (whole, torn)
    assert 0 < len(whole) - 3 < 8  # the disk did fill: some events are missing, and some came before
    assert torn == ([] if truncate == "works" else [lines[len(whole) - 3]])
    if torn:  # the beginning of the first event lost, alone on its line
        assert f'"target": "e{len(whole) - 3}"' in torn[0] and "e100" not in torn[0]


def _json_or_none(text: str) -> dict | None:
    try:
        return json.loads(text)
    except ValueError:
        return None


# -- the sinks' own thread: the caller (the event loop) only queues ------------------------------------

def _event(target: str, **detail: object) -> dict:
    return {"timestamp": datetime.now(UTC), "event": "api.execution", "actor": "ann", "source": "api",
            "target": target, "detail": detail}


def _in_thread(work: Callable[[], None]) -> threading.Event:
    """Run `work` on a daemon thread; the event is set once it returned (a caller that blocks never sets it)."""
    finished = threading.Event()

    def run() -> None:
        work()
        finished.set()

    threading.Thread(target=run, daemon=True).start()
    return finished


def _read_all(fd: int, into: list[bytes]) -> threading.Thread:
    """A thread reading `fd` until its write end is closed, into `into`."""
    def read() -> None:
        while chunk := os.read(fd, 65536):
            into.append(chunk)
        os.close(fd)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader


def test_a_stdout_sink_nobody_reads_never_blocks_the_caller(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A log collector that stops reading serve's standard output: the pipe fills (64 KiB), and the sink's
    write, on the event loop (`Store._tell_audited`), froze `squall serve`. Now the caller only queues the
    event for the sinks' thread and goes on; once the pipe is read again every event arrives, in order."""
    from engine.audit_sinks import install

    read_end, write_end = os.pipe()
    pipe = os.fdopen(write_end, "w")
    monkeypatch.setattr(sys, "stdout", pipe)  # the service's stdout: a pipe its collector stopped reading
    store = Store.open(f"sqlite:///{home / 'audit.db'}")
    closables = install(store, load_config(_with(home, "    - {type: stdout}\n")))

    def record() -> None:
        for n in range(300):  # 300 kB: the pipe holds 64
            store.audit_add("api.execution", "ann", "api", f"e{n}", {"msg": "x" * 1000})

    chunks: list[bytes] = []
    try:
        finished = _in_thread(record)
        assert finished.wait(timeout=60), "recording an audit event blocked on a stdout nobody reads"
    finally:
        reader = _read_all(read_end, chunks)  # the collector reads again
        assert finished.wait(timeout=60)
        for closable in closables:
            closable.close()
        monkeypatch.undo()
        pipe.close()
        reader.join(timeout=60)
        store.close()
    targets = [json.loads(text)["target"] for text in b"".join(chunks).decode().splitlines()]
    assert targets == [f"e{n}" for n in range(300)]


class _Gate:
    """A stream that holds each write until it is let through (`let`, or all from `open`): a sink stuck on
    its receiver. `arrived` gets each event's target as its write begins; `seen` the targets written."""

    def __init__(self) -> None:
        self.arrived: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.seen: list[str] = []
        self._through = threading.Semaphore(0)
        self._open = threading.Event()

    def write(self, text: str) -> None:
        target = json.loads(text)["target"]
        self.arrived.put(target)
        if not self._open.is_set():
            assert self._through.acquire(timeout=60)
        self.seen.append(target)

    def flush(self) -> None:
        pass

    def let(self) -> None:
        self._through.release()

    def open(self) -> None:
        self._open.set()
        self._through.release()

    def wait_for(self, target: str) -> None:
        """Until the write of `target` has begun (every one before it is written)."""
        while self.arrived.get(timeout=60) != target:
            pass


def _missed(sink: str) -> float:
    """`squall_audit_sink_failures_total{sink}` now."""
    from engine.metrics import metrics

    metrics._fold()
    return metrics.registry.get_sample_value("squall_audit_sink_failures_total", {"sink": sink}) or 0.0


def test_a_full_queue_drops_counts_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    """A sink stuck longer than its queue lasts: the caller still never waits; each event past the queue's
    room is dropped for the sinks (the database has it) and counted in `squall_audit_sink_failures_total`.
    The outage is logged once when it begins and once when it ends, with the count; it ends when the queue
    is half empty again, so a sink that frees one place at a time does not log two warnings per event."""
    from engine.audit_sinks import Delivery, StreamSink

    caplog.set_level(logging.INFO, logger="engine.audit_sinks")
    gate = _Gate()
    delivery = Delivery([StreamSink(gate)], capacity=4)
    before = _missed("stdout")
    try:
        delivery(_event("e0"))
        gate.wait_for("e0")  # the sinks' thread holds e0, stuck
        finished = _in_thread(lambda: [delivery(_event(f"e{n}")) for n in range(1, 10)])
        assert finished.wait(timeout=60), "a full queue blocked the caller"
        assert _missed("stdout") - before == 5  # e1-e4 queued, e5-e9 dropped
        dropped = _sink_logs(caplog)
        assert len(dropped) == 1 and "api.execution" in dropped[0] and "full" in dropped[0], dropped
        gate.let()
        gate.wait_for("e1")  # one place free: e10 takes it, e11 finds the queue full again
        delivery(_event("e10"))
        delivery(_event("e11"))
        assert _missed("stdout") - before == 6 and len(_sink_logs(caplog)) == 1  # the same outage
        gate.open()
        gate.wait_for("e10")  # the queue is empty again
        delivery(_event("after"))
        recovered = _sink_logs(caplog)[1:]
        assert len(recovered) == 1 and "the 6 events" in recovered[0] and "--since" in recovered[0], recovered
    finally:
        gate.open()
        delivery.close()
    assert gate.seen == ["e0", "e1", "e2", "e3", "e4", "e10", "after"]  # in order, the dropped ones left out


def test_close_drains_the_queue_and_a_stuck_sink_bounds_the_wait(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A CLI command records its event and closes at once: close waits for the sinks to take every queued
    event, so the file has them all. A sink stuck for good holds close for `drain_seconds` at most, and
    what it left undelivered is logged with where to find it."""
    from engine.audit_sinks import Delivery, FileSink, StreamSink

    path = tmp_path / "audit.jsonl"
    delivery = Delivery([FileSink(path, 0, 0)])
    for n in range(2000):
        delivery(_event(f"e{n}"))
    delivery.close()
    assert [json.loads(text)["target"] for text in path.read_text().splitlines()] == [f"e{n}" for n in range(2000)]
    delivery(_event("late"))  # after close: dropped, never waited for
    assert "late" not in path.read_text()

    gate = _Gate()
    stuck = Delivery([StreamSink(gate)], drain_seconds=0.2)
    try:
        for n in range(5):
            stuck(_event(f"s{n}"))
        gate.wait_for("s0")
        closed = _in_thread(stuck.close)
        assert closed.wait(timeout=60), "close waited for a sink stuck for good"
        assert any("not delivered" in text and "squall audit export" in text for text in _sink_logs(caplog))
    finally:
        gate.open()


def test_a_syslog_host_name_is_looked_up_on_the_sinks_thread(monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """`sendto` to a host name looked it up on every event, on the event loop: a dead DNS held `squall
    serve` for the resolver's timeout per event. Now the name is looked up on the sinks' thread, once, and
    again only after a failed lookup or send: a hung resolver never holds the caller."""
    from engine.audit_sinks import Delivery, SyslogSink

    caplog.set_level(logging.INFO, logger="engine.audit_sinks")
    listener = _udp_listener()
    port = listener.getsockname()[1]
    real = socket.getaddrinfo
    answers = iter([socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
                    [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("255.255.255.255", port))],  # sendto: EACCES
                    real("127.0.0.1", port, socket.AF_INET, socket.SOCK_DGRAM)])
    resolver = threading.Event()
    lookups: list[str] = []

    def getaddrinfo(host: str, *args: object, **kwargs: object) -> list:
        if host != "siem.test":
            return real(host, *args, **kwargs)
        lookups.append(threading.current_thread().name)
        assert resolver.wait(timeout=60)  # the DNS server is slow to answer
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    before = _missed("syslog")
    delivery = Delivery([SyslogSink(4, ("siem.test", port))])
    try:
        finished = _in_thread(lambda: [delivery(_event(f"e{n}")) for n in range(4)])
        assert finished.wait(timeout=60), "the caller waited for the resolver"
        resolver.set()
    finally:
        resolver.set()
        delivery.close()
    try:
        got = [json.loads(listener.recv(65536).decode().partition(" - ")[2])["target"] for _ in range(3)]
    finally:
        listener.close()
    assert lookups and threading.current_thread().name not in lookups  # never on the caller's thread
    # At start: no answer; e0 looks up again (an address it cannot send to); e1 looks up again and is sent.
    assert len(lookups) == 3 and got == ["e1", "e2", "e3"] and _missed("syslog") - before == 1
    logged = _sink_logs(caplog)
    assert len(logged) == 2 and "siem.test:" in logged[0] and "the 1 it missed" in logged[1], logged


def test_no_sinks_no_thread(home: Path) -> None:
    """Without `audit.sinks` nothing is queued and no thread starts: the store tells no one."""
    from engine.audit_sinks import install

    store = Store.open(f"sqlite:///{home / 'audit.db'}")
    threads = threading.active_count()
    try:
        assert install(store, load_config(_with(home, "    []\n"))) == []
        assert store.audit_listeners == [] and threading.active_count() == threads
    finally:
        store.close()


async def test_closing_squall_closes_the_sinks_before_the_store(home: Path) -> None:
    """A sink's delivery reads the store while it runs (its progress, about once a second) and at its close;
    `Engine.close` closed the store first, so a sink could read a closed store. Now the sinks close after
    the database's last writes (whose events they deliver) and before the store."""
    squall = await Squall.start(load_config(_with(home, "    - {type: file, path: data/audit.jsonl}\n")))
    closed: list[str] = []
    store_close = squall.store.close
    squall.store.close = lambda: (closed.append("store"), store_close())[1]  # type: ignore[method-assign]
    for sink in squall.audit_sinks:
        sink_close = sink.close
        sink.close = lambda close=sink_close: (closed.append("sink"), close())[1]  # type: ignore[method-assign]
    await squall.db(squall.store.audit_add, "api.key.set", "ops", "api", "k1", {})
    await squall.close()
    assert squall.audit_sinks and closed == ["sink"] * len(squall.audit_sinks) + ["store"]
    assert [entry["target"] for entry in _all_lines(home)] == ["k1"]
