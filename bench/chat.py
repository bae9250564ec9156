"""Chat round trip: loopback message → alias → core.noop (durable records) → result reply.

    .venv/bin/python bench/chat.py [--commands N] [--in-flight K]

Measures commands per second and the latency from a message to its result reply with K
commands in flight, against a baseline measured in the same run: the same core.noop executions
requested directly from the engine (no chat), so the ratio is the chat layer's own cost.
Targets (issue 4): >= 1,000 commands/s, p99 <= 20 ms with 100 in flight.

Two loads, because one number cannot show both targets: with K commands always in flight
(closed loop) the mean latency is K / throughput by Little's law, so 100 in flight at
1,000/s means 100 ms whatever the code does. The open loop sends commands as people do,
at a fixed arrival rate (default 1,000/s) whatever the replies do, with at most K in flight,
and reports the latency each one saw.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.base import Capabilities, Reply
from adapters.loopback import LoopbackAdapter
from bench.metrics_cost import compare
from bot.app import Squall
from bot.service import settle_heap
from engine.config import load_config


class TimedLoopback(LoopbackAdapter):
    """Loopback that notes when each command's result arrives (without an edits round trip)."""

    def __init__(self) -> None:
        super().__init__(capabilities=Capabilities(threads=True, max_length=4000))
        self.results: dict[str, float] = {}
        self.waiters: dict[str, asyncio.Future[float]] = {}

    async def send(self, reply: Reply, edit_of: str | None = None) -> str | None:
        if reply.text == "pong" and reply.thread in self.waiters:
            self.waiters.pop(reply.thread).set_result(time.perf_counter())
        return await super().send(reply, edit_of)


async def main(commands: int, in_flight: int, arrival_rate: float) -> None:
    home = Path(tempfile.mkdtemp(prefix="squall-bench-chat-"))
    (home / "config.yml").write_text(f"database: {{url: 'sqlite:///{home}/s.db'}}\n")
    loopback = TimedLoopback()
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[loopback])
    bot = squall.chat
    await bot.start()
    settle_heap()  # as `squall serve` does once it is up
    loop = asyncio.get_running_loop()
    counter = 0

    async def one_chat() -> float:
        nonlocal counter
        counter += 1
        message_id = f"m{counter}"
        future: asyncio.Future[float] = loop.create_future()
        loopback.waiters[message_id] = future
        start = time.perf_counter()
        await loopback._handler(_message(message_id))  # type: ignore[misc]
        return await future - start

    async def one_direct() -> float:
        start = time.perf_counter()
        record = await squall.executions.request("core.noop", {})
        await squall.executions.wait(record["id"])
        return time.perf_counter() - start

    async def run(kind, n: int) -> tuple[float, list[float]]:
        semaphore = asyncio.Semaphore(in_flight)
        latencies: list[float] = []

        async def guarded() -> None:
            async with semaphore:
                latencies.append(await kind())

        start = time.perf_counter()
        await asyncio.gather(*(guarded() for _ in range(n)))
        return n / (time.perf_counter() - start), latencies

    async def open_loop(kind, n: int, rate: float) -> tuple[float, list[float], int]:
        """Arrivals every 1/rate s (on schedule, not after replies); at most `in_flight` at once."""
        semaphore = asyncio.Semaphore(in_flight)
        latencies: list[float] = []
        most = current = 0
        tasks = []

        async def timed() -> None:
            nonlocal most, current
            async with semaphore:
                current += 1
                most = max(most, current)
                latencies.append(await kind())
                current -= 1

        start = time.perf_counter()
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(timed()))
        await asyncio.gather(*tasks)
        return n / (time.perf_counter() - start), latencies, most

    await run(one_chat, 200)  # warm up
    base_rate, base_lat = await run(one_direct, commands)
    rate, latencies = await run(one_chat, commands)
    await bot.outbox.drain(60)
    open_rate, open_latencies, most = await open_loop(one_chat, commands, arrival_rate)
    await bot.outbox.drain(60)

    def p(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000

    print(f"{commands} commands, {in_flight} in flight")
    print(f"{'what':40} {'per s':>9} {'median ms':>10} {'p99 ms':>8}")
    print(f"{'baseline: core.noop via the engine':40} {base_rate:9,.0f} {statistics.median(base_lat) * 1000:10.2f} "
          f"{p(base_lat, 0.99):8.2f}")
    print(f"{'chat: !ping → alias → core.noop → pong':40} {rate:9,.0f} {statistics.median(latencies) * 1000:10.2f} "
          f"{p(latencies, 0.99):8.2f}")
    print(f"{f'chat, open loop at {arrival_rate:,.0f}/s arrivals':40} {open_rate:9,.0f} "
          f"{statistics.median(open_latencies) * 1000:10.2f} {p(open_latencies, 0.99):8.2f}   "
          f"(at most {most} in flight)")
    p99 = p(open_latencies, 0.99)
    print(f"chat round trip at {rate / base_rate:.2f}x the engine-only rate; targets: >= 1,000 commands/s "
          f"({'met' if rate >= 1000 else 'NOT met'}), p99 <= 20 ms at {arrival_rate:,.0f}/s with up to {in_flight} "
          f"in flight ({'met' if p99 <= 20 else 'NOT met'}); closed loop: p99 {p(latencies, 0.99):.0f} ms, mean "
          f"{statistics.fmean(latencies) * 1000:.0f} ms = {in_flight} in flight / {rate:,.0f} per s (Little's law)")
    print(await compare(lambda: _rate(run, one_chat, commands)))
    await bot.stop()
    await squall.close()


async def _rate(run, kind, n: int) -> float:
    rate, _latencies = await run(kind, n)
    return rate


def _message(message_id: str):
    from adapters.base import Message

    return Message(adapter="loopback", channel="#bench", user="bench", text="!ping", id=message_id)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=3000)
    parser.add_argument("--in-flight", type=int, default=100)
    parser.add_argument("--rate", type=float, default=1000.0, help="open-loop arrivals per second")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.commands, arguments.in_flight, arguments.rate))
