"""`squall worker` refusing what it cannot do in one line: a health port it cannot listen on (uvicorn's
SystemExit in its own task ended it in some 60 lines and exit 3, `squall.close()` skipped), a `--queues`
that names no queue (taken for every queue: a zone-a worker ran zone-b's actions); and procrastinate's
errors of a lost database connection logged in one line, not 45 lines of chained tracebacks."""

from __future__ import annotations

import io
import logging
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg_pool
import pytest
from procrastinate import exceptions as procrastinate_exceptions

from engine.config import CONFIG_ENV, load_config
from engine.logs import configure
from tests.conftest import free_port, write
from tests.test_cli import like_a_process, squall
from tests.test_scaleout import _home

#: Not this machine's address (TEST-NET-1, RFC 5737): binding it fails as a foreign --health-host does.
FOREIGN = "192.0.2.1"


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)


@pytest.fixture
def unreachable(home: Path) -> Path:
    """A procrastinate home whose PostgreSQL is not there: what the worker checks before it reaches the
    database must be said, not the database's failure."""
    return _home(home, f"postgresql+psycopg://squall@127.0.0.1:{free_port()}/squall")


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port something else listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr and "SystemExit" not in stderr and "never retrieved" not in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    return stderr


# -- 1. a health port the worker cannot listen on --------------------------------------------------------

def test_a_busy_health_port_is_refused_in_one_line_before_the_database(unreachable: Path, held_port: int,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    done = like_a_process(unreachable, monkeypatch)("worker", "--health-port", str(held_port))
    assert done.returncode == 3, done.stderr
    line = _one_line(done.stderr)
    assert f"--health-port {held_port}: cannot listen on 127.0.0.1:{held_port} (in use, or not this machine's " \
           "address)" in line, line
    assert "--health-host" in line  # and what would do instead


def test_a_foreign_health_host_is_refused_in_one_line(unreachable: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    done = like_a_process(unreachable, monkeypatch)("worker", "--health-port", str(port), "--health-host", FOREIGN)
    assert done.returncode == 3, done.stderr
    assert f"cannot listen on {FOREIGN}:{port}" in _one_line(done.stderr)


@pytest.mark.postgres
def test_a_busy_health_port_stops_a_worker_with_a_real_database_in_one_line(home: Path, postgres_url: str,
                                                                           held_port: int) -> None:
    """The reviewer's case: the database reachable, so the worker got as far as uvicorn, whose SystemExit
    came out of the loop with two tracebacks."""
    _home(home, postgres_url)
    done = squall(home, "worker", "--health-port", str(held_port), timeout=60)
    assert done.returncode == 3, done.stderr
    assert f"--health-port {held_port}: cannot listen on" in _one_line(done.stderr)


def test_serve_still_refuses_a_busy_api_port(home: Path, held_port: int) -> None:
    """The check the worker now shares (`_probe_listen`) still guards `squall serve`."""
    write(home / "config.yml", f"database:\n  url: sqlite:///data/squall.db\npacks:\n  paths: [packs]\n"
                               f"api:\n  port: {held_port}\n")
    done = squall(home, "serve", timeout=60)
    assert done.returncode == 3, done.stderr
    assert f"api.port {held_port}: cannot listen on 127.0.0.1:{held_port}" in _one_line(done.stderr)


# -- 2. --queues naming no queue -----------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["", " , ", ","])
def test_queues_naming_no_queue_is_refused(unreachable: Path, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    done = like_a_process(unreachable, monkeypatch)("worker", "--queues", value)
    assert done.returncode == 2, done.stderr
    line = _one_line(done.stderr)
    assert f"--queues {value!r} names no queue" in line
    assert "leave --queues out" in line and "--queues zone-a" in line  # how to ask for all, or name them


def test_queues_are_read_as_named() -> None:
    from bot.cli.serve import _queue_names

    assert _queue_names(None) is None  # not given: every queue
    assert _queue_names(" zone-a , ,default") == ["zone-a", "default"]


# -- 3. procrastinate's errors of a lost connection ------------------------------------------------------

@pytest.fixture
def logged(home: Path, restore_logging: None) -> Iterator[Callable[[str], io.StringIO]]:
    """Configure logging from `home`'s config plus a `logging:` section (`restore_logging` puts the
    process's back after)."""
    root = logging.getLogger()

    def configured(section: str) -> io.StringIO:
        write(home / "config.yml", (home / "config.yml").read_text() + section)
        configure(load_config(home / "config.yml"))
        stream = io.StringIO()
        root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
        return stream

    yield configured


def _pool_timeout() -> procrastinate_exceptions.ConnectorException:
    """What procrastinate's `poll_jobs_to_abort` caught after an outage: its error raised from the pool's."""
    try:
        try:
            raise psycopg_pool.PoolTimeout("couldn't get a connection after 30.00 sec")
        except psycopg_pool.PoolTimeout as exc:
            raise procrastinate_exceptions.ConnectorException() from exc
    except procrastinate_exceptions.ConnectorException as error:
        return error


def test_a_lost_connection_is_one_warning_line(logged: Callable[[str], io.StringIO]) -> None:
    stream = logged("logging:\n  libraries: warning\n")
    logging.getLogger("procrastinate.worker").exception("poll_jobs_to_abort error", exc_info=_pool_timeout())
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1, stream.getvalue()
    assert "WARNING procrastinate.worker: poll_jobs_to_abort error: database connection failed" in lines[0]
    assert "PoolTimeout: couldn't get a connection after 30.00 sec" in lines[0]


def test_a_lost_connection_is_left_out_at_libraries_error(logged: Callable[[str], io.StringIO]) -> None:
    stream = logged("logging:\n  libraries: error\n")
    logging.getLogger("procrastinate.utils").exception("poll_jobs_to_abort error", exc_info=_pool_timeout())
    assert stream.getvalue() == ""


def test_procrastinate_errors_of_other_causes_keep_their_traceback(logged: Callable[[str], io.StringIO]) -> None:
    stream = logged("logging:\n  libraries: error\n")
    try:
        raise ValueError("a bug in a task")
    except ValueError as exc:
        logging.getLogger("procrastinate.worker").exception("Side task monitor failed", exc_info=exc)
    text = stream.getvalue()
    assert "ERROR procrastinate.worker: Side task monitor failed" in text
    assert "Traceback" in text and "ValueError: a bug in a task" in text
