"""Rules engine throughput: 1,000 rules over 10 trigger types, 10,000 trigger instances (issue 5 item 3),
and webhooks end to end through a real `squall serve` (issue 21 item 4).

    .venv/bin/python bench/rules.py [--requests N] [--concurrency C] [--clients P] [--no-serve]

1. In process: instances evaluated per second with no execution (`RulesEngine.matching_rules`:
   rules indexed by trigger type and first `equals` criterion, criteria compiled once) against a
   naive evaluation in the same run (every rule for every instance, JSONPath parsed per criterion,
   no index; measured on a sample because it is slow). Target: >= 20,000 instances/s.
2. End to end: `squall serve` in a subprocess with its own temporary home (SQLite, WAL; no chat
   adapters) and a pack whose rule fires `core.noop` on every `POST /api/v1/webhooks/bench`. The
   load generator is bench/webhooks.py's (httpx in P processes, C connections in all), started
   before the clock. First N `GET /healthz` (no work, no auth) on the same server: their summed
   client rate is the baseline. Then N webhook POSTs, each stored as a trigger instance before its
   202, matched by the rule, enforced, its `core.noop` execution stored and run: the clock runs
   from the first client's start to the moment the API counts every execution `succeeded`
   (polled every 20 ms); the rate is POSTs (the clients' connection warm-ups included) over
   that time. The POSTs' own accept rate is shown as well. Target: >= 0.3x the bare endpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonpath_ng

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.operators import get_operator
from engine.packs import ContentDocument, Registry, TriggerType
from engine.rules import RulesEngine, load_rules, render_pattern
from engine.templates import build_environment
from engine.yamlfile import LineMap

REPO = Path(__file__).resolve().parent.parent

TYPES, RULES, INSTANCES, HOSTS = 10, 1_000, 10_000, 50


def build() -> tuple[Registry, list[dict[str, Any]]]:
    rnd = random.Random(5)
    registry = Registry(trigger_types={f"bench.t{i}": TriggerType(name=f"t{i}", pack="bench") for i in range(TYPES)})
    registry.actions["core.noop"] = SimpleNamespace(ref="core.noop", enabled=True)  # type: ignore[assignment]
    for n in range(RULES):
        criteria: dict[str, Any] = {"trigger.host": {"type": "equals", "pattern": f"host{rnd.randrange(HOSTS)}"},
                                    "trigger.metrics.value": {"type": "gt", "pattern": rnd.randrange(100)}}
        if n % 3 == 0:
            criteria["trigger.headers['X-Source']"] = {"type": "iequals", "pattern": "grafana"}
        if n % 10 == 0:  # some rules the index cannot narrow
            criteria = {"trigger.metrics.value#lo": {"type": "lt", "pattern": rnd.randrange(100)},
                        "trigger.tags": {"type": "contains", "pattern": "prod"}}
        data = {"name": f"r{n}", "pack": "bench", "enabled": True, "trigger": {"type": f"bench.t{n % TYPES}"},
                "criteria": criteria, "action": {"ref": "core.noop"}}
        registry.documents.append(ContentDocument("rules", "bench", f"r{n}.yaml", data, LineMap(None)))
    instances = [{"id": str(i), "trigger": f"bench.t{rnd.randrange(TYPES)}", "trace_tag": None,
                  "payload": {"host": f"host{rnd.randrange(HOSTS)}", "metrics": {"value": rnd.randrange(100)},
                              "headers": {"X-Source": rnd.choice(["Grafana", "nagios"])},
                              "tags": rnd.choice([["prod"], ["dev"]])}}
                 for i in range(INSTANCES)]
    return registry, instances


def naive(rules: list[Any], instance: dict[str, Any], env: Any) -> list[Any]:
    """Every rule, every criterion: parse the JSONPath, render, look up the operator, no index."""
    matched = []
    context = {"trigger": instance["payload"]}
    for rule in rules:
        if not rule.enabled or rule.trigger_type != instance["trigger"]:
            continue
        ok = True
        for key, spec in rule.data["criteria"].items():
            found = jsonpath_ng.parse(key.split("#", 1)[0]).find(context)
            value = found[0].value if found else None
            try:
                if not get_operator(spec["type"])(value, render_pattern(spec.get("pattern"), context, env)):
                    ok = False
                    break
            except Exception:
                ok = False
                break
        if ok:
            matched.append(rule)
    return matched


def in_process() -> None:
    registry, instances = build()
    executions = SimpleNamespace(jinja=build_environment())
    datastore = SimpleNamespace(lookup=lambda scope, key: None)
    started = time.perf_counter()
    engine = RulesEngine(registry, None, executions, None, datastore)  # type: ignore[arg-type]
    load = time.perf_counter() - started
    assert len(engine.rules) == RULES and not engine.errors

    started = time.perf_counter()
    total = 0
    for instance in instances:
        total += len(engine.matching_rules(instance))
    fast = time.perf_counter() - started

    sample = instances[:100]
    rules = load_rules(registry)[0]
    env = build_environment()
    started = time.perf_counter()
    naive_results = [naive(rules, instance, env) for instance in sample]
    slow = time.perf_counter() - started
    for instance, expected in zip(sample, naive_results, strict=True):
        assert [r.ref for r in engine.matching_rules(instance)] == [r.ref for r in expected], instance

    fast_rate, slow_rate = INSTANCES / fast, len(sample) / slow
    print(f"rules: {RULES} over {TYPES} trigger types, loaded and compiled in {load * 1000:.0f} ms")
    print(f"indexed engine: {INSTANCES} instances in {fast:.3f} s = {fast_rate:,.0f} instances/s "
          f"({total} matches, {total / INSTANCES:.2f} per instance)")
    print(f"naive (every rule, JSONPath parsed per criterion): {len(sample)} instances in {slow:.3f} s = "
          f"{slow_rate:,.0f} instances/s")
    print(f"speed-up: {fast_rate / slow_rate:,.0f}x; same matches on the sample; target >= 20,000/s: "
          f"{'met' if fast_rate >= 20_000 else 'NOT met'}")


RULE = """name: on_bench_hook
pack: benchhooks
enabled: true
trigger: {type: core.st2.webhook, parameters: {url: bench}}
action: {ref: core.noop}
"""


def _timed_part(url: str, n: int, concurrency: int, body: dict | None) -> tuple[float, float, float]:
    """One client process: bench/webhooks.py's `drive` (its rate), and when this process started and ended."""
    from bench.webhooks import drive

    started = time.time()
    rate = asyncio.run(drive(url, n, concurrency, body))
    return rate, started, time.time()


