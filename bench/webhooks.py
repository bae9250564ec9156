"""Webhook ingestion through the real HTTP server, against a bare endpoint of the same server.

    .venv/bin/python bench/webhooks.py [--requests N] [--concurrency C] [--rounds M]

A server process runs Squall's API under uvicorn on a free loopback port (SQLite, WAL). The load
generator (httpx in several processes, C connections in all, or `wrk` when installed) drives N
`POST /api/v1/webhooks/st2` requests, each stored durably as a trigger instance before its 202,
and N `GET /healthz` requests (no work, no auth) on the same server, in `--rounds` rounds, each
swapping which endpoint goes first. Target (issue 5): webhook requests/s >= 0.5 of the bare
endpoint's, judged on each round's own ratio and the 90% interval around their median
(bench/spread.py): one round's rates differ from the next's by 15-25% on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.spread import median_interval, verdict  # noqa: E402

KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def serve(config_path: str, port: int) -> None:
    import uvicorn

    from bot.app import Squall
    from bot.http import create_api
    from engine.config import load_config

    squall = await Squall.start(load_config(config_path))
    server = uvicorn.Server(uvicorn.Config(create_api(squall), host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, lifespan="off"))
    try:
        await server.serve()
    finally:
        await squall.triggers.settle()
        await squall.close()


async def drive(url: str, n: int, concurrency: int, body: dict | None) -> float:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"St2-Api-Key": KEY}
    async with httpx.AsyncClient(limits=limits, headers=headers, timeout=30) as client:
        remaining = iter(range(n))
        failures = 0

        async def worker() -> None:
            nonlocal failures
            for _ in remaining:
                response = await (client.post(url, json=body) if body is not None else client.get(url))
                if response.status_code >= 300:
                    failures += 1

        for _ in range(concurrency):  # warm up the connections
            await (client.post(url, json=body) if body is not None else client.get(url))
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    if failures:
        raise SystemExit(f"{failures} of {n} requests to {url} failed")
    return n / elapsed


def _drive_part(url: str, n: int, concurrency: int, body: dict | None) -> float:
    return asyncio.run(drive(url, n, concurrency, body))


def drive_processes(url: str, n: int, concurrency: int, body: dict | None, processes: int) -> float:
    """Several client processes (one Python client cannot saturate the server); their summed rate."""
    from concurrent.futures import ProcessPoolExecutor

    per = max(1, concurrency // processes)
    with ProcessPoolExecutor(processes) as pool:
        rates = list(pool.map(_drive_part, [url] * processes, [n // processes] * processes, [per] * processes,
                              [body] * processes))
    return sum(rates)


def drive_wrk(url: str, seconds: int, concurrency: int, body: dict | None, home: Path) -> float:
    script = home / "post.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps(body))}\n'
                      f'wrk.headers["Content-Type"] = "application/json"\nwrk.headers["St2-Api-Key"] = "{KEY}"\n'
                      if body is not None else f'wrk.headers["St2-Api-Key"] = "{KEY}"\n')
    out = subprocess.run(["wrk", "-t2", f"-c{concurrency}", f"-d{seconds}s", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("Requests/sec:"))
    return float(line.split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--clients", type=int, default=4, help="load generator processes (httpx)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (five or more: a 90%% interval)")
    parser.add_argument("--serve", nargs=2, metavar=("CONFIG", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve[0], int(args.serve[1])))
        return

    home = Path(tempfile.mkdtemp(prefix="squall-bench-hooks-"))
    (home / "config.yml").write_text(
        f"database: {{url: 'sqlite:///{home}/squall.db'}}\npacks: {{paths: ['{home}/packs']}}\n"
        f"api: {{keys: ['{KEY}']}}\n")
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(home / "config.yml"), str(port)],
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        import httpx

        from tests.conftest import wait_until_answering

        wait_until_answering(base, server, 30)
        body = {"trigger": "core.st2.webhook", "payload": {"headers": {}, "headers_lower": {},
                                                           "body": {"event": "push", "n": 1}}}
        hook_url, bare_url = f"{base}/api/v1/webhooks/st2", f"{base}/healthz"
        generator = "wrk" if shutil.which("wrk") else "httpx"

        def rate(url: str, payload: dict | None) -> float:
            if generator == "wrk":
                return drive_wrk(url, 5, args.concurrency, payload, home)
            return drive_processes(url, args.requests, args.concurrency, payload, args.clients)

        rates: dict[str, list[float]] = {"bare": [], "hook": []}
        for round_ in range(args.rounds):
            for side in ("hook", "bare") if round_ % 2 else ("bare", "hook"):
                rates[side].append(rate(hook_url, body) if side == "hook" else rate(bare_url, None))
        stored = httpx.get(f"{base}/api/v1/triggerinstances", params={"limit": 1000},
                           headers={"St2-Api-Key": KEY}).json()
        if generator == "httpx" and len(stored) < min(1000, args.requests * args.rounds):
            raise SystemExit(f"only {len(stored)} trigger instances stored")
    finally:
        server.terminate()
        server.wait(timeout=20)
        shutil.rmtree(home, ignore_errors=True)
    print(f"load generator: {generator} ({args.clients} processes), concurrency {args.concurrency}, "
          f"{args.requests} requests per endpoint a round, {args.rounds} alternating rounds (medians)")
    print(f"bare GET /healthz:                  {statistics.median(rates['bare']):10,.0f} requests/s")
    print(f"POST /api/v1/webhooks/st2 (stored): {statistics.median(rates['hook']):10,.0f} requests/s")
    low, ratio, high = median_interval([hook / bare for hook, bare in zip(rates["hook"], rates["bare"], strict=True)])
    print(f"ratio: {ratio:.2f}, the median of the rounds' own (90% interval {low:.2f} to {high:.2f}); target >= 0.50: "
          f"{verdict(low, high, at_least=0.5)}")


if __name__ == "__main__":
    main()
