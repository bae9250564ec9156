"""Parallel SSH: a remote-shell-cmd on two hosts with `parallel: true` against the same on one host.

    .venv/bin/python bench/remote.py [--runs N]

Starts a throwaway OpenSSH server (tests/sshd.py) on 127.0.0.1 and 127.0.0.2 and runs
`core.remote` with `sleep 0.3; echo x` through the whole engine (request, connect, run, store).
Target: two hosts in parallel take <= 1.3x the time of one host.
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
from tests.sshd import SSHServer, running_sshd  # noqa: E402

CMD = "sleep 0.3; echo x"


async def main(server: SSHServer, runs: int) -> None:
    home = Path(tempfile.mkdtemp(prefix="squall-bench-remote-"))
    (home / "config.yml").write_text(f"database: {{url: 'sqlite:///{home}/squall.db'}}\n")
    app = await Squall.start(load_config(home / "config.yml"))
    try:
        async def once(hosts: list[str]) -> float:
            params = {"hosts": ",".join(hosts), "username": server.user, "private_key": str(server.key_path),
                      "cmd": CMD, "parallel": True}
            start = time.perf_counter()
            record = await app.executions.request("core.remote", params)
            done = await app.executions.wait(record["id"], timeout=60)
            elapsed = time.perf_counter() - start
            assert done["status"] == "succeeded", done["result"]
            assert all(result["stdout"] == "x" for result in done["result"].values())
            return elapsed

        for _ in range(2):  # warm up: imports, SQLite pages, the server's first connections
            await once(server.hosts)
        one, two = [], []
        for _ in range(runs):  # interleaved, so drift affects both alike
            one.append(await once(server.hosts[:1]))
            two.append(await once(server.hosts))
    finally:
        await app.close()
    m1, m2 = statistics.median(one) * 1000, statistics.median(two) * 1000
    print(f"command: {CMD!r}, {runs} runs each, parallel=true")
    print(f"{'one host':<28} median {m1:8.1f} ms  (min {min(one) * 1000:.1f}, max {max(one) * 1000:.1f})")
    print(f"{'two hosts, parallel':<28} median {m2:8.1f} ms  (min {min(two) * 1000:.1f}, max {max(two) * 1000:.1f})")
    ratio = m2 / m1
    print(f"ratio two/one: {ratio:.2f}x (target <= 1.3x): {'OK' if ratio <= 1.3 else 'MISSED'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with running_sshd() as sshd:
        asyncio.run(main(sshd, args.runs))
