"""Slack's Bolt app leaves Squall's own loggers alone: their levels hold while Slack events arrive, and a
token exported as the docs say raises no warning about a client given too."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from adapters.slack import create
from engine.config import load_config
from tests.fake_slack import FakeSlack
from tests.test_slack import _posted, _settings, _slack_chat, fake  # noqa: F401  (fake: the fixture)


async def test_slack_events_leave_squalls_own_logger_levels_alone(home: Path, fake: FakeSlack) -> None:  # noqa: F811
    own = logging.getLogger("squall")
    before = own.level
    own.setLevel(logging.INFO)
    try:
        async with _slack_chat(home, fake):
            await fake.push("events_api", fake.event(fake.message_event("greet dm", channel="DALICE01")))
            await _posted(fake, lambda m: m.get("text") == "hello dm", "the DM result")
            # Bolt copies its base logger's level (NOTSET) onto the logger its app is named after, on
            # every request: named "squall", Squall's INFO lines ("Squall is serving ...") went silent.
            assert own.level == logging.INFO and own.isEnabledFor(logging.INFO)
    finally:
        own.setLevel(before)


def test_an_exported_bot_token_raises_no_client_warning(home: Path, fake: FakeSlack,  # noqa: F811
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-from-the-environment")  # docs/slack.md exports it
    with caplog.at_level(logging.WARNING):
        create(_settings(fake), load_config(home / "config.yml"))
    assert not [r for r in caplog.records if "will be unused" in r.getMessage()], caplog.text
