"""`/metrics`: after a chat command, an unknown chat command, a webhook that fires a rule and a failing
API run, every counter moved by exactly what happened; states are read at scrape time; the route
needs a key unless public; no parameter value ever reaches a scrape."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.loopback import LoopbackAdapter
from bot.app import Squall
from bot.http.app import create_api
from engine.config import ConfigError, load_config
from engine.metrics import metrics
from tests.conftest import write
from tests.test_api import KEY, _home
from tests.test_chat import settle

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(text: str) -> Samples:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@contextlib.asynccontextmanager
async def chat_and_api(home: Path) -> AsyncIterator[tuple[Squall, LoopbackAdapter, httpx.AsyncClient]]:
    """test_api's Squall with the loopback chat started and an API client, as `squall serve` runs both."""
    loopback = LoopbackAdapter()
    squall = await Squall.start(load_config(_home(home) / "config.yml"), adapters=[loopback])
    await squall.chat.start()
    transport = httpx.ASGITransport(app=create_api(squall))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://squall",
                                     headers={"St2-Api-Key": KEY}) as client:
            yield squall, loopback, client
    finally:
        await squall.chat.stop()
        await squall.triggers.settle()
        await squall.close()


@pytest.fixture
async def served(home: Path) -> AsyncIterator[tuple[Squall, LoopbackAdapter, httpx.AsyncClient]]:
    async with chat_and_api(home) as running:
        yield running


async def _scrape(client: httpx.AsyncClient) -> Samples:
    answer = await client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    return _samples(answer.text)


async def _done(squall: Squall, count: int) -> None:
    for _ in range(600):
        finished = [e for e in await squall.executions.list() if e["end_timestamp"]]
        if len(finished) >= count:
            await settle(squall, squall.chat)
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the executions did not finish")


