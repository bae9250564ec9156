"""`squall key ...` and key rotation, driven as an operator would: the `squall` command (run in this process)
and a config."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bot.app import Squall
from engine.config import load_config
from engine.crypto import CryptoError, KeyRing
from engine.datastore import Datastore, rotate_key
from engine.storage import Store
from tests.conftest import write
from tests.test_cli import Done, like_a_process

Cli = Callable[..., Done]


@pytest.fixture
def cli(home: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """`squall ARGS` with `home`'s config, run in this process (`like_a_process`)."""
    return like_a_process(home, monkeypatch)


def key_json(cli: Cli, *args: str) -> tuple[int, object]:
    done = cli("key", *args, "--json")
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else None


def test_set_get_list_delete(home: Path, cli: Cli) -> None:
    assert cli("key", "set", "region", "eu-west-1").returncode == 0
    assert cli("key", "set", "db_password", "hunter22", "--encrypt").returncode == 0

    plain = cli("key", "get", "region")
    assert plain.returncode == 0 and plain.stdout.strip() == "eu-west-1"
    hidden = cli("key", "get", "db_password")
    assert hidden.stdout.strip() == "********" and "hunter22" not in hidden.stdout + hidden.stderr
    shown = cli("key", "get", "db_password", "--decrypt")
    assert shown.stdout.strip() == "hunter22"

    code, items = key_json(cli, "list")
    assert code == 0
    assert [(i["name"], i["value"], i["secret"]) for i in items] == [
        ("db_password", "********", True), ("region", "eu-west-1", False)]
    _, prefixed = key_json(cli, "list", "--prefix", "reg")
    assert [i["name"] for i in prefixed] == ["region"]
    _, decrypted = key_json(cli, "list", "--decrypt")
    assert decrypted[0]["value"] == "hunter22"

    assert cli("key", "delete", "region").returncode == 0
    gone = cli("key", "get", "region")
    assert gone.returncode == 2 and "does not exist" in gone.stderr
    assert cli("key", "delete", "region").returncode == 2


def test_user_scope_and_ttl(home: Path, cli: Cli) -> None:
    assert cli("key", "set", "theme", "dark", "--scope", "user", "--user", "alice").returncode == 0
    assert cli("key", "set", "theme", "light", "--scope", "user", "--user", "bob").returncode == 0
    _, alice = key_json(cli, "list", "--scope", "user", "--user", "alice")
    assert [(i["name"], i["value"], i["user"]) for i in alice] == [("theme", "dark", "alice")]
    assert cli("key", "get", "theme").returncode == 2  # not a system key

    code, item = key_json(cli, "set", "flash", "x", "--ttl", "1")
    assert code == 0 and item["expire_timestamp"]
    time.sleep(1.2)
    assert cli("key", "get", "flash").returncode == 2  # invisible as soon as it expires

    bad = cli("key", "set", "x", "y", "--scope", "global")
    assert bad.returncode == 2 and "'system' or 'user'" in bad.stderr


def test_load_json_and_yaml_all_or_nothing(home: Path, cli: Cli) -> None:
    write(home / "keys.json", json.dumps([
        {"name": "a", "value": "1"},
        {"name": "b", "value": "secret-b", "secret": True},
        {"name": "c", "value": "mine", "scope": "user", "user": "carol"},
    ]))
    done = cli("key", "load", str(home / "keys.json"))
    assert done.returncode == 0 and "loaded 3" in done.stdout
    assert cli("key", "get", "b", "--decrypt").stdout.strip() == "secret-b"
    assert cli("key", "get", "b").stdout.strip() == "********"

    write(home / "keys.yaml", """
        - name: d
          value: {"nested": true}
        - name: e
          value: plain
    """)
    refused = cli("key", "load", str(home / "keys.yaml"))
    assert refused.returncode == 2 and "--convert" in refused.stderr and "'d'" in refused.stderr
    assert cli("key", "get", "e").returncode == 2  # nothing from the bad file was written

    converted = cli("key", "load", str(home / "keys.yaml"), "--convert")
    assert converted.returncode == 0
    assert json.loads(cli("key", "get", "d").stdout) == {"nested": True}

    write(home / "typo.yaml", "- name: f\n  vlaue: x\n")
    typo = cli("key", "load", str(home / "typo.yaml"))
    assert typo.returncode == 2 and "'name' and 'value'" in typo.stderr


