"""The web UI with many executions: server time of the executions pages against the API's JSON list.

    .venv/bin/python bench/ui.py [--quick] [--rows N] [--requests N] [--lines N]
                                 [--no-sqlite] [--no-postgres] [--no-live]

For each database, SQLite (a file in a throwaway home) and PostgreSQL (a throwaway cluster of its
own, tests/pgcluster.py; left out when PostgreSQL is not installed or with `--no-postgres`):

1. N executions (default 100,000; `--quick` 10,000) stored through the `Store` in batches of 1,000
   (one transaction each, `Store.batch`), progress shown: a month of top-level executions, one
   every ~26 s, over 20 actions of the shipped packs, 88% succeeded, 8% failed, a few timeouts,
   canceled or running, 0.05% `abandoned` (the rare filter), from chat (40%, Mattermost or Slack,
   six channels), the API, rules and timers, with a small result (~200 bytes of stdout) each.
2. `Squall.start` on that database and the API's app (`create_api`, the UI mounted on it, as `squall
   serve` serves them) driven in-process through httpx's ASGITransport: no network, so the time a
   request takes is the server's (routing, session, query, template or JSON). A viewer account
   logs in through the form first. Rows, timed round-robin (one request of each row per round, so
   a busy machine slows all rows alike) after 5 unmeasured rounds; `--requests` rounds (default
   200; `--quick` 50); p50 and p95 of each:
   - `api list`: `GET /api/v1/executions?limit=50` (the baseline; the same 50 rows as the list
     page, since no stored execution has a parent), `api status=failed`, `api action=...`;
   - `page list`: `GET /executions` (the newest 50); `page deep`: the page below the 50,000th
     newest (`before=`: keyset paging, so as cheap as the first); `page status=failed`,
     `page action=...`, `page source=chat&user=...`, `page one day` (a time range a week back),
     `page rare status` (0.05% of rows match: the query reads far down the index to fill a page).
   Each row is printed as a multiple of `api list` measured in the same run, and the filtered
   pages also as a multiple of the API's filtered list where the API has that filter.
   Target from issue 18: the list and a filtered page at p95 <= 150 ms.
3. Once per run (`--no-live` skips it): the delay from an action printing a line to an SSE client
   receiving it. A real `squall serve` (SQLite, local executor) runs an action that prints the time
   every 50 ms (`--lines`, default 100; `--quick` 20), followed at once by two clients: the UI's
   stream (`/live/executions/ID`, logged in as a viewer) and the API's (`/stream/v1/executions/ID/
   output`, StackStorm's live tail: the baseline). p50, p95 and max of each, the UI's p50 as a
   multiple of the API's. Target p95 <= 300 ms.

Figures are printed, never asserted. Everything started (the cluster, a server) is stopped at the
end; the homes are removed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bot.accounts import create_user, hash_password  # noqa: E402
from bot.app import Squall  # noqa: E402
from bot.http import create_api  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.storage import Store  # noqa: E402
from tests.conftest import wait_until_answering  # noqa: E402
from tests.pgcluster import Cluster, free_port, initdb_path  # noqa: E402

KEY = "bench-ui-key-0123456789"
VIEWER, PASSWORD = "bench-viewer", "bench-viewer-password"
BATCH = 1_000
WARMUP_ROUNDS = 5
TARGET_PAGE_MS, TARGET_LIVE_MS = 150, 300
ACTIONS = ("core.local", "core.echo", "core.noop", "core.http", "core.remote", "core.local_sudo",
           "linux.check_loadavg", "linux.check_processes", "linux.cp", "linux.dig", "linux.file_touch",
           "linux.lsof", "linux.mv", "linux.netstat", "linux.rm", "linux.service", "linux.traceroute",
           "linux.vmstat", "linux.wait_for_ssh", "chatops.post_message")
FILTERED_ACTION = "linux.dig"
USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")
CHANNELS = ("#ops", "#deploys", "#alerts", "#db", "#infra", "#random")
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


# -- the rows --------------------------------------------------------------------------------------------

def _status(rng: random.Random) -> str:
    roll = rng.random()
    for status, share in (("abandoned", 0.0005), ("failed", 0.08), ("timeout", 0.01), ("canceled", 0.01),
                          ("running", 0.0005)):
        if roll < share:
            return status
        roll -= share
    return "succeeded"


def _context(rng: random.Random, user: str) -> dict[str, Any]:
    roll = rng.random()
    if roll < 0.4:
        adapter = rng.choice(("mattermost", "slack"))
        channel = rng.choice(CHANNELS)
        return {"user": user, "api_user": user, "source": "chat", "source_channel": channel,
                "action_alias_ref": {"id": "ops.run", "name": "run"},
                "chat": {"adapter": adapter, "channel": channel, "thread": f"t{rng.randrange(10**9)}",
                         "alias": "ops.run"}}
    if roll < 0.7:
        return {"user": user, "source": "api"}
    if roll < 0.9:
        return {"user": "squall", "rule": {"ref": "ops.on_alert", "id": "r1"},
                "trigger_instance": {"id": f"{rng.randrange(16**24):024x}", "name": "core.st2.webhook"}}
    return {"user": "squall", "rule": {"ref": "ops.nightly", "id": "r2"},
            "trigger_instance": {"id": f"{rng.randrange(16**24):024x}", "name": "core.st2.CronTimer"}}


def execution_rows(count: int, now: datetime, seed: int = 18) -> list[dict[str, Any]]:
    """`count` top-level executions, oldest first, the newest a minute before `now`."""
    rng = random.Random(seed)
    step = timedelta(days=30) / count
    rows = []
    for i in range(count):
        start = now - timedelta(minutes=1) - step * (count - 1 - i)
        status = _status(rng)
        user = rng.choice(USERS)
        took = timedelta(seconds=rng.uniform(0.05, 20))
        micros = int(start.timestamp() * 1_000_000)
        rows.append({
            "id": f"{micros:014x}{rng.randrange(16**10):010x}", "action": rng.choice(ACTIONS),
            "runner": "local-shell-cmd", "status": status,
            "parameters": {"cmd": f"uptime && echo {i}", "timeout": 60}, "spec": {}, "sealed": None,
            "result": None if status == "running" else {
                "stdout": f"{i}: " + " 10:00:01 up 3 days,  2 users,  load average: 0.12, 0.08, 0.02\n" * 2,
                "stderr": "", "return_code": 0 if status == "succeeded" else 1,
                "succeeded": status == "succeeded", "failed": status != "succeeded"},
            "context": _context(rng, user), "log": [{"status": "requested", "timestamp": start.isoformat()}],
            "parent": None, "runner_info": None, "start_timestamp": start,
            "end_timestamp": None if status == "running" else start + took})
    return rows


def seed(url: str, count: int, label: str) -> tuple[float, list[dict[str, Any]]]:
    """Store `count` executions at `url` through the Store; seconds taken and the rows (oldest first)."""
    rows = execution_rows(count, datetime.now(UTC))
    store = Store.open(url)
    began = time.perf_counter()
    try:
        for first in range(0, count, BATCH):
            with store.batch():
                for row in rows[first:first + BATCH]:
                    store.insert_execution(row)
            done = min(first + BATCH, count)
            rate = done / (time.perf_counter() - began)
            print(f"\r  {label}: stored {done:,}/{count:,} executions ({rate:,.0f}/s)", end="", flush=True)
        print()
    finally:
        store.close()
    return time.perf_counter() - began, rows


# -- timing ----------------------------------------------------------------------------------------------

def _write_config(home: Path, url: str) -> Path:
    config = home / "config.yml"
    config.write_text(f"database:\n  url: {url}\npacks:\n  paths: []\napi:\n  keys: [{KEY}]\n"
                      "adapters:\n  console:\n    enabled: false\n")
    return config


async def _viewer(app: Any, squall: Squall) -> httpx.AsyncClient:
    """A browser-like client logged in through the form as a viewer (the session's cookie kept)."""
    assert await squall.db(create_user, squall.store, VIEWER, "viewer", hash_password(PASSWORD))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 40000)),
                               base_url="http://squall")
    form = await client.get("/login")
    token = _CSRF.search(form.text)
    if token is None:
        raise SystemExit("the login page carries no form token: has the UI changed?")
    answer = await client.post("/login", data={"username": VIEWER, "password": PASSWORD, "csrf_token": token.group(1)})
    if answer.status_code != 303:
        raise SystemExit(f"logging in to the UI failed: {answer.status_code}")
    return client


