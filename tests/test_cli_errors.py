"""Bad input to the CLI ends in one line saying what was wrong and exit 2, never in a traceback: integer
options out of range, JSON options nested deeper than the HTTP API takes them, an unknown status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_cli import like_a_process

#: More than SQLite's (and the API's) 64-bit integers hold: it overflowed in the database driver.
HUGE = "99999999999999999999999"


def _refused(done: object, *said: str) -> None:
    """`done` exited 2 with each of `said` on stderr and no traceback."""
    stderr = done.stderr  # type: ignore[attr-defined]
    assert done.returncode == 2, (done.returncode, stderr)  # type: ignore[attr-defined]
    assert "Traceback" not in stderr and ("Error:" in stderr or "error:" in stderr), stderr
    for text in said:
        assert text in stderr, stderr


@pytest.mark.parametrize("command", [("execution", "list"), ("trigger-instance", "list"),
                                     ("rule-enforcement", "list")])
def test_a_listing_limit_out_of_range_is_refused_with_the_range(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                                command: tuple[str, str]) -> None:
    """`-n 99999999999999999999999` was an OverflowError traceback from the database driver; 0 and
    negative numbers listed nothing or everything. Each listing's `-n` is a range with a sane top."""
    from bot.cli.common import MAX_LISTED

    squall = like_a_process(home, monkeypatch)
    for value, bound in ((HUGE, f"less than or equal to {MAX_LISTED}"), (str(MAX_LISTED + 1), str(MAX_LISTED)),
                         ("0", "greater than or equal to 1"), ("-5", "greater than or equal to 1")):
        _refused(squall(*command, "-n", value), "Invalid value for", "-n", bound)
    listed = squall(*command, "-n", str(MAX_LISTED), "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []


def _deep(levels: int) -> str:
    return '{"a":' + "[" * (levels - 1) + "]" * (levels - 1) + "}"


def test_a_trigger_payload_nested_deeper_than_the_api_takes_is_refused_in_one_line(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """2000 levels was a RecursionError traceback; the HTTP API refuses more than 64 with a 400, and the
    CLI now refuses the same payloads (65 levels, which `json.loads` reads, too)."""
    from bot.http.json_body import MAX_JSON_DEPTH

    squall = like_a_process(home, monkeypatch)
    for levels in (2000, MAX_JSON_DEPTH + 1):
        done = squall("trigger", "emit", "core.st2.webhook", "--payload", _deep(levels))
        _refused(done, "--payload", f"the limit is {MAX_JSON_DEPTH} levels")
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    fits = squall("trigger", "emit", "core.st2.webhook", "--payload", _deep(MAX_JSON_DEPTH))
    assert fits.returncode == 0, fits.stderr
    assert json.loads(fits.stdout)["trigger"] == "core.st2.webhook"


def test_the_clis_json_depth_is_the_http_apis() -> None:
    """The CLI keeps its own copy of the limit (`bot.http` brings FastAPI, a third of a second of every
    command that parses JSON): the two must not drift apart."""
    from bot.cli.common import MAX_JSON_DEPTH as CLI_DEPTH
    from bot.http.json_body import MAX_JSON_DEPTH

    assert CLI_DEPTH == MAX_JSON_DEPTH


def test_an_inquiry_response_nested_too_deep_is_refused_in_one_line(home: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    squall = like_a_process(home, monkeypatch)
    done = squall("inquiry", "respond", "0123456789abcdef01234567", "--response", _deep(2000))
    _refused(done, "--response", "levels")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_rule_test_instance_file_nested_too_deep_is_refused_in_one_line(home: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    squall = like_a_process(home, monkeypatch)
    rule = home / "rule.yaml"
    rule.write_text("name: r\npack: demo\ntrigger: {type: core.st2.webhook}\naction: {ref: core.noop}\n")
    instance = home / "instance.json"
    instance.write_text('{"trigger": "core.st2.webhook", "payload": ' + _deep(2000) + "}")
    done = squall("rule", "test", "--rule", str(rule), "--trigger-instance", str(instance))
    _refused(done, "instance.json", "levels")


def test_an_unknown_execution_status_is_refused_with_the_valid_ones(home: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`--status faild` listed nothing and exited 0, as if no execution had failed."""
    from engine.executions import STATUSES

    squall = like_a_process(home, monkeypatch)
    done = squall("execution", "list", "--status", "faild")
    _refused(done, "faild", "did you mean failed", *STATUSES)
    assert squall("execution", "list", "--status", "failed", "--json").returncode == 0
