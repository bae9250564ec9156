"""Rules engine throughput: 1,000 rules over 10 trigger types, 10,000 trigger instances (issue 5 item 3).

Measures instances evaluated per second with no execution (`RulesEngine.matching_rules`: rules
indexed by trigger type and first `equals` criterion, criteria compiled once) against a naive
evaluation in the same run (every rule for every instance, JSONPath parsed per criterion, no
index; measured on a sample because it is slow). Target: >= 20,000 instances/s.

Run: .venv/bin/python bench/rules.py
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonpath_ng

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.operators import get_operator
from engine.packs import ContentDocument, Registry, TriggerType
from engine.rules import RulesEngine, load_rules, render_pattern
from engine.templates import build_environment
from engine.yamlfile import LineMap

TYPES, RULES, INSTANCES, HOSTS = 10, 1_000, 10_000, 50


def build() -> tuple[Registry, list[dict[str, Any]]]:
    rnd = random.Random(5)
    registry = Registry(trigger_types={f"bench.t{i}": TriggerType(name=f"t{i}", pack="bench") for i in range(TYPES)})
    registry.actions["core.noop"] = SimpleNamespace(ref="core.noop", enabled=True)  # type: ignore[assignment]
    for n in range(RULES):
        criteria: dict[str, Any] = {"trigger.host": {"type": "equals", "pattern": f"host{rnd.randrange(HOSTS)}"},
                                    "trigger.metrics.value": {"type": "gt", "pattern": rnd.randrange(100)}}
        if n % 3 == 0:
            criteria["trigger.headers['X-Source']"] = {"type": "iequals", "pattern": "grafana"}
        if n % 10 == 0:  # some rules the index cannot narrow
            criteria = {"trigger.metrics.value#lo": {"type": "lt", "pattern": rnd.randrange(100)},
                        "trigger.tags": {"type": "contains", "pattern": "prod"}}
        data = {"name": f"r{n}", "pack": "bench", "enabled": True, "trigger": {"type": f"bench.t{n % TYPES}"},
                "criteria": criteria, "action": {"ref": "core.noop"}}
        registry.documents.append(ContentDocument("rules", "bench", f"r{n}.yaml", data, LineMap(None)))
    instances = [{"id": str(i), "trigger": f"bench.t{rnd.randrange(TYPES)}", "trace_tag": None,
                  "payload": {"host": f"host{rnd.randrange(HOSTS)}", "metrics": {"value": rnd.randrange(100)},
                              "headers": {"X-Source": rnd.choice(["Grafana", "nagios"])},
                              "tags": rnd.choice([["prod"], ["dev"]])}}
                 for i in range(INSTANCES)]
    return registry, instances


def naive(rules: list[Any], instance: dict[str, Any], env: Any) -> list[Any]:
    """Every rule, every criterion: parse the JSONPath, render, look up the operator, no index."""
    matched = []
    context = {"trigger": instance["payload"]}
    for rule in rules:
        if not rule.enabled or rule.trigger_type != instance["trigger"]:
            continue
        ok = True
        for key, spec in rule.data["criteria"].items():
            found = jsonpath_ng.parse(key.split("#", 1)[0]).find(context)
            value = found[0].value if found else None
            try:
                if not get_operator(spec["type"])(value, render_pattern(spec.get("pattern"), context, env)):
                    ok = False
                    break
            except Exception:
                ok = False
                break
        if ok:
            matched.append(rule)
    return matched


def main() -> None:
    registry, instances = build()
    executions = SimpleNamespace(jinja=build_environment())
    datastore = SimpleNamespace(lookup=lambda scope, key: None)
    started = time.perf_counter()
    engine = RulesEngine(registry, None, executions, None, datastore)  # type: ignore[arg-type]
    load = time.perf_counter() - started
    assert len(engine.rules) == RULES and not engine.errors

    started = time.perf_counter()
    total = 0
    for instance in instances:
        total += len(engine.matching_rules(instance))
    fast = time.perf_counter() - started

    sample = instances[:100]
    rules = load_rules(registry)[0]
    env = build_environment()
    started = time.perf_counter()
    naive_results = [naive(rules, instance, env) for instance in sample]
    slow = time.perf_counter() - started
    for instance, expected in zip(sample, naive_results, strict=True):
        assert [r.ref for r in engine.matching_rules(instance)] == [r.ref for r in expected], instance

    fast_rate, slow_rate = INSTANCES / fast, len(sample) / slow
    print(f"rules: {RULES} over {TYPES} trigger types, loaded and compiled in {load * 1000:.0f} ms")
    print(f"indexed engine: {INSTANCES} instances in {fast:.3f} s = {fast_rate:,.0f} instances/s "
          f"({total} matches, {total / INSTANCES:.2f} per instance)")
    print(f"naive (every rule, JSONPath parsed per criterion): {len(sample)} instances in {slow:.3f} s = "
          f"{slow_rate:,.0f} instances/s")
    print(f"speed-up: {fast_rate / slow_rate:,.0f}x; same matches on the sample; target >= 20,000/s: "
          f"{'met' if fast_rate >= 20_000 else 'NOT met'}")


if __name__ == "__main__":
    main()
