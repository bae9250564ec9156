"""Kill -9 drills: chat results finishing in a burst, the service killed in the middle of it.

    .venv/bin/python bench/drills.py [--rounds 20] [--burst 40] [--window-ms 250] [--seed 1]

Each round, `--burst` chat commands reach a real `squall serve` (its Mattermost adapter, against
the fake Mattermost server of the tests, on 127.0.0.1 only) and all wait on one gate; the gate
opens, so they finish at once, and at a random instant within `--window-ms` the service and its
process group get SIGKILL. It is started again (recovery abandons what was still running), and
the next round begins. At the end every chat execution must have had its result delivered once.

Printed: replies stored (result rows), delivered, lost (a finished execution whose result never
reached the channel), duplicated (a result posted more than once) and stored twice; where the
kills fell (statuses committed and results posted by then). Target (durability issue): 0 lost,
0 duplicated. A reply the platform accepted just before a kill, whose `sent` mark had not
committed, is looked up on the platform at restart (by the outbox id its post carries) rather than
sent again; a duplicate "across a kill" means that lookup missed it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from engine.executions import COMPLETED  # noqa: E402
from engine.storage import Store  # noqa: E402
from tests.fake_mattermost import BOT_TOKEN, FakeMattermost  # noqa: E402

SQUALL = Path(sys.executable).parent / "squall"


def write_home(home: Path, url: str) -> None:
    (home / "config.yml").write_text(
        f'database: {{url: "sqlite:///{home}/squall.db"}}\npacks: {{paths: ["{home}/packs"]}}\n'
        f'api: {{enabled: false}}\nadapters:\n  console: {{enabled: false}}\n'
        f'  mattermost: {{enabled: true, url: "{url}", token: "{BOT_TOKEN}", team: ops}}\n')
    os.mkfifo(home / "idle")
    pack = home / "packs" / "drill"
    (pack / "actions").mkdir(parents=True)
    (pack / "aliases").mkdir()
    (pack / "pack.yaml").write_text("ref: drill\nname: drill\ndescription: d\nversion: 1.0.0\nauthor: bench\n")
    # Waits for the gate without forking (`read -t` on a FIFO nobody writes to is a sleep); gives up by itself.
    held = (f'exec 3<>{home}/idle; while [ ! -f {home}/gate ] && [ $SECONDS -lt 120 ]; do read -t 0.02 -u 3 x; '
            'done; echo "{{who}}"')
    (pack / "actions" / "held.yaml").write_text(
        "name: held\nrunner_type: local-shell-cmd\nparameters:\n  who: {type: string, required: true}\n"
        f"  cmd: {{default: {json.dumps(held)}, immutable: true}}\n")
    (pack / "aliases" / "held.yaml").write_text(
        'name: held\naction_ref: drill.held\ndescription: d\nformats: ["held {{who}}"]\nack: {enabled: false}\n'
        'result: {format: "{{ execution.status }} {{ execution.parameters.who }}"}\n')


class Service:
    def __init__(self, home: Path, fake: FakeMattermost) -> None:
        self.home, self.fake = home, fake
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def start(self) -> None:
        connects = len(self.fake.ws_connects)
        self.starts += 1
        with (self.home / f"serve-{self.starts}.log").open("w") as out:
            self.process = await asyncio.create_subprocess_exec(
                str(SQUALL), "-c", str(self.home / "config.yml"), "serve", cwd=self.home,
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True)
        await self.fake.wait_for(lambda: len(self.fake.ws_connects) > connects or self.process.returncode is not None,
                                 60)
        if self.process.returncode is not None:
            raise SystemExit(f"squall serve exited: see {self.home}/serve-{self.starts}.log")

    async def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                await self.kill()


def chat_executions(store: Store, prefix: str = "") -> list[dict]:
    return [row for row in store.list_executions(action="drill.held", limit=100_000)
            if str(row["parameters"].get("who", "")).startswith(prefix)]


def results(store: Store) -> list[dict]:
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT payload, status FROM outbox WHERE kind = 'result'").all()
    return [{"text": json.loads(payload)["text"], "status": status} for payload, status in rows]


async def until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def main(rounds: int, burst: int, window: float, seed: int, keep: bool) -> None:
    rng = random.Random(seed)
    home = Path(tempfile.mkdtemp(prefix="squall-drill-"))
    fake = FakeMattermost()
    await fake.start()
    write_home(home, fake.url)
    service = Service(home, fake)
    began = time.perf_counter()
    at_kill: list[tuple[int, int]] = []
    kills: list[int] = []  # when each kill was done, in the fake's post clock (ms)
    try:
        await service.start()
        store = Store.open(f"sqlite:///{home}/squall.db")
        for r in range(rounds):
            prefix = f"r{r}b"
            for n in range(burst):
                await fake.say(fake.alice, fake.town_square, f"!held {prefix}{n}")
            if not await until(lambda p=prefix: sum(e["status"] == "running" for e in chat_executions(store, p))
                               == burst, 60):
                raise SystemExit(f"round {r}: the burst never ran")
            (home / "gate").touch()
            await asyncio.sleep(rng.uniform(0, window))
            await service.kill()
            kills.append(int(time.time() * 1000))
            finished = sum(e["status"] in COMPLETED for e in chat_executions(store, prefix))
            posted = sum(post["message"].split(" ")[-1].startswith(prefix) for post in fake.bot_posts())
            at_kill.append((finished, posted))
            await service.start()
            if not await until(lambda p=prefix: all(e["status"] in COMPLETED for e in chat_executions(store, p)),
                               60):
                raise SystemExit(f"round {r}: executions were not recovered")
            (home / "gate").unlink()
        expected = {f"{e['status']} {e['parameters']['who']}" for e in chat_executions(store)}
        await until(lambda: expected <= set(p["message"] for p in fake.bot_posts())
                    and not any(row["status"] == "pending" for row in results(store)), 30)
        await asyncio.sleep(1.5)  # a poll's worth: anything sent twice would be now
        await service.stop()
        posts = Counter(post["message"] for post in fake.bot_posts())
        times: dict[str, list[int]] = {}
        for post in fake.bot_posts():
            times.setdefault(post["message"], []).append(post["create_at"])
        stored = Counter(row["text"] for row in results(store) if row["status"] != "skipped")
        pending = sum(row["status"] == "pending" for row in results(store))
        statuses = Counter(e["status"] for e in chat_executions(store))
        store.close()
    finally:
        await service.stop()
        await fake.stop()
    elapsed = time.perf_counter() - began
    lost = sum(1 for text in expected if not posts[text])
    duplicated = sum(count - 1 for text, count in posts.items() if text in expected and count > 1)
    # A second copy is the at-least-once window only if a kill fell between the two: sent, killed before
    # its mark committed, sent again by the next run. Two copies from one run would be a bug.
    across = sum(1 for text in expected for first, again in zip(times.get(text, []), times.get(text, [])[1:],
                                                                  strict=False)
                 if any(first <= kill < again for kill in kills))
    stray = sum(count for text, count in posts.items() if text not in expected)
    finished = [f for f, _ in at_kill]
    posted = [p for _, p in at_kill]
    print(f"kill -9 drill: {rounds} rounds x {burst} chat results released at once, SIGKILL 0-{window * 1000:.0f} ms "
          f"after (seed {seed}); {elapsed:.0f} s")
    print(f"  chat executions       {len(expected):6d}   ({', '.join(f'{n} {s}' for s, n in statuses.most_common())})")
    print(f"  replies stored        {sum(stored.values()):6d}")
    print(f"  delivered             {sum(1 for text in expected if posts[text]):6d}")
    print(f"  lost                  {lost:6d}")
    print(f"  duplicated            {duplicated:6d}   ({across} across a kill: the platform took it, the kill came "
          f"before its sent mark committed; {duplicated - across} within one run)")
    print(f"  stored twice          {sum(1 for count in stored.values() if count > 1):6d}")
    print(f"  still pending         {pending:6d}")
    print(f"  unexpected posts      {stray:6d}")
    print(f"  at the kills: statuses committed {min(finished)}-{max(finished)} of {burst} (median "
          f"{statistics.median(finished):.0f}), results posted {min(posted)}-{max(posted)} (median "
          f"{statistics.median(posted):.0f})")
    why = ""
    if duplicated and duplicated == across:
        why = "; every copy is a reply sent before a kill that the restart's lookup did not find"
    print(f"targets: 0 lost ({'met' if not lost else 'NOT met'}), "
          f"0 duplicated ({'met' if not duplicated else 'NOT met'}{why})")
    if keep:
        print(f"home kept: {home}")
    else:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--burst", type=int, default=40)
    parser.add_argument("--window-ms", type=float, default=120.0, help="the kill falls this long after the release")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the drill's folder (logs, database)")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.rounds, arguments.burst, arguments.window_ms / 1000, arguments.seed, arguments.keep))