def test_load_refuses_a_masked_export_and_restores_a_decrypted_one(home: Path, cli: Cli) -> None:
    """`key list --json` shows a secret as the mask; loaded back, it replaced the secret with eight
    asterisks. The load is refused, nothing written, and the message says to export with --decrypt."""
    assert cli("key", "set", "db_password", "hunter22", "--encrypt").returncode == 0
    assert cli("key", "set", "region", "eu-west-1").returncode == 0
    masked = cli("key", "list", "--json")
    write(home / "masked.json", masked.stdout)
    refused = cli("key", "load", str(home / "masked.json"))
    assert refused.returncode == 2 and "--decrypt" in refused.stderr and "db_password" in refused.stderr
    assert cli("key", "get", "db_password", "--decrypt").stdout.strip() == "hunter22"

    clear = cli("key", "list", "--decrypt", "--json")
    write(home / "clear.json", clear.stdout)
    assert cli("key", "delete", "db_password").returncode == 0
    loaded = cli("key", "load", str(home / "clear.json"))
    assert loaded.returncode == 0, loaded.stderr
    assert cli("key", "get", "db_password", "--decrypt").stdout.strip() == "hunter22"
    assert cli("key", "get", "db_password").stdout.strip() == "********"


def test_rotate_reencrypts_every_secret_and_retires_the_old_key(home: Path, cli: Cli) -> None:
    for n in range(3):
        assert cli("key", "set", f"s{n}", f"value-{n}", "--encrypt").returncode == 0
    key_file = home / "data" / "datastore.key"
    old = json.loads(key_file.read_text())["keys"][0]["id"]
    # An execution waiting with a sealed secret must still run after the rotation.
    write(home / "packs" / "sec" / "pack.yaml", "ref: sec\nname: sec\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    write(home / "packs" / "sec" / "actions" / "show.yaml", """
        name: show
        runner_type: local-shell-cmd
        parameters:
          token: {type: string, secret: true, required: true}
          cmd: {default: 'test "{{token}}" = "tok-12345" && echo same', immutable: true}
    """)
    queued = json.loads(cli("run", "sec.show", "token=tok-12345", "--async", "--json").stdout)

    rotated = cli("key", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    assert "re-encrypted 4 secrets" in rotated.stdout
    ring = json.loads(key_file.read_text())["keys"]
    assert [k["id"] for k in ring] != [old] and len(ring) == 1
    for n in range(3):
        assert cli("key", "get", f"s{n}", "--decrypt").stdout.strip() == f"value-{n}"

    rerun = json.loads(cli("execution", "re-run", queued["id"], "--json").stdout)
    assert rerun["status"] == "succeeded" and rerun["result"]["stdout"] == "same"


#: Stands for another Squall process: does what the given code says, tells the test, then waits for its stdin to close.
_OTHER_PROCESS = """
import fcntl, os, sys
from pathlib import Path
what, target = sys.argv[1], sys.argv[2]
if what == "lead":  # what a `squall serve` does when it takes the lead (engine.leader.FileLock)
    fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.pwrite(fd, b"squall 4242@another-host", 0)
elif what == "owner":  # a process that ran an execution: its owner file (engine.processes)
    from engine.processes import LEDGER
    class Holder: pass
    holder = Holder()
    LEDGER.register(Path(target), holder)
    LEDGER.ensure()
elif what == "session":  # a Squall process's session on PostgreSQL, named as each names its own
    import sqlalchemy as sa
    conn = sa.create_engine(target, connect_args={"application_name": "squall 4242@another-host"}).connect()
    conn.exec_driver_sql("SELECT 1")
print("ready", flush=True)
sys.stdin.read()
"""


@contextmanager
def another_process(what: str, target: str) -> Iterator[int]:
    """Another process holding what a running Squall process holds (`what`: lead, owner or session)."""
    child = subprocess.Popen([sys.executable, "-c", _OTHER_PROCESS, what, target], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        yield child.pid
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)


def test_rotate_keeps_the_old_keys_while_squall_serve_runs_and_retires_them_later(home: Path, cli: Cli) -> None:
    """`squall key rotate` beside a running service once retired the key the service still sealed with;
    what it stored afterwards was lost for good. Now the old keys stay until a rotation finds it alone."""
    assert cli("key", "set", "before", "s3cret-before", "--encrypt").returncode == 0
    key_file = home / "data" / "datastore.key"
    old = json.loads(key_file.read_text())["keys"][0]["id"]
    with another_process("lead", str(home / "data" / "squall.db.leader")):
        rotated = cli("key", "rotate")
        assert rotated.returncode == 0, rotated.stderr
        assert "kept the old keys: squall 4242@another-host" in rotated.stdout
        assert "run squall key rotate again while no squall serve or worker runs" in rotated.stdout
        ring = [k["id"] for k in json.loads(key_file.read_text())["keys"]]
        assert len(ring) == 2 and ring[1] == old
        assert cli("key", "get", "before", "--decrypt").stdout.strip() == "s3cret-before"
    alone = cli("key", "rotate")
    assert alone.returncode == 0, alone.stderr
    assert "retired 2 old key(s)" in alone.stdout
    assert len(json.loads(key_file.read_text())["keys"]) == 1
    assert cli("key", "get", "before", "--decrypt").stdout.strip() == "s3cret-before"


async def test_other_processes_are_those_holding_an_owner_file_beside_the_database(home: Path) -> None:
    app = await Squall.start(load_config(home / "config.yml"))
    try:
        assert await app.db(app.other_processes) == []
        with another_process("owner", str(app.executions.ledger)) as pid:
            assert await app.db(app.other_processes) == [f"squall {pid}"]
        assert await app.db(app.other_processes) == []
    finally:
        await app.close()


@pytest.mark.postgres
async def test_other_processes_on_postgresql_are_the_squall_sessions_on_the_database(home: Path,
                                                                                     postgres_url: str) -> None:
    config = home / "config.yml"
    config.write_text(config.read_text().replace("sqlite:///data/squall.db", postgres_url))
    app = await Squall.start(load_config(config))
    try:
        assert await app.db(app.other_processes) == []  # its own sessions are not another process's
        with another_process("session", postgres_url):
            assert await app.db(app.other_processes) == ["squall 4242@another-host"]
    finally:
        await app.close()


def test_rotation_keeps_old_keys_when_a_ciphertext_is_unreadable(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 's.db'}")
    keys = KeyRing(tmp_path / "k.key")
    datastore = Datastore(store, keys)
    datastore.set("good", "fine", encrypt=True)
    datastore.set("bad", "x", encrypt=True)
    stored = store.sealed_values()
    old = next(value for what, key, value in stored if (what, key) == ("key", ("system", "bad")))
    assert store.swap_sealed_values([("key", ("system", "bad"), old, "AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")]) == 0

    report = rotate_key(store, keys)
    assert len(report.unreadable) == 1 and "system:bad" in report.unreadable[0]
    assert report.retired == 0
    assert len(json.loads(keys.path.read_text())["keys"]) == 2
    assert datastore.get("good", decrypt=True)["value"] == "fine"
    listed = {i["name"]: i for i in datastore.list(decrypt=True)}
    assert listed["good"]["value"] == "fine"
    assert listed["bad"]["value"] is None and "cannot decrypt" in listed["bad"]["error"]
    with pytest.raises(CryptoError, match="bad"):
        datastore.get("bad", decrypt=True)
    store.close()


def test_a_crash_mid_rotation_loses_nothing(tmp_path: Path) -> None:
    keys = KeyRing(tmp_path / "k.key")
    before = keys.encrypt("kept")
    keys.add_key()  # the process dies here, before re-encrypting anything
    after = KeyRing(tmp_path / "k.key")
    assert after.decrypt(before) == "kept"
    assert after.key_id_of(after.encrypt("new")) == after.current_key_id != after.key_id_of(before)


def test_missing_key_file_is_named_and_nothing_falls_back_to_plaintext(home: Path, cli: Cli) -> None:
    assert cli("key", "set", "t", "secret-t", "--encrypt").returncode == 0
    (home / "data" / "datastore.key").unlink()
    done = cli("key", "get", "t", "--decrypt")
    assert done.returncode == 2
    assert "datastore.key" in done.stderr and "secret-t" not in done.stdout + done.stderr
    assert not (home / "data" / "datastore.key").exists()  # no new key was made up


def test_load_takes_ciphertext_marked_encrypted_and_refuses_a_foreign_one(home: Path, cli: Cli) -> None:
    """An `encrypted: true` item (ciphertext under this server's key, as `st2 key load` sends it and the
    API takes it) is stored as given, a secret; one that does not decrypt here is refused with the way
    out named, and nothing of its file is written."""
    sealed = KeyRing(home / "data" / "datastore.key").encrypt("hunter22")  # the server's key, made here
    write(home / "sealed.json", json.dumps([{"name": "plain", "value": "x"},
                                            {"name": "db_password", "value": sealed, "encrypted": True}]))
    loaded = cli("key", "load", str(home / "sealed.json"))
    assert loaded.returncode == 0, loaded.stderr
    assert cli("key", "get", "db_password", "--decrypt").stdout.strip() == "hunter22"
    assert cli("key", "get", "db_password").stdout.strip() == "********"

    foreign = KeyRing(home / "elsewhere.key").encrypt("other")
    write(home / "foreign.json", json.dumps([{"name": "first", "value": "1"},
                                             {"name": "stolen", "value": foreign, "encrypted": True}]))
    refused = cli("key", "load", str(home / "foreign.json"))
    assert refused.returncode == 2
    assert "item 2" in refused.stderr and "stolen" in refused.stderr and "secret: true" in refused.stderr
    assert cli("key", "get", "first").returncode == 2  # nothing of the refused file was written
    assert "Traceback" not in refused.stderr


@pytest.mark.parametrize(("second", "said"), [
    ({"name": "second", "value": "2", "scope": "bogus"}, "unknown scope 'bogus'"),
    ({"name": "second", "value": "2", "ttl": "soon"}, "ttl must be a whole number of seconds"),
    ({"name": "second", "value": "2", "ttl": 100_000_000_000}, "ttl must be at most"),
    ({"name": "k" * 600, "value": "2"}, "the longest a key's stored name may be is 512"),
    ({"name": 7, "value": "2"}, "a key needs a name"),
    ({"name": "second", "value": "2", "secret": "false"}, "secret must be true or false"),
    ({"name": "db_password", "value": "********"}, "mask shown in place of a secret"),
    ({"name": "second", "value": "a\x00b"}, "its value holds a NUL character (\\x00) at position 2"),
    ({"name": "second", "value": "2", "description": "\x00"}, "its description holds a NUL character"),
])
def test_load_checks_every_item_before_writing_any(home: Path, cli: Cli, second: dict, said: str) -> None:
    """"Nothing is written if any item is bad": a bad scope, ttl or name in item 2 was found only while
    writing it, after item 1 was stored (and `ttl: soon` was a traceback)."""
    assert cli("key", "set", "db_password", "hunter22", "--encrypt").returncode == 0
    write(home / "keys.json", json.dumps([{"name": "first", "value": "1"}, second]))
    refused = cli("key", "load", str(home / "keys.json"))
    assert refused.returncode == 2 and "item 2" in refused.stderr and said in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert cli("key", "get", "first").returncode == 2  # nothing of the file was written
    assert cli("key", "get", "db_password", "--decrypt").stdout.strip() == "hunter22"


@pytest.mark.parametrize(("value", "said"), [
    ("2024-01-01", "value is a YAML date (2024-01-01), which JSON cannot hold; quote it ('2024-01-01')"),
    ("{when: 2024-01-01 10:30:00}", "value.when is a YAML date (2024-01-01 10:30:00), which JSON cannot hold; "
                                    "quote it ('2024-01-01 10:30:00')"),
    ("[1, !!binary aGVsbG8=]", "value[1] is binary data (!!binary), which JSON cannot hold; give it as a quoted "
                               "string"),
    ("&loop [*loop]", "value[0] refers back to what holds it (a YAML alias inside its own anchor)"),
])
@pytest.mark.parametrize("convert", [False, True])
def test_load_names_a_yaml_value_json_cannot_hold(home: Path, cli: Cli, value: str, said: str, convert: bool) -> None:
    """`value: 2024-01-01` is a date to YAML and `!!binary` bytes: `key load --convert` was a TypeError
    traceback (exit 1) from json.dumps, which the refusal without --convert advised. Both now say which
    item and where in its value, and what to write instead; exit 2, nothing written."""
    write(home / "keys.yaml", f"- name: first\n  value: one\n- name: release_day\n  value: {value}\n")
    refused = cli("key", "load", str(home / "keys.yaml"), *(["--convert"] if convert else []))
    assert refused.returncode == 2, refused.stderr
    assert "Traceback" not in refused.stderr
    assert f"keys.yaml item 2 ('release_day'): {said}" in " ".join(refused.stderr.split()), refused.stderr
    assert "use --convert" not in refused.stderr  # --convert cannot store it either
    assert cli("key", "get", "first").returncode == 2  # nothing of the file was written
    write(home / "keys.yaml", "- name: release_day\n  value: '2024-01-01'\n")  # quoted, as the error says
    assert cli("key", "load", str(home / "keys.yaml")).returncode == 0
    assert cli("key", "get", "release_day").stdout.strip() == "2024-01-01"


def test_load_reads_a_ttl_of_0_as_no_expiry_as_stackstorm_does(home: Path, cli: Cli) -> None:
    """`st2 key load` sends each item to StackStorm's API, which sets a ttl only `if ttl:`."""
    write(home / "keys.json", json.dumps([{"name": "zero", "value": "1", "ttl": 0},
                                          {"name": "negative", "value": "2", "ttl": -1}]))
    refused = cli("key", "load", str(home / "keys.json"))
    assert refused.returncode == 2 and "item 2" in refused.stderr and "positive" in refused.stderr
    write(home / "keys.json", json.dumps([{"name": "zero", "value": "1", "ttl": 0}]))
    assert cli("key", "load", str(home / "keys.json")).returncode == 0
    code, item = key_json(cli, "get", "zero")
    assert code == 0 and item["value"] == "1" and item["expire_timestamp"] is None


def test_set_refuses_a_ttl_past_100_years_and_a_name_too_long_without_a_traceback(home: Path, cli: Cli) -> None:
    for ttl, said in (("99999999999999", "ttl must be at most"), ("100000000000", "ttl must be at most"),
                      ("0", "positive"), ("0", "leave --ttl out for a key that never expires")):
        done = cli("key", "set", "big", "x", "--ttl", ttl)
        assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr, done.stderr
    long = cli("key", "set", "k" * 510, "x", "--scope", "user", "--user", "ann")
    assert long.returncode == 2 and "'ann:' prefix" in long.stderr and "512" in long.stderr
    assert cli("key", "list", "--scope", "all", "--json").stdout.strip() == "[]"
    assert cli("key", "set", "big", "x", "--ttl", "3153600000").returncode == 0  # 100 years


def test_list_prefix_matches_user_scoped_keys_by_their_own_name(home: Path, cli: Cli) -> None:
    assert cli("key", "set", "theme", "dark", "--scope", "user", "--user", "carol").returncode == 0
    assert cli("key", "set", "carrot", "orange").returncode == 0
    _, every = key_json(cli, "list", "--scope", "all", "--prefix", "them")
    assert [(i["user"], i["name"]) for i in every] == [("carol", "theme")]
    _, by_user = key_json(cli, "list", "--scope", "all", "--prefix", "car")
    assert [(i["user"], i["name"]) for i in by_user] == [(None, "carrot")]
