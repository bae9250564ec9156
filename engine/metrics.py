"""Prometheus metrics of one Squall process (`squall serve` or `squall worker`), served at `/metrics`.

One registry per process (`metrics`), not prometheus-client's global one, so nothing a library
registers leaks in. Counters and histograms move where things happen, one call each (executions
started and finished, rules, trigger instances, webhooks, chat messages, commands and replies,
sensor restarts, HTTP requests); the event counters' calls only note the increment, and each
scrape (`exposition`) adds them to their series, one addition per series; execution durations are
noted alike and added by their histogram's own collector (`_Durations`). A series itself is made
at its first increment, so its `_created` is when it began counting. What is a state rather
than an event (executions running and waiting, the outbox's backlog, inquiries pending, queue
depths, the leader, adapters connected) is read once per scrape, on the database thread
(`Metrics.observe`), so the hot paths never pay for it.

Refs are label values, never part of a name (StackStorm's statsd baked `st2.action.<ref>` into the
name, which Prometheus cannot aggregate). Nothing a person typed and no parameter is ever a label:
labels are refs, statuses, runner, adapter and route names, so a secret cannot reach a scrape.

`metrics.enabled: false` (config) turns the recording calls into no-ops; `bench/chat.py` and
`bench/executions.py` measure what they cost.

`metrics.statsd: {host, port, prefix}` also sends the same events over UDP in StackStorm's statsd
keys (`st2.action.executions`, `st2.action.<ref>`, `st2.action.<status>`, `st2.rule.<ref>`,
`st2.trigger.<type>`, `st2.api.requests`...), so a pipeline built for st2 keeps working.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import ipaddress
import itertools
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import INF, floatToGoString

from engine.storage import OUTBOX_PENDING, Store, as_utc, executions, outbox, utcnow

log = logging.getLogger(__name__)

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "metrics", "source_of"]

#: Timer trigger types: executions their rules request count as source `timer`.
_TIMERS = ("core.st2.IntervalTimer", "core.st2.DateTimer", "core.st2.CronTimer")
#: The context keys that may say an execution's source is other than its `source` (`source_of`).
_ORIGINS = frozenset({"trigger_instance", "rule", "parent"})
_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_HTTP_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
_LIVE = ("running", "pausing", "canceling", "resuming")
_WAITING = ("requested", "scheduled", "delayed")
#: Counter increments held before they are added to their series without waiting for a scrape: a
#: chat command notes about five, and adding 1,000 takes ~0.25 ms of the loop (10,000 took 2.5 ms,
#: a stall every 2,000 commands that showed in the open loop's p99).
_FOLD_AT = 1_000


def source_of(context: Mapping[str, Any] | None) -> str:
    """Where an execution came from: chat, web, api, cli, rule, timer or workflow (its task)."""
    if not context:
        return "api"
    if not _ORIGINS.isdisjoint(context):  # (most: none of the three, found in one look; asked twice an execution)
        instance = context.get("trigger_instance")
        if instance and instance.get("name") in _TIMERS:
            return "timer"
        if context.get("rule"):
            return "rule"
        if context.get("parent"):
            return "workflow"
    return str(context.get("source") or "api")


#: The statuses `EXECUTION_FINISHED` carries that are no end (a workflow paused, an inquiry awaiting its answer).
_NOT_ENDED = frozenset({"paused", "pending"})


class Metrics:
    """The process's metrics; `enabled` False makes every recording call return at once."""

    def __init__(self) -> None:
        self.enabled = True
        #: StackStorm-style statsd copies of the events (`metrics.statsd`), or None.
        self.statsd: Statsd | None = None
        #: Each series by its metric and labels, and an execution's also by its metric, action ref, status
        #: (`finished`) and source (`_execution_series`): a metric hashes by identity (prometheus-client
        #: defines no equality), so it is its own key, without an `id()` call on every increment.
        self._children: dict[tuple[Any, ...], Any] = {}
        #: Counter increments not yet added to their series, each as its series (`_amounts`: as (series,
        #: amount), for the counts of more than one): appending costs a tenth of prometheus-client's `inc`
        #: (its checks, a lock), and `exposition` adds each series' total once. Added early past
        #: `_FOLD_AT`, so a process nobody scrapes stays small. (Deques: their append and popleft are
        #: atomic, whichever thread records.)
        self._counts: deque[Any] = deque()
        self._amounts: deque[tuple[Any, float]] = deque()
        registry = self.registry = CollectorRegistry()
        ProcessCollector(registry=registry)  # resident memory, CPU seconds, open files
        self.executions_started = Counter(
            "squall_executions_started_total", "Executions that began running in this process.",
            ["action", "pack", "source"], registry=registry)
        self.executions_finished = Counter(
            "squall_executions_finished_total", "Executions that ended, by how they ended.",
            ["action", "pack", "status", "source"], registry=registry)
        self.execution_duration = _Durations(
            "squall_execution_duration_seconds", "From request to end, by runner.", _DURATION_BUCKETS)
        registry.register(self.execution_duration)
        self.rules_evaluated = Counter(
            "squall_rules_evaluated_total", "Rules whose criteria were evaluated against a trigger instance.",
            ["trigger_type"], registry=registry)
        self.rules_matched = Counter(
            "squall_rules_matched_total", "Rules that matched a trigger instance (and were enforced).",
            ["rule"], registry=registry)
        self.trigger_instances = Counter(
            "squall_trigger_instances_total", "Trigger instances stored, by trigger type.", ["trigger_type"],
            registry=registry)
        self.webhook_requests = Counter(
            "squall_webhook_requests_total", "Webhook requests, by hook and HTTP status.", ["hook", "status"],
            registry=registry)
        self.chat_messages = Counter(
            "squall_chat_messages_total", "Chat messages addressed to Squall, by adapter.", ["adapter"],
            registry=registry)
        self.chat_commands = Counter(
            "squall_chat_commands_total", "Chat commands by adapter and outcome: matched, unmatched, ambiguous, "
            "denied, builtin.", ["adapter", "outcome"], registry=registry)
        self.chat_replies = Counter(
            "squall_chat_replies_total", "Replies the outbox delivered (sent) or gave up on (failed).",
            ["adapter", "outcome"], registry=registry)
        self.sensor_restarts = Counter(
            "squall_sensor_restarts_total", "Sensor processes restarted after they exited.", ["sensor"],
            registry=registry)
        self.audit_sink_failures = Counter(
            "squall_audit_sink_failures_total", "Audit events a sink missed (it failed, or its queue was full), "
            "by sink type: file, syslog, stdout.", ["sink"], registry=registry)
        self.http_duration = Histogram(
            "squall_http_request_duration_seconds", "HTTP requests by route template, method and status.",
            ["route", "method", "status"], buckets=_HTTP_BUCKETS, registry=registry)
        self.executions = Gauge("squall_executions", "Executions now, by state: running or waiting.", ["state"],
                                registry=registry)
        self.queue_jobs = Gauge("squall_queue_jobs", "Jobs waiting on each queue (executor.kind: procrastinate).",
                                ["queue"], registry=registry)
        self.queue_oldest = Gauge(
            "squall_queue_oldest_job_age_seconds", "Age of the oldest request waiting on each queue.", ["queue"],
            registry=registry)
        self.outbox_pending = Gauge("squall_outbox_pending", "Replies stored and not yet delivered.",
                                    registry=registry)
        self.outbox_oldest = Gauge("squall_outbox_oldest_pending_age_seconds",
                                   "Age of the oldest reply not yet delivered (0: none).", registry=registry)
        self.inquiries_pending = Gauge("squall_inquiries_pending", "Inquiries waiting for an answer.",
                                       registry=registry)
        self.leader = Gauge("squall_leader", "1 if this process leads (fires timers, runs sensors).",
                            registry=registry)
        self.adapter_connected = Gauge("squall_adapter_connected", "1 if the chat adapter is connected.",
                                       ["adapter"], registry=registry)

    def configure(self, config: Any) -> None:
        """Config `metrics.enabled` and `metrics.statsd` (`ConfigError` naming a bad key)."""
        from engine.config import ConfigError

        self.enabled = config.metrics_enabled
        if self.statsd is not None:
            self.statsd.close()
            self.statsd = None
        statsd = config.section("metrics").get("statsd")
        if statsd is None or not self.enabled:
            return
        if not isinstance(statsd, dict) or set(statsd) - {"host", "port", "prefix"} or "host" not in statsd:
            raise ConfigError(f"{config.path}: 'metrics.statsd' must be a mapping with host (and port, default "
                              f"8125; prefix, put after st2. as StackStorm's metrics.prefix), such as "
                              f"{{host: 127.0.0.1, port: 8125}}, not {statsd!r}")
        port = statsd.get("port", 8125)
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError(f"{config.path}: 'metrics.statsd.port' must be a UDP port number, not {port!r}")
        # StackStorm's keys start `st2.`, then its `metrics.prefix` if set: `st2.prod.action.executions`.
        prefix = str(statsd.get("prefix") or "").strip(".")
        self.statsd = Statsd(str(statsd["host"]), port, f"st2.{prefix}" if prefix else "st2")

    # -- events ---------------------------------------------------------------------------------
    # The hot paths (`started`, `finished`, `count`) each find their series with one dict look-up and
    # note it with one `append`, inline: a chat command records five events, and a call more each, a
    # tuple more or a string made from the action ref cost more than the recording itself.
    def started(self, record: Mapping[str, Any]) -> None:
        if self.enabled:
            action = record["action"]
            key = (self.executions_started, action, source_of(record.get("context")))
            counts = self._counts
            counts.append(self._children.get(key) or self._execution_series(key))
            if len(counts) > _FOLD_AT:
                self._fold()
            if self.statsd is not None:
                self.statsd.send(("action.executions", 1, "c"), (f"action.{action}", 1, "c"))

    def finished(self, record: Mapping[str, Any]) -> None:
        """An `EXECUTION_FINISHED` listener. Only ends are counted: a paused workflow and an inquiry
        `pending` its answer are told to the listeners too, and end (and are counted) later."""
        status = record.get("status")
        if not self.enabled or status in _NOT_ENDED:
            return
        action = record["action"]
        key = (self.executions_finished, action, status, source_of(record.get("context")))
        counts = self._counts
        counts.append(self._children.get(key) or self._execution_series(key))
        if len(counts) > _FOLD_AT:
            self._fold()
        elapsed = record.get("elapsed_seconds")
        if elapsed is not None:
            self.execution_duration.observe(record.get("runner") or "", float(elapsed))
        if self.statsd is not None:
            milliseconds = round(float(elapsed or 0) * 1000, 3)
            self.statsd.send((f"action.{status}", 1, "c"), ("action.executions", milliseconds, "ms"),
                             (f"action.{action}", milliseconds, "ms"))

    def count(self, counter: Counter, *labels: str) -> None:
        """One more of `counter` with `labels` (a call site that needs nothing else)."""
        if self.enabled:
            counts = self._counts
            counts.append(self._children.get((counter, labels)) or self._child(counter, *labels))
            if len(counts) > _FOLD_AT:
                self._fold()
            if self.statsd is not None:
                self.statsd.send(*_st2_keys(counter, labels))

    def evaluated(self, trigger_type: str, rules: int) -> None:
        """`rules` rules' criteria were evaluated against an instance of `trigger_type`."""
        if self.enabled:
            amounts = self._amounts
            amounts.append((self._child(self.rules_evaluated, trigger_type), rules))
            if len(amounts) > _FOLD_AT:
                self._fold()
            if self.statsd is not None:
                self.statsd.send(("rule.processed", rules, "c"))

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """An HTTP request answered (the API's middleware)."""
        self._child(self.http_duration, route, method, str(status)).observe(seconds)
        if self.statsd is not None:
            service = "auth" if route.startswith("/auth/") else "stream" if route.startswith("/stream/") else "api"
            # As StackStorm's instrumentation middleware: a counter and a timer, the method, and the status
            # as a gauge it increments.
            self.statsd.send((f"{service}.requests", 1, "c"), (f"{service}.requests", seconds * 1000, "ms"),
                             (f"{service}.requests.method.{method}", 1, "c"),
                             (f"{service}.responses.status.{status}", "+1", "g"))

    def _fold(self) -> None:
        """Add the noted increments to their series, one `inc` per series. Those noted so far are taken
        off the deques; the ones of one each are counted alike in C (`popleft` called by `iter`,
        `collections.Counter`, which hashes a series by identity), no Python step per increment; any
        noted meanwhile wait for the next fold. (callgrind, chat at 100 in flight: with `_children`
        keyed without `id()`, about -15,000 instructions a command, 897,798 -> 882,096; with the series
        itself noted, not its metric and labels, and the notes inline, 747,600 -> 736,170 and 739,138.)"""
        counts, amounts = self._counts, self._amounts
        totals: collections.Counter[Any] = collections.Counter()
        with contextlib.suppress(IndexError):  # another thread folded some meanwhile: those are its to add
            totals.update(itertools.islice(iter(counts.popleft, None), len(counts)))
        with contextlib.suppress(IndexError):
            for _ in range(len(amounts)):
                series, amount = amounts.popleft()
                totals[series] += amount
        for series, amount in totals.items():
            series.inc(amount)

    def _child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, kept: prometheus-client takes a lock and builds a key on every
        `labels()` call, a few microseconds that a chat command pays seven times over. A counter's
        series is made at its first increment, not when its increments are added (a scrape, or past
        `_FOLD_AT`): prometheus-client stamps its `_created` then, which must say when it began counting."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _execution_series(self, key: tuple[Any, ...]) -> Any:
        """The series of `key`, (counter, action ref, *labels), made at its first use: the pack label is
        the ref's first part, cut once per series, not per execution."""
        counter, action, *labels = key
        series = self._children[key] = self._child(counter, action, action.partition(".")[0], *labels)
        return series

    # -- states, read at scrape time ------------------------------------------------------------
    def observe(self, store: Store, *, leader: bool, adapters: Mapping[str, bool], queues: bool) -> None:
        """Set the gauges from the database and this process (run on the database thread)."""
        now = utcnow()
        with store._read() as conn:
            counts = dict(conn.execute(_BY_STATUS).all())
            pending_replies, oldest_reply = conn.execute(_OUTBOX).one()
            inquiries = conn.execute(_INQUIRIES).scalar_one()
            waiting = conn.execute(_QUEUES).all() if queues else []
        self.executions.labels("running").set(sum(counts.get(s, 0) for s in _LIVE))
        self.executions.labels("waiting").set(sum(counts.get(s, 0) for s in _WAITING))
        self.outbox_pending.set(pending_replies)
        self.outbox_oldest.set(_age(now, oldest_reply))
        self.inquiries_pending.set(inquiries)
        self.queue_jobs.clear()
        self.queue_oldest.clear()
        for queue, jobs, oldest in waiting:
            self.queue_jobs.labels(queue).set(jobs)
            self.queue_oldest.labels(queue).set(_age(now, oldest))
        self.leader.set(1 if leader else 0)
        for name, connected in adapters.items():
            self.adapter_connected.labels(name).set(1 if connected else 0)

    def exposition(self) -> bytes:
        """The Prometheus text format of everything."""
        self._fold()
        return generate_latest(self.registry)


