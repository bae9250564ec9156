"""The SQLite database's files on disk: readable by Squall's user alone, whatever the umask.

They hold the audit table, executions' parameters, results and output, webhook tokens, the outbox
and chat sessions; the other state files (`audit.jsonl`, `datastore.key`, the leader file, the
pack cache) are 0600 already."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.storage import Store
from tests.test_storage import _execution


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_a_new_database_and_its_wal_and_shm_are_0600_in_a_0700_folder(tmp_path: Path, umask_022: None) -> None:
    data = tmp_path / "data"
    database = data / "squall.db"
    store = Store.open(f"sqlite:///{database}")
    try:
        store.insert_execution(_execution("e1", parameters={"token": "********"}))
        files = [database, database.with_name("squall.db-wal"), database.with_name("squall.db-shm")]
        assert all(file.exists() for file in files)  # written, still open: SQLite's WAL and its index are there
        assert {file.name: _mode(file) for file in files} == {file.name: 0o600 for file in files}
    finally:
        store.close()
    assert _mode(data) == 0o700


def test_an_existing_database_readable_by_others_is_made_private_and_said(
        tmp_path: Path, umask_022: None, caplog: pytest.LogCaptureFixture) -> None:
    database = tmp_path / "squall.db"
    Store.open(f"sqlite:///{database}").close()
    os.chmod(database, 0o644)  # as an older Squall left it
    wal = database.with_name("squall.db-wal")
    wal.write_bytes(b"")  # a WAL a killed process left behind, as readable as its database was
    os.chmod(wal, 0o644)

    with caplog.at_level(logging.INFO, logger="engine.storage"):
        store = Store.open(f"sqlite:///{database}")
    try:
        store.insert_execution(_execution("e1"))
        assert _mode(database) == 0o600
        assert _mode(wal) == 0o600
        assert _mode(database.with_name("squall.db-shm")) == 0o600
    finally:
        store.close()
    said = [record for record in caplog.records if str(database) in record.getMessage()]
    assert len(said) == 1 and said[0].levelno >= logging.INFO
    assert "0644" in said[0].getMessage()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="engine.storage"):
        Store.open(f"sqlite:///{database}").close()
    assert not [record for record in caplog.records if str(database) in record.getMessage()]  # said once


def test_a_private_database_is_never_loosened(tmp_path: Path, umask_022: None) -> None:
    database = tmp_path / "squall.db"
    Store.open(f"sqlite:///{database}").close()
    os.chmod(database, 0o640)  # the owner's bits are the owner's choice; only the group's go
    store = Store.open(f"sqlite:///{database}")
    store.close()
    assert _mode(database) == 0o600

    os.chmod(database, 0o400)
    os.chmod(tmp_path, 0o755)
    Store.open(f"sqlite:///{database}").close()
    assert _mode(database) == 0o400  # not made writable
    assert _mode(tmp_path) == 0o755  # a folder Squall did not make is left as it is
