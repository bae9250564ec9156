"""How soon `squall serve` answers, and how much memory it holds idle, against bare Python baselines.

    .venv/bin/python bench/startup.py [--runs 5]

Rows, each a fresh process, interleaved round by round so a busy machine slows all alike (one
unmeasured warm-up round first, which also writes the bytecode caches):

- `python -c pass`: the floor every Python program pays;
- `python -c "import fastapi"`: what any FastAPI service pays before its own code;
- `squall serve` on a fresh home (SQLite, the console adapter off, the API on a free port): time
  from spawn to the first `200` from `GET /healthz`, polled every 5 ms; then its resident memory
  (VmRSS) after 3 s idle, and the time to exit after SIGTERM. A fresh home means a new database,
  so this start also creates the schema (at once on SQLite; Alembic only upgrades older databases);
- `squall serve` again on that home (a restart: the database is current, one query checks it).

Targets (issue 21): first `/healthz` answer <= 1.5 s on an idle machine, idle RSS <= 120 MB.
Figures are printed, never asserted; the machine's load average is printed with them. A start's time
drifts with the machine's speed by as much as the target's margin, so the start is judged on the 90%
interval around its median (bench/spread.py): met when the whole interval is at most 1.5 s, not met
when all of it is above, otherwise not decided by this run (more `--runs` narrow it; 11 give the 3rd
smallest to the 3rd largest).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.spread import median_interval, verdict

SQUALL = Path(sys.executable).parent / "squall"
#: The children write bytecode caches (the warm-up round is there for that) even if this shell says not to:
#: with PYTHONDONTWRITEBYTECODE=1 every start compiled Squall's own modules again (~0.2 s).
ENV = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    return time.perf_counter() - start


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _home() -> tuple[Path, int]:
    """A fresh home (no database yet) and the API's port in its config."""
    home = Path(tempfile.mkdtemp(prefix="squall-bench-startup-"))
    port = _free_port()
    (home / "config.yml").write_text(f"api: {{port: {port}}}\nadapters: {{console: {{enabled: false}}}}\n"
                                     "runners: {allow_root: true}\n")
    return home, port


def _serve(home: Path, port: int) -> tuple[float, float, float]:
    """(seconds to the first /healthz 200, idle RSS in MB, seconds to exit after SIGTERM)."""
    start = time.perf_counter()
    process = subprocess.Popen([str(SQUALL), "serve"], cwd=home, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                               env=ENV)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError("squall serve exited before it answered") from None
                time.sleep(0.005)
        ready = time.perf_counter() - start
        time.sleep(3)
        rss = _rss_mb(process.pid)
        stopping = time.perf_counter()
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
        return ready, rss, time.perf_counter() - stopping
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def main(runs: int) -> None:
    python = sys.executable
    rows: dict[str, list[float]] = {"python -c pass": [], "python -c 'import fastapi'": [],
                                    "squall serve: first /healthz": [], "  again, current database": []}
    rss: list[float] = []
    stops: list[float] = []
    for round_ in range(runs + 1):
        samples = {"python -c pass": _timed([python, "-c", "pass"]),
                   "python -c 'import fastapi'": _timed([python, "-c", "import fastapi"])}
        home, port = _home()
        ready, memory, stop = _serve(home, port)
        samples["squall serve: first /healthz"] = ready
        samples["  again, current database"] = _serve(home, port)[0]
        if round_ == 0:
            continue  # warm-up: bytecode caches, the page cache
        for name, value in samples.items():
            rows[name].append(value)
        rss.append(memory)
        stops.append(stop)
    base = statistics.median(rows["python -c pass"])
    print(f"{runs} runs each, load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"{'what':32} {'median s':>9} {'min s':>7} {'max s':>7} {'x python':>9}")
    for name, values in rows.items():
        median = statistics.median(values)
        print(f"{name:32} {median:9.3f} {min(values):7.3f} {max(values):7.3f} {median / base:8.1f}x")
    fastapi = statistics.median(rows["python -c 'import fastapi'"])
    memory = statistics.median(rss)
    for name, what in (("squall serve: first /healthz", "squall serve ready"),
                       ("  again, current database", "  again, current database")):
        low, ready, high = median_interval(rows[name])
        print(f"{what} at {ready / fastapi:.1f}x `import fastapi`: {ready:.2f} s (90% interval {low:.2f} to "
              f"{high:.2f} s); target <= 1.5 s: {verdict(low, high, at_most=1.5)}")
    print(f"idle RSS after 3 s: {memory:.0f} MB (min {min(rss):.0f}, max {max(rss):.0f}); target <= 120 MB: "
          f"{'met' if memory <= 120 else 'NOT met'}; exit after SIGTERM {statistics.median(stops):.2f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=11, help="measured rounds (five or more: a 90%% interval)")
    arguments = parser.parse_args()
    if arguments.runs < 1:
        parser.error(f"--runs must be 1 or more, not {arguments.runs}")
    main(arguments.runs)