class _Durations(Collector):
    """A histogram by runner, as prometheus-client's `Histogram` with one label shows it (same samples,
    values, `_created` and order), whose `observe` only notes the observation: prometheus-client's takes a
    lock, checks the metric and walks the buckets on every call (1.1 us of `finished`'s 3.0). The notes are
    added to their series in the order they came (so `_sum` adds the same floats in the same order) at
    each collection, or past `_FOLD_AT`, under a lock, one `bisect` each. A series is stamped (`_created`)
    at its first observation, as `Histogram.labels` stamps its child. (callgrind, chat at 100 in flight
    with metrics on: about -7,000 to -14,000 instructions a command, 755,522 and 760,350 -> 748,155 and
    745,914; `finished` alone, 21,404 -> 15,320.)"""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = (*map(float, buckets), INF)
        self._les = [floatToGoString(bound) for bound in self._bounds]
        #: Per runner: when its series began (time.time()), its per-bucket counts and its sum.
        self._created: dict[str, float] = {}
        self._series: dict[str, tuple[list[float], list[float]]] = {}
        #: Observations not yet added, as (runner, seconds); a deque's append and popleft are atomic.
        self._noted: deque[tuple[str, float]] = deque()
        self._lock = threading.Lock()

    def observe(self, runner: str, seconds: float) -> None:
        if runner not in self._created:
            self._created.setdefault(runner, time.time())
        self._noted.append((runner, seconds))
        if len(self._noted) > _FOLD_AT:
            with self._lock:
                self._fold()

    def _fold(self) -> None:
        """Add the noted observations to their series (the lock held): as `Histogram.observe`, a NaN is
        summed and counted in no bucket."""
        noted, series, bounds, blank = self._noted, self._series, self._bounds, len(self._bounds)
        for _ in range(len(noted)):  # only this (locked) fold takes from the deque
            runner, seconds = noted.popleft()
            counts, total = series.get(runner) or series.setdefault(runner, ([0.0] * blank, [0.0]))
            total[0] += seconds
            if seconds == seconds:
                counts[bisect.bisect_left(bounds, seconds)] += 1.0

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=["runner"])]

    def collect(self) -> list[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=["runner"])
        created = prometheus_metrics._use_created  # PROMETHEUS_DISABLE_CREATED_SERIES, as Histogram reads it
        with self._lock:
            self._fold()
            for runner, (counts, total) in self._series.items():
                family.add_metric([runner], list(zip(self._les, itertools.accumulate(counts), strict=True)), total[0])
                if created:
                    family.add_sample(f"{self.name}_created", {"runner": runner}, self._created[runner])
        return [family]


