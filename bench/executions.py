"""Execution overhead and durable throughput, each against a baseline measured in this run.

    .venv/bin/python bench/executions.py [--runs N]

Baselines: spawning /bin/true (what any shell action pays at least) and a fresh Python
interpreter that imports the action base class (what StackStorm pays per Python action).
Targets (issue 2): Python action >= 20x faster than a fresh interpreter and <= 3 ms median;
>= 1,000 durable core.noop executions per second on SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.metrics_cost import compare  # noqa: E402
from bot.app import Squall  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.runners.python import COMPAT_PATH  # noqa: E402


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1000, p99 * 1000


async def timed(runs: int, once: Callable[[], Awaitable[object]]) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        await once()
        samples.append(time.perf_counter() - start)
    return samples


async def spawn(*argv: str, env: dict[str, str] | None = None) -> None:
    process = await asyncio.create_subprocess_exec(*argv, env=env, stdout=subprocess.DEVNULL)
    await process.wait()


async def main(runs: int, throughput_n: int) -> None:
    home = Path(tempfile.mkdtemp(prefix="squall-bench-"))
    (home / "config.yml").write_text(
        f"database: {{url: 'sqlite:///{home}/squall.db'}}\npacks: {{paths: ['{REPO}/bench/packs']}}\n"
    )
    app = await Squall.start(load_config(home / "config.yml"))
    ex = app.executions

    async def run(ref: str, **params: object) -> None:
        record = await ex.request(ref, params)
        done = await ex.wait(record["id"])
        assert done["status"] == "succeeded", done

    for _ in range(20):  # warm up: caches, the pack's Python worker, SQLite pages
        await run("core.noop")
        await run("benchpack.echo_input", value="warm")

    rows: list[tuple[str, list[float]]] = []
    rows.append(("baseline: spawn /bin/true", await timed(runs, lambda: spawn("/bin/true"))))
    import os

    env = {**os.environ, "PYTHONPATH": str(COMPAT_PATH)}
    fresh = await timed(max(20, runs // 5), lambda: spawn(
        sys.executable, "-c", "from st2common.runners.base_action import Action", env=env))
    rows.append(("baseline: fresh Python interpreter", fresh))
    rows.append(("core.noop", await timed(runs, lambda: run("core.noop"))))
    rows.append(("core.local cmd=true", await timed(runs, lambda: run("core.local", cmd="true"))))
    rows.append(("python action (echo_input)", await timed(runs, lambda: run("benchpack.echo_input",
                                                                              value="x"))))
    stats = {name: summary(samples) for name, samples in rows}
    print(f"{'what':38} {'median ms':>10} {'p99 ms':>10}")
    for name, (median, p99) in stats.items():
        print(f"{name:38} {median:10.3f} {p99:10.3f}")
    py = stats["python action (echo_input)"][0]
    print()
    print(f"python action vs fresh interpreter: {stats['baseline: fresh Python interpreter'][0] / py:.1f}x faster "
          f"(target >= 20x; median {py:.3f} ms, target <= 3 ms)")
    local_ratio = stats["core.local cmd=true"][0] / stats["baseline: spawn /bin/true"][0]
    print(f"core.local cmd=true vs spawning /bin/true: {local_ratio:.2f}x the time")

    start = time.perf_counter()
    records = await asyncio.gather(*(ex.request("core.noop") for _ in range(throughput_n)))
    await asyncio.gather(*(ex.wait(r["id"]) for r in records))
    elapsed = time.perf_counter() - start
    rate = throughput_n / elapsed
    print(f"durable core.noop throughput (SQLite, {throughput_n} concurrent requests): {rate:,.0f} executions/s "
          f"(target >= 1,000; {rate / 1000:.2f}x the target)")
    sequential = await timed(500, lambda: run("core.noop"))
    print(f"durable core.noop sequential: {500 / sum(sequential):,.0f} executions/s")

    async def concurrent() -> float:
        begun = time.perf_counter()
        batch = await asyncio.gather(*(ex.request("core.noop") for _ in range(throughput_n // 2)))
        await asyncio.gather(*(ex.wait(r["id"]) for r in batch))
        return len(batch) / (time.perf_counter() - begun)

    print(f"durable core.noop throughput, {throughput_n // 2} concurrent: " + await compare(concurrent))
    await app.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--throughput", type=int, default=2000)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.runs, arguments.throughput))