def _rows(rows: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """What each row asks for: name -> (client, path)."""
    newest_first = rows[::-1]
    middle = newest_first[len(newest_first) // 2]["id"]
    week_ago = newest_first[0]["start_timestamp"] - timedelta(days=7)
    day = f"from={week_ago:%Y-%m-%dT%H:%M:%S}&to={week_ago + timedelta(days=1):%Y-%m-%dT%H:%M:%S}"
    return {
        "api list": ("api", "/api/v1/executions?limit=50"),
        "api status=failed": ("api", "/api/v1/executions?limit=50&status=failed"),
        f"api action={FILTERED_ACTION}": ("api", f"/api/v1/executions?limit=50&action={FILTERED_ACTION}"),
        "page list": ("page", "/executions"),
        "page deep (keyset)": ("page", f"/executions?before={middle}"),
        "page status=failed": ("page", "/executions?status=failed"),
        f"page action={FILTERED_ACTION}": ("page", f"/executions?action={FILTERED_ACTION}"),
        "page source=chat&user": ("page", "/executions?source=chat&user=carol"),
        "page one day": ("page", f"/executions?{day}"),
        "page rare status": ("page", "/executions?status=abandoned"),
    }


#: A page row's API counterpart (same filter), for the second ratio.
_COUNTERPART = {"page status=failed": "api status=failed",
                f"page action={FILTERED_ACTION}": f"api action={FILTERED_ACTION}"}


async def measure(url: str, rows: list[dict[str, Any]], rounds: int) -> dict[str, list[float]]:
    """Seconds per request of each row, over `rounds` interleaved rounds."""
    home = Path(tempfile.mkdtemp(prefix="squall-bench-ui-"))
    squall = await Squall.start(load_config(_write_config(home, url)))
    try:
        app = create_api(squall)
        page = await _viewer(app, squall)
        api = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 40001)),
                                base_url="http://squall", headers={"St2-Api-Key": KEY})
        clients = {"page": page, "api": api}
        plan = _rows(rows)
        times: dict[str, list[float]] = {name: [] for name in plan}
        try:
            for number in range(WARMUP_ROUNDS + rounds):
                for name, (which, path) in plan.items():
                    began = time.perf_counter()
                    answer = await clients[which].get(path)
                    took = time.perf_counter() - began
                    if answer.status_code != 200:
                        raise SystemExit(f"{name}: {path} answered {answer.status_code}: {answer.text[:300]}")
                    if number >= WARMUP_ROUNDS:
                        times[name].append(took)
        finally:
            await page.aclose()
            await api.aclose()
        return times
    finally:
        await squall.close()
        shutil.rmtree(home, ignore_errors=True)


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def report(label: str, count: int, seeded: float, times: dict[str, list[float]]) -> None:
    base = _p(times["api list"], 50)
    print(f"\n{label}: {count:,} executions stored in {seeded:.1f} s; {len(times['api list'])} requests per row, "
          "in-process (httpx ASGITransport)")
    print(f"{'row':28} {'p50 ms':>8} {'p95 ms':>8} {'x api list':>11} {'x api same':>11} {'p95 target':>11}")
    for name, values in times.items():
        p50, p95 = _p(values, 50), _p(values, 95)
        mate = _COUNTERPART.get(name)
        target = "" if name.startswith("api") else (
            f"{'met' if p95 * 1000 <= TARGET_PAGE_MS else 'MISSED'} {TARGET_PAGE_MS}")
        print(f"{name:28} {p50 * 1000:8.1f} {p95 * 1000:8.1f} {p50 / base:10.2f}x"
              + (f" {p50 / _p(times[mate], 50):10.2f}x" if mate else " " * 12) + f" {target:>11}")


