"""CPU instructions per chat command, Squall against errbot's TestBot: a figure the machine's load cannot move.

    .venv/bin/python bench/instructions.py [--commands N] [--in-flight K]

Why: on a shared machine the speed of one core drifts by 20-40% from minute to minute, so two runs of
bench/chat.py cannot tell a change that saves 3% from noise, and the issue 21 target (Squall >= 1.0x
errbot's commands/s) is a ratio of two such rates. Valgrind's callgrind counts the instructions a
process executes, the same on every run to within ~1% here, whatever the neighbours do (what varies
is timing: under valgrind a command takes 50 times as long, so timers fire at other points). The
sequential count is the one timing moves: a reply's sent mark rides with the next command's commit or
goes alone on its 50 ms timer, depending on how fast the process runs. Compare sequential counts from
runs made one at a time on an idle machine (two at once hid a 1.9% change).

How: each row is two fresh processes run under `valgrind --tool=callgrind` (needs Debian's
`valgrind`), one sending 30 commands and one 30 + N (default 300); the difference over N is the
cost of one command, without the start-up both pay. Commands are sequential (one at a time), or
with `--in-flight K` K outstanding as bench/chat.py's closed loop keeps them (errbot: K pushed, one
more per reply popped; Squall: K workers), the three shapes bench/chat.py cycles:

- `errbot TestBot`: errbot answers `!ping`, `!bounce ...`, `!flush ...` (bench/errbot_plugins/),
  pushed and popped as bench/chat.py does: the baseline;
- `squall chat`: the same three through the loopback adapter: alias, the stored execution, its
  run, the stored result and its delivery through the outbox, as bench/chat.py measures them;
- `squall engine only`: `core.noop` requested and awaited on the engine (no chat): what the chat
  layer adds is the difference;
- `squall chat, metrics off`: the chat with `metrics.enabled` off: what recording the Prometheus
  metrics costs a command is the difference (issue 19's target: at most 5% of throughput; in time,
  bench/chat.py's alternating rounds measure it, but there the machine's drift between rounds is
  larger than the target).

Counted: user-space instructions of every thread of the process (errbot's pool threads, Squall's
database thread). Not counted: the kernel's work, which for Squall is mostly SQLite's writes to its
WAL (two `pwrite`s per page; ~34 a command); errbot makes none. So a ratio here is Squall's best case,
and lower instruction counts are necessary, not sufficient, for the commands/s target. The child
processes run with PYTHONHASHSEED=0 so that dict and set layouts repeat. Printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

#: Commands each child sends before the counted ones: the difference of two runs starts after them.
BASE = 30
KINDS = {"errbot": "errbot TestBot (the baseline)", "chat": "squall chat", "engine": "squall engine only",
         "chat-metrics-off": "squall chat, metrics off"}


def child(kind: str, n: int, k: int) -> None:
    """Send `n` commands of `kind`, `k` at a time (run inside valgrind)."""
    if kind == "errbot":
        from bench.chat import Errbot

        errbot = Errbot()
        if k > 1:  # k pushed, one more per reply popped (a wrong reply now and then: see bench/chat.py)
            errbot.in_flight(n, k)
        else:
            errbot.sequential(n)
            if errbot.wrong:
                raise SystemExit(f"errbot answered {errbot.wrong} commands wrongly")
        errbot.stop()
        return
    asyncio.run(_squall(kind, n, k))


async def _squall(kind: str, n: int, k: int) -> None:
    from adapters.base import Message
    from bench.chat import COMMANDS, closed_loop, start_squall

    home = Path(tempfile.mkdtemp(prefix="squall-bench-instructions-"))
    try:
        squall, loopback = await start_squall(home)
        if kind == "chat-metrics-off":
            from engine.metrics import metrics

            metrics.enabled = False
        loop = asyncio.get_running_loop()
        sent = 0

        async def one() -> float:
            nonlocal sent
            i, sent = sent, sent + 1
            if kind == "engine":
                record = await squall.executions.request("core.noop", {})
                await squall.executions.wait(record["id"])
                return 0.0
            text, expected = COMMANDS[i % 3]
            future: asyncio.Future[tuple[float, str]] = loop.create_future()
            loopback.waiters[f"m{i}"] = future
            await loopback._handler(Message(adapter="loopback", channel="#bench", user="bench",  # type: ignore[misc]
                                            text=text, id=f"m{i}"))
            _done, reply = await future
            if reply != expected:
                raise SystemExit(f"Squall answered {text!r} with {reply!r}")
            return 0.0

        await closed_loop(one, n, k)  # k = 1: one at a time
        await squall.chat.outbox.drain(60)
        await squall.chat.stop()
        await squall.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def count(kind: str, n: int, k: int) -> int:
    """Instructions a child sending `n` commands of `kind`, `k` at a time, executes, as callgrind counts them."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                           __file__, "--child", kind, str(n), str(k)], env=env, capture_output=True, text=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"the {kind} child under valgrind failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main(commands: int, in_flight: int) -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed; on Debian: apt-get install valgrind")
    load = "sequential" if in_flight <= 1 else f"{in_flight} in flight"
    print(f"instructions per command, {load}: ({BASE} + {commands}) - {BASE} commands under callgrind, "
          f"each row two fresh processes")
    per: dict[str, float] = {}
    for kind, label in KINDS.items():
        per[kind] = (count(kind, BASE + commands, in_flight) - count(kind, BASE, in_flight)) / commands
        print(f"  {label:32} {per[kind]:12,.0f}", flush=True)
    ratio = per["errbot"] / per["chat"]
    print(f"errbot / squall chat: {ratio:.2f} (the commands/s ratio if both paid only for instructions; "
          f"target >= 1.0); the chat layer adds {per['chat'] - per['engine']:,.0f} to the engine's "
          f"{per['engine']:,.0f}")
    cost = (per["chat"] - per["chat-metrics-off"]) / per["chat"] * 100
    print(f"recording the metrics: {per['chat'] - per['chat-metrics-off']:,.0f} instructions a command, {cost:.1f}% "
          f"of the chat's (the throughput it costs if commands paid only for instructions; target <= 5%: "
          f"{'met' if cost <= 5 else 'NOT met'})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=300, help="counted commands per row")
    parser.add_argument("--in-flight", type=int, default=1,
                        help="commands outstanding at once (bench/chat.py's closed loop; default 1: sequential)")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "N", "K"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        child(arguments.child[0], int(arguments.child[1]), int(arguments.child[2]))
    else:
        main(arguments.commands, arguments.in_flight)
