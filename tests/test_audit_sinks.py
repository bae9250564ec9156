"""`audit.sinks`: every audit event also goes to a rotated JSON-lines file, to syslog (RFC 5424 over
UDP, checked with a local listener) or to stdout, secrets masked; a failing sink stops nothing;
`squall audit export` gives the stored log as JSON lines or CSV."""

from __future__ import annotations

import csv
import io
import json
import socket
import subprocess
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
    assert all(set(entry) == {"time", "event", "actor", "source", "target", "detail"} for entry in lines)
    chat = next(entry for entry in _all_lines(home) if entry["event"] == "chat.execution")
    assert chat["actor"] == "alice" and chat["source"] == "loopback:#ops" and chat["target"] == "demo.greet"
    secret = next(entry for entry in _all_lines(home) if entry["event"] == "api.key.set")
    assert secret["detail"] == {"value": "hunter2", "password": "********", "nested": {"api_key": "********"}}
    assert "k-123" not in (rotated.read_text() + current.read_text())
    assert len(datagrams) == 22
    executed = next(d for d in datagrams if " chat.execution " in d)
    header, _, body = executed.partition(" - ")
    assert header.startswith("<37>1 ") and " squall " in header  # auth (4) * 8 + notice (5)
    assert json.loads(body)["actor"] == "alice"
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


def test_audit_export_jsonl_and_csv_oldest_first_within_the_range(home: Path) -> None:
    from engine.storage import Store

    write(home / "config.yml", "database:\n  url: sqlite:///data/squall.db\n")
    store = Store.open(f"sqlite:///{home / 'data' / 'squall.db'}")
    try:
        for n in range(3):
            store.audit_add("api.execution", f"user{n}", "api", f"core.noop#{n}", {"token": "t-secret", "n": n})
    finally:
        store.close()

    def export(*args: str) -> str:
        done = subprocess.run([str(SQUALL), "-c", str(home / "config.yml"), "audit", "export", *args],
                              capture_output=True, text=True, timeout=60, cwd=home)
        assert done.returncode == 0, done.stderr
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
    assert rows[0] == ["time", "event", "actor", "source", "target", "detail"] and len(rows) == 4
    assert rows[3][2] == "user2" and json.loads(rows[3][5]) == {"token": "********", "n": 2}
    bad = subprocess.run([str(SQUALL), "-c", str(home / "config.yml"), "audit", "export", "--format", "xml"],
                         capture_output=True, text=True, timeout=60, cwd=home)
    assert bad.returncode == 2 and "--format must be one of jsonl, csv, not 'xml'" in bad.stderr


async def test_key_changes_logins_and_pack_changes_are_audited(home: Path) -> None:
    import base64

    import httpx

    from bot.http.app import create_api
    from tests.test_api import KEY
    from tests.test_api import _home as api_home

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
    for args in (("key", "set", "region", "eu"), ("pack", "install", str(pack)), ("pack", "remove", "tiny"),
                 ("run", "core.noop")):
        done = subprocess.run([str(SQUALL), "-c", str(home / "config.yml"), *args], capture_output=True, text=True,
                              timeout=120, cwd=home)
        assert done.returncode == 0, done.stderr
    events = [(e["event"], e["source"], e["target"]) for e in _all_lines(home)]
    assert ("api.key.set", "api", "db_pass") in events and ("api.key.delete", "api", "db_pass") in events
    assert ("api.login.failed", "api", None) in events
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