#: How long a statsd host's looked-up address serves before it is looked up again (the host may move).
RESOLVE_SECONDS = 300.0


class Statsd:
    """Fire-and-forget UDP datagrams (`prefix.key:value|type`), one per event batch; a lost datagram
    costs a count, never a request. A host name is looked up on a thread of its own, at start and every
    `RESOLVE_SECONDS`, never on the caller's: `sendto` with a name looks it up on every datagram, and a
    slow or dead DNS held the event loop for the resolver's timeout each time. Until the name is known,
    samples are dropped; while a new lookup fails, the last address serves on."""

    def __init__(self, host: str, port: int, prefix: str) -> None:
        self.address = (host, port)
        self.prefix = prefix.rstrip(".")
        literal = _ip_literal(host)
        family = socket.AF_INET6 if literal is not None and ":" in literal else socket.AF_INET
        #: The socket and where it sends, swapped together by the lookup (a name may have IPv6 only).
        self._route: tuple[socket.socket, tuple[Any, ...] | None] = (
            _udp_socket(family), None if literal is None else (literal, port))
        self._looked_up = 0.0 if literal is None else float("inf")
        self._looking = False
        self._failing = False
        if literal is None:
            self._look_up_soon()

    def send(self, *samples: tuple[str, float | str, str]) -> None:
        """Samples of (key, value, type); a text value is sent as it is (`+1` moves a gauge by one)."""
        sock, target = self._route
        if time.monotonic() - self._looked_up > RESOLVE_SECONDS:
            self._look_up_soon()
        if target is None:
            return
        payload = "\n".join(f"{self.prefix}.{key}:{value if isinstance(value, str) else format(value, 'g')}|{kind}"
                             for key, value, kind in samples)
        with contextlib.suppress(OSError):  # nobody listening, or a full buffer: statsd is lossy by design
            sock.sendto(payload.encode(), target)

    def _look_up_soon(self) -> None:
        if self._looking:
            return
        self._looking = True
        self._looked_up = time.monotonic()  # tried now: the next try comes after RESOLVE_SECONDS
        threading.Thread(target=self._look_up, name="squall-statsd-lookup", daemon=True).start()

    def _look_up(self) -> None:
        try:
            family, _, _, _, target = socket.getaddrinfo(*self.address, type=socket.SOCK_DGRAM)[0]
        except OSError as exc:
            known = self._route[1] is not None
            if not known:
                self._looked_up = time.monotonic() - RESOLVE_SECONDS + 10  # not known yet: try again in 10 s
            if not self._failing:  # once until a lookup works again
                self._failing = True
                log.warning("statsd host %s could not be looked up (%s); %s", self.address[0], exc,
                            "the last address serves on" if known else "its samples are dropped until it is")
        else:
            self._failing = False
            old = self._route[0]
            sock = old if old.family == family else _udp_socket(family)
            self._route = (sock, target)
            if sock is not old:
                old.close()  # a send that took it just before fails as a lost datagram does
        finally:
            self._looking = False

    def close(self) -> None:
        self._route[0].close()