def _drive(pool: ProcessPoolExecutor, processes: int, url: str, n: int, concurrency: int,
           body: dict | None) -> list[tuple[float, float, float]]:
    per = max(1, concurrency // processes)
    return list(pool.map(_timed_part, [url] * processes, [n // processes] * processes, [per] * processes,
                         [body] * processes))


def _succeeded(client, base: str) -> tuple[int, int]:
    """(core.noop executions succeeded, in any state) by the API's counts."""
    counts = []
    for status in ("succeeded", None):
        params = {"action": "core.noop", "limit": 1, **({"status": status} if status else {})}
        counts.append(int(client.get(f"{base}/api/v1/executions", params=params).headers["X-Total-Count"]))
    return counts[0], counts[1]


def end_to_end(requests: int, concurrency: int, processes: int) -> None:
    import httpx

    from bench.webhooks import KEY, free_port
    from tests.conftest import wait_until_answering

    home = Path(tempfile.mkdtemp(prefix="squall-bench-rules-"))
    pack = home / "packs" / "benchhooks"
    (pack / "rules").mkdir(parents=True)
    (pack / "pack.yaml").write_text("ref: benchhooks\nname: benchhooks\ndescription: bench/rules.py's rule.\n"
                                    "version: 1.0.0\nauthor: Squall\n")
    (pack / "rules" / "on_bench_hook.yaml").write_text(RULE)
    port = free_port()
    (home / "config.yml").write_text(
        f"database: {{url: 'sqlite:///{home}/squall.db'}}\npacks: {{paths: ['{home}/packs']}}\n"
        f"api: {{host: 127.0.0.1, port: {port}, keys: ['{KEY}']}}\nadapters: {{console: {{enabled: false}}}}\n")
    log = (home / "serve.log").open("w")
    server = subprocess.Popen([str(Path(sys.executable).parent / "squall"), "-c", str(home / "config.yml"), "serve"],
                              cwd=home, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    body = {"event": "alert", "host": "web1"}
    try:
        wait_until_answering(base, server, 60)  # on failure, serve.log in the home says why
        hook_url, bare_url = f"{base}/api/v1/webhooks/bench", f"{base}/healthz"
        client = httpx.Client(headers={"St2-Api-Key": KEY}, timeout=30)
        with ProcessPoolExecutor(processes) as pool:
            list(pool.map(time.sleep, [0] * processes))  # the client processes exist before any clock starts
            _drive(pool, processes, hook_url, 50 * processes, concurrency, body)  # warm up the whole path
            warm = int(_wait_all(client, base, None, time.time() + 60))
            bare_parts = _drive(pool, processes, bare_url, requests, concurrency, None)
            hook_parts = _drive(pool, processes, hook_url, requests, concurrency, body)
        posts = (requests // processes + max(1, concurrency // processes)) * processes
        done_at = _wait_all(client, base, warm + posts, time.time() + 300)
        stored, _ = _succeeded(client, base)
        client.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    shutil.rmtree(home, ignore_errors=True)
    bare = sum(rate for rate, _, _ in bare_parts)
    accepted = sum(rate for rate, _, _ in hook_parts)
    first = min(started for _, started, _ in hook_parts)
    last_answer = max(ended for _, _, ended in hook_parts)
    fired = posts / (done_at - first)
    print(f"end to end through `squall serve` (SQLite), load generator httpx: {processes} processes, concurrency "
          f"{concurrency}, {requests} requests per endpoint")
    print(f"bare GET /healthz:                                   {bare:9,.0f} requests/s")
    print(f"POST /api/v1/webhooks/bench answered (202, stored):  {accepted:9,.0f} requests/s")
    print(f"POST → rule → core.noop succeeded, all {posts} done:  {fired:9,.0f} per s  "
          f"({done_at - first:.2f} s from the first POST; the last 202 at {last_answer - first:.2f} s; "
          f"{stored} core.noop executions succeeded in all)")
    ratio = fired / bare
    print(f"ratio webhook end to end / bare: {ratio:.2f} (target >= 0.30) {'met' if ratio >= 0.3 else 'NOT met'}")


def _wait_all(client, base: str, expected: int | None, deadline: float) -> float:
    """Until every core.noop execution has succeeded (and, with `expected`, that many exist): the
    number succeeded when `expected` is None, else the time.time() it was seen. Fails on a failed one."""
    while True:
        succeeded, total = _succeeded(client, base)
        if succeeded == total and (expected is None or total >= expected):
            if expected is not None and total != expected:
                raise SystemExit(f"{total} core.noop executions, expected {expected}")
            return succeeded if expected is None else time.time()
        failed = int(client.get(f"{base}/api/v1/executions", params={"action": "core.noop", "status": "failed",
                                                                     "limit": 1}).headers["X-Total-Count"])
        if failed or time.time() > deadline:
            raise SystemExit(f"executions: {succeeded} succeeded, {failed} failed of {total} (expected {expected})")
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="requests per endpoint, end to end")
    parser.add_argument("--concurrency", type=int, default=32, help="client connections in all")
    parser.add_argument("--clients", type=int, default=4, help="load generator processes (httpx)")
    parser.add_argument("--no-serve", action="store_true", help="the in-process figure only")
    args = parser.parse_args()
    in_process()
    if not args.no_serve:
        end_to_end(args.requests, args.concurrency, args.clients)


if __name__ == "__main__":
    main()