async def test_counters_move_by_exactly_what_happened(served) -> None:
    squall, loopback, client = served
    before = await _scrape(client)
    await loopback.say("!greet world", user="alice", channel="#ops")
    await loopback.say("!frobnicate now", user="alice", channel="#ops")
    hook = await client.post("/api/v1/webhooks/ci/build/", json={"who": "ci"})
    assert hook.status_code == 202
    failing = await client.post("/api/v1/executions", json={"action": "core.local", "parameters": {"cmd": "exit 3"}})
    assert failing.status_code == 201
    await _done(squall, 3)
    after = await _scrape(client)

    def moved(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert moved("squall_chat_messages_total", adapter="loopback") == 2
    assert moved("squall_chat_commands_total", adapter="loopback", outcome="matched") == 1
    assert moved("squall_chat_commands_total", adapter="loopback", outcome="unmatched") == 1
    # The ack, its edit to the final status, the result, and "I don't know" for the unmatched one.
    assert moved("squall_chat_replies_total", adapter="loopback", outcome="sent") == 4
    assert moved("squall_executions_started_total", action="demo.greet", pack="demo", source="chat") == 1
    assert moved("squall_executions_started_total", action="demo.greet", pack="demo", source="rule") == 1
    assert moved("squall_executions_finished_total", action="demo.greet", pack="demo", status="succeeded",
                 source="chat") == 1
    assert moved("squall_executions_finished_total", action="demo.greet", pack="demo", status="succeeded",
                 source="rule") == 1
    assert moved("squall_executions_finished_total", action="core.local", pack="core", status="failed",
                 source="api") == 1
    assert moved("squall_execution_duration_seconds_count", runner="local-shell-cmd") == 3
    assert moved("squall_webhook_requests_total", hook="ci/build", status="202") == 1  # the hook, not the path
    assert moved("squall_trigger_instances_total", trigger_type="core.st2.webhook") == 1
    assert moved("squall_rules_matched_total", rule="demo.on_build") == 1
    assert moved("squall_rules_evaluated_total", trigger_type="core.st2.webhook") == 1  # the pack's one webhook rule
    assert moved("squall_http_request_duration_seconds_count", route="/api/v1/executions", method="POST",
                 status="201") == 1
    assert _value(after, "squall_executions", state="running") == 0
    assert _value(after, "squall_outbox_pending") == 0
    assert _value(after, "squall_outbox_oldest_pending_age_seconds") == 0
    assert _value(after, "squall_adapter_connected", adapter="loopback") == 1
    assert _value(after, "squall_leader") == 0  # serve's leader loop is not running here
    squall.sensor_lead = True  # what that loop sets once this process holds the lead
    assert _value(await _scrape(client), "squall_leader") == 1


async def test_an_inquiry_waiting_for_its_answer_is_not_counted_as_finished(served) -> None:
    """A core.ask is `pending` until answered: it was counted as finished (status "pending"), then
    again when answered, so dashboards of ended executions counted it twice."""
    squall, _loopback, client = served
    before = await _scrape(client)
    asked = await squall.executions.request("core.ask", {"schema": {"type": "object", "properties": {
        "ok": {"type": "boolean"}}}})
    for _ in range(200):
        if (await squall.executions.get(asked["id"]))["status"] == "pending":
            break
        await asyncio.sleep(0.05)
    waiting = await _scrape(client)

    def ended(samples: Samples) -> dict[str, float]:
        """core.ask's finished count by status, summed over its sources (the registry is the process's:
        other tests count too, a workflow's core.ask under the source `workflow`)."""
        counts: dict[str, float] = {}
        for (name, labels), value in samples.items():
            if name == "squall_executions_finished_total" and dict(labels).get("action") == "core.ask":
                status = dict(labels)["status"]
                counts[status] = counts.get(status, 0.0) + value
        return counts

    assert ended(waiting) == ended(before)
    assert _value(waiting, "squall_execution_duration_seconds_count", runner="inquirer") == _value(
        before, "squall_execution_duration_seconds_count", runner="inquirer")
    await squall.inquiries.respond(asked["id"], {"ok": True}, None)
    await squall.executions.wait(asked["id"], timeout=20)
    after, earlier = ended(await _scrape(client)), ended(before)
    assert {status: count - earlier.get(status, 0.0) for status, count in after.items()
            if count != earlier.get(status, 0.0)} == {"succeeded": 1.0}


async def test_states_are_read_when_scraped_and_values_never_become_labels(served) -> None:
    squall, _loopback, client = served
    secret = "hunter2-Zq81"
    slow = await client.post("/api/v1/executions", json={"action": "demo.slow"})
    await client.post("/api/v1/executions", json={"action": "demo.greet", "parameters": {
        "who": "<b>someone</b> {{ 7*7 }}", "password": secret}})
    for _ in range(200):
        if (await squall.executions.get(slow.json()["id"]))["status"] == "running":
            break
        await asyncio.sleep(0.05)
    text = (await client.get("/metrics")).text
    assert _value(_samples(text), "squall_executions", state="running") >= 1
    assert secret not in text and "someone" not in text, [line for line in text.splitlines() if "someone" in line]
    await client.delete(f"/api/v1/executions/{slow.json()['id']}")
    await client.get(f"/api/v1/executions/{'f' * 24}")  # an id in a path is a template's parameter
    assert f"{'f' * 24}" not in (await client.get("/metrics")).text


async def test_metrics_need_a_key_unless_public(home: Path) -> None:
    for public, expected in ((False, 401), (True, 200)):
        _home(home, f"metrics: {{public: {str(public).lower()}}}")
        squall = await Squall.start(load_config(home / "config.yml"))
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(squall)),
                                         base_url="http://squall") as anon:
                assert (await anon.get("/metrics")).status_code == expected
        finally:
            await squall.close()


async def test_disabled_metrics_record_nothing(home: Path) -> None:
    squall = await Squall.start(load_config(_home(home, "metrics: {enabled: false}") / "config.yml"))
    try:
        before = _value(_samples(metrics.exposition().decode()), "squall_executions_started_total",
                        action="core.noop", pack="core", source="api")
        record = await squall.executions.request("core.noop", {}, {"source": "api"})
        await squall.executions.wait(record["id"], timeout=30)
        after = _value(_samples(metrics.exposition().decode()), "squall_executions_started_total",
                       action="core.noop", pack="core", source="api")
        assert after == before and not metrics.enabled
    finally:
        await squall.close()
        metrics.enabled = True


