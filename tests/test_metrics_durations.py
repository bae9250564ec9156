"""`squall_execution_duration_seconds` is kept by Squall (`_Durations`, observations noted and added at each
collection) and must scrape exactly as prometheus-client's `Histogram` fed the same observations did: the
same lines, values, `_created` stamps and order, every observation counted once however scrapes, folds
past `_FOLD_AT` and recording threads interleave."""

from __future__ import annotations

import sys
import threading
import time

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from engine import metrics as metrics_module
from engine.metrics import _DURATION_BUCKETS, Metrics

NAME = "squall_execution_duration_seconds"


class _Reference:
    """The histogram as it was: prometheus-client's, one child per runner, observed at once."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.histogram = Histogram(NAME, "From request to end, by runner.", ["runner"], buckets=_DURATION_BUCKETS,
                                   registry=self.registry)

    def finished(self, record: dict) -> None:
        if record.get("status") in ("paused", "pending") or record.get("elapsed_seconds") is None:
            return
        self.histogram.labels(record.get("runner") or "").observe(float(record["elapsed_seconds"]))

    def text(self) -> list[str]:
        return _lines(generate_latest(self.registry))


def _lines(exposition: bytes) -> list[str]:
    return [line for line in exposition.decode().splitlines() if NAME in line]


def _record(runner: str | None, elapsed: object, status: str = "succeeded") -> dict:
    return {"action": "core.noop", "status": status, "runner": runner, "elapsed_seconds": elapsed,
            "context": {"source": "chat"}}


def test_scrapes_show_what_prometheus_client_showed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bucket edges, a runner-less execution, a paused one, one without elapsed, a NaN, a negative, a text
    elapsed, a runner first seen after a scrape (its `_created` from its first observation, not the scrape),
    and scrapes in between that must count nothing twice."""
    clock = [1_700_000_000.125]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    metrics, reference = Metrics(), _Reference()
    assert _lines(metrics.exposition()) == reference.text()  # no series yet: the HELP and TYPE lines
    batches = [
        [_record("noop", 0.00002), _record("noop", 0.01), _record("local-shell-cmd", 0.0100001),
         _record(None, 3600), _record("noop", "2.5"), _record("noop", 0.3, status="paused")],
        [_record("noop", 3601.5), _record("python-script", 0.1), _record("noop", None), _record("noop", 0)],
        [_record("inquirer", float("nan")), _record("noop", -1.0), _record("python-script", 1e9)],
    ]
    for batch in batches:
        for record in batch:
            clock[0] += 0.5
            metrics.finished(record)
            reference.finished(record)
        assert _lines(metrics.exposition()) == reference.text()
        assert _lines(metrics.exposition()) == reference.text()  # a second scrape adds nothing


def test_a_fold_past_fold_at_counts_each_observation_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_module, "_FOLD_AT", 3)
    metrics, reference = Metrics(), _Reference()
    for i in range(20):
        record = _record(("noop", "local-shell-cmd")[i % 2], i * 0.37)
        metrics.finished(record)
        reference.finished(record)
        if i == 11:
            assert _lines(metrics.exposition()) == _drop_created(reference.text(), metrics)
    assert _lines(metrics.exposition()) == _drop_created(reference.text(), metrics)


def _drop_created(reference: list[str], metrics: Metrics) -> list[str]:
    """The reference's lines with this process's `_created` stamps (the two were made moments apart)."""
    ours = {line.rsplit(" ", 1)[0]: line for line in _lines(metrics.exposition()) if "_created{" in line}
    return [ours.get(line.rsplit(" ", 1)[0], line) if "_created{" in line else line for line in reference]


def test_two_threads_recording_lose_and_double_no_observation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two threads observe (folding past a small `_FOLD_AT`) while a third scrapes: every observation is
    counted once, in its bucket, and summed once (values exact in binary, so the sum is order-free)."""
    monkeypatch.setattr(metrics_module, "_FOLD_AT", 7)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    metrics, reference = Metrics(), _Reference()
    values = [0.25 * (i % 9) for i in range(5_000)]
    done = threading.Event()

    def record(runner: str) -> None:
        for value in values:
            metrics.finished(_record(runner, value))

    def scrape() -> None:
        while not done.is_set():
            metrics.exposition()

    threads = [threading.Thread(target=record, args=(runner,)) for runner in ("noop", "noop")]
    scraper = threading.Thread(target=scrape)
    try:
        scraper.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        done.set()
        scraper.join()
        sys.setswitchinterval(interval)
    for value in values * 2:
        reference.finished(_record("noop", value))
    assert _lines(metrics.exposition()) == _drop_created(reference.text(), metrics)
    assert metrics.registry.get_sample_value(f"{NAME}_count", {"runner": "noop"}) == 10_000
