"""Workflow overhead per task, and with-items scaling, against baselines measured in this run.

    .venv/bin/python bench/workflows.py [--runs N]

Baseline: 20 direct core.noop executions, one after another (each waited for). Measured: an
Orquesta workflow of 20 sequential core.noop tasks (and the same as an ActionChain); the
difference divided by 20 is what conducting costs per task. with-items over 100 and 1,000
core.noop items shows time per item (linear growth keeps it flat).
Targets (issue 8): at most 2 ms extra per task; with-items growing linearly.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bot.app import Squall  # noqa: E402
from engine.config import load_config  # noqa: E402

TASKS = 20


def _pack(home: Path) -> Path:
    pack = home / "packs" / "wfbench"
    (pack / "actions" / "workflows").mkdir(parents=True)
    (pack / "actions" / "chains").mkdir(parents=True)
    (pack / "pack.yaml").write_text("ref: wfbench\nname: wfbench\nversion: 0.1.0\n")
    tasks = "\n".join(f"  t{i}:\n    action: core.noop\n" + (f"    next: [{{do: t{i + 1}}}]\n" if i < TASKS else "")
                      for i in range(1, TASKS + 1))
    (pack / "actions" / "workflows" / "seq.yaml").write_text(f"version: 1.0\ntasks:\n{tasks}")
    (pack / "actions" / "seq.yaml").write_text("name: seq\nrunner_type: orquesta\nentry_point: workflows/seq.yaml\n")
    chain = "\n".join(f"  - name: t{i}\n    ref: core.noop\n" + (f"    on-success: t{i + 1}\n" if i < TASKS else "")
                      for i in range(1, TASKS + 1))
    (pack / "actions" / "chains" / "chain.yaml").write_text(f"chain:\n{chain}")
    (pack / "actions" / "chain.yaml").write_text("name: chain\nrunner_type: action-chain\n"
                                                 "entry_point: chains/chain.yaml\n")
    (pack / "actions" / "workflows" / "items.yaml").write_text(
        "version: 1.0\ninput: [n]\ntasks:\n  each:\n    with:\n      items: <% range(0, ctx(n)).toList() %>\n"
        "      concurrency: 50\n    action: core.noop\n")
    (pack / "actions" / "items.yaml").write_text("name: items\nrunner_type: orquesta\nentry_point: "
                                                 "workflows/items.yaml\nparameters:\n  n: {type: integer}\n")
    return pack


async def main(runs: int) -> None:
    home = Path(tempfile.mkdtemp(prefix="squall-wfbench-"))
    _pack(home)
    (home / "config.yml").write_text(f"database: {{url: 'sqlite:///{home}/squall.db'}}\npacks: {{paths: [packs]}}\n")
    app = await Squall.start(load_config(home / "config.yml"))
    ex = app.executions

    async def run(ref: str, **params: object) -> float:
        start = time.perf_counter()
        record = await ex.request(ref, params)
        done = await ex.wait(record["id"], timeout=600)
        assert done["status"] == "succeeded", done
        return time.perf_counter() - start

    async def direct() -> float:
        start = time.perf_counter()
        for _ in range(TASKS):
            await run("core.noop")
        return time.perf_counter() - start

    for _ in range(3):  # warm up: caches, SQLite pages, parsed workflow files
        await direct()
        await run("wfbench.seq")
        await run("wfbench.chain")

    baseline, orquesta, chain = [], [], []
    for _ in range(runs):
        baseline.append(await direct())
        orquesta.append(await run("wfbench.seq"))
        chain.append(await run("wfbench.chain"))
    base = statistics.median(baseline) * 1000
    print(f"{'what':44} {'median ms':>10} {'per task ms':>12}")
    print(f"{'baseline: 20 direct core.noop, sequential':44} {base:10.2f} {base / TASKS:12.3f}")
    for name, samples in (("orquesta: 20 sequential core.noop tasks", orquesta),
                          ("action-chain: 20 core.noop tasks", chain)):
        median = statistics.median(samples) * 1000
        extra = (median - base) / TASKS
        print(f"{name:44} {median:10.2f} {median / TASKS:12.3f}")
        print(f"  -> {median / base:.2f}x the baseline; {extra:+.3f} ms per task over a direct execution "
              f"(target <= 2 ms)")

    print()
    samples: dict[int, list[float]] = {100: [], 1000: []}
    for _ in range(max(1, runs // 5)):  # interleaved, so the growing database weighs on both alike
        for n in samples:
            samples[n].append(await run("wfbench.items", n=n))
    per_item = {}
    for n in samples:
        per_item[n] = statistics.median(samples[n]) * 1000 / n
        print(f"with-items over {n:5} core.noop items (concurrency 50): {per_item[n]:.3f} ms per item "
              f"({per_item[n] / (base / TASKS):.2f}x a direct core.noop)")
    print(f"time per item, 1,000 vs 100 items: {per_item[1000] / per_item[100]:.2f}x (linear growth = ~1x)")
    await app.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    asyncio.run(main(parser.parse_args().runs))