async def test_statsd_gets_the_same_events_in_stackstorm_keys(home: Path) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(5)
    port = listener.getsockname()[1]
    squall = await Squall.start(load_config(_home(home, f"metrics: {{statsd: {{host: 127.0.0.1, port: {port}}}}}")
                                            / "config.yml"))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(squall)), base_url="http://squall",
                                     headers={"St2-Api-Key": KEY}) as client:
            made = await client.post("/api/v1/executions", json={"action": "core.noop"})
            await squall.executions.wait(made.json()["id"], timeout=30)
            await client.post("/api/v1/webhooks/ci/build/", json={"who": "ci"})
            await squall.triggers.settle()
        lines: list[str] = []
        with contextlib.suppress(TimeoutError):
            while True:
                lines += listener.recv(65536).decode().splitlines()
                listener.settimeout(1)
    finally:
        listener.close()
        await squall.close()
    keys = {(line.split(":")[0], line.split("|")[1]) for line in lines}
    for key, kind in (("st2.action.executions", "c"), ("st2.action.core.noop", "c"), ("st2.action.succeeded", "c"),
                      ("st2.api.requests", "c"), ("st2.api.requests", "ms"), ("st2.api.requests.method.POST", "c"),
                      ("st2.api.responses.status.201", "g"), ("st2.rule.matched", "c"), ("st2.rule.demo.on_build", "c"),
                      ("st2.trigger.core.st2.webhook", "c"), ("st2.rule.processed", "c")):
        assert (key, kind) in keys, (key, sorted(keys))
    assert ("st2.action.core.noop", "ms") in keys and ("st2.action.executions", "ms") in keys  # timers
    assert any(line.startswith("st2.api.responses.status.201:+1|g") for line in lines)  # a gauge moved by one


def test_a_statsd_host_name_is_looked_up_off_the_callers_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """`sendto` with a host name looks it up on every datagram, on the loop: a slow or dead DNS held
    every request for the resolver's timeout. The name is looked up on a thread of its own; samples sent
    before it is known are dropped (statsd is lossy by design), later ones reach the host."""
    from engine.metrics import Statsd

    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(5)
    port = listener.getsockname()[1]
    resolver_free = threading.Event()
    looked_up_on: list[str] = []
    real = socket.getaddrinfo

    def slow_dns(*args: Any, **kwargs: Any) -> Any:
        looked_up_on.append(threading.current_thread().name)
        resolver_free.wait(10)
        return real("127.0.0.1", *args[1:], **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_dns)
    statsd = Statsd("statsd.example.internal", port, "st2")
    try:
        started = time.monotonic()
        statsd.send(("dropped", 1, "c"))
        assert time.monotonic() - started < 1  # never waits for the resolver
        resolver_free.set()
        deadline = time.monotonic() + 10
        received = b""
        listener.settimeout(0.2)
        while not received and time.monotonic() < deadline:
            statsd.send(("arrived", 1, "c"))
            with contextlib.suppress(TimeoutError):
                received = listener.recv(65536)
        assert received == b"st2.arrived:1|c"
        assert looked_up_on and threading.main_thread().name not in looked_up_on
    finally:
        resolver_free.set()
        statsd.close()
        listener.close()


