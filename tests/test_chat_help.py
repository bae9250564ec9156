"""`help` for the person asking (issue 20): only what they may run in that channel, by pack, with
each alias's formats; the hidden count for admins; `help COMMAND` with parameters and who may run it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.base import Capabilities
from adapters.loopback import LoopbackAdapter
from bot.app import Squall
from bot.chat import help as chat_help
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


def hidden_pack(home: Path) -> None:
    """Pack `demo`: `backdoor` has a representation-only format (StackStorm's way to keep a command
    out of help), `login` has a secret parameter whose default its formats spell out."""
    pack = home / "packs" / "demo"
    write(pack / "pack.yaml", "ref: demo\nname: demo\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    write(pack / "actions" / "greet.yaml", """
        name: greet
        runner_type: local-shell-cmd
        parameters:
          who: {type: string, required: true}
          key: {type: string}
          cmd: {default: 'echo hello {{who}}', immutable: true}
    """)
    write(pack / "aliases" / "greet.yaml", """
        name: greet
        action_ref: demo.greet
        description: Greet.
        formats: ["greet {{who}}"]
    """)
    write(pack / "aliases" / "backdoor.yaml", """
        name: backdoor
        action_ref: demo.greet
        description: undocumented maintenance command
        formats:
          - representation: ["maint-xyzzy {{who}} {{key=internal-k3y-777}}"]
    """)
    write(pack / "actions" / "login.yaml", """
        name: login
        runner_type: local-shell-cmd
        parameters:
          user: {type: string, required: true}
          token: {type: string, secret: true, default: "svc-Tok3n-999"}
          realm: {type: string, default: corp}
          cmd: {default: 'echo ok', immutable: true}
    """)
    write(pack / "aliases" / "login.yaml", """
        name: login
        action_ref: demo.login
        description: Log in.
        formats:
          - display: "login <user>"
            representation: ["login {{user}} {{token=svc-Tok3n-999}}"]
          - "sign in {{user}} {{ token = \\"svc-Tok3n-999\\" }} {{realm=corp}}"
          - representation: ["relogin {{user}} {{realm=hidden-realm-42}}"]
    """)


async def test_help_lists_only_display_strings_and_never_a_secret_default(home: Path) -> None:
    """StackStorm's help (and `AliasMatcher.help`) lists only formats with a display; a secret
    parameter's default must not reach the channel through a format either."""
    ops_pack(home)
    hidden_pack(home)
    async with loopback_chat(home) as started:
        listed = await ask(started, "!help", "bob")
        login = await ask(started, "!help demo.login", "bob")
        by_words = await ask(started, "!help maint-xyzzy", "bob")
        backdoor = await ask(started, "!help demo.backdoor", "bob")
        typo = await ask(started, "!maint-xyzy bob", "bob")  # near a hidden format only
        near = await ask(started, "!please login bob", "bob")  # filled from `login {{user}} {{token=...}}`
    assert "  !greet {{who}} — Greet." in listed
    assert "svc-Tok3n-999" not in listed  # the plain-string format `sign in ...` is listed, its default masked
    assert "maint-xyzzy" not in typo and "internal-k3y-777" not in typo  # "did you mean" shows no hidden format
    assert near.startswith("Did you mean `!login bob`?")  # the secret default is not spelled; matching applies it
    assert "maint-xyzzy" not in listed and "internal-k3y-777" not in listed and "backdoor" not in listed
    assert "relogin" not in listed and "hidden-realm-42" not in listed
    assert "  !login <user> — Log in." in listed
    assert "svc-Tok3n-999" not in login  # nor in the formats: not `{{token=svc-Tok3n-999}}`
    assert "  token (string, default ********)" in login
    assert "  !login <user>\n  !login {{user}} {{token=********}}\n" in login
    assert '  !sign in {{user}} {{ token = "********" }} {{realm=corp}}' in login  # others as written
    assert "relogin" not in login and "hidden-realm-42" not in login  # its hidden format is left out
    assert by_words == "No commands match `maint-xyzzy`."  # not found by the words of its hidden format
    assert backdoor.startswith("demo.backdoor → demo.greet")  # by ref the alias itself is still described,
    assert "  (none listed in help)" in backdoor and "internal-k3y-777" not in backdoor  # not its format


async def test_listing_masks_secret_defaults_in_displays_given_the_actions(home: Path) -> None:
    """A plain-string format is its own display: given the actions, the listing masks a secret
    parameter's default in it (and leaves other defaults as written)."""
    ops_pack(home)
    hidden_pack(home)
    async with loopback_chat(home) as (_squall, bot, _adapter):
        login = next(a for a in bot.index.matcher.aliases if a.ref == "demo.login")
        text = "\n".join(chat_help.listing([login], "!", None, bot.engine.registry.actions))
        unknown = chat_help.details(login, None, "!", "everyone")
    assert "      !sign in {{user}} {{ token = \"********\" }} {{realm=corp}}" in text
    assert "svc-Tok3n-999" not in text
    assert "svc-Tok3n-999" not in unknown and "corp" not in unknown.split("parameters:")[0]  # no schema: all masked


async def test_help_shows_a_runner_parameter_a_format_names(chat) -> None:
    """`run {{cmd}}` names core.local's runner parameter `cmd`: a person sets it by typing the format (a
    form asks for it), so `help run` lists it; the runner parameters no format names nor
    `allow_overrides` opens (`cwd`, `env`, `timeout`) stay out, as a chat command may not set them."""
    answer = await ask(chat, "!help run", "olivia")
    parameters = answer.split("parameters:\n")[1].split("\nwho may run it:")[0]
    assert parameters.startswith("  cmd (string, required)"), parameters
    assert "(none)" not in parameters
    assert not any(f"  {name} (" in parameters for name in ("cwd", "env", "timeout", "sudo"))


async def test_help_lists_the_parameters_a_form_asks_for(chat) -> None:
    """For every loaded alias, `help` names the same parameters its form asks (one rule for both: what a
    chat command may set), so help never says "(none)" of a command that asks for values."""
    _squall, bot, _adapter = chat
    actions = bot.engine.registry.actions
    for alias in bot.index.matcher.aliases:
        action = actions.get(alias.action_ref)
        helped = {line.split()[0] for line in chat_help.parameter_lines(alias, action)}
        asked = {field.name for field in bot.dispatcher.forms.fields(alias)}
        assert helped == asked, alias.ref
