"""`squall key rotate` against what runs beside it: a second rotation, a database call run again, a key file
that is gone, a secret sealed under the old key while it ran. Each once lost secrets for good; the rotations
are driven as an operator would, as processes."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from engine import crypto as crypto_module
from engine import datastore as datastore_module
from engine.crypto import CryptoError, KeyRing
from engine.datastore import Datastore
from engine.storage import Store
from tests.test_cli import SQUALL, audit_failing, audit_fails, audit_log, in_process, like_a_process, succeeds

SECRETS = {f"s{n}": f"value-{n}" for n in range(20)}


def _load_secrets(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (home / "keys.json").write_text(json.dumps([{"name": k, "value": v, "secret": True} for k, v in SECRETS.items()]))
    loaded = like_a_process(home, monkeypatch)("key", "load", str(home / "keys.json"))
    assert loaded.returncode == 0, loaded.stderr


def _ring(home: Path) -> list[str]:
    return [k["id"] for k in json.loads((home / "data" / "datastore.key").read_text())["keys"]]


def _readable(home: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str | None]:
    """Every secret as `squall key list --decrypt` reads it now (None: it could not be decrypted)."""
    listed = like_a_process(home, monkeypatch)("key", "list", "--decrypt", "--json")
    assert listed.returncode == 0, listed.stderr
    return {item["name"]: item["value"] for item in json.loads(listed.stdout)}


@contextmanager
def sqlite_write_lock(database: Path) -> Iterator[sqlite3.Connection]:
    """SQLite's write lock, held as another process's long write holds it: a rotation stalls at its first write
    (its database call is handed to the database thread, which waits), in the middle of rotating."""
    holder = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield holder
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()


def _until(process: subprocess.Popen[str], text: str) -> list[str]:
    """`process`'s stderr lines up to and with the first one holding `text` (all of them if it ends first)."""
    assert process.stderr is not None
    lines: list[str] = []
    for line in process.stderr:
        lines.append(line)
        if text in line:
            break
    return lines