# -- live output -----------------------------------------------------------------------------------------

_PRINTED = re.compile(r"\b(1[0-9]{9}\.[0-9]+)\b")
LIVE_PACK = """\
name: tick
runner_type: local-shell-cmd
description: Print the time, a line every 50 ms, after a second's pause (for the streams to open).
parameters:
  lines: {type: integer, default: 100}
  cmd:
    default: 'sleep 1; for i in $(seq 1 {{lines}}); do date +%s.%N; sleep 0.05; done'
    immutable: true
"""


def _serve_home(home: Path, port: int) -> list[str]:
    """A home with pack `benchui` (`benchui.tick`), an API key and a viewer; the `squall` command for it."""
    (home / "packs" / "benchui" / "actions").mkdir(parents=True)
    (home / "packs" / "benchui" / "pack.yaml").write_text("ref: benchui\nname: benchui\ndescription: bench\n"
                                                         "version: 1.0.0\nauthor: bench\n")
    (home / "packs" / "benchui" / "actions" / "tick.yaml").write_text(LIVE_PACK)
    (home / "config.yml").write_text(f"database:\n  url: sqlite:///{home / 'squall.db'}\npacks:\n  paths: [packs]\n"
                                     f"api:\n  host: 127.0.0.1\n  port: {port}\n  keys: [{KEY}]\n"
                                     "adapters:\n  console:\n    enabled: false\n")
    squall = [str(Path(sys.executable).parent / "squall"), "-c", str(home / "config.yml")]
    subprocess.run([*squall, "user", "create", VIEWER, "--role", "viewer", "--password-stdin"], input=PASSWORD + "\n",
                   check=True, capture_output=True, text=True, cwd=home)
    return squall


