"""`squall key rotate` against what runs beside it: a second rotation, a database call run again, a key file
that is gone. Each once lost secrets for good; the rotations are driven as an operator would, as processes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from engine.crypto import CryptoError, KeyRing
from tests.test_cli import SQUALL, squall

SECRETS = {f"s{n}": f"value-{n}" for n in range(20)}


def _load_secrets(home: Path) -> None:
    (home / "keys.json").write_text(json.dumps([{"name": k, "value": v, "secret": True} for k, v in SECRETS.items()]))
    loaded = squall(home, "key", "load", str(home / "keys.json"))
    assert loaded.returncode == 0, loaded.stderr


def _ring(home: Path) -> list[str]:
    return [k["id"] for k in json.loads((home / "data" / "datastore.key").read_text())["keys"]]


def _readable(home: Path) -> dict[str, str | None]:
    """Every secret as `squall key list --decrypt` reads it now (None: it could not be decrypted)."""
    listed = squall(home, "key", "list", "--decrypt", "--json")
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


def test_a_second_rotation_while_one_runs_is_refused_and_every_secret_stays_readable(home: Path) -> None:
    """Two `squall key rotate` at once: each added a key and then kept only the file's first key, which was the
    other's; the key the first rotation had sealed every secret under was dropped, and all of them were lost."""
    _load_secrets(home)
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
    assert _readable(home) == SECRETS


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


def test_a_rotation_whose_database_call_is_run_again_adds_its_key_once(home: Path) -> None:
    """The rotation ran as one database call, and a call that met a lock is run again: the key was added
    twice, and a retire made inside it could go before the re-encrypted secrets were committed."""
    _load_secrets(home)
    old = _ring(home)
    done = subprocess.run([sys.executable, "-c", _ONCE_LOCKED, "-c", str(home / "config.yml"), "key", "rotate"],
                          cwd=home, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("added key") == 1, done.stderr
    assert "retired 1 old key(s)" in done.stdout
    [new] = _ring(home)
    assert new != old[0] and f"re-encrypted {len(SECRETS)} secrets under key {new}" in done.stdout
    assert _readable(home) == SECRETS


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


def test_a_missing_key_file_is_not_replaced_while_the_database_holds_secrets(home: Path) -> None:
    """With the key file gone, the next secret stored made a new key: sealed under a key lost again as soon as
    the operator restored the file from the backup."""
    assert squall(home, "key", "set", "db_password", "hunter22", "--encrypt").returncode == 0
    key_file = home / "data" / "datastore.key"
    backup = key_file.read_bytes()
    key_file.unlink()

    for refused in (squall(home, "key", "set", "other", "z", "--encrypt"), squall(home, "key", "rotate")):
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert str(key_file) in refused.stderr and "restore it" in refused.stderr, refused.stderr
        assert "key system:db_password" in refused.stderr  # what the database holds sealed, for the operator to see
        assert not key_file.exists()
    assert squall(home, "key", "set", "plain", "fine").returncode == 0  # nothing to seal: no key needed

    key_file.write_bytes(backup)
    assert squall(home, "key", "get", "db_password", "--decrypt").stdout.strip() == "hunter22"
    assert squall(home, "key", "get", "other").returncode == 2  # never stored under a key that would be lost


def test_a_fresh_database_gets_its_key_at_first_use(home: Path) -> None:
    key_file = home / "data" / "datastore.key"
    assert not key_file.exists()
    assert squall(home, "key", "set", "first", "s3cret", "--encrypt").returncode == 0
    assert len(_ring(home)) == 1
    assert squall(home, "key", "get", "first", "--decrypt").stdout.strip() == "s3cret"
