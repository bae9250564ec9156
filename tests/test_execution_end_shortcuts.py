"""The engine's per-command shortcuts between a request and its end's listeners: an id written from its
bytes, `elapsed_seconds` without `round`, a request ended as stored read from one clock reading, a request
with nothing to render resolved before its store call is queued, and `TriggerService.wanted` without a
generator. Each must give what the longer way gave."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from bot.app import Squall
from engine import executions
from engine.executions import _public, new_id
from engine.parameters import ParameterError
from engine.storage import iso
from engine.triggers import TriggerService
from tests.conftest import commit_groups


@pytest.mark.parametrize(("micros", "bits"), [(1_796_000_000_123_456, 0xABCDE12345), (0, 0), (1, 7),
                                             (2 ** 56 - 1, 2 ** 40 - 1)])
def test_an_id_is_its_number_in_24_hex_digits(monkeypatch: pytest.MonkeyPatch, micros: int, bits: int) -> None:
    """`new_id` writes the number's 12 bytes in hex: `%024x`'s digits, leading zeros kept."""
    monkeypatch.setattr(executions.time, "time_ns", lambda: micros * 1000 + 999)
    monkeypatch.setattr(executions.random, "getrandbits", lambda _bits: bits)
    assert new_id() == "%024x" % (micros << 40 | bits)


def test_elapsed_seconds_is_what_round_to_the_microsecond_gave() -> None:
    """`total_seconds()` is the microseconds over 10**6 correctly rounded: `round(..., 6)` returned it as it was."""
    start = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)
    rng = random.Random(7)
    spans = [0, 1, 999_999, 1_000_000, 1_234, -1, 86_400 * 10**6 * 365 * 280]
    spans += [rng.randrange(-10**15, 10**15) for _ in range(20_000)] + [rng.randrange(10**8) for _ in range(20_000)]
    for micros in spans:
        end = start + timedelta(microseconds=micros)
        record = {"id": "x", "action": "a.b", "runner": "noop", "status": "succeeded", "parameters": {},
                  "context": {}, "start_timestamp": start, "end_timestamp": end}
        elapsed = _public(record, iso(start), iso(end))["elapsed_seconds"]
        assert elapsed == round((end - start).total_seconds(), 6), micros
        assert repr(elapsed) == repr(round((end - start).total_seconds(), 6)), micros


async def test_a_noop_is_scheduled_running_and_ended_at_one_reading_of_the_clock(squall: Squall) -> None:
    """A request ended as it was stored (`_end_at_once`) reads the clock once: its log's `scheduled`, `running`
    and end, and its `end_timestamp`, say the same time, after the request's."""
    requested = await squall.executions.request("core.noop")
    done = await squall.executions.wait(requested["id"], timeout=30)
    stored = squall.store.get_execution(requested["id"])
    [asked, scheduled, running, ended] = done["log"]
    assert [entry["status"] for entry in done["log"]] == ["requested", "scheduled", "running", "succeeded"]
    assert scheduled["timestamp"] == running["timestamp"] == ended["timestamp"] == done["end_timestamp"]
    assert asked["timestamp"] == done["start_timestamp"] <= done["end_timestamp"]
    assert done["elapsed_seconds"] == (stored["end_timestamp"] - stored["start_timestamp"]).total_seconds() >= 0


async def test_a_refused_request_with_nothing_to_render_queues_nothing(squall: Squall) -> None:
    """Resolved before its store call is queued: refused, it leaves no group to flush, no claim to queue (an
    action the executor claims), no row and no slot held."""
    with commit_groups(squall) as groups:
        with pytest.raises(ParameterError, match="unknown parameter"):
            await squall.executions.request("core.noop", {"surprise": 1})
        with pytest.raises(ParameterError, match="unknown parameter"):
            await squall.executions.request("core.local", {"cmd": "true", "surprise": 1})
    assert groups == []
    assert await squall.executions.list() == []
    assert not squall.executor.running
    accepted = await squall.executions.request("core.noop", {})
    assert (await squall.executions.wait(accepted["id"], timeout=30))["status"] == "succeeded"


def test_a_trigger_is_wanted_when_a_processor_is_interested_or_instances_are_handed_off() -> None:
    def processor(refs: set[str]) -> SimpleNamespace:
        return SimpleNamespace(interested=lambda ref: ref in refs)

    def wanted(handing_off: bool, *processors: SimpleNamespace) -> bool:
        return TriggerService.wanted(SimpleNamespace(handing_off=handing_off, processors=list(processors)),  # type: ignore[arg-type]
                                     "core.st2.generic.actiontrigger")

    assert not wanted(False)
    assert not wanted(False, processor({"other"}), processor(set()))
    assert wanted(False, processor({"other"}), processor({"core.st2.generic.actiontrigger"}))
    assert wanted(True)
    assert wanted(True, processor(set()))
