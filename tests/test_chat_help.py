"""`help` for the person asking (issue 20): only what they may run in that channel, by pack, with
each alias's formats; the hidden count for admins; `help COMMAND` with parameters and who may run it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.base import Capabilities
from adapters.loopback import LoopbackAdapter
from bot.app import Squall
from bot.chat.bot import ChatBot
from engine.config import load_config
from tests.conftest import write
from tests.test_chat import loopback_chat, settle


def ops_pack(home: Path, chat: str = "") -> None:
    """Config with admins and an operators group, and a pack `ops`: `restart` for everyone, `wipe`
    for operators only."""
    write(home / "config.yml", f"""
        database:
          url: sqlite:///data/squall.db
        packs:
          paths: [packs]
        auth:
          admins: [root-admin]
          groups:
            operators: [olivia]
        {chat}
    """)
    pack = home / "packs" / "ops"
    write(pack / "pack.yaml", "ref: ops\nname: ops\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    write(pack / "actions" / "restart.yaml", """
        name: restart
        runner_type: local-shell-cmd
        parameters:
          service: {type: string, required: true, description: The service to restart}
          host: {type: string, default: web1, description: Where it runs}
          cmd: {default: 'echo "restarting {{service}} on {{host}}"', immutable: true}
    """)
    write(pack / "aliases" / "restart.yaml", """
        name: restart
        action_ref: ops.restart
        description: Restart a service on a host.
        formats:
          - "restart {{service}} on {{host}}"
          - display: "restart <service>"
            representation: ["restart {{service}}"]
        result:
          format: "{{ execution.result.stdout }}"
    """)
    write(pack / "actions" / "wipe.yaml", """
        name: wipe
        runner_type: local-shell-cmd
        parameters:
          disk: {type: string, required: true, description: The disk to wipe}
          cmd: {default: 'echo "wiped {{disk}}"', immutable: true}
    """)
    write(pack / "aliases" / "wipe.yaml", """
        name: wipe
        action_ref: ops.wipe
        description: Wipe a disk clean.
        formats: ["wipe disk {{disk}}"]
        permissions:
          allow:
            groups: [operators]
    """)


@pytest.fixture
async def chat(home: Path) -> AsyncIterator[tuple[Squall, ChatBot, LoopbackAdapter]]:
    ops_pack(home)
    async with loopback_chat(home) as started:
        yield started


async def ask(chat, text: str, user: str, channel: str = "#ops") -> str:
    """Everything the bot answered to one message, joined."""
    squall, bot, loopback = chat
    before = len(loopback.posted)
    await loopback.say(text, user=user, channel=channel)
    await settle(squall, bot)
    return "\n".join(p.text for p in loopback.posted[before:])


async def test_help_shows_each_person_what_they_may_run_by_pack(chat) -> None:
    bob = await ask(chat, "!help", "bob")
    olivia = await ask(chat, "!help", "olivia")
    assert "ops:\n  !restart <service>\n" not in bob  # formats are listed under their alias, first first
    assert "ops:\n  !restart {{service}} on {{host}} — Restart a service on a host.\n      !restart <service>" in bob
    assert bob.index("ops:") < bob.index("squall:")  # grouped by pack, packs in order
    assert "wipe disk" not in bob and "!run {{cmd}}" not in bob
    assert "!wipe disk {{disk}} — Wipe a disk clean." in olivia and "!run {{cmd}}" in olivia
    assert "hidden" not in bob and "hidden" not in olivia  # only admins hear about hidden commands


async def test_admins_see_how_many_commands_ordinary_people_do_not(chat) -> None:
    admin = await ask(chat, "!help", "root-admin")
    assert "!wipe disk {{disk}}" in admin
    # ops.wipe, squall.run, squall.http, squall.key_set and squall.pack_install (operators or the console)
    assert "(admin) 5 commands here are hidden" in admin
    in_console = await ask(chat, "!help", "root-admin", channel="console")  # a channel named console
    assert "(admin) 5 commands here are hidden" in in_console  # is not the terminal


async def test_in_the_terminal_only_what_needs_a_group_is_hidden(home: Path) -> None:
    ops_pack(home)
    async with loopback_chat(home, name="console") as console:
        in_console = await ask(console, "!help", "root-admin", channel="console")
    assert "(admin) 1 command here is hidden" in in_console  # the console may run the squall ones: wipe


async def test_help_command_shows_parameters_formats_and_who_may_run_it(chat) -> None:
    for query in ("restart", "ops.restart", "restart nginx"):
        answer = await ask(chat, f"!help {query}", "bob")
        assert answer.startswith("ops.restart → ops.restart: Restart a service on a host."), query
        assert "  service (string, required) — The service to restart" in answer
        assert "  host (string, default web1) — Where it runs" in answer
        assert "cmd" not in answer  # immutable: no one may set it from chat
        assert "  !restart {{service}} on {{host}}" in answer and "  !restart {{service}}" in answer
        assert "who may run it: everyone" in answer
    wipe = await ask(chat, "!help wipe", "olivia")
    assert "  disk (string, required) — The disk to wipe" in wipe
    assert "who may run it: only groups operators; admins always" in wipe
    assert await ask(chat, "!help wipe", "bob") == "No commands match `wipe`."  # bob may not: not shown


async def test_long_help_is_split_by_pack_instead_of_attached(home: Path) -> None:
    ops_pack(home)
    small = LoopbackAdapter(capabilities=Capabilities(threads=True, files=True, max_length=400))
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[small])
    await squall.chat.start()
    try:
        await small.say("!help", user="root-admin")
        await settle(squall, squall.chat)
        replies = [p.reply for p in small.posted]
        assert len(replies) > 1 and all(r.file is None and len(r.text) <= 400 for r in replies)
        whole = "\n".join(r.text for r in replies)
        assert whole.startswith("ops:") and "\nsquall:\n" in whole and "(admin) 5 commands" in replies[-1].text
    finally:
        await squall.chat.stop()
        await squall.close()
