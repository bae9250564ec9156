"""Free text → alias ("did you mean", issue 20): how well and how fast each ranker guesses.

    .venv/bin/python bench/nl.py [--rounds 5]

The aliases are the shipped packs' plus the bench pack's (`bench/packs/benchpack/aliases`). Each of
the requests below is paraphrased by hand (none is in an alias's exact syntax) with the alias meant,
or `none` where the right answer is "I don't know". A ranker's answer is what the chat would do
with its default threshold and margin: the best alias when it stands out, else nothing.

Printed, never asserted: top-1 accuracy over the requests that mean an alias; wrong suggestions
(an alias offered where another, or none, was meant) over all requests; how often a suggestion's
filled command matches its alias exactly (so it can be run with one click); latency per message
(p50/p99 of each message's best of `--rounds`), against a baseline measured in the same run on the
same messages: the exact `AliasMatcher.match` (which fails on them all); then the latency again with
1,000 generated aliases added (bench/aliases.py's). Targets: p50 ≤ 5 ms for the
lexical ranker, ≤ 15 ms for the embedding one.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aliases import AliasMatcher, AmbiguousCommand, NoMatch, load_aliases
from aliases.rank import EmbeddingRanker, LexicalRanker, Ranker
from bench.aliases import generate_aliases
from engine.packs import load_registry

REPO = Path(__file__).resolve().parent.parent

#: (request, the alias meant or "none").
CASES: list[tuple[str, str]] = [
    # the bench pack
    ("please bounce nginx on web1", "benchpack.service_restart"),
    ("can you restart the redis service on cache-02", "benchpack.service_restart"),
    ("reboot postgres on db3", "benchpack.service_restart"),
    ("restart nginx on web1 now please", "benchpack.service_restart"),
    ("kill haproxy on lb1", "benchpack.service_stop"),
    ("shut down the cron daemon on worker7", "benchpack.service_stop"),
    ("halt sshd on bastion", "benchpack.service_stop"),
    ("is nginx running on web2", "benchpack.service_status"),
    ("what's the status of redis on cache-01", "benchpack.service_status"),
    ("ship billing to prod", "benchpack.deploy"),
    ("release checkout to staging", "benchpack.deploy"),
    ("deploy the api service to production", "benchpack.deploy"),
    ("push frontend to dev", "benchpack.deploy"),
    ("roll back billing in prod", "benchpack.rollback"),
    ("undo the last release of checkout", "benchpack.rollback"),
    ("scale api to 5 replicas", "benchpack.scale"),
    ("resize checkout to 3 replicas", "benchpack.scale"),
    ("increase the replicas of search to 8", "benchpack.scale"),
    ("how much disk space is free on web1", "benchpack.disk"),
    ("show disk usage for db2", "benchpack.disk"),
    ("is the disk full on build-agent-3", "benchpack.disk"),
    ("show me the logs of nginx", "benchpack.logs"),
    ("tail the logs for payments", "benchpack.logs"),
    ("search the logs of nginx for 502", "benchpack.grep_logs"),
    ("grep payments logs for timeout", "benchpack.grep_logs"),
    ("who's on call", "benchpack.oncall"),
    ("who is oncall this week", "benchpack.oncall"),
    ("who has the pager", "benchpack.oncall"),
    ("page alice", "benchpack.page"),
    ("send a page to bob", "benchpack.page"),
    ("mute alerts on web3 for 30 minutes", "benchpack.silence"),
    ("silence web4 alerts for an hour", "benchpack.silence"),
    ("when does the certificate of example.com expire", "benchpack.cert"),
    ("check cert expiry for api.example.com", "benchpack.cert"),
    ("clear the cache of shop", "benchpack.cache_flush"),
    ("purge cache for the blog", "benchpack.cache_flush"),
    ("take a backup of the orders database", "benchpack.db_backup"),
    ("snapshot database users", "benchpack.db_backup"),
    ("which version of checkout is in prod", "benchpack.version"),
    ("what version is billing running in staging", "benchpack.version"),
    ("open an incident checkout is down", "benchpack.incident"),
    ("declare incident payments failing", "benchpack.incident"),
    ("how long has web1 been up", "benchpack.uptime"),
    ("uptime for db1", "benchpack.uptime"),
    # the shipped squall pack
    ("say hello world", "squall.echo"),
    ("repeat after me: deploy done", "squall.echo"),
    ("fetch https://example.com/health", "squall.http"),
    ("make an http request to https://example.com", "squall.http"),
    ("show me the datastore key deploy.env", "squall.key_get"),
    ("what is the value of key api.url", "squall.key_get"),
    ("store key deploy.env as prod", "squall.key_set"),
    ("set the key release.tag to v2", "squall.key_set"),
    ("install the pack from https://github.com/x/y", "squall.pack_install"),
    ("add pack /srv/packs/mine", "squall.pack_install"),
    ("which packs are installed", "squall.pack_list"),
    ("show installed packs", "squall.pack_list"),
    ("are you alive", "squall.ping"),
    ("execute the command uptime on the host", "squall.run"),
    ("run a shell command ls -la", "squall.run"),
    # nothing meant: the right answer is "I don't know"
    ("what's the weather in paris", "none"),
    ("tell me a joke", "none"),
    ("good morning everyone", "none"),
    ("lunch at noon?", "none"),
    ("how do I configure vim", "none"),
    ("order a pizza for the team", "none"),
    ("translate hello into french", "none"),
    ("what time is it in tokyo", "none"),
    ("show me", "none"),
    ("thanks!", "none"),
    ("{{ 7*7 }} $(touch /tmp/squall-nl-bench)", "none"),
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(messages: list[str], work, rounds: int) -> list[float]:
    """Per-message milliseconds, each message's best of `rounds`, with the garbage collector off."""
    best = [float("inf")] * len(messages)
    gc.disable()
    try:
        for _ in range(rounds):
            for i, message in enumerate(messages):
                start = time.perf_counter()
                work(message)
                best[i] = min(best[i], (time.perf_counter() - start) * 1000)
    finally:
        gc.enable()
    return best


