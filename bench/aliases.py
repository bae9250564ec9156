"""Alias matching with 1,000 aliases: the `AliasMatcher` index against StackStorm's linear scan.

    .venv/bin/python bench/aliases.py [--aliases 1000] [--messages 3000] [--seed 1]

Baseline, measured in the same run on the same messages and the same compiled regexes: StackStorm's
method, trying every representation's regex on every message (`get_matching_alias` runs the parser for
each format of each enabled alias). The baseline gets each message prepared once and every regex
precompiled, which StackStorm does not do, so the ratio is a lower bound. Both are timed the same
way, as `timeit` does: three rounds with the garbage collector off; per message the best round counts
(median and p99 over messages); throughput is measured in a separate tight loop (best of three).
Targets (issue 4): at least 20x faster than the scan and at most 50 microseconds per message.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aliases import Alias, AliasFormat, AliasMatcher, AmbiguousCommand, NoMatch
from aliases.grammar import compile_format, prepare


def _words(text: str) -> list[str]:
    return text.split()


VERBS = _words("""restart deploy rollback scale status ping show list get set describe drain cordon uncordon reboot
start stop
pause resume backup restore rotate flush purge tail grep trace silence ack escalate page promote demote failover
snapshot provision decommission migrate sync build release tag approve deny merge revert lock unlock open close
assign resolve reopen comment watch unwatch enable disable invite kick ban mute unmute archive export import
schedule cancel retry apply plan validate lint format bump pin unpin warm cool throttle""")
TOOLS = _words("""aws gcp azure k8s helm jira git github gitlab pagerduty opsgenie datadog grafana vault consul nomad
terraform ansible jenkins argo sentry statuspage slack zoom okta ldap dns cdn redis postgres mysql kafka rabbit
nginx haproxy s3 ec2 rds lambda ecs""")
NOUNS = _words("""service host app cluster node pod queue topic bucket instance db index cache user group team incident
ticket alert monitor dashboard release branch job pipeline secret cert domain record""")
JOIN = ["on", "to", "in", "for", "from", "with", "as", "at"]


def generate_aliases(count: int, rng: random.Random) -> list[Alias]:
    formats: set[str] = set()
    while len(formats) < count:
        kind = rng.random()
        noun = rng.choice(NOUNS)
        if kind < 0.45:  # verb-led, like `restart {{service}} on {{host}}`
            verb = rng.choice(VERBS)
            shape = rng.randrange(6)
            fmt = [f"{verb} {noun} {{{{name}}}}",
                   f"{verb} {{{{{noun}}}}} on {{{{host}}}}",
                   f"{verb} {{{{app}}}} to {{{{env=staging}}}}",
                   f"{verb} {noun} {{{{name}}}} {{{{count:d}}}} times",
                   f"{verb} {noun}s( in {{{{region=us-east-1}}}})?",
                   f"{verb} {noun} {{{{target}}}} {rng.choice(JOIN)} {{{{where}}}}"][shape]
        elif kind < 0.97:  # tool-led subcommands, many sharing their first word
            tool = rng.choice(TOOLS)
            verb = rng.choice(VERBS)
            fmt = rng.choice([f"{tool} {verb} {noun} {{{{name}}}}",
                              f"{tool} {noun} {verb} {{{{name}}}} {rng.choice(JOIN)} {{{{where=default}}}}",
                              f"{tool} {verb} {{{{{noun}}}}}"])
        else:  # starting with a placeholder or a regex: tried for every message
            fmt = rng.choice([f"{{{{who}}}} needs {noun} {rng.choice(VERBS)}",
                              f"(?:please )?{rng.choice(VERBS)} the {noun} {{{{name}}}}",
                              f"{{{{thing}}}} is {rng.choice(VERBS)}ed on {{{{host}}}}"])
        formats.add(fmt)
    aliases = []
    for index, fmt in enumerate(sorted(formats)):
        aliases.append(Alias(name=f"alias_{index:04d}", pack=f"pack{index % 25:02d}", action_ref="core.noop",
                             description=f"bench alias {index}", formats=[AliasFormat(fmt, [fmt])]))
    return aliases


VALUES = ["web", "api-gateway", "db-01", '"two words"', "prod", "eu-west-2", "v1.2.3", "nginx", "h1,h2", "42"]


def fill(fmt: str, rng: random.Random) -> str:
    """A message a person would type for `fmt`."""
    text = fmt.replace("(?:please )?", rng.choice(["", "please "]))
    text = text.replace("( in {{region=us-east-1}})?", rng.choice(["", " in eu-west-1"]))
    text = text.replace("{{count:d}}", str(rng.randint(1, 9)))
    for optional in ("{{env=staging}}", "{{where=default}}"):
        text = text.replace(optional, rng.choice(["", "prod", "dev"]))
    while "{{" in text:
        start = text.index("{{")
        end = text.index("}}", start) + 2
        text = text[:start] + rng.choice(VALUES) + text[end:]
    if rng.random() < 0.1:
        text += " timeout=30"
    return " ".join(text.split())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(messages: list[str], work, rounds: int = 3) -> tuple[list[float], float]:
    """Per-message microseconds (each message's best of `rounds`) and the best round's total seconds.

    Like `timeit`: the garbage collector is off while timing, and the minimum of repeats is kept.
    """
    best = [float("inf")] * len(messages)
    best_total = float("inf")
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for _ in range(rounds):
            total_start = time.perf_counter()
            for i, message in enumerate(messages):
                start = clock()
                work(message)
                elapsed = (clock() - start) / 1000
                if elapsed < best[i]:
                    best[i] = elapsed
            best_total = min(best_total, time.perf_counter() - total_start)
    finally:
        gc.enable()
    return best, best_total


def rate(messages: list[str], work, rounds: int = 3) -> float:
    """Messages per second in a tight loop (no clock per message), best of `rounds`, GC off."""
    best = float("inf")
    gc.disable()
    try:
        for _ in range(rounds):
            start = time.perf_counter()
            for message in messages:
                work(message)
            best = min(best, time.perf_counter() - start)
    finally:
        gc.enable()
    return len(messages) / best


def main(alias_count: int, message_count: int, seed: int) -> int:
    rng = random.Random(seed)
    aliases = generate_aliases(alias_count, rng)
    start = time.perf_counter()
    matcher = AliasMatcher(aliases)
    build = time.perf_counter() - start
    compiled = [compile_format(rep) for a in aliases for rep in a.representations]
    words = {rep.split()[0] for a in aliases for rep in a.representations}

    messages: list[str] = []
    skipped = {"ambiguous": 0, "no match": 0}
    while len(messages) < message_count:
        message = fill(rng.choice(aliases).formats[0].display or "", rng)
        try:
            matcher.match(message)
        except AmbiguousCommand:
            skipped["ambiguous"] += 1  # e.g. `scale web on h1` fits `scale {{app}} on {{host}}` and
            continue                   # `scale {{target}} {{where}}`... equally well
        except NoMatch:
            skipped["no match"] += 1
            continue
        messages.append(message)

    def index(message: str) -> None:
        with contextlib.suppress(NoMatch, AmbiguousCommand):
            matcher.match(message)

    def scan(message: str) -> None:
        prepared = prepare(message)
        stream = prepared.stream
        [c for c in compiled if c.regex.search(stream)]

    # warm-up, then the measured runs (same messages, same order)
    for message in messages[:200]:
        index(message)
        scan(message)
    index_times, _ = timed(messages, index)
    scan_times, _ = timed(messages, scan)
    index_rate = rate(messages, index)
    scan_rate = rate(messages, scan)
    misses = [f"{rng.choice(VERBS)}x {rng.choice(VALUES)}" for _ in range(500)]
    miss_times, _ = timed(misses, index)

    index_median = statistics.median(index_times)
    scan_median = statistics.median(scan_times)
    stats = matcher.stats()
    print(f"aliases: {len(aliases)} ({len(compiled)} representations, {len(words)} distinct first words; indexed by "
          f"first words: {stats['by_first_words']}, by a required word: {stats['by_required_word']}, tried for "
          f"every message: {stats['always_tried']}); index built in {build * 1000:.0f} ms")
    print(f"messages: {len(messages)} that select one alias (generated and skipped: {skipped['ambiguous']} "
          f"ambiguous, {skipped['no match']} matching nothing)")
    print(f"{'method':36} {'median µs':>10} {'p99 µs':>10} {'msgs/s':>10}")
    print(f"{'linear scan (StackStorm method)':36} {scan_median:10.1f} {percentile(scan_times, 0.99):10.1f} "
          f"{scan_rate:10.0f}")
    print(f"{'AliasMatcher.match (index)':36} {index_median:10.1f} {percentile(index_times, 0.99):10.1f} "
          f"{index_rate:10.0f}")
    print(f"{'AliasMatcher.match, no match':36} {statistics.median(miss_times):10.1f} "
          f"{percentile(miss_times, 0.99):10.1f} {'':>10}")
    ratio = scan_median / index_median
    throughput_ratio = index_rate / scan_rate
    print(f"speed-up: {ratio:.1f}x (median), {throughput_ratio:.1f}x (throughput)")
    ok_ratio = ratio >= 20
    ok_median = index_median <= 50
    print(f"target >= 20x faster than the scan: {'met' if ok_ratio else 'MISSED'}; "
          f"target <= 50 µs per message: {'met' if ok_median else 'MISSED'}")
    return 0 if ok_ratio and ok_median else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aliases", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sys.exit(main(args.aliases, args.messages, args.seed))
