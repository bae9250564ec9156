"""StackStorm's `st2` CLI against a live `squall serve`, side by side with Squall's own CLI, in one run.

    .venv/bin/python bench/st2cli.py [--runs 10] [--squall PATH] [--st2-venv DIR]

A throwaway home (SQLite, the shipped packs, an API on a free port) with 50 executions stored, a
`squall serve` on it and an API key. Rows, each a fresh process timed from spawn to exit, rounds
interleaved so a busy machine slows all rows alike, one unmeasured warm-up each:
bare `python -c pass` (the floor), `squall execution list` and `st2 execution list` (the newest 50),
`squall run core.noop` and `st2 run core.noop` (request, run, wait, print). `st2` comes from PyPI's
st2client, installed once into a cached virtualenv (bench/cli.py's). Figures: median, min and max,
and each median as a multiple of bare Python's and of its Squall row. Measured, not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from cli import DEFAULT_ST2_VENV, _environment, _free_port, _once, _st2  # bench/cli.py, beside this file

SEEDED = 50


def _serve(squall: str, env: dict[str, str]) -> tuple[Path, list[str], subprocess.Popen[bytes], str, str]:
    """A home with SEEDED executions, its `squall serve` answering, and an API key for st2."""
    home = Path(tempfile.mkdtemp(prefix="squall-bench-st2cli-"))
    port = _free_port()
    (home / "config.yml").write_text(f"database:\n  url: sqlite:///{home / 'squall.db'}\n"
                                     f"api:\n  host: 127.0.0.1\n  port: {port}\n"
                                     "adapters:\n  console:\n    enabled: false\n")
    base = [squall, "-c", str(home / "config.yml")]
    for _ in range(SEEDED):
        subprocess.run([*base, "run", "core.noop"], check=True, capture_output=True, cwd=home, env=env)
    made = subprocess.run([*base, "apikey", "create", "--name", "bench", "--json"], check=True, capture_output=True,
                          text=True, cwd=home, env=env)
    server = subprocess.Popen([*base, "serve"], cwd=home, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("squall serve did not start") from None
            time.sleep(0.1)
    return home, base, server, url, json.loads(made.stdout)["key"]


def main(runs: int, squall: str, st2_venv: Path) -> int:
    env = _environment()
    st2, how = _st2(st2_venv)
    if st2 is None:
        raise SystemExit(f"st2client is needed for this bench: {how}")
    home, base, server, url, key = _serve(squall, env)
    st2_env = {**env, "HOME": str(home), "ST2_API_URL": f"{url}/api/v1", "ST2_AUTH_URL": f"{url}/auth/v1",
               "ST2_API_KEY": key}
    rows: list[tuple[str, list[str], dict[str, str]]] = [
        ("python -c pass", [sys.executable, "-c", "pass"], env),
        ("squall execution list", [*base, "execution", "list", "--limit", str(SEEDED)], env),
        ("st2 execution list", [*st2, "execution", "list", "-n", str(SEEDED)], st2_env),
        ("squall run core.noop", [*base, "run", "core.noop"], env),
        ("st2 run core.noop", [*st2, "run", "core.noop"], st2_env),
    ]
    try:
        for _, command, row_env in rows:
            _once(command, home, row_env)
        times: dict[str, list[float]] = {name: [] for name, _, _ in rows}
        for _ in range(runs):
            for name, command, row_env in rows:
                times[name].append(_once(command, home, row_env))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)

    medians = {name: statistics.median(values) for name, values in times.items()}
    floor = medians["python -c pass"]
    print(f"{runs} runs each, interleaved; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}; "
          f"st2client {how}; {SEEDED} executions stored")
    print(f"{'command':24} {'median':>9} {'min':>9} {'max':>9} {'x python':>9} {'x squall':>9}")
    for name, values in times.items():
        median = medians[name]
        mate = medians.get(name.replace("st2 ", "squall ", 1)) if name.startswith("st2 ") else None
        print(f"{name:24} {median:8.3f}s {min(values):8.3f}s {max(values):8.3f}s {median / floor:8.1f}x"
              + (f" {median / mate:8.2f}x" if mate else ""))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="timed runs per command")
    parser.add_argument("--squall", default=str(Path(sys.executable).parent / "squall"),
                        help="the squall command to time (default: the one beside this Python)")
    parser.add_argument("--st2-venv", type=Path, default=DEFAULT_ST2_VENV,
                        help="where st2client's throwaway virtualenv is kept (shared with bench/cli.py)")
    args = parser.parse_args()
    sys.exit(main(args.runs, args.squall, args.st2_venv))