def _ip_literal(host: str) -> str | None:
    """`host` if it is an IP address (nothing to look up), else None."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def _udp_socket(family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    return sock


def _st2_keys(counter: Counter, labels: tuple[str, ...]) -> list[tuple[str, float, str]]:
    """StackStorm's statsd keys for a counter this module moves by one."""
    name = counter.describe()[0].name
    if name == "squall_rules_matched":
        return [("rule.matched", 1, "c"), (f"rule.{labels[0]}", 1, "c")]
    if name == "squall_trigger_instances":
        return [(f"trigger.{labels[0]}", 1, "c"), (f"trigger.{labels[0]}.processed", 1, "c")]
    return [(".".join((name.removeprefix("squall_"), *labels)), 1, "c")]


def _age(now: datetime, since: datetime | None) -> float:
    return max(0.0, (now - as_utc(since)).total_seconds()) if since is not None else 0.0


_BY_STATUS = (sa.select(executions.c.status, sa.func.count()).where(executions.c.status.in_([*_LIVE, *_WAITING]))
              .group_by(executions.c.status))
_OUTBOX = sa.select(sa.func.count(), sa.func.min(outbox.c.created_at)).where(OUTBOX_PENDING)
_INQUIRIES = sa.select(sa.func.count()).where(executions.c.status == "pending", executions.c.runner == "inquirer")
# The age of a queue's oldest job is from when it was queued (procrastinate's `deferred` event), not its
# execution's start: a workflow's steps are jobs queued all along its life, under its id.
_QUEUES = sa.text(
    "SELECT j.queue_name, count(*), min(e.at) FROM procrastinate_jobs j "
    "LEFT JOIN procrastinate_events e ON e.job_id = j.id AND e.type = 'deferred' "
    "WHERE j.status = 'todo' GROUP BY j.queue_name")

#: This process's metrics.
metrics = Metrics()
