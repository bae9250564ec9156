"""Scale-out (`executor.kind: procrastinate`): how `squall worker` processes scale, pick up and fail over.

    .venv/bin/python bench/scale.py [--quick] [--sleeps N] [--noops N] [--pickups N]

Starts a throwaway PostgreSQL cluster of its own (initdb on a free loopback port, as the `postgres`
user when run as root: the recipe of tests/conftest.py's `postgres_server`, copied because a pytest
fixture cannot be called outside pytest), two databases on it, and a throwaway home with two configs
(`api.enabled: false`, console adapter off): `config.yml` (`executor.kind: procrastinate`) and
`local.yml` (`executor.kind: local`), and a pack `bench` with `bench.sleep` (local-shell-cmd
`sleep 0.2`) and `bench.nap` (`sleep SECONDS`). Requests come from this process, through the
engine's `ExecutionService.request` of a `Squall.start(config)`: under the procrastinate config that
stores the execution and queues its job, which is what `squall serve` and the CLI do. Completion is
seen by polling the executions table. Everything it started (workers, the cluster) is stopped at
the end, by process group; figures are measured and printed, never asserted.

Rows, in one run:

1. I/O-bound throughput: N `bench.sleep` executions requested up front (none running), then 1, 2
   and 4 `squall worker --concurrency 4` processes started at once; `wall` runs from spawning the
   first worker to seeing all N `succeeded` (so it includes the workers' start-up), `busy` from
   the first execution's `running` timestamp to the last one's end (start-up left out). Each is
   shown as executions/s, and 2 and 4 workers as a multiple of 1 worker measured in the same run.
   Target: 4 workers >= 3.5x one (on wall). The ideal is 20/s per worker (4 slots of 0.2 s).
2. Durable `core.noop` throughput, end to end: N requests issued concurrently from this process
   until all are `succeeded`, with the runners already started and warm, on the same PostgreSQL
   cluster: (a) 4 `squall worker --concurrency 4` processes (procrastinate config, jobs queued by
   this process), (b) the local executor inside this process (`Squall.start(local config)`, which
   runs what it requests itself, as `squall serve` does; its own database). Printed: both rates and
   procrastinate as a multiple of local, and how long issuing the requests took (here the workers
   run while this process still requests, and on a small machine all of them share its CPUs).
3. Pickup latency with one idle worker: M `core.noop` requested one after the other (each after the
   previous one finished and 50 ms of idle), latency = the execution's `running` log timestamp minus
   its request time (`start_timestamp`); p50, p99 and max. Target: p50 <= 20 ms.
4. Failover after kill -9: 2 workers, a `bench.nap` (120 s) running on worker A; A's process group
   gets SIGKILL; time from the kill to the execution being `abandoned` by the other worker's reaper
   (target <= 30 s), whether the action's process died with A, and whether the survivor still runs
   a new request.

Defaults: N = 400 sleeps (about 5 s of work for 4 ideal workers), 1,000 noops, M = 100. `--quick`
makes them 80, 200 and 20 (a smoke run in about a minute); the full run takes about two minutes on
a busy 2-core machine, most of it row 1 (1 worker alone needs 20+ s) and the failover's ~20 s wait.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


import psycopg  # noqa: E402

from bot.app import Squall  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.executions import COMPLETED  # noqa: E402
from engine.jobs import STALLED_SECONDS  # noqa: E402
from tests.pgcluster import Cluster, initdb_path  # noqa: E402

SQUALL = Path(sys.executable).parent / "squall"
CONCURRENCY = 4
SCALE_TARGET = 3.5
PICKUP_TARGET_MS = 20.0
FAILOVER_TARGET_S = 30.0


# -- a throwaway PostgreSQL cluster (tests/conftest.py's `postgres_server`) ---------------------------

# -- the home, the workers ----------------------------------------------------------------------

def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))


def _home(home: Path, jobs_url: str, local_url: str) -> None:
    for name, url, kind in (("config.yml", jobs_url, "procrastinate"), ("local.yml", local_url, "local")):
        _write(home / name, f"""
            database:
              url: {url}
            packs:
              paths: [{home / 'packs'}]
            executor:
              kind: {kind}
            api:
              enabled: false
            adapters:
              console:
                enabled: false
        """)
    _write(home / "packs" / "bench" / "pack.yaml", "ref: bench\nname: bench\nversion: 1.0.0\n")
    _write(home / "packs" / "bench" / "actions" / "sleep.yaml", """
        name: sleep
        runner_type: local-shell-cmd
        parameters:
          cmd: {default: "sleep 0.2", immutable: true}
    """)
    _write(home / "packs" / "bench" / "actions" / "nap.yaml", """
        name: nap
        runner_type: local-shell-cmd
        parameters:
          seconds: {type: integer, default: 120}
          cmd: {default: "sleep {{ seconds }}", immutable: true}
    """)


class Workers:
    """The `squall worker` processes this bench started (each in a session of its own, output in a file)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.all: list[subprocess.Popen[bytes]] = []
        self.live: list[subprocess.Popen[bytes]] = []

    def spawn(self, count: int) -> list[subprocess.Popen[bytes]]:
        started = []
        for _ in range(count):
            log = open(self.home / f"worker-{len(self.all)}.log", "wb")  # noqa: SIM115 (the child keeps it)
            process = subprocess.Popen([str(SQUALL), "-c", str(self.home / "config.yml"), "worker",
                                        "--concurrency", str(CONCURRENCY)], cwd=self.home,
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            log.close()
            self.all.append(process)
            self.live.append(process)
            started.append(process)
        return started

    def stop(self, processes: list[subprocess.Popen[bytes]], seconds: float = 30) -> None:
        """SIGTERM (the queue is empty: they stop at once), SIGKILL if one lingers."""
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + seconds
        for process in processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            if process in self.live:
                self.live.remove(process)

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        self.live.remove(process)

    def by_pid(self, pid: int) -> subprocess.Popen[bytes] | None:
        return next((p for p in self.live if p.pid == pid), None)

    def tails(self, lines: int = 15) -> str:
        out = []
        for index, process in enumerate(self.all):
            text = (self.home / f"worker-{index}.log").read_text(errors="replace").splitlines()
            out.append(f"--- worker {index} (pid {process.pid}, exit {process.poll()}):\n" + "\n".join(text[-lines:]))
        return "\n".join(out)

    def close(self) -> None:
        for process in self.all:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _descendants(pid: int) -> list[int]:
    """The processes under `pid` (read from /proc), to see whether an action dies with its worker."""
    parents: dict[int, int] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        parents[int(stat.split("/")[2])] = int(text.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found.extend(children)
        frontier = children
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# -- measuring ------------------------------------------------------------------------------------

class Table:
    """Reads the executions table of one database (its own autocommit connection)."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)

    def statuses(self, ids: list[str]) -> Counter[str]:
        rows = self.conn.execute("SELECT status, count(*) FROM executions WHERE id = ANY(%s) GROUP BY status",
                                 (ids,)).fetchall()
        return Counter({status: count for status, count in rows})

    async def finished(self, ids: list[str], seconds: float, every: float = 0.02) -> float:
        """Poll until every execution of `ids` has ended; the monotonic time it was seen."""
        deadline = time.monotonic() + seconds
        while True:
            counts = await asyncio.to_thread(self.statuses, ids)  # off the loop: it may run a local executor
            now = time.monotonic()
            if sum(n for status, n in counts.items() if status in COMPLETED) == len(ids):
                if counts["succeeded"] != len(ids):
                    print(f"  note: not all succeeded: {dict(counts)}")
                return now
            if now > deadline:
                raise TimeoutError(f"{len(ids)} executions not finished after {seconds:.0f} s: {dict(counts)}")
            await asyncio.sleep(every)

    def record(self, execution_id: str) -> dict[str, Any]:
        row = self.conn.execute("SELECT status, runner_info, log, start_timestamp, end_timestamp FROM executions "
                                "WHERE id = %s", (execution_id,)).fetchone()
        assert row is not None, execution_id
        return dict(zip(("status", "runner_info", "log", "start_timestamp", "end_timestamp"), row, strict=True))

    def times(self, ids: list[str]) -> list[tuple[datetime, datetime | None, datetime | None]]:
        """(requested, running, ended) of each execution."""
        rows = self.conn.execute("SELECT log, start_timestamp, end_timestamp FROM executions WHERE id = ANY(%s)",
                                 (ids,)).fetchall()
        return [(requested, _running(log), ended) for log, requested, ended in rows]

    def live_workers(self) -> int:
        return int(self.conn.execute(
            "SELECT count(*) FROM procrastinate_workers WHERE last_heartbeat >= now() - make_interval(secs => %s)",
            (STALLED_SECONDS,)).fetchone()[0])

    def close(self) -> None:
        self.conn.close()


def _running(log: list[dict[str, Any]] | None) -> datetime | None:
    stamps = [entry["timestamp"] for entry in log or [] if entry.get("status") == "running"]
    return datetime.fromisoformat(stamps[0]) if stamps else None


async def request_many(app: Squall, ref: str, count: int, **params: Any) -> list[str]:
    records = await asyncio.gather(*(app.executions.request(ref, params) for _ in range(count)))
    return [record["id"] for record in records]


async def wait_for_workers(table: Table, count: int, workers: Workers, seconds: float = 60) -> float:
    start = time.monotonic()
    while table.live_workers() < count:
        if time.monotonic() - start > seconds:
            raise TimeoutError(f"{count} workers not registered after {seconds:.0f} s\n{workers.tails()}")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- the rows -------------------------------------------------------------------------------------

async def throughput(app: Squall, table: Table, workers: Workers, sleeps: int) -> None:
    print(f"1. I/O-bound throughput: {sleeps} x bench.sleep (sleep 0.2), requested up front; "
          f"workers --concurrency {CONCURRENCY}")
    print(f"   {'workers':>7} {'request/s':>10} {'first pickup':>13} {'wall s':>8} {'wall ex/s':>10} "
          f"{'busy s':>8} {'busy ex/s':>10} {'x 1w wall':>10} {'x 1w busy':>10}")
    base: tuple[float, float] | None = None
    ratios: dict[int, float] = {}
    for count in (1, 2, 4):
        start = time.perf_counter()
        ids = await request_many(app, "bench.sleep", sleeps)
        request_rate = sleeps / (time.perf_counter() - start)
        spawned_wall = datetime.now().astimezone()
        spawned = time.monotonic()
        processes = workers.spawn(count)
        try:
            done = await table.finished(ids, seconds=60 + sleeps * 0.2 / count * 4)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{workers.tails()}") from None
        wall = done - spawned
        stamps = table.times(ids)
        first = min(running for _, running, _ in stamps if running is not None)
        busy = (max(ended for _, _, ended in stamps if ended is not None) - first).total_seconds()
        rates = (sleeps / wall, sleeps / busy)
        base = base or rates
        ratios[count] = rates[0] / base[0]
        print(f"   {count:>7} {request_rate:>10.0f} {(first - spawned_wall).total_seconds():>12.2f}s {wall:>8.2f} "
              f"{rates[0]:>10.1f} {busy:>8.2f} {rates[1]:>10.1f} {rates[0] / base[0]:>9.2f}x "
              f"{rates[1] / base[1]:>9.2f}x")
        if count < 4:
            workers.stop(processes)
    verdict = "met" if ratios[4] >= SCALE_TARGET else "NOT met"
    print(f"   target: 4 workers >= {SCALE_TARGET}x one worker (wall): {ratios[4]:.2f}x, {verdict}; "
          f"2 workers {ratios[2]:.2f}x")


async def noop_throughput(app: Squall, table: Table, local_config: Any, local_url: str, noops: int) -> None:
    print(f"2. durable core.noop throughput, {noops} concurrent requests from one process, runners warm, "
          "same PostgreSQL")
    await table.finished(await request_many(app, "core.noop", 4 * CONCURRENCY), seconds=60)  # warm-up
    start = time.monotonic()
    ids = await request_many(app, "core.noop", noops)
    asked = time.monotonic() - start
    jobs = noops / (await table.finished(ids, seconds=120, every=0.01) - start)
    print(f"   procrastinate, 4 squall workers x {CONCURRENCY}:        {jobs:8.0f} executions/s "
          f"(the {noops} requests took {asked:.2f} s of it)")

    local = await Squall.start(local_config)
    local_table = Table(local_url)
    try:
        await local_table.finished(await request_many(local, "core.noop", 20), seconds=60)  # warm-up
        start = time.monotonic()
        ids = await request_many(local, "core.noop", noops)
        asked = time.monotonic() - start
        here = noops / (await local_table.finished(ids, seconds=120, every=0.01) - start)
    finally:
        local_table.close()
        await local.close()
    print(f"   local executor, in this process (max_concurrency {local_config.max_concurrency}): {here:8.0f} "
          f"executions/s (the requests took {asked:.2f} s of it)")
    print(f"   procrastinate / local: {jobs / here:.2f}x")


async def pickup(app: Squall, table: Table, count: int) -> None:
    print(f"3. pickup latency, one idle worker, {count} sequential core.noop (request -> running)")
    samples = []
    for index in range(count + 5):  # the first 5 warm up and are not counted
        execution = (await app.executions.request("core.noop", {}))["id"]
        await table.finished([execution], seconds=30, every=0.005)
        if index >= 5:
            requested, running, _ = table.times([execution])[0]
            assert running is not None
            samples.append((running - requested).total_seconds() * 1000)
        await asyncio.sleep(0.05)  # the worker goes idle (waiting on LISTEN/NOTIFY) before the next request
    p50 = statistics.median(samples)
    print(f"   p50 {p50:.1f} ms   p99 {_pct(samples, 0.99):.1f} ms   max {max(samples):.1f} ms   "
          f"min {min(samples):.1f} ms")
    print(f"   target: p50 <= {PICKUP_TARGET_MS:.0f} ms: {'met' if p50 <= PICKUP_TARGET_MS else 'NOT met'}")


async def failover(app: Squall, table: Table, workers: Workers) -> None:
    print("4. failover: 2 workers, bench.nap (sleep 120) running on worker A, kill -9 of A's process group")
    napping = (await app.executions.request("bench.nap", {}))["id"]
    deadline = time.monotonic() + 30
    while (record := table.record(napping))["status"] != "running":
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench.nap is {record['status']} after 30 s\n{workers.tails()}")
        await asyncio.sleep(0.05)
    pid = int(str(record["runner_info"]["worker"]).rsplit(":", 1)[1])
    doomed = workers.by_pid(pid)
    if doomed is None:
        raise RuntimeError(f"bench.nap runs on pid {pid}, which is none of this bench's workers")
    await asyncio.sleep(0.5)  # the action's process is started
    under = _descendants(pid)
    workers.kill(doomed)
    killed = time.monotonic()
    deadline = killed + STALLED_SECONDS + 60
    while (record := table.record(napping))["status"] in ("running", "scheduled", "requested"):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    took = time.monotonic() - killed
    survivors = [p for p in under if _alive(p)]
    for stray in survivors:  # ours (started under our worker): end them
        with contextlib.suppress(ProcessLookupError):
            os.kill(stray, signal.SIGKILL)
    ok = record["status"] == "abandoned" and took <= FAILOVER_TARGET_S
    print(f"   kill -9 -> {record['status']} in {took:.1f} s (target <= {FAILOVER_TARGET_S:.0f} s: "
          f"{'met' if ok else 'NOT met'}; STALLED_SECONDS = {STALLED_SECONDS:.0f})")
    print(f"   processes under worker A before the kill: {len(under)}; still alive after: {len(survivors)}")
    after = (await app.executions.request("core.noop", {}))["id"]
    try:
        await table.finished([after], seconds=30)
        print(f"   a new request afterwards: {table.record(after)['status']}")
    except TimeoutError as exc:
        print(f"   a new request afterwards: {exc}")


async def main(sleeps: int, noops: int, pickups: int) -> None:
    began = time.monotonic()
    initdb = initdb_path()
    if initdb is None:
        raise SystemExit("PostgreSQL is not installed (Debian package 'postgresql')")
    postgres = Cluster(initdb, prefix="squall-bench-pg-")
    home = Path(tempfile.mkdtemp(prefix="squall-bench-scale-"))
    workers = Workers(home)
    app: Squall | None = None
    table: Table | None = None
    try:
        postgres.start()
        jobs_url, local_url = postgres.create("scale_jobs"), postgres.create("scale_local")
        _home(home, jobs_url, local_url)
        config, local_config = load_config(home / "config.yml"), load_config(home / "local.yml")
        app = await Squall.start(config)  # migrates the database; requests queue jobs (procrastinate)
        table = Table(jobs_url)
        print(f"PostgreSQL {postgres.bindir.parent.name} (fsync off) on port {postgres.port}; "
              f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; Python {sys.version.split()[0]}")
        await throughput(app, table, workers, sleeps)  # leaves the 4 workers running
        await wait_for_workers(table, 4, workers)
        await noop_throughput(app, table, local_config, local_url, noops)
        workers.stop(workers.live[1:])
        await pickup(app, table, pickups)
        workers.spawn(1)
        await wait_for_workers(table, 2, workers)
        await failover(app, table, workers)
    finally:
        if table is not None:
            table.close()
        if app is not None:
            await app.close()
        workers.close()
        postgres.stop()
        shutil.rmtree(home, ignore_errors=True)
    print(f"whole bench: {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small N: a smoke run")
    parser.add_argument("--sleeps", type=int, help="bench.sleep executions per worker count (default 400, quick 80)")
    parser.add_argument("--noops", type=int, help="core.noop executions per executor (default 1000, quick 200)")
    parser.add_argument("--pickups", type=int, help="sequential requests for pickup latency (default 100, quick 20)")
    args = parser.parse_args()
    asyncio.run(main(args.sleeps or (80 if args.quick else 400), args.noops or (200 if args.quick else 1000),
                     args.pickups or (20 if args.quick else 100)))
