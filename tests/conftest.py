"""Shared fixtures: a throwaway Squall home, a started Squall, and a real PostgreSQL cluster."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from bot.app import Squall
from engine.config import Config, load_config

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def write(path: Path, text: str) -> Path:
    """Write a dedented file, creating folders; tests build packs the way authors do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A folder with a config.yml on SQLite and an empty `packs/` for the test's own packs."""
    (tmp_path / "packs").mkdir()
    # A port of its own: a CLI command in the test must never reach a service running on the default port.
    write(tmp_path / "config.yml", f"""
        database:
          url: sqlite:///data/squall.db
        packs:
          paths: [packs]
        api:
          port: {free_port()}
    """)
    return tmp_path


@pytest.fixture
def config(home: Path) -> Config:
    return load_config(home / "config.yml")


@pytest.fixture
async def squall(config: Config) -> AsyncIterator[Squall]:
    app = await Squall.start(config)
    try:
        yield app
    finally:
        await app.close()


# -- PostgreSQL -------------------------------------------------------------------------------

def _initdb() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return found[-1] if found else shutil.which("initdb")


def free_port() -> int:
    """A TCP port nobody listens on at the moment, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_answering(base_url: str, process: subprocess.Popen[str], seconds: float = 60) -> None:
    """Until the `squall serve` `process` answers `GET /healthz` at `base_url`; fails with its output
    if it exits first, or after `seconds`."""
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert process.poll() is None, process.stdout.read() if process.stdout else "squall serve exited"
        assert time.monotonic() < deadline, "squall serve did not answer on its port"
        time.sleep(0.1)


def server_missing(reason: str) -> NoReturn:
    """A real server the tests drive is not installed: skip on a developer's machine, but fail where
    `SQUALL_REQUIRE_SERVERS` is set (`.ci/run` sets it after installing them), so CI never passes by
    not running a test."""
    if os.environ.get("SQUALL_REQUIRE_SERVERS"):
        pytest.fail(f"{reason} (SQUALL_REQUIRE_SERVERS is set)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL cluster of our own: initdb in a temporary folder, on a free loopback port."""
    initdb = _initdb()
    if initdb is None:
        server_missing("PostgreSQL is not installed (Debian package 'postgresql'; .ci/run installs it)")
    bindir = Path(initdb).parent
    folder = Path(tempfile.mkdtemp(prefix="squall-pg-"))
    data = folder / "data"
    port = free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        user = "postgres"
        try:
            pwd.getpwnam(user)
        except KeyError:
            user = "nobody"
        shutil.chown(folder, user)
        as_user = ["runuser", "-u", user, "--"]
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "squall", "--auth=trust",
                    "-E", "UTF8"], check=True, capture_output=True)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l",
                    str(folder / "log"), "-w", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://squall@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A fresh, empty database on the session's cluster."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    deadline = time.monotonic() + 10
    while True:
        try:
            with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return f"{postgres_server}/{name}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each storage test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'squall.db'}"
    return request.getfixturevalue("postgres_url")
