"""A throwaway PostgreSQL cluster: initdb in a temporary folder, started on a free loopback port.

Free of pytest, so `bench/` starts its clusters the same way the suite's fixtures do."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def initdb_path() -> str | None:
    """The newest installed `initdb`, or None when PostgreSQL is not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return found[-1] if found else shutil.which("initdb")


def free_port() -> int:
    """A TCP port nobody listens on at the moment, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """`start()` runs initdb and pg_ctl (as `postgres` when we are root: PostgreSQL refuses root);
    `url` is the server's address for user `squall`; `stop()` removes it all."""

    def __init__(self, initdb: str, prefix: str = "squall-pg-") -> None:
        self.bindir = Path(initdb).parent
        self.folder = Path(tempfile.mkdtemp(prefix=prefix))
        self.data = self.folder / "data"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            user = "postgres"
            try:
                pwd.getpwnam(user)
            except KeyError:
                user = "nobody"
            shutil.chown(self.folder, user)
            self.as_user = ["runuser", "-u", user, "--"]
        self.started = False
        self.url = f"postgresql://squall@127.0.0.1:{self.port}"

    def start(self) -> None:
        subprocess.run([*self.as_user, str(self.bindir / "initdb"), "-D", str(self.data), "-U", "squall",
                        "--auth=trust", "-E", "UTF8"], check=True, capture_output=True)
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.started = True
        subprocess.run([*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options, "-l",
                        str(self.folder / "log"), "-w", "start"], check=True, capture_output=True)

    def create(self, name: str) -> str:
        """A new empty database; its URL (retried briefly while the server finishes starting)."""
        import psycopg

        deadline = time.monotonic() + 10
        while True:
            try:
                with psycopg.connect(f"{self.url}/postgres", autocommit=True) as conn:
                    conn.execute(f'CREATE DATABASE "{name}"')
                return f"{self.url}/{name}"
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        if self.started:
            subprocess.run([*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                            "stop"], capture_output=True)
        shutil.rmtree(self.folder, ignore_errors=True)


class Stoppable:
    """A test's own cluster that it stops (`down`: by default as a crash, `-m immediate`) and starts again
    (`up`) on the same port and data: a database outage. Never the session's shared cluster."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.running = True

    def _pg_ctl(self, *args: str) -> None:
        cluster = self.cluster
        options = f"-p {cluster.port} -k {cluster.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run([*cluster.as_user, str(cluster.bindir / "pg_ctl"), "-D", str(cluster.data), "-o", options,
                        "-l", str(cluster.folder / "log"), *args], check=True, capture_output=True, timeout=120)

    def down(self, mode: str = "immediate") -> None:
        self.running = False
        self._pg_ctl("-m", mode, "-w", "stop")

    def up(self) -> None:
        self._pg_ctl("-w", "start")
        self.running = True


def own_cluster(initdb: str, prefix: str) -> Iterator[Cluster]:
    """A started cluster of a test module's own (its tests may stop it, which the session's shared one
    must never be), stopped after."""
    made = Cluster(initdb, prefix=prefix)
    try:
        made.start()
        yield made
    finally:
        made.stop()
