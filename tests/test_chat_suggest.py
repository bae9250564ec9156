"""Free text that matches no alias (issue 20): "Did you mean `…`?" with the command filled from the
message and Run / Cancel, only when one alias the asker may run stands out; a confirmed suggestion
takes the whole command path (match, authorise, audit), and the message's words stay data."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.loopback import LoopbackAdapter
from aliases import Alias, AliasFormat
from aliases.rank import LexicalRanker, fill
from bot.app import Squall
from engine.config import ConfigError, load_config
from tests.test_chat_help import ask, ops_pack, write


async def _start(home: Path, chat: str = "") -> tuple[Squall, LoopbackAdapter]:
    ops_pack(home, chat)
    loopback = LoopbackAdapter()
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[loopback])
    await squall.chat.start()
    return squall, loopback


@pytest.fixture
async def chat(home: Path) -> AsyncIterator[tuple[Squall, object, LoopbackAdapter]]:
    squall, loopback = await _start(home)
    try:
        yield squall, squall.chat, loopback
    finally:
        await squall.chat.stop()
        await squall.close()


async def test_a_confirmed_suggestion_runs_through_the_command_path(chat) -> None:
    squall, _, loopback = chat
    offer = await ask(chat, "!please bounce nginx on web2", "alice")
    assert offer.startswith("Did you mean `!restart nginx on web2`? (ops.restart)")
    assert [b["text"] for b in loopback.posted[-1].reply.buttons] == ["Run", "Cancel"]
    assert loopback.posted[-1].reply.asker == "alice"  # only the one asked may click
    assert await squall.executions.list(action="ops.restart") == []  # nothing runs before the yes

    await ask(chat, "!yes", "mallory")  # someone else's yes confirms nothing
    assert await squall.executions.list(action="ops.restart") == []
    done = await ask(chat, "!yes", "alice")
    assert "restarting nginx on web2" in done
    [execution] = await squall.executions.list(action="ops.restart")
    assert {k: execution["parameters"][k] for k in ("service", "host")} == {"service": "nginx", "host": "web2"}
    assert execution["context"]["chat"]["alias"] == "ops.restart" and execution["context"]["user"] == "alice"
    [audited] = await squall.db(squall.store.audit_list, 10, "chat.execution")
    assert audited["actor"] == "alice" and audited["target"] == "ops.restart"


async def test_a_did_you_mean_offer_outlives_a_restart(home: Path) -> None:
    squall, loopback = await _start(home)
    try:
        offer = await ask((squall, squall.chat, loopback), "!please bounce nginx on web2", "alice")
        assert offer.startswith("Did you mean `!restart nginx on web2`?")
    finally:
        await squall.chat.stop()
        await squall.close()
    squall, loopback = await _start(home)
    try:
        done = await ask((squall, squall.chat, loopback), "!yes", "alice")
        assert "restarting nginx on web2" in done
        [execution] = await squall.executions.list(action="ops.restart")
        assert execution["context"]["user"] == "alice"
    finally:
        await squall.chat.stop()
        await squall.close()


async def test_a_refused_suggestion_runs_nothing(chat) -> None:
    squall = chat[0]
    assert (await ask(chat, "!could you restart redis on cache1", "alice")).startswith("Did you mean")
    assert await ask(chat, "!no", "alice") == "OK, not running that."
    assert await squall.executions.list(action="ops.restart") == []
    assert await squall.db(squall.store.audit_list, 10, "chat.execution") == []
    assert "Did you mean" not in await ask(chat, "!yes", "alice")  # the offer is gone with the no
    assert await squall.executions.list(action="ops.restart") == []


async def test_no_suggestion_when_nothing_stands_out(chat) -> None:
    squall, _, loopback = chat
    for text in ("!what's the weather in paris", "!nginx web1", "!show me"):
        answer = await ask(chat, text, "alice")
        assert answer.startswith("I don't know") and "Did you mean `!restart" not in answer, text
        assert not loopback.posted[-1].reply.buttons
    assert "Did you mean" not in await ask(chat, "!yes", "alice")
    assert await squall.executions.list() == []


async def test_no_suggestion_of_an_alias_the_asker_may_not_run(chat) -> None:
    squall, _, loopback = chat
    bob = await ask(chat, "!please wipe the disk sdb", "bob")
    assert bob.startswith("I don't know") and "wipe disk" not in bob and not loopback.posted[-1].reply.buttons
    olivia = await ask(chat, "!please wipe the disk sdb", "olivia")  # operators may: offered to her
    assert olivia.startswith("Did you mean `!wipe disk sdb`?")
    await ask(chat, "!yes", "bob")
    assert await squall.executions.list(action="ops.wipe") == []


async def test_a_hostile_message_is_shown_as_data_and_never_rendered_or_run(chat, tmp_path: Path) -> None:
    squall = chat[0]
    marker = tmp_path / "canary" / "ran"
    marker.parent.mkdir()
    host = f"$(touch {marker})"
    offer = await ask(chat, f"!please bounce {{{{7*7}}}} on {host}", "alice")
    assert f"`!restart {{{{7*7}}}} on {host}`" in offer and "49" not in offer
    done = await ask(chat, "!yes", "alice")  # confirmed: the words reach the action as data
    assert f"\nrestarting {{{{7*7}}}} on {host}" in done and "restarting 49" not in done
    [execution] = await squall.executions.list(action="ops.restart")
    assert {k: execution["parameters"][k] for k in ("service", "host")} == {"service": "{{7*7}}", "host": host}
    backticks = await ask(chat, f"!please bounce nginx on `touch {marker}`;touch {marker}", "alice")
    assert backticks.startswith("Did you mean")
    await ask(chat, "!yes", "alice")
    assert not marker.exists() and list(marker.parent.iterdir()) == []


async def test_no_offer_of_a_command_that_could_not_run(chat, tmp_path: Path) -> None:
    """The command an offer would fill from the message is checked as a typed one is before it is asked
    (a runner parameter no chat command may set, here `cmd`): it could only be refused after the `yes`,
    so it is not offered; the format the person may have meant is named instead, with its help."""
    squall, _, loopback = chat
    marker = tmp_path / "canary" / "ran"
    marker.parent.mkdir()
    answer = await ask(chat, f'!please bounce nginx on web2 cmd="touch {marker}"', "alice")
    assert answer.startswith("I don't know `please bounce nginx on web2") and "Did you mean `!restart" in answer
    assert "`!help ops.restart` shows its parameters." in answer and not loopback.posted[-1].reply.buttons
    assert await ask(chat, "!yes", "alice") == "Nothing is waiting for your yes here."
    assert await squall.executions.list() == [] and list(marker.parent.iterdir()) == []


def test_the_filled_command_is_a_substitution_of_the_message_words() -> None:
    assert fill("restart {{service}} on {{host}}", "please bounce nginx on web1") == "restart nginx on web1"
    assert fill("restart {{service}} on {{host}}", "restart nginx") is None  # host cannot be recovered
    assert fill("deploy {{app}} to {{env=staging}}", "ship billing") == "deploy billing to staging"
    # A secret parameter's default is not spelled: the filled command is shown, and matching applies it.
    assert fill("login {{user}} {{token=svc-Tok3n}}", "please login bob", withheld={"token"}) == "login bob"
    assert fill("login {{user}} {{token=svc-Tok3n}}", "please login bob") == "login bob svc-Tok3n"
    assert fill("echo {{message}}", "say {{ 7*7 }} $(id)") == "echo {{ 7*7 }} $(id)"
    assert fill("(run|execute) {{cmd}}", "run ls") is None  # a regex format is not filled by substitution


def test_the_lexical_ranker_ranks_by_shared_words() -> None:
    restart = Alias("restart", "ops", "ops.restart", "Restart a service.",
                    formats=[AliasFormat("restart {{service}}", ["restart {{service}}"])])
    stop = Alias("stop", "ops", "ops.stop", "Stop a service.", formats=[AliasFormat("stop {{service}}",
                                                                                    ["stop {{service}}"])])
    ranked = LexicalRanker().rank("bounce nginx", [restart, stop])
    assert [r.alias.name for r in ranked] == ["restart"] and ranked[0].filled == "restart nginx"
    assert LexicalRanker().rank("order a pizza", [restart, stop]) == []


@pytest.mark.parametrize(("suggest", "error"), [
    ("{treshold: 0.5}", "unknown key 'chat.suggest.treshold'"),
    ("{threshold: 2}", "'chat.suggest.threshold' must be a number from 0 to 1"),
    ("{margin: x}", "'chat.suggest.margin' must be a number from 0 to 1"),
    ("{ranker: neural}", "'chat.suggest.ranker' must be one of lexical, embedding"),
    ("on", "'chat.suggest' must be a mapping"),
])
async def test_suggest_settings_are_checked_with_the_key_named(home: Path, suggest: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error.replace("(", r"\(")):
        await _start(home, f"chat:\n          suggest: {suggest}")


@pytest.mark.parametrize(("suggest", "offered"), [("{}", True), ("{threshold: 0.8}", False), ("{margin: 0.3}", False)])
async def test_threshold_and_margin_come_from_config(home: Path, suggest: str, offered: bool) -> None:
    # "bounce the disk": ops.restart (bounce is restart) scores 0.7, ops.wipe (the word "disk") 0.5 as runner-up
    squall, loopback = await _start(home, f"chat:\n          suggest: {suggest}")
    try:
        answer = await ask((squall, squall.chat, loopback), "!bounce the disk", "alice")
        assert answer.startswith("Did you mean `!restart disk`?" if offered else "I don't know"), answer
    finally:
        await squall.chat.stop()
        await squall.close()


async def test_the_embedding_ranker_works_with_networking_disabled(home: Path, monkeypatch) -> None:
    pytest.importorskip("wordllama")

    def refused(*args, **kwargs):
        raise OSError("networking is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refused)
    monkeypatch.setattr(socket, "getaddrinfo", refused)
    squall, loopback = await _start(home, "chat:\n          suggest: {ranker: embedding}")
    try:
        chat = (squall, squall.chat, loopback)
        offer = await ask(chat, "!please bounce nginx on web2", "alice")
        assert offer.startswith("Did you mean `!restart nginx on web2`?")
        assert type(squall.chat.dispatcher.ranker).__name__ == "EmbeddingRanker"
        assert "restarting nginx on web2" in await ask(chat, "!yes", "alice")
        assert (await ask(chat, "!tell me a joke", "alice")).startswith("I don't know")
    finally:
        await squall.chat.stop()
        await squall.close()


def test_ranking_a_long_message_does_bounded_work(monkeypatch) -> None:
    """One unmatched chat message of up to 100,000 characters (`MAX_COMMAND`) is ranked on the loop:
    the ranker reads a bounded prefix of it, and keys its words once per `rank`, not once per alias
    and format it fills (a 100,000-character message held the loop 0.3 s). Counted, never timed."""
    from aliases import rank

    restart = Alias("restart", "ops", "ops.restart", "Restart a service.",
                    formats=[AliasFormat("restart {{service}} on {{host}}", ["restart {{service}} on {{host}}"])])
    stop = Alias("stop", "ops", "ops.stop", "Stop a service.", formats=[AliasFormat("stop {{service}}",
                                                                                    ["stop {{service}}"])])
    show = Alias("show", "ops", "ops.show", "Show a service's status.",
                 formats=[AliasFormat("show {{a}} {{b}} {{c}}", ["show {{a}} {{b}} {{c}}", "status of {{a}}"])])
    aliases = [restart, stop, show]
    ranker = LexicalRanker()
    ranker.rank("warm up", aliases)  # builds the aliases' index, which is not the message's work
    calls = 0
    real_key = rank.key

    def counted(word: str) -> str:
        nonlocal calls
        calls += 1
        return real_key(word)

    monkeypatch.setattr(rank, "key", counted)

    def ranked(message: str) -> tuple[int, list[rank.Ranked]]:
        nonlocal calls
        calls = 0
        result = ranker.rank(message, aliases)
        return calls, result

    head = "please bounce nginx on web1 then stop its status "
    whole = head + "x " * (rank.READ_WORDS - len(head.split()))  # as long as a ranker reads
    whole_calls, filled = ranked(whole)
    assert {r.alias.name for r in filled} == {"restart", "stop", "show"}
    assert all(r.filled is not None for r in filled)
    assert filled[0].filled.startswith("restart nginx on web1 then stop its status x x")
    # Three aliases filled, one of them with two formats: still each word keyed once to score, once to fill.
    assert whole_calls <= 2 * rank.READ_WORDS + 20

    short_calls, _ = ranked(head + "x " * 2_000)
    longest = head + "x " * ((100_000 - len(head)) // 2)
    assert 99_990 < len(longest) <= 100_000
    long_calls, cut = ranked(longest)
    assert long_calls == short_calls <= whole_calls  # the work does not grow with the message past the cap
    assert [(r.alias, r.score) for r in cut] == [(r.alias, r.score) for r in filled]  # ranked on what was read
    # Not filled: a command filled from part of the message would run part of what the person typed.
    assert [r.filled for r in cut] == [None] * 3


async def test_a_suggestion_shows_a_secret_value_masked_and_stores_it_nowhere_in_clear(chat) -> None:
    """`!please login bob tok…` offers `!login bob ********`: the offer is a reply, stored in the outbox,
    and a secret typed straight as `!login …` is masked in every reply and the audit; the yes still runs
    the command with the value as typed."""
    squall, _, _ = chat
    pack = squall.config.pack_paths[0] / "ops"
    write(pack / "actions" / "login.yaml", """
        name: login
        runner_type: noop
        parameters:
          user: {type: string, required: true}
          token: {type: string, required: true, secret: true}
    """)
    write(pack / "aliases" / "login.yaml", """
        name: login
        action_ref: ops.login
        description: Log a user in with a token.
        formats: ["login {{user}} {{token}}"]
    """)
    await squall.reload_packs()
    offer = await ask(chat, "!please login bob tokSUGGEST42", "alice")
    assert offer.startswith("Did you mean `!login bob ********`? (ops.login)"), offer
    with squall.store.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT payload FROM outbox").scalars().all()
    assert stored and not any("tokSUGGEST42" in (text or "") for text in stored)
    await ask(chat, "!yes", "alice")
    [execution] = await squall.executions.list(action="ops.login")
    assert execution["status"] == "succeeded" and execution["parameters"]["token"] == "********"
