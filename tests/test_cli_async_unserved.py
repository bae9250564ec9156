"""`squall run --async` stores a request for `squall serve` to run: with none running on the database, it
says so (the request waits `requested` until one starts), instead of "`squall serve` runs it" alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_cli import like_a_process


def test_an_async_run_with_no_serve_says_it_waits(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    squall = like_a_process(home, monkeypatch)
    done = squall("run", "--async", "core.noop")
    assert done.returncode == 0, done.stderr
    assert "`squall serve` runs it" in done.stdout
    assert "none runs on this database now" in done.stderr and "`requested`, until `squall serve` starts" in done.stderr
    execution_id = done.stdout.split()[1]
    shown = json.loads(squall("execution", "get", execution_id, "--json").stdout)
    assert shown["status"] == "requested"
    quiet = squall("run", "--async", "--json", "core.noop")  # a script reading JSON gets JSON alone
    assert quiet.returncode == 0 and json.loads(quiet.stdout)["status"] == "requested"
