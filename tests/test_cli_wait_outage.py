"""`squall run`'s wait for its execution's end rides out a database outage: the request is stored and the
execution runs on (here, in the command's own local executor; in a `squall worker` or `squall serve` as
well), so the command keeps waiting instead of exiting 3 ("cannot reach the database", a setup error),
which made a script that retries on a non-zero exit run the action twice.

PostgreSQL is a throwaway cluster of this module's own (`own_cluster`), which the test stops and starts
again. (SQLite needs no such test: in WAL mode the wait's reads never wait for a writer's lock.)
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SQUALL, server_missing, write
from tests.pgcluster import Cluster, Stoppable, initdb_path, own_cluster
from tests.test_pg_outage import _sql, until

NAP = """
    name: nap
    runner_type: local-shell-cmd
    parameters:
      seconds: {type: integer, default: 10}
      marker: {type: string, required: true}
      cmd: {default: "sleep {{ seconds }} && echo ran >> {{ marker }}", immutable: true}
"""


@pytest.fixture(scope="module")
def outage_cluster() -> Iterator[Cluster]:
    """A cluster of this module's own: the test stops it, which the session's shared one must never be."""
    initdb = initdb_path()
    if initdb is None:
        server_missing("PostgreSQL is not installed (Debian package 'postgresql'; .ci/run installs it)")
    yield from own_cluster(initdb, "squall-pg-cliwait-")


def _demo_home(home: Path, database_url: str) -> None:
    """`home` on `database_url`, the local executor (the command runs the action itself) and `demo.nap`."""
    write(home / "config.yml", f"""
        database:
          url: {database_url}
        packs:
          paths: [packs]
        api:
          enabled: false
        adapters:
          console:
            enabled: false
    """)
    write(home / "packs" / "demo" / "pack.yaml", "ref: demo\nname: demo\nversion: 1.0.0\n")
    write(home / "packs" / "demo" / "actions" / "nap.yaml", NAP)


def _run(home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([str(SQUALL), "-c", str(home / "config.yml"), "run", *args, "--json"], cwd=home,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.postgres
@pytest.mark.slow
def test_run_waits_out_a_postgresql_outage(home: Path, outage_cluster: Cluster, tmp_path: Path) -> None:
    """PostgreSQL stopped while `squall run` waited for its nap: the command exited 3 saying to check the
    user, password and database name, while the nap ran on and succeeded. Now it says the outage once,
    names the execution, waits, says when the database is back, and exits 0 with the nap's result."""
    url = outage_cluster.create(f"t_{uuid.uuid4().hex[:12]}")
    _demo_home(home, url)
    marker = tmp_path / "ran"
    server = Stoppable(outage_cluster)
    command = _run(home, "demo.nap", "seconds=8", f"marker={marker}")
    try:
        asyncio.run(until(lambda: bool(_running_id(url)), "the nap to run", 120))
        server.down()
        time.sleep(3)
        server.up()
        out, errors = command.communicate(timeout=180)
    finally:
        if not server.running:
            server.up()
        if command.poll() is None:
            command.kill()
            command.wait()
    assert command.returncode == 0, errors
    record = json.loads(out)
    assert record["status"] == "succeeded"
    assert marker.read_text() == "ran\n"  # once
    assert f"execution {record['id']} is stored and runs on" in errors
    assert "the database is back" in errors
    assert "/healthz" not in errors and "password" not in errors


@pytest.mark.postgres
@pytest.mark.slow
def test_run_gives_up_a_wait_the_outage_outlasts(home: Path, outage_cluster: Cluster, tmp_path: Path) -> None:
    """An outage longer than `OUTAGE_SECONDS` (made 2 s here) ends the wait with `OUTAGE_EXIT`, not 3 (a
    setup to check), and a line naming the execution and how to see it once the database is back."""
    from bot.cli.executions import OUTAGE_EXIT

    url = outage_cluster.create(f"t_{uuid.uuid4().hex[:12]}")
    _demo_home(home, url)
    server = Stoppable(outage_cluster)
    patched = ("import sys, bot.cli.executions as e; e.OUTAGE_SECONDS = 2.0; from bot.cli import main; "
               "sys.argv[0] = 'squall'; main()")
    command = subprocess.Popen([sys.executable, "-c", patched, "-c", str(home / "config.yml"), "run", "demo.nap",
                                "seconds=30", f"marker={tmp_path / 'ran'}"], cwd=home, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        asyncio.run(until(lambda: bool(_running_id(url)), "the nap to run", 120))
        execution_id = _running_id(url)
        server.down()
        _out, errors = command.communicate(timeout=120)
    finally:
        if not server.running:
            server.up()
        if command.poll() is None:
            command.kill()
            command.wait()
    assert command.returncode == OUTAGE_EXIT, errors
    assert f"execution {execution_id} is stored and runs on" in errors
    assert f"`squall execution get {execution_id}`" in errors
    assert "ran here and stops with this command" in errors  # the local executor ran it
    assert "password" not in errors


def _running_id(url: str) -> str | None:
    rows = _sql(url, "SELECT id FROM executions WHERE action = 'demo.nap' AND status = 'running'")
    return rows[0][0] if rows else None