def test_a_second_rotation_while_one_runs_is_refused_and_every_secret_stays_readable(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two `squall key rotate` at once: each added a key and then kept only the file's first key, which was the
    other's; the key the first rotation had sealed every secret under was dropped, and all of them were lost."""
    _load_secrets(home, monkeypatch)
    old = _ring(home)
    command = [str(SQUALL), "-c", str(home / "config.yml"), "key", "rotate"]
    with sqlite_write_lock(home / "data" / "squall.db") as lock:
        first = subprocess.Popen(command, cwd=home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            started = _until(first, "added key")
            assert "added key" in started[-1], "".join(started)
            second = subprocess.run(command, cwd=home, capture_output=True, text=True, timeout=60)
        finally:
            lock.execute("ROLLBACK")  # the first rotation goes on
        out, rest = first.communicate(timeout=60)
    assert second.returncode == 2, second.stdout + second.stderr
    assert f"another key rotation is under way (pid {first.pid}); try again when it ends" in second.stderr
    assert "added key" not in second.stderr  # refused before it touched the key file
    assert first.returncode == 0, "".join(started) + rest
    assert "retired 1 old key(s)" in out
    [new] = _ring(home)
    assert new != old[0] and f"under key {new}" in out
    assert _readable(home, monkeypatch) == SECRETS


#: `squall` with one change: the loop's first database call that swaps re-encrypted secrets in meets
#: another process's SQLite write lock, as a busy database does. `storage.Database` then runs the group
#: of calls again on its thread.
_ONCE_LOCKED = """
import sqlite3, sys
import sqlalchemy as sa
from engine.storage import Store
swap, calls = Store.swap_sealed_values, []
def swap_once_locked(self, swaps):
    calls.append(swaps)
    if len(calls) == 1:
        raise sa.exc.OperationalError("UPDATE kv_pairs", {}, sqlite3.OperationalError("database is locked"))
    return swap(self, swaps)
Store.swap_sealed_values = swap_once_locked
from bot.cli import main
sys.argv[0] = "squall"
main()
"""


def test_a_rotation_whose_database_call_is_run_again_adds_its_key_once(home: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The rotation ran as one database call, and a call that met a lock is run again: the key was added
    twice, and a retire made inside it could go before the re-encrypted secrets were committed."""
    _load_secrets(home, monkeypatch)
    old = _ring(home)
    done = subprocess.run([sys.executable, "-c", _ONCE_LOCKED, "-c", str(home / "config.yml"), "key", "rotate"],
                          cwd=home, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("added key") == 1, done.stderr
    assert "retired 1 old key(s)" in done.stdout
    [new] = _ring(home)
    assert new != old[0] and f"re-encrypted {len(SECRETS)} secrets under key {new}" in done.stdout
    assert _readable(home, monkeypatch) == SECRETS


def test_a_rotation_whose_audit_event_fails_re_encrypts_and_retires_nothing(home: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`key rotate` re-encrypted every secret and retired the old key, then wrote its `cli.key.rotate` event
    apart: under a full disk the command failed (exit 3) for a rotation it had made, and the key it retired
    was retired by nobody. The event is stored with the rotation's first database write now (its first pass
    over the secrets), and the old keys go only after it: an event the database does not take re-encrypts
    nothing and retires nothing. The key the rotation added first stays in the file, sealing nothing the
    database holds (as after a rotation killed at that point); the next rotation retires it with the old."""
    cli = in_process(home, monkeypatch)
    (home / "keys.json").write_text(json.dumps([{"name": k, "value": v, "secret": True} for k, v in SECRETS.items()]))
    succeeds(cli, "key", "load", str(home / "keys.json"))
    [old] = _ring(home)
    store = Store.open(f"sqlite:///{home / 'data' / 'squall.db'}")
    try:
        sealed = store.sealed_values()
        audit_fails(cli, "cli.key.rotate", "key", "rotate")
        assert store.sealed_values() == sealed  # not one ciphertext re-encrypted
        added, kept = _ring(home)
        assert kept == old and added != old
        listed = json.loads(succeeds(cli, "key", "list", "--decrypt", "--json").stdout)
        assert {item["name"]: item["value"] for item in listed} == SECRETS
        assert [e for e in audit_log(cli) if e["event"] == "cli.key.rotate"] == []
        rotated = succeeds(cli, "key", "rotate")
        [new] = _ring(home)
        assert f"re-encrypted {len(SECRETS)} secrets under key {new}; retired 2 old key(s)" in rotated.stdout
        ring = KeyRing(home / "data" / "datastore.key")
        assert {ring.key_id_of(value) for _what, _key, value in store.sealed_values()} == {new}
        [event] = [e for e in audit_log(cli) if e["event"] == "cli.key.rotate"]
        assert (event["target"], event["detail"]["old_keys"]) == (new, [added, old])
        assert event["detail"]["reencrypted"] == len(SECRETS)
    finally:
        store.close()


@pytest.mark.postgres
def test_on_postgresql_a_rotation_whose_audit_event_is_refused_re_encrypts_nothing(
        home: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL keeps a group's other writes when one statement is refused: the first pass's swaps and the
    rotation's event share a savepoint there (`AuditEntry.together`), so an event refused alone re-encrypts
    nothing, and the rotation stops before it retires anything."""
    config = home / "config.yml"
    config.write_text(config.read_text().replace("sqlite:///data/squall.db", postgres_url))
    cli = in_process(home, monkeypatch)
    (home / "keys.json").write_text(json.dumps([{"name": k, "value": v, "secret": True} for k, v in SECRETS.items()]))
    succeeds(cli, "key", "load", str(home / "keys.json"))
    [old] = _ring(home)
    store = Store.open(postgres_url)
    try:
        sealed = store.sealed_values()
        with audit_failing("cli.key.rotate", refused=True):
            assert cli("key", "rotate").exit_code != 0
        assert store.sealed_values() == sealed
        assert old in _ring(home)
        assert store.audit_list(event="cli.key.rotate") == []
    finally:
        store.close()


def test_retiring_keeps_the_key_the_rotation_sealed_under_and_only_drops_the_ones_it_left(tmp_path: Path) -> None:
    """The retire kept the file's first key as it was then: a key added since (another rotation's) stayed and
    the one every secret had just been re-encrypted under went."""
    path = tmp_path / "datastore.key"
    rotation = KeyRing(path)
    sealed_before = rotation.encrypt("before")
    old = rotation.key_ids()
    new = rotation.add_key()
    sealed = rotation.encrypt(rotation.decrypt(sealed_before))
    later = KeyRing(path).add_key()  # a key added since, which this rotation re-encrypted nothing away from
    assert rotation.retire_old_keys(keep=new, retire=old) == 1
    assert KeyRing(path).key_ids() == [later, new]
    assert KeyRing(path).decrypt(sealed) == "before"
    with pytest.raises(CryptoError, match=r"no longer holds key 0badc0de.*nothing was retired"):
        rotation.retire_old_keys(keep="0badc0de", retire=[later])
    assert KeyRing(path).key_ids() == [later, new]


def test_a_missing_key_file_is_not_replaced_while_the_database_holds_secrets(home: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """With the key file gone, the next secret stored made a new key: sealed under a key lost again as soon as
    the operator restored the file from the backup."""
    squall = like_a_process(home, monkeypatch)
    assert squall("key", "set", "db_password", "hunter22", "--encrypt").returncode == 0
    key_file = home / "data" / "datastore.key"
    backup = key_file.read_bytes()
    key_file.unlink()

    for refused in (squall("key", "set", "other", "z", "--encrypt"), squall("key", "rotate")):
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert str(key_file) in refused.stderr and "restore it" in refused.stderr, refused.stderr
        assert "key system:db_password" in refused.stderr  # what the database holds sealed, for the operator to see
        assert not key_file.exists()
    assert squall("key", "set", "plain", "fine").returncode == 0  # nothing to seal: no key needed

    key_file.write_bytes(backup)
    assert squall("key", "get", "db_password", "--decrypt").stdout.strip() == "hunter22"
    assert squall("key", "get", "other").returncode == 2  # never stored under a key that would be lost


def test_a_fresh_database_gets_its_key_at_first_use(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    squall = like_a_process(home, monkeypatch)
    key_file = home / "data" / "datastore.key"
    assert not key_file.exists()
    assert squall("key", "set", "first", "s3cret", "--encrypt").returncode == 0
    assert len(_ring(home)) == 1
    assert squall("key", "get", "first", "--decrypt").stdout.strip() == "s3cret"


#: `squall` with one change: the value `late-secret` is sealed (under the key the file holds then) and the
#: process then waits, before it stores it, until the test creates `go` in $SQUALL_TEST_SIGNALS; it says
#: so by creating `sealed` there. The moment a `squall key set --encrypt` spends between its seal and its
#: commit, stretched so that a rotation runs in it.
_PAUSED_AFTER_SEALING = """
import os, sys, time
from pathlib import Path
from engine.crypto import KeyRing
signals = Path(os.environ["SQUALL_TEST_SIGNALS"])
encrypt = KeyRing.encrypt
def encrypt_then_wait(self, plaintext):
    sealed = encrypt(self, plaintext)
    if plaintext == "late-secret":
        (signals / "sealed").touch()
        deadline = time.monotonic() + 120
        while not (signals / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    return sealed
KeyRing.encrypt = encrypt_then_wait
from bot.cli import main
sys.argv[0] = "squall"
main()
"""


def _waits_on_a_lock(pid: int) -> bool:
    """Whether process `pid` waits for a `flock` now: /proc/locks lists a waiter as `N: -> FLOCK ... <pid> ...`."""
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if fields[1:3] == ["->", "FLOCK"] and fields[5] == str(pid):
            return True
    return False


def _until_ended_or_waiting(process: subprocess.Popen[str], deadline: float) -> None:
    """Return once `process` has ended or waits for a lock (then it waits for the writer the test holds)."""
    while process.poll() is None and not _waits_on_a_lock(process.pid):
        assert time.monotonic() < deadline, "the rotation neither ended nor waited for the writer"
        time.sleep(0.01)


@pytest.mark.parametrize("writer", ["set", "load"])
def test_a_secret_sealed_under_the_old_key_and_stored_during_a_rotation_stays_readable(
        home: Path, writer: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`squall key set --encrypt` (or `key load`) sealed its value under the old key just before a rotation
    added the new one and stored it just after the rotation had read the secrets: the rotation then retired
    the old key, and that value could never be read again. The rotation now waits for such a write to end
    before it reads the secrets, so the value is re-encrypted with the rest."""
    _load_secrets(home, monkeypatch)
    old = _ring(home)
    signals = home / "signals"
    signals.mkdir()
    (home / "late.json").write_text(json.dumps([{"name": "late", "value": "late-secret", "secret": True}]))
    arguments = ["set", "late", "late-secret", "--encrypt"] if writer == "set" else ["load", str(home / "late.json")]
    config = ["-c", str(home / "config.yml"), "key"]
    deadline = time.monotonic() + 120
    sealing = subprocess.Popen([sys.executable, "-c", _PAUSED_AFTER_SEALING, *config, *arguments], cwd=home,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "SQUALL_TEST_SIGNALS": str(signals)})
    rotation: subprocess.Popen[str] | None = None
    try:
        while not (signals / "sealed").exists():
            assert sealing.poll() is None, sealing.communicate()
            assert time.monotonic() < deadline, "the writer never sealed its value"
            time.sleep(0.01)
        rotation = subprocess.Popen([str(SQUALL), *config, "rotate"], cwd=home, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        _until_ended_or_waiting(rotation, deadline)
        (signals / "go").touch()  # the writer stores what it sealed under the old key
        written = sealing.communicate(timeout=60)
        rotated = rotation.communicate(timeout=60)
    finally:
        for process in (sealing, rotation):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    assert sealing.returncode == 0, written
    assert rotation.returncode == 0, rotated
    assert _readable(home, monkeypatch) == {**SECRETS, "late": "late-secret"}
    assert "waiting for the secrets being stored now" in rotated[1]  # it waited for the writer, which then stored
    assert "retired 1 old key(s)" in rotated[0]
    [new] = _ring(home)
    assert new != old[0] and f"re-encrypted {len(SECRETS) + 1} secrets under key {new}" in rotated[0]


def test_a_ciphertext_stored_under_the_old_key_after_the_rotation_read_the_secrets_is_reencrypted_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that seals without the rotation waiting for it (a `squall serve` holding a command's secret
    parameters for approval) sealed under the old key a moment before the new key was added and stored the
    ciphertext just after the rotation's pass had read the secrets, then stopped before the rotation looked
    for other processes: the old key was retired and the held command could never be run. The rotation's
    last pass finds nothing left under an old key before any goes. The service's key ring, read before the
    rotation, seals under the new key afterwards without being restarted (it looks whether the file changed)."""
    path = tmp_path / "datastore.key"
    store = Store.open(f"sqlite:///{tmp_path / 'rotate.db'}")
    try:
        service = Datastore(store, KeyRing(path))
        service.set("pw", "kv-secret", encrypt=True)
        old = service.keys.current_key_id
        held = service.keys.encrypt(json.dumps({"token": "held-secret"}))  # sealed under the old key
        read = store.sealed_values
        passes: list[int] = []

        def read_then_the_service_stores() -> list[tuple[str, tuple[Any, ...], str]]:
            found = read()
            passes.append(len(found))
            if len(passes) == 1:  # just after the first pass read the secrets
                now = datetime.now(UTC)
                store.approval_add({"id": "a1b2c3d4", "alias": "demo.login", "action": "demo.login",
                                    "parameters": {"token": "********"}, "render": {}, "sealed": held,
                                    "context": {}, "requester": "alice", "adapter": "loopback", "channel": "#ops",
                                    "thread": None, "groups": ["approvers"], "count": 1, "self_approval": False,
                                    "created_at": now, "expires_at": now + timedelta(hours=1),
                                    "status": "pending", "decisions": [], "revision": 0, "execution_id": None})
            return found

        monkeypatch.setattr(store, "sealed_values", read_then_the_service_stores)
        report = datastore_module.rotate_key(store, KeyRing(path), others=list)
        sealed = store.approval_get("a1b2c3d4")["sealed"]
        assert json.loads(KeyRing(path).decrypt(sealed)) == {"token": "held-secret"}
        assert (report.reencrypted, report.retired, report.unreadable, report.changed) == (2, 1, [], 0)
        assert KeyRing(path).key_ids() == [report.key_id] != [old]
        service.set("after", "sealed-after", encrypt=True)
        assert service.keys.key_id_of(service.lookup("system", "after") or "") == report.key_id
        assert Datastore(store, KeyRing(path)).get("after", decrypt=True)["value"] == "sealed-after"
    finally:
        store.close()


# -- a key file in a folder Squall cannot write (a Kubernetes secret volume) --------------------------------

@contextmanager
def _read_only(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`folder` and its files made read-only, as a secret volume mounts a key file. Not as root (which writes
    anyway): mode 0555 on the folder and 0444 on its files, so opening one for writing or creating one fails
    with EACCES. As root: `os.open` fails with EROFS for any write or create under `folder`, as a read-only
    mount answers (a bind mount needs a mount namespace of its own, which the test process has not)."""
    if os.geteuid() != 0:
        modes = {path: path.stat().st_mode for path in (folder, *folder.iterdir())}
        for path in modes:
            path.chmod(0o555 if path == folder else 0o444)
        try:
            yield
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
        return
    real_open = os.open
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC

    def read_only_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & writes and os.path.abspath(path).startswith(f"{folder}{os.sep}"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(os, "open", read_only_open)
        yield


def _seal_lock_holders(lock_file: Path) -> bool:
    """Whether some open file holds a `flock` on `lock_file` now: an exclusive one cannot be taken beside it."""
    fd = os.open(lock_file, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # lets go of the lock if it was taken
    return False


def test_a_secret_is_sealed_beside_a_key_file_in_a_read_only_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """`squall key set --encrypt` and `squall key load` with the key file on a read-only mount (a Kubernetes
    secret volume holds the key file only) failed: "cannot open the key file's lock file …seal.lock
    (Read-only file system)". No rotation can run there (it replaces the key file and makes its `.lock`),
    so there is no rotation to wait for: the seal goes on without the lock and says so once per process."""
    keys = tmp_path / "keys"
    path = keys / "datastore.key"
    sealed = KeyRing(path).encrypt("before")
    for lock_file in keys.glob("*.lock"):
        lock_file.unlink()  # what a secret volume holds: the key file alone
    monkeypatch.setattr(crypto_module._SealLock, "_warned", False)
    caplog.set_level(logging.WARNING, logger="engine.crypto")
    with _read_only(keys, monkeypatch):
        ring = KeyRing(path)
        for value in ("first", "second"):
            with ring.sealing():
                assert ring.decrypt(ring.encrypt(value)) == value
        assert ring.decrypt(sealed) == "before"
    assert sorted(p.name for p in keys.iterdir()) == ["datastore.key"]  # nothing written beside it
    warnings = [r.getMessage() for r in caplog.records if r.name == "engine.crypto"]
    assert len(warnings) == 1, warnings  # once per process, however many seals
    assert f"{path}.seal.lock" in warnings[0] and "read-only" in warnings[0]


def test_a_seal_lock_file_in_a_read_only_folder_is_locked_through_a_read_only_open(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A lock file that is there but cannot be opened for writing is opened to read: `flock` needs no more, so
    a rotation run where it can write (the same files mounted writable elsewhere) still waits for the seal."""
    keys = tmp_path / "keys"
    path = keys / "datastore.key"
    KeyRing(path).encrypt("before")
    KeyRing(path).wait_for_sealing()  # makes the seal's lock file, as a rotation does
    lock_file = keys / "datastore.key.seal.lock"
    caplog.set_level(logging.WARNING, logger="engine.crypto")
    with _read_only(keys, monkeypatch):
        ring = KeyRing(path)
        with ring.sealing():
            assert ring.decrypt(ring.encrypt("held")) == "held"
            assert _seal_lock_holders(lock_file)  # a rotation's exclusive take waits for it
        assert not _seal_lock_holders(lock_file)
    assert [r.getMessage() for r in caplog.records if r.name == "engine.crypto"] == []
