"""How long `squall` commands take from the shell, side by side with bare Python and StackStorm's `st2`.

    .venv/bin/python bench/cli.py [--runs 10] [--squall PATH] [--st2-venv DIR | --no-st2]

Rows, each a fresh process timed from spawn to exit (output discarded), in one run:
bare `python -c pass` (the floor every Python CLI pays), `squall --help`, `squall key get NAME`
(a key set beforehand in a throwaway home with its own config and SQLite file), `squall action
list` (loads the shipped packs), and `st2 --help` from the `st2client` package of PyPI, installed
into a throwaway virtualenv (cached in DIR, by default ~/.cache/squall/bench-st2client-venv, so a
rerun does not install again; if the install fails the row is left out and the reason printed).
Rounds are interleaved (each round runs every row once) so a busy machine slows all rows alike;
one unmeasured warm-up run per row comes first. Figures: median, min and max over the runs, and
the median as a multiple of bare Python's. Bytecode caching is on for the commands even where
PYTHONDONTWRITEBYTECODE is set (the warm-up writes the caches, as any installed program has them);
without it Squall's own modules would be compiled on every run and st2client's would not.
Targets (issue 15): `squall --help` and `squall key get` at most 0.35 s median, faster than `st2 --help`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 0.35
DEFAULT_ST2_VENV = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "squall" / \
    "bench-st2client-venv"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _environment() -> dict[str, str]:
    """The commands' environment: ours, with bytecode caching allowed (see the module docstring)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _home(squall: str, env: dict[str, str]) -> tuple[Path, list[str]]:
    """A throwaway home with a config (SQLite, no packs of its own) and one key set in it."""
    home = Path(tempfile.mkdtemp(prefix="squall-bench-cli-"))
    (home / "packs").mkdir()
    # A port of its own, so no command here ever talks to a service running on the default one.
    (home / "config.yml").write_text(f"database:\n  url: sqlite:///{home / 'squall.db'}\npacks:\n  paths: [packs]\n"
                                     f"api:\n  port: {_free_port()}\n")
    base = [squall, "-c", str(home / "config.yml")]
    done = subprocess.run([*base, "key", "set", "bench-key", "bench-value"], capture_output=True, text=True,
                          cwd=home, env=env)
    if done.returncode != 0:
        raise SystemExit(f"could not set the key for `key get`: {done.stderr.strip()}")
    return home, base


def _st2(venv: Path) -> tuple[list[str] | None, str]:
    """`st2` from a virtualenv holding PyPI's st2client (made on first use), or None and why not."""
    st2 = venv / "bin" / "st2"
    if st2.exists():
        return [str(st2)], "cached"
    print(f"installing st2client into {venv} (once; later runs reuse it)...", file=sys.stderr)
    try:
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, text=True,
                       timeout=300)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "st2client"], check=True,
                       capture_output=True, text=True, timeout=900)
    except subprocess.CalledProcessError as exc:
        reason = (exc.stderr or exc.stdout or "").strip().splitlines()
        return None, f"`{' '.join(map(str, exc.cmd))}` failed: {reason[-1] if reason else exc.returncode}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, str(exc)
    if not st2.exists():
        return None, f"st2client installed but {st2} is missing"
    return [str(st2)], "installed now"


def _once(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` exited {done.returncode}: {done.stderr.decode()[-300:]}")
    return elapsed


def main(runs: int, squall: str, st2_venv: Path | None) -> int:
    env = _environment()
    home, base = _home(squall, env)
    rows: list[tuple[str, list[str]]] = [
        ("python -c pass", [sys.executable, "-c", "pass"]),
        ("squall --help", [squall, "--help"]),
        ("squall key get NAME", [*base, "key", "get", "bench-key"]),
        ("squall action list", [*base, "action", "list"]),
    ]
    if st2_venv is not None:
        command, how = _st2(st2_venv)
        if command is None:
            print(f"st2 --help: left out, {how}", file=sys.stderr)
        else:
            rows.append(("st2 --help (st2client)", [*command, "--help"]))
    try:
        for _, command in rows:  # warm-up: bytecode caches, page cache
            _once(command, home, env)
        times: dict[str, list[float]] = {name: [] for name, _ in rows}
        for _ in range(runs):
            for name, command in rows:
                times[name].append(_once(command, home, env))
    finally:
        shutil.rmtree(home, ignore_errors=True)

    medians = {name: statistics.median(values) for name, values in times.items()}
    floor = medians["python -c pass"]
    st2 = medians.get("st2 --help (st2client)")
    print(f"{runs} runs each, interleaved; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}; squall = {squall}")
    print(f"{'command':26} {'median':>9} {'min':>9} {'max':>9} {'x python':>9}" + (f" {'x st2':>7}" if st2 else ""))
    for name, values in times.items():
        median = medians[name]
        print(f"{name:26} {median:8.3f}s {min(values):8.3f}s {max(values):8.3f}s {median / floor:8.1f}x"
              + (f" {median / st2:6.2f}x" if st2 else ""))
    for name in ("squall --help", "squall key get NAME"):
        verdict = "met" if medians[name] <= TARGET_SECONDS else "NOT met"
        against = (f", {'faster' if medians[name] < st2 else 'SLOWER'} than st2 --help" if st2 else "")
        print(f"target {name}: median {medians[name]:.3f}s <= {TARGET_SECONDS}s {verdict}{against}")
    return 0  # figures are measured, not asserted: a missed target is printed, `make bench` goes on


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="timed runs per command")
    parser.add_argument("--squall", default=str(Path(sys.executable).parent / "squall"),
                        help="the squall command to time (default: the one beside this Python)")
    parser.add_argument("--st2-venv", type=Path, default=DEFAULT_ST2_VENV,
                        help="where st2client's throwaway virtualenv is kept")
    parser.add_argument("--no-st2", action="store_true", help="leave the st2 row out")
    args = parser.parse_args()
    sys.exit(main(args.runs, args.squall, None if args.no_st2 else args.st2_venv))
