"""A long wrong value is quoted cut short by every form that tells it back (`bot.forms.checked`,
`quoted_shortly`): chat's questions and platform forms (`bot/chat/forms.py`) and the web's inquiry answers
(`bot/web/inquiries.py`), as the web's run and re-run forms already did. The message still names the field
and says what is expected."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.app import Squall
from bot.forms import QUOTED_CHARS, checked, schema_fields
from bot.http import create_api
from engine.config import load_config
from tests.test_api import _home
from tests.test_chat import loopback_chat, settle
from tests.test_chat_forms import DM, _pack, _say_privately, slack  # noqa: F401 (the `slack` fixture)
from tests.test_web_auth import Web
from tests.test_web_inquiries import DEPLOY, _asked, _operator
from tests.workflow_helpers import workflow_pack

#: A wrong value of thousands of characters, as a paste gone wrong sends one.
LONG = "x" * 5000
#: What a message quoting such a value may be at most: a few hundred characters, not thousands.
SHORT_ENOUGH = 300


def _shortened(message: str, field: str) -> None:
    assert len(message) < SHORT_ENOUGH, (len(message), message[:400])
    assert f'parameter "{field}"' in message  # names the field
    assert "x" * (QUOTED_CHARS - 1) + "…" in message  # and the value, cut


def test_checked_cuts_the_value_and_keeps_what_is_expected() -> None:
    fields = schema_fields({"properties": {"count": {"type": "integer"}, "when": {"enum": ["now", "tonight"]}}},
                           'inquiry "i1"')
    errors = checked(fields, {"count": LONG, "when": LONG}).errors
    _shortened(errors["count"], "count")
    assert "whole number" in errors["count"]
    _shortened(errors["when"], "when")
    assert "['now', 'tonight']" in errors["when"]


# -- chat: the questions (loopback) and a platform form (Slack's modal) --------------------------------------

@pytest.fixture
async def loop(home: Path) -> AsyncIterator[tuple]:
    _pack(home)
    async with loopback_chat(home) as started:
        yield started


async def test_a_long_wrong_answer_to_a_chat_question_is_quoted_short(loop) -> None:
    squall, bot, loopback = loop
    await _say_privately(loopback, "run-form demo.deploy")
    await _say_privately(loopback, "web1")
    await settle(squall, bot)
    assert loopback.texts(DM)[-1].startswith("count?")
    await _say_privately(loopback, LONG)
    await settle(squall, bot)
    error, question = loopback.texts(DM)[-1].rsplit("\n", 1)
    _shortened(error, "count")
    assert "integer" in error and question.startswith("count?")  # what is expected, and asked again
    assert await squall.executions.list(limit=5) == []


async def test_a_long_wrong_value_in_a_slack_form_is_quoted_short(slack) -> None:  # noqa: F811
    from tests.test_chat_forms import _open_from_button
    squall, fake = slack
    view = await _open_from_button(fake, "!run-form demo.deploy", "demo.deploy")
    refused = await fake.submit_view(view, {"host": "web1", "count": LONG, "token": "t0ken-value"})
    assert refused["response_action"] == "errors"
    _shortened(refused["errors"]["count"], "count")
    assert "integer" in refused["errors"]["count"]
    assert await squall.executions.list(limit=5) == []


# -- the web's inquiry answer ---------------------------------------------------------------------------------

@pytest.fixture
async def web(home: Path) -> AsyncIterator[Web]:
    """test_web_inquiries' app, its body limit raised from the test config's 4 KiB to take the long value."""
    workflow_pack(home, {"deploy": ("orquesta", "", DEPLOY)})
    config = _home(home) / "config.yml"
    config.write_text(config.read_text().replace("max_body_bytes: 4096", "max_body_bytes: 65536"))
    squall = await Squall.start(load_config(config))
    web = Web(squall, create_api(squall))
    try:
        yield web
    finally:
        for client in web.clients:
            await client.aclose()
        await squall.triggers.settle()
        await squall.close()


async def test_a_long_wrong_inquiry_answer_is_quoted_short_beside_its_field(web: Web) -> None:
    _, inquiry_id = await _asked(web)
    client, csrf = await _operator(web, "olivia")
    bad = await client.post(f"/inquiries/{inquiry_id}", data={"csrf_token": csrf, "approved": "true",
                                                                "reason": "ok", "when": LONG})
    assert bad.status_code == 400
    found = re.search(r'<p id="a-when-error" class="field-error">(.*?)</p>', bad.text, re.S)
    assert found, bad.text[:2000]
    said = html.unescape(found.group(1))
    _shortened(said, "when")
    assert "is not one of ['now', 'tonight']" in said
    assert bad.text.count(LONG) <= 1  # at most in the field's own input, never in a message
    assert (await web.squall.inquiries.get(inquiry_id))["status"] == "pending"
