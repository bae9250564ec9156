"""Confirmation buttons name their prompt: a click answers that prompt and no other, across restarts.

A click reaches the dispatcher as the button's value, `yes:<token>` or `no:<token>`, addressed to the
bot (Slack and Mattermost send a click as a mentioned message); the loopback chat sends the same."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from adapters.loopback import LoopbackAdapter
from bot.chat import dispatcher, sessions
from tests.conftest import write
from tests.test_chat import _asked_to_wipe, _config, _confirmations_stored, _duplicates, loopback_chat, settle


def _buttons(loopback: LoopbackAdapter) -> dict[str, str]:
    """The newest prompt's buttons, by their text."""
    prompt = next(p for p in reversed(loopback.posted) if p.reply.buttons)
    return {button["text"]: button["value"] for button in prompt.reply.buttons}


async def test_a_confirmations_buttons_carry_its_token_and_answer_it_after_a_restart(home: Path) -> None:
    await _asked_to_wipe(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!wipe db2", user="bob")  # bob's own prompt in the same channel
        await settle(squall, bot)
        bobs = _buttons(loopback)
        assert bobs["Yes"].startswith("yes:") and bobs["No"].startswith("no:")
        assert bobs["Yes"].partition(":")[2] == bobs["No"].partition(":")[2]
        await loopback.say(bobs["Yes"], user="alice", mentioned=True)  # bob's prompt is not alice's
        await settle(squall, bot)
        assert loopback.texts()[-1].startswith("That prompt asks bob, not you, alice; only bob can answer it.")
        assert await squall.executions.list(action="demo.wipe") == []
        [(_, alices)] = [(k, s) for k, s in _confirmations_stored(squall) if '"alice"' in k]
        # The token was stored with her confirmation: her prompt's buttons work after the restart.
        clicked = f"yes:{json.loads(squall.keys.decrypt(alices))['token']}"
        await loopback.say(clicked, user="alice", mentioned=True)
        await settle(squall, bot)
        [execution] = await squall.executions.list(action="demo.wipe")
        assert execution["parameters"]["target"] == "db1"
        await loopback.say(clicked, user="alice", mentioned=True)  # answered: a second click runs nothing
        await settle(squall, bot)
        assert loopback.texts()[-1] == ("That prompt is no longer pending: you answered it already (yes); this click "
                                        "runs nothing.")
        assert len(await squall.executions.list(action="demo.wipe")) == 1


async def test_an_older_prompts_no_cancels_nothing_and_the_newer_command_still_runs(home: Path) -> None:
    _config(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!wipe db1", user="alice")
        await settle(squall, bot)
        older = _buttons(loopback)
        await loopback.say("!wipe db3", user="alice")  # replaces the first prompt
        await settle(squall, bot)
        await loopback.say(older["No"], user="alice", mentioned=True)
        await settle(squall, bot)
        assert "your newer command (demo.wipe) replaced it" in loopback.texts()[-1]
        await loopback.say(_buttons(loopback)["Yes"], user="alice", mentioned=True)  # the newer still stands
        await settle(squall, bot)
        assert [e["parameters"]["target"] for e in await squall.executions.list(action="demo.wipe")] == ["db3"]


def _change_dangerous(home: Path, change: str) -> None:
    """Change the confirming alias `demo.dangerous` on disk (a pack reload or a restart then loads it)."""
    alias = home / "packs" / "demo" / "aliases" / "dangerous.yaml"
    if change == "revoke":
        alias.write_text(alias.read_text() + "permissions: {allow: {users: [bob]}}\n")
    elif change == "disable":
        alias.write_text(alias.read_text() + "enabled: false\n")
    elif change == "delete":
        alias.unlink()
    elif change == "describe":  # a reload that changes nothing the command depends on
        alias.write_text(alias.read_text().replace("(asks first)", "(asks first, always)"))


REFUSED = {"revoke": "demo.dangerous is allowed only for users bob", "disable": "the alias demo.dangerous is disabled",
           "delete": "the alias demo.dangerous is no longer loaded"}


@pytest.mark.parametrize("answer", ["typed", "button"])
@pytest.mark.parametrize("change", ["revoke", "disable", "delete", "describe"])
async def test_a_yes_after_a_pack_reload_runs_only_what_may_run_now(home: Path, change: str, answer: str) -> None:
    """A confirmation holds the alias's copy from its prompt; a reload in between that takes the
    person's permission, disables or removes the alias refuses the `yes` (said, and audited) as a newly
    typed command is refused. A reload that changes nothing it depends on still runs it."""
    _config(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!wipe db1", user="alice")
        await settle(squall, bot)
        yes = _buttons(loopback)["Yes"]
        _change_dangerous(home, change)
        await squall.reload_packs()
        await loopback.say("!yes" if answer == "typed" else yes, user="alice", mentioned=answer == "button")
        await settle(squall, bot)
        ran = await squall.executions.list(action="demo.wipe")
        if change == "describe":
            assert [e["parameters"]["target"] for e in ran] == ["db1"]
            return
        assert ran == []
        assert loopback.texts()[-1].startswith(f"Sorry alice, you may not run that: {REFUSED[change]}")
        [denied] = await squall.db(squall.store.audit_list, 10, "chat.denied")
        assert denied["actor"] == "alice" and denied["target"] == "demo.dangerous"


async def test_a_confirmation_whose_alias_was_disabled_over_a_restart_is_dropped(home: Path, caplog) -> None:
    await _asked_to_wipe(home)
    _change_dangerous(home, "disable")
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!yes", user="alice")
        await settle(squall, bot)
        assert await squall.executions.list(action="demo.wipe") == []
        assert _confirmations_stored(squall) == []
    assert "its alias demo.dangerous is disabled" in caplog.text


async def test_a_match_multiple_command_is_confirmed_once_for_every_fit_also_after_a_restart(home: Path) -> None:
    """A confirming `match_multiple` alias asks once for the whole message, naming every fit, and the
    `yes` runs them all: a prompt per fit would replace the one before it (one pending slot per person
    and channel), and only the last fit would run. The fits are stored with the prompt, so a restart
    between the question and the answer loses none of them."""
    _config(home)
    _duplicates(home, "confirm: true\n")
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!duplicate of ABC-1 and duplicate of ABC-2", user="alice")
        await settle(squall, bot)
        [prompt] = loopback.texts()
        assert "who=ABC-1" in prompt and "who=ABC-2" in prompt and "2 commands" in prompt
        assert len(_confirmations_stored(squall)) == 1
        assert await squall.executions.list(action="demo.greet") == []
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!yes", user="alice")
        await settle(squall, bot)
        ran = await squall.executions.list(action="demo.greet")
        assert sorted(e["parameters"]["who"] for e in ran) == ["ABC-1", "ABC-2"]
        assert {e["context"]["user"] for e in ran} == {"alice"}
        acks = sorted(p.reply.text for p in loopback.posted if p.reply.text.startswith("noting "))
        assert acks == ["noting ABC-1", "noting ABC-2"]


async def _asked_by_user_id(home: Path) -> None:
    """`demo.dangerous` is allowed only to `slack:U0ALICE01`: alice, by that user id, types it on Slack,
    and Squall stops before her answer (a restart)."""
    _config(home)
    _change_dangerous(home, "revoke")
    alias = home / "packs" / "demo" / "aliases" / "dangerous.yaml"
    alias.write_text(alias.read_text().replace("users: [bob]", 'users: ["slack:U0ALICE01"]'))
    async with loopback_chat(home, "slack") as (squall, bot, slack):
        await slack.say("!wipe db1", user="alice", user_id="U0ALICE01")
        await settle(squall, bot)
        assert "Reply `!yes`" in slack.texts()[-1]
        [(_, state)] = _confirmations_stored(squall)
        assert json.loads(squall.keys.decrypt(state))["origin"]["user_id"] == "U0ALICE01"


async def test_a_confirmation_allowed_by_a_platform_user_id_runs_after_a_restart(home: Path) -> None:
    """The sender's user id is stored with the confirmation: restored after a restart, the command is
    authorised again as the person who typed it, whom only that id names."""
    await _asked_by_user_id(home)
    async with loopback_chat(home, "slack") as (squall, bot, slack):
        await slack.say("!yes", user="alice", user_id="U0ALICE01")
        await settle(squall, bot)
        [execution] = await squall.executions.list(action="demo.wipe")
        assert execution["parameters"]["target"] == "db1" and execution["status"] == "succeeded"


async def test_a_confirmation_stored_before_user_ids_were_kept_still_loads(home: Path) -> None:
    """A confirmation stored by a Squall that kept no user id (its origin has no `user_id`) is taken up
    all the same, without one: authorised again by name alone, so a right only the id grants is refused."""
    await _asked_by_user_id(home)
    async with loopback_chat(home, "slack") as (squall, _bot, _slack):  # rewritten as an older Squall kept it
        [(key, token)] = _confirmations_stored(squall)
        state = json.loads(squall.keys.decrypt(token))
        del state["origin"]["user_id"]
        await sessions.keep(squall, key, state, time.time() + 30, "the older confirmation")
    async with loopback_chat(home, "slack") as (squall, bot, slack):
        await slack.say("!yes", user="alice", user_id="U0ALICE01")
        await settle(squall, bot)
        assert await squall.executions.list(action="demo.wipe") == []
        assert slack.texts()[-1].startswith("Sorry alice, you may not run that: demo.dangerous is allowed only for "
                                            "users slack:U0ALICE01")


def _scale(home: Path) -> None:
    """`demo.scale`, a confirming alias whose action allows only some values: a service of three, 0 to 50
    replicas."""
    _config(home)
    pack = home / "packs" / "demo"
    write(pack / "actions" / "scale.yaml", """
        name: scale
        runner_type: local-shell-cmd
        parameters:
          service: {type: string, required: true, enum: [api, web, worker]}
          replicas: {type: integer, required: true, minimum: 0, maximum: 50}
          cmd: {default: 'echo "scaled {{service}} to {{replicas}}"', immutable: true}
    """)
    write(pack / "aliases" / "scale.yaml", """
        name: scale
        action_ref: demo.scale
        description: Scale a service (asks first).
        formats: ["scale {{service}} to {{replicas}}"]
        confirm: true
    """)


@pytest.mark.parametrize(("command", "wrong"), [("!scale api to 500", 'parameter "replicas" = 500'),
                                                ("!scale db to 5", 'parameter "service" = \'db\'')])
async def test_a_command_that_cannot_run_is_refused_at_once_not_after_its_yes(home: Path, command: str,
                                                                              wrong: str) -> None:
    """A confirming alias's command is checked as the request would check it (the check approvals get)
    before its sender is asked: what is wrong is said at once, no prompt is held, and a `yes` after it
    has nothing to answer. One that can run is still asked first."""
    _scale(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say(command, user="alice")
        await settle(squall, bot)
        [said] = loopback.texts()
        assert said.startswith("I can't run that: ") and wrong in said, said
        assert not loopback.posted[-1].reply.buttons and _confirmations_stored(squall) == []
        await loopback.say("!yes", user="alice")
        await settle(squall, bot)
        assert loopback.texts()[-1] == "Nothing is waiting for your yes here."
        assert await squall.executions.list(action="demo.scale") == []
        await loopback.say("!scale api to 5", user="alice")
        await settle(squall, bot)
        assert loopback.texts()[-1].startswith("About to run demo.scale with service=api, replicas=5.")
        await loopback.say("!yes", user="alice")
        await settle(squall, bot)
        [ran] = await squall.executions.list(action="demo.scale")
        assert ran["parameters"]["replicas"] == 5 and ran["status"] == "succeeded"


async def test_a_yes_or_no_with_no_prompt_says_so_or_whose_prompt_waits_here(home: Path) -> None:
    """`yes` or `no` with nothing pending for its sender is no unknown command: nothing waits for it, or,
    where someone else's prompt waits in that channel, that prompt is not theirs. Nothing runs; a built-in
    of the same word (`cancel`) is still that built-in."""
    _config(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        for word in ("yes", "no"):
            await loopback.say(f"!{word}", user="alice")
            await settle(squall, bot)
            assert loopback.texts()[-1] == f"Nothing is waiting for your {word} here."
        await loopback.say("!wipe db1", user="bob")
        await settle(squall, bot)
        await loopback.say("!yes", user="alice")
        await settle(squall, bot)
        assert loopback.texts()[-1] == ("That prompt asks bob, not you, alice; only bob can answer it. Nothing was "
                                        "run.")
        await loopback.say("!yes", user="alice", channel="#elsewhere")  # bob's prompt waits in #ops only
        await settle(squall, bot)
        assert loopback.texts()[-1] == "Nothing is waiting for your yes here."
        await loopback.say("!cancel", user="alice")
        await settle(squall, bot)
        assert loopback.texts()[-1] == "Which one? `!cancel <id>`"
        assert await squall.executions.list(action="demo.wipe") == []


async def test_a_click_on_a_settled_prompt_says_whether_it_was_answered_expired_or_replaced(home: Path,
                                                                                          monkeypatch) -> None:
    """A click on the buttons of a prompt no longer pending says what became of it: answered (with what),
    expired or replaced, whatever prompt waits now; the record of settled prompts is bounded."""
    _config(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!wipe db1", user="alice")
        await settle(squall, bot)
        declined = _buttons(loopback)
        await loopback.say("!no", user="alice")
        await settle(squall, bot)
        assert loopback.texts()[-1] == "OK, not running demo.wipe."
        await loopback.say("!wipe db2", user="alice")  # a newer prompt waits: it did not replace the first
        await settle(squall, bot)
        await loopback.say(declined["Yes"], user="alice", mentioned=True)
        await settle(squall, bot)
        assert loopback.texts()[-1] == ("That prompt is no longer pending: you answered it already (no); this click "
                                        "runs nothing. Your newest prompt here (demo.wipe) still waits for its answer.")
        [waiting] = bot.dispatcher._confirmations.values()
        waiting.expires = time.time() - 1  # its time runs out
        expired = _buttons(loopback)
        await loopback.say("!wipe db3", user="alice")  # and a newer one takes its slot
        await settle(squall, bot)
        replaced = _buttons(loopback)
        await loopback.say(expired["Yes"], user="alice", mentioned=True)
        await settle(squall, bot)
        assert loopback.texts()[-1].startswith("That prompt is no longer pending: it expired before it was answered. "
                                               "Nothing was run; send the command again.")
        await loopback.say("!wipe db4", user="alice")
        await settle(squall, bot)
        await loopback.say(replaced["No"], user="alice", mentioned=True)
        await settle(squall, bot)
        assert loopback.texts()[-1].startswith("That prompt is no longer pending: your newer command (demo.wipe) "
                                               "replaced it. Nothing was run")
        await loopback.say(declined["No"], user="bob", mentioned=True)  # alice's prompt, whatever became of it
        await settle(squall, bot)
        assert loopback.texts()[-1].startswith("That prompt asks alice, not you, bob")
        assert await squall.executions.list(action="demo.wipe") == []
        monkeypatch.setattr(dispatcher, "SETTLED_KEPT", 2)
        await loopback.say("!no", user="alice")
        await settle(squall, bot)
        assert len(bot.dispatcher._settled) == 2


async def test_a_yes_to_a_command_its_post_already_ran_says_so(home: Path) -> None:
    """A post runs its command; a pack reload then adds `confirm:` to the alias, and the platform hands the same
    post over again (Mattermost's catch-up): it asks to confirm, and the yes runs nothing, since a post runs once.
    That yes was answered with silence; it is told the command ran already, naming its execution."""
    from adapters.base import Message

    _config(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        post = Message(adapter="loopback", channel="#ops", user="alice", text="!greet bob", id="p1", delivery="p1")
        await loopback._handler(post)
        await settle(squall, bot)
        [ran] = await squall.executions.list(action="demo.greet")
        alias = home / "packs" / "demo" / "aliases" / "greet.yaml"
        alias.write_text(alias.read_text() + "confirm: true\n")
        await squall.reload_packs()
        await loopback._handler(post)
        await settle(squall, bot)
        await loopback.say("!yes", user="alice")
        await settle(squall, bot)
        assert [e["id"] for e in await squall.executions.list(action="demo.greet")] == [ran["id"]]
        assert any(text.startswith("That command ran already") and ran["id"] in text for text in loopback.texts())
