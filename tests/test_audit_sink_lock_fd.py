"""A file sink whose first open of the log file fails (here a directory at its path; a full disk or EACCES
alike) fails the start with a config error, and must not keep its lock file's descriptor open: each failed
start (a retried `build`, a test, a reload) leaked one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.audit_sinks import FileSink, build
from engine.config import ConfigError, load_config
from tests.conftest import write


def _open_descriptors() -> dict[int, str]:
    """This process's open descriptors and what each one is."""
    opened = {}
    for name in os.listdir("/proc/self/fd"):
        with_target = Path("/proc/self/fd") / name
        try:
            opened[int(name)] = os.readlink(with_target)
        except OSError:  # the listing's own descriptor, closed already
            continue
    return opened


def test_a_failing_first_open_closes_the_lock_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.mkdir()  # the log file's path cannot be opened for writing
    lock = path.with_name(".audit.jsonl.lock")
    before = _open_descriptors()
    with pytest.raises(IsADirectoryError):
        FileSink(path, 0, 0)
    after = _open_descriptors()
    assert lock.exists()  # the lock file was made: its descriptor was opened, then closed
    assert str(lock) not in after.values(), after
    assert len(after) == len(before), (before, after)


def test_a_failing_start_from_the_config_leaks_no_descriptor(tmp_path: Path) -> None:
    """`build` turns the failure into a config error naming the entry; every descriptor it opened is closed."""
    file = write(tmp_path / "config.yml", "audit:\n  sinks:\n    - {type: file, path: logs/audit.jsonl}\n")
    (tmp_path / "logs" / "audit.jsonl").mkdir(parents=True)
    config = load_config(file)
    before = _open_descriptors()
    for _ in range(3):
        with pytest.raises(ConfigError, match=r"'audit\.sinks\[0\]': .*Is a directory"):
            build(config)
    after = _open_descriptors()
    assert len(after) == len(before), (before, after)
    assert str(tmp_path / "logs" / ".audit.jsonl.lock") not in after.values()


def test_a_sink_that_opens_still_holds_its_lock_until_closed(tmp_path: Path) -> None:
    """The fix closes the lock only on a failed start: a sink that starts keeps it for its writes."""
    path = tmp_path / "audit.jsonl"
    sink = FileSink(path, 0, 0)
    try:
        assert str(path.with_name(".audit.jsonl.lock")) in _open_descriptors().values()
        sink({"event": "one", "detail": {}})
        assert '"event": "one"' in path.read_text()
    finally:
        sink.close()
    assert str(path.with_name(".audit.jsonl.lock")) not in _open_descriptors().values()