async def _follow(client: httpx.AsyncClient, path: str, event: str, delays: list[float],
                  opened: asyncio.Event) -> None:
    """Read the SSE stream at `path` until it ends: for every printed time in an `event`'s data, the
    delay from its printing to now."""
    async with client.stream("GET", path, headers={"Accept": "text/event-stream"}) as answer:
        if answer.status_code != 200:
            raise SystemExit(f"{path} answered {answer.status_code}")
        opened.set()
        name, data = "message", []
        async for line in answer.aiter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
            elif not line:
                if name == event:
                    now = time.time()
                    delays.extend(now - float(printed) for printed in _PRINTED.findall("\n".join(data)))
                if name == "end":
                    return
                name, data = "message", []


async def _live_run(base: str, lines: int) -> tuple[list[float], list[float]]:
    """One `benchui.tick` followed at once by the UI's stream and by the API's; their delays."""
    ui, api = [], []
    async with httpx.AsyncClient(base_url=base, timeout=60) as page, \
            httpx.AsyncClient(base_url=base, timeout=60, headers={"St2-Api-Key": KEY}) as key:
        form = await page.get("/login")
        token = _CSRF.search(form.text)
        assert token is not None, form.text[:300]
        logged = await page.post("/login", data={"username": VIEWER, "password": PASSWORD,
                                                 "csrf_token": token.group(1)})
        assert logged.status_code == 303, logged.text[:300]
        made = await key.post("/api/v1/executions", json={"action": "benchui.tick", "parameters": {"lines": lines}})
        assert made.status_code == 201, made.text[:300]
        execution_id = made.json()["id"]
        opened = asyncio.Event(), asyncio.Event()
        tasks = [asyncio.create_task(_follow(page, f"/live/executions/{execution_id}", "stdout", ui, opened[0])),
                 asyncio.create_task(_follow(key, f"/stream/v1/executions/{execution_id}/output",
                                             "st2.execution.output__create", api, opened[1]))]
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
    return ui, api