@pytest.mark.parametrize(("statsd", "message"), [
    ("{port: 8125}", "'metrics.statsd' must be a mapping with host"),
    ("{host: h, port: 99999}", "'metrics.statsd.port' must be a UDP port number, not 99999"),
])
async def test_bad_statsd_settings_are_named(home: Path, statsd: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        await Squall.start(load_config(_home(home, f"metrics: {{statsd: {statsd}}}") / "config.yml"))


def test_counts_noted_between_scrapes_are_all_exported_and_held_in_bounded_memory() -> None:
    from engine import metrics as module

    fresh = module.Metrics()
    for n in range(module._FOLD_AT + 5):
        fresh.count(fresh.chat_messages, "slack" if n % 2 else "irc")
        fresh.evaluated("core.st2.webhook", 3)
    # added to the series on the way, not kept without end (the counts of one and of more alike)
    assert len(fresh._counts) <= module._FOLD_AT and len(fresh._amounts) <= module._FOLD_AT
    samples = _samples(fresh.exposition().decode())
    total = module._FOLD_AT + 5
    assert _value(samples, "squall_chat_messages_total", adapter="slack") == total // 2
    assert _value(samples, "squall_chat_messages_total", adapter="irc") == total - total // 2
    assert _value(samples, "squall_rules_evaluated_total", trigger_type="core.st2.webhook") == 3 * total
    assert not fresh._counts


@pytest.mark.postgres
async def test_queue_gauges_count_waiting_jobs_and_age_them_from_when_they_were_queued(home: Path,
                                                                                     postgres_url: str) -> None:
    """Under the scale-out executor with no worker up, a request's job waits on its queue: counted, and
    aged from its queueing (a workflow's step jobs carry its id: its start would read hours old)."""
    import re
    from datetime import timedelta

    from engine.metrics import Metrics
    from engine.storage import utcnow

    config = _home(home, "executor: {kind: procrastinate, queues: {core: ops}}") / "config.yml"
    config.write_text(config.read_text().replace("sqlite:///data/squall.db", postgres_url))
    squall = await Squall.start(load_config(config))
    try:
        record = await squall.executions.request("core.noop")
        await squall.db(squall.store.update_execution, record["id"],
                        {"start_timestamp": utcnow() - timedelta(hours=1)})
        fresh = Metrics()
        await squall.db(fresh.observe, squall.store, leader=False, adapters={}, queues=True)
        text = fresh.exposition().decode()
        assert 'squall_queue_jobs{queue="ops"} 1.0' in text and 'squall_executions{state="waiting"} 1.0' in text
        found = re.search(r'squall_queue_oldest_job_age_seconds\{queue="ops"\} (\S+)', text)
        assert found is not None and 0 <= float(found.group(1)) < 600  # queued now; not its execution's hour
    finally:
        await squall.close()


async def test_statsd_puts_its_prefix_after_st2_as_stackstorm_does(home: Path) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    squall = await Squall.start(load_config(_home(
        home, f"metrics: {{statsd: {{host: 127.0.0.1, port: {port}, prefix: prod}}}}") / "config.yml"))
    try:
        made = await squall.executions.request("core.noop")
        await squall.executions.wait(made["id"], timeout=30)
        lines: list[str] = []
        with contextlib.suppress(TimeoutError):
            while not any(line.startswith("st2.prod.action.executions:") for line in lines):
                lines += listener.recv(65536).decode().splitlines()
    finally:
        listener.close()
        await squall.close()
    assert "st2.prod.action.executions:1|c" in lines
    assert all(line.startswith("st2.prod.") for line in lines)


class _Offline(LoopbackAdapter):
    """An adapter whose connection is down."""

    online = False


async def test_refusals_ambiguity_builtins_failed_replies_and_every_source_are_counted(home: Path) -> None:
    """The outcomes and sources the first test does not drive, each moved by exactly what happened."""
    _home(home)
    for name in ("hi_one", "hi_two"):  # two aliases that read the same command: ambiguous
        write(home / "packs" / "demo" / "aliases" / f"{name}.yaml", f"""
            name: {name}
            action_ref: demo.greet
            formats: ["hi {{{{who}}}}"]
        """)
    loopback = LoopbackAdapter()
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[loopback, _Offline(name="down")])
    await squall.chat.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(squall)), base_url="http://squall",
                                     headers={"St2-Api-Key": KEY}) as client:
            before = await _scrape(client)
            await loopback.say("!secretgreet x", user="bob")  # only alice may
            await loopback.say("!hi bob", user="bob")
            loopback.refusals_to_inject = 1  # the platform refuses the next reply for good
            await loopback.say("!help", user="bob")
            for context in ({"source": "web"}, {"rule": {"ref": "demo.hourly"},
                                                "trigger_instance": {"name": "core.st2.IntervalTimer"}}):
                made = await squall.executions.request("core.noop", context=context)
                await squall.executions.wait(made["id"], timeout=30)
            await squall.executions.request("core.ask", {"ttl": 60})
            await settle(squall, squall.chat)
            after = await _scrape(client)
    finally:
        await squall.chat.stop()
        await squall.close()

    def moved(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    for outcome in ("denied", "ambiguous", "builtin"):
        assert moved("squall_chat_commands_total", adapter="loopback", outcome=outcome) == 1, outcome
    assert moved("squall_chat_replies_total", adapter="loopback", outcome="failed") == 1
    assert moved("squall_chat_replies_total", adapter="loopback", outcome="sent") == 2  # the refusal, ambiguity
    for source in ("web", "timer"):
        assert moved("squall_executions_started_total", action="core.noop", pack="core", source=source) == 1
    assert _value(after, "squall_inquiries_pending") == 1
    assert _value(after, "squall_adapter_connected", adapter="down") == 0
    assert _value(after, "squall_adapter_connected", adapter="loopback") == 1


def test_a_counter_series_is_created_when_it_is_first_counted_not_when_first_scraped() -> None:
    """`*_created` says when a series began counting: a counter's increments wait for the scrape (or
    `_FOLD_AT`) to be added, yet its series is made at the first one, which stamps the time."""
    from engine import metrics as module

    fresh = module.Metrics()
    record = {"action": "demo.greet", "context": {"source": "chat"}}
    before = time.time()
    fresh.started(record)
    counted = time.time()
    time.sleep(0.05)
    fresh.started(record)  # a later increment of the same series changes nothing of its start
    fresh.count(fresh.chat_messages, "irc")
    # Still held back: the increments are added to their series at the scrape, as before.
    assert not fresh.registry.get_sample_value("squall_executions_started_total",
                                               {"action": "demo.greet", "pack": "demo", "source": "chat"})
    scraped = time.time()
    samples = _samples(fresh.exposition().decode())
    labels = {"action": "demo.greet", "pack": "demo", "source": "chat"}
    assert _value(samples, "squall_executions_started_total", **labels) == 2
    created = _value(samples, "squall_executions_started_created", **labels)
    assert before <= created <= counted < scraped
    assert _value(samples, "squall_chat_messages_created", adapter="irc") < scraped

    # Past `_FOLD_AT`, the series folded on the way are dated from their first increment too.
    first = time.time()
    fresh.count(fresh.chat_commands, "irc", "matched")
    time.sleep(0.05)
    folding = time.time()
    for _ in range(module._FOLD_AT + 1):
        fresh.count(fresh.chat_messages, "slack")
    created = fresh.registry.get_sample_value("squall_chat_commands_created", {"adapter": "irc", "outcome": "matched"})
    assert created is not None and first <= created < folding


async def test_a_confirmed_command_is_matched_once(home: Path) -> None:
    """A command whose alias asks for confirmation is one command: `matched` when it is typed, not again when
    its `yes` runs it (the `yes` is a message addressed to Squall, counted as such)."""
    _home(home)
    write(home / "packs" / "demo" / "aliases" / "careful.yaml", """
        name: careful
        action_ref: demo.greet
        formats: ["careful {{who}}"]
        confirm: true
    """)
    async with chat_and_api(home) as (squall, loopback, client):
        before = await _scrape(client)
        await loopback.say("!careful world", user="alice")
        await loopback.say("!yes", user="alice")
        await _done(squall, 1)
        after = await _scrape(client)
        ran = [e for e in await squall.executions.list() if e["action"] == "demo.greet"]
    assert len(ran) == 1
    moved = {outcome: _value(after, "squall_chat_commands_total", adapter="loopback", outcome=outcome)
             - _value(before, "squall_chat_commands_total", adapter="loopback", outcome=outcome)
             for outcome in ("matched", "unmatched", "builtin")}
    assert moved == {"matched": 1, "unmatched": 0, "builtin": 0}
    assert _value(after, "squall_chat_messages_total", adapter="loopback") \
        - _value(before, "squall_chat_messages_total", adapter="loopback") == 2
