"""Shared fixtures: a throwaway Squall home, a started Squall, and a real PostgreSQL cluster."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from bot.app import Squall
from engine.config import Config, load_config
from engine.storage import Store
from tests.pgcluster import Cluster, free_port, initdb_path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


#: The `squall` command of the interpreter running the tests (the venv's).
SQUALL = Path(sys.executable).parent / "squall"


@contextlib.contextmanager
def serving(home: Path) -> Iterator[subprocess.Popen[str]]:
    """`squall serve` on `home`'s config, once it says it serves (its output in `home/serve.log`); stopped
    with SIGTERM at the end, and waited for."""
    with open(home / "serve.log", "w") as log:
        server = subprocess.Popen([str(SQUALL), "-c", str(home / "config.yml"), "serve"], cwd=home,
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while "Squall is serving" not in (home / "serve.log").read_text():
            assert server.poll() is None and time.monotonic() < deadline, (home / "serve.log").read_text()
            time.sleep(0.1)
        yield server
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)

def write(path: Path, text: str) -> Path:
    """Write a dedented file, creating folders; tests build packs the way authors do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


@contextlib.contextmanager
def commit_groups(squall: Squall) -> Iterator[list[list[str]]]:
    """The groups of calls the event loop commits together (`Database._flush_inline`) while inside:
    for each group, its calls' function names, in order."""
    groups: list[list[str]] = []
    flush = squall.db._flush_inline

    def counted() -> None:
        groups.append([getattr(call.func, "__name__", "?") for call, _future in squall.db._inline])
        flush()

    squall.db._flush_inline = counted  # type: ignore[method-assign]
    try:
        yield groups
    finally:
        squall.db._flush_inline = flush  # type: ignore[method-assign]


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
def restore_logging() -> Iterator[None]:
    """For a test that calls `engine.logs.configure`: the root's handlers and level, and every logger it
    sets (Squall's own, the self-levelled and capped libraries), as they were before. Left changed, a later
    test's DEBUG lines of `adapters` were never captured (test_irc's `PASS ********` check)."""
    import logging

    from engine.logs import _CAPPED, _SELF_LEVELLED, OWN

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    touched = {name: logging.getLogger(name) for name in (*OWN, *_SELF_LEVELLED, *_CAPPED)}
    saved = {name: (logger.level, list(logger.handlers), logger.propagate, logger.disabled)
             for name, logger in touched.items()}
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name, (old_level, old_handlers, propagate, disabled) in saved.items():
        logger = touched[name]
        logger.setLevel(old_level)
        logger.handlers[:] = old_handlers
        logger.propagate, logger.disabled = propagate, disabled


@pytest.fixture
async def squall(config: Config) -> AsyncIterator[Squall]:
    app = await Squall.start(config)
    try:
        yield app
    finally:
        await app.close()


# -- PostgreSQL -------------------------------------------------------------------------------

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
def postgres_server() -> Iterator[Cluster]:
    """A PostgreSQL cluster of our own: initdb in a temporary folder, on a free loopback port."""
    initdb = initdb_path()
    if initdb is None:
        server_missing("PostgreSQL is not installed (Debian package 'postgresql'; .ci/run installs it)")
    cluster = Cluster(initdb)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres_server: Cluster) -> str:
    """A fresh, empty database on the session's cluster."""
    return postgres_server.create(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each storage test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'squall.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    """A migrated `Store` on `database_url` (SQLite, then PostgreSQL), closed after the test."""
    opened = Store.open(database_url)
    try:
        yield opened
    finally:
        opened.close()


#: The StackStorm client the st2 CLI tests drive Squall with.
ST2CLIENT = "st2client==3.9.0"


@pytest.fixture(scope="session")
def st2_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """StackStorm's own `st2` client (`ST2CLIENT`), installed once a run into a virtualenv of its own, or
    the one `SQUALL_TEST_ST2` names: here, so every test file that drives it shares the one install."""
    given = os.environ.get("SQUALL_TEST_ST2")
    if given:
        return Path(given)
    venv = tmp_path_factory.mktemp("st2client")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", ST2CLIENT],
                         capture_output=True, text=True, timeout=900)
    if pip.returncode != 0:
        server_missing(f"pip could not install {ST2CLIENT}: {pip.stderr.strip()[-1500:]}")
    return venv / "bin" / "st2"
