"""Shortcuts of a chat command's path: a result format that is only text is not rendered, a look-up render
reads its variables as given, an alias's representations are made once, a match's pairs and authored
names without a comprehension, the log context of a message set by the dispatcher itself. Each gives what
the long way gave, and a reload's new alias is asked afresh."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from adapters.base import Message
from aliases import Alias, AliasFormat, AliasMatch
from bot.chat.auth import Authorizer
from bot.chat.commands import CommandService
from bot.chat.dispatcher import _log_context
from engine.config import TemplateLimits
from engine.logs import log_context, logging_context
from engine.templates import (
    TemplateLimitError,
    build_environment,
    compiled,
    configure_limits,
    current_limits,
    render_template,
)

LENIENT = build_environment(lenient=True)


@pytest.mark.parametrize("text", ["pong", "pong\r\nagain", "pong\n", "  pong  "])
def test_a_text_only_format_renders_as_jinja_renders_it_in_the_lenient_environment(text: str) -> None:
    assert render_template(text, {"execution": {}}, LENIENT) == LENIENT.from_string(text).render()


def test_a_text_only_format_past_the_cap_is_refused_in_the_lenient_environment_as_jinja_refuses_it() -> None:
    before = current_limits()
    configure_limits(TemplateLimits(max_output_chars=10))
    try:
        assert render_template("p" * 10, {}, LENIENT) == "p" * 10
        with pytest.raises(TemplateLimitError, match="10 characters"):
            render_template("p" * 11, {}, LENIENT)
        with pytest.raises(TemplateLimitError, match="10 characters"):  # one text value past it, alone
            render_template("{{ a.b }}", {"a": {"b": "x" * 11}}, LENIENT)
    finally:
        configure_limits(before)


def test_a_lookup_render_reads_one_dict_as_given_and_anything_else_as_jinja_merges_it() -> None:
    template = compiled(build_environment(), "{{ a.b }}")
    assert template.squall_lookups is not None
    assert template.render({"a": {"b": "one"}}) == "one"
    assert template.render(OrderedDict(a={"b": "ordered"})) == "ordered"
    assert template.render({"a": {"b": "given"}}, a={"b": "keyword"}) == "keyword"  # keywords win, as in Jinja
    assert template.render(a={"b": "keyword"}) == "keyword"


def _alias(representation: str) -> Alias:
    return Alias(name="al", pack="p", action_ref="p.act", formats=[AliasFormat(representation, [representation])])


def test_an_aliass_representations_are_made_once_and_a_reloaded_aliass_are_its_own() -> None:
    alias = _alias("run {{what}}")
    assert alias.representations == ["run {{what}}"] and alias.representations is alias.representations
    reloaded = replace(alias, formats=[AliasFormat("go {{what}}", ["go {{what}}"])])
    assert reloaded.representations == ["go {{what}}"] and alias.representations == ["run {{what}}"]
    message = Message(adapter="loopback", channel="#ops", user="ann", text="run x")
    service = CommandService(SimpleNamespace(), SimpleNamespace(aliases={alias.ref: alias}),  # type: ignore[arg-type]
                             Authorizer())
    match = AliasMatch(alias, None, "run {{what}}", {"what": "x"})
    assert service.allowed(match, message) is match
    service.index = SimpleNamespace(aliases={reloaded.ref: reloaded})  # type: ignore[assignment]  # a pack reload
    assert service.allowed(match, message) is None
    assert service._allowed(alias.ref, message, match.representation) == (
        'p.al no longer has the format "run {{what}}"; send the command again')


def test_a_matchs_pairs_and_authored_names_are_what_their_format_says() -> None:
    alias = _alias("run {{what}} {{level=info}}")
    match = AliasMatch(alias, None, "run {{what}} {{level=info}}", {"what": "x", "level": "info", "ttl": "3"})
    assert match.pairs == {"ttl"} and match.authored == {"level"}
    typed = AliasMatch(alias, None, "run {{what}} {{level=info}}", {"what": "x", "level": "debug"})
    assert typed.pairs == set() and typed.authored == set()
    plain = AliasMatch(_alias("run {{what}}"), None, "run {{what}}", {"what": "x", "cwd": "/", "env": "{}"})
    assert plain.pairs == {"cwd", "env"} and plain.authored == set()
    assert AliasMatch(alias, None, "run {{what}} {{level=info}}", {}).pairs == set()


def test_a_messages_log_context_is_logging_contexts() -> None:
    message = Message(adapter="slack", channel="C1", user="ann", text="!ping")
    with logging_context(execution_id="e1", user="bob"):
        made = _log_context(message)
        with logging_context(adapter="slack", channel="C1", user="ann"):
            assert made == log_context.get() and list(made) == list(log_context.get())
    unnamed = replace(message, user=None)  # type: ignore[arg-type]
    with logging_context(user="bob"):
        assert _log_context(unnamed) == {"user": "bob", "adapter": "slack", "channel": "C1"}


@pytest.mark.parametrize("template", [
    "a{% raw %}{{ b }}{% endraw %}{{ x.y }}c{% raw %}}{% endraw %}",  # texts next to each other, joined once
    "{{ x.y }}{{ x.y }}", "{ {{ x.y }} }", "{{ x['get'] }}", "{{ x.n }} of {{ x.z }}", "{{ x.get }}", "{{ x }}",
])
def test_a_lookup_plans_texts_and_keys_render_as_jinja_renders_them(template: str) -> None:
    """`_lookups` joins a look-up's texts and decides its attributes once (one dicts have: a key no dict holds,
    so Jinja renders `.get`); what `_looked_up` makes of the plan is what Jinja's render makes."""
    variables = {"x": {"y": "why", "get": "an item named get", "n": 3, "z": None}}
    for env in (build_environment(), LENIENT):
        assert compiled(env, template).squall_lookups is not None
        assert render_template(template, variables, env) == env.from_string(template).render(variables)


async def test_handle_is_its_coroutine_with_tracing_off_and_answers_as_it_did(home: Path) -> None:
    """`Dispatcher.handle` with tracing off is `_handle_safely`'s coroutine itself (no coroutine around it):
    whatever way a message ends, it answers whether it was stored, and leaves the log context as it was."""
    from bot.chat import dispatcher as dispatching
    from tests.test_chat import _config, loopback_chat, settle

    _config(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        before = log_context.get()
        for text in ("just chatter", "!help", "!ping"):  # no command, an early return, a command run
            handled = bot.dispatcher.handle(Message(adapter="loopback", channel="#ops", user="ann", text=text))
            assert handled.cr_code is dispatching.Dispatcher._handle_safely.__code__  # type: ignore[attr-defined]
            assert await handled is True
            assert log_context.get() == before and dispatching._handling.get() is None
        await settle(squall, bot)
        assert "pong" in loopback.texts()