def decide(ranker: Ranker, message: str, aliases) -> tuple[str, str | None]:
    """What the chat would offer: (alias ref or "none", the filled command)."""
    ranked = ranker.rank(message, aliases)
    if not ranked:
        return "none", None
    runner_up = ranked[1].score if len(ranked) > 1 else 0.0
    best = ranked[0]
    if best.score < ranker.threshold or best.score - runner_up < ranker.margin:
        return "none", None
    return best.alias.ref, best.filled


def at_scale(listed, rankers: list[tuple[str, Ranker]], messages: list[str], rounds: int) -> None:
    """Latency only, at scale: the same requests against these aliases plus 1,000 generated ones
    (bench/aliases.py's generator; their words are not the requests', so accuracy means nothing there)."""
    many = [*listed, *generate_aliases(1000, random.Random(1))]
    big = AliasMatcher(many)

    def exact_big(message: str) -> None:
        with contextlib.suppress(NoMatch, AmbiguousCommand):
            big.match(message)

    rows = [("exact AliasMatcher.match (base)", timed(messages, exact_big, rounds))]
    for name, ranker in rankers:
        ranker.rank("warm up", many)
        rows.append((f"{name} ranker", timed(messages, lambda m, r=ranker: r.rank(m, many), rounds)))
    print(f"with {len(many)} aliases:")
    for label, latency in rows:
        print(f"  {label:32} {'':>23} {percentile(latency, 0.5):8.3f} {percentile(latency, 0.99):8.3f}")


def main(rounds: int, verbose: bool) -> int:
    with tempfile.TemporaryDirectory() as configs:
        registry = load_registry([REPO / "bench" / "packs"], Path(configs), REPO / "packs")
    aliases, errors = load_aliases(registry)
    for error in errors:
        print(f"alias skipped: {error}")
    matcher = AliasMatcher(aliases)
    listed = matcher.aliases
    messages = [m for m, _ in CASES]
    meant = sum(1 for _, want in CASES if want != "none")
    print(f"aliases: {len(listed)} ({len({a.pack for a in listed})} packs); requests: {len(CASES)} "
          f"({meant} meaning an alias, {len(CASES) - meant} meaning none)")

    def exact(message: str) -> None:
        with contextlib.suppress(NoMatch, AmbiguousCommand):
            matcher.match(message)

    rankers: list[tuple[str, Ranker]] = [("lexical", LexicalRanker())]
    if importlib.util.find_spec("wordllama") is not None:
        rankers.append(("embedding", EmbeddingRanker()))
    else:
        print("embedding ranker: not measured (wordllama is not installed: pip install 'squall[nl]')")
    for _, ranker in rankers:  # warm: indexes, the model, the vectors
        ranker.rank("warm up", listed)
    for message in messages[:20]:
        exact(message)
    baseline = timed(messages, exact, rounds)
    print(f"{'method':34} {'top-1':>7} {'wrong':>7} {'filled':>7} {'p50 ms':>8} {'p99 ms':>8}")
    print(f"{'exact AliasMatcher.match (base)':34} {'-':>7} {'-':>7} {'-':>7} {percentile(baseline, 0.5):8.3f} "
          f"{percentile(baseline, 0.99):8.3f}")
    for name, ranker in rankers:
        right = wrong = runnable = offered = 0
        misses: list[str] = []
        for message, want in CASES:
            got, filled = decide(ranker, message, listed)
            if got != "none":
                offered += 1
                with contextlib.suppress(NoMatch, AmbiguousCommand):
                    runnable += filled is not None and matcher.match(filled).alias.ref == got
            if got == want and want != "none":
                right += 1
            elif got != "none" and got != want:
                wrong += 1
            if got != want:
                misses.append(f"  {message!r}: meant {want}, got {got}")
        latency = timed(messages, lambda m, r=ranker: r.rank(m, listed), rounds)
        print(f"{name + ' ranker':34} {right / meant:7.0%} {wrong / len(CASES):7.0%} "
              f"{(runnable / offered if offered else 0):7.0%} {percentile(latency, 0.5):8.3f} "
              f"{percentile(latency, 0.99):8.3f}")
        if verbose:
            print("\n".join(misses))
    at_scale(listed, rankers, messages, rounds)
    print("top-1: right alias offered, of the requests meaning one; wrong: an alias offered that was not "
          "meant, of all requests; filled: offered suggestions whose filled command matches the alias exactly")
    print(f"targets: p50 <= 5 ms (lexical), <= 15 ms (embedding); {len(CASES)} requests, best of {rounds} rounds")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--verbose", action="store_true", help="list each request the ranker got wrong")
    args = parser.parse_args()
    raise SystemExit(main(args.rounds, args.verbose))