def live_delay(lines: int) -> None:
    """A real `squall serve` (SQLite, local executor) runs `benchui.tick`, which prints the time `lines`
    times, 50 ms apart; this process follows the execution with the UI's stream (`/live/executions/ID`,
    logged in as a viewer, event `stdout`) and, at the same time, with the API's (`/stream/v1/executions/
    ID/output`, StackStorm's live tail: the baseline). Delay of a line = when the client read it minus
    the time the action printed in it (one machine, one clock)."""
    home = Path(tempfile.mkdtemp(prefix="squall-bench-ui-live-"))
    port = free_port()
    squall = _serve_home(home, port)
    server = subprocess.Popen([*squall, "serve"], cwd=home, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(base, server, 60)
        if httpx.get(f"{base}/live/executions/{'0' * 24}", timeout=5).status_code == 404:
            print("\nlive output: not measured: this build has no /live/executions/ID stream")
            return
        ui, api = asyncio.run(_live_run(base, lines))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        shutil.rmtree(home, ignore_errors=True)
    print(f"\nlive output: {lines} lines printed 50 ms apart by a real `squall serve`'s action, "
          f"read by two SSE clients at once")
    print(f"{'stream':32} {'lines':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'x api p50':>10} {'p95 target':>11}")
    for name, delays in (("api /stream/v1/.../output", api), ("ui /live/executions/ID", ui)):
        if not delays:
            print(f"{name:32} {0:6} (no line received)")
            continue
        p95 = _p(delays, 95)
        met = "met" if p95 * 1000 <= TARGET_LIVE_MS else "MISSED"
        target = f"{met} {TARGET_LIVE_MS}" if name.startswith("ui") else ""
        ratio = f"{_p(delays, 50) / _p(api, 50):9.2f}x" if api else ""
        print(f"{name:32} {len(delays):6} {_p(delays, 50) * 1000:8.1f} {p95 * 1000:8.1f} {max(delays) * 1000:8.1f} "
              f"{ratio:>10} {target:>11}")


# -- main ------------------------------------------------------------------------------------------------

def _run(label: str, url: str, count: int, rounds: int) -> None:
    seconds, rows = seed(url, count, label)
    report(label, count, seconds, asyncio.run(measure(url, rows, rounds)))


def main(count: int, rounds: int, sqlite: bool, postgres: bool, live: bool, lines: int) -> int:
    print(f"bench/ui.py: {os.cpu_count()} CPUs; Python {sys.version.split()[0]}; target p95 <= {TARGET_PAGE_MS} ms "
          f"for the list and filtered pages, <= {TARGET_LIVE_MS} ms for live output")
    if sqlite:
        home = Path(tempfile.mkdtemp(prefix="squall-bench-ui-db-"))
        try:
            _run("SQLite", f"sqlite:///{home / 'squall.db'}", count, rounds)
        finally:
            shutil.rmtree(home, ignore_errors=True)
    if postgres:
        initdb = initdb_path()
        if initdb is None:
            print("\nPostgreSQL: not measured (not installed: Debian package 'postgresql')")
        else:
            cluster = Cluster(initdb, prefix="squall-bench-ui-pg-")
            try:
                cluster.start()
                _run("PostgreSQL", cluster.create("bench_ui"), count, rounds)
            finally:
                cluster.stop()
    if live:
        live_delay(lines)
    return 0


def _arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10,000 executions, 50 rounds, 20 live lines")
    parser.add_argument("--rows", type=int, help="executions stored (default 100,000; --quick 10,000)")
    parser.add_argument("--requests", type=int, help="timed requests per row (default 200; --quick 50)")
    parser.add_argument("--lines", type=int, help="lines printed for the live-output delay (default 100)")
    parser.add_argument("--no-sqlite", action="store_true", help="leave out SQLite's lists")
    parser.add_argument("--no-postgres", action="store_true", help="leave out PostgreSQL's lists")
    parser.add_argument("--no-live", action="store_true", help="leave out the live-output delay")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _arguments()
    rows_wanted: int = args.rows or (10_000 if args.quick else 100_000)
    rounds_wanted: int = args.requests or (50 if args.quick else 200)
    lines_wanted: int = args.lines or (20 if args.quick else 100)
    sys.exit(main(rows_wanted, rounds_wanted, not args.no_sqlite, not args.no_postgres, not args.no_live, lines_wanted))

