"""Chat forms (issue 20): `!run-form` as a Slack modal, a Mattermost dialog, and questions on the
platforms that draw no forms; every submission through the command path a typed command takes."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from adapters.base import Capabilities
from adapters.loopback import LoopbackAdapter
from adapters.mattermost import create as create_mattermost
from adapters.slack import create as create_slack
from bot.app import Squall
from bot.chat import forms
from bot.chat.bot import ChatBot
from bot.chat.forms import EXPIRED
from engine.config import load_config
from engine.crypto import KeyRing
from engine.datastore import rotate_key
from engine.parameters import ParameterError, cast, check_parameter
from engine.storage import Store, chat_sessions
from tests.conftest import free_port, write
from tests.fake_mattermost import BOT_TOKEN as MM_BOT_TOKEN
from tests.fake_mattermost import FakeMattermost
from tests.fake_slack import APP_TOKEN, BOT_TOKEN, SIGNING_SECRET, FakeSlack
from tests.test_chat import loopback_chat, settle

SECRET = "hunter2-do-not-show"
COUNT_SPEC = {"type": "integer", "required": True, "minimum": 1}
HOST_SPEC = {"type": "string", "required": True, "description": "where to deploy"}


def _pack(home: Path) -> None:
    """An action with a field of each kind, an alias for it, a confirming one and a restricted one."""
    write(home / "config.yml", (home / "config.yml").read_text() + "auth:\n  admins: [root-admin]\n")
    pack = home / "packs" / "demo"
    write(pack / "pack.yaml", "ref: demo\nname: demo\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    write(pack / "actions" / "deploy.yaml", f"""
        name: deploy
        runner_type: local-shell-cmd
        parameters:
          host: {json.dumps(HOST_SPEC)}
          count: {json.dumps(COUNT_SPEC)}
          stage: {{type: string, enum: [dev, prod], default: dev}}
          verbose: {{type: boolean, default: false}}
          token: {{type: string, secret: true, required: true}}
          tags: {{type: array}}
          cmd: {{default: 'echo "deployed {{{{host}}}} x{{{{count}}}} to {{{{stage}}}}"', immutable: true}}
    """)
    write(pack / "aliases" / "deploy.yaml", """
        name: deploy
        action_ref: demo.deploy
        description: Deploy.
        formats: ["deploy {{host}}"]
        ack: {format: "deploying {{ execution.parameters.host }}"}
        result: {format: "{{ execution.result.stdout }}"}
    """)
    write(pack / "aliases" / "careful.yaml", """
        name: careful
        action_ref: demo.deploy
        description: Deploy, asking first.
        formats: ["carefully deploy {{host}}"]
        confirm: true
        ack: {enabled: false}
        result: {format: "{{ execution.result.stdout }}"}
    """)
    write(pack / "actions" / "reboot.yaml", """
        name: reboot
        runner_type: local-shell-cmd
        parameters:
          host: {type: string, required: true}
          cmd: {default: 'echo "rebooted {{host}}"', immutable: true}
    """)
    write(pack / "aliases" / "reboot.yaml", """
        name: reboot
        action_ref: demo.reboot
        description: Operators only.
        formats: ["reboot {{host}}"]
        ack: {enabled: false}
        result: {format: "{{ execution.result.stdout }}"}
        permissions:
          allow: {users: [olivia]}
    """)


def engine_message(name: str, text: str, spec: dict[str, Any]) -> str:
    """What the engine (`squall run`, the API) says about `text` for this parameter."""
    with pytest.raises(ParameterError) as raised:
        cast(name, text, spec)
    return str(raised.value)


def host_required() -> str:
    """What the engine says of a request without `host`."""
    with pytest.raises(ParameterError) as raised:
        check_parameter('action "demo.deploy"', "host", HOST_SPEC, None)
    return str(raised.value)


async def _nothing_shows_the_secret(squall: Squall, texts: list[str]) -> None:
    assert not any(SECRET in t for t in texts)
    with squall.store.engine.connect() as db:
        payloads = [str(row[0]) for row in db.execute(sa.text("SELECT payload FROM outbox"))]
        audit = [str(row[0]) for row in db.execute(sa.text("SELECT detail FROM audit"))]
    assert payloads and not any(SECRET in p for p in payloads)
    assert not any(SECRET in a for a in audit)


# -- questions in chat (loopback, IRC) ---------------------------------------------------------------

@pytest.fixture
async def loop(home: Path) -> AsyncIterator[tuple[Squall, ChatBot, LoopbackAdapter]]:
    _pack(home)
    async with loopback_chat(home) as started:
        yield started


async def _say_privately(loopback: LoopbackAdapter, text: str) -> None:
    """A direct message to Squall (where it asks for secrets: nobody else reads it)."""
    await loopback.say(text, channel=DM, direct=True)


DM = "dm-alice"


async def test_run_form_asks_the_required_fields_and_runs_with_the_answers(loop) -> None:
    squall, bot, loopback = loop
    await _say_privately(loopback, "run-form demo.deploy")
    await settle(squall, bot)
    assert "host (where to deploy)?" in loopback.texts(DM)[-1]
    await _say_privately(loopback, "web1")  # answers need no prefix: the exchange is a conversation
    await settle(squall, bot)
    assert loopback.texts(DM)[-1].startswith("count?")
    await _say_privately(loopback, "zero")
    await settle(squall, bot)
    assert loopback.texts(DM)[-1] == f"{engine_message('count', 'zero', COUNT_SPEC)}\ncount? (integer)"
    await _say_privately(loopback, "3")
    await settle(squall, bot)
    assert loopback.texts(DM)[-1].startswith("token?")
    await _say_privately(loopback, SECRET)
    await settle(squall, bot)
    assert "deploying web1" in [p.reply.text for p in loopback.posted]  # the ack (edited to the status since)
    assert "deployed web1 x3 to dev" in loopback.texts(DM)
    [execution] = await squall.executions.list(limit=5)
    assert execution["parameters"]["token"] == "********" and execution["context"]["chat"]["channel"] == DM
    await _nothing_shows_the_secret(squall, loopback.texts(DM))


async def test_a_secret_is_never_asked_for_in_a_channel_others_read(loop) -> None:
    squall, bot, loopback = loop
    await loopback.say("!run-form demo.deploy")
    await settle(squall, bot)
    said = loopback.texts("#ops")[-1]
    assert said.startswith("demo.deploy needs the secret token, which I will not ask for in a channel")
    assert "direct message" in said
    await loopback.say("web1")  # no exchange was started: chatter
    await settle(squall, bot)
    assert loopback.texts("#ops")[-1] == said and await squall.executions.list(limit=5) == []


async def test_a_form_of_a_confirming_alias_asks_first_and_masks_the_secret(loop) -> None:
    squall, bot, loopback = loop
    await _say_privately(loopback, "run-form careful")
    for answer in ("web1", "1", SECRET):
        await _say_privately(loopback, answer)
    await settle(squall, bot)
    assert loopback.texts(DM)[-1].startswith("About to run demo.deploy with host=web1, count=1, token=********.")
    assert await squall.executions.list(limit=5) == []
    await _say_privately(loopback, "yes")
    await settle(squall, bot)
    assert "deployed web1 x1 to dev" in loopback.texts(DM)
    await _nothing_shows_the_secret(squall, loopback.texts(DM))


async def test_cancel_stops_the_questions(loop) -> None:
    squall, bot, loopback = loop
    await _say_privately(loopback, "run-form deploy")
    await _say_privately(loopback, "web1")
    await _say_privately(loopback, "cancel")
    await settle(squall, bot)
    assert loopback.texts(DM)[-1] == "OK, not running demo.deploy."
    await _say_privately(loopback, "3")  # no longer an answer (in a DM: an unknown command)
    await settle(squall, bot)
    assert loopback.texts(DM)[-1].startswith("I don't know `3`")
    assert await squall.executions.list(limit=5) == []


async def test_a_typed_command_missing_a_parameter_offers_the_questions(loop) -> None:
    squall, bot, loopback = loop
    await _say_privately(loopback, "deploy web2")
    await settle(squall, bot)
    offer = loopback.texts(DM)[-1]
    assert offer.startswith("I can't run that: ") and "count" in offer and offer.endswith("count? (integer)")
    await _say_privately(loopback, "2")
    await _say_privately(loopback, SECRET)
    await settle(squall, bot)
    assert "deployed web2 x2 to dev" in loopback.texts(DM)


async def test_a_form_is_refused_to_who_may_not_run_its_alias(loop) -> None:
    squall, bot, loopback = loop
    await loopback.say("!run-form demo.reboot", user="mallory")
    await settle(squall, bot)
    assert loopback.texts()[-1].startswith("Sorry mallory, you may not run demo.reboot")
    await loopback.say("!run-form reboot", user="olivia")
    await loopback.say("db1", user="olivia")
    await settle(squall, bot)
    assert "rebooted db1" in loopback.texts()


async def test_questions_go_to_a_private_channel_where_the_adapter_has_one(home: Path) -> None:
    _pack(home)

    class Private(LoopbackAdapter):
        def private_channel(self, user: str) -> str:
            return f"@{user}"

    loopback = Private(capabilities=Capabilities(max_length=400))
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[loopback])
    await squall.chat.start()
    try:
        await loopback.say("!run-form reboot", user="olivia", channel="#ops")
        await settle(squall, squall.chat)
        assert loopback.texts("#ops")[-1] == "I'll ask for the parameters of demo.reboot in a private message."
        assert loopback.texts("@olivia")[-1].endswith("host? (string)")
        await loopback.say("db2", user="olivia", channel="@olivia", direct=True)
        await settle(squall, squall.chat)
        assert "rebooted db2" in loopback.texts("#ops")  # the result goes where the form came from
    finally:
        await squall.chat.stop()
        await squall.close()


def _sessions(squall: Squall) -> list[tuple[str, str]]:
    with squall.store.engine.connect() as db:
        return [(key, state) for key, state in db.execute(sa.select(chat_sessions.c.key, chat_sessions.c.state))]


async def test_questions_go_on_after_a_restart_from_their_stored_and_encrypted_state(home: Path) -> None:
    _pack(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        await _say_privately(loopback, "deploy web2")  # host given by the typed command: count and token asked
        await _say_privately(loopback, "2")
        await settle(squall, bot)
        assert loopback.texts(DM)[-1].startswith("token?")
        [(key, state)] = _sessions(squall)
        assert key.startswith("ask:")
        # answers may be secrets; quoted, as a random token can hold web2 but never a quote
        assert '"web2"' not in state and '"web2"' in squall.keys.decrypt(state)
    async with loopback_chat(home) as (squall, bot, loopback):
        await _say_privately(loopback, SECRET)
        await settle(squall, bot)
        assert "deployed web2 x2 to dev" in loopback.texts(DM)
        assert _sessions(squall) == []  # the exchange is over
        await _nothing_shows_the_secret(squall, loopback.texts(DM))


async def test_questions_go_on_after_a_key_rotation_with_the_service_stopped(home: Path) -> None:
    """`squall key rotate` retires the old key once nothing else runs: it re-encrypts the stored
    sessions too, or the restart drops every open form ("cannot be read")."""
    _pack(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        await _say_privately(loopback, "deploy web2")
        await _say_privately(loopback, "2")
        await settle(squall, bot)
        assert loopback.texts(DM)[-1].startswith("token?")
    config = load_config(home / "config.yml")
    store = Store.open(config.database_url)
    try:
        report = rotate_key(store, KeyRing(config.encryption_key_path), others=list)
    finally:
        store.close()
    assert (report.reencrypted, report.retired, report.unreadable) == (1, 1, [])
    async with loopback_chat(home) as (squall, bot, loopback):
        await _say_privately(loopback, SECRET)
        await settle(squall, bot)
        assert "deployed web2 x2 to dev" in loopback.texts(DM)
        assert _sessions(squall) == []


async def test_a_session_sealed_under_a_key_that_is_gone_is_dropped_and_the_log_says_why(home: Path,
                                                                                          caplog) -> None:
    _pack(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        await _say_privately(loopback, "deploy web2")
        await settle(squall, bot)
        [(key, _state)] = _sessions(squall)
        assert key.startswith("ask:")
    ring = KeyRing(load_config(home / "config.yml").encryption_key_path)
    ring.add_key()
    ring.retire_old_keys()  # the key that sealed it, gone without a re-encryption
    with caplog.at_level(logging.WARNING, logger="bot.chat.sessions"):
        async with loopback_chat(home) as (squall, bot, loopback):
            assert _sessions(squall) == []
    [record] = [r for r in caplog.records if r.name == "bot.chat.sessions"]
    assert record.levelno == logging.WARNING
    said = record.getMessage()
    assert said.startswith(f"the question-by-question form of alice in {DM} on loopback, stored before the "
                           "restart, was dropped: its stored state cannot be read (ciphertext was sealed under key")
    assert "no longer holds" in said and said.endswith("its person must start it again")


async def test_a_form_past_its_time_is_not_taken_up_after_a_restart(home: Path) -> None:
    _pack(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!run-form demo.deploy")
        await loopback.say("web1")
        await settle(squall, bot)
        with squall.store.engine.begin() as db:
            db.execute(chat_sessions.update().values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("3")  # no longer an answer: chatter
        await settle(squall, bot)
        assert loopback.texts() == [] and await squall.executions.list(limit=5) == []
        assert _sessions(squall) == []  # deleted when the open ones were loaded


async def test_a_form_whose_alias_is_gone_after_a_restart_is_dropped(home: Path, caplog) -> None:
    _pack(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!run-form reboot", user="olivia")
        await settle(squall, bot)
        assert loopback.texts()[-1].endswith("host? (string)")
    (home / "packs" / "demo" / "aliases" / "reboot.yaml").unlink()
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("db1", user="olivia")
        await settle(squall, bot)
        assert loopback.texts() == [] and _sessions(squall) == []
    assert "its alias demo.reboot is no longer loaded" in caplog.text


# -- Slack: a modal ---------------------------------------------------------------------------------

@pytest.fixture
async def slack(home: Path) -> AsyncIterator[tuple[Squall, FakeSlack]]:
    _pack(home)
    fake = await FakeSlack().start()
    adapter = create_slack({"enabled": True, "bot_token": BOT_TOKEN, "app_token": APP_TOKEN,
                            "signing_secret": SIGNING_SECRET, "base_url": fake.base_url}, None)
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[adapter])
    await squall.chat.start()
    try:
        yield squall, fake
    finally:
        await squall.chat.stop()
        await squall.close()
        await fake.close()


async def _slack_posted(fake: FakeSlack, predicate: Any, what: str) -> dict[str, Any]:
    return await fake.wait_for(lambda: next((m for m in fake.messages if predicate(m)), None), what=what)


async def _open_from_button(fake: FakeSlack, command: str, ref: str, user: str = "UALICE01") -> dict[str, Any]:
    opened = len(fake.views)
    await fake.push("events_api", fake.event(fake.message_event(command, user=user)))
    offer = await _slack_posted(fake, lambda m: f"{ref} in a form" in m.get("text", ""), "the form's button")
    await fake.push("interactive", fake.click(offer, f"run-form {ref}", user=user))
    return await fake.wait_for(lambda: fake.views[opened] if len(fake.views) > opened else None, what="views.open")


async def test_slack_modal_end_to_end(slack) -> None:
    squall, fake = slack
    view = await _open_from_button(fake, "!run-form demo.deploy", "demo.deploy")
    assert view["callback_id"] == "squall_form" and view["trigger_id"].startswith("trig.click.")
    elements = {b["block_id"]: b["element"] for b in view["blocks"]}
    assert [b["block_id"] for b in view["blocks"]][:3] == ["host", "count", "token"]  # required first
    assert {k: e["type"] for k, e in elements.items()} == {
        "host": "plain_text_input", "count": "number_input", "token": "plain_text_input",
        "stage": "static_select", "verbose": "checkboxes", "tags": "plain_text_input"}
    assert elements["stage"]["initial_option"]["value"] == "dev" and elements["tags"]["multiline"]
    assert not elements["count"]["is_decimal_allowed"] and "initial_value" not in elements["token"]

    refused = await fake.submit_view(view, {"count": "0", "token": SECRET, "tags": "[oops"})
    with pytest.raises(ParameterError) as minimum:
        check_parameter('action "demo.deploy"', "count", COUNT_SPEC, 0)
    assert refused["response_action"] == "errors"
    assert refused["errors"]["count"] == str(minimum.value)
    assert refused["errors"]["host"] == host_required()
    assert refused["errors"]["tags"].startswith('parameter "tags" is not valid JSON')
    assert await squall.executions.list(limit=5) == []

    accepted = await fake.submit_view(view, {"host": "web1", "count": "2", "stage": "prod", "verbose": True,
                                             "token": SECRET, "tags": '["a"]'})
    assert accepted == {}
    result = await _slack_posted(fake, lambda m: m.get("text") == "deployed web1 x2 to prod", "the result")
    assert result["channel"] == "COPS0001"
    [execution] = await squall.executions.list(limit=5)
    assert execution["parameters"]["verbose"] is True and execution["parameters"]["tags"] == ["a"]
    assert execution["context"]["user"] == "alice"
    again = await fake.submit_view(view, {"host": "web1", "count": "2", "token": SECRET})
    assert again["errors"] == {"host": EXPIRED}  # sent once: a second submission runs nothing
    await _nothing_shows_the_secret(squall, [json.dumps(m) for m in fake.messages] + [json.dumps(fake.views)])


async def test_a_slack_form_whose_command_is_slow_is_answered_in_time_and_still_runs(slack, monkeypatch) -> None:
    """Slack drops a view_submission not answered within 3 s: a command slower than ANSWER_WITHIN to
    store (a database lock held elsewhere, say) answers the form first and goes on running."""
    squall, fake = slack
    dispatcher = squall.chat.dispatcher
    monkeypatch.setattr(forms, "ANSWER_WITHIN", 0.2)
    released = asyncio.Event()
    run_matched = dispatcher.run_matched

    async def slow(*args: Any, **kwargs: Any) -> None:
        await released.wait()
        await run_matched(*args, **kwargs)

    monkeypatch.setattr(dispatcher, "run_matched", slow)
    view = await _open_from_button(fake, "!run-form demo.deploy", "demo.deploy")
    accepted = await fake.submit_view(view, {"host": "web7", "count": "1", "token": SECRET})
    assert accepted == {}  # answered while the command still waits
    assert not released.is_set() and await squall.executions.list(limit=5) == []
    released.set()
    await _slack_posted(fake, lambda m: m.get("text") == "deployed web7 x1 to dev", "the result")
    [execution] = await squall.executions.list(limit=5)
    assert execution["parameters"]["host"] == "web7" and execution["context"]["user"] == "alice"


async def test_a_form_whose_command_fails_says_so_in_its_channel(slack, monkeypatch) -> None:
    squall, fake = slack
    dispatcher = squall.chat.dispatcher

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the command path broke")

    monkeypatch.setattr(dispatcher, "run_matched", broken)
    view = await _open_from_button(fake, "!run-form demo.deploy", "demo.deploy")
    assert await fake.submit_view(view, {"host": "web8", "count": "1", "token": SECRET}) == {}
    said = await _slack_posted(fake, lambda m: "something went wrong running that" in m.get("text", ""), "the error")
    assert said["text"].endswith("the command path broke") and said["channel"] == "COPS0001"
    assert await squall.executions.list(limit=5) == []


async def test_a_form_whose_command_the_database_refuses_never_quotes_its_statement(slack, monkeypatch) -> None:
    """SQLAlchemy's text quotes the statement and its values (the form's secret among them): the form's
    error said it whole, where a typed command's says the error's kind alone."""
    import sqlalchemy as sa

    squall, fake = slack

    async def refused(*args: Any, **kwargs: Any) -> None:
        raise sa.exc.IntegrityError("INSERT INTO executions (parameters) VALUES (?)", [SECRET],
                                    Exception("UNIQUE constraint failed: executions.id"))

    monkeypatch.setattr(squall.chat.dispatcher, "run_matched", refused)
    view = await _open_from_button(fake, "!run-form demo.deploy", "demo.deploy")
    assert await fake.submit_view(view, {"host": "web8", "count": "1", "token": SECRET}) == {}
    said = await _slack_posted(fake, lambda m: "something went wrong running that" in m.get("text", ""), "the error")
    assert "the database refused it" in said["text"] and SECRET not in said["text"] and "INSERT" not in said["text"]


async def test_slack_modal_opened_before_a_restart_can_still_be_sent(home: Path) -> None:
    _pack(home)
    fake = await FakeSlack().start()
    config = {"enabled": True, "bot_token": BOT_TOKEN, "app_token": APP_TOKEN, "signing_secret": SIGNING_SECRET,
              "base_url": fake.base_url}
    try:
        squall = await Squall.start(load_config(home / "config.yml"), adapters=[create_slack(config, None)])
        await squall.chat.start()
        view = await _open_from_button(fake, "!run-form demo.deploy", "demo.deploy")
        await squall.chat.stop()
        await squall.close()

        squall = await Squall.start(load_config(home / "config.yml"), adapters=[create_slack(config, None)])
        await squall.chat.start()
        try:
            accepted = await fake.submit_view(view, {"host": "web3", "count": "1", "token": SECRET})
            assert accepted == {}
            result = await _slack_posted(fake, lambda m: m.get("text") == "deployed web3 x1 to dev", "the result")
            assert result["channel"] == "COPS0001"  # where the form came from, before the restart
            again = await fake.submit_view(view, {"host": "web3", "count": "1", "token": SECRET})
            assert again["errors"] == {"host": EXPIRED}
        finally:
            await squall.chat.stop()
            await squall.close()
    finally:
        await fake.close()


async def test_slack_missing_parameter_offers_the_form(slack) -> None:
    _, fake = slack
    await fake.push("events_api", fake.event(fake.message_event("!deploy web3")))
    offer = await _slack_posted(fake, lambda m: "in a form" in m.get("text", ""), "the offer")
    assert offer["text"].startswith('I can\'t run that: parameter "count" is required')
    await fake.push("interactive", fake.click(offer, "run-form deploy web3"))  # the button carries the command
    view = await fake.wait_for(lambda: fake.views[-1] if fake.views else None, what="views.open")
    assert view["blocks"][0]["block_id"] == "host"
    assert view["blocks"][0]["element"]["initial_value"] == "web3"  # what was typed is not lost
    await fake.push("slash_commands", fake.slash("deploy web4"))  # a trigger at hand: the modal at once
    view = await fake.wait_for(lambda: fake.views[1] if len(fake.views) > 1 else None, what="views.open")
    assert view["blocks"][0]["element"]["initial_value"] == "web4"  # what was typed is filled in


async def test_slack_slash_command_alone_offers_what_the_person_may_run(slack) -> None:
    _, fake = slack
    await fake.push("slash_commands", fake.slash("", user="UBOB0001"))
    pick = await _slack_posted(fake, lambda m: "Which command?" in m.get("text", ""), "the pick")
    blocks = json.loads(pick["blocks"]) if isinstance(pick.get("blocks"), str) else pick["blocks"]
    offered = [e["value"] for b in blocks if b.get("type") == "actions" for e in b["elements"]]
    assert "run-form demo.deploy" in offered and "run-form demo.reboot" not in offered  # bob may not reboot
    await fake.push("interactive", fake.click(pick, "run-form demo.deploy", user="UBOB0001"))
    view = await fake.wait_for(lambda: fake.views[-1] if fake.views else None, what="views.open")
    assert view["blocks"][0]["block_id"] == "host"


async def test_slack_app_home_lists_the_person_s_commands_and_opens_their_forms(slack) -> None:
    squall, fake = slack
    squall.chat.dispatcher.settings = replace(squall.chat.dispatcher.settings, favourites=("demo.deploy",))
    await fake.push("events_api", fake.event(fake.home_opened("UBOB0001")))
    home = await fake.wait_for(lambda: fake.homes.get("UBOB0001"), what="views.publish")
    offered = [e["value"] for b in home["blocks"] if b.get("type") == "actions" for e in b["elements"]]
    assert offered[0] == "run-form demo.deploy" and "run-form demo.reboot" not in offered  # favourite first
    await fake.push("events_api", fake.event(fake.home_opened("UOLIVIA1")))
    olivia = await fake.wait_for(lambda: fake.homes.get("UOLIVIA1"), what="olivia's home")
    assert "run-form demo.reboot" in [e["value"] for b in olivia["blocks"] if b.get("type") == "actions"
                                      for e in b["elements"]]

    await fake.push("interactive", fake.click_home("run-form demo.deploy", user="UBOB0001"))
    view = await fake.wait_for(lambda: fake.views[-1] if fake.views else None, what="views.open")
    assert await fake.submit_view(view, {"host": "web9", "count": "1", "token": SECRET}, user="UBOB0001") == {}
    result = await _slack_posted(fake, lambda m: m.get("text") == "deployed web9 x1 to dev", "the result")
    assert result["channel"] == "UBOB0001"  # the DM with the app, where the Home tab's form came from


async def test_slack_message_shortcut_opens_the_form_of_the_message_s_command(slack) -> None:
    _, fake = slack
    event = fake.message_event("!deploy web5 stage=prod")
    await fake.push("interactive", fake.message_shortcut(event, "run-form"))
    view = await fake.wait_for(lambda: fake.views[-1] if fake.views else None, what="views.open")
    assert view["trigger_id"].startswith("trig.shortcut.")
    elements = {b["block_id"]: b["element"] for b in view["blocks"]}
    assert elements["host"]["initial_value"] == "web5" and elements["stage"]["initial_option"]["value"] == "prod"
    assert await fake.submit_view(view, {"host": "web5", "count": "1", "stage": "prod", "token": SECRET}) == {}
    result = await _slack_posted(fake, lambda m: m.get("text") == "deployed web5 x1 to prod", "the result")
    assert result["thread_ts"] == event["ts"]  # in the thread of the message the shortcut was used on


async def test_slack_form_runs_only_for_who_may_run_it(slack) -> None:
    squall, fake = slack
    view = await _open_from_button(fake, "!run-form reboot", "demo.reboot", user="UOLIVIA1")
    forged = await fake.submit_view(view, {"host": "db1"}, user="UBOB0001")  # a form is its opener's
    assert forged["errors"] == {"host": "This form was opened for olivia; open your own."}
    # Permission taken away while the form is open: the submission meets the typed command's check.
    view = await _open_from_button(fake, "!run-form deploy", "demo.deploy")
    squall.chat.dispatcher.auth.rules["demo.deploy"] = {"deny": {"users": ["alice"]}}
    assert await fake.submit_view(view, {"host": "web1", "count": "1", "token": SECRET}) == {}
    await _slack_posted(fake, lambda m: m.get("text", "").startswith("Sorry alice, you may not run that"), "refusal")
    assert await squall.executions.list(limit=5) == []
    with squall.store.engine.connect() as db:
        denied = db.execute(sa.text("SELECT actor, target FROM audit WHERE event = 'chat.denied'")).all()
    assert [tuple(row) for row in denied] == [("alice", "demo.deploy")]
    await fake.push("events_api", fake.event(fake.message_event("!run-form reboot", user="UBOB0001")))
    await _slack_posted(fake, lambda m: m.get("text", "").startswith("Sorry bob, you may not run demo.reboot"),
                        "refusal of the form")
    assert len(fake.views) == 2


# -- Mattermost: an interactive dialog ---------------------------------------------------------------

@pytest.fixture
async def mattermost(home: Path) -> AsyncIterator[tuple[Squall, FakeMattermost, str]]:
    from bot.http import ApiServer

    _pack(home)
    fake = FakeMattermost()
    await fake.start()
    port = free_port()
    adapter = create_mattermost({"enabled": True, "url": fake.url, "token": MM_BOT_TOKEN, "team": "ops",
                                 "slash_token": "slash-token",
                                 "actions_url": f"http://127.0.0.1:{port}/mattermost/actions"}, None)
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[adapter])
    await squall.chat.start()
    server = ApiServer(squall, host="127.0.0.1", port=port)
    await server.start()
    try:
        yield squall, fake, f"http://127.0.0.1:{port}/mattermost/command"
    finally:
        await server.stop()
        await squall.chat.stop()
        await squall.close()
        await fake.stop()


def _said(fake: FakeMattermost) -> list[str]:
    """Everything the bot said: its posts and its slash-command answers."""
    return ([p["message"] for p in fake.bot_posts()]
            + [str(r["payload"].get("text", "")) for r in fake.responses])


async def test_mattermost_dialog_end_to_end(mattermost) -> None:
    squall, fake, slash_url = mattermost
    status, _ = await fake.slash(slash_url, "run-form demo.deploy")  # the slash command's trigger opens it
    assert status == 200
    [opened] = await fake.wait_for(lambda: fake.dialogs)
    assert opened["user_id"] == fake.alice["id"] and opened["url"].endswith("/mattermost/actions")
    elements = {e["name"]: e for e in opened["dialog"]["elements"]}
    assert [(e["type"], e.get("subtype")) for e in elements.values()] == [
        ("text", None), ("text", "number"), ("text", "password"), ("select", None), ("bool", None),
        ("textarea", None)]
    assert elements["stage"]["default"] == "dev" and "default" not in elements["token"]

    status, answer = await fake.submit_dialog(opened, {"count": "x", "token": SECRET})
    assert status == 200
    assert answer["errors"] == {"count": engine_message("count", "x", COUNT_SPEC),
                                "host": host_required()}
    status, answer = await fake.submit_dialog(opened, {"host": "web1", "count": "2", "stage": "prod",
                                                       "token": SECRET}, user=fake.bob)
    assert answer == {"error": "This form was opened for alice; open your own."}
    status, answer = await fake.submit_dialog(opened, {"host": "web1", "count": "2", "stage": "prod",
                                                       "verbose": True, "token": SECRET})
    assert (status, answer) == (200, {})
    await fake.wait_for(lambda: any("deployed web1 x2 to prod" in t for t in _said(fake)))
    [execution] = await squall.executions.list(limit=5)
    assert execution["parameters"]["verbose"] is True and execution["context"]["chat"]["channel"] == \
        fake.town_square["id"]
    await _nothing_shows_the_secret(squall, [*_said(fake), json.dumps(fake.dialogs)])


async def test_mattermost_missing_parameter_offers_the_dialog(mattermost) -> None:
    _, fake, _ = mattermost
    await fake.say(fake.alice, fake.town_square, "@squallbot deploy web3")
    [offer] = await fake.wait_for(lambda: [p for p in fake.bot_posts(fake.town_square["id"])
                                           if (p.get("props") or {}).get("attachments")])
    assert offer["message"].startswith('I can\'t run that: parameter "count" is required')
    status, _ = await fake.click(offer, 0)
    assert status == 200
    [opened] = await fake.wait_for(lambda: fake.dialogs)
    assert opened["dialog"]["elements"][0]["name"] == "host"
    assert opened["dialog"]["elements"][0]["default"] == "web3"  # what was typed fills the dialog in


# -- a pack reload while a form is open ---------------------------------------------------------------

def _change_reboot(home: Path, change: str) -> None:
    """Change `demo.reboot` (olivia's alias) on disk; a pack reload then loads it."""
    alias = home / "packs" / "demo" / "aliases" / "reboot.yaml"
    if change == "revoke":
        alias.write_text(alias.read_text().replace("users: [olivia]", "users: [bob]"))
    elif change == "disable":
        alias.write_text(alias.read_text() + "enabled: false\n")
    elif change == "delete":
        alias.unlink()
    elif change == "describe":  # a reload that changes nothing the form depends on
        alias.write_text(alias.read_text().replace("Operators only.", "Operators only, please."))


REBOOT_REFUSED = {"revoke": "demo.reboot is allowed only for users bob",
                  "disable": "the alias demo.reboot is disabled", "delete": "the alias demo.reboot is no longer loaded"}


@pytest.mark.parametrize("change", ["revoke", "disable", "delete", "describe"])
async def test_a_question_answered_after_a_pack_reload_runs_only_what_may_run_now(home: Path, change: str) -> None:
    """The exchange holds the alias's ref, never its copy: each answer looks it up again, so a reload
    that takes the person's permission, disables or removes it ends the exchange with the reason
    (audited as a typed command's refusal) and runs nothing."""
    _pack(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!run-form reboot", user="olivia")
        await settle(squall, bot)
        assert loopback.texts()[-1].endswith("host? (string)")
        _change_reboot(home, change)
        await squall.reload_packs()
        await loopback.say("db1", user="olivia")
        await settle(squall, bot)
        if change == "describe":
            assert "rebooted db1" in loopback.texts()
            return
        assert await squall.executions.list(limit=5) == []
        assert loopback.texts()[-1] == (f"Sorry olivia, you may not run that: {REBOOT_REFUSED[change]}"
                                        + (" (enabled: false)" if change == "disable" else "")
                                        + (" (a pack reload removed it)" if change == "delete" else "")
                                        + ". The form is closed; nothing was run.")
        [denied] = await squall.db(squall.store.audit_list, 10, "chat.denied")
        assert denied["actor"] == "olivia" and denied["target"] == "demo.reboot"
        assert _sessions(squall) == []
        await loopback.say("db2", user="olivia")  # the exchange is over: chatter
        await settle(squall, bot)
        assert await squall.executions.list(limit=5) == []


async def test_a_question_whose_alias_was_disabled_over_a_restart_is_dropped(home: Path, caplog) -> None:
    _pack(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!run-form reboot", user="olivia")
        await settle(squall, bot)
    _change_reboot(home, "disable")
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("db1", user="olivia")
        await settle(squall, bot)
        assert loopback.texts() == [] and _sessions(squall) == []
        assert await squall.executions.list(limit=5) == []
    assert "its alias demo.reboot is disabled" in caplog.text


@pytest.mark.parametrize("change", ["revoke", "disable", "delete"])
async def test_a_slack_form_sent_after_a_pack_reload_runs_only_what_may_run_now(slack, home: Path,
                                                                                change: str) -> None:
    squall, fake = slack
    view = await _open_from_button(fake, "!run-form reboot", "demo.reboot", user="UOLIVIA1")
    _change_reboot(home, change)
    await squall.reload_packs()
    answer = await fake.submit_view(view, {"host": "db1"}, user="UOLIVIA1")
    if change == "revoke":  # the form was fine: the refusal is said in its channel, as a typed command's
        assert answer == {}
        await _slack_posted(fake, lambda m: m.get("text", "").startswith(
            f"Sorry olivia, you may not run that: {REBOOT_REFUSED[change]}"), "refusal")
    else:  # nothing left to run: the form says why, and is closed
        assert answer["errors"]["host"].startswith(f"Sorry olivia, you may not run that: {REBOOT_REFUSED[change]}")
        assert (await fake.submit_view(view, {"host": "db1"}, user="UOLIVIA1"))["errors"] == {"host": EXPIRED}
    assert await squall.executions.list(limit=5) == []  # a sent form is answered once its command is stored


async def test_a_form_asks_for_the_runner_parameters_its_alias_formats_name(home: Path) -> None:
    """`run {{cmd}}` (the shipped `squall.run`, an alias of core.local) sets the runner's `cmd` from
    its format, so a form for it must ask for `cmd`: it left `cmd` out as a runner parameter, ran
    at once and failed with "cmd is required"."""
    _pack(home)
    write(home / "packs" / "demo" / "aliases" / "shell.yaml", """
        name: shell
        action_ref: core.local
        description: A shell command.
        formats: ["shell {{cmd}}"]
        ack: {enabled: false}
        result: {format: "{{ execution.result.stdout }}"}
    """)
    async with loopback_chat(home) as (squall, bot, loopback):
        await _say_privately(loopback, "run-form demo.shell")
        await settle(squall, bot)
        assert loopback.texts(DM)[-1].startswith("Running demo.shell: 1 question(s)")
        assert "cmd" in loopback.texts(DM)[-1]
        await _say_privately(loopback, "echo formed")
        await settle(squall, bot)
        assert "formed" in loopback.texts(DM)
        [execution] = await squall.executions.list(action="core.local")
        assert execution["parameters"]["cmd"] == "echo formed"


# -- commands while a question waits ---------------------------------------------------------------------

async def test_a_command_while_a_question_waits_runs_as_a_command_not_as_the_answer(loop) -> None:
    """`!help` sent while a form asks in the channel is the help command, not the value "help"; the
    question stays open, plain text answers it, and `!cancel` still stops it."""
    squall, bot, loopback = loop
    await loopback.say("!run-form reboot", user="olivia")
    await settle(squall, bot)
    assert loopback.texts()[-1].endswith("host? (string)")
    await loopback.say("!help", user="olivia")
    await loopback.say("squall: executions", user="olivia", mentioned=True)
    await settle(squall, bot)
    assert any("built in:" in t for t in loopback.texts())
    assert loopback.texts()[-1] == "No executions from this channel yet."
    assert await squall.executions.list(limit=5) == []
    await loopback.say("db1", user="olivia")  # the question still waits
    await settle(squall, bot)
    assert "rebooted db1" in loopback.texts()
    [execution] = await squall.executions.list(limit=5)
    assert execution["parameters"]["host"] == "db1"
    await loopback.say("!run-form reboot", user="olivia")
    await loopback.say("!cancel", user="olivia")  # the form's cancel, not the executions' built-in
    await settle(squall, bot)
    assert loopback.texts()[-1] == "OK, not running demo.reboot."


async def test_in_a_direct_message_a_bare_word_answers_and_a_prefixed_command_runs(loop) -> None:
    squall, bot, loopback = loop
    await _say_privately(loopback, "run-form deploy")
    await _say_privately(loopback, "!help")  # addressed with the prefix: a command
    await settle(squall, bot)
    assert any("built in:" in t for t in loopback.texts(DM))
    await _say_privately(loopback, "help")  # bare, in a direct message: the answer
    await settle(squall, bot)
    assert loopback.texts(DM)[-1].startswith("count?")


class _Renaming(LoopbackAdapter):
    """A loopback chat that, as IRC does, tells the bot when someone's name may change hands (`on_gone`)."""

    on_gone: Any = None


async def test_whoever_left_the_platform_leaves_no_open_form_or_confirmation_to_the_next_holder_of_the_name(
        home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """olivia is asked a form's question in #ops, alice a confirmation in her direct messages, bob a
    form's question in his. The adapter says olivia and alice are gone (IRC: renamed away or quit):
    their exchanges close, in memory and stored, silently (nobody is there to read it); whoever uses
    their names next answers nothing. bob's exchange goes on."""
    caplog.set_level(logging.INFO, logger="bot.chat.bot")
    _pack(home)
    loopback = _Renaming()
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[loopback])
    await squall.chat.start()
    try:
        await loopback.say("!run-form reboot", user="olivia")
        await _say_privately(loopback, "run-form careful")
        for answer in ("web1", "1", SECRET):
            await _say_privately(loopback, answer)
        await loopback.say("run-form deploy", user="bob", channel="dm-bob", direct=True)
        await settle(squall, squall.chat)
        assert loopback.texts(DM)[-1].startswith("About to run demo.deploy")
        assert len(_sessions(squall)) == 3
        said = len(loopback.posted)
        await loopback.on_gone("loopback", "olivia")
        await loopback.on_gone("loopback", "alice")
        await settle(squall, squall.chat)
        assert len(loopback.posted) == said  # told nothing: they are gone
        assert [json.loads(key.partition(":")[2])[2] for key, _ in _sessions(squall)] == ["bob"]
        assert "olivia" in caplog.text and "alice" in caplog.text
        await loopback.say("db1", user="olivia")  # the names' next holders
        await _say_privately(loopback, "yes")
        await loopback.say("web3", user="bob", channel="dm-bob", direct=True)
        await settle(squall, squall.chat)
        assert await squall.executions.list(limit=5) == []
        assert loopback.texts("dm-bob")[-1].startswith("count?")
    finally:
        await squall.chat.stop()
        await squall.close()


# -- a form closed unsent -------------------------------------------------------------------------------

async def test_a_slack_modal_closed_unsent_tells_its_person_nothing_ran_and_closes_the_form(slack) -> None:
    """Slack says a modal was closed (`view_closed`) only when it was opened with `notify_on_close`: then its
    person is told, where the form came from, that nothing was run, and the form is closed, stored state
    included, so nothing can send it afterwards."""
    squall, fake = slack
    view = await _open_from_button(fake, "!run-form demo.deploy", "demo.deploy")
    assert [key.split(":")[0] for key, _ in _sessions(squall)] == ["form"]
    offer = next(m for m in fake.messages if "demo.deploy in a form" in m.get("text", ""))
    assert await fake.close_view(view) == {}  # Slack was told, and answered with a plain ack
    told = await _slack_posted(fake, lambda m: "nothing was run" in m.get("text", ""), "word that nothing ran")
    assert "demo.deploy" in told["text"]
    assert (told["channel"], told.get("thread_ts")) == (offer["channel"], offer.get("thread_ts"))
    assert _sessions(squall) == []
    late = await fake.submit_view(view, {"host": "web1", "count": "1", "token": SECRET})
    assert late["errors"] == {"host": EXPIRED}
    assert await squall.executions.list(limit=5) == []


async def test_a_mattermost_dialog_cancelled_tells_its_person_nothing_ran_and_closes_the_form(mattermost) -> None:
    """Mattermost posts a dialog's cancellation (`cancelled: true`) to its URL only when it was opened with
    `notify_on_cancel`: its opener is told nothing was run and the form is closed; a cancellation in
    someone else's name (the state is the client's to see) closes nothing and says nothing."""
    squall, fake, slash_url = mattermost
    await fake.slash(slash_url, "run-form demo.deploy")
    [opened] = await fake.wait_for(lambda: fake.dialogs)
    said = len(_said(fake))
    forged = await fake.cancel_dialog(opened, user=fake.bob)
    assert forged is not None and forged[0] == 200  # the dialog asks to hear of its cancellation
    assert [key.split(":")[0] for key, _ in _sessions(squall)] == ["form"]
    status, answer = await fake.cancel_dialog(opened) or (None, None)
    assert (status, answer) == (200, {})
    await fake.wait_for(lambda: any("nothing was run" in t and "demo.deploy" in t for t in _said(fake)[said:]))
    assert sum("nothing was run" in t for t in _said(fake)[said:]) == 1  # bob's said nothing
    assert _sessions(squall) == []
    status, answer = await fake.submit_dialog(opened, {"host": "web1", "count": "1", "token": SECRET})
    assert (status, answer) == (200, {"error": EXPIRED})
    assert await squall.executions.list(limit=5) == []


async def test_a_parameter_the_web_renames_is_taken_from_its_chat_answer(home: Path) -> None:
    """`csrf_token` is a web page's own field, so `bot.forms` names that parameter's input `p.csrf_token`;
    a chat form's answers are keyed by the parameter's name, and were read as left empty."""
    pack = home / "packs" / "demo"
    write(pack / "pack.yaml", "ref: demo\nname: demo\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    write(pack / "actions" / "tokened.yaml", """
        name: tokened
        runner_type: local-shell-cmd
        parameters:
          csrf_token: {type: string, required: true}
          cmd: {default: 'echo "token {{csrf_token}}"', immutable: true}
    """)
    write(pack / "aliases" / "tokened.yaml", """
        name: tokened
        action_ref: demo.tokened
        formats: ["tokened {{csrf_token}}"]
        ack: {enabled: false}
        result: {format: "{{ execution.result.stdout }}"}
    """)
    async with loopback_chat(home) as (squall, bot, loopback):
        await _say_privately(loopback, "run-form demo.tokened")
        await settle(squall, bot)
        assert loopback.texts(DM)[-1].endswith("csrf_token? (string)")
        await _say_privately(loopback, "abc123")
        await settle(squall, bot)
        assert "token abc123" in loopback.texts(DM)
        [execution] = await squall.executions.list(limit=5)
        assert execution["parameters"]["csrf_token"] == "abc123"
