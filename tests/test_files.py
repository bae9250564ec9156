"""engine.files.write_atomically: the one atomic write of configs, rule files, the pack cache and the key ring."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from engine.files import write_atomically


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_file_is_0600_and_a_given_mode_is_kept(tmp_path: Path) -> None:
    secret = tmp_path / "config.yaml"
    assert write_atomically(secret, b"token: x\n") is True
    assert secret.read_bytes() == b"token: x\n" and _mode(secret) == 0o600
    rule = tmp_path / "rule.yaml"
    write_atomically(rule, b"enabled: false\n", mode=0o644)
    assert _mode(rule) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "rule.yaml"]  # no temporary left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "keys.json"
    target.write_bytes(b"old")

    def full_disk(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_atomically(target, b"new")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["keys.json"]


def test_exclusive_never_replaces_what_another_writer_created(tmp_path: Path) -> None:
    target = tmp_path / "keys.json"
    assert write_atomically(target, b"first", exclusive=True) is True
    assert write_atomically(target, b"second", exclusive=True) is False
    assert target.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["keys.json"]


def test_a_reader_beside_concurrent_writers_sees_only_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "packs.cache"
    contents = [bytes([65 + n]) * 200_000 for n in range(4)]
    write_atomically(target, contents[0], sync=False)
    seen: set[bytes] = set()
    stop = threading.Event()

    def write(data: bytes) -> None:
        for _ in range(20):
            write_atomically(target, data, sync=False)

    def read() -> None:
        while not stop.is_set():
            seen.add(target.read_bytes())

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(data,)) for data in contents]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    reader.join()
    assert seen <= set(contents) and seen  # never a mix, never a part
    assert [p.name for p in tmp_path.iterdir()] == ["packs.cache"]
