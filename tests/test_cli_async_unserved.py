"""`squall run --async` stores a request for `squall serve` to run: with none running on the database, it
says so (the request waits `requested` until one starts), instead of "`squall serve` runs it" alone."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_cli import squall


def test_an_async_run_with_no_serve_says_it_waits(home: Path) -> None:
    done = squall(home, "run", "--async", "core.noop")
    assert done.returncode == 0, done.stderr
    assert "`squall serve` runs it" in done.stdout
    assert "none runs on this database now" in done.stderr and "`requested`, until `squall serve` starts" in done.stderr
    execution_id = done.stdout.split()[1]
    shown = json.loads(squall(home, "execution", "get", execution_id, "--json").stdout)
    assert shown["status"] == "requested"
    quiet = squall(home, "run", "--async", "--json", "core.noop")  # a script reading JSON gets JSON alone
    assert quiet.returncode == 0 and json.loads(quiet.stdout)["status"] == "requested"
